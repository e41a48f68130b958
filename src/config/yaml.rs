//! A YAML document as a tree that remembers where every node came from.
//!
//! Why not deserialize the config straight into structs? Because serde stops at the first
//! error, and `segflow validate` must report every mistake at once, each with its line and
//! column. So the text is parsed once (by serde-saphyr, a maintained parser that reports
//! positions) into [`Node`]s, and then each part of the config — the top level, every input,
//! every stage — is deserialized from its own subtree with [`from_node`]. A mistake in one
//! stage no longer hides the mistakes in the others, and every error carries the position of
//! the node it is about.

use std::fmt;

use serde::de::{self, DeserializeSeed, Error as _, IntoDeserializer, MapAccess, SeqAccess, Visitor};
use serde::{Deserialize, Deserializer};

/// A 1-based line and column in the YAML text.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Default, Hash)]
pub struct Pos {
    pub line: u32,
    pub column: u32,
}

impl fmt::Display for Pos {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.line, self.column)
    }
}

/// One YAML node and where it starts.
#[derive(Debug, Clone, PartialEq)]
pub struct Node {
    pub pos: Pos,
    pub value: Value,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    Null,
    Bool(bool),
    Int(i64),
    Float(f64),
    Str(String),
    Seq(Vec<Node>),
    /// Keys keep their YAML order; duplicates are rejected by the parser.
    Map(Vec<(Node, Node)>),
}

impl Node {
    pub fn new(pos: Pos, value: Value) -> Self {
        Node { pos, value }
    }

    /// The entries of a mapping node, or `None` for any other node.
    pub fn as_map(&self) -> Option<&[(Node, Node)]> {
        match &self.value {
            Value::Map(entries) => Some(entries),
            _ => None,
        }
    }

    pub fn as_str(&self) -> Option<&str> {
        match &self.value {
            Value::Str(s) => Some(s),
            _ => None,
        }
    }

    /// The value under `key` in a mapping node.
    pub fn get(&self, key: &str) -> Option<&Node> {
        self.as_map()?.iter().find(|(k, _)| k.as_str() == Some(key)).map(|(_, v)| v)
    }

    /// A word for the kind of node, for error messages ("expected a mapping, found a list").
    pub fn kind_name(&self) -> &'static str {
        match self.value {
            Value::Null => "null",
            Value::Bool(_) => "a boolean",
            Value::Int(_) => "an integer",
            Value::Float(_) => "a number",
            Value::Str(_) => "a string",
            Value::Seq(_) => "a list",
            Value::Map(_) => "a mapping",
        }
    }
}

/// A YAML syntax error: the text is not YAML at all, so nothing else can be checked.
#[derive(Debug, Clone, PartialEq)]
pub struct SyntaxError {
    pub pos: Option<Pos>,
    pub message: String,
}

/// Parses YAML text into a [`Node`] tree. An empty document is an empty mapping's absence: it
/// comes back as a `Null` node at 1:1, and the caller says what was expected.
pub fn parse(text: &str) -> Result<Node, SyntaxError> {
    if text.trim().is_empty() {
        return Ok(Node::new(Pos { line: 1, column: 1 }, Value::Null));
    }
    let spanned: serde_saphyr::Spanned<Value> = serde_saphyr::from_str(text).map_err(|err| {
        let pos = err.location().filter(|l| l.line() > 0).map(|l| Pos {
            line: l.line() as u32,
            column: l.column() as u32,
        });
        SyntaxError { pos, message: first_line_of(&err.to_string()) }
    })?;
    Ok(into_node(spanned))
}

/// serde-saphyr renders a source snippet under its message; our diagnostics print their own
/// position, so only the message itself is kept.
fn first_line_of(rendered: &str) -> String {
    let line = rendered.lines().next().unwrap_or(rendered).trim();
    // "error: line 3 column 5: did not find expected key" → keep what follows the position.
    let message = match line.find("column ") {
        Some(at) => {
            let after = &line[at + "column ".len()..];
            after.trim_start_matches(|c: char| c.is_ascii_digit()).trim_start_matches(": ").to_string()
        }
        None => line.trim_start_matches("error: ").to_string(),
    };
    // The parser's advice names its own API; say it in the pipeline author's terms.
    match message.strip_prefix("duplicate mapping key: ") {
        Some(rest) => format!("duplicate key `{}`", rest.split(", set DuplicateKeyPolicy").next().unwrap_or(rest)),
        None => message.replace(", set DuplicateKeyPolicy in Options if acceptable", ""),
    }
}

