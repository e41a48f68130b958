//! `kind: sql` — one SQL query, inline or in a file, run by DataFusion.
//!
//! ```yaml
//! - name: customer_features
//!   kind: sql
//!   inputs: [transactions, customers]      # the only tables the query may read
//!   file: ../sql/customer_features.sql     # or `query: SELECT …`
//!   bind: { as_of: observation_date }       # optional: ${as_of} takes observation_date's value
//! ```
//! Inputs and upstream stages are tables by name. `${name}` binds a pipeline variable as a
//! typed literal (see [`crate::vars`]). The query must be a single SELECT (or WITH … SELECT):
//! a stage computes a table, it does not create or drop anything.

use std::collections::HashMap;
use std::path::PathBuf;

use async_trait::async_trait;
use datafusion::common::ParamValues;
use datafusion::error::DataFusionError;
use datafusion::logical_expr::LogicalPlan;
use datafusion::prelude::DataFrame;
use serde::Deserialize;

use super::{BuildContext, Stage, StageContext, StageFailure, StageKind, StageMetrics, StageOutput, StageProblem, StageResult};
use crate::config::yaml::{At, Node, OrderedMap, Pos, did_you_mean, from_node, quoted_list};
use crate::engine::describe_datafusion_error;
use crate::vars::{BoundSql, bind_sql};

pub struct SqlKind;

/// The parameters of a `sql` stage: exactly one of `query` and `file`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct SqlParams {
    /// The query itself, usually as a YAML block (`query: |`).
    #[serde(default)]
    query: Option<At<String>>,
    /// A file holding the query, relative to the pipeline file (e.g. `../sql/features.sql`).
    #[serde(default)]
    file: Option<At<String>>,
    /// `${name}` in this query takes the value of another pipeline variable: `{ as_of:
    /// observation_date }` runs a feature query written for `as_of` at the observation date.
    #[serde(default)]
    bind: Option<OrderedMap<At<String>>>,
}

/// Where the query text came from, to turn a position in the query into one in a file.
#[derive(Debug, Clone)]
enum SqlOrigin {
    File(PathBuf),
    /// Inline in the pipeline file: the query's first character is at `first_line`,
    /// `first_column` of the YAML, and (for block scalars) every line is indented by `indent`.
    Inline { first_line: u32, first_column: u32, block_indent: Option<u32> },
}

impl SqlOrigin {
    fn locate(&self, line: u32, column: u32) -> (Option<PathBuf>, Pos) {
        match self {
            SqlOrigin::File(path) => (Some(path.clone()), Pos { line, column }),
            SqlOrigin::Inline { first_line, block_indent: Some(indent), .. } => {
                (None, Pos { line: first_line + line - 1, column: indent + column })
            }
            SqlOrigin::Inline { first_line, first_column, block_indent: None } => {
                let column = if line == 1 { first_column + column - 1 } else { column };
                (None, Pos { line: first_line + line - 1, column })
            }
        }
    }

    fn problem(&self, line: u32, column: u32, message: impl Into<String>) -> StageProblem {
        let (file, pos) = self.locate(line, column);
        StageProblem { file, pos: Some(pos), message: message.into(), suggestion: None }
    }
}

