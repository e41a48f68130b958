//! The churn stage: a planted signal learnt and explained; honest splits and thresholds; no
//! feature computed after the observation date; the saved model and `segflow score`;
//! determinism; mistakes reported with their place; Telco against scikit-learn.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use datafusion::arrow::array::RecordBatch;
use datafusion::prelude::{ParquetReadOptions, SessionContext};
use parquet::arrow::ArrowWriter;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::util::{Col, Sandbox, files_under, query, repo, segflow_in, summary, write_parquet};

/// Customers whose churn depends on recency (strongly) and on plan (a little); `noise` is
/// unrelated to churn. Ids 1..=n.
pub fn write_planted(path: &Path, n: usize, seed: u64) {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let (mut ids, mut recency, mut spend, mut noise, mut plan, mut churned) = (vec![], vec![], vec![], vec![], vec![], vec![]);
    for i in 0..n {
        let r: f64 = rng.random::<f64>() * 365.0;
        let p = if rng.random::<f64>() < 0.5 { "monthly" } else { "yearly" };
        let risk = r / 365.0 * 0.8 + if p == "monthly" { 0.15 } else { 0.0 };
        ids.push(Some(i as i64 + 1));
        recency.push(Some(r));
        // One customer in twenty has no spend recorded: kept missing, the trees route it.
        spend.push((i % 20 != 7).then(|| rng.random::<f64>() * 500.0));
        noise.push(Some(rng.random::<f64>()));
        plan.push(Some(p));
        churned.push(Some(i64::from(rng.random::<f64>() < risk)));
    }
    write_parquet(
        path,
        vec![
            Col::Int("customer_id", ids),
            Col::Float("recency_days", recency),
            Col::Float("spend", spend),
            Col::Float("noise", noise),
            Col::Str("plan", plan),
            Col::Int("churned", churned),
        ],
    );
}

const OUTPUTS: &str = "outputs:
  churn_scores: { from: churn, partition_by: run_date, sort_by: [customer_id] }
  churn_by_segment: { from: churn_by_segment, partition_by: run_date }
  evaluation: { partition_by: run_date }
";

/// A churn pipeline over `data/customers.parquet`; `extra` adds stage keys.
fn pipeline(sandbox: &Sandbox, extra: &str) -> PathBuf {
    sandbox.write(
        "pipeline.yaml",
        &format!(
            "name: churn\nseed: 7\noutput_root: out\ninputs:\n  customers:\n    path: data/customers.parquet\n\
             stages:\n  - name: churn\n    kind: churn\n    inputs: [customers]\n    id: customer_id\n    label: churned\n    features:\n\
             \x20     recency_days: {{}}\n\
             \x20     spend: {{}}\n\
             \x20     noise: {{}}\n\
             \x20     plan: {{ one_hot: true }}\n\
             \x20   forest: {{ n_trees: 60, min_samples_leaf: 5 }}\n\
             \x20   baseline: {{ max_depth: 4 }}\n{extra}{OUTPUTS}"
        ),
    )
}

fn run(sandbox: &Sandbox, date: &str, extra_args: &[&str]) {
    let mut args = vec!["run", "pipeline.yaml", "--run-date", date, "--run-id", date];
    args.extend_from_slice(extra_args);
    let ran = sandbox.segflow(&args);
    assert_eq!(ran.code, 0, "segflow run failed:\n{}", ran.stderr);
}

fn table(sandbox: &Sandbox, name: &str, date: &str) -> PathBuf {
    sandbox.path(&format!("out/{name}/run_date={date}"))
}

/// One value of the evaluation table (model, split, metric, no keys).
fn metric(sandbox: &Sandbox, date: &str, model: &str, split: &str, name: &str) -> f64 {
    let rows = query(
        &[("e", &table(sandbox, "evaluation", date))],
        &format!(
            "SELECT value FROM e WHERE stage = 'churn' AND model = '{model}' AND split = '{split}' AND metric = '{name}' \
             AND decile IS NULL AND bin IS NULL AND feature IS NULL AND segment IS NULL"
        ),
    );
    assert_eq!(rows.len(), 1, "{model}/{split}/{name}: {rows:?}");
    rows[0][0].parse().unwrap_or_else(|_| panic!("{model}/{split}/{name} is {:?}", rows[0][0]))
}

