//! `kind: clean` — declared types, null policies, validity rules, deduplication, a rejects
//! table with reasons, data tests and PII handling, executed by DataFusion.
//!
//! ```yaml
//! - name: clean_transactions
//!   kind: clean
//!   inputs: [transactions]             # exactly one
//!   columns:                           # declared columns; the others pass through as they are
//!     customer_id: { type: int64, nulls: reject }
//!     unit_price:  { type: float64, nulls: { fill: 0 } }
//!     age:         { type: int64, nulls: median }        # reject | keep | median | mode | {fill: v}
//!     email:       { type: string, pii: hash }           # drop | hash (HMAC-SHA256)
//!   pii_key_env: SEGFLOW_PII_KEY       # where the HMAC key comes from
//!   rules:                             # in order; a row failing several records the first
//!     positive_quantity: quantity > 0
//!     not_cancelled: invoice NOT LIKE 'C%'
//!   dedup:
//!     exact: true                      # exact duplicate rows first
//!     key: [invoice, stock_code, customer_id]
//!     keep: latest                     # latest | earliest by `order_by`; ties: all columns
//!     order_by: invoice_ts
//! ```
//!
//! Each row of the input ends in exactly one place: the clean table, the rejects table
//! (`<stage>_rejects`: every original column as read, plus `_reject_reason`, `_stage`,
//! `_run_id`), or counted as deduplicated. A row's reason is the first that applies, in this
//! order: a failed cast (`cast_failed:<column>`), a null under `reject` (`null:<column>`),
//! then the rules in declaration order (their names). The accounting
//! rows_in = rows_out + rows_rejected + rows_deduplicated is checked on every run and a
//! violation fails it. The counts are the `<stage>_data_quality` table.

use std::collections::BTreeMap;
use std::sync::Arc;

use async_trait::async_trait;
use datafusion::arrow::array::{Array, ArrayRef, StringArray, StringBuilder};
use datafusion::arrow::datatypes::DataType;
use datafusion::common::ScalarValue;
use datafusion::logical_expr::{ColumnarValue, ScalarUDF, Volatility, create_udf};
use datafusion::prelude::{DataFrame, SessionContext};
use sha2::{Digest, Sha256};
use serde::Deserialize;

use super::{BuildContext, Stage, StageContext, StageFailure, StageKind, StageMetrics, StageOutput, StageProblem, StageResult};
use crate::config::yaml::{At, Node, OrderedMap, from_node, quoted_list};
use crate::engine::{declared_type, describe_datafusion_error, quote_ident, unknown_type};

pub struct CleanKind;

/// The parameters of a `clean` stage.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct CleanParams {
    /// Declared columns: target type, null policy, PII handling.
    #[serde(default)]
    columns: Option<OrderedMap<ColumnSpec>>,
    /// Named SQL predicates a row must satisfy, checked in order.
    #[serde(default)]
    rules: Option<OrderedMap<At<String>>>,
    #[serde(default)]
    dedup: Option<DedupSpec>,
    /// The environment variable holding the HMAC key for `pii: hash` columns.
    #[serde(default)]
    pii_key_env: Option<At<String>>,
    /// Data tests on the clean rows, in dbt's spirit.
    #[serde(default)]
    tests: Vec<At<DataTest>>,
    /// The column the stages after this one group and join the clean rows by (a customer id):
    /// large inputs are written in buckets of that column, and those stages work a bucket at
    /// a time ([`super::StageContext::materialize_bucketed`]).
    #[serde(default)]
    bucket_by: Option<At<String>>,
}

/// A data test: what must hold of the clean rows, how bad a failure is, and from how many
/// failing rows on it counts.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
enum DataTest {
    NotNull {
        column: String,
        #[serde(default)]
        severity: Severity,
        #[serde(default)]
        error_if: Option<String>,
    },
    Unique {
        columns: Vec<String>,
        #[serde(default)]
        severity: Severity,
        #[serde(default)]
        error_if: Option<String>,
    },
    AcceptedValues {
        column: String,
        values: Vec<String>,
        #[serde(default)]
        severity: Severity,
        #[serde(default)]
        error_if: Option<String>,
    },
    Range {
        column: String,
        #[serde(default)]
        min: Option<f64>,
        #[serde(default)]
        max: Option<f64>,
        #[serde(default)]
        severity: Severity,
        #[serde(default)]
        error_if: Option<String>,
    },
    RowCount {
        #[serde(default)]
        min: Option<u64>,
        #[serde(default)]
        max: Option<u64>,
        #[serde(default)]
        severity: Severity,
    },
}

#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq)]
#[serde(rename_all = "snake_case")]
enum Severity {
    /// A failure fails the run (exit code 1).
    #[default]
    Error,
    /// A failure is logged and recorded; the run goes on.
    Warn,
}

/// `error_if: ">100"`: the test fails when its failing-row count is above 100. Default `>0`.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Threshold {
    inclusive: bool,
    limit: i64,
}

impl Threshold {
    fn parse(text: Option<&str>) -> Result<Threshold, String> {
        let Some(text) = text else { return Ok(Threshold { inclusive: false, limit: 0 }) };
        let trimmed = text.trim();
        let (inclusive, number) = match trimmed.strip_prefix(">=") {
            Some(rest) => (true, rest),
            None => match trimmed.strip_prefix('>') {
                Some(rest) => (false, rest),
                None => return Err(format!("`error_if: {text}` is not a threshold; write \">N\" or \">=N\"")),
            },
        };
        let limit = number.trim().parse::<i64>().map_err(|_| format!("`error_if: {text}`: `{}` is not a whole number", number.trim()))?;
        Ok(Threshold { inclusive, limit })
    }

    fn breached(&self, failing: i64) -> bool {
        if self.inclusive { failing >= self.limit } else { failing > self.limit }
    }
}