impl StageKind for SqlKind {
    fn name(&self) -> &'static str {
        "sql"
    }

    fn build(&self, params: &Node, ctx: &BuildContext<'_>) -> Result<Box<dyn Stage>, Vec<StageProblem>> {
        let params: SqlParams = from_node(params).map_err(|e| {
            vec![StageProblem { file: None, pos: e.pos, message: e.message, suggestion: e.suggestion }]
        })?;
        let (text, origin) = match (params.query, params.file) {
            (Some(query), None) => {
                let origin = inline_origin(ctx.pipeline_text, query.pos);
                (query.value, origin)
            }
            (None, Some(file)) => {
                let path = ctx.base_dir.join(&file.value);
                match std::fs::read_to_string(&path) {
                    Ok(text) => (text, SqlOrigin::File(crate::diag::display_path(&path))),
                    Err(e) => {
                        let reason = if e.kind() == std::io::ErrorKind::NotFound { "not found".to_string() } else { e.to_string() };
                        return Err(vec![StageProblem::at(
                            file.pos,
                            format!("SQL file {reason}: {}", crate::diag::display_path(&path).display()),
                        )]);
                    }
                }
            }
            (Some(query), Some(_)) => {
                return Err(vec![StageProblem::at(query.pos, "give either `query` or `file`, not both")]);
            }
            (None, None) => {
                // No position of its own: the planner reports it at the stage.
                return Err(vec![StageProblem {
                    file: None,
                    pos: None,
                    message: "a sql stage needs `query` (the SQL itself) or `file` (a .sql file)".to_string(),
                    suggestion: None,
                }]);
            }
        };
        let bound = bind_sql(&text)
            .map_err(|errors| errors.into_iter().map(|e| origin.problem(e.line, e.column, e.message)).collect::<Vec<_>>())?;
        let mut renames = HashMap::new();
        let mut problems = Vec::new();
        for (name, source) in params.bind.map(|b| b.0).unwrap_or_default() {
            if !ctx.vars.contains_key(&source.value) {
                problems.push(StageProblem {
                    file: None,
                    pos: Some(source.pos),
                    message: format!("`bind.{}` names `{}`, which is not a pipeline variable; defined: {}", name.value, source.value, quoted_list(ctx.vars.keys().map(String::as_str))),
                    suggestion: did_you_mean(&source.value, ctx.vars.keys().map(String::as_str)),
                });
            } else if !bound.refs.iter().any(|r| r.name == name.value) {
                problems.push(StageProblem::at(name.pos, format!("`bind.{}`: the query never uses `${{{}}}`", name.value, name.value)));
            } else {
                renames.insert(name.value, source.value);
            }
        }
        if !problems.is_empty() {
            return Err(problems);
        }
        let undefined: Vec<StageProblem> = bound
            .refs
            .iter()
            .filter(|r| !renames.contains_key(&r.name) && !ctx.vars.contains_key(&r.name))
            .map(|r| {
                let mut problem = origin.problem(
                    r.line,
                    r.column,
                    format!("undefined variable `{}`; defined: {}", r.name, quoted_list(ctx.vars.keys().map(String::as_str))),
                );
                problem.suggestion = did_you_mean(&r.name, ctx.vars.keys().map(String::as_str));
                problem
            })
            .collect();
        if !undefined.is_empty() {
            return Err(undefined);
        }
        Ok(Box::new(SqlStage { bound, origin, inputs: ctx.inputs.to_vec(), renames }))
    }
}

/// Where inline SQL starts in the YAML text: after a block indicator (`|`, `>`), on the next
/// line at its indentation; otherwise where the scalar starts (after an opening quote).
fn inline_origin(yaml: &str, pos: Pos) -> SqlOrigin {
    let line_text = yaml.lines().nth(pos.line.saturating_sub(1) as usize).unwrap_or("");
    let from_value: String = line_text.chars().skip(pos.column.saturating_sub(1) as usize).collect();
    let value_start = from_value.trim_start();
    if value_start.starts_with('|') || value_start.starts_with('>') {
        let next = yaml.lines().nth(pos.line as usize).unwrap_or("");
        let indent = (next.len() - next.trim_start().len()) as u32;
        return SqlOrigin::Inline { first_line: pos.line + 1, first_column: indent + 1, block_indent: Some(indent) };
    }
    // The parser may report a block scalar where its content starts, below the indicator.
    let previous = yaml.lines().nth(pos.line.saturating_sub(2) as usize).unwrap_or("").trim_end();
    let indicator = previous.trim_end_matches(['-', '+']);
    if pos.line > 1 && (indicator.ends_with('|') || indicator.ends_with('>')) {
        let indent = pos.column.saturating_sub(1);
        return SqlOrigin::Inline { first_line: pos.line, first_column: pos.column, block_indent: Some(indent) };
    }
    let quoted = value_start.starts_with('\'') || value_start.starts_with('"');
    SqlOrigin::Inline { first_line: pos.line, first_column: pos.column + u32::from(quoted), block_indent: None }
}

