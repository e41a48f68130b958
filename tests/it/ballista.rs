//! The same pipeline on Apache DataFusion Ballista: its standalone mode (a scheduler and an
//! executor started in this process) runs the demo and writes the same tables, byte for byte,
//! as the local engine.

use crate::util::{files_under, segflow_in};

/// Ignored in `cargo test` (run it with `cargo test -- --ignored ballista`): on this machine,
/// Ballista 55's standalone mode leaves a job unfinished in about two runs of three — every
/// thread idle, no error — at a different query each time. When a run completes, the tables
/// are byte-identical to the local engine's. See the README (Ballista) for the status.
#[test]
#[ignore = "Ballista 55 standalone: intermittent hang (a job never completes); see the README"]
fn the_demo_on_ballista_standalone_writes_the_same_tables_as_the_local_engine() {
    let sandbox = crate::churn::demo_sandbox(300);
    for (root, engine) in [("local", "local"), ("ballista", "ballista-standalone")] {
        let ran = segflow_in(sandbox.root(), &["run", "pipelines/demo.yaml", "--run-date", "2025-01-01", "--run-id", "same", "--engine", engine, "--output-root", root]);
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
