//! The core, end to end: the demo pipeline, golden features, the commit protocol.

use crate::util::{Sandbox, files_under, read_table, repo, segflow_in, summary};

/// A pipeline over the tiny fixture, computing the shared purchase features.
pub fn tiny_pipeline(sandbox: &Sandbox) -> std::path::PathBuf {
    sandbox.write_tiny_transactions("data/transactions.parquet");
    let sql = std::fs::read_to_string(repo().join("sql/purchase_features.sql")).unwrap();
    sandbox.write("sql/purchase_features.sql", &sql);
    sandbox.write(
        "pipeline.yaml",
        "name: tiny\nseed: 1\noutput_root: out\nvars:\n  as_of: 2024-02-01\ninputs:\n  transactions:\n    path: data/transactions.parquet\n\
         stages:\n  - name: purchase_features\n    kind: sql\n    inputs: [transactions]\n    file: sql/purchase_features.sql\n\
         outputs:\n  purchase_features:\n    sort_by: [customer_id]\n",
    )
}

#[test]
fn the_demo_pipeline_runs_end_to_end_on_the_shipped_data() {
    let out = tempfile::tempdir().unwrap();
    let ran = segflow_in(
        &repo(),
        &["run", "pipelines/demo.yaml", "--run-date", "2025-01-01", "--run-id", "demo-test", "--output-root", out.path().to_str().unwrap()],
    );
    assert_eq!(ran.code, 0, "stderr:\n{}", ran.stderr);
    let summary = summary(&ran);
    assert_eq!(summary["status"], "success");
    let partition = out.path().join("customer_features/run_date=2025-01-01");
    assert_eq!(
        files_under(&partition),
        vec!["_SUCCESS", "_manifest.json", "part-00000-demo-test.parquet"],
    );
    let manifest: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(partition.join("_manifest.json")).unwrap()).unwrap();
    assert_eq!(manifest["schema_version"], 1);
    assert_eq!(manifest["run_id"], "demo-test");
    let rows = manifest["rows"].as_u64().unwrap();
    assert!(rows > 1_000, "the demo has about 1,500 customers, got {rows}");
    assert_eq!(summary["tables"][0]["rows"].as_u64(), Some(rows));
    // Nothing but the summary on stdout: a task log's XCom reads the last line.
    assert_eq!(ran.stdout.lines().count(), 1, "{}", ran.stdout);
}

#[test]
fn purchase_features_on_a_tiny_fixture_match_the_hand_computed_table() {
    let sandbox = Sandbox::new();
    let pipeline = tiny_pipeline(&sandbox);
    let ran = sandbox.segflow(&["run", pipeline.to_str().unwrap(), "--run-date", "2024-02-01", "--run-id", "r1"]);
    assert_eq!(ran.code, 0, "{}", ran.stderr);
    // Customer 1: orders A1 (20.00, 3 units, 2 categories) on Jan 1 10:00 and B2 (30.00) on
    // Jan 11 10:00, and a cancelled invoice C2: 2 purchases of 3 invoices, recency 20d 14h,
    // tenure 30d 14h, one 10-day gap, toys 40 of 50 spent. Customer 2: one order D3 (7.50)
    // on Jan 20 12:00; F5 is after the as-of date and must not count. The guest line (no
    // customer) belongs to nobody.
    let expected = "\
+-------------+--------------------+-----------+----------+------------------+------------------+--------------------+---------------------+-----------------+-------------------+---------------+--------------------+---------------------+--------------------+
| customer_id | recency_days       | frequency | monetary | avg_basket_value | avg_basket_units | tenure_days        | days_between_orders | orders_last_90d | monetary_last_90d | active_months | cancellation_rate  | distinct_categories | top_category_share |
+-------------+--------------------+-----------+----------+------------------+------------------+--------------------+---------------------+-----------------+-------------------+---------------+--------------------+---------------------+--------------------+
| 1           | 20.583333333333332 | 2         | 50.0     | 25.0             | 2.0              | 30.583333333333332 | 10.0                | 2               | 50.0              | 1             | 0.3333333333333333 | 2                   | 0.8                |
| 2           | 11.5               | 1         | 7.5      | 7.5              | 3.0              | 11.5               | 11.5                | 1               | 7.5               | 1             | 0.0                | 1                   | 1.0                |
+-------------+--------------------+-----------+----------+------------------+------------------+--------------------+---------------------+-----------------+-------------------+---------------+--------------------+---------------------+--------------------+";
    let actual = read_table(&sandbox.path("out/purchase_features/run_date=2024-02-01"), "customer_id");
    assert_eq!(actual, expected, "\nactual:\n{actual}");
}

