//! The command line: runtime knobs only. What a pipeline computes lives in its YAML.

use std::io::{IsTerminal, Write};
use std::path::PathBuf;

use chrono::NaiveDate;
use clap::{Args, Parser, Subcommand, ValueEnum};

use crate::demo_data::{self, DemoOptions};
use crate::engine::EngineOptions;
use crate::error::Error;
use crate::plan::{self, PlanOptions};
use crate::run;

#[derive(Debug, Parser)]
#[command(name = "segflow", version, about = "Customer segments and churn scores from raw data, as a declared pipeline")]
pub struct Cli {
    /// Log format on stderr: `text` for people and task logs, `json` for log shippers.
    #[arg(long, value_enum, default_value_t = LogFormat::Text, global = true)]
    pub log_format: LogFormat,
    /// More detail in the log (-v: debug, -vv: trace).
    #[arg(short, long, action = clap::ArgAction::Count, global = true)]
    pub verbose: u8,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Subcommand)]
pub enum ReportCommand {
    /// Old / new / delta of every metric that changed between two runs; exit 1 when a
    /// `--fail-on` tolerance is breached.
    Diff {
        /// `evaluation.json`, a reports folder, or an `evaluation` Parquet file or partition.
        old: PathBuf,
        new: PathBuf,
        /// `[stage.][model.]split.metric OP NUMBER` on the delta (new − old), e.g.
        /// 'test.roc_auc < -0.01'. Repeatable.
        #[arg(long = "fail-on", value_name = "RULE")]
        fail_on: Vec<String>,
        /// List unchanged metrics too.
        #[arg(long)]
        all: bool,
    },
    /// Rebuild a run's HTML report from what it committed under its output root.
    Html {
        /// The pipeline's output root (holding `reports/` and `_segflow/`).
        run_dir: PathBuf,
        /// Which run date (default: the latest).
        #[arg(long)]
        run_date: Option<String>,
        /// Where to write the page.
        #[arg(long)]
        output: PathBuf,
    },
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Check a pipeline without running it: parse, resolve the DAG, plan every SQL stage
    /// against the inputs' schemas. Reports every problem; reads no data; writes nothing.
    Validate {
        file: PathBuf,
        #[command(flatten)]
        params: RunParams,
    },
    /// Run a pipeline and commit its output tables.
    Run {
        file: PathBuf,
        #[command(flatten)]
        params: RunParams,
        /// The run's id, recorded in every manifest and file name (default: a new one).
        /// Airflow: `--run-id {{ run_id }}`.
        #[arg(long)]
        run_id: Option<String>,
        /// Write tables here instead of the pipeline's `output_root`.
        #[arg(long)]
        output_root: Option<PathBuf>,
        /// Run only these stages: `stage`, `stage+` (and downstream), `+stage` (and upstream).
        /// Unselected upstream stages are read from their committed tables. Repeatable.
        #[arg(long, value_delimiter = ',')]
        select: Vec<String>,
        /// Leave these stages out (same syntax). Repeatable.
        #[arg(long, value_delimiter = ',')]
        exclude: Vec<String>,
        /// Also write the summary line (the last line of stdout) to this file — for
        /// KubernetesPodOperator, `/airflow/xcom/return.json`.
        #[arg(long)]
        xcom_file: Option<PathBuf>,
        #[command(flatten)]
        engine: EngineArgs,
    },
    /// Rerun the last run of a pipeline from its first failed stage: same run date and
    /// variables; stages before it are read from their committed tables when this run date
    /// has them, else the whole pipeline reruns.
    Retry {
        file: PathBuf,
        /// The new run's id (default: a new one).
        #[arg(long)]
        run_id: Option<String>,
        /// The output root the failed run wrote to, if not the pipeline's.
        #[arg(long)]
        output_root: Option<PathBuf>,
        #[command(flatten)]
        engine: EngineArgs,
    },
    /// Print the pipeline's DAG (inputs → stages → output tables) as Graphviz DOT.
    Graph {
        file: PathBuf,
        #[command(flatten)]
        params: RunParams,
    },
    /// Assign new customers to the segments of a saved model, without refitting.
    Assign {
        /// The saved model: `<output_root>/models/<stage>/run_date=<D>` or its model.json.
        model: PathBuf,
        /// The customers: a Parquet file, a glob or a (Hive-partitioned) folder, with the id
        /// column and every feature the model was fitted on.
        input: PathBuf,
        /// The table folder to write (replaced whole, with `_manifest.json` and `_SUCCESS`).
        #[arg(long)]
        output: PathBuf,
        /// Recorded in the manifest and the file names (default: a new one).
        #[arg(long)]
        run_id: Option<String>,
        #[command(flatten)]
        engine: EngineArgs,
    },
    /// Score new customers with a saved churn model, without refitting.
    Score {
        /// The saved model: `<output_root>/models/<stage>/run_date=<D>` or its model.json.
        model: PathBuf,
        /// The customers: a Parquet file, a glob or a (Hive-partitioned) folder, with the id
        /// column and every feature the model was fitted on.
        input: PathBuf,
        /// The table folder to write (replaced whole, with `_manifest.json` and `_SUCCESS`).
        #[arg(long)]
        output: PathBuf,
        /// Recorded in the manifest and the file names (default: a new one).
        #[arg(long)]
        run_id: Option<String>,
        #[command(flatten)]
        engine: EngineArgs,
    },
    /// Evaluation reports: compare two runs, or rebuild a run's HTML page.
    #[command(subcommand)]
    Report(ReportCommand),
    /// Write the demo data set: customers and a Hive-partitioned transactions folder.
    DemoData {
        /// Folder to write into (its `transactions/` is replaced).
        out: PathBuf,
        #[arg(long, default_value_t = 1_500)]
        customers: usize,
        #[arg(long, default_value_t = 42)]
        seed: u64,
        /// First day of the data (YYYY-MM-DD).
        #[arg(long, default_value = "2023-01-01", value_parser = parse_date_arg)]
        start: NaiveDate,
        /// Months of data.
        #[arg(long, default_value_t = 24)]
        months: u32,
    },
}

