//! The clean stage: types, null policies, rules, dedup, rejects with reasons, PII, and the
//! row accounting rows_in = rows_out + rows_rejected + rows_deduplicated.

use crate::util::{Col, Ran, Sandbox, files_under, query, read_table, write_parquet};

/// Nine people, each row chosen to exercise one rule (see the comments in the tests).
fn write_people(sandbox: &Sandbox) {
    write_parquet(
        &sandbox.path("data/people.parquet"),
        vec![
            Col::Str("id", vec![Some("1"), Some("2"), Some("3"), Some("x"), Some("5"), Some("6"), Some("6"), Some("7"), Some("1")]),
            Col::Str("email", vec![Some("ann@example.com"), Some("bob@example.com"), Some("cy@example.com"), Some("dee@example.com"), Some("eve@example.com"), Some("fay@example.com"), Some("fay@example.com"), Some("gus@example.com"), Some("ann@example.com")]),
            Col::Str("age", vec![Some("30"), None, Some("40"), Some("20"), Some("abc"), Some("50"), Some("50"), Some("60"), Some("30")]),
            Col::Float("score", vec![Some(1.0), Some(2.0), None, Some(4.0), Some(5.0), Some(-1.0), Some(-1.0), Some(3.0), Some(1.0)]),
            Col::Str("city", vec![Some("oslo"), None, Some("rome"), Some("oslo"), Some("rome"), Some("oslo"), Some("oslo"), None, Some("oslo")]),
            Col::Int("updated", vec![Some(1), Some(2), Some(3), Some(4), Some(5), Some(6), Some(6), Some(7), Some(1)]),
        ],
    );
}

fn pipeline(clean: &str) -> String {
    format!(
        "name: people\noutput_root: out\ninputs:\n  raw_people:\n    path: data/people.parquet\nstages:\n  - name: people\n    kind: clean\n    inputs: [raw_people]\n{clean}\
         outputs:\n  people: {{partition_by: none, sort_by: [id]}}\n  rejects: {{from: people_rejects, partition_by: none}}\n  data_quality: {{from: people_data_quality, partition_by: none}}\n"
    )
}

const POLICIES: &str = "    columns:
      id: { type: int64, nulls: reject }
      age: { type: int64, nulls: median }
      score: { type: float64, nulls: { fill: 0 } }
      city: { type: string, nulls: mode }
      email: { type: string, pii: hash }
    pii_key_env: PEOPLE_KEY
    rules:
      non_negative_score: score >= 0
    dedup:
      exact: true
";

fn run(sandbox: &Sandbox, clean: &str, env_key: bool) -> Ran {
    write_people(sandbox);
    sandbox.write("pipeline.yaml", &pipeline(clean));
    let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_segflow"));
    command.args(["run", "pipeline.yaml", "--run-id", "r1"]).current_dir(sandbox.root()).env_remove("SEGFLOW_LOG");
    if env_key {
        command.env("PEOPLE_KEY", "k3y");
    } else {
        command.env_remove("PEOPLE_KEY");
    }
    command.output().unwrap().into()
}

