//! The saved churn model and what scoring a customer means: a probability, a risk decile, a
//! decision at the model's threshold, and the features that moved the probability most.
//!
//! A run of stage `S` on run date `D` commits `<output_root>/models/S/run_date=D/model.json`:
//! [`ChurnModel`], format `segflow.churn_model` version 1 — the fitted preparation (imputation
//! and one-hot levels, learnt on the training split only), the forest (every tree's nodes),
//! the decision threshold and how it was chosen, and how the label was defined. Plain JSON,
//! floats in their shortest exact form, no timestamps: the same input and seed give the same
//! bytes, and a loaded model scores exactly as the run did. `segflow score` applies it.

use std::path::Path;
use std::sync::Arc;

use datafusion::arrow::array::{ArrayRef, BooleanBuilder, Float64Builder, Int32Builder, RecordBatch, StringBuilder};
use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use ndarray::ArrayView2;
use serde::{Deserialize, Serialize};

use segflow_ml::forest::RandomForest;
use segflow_ml::metrics::DECILES;
use segflow_ml::prep::Preparation;

pub const MODEL_FILE: &str = "model.json";
pub const FORMAT: &str = "segflow.churn_model";
pub const FORMAT_VERSION: u32 = 1;

/// How the decision threshold was chosen, as saved.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "policy", rename_all = "snake_case", deny_unknown_fields)]
pub enum ThresholdRecord {
    Fixed { value: f64 },
    MaxF1 { chosen_on: String },
    TargetRecall { recall: f64, chosen_on: String },
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ChurnModel {
    pub format: String,
    pub format_version: u32,
    pub stage: String,
    pub run_id: String,
    pub run_date: String,
    /// The customer id column new data must have.
    pub id_column: String,
    /// What "churned" meant when the model was trained, in words.
    pub label: String,
    pub preparation: Preparation,
    /// The prepared column each forest feature index reads (one-hot columns as `name=level`).
    pub prepared_features: Vec<String>,
    pub forest: RandomForest,
    /// A customer is predicted to churn when its probability is at least this.
    pub threshold: f64,
    pub threshold_policy: ThresholdRecord,
    /// How many contributing features each score names.
    pub explain: usize,
    pub training_customers: u64,
    pub training_churn_rate: f64,
}

impl ChurnModel {
    pub fn to_json(&self) -> Result<Vec<u8>, String> {
        let mut bytes = serde_json::to_vec_pretty(self).map_err(|e| format!("cannot write the churn model: {e}"))?;
        bytes.push(b'\n');
        Ok(bytes)
    }

    /// Reads and checks a saved model (its folder or its `model.json`); the message names the
    /// file and what is wrong.
    pub fn load(path: &Path) -> Result<ChurnModel, String> {
        let file = if path.is_dir() { path.join(MODEL_FILE) } else { path.to_path_buf() };
        let shown = file.display();
        let text = std::fs::read_to_string(&file).map_err(|e| format!("cannot read the churn model {shown}: {e}"))?;
        // The format is checked before the rest, so a file of another kind is named as such.
        let header: serde_json::Value = serde_json::from_str(&text).map_err(|e| format!("{shown}: not a JSON model file: {e}"))?;
        let format = header.get("format").and_then(|f| f.as_str()).unwrap_or("");
        if format != FORMAT {
            return Err(format!("{shown}: not a churn model (format `{format}`, expected `{FORMAT}`)"));
        }
        let version = header.get("format_version").and_then(|v| v.as_u64()).unwrap_or(0);
        if version != u64::from(FORMAT_VERSION) {
            return Err(format!("{shown}: churn model format version {version}; this segflow reads version {FORMAT_VERSION}"));
        }
        let model: ChurnModel = serde_json::from_str(&text).map_err(|e| format!("{shown}: {e}"))?;
        model.check().map_err(|e| format!("{shown}: {e}"))?;
        Ok(model)
    }