#[derive(Debug, Args)]
pub struct RunParams {
    /// The run date (YYYY-MM-DD): the `run_date` variable and the output partition.
    /// Default: today (UTC).
    #[arg(long, value_parser = parse_date_arg)]
    pub run_date: Option<NaiveDate>,
    /// Override a declared variable: `--var name=value` (repeatable).
    #[arg(long = "var", value_name = "NAME=VALUE", value_parser = parse_var)]
    pub vars: Vec<(String, String)>,
}

#[derive(Debug, Args)]
pub struct EngineArgs {
    /// Threads for the query engine and the models (default: all cores).
    #[arg(long)]
    pub threads: Option<usize>,
    /// Memory the query engine may use before spilling, e.g. `4GiB`, `512MiB` (default: half
    /// of physical memory).
    #[arg(long, value_parser = parse_size)]
    pub memory_limit: Option<usize>,
    /// Folder for spill files (default: the system temporary folder).
    #[arg(long)]
    pub spill_dir: Option<PathBuf>,
    /// Where the queries run: `local` (default), `ballista-standalone` (a Ballista scheduler
    /// and executor in this process), or a Ballista scheduler `df://host:port`.
    /// Default: the pipeline's `engine:`, else `local`.
    #[arg(long)]
    pub engine: Option<crate::engine::Engine>,
    /// Rows per bucket where a clean stage writes its rows in buckets (`bucket_by`); more
    /// rows than a bucket per thread are bucketed (default: 2000000).
    #[arg(long)]
    pub bucket_rows: Option<usize>,
}

impl EngineArgs {
    pub fn options(&self) -> EngineOptions {
        let mut options = EngineOptions::default();
        if let Some(threads) = self.threads {
            options.threads = threads.max(1);
        }
        if let Some(limit) = self.memory_limit {
            options.memory_limit = limit;
        }
        options.spill_dir = self.spill_dir.clone();
        options.engine = self.engine.clone().unwrap_or_default();
        if let Some(rows) = self.bucket_rows {
            options.bucket_rows = rows.max(1);
        }
        options
    }
}

fn parse_date_arg(text: &str) -> Result<NaiveDate, String> {
    crate::vars::parse_date(text).ok_or_else(|| format!("`{text}` is not a date; expected YYYY-MM-DD"))
}