impl DataTest {
    fn name(&self) -> String {
        match self {
            DataTest::NotNull { column, .. } => format!("not_null:{column}"),
            DataTest::Unique { columns, .. } => format!("unique:{}", columns.join("+")),
            DataTest::AcceptedValues { column, .. } => format!("accepted_values:{column}"),
            DataTest::Range { column, .. } => format!("range:{column}"),
            DataTest::RowCount { .. } => "row_count".to_string(),
        }
    }

    fn severity(&self) -> Severity {
        match self {
            DataTest::NotNull { severity, .. }
            | DataTest::Unique { severity, .. }
            | DataTest::AcceptedValues { severity, .. }
            | DataTest::Range { severity, .. }
            | DataTest::RowCount { severity, .. } => *severity,
        }
    }

    fn error_if(&self) -> Option<&str> {
        match self {
            DataTest::NotNull { error_if, .. } | DataTest::Unique { error_if, .. } | DataTest::AcceptedValues { error_if, .. } | DataTest::Range { error_if, .. } => {
                error_if.as_deref()
            }
            DataTest::RowCount { .. } => None,
        }
    }

    fn columns(&self) -> Vec<&str> {
        match self {
            DataTest::NotNull { column, .. } | DataTest::AcceptedValues { column, .. } | DataTest::Range { column, .. } => vec![column.as_str()],
            DataTest::Unique { columns, .. } => columns.iter().map(String::as_str).collect(),
            DataTest::RowCount { .. } => Vec::new(),
        }
    }

    /// The condition a failing row meets, over table `t`.
    fn failing_rows_sql(&self, table: &str) -> Option<String> {
        let q = |c: &str| quote_ident(c);
        let condition = match self {
            DataTest::NotNull { column, .. } => format!("{} IS NULL", q(column)),
            DataTest::AcceptedValues { column, values, .. } => {
                let list: Vec<String> = values.iter().map(|v| literal(&ScalarValue::Utf8(Some(v.clone())))).collect();
                format!("{} IS NOT NULL AND CAST({} AS VARCHAR) NOT IN ({})", q(column), q(column), list.join(", "))
            }
            DataTest::Range { column, min, max, .. } => {
                let mut parts = Vec::new();
                if let Some(min) = min {
                    parts.push(format!("{} < {min:?}", q(column)));
                }
                if let Some(max) = max {
                    parts.push(format!("{} > {max:?}", q(column)));
                }
                if parts.is_empty() {
                    return None;
                }
                parts.join(" OR ")
            }
            DataTest::Unique { .. } | DataTest::RowCount { .. } => return None,
        };
        Some(format!("SELECT * FROM {table} WHERE {condition}"))
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct ColumnSpec {
    /// `string`, `int64`, `int32`, `float64`, `float32`, `bool`, `date`, `timestamp`.
    #[serde(rename = "type")]
    data_type: Option<At<String>>,
    #[serde(default)]
    nulls: NullPolicy,
    #[serde(default)]
    pii: Option<Pii>,
}

/// What to do with a null (or a value that failed to cast, under `keep`).
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(rename_all = "snake_case")]
enum NullPolicy {
    /// The row goes to rejects as `null:<column>`.
    Reject,
    /// The null stays; a value that fails to cast becomes null instead of a reject.
    #[default]
    Keep,
    /// Replaced by the median of the column's non-null values (numeric columns).
    Median,
    /// Replaced by the most frequent non-null value (ties: the smallest).
    Mode,
    /// Replaced by this constant.
    Fill(At<FillValue>),
}

/// A constant a null is replaced by; cast to the column's type when the stage runs.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(untagged)]
enum FillValue {
    Bool(bool),
    Int(i64),
    Float(f64),
    Str(String),
}

#[derive(Debug, Clone, Copy, Deserialize, PartialEq)]
#[serde(rename_all = "snake_case")]
enum Pii {
    /// Removed before anything is written.
    Drop,
    /// Replaced by hex(HMAC-SHA256(key, value)).
    Hash,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct DedupSpec {
    /// Remove exact duplicate rows (all columns equal).
    #[serde(default)]
    exact: bool,
    /// Keep one row per key.
    #[serde(default)]
    key: Vec<At<String>>,
    #[serde(default)]
    keep: Keep,
    /// The column `keep` orders by; required with `key`.
    #[serde(default)]
    order_by: Option<At<String>>,
}

#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq)]
#[serde(rename_all = "snake_case")]
enum Keep {
    #[default]
    Latest,
    Earliest,
}

#[derive(Debug, Clone)]
struct Column {
    name: String,
    data_type: Option<DataType>,
    nulls: NullPolicy,
    pii: Option<Pii>,
}

impl Column {
    /// The column read as its declared type; a value that does not cast becomes NULL.
    fn cast_sql(&self) -> String {
        let q = quote_ident(&self.name);
        match &self.data_type {
            Some(dt) => format!("TRY_CAST({q} AS {})", sql_type(dt)),
            None => q,
        }
    }
}

#[derive(Debug)]
struct CleanStage {
    input: String,
    columns: Vec<Column>,
    rules: Vec<(String, String)>,
    /// Where each rule is declared, to point at the one that does not plan.
    rule_positions: Vec<crate::config::yaml::Pos>,
    dedup: Option<DedupSpec>,
    pii_key_env: Option<String>,
    tests: Vec<(DataTest, Threshold)>,
    bucket_by: Option<String>,
}

impl StageKind for CleanKind {
    fn name(&self) -> &'static str {
        "clean"
    }

