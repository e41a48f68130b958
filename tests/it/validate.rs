//! `segflow validate`: every mistake reported at once, each with file:line:column, the stage,
//! and a suggestion where one exists. One test per kind of mistake, asserting the message.

use crate::util::{Ran, Sandbox};

/// A valid two-stage pipeline over a small customers file; each test breaks one thing.
const VALID: &str = "\
name: v
vars:
  min_units: 1
inputs:
  customers:
    path: data/customers.parquet
stages:
  - name: features
    kind: sql
    inputs: [customers]
    query: SELECT customer_id, region FROM customers WHERE customer_id > ${min_units}
  - name: summary
    kind: sql
    inputs: [features]
    query: SELECT region, COUNT(*) AS n FROM features GROUP BY region
outputs:
  summary: {}
";

fn validate(pipeline: &str) -> Ran {
    let sandbox = Sandbox::new();
    let customers = crate::util::repo().join("data/demo/customers.parquet");
    std::fs::create_dir_all(sandbox.path("data")).unwrap();
    std::fs::copy(customers, sandbox.path("data/customers.parquet")).unwrap();
    sandbox.write("pipeline.yaml", pipeline);
    sandbox.segflow(&["validate", "pipeline.yaml"])
}

/// Asserts exit code 2 and exactly these error lines, in this order.
fn assert_problems(ran: &Ran, expected: &[&str]) {
    assert_eq!(ran.code, 2, "stderr:\n{}", ran.stderr);
    let errors: Vec<&str> = ran.stderr.lines().filter(|l| l.starts_with("error: ")).collect();
    assert_eq!(errors, expected, "stderr:\n{}", ran.stderr);
    let n = expected.len();
    assert!(ran.stderr.contains(&format!("{n} problem{} found", if n == 1 { "" } else { "s" })), "{}", ran.stderr);
    assert!(ran.stdout.is_empty(), "validate prints nothing on stdout: {}", ran.stdout);
}

fn broken(from: &str, to: &str) -> String {
    assert!(VALID.contains(from), "{from}");
    VALID.replacen(from, to, 1)
}

#[test]
fn a_valid_pipeline_validates_with_exit_0_and_writes_nothing() {
    let sandbox = Sandbox::new();
    std::fs::create_dir_all(sandbox.path("data")).unwrap();
    std::fs::copy(crate::util::repo().join("data/demo/customers.parquet"), sandbox.path("data/customers.parquet")).unwrap();
    sandbox.write("pipeline.yaml", VALID);
    let ran = sandbox.segflow(&["validate", "pipeline.yaml"]);
    assert_eq!(ran.code, 0, "{}", ran.stderr);
    assert_eq!(crate::util::files_under(sandbox.root()), vec!["data/customers.parquet", "pipeline.yaml"]);
}

#[test]
fn an_unknown_field_is_reported_with_did_you_mean() {
    let ran = validate(&broken("    inputs: [customers]", "    inptus: [customers]"));
    assert_problems(&ran, &["error: pipeline.yaml:10:5: stage \"features\": unknown field `inptus`, expected one of `query`, `file`, `bind`, or a field every stage has: `name`, `kind`, `inputs`, `description` (did you mean `inputs`?)"]);
}

#[test]
fn an_unknown_top_level_field_is_reported_with_did_you_mean() {
    let ran = validate(&broken("vars:", "varz:"));
    assert_problems(&ran, &[
        "error: pipeline.yaml:2:1: unknown top-level field `varz`, expected one of `name`, `description`, `seed`, `output_root`, `engine`, `vars`, `inputs`, `stages`, `outputs` (did you mean `vars`?)",
        "error: pipeline.yaml:11:74: stage \"features\": undefined variable `min_units`; defined: `run_date`",
    ]);
}

