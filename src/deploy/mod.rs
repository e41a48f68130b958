//! Saved models applied to new customers, without refitting: `segflow assign` (segments)
//! and `segflow score` (churn).
//!
//! The model's own preparation (imputation values, winsor bounds, scaling statistics,
//! one-hot levels) is applied to INPUT unchanged. `assign` sends each customer to a segment
//! by the model's rule (nearest centroid; highest posterior for `gmm`) and writes the segment
//! stage's per-customer columns — id, segment, distance, second_segment. `score` writes the
//! churn stage's per-customer columns — id, split (`score`), churn probability, risk decile
//! (within INPUT), the decision at the model's threshold and the top contributing features.
//! OUT is written by the same commit protocol as a pipeline's tables: staged beside OUT under
//! `_segflow/staging/`, then swapped in whole with `_manifest.json` and `_SUCCESS`.
//!
//! With `--engine` on Ballista, `assign` and `score` run on the executors: they read INPUT and
//! assign or score it batch by batch through the `segflow_assign` and `segflow_score` SQL
//! functions ([`udf`]); segflow streams the rows into OUT and never holds the whole table.

pub mod udf;

use std::path::{Path, PathBuf};

use datafusion::arrow::array::RecordBatch;
use datafusion::arrow::datatypes::{DataType, Schema, SchemaRef};
use datafusion::functions::core::expr_fn::get_field;
use datafusion::logical_expr::{col, ident, lit};
use datafusion::prelude::{DataFrame, SessionContext};
use segflow_ml::prep::{FeatureKind, Preparation};

use crate::engine::{self, Engine, EngineOptions, InputLocation};
use crate::sink::{self, TableTarget};
use crate::stage::churn::{self, ChurnModel};
use crate::stage::features::{FeatureData, feature_columns, for_each_feature_block, read_features, text_views};
use crate::stage::segment::{self, SegmentModel};

/// Everything that can stop an assignment or a scoring, with whose fault it is.
#[derive(Debug, thiserror::Error)]
pub enum DeployError {
    /// The model, the input or the output path is unusable: fix the command (exit 2).
    #[error("{0}")]
    Invalid(String),
    /// Reading, computing or writing failed (exit 1).
    #[error("{0}")]
    Failed(String),
}

#[derive(Debug, Clone)]
pub struct DeploySummary {
    pub rows: u64,
    pub path: PathBuf,
}

pub async fn assign(model_path: &Path, input: &Path, output: &Path, run_id: &str, engine_options: &EngineOptions) -> Result<DeploySummary, DeployError> {
    let model = SegmentModel::load(model_path).map_err(DeployError::Invalid)?;
    if engine_options.engine != Engine::Local {
        return assign_on_cluster(&model, input, output, run_id, engine_options).await;
    }
    let (session, data, x) = prepared_input(input, &model.id_column, &model.preparation, engine_options).await?;
    let assignments = model
        .cluster_model
        .assign(x.view())
        .map_err(|e| DeployError::Failed(format!("assigning input {}: {e}", input.display())))?;
    let batch = segment::customers_batch(&model.id_column, &data.ids, &assignments, &model.segment_ids()).map_err(|e| DeployError::Failed(e.to_string()))?;
    commit(&session, batch, output, run_id, &model.run_date).await
}

pub async fn score(model_path: &Path, input: &Path, output: &Path, run_id: &str, engine_options: &EngineOptions) -> Result<DeploySummary, DeployError> {
    let model = ChurnModel::load(model_path).map_err(DeployError::Invalid)?;
    if engine_options.engine != Engine::Local {
        return score_on_cluster(&model, model_path, input, output, run_id, engine_options).await;
    }
    // Laid out once for every block, the stored trees dropped.
    let scorer = model.into_scorer().map_err(DeployError::Invalid)?;
    let model = scorer.model();
    let (session, frame, what) = input_frame(input, &model.id_column, &model.preparation, engine_options).await?;
    let features: Vec<(&str, FeatureKind)> = model.preparation.features().iter().map(|f| (f.name(), f.kind())).collect();
    let (numeric, categorical) = of_kinds(&features);
    let mut table = churn::ScoresTable::new(&model.id_column, model.explain);
    // Bad input is `Invalid`; the model failing on prepared rows is `Failed`.
    let mut scoring_failed = None;
    // A block of customers at a time, so that only the model and one block are in memory.
    let read = for_each_feature_block(frame, &model.id_column, &numeric, &categorical, &what, churn::SCORE_BLOCK_ROWS, |block, first_row| {
        let text = text_views(&block);
        let scores = scorer.score_block(&feature_columns(&block, &text, &features), first_row).map_err(|e| match e {
            churn::BlockScoreError::Values(e) => format!("{what}: {e}"),
            churn::BlockScoreError::Model(e) => {
                let message = format!("scoring input {}: {e}", input.display());
                scoring_failed = Some(message.clone());
                message
            }
        })?;
        table.push(&block.ids, &scores, |_| "score", |_| None);
        Ok(())
    })
    .await;
    match (read, scoring_failed) {
        (_, Some(message)) => return Err(DeployError::Failed(message)),
        (Err(message), None) => return Err(DeployError::Invalid(message)),
        (Ok(()), None) => {}
    }
    let batch = table.finish().map_err(|e| DeployError::Failed(e.to_string()))?;
    commit(&session, batch, output, run_id, &model.run_date).await
}

