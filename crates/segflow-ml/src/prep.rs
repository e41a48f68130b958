//! The fitted feature preparation of the customer-segmentation stage: it turns a per-customer
//! feature table into the numeric matrix k-means clusters, learns its statistics once from the
//! fitting data, is saved in the JSON model file, and is applied unchanged to new customers.
//!
//! # Semantics, and why
//! Each step is fitted on the output of the step before it, as in a scikit-learn `Pipeline`, so
//! that fitting a step and applying it see the same values:
//! 1. **Impute** nulls with a statistic of the fitting data's non-null values (`median`: numpy's
//!    `median`, the mean of the two middle values for an even count; `mean`; `zero`), or refuse
//!    them (`fail`). NaN and ±inf are not nulls: they are refused, since a silently imputed NaN
//!    usually hides a bug upstream.
//! 2. **Winsorize**: clip at the fitting data's quantiles, numpy's default `linear` method
//!    bit for bit (including its two-sided interpolation), so bounds can be checked against
//!    `np.quantile`. Bounds are computed after imputing, so imputed values count.
//! 3. **Transform**: `log1p` (`ln(1 + x)`, needs `x > -1`) or `signed_log1p`
//!    (`sign(x)·ln(1 + |x|)`, any sign) tames the long tails of spend-like features, which would
//!    otherwise dominate Euclidean distances.
//! 4. **Scale** with statistics of the transformed fitting data, as scikit-learn does:
//!    `standardize` is `StandardScaler` (mean, population std, ddof 0, its two-pass variance
//!    with correction term); `robust` is `RobustScaler` (median, IQR = q75 − q25 by the linear
//!    method). A scale that is zero up to roundoff becomes 1 (scikit-learn's rules: a variance
//!    within the two-pass error bound of zero, an IQR below 10·ε), so a constant feature becomes
//!    a constant column instead of a division by zero or amplified roundoff noise.
//!
//! **Categorical** features are one-hot encoded. The `max_levels` most frequent levels of the
//! fitting data keep a column each (ties broken by level name, byte order), in name order, so
//! column order does not depend on the counts. When the fitting data have more levels, one extra
//! column [`OTHER_LEVEL`] collects the rest and any level first seen after fitting. Without that
//! column (every level fitted had its own), an unseen level encodes as all zeros, as scikit-learn's
//! `OneHotEncoder(handle_unknown="ignore")` does: no fitted column describes it. A null category is
//! all zeros too. One-hot columns are not scaled: 0/1 already has the scale of a standardized
//! feature's typical step, and a centroid's value stays readable as a share.
//!
//! # Determinism
//! Sums run sequentially in row order and levels are counted in a `BTreeMap`, so the same data
//! give bit-identical statistics and outputs in every process. (numpy sums pairwise, so means and
//! variances can differ from scikit-learn's in the last bits; quantiles and medians match.)
//!
//! # Saved form
//! [`Preparation`] serialises as `{"features": [...]}`, one [`FittedFeature`] per feature with
//! the field names below; they are the model file format and must stay stable. Loading checks
//! every invariant fitting guarantees (finite statistics, a positive scale, sorted unique
//! levels, ...) so a damaged model file is refused instead of mis-preparing rows. Floats are
//! written by serde_json's shortest round-trip formatting; reading them back exactly needs
//! serde_json's `float_roundtrip` feature (without it, about one value in ten comes back one
//! unit in the last place off).

use std::collections::BTreeMap;
use std::fmt;

use ndarray::{Array2, ArrayView1};
use serde::{Deserialize, Serialize};

/// Level name of the one-hot column that collects the levels without a column of their own.
pub const OTHER_LEVEL: &str = "__other__";

/// A monotone transform applied to a numeric feature after winsorizing, before scaling.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Transform {
    /// The values as they are.
    None,
    /// `ln(1 + x)`; every value must be greater than −1.
    Log1p,
    /// `sign(x)·ln(1 + |x|)`: log-like tails on both sides, defined for every value.
    SignedLog1p,
}

impl Transform {
    fn apply(self, x: f64) -> f64 {
        match self {
            Self::None => x,
            Self::Log1p => x.ln_1p(),
            Self::SignedLog1p => x.signum() * x.abs().ln_1p(),
        }
    }

    fn invert(self, y: f64) -> f64 {
        match self {
            Self::None => y,
            Self::Log1p => y.exp_m1(),
            Self::SignedLog1p => y.signum() * y.abs().exp_m1(),
        }
    }

    /// Whether `x` is in the transform's domain.
    fn accepts(self, x: f64) -> bool {
        self != Self::Log1p || x > -1.0
    }
}

impl fmt::Display for Transform {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::None => "none",
            Self::Log1p => "log1p",
            Self::SignedLog1p => "signed_log1p",
        })
    }
}

/// How a numeric feature is scaled, with statistics of its transformed fitting data.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Scaling {
    /// Not scaled (center 0, scale 1).
    None,
    /// `(x − mean) / std`, population std (ddof 0), as scikit-learn's `StandardScaler`.
    Standardize,
    /// `(x − median) / (q75 − q25)`, as scikit-learn's `RobustScaler`.
    Robust,
}

impl fmt::Display for Scaling {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::None => "none",
            Self::Standardize => "standardize",
            Self::Robust => "robust",
        })
    }
}

