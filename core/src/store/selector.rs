//! Label and field selectors, parsed once and matched many times.
//!
//! Label selectors follow Kubernetes' grammar: equality (`a=b`, `a==b`, `a!=b`), set-based
//! (`a in (x,y)`, `a notin (x)`, `a`, `!a`), comma-separated requirements all of which must
//! hold. Field selectors support `=`, `==` and `!=` on a field path.

use std::collections::BTreeMap;

use crate::object::Object;

/// A selector that could not be parsed; names the selector and what was expected.
#[derive(Debug, Clone, thiserror::Error, PartialEq)]
#[error("invalid selector {selector:?}: {message}")]
pub struct SelectorError {
    /// The selector text.
    pub selector: String,
    /// What was wrong.
    pub message: String,
}

/// The operator of one label requirement.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Operator {
    /// The label has one of the values.
    In(Vec<String>),
    /// The label is absent or has none of the values.
    NotIn(Vec<String>),
    /// The label is present.
    Exists,
    /// The label is absent.
    DoesNotExist,
}

/// One requirement on a label.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Requirement {
    /// The label key.
    pub key: String,
    /// What the label's value must satisfy.
    pub operator: Operator,
}

impl Requirement {
    fn matches(&self, labels: Option<&BTreeMap<String, String>>) -> bool {
        let value = labels.and_then(|l| l.get(&self.key));
        match &self.operator {
            Operator::In(values) => value.is_some_and(|v| values.contains(v)),
            Operator::NotIn(values) => value.is_none_or(|v| !values.contains(v)),
            Operator::Exists => value.is_some(),
            Operator::DoesNotExist => value.is_none(),
        }
    }
}

/// A label selector: all requirements must hold. The empty selector matches everything.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LabelSelector {
    /// The requirements.
    pub requirements: Vec<Requirement>,
}

impl LabelSelector {
    /// A selector matching labels equal to every pair of `labels`.
    pub fn from_labels(labels: &BTreeMap<String, String>) -> LabelSelector {
        LabelSelector {
            requirements: labels
                .iter()
                .map(|(k, v)| Requirement {
                    key: k.clone(),
                    operator: Operator::In(vec![v.clone()]),
                })
                .collect(),
        }
    }

    /// The selector of a Kubernetes `LabelSelector` (matchLabels and matchExpressions).
    pub fn from_k8s(
        selector: &k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector,
    ) -> Result<LabelSelector, SelectorError> {
        let mut out = selector
            .match_labels
            .as_ref()
            .map(LabelSelector::from_labels)
            .unwrap_or_default();
        for expr in selector.match_expressions.iter().flatten() {
            let values = expr.values.clone().unwrap_or_default();
            let operator = match expr.operator.as_str() {
                "In" => Operator::In(values),
                "NotIn" => Operator::NotIn(values),
                "Exists" => Operator::Exists,
                "DoesNotExist" => Operator::DoesNotExist,
                other => {
                    return Err(SelectorError {
                        selector: expr.key.to_string(),
                        message: format!(
                            "operator {other:?} is not one of In, NotIn, Exists, DoesNotExist"
                        ),
                    })
                }
            };
            out.requirements.push(Requirement {
                key: expr.key.clone(),
                operator,
            });
        }
        Ok(out)
    }

    /// Parses the string form, e.g. `app=web,tier in (front,back),!canary`.
    pub fn parse(text: &str) -> Result<LabelSelector, SelectorError> {
        let err = |message: String| SelectorError {
            selector: text.to_string(),
            message,
        };
        let mut requirements = Vec::new();
        for part in split_top_level(text) {
            let part = part.trim();
            if part.is_empty() {
                continue;
            }
            let requirement = if let Some(key) = part.strip_prefix('!') {
                Requirement {
                    key: check_key(key.trim()).map_err(err)?,
                    operator: Operator::DoesNotExist,
                }
            } else if let Some((key, value)) = part.split_once("!=") {
                Requirement {
                    key: check_key(key.trim()).map_err(err)?,
                    operator: Operator::NotIn(vec![value.trim().to_string()]),
                }
            } else if let Some((key, value)) =
                part.split_once("==").or_else(|| part.split_once('='))
            {
                Requirement {
                    key: check_key(key.trim()).map_err(err)?,
                    operator: Operator::In(vec![value.trim().to_string()]),
                }
            } else if let Some((key, rest)) = split_set_op(part, " notin ") {
                Requirement {
                    key: check_key(key).map_err(err)?,
                    operator: Operator::NotIn(parse_set(rest).map_err(err)?),
                }
            } else if let Some((key, rest)) = split_set_op(part, " in ") {
                Requirement {
                    key: check_key(key).map_err(err)?,
                    operator: Operator::In(parse_set(rest).map_err(err)?),
                }
            } else {
                Requirement {
                    key: check_key(part).map_err(err)?,
                    operator: Operator::Exists,
                }
            };
            requirements.push(requirement);
        }
        Ok(LabelSelector { requirements })
    }

    /// Whether `labels` satisfy every requirement.
    pub fn matches(&self, labels: Option<&BTreeMap<String, String>>) -> bool {
        self.requirements.iter().all(|r| r.matches(labels))
    }

