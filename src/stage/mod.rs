//! Stage kinds: one file each, behind one trait, listed in one registry.
//!
//! Adding a kind is one new file here and one line in [`REGISTRY`]: the kind reads its own
//! strict parameters ([`StageKind::build`]), says what it would produce from its inputs'
//! schemas without reading data ([`Stage::plan`], what `validate` runs), and produces it
//! ([`Stage::run`]).

pub mod churn;
pub mod clean;
pub mod features;
pub mod segment;
pub mod sql;

use std::collections::BTreeMap;
use std::fmt::Debug;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use async_trait::async_trait;
use datafusion::arrow::array::RecordBatch;
use datafusion::arrow::datatypes::SchemaRef;
use datafusion::prelude::{DataFrame, SessionContext};

use crate::config::yaml::{Node, Pos};
use crate::vars::Vars;

/// Every stage kind segflow knows, by its `kind:` name.
pub static REGISTRY: &[&dyn StageKind] = &[&sql::SqlKind, &clean::CleanKind, &segment::SegmentKind, &churn::ChurnKind];

/// The kind registered under `name`.
pub fn kind(name: &str) -> Option<&'static dyn StageKind> {
    REGISTRY.iter().copied().find(|k| k.name() == name)
}

pub fn kind_names() -> impl Iterator<Item = &'static str> {
    REGISTRY.iter().map(|k| k.name())
}

/// A stage kind: reads its parameters and builds the stage.
pub trait StageKind: Sync {
    /// The `kind:` value that selects it.
    fn name(&self) -> &'static str;

    /// Reads the kind's own keys (everything but `name`, `kind`, `inputs`, `description`)
    /// and checks what can be checked without data. Reports every problem it finds.
    fn build(&self, params: &Node, ctx: &BuildContext<'_>) -> Result<Box<dyn Stage>, Vec<StageProblem>>;
}

/// What a kind may look at while building a stage.
pub struct BuildContext<'a> {
    pub stage_name: &'a str,
    /// The stage's declared inputs (input or stage names).
    pub inputs: &'a [String],
    /// Folder that relative paths resolve against (the pipeline file's).
    pub base_dir: &'a Path,
    /// The pipeline file as messages name it, and its text (to map positions inside
    /// inline SQL back to the YAML).
    pub pipeline_file: &'a Path,
    pub pipeline_text: &'a str,
    pub vars: &'a Vars,
}

/// A problem in one stage, located in the pipeline file or in a file the stage reads.
#[derive(Debug, Clone, PartialEq)]
pub struct StageProblem {
    /// `None`: the pipeline file itself.
    pub file: Option<PathBuf>,
    pub pos: Option<Pos>,
    pub message: String,
    pub suggestion: Option<String>,
}

impl StageProblem {
    pub fn at(pos: Pos, message: impl Into<String>) -> Self {
        StageProblem { file: None, pos: Some(pos), message: message.into(), suggestion: None }
    }
}

/// One result of a stage, registered as a table for the stages after it.
pub struct StageResult {
    /// The stage's name for its main result, `<stage>_<part>` for the others.
    pub name: String,
    pub frame: DataFrame,
}

/// What a stage sees when it plans or runs.
pub struct StageContext<'a> {
    pub session: &'a SessionContext,
    pub stage_name: &'a str,
    pub vars: &'a Vars,
    /// This stage's own seed, derived from the pipeline seed and the stage name.
    pub seed: u64,
    pub run_id: &'a str,
    /// `YYYY-MM-DD`: the partition this run writes.
    pub run_date: &'a str,
    /// Where the pipeline's tables and saved models live (a stage reads its previous run's
    /// model from here; it never writes here itself).
    pub output_root: &'a Path,
    /// The run's scratch folder, in its staging area and removed with it: where a stage writes
    /// rows it reads more than once ([`StageContext::materialize`]) and, with a distributed
    /// engine, its in-memory results. `None` while planning (`validate`), when nothing runs.
    pub scratch: Option<&'a Path>,
    /// A distributed engine runs the plans: a plan holding in-memory rows cannot be shipped to
    /// its executors, so a stage's in-memory results go to `scratch` as Parquet.
    pub distributed: bool,
    /// Partitions of a query computed at once (`--threads`): a plan over bucketed rows has a
    /// partition per bucket, more than there are threads.
    pub threads: usize,
    /// Rows per bucket when a stage buckets its rows ([`StageContext::materialize_bucketed`]).
    pub bucket_rows: usize,
}