    fn build(&self, params: &Node, ctx: &BuildContext<'_>) -> Result<Box<dyn Stage>, Vec<StageProblem>> {
        let params: CleanParams = from_node(params)
            .map_err(|e| vec![StageProblem { file: None, pos: e.pos, message: e.message, suggestion: e.suggestion }])?;
        let mut problems = Vec::new();
        if ctx.inputs.len() != 1 {
            problems.push(StageProblem { file: None, pos: None, message: format!("a clean stage reads exactly one input, found {}", ctx.inputs.len()), suggestion: None });
        }
        let mut columns = Vec::new();
        for (name, spec) in params.columns.map(|c| c.0).unwrap_or_default() {
            let data_type = match &spec.data_type {
                Some(t) => match declared_type(&t.value) {
                    Some(dt) => Some(dt),
                    None => {
                        let (message, suggestion) = unknown_type(&t.value, &name.value);
                        problems.push(StageProblem { file: None, pos: Some(t.pos), message, suggestion });
                        None
                    }
                },
                None => None,
            };
            if let (NullPolicy::Fill(fill), Some(dt)) = (&spec.nulls, &data_type) {
                if let Err(message) = fill_scalar(&fill.value, dt) {
                    problems.push(StageProblem::at(fill.pos, format!("column `{}`: {message}", name.value)));
                }
            }
            columns.push(Column { name: name.value.clone(), data_type, nulls: spec.nulls.clone(), pii: spec.pii });
        }
        let declared_rules = params.rules.map(|r| r.0).unwrap_or_default();
        let rule_positions: Vec<crate::config::yaml::Pos> = declared_rules.iter().map(|(k, _)| k.pos).collect();
        let rules: Vec<(String, String)> = declared_rules.into_iter().map(|(k, v)| (k.value, v.value)).collect();
        if let Some(dedup) = &params.dedup {
            if !dedup.key.is_empty() && dedup.order_by.is_none() {
                problems.push(StageProblem { file: None, pos: dedup.key.first().map(|k| k.pos), message: "dedup by `key` needs `order_by`: the column that decides which row is the latest".to_string(), suggestion: None });
            }
        }
        let mut tests = Vec::new();
        for test in params.tests {
            match Threshold::parse(test.value.error_if()) {
                Ok(threshold) => tests.push((test.value.clone(), threshold)),
                Err(message) => problems.push(StageProblem::at(test.pos, message)),
            }
            if let DataTest::Range { min: None, max: None, .. } = &test.value {
                problems.push(StageProblem::at(test.pos, "a range test needs `min`, `max` or both"));
            }
        }
        if columns.iter().any(|c| c.pii == Some(Pii::Hash)) && params.pii_key_env.is_none() {
            problems.push(StageProblem { file: None, pos: None, message: "a `pii: hash` column needs `pii_key_env`: the environment variable holding the HMAC key".to_string(), suggestion: None });
        }
        if !problems.is_empty() {
            return Err(problems);
        }
        Ok(Box::new(CleanStage {
            input: ctx.inputs.first().cloned().unwrap_or_default(),
            columns,
            rules,
            rule_positions,
            dedup: params.dedup,
            pii_key_env: params.pii_key_env.map(|k| k.value),
            tests,
            bucket_by: params.bucket_by.map(|k| k.value),
        }))
    }
}

/// A constant as a SQL literal of the column's type.
fn literal(value: &ScalarValue) -> String {
    let quoted = |s: &str| format!("'{}'", s.replace('\'', "''"));
    if value.is_null() {
        return "NULL".to_string();
    }
    match value {
        ScalarValue::Utf8(Some(s)) | ScalarValue::LargeUtf8(Some(s)) | ScalarValue::Utf8View(Some(s)) => quoted(s),
        ScalarValue::Date32(_) | ScalarValue::Date64(_) => format!("CAST({} AS DATE)", quoted(&value.to_string())),
        ScalarValue::TimestampSecond(..)
        | ScalarValue::TimestampMillisecond(..)
        | ScalarValue::TimestampMicrosecond(..)
        | ScalarValue::TimestampNanosecond(..) => format!("CAST({} AS TIMESTAMP)", quoted(&value.to_string())),
        ScalarValue::Float64(Some(x)) if !x.is_finite() => format!("CAST({} AS DOUBLE)", quoted(&x.to_string())),
        other => other.to_string(),
    }
}

fn fill_scalar(value: &FillValue, data_type: &DataType) -> Result<ScalarValue, String> {
    let given = match value {
        FillValue::Str(s) => ScalarValue::Utf8(Some(s.clone())),
        FillValue::Int(i) => ScalarValue::Int64(Some(*i)),
        FillValue::Float(x) => ScalarValue::Float64(Some(*x)),
        FillValue::Bool(b) => ScalarValue::Boolean(Some(*b)),
    };
    match given.cast_to(data_type) {
        Ok(v) if !v.is_null() => Ok(v),
        _ => Err(format!("the `fill` value {given} cannot be {}", sql_type(data_type).to_lowercase())),
    }
}

/// HMAC-SHA256 (RFC 2104) over the SHA-256 the engine already links: one hash crate, not two.
pub fn hmac_sha256(key: &[u8], message: &[u8]) -> [u8; 32] {
    const BLOCK: usize = 64;
    let mut block_key = [0u8; BLOCK];
    if key.len() > BLOCK {
        block_key[..32].copy_from_slice(&Sha256::digest(key));
    } else {
        block_key[..key.len()].copy_from_slice(key);
    }
    let pad = |byte: u8| block_key.map(|k| k ^ byte);
    let inner = Sha256::new().chain_update(pad(0x36)).chain_update(message).finalize();
    let outer = Sha256::new().chain_update(pad(0x5c)).chain_update(inner).finalize();
    let mut out = [0u8; 32];
    out.copy_from_slice(&outer);
    out
}

/// The HMAC-SHA256 of each value under `key`, as lowercase hex; nulls stay null.
fn hmac_udf(key: Vec<u8>) -> ScalarUDF {
    let key = Arc::new(key);
    create_udf(
        "segflow_pii_hash",
        vec![DataType::Utf8],
        DataType::Utf8,
        Volatility::Immutable,
        Arc::new(move |args: &[ColumnarValue]| {
            let arrays = ColumnarValue::values_to_arrays(args)?;
            let values = arrays[0].as_any().downcast_ref::<StringArray>().ok_or_else(|| {
                datafusion::error::DataFusionError::Internal("pii hash expects strings".to_string())
            })?;
            let mut out = StringBuilder::with_capacity(values.len(), values.len() * 64);
            for i in 0..values.len() {
                if values.is_null(i) {
                    out.append_null();
                    continue;
                }
                let digest = hmac_sha256(&key, values.value(i).as_bytes());
                let hex: String = digest.iter().map(|b| format!("{b:02x}")).collect();
                out.append_value(hex);
            }
            Ok(ColumnarValue::Array(Arc::new(out.finish()) as ArrayRef))
        }),
    )
}

impl CleanStage {
    fn table(&self, ctx: &StageContext<'_>, part: &str) -> String {
        format!("__segflow_{}_{part}", ctx.stage_name)
    }

