//! Manifests: YAML and JSON files of Kubernetes objects, loaded into typed [`Object`]s with
//! Kubernetes defaulting and validation, and applied to a [`Store`](crate::store::Store)
//! like `kubectl apply`.
//!
//! Loading goes through four steps, each with errors that point into the file:
//! 1. parse: the text is split into documents (`---`), each kept with the line and column
//!    of every node ([`ManifestError::Syntax`] names where the parser stopped);
//! 2. decode: `apiVersion`/`kind` choose the type (a built-in kind, or a [`CustomKind`]
//!    registered on the [`Loader`]); a `List` is unpacked into its `items`. A value of the
//!    wrong type or a missing required field is an error naming its JSON path
//!    (`spec.template.spec.containers[0].ports[0].containerPort`) and position; a field the
//!    type does not have is dropped with a [`Warning`], as Kubernetes does;
//! 3. default: [`apply_defaults`] fills what the API server's defaulting fills;
//! 4. validate: [`validate()`] checks names, selectors, ports, policies.
//!
//! Every document of a source is checked before any object is returned: a source loads
//! whole or not at all, and the error lists every problem found.
//!
//! ```
//! let text = "
//! apiVersion: v1
//! kind: Service
//! metadata: {name: web}
//! spec:
//!   selector: {app: web}
//!   ports: [{port: 80}]
//! ";
//! let manifest = wharf_core::manifest::load_str(text, "web.yaml").unwrap();
//! let service = manifest.objects().next().unwrap();
//! assert_eq!(service.namespace(), Some("default"));
//! assert_eq!(service.to_json()["spec"]["type"], "ClusterIP");
//! ```

mod apply;
mod decode;
pub mod defaults;
mod document;
mod error;
pub mod validate;

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

use serde_json::Value;

pub use apply::{apply, apply_manifest, Applied, ApplyAction, LAST_APPLIED_ANNOTATION};
pub use defaults::apply_defaults;
pub use error::{ManifestError, Origin, Warning};
pub use validate::{validate, FieldError};

use crate::object::{CustomKind, Kind, Object};
use document::Positions;

/// The objects of a source, in document order, and the warnings met while loading them.
#[derive(Clone, Debug, Default)]
pub struct Manifest {
    /// The objects, defaulted and validated.
    pub items: Vec<Item>,
    /// Fields Kubernetes would drop (unknown fields) and similar non-fatal findings.
    pub warnings: Vec<Warning>,
}

/// One object of a manifest.
#[derive(Clone, Debug)]
pub struct Item {
    /// The object with defaults applied.
    pub object: Object,
    /// The object as written (typed, not defaulted): what `apply` records as the last
    /// applied configuration, so that a field left out keeps a value others set.
    pub written: Object,
    /// Where it came from.
    pub origin: Origin,
}

impl Manifest {
    /// The defaulted objects.
    pub fn objects(&self) -> impl Iterator<Item = &Object> {
        self.items.iter().map(|i| &i.object)
    }

    /// The defaulted objects, owned.
    pub fn into_objects(self) -> Vec<Object> {
        self.items.into_iter().map(|i| i.object).collect()
    }

    fn extend(&mut self, other: Manifest) {
        self.items.extend(other.items);
        self.warnings.extend(other.warnings);
    }
}

/// Loads manifests, knowing the built-in kinds and any registered custom kinds.
#[derive(Clone, Debug)]
pub struct Loader {
    custom: HashMap<(String, String), Arc<CustomKind>>,
    namespace: String,
}

impl Default for Loader {
    fn default() -> Loader {
        Loader {
            custom: HashMap::new(),
            namespace: defaults::DEFAULT_NAMESPACE.to_string(),
        }
    }
}

/// Loads `text` (YAML or JSON, one or more documents) with the built-in kinds.
/// `source` names the text in errors (a file name, `<stdin>`, ...).
pub fn load_str(text: &str, source: &str) -> Result<Manifest, ManifestError> {
    Loader::default().load_str(text, source)
}

/// Loads a manifest file with the built-in kinds.
pub fn load_file(path: impl AsRef<Path>) -> Result<Manifest, ManifestError> {
    Loader::default().load_file(path)
}

