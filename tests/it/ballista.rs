//! The same pipeline on Apache DataFusion Ballista: its standalone mode (a scheduler and an
//! executor started in this process, talking gRPC as a cluster does) runs the demo and writes
//! the same tables, byte for byte, as the local engine. A real cluster of separate processes
//! on loopback is tests/ballista/loopback_cluster.sh.

use std::time::Duration;

use crate::util::{files_under, segflow_in_within};

/// A demo run takes about 12 s on Ballista standalone in the test profile; a run still going
/// after two minutes has hung (Ballista 55 did, in half the runs of an earlier segflow: see the
/// README).
const HANG: Duration = Duration::from_secs(120);

#[test]
fn the_demo_on_ballista_standalone_writes_the_same_tables_as_the_local_engine() {
    let sandbox = crate::churn::demo_sandbox(300);
    for (root, engine) in [("local", "local"), ("ballista", "ballista-standalone")] {
        let args = ["run", "pipelines/demo.yaml", "--run-date", "2025-01-01", "--run-id", "same", "--engine", engine, "--output-root", root];
        let ran = segflow_in_within(sandbox.root(), &args, HANG).unwrap_or_else(|| panic!("{engine}: the run was still going after {HANG:?}"));
        assert_eq!(ran.code, 0, "{engine}: {}", ran.stderr);
    }
    let files: Vec<String> = files_under(&sandbox.path("local")).into_iter().filter(|f| !f.starts_with("_segflow")).collect();
    assert_eq!(files, files_under(&sandbox.path("ballista")).into_iter().filter(|f| !f.starts_with("_segflow")).collect::<Vec<_>>());
    for file in &files {
        let (a, b) = (std::fs::read(sandbox.path(&format!("local/{file}"))).unwrap(), std::fs::read(sandbox.path(&format!("ballista/{file}"))).unwrap());
        assert!(a == b, "{file} differs between the local engine and Ballista");
    }
    // The model stages' results went to the executors as files in the run's staging area,
    // removed with it.
    assert!(files_under(&sandbox.path("ballista/_segflow/staging")).is_empty());
}

/// `segflow assign` and `segflow score` on Ballista run the saved models on the executors (the
/// `segflow_assign` and `segflow_score` SQL functions, batch by batch; the risk deciles ranked
/// by the query) and write the same files as in-process.
#[test]
fn assigning_and_scoring_on_ballista_standalone_write_the_same_files_as_in_process() {
    let sandbox = crate::churn::demo_sandbox(300);
    let ran = segflow_in_within(sandbox.root(), &["run", "pipelines/demo.yaml", "--run-date", "2025-01-01", "--run-id", "fit", "--output-root", "out"], HANG).expect("the demo run finishes");
    assert_eq!(ran.code, 0, "{}", ran.stderr);
    let customers = "out/customer_features/run_date=2025-01-01";
    for (command, model) in [("assign", "out/models/segments/run_date=2025-01-01"), ("score", "out/models/churn/run_date=2025-01-01")] {
        for engine in ["local", "ballista-standalone"] {
            let output = format!("{command}/{engine}");
            let args = [command, model, customers, "--output", &output, "--run-id", "same", "--engine", engine];
            let ran = segflow_in_within(sandbox.root(), &args, HANG).unwrap_or_else(|| panic!("{command} on {engine}: still going after {HANG:?}"));
            assert_eq!(ran.code, 0, "{command} on {engine}: {}", ran.stderr);
        }
        let file = |engine: &str| std::fs::read(sandbox.path(&format!("{command}/{engine}/part-00000-same.parquet"))).unwrap();
        assert!(file("local") == file("ballista-standalone"), "{command}: the file differs between the local engine and Ballista");
    }
}