#[test]
fn types_null_policies_rules_and_exact_dedup_account_for_every_row() {
    let sandbox = Sandbox::new();
    let ran = run(&sandbox, POLICIES, true);
    assert_eq!(ran.code, 0, "{}", ran.stderr);
    // Kept: 1, 2 (age → 40, the median of the seven ages that cast: 20 30 30 40 50 50 60;
    // city → "oslo", the most frequent), 3 (score → 0),
    // 7 (city → "oslo"). Row 9 repeats row 1 exactly and is deduplicated.
    let people = read_table(&sandbox.path("out/people"), "id");
    assert_eq!(
        people.lines().filter(|l| l.starts_with("| ")).skip(1).map(|l| {
            let cells: Vec<&str> = l.split('|').map(str::trim).collect();
            format!("{} {} {} {} {}", cells[1], cells[3], cells[4], cells[5], cells[6])
        }).collect::<Vec<_>>(),
        vec!["1 30 1.0 oslo 1", "2 40 2.0 oslo 2", "3 40 0.0 rome 3", "7 60 3.0 oslo 7"],
        "{people}"
    );
    // Rejected, with the first reason that applies: a failed cast, then the rule.
    let rejects = read_table(&sandbox.path("out/rejects"), "_reject_reason, id");
    let reasons: Vec<String> = rejects.lines().filter(|l| l.starts_with("| ")).skip(1).map(|l| {
        let cells: Vec<&str> = l.split('|').map(str::trim).collect();
        format!("{} {} {}", cells[1], cells[7], cells[8])
    }).collect();
    assert_eq!(reasons, vec!["5 cast_failed:age people", "x cast_failed:id people", "6 non_negative_score people", "6 non_negative_score people"], "{rejects}");
    // Rejects keep the original values as read: the age that failed to cast is still "abc".
    assert!(rejects.contains("| abc "), "{rejects}");
    let quality = read_table(&sandbox.path("out/data_quality"), "metric");
    let metrics: Vec<String> = quality.lines().filter(|l| l.starts_with("| ")).skip(1).map(|l| {
        let cells: Vec<&str> = l.split('|').map(str::trim).collect();
        format!("{} {} = {}", cells[1], cells[3], cells[4])
    }).collect();
    assert_eq!(
        metrics,
        vec![
            "people rejected:cast_failed:age = 1",
            "people rejected:cast_failed:id = 1",
            "people rejected:non_negative_score = 2",
            "people rows_deduplicated = 1",
            "people rows_in = 9",
            "people rows_out = 4",
            "people rows_rejected = 4",
        ],
        "{quality}"
    );
}

#[test]
fn a_declared_pii_column_never_reaches_any_output_in_clear() {
    let sandbox = Sandbox::new();
    let ran = run(&sandbox, POLICIES, true);
    assert_eq!(ran.code, 0, "{}", ran.stderr);
    let files = files_under(&sandbox.path("out"));
    assert!(files.iter().any(|f| f.ends_with(".parquet")), "{files:?}");
    for file in files.iter().filter(|f| f.ends_with(".parquet")) {
        let bytes = std::fs::read(sandbox.path("out").join(file)).unwrap();
        for clear in ["ann@example.com", "fay@example.com", "@example.com"] {
            assert!(!bytes.windows(clear.len()).any(|w| w == clear.as_bytes()), "{clear} in clear in {file}");
        }
    }
    // Hashed with the key: HMAC-SHA256("k3y", "ann@example.com"), in both outputs.
    let people = read_table(&sandbox.path("out/people"), "id");
    assert!(people.contains(&segflow_hmac("k3y", "ann@example.com")), "{people}");
}

fn segflow_hmac(key: &str, value: &str) -> String {
    segflow::stage::clean::hmac_sha256(key.as_bytes(), value.as_bytes()).iter().map(|b| format!("{b:02x}")).collect()
}

#[test]
fn a_dropped_pii_column_is_removed_before_anything_is_written() {
    let sandbox = Sandbox::new();
    let ran = run(&sandbox, &POLICIES.replace("email: { type: string, pii: hash }", "email: { pii: drop }"), true);
    assert_eq!(ran.code, 0, "{}", ran.stderr);
    assert!(!read_table(&sandbox.path("out/people"), "id").contains("email"));
    assert!(!read_table(&sandbox.path("out/rejects"), "id").contains("email"));
}

#[test]
fn an_unset_pii_key_fails_the_run_clearly_and_writes_nothing() {
    let sandbox = Sandbox::new();
    let ran = run(&sandbox, POLICIES, false);
    assert_eq!(ran.code, 1, "{}", ran.stderr);
    assert!(ran.stderr.contains("the PII key variable `PEOPLE_KEY` is not set"), "{}", ran.stderr);
    assert!(!sandbox.path("out/people").exists());
}

#[test]
fn key_dedup_keeps_the_latest_or_the_earliest_row_per_key() {
    let sandbox = Sandbox::new();
    let latest = "    columns:\n      id: { type: int64, nulls: reject }\n    dedup:\n      key: [city]\n      keep: latest\n      order_by: updated\n";
    let ran = run(&sandbox, latest, true);
    assert_eq!(ran.code, 0, "{}", ran.stderr);
    let people = read_table(&sandbox.path("out/people"), "id");
    // Per city (oslo, rome, null), the row with the highest `updated`; the "x" id is rejected.
    assert!(people.contains("| 7  |") && people.contains("| 6  |") && people.contains("| 5  |"), "{people}");
    assert_eq!(people.lines().filter(|l| l.starts_with("| ")).count(), 1 + 3, "{people}");

    let earliest = latest.replace("keep: latest", "keep: earliest");
    let ran = run(&sandbox, &earliest, true);
    assert_eq!(ran.code, 0, "{}", ran.stderr);
    let people = read_table(&sandbox.path("out/people"), "id");
    assert!(people.contains("| 1  |") && people.contains("| 2  |") && people.contains("| 3  |"), "{people}");
}