#[derive(Debug)]
struct SqlStage {
    bound: BoundSql,
    origin: SqlOrigin,
    inputs: Vec<String>,
    /// Variable the query names → pipeline variable whose value it takes (`bind:`).
    renames: HashMap<String, String>,
}

impl SqlStage {
    /// DataFusion's planning errors (it may collect several), each located in the query when
    /// DataFusion says where.
    fn problems_from(&self, err: &DataFusionError) -> Vec<StageProblem> {
        err.iter().map(|e| self.problem_from(e)).collect()
    }

    fn problem_from(&self, err: &DataFusionError) -> StageProblem {
        let diagnostic = err.diagnostic();
        let mut message = describe_datafusion_error(err);
        let mut suggestion = None;
        if let Some((column, valid)) = unknown_column(err) {
            suggestion = did_you_mean(&column, valid.iter().map(String::as_str));
            message = format!("unknown column `{column}`; the columns here are: {}", quoted_list(valid.iter().map(String::as_str)));
        } else if let Some(table) = unknown_table(&message) {
            suggestion = did_you_mean(&table, self.inputs.iter().map(String::as_str));
            message = format!(
                "unknown table `{table}`; this stage reads its inputs: {}",
                quoted_list(self.inputs.iter().map(String::as_str))
            );
        }
        let mut span_at = diagnostic.and_then(|d| d.span).filter(|s| s.start.line > 0).map(|s| (s.start.line as u32, s.start.column as u32));
        if let Some((syntax, line, column)) = syntax_error(&message) {
            message = format!("SQL syntax error: {syntax}");
            span_at = Some((line, column));
        }
        match span_at {
            Some((line, column)) => {
                let mut p = self.origin.problem(line, column, message);
                p.suggestion = suggestion;
                p
            }
            None => {
                let mut p = self.origin.problem(1, 1, message);
                p.suggestion = suggestion;
                p
            }
        }
    }

    async fn plan_frame(&self, ctx: &StageContext<'_>) -> Result<DataFrame, Vec<StageProblem>> {
        let state = ctx.session.state();
        let dialect = state.config().options().sql_parser.dialect;
        let statement = state.sql_to_statement(&self.bound.text, &dialect).map_err(|e| self.problems_from(&e))?;
        // The tables the text names (CTEs excluded), before planning inlines any view.
        let named = state.resolve_table_references(&statement).map_err(|e| self.problems_from(&e))?;
        let outside = named
            .iter()
            .map(|r| r.table().to_string())
            .find(|t| !self.inputs.contains(t) && ctx.session.table_exist(t.as_str()).unwrap_or(false));
        let plan = state.statement_to_plan(statement).await.map_err(|e| self.problems_from(&e))?;
        if !is_query(&plan) {
            return Err(vec![self.origin.problem(1, 1, "a sql stage is one query (SELECT or WITH … SELECT); it may not create, change or drop anything")]);
        }
        if let Some(outside) = outside {
            return Err(vec![self.origin.problem(
                1,
                1,
                format!(
                    "the query reads `{outside}`, which is not among the stage's inputs ({}); add it to `inputs` so the stage runs after it",
                    quoted_list(self.inputs.iter().map(String::as_str))
                ),
            )]);
        }
        let values: HashMap<String, datafusion::scalar::ScalarValue> = self
            .bound
            .refs
            .iter()
            .filter_map(|r| {
                let source = self.renames.get(&r.name).unwrap_or(&r.name);
                ctx.vars.get(source).map(|v| (r.name.clone(), v.to_scalar()))
            })
            .collect();
        let plan = if values.is_empty() {
            plan
        } else {
            plan.with_param_values(ParamValues::from(values.into_iter().collect::<Vec<_>>()))
                .map_err(|e| self.problems_from(&e))?
        };
        Ok(DataFrame::new(state, plan))
    }
}

#[async_trait]
impl Stage for SqlStage {
    async fn plan(&self, ctx: &StageContext<'_>) -> Result<Vec<StageResult>, Vec<StageProblem>> {
        let frame = self.plan_frame(ctx).await?;
        Ok(vec![StageResult { name: ctx.stage_name.to_string(), frame }])
    }