impl StageContext<'_> {
    /// A frame over rows a stage computed in memory (a model's output), in batches of the
    /// session's batch size ([`in_batches`]).
    pub async fn frame_of(&self, name: &str, batch: RecordBatch) -> Result<DataFrame, StageFailure> {
        let Some(scratch) = self.scratch.filter(|_| self.distributed) else {
            let batches = in_batches(batch, self.session.state().config().batch_size()).map_err(|e| StageFailure { message: format!("handing `{name}` to the query engine: {e}") })?;
            return Ok(self.session.read_batches(batches)?);
        };
        let schema = batch.schema();
        let path = scratch.join(format!("{name}.parquet"));
        let fail = |e: String| StageFailure { message: format!("writing `{name}` for the executors to {}: {e}", path.display()) };
        std::fs::create_dir_all(scratch).map_err(|e| fail(e.to_string()))?;
        let file = std::fs::File::create(&path).map_err(|e| fail(e.to_string()))?;
        let mut writer = parquet::arrow::ArrowWriter::try_new(file, batch.schema(), Some(crate::sink::writer_properties())).map_err(|e| fail(e.to_string()))?;
        writer.write(&batch).and_then(|_| writer.close().map(|_| ())).map_err(|e| fail(e.to_string()))?;
        // Registered under a name of its own: the runner registers the result by its name.
        let scratch_name = format!("__segflow_scratch_{name}");
        crate::engine::register_parquet(self.session, &scratch_name, &crate::engine::InputLocation::File(path.clone())).await?;
        self.read_back(&scratch_name, &schema).await
    }

    /// Rows a stage reads more than once, computed once, so the input is not read and
    /// classified again by each reader. Held in memory while they take at most
    /// 1/[`IN_MEMORY_SHARE`] of the engine's memory limit; beyond that, every row goes to
    /// Parquet in the run's scratch folder and is read back from there, so memory does not grow
    /// with the data (a `cache()` would hold every row). Row order is not kept; no reader
    /// depends on it.
    ///
    /// In memory, 10M transaction lines (710 MiB as Arrow) saved the two SQL stages that read
    /// them and the clean stage that wrote them 3.5–4.9 s of 38 (2026-11-24, two pairs); the
    /// rows are the same either way.
    pub async fn materialize(&self, name: &str, frame: DataFrame) -> Result<DataFrame, StageFailure> {
        let Some(scratch) = self.scratch else {
            return Ok(frame.cache().await?);
        };
        let schema: SchemaRef = frame.schema().inner().clone();
        let folder = self.scratch_folder(scratch, name);
        let fail = |e: String| StageFailure { message: format!("writing `{name}` to the scratch folder {}: {e}", folder.display()) };
        fresh_folder(&folder).map_err(fail)?;
        let budget = self.in_memory_budget();
        let shared = Arc::new(Materializing { budget, held_bytes: AtomicUsize::new(0), overflowed: AtomicBool::new(false) });
        // A task per partition: each holds or writes its own rows, so the Parquet encoding of
        // an overflowing table runs on every thread. At most `threads` partitions run at once:
        // over bucketed rows a partition is a bucket, and the buckets' work at a time is what
        // stays small ([`StageContext::materialize_bucketed`]).
        let task_context = Arc::new(frame.task_ctx());
        let plan = frame.create_physical_plan().await?;
        let streams = datafusion::physical_plan::execute_stream_partitioned(plan.clone(), task_context)?;
        let partitions = each_stream(streams, self.threads, |partition, stream| materialize_partition(stream, scratch_part(&folder, partition), shared.clone())).await.map_err(fail)?;
        self.log_spilled(name, plan.as_ref());
        if !shared.overflowed.load(Ordering::SeqCst) {
            let held_mib = shared.held_bytes.load(Ordering::SeqCst) as f64 / MIB;
            tracing::debug!(stage = self.stage_name, result = name, held_mib, "rows read more than once held in memory");
            std::fs::remove_dir_all(&folder).map_err(|e| fail(e.to_string()))?;
            let table = datafusion::datasource::MemTable::try_new(schema, partitions)?;
            return Ok(self.session.read_table(Arc::new(table))?);
        }
        tracing::debug!(stage = self.stage_name, result = name, budget_mib = budget as f64 / MIB, "rows read more than once written to the scratch folder: more than the memory budget");
        // Partitions that ended before another overflowed still hold their rows.
        for (partition, held) in partitions.into_iter().enumerate().filter(|(_, held)| !held.is_empty()) {
            let encoder = ScratchEncoder::start(scratch_part(&folder, partition), None);
            for batch in held {
                if !encoder.send(batch).await {
                    break;
                }
            }
            encoder.finish().await.map_err(fail)?;
        }
        // No rows, no files: nothing to read a schema from.
        let written = std::fs::read_dir(&folder).map_err(|e| fail(e.to_string()))?.flatten().any(|e| e.path().extension().is_some_and(|x| x == "parquet"));
        if !written {
            return Ok(self.session.read_batch(RecordBatch::new_empty(schema))?);
        }
        let table = self.scratch_table(ScratchKind::Materialized, name);
        crate::engine::register_parquet(self.session, &table, &crate::engine::InputLocation::Folder(folder.clone())).await?;
        self.read_back(&table, &schema).await
    }

    /// Logs what the operators of `plan`, which computed `result`, spilled to disk, if anything.
    fn log_spilled(&self, result: &str, plan: &dyn datafusion::physical_plan::ExecutionPlan) {
        if tracing::enabled!(tracing::Level::TRACE) {
            let executed = datafusion::physical_plan::display::DisplayableExecutionPlan::with_metrics(plan).indent(true).to_string();
            tracing::trace!(stage = self.stage_name, result, "plan as executed, with its metrics:\n{executed}");
        }
        let spilled = Spilled::of(plan);
        if spilled.files > 0 {
            let operators = spilling_operators(plan).join(", ");
            tracing::debug!(stage = self.stage_name, result, spill_files = spilled.files, spilled_mib = spilled.bytes as f64 / MIB, spilled_rows = spilled.rows, operators, "the engine spilled to disk: its operators outgrew their share of the memory limit");
        }
    }

    /// The bytes of rows [`materialize`](StageContext::materialize) holds in memory before it
    /// writes them to the scratch folder: none for a distributed engine, whose executors
    /// cannot read this process's memory.
    fn in_memory_budget(&self) -> usize {
        match self.session.runtime_env().memory_pool.memory_limit() {
            datafusion::execution::memory_pool::MemoryLimit::Finite(limit) if !self.distributed => limit / IN_MEMORY_SHARE,
            _ => 0,
        }
    }

    /// Rows read more than once, split by `key` into buckets of about
    /// [`bucket_rows`](StageContext::bucket_rows) rows, so that the stages after this one work
    /// on a bucket at a time: a grouping by `key` (or by `key` and more) or a join on it then
    /// holds one bucket's groups at once, not every key's, and moves no row between
    /// partitions. With 100M transaction lines, grouping them by invoice and by customer held
    /// tables of millions of groups that spilled; a bucket's tables are the size they are at
    /// a tenth of the data, so the time grows with the lines and not faster.
    ///
    /// The buckets are the partitions of DataFusion's own hash repartitioning on `key`, one
    /// Parquet file each in the scratch folder, read back as a table declared hash-partitioned
    /// on `key` ([`crate::engine::register_bucketed_parquet`]); from here on the session plans
    /// a partition per bucket, so another table joined on `key` is repartitioned by the same
    /// hash into the same buckets, and [`materialize`](StageContext::materialize) computes
    /// [`threads`](StageContext::threads) partitions at a time.
    ///
    /// `expected_rows` (at least the rows `frame` holds) sets the bucket count. Rows are
    /// bucketed only where they would go to the scratch folder anyway (by an estimate of their
    /// size against [`materialize`](StageContext::materialize)'s memory budget) and are more
    /// than a bucket per thread; the others are materialized as any other table, and so are the
    /// rows of a distributed engine (Ballista plans its own stages). Held in memory, 10M lines
    /// were read as fast whole as in buckets, and writing the buckets cost the clean stage 1–2
    /// s (2026-12-07, default memory limit, four pairs).
    pub async fn materialize_bucketed(&self, name: &str, frame: DataFrame, key: &str, expected_rows: usize) -> Result<DataFrame, StageFailure> {
        match self.bucket_count(frame.schema().inner(), expected_rows) {
            Some(buckets) => self.write_buckets(name, frame, key, buckets).await,
            None => self.materialize(name, frame).await,
        }
    }

    /// The buckets [`materialize_bucketed`](StageContext::materialize_bucketed) writes
    /// `expected_rows` rows of `schema` in, or `None` where it materializes them whole.
    pub fn bucket_count(&self, schema: &SchemaRef, expected_rows: usize) -> Option<usize> {
        let buckets = expected_rows.div_ceil(self.bucket_rows.max(1));
        let estimated_bytes = expected_rows.saturating_mul(estimated_row_bytes(schema));
        (self.scratch.is_some() && !self.distributed && buckets > self.threads && estimated_bytes > self.in_memory_budget()).then_some(buckets)
    }

    /// Writes the rows of `frame` in `buckets` buckets of `key` (see
    /// [`materialize_bucketed`](StageContext::materialize_bucketed), which decides whether to)
    /// and reads them back as a table declared hash-partitioned on `key`.
    ///
    /// Rows already in those buckets (a plan over bucketed rows that keeps their partitions,
    /// such as a deduplication whose key holds `key`) are written as they are, partition i to
    /// bucket i, [`threads`](StageContext::threads) partitions at a time; other rows go through
    /// DataFusion's hash repartitioning on `key`, every bucket at once.
    pub async fn write_buckets(&self, name: &str, frame: DataFrame, key: &str, buckets: usize) -> Result<DataFrame, StageFailure> {
        let Some(scratch) = self.scratch else {
            return self.materialize(name, frame).await;
        };
        let schema: SchemaRef = frame.schema().inner().clone();
        let folder = self.scratch_folder(scratch, name);
        let fail = |e: String| StageFailure { message: format!("writing `{name}` in buckets to the scratch folder {}: {e}", folder.display()) };
        fresh_folder(&folder).map_err(fail)?;
        let task_context = Arc::new(frame.task_ctx());
        let (plan, in_buckets) = bucket_plan(frame.create_physical_plan().await?, key, buckets)?;
        let file_schema = plan.schema();
        let streams = datafusion::physical_plan::execute_stream_partitioned(plan.clone(), task_context)?;
        // The repartitioning feeds every bucket at once, so every bucket is written at once
        // (small row groups keep the encoders' buffers small); buckets computed each on its own
        // are written `threads` at a time, so only that many buckets' work is held at once.
        let at_once = if in_buckets { self.threads } else { buckets };
        each_stream(streams, at_once, |bucket, stream| write_bucket(stream, bucket_file(&folder, bucket), file_schema.clone())).await.map_err(fail)?;
        self.log_spilled(name, plan.as_ref());
        let table = self.scratch_table(ScratchKind::Bucketed, name);
        crate::engine::register_bucketed_parquet(self.session, &table, &folder, key, buckets).await?;
        // Later stages plan a partition per bucket (a table joined on `key` is repartitioned
        // into the same buckets); `materialize` computes `threads` of them at a time.
        {
            let state = self.session.state_ref();
            let mut state = state.write();
            let execution = &mut state.config_mut().options_mut().execution;
            execution.target_partitions = buckets;
            // Each partition's sort sets aside this much for merging what it spilled: as much
            // in all as `threads` partitions set aside by default, not `buckets` times it (15
            // buckets of sorts under 80 MiB ran out of memory setting aside 10 MB each). From
            // the default, so bucketing twice in a run sets the same.
            let default = datafusion::config::ExecutionOptions::default().sort_spill_reservation_bytes;
            execution.sort_spill_reservation_bytes = (default * self.threads.max(1) / buckets).max(1 << 20);
        }
        tracing::info!(stage = self.stage_name, result = name, key, buckets, rows_per_bucket = self.bucket_rows, already_in_buckets = in_buckets, "rows written in buckets: the stages after this one work a bucket at a time");
        self.read_back(&table, &schema).await
    }

    /// Removes what [`write_buckets`](StageContext::write_buckets) or
    /// [`materialize`](StageContext::materialize) wrote to the scratch folder as `name`, and
    /// its table: for rows only an intermediate step read.
    pub fn drop_scratch(&self, name: &str) -> Result<(), String> {
        for kind in [ScratchKind::Bucketed, ScratchKind::Materialized] {
            self.session.deregister_table(self.scratch_table(kind, name).as_str()).map_err(|e| e.to_string())?;
        }
        let Some(scratch) = self.scratch else {
            return Ok(());
        };
        let folder = self.scratch_folder(scratch, name);
        match std::fs::remove_dir_all(&folder) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(format!("removing {}: {e}", folder.display())),
            _ => Ok(()),
        }
    }

    /// The folder of `scratch` where this stage writes its rows `name`.
    fn scratch_folder(&self, scratch: &Path, name: &str) -> PathBuf {
        scratch.join(format!("{}_{name}", self.stage_name))
    }

    /// The session's name for the table over this stage's rows `name` in the scratch folder.
    fn scratch_table(&self, kind: ScratchKind, name: &str) -> String {
        let kind = match kind {
            ScratchKind::Materialized => "materialized",
            ScratchKind::Bucketed => "bucketed",
        };
        format!("__segflow_{kind}_{}_{name}", self.stage_name)
    }

    /// A table read back from Parquet, with the types it was written with: Parquet reads text
    /// back as Utf8View, so the tables written are the same whichever way the rows travelled.
    async fn read_back(&self, table: &str, schema: &SchemaRef) -> Result<DataFrame, StageFailure> {
        let columns: Vec<datafusion::logical_expr::Expr> = schema
            .fields()
            .iter()
            .map(|f| datafusion::logical_expr::cast(datafusion::logical_expr::ident(f.name()), f.data_type().clone()).alias(f.name()))
            .collect();
        Ok(self.session.table(table).await?.select(columns)?)
    }
}