#[test]
fn clean_stage_mistakes_are_reported_by_validate() {
    let sandbox = Sandbox::new();
    write_people(&sandbox);
    sandbox.write(
        "pipeline.yaml",
        &pipeline("    columns:\n      idd: { type: int64 }\n      age: { type: integer }\n    dedup:\n      key: [id]\n"),
    );
    let ran = sandbox.segflow(&["validate", "pipeline.yaml"]);
    assert_eq!(ran.code, 2, "{}", ran.stderr);
    assert!(ran.stderr.contains("unknown type `integer` for column `age`"), "{}", ran.stderr);
    assert!(ran.stderr.contains("dedup by `key` needs `order_by`"), "{}", ran.stderr);
}

const ONLY_IDS: &str = "    columns:\n      id: { type: int64, nulls: reject }\n      city: { type: string }\n      score: { type: float64 }\n    dedup:\n      exact: true\n";

#[test]
fn an_error_severity_data_test_fails_the_run_naming_test_table_column_count_and_keys() {
    let sandbox = Sandbox::new();
    // The clean rows are ids 1, 2, 3, 5, 6, 7 (x is rejected, the second 1 and 6 deduplicated);
    // ids 2 and 7 have no city.
    let ran = run(&sandbox, &format!("{ONLY_IDS}    tests:\n      - not_null: {{ column: city }}\n"), true);
    assert_eq!(ran.code, 1, "{}", ran.stderr);
    assert!(
        ran.stderr.contains("data test `not_null:city` on table `people` column `city`: 2 failing rows (sample keys: 2, 7)"),
        "{}",
        ran.stderr
    );
    assert!(!sandbox.path("out/people").exists(), "a failed run commits nothing");
}

