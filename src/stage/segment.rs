//! `kind: segment` — customer segments: a declared feature preparation, k-means (or one of
//! linfa's alternatives) with k chosen on the elbow curve and checked against silhouette,
//! segment profiles ranked best → worst, segment ids that keep their meaning across runs,
//! and a saved model that `segflow assign` applies to new customers.
//!
//! ```yaml
//! - name: segments
//!   kind: segment
//!   inputs: [customer_features]          # exactly one: one row per customer
//!   id: customer_id                      # unique, never null
//!   features:                            # in this order; numeric unless one_hot
//!     recency_days: { transform: log1p, labels: [recent, lapsed] }     # [low, high]
//!     frequency:    { transform: log1p, winsorize: [0, 0.99], labels: [rare, frequent] }
//!     monetary:     { transform: signed_log1p, scaling: robust, labels: [low value, high value] }
//!     region:       { one_hot: true, max_levels: 8 }
//!   scaling: standardize                 # default of numeric features: standardize | robust | none
//!   algorithm: kmeans                    # kmeans | minibatch_kmeans | gmm | hierarchical
//!   k: auto                              # or a number
//!   k_range: [1, 15]                     # k: auto fits every k here
//!   n_init: 10
//!   max_iter: 300
//!   tol: 0.0001
//!   silhouette_sample: 10000             # exact silhouette up to this many customers
//!   revenue: monetary                    # summed for each segment's revenue share
//!   churn_label: churned                 # optional: 0/1 or boolean, for the churn rate
//!   rank_by: revenue_share               # revenue_share | size | churn_rate | {mean: col} | {median: col}
//! ```
//!
//! Results (the outputs section names the tables; the README documents their schemas):
//! `<stage>` one row per customer (id, segment, distance, second_segment);
//! `<stage>_profiles`, `<stage>_centroids`, `<stage>_migration` and `<stage>_evaluation`
//! (the k curve and fit statistics, in the run's `evaluation` table). The model is saved to
//! `<output_root>/models/<stage>/run_date=<D>/` with the run's tables, by the same commit.
//!
//! **Segment ids.** On a first run segment ids are the ranks (1 = best). When an earlier run
//! date has a saved model with the same prepared features, the new centroids are matched to
//! the previous ones (Hungarian algorithm, squared distance in the new preparation's space),
//! so a matched segment keeps its id; an unmatched one gets an id never used before. The
//! previous model is the latest run date *before* this one, so a rerun of a date matches
//! against the same model as its first run did.

mod model;
mod profile;

pub use model::{MODEL_FILE, SegmentModel};

use std::sync::Arc;

use async_trait::async_trait;
use datafusion::arrow::array::{ArrayRef, Float64Builder, Int32Builder, Int64Builder, RecordBatch, StringBuilder};
use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use ndarray::Array2;
use serde::Deserialize;

use segflow_ml::cluster::{self, Algorithm, CheckedClusterParams, ClusterParams};
use segflow_ml::kmeans::{Assignment, KChoice};
use segflow_ml::prep::{FeatureKind, FeatureSpec, Impute, Preparation, Scaling, Transform};

use super::{Artifact, BuildContext, MODELS_DIR, Stage, StageContext, StageFailure, StageKind, StageMetrics, StageOutput, StageProblem, StageResult};
use crate::config::yaml::{At, Node, OrderedMap, did_you_mean, from_node, quoted_list};
use crate::evaluation::{EvaluationRows, Keys};
use model::{PreviousRun, SegmentRecord};
use super::features::{ColumnCheck, feature_columns, is_id_type, is_numeric_type, read_features, text_views};
use profile::{RankBy, SegmentProfile};

pub struct SegmentKind;

