//! `segflow_assign` and `segflow_score`: saved models as SQL functions, so that assigning or
//! scoring a large table runs where its rows are — on the Ballista executors — batch by batch,
//! instead of collecting the table into segflow's process.
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

use datafusion::arrow::array::{ArrayRef, AsArray, BooleanArray, Float64Array, Float64Builder, Int32Builder, StructArray};
use datafusion::arrow::compute::cast;
use datafusion::arrow::datatypes::{DataType, Field, FieldRef, Fields, Float64Type};
use datafusion::common::{DataFusionError, Result, ScalarValue, exec_err, internal_err, plan_err};
use datafusion::logical_expr::{ColumnarValue, ReturnFieldArgs, ScalarFunctionArgs, ScalarUDF, ScalarUDFImpl, Signature, Volatility};
use segflow_ml::prep::{FeatureColumn, FeatureKind};

use crate::stage::churn::{ChurnModel, top_columns};
use crate::stage::segment::SegmentModel;

pub const ASSIGN: &str = "segflow_assign";
pub const SCORE: &str = "segflow_score";

/// Every segflow function an executor needs.
pub fn functions() -> Vec<Arc<ScalarUDF>> {
    vec![Arc::new(ScalarUDF::new_from_impl(AssignUdf::new())), Arc::new(ScalarUDF::new_from_impl(ScoreUdf::new()))]
}

/// The function called `name`.
pub fn function(name: &str) -> Option<Arc<ScalarUDF>> {
    functions().into_iter().find(|f| f.name() == name)
}

/// Adds segflow's functions to a name → function map (Ballista's executor registry).
pub fn register_on(map: &mut HashMap<String, Arc<ScalarUDF>>) {
    for f in functions() {
        map.insert(f.name().to_string(), f);
    }
}

/// The struct `segflow_score` returns: the churn scores table's per-row columns (the risk
/// decile ranks the whole input, so the query computes it, not the function).
pub fn score_fields(explain: usize) -> Fields {
    let mut fields = vec![Field::new("churn_probability", DataType::Float64, false), Field::new("predicted_churn", DataType::Boolean, false)];
    for i in 1..=explain {
        fields.push(Field::new(format!("top_feature_{i}"), DataType::Utf8, true));
        fields.push(Field::new(format!("top_contribution_{i}"), DataType::Float64, true));
    }
    Fields::from(fields)
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
        let text = text_literal(Some(model_arg), ASSIGN, "the model")?;
        let model = model_from(text)?;
        let rows = args.number_rows;
        let x = prepared(&model.preparation, feature_args, rows, ASSIGN)?;
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

/// The model's features as the preparation reads them: numeric ones as float64, categorical
/// ones as text, as the in-process path reads them; `rows` values each.
fn prepared(preparation: &segflow_ml::prep::Preparation, args: &[ColumnarValue], rows: usize, name: &str) -> Result<ndarray::Array2<f64>> {
    let features = preparation.features();
    if features.len() != args.len() {
        return exec_err!("{name}: the model has {} features, the call passes {}", features.len(), args.len());
    }
    let mut numeric: Vec<Vec<Option<f64>>> = Vec::new();
    let mut text_arrays: Vec<ArrayRef> = Vec::new();
    for (feature, arg) in features.iter().zip(args) {
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
    preparation.transform(&columns).map_err(|e| DataFusionError::Execution(format!("{name}: {e}")))
}

fn text_literal<'a>(arg: Option<&'a ColumnarValue>, name: &str, what: &str) -> Result<&'a str> {
    match arg {
        Some(ColumnarValue::Scalar(ScalarValue::Utf8(Some(t)) | ScalarValue::LargeUtf8(Some(t)) | ScalarValue::Utf8View(Some(t)))) => Ok(t),
        _ => exec_err!("{name}: {what} must be a text literal"),
    }
}

#[derive(Debug, PartialEq, Eq, Hash)]
struct ScoreUdf {
    signature: Signature,
}

