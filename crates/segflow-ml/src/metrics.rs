//! Evaluation of a binary classifier's probability scores: ranking (ROC, precision-recall),
//! probability quality (log loss, Brier, calibration), decisions at a threshold (confusion
//! matrix, threshold policies), marketing views (lift and gains by decile) and permutation
//! importance.
//!
//! Labels are 0 (negative) and 1 (positive); anything else is an error. Every function checks
//! its input (lengths, labels, scores finite, or in [0, 1] where a probability is needed) and
//! returns a [`MetricError`] whose message says which row and rule; nothing panics on input.
//!
//! # Conventions (and where they match scikit-learn)
//! - **Predicted positive means `score >= threshold`**, as in scikit-learn's `roc_curve` and
//!   `precision_recall_curve`. (The forest's `predict_labels` uses `p > 0.5`, scikit-learn's
//!   argmax rule, so `ConfusionMatrix` at 0.5 differs from it only for scores of exactly 0.5.)
//! - [`roc_auc`]: the Mann–Whitney statistic with tied scores counted half (average ranks) —
//!   the same value as scikit-learn's `roc_auc_score`. It is [`crate::forest::roc_auc`] with
//!   input checks and errors instead of `None`.
//! - [`roc_curve`]: scikit-learn's `roc_curve(drop_intermediate=False)`: one point per distinct
//!   score, thresholds decreasing, preceded by the point (0, 0) at threshold `+inf` (as
//!   scikit-learn ≥ 1.3; serde_json writes it as `null`).
//! - [`pr_curve`]: scikit-learn's `precision_recall_curve` (default `drop_intermediate=False`):
//!   thresholds **increasing**, and `precision`/`recall` one longer, ending with the point
//!   precision 1, recall 0 that has no threshold.
//! - [`pr_auc`] is **average precision**, scikit-learn's `average_precision_score`: the step sum
//!   `Σ (Rₙ − Rₙ₋₁) Pₙ` over thresholds in decreasing order — not the trapezoidal area under the
//!   PR curve, which is optimistic.
//! - [`log_loss`] clips probabilities to `[1e-15, 1 − 1e-15]` ([`LOG_LOSS_EPS`], the value of
//!   scikit-learn before 1.5; newer releases clip at machine epsilon, 2.2e-16, which only
//!   changes the loss of confidently wrong predictions). Natural logarithm, mean over rows.
//! - [`brier_score`]: mean of `(score − label)²`, scikit-learn's `brier_score_loss`.
//! - [`ConfusionMatrix`] rates that divide by zero are 0, as scikit-learn with
//!   `zero_division=0`; balanced accuracy is the mean recall over the classes present in the
//!   labels, as scikit-learn's `balanced_accuracy_score`.
//! - [`lift_by_decile`] and [`calibration`] follow no single scikit-learn function; their rules
//!   are documented on them.
//! - [`permutation_importance`]: scikit-learn's `permutation_importance(scoring="roc_auc")`
//!   (drop = baseline AUC − AUC with one column shuffled; standard deviation with `ddof = 0`).
//!
//! # Honest evaluation
//! Everything that is *chosen* — a threshold, a model, a number of trees — is chosen on the
//! training split and then measured, unchanged, on the test split. See [`choose_threshold`].

use std::cmp::Ordering;

use ndarray::{Array1, Array2, ArrayView2, Axis};
use rand::SeedableRng;
use rand::seq::SliceRandom;
use rand_chacha::ChaCha8Rng;
use rayon::prelude::*;
use serde::{Deserialize, Serialize};

/// Probabilities are clipped to `[LOG_LOSS_EPS, 1 − LOG_LOSS_EPS]` by [`log_loss`], so a
/// confidently wrong prediction costs at most `−ln(1e-15) ≈ 34.5` instead of infinity.
pub const LOG_LOSS_EPS: f64 = 1e-15;

/// Number of rows [`lift_by_decile`] returns.
pub const DECILES: usize = 10;

/// The usual number of bins for [`calibration`].
pub const DEFAULT_CALIBRATION_BINS: usize = 10;

