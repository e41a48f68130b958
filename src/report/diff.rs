//! `segflow report diff OLD NEW [--fail-on RULE]…`: two runs' evaluations side by side.
//!
//! OLD and NEW are `evaluation.json` reports or `evaluation` Parquet tables (a file, or a
//! partition folder such as `output/demo/evaluation/run_date=2025-01-01`). Metrics are matched
//! by stage, model, split, metric and keys; the table lists old, new and delta for every metric
//! that changed (`--all`: every metric), then the metrics that appeared or vanished.
//!
//! A rule `[stage.][model.]split.metric OP NUMBER` (OP one of `<`, `<=`, `>`, `>=`) is a gate
//! on the **delta** (new − old) of the matching headline metrics (those without keys):
//! `--fail-on 'test.roc_auc < -0.01'` fails when any model's test ROC AUC fell by more than
//! 0.01. A matched metric that vanished, or became undefined, breaches the rule too; a rule
//! that matches no metric at all is a usage error (a gate that checks nothing is a mistake).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::Path;

use datafusion::prelude::{ParquetReadOptions, SessionContext};

use super::{Metric, MetricId, fixed};

#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Op {
    Lt,
    Le,
    Gt,
    Ge,
}

impl Op {
    fn holds(self, left: f64, right: f64) -> bool {
        match self {
            Op::Lt => left < right,
            Op::Le => left <= right,
            Op::Gt => left > right,
            Op::Ge => left >= right,
        }
    }
}

/// A `--fail-on` rule.
#[derive(Debug, Clone, PartialEq)]
pub struct Rule {
    pub text: String,
    /// `[stage, model, split, metric]` parts from the right: the last is the metric.
    selector: Vec<String>,
    op: Op,
    bound: f64,
}

impl Rule {
    pub fn parse(text: &str) -> Result<Rule, String> {
        let usage = || format!("--fail-on `{text}`: expected `[stage.][model.]split.metric OP NUMBER` with OP one of < <= > >=, e.g. 'test.roc_auc < -0.01'");
        let (at, op_len, op) = ["<=", ">=", "<", ">"]
            .iter()
            .find_map(|op| {
                text.find(op).map(|at| {
                    let parsed = match *op {
                        "<=" => Op::Le,
                        ">=" => Op::Ge,
                        "<" => Op::Lt,
                        _ => Op::Gt,
                    };
                    (at, op.len(), parsed)
                })
            })
            .ok_or_else(usage)?;
        let selector: Vec<String> = text[..at].trim().split('.').map(|p| p.trim().to_string()).collect();
        let bound: f64 = text[at + op_len..].trim().parse().map_err(|_| usage())?;
        if selector.len() < 2 || selector.len() > 4 || selector.iter().any(|p| p.is_empty()) || !bound.is_finite() {
            return Err(usage());
        }
        Ok(Rule { text: text.to_string(), selector, op, bound })
    }

    fn matches(&self, id: &MetricId) -> bool {
        if !id.keys.is_empty() {
            return false;
        }
        let parts = [id.stage.as_str(), id.model.as_str(), id.split.as_str(), id.metric.as_str()];
        self.selector.iter().rev().zip(parts.iter().rev()).all(|(want, have)| want == have)
    }
}

/// One metric present in both runs.
#[derive(Debug, Clone, PartialEq)]
pub struct Change {
    pub id: MetricId,
    pub old: Option<f64>,
    pub new: Option<f64>,
}

impl Change {
    pub fn delta(&self) -> Option<f64> {
        Some(self.new? - self.old?)
    }

    /// Equal after the reports' rounding, so a diff of the Parquet tables and one of the text
    /// reports agree.
    fn unchanged(&self) -> bool {
        self.old.map(fixed) == self.new.map(fixed)
    }
}

#[derive(Debug, Clone, Default)]
pub struct Diff {
    pub both: Vec<Change>,
    pub appeared: Vec<Metric>,
    pub vanished: Vec<Metric>,
}

pub fn diff(old: &[Metric], new: &[Metric]) -> Diff {
    let key = |m: &Metric| m.id.describe();
    let old_by: BTreeMap<String, &Metric> = old.iter().map(|m| (key(m), m)).collect();
    let new_by: BTreeMap<String, &Metric> = new.iter().map(|m| (key(m), m)).collect();
    let mut out = Diff::default();
    // In the new report's (sorted) order, then what vanished in the old one's.
    for m in new {
        match old_by.get(&key(m)) {
            Some(o) => out.both.push(Change { id: m.id.clone(), old: o.value, new: m.value }),
            None => out.appeared.push(m.clone()),
        }
    }
    out.vanished = old.iter().filter(|m| !new_by.contains_key(&key(m))).cloned().collect();
    out
}