/// Most segments `k: auto` may try: profiles, labels and the Hungarian matching are made for
/// a readable number of segments, and each k costs a full fit.
const MAX_K: usize = 50;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct SegmentParams {
    id: At<String>,
    features: OrderedMap<Option<FeatureParams>>,
    #[serde(default)]
    scaling: Option<Scaling>,
    #[serde(default)]
    algorithm: Option<Algorithm>,
    #[serde(default)]
    k: Option<At<KSetting>>,
    #[serde(default)]
    k_range: Option<At<Vec<usize>>>,
    #[serde(default)]
    n_init: Option<usize>,
    #[serde(default)]
    max_iter: Option<usize>,
    #[serde(default)]
    tol: Option<f64>,
    #[serde(default)]
    batch_size: Option<usize>,
    #[serde(default)]
    silhouette_sample: Option<usize>,
    #[serde(default)]
    revenue: Option<At<String>>,
    #[serde(default)]
    churn_label: Option<At<String>>,
    #[serde(default)]
    rank_by: Option<At<RankBy>>,
    /// |z-score| from which a feature names a segment (default 0.5).
    #[serde(default)]
    label_threshold: Option<At<f64>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FeatureParams {
    #[serde(default)]
    transform: Option<Transform>,
    #[serde(default)]
    winsorize: Option<At<Vec<f64>>>,
    #[serde(default)]
    scaling: Option<Scaling>,
    #[serde(default)]
    nulls: Option<Impute>,
    #[serde(default)]
    one_hot: bool,
    #[serde(default)]
    max_levels: Option<usize>,
    /// Words for a segment well below / above average on this feature: `[low, high]`.
    #[serde(default)]
    labels: Option<At<Vec<String>>>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
enum KSetting {
    Fixed(usize),
    Word(String),
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum KPlan {
    Fixed(usize),
    Auto { min: usize, max: usize },
}

/// A declared feature with the words that describe it.
#[derive(Debug, Clone)]
struct PlannedFeature {
    name: At<String>,
    spec: FeatureSpec,
    /// (low, high) words for segment labels; numeric features only.
    words: (String, String),
}

impl PlannedFeature {
    fn is_numeric(&self) -> bool {
        matches!(self.spec, FeatureSpec::Numeric { .. })
    }
}

#[derive(Debug)]
struct SegmentStage {
    input: String,
    id: At<String>,
    features: Vec<PlannedFeature>,
    cluster: CheckedClusterParams,
    k: KPlan,
    revenue: Option<At<String>>,
    churn_label: Option<At<String>>,
    rank_by: RankBy,
    label_threshold: f64,
}

const DEFAULT_MAX_LEVELS: usize = 10;

impl StageKind for SegmentKind {
    fn name(&self) -> &'static str {
        "segment"
    }

    fn build(&self, params: &Node, ctx: &BuildContext<'_>) -> Result<Box<dyn Stage>, Vec<StageProblem>> {
        let params: SegmentParams = from_node(params)
            .map_err(|e| vec![StageProblem { file: None, pos: e.pos, message: e.message, suggestion: e.suggestion }])?;
        let mut problems = Vec::new();
        if ctx.inputs.len() != 1 {
            problems.push(StageProblem {
                file: None,
                pos: None,
                message: format!("a segment stage reads exactly one input (one row per customer), found {}", ctx.inputs.len()),
                suggestion: None,
            });
        }
        let default_scaling = params.scaling.unwrap_or(Scaling::Standardize);
        let mut features = Vec::new();
        for (name, spec) in params.features.0 {
            let spec = spec.unwrap_or_default();
            let at = |message: String| StageProblem::at(name.pos, message);
            let words = match &spec.labels {
                Some(labels) if labels.len() == 2 => (labels[0].clone(), labels[1].clone()),
                Some(labels) => {
                    problems.push(StageProblem::at(labels.pos, format!("feature `{}`: `labels` takes two words, [low, high]; found {}", name.value, labels.len())));
                    continue;
                }
                None => (format!("low {}", name.value), format!("high {}", name.value)),
            };
            let planned = if spec.one_hot {
                let numeric_only = [
                    ("transform", spec.transform.is_some()),
                    ("winsorize", spec.winsorize.is_some()),
                    ("scaling", spec.scaling.is_some()),
                    ("nulls", spec.nulls.is_some()),
                    ("labels", spec.labels.is_some()),
                ];
                for (key, given) in numeric_only {
                    if given {
                        problems.push(at(format!("feature `{}` is one-hot: `{key}` applies to numeric features only", name.value)));
                    }
                }
                let max_levels = spec.max_levels.unwrap_or(DEFAULT_MAX_LEVELS);
                if max_levels == 0 {
                    problems.push(at(format!("feature `{}`: `max_levels` must be at least 1", name.value)));
                }
                FeatureSpec::Categorical { name: name.value.clone(), max_levels }
            } else {
                if spec.max_levels.is_some() {
                    problems.push(at(format!("feature `{}`: `max_levels` applies to `one_hot: true` features only", name.value)));
                }
                let winsorize = match &spec.winsorize {
                    None => None,
                    Some(q) => match q.value[..] {
                        [lower, upper] if (0.0..=1.0).contains(&lower) && (0.0..=1.0).contains(&upper) && lower < upper => Some((lower, upper)),
                        _ => {
                            problems.push(StageProblem::at(q.pos, format!("feature `{}`: `winsorize` takes two quantiles [lower, upper] with 0 <= lower < upper <= 1, e.g. [0.01, 0.99]", name.value)));
                            None
                        }
                    },
                };
                if spec.nulls == Some(Impute::Missing) {
                    problems.push(at(format!("feature `{}`: k-means needs a value for every customer; `nulls: missing` is for the churn stage's trees (use `median`, `mean` or `zero`)", name.value)));
                }
                FeatureSpec::Numeric {
                    name: name.value.clone(),
                    transform: spec.transform.unwrap_or(Transform::None),
                    winsorize,
                    scaling: spec.scaling.unwrap_or(default_scaling),
                    impute: spec.nulls.unwrap_or(Impute::Fail),
                }
            };
            features.push(PlannedFeature { name, spec: planned, words });
        }
        if features.is_empty() {
            problems.push(StageProblem { file: None, pos: None, message: "`features` is empty: name the columns that describe a customer".to_string(), suggestion: None });
        }

        let k = match &params.k {
            None => Ok(KPlan::Auto { min: 1, max: 15 }),
            Some(At { value: KSetting::Fixed(k), pos }) if (1..=MAX_K).contains(k) => {
                if let Some(range) = &params.k_range {
                    problems.push(StageProblem::at(range.pos, format!("`k_range` is for `k: auto`; this stage fixes k = {k} (line {})", pos.line)));
                }
                Ok(KPlan::Fixed(*k))
            }
            Some(At { value: KSetting::Word(w), .. }) if w == "auto" => Ok(KPlan::Auto { min: 1, max: 15 }),
            Some(other) => Err(StageProblem::at(other.pos, format!("`k` is `auto` or a number of segments from 1 to {MAX_K}"))),
        };
        let k = match (k, &params.k_range) {
            (Ok(KPlan::Auto { .. }), Some(range)) => match range.value[..] {
                [min, max] if 1 <= min && min <= max && max <= MAX_K => KPlan::Auto { min, max },
                _ => {
                    problems.push(StageProblem::at(range.pos, format!("`k_range` is [min, max] with 1 <= min <= max <= {MAX_K}, e.g. [1, 15]")));
                    KPlan::Auto { min: 1, max: 15 }
                }
            },
            (Ok(plan), _) => plan,
            (Err(p), _) => {
                problems.push(p);
                KPlan::Auto { min: 1, max: 15 }
            }
        };

        let mut cluster_params = ClusterParams::new(params.algorithm.unwrap_or(Algorithm::KMeans));
        if let Some(n) = params.n_init {
            cluster_params.n_init = n;
        }
        if let Some(n) = params.max_iter {
            cluster_params.max_iter = n;
        }
        if let Some(t) = params.tol {
            cluster_params.tol = t;
        }
        if let Some(b) = params.batch_size {
            cluster_params.batch_size = b;
        }
        if let Some(s) = params.silhouette_sample {
            cluster_params.silhouette_sample_size = s;
        }
        let cluster = match cluster_params.check() {
            Ok(checked) => Some(checked),
            Err(e) => {
                problems.push(StageProblem { file: None, pos: None, message: e.to_string(), suggestion: None });
                None
            }
        };

        let rank_by_pos = params.rank_by.as_ref().map(|r| r.pos);
        let rank_by = params.rank_by.map(|r| r.value).unwrap_or(RankBy::RevenueShare);
        let rank_problem = |message: String, suggestion: Option<String>| StageProblem { file: None, pos: rank_by_pos, message, suggestion };
        match &rank_by {
            RankBy::RevenueShare if params.revenue.is_none() => problems.push(rank_problem(
                "segments are ranked by revenue share unless `rank_by` says otherwise, which needs `revenue`: the column holding each customer's revenue; declare it, or set `rank_by: size`".to_string(),
                None,
            )),
            RankBy::ChurnRate if params.churn_label.is_none() => {
                problems.push(rank_problem("`rank_by: churn_rate` needs `churn_label`: the column that says whether a customer churned".to_string(), None))
            }
            RankBy::Mean(column) | RankBy::Median(column) => {
                let known = features.iter().any(|f| f.is_numeric() && f.name.value == *column) || params.revenue.as_ref().is_some_and(|r| r.value == *column);
                if !known {
                    let candidates: Vec<&str> = features.iter().filter(|f| f.is_numeric()).map(|f| f.name.value.as_str()).chain(params.revenue.as_ref().map(|r| r.value.as_str())).collect();
                    problems.push(rank_problem(
                        format!("`rank_by` uses `{column}`, which is neither a numeric feature nor the revenue column; those are: {}", quoted_list(candidates.iter().copied())),
                        did_you_mean(column, candidates.iter().copied()),
                    ));
                }
            }
            _ => {}
        }
        let label_threshold = match params.label_threshold {
            Some(t) if t.value.is_finite() && t.value >= 0.0 => t.value,
            Some(t) => {
                problems.push(StageProblem::at(t.pos, "`label_threshold` is a z-score distance from the average, >= 0 (default 0.5)".to_string()));
                0.5
            }
            None => 0.5,
        };
        let Some(cluster) = cluster else { return Err(problems) };
        if !problems.is_empty() {
            return Err(problems);
        }
        Ok(Box::new(SegmentStage {
            input: ctx.inputs.first().cloned().unwrap_or_default(),
            id: params.id,
            features,
            cluster,
            k,
            revenue: params.revenue,
            churn_label: params.churn_label,
            rank_by,
            label_threshold,
        }))
    }
}

#[async_trait]
impl Stage for SegmentStage {
    fn secondary_results(&self) -> &'static [&'static str] {
        &["profiles", "centroids", "migration", crate::evaluation::PART]
    }

    async fn plan(&self, ctx: &StageContext<'_>) -> Result<Vec<StageResult>, Vec<StageProblem>> {
        let problem = |message: String| vec![StageProblem { file: None, pos: None, message, suggestion: None }];
        let input = ctx.session.table(self.input.as_str()).await.map_err(|e| problem(crate::engine::describe_datafusion_error(&e)))?;
        let schema = input.schema().inner().clone();
        let mut problems = Vec::new();
        let mut check = ColumnCheck { table: &self.input, schema: schema.clone(), problems: &mut problems };
        check.check(&self.id, "id column", is_id_type, "an integer or string id");
        check.features(self.features.iter().map(|f| (&f.name, f.is_numeric())));
        if let Some(revenue) = &self.revenue {
            check.check(revenue, "revenue column", is_numeric_type, "a number");
        }
        if let Some(label) = &self.churn_label {
            check.check(label, "churn label", is_numeric_type, "a boolean or 0/1");
        }
        if !problems.is_empty() {
            return Err(problems);
        }
        let id_type = schema.field_with_name(&self.id.value).map(|f| f.data_type().clone()).unwrap_or(DataType::Utf8);
        let empty = |schema: SchemaRef| ctx.session.read_batch(RecordBatch::new_empty(schema)).map_err(|e| problem(e.to_string()));
        Ok(vec![
            StageResult { name: ctx.stage_name.to_string(), frame: empty(customers_schema(&self.id.value, &id_type))? },
            StageResult { name: format!("{}_profiles", ctx.stage_name), frame: empty(self.profiles_schema())? },
            StageResult { name: format!("{}_centroids", ctx.stage_name), frame: empty(centroids_schema())? },
            StageResult { name: format!("{}_migration", ctx.stage_name), frame: empty(migration_schema())? },
            StageResult { name: format!("{}_{}", ctx.stage_name, crate::evaluation::PART), frame: empty(crate::evaluation::schema())? },
        ])
    }

    async fn run(&self, ctx: &StageContext<'_>) -> Result<StageOutput, StageFailure> {
        let fail = |message: String| StageFailure { message };
        let mut phases = super::Phases::start(ctx.stage_name);
        let input = ctx.session.table(self.input.as_str()).await?;
        let numeric: Vec<String> = self.numeric_columns();
        let categorical: Vec<String> = self.features.iter().filter(|f| !f.is_numeric()).map(|f| f.name.value.clone()).collect();
        let data = read_features(input, &self.id.value, &numeric, &categorical, &format!("input `{}`", self.input)).await.map_err(fail)?;
        let rows = data.len();
        if rows == 0 {
            return Err(fail(format!("input `{}` has no rows: there are no customers to segment", self.input)));
        }

        let specs: Vec<FeatureSpec> = self.features.iter().map(|f| f.spec.clone()).collect();
        let text = text_views(&data);
        let kinds: Vec<(&str, FeatureKind)> = specs.iter().map(|s| (s.name(), s.kind())).collect();
        let columns = feature_columns(&data, &text, &kinds);
        let preparation = Preparation::fit(&specs, &columns).map_err(|e| fail(format!("feature preparation: {e}")))?;
        let x = preparation.transform(&columns).map_err(|e| fail(format!("feature preparation: {e}")))?;
        phases.done("features read and prepared");

        // The stage's own seed, derived from the pipeline's: set here, where it is known.
        let cluster = ClusterParams { seed: ctx.seed, ..self.cluster.params().clone() }.check().map_err(|e| fail(e.to_string()))?;
        let algorithm = cluster.params().algorithm;
        let mut evaluation = EvaluationRows::default();
        let model_name = algorithm.name();
        // The silhouette of the chosen k: the k search has scored it already.
        let (fit, choice, searched_silhouette) = match self.k {
            KPlan::Fixed(k) => {
                if k > rows {
                    return Err(fail(format!("k = {k} segments, but `{}` has only {rows} customers", self.input)));
                }
                let fit = cluster::fit(&cluster, x.view(), k).map_err(|e| fail(e.to_string()))?;
                (fit, None, None)
            }
            KPlan::Auto { min, max } => {
                if min > rows {
                    return Err(fail(format!("k_range starts at {min}, but `{}` has only {rows} customers", self.input)));
                }
                let max = if max > rows {
                    tracing::warn!(stage = ctx.stage_name, k_max = max, customers = rows, "fewer customers than the k range's end: trying k up to the number of customers");
                    rows
                } else {
                    max
                };
                let search = cluster::search_k(&cluster, x.view(), min, max).map_err(|e| fail(e.to_string()))?;
                for point in &search.curve {
                    evaluation.push(model_name, "all", "inertia", Keys::k(point.k), Some(point.inertia));
                    evaluation.push(model_name, "all", "silhouette", Keys::k(point.k), point.silhouette);
                }
                let choice = KChoiceRecord { k_min: min, k_max: max, knee_k: search.knee_k, chosen_k: search.chosen_k, rule: describe_choice(search.reason).to_string() };
                tracing::info!(stage = ctx.stage_name, k = search.chosen_k, knee = ?search.knee_k, rule = %choice.rule, "k chosen");
                let silhouette = search.curve.iter().find(|p| p.k == search.chosen_k).map(|p| p.silhouette);
                (search.fit, Some(choice), silhouette)
            }
        };
        phases.done("fitted");
        let k = fit.centroids.nrows();
        let assignments = fit.training_assignments(x.view()).map_err(|e| fail(e.to_string()))?;
        let silhouette = match searched_silhouette {
            Some(silhouette) => silhouette,
            None if k >= 2 => segflow_ml::kmeans::silhouette_score(x.view(), &fit.labels, self.cluster.params().silhouette_sample_size, ctx.seed).ok(),
            None => None,
        };

        phases.done("silhouette of the chosen k");

        // Profiles, ranks and labels, then ids: matched to the previous run's where possible.
        let profiles = profile::profiles(&profile::ProfileInput {
            features: &self.features.iter().map(|f| (f.name.value.as_str(), f.is_numeric(), (f.words.0.as_str(), f.words.1.as_str()))).collect::<Vec<_>>(),
            data: &data,
            labels: &fit.labels,
            k,
            prepared: x.view(),
            prepared_names: &preparation.output_names(),
            centroids: fit.centroids.view(),
            revenue: self.revenue.as_ref().map(|r| r.value.as_str()),
            churn_label: self.churn_label.as_ref().map(|c| c.value.as_str()),
            rank_by: &self.rank_by,
            label_threshold: self.label_threshold,
        });
        let previous = PreviousRun::find(ctx.output_root, ctx.stage_name, ctx.run_date).map_err(fail)?;
        let (ids, next_id) = match &previous {
            Some(prev) if prev.comparable_with(&preparation) => {
                tracing::info!(stage = ctx.stage_name, previous_run_date = %prev.run_date, "segment ids matched to the previous run's centroids");
                model::match_ids(&prev.model, &preparation, fit.centroids.view(), &profiles).map_err(fail)?
            }
            Some(prev) => {
                tracing::warn!(stage = ctx.stage_name, previous_run_date = %prev.run_date, "the previous model has other features: segment ids start afresh and no migration is written");
                model::ids_by_rank(&profiles, prev.model.next_segment_id)
            }
            None => model::ids_by_rank(&profiles, 1),
        };
        let migration = match &previous {
            Some(prev) if prev.comparable_with(&preparation) => Some((prev.run_date.clone(), prev.migration(&data.ids, &fit.labels, &ids).map_err(fail)?)),
            _ => None,
        };

        let prepared_names = preparation.output_names();
        for p in &profiles {
            let segment = i64::from(ids[p.index]);
            evaluation.push(model_name, "all", "customers", Keys::segment(segment), Some(p.customers as f64));
            // The centroid's distance from the average customer, per prepared feature: the
            // report's heat map, and a diff shows a segment drifting.
            for (name, z) in prepared_names.iter().zip(&p.z_scores) {
                evaluation.push(model_name, "all", "centroid_z_score", Keys { segment: Some(segment), feature: Some(name.clone()), ..Keys::default() }, Some(*z));
            }
        }
        if let Some((_, rows)) = &migration {
            for r in rows {
                let keys = Keys { segment: r.to.map(i64::from), previous_segment: r.from.map(i64::from), ..Keys::default() };
                let metric = match (r.from, r.to) {
                    (Some(_), Some(_)) => "customers_moved",
                    (None, _) => "customers_new",
                    (_, None) => "customers_gone",
                };
                evaluation.push(model_name, "all", metric, keys, Some(r.customers as f64));
            }
        }
        evaluation.push(model_name, "all", "k", Keys::default(), Some(k as f64));
        // A k search has recorded the chosen k's inertia and silhouette with the curve already.
        if choice.is_none() {
            evaluation.push(model_name, "all", "inertia", Keys::k(k), Some(fit.inertia));
            evaluation.push(model_name, "all", "silhouette", Keys::k(k), silhouette);
        }
        if let Some(n) = fit.n_iter {
            evaluation.push(model_name, "all", "n_iter", Keys::default(), Some(n as f64));
        }
        if let Some(c) = fit.converged {
            evaluation.push(model_name, "all", "converged", Keys::default(), Some(if c { 1.0 } else { 0.0 }));
        }

        let segments: Vec<SegmentRecord> = profiles
            .iter()
            .map(|p| SegmentRecord { id: ids[p.index], rank: p.rank, label: p.label.clone(), customers: p.customers as u64 })
            .collect();
        let model = SegmentModel::new(model::ModelParts {
            stage: ctx.stage_name,
            run_id: ctx.run_id,
            run_date: ctx.run_date,
            id_column: &self.id.value,
            id_type: data.ids.data_type(),
            algorithm,
            seed: ctx.seed,
            k_choice: choice.map(|c| model::KChoiceRecord { k_min: c.k_min, k_max: c.k_max, knee_k: c.knee_k, chosen_k: c.chosen_k, rule: c.rule }),
            preparation: preparation.clone(),
            cluster_model: fit.model.clone(),
            segments,
            next_segment_id: next_id,
        });

        let customers = customers_batch(&self.id.value, &data.ids, &assignments, &ids).map_err(|e| fail(e.to_string()))?;
        let profiles_batch = self.profiles_batch(&profiles, &ids).map_err(|e| fail(e.to_string()))?;
        let centroids = centroids_batch(&preparation, &fit.centroids, &profiles, &ids).map_err(|e| fail(e.to_string()))?;
        let migration_batch = migration_to_batch(migration.as_ref()).map_err(|e| fail(e.to_string()))?;
        let evaluation_batch = evaluation.to_batch(ctx.run_id, ctx.stage_name)?;

        let assignments_file = model::assignments_parquet(&customers).map_err(fail)?;
        let artifact = Artifact {
            folder: format!("{MODELS_DIR}/{}", ctx.stage_name),
            files: vec![(MODEL_FILE.to_string(), model.to_json().map_err(fail)?.into()), (model::ASSIGNMENTS_FILE.to_string(), assignments_file.into())],
        };

        phases.done("profiles, ids and tables");
        let mut metrics = StageMetrics::new();
        metrics.insert("customers".into(), rows as i64);
        metrics.insert("segments".into(), k as i64);
        if let Some((_, m)) = &migration {
            metrics.insert("customers_changed_segment".into(), m.iter().filter(|r| r.from.is_some() && r.to.is_some() && r.from != r.to).map(|r| r.customers).sum());
        }
        tracing::info!(stage = ctx.stage_name, customers = rows, k, inertia = fit.inertia, silhouette = ?silhouette, "segments fitted");
        Ok(StageOutput {
            results: vec![
                StageResult { name: ctx.stage_name.to_string(), frame: ctx.frame_of(ctx.stage_name, customers).await? },
                StageResult { name: format!("{}_profiles", ctx.stage_name), frame: ctx.frame_of(&format!("{}_profiles", ctx.stage_name), profiles_batch).await? },
                StageResult { name: format!("{}_centroids", ctx.stage_name), frame: ctx.frame_of(&format!("{}_centroids", ctx.stage_name), centroids).await? },
                StageResult { name: format!("{}_migration", ctx.stage_name), frame: ctx.frame_of(&format!("{}_migration", ctx.stage_name), migration_batch).await? },
                StageResult { name: format!("{}_{}", ctx.stage_name, crate::evaluation::PART), frame: ctx.frame_of(&format!("{}_{}", ctx.stage_name, crate::evaluation::PART), evaluation_batch).await? },
            ],
            metrics,
            artifacts: vec![artifact],
        })
    }
}


struct KChoiceRecord {
    k_min: usize,
    k_max: usize,
    knee_k: Option<usize>,
    chosen_k: usize,
    rule: String,
}

fn describe_choice(reason: KChoice) -> &'static str {
    match reason {
        KChoice::Knee => "knee of the elbow curve (its silhouette within 0.1 of the best)",
        KChoice::SilhouetteOverKnee => "best silhouette (the knee's silhouette was more than 0.1 below it)",
        KChoice::SilhouetteNoKnee => "best silhouette (the elbow curve has no knee)",
        KChoice::Smallest => "smallest k of the range (no knee and no silhouette)",
    }
}

