//! Loading and checking an OCI bundle (`config.json` + root filesystem).
//!
//! Everything that can be checked without touching the system is checked here, before a
//! single namespace, cgroup or file is created, so bad input leaves nothing behind.

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use oci_spec::runtime::{LinuxNamespaceType, Spec};

use crate::error::{Error, Result};

/// A loaded and checked OCI bundle.
#[derive(Debug, Clone)]
pub struct Bundle {
    /// The bundle directory (absolute).
    pub dir: PathBuf,
    /// The parsed `config.json`.
    pub spec: Spec,
    /// The root filesystem, resolved against the bundle directory.
    pub rootfs: PathBuf,
}

impl Bundle {
    /// Reads `<dir>/config.json` and checks it (see [`Bundle::from_spec`]).
    pub fn load(id: &str, dir: &Path) -> Result<Bundle> {
        let dir = std::path::absolute(dir)
            .map_err(|e| Error::os(id, format!("resolve bundle {}", dir.display()), e))?;
        let path = dir.join("config.json");
        let text = std::fs::read(&path).map_err(|source| Error::ConfigRead {
            path: path.clone(),
            source,
        })?;
        let spec = parse(&path, &text)?;
        Bundle::from_spec(id, &dir, &path, spec)
    }

    /// Checks a spec that came from memory; `dir` anchors a relative `root.path`.
    pub fn from_spec(id: &str, dir: &Path, config: &Path, spec: Spec) -> Result<Bundle> {
        check_id(id)?;
        validate(config, &spec)?;
        let root = spec.root().as_ref().expect("validated");
        let rootfs = if root.path().is_absolute() {
            root.path().clone()
        } else {
            dir.join(root.path())
        };
        if !rootfs.is_dir() {
            return Err(Error::RootfsMissing {
                id: id.to_string(),
                path: rootfs,
            });
        }
        Ok(Bundle {
            dir: dir.to_path_buf(),
            spec,
            rootfs,
        })
    }
}

/// Parses config JSON, naming the failing field's JSON path in the error.
pub fn parse(path: &Path, text: &[u8]) -> Result<Spec> {
    // The common case, a valid config, without the cost of tracking the path; only a
    // failure is parsed again to name the field.
    if let Ok(spec) = serde_json::from_slice(text) {
        return Ok(spec);
    }
    let de = &mut serde_json::Deserializer::from_slice(text);
    let spec = serde_path_to_error::deserialize(&mut *de).map_err(|e| {
        let field = e.path().to_string();
        let inner = e.into_inner();
        if field == "." || inner.is_syntax() || inner.is_eof() {
            Error::ConfigParse {
                path: path.to_path_buf(),
                message: inner.to_string(),
            }
        } else {
            Error::ConfigField {
                path: path.to_path_buf(),
                field,
                message: inner.to_string(),
            }
        }
    })?;
    // A valid document followed by more text (what the fast path refused) gets here.
    de.end().map_err(|e| Error::ConfigParse {
        path: path.to_path_buf(),
        message: e.to_string(),
    })?;
    Ok(spec)
}

/// Checks a container id: what runc accepts, so ids are safe as file names.
pub fn check_id(id: &str) -> Result<()> {
    let ok = !id.is_empty()
        && id.len() <= 1024
        && !id.starts_with('.')
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"_.+-".contains(&b));
    if ok {
        Ok(())
    } else {
        Err(Error::InvalidId(id.to_string()))
    }
}

fn field(path: &Path, field: impl Into<String>, message: impl Into<String>) -> Error {
    Error::ConfigField {
        path: path.to_path_buf(),
        field: field.into(),
        message: message.into(),
    }
}