#[test]
fn thresholds_and_warn_severity_record_outcomes_and_let_the_run_go_on() {
    let sandbox = Sandbox::new();
    let tests = "    tests:
      - not_null: { column: city, error_if: \">2\" }
      - accepted_values: { column: city, values: [oslo], severity: warn }
      - range: { column: score, min: 0, severity: warn }
      - unique: { columns: [city], severity: warn }
      - row_count: { min: 1, max: 10 }
";
    let ran = run(&sandbox, &format!("{ONLY_IDS}{tests}"), true);
    assert_eq!(ran.code, 0, "{}", ran.stderr);
    assert!(ran.stderr.contains("data test `accepted_values:city` on table `people` column `city`: 2 failing rows (sample keys: 3, 5)"), "{}", ran.stderr);
    assert!(ran.stderr.contains("data test `range:score` on table `people` column `score`: 1 failing rows (sample keys: 6)"), "{}", ran.stderr);
    let quality = read_table(&sandbox.path("out/data_quality"), "metric");
    for (metric, value) in [("test:not_null:city", 2), ("test:accepted_values:city", 2), ("test:range:score", 1), ("test:unique:city", 6), ("test:row_count", 0)] {
        assert!(quality.lines().any(|l| l.contains(&format!("| {metric} ")) && l.contains(&format!("| {value} "))), "{metric} = {value}\n{quality}");
    }
}

#[test]
fn row_count_fails_outside_its_bounds() {
    let sandbox = Sandbox::new();
    let ran = run(&sandbox, &format!("{ONLY_IDS}    tests:\n      - row_count: {{ min: 100 }}\n"), true);
    assert_eq!(ran.code, 1, "{}", ran.stderr);
    assert!(ran.stderr.contains("data test `row_count` on table `people`: 6 rows, expected at least 100"), "{}", ran.stderr);
}

mod properties {
    use proptest::prelude::*;

    use crate::util::{Col, Sandbox, read_table, write_parquet};

    /// A row of a random messy table: a key (maybe null), a value that may not cast, a time.
    fn row() -> impl Strategy<Value = (Option<i64>, Option<&'static str>, i64)> {
        (
            proptest::option::weighted(0.85, 0..6i64),
            proptest::option::weighted(0.9, prop_oneof![Just("1"), Just("2"), Just("3"), Just("x")]),
            0..4i64,
        )
    }

    const CLEAN: &str = "    columns:
      k: { type: int64, nulls: reject }
      v: { type: int64, nulls: { fill: 0 } }
    rules:
      positive_key: k >= 1
    dedup:
      exact: true
      key: [k]
      keep: latest
      order_by: t
";

    fn pipeline(input: &str, clean: &str) -> String {
        format!(
            "name: prop\noutput_root: out\ninputs:\n  raw:\n    path: {input}\nstages:\n  - name: cleaned\n    kind: clean\n    inputs: [raw]\n{clean}\
             outputs:\n  cleaned: {{partition_by: none}}\n  rejects: {{from: cleaned_rejects, partition_by: none}}\n  quality: {{from: cleaned_data_quality, partition_by: none}}\n"
        )
    }

    /// The data-quality table as (metric, value) pairs.
    fn metrics(sandbox: &Sandbox, root: &str) -> std::collections::BTreeMap<String, i64> {
        let table = read_table(&sandbox.path(&format!("{root}/quality")), "metric");
        table
            .lines()
            .filter(|l| l.starts_with("| "))
            .skip(1)
            .map(|l| {
                let cells: Vec<&str> = l.split('|').map(str::trim).collect();
                (cells[3].to_string(), cells[4].parse().unwrap())
            })
            .collect()
    }

    fn data_rows(table: &str) -> Vec<String> {
        table.lines().filter(|l| l.starts_with("| ")).skip(1).map(str::to_string).collect()
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 12, ..ProptestConfig::default() })]

        #[test]
        fn every_row_is_accounted_for_keys_are_unique_and_dedup_is_idempotent(rows in proptest::collection::vec(row(), 1..40)) {
            let sandbox = Sandbox::new();
            write_parquet(&sandbox.path("data/raw.parquet"), vec![
                Col::Int("k", rows.iter().map(|r| r.0).collect()),
                Col::Str("v", rows.iter().map(|r| r.1).collect()),
                Col::Int("t", rows.iter().map(|r| Some(r.2)).collect()),
            ]);
            sandbox.write("pipeline.yaml", &pipeline("data/raw.parquet", CLEAN));
            let ran = sandbox.segflow(&["run", "pipeline.yaml", "--run-id", "p1"]);
            prop_assert_eq!(ran.code, 0, "{}", ran.stderr);
            let m = metrics(&sandbox, "out");
            prop_assert_eq!(m["rows_in"], rows.len() as i64);
            prop_assert_eq!(m["rows_in"], m["rows_out"] + m["rows_rejected"] + m["rows_deduplicated"]);
            let cleaned = read_table(&sandbox.path("out/cleaned"), "k");
            let rejects = read_table(&sandbox.path("out/rejects"), "k");
            prop_assert_eq!(data_rows(&cleaned).len() as i64, m["rows_out"]);
            prop_assert_eq!(data_rows(&rejects).len() as i64, m["rows_rejected"]);
            // One row per key.
            let keys: Vec<String> = data_rows(&cleaned).iter().map(|l| l.split('|').nth(1).unwrap().trim().to_string()).collect();
            let mut unique = keys.clone();
            unique.sort();
            unique.dedup();
            prop_assert_eq!(unique.len(), keys.len(), "{}", cleaned);

            // Cleaning the clean output again changes nothing.
            let again = pipeline("out/cleaned", CLEAN).replace("output_root: out", "output_root: again");
            sandbox.write("again.yaml", &again);
            let ran = sandbox.segflow(&["run", "again.yaml", "--run-id", "p2"]);
            prop_assert_eq!(ran.code, 0, "{}", ran.stderr);
            let m2 = metrics(&sandbox, "again");
            prop_assert_eq!(m2["rows_deduplicated"], 0);
            prop_assert_eq!(m2["rows_rejected"], 0);
            prop_assert_eq!(read_table(&sandbox.path("again/cleaned"), "k"), cleaned);
        }
    }
}