    async fn run(&self, ctx: &StageContext<'_>) -> Result<StageOutput, StageFailure> {
        let frame = self.plan_frame(ctx).await.map_err(|problems| {
            let p = &problems[0];
            let place = match (&p.file, p.pos) {
                (Some(file), Some(pos)) => format!("{}:{pos}: ", file.display()),
                _ => String::new(),
            };
            StageFailure { message: format!("{place}{}", p.message) }
        })?;
        Ok(StageOutput::new(vec![StageResult { name: ctx.stage_name.to_string(), frame }], StageMetrics::new()))
    }
}

/// A query, as opposed to DDL, DML or a session statement.
fn is_query(plan: &LogicalPlan) -> bool {
    !matches!(plan, LogicalPlan::Ddl(_) | LogicalPlan::Dml(_) | LogicalPlan::Statement(_) | LogicalPlan::Copy(_) | LogicalPlan::DescribeTable(_) | LogicalPlan::Explain(_))
}

/// sqlparser's `ParserError("Expected: X, found: Y at Line: 3, Column: 7")` as
/// ("expected X, found Y", 3, 7).
fn syntax_error(message: &str) -> Option<(String, u32, u32)> {
    let inner = message.strip_prefix("ParserError(\"")?.strip_suffix("\")")?;
    let (text, place) = inner.rsplit_once(" at Line: ")?;
    let (line, column) = place.split_once(", Column: ")?;
    let text = text.replacen("Expected: ", "expected ", 1).replacen(", found: ", ", found ", 1);
    Some((text, line.trim().parse().ok()?, column.trim().parse().ok()?))
}

/// The column DataFusion could not find, and the unqualified names it could have been.
pub(crate) fn unknown_column(err: &DataFusionError) -> Option<(String, Vec<String>)> {
    use datafusion::common::SchemaError;
    match err.find_root() {
        DataFusionError::SchemaError(schema_error, _) => match schema_error.as_ref() {
            SchemaError::FieldNotFound { field, valid_fields } => {
                let mut valid: Vec<String> = valid_fields.iter().map(|c| c.name.clone()).collect();
                valid.dedup();
                Some((field.name.clone(), valid))
            }
            _ => None,
        },
        _ => None,
    }
}

/// The table name in DataFusion's "table 'datafusion.public.x' not found".
fn unknown_table(message: &str) -> Option<String> {
    let rest = message.strip_prefix("table '")?;
    let (qualified, tail) = rest.split_once('\'')?;
    if !tail.contains("not found") {
        return None;
    }
    Some(qualified.rsplit('.').next().unwrap_or(qualified).to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn block_sql_positions_map_to_the_yaml_lines_below_the_indicator() {
        let yaml = "stages:\n  - query: |\n      SELECT a\n      FROM t\n";
        // Whether the parser points at the indicator or at the first line of the content.
        for reported in [Pos { line: 2, column: 12 }, Pos { line: 3, column: 7 }] {
            let origin = inline_origin(yaml, reported);
            assert_eq!(origin.locate(2, 6).1, Pos { line: 4, column: 12 }, "reported at {reported}");
        }
    }

    #[test]
    fn plain_inline_sql_positions_start_at_the_scalar() {
        let origin = inline_origin("query: SELECT x FROM t\n", Pos { line: 1, column: 8 });
        assert_eq!(origin.locate(1, 8).1, Pos { line: 1, column: 15 });
    }

    #[test]
    fn a_parser_error_becomes_a_located_syntax_error() {
        assert_eq!(
            syntax_error("ParserError(\"Expected: an SQL statement, found: SELEC at Line: 2, Column: 5\")"),
            Some(("expected an SQL statement, found SELEC".to_string(), 2, 5))
        );
    }

    #[test]
    fn datafusions_table_not_found_names_the_table() {
        assert_eq!(unknown_table("table 'datafusion.public.tx' not found").as_deref(), Some("tx"));
        assert_eq!(unknown_table("something else"), None);
    }
}