/// Everything that can make a metric undefined or its input invalid, one variant per rule.
/// `metric` names the function's result in the message ("ROC AUC", "log loss", ...).
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum MetricError {
    #[error("{labels} labels but {scores} scores; every row needs one of each")]
    LengthMismatch { labels: usize, scores: usize },
    #[error("there are no rows to evaluate")]
    NoRows,
    #[error(
        "label {label} in row {row} is not binary; labels must be 0 (negative) or 1 (positive)"
    )]
    LabelNotBinary { row: usize, label: usize },
    #[error("every label is {label}: {metric} is undefined unless both classes 0 and 1 occur")]
    SingleClass { label: usize, metric: &'static str },
    #[error("no label is 1: {metric} is undefined without a positive row")]
    NoPositives { metric: &'static str },
    #[error("score {score} in row {row} is not a finite number")]
    NonFiniteScore { row: usize, score: f64 },
    #[error("score {score} in row {row} is outside [0, 1]; {metric} needs probabilities")]
    ScoreNotProbability {
        row: usize,
        score: f64,
        metric: &'static str,
    },
    #[error("a threshold must be a number, got {0}")]
    NanThreshold(f64),
    #[error("the target recall must be in (0, 1], got {0}")]
    TargetRecallOutOfRange(f64),
    #[error("calibration needs at least 1 bin, got 0")]
    ZeroBins,
    #[error("permutation importance needs at least 1 repeat, got 0")]
    ZeroRepeats,
    #[error("{rows} rows of features but {labels} labels")]
    FeatureRowMismatch { rows: usize, labels: usize },
    #[error("the model returned {found} scores for {expected} rows")]
    PredictionCountMismatch { expected: usize, found: usize },
}

// --- input checks ----------------------------------------------------------------------------

/// What a metric needs of its scores.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ScoreRule {
    /// Any finite number (rankings only compare scores).
    Finite,
    /// A probability: finite and in [0, 1].
    Probability,
}

#[derive(Debug, Clone, Copy)]
struct ClassCounts {
    positives: usize,
    negatives: usize,
}

fn check_inputs(
    labels: &[usize],
    scores: &[f64],
    rule: ScoreRule,
    metric: &'static str,
) -> Result<ClassCounts, MetricError> {
    if labels.len() != scores.len() {
        return Err(MetricError::LengthMismatch {
            labels: labels.len(),
            scores: scores.len(),
        });
    }
    if labels.is_empty() {
        return Err(MetricError::NoRows);
    }
    let mut positives = 0;
    for (row, &label) in labels.iter().enumerate() {
        match label {
            0 => {}
            1 => positives += 1,
            _ => return Err(MetricError::LabelNotBinary { row, label }),
        }
    }
    for (row, &score) in scores.iter().enumerate() {
        if !score.is_finite() {
            return Err(MetricError::NonFiniteScore { row, score });
        }
        if rule == ScoreRule::Probability && !(0.0..=1.0).contains(&score) {
            return Err(MetricError::ScoreNotProbability { row, score, metric });
        }
    }
    Ok(ClassCounts {
        positives,
        negatives: labels.len() - positives,
    })
}

fn require_both_classes(counts: ClassCounts, metric: &'static str) -> Result<(), MetricError> {
    match (counts.positives, counts.negatives) {
        (0, _) => Err(MetricError::SingleClass { label: 0, metric }),
        (_, 0) => Err(MetricError::SingleClass { label: 1, metric }),
        _ => Ok(()),
    }
}

fn require_positives(counts: ClassCounts, metric: &'static str) -> Result<(), MetricError> {
    if counts.positives == 0 {
        Err(MetricError::NoPositives { metric })
    } else {
        Ok(())
    }
}

/// Highest score first. Scores are checked finite, so `partial_cmp` always answers; unlike
/// `total_cmp` it treats −0.0 and 0.0 as the tie they are.
fn descending(a: f64, b: f64) -> Ordering {
    b.partial_cmp(&a).unwrap_or(Ordering::Equal)
}

