//! Fit/predict timing of `segflow_ml::forest` on files written by
//! `benches/reference/forest_sklearn.py generate` (driven by `benches/forest_vs_sklearn.sh`).
//!
//! Usage: `cargo bench -p segflow-ml --bench forest_fit -- --data DIR --model forest|tree [--trees N]`
//! (or `SEGFLOW_BENCH_DATA=DIR`). DIR holds `shape.txt` ("n_train n_test n_features"),
//! `train_x.f64`, `test_x.f64` (row-major little-endian f64) and `train_y.u8`, `test_y.u8`.
//! Prints `key=value` lines: fit_seconds, predict_seconds, test_auc, n_nodes, tree_bytes (what
//! the fitted trees hold on the heap).
//!
//! Prediction-heavy shapes (the churn stage's permutation importance and scoring) take:
//! `--train-rows N` and `--test-rows N` (use the first N rows of each file),
//! `--predict-repeats N` (N more `predict_proba` calls on the test rows, as permutation
//! importance makes: prints predict_repeats_seconds) and `--contributions-rows N` (Saabas
//! contributions of the first N test rows: prints contributions_seconds); each also as
//! `*_cpu_seconds`, the process's CPU time, steadier on a shared machine. The `*_bits` lines are
//! hashes of the exact output bits, so two builds can be checked to predict the same.
//! The churn stage's shape: `--train-rows 17000 --test-rows 5600 --predict-repeats 86
//! --contributions-rows 23700`.

use std::path::{Path, PathBuf};
use std::time::Instant;

use ndarray::{Array2, s};
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

/// CPU seconds of the whole process (all threads) so far, from `/proc/self/stat` (Linux, in
/// ticks of 1/100 s); 0 where that file does not exist. On a shared machine wall time counts the
/// neighbours' load too, CPU time far less.
fn process_cpu_seconds() -> f64 {
    let ticks = || -> Option<f64> {
        let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
        // The fields after the command name (in parentheses, possibly with spaces) start at
        // field 3, so utime (field 14) and stime (15) are the 12th and 13th.
        let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
        let user: f64 = fields.get(11)?.parse().ok()?;
        let system: f64 = fields.get(12)?.parse().ok()?;
        Some(user + system)
    };
    ticks().unwrap_or(0.0) / 100.0
}

const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;

/// One FNV-1a step over a 64-bit word.
fn fnv_mix(hash: u64, word: u64) -> u64 {
    (hash ^ word).wrapping_mul(0x0000_0100_0000_01b3)
}

/// FNV-1a over the bit patterns of `values`: equal hashes mean (all but certainly) equal bits.
fn bits_hash<'a>(values: impl IntoIterator<Item = &'a f64>) -> u64 {
    values
        .into_iter()
        .fold(FNV_OFFSET, |hash, value| fnv_mix(hash, value.to_bits()))
}

