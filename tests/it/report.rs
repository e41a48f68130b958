//! Evaluation reports: byte-identical for the same input and seed, and `segflow report diff`
//! as a review or CI gate.

use crate::util::{Sandbox, query};

/// A churn pipeline over `data/customers.parquet` (label column `churned`), seed 7.
fn pipeline(sandbox: &Sandbox, data: &str) {
    sandbox.write(
        "pipeline.yaml",
        &format!(
            "name: report\nseed: 7\noutput_root: out\ninputs:\n  customers:\n    path: {data}\n\
             stages:\n  - name: churn\n    kind: churn\n    inputs: [customers]\n    id: customer_id\n    label: churned\n\
             \x20   features: {{ recency_days: {{}}, spend: {{}}, noise: {{}}, plan: {{ one_hot: true }} }}\n\
             \x20   forest: {{ n_trees: 40, min_samples_leaf: 5 }}\n\
             outputs:\n  evaluation: {{ partition_by: run_date }}\n"
        ),
    );
}

fn run(sandbox: &Sandbox, run_id: &str, root: &str) {
    let ran = sandbox.segflow(&["run", "pipeline.yaml", "--run-date", "2025-01-01", "--run-id", run_id, "--output-root", root]);
    assert_eq!(ran.code, 0, "{}", ran.stderr);
}

#[test]
fn the_same_input_and_seed_give_byte_identical_reports_and_diff_shows_only_what_moved() {
    let sandbox = Sandbox::new();
    crate::churn::write_planted(&sandbox.path("data/customers.parquet"), 1_000, 11);
    // The same customers with the label shuffled against the features: a worse model.
    let shuffled = "SELECT customer_id, recency_days, spend, noise, plan, \
                    COALESCE(LEAD(churned) OVER (ORDER BY (customer_id * 7919) % 1000), 0) AS churned FROM c";
    crate::churn::copy_with_sql(&sandbox.path("data/customers.parquet"), &sandbox.path("data/shuffled.parquet"), "c", shuffled);

    pipeline(&sandbox, "data/customers.parquet");
    run(&sandbox, "first", "a");
    run(&sandbox, "second", "b");
    pipeline(&sandbox, "data/shuffled.parquet");
    run(&sandbox, "third", "c");
    let reports = |root: &str| sandbox.path(&format!("{root}/reports/run_date=2025-01-01"));
    for file in ["evaluation.json", "evaluation.md"] {
        let (a, b) = (std::fs::read(reports("a").join(file)).unwrap(), std::fs::read(reports("b").join(file)).unwrap());
        assert!(a == b, "{file} differs between two runs of the same input and seed");
        assert!(!String::from_utf8_lossy(&a).contains("first"), "no run id inside {file}");
    }

    // Same input: nothing moved, exit 0.
    let same = sandbox.segflow(&["report", "diff", reports("a").to_str().unwrap(), reports("b").to_str().unwrap(), "--fail-on", "test.roc_auc < -0.01"]);
    assert_eq!(same.code, 0, "{}", same.stderr);
    assert!(same.stdout.starts_with("no metric changed\n("), "{}", same.stdout);

    // A worse model: the gate fails with exit 1 and names the breach; the table shows it.
    let worse = sandbox.segflow(&["report", "diff", reports("a").to_str().unwrap(), reports("c").to_str().unwrap(), "--fail-on", "random_forest.test.roc_auc < -0.05"]);
    assert_eq!(worse.code, 1, "{}\n{}", worse.stdout, worse.stderr);
    assert!(worse.stderr.contains("1 tolerance breached"), "{}", worse.stderr);
    assert!(worse.stderr.contains("random_forest.test.roc_auc < -0.05: churn random_forest test roc_auc changed by -0."), "{}", worse.stderr);
    let line = worse.stdout.lines().find(|l| l.starts_with("churn random_forest test roc_auc ")).expect("the table lists the ROC AUC");
    let cells: Vec<&str> = line.split_whitespace().collect();
    let (old, new, delta): (f64, f64, f64) = (cells[4].parse().unwrap(), cells[5].parse().unwrap(), cells[6].parse().unwrap());
    assert!((new - old - delta).abs() < 1e-5 && delta < -0.05, "{line}");
    assert!(!worse.stdout.contains('\x1b'), "no colour off a terminal");

    // The Parquet tables give the same diff as the text reports.
    let tables = |root: &str| sandbox.path(&format!("{root}/evaluation/run_date=2025-01-01"));
    let from_tables = sandbox.segflow(&["report", "diff", tables("a").to_str().unwrap(), tables("c").to_str().unwrap()]);
    let from_reports = sandbox.segflow(&["report", "diff", reports("a").to_str().unwrap(), reports("c").to_str().unwrap()]);
    assert_eq!(from_tables.code, 0, "{}", from_tables.stderr);
    assert_eq!(from_tables.stdout, from_reports.stdout);
    let rows = query(&[("e", &tables("a"))], "SELECT COUNT(*) FROM e");
    assert!(from_reports.stdout.lines().count() < rows[0][0].parse::<usize>().unwrap(), "only what moved is listed");

    // A rule that checks nothing, and a folder of several run dates, are usage errors.
    let typo = sandbox.segflow(&["report", "diff", reports("a").to_str().unwrap(), reports("c").to_str().unwrap(), "--fail-on", "test.roc_aux < 0"]);
    assert_eq!(typo.code, 2, "{}", typo.stderr);
    assert!(typo.stderr.contains("matches no metric"), "{}", typo.stderr);
    let whole = sandbox.segflow(&["report", "diff", sandbox.path("a/evaluation").to_str().unwrap(), reports("c").to_str().unwrap()]);
    assert_eq!(whole.code, 2, "{}", whole.stderr);
    assert!(whole.stderr.contains("holds several run dates; give one partition"), "{}", whole.stderr);
}

