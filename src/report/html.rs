//! `report.html`: one self-contained page per run — inline SVG charts and CSS, no script, no
//! network — drawn from the run's evaluation metrics and its stages' data-quality counts, so
//! it can be rebuilt from the committed `evaluation.json` and `run_results.json` alone.
//!
//! Every chart is a `<figure class="chart" id="…">`: the browser test
//! (`tests/browser/report_in_chromium.sh`) checks each is laid out with a non-zero size.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use super::svg::{self, Mark, Series, escape, figure};
use super::{KeyValue, Metric, fixed};

/// A stage's counts from the run record (rows in, rejected by reason, …).
pub type StageCounts = (String, String, BTreeMap<String, i64>);

fn key_int(m: &Metric, key: &str) -> Option<i64> {
    m.id.keys.iter().find(|(k, _)| *k == key).and_then(|(_, v)| match v {
        KeyValue::Int(i) => Some(*i),
        _ => None,
    })
}

fn key_text<'a>(m: &'a Metric, key: &str) -> Option<&'a str> {
    m.id.keys.iter().find(|(k, _)| *k == key).and_then(|(_, v)| match v {
        KeyValue::Text(t) => Some(t.as_str()),
        _ => None,
    })
}

struct View<'a> {
    metrics: &'a [Metric],
}

impl<'a> View<'a> {
    fn of(&self, stage: &str, model: Option<&str>, split: &str, metric: &str) -> Vec<&'a Metric> {
        self.metrics.iter().filter(|m| m.id.stage == stage && model.is_none_or(|x| m.id.model == x) && m.id.split == split && m.id.metric == metric).collect()
    }

    fn headline(&self, stage: &str, model: &str, split: &str, metric: &str) -> Option<f64> {
        self.of(stage, Some(model), split, metric).into_iter().find(|m| m.id.keys.is_empty()).and_then(|m| m.value)
    }

    fn models(&self, stage: &str) -> Vec<&'a str> {
        let mut models: Vec<&str> = self.metrics.iter().filter(|m| m.id.stage == stage).map(|m| m.id.model.as_str()).collect();
        models.sort();
        models.dedup();
        models
    }
}

const STYLE: &str = "body{font-family:sans-serif;margin:24px;color:#222;max-width:1200px}h1{font-size:22px}h2{font-size:18px;margin-top:32px;border-bottom:1px solid #ddd}\
figure.chart{display:inline-block;vertical-align:top;margin:8px 16px 16px 0}figcaption{font-size:13px;font-weight:bold;margin-bottom:4px}\
table{border-collapse:collapse;font-size:13px;margin:8px 0}td,th{border:1px solid #ddd;padding:3px 8px;text-align:right}th{background:#f4f4f4}td:first-child,th:first-child{text-align:left}\
p.note{color:#666;font-size:13px}";

/// The whole page. `stages` are (name, kind, counts) in run order, from the run record.
pub fn render(pipeline: &str, run_date: &str, metrics: &[Metric], stages: &[StageCounts]) -> String {
    let view = View { metrics };
    let mut body = String::new();
    for (stage, kind, counts) in stages {
        match kind.as_str() {
            "clean" => data_quality(&mut body, stage, counts),
            "segment" => segment(&mut body, &view, stage),
            "churn" => churn(&mut body, &view, stage),
            _ => {}
        }
    }
    format!(
        "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n<title>segflow report: {p}, {d}</title>\n<style>{STYLE}</style>\n</head>\n<body>\n<h1>segflow report: {p}, run date {d}</h1>\n<p class=\"note\">Drawn from the run's evaluation table (<code>evaluation.json</code> beside this file) and its stages' counts. Values rounded to 6 significant digits.</p>\n{body}</body>\n</html>\n",
        p = escape(pipeline),
        d = escape(run_date)
    )
}

fn data_quality(out: &mut String, stage: &str, counts: &BTreeMap<String, i64>) {
    let _ = writeln!(out, "<h2>Data quality: stage <code>{}</code></h2>", escape(stage));
    let order = ["rows_in", "rows_out", "rows_rejected", "rows_deduplicated"];
    let mut bars: Vec<(String, f64)> = order.iter().filter_map(|k| counts.get(*k).map(|v| (k.to_string(), *v as f64))).collect();
    bars.extend(counts.iter().filter(|(k, _)| k.starts_with("rejected:")).map(|(k, v)| (k.clone(), *v as f64)));
    out.push_str(&figure(&format!("data-quality-{stage}"), &format!("{stage}: where every input row went"), &svg::bar_chart("rows by outcome", "rows", &bars)));
    let _ = write!(out, "<table><tr><th>count</th><th>rows</th></tr>");
    for (k, v) in counts {
        let _ = write!(out, "<tr><td>{}</td><td>{v}</td></tr>", escape(k));
    }
    out.push_str("</table>\n");
}

