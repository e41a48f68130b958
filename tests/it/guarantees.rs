//! The guarantees the README promises, each proven here: determinism whatever the thread
//! count, and atomicity when a run is killed at any moment.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::util::{files_under, query};

#[test]
fn one_thread_and_all_threads_write_byte_identical_tables_models_and_reports() {
    let sandbox = crate::churn::demo_sandbox(4_000);
    // The third run's memory limit is too small to hold the cleaned lines (which two SQL
    // stages read) in memory: they go through the scratch folder instead, with the same result.
    // The fourth, under a limit that sends them to disk too, writes them in buckets of customers
    // (the demo's `bucket_by`), 15 of about 10,000 lines, deduplicated and then queried by the
    // feature SQL a bucket at a time, with the same result.
    for (root, threads, memory_limit, bucket_rows) in [("one", "1", "4GiB", "2000000"), ("all", "4", "4GiB", "2000000"), ("scratch", "4", "96MiB", "2000000"), ("buckets", "2", "80MiB", "10000")] {
        let ran = crate::util::segflow_in(
            sandbox.root(),
            &["-v", "run", "pipelines/demo.yaml", "--run-date", "2025-01-01", "--run-id", "same", "--threads", threads, "--output-root", root, "--memory-limit", memory_limit, "--bucket-rows", bucket_rows],
        );
        assert_eq!(ran.code, 0, "{}", ran.stderr);
        let path = match root {
            "scratch" => "rows read more than once written to the scratch folder",
            "buckets" => "rows written in buckets: the stages after this one work a bucket at a time",
            _ => "rows read more than once held in memory",
        };
        assert!(ran.stderr.contains(path), "{root}: {}", ran.stderr);
        // The demo's exact dedup compares the customer too: the lines are bucketed first and
        // deduplicated a bucket at a time.
        assert_eq!(ran.stderr.contains("valid rows deduplicated a bucket at a time"), root == "buckets", "{root}: {}", ran.stderr);
    }
    // Everything a reader or reviewer sees; the run record holds timings.
    let files: Vec<String> = files_under(&sandbox.path("one")).into_iter().filter(|f| !f.starts_with("_segflow")).collect();
    assert!(files.len() > 40, "{files:?}");
    for other in ["all", "scratch", "buckets"] {
        assert_eq!(files, files_under(&sandbox.path(other)).into_iter().filter(|f| !f.starts_with("_segflow")).collect::<Vec<_>>());
        for file in &files {
            let (a, b) = (std::fs::read(sandbox.path(&format!("one/{file}"))).unwrap(), std::fs::read(sandbox.path(&format!("{other}/{file}"))).unwrap());
            assert!(a == b, "{file} differs between `one` (1 thread) and `{other}`");
        }
    }
}

/// Every committed partition under `root`: readable, and exactly the files its manifest lists
/// plus `_manifest.json` and `_SUCCESS` (nothing partial or stray), as (table, rows as text).
fn committed_tables(root: &Path) -> Vec<(String, Vec<Vec<String>>)> {
    let mut out = Vec::new();
    for table in std::fs::read_dir(root).unwrap().flatten().map(|e| e.path()).filter(|p| p.is_dir()) {
        let name = table.file_name().unwrap().to_string_lossy().to_string();
        if name.starts_with('_') || name == "models" || name == "reports" {
            continue;
        }
        for partition in std::fs::read_dir(&table).unwrap().flatten().map(|e| e.path()) {
            let manifest: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(partition.join("_manifest.json")).unwrap_or_else(|e| panic!("{}: no manifest ({e})", partition.display()))).unwrap();
            assert!(partition.join("_SUCCESS").exists(), "{}: no _SUCCESS", partition.display());
            let mut listed: Vec<String> = manifest["files"].as_array().unwrap().iter().map(|f| f["name"].as_str().unwrap().to_string()).collect();
            listed.extend(["_SUCCESS".to_string(), "_manifest.json".to_string()]);
            listed.sort();
            assert_eq!(files_under(&partition), listed, "{}: files other than the manifest's", partition.display());
            // Every column but the run id a row was written by (rejects, evaluation).
            let columns: Vec<String> = manifest["schema"]
                .as_array()
                .unwrap()
                .iter()
                .map(|c| c["name"].as_str().unwrap())
                .filter(|c| *c != "run_id" && *c != "_run_id")
                .map(|c| format!("\"{c}\""))
                .collect();
            let rows = query(&[("t", &partition)], &format!("SELECT {} FROM t ORDER BY {}", columns.join(", "), columns.join(", ")));
            assert_eq!(rows.len() as u64, manifest["rows"].as_u64().unwrap(), "{}", partition.display());
            out.push((format!("{name}/{}", partition.file_name().unwrap().to_string_lossy()), rows));
        }
    }
    out.sort_by(|a, b| a.0.cmp(&b.0));
    out
}