impl SegmentStage {
    /// Numeric columns read from the input: numeric features, then revenue and churn label.
    fn numeric_columns(&self) -> Vec<String> {
        let mut columns: Vec<String> = self.features.iter().filter(|f| f.is_numeric()).map(|f| f.name.value.clone()).collect();
        for extra in [&self.revenue, &self.churn_label].into_iter().flatten() {
            if !columns.contains(&extra.value) {
                columns.push(extra.value.clone());
            }
        }
        columns
    }

    fn profiles_schema(&self) -> SchemaRef {
        let mut fields = vec![
            Field::new("segment", DataType::Int32, false),
            Field::new("rank", DataType::Int32, false),
            Field::new("label", DataType::Utf8, false),
            Field::new("customers", DataType::Int64, false),
            Field::new("share", DataType::Float64, false),
            Field::new("revenue", DataType::Float64, true),
            Field::new("revenue_share", DataType::Float64, true),
            Field::new("churn_rate", DataType::Float64, true),
            Field::new("rank_value", DataType::Float64, true),
        ];
        for f in &self.features {
            if f.is_numeric() {
                fields.push(Field::new(format!("mean_{}", f.name.value), DataType::Float64, true));
                fields.push(Field::new(format!("median_{}", f.name.value), DataType::Float64, true));
            } else {
                fields.push(Field::new(format!("top_{}", f.name.value), DataType::Utf8, true));
            }
        }
        Arc::new(Schema::new(fields))
    }