fn segment(out: &mut String, view: &View<'_>, stage: &str) {
    let _ = writeln!(out, "<h2>Segments: stage <code>{}</code></h2>", escape(stage));
    for model in view.models(stage) {
        let chosen = view.headline(stage, model, "all", "k");
        let curve = |metric: &str| -> Vec<(f64, f64)> {
            let mut points: Vec<(f64, f64)> = view.of(stage, Some(model), "all", metric).iter().filter_map(|m| Some((key_int(m, "k")? as f64, m.value?))).collect();
            points.sort_by(|a, b| a.0.total_cmp(&b.0));
            points
        };
        let marks = |label: &str| chosen.map(|k| vec![Mark::VLine(k, format!("{label} k = {}", fixed(k)))]).unwrap_or_default();
        let (inertia, silhouette) = (curve("inertia"), curve("silhouette"));
        if inertia.len() > 1 {
            let series = [Series { name: "inertia".into(), points: inertia, markers: true }];
            out.push_str(&figure(&format!("k-curve-{stage}"), &format!("{stage} ({model}): elbow — inertia by k"), &svg::line_chart("inertia by k", "k (segments)", "inertia (sum of squared distances)", &series, &marks("chosen"), None, None)));
            let series = [Series { name: "silhouette".into(), points: silhouette, markers: true }];
            out.push_str(&figure(&format!("silhouette-{stage}"), &format!("{stage} ({model}): silhouette by k"), &svg::line_chart("silhouette by k", "k (segments)", "silhouette", &series, &marks("chosen"), None, None)));
        } else {
            let _ = writeln!(out, "<p class=\"note\">k was fixed at {}: no curve over k.</p>", chosen.map(fixed).unwrap_or_default());
        }
        let mut sizes: Vec<(i64, f64)> = view.of(stage, Some(model), "all", "customers").iter().filter_map(|m| Some((key_int(m, "segment")?, m.value?))).collect();
        sizes.sort_by_key(|s| s.0);
        let bars: Vec<(String, f64)> = sizes.iter().map(|(s, n)| (format!("segment {s}"), *n)).collect();
        out.push_str(&figure(&format!("segment-sizes-{stage}"), &format!("{stage}: customers per segment"), &svg::bar_chart("customers per segment", "customers", &bars)));

        let z = view.of(stage, Some(model), "all", "centroid_z_score");
        let mut features: Vec<&str> = Vec::new();
        for m in &z {
            if let Some(f) = key_text(m, "feature")
                && !features.contains(&f)
            {
                features.push(f);
            }
        }
        let segments: Vec<i64> = sizes.iter().map(|s| s.0).collect();
        let cells: Vec<Vec<Option<f64>>> = segments
            .iter()
            .map(|s| features.iter().map(|f| z.iter().find(|m| key_int(m, "segment") == Some(*s) && key_text(m, "feature") == Some(*f)).and_then(|m| m.value)).collect())
            .collect();
        let rows: Vec<String> = segments.iter().map(|s| format!("segment {s}")).collect();
        let cols: Vec<String> = features.iter().map(|f| f.to_string()).collect();
        out.push_str(&figure(&format!("centroids-{stage}"), &format!("{stage}: centroid z-scores (how far each segment sits from the average customer)"), &svg::grid("centroid z-scores", "segment", "feature", &rows, &cols, &cells, true)));

        let moved: Vec<&Metric> = ["customers_moved", "customers_new", "customers_gone"].iter().flat_map(|m| view.of(stage, Some(model), "all", m)).collect();
        if moved.is_empty() {
            let _ = writeln!(out, "<p class=\"note\">No migration: this is the stage's first run with these features.</p>");
        } else {
            let label = |s: Option<i64>, none: &str| s.map(|s| format!("segment {s}")).unwrap_or_else(|| none.to_string());
            let mut from: Vec<Option<i64>> = moved.iter().map(|m| key_int(m, "previous_segment")).collect();
            let mut to: Vec<Option<i64>> = moved.iter().map(|m| key_int(m, "segment")).collect();
            for list in [&mut from, &mut to] {
                list.sort_by_key(|s| (s.is_none(), *s));
                list.dedup();
            }
            let cells: Vec<Vec<Option<f64>>> = from.iter().map(|f| to.iter().map(|t| moved.iter().find(|m| key_int(m, "previous_segment") == *f && key_int(m, "segment") == *t).and_then(|m| m.value)).collect()).collect();
            let rows: Vec<String> = from.iter().map(|f| label(*f, "new customers")).collect();
            let cols: Vec<String> = to.iter().map(|t| label(*t, "gone")).collect();
            out.push_str(&figure(&format!("migration-{stage}"), &format!("{stage}: customers by previous and current segment"), &svg::grid("migration matrix", "previous segment", "current segment", &rows, &cols, &cells, false)));
        }
    }
}

