//! k-means clustering for customer segmentation: greedy k-means++ initialisation, Lloyd
//! iterations with scikit-learn's semantics, silhouette scores and a rule to choose k.
//!
//! The module is self-contained (it uses no other module of the crate) so that one file can
//! be developed and benchmarked on its own.
//!
//! # Semantics, and where they come from
//! The behaviour follows scikit-learn's `KMeans(algorithm="lloyd")` so that results can be
//! cross-checked against it:
//! - **Initialisation** is scikit-learn's greedy k-means++ (`_kmeans_plusplus`): the first
//!   centre is a uniformly drawn row; every further centre is chosen among
//!   `2 + floor(ln k)` candidate rows drawn with probability proportional to their squared
//!   distance to the closest centre so far, keeping the candidate that leaves the smallest
//!   total potential (sum of squared distances to the closest centre).
//! - **The data are centred** (the column means subtracted) before anything else, as
//!   scikit-learn does; it makes the `‖c‖² − 2x·c` distance form used for assignment much
//!   more accurate. Returned centroids are in the original coordinates.
//! - **`tol` is relative**: a run stops once the sum over centres of their squared shift in
//!   one iteration is `<= tol × mean of the per-feature (population) variances of X`, or as
//!   soon as an iteration leaves every label unchanged ("strict convergence").
//! - **Empty clusters** are relocated as scikit-learn does: the rows farthest from the centre
//!   they were assigned to (squared Euclidean distance, ties broken by lower row index)
//!   become the new centres of the empty clusters, in increasing cluster order, and are
//!   taken out of their former clusters. Should a former cluster be left with no row, it
//!   keeps its previous centre (scikit-learn would leave an undefined value there).
//! - After the last iteration the labels are recomputed against the final centres (unless
//!   the run converged strictly, when they already match) and `inertia` is the **sum** of
//!   squared distances of rows to their centres, computed from exact differences.
//!   (linfa's `KMeans::inertia()` is the mean, i.e. this value divided by the row count.)
//! - With `n_init` restarts the fit with the lowest inertia is kept; on a tie, the earliest.
//!
//! # Determinism
//! The same seed gives bit-identical labels, centroids and inertia whatever the number of
//! rayon threads, and whatever SIMD width the CPU offers: every floating-point sum over rows
//! is computed per block of [`ROWS_PER_BLOCK`] rows (a constant) and the block partials are
//! added sequentially in block order; no result depends on how rayon splits the work. The
//! per-cluster sums behind each centre update are exact (fixed-point integers, see
//! `ClusterSums`), so they do not depend on any order at all, which is also what lets Lloyd
//! update them from the rows that changed label alone.
//! Restart `r` draws from `ChaCha8Rng::seed_from_u64(seed)` set to stream `r`, so restarts
//! are independent of each other and of the order they run in.

use std::borrow::Cow;

use ndarray::{Array2, ArrayView2};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rayon::prelude::*;

/// Rows per unit of parallel work. Every floating-point reduction over rows is done per block
/// of this many rows, then the block results are added in block order, which is what makes the
/// results independent of the thread count. Do not derive it from the number of threads.
pub const ROWS_PER_BLOCK: usize = 4096;

/// The prepared data are stored in groups of this many rows, feature-major inside a group
/// (see [`Prepared`]), so that every per-row computation runs on this many rows at once in
/// fixed-width lanes the compiler vectorises, with no horizontal reductions.
const LANES: usize = 8;

/// Rows per unit of parallel work in the O(n²) silhouette computation: one block of rows is
/// compared against all rows, so a block must be small enough for its per-cluster sums to stay
/// in cache and numerous enough to keep every thread busy.
const SILHOUETTE_ROWS_PER_BLOCK: usize = 64;

/// Default `sample_size` for [`silhouette_score`]: exact silhouette up to this many rows,
/// a seeded sample of this many rows above it (about 10⁸ distance evaluations).
pub const DEFAULT_SILHOUETTE_SAMPLE_SIZE: usize = 10_000;

/// How much lower (in absolute silhouette units, on the −1..1 scale) the silhouette of the
/// elbow's k may be than the best silhouette before [`KSearchParams`] prefers the silhouette's
/// choice. 0.1 is about the gap between "reasonable" and "weak" structure in the usual reading
/// of silhouette values, so a knee within it is kept: the elbow is the primary rule.
pub const SILHOUETTE_OVERRIDE_MARGIN: f64 = 0.1;

/// Everything that can be wrong with k-means parameters or input. One variant per rule; the
/// messages are shown to users, so each says what is wrong and what would be valid.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum KMeansError {
    #[error("k (the number of segments) must be at least 1, got 0")]
    ZeroClusters,
    #[error("k (the number of segments) must be at most {max}, got {k}")]
    TooManyClusters { k: usize, max: usize },
    #[error("n_init (the number of k-means++ restarts) must be at least 1, got 0")]
    ZeroRestarts,
    #[error("max_iter (the iteration limit per restart) must be at least 1, got 0")]
    ZeroMaxIter,
    #[error(
        "tol must be a finite number >= 0 (it is relative to the mean per-feature variance; \
         1e-4 is usual, 0 runs until no label changes), got {tol}"
    )]
    InvalidTolerance { tol: f64 },
    #[error("the input has no rows; k-means needs at least k rows")]
    EmptyInput,
    #[error("the input has {rows} rows but no feature columns; k-means needs at least one column")]
    NoFeatures { rows: usize },
    #[error("k = {k} is larger than the number of rows ({rows}); choose k between 1 and {rows}")]
    MoreClustersThanRows { k: usize, rows: usize },
    #[error(
        "the input has a non-finite value ({value}) at row {row}, column {column} (both counted \
         from 0); every value must be a finite number: impute or drop missing values first"
    )]
    NonFiniteValue {
        row: usize,
        column: usize,
        value: f64,
    },
    #[error("no initial centroids were given; give k >= 1 rows, one per cluster")]
    NoInitialCentroids,
    #[error(
        "the initial centroids have {got} columns but the input has {expected}; \
         each centroid needs one value per input column"
    )]
    CentroidWidthMismatch { expected: usize, got: usize },
    #[error(
        "initial centroid {centroid}, column {column} (both counted from 0) is not finite \
         ({value}); every centroid value must be a finite number"
    )]
    NonFiniteCentroid {
        centroid: usize,
        column: usize,
        value: f64,
    },
    #[error(
        "the rows to assign have {got} columns but the model was fitted on {expected}; \
         pass the same feature columns, in the same order, as for fitting"
    )]
    AssignWidthMismatch { expected: usize, got: usize },
    #[error("there are {labels} labels for {rows} rows; give exactly one label per row")]
    LabelCountMismatch { rows: usize, labels: usize },
    #[error(
        "silhouette needs between 2 and (rows - 1) distinct clusters among the rows it scores; \
         found {clusters} clusters in {rows} rows"
    )]
    SilhouetteClusterCount { clusters: usize, rows: usize },
    #[error("the silhouette sample size must be at least 2 rows, got {sample_size}")]
    SilhouetteSampleTooSmall { sample_size: usize },
    #[error("k_min must be at least 1, got 0")]
    ZeroMinClusters,
    #[error(
        "the k range is empty: k_min = {k_min} is larger than k_max = {k_max}; need k_min <= k_max"
    )]
    EmptyKRange { k_min: usize, k_max: usize },
}

// ---------------------------------------------------------------------------------------------
// Parameters
// ---------------------------------------------------------------------------------------------

/// k-means parameters as a user gives them. Call [`KMeansParams::check`] once to get
/// [`CheckedKMeansParams`], which is what fits.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct KMeansParams {
    /// Number of clusters (segments), >= 1 and at most the number of rows.
    pub k: usize,
    /// Number of k-means++ restarts; the fit with the lowest inertia is kept.
    pub n_init: usize,
    /// Iteration limit of each restart.
    pub max_iter: usize,
    /// Relative tolerance on the centre shift (see the module documentation), >= 0.
    pub tol: f64,
    /// Seed of every random choice; the same seed gives the same result.
    pub seed: u64,
}

impl KMeansParams {
    /// `k` clusters with scikit-learn's classic defaults: 10 restarts, 300 iterations,
    /// `tol = 1e-4`, and seed 0.
    pub fn new(k: usize) -> Self {
        Self {
            k,
            n_init: 10,
            max_iter: 300,
            tol: 1e-4,
            seed: 0,
        }
    }

    /// Checks every rule that does not depend on the data. The data rules (k at most the
    /// number of rows, finite values) are checked by [`CheckedKMeansParams::fit`].
    pub fn check(&self) -> Result<CheckedKMeansParams, KMeansError> {
        if self.k == 0 {
            return Err(KMeansError::ZeroClusters);
        }
        // Labels are stored as u32 to halve the memory traffic of the hot loop.
        let max_k = u32::MAX as usize;
        if self.k > max_k {
            return Err(KMeansError::TooManyClusters {
                k: self.k,
                max: max_k,
            });
        }
        if self.n_init == 0 {
            return Err(KMeansError::ZeroRestarts);
        }
        if self.max_iter == 0 {
            return Err(KMeansError::ZeroMaxIter);
        }
        check_tol(self.tol)?;
        Ok(CheckedKMeansParams { params: *self })
    }
}

fn check_tol(tol: f64) -> Result<(), KMeansError> {
    if tol.is_finite() && tol >= 0.0 {
        Ok(())
    } else {
        Err(KMeansError::InvalidTolerance { tol })
    }
}

/// Parameters that passed [`KMeansParams::check`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct CheckedKMeansParams {
    params: KMeansParams,
}

impl CheckedKMeansParams {
    pub fn params(&self) -> &KMeansParams {
        &self.params
    }

    /// Fits k-means to the rows of `x` (one row per customer, one column per feature).
    pub fn fit(&self, x: ArrayView2<'_, f64>) -> Result<KMeansFit, KMeansError> {
        let data = Prepared::new(x)?;
        let KMeansParams {
            k,
            n_init,
            max_iter,
            tol,
            seed,
        } = self.params;
        if k > data.n_rows {
            return Err(KMeansError::MoreClustersThanRows {
                k,
                rows: data.n_rows,
            });
        }
        let absolute_tol = tol * data.mean_variance;
        let mut best: Option<LloydRun> = None;
        for restart in 0..n_init {
            let run = fit_restart(&data, k, max_iter, absolute_tol, seed, restart);
            // Strictly lower only, so that ties keep the earliest restart.
            let is_better = best.as_ref().is_none_or(|kept| run.inertia < kept.inertia);
            if is_better {
                best = Some(run);
            }
        }
        match best {
            Some(run) => Ok(run.into_fit(&data)),
            // n_init >= 1 was checked, so there is always a run; an error is still better
            // than a panic if that ever changes.
            None => Err(KMeansError::ZeroRestarts),
        }
    }
}

/// Runs one restart: k-means++ from the restart's own random stream, then Lloyd.
fn fit_restart(
    data: &Prepared,
    k: usize,
    max_iter: usize,
    absolute_tol: f64,
    seed: u64,
    restart: usize,
) -> LloydRun {
    let mut rng = restart_rng(seed, restart);
    let centre_rows = kmeans_plusplus_rows(data, k, &mut rng, None);
    let init = data.gather(&centre_rows);
    lloyd(data, init, max_iter, absolute_tol)
}

/// The random stream of restart `restart`: the seed picks the key, the restart the stream, so
/// every restart draws the same numbers whether it runs first, last or alone.
fn restart_rng(seed: u64, restart: usize) -> ChaCha8Rng {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    rng.set_stream(restart as u64);
    rng
}

// ---------------------------------------------------------------------------------------------
// Results
// ---------------------------------------------------------------------------------------------

/// A fitted k-means model.
#[derive(Debug, Clone, PartialEq)]
pub struct KMeansFit {
    /// One row per cluster, in the input's coordinates.
    pub centroids: Array2<f64>,
    /// The cluster of each fitted row, in row order; nearest of `centroids`.
    pub labels: Vec<usize>,
    /// Sum over fitted rows of the squared Euclidean distance to their centroid.
    pub inertia: f64,
    /// Lloyd iterations run by the kept restart (counted as scikit-learn's `n_iter_`).
    pub n_iter: usize,
    /// Whether the kept restart stopped by convergence rather than by `max_iter`.
    pub converged: bool,
}

/// Where one row falls among the fitted segments.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Assignment {
    /// Index of the nearest centroid (the lowest index on a tie).
    pub segment: usize,
    /// Euclidean distance to that centroid.
    pub distance: f64,
    /// Index of the second-nearest centroid; `None` when k = 1.
    pub second_segment: Option<usize>,
}

impl KMeansFit {
    /// Number of clusters.
    pub fn k(&self) -> usize {
        self.centroids.nrows()
    }

    /// Assigns each row of `x` to its nearest centroid, with the distance to it and the
    /// second-nearest centroid (how close a customer is to switching segment).
    pub fn assign(&self, x: ArrayView2<'_, f64>) -> Result<Vec<Assignment>, KMeansError> {
        let n_features = self.centroids.ncols();
        if x.ncols() != n_features {
            return Err(KMeansError::AssignWidthMismatch {
                expected: n_features,
                got: x.ncols(),
            });
        }
        if self.centroids.nrows() == 0 || n_features == 0 {
            return Err(KMeansError::NoInitialCentroids);
        }
        let rows = row_major(x);
        if let Some(err) = first_non_finite(&rows, n_features) {
            return Err(err);
        }
        let centroids = row_major(self.centroids.view());
        let assignments = rows
            .par_chunks(n_features)
            .map(|row| assign_row(row, &centroids, n_features))
            .collect();
        Ok(assignments)
    }
}

fn assign_row(row: &[f64], centroids: &[f64], n_features: usize) -> Assignment {
    let mut best: Option<(f64, usize)> = None;
    let mut second: Option<(f64, usize)> = None;
    for (j, centroid) in centroids.chunks_exact(n_features).enumerate() {
        let dist = squared_distance(row, centroid);
        if best.is_none_or(|(best_dist, _)| dist < best_dist) {
            second = best;
            best = Some((dist, j));
        } else if second.is_none_or(|(second_dist, _)| dist < second_dist) {
            second = Some((dist, j));
        }
    }
    // `assign` rejects a model without centroids, so `best` is always set here.
    let (best_dist, segment) = best.unwrap_or((f64::INFINITY, 0));
    Assignment {
        segment,
        distance: best_dist.sqrt(),
        second_segment: second.map(|(_, j)| j),
    }
}

// ---------------------------------------------------------------------------------------------
// Prepared data
// ---------------------------------------------------------------------------------------------

/// The input once validated and centred, with the statistics the algorithm needs. Built once
/// per fit and shared by every restart.
///
/// Layout: rows in groups of [`LANES`], each group feature-major: value (row `g·LANES + r`,
/// feature `f`) is at `lanes[(g·d + f)·LANES + r]`; the last group is padded with zero rows,
/// which every computation ignores. A block of [`ROWS_PER_BLOCK`] rows is therefore one
/// contiguous chunk of `ROWS_PER_BLOCK · d` values.
struct Prepared {
    n_rows: usize,
    n_features: usize,
    /// `x − column mean`, in the layout above.
    lanes: Vec<f64>,
    /// Column means of the input, added back to the centroids at the end.
    column_means: Vec<f64>,
    /// Mean over features of the population variance; `tol` is relative to it.
    mean_variance: f64,
    /// Per feature, `2^s`: a centred value times it, rounded to an integer, is the value in
    /// the feature's fixed-point grid (see [`ClusterSums`]); `fixed_unscales` is `2^−s`.
    fixed_scales: Vec<f64>,
    fixed_unscales: Vec<f64>,
}

