//! k-means kernels on seeded Gaussian blobs: one Lloyd iteration, and k-means++ seeding.
//!
//!   CARGO_TARGET_DIR=~/.cache/segflow/target-ml cargo bench -p segflow-benches --bench kmeans
//!
//! One Lloyd iteration is timed as (t(1 + EXTRA iterations) − t(1 iteration)) / EXTRA, from
//! the same k-means++ start, which leaves out the fixed cost of a call (validating, copying
//! and centring x), as `benches/kmeans_vs_sklearn.sh` measures both sides. Each sample so
//! runs about EXTRA + 2 iterations per iteration it reports: the measurement times below are
//! in reported time, and the wall time is several times longer.

use std::hint::black_box;
use std::time::{Duration, Instant};

use criterion::{
    BenchmarkId, Criterion, SamplingMode, Throughput, criterion_group, criterion_main,
};
use ndarray::{Array2, ArrayView2};

use segflow_benches::gaussian_blobs;
use segflow_ml::kmeans::{kmeans_plusplus, lloyd_from};

const SEED: u64 = 7;
const FEATURES: usize = 8;
const K: usize = 8;
/// Iterations timed beyond the first one (with tol = 0, blobs this noisy do not converge
/// sooner; if a run ever did, the division uses the iterations it really ran).
const EXTRA: usize = 10;

/// Time of one Lloyd iteration on `x` from `init`, by difference (see the file header).
fn one_lloyd_iteration(x: ArrayView2<'_, f64>, init: ArrayView2<'_, f64>) -> Duration {
    let start = Instant::now();
    black_box(lloyd_from(x, init, 1, 0.0).expect("lloyd runs"));
    let one = start.elapsed();
    let start = Instant::now();
    let fit = black_box(lloyd_from(x, init, 1 + EXTRA, 0.0).expect("lloyd runs"));
    let many = start.elapsed();
    let extra_iterations = fit.n_iter.saturating_sub(1).max(1) as u32;
    many.saturating_sub(one) / extra_iterations
}

fn lloyd(c: &mut Criterion) {
    let mut group = c.benchmark_group("kmeans/lloyd_iteration");
    group.sampling_mode(SamplingMode::Flat);
    for (rows, label, samples, seconds) in [
        (100_000, "100k_x8_k8", 20, 2),
        (1_000_000, "1M_x8_k8", 10, 8),
    ] {
        let x: Array2<f64> = gaussian_blobs(rows, FEATURES, K, SEED);
        let init = kmeans_plusplus(x.view(), K, SEED).expect("k-means++ seeds");
        group.sample_size(samples);
        group.warm_up_time(Duration::from_millis(500));
        group.measurement_time(Duration::from_secs(seconds));
        group.throughput(Throughput::Elements(rows as u64));
        group.bench_with_input(BenchmarkId::from_parameter(label), &x, |b, x| {
            b.iter_custom(|iters| {
                (0..iters)
                    .map(|_| one_lloyd_iteration(x.view(), init.view()))
                    .sum()
            })
        });
    }
    group.finish();
}

/// k-means++ seeding, and for scale the whole `lloyd_from` call with one iteration: the fixed
/// cost (validating, copying and centring x) that both pay on top of their passes over the rows.
fn plusplus(c: &mut Criterion) {
    let rows = 100_000;
    let x = gaussian_blobs(rows, FEATURES, K, SEED);
    let mut group = c.benchmark_group("kmeans");
    group.sample_size(20);
    group.measurement_time(Duration::from_secs(10));
    group.throughput(Throughput::Elements(rows as u64));
    group.bench_with_input(
        BenchmarkId::new("kmeans_plusplus", "100k_x8_k8"),
        &x,
        |b, x| b.iter(|| kmeans_plusplus(x.view(), K, SEED).expect("k-means++ seeds")),
    );
    let init = kmeans_plusplus(x.view(), K, SEED).expect("k-means++ seeds");
    group.bench_with_input(
        BenchmarkId::new("lloyd_from_one_iteration_call", "100k_x8_k8"),
        &x,
        |b, x| b.iter(|| lloyd_from(x.view(), init.view(), 1, 0.0).expect("lloyd runs")),
    );
    group.finish();
}

criterion_group!(benches, lloyd, plusplus);
criterion_main!(benches);
