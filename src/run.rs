//! Executing a checked plan: stages in order, then every output table committed.
//!
//! Stages hand each other lazy DataFusion frames (registered as views), so SQL stages stream
//! and spill; what a stage materialises is its own business. Output tables are written to
//! staging as they are computed and committed only once every table has been written: a run
//! that fails leaves every table as it was.

use std::path::PathBuf;
use std::time::Instant;

use futures::StreamExt;

use datafusion::logical_expr::SortExpr;
use datafusion::prelude::{DataFrame, SessionContext, ident};
use serde::Serialize;

use crate::config::PartitionBy;
use crate::engine::{self, EngineOptions};
use crate::evaluation;
use crate::report;
use crate::plan::{Plan, PlannedOutput};
use crate::sink::{self, Manifest, StagedTable, TableTarget};
use crate::stage::{self, Artifact, StageContext, StageMetrics};
use crate::vars::RUN_DATE;

#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error("stage \"{stage}\" failed: {message}")]
    Stage { stage: String, message: String },
    #[error(transparent)]
    Sink(#[from] sink::SinkError),
    #[error("query engine: {0}")]
    Engine(String),
    #[error("{action} {path}: {source}")]
    Io { action: &'static str, path: PathBuf, source: std::io::Error },
    #[error(transparent)]
    Locked(#[from] crate::lock::LockError),
}

/// The run record's file name, under `<output_root>/_segflow/runs/<run id>/`.
pub const RESULTS_FILE: &str = "run_results.json";

/// What a run did: `run_results.json`, written whether the run succeeded or failed, and the
/// source of the one-line summary printed last on stdout.
#[derive(Debug, Clone, Serialize)]
pub struct RunSummary {
    pub pipeline: String,
    pub run_id: String,
    pub run_date: String,
    /// `success` or `failed`.
    pub status: &'static str,
    /// What failed, when the run failed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    pub started_at: String,
    pub ended_at: String,
    /// The pipeline file, and every variable's value (run_date aside), so `segflow retry`
    /// can run the same thing again.
    pub pipeline_file: String,
    pub vars: std::collections::BTreeMap<String, String>,
    /// The stages this run ran (all of them unless `--select`/`--exclude` narrowed it).
    pub selected: Vec<String>,
    pub output_root: String,
    pub stages: Vec<StageSummary>,
    pub tables: Vec<TableSummary>,
    /// Folders of the models saved by this run.
    pub models: Vec<String>,
    /// The folder of `evaluation.json` and `evaluation.md`, when a stage evaluated a model.
    pub reports: Option<String>,
    pub seconds: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct StageSummary {
    pub name: String,
    pub kind: String,
    /// `success`, `failed`, or `skipped` (after a failure upstream or elsewhere).
    pub status: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub started_at: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ended_at: Option<String>,
    pub seconds: f64,
    /// Counts the stage reported: rows in and out, rejected by reason, customers, …
    pub metrics: StageMetrics,
    /// Data tests (`test:<name>` metrics): failing rows per test.
    pub data_tests: std::collections::BTreeMap<String, i64>,
    /// The tables written from this stage's results, once committed.
    pub outputs: Vec<TableSummary>,
}

fn now() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

#[derive(Debug, Clone, Serialize)]
pub struct TableSummary {
    pub table: String,
    pub path: String,
    pub rows: u64,
    pub files: usize,
    /// The partition's `_manifest.json`.
    pub manifest: String,
    /// The schema version the manifest records.
    pub schema_version: u32,
    /// The stage result the table was written from.
    #[serde(skip)]
    pub from: String,
}

/// Runs every stage, writes every output to staging, then commits them all.
pub async fn execute(plan: &Plan, run_id: &str, engine_options: &EngineOptions) -> Result<RunSummary, RunError> {
    let started = Instant::now();
    let started_at = now();
    let Some(run_date) = plan.run_date() else {
        return Err(RunError::Engine("internal: run_date is not set".to_string()));
    };
    // Held until this function returns, whatever happens: one run per run date.
    let lock = crate::lock::RunLock::acquire(&plan.output_root, &run_date, run_id)?;
    // A killed run leaves its staged files behind. Every run holds its lock before it stages
    // anything, so staged files no possibly-running run's lock accounts for are a dead run's.
    if let Some(dead) = &lock.taken_over {
        tracing::info!(run_id = %dead.run_id, "took over the lock of a run that is gone");
    }
    let running = crate::lock::possibly_running(&plan.output_root);
    let staging_dir = plan.output_root.join(sink::SEGFLOW_DIR).join("staging");
    for entry in std::fs::read_dir(&staging_dir).into_iter().flatten().flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if name == sink::file_safe(run_id) || running.iter().any(|r| sink::file_safe(r) == name) {
            continue;
        }
        match std::fs::remove_dir_all(entry.path()) {
            Ok(()) => tracing::info!(path = %entry.path().display(), "removed the staged files of a run that is gone"),
            Err(e) => tracing::warn!(path = %entry.path().display(), error = %e, "could not remove the staged files of a run that is gone"),
        }
    }
    let staging = sink::staging_root(&plan.output_root, run_id);
    let mut stages: Vec<StageSummary> = plan
        .stages
        .iter()
        .map(|s| StageSummary { name: s.name.clone(), kind: s.kind.to_string(), status: "skipped", started_at: None, ended_at: None, seconds: 0.0, metrics: StageMetrics::new(), data_tests: Default::default(), outputs: Vec::new() })
        .collect();
    crate::progress::begin(plan.stages.len() as u64 + 1);
    let result = execute_stages(plan, run_id, &run_date, engine_options, &mut stages).await;
    crate::progress::end();
    let outcome = match result {
        Ok(staged) => {
            let mut tables = Vec::new();
            let mut models = Vec::new();
            let mut reports = None;
            for table in staged {
                let live = table.target.live_dir();
                let is_model = table.target.table.starts_with(&format!("{}/", stage::MODELS_DIR));
                let is_report = table.target.table == report::REPORTS_DIR;
                let manifest: Manifest = sink::commit(table)?;
                tracing::info!(table = %manifest.table, rows = manifest.rows, path = %live.display(), "committed");
                if is_model {
                    models.push(live.display().to_string());
                    continue;
                }
                if is_report {
                    reports = Some(live.display().to_string());
                    continue;
                }
                let from = plan.outputs.iter().find(|o| o.table == manifest.table).map(|o| o.from.clone()).unwrap_or_default();
                tables.push(TableSummary {
                    table: manifest.table,
                    path: live.display().to_string(),
                    rows: manifest.rows,
                    files: manifest.files.len(),
                    manifest: live.join(sink::MANIFEST_FILE).display().to_string(),
                    schema_version: manifest.schema_version,
                    from,
                });
            }
            Ok((tables, models, reports))
        }
        Err(e) => Err(e),
    };
    // Whatever happened, this run's staging area has no further use.
    if staging.exists() {
        if let Err(e) = std::fs::remove_dir_all(&staging) {
            tracing::warn!(path = %staging.display(), error = %e, "could not remove the staging folder");
        }
    }
    let (tables, models, reports, error) = match outcome {
        Ok((tables, models, reports)) => (tables, models, reports, None),
        Err(e) => (Vec::new(), Vec::new(), None, Some(e)),
    };
    // Each table under the stage it was written from (`evaluation` under every contributor).
    for (stage, planned) in stages.iter_mut().zip(&plan.stages) {
        let contributes = evaluation::contributes(planned.stage.as_ref());
        stage.outputs = tables.iter().filter(|t| planned.produces(&t.from) || (contributes && t.from == evaluation::EVALUATION)).cloned().collect();
    }
    let summary = RunSummary {
        pipeline: plan.name.clone(),
        run_id: run_id.to_string(),
        run_date: run_date.clone(),
        status: if error.is_none() { "success" } else { "failed" },
        error: error.as_ref().map(|e| e.to_string()),
        started_at,
        ended_at: now(),
        pipeline_file: std::path::absolute(&plan.file).unwrap_or_else(|_| plan.file.clone()).display().to_string(),
        vars: plan.vars.iter().filter(|(k, _)| k.as_str() != RUN_DATE).map(|(k, v)| (k.clone(), v.to_string())).collect(),
        selected: plan.stages.iter().map(|s| s.name.clone()).collect(),
        output_root: plan.output_root.display().to_string(),
        stages,
        tables,
        models,
        reports,
        seconds: round_ms(started.elapsed().as_secs_f64()),
    };
    let recorded = write_run_record(plan, run_id, &summary);
    if let Some(e) = error {
        if let Err(record_error) = recorded {
            tracing::warn!(error = %record_error, "could not write the run record of the failed run");
        }
        return Err(e);
    }
    recorded?;
    Ok(summary)
}

fn round_ms(seconds: f64) -> f64 {
    (seconds * 1000.0).round() / 1000.0
}

async fn execute_stages(
    plan: &Plan,
    run_id: &str,
    run_date: &str,
    engine_options: &EngineOptions,
    summaries: &mut [StageSummary],
) -> Result<Vec<StagedTable>, RunError> {
    let session = engine::run_session(engine_options).await.map_err(|e| RunError::Engine(format!("cannot start the query engine ({:?}): {}", engine_options.engine, engine::describe_datafusion_error(&e))))?;
    for input in &plan.inputs {
        engine::register_parquet(&session, &input.name, &input.location)
            .await
            .map_err(|e| RunError::Engine(format!("input `{}`: {}", input.name, engine::describe_datafusion_error(&e))))?;
    }
    // Results of unselected stages, from their committed tables for this run date.
    for reused in &plan.reused {
        engine::register_parquet(&session, &reused.result, &engine::InputLocation::Folder(reused.path.clone()))
            .await
            .map_err(|e| RunError::Engine(format!("reading `{}` back from table `{}` ({}): {}", reused.result, reused.table, reused.path.display(), engine::describe_datafusion_error(&e))))?;
        tracing::info!(result = %reused.result, table = %reused.table, "not selected: read from its committed table");
    }
    // Rows a stage materialises, and a distributed engine's copies of in-memory results, go in
    // this run's staging area, removed with it.
    let scratch = sink::staging_root(&plan.output_root, run_id).join("_scratch");
    let distributed = engine_options.engine != engine::Engine::Local;
    let mut artifacts = Vec::new();
    let mut evaluation_parts: Vec<String> = Vec::new();
    for (index, planned) in plan.stages.iter().enumerate() {
        let started = Instant::now();
        summaries[index].started_at = Some(now());
        crate::progress::step(&format!("stage {} ({})", planned.name, planned.kind));
        tracing::info!(stage = %planned.name, kind = planned.kind, "stage started");
        let ctx = StageContext {
            session: &session,
            stage_name: &planned.name,
            vars: &plan.vars,
            seed: stage::derive_seed(plan.seed, &planned.name),
            run_id,
            run_date,
            output_root: &plan.output_root,
            scratch: Some(&scratch),
            distributed,
            threads: engine_options.threads,
            bucket_rows: engine_options.bucket_rows,
        };
        let output = match planned.stage.run(&ctx).await {
            Ok(output) => output,
            Err(e) => {
                let summary = &mut summaries[index];
                summary.status = "failed";
                summary.ended_at = Some(now());
                summary.seconds = round_ms(started.elapsed().as_secs_f64());
                return Err(RunError::Stage { stage: planned.name.clone(), message: e.message });
            }
        };
        for result in output.results {
            if result.name == format!("{}_{}", planned.name, evaluation::PART) {
                evaluation_parts.push(result.name.clone());
            }
            // A SQL stage's result is a lazy plan: every reader would run it again (a feature
            // table is read by the model stages and written as a table). Read more than once,
            // it is computed once, here, where its time and its errors belong.
            let frame = if planned.kind == "sql" && readers(plan, &result.name) > 1 {
                ctx.materialize(&result.name, result.frame).await.map_err(|e| RunError::Stage { stage: planned.name.clone(), message: e.message })?
            } else {
                result.frame
            };
            session
                .register_table(&result.name, frame.into_view())
                .map_err(|e| RunError::Stage { stage: planned.name.clone(), message: e.to_string() })?;
        }
        artifacts.extend(output.artifacts);
        let seconds = round_ms(started.elapsed().as_secs_f64());
        stage::release_free_memory();
        tracing::info!(stage = %planned.name, seconds, resident_mib = stage::resident_mib(), "stage ready");
        let summary = &mut summaries[index];
        summary.status = "success";
        summary.ended_at = Some(now());
        summary.seconds = seconds;
        summary.data_tests = output.metrics.iter().filter_map(|(k, v)| k.strip_prefix("test:").map(|t| (t.to_string(), *v))).collect();
        summary.metrics = output.metrics;
        crate::progress::advance();
    }
    crate::progress::step("writing tables");
    let mut metrics = Vec::new();
    if !evaluation_parts.is_empty() {
        let frame = evaluation::union(&session, &evaluation_parts).await.map_err(|e| RunError::Engine(engine::describe_datafusion_error(&e)))?;
        let batches = frame.clone().collect().await.map_err(|e| RunError::Engine(engine::describe_datafusion_error(&e)))?;
        metrics = report::metrics_from_batches(&batches).map_err(RunError::Engine)?;
        session.register_table(evaluation::EVALUATION, frame.into_view()).map_err(|e| RunError::Engine(e.to_string()))?;
    }
    // The reports reviewers diff and read: every run that evaluates a model or cleans data
    // writes them. No timings inside, so the same input and seed give the same bytes.
    if plan.write_reports && (!evaluation_parts.is_empty() || summaries.iter().any(|s| s.kind == "clean")) {
        let counts: Vec<report::html::StageCounts> = summaries.iter().map(|s| (s.name.clone(), s.kind.clone(), s.metrics.clone())).collect();
        let json = report::to_json(&metrics);
        // The pages are drawn from the JSON as written (rounded), so `segflow report html`
        // rebuilds them byte for byte from the committed files.
        let metrics = report::from_json(&json, std::path::Path::new(report::JSON_FILE)).map_err(RunError::Engine)?;
        artifacts.push(Artifact {
            folder: report::REPORTS_DIR.to_string(),
            files: vec![
                (report::JSON_FILE.to_string(), json.into_bytes().into()),
                (report::MARKDOWN_FILE.to_string(), report::to_markdown(&plan.name, run_date, &metrics).into_bytes().into()),
                (report::HTML_FILE.to_string(), report::html::render(&plan.name, run_date, &metrics, &counts).into_bytes().into()),
            ],
        });
    }
    let mut writes = Vec::new();
    for output in &plan.outputs {
        let frame = sorted_output(&session, output).await?;
        let target = TableTarget {
            root: plan.output_root.clone(),
            table: output.table.clone(),
            partition: match output.partition_by {
                PartitionBy::RunDate => Some(format!("{RUN_DATE}={run_date}")),
                PartitionBy::None => None,
            },
            run_id: run_id.to_string(),
            run_date: run_date.to_string(),
            schema_version: output.schema_version,
        };
        writes.push((output, target, frame));
    }
    // Tables are written side by side: the engine sorts a table's rows on every thread, but
    // its Parquet encoding runs on one, so a table at a time left a core idle for most of
    // this phase. Each write is a task of its own (what lets two encode at once), and every
    // one is awaited, so nothing is still writing when this returns; results are taken in
    // output order, so the error reported is the same whichever write ends first.
    let mut written = futures::stream::iter(writes.into_iter().map(|(output, target, frame)| async move {
        let task = tokio::spawn(async move {
            let started = Instant::now();
            (sink::stage(target, frame).await, started.elapsed())
        });
        (output, task.await)
    }))
    .buffered(TABLES_WRITTEN_AT_ONCE);
    let mut staged = Vec::new();
    let mut first_error = None;
    while let Some((output, joined)) = written.next().await {
        if first_error.is_some() {
            continue;
        }
        let (table, elapsed) = match joined {
            Ok(result) => result,
            Err(e) => {
                first_error = Some(RunError::Engine(format!("writing table `{}`: {e}", output.table)));
                continue;
            }
        };
        let table = match table {
            Ok(table) => table,
            // A query that fails while its rows are computed is its stage's failure (a lazy
            // stage computes nothing until a table is written), and what reads it is skipped.
            Err(sink::SinkError::Compute { table, message }) => {
                let stage = plan.producer(&output.from).map_or_else(|| output.from.clone(), |s| s.name.clone());
                mark_failed(plan, summaries, &stage);
                first_error = Some(RunError::Stage { stage, message: format!("while computing table `{table}`: {message}") });
                continue;
            }
            Err(other) => {
                first_error = Some(RunError::Sink(other));
                continue;
            }
        };
        tracing::info!(table = %output.table, rows = table.manifest.rows, seconds = round_ms(elapsed.as_secs_f64()), "table written to staging");
        staged.push(table);
    }
    if let Some(error) = first_error {
        return Err(error);
    }
    // Saved models and reports last: committed with the tables, listed apart from them.
    for artifact in artifacts {
        let target = TableTarget {
            root: plan.output_root.clone(),
            table: artifact.folder,
            partition: Some(format!("{RUN_DATE}={run_date}")),
            run_id: run_id.to_string(),
            run_date: run_date.to_string(),
            schema_version: 1,
        };
        staged.push(sink::stage_files(target, artifact.files)?);
    }
    Ok(staged)
}

/// Output tables written at once (see where they are written). Two: the machines this runs on
/// have two cores or more, and each write holds a sorted table's batches in memory.
const TABLES_WRITTEN_AT_ONCE: usize = 2;

/// `failed` for `stage`, `skipped` for every stage that reads it, directly or not.
fn mark_failed(plan: &Plan, summaries: &mut [StageSummary], stage: &str) {
    let mut downstream = vec![stage.to_string()];
    for planned in &plan.stages {
        // Stages are in dependency order, so one pass finds every descendant.
        let reads_failed = planned.inputs.iter().any(|input| plan.producer(input).is_some_and(|p| downstream.contains(&p.name)));
        if reads_failed && !downstream.contains(&planned.name) {
            downstream.push(planned.name.clone());
        }
    }
    for summary in summaries.iter_mut() {
        if summary.name == stage {
            summary.status = "failed";
        } else if downstream.contains(&summary.name) {
            summary.status = "skipped";
        }
    }
}

/// How many stages and output tables read a stage result.
fn readers(plan: &Plan, result: &str) -> usize {
    plan.stages.iter().filter(|s| s.inputs.iter().any(|i| i == result)).count() + plan.outputs.iter().filter(|o| o.from == result).count()
}

/// The output's rows in a total order — the declared sort columns, then every other column —
/// so the same input always writes the same files.
async fn sorted_output(session: &SessionContext, output: &PlannedOutput) -> Result<DataFrame, RunError> {
    let frame = session
        .table(output.from.as_str())
        .await
        .map_err(|e| RunError::Engine(format!("table `{}`: {}", output.from, engine::describe_datafusion_error(&e))))?;
    let mut keys: Vec<String> = output.sort_by.iter().map(|c| c.value.clone()).collect();
    for field in frame.schema().fields() {
        let sortable = field.data_type().is_primitive() || matches!(
            field.data_type(),
            datafusion::arrow::datatypes::DataType::Utf8
                | datafusion::arrow::datatypes::DataType::LargeUtf8
                | datafusion::arrow::datatypes::DataType::Utf8View
                | datafusion::arrow::datatypes::DataType::Boolean
        );
        if sortable && !keys.contains(field.name()) {
            keys.push(field.name().clone());
        }
    }
    let sort: Vec<SortExpr> = keys.iter().map(|k| ident(k).sort(true, true)).collect();
    frame
        .sort(sort)
        .map_err(|e| RunError::Engine(format!("sorting `{}`: {}", output.table, engine::describe_datafusion_error(&e))))
}

fn write_run_record(plan: &Plan, run_id: &str, summary: &RunSummary) -> Result<(), RunError> {
    let dir = plan.output_root.join(sink::SEGFLOW_DIR).join("runs").join(sink::file_safe(run_id));
    std::fs::create_dir_all(&dir).map_err(|source| RunError::Io { action: "create", path: dir.clone(), source })?;
    let path = dir.join(RESULTS_FILE);
    let text = serde_json::to_string_pretty(summary).map_err(|e| RunError::Engine(e.to_string()))?;
    std::fs::write(&path, text).map_err(|source| RunError::Io { action: "write", path, source })
}

/// The latest run record under an output root (by when it ended), if any.
pub fn last_run(output_root: &std::path::Path) -> Result<Option<serde_json::Value>, String> {
    let runs = output_root.join(sink::SEGFLOW_DIR).join("runs");
    let Ok(entries) = std::fs::read_dir(&runs) else { return Ok(None) };
    let mut latest: Option<(String, serde_json::Value)> = None;
    for entry in entries.flatten() {
        let path = entry.path().join(RESULTS_FILE);
        let Ok(text) = std::fs::read_to_string(&path) else { continue };
        let record: serde_json::Value = serde_json::from_str(&text).map_err(|e| format!("{}: {e}", path.display()))?;
        let ended = record.get("ended_at").and_then(|v| v.as_str()).unwrap_or_default().to_string();
        if latest.as_ref().is_none_or(|(t, _)| ended > *t) {
            latest = Some((ended, record));
        }
    }
    Ok(latest.map(|(_, r)| r))
}
