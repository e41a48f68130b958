//! Segment profiles: who is in each segment, how they rank, and a label people can read.
//!
//! - **Statistics** are of the raw feature values (before imputation and transforms): mean
//!   and median of each numeric feature, the most common level of each one-hot feature.
//! - **Rank** (1 = best) orders segments by the stage's `rank_by`: revenue share (default),
//!   size, mean or median of a column — higher is better — or churn rate, lower is better.
//!   Ties go to the lower cluster index, so ranks are deterministic.
//! - **Labels** come from the centroid's z-scores in the prepared space (the centroid minus
//!   the mean of all customers, over their standard deviation, per prepared column): the
//!   numeric features at least `label_threshold` from the average, strongest first, at most
//!   three, each by its `[low, high]` word, joined with " · "; "typical" when none stands out.
//!   The prepared space is what the model separates segments in, so a label says why a
//!   segment is a segment.

use ndarray::{ArrayView2, Axis};
use serde::Deserialize;

use crate::stage::features::FeatureData;

/// How segments are ranked best → worst.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RankBy {
    /// Share of all revenue (the `revenue` column), higher is better.
    RevenueShare,
    /// Number of customers, higher is better.
    Size,
    /// Churn rate (the `churn_label` column), lower is better.
    ChurnRate,
    /// Mean of a numeric column, higher is better.
    Mean(String),
    /// Median of a numeric column, higher is better.
    Median(String),
}

/// Labels name at most this many features.
const LABEL_WORDS: usize = 3;

pub struct ProfileInput<'a> {
    /// (name, is numeric, (low word, high word)) per declared feature.
    pub features: &'a [(&'a str, bool, (&'a str, &'a str))],
    pub data: &'a FeatureData,
    /// Cluster index of each customer, in `data` order.
    pub labels: &'a [usize],
    pub k: usize,
    pub prepared: ArrayView2<'a, f64>,
    pub prepared_names: &'a [String],
    pub centroids: ArrayView2<'a, f64>,
    pub revenue: Option<&'a str>,
    pub churn_label: Option<&'a str>,
    pub rank_by: &'a RankBy,
    pub label_threshold: f64,
}

#[derive(Debug, Clone, PartialEq)]
pub enum FeatureStats {
    Numeric { mean: Option<f64>, median: Option<f64> },
    Categorical { top: Option<String> },
}

#[derive(Debug, Clone, PartialEq)]
pub struct SegmentProfile {
    /// The cluster index in the fit.
    pub index: usize,
    pub rank: u32,
    pub label: String,
    pub customers: usize,
    pub share: f64,
    pub revenue: Option<f64>,
    pub revenue_share: Option<f64>,
    pub churn_rate: Option<f64>,
    /// The value `rank_by` ranked on.
    pub rank_value: Option<f64>,
    /// Per declared feature.
    pub features: Vec<FeatureStats>,
    /// Per prepared column.
    pub z_scores: Vec<f64>,
}