fn into_node(spanned: serde_saphyr::Spanned<Value>) -> Node {
    let pos = Pos {
        line: spanned.referenced.line() as u32,
        column: spanned.referenced.column() as u32,
    };
    Node { pos, value: spanned.value }
}

impl<'de> Deserialize<'de> for Value {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct ValueVisitor;

        impl<'de> Visitor<'de> for ValueVisitor {
            type Value = Value;

            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("any YAML value")
            }
            fn visit_unit<E>(self) -> Result<Value, E> {
                Ok(Value::Null)
            }
            fn visit_none<E>(self) -> Result<Value, E> {
                Ok(Value::Null)
            }
            fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Value, D::Error> {
                Value::deserialize(d)
            }
            fn visit_bool<E>(self, v: bool) -> Result<Value, E> {
                Ok(Value::Bool(v))
            }
            fn visit_i64<E>(self, v: i64) -> Result<Value, E> {
                Ok(Value::Int(v))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Value, E> {
                i64::try_from(v)
                    .map(Value::Int)
                    .map_err(|_| E::custom(format!("the integer {v} is too large (at most {})", i64::MAX)))
            }
            fn visit_i128<E: de::Error>(self, v: i128) -> Result<Value, E> {
                i64::try_from(v)
                    .map(Value::Int)
                    .map_err(|_| E::custom(format!("the integer {v} does not fit in 64 bits")))
            }
            fn visit_u128<E: de::Error>(self, v: u128) -> Result<Value, E> {
                i64::try_from(v)
                    .map(Value::Int)
                    .map_err(|_| E::custom(format!("the integer {v} does not fit in 64 bits")))
            }
            fn visit_f64<E>(self, v: f64) -> Result<Value, E> {
                Ok(Value::Float(v))
            }
            fn visit_str<E>(self, v: &str) -> Result<Value, E> {
                Ok(Value::Str(v.to_string()))
            }
            fn visit_string<E>(self, v: String) -> Result<Value, E> {
                Ok(Value::Str(v))
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
                let mut items = Vec::new();
                while let Some(item) = seq.next_element::<serde_saphyr::Spanned<Value>>()? {
                    items.push(into_node(item));
                }
                Ok(Value::Seq(items))
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
                let mut entries: Vec<(Node, Node)> = Vec::new();
                while let Some(key) = map.next_key::<serde_saphyr::Spanned<Value>>()? {
                    let key = into_node(key);
                    let value = into_node(map.next_value::<serde_saphyr::Spanned<Value>>()?);
                    if let Some((first, _)) = entries.iter().find(|(k, _)| k.value == key.value) {
                        return Err(de::Error::custom(format!(
                            "duplicate key {} at line {} (first defined at line {})",
                            describe_key(&key),
                            key.pos.line,
                            first.pos.line
                        )));
                    }
                    entries.push((key, value));
                }
                Ok(Value::Map(entries))
            }
        }

        deserializer.deserialize_any(ValueVisitor)
    }
}

fn describe_key(key: &Node) -> String {
    match &key.value {
        Value::Str(s) => format!("`{s}`"),
        Value::Int(i) => format!("`{i}`"),
        other => format!("{other:?}"),
    }
}

// ---------------------------------------------------------------------------------------------
// Typed deserialization from a subtree.

/// An error met while reading a typed value out of a [`Node`]: where, what, and what would fit.
#[derive(Debug, Clone, PartialEq)]
pub struct DeError {
    pub pos: Option<Pos>,
    pub message: String,
    pub suggestion: Option<String>,
}

impl DeError {
    /// Positions are attached from the inside out: the innermost node that knows wins.
    fn or_at(mut self, pos: Pos) -> Self {
        if self.pos.is_none() {
            self.pos = Some(pos);
        }
        self
    }
}

impl fmt::Display for DeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for DeError {}

impl de::Error for DeError {
    fn custom<T: fmt::Display>(msg: T) -> Self {
        DeError { pos: None, message: msg.to_string(), suggestion: None }
    }