/// What replaces a null numeric value.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Impute {
    /// Nulls are an error naming the column and their count.
    Fail,
    /// The median of the fitting data's non-null values.
    Median,
    /// The mean of the fitting data's non-null values.
    Mean,
    /// Zero.
    Zero,
    /// Nulls stay missing: they come out as NaN, for models that treat a missing value as
    /// information of its own (the forest sends NaN down one side of every split). Statistics
    /// (winsor bounds, scaling) are computed over the non-null values. k-means cannot use it.
    Missing,
}

impl fmt::Display for Impute {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Fail => "fail",
            Self::Median => "median",
            Self::Mean => "mean",
            Self::Zero => "zero",
            Self::Missing => "missing",
        })
    }
}

/// Whether a feature (or an input column) holds numbers or categories.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FeatureKind {
    Numeric,
    Categorical,
}

impl fmt::Display for FeatureKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Numeric => "numeric",
            Self::Categorical => "categorical",
        })
    }
}

/// How one input column is to be prepared. Checked by [`validate_specs`] (and again by
/// [`Preparation::fit`]) before any data are read.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum FeatureSpec {
    Numeric {
        /// The input column; also the output column's name.
        name: String,
        transform: Transform,
        /// Lower and upper quantiles of the fitting data to clip at, `0 <= lower < upper <= 1`.
        winsorize: Option<(f64, f64)>,
        scaling: Scaling,
        impute: Impute,
    },
    Categorical {
        /// The input column; output columns are named `name=level`.
        name: String,
        /// How many of the most frequent levels get a one-hot column of their own (>= 1).
        max_levels: usize,
    },
}

impl FeatureSpec {
    pub fn name(&self) -> &str {
        match self {
            Self::Numeric { name, .. } | Self::Categorical { name, .. } => name,
        }
    }

    pub fn kind(&self) -> FeatureKind {
        match self {
            Self::Numeric { .. } => FeatureKind::Numeric,
            Self::Categorical { .. } => FeatureKind::Categorical,
        }
    }
}

/// One input column, borrowed; `None` is a null.
#[derive(Debug, Clone, Copy)]
pub enum FeatureColumn<'a> {
    Numeric(&'a [Option<f64>]),
    Categorical(&'a [Option<&'a str>]),
}

impl FeatureColumn<'_> {
    pub fn len(&self) -> usize {
        match self {
            Self::Numeric(values) => values.len(),
            Self::Categorical(values) => values.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn kind(&self) -> FeatureKind {
        match self {
            Self::Numeric(_) => FeatureKind::Numeric,
            Self::Categorical(_) => FeatureKind::Categorical,
        }
    }
}

impl<'a> FeatureColumn<'a> {
    /// The rows `rows` of this column, to prepare a large table a block at a time (then
    /// [`PrepError::with_row_offset`] keeps row numbers in errors those of the table).
    pub fn rows(&self, rows: std::ops::Range<usize>) -> FeatureColumn<'a> {
        match *self {
            Self::Numeric(values) => Self::Numeric(&values[rows]),
            Self::Categorical(values) => Self::Categorical(&values[rows]),
        }
    }
}