pub fn profiles(input: &ProfileInput<'_>) -> Vec<SegmentProfile> {
    let n = input.labels.len();
    let members: Vec<Vec<usize>> = {
        let mut m = vec![Vec::new(); input.k];
        for (row, &c) in input.labels.iter().enumerate() {
            m[c].push(row);
        }
        m
    };
    let column_sum = |name: &str, rows: &[usize]| -> Option<f64> {
        let values = input.data.numeric.get(name)?;
        Some(rows.iter().filter_map(|&r| values.get(r).copied().flatten()).sum())
    };
    let all_rows: Vec<usize> = (0..n).collect();
    let total_revenue = input.revenue.and_then(|r| column_sum(r, &all_rows));

    // z-scores of the centroids against all customers, per prepared column.
    let means = input.prepared.mean_axis(Axis(0));
    let stds = input.prepared.std_axis(Axis(0), 0.0);

    let mut out: Vec<SegmentProfile> = members
        .iter()
        .enumerate()
        .map(|(index, rows)| {
            let revenue = input.revenue.and_then(|r| column_sum(r, rows));
            let revenue_share = match (revenue, total_revenue) {
                (Some(part), Some(total)) if total > 0.0 => Some(part / total),
                _ => None,
            };
            let churn_rate = input.churn_label.and_then(|c| mean(input.data.numeric.get(c)?, rows));
            let features = input
                .features
                .iter()
                .map(|(name, numeric, _)| {
                    if *numeric {
                        let values = input.data.numeric.get(*name);
                        FeatureStats::Numeric { mean: values.and_then(|v| mean(v, rows)), median: values.and_then(|v| median(v, rows)) }
                    } else {
                        FeatureStats::Categorical { top: input.data.text.get(*name).and_then(|v| most_common(v, rows)) }
                    }
                })
                .collect();
            let z_scores: Vec<f64> = (0..input.centroids.ncols())
                .map(|j| {
                    let (m, s) = (means.as_ref().map_or(0.0, |m| m[j]), stds[j]);
                    if s > 0.0 { (input.centroids[[index, j]] - m) / s } else { 0.0 }
                })
                .collect();
            let rank_value = match input.rank_by {
                RankBy::RevenueShare => revenue_share,
                RankBy::Size => Some(rows.len() as f64),
                RankBy::ChurnRate => churn_rate,
                RankBy::Mean(column) => input.data.numeric.get(column).and_then(|v| mean(v, rows)),
                RankBy::Median(column) => input.data.numeric.get(column).and_then(|v| median(v, rows)),
            };
            SegmentProfile {
                index,
                rank: 0,
                label: label(input, &z_scores),
                customers: rows.len(),
                share: if n > 0 { rows.len() as f64 / n as f64 } else { 0.0 },
                revenue,
                revenue_share,
                churn_rate,
                rank_value,
                features,
                z_scores,
            }
        })
        .collect();

    // Best first; a segment without a value (no revenue at all) ranks last.
    let lower_is_better = matches!(input.rank_by, RankBy::ChurnRate);
    let mut order: Vec<usize> = (0..out.len()).collect();
    order.sort_by(|&a, &b| {
        let key = |i: usize| out[i].rank_value.filter(|v| v.is_finite());
        match (key(a), key(b)) {
            (Some(x), Some(y)) => {
                let by_value = if lower_is_better { x.total_cmp(&y) } else { y.total_cmp(&x) };
                by_value.then(a.cmp(&b))
            }
            (Some(_), None) => std::cmp::Ordering::Less,
            (None, Some(_)) => std::cmp::Ordering::Greater,
            (None, None) => a.cmp(&b),
        }
    });
    for (position, &i) in order.iter().enumerate() {
        out[i].rank = position as u32 + 1;
    }
    out
}

fn label(input: &ProfileInput<'_>, z_scores: &[f64]) -> String {
    let mut standing_out: Vec<(f64, usize, &str)> = Vec::new();
    for (position, (name, numeric, (low, high))) in input.features.iter().enumerate() {
        if !numeric {
            continue;
        }
        let Some(j) = input.prepared_names.iter().position(|p| p == name) else { continue };
        let z = z_scores[j];
        if z.abs() >= input.label_threshold && z != 0.0 {
            standing_out.push((z.abs(), position, if z > 0.0 { high } else { low }));
        }
    }
    // Strongest first; equal strength in declaration order.
    standing_out.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)));
    let words: Vec<&str> = standing_out.iter().take(LABEL_WORDS).map(|(_, _, w)| *w).collect();
    if words.is_empty() { "typical".to_string() } else { words.join(" · ") }
}

fn mean(values: &[Option<f64>], rows: &[usize]) -> Option<f64> {
    let (sum, count) = rows.iter().filter_map(|&r| values.get(r).copied().flatten()).fold((0.0, 0usize), |(s, c), v| (s + v, c + 1));
    (count > 0).then(|| sum / count as f64)
}

/// The middle value, or the mean of the two middle values.
fn median(values: &[Option<f64>], rows: &[usize]) -> Option<f64> {
    let mut present: Vec<f64> = rows.iter().filter_map(|&r| values.get(r).copied().flatten()).collect();
    if present.is_empty() {
        return None;
    }
    present.sort_by(f64::total_cmp);
    let mid = present.len() / 2;
    Some(if present.len() % 2 == 1 { present[mid] } else { (present[mid - 1] + present[mid]) / 2.0 })
}