    fn unknown_field(field: &str, expected: &'static [&'static str]) -> Self {
        DeError {
            pos: None,
            message: format!("unknown field `{field}`, expected one of {}", quoted_list(expected.iter().copied())),
            suggestion: did_you_mean(field, expected.iter().copied()),
        }
    }

    fn unknown_variant(variant: &str, expected: &'static [&'static str]) -> Self {
        DeError {
            pos: None,
            message: format!("unknown value `{variant}`, expected one of {}", quoted_list(expected.iter().copied())),
            suggestion: did_you_mean(variant, expected.iter().copied()),
        }
    }

    fn missing_field(field: &'static str) -> Self {
        DeError { pos: None, message: format!("missing field `{field}`"), suggestion: None }
    }
}

pub fn quoted_list<'a>(items: impl IntoIterator<Item = &'a str>) -> String {
    items.into_iter().map(|s| format!("`{s}`")).collect::<Vec<_>>().join(", ")
}

/// The closest candidate to `given`, if one is close enough to be a likely typo.
pub fn did_you_mean<'a>(given: &str, candidates: impl IntoIterator<Item = &'a str>) -> Option<String> {
    let given_lower = given.to_lowercase();
    candidates
        .into_iter()
        .map(|c| (strsim::damerau_levenshtein(&given_lower, &c.to_lowercase()), c))
        .filter(|(distance, c)| *distance <= (c.len().max(given.len()) / 3).max(1))
        .min_by_key(|(distance, c)| (*distance, c.to_string()))
        .map(|(_, c)| format!("did you mean `{c}`?"))
}

/// Reads a `T` out of a subtree. Errors carry the position of the innermost node involved.
pub fn from_node<'a, T: Deserialize<'a>>(node: &'a Node) -> Result<T, DeError> {
    T::deserialize(NodeDeserializer(node)).map_err(|e| e.or_at(node.pos))
}

/// A value together with the position of the node it was read from.
#[derive(Debug, Clone, PartialEq)]
pub struct At<T> {
    pub pos: Pos,
    pub value: T,
}

impl<T> std::ops::Deref for At<T> {
    type Target = T;
    fn deref(&self) -> &T {
        &self.value
    }
}

const AT_MARKER: &str = "$segflow::At";
const AT_FIELDS: &[&str] = &["$line", "$column", "$value"];

impl<'de, T: Deserialize<'de>> Deserialize<'de> for At<T> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct AtVisitor<T>(std::marker::PhantomData<T>);

        impl<'de, T: Deserialize<'de>> Visitor<'de> for AtVisitor<T> {
            type Value = At<T>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a value with its position")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<At<T>, A::Error> {
                let mut pos = Pos::default();
                let mut value = None;
                while let Some(key) = map.next_key::<String>()? {
                    match key.as_str() {
                        "$line" => pos.line = map.next_value()?,
                        "$column" => pos.column = map.next_value()?,
                        _ => value = Some(map.next_value()?),
                    }
                }
                let value = value.ok_or_else(|| de::Error::custom("internal: positioned value without a value"))?;
                Ok(At { pos, value })
            }
        }

        deserializer.deserialize_struct(AT_MARKER, AT_FIELDS, AtVisitor(std::marker::PhantomData))
    }
}

/// A mapping read in file order, each key with its position: `inputs`, a declared schema.
#[derive(Debug, Clone, PartialEq)]
pub struct OrderedMap<T>(pub Vec<(At<String>, T)>);

impl<'de, T: Deserialize<'de>> Deserialize<'de> for OrderedMap<T> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct MapVisitor<T>(std::marker::PhantomData<T>);

        impl<'de, T: Deserialize<'de>> Visitor<'de> for MapVisitor<T> {
            type Value = OrderedMap<T>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a mapping")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<OrderedMap<T>, A::Error> {
                let mut entries = Vec::new();
                while let Some(key) = map.next_key::<At<String>>()? {
                    entries.push((key, map.next_value()?));
                }
                Ok(OrderedMap(entries))
            }
        }

        deserializer.deserialize_map(MapVisitor(std::marker::PhantomData))
    }
}

struct NodeDeserializer<'a>(&'a Node);

