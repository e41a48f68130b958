//! Raw config → validated plan.
//!
//! [`prepare`] resolves what needs no query engine: variables, input paths, stage kinds and
//! their parameters, names, the DAG and its order, outputs. [`check`] then plans every stage
//! with DataFusion against the inputs' schemas (file footers only; no data is read) and
//! checks output columns. Both keep going after a problem, so `validate` reports them all.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use chrono::NaiveDate;
use datafusion::arrow::datatypes::{Schema, SchemaRef};
use datafusion::catalog::empty::EmptyTable;

use crate::config::yaml::{At, Pos, did_you_mean, quoted_list};
use crate::config::{PartitionBy, RawPipeline};
use crate::diag::{Diagnostic, Diagnostics};
use crate::engine::{self, EngineOptions, InputLocation};
use crate::evaluation;
use crate::stage::{self, BuildContext, Stage, StageContext, StageProblem};
use crate::vars::{RUN_DATE, VarValue, Vars};

/// What the command line adds to a pipeline file.
#[derive(Debug, Clone)]
pub struct PlanOptions {
    pub run_date: NaiveDate,
    /// `--var name=value`, in the order given.
    pub var_overrides: Vec<(String, String)>,
    /// `--output-root`, overriding the file's `output_root`.
    pub output_root: Option<PathBuf>,
}

/// A pipeline ready to run: everything resolved, stages in dependency order.
#[derive(Debug)]
pub struct Plan {
    /// The pipeline file as messages name it.
    pub file: PathBuf,
    pub name: String,
    pub seed: u64,
    pub output_root: PathBuf,
    pub vars: Vars,
    pub inputs: Vec<PlannedInput>,
    /// In an order where every stage comes after its inputs (ties: file order).
    pub stages: Vec<PlannedStage>,
    pub outputs: Vec<PlannedOutput>,
    /// Results of stages left out by `--select`/`--exclude`, read from their committed tables.
    pub reused: Vec<crate::select::Reused>,
    /// Whether the run writes `reports/` (not when only part of the pipeline runs).
    pub write_reports: bool,
    /// The engine the file asks for (`--engine` overrides it).
    pub engine: Option<crate::engine::Engine>,
}

#[derive(Debug)]
pub struct PlannedInput {
    pub name: String,
    pub pos: Pos,
    pub location: InputLocation,
    pub declared_schema: Vec<DeclaredColumn>,
}

#[derive(Debug, Clone)]
pub struct DeclaredColumn {
    pub name: String,
    pub type_name: String,
    pub pos: Pos,
}

#[derive(Debug)]
pub struct PlannedStage {
    pub name: String,
    pub kind: &'static str,
    pub pos: Pos,
    pub inputs: Vec<String>,
    pub stage: Box<dyn Stage>,
}

#[derive(Debug, Clone)]
pub struct PlannedOutput {
    pub table: String,
    pub pos: Pos,
    /// The stage result written.
    pub from: String,
    pub partition_by: PartitionBy,
    pub sort_by: Vec<At<String>>,
    pub schema_version: u32,
}

impl PlannedStage {
    /// Whether `result` is one of this stage's results: its own name, or `<stage>_<part>`.
    pub fn produces(&self, result: &str) -> bool {
        result == self.name || self.stage.secondary_results().iter().any(|part| result == format!("{}_{part}", self.name))
    }
}

impl Plan {
    /// The stage that produces the table `result`, if a stage does.
    pub fn producer(&self, result: &str) -> Option<&PlannedStage> {
        self.stages.iter().find(|s| s.produces(result))
    }

    /// The run date as `YYYY-MM-DD`: the partition this run writes. `prepare` always defines
    /// it, so `None` is a bug.
    pub fn run_date(&self) -> Option<String> {
        match self.vars.get(RUN_DATE) {
            Some(VarValue::Date(d)) => Some(d.format("%Y-%m-%d").to_string()),
            _ => None,
        }
    }
}

/// Names become SQL table names, folder names and Parquet column prefixes: keep them plain.
/// Lowercase because SQL folds unquoted names to lowercase.
pub fn is_valid_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars.next().is_some_and(|c| c.is_ascii_lowercase() || c == '_')
        && chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
        && name.len() <= 64
}

