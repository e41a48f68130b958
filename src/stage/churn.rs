//! `kind: churn` — who is likely to leave: a random forest (and a single decision tree as the
//! baseline) trained on a seeded split, evaluated honestly, and a churn score with its reasons
//! for every customer.
//!
//! ```yaml
//! - name: churn
//!   kind: churn
//!   inputs: [features_at_observation, transactions, customer_features, segments]
//!   table: features_at_observation       # training table, one row per customer (default: first input)
//!   id: customer_id
//!   label:                               # or a column: `label: churned`, `label: { column: Churn, positive: "Yes" }`
//!     transactions: transactions         # churned = no transaction in the window
//!     customer: customer_id              # default: `id`
//!     time: invoice_ts
//!     observation_date: observation_date # a date, or a pipeline variable holding one
//!     lead_days: 0
//!     window_days: 90
//!   features:                            # numeric unless one_hot; nulls: missing (default) | median | mean | zero | fail
//!     recency_days: {}
//!     region: { one_hot: true, max_levels: 20 }
//!   split: { method: stratified, test_size: 0.25 }   # or { method: time, column: signup_date, test_from: 2024-07-01 }
//!   cross_validation: 5                  # optional: k-fold metrics on the training split
//!   forest: { n_trees: 100, max_depth: null, min_samples_leaf: 1, min_samples_split: 2, max_features: sqrt,
//!             bootstrap: true, max_samples: null, class_weight: none, oob_score: true, max_bins: 256 }
//!   baseline: { max_depth: null }        # the decision tree
//!   threshold: { policy: max_f1 }        # or { policy: fixed, value: 0.5 } or { policy: target_recall, recall: 0.8 }
//!   explain: 3                           # contributing features named per customer
//!   permutation_repeats: 5
//!   permutation_rows: 10000              # test customers permuted (a seeded sample above)
//!   score: customer_features             # customers to score (default: the training table)
//!   segments: segments                   # a segment stage: churn per segment
//! ```
//!
//! **Honest evaluation.** The preparation (imputation, one-hot levels) is fitted on the
//! training split only. The threshold is chosen on out-of-sample training predictions (the
//! forest's out-of-bag probabilities; 5-fold out-of-fold predictions for the tree, or a forest
//! without bootstrap) and applied unchanged to the test split, so no test label shapes a
//! test metric. Train metrics are in-sample and say how much the model memorised.
//!
//! Results: `<stage>` one row per scored customer (the README documents it),
//! `<stage>_by_segment` and `<stage>_evaluation`. The model is saved to
//! `<output_root>/models/<stage>/run_date=<D>/model.json` with the run's tables.

mod evaluate;
pub mod label;
mod model;

pub use model::{BlockScoreError, ChurnModel, ChurnScorer, MODEL_FILE, SCORE_BLOCK_ROWS, Score, ScoresTable, scores_schema, top_columns};

use std::sync::Arc;

use async_trait::async_trait;
use chrono::NaiveDate;
use datafusion::arrow::array::{Array, ArrayRef, AsArray, Float64Array, Int32Array, Int64Array, RecordBatch};
use datafusion::arrow::datatypes::{DataType, Field, Float64Type, Int32Type, Int64Type, Schema, SchemaRef, TimeUnit};
use datafusion::logical_expr::{cast, ident};
use datafusion::prelude::JoinType;
use ndarray::{Array2, ArrayView2, Axis};
use serde::Deserialize;

use segflow_ml::forest::{ClassWeight, DecisionTree, DecisionTreeParams, ForestParams, MaxFeatures, RandomForest};
use segflow_ml::metrics::{self, ThresholdPolicy};
use segflow_ml::prep::{FeatureColumn, FeatureKind, FeatureSpec, Impute, Preparation, Scaling, Transform};
use segflow_ml::split::{self, Split};

use super::features::{ColumnCheck, FeatureData, feature_columns, for_each_feature_block, is_id_type, is_numeric_type, read_features, text_views};
use super::{Artifact, BuildContext, MODELS_DIR, Stage, StageContext, StageFailure, StageKind, StageMetrics, StageOutput, StageProblem, StageResult};
use crate::config::yaml::{At, Node, OrderedMap, Value, did_you_mean, from_node, quoted_list};
use crate::evaluation::{EvaluationRows, Keys};
use label::{LABEL_COLUMN, LabelPlan, ObservationDate};
use model::ThresholdRecord;

pub struct ChurnKind;

