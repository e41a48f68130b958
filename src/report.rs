//! Evaluation reports people can diff: `evaluation.json` and `evaluation.md`, written by every
//! run that evaluates a model, and `segflow report diff`.
//!
//! A run commits them to `<output_root>/reports/run_date=<D>/` with its tables. They hold the
//! run's `evaluation` table without its run id, sorted by stage, model, split, metric and keys,
//! with every value rounded to 6 significant digits and written in plain decimal: the same
//! input and seed give byte-identical files, and `git diff` between two runs shows only the
//! metrics that moved.

pub mod diff;
pub mod html;
mod svg;

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::Path;

use datafusion::arrow::array::{AsArray, RecordBatch};
use datafusion::arrow::datatypes::{Float64Type, Int64Type};
use serde_json::{Map, Value};

/// The folder under an output root where runs keep their reports.
pub const REPORTS_DIR: &str = "reports";
pub const JSON_FILE: &str = "evaluation.json";
pub const MARKDOWN_FILE: &str = "evaluation.md";
pub const HTML_FILE: &str = "report.html";
pub const FORMAT: &str = "segflow.evaluation";
pub const FORMAT_VERSION: u64 = 1;

/// The keys that, with stage, model, split and metric, name one measurement.
pub const KEYS: &[&str] = &["k", "segment", "previous_segment", "decile", "bin", "threshold", "feature"];

/// A key's value: integers, a float (threshold) or text (feature).
#[derive(Debug, Clone, PartialEq, PartialOrd)]
pub enum KeyValue {
    Int(i64),
    Float(f64),
    Text(String),
}

impl KeyValue {
    fn render(&self) -> String {
        match self {
            KeyValue::Int(i) => i.to_string(),
            KeyValue::Float(f) => fixed(*f),
            KeyValue::Text(t) => t.clone(),
        }
    }
}

/// Which measurement a row is: everything but its value.
#[derive(Debug, Clone, PartialEq, PartialOrd)]
pub struct MetricId {
    pub stage: String,
    pub model: String,
    pub split: String,
    pub metric: String,
    /// (key, value) for the keys that are set, in [`KEYS`] order.
    pub keys: Vec<(&'static str, KeyValue)>,
}

impl MetricId {
    /// `stage model split metric [key=value …]`, as the diff prints it.
    pub fn describe(&self) -> String {
        let mut text = format!("{} {} {} {}", self.stage, self.model, self.split, self.metric);
        for (key, value) in &self.keys {
            let _ = write!(text, " {key}={}", value.render());
        }
        text
    }