fn parse_var(text: &str) -> Result<(String, String), String> {
    match text.split_once('=') {
        Some((name, value)) if !name.is_empty() => Ok((name.to_string(), value.to_string())),
        _ => Err(format!("`{text}` is not NAME=VALUE")),
    }
}

/// `512MiB`, `4GiB`, `2G`, `1000000` (bytes).
pub fn parse_size(text: &str) -> Result<usize, String> {
    let trimmed = text.trim();
    let split = trimmed.find(|c: char| !c.is_ascii_digit() && c != '.').unwrap_or(trimmed.len());
    let (number, unit) = trimmed.split_at(split);
    let number: f64 = number.parse().map_err(|_| format!("`{text}` is not a size such as 512MiB or 4GiB"))?;
    let factor: f64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1.0,
        "k" | "kb" | "kib" => 1024.0,
        "m" | "mb" | "mib" => 1024.0 * 1024.0,
        "g" | "gb" | "gib" => 1024.0 * 1024.0 * 1024.0,
        "t" | "tb" | "tib" => 1024.0_f64.powi(4),
        other => return Err(format!("unknown size unit `{other}` in `{text}`; use B, KiB, MiB, GiB or TiB")),
    };
    let bytes = number * factor;
    if !(1.0..=(usize::MAX as f64)).contains(&bytes) {
        return Err(format!("`{text}` is not a usable size"));
    }
    Ok(bytes as usize)
}

fn plan_options(params: &RunParams, output_root: Option<PathBuf>) -> PlanOptions {
    PlanOptions {
        run_date: params.run_date.unwrap_or_else(|| chrono::Utc::now().date_naive()),
        var_overrides: params.vars.clone(),
        output_root,
    }
}

/// A new run id: when it started (UTC) and a few random characters, sortable and unique.
pub fn new_run_id() -> String {
    let now = chrono::Utc::now();
    let suffix = uuid::Uuid::new_v4().simple().to_string();
    format!("{}-{}", now.format("%Y%m%dT%H%M%SZ"), &suffix[..6])
}

fn check_run_id(run_id: &str) -> Result<(), Error> {
    let ok = !run_id.is_empty() && run_id.len() <= 250 && run_id.chars().all(|c| !c.is_control() && c != '/' && c != '\\');
    if ok { Ok(()) } else { Err(Error::Usage(format!("--run-id `{run_id}`: a run id is up to 250 characters, without `/`, `\\` or control characters"))) }
}

