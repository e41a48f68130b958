//! What a scheduler relies on: environment values in the file, the DAG as DOT, the run
//! record and XCom, and one run per run date.

use std::process::{Command, Stdio};

use crate::util::{Ran, Sandbox, files_under, summary};

fn run(sandbox: &Sandbox, args: &[&str], env: &[(&str, &str)]) -> Ran {
    let mut command = Command::new(env!("CARGO_BIN_EXE_segflow"));
    command.args(args).current_dir(sandbox.root()).env_remove("SEGFLOW_LOG").env("NO_COLOR", "1");
    for (k, v) in env {
        command.env(k, v);
    }
    command.output().expect("segflow runs").into()
}

#[test]
fn environment_values_fill_the_pipeline_file_and_a_missing_one_is_named_where_it_is_used() {
    let sandbox = Sandbox::new();
    crate::core::tiny_pipeline(&sandbox);
    let text = std::fs::read_to_string(sandbox.path("pipeline.yaml")).unwrap();
    sandbox.write("pipeline.yaml", &text.replace("output_root: out", "output_root: ${SEGFLOW_TEST_ROOT:-default_root}").replace("seed: 1", "seed: ${SEGFLOW_TEST_SEED:?the scheduler sets SEGFLOW_TEST_SEED}"));

    let ran = run(&sandbox, &["validate", "pipeline.yaml"], &[]);
    assert_eq!(ran.code, 2, "{}", ran.stderr);
    assert!(ran.stderr.contains("pipeline.yaml:2:7: environment variable `SEGFLOW_TEST_SEED` is not set: the scheduler sets SEGFLOW_TEST_SEED"), "{}", ran.stderr);

    let ran = run(&sandbox, &["validate", "pipeline.yaml"], &[("SEGFLOW_TEST_SEED", "3\nname: injected")]);
    assert_eq!(ran.code, 2);
    assert!(ran.stderr.contains("`SEGFLOW_TEST_SEED` holds a line break"), "{}", ran.stderr);

    let ran = run(&sandbox, &["run", "pipeline.yaml", "--run-date", "2024-02-01"], &[("SEGFLOW_TEST_SEED", "3"), ("SEGFLOW_TEST_ROOT", "from_env")]);
    assert_eq!(ran.code, 0, "{}", ran.stderr);
    assert!(sandbox.path("from_env/purchase_features/run_date=2024-02-01/_SUCCESS").exists());
    let ran = run(&sandbox, &["run", "pipeline.yaml", "--run-date", "2024-02-01"], &[("SEGFLOW_TEST_SEED", "3")]);
    assert_eq!(ran.code, 0, "{}", ran.stderr);
    assert!(sandbox.path("default_root/purchase_features/run_date=2024-02-01/_SUCCESS").exists(), "the default applies");
}

#[test]
fn graph_prints_the_dag_as_dot() {
    let ran = crate::util::segflow_in(&crate::util::repo(), &["graph", "pipelines/demo.yaml"]);
    assert_eq!(ran.code, 0, "{}", ran.stderr);
    let dot = ran.stdout;
    assert!(dot.starts_with("digraph \"demo\" {"), "{dot}");
    for edge in [
        "\"input:raw_transactions\" -> \"stage:transactions\";",
        "\"stage:customer_features\" -> \"stage:segments\";",
        "\"stage:segments\" -> \"stage:churn\";",
        "\"stage:transactions\" -> \"table:rejects\";",
        "\"stage:segments\" -> \"table:evaluation\";",
        "\"stage:churn\" -> \"table:evaluation\";",
    ] {
        assert!(dot.contains(edge), "missing {edge} in\n{dot}");
    }
}