const FOREST: &str = "random_forest";
const TREE: &str = "decision_tree";
/// Carries a time split's column into memory as microseconds since the epoch.
const TIME_COLUMN: &str = "__segflow_split_time";
const SEGMENT_ID_COLUMN: &str = "__segflow_segment_id";
const DEFAULT_MAX_LEVELS: usize = 20;
/// Folds of the out-of-fold predictions a threshold is chosen on when there is no OOB.
const THRESHOLD_FOLDS: usize = 5;
/// Default `permutation_rows`.
const PERMUTATION_ROWS: usize = 10_000;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ChurnParams {
    id: At<String>,
    features: OrderedMap<Option<FeatureParams>>,
    #[serde(default)]
    table: Option<At<String>>,
    #[serde(default)]
    score: Option<At<String>>,
    #[serde(default)]
    segments: Option<At<String>>,
    #[serde(default)]
    split: Option<At<SplitParams>>,
    #[serde(default)]
    cross_validation: Option<At<usize>>,
    #[serde(default)]
    forest: Option<ForestConfig>,
    #[serde(default)]
    baseline: Option<TreeConfig>,
    #[serde(default)]
    threshold: Option<At<ThresholdParams>>,
    #[serde(default)]
    explain: Option<At<usize>>,
    #[serde(default)]
    permutation_repeats: Option<At<usize>>,
    #[serde(default)]
    permutation_rows: Option<At<usize>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct LabelParams {
    #[serde(default)]
    column: Option<At<String>>,
    #[serde(default)]
    positive: Option<At<String>>,
    #[serde(default)]
    transactions: Option<At<String>>,
    #[serde(default)]
    customer: Option<At<String>>,
    #[serde(default)]
    time: Option<At<String>>,
    #[serde(default)]
    observation_date: Option<At<String>>,
    #[serde(default)]
    lead_days: Option<u32>,
    #[serde(default)]
    window_days: Option<At<u32>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FeatureParams {
    #[serde(default)]
    nulls: Option<Impute>,
    #[serde(default)]
    one_hot: bool,
    #[serde(default)]
    max_levels: Option<usize>,
}

#[derive(Debug, Clone, Copy, PartialEq, Deserialize)]
#[serde(rename_all = "snake_case")]
enum SplitMethod {
    Stratified,
    Time,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct SplitParams {
    #[serde(default)]
    method: Option<SplitMethod>,
    #[serde(default)]
    test_size: Option<At<f64>>,
    #[serde(default)]
    column: Option<At<String>>,
    #[serde(default)]
    test_from: Option<At<String>>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
enum MaxFeaturesSetting {
    Fraction(f64),
    Word(String),
}

#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(rename_all = "snake_case")]
enum ClassWeightSetting {
    None,
    Balanced,
    BalancedSubsample,
}

impl From<ClassWeightSetting> for ClassWeight {
    fn from(setting: ClassWeightSetting) -> Self {
        match setting {
            ClassWeightSetting::None => ClassWeight::None,
            ClassWeightSetting::Balanced => ClassWeight::Balanced,
            ClassWeightSetting::BalancedSubsample => ClassWeight::BalancedSubsample,
        }
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct ForestConfig {
    #[serde(default)]
    n_trees: Option<usize>,
    #[serde(default)]
    max_depth: Option<usize>,
    #[serde(default)]
    min_samples_split: Option<usize>,
    #[serde(default)]
    min_samples_leaf: Option<usize>,
    #[serde(default)]
    max_features: Option<At<MaxFeaturesSetting>>,
    #[serde(default)]
    bootstrap: Option<bool>,
    #[serde(default)]
    max_samples: Option<f64>,
    #[serde(default)]
    class_weight: Option<ClassWeightSetting>,
    #[serde(default)]
    oob_score: Option<bool>,
    #[serde(default)]
    max_bins: Option<usize>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct TreeConfig {
    #[serde(default)]
    max_depth: Option<usize>,
    #[serde(default)]
    min_samples_split: Option<usize>,
    #[serde(default)]
    min_samples_leaf: Option<usize>,
    #[serde(default)]
    max_features: Option<At<MaxFeaturesSetting>>,
    #[serde(default)]
    class_weight: Option<ClassWeightSetting>,
    #[serde(default)]
    max_bins: Option<usize>,
}

#[derive(Debug, Clone, Copy, PartialEq, Deserialize)]
#[serde(rename_all = "snake_case")]
enum PolicyName {
    Fixed,
    MaxF1,
    TargetRecall,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ThresholdParams {
    policy: PolicyName,
    #[serde(default)]
    value: Option<f64>,
    #[serde(default)]
    recall: Option<f64>,
}

#[derive(Debug, Clone)]
enum SplitPlan {
    Stratified { test_size: f64 },
    Time { column: At<String>, test_from: NaiveDate },
}

#[derive(Debug, Clone)]
struct PlannedFeature {
    name: At<String>,
    spec: FeatureSpec,
}

impl PlannedFeature {
    fn is_numeric(&self) -> bool {
        matches!(self.spec, FeatureSpec::Numeric { .. })
    }
}

#[derive(Debug)]
struct ChurnStage {
    table: String,
    score: Option<String>,
    segments: Option<String>,
    id: At<String>,
    label: LabelPlan,
    features: Vec<PlannedFeature>,
    split: SplitPlan,
    cv_folds: Option<usize>,
    /// Checked at build; the stage seed is set at run.
    forest: ForestParams,
    tree: DecisionTreeParams,
    threshold: ThresholdPolicy,
    explain: usize,
    permutation_repeats: usize,
    /// Test customers the permutation importances are computed on (a seeded sample above).
    permutation_rows: usize,
}

fn max_features(setting: &At<MaxFeaturesSetting>) -> Result<MaxFeatures, StageProblem> {
    match &setting.value {
        MaxFeaturesSetting::Word(w) if w == "sqrt" => Ok(MaxFeatures::Sqrt),
        MaxFeaturesSetting::Word(w) if w == "log2" => Ok(MaxFeatures::Log2),
        MaxFeaturesSetting::Word(w) if w == "all" => Ok(MaxFeatures::All),
        MaxFeaturesSetting::Fraction(f) if *f > 0.0 && *f <= 1.0 => Ok(MaxFeatures::Fraction(*f)),
        _ => Err(StageProblem::at(setting.pos, "`max_features` is `sqrt`, `log2`, `all` or a fraction of the features in (0, 1], e.g. 0.3")),
    }
}

/// The stage's parameters without `label`, and the `label` node: a label is either a column
/// name or a mapping, and each form gets its own precise errors.
fn split_label(params: &Node) -> (Node, Option<&Node>) {
    match &params.value {
        Value::Map(entries) => {
            let label = entries.iter().find(|(k, _)| k.as_str() == Some("label")).map(|(_, v)| v);
            let rest = entries.iter().filter(|(k, _)| k.as_str() != Some("label")).cloned().collect();
            (Node::new(params.pos, Value::Map(rest)), label)
        }
        _ => (params.clone(), None),
    }
}

fn parse_label(node: Option<&Node>, stage_pos: crate::config::yaml::Pos, id: &At<String>, inputs: &[String], ctx: &BuildContext<'_>, problems: &mut Vec<StageProblem>) -> Option<LabelPlan> {
    let Some(node) = node else {
        problems.push(StageProblem::at(
            stage_pos,
            "a churn stage needs `label`: a column (`label: churned`) or a definition on transactions (`label: { transactions: …, time: …, observation_date: …, window_days: 90 }`)",
        ));
        return None;
    };
    if let Some(column) = node.as_str() {
        return Some(LabelPlan::Column { column: At { pos: node.pos, value: column.to_string() }, positive: None });
    }
    let params: LabelParams = match from_node(node) {
        Ok(p) => p,
        Err(e) => {
            problems.push(StageProblem { file: None, pos: e.pos, message: e.message, suggestion: e.suggestion });
            return None;
        }
    };
    match (params.column, params.transactions) {
        (Some(column), None) => {
            for (key, given) in [("customer", params.customer.is_some()), ("time", params.time.is_some()), ("observation_date", params.observation_date.is_some()), ("lead_days", params.lead_days.is_some()), ("window_days", params.window_days.is_some())] {
                if given {
                    problems.push(StageProblem::at(node.pos, format!("`label.{key}` belongs to a label defined on transactions; this label is the column `{}`", column.value)));
                }
            }
            Some(LabelPlan::Column { column, positive: params.positive.map(|p| p.value) })
        }
        (None, Some(transactions)) => {
            if let Some(p) = &params.positive {
                problems.push(StageProblem::at(p.pos, "`label.positive` is for a label column; a transaction label is churned = no transaction in the window"));
            }
            if !inputs.contains(&transactions.value) {
                problems.push(StageProblem {
                    file: None,
                    pos: Some(transactions.pos),
                    message: format!("`label.transactions` is `{}`, which is not among the stage's inputs ({})", transactions.value, quoted_list(inputs.iter().map(String::as_str))),
                    suggestion: did_you_mean(&transactions.value, inputs.iter().map(String::as_str)),
                });
            }
            let (Some(time), Some(observation), Some(window)) = (params.time, params.observation_date, params.window_days) else {
                problems.push(StageProblem::at(node.pos, "a label on transactions needs `time` (the transaction timestamp), `observation_date` and `window_days`"));
                return None;
            };
            let observation = match crate::vars::parse_date(&observation.value) {
                Some(date) => ObservationDate::Literal(date),
                None => match ctx.vars.get(&observation.value) {
                    Some(crate::vars::VarValue::Date(_)) => ObservationDate::Var(observation.value.clone()),
                    Some(other) => {
                        problems.push(StageProblem::at(observation.pos, format!("`observation_date` names the variable `{}`, which is {}, not a date", observation.value, other.type_name())));
                        return None;
                    }
                    None => {
                        problems.push(StageProblem {
                            file: None,
                            pos: Some(observation.pos),
                            message: format!("`observation_date` is a date (YYYY-MM-DD) or a pipeline variable holding one; `{}` is neither", observation.value),
                            suggestion: did_you_mean(&observation.value, ctx.vars.keys().map(String::as_str)),
                        });
                        return None;
                    }
                },
            };
            if window.value == 0 {
                problems.push(StageProblem::at(window.pos, "`window_days` must be at least 1"));
            }
            Some(LabelPlan::Transactions {
                table: transactions,
                customer: params.customer.unwrap_or_else(|| id.clone()),
                time,
                observation,
                lead_days: params.lead_days.unwrap_or(0),
                window_days: window.value,
            })
        }
        (Some(column), Some(_)) => {
            problems.push(StageProblem::at(column.pos, "`label` is either a `column` or a definition on `transactions`, not both"));
            None
        }
        (None, None) => {
            problems.push(StageProblem::at(node.pos, "`label` needs `column` (a boolean, 0/1 or text column) or `transactions` (churned = no transaction in a window)"));
            None
        }
    }
}

impl StageKind for ChurnKind {
    fn name(&self) -> &'static str {
        "churn"
    }

    fn build(&self, node: &Node, ctx: &BuildContext<'_>) -> Result<Box<dyn Stage>, Vec<StageProblem>> {
        let (rest, label_node) = split_label(node);
        let params: ChurnParams = from_node(&rest).map_err(|e| vec![StageProblem { file: None, pos: e.pos, message: e.message, suggestion: e.suggestion }])?;
        let mut problems = Vec::new();
        let inputs = ctx.inputs;
        let mut named_input = |what: &str, setting: &Option<At<String>>| -> Option<String> {
            let setting = setting.as_ref()?;
            if !inputs.contains(&setting.value) {
                problems.push(StageProblem {
                    file: None,
                    pos: Some(setting.pos),
                    message: format!("`{what}` is `{}`, which is not among the stage's inputs ({})", setting.value, quoted_list(inputs.iter().map(String::as_str))),
                    suggestion: did_you_mean(&setting.value, inputs.iter().map(String::as_str)),
                });
            }
            Some(setting.value.clone())
        };
        let table = named_input("table", &params.table).or_else(|| inputs.first().cloned());
        let score = named_input("score", &params.score);
        let segments = named_input("segments", &params.segments);
        let Some(table) = table else {
            return Err(vec![StageProblem { file: None, pos: None, message: "a churn stage reads at least one input: the training table, one row per customer".to_string(), suggestion: None }]);
        };
        let label = parse_label(label_node, node.pos, &params.id, inputs, ctx, &mut problems);

        let mut features = Vec::new();
        for (name, spec) in params.features.0 {
            let spec = spec.unwrap_or_default();
            let planned = if spec.one_hot {
                if spec.nulls.is_some() {
                    problems.push(StageProblem::at(name.pos, format!("feature `{}` is one-hot: a null sets none of its columns; `nulls` applies to numeric features", name.value)));
                }
                let max_levels = spec.max_levels.unwrap_or(DEFAULT_MAX_LEVELS);
                if max_levels == 0 {
                    problems.push(StageProblem::at(name.pos, format!("feature `{}`: `max_levels` must be at least 1", name.value)));
                }
                FeatureSpec::Categorical { name: name.value.clone(), max_levels }
            } else {
                if spec.max_levels.is_some() {
                    problems.push(StageProblem::at(name.pos, format!("feature `{}`: `max_levels` applies to `one_hot: true` features only", name.value)));
                }
                // Trees need no scaling or transform; a missing value is information of its own.
                FeatureSpec::Numeric { name: name.value.clone(), transform: Transform::None, winsorize: None, scaling: Scaling::None, impute: spec.nulls.unwrap_or(Impute::Missing) }
            };
            features.push(PlannedFeature { name, spec: planned });
        }
        if features.is_empty() {
            problems.push(StageProblem::at(node.pos, "`features` is empty: name the columns the model learns from"));
        }
        if let Some(LabelPlan::Column { column, .. }) = &label
            && let Some(f) = features.iter().find(|f| f.name.value == column.value)
        {
            problems.push(StageProblem::at(f.name.pos, format!("`{}` is the label: a model that reads its own answer learns nothing", column.value)));
        }

        let split = match params.split {
            None => SplitPlan::Stratified { test_size: 0.25 },
            Some(At { value: s, pos }) => match s.method.unwrap_or(SplitMethod::Stratified) {
                SplitMethod::Stratified => {
                    if s.column.is_some() || s.test_from.is_some() {
                        problems.push(StageProblem::at(pos, "`column` and `test_from` belong to `method: time`"));
                    }
                    let test_size = s.test_size.as_ref().map(|t| t.value).unwrap_or(0.25);
                    if !(test_size > 0.0 && test_size < 1.0) {
                        problems.push(StageProblem::at(s.test_size.map(|t| t.pos).unwrap_or(pos), "`test_size` is the share of customers held out for testing, strictly between 0 and 1 (e.g. 0.25)"));
                    }
                    SplitPlan::Stratified { test_size }
                }
                SplitMethod::Time => {
                    if let Some(t) = &s.test_size {
                        problems.push(StageProblem::at(t.pos, "`test_size` belongs to `method: stratified`; a time split tests on the customers from `test_from` on"));
                    }
                    match (s.column, s.test_from) {
                        (Some(column), Some(from)) => match crate::vars::parse_date(&from.value) {
                            Some(test_from) => SplitPlan::Time { column, test_from },
                            None => {
                                problems.push(StageProblem::at(from.pos, "`test_from` is a date, YYYY-MM-DD"));
                                SplitPlan::Stratified { test_size: 0.25 }
                            }
                        },
                        _ => {
                            problems.push(StageProblem::at(pos, "a time split needs `column` (a date or timestamp of each customer) and `test_from` (customers from this date on are the test split)"));
                            SplitPlan::Stratified { test_size: 0.25 }
                        }
                    }
                }
            },
        };
        let cv_folds = match params.cross_validation {
            Some(At { value, .. }) if value >= 2 => Some(value),
            Some(At { pos, .. }) => {
                problems.push(StageProblem::at(pos, "`cross_validation` is a number of folds, at least 2 (e.g. 5)"));
                None
            }
            None => None,
        };

        let config = params.forest.unwrap_or_default();
        let mut forest = ForestParams::new().oob_score(true);
        if let Some(n) = config.n_trees {
            forest = forest.n_trees(n);
        }
        forest = forest.max_depth(config.max_depth);
        if let Some(n) = config.min_samples_split {
            forest = forest.min_samples_split(n);
        }
        if let Some(n) = config.min_samples_leaf {
            forest = forest.min_samples_leaf(n);
        }
        if let Some(setting) = &config.max_features {
            match max_features(setting) {
                Ok(m) => forest = forest.max_features(m),
                Err(p) => problems.push(p),
            }
        }
        if let Some(b) = config.bootstrap {
            forest = forest.bootstrap(b);
        }
        forest = forest.max_samples(config.max_samples);
        if let Some(c) = config.class_weight {
            forest = forest.class_weight(c.into());
        }
        if let Some(o) = config.oob_score {
            forest = forest.oob_score(o);
        }
        if let Some(b) = config.max_bins {
            forest = forest.max_bins(b);
        }
        if let Err(e) = forest.clone().check() {
            problems.push(StageProblem { file: None, pos: None, message: format!("forest: {e}"), suggestion: None });
        }

        let baseline = params.baseline.unwrap_or_default();
        let mut tree = DecisionTreeParams::new().max_depth(baseline.max_depth);
        if let Some(n) = baseline.min_samples_split {
            tree = tree.min_samples_split(n);
        }
        if let Some(n) = baseline.min_samples_leaf {
            tree = tree.min_samples_leaf(n);
        }
        if let Some(setting) = &baseline.max_features {
            match max_features(setting) {
                Ok(m) => tree = tree.max_features(m),
                Err(p) => problems.push(p),
            }
        }
        if let Some(c) = baseline.class_weight {
            tree = tree.class_weight(c.into());
        }
        if let Some(b) = baseline.max_bins {
            tree = tree.max_bins(b);
        }
        if let Err(e) = tree.clone().check() {
            problems.push(StageProblem { file: None, pos: None, message: format!("baseline: {e}"), suggestion: None });
        }

        let threshold = match params.threshold {
            None => ThresholdPolicy::MaxF1,
            Some(At { value: t, pos }) => match (t.policy, t.value, t.recall) {
                (PolicyName::Fixed, Some(v), None) if (0.0..=1.0).contains(&v) => ThresholdPolicy::Fixed(v),
                (PolicyName::MaxF1, None, None) => ThresholdPolicy::MaxF1,
                (PolicyName::TargetRecall, None, Some(r)) if r > 0.0 && r <= 1.0 => ThresholdPolicy::TargetRecall(r),
                (PolicyName::Fixed, ..) => {
                    problems.push(StageProblem::at(pos, "`policy: fixed` takes `value`, a probability in [0, 1] (and no `recall`)"));
                    ThresholdPolicy::MaxF1
                }
                (PolicyName::MaxF1, ..) => {
                    problems.push(StageProblem::at(pos, "`policy: max_f1` takes no `value` or `recall`: it picks the threshold with the best F1"));
                    ThresholdPolicy::MaxF1
                }
                (PolicyName::TargetRecall, ..) => {
                    problems.push(StageProblem::at(pos, "`policy: target_recall` takes `recall`, the share of churners to catch, in (0, 1] (and no `value`)"));
                    ThresholdPolicy::MaxF1
                }
            },
        };
        // Three reasons by default, fewer when the model has fewer features.
        let explain = match &params.explain {
            Some(e) if e.value > features.len().max(1) => {
                problems.push(StageProblem::at(e.pos, format!("`explain` names up to as many features as the model has ({})", features.len())));
                e.value
            }
            Some(e) => e.value,
            None => 3.min(features.len().max(1)),
        };
        let permutation_repeats = match params.permutation_repeats {
            Some(At { value: 0, pos }) => {
                problems.push(StageProblem::at(pos, "`permutation_repeats` must be at least 1"));
                1
            }
            Some(At { value, .. }) => value,
            None => 5,
        };
        // Each repeat of each feature predicts every permuted row with the whole forest: on 57k
        // test customers that was 60% of a run. An importance is a mean drop in ROC AUC, stable
        // long before that (scikit-learn's `max_samples`).
        let permutation_rows = match params.permutation_rows {
            Some(At { value, pos }) if value < 2 => {
                problems.push(StageProblem::at(pos, "`permutation_rows` must be at least 2"));
                2
            }
            Some(At { value, .. }) => value,
            None => PERMUTATION_ROWS,
        };
        let Some(label) = label else { return Err(problems) };
        if !problems.is_empty() {
            return Err(problems);
        }
        Ok(Box::new(ChurnStage { table, score, segments, id: params.id, label, features, split, cv_folds, forest, tree, threshold, explain, permutation_repeats, permutation_rows }))
    }
}

fn is_time_type(t: &DataType) -> bool {
    matches!(t, DataType::Date32 | DataType::Date64 | DataType::Timestamp(..))
}

#[async_trait]
impl Stage for ChurnStage {
    fn secondary_results(&self) -> &'static [&'static str] {
        &["by_segment", crate::evaluation::PART]
    }

    async fn plan(&self, ctx: &StageContext<'_>) -> Result<Vec<StageResult>, Vec<StageProblem>> {
        let problem = |message: String| vec![StageProblem { file: None, pos: None, message, suggestion: None }];
        let schema_of = |table: String| async move {
            ctx.session.table(table.as_str()).await.map(|t| t.schema().inner().clone()).map_err(|e| problem(crate::engine::describe_datafusion_error(&e)))
        };
        let mut problems = Vec::new();
        let train = schema_of(self.table.clone()).await?;
        let mut check = ColumnCheck { table: &self.table, schema: train.clone(), problems: &mut problems };
        check.check(&self.id, "id column", is_id_type, "an integer or string id");
        check.features(self.features.iter().map(|f| (&f.name, f.is_numeric())));
        match &self.label {
            LabelPlan::Column { column, positive: None } => check.check(column, "label", |t| is_numeric_type(t), "a boolean or 0/1 (for a text label, say which value means churned: `positive: \"Yes\"`)"),
            LabelPlan::Column { column, positive: Some(_) } => check.check(column, "label", |_| true, ""),
            LabelPlan::Transactions { .. } => {}
        }
        if let SplitPlan::Time { column, .. } = &self.split {
            check.check(column, "split column", is_time_type, "a date or a timestamp");
        }
        if let LabelPlan::Transactions { table, customer, time, .. } = &self.label {
            let schema = schema_of(table.value.clone()).await?;
            let mut check = ColumnCheck { table: &table.value, schema, problems: &mut problems };
            check.check(customer, "customer column", is_id_type, "an integer or string id");
            check.check(time, "time column", is_time_type, "a date or a timestamp");
            if let Err(e) = self.label.window(ctx.vars) {
                problems.push(StageProblem { file: None, pos: None, message: e, suggestion: None });
            }
        }
        if let Some(score) = &self.score
            && *score != self.table
        {
            let schema = schema_of(score.clone()).await?;
            let mut check = ColumnCheck { table: score, schema, problems: &mut problems };
            check.check(&self.id, "id column", is_id_type, "an integer or string id");
            check.features(self.features.iter().map(|f| (&f.name, f.is_numeric())));
        }
        if let Some(segments) = &self.segments {
            let schema = schema_of(segments.clone()).await?;
            let mut check = ColumnCheck { table: segments, schema, problems: &mut problems };
            check.check(&self.id, "id column", is_id_type, "an integer or string id");
            check.check(&At { pos: self.id.pos, value: "segment".to_string() }, "segment column", |t| t.is_integer(), "an integer segment id (the result of a segment stage)");
        }
        if !problems.is_empty() {
            return Err(problems);
        }
        let id_type = train.field_with_name(&self.id.value).map(|f| f.data_type().clone()).unwrap_or(DataType::Utf8);
        let empty = |schema: SchemaRef| ctx.session.read_batch(RecordBatch::new_empty(schema)).map_err(|e| problem(e.to_string()));
        Ok(vec![
            StageResult { name: ctx.stage_name.to_string(), frame: empty(scores_schema(&self.id.value, &id_type, self.explain))? },
            StageResult { name: format!("{}_by_segment", ctx.stage_name), frame: empty(by_segment_schema())? },
            StageResult { name: format!("{}_{}", ctx.stage_name, crate::evaluation::PART), frame: empty(crate::evaluation::schema())? },
        ])
    }

    async fn run(&self, ctx: &StageContext<'_>) -> Result<StageOutput, StageFailure> {
        let fail = |message: String| StageFailure { message };
        let session = ctx.session;
        let what = format!("input `{}`", self.table);
        let mut phases = super::Phases::start(ctx.stage_name);

        // 1. The training table with its label, in memory, ordered by id.
        let train_frame = session.table(self.table.as_str()).await?;
        let mut labelled = self.label.attach(session, train_frame, &self.id.value, ctx.vars).await.map_err(fail)?;
        let mut numeric: Vec<String> = self.features.iter().filter(|f| f.is_numeric()).map(|f| f.name.value.clone()).collect();
        numeric.push(LABEL_COLUMN.to_string());
        if let SplitPlan::Time { column, .. } = &self.split {
            let micros = cast(cast(ident(&column.value), DataType::Timestamp(TimeUnit::Microsecond, None)), DataType::Int64);
            labelled = labelled.with_column(TIME_COLUMN, micros)?;
            numeric.push(TIME_COLUMN.to_string());
        }
        let categorical: Vec<String> = self.features.iter().filter(|f| !f.is_numeric()).map(|f| f.name.value.clone()).collect();
        let data = read_features(labelled, &self.id.value, &numeric, &categorical, &what).await.map_err(fail)?;
        if data.is_empty() {
            return Err(fail(format!("{what} has no rows: there are no customers to learn churn from")));
        }
        let labels = self.labels(&data, &what).map_err(fail)?;
        let label_text = self.label.describe(ctx.vars);
        phases.done("label and features read");

        // 2. The split, then the preparation fitted on the training side only.
        let split = self.split(&data, &labels, ctx.seed, &what).map_err(fail)?;
        let specs: Vec<FeatureSpec> = self.features.iter().map(|f| f.spec.clone()).collect();
        let kinds: Vec<(&str, FeatureKind)> = specs.iter().map(|s| (s.name(), s.kind())).collect();
        // Each copy of the customers lives only as long as it is needed: at 100M transaction
        // lines they are gigabytes each (the training side's columns, the prepared matrices).
        let preparation = {
            let train_data = data.take(&split.train).map_err(fail)?;
            let train_text = text_views(&train_data);
            Preparation::fit(&specs, &feature_columns(&train_data, &train_text, &kinds)).map_err(|e| fail(format!("feature preparation (training split): {e}")))?
        };
        let prepare_training_table = |data: &FeatureData| {
            let text = text_views(data);
            preparation.transform(&feature_columns(data, &text, &kinds)).map_err(|e| fail(format!("feature preparation: {e}")))
        };
        let (x_train, x_test) = {
            let x = prepare_training_table(&data)?;
            (x.select(Axis(0), &split.train), x.select(Axis(0), &split.test))
        };
        // The training table's columns are needed again only when it is also the table scored.
        let to_score = match self.score.as_ref().filter(|s| **s != self.table) {
            Some(table) => {
                // Not moved on this arm, so it would otherwise live to the end of the stage.
                drop(data);
                ToScore::OtherTable(table)
            }
            None => ToScore::TrainingTable(data),
        };
        let y_train: Vec<usize> = split.train.iter().map(|&r| labels[r]).collect();
        let y_test: Vec<usize> = split.test.iter().map(|&r| labels[r]).collect();
        let prepared_names = preparation.output_names();
        let feature_names: Vec<String> = self.features.iter().map(|f| f.name.value.clone()).collect();
        phases.done("split and preparation");

        // 3. The baseline tree and its threshold, then the forest and its threshold. The tree's
        // out-of-fold fits copy four fifths of the training rows each; run before the forest
        // exists, they no longer add to it (at 100M lines the forest holds 2.45 GB, and those
        // copies made the run's peak). Neither depends on the other, so the order changes
        // nothing in the results.
        let forest_params = self.forest.clone().seed(ctx.seed).check().map_err(|e| fail(format!("forest: {e}")))?;
        let tree_params = self.tree.clone().seed(ctx.seed).check().map_err(|e| fail(format!("baseline: {e}")))?;
        let fit_forest = |x: ArrayView2<'_, f64>, y: &[usize]| RandomForest::fit(&forest_params, x, y, None).map_err(|e| format!("random forest: {e}"));
        let fit_tree = |x: ArrayView2<'_, f64>, y: &[usize]| DecisionTree::fit(&tree_params, x, y, None).map_err(|e| format!("decision tree: {e}"));
        let tree = fit_tree(x_train.view(), &y_train).map_err(fail)?;
        let tree_oof = out_of_fold(x_train.view(), &y_train, ctx.seed, &|x, y, held_out| Ok(fit_tree(x, y)?.predict_proba(held_out).map_err(|e| e.to_string())?.to_vec())).map_err(fail)?;
        let (tree_threshold, _) = self.choose_threshold(&y_train, &tree_oof, &format!("{THRESHOLD_FOLDS}-fold out-of-fold training predictions")).map_err(fail)?;
        phases.done("baseline tree fitted, its threshold chosen");

        let mut forest = fit_forest(x_train.view(), &y_train).map_err(fail)?;
        // With the out-of-bag estimate, the fit walked its training rows through every tree:
        // the same bits as predicting them again for the training split's evaluation.
        let mut forest_training_scores = forest.training_probabilities.take();
        let forest_predict = |x: ArrayView2<'_, f64>| forest.predict_proba(x).map(|p| p.to_vec()).unwrap_or_default();
        let tree_predict = |x: ArrayView2<'_, f64>| tree.predict_proba(x).map(|p| p.to_vec()).unwrap_or_default();
        // Thresholds are chosen on out-of-sample training predictions.
        let oob = forest.oob();
        let (forest_threshold, forest_record) = match &oob {
            Some(oob) => {
                let (y, p): (Vec<usize>, Vec<f64>) = oob.probabilities.iter().zip(&y_train).filter_map(|(p, &y)| p.map(|p| (y, p))).unzip();
                self.choose_threshold(&y, &p, "out-of-bag training predictions").map_err(fail)?
            }
            None => {
                let p = out_of_fold(x_train.view(), &y_train, ctx.seed, &|x, y, held_out| Ok(fit_forest(x, y)?.predict_proba(held_out).map_err(|e| e.to_string())?.to_vec())).map_err(fail)?;
                self.choose_threshold(&y_train, &p, &format!("{THRESHOLD_FOLDS}-fold out-of-fold training predictions")).map_err(fail)?
            }
        };
        phases.done("forest fitted, its threshold chosen");

        // 4. Evaluation: both models on both splits, OOB, cross-validation, importances.
        let mut evaluation = EvaluationRows::default();
        let mut test_auc = None;
        for (name, predict, threshold) in [(FOREST, &forest_predict as &(dyn Fn(ArrayView2<'_, f64>) -> Vec<f64> + Sync), forest_threshold), (TREE, &tree_predict, tree_threshold)] {
            evaluation.push(name, "train", "threshold", Keys::default(), Some(threshold));
            let train_scores = match name {
                FOREST => forest_training_scores.take().unwrap_or_else(|| predict(x_train.view())),
                _ => predict(x_train.view()),
            };
            evaluate::model_on_split(&mut evaluation, name, "train", &y_train, &train_scores, threshold);
            let test_scores = predict(x_test.view());
            evaluate::model_on_split(&mut evaluation, name, "test", &y_test, &test_scores, threshold);
            if name == FOREST {
                test_auc = metrics::roc_auc(&y_test, &test_scores).ok();
            }
        }
        if let Some(oob) = &oob {
            let (y, p): (Vec<usize>, Vec<f64>) = oob.probabilities.iter().zip(&y_train).filter_map(|(p, &y)| p.map(|p| (y, p))).unzip();
            evaluation.push(FOREST, "oob", "oob_score", Keys::default(), Some(oob.accuracy));
            evaluation.push(FOREST, "oob", "roc_auc", Keys::default(), metrics::roc_auc(&y, &p).ok());
            evaluation.push(FOREST, "oob", "customers", Keys::default(), Some(y.len() as f64));
        }
        phases.done("evaluation: both models on both splits");
        if let Some(folds) = self.cv_folds {
            self.cross_validate(&mut evaluation, x_train.view(), &y_train, folds, ctx.seed, &fit_forest).map_err(fail)?;
            phases.done("evaluation: cross-validation");
        }
        evaluate::importances(&mut evaluation, FOREST, "train", "impurity_importance", &prepared_names, &forest.feature_importances, None);
        if !split.test.is_empty() {
            // A stream of its own: the permutation sample does not follow the split's draws.
            let rows = split::sample_rows(y_test.len(), self.permutation_rows, ctx.seed ^ 0x7065_726d_7574_6521);
            let (x_permuted, y_permuted) = (x_test.select(Axis(0), &rows), rows.iter().map(|&r| y_test[r]).collect::<Vec<_>>());
            let (means, stds) = grouped_permutation_importance(&forest_predict, x_permuted.view(), &y_permuted, &model::feature_groups(&preparation), self.features.len(), self.permutation_repeats, ctx.seed);
            evaluation.push(FOREST, "test", "permutation_customers", Keys::default(), Some(rows.len() as f64));
            evaluate::importances(&mut evaluation, FOREST, "test", "permutation_importance", &feature_names, &means, Some(&stds));
        }

        phases.done("evaluation: permutation importance");
        // The prepared training and test rows are not needed again (a training table that is
        // also scored is prepared anew), and the scored table's rows are about to be prepared.
        drop((x_train, x_test));

        // 5. Scores for every customer of the score table.
        let model = ChurnModel {
            format: model::FORMAT.to_string(),
            format_version: model::FORMAT_VERSION,
            stage: ctx.stage_name.to_string(),
            run_id: ctx.run_id.to_string(),
            run_date: ctx.run_date.to_string(),
            id_column: self.id.value.clone(),
            label: label_text.clone(),
            preparation: preparation.clone(),
            prepared_features: prepared_names.clone(),
            forest: model::ForestSummary::of(&forest),
            fitted: forest,
            threshold: forest_threshold,
            threshold_policy: forest_record,
            explain: self.explain,
            training_customers: y_train.len() as u64,
            training_churn_rate: y_train.iter().sum::<usize>() as f64 / y_train.len().max(1) as f64,
        };
        // The model's files first: scoring then needs the forest laid out, not its stored trees
        // (2.45 GB at 100M transaction lines), which go as it is laid out.
        let trees_file = ctx.scratch.map(|scratch| scratch.join(format!("{}_{}", ctx.stage_name, model::TREES_FILE)));
        if let Some(scratch) = ctx.scratch {
            std::fs::create_dir_all(scratch).map_err(|e| fail(format!("cannot create the scratch folder {}: {e}", scratch.display())))?;
        }
        let artifact = Artifact { folder: format!("{MODELS_DIR}/{}", ctx.stage_name), files: model.to_files(trees_file.as_deref()).map_err(fail)? };
        phases.done("model files written");
        let scorer = model.into_scorer().map_err(fail)?;
        phases.done("forest laid out for scoring");
        let mut table = ScoresTable::new(&self.id.value, self.explain);
        match to_score {
            ToScore::OtherTable(score_table) => {
                let what = format!("input `{score_table}`");
                let frame = session.table(score_table.as_str()).await?;
                let numeric: Vec<String> = self.features.iter().filter(|f| f.is_numeric()).map(|f| f.name.value.clone()).collect();
                // A block at a time: at 100M transaction lines the table's columns as read, as
                // text and prepared took 1.7 GB beside the forest.
                for_each_feature_block(frame, &self.id.value, &numeric, &categorical, &what, SCORE_BLOCK_ROWS, |block, first_row| {
                    let text = text_views(&block);
                    let scores = scorer.score_block(&feature_columns(&block, &text, &kinds), first_row).map_err(|e| format!("{what}: {e}"))?;
                    table.push(&block.ids, &scores, |_| "score", |_| None);
                    Ok(())
                })
                .await
                .map_err(fail)?;
            }
            ToScore::TrainingTable(data) => {
                let mut splits = vec!["train"; data.len()];
                split.test.iter().for_each(|&r| splits[r] = "test");
                let text = text_views(&data);
                let columns = feature_columns(&data, &text, &kinds);
                for start in (0..data.len()).step_by(SCORE_BLOCK_ROWS) {
                    let rows = start..(start + SCORE_BLOCK_ROWS).min(data.len());
                    let block: Vec<FeatureColumn<'_>> = columns.iter().map(|c| c.rows(rows.clone())).collect();
                    let scores = scorer.score_block(&block, start).map_err(|e| fail(format!("feature preparation: {e}")))?;
                    table.push(&data.ids.slice(start, rows.len()), &scores, |r| splits[start + r], |r| Some(labels[start + r] == 1));
                }
            }
        }
        let scores_batch = table.finish().map_err(|e| fail(e.to_string()))?;
        let predicted_churners = scores_batch.column_by_name("predicted_churn").map(|c| c.as_boolean().true_count()).unwrap_or(0);

        phases.done("scores");

        // 6. Churn per segment.
        let by_segment = match &self.segments {
            Some(segments) => by_segment(ctx, &scores_batch, &self.id.value, segments).await?,
            None => RecordBatch::new_empty(by_segment_schema()),
        };
        push_by_segment(&mut evaluation, &by_segment);

        phases.done("churn by segment");
        let evaluation_batch = evaluation.to_batch(ctx.run_id, ctx.stage_name)?;
        let mut metrics = StageMetrics::new();
        metrics.insert("training_customers".into(), y_train.len() as i64);
        metrics.insert("test_customers".into(), y_test.len() as i64);
        metrics.insert("scored_customers".into(), scores_batch.num_rows() as i64);
        metrics.insert("predicted_churners".into(), predicted_churners as i64);
        tracing::info!(
            stage = ctx.stage_name,
            label = %label_text,
            training = y_train.len(),
            test = y_test.len(),
            test_roc_auc = ?test_auc,
            threshold = forest_threshold,
            scored = scores_batch.num_rows(),
            predicted_churners,
            "churn model fitted"
        );
        let (by_segment_name, evaluation_name) = (format!("{}_by_segment", ctx.stage_name), format!("{}_{}", ctx.stage_name, crate::evaluation::PART));
        Ok(StageOutput {
            results: vec![
                StageResult { name: ctx.stage_name.to_string(), frame: ctx.frame_of(ctx.stage_name, scores_batch).await? },
                StageResult { name: by_segment_name.clone(), frame: ctx.frame_of(&by_segment_name, by_segment).await? },
                StageResult { name: evaluation_name.clone(), frame: ctx.frame_of(&evaluation_name, evaluation_batch).await? },
            ],
            metrics,
            artifacts: vec![artifact],
        })
    }
}

impl ChurnStage {
    /// 0/1 labels from the label column; a missing or non-binary label is an error that counts
    /// the rows and shows one, and a table with one class cannot train a classifier.
    fn labels(&self, data: &FeatureData, what: &str) -> Result<Vec<usize>, String> {
        let values = data.numeric.get(LABEL_COLUMN).map(Vec::as_slice).unwrap_or(&[]);
        let shown_id = |row: usize| datafusion::arrow::util::display::array_value_to_string(&data.ids, row).unwrap_or_default();
        let missing: Vec<usize> = (0..values.len()).filter(|&r| values[r].is_none()).collect();
        if let Some(&first) = missing.first() {
            return Err(format!("{what}: {} customers have no churn label (e.g. `{}` = {}); label every customer, or filter them out before this stage", missing.len(), self.id.value, shown_id(first)));
        }
        let odd: Vec<usize> = (0..values.len()).filter(|&r| !matches!(values[r], Some(v) if v == 0.0 || v == 1.0)).collect();
        if let Some(&first) = odd.first() {
            return Err(format!(
                "{what}: the churn label must be 0/1 or a boolean, but {} customers have other values (e.g. {} for `{}` = {}); for a text label, say which value means churned with `positive:`",
                odd.len(),
                values[first].unwrap_or(f64::NAN),
                self.id.value,
                shown_id(first)
            ));
        }
        let labels: Vec<usize> = values.iter().map(|v| usize::from(*v == Some(1.0))).collect();
        let churners = labels.iter().sum::<usize>();
        if churners == 0 || churners == labels.len() {
            return Err(format!(
                "{what}: every one of its {} customers has churn label {}: a classifier needs churners and customers who stayed ({})",
                labels.len(),
                u8::from(churners > 0),
                self.label.describe(&crate::vars::Vars::new())
            ));
        }
        Ok(labels)
    }

    fn split(&self, data: &FeatureData, labels: &[usize], seed: u64, what: &str) -> Result<Split, String> {
        match &self.split {
            SplitPlan::Stratified { test_size } => split::stratified_split(labels, *test_size, seed).map_err(|e| format!("{what}: train/test split: {e}")),
            SplitPlan::Time { column, test_from } => {
                let times = data.numeric.get(TIME_COLUMN).map(Vec::as_slice).unwrap_or(&[]);
                let nulls = times.iter().filter(|t| t.is_none()).count();
                if nulls > 0 {
                    return Err(format!("{what}: {nulls} customers have no `{}`, so the time split cannot place them", column.value));
                }
                let micros: Vec<i64> = times.iter().map(|t| t.unwrap_or_default() as i64).collect();
                let cutoff = i64::from(crate::vars::days_since_epoch(*test_from)) * 86_400_000_000;
                let split = split::time_split(&micros, cutoff);
                for (side, rows) in [("training", &split.train), ("test", &split.test)] {
                    let churners = rows.iter().filter(|&&r| labels[r] == 1).count();
                    if rows.is_empty() || churners == 0 || churners == rows.len() {
                        return Err(format!(
                            "{what}: the time split at {test_from} on `{}` leaves the {side} side with {} customers, {churners} of them churners; each side needs churners and customers who stayed",
                            column.value,
                            rows.len()
                        ));
                    }
                }
                Ok(split)
            }
        }
    }

    fn choose_threshold(&self, labels: &[usize], scores: &[f64], chosen_on: &str) -> Result<(f64, ThresholdRecord), String> {
        let threshold = metrics::choose_threshold(self.threshold, labels, scores).map_err(|e| format!("choosing the threshold on {chosen_on}: {e}"))?;
        let record = match self.threshold {
            ThresholdPolicy::Fixed(value) => ThresholdRecord::Fixed { value },
            ThresholdPolicy::MaxF1 => ThresholdRecord::MaxF1 { chosen_on: chosen_on.to_string() },
            ThresholdPolicy::TargetRecall(recall) => ThresholdRecord::TargetRecall { recall, chosen_on: chosen_on.to_string() },
        };
        Ok((threshold, record))
    }

    /// k-fold metrics of the forest on the training split: per fold, then mean and standard
    /// deviation. Folds share the preparation fitted on the whole training split.
    fn cross_validate(&self, evaluation: &mut EvaluationRows, x: ArrayView2<'_, f64>, y: &[usize], folds: usize, seed: u64, fit: &(dyn Fn(ArrayView2<'_, f64>, &[usize]) -> Result<RandomForest, String> + Sync)) -> Result<(), String> {
        let splits = split::stratified_k_fold(y, folds, seed).map_err(|e| format!("cross-validation: {e}"))?;
        let names = ["roc_auc", "pr_auc", "log_loss", "brier_score"];
        let mut per_metric: Vec<Vec<f64>> = vec![Vec::new(); names.len()];
        for (i, fold) in splits.iter().enumerate() {
            let y_train: Vec<usize> = fold.train.iter().map(|&r| y[r]).collect();
            let y_test: Vec<usize> = fold.test.iter().map(|&r| y[r]).collect();
            let model = fit(x.select(Axis(0), &fold.train).view(), &y_train)?;
            let scores = model.predict_proba(x.select(Axis(0), &fold.test).view()).map_err(|e| e.to_string())?.to_vec();
            let values = [metrics::roc_auc(&y_test, &scores), metrics::pr_auc(&y_test, &scores), metrics::log_loss(&y_test, &scores), metrics::brier_score(&y_test, &scores)];
            for (j, value) in values.into_iter().enumerate() {
                let value = value.ok();
                evaluation.push(FOREST, &format!("cv_fold_{}", i + 1), names[j], Keys::default(), value);
                per_metric[j].extend(value);
            }
        }
        for (j, values) in per_metric.iter().enumerate() {
            let n = values.len() as f64;
            let mean = (!values.is_empty()).then(|| values.iter().sum::<f64>() / n);
            let std = mean.map(|m| (values.iter().map(|v| (v - m).powi(2)).sum::<f64>() / n).sqrt());
            evaluation.push(FOREST, "cv_mean", names[j], Keys::default(), mean);
            evaluation.push(FOREST, "cv_std", names[j], Keys::default(), std);
        }
        Ok(())
    }
}

/// Out-of-fold predictions on the training rows: each row scored by a model that did not see
/// it. Folds are stratified and seeded; fewer folds when the smaller class is small.
fn out_of_fold(x: ArrayView2<'_, f64>, y: &[usize], seed: u64, fit_predict: &dyn Fn(ArrayView2<'_, f64>, &[usize], ArrayView2<'_, f64>) -> Result<Vec<f64>, String>) -> Result<Vec<f64>, String> {
    let churners = y.iter().sum::<usize>();
    let folds = THRESHOLD_FOLDS.min(churners).min(y.len() - churners);
    if folds < 2 {
        return Err(format!("the training split has {churners} churners among {} customers: too few to choose a threshold out of sample", y.len()));
    }
    let splits = split::stratified_k_fold(y, folds, seed).map_err(|e| e.to_string())?;
    let mut out = vec![0.0; y.len()];
    for fold in splits {
        let y_train: Vec<usize> = fold.train.iter().map(|&r| y[r]).collect();
        let scores = fit_predict(x.select(Axis(0), &fold.train).view(), &y_train, x.select(Axis(0), &fold.test).view())?;
        for (&row, score) in fold.test.iter().zip(scores) {
            out[row] = score;
        }
    }
    Ok(out)
}

/// Permutation importance per declared feature: a one-hot feature's columns are shuffled
/// together (shuffling one level's column alone would make impossible rows). The shuffled
/// matrix holds, per feature, the index of the row whose values that feature takes.
fn grouped_permutation_importance(predict: &(dyn Fn(ArrayView2<'_, f64>) -> Vec<f64> + Sync), x: ArrayView2<'_, f64>, y: &[usize], groups: &[usize], n_features: usize, repeats: usize, seed: u64) -> (Vec<f64>, Vec<f64>) {
    let rows = x.nrows();
    let sources = Array2::from_shape_fn((rows, n_features), |(r, _)| r as f64);
    let expand = |sources: ArrayView2<'_, f64>| -> Vec<f64> {
        let prepared = Array2::from_shape_fn((sources.nrows(), x.ncols()), |(r, c)| x[[sources[[r, groups[c]]] as usize, c]]);
        predict(prepared.view())
    };
    match metrics::permutation_importance(expand, sources.view(), y, repeats, seed) {
        Ok(importances) => (importances.iter().map(|i| i.mean_drop).collect(), importances.iter().map(|i| i.std_drop).collect()),
        // A test split with one class has no ROC AUC to lose: the importances are undefined.
        Err(_) => (vec![f64::NAN; n_features], vec![f64::NAN; n_features]),
    }
}

fn by_segment_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("segment", DataType::Int32, false),
        Field::new("customers", DataType::Int64, false),
        Field::new("expected_churners", DataType::Float64, false),
        Field::new("mean_churn_probability", DataType::Float64, false),
        Field::new("predicted_churners", DataType::Int64, false),
        Field::new("predicted_churn_rate", DataType::Float64, false),
        Field::new("labelled_customers", DataType::Int64, false),
        Field::new("observed_churn_rate", DataType::Float64, true),
    ]))
}

/// The scores joined with a segment stage's assignments by customer id: per segment, how many
/// customers, how many are expected to churn (sum of probabilities), how many the threshold
/// flags, and the observed churn rate where labels are known.
async fn by_segment(ctx: &StageContext<'_>, scores: &RecordBatch, id: &str, segments: &str) -> Result<RecordBatch, StageFailure> {
    let session = ctx.session;
    let scored = ctx.frame_of(&format!("{}_scored_for_segments", ctx.stage_name), scores.clone()).await?;
    let assigned = session.table(segments).await?.select(vec![ident(id).alias(SEGMENT_ID_COLUMN), ident("segment")])?;
    // The sums are taken here, over the rows in customer id order: a sum of doubles depends on
    // the order it adds in, and the engine's order follows its partitions (two threads and
    // five buckets of lines gave sums a unit in the last place apart).
    let joined = scored
        .join(assigned, JoinType::Inner, &[id], &[SEGMENT_ID_COLUMN], None)?
        .sort(vec![ident(id).sort(true, false)])?
        .select(vec![
            cast(ident("segment"), DataType::Int32).alias("segment"),
            cast(ident("churn_probability"), DataType::Float64).alias("churn_probability"),
            cast(ident("predicted_churn"), DataType::Int64).alias("predicted_churn"),
            cast(ident("churned"), DataType::Float64).alias("churned"),
        ])?
        .collect()
        .await?;
    #[derive(Default)]
    struct Segment {
        customers: i64,
        scored: i64,
        probability_sum: f64,
        predicted: i64,
        labelled: i64,
        churned_sum: f64,
    }
    let mut per_segment: std::collections::BTreeMap<i32, Segment> = std::collections::BTreeMap::new();
    for batch in &joined {
        let segment = batch.column(0).as_primitive::<Int32Type>();
        let probability = batch.column(1).as_primitive::<Float64Type>();
        let predicted = batch.column(2).as_primitive::<Int64Type>();
        let churned = batch.column(3).as_primitive::<Float64Type>();
        for row in 0..batch.num_rows() {
            if segment.is_null(row) {
                continue;
            }
            let totals = per_segment.entry(segment.value(row)).or_default();
            totals.customers += 1;
            if probability.is_valid(row) {
                totals.scored += 1;
                totals.probability_sum += probability.value(row);
            }
            if predicted.is_valid(row) {
                totals.predicted += predicted.value(row);
            }
            if churned.is_valid(row) {
                totals.labelled += 1;
                totals.churned_sum += churned.value(row);
            }
        }
    }
    let mean = |sum: f64, n: i64| if n > 0 { Some(sum / n as f64) } else { None };
    let totals: Vec<(&i32, &Segment)> = per_segment.iter().collect();
    let columns: Vec<ArrayRef> = vec![
        Arc::new(Int32Array::from_iter_values(totals.iter().map(|(s, _)| **s))),
        Arc::new(Int64Array::from_iter_values(totals.iter().map(|(_, t)| t.customers))),
        Arc::new(Float64Array::from_iter_values(totals.iter().map(|(_, t)| t.probability_sum))),
        Arc::new(Float64Array::from_iter_values(totals.iter().map(|(_, t)| mean(t.probability_sum, t.scored).unwrap_or(0.0)))),
        Arc::new(Int64Array::from_iter_values(totals.iter().map(|(_, t)| t.predicted))),
        Arc::new(Float64Array::from_iter_values(totals.iter().map(|(_, t)| t.predicted as f64 / t.customers.max(1) as f64))),
        Arc::new(Int64Array::from_iter_values(totals.iter().map(|(_, t)| t.labelled))),
        Arc::new(Float64Array::from_iter(totals.iter().map(|(_, t)| mean(t.churned_sum, t.labelled)))),
    ];
    Ok(RecordBatch::try_new(by_segment_schema(), columns).map_err(|e| StageFailure { message: e.to_string() })?)
}

/// Churn per segment into the evaluation table too, so `report diff` shows it move.
fn push_by_segment(evaluation: &mut EvaluationRows, batch: &RecordBatch) {
    let segments = batch.column(0).as_primitive::<Int32Type>();
    let mean = batch.column(3).as_primitive::<Float64Type>();
    let predicted_rate = batch.column(5).as_primitive::<Float64Type>();
    let observed = batch.column(7).as_primitive::<Float64Type>();
    for row in 0..batch.num_rows() {
        let keys = Keys::segment(i64::from(segments.value(row)));
        evaluation.push(FOREST, "score", "mean_churn_probability", keys.clone(), Some(mean.value(row)));
        evaluation.push(FOREST, "score", "predicted_churn_rate", keys.clone(), Some(predicted_rate.value(row)));
        evaluation.push(FOREST, "score", "observed_churn_rate", keys, (!observed.is_null(row)).then(|| observed.value(row)));
    }
}

/// What the churn stage scores: another table (read when scoring), or the training table, whose
/// columns it then keeps from training on.
enum ToScore<'a, T> {
    OtherTable(&'a T),
    TrainingTable(FeatureData),
}
