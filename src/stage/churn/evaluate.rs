//! What the churn stage writes to the `evaluation` table about a model on one split.
//!
//! | metric                                   | keys      | meaning                               |
//! |------------------------------------------|-----------|---------------------------------------|
//! | `customers`, `churners`                  |           | rows and positives of the split       |
//! | `roc_auc`, `pr_auc`, `log_loss`, `brier_score` |     | threshold-free quality                |
//! | `accuracy`, `balanced_accuracy`, `precision`, `recall`, `f1`, `true_positives`, `false_positives`, `true_negatives`, `false_negatives` |  | the decision at the model's threshold (split `train` records `threshold`) |
//! | `churn_rate`, `lift`, `cumulative_gain`  | `decile`  | 1 = the tenth at highest risk         |
//! | `mean_probability`, `observed_churn_rate`, `bin_customers` | `bin` | 10 uniform probability bins (calibration) |
//! | `roc_tpr`, `pr_precision` | `bin` | the ROC curve (TPR at FPR = bin/100) and the interpolated precision-recall curve (precision at recall = bin/100) |
//!
//! A metric a split cannot define (ROC AUC of a split with one class, say) is written with a
//! null value, not left out, so two runs list the same metrics.

use segflow_ml::metrics::{self, ConfusionMatrix, DEFAULT_CALIBRATION_BINS};

use crate::evaluation::{EvaluationRows, Keys};

/// Every metric of `scores` against `labels` for `model` on `split`, decisions at `threshold`.
pub fn model_on_split(rows: &mut EvaluationRows, model: &str, split: &str, labels: &[usize], scores: &[f64], threshold: f64) {
    let mut push = |metric: &str, keys: Keys, value: Option<f64>| rows.push(model, split, metric, keys, value);
    push("customers", Keys::default(), Some(labels.len() as f64));
    push("churners", Keys::default(), Some(labels.iter().sum::<usize>() as f64));
    push("roc_auc", Keys::default(), metrics::roc_auc(labels, scores).ok());
    push("pr_auc", Keys::default(), metrics::pr_auc(labels, scores).ok());
    push("log_loss", Keys::default(), metrics::log_loss(labels, scores).ok());
    push("brier_score", Keys::default(), metrics::brier_score(labels, scores).ok());

    // The decision metrics are keyed by nothing: the threshold moves between runs, and a
    // reviewer diffs `test.f1` with `test.f1`. The threshold itself is its own metric.
    let matrix = ConfusionMatrix::at_threshold(labels, scores, threshold).ok();
    let decisions: [(&str, fn(&ConfusionMatrix) -> f64); 9] = [
        ("accuracy", ConfusionMatrix::accuracy),
        ("balanced_accuracy", ConfusionMatrix::balanced_accuracy),
        ("precision", ConfusionMatrix::precision),
        ("recall", ConfusionMatrix::recall),
        ("f1", ConfusionMatrix::f1),
        ("true_positives", |m| m.tp as f64),
        ("false_positives", |m| m.fp as f64),
        ("true_negatives", |m| m.tn as f64),
        ("false_negatives", |m| m.fn_ as f64),
    ];
    for (metric, of) in decisions {
        push(metric, Keys::default(), matrix.as_ref().map(of));
    }

    let deciles = metrics::lift_by_decile(labels, scores).ok();
    for decile in 1..=metrics::DECILES {
        let row = deciles.as_ref().and_then(|d| d.iter().find(|r| r.decile == decile));
        let keys = Keys { decile: Some(decile as i64), ..Keys::default() };
        push("churn_rate", keys.clone(), row.map(|r| r.rate));
        push("lift", keys.clone(), row.map(|r| r.lift));
        push("cumulative_gain", keys, row.map(|r| r.cumulative_gain));
    }

    // The curves on a fixed grid, so that two runs' curves match point by point in a diff:
    // the true-positive rate at false-positive rate bin/100, and the (interpolated) precision
    // at recall bin/100.
    if let Ok(roc) = metrics::roc_curve(labels, scores) {
        for (bin, at) in grid() {
            // ROC is a step up and to the right: the best TPR reached by FPR `at`.
            let tpr = roc.fpr.iter().zip(&roc.tpr).filter(|(f, _)| **f <= at + 1e-12).map(|(_, t)| *t).fold(0.0, f64::max);
            push("roc_tpr", Keys { bin: Some(bin), ..Keys::default() }, Some(tpr));
        }
    }
    if let Ok(pr) = metrics::pr_curve(labels, scores) {
        for (bin, at) in grid() {
            // Interpolated precision: the best precision at this recall or more.
            let precision = pr.recall.iter().zip(&pr.precision).filter(|(r, _)| **r >= at - 1e-12).map(|(_, p)| *p).fold(0.0, f64::max);
            push("pr_precision", Keys { bin: Some(bin), ..Keys::default() }, Some(precision));
        }
    }

    let bins = metrics::calibration(labels, scores, DEFAULT_CALIBRATION_BINS).ok();
    for bin in 1..=DEFAULT_CALIBRATION_BINS {
        let row = bins.as_ref().and_then(|b| b.iter().find(|r| r.bin == bin));
        let keys = Keys { bin: Some(bin as i64), ..Keys::default() };
        push("mean_probability", keys.clone(), row.and_then(|r| r.mean_score));
        push("observed_churn_rate", keys.clone(), row.and_then(|r| r.positive_rate));
        push("bin_customers", keys, row.map(|r| r.customers as f64));
    }
}

/// Grid points of the curves: (bin, x) for x = 0, 0.01, …, 1.
fn grid() -> impl Iterator<Item = (i64, f64)> {
    (0..=CURVE_STEPS).map(|bin| (bin, bin as f64 / CURVE_STEPS as f64))
}

const CURVE_STEPS: i64 = 100;

/// Per-feature importances: `metric` with the `feature` key, plus `<metric>_std` when given.
pub fn importances(rows: &mut EvaluationRows, model: &str, split: &str, metric: &str, features: &[String], values: &[f64], spread: Option<&[f64]>) {
    for (i, feature) in features.iter().enumerate() {
        let keys = Keys { feature: Some(feature.clone()), ..Keys::default() };
        rows.push(model, split, metric, keys.clone(), values.get(i).copied());
        if let Some(spread) = spread {
            rows.push(model, split, &format!("{metric}_std"), keys, spread.get(i).copied());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_split_with_one_class_still_lists_every_metric_with_null_values() {
        let mut full = EvaluationRows::default();
        model_on_split(&mut full, "random_forest", "test", &[0, 1, 0, 1], &[0.1, 0.9, 0.4, 0.6], 0.5);
        let mut one_class = EvaluationRows::default();
        model_on_split(&mut one_class, "random_forest", "test", &[0, 0, 0], &[0.1, 0.2, 0.3], 0.5);
        // The curves need both classes (101 points each); everything else is listed whatever
        // the data.
        assert_eq!(full.len() - 2 * 101, one_class.len(), "the same metrics whatever the data");
        let batch = one_class.to_batch("r", "churn").unwrap();
        let values = batch.column_by_name("value").unwrap();
        assert!(values.null_count() > 0, "ROC AUC of one class is null");
    }
}
