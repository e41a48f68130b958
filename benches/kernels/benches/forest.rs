//! Histogram random-forest kernels on a seeded synthetic two-class set (20 columns: 10
//! informative, 2 redundant, 8 noise; see `segflow_benches::classification`).
//!
//!   CARGO_TARGET_DIR=~/.cache/segflow/target-ml cargo bench -p segflow-benches --bench forest
//!
//! Binning and node histograms are private to `segflow_ml::forest`, so they are timed through
//! the public single-tree fit, stopped early:
//! - `binning`: a fit whose root may not split (`min_samples_split` above the row count, and
//!   sampled features so no root histograms are built): checking the data, quantile-binning
//!   every column into at most 256 bins, and one pass to weigh the root.
//! - `root_split`: `max_depth = 1` with every feature: the same, plus the root's 20 histograms
//!   over all rows and the search for the best split. The difference of the two is the
//!   histogram building and split finding of one full-size node.
//! - `tree_fit`: a full-depth tree, which is mostly histogram building and split finding.
//!
//! `forest/predict` times prediction at the churn stage's sizes, on customer-like data (see
//! [`customers`]): 100 full-depth trees fitted on 200k rows × 28 features (4.7M nodes, about the
//! nodes per customer of the 100M-line run), then `predict_proba` on 260k rows (train and test
//! scoring) and on 10k rows (one of the 86 predictions of permutation importance, which lays
//! the forest out again each time), and `contributions` on 65k rows. Only it:
//!
//!   CARGO_TARGET_DIR=~/.cache/segflow/target-ml cargo bench -p segflow-benches --bench forest -- forest/predict/
//!
//! To compare two commits, add `--save-baseline before` on the first and `--baseline before`
//! on the second.

use std::time::Duration;

use criterion::{
    BenchmarkId, Criterion, SamplingMode, Throughput, criterion_group, criterion_main,
};

use ndarray::{Array2, s};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use segflow_benches::classification;
use segflow_ml::forest::{
    DecisionTree, DecisionTreeParams, ForestParams, MaxFeatures, RandomForest,
};

const TRAIN_SEED: u64 = 0;
const TEST_SEED: u64 = 1;
const FEATURES: usize = 20;

fn single_tree(c: &mut Criterion) {
    let rows = 150_000;
    let (x, y) = classification(rows, FEATURES, TRAIN_SEED);
    let mut group = c.benchmark_group("forest/tree");
    group.sampling_mode(SamplingMode::Flat);
    group.throughput(Throughput::Elements(rows as u64));

    let binning_only = DecisionTreeParams::new()
        .max_features(MaxFeatures::Sqrt)
        .min_samples_split(rows + 1)
        .check()
        .expect("valid params");
    let root_split = DecisionTreeParams::new()
        .max_depth(Some(1))
        .check()
        .expect("valid params");
    let full_depth = DecisionTreeParams::new().check().expect("valid params");

    group.sample_size(20);
    group.measurement_time(Duration::from_secs(10));
    group.bench_function(BenchmarkId::new("binning", "150k_x20_256bins"), |b| {
        b.iter(|| DecisionTree::fit(&binning_only, x.view(), &y, None).expect("fit"))
    });
    group.bench_function(BenchmarkId::new("root_split", "150k_x20_256bins"), |b| {
        b.iter(|| DecisionTree::fit(&root_split, x.view(), &y, None).expect("fit"))
    });
    let nodes = DecisionTree::fit(&full_depth, x.view(), &y, None)
        .expect("fit")
        .tree
        .len();
    eprintln!("forest/tree/tree_fit: a full-depth tree on 150k x 20 has {nodes} nodes");
    group.sample_size(10);
    group.measurement_time(Duration::from_secs(20));
    group.bench_function(BenchmarkId::new("tree_fit", "150k_x20_full_depth"), |b| {
        b.iter(|| DecisionTree::fit(&full_depth, x.view(), &y, None).expect("fit"))
    });
    group.finish();
}

fn forest(c: &mut Criterion) {
    let train_rows = 50_000;
    let (x, y) = classification(train_rows, FEATURES, TRAIN_SEED);
    let mut group = c.benchmark_group("forest/forest");
    group.sampling_mode(SamplingMode::Flat);
    group.sample_size(10);

    // scikit-learn's forest defaults: bootstrap, sqrt(20) = 4 features per split, full depth.
    let twenty_trees = ForestParams::new()
        .n_trees(20)
        .seed(TRAIN_SEED)
        .check()
        .expect("valid params");
    group.measurement_time(Duration::from_secs(20));
    group.throughput(Throughput::Elements(train_rows as u64));
    group.bench_function(BenchmarkId::new("fit", "20_trees_50k_x20"), |b| {
        b.iter(|| RandomForest::fit(&twenty_trees, x.view(), &y, None).expect("fit"))
    });

    let predict_rows = 100_000;
    let hundred_trees = ForestParams::new()
        .n_trees(100)
        .seed(TRAIN_SEED)
        .check()
        .expect("valid params");
    let model = RandomForest::fit(&hundred_trees, x.view(), &y, None).expect("fit");
    let (x_test, _) = classification(predict_rows, FEATURES, TEST_SEED);
    group.measurement_time(Duration::from_secs(10));
    group.throughput(Throughput::Elements(predict_rows as u64));
    group.bench_function(
        BenchmarkId::new("predict_proba", "100_trees_100k_x20"),
        |b| b.iter(|| model.predict_proba(x_test.view()).expect("predict")),
    );
    group.finish();
}