/// The confusion counts at each distinct score, used as a threshold (`score >= threshold` is
/// predicted positive); highest threshold first.
#[derive(Debug, Clone, Copy)]
struct ThresholdStep {
    threshold: f64,
    true_positives: usize,
    false_positives: usize,
}

fn threshold_steps(labels: &[usize], scores: &[f64]) -> Vec<ThresholdStep> {
    let mut order: Vec<usize> = (0..scores.len()).collect();
    order.sort_by(|&a, &b| descending(scores[a], scores[b]));
    let mut steps = Vec::new();
    let (mut true_positives, mut false_positives) = (0, 0);
    for (position, &row) in order.iter().enumerate() {
        if labels[row] == 1 {
            true_positives += 1;
        } else {
            false_positives += 1;
        }
        let last_of_tie = order
            .get(position + 1)
            .is_none_or(|&next| scores[next] != scores[row]);
        if last_of_tie {
            steps.push(ThresholdStep {
                threshold: scores[row],
                true_positives,
                false_positives,
            });
        }
    }
    steps
}

// --- ranking ---------------------------------------------------------------------------------

/// Area under the ROC curve: the probability that a random positive scores above a random
/// negative, ties counting half (scikit-learn's `roc_auc_score`). Scores may be any finite
/// numbers. Errors when only one class is present.
pub fn roc_auc(labels: &[usize], scores: &[f64]) -> Result<f64, MetricError> {
    const METRIC: &str = "ROC AUC";
    let counts = check_inputs(labels, scores, ScoreRule::Finite, METRIC)?;
    require_both_classes(counts, METRIC)?;
    // The checks above are exactly the cases where the forest's version answers None.
    crate::forest::roc_auc(labels, scores).ok_or(MetricError::SingleClass {
        label: usize::from(counts.positives > 0),
        metric: METRIC,
    })
}

/// Points of the ROC curve (scikit-learn's `roc_curve(drop_intermediate=False)`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RocCurve {
    /// False-positive rate at each threshold, from 0 up to 1.
    pub fpr: Vec<f64>,
    /// True-positive rate (recall) at each threshold, from 0 up to 1.
    pub tpr: Vec<f64>,
    /// `+inf` (nothing predicted positive), then every distinct score, decreasing.
    pub thresholds: Vec<f64>,
}

/// The ROC curve: one point per distinct score plus the origin. Errors when only one class is
/// present.
pub fn roc_curve(labels: &[usize], scores: &[f64]) -> Result<RocCurve, MetricError> {
    const METRIC: &str = "the ROC curve";
    let counts = check_inputs(labels, scores, ScoreRule::Finite, METRIC)?;
    require_both_classes(counts, METRIC)?;
    let steps = threshold_steps(labels, scores);
    let mut curve = RocCurve {
        fpr: Vec::with_capacity(steps.len() + 1),
        tpr: Vec::with_capacity(steps.len() + 1),
        thresholds: Vec::with_capacity(steps.len() + 1),
    };
    curve.fpr.push(0.0);
    curve.tpr.push(0.0);
    curve.thresholds.push(f64::INFINITY);
    for step in steps {
        curve
            .fpr
            .push(step.false_positives as f64 / counts.negatives as f64);
        curve
            .tpr
            .push(step.true_positives as f64 / counts.positives as f64);
        curve.thresholds.push(step.threshold);
    }
    Ok(curve)
}

/// Points of the precision-recall curve, in scikit-learn's `precision_recall_curve` layout.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PrCurve {
    /// Precision at each threshold, then 1.0 for the final point (recall 0).
    pub precision: Vec<f64>,
    /// Recall at each threshold (decreasing), then 0.0.
    pub recall: Vec<f64>,
    /// Every distinct score, **increasing**; one shorter than `precision` and `recall`.
    pub thresholds: Vec<f64>,
}