#[test]
fn every_run_leaves_run_results_and_xcom_gets_the_summary_line() {
    let sandbox = Sandbox::new();
    crate::core::tiny_pipeline(&sandbox);
    let ran = run(&sandbox, &["run", "pipeline.yaml", "--run-date", "2024-02-01", "--run-id", "ok-run", "--xcom-file", "airflow/xcom/return.json"], &[]);
    assert_eq!(ran.code, 0, "{}", ran.stderr);
    let line = ran.stdout.lines().last().unwrap();
    assert_eq!(std::fs::read_to_string(sandbox.path("airflow/xcom/return.json")).unwrap(), line, "XCom holds the summary line");
    let record: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(sandbox.path("out/_segflow/runs/ok-run/run_results.json")).unwrap()).unwrap();
    assert_eq!(summary(&ran)["run_results"].as_str().unwrap(), sandbox.path("out/_segflow/runs/ok-run/run_results.json").to_str().unwrap());
    assert_eq!(record["status"], "success");
    let stage = &record["stages"][0];
    assert_eq!((stage["name"].as_str(), stage["status"].as_str()), (Some("purchase_features"), Some("success")));
    assert!(stage["started_at"].as_str().unwrap() <= stage["ended_at"].as_str().unwrap());
    let output = &stage["outputs"][0];
    assert_eq!(output["table"], "purchase_features");
    assert_eq!(output["rows"], 2);
    assert_eq!(output["schema_version"], 1);
    assert!(std::path::Path::new(output["manifest"].as_str().unwrap()).exists());
    assert!(!sandbox.path("out/_segflow/locks/run_date=2024-02-01.lock").exists(), "the lock is released");

    // A failing stage: recorded as failed, the stages after it as skipped, exit 1.
    let text = std::fs::read_to_string(sandbox.path("pipeline.yaml")).unwrap();
    let failing = text.replace(
        "outputs:",
        "  - name: broken\n    kind: sql\n    inputs: [purchase_features]\n    query: SELECT CAST(CAST(customer_id AS VARCHAR) || 'x' AS INT) AS n FROM purchase_features\n  - name: after\n    kind: sql\n    inputs: [broken]\n    query: SELECT * FROM broken\noutputs:\n  broken: {}\n  after: {}",
    );
    sandbox.write("pipeline.yaml", &failing);
    let ran = run(&sandbox, &["run", "pipeline.yaml", "--run-date", "2024-02-01", "--run-id", "bad-run"], &[]);
    assert_eq!(ran.code, 1, "{}", ran.stderr);
    let record: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(sandbox.path("out/_segflow/runs/bad-run/run_results.json")).unwrap()).unwrap();
    assert_eq!(record["status"], "failed");
    assert!(record["error"].as_str().unwrap().contains("broken"), "{record}");
    let statuses: Vec<(&str, &str)> = record["stages"].as_array().unwrap().iter().map(|s| (s["name"].as_str().unwrap(), s["status"].as_str().unwrap())).collect();
    assert!(statuses.contains(&("purchase_features", "success")), "{statuses:?}");
    assert!(statuses.iter().any(|(n, s)| *n == "after" && *s == "skipped"), "{statuses:?}");
    assert!(!sandbox.path("out/_segflow/locks/run_date=2024-02-01.lock").exists(), "released after a failure too");
}

fn write_lock(sandbox: &Sandbox, date: &str, run_id: &str, pid: u32, host: &str) {
    let holder = serde_json::json!({"run_id": run_id, "pid": pid, "host": host, "started_at": "2026-11-24T00:00:00Z"});
    sandbox.write(&format!("out/_segflow/locks/run_date={date}.lock"), &holder.to_string());
}

fn this_host() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname").map(|h| h.trim().to_string()).unwrap_or_default()
}

#[test]
fn a_run_date_is_run_once_at_a_time_and_a_killed_runs_lock_is_taken_over() {
    let sandbox = Sandbox::new();
    crate::core::tiny_pipeline(&sandbox);
    let args = ["run", "pipeline.yaml", "--run-date", "2024-02-01", "--run-id", "second"];

    // Held by a live process of this host (this test): refused at once, naming the holder.
    write_lock(&sandbox, "2024-02-01", "first-run", std::process::id(), &this_host());
    let ran = run(&sandbox, &args, &[]);
    assert_eq!(ran.code, 1, "{}", ran.stderr);
    assert!(ran.stderr.contains("run date 2024-02-01 is being run by run first-run"), "{}", ran.stderr);
    assert!(!sandbox.path("out/purchase_features").exists(), "nothing written");

    // Held on another host: refused, with how to clear it.
    write_lock(&sandbox, "2024-02-01", "remote-run", 4242, "some-other-host");
    let ran = run(&sandbox, &args, &[]);
    assert_eq!(ran.code, 1);
    assert!(ran.stderr.contains("on host some-other-host") && ran.stderr.contains("delete"), "{}", ran.stderr);

    // Left by a process that is gone: taken over with a warning, and the run succeeds.
    let mut gone = Command::new("true").spawn().unwrap();
    let dead_pid = gone.id();
    gone.wait().unwrap();
    write_lock(&sandbox, "2024-02-01", "killed-run", dead_pid, &this_host());
    let ran = run(&sandbox, &args, &[]);
    assert_eq!(ran.code, 0, "{}", ran.stderr);
    assert!(ran.stderr.contains("killed-run") && ran.stderr.contains("taking the lock over"), "{}", ran.stderr);
    assert!(files_under(&sandbox.path("out/_segflow/locks")).is_empty());
}