    fn sort_key(&self) -> (String, String, String, String, Vec<(usize, SortableKey)>) {
        let keys = self.keys.iter().map(|(k, v)| (KEYS.iter().position(|x| x == k).unwrap_or(KEYS.len()), SortableKey::from(v))).collect();
        (self.stage.clone(), self.model.clone(), self.split.clone(), self.metric.clone(), keys)
    }
}

/// A total order over key values (floats by `total_cmp`), so sorting never depends on input order.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
enum SortableKey {
    Int(i64),
    Float(u64),
    Text(String),
}

impl From<&KeyValue> for SortableKey {
    fn from(v: &KeyValue) -> Self {
        match v {
            KeyValue::Int(i) => SortableKey::Int(*i),
            // The IEEE bits with the sign flipped so the integer order is the numeric order.
            KeyValue::Float(f) => {
                let bits = f.to_bits();
                SortableKey::Float(if bits >> 63 == 1 { !bits } else { bits | (1 << 63) })
            }
            KeyValue::Text(t) => SortableKey::Text(t.clone()),
        }
    }
}

/// One measurement of a report.
#[derive(Debug, Clone, PartialEq)]
pub struct Metric {
    pub id: MetricId,
    /// `None`: the metric is undefined for this run (a ROC AUC of one class, say).
    pub value: Option<f64>,
}

/// `v` rounded to 6 significant digits, in plain decimal (no exponent, no trailing zeros):
/// stable across platforms and runs, and readable in a diff.
pub fn fixed(v: f64) -> String {
    if !v.is_finite() {
        return "null".to_string();
    }
    if v == 0.0 {
        return "0".to_string();
    }
    let rounded: f64 = format!("{v:.5e}").parse().unwrap_or(v);
    let text = format!("{rounded}");
    if text == "-0" { "0".to_string() } else { text }
}

/// The rows of `evaluation` batches (the table's documented schema), sorted.
pub fn metrics_from_batches(batches: &[RecordBatch]) -> Result<Vec<Metric>, String> {
    let mut out = Vec::new();
    for batch in batches {
        let text = |name: &str| -> Result<Vec<Option<String>>, String> {
            let column = batch.column_by_name(name).ok_or_else(|| format!("not an evaluation table: no `{name}` column"))?;
            let column = datafusion::arrow::compute::cast(column, &datafusion::arrow::datatypes::DataType::Utf8).map_err(|e| e.to_string())?;
            Ok(column.as_string::<i32>().iter().map(|v| v.map(str::to_string)).collect())
        };
        let (stage, model, split, metric, feature) = (text("stage")?, text("model")?, text("split")?, text("metric")?, text("feature")?);
        let int = |name: &str| -> Result<Vec<Option<i64>>, String> {
            let column = batch.column_by_name(name).ok_or_else(|| format!("not an evaluation table: no `{name}` column"))?;
            let column = datafusion::arrow::compute::cast(column, &datafusion::arrow::datatypes::DataType::Int64).map_err(|e| e.to_string())?;
            Ok(column.as_primitive::<Int64Type>().iter().collect())
        };
        let float = |name: &str| -> Result<Vec<Option<f64>>, String> {
            let column = batch.column_by_name(name).ok_or_else(|| format!("not an evaluation table: no `{name}` column"))?;
            let column = datafusion::arrow::compute::cast(column, &datafusion::arrow::datatypes::DataType::Float64).map_err(|e| e.to_string())?;
            Ok(column.as_primitive::<Float64Type>().iter().collect())
        };
        let (k, segment, previous_segment, decile, bin) = (int("k")?, int("segment")?, int("previous_segment")?, int("decile")?, int("bin")?);
        let (threshold, value) = (float("threshold")?, float("value")?);
        for r in 0..batch.num_rows() {
            let mut keys = Vec::new();
            for (name, column) in [("k", &k), ("segment", &segment), ("previous_segment", &previous_segment), ("decile", &decile), ("bin", &bin)] {
                if let Some(v) = column[r] {
                    keys.push((name, KeyValue::Int(v)));
                }
            }
            if let Some(t) = threshold[r] {
                keys.push(("threshold", KeyValue::Float(t)));
            }
            if let Some(f) = &feature[r] {
                keys.push(("feature", KeyValue::Text(f.clone())));
            }
            let required = |column: &Vec<Option<String>>, name: &str| column[r].clone().ok_or_else(|| format!("evaluation row {r} has no `{name}`"));
            out.push(Metric {
                id: MetricId { stage: required(&stage, "stage")?, model: required(&model, "model")?, split: required(&split, "split")?, metric: required(&metric, "metric")?, keys },
                value: value[r].filter(|v| v.is_finite()),
            });
        }
    }
    sort(&mut out);
    Ok(out)
}

fn sort(metrics: &mut [Metric]) {
    metrics.sort_by_cached_key(|m| m.id.sort_key());
}

/// `evaluation.json`: `{"format", "format_version", "metrics": [...]}`, each metric an object
/// with sorted keys and only the keys it has; values as [`fixed`] numbers or `null`.
pub fn to_json(metrics: &[Metric]) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "{{\n  \"format\": \"{FORMAT}\",\n  \"format_version\": {FORMAT_VERSION},\n  \"metrics\": [");
    for (i, m) in metrics.iter().enumerate() {
        // Keys in alphabetical order, written by hand so the number format is ours.
        let mut fields: BTreeMap<&str, String> = BTreeMap::new();
        fields.insert("stage", json_string(&m.id.stage));
        fields.insert("model", json_string(&m.id.model));
        fields.insert("split", json_string(&m.id.split));
        fields.insert("metric", json_string(&m.id.metric));
        for (key, value) in &m.id.keys {
            fields.insert(key, match value {
                KeyValue::Text(t) => json_string(t),
                other => other.render(),
            });
        }
        fields.insert("value", m.value.map(fixed).unwrap_or_else(|| "null".to_string()));
        let body: Vec<String> = fields.iter().map(|(k, v)| format!("\"{k}\": {v}")).collect();
        let comma = if i + 1 < metrics.len() { "," } else { "" };
        let _ = writeln!(out, "    {{{}}}{comma}", body.join(", "));
    }
    out.push_str("  ]\n}\n");
    out
}

fn json_string(s: &str) -> String {
    Value::String(s.to_string()).to_string()
}