const NAME_RULE: &str = "names are lowercase letters, digits and `_`, starting with a letter or `_` (SQL folds unquoted names to lowercase)";

/// Everything [`prepare`] could resolve, with the problems found so far.
pub struct Prepared {
    pub plan: Plan,
    pub diagnostics: Diagnostics,
    /// Stages that could not be built (unknown kind, bad parameters, in a cycle …): the
    /// stages downstream of them are not planned, to avoid reporting the same problem twice.
    pub broken: BTreeSet<String>,
}

pub fn prepare(raw: &RawPipeline, pipeline_text: &str, shown: &Path, mut diags: Diagnostics, options: &PlanOptions) -> Prepared {
    let problem = |pos: Option<Pos>, message: String| Diagnostic::new(shown, pos, message);
    let base_dir = raw.base_dir();

    // Variables: YAML defaults, then run_date, then --var overrides typed like their default.
    let mut vars = Vars::new();
    for (name, node) in &raw.vars {
        if name.value == RUN_DATE {
            diags.push(problem(Some(name.pos), format!("`{RUN_DATE}` is set by the run (--run-date), not declared in `vars`")));
            continue;
        }
        if !is_valid_name(&name.value) {
            diags.push(problem(Some(name.pos), format!("invalid variable name `{}`: {NAME_RULE}", name.value)));
            continue;
        }
        match VarValue::from_node(node) {
            Ok(value) => {
                vars.insert(name.value.clone(), value);
            }
            Err(message) => diags.push(problem(Some(node.pos), format!("variable `{}`: {message}", name.value))),
        }
    }
    vars.insert(RUN_DATE.to_string(), VarValue::Date(options.run_date));
    for (name, text) in &options.var_overrides {
        match vars.get(name) {
            Some(_) if name == RUN_DATE => {
                diags.push(problem(None, format!("--var {RUN_DATE}=…: use --run-date {text}")));
            }
            Some(default) => match default.parse_like(text) {
                Ok(value) => {
                    vars.insert(name.clone(), value);
                }
                Err(message) => diags.push(problem(None, format!("--var {name}={text}: {message}"))),
            },
            None => diags.push(
                problem(
                    None,
                    format!("--var {name}={text}: the pipeline declares no variable `{name}`; declared: {}", quoted_list(vars.keys().map(String::as_str))),
                )
                .suggest(did_you_mean(name, vars.keys().map(String::as_str))),
            ),
        }
    }

    // Inputs.
    let mut inputs = Vec::new();
    let mut missing_inputs: BTreeSet<String> = BTreeSet::new();
    let mut names_seen: HashMap<String, Pos> = HashMap::new();
    for input in &raw.inputs {
        let name = &input.name;
        if !is_valid_name(name) {
            diags.push(problem(Some(name.pos), format!("invalid input name `{}`: {NAME_RULE}", name.value)));
        }
        names_seen.insert(name.value.clone(), name.pos);
        let path = crate::diag::normalize(&base_dir.join(&input.spec.path.value));
        let location = match InputLocation::resolve(&path) {
            Ok(location) => location,
            Err(message) => {
                diags.push(problem(Some(input.spec.path.pos), format!("input `{}`: {message}", name.value)));
                // Stages reading it are not planned: one missing file, one message.
                missing_inputs.insert(name.value.clone());
                continue;
            }
        };
        let mut declared_schema = Vec::new();
        if let Some(schema) = &input.spec.schema {
            for (column, type_name) in &schema.0 {
                declared_schema.push(DeclaredColumn { name: column.value.clone(), type_name: type_name.value.clone(), pos: type_name.pos });
            }
        }
        inputs.push(PlannedInput { name: name.value.clone(), pos: name.pos, location, declared_schema });
    }

    // Stages: names, kinds, parameters.
    let input_names: BTreeSet<&str> = raw.inputs.iter().map(|i| i.name.value.as_str()).collect();
    let mut built: Vec<PlannedStage> = Vec::new();
    let mut broken: BTreeSet<String> = missing_inputs;
    let mut stage_first_pos: HashMap<String, Pos> = HashMap::new();
    let stage_names: Vec<&str> = raw.stages.iter().filter_map(|s| s.name.as_ref().map(|n| n.value.as_str())).collect();
    for raw_stage in &raw.stages {
        let stage_name = raw_stage.display_name();
        let at_stage = |pos: Option<Pos>, message: String| Diagnostic::new(shown, pos.or(Some(raw_stage.pos)), message).in_stage(stage_name.clone());
        let Some(name) = &raw_stage.name else {
            continue; // reported by the loader
        };
        if let Some(first) = stage_first_pos.get(&name.value) {
            diags.push(at_stage(Some(name.pos), format!("duplicate stage name `{}` (first defined at line {})", name.value, first.line)));
            continue;
        }
        stage_first_pos.insert(name.value.clone(), name.pos);
        if let Some(input_pos) = names_seen.get(&name.value) {
            diags.push(at_stage(Some(name.pos), format!("stage name `{}` is already an input's name (line {}); give the stage another name", name.value, input_pos.line)));
            broken.insert(name.value.clone());
            continue;
        }
        if !is_valid_name(&name.value) {
            diags.push(at_stage(Some(name.pos), format!("invalid stage name `{}`: {NAME_RULE}", name.value)));
        }
        let mut input_list = Vec::new();
        let mut inputs_ok = true;
        for input in &raw_stage.inputs {
            if input_names.contains(input.value.as_str()) || stage_names.contains(&input.value.as_str()) {
                input_list.push(input.value.clone());
            } else {
                inputs_ok = false;
                let candidates: Vec<&str> = input_names.iter().copied().chain(stage_names.iter().copied()).collect();
                diags.push(
                    at_stage(
                        Some(input.pos),
                        format!("unknown input `{}`; inputs and stages are: {}", input.value, quoted_list(candidates.iter().copied())),
                    )
                    .suggest(did_you_mean(&input.value, candidates.iter().copied())),
                );
            }
        }
        let Some(kind_name) = &raw_stage.kind else {
            broken.insert(name.value.clone());
            continue;
        };
        let Some(kind) = stage::kind(&kind_name.value) else {
            diags.push(
                at_stage(Some(kind_name.pos), format!("unknown stage kind `{}`; known kinds: {}", kind_name.value, quoted_list(stage::kind_names())))
                    .suggest(did_you_mean(&kind_name.value, stage::kind_names())),
            );
            broken.insert(name.value.clone());
            continue;
        };
        let build_ctx = BuildContext {
            stage_name: &name.value,
            inputs: &input_list,
            base_dir,
            pipeline_file: shown,
            pipeline_text,
            vars: &vars,
        };
        match kind.build(&raw_stage.params, &build_ctx) {
            Ok(stage) if inputs_ok => built.push(PlannedStage {
                name: name.value.clone(),
                kind: kind.name(),
                pos: raw_stage.pos,
                inputs: input_list,
                stage,
            }),
            Ok(_) => {
                broken.insert(name.value.clone());
            }
            Err(problems) => {
                broken.insert(name.value.clone());
                for p in problems {
                    diags.push(stage_problem(shown, raw_stage.pos, &stage_name, with_common_fields(p)));
                }
            }
        }
    }

    // The DAG: order stages so each runs after its inputs; report a cycle as its path.
    let (ordered, cycle) = order_stages(built);
    if let Some(cycle) = cycle {
        let first = &cycle[0];
        let pos = stage_first_pos.get(first).copied();
        diags.push(Diagnostic::new(shown, pos, format!("cycle between stages: {}", cycle.join(" → "))).in_stage(first.clone()));
        for name in &cycle {
            broken.insert(name.clone());
        }
    }
    let stages: Vec<PlannedStage> = ordered.into_iter().filter(|s| !broken.contains(&s.name)).collect();

    // Outputs.
    let mut result_names: Vec<String> = Vec::new();
    for name in &stage_names {
        if !result_names.iter().any(|r| r == name) {
            result_names.push(name.to_string());
        }
    }
    for s in &stages {
        for part in s.stage.secondary_results() {
            result_names.push(format!("{}_{part}", s.name));
        }
    }
    if stages.iter().any(|s| evaluation::contributes(s.stage.as_ref())) {
        result_names.push(evaluation::EVALUATION.to_string());
    }
    let mut outputs = Vec::new();
    let mut tables_seen: HashMap<&str, Pos> = HashMap::new();
    for output in &raw.outputs {
        let table = &output.table;
        if !is_valid_name(table) {
            diags.push(problem(Some(table.pos), format!("invalid table name `{}`: {NAME_RULE}", table.value)));
            continue;
        }
        if table.value == crate::sink::SEGFLOW_DIR || table.value == stage::MODELS_DIR || table.value == crate::report::REPORTS_DIR {
            diags.push(problem(Some(table.pos), format!("`{}` is reserved for segflow's own files", table.value)));
            continue;
        }
        if let Some(first) = tables_seen.insert(&table.value, table.pos) {
            diags.push(problem(Some(table.pos), format!("duplicate output table `{}` (first at line {})", table.value, first.line)));
            continue;
        }
        let from = output.spec.from.as_ref().map(|f| (f.value.clone(), f.pos)).unwrap_or((table.value.clone(), table.pos));
        // A stage that failed to build has no results to list: its own problems are reported,
        // and an output of one of its results would only repeat them.
        let from_broken_stage = broken.iter().any(|b| from.0 == *b || from.0.starts_with(&format!("{b}_"))) || (from.0 == evaluation::EVALUATION && !broken.is_empty());
        // A stage without a name could be the one meant: its problem is reported already.
        let nameless_stage = raw.stages.iter().any(|s| s.name.is_none());
        if !result_names.contains(&from.0) && (from_broken_stage || nameless_stage) {
            continue;
        }
        if !result_names.contains(&from.0) {
            diags.push(
                problem(Some(from.1), format!("output `{}` is written from `{}`, which no stage produces; stage results are: {}", table.value, from.0, quoted_list(result_names.iter().map(String::as_str))))
                    .suggest(did_you_mean(&from.0, result_names.iter().map(String::as_str))),
            );
            continue;
        }
        let default_version = if from.0 == evaluation::EVALUATION { evaluation::SCHEMA_VERSION } else { 1 };
        outputs.push(PlannedOutput {
            table: table.value.clone(),
            pos: table.pos,
            from: from.0,
            partition_by: output.spec.partition_by,
            sort_by: output.spec.sort_by.clone(),
            schema_version: output.spec.schema_version.unwrap_or(default_version),
        });
    }
    if !raw.outputs_declared && !raw.stages.is_empty() {
        diags.push(problem(None, "the pipeline writes nothing: add an `outputs` section naming the tables to write".to_string()));
    }

    let name = raw.name.as_ref().map(|n| n.value.clone()).unwrap_or_default();
    let engine = match &raw.engine {
        None => None,
        Some(text) => match text.value.parse::<crate::engine::Engine>() {
            Ok(engine) => Some(engine),
            Err(message) => {
                diags.push(problem(Some(text.pos), message));
                None
            }
        },
    };
    let output_root = match (&options.output_root, &raw.output_root) {
        (Some(root), _) => std::path::absolute(root).unwrap_or_else(|_| root.clone()),
        (None, Some(root)) => crate::diag::normalize(&base_dir.join(&root.value)),
        (None, None) => crate::diag::normalize(&base_dir.join("output").join(&name)),
    };
    Prepared {
        plan: Plan { file: shown.to_path_buf(), name, seed: raw.seed, output_root, vars, inputs, stages, outputs, reused: Vec::new(), write_reports: true, engine },
        diagnostics: diags,
        broken,
    }
}

