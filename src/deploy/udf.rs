//! `segflow_assign`: a saved segment model as a SQL function, so that assigning a large table
//! runs where its rows are — on the Ballista executors — batch by batch, instead of collecting
//! the table into segflow's process.
//!
//! `segflow_assign(model_json, feature_1, …, feature_n)` takes the model file's text as its
//! first argument (a literal: it travels inside the plan, so an executor needs no access to
//! the model's folder and always sees the very model the client loaded) and the model's
//! features in the model's order. It returns a struct of the segment stage's per-customer
//! columns: `segment`, `distance`, `second_segment`, computed by the same preparation and
//! assignment code as the in-process path, so both give the same bits.
//!
//! The scheduler (which decodes the client's plan) and the executors must know the function by
//! name: segflow registers it in every Ballista session it starts (the standalone scheduler
//! and executor share that session), and the scheduler and executor of tests/ballista/cluster
//! register it through [`functions`] and [`register_on`]. Ballista's stock processes do not;
//! `segflow assign` against them fails with the scheduler's "LogicalExtensionCodec is not
//! provided for scalar function segflow_assign".

use std::collections::HashMap;
use std::sync::{Arc, LazyLock, Mutex};

use datafusion::arrow::array::{ArrayRef, AsArray, Float64Builder, Int32Builder, StructArray};
use datafusion::arrow::compute::cast;
use datafusion::arrow::datatypes::{DataType, Field, Fields, Float64Type};
use datafusion::common::{DataFusionError, Result, ScalarValue, exec_err, plan_err};
use datafusion::logical_expr::{ColumnarValue, ScalarFunctionArgs, ScalarUDF, ScalarUDFImpl, Signature, Volatility};
use segflow_ml::prep::{FeatureColumn, FeatureKind};

use crate::stage::segment::SegmentModel;

pub const ASSIGN: &str = "segflow_assign";

/// Every segflow function an executor needs.
pub fn functions() -> Vec<Arc<ScalarUDF>> {
    vec![Arc::new(ScalarUDF::new_from_impl(AssignUdf::new()))]
}

/// Adds segflow's functions to a name → function map (Ballista's executor registry).
pub fn register_on(map: &mut HashMap<String, Arc<ScalarUDF>>) {
    for f in functions() {
        map.insert(f.name().to_string(), f);
    }
}

/// The struct `segflow_assign` returns, field for field the segment table's columns.
pub fn assign_fields() -> Fields {
    Fields::from(vec![
        Field::new("segment", DataType::Int32, false),
        Field::new("distance", DataType::Float64, false),
        Field::new("second_segment", DataType::Int32, true),
    ])
}

#[derive(Debug, PartialEq, Eq, Hash)]
struct AssignUdf {
    signature: Signature,
}

impl AssignUdf {
    fn new() -> Self {
        AssignUdf { signature: Signature::variadic_any(Volatility::Immutable) }
    }
}

/// Models parsed so far in this process, by their text: every batch of a query carries the
/// same literal, and parsing it once per batch would dominate small batches.
static MODELS: LazyLock<Mutex<HashMap<String, Arc<SegmentModel>>>> = LazyLock::new(|| Mutex::new(HashMap::new()));

fn model_from(text: &str) -> Result<Arc<SegmentModel>> {
    let mut models = MODELS.lock().map_err(|_| DataFusionError::Execution(format!("{ASSIGN}: the model cache was poisoned")))?;
    if let Some(model) = models.get(text) {
        return Ok(model.clone());
    }
    let model = Arc::new(SegmentModel::from_json_text(text, ASSIGN).map_err(DataFusionError::Execution)?);
    // A long-lived executor sees one model per run at most; a handful is plenty.
    if models.len() >= 16 {
        models.clear();
    }
    models.insert(text.to_string(), model.clone());
    Ok(model)
}

