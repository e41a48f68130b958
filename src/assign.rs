//! `segflow assign MODEL INPUT --output OUT`: new customers into the segments of a saved
//! model, without refitting.
//!
//! The model's own preparation (imputation values, winsor bounds, scaling statistics,
//! one-hot levels) is applied to INPUT unchanged, then each customer goes to a segment by the
//! model's rule (nearest centroid; highest posterior for `gmm`). OUT gets the columns of the
//! segment stage's per-customer table — id, segment, distance, second_segment — written by
//! the same commit protocol as a pipeline's tables: staged beside OUT under
//! `_segflow/staging/`, then swapped in whole with `_manifest.json` and `_SUCCESS`.

use std::path::{Path, PathBuf};

use datafusion::prelude::SessionContext;
use segflow_ml::prep::FeatureKind;

use crate::engine::{self, EngineOptions, InputLocation};
use crate::sink::{self, TableTarget};
use crate::stage::segment::{self, SegmentModel, read_features};

/// Everything that can stop an assignment, with whose fault it is.
#[derive(Debug, thiserror::Error)]
pub enum AssignError {
    /// The model, the input or the output path is unusable: fix the command (exit 2).
    #[error("{0}")]
    Invalid(String),
    /// Reading, computing or writing failed (exit 1).
    #[error("{0}")]
    Failed(String),
}

#[derive(Debug, Clone)]
pub struct AssignSummary {
    pub rows: u64,
    pub path: PathBuf,
    pub segments: usize,
}

pub async fn assign(model_path: &Path, input: &Path, output: &Path, run_id: &str, engine_options: &EngineOptions) -> Result<AssignSummary, AssignError> {
    let model = SegmentModel::load(model_path).map_err(AssignError::Invalid)?;
    let (root, table) = output_parts(output)?;
    let location = InputLocation::resolve(input).map_err(|e| AssignError::Invalid(format!("input {}: {e}", input.display())))?;
    let session: SessionContext = engine::session(engine_options).map_err(|e| AssignError::Failed(format!("cannot start the query engine: {e}")))?;
    let what = format!("input {}", input.display());
    let schema = engine::register_parquet(&session, "customers", &location)
        .await
        .map_err(|e| AssignError::Invalid(format!("{what} cannot be read as Parquet: {}", engine::describe_datafusion_error(&e))))?;

    // Every column the model was fitted on must be there, under the same name.
    let features: Vec<(&str, FeatureKind)> = model.preparation.features().iter().map(|f| (f.name(), f.kind())).collect();
    let mut required: Vec<&str> = vec![model.id_column.as_str()];
    required.extend(features.iter().map(|(name, _)| *name));
    let names: Vec<&str> = schema.fields().iter().map(|f| f.name().as_str()).collect();
    let missing: Vec<&str> = required.iter().copied().filter(|c| !names.contains(c)).collect();
    if !missing.is_empty() {
        return Err(AssignError::Invalid(format!(
            "{what} lacks {} the model needs: {}; it has: {}",
            if missing.len() == 1 { "a column" } else { "columns" },
            crate::config::yaml::quoted_list(missing.iter().copied()),
            crate::config::yaml::quoted_list(names.iter().copied())
        )));
    }

    let of_kind = |kind: FeatureKind| features.iter().filter(|(_, k)| *k == kind).map(|(name, _)| name.to_string()).collect::<Vec<_>>();
    let (numeric, categorical) = (of_kind(FeatureKind::Numeric), of_kind(FeatureKind::Categorical));
    let frame = session.table("customers").await.map_err(|e| AssignError::Failed(engine::describe_datafusion_error(&e)))?;
    let data = read_features(frame, &model.id_column, &numeric, &categorical, &what).await.map_err(AssignError::Invalid)?;
    let text = segment::text_views(&data);
    let columns = segment::feature_columns(&data, &text, &features);
    let x = model.preparation.transform(&columns).map_err(|e| AssignError::Invalid(format!("{what}: {e}")))?;
    let assignments = model
        .cluster_model
        .assign(x.view())
        .map_err(|e| AssignError::Failed(format!("assigning {what}: {e}")))?;
    let batch = segment::customers_batch(&model.id_column, &data.ids, &assignments, &model.segment_ids()).map_err(|e| AssignError::Failed(e.to_string()))?;

    let target = TableTarget { root, table, partition: None, run_id: run_id.to_string(), run_date: model.run_date.clone(), schema_version: 1 };
    let live = target.live_dir();
    let frame = session.read_batch(batch).map_err(|e| AssignError::Failed(e.to_string()))?;
    let staging = sink::staging_root(&target.root, run_id);
    let result = async {
        let staged = sink::stage(target, frame).await.map_err(|e| AssignError::Failed(e.to_string()))?;
        sink::commit(staged).map_err(|e| AssignError::Failed(e.to_string()))
    }
    .await;
    if staging.exists() {
        let _ = std::fs::remove_dir_all(&staging);
    }
    let manifest = result?;
    Ok(AssignSummary { rows: manifest.rows, path: live, segments: model.segments.len() })
}

/// `--output a/b/scores` → root `a/b`, table folder `scores`.
fn output_parts(output: &Path) -> Result<(PathBuf, String), AssignError> {
    let absolute = std::path::absolute(output).map_err(|e| AssignError::Invalid(format!("--output {}: {e}", output.display())))?;
    let table = absolute.file_name().and_then(|n| n.to_str()).map(str::to_string);
    match (absolute.parent(), table) {
        (Some(parent), Some(table)) if !table.is_empty() && table != ".." => Ok((parent.to_path_buf(), table)),
        _ => Err(AssignError::Invalid(format!("--output {}: expected a folder path such as out/customer_segments", output.display()))),
    }
}