/// A kind only knows its own fields; a misspelt shared field (`inptus`) lands there too, so
/// name the shared fields in the message and suggest among them.
fn with_common_fields(mut p: StageProblem) -> StageProblem {
    if let Some(rest) = p.message.strip_prefix("unknown field `") {
        if let Some((field, _)) = rest.split_once('`') {
            let field = field.to_string();
            p.message.push_str(&format!(", or a field every stage has: {}", quoted_list(crate::config::COMMON_STAGE_FIELDS.iter().copied())));
            if p.suggestion.is_none() {
                p.suggestion = did_you_mean(&field, crate::config::COMMON_STAGE_FIELDS.iter().copied());
            }
        }
    }
    p
}

fn stage_problem(shown: &Path, stage_pos: Pos, stage_name: &str, p: StageProblem) -> Diagnostic {
    let file = p.file.unwrap_or_else(|| shown.to_path_buf());
    Diagnostic::new(file, p.pos.or(Some(stage_pos)), p.message).in_stage(stage_name).suggest(p.suggestion)
}

/// Kahn's algorithm, picking ready stages in file order so the order is stable. Returns the
/// ordered stages and, if some are left, one cycle among them (`a → b → a`).
fn order_stages(stages: Vec<PlannedStage>) -> (Vec<PlannedStage>, Option<Vec<String>>) {
    let names: BTreeSet<String> = stages.iter().map(|s| s.name.clone()).collect();
    let mut remaining: Vec<Option<PlannedStage>> = stages.into_iter().map(Some).collect();
    let mut done: BTreeSet<String> = BTreeSet::new();
    let mut ordered = Vec::new();
    loop {
        let ready = remaining.iter().position(|s| {
            s.as_ref().is_some_and(|s| s.inputs.iter().all(|i| !names.contains(i) || done.contains(i)))
        });
        match ready {
            Some(index) => {
                let stage = remaining[index].take().expect("position found a stage");
                done.insert(stage.name.clone());
                ordered.push(stage);
            }
            None => break,
        }
    }
    let left: Vec<PlannedStage> = remaining.into_iter().flatten().collect();
    if left.is_empty() {
        return (ordered, None);
    }
    // Walk from the first stage left along inputs that are also left until a name repeats.
    let edges: BTreeMap<&str, Vec<&str>> = left
        .iter()
        .map(|s| (s.name.as_str(), s.inputs.iter().map(String::as_str).filter(|i| left.iter().any(|l| l.name == *i)).collect()))
        .collect();
    let mut path: Vec<&str> = vec![left[0].name.as_str()];
    loop {
        let current = path[path.len() - 1];
        let Some(next) = edges.get(current).and_then(|e| e.first()).copied() else { break };
        if let Some(start) = path.iter().position(|p| *p == next) {
            let mut cycle: Vec<String> = path[start..].iter().map(|s| s.to_string()).collect();
            // Read in data-flow order (an input before the stage reading it), starting from
            // the stage declared first, where the message points.
            cycle.reverse();
            let first_declared = left.iter().position(|s| cycle.contains(&s.name)).map(|i| left[i].name.clone());
            if let Some(at) = first_declared.and_then(|name| cycle.iter().position(|c| *c == name)) {
                cycle.rotate_left(at);
            }
            cycle.push(cycle[0].clone());
            ordered.extend(left);
            return (ordered, Some(cycle));
        }
        path.push(next);
    }
    let cycle = left.iter().map(|s| s.name.clone()).collect();
    ordered.extend(left);
    (ordered, Some(cycle))
}

