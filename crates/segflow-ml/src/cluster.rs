//! One interface over the segmentation algorithms of the `segment` stage: `kmeans`,
//! `minibatch_kmeans`, `gmm` and `hierarchical`. Each fits k segments to the rows of a feature
//! matrix and returns the same [`ClusterFit`]: centroids, one label per row, the inertia (a
//! **sum** of squared distances, as scikit-learn's) and a serialisable [`ClusterModel`] that
//! assigns new rows. [`search_k`] fits a range of k and chooses one with the k-means module's
//! rule, so `k: auto` means the same thing whatever the algorithm.
//!
//! # The algorithms, and why each is built the way it is
//! - **`kmeans`** is [`crate::kmeans`] unchanged (scikit-learn's Lloyd semantics, fast, exactly
//!   reproducible); linfa stays out of its hot path.
//! - **`minibatch_kmeans`** follows scikit-learn's `MiniBatchKMeans`, with linfa-clustering's
//!   incremental k-means (`FitWith::fit_with`) doing each batch update: per-centre learning
//!   rate 1/count, the same update as scikit-learn's. linfa's own loop is not usable as it
//!   stands (it initialises on the first batch alone, its tolerance is absolute, hence depends
//!   on the scale of the data, and sampling and stopping are left to the caller), so the loop
//!   around it is ours and scikit-learn's: `n_init` k-means++ initialisations (ours) on a
//!   sample of `max(3·batch_size, 3·k)` rows, the one with the lowest inertia on that sample
//!   kept; batches of `batch_size` rows drawn with replacement; stop after `max_iter` passes
//!   over the data, or when the squared centre shift of a step is `<= tol × mean feature
//!   variance` (`tol > 0`), or after 10 steps without improvement of the smoothed batch
//!   inertia. Final labels are the nearest centroids. Not done: scikit-learn's random
//!   reassignment of nearly empty centres.
//! - **`gmm`** is linfa-clustering's `GaussianMixtureModel`: full covariances, k-means
//!   initialisation, [`GMM_REG_COVARIANCE`] added to the covariance diagonals. Restarts are
//!   ours: linfa's `n_runs` continues EM from where the previous run ended instead of
//!   re-initialising (the model is initialised once, before its runs loop), so `n_init`
//!   independent fits are run, each with a seeded RNG of its own, and the one with the highest
//!   mean log-likelihood (computed by our code) is kept. Labels are the component of highest
//!   posterior, computed by our code (Cholesky, log-sum-exp); a test checks they are linfa's.
//! - **`hierarchical`** is agglomerative clustering with Ward linkage by kodama, the engine
//!   linfa-hierarchical wraps, called directly. linfa-hierarchical is not usable for Ward: it
//!   only takes a kernel matrix and turns it into distances by `−ln k(x, y)`, which for its
//!   Gaussian kernel is the *squared* Euclidean distance (scaled), and kodama's Ward squares its
//!   input again, so the criterion is not Ward's; kernel values below 1e-6 are clamped, making
//!   all far-apart pairs equidistant; its labels are numbered in `HashMap` order (they change
//!   between processes); and it holds a dense n×n kernel plus a copy of its upper triangle,
//!   three times the memory of the condensed distance matrix used here. O(n²) memory is why
//!   inputs are limited to [`HIERARCHICAL_MAX_ROWS`] rows.
//!
//! # Determinism
//! The same seed gives bit-identical labels, centroids, inertia and model whatever the number
//! of rayon threads: random draws come from seeded streams that do not depend on scheduling,
//! parallel work is per row or per pair, and every floating-point sum over rows is added in a
//! fixed order (blocks of [`kmeans::ROWS_PER_BLOCK`] rows, partials in block order).

use std::borrow::Cow;
use std::fmt;
use std::str::FromStr;

use linfa::traits::{Fit, FitWith};
use linfa::{DatasetBase, ParamGuard};
use linfa_clustering::{
    GaussianMixtureModel, GmmError, GmmInitMethod, IncrKMeansError, KMeansInit,
};
use ndarray::{Array2, Array3, ArrayView2, ArrayView3, Axis};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rand_xoshiro::Xoshiro256Plus;
use rand_xoshiro::rand_core::SeedableRng as _;
use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use crate::kmeans::{
    self, Assignment, KChoice, KCurvePoint, KMeansError, KMeansFit, KMeansParams, ROWS_PER_BLOCK,
};

/// Most rows [`Algorithm::Hierarchical`] accepts: it keeps all n(n−1)/2 pairwise distances in
/// memory, about 400 MB at this size.
pub const HIERARCHICAL_MAX_ROWS: usize = 10_000;

/// Default mini-batch size (scikit-learn's).
pub const DEFAULT_BATCH_SIZE: usize = 1024;

/// Added to the diagonal of every fitted gmm covariance so that a component on collinear or
/// duplicated rows stays invertible (linfa's `reg_covariance` and scikit-learn's `reg_covar`
/// default). The saved covariances include it; assignment adds nothing more.
pub const GMM_REG_COVARIANCE: f64 = 1e-6;

/// Mini-batch steps without improvement of the smoothed batch inertia after which
/// `minibatch_kmeans` stops (scikit-learn's `max_no_improvement`).
const MINIBATCH_MAX_NO_IMPROVEMENT: usize = 10;

