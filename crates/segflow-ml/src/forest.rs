//! Random forest and single decision tree for binary classification (churn), built on
//! histogram CART.
//!
//! # How a fit works
//! 1. Hyperparameters are checked once ([`ForestParams::check`] → [`ForestValidParams`]); every
//!    rule has its own [`ForestError`] variant.
//! 2. The data are checked (shape, labels 0/1 with both classes present, finite-or-NaN features,
//!    weights) and every feature is binned once into at most `max_bins` (≤ 256) quantile bins,
//!    stored as `u8` codes, row-major. Each tree copies the codes of the rows it drew and moves
//!    them with the rows as nodes split, so a node's rows are contiguous and one sequential
//!    pass over them fills the histograms of every feature the split examines. NaN is
//!    "missing": it has its own bin, which sorts after all values, so **a split always sends
//!    NaN to the right child** (also at prediction, where `NaN <= threshold` is false).
//!    Infinite feature values are rejected at fit.
//! 3. Trees grow in parallel (rayon). Tree `i` draws everything (bootstrap, features) from
//!    ChaCha8 seeded with `seed`, stream `i`, and results are reduced in tree order, so the model
//!    is bit-identical whatever the thread count.
//! 4. Each split examines `max_features` non-constant features drawn afresh for that split
//!    (constant ones are redrawn, as scikit-learn does), builds per-bin class-weight histograms,
//!    and picks the lowest weighted Gini; ties go to the lowest feature index, then the lowest
//!    bin. When every split examines every feature (the single tree's default), a node builds the
//!    smaller child's histograms and derives the sibling's by subtraction.
//! 5. Splits are stored as real thresholds (bin upper edges = midpoints between neighbouring
//!    training values), so prediction needs only the raw features.
//!
//! Prediction (probabilities, OOB, contributions) does not walk the stored [`Tree`]s but a
//! compact copy laid out for it, built when a prediction starts (`flat.rs` says why and how);
//! the results are the same bit for bit.
//!
//! Semantics follow scikit-learn's `RandomForestClassifier`/`DecisionTreeClassifier` (Gini,
//! `min_samples_*` counted in distinct rows, bootstrap draws as weights, `class_weight`,
//! `predict_proba` as the mean of leaf class fractions, impurity importances, OOB). Differences:
//! thresholds come from at most 256 bins per feature (lossless when a feature has ≤ 256 distinct
//! values), and the random streams differ, so forests are statistically, not bitwise, alike.
//!
//! Labels are classes `0..n_classes`; the internals work for any `n_classes`, but fitting
//! currently accepts binary labels only (0 = negative, 1 = positive), because the
//! positive-class outputs (OOB probabilities, contributions) are what the pipeline needs.
//!
//! # Saved model
//! [`RandomForest`], [`DecisionTree`] and [`Node`] derive serde, and a [`Tree`] (stored compactly,
//! see its docs) reads and writes itself as `{"nodes": [node, …]}`; their field names are the
//! JSON format and must stay stable. Per-row OOB probabilities are training diagnostics and are
//! not serialised (only `oob_accuracy` is).

mod binning;
mod flat;
mod tree;

#[cfg(test)]
mod tests;

use linfa::ParamGuard;
use linfa::dataset::{AsSingleTargets, DatasetBase};
use linfa::traits::{Fit, PredictInplace};
use ndarray::{Array1, Array2, ArrayBase, ArrayView2, Data, Ix2};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rayon::prelude::*;
use serde::{Deserialize, Serialize};
use std::borrow::Cow;
use std::sync::Arc;

use binning::BinnedFeatures;
use flat::{FlatGroup, Purpose, RowCodes, TaskRows, ThresholdRanks};
use tree::{GrowSettings, TreeSample};
pub use tree::{Node, Tree};

/// The only class count fitting accepts today (see the module docs).
const BINARY_CLASSES: usize = 2;
/// Class whose probability `predict_proba`, OOB and contributions report.
const POSITIVE_CLASS: usize = 1;

/// Everything that can go wrong, one variant per rule.
#[derive(Debug, thiserror::Error)]
pub enum ForestError {
    // --- hyperparameter rules (checked once, before any data is touched) ---
    #[error("n_trees must be at least 1")]
    ZeroTrees,
    #[error("max_depth must be at least 1 when set (use None for full depth)")]
    ZeroMaxDepth,
    #[error("min_samples_leaf must be at least 1")]
    ZeroMinSamplesLeaf,
    #[error("min_samples_split must be at least 2, got {0}")]
    MinSamplesSplitBelowTwo(usize),
    #[error("max_features fraction must be in (0, 1], got {0}")]
    MaxFeaturesFractionOutOfRange(f64),
    #[error("max_samples must be in (0, 1], got {0}")]
    MaxSamplesOutOfRange(f64),
    #[error("max_samples needs bootstrap = true (without bootstrap every tree sees every row)")]
    MaxSamplesWithoutBootstrap,
    #[error("oob_score needs bootstrap = true (without bootstrap no row is out of bag)")]
    OobScoreWithoutBootstrap,
    #[error("max_bins must be in 2..=256 (codes are u8), got {0}")]
    MaxBinsOutOfRange(usize),

    // --- data rules (checked at fit / predict) ---
    #[error("the feature matrix has no rows")]
    NoRows,
    #[error("the feature matrix has no columns")]
    NoFeatures,
    #[error("{rows} rows of features but {labels} labels")]
    LabelCountMismatch { rows: usize, labels: usize },
    #[error("{rows} rows of features but {weights} sample weights")]
    SampleWeightCountMismatch { rows: usize, weights: usize },
    #[error("sample weight of row {row} is {weight}; weights must be finite and >= 0")]
    InvalidSampleWeight { row: usize, weight: f64 },
    #[error("all sample weights are zero")]
    ZeroTotalSampleWeight,
    #[error("label {label} in row {row} is not a binary class (0 or 1)")]
    LabelNotBinary { row: usize, label: usize },
    #[error("every label is {0}: a classifier needs both classes 0 and 1 in the training data")]
    SingleClass(usize),
    #[error("feature {feature} of row {row} is infinite; use a finite value or NaN for missing")]
    InfiniteFeature { row: usize, feature: usize },
    #[error("the model was fitted on {expected} features but got {found}")]
    FeatureCountMismatch { expected: usize, found: usize },
    /// A model whose trees were edited or loaded from elsewhere and cannot be walked.
    #[error("tree {tree}, node {node} of the model is malformed: {problem}")]
    MalformedTree {
        tree: usize,
        node: usize,
        problem: &'static str,
    },
    /// A node that [`Tree::push_node`] cannot store.
    #[error("node {node} has {found} class fractions, but its tree has {expected} classes")]
    ClassFractionCountMismatch {
        node: usize,
        expected: usize,
        found: usize,
    },
    #[error(
        "node {node} splits on feature {}, the index that marks leaves in storage",
        u32::MAX
    )]
    SplitFeatureMarksLeaves { node: usize },

    #[error(transparent)]
    Linfa(#[from] linfa::Error),
}

