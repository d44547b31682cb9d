//! Splitting a source text into documents: JSON values plus the line and column of every
//! node, so that a later error about a field path can point into the file.
//!
//! YAML is parsed with serde-saphyr into a span-carrying tree ([`Node`]), which is then turned
//! into a `serde_json::Value` (what the typed decoding works on) and a [`Positions`] index
//! from field path to position. JSON is YAML, so the same parser handles it; a stream of
//! concatenated JSON objects (which YAML does not accept) falls back to serde_json.

use std::collections::HashMap;
use std::fmt;

use serde::de::{self, Deserialize, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_json::Value;
use serde_saphyr::Spanned;

use super::error::{ManifestError, Origin};

/// One document of a source.
#[derive(Debug)]
pub(crate) struct Document {
    /// Counting from 1.
    pub index: usize,
    pub value: Value,
    pub positions: Positions,
}

/// Field path (as serde_path_to_error prints it: `a.b[0].c`) → (line, column).
#[derive(Debug, Default)]
pub(crate) struct Positions(HashMap<String, (u64, u64)>);

impl Positions {
    /// The position of `path`, or of its nearest ancestor that has one.
    pub fn lookup(&self, path: &str) -> Option<(u64, u64)> {
        let mut path = path;
        loop {
            if let Some(p) = self.0.get(path) {
                return Some(*p);
            }
            if path.is_empty() {
                return None;
            }
            path = match path.rfind(['.', '[']) {
                Some(i) => &path[..i],
                None => "",
            };
        }
    }

    /// The positions under `prefix` (a List item), re-rooted at it.
    pub fn subtree(&self, prefix: &str) -> Positions {
        let mut out = HashMap::new();
        for (path, pos) in &self.0 {
            if path == prefix {
                out.insert(String::new(), *pos);
            } else if let Some(rest) = path.strip_prefix(prefix) {
                if let Some(rest) = rest.strip_prefix('.') {
                    out.insert(rest.to_string(), *pos);
                } else if rest.starts_with('[') {
                    out.insert(rest.to_string(), *pos);
                }
            }
        }
        Positions(out)
    }
}

/// Parses `text` into its non-empty documents.
pub(crate) fn parse(text: &str, source: &str) -> Result<Vec<Document>, ManifestError> {
    // Kubernetes reads YAML as YAML 1.1 (sigs.k8s.io/yaml): `defaultMode: 0400` is octal.
    let options = serde_saphyr::options! {
        with_snippet: false,
        legacy_octal_numbers: true,
    };
    match serde_saphyr::from_multiple_with_options::<Spanned<Node>>(text, options) {
        Ok(nodes) => Ok(nodes
            .into_iter()
            .filter(|n| !matches!(n.value, Node::Null))
            .enumerate()
            .map(|(i, node)| {
                let mut positions = HashMap::new();
                let value = into_json(node, String::new(), &mut positions);
                Document {
                    index: i + 1,
                    value,
                    positions: Positions(positions),
                }
            })
            .collect()),
        Err(yaml_error) => {
            if text.trim_start().starts_with('{') {
                if let Ok(docs) = parse_json_stream(text) {
                    return Ok(docs);
                }
            }
            let location = yaml_error.location().filter(|l| l.line() > 0);
            Err(ManifestError::Syntax {
                origin: Box::new(Origin {
                    source: source.to_string(),
                    line: location.map(|l| l.line()),
                    column: location.map(|l| l.column()),
                    ..Origin::default()
                }),
                message: first_line(&yaml_error.without_snippet().to_string()),
            })
        }
    }
}

/// Concatenated JSON objects, as `kubectl` accepts them. No field positions.
fn parse_json_stream(text: &str) -> Result<Vec<Document>, serde_json::Error> {
    serde_json::Deserializer::from_str(text)
        .into_iter::<Value>()
        .enumerate()
        .map(|(i, value)| {
            Ok(Document {
                index: i + 1,
                value: value?,
                positions: Positions::default(),
            })
        })
        .collect()
}

fn first_line(message: &str) -> String {
    // serde-saphyr appends " at line L column C" which the origin already shows.
    let mut line = message.lines().next().unwrap_or(message);
    if let Some(i) = line.rfind(" at line ") {
        line = &line[..i];
    }
    // Advice addressed to serde-saphyr's users, not to the manifest's author.
    if let Some(i) = line.find(", set DuplicateKeyPolicy") {
        line = &line[..i];
    }
    line.to_string()
}

fn into_json(
    node: Spanned<Node>,
    path: String,
    positions: &mut HashMap<String, (u64, u64)>,
) -> Value {
    let at = node.referenced;
    if at.line() > 0 {
        positions.insert(path.clone(), (at.line(), at.column()));
    }
    match node.value {
        Node::Null => Value::Null,
        Node::Bool(b) => Value::Bool(b),
        Node::I64(i) => Value::from(i),
        Node::U64(u) => Value::from(u),
        Node::F64(f) => serde_json::Number::from_f64(f).map_or(Value::Null, Value::Number),
        Node::Str(s) => Value::String(s),
        Node::Seq(items) => Value::Array(
            items
                .into_iter()
                .enumerate()
                .map(|(i, item)| into_json(item, format!("{path}[{i}]"), positions))
                .collect(),
        ),
        Node::Map(entries) => {
            let mut map = serde_json::Map::with_capacity(entries.len());
            for (key, value) in entries {
                let key = key.value.to_string();
                let child = if path.is_empty() {
                    key.clone()
                } else {
                    format!("{path}.{key}")
                };
                map.insert(key, into_json(value, child, positions));
            }
            Value::Object(map)
        }
    }
}

/// A YAML node whose children carry their positions.
#[derive(Debug)]
enum Node {
    Null,
    Bool(bool),
    I64(i64),
    U64(u64),
    F64(f64),
    Str(String),
    Seq(Vec<Spanned<Node>>),
    Map(Vec<(Spanned<Node>, Spanned<Node>)>),
}

impl fmt::Display for Node {
    /// How a mapping key reads as a JSON object key (sigs.k8s.io/yaml does the same).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Node::Null => f.write_str("null"),
            Node::Bool(b) => write!(f, "{b}"),
            Node::I64(i) => write!(f, "{i}"),
            Node::U64(u) => write!(f, "{u}"),
            Node::F64(x) => write!(f, "{x}"),
            Node::Str(s) => f.write_str(s),
            Node::Seq(_) => f.write_str("[...]"),
            Node::Map(_) => f.write_str("{...}"),
        }
    }
}