/// Plans every stage with DataFusion against the inputs' schemas. Reads file footers only.
pub async fn check(prepared: Prepared, engine_options: &EngineOptions) -> Result<Plan, Diagnostics> {
    let Prepared { plan, mut diagnostics, mut broken } = prepared;
    let shown = plan.file.clone();
    let run_date = plan.run_date().unwrap_or_default();
    let session = match engine::session(engine_options) {
        Ok(s) => s,
        Err(e) => {
            diagnostics.push(Diagnostic::new(&shown, None, format!("cannot start the query engine: {e}")));
            return Err(diagnostics);
        }
    };
    let mut failed_inputs: BTreeSet<String> = BTreeSet::new();
    for input in &plan.inputs {
        match engine::register_parquet(&session, &input.name, &input.location).await {
            Ok(schema) => {
                for problem in check_declared_schema(&schema, &input.declared_schema) {
                    diagnostics.push(Diagnostic::new(&shown, Some(problem.0), format!("input `{}`: {}", input.name, problem.1)).suggest(problem.2));
                }
            }
            Err(e) => {
                failed_inputs.insert(input.name.clone());
                diagnostics.push(Diagnostic::new(
                    &shown,
                    Some(input.pos),
                    format!("input `{}` cannot be read as Parquet: {}", input.name, engine::describe_datafusion_error(&e).trim_end_matches('.')),
                ));
            }
        }
    }
    let mut schemas: HashMap<String, SchemaRef> = HashMap::new();
    for stage in &plan.stages {
        if stage.inputs.iter().any(|i| broken.contains(i) || failed_inputs.contains(i)) {
            broken.insert(stage.name.clone());
            continue;
        }
        let ctx = StageContext {
            session: &session,
            stage_name: &stage.name,
            vars: &plan.vars,
            seed: stage::derive_seed(plan.seed, &stage.name),
            run_id: "validate",
            run_date: &run_date,
            output_root: &plan.output_root,
            scratch: None,
            distributed: false,
            threads: 1,
            bucket_rows: crate::engine::DEFAULT_BUCKET_ROWS,
        };
        match stage.stage.plan(&ctx).await {
            Ok(results) => {
                for result in results {
                    let schema: SchemaRef = result.frame.schema().inner().clone();
                    // Downstream stages plan against an empty table of the same shape.
                    if let Err(e) = session.register_table(&result.name, Arc::new(EmptyTable::new(schema.clone()))) {
                        diagnostics.push(Diagnostic::new(&shown, Some(stage.pos), format!("cannot register result `{}`: {e}", result.name)).in_stage(stage.name.clone()));
                    }
                    schemas.insert(result.name, schema);
                }
            }
            Err(problems) => {
                broken.insert(stage.name.clone());
                for p in problems {
                    diagnostics.push(stage_problem(&shown, stage.pos, &stage.name, p));
                }
            }
        }
    }
    if plan.stages.iter().any(|s| evaluation::contributes(s.stage.as_ref())) {
        let schema = evaluation::schema();
        let _ = session.register_table(evaluation::EVALUATION, Arc::new(EmptyTable::new(schema.clone())));
        schemas.insert(evaluation::EVALUATION.to_string(), schema);
    }
    for output in &plan.outputs {
        let Some(schema) = schemas.get(&output.from) else { continue };
        for column in &output.sort_by {
            if schema.field_with_name(column).is_err() {
                let names: Vec<&str> = schema.fields().iter().map(|f| f.name().as_str()).collect();
                diagnostics.push(
                    Diagnostic::new(&shown, Some(column.pos), format!("output `{}`: sort column `{}` is not in `{}`; its columns are: {}", output.table, column.value, output.from, quoted_list(names.iter().copied())))
                        .suggest(did_you_mean(column, names.iter().copied())),
                );
            }
        }
        if output.partition_by == PartitionBy::RunDate && schema.field_with_name(RUN_DATE).is_ok() {
            diagnostics.push(Diagnostic::new(&shown, Some(output.pos), format!("output `{}` is partitioned by `{RUN_DATE}` and also has a column `{RUN_DATE}`; rename the column or set `partition_by: none`", output.table)));
        }
    }
    diagnostics.into_result(plan)
}