    fn hashes_pii(&self) -> bool {
        self.columns.iter().any(|c| c.pii == Some(Pii::Hash))
    }

    /// How the input column `name`, read as `source`, appears in an output: as it is, hashed,
    /// or not at all (`None`). The clean table and the rejects both go through here, so a PII
    /// column is handled the same way wherever it is written.
    fn output_column(&self, name: &str, source: &str) -> Option<String> {
        let q = quote_ident(name);
        match self.columns.iter().find(|c| c.name == name).and_then(|c| c.pii) {
            Some(Pii::Drop) => None,
            Some(Pii::Hash) => Some(format!("segflow_pii_hash(CAST({source} AS VARCHAR)) AS {q}")),
            None if source == q => Some(q),
            None => Some(format!("{source} AS {q}")),
        }
    }

    /// The SQL that classifies every input row: typed values, filled values, and the reason
    /// it is rejected (NULL when it is kept). Raw values ride along for the rejects table.
    fn classify_sql(&self, input_columns: &[String], fills: &BTreeMap<String, ScalarValue>) -> String {
        let declared: BTreeMap<&str, &Column> = self.columns.iter().map(|c| (c.name.as_str(), c)).collect();
        let mut typed = Vec::new();
        let mut reasons = Vec::new();
        for name in input_columns {
            let q = quote_ident(name);
            let Some(column) = declared.get(name.as_str()) else {
                typed.push(format!("{q} AS {q}"));
                continue;
            };
            let cast = column.cast_sql();
            if column.data_type.is_some() && column.nulls != NullPolicy::Keep {
                reasons.push(format!("WHEN {q} IS NOT NULL AND {cast} IS NULL THEN {}", literal(&ScalarValue::Utf8(Some(format!("cast_failed:{name}"))))));
            }
            if column.nulls == NullPolicy::Reject {
                reasons.push(format!("WHEN {q} IS NULL THEN {}", literal(&ScalarValue::Utf8(Some(format!("null:{name}"))))));
            }
            let value = match fills.get(name) {
                Some(fill) => format!("COALESCE({cast}, {})", literal(fill)),
                None => cast,
            };
            typed.push(format!("{value} AS {q}"));
        }
        let raw: Vec<String> = input_columns.iter().enumerate().map(|(i, n)| format!("{} AS \"__raw_{i}\"", quote_ident(n))).collect();
        let typed_sql = typed.join(",\n    ");
        let mut rule_reasons = Vec::new();
        for (name, predicate) in &self.rules {
            rule_reasons.push(format!("WHEN NOT COALESCE(({predicate}), FALSE) THEN {}", literal(&ScalarValue::Utf8(Some(name.clone())))));
        }
        // Casts and nulls are judged on the input; rules on the typed, filled values.
        let first = if reasons.is_empty() { "NULL".to_string() } else { format!("CASE {} END", reasons.join(" ")) };
        let second = if rule_reasons.is_empty() { "NULL".to_string() } else { format!("CASE {} END", rule_reasons.join(" ")) };
        format!(
            "SELECT *, COALESCE(__pre_reason, {second}) AS __reject_reason FROM (\n  SELECT\n    {typed_sql},\n    {},\n    {first} AS __pre_reason\n  FROM {{input}}\n) typed",
            raw.join(", ")
        )
    }

    async fn fill_values(&self, session: &SessionContext) -> Result<BTreeMap<String, ScalarValue>, StageFailure> {
        let mut fills = BTreeMap::new();
        for column in &self.columns {
            let cast = column.cast_sql();
            let input = quote_ident(&self.input);
            let value = match &column.nulls {
                NullPolicy::Fill(fill) => {
                    let dt = column.data_type.clone().unwrap_or(DataType::Utf8);
                    fill_scalar(&fill.value, &dt).map_err(|m| StageFailure { message: format!("column `{}`: {m}", column.name) })?
                }
                NullPolicy::Median => scalar(session, &format!("SELECT median({cast}) FROM {input}")).await?,
                NullPolicy::Mode => scalar(
                    session,
                    &format!("SELECT v FROM (SELECT {cast} AS v, COUNT(*) AS n FROM {input} WHERE {cast} IS NOT NULL GROUP BY 1) ORDER BY n DESC, v LIMIT 1"),
                )
                .await?,
                NullPolicy::Reject | NullPolicy::Keep => continue,
            };
            // A median of integers comes back as a double: fill with the column's own type.
            let value = match &column.data_type {
                Some(dt) => value.cast_to(dt).map_err(|e| StageFailure { message: format!("column `{}`: {e}", column.name) })?,
                None => value,
            };
            if !value.is_null() {
                fills.insert(column.name.clone(), value);
            }
        }
        Ok(fills)
    }
}

fn sql_type(dt: &DataType) -> &'static str {
    match dt {
        DataType::Utf8 => "VARCHAR",
        DataType::Int64 => "BIGINT",
        DataType::Int32 => "INT",
        DataType::Float64 => "DOUBLE",
        DataType::Float32 => "FLOAT",
        DataType::Boolean => "BOOLEAN",
        DataType::Date32 => "DATE",
        _ => "TIMESTAMP",
    }
}

