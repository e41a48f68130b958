//! Pipeline variables and how they reach SQL.
//!
//! A `${name}` in SQL is never spliced into the text. It becomes the placeholder `$name`, and
//! DataFusion binds the variable's value as a typed literal: a value holding
//! `'; DROP TABLE x; --` is a string compared with other strings, nothing more.
//!
//! Types come from the YAML default: an integer, a number, a boolean, a string, or a date
//! (`YYYY-MM-DD`, bound as a SQL DATE). `run_date` always exists and is a date.

use std::collections::BTreeMap;
use std::fmt;

use chrono::NaiveDate;
use datafusion::scalar::ScalarValue;

use crate::config::yaml::{Node, Value};

/// The name of the variable every run defines.
pub const RUN_DATE: &str = "run_date";

#[derive(Debug, Clone, PartialEq)]
pub enum VarValue {
    Int(i64),
    Float(f64),
    Bool(bool),
    Date(NaiveDate),
    Str(String),
}

impl VarValue {
    /// The value a YAML default declares. Strings shaped like dates are dates.
    pub fn from_node(node: &Node) -> Result<VarValue, String> {
        match &node.value {
            Value::Int(i) => Ok(VarValue::Int(*i)),
            Value::Float(x) if x.is_finite() => Ok(VarValue::Float(*x)),
            Value::Float(x) => Err(format!("a variable must be a finite number, found {x}")),
            Value::Bool(b) => Ok(VarValue::Bool(*b)),
            Value::Str(s) => Ok(parse_date(s).map(VarValue::Date).unwrap_or_else(|| VarValue::Str(s.clone()))),
            _ => Err(format!(
                "a variable's default is a single value (integer, number, boolean, string or YYYY-MM-DD date), found {}",
                node.kind_name()
            )),
        }
    }

    /// Parses a `--var name=value` override as the same type as the declared default.
    pub fn parse_like(&self, text: &str) -> Result<VarValue, String> {
        let parsed = match self {
            VarValue::Int(_) => text.parse().ok().map(VarValue::Int),
            VarValue::Float(_) => text.parse::<f64>().ok().filter(|x| x.is_finite()).map(VarValue::Float),
            VarValue::Bool(_) => text.parse().ok().map(VarValue::Bool),
            VarValue::Date(_) => parse_date(text).map(VarValue::Date),
            VarValue::Str(_) => Some(VarValue::Str(text.to_string())),
        };
        parsed.ok_or_else(|| format!("`{text}` is not {}", self.type_name()))
    }

    pub fn type_name(&self) -> &'static str {
        match self {
            VarValue::Int(_) => "an integer",
            VarValue::Float(_) => "a number",
            VarValue::Bool(_) => "a boolean (true or false)",
            VarValue::Date(_) => "a date (YYYY-MM-DD)",
            VarValue::Str(_) => "a string",
        }
    }

    pub fn to_scalar(&self) -> ScalarValue {
        match self {
            VarValue::Int(i) => ScalarValue::Int64(Some(*i)),
            VarValue::Float(x) => ScalarValue::Float64(Some(*x)),
            VarValue::Bool(b) => ScalarValue::Boolean(Some(*b)),
            VarValue::Date(d) => ScalarValue::Date32(Some(days_since_epoch(*d))),
            VarValue::Str(s) => ScalarValue::Utf8(Some(s.clone())),
        }
    }
}

impl fmt::Display for VarValue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            VarValue::Int(i) => write!(f, "{i}"),
            VarValue::Float(x) => write!(f, "{x}"),
            VarValue::Bool(b) => write!(f, "{b}"),
            VarValue::Date(d) => write!(f, "{}", d.format("%Y-%m-%d")),
            VarValue::Str(s) => f.write_str(s),
        }
    }
}

pub fn parse_date(text: &str) -> Option<NaiveDate> {
    // Exactly YYYY-MM-DD: "2024-1-5" is more likely a typo than a date.
    if text.len() != 10 {
        return None;
    }
    NaiveDate::parse_from_str(text, "%Y-%m-%d").ok()
}

pub fn days_since_epoch(date: NaiveDate) -> i32 {
    let epoch = NaiveDate::from_ymd_opt(1970, 1, 1).expect("1970-01-01 is a date");
    (date - epoch).num_days() as i32
}

/// The variables of one run, by name.
pub type Vars = BTreeMap<String, VarValue>;

/// A `${name}` found in SQL text: which variable, and where (1-based line and column).
#[derive(Debug, Clone, PartialEq)]
pub struct VarRef {
    pub name: String,
    pub line: u32,
    pub column: u32,
}

/// SQL with its `${name}` references turned into DataFusion placeholders.
#[derive(Debug, Clone, PartialEq)]
pub struct BoundSql {
    /// The SQL to plan: `${name}` became `$name` followed by two spaces, so every other
    /// character keeps its line and column and DataFusion's positions point into the original.
    pub text: String,
    pub refs: Vec<VarRef>,
}

/// Problems in how a SQL text uses `${…}`.
#[derive(Debug, Clone, PartialEq)]
pub struct TemplateError {
    pub line: u32,
    pub column: u32,
    pub message: String,
}