/// One group of [`LANES`] rows: `group[f][r]` is feature `f` of row `r`.
type LaneGroup = [[f64; LANES]];

impl Prepared {
    fn new(x: ArrayView2<'_, f64>) -> Result<Self, KMeansError> {
        let (n_rows, n_features) = x.dim();
        if n_rows == 0 {
            return Err(KMeansError::EmptyInput);
        }
        if n_features == 0 {
            return Err(KMeansError::NoFeatures { rows: n_rows });
        }
        let rows = row_major(x);
        if let Some(err) = first_non_finite(&rows, n_features) {
            return Err(err);
        }
        let d = n_features;
        let column_sums = blocked_column_sums(&rows, d, |v| v);
        let column_means: Vec<f64> = column_sums.iter().map(|s| s / n_rows as f64).collect();
        let mut lanes = vec![0.0; n_rows.div_ceil(LANES) * LANES * d];
        lanes
            .par_chunks_mut(ROWS_PER_BLOCK * d)
            .zip(rows.par_chunks(ROWS_PER_BLOCK * d))
            .for_each(|(out, rows)| {
                let (groups, _) = out.as_chunks_mut::<LANES>();
                for (group, group_rows) in groups.chunks_exact_mut(d).zip(rows.chunks(LANES * d)) {
                    for (r, row) in group_rows.chunks_exact(d).enumerate() {
                        for (f, (v, mean)) in row.iter().zip(&column_means).enumerate() {
                            group[f][r] = v - mean;
                        }
                    }
                }
            });
        // As numpy's var: the mean of squared deviations from the column mean. Padding rows
        // are zeros and add nothing. The largest magnitude per column sets its fixed-point
        // grid (a maximum does not depend on the order either).
        let partials: Vec<(Vec<f64>, Vec<f64>)> = lanes
            .par_chunks(ROWS_PER_BLOCK * d)
            .map(|block| {
                let mut sums = vec![0.0; d];
                let mut largest = vec![0.0f64; d];
                for group in lane_groups(block, d) {
                    for ((s, m), feature) in sums.iter_mut().zip(&mut largest).zip(group) {
                        for v in feature {
                            *s += v * v;
                            *m = m.max(v.abs());
                        }
                    }
                }
                (sums, largest)
            })
            .collect();
        let mut squares = vec![0.0; d];
        let mut largest = vec![0.0f64; d];
        for (partial, partial_largest) in &partials {
            for (t, p) in squares.iter_mut().zip(partial) {
                *t += p;
            }
            for (m, p) in largest.iter_mut().zip(partial_largest) {
                *m = m.max(*p);
            }
        }
        let variance_sum: f64 = squares.iter().map(|s| s / n_rows as f64).sum();
        let mean_variance = variance_sum / d as f64;
        let fixed_exponents: Vec<i32> = largest.iter().map(|&m| fixed_point_exponent(m)).collect();
        Ok(Self {
            n_rows,
            n_features,
            lanes,
            column_means,
            mean_variance,
            fixed_scales: fixed_exponents.iter().map(|&e| power_of_two(e)).collect(),
            fixed_unscales: fixed_exponents.iter().map(|&e| power_of_two(-e)).collect(),
        })
    }

    /// Row `i` (centred), copied out of the lane layout.
    fn row(&self, i: usize) -> Vec<f64> {
        let d = self.n_features;
        let (group, r) = (i / LANES, i % LANES);
        (0..d)
            .map(|f| self.lanes[(group * d + f) * LANES + r])
            .collect()
    }

    /// Rows `indices` (centred), row-major.
    fn gather(&self, indices: &[usize]) -> Vec<f64> {
        indices.iter().flat_map(|&i| self.row(i)).collect()
    }

    /// The blocks of [`ROWS_PER_BLOCK`] rows, in order, for parallel iteration.
    fn par_blocks(&self) -> rayon::slice::Chunks<'_, f64> {
        self.lanes.par_chunks(ROWS_PER_BLOCK * self.n_features)
    }

    fn n_blocks(&self) -> usize {
        self.n_rows.div_ceil(ROWS_PER_BLOCK)
    }

    /// Centred centroids back to the input's coordinates.
    fn uncentre(&self, centred_centroids: &[f64]) -> Array2<f64> {
        let k = centred_centroids.len() / self.n_features;
        let mut out = Array2::zeros((k, self.n_features));
        for (mut out_row, centroid) in out
            .rows_mut()
            .into_iter()
            .zip(centred_centroids.chunks_exact(self.n_features))
        {
            for ((o, c), mean) in out_row.iter_mut().zip(centroid).zip(&self.column_means) {
                *o = c + mean;
            }
        }
        out
    }
}

/// The groups of [`LANES`] rows of a block of the lane layout, in row order.
fn lane_groups(block: &[f64], d: usize) -> std::slice::ChunksExact<'_, [f64; LANES]> {
    block.as_chunks::<LANES>().0.chunks_exact(d)
}

/// Squared distances from each row of a group (lanes of `N` rows, feature-major: a
/// [`LaneGroup`], or a silhouette tile's group) to `centre`; lane for lane the same operations,
/// in the same order, as [`squared_distance`], so bit-identical to it.
#[inline(always)]
fn group_squared_distances<const N: usize>(group: &[[f64; N]], centre: &[f64]) -> [f64; N] {
    let mut sums = [0.0; N];
    for (feature, &c) in group.iter().zip(centre) {
        for r in 0..N {
            let diff = feature[r] - c;
            sums[r] += diff * diff;
        }
    }
    sums
}

/// The values of `x` as one row-major slice, borrowed when `x` already is one.
fn row_major<'a>(x: ArrayView2<'a, f64>) -> Cow<'a, [f64]> {
    match x.to_slice() {
        Some(slice) => Cow::Borrowed(slice),
        // `iter` walks in logical (row-major) order whatever the memory layout.
        None => Cow::Owned(x.iter().copied().collect()),
    }
}

/// The first non-finite value in row-major order, as an error naming its row and column.
fn first_non_finite(rows: &[f64], n_features: usize) -> Option<KMeansError> {
    let position = rows.par_iter().position_first(|v| !v.is_finite())?;
    Some(KMeansError::NonFiniteValue {
        row: position / n_features,
        column: position % n_features,
        value: rows[position],
    })
}

/// Per-column sums of `f(value)`, blocked and reduced in block order.
fn blocked_column_sums(rows: &[f64], n_features: usize, f: impl Fn(f64) -> f64 + Sync) -> Vec<f64> {
    let partials: Vec<Vec<f64>> = rows
        .par_chunks(ROWS_PER_BLOCK * n_features)
        .map(|block| {
            let mut sums = vec![0.0; n_features];
            for row in block.chunks_exact(n_features) {
                for (s, &v) in sums.iter_mut().zip(row) {
                    *s += f(v);
                }
            }
            sums
        })
        .collect();
    let mut totals = vec![0.0; n_features];
    for partial in &partials {
        for (t, p) in totals.iter_mut().zip(partial) {
            *t += p;
        }
    }
    totals
}

fn gather_rows(rows: &[f64], n_features: usize, indices: &[usize]) -> Vec<f64> {
    indices
        .iter()
        .flat_map(|&i| &rows[i * n_features..(i + 1) * n_features])
        .copied()
        .collect()
}

#[inline(always)]
fn squared_distance(a: &[f64], b: &[f64]) -> f64 {
    let mut sum = 0.0;
    for (x, y) in a.iter().zip(b) {
        let diff = x - y;
        sum += diff * diff;
    }
    sum
}

// ---------------------------------------------------------------------------------------------
// k-means++
// ---------------------------------------------------------------------------------------------

/// Greedy k-means++ (scikit-learn's `_kmeans_plusplus`) on the rows of `x`: returns k rows of
/// `x` to start Lloyd from. The draws are those of the first restart of a fit with this seed,
/// so `lloyd_from(x, kmeans_plusplus(x, k, seed)?, …)` reproduces a fit with `n_init = 1`.
pub fn kmeans_plusplus(
    x: ArrayView2<'_, f64>,
    k: usize,
    seed: u64,
) -> Result<Array2<f64>, KMeansError> {
    KMeansParams {
        k,
        n_init: 1,
        max_iter: 1,
        tol: 0.0,
        seed,
    }
    .check()?;
    let data = Prepared::new(x)?;
    if k > data.n_rows {
        return Err(KMeansError::MoreClustersThanRows {
            k,
            rows: data.n_rows,
        });
    }
    let mut rng = restart_rng(seed, 0);
    let centre_rows = kmeans_plusplus_rows(&data, k, &mut rng, None);
    let rows = row_major(x);
    let centres = gather_rows(&rows, data.n_features, &centre_rows);
    Array2::from_shape_vec((k, data.n_features), centres)
        .map_err(|_| KMeansError::NoInitialCentroids)
}

/// One greedy step of k-means++, recorded for tests.
#[derive(Debug, Clone)]
#[cfg_attr(not(test), allow(dead_code))]
struct PlusPlusStep {
    candidates: Vec<usize>,
    potentials: Vec<f64>,
    chosen: usize,
}

/// The number of candidates k-means++ tries per centre, as scikit-learn.
fn n_local_trials(k: usize) -> usize {
    2 + (k as f64).ln().floor() as usize
}

/// Indices of the rows chosen as initial centres.
fn kmeans_plusplus_rows(
    data: &Prepared,
    k: usize,
    rng: &mut ChaCha8Rng,
    mut trace: Option<&mut Vec<PlusPlusStep>>,
) -> Vec<usize> {
    let n = data.n_rows;
    let trials = n_local_trials(k);
    let first = rng.random_range(0..n);
    let mut chosen = vec![first];
    // closest[i]: squared distance from row i to its closest chosen centre.
    let mut closest = vec![0.0; n];
    let mut block_sums = update_closest(data, &mut closest, &data.row(first), true);
    let mut potential: f64 = block_sums.iter().sum();

    for _ in 1..k {
        let candidates: Vec<usize> = (0..trials)
            .map(|_| {
                let target = rng.random::<f64>() * potential;
                sample_by_weight(&closest, &block_sums, target, rng)
            })
            .collect();
        let potentials = candidate_potentials(data, &closest, &candidates);
        // The first candidate with the lowest potential, as numpy's argmin.
        let mut best = 0;
        for (t, p) in potentials.iter().enumerate() {
            if *p < potentials[best] {
                best = t;
            }
        }
        let best_row = candidates[best];
        block_sums = update_closest(data, &mut closest, &data.row(best_row), false);
        potential = block_sums.iter().sum();
        chosen.push(best_row);
        if let Some(steps) = trace.as_deref_mut() {
            steps.push(PlusPlusStep {
                candidates,
                potentials,
                chosen: best_row,
            });
        }
    }
    chosen
}

/// Lowers `closest` to the squared distance to `centre` where that is smaller (or sets it,
/// when `first`) and returns the per-block sums of the result.
fn update_closest(data: &Prepared, closest: &mut [f64], centre: &[f64], first: bool) -> Vec<f64> {
    let d = data.n_features;
    data.par_blocks()
        .zip(closest.par_chunks_mut(ROWS_PER_BLOCK))
        .map(|(block, closest)| {
            let mut sum = 0.0;
            for (group, closest) in lane_groups(block, d).zip(closest.chunks_mut(LANES)) {
                let dists = group_squared_distances(group, centre);
                for (c, &dist) in closest.iter_mut().zip(&dists) {
                    // A select, not a branch: which rows the new centre is closer to is
                    // unpredictable, and a mispredicted branch per row cost more than the rest
                    // of the pass. (No NaN here: the rows are checked finite.)
                    *c = if first { dist } else { c.min(dist) };
                    sum += *c;
                }
            }
            sum
        })
        .collect()
}

/// Total potential if each candidate were added: Σ_i min(closest[i], ‖x_i − candidate‖²),
/// summed in the same order as [`update_closest`], so the winner's potential is bit-identical
/// to the one `update_closest` then computes.
fn candidate_potentials(data: &Prepared, closest: &[f64], candidates: &[usize]) -> Vec<f64> {
    let d = data.n_features;
    let centres = data.gather(candidates);
    let per_block: Vec<Vec<f64>> = data
        .par_blocks()
        .zip(closest.par_chunks(ROWS_PER_BLOCK))
        .map(|(block, closest)| {
            // All candidates in one pass over the block: each candidate's sum still adds the
            // rows in order, and the candidates' sums, independent of each other, overlap
            // (one sum alone waits on each addition).
            let mut sums = vec![0.0; candidates.len()];
            for (group, closest) in lane_groups(block, d).zip(closest.chunks(LANES)) {
                for (centre, sum) in centres.chunks_exact(d).zip(&mut sums) {
                    let dists = group_squared_distances(group, centre);
                    for (&c, &dist) in closest.iter().zip(&dists) {
                        *sum += dist.min(c);
                    }
                }
            }
            sums
        })
        .collect();
    let mut totals = vec![0.0; candidates.len()];
    for block in &per_block {
        for (t, b) in totals.iter_mut().zip(block) {
            *t += b;
        }
    }
    totals
}

/// The first row whose running sum of `weights` exceeds `target` (numpy's searchsorted on the
/// cumulative sum). Rows of weight 0, i.e. rows already at a centre, are never returned unless
/// every weight is 0, when any row is as good as another and one is drawn uniformly.
fn sample_by_weight(
    weights: &[f64],
    block_sums: &[f64],
    target: f64,
    rng: &mut ChaCha8Rng,
) -> usize {
    let mut running = 0.0;
    for (b, block_sum) in block_sums.iter().enumerate() {
        if running + block_sum > target {
            let start = b * ROWS_PER_BLOCK;
            let block = &weights[start..(start + ROWS_PER_BLOCK).min(weights.len())];
            let mut within = running;
            let mut last_positive = None;
            for (i, &w) in block.iter().enumerate() {
                within += w;
                if w > 0.0 {
                    last_positive = Some(start + i);
                    if within > target {
                        return start + i;
                    }
                }
            }
            // Rounding made the block's own running sum fall short of its total.
            if let Some(i) = last_positive {
                return i;
            }
        }
        running += block_sum;
    }
    // Rounding made target reach the total: take the last row that has weight.
    match weights.iter().rposition(|&w| w > 0.0) {
        Some(i) => i,
        None => rng.random_range(0..weights.len()),
    }
}

// ---------------------------------------------------------------------------------------------
// Lloyd
// ---------------------------------------------------------------------------------------------