async fn scalar(session: &SessionContext, sql: &str) -> Result<ScalarValue, StageFailure> {
    let batches = session.sql(sql).await?.collect().await?;
    match batches.iter().find(|b| b.num_rows() > 0) {
        Some(batch) => Ok(ScalarValue::try_from_array(batch.column(0), 0)?),
        None => Ok(ScalarValue::Null),
    }
}

async fn count(session: &SessionContext, sql: &str) -> Result<i64, StageFailure> {
    match scalar(session, sql).await? {
        ScalarValue::Int64(Some(n)) => Ok(n),
        ScalarValue::UInt64(Some(n)) => Ok(n as i64),
        other => Err(StageFailure { message: format!("internal: a count came back as {other:?}") }),
    }
}

impl CleanStage {
    /// The first rule that does not plan on its own against the input, as a problem at its
    /// line: which rule, and which column it names that does not exist.
    async fn rule_problem(&self, ctx: &StageContext<'_>, names: &[String]) -> Option<StageProblem> {
        for ((rule, predicate), pos) in self.rules.iter().zip(&self.rule_positions) {
            let sql = format!("SELECT 1 FROM {} WHERE {predicate}", quote_ident(&self.input));
            let Err(e) = ctx.session.sql(&sql).await else { continue };
            let (message, suggestion) = match crate::stage::sql::unknown_column(&e) {
                Some((column, _)) => (
                    format!("rule `{rule}` uses `{column}`, which is not a column of `{}`; its columns are: {}", self.input, quoted_list(names.iter().map(String::as_str))),
                    crate::config::yaml::did_you_mean(&column, names.iter().map(String::as_str)),
                ),
                None => (format!("rule `{rule}` (`{predicate}`): {}", describe_datafusion_error(&e)), None),
            };
            return Some(StageProblem { file: None, pos: Some(*pos), message, suggestion });
        }
        None
    }
}