impl ScalarUDFImpl for AssignUdf {
    fn name(&self) -> &str {
        ASSIGN
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn return_type(&self, arg_types: &[DataType]) -> Result<DataType> {
        if arg_types.first().is_none_or(|t| !matches!(t, DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View)) {
            return plan_err!("{ASSIGN}(model_json, features…): the first argument is the model file's text");
        }
        Ok(DataType::Struct(assign_fields()))
    }

    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> Result<ColumnarValue> {
        let Some((model_arg, feature_args)) = args.args.split_first() else {
            return exec_err!("{ASSIGN}: no arguments");
        };
        let text = match model_arg {
            ColumnarValue::Scalar(ScalarValue::Utf8(Some(t)) | ScalarValue::LargeUtf8(Some(t)) | ScalarValue::Utf8View(Some(t))) => t,
            _ => return exec_err!("{ASSIGN}: the model must be a text literal"),
        };
        let model = model_from(text)?;
        let features = model.preparation.features();
        if features.len() != feature_args.len() {
            return exec_err!("{ASSIGN}: the model has {} features, the call passes {}", features.len(), feature_args.len());
        }
        let rows = args.number_rows;
        // Numeric features as float64, categorical ones as text: as the in-process path reads them.
        let mut numeric: Vec<Vec<Option<f64>>> = Vec::new();
        let mut text_arrays: Vec<ArrayRef> = Vec::new();
        for (feature, arg) in features.iter().zip(feature_args) {
            let array = arg.to_array(rows)?;
            match feature.kind() {
                FeatureKind::Numeric => numeric.push(cast(&array, &DataType::Float64)?.as_primitive::<Float64Type>().iter().collect()),
                FeatureKind::Categorical => text_arrays.push(cast(&array, &DataType::Utf8)?),
            }
        }
        let text_values: Vec<Vec<Option<&str>>> = text_arrays.iter().map(|a| a.as_string::<i32>().iter().collect()).collect();
        let (mut next_numeric, mut next_text) = (numeric.iter(), text_values.iter());
        let columns: Vec<FeatureColumn<'_>> = features
            .iter()
            .map(|f| match f.kind() {
                FeatureKind::Numeric => FeatureColumn::Numeric(next_numeric.next().map(Vec::as_slice).unwrap_or(&[])),
                FeatureKind::Categorical => FeatureColumn::Categorical(next_text.next().map(Vec::as_slice).unwrap_or(&[])),
            })
            .collect();
        let x = model.preparation.transform(&columns).map_err(|e| DataFusionError::Execution(format!("{ASSIGN}: {e}")))?;
        let assignments = model.cluster_model.assign(x.view()).map_err(|e| DataFusionError::Execution(format!("{ASSIGN}: {e}")))?;
        let ids = model.segment_ids();
        let (mut segment, mut distance, mut second) = (Int32Builder::with_capacity(rows), Float64Builder::with_capacity(rows), Int32Builder::with_capacity(rows));
        for a in &assignments {
            segment.append_value(ids[a.segment]);
            distance.append_value(a.distance);
            second.append_option(a.second_segment.map(|s| ids[s]));
        }
        let columns: Vec<ArrayRef> = vec![Arc::new(segment.finish()), Arc::new(distance.finish()), Arc::new(second.finish())];
        Ok(ColumnarValue::Array(Arc::new(StructArray::try_new(assign_fields(), columns, None)?)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_argument_must_be_the_model_text() {
        let udf = AssignUdf::new();
        assert!(udf.return_type(&[DataType::Float64]).is_err());
        assert!(udf.return_type(&[]).is_err());
        assert_eq!(udf.return_type(&[DataType::Utf8, DataType::Float64]).unwrap(), DataType::Struct(assign_fields()));
    }

    #[test]
    fn a_text_that_is_no_segment_model_is_refused_with_the_reason() {
        let error = model_from("{\"format\": \"something.else\"}").unwrap_err().to_string();
        assert!(error.contains("not a segment model"), "{error}");
    }
}