#[test]
fn a_planted_churn_signal_is_learnt_evaluated_and_explained_for_every_customer() {
    let sandbox = Sandbox::new();
    write_planted(&sandbox.path("data/customers.parquet"), 2_000, 1);
    pipeline(&sandbox, "    split: { method: stratified, test_size: 0.25 }\n    cross_validation: 3\n");
    run(&sandbox, "2025-01-01", &[]);

    // Every customer scored once, a quarter held out, stratified.
    let scores = table(&sandbox, "churn_scores", "2025-01-01");
    let rows = query(&[("s", &scores)], "SELECT split, COUNT(*), SUM(CAST(churned AS INT)) FROM s GROUP BY split ORDER BY split");
    let count = |split: &str| rows.iter().find(|r| r[0] == split).map(|r| (r[1].parse::<f64>().unwrap(), r[2].parse::<f64>().unwrap())).unwrap();
    let ((test, test_churners), (train, train_churners)) = (count("test"), count("train"));
    assert_eq!(test + train, 2_000.0);
    assert_eq!(test, 500.0, "test_size 0.25 of 2,000");
    assert!((test_churners / test - train_churners / train).abs() < 0.01, "stratified: {rows:?}");

    // The forest learns the signal, and beats a depth-4 tree or at least matches it.
    let forest_auc = metric(&sandbox, "2025-01-01", "random_forest", "test", "roc_auc");
    let tree_auc = metric(&sandbox, "2025-01-01", "decision_tree", "test", "roc_auc");
    assert!(forest_auc > 0.75, "test ROC AUC {forest_auc}");
    assert!(tree_auc > 0.6 && tree_auc < forest_auc + 0.02, "tree {tree_auc}, forest {forest_auc}");
    // In-sample AUC is higher than held-out: train metrics say what was memorised.
    assert!(metric(&sandbox, "2025-01-01", "random_forest", "train", "roc_auc") > forest_auc);
    assert!(metric(&sandbox, "2025-01-01", "random_forest", "oob", "oob_score") > 0.6);
    assert!(metric(&sandbox, "2025-01-01", "random_forest", "cv_mean", "roc_auc") > 0.7);

    // The decision is `probability >= threshold`, the threshold the evaluation records.
    let threshold = metric(&sandbox, "2025-01-01", "random_forest", "train", "threshold");
    let wrong = query(&[("s", &scores)], &format!("SELECT COUNT(*) FROM s WHERE predicted_churn <> (churn_probability >= {threshold})"));
    assert_eq!(wrong[0][0], "0");

    // Risk decile 1 is the riskiest tenth, and holds the most churners.
    let deciles = query(&[("s", &scores)], "SELECT risk_decile, COUNT(*), MIN(churn_probability), MAX(churn_probability), AVG(CAST(churned AS DOUBLE)) FROM s GROUP BY risk_decile ORDER BY risk_decile");
    assert_eq!(deciles.len(), 10);
    assert!(deciles.iter().all(|d| d[1] == "200"), "{deciles:?}");
    for pair in deciles.windows(2) {
        assert!(pair[0][2].parse::<f64>().unwrap() >= pair[1][3].parse::<f64>().unwrap(), "deciles overlap: {pair:?}");
    }
    assert!(deciles[0][4].parse::<f64>().unwrap() > deciles[9][4].parse::<f64>().unwrap() + 0.4, "{deciles:?}");

    // Reasons: recency explains most scores; the unrelated column rarely comes first.
    let top = query(&[("s", &scores)], "SELECT top_feature_1, COUNT(*) FROM s GROUP BY top_feature_1 ORDER BY COUNT(*) DESC");
    assert_eq!(top[0][0], "recency_days", "{top:?}");
    let evaluation = table(&sandbox, "evaluation", "2025-01-01");
    let permutation = query(&[("e", &evaluation)], "SELECT feature, value FROM e WHERE metric = 'permutation_importance' ORDER BY value DESC");
    assert_eq!(permutation.len(), 4, "one per declared feature (plan's two one-hot columns together): {permutation:?}");
    assert_eq!(permutation[0][0], "recency_days");
    let impurity = query(&[("e", &evaluation)], "SELECT feature FROM e WHERE metric = 'impurity_importance' ORDER BY feature");
    assert_eq!(impurity, vec![vec!["noise"], vec!["plan=monthly"], vec!["plan=yearly"], vec!["recency_days"], vec!["spend"]]);

    // Lift and calibration tables are complete for both models and both splits.
    let shape = query(
        &[("e", &evaluation)],
        "SELECT model, split, COUNT(DISTINCT decile), COUNT(DISTINCT CASE WHEN metric = 'mean_probability' THEN bin END), COUNT(CASE WHEN metric = 'roc_tpr' THEN bin END) \
         FROM e WHERE stage = 'churn' AND split IN ('train', 'test') GROUP BY model, split ORDER BY model, split",
    );
    assert_eq!(shape.len(), 4);
    assert!(shape.iter().all(|r| r[2] == "10" && r[3] == "10" && r[4] == "101"), "{shape:?}");
}

