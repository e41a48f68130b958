//! The `evaluation` table: every metric of a run in one long, documented schema.
//!
//! A stage that evaluates a model publishes `<stage>_evaluation`; the run then offers the
//! table `evaluation`, the union of them all in stage order, for an output to write. One
//! schema for every metric lets a warehouse job trend any of them with one query, and lets
//! `report diff` match metrics between runs by their keys.
//!
//! | column      | type    | meaning                                                        |
//! |-------------|---------|----------------------------------------------------------------|
//! | `run_id`    | string  | the run                                                        |
//! | `stage`     | string  | the stage that measured it                                     |
//! | `model`     | string  | `kmeans`, `gmm`, `random_forest`, …                            |
//! | `split`     | string  | `all`, `train`, `test`, …                                      |
//! | `metric`    | string  | `inertia`, `silhouette`, `roc_auc`, …                          |
//! | `k`         | int64   | key: number of segments (the k curve), else null               |
//! | `segment`   | int64   | key: segment id, else null                                     |
//! | `previous_segment` | int64 | key: the segment a customer came from (migration), else null |
//! | `decile`    | int64   | key: score decile, else null                                   |
//! | `bin`       | int64   | key: calibration bin, or curve grid point (x = bin/100), else null |
//! | `threshold` | float64 | key: decision threshold, else null                             |
//! | `feature`   | string  | key: feature name, else null                                   |
//! | `value`     | float64 | the measurement; null when undefined (silhouette at k = 1)    |

use std::sync::Arc;

use datafusion::arrow::array::{ArrayRef, Float64Builder, Int64Builder, RecordBatch, StringBuilder};
use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use datafusion::error::DataFusionError;
use datafusion::prelude::{DataFrame, SessionContext};

/// The schema's version, recorded in the table's manifests. 2: `previous_segment` added.
pub const SCHEMA_VERSION: u32 = 2;

/// The table name the run offers: the union of every stage's `<stage>_evaluation`.
pub const EVALUATION: &str = "evaluation";
/// The secondary result a stage names to contribute to it.
pub const PART: &str = "evaluation";

/// Whether `stage` publishes `<stage>_evaluation`, so the run offers `evaluation`.
pub fn contributes(stage: &dyn crate::stage::Stage) -> bool {
    stage.secondary_results().contains(&PART)
}

pub fn schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("run_id", DataType::Utf8, false),
        Field::new("stage", DataType::Utf8, false),
        Field::new("model", DataType::Utf8, false),
        Field::new("split", DataType::Utf8, false),
        Field::new("metric", DataType::Utf8, false),
        Field::new("k", DataType::Int64, true),
        Field::new("segment", DataType::Int64, true),
        Field::new("previous_segment", DataType::Int64, true),
        Field::new("decile", DataType::Int64, true),
        Field::new("bin", DataType::Int64, true),
        Field::new("threshold", DataType::Float64, true),
        Field::new("feature", DataType::Utf8, true),
        Field::new("value", DataType::Float64, true),
    ]))
}

/// The keys that say which instance of a metric a row holds.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Keys {
    pub k: Option<i64>,
    pub segment: Option<i64>,
    pub previous_segment: Option<i64>,
    pub decile: Option<i64>,
    pub bin: Option<i64>,
    pub threshold: Option<f64>,
    pub feature: Option<String>,
}

impl Keys {
    pub fn k(k: usize) -> Self {
        Keys { k: Some(k as i64), ..Keys::default() }
    }

    pub fn segment(segment: i64) -> Self {
        Keys { segment: Some(segment), ..Keys::default() }
    }

    pub fn feature(feature: &str) -> Self {
        Keys { feature: Some(feature.to_string()), ..Keys::default() }
    }

    pub fn threshold(threshold: f64) -> Self {
        Keys { threshold: Some(threshold), ..Keys::default() }
    }
}

#[derive(Debug, Clone, PartialEq)]
struct Row {
    model: String,
    split: String,
    metric: String,
    keys: Keys,
    /// `None` (null) when the metric is undefined; non-finite values are stored as null too.
    value: Option<f64>,
}