    fn profiles_batch(&self, profiles: &[SegmentProfile], ids: &[i32]) -> Result<RecordBatch, datafusion::arrow::error::ArrowError> {
        let n = profiles.len();
        let mut segment = Int32Builder::with_capacity(n);
        let mut rank = Int32Builder::with_capacity(n);
        let mut label = StringBuilder::new();
        let mut customers = Int64Builder::with_capacity(n);
        let mut share = Float64Builder::with_capacity(n);
        let mut revenue = Float64Builder::with_capacity(n);
        let mut revenue_share = Float64Builder::with_capacity(n);
        let mut churn_rate = Float64Builder::with_capacity(n);
        let mut rank_value = Float64Builder::with_capacity(n);
        let mut per_feature: Vec<ArrayBuilders> = self.features.iter().map(|f| if f.is_numeric() { ArrayBuilders::Numeric(Float64Builder::new(), Float64Builder::new()) } else { ArrayBuilders::Text(StringBuilder::new()) }).collect();
        // Best first: the order people read a profile table in.
        let mut ordered: Vec<&SegmentProfile> = profiles.iter().collect();
        ordered.sort_by_key(|p| p.rank);
        for p in ordered {
            segment.append_value(ids[p.index]);
            rank.append_value(p.rank as i32);
            label.append_value(&p.label);
            customers.append_value(p.customers as i64);
            share.append_value(p.share);
            revenue.append_option(p.revenue);
            revenue_share.append_option(p.revenue_share);
            churn_rate.append_option(p.churn_rate);
            rank_value.append_option(p.rank_value.filter(|v| v.is_finite()));
            for (builders, stats) in per_feature.iter_mut().zip(&p.features) {
                match (builders, stats) {
                    (ArrayBuilders::Numeric(mean, median), profile::FeatureStats::Numeric { mean: m, median: md }) => {
                        mean.append_option(*m);
                        median.append_option(*md);
                    }
                    (ArrayBuilders::Text(top), profile::FeatureStats::Categorical { top: t }) => top.append_option(t.as_deref()),
                    (ArrayBuilders::Numeric(mean, median), _) => {
                        mean.append_null();
                        median.append_null();
                    }
                    (ArrayBuilders::Text(top), _) => top.append_null(),
                }
            }
        }
        let mut columns: Vec<ArrayRef> = vec![
            Arc::new(segment.finish()),
            Arc::new(rank.finish()),
            Arc::new(label.finish()),
            Arc::new(customers.finish()),
            Arc::new(share.finish()),
            Arc::new(revenue.finish()),
            Arc::new(revenue_share.finish()),
            Arc::new(churn_rate.finish()),
            Arc::new(rank_value.finish()),
        ];
        for builders in per_feature {
            match builders {
                ArrayBuilders::Numeric(mut mean, mut median) => {
                    columns.push(Arc::new(mean.finish()));
                    columns.push(Arc::new(median.finish()));
                }
                ArrayBuilders::Text(mut top) => columns.push(Arc::new(top.finish())),
            }
        }
        RecordBatch::try_new(self.profiles_schema(), columns)
    }
}

