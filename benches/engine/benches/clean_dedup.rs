//! Clean + dedup: a one-stage pipeline (`kind: clean`, the stage of benches/clean_vs_polars.sh)
//! run through the library, from the planned pipeline to committed output tables.
//!
//!   CARGO_TARGET_DIR=~/.cache/segflow/target cargo bench -p segflow-engine-benches --bench clean_dedup
//!
//! The input is `segflow demo-data`'s transaction lines (fixed seed, about 1M lines, with the
//! cancellations, exact duplicates, guest orders and invalid lines it plants), generated in a
//! temporary folder that is removed afterwards. The pipeline is planned once; every iteration
//! is one `run::execute` with a fresh run id: cast and null checks, three rules, exact dedup,
//! and the clean, rejects and data-quality tables written and committed.

use std::path::Path;
use std::time::Duration;

use criterion::{BenchmarkId, Criterion, SamplingMode, Throughput};

use segflow::engine::EngineOptions;
use segflow::plan::{self, PlanOptions};
use segflow::run;
use segflow_engine_benches::{CUSTOMERS, SEED, WorkDir, demo_shop, runtime};

/// The stage of benches/clean_vs_polars.sh, whose polars side does the same.
const PIPELINE: &str = include_str!("../../clean_bench.yaml");

fn clean_dedup(c: &mut Criterion, work: &Path) {
    let (_, lines) = demo_shop(work);
    let pipeline = work.join("clean.yaml");
    std::fs::write(&pipeline, PIPELINE).expect("write the pipeline");

    let runtime = runtime();
    let engine_options = EngineOptions::default();
    let plan_options = PlanOptions {
        run_date: segflow::vars::parse_date("2025-01-31").expect("a date"),
        var_overrides: Vec::new(),
        output_root: None,
    };
    let plan = runtime
        .block_on(plan::load_and_check(
            &pipeline,
            &plan_options,
            &engine_options,
        ))
        .unwrap_or_else(|diagnostics| panic!("the pipeline does not check: {diagnostics:?}"));

    let mut runs = 0u64;
    let mut run_once = || {
        runs += 1;
        runtime
            .block_on(run::execute(
                &plan,
                &format!("bench-{runs:04}"),
                &engine_options,
            ))
            .expect("the clean pipeline runs")
    };
    let summary = run_once();
    eprintln!(
        "clean_dedup: {lines} lines in ({} customers, seed {SEED}); stage metrics {:?}",
        CUSTOMERS, summary.stages[0].metrics
    );

    let mut group = c.benchmark_group("clean_dedup");
    group.sampling_mode(SamplingMode::Flat);
    group.sample_size(10);
    group.measurement_time(Duration::from_secs(30));
    group.throughput(Throughput::Elements(lines as u64));
    let size = format!(
        "{:.2}M_lines_{}k_customers",
        lines as f64 / 1e6,
        CUSTOMERS / 1000
    );
    group.bench_function(BenchmarkId::new("clean_stage_run", size), |b| {
        b.iter(&mut run_once)
    });
    group.finish();
}

fn main() {
    let work = WorkDir::new("clean_dedup");
    let mut criterion = Criterion::default().configure_from_args();
    clean_dedup(&mut criterion, work.path());
    criterion.final_summary();
}
