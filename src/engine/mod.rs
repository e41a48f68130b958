//! The one place a DataFusion session is built, and where inputs become tables.

use std::num::NonZeroUsize;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use datafusion::arrow::datatypes::{DataType, SchemaRef};
use datafusion::datasource::file_format::parquet::ParquetFormat;
use datafusion::datasource::listing::{ListingOptions, ListingTable, ListingTableConfig, ListingTableUrl};
use datafusion::error::DataFusionError;
use datafusion::execution::disk_manager::{DiskManagerBuilder, DiskManagerMode};
use datafusion::execution::memory_pool::TrackConsumersPool;
use datafusion::execution::runtime_env::RuntimeEnvBuilder;
use datafusion::execution::session_state::SessionStateBuilder;
use datafusion::prelude::{SessionConfig, SessionContext};

mod pool;
use pool::HoldersFairPool;

/// Runtime knobs of the engine. What a pipeline computes lives in its YAML; how hard the
/// machine works on it lives here.
#[derive(Debug, Clone)]
pub struct EngineOptions {
    /// Partitions DataFusion plans for (and threads it uses). Default: the machine's cores.
    pub threads: usize,
    /// Memory the query engine may hold before it spills to disk, in bytes.
    pub memory_limit: usize,
    /// Where spill files go. Default: the system's temporary folder.
    pub spill_dir: Option<PathBuf>,
    /// Where queries execute.
    pub engine: Engine,
    /// Rows per bucket where a stage writes its rows in buckets (a clean stage's `bucket_by`).
    pub bucket_rows: usize,
}

/// Rows per bucket by default: a bucket of transaction lines grouped by invoice and by customer
/// holds tables of a few hundred thousand groups, which the engine neither spills nor looks up
/// far outside the processor's caches.
pub const DEFAULT_BUCKET_ROWS: usize = 2_000_000;

/// Where a run's queries execute.
#[derive(Debug, Clone, PartialEq, Default)]
pub enum Engine {
    /// In this process (the default).
    #[default]
    Local,
    /// Apache DataFusion Ballista: a scheduler and executors started in this process.
    BallistaStandalone,
    /// Apache DataFusion Ballista: the cluster whose scheduler is at this `df://host:port`.
    BallistaRemote(String),
}

impl std::str::FromStr for Engine {
    type Err = String;
    fn from_str(text: &str) -> Result<Engine, String> {
        match text {
            "local" => Ok(Engine::Local),
            "ballista" | "ballista-standalone" => Ok(Engine::BallistaStandalone),
            url if url.starts_with("df://") => Ok(Engine::BallistaRemote(url.to_string())),
            other => Err(format!("`{other}` is not an engine: use `local`, `ballista-standalone` (a Ballista scheduler and executor in this process) or a scheduler URL such as df://localhost:50050")),
        }
    }
}

impl Default for EngineOptions {
    fn default() -> Self {
        EngineOptions { threads: default_threads(), memory_limit: default_memory_limit(), spill_dir: None, engine: Engine::Local, bucket_rows: DEFAULT_BUCKET_ROWS }
    }
}

pub fn default_threads() -> usize {
    std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1)
}