#[test]
fn a_time_split_tests_on_the_later_customers() {
    let sandbox = Sandbox::new();
    write_planted(&sandbox.path("data/base.parquet"), 800, 2);
    // Customers 1..=600 signed up in 2023, the rest in 2024.
    let ctx_sql = "SELECT b.*, CASE WHEN customer_id <= 600 THEN DATE '2023-06-01' ELSE DATE '2024-03-01' END AS signup_date FROM b";
    copy_with_sql(&sandbox.path("data/base.parquet"), &sandbox.path("data/customers.parquet"), "b", ctx_sql);
    pipeline(&sandbox, "    split: { method: time, column: signup_date, test_from: 2024-01-01 }\n");
    run(&sandbox, "2025-01-01", &[]);
    let rows = query(&[("s", &table(&sandbox, "churn_scores", "2025-01-01"))], "SELECT split, MIN(customer_id), MAX(customer_id), COUNT(*) FROM s GROUP BY split ORDER BY split");
    assert_eq!(rows, vec![vec!["test", "601", "800", "200"], vec!["train", "1", "600", "600"]]);
}

#[test]
fn score_applies_the_saved_model_to_new_customers_without_refitting() {
    let sandbox = Sandbox::new();
    write_planted(&sandbox.path("data/customers.parquet"), 600, 3);
    pipeline(&sandbox, "");
    run(&sandbox, "2025-01-01", &[]);
    let model = sandbox.path("out/models/churn/run_date=2025-01-01");
    assert_eq!(files_under(&model), vec!["_SUCCESS", "_manifest.json", "model.json", "trees.parquet"]);
    let saved: serde_json::Value = serde_json::from_slice(&std::fs::read(model.join("model.json")).unwrap()).unwrap();
    assert_eq!(saved["format"], "segflow.churn_model");
    assert_eq!(saved["threshold_policy"]["chosen_on"], "out-of-bag training predictions");

    // The same customers, scored from the saved model, get the run's probabilities exactly.
    let ran = sandbox.segflow(&["score", "out/models/churn/run_date=2025-01-01", "data/customers.parquet", "--output", "scored/churn"]);
    assert_eq!(ran.code, 0, "{}", ran.stderr);
    assert_eq!(summary(&ran)["rows"], 600);
    assert!(sandbox.path("scored/churn/_SUCCESS").exists());
    let differ = query(
        &[("a", &table(&sandbox, "churn_scores", "2025-01-01")), ("b", &sandbox.path("scored/churn"))],
        "SELECT COUNT(*) FROM a JOIN b USING (customer_id) WHERE a.churn_probability <> b.churn_probability OR a.risk_decile <> b.risk_decile \
         OR a.predicted_churn <> b.predicted_churn OR (a.top_feature_1 IS DISTINCT FROM b.top_feature_1) OR b.split <> 'score'",
    );
    assert_eq!(differ[0][0], "0");

    // New data without a feature the model needs: exit 2, naming it.
    write_parquet(&sandbox.path("data/new.parquet"), vec![Col::Int("customer_id", vec![Some(1)]), Col::Float("recency_days", vec![Some(3.0)])]);
    let ran = sandbox.segflow(&["score", "out/models/churn/run_date=2025-01-01", "data/new.parquet", "--output", "scored/new"]);
    assert_eq!(ran.code, 2, "{}", ran.stderr);
    assert!(ran.stderr.contains("lacks columns the model needs: `spend`, `noise`, `plan`"), "{}", ran.stderr);
    assert!(!sandbox.path("scored/new").exists(), "nothing written");
    // A model whose trees file does not match its description is refused, not half-used.
    let broken = sandbox.path("broken");
    std::fs::create_dir_all(&broken).unwrap();
    std::fs::copy(model.join("model.json"), broken.join("model.json")).unwrap();
    std::fs::write(broken.join("trees.parquet"), b"not parquet").unwrap();
    let ran = sandbox.segflow(&["score", "broken", "data/customers.parquet", "--output", "scored/broken"]);
    assert_eq!(ran.code, 2, "{}", ran.stderr);
    assert!(ran.stderr.contains("trees.parquet: not a trees file"), "{}", ran.stderr);
    // A segment model is not a churn model.
    let ran = sandbox.segflow(&["score", "data/customers.parquet", "data/customers.parquet", "--output", "scored/x"]);
    assert_eq!(ran.code, 2, "{}", ran.stderr);
}