    fn check(&self) -> Result<(), String> {
        let width = self.preparation.output_names().len();
        if self.prepared_features.len() != width || self.forest.n_features != width {
            return Err(format!(
                "the preparation makes {width} columns, but the model lists {} and its forest reads {}",
                self.prepared_features.len(),
                self.forest.n_features
            ));
        }
        if self.forest.trees.is_empty() {
            return Err("the forest has no trees".to_string());
        }
        if !(0.0..=1.0).contains(&self.threshold) {
            return Err(format!("threshold {} is not a probability", self.threshold));
        }
        Ok(())
    }

    /// Scores prepared rows: probability, decile, decision and explanation for each.
    pub fn score(&self, x: ArrayView2<'_, f64>) -> Result<Vec<Score>, String> {
        let probabilities = self.forest.predict_proba(x).map_err(|e| e.to_string())?;
        let contributions = self.forest.contributions(x).map_err(|e| e.to_string())?;
        let groups = feature_groups(&self.preparation);
        let names: Vec<&str> = self.preparation.features().iter().map(|f| f.name()).collect();
        let deciles = risk_deciles(probabilities.as_slice().unwrap_or(&probabilities.to_vec()));
        Ok((0..x.nrows())
            .map(|row| {
                let mut per_feature = vec![0.0; names.len()];
                for (column, &feature) in groups.iter().enumerate() {
                    per_feature[feature] += contributions.per_feature[[row, column]];
                }
                Score {
                    probability: probabilities[row],
                    decile: deciles[row],
                    predicted: probabilities[row] >= self.threshold,
                    top: top_contributions(&per_feature, self.explain).into_iter().map(|(f, c)| (names[f].to_string(), c)).collect(),
                }
            })
            .collect())
    }
}

/// One scored customer.
#[derive(Debug, Clone, PartialEq)]
pub struct Score {
    pub probability: f64,
    /// 1 = the tenth of customers at highest risk.
    pub decile: u8,
    pub predicted: bool,
    /// (feature, contribution to the probability), largest |contribution| first.
    pub top: Vec<(String, f64)>,
}

/// For each prepared column, the index of the declared feature it comes from (a one-hot
/// feature's columns all map to it), so contributions add up per feature a person declared.
pub fn feature_groups(preparation: &Preparation) -> Vec<usize> {
    preparation.features().iter().enumerate().flat_map(|(i, f)| std::iter::repeat_n(i, f.width())).collect()
}

/// The `n` largest contributions by absolute value, ties by feature order; zeros are left out
/// (a feature no split on the path used explains nothing).
pub fn top_contributions(per_feature: &[f64], n: usize) -> Vec<(usize, f64)> {
    let mut order: Vec<usize> = (0..per_feature.len()).filter(|&f| per_feature[f] != 0.0).collect();
    order.sort_by(|&a, &b| per_feature[b].abs().total_cmp(&per_feature[a].abs()).then(a.cmp(&b)));
    order.into_iter().take(n).map(|f| (f, per_feature[f])).collect()
}

/// Risk deciles: customers ranked by probability, highest first (ties by row order), cut into
/// ten groups by the same rule as the lift table (`n = 10q + r`: the first `r` deciles get
/// `q + 1` customers), so decile 1 here is decile 1 there.
pub fn risk_deciles(probabilities: &[f64]) -> Vec<u8> {
    let n = probabilities.len();
    let mut order: Vec<usize> = (0..n).collect();
    order.sort_by(|&a, &b| probabilities[b].total_cmp(&probabilities[a]).then(a.cmp(&b)));
    let (q, r) = (n / DECILES, n % DECILES);
    let mut deciles = vec![0u8; n];
    let mut rank = 0;
    for decile in 0..DECILES {
        let size = q + usize::from(decile < r);
        for &row in &order[rank..rank + size] {
            deciles[row] = decile as u8 + 1;
        }
        rank += size;
    }
    deciles
}

/// The per-customer table's schema: a contract downstream jobs read (see the README).
pub fn scores_schema(id_column: &str, id_type: &DataType, explain: usize) -> SchemaRef {
    let mut fields = vec![
        Field::new(id_column, id_type.clone(), false),
        Field::new("split", DataType::Utf8, false),
        Field::new("churn_probability", DataType::Float64, false),
        Field::new("risk_decile", DataType::Int32, false),
        Field::new("predicted_churn", DataType::Boolean, false),
        Field::new("churned", DataType::Boolean, true),
    ];
    for i in 1..=explain {
        fields.push(Field::new(format!("top_feature_{i}"), DataType::Utf8, true));
        fields.push(Field::new(format!("top_contribution_{i}"), DataType::Float64, true));
    }
    Arc::new(Schema::new(fields))
}

/// One row per scored customer. `splits` says which side of the split each row was on
/// (`train`, `test`, or `score` for customers the model did not see); `labels` the observed
/// label where there is one.
pub fn scores_batch(id_column: &str, ids: &ArrayRef, splits: &[&str], labels: &[Option<bool>], scores: &[Score], explain: usize) -> Result<RecordBatch, datafusion::arrow::error::ArrowError> {
    let n = scores.len();
    let mut split = StringBuilder::new();
    let mut probability = Float64Builder::with_capacity(n);
    let mut decile = Int32Builder::with_capacity(n);
    let mut predicted = BooleanBuilder::with_capacity(n);
    let mut churned = BooleanBuilder::with_capacity(n);
    let mut features: Vec<(StringBuilder, Float64Builder)> = (0..explain).map(|_| (StringBuilder::new(), Float64Builder::new())).collect();
    for (row, score) in scores.iter().enumerate() {
        split.append_value(splits[row]);
        probability.append_value(score.probability);
        decile.append_value(i32::from(score.decile));
        predicted.append_value(score.predicted);
        churned.append_option(labels.get(row).copied().flatten());
        for (i, (name, value)) in features.iter_mut().enumerate() {
            match score.top.get(i) {
                Some((feature, contribution)) => {
                    name.append_value(feature);
                    value.append_value(*contribution);
                }
                None => {
                    name.append_null();
                    value.append_null();
                }
            }
        }
    }
    let mut columns: Vec<ArrayRef> = vec![
        ids.clone(),
        Arc::new(split.finish()),
        Arc::new(probability.finish()),
        Arc::new(decile.finish()),
        Arc::new(predicted.finish()),
        Arc::new(churned.finish()),
    ];
    for (mut name, mut value) in features {
        columns.push(Arc::new(name.finish()));
        columns.push(Arc::new(value.finish()));
    }
    RecordBatch::try_new(scores_schema(id_column, ids.data_type(), explain), columns)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn risk_deciles_put_the_highest_probabilities_in_decile_1_and_split_like_the_lift_table() {
        // 12 customers: deciles 1 and 2 get two each (12 = 10 × 1 + 2), the rest one.
        let probabilities: Vec<f64> = (0..12).map(|i| i as f64 / 12.0).collect();
        let deciles = risk_deciles(&probabilities);
        assert_eq!(deciles, vec![10, 9, 8, 7, 6, 5, 4, 3, 2, 2, 1, 1]);
    }

    #[test]
    fn tied_probabilities_fall_in_deciles_by_row_order() {
        let deciles = risk_deciles(&[0.5; 10]);
        assert_eq!(deciles, (1..=10).collect::<Vec<u8>>());
    }

    #[test]
    fn top_contributions_rank_by_size_whatever_the_sign_and_skip_zeros() {
        assert_eq!(top_contributions(&[0.1, -0.3, 0.0, 0.2], 3), vec![(1, -0.3), (3, 0.2), (0, 0.1)]);
        assert_eq!(top_contributions(&[0.0, 0.05], 3), vec![(1, 0.05)]);
    }
}