/// Semantic checks the JSON schema cannot express.
pub fn validate(path: &Path, spec: &Spec) -> Result<()> {
    if spec.root().is_none() {
        return Err(field(
            path,
            "root",
            "missing: the bundle must name its root filesystem",
        ));
    }
    let process = spec
        .process()
        .as_ref()
        .ok_or_else(|| field(path, "process", "missing"))?;
    if process.args().as_ref().is_none_or(|a| a.is_empty()) {
        return Err(field(
            path,
            "process.args",
            "must hold at least the program to run",
        ));
    }
    if !process.cwd().is_absolute() {
        return Err(field(
            path,
            "process.cwd",
            format!("{:?} is not an absolute path", process.cwd()),
        ));
    }
    for (i, m) in spec.mounts().iter().flatten().enumerate() {
        if !m.destination().is_absolute() {
            return Err(field(
                path,
                format!("mounts[{i}].destination"),
                format!("{:?} is not an absolute path", m.destination()),
            ));
        }
    }
    if let Some(linux) = spec.linux() {
        let mut seen = HashSet::new();
        let mut new_user = false;
        for (i, ns) in linux.namespaces().iter().flatten().enumerate() {
            if !seen.insert(ns.typ()) {
                return Err(field(
                    path,
                    format!("linux.namespaces[{i}].type"),
                    format!("namespace {} listed twice", ns.typ()),
                ));
            }
            if ns.typ() == LinuxNamespaceType::Time {
                return Err(field(
                    path,
                    format!("linux.namespaces[{i}].type"),
                    "time namespaces are not supported",
                ));
            }
            if let Some(p) = ns.path() {
                if !p.is_absolute() {
                    return Err(field(
                        path,
                        format!("linux.namespaces[{i}].path"),
                        format!("{p:?} is not an absolute path"),
                    ));
                }
            } else if ns.typ() == LinuxNamespaceType::User {
                new_user = true;
            }
        }
        let has_maps = linux.uid_mappings().as_ref().is_some_and(|m| !m.is_empty())
            && linux.gid_mappings().as_ref().is_some_and(|m| !m.is_empty());
        if new_user && !has_maps {
            return Err(field(
                path,
                "linux.uidMappings",
                "a new user namespace needs uidMappings and gidMappings",
            ));
        }
        if let Some(cg) = linux.cgroups_path() {
            if cg.to_string_lossy().contains(':') {
                return Err(field(
                    path,
                    "linux.cgroupsPath",
                    "systemd cgroup paths (slice:prefix:name) are not supported; use a path",
                ));
            }
            if cg
                .components()
                .any(|c| c == std::path::Component::ParentDir)
            {
                return Err(field(path, "linux.cgroupsPath", "must not contain '..'"));
            }
        }
    }
    Ok(())
}

/// The default config `wharf-runc spec` writes: runc's defaults (oci-spec's
/// `Spec::default`), hostname `wharf`, running `sh` on a terminal.
pub fn default_spec() -> Spec {
    let mut spec = Spec::default();
    spec.set_hostname(Some("wharf".into()));
    if let Some(p) = spec.process_mut() {
        p.set_terminal(Some(true));
        p.set_args(Some(vec!["sh".into()]));
    }
    spec
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trailing_text_after_the_config_is_a_parse_error() {
        let path = Path::new("/b/config.json");
        let mut text = serde_json::to_vec(&Spec::default()).unwrap();
        assert!(parse(path, &text).is_ok());
        text.extend_from_slice(b" {}");
        let err = parse(path, &text).unwrap_err();
        assert!(matches!(err, Error::ConfigParse { .. }), "{err}");
        assert!(err.to_string().contains("trailing"), "{err}");
    }

    fn err(json: &str) -> String {
        parse(Path::new("/b/config.json"), json.as_bytes())
            .unwrap_err()
            .to_string()
    }

    #[test]
    fn unknown_namespace_names_the_field() {
        let msg = err(
            r#"{"ociVersion":"1.0.2","root":{"path":"rootfs"},"process":{"cwd":"/","user":{"uid":0,"gid":0},"args":["x"]},"linux":{"namespaces":[{"type":"pid"},{"type":"bogus"}]}}"#,
        );
        assert!(msg.contains("linux.namespaces[1].type"), "{msg}");
        assert!(msg.contains("/b/config.json"), "{msg}");
    }

    #[test]
    fn syntax_error_names_line() {
        let msg = err("{\"ociVersion\": ");
        assert!(msg.contains("line 1"), "{msg}");
    }

    #[test]
    fn relative_cwd_rejected() {
        let mut spec = default_spec();
        spec.process_mut().as_mut().unwrap().set_cwd("rel".into());
        let msg = validate(Path::new("c.json"), &spec)
            .unwrap_err()
            .to_string();
        assert!(msg.contains("process.cwd"), "{msg}");
    }

    #[test]
    fn ids() {
        assert!(check_id("abc-1.2_x+").is_ok());
        for bad in ["", ".x", "a/b", "a b", "../x"] {
            assert!(check_id(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn default_spec_is_valid() {
        validate(Path::new("c.json"), &default_spec()).unwrap();
    }
}
