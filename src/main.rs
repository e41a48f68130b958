//! parse the command line → run → exit code. Nothing else lives here.

use std::io::IsTerminal;
use std::process::ExitCode;

use clap::Parser;
use segflow::cli::{self, Cli, LogFormat};
use segflow::error::{EXIT_OK, EXIT_RUN_FAILED};
use segflow::memory;

fn main() -> ExitCode {
    // Before anything else: this may start the program again (same process, same arguments).
    memory::restart_with_huge_pages();
    // clap exits with 2 on a usage error, 0 on --help: both as documented.
    let cli = Cli::parse();
    memory::return_large_blocks_when_freed();
    init_logging(cli.log_format, cli.verbose);
    let threads = match &cli.command {
        cli::Command::Run { engine, .. } | cli::Command::Assign { engine, .. } | cli::Command::Score { engine, .. } => engine.threads,
        _ => None,
    };
    if let Some(threads) = threads {
        // The model kernels run on rayon's pool: --threads bounds them too. Their results do
        // not depend on it (see segflow_ml::kmeans), only their speed.
        let _ = rayon::ThreadPoolBuilder::new().num_threads(threads.max(1)).build_global();
    }
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    builder.enable_all();
    if let Some(threads) = threads {
        builder.worker_threads(threads.max(1));
    }
    let runtime = match builder.build() {
        Ok(runtime) => runtime,
        Err(e) => {
            tracing::error!("cannot start the async runtime: {e}");
            return ExitCode::from(EXIT_RUN_FAILED);
        }
    };
    // A panic is a bug, never the user's fault; it still must not look like success or
    // like Airflow's "skipped" (99). It ends the run with 1 after the panic message.
    let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| runtime.block_on(cli::dispatch(cli))));
    match outcome {
        Ok(Ok(line)) => {
            if let Some(line) = line {
                cli::print_stdout(&line);
            }
            ExitCode::from(EXIT_OK)
        }
        Ok(Err(error)) => {
            match &error {
                segflow::error::Error::Config(diagnostics) => {
                    for d in diagnostics.clone().into_sorted() {
                        eprintln!("error: {d}");
                    }
                    let n = diagnostics.len();
                    eprintln!("{n} problem{} found", if n == 1 { "" } else { "s" });
                }
                other => tracing::error!("{other}"),
            }
            ExitCode::from(error.exit_code())
        }
        Err(_) => {
            eprintln!("error: internal error (a bug in segflow, please report it with the log above)");
            ExitCode::from(EXIT_RUN_FAILED)
        }
    }
}

fn init_logging(format: LogFormat, verbose: u8) {
    let level = match verbose {
        0 => "info",
        1 => "debug",
        _ => "trace",
    };
    // Our own messages at `level`; the engine's only when they are warnings.
    let filter = tracing_subscriber::EnvFilter::try_from_env("SEGFLOW_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(format!("warn,segflow={level}")));
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(|| segflow::progress::LogWriter).with_target(false);
    let terminal = std::io::stderr().is_terminal();
    // Ballista's records: warnings by default like the engine's own, everything SEGFLOW_LOG
    // asks for (`SEGFLOW_LOG=warn,segflow=info,ballista=info`) when it is set.
    let forwarded = if std::env::var_os("SEGFLOW_LOG").is_some() { log::LevelFilter::Trace } else { log::LevelFilter::Warn };
    if log::set_logger(&LogToTracing).is_ok() {
        log::set_max_level(forwarded);
    }
    match format {
        LogFormat::Json => builder.json().init(),
        // Colour and a progress bar only on a terminal: an Airflow task log gets plain lines.
        LogFormat::Text => {
            segflow::progress::enable(terminal);
            builder.with_ansi(terminal).init()
        }
    }
}

/// Ballista logs through the `log` crate, segflow and DataFusion through `tracing`: this sends
/// `log`'s records to the same subscriber, so they read like every other line of the run.
/// tracing's macros need a target known at compile time, so the record's own target (a module
/// path) becomes a field and the target is the crate family: `ballista`, `datafusion` or `log`.
struct LogToTracing;

impl log::Log for LogToTracing {
    fn enabled(&self, _: &log::Metadata) -> bool {
        true
    }

    fn log(&self, record: &log::Record) {
        macro_rules! forward {
            ($target:literal) => {
                match record.level() {
                    log::Level::Error => tracing::error!(target: $target, module = record.target(), "{}", record.args()),
                    log::Level::Warn => tracing::warn!(target: $target, module = record.target(), "{}", record.args()),
                    log::Level::Info => tracing::info!(target: $target, module = record.target(), "{}", record.args()),
                    log::Level::Debug => tracing::debug!(target: $target, module = record.target(), "{}", record.args()),
                    log::Level::Trace => tracing::trace!(target: $target, module = record.target(), "{}", record.args()),
                }
            };
        }
        let module = record.target();
        if module.starts_with("ballista") {
            forward!("ballista")
        } else if module.starts_with("datafusion") {
            forward!("datafusion")
        } else {
            forward!("log")
        }
    }

    fn flush(&self) {}
}