/// Reads `evaluation.json` back.
pub fn from_json(text: &str, shown: &Path) -> Result<Vec<Metric>, String> {
    let root: Value = serde_json::from_str(text).map_err(|e| format!("{}: not JSON: {e}", shown.display()))?;
    if root.get("format").and_then(Value::as_str) != Some(FORMAT) {
        return Err(format!("{}: not an evaluation report (no `format: {FORMAT}`)", shown.display()));
    }
    if root.get("format_version").and_then(Value::as_u64) != Some(FORMAT_VERSION) {
        return Err(format!("{}: evaluation report version {:?}; this segflow reads version {FORMAT_VERSION}", shown.display(), root.get("format_version")));
    }
    let rows = root.get("metrics").and_then(Value::as_array).ok_or_else(|| format!("{}: no `metrics` list", shown.display()))?;
    let mut out = Vec::new();
    for (i, row) in rows.iter().enumerate() {
        let object: &Map<String, Value> = row.as_object().ok_or_else(|| format!("{}: metric {i} is not an object", shown.display()))?;
        let text = |name: &str| object.get(name).and_then(Value::as_str).map(str::to_string).ok_or_else(|| format!("{}: metric {i} has no `{name}`", shown.display()));
        let mut keys = Vec::new();
        for key in KEYS {
            match (object.get(*key), *key) {
                (None | Some(Value::Null), _) => {}
                (Some(Value::String(t)), "feature") => keys.push((*key, KeyValue::Text(t.clone()))),
                (Some(v), "threshold") => keys.push((*key, KeyValue::Float(v.as_f64().ok_or_else(|| format!("{}: metric {i}: `threshold` is not a number", shown.display()))?))),
                (Some(v), _) => keys.push((*key, KeyValue::Int(v.as_i64().ok_or_else(|| format!("{}: metric {i}: `{key}` is not an integer", shown.display()))?))),
            }
        }
        out.push(Metric {
            id: MetricId { stage: text("stage")?, model: text("model")?, split: text("split")?, metric: text("metric")?, keys },
            value: object.get("value").and_then(Value::as_f64),
        });
    }
    sort(&mut out);
    Ok(out)
}

/// `evaluation.md`: per stage, the headline metrics (no keys) as a model × split table per
/// metric, then every keyed metric as one line each. Same rounding as the JSON.
pub fn to_markdown(pipeline: &str, run_date: &str, metrics: &[Metric]) -> String {
    let mut out = format!("# Evaluation: {pipeline}, run date {run_date}\n\nValues rounded to 6 significant digits; `null` is undefined for that split.\n");
    let mut stages: Vec<&str> = metrics.iter().map(|m| m.id.stage.as_str()).collect();
    stages.dedup();
    for stage in stages {
        let of_stage: Vec<&Metric> = metrics.iter().filter(|m| m.id.stage == stage).collect();
        let _ = write!(out, "\n## Stage `{stage}`\n\n| model | split | metric | value |\n|---|---|---|---:|\n");
        for m in of_stage.iter().filter(|m| m.id.keys.is_empty()) {
            let _ = writeln!(out, "| {} | {} | {} | {} |", m.id.model, m.id.split, m.id.metric, m.value.map(fixed).unwrap_or_else(|| "null".to_string()));
        }
        let keyed: Vec<&&Metric> = of_stage.iter().filter(|m| !m.id.keys.is_empty()).collect();
        if !keyed.is_empty() {
            let _ = write!(out, "\n| model | split | metric | keys | value |\n|---|---|---|---|---:|\n");
            for m in keyed {
                let keys: Vec<String> = m.id.keys.iter().map(|(k, v)| format!("{k}={}", v.render())).collect();
                let _ = writeln!(out, "| {} | {} | {} | {} | {} |", m.id.model, m.id.split, m.id.metric, keys.join(" "), m.value.map(fixed).unwrap_or_else(|| "null".to_string()));
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fixed_rounds_to_six_significant_digits_in_plain_decimal() {
        assert_eq!(fixed(0.8384828346279485), "0.838483");
        assert_eq!(fixed(113669044.12583469), "113669000");
        assert_eq!(fixed(12894.5), "12894.5");
        assert_eq!(fixed(1e-9), "0.000000001");
        assert_eq!(fixed(-0.0000001), "-0.0000001");
        assert_eq!(fixed(3.0), "3");
        assert_eq!(fixed(-0.0), "0");
        assert_eq!(fixed(f64::NAN), "null");
    }

    fn metric(split: &str, name: &str, keys: Vec<(&'static str, KeyValue)>, value: Option<f64>) -> Metric {
        Metric { id: MetricId { stage: "churn".into(), model: "random_forest".into(), split: split.into(), metric: name.into(), keys }, value }
    }

    #[test]
    fn json_is_sorted_whatever_the_input_order_and_reads_back() {
        let a = vec![
            metric("test", "roc_auc", vec![], Some(0.8384828346279485)),
            metric("test", "lift", vec![("decile", KeyValue::Int(10))], Some(0.1)),
            metric("test", "lift", vec![("decile", KeyValue::Int(2))], Some(1.5)),
            metric("train", "f1", vec![("threshold", KeyValue::Float(0.25))], None),
            metric("test", "permutation_importance", vec![("feature", KeyValue::Text("a \"quoted\" name".into()))], Some(-0.003)),
        ];
        let mut b = a.clone();
        b.reverse();
        let (mut a, mut b) = (a, b);
        sort(&mut a);
        sort(&mut b);
        let text = to_json(&a);
        assert_eq!(text, to_json(&b));
        assert!(text.find("\"decile\": 2").unwrap() < text.find("\"decile\": 10").unwrap(), "keys sort as numbers:\n{text}");
        let back = from_json(&text, Path::new("e.json")).unwrap();
        assert_eq!(back.len(), 5);
        assert_eq!(to_json(&back), text, "rendering what was read gives the same bytes");
    }
}
