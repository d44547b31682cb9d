//! Payloads of the projected sources: configMap, secret, downwardAPI and projected, built
//! from the pod and the objects they name, with Kubernetes' rules for `items` (key → path),
//! `defaultMode` / `mode` and `optional`.

use std::collections::BTreeMap;
use std::path::PathBuf;

use k8s_openapi::api::core::v1::{ConfigMap, DownwardAPIVolumeFile, KeyToPath, Pod, Secret};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use wharf_core::node::downward;

use super::atomic_writer::{validate_path, FileProjection, Payload};
use crate::error::CsiError;

/// Kubernetes' default file mode for projected files (0644).
pub const DEFAULT_MODE: i32 = 0o644;

fn invalid(volume: &str, field: impl Into<String>, message: impl Into<String>) -> CsiError {
    CsiError::InvalidVolume {
        volume: volume.to_string(),
        field: field.into(),
        message: message.into(),
    }
}

fn check_mode(volume: &str, field: &str, mode: i32) -> Result<u32, CsiError> {
    if !(0..=0o777).contains(&mode) {
        return Err(invalid(
            volume,
            field,
            format!("mode {mode:#o} is not within 0..=0777"),
        ));
    }
    Ok(mode as u32)
}

fn add(
    volume: &str,
    field: &str,
    out: &mut Payload,
    path: &str,
    data: Vec<u8>,
    mode: u32,
) -> Result<(), CsiError> {
    let path = PathBuf::from(path);
    validate_path(&path).map_err(|m| invalid(volume, field, m))?;
    if out
        .insert(path.clone(), FileProjection { data, mode })
        .is_some()
    {
        return Err(invalid(
            volume,
            field,
            format!("path {} is projected twice", path.display()),
        ));
    }
    Ok(())
}

/// Projects key/value data: every key as a file named after it, or only `items` with their
/// paths and modes. A key named in `items` but missing is an error unless `optional`.
#[allow(clippy::too_many_arguments)]
pub fn project_keys(
    volume: &str,
    field: &str,
    object: &str,
    data: &BTreeMap<String, Vec<u8>>,
    items: Option<&[KeyToPath]>,
    default_mode: i32,
    optional: bool,
    out: &mut Payload,
) -> Result<(), CsiError> {
    let default_mode = check_mode(volume, &format!("{field}.defaultMode"), default_mode)?;
    match items {
        None => {
            for (key, value) in data {
                add(volume, field, out, key, value.clone(), default_mode)?;
            }
        }
        Some(items) => {
            for (i, item) in items.iter().enumerate() {
                let item_field = format!("{field}.items[{i}]");
                let Some(value) = data.get(&item.key) else {
                    if optional {
                        continue;
                    }
                    return Err(invalid(
                        volume,
                        item_field,
                        format!("{object} has no key {:?}", item.key),
                    ));
                };
                let mode = match item.mode {
                    Some(m) => check_mode(volume, &format!("{item_field}.mode"), m)?,
                    None => default_mode,
                };
                add(volume, &item_field, out, &item.path, value.clone(), mode)?;
            }
        }
    }
    Ok(())
}

/// A configMap's `data` and `binaryData` as bytes.
pub fn config_map_data(cm: &ConfigMap) -> BTreeMap<String, Vec<u8>> {
    let mut out: BTreeMap<String, Vec<u8>> = cm
        .data
        .iter()
        .flatten()
        .map(|(k, v)| (k.clone(), v.clone().into_bytes()))
        .collect();
    for (k, v) in cm.binary_data.iter().flatten() {
        out.insert(k.clone(), v.0.clone());
    }
    out
}

/// A secret's `data`, with `stringData` merged over it as the API server would.
pub fn secret_data(secret: &Secret) -> BTreeMap<String, Vec<u8>> {
    let mut out: BTreeMap<String, Vec<u8>> = secret
        .data
        .iter()
        .flatten()
        .map(|(k, v)| (k.clone(), v.0.clone()))
        .collect();
    for (k, v) in secret.string_data.iter().flatten() {
        out.insert(k.clone(), v.clone().into_bytes());
    }
    out
}

