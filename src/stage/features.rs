//! Reading a per-customer feature table into memory for the model stages (segment, churn)
//! and the commands that apply their saved models (`assign`, `score`).

use std::collections::BTreeMap;

use datafusion::arrow::array::{Array, ArrayRef, AsArray, UInt32Array};
use datafusion::arrow::compute::{cast, concat, take};
use datafusion::arrow::datatypes::{DataType, Float64Type, SchemaRef};
use datafusion::arrow::array::RecordBatch;
use datafusion::arrow::row::{OwnedRow, RowConverter, SortField};
use futures::StreamExt;
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
    let mut whole = None;
    for_each_feature_block(frame, id, numeric, categorical, what, usize::MAX, |block, _| {
        whole = Some(block);
        Ok(())
    })
    .await?;
    whole.ok_or_else(|| format!("{what}: no rows were read"))
}

/// As [`read_features`], but hands the table to `each` a block of about `block_rows` customers
/// at a time (whole record batches, so a block may hold a few thousand more), in id order,
/// with the index of the block's first row in the table. Only one block is in memory at a
/// time, besides what the engine holds to sort. An empty table is one empty block.
pub async fn for_each_feature_block(
    frame: DataFrame,
    id: &str,
    numeric: &[String],
    categorical: &[String],
    what: &str,
    block_rows: usize,
    mut each: impl FnMut(FeatureData, usize) -> Result<(), String>,
) -> Result<(), String> {
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
    let mut stream = frame
        .select(exprs)
        .and_then(|f| f.sort(vec![ident(id).sort(true, true)]))
        .map_err(describe)?
        .execute_stream()
        .await
        .map_err(describe)?;
    let id_type = stream.schema().field_with_name(id).map_err(|e| format!("{what}: `{id}`: {e}"))?.data_type().clone();
    // Ids are compared in Arrow's row format, which works for any id type.
    let converter = RowConverter::new(vec![SortField::new(id_type)]).map_err(|e| format!("{what}: `{id}`: {e}"))?;
    let mut ids = IdCheck { what, id, previous_last: None, converter };
    let (mut pending, mut pending_rows, mut first_row) = (Vec::new(), 0usize, 0usize);
    while let Some(batch) = stream.next().await {
        let batch = batch.map_err(describe)?;
        pending_rows += batch.num_rows();
        pending.push(batch);
        if pending_rows >= block_rows {
            let block = feature_block(&std::mem::take(&mut pending), id, numeric, categorical, what, &mut ids, first_row)?;
            each(block, first_row)?;
            first_row += pending_rows;
            pending_rows = 0;
        }
    }
    if pending_rows > 0 || first_row == 0 {
        let block = feature_block(&pending, id, numeric, categorical, what, &mut ids, first_row)?;
        each(block, first_row)?;
    }
    Ok(())
}

/// Checks ids block by block: no nulls, and no id repeated, within a block or across the
/// boundary with the block before (the table is sorted, so a repeat sits next to itself).
struct IdCheck<'a> {
    what: &'a str,
    id: &'a str,
    /// The previous block's last id, in Arrow's row format.
    previous_last: Option<OwnedRow>,
    converter: RowConverter,
}

impl IdCheck<'_> {
    fn check(&mut self, ids: &ArrayRef, first_row: usize) -> Result<(), String> {
        let (what, id) = (self.what, self.id);
        if ids.null_count() > 0 {
            return Err(format!("{what}: {} rows have no `{id}`; every customer needs an id", ids.null_count()));
        }
        if ids.is_empty() {
            return Ok(());
        }
        let rows = self.converter.convert_columns(std::slice::from_ref(ids)).map_err(|e| format!("{what}: `{id}`: {e}"))?;
        let mut repeated = 0usize;
        let mut example = None;
        if self.previous_last.as_ref().is_some_and(|last| last.row() == rows.row(0)) {
            repeated += 1;
            example = Some(0);
        }
        for i in 1..rows.num_rows() {
            if rows.row(i) == rows.row(i - 1) {
                repeated += 1;
                example.get_or_insert(i);
            }
        }
        if let Some(i) = example {
            let shown = datafusion::arrow::util::display::array_value_to_string(ids, i).unwrap_or_default();
            let how_many = if first_row == 0 { format!("{repeated} rows repeat") } else { format!("{repeated} rows from row {first_row} on repeat") };
            return Err(format!("{what}: `{id}` is not unique: {how_many} an earlier id (e.g. {shown}); a feature table has one row per customer"));
        }
        self.previous_last = Some(rows.row(rows.num_rows() - 1).owned());
        Ok(())
    }
}

