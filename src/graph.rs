//! `segflow graph FILE`: the pipeline's DAG as Graphviz DOT — inputs, stages (with their
//! kind) and the output tables, with an edge for every table a stage or an output reads.
//! `segflow graph pipelines/demo.yaml | dot -Tsvg > dag.svg`.

use std::fmt::Write as _;

use crate::evaluation;
use crate::plan::Plan;

fn quoted(text: &str) -> String {
    format!("\"{}\"", text.replace('\\', "\\\\").replace('"', "\\\""))
}

pub fn dot(plan: &Plan) -> String {
    let mut out = format!("digraph {} {{\n  rankdir=LR;\n  node [fontname=\"sans-serif\", fontsize=11];\n", quoted(&plan.name));
    for input in &plan.inputs {
        let _ = writeln!(out, "  {} [label={}, shape=cylinder];", quoted(&format!("input:{}", input.name)), quoted(&input.name));
    }
    for stage in &plan.stages {
        let _ = writeln!(out, "  {} [label={}, shape=box, style=rounded];", quoted(&format!("stage:{}", stage.name)), quoted(&format!("{}\n({})", stage.name, stage.kind)));
    }
    for output in &plan.outputs {
        let _ = writeln!(out, "  {} [label={}, shape=note];", quoted(&format!("table:{}", output.table)), quoted(&output.table));
    }
    let node_of = |name: &str| -> String {
        if plan.inputs.iter().any(|i| i.name == name) {
            format!("input:{name}")
        } else {
            format!("stage:{}", plan.producer(name).map_or(name, |s| s.name.as_str()))
        }
    };
    for stage in &plan.stages {
        for input in &stage.inputs {
            let _ = writeln!(out, "  {} -> {};", quoted(&node_of(input)), quoted(&format!("stage:{}", stage.name)));
        }
    }
    for output in &plan.outputs {
        let sources: Vec<String> = if output.from == evaluation::EVALUATION {
            plan.stages.iter().filter(|s| evaluation::contributes(s.stage.as_ref())).map(|s| format!("stage:{}", s.name)).collect()
        } else {
            vec![node_of(&output.from)]
        };
        for source in sources {
            let _ = writeln!(out, "  {} -> {};", quoted(&source), quoted(&format!("table:{}", output.table)));
        }
    }
    out.push_str("}\n");
    out
}