#[test]
fn under_keep_a_value_that_fails_to_cast_becomes_null_instead_of_a_reject() {
    let sandbox = Sandbox::new();
    let keep = "    columns:\n      id: { type: int64, nulls: reject }\n      age: { type: int64, nulls: keep }\n";
    let ran = run(&sandbox, keep, true);
    assert_eq!(ran.code, 0, "{}", ran.stderr);
    let quality = read_table(&sandbox.path("out/data_quality"), "metric");
    // Only the id "x" is rejected; the age "abc" (id 5) is kept as null.
    assert!(quality.contains("| rejected:cast_failed:id |"), "{quality}");
    assert!(!quality.contains("cast_failed:age"), "{quality}");
    let people = read_table(&sandbox.path("out/people"), "id");
    let row5 = people.lines().find(|l| l.starts_with("| 5 ")).expect("id 5 is kept");
    assert_eq!(row5.split('|').nth(3).unwrap().trim(), "", "{people}");
}

/// 200,000 lines of 997 customers, four lines an order (two customers, two lines each):
/// six pairs in ten are exact duplicates, the other four differ in their time `t` only.
fn write_lines(sandbox: &Sandbox) {
    let lines = 0..200_000i64;
    let t = |j: i64| if j % 10 < 6 { (j / 2) % 3 } else { j % 3 };
    let values: Vec<String> = lines.clone().map(|j| format!("v{}", (j / 2) % 5)).collect();
    write_parquet(
        &sandbox.path("data/lines.parquet"),
        vec![
            Col::Int("customer", lines.clone().map(|j| Some((j / 2) % 997)).collect()),
            Col::Int("order", lines.clone().map(|j| Some(j / 4)).collect()),
            Col::Int("t", lines.map(|j| Some(t(j))).collect()),
            Col::Str("v", values.iter().map(|v| Some(v.as_str())).collect()),
        ],
    );
}

#[test]
fn deduplicating_a_bucket_at_a_time_keeps_the_rows_deduplicating_all_at_once_keeps() {
    let sandbox = Sandbox::new();
    write_lines(&sandbox);
    // Duplicates share a bucket of customers when the dedup compares the customer: exact dedup
    // and a key holding it are deduplicated within the buckets, a key without it is not.
    for (dedup, within_buckets) in [
        ("exact: true", true),
        ("key: [customer, order]\n      keep: latest\n      order_by: t", true),
        ("key: [order]\n      keep: earliest\n      order_by: t", false),
    ] {
        let pipeline = format!(
            "name: lines\noutput_root: out\ninputs:\n  raw:\n    path: data/lines.parquet\nstages:\n  - name: lines\n    kind: clean\n    inputs: [raw]\n    dedup:\n      {dedup}\n    bucket_by: customer\n\
             outputs:\n  lines: {{partition_by: none}}\n  quality: {{from: lines_data_quality, partition_by: none}}\n"
        );
        sandbox.write("pipeline.yaml", &pipeline);
        let mut tables = Vec::new();
        // Whole: held in memory. Buckets: 200,000 lines of about 40 bytes are more than an
        // eighth of 48 MiB, so they go to disk in 10 buckets of 20,000.
        for (root, memory_limit, bucket_rows) in [("whole", "4GiB", "2000000"), ("buckets", "48MiB", "20000")] {
            let ran = sandbox.segflow(&["-v", "run", "pipeline.yaml", "--run-id", root, "--output-root", root, "--threads", "2", "--memory-limit", memory_limit, "--bucket-rows", bucket_rows]);
            assert_eq!(ran.code, 0, "{dedup}: {}", ran.stderr);
            assert_eq!(ran.stderr.contains("rows written in buckets"), root == "buckets", "{dedup}, {root}: {}", ran.stderr);
            assert_eq!(ran.stderr.contains("valid rows deduplicated a bucket at a time"), root == "buckets" && within_buckets, "{dedup}, {root}: {}", ran.stderr);
            let lines = query(&[("l", &sandbox.path(&format!("{root}/lines")))], "SELECT * FROM l ORDER BY customer, \"order\", t, v");
            let quality = query(&[("q", &sandbox.path(&format!("{root}/quality")))], "SELECT metric, value FROM q ORDER BY metric");
            tables.push((lines, quality));
        }
        assert!(tables[0].0.len() < 200_000 && tables[0].0.len() > 20_000, "{dedup}: {} rows kept", tables[0].0.len());
        assert_eq!(tables[0], tables[1], "{dedup}: bucketed and whole differ");
    }
}