/// One block of [`for_each_feature_block`]: its batches' columns, concatenated and converted.
fn feature_block(batches: &[RecordBatch], id: &str, numeric: &[String], categorical: &[String], what: &str, ids_check: &mut IdCheck<'_>, first_row: usize) -> Result<FeatureData, String> {
    let column = |name: &str| -> Result<ArrayRef, String> {
        let parts: Vec<&dyn Array> = batches.iter().filter_map(|b| b.column_by_name(name)).map(|c| c.as_ref()).collect();
        if parts.is_empty() {
            // No batches at all: an empty column of the right type.
            return Ok(datafusion::arrow::array::new_empty_array(&DataType::Null));
        }
        concat(&parts).map_err(|e| format!("{what}: column `{name}`: {e}"))
    };
    let ids = column(id)?;
    ids_check.check(&ids, first_row)?;
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

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use datafusion::arrow::array::{Float64Array, Int64Array, StringArray};
    use datafusion::arrow::datatypes::{Field, Schema};
    use datafusion::datasource::MemTable;
    use datafusion::prelude::{SessionConfig, SessionContext};

    use super::*;

    /// A customers table in `partitions` record batches of the given ids (in that order), with
    /// `spend = id / 2` and `region = r{id % 3}`; the engine emits batches of 2 rows, so a
    /// block of `n` rows is `n` rounded up to even.
    async fn customers(ids: &[Vec<i64>]) -> DataFrame {
        let schema = Arc::new(Schema::new(vec![Field::new("customer_id", DataType::Int64, true), Field::new("spend", DataType::Float64, true), Field::new("region", DataType::Utf8, true)]));
        let partitions = ids
            .iter()
            .map(|ids| {
                let columns: Vec<ArrayRef> = vec![
                    Arc::new(Int64Array::from(ids.clone())),
                    Arc::new(Float64Array::from(ids.iter().map(|&id| id as f64 / 2.0).collect::<Vec<_>>())),
                    Arc::new(StringArray::from(ids.iter().map(|&id| format!("r{}", id % 3)).collect::<Vec<_>>())),
                ];
                vec![RecordBatch::try_new(schema.clone(), columns).unwrap()]
            })
            .collect();
        let session = SessionContext::new_with_config(SessionConfig::new().with_batch_size(2).with_target_partitions(2));
        session.register_table("customers", Arc::new(MemTable::try_new(schema, partitions).unwrap())).unwrap();
        session.table("customers").await.unwrap()
    }

    async fn blocks(frame: DataFrame, block_rows: usize) -> Result<Vec<(usize, FeatureData)>, String> {
        let mut blocks = Vec::new();
        for_each_feature_block(frame, "customer_id", &["spend".into()], &["region".into()], "input `customers`", block_rows, |block, first_row| {
            blocks.push((first_row, block));
            Ok(())
        })
        .await?;
        Ok(blocks)
    }

    #[tokio::test]
    async fn reading_in_blocks_gives_the_table_in_id_order_each_block_knowing_its_first_row() {
        let ids = vec![vec![9, 3, 11, 1], vec![4, 10, 0, 7], vec![2, 8, 6, 5]];
        let whole = read_features(customers(&ids).await, "customer_id", &["spend".into()], &["region".into()], "input `customers`").await.unwrap();
        let blocks = blocks(customers(&ids).await, 3).await.unwrap();
        assert!(blocks.len() >= 3, "12 rows in blocks of about 3 rows: {} blocks", blocks.len());
        let mut next_row = 0;
        let (mut read_ids, mut spend, mut region) = (Vec::new(), Vec::new(), Vec::new());
        for (first_row, block) in &blocks {
            assert_eq!(*first_row, next_row);
            assert!(block.len() >= 3 || *first_row + block.len() == 12, "only the last block may be short");
            next_row += block.len();
            read_ids.extend(block.ids.as_primitive::<datafusion::arrow::datatypes::Int64Type>().values().iter().copied());
            spend.extend(block.numeric["spend"].iter().copied());
            region.extend(block.text["region"].iter().cloned());
        }
        assert_eq!(read_ids, (0..12).collect::<Vec<i64>>());
        assert_eq!(spend, whole.numeric["spend"]);
        assert_eq!(region, whole.text["region"]);
        assert_eq!(spend, (0..12).map(|id| Some(id as f64 / 2.0)).collect::<Vec<_>>());
    }

    #[tokio::test]
    async fn an_id_repeated_across_a_block_boundary_is_refused_like_one_within_a_block() {
        // Sorted, the ids are 0 1 2 3 3 4: blocks of 2 rows put the two 3s in different blocks.
        let ids = vec![vec![3, 0, 4], vec![2, 3, 1]];
        let across = blocks(customers(&ids).await, 2).await.map(|_| ()).unwrap_err();
        assert_eq!(across, "input `customers`: `customer_id` is not unique: 1 rows from row 4 on repeat an earlier id (e.g. 3); a feature table has one row per customer");
        let within = blocks(customers(&ids).await, usize::MAX).await.map(|_| ()).unwrap_err();
        assert_eq!(within, "input `customers`: `customer_id` is not unique: 1 rows repeat an earlier id (e.g. 3); a feature table has one row per customer");
    }

    #[tokio::test]
    async fn an_empty_table_is_one_empty_block() {
        let blocks = blocks(customers(&[vec![]]).await, 2).await.unwrap();
        assert_eq!(blocks.len(), 1);
        assert!(blocks[0].1.is_empty());
    }
}