fn churn(out: &mut String, view: &View<'_>, stage: &str) {
    let _ = writeln!(out, "<h2>Churn: stage <code>{}</code></h2>", escape(stage));
    let models = view.models(stage);
    let _ = write!(out, "<table><tr><th>model</th><th>split</th>");
    let headline = ["roc_auc", "pr_auc", "log_loss", "brier_score", "precision", "recall", "f1"];
    for h in headline {
        let _ = write!(out, "<th>{h}</th>");
    }
    out.push_str("</tr>");
    for model in &models {
        for split in ["train", "test", "oob", "cv_mean"] {
            if headline.iter().all(|h| view.headline(stage, model, split, h).is_none()) {
                continue;
            }
            let _ = write!(out, "<tr><td>{} </td><td>{split}</td>", escape(model));
            for h in headline {
                let _ = write!(out, "<td>{}</td>", view.headline(stage, model, split, h).map(fixed).unwrap_or_default());
            }
            out.push_str("</tr>");
        }
    }
    out.push_str("</table>\n");

    let curve = |model: &str, metric: &str| -> Vec<(f64, f64)> {
        let mut points: Vec<(f64, f64)> = view.of(stage, Some(model), "test", metric).iter().filter_map(|m| Some((key_int(m, "bin")? as f64 / 100.0, m.value?))).collect();
        points.sort_by(|a, b| a.0.total_cmp(&b.0));
        points
    };
    let per_model = |metric: &str, auc: &str| -> Vec<Series> {
        models
            .iter()
            .map(|m| Series { name: format!("{m} (AUC {})", view.headline(stage, m, "test", auc).map(fixed).unwrap_or_default()), points: curve(m, metric), markers: false })
            .collect()
    };
    out.push_str(&figure(&format!("roc-{stage}"), &format!("{stage}: ROC curve, test split"), &svg::line_chart("ROC curve", "false-positive rate", "true-positive rate", &per_model("roc_tpr", "roc_auc"), &[Mark::Diagonal], Some((0.0, 1.0)), Some((0.0, 1.0)))));
    out.push_str(&figure(&format!("pr-{stage}"), &format!("{stage}: precision-recall curve, test split"), &svg::line_chart("precision-recall curve", "recall", "precision", &per_model("pr_precision", "pr_auc"), &[], Some((0.0, 1.0)), Some((0.0, 1.0)))));

    let by_decile = |metric: &str| -> Vec<Series> {
        models
            .iter()
            .map(|m| {
                let mut points: Vec<(f64, f64)> = view.of(stage, Some(m), "test", metric).iter().filter_map(|x| Some((key_int(x, "decile")? as f64, x.value?))).collect();
                points.sort_by(|a, b| a.0.total_cmp(&b.0));
                Series { name: m.to_string(), points, markers: true }
            })
            .collect()
    };
    out.push_str(&figure(&format!("lift-{stage}"), &format!("{stage}: lift by risk decile, test split (1 = riskiest tenth)"), &svg::line_chart("lift by decile", "risk decile", "lift", &by_decile("lift"), &[], None, None)));
    out.push_str(&figure(&format!("gains-{stage}"), &format!("{stage}: cumulative gains, test split"), &svg::line_chart("cumulative gains", "risk decile", "share of churners caught", &by_decile("cumulative_gain"), &[], Some((1.0, 10.0)), Some((0.0, 1.0)))));

    let calibration: Vec<Series> = models
        .iter()
        .map(|m| {
            let means = view.of(stage, Some(m), "test", "mean_probability");
            let observed = view.of(stage, Some(m), "test", "observed_churn_rate");
            let points = means.iter().filter_map(|x| {
                let bin = key_int(x, "bin")?;
                let y = observed.iter().find(|o| key_int(o, "bin") == Some(bin))?;
                Some((x.value?, y.value?))
            });
            Series { name: m.to_string(), points: points.collect(), markers: true }
        })
        .collect();
    out.push_str(&figure(&format!("calibration-{stage}"), &format!("{stage}: calibration, test split (10 bins)"), &svg::line_chart("calibration", "mean predicted probability", "observed churn rate", &calibration, &[Mark::Diagonal], Some((0.0, 1.0)), Some((0.0, 1.0)))));

    let forest = models.iter().copied().find(|m| *m == "random_forest").or(models.first().copied()).unwrap_or_default();
    let mut importance: Vec<(String, f64)> = view.of(stage, Some(forest), "test", "permutation_importance").iter().filter_map(|m| Some((key_text(m, "feature")?.to_string(), m.value?))).collect();
    importance.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
    out.push_str(&figure(&format!("importance-{stage}"), &format!("{stage}: permutation importance ({forest}, drop in test ROC AUC)"), &svg::bar_chart("feature importance", "drop in ROC AUC when shuffled", &importance)));

    let cell = |metric: &str| view.headline(stage, forest, "test", metric);
    let cells = vec![vec![cell("true_negatives"), cell("false_positives")], vec![cell("false_negatives"), cell("true_positives")]];
    let threshold = view.headline(stage, forest, "train", "threshold").map(fixed).unwrap_or_default();
    out.push_str(&figure(
        &format!("confusion-{stage}"),
        &format!("{stage}: confusion matrix ({forest}, test split, threshold {threshold})"),
        &svg::grid("confusion matrix", "actual", "predicted", &["stayed".to_string(), "churned".to_string()], &["stayed".to_string(), "churned".to_string()], &cells, false),
    ));

    let mut by_segment: Vec<(i64, f64)> = view.of(stage, Some(forest), "score", "mean_churn_probability").iter().filter_map(|m| Some((key_int(m, "segment")?, m.value?))).collect();
    if !by_segment.is_empty() {
        by_segment.sort_by_key(|s| s.0);
        let bars: Vec<(String, f64)> = by_segment.iter().map(|(s, p)| (format!("segment {s}"), *p)).collect();
        out.push_str(&figure(&format!("churn-by-segment-{stage}"), &format!("{stage}: mean churn probability by segment"), &svg::bar_chart("churn by segment", "mean churn probability", &bars)));
    }
}