/// Loads every `.yaml`, `.yml` and `.json` file of a directory (not recursive, in name
/// order) with the built-in kinds. All files load, or none.
pub fn load_dir(path: impl AsRef<Path>) -> Result<Manifest, ManifestError> {
    Loader::default().load_dir(path)
}

impl Loader {
    /// A loader for the built-in kinds, defaulting namespaces to `default`.
    pub fn new() -> Loader {
        Loader::default()
    }

    /// Registers a custom kind: its documents load as [`Object::Custom`].
    pub fn register(mut self, kind: CustomKind) -> Loader {
        self.custom.insert(
            (kind.api_version.clone(), kind.kind.clone()),
            Arc::new(kind),
        );
        self
    }

    /// The namespace given to namespaced objects that name none (`default` unless set).
    pub fn default_namespace(mut self, namespace: impl Into<String>) -> Loader {
        self.namespace = namespace.into();
        self
    }

    /// The kind with this apiVersion and kind: built-in or registered.
    pub fn kind(&self, api_version: &str, kind: &str) -> Option<Kind> {
        Kind::builtin(api_version, kind).or_else(|| {
            self.custom
                .get(&(api_version.to_string(), kind.to_string()))
                .map(|c| Kind::Custom(c.clone()))
        })
    }

    /// Loads `text`; `source` names it in errors.
    pub fn load_str(&self, text: &str, source: &str) -> Result<Manifest, ManifestError> {
        let documents = document::parse(text, source)?;
        let mut manifest = Manifest::default();
        let mut errors = Vec::new();
        for doc in documents {
            let origin = Origin {
                source: source.to_string(),
                document: Some(doc.index),
                ..Origin::default()
            };
            self.load_value(
                doc.value,
                origin,
                &doc.positions,
                &mut manifest,
                &mut errors,
            );
        }
        match ManifestError::from_list(errors) {
            Some(e) => Err(e),
            None => Ok(manifest),
        }
    }