/// How many features each split examines.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub enum MaxFeatures {
    /// `max(1, floor(sqrt(n_features)))`, the forest default (as scikit-learn).
    Sqrt,
    /// `max(1, floor(log2(n_features)))`.
    Log2,
    /// `max(1, floor(fraction * n_features))`, fraction in (0, 1].
    Fraction(f64),
    /// Every feature (the single tree's default; enables histogram subtraction).
    All,
}

impl MaxFeatures {
    fn resolve(self, n_features: usize) -> usize {
        let n = n_features as f64;
        let count = match self {
            MaxFeatures::Sqrt => n.sqrt().floor() as usize,
            MaxFeatures::Log2 => n.log2().floor() as usize,
            MaxFeatures::Fraction(fraction) => (fraction * n).floor() as usize,
            MaxFeatures::All => n_features,
        };
        count.clamp(1, n_features)
    }
}

/// Class re-weighting, as scikit-learn's `class_weight`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum ClassWeight {
    /// Every class weighs 1.
    None,
    /// `n_rows / (n_classes * count(class))` over the whole training set.
    Balanced,
    /// As `Balanced`, but recomputed on each tree's bootstrap draw (draws counted with
    /// multiplicity). Without bootstrap it equals `Balanced`.
    BalancedSubsample,
}

/// Unchecked forest hyperparameters (builder). Defaults follow scikit-learn's
/// `RandomForestClassifier`, plus `max_bins = 256` and `seed = 0`.
#[derive(Debug, Clone, PartialEq)]
pub struct ForestParams(ForestValidParams);

/// Checked forest hyperparameters; only [`ForestParams::check`] makes one.
#[derive(Debug, Clone, PartialEq)]
pub struct ForestValidParams {
    n_trees: usize,
    tree: TreeRules,
    bootstrap: bool,
    /// Fraction of the rows drawn (with replacement) per tree; `None` = as many as rows.
    max_samples: Option<f64>,
    oob_score: bool,
    seed: u64,
}

/// Rules shared by the forest and the single tree.
#[derive(Debug, Clone, Copy, PartialEq)]
struct TreeRules {
    max_depth: Option<usize>,
    min_samples_split: usize,
    min_samples_leaf: usize,
    max_features: MaxFeatures,
    class_weight: ClassWeight,
    max_bins: usize,
}

impl TreeRules {
    fn check(&self) -> Result<(), ForestError> {
        if self.max_depth == Some(0) {
            return Err(ForestError::ZeroMaxDepth);
        }
        if self.min_samples_leaf == 0 {
            return Err(ForestError::ZeroMinSamplesLeaf);
        }
        if self.min_samples_split < 2 {
            return Err(ForestError::MinSamplesSplitBelowTwo(self.min_samples_split));
        }
        if let MaxFeatures::Fraction(fraction) = self.max_features {
            // Written so NaN fails too.
            if !(fraction > 0.0 && fraction <= 1.0) {
                return Err(ForestError::MaxFeaturesFractionOutOfRange(fraction));
            }
        }
        if !(2..=256).contains(&self.max_bins) {
            return Err(ForestError::MaxBinsOutOfRange(self.max_bins));
        }
        Ok(())
    }
}

impl Default for ForestParams {
    fn default() -> Self {
        Self::new()
    }
}

impl ForestParams {
    /// Checks every rule once; same as linfa's `ParamGuard::check`, without importing it.
    pub fn check(self) -> Result<ForestValidParams, ForestError> {
        ParamGuard::check(self)
    }

    pub fn new() -> Self {
        ForestParams(ForestValidParams {
            n_trees: 100,
            tree: TreeRules {
                max_depth: None,
                min_samples_split: 2,
                min_samples_leaf: 1,
                max_features: MaxFeatures::Sqrt,
                class_weight: ClassWeight::None,
                max_bins: 256,
            },
            bootstrap: true,
            max_samples: None,
            oob_score: false,
            seed: 0,
        })
    }
    pub fn n_trees(mut self, n_trees: usize) -> Self {
        self.0.n_trees = n_trees;
        self
    }
    /// `None` grows until leaves are pure or the row rules stop it.
    pub fn max_depth(mut self, max_depth: Option<usize>) -> Self {
        self.0.tree.max_depth = max_depth;
        self
    }
    pub fn min_samples_split(mut self, min_samples_split: usize) -> Self {
        self.0.tree.min_samples_split = min_samples_split;
        self
    }
    pub fn min_samples_leaf(mut self, min_samples_leaf: usize) -> Self {
        self.0.tree.min_samples_leaf = min_samples_leaf;
        self
    }
    pub fn max_features(mut self, max_features: MaxFeatures) -> Self {
        self.0.tree.max_features = max_features;
        self
    }
    pub fn class_weight(mut self, class_weight: ClassWeight) -> Self {
        self.0.tree.class_weight = class_weight;
        self
    }
    pub fn max_bins(mut self, max_bins: usize) -> Self {
        self.0.tree.max_bins = max_bins;
        self
    }
    pub fn bootstrap(mut self, bootstrap: bool) -> Self {
        self.0.bootstrap = bootstrap;
        self
    }
    pub fn max_samples(mut self, max_samples: Option<f64>) -> Self {
        self.0.max_samples = max_samples;
        self
    }
    pub fn oob_score(mut self, oob_score: bool) -> Self {
        self.0.oob_score = oob_score;
        self
    }
    pub fn seed(mut self, seed: u64) -> Self {
        self.0.seed = seed;
        self
    }
}

impl ParamGuard for ForestParams {
    type Checked = ForestValidParams;
    type Error = ForestError;

    fn check_ref(&self) -> Result<&ForestValidParams, ForestError> {
        let params = &self.0;
        if params.n_trees == 0 {
            return Err(ForestError::ZeroTrees);
        }
        params.tree.check()?;
        if let Some(fraction) = params.max_samples {
            if !params.bootstrap {
                return Err(ForestError::MaxSamplesWithoutBootstrap);
            }
            if !(fraction > 0.0 && fraction <= 1.0) {
                return Err(ForestError::MaxSamplesOutOfRange(fraction));
            }
        }
        if params.oob_score && !params.bootstrap {
            return Err(ForestError::OobScoreWithoutBootstrap);
        }
        Ok(params)
    }