/// Every way a segmentation can fail. The messages are shown to users: each says what is wrong
/// and what would be valid. Rules shared with k-means (the input, k, the k range, the
/// silhouette sample) keep their [`KMeansError`].
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ClusterError {
    #[error(transparent)]
    KMeans(#[from] KMeansError),
    #[error(
        "unknown clustering algorithm '{name}'; valid algorithms are kmeans, minibatch_kmeans, \
         gmm and hierarchical"
    )]
    UnknownAlgorithm { name: String },
    #[error("n_init must be at least 1, got 0 (for {algorithm} it is {})", n_init_meaning(*.algorithm))]
    ZeroRestarts { algorithm: Algorithm },
    #[error("max_iter must be at least 1, got 0 (for {algorithm} it is {})", max_iter_meaning(*.algorithm))]
    ZeroMaxIter { algorithm: Algorithm },
    #[error(
        "tol must be a finite number >= 0 for {algorithm}, got {tol} (it is relative to the mean \
         per-feature variance; 1e-4 is usual, 0 for minibatch_kmeans stops on lack of improvement)"
    )]
    InvalidTolerance { algorithm: Algorithm, tol: f64 },
    #[error(
        "tol must be a finite number > 0 for gmm, got {tol} (EM stops when the mean \
         log-likelihood per row changes by less; 1e-3 is usual)"
    )]
    InvalidGmmTolerance { tol: f64 },
    #[error("batch_size must be at least 1 row, got 0 ({DEFAULT_BATCH_SIZE} is usual)")]
    ZeroBatchSize,
    #[error(
        "hierarchical clustering accepts at most {max} rows, got {rows}: it keeps every pairwise \
         distance in memory (O(rows²), about {} MB here); use kmeans or minibatch_kmeans for \
         inputs this large",
        condensed_megabytes(*.rows)
    )]
    TooManyRowsForHierarchical { rows: usize, max: usize },
    #[error(
        "gmm with k = {k} could not be fitted: {reason}; try a smaller k, drop constant or \
         duplicated columns, or use kmeans"
    )]
    GmmFit { k: usize, reason: String },
    #[error(
        "gmm with k = {k} did not converge within max_iter = {max_iter} EM iterations \
         (tol = {tol}) in any of its {n_init} restarts; raise max_iter or tol, or use kmeans"
    )]
    GmmNotConverged {
        k: usize,
        max_iter: usize,
        tol: f64,
        n_init: usize,
    },
    #[error("the clustering model is invalid: {reason}; fit it again")]
    InvalidModel { reason: String },
    #[error("internal error in segmentation (a bug, please report it): {0}")]
    Internal(String),
}

fn n_init_meaning(algorithm: Algorithm) -> &'static str {
    match algorithm {
        Algorithm::KMeans => "the number of k-means++ restarts",
        Algorithm::MiniBatchKMeans => "the number of k-means++ initialisations tried",
        Algorithm::Gmm => "the number of EM restarts",
        Algorithm::Hierarchical => "not used: hierarchical clustering has no restarts",
    }
}

fn max_iter_meaning(algorithm: Algorithm) -> &'static str {
    match algorithm {
        Algorithm::KMeans => "the Lloyd iteration limit per restart",
        Algorithm::MiniBatchKMeans => "the limit on passes over the data",
        Algorithm::Gmm => "the EM iteration limit per restart",
        Algorithm::Hierarchical => "not used: hierarchical clustering does not iterate",
    }
}

/// Size of the condensed distance matrix of `rows` rows, in MB.
fn condensed_megabytes(rows: usize) -> usize {
    rows.saturating_mul(rows.saturating_sub(1)) / 2 * size_of::<f64>() / 1_000_000
}

// ---------------------------------------------------------------------------------------------
// Parameters
// ---------------------------------------------------------------------------------------------

/// A segmentation algorithm, named in configurations as [`Algorithm::name`] says.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Algorithm {
    #[serde(rename = "kmeans")]
    KMeans,
    #[serde(rename = "minibatch_kmeans")]
    MiniBatchKMeans,
    #[serde(rename = "gmm")]
    Gmm,
    #[serde(rename = "hierarchical")]
    Hierarchical,
}

impl Algorithm {
    pub const ALL: [Algorithm; 4] = [
        Algorithm::KMeans,
        Algorithm::MiniBatchKMeans,
        Algorithm::Gmm,
        Algorithm::Hierarchical,
    ];

    /// The name used in configurations and reports (the serde name).
    pub fn name(self) -> &'static str {
        match self {
            Algorithm::KMeans => "kmeans",
            Algorithm::MiniBatchKMeans => "minibatch_kmeans",
            Algorithm::Gmm => "gmm",
            Algorithm::Hierarchical => "hierarchical",
        }
    }
}

impl fmt::Display for Algorithm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Algorithm {
    type Err = ClusterError;

    fn from_str(name: &str) -> Result<Self, Self::Err> {
        Algorithm::ALL
            .into_iter()
            .find(|a| a.name() == name)
            .ok_or_else(|| ClusterError::UnknownAlgorithm {
                name: name.to_owned(),
            })
    }
}

/// Segmentation parameters as a user gives them; [`ClusterParams::check`] once gives
/// [`CheckedClusterParams`], which is what fits. Fields an algorithm does not use are ignored
/// by it (but still checked).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ClusterParams {
    pub algorithm: Algorithm,
    /// kmeans: k-means++ restarts, the lowest inertia kept. minibatch_kmeans: k-means++
    /// initialisations tried on the initial sample, the lowest inertia kept. gmm: EM restarts,
    /// the highest likelihood kept. hierarchical: not used. At least 1.
    pub n_init: usize,
    /// kmeans: Lloyd iterations per restart. minibatch_kmeans: passes over the data (steps =
    /// `max_iter × ceil(rows / batch_size)`). gmm: EM iterations per restart. hierarchical: not
    /// used. At least 1.
    pub max_iter: usize,
    /// kmeans and minibatch_kmeans: tolerance on the squared centre shift relative to the mean
    /// per-feature variance, >= 0 (minibatch: 0 leaves only the no-improvement stop). gmm:
    /// absolute tolerance on the change of the mean log-likelihood per row, > 0.
    /// hierarchical: not used.
    pub tol: f64,
    /// Seed of every random choice: the same seed gives the same segments.
    pub seed: u64,
    /// Rows per mini-batch (minibatch_kmeans only), at least 1; capped at the number of rows.
    pub batch_size: usize,
    /// Rows above which [`search_k`] estimates silhouettes on a seeded sample of this size.
    pub silhouette_sample_size: usize,
}