/// Everything that can be wrong with feature specs, input columns or a saved preparation. One
/// variant per rule; the messages are shown to users, so each names the column, says what is
/// wrong (with a count and an example) and what would be valid. Floats print in Rust's `Debug`
/// form (`-1.0`, `1e300`, `NaN`) so that huge values and non-numbers stay short and unambiguous.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum PrepError {
    #[error(
        "no features are listed; the preparation needs at least one numeric or categorical feature"
    )]
    NoFeatures,
    #[error(
        "feature {position} (counted from 0) has an empty name; give every feature the name of \
         its input column"
    )]
    EmptyName { position: usize },
    #[error("feature \"{name}\" is listed {count} times; list each input column once")]
    DuplicateFeature { name: String, count: usize },
    #[error(
        "feature \"{column}\": winsorize quantiles must satisfy 0 <= lower < upper <= 1, got \
         [{lower:?}, {upper:?}]; for example [0.01, 0.99] clips the lowest and the highest 1% \
         of values"
    )]
    InvalidWinsorize {
        column: String,
        lower: f64,
        upper: f64,
    },
    #[error(
        "feature \"{column}\": max_levels must be at least 1, got 0; it is how many of the most \
         frequent levels get a one-hot column of their own"
    )]
    ZeroMaxLevels { column: String },
    #[error(
        "got {got} input columns for {expected} features; pass one column per feature, in the \
         order of the features: {names}"
    )]
    ColumnCountMismatch {
        expected: usize,
        got: usize,
        names: String,
    },
    #[error(
        "column \"{column}\" has {got} rows but column \"{first_column}\" has {expected}; all \
         columns must hold the same rows"
    )]
    LengthMismatch {
        column: String,
        got: usize,
        first_column: String,
        expected: usize,
    },
    #[error(
        "column \"{column}\" was passed as a {got} column but the feature is {expected}; pass \
         its values as {expected} values"
    )]
    KindMismatch {
        column: String,
        expected: FeatureKind,
        got: FeatureKind,
    },
    #[error(
        "the fitting data have no rows; the preparation learns its statistics from at least \
         one row"
    )]
    EmptyInput,
    #[error(
        "column \"{column}\" has {count} null values (the first at row {first_row}, counted from \
         0) and its impute is `fail`; set impute to `median`, `mean` or `zero`, or fill the \
         column before this stage"
    )]
    NullValues {
        column: String,
        count: usize,
        first_row: usize,
    },
    #[error(
        "column \"{column}\": all {rows} values are null, so there is no {impute} to impute them \
         with; use impute `zero`, or drop the feature"
    )]
    AllNull {
        column: String,
        rows: usize,
        impute: Impute,
    },
    #[error(
        "column \"{column}\": all {rows} values are null, so there is no level to one-hot encode; \
         fill the column or drop the feature"
    )]
    NoLevels { column: String, rows: usize },
    #[error(
        "column \"{column}\" has {count} non-finite values (the first at row {first_row}, counted \
         from 0, is {example:?}); every value must be a finite number or null (nulls are imputed)"
    )]
    NonFiniteValues {
        column: String,
        count: usize,
        first_row: usize,
        example: f64,
    },
    #[error(
        "column \"{column}\": log1p needs values greater than -1, but {count} values are <= -1 \
         (the smallest is {min:?}); use transform `signed_log1p` (sign(x)·ln(1+|x|)) for a \
         column that can be negative"
    )]
    Log1pDomain {
        column: String,
        count: usize,
        min: f64,
    },
    #[error(
        "column \"{column}\": the fitted {statistic} is not a finite number, the values are too \
         large for 64-bit floating point; use transform `signed_log1p` or rescale the column \
         before this stage"
    )]
    NonFiniteStatistic {
        column: String,
        statistic: &'static str,
    },
    #[error(
        "column \"{column}\": {count} values are too far from the fitting data to be prepared \
         (the first at row {first_row}, counted from 0, is {example:?}; with center {center:?} \
         and scale {scale:?} it is not a finite number); winsorize the column to bound it"
    )]
    Overflow {
        column: String,
        count: usize,
        first_row: usize,
        example: f64,
        center: f64,
        scale: f64,
    },
    #[error(
        "the row has {got} values but the preparation has {expected} output columns ({names}); \
         pass one value per output column, in that order"
    )]
    RowWidthMismatch {
        expected: usize,
        got: usize,
        names: String,
    },
    #[error(
        "the value {value:?} for output column \"{column}\" is not a finite number; every value \
         must be finite"
    )]
    NonFiniteRowValue { column: String, value: f64 },
    #[error(
        "two output columns would be named \"{name}\"; rename the feature or the level so that \
         every output column name is unique"
    )]
    DuplicateOutputName { name: String },
    #[error(
        "the saved preparation is invalid: {reason}; the model file was changed by hand or is \
         damaged, so fit the model again"
    )]
    InvalidModel { reason: String },
}

impl PrepError {
    /// The error of rows `offset..` of a table prepared a block at a time, with its row
    /// numbers counted from the table's first row (counts stay those of the block).
    pub fn with_row_offset(mut self, offset: usize) -> PrepError {
        match &mut self {
            PrepError::NullValues { first_row, .. } | PrepError::NonFiniteValues { first_row, .. } | PrepError::Overflow { first_row, .. } => *first_row += offset,
            _ => {}
        }
        self
    }
}

/// Every error in `specs` that can be found without data, in spec order: no specs, empty or
/// duplicate names, invalid winsorize quantiles, `max_levels` 0. Empty when the specs are valid.
/// For validating a pipeline's configuration before reading any data.
pub fn validate_specs(specs: &[FeatureSpec]) -> Vec<PrepError> {
    let mut errors = Vec::new();
    if specs.is_empty() {
        errors.push(PrepError::NoFeatures);
    }
    let mut name_counts: BTreeMap<&str, usize> = BTreeMap::new();
    for spec in specs {
        *name_counts.entry(spec.name()).or_default() += 1;
    }
    let mut reported_duplicates = Vec::new();
    for (position, spec) in specs.iter().enumerate() {
        let name = spec.name();
        if name.is_empty() {
            errors.push(PrepError::EmptyName { position });
        }
        let count = name_counts.get(name).copied().unwrap_or(0);
        if count > 1 && !name.is_empty() && !reported_duplicates.contains(&name) {
            reported_duplicates.push(name);
            errors.push(PrepError::DuplicateFeature {
                name: name.to_owned(),
                count,
            });
        }
        match spec {
            FeatureSpec::Numeric {
                winsorize: Some((lower, upper)),
                ..
            } if !valid_quantile_pair(*lower, *upper) => {
                errors.push(PrepError::InvalidWinsorize {
                    column: name.to_owned(),
                    lower: *lower,
                    upper: *upper,
                });
            }
            FeatureSpec::Categorical { max_levels: 0, .. } => {
                errors.push(PrepError::ZeroMaxLevels {
                    column: name.to_owned(),
                });
            }
            _ => {}
        }
    }
    errors
}

fn valid_quantile_pair(lower: f64, upper: f64) -> bool {
    // Written so that NaN fails every comparison and is refused.
    lower >= 0.0 && upper <= 1.0 && lower < upper
}

/// The clipping bounds a numeric feature learned from its fitting data.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WinsorBounds {
    /// The quantile the lower bound is taken at, as specified.
    pub lower_quantile: f64,
    /// The quantile the upper bound is taken at, as specified.
    pub upper_quantile: f64,
    /// Values below this are raised to it.
    pub lower: f64,
    /// Values above this are lowered to it.
    pub upper: f64,
}

