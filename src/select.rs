//! `--select` and `--exclude`: run part of a pipeline.
//!
//! `stage` selects one stage, `stage+` it and everything downstream, `+stage` it and everything
//! upstream (`+stage+` both); several selectors add up, `--exclude` (same syntax) takes away.
//! A selected stage that reads an unselected one reads that stage's **committed** output for
//! the run date instead (the table written from it), so upstream work is not redone; when no
//! output is written from it, or its partition is not committed, the selection is refused
//! before anything runs. Only tables written from selected stages are replaced; `evaluation`
//! and the reports only when every stage that contributes to them is selected, since a partial
//! union would replace the whole partition with fewer rows.

use std::collections::BTreeSet;
use std::path::PathBuf;

use crate::config::PartitionBy;
use crate::plan::Plan;

/// A result an unselected stage produced, read back from its committed table.
#[derive(Debug, Clone, PartialEq)]
pub struct Reused {
    /// The stage result name the selected stages read (a table name in the session).
    pub result: String,
    pub table: String,
    pub path: PathBuf,
}

/// One `--select` / `--exclude` word.
#[derive(Debug, Clone, PartialEq)]
struct Selector {
    stage: String,
    upstream: bool,
    downstream: bool,
}

fn parse(text: &str) -> Selector {
    let upstream = text.starts_with('+');
    let downstream = text.ends_with('+') && text.len() > 1;
    let stage = text.trim_start_matches('+').trim_end_matches('+').to_string();
    Selector { stage, upstream, downstream }
}

fn expand(plan: &Plan, selector: &Selector) -> BTreeSet<String> {
    let mut chosen = BTreeSet::from([selector.stage.clone()]);
    if selector.upstream {
        // Stages are in dependency order: walk backwards, adding what chosen stages read.
        for stage in plan.stages.iter().rev() {
            if chosen.contains(&stage.name) {
                for input in &stage.inputs {
                    if let Some(p) = plan.producer(input) {
                        chosen.insert(p.name.clone());
                    }
                }
            }
        }
    }
    if selector.downstream {
        let mut down = BTreeSet::from([selector.stage.clone()]);
        for stage in &plan.stages {
            if stage.inputs.iter().any(|i| plan.producer(i).is_some_and(|p| down.contains(&p.name))) {
                down.insert(stage.name.clone());
            }
        }
        chosen.extend(down);
    }
    chosen
}

/// Narrows `plan` to the selection; returns the results to read back from committed tables.
pub fn apply(plan: &mut Plan, select: &[String], exclude: &[String], run_date: &str) -> Result<Vec<Reused>, String> {
    let names: Vec<&str> = plan.stages.iter().map(|s| s.name.as_str()).collect();
    let check = |text: &String| -> Result<Selector, String> {
        let selector = parse(text);
        if names.contains(&selector.stage.as_str()) {
            Ok(selector)
        } else {
            let hint = crate::config::yaml::did_you_mean(&selector.stage, names.iter().copied()).map(|h| format!(" ({h})")).unwrap_or_default();
            Err(format!("`{text}` selects no stage: the stages are {}{hint}", crate::config::yaml::quoted_list(names.iter().copied())))
        }
    };
    let mut chosen: BTreeSet<String> = if select.is_empty() { names.iter().map(|n| n.to_string()).collect() } else { BTreeSet::new() };
    for text in select {
        chosen.extend(expand(plan, &check(text)?));
    }
    for text in exclude {
        for name in expand(plan, &check(text)?) {
            chosen.remove(&name);
        }
    }
    if chosen.is_empty() {
        return Err("the selection leaves no stage to run".to_string());
    }
    if chosen.len() == names.len() {
        return Ok(Vec::new());
    }

    // What selected stages read from unselected ones: a committed table for each.
    let mut reused = Vec::new();
    for stage in plan.stages.iter().filter(|s| chosen.contains(&s.name)) {
        for input in &stage.inputs {
            let Some(from) = plan.producer(input).map(|p| p.name.clone()) else { continue };
            if chosen.contains(&from) || reused.iter().any(|r: &Reused| r.result == *input) {
                continue;
            }
            let Some(output) = plan.outputs.iter().find(|o| o.from == *input) else {
                return Err(format!(
                    "stage `{}` reads `{input}` from stage `{from}`, which is not selected and not written as an output table, so there is nothing committed to read; select it too (`+{}`)",
                    stage.name, stage.name
                ));
            };
            let path = match output.partition_by {
                PartitionBy::RunDate => plan.output_root.join(&output.table).join(format!("run_date={run_date}")),
                PartitionBy::None => plan.output_root.join(&output.table),
            };
            if !path.join("_SUCCESS").exists() {
                return Err(format!(
                    "stage `{}` reads `{input}`, committed as table `{}`, but {} holds no committed partition for this run date; run `{from}` first, or select it too (`+{}`)",
                    stage.name,
                    output.table,
                    path.display(),
                    stage.name
                ));
            }
            reused.push(Reused { result: input.clone(), table: output.table.clone(), path });
        }
    }
    let every_contributor_selected = plan.stages.iter().filter(|s| crate::evaluation::contributes(s.stage.as_ref())).all(|s| chosen.contains(&s.name));
    let keep: BTreeSet<String> = plan
        .outputs
        .iter()
        .filter(|o| {
            if o.from == crate::evaluation::EVALUATION {
                if !every_contributor_selected {
                    tracing::warn!(table = %o.table, "not written: some stages that contribute to it are not selected");
                }
                every_contributor_selected
            } else {
                plan.producer(&o.from).is_some_and(|p| chosen.contains(&p.name))
            }
        })
        .map(|o| o.table.clone())
        .collect();
    plan.outputs.retain(|o| keep.contains(&o.table));
    plan.stages.retain(|s| chosen.contains(&s.name));
    // The reports describe a whole run; a partial one leaves the committed ones as they are.
    plan.write_reports = false;
    Ok(reused)
}