#[test]
fn the_same_input_and_seed_give_byte_identical_scores_reports_and_model_on_1_or_2_threads() {
    let sandbox = Sandbox::new();
    write_planted(&sandbox.path("data/customers.parquet"), 700, 4);
    pipeline(&sandbox, "");
    run(&sandbox, "2025-01-01", &["--threads", "1", "--output-root", "one"]);
    run(&sandbox, "2025-01-01", &["--threads", "2", "--output-root", "two"]);
    let (one, two) = (sandbox.path("one"), sandbox.path("two"));
    let files = files_under(&one);
    assert_eq!(files, files_under(&two));
    // Run records (_segflow/) and manifests hold timings; everything else must be identical.
    for file in files.iter().filter(|f| !f.ends_with("_manifest.json") && !f.starts_with("_segflow")) {
        assert!(std::fs::read(one.join(file)).unwrap() == std::fs::read(two.join(file)).unwrap(), "{file} differs between 1 and 2 threads");
    }
}

#[test]
fn churn_stage_mistakes_are_reported_with_their_place() {
    let sandbox = Sandbox::new();
    write_planted(&sandbox.path("data/customers.parquet"), 50, 5);
    let cases: &[(&[(&str, &str)], &str)] = &[
        (&[("label: churned", "label: { column: churned, window_days: 30 }")], "`label.window_days` belongs to a label defined on transactions"),
        (&[("      noise: {}", "      churned: {}")], "`churned` is the label: a model that reads its own answer learns nothing"),
        (&[("label: churned", "label: { colum: churned }")], "unknown field `colum`"),
        (&[("label: churned", "label: plan"), ("      plan: { one_hot: true }\n", "")], "label `plan` of `customers` is text; expected a boolean or 0/1"),
        (&[("id: customer_id", "id: customer_id\n    threshold: { policy: fixed }")], "`policy: fixed` takes `value`"),
        (&[("id: customer_id", "id: customer_id\n    score: others")], "`score` is `others`, which is not among the stage's inputs"),
        (&[("id: customer_id", "id: customer_id\n    split: { method: time, column: recency_days, test_from: 2024-01-01 }")], "split column `recency_days` of `customers` is a float (Float64); expected a date or a timestamp"),
        (&[("forest: { n_trees: 60", "forest: { n_trees: 60, max_features: 3")], "`max_features` is `sqrt`, `log2`, `all` or a fraction"),
        (&[("label: churned", "label: { transactions: customers, time: recency_days, observation_date: someday, window_days: 30 }")], "`observation_date` is a date (YYYY-MM-DD) or a pipeline variable holding one; `someday` is neither"),
    ];
    for (edits, expected) in cases {
        let mut text = std::fs::read_to_string(pipeline(&sandbox, "")).unwrap();
        for (from, to) in *edits {
            assert!(text.contains(from), "fixture lacks {from}");
            text = text.replacen(from, to, 1);
        }
        sandbox.write("pipeline.yaml", &text);
        let ran = sandbox.segflow(&["validate", "pipeline.yaml"]);
        assert_eq!(ran.code, 2, "{edits:?}: {}", ran.stderr);
        assert!(ran.stderr.contains(expected), "{edits:?}: expected {expected:?} in\n{}", ran.stderr);
        assert!(ran.stderr.contains("pipeline.yaml:"), "{edits:?}: no place in\n{}", ran.stderr);
        assert!(!ran.stderr.contains("which no stage produces"), "{edits:?}: a broken stage's outputs are not reported again:\n{}", ran.stderr);
    }

    // Data problems surface at run time, exit 1, and leave no table behind.
    let all_stayed = "SELECT customer_id, recency_days, spend, noise, plan, CAST(0 AS BIGINT) AS churned FROM c";
    copy_with_sql(&sandbox.path("data/customers.parquet"), &sandbox.path("data/one_class.parquet"), "c", all_stayed);
    let text = std::fs::read_to_string(pipeline(&sandbox, "")).unwrap();
    sandbox.write("pipeline.yaml", &text.replace("data/customers.parquet", "data/one_class.parquet"));
    let ran = sandbox.segflow(&["run", "pipeline.yaml", "--run-date", "2025-01-01"]);
    assert_eq!(ran.code, 1, "{}", ran.stderr);
    assert!(ran.stderr.contains("every one of its 50 customers has churn label 0"), "{}", ran.stderr);
    assert!(!sandbox.path("out/churn_scores").exists());
}