    /// Loads a file.
    pub fn load_file(&self, path: impl AsRef<Path>) -> Result<Manifest, ManifestError> {
        let path = path.as_ref();
        let text = std::fs::read_to_string(path).map_err(|source| ManifestError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        self.load_str(&text, &path.display().to_string())
    }

    /// Loads every `.yaml`, `.yml` and `.json` file of a directory, in name order. Every
    /// file is checked; all load or none does.
    pub fn load_dir(&self, path: impl AsRef<Path>) -> Result<Manifest, ManifestError> {
        let path = path.as_ref();
        let io = |source| ManifestError::Io {
            path: path.to_path_buf(),
            source,
        };
        let mut files = Vec::new();
        for entry in std::fs::read_dir(path).map_err(io)? {
            let file = entry.map_err(io)?.path();
            let manifest_ext = file
                .extension()
                .and_then(|e| e.to_str())
                .is_some_and(|e| matches!(e, "yaml" | "yml" | "json"));
            if manifest_ext && file.is_file() {
                files.push(file);
            }
        }
        files.sort();
        let mut manifest = Manifest::default();
        let mut errors = Vec::new();
        for file in files {
            match self.load_file(&file) {
                Ok(m) => manifest.extend(m),
                Err(ManifestError::Many(list)) => errors.extend(list),
                Err(e) => errors.push(e),
            }
        }
        match ManifestError::from_list(errors) {
            Some(e) => Err(e),
            None => Ok(manifest),
        }
    }

    fn load_value(
        &self,
        mut value: Value,
        mut origin: Origin,
        positions: &Positions,
        out: &mut Manifest,
        errors: &mut Vec<ManifestError>,
    ) {
        let Some(map) = value.as_object() else {
            errors.push(ManifestError::WrongType {
                origin: origin.at(positions.lookup("")),
                field: "(root)".into(),
                message: format!(
                    "expected an object with apiVersion and kind, found {}",
                    json_type(&value)
                ),
            });
            return;
        };
        let api_version = map
            .get("apiVersion")
            .and_then(Value::as_str)
            .map(str::to_owned);
        let kind_name = map.get("kind").and_then(Value::as_str).map(str::to_owned);
        origin.kind = kind_name.clone();
        origin.name = map
            .get("metadata")
            .and_then(|m| m.get("name"))
            .and_then(Value::as_str)
            .map(str::to_owned);
        let (Some(api_version), Some(kind_name)) = (api_version, kind_name) else {
            for field in ["apiVersion", "kind"] {
                match map.get(field) {
                    None | Some(Value::Null) => errors.push(ManifestError::MissingField {
                        origin: origin.at(positions.lookup("")),
                        field: field.into(),
                    }),
                    Some(Value::String(_)) => {}
                    Some(other) => errors.push(ManifestError::WrongType {
                        origin: origin.at(positions.lookup(field)),
                        field: field.into(),
                        message: format!("expected a string, found {}", json_type(other)),
                    }),
                }
            }
            return;
        };
        let Some(kind) = self.kind(&api_version, &kind_name) else {
            if let Some(Value::Array(items)) =
                map.get("items").filter(|_| kind_name.ends_with("List"))
            {
                for (i, item) in items.clone().into_iter().enumerate() {
                    let item_origin = Origin {
                        item: Some(i),
                        kind: None,
                        name: None,
                        ..origin.clone()
                    };
                    let item_positions = positions.subtree(&format!("items[{i}]"));
                    self.load_value(item, item_origin, &item_positions, out, errors);
                }
                return;
            }
            errors.push(ManifestError::UnknownKind {
                origin: origin.at(positions.lookup("kind")),
                hint: self.hint(&kind_name),
                api_version,
                kind: kind_name,
            });
            return;
        };

        let mut written = match decode::decode(&kind, &mut value, &origin, positions) {
            Ok(object) => object,
            Err(e) => return errors.push(e),
        };
        let decoded = written.to_json();
        if !matches!(written, Object::Custom(_)) {
            let missing = decode::missing_fields(&value, &decoded);
            if !missing.is_empty() {
                errors.extend(missing.into_iter().map(|field| {
                    let parent = field.rsplit_once('.').map_or("", |(p, _)| p);
                    ManifestError::MissingField {
                        origin: origin.at(positions.lookup(parent)),
                        field,
                    }
                }));
                return;
            }
        }
        decode::unknown_fields(&value, &decoded, &origin, &mut out.warnings);

        // Custom kinds are not known to `apply_defaults`: their scope comes from the registry.
        let meta = written.meta_mut();
        let has_namespace = !meta.namespace.as_deref().unwrap_or("").is_empty();
        if kind.is_namespaced() && !has_namespace {
            meta.namespace = Some(self.namespace.clone());
        } else if !kind.is_namespaced() && has_namespace {
            out.warnings.push(Warning {
                origin: *origin.at(positions.lookup("metadata.namespace")),
                field: "metadata.namespace".into(),
                message: format!("{kind} is cluster-scoped: the namespace is ignored"),
            });
            meta.namespace = None;
        }
        let mut object = written.clone();
        apply_defaults(&mut object);
        let invalid = validate(&object);
        if !invalid.is_empty() {
            errors.extend(invalid.into_iter().map(|e| ManifestError::Invalid {
                origin: origin.at(positions.lookup(&e.field)),
                field: e.field,
                message: e.message,
            }));
            return;
        }
        out.items.push(Item {
            object,
            written,
            origin,
        });
    }

    /// "; Deployment is served as apiVersion apps/v1" when the kind exists elsewhere.
    fn hint(&self, kind: &str) -> String {
        let mut versions: Vec<String> = Kind::BUILTIN
            .iter()
            .filter(|k| k.name() == kind)
            .map(|k| k.api_version().to_string())
            .chain(
                self.custom
                    .values()
                    .filter(|c| c.kind == kind)
                    .map(|c| c.api_version.clone()),
            )
            .collect();
        versions.sort();
        match versions.as_slice() {
            [] => String::new(),
            v => format!("; {kind} is served as apiVersion {}", v.join(" or ")),
        }
    }
}

fn json_type(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "a list",
        Value::Object(_) => "an object",
    }
}