impl ClusterParams {
    /// scikit-learn's defaults for `algorithm` (kmeans: [`KMeansParams::new`]'s), seed 0.
    pub fn new(algorithm: Algorithm) -> Self {
        let kmeans = KMeansParams::new(1);
        let (n_init, max_iter, tol) = match algorithm {
            Algorithm::KMeans => (kmeans.n_init, kmeans.max_iter, kmeans.tol),
            Algorithm::MiniBatchKMeans => (3, 100, 0.0),
            Algorithm::Gmm => (1, 100, 1e-3),
            Algorithm::Hierarchical => (1, 1, 0.0),
        };
        Self {
            algorithm,
            n_init,
            max_iter,
            tol,
            seed: kmeans.seed,
            batch_size: DEFAULT_BATCH_SIZE,
            silhouette_sample_size: kmeans::DEFAULT_SILHOUETTE_SAMPLE_SIZE,
        }
    }

    /// Checks every rule that does not depend on the data; [`fit`] checks the data.
    pub fn check(&self) -> Result<CheckedClusterParams, ClusterError> {
        let algorithm = self.algorithm;
        if self.n_init == 0 {
            return Err(ClusterError::ZeroRestarts { algorithm });
        }
        if self.max_iter == 0 {
            return Err(ClusterError::ZeroMaxIter { algorithm });
        }
        let tol = self.tol;
        if algorithm == Algorithm::Gmm {
            if !(tol.is_finite() && tol > 0.0) {
                return Err(ClusterError::InvalidGmmTolerance { tol });
            }
        } else if !(tol.is_finite() && tol >= 0.0) {
            return Err(ClusterError::InvalidTolerance { algorithm, tol });
        }
        if self.batch_size == 0 {
            return Err(ClusterError::ZeroBatchSize);
        }
        if self.silhouette_sample_size < 2 {
            return Err(KMeansError::SilhouetteSampleTooSmall {
                sample_size: self.silhouette_sample_size,
            }
            .into());
        }
        Ok(CheckedClusterParams { params: *self })
    }
}

/// Parameters that passed [`ClusterParams::check`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct CheckedClusterParams {
    params: ClusterParams,
}

impl CheckedClusterParams {
    pub fn params(&self) -> &ClusterParams {
        &self.params
    }
}

// ---------------------------------------------------------------------------------------------
// Results and models
// ---------------------------------------------------------------------------------------------

/// A fitted segmentation.
#[derive(Debug, Clone, PartialEq)]
pub struct ClusterFit {
    pub algorithm: Algorithm,
    pub k: usize,
    /// One row per segment, in the input's coordinates: the cluster means, or for gmm the
    /// component means.
    pub centroids: Array2<f64>,
    /// The segment of each fitted row, in row order. kmeans: its restart's labels;
    /// minibatch_kmeans: the nearest centroid; gmm: the highest posterior; hierarchical: the
    /// cut of the Ward tree, numbered in order of first appearance in the rows.
    pub labels: Vec<usize>,
    /// Sum over fitted rows of the squared Euclidean distance to their own label's centroid
    /// (scikit-learn's `inertia_`; linfa's k-means reports this divided by the row count).
    pub inertia: f64,
    /// kmeans: Lloyd iterations of the kept restart; minibatch_kmeans: mini-batch steps;
    /// gmm (linfa does not report it) and hierarchical: `None`.
    pub n_iter: Option<usize>,
    /// kmeans, minibatch_kmeans: whether a stopping rule fired before `max_iter`; gmm: always
    /// `Some(true)` (a fit that does not converge is an error); hierarchical: `None`.
    pub converged: Option<bool>,
    /// What assigning new rows needs; saved with the run.
    pub model: ClusterModel,
}

/// What out-of-sample assignment needs, saved in the model file (JSON through serde; f64
/// values round-trip exactly).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum ClusterModel {
    /// kmeans, minibatch_kmeans and hierarchical: a new row goes to its nearest centroid.
    /// Hierarchical clustering has no rule for rows it was not fitted on; the nearest centroid
    /// (the cluster mean) is the standard approximation.
    Centroids { centroids: Array2<f64> },
    /// gmm: a new row goes to the component of highest posterior probability.
    Gaussian {
        /// Mixing weight of each component (positive, summing to 1).
        weights: Vec<f64>,
        /// One row per component.
        means: Array2<f64>,
        /// One full `d × d` covariance per component, [`GMM_REG_COVARIANCE`] included.
        covariances: Array3<f64>,
    },
}

impl ClusterModel {
    /// Number of segments.
    pub fn k(&self) -> usize {
        self.centroids().nrows()
    }