/// Runs Lloyd's algorithm from `init_centroids` (one row per cluster), as scikit-learn's
/// `KMeans(init=init_centroids, n_init=1, algorithm="lloyd", max_iter, tol)`: `tol` relative
/// to the mean per-feature variance, `tol = 0` running until no label changes or `max_iter`.
pub fn lloyd_from(
    x: ArrayView2<'_, f64>,
    init_centroids: ArrayView2<'_, f64>,
    max_iter: usize,
    tol: f64,
) -> Result<KMeansFit, KMeansError> {
    if max_iter == 0 {
        return Err(KMeansError::ZeroMaxIter);
    }
    check_tol(tol)?;
    let (k, centroid_width) = init_centroids.dim();
    if k == 0 {
        return Err(KMeansError::NoInitialCentroids);
    }
    let data = Prepared::new(x)?;
    if centroid_width != data.n_features {
        return Err(KMeansError::CentroidWidthMismatch {
            expected: data.n_features,
            got: centroid_width,
        });
    }
    if k > data.n_rows {
        return Err(KMeansError::MoreClustersThanRows {
            k,
            rows: data.n_rows,
        });
    }
    let mut init = row_major(init_centroids).into_owned();
    if let Some(KMeansError::NonFiniteValue { row, column, value }) =
        first_non_finite(&init, data.n_features)
    {
        return Err(KMeansError::NonFiniteCentroid {
            centroid: row,
            column,
            value,
        });
    }
    for centroid in init.chunks_exact_mut(data.n_features) {
        for (c, mean) in centroid.iter_mut().zip(&data.column_means) {
            *c -= mean;
        }
    }
    Ok(lloyd(&data, init, max_iter, tol * data.mean_variance).into_fit(&data))
}

/// A finished Lloyd run, in centred coordinates.
struct LloydRun {
    centroids: Vec<f64>,
    labels: Vec<u32>,
    inertia: f64,
    n_iter: usize,
    converged: bool,
}

impl LloydRun {
    fn into_fit(self, data: &Prepared) -> KMeansFit {
        KMeansFit {
            centroids: data.uncentre(&self.centroids),
            labels: self.labels.into_iter().map(|l| l as usize).collect(),
            inertia: self.inertia,
            n_iter: self.n_iter,
            converged: self.converged,
        }
    }
}

/// The label of a row not yet assigned (scikit-learn's −1): no cluster has this index, since
/// k <= u32::MAX, so the first iteration sees every row change.
const NO_CLUSTER: u32 = u32::MAX;

fn lloyd(data: &Prepared, init: Vec<f64>, max_iter: usize, absolute_tol: f64) -> LloydRun {
    lloyd_with(data, init, max_iter, absolute_tol, Kernel::detect())
}

/// [`lloyd`] with a given kernel (tests compare the kernels on whole runs).
fn lloyd_with(
    data: &Prepared,
    init: Vec<f64>,
    max_iter: usize,
    absolute_tol: f64,
    kernel: Kernel,
) -> LloydRun {
    let mut state = LloydState::new(data, init, kernel);
    let mut n_iter = 0;
    let mut strictly_converged = false;
    let mut converged = false;
    for iteration in 0..max_iter {
        n_iter = iteration + 1;
        let step = state.step();
        if step.changed == 0 {
            strictly_converged = true;
            converged = true;
            break;
        }
        if step.shift <= absolute_tol {
            converged = true;
            break;
        }
    }
    // Unless the run converged strictly, the last update moved the centres: the rows are
    // labelled again against where they ended.
    let (centroids, labels) = state.finish(!strictly_converged);
    let inertia = exact_inertia(data, &centroids, &labels);
    LloydRun {
        centroids,
        labels,
        inertia,
        n_iter,
        converged,
    }
}

/// Lloyd between iterations: the centres, each row's label, and the exact sums of the rows by
/// label, kept up to date from the rows that change label (see [`ClusterSums`]).
///
/// Every iteration still reads every row: on overlapping clusters, which is what segmentation
/// data look like, bounds that skip rows (Hamerly's, Elkan's) skip few. Measured on the
/// benchmark's 1M × 8, k = 8 blobs, iterations 2 to 13 still had 60–88% of rows failing
/// Hamerly's test and 40–58% needing every distance, and over 98% of 8-row groups held such a
/// row, so the 64 MB would be read anyway. What the kernel avoids instead is re-adding every
/// row to the sums: only the rows that changed label move between sums.
///
/// On the segment stage's own data (the 10M-line demo's 237,799 customers × 6 standardised
/// features) Hamerly's bounds do skip most rows (on average 73% of rows per iteration at
/// k = 5, 78% at k = 15), yet a bit-identical implementation was still slower: whole fits
/// 0.70× (k = 5) to 0.93× (k = 15) the speed of this pass, per iteration 0.5–0.9× on every
/// size tried. This kernel scores a row in 14–28 cycles at these k and d, and the bound test
/// alone (reading the labels and both bounds, writing the bounds) cost 0.54 ms per iteration
/// against 0.95 ms for a whole plain iteration at k = 5: even with no row ever scored, the
/// ceiling would be 1.75× at k = 5, and each scored row (packed, scored with the runner-up,
/// bounds recomputed) cost about 4× a plain one.
struct LloydState<'a> {
    data: &'a Prepared,
    kernel: Kernel,
    centroids: Vec<f64>,
    labels: Vec<u32>,
    sums: ClusterSums,
    /// One per block of rows, reused every iteration.
    changes: Vec<BlockChanges>,
}

/// What one Lloyd iteration did.
struct Step {
    /// Rows whose label changed.
    changed: usize,
    /// Σ over centres of their squared shift.
    shift: f64,
}

impl<'a> LloydState<'a> {
    fn new(data: &'a Prepared, init: Vec<f64>, kernel: Kernel) -> Self {
        let d = data.n_features;
        let k = init.len() / d;
        Self {
            data,
            kernel,
            centroids: init,
            labels: vec![NO_CLUSTER; data.n_rows],
            sums: ClusterSums::zeros(k, d),
            changes: vec![
                BlockChanges {
                    sums: ClusterSums::zeros(k, d),
                    changed: 0,
                };
                data.n_blocks()
            ],
        }
    }

    /// One iteration: label every row with its nearest centre, then move the centres to the
    /// means of their rows.
    fn step(&mut self) -> Step {
        let kernel_centroids = KernelCentroids::new(&self.centroids, self.data.n_features);
        assign_all(
            self.data,
            &kernel_centroids,
            self.kernel,
            &mut self.labels,
            Some(&mut self.changes),
        );
        // Integer sums: the order they are added in does not matter.
        let mut changed = 0;
        for block in &self.changes {
            self.sums.add(&block.sums);
            changed += block.changed;
        }
        let updated = updated_centroids(self.data, &self.centroids, &self.labels, &self.sums);
        let shift = squared_distance(&self.centroids, &updated);
        self.centroids = updated;
        Step { changed, shift }
    }

    /// The centres and labels, the rows labelled again against the current centres first
    /// when `relabel` (without keeping the sums up to date: no step can follow).
    fn finish(mut self, relabel: bool) -> (Vec<f64>, Vec<u32>) {
        if relabel {
            let kernel_centroids = KernelCentroids::new(&self.centroids, self.data.n_features);
            assign_all(
                self.data,
                &kernel_centroids,
                self.kernel,
                &mut self.labels,
                None,
            );
        }
        (self.centroids, self.labels)
    }
}

/// The centres after an assignment: each cluster's mean, the empty clusters relocated (see
/// [`relocate_empty_clusters`]); a cluster left without rows keeps its centre.
fn updated_centroids(
    data: &Prepared,
    centroids: &[f64],
    labels: &[u32],
    sums: &ClusterSums,
) -> Vec<f64> {
    let d = data.n_features;
    let mut updated = centroids.to_vec();
    if !sums.counts.contains(&0) {
        sums.write_means(&mut updated, &data.fixed_unscales);
        return updated;
    }
    // The relocation only changes this update: the rows keep their labels (as scikit-learn),
    // so the maintained sums stay those of the labels.
    let mut relocated = sums.clone();
    let moves = relocate_empty_clusters(data, centroids, labels, &mut relocated);
    relocated.write_means(&mut updated, &data.fixed_unscales);
    for (cluster, row_index) in moves {
        updated[cluster * d..(cluster + 1) * d].copy_from_slice(&data.row(row_index));
    }
    updated
}

// ---------------------------------------------------------------------------------------------
// Exact cluster sums
// ---------------------------------------------------------------------------------------------

/// Bits of a fixed-point value: a centred value of feature `f` is held as the integer
/// `round(v · 2^s_f)`, with `s_f` the largest exponent that keeps the column's largest
/// magnitude below `2^FIXED_POINT_BITS`. An i64 holds it; an i128 holds any sum of 2^64 of
/// them.
const FIXED_POINT_BITS: i32 = 62;

/// `s` such that `largest · 2^s < 2^FIXED_POINT_BITS`, as large as that allows, and such that
/// `2^s` and `2^−s` are normal f64 values (for a largest magnitude below 2^−961, about
/// 5e−290, the grid is coarser than that bound; the sums are still exact on the grid).
fn fixed_point_exponent(largest: f64) -> i32 {
    if largest == 0.0 {
        return 0;
    }
    // floor(log2(largest)) from the exponent bits: largest < 2^(floor + 1). Subnormals have
    // exponent bits 0, read as −1023, which keeps that inequality true.
    let floor_log2 = ((largest.to_bits() >> 52) & 0x7ff) as i32 - 1023;
    (FIXED_POINT_BITS - 1 - floor_log2).min(1022)
}

/// `2^e` for `e` in −1022..=1023, exactly.
fn power_of_two(e: i32) -> f64 {
    f64::from_bits(((e + 1023) as u64) << 52)
}

/// `v` on the fixed-point grid whose step is `1 / scale` (`scale` a power of two, so the
/// product is exact and only the rounding to an integer loses anything).
#[inline(always)]
fn to_fixed(v: f64, scale: f64) -> i128 {
    round_ties_even(v * scale) as i64 as i128
}

/// `y.round_ties_even()`, bit for bit, without its libm call (x86-64 before SSE4.1 has no
/// rounding instruction; the call was a tenth of the segment stage): below 2^52 in magnitude,
/// adding 2^52 leaves no fraction bits, so the addition itself rounds to an integer, ties to
/// even (the default rounding mode), and subtracting 2^52 again is exact. From 2^52 up every
/// f64 is an integer already; NaN and infinities go through unchanged.
#[inline(always)]
fn round_ties_even(y: f64) -> f64 {
    const TWO_TO_52: f64 = 4_503_599_627_370_496.0;
    let magnitude = y.abs();
    if magnitude < TWO_TO_52 {
        ((magnitude + TWO_TO_52) - TWO_TO_52).copysign(y)
    } else {
        y
    }
}

/// Per cluster, the sum and count of the rows labelled with it. The sums are exact: every
/// centred value is first put on its feature's fixed-point grid (see [`FIXED_POINT_BITS`]:
/// each value moves by at most 2^−62 of its column's largest magnitude, nine bits finer than
/// one f64 rounding of that magnitude) and integers add exactly, in any order. That is what
/// lets Lloyd keep the sums up to date from the rows that changed label alone, instead of
/// adding every row again each iteration, and the result is the same whatever the order
/// rows are added in, hence whatever the thread count.
#[derive(Debug, Clone, PartialEq)]
struct ClusterSums {
    /// `sums[j·d + f]`: fixed-point sum of feature `f` over the rows of cluster `j`.
    sums: Vec<i128>,
    /// Rows per cluster (in a block's changes, rows gained minus rows lost).
    counts: Vec<i64>,
}

impl ClusterSums {
    fn zeros(k: usize, d: usize) -> Self {
        Self {
            sums: vec![0; k * d],
            counts: vec![0; k],
        }
    }

    fn clear(&mut self) {
        self.sums.fill(0);
        self.counts.fill(0);
    }

    fn add(&mut self, other: &ClusterSums) {
        for (s, o) in self.sums.iter_mut().zip(&other.sums) {
            *s += o;
        }
        for (c, o) in self.counts.iter_mut().zip(&other.counts) {
            *c += o;
        }
    }

    /// Moves row `r` of `group` from cluster `from` ([`NO_CLUSTER`]: from none) to `to`.
    #[inline(always)]
    fn move_row(&mut self, group: &LaneGroup, r: usize, from: u32, to: u32, scales: &[f64]) {
        if from == to {
            return;
        }
        let d = group.len();
        let to = to as usize;
        self.counts[to] += 1;
        let to_range = to * d..(to + 1) * d;
        if from == NO_CLUSTER {
            for ((s, feature), &scale) in self.sums[to_range].iter_mut().zip(group).zip(scales) {
                *s += to_fixed(feature[r], scale);
            }
            return;
        }
        let from = from as usize;
        self.counts[from] -= 1;
        let Ok([to_sums, from_sums]) = self
            .sums
            .get_disjoint_mut([to_range, from * d..(from + 1) * d])
        else {
            unreachable!("labels are cluster indices below k, and `from` differs from `to`")
        };
        for (((t, s), feature), &scale) in to_sums.iter_mut().zip(from_sums).zip(group).zip(scales)
        {
            let value = to_fixed(feature[r], scale);
            *t += value;
            *s -= value;
        }
    }

    /// Takes a row (centred, row-major) out of cluster `from`.
    fn remove_row(&mut self, row: &[f64], from: usize, scales: &[f64]) {
        let d = row.len();
        self.counts[from] -= 1;
        for ((s, &v), &scale) in self.sums[from * d..(from + 1) * d]
            .iter_mut()
            .zip(row)
            .zip(scales)
        {
            *s -= to_fixed(v, scale);
        }
    }

    /// Writes the mean of every non-empty cluster into its row of `centroids`. The i128 to
    /// f64 conversion rounds to nearest, so the mean is within about one rounding of the
    /// exact mean of the gridded values.
    fn write_means(&self, centroids: &mut [f64], unscales: &[f64]) {
        let d = unscales.len();
        for (j, &count) in self.counts.iter().enumerate() {
            if count > 0 {
                let count = count as f64;
                for (f, &unscale) in unscales.iter().enumerate() {
                    // Dividing before unscaling keeps the value in range (a mean is no larger
                    // than the column's largest magnitude); unscaling by a power of two is
                    // exact.
                    centroids[j * d + f] = (self.sums[j * d + f] as f64 / count) * unscale;
                }
            }
        }
    }
}

/// What one block of rows changed in an assignment: the sums of the rows that changed label
/// moved between clusters, and how many did.
#[derive(Clone)]
struct BlockChanges {
    sums: ClusterSums,
    changed: usize,
}

/// Labels every row with its nearest centroid and, when `changes` is given, records each
/// block's label changes in it (so that the cluster sums can follow).
fn assign_all(
    data: &Prepared,
    centroids: &KernelCentroids,
    kernel: Kernel,
    labels: &mut [u32],
    changes: Option<&mut [BlockChanges]>,
) {
    let d = data.n_features;
    let scales = &data.fixed_scales[..];
    let blocks = data.par_blocks().zip(labels.par_chunks_mut(ROWS_PER_BLOCK));
    match changes {
        Some(changes) => {
            blocks
                .zip(changes.par_iter_mut())
                .for_each(|((block, labels), change)| {
                    change.sums.clear();
                    change.changed = kernel.assign_block::<true>(
                        block,
                        d,
                        centroids,
                        labels,
                        &mut change.sums,
                        scales,
                    );
                })
        }
        None => blocks.for_each(|(block, labels)| {
            let mut unused = ClusterSums::zeros(0, 0);
            kernel.assign_block::<false>(block, d, centroids, labels, &mut unused, scales);
        }),
    }
}