/// The precision-recall curve. Errors when no label is 1 (recall is undefined); a sample with
/// positives only is fine (precision 1 everywhere).
pub fn pr_curve(labels: &[usize], scores: &[f64]) -> Result<PrCurve, MetricError> {
    const METRIC: &str = "the precision-recall curve";
    let counts = check_inputs(labels, scores, ScoreRule::Finite, METRIC)?;
    require_positives(counts, METRIC)?;
    let steps = threshold_steps(labels, scores);
    let mut curve = PrCurve {
        precision: Vec::with_capacity(steps.len() + 1),
        recall: Vec::with_capacity(steps.len() + 1),
        thresholds: Vec::with_capacity(steps.len()),
    };
    for step in steps.iter().rev() {
        curve.precision.push(step_precision(step));
        curve
            .recall
            .push(step.true_positives as f64 / counts.positives as f64);
        curve.thresholds.push(step.threshold);
    }
    curve.precision.push(1.0);
    curve.recall.push(0.0);
    Ok(curve)
}

/// Precision at a step; every step predicts at least one row positive, so it is defined.
fn step_precision(step: &ThresholdStep) -> f64 {
    step.true_positives as f64 / (step.true_positives + step.false_positives) as f64
}

/// Average precision (scikit-learn's `average_precision_score`): `Σ (Rₙ − Rₙ₋₁) Pₙ` over the
/// distinct scores taken as thresholds in decreasing order, with `R₀ = 0`. Step-wise, not
/// trapezoidal. Errors when no label is 1.
pub fn pr_auc(labels: &[usize], scores: &[f64]) -> Result<f64, MetricError> {
    const METRIC: &str = "average precision";
    let counts = check_inputs(labels, scores, ScoreRule::Finite, METRIC)?;
    require_positives(counts, METRIC)?;
    let mut area = 0.0;
    let mut previous_true_positives = 0;
    for step in threshold_steps(labels, scores) {
        let recall_gain =
            (step.true_positives - previous_true_positives) as f64 / counts.positives as f64;
        area += recall_gain * step_precision(&step);
        previous_true_positives = step.true_positives;
    }
    Ok(area)
}

// --- probability quality ---------------------------------------------------------------------

/// Mean negative log-likelihood (natural log) of the labels under the probabilities, each
/// clipped to `[LOG_LOSS_EPS, 1 − LOG_LOSS_EPS]` first (see the module docs). Scores must be in
/// [0, 1]; a single class is fine.
pub fn log_loss(labels: &[usize], scores: &[f64]) -> Result<f64, MetricError> {
    check_inputs(labels, scores, ScoreRule::Probability, "log loss")?;
    let total: f64 = labels
        .iter()
        .zip(scores)
        .map(|(&label, &p)| {
            let p = p.clamp(LOG_LOSS_EPS, 1.0 - LOG_LOSS_EPS);
            if label == 1 { -p.ln() } else { -(1.0 - p).ln() }
        })
        .sum();
    Ok(total / labels.len() as f64)
}

/// Mean squared difference between probability and label (scikit-learn's
/// `brier_score_loss`). Scores must be in [0, 1]; a single class is fine.
pub fn brier_score(labels: &[usize], scores: &[f64]) -> Result<f64, MetricError> {
    check_inputs(labels, scores, ScoreRule::Probability, "the Brier score")?;
    let total: f64 = labels
        .iter()
        .zip(scores)
        .map(|(&label, &p)| (p - label as f64).powi(2))
        .sum();
    Ok(total / labels.len() as f64)
}

// --- decisions at a threshold ----------------------------------------------------------------

/// Counts of a 0/1 decision against the labels. Every rate that would divide by zero is 0
/// (scikit-learn's `zero_division=0`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConfusionMatrix {
    pub tp: usize,
    pub fp: usize,
    pub tn: usize,
    #[serde(rename = "fn")]
    pub fn_: usize,
}

/// `numerator / denominator`, or 0 when the denominator is 0.
fn ratio(numerator: usize, denominator: usize) -> f64 {
    if denominator == 0 {
        0.0
    } else {
        numerator as f64 / denominator as f64
    }
}

