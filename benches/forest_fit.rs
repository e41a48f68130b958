//! Fit/predict timing of `segflow_ml::forest` on files written by
//! `benches/reference/forest_sklearn.py generate` (driven by `benches/forest_vs_sklearn.sh`).
//!
//! Usage: `cargo bench -p segflow-ml --bench forest_fit -- --data DIR --model forest|tree [--trees N]`
//! (or `SEGFLOW_BENCH_DATA=DIR`). DIR holds `shape.txt` ("n_train n_test n_features"),
//! `train_x.f64`, `test_x.f64` (row-major little-endian f64) and `train_y.u8`, `test_y.u8`.
//! Prints `key=value` lines: fit_seconds, predict_seconds, test_auc, n_nodes.

use std::path::{Path, PathBuf};
use std::time::Instant;

use ndarray::Array2;
use segflow_ml::forest::{
    DecisionTree, DecisionTreeParams, ForestParams, MaxFeatures, RandomForest, roc_auc,
};

type BenchResult<T> = Result<T, Box<dyn std::error::Error>>;

fn read_f64_matrix(path: &Path, rows: usize, cols: usize) -> BenchResult<Array2<f64>> {
    let bytes = std::fs::read(path)?;
    if bytes.len() != rows * cols * 8 {
        return Err(format!(
            "{}: {} bytes, expected {}",
            path.display(),
            bytes.len(),
            rows * cols * 8
        )
        .into());
    }
    let values = bytes
        .chunks_exact(8)
        .map(|chunk| f64::from_le_bytes(chunk.try_into().unwrap_or([0; 8])))
        .collect();
    Ok(Array2::from_shape_vec((rows, cols), values)?)
}

fn read_labels(path: &Path, rows: usize) -> BenchResult<Vec<usize>> {
    let bytes = std::fs::read(path)?;
    if bytes.len() != rows {
        return Err(format!(
            "{}: {} labels, expected {rows}",
            path.display(),
            bytes.len()
        )
        .into());
    }
    Ok(bytes.into_iter().map(usize::from).collect())
}

fn main() -> BenchResult<()> {
    let mut data_dir = std::env::var_os("SEGFLOW_BENCH_DATA").map(PathBuf::from);
    let mut model = String::from("forest");
    let mut n_trees = 100usize;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--data" => data_dir = args.next().map(PathBuf::from),
            "--model" => model = args.next().ok_or("--model needs forest|tree")?,
            "--trees" => n_trees = args.next().ok_or("--trees needs a number")?.parse()?,
            "--bench" => {} // added by `cargo bench`
            other => return Err(format!("unknown argument {other}").into()),
        }
    }
    let dir = data_dir.ok_or("pass --data DIR or set SEGFLOW_BENCH_DATA")?;
    let shape = std::fs::read_to_string(dir.join("shape.txt"))?;
    let numbers: Vec<usize> = shape
        .split_whitespace()
        .map(str::parse)
        .collect::<Result<_, _>>()?;
    let [n_train, n_test, n_features] = numbers[..] else {
        return Err("shape.txt must hold: n_train n_test n_features".into());
    };
    let x_train = read_f64_matrix(&dir.join("train_x.f64"), n_train, n_features)?;
    let y_train = read_labels(&dir.join("train_y.u8"), n_train)?;
    let x_test = read_f64_matrix(&dir.join("test_x.f64"), n_test, n_features)?;
    let y_test = read_labels(&dir.join("test_y.u8"), n_test)?;

    let start = Instant::now();
    let (probabilities, predict_seconds, n_nodes, fit_seconds) = match model.as_str() {
        "forest" => {
            let params = ForestParams::new()
                .n_trees(n_trees)
                .max_depth(None)
                .max_features(MaxFeatures::Sqrt)
                .check()?;
            let forest = RandomForest::fit(&params, x_train.view(), &y_train, None)?;
            let fit_seconds = start.elapsed().as_secs_f64();
            let predict_start = Instant::now();
            let p = forest.predict_proba(x_test.view())?;
            let nodes: usize = forest.trees.iter().map(|t| t.nodes.len()).sum();
            (p, predict_start.elapsed().as_secs_f64(), nodes, fit_seconds)
        }
        "tree" => {
            let params = DecisionTreeParams::new().check()?;
            let tree = DecisionTree::fit(&params, x_train.view(), &y_train, None)?;
            let fit_seconds = start.elapsed().as_secs_f64();
            let predict_start = Instant::now();
            let p = tree.predict_proba(x_test.view())?;
            (
                p,
                predict_start.elapsed().as_secs_f64(),
                tree.tree.nodes.len(),
                fit_seconds,
            )
        }
        other => return Err(format!("unknown model {other} (forest|tree)").into()),
    };
    let scores = probabilities.to_vec();
    let auc = roc_auc(&y_test, &scores).ok_or("test labels need both classes")?;
    println!("model={model}");
    println!("threads={}", rayon::current_num_threads());
    println!("fit_seconds={fit_seconds:.3}");
    println!("predict_seconds={predict_seconds:.3}");
    println!("test_auc={auc:.5}");
    println!("n_nodes={n_nodes}");
    Ok(())
}