    fn check(self) -> Result<ForestValidParams, ForestError> {
        self.check_ref()?;
        Ok(self.0)
    }
}

/// Unchecked single-tree hyperparameters. Defaults follow scikit-learn's
/// `DecisionTreeClassifier` (all features per split), plus `max_bins = 256` and `seed = 0` (the
/// seed matters only when `max_features` samples).
#[derive(Debug, Clone, PartialEq)]
pub struct DecisionTreeParams(DecisionTreeValidParams);

/// Checked single-tree hyperparameters.
#[derive(Debug, Clone, PartialEq)]
pub struct DecisionTreeValidParams {
    tree: TreeRules,
    seed: u64,
}

impl Default for DecisionTreeParams {
    fn default() -> Self {
        Self::new()
    }
}

impl DecisionTreeParams {
    /// Checks every rule once; same as linfa's `ParamGuard::check`, without importing it.
    pub fn check(self) -> Result<DecisionTreeValidParams, ForestError> {
        ParamGuard::check(self)
    }

    pub fn new() -> Self {
        DecisionTreeParams(DecisionTreeValidParams {
            tree: TreeRules {
                max_depth: None,
                min_samples_split: 2,
                min_samples_leaf: 1,
                max_features: MaxFeatures::All,
                class_weight: ClassWeight::None,
                max_bins: 256,
            },
            seed: 0,
        })
    }
    pub fn max_depth(mut self, max_depth: Option<usize>) -> Self {
        self.0.tree.max_depth = max_depth;
        self
    }
    pub fn min_samples_split(mut self, min_samples_split: usize) -> Self {
        self.0.tree.min_samples_split = min_samples_split;
        self
    }
    pub fn min_samples_leaf(mut self, min_samples_leaf: usize) -> Self {
        self.0.tree.min_samples_leaf = min_samples_leaf;
        self
    }
    pub fn max_features(mut self, max_features: MaxFeatures) -> Self {
        self.0.tree.max_features = max_features;
        self
    }
    /// `BalancedSubsample` means `Balanced` here (the tree sees every row).
    pub fn class_weight(mut self, class_weight: ClassWeight) -> Self {
        self.0.tree.class_weight = class_weight;
        self
    }
    pub fn max_bins(mut self, max_bins: usize) -> Self {
        self.0.tree.max_bins = max_bins;
        self
    }
    pub fn seed(mut self, seed: u64) -> Self {
        self.0.seed = seed;
        self
    }
}

impl ParamGuard for DecisionTreeParams {
    type Checked = DecisionTreeValidParams;
    type Error = ForestError;

    fn check_ref(&self) -> Result<&DecisionTreeValidParams, ForestError> {
        self.0.tree.check()?;
        Ok(&self.0)
    }

    fn check(self) -> Result<DecisionTreeValidParams, ForestError> {
        self.check_ref()?;
        Ok(self.0)
    }
}

/// Out-of-bag estimate, from the trees that did not draw each row.
#[derive(Debug, Clone, PartialEq)]
pub struct OobEstimate {
    /// Accuracy (positive when probability > 0.5) over the rows with at least one OOB tree.
    pub accuracy: f64,
    /// Per training row, the mean positive-class probability over the trees for which the row
    /// was out of bag; `None` when every tree drew it (rare with many trees).
    pub probabilities: Vec<Option<f64>>,
}

/// Path-based (Saabas) explanation of positive-class probabilities.
#[derive(Debug, Clone, PartialEq)]
pub struct Contributions {
    /// Mean root positive fraction over the trees: the prediction before any split, the same for
    /// every row.
    pub bias: f64,
    /// `rows × features`: for each row, the change in positive-class probability along its path
    /// credited to each split feature, averaged over trees. `bias + row sum = predict_proba`
    /// (up to rounding).
    pub per_feature: Array2<f64>,
    /// Per row, the positive-class probability, bit for bit what `predict_proba` returns: the
    /// walks that credit the features end at the leaves a prediction reads, so a caller that
    /// wants both (scoring) walks the forest once instead of twice.
    pub probabilities: Array1<f64>,
}

/// A fitted random forest. Serialised field names are the saved-model format.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RandomForest {
    /// Width of the feature matrix at fit; prediction checks it.
    pub n_features: usize,
    /// Number of classes (2 today); `Node::class_fractions` has this many entries.
    pub n_classes: usize,
    /// The trees, in index order (tree `i` used random stream `i`).
    pub trees: Vec<Tree>,
    /// Normalised impurity importances (sum 1 unless no tree split), as scikit-learn's
    /// `feature_importances_`.
    pub feature_importances: Vec<f64>,
    /// OOB accuracy when `oob_score` was requested.
    pub oob_accuracy: Option<f64>,
    /// Per-row OOB probabilities: fit-time diagnostics, not saved.
    #[serde(skip)]
    pub oob_probabilities: Option<Vec<Option<f64>>>,
    /// With `oob_score`, the forest's predictions of its own training rows, bit for bit
    /// `predict_proba`'s, from the walk that gives the OOB estimate: evaluating the training
    /// split then takes no walk of its own. Fit-time diagnostics, not saved.
    #[serde(skip)]
    pub training_probabilities: Option<Vec<f64>>,
    /// Each feature's bin upper edges at fit. Every split threshold of the trees is one of
    /// them or `f64::MAX`, so predictions code their rows against one table for every group of
    /// trees ([`flat::ThresholdRanks::of_bin_edges`]). Fit-time, not saved: a loaded forest's
    /// walks build their tables from its trees.
    #[serde(skip)]
    pub bin_edges: Option<Vec<Vec<f64>>>,
}

/// A forest laid out once for [`Contributions`], without its stored trees: what scoring a table
/// block after block needs. [`RandomForest::contributions`] lays the forest out anew on every
/// call, beside the stored trees; at 100M transaction lines that was 10 layouts of 44M nodes
/// for the 10 blocks of the score table, beside 2.45 GB of stored trees that scoring never reads.
/// Laid out, a node is 16 bytes (`flat.rs`) where it is stored in 56.
#[derive(Debug)]
pub struct ContributionLayout {
    n_features: usize,
    n_trees: usize,
    /// Each group of consecutive trees with the number of its first tree, in tree order.
    groups: Vec<(usize, FlatGroup<'static>)>,
}

impl ContributionLayout {
    /// How many thresholds tables its rank-coded groups are coded against.
    #[cfg(test)]
    fn distinct_tables(&self) -> usize {
        let mut tables: Vec<Arc<ThresholdRanks>> = Vec::new();
        for ranks in self.groups.iter().filter_map(|(_, group)| group.ranks()) {
            if !tables.iter().any(|table| Arc::ptr_eq(table, &ranks)) {
                tables.push(ranks);
            }
        }
        tables.len()
    }