#[test]
fn an_unknown_stage_kind_is_reported_with_the_known_kinds() {
    let ran = validate(&broken("    kind: sql\n    inputs: [features]", "    kind: sqll\n    inputs: [features]"));
    assert_problems(&ran, &["error: pipeline.yaml:13:11: stage \"summary\": unknown stage kind `sqll`; known kinds: `sql`, `clean`, `segment`, `churn` (did you mean `sql`?)"]);
}

#[test]
fn an_unknown_table_in_sql_is_reported_where_the_query_names_it() {
    let ran = validate(&broken("FROM features GROUP", "FROM featurs GROUP"));
    assert_problems(&ran, &["error: pipeline.yaml:15:46: stage \"summary\": unknown table `featurs`; this stage reads its inputs: `features` (did you mean `features`?)"]);
}

#[test]
fn an_unknown_column_is_reported_where_the_query_names_it() {
    let ran = validate(&broken("SELECT region, COUNT", "SELECT regoin, COUNT"));
    assert_problems(&ran, &["error: pipeline.yaml:15:19: stage \"summary\": unknown column `regoin`; the columns here are: `customer_id`, `region` (did you mean `region`?)"]);
}

#[test]
fn a_cycle_is_reported_as_its_path() {
    let ran = validate(&broken("    inputs: [customers]\n    query: SELECT customer_id, region FROM customers", "    inputs: [summary]\n    query: SELECT customer_id, region FROM summary"));
    assert_problems(&ran, &["error: pipeline.yaml:8:11: stage \"features\": cycle between stages: features → summary → features"]);
}

#[test]
fn a_duplicate_stage_name_is_reported_with_the_first_definition() {
    let ran = validate(&broken("  - name: summary", "  - name: features"));
    assert_problems(&ran, &[
        "error: pipeline.yaml:12:11: stage \"features\": duplicate stage name `features` (first defined at line 8)",
        "error: pipeline.yaml:17:3: output `summary` is written from `summary`, which no stage produces; stage results are: `features`",
    ]);
}

#[test]
fn a_missing_input_file_is_reported_once() {
    let ran = validate(&broken("data/customers.parquet", "data/customer.parquet"));
    assert_problems(&ran, &["error: pipeline.yaml:6:11: input `customers`: input file not found: data/customer.parquet"]);
}

#[test]
fn an_undefined_variable_is_reported_where_the_sql_uses_it() {
    let ran = validate(&broken("${min_units}", "${min_unit}"));
    assert_problems(&ran, &["error: pipeline.yaml:11:74: stage \"features\": undefined variable `min_unit`; defined: `min_units`, `run_date` (did you mean `min_units`?)"]);
}

#[test]
fn a_sql_file_is_located_by_its_own_lines() {
    let sandbox = Sandbox::new();
    std::fs::create_dir_all(sandbox.path("data")).unwrap();
    std::fs::copy(crate::util::repo().join("data/demo/customers.parquet"), sandbox.path("data/customers.parquet")).unwrap();
    sandbox.write("sql/features.sql", "-- features\nSELECT customer_id,\n       regionn\nFROM customers\n");
    sandbox.write("pipeline.yaml", &broken("    query: SELECT customer_id, region FROM customers WHERE customer_id > ${min_units}", "    file: sql/features.sql"));
    let ran = sandbox.segflow(&["validate", "pipeline.yaml"]);
    assert_problems(&ran, &["error: sql/features.sql:3:8: stage \"features\": unknown column `regionn`; the columns here are: `customer_id`, `age_band`, `region`, `signup_date`, `acquisition_channel`, `planted_segment` (did you mean `region`?)"]);
}

