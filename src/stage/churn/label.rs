//! The churn label: a column of the feature table, or defined on transactions the way
//! practitioners do — an observation date, a lead time and a churn window.
//!
//! From transactions, a customer of the training table **churned** when it has no
//! transaction in `[observation_date + lead_days, observation_date + lead_days + window_days)`.
//! The lead time leaves room to act on a score before the window opens. The label is only
//! honest if every feature was computed from data before the observation date: compute the
//! training table with the SQL's `as_of` bound to the same date (`bind:` on the sql stage;
//! the demo and Online Retail pipelines do, and a test proves that changing every transaction
//! after the date leaves their features unchanged).

use chrono::NaiveDate;
use datafusion::arrow::array::{Array, AsArray};
use datafusion::arrow::datatypes::{DataType, TimeUnit, TimestampMicrosecondType};
use datafusion::functions_aggregate::expr_fn::max;
use datafusion::logical_expr::{Expr, JoinType, cast, ident, lit, when};
use datafusion::prelude::{DataFrame, SessionContext};
use datafusion::scalar::ScalarValue;

use crate::config::yaml::At;
use crate::vars::{VarValue, Vars, days_since_epoch};

/// The column the label travels in, between the frame and the model: 1 churned, 0 stayed,
/// null unknown.
pub const LABEL_COLUMN: &str = "__segflow_label";
const ACTIVE_COLUMN: &str = "__segflow_active";
const MICROS_PER_DAY: i64 = 86_400_000_000;

#[derive(Debug, Clone)]
pub enum ObservationDate {
    Literal(NaiveDate),
    /// A pipeline variable holding a date, so `--var` moves features and label together.
    Var(String),
}

#[derive(Debug, Clone)]
pub enum LabelPlan {
    /// A boolean or 0/1 column; with `positive`, a text column and the value meaning churned.
    Column { column: At<String>, positive: Option<String> },
    Transactions { table: At<String>, customer: At<String>, time: At<String>, observation: ObservationDate, lead_days: u32, window_days: u32 },
}

/// The churn window in microseconds since the epoch, `[start, end)`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Window {
    pub observation: NaiveDate,
    pub start: NaiveDate,
    pub end: NaiveDate,
}

impl ObservationDate {
    pub fn resolve(&self, vars: &Vars) -> Result<NaiveDate, String> {
        match self {
            ObservationDate::Literal(date) => Ok(*date),
            ObservationDate::Var(name) => match vars.get(name) {
                Some(VarValue::Date(date)) => Ok(*date),
                Some(other) => Err(format!("`observation_date` names the variable `{name}`, which is {}, not a date", other.type_name())),
                None => Err(format!("`observation_date` is neither a date (YYYY-MM-DD) nor a pipeline variable: `{name}`")),
            },
        }
    }
}

fn micros(date: NaiveDate) -> i64 {
    i64::from(days_since_epoch(date)) * MICROS_PER_DAY
}

fn timestamp(date: NaiveDate) -> Expr {
    lit(ScalarValue::TimestampMicrosecond(Some(micros(date)), None))
}

fn as_timestamp(column: &str) -> Expr {
    cast(ident(column), DataType::Timestamp(TimeUnit::Microsecond, None))
}

impl LabelPlan {
    pub fn window(&self, vars: &Vars) -> Result<Option<Window>, String> {
        match self {
            LabelPlan::Column { .. } => Ok(None),
            LabelPlan::Transactions { observation, lead_days, window_days, .. } => {
                let observation = observation.resolve(vars)?;
                let start = observation + chrono::Days::new(u64::from(*lead_days));
                let end = start + chrono::Days::new(u64::from(*window_days));
                Ok(Some(Window { observation, start, end }))
            }
        }
    }