/// Σ ‖x_i − c_label(i)‖² from exact differences (the dot-product form used for assignment
/// loses digits), blocked and reduced in block order.
fn exact_inertia(data: &Prepared, centroids: &[f64], labels: &[u32]) -> f64 {
    let block_sums: Vec<f64> = data
        .par_blocks()
        .zip(labels.par_chunks(ROWS_PER_BLOCK))
        .map(|(block, labels)| {
            let mut sum = 0.0;
            for_each_row_distance(block, data.n_features, centroids, labels, |_, dist| {
                sum += dist
            });
            sum
        })
        .collect();
    block_sums.iter().sum()
}

/// Calls `f(row index within the block, squared distance to its centroid)` for each row of
/// a block, in row order.
fn for_each_row_distance(
    block: &[f64],
    d: usize,
    centroids: &[f64],
    labels: &[u32],
    mut f: impl FnMut(usize, f64),
) {
    for (g, (group, labels)) in lane_groups(block, d).zip(labels.chunks(LANES)).enumerate() {
        for (r, &label) in labels.iter().enumerate() {
            let j = label as usize;
            let mut sum = 0.0;
            for (feature, c) in group.iter().zip(&centroids[j * d..(j + 1) * d]) {
                let diff = feature[r] - c;
                sum += diff * diff;
            }
            f(g * LANES + r, sum);
        }
    }
}

/// scikit-learn's `_relocate_empty_clusters_dense`: each empty cluster takes, as its only
/// row, one of the rows farthest from the centre it was assigned to this iteration (farthest
/// first, to the empty clusters in increasing order; ties to the lower row index), and that
/// row is taken out of its former cluster's sums. Returns (empty cluster, row index) pairs:
/// the centre of each such cluster is that row, exactly.
fn relocate_empty_clusters(
    data: &Prepared,
    centroids: &[f64],
    labels: &[u32],
    sums: &mut ClusterSums,
) -> Vec<(usize, usize)> {
    let d = data.n_features;
    let empty: Vec<usize> = (0..sums.counts.len())
        .filter(|&j| sums.counts[j] == 0)
        .collect();
    let wanted = empty.len();
    // Farther first; among equals, the lower row index first.
    let order = |a: &(f64, usize), b: &(f64, usize)| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1));
    let per_block: Vec<Vec<(f64, usize)>> = data
        .par_blocks()
        .zip(labels.par_chunks(ROWS_PER_BLOCK))
        .enumerate()
        .map(|(b, (block, labels))| {
            let mut farthest: Vec<(f64, usize)> = Vec::with_capacity(wanted + 1);
            for_each_row_distance(block, d, centroids, labels, |i, dist| {
                let candidate = (dist, b * ROWS_PER_BLOCK + i);
                let at = farthest.partition_point(|kept| order(kept, &candidate).is_lt());
                if at < wanted {
                    farthest.insert(at, candidate);
                    farthest.truncate(wanted);
                }
            });
            farthest
        })
        .collect();
    let mut farthest: Vec<(f64, usize)> = per_block.into_iter().flatten().collect();
    farthest.sort_by(order);
    let mut moves = Vec::with_capacity(wanted);
    for (&empty_cluster, &(_, row_index)) in empty.iter().zip(&farthest) {
        let former = labels[row_index] as usize;
        sums.remove_row(&data.row(row_index), former, &data.fixed_scales);
        moves.push((empty_cluster, row_index));
    }
    moves
}

// ---------------------------------------------------------------------------------------------
// The assignment kernel (the hot loop)
// ---------------------------------------------------------------------------------------------

/// Which compiled copy of the kernel runs. All copies do the same IEEE operations in the same
/// order per lane (no fused multiply-add: Rust never contracts `a * b + c`), so they give
/// bit-identical results; the wider one is only faster.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Kernel {
    Portable,
    #[cfg(target_arch = "x86_64")]
    Avx2,
}

impl Kernel {
    fn detect() -> Self {
        #[cfg(target_arch = "x86_64")]
        {
            if std::arch::is_x86_feature_detected!("avx2") {
                return Kernel::Avx2;
            }
        }
        Kernel::Portable
    }

    /// Labels the rows of one block; when `TRACK`, moves each row that changes label between
    /// the clusters of `changes`. Returns how many labels changed.
    fn assign_block<const TRACK: bool>(
        self,
        block: &[f64],
        d: usize,
        centroids: &KernelCentroids,
        labels: &mut [u32],
        changes: &mut ClusterSums,
        scales: &[f64],
    ) -> usize {
        match self {
            Kernel::Portable => {
                assign_block_portable::<TRACK>(block, d, centroids, labels, changes, scales)
            }
            #[cfg(target_arch = "x86_64")]
            // SAFETY: this variant is only chosen after `is_x86_feature_detected!("avx2")`.
            Kernel::Avx2 => unsafe {
                assign_block_avx2::<TRACK>(block, d, centroids, labels, changes, scales)
            },
        }
    }
}

impl Kernel {
    /// For each row of `tile` (a tile of [`SilhouetteTiles`]), the sum of its Euclidean
    /// distances to the rows of `others` (row-major), added in row order: per row exactly
    /// `Σ_j squared_distance(row, other_j).sqrt()` of the scalar formulation, bit for bit.
    fn tile_distance_sums(
        self,
        tile: &[SilhouetteLane],
        others: &[f64],
        d: usize,
    ) -> [SilhouetteLane; SILHOUETTE_GROUPS] {
        match self {
            Kernel::Portable => tile_distance_sums_portable(tile, others, d),
            #[cfg(target_arch = "x86_64")]
            // SAFETY: this variant is only chosen after `is_x86_feature_detected!("avx2")`.
            Kernel::Avx2 => unsafe { tile_distance_sums_avx2(tile, others, d) },
        }
    }
}

fn tile_distance_sums_portable(
    tile: &[SilhouetteLane],
    others: &[f64],
    d: usize,
) -> [SilhouetteLane; SILHOUETTE_GROUPS] {
    let mut sums = [[0.0; SILHOUETTE_LANES]; SILHOUETTE_GROUPS];
    for other in others.chunks_exact(d) {
        for (group, sums) in tile.chunks_exact(d).zip(&mut sums) {
            let squared = group_squared_distances(group, other);
            for (sum, squared) in sums.iter_mut().zip(squared) {
                *sum += squared.sqrt();
            }
        }
    }
    sums
}

/// [`tile_distance_sums_portable`] in AVX2 intrinsics: the same operations lane for lane
/// (subtract, multiply, add, no FMA; `sqrt` is correctly rounded in both), so bit-identical.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
fn tile_distance_sums_avx2(
    tile: &[SilhouetteLane],
    others: &[f64],
    d: usize,
) -> [SilhouetteLane; SILHOUETTE_GROUPS] {
    use std::arch::x86_64::*;
    assert_eq!(tile.len(), SILHOUETTE_GROUPS * d);
    let mut totals = [_mm256_setzero_pd(); SILHOUETTE_GROUPS];
    for other in others.chunks_exact(d) {
        let mut squared = [_mm256_setzero_pd(); SILHOUETTE_GROUPS];
        for (f, &o) in other.iter().enumerate() {
            let o = _mm256_set1_pd(o);
            for (g, squared) in squared.iter_mut().enumerate() {
                // SAFETY: `tile` holds SILHOUETTE_GROUPS · d lanes (asserted), each four f64.
                let values = unsafe { _mm256_loadu_pd(tile.get_unchecked(g * d + f).as_ptr()) };
                let diff = _mm256_sub_pd(values, o);
                *squared = _mm256_add_pd(*squared, _mm256_mul_pd(diff, diff));
            }
        }
        for (total, squared) in totals.iter_mut().zip(squared) {
            *total = _mm256_add_pd(*total, _mm256_sqrt_pd(squared));
        }
    }
    let mut sums = [[0.0; SILHOUETTE_LANES]; SILHOUETTE_GROUPS];
    for (sums, total) in sums.iter_mut().zip(totals) {
        // SAFETY: `sums` is four f64, the 32 bytes stored.
        unsafe { _mm256_storeu_pd(sums.as_mut_ptr(), total) };
    }
    sums
}

fn assign_block_portable<const TRACK: bool>(
    block: &[f64],
    d: usize,
    centroids: &KernelCentroids,
    labels: &mut [u32],
    changes: &mut ClusterSums,
    scales: &[f64],
) -> usize {
    let mut changed = 0;
    for (group, labels) in lane_groups(block, d).zip(labels.chunks_mut(LANES)) {
        let nearest = nearest_in_group(group, centroids);
        // labels is shorter than LANES in the last, padded group: padding rows are skipped.
        for (r, (label, &j)) in labels.iter_mut().zip(&nearest).enumerate() {
            if *label != j {
                if TRACK {
                    changes.move_row(group, r, *label, j, scales);
                }
                *label = j;
                changed += 1;
            }
        }
    }
    changed
}

/// For each row of a group, the index of the centroid minimising `½‖c‖² − x·c` (the same
/// argmin as `‖x − c‖²`; the lowest index on a tie, as numpy's argmin). Rows are lanes, so the
/// running minimum is a branch-free select per lane: no data-dependent branch to mispredict.
#[inline(always)]
fn nearest_in_group(group: &LaneGroup, centroids: &KernelCentroids) -> [u32; LANES] {
    let d = group.len();
    let mut best_score = [f64::INFINITY; LANES];
    // Kept as f64 so that the selects stay in one register type; exact below 2^53.
    let mut best_index = [0.0f64; LANES];
    // Centroids in fours: four independent dot products share each load of the rows and
    // hide the latency of the additions; the order of operations per (row, centroid) is the
    // same as one at a time, so the results are too.
    let (values, _) = centroids.quads.as_chunks::<CENTROIDS_AT_ONCE>();
    let (half_norms, _) = centroids.half_norms.as_chunks::<CENTROIDS_AT_ONCE>();
    let (indices, _) = centroids.indices.as_chunks::<CENTROIDS_AT_ONCE>();
    for ((quad, halves), quad_indices) in values.chunks_exact(d).zip(half_norms).zip(indices) {
        let mut dots = [[0.0f64; LANES]; CENTROIDS_AT_ONCE];
        for (feature, centre_values) in group.iter().zip(quad) {
            for (dot, &value) in dots.iter_mut().zip(centre_values) {
                for r in 0..LANES {
                    dot[r] += feature[r] * value;
                }
            }
        }
        for ((dot, &half), &index) in dots.iter().zip(halves).zip(quad_indices) {
            keep_better(&mut best_score, &mut best_index, half, dot, index);
        }
    }
    best_index.map(|i| i as u32)
}

/// The whole of [`assign_block_portable`] with AVX intrinsics for [`nearest_in_group`]: LLVM's
/// auto-vectoriser turns the portable version into shuffles and spills. One function per block
/// (not per group of rows) so that nothing is set up again per group. Lane for lane it does
/// exactly the portable version's operations in the same order (separate multiply and add, no
/// FMA; `<` as an ordered compare), so the two give bit-identical labels.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
fn assign_block_avx2<const TRACK: bool>(
    block: &[f64],
    d: usize,
    centroids: &KernelCentroids,
    labels: &mut [u32],
    changes: &mut ClusterSums,
    scales: &[f64],
) -> usize {
    use std::arch::x86_64::*;
    let (values, _) = centroids.quads.as_chunks::<CENTROIDS_AT_ONCE>();
    let (half_norms, _) = centroids.half_norms.as_chunks::<CENTROIDS_AT_ONCE>();
    let (indices, _) = centroids.indices.as_chunks::<CENTROIDS_AT_ONCE>();
    // The last four is scored only as far as it holds centroids: its padding never wins, and
    // at k = 5 scoring it whole would be the work of k = 8.
    let full_quads = centroids.k / CENTROIDS_AT_ONCE;
    let live_in_last = centroids.k % CENTROIDS_AT_ONCE;
    let mut changed = 0;
    for (group, labels) in lane_groups(block, d).zip(labels.chunks_mut(LANES)) {
        let mut best = Best {
            score: [_mm256_set1_pd(f64::INFINITY); 2],
            index: [_mm256_setzero_pd(); 2],
        };
        let quads = values.chunks_exact(d).zip(half_norms).zip(indices);
        for ((quad, halves), quad_indices) in quads.clone().take(full_quads) {
            keep_nearest_of_quad::<CENTROIDS_AT_ONCE>(&mut best, group, quad, halves, quad_indices);
        }
        if let Some(((quad, halves), quad_indices)) = quads.clone().nth(full_quads) {
            match live_in_last {
                0 => {}
                1 => keep_nearest_of_quad::<1>(&mut best, group, quad, halves, quad_indices),
                2 => keep_nearest_of_quad::<2>(&mut best, group, quad, halves, quad_indices),
                _ => keep_nearest_of_quad::<3>(&mut best, group, quad, halves, quad_indices),
            }
        }
        let Best {
            score: _,
            index: best_index,
        } = best;
        // The indices are small integers held exactly: the conversion is exact.
        let nearest = _mm256_set_m128i(
            _mm256_cvtpd_epi32(best_index[1]),
            _mm256_cvtpd_epi32(best_index[0]),
        );
        let mut new_labels = [0u32; LANES];
        // SAFETY: `new_labels` holds 8 u32, the 32 bytes stored.
        unsafe { _mm256_storeu_si256(new_labels.as_mut_ptr().cast(), nearest) };
        if labels.len() < LANES {
            // The last, padded group: padding rows are skipped.
            for (r, (label, &j)) in labels.iter_mut().zip(&new_labels).enumerate() {
                if *label != j {
                    if TRACK {
                        changes.move_row(group, r, *label, j, scales);
                    }
                    *label = j;
                    changed += 1;
                }
            }
            continue;
        }
        // SAFETY: a full group has 8 labels, the 32 bytes loaded.
        let old = unsafe { _mm256_loadu_si256(labels.as_ptr().cast()) };
        let same = _mm256_movemask_ps(_mm256_castsi256_ps(_mm256_cmpeq_epi32(old, nearest)));
        let mut moved = !(same as u32) & 0xff;
        if moved == 0 {
            // Usual once Lloyd settles: nothing to write back.
            continue;
        }
        changed += moved.count_ones() as usize;
        if TRACK {
            while moved != 0 {
                let r = moved.trailing_zeros() as usize;
                changes.move_row(group, r, labels[r], new_labels[r], scales);
                moved &= moved - 1;
            }
        }
        // SAFETY: a full group has 8 labels, the 32 bytes stored.
        unsafe { _mm256_storeu_si256(labels.as_mut_ptr().cast(), nearest) };
    }
    changed
}

/// The best score so far and its centroid's index, per half of a group of rows (rows 0..4 and
/// 4..8), in the AVX2 kernel.
#[cfg(target_arch = "x86_64")]
struct Best {
    score: [std::arch::x86_64::__m256d; 2],
    index: [std::arch::x86_64::__m256d; 2],
}

