//! Decoding one document's JSON into a typed [`Object`], with the field path of the first
//! type error, and warnings for fields the type does not have (Kubernetes drops them).

use serde::Deserialize;
use serde_json::Value;
use serde_path_to_error::Segment;

use super::document::Positions;
use super::error::{ManifestError, Origin, Warning};
use crate::object::{DynamicObject, Kind, Object};

/// Numbers where Kubernetes accepts them for a string type. The API server reads a
/// Quantity from a JSON number (`cpu: 1`), but k8s-openapi's `Quantity` wants a string; a
/// bounded number of such fields are rewritten and decoding is retried.
const MAX_COERCIONS: usize = 256;

/// Decodes `value` as an object of `kind`.
pub(crate) fn decode(
    kind: &Kind,
    value: &mut Value,
    origin: &Origin,
    positions: &Positions,
) -> Result<Object, ManifestError> {
    fill_embedded_type_meta(kind, value);
    let mut coercions = 0;
    loop {
        let error = match deserialize_kind(kind, &*value) {
            Ok(object) => return Ok(object),
            Err(Failure::Tracked(e)) => e,
            Err(Failure::Untracked(e)) => {
                return Err(ManifestError::WrongType {
                    origin: Box::new(origin.clone()),
                    field: "(unknown)".into(),
                    message: friendly(&e.to_string()),
                })
            }
        };
        let message = error.inner().to_string();
        if coercions < MAX_COERCIONS && is_number_for_string(&message) {
            if let Some(slot @ Value::Number(_)) = value_at(value, error.path()) {
                *slot = Value::String(slot.to_string());
                coercions += 1;
                continue;
            }
        }
        let path = error.path().to_string();
        let path = if path == "." { String::new() } else { path };
        if let Some(field) = missing_field(&message) {
            return Err(ManifestError::MissingField {
                origin: origin.at(positions.lookup(&path)),
                field: join_path(&path, field),
            });
        }
        return Err(ManifestError::WrongType {
            origin: origin.at(positions.lookup(&path)),
            field: if path.is_empty() {
                "(root)".into()
            } else {
                path
            },
            message: friendly(&message),
        });
    }
}

/// Kubernetes does not ask for `apiVersion` and `kind` on a StatefulSet's
/// `volumeClaimTemplates`, but k8s-openapi's `PersistentVolumeClaim` requires them: they are
/// filled in where missing.
fn fill_embedded_type_meta(kind: &Kind, value: &mut Value) {
    if *kind != Kind::StatefulSet {
        return;
    }
    let templates = value
        .get_mut("spec")
        .and_then(|s| s.get_mut("volumeClaimTemplates"))
        .and_then(Value::as_array_mut);
    for template in templates.into_iter().flatten() {
        if let Some(map) = template.as_object_mut() {
            map.entry("apiVersion").or_insert_with(|| "v1".into());
            map.entry("kind")
                .or_insert_with(|| "PersistentVolumeClaim".into());
        }
    }
}

type PathError = serde_path_to_error::Error<serde_json::Error>;

enum Failure {
    Tracked(PathError),
    Untracked(serde_json::Error),
}

impl From<PathError> for Failure {
    fn from(e: PathError) -> Failure {
        Failure::Tracked(e)
    }
}

fn de<'a, T: Deserialize<'a>>(value: &'a Value) -> Result<T, PathError> {
    serde_path_to_error::deserialize(value)
}

/// `Deserialize` for the kind chosen at run time, with the path of the failing field.
fn deserialize_kind(kind: &Kind, value: &Value) -> Result<Object, Failure> {
    macro_rules! typed {
        ($($variant:ident),* $(,)?) => {
            match kind {
                $(Kind::$variant => Object::$variant(Box::new(de(value)?)),)*
                Kind::Custom(_) => Object::Custom(Box::new(de::<DynamicObject>(value)?)),
                // A kind added to the object model after this list: decoded without a
                // field path in errors.
                #[allow(unreachable_patterns)]
                other => Object::from_json(other, value.clone()).map_err(Failure::Untracked)?,
            }
        };
    }
    Ok(typed!(
        Pod,
        Node,
        Namespace,
        Service,
        Endpoints,
        ConfigMap,
        Secret,
        PersistentVolume,
        PersistentVolumeClaim,
        LimitRange,
        ResourceQuota,
        Event,
        ServiceAccount,
        Deployment,
        ReplicaSet,
        StatefulSet,
        DaemonSet,
        ControllerRevision,
        Job,
        CronJob,
        HorizontalPodAutoscaler,
        EndpointSlice,
        StorageClass,
        CSIDriver,
        CSINode,
        VolumeAttachment,
        Role,
        RoleBinding,
        ClusterRole,
        ClusterRoleBinding,
        Lease,
    ))
}

fn is_number_for_string(message: &str) -> bool {
    (message.starts_with("invalid type: integer")
        || message.starts_with("invalid type: floating point"))
        && (message.ends_with("expected Quantity") || message.ends_with("expected a string"))
        // Only Quantity is a string type Kubernetes reads from a number.
        && message.contains("Quantity")
}

fn value_at<'a>(value: &'a mut Value, path: &serde_path_to_error::Path) -> Option<&'a mut Value> {
    let mut cur = value;
    for segment in path.iter() {
        cur = match segment {
            Segment::Seq { index } => cur.get_mut(*index)?,
            Segment::Map { key } => cur.get_mut(key.as_str())?,
            Segment::Enum { .. } | Segment::Unknown => return None,
        };
    }
    Some(cur)
}

fn missing_field(message: &str) -> Option<&str> {
    message.strip_prefix("missing field `")?.strip_suffix('`')
}