/// `batch` as batches of at most `rows` rows, each with buffers of its own. The sort before a
/// table is written reserves memory a batch at a time and cannot split one: the churn scores
/// as one batch asked it for 29.7 MB at once at 10M lines (about 300 MB at 100M), more than a
/// sort's share of a small pool. Slices would not do, as Arrow counts a slice at the size of
/// the buffers it points into; the rows are copied column by column, so at most one column is
/// held twice.
fn in_batches(batch: RecordBatch, rows: usize) -> Result<Vec<RecordBatch>, datafusion::arrow::error::ArrowError> {
    use datafusion::arrow::array::{ArrayRef, MutableArrayData, make_array};
    let total = batch.num_rows();
    if total <= rows || rows == 0 {
        return Ok(vec![batch]);
    }
    let (schema, columns, _) = batch.into_parts();
    let starts: Vec<usize> = (0..total).step_by(rows).collect();
    let mut chunks: Vec<Vec<ArrayRef>> = vec![Vec::with_capacity(columns.len()); starts.len()];
    for column in columns {
        let data = column.to_data();
        for (chunk, &start) in chunks.iter_mut().zip(&starts) {
            let mut copy = MutableArrayData::new(vec![&data], false, rows.min(total - start));
            copy.try_extend(0, start, (start + rows).min(total))?;
            chunk.push(make_array(copy.freeze()));
        }
        // `column` goes here: its buffers are freed once each chunk holds its copy.
    }
    chunks.into_iter().map(|columns| RecordBatch::try_new(schema.clone(), columns)).collect()
}