    /// Bit for bit [`RandomForest::contributions`] of the forest this was laid out from.
    pub fn contributions(&self, x: ArrayView2<'_, f64>) -> Result<Contributions, ForestError> {
        check_width(&x, self.n_features)?;
        contributions_over_groups(self.n_trees, self.n_features, x, |walk| {
            for (first_tree, group) in &self.groups {
                walk(*first_tree, group);
            }
            Ok(())
        })
    }
}

/// A fitted single tree. Serialised field names are the saved-model format.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DecisionTree {
    pub n_features: usize,
    pub n_classes: usize,
    pub tree: Tree,
    /// Normalised impurity importances, as scikit-learn's `feature_importances_`.
    pub feature_importances: Vec<f64>,
}

/// Training data after the data rules passed.
struct CheckedData<'x, 'l> {
    x: ArrayView2<'x, f64>,
    labels: &'l [usize],
    /// Caller's sample weights, 1.0 when none were given.
    sample_weights: Vec<f64>,
}

fn check_data<'x, 'l>(
    x: ArrayView2<'x, f64>,
    labels: &'l [usize],
    sample_weight: Option<&[f64]>,
) -> Result<CheckedData<'x, 'l>, ForestError> {
    let (rows, features) = x.dim();
    if rows == 0 {
        return Err(ForestError::NoRows);
    }
    if features == 0 {
        return Err(ForestError::NoFeatures);
    }
    if labels.len() != rows {
        return Err(ForestError::LabelCountMismatch {
            rows,
            labels: labels.len(),
        });
    }
    if let Some((row, &label)) = labels
        .iter()
        .enumerate()
        .find(|(_, l)| **l >= BINARY_CLASSES)
    {
        return Err(ForestError::LabelNotBinary { row, label });
    }
    if labels.iter().all(|&l| l == labels[0]) {
        return Err(ForestError::SingleClass(labels[0]));
    }
    for ((row, feature), value) in x.indexed_iter() {
        if value.is_infinite() {
            return Err(ForestError::InfiniteFeature { row, feature });
        }
    }
    let sample_weights = match sample_weight {
        None => vec![1.0; rows],
        Some(weights) => {
            if weights.len() != rows {
                return Err(ForestError::SampleWeightCountMismatch {
                    rows,
                    weights: weights.len(),
                });
            }
            if let Some((row, &weight)) = weights
                .iter()
                .enumerate()
                .find(|(_, w)| !(w.is_finite() && **w >= 0.0))
            {
                return Err(ForestError::InvalidSampleWeight { row, weight });
            }
            if weights.iter().all(|&w| w == 0.0) {
                return Err(ForestError::ZeroTotalSampleWeight);
            }
            weights.to_vec()
        }
    };
    Ok(CheckedData {
        x,
        labels,
        sample_weights,
    })
}

/// scikit-learn's `compute_class_weight("balanced")` over `counts` (draws per class): classes
/// that were not drawn get weight 0 (they have no rows to weigh anyway).
fn balanced_class_weights(counts: &[usize]) -> Vec<f64> {
    let total: usize = counts.iter().sum();
    let present = counts.iter().filter(|&&c| c > 0).count();
    counts
        .iter()
        .map(|&c| {
            if c == 0 {
                0.0
            } else {
                total as f64 / (present as f64 * c as f64)
            }
        })
        .collect()
}

fn class_counts(labels: impl Iterator<Item = (usize, usize)>, n_classes: usize) -> Vec<usize> {
    let mut counts = vec![0; n_classes];
    for (label, multiplicity) in labels {
        counts[label] += multiplicity;
    }
    counts
}

/// Per-row tree weights (draw count × sample weight × class weight) and the in-bag mask for one
/// tree, drawn from that tree's own random stream.
fn tree_weights(
    data: &CheckedData<'_, '_>,
    rules: &TreeRules,
    draws: Option<usize>,
    rng: &mut ChaCha8Rng,
    global_class_weights: &[f64],
) -> (Vec<f64>, Vec<bool>) {
    let rows = data.labels.len();
    let draw_counts: Vec<usize> = match draws {
        None => vec![1; rows],
        Some(n_draws) => {
            let mut counts = vec![0; rows];
            for _ in 0..n_draws {
                counts[rng.random_range(0..rows)] += 1;
            }
            counts
        }
    };
    let class_weights = match rules.class_weight {
        ClassWeight::BalancedSubsample => balanced_class_weights(&class_counts(
            data.labels.iter().zip(&draw_counts).map(|(&l, &c)| (l, c)),
            BINARY_CLASSES,
        )),
        _ => global_class_weights.to_vec(),
    };
    let weights = (0..rows)
        .map(|row| {
            draw_counts[row] as f64 * data.sample_weights[row] * class_weights[data.labels[row]]
        })
        .collect();
    let in_bag = draw_counts.iter().map(|&c| c > 0).collect();
    (weights, in_bag)
}

/// One fitted tree plus the rows it drew (needed for OOB only).
struct GrownTree {
    tree: Tree,
    in_bag: Vec<bool>,
}

/// The trees of a fit, and the bin edges their thresholds are.
struct GrownTrees {
    trees: Vec<GrownTree>,
    /// Every feature's bin upper edges ([`RandomForest::bin_edges`]).
    bin_edges: Vec<Vec<f64>>,
}