fn check_declared_schema(schema: &Schema, declared: &[DeclaredColumn]) -> Vec<(Pos, String, Option<String>)> {
    let names: Vec<&str> = schema.fields().iter().map(|f| f.name().as_str()).collect();
    let mut problems = Vec::new();
    for column in declared {
        let Ok(field) = schema.field_with_name(&column.name) else {
            problems.push((
                column.pos,
                format!("declared column `{}` is not in the files; they have: {}", column.name, quoted_list(names.iter().copied())),
                did_you_mean(&column.name, names.iter().copied()),
            ));
            continue;
        };
        match engine::declared_type_holds(&column.type_name, field.data_type()) {
            Some(true) => {}
            Some(false) => problems.push((column.pos, format!("column `{}` is declared {} but the files hold {}", column.name, column.type_name, field.data_type()), None)),
            None => {
                let (message, suggestion) = engine::unknown_type(&column.type_name, &column.name);
                problems.push((column.pos, message, suggestion));
            }
        }
    }
    problems
}

/// Loads, prepares and checks a pipeline file: everything `validate` does.
pub async fn load_and_check(path: &Path, options: &PlanOptions, engine_options: &EngineOptions) -> Result<Plan, Diagnostics> {
    let shown = crate::diag::display_path(path);
    let text = std::fs::read_to_string(path).map_err(|e| Diagnostic::new(&shown, None, format!("cannot read the pipeline file: {e}")))?;
    let file = std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf());
    let (raw, diags) = crate::config::load_str(&text, &file, &shown)?;
    let prepared = prepare(&raw, &text, &shown, diags, options);
    check(prepared, engine_options).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_lowercase_identifiers() {
        assert!(is_valid_name("customer_features"));
        assert!(is_valid_name("_tmp1"));
        assert!(!is_valid_name("CustomerFeatures"));
        assert!(!is_valid_name("1st"));
        assert!(!is_valid_name("../x"));
        assert!(!is_valid_name(""));
    }
}