/// What the operators of an executed plan spilled to disk, summed over the plan. A sort or
/// aggregation that outgrows its share of the memory pool writes sorted runs and merges them
/// back: the usual reason a stage slows more than its data grows, which a task log should
/// show (the 10M demo's exact dedup over every line spilled 0.7 GB in 4 to 6 files, 100M's
/// 7.2 GB in 45 or 46, before it ran a bucket at a time).
#[derive(Debug, Default, Clone, Copy, PartialEq)]
pub(crate) struct Spilled {
    pub(crate) files: usize,
    pub(crate) bytes: usize,
    pub(crate) rows: usize,
}

impl Spilled {
    pub(crate) fn of(plan: &dyn datafusion::physical_plan::ExecutionPlan) -> Spilled {
        operator_metrics(plan).iter().fold(Spilled::default(), |total, metrics| Spilled {
            files: total.files + metrics.spill_count().unwrap_or(0),
            bytes: total.bytes + metrics.spilled_bytes().unwrap_or(0),
            rows: total.rows + metrics.spilled_rows().unwrap_or(0),
        })
    }

    /// Runs `frame` to its end: its rows, and what its plan spilled.
    #[cfg(test)]
    pub(crate) async fn collecting(frame: DataFrame) -> Result<(Vec<RecordBatch>, Spilled), datafusion::error::DataFusionError> {
        let (batches, plan) = executed(frame).await?;
        Ok((batches, Spilled::of(plan.as_ref())))
    }
}

/// Calls `visit` with every operator of `plan`: the root first, then each child's operators.
fn visit_operators(plan: &dyn datafusion::physical_plan::ExecutionPlan, visit: &mut dyn FnMut(&dyn datafusion::physical_plan::ExecutionPlan)) {
    visit(plan);
    for child in plan.children() {
        visit_operators(child.as_ref(), visit);
    }
}

/// The operators of `plan` that spilled, each as "name: rows in files" (plan order, root first):
/// which of a query's groupings, sorts or joins outgrew its share is what a user tunes.
fn spilling_operators(plan: &dyn datafusion::physical_plan::ExecutionPlan) -> Vec<String> {
    let mut found = Vec::new();
    visit_operators(plan, &mut |operator| {
        if let Some(metrics) = operator.metrics() {
            if let Some(files) = metrics.spill_count().filter(|&files| files > 0) {
                found.push(format!("{}: {} rows in {files} files", operator.name(), metrics.spilled_rows().unwrap_or(0)));
            }
        }
    });
    found
}

/// The metrics of every operator of `plan` that keeps some, the plan's root first.
pub(crate) fn operator_metrics(plan: &dyn datafusion::physical_plan::ExecutionPlan) -> Vec<datafusion::physical_plan::metrics::MetricsSet> {
    let mut all = Vec::new();
    visit_operators(plan, &mut |operator| all.extend(operator.metrics()));
    all
}

/// Runs `frame` to its end: its rows, and its plan as executed (whose operators' metrics say
/// what they did, [`operator_metrics`]).
#[cfg(test)]
pub(crate) async fn executed(frame: DataFrame) -> Result<(Vec<RecordBatch>, Arc<dyn datafusion::physical_plan::ExecutionPlan>), datafusion::error::DataFusionError> {
    let task_context = Arc::new(frame.task_ctx());
    let plan = frame.create_physical_plan().await?;
    let batches = datafusion::physical_plan::collect(plan.clone(), task_context).await?;
    Ok((batches, plan))
}

/// [`StageContext::materialize`] holds rows in memory up to this share of the engine's memory
/// limit: a quarter of the default limit (half of physical memory) is 1/8 of the machine, and
/// under `--memory-limit 2GiB` (100M lines) 256 MiB, which sends those rows to scratch.
const IN_MEMORY_SHARE: usize = 8;

const MIB: f64 = 1024.0 * 1024.0;

/// What the partitions of one [`StageContext::materialize`] share.
struct Materializing {
    budget: usize,
    held_bytes: AtomicUsize,
    /// Set once the rows held exceed the budget: from then on every partition writes.
    overflowed: AtomicBool,
}

/// `folder`, empty: what an earlier attempt of the stage left there is removed.
fn fresh_folder(folder: &Path) -> Result<(), String> {
    if folder.exists() {
        std::fs::remove_dir_all(folder).map_err(|e| e.to_string())?;
    }
    std::fs::create_dir_all(folder).map_err(|e| e.to_string())
}

/// A partition's file in a scratch folder of [`StageContext::materialize`].
fn scratch_part(folder: &Path, partition: usize) -> PathBuf {
    folder.join(format!("part-{partition:05}.parquet"))
}

/// About the bytes a row of `schema` takes as Arrow: fixed-width values at their width, text
/// and other variable-width values at 16 bytes (a string view; 10M demo lines estimated at
/// 763 MiB took 710).
fn estimated_row_bytes(schema: &SchemaRef) -> usize {
    schema.fields().iter().map(|f| f.data_type().primitive_width().unwrap_or(16)).sum()
}

/// A bucket's file of [`StageContext::materialize_bucketed`]: the table lists its files in
/// path order, so the number is zero-padded and file i is bucket i.
fn bucket_file(folder: &Path, bucket: usize) -> PathBuf {
    folder.join(format!("bucket-{bucket:05}.parquet"))
}

/// The plan that writes `plan`'s rows in `buckets` buckets of `key`, partition i to bucket i,
/// and whether `plan` already had them there: its partitions are DataFusion's hash partitions
/// of `key` alone, `buckets` of them (as over a bucketed table, [`crate::engine::register_bucketed_parquet`]),
/// so nothing is repartitioned.
fn bucket_plan(plan: Arc<dyn datafusion::physical_plan::ExecutionPlan>, key: &str, buckets: usize) -> Result<(Arc<dyn datafusion::physical_plan::ExecutionPlan>, bool), datafusion::error::DataFusionError> {
    use datafusion::physical_expr::expressions::Column;
    use datafusion::physical_plan::{ExecutionPlanProperties, Partitioning};
    let in_buckets = match plan.output_partitioning() {
        Partitioning::Hash(exprs, n) => {
            *n == buckets && exprs.len() == 1 && exprs[0].downcast_ref::<Column>().is_some_and(|c| c.name() == key && plan.schema().index_of(key).ok() == Some(c.index()))
        }
        _ => false,
    };
    if in_buckets {
        return Ok((plan, true));
    }
    let key_expr = datafusion::physical_expr::expressions::col(key, &plan.schema())?;
    Ok((Arc::new(datafusion::physical_plan::repartition::RepartitionExec::try_new(plan, Partitioning::Hash(vec![key_expr], buckets))?), false))
}