/// Shared fitting path of the forest and the single tree.
fn grow_trees(
    data: &CheckedData<'_, '_>,
    rules: &TreeRules,
    n_trees: usize,
    draws: Option<usize>,
    seed: u64,
) -> GrownTrees {
    let binned = BinnedFeatures::new(data.x, rules.max_bins);
    let n_features = data.x.ncols();
    // Without bootstrap, BalancedSubsample is computed on the full set, i.e. it is Balanced.
    let rules_for_weights =
        if draws.is_none() && rules.class_weight == ClassWeight::BalancedSubsample {
            TreeRules {
                class_weight: ClassWeight::Balanced,
                ..*rules
            }
        } else {
            *rules
        };
    let global_class_weights = match rules_for_weights.class_weight {
        // BalancedSubsample is computed per tree, from that tree's draws.
        ClassWeight::None | ClassWeight::BalancedSubsample => vec![1.0; BINARY_CLASSES],
        ClassWeight::Balanced => balanced_class_weights(&class_counts(
            data.labels.iter().map(|&l| (l, 1)),
            BINARY_CLASSES,
        )),
    };
    let settings = GrowSettings {
        max_depth: rules.max_depth,
        min_samples_split: rules.min_samples_split,
        min_samples_leaf: rules.min_samples_leaf,
        features_per_split: rules.max_features.resolve(n_features),
        n_classes: BINARY_CLASSES,
    };
    let trees = (0..n_trees)
        .into_par_iter()
        .map(|tree_index| {
            let mut rng = ChaCha8Rng::seed_from_u64(seed);
            rng.set_stream(tree_index as u64);
            let (weights, in_bag) = tree_weights(
                data,
                &rules_for_weights,
                draws,
                &mut rng,
                &global_class_weights,
            );
            let sample = TreeSample {
                binned: &binned,
                labels: data.labels,
                weights,
            };
            GrownTree {
                tree: tree::grow_tree(&sample, settings, &mut rng),
                in_bag,
            }
        })
        .collect();
    GrownTrees {
        trees,
        bin_edges: binned.upper_edges,
    }
}

/// scikit-learn's forest importances: mean of each tree's normalised importances over the trees
/// that split at least once, renormalised.
fn feature_importances(trees: &[Tree], n_features: usize) -> Vec<f64> {
    let mut total = vec![0.0; n_features];
    let mut contributing = 0usize;
    for tree in trees.iter().filter(|tree| tree.len() > 1) {
        let decrease = tree.impurity_decrease_per_feature(n_features);
        let sum: f64 = decrease.iter().sum();
        if sum > 0.0 {
            total
                .iter_mut()
                .zip(&decrease)
                .for_each(|(t, d)| *t += d / sum);
        }
        contributing += 1;
    }
    if contributing == 0 {
        return total;
    }
    total.iter_mut().for_each(|t| *t /= contributing as f64);
    let sum: f64 = total.iter().sum();
    if sum > 0.0 {
        total.iter_mut().for_each(|t| *t /= sum);
    }
    total
}

fn check_width(x: &ArrayView2<'_, f64>, expected: usize) -> Result<(), ForestError> {
    if x.ncols() == expected {
        Ok(())
    } else {
        Err(ForestError::FeatureCountMismatch {
            expected,
            found: x.ncols(),
        })
    }
}

/// Row values (rows × features) per rayon task when predicting probabilities or OOB: at 28
/// features, 150k rows, 8 MB of codes (`flat.rs`) that each tree of a group reads through once.
const PREDICT_TASK_VALUES: usize = 1 << 22;
/// Row values per rayon task when computing contributions, as [`PREDICT_TASK_VALUES`]. Scoring
/// the 2.4M customers of the 100M demo run (blocks of 262k rows, trees of 440k nodes) took
/// 34.8 s with tasks of 131k rows against 42 s with tasks of 18k (`segflow score`, same model
/// and table): a tree too big for L2 serves more rows from each node it brings in.
const CONTRIBUTION_TASK_VALUES: usize = 1 << 22;

/// Rows per rayon task when predicting `n_rows` rows of `n_features` values, at most
/// `max_values` values a task; the result does not depend on it.
///
/// A task walks each tree of a group over all its rows before the next tree, so the more rows
/// a task has, the more of them a tree's nodes, once in cache, serve. Measured on 100
/// full-depth trees of 47k nodes (`forest/predict` in benches/kernels): tasks of 256 rows took
/// about twice as long as tasks of 16k rows (2.4× with the former 16-byte nodes), as most steps
/// below the first levels missed the cache. So a task gets one thread's share of the rows, up
/// to the cap that bounds its memory; the last rows of a task (fewer than LANES) walk one at a
/// time.
fn rows_per_task(n_rows: usize, n_features: usize, max_values: usize) -> usize {
    let most = (max_values / n_features.max(1)).max(1);
    n_rows
        .div_ceil(rayon::current_num_threads())
        .clamp(1, most)
        .next_multiple_of(flat::LANES)
}

/// Nodes laid out for prediction at a time. A forest is walked a group of consecutive trees at
/// a time, each group laid out just before its walk and dropped after it, so a prediction holds
/// at most about 100 MB of layout (16 bytes a node for contributions, 8 for predictions; 8 more
/// in the plain layout a loaded model may need, `flat.rs`) besides the stored trees. Laying out
/// the whole forest at once held 1 GB for 100 trees fitted on 1.7M customers (44M nodes), on
/// each thread that predicted (permutation importance runs two), which was most of the 100M
/// run's peak. Fewer groups also mean fewer codings of the rows (once per group). Each row
/// still sums its trees in tree order, so results do not depend on the grouping.
const FLAT_NODES_PER_GROUP: usize = (100 << 20) / 16;

/// Calls `walk(first_tree, group)` for consecutive groups of `trees`, laid out for `purpose`
/// (`flat.rs`), in tree order: each group at most `group_nodes` nodes (or a single larger
/// tree). Stops at the first malformed tree. `thresholds`, a table known to hold the trees'
/// thresholds (a fit's bin edges), is the first group's to be laid out against.
fn for_each_flat_group(
    trees: &[Tree],
    n_features: usize,
    group_nodes: usize,
    purpose: Purpose,
    thresholds: Option<Arc<ThresholdRanks>>,
    mut walk: impl FnMut(usize, &FlatGroup<'_>),
) -> Result<(), ForestError> {
    let mut first = 0;
    let mut known = thresholds;
    for size in flat_group_sizes(trees, group_nodes) {
        // Laid out against the table of the group before, whose coded rows then serve it.
        let group = FlatGroup::new(
            &trees[first..first + size],
            first,
            n_features,
            purpose,
            known,
        )?;
        walk(first, &group);
        known = group.ranks();
        first += size;
    }
    Ok(())
}

/// How many trees each group of consecutive `trees` holds, in tree order: as many as fit in
/// `group_nodes` nodes, and at least one.
fn flat_group_sizes(trees: &[Tree], group_nodes: usize) -> Vec<usize> {
    let mut sizes = Vec::new();
    let mut first = 0;
    while first < trees.len() {
        let mut end = first + 1;
        let mut nodes = trees[first].len();
        while end < trees.len() && nodes + trees[end].len() <= group_nodes {
            nodes += trees[end].len();
            end += 1;
        }
        sizes.push(end - first);
        first = end;
    }
    sizes
}

/// `x` as one row-major slice (row `r` is `r * ncols..(r + 1) * ncols`): borrowed when the view
/// already is one, copied once otherwise. Tree walks then index plain slices instead of
/// strided, bounds-checked row views.
fn row_major<'a>(x: &ArrayView2<'a, f64>) -> Cow<'a, [f64]> {
    match x.to_slice() {
        Some(values) => Cow::Borrowed(values),
        None => Cow::Owned(x.iter().copied().collect()),
    }
}