pub(crate) fn join_path(path: &str, field: &str) -> String {
    if path.is_empty() {
        field.to_string()
    } else {
        format!("{path}.{field}")
    }
}

/// serde's `invalid type: string "http", expected i32` as a person would say it:
/// `expected an integer, found string "http"`.
fn friendly(message: &str) -> String {
    let Some(rest) = message.strip_prefix("invalid type: ") else {
        return message.to_string();
    };
    let Some((found, expected)) = rest.rsplit_once(", expected ") else {
        return message.to_string();
    };
    let expected = match expected {
        "i8" | "i16" | "i32" | "i64" | "u8" | "u16" | "u32" | "u64" | "usize" => {
            "an integer".to_string()
        }
        "f32" | "f64" => "a number".into(),
        "a boolean" | "bool" => "a boolean".into(),
        "a sequence" => "a list".into(),
        "a map" => "an object".into(),
        "Quantity" => "a quantity such as \"500m\" or \"1Gi\"".into(),
        "IntOrString" => "an integer or a string".into(),
        "Time" | "MicroTime" => "an RFC 3339 timestamp string".into(),
        other if other.starts_with(|c: char| c.is_ascii_uppercase()) => {
            format!("an object ({other})")
        }
        other => other.to_string(),
    };
    let found = match found {
        "map" => "an object".to_string(),
        "sequence" => "a list".to_string(),
        "null" | "unit value" => "null".to_string(),
        other => other.replace('`', "").replace("floating point", "number"),
    };
    format!("expected {expected}, found {found}")
}

/// Required fields absent from `input`. k8s-openapi fills a missing required (non-`Option`)
/// field with its default instead of failing, and always serializes it: a key the typed
/// object's JSON has and the input lacks is a required field the input left out. The root
/// `metadata` is left to validation, which names the missing `metadata.name`.
pub(crate) fn missing_fields(input: &Value, decoded: &Value) -> Vec<String> {
    fn walk(input: &Value, decoded: &Value, path: &str, out: &mut Vec<String>) {
        match (input, decoded) {
            (Value::Object(a), Value::Object(b)) => {
                for (key, value) in b {
                    let child = join_path(path, key);
                    match a.get(key) {
                        Some(Value::Null) | None if !(path.is_empty() && key == "metadata") => {
                            out.push(child)
                        }
                        Some(i) => walk(i, value, &child, out),
                        None => {}
                    }
                }
            }
            (Value::Array(a), Value::Array(b)) if a.len() == b.len() => {
                for (i, (x, y)) in a.iter().zip(b).enumerate() {
                    walk(x, y, &format!("{path}[{i}]"), out);
                }
            }
            _ => {}
        }
    }
    let mut out = Vec::new();
    walk(input, decoded, "", &mut out);
    out
}

/// Fields of `input` that the typed object dropped: present (and not null) in the input, absent
/// from the object's JSON form.
pub(crate) fn unknown_fields(
    input: &Value,
    decoded: &Value,
    origin: &Origin,
    out: &mut Vec<Warning>,
) {
    fn walk(input: &Value, decoded: &Value, path: &str, origin: &Origin, out: &mut Vec<Warning>) {
        match (input, decoded) {
            (Value::Object(a), Value::Object(b)) => {
                for (key, value) in a {
                    let child = join_path(path, key);
                    match b.get(key) {
                        Some(d) => walk(value, d, &child, origin, out),
                        None if value.is_null() => {}
                        None => out.push(Warning {
                            origin: origin.clone(),
                            field: child,
                            message: "unknown field, ignored".into(),
                        }),
                    }
                }
            }
            (Value::Array(a), Value::Array(b)) if a.len() == b.len() => {
                for (i, (x, y)) in a.iter().zip(b).enumerate() {
                    walk(x, y, &format!("{path}[{i}]"), origin, out);
                }
            }
            _ => {}
        }
    }
    walk(input, decoded, "", origin, out);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn type_errors_read_naturally() {
        assert_eq!(
            friendly("invalid type: string \"http\", expected i32"),
            "expected an integer, found string \"http\""
        );
        assert_eq!(
            friendly("invalid type: sequence, expected a map"),
            "expected an object, found a list"
        );
        assert_eq!(friendly("something else"), "something else");
    }

    #[test]
    fn numeric_quantities_become_strings() {
        let mut value = serde_json::json!({
            "apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p"},
            "spec": {"containers": [{"name": "c", "image": "i",
                "resources": {"requests": {"cpu": 1, "memory": 1.5}}}]}
        });
        let object = decode(
            &Kind::Pod,
            &mut value,
            &Origin::source("t"),
            &Positions::default(),
        )
        .unwrap();
        let Object::Pod(pod) = object else { panic!() };
        let requests = pod.spec.unwrap().containers[0]
            .resources
            .clone()
            .unwrap()
            .requests
            .unwrap();
        assert_eq!(requests["cpu"].0, "1");
        assert_eq!(requests["memory"].0, "1.5");
    }

    #[test]
    fn claim_templates_need_no_type_meta() {
        let mut value = serde_json::json!({
            "apiVersion": "apps/v1", "kind": "StatefulSet", "metadata": {"name": "db"},
            "spec": {"selector": {"matchLabels": {"app": "db"}},
                "template": {"metadata": {"labels": {"app": "db"}}},
                "volumeClaimTemplates": [{"metadata": {"name": "data"}}]}
        });
        let object = decode(
            &Kind::StatefulSet,
            &mut value,
            &Origin::source("t"),
            &Positions::default(),
        )
        .unwrap();
        let Object::StatefulSet(set) = object else {
            panic!()
        };
        let templates = set.spec.unwrap().volume_claim_templates.unwrap();
        assert_eq!(templates[0].metadata.name.as_deref(), Some("data"));
    }
}