impl ScoreUdf {
    fn new() -> Self {
        ScoreUdf { signature: Signature::variadic_any(Volatility::Immutable) }
    }
}

/// Churn models loaded so far, by folder, with the `model.json` text they were loaded from: a
/// forest is too large for a plan literal, so the executors read it from a folder they share,
/// and a new model committed to the same folder (a new run id in `model.json`) is loaded anew.
static CHURN_MODELS: LazyLock<Mutex<HashMap<String, (String, Arc<ChurnModel>)>>> = LazyLock::new(|| Mutex::new(HashMap::new()));

fn churn_model_at(folder: &str) -> Result<Arc<ChurnModel>> {
    let path = std::path::Path::new(folder);
    let file = if path.is_dir() { path.join(crate::stage::churn::MODEL_FILE) } else { path.to_path_buf() };
    let text = std::fs::read_to_string(&file).map_err(|e| DataFusionError::Execution(format!("{SCORE}: cannot read the churn model {}: {e}", file.display())))?;
    let mut models = CHURN_MODELS.lock().map_err(|_| DataFusionError::Execution(format!("{SCORE}: the model cache was poisoned")))?;
    if let Some((loaded_from, model)) = models.get(folder)
        && *loaded_from == text
    {
        return Ok(model.clone());
    }
    let model = Arc::new(ChurnModel::load(path).map_err(|e| DataFusionError::Execution(format!("{SCORE}: {e}")))?);
    models.insert(folder.to_string(), (text, model.clone()));
    Ok(model)
}

fn explain_literal(arg: Option<&ScalarValue>) -> Option<usize> {
    match arg {
        Some(ScalarValue::Int64(Some(n))) => usize::try_from(*n).ok(),
        _ => None,
    }
}

impl ScalarUDFImpl for ScoreUdf {
    fn name(&self) -> &str {
        SCORE
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn return_type(&self, _: &[DataType]) -> Result<DataType> {
        internal_err!("{SCORE}: the return type depends on its second argument")
    }

    /// `segflow_score(model_folder, explain, features…)`: `explain`, the number of top
    /// contributing features the model reports, shapes the struct, so it is a literal.
    fn return_field_from_args(&self, args: ReturnFieldArgs) -> Result<FieldRef> {
        let Some(explain) = explain_literal(args.scalar_arguments.get(1).copied().flatten()) else {
            return plan_err!("{SCORE}(model_folder, explain, features…): the second argument is the model's explain count, an integer literal");
        };
        Ok(Arc::new(Field::new(SCORE, DataType::Struct(score_fields(explain)), false)))
    }

    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> Result<ColumnarValue> {
        let folder = text_literal(args.args.first(), SCORE, "the model folder")?;
        let model = churn_model_at(folder)?;
        let explain = match args.args.get(1) {
            Some(ColumnarValue::Scalar(value)) => explain_literal(Some(value)),
            _ => None,
        };
        if explain != Some(model.explain) {
            return exec_err!("{SCORE}: the call asks for {explain:?} top features, the model at {folder} reports {}", model.explain);
        }
        let rows = args.number_rows;
        let x = prepared(&model.preparation, &args.args[2..], rows, SCORE)?;
        // `score` also ranks the rows into deciles; within one batch that rank is meaningless
        // and is dropped: the query ranks the whole input.
        let scores = model.score(x.view()).map_err(|e| DataFusionError::Execution(format!("{SCORE}: {e}")))?;
        let probability: Float64Array = scores.iter().map(|s| Some(s.probability)).collect();
        let predicted: BooleanArray = scores.iter().map(|s| Some(s.predicted)).collect();
        let mut columns: Vec<ArrayRef> = vec![Arc::new(probability), Arc::new(predicted)];
        columns.extend(top_columns(&scores, model.explain));
        Ok(ColumnarValue::Array(Arc::new(StructArray::try_new(score_fields(model.explain), columns, None)?)))
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
