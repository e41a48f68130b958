//! Our side of the k-means benchmark against scikit-learn (benches/kmeans_vs_sklearn.sh).
//!
//! Usage: cargo bench -p segflow-ml --bench kmeans_iteration -- DIR [--iters N] [--repeats R]
//! (DIR may also come from SEGFLOW_KMEANS_BENCH_DATA). DIR holds x.f64/x.shape and
//! init.f64/init.shape as written by benches/reference/kmeans_sklearn.py: raw little-endian
//! f64 and "rows cols". Runs `lloyd_from(x, init, N, tol = 0)` and the same with one
//! iteration, R times each, and prints key=value lines; ms per iteration is
//! (t(N) − t(1)) / (N − 1), which leaves out the fixed cost of a fit (validating, copying
//! and centring x), exactly as the Python side measures scikit-learn.

use std::path::{Path, PathBuf};
use std::time::Instant;

use ndarray::Array2;

use segflow_ml::kmeans::lloyd_from;

fn read_array(dir: &Path, name: &str) -> Result<Array2<f64>, Box<dyn std::error::Error>> {
    let shape_text = std::fs::read_to_string(dir.join(format!("{name}.shape")))?;
    let shape: Vec<usize> = shape_text
        .split_whitespace()
        .map(str::parse)
        .collect::<Result<_, _>>()?;
    let [rows, cols] = shape[..] else {
        return Err(format!("{name}.shape must hold two numbers, rows and columns").into());
    };
    let bytes = std::fs::read(dir.join(format!("{name}.f64")))?;
    if bytes.len() != rows * cols * 8 {
        return Err(format!(
            "{name}.f64 has {} bytes, expected {rows}×{cols}×8",
            bytes.len()
        )
        .into());
    }
    let values = bytes
        .chunks_exact(8)
        .map(|b| f64::from_le_bytes([b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]]))
        .collect();
    Ok(Array2::from_shape_vec((rows, cols), values)?)
}

fn median(values: &mut [f64]) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    // cargo bench passes --bench to harness = false targets; skip it.
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| a != "--bench")
        .collect();
    let mut dir = std::env::var_os("SEGFLOW_KMEANS_BENCH_DATA").map(PathBuf::from);
    let (mut iters, mut repeats) = (20usize, 5usize);
    let mut rest = args.iter();
    while let Some(arg) = rest.next() {
        match arg.as_str() {
            "--iters" => iters = rest.next().ok_or("--iters needs a value")?.parse()?,
            "--repeats" => repeats = rest.next().ok_or("--repeats needs a value")?.parse()?,
            other => dir = Some(PathBuf::from(other)),
        }
    }
    let dir =
        dir.ok_or("give the data directory as an argument or in SEGFLOW_KMEANS_BENCH_DATA")?;
    if iters < 2 || repeats < 1 {
        return Err("--iters must be at least 2 and --repeats at least 1".into());
    }
    let x = read_array(&dir, "x")?;
    let init = read_array(&dir, "init")?;

    let time_fit = |max_iter: usize| -> Result<
        (f64, segflow_ml::kmeans::KMeansFit),
        Box<dyn std::error::Error>,
    > {
        let start = Instant::now();
        let fit = lloyd_from(x.view(), init.view(), max_iter, 0.0)?;
        Ok((start.elapsed().as_secs_f64(), fit))
    };
    time_fit(1)?; // warm-up, as the Python side
    let (mut per_iteration, mut whole) = (Vec::new(), Vec::new());
    let mut last = None;
    for _ in 0..repeats {
        let (one, _) = time_fit(1)?;
        let (many, fit) = time_fit(iters)?;
        per_iteration.push((many - one) / (fit.n_iter as f64 - 1.0));
        whole.push(many / fit.n_iter as f64);
        last = Some(fit);
    }
    let fit = last.ok_or("no run")?;
    let all: Vec<String> = per_iteration
        .iter()
        .map(|t| format!("{:.3}", 1000.0 * t))
        .collect();
    // Plain Lloyd (no bounds): every row is scored against every centre each iteration.
    println!("rust_algorithm=lloyd");
    println!("rust_threads={}", rayon::current_num_threads());
    println!("rust_n_iter={}", fit.n_iter);
    println!(
        "rust_ms_per_iter={:.3}",
        1000.0 * median(&mut per_iteration)
    );
    println!("rust_ms_per_iter_all={}", all.join(","));
    println!(
        "rust_ms_whole_fit_per_iter={:.3}",
        1000.0 * median(&mut whole)
    );
    println!("rust_inertia={:?}", fit.inertia);
    Ok(())
}