#[test]
fn a_rerun_for_the_same_run_date_replaces_the_partition_and_never_appends() {
    let sandbox = Sandbox::new();
    let pipeline = tiny_pipeline(&sandbox);
    let partition = sandbox.path("out/purchase_features/run_date=2024-02-01");
    let first = sandbox.segflow(&["run", pipeline.to_str().unwrap(), "--run-date", "2024-02-01", "--run-id", "first"]);
    assert_eq!(first.code, 0, "{}", first.stderr);
    let rows_first = read_table(&partition, "customer_id");
    let second = sandbox.segflow(&["run", pipeline.to_str().unwrap(), "--run-date", "2024-02-01", "--run-id", "second"]);
    assert_eq!(second.code, 0, "{}", second.stderr);
    assert_eq!(files_under(&partition), vec!["_SUCCESS", "_manifest.json", "part-00000-second.parquet"]);
    assert_eq!(read_table(&partition, "customer_id"), rows_first);
    // Another run date is another partition; the first one stays.
    let other = sandbox.segflow(&["run", pipeline.to_str().unwrap(), "--run-date", "2024-02-02", "--run-id", "third"]);
    assert_eq!(other.code, 0, "{}", other.stderr);
    assert!(partition.join("part-00000-second.parquet").exists());
    // No staging left behind where a reader of the table could see it.
    assert_eq!(files_under(&sandbox.path("out/_segflow/staging")), Vec::<String>::new());
}

#[test]
fn the_same_input_and_seed_write_byte_identical_files() {
    let sandbox = Sandbox::new();
    let pipeline = tiny_pipeline(&sandbox);
    let run = |id: &str, threads: &str| {
        let ran = sandbox.segflow(&["run", pipeline.to_str().unwrap(), "--run-date", "2024-02-01", "--run-id", id, "--output-root", id, "--threads", threads]);
        assert_eq!(ran.code, 0, "{}", ran.stderr);
        std::fs::read(sandbox.path(&format!("{id}/purchase_features/run_date=2024-02-01/part-00000-{id}.parquet"))).unwrap()
    };
    assert_eq!(run("same", "1"), {
        let other = run("same2", "4");
        other
    });
}

#[test]
fn a_failure_mid_run_leaves_the_previous_partitions_intact() {
    let sandbox = Sandbox::new();
    sandbox.write_tiny_transactions("data/transactions.parquet");
    // Two outputs; the second one's query fails on the data when `fail` is true (a cast
    // that cannot succeed), after the first table has been written to staging.
    let pipeline = sandbox.write(
        "pipeline.yaml",
        "name: fragile\noutput_root: out\nvars:\n  fail: false\ninputs:\n  transactions:\n    path: data/transactions.parquet\n\
         stages:\n  - name: counts\n    kind: sql\n    inputs: [transactions]\n    query: SELECT customer_id, COUNT(*) AS n FROM transactions GROUP BY customer_id\n\
         \x20 - name: risky\n    kind: sql\n    inputs: [transactions]\n    query: SELECT invoice, CASE WHEN ${fail} THEN CAST(invoice AS BIGINT) ELSE 0 END AS v FROM transactions\n\
         outputs:\n  counts: {}\n  risky: {}\n",
    );
    let good = sandbox.segflow(&["run", pipeline.to_str().unwrap(), "--run-date", "2024-03-01", "--run-id", "good"]);
    assert_eq!(good.code, 0, "{}", good.stderr);
    let counts = sandbox.path("out/counts/run_date=2024-03-01");
    let risky = sandbox.path("out/risky/run_date=2024-03-01");
    let before = (std::fs::read(counts.join("part-00000-good.parquet")).unwrap(), std::fs::read(risky.join("part-00000-good.parquet")).unwrap());

    let bad = sandbox.segflow(&["run", pipeline.to_str().unwrap(), "--run-date", "2024-03-01", "--run-id", "bad", "--var", "fail=true"]);
    assert_eq!(bad.code, 1, "a failed run exits 1; stderr:\n{}", bad.stderr);
    assert!(bad.stderr.contains("stage \"risky\" failed"), "{}", bad.stderr);
    assert_eq!(files_under(&counts), vec!["_SUCCESS", "_manifest.json", "part-00000-good.parquet"]);
    assert_eq!(files_under(&risky), vec!["_SUCCESS", "_manifest.json", "part-00000-good.parquet"]);
    assert_eq!(std::fs::read(counts.join("part-00000-good.parquet")).unwrap(), before.0);
    assert_eq!(std::fs::read(risky.join("part-00000-good.parquet")).unwrap(), before.1);
    assert_eq!(files_under(&sandbox.path("out/_segflow/staging")), Vec::<String>::new());
    assert!(bad.stdout.is_empty(), "no summary for a failed run: {}", bad.stdout);
}