/// Copies a Parquet file through a SQL query over it (registered as `name`).
pub fn copy_with_sql(from: &Path, to: &Path, name: &str, sql: &str) {
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let (schema, batches): (datafusion::arrow::datatypes::SchemaRef, Vec<RecordBatch>) = runtime.block_on(async {
        let ctx = SessionContext::new();
        ctx.register_parquet(name, from.to_str().unwrap(), ParquetReadOptions::default()).await.unwrap();
        let frame = ctx.sql(sql).await.unwrap();
        let schema = frame.schema().inner().clone();
        (schema, frame.collect().await.unwrap())
    });
    std::fs::create_dir_all(to.parent().unwrap()).unwrap();
    let mut writer = ArrowWriter::try_new(std::fs::File::create(to).unwrap(), Arc::clone(&schema), None).unwrap();
    for batch in &batches {
        writer.write(batch).unwrap();
    }
    writer.close().unwrap();
}

/// The demo pipeline, its SQL and freshly generated demo data in a sandbox.
pub fn demo_sandbox(customers: usize) -> Sandbox {
    let sandbox = Sandbox::new();
    for file in ["pipelines/demo.yaml", "sql/purchase_features.sql", "sql/demo_customer_features.sql"] {
        sandbox.write(file, &std::fs::read_to_string(repo().join(file)).unwrap());
    }
    let ran = sandbox.segflow(&["demo-data", "data/demo", "--customers", &customers.to_string()]);
    assert_eq!(ran.code, 0, "{}", ran.stderr);
    sandbox
}