#[test]
fn runs_of_different_dates_proceed_in_parallel_and_the_same_date_twice_does_not() {
    let sandbox = crate::churn::demo_sandbox(200);
    let spawn = |date: &str, id: &str| {
        Command::new(env!("CARGO_BIN_EXE_segflow"))
            .args(["run", "pipelines/demo.yaml", "--run-date", date, "--run-id", id, "--output-root", "out"])
            .current_dir(sandbox.root())
            .env("NO_COLOR", "1")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
    };
    let (a, b) = (spawn("2025-01-01", "jan"), spawn("2025-02-01", "feb"));
    let (a, b): (Ran, Ran) = (a.wait_with_output().unwrap().into(), b.wait_with_output().unwrap().into());
    assert_eq!((a.code, b.code), (0, 0), "{}\n{}", a.stderr, b.stderr);

    let (a, b) = (spawn("2025-03-01", "one"), spawn("2025-03-01", "two"));
    let (a, b): (Ran, Ran) = (a.wait_with_output().unwrap().into(), b.wait_with_output().unwrap().into());
    let mut codes = [a.code, b.code];
    codes.sort();
    assert_eq!(codes, [0, 1], "one wins, the other fails at once:\n{}\n{}", a.stderr, b.stderr);
    let loser = if a.code == 1 { &a } else { &b };
    assert!(loser.stderr.contains("run date 2025-03-01 is being run by run"), "{}", loser.stderr);
    let manifest: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(sandbox.path("out/churn_scores/run_date=2025-03-01/_manifest.json")).unwrap()).unwrap();
    let winner = if a.code == 0 { "one" } else { "two" };
    assert_eq!(manifest["run_id"], winner, "the committed tables are the winner's, whole");
}

fn manifest_run_id(sandbox: &Sandbox, table: &str, date: &str) -> String {
    let text = std::fs::read_to_string(sandbox.path(&format!("out/{table}/run_date={date}/_manifest.json"))).unwrap();
    serde_json::from_str::<serde_json::Value>(&text).unwrap()["run_id"].as_str().unwrap().to_string()
}

#[test]
fn select_runs_part_of_the_pipeline_reading_what_it_skips_from_committed_tables() {
    let sandbox = crate::churn::demo_sandbox(250);
    let run = |args: &[&str]| {
        let mut all = vec!["run", "pipelines/demo.yaml", "--run-date", "2025-01-01", "--output-root", "out"];
        all.extend_from_slice(args);
        crate::util::segflow_in(sandbox.root(), &all)
    };
    let full = run(&["--run-id", "full"]);
    assert_eq!(full.code, 0, "{}", full.stderr);

    // Only the segments: customer_features is read back, only the segment tables change.
    let part = run(&["--run-id", "segments-only", "--select", "segments"]);
    assert_eq!(part.code, 0, "{}", part.stderr);
    assert!(part.stderr.contains("not selected: read from its committed table"), "{}", part.stderr);
    assert_eq!(manifest_run_id(&sandbox, "customer_segments", "2025-01-01"), "segments-only");
    for untouched in ["customer_features", "churn_scores", "evaluation", "reports"] {
        assert_eq!(manifest_run_id(&sandbox, untouched, "2025-01-01"), "full", "{untouched} was replaced by a partial run");
    }
    let record: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(sandbox.path("out/_segflow/runs/segments-only/run_results.json")).unwrap()).unwrap();
    let stages: Vec<&str> = record["stages"].as_array().unwrap().iter().map(|s| s["name"].as_str().unwrap()).collect();
    assert_eq!(stages, vec!["segments"]);

    // A stage whose input was never written as a table cannot run alone; the fix is named.
    let alone = run(&["--select", "churn"]);
    assert_eq!(alone.code, 2, "{}", alone.stderr);
    assert!(alone.stderr.contains("stage `churn` reads `transactions` from stage `transactions`, which is not selected and not written as an output table") && alone.stderr.contains("`+churn`"), "{}", alone.stderr);
    let typo = run(&["--select", "segmnts+"]);
    assert_eq!(typo.code, 2);
    assert!(typo.stderr.contains("`segmnts+` selects no stage") && typo.stderr.contains("did you mean `segments`?"), "{}", typo.stderr);

    // Excluding the churn stage: everything else reruns; the evaluation is left whole.
    let without = run(&["--run-id", "no-churn", "--exclude", "churn"]);
    assert_eq!(without.code, 0, "{}", without.stderr);
    assert_eq!(manifest_run_id(&sandbox, "customer_features", "2025-01-01"), "no-churn");
    assert_eq!(manifest_run_id(&sandbox, "evaluation", "2025-01-01"), "full");
    assert_eq!(manifest_run_id(&sandbox, "churn_scores", "2025-01-01"), "full");
}