/// Half of physical memory: the engine spills before the machine swaps, and the models that
/// train on the collected feature table have room too.
pub fn default_memory_limit() -> usize {
    let total = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|text| {
            text.lines()
                .find(|l| l.starts_with("MemTotal:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kb| kb.parse::<usize>().ok())
        })
        .map(|kb| kb * 1024)
        .unwrap_or(8 << 30);
    total / 2
}

/// Builds the session: `threads` target partitions, a memory pool of
/// `memory_limit` bytes, spill files on disk, and SQL spans collected so errors can point at a
/// line and column.
pub fn session(options: &EngineOptions) -> Result<SessionContext, DataFusionError> {
    Ok(SessionContext::new_with_state(session_state(options)?))
}

/// With a Ballista cluster on another host, the executors read the inputs themselves: a path
/// of this machine's file system is only good if they mount the same one, which the operator
/// says with `SEGFLOW_EXECUTORS_SHARE_FILES=1`. A scheduler on loopback shares this machine.
pub fn check_inputs_reachable<'a>(engine: &Engine, inputs: impl Iterator<Item = (&'a str, &'a InputLocation)>) -> Result<(), String> {
    let Engine::BallistaRemote(url) = engine else { return Ok(()) };
    let host = url.trim_start_matches("df://").split([':', '/']).next().unwrap_or_default();
    let loopback = matches!(host, "localhost" | "127.0.0.1" | "::1" | "[::1]") || host.starts_with("127.");
    if loopback || std::env::var("SEGFLOW_EXECUTORS_SHARE_FILES").is_ok_and(|v| v == "1") {
        return Ok(());
    }
    let local: Vec<String> = inputs
        .filter_map(|(name, location)| match location {
            InputLocation::File(p) | InputLocation::Folder(p) => Some(format!("`{name}` ({})", p.display())),
            InputLocation::Glob(g) => Some(format!("`{name}` ({g})")),
        })
        .collect();
    if local.is_empty() {
        return Ok(());
    }
    Err(format!(
        "the Ballista executors at {url} read the inputs themselves, but {} {} this machine's file system; put the files where the executors mount the same paths and set SEGFLOW_EXECUTORS_SHARE_FILES=1, or run with --engine local",
        local.join(", "),
        if local.len() == 1 { "is a path of" } else { "are paths of" }
    ))
}

/// `"name"` with embedded quotes doubled: a column name as a SQL identifier.
pub fn quote_ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// The session a run executes in: local, or on Ballista (planning stays here; the physical
/// plans go to the scheduler, which runs them on its executors).
pub async fn run_session(options: &EngineOptions) -> Result<SessionContext, DataFusionError> {
    use ballista::prelude::SessionContextExt;
    match &options.engine {
        Engine::Local => session(options),
        Engine::BallistaStandalone => SessionContext::standalone_with_state(session_state(options)?).await,
        Engine::BallistaRemote(url) => SessionContext::remote_with_state(url, session_state(options)?).await,
    }
}

fn session_state(options: &EngineOptions) -> Result<datafusion::execution::session_state::SessionState, DataFusionError> {
    use ballista::prelude::SessionConfigExt;
    let mut config = SessionConfig::new()
        .with_target_partitions(options.threads.max(1))
        .with_information_schema(true);
    config.options_mut().sql_parser.collect_spans = true;
    if matches!(options.engine, Engine::Local) {
        // A partial aggregate that does not cut its rows tenfold is skipped (DataFusion's
        // default skips one that cuts them less than 1.25-fold), its rows going straight to
        // the final one. Grouping lines by invoice cuts them about twofold, so the partial
        // tables held as many groups as the final ones and every line was looked up in a table
        // of millions twice. Measured on
        // the demo pipeline, same bytes: the two feature SQL stages 61.5 s against 71.0–75.9 s
        // at 100M, 3.8–4.1 s against 4.2–4.5 s at 10M. Left at the default on Ballista, where a
        // partial aggregate also shrinks what the executors shuffle (not measured there).
        config.options_mut().execution.skip_partial_aggregation_probe_ratio_threshold = 0.1;
    }
    let disk = match &options.spill_dir {
        Some(dir) => DiskManagerBuilder::default().with_mode(DiskManagerMode::Directories(vec![dir.clone()])),
        None => DiskManagerBuilder::default().with_mode(DiskManagerMode::OsTmpDirectory),
    };
    let runtime = RuntimeEnvBuilder::new()
        // Spilling operators share the limit fairly among those holding memory (see `pool`), and
        // a query that runs out of memory names the operators holding the most of it.
        .with_memory_pool(Arc::new(TrackConsumersPool::new(HoldersFairPool::new(options.memory_limit), NonZeroUsize::new(5).expect("5 is not zero"))))
        .with_disk_manager_builder(disk)
        .build_arc()?;
    // Ballista 55's adaptive planner (its default) loses a job whose executor dies mid-run:
    // it rolls the stages back, then ignores the re-run tasks' status ("stage is not in
    // running") and the job never finishes (tests/ballista/loopback_cluster.sh). The static
    // distributed planner re-runs the lost tasks and the job completes.
    let config = config.upgrade_for_ballista().with_ballista_adaptive_query_planner(false);
    let mut state = SessionStateBuilder::new().with_config(config).with_runtime_env(runtime).with_default_features().build();
    // segflow's own SQL functions (`segflow_assign`): the standalone executor runs with this
    // state, so it knows them; a cluster's executors must register them too.
    for function in crate::deploy::udf::functions() {
        datafusion::execution::FunctionRegistry::register_udf(&mut state, function)?;
    }
    Ok(state)
}