/// Scores a group of rows against the first `LIVE` centroids of a four of the kernel's
/// layout and keeps, per row, the better of its best so far and these.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
#[inline]
fn keep_nearest_of_quad<const LIVE: usize>(
    best: &mut Best,
    group: &LaneGroup,
    quad: &[[f64; CENTROIDS_AT_ONCE]],
    halves: &[f64; CENTROIDS_AT_ONCE],
    quad_indices: &[f64; CENTROIDS_AT_ONCE],
) {
    use std::arch::x86_64::*;
    // dots[2c + h]: rows 4h..4h+4 against centroid 4q + c.
    let mut dots = [_mm256_setzero_pd(); 2 * CENTROIDS_AT_ONCE];
    for (feature, centre_values) in group.iter().zip(quad) {
        // SAFETY: `feature` is a [f64; 8]: both unaligned loads of four stay inside it.
        let (low, high) = unsafe {
            (
                _mm256_loadu_pd(feature.as_ptr()),
                _mm256_loadu_pd(feature.as_ptr().add(4)),
            )
        };
        for c in 0..LIVE {
            let value = _mm256_set1_pd(centre_values[c]);
            dots[2 * c] = _mm256_add_pd(dots[2 * c], _mm256_mul_pd(low, value));
            dots[2 * c + 1] = _mm256_add_pd(dots[2 * c + 1], _mm256_mul_pd(high, value));
        }
    }
    for c in 0..LIVE {
        let half = _mm256_set1_pd(halves[c]);
        let index = _mm256_set1_pd(quad_indices[c]);
        for h in 0..2 {
            let score = _mm256_sub_pd(half, dots[2 * c + h]);
            let better = _mm256_cmp_pd::<_CMP_LT_OQ>(score, best.score[h]);
            best.score[h] = _mm256_blendv_pd(best.score[h], score, better);
            best.index[h] = _mm256_blendv_pd(best.index[h], index, better);
        }
    }
}

/// Centroids scored together in [`nearest_in_group`].
const CENTROIDS_AT_ONCE: usize = 4;

/// Centroids laid out for [`nearest_in_group`]: in fours (the last four padded with zero
/// centroids whose infinite half-norm makes them never win), feature-major inside a four:
/// `quads[(q·d + f)·4 + c]` is feature `f` of centroid `4q + c`; `half_norms` is `½‖c‖²` and
/// `indices` the centroid's index as an f64 (what the kernel's selects carry).
struct KernelCentroids {
    k: usize,
    quads: Vec<f64>,
    half_norms: Vec<f64>,
    indices: Vec<f64>,
}

impl KernelCentroids {
    fn new(centroids: &[f64], d: usize) -> Self {
        let k = centroids.len() / d;
        let padded = k.div_ceil(CENTROIDS_AT_ONCE) * CENTROIDS_AT_ONCE;
        let mut quads = vec![0.0; padded * d];
        let mut half_norms = vec![f64::INFINITY; padded];
        for (j, centroid) in centroids.chunks_exact(d).enumerate() {
            let (q, c) = (j / CENTROIDS_AT_ONCE, j % CENTROIDS_AT_ONCE);
            for (f, &v) in centroid.iter().enumerate() {
                quads[(q * d + f) * CENTROIDS_AT_ONCE + c] = v;
            }
            half_norms[j] = 0.5 * centroid.iter().map(|v| v * v).sum::<f64>();
        }
        let indices = (0..padded).map(|j| j as f64).collect();
        Self {
            k,
            quads,
            half_norms,
            indices,
        }
    }
}

#[inline(always)]
fn keep_better(
    best_score: &mut [f64; LANES],
    best_index: &mut [f64; LANES],
    half_norm: f64,
    dot: &[f64; LANES],
    index: f64,
) {
    for r in 0..LANES {
        let score = half_norm - dot[r];
        // Strict: a later centroid must be better to win. A NaN score (only from values so
        // large that products overflow) never wins, so the index stays a real one.
        let better = score < best_score[r];
        best_score[r] = if better { score } else { best_score[r] };
        best_index[r] = if better { index } else { best_index[r] };
    }
}

// ---------------------------------------------------------------------------------------------
// Silhouette
// ---------------------------------------------------------------------------------------------

/// Mean silhouette coefficient of `labels` on the rows of `x` (Euclidean distance), as
/// scikit-learn's `silhouette_score(x, labels, sample_size=…, random_state=…)`:
/// - with at most `sample_size` rows it is exact, O(n²) distance evaluations (parallel and
///   blocked, deterministic whatever the thread count);
/// - with more rows it is the exact silhouette of `sample_size` rows drawn without
///   replacement with `ChaCha8Rng::seed_from_u64(seed)`, clusters taken as they appear in the
///   sample: an estimate whose cost stays bounded.
///
/// A row alone in its cluster scores 0. The scored rows must hold between 2 and
/// (rows − 1) distinct labels.
pub fn silhouette_score(
    x: ArrayView2<'_, f64>,
    labels: &[usize],
    sample_size: usize,
    seed: u64,
) -> Result<f64, KMeansError> {
    let (n_rows, n_features) = x.dim();
    if sample_size < 2 {
        return Err(KMeansError::SilhouetteSampleTooSmall { sample_size });
    }
    if n_rows == 0 {
        return Err(KMeansError::EmptyInput);
    }
    if n_features == 0 {
        return Err(KMeansError::NoFeatures { rows: n_rows });
    }
    if labels.len() != n_rows {
        return Err(KMeansError::LabelCountMismatch {
            rows: n_rows,
            labels: labels.len(),
        });
    }
    let rows = row_major(x);
    if let Some(err) = first_non_finite(&rows, n_features) {
        return Err(err);
    }
    // All rows up to `sample_size`, else a seeded sample.
    let sample = crate::split::sample_rows(n_rows, sample_size, seed);
    let sampled_rows = gather_rows(&rows, n_features, &sample);
    let sampled_labels: Vec<usize> = sample.iter().map(|&i| labels[i]).collect();
    exact_silhouette(&sampled_rows, n_features, &sampled_labels)
}

fn exact_silhouette(rows: &[f64], d: usize, labels: &[usize]) -> Result<f64, KMeansError> {
    exact_silhouette_with(rows, d, labels, Kernel::detect())
}

fn exact_silhouette_with(
    rows: &[f64],
    d: usize,
    labels: &[usize],
    kernel: Kernel,
) -> Result<f64, KMeansError> {
    let n = labels.len();
    // Clusters renumbered 0..c in increasing label order, as scikit-learn's LabelEncoder.
    let mut distinct: Vec<usize> = labels.to_vec();
    distinct.sort_unstable();
    distinct.dedup();
    let n_clusters = distinct.len();
    if n_clusters < 2 || n_clusters >= n {
        return Err(KMeansError::SilhouetteClusterCount {
            clusters: n_clusters,
            rows: n,
        });
    }
    let dense: Vec<usize> = labels
        .iter()
        .map(|l| distinct.partition_point(|d| d < l))
        .collect();
    let mut sizes = vec![0usize; n_clusters];
    for &c in &dense {
        sizes[c] += 1;
    }
    // The rows again, grouped by cluster and in row order inside a cluster, so that a sum of
    // distances to one cluster's rows runs over one contiguous slice and adds the distances in
    // row order.
    let mut by_cluster: Vec<usize> = (0..n).collect();
    by_cluster.sort_by_key(|&i| dense[i]);
    let others = gather_rows(rows, d, &by_cluster);
    let mut cluster_starts = vec![0usize; n_clusters + 1];
    for (c, &size) in sizes.iter().enumerate() {
        cluster_starts[c + 1] = cluster_starts[c] + size;
    }
    let block_sums: Vec<f64> = rows
        .par_chunks(SILHOUETTE_ROWS_PER_BLOCK * d)
        .zip(dense.par_chunks(SILHOUETTE_ROWS_PER_BLOCK))
        .map(|(block, block_labels)| {
            let m = block_labels.len();
            let tiles = SilhouetteTiles::new(block, d);
            // distance_sums[i·c + cluster]: Σ distances from block row i to that cluster's
            // rows, summed in row order (so independent of threads and blocks).
            let mut distance_sums = vec![0.0; m * n_clusters];
            for (t, tile) in tiles.tiles().enumerate() {
                for (cluster, bounds) in cluster_starts.windows(2).enumerate() {
                    let cluster_rows = &others[bounds[0] * d..bounds[1] * d];
                    let sums = kernel.tile_distance_sums(tile, cluster_rows, d);
                    for (r, &sum) in sums.as_flattened().iter().enumerate() {
                        let i = t * SILHOUETTE_TILE_ROWS + r;
                        if i < m {
                            distance_sums[i * n_clusters + cluster] = sum;
                        }
                    }
                }
            }
            let mut sum = 0.0;
            for (i, &own) in block_labels.iter().enumerate() {
                sum += row_silhouette(
                    &distance_sums[i * n_clusters..(i + 1) * n_clusters],
                    own,
                    &sizes,
                );
            }
            sum
        })
        .collect();
    Ok(block_sums.iter().sum::<f64>() / n as f64)
}

/// Rows of a silhouette block held in one SIMD register (AVX2: four f64).
const SILHOUETTE_LANES: usize = 4;

/// Groups of [`SILHOUETTE_LANES`] rows compared with each other row together: four
/// independent running sums hide the latency of each (an addition waits for the previous one
/// of its row, and a square root takes about 20 cycles).
const SILHOUETTE_GROUPS: usize = 4;

/// Rows of a block compared with each other row at once.
const SILHOUETTE_TILE_ROWS: usize = SILHOUETTE_LANES * SILHOUETTE_GROUPS;

/// A lane group's value of one feature.
type SilhouetteLane = [f64; SILHOUETTE_LANES];

/// The rows of a silhouette block laid out for [`Kernel::tile_distance_sums`]: tiles of
/// [`SILHOUETTE_TILE_ROWS`] rows, group-major then feature-major inside a tile
/// (`lanes[(t·G + g)·d + f][r]` is feature `f` of row `t·TILE + g·LANES + r`), the last tile
/// padded with zero rows whose sums are never read.
struct SilhouetteTiles {
    lanes: Vec<SilhouetteLane>,
    d: usize,
}

impl SilhouetteTiles {
    fn new(block: &[f64], d: usize) -> Self {
        let m = block.len() / d;
        let groups = m.div_ceil(SILHOUETTE_TILE_ROWS) * SILHOUETTE_GROUPS;
        let mut lanes = vec![[0.0; SILHOUETTE_LANES]; groups * d];
        for (i, row) in block.chunks_exact(d).enumerate() {
            let (g, r) = (i / SILHOUETTE_LANES, i % SILHOUETTE_LANES);
            for (f, &v) in row.iter().enumerate() {
                lanes[g * d + f][r] = v;
            }
        }
        Self { lanes, d }
    }

    fn tiles(&self) -> std::slice::ChunksExact<'_, SilhouetteLane> {
        self.lanes.chunks_exact(SILHOUETTE_GROUPS * self.d)
    }
}

/// s = (b − a) / max(a, b): a is the mean distance to the other rows of the own cluster, b the
/// lowest mean distance to another cluster's rows; 0 for a row alone in its cluster.
fn row_silhouette(distance_sums: &[f64], own: usize, sizes: &[usize]) -> f64 {
    if sizes[own] <= 1 {
        return 0.0;
    }
    let a = distance_sums[own] / (sizes[own] - 1) as f64;
    let mut b = f64::INFINITY;
    for (c, (&sum, &size)) in distance_sums.iter().zip(sizes).enumerate() {
        if c != own && size > 0 {
            b = b.min(sum / size as f64);
        }
    }
    let scale = a.max(b);
    // All rows at one point: scikit-learn's nan_to_num makes this 0.
    if scale > 0.0 { (b - a) / scale } else { 0.0 }
}

// ---------------------------------------------------------------------------------------------
// Choosing k
// ---------------------------------------------------------------------------------------------

/// Parameters of a search for k over `k_min..=k_max`. Each k is fitted with the k-means
/// parameters here and the same seed.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct KSearchParams {
    pub k_min: usize,
    pub k_max: usize,
    pub n_init: usize,
    pub max_iter: usize,
    pub tol: f64,
    pub seed: u64,
    /// Rows above which the silhouette is estimated on a seeded sample of this size.
    pub silhouette_sample_size: usize,
}

impl KSearchParams {
    /// `k_min..=k_max` with [`KMeansParams::new`]'s defaults and
    /// [`DEFAULT_SILHOUETTE_SAMPLE_SIZE`].
    pub fn new(k_min: usize, k_max: usize) -> Self {
        let defaults = KMeansParams::new(k_max);
        Self {
            k_min,
            k_max,
            n_init: defaults.n_init,
            max_iter: defaults.max_iter,
            tol: defaults.tol,
            seed: defaults.seed,
            silhouette_sample_size: DEFAULT_SILHOUETTE_SAMPLE_SIZE,
        }
    }

    pub fn check(&self) -> Result<CheckedKSearchParams, KMeansError> {
        if self.k_min == 0 {
            return Err(KMeansError::ZeroMinClusters);
        }
        if self.k_min > self.k_max {
            return Err(KMeansError::EmptyKRange {
                k_min: self.k_min,
                k_max: self.k_max,
            });
        }
        if self.silhouette_sample_size < 2 {
            return Err(KMeansError::SilhouetteSampleTooSmall {
                sample_size: self.silhouette_sample_size,
            });
        }
        let kmeans = KMeansParams {
            k: self.k_max,
            n_init: self.n_init,
            max_iter: self.max_iter,
            tol: self.tol,
            seed: self.seed,
        }
        .check()?;
        Ok(CheckedKSearchParams {
            params: *self,
            kmeans,
        })
    }
}

/// Parameters that passed [`KSearchParams::check`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct CheckedKSearchParams {
    params: KSearchParams,
    kmeans: CheckedKMeansParams,
}

/// One point of the k curve.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct KCurvePoint {
    pub k: usize,
    /// Sum of squared distances to the centroids (see [`KMeansFit::inertia`]).
    pub inertia: f64,
    /// Mean silhouette; `None` for k = 1, or when the fit's labels do not have between 2 and
    /// (scored rows − 1) distinct clusters.
    pub silhouette: Option<f64>,
}

/// Why [`KSearch::chosen_k`] was chosen.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum KChoice {
    /// The knee of the elbow curve, its silhouette within [`SILHOUETTE_OVERRIDE_MARGIN`] of the best.
    Knee,
    /// The best silhouette, because the knee's was more than the margin below it.
    SilhouetteOverKnee,
    /// The best silhouette, because the curve has no knee (fewer than 3 points, flat, or no
    /// point below the line joining its ends).
    SilhouetteNoKnee,
    /// k_min, because there is neither a knee nor any silhouette.
    Smallest,
}

/// The result of a k search.
#[derive(Debug, Clone, PartialEq)]
pub struct KSearch {
    pub curve: Vec<KCurvePoint>,
    /// The knee of the elbow curve, if it has one.
    pub knee_k: Option<usize>,
    pub chosen_k: usize,
    pub reason: KChoice,
    /// The fit for `chosen_k`.
    pub fit: KMeansFit,
}

impl CheckedKSearchParams {
    pub fn params(&self) -> &KSearchParams {
        &self.params
    }