/// Reads INPUT, checks it has every column the model was fitted on, and prepares it with the
/// model's own preparation.
async fn prepared_input(input: &Path, id_column: &str, preparation: &Preparation, engine_options: &EngineOptions) -> Result<(SessionContext, FeatureData, ndarray::Array2<f64>), DeployError> {
    let (session, frame, what) = input_frame(input, id_column, preparation, engine_options).await?;
    let features: Vec<(&str, FeatureKind)> = preparation.features().iter().map(|f| (f.name(), f.kind())).collect();
    let (numeric, categorical) = of_kinds(&features);
    let data = read_features(frame, id_column, &numeric, &categorical, &what).await.map_err(DeployError::Invalid)?;
    let text = text_views(&data);
    let x = preparation.transform(&feature_columns(&data, &text, &features)).map_err(|e| DeployError::Invalid(format!("{what}: {e}")))?;
    Ok((session, data, x))
}

/// The names of the numeric features, then of the categorical ones.
fn of_kinds(features: &[(&str, FeatureKind)]) -> (Vec<String>, Vec<String>) {
    let of_kind = |kind: FeatureKind| features.iter().filter(|(_, k)| *k == kind).map(|(name, _)| name.to_string()).collect::<Vec<_>>();
    (of_kind(FeatureKind::Numeric), of_kind(FeatureKind::Categorical))
}

/// INPUT registered in a new session, checked to have every column the model was fitted on,
/// and how messages name it.
async fn input_frame(input: &Path, id_column: &str, preparation: &Preparation, engine_options: &EngineOptions) -> Result<(SessionContext, DataFrame, String), DeployError> {
    let location = InputLocation::resolve(input).map_err(|e| DeployError::Invalid(format!("input {}: {e}", input.display())))?;
    let session: SessionContext = engine::session(engine_options).map_err(|e| DeployError::Failed(format!("cannot start the query engine: {e}")))?;
    let what = format!("input {}", input.display());
    let schema = engine::register_parquet(&session, "customers", &location)
        .await
        .map_err(|e| DeployError::Invalid(format!("{what} cannot be read as Parquet: {}", engine::describe_datafusion_error(&e))))?;
    check_columns(&schema, id_column, preparation, &what)?;
    let frame = session.table("customers").await.map_err(|e| DeployError::Failed(engine::describe_datafusion_error(&e)))?;
    Ok((session, frame, what))
}

/// Every column the model was fitted on must be in INPUT, under the same name.
fn check_columns(schema: &Schema, id_column: &str, preparation: &Preparation, what: &str) -> Result<(), DeployError> {
    let mut required: Vec<&str> = vec![id_column];
    required.extend(preparation.features().iter().map(|f| f.name()));
    let names: Vec<&str> = schema.fields().iter().map(|f| f.name().as_str()).collect();
    let missing: Vec<&str> = required.iter().copied().filter(|c| !names.contains(c)).collect();
    if !missing.is_empty() {
        return Err(DeployError::Invalid(format!(
            "{what} lacks {} the model needs: {}; it has: {}",
            if missing.len() == 1 { "a column" } else { "columns" },
            crate::config::yaml::quoted_list(missing.iter().copied()),
            crate::config::yaml::quoted_list(names.iter().copied())
        )));
    }
    Ok(())
}