/// Where an input's files are.
#[derive(Debug, Clone, PartialEq)]
pub enum InputLocation {
    File(PathBuf),
    /// A glob such as `data/*.parquet`; the pattern is matched by DataFusion.
    Glob(String),
    /// A folder of Parquet files, possibly Hive-partitioned (`year=2024/…`).
    Folder(PathBuf),
}

impl InputLocation {
    /// Classifies `path` and checks it can be read: a missing file, an empty glob or a
    /// missing folder is an error here, before any work starts.
    pub fn resolve(path: &Path) -> Result<InputLocation, String> {
        let text = path.to_string_lossy();
        if text.contains(['*', '?', '[']) {
            let matches = glob::glob(&text).map_err(|e| format!("invalid glob pattern `{text}`: {e}"))?;
            if matches.filter_map(Result::ok).next().is_none() {
                return Err(format!("no file matches `{}`", crate::diag::display_path(path).display()));
            }
            return Ok(InputLocation::Glob(text.into_owned()));
        }
        match std::fs::metadata(path) {
            Ok(meta) if meta.is_dir() => Ok(InputLocation::Folder(path.to_path_buf())),
            Ok(_) => Ok(InputLocation::File(path.to_path_buf())),
            Err(_) => Err(format!("input file not found: {}", crate::diag::display_path(path).display())),
        }
    }

    fn url(&self) -> Result<ListingTableUrl, DataFusionError> {
        match self {
            InputLocation::File(p) => ListingTableUrl::parse(p.to_string_lossy()),
            InputLocation::Glob(g) => ListingTableUrl::parse(g),
            // A trailing slash tells DataFusion this is a folder to list.
            InputLocation::Folder(p) => ListingTableUrl::parse(format!("{}/", p.to_string_lossy().trim_end_matches('/'))),
        }
    }
}

/// Registers a Parquet input as a table. Only file footers are read (schema inference), so
/// `validate` may call this. Hive partition folders (`key=value/`) become string columns.
pub async fn register_parquet(ctx: &SessionContext, name: &str, location: &InputLocation) -> Result<SchemaRef, DataFusionError> {
    let url = location.url()?;
    let state = ctx.state();
    let mut options = ListingOptions::new(Arc::new(ParquetFormat::default()))
        .with_file_extension(match location {
            InputLocation::File(_) => "",
            _ => ".parquet",
        });
    if let InputLocation::Folder(_) = location {
        let partitions = options.infer_partitions(&state, &url).await?;
        options = options.with_table_partition_cols(partitions.into_iter().map(|c| (c, DataType::Utf8)).collect());
    }
    let config = ListingTableConfig::new(url).with_listing_options(options).infer_schema(&state).await?;
    let table = ListingTable::try_new(config)?;
    let schema = datafusion::catalog::TableProvider::schema(&table);
    ctx.register_table(name, Arc::new(table))?;
    Ok(schema)
}

/// Registers the bucket files of `folder` (`bucket-00000.parquet` …, one per bucket, written
/// through DataFusion's own hash repartitioning on `key` into `buckets` partitions) as a table
/// whose scan says so: partition i reads file i and is declared hash-partitioned on `key`. The
/// planner then groups by `key` (or by `key` and more) and joins on it without moving rows
/// between partitions, and a join with another table repartitions only the other side, by the
/// same hash, when the session plans `buckets` partitions.
pub async fn register_bucketed_parquet(ctx: &SessionContext, name: &str, folder: &Path, key: &str, buckets: usize) -> Result<SchemaRef, DataFusionError> {
    let url = InputLocation::Folder(folder.to_path_buf()).url()?;
    let state = ctx.state();
    let partitioning = datafusion::logical_expr::Partitioning::Hash(vec![datafusion::logical_expr::ident(key)], buckets);
    let options = ListingOptions::new(Arc::new(ParquetFormat::default())).with_file_extension(".parquet").with_output_partitioning(Some(partitioning));
    let config = ListingTableConfig::new(url).with_listing_options(options).infer_schema(&state).await?;
    let table = ListingTable::try_new(config)?;
    let schema = datafusion::catalog::TableProvider::schema(&table);
    ctx.register_table(name, Arc::new(table))?;
    Ok(schema)
}