    /// Fits every k of the range and chooses one by [`choose_k`]'s rule.
    pub fn run(&self, x: ArrayView2<'_, f64>) -> Result<KSearch, KMeansError> {
        let p = self.params;
        if p.k_max > x.nrows() && x.nrows() > 0 {
            return Err(KMeansError::MoreClustersThanRows {
                k: p.k_max,
                rows: x.nrows(),
            });
        }
        let mut curve = Vec::new();
        let mut fits = Vec::new();
        for k in p.k_min..=p.k_max {
            let fit = KMeansParams {
                k,
                ..*self.kmeans.params()
            }
            .check()?
            .fit(x)?;
            let silhouette = if k >= 2 {
                match silhouette_score(x, &fit.labels, p.silhouette_sample_size, p.seed) {
                    Ok(score) => Some(score),
                    // Too few distinct clusters survived (duplicate rows), or one cluster per
                    // row: no silhouette for this k, which is not an error of the search.
                    Err(KMeansError::SilhouetteClusterCount { .. }) => None,
                    Err(other) => return Err(other),
                }
            } else {
                None
            };
            curve.push(KCurvePoint {
                k,
                inertia: fit.inertia,
                silhouette,
            });
            fits.push(fit);
        }
        let (chosen_k, knee_k, reason) = choose_k(&curve);
        let chosen_index = chosen_k - p.k_min;
        match fits.into_iter().nth(chosen_index) {
            Some(fit) => Ok(KSearch {
                curve,
                knee_k,
                chosen_k,
                reason,
                fit,
            }),
            None => Err(KMeansError::EmptyKRange {
                k_min: p.k_min,
                k_max: p.k_max,
            }),
        }
    }
}

/// The knee of an elbow curve (Kneedle-style): with k and inertia both scaled to 0..1, the
/// interior point farthest below the straight line from the first point to the last (ties to
/// the smaller k). `None` when there are fewer than 3 points, the inertia is flat, or no point
/// lies below that line. `curve` must be in increasing k.
pub fn knee(curve: &[KCurvePoint]) -> Option<usize> {
    let (first, last) = (curve.first()?, curve.last()?);
    if curve.len() < 3 {
        return None;
    }
    let k_span = (last.k - first.k) as f64;
    let (low, high) = curve
        .iter()
        .fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), p| {
            (lo.min(p.inertia), hi.max(p.inertia))
        });
    let inertia_span = high - low;
    // Also catches a NaN span (infinite inertia), which compares false.
    let has_spans = inertia_span > 0.0 && k_span > 0.0;
    if !has_spans {
        return None;
    }
    let scaled = |p: &KCurvePoint| {
        (
            (p.k - first.k) as f64 / k_span,
            (p.inertia - low) / inertia_span,
        )
    };
    let (_, y_first) = scaled(first);
    let (_, y_last) = scaled(last);
    let mut best: Option<(f64, usize)> = None;
    for point in &curve[1..curve.len() - 1] {
        let (x, y) = scaled(point);
        // Vertical distance below the chord; the perpendicular distance is this times a
        // constant, so both have the same maximum.
        let below = y_first + (y_last - y_first) * x - y;
        if below > 0.0 && best.is_none_or(|(b, _)| below > b) {
            best = Some((below, point.k));
        }
    }
    best.map(|(_, k)| k)
}

