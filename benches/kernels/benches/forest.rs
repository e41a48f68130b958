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

use std::time::Duration;

use criterion::{
    BenchmarkId, Criterion, SamplingMode, Throughput, criterion_group, criterion_main,
};

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

criterion_group!(benches, single_tree, forest);
criterion_main!(benches);