/// The type names a pipeline declares columns with (an input's `schema`, a clean stage's
/// `type`), for messages and suggestions.
pub const TYPE_NAMES: &[&str] = &["string", "int64", "int32", "float64", "float32", "bool", "date", "timestamp"];

/// The Arrow type a declared type name stands for (`double` and `boolean` are accepted too).
pub fn declared_type(name: &str) -> Option<DataType> {
    Some(match name {
        "string" => DataType::Utf8,
        "int64" => DataType::Int64,
        "int32" => DataType::Int32,
        "float64" | "double" => DataType::Float64,
        "float32" => DataType::Float32,
        "bool" | "boolean" => DataType::Boolean,
        "date" => DataType::Date32,
        "timestamp" => DataType::Timestamp(datafusion::arrow::datatypes::TimeUnit::Microsecond, None),
        _ => return None,
    })
}

/// Whether a file's column of type `actual` satisfies the declared `type_name`: strings in any
/// layout, dates of either width and timestamps of any unit count. `None`: unknown name.
pub fn declared_type_holds(type_name: &str, actual: &DataType) -> Option<bool> {
    let holds = match declared_type(type_name)? {
        DataType::Utf8 => matches!(actual, DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View),
        DataType::Date32 => matches!(actual, DataType::Date32 | DataType::Date64),
        DataType::Timestamp(_, _) => matches!(actual, DataType::Timestamp(_, _)),
        expected => *actual == expected,
    };
    Some(holds)
}

/// "unknown type `x` for column `c`; types are: …" and the closest valid name.
pub fn unknown_type(type_name: &str, column: &str) -> (String, Option<String>) {
    (
        format!("unknown type `{type_name}` for column `{column}`; types are: {}", crate::config::yaml::quoted_list(TYPE_NAMES.iter().copied())),
        crate::config::yaml::did_you_mean(type_name, TYPE_NAMES.iter().copied()),
    )
}

/// A DataFusion error as a user reads it: the root cause, without the internal layers.
pub fn describe_datafusion_error(e: &DataFusionError) -> String {
    let root = e.find_root();
    let mut text = root.to_string();
    // DataFusion prefixes its messages with the error class ("Error during planning: …"),
    // sometimes twice; the class helps nobody who is fixing a pipeline.
    const PREFIXES: &[&str] =
        &["Error during planning: ", "Schema error: ", "SQL error: ", "Execution error: ", "Arrow error: ", "External error: ", "Parquet error: "];
    while let Some(rest) = PREFIXES.iter().find_map(|p| text.strip_prefix(p)) {
        text = rest.to_string();
    }
    // The operators listed say where the memory went; the one who reads this needs to know
    // what to change.
    if matches!(root, DataFusionError::ResourcesExhausted(_)) {
        text.push_str("\nThe query engine needed more memory than `--memory-limit` gives it (default: half of physical memory): raise the limit.");
    }
    text
}

#[cfg(test)]
mod tests {
    use datafusion::execution::memory_pool::{FairSpillPool, MemoryConsumer};

    use super::*;