/// Row groups of a bucket file: every bucket's encoder holds one row group in memory while the
/// buckets are written side by side.
const BUCKET_ROW_GROUP_ROWS: usize = 65_536;

/// Writes one bucket's rows of `schema` to its file; a bucket no row went to still gets its
/// (empty) file, as file i must be bucket i.
async fn write_bucket(mut stream: datafusion::physical_plan::SendableRecordBatchStream, path: PathBuf, schema: SchemaRef) -> Result<(), String> {
    use futures::StreamExt;
    let mut encoder: Option<ScratchEncoder> = None;
    while let Some(batch) = stream.next().await {
        let batch = batch.map_err(|e| crate::engine::describe_datafusion_error(&e))?;
        let encoder = encoder.get_or_insert_with(|| ScratchEncoder::start(path.clone(), Some(BUCKET_ROW_GROUP_ROWS)));
        if !encoder.send(batch).await {
            // The encoder stopped on an error, which `finish` returns.
            break;
        }
    }
    match encoder {
        Some(encoder) => encoder.finish().await,
        None => scratch_writer(&path, schema, Some(BUCKET_ROW_GROUP_ROWS))?.close().map(|_| ()).map_err(|e| e.to_string()),
    }
}

/// How a stage's rows went to the scratch folder, which names their table.
#[derive(Clone, Copy)]
enum ScratchKind {
    Materialized,
    Bucketed,
}

/// Runs `work(partition, stream)` for each of `streams` (a plan's partitions, in order) on a
/// task of its own, at most `at_once` at a time, and awaits them all ([`every_task`]): the
/// results in partition order, or the first failure.
async fn each_stream<T, F>(streams: Vec<datafusion::physical_plan::SendableRecordBatchStream>, at_once: usize, mut work: impl FnMut(usize, datafusion::physical_plan::SendableRecordBatchStream) -> F) -> Result<Vec<T>, String>
where
    T: Send + 'static,
    F: std::future::Future<Output = Result<T, String>> + Send + 'static,
{
    let running = Arc::new(tokio::sync::Semaphore::new(at_once.max(1)));
    let tasks: Vec<_> = streams
        .into_iter()
        .enumerate()
        .map(|(partition, stream)| {
            let (running, job) = (running.clone(), work(partition, stream));
            tokio::spawn(async move {
                // The semaphore is never closed: a permit always comes.
                let _turn = running.acquire_owned().await;
                job.await
            })
        })
        .collect();
    every_task(tasks).await
}

/// The results of `tasks`, each awaited to its end; the first failure if any failed.
async fn every_task<T>(tasks: Vec<tokio::task::JoinHandle<Result<T, String>>>) -> Result<Vec<T>, String> {
    let mut results = Vec::with_capacity(tasks.len());
    let mut first_error = None;
    for task in tasks {
        match task.await {
            Ok(Ok(result)) => results.push(result),
            Ok(Err(e)) => first_error = first_error.or(Some(e)),
            Err(e) => first_error = first_error.or(Some(e.to_string())),
        }
    }
    first_error.map_or(Ok(results), Err)
}

/// Holds or writes one partition's rows; returns the rows it still holds when it ends: all of
/// them when nothing overflowed, none once it wrote its file.
async fn materialize_partition(mut stream: datafusion::physical_plan::SendableRecordBatchStream, path: PathBuf, shared: Arc<Materializing>) -> Result<Vec<RecordBatch>, String> {
    use futures::StreamExt;
    let mut held = Vec::new();
    let mut seen_buffers = std::collections::HashSet::new();
    let mut encoder: Option<ScratchEncoder> = None;
    while let Some(batch) = stream.next().await {
        let batch = batch.map_err(|e| crate::engine::describe_datafusion_error(&e))?;
        if encoder.is_none() {
            let bytes = new_buffer_bytes(&batch, &mut seen_buffers);
            let total = shared.held_bytes.fetch_add(bytes, Ordering::SeqCst) + bytes;
            if total <= shared.budget && !shared.overflowed.load(Ordering::SeqCst) {
                held.push(batch);
                continue;
            }
            shared.overflowed.store(true, Ordering::SeqCst);
            let started = ScratchEncoder::start(path.clone(), None);
            for earlier in held.drain(..) {
                if !started.send(earlier).await {
                    break;
                }
            }
            encoder = Some(started);
        }
        if let Some(encoder) = encoder.as_ref()
            && !encoder.send(batch).await
        {
            // The encoder stopped on an error, which `finish` returns.
            break;
        }
    }
    if let Some(encoder) = encoder {
        encoder.finish().await?;
    }
    Ok(held)
}

/// A partition's scratch file, encoded on a thread of its own while the partition's next
/// batches are computed: encoding in the task that pulls the rows left the engine waiting
/// (the clean stage at 100M lines took 129.5 s against 113.6 s with DataFusion's writer).
struct ScratchEncoder {
    batches: tokio::sync::mpsc::Sender<RecordBatch>,
    thread: tokio::task::JoinHandle<Result<(), String>>,
}

impl ScratchEncoder {
    /// `row_group_rows`: the rows of a row group, when not the Parquet writer's default.
    fn start(path: PathBuf, row_group_rows: Option<usize>) -> Self {
        let (batches, mut received) = tokio::sync::mpsc::channel::<RecordBatch>(2);
        let thread = tokio::task::spawn_blocking(move || {
            let mut file = None;
            while let Some(batch) = received.blocking_recv() {
                let writer = match file.as_mut() {
                    Some(writer) => writer,
                    None => file.insert(scratch_writer(&path, batch.schema(), row_group_rows)?),
                };
                writer.write(&batch).map_err(|e| e.to_string())?;
            }
            if let Some(writer) = file {
                writer.close().map_err(|e| e.to_string())?;
            }
            Ok(())
        });
        ScratchEncoder { batches, thread }
    }

    /// False once the encoder has stopped (on an error).
    async fn send(&self, batch: RecordBatch) -> bool {
        self.batches.send(batch).await.is_ok()
    }

    async fn finish(self) -> Result<(), String> {
        drop(self.batches);
        self.thread.await.map_err(|e| e.to_string())?
    }
}