impl ConfusionMatrix {
    /// The decision `score >= threshold` against the labels. Scores may be any finite numbers;
    /// the threshold may be infinite (`+inf` predicts nothing positive) but not NaN.
    pub fn at_threshold(
        labels: &[usize],
        scores: &[f64],
        threshold: f64,
    ) -> Result<ConfusionMatrix, MetricError> {
        if threshold.is_nan() {
            return Err(MetricError::NanThreshold(threshold));
        }
        check_inputs(labels, scores, ScoreRule::Finite, "a confusion matrix")?;
        let mut matrix = ConfusionMatrix {
            tp: 0,
            fp: 0,
            tn: 0,
            fn_: 0,
        };
        for (&label, &score) in labels.iter().zip(scores) {
            match (label == 1, score >= threshold) {
                (true, true) => matrix.tp += 1,
                (false, true) => matrix.fp += 1,
                (false, false) => matrix.tn += 1,
                (true, false) => matrix.fn_ += 1,
            }
        }
        Ok(matrix)
    }

    pub fn total(&self) -> usize {
        self.tp + self.fp + self.tn + self.fn_
    }

    /// `(tp + tn) / total`.
    pub fn accuracy(&self) -> f64 {
        ratio(self.tp + self.tn, self.total())
    }

    /// `tp / (tp + fp)`; 0 when nothing is predicted positive.
    pub fn precision(&self) -> f64 {
        ratio(self.tp, self.tp + self.fp)
    }

    /// `tp / (tp + fn)` (sensitivity, true-positive rate); 0 without positives.
    pub fn recall(&self) -> f64 {
        ratio(self.tp, self.tp + self.fn_)
    }

    /// `tn / (tn + fp)` (true-negative rate); 0 without negatives.
    pub fn specificity(&self) -> f64 {
        ratio(self.tn, self.tn + self.fp)
    }

    /// `2 tp / (2 tp + fp + fn)`, the harmonic mean of precision and recall; 0 when
    /// `tp + fp + fn = 0`.
    pub fn f1(&self) -> f64 {
        ratio(2 * self.tp, 2 * self.tp + self.fp + self.fn_)
    }

    /// Mean of recall and specificity over the classes present in the labels (one class
    /// present: that class's rate alone; no rows: 0), as scikit-learn's
    /// `balanced_accuracy_score`.
    pub fn balanced_accuracy(&self) -> f64 {
        let mut rates = Vec::with_capacity(2);
        if self.tp + self.fn_ > 0 {
            rates.push(self.recall());
        }
        if self.tn + self.fp > 0 {
            rates.push(self.specificity());
        }
        if rates.is_empty() {
            0.0
        } else {
            rates.iter().sum::<f64>() / rates.len() as f64
        }
    }
}

/// How the decision threshold is chosen (a row is predicted positive when
/// `score >= threshold`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum ThresholdPolicy {
    /// This threshold, whatever the data.
    Fixed(f64),
    /// The distinct score that maximises F1; among equal F1, the highest such score.
    MaxF1,
    /// The highest distinct score whose recall is at least this (in (0, 1]): the smallest
    /// positive set that still catches that share of the positives.
    TargetRecall(f64),
}