/// What each rule found wrong; `Err` when a rule matches no metric in either run.
pub fn breaches(diff: &Diff, rules: &[Rule]) -> Result<Vec<String>, String> {
    let mut found = Vec::new();
    for rule in rules {
        let mut matched = false;
        for change in diff.both.iter().filter(|c| rule.matches(&c.id)) {
            matched = true;
            match change.delta() {
                Some(delta) if rule.op.holds(delta, rule.bound) => found.push(format!(
                    "{}: {} changed by {} ({} → {})",
                    rule.text,
                    change.id.describe(),
                    signed(delta),
                    fixed(change.old.unwrap_or(f64::NAN)),
                    fixed(change.new.unwrap_or(f64::NAN))
                )),
                Some(_) => {}
                None if change.old.is_some() => found.push(format!("{}: {} is undefined in the new run", rule.text, change.id.describe())),
                None => {}
            }
        }
        for gone in diff.vanished.iter().filter(|m| rule.matches(&m.id)) {
            matched = true;
            found.push(format!("{}: {} vanished", rule.text, gone.id.describe()));
        }
        matched |= diff.appeared.iter().any(|m| rule.matches(&m.id));
        if !matched {
            return Err(format!("--fail-on `{}` matches no metric without keys in either run (e.g. `test.roc_auc`, `churn.random_forest.test.roc_auc`)", rule.text));
        }
    }
    Ok(found)
}

fn signed(v: f64) -> String {
    let text = fixed(v);
    if v > 0.0 { format!("+{text}") } else { text }
}

/// The aligned table: metric, old, new, delta. Colour (red for a fall, green for a rise) only
/// when `colour` — i.e. on a terminal.
pub fn render(diff: &Diff, all: bool, colour: bool) -> String {
    let shown: Vec<&Change> = diff.both.iter().filter(|c| all || !c.unchanged()).collect();
    let unchanged = diff.both.iter().filter(|c| c.unchanged()).count();
    let cell = |v: Option<f64>| v.map(fixed).unwrap_or_else(|| "null".to_string());
    let rows: Vec<[String; 4]> = shown.iter().map(|c| [c.id.describe(), cell(c.old), cell(c.new), c.delta().map(signed).unwrap_or_default()]).collect();
    let header = ["metric".to_string(), "old".to_string(), "new".to_string(), "delta".to_string()];
    let mut widths = [0usize; 4];
    for row in rows.iter().chain(std::iter::once(&header)) {
        for (w, text) in widths.iter_mut().zip(row) {
            *w = (*w).max(text.chars().count());
        }
    }
    let mut out = String::new();
    let line = |row: &[String; 4], delta: Option<f64>| {
        let pad = |text: &str, width: usize| format!("{text}{}", " ".repeat(width - text.chars().count()));
        let lpad = |text: &str, width: usize| format!("{}{text}", " ".repeat(width - text.chars().count()));
        let delta_text = lpad(&row[3], widths[3]);
        let delta_text = match (colour, delta) {
            (true, Some(d)) if d < 0.0 => format!("\x1b[31m{delta_text}\x1b[0m"),
            (true, Some(d)) if d > 0.0 => format!("\x1b[32m{delta_text}\x1b[0m"),
            _ => delta_text,
        };
        format!("{}  {}  {}  {}", pad(&row[0], widths[0]), lpad(&row[1], widths[1]), lpad(&row[2], widths[2]), delta_text).trim_end().to_string()
    };
    if rows.is_empty() {
        out.push_str("no metric changed\n");
    } else {
        let _ = writeln!(out, "{}", line(&header, None));
        for (row, change) in rows.iter().zip(&shown) {
            let _ = writeln!(out, "{}", line(row, change.delta()));
        }
    }
    if !all && unchanged > 0 {
        let _ = writeln!(out, "({unchanged} metrics unchanged; --all lists them)");
    }
    for (title, metrics) in [("appeared", &diff.appeared), ("vanished", &diff.vanished)] {
        if !metrics.is_empty() {
            let _ = writeln!(out, "{} {title}:", metrics.len());
            for m in metrics {
                let _ = writeln!(out, "  {} = {}", m.id.describe(), cell(m.value));
            }
        }
    }
    out
}