/// The bytes of the buffers of `batch` not counted before (`seen` holds their addresses).
/// Batches share buffers — the text of a string-view column lives in blocks many batches point
/// into — so `get_array_memory_size` per batch counted the same blocks again and again.
fn new_buffer_bytes(batch: &RecordBatch, seen: &mut std::collections::HashSet<usize>) -> usize {
    fn of(data: &datafusion::arrow::array::ArrayData, seen: &mut std::collections::HashSet<usize>) -> usize {
        let mut bytes = 0;
        for buffer in data.buffers().iter().chain(data.nulls().map(|n| n.buffer())) {
            if seen.insert(buffer.data_ptr().as_ptr() as usize) {
                bytes += buffer.capacity();
            }
        }
        bytes + data.child_data().iter().map(|child| of(child, seen)).sum::<usize>()
    }
    batch.columns().iter().map(|column| of(&column.to_data(), seen)).sum()
}

/// A Parquet writer for rows written once and read back at once: fast compression. (LZ4 was
/// tried, 2026-11-24: on 10M lines the feature SQL stages were 0.9 s faster together, on 100M
/// lines the clean stage 15 s slower writing it and the whole run 16 s slower, one run each.)
fn scratch_writer(path: &Path, schema: SchemaRef, row_group_rows: Option<usize>) -> Result<parquet::arrow::ArrowWriter<std::fs::File>, String> {
    use parquet::basic::{Compression, ZstdLevel};
    let file = std::fs::File::create(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let mut properties = parquet::file::properties::WriterProperties::builder().set_compression(Compression::ZSTD(ZstdLevel::try_new(1).map_err(|e| e.to_string())?));
    if let Some(rows) = row_group_rows {
        properties = properties.set_max_row_group_row_count(Some(rows));
    }
    let properties = properties.build();
    parquet::arrow::ArrowWriter::try_new(file, schema, Some(properties)).map_err(|e| e.to_string())
}

/// Time spent in each phase of a stage, logged at debug level (`segflow run -v`): where a
/// slow stage spends its time, without a profiler.
pub struct Phases<'a> {
    stage: &'a str,
    last: std::time::Instant,
}

impl<'a> Phases<'a> {
    pub fn start(stage: &'a str) -> Self {
        Phases { stage, last: std::time::Instant::now() }
    }

    /// Logs the time since the previous phase ended and the resident memory after it, having
    /// given back what the phase freed ([`release_free_memory`]).
    pub fn done(&mut self, phase: &str) {
        let now = std::time::Instant::now();
        release_free_memory();
        tracing::debug!(stage = self.stage, phase, seconds = (now - self.last).as_secs_f64(), resident_mib = resident_mib(), "phase done");
        self.last = now;
    }
}

/// Gives the heap's free pages back to the operating system. glibc keeps freed memory for
/// reuse, in one arena per thread that allocated it, so a process's resident size only
/// grows: at 100M transaction lines the SQL stages left about a gigabyte resident under the
/// churn stage's forest. Trimming takes milliseconds, so it runs between stages and phases.
pub fn release_free_memory() {
    // SAFETY: malloc_trim only gives back whole free pages of the allocator's own arenas.
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    unsafe {
        libc::malloc_trim(0);
    }
}

/// The process's resident set size in MiB (Linux; `None` elsewhere), for the phase logs.
pub fn resident_mib() -> Option<u64> {
    let statm = std::fs::read_to_string("/proc/self/statm").ok()?;
    let pages: u64 = statm.split_whitespace().nth(1)?.parse().ok()?;
    // SAFETY: sysconf only reads a configuration value.
    let page_size = u64::try_from(unsafe { libc::sysconf(libc::_SC_PAGESIZE) }).ok()?;
    Some(pages * page_size / (1024 * 1024))
}

/// What a stage's run produced.
pub struct StageOutput {
    pub results: Vec<StageResult>,
    pub metrics: StageMetrics,
    /// Files to commit with the run's tables, such as a saved model.
    pub artifacts: Vec<Artifact>,
}

impl StageOutput {
    pub fn new(results: Vec<StageResult>, metrics: StageMetrics) -> Self {
        StageOutput { results, metrics, artifacts: Vec::new() }
    }
}

/// A folder of files a run commits beside its tables, at
/// `<output_root>/<folder>/run_date=<run date>/`, by the same protocol: staged, then swapped
/// in with `_manifest.json` and `_SUCCESS`, only when the whole run succeeded.
pub struct Artifact {
    /// Relative to the output root, e.g. `models/segments`.
    pub folder: String,
    /// File name and content.
    pub files: Vec<(String, crate::sink::FileContent)>,
}

/// The folder under an output root where stages keep their saved models.
pub const MODELS_DIR: &str = "models";