/// Projects downwardAPI items from the pod.
pub fn project_downward(
    volume: &str,
    field: &str,
    pod: &Pod,
    items: &[DownwardAPIVolumeFile],
    default_mode: i32,
    node_allocatable: &BTreeMap<String, Quantity>,
    out: &mut Payload,
) -> Result<(), CsiError> {
    let default_mode = check_mode(volume, &format!("{field}.defaultMode"), default_mode)?;
    for (i, item) in items.iter().enumerate() {
        let item_field = format!("{field}.items[{i}]");
        let value = match (&item.field_ref, &item.resource_field_ref) {
            (Some(f), None) => field_value(pod, &f.field_path)
                .map_err(|m| invalid(volume, format!("{item_field}.fieldRef.fieldPath"), m))?,
            (None, Some(r)) => {
                let container = r.container_name.as_deref().unwrap_or_default();
                resource_value(
                    pod,
                    container,
                    &r.resource,
                    r.divisor.as_ref(),
                    node_allocatable,
                )
                .map_err(|m| invalid(volume, format!("{item_field}.resourceFieldRef"), m))?
            }
            _ => {
                return Err(invalid(
                    volume,
                    item_field,
                    "exactly one of fieldRef and resourceFieldRef is required",
                ))
            }
        };
        let mode = match item.mode {
            Some(m) => check_mode(volume, &format!("{item_field}.mode"), m)?,
            None => default_mode,
        };
        add(
            volume,
            &item_field,
            out,
            &item.path,
            value.into_bytes(),
            mode,
        )?;
    }
    Ok(())
}

/// The value of a downward API field path usable in volumes (the node agent's one
/// implementation, [`wharf_core::node::downward`], restricted to volumes).
pub fn field_value(pod: &Pod, path: &str) -> Result<String, String> {
    downward::field_value(
        pod,
        path,
        downward::Use::Volume,
        downward::Addresses::default(),
    )
}