#[test]
fn a_run_killed_at_any_moment_leaves_every_committed_table_whole_and_the_next_run_completes() {
    let sandbox = crate::churn::demo_sandbox(250);
    let args = |id: &str| vec!["run".to_string(), "pipelines/demo.yaml".into(), "--run-date".into(), "2025-01-01".into(), "--run-id".into(), id.to_string(), "--output-root".into(), "out".into()];
    let started = Instant::now();
    let good = crate::util::segflow_in(sandbox.root(), &args("good").iter().map(String::as_str).collect::<Vec<_>>());
    assert_eq!(good.code, 0, "{}", good.stderr);
    let run_time = started.elapsed();
    let last_good = committed_tables(&sandbox.path("out"));
    assert!(last_good.len() >= 10);

    // Runs killed (SIGKILL) after seeded random delays spread over a whole run, until 30 were
    // killed while still running. The first run's time is only an estimate (cargo runs other
    // tests beside this one, so one run can take twice as long as the next): a run that ends
    // before its kill shortens the estimate to what it took, so the delays keep landing inside
    // a run whatever the machine's load.
    let mut rng = ChaCha8Rng::seed_from_u64(2026);
    let mut run_estimate = run_time;
    let (mut killed_while_running, mut attempts) = (0, 0);
    while killed_while_running < 30 {
        assert!(attempts < 90, "only {killed_while_running} of {attempts} runs were still running when killed");
        let attempt = attempts;
        attempts += 1;
        let delay = Duration::from_secs_f64(rng.random::<f64>() * run_estimate.as_secs_f64() * 1.1);
        let spawned = Instant::now();
        let mut child = Command::new(env!("CARGO_BIN_EXE_segflow"))
            .args(args(&format!("killed-{attempt}")))
            .current_dir(sandbox.root())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let finished = loop {
            if let Some(status) = child.try_wait().unwrap() {
                break Some(status);
            }
            if spawned.elapsed() >= delay {
                break None;
            }
            std::thread::sleep(Duration::from_millis(2));
        };
        match finished {
            Some(status) => {
                assert!(status.success(), "run killed-{attempt} failed on its own");
                run_estimate = run_estimate.min(spawned.elapsed());
            }
            None => {
                child.kill().ok(); // SIGKILL on Unix
                child.wait().unwrap();
                killed_while_running += 1;
            }
        }
        // Every committed table: whole, readable, and the same rows as the last good run
        // (the same input and seed; a run that finished before the kill wrote the same rows).
        let now = committed_tables(&sandbox.path("out"));
        let changed: Vec<&String> = now.iter().zip(&last_good).filter(|(a, b)| a != b).map(|(a, _)| &a.0).collect();
        assert!(now.len() == last_good.len() && changed.is_empty(), "after a kill at {delay:?} (attempt {attempt}): changed {changed:?}");
    }
    eprintln!("{killed_while_running} of {attempts} runs killed before they finished");

    // The next run completes: it takes over the dead run's lock and clears its staging.
    let next = crate::util::segflow_in(sandbox.root(), &args("after").iter().map(String::as_str).collect::<Vec<_>>());
    assert_eq!(next.code, 0, "{}", next.stderr);
    assert_eq!(committed_tables(&sandbox.path("out")), last_good);
    let leftovers: Vec<String> = files_under(&sandbox.path("out/_segflow/staging"));
    assert!(leftovers.is_empty(), "staging left behind: {leftovers:?}");
}
