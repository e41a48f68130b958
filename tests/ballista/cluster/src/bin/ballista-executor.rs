//! A Ballista executor process, with segflow's SQL functions registered. Flags are the
//! crates.io binary's, for the ones the loopback script uses.

use std::sync::Arc;

use ballista_core::config::TaskSchedulingPolicy;
use ballista_executor::executor_process::{ExecutorProcessConfig, start_executor_process};
use clap::Parser;

#[derive(Parser)]
#[command(about = "Apache DataFusion Ballista executor (ballista-executor 55)")]
struct Args {
    #[arg(long, default_value = "localhost")]
    scheduler_host: String,
    #[arg(long, default_value_t = 50050)]
    scheduler_port: u16,
    #[arg(long, default_value = "127.0.0.1")]
    bind_host: String,
    /// The Arrow Flight port other executors fetch this one's shuffle files from.
    #[arg(long, default_value_t = 50051)]
    bind_port: u16,
    /// The port push-staged schedulers send tasks to.
    #[arg(long, default_value_t = 50052)]
    bind_grpc_port: u16,
    /// Where shuffle files go (default: a temporary folder).
    #[arg(long)]
    work_dir: Option<String>,
    /// Tasks run at once (default: the machine's cores).
    #[arg(long = "concurrent-tasks")]
    concurrent_tasks: Option<usize>,
    /// Must match the scheduler's.
    #[arg(long, default_value = "push-staged")]
    task_scheduling_policy: String,
    #[arg(long, default_value_t = 60)]
    executor_heartbeat_interval_seconds: u64,
    #[arg(long, env = "RUST_LOG", default_value = "info")]
    log_level_setting: String,
}

#[tokio::main]
async fn main() -> ballista_core::error::Result<()> {
    let args = Args::parse();
    segflow_ballista_cluster::init_log(&args.log_level_setting);
    let mut config = ExecutorProcessConfig {
        scheduler_host: args.scheduler_host,
        scheduler_port: args.scheduler_port,
        bind_host: args.bind_host.clone(),
        external_host: Some(args.bind_host),
        port: args.bind_port,
        grpc_port: args.bind_grpc_port,
        work_dir: args.work_dir,
        task_scheduling_policy: match args.task_scheduling_policy.as_str() {
            "pull-staged" => TaskSchedulingPolicy::PullStaged,
            _ => TaskSchedulingPolicy::PushStaged,
        },
        executor_heartbeat_interval_seconds: args.executor_heartbeat_interval_seconds,
        special_mod_log_level: args.log_level_setting,
        // Without these, the executor waits forever for a scheduler that is not up yet.
        scheduler_connect_timeout_seconds: 30,
        ..Default::default()
    };
    // segflow's SQL functions (`segflow_assign`), so `segflow assign --engine df://…` can
    // run its assignment here; Ballista's stock executor lacks them.
    let mut registry = ballista_core::registry::BallistaFunctionRegistry::default();
    segflow::deploy::udf::register_on(&mut registry.scalar_functions);
    config.override_function_registry = Some(Arc::new(registry));
    if let Some(tasks) = args.concurrent_tasks {
        config.vcores = tasks;
    }
    start_executor_process(Arc::new(config)).await
}