impl<'de> Deserializer<'de> for NodeDeserializer<'de> {
    type Error = DeError;

    fn deserialize_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DeError> {
        let node = self.0;
        let result = match &node.value {
            Value::Null => visitor.visit_unit(),
            Value::Bool(b) => visitor.visit_bool(*b),
            Value::Int(i) => visitor.visit_i64(*i),
            Value::Float(x) => visitor.visit_f64(*x),
            Value::Str(s) => visitor.visit_borrowed_str(s),
            Value::Seq(items) => visitor.visit_seq(SeqDe { items: items.iter() }),
            Value::Map(entries) => visitor.visit_map(MapDe { entries: entries.iter(), value: None }),
        };
        result.map_err(|e| e.or_at(node.pos))
    }

    fn deserialize_option<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DeError> {
        match self.0.value {
            Value::Null => visitor.visit_none(),
            _ => visitor.visit_some(self),
        }
    }

    fn deserialize_newtype_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        visitor: V,
    ) -> Result<V::Value, DeError> {
        visitor.visit_newtype_struct(self)
    }

    fn deserialize_struct<V: Visitor<'de>>(
        self,
        name: &'static str,
        fields: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, DeError> {
        if name == AT_MARKER {
            return visitor.visit_map(AtAccess { node: self.0, step: 0 });
        }
        match &self.0.value {
            Value::Map(_) => self.deserialize_any(visitor),
            _ => Err(DeError {
                pos: Some(self.0.pos),
                message: format!(
                    "expected a mapping with the fields {}, found {}",
                    quoted_list(fields.iter().copied()),
                    self.0.kind_name()
                ),
                suggestion: None,
            }),
        }
    }

    fn deserialize_enum<V: Visitor<'de>>(
        self,
        _name: &'static str,
        _variants: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, DeError> {
        let node = self.0;
        let result = match &node.value {
            Value::Str(s) => visitor.visit_enum(s.as_str().into_deserializer()),
            Value::Map(entries) if entries.len() == 1 => {
                let (key, value) = &entries[0];
                visitor.visit_enum(EnumDe { key, value })
            }
            _ => Err(DeError::custom(format!(
                "expected a name or a mapping with a single key, found {}",
                node.kind_name()
            ))),
        };
        result.map_err(|e| e.or_at(node.pos))
    }

    serde::forward_to_deserialize_any! {
        bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string bytes byte_buf
        unit unit_struct seq tuple tuple_struct map identifier ignored_any
    }
}

struct SeqDe<'a> {
    items: std::slice::Iter<'a, Node>,
}

impl<'de> SeqAccess<'de> for SeqDe<'de> {
    type Error = DeError;
    fn next_element_seed<T: DeserializeSeed<'de>>(&mut self, seed: T) -> Result<Option<T::Value>, DeError> {
        match self.items.next() {
            Some(node) => seed.deserialize(NodeDeserializer(node)).map(Some).map_err(|e| e.or_at(node.pos)),
            None => Ok(None),
        }
    }
}

struct MapDe<'a> {
    entries: std::slice::Iter<'a, (Node, Node)>,
    value: Option<&'a Node>,
}

impl<'de> MapAccess<'de> for MapDe<'de> {
    type Error = DeError;
    fn next_key_seed<K: DeserializeSeed<'de>>(&mut self, seed: K) -> Result<Option<K::Value>, DeError> {
        match self.entries.next() {
            Some((key, value)) => {
                self.value = Some(value);
                seed.deserialize(NodeDeserializer(key)).map(Some).map_err(|e| e.or_at(key.pos))
            }
            None => Ok(None),
        }
    }
    fn next_value_seed<V: DeserializeSeed<'de>>(&mut self, seed: V) -> Result<V::Value, DeError> {
        let node = self.value.take().ok_or_else(|| DeError::custom("internal: value before key"))?;
        seed.deserialize(NodeDeserializer(node)).map_err(|e| e.or_at(node.pos))
    }
}

/// Feeds the `At` visitor its line, column and the node itself.
struct AtAccess<'a> {
    node: &'a Node,
    step: usize,
}

