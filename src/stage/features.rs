//! Reading a per-customer feature table into memory for the model stages (segment, churn)
//! and the commands that apply their saved models (`assign`, `score`).

use std::collections::BTreeMap;

use datafusion::arrow::array::{Array, ArrayRef, AsArray, UInt32Array};
use datafusion::arrow::compute::{cast, concat, take};
use datafusion::arrow::datatypes::{DataType, Float64Type, SchemaRef};
use datafusion::arrow::row::{RowConverter, SortField};
use datafusion::logical_expr::{cast as cast_expr, ident};
use datafusion::prelude::DataFrame;
use segflow_ml::prep::{FeatureColumn, FeatureKind};

use super::StageProblem;
use crate::config::yaml::{At, did_you_mean, quoted_list};

/// The columns a model stage (or `assign`, `score`) reads, one value per customer, ordered by id.
pub struct FeatureData {
    /// Sorted ascending, unique, no nulls.
    pub ids: ArrayRef,
    pub numeric: BTreeMap<String, Vec<Option<f64>>>,
    pub text: BTreeMap<String, Vec<Option<String>>>,
}

impl FeatureData {
    pub fn len(&self) -> usize {
        self.ids.len()
    }

    pub fn is_empty(&self) -> bool {
        self.ids.is_empty()
    }

    /// The given rows, in the given order (a training split, say).
    pub fn take(&self, rows: &[usize]) -> Result<FeatureData, String> {
        let indices = UInt32Array::from(rows.iter().map(|&r| r as u32).collect::<Vec<_>>());
        let ids = take(self.ids.as_ref(), &indices, None).map_err(|e| e.to_string())?;
        let pick = |values: &Vec<Option<f64>>| rows.iter().map(|&r| values.get(r).copied().flatten()).collect();
        let pick_text = |values: &Vec<Option<String>>| rows.iter().map(|&r| values.get(r).cloned().flatten()).collect();
        Ok(FeatureData {
            ids,
            numeric: self.numeric.iter().map(|(name, values)| (name.clone(), pick(values))).collect(),
            text: self.text.iter().map(|(name, values)| (name.clone(), pick_text(values))).collect(),
        })
    }
}

/// Reads `id`, `numeric` (as float64) and `categorical` (as text) from `frame`, ordered by id
/// so that the fit sees the same rows in the same order whatever the files and threads.
/// `what` names the source in messages. A null or repeated id is an error: a feature table
/// has one row per customer.
pub async fn read_features(frame: DataFrame, id: &str, numeric: &[String], categorical: &[String], what: &str) -> Result<FeatureData, String> {
    let describe = |e: datafusion::error::DataFusionError| format!("{what}: {}", crate::engine::describe_datafusion_error(&e));
    let mut exprs = vec![ident(id)];
    for name in numeric {
        exprs.push(cast_expr(ident(name), DataType::Float64).alias(name));
    }
    for name in categorical {
        if !numeric.contains(name) {
            exprs.push(cast_expr(ident(name), DataType::Utf8).alias(name));
        }
    }
    let batches = frame
        .select(exprs)
        .and_then(|f| f.sort(vec![ident(id).sort(true, true)]))
        .map_err(describe)?
        .collect()
        .await
        .map_err(describe)?;
    let column = |name: &str| -> Result<ArrayRef, String> {
        let parts: Vec<&dyn Array> = batches.iter().filter_map(|b| b.column_by_name(name)).map(|c| c.as_ref()).collect();
        if parts.is_empty() {
            // No batches at all: an empty column of the right type.
            return Ok(datafusion::arrow::array::new_empty_array(&DataType::Null));
        }
        concat(&parts).map_err(|e| format!("{what}: column `{name}`: {e}"))
    };
    let ids = column(id)?;
    if ids.null_count() > 0 {
        return Err(format!("{what}: {} rows have no `{id}`; every customer needs an id", ids.null_count()));
    }
    // Sorted, so a repeated id sits next to itself; compare rows in Arrow's row format,
    // which works for any id type.
    if ids.len() > 1 {
        let converter = RowConverter::new(vec![SortField::new(ids.data_type().clone())]).map_err(|e| format!("{what}: `{id}`: {e}"))?;
        let rows = converter.convert_columns(&[ids.clone()]).map_err(|e| format!("{what}: `{id}`: {e}"))?;
        let mut repeated = 0usize;
        let mut example = None;
        for i in 1..rows.num_rows() {
            if rows.row(i) == rows.row(i - 1) {
                repeated += 1;
                example.get_or_insert(i);
            }
        }
        if let Some(i) = example {
            let shown = datafusion::arrow::util::display::array_value_to_string(&ids, i).unwrap_or_default();
            return Err(format!("{what}: `{id}` is not unique: {repeated} rows repeat an earlier id (e.g. {shown}); a feature table has one row per customer"));
        }
    }
    let mut data = FeatureData { ids, numeric: BTreeMap::new(), text: BTreeMap::new() };
    for name in numeric {
        let values = column(name)?;
        let values: Vec<Option<f64>> = if values.data_type() == &DataType::Null {
            Vec::new()
        } else {
            values.as_primitive::<Float64Type>().iter().collect()
        };
        data.numeric.insert(name.clone(), values);
    }
    for name in categorical {
        let values = column(name)?;
        let values = if values.data_type() == &DataType::Utf8 {
            values.as_string::<i32>().iter().map(|v| v.map(str::to_string)).collect()
        } else if values.data_type() == &DataType::Null {
            Vec::new()
        } else {
            let as_text = cast(&values, &DataType::Utf8).map_err(|e| format!("{what}: column `{name}`: {e}"))?;
            as_text.as_string::<i32>().iter().map(|v| v.map(str::to_string)).collect()
        };
        data.text.insert(name.clone(), values);
    }
    Ok(data)
}

