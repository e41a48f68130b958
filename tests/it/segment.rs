//! The segment stage: planted groups found, profiled and ranked; ids that keep their meaning
//! across runs; migration; the saved model and `segflow assign`; determinism.

use std::path::{Path, PathBuf};

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::util::{Col, Sandbox, files_under, query, write_parquet};

/// One planted group: (name, customers, mean recency, mean frequency, mean monetary).
const CHAMPIONS: (&str, usize, f64, f64, f64) = ("champions", 120, 5.0, 20.0, 2_000.0);
const REGULARS: (&str, usize, f64, f64, f64) = ("regulars", 150, 40.0, 6.0, 400.0);
const LAPSED: (&str, usize, f64, f64, f64) = ("lapsed", 130, 300.0, 1.5, 60.0);

/// A customer of the fixture: id, planted group, features.
#[derive(Clone)]
struct Customer {
    id: i64,
    group: &'static str,
    recency: f64,
    frequency: f64,
    monetary: f64,
    region: &'static str,
}

/// Three well-separated groups, ids by group: champions 1.., regulars 1001.., lapsed 2001...
fn planted(seed: u64) -> Vec<Customer> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut out = Vec::new();
    for (g, (name, n, recency, frequency, monetary)) in [CHAMPIONS, REGULARS, LAPSED].into_iter().enumerate() {
        for i in 0..n {
            let jitter = |rng: &mut ChaCha8Rng, mean: f64| mean * (1.0 + 0.1 * (rng.random::<f64>() * 2.0 - 1.0));
            out.push(Customer {
                id: (g as i64) * 1000 + i as i64 + 1,
                group: name,
                recency: jitter(&mut rng, recency),
                frequency: jitter(&mut rng, frequency),
                monetary: jitter(&mut rng, monetary),
                region: ["north", "south", "west"][i % 3],
            });
        }
    }
    out
}

fn write_features(path: &Path, customers: &[Customer]) {
    write_parquet(
        path,
        vec![
            Col::Int("customer_id", customers.iter().map(|c| Some(c.id)).collect()),
            Col::Float("recency_days", customers.iter().map(|c| Some(c.recency)).collect()),
            Col::Float("frequency", customers.iter().map(|c| Some(c.frequency)).collect()),
            Col::Float("monetary", customers.iter().map(|c| Some(c.monetary)).collect()),
            Col::Str("region", customers.iter().map(|c| Some(c.region)).collect()),
        ],
    );
}

const OUTPUTS: &str = "outputs:
  customer_segments: { from: segments, partition_by: run_date, sort_by: [customer_id] }
  segment_profiles: { from: segments_profiles, partition_by: run_date, sort_by: [rank] }
  segment_centroids: { from: segments_centroids, partition_by: run_date }
  segment_migration: { from: segments_migration, partition_by: run_date }
  evaluation: { partition_by: run_date }
";