/// Chooses a threshold by `policy` from `labels` and `scores`.
///
/// **Call it on the training split's scores**, then apply the threshold unchanged to the test
/// split: a threshold chosen on the test split has seen the test labels, and the test metrics
/// at that threshold would be optimistic, i.e. dishonest. Prefer out-of-sample training scores
/// (the forest's out-of-bag probabilities, or scores from [`crate::split::stratified_k_fold`])
/// to in-sample ones: a forest scores its own training rows almost perfectly, which would push
/// the chosen threshold too high.
///
/// `MaxF1` and `TargetRecall` return one of the scores (so every threshold they consider is a
/// point of [`roc_curve`] and [`pr_curve`]) and need at least one positive label.
pub fn choose_threshold(
    policy: ThresholdPolicy,
    labels: &[usize],
    scores: &[f64],
) -> Result<f64, MetricError> {
    match policy {
        ThresholdPolicy::Fixed(threshold) => {
            if threshold.is_nan() {
                return Err(MetricError::NanThreshold(threshold));
            }
            check_inputs(labels, scores, ScoreRule::Finite, "a threshold")?;
            Ok(threshold)
        }
        ThresholdPolicy::MaxF1 => {
            const METRIC: &str = "the MaxF1 threshold policy";
            let counts = check_inputs(labels, scores, ScoreRule::Finite, METRIC)?;
            require_positives(counts, METRIC)?;
            let mut best: Option<(f64, f64)> = None;
            // Highest threshold first, replaced only by a strictly better F1, so ties keep the
            // higher threshold. F1 = 2tp / (2tp + fp + fn) with fn = positives − tp; integer
            // ratios are correctly rounded, so equal F1 values compare equal.
            for step in threshold_steps(labels, scores) {
                let f1 = ratio(
                    2 * step.true_positives,
                    step.true_positives + step.false_positives + counts.positives,
                );
                if best.is_none_or(|(_, best_f1)| f1 > best_f1) {
                    best = Some((step.threshold, f1));
                }
            }
            best.map(|(threshold, _)| threshold)
                .ok_or(MetricError::NoRows)
        }
        ThresholdPolicy::TargetRecall(target) => {
            const METRIC: &str = "the TargetRecall threshold policy";
            if !(target > 0.0 && target <= 1.0) {
                return Err(MetricError::TargetRecallOutOfRange(target));
            }
            let counts = check_inputs(labels, scores, ScoreRule::Finite, METRIC)?;
            require_positives(counts, METRIC)?;
            // Recall only grows as the threshold falls and reaches 1 at the lowest score, so
            // the first step that reaches the target is the highest such threshold.
            threshold_steps(labels, scores)
                .into_iter()
                .find(|step| ratio(step.true_positives, counts.positives) >= target)
                .map(|step| step.threshold)
                .ok_or(MetricError::NoPositives { metric: METRIC })
        }
    }
}

// --- lift and calibration --------------------------------------------------------------------

/// One decile of a lift / cumulative-gains table.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DecileRow {
    /// 1 = the tenth of rows with the highest scores, 10 = the lowest.
    pub decile: usize,
    pub customers: usize,
    pub positives: usize,
    /// `positives / customers` (0 for an empty decile).
    pub rate: f64,
    /// `rate` / the overall positive rate.
    pub lift: f64,
    /// Share of all positives in this and the higher deciles; 1.0 at decile 10.
    pub cumulative_gain: f64,
}

/// Lift and cumulative gains by decile of score.
///
/// Rows are ranked by score, highest first, ties by row index (so the table is deterministic
/// even when tied scores straddle a decile boundary), and cut into [`DECILES`] consecutive
/// groups by numpy's `array_split` rule: with `n = 10q + r`, the first `r` deciles hold `q + 1`
/// rows and the others `q` (fewer than 10 rows leave the last deciles empty, with rate and
/// lift 0). Errors when no label is 1 (lift and gains divide by the positives).
pub fn lift_by_decile(labels: &[usize], scores: &[f64]) -> Result<Vec<DecileRow>, MetricError> {
    const METRIC: &str = "lift by decile";
    let counts = check_inputs(labels, scores, ScoreRule::Finite, METRIC)?;
    require_positives(counts, METRIC)?;
    let rows = labels.len();
    let mut order: Vec<usize> = (0..rows).collect();
    order.sort_by(|&a, &b| descending(scores[a], scores[b]).then(a.cmp(&b)));
    let overall_rate = ratio(counts.positives, rows);
    let (base_size, larger_deciles) = (rows / DECILES, rows % DECILES);
    let mut table = Vec::with_capacity(DECILES);
    let mut start = 0;
    let mut captured = 0;
    for decile in 0..DECILES {
        let size = base_size + usize::from(decile < larger_deciles);
        let positives = order[start..start + size]
            .iter()
            .filter(|&&row| labels[row] == 1)
            .count();
        start += size;
        captured += positives;
        let rate = ratio(positives, size);
        table.push(DecileRow {
            decile: decile + 1,
            customers: size,
            positives,
            rate,
            lift: rate / overall_rate,
            cumulative_gain: ratio(captured, counts.positives),
        });
    }
    Ok(table)
}

