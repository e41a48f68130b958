//! The pipeline file as written: strict structs that reject unknown fields and keep positions.
//!
//! Loading never stops at the first mistake. Each part (top level, every input, stage and
//! output) is read from its own YAML subtree; what parses is kept, what doesn't becomes a
//! [`Diagnostic`], and planning goes on with the rest so `validate` can report everything.
//!
//! ```yaml
//! name: demo                      # the pipeline's name
//! seed: 42                        # every stage derives its own seed from this
//! output_root: ../output/demo     # relative paths resolve against this file's folder
//! vars: { min_orders: 1 }         # bound into SQL as typed literals; run_date always exists
//! inputs:
//!   transactions: { path: ../data/demo/transactions }   # a file, a glob or a Hive folder
//! stages:
//!   - name: customer_features
//!     kind: sql
//!     inputs: [transactions]
//!     file: ../sql/customer_features.sql
//! outputs:
//!   customer_features: { partition_by: run_date, sort_by: [customer_id] }
//! ```

pub mod env;
pub mod yaml;

use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::diag::{Diagnostic, Diagnostics};
use yaml::{At, DeError, Node, OrderedMap, Pos, Value, did_you_mean, from_node, quoted_list};

/// The top-level keys, for "did you mean" on a misspelt one.
const TOP_LEVEL_FIELDS: &[&str] = &["name", "description", "seed", "output_root", "engine", "vars", "inputs", "stages", "outputs"];

/// Keys every stage has, whatever its kind. All other keys belong to the kind.
pub const COMMON_STAGE_FIELDS: &[&str] = &["name", "kind", "inputs", "description"];

/// A pipeline file as written, with whatever could be read of it.
#[derive(Debug, Clone)]
pub struct RawPipeline {
    /// The file it came from (absolute), for messages and for resolving relative paths.
    pub file: PathBuf,
    pub name: Option<At<String>>,
    pub description: Option<String>,
    pub seed: u64,
    pub output_root: Option<At<String>>,
    /// `local`, `ballista-standalone` or a Ballista scheduler `df://host:port`.
    pub engine: Option<At<String>>,
    /// Declared variables and their default values, in file order.
    pub vars: Vec<(At<String>, Node)>,
    pub inputs: Vec<RawInput>,
    pub stages: Vec<RawStage>,
    pub outputs: Vec<RawOutput>,
    /// Whether the file has an `outputs` section at all (its entries may not all have parsed).
    pub outputs_declared: bool,
}

impl RawPipeline {
    /// The folder relative paths in the file resolve against.
    pub fn base_dir(&self) -> &Path {
        self.file.parent().unwrap_or(Path::new("."))
    }
}

/// A named Parquet source.
#[derive(Debug, Clone)]
pub struct RawInput {
    pub name: At<String>,
    pub spec: InputSpec,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InputSpec {
    /// A Parquet file, a glob (`data/*.parquet`), or a folder (Hive partitions such as
    /// `run_date=2024-01-01/` become columns).
    pub path: At<String>,
    /// Only `parquet` is read today; the field exists so a file states what it expects.
    #[serde(default)]
    pub format: InputFormat,
    /// Columns this input must have, with their types (`string`, `int64`, `float64`,
    /// `timestamp`, `date`, `bool`, …). Checked against the files' schema by `validate`.
    #[serde(default)]
    pub schema: Option<OrderedMap<At<String>>>,
}

#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum InputFormat {
    #[default]
    Parquet,
}

/// One stage: the keys every kind shares, and the rest of its mapping for the kind to read.
#[derive(Debug, Clone)]
pub struct RawStage {
    pub pos: Pos,
    pub name: Option<At<String>>,
    pub kind: Option<At<String>>,
    pub inputs: Vec<At<String>>,
    pub description: Option<String>,
    /// The kind-specific keys, as a mapping node (empty when there are none).
    pub params: Node,
}

impl RawStage {
    pub fn display_name(&self) -> String {
        self.name.as_ref().map(|n| n.value.clone()).unwrap_or_else(|| format!("#{}", self.pos.line))
    }
}