    #[tokio::test]
    async fn a_query_out_of_memory_names_the_operators_holding_it_and_the_option_that_gives_it_more() {
        // A hash join's build side cannot spill: on a 1 MiB pool, a million build rows fail.
        let options = EngineOptions { memory_limit: 1 << 20, threads: 1, ..Default::default() };
        let session = session(&options).unwrap();
        let sql = "SELECT COUNT(*) FROM generate_series(1, 1000000) a JOIN generate_series(1, 1000000) b ON a.value = b.value";
        let error = session.sql(sql).await.unwrap().collect().await.unwrap_err();
        let described = describe_datafusion_error(&error);
        assert!(described.contains("Resources exhausted"), "{described}");
        assert!(described.contains("top memory consumers"), "{described}");
        assert!(described.contains("HashJoinInput"), "{described}");
        assert!(described.ends_with("`--memory-limit` gives it (default: half of physical memory): raise the limit."), "{described}");
    }

    /// Runs `sql` in `session` beside `idle` spilling operators registered on its memory pool
    /// (what the operators of a plan are until their input arrives): the rows it gave and what
    /// it spilled.
    async fn run_beside_idle_operators(session: &SessionContext, idle: usize, sql: &str) -> Result<(usize, crate::stage::Spilled), DataFusionError> {
        let pool = &session.runtime_env().memory_pool;
        let _idle: Vec<_> = (0..idle).map(|i| MemoryConsumer::new(format!("idle {i}")).with_can_spill(true).register(pool)).collect();
        let (batches, spilled) = crate::stage::Spilled::collecting(session.sql(sql).await?).await?;
        Ok((batches.iter().map(|b| b.num_rows()).sum(), spilled))
    }

    #[tokio::test]
    async fn an_aggregate_that_spills_and_replays_its_spills_finishes_beside_idle_operators_of_other_plans() {
        // 500,000 groups with string keys and a distinct count: more than 64 MiB to aggregate.
        let sql = "SELECT k, COUNT(DISTINCT m), SUM(v), MIN(v) FROM (SELECT concat('invoice-', CAST(value % 500000 AS VARCHAR)) AS k, value % 13 AS m, value AS v FROM generate_series(1, 2000000)) GROUP BY k";
        let limit = 64 << 20;
        let options = EngineOptions { memory_limit: limit, threads: 2, ..Default::default() };
        let (rows, spilled) = run_beside_idle_operators(&session(&options).unwrap(), 20, sql).await.unwrap();
        assert_eq!(rows, 500_000);
        assert!(spilled.files > 1, "the aggregate should have spilled and replayed its spills: {spilled:?}");

        // With DataFusion's FairSpillPool each operator gets a 22nd of the pool, idle or not,
        // and the same query fails while it replays (apache/datafusion#25383).
        let runtime = RuntimeEnvBuilder::new().with_memory_pool(Arc::new(FairSpillPool::new(limit))).build_arc().unwrap();
        let fair = SessionContext::new_with_config_rt(SessionConfig::new().with_target_partitions(2), runtime);
        let error = run_beside_idle_operators(&fair, 20, sql).await.unwrap_err().to_string();
        assert!(error.contains("Resources exhausted") && error.contains("FinalHashAggregateStream"), "{error}");
    }

    /// The rows the partial aggregates of `sql`'s plan, run in `session`, passed on without
    /// aggregating them.
    async fn rows_past_partial_aggregates(session: &SessionContext, sql: &str) -> usize {
        let (_, plan) = crate::stage::executed(session.sql(sql).await.unwrap()).await.unwrap();
        crate::stage::operator_metrics(plan.as_ref()).iter().filter_map(|metrics| metrics.sum_by_name("skipped_aggregation_rows")).map(|rows| rows.as_usize()).sum()
    }

    #[tokio::test]
    async fn a_partial_aggregate_that_halves_its_rows_is_skipped_on_the_local_engine() {
        // Two lines an invoice, as the demo's lines by invoice: 400,000 rows, 200,000 groups.
        let sql = "SELECT k, SUM(v) FROM (SELECT value / 2 AS k, value AS v FROM generate_series(0, 399999)) GROUP BY k";
        let options = EngineOptions { threads: 2, ..Default::default() };
        assert!(rows_past_partial_aggregates(&session(&options).unwrap(), sql).await > 0);
        // DataFusion's default aggregates them first.
        let default = SessionContext::new_with_config(SessionConfig::new().with_target_partitions(2));
        assert_eq!(rows_past_partial_aggregates(&default, sql).await, 0);
    }
}