/// Reads a report: `evaluation.json`, or an `evaluation` Parquet file or partition folder.
pub async fn load(path: &Path) -> Result<Vec<Metric>, String> {
    let shown = path.display();
    if !path.exists() {
        return Err(format!("{shown}: no such file or folder"));
    }
    let json = if path.is_dir() { path.join(super::JSON_FILE) } else { path.to_path_buf() };
    if json.extension().is_some_and(|e| e == "json") && json.is_file() {
        let text = std::fs::read_to_string(&json).map_err(|e| format!("{}: {e}", json.display()))?;
        return super::from_json(&text, &json);
    }
    if path.is_dir() && std::fs::read_dir(path).map(|mut d| d.any(|e| e.is_ok_and(|e| e.file_name().to_string_lossy().starts_with("run_date=")))).unwrap_or(false) {
        return Err(format!("{shown} holds several run dates; give one partition, e.g. {shown}/run_date=2025-01-01"));
    }
    let ctx = SessionContext::new();
    let options = ParquetReadOptions { file_extension: ".parquet", ..Default::default() };
    let frame = ctx.read_parquet(path.to_string_lossy().as_ref(), options).await.map_err(|e| format!("{shown}: not an evaluation report or table: {}", crate::engine::describe_datafusion_error(&e)))?;
    let batches = frame.collect().await.map_err(|e| format!("{shown}: {}", crate::engine::describe_datafusion_error(&e)))?;
    let mut metrics = super::metrics_from_batches(&batches).map_err(|e| format!("{shown}: {e}"))?;
    // Rounded as the text reports are, so a diff of the tables equals a diff of the reports.
    for m in &mut metrics {
        m.value = m.value.and_then(|v| fixed(v).parse().ok());
    }
    Ok(metrics)
}

#[cfg(test)]
mod tests {
    use super::super::KeyValue;
    use super::*;

    fn m(model: &str, split: &str, metric: &str, value: Option<f64>) -> Metric {
        Metric { id: MetricId { stage: "churn".into(), model: model.into(), split: split.into(), metric: metric.into(), keys: vec![] }, value }
    }

    #[test]
    fn rules_read_like_people_write_them() {
        let rule = Rule::parse("test.roc_auc < -0.01").unwrap();
        assert_eq!(rule.selector, vec!["test", "roc_auc"]);
        assert_eq!((rule.op, rule.bound), (Op::Lt, -0.01));
        assert_eq!(Rule::parse("churn.random_forest.test.log_loss >= 0.05").unwrap().op, Op::Ge);
        for bad in ["roc_auc < 0", "test.roc_auc", "test.roc_auc < x", "a.b.c.d.e < 1", "test..auc < 1"] {
            assert!(Rule::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn a_fall_beyond_the_tolerance_breaches_and_a_small_one_does_not() {
        let old = vec![m("random_forest", "test", "roc_auc", Some(0.84)), m("decision_tree", "test", "roc_auc", Some(0.82))];
        let new = vec![m("random_forest", "test", "roc_auc", Some(0.835)), m("decision_tree", "test", "roc_auc", Some(0.79))];
        let d = diff(&old, &new);
        let found = breaches(&d, &[Rule::parse("test.roc_auc < -0.01").unwrap()]).unwrap();
        assert_eq!(found.len(), 1, "{found:?}");
        assert!(found[0].contains("decision_tree test roc_auc changed by -0.03"), "{found:?}");
        assert!(breaches(&d, &[Rule::parse("random_forest.test.roc_auc < -0.01").unwrap()]).unwrap().is_empty());
        assert!(breaches(&d, &[Rule::parse("test.roc_aux < -0.01").unwrap()]).is_err(), "a rule that checks nothing is refused");
    }

    #[test]
    fn vanished_and_undefined_metrics_breach_a_rule_that_names_them() {
        let old = vec![m("random_forest", "test", "roc_auc", Some(0.84)), m("random_forest", "oob", "roc_auc", Some(0.8))];
        let new = vec![m("random_forest", "test", "roc_auc", None)];
        let d = diff(&old, &new);
        assert_eq!(d.vanished.len(), 1);
        let found = breaches(&d, &[Rule::parse("test.roc_auc < -0.01").unwrap(), Rule::parse("oob.roc_auc < -0.01").unwrap()]).unwrap();
        assert_eq!(found.len(), 2, "{found:?}");
    }

    #[test]
    fn the_table_is_aligned_and_lists_what_appeared() {
        let mut keyed = m("random_forest", "test", "lift", Some(2.5));
        keyed.id.keys.push(("decile", KeyValue::Int(1)));
        let old = vec![m("random_forest", "test", "roc_auc", Some(0.84)), m("random_forest", "test", "f1", Some(0.6))];
        let new = vec![m("random_forest", "test", "roc_auc", Some(0.85)), m("random_forest", "test", "f1", Some(0.6)), keyed];
        let text = render(&diff(&old, &new), false, false);
        assert_eq!(
            text,
            "metric                             old   new  delta\n\
             churn random_forest test roc_auc  0.84  0.85  +0.01\n\
             (1 metrics unchanged; --all lists them)\n\
             1 appeared:\n  churn random_forest test lift decile=1 = 2.5\n"
        );
        assert!(!text.contains('\x1b'), "no colour off a terminal");
        assert!(render(&diff(&old, &new), false, true).contains("\x1b[32m"), "a rise is green on a terminal");
    }
}