    /// The centroids, or for a Gaussian model the component means.
    pub fn centroids(&self) -> ArrayView2<'_, f64> {
        match self {
            ClusterModel::Centroids { centroids } => centroids.view(),
            ClusterModel::Gaussian { means, .. } => means.view(),
        }
    }

    /// Checks that the model is usable (consistent shapes, finite values, positive weights,
    /// positive-definite covariances), as a model read from a file may not be.
    pub fn validate(&self) -> Result<(), ClusterError> {
        match self {
            ClusterModel::Centroids { centroids } => check_centroids(centroids.view()),
            ClusterModel::Gaussian {
                weights,
                means,
                covariances,
            } => GaussianScorer::new(weights, means.view(), covariances.view()).map(|_| ()),
        }
    }

    /// Assigns each row of `x`. Centroids: exactly [`KMeansFit::assign`] (nearest centroid,
    /// lowest index on a tie; the Euclidean distance to it; the second-nearest). Gaussian: the
    /// component of highest posterior (lowest index on a tie), the Euclidean distance to its
    /// mean, and the component of second-highest posterior.
    pub fn assign(&self, x: ArrayView2<'_, f64>) -> Result<Vec<Assignment>, ClusterError> {
        match self {
            ClusterModel::Centroids { centroids } => {
                check_centroids(centroids.view())?;
                // The k-means assignment itself, so both can never disagree.
                let as_kmeans = KMeansFit {
                    centroids: centroids.clone(),
                    labels: Vec::new(),
                    inertia: 0.0,
                    n_iter: 0,
                    converged: true,
                };
                Ok(as_kmeans.assign(x)?)
            }
            ClusterModel::Gaussian {
                weights,
                means,
                covariances,
            } => {
                let scorer = GaussianScorer::new(weights, means.view(), covariances.view())?;
                scorer.assignments(x, None)
            }
        }
    }

    /// Gaussian models: the posterior probability of every component for every row (rows ×
    /// k, each row summing to 1), by log-sum-exp. Centroid models have none: `Ok(None)`.
    pub fn posteriors(&self, x: ArrayView2<'_, f64>) -> Result<Option<Array2<f64>>, ClusterError> {
        let ClusterModel::Gaussian {
            weights,
            means,
            covariances,
        } = self
        else {
            return Ok(None);
        };
        let scorer = GaussianScorer::new(weights, means.view(), covariances.view())?;
        let rows = checked_rows(x, scorer.d)?;
        let k = scorer.k();
        let values: Vec<f64> = rows
            .par_chunks(scorer.d)
            .flat_map_iter(|row| {
                let mut log_p = scorer.weighted_log_densities(row);
                let norm = log_sum_exp(&log_p);
                log_p.iter_mut().for_each(|v| *v = (*v - norm).exp());
                log_p
            })
            .collect();
        Array2::from_shape_vec((x.nrows(), k), values)
            .map(Some)
            .map_err(|e| ClusterError::Internal(e.to_string()))
    }
}

impl ClusterFit {
    /// The assignment of the fitted rows themselves, respecting the fit's labels (which are not
    /// always the nearest centroid: kmeans stopped by `max_iter`, hierarchical): segment = the
    /// row's label, the Euclidean distance to its centroid, and the runner-up by the model's
    /// own rule, i.e. the nearest other centroid, or for gmm the other component of highest
    /// posterior. Where the labels are the model's choice this equals `model.assign(x)`.
    pub fn training_assignments(
        &self,
        x: ArrayView2<'_, f64>,
    ) -> Result<Vec<Assignment>, ClusterError> {
        if x.nrows() != self.labels.len() {
            return Err(KMeansError::LabelCountMismatch {
                rows: x.nrows(),
                labels: self.labels.len(),
            }
            .into());
        }
        if let Some(&label) = self.labels.iter().find(|&&l| l >= self.model.k()) {
            return Err(ClusterError::InvalidModel {
                reason: format!("label {label} is not below k = {}", self.model.k()),
            });
        }
        match &self.model {
            ClusterModel::Centroids { centroids } => {
                check_centroids(centroids.view())?;
                let d = centroids.ncols();
                let rows = checked_rows(x, d)?;
                let centroids = row_major(centroids.view());
                Ok(rows
                    .par_chunks(d)
                    .zip(self.labels.par_iter())
                    .map(|(row, &label)| {
                        let costs: Vec<f64> = centroids
                            .chunks_exact(d)
                            .map(|c| squared_distance(row, c))
                            .collect();
                        Assignment {
                            segment: label,
                            distance: costs[label].sqrt(),
                            second_segment: lowest(&costs, Some(label)),
                        }
                    })
                    .collect())
            }
            ClusterModel::Gaussian {
                weights,
                means,
                covariances,
            } => {
                let scorer = GaussianScorer::new(weights, means.view(), covariances.view())?;
                scorer.assignments(x, Some(&self.labels))
            }
        }
    }
}

fn check_centroids(centroids: ArrayView2<'_, f64>) -> Result<(), ClusterError> {
    if centroids.nrows() == 0 || centroids.ncols() == 0 {
        return Err(ClusterError::InvalidModel {
            reason: format!(
                "the centroids are a {}×{} matrix; they need at least one row and one column",
                centroids.nrows(),
                centroids.ncols()
            ),
        });
    }
    if let Some(((row, column), value)) = centroids.indexed_iter().find(|(_, v)| !v.is_finite()) {
        return Err(ClusterError::InvalidModel {
            reason: format!("centroid {row}, column {column} is not finite ({value})"),
        });
    }
    Ok(())
}

/// The index of the lowest cost (the lowest index on a tie), `skip` excepted.
fn lowest(costs: &[f64], skip: Option<usize>) -> Option<usize> {
    let mut best: Option<usize> = None;
    for (j, &cost) in costs.iter().enumerate() {
        if Some(j) != skip && best.is_none_or(|b| cost < costs[b]) {
            best = Some(j);
        }
    }
    best
}

fn log_sum_exp(values: &[f64]) -> f64 {
    let max = values.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    if max == f64::NEG_INFINITY {
        return max;
    }
    max + values.iter().map(|v| (v - max).exp()).sum::<f64>().ln()
}

/// A Gaussian mixture ready to score rows: the Cholesky factor of each covariance, computed
/// once. Scores are `ln(w_j · N(x | μ_j, Σ_j))`, the log of the unnormalised posterior.
struct GaussianScorer<'a> {
    d: usize,
    means: ArrayView2<'a, f64>,
    /// Lower-triangular `L_j` with `Σ_j = L_j L_jᵀ`, row-major `d × d`, one per component.
    factors: Vec<Vec<f64>>,
    /// `ln w_j − ½ d ln 2π − ln det L_j`, one per component.
    offsets: Vec<f64>,
}