#[async_trait]
impl Stage for CleanStage {
    fn secondary_results(&self) -> &'static [&'static str] {
        &["rejects", "data_quality"]
    }

    async fn plan(&self, ctx: &StageContext<'_>) -> Result<Vec<StageResult>, Vec<StageProblem>> {
        let problem = |message: String| vec![StageProblem { file: None, pos: None, message, suggestion: None }];
        let input = ctx.session.table(self.input.as_str()).await.map_err(|e| problem(describe_datafusion_error(&e)))?;
        let names: Vec<String> = input.schema().fields().iter().map(|f| f.name().clone()).collect();
        let mut problems = Vec::new();
        let mut check = |column: &str, what: &str| {
            if !names.iter().any(|n| n == column) {
                problems.push(StageProblem {
                    file: None,
                    pos: None,
                    message: format!("{what} `{column}` is not a column of `{}`; its columns are: {}", self.input, quoted_list(names.iter().map(String::as_str))),
                    suggestion: crate::config::yaml::did_you_mean(column, names.iter().map(String::as_str)),
                });
            }
        };
        for c in &self.columns {
            check(&c.name, "declared column");
        }
        if let Some(dedup) = &self.dedup {
            for k in &dedup.key {
                check(k, "dedup key");
            }
            if let Some(o) = &dedup.order_by {
                check(o, "dedup order_by");
            }
        }
        for (test, _) in &self.tests {
            for column in test.columns() {
                check(column, "tested column");
            }
        }
        if let Some(key) = &self.bucket_by {
            check(key, "bucket_by column");
            if self.output_column(key, key).is_none() {
                problems.push(StageProblem { file: None, pos: None, message: format!("bucket_by column `{key}` is dropped (`pii: drop`): the clean rows cannot be bucketed by it"), suggestion: None });
            }
        }
        if !problems.is_empty() {
            return Err(problems);
        }
        // Plan every query lazily: rules, casts and dedup are checked, no row is read. Fill
        // values are not known before the data is: typed nulls stand in for them.
        let fills: BTreeMap<String, ScalarValue> = self
            .columns
            .iter()
            .filter(|c| !matches!(c.nulls, NullPolicy::Keep | NullPolicy::Reject))
            .filter_map(|c| ScalarValue::try_from(c.data_type.clone().unwrap_or(DataType::Utf8)).ok().map(|v| (c.name.clone(), v)))
            .collect();
        if self.hashes_pii() {
            // Planning needs the function's signature, not the key.
            ctx.session.register_udf(hmac_udf(Vec::new()));
        }
        let classified_sql = self.classify_sql(&names, &fills).replace("{input}", &quote_ident(&self.input));
        let classified = match ctx.session.sql(&classified_sql).await {
            Ok(classified) => classified,
            Err(e) => return Err(vec![self.rule_problem(ctx, &names).await.unwrap_or_else(|| StageProblem { file: None, pos: None, message: format!("in the rules: {}", describe_datafusion_error(&e)), suggestion: None })]),
        };
        let classified_name = self.table(ctx, "classified");
        ctx.session.register_table(classified_name.as_str(), classified.into_view()).map_err(|e| problem(e.to_string()))?;
        let (valid, rejects) = self.lazy_outputs(ctx, &names, &quote_ident(&classified_name)).await.map_err(|e| problem(e.message))?;
        let clean = self.deduplicated(ctx, valid).await.map_err(|e| problem(e.message))?;
        let quality = quality_frame(ctx.session, ctx, &StageMetrics::new()).await.map_err(|e| problem(e.message))?;
        Ok(vec![
            StageResult { name: ctx.stage_name.to_string(), frame: clean },
            StageResult { name: format!("{}_rejects", ctx.stage_name), frame: rejects },
            StageResult { name: format!("{}_data_quality", ctx.stage_name), frame: quality },
        ])
    }

    async fn run(&self, ctx: &StageContext<'_>) -> Result<StageOutput, StageFailure> {
        let session = ctx.session;
        let input = session.table(self.input.as_str()).await?;
        let names: Vec<String> = input.schema().fields().iter().map(|f| f.name().clone()).collect();
        if let Some(env) = &self.pii_key_env {
            if self.hashes_pii() {
                let key = std::env::var(env).ok().filter(|k| !k.is_empty()).ok_or_else(|| StageFailure {
                    message: format!("the PII key variable `{env}` is not set; export it (the HMAC key for `pii: hash` columns) and rerun"),
                })?;
                session.register_udf(hmac_udf(key.into_bytes()));
            }
        }
        let mut phases = super::Phases::start(ctx.stage_name);
        let fills = self.fill_values(session).await?;
        let classified_sql = self.classify_sql(&names, &fills).replace("{input}", &quote_ident(&self.input));
        // Lazy: classifying is cheap next to writing every row twice (typed and as read), so
        // the counts, the clean rows and the rejects each classify the input as they scan it.
        let classified = session.sql(&classified_sql).await?;
        let classified_name = self.table(ctx, "classified");
        session.register_table(classified_name.as_str(), classified.into_view())?;
        let classified_q = quote_ident(&classified_name);

        // Counted on the input itself, not on the classified rows, so the accounting below can
        // catch a classification that lost or repeated a row.
        let rows_in = count(session, &format!("SELECT COUNT(*) FROM {}", quote_ident(&self.input))).await?;
        // One scan counts the valid rows (no reason) and the rejects by reason.
        let mut rows_valid = 0;
        let mut metrics = StageMetrics::new();
        let mut reasons: Vec<(String, i64)> = Vec::new();
        let reason_batches = session
            .sql(&format!("SELECT __reject_reason, COUNT(*) FROM {classified_q} GROUP BY 1 ORDER BY 1 NULLS FIRST"))
            .await?
            .collect()
            .await?;
        for batch in &reason_batches {
            for row in 0..batch.num_rows() {
                let reason = ScalarValue::try_from_array(batch.column(0), row)?;
                let n = match ScalarValue::try_from_array(batch.column(1), row)? {
                    ScalarValue::Int64(Some(n)) => n,
                    _ => 0,
                };
                if reason.is_null() {
                    rows_valid = n;
                } else {
                    reasons.push((reason.to_string(), n));
                }
            }
        }
        let rows_rejected: i64 = reasons.iter().map(|(_, n)| n).sum();
        phases.done("rows counted and classified");

        let (valid, rejects) = self.lazy_outputs(ctx, &names, &classified_q).await?;
        // The valid rows bound the rows dedup keeps: they size the buckets.
        let clean = self.materialized_clean(ctx, valid, usize::try_from(rows_valid).unwrap_or(0)).await?;
        let rows_out = clean.clone().count().await? as i64;
        phases.done("clean rows deduplicated");
        // rows_in = rows_out + rows_rejected + rows_deduplicated holds when every input row was
        // classified exactly once (valid + rejected = in) and dedup only removed rows.
        if rows_in != rows_valid + rows_rejected || rows_out > rows_valid {
            return Err(StageFailure {
                message: format!(
                    "row accounting failed: rows_in {rows_in}, classified {} (valid {rows_valid} + rejected {rows_rejected}), rows_out {rows_out} after dedup of the valid rows",
                    rows_valid + rows_rejected
                ),
            });
        }
        let rows_deduplicated = rows_valid - rows_out;
        metrics.insert("rows_in".into(), rows_in);
        metrics.insert("rows_out".into(), rows_out);
        metrics.insert("rows_rejected".into(), rows_rejected);
        metrics.insert("rows_deduplicated".into(), rows_deduplicated);
        for (reason, n) in &reasons {
            metrics.insert(format!("rejected:{reason}"), *n);
        }
        tracing::info!(stage = ctx.stage_name, rows_in, rows_out, rows_rejected, rows_deduplicated, "clean stage accounted for every row");
        self.run_tests(ctx, &clean, rows_out, &mut metrics).await?;

        let quality = quality_frame(session, ctx, &metrics).await?;
        Ok(StageOutput::new(
            vec![
                StageResult { name: ctx.stage_name.to_string(), frame: clean },
                StageResult { name: format!("{}_rejects", ctx.stage_name), frame: rejects },
                StageResult { name: format!("{}_data_quality", ctx.stage_name), frame: quality },
            ],
            metrics,
        ))
    }
}

