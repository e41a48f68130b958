//! parse the command line → run → exit code. Nothing else lives here.

use std::io::IsTerminal;
use std::process::ExitCode;

use clap::Parser;
use segflow::cli::{self, Cli, LogFormat};
use segflow::error::{EXIT_OK, EXIT_RUN_FAILED};

fn main() -> ExitCode {
    // clap exits with 2 on a usage error, 0 on --help: both as documented.
    let cli = Cli::parse();
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
    match format {
        LogFormat::Json => builder.json().init(),
        // Colour and a progress bar only on a terminal: an Airflow task log gets plain lines.
        LogFormat::Text => {
            segflow::progress::enable(terminal);
            builder.with_ansi(terminal).init()
        }
    }
}