/// A standard normal draw (Box–Muller; one of the pair is enough here).
fn standard_normal(rng: &mut ChaCha8Rng) -> f64 {
    // 1 - u lies in (0, 1], so the logarithm is finite.
    let u: f64 = 1.0 - rng.random::<f64>();
    let v: f64 = rng.random::<f64>();
    (-2.0 * u.ln()).sqrt() * (std::f64::consts::TAU * v).cos()
}

/// Customer-like rows of 28 features and churn labels (about 30 % churners), seeded: 6 spends
/// (cents), 6 counts, 4 day counts up to ten years, 4 small categories, 4 ratios of which a
/// tenth are missing (NaN), 4 noise columns. A shared engagement factor ties spends and counts
/// together, and churn is a noisy logistic rule of recency, counts, spend, categories and a
/// ratio, so full-depth trees grow to about a quarter of a node per training row, as the
/// pipeline's do.
fn customers(rows: usize, seed: u64) -> (Array2<f64>, Vec<usize>) {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut values = Vec::with_capacity(rows * CUSTOMER_FEATURES);
    let mut labels = Vec::with_capacity(rows);
    for _ in 0..rows {
        let engagement = standard_normal(&mut rng);
        let first = values.len();
        for _ in 0..6 {
            let z = 0.6 * engagement + 0.8 * standard_normal(&mut rng);
            values.push(((3.0 + z).exp() * 100.0).round() / 100.0);
        }
        for _ in 0..6 {
            let z = 0.5 * engagement + 0.9 * standard_normal(&mut rng);
            values.push((1.0 + z).exp().floor());
        }
        for _ in 0..4 {
            values.push(f64::from(rng.random_range(0..=3650)));
        }
        for _ in 0..4 {
            values.push(f64::from(rng.random_range(0..4)));
        }
        for _ in 0..4 {
            let ratio = rng.random::<f64>();
            values.push(if rng.random::<f64>() < 0.1 {
                f64::NAN
            } else {
                ratio
            });
        }
        for _ in 0..4 {
            values.push(standard_normal(&mut rng));
        }
        let customer = &values[first..];
        let recency = customer[12] / 3650.0;
        let ratio = if customer[20].is_nan() {
            0.5
        } else {
            customer[20]
        };
        let logit = -2.6
            + 1.5
                * (2.0 * recency - 0.6 * (1.0 + customer[6]).ln() - 0.4 * (customer[0].ln() - 3.0)
                    + 0.8 * f64::from(customer[16] == 2.0)
                    + 1.2 * ratio * f64::from(customer[17] >= 2.0)
                    - 0.5 * engagement);
        labels.push(usize::from(
            rng.random::<f64>() < 1.0 / (1.0 + (-logit).exp()),
        ));
    }
    let x = Array2::from_shape_vec((rows, CUSTOMER_FEATURES), values).expect("rows × features");
    (x, labels)
}

const CUSTOMER_FEATURES: usize = 28;

fn prediction(c: &mut Criterion) {
    let (x, y) = customers(200_000, TRAIN_SEED);
    let params = ForestParams::new()
        .n_trees(100)
        .seed(TRAIN_SEED)
        .check()
        .expect("valid params");
    let model = RandomForest::fit(&params, x.view(), &y, None).expect("fit");
    let nodes: usize = model.trees.iter().map(|tree| tree.len()).sum();
    eprintln!("forest/predict: 100 full-depth trees on 200k x 28 customers have {nodes} nodes");
    let (scored, _) = customers(260_000, TEST_SEED);
    let permuted = scored.slice(s![..10_000, ..]).to_owned();
    let explained = scored.slice(s![..65_000, ..]).to_owned();

    let mut group = c.benchmark_group("forest/predict");
    group.sampling_mode(SamplingMode::Flat);
    group.sample_size(10);
    group.measurement_time(Duration::from_secs(15));
    for (name, rows) in [("260k_rows", &scored), ("10k_rows", &permuted)] {
        group.throughput(Throughput::Elements(rows.nrows() as u64));
        group.bench_function(
            BenchmarkId::new("predict_proba_100_trees_200k_x28", name),
            |b| b.iter(|| model.predict_proba(rows.view()).expect("predict")),
        );
    }
    group.throughput(Throughput::Elements(explained.nrows() as u64));
    group.bench_function(
        BenchmarkId::new("contributions_100_trees_200k_x28", "65k_rows"),
        |b| {
            b.iter(|| {
                model
                    .contributions(explained.view())
                    .expect("contributions")
            })
        },
    );
    group.finish();
}

criterion_group!(benches, single_tree, forest, prediction);
criterion_main!(benches);