impl CleanStage {
    /// Runs the data tests on the clean rows. Every outcome is recorded as the metric
    /// `test:<name>` (failing rows); an error-severity failure fails the stage.
    async fn run_tests(&self, ctx: &StageContext<'_>, clean: &DataFrame, rows_out: i64, metrics: &mut StageMetrics) -> Result<(), StageFailure> {
        if self.tests.is_empty() {
            return Ok(());
        }
        let session = ctx.session;
        let table = self.table(ctx, "clean");
        session.register_table(table.as_str(), clean.clone().into_view())?;
        let table_q = quote_ident(&table);
        // Sample keys name the failing rows: the dedup key if there is one, else the first column.
        let key_columns: Vec<String> = match self.dedup.as_ref().filter(|d| !d.key.is_empty()) {
            Some(d) => d.key.iter().map(|k| k.value.clone()).collect(),
            None => clean.schema().fields().first().map(|f| vec![f.name().clone()]).unwrap_or_default(),
        };
        let mut failures = Vec::new();
        for (test, threshold) in &self.tests {
            let (failing, sample_sql) = match test {
                DataTest::RowCount { min, max, .. } => {
                    let outside = min.is_some_and(|m| rows_out < m as i64) || max.is_some_and(|m| rows_out > m as i64);
                    (i64::from(outside), None)
                }
                DataTest::Unique { columns, .. } => {
                    let cols: Vec<String> = columns.iter().map(|c| quote_ident(c)).collect();
                    let groups = format!("SELECT {cols}, COUNT(*) AS __n FROM {table_q} GROUP BY {cols} HAVING COUNT(*) > 1", cols = cols.join(", "));
                    let failing = count(session, &format!("SELECT CAST(COALESCE(SUM(__n), 0) AS BIGINT) FROM ({groups})")).await?;
                    (failing, Some(format!("SELECT {cols} FROM ({groups}) ORDER BY {cols} LIMIT 5", cols = cols.join(", "))))
                }
                other => {
                    let Some(rows) = other.failing_rows_sql(&table_q) else { continue };
                    let failing = count(session, &format!("SELECT COUNT(*) FROM ({rows})")).await?;
                    let keys: Vec<String> = key_columns.iter().map(|c| quote_ident(c)).collect();
                    (failing, Some(format!("SELECT {keys} FROM ({rows}) ORDER BY {keys} LIMIT 5", keys = keys.join(", "))))
                }
            };
            let name = test.name();
            metrics.insert(format!("test:{name}"), failing);
            // row_count fails on the condition itself, whatever the threshold says.
            let failed = match test {
                DataTest::RowCount { .. } => failing > 0,
                _ => threshold.breached(failing),
            };
            if !failed {
                continue;
            }
            let sample = match sample_sql {
                Some(sql) if failing > 0 => sample_keys(session, &sql).await?,
                _ => String::new(),
            };
            let what = match test {
                DataTest::RowCount { min, max, .. } => format!("{rows_out} rows, expected {}", bounds(min.map(|m| m as f64), max.map(|m| m as f64))),
                _ => format!("{failing} failing rows{sample}"),
            };
            let columns = test.columns();
            let on = if columns.is_empty() { format!("table `{}`", ctx.stage_name) } else { format!("table `{}` column `{}`", ctx.stage_name, columns.join("`, `")) };
            let message = format!("data test `{name}` on {on}: {what}");
            match test.severity() {
                Severity::Warn => tracing::warn!(stage = ctx.stage_name, "{message} (severity warn: the run goes on)"),
                Severity::Error => failures.push(message),
            }
        }
        if failures.is_empty() { Ok(()) } else { Err(StageFailure { message: failures.join("; ") }) }
    }

    /// Every original column as read (PII dropped or hashed), and why, where and when.
    fn rejects_sql(&self, names: &[String], classified_q: &str, ctx: &StageContext<'_>) -> String {
        let mut columns: Vec<String> =
            names.iter().enumerate().filter_map(|(i, name)| self.output_column(name, &format!("\"__raw_{i}\""))).collect();
        columns.push("__reject_reason AS _reject_reason".to_string());
        columns.push(format!("{} AS _stage", literal(&ScalarValue::Utf8(Some(ctx.stage_name.to_string())))));
        columns.push(format!("{} AS _run_id", literal(&ScalarValue::Utf8(Some(ctx.run_id.to_string())))));
        format!("SELECT {} FROM {classified_q} WHERE __reject_reason IS NOT NULL", columns.join(", "))
    }

    /// The valid rows (typed, PII handled, not yet deduplicated) and the rejects, as lazy
    /// frames over the classified rows.
    async fn lazy_outputs(&self, ctx: &StageContext<'_>, names: &[String], classified_q: &str) -> Result<(DataFrame, DataFrame), StageFailure> {
        let session = ctx.session;
        let output_columns: Vec<String> = names.iter().filter_map(|n| self.output_column(n, &quote_ident(n))).collect();
        let valid = session.sql(&format!("SELECT {} FROM {classified_q} WHERE __reject_reason IS NULL", output_columns.join(", "))).await?;
        let rejects = session.sql(&self.rejects_sql(names, classified_q, ctx)).await?;
        Ok((valid, rejects))
    }

    /// `valid` deduplicated as declared, lazily.
    async fn deduplicated(&self, ctx: &StageContext<'_>, valid: DataFrame) -> Result<DataFrame, StageFailure> {
        let Some(dedup) = &self.dedup else {
            return Ok(valid);
        };
        let mut clean = valid;
        if dedup.exact {
            clean = clean.distinct()?;
        }
        if !dedup.key.is_empty() {
            let session = ctx.session;
            let all: Vec<String> = clean.schema().fields().iter().map(|f| quote_ident(f.name())).collect();
            let valid_name = self.table(ctx, "valid");
            session.register_table(valid_name.as_str(), clean.into_view())?;
            let keys: Vec<String> = dedup.key.iter().map(|k| quote_ident(k)).collect();
            let direction = if dedup.keep == Keep::Latest { "DESC" } else { "ASC" };
            let order = dedup.order_by.as_ref().map(|o| format!("{} {direction} NULLS LAST, ", quote_ident(o))).unwrap_or_default();
            // Ties on the ordering column are broken by every column, so the kept row never
            // depends on how the input was partitioned.
            clean = session
                .sql(&format!(
                    "SELECT {cols} FROM (SELECT *, ROW_NUMBER() OVER (PARTITION BY {keys} ORDER BY {order}{cols}) AS __rank FROM {valid}) WHERE __rank = 1",
                    cols = all.join(", "),
                    keys = keys.join(", "),
                    valid = quote_ident(&valid_name),
                ))
                .await?;
        }
        Ok(clean)
    }