/// A fitted numeric feature: one output column, `(transform(clip(impute(x))) − center) / scale`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FittedNumeric {
    pub name: String,
    pub impute: Impute,
    /// What nulls are replaced with; `None` exactly when `impute` is `fail` or `missing`.
    pub fill_value: Option<f64>,
    pub winsorize: Option<WinsorBounds>,
    pub transform: Transform,
    pub scaling: Scaling,
    /// Subtracted after the transform (0 without scaling).
    pub center: f64,
    /// Divided by after centering; finite and > 0 (1 without scaling or for a constant feature).
    pub scale: f64,
}

impl FittedNumeric {
    /// One imputed value through the remaining steps: winsorize, transform, scale.
    fn prepare(&self, x: f64) -> Result<f64, ValueProblem> {
        let clipped = match &self.winsorize {
            // max then min rather than `clamp`, which panics on inverted bounds.
            Some(bounds) => x.max(bounds.lower).min(bounds.upper),
            None => x,
        };
        if !self.transform.accepts(clipped) {
            return Err(ValueProblem::OutsideLog1pDomain(clipped));
        }
        let prepared = (self.transform.apply(clipped) - self.center) / self.scale;
        if prepared.is_finite() {
            Ok(prepared)
        } else {
            Err(ValueProblem::Overflow)
        }
    }

    fn to_original(&self, prepared: f64) -> f64 {
        self.transform.invert(prepared * self.scale + self.center)
    }

    fn check(&self) -> Result<(), String> {
        let name = &self.name;
        if !self.center.is_finite() {
            return Err(format!("feature \"{name}\" has center {:?}", self.center));
        }
        // Written so that NaN is refused too.
        if !(self.scale.is_finite() && self.scale > 0.0) {
            return Err(format!(
                "feature \"{name}\" has scale {:?}, which must be finite and > 0",
                self.scale
            ));
        }
        if self.scaling == Scaling::None && (self.center != 0.0 || self.scale != 1.0) {
            return Err(format!(
                "feature \"{name}\" is not scaled but has center {:?} and scale {:?}",
                self.center, self.scale
            ));
        }
        let fill_is_valid = match (self.impute, self.fill_value) {
            (Impute::Fail | Impute::Missing, None) => true,
            (Impute::Zero, Some(value)) => value == 0.0,
            (Impute::Median | Impute::Mean, Some(value)) => value.is_finite(),
            _ => false,
        };
        if !fill_is_valid {
            return Err(format!(
                "feature \"{name}\" imputes with `{}` but its fill value is {:?}",
                self.impute, self.fill_value
            ));
        }
        if let Some(bounds) = &self.winsorize {
            let bounds_are_valid =
                valid_quantile_pair(bounds.lower_quantile, bounds.upper_quantile)
                    && bounds.lower.is_finite()
                    && bounds.upper.is_finite()
                    && bounds.lower <= bounds.upper;
            if !bounds_are_valid {
                return Err(format!(
                    "feature \"{name}\" has winsorize bounds {bounds:?}; need 0 <= lower_quantile \
                     < upper_quantile <= 1 and finite lower <= upper"
                ));
            }
        }
        Ok(())
    }
}

/// A fitted categorical feature: one-hot columns `name=level` for each kept level, in name
/// order, then `name=__other__` when `other_column` is set.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FittedCategorical {
    pub name: String,
    pub max_levels: usize,
    /// The levels with a column of their own: the most frequent of the fitting data, sorted by
    /// name (byte order), unique.
    pub levels: Vec<String>,
    /// Whether the fitting data had more than `max_levels` levels, and so an [`OTHER_LEVEL`]
    /// column collects the rest and unseen levels.
    pub other_column: bool,
}

impl FittedCategorical {
    fn width(&self) -> usize {
        self.levels.len() + usize::from(self.other_column)
    }

    /// The output column (relative to this feature's first) that `level` sets to 1, if any.
    fn column_of(&self, level: &str) -> Option<usize> {
        match self
            .levels
            .binary_search_by(|kept| kept.as_str().cmp(level))
        {
            Ok(index) => Some(index),
            Err(_) if self.other_column => Some(self.levels.len()),
            Err(_) => None,
        }
    }

    fn check(&self) -> Result<(), String> {
        let name = &self.name;
        if self.max_levels == 0 || self.levels.is_empty() || self.levels.len() > self.max_levels {
            return Err(format!(
                "feature \"{name}\" has {} levels for max_levels {}; need 1 <= levels <= max_levels",
                self.levels.len(),
                self.max_levels
            ));
        }
        if self.levels.windows(2).any(|pair| pair[0] >= pair[1]) {
            return Err(format!(
                "the levels of feature \"{name}\" are not sorted by name and unique"
            ));
        }
        if self.other_column && self.levels.len() != self.max_levels {
            return Err(format!(
                "feature \"{name}\" has an {OTHER_LEVEL} column but only {} of its max_levels {} \
                 levels",
                self.levels.len(),
                self.max_levels
            ));
        }
        Ok(())
    }
}