impl<'de> Deserialize<'de> for Node {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Node, D::Error> {
        deserializer.deserialize_any(NodeVisitor)
    }
}

struct NodeVisitor;

impl<'de> Visitor<'de> for NodeVisitor {
    type Value = Node;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any YAML value")
    }

    fn visit_bool<E: de::Error>(self, v: bool) -> Result<Node, E> {
        Ok(Node::Bool(v))
    }
    fn visit_i64<E: de::Error>(self, v: i64) -> Result<Node, E> {
        Ok(Node::I64(v))
    }
    fn visit_u64<E: de::Error>(self, v: u64) -> Result<Node, E> {
        Ok(Node::U64(v))
    }
    fn visit_i128<E: de::Error>(self, v: i128) -> Result<Node, E> {
        Ok(match i64::try_from(v) {
            Ok(i) => Node::I64(i),
            Err(_) => Node::Str(v.to_string()),
        })
    }
    fn visit_u128<E: de::Error>(self, v: u128) -> Result<Node, E> {
        Ok(match u64::try_from(v) {
            Ok(u) => Node::U64(u),
            Err(_) => Node::Str(v.to_string()),
        })
    }
    fn visit_f64<E: de::Error>(self, v: f64) -> Result<Node, E> {
        Ok(Node::F64(v))
    }
    fn visit_str<E: de::Error>(self, v: &str) -> Result<Node, E> {
        Ok(Node::Str(v.to_string()))
    }
    fn visit_string<E: de::Error>(self, v: String) -> Result<Node, E> {
        Ok(Node::Str(v))
    }
    fn visit_unit<E: de::Error>(self) -> Result<Node, E> {
        Ok(Node::Null)
    }
    fn visit_none<E: de::Error>(self) -> Result<Node, E> {
        Ok(Node::Null)
    }
    fn visit_some<D: Deserializer<'de>>(self, deserializer: D) -> Result<Node, D::Error> {
        Node::deserialize(deserializer)
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Node, A::Error> {
        let mut items = Vec::with_capacity(seq.size_hint().unwrap_or(0));
        while let Some(item) = seq.next_element::<Spanned<Node>>()? {
            items.push(item);
        }
        Ok(Node::Seq(items))
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Node, A::Error> {
        let mut entries = Vec::with_capacity(map.size_hint().unwrap_or(0));
        while let Some(key) = map.next_key::<Spanned<Node>>()? {
            let value = map.next_value::<Spanned<Node>>()?;
            entries.push((key, value));
        }
        Ok(Node::Map(entries))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn documents_carry_field_positions() {
        let text = "a: 1\n---\n# empty next\n---\nkind: Pod\nspec:\n  containers:\n  - name: web\n    image: nginx\n";
        let docs = parse(text, "t.yaml").unwrap();
        assert_eq!(docs.len(), 2);
        assert_eq!(docs[1].index, 2);
        assert_eq!(docs[1].value["spec"]["containers"][0]["name"], "web");
        assert_eq!(
            docs[1].positions.lookup("spec.containers[0].image"),
            Some((9, 12))
        );
        // An unknown path falls back to its nearest known ancestor.
        assert_eq!(
            docs[1].positions.lookup("spec.containers[0].ports"),
            Some((8, 5))
        );
    }

    #[test]
    fn zero_prefixed_integers_are_octal_as_in_kubernetes() {
        let docs = parse(
            "mode: 0400\nport: 80\nratio: 0.5\nname: \"0400\"\n",
            "t.yaml",
        )
        .unwrap();
        assert_eq!(docs[0].value["mode"], 256);
        assert_eq!(docs[0].value["port"], 80);
        assert_eq!(docs[0].value["ratio"], 0.5);
        assert_eq!(docs[0].value["name"], "0400");
    }

    #[test]
    fn syntax_error_has_line_and_column() {
        let err = parse("a: 1\nb: [1, 2\nc: 3\n", "bad.yaml").unwrap_err();
        let ManifestError::Syntax { origin, .. } = &err else {
            panic!("{err}")
        };
        assert_eq!(origin.source, "bad.yaml");
        assert!(origin.line.is_some(), "{err}");
    }

    #[test]
    fn duplicate_keys_are_syntax_errors() {
        let err = parse("a: 1\nb: 2\na: 3\n", "dup.yaml").unwrap_err();
        assert_eq!(
            err.to_string(),
            "dup.yaml:3:1: syntax error: duplicate mapping key: a"
        );
    }

    #[test]
    fn json_streams_parse() {
        let docs = parse("{\"a\": 1}\n{\"b\": [true]}", "s.json").unwrap();
        assert_eq!(docs.len(), 2);
        assert_eq!(docs[1].value["b"][0], true);
    }
}