/// Text columns as the preparation reads them: borrowed values.
pub fn text_views(data: &FeatureData) -> BTreeMap<&str, Vec<Option<&str>>> {
    data.text.iter().map(|(name, values)| (name.as_str(), values.iter().map(|v| v.as_deref()).collect())).collect()
}

/// The columns of `features` (name, kind), in order, as the preparation reads them.
pub fn feature_columns<'a>(data: &'a FeatureData, text: &'a BTreeMap<&'a str, Vec<Option<&'a str>>>, features: &[(&str, FeatureKind)]) -> Vec<FeatureColumn<'a>> {
    features
        .iter()
        .map(|(name, kind)| match kind {
            FeatureKind::Numeric => FeatureColumn::Numeric(data.numeric.get(*name).map(Vec::as_slice).unwrap_or(&[])),
            FeatureKind::Categorical => FeatureColumn::Categorical(text.get(*name).map(Vec::as_slice).unwrap_or(&[])),
        })
        .collect()
}

/// A column type as a person would say it.
pub fn type_in_words(t: &DataType) -> String {
    match t {
        DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View => "text".to_string(),
        DataType::Boolean => "a boolean".to_string(),
        DataType::Date32 | DataType::Date64 => "a date".to_string(),
        DataType::Timestamp(..) => "a timestamp".to_string(),
        t if t.is_integer() => format!("an integer ({t})"),
        t if t.is_floating() => format!("a float ({t})"),
        other => other.to_string(),
    }
}

/// A column a numeric feature can read (booleans count as 0/1).
pub fn is_numeric_type(t: &DataType) -> bool {
    t.is_numeric() || matches!(t, DataType::Boolean)
}

/// A column a one-hot feature can read.
pub fn is_categorical_type(t: &DataType) -> bool {
    matches!(t, DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View | DataType::Boolean | DataType::Dictionary(..)) || t.is_integer()
}

/// A column a customer id can be: anything that compares exactly (not floats, not nested).
pub fn is_id_type(t: &DataType) -> bool {
    !matches!(t, DataType::List(_) | DataType::Struct(_) | DataType::Map(..) | DataType::Float32 | DataType::Float64)
}

/// Checks one table's columns against what a stage needs of it, collecting every problem.
pub struct ColumnCheck<'a> {
    pub table: &'a str,
    pub schema: SchemaRef,
    pub problems: &'a mut Vec<StageProblem>,
}

impl ColumnCheck<'_> {
    /// `column` must exist and have a type `accepts` (`expected` says which, in words).
    pub fn check(&mut self, column: &At<String>, what: &str, accepts: fn(&DataType) -> bool, expected: &str) {
        let names: Vec<&str> = self.schema.fields().iter().map(|f| f.name().as_str()).collect();
        match self.schema.field_with_name(&column.value) {
            Err(_) => self.problems.push(StageProblem {
                file: None,
                pos: Some(column.pos),
                message: format!("{what} `{}` is not a column of `{}`; its columns are: {}", column.value, self.table, quoted_list(names.iter().copied())),
                suggestion: did_you_mean(&column.value, names.iter().copied()),
            }),
            Ok(field) if !accepts(field.data_type()) => self.problems.push(StageProblem::at(
                column.pos,
                format!("{what} `{}` of `{}` is {}; expected {expected}", column.value, self.table, type_in_words(field.data_type())),
            )),
            Ok(_) => {}
        }
    }

    /// Model features, (name, numeric or one-hot).
    pub fn features<'f>(&mut self, features: impl Iterator<Item = (&'f At<String>, bool)>) {
        for (name, numeric) in features {
            if numeric {
                self.check(name, "feature", is_numeric_type, "a number (one-hot encode text features with `one_hot: true`)");
            } else {
                self.check(name, "feature", is_categorical_type, "text, an integer or a boolean for a one-hot feature");
            }
        }
    }
}