#[test]
fn a_variable_holding_sql_is_bound_as_a_value_never_spliced() {
    let sandbox = Sandbox::new();
    sandbox.write_tiny_transactions("data/transactions.parquet");
    let pipeline = sandbox.write(
        "pipeline.yaml",
        "name: injection\noutput_root: out\nvars:\n  label: harmless\ninputs:\n  transactions:\n    path: data/transactions.parquet\n\
         stages:\n  - name: labelled\n    kind: sql\n    inputs: [transactions]\n    query: SELECT ${label} AS label, COUNT(*) AS n FROM transactions WHERE invoice <> ${label}\n\
         outputs:\n  labelled: {partition_by: none}\n",
    );
    let ran = sandbox.segflow(&["run", pipeline.to_str().unwrap(), "--run-id", "x", "--var", "label='; DROP TABLE x; --"]);
    assert_eq!(ran.code, 0, "{}", ran.stderr);
    let table = read_table(&sandbox.path("out/labelled"), "n");
    assert!(table.contains("| '; DROP TABLE x; -- | 7 |"), "{table}");
}

#[test]
fn run_with_a_bad_command_line_exits_2() {
    let sandbox = Sandbox::new();
    let pipeline = tiny_pipeline(&sandbox);
    let ran = sandbox.segflow(&["run", pipeline.to_str().unwrap(), "--run-date", "yesterday"]);
    assert_eq!(ran.code, 2, "{}", ran.stderr);
    let ran = sandbox.segflow(&["run", pipeline.to_str().unwrap(), "--var", "as_of=soon"]);
    assert_eq!(ran.code, 2, "{}", ran.stderr);
    assert!(ran.stderr.contains("--var as_of=soon: `soon` is not a date (YYYY-MM-DD)"), "{}", ran.stderr);
}

/// The real UCI Online Retail data, read in place from ../shared beside the checkout.
#[test]
fn online_retail_features_cover_the_4372_customers_with_an_id() {
    let source = repo().join("../shared/data/online_retail/online_retail.parquet");
    assert!(source.exists(), "the shared data set is expected beside the checkout: {}", source.display());
    let out = tempfile::tempdir().unwrap();
    let ran = segflow_in(
        &repo(),
        &["run", "pipelines/online_retail.yaml", "--run-date", "2011-12-10", "--run-id", "retail", "--output-root", out.path().to_str().unwrap()],
    );
    assert_eq!(ran.code, 0, "{}", ran.stderr);
    assert_eq!(summary(&ran)["tables"][0]["rows"].as_u64(), Some(4_372));
    // Customer 12346 bought 74,215 units once and cancelled them the same day: one purchase
    // worth 77,183.60, one cancelled invoice of two.
    let table = read_table(&out.path().join("customer_features/run_date=2011-12-10"), "customer_id LIMIT 1");
    assert!(table.contains("| 12346       |"), "{table}");
    assert!(table.contains("| 1         | 77183.6  |"), "{table}");
    assert!(table.contains("| 0.5               |"), "{table}");
    // Every one of the 541,909 published lines is accounted for: the 135,080 without a
    // customer are rejected (the negative prices and non-cancellation negative quantities are
    // all among them), and 5,225 of the 5,268 exact duplicates remain among the attributable
    // lines and are removed.
    let quality = read_table(&out.path().join("data_quality/run_date=2011-12-10"), "metric");
    for (metric, value) in [("rejected:null:CustomerID", 135_080), ("rows_deduplicated", 5_225), ("rows_in", 541_909), ("rows_out", 401_604), ("rows_rejected", 135_080)] {
        assert!(quality.lines().any(|l| l.contains(&format!("| {metric} ")) && l.contains(&format!("| {value} "))), "{metric} = {value}\n{quality}");
    }
}

#[test]
fn an_input_can_be_a_glob_over_several_files() {
    let sandbox = Sandbox::new();
    sandbox.write_tiny_transactions("data/part-1.parquet");
    sandbox.write_tiny_transactions("data/part-2.parquet");
    sandbox.write_tiny_transactions("other/part-3.parquet");
    let pipeline = sandbox.write(
        "pipeline.yaml",
        "name: glob\noutput_root: out\ninputs:\n  transactions:\n    path: data/part-*.parquet\n\
         stages:\n  - name: lines\n    kind: sql\n    inputs: [transactions]\n    query: SELECT COUNT(*) AS n FROM transactions\n\
         outputs:\n  lines: {partition_by: none}\n",
    );
    let ran = sandbox.segflow(&["run", pipeline.to_str().unwrap(), "--run-id", "g"]);
    assert_eq!(ran.code, 0, "{}", ran.stderr);
    assert!(read_table(&sandbox.path("out/lines"), "n").contains("| 14 |"), "two files of 7 lines each");
}