/// One fitted feature, in the order of the specs it was fitted from.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum FittedFeature {
    Numeric(FittedNumeric),
    Categorical(FittedCategorical),
}

impl FittedFeature {
    pub fn name(&self) -> &str {
        match self {
            Self::Numeric(numeric) => &numeric.name,
            Self::Categorical(categorical) => &categorical.name,
        }
    }

    pub fn kind(&self) -> FeatureKind {
        match self {
            Self::Numeric(_) => FeatureKind::Numeric,
            Self::Categorical(_) => FeatureKind::Categorical,
        }
    }

    /// How many output columns this feature prepares.
    pub fn width(&self) -> usize {
        match self {
            Self::Numeric(_) => 1,
            Self::Categorical(categorical) => categorical.width(),
        }
    }

    fn push_output_names(&self, names: &mut Vec<String>) {
        match self {
            Self::Numeric(numeric) => names.push(numeric.name.clone()),
            Self::Categorical(categorical) => {
                let name = &categorical.name;
                names.extend(
                    categorical
                        .levels
                        .iter()
                        .map(|level| format!("{name}={level}")),
                );
                if categorical.other_column {
                    names.push(format!("{name}={OTHER_LEVEL}"));
                }
            }
        }
    }
}

/// The fitted preparation: one [`FittedFeature`] per spec, in order. Built only by
/// [`Preparation::fit`] or by deserializing, which checks the invariants fitting guarantees.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(try_from = "UncheckedPreparation")]
pub struct Preparation {
    features: Vec<FittedFeature>,
}

/// The saved form as read, before [`Preparation::check`].
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct UncheckedPreparation {
    features: Vec<FittedFeature>,
}

impl TryFrom<UncheckedPreparation> for Preparation {
    type Error = PrepError;

    fn try_from(unchecked: UncheckedPreparation) -> Result<Self, PrepError> {
        let preparation = Self {
            features: unchecked.features,
        };
        preparation.check()?;
        Ok(preparation)
    }
}

/// Why one value could not be prepared; the caller turns it into a [`PrepError`] with context.
enum ValueProblem {
    OutsideLog1pDomain(f64),
    Overflow,
}