/// The most frequent non-null value; ties to the smallest.
fn most_common(values: &[Option<String>], rows: &[usize]) -> Option<String> {
    let mut counts: std::collections::BTreeMap<&str, usize> = std::collections::BTreeMap::new();
    for &r in rows {
        if let Some(Some(v)) = values.get(r) {
            *counts.entry(v.as_str()).or_default() += 1;
        }
    }
    let best = counts.values().copied().max()?;
    counts.into_iter().find(|(_, c)| *c == best).map(|(v, _)| v.to_string())
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::sync::Arc;

    use datafusion::arrow::array::Int64Array;
    use ndarray::array;

    use super::*;

    fn data() -> FeatureData {
        let mut numeric = BTreeMap::new();
        numeric.insert("monetary".to_string(), vec![Some(100.0), Some(300.0), Some(10.0), Some(20.0), None]);
        numeric.insert("recency".to_string(), vec![Some(5.0), Some(3.0), Some(200.0), Some(150.0), Some(180.0)]);
        numeric.insert("churned".to_string(), vec![Some(0.0), Some(0.0), Some(1.0), Some(0.0), Some(1.0)]);
        let mut text = BTreeMap::new();
        text.insert("region".to_string(), vec![Some("north".to_string()), Some("south".to_string()), Some("west".to_string()), Some("west".to_string()), None]);
        FeatureData { ids: Arc::new(Int64Array::from(vec![1, 2, 3, 4, 5])), numeric, text }
    }

    #[test]
    fn profiles_rank_by_revenue_share_and_name_what_stands_out() {
        let data = data();
        // Prepared space: monetary and recency, already standardised-ish.
        let prepared = array![[1.0, -1.0], [1.2, -1.1], [-0.8, 0.9], [-0.7, 0.8], [-0.7, 0.4]];
        let labels = [0, 0, 1, 1, 1];
        let centroids = array![[1.1, -1.05], [-0.733, 0.7]];
        let names = vec!["monetary".to_string(), "recency".to_string()];
        let features = [("monetary", true, ("low value", "high value")), ("recency", true, ("recent", "lapsed")), ("region", false, ("", ""))];
        let out = profiles(&ProfileInput {
            features: &features,
            data: &data,
            labels: &labels,
            k: 2,
            prepared: prepared.view(),
            prepared_names: &names,
            centroids: centroids.view(),
            revenue: Some("monetary"),
            churn_label: Some("churned"),
            rank_by: &RankBy::RevenueShare,
            label_threshold: 0.5,
        });
        assert_eq!(out[0].rank, 1, "segment 0 holds 400 of 430 revenue");
        assert_eq!(out[1].rank, 2);
        assert_eq!(out[0].customers, 2);
        assert!((out[0].revenue_share.unwrap() - 400.0 / 430.0).abs() < 1e-12);
        assert_eq!(out[1].churn_rate, Some(2.0 / 3.0));
        assert_eq!(out[0].label, "high value · recent");
        assert_eq!(out[1].label, "low value · lapsed");
        assert_eq!(out[1].features[0], FeatureStats::Numeric { mean: Some(15.0), median: Some(15.0) }, "the null monetary is left out");
        assert_eq!(out[1].features[2], FeatureStats::Categorical { top: Some("west".to_string()) });
    }

    #[test]
    fn churn_rate_ranks_lowest_first_and_ties_keep_cluster_order() {
        let data = data();
        let prepared = array![[0.0], [0.0], [0.0], [0.0], [0.0]];
        let centroids = array![[0.0], [0.0], [0.0]];
        let names = vec!["monetary".to_string()];
        let features = [("monetary", true, ("low", "high"))];
        let labels = [0, 1, 2, 0, 2];
        let out = profiles(&ProfileInput {
            features: &features,
            data: &data,
            labels: &labels,
            k: 3,
            prepared: prepared.view(),
            prepared_names: &names,
            centroids: centroids.view(),
            revenue: None,
            churn_label: Some("churned"),
            rank_by: &RankBy::ChurnRate,
            label_threshold: 0.5,
        });
        // churn: cluster 0 → 0/2, cluster 1 → 0/1, cluster 2 → 2/2.
        assert_eq!(out.iter().map(|p| p.rank).collect::<Vec<_>>(), vec![1, 2, 3]);
        assert!(out.iter().all(|p| p.label == "typical"), "no feature stands out when every z-score is 0");
    }
}
