//! A Ballista scheduler process (in-memory cluster state, as `ballista-scheduler` runs by
//! default), with segflow's SQL functions registered. Flags are the crates.io binary's, for
//! the ones the loopback script uses.

use std::net::SocketAddr;
use std::sync::Arc;

use ballista_core::config::TaskSchedulingPolicy;
use ballista_scheduler::cluster::BallistaCluster;
use ballista_scheduler::config::SchedulerConfig;
use ballista_scheduler::scheduler_process::start_server;
use clap::Parser;

#[derive(Parser)]
#[command(about = "Apache DataFusion Ballista scheduler (ballista-scheduler 55)")]
struct Args {
    #[arg(long, default_value = "127.0.0.1")]
    bind_host: String,
    #[arg(long, default_value_t = 50050)]
    bind_port: u16,
    /// How executors and clients reach this scheduler.
    #[arg(long, default_value = "localhost")]
    external_host: String,
    /// `push-staged` (Ballista's default for a cluster) or `pull-staged`.
    #[arg(long, default_value = "push-staged")]
    scheduler_policy: String,
    /// Seconds without a heartbeat after which an executor is dead and its tasks re-run.
    #[arg(long, default_value_t = 180)]
    executor_timeout_seconds: u64,
    /// How often the scheduler looks for dead executors.
    #[arg(long, default_value_t = 15)]
    expire_dead_executor_interval_seconds: u64,
    #[arg(long, env = "RUST_LOG", default_value = "info")]
    log_level_setting: String,
}

fn main() -> ballista_core::error::Result<()> {
    let args = Args::parse();
    segflow_ballista_cluster::init_log(&args.log_level_setting);
    let policy = match args.scheduler_policy.as_str() {
        "pull-staged" => TaskSchedulingPolicy::PullStaged,
        _ => TaskSchedulingPolicy::PushStaged,
    };
    let address: SocketAddr = format!("{}:{}", args.bind_host, args.bind_port)
        .parse()
        .map_err(|e: std::net::AddrParseError| ballista_core::error::BallistaError::Configuration(e.to_string()))?;
    let mut config = SchedulerConfig::default().with_scheduler_policy(policy);
    config.bind_host = args.bind_host;
    config.bind_port = args.bind_port;
    config.external_host = args.external_host;
    config.executor_timeout_seconds = args.executor_timeout_seconds;
    config.expire_dead_executor_interval_seconds = args.expire_dead_executor_interval_seconds;
    config.no_executors_grace_period_seconds = args.executor_timeout_seconds;
    // segflow's SQL functions (`segflow_assign`): the scheduler decodes the client's logical
    // plan, so it must know them as the executors do.
    config.override_session_builder = Some(Arc::new(|session_config| {
        let mut state = ballista_core::utils::default_session_builder(session_config)?;
        for function in segflow::deploy::udf::functions() {
            datafusion::execution::FunctionRegistry::register_udf(&mut state, function)?;
        }
        Ok(state)
    }));
    // The upstream binary's runtime: large stacks for deep plans.
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_io().enable_time().thread_stack_size(32 * 1024 * 1024).build()?;
    runtime.block_on(async move {
        let cluster = BallistaCluster::new_from_config(&config).await?;
        start_server(cluster, address, Arc::new(config)).await
    })
}