/// Finds `${name}` outside string literals and comments and rewrites each into a placeholder.
/// A `${` inside a string literal is refused: it would be bound as text, which is never what
/// the author meant, and splicing it would be an injection.
pub fn bind_sql(sql: &str) -> Result<BoundSql, Vec<TemplateError>> {
    let chars: Vec<char> = sql.chars().collect();
    let mut out = String::with_capacity(sql.len());
    let mut refs = Vec::new();
    let mut errors = Vec::new();
    let (mut line, mut column) = (1u32, 1u32);
    let mut i = 0;
    #[derive(PartialEq)]
    enum Mode {
        Code,
        Quoted(char),
        LineComment,
        BlockComment,
    }
    let mut mode = Mode::Code;
    while i < chars.len() {
        let c = chars[i];
        let next = chars.get(i + 1).copied();
        let mut consumed = 1;
        match mode {
            Mode::Code => match c {
                '\'' | '"' => mode = Mode::Quoted(c),
                '-' if next == Some('-') => mode = Mode::LineComment,
                '/' if next == Some('*') => mode = Mode::BlockComment,
                '$' if next == Some('{') => {
                    let rest: String = chars[i + 2..].iter().take_while(|&&ch| ch != '}' && ch != '\n').collect();
                    let closed = chars.get(i + 2 + rest.chars().count()) == Some(&'}');
                    let valid_name = !rest.is_empty()
                        && rest.chars().next().is_some_and(|ch| ch.is_ascii_alphabetic() || ch == '_')
                        && rest.chars().all(|ch| ch.is_ascii_alphanumeric() || ch == '_');
                    if closed && valid_name {
                        refs.push(VarRef { name: rest.clone(), line, column });
                        out.push('$');
                        out.push_str(&rest);
                        out.push_str("  ");
                        consumed = rest.chars().count() + 3;
                        i += consumed;
                        column += consumed as u32;
                        continue;
                    }
                    errors.push(TemplateError {
                        line,
                        column,
                        message: "`${` must be followed by a variable name and `}`, as in `${run_date}`".to_string(),
                    });
                }
                _ => {}
            },
            Mode::Quoted(quote) => {
                if c == quote {
                    if next == Some(quote) {
                        // A doubled quote is an escaped quote inside the literal.
                        out.push(c);
                        i += 1;
                        column += 1;
                    } else {
                        mode = Mode::Code;
                    }
                } else if c == '$' && next == Some('{') {
                    errors.push(TemplateError {
                        line,
                        column,
                        message: "a variable inside a quoted string is not substituted; write it outside the quotes (`${name}`, not `'${name}'`): it is bound as a typed value".to_string(),
                    });
                }
            }
            Mode::LineComment => {
                if c == '\n' {
                    mode = Mode::Code;
                }
            }
            Mode::BlockComment => {
                if c == '*' && next == Some('/') {
                    out.push(c);
                    i += 1;
                    column += 1;
                    mode = Mode::Code;
                    out.push('/');
                    i += 1;
                    column += 1;
                    continue;
                }
            }
        }
        let _ = consumed;
        out.push(c);
        if c == '\n' {
            line += 1;
            column = 1;
        } else {
            column += 1;
        }
        i += 1;
    }
    if errors.is_empty() { Ok(BoundSql { text: out, refs }) } else { Err(errors) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_reference_becomes_a_placeholder_and_keeps_every_other_position() {
        let bound = bind_sql("SELECT *\nFROM t WHERE d < ${run_date} AND x = 1").unwrap();
        assert_eq!(bound.text, "SELECT *\nFROM t WHERE d < $run_date   AND x = 1");
        assert_eq!(bound.refs, vec![VarRef { name: "run_date".into(), line: 2, column: 18 }]);
        assert_eq!(bound.text.len(), "SELECT *\nFROM t WHERE d < ${run_date} AND x = 1".len());
    }

    #[test]
    fn references_in_comments_are_left_alone() {
        let bound = bind_sql("-- uses ${x}\nSELECT 1 /* ${y} */").unwrap();
        assert!(bound.refs.is_empty());
        assert_eq!(bound.text, "-- uses ${x}\nSELECT 1 /* ${y} */");
    }

    #[test]
    fn a_reference_inside_a_string_literal_is_refused() {
        let errors = bind_sql("SELECT 'it''s ${x}'").unwrap_err();
        assert_eq!((errors[0].line, errors[0].column), (1, 15));
    }

    #[test]
    fn a_malformed_reference_is_refused() {
        assert!(bind_sql("SELECT ${1x}").is_err());
        assert!(bind_sql("SELECT ${x").is_err());
    }

    #[test]
    fn defaults_are_typed_and_overrides_parse_as_the_same_type() {
        let date = VarValue::Date(NaiveDate::from_ymd_opt(2024, 3, 1).unwrap());
        assert_eq!(date.parse_like("2024-04-02").unwrap().to_string(), "2024-04-02");
        assert!(date.parse_like("yesterday").is_err());
        assert_eq!(VarValue::Int(3).parse_like("7").unwrap(), VarValue::Int(7));
        assert!(VarValue::Int(3).parse_like("7.5").is_err());
        assert_eq!(
            VarValue::Str(String::new()).parse_like("'; DROP TABLE x; --").unwrap(),
            VarValue::Str("'; DROP TABLE x; --".into())
        );
    }
}
