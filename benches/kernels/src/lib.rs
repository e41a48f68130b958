//! Seeded synthetic data for the kernel benchmarks: the same seed and size give the same
//! matrix on every machine, so timings of two commits compare the same work.
//!
//! The shapes follow the reference scripts against scikit-learn in `benches/reference/`:
//! Gaussian blobs as `kmeans_sklearn.py generate` makes them, and a two-class set built like
//! scikit-learn's `make_classification` (informative clusters, redundant combinations, noise
//! columns, a few flipped labels), so trees grow to realistic sizes.

use ndarray::Array2;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// A standard normal draw (Box–Muller; one of the pair is enough here).
fn standard_normal(rng: &mut ChaCha8Rng) -> f64 {
    // 1 - u lies in (0, 1], so the logarithm is finite.
    let u: f64 = 1.0 - rng.random::<f64>();
    let v: f64 = rng.random::<f64>();
    (-2.0 * u.ln()).sqrt() * (std::f64::consts::TAU * v).cos()
}

/// `rows` points around `k` centres drawn uniformly in [-5, 5]^features, with normal noise of
/// standard deviation 4: overlapping clusters, so Lloyd keeps moving labels for many
/// iterations.
pub fn gaussian_blobs(rows: usize, features: usize, k: usize, seed: u64) -> Array2<f64> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let centres: Vec<f64> = (0..k * features)
        .map(|_| rng.random_range(-5.0..5.0))
        .collect();
    let mut values = Vec::with_capacity(rows * features);
    for _ in 0..rows {
        let centre = rng.random_range(0..k);
        for feature in 0..features {
            values.push(centres[centre * features + feature] + 4.0 * standard_normal(&mut rng));
        }
    }
    Array2::from_shape_vec((rows, features), values).expect("rows × features values")
}

/// Informative columns of [`classification`]; the next [`REDUNDANT`] are linear combinations
/// of them and the rest are pure noise.
pub const INFORMATIVE: usize = 10;
/// Redundant columns of [`classification`].
pub const REDUNDANT: usize = 2;

/// A balanced two-class set with `features` (>= 12) columns: each class is two Gaussian
/// clusters centred on vertices of the hypercube [-1, 1]^10 in the informative columns, two
/// columns are random combinations of those, the rest are noise, and 1 % of the labels are
/// redrawn at random (scikit-learn's `make_classification` defaults, without its rotation).
pub fn classification(rows: usize, features: usize, seed: u64) -> (Array2<f64>, Vec<usize>) {
    assert!(
        features >= INFORMATIVE + REDUNDANT,
        "classification needs at least {} features",
        INFORMATIVE + REDUNDANT
    );
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    // Two clusters per class, each centred on a random vertex of the hypercube.
    let vertices: Vec<[f64; INFORMATIVE]> = (0..4)
        .map(|_| std::array::from_fn(|_| if rng.random::<bool>() { 1.0 } else { -1.0 }))
        .collect();
    let mixing: Vec<[f64; INFORMATIVE]> = (0..REDUNDANT)
        .map(|_| std::array::from_fn(|_| rng.random_range(-1.0..1.0)))
        .collect();
    let mut values = Vec::with_capacity(rows * features);
    let mut labels = Vec::with_capacity(rows);
    for _ in 0..rows {
        let cluster = rng.random_range(0..vertices.len());
        let informative: [f64; INFORMATIVE] =
            std::array::from_fn(|i| vertices[cluster][i] + standard_normal(&mut rng));
        values.extend_from_slice(&informative);
        for weights in &mixing {
            values.push(weights.iter().zip(&informative).map(|(w, x)| w * x).sum());
        }
        for _ in INFORMATIVE + REDUNDANT..features {
            values.push(standard_normal(&mut rng));
        }
        let label = if rng.random::<f64>() < 0.01 {
            rng.random_range(0..2)
        } else {
            cluster / 2
        };
        labels.push(label);
    }
    let x = Array2::from_shape_vec((rows, features), values).expect("rows × features values");
    (x, labels)
}