/// `assign` on Ballista: the executors read INPUT, assign it with `segflow_assign` and write
/// OUT's rows, ordered by id as the in-process path orders them. The id checks the in-process
/// path makes while reading run here as two small queries.
async fn assign_on_cluster(model: &SegmentModel, input: &Path, output: &Path, run_id: &str, engine_options: &EngineOptions) -> Result<DeploySummary, DeployError> {
    let id = model.id_column.as_str();
    let ClusterInput { session, id_type, what } = cluster_input(input, None, id, &model.preparation, engine_options).await?;
    let failed = |e: datafusion::error::DataFusionError| DeployError::Failed(format!("{what}: {}", engine::describe_datafusion_error(&e)));

    let model_text = String::from_utf8(model.to_json().map_err(DeployError::Failed)?).map_err(|e| DeployError::Failed(e.to_string()))?;
    let mut call = vec![lit(model_text)];
    call.extend(model.preparation.features().iter().map(|f| ident(f.name())));
    let assign = udf::function(udf::ASSIGN).ok_or_else(|| DeployError::Failed(format!("{} is not registered", udf::ASSIGN)))?;
    let frame = session
        .table("customers")
        .await
        .and_then(|f| f.select(vec![ident(id), assign.call(call).alias("assigned")]))
        .and_then(|f| f.select(vec![ident(id), get_field(col("assigned"), "segment").alias("segment"), get_field(col("assigned"), "distance").alias("distance"), get_field(col("assigned"), "second_segment").alias("second_segment")]))
        .and_then(|f| f.sort(vec![ident(id).sort(true, true)]))
        .map_err(failed)?;
    commit_frame(frame, segment::customers_schema(id, &id_type), output, run_id, &model.run_date).await
}

/// `score` on Ballista: the executors read INPUT and score it with `segflow_score`, which reads
/// the forest from MODEL (a folder they must share, like the inputs); the risk deciles rank
/// the whole input in the query, as the in-process path ranks it (probability descending,
/// then id). segflow streams the rows into OUT, ordered by id.
async fn score_on_cluster(model: &ChurnModel, model_path: &Path, input: &Path, output: &Path, run_id: &str, engine_options: &EngineOptions) -> Result<DeploySummary, DeployError> {
    let folder = std::path::absolute(model_path).map_err(|e| DeployError::Invalid(format!("model {}: {e}", model_path.display())))?;
    let id = model.id_column.as_str();
    let ClusterInput { session, id_type, what } = cluster_input(input, Some(&folder), id, &model.preparation, engine_options).await?;
    let failed = |e: datafusion::error::DataFusionError| DeployError::Failed(format!("{what}: {}", engine::describe_datafusion_error(&e)));

    let score = udf::function(udf::SCORE).ok_or_else(|| DeployError::Failed(format!("{} is not registered", udf::SCORE)))?;
    let mut call = vec![lit(folder.to_string_lossy().into_owned()), lit(model.explain as i64)];
    call.extend(model.preparation.features().iter().map(|f| ident(f.name())));
    let scored = session.table("customers").await.and_then(|f| f.select(vec![ident(id), score.call(call).alias("scored")])).map_err(failed)?;
    session.register_table("scored_customers", scored.into_view()).map_err(failed)?;
    let quoted = engine::quote_ident(id);
    let mut columns = vec![
        quoted.clone(),
        "'score' AS split".to_string(),
        "scored['churn_probability'] AS churn_probability".to_string(),
        format!("CAST(ntile(10) OVER (ORDER BY scored['churn_probability'] DESC, {quoted} ASC) AS INT) AS risk_decile"),
        "scored['predicted_churn'] AS predicted_churn".to_string(),
        "CAST(NULL AS BOOLEAN) AS churned".to_string(),
    ];
    for i in 1..=model.explain {
        columns.push(format!("scored['top_feature_{i}'] AS top_feature_{i}"));
        columns.push(format!("scored['top_contribution_{i}'] AS top_contribution_{i}"));
    }
    let frame = session.sql(&format!("SELECT {} FROM scored_customers ORDER BY {quoted}", columns.join(", "))).await.map_err(failed)?;
    commit_frame(frame, churn::scores_schema(id, &id_type, model.explain), output, run_id, &model.run_date).await
}

/// INPUT read on a Ballista cluster, registered as `customers`: what `assign` and `score` share.
struct ClusterInput {
    session: SessionContext,
    /// The id column's type, for the output table's schema.
    id_type: DataType,
    /// INPUT as messages name it.
    what: String,
}

/// Registers INPUT on the cluster's session after checking that the executors can read it (and
/// `model_folder`, when they read the model too), that it has every column the model needs
/// and one row per id.
async fn cluster_input(input: &Path, model_folder: Option<&Path>, id: &str, preparation: &Preparation, engine_options: &EngineOptions) -> Result<ClusterInput, DeployError> {
    let what = format!("input {}", input.display());
    let location = InputLocation::resolve(input).map_err(|e| DeployError::Invalid(format!("{what}: {e}")))?;
    let model_location = model_folder.map(|folder| InputLocation::Folder(folder.to_path_buf()));
    let shared = std::iter::once(("input", &location)).chain(model_location.as_ref().map(|m| ("model", m)));
    engine::check_inputs_reachable(&engine_options.engine, shared).map_err(DeployError::Invalid)?;
    let session = engine::run_session(engine_options).await.map_err(|e| DeployError::Failed(format!("cannot start the query engine: {}", engine::describe_datafusion_error(&e))))?;
    let schema = engine::register_parquet(&session, "customers", &location)
        .await
        .map_err(|e| DeployError::Invalid(format!("{what} cannot be read as Parquet: {}", engine::describe_datafusion_error(&e))))?;
    check_columns(&schema, id, preparation, &what)?;
    check_ids(&session, id, &what).await?;
    let id_type = schema.field_with_name(id).map(|f| f.data_type().clone()).map_err(|e| DeployError::Failed(e.to_string()))?;
    Ok(ClusterInput { session, id_type, what })
}