    /// Whether the selector matches everything.
    pub fn is_empty(&self) -> bool {
        self.requirements.is_empty()
    }
}

fn split_top_level(text: &str) -> Vec<&str> {
    let mut parts = Vec::new();
    let mut depth = 0usize;
    let mut start = 0;
    for (i, c) in text.char_indices() {
        match c {
            '(' => depth += 1,
            ')' => depth = depth.saturating_sub(1),
            ',' if depth == 0 => {
                parts.push(&text[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    parts.push(&text[start..]);
    parts
}

fn split_set_op<'a>(part: &'a str, op: &str) -> Option<(&'a str, &'a str)> {
    let idx = part.find(op)?;
    Some((part[..idx].trim(), part[idx + op.len()..].trim()))
}

fn parse_set(text: &str) -> Result<Vec<String>, String> {
    let inner = text
        .strip_prefix('(')
        .and_then(|t| t.strip_suffix(')'))
        .ok_or_else(|| format!("expected a parenthesized value list, found {text:?}"))?;
    Ok(inner
        .split(',')
        .map(|v| v.trim().to_string())
        .filter(|v| !v.is_empty())
        .collect())
}

fn check_key(key: &str) -> Result<String, String> {
    let valid = !key.is_empty()
        && key.len() <= 317
        && key
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | '/'));
    if valid {
        Ok(key.to_string())
    } else {
        Err(format!("label key {key:?} is not a valid qualified name"))
    }
}

/// One requirement on a field.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FieldRequirement {
    /// The field path, e.g. `spec.nodeName`.
    pub field: String,
    /// The value to compare with.
    pub value: String,
    /// `true` for `!=`.
    pub negated: bool,
}

/// A field selector: all requirements must hold.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct FieldSelector {
    /// The requirements.
    pub requirements: Vec<FieldRequirement>,
}

impl FieldSelector {
    /// A selector for `field == value`.
    pub fn eq(field: &str, value: &str) -> FieldSelector {
        FieldSelector {
            requirements: vec![FieldRequirement {
                field: field.to_string(),
                value: value.to_string(),
                negated: false,
            }],
        }
    }

    /// Parses the string form, e.g. `spec.nodeName=n1,status.phase!=Succeeded`.
    pub fn parse(text: &str) -> Result<FieldSelector, SelectorError> {
        let mut requirements = Vec::new();
        for part in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let (field, value, negated) = if let Some((f, v)) = part.split_once("!=") {
                (f, v, true)
            } else if let Some((f, v)) = part.split_once("==").or_else(|| part.split_once('=')) {
                (f, v, false)
            } else {
                return Err(SelectorError {
                    selector: text.to_string(),
                    message: format!("{part:?} is not of the form field=value or field!=value"),
                });
            };
            requirements.push(FieldRequirement {
                field: field.trim().to_string(),
                value: value.trim().to_string(),
                negated,
            });
        }
        Ok(FieldSelector { requirements })
    }

    /// Whether `object` satisfies every requirement.
    pub fn matches(&self, object: &Object) -> bool {
        self.requirements.iter().all(|r| {
            let value = object.field(&r.field);
            let equal = value.as_deref().unwrap_or("") == r.value;
            equal != r.negated
        })
    }

    /// The value this selector requires for `field` with `=`, if any: lets a store use an
    /// index (e.g. pods by `spec.nodeName`).
    pub fn required_value(&self, field: &str) -> Option<&str> {
        self.requirements
            .iter()
            .find(|r| r.field == field && !r.negated)
            .map(|r| r.value.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn parses_and_matches_label_selectors() {
        let s = LabelSelector::parse("app=web,tier in (front, back),!canary,env!=prod").unwrap();
        assert_eq!(s.requirements.len(), 4);
        assert!(s.matches(Some(&labels(&[("app", "web"), ("tier", "front")]))));
        assert!(!s.matches(Some(&labels(&[("app", "web"), ("tier", "db")]))));
        assert!(!s.matches(Some(&labels(&[
            ("app", "web"),
            ("tier", "front"),
            ("canary", "1")
        ]))));
        assert!(!s.matches(Some(&labels(&[
            ("app", "web"),
            ("tier", "back"),
            ("env", "prod")
        ]))));
        assert!(!s.matches(None));
        assert!(LabelSelector::parse("").unwrap().matches(None));
        let exists = LabelSelector::parse("app, x notin (1)").unwrap();
        assert!(exists.matches(Some(&labels(&[("app", "")]))));
        assert!(!exists.matches(Some(&labels(&[("app", ""), ("x", "1")]))));
    }

    #[test]
    fn rejects_bad_label_selectors() {
        let e = LabelSelector::parse("app in front").unwrap_err();
        assert!(e.message.contains("parenthesized"), "{e}");
        let e = LabelSelector::parse("a b=c").unwrap_err();
        assert!(e.to_string().contains("\"a b\""), "{e}");
    }

    #[test]
    fn field_selectors() {
        let s = FieldSelector::parse("spec.nodeName=n1,status.phase!=Failed").unwrap();
        assert_eq!(s.required_value("spec.nodeName"), Some("n1"));
        assert!(FieldSelector::parse("nonsense").is_err());
    }
}