/// A container resource (`limits.cpu`, `requests.memory`, …) divided by `divisor` (default
/// 1), rounded up. An unset limit is the node's allocatable; an unset request is the limit
/// when set, else 0. Resolved by [`wharf_core::node::downward::resource_value`].
pub fn resource_value(
    pod: &Pod,
    container: &str,
    resource: &str,
    divisor: Option<&Quantity>,
    node_allocatable: &BTreeMap<String, Quantity>,
) -> Result<String, String> {
    let spec = pod.spec.as_ref().ok_or("the pod has no spec")?;
    if container.is_empty() {
        return Err("containerName is required in volumes".into());
    }
    let c = spec
        .containers
        .iter()
        .chain(spec.init_containers.iter().flatten())
        .find(|c| c.name == container)
        .ok_or_else(|| format!("no container named {container:?}"))?;
    let allocatable = |name: &str| {
        let q = node_allocatable.get(name)?;
        wharf_core::quantity::resource_value(name, q).ok()
    };
    downward::resource_value(c, resource, divisor, allocatable)
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::{Container, PodSpec, ResourceRequirements};
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

    fn pod() -> Pod {
        Pod {
            metadata: ObjectMeta {
                name: Some("web-0".into()),
                namespace: Some("prod".into()),
                uid: Some("u-1".into()),
                labels: Some(
                    [
                        ("app".to_string(), "web".to_string()),
                        ("tier".to_string(), "a\"b".to_string()),
                    ]
                    .into(),
                ),
                ..Default::default()
            },
            spec: Some(PodSpec {
                containers: vec![Container {
                    name: "main".into(),
                    resources: Some(ResourceRequirements {
                        limits: Some(
                            [
                                ("cpu".to_string(), Quantity("1500m".into())),
                                ("memory".to_string(), Quantity("128Mi".into())),
                            ]
                            .into(),
                        ),
                        requests: Some([("cpu".to_string(), Quantity("250m".into()))].into()),
                        ..Default::default()
                    }),
                    ..Default::default()
                }],
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    #[test]
    fn downward_fields() {
        let p = pod();
        assert_eq!(field_value(&p, "metadata.name").unwrap(), "web-0");
        assert_eq!(
            field_value(&p, "metadata.labels").unwrap(),
            "app=\"web\"\ntier=\"a\\\"b\""
        );
        assert_eq!(field_value(&p, "metadata.labels['app']").unwrap(), "web");
        assert!(field_value(&p, "spec.nodeName").is_err());
    }

    #[test]
    fn resource_fields_round_up_by_divisor() {
        let p = pod();
        let none = BTreeMap::new();
        assert_eq!(
            resource_value(&p, "main", "limits.cpu", None, &none).unwrap(),
            "2"
        );
        assert_eq!(
            resource_value(
                &p,
                "main",
                "limits.cpu",
                Some(&Quantity("1m".into())),
                &none
            )
            .unwrap(),
            "1500"
        );
        assert_eq!(
            resource_value(
                &p,
                "main",
                "requests.cpu",
                Some(&Quantity("1m".into())),
                &none
            )
            .unwrap(),
            "250"
        );
        assert_eq!(
            resource_value(
                &p,
                "main",
                "limits.memory",
                Some(&Quantity("1Mi".into())),
                &none
            )
            .unwrap(),
            "128"
        );
        assert_eq!(
            resource_value(&p, "main", "requests.memory", None, &none).unwrap(),
            "134217728"
        );
        assert!(resource_value(&p, "main", "limits.ephemeral-storage", None, &none).is_err());
        let alloc = BTreeMap::from([("ephemeral-storage".to_string(), Quantity("10Gi".into()))]);
        assert_eq!(
            resource_value(
                &p,
                "main",
                "limits.ephemeral-storage",
                Some(&Quantity("1Gi".into())),
                &alloc
            )
            .unwrap(),
            "10"
        );
    }

    #[test]
    fn items_modes_and_optional_keys() {
        let data = BTreeMap::from([
            ("a".to_string(), b"1".to_vec()),
            ("b".to_string(), b"2".to_vec()),
        ]);
        let mut out = Payload::new();
        project_keys(
            "v",
            "configMap",
            "configmap x",
            &data,
            None,
            0o640,
            false,
            &mut out,
        )
        .unwrap();
        assert_eq!(out.len(), 2);
        assert_eq!(out[&PathBuf::from("a")].mode, 0o640);

        let items = vec![
            KeyToPath {
                key: "a".into(),
                path: "dir/a.txt".into(),
                mode: Some(0o400),
            },
            KeyToPath {
                key: "zzz".into(),
                path: "z".into(),
                mode: None,
            },
        ];
        let mut out = Payload::new();
        let err = project_keys(
            "v",
            "configMap",
            "configmap x",
            &data,
            Some(&items),
            DEFAULT_MODE,
            false,
            &mut out,
        )
        .unwrap_err();
        assert!(err.to_string().contains("zzz"), "{err}");
        let mut out = Payload::new();
        project_keys(
            "v",
            "configMap",
            "configmap x",
            &data,
            Some(&items),
            DEFAULT_MODE,
            true,
            &mut out,
        )
        .unwrap();
        assert_eq!(out.len(), 1);
        assert_eq!(out[&PathBuf::from("dir/a.txt")].mode, 0o400);

        let escaping = vec![KeyToPath {
            key: "a".into(),
            path: "../a".into(),
            mode: None,
        }];
        assert!(project_keys(
            "v",
            "f",
            "o",
            &data,
            Some(&escaping),
            DEFAULT_MODE,
            false,
            &mut Payload::new()
        )
        .is_err());
        assert!(project_keys(
            "v",
            "f",
            "o",
            &data,
            None,
            0o1777,
            false,
            &mut Payload::new()
        )
        .is_err());
    }
}