#[test]
fn retry_reruns_the_last_failed_run_from_its_failed_stage() {
    let sandbox = Sandbox::new();
    crate::core::tiny_pipeline(&sandbox);
    let text = std::fs::read_to_string(sandbox.path("pipeline.yaml")).unwrap();
    let text = text
        .replace("inputs:\n  transactions:", "inputs:\n  extra:\n    path: data/extra.parquet\n  transactions:")
        .replace(
            "outputs:",
            "  - name: scored\n    kind: sql\n    inputs: [purchase_features, extra]\n    query: SELECT p.customer_id, CAST(e.v AS INT) AS v FROM purchase_features p JOIN extra e ON e.customer_id = p.customer_id\noutputs:\n  scored: {}",
        );
    sandbox.write("pipeline.yaml", &text);
    let extra = |v: &str| crate::util::write_parquet(&sandbox.path("data/extra.parquet"), vec![crate::util::Col::Int("customer_id", vec![Some(1), Some(2)]), crate::util::Col::Str("v", vec![Some("5"), Some(v)])]);
    let args = ["run", "pipeline.yaml", "--run-date", "2024-02-01"];

    extra("6");
    assert_eq!(run(&sandbox, &[&args[..], &["--run-id", "good"]].concat(), &[]).code, 0);
    extra("not a number");
    let failed = run(&sandbox, &[&args[..], &["--run-id", "bad"]].concat(), &[]);
    assert_eq!(failed.code, 1, "{}", failed.stderr);

    extra("7");
    let retried = run(&sandbox, &["retry", "pipeline.yaml", "--run-id", "again"], &[]);
    assert_eq!(retried.code, 0, "{}", retried.stderr);
    let line = summary(&retried);
    assert_eq!(line["retry_of"], "bad");
    assert_eq!(line["stages"], serde_json::json!(["scored"]), "only the failed stage and what follows it");
    let manifest = |table: &str| -> serde_json::Value { serde_json::from_str(&std::fs::read_to_string(sandbox.path(&format!("out/{table}/run_date=2024-02-01/_manifest.json"))).unwrap()).unwrap() };
    assert_eq!(manifest("scored")["run_id"], "again");
    assert_eq!(manifest("purchase_features")["run_id"], "good", "upstream was read back, not recomputed");

    let nothing = run(&sandbox, &["retry", "pipeline.yaml"], &[]);
    assert_eq!(nothing.code, 2);
    assert!(nothing.stderr.contains("succeeded: nothing to retry"), "{}", nothing.stderr);
}

#[test]
fn a_terminal_gets_a_progress_bar_and_a_task_log_gets_plain_lines() {
    let sandbox = crate::churn::demo_sandbox(150);
    // Off a terminal (an Airflow task log, a pipe): no control codes at all.
    let plain = crate::util::segflow_in(sandbox.root(), &["run", "pipelines/demo.yaml", "--run-date", "2025-01-01", "--output-root", "out"]);
    assert_eq!(plain.code, 0, "{}", plain.stderr);
    assert!(!plain.stderr.contains('\x1b') && !plain.stderr.contains('\r'), "control codes in a task log");
    assert!(plain.stderr.lines().all(|l| l.contains(" INFO ") || l.contains(" WARN ")), "every line is a log line:\n{}", plain.stderr);

    // On a terminal (a pseudo-terminal from `script`): the bar names the running stage, and
    // the log lines are still all there.
    let command = format!("{} run pipelines/demo.yaml --run-date 2025-01-02 --output-root out", env!("CARGO_BIN_EXE_segflow"));
    let status = Command::new("script").args(["-qfc", &command, "terminal.log"]).current_dir(sandbox.root()).stdout(Stdio::null()).status().expect("script(1) runs");
    assert!(status.success());
    let seen = String::from_utf8_lossy(&std::fs::read(sandbox.path("terminal.log")).unwrap()).into_owned();
    assert!(seen.contains("stage churn (churn)"), "no progress bar on a terminal:\n{seen}");
    assert!(seen.contains("run succeeded"), "log lines lost under the bar:\n{seen}");
}
