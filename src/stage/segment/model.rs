//! The saved segment model: its file format, where runs keep it, and what a later run or
//! `segflow assign` does with it.
//!
//! A run of stage `S` on run date `D` commits `<output_root>/models/S/run_date=D/` with
//! - `model.json`: [`SegmentModel`], format `segflow.segment_model` version 1 — the fitted
//!   preparation, the centroids in the prepared space, the algorithm's own parameters (GMM
//!   weights and covariances), the segment ids, ranks and labels, and how k was chosen.
//!   Plain JSON; floats are written in their shortest exact form, so a loaded model assigns
//!   exactly as the run did. No timestamps: the same input and seed give the same bytes.
//! - `assignments.parquet`: the run's customers (id, segment, distance, second_segment),
//!   read back by the next run to count migrations.
//! - `_manifest.json` and `_SUCCESS`, as for every table partition.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use datafusion::arrow::array::{Array, ArrayRef, AsArray, RecordBatch};
use datafusion::arrow::compute::cast;
use datafusion::arrow::datatypes::DataType;
use datafusion::arrow::row::{RowConverter, SortField};
use ndarray::{Array2, ArrayView2};
use parquet::arrow::ArrowWriter;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use serde::{Deserialize, Serialize};

use segflow_ml::cluster::{Algorithm, ClusterModel};
use segflow_ml::hungarian::min_cost_assignment;
use segflow_ml::prep::Preparation;

use super::profile::SegmentProfile;
use crate::stage::MODELS_DIR;