/// A table written at the end of a run.
#[derive(Debug, Clone)]
pub struct RawOutput {
    pub table: At<String>,
    pub spec: OutputSpec,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OutputSpec {
    /// The stage result written as this table: a stage name, or `stage.part` for a stage's
    /// secondary result (a clean stage's `rejects`, say). Default: the table's own name.
    #[serde(default)]
    pub from: Option<At<String>>,
    /// `run_date` (default): one Hive partition `run_date=YYYY-MM-DD/` per run date, replaced
    /// whole by a rerun. `none`: the table is one folder, replaced whole by every run.
    #[serde(default)]
    pub partition_by: PartitionBy,
    /// Rows are written sorted by these columns (then by all others), so that the same input
    /// gives the same files. Default: all columns in order.
    #[serde(default)]
    pub sort_by: Vec<At<String>>,
    /// The version of this table's schema, recorded in every `_manifest.json`. Bump it when
    /// the columns change, so readers can tell. Default: 1, or segflow's own version for the
    /// tables whose schema segflow defines (`evaluation`).
    #[serde(default)]
    pub schema_version: Option<u32>,
}

#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum PartitionBy {
    #[default]
    RunDate,
    None,
}

/// Reads and parses a pipeline file. `Err` only when nothing usable could be read (no file, no
/// YAML); otherwise the pipeline comes back with every problem found so far.
pub fn load(path: &Path) -> Result<(RawPipeline, Diagnostics), Diagnostics> {
    let shown = crate::diag::display_path(path);
    let text = std::fs::read_to_string(path)
        .map_err(|e| Diagnostic::new(&shown, None, format!("cannot read the pipeline file: {e}")))?;
    let file = std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf());
    load_str(&text, &file, &shown)
}

/// Parses pipeline text; `file` resolves relative paths, `shown` is how messages name it.
pub fn load_str(text: &str, file: &Path, shown: &Path) -> Result<(RawPipeline, Diagnostics), Diagnostics> {
    let mut root = yaml::parse(text).map_err(|e| Diagnostic::new(shown, e.pos, format!("invalid YAML: {}", e.message)))?;
    let mut diags = Diagnostics::default();
    for problem in env::interpolate(&mut root, &|name| std::env::var(name).ok()) {
        diags.push(Diagnostic::new(shown, Some(problem.pos), problem.message));
    }
    let mut pipeline = RawPipeline {
        file: file.to_path_buf(),
        name: None,
        description: None,
        seed: 0,
        output_root: None,
        engine: None,
        vars: Vec::new(),
        inputs: Vec::new(),
        stages: Vec::new(),
        outputs: Vec::new(),
        outputs_declared: false,
    };
    let Some(entries) = root.as_map() else {
        return Err(Diagnostic::new(
            shown,
            Some(root.pos),
            format!("a pipeline file is a mapping with the keys {}, found {}", quoted_list(TOP_LEVEL_FIELDS.iter().copied()), root.kind_name()),
        )
        .into());
    };
    let report = |diags: &mut Diagnostics, err: DeError, stage: Option<String>| {
        let mut d = Diagnostic::new(shown, err.pos, err.message).suggest(err.suggestion);
        d.stage = stage;
        diags.push(d);
    };

    for (key, value) in entries {
        let Some(key_name) = key.as_str() else {
            diags.push(Diagnostic::new(shown, Some(key.pos), format!("a top-level key must be a name, found {}", key.kind_name())));
            continue;
        };
        match key_name {
            "name" => match from_node::<At<String>>(value) {
                Ok(name) => pipeline.name = Some(name),
                Err(e) => report(&mut diags, e, None),
            },
            "description" => match from_node::<String>(value) {
                Ok(d) => pipeline.description = Some(d),
                Err(e) => report(&mut diags, e, None),
            },
            "seed" => match from_node::<u64>(value) {
                Ok(seed) => pipeline.seed = seed,
                Err(e) => report(&mut diags, e, None),
            },
            "engine" => match from_node::<At<String>>(value) {
                Ok(engine) => pipeline.engine = Some(engine),
                Err(e) => report(&mut diags, e, None),
            },
            "output_root" => match from_node::<At<String>>(value) {
                Ok(root) => pipeline.output_root = Some(root),
                Err(e) => report(&mut diags, e, None),
            },
            "vars" => match mapping_entries(value, "vars", "a variable name") {
                Ok(vars) => pipeline.vars = vars,
                Err(e) => report(&mut diags, e, None),
            },
            "inputs" => match mapping_entries(value, "inputs", "an input name") {
                Ok(inputs) => {
                    for (name, spec) in inputs {
                        match from_node::<InputSpec>(&spec) {
                            Ok(spec) => pipeline.inputs.push(RawInput { name, spec }),
                            Err(e) => report(&mut diags, e, None),
                        }
                    }
                }
                Err(e) => report(&mut diags, e, None),
            },
            "stages" => match &value.value {
                Value::Seq(items) => {
                    for item in items {
                        pipeline.stages.push(read_stage(item, shown, &mut diags));
                    }
                }
                _ => diags.push(Diagnostic::new(
                    shown,
                    Some(value.pos),
                    format!("`stages` is a list of stages (`- name: …`), found {}", value.kind_name()),
                )),
            },
            "outputs" => match {
                pipeline.outputs_declared = true;
                mapping_entries(value, "outputs", "a table name")
            } {
                Ok(outputs) => {
                    for (table, spec) in outputs {
                        let parsed = if spec.value == Value::Null { Ok(OutputSpec::default()) } else { from_node::<OutputSpec>(&spec) };
                        match parsed {
                            Ok(spec) => pipeline.outputs.push(RawOutput { table, spec }),
                            Err(e) => report(&mut diags, e, None),
                        }
                    }
                }
                Err(e) => report(&mut diags, e, None),
            },
            other => diags.push(
                Diagnostic::new(shown, Some(key.pos), format!("unknown top-level field `{other}`, expected one of {}", quoted_list(TOP_LEVEL_FIELDS.iter().copied())))
                    .suggest(did_you_mean(other, TOP_LEVEL_FIELDS.iter().copied())),
            ),
        }
    }
    if pipeline.name.is_none() && !entries.iter().any(|(k, _)| k.as_str() == Some("name")) {
        diags.push(Diagnostic::new(shown, Some(root.pos), "missing field `name`: every pipeline has a name"));
    }
    Ok((pipeline, diags))
}