/// Mean positive-class leaf fraction over `trees`, for every row (trees summed in order).
fn mean_positive_probability(
    trees: &[Tree],
    n_features: usize,
    x: ArrayView2<'_, f64>,
    group_nodes: usize,
    thresholds: Option<Arc<ThresholdRanks>>,
) -> Result<Array1<f64>, ForestError> {
    let values = row_major(&x);
    let mut out = vec![0.0; x.nrows()];
    let task_rows = rows_per_task(x.nrows(), n_features, PREDICT_TASK_VALUES);
    let mut coded: Option<RowCodes> = None;
    for_each_flat_group(
        trees,
        n_features,
        group_nodes,
        Purpose::Predictions,
        thresholds,
        |_, group| {
            coded = group.code_rows(&values, coded.take());
            out.par_chunks_mut(task_rows)
                .enumerate()
                .for_each(|(task, out)| {
                    // The group's trees walk the task's rows one tree after the other
                    // (`rows_per_task` says why). Each row still sums its trees in tree order,
                    // so the result is the same bit for bit.
                    group.add_leaf_values(
                        TaskRows {
                            values: &values,
                            coded: coded.as_ref(),
                            first_row: task * task_rows,
                        },
                        out,
                    );
                });
        },
    )?;
    out.iter_mut().for_each(|sum| *sum /= trees.len() as f64);
    Ok(Array1::from(out))
}

fn contributions_of(
    trees: &[Tree],
    n_features: usize,
    x: ArrayView2<'_, f64>,
    group_nodes: usize,
) -> Result<Contributions, ForestError> {
    contributions_over_groups(trees.len(), n_features, x, |walk| {
        for_each_flat_group(
            trees,
            n_features,
            group_nodes,
            Purpose::Contributions,
            None,
            walk,
        )
    })
}