#[test]
fn every_run_writes_an_html_report_with_every_chart_and_it_can_be_rebuilt_byte_for_byte() {
    let sandbox = crate::churn::demo_sandbox(300);
    for date in ["2025-01-01", "2025-02-01"] {
        let ran = crate::util::segflow_in(sandbox.root(), &["run", "pipelines/demo.yaml", "--run-date", date, "--output-root", "out"]);
        assert_eq!(ran.code, 0, "{}", ran.stderr);
    }
    let page = std::fs::read_to_string(sandbox.path("out/reports/run_date=2025-02-01/report.html")).unwrap();
    for id in [
        "data-quality-transactions",
        "k-curve-segments",
        "silhouette-segments",
        "segment-sizes-segments",
        "centroids-segments",
        "migration-segments",
        "roc-churn",
        "pr-churn",
        "lift-churn",
        "gains-churn",
        "calibration-churn",
        "importance-churn",
        "confusion-churn",
        "churn-by-segment-churn",
    ] {
        let figure = format!("<figure class=\"chart\" id=\"{id}\">");
        let at = page.find(&figure).unwrap_or_else(|| panic!("no chart {id}"));
        assert!(page[at..].find("<svg").unwrap() < page[at..].find("</figure>").unwrap(), "{id} has no drawing");
    }
    // Self-contained: no script, nothing fetched.
    for banned in ["<script", "http://", "https://", "<link", "<img"] {
        let outside_svg_namespace = page.replace("http://www.w3.org/2000/svg", "");
        assert!(!outside_svg_namespace.contains(banned), "the report contains {banned}");
    }
    // The evaluation table's schema gained `previous_segment`: its manifests say version 2.
    let manifest: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(sandbox.path("out/evaluation/run_date=2025-02-01/_manifest.json")).unwrap()).unwrap();
    assert_eq!(manifest["schema_version"], 2);
    // The first run had no previous model: no migration chart, a note instead.
    let first = std::fs::read_to_string(sandbox.path("out/reports/run_date=2025-01-01/report.html")).unwrap();
    assert!(!first.contains("id=\"migration-segments\"") && first.contains("No migration"));

    let rebuilt = sandbox.segflow(&["report", "html", "out", "--run-date", "2025-02-01", "--output", "rebuilt.html"]);
    assert_eq!(rebuilt.code, 0, "{}", rebuilt.stderr);
    assert!(std::fs::read_to_string(sandbox.path("rebuilt.html")).unwrap() == page, "rebuilt from evaluation.json and run_results.json, the page is the same");
    let latest = sandbox.segflow(&["report", "html", "out", "--output", "latest.html"]);
    assert_eq!(latest.code, 0, "{}", latest.stderr);
    assert!(std::fs::read_to_string(sandbox.path("latest.html")).unwrap() == page, "the latest run date by default");
}