impl<'a> GaussianScorer<'a> {
    fn new(
        weights: &[f64],
        means: ArrayView2<'a, f64>,
        covariances: ArrayView3<'a, f64>,
    ) -> Result<Self, ClusterError> {
        let invalid = |reason: String| ClusterError::InvalidModel { reason };
        let (k, d) = means.dim();
        check_centroids(means)?;
        if weights.len() != k || covariances.dim() != (k, d, d) {
            return Err(invalid(format!(
                "a Gaussian model with {k} means of {d} features needs {k} weights and {k}×{d}×{d} \
                 covariances; got {} weights and {:?} covariances",
                weights.len(),
                covariances.dim()
            )));
        }
        if let Some((j, w)) = weights
            .iter()
            .enumerate()
            .find(|(_, w)| !(w.is_finite() && **w > 0.0))
        {
            return Err(invalid(format!(
                "weight {j} is {w}; every weight must be a positive number"
            )));
        }
        let half_log_2pi = 0.5 * d as f64 * (2.0 * std::f64::consts::PI).ln();
        let mut factors = Vec::with_capacity(k);
        let mut offsets = Vec::with_capacity(k);
        for (j, (covariance, weight)) in covariances.outer_iter().zip(weights).enumerate() {
            let factor = cholesky(covariance).ok_or_else(|| {
                invalid(format!(
                    "the covariance of component {j} is not a finite positive-definite matrix"
                ))
            })?;
            let log_det: f64 = (0..d).map(|i| factor[i * d + i].ln()).sum();
            offsets.push(weight.ln() - half_log_2pi - log_det);
            factors.push(factor);
        }
        Ok(Self {
            d,
            means,
            factors,
            offsets,
        })
    }

    fn k(&self) -> usize {
        self.offsets.len()
    }

    fn weighted_log_densities(&self, row: &[f64]) -> Vec<f64> {
        let d = self.d;
        let mut z = vec![0.0; d];
        self.means
            .outer_iter()
            .zip(&self.factors)
            .zip(&self.offsets)
            .map(|((mean, factor), offset)| {
                // Solve L z = x − μ; then (x − μ)ᵀ Σ⁻¹ (x − μ) = ‖z‖².
                for i in 0..d {
                    let mut v = row[i] - mean[i];
                    for (p, zp) in z[..i].iter().enumerate() {
                        v -= factor[i * d + p] * zp;
                    }
                    z[i] = v / factor[i * d + i];
                }
                offset - 0.5 * z.iter().map(|v| v * v).sum::<f64>()
            })
            .collect()
    }

    /// Each row's assignment; with `labels`, the segment is the row's label.
    fn assignments(
        &self,
        x: ArrayView2<'_, f64>,
        labels: Option<&[usize]>,
    ) -> Result<Vec<Assignment>, ClusterError> {
        let rows = checked_rows(x, self.d)?;
        let means = row_major(self.means);
        Ok(rows
            .par_chunks(self.d)
            .enumerate()
            .map(|(i, row)| {
                // Negated, so that the lowest "cost" is the highest posterior.
                let costs: Vec<f64> = self
                    .weighted_log_densities(row)
                    .into_iter()
                    .map(|v| -v)
                    .collect();
                let segment = match labels {
                    Some(labels) => labels[i],
                    None => lowest(&costs, None).unwrap_or(0),
                };
                let mean = &means[segment * self.d..(segment + 1) * self.d];
                Assignment {
                    segment,
                    distance: squared_distance(row, mean).sqrt(),
                    second_segment: lowest(&costs, Some(segment)),
                }
            })
            .collect())
    }

    /// Mean over rows of `ln p(x)`, summed in fixed blocks (the same whatever the threads).
    fn mean_log_likelihood(&self, rows: &[f64]) -> f64 {
        let n = rows.len() / self.d;
        let partials: Vec<f64> = rows
            .par_chunks(ROWS_PER_BLOCK * self.d)
            .map(|block| {
                block
                    .chunks_exact(self.d)
                    .map(|row| log_sum_exp(&self.weighted_log_densities(row)))
                    .sum::<f64>()
            })
            .collect();
        partials.iter().sum::<f64>() / n as f64
    }
}

/// The lower Cholesky factor of a symmetric matrix (its lower triangle is read), row-major;
/// `None` unless it is finite and positive definite.
fn cholesky(a: ArrayView2<'_, f64>) -> Option<Vec<f64>> {
    let d = a.nrows();
    let mut l = vec![0.0; d * d];
    for i in 0..d {
        for j in 0..=i {
            let mut s = a[[i, j]];
            for p in 0..j {
                s -= l[i * d + p] * l[j * d + p];
            }
            if i == j {
                // Also rejects NaN.
                if !(s > 0.0 && s.is_finite()) {
                    return None;
                }
                l[i * d + i] = s.sqrt();
            } else {
                l[i * d + j] = s / l[j * d + j];
            }
        }
    }
    Some(l)
}

// ---------------------------------------------------------------------------------------------
// Fitting
// ---------------------------------------------------------------------------------------------

/// Fits `k` segments to the rows of `x` (one row per customer, one column per feature) with
/// the algorithm of `params`.
pub fn fit(
    params: &CheckedClusterParams,
    x: ArrayView2<'_, f64>,
    k: usize,
) -> Result<ClusterFit, ClusterError> {
    let p = params.params;
    check_input(x, k)?;
    match p.algorithm {
        Algorithm::KMeans => fit_kmeans(&p, x, k),
        Algorithm::MiniBatchKMeans => fit_minibatch(&p, x, k),
        Algorithm::Gmm => fit_gmm(&p, x, k),
        Algorithm::Hierarchical => {
            check_hierarchical_rows(x.nrows())?;
            Ok(hierarchical_fit(x, &ward_tree(x), k))
        }
    }
}

/// The data rules every algorithm shares, with k-means' errors.
fn check_input(x: ArrayView2<'_, f64>, k: usize) -> Result<(), ClusterError> {
    let (rows, columns) = x.dim();
    if k == 0 {
        return Err(KMeansError::ZeroClusters.into());
    }
    if rows == 0 {
        return Err(KMeansError::EmptyInput.into());
    }
    if columns == 0 {
        return Err(KMeansError::NoFeatures { rows }.into());
    }
    if k > rows {
        return Err(KMeansError::MoreClustersThanRows { k, rows }.into());
    }
    if let Some(((row, column), &value)) = x.indexed_iter().find(|(_, v)| !v.is_finite()) {
        return Err(KMeansError::NonFiniteValue { row, column, value }.into());
    }
    Ok(())
}