enum ArrayBuilders {
    Numeric(Float64Builder, Float64Builder),
    Text(StringBuilder),
}

/// The schema of the per-customer table, shared with `segflow assign`.
pub fn customers_schema(id_column: &str, id_type: &DataType) -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new(id_column, id_type.clone(), false),
        Field::new("segment", DataType::Int32, false),
        Field::new("distance", DataType::Float64, false),
        Field::new("second_segment", DataType::Int32, true),
    ]))
}

/// One row per customer: its segment id, the distance to that segment's centroid, and the
/// second-nearest segment (how close the customer is to moving).
pub fn customers_batch(id_column: &str, customer_ids: &ArrayRef, assignments: &[Assignment], ids: &[i32]) -> Result<RecordBatch, datafusion::arrow::error::ArrowError> {
    let n = assignments.len();
    let mut segment = Int32Builder::with_capacity(n);
    let mut distance = Float64Builder::with_capacity(n);
    let mut second = Int32Builder::with_capacity(n);
    for a in assignments {
        segment.append_value(ids[a.segment]);
        distance.append_value(a.distance);
        second.append_option(a.second_segment.map(|s| ids[s]));
    }
    RecordBatch::try_new(
        customers_schema(id_column, customer_ids.data_type()),
        vec![customer_ids.clone(), Arc::new(segment.finish()), Arc::new(distance.finish()), Arc::new(second.finish())],
    )
}