/// One bin of a reliability (calibration) table.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CalibrationBin {
    /// 1-based: bin 1 starts at 0.
    pub bin: usize,
    /// Scores `>= lower` and `< upper` fall in the bin (`<= upper` for the last bin).
    pub lower: f64,
    pub upper: f64,
    pub customers: usize,
    /// Mean score of the bin's rows; `None` for an empty bin (plotting it at 0 would lie).
    pub mean_score: Option<f64>,
    /// Share of the bin's rows with label 1; `None` for an empty bin.
    pub positive_rate: Option<f64>,
}

/// The edge between bin `index - 1` and bin `index` (0-based) of `bins` uniform bins.
fn bin_edge(index: usize, bins: usize) -> f64 {
    index as f64 / bins as f64
}

/// 0-based bin of a probability: the number of interior edges `<= score`, so that assignment
/// agrees bit for bit with the `lower`/`upper` reported.
fn bin_of(score: f64, bins: usize) -> usize {
    let mut bin = ((score * bins as f64) as usize).min(bins - 1);
    while bin + 1 < bins && bin_edge(bin + 1, bins) <= score {
        bin += 1;
    }
    while bin > 0 && bin_edge(bin, bins) > score {
        bin -= 1;
    }
    bin
}

/// Calibration table: `bins` uniform bins on [0, 1] with edges `i / bins`, each half-open
/// `[lower, upper)` except the last, which is closed `[lower, 1]` (numpy's `histogram` rule).
/// Every bin is returned, empty ones included. Scores must be probabilities.
///
/// The non-empty bins' `mean_score` and `positive_rate` are scikit-learn's
/// `calibration_curve(strategy="uniform")` `prob_pred` and `prob_true`, except for a score lying
/// exactly on an interior edge: scikit-learn (≥ 1.5) puts it in the lower bin, we in the upper.
/// The usual `bins` is [`DEFAULT_CALIBRATION_BINS`].
pub fn calibration(
    labels: &[usize],
    scores: &[f64],
    bins: usize,
) -> Result<Vec<CalibrationBin>, MetricError> {
    if bins == 0 {
        return Err(MetricError::ZeroBins);
    }
    check_inputs(labels, scores, ScoreRule::Probability, "calibration")?;
    let mut customers = vec![0usize; bins];
    let mut score_sums = vec![0.0; bins];
    let mut positives = vec![0usize; bins];
    for (&label, &score) in labels.iter().zip(scores) {
        let bin = bin_of(score, bins);
        customers[bin] += 1;
        score_sums[bin] += score;
        positives[bin] += label;
    }
    Ok((0..bins)
        .map(|bin| {
            let count = customers[bin];
            CalibrationBin {
                bin: bin + 1,
                lower: bin_edge(bin, bins),
                upper: bin_edge(bin + 1, bins),
                customers: count,
                mean_score: (count > 0).then(|| score_sums[bin] / count as f64),
                positive_rate: (count > 0).then(|| ratio(positives[bin], count)),
            }
        })
        .collect())
}

// --- permutation importance ------------------------------------------------------------------

/// How much ROC AUC drops when one column is shuffled.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Importance {
    /// Mean over repeats of `baseline AUC − AUC with the column shuffled`; about 0 for a column
    /// the model ignores, negative when shuffling happened to help.
    pub mean_drop: f64,
    /// Population standard deviation (`ddof = 0`) of the drops over repeats.
    pub std_drop: f64,
}

/// Rows predicted together in [`permutation_importance`]: the repeats of one column, stacked.
const PERMUTATION_BATCH_ROWS: usize = 65_536;

/// The random stream of one (column, repeat) shuffle: column in the high 32 bits, repeat in
/// the low ones.
fn shuffle_stream(column: usize, repeat: usize) -> u64 {
    ((column as u64) << 32) | (repeat as u64 & 0xFFFF_FFFF)
}

