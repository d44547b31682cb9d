//! What can go wrong while loading a manifest, and where: every error names the source, the
//! document, the object when it is known, the line and column when they are known, and the
//! field path.

use std::fmt;
use std::path::PathBuf;

/// Where in a manifest something is: source, document, List item, object, line and column.
///
/// Displays as `deploy.yaml:14:32: document 2 (Deployment "web")`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Origin {
    /// The file path, or the name the caller gave to an in-memory text.
    pub source: String,
    /// The document in the source, counting from 1 (documents that are empty are skipped,
    /// as `kubectl` does). `None` when the error concerns the whole source.
    pub document: Option<usize>,
    /// The index in `items` when the document is a `List`.
    pub item: Option<usize>,
    /// The object's kind, when known.
    pub kind: Option<String>,
    /// The object's name, when known.
    pub name: Option<String>,
    /// Line, counting from 1, when known.
    pub line: Option<u64>,
    /// Column, counting from 1, when known.
    pub column: Option<u64>,
}

impl Origin {
    /// An origin that names only the source.
    pub fn source(source: impl Into<String>) -> Origin {
        Origin {
            source: source.into(),
            ..Origin::default()
        }
    }

    /// This origin at a position, boxed for an error.
    pub(crate) fn at(&self, position: Option<(u64, u64)>) -> Box<Origin> {
        let mut origin = Box::new(self.clone());
        if let Some((line, column)) = position {
            origin.line = Some(line);
            origin.column = Some(column);
        }
        origin
    }
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.source)?;
        if let Some(line) = self.line {
            write!(f, ":{line}")?;
            if let Some(column) = self.column {
                write!(f, ":{column}")?;
            }
        }
        if let Some(document) = self.document {
            write!(f, ": document {document}")?;
        }
        if let Some(item) = self.item {
            write!(f, ", items[{item}]")?;
        }
        match (&self.kind, &self.name) {
            (Some(kind), Some(name)) => write!(f, " ({kind} {name:?})"),
            (Some(kind), None) => write!(f, " ({kind})"),
            (None, Some(name)) => write!(f, " ({name:?})"),
            (None, None) => Ok(()),
        }
    }
}

/// A manifest that could not be loaded or validated.
#[derive(Debug, thiserror::Error)]
pub enum ManifestError {
    /// The file or directory could not be read.
    #[error("{}: {source}", path.display())]
    Io {
        /// The path being read.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// The text is not valid YAML or JSON.
    #[error("{origin}: syntax error: {message}")]
    Syntax {
        /// Where the parser stopped.
        origin: Box<Origin>,
        /// What the parser expected.
        message: String,
    },
    /// No kind with this `apiVersion` and `kind` is known.
    #[error("{origin}: unknown kind {kind:?} in apiVersion {api_version:?}{hint}")]
    UnknownKind {
        /// The document.
        origin: Box<Origin>,
        /// The document's `apiVersion`.
        api_version: String,
        /// The document's `kind`.
        kind: String,
        /// A hint naming the apiVersion under which the kind is known, or empty.
        hint: String,
    },
    /// A field has a value of the wrong type.
    #[error("{origin}: {field}: {message}")]
    WrongType {
        /// The document, with the line and column of the value.
        origin: Box<Origin>,
        /// The JSON path of the field, e.g. `spec.template.spec.containers[0].ports[0].containerPort`.
        field: String,
        /// What was expected and what was found.
        message: String,
    },
    /// A required field is missing.
    #[error("{origin}: {field}: required field is missing")]
    MissingField {
        /// The document, with the line and column of the object that lacks the field.
        origin: Box<Origin>,
        /// The JSON path of the missing field, e.g. `spec.selector`.
        field: String,
    },
    /// A field has a value Kubernetes rejects (a bad name, a selector that does not match
    /// the template, a port out of range, ...).
    #[error("{origin}: {field}: {message}")]
    Invalid {
        /// The document, with the line and column of the field when known.
        origin: Box<Origin>,
        /// The JSON path of the field.
        field: String,
        /// What is wrong and what is allowed.
        message: String,
    },
    /// The store refused a write while applying; the writes of the same apply were undone.
    #[error("applying {object}: {source}")]
    Store {
        /// `Kind namespace/name` of the object.
        object: String,
        /// What the store said.
        #[source]
        source: Box<crate::store::StoreError>,
    },
    /// Several errors: every object of the source was checked, and these failed.
    #[error("{}", join(.0))]
    Many(Vec<ManifestError>),
}

fn join(errors: &[ManifestError]) -> String {
    let mut text = format!("{} errors:", errors.len());
    for e in errors {
        text.push_str("\n  ");
        text.push_str(&e.to_string());
    }
    text
}

impl ManifestError {
    /// The errors inside: itself, or each error of a [`ManifestError::Many`].
    pub fn errors(&self) -> Vec<&ManifestError> {
        match self {
            ManifestError::Many(all) => all.iter().flat_map(ManifestError::errors).collect(),
            other => vec![other],
        }
    }

    /// Where the error is, when it concerns a document.
    pub fn origin(&self) -> Option<&Origin> {
        match self {
            ManifestError::Syntax { origin, .. }
            | ManifestError::UnknownKind { origin, .. }
            | ManifestError::WrongType { origin, .. }
            | ManifestError::MissingField { origin, .. }
            | ManifestError::Invalid { origin, .. } => Some(origin),
            ManifestError::Io { .. } | ManifestError::Store { .. } | ManifestError::Many(_) => None,
        }
    }

    /// The JSON path of the field concerned, when there is one.
    pub fn field(&self) -> Option<&str> {
        match self {
            ManifestError::WrongType { field, .. }
            | ManifestError::MissingField { field, .. }
            | ManifestError::Invalid { field, .. } => Some(field),
            _ => None,
        }
    }

    /// One error from many: `None` for none, the error itself for one, `Many` otherwise.
    pub(crate) fn from_list(mut errors: Vec<ManifestError>) -> Option<ManifestError> {
        match errors.len() {
            0 => None,
            1 => errors.pop(),
            _ => Some(ManifestError::Many(errors)),
        }
    }
}

/// Something Kubernetes accepts but warns about, such as an unknown field (dropped).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Warning {
    /// The document.
    pub origin: Origin,
    /// The JSON path of the field.
    pub field: String,
    /// What happened.
    pub message: String,
}

impl fmt::Display for Warning {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}: {}", self.origin, self.field, self.message)
    }
}