impl Preparation {
    /// Fits every spec on its column (`columns[i]` for `specs[i]`). See the module doc for the
    /// steps and their statistics.
    pub fn fit(specs: &[FeatureSpec], columns: &[FeatureColumn<'_>]) -> Result<Self, PrepError> {
        if let Some(first_error) = validate_specs(specs).into_iter().next() {
            return Err(first_error);
        }
        let names: Vec<&str> = specs.iter().map(FeatureSpec::name).collect();
        let rows = check_columns(&names, columns)?;
        if rows == 0 {
            return Err(PrepError::EmptyInput);
        }
        let features = specs
            .iter()
            .zip(columns)
            .map(|(spec, column)| match (spec, column) {
                (
                    FeatureSpec::Numeric {
                        name,
                        transform,
                        winsorize,
                        scaling,
                        impute,
                    },
                    FeatureColumn::Numeric(values),
                ) => fit_numeric(name, *transform, *winsorize, *scaling, *impute, values)
                    .map(FittedFeature::Numeric),
                (
                    FeatureSpec::Categorical { name, max_levels },
                    FeatureColumn::Categorical(values),
                ) => fit_categorical(name, *max_levels, values).map(FittedFeature::Categorical),
                _ => Err(PrepError::KindMismatch {
                    column: spec.name().to_owned(),
                    expected: spec.kind(),
                    got: column.kind(),
                }),
            })
            .collect::<Result<Vec<_>, _>>()?;
        let preparation = Self { features };
        if let Some(name) = first_duplicate(preparation.output_names()) {
            return Err(PrepError::DuplicateOutputName { name });
        }
        Ok(preparation)
    }

    /// Prepares `columns` (one per feature, in [`Self::input_names`] order) into a
    /// rows × [`Self::width`] matrix, columns in [`Self::output_names`] order. Zero rows give a
    /// 0 × width matrix.
    pub fn transform(&self, columns: &[FeatureColumn<'_>]) -> Result<Array2<f64>, PrepError> {
        let rows = check_columns(&self.input_names(), columns)?;
        let mut prepared = Array2::zeros((rows, self.width()));
        let mut offset = 0;
        for (feature, column) in self.features.iter().zip(columns) {
            match (feature, column) {
                (FittedFeature::Numeric(numeric), FeatureColumn::Numeric(values)) => {
                    let mut output = prepared.column_mut(offset);
                    prepare_numeric_column(numeric, values, |row, value| output[row] = value)?;
                }
                (FittedFeature::Categorical(categorical), FeatureColumn::Categorical(values)) => {
                    for (row, level) in values.iter().enumerate() {
                        if let Some(column) = level.and_then(|level| categorical.column_of(level)) {
                            prepared[[row, offset + column]] = 1.0;
                        }
                    }
                }
                _ => {
                    return Err(PrepError::KindMismatch {
                        column: feature.name().to_owned(),
                        expected: feature.kind(),
                        got: column.kind(),
                    });
                }
            }
            offset += feature.width();
        }
        Ok(prepared)
    }

    /// The output columns' names: a numeric feature's name; `name=level` for each one-hot level,
    /// then `name=__other__` when that column exists.
    pub fn output_names(&self) -> Vec<String> {
        let mut names = Vec::with_capacity(self.width());
        for feature in &self.features {
            feature.push_output_names(&mut names);
        }
        names
    }

    /// The input columns' names, in the order [`Self::transform`] takes them.
    pub fn input_names(&self) -> Vec<&str> {
        self.features.iter().map(FittedFeature::name).collect()
    }

    /// The number of output columns, `output_names().len()`.
    pub fn width(&self) -> usize {
        self.features.iter().map(FittedFeature::width).sum()
    }

    /// The fitted statistics, one entry per feature, for reports (they serialise as in the
    /// model file: center, scale, fill value, winsor bounds, levels).
    pub fn features(&self) -> &[FittedFeature] {
        &self.features
    }

    /// For centroids: a prepared-space row back to the features' own units. Numeric: undo the
    /// scaling, then the transform; winsorizing is not undone (clipping loses information).
    /// One-hot columns are returned as they are: for a centroid, the share of its rows with
    /// that level.
    ///
    /// # Panics
    /// If `prepared_row` does not have [`Self::width`] values: a row of this preparation's output
    /// always has, so another width is a bug in the caller.
    pub fn to_original_units(&self, prepared_row: ArrayView1<f64>) -> Vec<f64> {
        assert_eq!(
            prepared_row.len(),
            self.width(),
            "to_original_units needs one value per output column"
        );
        let mut original = Vec::with_capacity(prepared_row.len());
        let mut values = prepared_row.iter().copied();
        for feature in &self.features {
            match feature {
                FittedFeature::Numeric(numeric) => {
                    original.extend(values.next().map(|value| numeric.to_original(value)));
                }
                FittedFeature::Categorical(categorical) => {
                    original.extend(values.by_ref().take(categorical.width()));
                }
            }
        }
        original
    }

    /// For matching an older model's centroids in this preparation's space: one row of
    /// output-space values in original units (as [`Self::to_original_units`] gives) through the
    /// same steps as [`Self::transform`] (winsorize, transform, scale; one-hot shares as they
    /// are).
    pub fn from_original_units(&self, original: &[f64]) -> Result<Vec<f64>, PrepError> {
        let names = self.output_names();
        if original.len() != names.len() {
            return Err(PrepError::RowWidthMismatch {
                expected: names.len(),
                got: original.len(),
                names: names.join(", "),
            });
        }
        if let Some((name, &value)) = names.iter().zip(original).find(|(_, v)| !v.is_finite()) {
            return Err(PrepError::NonFiniteRowValue {
                column: name.clone(),
                value,
            });
        }
        let mut prepared = Vec::with_capacity(original.len());
        let mut offset = 0;
        for feature in &self.features {
            match feature {
                FittedFeature::Numeric(numeric) => {
                    let value = original[offset];
                    let result = numeric.prepare(value);
                    prepared.push(value_result(numeric, result, 0, value)?);
                }
                FittedFeature::Categorical(categorical) => {
                    prepared.extend_from_slice(&original[offset..offset + categorical.width()]);
                }
            }
            offset += feature.width();
        }
        Ok(prepared)
    }

    /// The invariants fitting guarantees, checked when a saved preparation is loaded.
    fn check(&self) -> Result<(), PrepError> {
        let invalid = |reason: String| PrepError::InvalidModel { reason };
        if self.features.is_empty() {
            return Err(invalid("it has no features".to_owned()));
        }
        if let Some(name) = first_duplicate(self.input_names().into_iter().map(str::to_owned)) {
            return Err(invalid(format!("feature \"{name}\" is listed twice")));
        }
        for feature in &self.features {
            match feature {
                FittedFeature::Numeric(numeric) => numeric.check(),
                FittedFeature::Categorical(categorical) => categorical.check(),
            }
            .map_err(invalid)?;
        }
        if let Some(name) = first_duplicate(self.output_names()) {
            return Err(invalid(format!("two output columns are named \"{name}\"")));
        }
        Ok(())
    }
}

/// Checks the column count and that all columns have the same length; returns that length.
fn check_columns(names: &[&str], columns: &[FeatureColumn<'_>]) -> Result<usize, PrepError> {
    if columns.len() != names.len() {
        return Err(PrepError::ColumnCountMismatch {
            expected: names.len(),
            got: columns.len(),
            names: names.join(", "),
        });
    }
    let rows = columns.first().map_or(0, FeatureColumn::len);
    for (name, column) in names.iter().zip(columns) {
        if column.len() != rows {
            return Err(PrepError::LengthMismatch {
                column: (*name).to_owned(),
                got: column.len(),
                first_column: names.first().map_or_else(String::new, |n| (*n).to_owned()),
                expected: rows,
            });
        }
    }
    Ok(rows)
}

fn first_duplicate(names: impl IntoIterator<Item = String>) -> Option<String> {
    let mut seen = std::collections::BTreeSet::new();
    names.into_iter().find(|name| !seen.insert(name.clone()))
}

/// Refuses non-finite values, and nulls when `refuse_nulls`.
fn check_numeric_values(
    column: &str,
    values: &[Option<f64>],
    refuse_nulls: bool,
) -> Result<(), PrepError> {
    let mut non_finite = 0;
    let mut first_non_finite = None;
    let mut nulls = 0;
    let mut first_null = None;
    for (row, value) in values.iter().enumerate() {
        match value {
            None => {
                nulls += 1;
                first_null.get_or_insert(row);
            }
            Some(value) if !value.is_finite() => {
                non_finite += 1;
                first_non_finite.get_or_insert((row, *value));
            }
            Some(_) => {}
        }
    }
    if let Some((first_row, example)) = first_non_finite {
        return Err(PrepError::NonFiniteValues {
            column: column.to_owned(),
            count: non_finite,
            first_row,
            example,
        });
    }
    if let (true, Some(first_row)) = (refuse_nulls, first_null) {
        return Err(PrepError::NullValues {
            column: column.to_owned(),
            count: nulls,
            first_row,
        });
    }
    Ok(())
}

/// Prepares a numeric column value by value, handing each result to `write`. Errors count
/// every offending row and report the first.
fn prepare_numeric_column(
    numeric: &FittedNumeric,
    values: &[Option<f64>],
    mut write: impl FnMut(usize, f64),
) -> Result<(), PrepError> {
    check_numeric_values(&numeric.name, values, numeric.impute == Impute::Fail)?;
    // Nulls were refused above when there is no fill value and they may not stay missing.
    let fill = numeric.fill_value.unwrap_or(f64::NAN);
    let mut outside_domain = 0;
    let mut smallest_outside = f64::INFINITY;
    let mut overflows = 0;
    let mut first_overflow = None;
    for (row, value) in values.iter().enumerate() {
        let value = value.unwrap_or(fill);
        if value.is_nan() {
            // A null kept missing (`Impute::Missing`): NaN through every step.
            write(row, f64::NAN);
            continue;
        }
        match numeric.prepare(value) {
            Ok(prepared) => write(row, prepared),
            Err(ValueProblem::OutsideLog1pDomain(clipped)) => {
                outside_domain += 1;
                smallest_outside = smallest_outside.min(clipped);
            }
            Err(ValueProblem::Overflow) => {
                overflows += 1;
                first_overflow.get_or_insert((row, value));
            }
        }
    }
    if outside_domain > 0 {
        return Err(PrepError::Log1pDomain {
            column: numeric.name.clone(),
            count: outside_domain,
            min: smallest_outside,
        });
    }
    if let Some((first_row, example)) = first_overflow {
        return Err(PrepError::Overflow {
            column: numeric.name.clone(),
            count: overflows,
            first_row,
            example,
            center: numeric.center,
            scale: numeric.scale,
        });
    }
    Ok(())
}

/// One value's [`FittedNumeric::prepare`] result with the error context of row `row`.
fn value_result(
    numeric: &FittedNumeric,
    result: Result<f64, ValueProblem>,
    row: usize,
    value: f64,
) -> Result<f64, PrepError> {
    result.map_err(|problem| match problem {
        ValueProblem::OutsideLog1pDomain(clipped) => PrepError::Log1pDomain {
            column: numeric.name.clone(),
            count: 1,
            min: clipped,
        },
        ValueProblem::Overflow => PrepError::Overflow {
            column: numeric.name.clone(),
            count: 1,
            first_row: row,
            example: value,
            center: numeric.center,
            scale: numeric.scale,
        },
    })
}

fn fit_numeric(
    name: &str,
    transform: Transform,
    winsorize: Option<(f64, f64)>,
    scaling: Scaling,
    impute: Impute,
    values: &[Option<f64>],
) -> Result<FittedNumeric, PrepError> {
    check_numeric_values(name, values, impute == Impute::Fail)?;
    let non_finite_statistic = |statistic| PrepError::NonFiniteStatistic {
        column: name.to_owned(),
        statistic,
    };

    // 1. Impute, with a statistic of the non-null values.
    let present: Vec<f64> = values.iter().flatten().copied().collect();
    let fill_value = match impute {
        Impute::Fail => None,
        Impute::Zero => Some(0.0),
        Impute::Median | Impute::Mean | Impute::Missing if present.is_empty() => {
            return Err(PrepError::AllNull {
                column: name.to_owned(),
                rows: values.len(),
                impute,
            });
        }
        Impute::Median => Some(median(&sorted(present.clone()))),
        Impute::Mean => Some(mean(&present)),
        Impute::Missing => None,
    };
    if fill_value.is_some_and(|value| !value.is_finite()) {
        return Err(non_finite_statistic("fill value for nulls"));
    }
    // Nulls were refused above when there is no fill value, unless they stay missing: then
    // the statistics below are of the non-null values, and nulls become NaN at transform.
    let mut current: Vec<f64> = match fill_value {
        Some(fill) => values.iter().map(|value| value.unwrap_or(fill)).collect(),
        None => present.clone(),
    };

    // 2. Winsorize at quantiles of the imputed values.
    let winsor_bounds = winsorize.map(|(lower_quantile, upper_quantile)| {
        let ordered = sorted(current.clone());
        let lower = quantile(&ordered, lower_quantile);
        // Interpolation is monotone up to roundoff; keep lower <= upper exactly.
        let upper = quantile(&ordered, upper_quantile).max(lower);
        WinsorBounds {
            lower_quantile,
            upper_quantile,
            lower,
            upper,
        }
    });
    if let Some(bounds) = &winsor_bounds {
        for value in &mut current {
            *value = value.max(bounds.lower).min(bounds.upper);
        }
    }

    // 3. Transform.
    if !current.iter().all(|&value| transform.accepts(value)) {
        let outside: Vec<f64> = current
            .iter()
            .copied()
            .filter(|&value| !transform.accepts(value))
            .collect();
        return Err(PrepError::Log1pDomain {
            column: name.to_owned(),
            count: outside.len(),
            min: outside.iter().copied().fold(f64::INFINITY, f64::min),
        });
    }
    for value in &mut current {
        *value = transform.apply(*value);
    }

    // 4. Scale with statistics of the transformed values.
    let (center, scale) = match scaling {
        Scaling::None => (0.0, 1.0),
        Scaling::Standardize => standardize_statistics(&current),
        Scaling::Robust => robust_statistics(&sorted(current)),
    };
    if !center.is_finite() {
        return Err(non_finite_statistic("center"));
    }
    if !scale.is_finite() {
        return Err(non_finite_statistic("scale"));
    }
    Ok(FittedNumeric {
        name: name.to_owned(),
        impute,
        fill_value,
        winsorize: winsor_bounds,
        transform,
        scaling,
        center,
        scale,
    })
}

fn fit_categorical(
    name: &str,
    max_levels: usize,
    values: &[Option<&str>],
) -> Result<FittedCategorical, PrepError> {
    let mut counts: BTreeMap<&str, usize> = BTreeMap::new();
    for level in values.iter().flatten() {
        *counts.entry(level).or_default() += 1;
    }
    if counts.is_empty() {
        return Err(PrepError::NoLevels {
            column: name.to_owned(),
            rows: values.len(),
        });
    }
    let other_column = counts.len() > max_levels;
    let mut by_frequency: Vec<(&str, usize)> = counts.into_iter().collect();
    // Most frequent first; equal counts in name (byte) order, so the choice is deterministic.
    by_frequency.sort_by(|(level_a, count_a), (level_b, count_b)| {
        count_b.cmp(count_a).then_with(|| level_a.cmp(level_b))
    });
    let mut levels: Vec<String> = by_frequency
        .into_iter()
        .take(max_levels)
        .map(|(level, _)| level.to_owned())
        .collect();
    levels.sort_unstable();
    Ok(FittedCategorical {
        name: name.to_owned(),
        max_levels,
        levels,
        other_column,
    })
}

fn sorted(mut values: Vec<f64>) -> Vec<f64> {
    // Only finite values reach here, so total order is the numeric order (with −0 before +0).
    values.sort_unstable_by(f64::total_cmp);
    values
}

/// Sequential sum divided by the count.
fn mean(values: &[f64]) -> f64 {
    values.iter().sum::<f64>() / values.len() as f64
}

/// numpy's `median` of sorted, non-empty values: the middle value, or the mean of the two.
fn median(sorted: &[f64]) -> f64 {
    let middle = sorted.len() / 2;
    if sorted.len() % 2 == 1 {
        sorted[middle]
    } else {
        (sorted[middle - 1] + sorted[middle]) / 2.0
    }
}

/// numpy's `quantile(values, q)` with the default `linear` method on sorted, non-empty values,
/// including numpy's `_lerp`, which interpolates from the upper neighbour when the weight is
/// >= 0.5 (so the result matches bit for bit, not only approximately).
fn quantile(sorted: &[f64], q: f64) -> f64 {
    let last = sorted.len() - 1;
    let virtual_index = last as f64 * q;
    let below = virtual_index.floor();
    // q is in [0, 1], so the index is in [0, last]; `as` saturates should it ever not be.
    let lower_index = (below as usize).min(last);
    let upper_index = (lower_index + 1).min(last);
    let weight = virtual_index - below;
    let (a, b) = (sorted[lower_index], sorted[upper_index]);
    let difference = b - a;
    if weight >= 0.5 {
        b - difference * (1.0 - weight)
    } else {
        a + difference * weight
    }
}

/// scikit-learn's `StandardScaler` statistics: the mean and the population std from the
/// two-pass variance with its correction term (`_incremental_mean_and_var`); a variance within
/// the algorithm's roundoff bound of zero (`_is_constant_feature`) gives scale 1.
fn standardize_statistics(values: &[f64]) -> (f64, f64) {
    let count = values.len() as f64;
    let mean = mean(values);
    let mut correction = 0.0;
    let mut squares = 0.0;
    for &value in values {
        let deviation = value - mean;
        correction += deviation;
        squares += deviation * deviation;
    }
    let variance = (squares - correction * correction / count) / count;
    let roundoff_bound = count * f64::EPSILON * variance + (count * mean * f64::EPSILON).powi(2);
    let scale = if variance <= roundoff_bound {
        1.0
    } else {
        variance.sqrt()
    };
    (mean, scale)
}

/// scikit-learn's `RobustScaler` statistics: the median and the IQR (q75 − q25, linear
/// method); an IQR below 10·ε (`_handle_zeros_in_scale`) gives scale 1.
fn robust_statistics(sorted: &[f64]) -> (f64, f64) {
    let interquartile_range = quantile(sorted, 0.75) - quantile(sorted, 0.25);
    let scale = if interquartile_range < 10.0 * f64::EPSILON {
        1.0
    } else {
        interquartile_range
    };
    (median(sorted), scale)
}

#[cfg(test)]
mod tests;