#[test]
fn no_churn_feature_sees_a_transaction_on_or_after_the_observation_date() {
    // Two shops with the same past and different futures: every transaction from the
    // observation date (2024-10-01 in pipelines/demo.yaml) on is changed in the second —
    // quantities and prices, and every third customer's later lines removed outright.
    let same_past = demo_sandbox(400);
    let other_future = demo_sandbox(400);
    let change_future = "SELECT invoice, stock_code, customer_id, invoice_ts, category, \
        CASE WHEN invoice_ts >= TIMESTAMP '2024-10-01' THEN quantity * 3 ELSE quantity END AS quantity, \
        CASE WHEN invoice_ts >= TIMESTAMP '2024-10-01' THEN unit_price + 1.5 ELSE unit_price END AS unit_price \
        FROM t WHERE invoice_ts < TIMESTAMP '2024-10-01' OR customer_id IS NULL OR customer_id % 3 <> 0";
    let mut changed_files = 0;
    for file in files_under(&same_past.path("data/demo/transactions")) {
        let from = same_past.path(&format!("data/demo/transactions/{file}"));
        copy_with_sql(&from, &other_future.path(&format!("data/demo/transactions/{file}")), "t", change_future);
        changed_files += 1;
    }
    assert_eq!(changed_files, 2, "one file per year");

    for sandbox in [&same_past, &other_future] {
        let ran = segflow_in(sandbox.root(), &["run", "pipelines/demo.yaml", "--run-date", "2025-01-01", "--output-root", "out"]);
        assert_eq!(ran.code, 0, "{}", ran.stderr);
    }
    let features = |s: &Sandbox, table: &str| query(&[("t", &s.path(&format!("out/{table}/run_date=2025-01-01")))], "SELECT * FROM t ORDER BY customer_id");
    let (before, after) = (features(&same_past, "churn_training_features"), features(&other_future, "churn_training_features"));
    assert_eq!(before.len(), after.len(), "the customers known at the observation date changed");
    // Equal values; sums of floats may differ in the last bits with the engine's partitioning.
    let same = |a: &str, b: &str| a == b || matches!((a.parse::<f64>(), b.parse::<f64>()), (Ok(x), Ok(y)) if (x - y).abs() <= 1e-9 * x.abs().max(1.0));
    for (a, b) in before.iter().zip(&after) {
        assert!(a.iter().zip(b).all(|(x, y)| same(x, y)), "customer {} has other features when later transactions change:\n{a:?}\n{b:?}", a[0]);
    }
    // The change was real: today's features, and so the labels and scores, did move.
    assert!(features(&same_past, "customer_features") != features(&other_future, "customer_features"));
    let churners = |s: &Sandbox| query(&[("e", &s.path("out/evaluation/run_date=2025-01-01"))], "SELECT value FROM e WHERE model = 'random_forest' AND split = 'train' AND metric = 'churners'");
    assert_ne!(churners(&same_past), churners(&other_future), "removing later lines makes more churners");
}

