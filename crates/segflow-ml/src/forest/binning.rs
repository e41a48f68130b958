//! Quantile binning of the feature matrix, done once per fit.
//!
//! Every feature is mapped to at most `max_bins` `u8` codes, stored row-major (see
//! [`BinnedFeatures::codes`] for why). Codes `0..n_value_bins` are value
//! bins in increasing order; code `n_value_bins` is the feature's missing bin, holding the NaNs.
//! Bin `b` holds the values `x` with `upper_edges[b - 1] < x <= upper_edges[b]`, so a split
//! "codes `<= b` go left" is the same as the raw-value test `x <= upper_edges[b]` and the tree can
//! store real thresholds. Edges are midpoints between neighbouring training values (as
//! scikit-learn's trees place thresholds), so unseen values between them are split halfway.
//!
//! NaN rule: the missing bin sorts after every value bin, so a split always sends NaN to the
//! right child, in training and in prediction (`NaN <= t` is false).

use ndarray::ArrayView2;
use rayon::prelude::*;

/// The binned training matrix plus the edges needed to turn a bin split into a threshold.
pub(super) struct BinnedFeatures {
    pub(super) n_features: usize,
    /// Row-major codes: the code of row `r`, feature `f` is `codes[r * n_features + f]`.
    /// Each tree copies the codes of the rows it drew (a row's codes are one contiguous slice)
    /// and keeps them next to each other as its nodes split (`tree.rs`), so a histogram pass
    /// reads a node's rows in one sequential sweep and builds the histograms of every feature
    /// the split examines.
    pub(super) codes: Vec<u8>,
    /// Per feature, the upper edge of every value bin but the last (which is unbounded).
    pub(super) upper_edges: Vec<Vec<f64>>,
}

impl BinnedFeatures {
    /// Bins every column of `x`. `max_bins` (2..=256, checked by the params) counts the missing
    /// bin too when the column has NaNs, so every code fits in a `u8`.
    pub(super) fn new(x: ArrayView2<'_, f64>, max_bins: usize) -> Self {
        let n_rows = x.nrows();
        let per_feature: Vec<(Vec<f64>, Vec<u8>)> = (0..x.ncols())
            .into_par_iter()
            .map(|feature| {
                let column = x.column(feature);
                let has_missing = column.iter().any(|v| v.is_nan());
                let value_bin_limit = max_bins - usize::from(has_missing);
                let edges = quantile_edges(column.iter().copied(), value_bin_limit);
                let missing_code = edges.len() + 1; // one more value bin than edges
                let codes = column
                    .iter()
                    .map(|&v| {
                        if v.is_nan() {
                            missing_code as u8
                        } else {
                            // Number of edges strictly below v = index of the bin whose
                            // half-open range (edge[b-1], edge[b]] contains v.
                            edges.partition_point(|&edge| edge < v) as u8
                        }
                    })
                    .collect();
                (edges, codes)
            })
            .collect();
        let n_features = per_feature.len();
        let mut codes = vec![0u8; n_rows * n_features];
        for (feature, (_, feature_codes)) in per_feature.iter().enumerate() {
            for (row, &code) in feature_codes.iter().enumerate() {
                codes[row * n_features + feature] = code;
            }
        }
        let upper_edges = per_feature.into_iter().map(|(edges, _)| edges).collect();
        BinnedFeatures {
            n_features,
            codes,
            upper_edges,
        }
    }

    /// The codes of one row, one per feature.
    pub(super) fn row(&self, row: usize) -> &[u8] {
        &self.codes[row * self.n_features..(row + 1) * self.n_features]
    }

    /// The raw-value threshold equivalent to "codes `<= bin` go left". Splitting after the last
    /// value bin separates only the NaNs, so every real value must go left: `f64::MAX` rather
    /// than infinity keeps the saved JSON model valid (serde_json cannot write infinities).
    pub(super) fn threshold(&self, feature: usize, bin: u8) -> f64 {
        self.upper_edges[feature]
            .get(usize::from(bin))
            .copied()
            .unwrap_or(f64::MAX)
    }
}

/// Edges of at most `max_value_bins` value bins over the non-NaN values.
///
/// When there are few distinct values every one gets its own bin (binning is lossless); otherwise
/// the edges sit at evenly spaced quantiles, deduplicated so heavy ties cost bins rather than
/// producing empty ones.
fn quantile_edges(values: impl Iterator<Item = f64>, max_value_bins: usize) -> Vec<f64> {
    let mut sorted: Vec<f64> = values.filter(|v| !v.is_nan()).collect();
    sorted.sort_unstable_by(f64::total_cmp);
    let mut distinct = sorted.clone();
    distinct.dedup();
    if distinct.len() <= max_value_bins {
        return distinct
            .windows(2)
            .map(|pair| midpoint(pair[0], pair[1]))
            .collect();
    }
    let n = sorted.len();
    let mut edges: Vec<f64> = Vec::with_capacity(max_value_bins - 1);
    for k in 1..max_value_bins {
        let index = k * n / max_value_bins;
        // Cut between the value below the quantile and the quantile value itself; when both are
        // equal the cut must lie above that value, so it lands at the next distinct value.
        let below = sorted[index - 1];
        let above = match sorted[index..].iter().find(|&&v| v > below) {
            Some(&v) => v,
            None => break,
        };
        let edge = midpoint(below, above);
        if edges.last().is_none_or(|&last| edge > last) {
            edges.push(edge);
        }
    }
    edges
}

/// Midpoint that cannot overflow for huge finite values and never rounds up onto `high`
/// (which would put `high` into the lower bin).
fn midpoint(low: f64, high: f64) -> f64 {
    let mid = low + (high - low) / 2.0;
    let mid = if mid.is_finite() {
        mid
    } else {
        low / 2.0 + high / 2.0
    };
    if mid >= high { low } else { mid }
}