#[async_trait]
pub trait Stage: Send + Sync + Debug {
    /// Names of results besides the main one; each becomes the table `<stage>_<part>`.
    fn secondary_results(&self) -> &'static [&'static str] {
        &[]
    }

    /// The stage's results as lazy frames, planned against the schemas of the tables in the
    /// session. Reads no data: `validate` calls this with empty tables standing in for inputs.
    async fn plan(&self, ctx: &StageContext<'_>) -> Result<Vec<StageResult>, Vec<StageProblem>>;

    /// Produces the results. Lazy frames are fine: the runner decides what to materialise.
    async fn run(&self, ctx: &StageContext<'_>) -> Result<StageOutput, StageFailure>;
}

/// Counts a stage reports about its run (rows in, rows out, rejected …), for the run summary.
pub type StageMetrics = BTreeMap<String, i64>;

/// A stage that failed while running: what happened, for the log and the exit code 1.
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct StageFailure {
    pub message: String,
}

impl From<datafusion::error::DataFusionError> for StageFailure {
    fn from(e: datafusion::error::DataFusionError) -> Self {
        StageFailure { message: crate::engine::describe_datafusion_error(&e) }
    }
}

/// A stage's seed: the pipeline seed mixed with the stage name (FNV-1a), so adding or
/// reordering stages does not change the others' random draws.
pub fn derive_seed(pipeline_seed: u64, stage_name: &str) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325 ^ pipeline_seed;
    for byte in stage_name.bytes() {
        hash ^= u64::from(byte);
        hash = hash.wrapping_mul(0x0100_0000_01b3);
    }
    hash
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_registered_kind_has_a_distinct_name() {
        let mut names: Vec<_> = kind_names().collect();
        let before = names.len();
        names.sort();
        names.dedup();
        assert_eq!(names.len(), before);
    }

    #[test]
    fn rows_handed_to_the_engine_come_in_batches_of_their_own_in_order() {
        use datafusion::arrow::array::{ArrayRef, Int64Array, StringArray};
        let ids: ArrayRef = Arc::new(Int64Array::from_iter_values(0..20_000));
        let names: ArrayRef = Arc::new(StringArray::from_iter_values((0..20_000).map(|i| format!("customer {i}"))));
        let batch = RecordBatch::try_from_iter([("id", ids), ("name", names)]).unwrap();
        let whole_size = batch.get_array_memory_size();
        let batches = in_batches(batch.clone(), 8192).unwrap();
        assert_eq!(batches.iter().map(|b| b.num_rows()).collect::<Vec<_>>(), [8192, 8192, 3616]);
        assert_eq!(datafusion::arrow::compute::concat_batches(&batch.schema(), &batches).unwrap(), batch);
        // Each batch counts its own rows: slices would each count the whole buffers.
        let sizes: usize = batches.iter().map(|b| b.get_array_memory_size()).sum();
        assert!(sizes < whole_size * 3 / 2, "{sizes} bytes in batches of a {whole_size}-byte batch");
        assert_eq!(in_batches(batch.clone(), 20_000).unwrap(), [batch]);
    }

    /// Sorts `rows` integers under `memory_limit`: what the plan spilled, and the rows it gave.
    async fn spilled_by_a_sort(rows: usize, memory_limit: usize) -> (Spilled, Vec<i64>) {
        let options = crate::engine::EngineOptions { memory_limit, threads: 1, ..Default::default() };
        let session = crate::engine::session(&options).unwrap();
        let frame = session.sql(&format!("SELECT value FROM generate_series(1, {rows}) ORDER BY value DESC")).await.unwrap();
        let (batches, spilled) = Spilled::collecting(frame).await.unwrap();
        let values = batches
            .iter()
            .flat_map(|b| b.column(0).as_any().downcast_ref::<datafusion::arrow::array::Int64Array>().unwrap().values().to_vec())
            .collect();
        (spilled, values)
    }

    #[tokio::test]
    async fn the_spill_log_names_each_operator_that_spilled_with_its_rows_and_files() {
        let options = crate::engine::EngineOptions { memory_limit: 16 << 20, threads: 1, ..Default::default() };
        let session = crate::engine::session(&options).unwrap();
        let frame = session.sql("SELECT value FROM generate_series(1, 1000000) ORDER BY value DESC").await.unwrap();
        let (_, plan) = executed(frame).await.unwrap();
        let spilled = Spilled::of(plan.as_ref());
        assert!(spilled.files > 0, "{spilled:?}");
        assert_eq!(spilling_operators(plan.as_ref()), [format!("SortExec: {} rows in {} files", spilled.rows, spilled.files)]);
    }

    #[tokio::test]
    async fn spilled_counts_what_the_operators_of_a_plan_wrote_to_disk_and_nothing_when_it_fits() {
        let rows = 1_000_000;
        let (tight, sorted) = spilled_by_a_sort(rows, 16 << 20).await;
        assert_eq!(sorted, (1..=rows as i64).rev().collect::<Vec<_>>(), "a spilling sort still sorts");
        assert!(tight.files > 0 && tight.bytes > 0, "{tight:?}");
        assert!(tight.rows > 0 && tight.rows <= rows, "{tight:?}");
        let (roomy, _) = spilled_by_a_sort(rows, 1 << 30).await;
        assert_eq!(roomy, Spilled::default());
    }

    /// 200,000 lines of 1,000 customers, 3 lines an invoice.
    const LINES: &str = "SELECT value % 1000 AS customer_id, value / 3 AS invoice, CAST(value % 7 AS DOUBLE) AS amount FROM generate_series(0, 199999)";
    /// The 1,000 customers of [`LINES`], each with a region.
    const CREATE_CUSTOMERS: &str = "CREATE TABLE customers AS SELECT value AS customer_id, value % 3 AS region FROM generate_series(0, 999)";

    /// `lines` (200,000 rows with a `customer_id`) bucketed by customer in buckets of
    /// `bucket_rows` rows under `threads` threads.
    async fn bucketed_lines(lines: &str, scratch: &Path, session: &SessionContext, threads: usize, bucket_rows: usize) -> DataFrame {
        let vars = Vars::default();
        let ctx = StageContext { session, stage_name: "lines", vars: &vars, seed: 0, run_id: "test", run_date: "2025-01-01", output_root: scratch, scratch: Some(scratch), distributed: false, threads, bucket_rows };
        let lines = session.sql(lines).await.unwrap();
        ctx.materialize_bucketed("lines", lines, "customer_id", 200_000).await.unwrap()
    }

    #[tokio::test]
    async fn bucketed_rows_are_grouped_and_joined_by_their_key_without_moving_a_row_between_partitions() {
        let scratch = tempfile::tempdir().unwrap();
        // 200,000 rows of 24 bytes, more than an eighth of the 32 MiB limit: they go to disk.
        let session = crate::engine::session(&crate::engine::EngineOptions { threads: 2, memory_limit: 32 << 20, ..Default::default() }).unwrap();
        let lines = bucketed_lines(LINES, scratch.path(), &session, 2, 25_000).await;
        assert_eq!(session.state().config().target_partitions(), 8, "200,000 rows in buckets of 25,000: a partition per bucket");
        session.register_table("lines", lines.into_view()).unwrap();
        session.sql(CREATE_CUSTOMERS).await.unwrap().collect().await.unwrap();
        let per_customer = "WITH orders AS (SELECT customer_id, invoice, SUM(amount) AS value FROM lines GROUP BY customer_id, invoice), \
            spend AS (SELECT customer_id, COUNT(*) AS orders, SUM(value) AS spend FROM orders GROUP BY customer_id) \
            SELECT s.customer_id, s.orders, s.spend, c.region FROM spend s JOIN customers c ON c.customer_id = s.customer_id";
        let frame = session.sql(per_customer).await.unwrap();
        let plan = frame.clone().create_physical_plan().await.unwrap();
        let shown = datafusion::physical_plan::displayable(plan.as_ref()).indent(true).to_string();
        // The lines' side: no repartitioning above their scan, whose partitions are the buckets.
        let lines_side: Vec<&str> = shown.lines().skip_while(|l| !l.contains("AggregateExec")).collect();
        let repartitions = shown.lines().filter(|l| l.contains("RepartitionExec")).count();
        assert_eq!(repartitions, 1, "only the customers are repartitioned, into the lines' buckets:\n{shown}");
        assert!(lines_side.iter().any(|l| l.contains("DataSourceExec") && l.contains("bucket-00007")), "{shown}");
        // The same rows as the query over the lines as they were.
        let mut rows = frame.sort(vec![datafusion::logical_expr::col("customer_id").sort(true, true)]).unwrap().collect().await.unwrap();
        let expected_session = crate::engine::session(&crate::engine::EngineOptions { threads: 2, ..Default::default() }).unwrap();
        expected_session.sql(&format!("CREATE VIEW lines AS {LINES}")).await.unwrap();
        expected_session.sql(CREATE_CUSTOMERS).await.unwrap().collect().await.unwrap();
        let expected = expected_session.sql(per_customer).await.unwrap().sort(vec![datafusion::logical_expr::col("customer_id").sort(true, true)]).unwrap().collect().await.unwrap();
        let schema = expected[0].schema();
        rows = vec![datafusion::arrow::compute::concat_batches(&schema, &rows).unwrap()];
        assert_eq!(rows[0].num_rows(), 1000);
        assert_eq!(rows[0], datafusion::arrow::compute::concat_batches(&schema, &expected).unwrap());
    }

    #[tokio::test]
    async fn a_bucket_no_row_went_to_still_has_its_file_so_file_i_is_bucket_i() {
        let scratch = tempfile::tempdir().unwrap();
        let session = crate::engine::session(&crate::engine::EngineOptions { threads: 2, memory_limit: 32 << 20, ..Default::default() }).unwrap();
        // Three customers in eight buckets: at least five are empty.
        let lines = bucketed_lines("SELECT value % 3 AS customer_id, value AS invoice, CAST(value AS DOUBLE) AS amount FROM generate_series(0, 199999)", scratch.path(), &session, 2, 25_000).await;
        let files = std::fs::read_dir(scratch.path().join("lines_lines")).unwrap().count();
        assert_eq!(files, 8);
        // Grouped by customer within the buckets: every row, each customer once.
        let customers = lines.clone().aggregate(vec![datafusion::logical_expr::col("customer_id")], vec![]).unwrap();
        assert_eq!(customers.count().await.unwrap(), 3);
        assert_eq!(lines.count().await.unwrap(), 200_000);
    }

    /// The customer ids in each bucket file of `folder`, in bucket order.
    fn customers_per_bucket(folder: &Path) -> Vec<std::collections::BTreeSet<i64>> {
        let mut files: Vec<PathBuf> = std::fs::read_dir(folder).unwrap().map(|e| e.unwrap().path()).collect();
        files.sort();
        files
            .iter()
            .map(|path| {
                let reader = parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(std::fs::File::open(path).unwrap()).unwrap().build().unwrap();
                let mut customers = std::collections::BTreeSet::new();
                for batch in reader {
                    let batch = batch.unwrap();
                    let ids = batch.column_by_name("customer_id").unwrap().as_any().downcast_ref::<datafusion::arrow::array::Int64Array>().unwrap();
                    customers.extend(ids.values().iter().copied());
                }
                customers
            })
            .collect()
    }

    #[tokio::test]
    async fn bucketed_rows_deduplicated_a_bucket_at_a_time_stay_in_their_buckets_and_nothing_is_repartitioned() {
        let scratch = tempfile::tempdir().unwrap();
        let session = crate::engine::session(&crate::engine::EngineOptions { threads: 2, memory_limit: 32 << 20, ..Default::default() }).unwrap();
        let vars = Vars::default();
        let ctx = StageContext { session: &session, stage_name: "lines", vars: &vars, seed: 0, run_id: "test", run_date: "2025-01-01", output_root: scratch.path(), scratch: Some(scratch.path()), distributed: false, threads: 2, bucket_rows: 25_000 };
        // Every line twice: lines 2i and 2i + 1 are equal.
        let lines = session.sql("SELECT (value / 2) % 1000 AS customer_id, value / 2 AS invoice, CAST((value / 2) % 7 AS DOUBLE) AS amount FROM generate_series(0, 199999)").await.unwrap();
        let buckets = ctx.bucket_count(lines.schema().inner(), 200_000).expect("200,000 lines of 24 bytes under 32 MiB are bucketed");
        assert_eq!(buckets, 8);
        let lines = ctx.write_buckets("valid", lines, "customer_id", buckets).await.unwrap();
        let distinct = lines.distinct().unwrap();
        let (plan, in_buckets) = bucket_plan(distinct.clone().create_physical_plan().await.unwrap(), "customer_id", buckets).unwrap();
        let shown = datafusion::physical_plan::displayable(plan.as_ref()).indent(true).to_string();
        assert!(in_buckets, "the distinct lines keep the buckets' partitions:\n{shown}");
        assert!(!shown.contains("RepartitionExec"), "{shown}");
        let clean = ctx.write_buckets("clean", distinct, "customer_id", buckets).await.unwrap();
        assert_eq!(clean.clone().count().await.unwrap(), 100_000);
        // Bucket i of the clean lines holds the customers of bucket i of the lines: its file
        // is the partition that deduplicated that bucket.
        let before = customers_per_bucket(&scratch.path().join("lines_valid"));
        let after = customers_per_bucket(&scratch.path().join("lines_clean"));
        assert_eq!(after.len(), 8);
        assert_eq!(before, after);
        assert_eq!(after.iter().map(|c| c.len()).sum::<usize>(), 1000, "each customer in one bucket");
        ctx.drop_scratch("valid").unwrap();
        assert!(!scratch.path().join("lines_valid").exists());
        assert_eq!(clean.count().await.unwrap(), 100_000, "the clean lines do not read the dropped ones");
    }

    #[tokio::test]
    async fn rows_of_no_more_than_a_bucket_per_thread_or_held_in_memory_are_not_bucketed() {
        for (threads, memory_limit, bucket_rows) in [(4, 32 << 20, 50_000), (2, 1 << 30, 25_000)] {
            let scratch = tempfile::tempdir().unwrap();
            let session = crate::engine::session(&crate::engine::EngineOptions { threads, memory_limit, ..Default::default() }).unwrap();
            let lines = bucketed_lines(LINES, scratch.path(), &session, threads, bucket_rows).await;
            assert_eq!(session.state().config().target_partitions(), threads);
            assert_eq!(lines.count().await.unwrap(), 200_000);
            assert!(!scratch.path().join("lines_lines").join("bucket-00000.parquet").exists());
        }
    }

    #[test]
    fn stage_seeds_depend_on_the_pipeline_seed_and_the_stage_name() {
        assert_eq!(derive_seed(42, "segment"), derive_seed(42, "segment"));
        assert_ne!(derive_seed(42, "segment"), derive_seed(43, "segment"));
        assert_ne!(derive_seed(42, "segment"), derive_seed(42, "churn"));
    }
}