/// A stage's evaluation rows, in the order it measured them.
#[derive(Debug, Clone, Default)]
pub struct EvaluationRows {
    rows: Vec<Row>,
}

impl EvaluationRows {
    pub fn push(&mut self, model: &str, split: &str, metric: &str, keys: Keys, value: Option<f64>) {
        let value = value.filter(|v| v.is_finite());
        self.rows.push(Row { model: model.to_string(), split: split.to_string(), metric: metric.to_string(), keys, value });
    }

    pub fn len(&self) -> usize {
        self.rows.len()
    }

    pub fn is_empty(&self) -> bool {
        self.rows.is_empty()
    }

    pub fn to_batch(&self, run_id: &str, stage: &str) -> Result<RecordBatch, DataFusionError> {
        let n = self.rows.len();
        let mut run_ids = StringBuilder::new();
        let mut stages = StringBuilder::new();
        let mut models = StringBuilder::new();
        let mut splits = StringBuilder::new();
        let mut metrics = StringBuilder::new();
        let (mut ks, mut segments, mut deciles, mut bins) = (Int64Builder::with_capacity(n), Int64Builder::with_capacity(n), Int64Builder::with_capacity(n), Int64Builder::with_capacity(n));
        let mut previous_segments = Int64Builder::with_capacity(n);
        let mut thresholds = Float64Builder::with_capacity(n);
        let mut features = StringBuilder::new();
        let mut values = Float64Builder::with_capacity(n);
        for row in &self.rows {
            run_ids.append_value(run_id);
            stages.append_value(stage);
            models.append_value(&row.model);
            splits.append_value(&row.split);
            metrics.append_value(&row.metric);
            ks.append_option(row.keys.k);
            segments.append_option(row.keys.segment);
            previous_segments.append_option(row.keys.previous_segment);
            deciles.append_option(row.keys.decile);
            bins.append_option(row.keys.bin);
            thresholds.append_option(row.keys.threshold);
            features.append_option(row.keys.feature.as_deref());
            values.append_option(row.value);
        }
        let columns: Vec<ArrayRef> = vec![
            Arc::new(run_ids.finish()),
            Arc::new(stages.finish()),
            Arc::new(models.finish()),
            Arc::new(splits.finish()),
            Arc::new(metrics.finish()),
            Arc::new(ks.finish()),
            Arc::new(segments.finish()),
            Arc::new(previous_segments.finish()),
            Arc::new(deciles.finish()),
            Arc::new(bins.finish()),
            Arc::new(thresholds.finish()),
            Arc::new(features.finish()),
            Arc::new(values.finish()),
        ];
        Ok(RecordBatch::try_new(schema(), columns)?)
    }
}

/// The run's `evaluation` table: the union of the named `<stage>_evaluation` tables.
pub async fn union(session: &SessionContext, parts: &[String]) -> Result<DataFrame, DataFusionError> {
    let Some((first, rest)) = parts.split_first() else {
        return session.read_batch(RecordBatch::new_empty(schema()));
    };
    let mut frame = session.table(first.as_str()).await?;
    for part in rest {
        frame = frame.union(session.table(part.as_str()).await?)?;
    }
    Ok(frame)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rows_keep_their_keys_and_undefined_values_are_null() {
        let mut rows = EvaluationRows::default();
        rows.push("kmeans", "all", "inertia", Keys::k(3), Some(12.5));
        rows.push("kmeans", "all", "silhouette", Keys::k(1), None);
        rows.push("kmeans", "all", "silhouette", Keys::k(2), Some(f64::NAN));
        let batch = rows.to_batch("run-1", "segments").expect("batch");
        assert_eq!(batch.schema(), schema());
        assert_eq!(batch.num_rows(), 3);
        let values = batch.column_by_name("value").expect("value column");
        assert_eq!(values.null_count(), 2, "an undefined and a NaN value are both null");
        let ks = batch.column_by_name("k").expect("k column");
        assert_eq!(ks.null_count(), 0);
        assert_eq!(batch.column_by_name("segment").expect("segment column").null_count(), 3);
    }
}