pub const MODEL_FILE: &str = "model.json";
pub const ASSIGNMENTS_FILE: &str = "assignments.parquet";
pub const FORMAT: &str = "segflow.segment_model";
pub const FORMAT_VERSION: u32 = 1;

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct SegmentModel {
    /// Always `segflow.segment_model`.
    pub format: String,
    /// Bumped when a reader of an older version could misread the file.
    pub format_version: u32,
    pub segflow_version: String,
    pub stage: String,
    pub run_id: String,
    pub run_date: String,
    /// The customer id column and its Arrow type.
    pub id_column: String,
    pub id_type: String,
    pub algorithm: Algorithm,
    pub seed: u64,
    /// How k was chosen, for `k: auto`.
    pub k_choice: Option<KChoiceRecord>,
    pub preparation: Preparation,
    /// The prepared columns, in centroid order (`region=North` for one-hot levels).
    pub prepared_features: Vec<String>,
    /// What out-of-sample assignment needs: the centroids (one row per cluster index, in
    /// the prepared space), and for `gmm` the weights and covariances too.
    pub cluster_model: ClusterModel,
    /// Per cluster index: its segment id, rank, label and size.
    pub segments: Vec<SegmentRecord>,
    /// The id a new segment gets next: ids are never reused.
    pub next_segment_id: i32,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct KChoiceRecord {
    pub k_min: usize,
    pub k_max: usize,
    pub knee_k: Option<usize>,
    pub chosen_k: usize,
    pub rule: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct SegmentRecord {
    pub id: i32,
    /// 1 = best by the stage's `rank_by`.
    pub rank: u32,
    pub label: String,
    pub customers: u64,
}

/// What a run hands to [`SegmentModel::new`].
pub struct ModelParts<'a> {
    pub stage: &'a str,
    pub run_id: &'a str,
    pub run_date: &'a str,
    pub id_column: &'a str,
    pub id_type: &'a DataType,
    pub algorithm: Algorithm,
    pub seed: u64,
    pub k_choice: Option<KChoiceRecord>,
    pub preparation: Preparation,
    pub cluster_model: ClusterModel,
    pub segments: Vec<SegmentRecord>,
    pub next_segment_id: i32,
}

impl SegmentModel {
    pub fn new(parts: ModelParts<'_>) -> Self {
        SegmentModel {
            format: FORMAT.to_string(),
            format_version: FORMAT_VERSION,
            segflow_version: env!("CARGO_PKG_VERSION").to_string(),
            stage: parts.stage.to_string(),
            run_id: parts.run_id.to_string(),
            run_date: parts.run_date.to_string(),
            id_column: parts.id_column.to_string(),
            id_type: parts.id_type.to_string(),
            algorithm: parts.algorithm,
            seed: parts.seed,
            k_choice: parts.k_choice,
            prepared_features: parts.preparation.output_names(),
            preparation: parts.preparation,
            cluster_model: parts.cluster_model,
            segments: parts.segments,
            next_segment_id: parts.next_segment_id,
        }
    }

    pub fn to_json(&self) -> Result<Vec<u8>, String> {
        let mut bytes = serde_json::to_vec_pretty(self).map_err(|e| format!("cannot write the model: {e}"))?;
        bytes.push(b'\n');
        Ok(bytes)
    }

    /// Reads `model.json`, or the `model.json` inside a model folder.
    pub fn load(path: &Path) -> Result<SegmentModel, String> {
        let file = if path.is_dir() { path.join(MODEL_FILE) } else { path.to_path_buf() };
        let text = std::fs::read_to_string(&file).map_err(|e| format!("cannot read the segment model {}: {e}", file.display()))?;
        Self::from_json_text(&text, &file.display().to_string())
    }

    /// Parses and checks a model file's text; `origin` names it in messages.
    pub fn from_json_text(text: &str, origin: &str) -> Result<SegmentModel, String> {
        // The format is checked before the rest, so a file of another kind is named as such.
        let header: serde_json::Value = serde_json::from_str(text).map_err(|e| format!("{origin}: not a JSON model file: {e}"))?;
        let format = header.get("format").and_then(|f| f.as_str()).unwrap_or("");
        if format != FORMAT {
            return Err(format!("{origin}: not a segment model (format `{format}`, expected `{FORMAT}`)"));
        }
        let version = header.get("format_version").and_then(|v| v.as_u64()).unwrap_or(0);
        if version != u64::from(FORMAT_VERSION) {
            return Err(format!("{origin}: segment model format version {version}; this segflow reads version {FORMAT_VERSION}"));
        }
        let model: SegmentModel = serde_json::from_str(text).map_err(|e| format!("{origin}: invalid segment model: {e}"))?;
        model.check().map_err(|e| format!("{origin}: invalid segment model: {e}"))?;
        Ok(model)
    }

    /// The invariants `assign` relies on, so a hand-edited file fails with a message, not a panic.
    fn check(&self) -> Result<(), String> {
        self.cluster_model.validate().map_err(|e| e.to_string())?;
        let centroids = self.cluster_model.centroids();
        if centroids.ncols() != self.prepared_features.len() {
            return Err(format!("centroids have {} values for {} prepared features", centroids.ncols(), self.prepared_features.len()));
        }
        if self.segments.len() != centroids.nrows() {
            return Err(format!("{} segments for {} centroids", self.segments.len(), centroids.nrows()));
        }
        if self.preparation.output_names() != self.prepared_features {
            return Err("`prepared_features` does not match the preparation".to_string());
        }
        Ok(())
    }

    pub fn segment_ids(&self) -> Vec<i32> {
        self.segments.iter().map(|s| s.id).collect()
    }
}

/// The latest committed model of a stage from a run date before this one.
pub struct PreviousRun {
    pub run_date: String,
    pub dir: PathBuf,
    pub model: SegmentModel,
}

impl PreviousRun {
    pub fn find(output_root: &Path, stage: &str, run_date: &str) -> Result<Option<PreviousRun>, String> {
        let stage_dir = output_root.join(MODELS_DIR).join(stage);
        let Ok(entries) = std::fs::read_dir(&stage_dir) else { return Ok(None) };
        let mut dates: Vec<(String, PathBuf)> = entries
            .filter_map(Result::ok)
            .filter_map(|e| {
                let name = e.file_name().to_string_lossy().to_string();
                let date = name.strip_prefix("run_date=")?.to_string();
                // Only whole, committed models: a folder without _SUCCESS is not one.
                (date.as_str() < run_date && e.path().join("_SUCCESS").exists()).then(|| (date, e.path()))
            })
            .collect();
        dates.sort();
        let Some((run_date, dir)) = dates.pop() else { return Ok(None) };
        let model = SegmentModel::load(&dir)?;
        Ok(Some(PreviousRun { run_date, dir, model }))
    }

    /// Whether its centroids and segments can be compared with a run prepared by
    /// `preparation`: the same prepared features, in the same order.
    pub fn comparable_with(&self, preparation: &Preparation) -> bool {
        self.model.prepared_features == preparation.output_names()
    }

    /// Counts customers by (previous segment, current segment); a customer new since the
    /// previous run has no previous segment, one gone since has no current one.
    pub fn migration(&self, current_ids: &ArrayRef, labels: &[usize], segment_ids: &[i32]) -> Result<Vec<MigrationRow>, String> {
        let path = self.dir.join(ASSIGNMENTS_FILE);
        let fail = |e: &dyn std::fmt::Display| format!("previous run's assignments {}: {e}", path.display());
        let file = std::fs::File::open(&path).map_err(|e| fail(&e))?;
        let reader = ParquetRecordBatchReaderBuilder::try_new(file).and_then(|b| b.build()).map_err(|e| fail(&e))?;
        let mut previous_ids: Vec<ArrayRef> = Vec::new();
        let mut previous_segments: Vec<i32> = Vec::new();
        for batch in reader {
            let batch = batch.map_err(|e| fail(&e))?;
            let (Some(ids), Some(segments)) = (batch.column_by_name(&self.model.id_column), batch.column_by_name("segment")) else {
                return Err(fail(&format!("expected columns `{}` and `segment`", self.model.id_column)));
            };
            previous_ids.push(cast(ids, current_ids.data_type()).map_err(|e| fail(&e))?);
            let segments = cast(segments, &DataType::Int32).map_err(|e| fail(&e))?;
            previous_segments.extend(segments.as_primitive::<datafusion::arrow::datatypes::Int32Type>().iter().map(|s| s.unwrap_or(-1)));
        }
        let converter = RowConverter::new(vec![SortField::new(current_ids.data_type().clone())]).map_err(|e| fail(&e))?;
        let mut before: HashMap<Vec<u8>, i32> = HashMap::new();
        let mut offset = 0;
        for ids in &previous_ids {
            let rows = converter.convert_columns(&[ids.clone()]).map_err(|e| fail(&e))?;
            for i in 0..rows.num_rows() {
                before.insert(rows.row(i).as_ref().to_vec(), previous_segments[offset + i]);
            }
            offset += rows.num_rows();
        }
        let rows = converter.convert_columns(&[current_ids.clone()]).map_err(|e| fail(&e))?;
        let mut counts: BTreeMap<(Option<i32>, Option<i32>), i64> = BTreeMap::new();
        for (i, label) in labels.iter().enumerate() {
            let from = before.remove(rows.row(i).as_ref());
            *counts.entry((from, Some(segment_ids[*label]))).or_default() += 1;
        }
        for segment in before.into_values() {
            *counts.entry((Some(segment), None)).or_default() += 1;
        }
        Ok(counts.into_iter().map(|((from, to), customers)| MigrationRow { from, to, customers }).collect())
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct MigrationRow {
    pub from: Option<i32>,
    pub to: Option<i32>,
    pub customers: i64,
}

/// First-run ids: by rank, starting at `first` (1 = the best segment on a first run).
/// Returns the id per cluster index and the next unused id.
pub fn ids_by_rank(profiles: &[SegmentProfile], first: i32) -> (Vec<i32>, i32) {
    let mut ids = vec![0; profiles.len()];
    for p in profiles {
        ids[p.index] = first + p.rank as i32 - 1;
    }
    (ids, first + profiles.len() as i32)
}

/// Matches this run's centroids to the previous model's (Hungarian algorithm on squared
/// Euclidean distance, both in this run's prepared space) so a segment keeps its id. A
/// centroid left unmatched (k grew) gets a new id, in rank order. The previous model must
/// prepare the same features ([`PreviousRun::comparable_with`]).
pub fn match_ids(previous: &SegmentModel, preparation: &Preparation, centroids: ArrayView2<'_, f64>, profiles: &[SegmentProfile]) -> Result<(Vec<i32>, i32), String> {
    // The previous centroids, from their own preparation back to the features' units and
    // into this run's preparation: scaling statistics move between runs.
    let previous_centroids = previous.cluster_model.centroids();
    let mut old = Vec::with_capacity(previous_centroids.nrows());
    for row in previous_centroids.rows() {
        let original = previous.preparation.to_original_units(row);
        old.push(preparation.from_original_units(&original).map_err(|e| format!("matching the previous run's segments: {e}"))?);
    }
    let (k_new, k_old) = (centroids.nrows(), old.len());
    let cost = Array2::from_shape_fn((k_new, k_old), |(i, j)| centroids.row(i).iter().zip(&old[j]).map(|(a, b)| (a - b) * (a - b)).sum::<f64>());
    let matched = min_cost_assignment(cost.view()).map_err(|e| format!("matching the previous run's segments: {e}"))?;
    let mut ids = vec![0; k_new];
    let mut next = previous.next_segment_id;
    let mut by_rank: Vec<&SegmentProfile> = profiles.iter().collect();
    by_rank.sort_by_key(|p| p.rank);
    for p in &by_rank {
        if let Some(j) = matched[p.index] {
            ids[p.index] = previous.segments[j].id;
        }
    }
    for p in by_rank {
        if matched[p.index].is_none() {
            ids[p.index] = next;
            next += 1;
        }
    }
    Ok((ids, next))
}

/// The customers table as a Parquet file in memory, kept with the model for the next run.
pub fn assignments_parquet(customers: &RecordBatch) -> Result<Vec<u8>, String> {
    let mut bytes = Vec::new();
    let mut writer = ArrowWriter::try_new(&mut bytes, customers.schema(), Some(crate::sink::writer_properties())).map_err(|e| format!("cannot write the assignments: {e}"))?;
    writer.write(customers).map_err(|e| format!("cannot write the assignments: {e}"))?;
    writer.close().map_err(|e| format!("cannot write the assignments: {e}"))?;
    Ok(bytes)
}