/// A segment pipeline over `data/features.parquet`; `extra` adds stage keys.
fn pipeline(sandbox: &Sandbox, seed: u64, extra: &str) -> PathBuf {
    sandbox.write(
        "pipeline.yaml",
        &format!(
            "name: seg\nseed: {seed}\noutput_root: out\ninputs:\n  features:\n    path: data/features.parquet\n\
             stages:\n  - name: segments\n    kind: segment\n    inputs: [features]\n    id: customer_id\n    features:\n\
             \x20     recency_days: {{ labels: [recent, lapsed] }}\n\
             \x20     frequency: {{ labels: [rare, frequent] }}\n\
             \x20     monetary: {{ labels: [low value, high value] }}\n\
             \x20   revenue: monetary\n{extra}{OUTPUTS}"
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

/// The segment each planted group landed in; panics if a group is split.
fn segment_of_each_group(sandbox: &Sandbox, date: &str, customers: &[Customer]) -> Vec<(&'static str, String)> {
    let rows = query(&[("s", &table(sandbox, "customer_segments", date))], "SELECT customer_id, segment FROM s ORDER BY customer_id");
    let segment_of: std::collections::HashMap<i64, String> = rows.iter().map(|r| (r[0].parse().unwrap(), r[1].clone())).collect();
    let mut out = Vec::new();
    for group in [CHAMPIONS.0, REGULARS.0, LAPSED.0] {
        let mut segments: Vec<&String> = customers.iter().filter(|c| c.group == group).filter_map(|c| segment_of.get(&c.id)).collect();
        segments.sort();
        segments.dedup();
        assert_eq!(segments.len(), 1, "group {group} is split over segments {segments:?}");
        out.push((group, segments[0].clone()));
    }
    out
}

#[test]
fn planted_groups_are_found_profiled_and_ranked_by_revenue_share() {
    let sandbox = Sandbox::new();
    let customers = planted(1);
    write_features(&sandbox.path("data/features.parquet"), &customers);
    pipeline(&sandbox, 7, "    k: auto\n    k_range: [1, 8]\n");
    run(&sandbox, "2025-01-01", &[]);

    let evaluation = table(&sandbox, "evaluation", "2025-01-01");
    let chosen = query(&[("e", &evaluation)], "SELECT value FROM e WHERE metric = 'k'");
    assert_eq!(chosen, vec![vec!["3.0".to_string()]], "three planted groups, k chosen on the elbow");
    let curve = query(&[("e", &evaluation)], "SELECT COUNT(*) FROM e WHERE metric = 'inertia' AND k BETWEEN 1 AND 8 AND stage = 'segments' AND model = 'kmeans'");
    assert_eq!(curve[0][0], "8", "the whole curve k = 1..8, each k once (the chosen fit's is the curve's)");

    // Profiles, best first. First-run segment ids are the ranks.
    let profiles = query(&[("p", &table(&sandbox, "segment_profiles", "2025-01-01"))], "SELECT segment, rank, customers, label, round(revenue_share, 3), mean_monetary > median_monetary * 0.8 FROM p ORDER BY rank");
    assert_eq!(profiles.len(), 3);
    assert_eq!(profiles[0][..3], ["1", "1", "120"], "champions hold most revenue: {profiles:?}");
    assert_eq!(profiles[1][..3], ["2", "2", "150"], "{profiles:?}");
    assert_eq!(profiles[2][..3], ["3", "3", "130"], "{profiles:?}");
    for word in ["high value", "frequent", "recent"] {
        assert!(profiles[0][3].contains(word), "the champions' label names `{word}`: {}", profiles[0][3]);
    }
    for word in ["low value", "rare", "lapsed"] {
        assert!(profiles[2][3].contains(word), "the lapsed customers' label names `{word}`: {}", profiles[2][3]);
    }
    let groups = segment_of_each_group(&sandbox, "2025-01-01", &customers);
    assert_eq!(groups, vec![("champions", "1".to_string()), ("regulars", "2".to_string()), ("lapsed", "3".to_string())]);

    let segments = query(&[("s", &table(&sandbox, "customer_segments", "2025-01-01"))], "SELECT COUNT(*), COUNT(DISTINCT customer_id), SUM(CASE WHEN second_segment <> segment THEN 1 ELSE 0 END), MIN(distance) >= 0 FROM s");
    assert_eq!(segments[0], ["400", "400", "400", "true"], "one row per customer, each with a different second-nearest segment");
    let centroids = query(&[("c", &table(&sandbox, "segment_centroids", "2025-01-01"))], "SELECT COUNT(*) FROM c");
    assert_eq!(centroids[0][0], "9", "3 segments × 3 features");
    let migration = query(&[("m", &table(&sandbox, "segment_migration", "2025-01-01"))], "SELECT COUNT(*) FROM m");
    assert_eq!(migration[0][0], "0", "a first run has nothing to migrate from");

    let model_dir = sandbox.path("out/models/segments/run_date=2025-01-01");
    assert_eq!(files_under(&model_dir), vec!["_SUCCESS", "_manifest.json", "assignments.parquet", "model.json"]);
    let model: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(model_dir.join("model.json")).unwrap()).unwrap();
    assert_eq!(model["format"], "segflow.segment_model");
    assert_eq!(model["format_version"], 1);
    assert_eq!(model["k_choice"]["chosen_k"], 3);
    assert_eq!(model["prepared_features"], serde_json::json!(["recency_days", "frequency", "monetary"]));
}

#[test]
fn segment_ids_keep_their_meaning_across_runs_and_migration_counts_the_movers() {
    let sandbox = Sandbox::new();
    let first = planted(1);
    write_features(&sandbox.path("data/features.parquet"), &first);
    pipeline(&sandbox, 7, "    k: 3\n");
    run(&sandbox, "2025-01-01", &[]);
    let before = segment_of_each_group(&sandbox, "2025-01-01", &first);

    // A month later: 10 regulars lapse, 20 new champions arrive, 5 lapsed customers are gone;
    // the rows come in another order and another seed shuffles the cluster indices.
    let mut second = planted(2);
    let moved: Vec<i64> = (1001..=1010).collect();
    for c in second.iter_mut().filter(|c| moved.contains(&c.id)) {
        (c.group, c.recency, c.frequency, c.monetary) = (LAPSED.0, LAPSED.2, LAPSED.3, LAPSED.4);
    }
    second.extend(planted(3).into_iter().filter(|c| c.group == CHAMPIONS.0).take(20).map(|c| Customer { id: c.id + 5000, ..c }));
    second.retain(|c| !(2001..=2005).contains(&c.id));
    second.reverse();
    write_features(&sandbox.path("data/features.parquet"), &second);
    pipeline(&sandbox, 99, "    k: 3\n");
    run(&sandbox, "2025-02-01", &[]);
    let after = segment_of_each_group(&sandbox, "2025-02-01", &second);
    assert_eq!(after, before, "each group keeps its segment id");

    let id = |group: &str| before.iter().find(|(g, _)| *g == group).map(|(_, s)| s.clone()).unwrap();
    let (champions, regulars, lapsed) = (id(CHAMPIONS.0), id(REGULARS.0), id(LAPSED.0));
    let migration = query(
        &[("m", &table(&sandbox, "segment_migration", "2025-02-01"))],
        "SELECT previous_run_date, CAST(from_segment AS VARCHAR) AS f, CAST(to_segment AS VARCHAR) AS t, customers FROM m",
    );
    let row = |from: &str, to: &str, n: usize| vec!["2025-01-01".to_string(), from.to_string(), to.to_string(), n.to_string()];
    let mut expected = vec![
        row("", &champions, 20),
        row(&champions, &champions, 120),
        row(&regulars, &regulars, 140),
        row(&regulars, &lapsed, 10),
        row(&lapsed, "", 5),
        row(&lapsed, &lapsed, 125),
    ];
    let key = |r: &Vec<String>| (r[1].parse::<i32>().unwrap_or(-1), r[2].parse::<i32>().unwrap_or(-1));
    expected.sort_by_key(key);
    let mut migration = migration;
    migration.sort_by_key(key);
    assert_eq!(migration, expected);

    // A rerun of the second date matches against the first date again: the same result.
    let segments = std::fs::read_to_string(table(&sandbox, "customer_segments", "2025-02-01").join("_manifest.json")).unwrap();
    run(&sandbox, "2025-02-01", &[]);
    assert_eq!(segment_of_each_group(&sandbox, "2025-02-01", &second), before);
    let rerun = std::fs::read_to_string(table(&sandbox, "customer_segments", "2025-02-01").join("_manifest.json")).unwrap();
    assert_eq!(rerun, segments);
}

#[test]
fn assign_puts_customers_into_the_saved_segments_without_refitting() {
    let sandbox = Sandbox::new();
    let customers = planted(1);
    write_features(&sandbox.path("data/features.parquet"), &customers);
    pipeline(&sandbox, 7, "    k: 3\n");
    run(&sandbox, "2025-01-01", &[]);

    // New customers: a few of each group, drawn afresh, with their own ids.
    let fresh: Vec<Customer> = planted(4).into_iter().filter(|c| c.id % 10 == 0).map(|c| Customer { id: c.id + 9000, ..c }).collect();
    write_features(&sandbox.path("new/customers.parquet"), &fresh);
    let ran = sandbox.segflow(&["assign", "out/models/segments/run_date=2025-01-01", "new/customers.parquet", "--output", "scored/new_segments"]);
    assert_eq!(ran.code, 0, "{}", ran.stderr);
    assert_eq!(files_under(&sandbox.path("scored/new_segments")).iter().filter(|f| f.starts_with('_')).collect::<Vec<_>>(), vec!["_SUCCESS", "_manifest.json"]);
    let assigned = query(&[("a", &sandbox.path("scored/new_segments"))], "SELECT customer_id, segment FROM a ORDER BY customer_id");
    assert_eq!(assigned.len(), fresh.len());
    let expected = segment_of_each_group(&sandbox, "2025-01-01", &customers);
    for (row, customer) in assigned.iter().zip({
        let mut sorted = fresh.clone();
        sorted.sort_by_key(|c| c.id);
        sorted
    }) {
        let group_segment = &expected.iter().find(|(g, _)| *g == customer.group).unwrap().1;
        assert_eq!(&row[1], group_segment, "customer {} of group {} lands in its group's segment", customer.id, customer.group);
    }

    // The training customers, assigned by the saved model, land exactly where the run put them.
    let ran = sandbox.segflow(&["assign", "out/models/segments/run_date=2025-01-01/model.json", "data/features.parquet", "--output", "scored/again"]);
    assert_eq!(ran.code, 0, "{}", ran.stderr);
    let differences = query(
        &[("a", &sandbox.path("scored/again")), ("s", &table(&sandbox, "customer_segments", "2025-01-01"))],
        "SELECT COUNT(*) FROM a JOIN s USING (customer_id) WHERE a.segment <> s.segment OR abs(a.distance - s.distance) > 1e-12",
    );
    assert_eq!(differences[0][0], "0");

    // An input without a feature the model needs is refused before anything is written.
    write_parquet(&sandbox.path("bad/customers.parquet"), vec![Col::Int("customer_id", vec![Some(1)]), Col::Float("recency_days", vec![Some(1.0)])]);
    let ran = sandbox.segflow(&["assign", "out/models/segments/run_date=2025-01-01", "bad/customers.parquet", "--output", "scored/bad"]);
    assert_eq!(ran.code, 2, "{}", ran.stderr);
    assert!(ran.stderr.contains("`frequency`, `monetary`"), "{}", ran.stderr);
    assert!(!sandbox.path("scored/bad").exists());
}

#[test]
fn the_same_input_and_seed_give_byte_identical_segments_and_model_on_1_or_2_threads() {
    let sandbox = Sandbox::new();
    write_features(&sandbox.path("data/features.parquet"), &planted(1));
    pipeline(&sandbox, 7, "    k: auto\n    k_range: [2, 6]\n");
    let read = |root: &str| {
        ["customer_segments", "segment_profiles", "evaluation"]
            .iter()
            .map(|t| std::fs::read(sandbox.path(&format!("{root}/{t}/run_date=2025-01-01/part-00000-same.parquet"))).unwrap())
            .chain([std::fs::read(sandbox.path(&format!("{root}/models/segments/run_date=2025-01-01/model.json"))).unwrap()])
            .collect::<Vec<_>>()
    };
    for (root, threads) in [("one", "1"), ("two", "2")] {
        let ran = sandbox.segflow(&["run", "pipeline.yaml", "--run-date", "2025-01-01", "--run-id", "same", "--output-root", root, "--threads", threads]);
        assert_eq!(ran.code, 0, "{}", ran.stderr);
    }
    assert!(read("one") == read("two"), "files differ between 1 and 2 threads");
}

#[test]
fn every_algorithm_finds_the_planted_groups_through_the_same_stage() {
    let customers = planted(1);
    for algorithm in ["kmeans", "minibatch_kmeans", "gmm", "hierarchical"] {
        let sandbox = Sandbox::new();
        write_features(&sandbox.path("data/features.parquet"), &customers);
        pipeline(&sandbox, 7, &format!("    k: 3\n    algorithm: {algorithm}\n"));
        run(&sandbox, "2025-01-01", &[]);
        let groups = segment_of_each_group(&sandbox, "2025-01-01", &customers);
        let mut distinct: Vec<&String> = groups.iter().map(|(_, s)| s).collect();
        distinct.dedup();
        assert_eq!(distinct.len(), 3, "{algorithm}: {groups:?}");
        let model = std::fs::read_to_string(sandbox.path("out/models/segments/run_date=2025-01-01/model.json")).unwrap();
        assert!(model.contains(&format!("\"algorithm\": \"{algorithm}\"")), "{algorithm}");
    }
}

#[test]
fn one_hot_features_are_profiled_by_their_most_common_level() {
    let sandbox = Sandbox::new();
    write_features(&sandbox.path("data/features.parquet"), &planted(1));
    pipeline(&sandbox, 7, "    k: 3\n");
    let text = std::fs::read_to_string(sandbox.path("pipeline.yaml")).unwrap().replace("    revenue: monetary\n", "      region: { one_hot: true }\n    revenue: monetary\n");
    sandbox.write("pipeline.yaml", &text);
    run(&sandbox, "2025-01-01", &[]);
    let features = query(&[("c", &table(&sandbox, "segment_centroids", "2025-01-01"))], "SELECT DISTINCT feature FROM c ORDER BY feature");
    let features: Vec<&str> = features.iter().map(|r| r[0].as_str()).collect();
    assert_eq!(features, ["frequency", "monetary", "recency_days", "region=north", "region=south", "region=west"]);
    let tops = query(&[("p", &table(&sandbox, "segment_profiles", "2025-01-01"))], "SELECT COUNT(top_region) FROM p");
    assert_eq!(tops[0][0], "3");
}

#[test]
fn segment_stage_mistakes_are_reported_with_their_place() {
    let sandbox = Sandbox::new();
    write_features(&sandbox.path("data/features.parquet"), &planted(1));
    sandbox.write(
        "pipeline.yaml",
        "name: seg\noutput_root: out\ninputs:\n  features:\n    path: data/features.parquet\nstages:\n  - name: segments\n    kind: segment\n    inputs: [features]\n    id: customer_id\n    features:\n      monetry: {}\n      region: {}\n    k: 99\n\
         outputs:\n  customer_segments: { from: segments }\n",
    );
    let ran = sandbox.segflow(&["validate", "pipeline.yaml"]);
    assert_eq!(ran.code, 2, "{}", ran.stderr);
    assert!(ran.stderr.contains("pipeline.yaml:14:8: stage \"segments\": `k` is `auto` or a number of segments from 1 to 50"), "{}", ran.stderr);
    assert!(ran.stderr.contains("pipeline.yaml:7:5: stage \"segments\": segments are ranked by revenue share unless `rank_by` says otherwise"), "{}", ran.stderr);

    let text = std::fs::read_to_string(sandbox.path("pipeline.yaml")).unwrap().replace("    k: 99\n", "    k: 3\n    rank_by: size\n");
    sandbox.write("pipeline.yaml", &text);
    let ran = sandbox.segflow(&["validate", "pipeline.yaml"]);
    assert_eq!(ran.code, 2, "{}", ran.stderr);
    assert!(ran.stderr.contains("pipeline.yaml:12:7: stage \"segments\": feature `monetry` is not a column of `features`"), "{}", ran.stderr);
    assert!(ran.stderr.contains("did you mean `monetary`?"), "{}", ran.stderr);
    assert!(ran.stderr.contains("pipeline.yaml:13:7: stage \"segments\": feature `region` of `features` is text; expected a number (one-hot encode text features with `one_hot: true`)"), "{}", ran.stderr);
}

/// The golden file holds scikit-learn's k-means on these features (see
/// benches/online_retail_golden.sh): from its k-means++ centres, at the k segflow chose.
#[test]
fn online_retail_inertia_is_within_0_1_percent_of_scikit_learn_from_the_same_start() {
    use segflow::ml::kmeans::lloyd_from;
    use segflow::ml::prep::FeatureKind;
    use segflow::stage::features::{feature_columns, read_features, text_views};
    use segflow::stage::segment::SegmentModel;

    let source = crate::util::repo().join("../shared/data/online_retail/online_retail.parquet");
    assert!(source.exists(), "the Online Retail data belongs in ../shared/data: {}", source.display());
    let golden: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(crate::util::repo().join("tests/golden/online_retail_kmeans.json")).unwrap()).unwrap();
    let out = tempfile::tempdir().unwrap();
    let ran = crate::util::segflow_in(
        &crate::util::repo(),
        &["run", "pipelines/online_retail.yaml", "--run-date", "2011-12-10", "--run-id", "retail", "--output-root", out.path().to_str().unwrap()],
    );
    assert_eq!(ran.code, 0, "{}", ran.stderr);
    let model = SegmentModel::load(&out.path().join("models/segments/run_date=2011-12-10")).unwrap();
    let k = golden["k"].as_u64().unwrap() as usize;
    assert_eq!(model.k_choice.as_ref().map(|c| c.chosen_k), Some(k), "segflow's choice of k moved: regenerate the golden file");

    // The same features, prepared by the saved preparation.
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let data = runtime.block_on(async {
        let ctx = datafusion::prelude::SessionContext::new();
        let path = out.path().join("customer_features/run_date=2011-12-10");
        ctx.register_parquet("f", path.to_str().unwrap(), Default::default()).await.unwrap();
        let names: Vec<String> = model.preparation.input_names().iter().map(|s| s.to_string()).collect();
        read_features(ctx.table("f").await.unwrap(), "customer_id", &names, &[], "features").await.unwrap()
    });
    let text = text_views(&data);
    let kinds: Vec<(&str, FeatureKind)> = model.preparation.features().iter().map(|f| (f.name(), f.kind())).collect();
    let x = model.preparation.transform(&feature_columns(&data, &text, &kinds)).unwrap();
    assert_eq!(x.nrows() as u64, golden["rows"].as_u64().unwrap());
    let x_abs_sum: f64 = x.iter().map(|v| v.abs()).sum();
    let expected_abs_sum = golden["x_abs_sum"].as_f64().unwrap();
    assert!((x_abs_sum - expected_abs_sum).abs() <= 1e-9 * expected_abs_sum, "prepared features differ from scikit-learn's side: {x_abs_sum} vs {expected_abs_sum}");

    let init: Vec<Vec<f64>> = serde_json::from_value(golden["init"].clone()).unwrap();
    let init = ndarray::Array2::from_shape_fn((init.len(), init[0].len()), |(i, j)| init[i][j]);
    let ours = lloyd_from(x.view(), init.view(), 300, 1e-4).unwrap();
    let theirs = golden["sklearn_inertia"].as_f64().unwrap();
    let relative = (ours.inertia - theirs).abs() / theirs;
    assert!(relative <= 1e-3, "segflow inertia {} vs scikit-learn {theirs}: {relative:.2e} apart", ours.inertia);
}