/// Runs one command. Returns the line to print on stdout, if any.
pub async fn dispatch(cli: Cli) -> Result<Option<String>, Error> {
    match cli.command {
        Command::Validate { file, params } => {
            let plan = plan::load_and_check(&file, &plan_options(&params, None), &EngineOptions::default())
                .await
                .map_err(Error::Config)?;
            tracing::info!(
                pipeline = %plan.name,
                inputs = plan.inputs.len(),
                stages = plan.stages.len(),
                outputs = plan.outputs.len(),
                "pipeline is valid"
            );
            Ok(None)
        }
        Command::Retry { file, run_id, output_root, engine } => {
            let run_id = run_id.unwrap_or_else(new_run_id);
            check_run_id(&run_id)?;
            let engine_options = engine.options();
            // The output root first (the file's, or --output-root), to find the last run.
            let probe = plan::load_and_check(&file, &plan_options(&RunParams { run_date: None, vars: Vec::new() }, output_root.clone()), &engine_options).await.map_err(Error::Config)?;
            let last = run::last_run(&probe.output_root).map_err(Error::Usage)?.ok_or_else(|| Error::Usage(format!("no run of this pipeline under {}: nothing to retry", probe.output_root.display())))?;
            let text = |k: &str| last.get(k).and_then(|v| v.as_str()).unwrap_or_default().to_string();
            if text("status") != "failed" {
                return Err(Error::Usage(format!("the last run ({}, run date {}) succeeded: nothing to retry", text("run_id"), text("run_date"))));
            }
            let failed = last
                .get("stages")
                .and_then(|s| s.as_array())
                .and_then(|stages| stages.iter().find(|s| s.get("status").and_then(|v| v.as_str()) == Some("failed")))
                .and_then(|s| s.get("name").and_then(|v| v.as_str()))
                .map(str::to_string);
            let run_date = crate::vars::parse_date(&text("run_date")).ok_or_else(|| Error::Usage(format!("the last run record has no usable run date: {:?}", text("run_date"))))?;
            let vars: Vec<(String, String)> = last.get("vars").and_then(|v| v.as_object()).map(|m| m.iter().map(|(k, v)| (k.clone(), v.as_str().unwrap_or_default().to_string())).collect()).unwrap_or_default();
            let mut plan = plan::load_and_check(&file, &plan_options(&RunParams { run_date: Some(run_date), vars: vars.clone() }, output_root), &engine_options).await.map_err(Error::Config)?;
            let run_date_text = plan.run_date().unwrap_or_default();
            match &failed {
                Some(stage) => match crate::select::apply(&mut plan, &[format!("{stage}+")], &[], &run_date_text) {
                    Ok(reused) => {
                        tracing::info!(failed_run = %text("run_id"), from_stage = %stage, run_date = %run_date_text, "retrying from the failed stage");
                        plan.reused = reused;
                    }
                    Err(why) => {
                        tracing::info!(failed_run = %text("run_id"), run_date = %run_date_text, reason = %why, "retrying the whole pipeline: what comes before the failed stage is not committed for this run date");
                        plan = plan::load_and_check(&file, &plan_options(&RunParams { run_date: Some(run_date), vars }, Some(probe.output_root.clone())), &engine_options).await.map_err(Error::Config)?;
                    }
                },
                None => tracing::info!(failed_run = %text("run_id"), run_date = %run_date_text, "the failed run failed outside a stage: retrying the whole pipeline"),
            }
            let summary = run::execute(&plan, &run_id, &engine_options).await?;
            tracing::info!(pipeline = %plan.name, run_id = %run_id, seconds = summary.seconds, "retry succeeded");
            Ok(Some(serde_json::json!({"pipeline": summary.pipeline, "run_id": summary.run_id, "run_date": summary.run_date, "status": summary.status, "retry_of": text("run_id"), "stages": summary.selected}).to_string()))
        }
        Command::Graph { file, params } => {
            let plan = plan::load_and_check(&file, &plan_options(&params, None), &EngineOptions::default())
                .await
                .map_err(Error::Config)?;
            Ok(Some(crate::graph::dot(&plan).trim_end().to_string()))
        }
        Command::Run { file, params, run_id, output_root, select, exclude, xcom_file, engine } => {
            let run_id = run_id.unwrap_or_else(new_run_id);
            check_run_id(&run_id)?;
            let engine_options = engine.options();
            let plan = plan::load_and_check(&file, &plan_options(&params, output_root), &engine_options)
                .await
                .map_err(Error::Config)?;
            let mut plan = plan;
            let mut engine_options = engine_options;
            if engine.engine.is_none() {
                engine_options.engine = plan.engine.clone().unwrap_or_default();
            }
            crate::engine::check_inputs_reachable(&engine_options.engine, plan.inputs.iter().map(|i| (i.name.as_str(), &i.location))).map_err(Error::Usage)?;
            if !select.is_empty() || !exclude.is_empty() {
                let run_date = plan.run_date().unwrap_or_default();
                plan.reused = crate::select::apply(&mut plan, &select, &exclude, &run_date).map_err(Error::Usage)?;
                tracing::info!(stages = %plan.stages.iter().map(|s| s.name.as_str()).collect::<Vec<_>>().join(", "), "selected");
            }
            tracing::info!(pipeline = %plan.name, run_id = %run_id, output_root = %plan.output_root.display(), "run started");
            let summary = run::execute(&plan, &run_id, &engine_options).await?;
            tracing::info!(pipeline = %plan.name, run_id = %run_id, seconds = summary.seconds, tables = summary.tables.len(), "run succeeded");
            let line = serde_json::to_string(&serde_json::json!({
                "pipeline": summary.pipeline,
                "run_id": summary.run_id,
                "run_date": summary.run_date,
                "status": summary.status,
                "seconds": summary.seconds,
                "tables": summary.tables.iter().map(|t| serde_json::json!({"table": t.table, "rows": t.rows, "path": t.path})).collect::<Vec<_>>(),
                "run_results": plan.output_root.join(crate::sink::SEGFLOW_DIR).join("runs").join(crate::sink::file_safe(&summary.run_id)).join(run::RESULTS_FILE).display().to_string(),
            }))
            .unwrap_or_default();
            if let Some(path) = xcom_file {
                let written = path.parent().filter(|p| !p.as_os_str().is_empty()).map_or(Ok(()), std::fs::create_dir_all).and_then(|_| std::fs::write(&path, &line));
                if let Err(e) = written {
                    // The run has committed: say so, but fail the task, since XCom consumers
                    // would read nothing.
                    return Err(Error::Usage(format!("--xcom-file {}: {e} (the run itself succeeded and is committed)", path.display())));
                }
            }
            Ok(Some(line))
        }
        Command::Assign { model, input, output, run_id, engine } => {
            let run_id = run_id.unwrap_or_else(new_run_id);
            check_run_id(&run_id)?;
            let summary = crate::deploy::assign(&model, &input, &output, &run_id, &engine.options()).await?;
            tracing::info!(rows = summary.rows, path = %summary.path.display(), "customers assigned");
            let line = serde_json::json!({"command": "assign", "run_id": run_id, "rows": summary.rows, "path": summary.path.display().to_string()});
            Ok(Some(line.to_string()))
        }
        Command::Score { model, input, output, run_id, engine } => {
            let run_id = run_id.unwrap_or_else(new_run_id);
            check_run_id(&run_id)?;
            let summary = crate::deploy::score(&model, &input, &output, &run_id, &engine.options()).await?;
            tracing::info!(rows = summary.rows, path = %summary.path.display(), "customers scored");
            let line = serde_json::json!({"command": "score", "run_id": run_id, "rows": summary.rows, "path": summary.path.display().to_string()});
            Ok(Some(line.to_string()))
        }
        Command::Report(ReportCommand::Diff { old, new, fail_on, all }) => {
            use crate::report::diff;
            let rules = fail_on.iter().map(|r| diff::Rule::parse(r)).collect::<Result<Vec<_>, _>>().map_err(Error::Usage)?;
            let (old_metrics, new_metrics) = (diff::load(&old).await.map_err(Error::Usage)?, diff::load(&new).await.map_err(Error::Usage)?);
            let found = diff::diff(&old_metrics, &new_metrics);
            let breached = diff::breaches(&found, &rules).map_err(Error::Usage)?;
            print_stdout(diff::render(&found, all, std::io::stdout().is_terminal()).trim_end());
            if breached.is_empty() {
                Ok(None)
            } else {
                Err(Error::Gate(format!("{} tolerance{} breached:\n  {}", breached.len(), if breached.len() == 1 { "" } else { "s" }, breached.join("\n  "))))
            }
        }
        Command::Report(ReportCommand::Html { run_dir, run_date, output }) => {
            let page = crate::report::html::rebuild(&run_dir, run_date.as_deref()).map_err(Error::Usage)?;
            std::fs::write(&output, page).map_err(|e| Error::Usage(format!("--output {}: {e}", output.display())))?;
            tracing::info!(path = %output.display(), "report written");
            Ok(None)
        }
        Command::DemoData { out, customers, seed, start, months } => {
            let summary = demo_data::generate(&out, &DemoOptions { customers, seed, start, months })?;
            tracing::info!(
                out = %out.display(),
                customers = summary.customers,
                transactions = summary.transactions,
                cancellation_lines = summary.cancellation_lines,
                duplicate_lines = summary.duplicate_lines,
                guest_lines = summary.guest_lines,
                invalid_lines = summary.invalid_lines,
                "demo data written"
            );
            Ok(None)
        }
    }
}

/// Prints the summary line; a closed stdout (`segflow run … | head -0`) is not an error.
pub fn print_stdout(line: &str) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{line}").and_then(|_| out.flush());
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_read_like_people_write_them() {
        assert_eq!(parse_size("512MiB"), Ok(512 << 20));
        assert_eq!(parse_size("4G"), Ok(4 << 30));
        assert_eq!(parse_size("1000"), Ok(1000));
        assert!(parse_size("lots").is_err());
        assert!(parse_size("4PB").is_err());
    }
}