fn main() -> BenchResult<()> {
    let mut data_dir = std::env::var_os("SEGFLOW_BENCH_DATA").map(PathBuf::from);
    let mut model = String::from("forest");
    let mut n_trees = 100usize;
    let mut train_rows: Option<usize> = None;
    let mut test_rows: Option<usize> = None;
    let mut predict_repeats = 0usize;
    let mut contributions_rows = 0usize;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--data" => data_dir = args.next().map(PathBuf::from),
            "--model" => model = args.next().ok_or("--model needs forest|tree")?,
            "--trees" => n_trees = args.next().ok_or("--trees needs a number")?.parse()?,
            "--train-rows" => {
                train_rows = Some(args.next().ok_or("--train-rows needs a number")?.parse()?)
            }
            "--test-rows" => {
                test_rows = Some(args.next().ok_or("--test-rows needs a number")?.parse()?)
            }
            "--predict-repeats" => {
                predict_repeats = args
                    .next()
                    .ok_or("--predict-repeats needs a number")?
                    .parse()?
            }
            "--contributions-rows" => {
                contributions_rows = args
                    .next()
                    .ok_or("--contributions-rows needs a number")?
                    .parse()?
            }
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
    let n_train_used = train_rows.unwrap_or(n_train).min(n_train);
    let n_test_used = test_rows.unwrap_or(n_test).min(n_test);
    if contributions_rows > n_test {
        return Err(format!(
            "--contributions-rows {contributions_rows}: the test file has {n_test}"
        )
        .into());
    }
    let x_train = x_train.slice(s![..n_train_used, ..]).to_owned();
    let y_train = &y_train[..n_train_used];
    let x_contributions = x_test.slice(s![..contributions_rows, ..]).to_owned();
    let x_test = x_test.slice(s![..n_test_used, ..]).to_owned();
    let y_test = &y_test[..n_test_used];
    // Filled by the forest only; the tree reports zeros.
    let mut predict_repeats_seconds = 0.0;
    let mut predict_repeats_cpu_seconds = 0.0;
    let mut contributions_seconds = 0.0;
    let mut contributions_cpu_seconds = 0.0;
    let mut repeats_bits = FNV_OFFSET;
    let mut contributions_bits = FNV_OFFSET;

    let start = Instant::now();
    let (probabilities, predict_seconds, n_nodes, tree_bytes, fit_seconds) = match model.as_str() {
        "forest" => {
            let params = ForestParams::new()
                .n_trees(n_trees)
                .max_depth(None)
                .max_features(MaxFeatures::Sqrt)
                .check()?;
            let forest = RandomForest::fit(&params, x_train.view(), y_train, None)?;
            let fit_seconds = start.elapsed().as_secs_f64();
            let predict_start = Instant::now();
            let p = forest.predict_proba(x_test.view())?;
            let predict_seconds = predict_start.elapsed().as_secs_f64();
            let (repeats_start, repeats_cpu_start) = (Instant::now(), process_cpu_seconds());
            for _ in 0..predict_repeats {
                let again = forest.predict_proba(x_test.view())?;
                repeats_bits = fnv_mix(repeats_bits, bits_hash(&again));
            }
            predict_repeats_seconds = repeats_start.elapsed().as_secs_f64();
            predict_repeats_cpu_seconds = process_cpu_seconds() - repeats_cpu_start;
            if contributions_rows > 0 {
                let contributions_start = Instant::now();
                let contributions_cpu_start = process_cpu_seconds();
                let contributions = forest.contributions(x_contributions.view())?;
                contributions_seconds = contributions_start.elapsed().as_secs_f64();
                contributions_cpu_seconds = process_cpu_seconds() - contributions_cpu_start;
                contributions_bits = bits_hash(
                    std::iter::once(&contributions.bias).chain(&contributions.per_feature),
                );
            }
            let nodes: usize = forest.trees.iter().map(|t| t.len()).sum();
            let bytes: usize = forest.trees.iter().map(|t| t.heap_bytes()).sum();
            (p, predict_seconds, nodes, bytes, fit_seconds)
        }
        "tree" => {
            let params = DecisionTreeParams::new().check()?;
            let tree = DecisionTree::fit(&params, x_train.view(), y_train, None)?;
            let fit_seconds = start.elapsed().as_secs_f64();
            let predict_start = Instant::now();
            let p = tree.predict_proba(x_test.view())?;
            (
                p,
                predict_start.elapsed().as_secs_f64(),
                tree.tree.len(),
                tree.tree.heap_bytes(),
                fit_seconds,
            )
        }
        other => return Err(format!("unknown model {other} (forest|tree)").into()),
    };
    let scores = probabilities.to_vec();
    let auc = roc_auc(y_test, &scores).ok_or("test labels need both classes")?;
    println!("model={model}");
    println!("threads={}", rayon::current_num_threads());
    println!("fit_seconds={fit_seconds:.3}");
    println!("predict_seconds={predict_seconds:.3}");
    println!("test_auc={auc:.5}");
    println!("n_nodes={n_nodes}");
    println!("tree_bytes={tree_bytes}");
    println!("train_rows={n_train_used}");
    println!("test_rows={n_test_used}");
    println!("predict_bits={:016x}", bits_hash(&probabilities));
    if predict_repeats > 0 {
        println!("predict_repeats={predict_repeats}");
        println!("predict_repeats_seconds={predict_repeats_seconds:.3}");
        println!("predict_repeats_cpu_seconds={predict_repeats_cpu_seconds:.2}");
        println!("predict_repeats_bits={repeats_bits:016x}");
    }
    if contributions_rows > 0 {
        println!("contributions_rows={contributions_rows}");
        println!("contributions_seconds={contributions_seconds:.3}");
        println!("contributions_cpu_seconds={contributions_cpu_seconds:.2}");
        println!("contributions_bits={contributions_bits:016x}");
    }
    Ok(())
}