/// Contributions of the rows `x` from a forest of `n_trees` trees whose groups, laid out for
/// contributions, `for_each_group` hands to the walk it is given, in tree order.
fn contributions_over_groups(
    n_trees: usize,
    n_features: usize,
    x: ArrayView2<'_, f64>,
    for_each_group: impl FnOnce(&mut dyn FnMut(usize, &FlatGroup<'_>)) -> Result<(), ForestError>,
) -> Result<Contributions, ForestError> {
    let n_rows = x.nrows();
    let n_trees = n_trees as f64;
    let values = row_major(&x);
    let mut root_sum = 0.0;
    let mut flat = vec![0.0; n_rows * n_features];
    let mut sums = vec![0.0; n_rows];
    let task_rows = rows_per_task(n_rows, n_features, CONTRIBUTION_TASK_VALUES);
    let mut coded: Option<RowCodes> = None;
    for_each_group(&mut |_, group| {
        let roots = group.root_positive_fractions();
        root_sum = roots.iter().fold(root_sum, |sum, fraction| sum + fraction);
        if n_features == 0 {
            // No feature, so no split to credit (and no row width to chunk by): every tree
            // is a single leaf, its root.
            for sum in &mut sums {
                *sum = roots.iter().fold(*sum, |sum, fraction| sum + fraction);
            }
            return;
        }
        coded = group.code_rows(&values, coded.take());
        flat.par_chunks_mut(task_rows * n_features)
            .zip(sums.par_chunks_mut(task_rows))
            .enumerate()
            .for_each(|(task, (out, sums))| {
                // As in `mean_positive_probability`: each row's entries still receive their
                // additions in tree order, then path order, and its sum its leaves in
                // tree order.
                group.add_path_contributions(
                    TaskRows {
                        values: &values,
                        coded: coded.as_ref(),
                        first_row: task * task_rows,
                    },
                    out,
                    sums,
                );
            });
    })?;
    flat.iter_mut().for_each(|v| *v /= n_trees);
    // Divided as `mean_positive_probability` divides, so the two agree bit for bit.
    sums.iter_mut().for_each(|sum| *sum /= n_trees);
    let per_feature = Array2::from_shape_vec((n_rows, n_features), flat)
        .unwrap_or_else(|_| Array2::zeros((n_rows, n_features)));
    Ok(Contributions {
        bias: root_sum / n_trees,
        per_feature,
        probabilities: Array1::from(sums),
    })
}

/// Hard labels from positive-class probabilities: class 1 when strictly above 0.5 (a tie goes to
/// class 0, as scikit-learn's argmax).
fn labels_from_probabilities(probabilities: &Array1<f64>) -> Array1<usize> {
    probabilities.mapv(|p| usize::from(p > 0.5))
}

impl RandomForest {
    /// Fits a forest. `labels` are 0/1; `sample_weight` (finite, ≥ 0) multiplies each row's
    /// weight, as scikit-learn's `sample_weight`.
    pub fn fit(
        params: &ForestValidParams,
        x: ArrayView2<'_, f64>,
        labels: &[usize],
        sample_weight: Option<&[f64]>,
    ) -> Result<RandomForest, ForestError> {
        let data = check_data(x, labels, sample_weight)?;
        let rows = x.nrows();
        let draws = params.bootstrap.then(|| match params.max_samples {
            None => rows,
            Some(fraction) => ((rows as f64 * fraction).round() as usize).max(1),
        });
        let grown = grow_trees(&data, &params.tree, params.n_trees, draws, params.seed);
        let bin_edges = grown.bin_edges;
        let (trees, in_bag): (Vec<Tree>, Vec<Vec<bool>>) =
            grown.trees.into_iter().map(|g| (g.tree, g.in_bag)).unzip();
        let (oob_accuracy, oob_probabilities, training_probabilities) = if params.oob_score {
            let (oob, training) = oob_estimate(
                &trees,
                &in_bag,
                x,
                labels,
                FLAT_NODES_PER_GROUP,
                Some(Arc::new(ThresholdRanks::of_bin_edges(&bin_edges))),
            )?;
            // No row scored (too few trees) leaves the accuracy undefined: None, not NaN.
            (
                Some(oob.accuracy).filter(|a| !a.is_nan()),
                Some(oob.probabilities),
                Some(training),
            )
        } else {
            (None, None, None)
        };
        Ok(RandomForest {
            n_features: x.ncols(),
            n_classes: BINARY_CLASSES,
            feature_importances: feature_importances(&trees, x.ncols()),
            trees,
            oob_accuracy,
            oob_probabilities,
            training_probabilities,
            bin_edges: Some(bin_edges),
        })
    }

    /// The table of [`RandomForest::bin_edges`], when the forest was fitted in this process.
    fn bin_thresholds(&self) -> Option<Arc<ThresholdRanks>> {
        let edges = self.bin_edges.as_ref()?;
        (edges.len() == self.n_features).then(|| Arc::new(ThresholdRanks::of_bin_edges(edges)))
    }

    /// Positive-class probability per row: mean over trees of the leaf's class-1 fraction.
    pub fn predict_proba(&self, x: ArrayView2<'_, f64>) -> Result<Array1<f64>, ForestError> {
        check_width(&x, self.n_features)?;
        mean_positive_probability(
            &self.trees,
            self.n_features,
            x,
            FLAT_NODES_PER_GROUP,
            self.bin_thresholds(),
        )
    }

    /// 0/1 per row (1 when the probability is above 0.5). Named apart from linfa's
    /// `Predict::predict`, which stays callable as `model.predict(&x)`.
    pub fn predict_labels(&self, x: ArrayView2<'_, f64>) -> Result<Array1<usize>, ForestError> {
        Ok(labels_from_probabilities(&self.predict_proba(x)?))
    }

    /// Saabas contributions per row and feature (see [`Contributions`]).
    pub fn contributions(&self, x: ArrayView2<'_, f64>) -> Result<Contributions, ForestError> {
        check_width(&x, self.n_features)?;
        contributions_of(&self.trees, self.n_features, x, FLAT_NODES_PER_GROUP)
    }

    /// The forest laid out for contributions, in the groups [`RandomForest::contributions`]
    /// walks. Each group's stored trees are dropped once it is laid out, so the two are never
    /// both whole in memory (at 100M transaction lines: 0.7 GB laid out against 2.45 GB stored).
    pub fn into_contribution_layout(self) -> Result<ContributionLayout, ForestError> {
        self.into_contribution_layout_in_groups(FLAT_NODES_PER_GROUP)
    }

    /// [`RandomForest::into_contribution_layout`] in groups of at most `group_nodes` nodes (or
    /// a single larger tree).
    fn into_contribution_layout_in_groups(
        self,
        group_nodes: usize,
    ) -> Result<ContributionLayout, ForestError> {
        let (n_features, n_trees) = (self.n_features, self.trees.len());
        let mut groups = Vec::new();
        let mut known = None;
        let sizes = flat_group_sizes(&self.trees, group_nodes);
        let mut trees = self.trees.into_iter();
        let mut first = 0;
        for size in sizes {
            let group_trees: Vec<Tree> = trees.by_ref().take(size).collect();
            let group = FlatGroup::new(
                &group_trees,
                first,
                n_features,
                Purpose::Contributions,
                known,
            )?
            .into_owned();
            known = group.ranks();
            groups.push((first, group));
            first += group_trees.len();
        }
        // Walked block after block, so the groups get one table: each block's rows are then
        // coded once.
        let (first_trees, groups): (Vec<usize>, Vec<FlatGroup<'static>>) =
            groups.into_iter().unzip();
        Ok(ContributionLayout {
            n_features,
            n_trees,
            groups: first_trees
                .into_iter()
                .zip(FlatGroup::sharing_one_table(groups))
                .collect(),
        })
    }

    /// The OOB estimate, when the forest was fitted with `oob_score` in this process.
    pub fn oob(&self) -> Option<OobEstimate> {
        Some(OobEstimate {
            accuracy: self.oob_accuracy?,
            probabilities: self.oob_probabilities.clone()?,
        })
    }
}

/// OOB estimate from `trees` (in tree order) and `in_bag[tree][row]`, with the forest's
/// predictions of the rows `x` (its training rows), bit for bit [`RandomForest::predict_proba`]'s:
/// both from one walk of every row through every tree.
fn oob_estimate(
    trees: &[Tree],
    in_bag: &[Vec<bool>],
    x: ArrayView2<'_, f64>,
    labels: &[usize],
    group_nodes: usize,
    thresholds: Option<Arc<ThresholdRanks>>,
) -> Result<(OobEstimate, Vec<f64>), ForestError> {
    let n_features = x.ncols();
    let values = row_major(&x);
    let mut all_sums = vec![0.0; x.nrows()];
    let mut sums = vec![0.0; x.nrows()];
    let mut counts = vec![0usize; x.nrows()];
    let task_rows = rows_per_task(x.nrows(), n_features, PREDICT_TASK_VALUES);
    let mut coded: Option<RowCodes> = None;
    for_each_flat_group(
        trees,
        n_features,
        group_nodes,
        Purpose::Predictions,
        thresholds,
        |first_tree, group| {
            coded = group.code_rows(&values, coded.take());
            let in_bag = &in_bag[first_tree..];
            all_sums
                .par_chunks_mut(task_rows)
                .zip(sums.par_chunks_mut(task_rows))
                .zip(counts.par_chunks_mut(task_rows))
                .enumerate()
                .for_each(|(task, ((all_sums, sums), counts))| {
                    let first_row = task * task_rows;
                    let task_in_bag: Vec<&[bool]> = in_bag
                        .iter()
                        .map(|in_bag| &in_bag[first_row..first_row + sums.len()])
                        .collect();
                    // Each row sums its trees, and its out-of-bag trees, in tree order.
                    group.add_leaf_values_and_out_of_bag(
                        TaskRows {
                            values: &values,
                            coded: coded.as_ref(),
                            first_row,
                        },
                        &task_in_bag,
                        all_sums,
                        sums,
                        counts,
                    );
                });
        },
    )?;
    let probabilities: Vec<Option<f64>> = sums
        .iter()
        .zip(&counts)
        .map(|(&sum, &n)| (n > 0).then(|| sum / n as f64))
        .collect();
    let scored: Vec<(usize, f64)> = probabilities
        .iter()
        .zip(labels)
        .filter_map(|(p, &label)| p.map(|p| (label, p)))
        .collect();
    let correct = scored
        .iter()
        .filter(|(label, p)| usize::from(*p > 0.5) == *label)
        .count();
    let accuracy = if scored.is_empty() {
        f64::NAN
    } else {
        correct as f64 / scored.len() as f64
    };
    // Divided as `mean_positive_probability` divides, so the two agree bit for bit.
    all_sums
        .iter_mut()
        .for_each(|sum| *sum /= trees.len() as f64);
    Ok((
        OobEstimate {
            accuracy,
            probabilities,
        },
        all_sums,
    ))
}

impl DecisionTree {
    /// Fits one tree on every row (no bootstrap).
    pub fn fit(
        params: &DecisionTreeValidParams,
        x: ArrayView2<'_, f64>,
        labels: &[usize],
        sample_weight: Option<&[f64]>,
    ) -> Result<DecisionTree, ForestError> {
        let data = check_data(x, labels, sample_weight)?;
        let mut grown = grow_trees(&data, &params.tree, 1, None, params.seed).trees;
        // grow_trees returns exactly the one tree asked for.
        let tree = grown.pop().map(|g| g.tree).ok_or(ForestError::ZeroTrees)?;
        Ok(DecisionTree {
            n_features: x.ncols(),
            n_classes: BINARY_CLASSES,
            feature_importances: feature_importances(std::slice::from_ref(&tree), x.ncols()),
            tree,
        })
    }

    /// Positive-class probability per row: the leaf's class-1 fraction.
    pub fn predict_proba(&self, x: ArrayView2<'_, f64>) -> Result<Array1<f64>, ForestError> {
        check_width(&x, self.n_features)?;
        mean_positive_probability(
            std::slice::from_ref(&self.tree),
            self.n_features,
            x,
            FLAT_NODES_PER_GROUP,
            None,
        )
    }

    pub fn predict_labels(&self, x: ArrayView2<'_, f64>) -> Result<Array1<usize>, ForestError> {
        Ok(labels_from_probabilities(&self.predict_proba(x)?))
    }

    pub fn contributions(&self, x: ArrayView2<'_, f64>) -> Result<Contributions, ForestError> {
        check_width(&x, self.n_features)?;
        contributions_of(
            std::slice::from_ref(&self.tree),
            self.n_features,
            x,
            FLAT_NODES_PER_GROUP,
        )
    }
}

/// ROC AUC of `scores` against 0/1 `labels` (Mann–Whitney, ties counted half). `None` when a
/// class is absent or lengths differ.
pub fn roc_auc(labels: &[usize], scores: &[f64]) -> Option<f64> {
    if labels.len() != scores.len() {
        return None;
    }
    let mut order: Vec<usize> = (0..scores.len()).collect();
    order.sort_by(|&a, &b| scores[a].total_cmp(&scores[b]));
    let positives = labels.iter().filter(|&&l| l == POSITIVE_CLASS).count() as f64;
    let negatives = labels.len() as f64 - positives;
    if positives == 0.0 || negatives == 0.0 {
        return None;
    }
    // Sum of positive ranks, average rank for tied scores.
    let mut rank_sum = 0.0;
    let mut start = 0;
    while start < order.len() {
        let mut end = start;
        while end + 1 < order.len() && scores[order[end + 1]] == scores[order[start]] {
            end += 1;
        }
        let average_rank = (start + end) as f64 / 2.0 + 1.0;
        for &i in &order[start..=end] {
            if labels[i] == POSITIVE_CLASS {
                rank_sum += average_rank;
            }
        }
        start = end + 1;
    }
    Some((rank_sum - positives * (positives + 1.0) / 2.0) / (positives * negatives))
}

// --- linfa integration ---------------------------------------------------------------------

fn dataset_parts<D: Data<Elem = f64>, T: AsSingleTargets<Elem = usize>>(
    dataset: &DatasetBase<ArrayBase<D, Ix2>, T>,
) -> (Vec<usize>, Option<Vec<f64>>) {
    let labels = dataset.as_single_targets().to_vec();
    let weights = dataset
        .weights()
        .map(|w| w.iter().map(|&w| f64::from(w)).collect());
    (labels, weights)
}

impl<D: Data<Elem = f64>, T: AsSingleTargets<Elem = usize>> Fit<ArrayBase<D, Ix2>, T, ForestError>
    for ForestValidParams
{
    type Object = RandomForest;

    fn fit(
        &self,
        dataset: &DatasetBase<ArrayBase<D, Ix2>, T>,
    ) -> Result<RandomForest, ForestError> {
        let (labels, weights) = dataset_parts(dataset);
        RandomForest::fit(self, dataset.records.view(), &labels, weights.as_deref())
    }
}

impl<D: Data<Elem = f64>, T: AsSingleTargets<Elem = usize>> Fit<ArrayBase<D, Ix2>, T, ForestError>
    for DecisionTreeValidParams
{
    type Object = DecisionTree;

    fn fit(
        &self,
        dataset: &DatasetBase<ArrayBase<D, Ix2>, T>,
    ) -> Result<DecisionTree, ForestError> {
        let (labels, weights) = dataset_parts(dataset);
        DecisionTree::fit(self, dataset.records.view(), &labels, weights.as_deref())
    }
}

/// linfa's `PredictInplace` cannot return an error, so a records matrix of the wrong width
/// panics here with a clear message (as linfa's own models do on shape mismatch); use the
/// `Result`-returning inherent methods for untrusted input.
macro_rules! impl_linfa_predict {
    ($model:ty) => {
        impl<D: Data<Elem = f64>> PredictInplace<ArrayBase<D, Ix2>, Array1<f64>> for $model {
            /// Positive-class probabilities.
            fn predict_inplace(&self, x: &ArrayBase<D, Ix2>, y: &mut Array1<f64>) {
                match self.predict_proba(x.view()) {
                    Ok(p) => y.assign(&p),
                    Err(error) => panic!("{error}"),
                }
            }
            fn default_target(&self, x: &ArrayBase<D, Ix2>) -> Array1<f64> {
                Array1::zeros(x.nrows())
            }
        }

        impl<D: Data<Elem = f64>> PredictInplace<ArrayBase<D, Ix2>, Array1<usize>> for $model {
            /// Hard 0/1 labels.
            fn predict_inplace(&self, x: &ArrayBase<D, Ix2>, y: &mut Array1<usize>) {
                match self.predict_labels(x.view()) {
                    Ok(p) => y.assign(&p),
                    Err(error) => panic!("{error}"),
                }
            }
            fn default_target(&self, x: &ArrayBase<D, Ix2>) -> Array1<usize> {
                Array1::zeros(x.nrows())
            }
        }
    };
}

impl_linfa_predict!(RandomForest);
impl_linfa_predict!(DecisionTree);