/// A feature table has one row per customer: no null id, no id twice (the messages of
/// [`read_features`], which checks the same while reading in-process).
async fn check_ids(session: &SessionContext, id: &str, what: &str) -> Result<(), DeployError> {
    let failed = |e: datafusion::error::DataFusionError| DeployError::Failed(format!("{what}: {}", engine::describe_datafusion_error(&e)));
    let quoted = engine::quote_ident(id);
    let counts = session
        .sql(&format!("SELECT count(*) - count({quoted}) AS without_id, count({quoted}) - count(DISTINCT {quoted}) AS repeated FROM customers"))
        .await
        .map_err(failed)?
        .collect()
        .await
        .map_err(failed)?;
    let value = |column: usize| counts.first().map(|b| datafusion::arrow::util::display::array_value_to_string(b.column(column), 0).unwrap_or_default()).unwrap_or_default();
    let (without_id, repeated) = (value(0), value(1));
    if without_id != "0" {
        return Err(DeployError::Invalid(format!("{what}: {without_id} rows have no `{id}`; every customer needs an id")));
    }
    if repeated != "0" {
        let example = session
            .sql(&format!("SELECT {quoted} FROM customers WHERE {quoted} IS NOT NULL GROUP BY {quoted} HAVING count(*) > 1 ORDER BY {quoted} LIMIT 1"))
            .await
            .map_err(failed)?
            .collect()
            .await
            .map_err(failed)?;
        let shown = example.first().filter(|b| b.num_rows() > 0).map(|b| datafusion::arrow::util::display::array_value_to_string(b.column(0), 0).unwrap_or_default()).unwrap_or_default();
        return Err(DeployError::Invalid(format!("{what}: `{id}` is not unique: {repeated} rows repeat an earlier id (e.g. {shown}); a feature table has one row per customer")));
    }
    Ok(())
}

/// Writes `batch` as the table folder OUT: staged, then swapped in whole.
async fn commit(session: &SessionContext, batch: RecordBatch, output: &Path, run_id: &str, run_date: &str) -> Result<DeploySummary, DeployError> {
    let schema = batch.schema();
    let frame = session.read_batch(batch).map_err(|e| DeployError::Failed(e.to_string()))?;
    commit_frame(frame, schema, output, run_id, run_date).await
}

/// Writes `frame`'s rows, under `schema`, as the table folder OUT: staged, then swapped in whole.
async fn commit_frame(frame: DataFrame, schema: SchemaRef, output: &Path, run_id: &str, run_date: &str) -> Result<DeploySummary, DeployError> {
    let (root, table) = output_parts(output)?;
    let target = TableTarget { root, table, partition: None, run_id: run_id.to_string(), run_date: run_date.to_string(), schema_version: 1 };
    let live = target.live_dir();
    let staging = sink::staging_root(&target.root, run_id);
    let result = async {
        let staged = sink::stage_as(target, frame, schema).await.map_err(|e| DeployError::Failed(e.to_string()))?;
        sink::commit(staged).map_err(|e| DeployError::Failed(e.to_string()))
    }
    .await;
    if staging.exists() {
        let _ = std::fs::remove_dir_all(&staging);
    }
    let manifest = result?;
    Ok(DeploySummary { rows: manifest.rows, path: live })
}

/// `--output a/b/scores` → root `a/b`, table folder `scores`.
fn output_parts(output: &Path) -> Result<(PathBuf, String), DeployError> {
    let absolute = std::path::absolute(output).map_err(|e| DeployError::Invalid(format!("--output {}: {e}", output.display())))?;
    let table = absolute.file_name().and_then(|n| n.to_str()).map(str::to_string);
    match (absolute.parent(), table) {
        (Some(parent), Some(table)) if !table.is_empty() && table != ".." => Ok((parent.to_path_buf(), table)),
        _ => Err(DeployError::Invalid(format!("--output {}: expected a folder path such as out/customer_segments", output.display()))),
    }
}
