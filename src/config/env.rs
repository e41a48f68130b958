//! Environment variables in the pipeline file: `${VAR}`, `${VAR:-default}`, `${VAR:?message}`.
//!
//! Substituted into scalar values after the YAML is parsed, so a value can never add keys or
//! change the file's structure, and positions stay those of the file. `$${` writes a literal
//! `${`. A value with a newline is refused (a scheduler's templated variable gone wrong should
//! not become a multi-line path or name). SQL text (`query:`) is left alone: there `${name}`
//! is a pipeline variable, bound as a typed literal (see `crate::vars`). A scalar that is one
//! `${…}` and nothing else takes the type of what it expands to (`seed: ${SEED}` is a number).

use super::yaml::{Node, Pos, Value};

/// A problem with one `${…}`, at the scalar holding it.
#[derive(Debug, Clone, PartialEq)]
pub struct EnvProblem {
    pub pos: Pos,
    pub message: String,
}

/// Substitutes every `${…}` in `root`'s scalars (keys excluded, `query` values skipped).
pub fn interpolate(root: &mut Node, lookup: &dyn Fn(&str) -> Option<String>) -> Vec<EnvProblem> {
    let mut problems = Vec::new();
    walk(root, lookup, &mut problems);
    problems
}

fn walk(node: &mut Node, lookup: &dyn Fn(&str) -> Option<String>, problems: &mut Vec<EnvProblem>) {
    let pos = node.pos;
    match &mut node.value {
        Value::Str(text) if text.contains('$') => match expand(text, lookup) {
            Ok((expanded, whole)) => {
                node.value = if whole { typed(expanded) } else { Value::Str(expanded) };
            }
            Err(message) => problems.push(EnvProblem { pos, message }),
        },
        Value::Seq(items) => items.iter_mut().for_each(|item| walk(item, lookup, problems)),
        Value::Map(entries) => {
            for (key, value) in entries.iter_mut() {
                if key.as_str() != Some("query") {
                    walk(value, lookup, problems);
                }
            }
        }
        _ => {}
    }
}

/// What a whole-scalar `${…}` expands to, typed as YAML would type it.
fn typed(text: String) -> Value {
    if let Ok(i) = text.parse::<i64>() {
        Value::Int(i)
    } else if let Ok(f) = text.parse::<f64>().map_err(|_| ()).and_then(|f| if f.is_finite() && text.contains('.') { Ok(f) } else { Err(()) }) {
        Value::Float(f)
    } else if text == "true" || text == "false" {
        Value::Bool(text == "true")
    } else {
        Value::Str(text)
    }
}

/// The text with its `${…}` expanded, and whether the text was exactly one `${…}`.
fn expand(text: &str, lookup: &dyn Fn(&str) -> Option<String>) -> Result<(String, bool), String> {
    let mut out = String::new();
    let mut rest = text;
    let mut expansions = 0;
    let mut literal = false;
    while let Some(at) = rest.find('$') {
        out.push_str(&rest[..at]);
        let after = &rest[at..];
        if let Some(tail) = after.strip_prefix("$${") {
            out.push_str("${");
            literal = true;
            rest = tail;
            continue;
        }
        let Some(body_start) = after.strip_prefix("${") else {
            out.push('$');
            literal = true;
            rest = &after[1..];
            continue;
        };
        let end = body_start.find('}').ok_or_else(|| format!("`{after}`: a `${{` without its closing `}}` (write `$${{` for a literal `${{`)"))?;
        let body = &body_start[..end];
        let (name, rule) = match body.find(':') {
            Some(i) => (&body[..i], Some(&body[i..])),
            None => (body, None),
        };
        let valid = name.chars().next().is_some_and(|c| c.is_ascii_alphabetic() || c == '_') && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
        if !valid {
            return Err(format!("`${{{body}}}`: `{name}` is not an environment variable name (letters, digits and _, not starting with a digit)"));
        }
        // As in a shell: `:-` and `:?` treat an empty value as unset; plain `${VAR}` does not.
        let value = match (lookup(name).filter(|v| !v.is_empty() || rule.is_none()), rule) {
            (Some(v), _) => v,
            (None, Some(r)) if r.starts_with(":-") => r[2..].to_string(),
            (None, Some(r)) if r.starts_with(":?") => {
                let message = &r[2..];
                return Err(if message.is_empty() { format!("environment variable `{name}` is not set") } else { format!("environment variable `{name}` is not set: {message}") });
            }
            (None, Some(r)) => return Err(format!("`${{{body}}}`: after the name comes `:-default` or `:?message`, not `{r}`")),
            (None, None) => return Err(format!("environment variable `{name}` is not set (give a default with `${{{name}:-default}}`)")),
        };
        if value.contains('\n') || value.contains('\r') {
            return Err(format!("environment variable `{name}` holds a line break; a pipeline value must be one line"));
        }
        out.push_str(&value);
        expansions += 1;
        rest = &body_start[end + 1..];
    }
    out.push_str(rest);
    let whole = expansions == 1 && !literal && text.starts_with("${") && text.ends_with('}') && text.matches("${").count() == 1;
    Ok((out, whole))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(name: &str) -> Option<String> {
        match name {
            "ROOT" => Some("/data/out".to_string()),
            "SEED" => Some("7".to_string()),
            "EMPTY" => Some(String::new()),
            "TWO_LINES" => Some("a\nb".to_string()),
            _ => None,
        }
    }

    fn run(text: &str) -> Result<(String, bool), String> {
        expand(text, &env)
    }

    #[test]
    fn variables_defaults_and_required_values_expand_as_in_a_shell() {
        assert_eq!(run("${ROOT}/tables"), Ok(("/data/out/tables".to_string(), false)));
        assert_eq!(run("${MISSING:-fallback}"), Ok(("fallback".to_string(), true)));
        assert_eq!(run("${EMPTY:-used when empty}"), Ok(("used when empty".to_string(), true)));
        assert_eq!(run("${EMPTY}"), Ok((String::new(), true)));
        assert_eq!(run("cost $5 and $${ROOT}"), Ok(("cost $5 and ${ROOT}".to_string(), false)));
        assert_eq!(run("${MISSING:?set it to the warehouse root}"), Err("environment variable `MISSING` is not set: set it to the warehouse root".to_string()));
        assert_eq!(run("${MISSING}"), Err("environment variable `MISSING` is not set (give a default with `${MISSING:-default}`)".to_string()));
        assert!(run("${TWO_LINES}").unwrap_err().contains("holds a line break"));
        assert!(run("${ROOT").unwrap_err().contains("without its closing"));
        assert!(run("${1X}").unwrap_err().contains("not an environment variable name"));
    }

    #[test]
    fn a_whole_scalar_takes_the_type_of_its_value_and_sql_is_left_alone() {
        let mut root = crate::config::yaml::parse("seed: ${SEED}\noutput_root: ${ROOT}\nstages:\n  - query: SELECT ${as_of}\n    file: ${ROOT}/q.sql\n").unwrap();
        assert!(interpolate(&mut root, &env).is_empty());
        assert_eq!(root.get("seed").unwrap().value, Value::Int(7));
        assert_eq!(root.get("output_root").unwrap().as_str(), Some("/data/out"));
        let Value::Seq(stages) = &root.get("stages").unwrap().value else { panic!() };
        assert_eq!(stages[0].get("query").unwrap().as_str(), Some("SELECT ${as_of}"));
        assert_eq!(stages[0].get("file").unwrap().as_str(), Some("/data/out/q.sql"));
    }
}