#[test]
fn the_demo_run_scores_every_customer_and_reports_churn_per_segment() {
    let sandbox = demo_sandbox(400);
    let ran = segflow_in(sandbox.root(), &["run", "pipelines/demo.yaml", "--run-date", "2025-01-01", "--output-root", "out"]);
    assert_eq!(ran.code, 0, "{}", ran.stderr);
    let out = |t: &str| sandbox.path(&format!("out/{t}/run_date=2025-01-01"));
    let counts = query(
        &[("s", &out("churn_scores")), ("f", &out("customer_features")), ("b", &out("churn_by_segment"))],
        "SELECT (SELECT COUNT(*) FROM s) AS scored, (SELECT COUNT(*) FROM f) AS customers, (SELECT SUM(customers) FROM b) AS in_segments, (SELECT COUNT(*) FROM s WHERE split <> 'score') AS not_scored",
    );
    assert_eq!(counts[0][0], counts[0][1], "every current customer scored");
    assert_eq!(counts[0][0], counts[0][2], "every scored customer is in a segment");
    assert_eq!(counts[0][3], "0");
    assert!(metric_of(&out("evaluation"), "random_forest", "test", "roc_auc") > 0.75);
    // Each segment's row is what its customers' scores add up to.
    let per_segment = |sql: &str| query(&[("s", &out("churn_scores")), ("g", &out("customer_segments")), ("b", &out("churn_by_segment"))], sql);
    let reported = per_segment("SELECT segment, customers, expected_churners, mean_churn_probability, predicted_churners, labelled_customers, observed_churn_rate FROM b ORDER BY segment");
    let recomputed = per_segment(
        "SELECT g.segment, COUNT(*), SUM(s.churn_probability), AVG(s.churn_probability), SUM(CAST(s.predicted_churn AS BIGINT)), COUNT(s.churned), AVG(CAST(s.churned AS DOUBLE)) \
         FROM s JOIN g ON g.customer_id = s.customer_id GROUP BY g.segment ORDER BY g.segment",
    );
    assert_eq!(reported.len(), recomputed.len());
    assert!(reported.len() >= 2, "{reported:?}");
    for (ours, theirs) in reported.iter().zip(&recomputed) {
        for (column, (a, b)) in ours.iter().zip(theirs).enumerate() {
            match (a.parse::<f64>(), b.parse::<f64>()) {
                (Ok(a), Ok(b)) => assert!((a - b).abs() <= 1e-9 * b.abs().max(1.0), "column {column}: {ours:?} against {theirs:?}"),
                _ => assert_eq!(a, b, "column {column}: {ours:?} against {theirs:?}"),
            }
        }
    }
}

fn metric_of(evaluation: &Path, model: &str, split: &str, name: &str) -> f64 {
    let rows = query(&[("e", evaluation)], &format!("SELECT value FROM e WHERE stage = 'churn' AND model = '{model}' AND split = '{split}' AND metric = '{name}' AND feature IS NULL"));
    rows[0][0].parse().unwrap()
}

#[test]
fn telco_test_roc_auc_is_within_0_005_of_scikit_learn_on_the_same_split() {
    // tests/golden/telco_churn_sklearn.json: scikit-learn's forest with the same settings on
    // the split segflow wrote (benches/telco_churn_golden.sh regenerates it).
    let golden: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(repo().join("tests/golden/telco_churn_sklearn.json")).unwrap()).unwrap();
    let data = repo().join("../shared/data/telco_customer_churn/telco_customer_churn.parquet");
    assert!(data.exists(), "the Telco sample is expected at {}", data.display());
    let sandbox = Sandbox::new();
    let ran = segflow_in(&repo(), &["run", "pipelines/telco_churn.yaml", "--run-date", "2026-11-24", "--output-root", sandbox.path("out").to_str().unwrap()]);
    assert_eq!(ran.code, 0, "{}", ran.stderr);

    // The golden value is for this split: the same held-out customers.
    let test_ids = query(&[("s", &sandbox.path("out/churn_scores/run_date=2026-11-24"))], "SELECT \"customerID\" FROM s WHERE split = 'test' ORDER BY \"customerID\"");
    let joined = test_ids.iter().map(|r| r[0].as_str()).collect::<Vec<_>>().join("\n");
    use sha2::Digest;
    let digest: String = sha2::Sha256::digest(joined.as_bytes()).iter().map(|b| format!("{b:02x}")).collect();
    assert_eq!(digest, golden["test_ids_sha256"].as_str().unwrap(), "the split changed: rerun benches/telco_churn_golden.sh");

    let ours = metric_of(&sandbox.path("out/evaluation/run_date=2026-11-24"), "random_forest", "test", "roc_auc");
    let sklearn = golden["test_roc_auc_mean"].as_f64().unwrap();
    assert!((ours - sklearn).abs() <= 0.005, "segflow {ours:.4} vs scikit-learn {sklearn:.4}");
}