fn centroids_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("segment", DataType::Int32, false),
        Field::new("feature", DataType::Utf8, false),
        Field::new("value", DataType::Float64, false),
        Field::new("z_score", DataType::Float64, false),
        Field::new("original_value", DataType::Float64, false),
    ]))
}

/// Long format: one row per segment and prepared feature. `value` is the centroid in the
/// space the model works in, `z_score` how far it is from the average customer there, and
/// `original_value` the centroid back in the feature's own units (a share for one-hot columns).
fn centroids_batch(preparation: &Preparation, centroids: &Array2<f64>, profiles: &[SegmentProfile], ids: &[i32]) -> Result<RecordBatch, datafusion::arrow::error::ArrowError> {
    let names = preparation.output_names();
    let mut segment = Int32Builder::new();
    let mut feature = StringBuilder::new();
    let mut value = Float64Builder::new();
    let mut z = Float64Builder::new();
    let mut original = Float64Builder::new();
    let mut ordered: Vec<&SegmentProfile> = profiles.iter().collect();
    ordered.sort_by_key(|p| ids[p.index]);
    for p in ordered {
        let row = centroids.row(p.index);
        let originals = preparation.to_original_units(row);
        for (j, name) in names.iter().enumerate() {
            segment.append_value(ids[p.index]);
            feature.append_value(name);
            value.append_value(row[j]);
            z.append_value(p.z_scores.get(j).copied().unwrap_or(0.0));
            original.append_value(originals.get(j).copied().unwrap_or(f64::NAN));
        }
    }
    RecordBatch::try_new(
        centroids_schema(),
        vec![Arc::new(segment.finish()), Arc::new(feature.finish()), Arc::new(value.finish()), Arc::new(z.finish()), Arc::new(original.finish())],
    )
}

fn migration_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("previous_run_date", DataType::Utf8, false),
        Field::new("from_segment", DataType::Int32, true),
        Field::new("to_segment", DataType::Int32, true),
        Field::new("customers", DataType::Int64, false),
    ]))
}

/// `from_segment` null: a customer new since the previous run; `to_segment` null: a customer
/// no longer in the input. No rows when there is no comparable previous run.
fn migration_to_batch(migration: Option<&(String, Vec<model::MigrationRow>)>) -> Result<RecordBatch, datafusion::arrow::error::ArrowError> {
    let mut date = StringBuilder::new();
    let mut from = Int32Builder::new();
    let mut to = Int32Builder::new();
    let mut customers = Int64Builder::new();
    if let Some((previous_date, rows)) = migration {
        for r in rows {
            date.append_value(previous_date);
            from.append_option(r.from);
            to.append_option(r.to);
            customers.append_value(r.customers);
        }
    }
    RecordBatch::try_new(migration_schema(), vec![Arc::new(date.finish()), Arc::new(from.finish()), Arc::new(to.finish()), Arc::new(customers.finish())])
}