    /// What churned means, in words, for the log and the saved model.
    pub fn describe(&self, vars: &Vars) -> String {
        match (self, self.window(vars)) {
            (LabelPlan::Column { column, positive: Some(p) }, _) => format!("`{}` = {p:?}", column.value),
            (LabelPlan::Column { column, positive: None }, _) => format!("`{}` is true (1)", column.value),
            (LabelPlan::Transactions { table, .. }, Ok(Some(w))) => {
                format!("no transaction in `{}` from {} to {} (exclusive), observed on {}", table.value, w.start, w.end, w.observation)
            }
            (LabelPlan::Transactions { table, .. }, _) => format!("no transaction in `{}` in the churn window", table.value),
        }
    }

    /// `train` with the label added as [`LABEL_COLUMN`].
    pub async fn attach(&self, session: &SessionContext, train: DataFrame, id: &str, vars: &Vars) -> Result<DataFrame, String> {
        let describe = |e: datafusion::error::DataFusionError| crate::engine::describe_datafusion_error(&e);
        match self {
            LabelPlan::Column { column, positive: None } => {
                train.with_column(LABEL_COLUMN, cast(ident(&column.value), DataType::Float64)).map_err(describe)
            }
            LabelPlan::Column { column, positive: Some(positive) } => {
                let value = cast(ident(&column.value), DataType::Utf8);
                let label = when(value.clone().is_null(), lit(ScalarValue::Float64(None)))
                    .when(value.eq(lit(positive.as_str())), lit(1.0))
                    .otherwise(lit(0.0))
                    .map_err(describe)?;
                train.with_column(LABEL_COLUMN, label).map_err(describe)
            }
            LabelPlan::Transactions { table, customer, time, .. } => {
                let Some(window) = self.window(vars)? else { unreachable!("a transaction label has a window") };
                let transactions = session.table(table.value.as_str()).await.map_err(describe)?;

                // Data that stop before the window ends would call every customer who buys
                // after the last day churned.
                let last = transactions
                    .clone()
                    .aggregate(vec![], vec![max(as_timestamp(&time.value)).alias("last")])
                    .map_err(describe)?
                    .collect()
                    .await
                    .map_err(describe)?;
                let last = last
                    .first()
                    .filter(|b| b.num_rows() == 1)
                    .map(|b| b.column(0).as_primitive::<TimestampMicrosecondType>())
                    .and_then(|c| (!c.is_null(0)).then(|| c.value(0)));
                let window_last_day = micros(window.end) - MICROS_PER_DAY;
                match last {
                    None => return Err(format!("`{}` has no transactions: there is nothing to define churn from", table.value)),
                    Some(last) if last < window_last_day => {
                        let last_day = chrono::DateTime::from_timestamp_micros(last).map(|t| t.date_naive().to_string()).unwrap_or_else(|| last.to_string());
                        return Err(format!(
                            "the churn window runs from {} to {} but `{}` ends on {last_day}: customers who buy after that would count as churned; move `observation_date` back or shorten `window_days`",
                            window.start, window.end, table.value
                        ));
                    }
                    Some(_) => {}
                }

                let id_type = train.schema().field_with_unqualified_name(id).map(|f| f.data_type().clone()).map_err(describe)?;
                let in_window = as_timestamp(&time.value).gt_eq(timestamp(window.start)).and(as_timestamp(&time.value).lt(timestamp(window.end)));
                let active = transactions
                    .filter(in_window.and(ident(&customer.value).is_not_null()))
                    .and_then(|f| f.select(vec![cast(ident(&customer.value), id_type).alias(ACTIVE_COLUMN)]))
                    .and_then(|f| f.distinct())
                    .map_err(describe)?;
                let label = when(ident(ACTIVE_COLUMN).is_null(), lit(1.0)).otherwise(lit(0.0)).map_err(describe)?;
                train
                    .join(active, JoinType::Left, &[id], &[ACTIVE_COLUMN], None)
                    .and_then(|f| f.with_column(LABEL_COLUMN, label))
                    .and_then(|f| f.drop_columns(&[ACTIVE_COLUMN]))
                    .map_err(describe)
            }
        }
    }
}