impl<'de> MapAccess<'de> for AtAccess<'de> {
    type Error = DeError;
    fn next_key_seed<K: DeserializeSeed<'de>>(&mut self, seed: K) -> Result<Option<K::Value>, DeError> {
        let Some(field) = AT_FIELDS.get(self.step) else { return Ok(None) };
        seed.deserialize((*field).into_deserializer()).map(Some)
    }
    fn next_value_seed<V: DeserializeSeed<'de>>(&mut self, seed: V) -> Result<V::Value, DeError> {
        let step = self.step;
        self.step += 1;
        match step {
            0 => seed.deserialize(self.node.pos.line.into_deserializer()),
            1 => seed.deserialize(self.node.pos.column.into_deserializer()),
            _ => seed.deserialize(NodeDeserializer(self.node)).map_err(|e| e.or_at(self.node.pos)),
        }
    }
}

struct EnumDe<'a> {
    key: &'a Node,
    value: &'a Node,
}

impl<'de> de::EnumAccess<'de> for EnumDe<'de> {
    type Error = DeError;
    type Variant = VariantDe<'de>;
    fn variant_seed<V: DeserializeSeed<'de>>(self, seed: V) -> Result<(V::Value, VariantDe<'de>), DeError> {
        let variant = seed.deserialize(NodeDeserializer(self.key)).map_err(|e| e.or_at(self.key.pos))?;
        Ok((variant, VariantDe(self.value)))
    }
}

struct VariantDe<'a>(&'a Node);

impl<'de> de::VariantAccess<'de> for VariantDe<'de> {
    type Error = DeError;
    fn unit_variant(self) -> Result<(), DeError> {
        match self.0.value {
            Value::Null => Ok(()),
            _ => Err(DeError::custom("this value takes no parameters").or_at(self.0.pos)),
        }
    }
    fn newtype_variant_seed<T: DeserializeSeed<'de>>(self, seed: T) -> Result<T::Value, DeError> {
        seed.deserialize(NodeDeserializer(self.0))
    }
    fn tuple_variant<V: Visitor<'de>>(self, _len: usize, visitor: V) -> Result<V::Value, DeError> {
        NodeDeserializer(self.0).deserialize_any(visitor)
    }
    fn struct_variant<V: Visitor<'de>>(
        self,
        fields: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, DeError> {
        NodeDeserializer(self.0).deserialize_struct("", fields, visitor)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Sample {
        name: At<String>,
        #[serde(default)]
        tags: Vec<String>,
    }

    #[test]
    fn every_node_knows_its_line_and_column() {
        let doc = parse("a: 1\nb:\n  - x\n  - y\n").unwrap();
        let b = doc.get("b").unwrap();
        let Value::Seq(items) = &b.value else { panic!("b is a list") };
        assert_eq!(items[1].pos, Pos { line: 4, column: 5 });
    }

    #[test]
    fn an_unknown_field_is_reported_at_its_key_with_a_suggestion() {
        let doc = parse("name: x\ntagz: [a]\n").unwrap();
        let err = from_node::<Sample>(&doc).unwrap_err();
        assert_eq!(err.pos, Some(Pos { line: 2, column: 1 }));
        assert_eq!(err.message, "unknown field `tagz`, expected one of `name`, `tags`");
        assert_eq!(err.suggestion.as_deref(), Some("did you mean `tags`?"));
    }

    #[test]
    fn a_wrong_type_is_reported_at_the_value() {
        let doc = parse("name: x\ntags: 5\n").unwrap();
        let err = from_node::<Sample>(&doc).unwrap_err();
        assert_eq!(err.pos, Some(Pos { line: 2, column: 7 }));
        assert!(err.message.contains("expected a sequence"), "{}", err.message);
    }

    #[test]
    fn a_positioned_value_keeps_its_position() {
        let doc = parse("tags: []\nname:   hello\n").unwrap();
        let sample: Sample = from_node(&doc).unwrap();
        assert_eq!(sample.name.value, "hello");
        assert!(sample.tags.is_empty());
        assert_eq!(sample.name.pos, Pos { line: 2, column: 9 });
    }

    #[test]
    fn a_duplicate_key_is_a_syntax_error() {
        let err = parse("a: 1\na: 2\n").unwrap_err();
        assert_eq!(err.message, "duplicate key `a`");
        assert_eq!(err.pos, Some(Pos { line: 2, column: 1 }));
    }

    #[test]
    fn a_syntax_error_has_a_position() {
        let err = parse("a: [1, 2\nb: c\n").unwrap_err();
        assert!(err.pos.is_some(), "{err:?}");
    }
}