/// The entries of a mapping whose keys are names (inputs, vars, outputs), in file order.
fn mapping_entries(node: &Node, field: &str, key_word: &str) -> Result<Vec<(At<String>, Node)>, DeError> {
    let entries = node.as_map().ok_or_else(|| DeError {
        pos: Some(node.pos),
        message: format!("`{field}` is a mapping from {key_word} to its settings, found {}", node.kind_name()),
        suggestion: None,
    })?;
    entries
        .iter()
        .map(|(key, value)| match key.as_str() {
            Some(name) => Ok((At { pos: key.pos, value: name.to_string() }, value.clone())),
            None => Err(DeError { pos: Some(key.pos), message: format!("expected {key_word}, found {}", key.kind_name()), suggestion: None }),
        })
        .collect()
}

/// Splits a stage mapping into the shared keys and the kind's own keys.
fn read_stage(item: &Node, shown: &Path, diags: &mut Diagnostics) -> RawStage {
    let mut stage = RawStage {
        pos: item.pos,
        name: None,
        kind: None,
        inputs: Vec::new(),
        description: None,
        params: Node::new(item.pos, Value::Map(Vec::new())),
    };
    let Some(entries) = item.as_map() else {
        diags.push(Diagnostic::new(shown, Some(item.pos), format!("a stage is a mapping with `name`, `kind` and `inputs`, found {}", item.kind_name())));
        return stage;
    };
    let stage_name = item.get("name").and_then(Node::as_str).map(str::to_string);
    let mut own = Vec::new();
    for (key, value) in entries {
        let result = match key.as_str() {
            Some("name") => from_node::<At<String>>(value).map(|v| stage.name = Some(v)),
            Some("kind") => from_node::<At<String>>(value).map(|v| stage.kind = Some(v)),
            Some("inputs") => from_node::<Vec<At<String>>>(value).map(|v| stage.inputs = v),
            Some("description") => from_node::<String>(value).map(|v| stage.description = Some(v)),
            _ => {
                own.push((key.clone(), value.clone()));
                Ok(())
            }
        };
        if let Err(e) = result {
            let mut d = Diagnostic::new(shown, e.pos, e.message).suggest(e.suggestion);
            d.stage = stage_name.clone();
            diags.push(d);
        }
    }
    for (field, present) in [("name", stage.name.is_some()), ("kind", stage.kind.is_some())] {
        if !present && item.get(field).is_none() {
            let mut d = Diagnostic::new(shown, Some(item.pos), format!("missing field `{field}`: every stage has a `name` and a `kind`"));
            d.stage = stage_name.clone();
            diags.push(d);
        }
    }
    stage.params = Node::new(item.pos, Value::Map(own));
    stage
}