/// The rule of [`CheckedKSearchParams::run`]: take the knee of the elbow curve ([`knee`]);
/// if its silhouette is more than [`SILHOUETTE_OVERRIDE_MARGIN`] below the best silhouette of
/// the curve (k >= 2; ties to the smaller k), or the curve has no knee, take the k with the best
/// silhouette instead; with neither, k_min. Returns (chosen k, knee, reason).
pub fn choose_k(curve: &[KCurvePoint]) -> (usize, Option<usize>, KChoice) {
    let knee_k = knee(curve);
    let best_silhouette = curve
        .iter()
        .fold(None::<(f64, usize)>, |best, p| match p.silhouette {
            Some(s) if best.is_none_or(|(b, _)| s > b) => Some((s, p.k)),
            _ => best,
        });
    let k_min = curve.first().map_or(1, |p| p.k);
    match (knee_k, best_silhouette) {
        (Some(knee_k), Some((best, best_k))) => {
            let knee_silhouette = curve
                .iter()
                .find(|p| p.k == knee_k)
                .and_then(|p| p.silhouette);
            match knee_silhouette {
                Some(s) if s < best - SILHOUETTE_OVERRIDE_MARGIN => {
                    (best_k, Some(knee_k), KChoice::SilhouetteOverKnee)
                }
                _ => (knee_k, Some(knee_k), KChoice::Knee),
            }
        }
        (Some(knee_k), None) => (knee_k, Some(knee_k), KChoice::Knee),
        (None, Some((_, best_k))) => (best_k, None, KChoice::SilhouetteNoKnee),
        (None, None) => (k_min, None, KChoice::Smallest),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ndarray::{Array2, array};

    type TestResult = Result<(), Box<dyn std::error::Error>>;

    /// `per_blob` rows around each centre with uniform noise in ±`spread` on every feature,
    /// the blobs interleaved row by row; returns the data and each row's blob.
    fn blobs(
        centres: &[&[f64]],
        per_blob: usize,
        spread: f64,
        seed: u64,
    ) -> (Array2<f64>, Vec<usize>) {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let d = centres[0].len();
        let n = centres.len() * per_blob;
        let mut x = Array2::zeros((n, d));
        let mut truth = Vec::with_capacity(n);
        for i in 0..n {
            let blob = i % centres.len();
            for f in 0..d {
                x[[i, f]] = centres[blob][f] + spread * (2.0 * rng.random::<f64>() - 1.0);
            }
            truth.push(blob);
        }
        (x, truth)
    }

    fn bits(values: &Array2<f64>) -> Vec<u64> {
        values.iter().map(|v| v.to_bits()).collect()
    }

    /// Two fits that must be the same run: labels, centroids and inertia bit for bit, and the
    /// same iterations.
    fn assert_same_fit(a: &KMeansFit, b: &KMeansFit) {
        assert_eq!(a.labels, b.labels);
        assert_eq!(bits(&a.centroids), bits(&b.centroids));
        assert_eq!(a.inertia.to_bits(), b.inertia.to_bits());
        assert_eq!((a.n_iter, a.converged), (b.n_iter, b.converged));
    }

    /// Each true group is one cluster and each cluster one true group.
    fn is_same_partition(a: &[usize], b: &[usize]) -> bool {
        let mut a_to_b = std::collections::HashMap::new();
        let mut b_to_a = std::collections::HashMap::new();
        a.iter().zip(b).all(|(&x, &y)| {
            *a_to_b.entry(x).or_insert(y) == y && *b_to_a.entry(y).or_insert(x) == x
        })
    }

    #[test]
    fn the_same_seed_gives_bit_identical_results_on_one_and_two_threads() -> TestResult {
        // Several blocks of rows, so that two threads really split the work.
        let (x, _) = blobs(&[&[0.0, 0.0], &[3.0, 1.0], &[1.0, 4.0]], 4_000, 2.0, 1);
        assert!(x.nrows() > 2 * ROWS_PER_BLOCK);
        let params = KMeansParams {
            k: 3,
            n_init: 2,
            max_iter: 50,
            tol: 0.0,
            seed: 42,
        }
        .check()?;
        let run = |threads: usize| -> Result<(KMeansFit, f64), Box<dyn std::error::Error>> {
            let pool = rayon::ThreadPoolBuilder::new()
                .num_threads(threads)
                .build()?;
            let result = pool.install(|| -> Result<(KMeansFit, f64), KMeansError> {
                let fit = params.fit(x.view())?;
                let silhouette = silhouette_score(x.view(), &fit.labels, 300, 7)?;
                Ok((fit, silhouette))
            });
            Ok(result?)
        };
        let (one, one_silhouette) = run(1)?;
        let (two, two_silhouette) = run(2)?;
        assert_same_fit(&one, &two);
        assert_eq!(one_silhouette.to_bits(), two_silhouette.to_bits());
        Ok(())
    }

    #[test]
    fn the_simd_and_portable_kernels_give_the_same_labels() -> TestResult {
        let (x, _) = blobs(
            &[&[0.0, 0.0, 0.0], &[1.0, 1.0, 0.0], &[0.0, 1.0, 1.0]],
            700,
            1.5,
            2,
        );
        let data = Prepared::new(x.view())?;
        // k from 1 to 9: full fours of centroids, and a last four holding one, two or three.
        let centre_rows = [0, 5, 10, 33, 70, 300, 1_000, 1_500, 2_000];
        for k in 1..=centre_rows.len() {
            let centroids = data.gather(&centre_rows[..k]);
            let kernel_centroids = KernelCentroids::new(&centroids, data.n_features);
            let mut portable = vec![0u32; data.n_rows];
            assign_all(
                &data,
                &kernel_centroids,
                Kernel::Portable,
                &mut portable,
                None,
            );
            let mut detected = vec![0u32; data.n_rows];
            assign_all(
                &data,
                &kernel_centroids,
                Kernel::detect(),
                &mut detected,
                None,
            );
            assert_eq!(portable, detected, "k = {k}");
            // And both agree with a plain nearest-centroid search on exact distances.
            for (i, &label) in portable.iter().enumerate() {
                let row = data.row(i);
                let exact: Vec<f64> = centroids
                    .chunks_exact(3)
                    .map(|c| squared_distance(&row, c))
                    .collect();
                let nearest = exact
                    .iter()
                    .enumerate()
                    .fold(0, |best, (j, &v)| if v < exact[best] { j } else { best });
                assert!(
                    (exact[label as usize] - exact[nearest]).abs() <= 1e-12,
                    "k = {k}, row {i}"
                );
            }
        }
        Ok(())
    }

    #[test]
    fn well_separated_planted_blobs_are_recovered() -> TestResult {
        let centres: [&[f64]; 4] = [
            &[0.0, 0.0, 0.0],
            &[10.0, 0.0, 0.0],
            &[0.0, 10.0, 0.0],
            &[0.0, 0.0, 10.0],
        ];
        let (x, truth) = blobs(&centres, 200, 1.0, 3);
        let fit = KMeansParams {
            k: 4,
            n_init: 3,
            max_iter: 100,
            tol: 1e-4,
            seed: 0,
        }
        .check()?
        .fit(x.view())?;
        assert!(is_same_partition(&truth, &fit.labels));
        assert!(fit.converged);
        for (blob, centre) in centres.iter().enumerate() {
            let label = fit.labels[truth.iter().position(|&t| t == blob).ok_or("blob")?];
            for (f, &c) in centre.iter().enumerate() {
                assert!((fit.centroids[[label, f]] - c).abs() < 0.15);
            }
        }
        Ok(())
    }

    #[test]
    fn lloyd_matches_linfa_from_the_same_initial_centroids() -> TestResult {
        use linfa::DatasetBase;
        use linfa::traits::{Fit, Predict};
        use linfa_clustering::{KMeans, KMeansInit};

        // linfa updates centres as m_k-means (the old centre counts as one more point), which
        // has the same fixed points as Lloyd but another path: the blobs are well separated so
        // that both paths end at the same partition.
        let (x, _) = blobs(&[&[0.0, 0.0], &[6.0, 0.0], &[3.0, 5.0]], 150, 2.0, 4);
        let init = kmeans_plusplus(x.view(), 3, 11)?;
        let ours = lloyd_from(x.view(), init.view(), 300, 0.0)?;
        let theirs = KMeans::params(3)
            .n_runs(1)
            .tolerance(1e-12)
            .max_n_iterations(1_000)
            .init_method(KMeansInit::Precomputed(init.clone()))
            .fit(&DatasetBase::from(x.clone()))?;
        let their_labels = theirs.predict(&x);
        assert_eq!(ours.labels, their_labels.to_vec());
        for (a, b) in ours.centroids.iter().zip(theirs.centroids().iter()) {
            assert!((a - b).abs() <= 1e-9 * (1.0 + b.abs()));
        }
        // linfa's inertia() is the mean squared distance; ours is the sum.
        let their_sum = theirs.inertia() * x.nrows() as f64;
        assert!(
            (ours.inertia - their_sum).abs() <= 1e-9 * their_sum,
            "{} vs {their_sum}",
            ours.inertia
        );
        Ok(())
    }

    #[test]
    fn kmeans_plus_plus_is_greedy_as_scikit_learn() -> TestResult {
        // scikit-learn's n_local_trials = 2 + floor(ln k).
        for (k, trials) in [(1, 2), (2, 2), (3, 3), (7, 3), (8, 4), (20, 4), (21, 5)] {
            assert_eq!(n_local_trials(k), trials, "k = {k}");
        }
        let centres: [&[f64]; 4] = [&[0.0, 0.0], &[20.0, 0.0], &[0.0, 20.0], &[20.0, 20.0]];
        let (x, truth) = blobs(&centres, 50, 1.0, 5);
        let data = Prepared::new(x.view())?;
        let mut steps = Vec::new();
        let chosen = kmeans_plusplus_rows(&data, 4, &mut restart_rng(9, 0), Some(&mut steps));
        assert_eq!(steps.len(), 3);
        for step in &steps {
            assert_eq!(step.candidates.len(), n_local_trials(4));
            // The kept candidate is the first one with the lowest total potential.
            let lowest = step
                .potentials
                .iter()
                .copied()
                .fold(f64::INFINITY, f64::min);
            let first_lowest = step
                .potentials
                .iter()
                .position(|&p| p == lowest)
                .ok_or("no potential")?;
            assert_eq!(step.chosen, step.candidates[first_lowest]);
        }
        // Candidates are drawn by squared distance: a row already chosen is never drawn again.
        for (s, step) in steps.iter().enumerate() {
            assert!(step.candidates.iter().all(|c| !chosen[..=s].contains(c)));
        }
        // Greedy seeding on well separated blobs puts one centre in each blob.
        let mut blobs_hit: Vec<usize> = chosen.iter().map(|&i| truth[i]).collect();
        blobs_hit.sort_unstable();
        assert_eq!(blobs_hit, vec![0, 1, 2, 3]);
        // The public function returns those rows, in the input's coordinates.
        let centres = kmeans_plusplus(x.view(), 4, 9)?;
        for (c, &row) in chosen.iter().enumerate() {
            assert_eq!(centres.row(c), x.row(row));
        }
        Ok(())
    }

    #[test]
    fn a_fit_with_one_restart_is_lloyd_from_the_kmeans_plus_plus_centres() -> TestResult {
        let (x, _) = blobs(&[&[0.0, 0.0], &[2.0, 1.0], &[1.0, 3.0]], 100, 1.5, 6);
        let fit = KMeansParams {
            k: 3,
            n_init: 1,
            max_iter: 100,
            tol: 1e-4,
            seed: 5,
        }
        .check()?
        .fit(x.view())?;
        let init = kmeans_plusplus(x.view(), 3, 5)?;
        let from = lloyd_from(x.view(), init.view(), 100, 1e-4)?;
        assert_eq!(fit, from);
        Ok(())
    }

    #[test]
    fn n_init_keeps_the_restart_with_the_lowest_inertia() -> TestResult {
        // Uniform points have many local optima, so restarts differ.
        let (x, _) = blobs(&[&[0.0, 0.0]], 300, 1.0, 7);
        let data = Prepared::new(x.view())?;
        let tol = 1e-4 * data.mean_variance;
        let restarts: Vec<LloydRun> = (0..6)
            .map(|r| fit_restart(&data, 6, 100, tol, 3, r))
            .collect();
        let lowest = restarts
            .iter()
            .map(|r| r.inertia)
            .fold(f64::INFINITY, f64::min);
        let first_lowest = restarts
            .iter()
            .position(|r| r.inertia == lowest)
            .ok_or("no restart")?;
        assert!(
            restarts.iter().any(|r| r.inertia != lowest),
            "the restarts should differ"
        );
        let fit = KMeansParams {
            k: 6,
            n_init: 6,
            max_iter: 100,
            tol: 1e-4,
            seed: 3,
        }
        .check()?
        .fit(x.view())?;
        assert_eq!(fit.inertia, lowest);
        assert_eq!(
            fit.centroids,
            data.uncentre(&restarts[first_lowest].centroids)
        );
        Ok(())
    }

    #[test]
    fn tol_is_relative_to_the_mean_feature_variance() -> TestResult {
        let (x, _) = blobs(&[&[0.0, 0.0], &[4.0, 0.0], &[2.0, 3.0]], 100, 2.0, 8);
        let init = array![[0.0, 0.0], [1.0, 0.0], [0.0, 1.0]];
        // The shift of the first iteration, relative to the mean population variance.
        let first = lloyd_from(x.view(), init.view(), 1, 0.0)?;
        let shift: f64 = (&first.centroids - &init).iter().map(|v| v * v).sum();
        let mean_variance = x.var_axis(ndarray::Axis(0), 0.0).mean().ok_or("variance")?;
        let relative_shift = shift / mean_variance;
        let stops = lloyd_from(x.view(), init.view(), 100, relative_shift * 1.001)?;
        assert_eq!((stops.n_iter, stops.converged), (1, true));
        let goes_on = lloyd_from(x.view(), init.view(), 100, relative_shift * 0.999)?;
        assert!(goes_on.n_iter > 1);
        // Scaling the data (by a power of two, so exactly) changes nothing with the same tol.
        let scaled = lloyd_from(
            (&x * 1024.0).view(),
            (&init * 1024.0).view(),
            100,
            relative_shift * 0.999,
        )?;
        assert_eq!(
            (scaled.labels, scaled.n_iter),
            (goes_on.labels.clone(), goes_on.n_iter)
        );
        // tol = 0 runs until an iteration changes no label: restarted from where it ended,
        // one iteration labels the rows, a second (at most) sees nothing change.
        let strict = lloyd_from(x.view(), init.view(), 1_000, 0.0)?;
        assert!(strict.converged && strict.n_iter > 2);
        let again = lloyd_from(x.view(), strict.centroids.view(), 1_000, 0.0)?;
        assert!(again.n_iter <= 2);
        assert_eq!(again.labels, strict.labels);
        // max_iter without convergence: not converged, labels recomputed on the final centres.
        let capped = lloyd_from(x.view(), init.view(), 1, 0.0)?;
        assert!(!capped.converged);
        let assigned: Vec<usize> = capped.assign(x.view())?.iter().map(|a| a.segment).collect();
        assert_eq!(capped.labels, assigned);
        Ok(())
    }

    #[test]
    fn an_empty_cluster_takes_the_row_farthest_from_its_centre() -> TestResult {
        // Nothing is nearest to 100: rows are 1, 0, 1 and 81 (squared) from centre 1, so
        // 10 becomes the second centre and leaves the first cluster.
        let x = array![[0.0], [1.0], [2.0], [10.0]];
        let close =
            |a: &Array2<f64>, b: Array2<f64>| a.iter().zip(&b).all(|(x, y)| (x - y).abs() < 1e-12);
        let one = lloyd_from(x.view(), array![[1.0], [100.0]].view(), 1, 0.0)?;
        assert!(
            close(&one.centroids, array![[1.0], [10.0]]),
            "{}",
            one.centroids
        );
        let done = lloyd_from(x.view(), array![[1.0], [100.0]].view(), 100, 0.0)?;
        assert_eq!(done.labels, vec![0, 0, 0, 1]);
        assert_eq!(done.inertia, 2.0);
        // Two empty clusters take the two farthest rows, farthest first, in cluster order.
        let x = array![[0.0], [1.0], [2.0], [10.0], [20.0]];
        let two = lloyd_from(x.view(), array![[1.0], [100.0], [200.0]].view(), 1, 0.0)?;
        assert!(
            close(&two.centroids, array![[1.0], [20.0], [10.0]]),
            "{}",
            two.centroids
        );
        Ok(())
    }

    #[test]
    fn inertia_is_the_sum_of_squared_distances() -> TestResult {
        let (x, _) = blobs(&[&[0.0, 0.0], &[5.0, 5.0]], 50, 1.0, 9);
        let fit = KMeansParams {
            k: 2,
            n_init: 1,
            max_iter: 100,
            tol: 0.0,
            seed: 1,
        }
        .check()?
        .fit(x.view())?;
        let by_hand: f64 = x
            .rows()
            .into_iter()
            .zip(&fit.labels)
            .map(|(row, &l)| (&row - &fit.centroids.row(l)).mapv(|v| v * v).sum())
            .sum();
        assert!((fit.inertia - by_hand).abs() <= 1e-12 * by_hand);
        // k = 1: the centroid is the mean and the inertia n × the total variance.
        let single = KMeansParams {
            k: 1,
            n_init: 1,
            max_iter: 10,
            tol: 0.0,
            seed: 1,
        }
        .check()?
        .fit(x.view())?;
        let total_variance = x.var_axis(ndarray::Axis(0), 0.0).sum() * x.nrows() as f64;
        assert!((single.inertia - total_variance).abs() <= 1e-9 * total_variance);
        Ok(())
    }

    #[test]
    fn assign_gives_the_nearest_centroid_its_distance_and_the_runner_up() -> TestResult {
        let fit = KMeansFit {
            centroids: array![[0.0, 0.0], [10.0, 0.0], [0.0, 4.0]],
            labels: vec![],
            inertia: 0.0,
            n_iter: 0,
            converged: true,
        };
        let got = fit.assign(array![[3.0, 0.0], [9.0, 1.0], [0.0, 3.0]].view())?;
        let expected = [
            (0, 3.0, Some(2)),
            (1, 2f64.sqrt(), Some(0)),
            (2, 1.0, Some(0)),
        ];
        for (a, (segment, distance, second)) in got.iter().zip(expected) {
            assert_eq!((a.segment, a.second_segment), (segment, second));
            assert!((a.distance - distance).abs() < 1e-12);
        }
        let single = KMeansFit {
            centroids: array![[1.0, 1.0]],
            ..fit.clone()
        };
        assert_eq!(
            single.assign(array![[1.0, 4.0]].view())?[0],
            Assignment {
                segment: 0,
                distance: 3.0,
                second_segment: None,
            }
        );
        assert_eq!(
            fit.assign(array![[1.0]].view()),
            Err(KMeansError::AssignWidthMismatch {
                expected: 2,
                got: 1
            })
        );
        assert!(matches!(
            fit.assign(array![[1.0, f64::NAN]].view()),
            Err(KMeansError::NonFiniteValue {
                row: 0,
                column: 1,
                ..
            })
        ));
        Ok(())
    }

    #[test]
    fn each_rule_has_its_own_error() {
        let ok = KMeansParams {
            k: 2,
            n_init: 1,
            max_iter: 10,
            tol: 1e-4,
            seed: 0,
        };
        assert_eq!(
            KMeansParams { k: 0, ..ok }.check(),
            Err(KMeansError::ZeroClusters)
        );
        assert_eq!(
            KMeansParams { n_init: 0, ..ok }.check(),
            Err(KMeansError::ZeroRestarts)
        );
        assert_eq!(
            KMeansParams { max_iter: 0, ..ok }.check(),
            Err(KMeansError::ZeroMaxIter)
        );
        assert_eq!(
            KMeansParams { tol: -1.0, ..ok }.check(),
            Err(KMeansError::InvalidTolerance { tol: -1.0 })
        );
        assert!(matches!(
            KMeansParams {
                tol: f64::NAN,
                ..ok
            }
            .check(),
            Err(KMeansError::InvalidTolerance { .. })
        ));
        assert!(matches!(
            KMeansParams {
                tol: f64::INFINITY,
                ..ok
            }
            .check(),
            Err(KMeansError::InvalidTolerance { .. })
        ));

        let Ok(checked) = ok.check() else {
            panic!("valid parameters were rejected")
        };
        let too_many = KMeansParams { k: 4, ..ok }
            .check()
            .map(|p| p.fit(array![[1.0], [2.0], [3.0]].view()));
        let Ok(Err(err)) = too_many else {
            panic!("k > rows was accepted")
        };
        assert_eq!(err, KMeansError::MoreClustersThanRows { k: 4, rows: 3 });
        assert_eq!(
            err.to_string(),
            "k = 4 is larger than the number of rows (3); choose k between 1 and 3"
        );

        let err = checked.fit(array![[1.0, 2.0, 3.0], [4.0, 5.0, f64::NAN]].view());
        let Err(err) = err else {
            panic!("NaN was accepted")
        };
        assert!(
            matches!(err, KMeansError::NonFiniteValue { row: 1, column: 2, value } if value.is_nan())
        );
        assert!(err.to_string().contains("row 1, column 2"), "{err}");
        assert!(matches!(
            checked.fit(array![[1.0, f64::NEG_INFINITY], [1.0, 2.0]].view()),
            Err(KMeansError::NonFiniteValue {
                row: 0,
                column: 1,
                ..
            })
        ));
        assert_eq!(
            checked.fit(Array2::<f64>::zeros((0, 3)).view()),
            Err(KMeansError::EmptyInput)
        );
        assert_eq!(
            checked.fit(Array2::<f64>::zeros((5, 0)).view()),
            Err(KMeansError::NoFeatures { rows: 5 })
        );

        let x = array![[0.0, 0.0], [1.0, 1.0], [2.0, 2.0]];
        assert_eq!(
            lloyd_from(x.view(), array![[0.0]].view(), 10, 0.0),
            Err(KMeansError::CentroidWidthMismatch {
                expected: 2,
                got: 1
            })
        );
        assert_eq!(
            lloyd_from(x.view(), Array2::zeros((0, 2)).view(), 10, 0.0),
            Err(KMeansError::NoInitialCentroids)
        );
        assert!(matches!(
            lloyd_from(x.view(), array![[0.0, f64::NAN]].view(), 10, 0.0),
            Err(KMeansError::NonFiniteCentroid {
                centroid: 0,
                column: 1,
                ..
            })
        ));
        assert_eq!(
            lloyd_from(x.view(), array![[0.0, 0.0]].view(), 0, 0.0),
            Err(KMeansError::ZeroMaxIter)
        );
        assert_eq!(
            lloyd_from(x.view(), Array2::zeros((4, 2)).view(), 10, 0.0),
            Err(KMeansError::MoreClustersThanRows { k: 4, rows: 3 })
        );

        assert_eq!(
            silhouette_score(x.view(), &[0, 1], 10, 0),
            Err(KMeansError::LabelCountMismatch { rows: 3, labels: 2 })
        );
        assert_eq!(
            silhouette_score(x.view(), &[0, 0, 0], 10, 0),
            Err(KMeansError::SilhouetteClusterCount {
                clusters: 1,
                rows: 3
            })
        );
        assert_eq!(
            silhouette_score(x.view(), &[0, 1, 2], 10, 0),
            Err(KMeansError::SilhouetteClusterCount {
                clusters: 3,
                rows: 3
            })
        );
        assert_eq!(
            silhouette_score(x.view(), &[0, 0, 1], 1, 0),
            Err(KMeansError::SilhouetteSampleTooSmall { sample_size: 1 })
        );
        assert_eq!(
            KSearchParams::new(0, 3).check(),
            Err(KMeansError::ZeroMinClusters)
        );
        assert_eq!(
            KSearchParams::new(4, 3).check(),
            Err(KMeansError::EmptyKRange { k_min: 4, k_max: 3 })
        );
    }

    #[test]
    fn silhouette_matches_a_hand_computed_example() -> TestResult {
        // Rows 0 and 1 in one cluster, 4 and 5 in another: a = 1 for every row; b is 4.5 for
        // the outer rows and 3.5 for the inner ones: s = 3.5/4.5 and 2.5/3.5.
        let x = array![[0.0], [1.0], [4.0], [5.0]];
        let expected = (3.5 / 4.5 + 2.5 / 3.5) / 2.0;
        let got = silhouette_score(x.view(), &[0, 0, 1, 1], 100, 0)?;
        assert!((got - expected).abs() < 1e-15, "{got} vs {expected}");
        // Labels are any numbers; a row alone in its cluster scores 0.
        let x = array![[0.0], [1.0], [10.0]];
        let expected = (0.9 + 8.0 / 9.0 + 0.0) / 3.0;
        let got = silhouette_score(x.view(), &[7, 7, 3], 100, 0)?;
        assert!((got - expected).abs() < 1e-15, "{got} vs {expected}");
        Ok(())
    }

    #[test]
    fn rounding_to_the_fixed_point_grid_is_the_standard_library_s_round_ties_even() {
        let two_52 = 4_503_599_627_370_496.0_f64;
        let mut values = vec![
            0.0,
            -0.0,
            0.5,
            -0.5,
            1.5,
            -1.5,
            2.5,
            -2.5,
            0.49999999999999994,
            1e-300,
            -1e-300,
            two_52 - 0.5,
            two_52 - 1.5,
            -(two_52 - 0.5),
            two_52,
            two_52 + 1.0,
            2.0 * two_52 + 2.0,
            1e18,
            -1e18,
            f64::MAX,
            f64::MIN,
            f64::INFINITY,
            f64::NEG_INFINITY,
            f64::NAN,
        ];
        let mut rng = ChaCha8Rng::seed_from_u64(11);
        values.extend(
            (0..10_000).map(|_| (rng.random::<f64>() - 0.5) * 2f64.powi(rng.random_range(-60..64))),
        );
        values.extend((0..1_000).map(|i| f64::from(i) * 0.5 - 250.0));
        for v in values {
            let (ours, std) = (round_ties_even(v), v.round_ties_even());
            assert!(
                ours.to_bits() == std.to_bits() || (ours.is_nan() && std.is_nan()),
                "{v:e}: {ours:e} vs {std:e}"
            );
        }
    }

    /// The silhouette as first written here: for each row, its distances to every row in row
    /// order, each added to the sum for that row's cluster; per-row silhouettes added per block
    /// of [`SILHOUETTE_ROWS_PER_BLOCK`] rows, the blocks in order.
    fn row_by_row_silhouette(rows: &[f64], d: usize, dense: &[usize], n_clusters: usize) -> f64 {
        let mut sizes = vec![0usize; n_clusters];
        dense.iter().for_each(|&c| sizes[c] += 1);
        let mut total = 0.0;
        for (block, block_labels) in rows
            .chunks(SILHOUETTE_ROWS_PER_BLOCK * d)
            .zip(dense.chunks(SILHOUETTE_ROWS_PER_BLOCK))
        {
            let mut block_sum = 0.0;
            for (row, &own) in block.chunks_exact(d).zip(block_labels) {
                let mut distance_sums = vec![0.0; n_clusters];
                for (other, &cluster) in rows.chunks_exact(d).zip(dense) {
                    distance_sums[cluster] += squared_distance(row, other).sqrt();
                }
                block_sum += row_silhouette(&distance_sums, own, &sizes);
            }
            total += block_sum;
        }
        total / dense.len() as f64
    }

    #[test]
    fn the_tiled_silhouette_kernels_add_the_same_distances_in_the_same_order_as_row_by_row()
    -> TestResult {
        let mut rng = ChaCha8Rng::seed_from_u64(3);
        // Row counts that leave a short last block and a short last tile; features from 1 to
        // more than a tile holds; clusters of very different sizes, some of them one row.
        for (n, d, n_clusters) in [
            (3, 1, 2),
            (61, 3, 4),
            (200, 6, 5),
            (333, 11, 7),
            (97, 2, 30),
        ] {
            let rows: Vec<f64> = (0..n * d)
                .map(|_| rng.random::<f64>() * 100.0 - 50.0)
                .collect();
            let mut dense: Vec<usize> = (0..n)
                .map(|_| {
                    rng.random_range(0..n_clusters)
                        .min(rng.random_range(0..n_clusters))
                })
                .collect();
            // Every cluster present, as `exact_silhouette` numbers them.
            dense[..n_clusters.min(n)]
                .iter_mut()
                .enumerate()
                .for_each(|(c, l)| *l = c);
            let expected = row_by_row_silhouette(&rows, d, &dense, n_clusters);
            for kernel in [Kernel::Portable, Kernel::detect()] {
                let got = exact_silhouette_with(&rows, d, &dense, kernel)?;
                assert_eq!(
                    got.to_bits(),
                    expected.to_bits(),
                    "n={n} d={d} clusters={n_clusters} {kernel:?}: {got} vs {expected}"
                );
            }
        }
        Ok(())
    }

    #[test]
    fn above_the_sample_size_silhouette_scores_a_seeded_sample() -> TestResult {
        let (x, truth) = blobs(&[&[0.0, 0.0], &[3.0, 0.0]], 40, 2.0, 10);
        let sampled = silhouette_score(x.view(), &truth, 30, 5)?;
        // It is the exact silhouette of the sampled rows...
        let rows = crate::split::sample_rows(x.nrows(), 30, 5);
        assert_eq!(rows.len(), 30);
        let sub = x.select(ndarray::Axis(0), &rows);
        let sub_labels: Vec<usize> = rows.iter().map(|&i| truth[i]).collect();
        assert_eq!(sampled, silhouette_score(sub.view(), &sub_labels, 30, 0)?);
        // ...the same for the same seed, and generally not the exact score of all rows.
        assert_eq!(sampled, silhouette_score(x.view(), &truth, 30, 5)?);
        assert_ne!(sampled, silhouette_score(x.view(), &truth, 80, 5)?);
        Ok(())
    }

    fn point(k: usize, inertia: f64, silhouette: Option<f64>) -> KCurvePoint {
        KCurvePoint {
            k,
            inertia,
            silhouette,
        }
    }

    #[test]
    fn the_k_rule_takes_the_knee_unless_its_silhouette_is_much_worse() {
        // Knee at 3; its silhouette is within the margin of the best: the knee stays.
        let curve = [
            point(1, 100.0, None),
            point(2, 50.0, Some(0.55)),
            point(3, 10.0, Some(0.50)),
            point(4, 8.0, Some(0.40)),
            point(5, 7.0, Some(0.30)),
        ];
        assert_eq!(choose_k(&curve), (3, Some(3), KChoice::Knee));
        // The same knee with a silhouette more than the margin below the best: the best wins.
        let mut worse = curve;
        worse[2].silhouette = Some(0.55 - SILHOUETTE_OVERRIDE_MARGIN - 0.01);
        assert_eq!(choose_k(&worse), (2, Some(3), KChoice::SilhouetteOverKnee));
        // A straight line has no knee: the best silhouette.
        let line = [
            point(2, 30.0, Some(0.2)),
            point(3, 20.0, Some(0.6)),
            point(4, 10.0, Some(0.3)),
        ];
        assert_eq!(choose_k(&line), (3, None, KChoice::SilhouetteNoKnee));
        // No knee and no silhouette: k_min.
        assert_eq!(
            choose_k(&[point(1, 5.0, None)]),
            (1, None, KChoice::Smallest)
        );
    }

    #[test]
    fn the_k_search_finds_four_planted_blobs() -> TestResult {
        let centres: [&[f64]; 4] = [&[0.0, 0.0], &[8.0, 0.0], &[0.0, 8.0], &[8.0, 8.0]];
        let (x, truth) = blobs(&centres, 40, 1.5, 11);
        let search = KSearchParams {
            n_init: 2,
            ..KSearchParams::new(1, 8)
        }
        .check()?
        .run(x.view())?;
        assert_eq!(search.curve.len(), 8);
        assert_eq!(search.curve[0].silhouette, None);
        assert!(search.curve[1..].iter().all(|p| p.silhouette.is_some()));
        assert_eq!(
            (search.chosen_k, search.knee_k, search.reason),
            (4, Some(4), KChoice::Knee)
        );
        assert!(is_same_partition(&truth, &search.fit.labels));
        Ok(())
    }

    /// Four heavily overlapping blobs in 3-d, 12 000 rows (three blocks), and 7 starting
    /// centres of which two are far from every row: Lloyd runs for many iterations, k is not
    /// a multiple of the kernel's four, and the first iteration leaves two clusters empty.
    fn overlapping_with_far_centres() -> (Array2<f64>, Array2<f64>) {
        let centres: [&[f64]; 4] = [
            &[0.0, 0.0, 0.0],
            &[2.0, 0.5, 0.0],
            &[0.5, 2.0, 1.0],
            &[1.5, 1.5, -1.0],
        ];
        let (x, _) = blobs(&centres, 3_000, 3.0, 21);
        let mut init = Array2::zeros((7, 3));
        for (c, row) in [0, 1, 2, 3, 4].into_iter().enumerate() {
            init.row_mut(c).assign(&x.row(row));
        }
        init.row_mut(5).fill(100.0);
        init.row_mut(6).fill(-100.0);
        (x, init)
    }

    /// The cluster sums recomputed from nothing: every row's gridded values added to its
    /// label's sums.
    fn sums_by_label(data: &Prepared, labels: &[u32], k: usize) -> ClusterSums {
        let d = data.n_features;
        let mut sums = ClusterSums::zeros(k, d);
        for (i, &label) in labels.iter().enumerate() {
            let j = label as usize;
            sums.counts[j] += 1;
            for (f, v) in data.row(i).into_iter().enumerate() {
                sums.sums[j * d + f] += to_fixed(v, data.fixed_scales[f]);
            }
        }
        sums
    }

    fn centred(data: &Prepared, x: &Array2<f64>) -> Vec<f64> {
        let mut values = row_major(x.view()).into_owned();
        for row in values.chunks_exact_mut(data.n_features) {
            for (v, mean) in row.iter_mut().zip(&data.column_means) {
                *v -= mean;
            }
        }
        values
    }

    #[test]
    fn the_sums_kept_from_label_changes_are_the_sums_of_the_rows_by_label() -> TestResult {
        let (x, init) = overlapping_with_far_centres();
        let data = Prepared::new(x.view())?;
        let kernels = [Some(Kernel::Portable), Some(Kernel::detect())];
        for kernel in kernels.into_iter().flatten() {
            let mut state = LloydState::new(&data, centred(&data, &init), kernel);
            let (mut iterations, mut with_empty_clusters) = (0, 0);
            loop {
                let step = state.step();
                iterations += 1;
                let expected = sums_by_label(&data, &state.labels, 7);
                assert_eq!(state.sums, expected, "{kernel:?}, iteration {iterations}");
                with_empty_clusters += usize::from(state.sums.counts.contains(&0));
                if step.changed == 0 {
                    break;
                }
            }
            assert!(iterations >= 15, "only {iterations} iterations");
            assert!(
                with_empty_clusters >= 1,
                "no iteration had an empty cluster"
            );
        }
        Ok(())
    }

    #[test]
    fn the_portable_and_simd_kernels_give_bit_identical_runs() -> TestResult {
        let (x, init) = overlapping_with_far_centres();
        let data = Prepared::new(x.view())?;
        let portable = lloyd_with(&data, centred(&data, &init), 300, 0.0, Kernel::Portable);
        let detected = lloyd_with(&data, centred(&data, &init), 300, 0.0, Kernel::detect());
        assert_eq!(portable.labels, detected.labels);
        assert_eq!(
            portable
                .centroids
                .iter()
                .map(|v| v.to_bits())
                .collect::<Vec<_>>(),
            detected
                .centroids
                .iter()
                .map(|v| v.to_bits())
                .collect::<Vec<_>>()
        );
        assert_eq!(portable.inertia.to_bits(), detected.inertia.to_bits());
        assert_eq!(
            (portable.n_iter, portable.converged),
            (detected.n_iter, detected.converged)
        );
        Ok(())
    }

    #[test]
    fn lloyd_from_is_bit_identical_on_one_and_two_threads_through_empty_clusters() -> TestResult {
        let (x, init) = overlapping_with_far_centres();
        assert!(x.nrows() > 2 * ROWS_PER_BLOCK);
        let run =
            |threads: usize, max_iter: usize| -> Result<KMeansFit, Box<dyn std::error::Error>> {
                let pool = rayon::ThreadPoolBuilder::new()
                    .num_threads(threads)
                    .build()?;
                Ok(pool.install(|| lloyd_from(x.view(), init.view(), max_iter, 0.0))?)
            };
        // Stopped early (labels recomputed at the end) and run to convergence.
        for max_iter in [3, 300] {
            let (one, two) = (run(1, max_iter)?, run(2, max_iter)?);
            assert_same_fit(&one, &two);
        }
        Ok(())
    }

    #[test]
    fn lloyd_follows_the_textbook_algorithm_step_for_step() -> TestResult {
        // Textbook Lloyd on exact distances and plain f64 means: the same labels at every
        // iteration, so the same number of iterations and the same end, up to the last digits
        // of the centres.
        let (x, _) = blobs(
            &[&[0.0, 0.0, 0.0], &[2.0, 0.5, 0.0], &[0.5, 2.0, 1.0]],
            2_000,
            2.5,
            22,
        );
        let init = kmeans_plusplus(x.view(), 5, 3)?;
        let (n, d, k) = (x.nrows(), x.ncols(), init.nrows());
        let mut centres = init.clone();
        let mut labels = vec![usize::MAX; n];
        let mut textbook_iterations = 0;
        loop {
            textbook_iterations += 1;
            let mut changed = 0;
            for (i, row) in x.rows().into_iter().enumerate() {
                let distances: Vec<f64> = centres
                    .rows()
                    .into_iter()
                    .map(|c| (&row - &c).mapv(|v| v * v).sum())
                    .collect();
                let nearest =
                    (0..k).fold(0, |b, j| if distances[j] < distances[b] { j } else { b });
                changed += usize::from(labels[i] != nearest);
                labels[i] = nearest;
            }
            let mut sums = Array2::<f64>::zeros((k, d));
            let mut counts = vec![0usize; k];
            for (row, &label) in x.rows().into_iter().zip(&labels) {
                let mut sum = sums.row_mut(label);
                sum += &row;
                counts[label] += 1;
            }
            assert!(
                counts.iter().all(|&c| c > 0),
                "the data should leave no cluster empty"
            );
            for (mut centre, (sum, &count)) in centres
                .rows_mut()
                .into_iter()
                .zip(sums.rows().into_iter().zip(&counts))
            {
                centre.assign(&(&sum / count as f64));
            }
            if changed == 0 {
                break;
            }
        }
        assert!(
            textbook_iterations >= 10,
            "only {textbook_iterations} iterations"
        );
        let ours = lloyd_from(x.view(), init.view(), 1_000, 0.0)?;
        assert_eq!(ours.n_iter, textbook_iterations);
        assert_eq!(ours.labels, labels);
        for (a, b) in ours.centroids.iter().zip(&centres) {
            assert!((a - b).abs() <= 1e-13 * (1.0 + b.abs()), "{a} vs {b}");
        }
        let textbook_inertia: f64 = x
            .rows()
            .into_iter()
            .zip(&labels)
            .map(|(row, &l)| (&row - &centres.row(l)).mapv(|v| v * v).sum())
            .sum();
        assert!((ours.inertia - textbook_inertia).abs() <= 1e-12 * textbook_inertia);
        Ok(())
    }

    #[test]
    fn the_fixed_point_grid_puts_each_columns_largest_magnitude_just_below_2_to_the_62() {
        let limit = 2f64.powi(FIXED_POINT_BITS);
        for largest in [
            1.0,
            1.5,
            2.0 - f64::EPSILON,
            2.0,
            1e-3,
            123_456.789,
            1e300,
            f64::MAX,
        ] {
            let scale = power_of_two(fixed_point_exponent(largest));
            let scaled = largest * scale;
            assert!(
                scaled < limit && scaled >= limit / 2.0,
                "{largest}: {scaled}"
            );
            assert_eq!(to_fixed(-largest, scale), -to_fixed(largest, scale));
        }
        // Tiny and zero columns: the grid stays representable and nothing overflows.
        for largest in [1e-290, f64::MIN_POSITIVE, 5e-324, 0.0] {
            let e = fixed_point_exponent(largest);
            assert!((-1022..=1022).contains(&e), "{largest}: {e}");
            assert!((largest * power_of_two(e)) < limit);
        }
        // Unscaling undoes scaling exactly.
        for e in [-962, -1, 0, 1, 61, 1022] {
            assert_eq!(power_of_two(e) * power_of_two(-e), 1.0, "{e}");
        }
    }

    #[test]
    fn a_centre_is_the_mean_of_its_rows_even_beside_a_large_outlier() -> TestResult {
        // The outlier sets the grid of its column 1e6 times coarser than the other rows need:
        // the means stay within 1e-12 of the typical magnitude.
        let (mut x, _) = blobs(&[&[0.0, 0.0], &[3.0, 3.0]], 500, 1.0, 23);
        x[[0, 1]] = 1e6;
        let init = array![[0.0, 0.0], [3.0, 3.0], [0.0, 1e6]];
        let fit = lloyd_from(x.view(), init.view(), 100, 0.0)?;
        assert!(fit.converged);
        for j in 0..3 {
            let rows: Vec<usize> = (0..x.nrows()).filter(|&i| fit.labels[i] == j).collect();
            for f in 0..2 {
                let mean = rows.iter().map(|&i| x[[i, f]]).sum::<f64>() / rows.len() as f64;
                assert!(
                    (fit.centroids[[j, f]] - mean).abs() <= 1e-12 * mean.abs().max(1.0),
                    "cluster {j}, feature {f}: {} vs {mean}",
                    fit.centroids[[j, f]]
                );
            }
        }
        Ok(())
    }
}