/// `segflow report html RUN_DIR`: rebuilds a run's page from what it committed under the
/// output root RUN_DIR — `reports/run_date=D/evaluation.json`, and the stages' counts from
/// the run record `_segflow/runs/<run id>/run_results.json` of the run that wrote it. `run_date`:
/// the latest when not given.
pub fn rebuild(run_dir: &std::path::Path, run_date: Option<&str>) -> Result<String, String> {
    let reports = run_dir.join(super::REPORTS_DIR);
    let partition = match run_date {
        Some(d) => reports.join(format!("run_date={d}")),
        None => {
            let mut dates: Vec<String> = std::fs::read_dir(&reports)
                .map_err(|e| format!("{}: {e} (is {} a run's output root?)", reports.display(), run_dir.display()))?
                .filter_map(|e| e.ok()?.file_name().to_str().map(str::to_string))
                .filter(|n| n.starts_with("run_date="))
                .collect();
            dates.sort();
            reports.join(dates.pop().ok_or_else(|| format!("{}: no run_date=… partition", reports.display()))?)
        }
    };
    let read = |path: std::path::PathBuf| std::fs::read_to_string(&path).map_err(|e| format!("{}: {e}", path.display()));
    let manifest: serde_json::Value = serde_json::from_str(&read(partition.join("_manifest.json"))?).map_err(|e| format!("{}: {e}", partition.join("_manifest.json").display()))?;
    let run_id = manifest.get("run_id").and_then(|v| v.as_str()).ok_or_else(|| format!("{}: no run_id", partition.join("_manifest.json").display()))?;
    let date = manifest.get("run_date").and_then(|v| v.as_str()).unwrap_or_default().to_string();
    let metrics = super::from_json(&read(partition.join(super::JSON_FILE))?, &partition.join(super::JSON_FILE))?;
    let record_path = run_dir.join(crate::sink::SEGFLOW_DIR).join("runs").join(crate::sink::file_safe(run_id)).join(crate::run::RESULTS_FILE);
    let record: serde_json::Value = serde_json::from_str(&read(record_path.clone())?).map_err(|e| format!("{}: {e}", record_path.display()))?;
    let pipeline = record.get("pipeline").and_then(|v| v.as_str()).unwrap_or_default().to_string();
    let stages: Vec<StageCounts> = record
        .get("stages")
        .and_then(|v| v.as_array())
        .map(|stages| {
            stages
                .iter()
                .map(|s| {
                    let text = |k: &str| s.get(k).and_then(|v| v.as_str()).unwrap_or_default().to_string();
                    let counts = s.get("metrics").and_then(|m| m.as_object()).map(|m| m.iter().filter_map(|(k, v)| Some((k.clone(), v.as_i64()?))).collect()).unwrap_or_default();
                    (text("name"), text("kind"), counts)
                })
                .collect()
        })
        .unwrap_or_default();
    Ok(render(&pipeline, &date, &metrics, &stages))
}