/// Permutation importance with ROC AUC as the score, one [`Importance`] per column of `x`
/// (scikit-learn's `permutation_importance(scoring="roc_auc")`).
///
/// `predict` maps a feature matrix to one score per row. Each column is shuffled `n_repeats`
/// times; the shuffle of (column `j`, repeat `r`) draws from `ChaCha8Rng::seed_from_u64(seed)`
/// set to stream `j · 2³² + r`, so every shuffle depends only on the seed, the column and the
/// repeat: the result is the same whatever the thread count or the order in which columns are
/// processed (given a deterministic `predict`). Columns run in parallel, each on its own copies
/// of `x`; a column's repeats are stacked into one call of `predict` (up to 65,536 rows), so
/// `predict` must score each row on its own.
///
/// Use held-out rows (the test split): on training rows, importance measures what the model
/// memorised.
pub fn permutation_importance<F>(
    predict: F,
    x: ArrayView2<'_, f64>,
    labels: &[usize],
    n_repeats: usize,
    seed: u64,
) -> Result<Vec<Importance>, MetricError>
where
    F: Fn(ArrayView2<'_, f64>) -> Vec<f64> + Sync,
{
    if n_repeats == 0 {
        return Err(MetricError::ZeroRepeats);
    }
    if x.nrows() != labels.len() {
        return Err(MetricError::FeatureRowMismatch {
            rows: x.nrows(),
            labels: labels.len(),
        });
    }
    let score = |features: ArrayView2<'_, f64>| -> Result<f64, MetricError> {
        let scores = predict(features);
        if scores.len() != features.nrows() {
            return Err(MetricError::PredictionCountMismatch {
                expected: features.nrows(),
                found: scores.len(),
            });
        }
        roc_auc(labels, &scores)
    };
    let baseline = score(x)?;
    let rows = x.nrows();
    // The repeats of a column are predicted together, stacked, as many as fit in
    // PERMUTATION_BATCH_ROWS: a forest's prediction has a fixed cost per call (it lays its trees
    // out for walking), which 10,000 rows did not amortise. Rows are predicted independently,
    // so the scores are the same as one call per repeat.
    let repeats_per_call = (PERMUTATION_BATCH_ROWS / rows.max(1)).clamp(1, n_repeats);
    let per_column: Vec<Result<Importance, MetricError>> = (0..x.ncols())
        .into_par_iter()
        .map(|column| {
            let original = x.column(column);
            let mut drops = Vec::with_capacity(n_repeats);
            let mut first_repeat = 0;
            while first_repeat < n_repeats {
                let batch = repeats_per_call.min(n_repeats - first_repeat);
                let mut shuffled = Array2::zeros((batch * rows, x.ncols()));
                for (offset, mut block) in shuffled
                    .axis_chunks_iter_mut(Axis(0), rows.max(1))
                    .enumerate()
                    .take(batch)
                {
                    block.assign(&x);
                    let mut rng = ChaCha8Rng::seed_from_u64(seed);
                    rng.set_stream(shuffle_stream(column, first_repeat + offset));
                    let mut values = original.to_vec();
                    values.shuffle(&mut rng);
                    block.column_mut(column).assign(&Array1::from(values));
                }
                let scores = predict(shuffled.view());
                if scores.len() != shuffled.nrows() {
                    return Err(MetricError::PredictionCountMismatch {
                        expected: shuffled.nrows(),
                        found: scores.len(),
                    });
                }
                for repeat_scores in scores.chunks(rows.max(1)).take(batch) {
                    drops.push(baseline - roc_auc(labels, repeat_scores)?);
                }
                first_repeat += batch;
            }
            let mean = drops.iter().sum::<f64>() / n_repeats as f64;
            let variance = drops.iter().map(|d| (d - mean).powi(2)).sum::<f64>() / n_repeats as f64;
            Ok(Importance {
                mean_drop: mean,
                std_drop: variance.sqrt(),
            })
        })
        .collect();
    // The first failing column in column order, so the error is deterministic too.
    per_column.into_iter().collect()
}

#[cfg(test)]
mod tests;