#[test]
fn five_different_mistakes_are_all_reported_at_once_in_file_order() {
    let pipeline = "\
name: five
inputs:
  customers:
    path: data/customers.parquet
  orders:
    path: data/orders.parquet
stages:
  - name: features
    kind: sql
    inputs: [customers]
    query: SELECT customer_id FROM customers WHERE customer_id > ${threshold}
  - name: profile
    kind: sql
    inputs: [customers]
    querry: SELECT region FROM customers
  - name: scores
    kind: score
    inputs: [features]
  - name: left
    kind: sql
    inputs: [right]
    query: SELECT * FROM right
  - name: right
    kind: sql
    inputs: [left]
    query: SELECT * FROM left
outputs:
  features: {}
";
    let ran = validate(pipeline);
    assert_problems(&ran, &[
        "error: pipeline.yaml:6:11: input `orders`: input file not found: data/orders.parquet",
        "error: pipeline.yaml:11:66: stage \"features\": undefined variable `threshold`; defined: `run_date`",
        "error: pipeline.yaml:15:5: stage \"profile\": unknown field `querry`, expected one of `query`, `file`, `bind`, or a field every stage has: `name`, `kind`, `inputs`, `description` (did you mean `query`?)",
        "error: pipeline.yaml:17:11: stage \"scores\": unknown stage kind `score`; known kinds: `sql`, `clean`, `segment`, `churn`",
        "error: pipeline.yaml:19:11: stage \"left\": cycle between stages: left → right → left",
    ]);
}

#[test]
fn malformed_yaml_is_reported_with_its_position() {
    let ran = validate("name: x\nstages: [\n  - a\n");
    assert_eq!(ran.code, 2, "{}", ran.stderr);
    assert!(ran.stderr.starts_with("error: pipeline.yaml:"), "{}", ran.stderr);
    assert!(ran.stderr.contains("invalid YAML"), "{}", ran.stderr);
}

#[test]
fn a_query_that_writes_is_refused() {
    let ran = validate(&broken("SELECT region, COUNT(*) AS n FROM features GROUP BY region", "CREATE TABLE x AS SELECT 1"));
    assert_problems(&ran, &["error: pipeline.yaml:15:12: stage \"summary\": a sql stage is one query (SELECT or WITH … SELECT); it may not create, change or drop anything"]);
}

#[test]
fn reading_a_table_that_is_not_an_input_is_refused() {
    let ran = validate(&broken("FROM features GROUP", "FROM customers GROUP"));
    assert_problems(&ran, &["error: pipeline.yaml:15:12: stage \"summary\": the query reads `customers`, which is not among the stage's inputs (`features`); add it to `inputs` so the stage runs after it"]);
}

#[test]
fn a_declared_schema_is_checked_against_the_files() {
    let ran = validate(&broken(
        "    path: data/customers.parquet\n",
        "    path: data/customers.parquet\n    schema:\n      customer_id: string\n      regoin: string\n      signup_date: datetime\n",
    ));
    assert_problems(&ran, &[
        "error: pipeline.yaml:8:20: input `customers`: column `customer_id` is declared string but the files hold Int64",
        "error: pipeline.yaml:9:15: input `customers`: declared column `regoin` is not in the files; they have: `customer_id`, `age_band`, `region`, `signup_date`, `acquisition_channel`, `planted_segment` (did you mean `region`?)",
        "error: pipeline.yaml:10:20: input `customers`: unknown type `datetime` for column `signup_date`; types are: `string`, `int64`, `int32`, `float64`, `float32`, `bool`, `date`, `timestamp`",
    ]);
}

#[test]
fn a_sql_syntax_error_is_reported_where_it_is() {
    let ran = validate(&broken("SELECT region, COUNT(*) AS n FROM features GROUP BY region", "SELEC region FROM features"));
    assert_problems(&ran, &["error: pipeline.yaml:15:12: stage \"summary\": SQL syntax error: expected an SQL statement, found SELEC"]);
}

#[test]
fn a_file_that_is_not_parquet_is_reported_at_its_input() {
    let sandbox = Sandbox::new();
    sandbox.write("data/customers.parquet", "name,region\nann,north\n");
    sandbox.write("pipeline.yaml", VALID);
    let ran = sandbox.segflow(&["validate", "pipeline.yaml"]);
    assert_problems(&ran, &["error: pipeline.yaml:5:3: input `customers` cannot be read as Parquet: Invalid Parquet file. Corrupt footer"]);
}