/// The rows of `x` in row-major order, after checking they have `d` finite columns.
fn checked_rows(x: ArrayView2<'_, f64>, d: usize) -> Result<Cow<'_, [f64]>, ClusterError> {
    if x.ncols() != d {
        return Err(KMeansError::AssignWidthMismatch {
            expected: d,
            got: x.ncols(),
        }
        .into());
    }
    if let Some(((row, column), &value)) = x.indexed_iter().find(|(_, v)| !v.is_finite()) {
        return Err(KMeansError::NonFiniteValue { row, column, value }.into());
    }
    Ok(row_major(x))
}

fn row_major(x: ArrayView2<'_, f64>) -> Cow<'_, [f64]> {
    match x.to_slice() {
        Some(slice) => Cow::Borrowed(slice),
        None => Cow::Owned(x.iter().copied().collect()),
    }
}

fn squared_distance(a: &[f64], b: &[f64]) -> f64 {
    a.iter().zip(b).map(|(x, y)| (x - y) * (x - y)).sum()
}

/// Sum over rows of the squared distance to their label's centroid, in fixed blocks.
fn inertia(x: ArrayView2<'_, f64>, centroids: ArrayView2<'_, f64>, labels: &[usize]) -> f64 {
    let d = x.ncols();
    let rows = row_major(x);
    let centroids = row_major(centroids);
    let partials: Vec<f64> = rows
        .par_chunks(ROWS_PER_BLOCK * d)
        .zip(labels.par_chunks(ROWS_PER_BLOCK))
        .map(|(block, labels)| {
            block
                .chunks_exact(d)
                .zip(labels)
                .map(|(row, &l)| squared_distance(row, &centroids[l * d..(l + 1) * d]))
                .sum::<f64>()
        })
        .collect();
    partials.iter().sum()
}

/// A random stream of its own for each purpose (and restart) of one seed.
fn seeded_stream(seed: u64, stream: u64) -> ChaCha8Rng {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    rng.set_stream(stream);
    rng
}

fn fit_kmeans(
    p: &ClusterParams,
    x: ArrayView2<'_, f64>,
    k: usize,
) -> Result<ClusterFit, ClusterError> {
    let fit = KMeansParams {
        k,
        n_init: p.n_init,
        max_iter: p.max_iter,
        tol: p.tol,
        seed: p.seed,
    }
    .check()?
    .fit(x)?;
    Ok(ClusterFit {
        algorithm: Algorithm::KMeans,
        k,
        model: ClusterModel::Centroids {
            centroids: fit.centroids.clone(),
        },
        centroids: fit.centroids,
        labels: fit.labels,
        inertia: fit.inertia,
        n_iter: Some(fit.n_iter),
        converged: Some(fit.converged),
    })
}

/// Centroids and labels of a fit whose model is its centroids.
fn centroid_fit(
    algorithm: Algorithm,
    x: ArrayView2<'_, f64>,
    centroids: Array2<f64>,
    labels: Vec<usize>,
    n_iter: Option<usize>,
    converged: Option<bool>,
) -> ClusterFit {
    ClusterFit {
        algorithm,
        k: centroids.nrows(),
        inertia: inertia(x, centroids.view(), &labels),
        model: ClusterModel::Centroids {
            centroids: centroids.clone(),
        },
        centroids,
        labels,
        n_iter,
        converged,
    }
}

fn fit_minibatch(
    p: &ClusterParams,
    x: ArrayView2<'_, f64>,
    k: usize,
) -> Result<ClusterFit, ClusterError> {
    let n = x.nrows();
    let batch_size = p.batch_size.min(n);
    let mut rng = seeded_stream(p.seed, 0);
    let mut init_seeds = seeded_stream(p.seed, 1);

    // Initialisation on a sample, the best of n_init k-means++ runs by inertia on it.
    let init_size = (3 * batch_size).max(3 * k).min(n);
    let mut init_rows = rand::seq::index::sample(&mut rng, n, init_size).into_vec();
    init_rows.sort_unstable();
    let init_x = x.select(Axis(0), &init_rows);
    let mut init: Option<(f64, Array2<f64>)> = None;
    for _ in 0..p.n_init {
        let centres = kmeans::kmeans_plusplus(init_x.view(), k, init_seeds.random())?;
        let labels = nearest_labels(init_x.view(), &centres)?;
        let cost = inertia(init_x.view(), centres.view(), &labels);
        // Strictly lower only: ties keep the earliest.
        if init.as_ref().is_none_or(|(best, _)| cost < *best) {
            init = Some((cost, centres));
        }
    }
    let Some((_, mut centroids)) = init else {
        return Err(ClusterError::Internal(
            "minibatch_kmeans had no initialisation".into(),
        ));
    };

    // linfa's tolerance must be positive; its verdict is ignored (see the module docs).
    let step_params = linfa_clustering::KMeans::params(k)
        .init_method(KMeansInit::Precomputed(centroids.clone()))
        .n_runs(1)
        .tolerance(f64::MIN_POSITIVE)
        .check()
        .map_err(|e| {
            ClusterError::Internal(format!("linfa rejected mini-batch parameters: {e}"))
        })?;
    let absolute_tol = p.tol * mean_feature_variance(x);
    let n_steps = p.max_iter.saturating_mul(n.div_ceil(batch_size));
    let mut stop = MiniBatchStop::new(batch_size, n, absolute_tol);
    let mut model = None;
    let (mut steps, mut converged) = (0, false);
    for _ in 0..n_steps {
        let batch_rows: Vec<usize> = (0..batch_size).map(|_| rng.random_range(0..n)).collect();
        let batch = DatasetBase::from(x.select(Axis(0), &batch_rows));
        let updated = match step_params.fit_with(model.take(), &batch) {
            Ok(m) | Err(IncrKMeansError::NotConverged(m)) => m,
            Err(e) => {
                return Err(ClusterError::Internal(format!(
                    "mini-batch step failed: {e}"
                )));
            }
        };
        let shift: f64 = (updated.centroids() - &centroids)
            .iter()
            .map(|v| v * v)
            .sum();
        centroids = updated.centroids().clone();
        // linfa's inertia here is the batch's mean squared distance to the centres before the
        // step, which is scikit-learn's batch inertia too.
        let batch_inertia = updated.inertia();
        model = Some(updated);
        steps += 1;
        if stop.after_step(steps, shift, batch_inertia) {
            converged = true;
            break;
        }
    }
    let labels = nearest_labels(x, &centroids)?;
    Ok(centroid_fit(
        Algorithm::MiniBatchKMeans,
        x,
        centroids,
        labels,
        Some(steps),
        Some(converged),
    ))
}

/// scikit-learn's `MiniBatchKMeans._mini_batch_convergence`: a centre-shift rule (when
/// `tol > 0`) and a no-improvement rule on an exponentially weighted average of the batch
/// inertia, both skipping the first step (its inertia is that of the initial centres).
struct MiniBatchStop {
    alpha: f64,
    absolute_tol: f64,
    ewa_inertia: Option<f64>,
    ewa_inertia_min: Option<f64>,
    no_improvement: usize,
}

impl MiniBatchStop {
    fn new(batch_size: usize, n_rows: usize, absolute_tol: f64) -> Self {
        Self {
            alpha: (batch_size as f64 * 2.0 / (n_rows as f64 + 1.0)).min(1.0),
            absolute_tol,
            ewa_inertia: None,
            ewa_inertia_min: None,
            no_improvement: 0,
        }
    }

    /// Whether to stop after step `step` (counted from 1).
    fn after_step(&mut self, step: usize, centre_shift: f64, batch_inertia: f64) -> bool {
        if step == 1 {
            return false;
        }
        let ewa = match self.ewa_inertia {
            None => batch_inertia,
            Some(ewa) => ewa * (1.0 - self.alpha) + batch_inertia * self.alpha,
        };
        self.ewa_inertia = Some(ewa);
        if self.absolute_tol > 0.0 && centre_shift <= self.absolute_tol {
            return true;
        }
        if self.ewa_inertia_min.is_none_or(|min| ewa < min) {
            self.no_improvement = 0;
            self.ewa_inertia_min = Some(ewa);
        } else {
            self.no_improvement += 1;
        }
        self.no_improvement >= MINIBATCH_MAX_NO_IMPROVEMENT
    }
}

/// Mean over features of the population variance (what k-means' `tol` is relative to).
fn mean_feature_variance(x: ArrayView2<'_, f64>) -> f64 {
    let d = x.ncols();
    let total: f64 = x
        .columns()
        .into_iter()
        .map(|column| {
            let mean = column.sum() / column.len() as f64;
            column.iter().map(|v| (v - mean) * (v - mean)).sum::<f64>() / column.len() as f64
        })
        .sum();
    total / d as f64
}

fn nearest_labels(
    x: ArrayView2<'_, f64>,
    centroids: &Array2<f64>,
) -> Result<Vec<usize>, ClusterError> {
    let model = ClusterModel::Centroids {
        centroids: centroids.clone(),
    };
    Ok(model.assign(x)?.iter().map(|a| a.segment).collect())
}

fn fit_gmm(
    p: &ClusterParams,
    x: ArrayView2<'_, f64>,
    k: usize,
) -> Result<ClusterFit, ClusterError> {
    let rows = row_major(x);
    let mut best: Option<(f64, ClusterModel)> = None;
    let mut first_error = None;
    for restart in 0..p.n_init {
        let fitted = match gmm_restart(p, x, k, restart) {
            Ok(fitted) => fitted,
            Err(err) => {
                first_error.get_or_insert(err);
                continue;
            }
        };
        let weights = fitted.weights().to_vec();
        let log_likelihood =
            GaussianScorer::new(&weights, fitted.means().view(), fitted.covariances().view())?
                .mean_log_likelihood(&rows);
        let model = ClusterModel::Gaussian {
            weights,
            means: fitted.means().clone(),
            covariances: fitted.covariances().clone(),
        };
        // Strictly higher only: ties keep the earliest restart.
        if best.as_ref().is_none_or(|(kept, _)| log_likelihood > *kept) {
            best = Some((log_likelihood, model));
        }
    }
    let Some((_, model)) = best else {
        return Err(
            first_error.unwrap_or_else(|| ClusterError::Internal("gmm ran no restart".into()))
        );
    };
    let labels: Vec<usize> = model.assign(x)?.iter().map(|a| a.segment).collect();
    let centroids = model.centroids().to_owned();
    Ok(ClusterFit {
        algorithm: Algorithm::Gmm,
        k,
        inertia: inertia(x, centroids.view(), &labels),
        centroids,
        labels,
        n_iter: None,
        converged: Some(true),
        model,
    })
}

/// One EM fit by linfa, from its own k-means initialisation, with restart `restart`'s RNG.
fn gmm_restart(
    p: &ClusterParams,
    x: ArrayView2<'_, f64>,
    k: usize,
    restart: usize,
) -> Result<GaussianMixtureModel<f64>, ClusterError> {
    let rng = Xoshiro256Plus::seed_from_u64(seeded_stream(p.seed, restart as u64).random());
    let params = GaussianMixtureModel::params(k)
        .with_rng(rng)
        .n_runs(1)
        .max_n_iterations(p.max_iter as u64)
        .tolerance(p.tol)
        .reg_covariance(GMM_REG_COVARIANCE)
        .init_method(GmmInitMethod::KMeans)
        .check()
        .map_err(|e| ClusterError::Internal(format!("linfa rejected gmm parameters: {e}")))?;
    params.fit(&DatasetBase::from(x)).map_err(|e| match e {
        GmmError::NotConverged(_) => ClusterError::GmmNotConverged {
            k,
            max_iter: p.max_iter,
            tol: p.tol,
            n_init: p.n_init,
        },
        other => ClusterError::GmmFit {
            k,
            reason: other.to_string(),
        },
    })
}

fn check_hierarchical_rows(rows: usize) -> Result<(), ClusterError> {
    if rows > HIERARCHICAL_MAX_ROWS {
        return Err(ClusterError::TooManyRowsForHierarchical {
            rows,
            max: HIERARCHICAL_MAX_ROWS,
        });
    }
    Ok(())
}

/// The Ward merge tree of the rows (kodama on exact Euclidean distances; kodama squares them
/// itself for Ward). Steps are in increasing merge cost, clusters labelled as scipy does.
fn ward_tree(x: ArrayView2<'_, f64>) -> kodama::Dendrogram<f64> {
    let (n, d) = x.dim();
    let rows = row_major(x);
    // Condensed upper triangle: row i's distances to rows i+1.. are one contiguous run.
    let mut condensed = vec![0.0; n * n.saturating_sub(1) / 2];
    let mut runs = Vec::with_capacity(n);
    let mut rest = condensed.as_mut_slice();
    for i in 0..n {
        let (run, tail) = rest.split_at_mut(n - i - 1);
        runs.push((i, run));
        rest = tail;
    }
    runs.into_par_iter().for_each(|(i, run)| {
        let row = &rows[i * d..(i + 1) * d];
        for (offset, out) in run.iter_mut().enumerate() {
            let j = i + 1 + offset;
            *out = squared_distance(row, &rows[j * d..(j + 1) * d]).sqrt();
        }
    });
    kodama::linkage(&mut condensed, n, kodama::Method::Ward)
}

/// The cut of a Ward tree into `k` clusters: the first `n − k` merges.
fn hierarchical_fit(
    x: ArrayView2<'_, f64>,
    tree: &kodama::Dendrogram<f64>,
    k: usize,
) -> ClusterFit {
    let n = x.nrows();
    // Union-find over rows; `representative[c]` is a row of dendrogram cluster `c`.
    let mut parent: Vec<usize> = (0..n).collect();
    fn root(parent: &mut [usize], mut i: usize) -> usize {
        while parent[i] != i {
            parent[i] = parent[parent[i]];
            i = parent[i];
        }
        i
    }
    let mut representative: Vec<usize> = (0..n).collect();
    for step in tree.steps().iter().take(n - k) {
        let a = root(&mut parent, representative[step.cluster1]);
        let b = root(&mut parent, representative[step.cluster2]);
        parent[b] = a;
        representative.push(a);
    }
    // Clusters numbered in order of first appearance, so labels do not depend on tree labels.
    let mut number_of_root = vec![usize::MAX; n];
    let mut next = 0;
    let labels: Vec<usize> = (0..n)
        .map(|i| {
            let r = root(&mut parent, i);
            if number_of_root[r] == usize::MAX {
                number_of_root[r] = next;
                next += 1;
            }
            number_of_root[r]
        })
        .collect();
    let d = x.ncols();
    let mut sums = Array2::<f64>::zeros((k, d));
    let mut counts = vec![0usize; k];
    for (row, &label) in x.outer_iter().zip(&labels) {
        let mut sum = sums.row_mut(label);
        sum += &row;
        counts[label] += 1;
    }
    for (mut sum, &count) in sums.outer_iter_mut().zip(&counts) {
        sum /= count.max(1) as f64;
    }
    centroid_fit(Algorithm::Hierarchical, x, sums, labels, None, None)
}

// ---------------------------------------------------------------------------------------------
// Choosing k
// ---------------------------------------------------------------------------------------------

/// The result of [`search_k`].
#[derive(Debug, Clone, PartialEq)]
pub struct ClusterSearch {
    /// Inertia and silhouette of every k of the range, in increasing k.
    pub curve: Vec<KCurvePoint>,
    /// The knee of the elbow curve, if it has one.
    pub knee_k: Option<usize>,
    pub chosen_k: usize,
    pub reason: KChoice,
    /// The fit for `chosen_k`.
    pub fit: ClusterFit,
}

/// Fits every k in `k_min..=k_max` and chooses one by [`kmeans::choose_k`]'s rule, with the
/// silhouette of each fit (k >= 2) computed by [`kmeans::silhouette_score`] on
/// `silhouette_sample_size` rows and the params' seed. For kmeans this is exactly
/// [`kmeans::KSearchParams`]'s search. Hierarchical clustering builds its tree once and cuts
/// it at every k.
pub fn search_k(
    params: &CheckedClusterParams,
    x: ArrayView2<'_, f64>,
    k_min: usize,
    k_max: usize,
) -> Result<ClusterSearch, ClusterError> {
    let p = params.params;
    if k_min == 0 {
        return Err(KMeansError::ZeroMinClusters.into());
    }
    if k_min > k_max {
        return Err(KMeansError::EmptyKRange { k_min, k_max }.into());
    }
    check_input(x, k_max)?;
    let tree = if p.algorithm == Algorithm::Hierarchical {
        check_hierarchical_rows(x.nrows())?;
        Some(ward_tree(x))
    } else {
        None
    };
    let mut curve = Vec::new();
    let mut fits = Vec::new();
    for k in k_min..=k_max {
        let fit = match &tree {
            Some(tree) => hierarchical_fit(x, tree, k),
            None => fit(params, x, k)?,
        };
        let silhouette = if k >= 2 {
            match kmeans::silhouette_score(x, &fit.labels, p.silhouette_sample_size, p.seed) {
                Ok(score) => Some(score),
                // Too few distinct clusters (duplicate rows), or one per row: no silhouette
                // for this k, which is not an error of the search.
                Err(KMeansError::SilhouetteClusterCount { .. }) => None,
                Err(other) => return Err(other.into()),
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
    let (chosen_k, knee_k, reason) = kmeans::choose_k(&curve);
    let fit = fits.into_iter().nth(chosen_k - k_min).ok_or_else(|| {
        ClusterError::Internal(format!("chosen k = {chosen_k} is not in the range"))
    })?;
    Ok(ClusterSearch {
        curve,
        knee_k,
        chosen_k,
        reason,
        fit,
    })
}

#[cfg(test)]
mod tests;