    /// Whether the rows dedup compares always share their bucket of `bucket_by`: exact dedup
    /// compares every column, dedup by key the key's columns. Then the rows can be deduplicated
    /// a bucket at a time.
    fn dedups_within_buckets(&self, bucket_by: &str) -> bool {
        self.dedup.as_ref().is_some_and(|d| if d.key.is_empty() { d.exact } else { d.key.iter().any(|k| k.value == bucket_by) })
    }

    /// The clean rows, computed once: deduplicated, then held or written to the scratch folder,
    /// in buckets of `bucket_by` where the rows are that many
    /// ([`StageContext::materialize_bucketed`]).
    ///
    /// Where duplicates share their bucket, the valid rows are written in buckets first and
    /// deduplicated a bucket at a time, `--threads` buckets at once, each into its bucket's
    /// file: no table then holds every row's key. At 100M demo lines the exact dedup over all of
    /// them spilled 7.2 GB and merged it back (the clean stage 124.8 s); a bucket at a time it
    /// spills nothing (76.0 s, the same rows).
    async fn materialized_clean(&self, ctx: &StageContext<'_>, valid: DataFrame, rows_valid: usize) -> Result<DataFrame, StageFailure> {
        let buckets = self.bucket_by.as_deref().and_then(|key| ctx.bucket_count(valid.schema().inner(), rows_valid).map(|n| (key, n)));
        match buckets {
            Some((key, buckets)) if self.dedups_within_buckets(key) => {
                let valid = ctx.write_buckets("valid", valid, key, buckets).await?;
                let clean = self.deduplicated(ctx, valid).await?;
                let clean = ctx.write_buckets("clean", clean, key, buckets).await?;
                ctx.drop_scratch("valid").map_err(|message| StageFailure { message })?;
                tracing::info!(stage = ctx.stage_name, key, buckets, "valid rows deduplicated a bucket at a time: duplicates share their bucket");
                Ok(clean)
            }
            Some((key, buckets)) => ctx.write_buckets("clean", self.deduplicated(ctx, valid).await?, key, buckets).await,
            None => ctx.materialize("clean", self.deduplicated(ctx, valid).await?).await,
        }
    }
}

fn bounds(min: Option<f64>, max: Option<f64>) -> String {
    match (min, max) {
        (Some(a), Some(b)) => format!("between {a} and {b}"),
        (Some(a), None) => format!("at least {a}"),
        (None, Some(b)) => format!("at most {b}"),
        (None, None) => "any".to_string(),
    }
}

/// ` (sample keys: 1, 2, 3)` from the first column(s) of the rows a query returns.
async fn sample_keys(session: &SessionContext, sql: &str) -> Result<String, StageFailure> {
    let batches = session.sql(sql).await?.collect().await?;
    let mut keys = Vec::new();
    for batch in &batches {
        for row in 0..batch.num_rows() {
            let parts: Vec<String> = (0..batch.num_columns())
                .map(|c| ScalarValue::try_from_array(batch.column(c), row).map(|v| if v.is_null() { "NULL".to_string() } else { v.to_string() }))
                .collect::<Result<_, _>>()?;
            keys.push(parts.join("/"));
        }
    }
    Ok(if keys.is_empty() { String::new() } else { format!(" (sample keys: {})", keys.join(", ")) })
}

async fn quality_frame(session: &SessionContext, ctx: &StageContext<'_>, metrics: &StageMetrics) -> Result<DataFrame, StageFailure> {
    let rows: Vec<String> = metrics
        .iter()
        .map(|(metric, value)| {
            format!(
                "({}, {}, {}, CAST({value} AS BIGINT))",
                literal(&ScalarValue::Utf8(Some(ctx.stage_name.to_string()))),
                literal(&ScalarValue::Utf8(Some(ctx.run_id.to_string()))),
                literal(&ScalarValue::Utf8(Some(metric.clone())))
            )
        })
        .collect();
    // With no metrics yet (planning), the same columns and no rows.
    let sql = if rows.is_empty() {
        "SELECT CAST(NULL AS VARCHAR) AS stage, CAST(NULL AS VARCHAR) AS run_id, CAST(NULL AS VARCHAR) AS metric, CAST(NULL AS BIGINT) AS value WHERE FALSE".to_string()
    } else {
        format!("SELECT column1 AS stage, column2 AS run_id, column3 AS metric, column4 AS value FROM (VALUES {})", rows.join(", "))
    };
    Ok(session.sql(&sql).await?)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hex(bytes: &[u8]) -> String {
        bytes.iter().map(|b| format!("{b:02x}")).collect()
    }

    #[test]
    fn hmac_sha256_matches_rfc_4231() {
        // Test case 2 of RFC 4231.
        assert_eq!(
            hex(&hmac_sha256(b"Jefe", b"what do ya want for nothing?")),
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
        // Test case 6: a key longer than the block is hashed first.
        assert_eq!(
            hex(&hmac_sha256(&[0xaa; 131], b"Test Using Larger Than Block-Size Key - Hash Key First")),
            "60e431591ee0b67f0d8a26aacbf5b77f8e0bc6213728c5140546040f0ee37f54"
        );
    }

    #[test]
    fn identifiers_and_literals_are_quoted() {
        assert_eq!(quote_ident("we\"ird"), "\"we\"\"ird\"");
        assert_eq!(literal(&ScalarValue::Utf8(Some("it's".into()))), "'it''s'");
    }
}
