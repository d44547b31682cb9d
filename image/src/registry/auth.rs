//! Registry authentication: `WWW-Authenticate` challenges, bearer tokens, Docker
//! `config.json` credentials.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use base64::Engine as _;
use serde::Deserialize;

use crate::error::{ImageError, Result};

/// Credentials for one registry.
#[derive(Clone, PartialEq, Eq)]
pub enum RegistryAuth {
    /// User name and password (sent as Basic, or to the token service).
    Basic {
        /// User name.
        username: String,
        /// Password or personal access token.
        password: String,
    },
    /// A bearer token used as is.
    Bearer(String),
}

impl std::fmt::Debug for RegistryAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print secrets.
        match self {
            RegistryAuth::Basic { username, .. } => write!(f, "Basic({username}, ***)"),
            RegistryAuth::Bearer(_) => write!(f, "Bearer(***)"),
        }
    }
}

impl RegistryAuth {
    /// The `Authorization: Basic` value.
    pub fn basic_header(username: &str, password: &str) -> String {
        let raw = format!("{username}:{password}");
        format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode(raw)
        )
    }
}

/// A parsed `WWW-Authenticate` challenge.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Challenge {
    /// `Bearer` or `Basic` (lowercased).
    pub scheme: String,
    /// Its parameters (`realm`, `service`, `scope`, ...), names lowercased.
    pub params: BTreeMap<String, String>,
}

impl Challenge {
    /// Parses the first challenge of a `WWW-Authenticate` header value.
    pub fn parse(header: &str) -> Option<Challenge> {
        let header = header.trim();
        let (scheme, mut rest) = match header.split_once(char::is_whitespace) {
            Some((s, r)) => (s, r.trim_start()),
            None => (header, ""),
        };
        if scheme.is_empty() {
            return None;
        }
        let mut params = BTreeMap::new();
        while !rest.is_empty() {
            let (key, after) = rest.split_once('=')?;
            let key = key
                .trim()
                .trim_start_matches(',')
                .trim()
                .to_ascii_lowercase();
            let after = after.trim_start();
            let (value, next) = if let Some(q) = after.strip_prefix('"') {
                // Quoted string with backslash escapes.
                let mut v = String::new();
                let mut chars = q.char_indices();
                let mut end = None;
                while let Some((i, c)) = chars.next() {
                    match c {
                        '\\' => {
                            if let Some((_, n)) = chars.next() {
                                v.push(n);
                            }
                        }
                        '"' => {
                            end = Some(i + 1);
                            break;
                        }
                        c => v.push(c),
                    }
                }
                (v, &q[end?..])
            } else {
                let end = after.find(',').unwrap_or(after.len());
                (after[..end].trim().to_string(), &after[end..])
            };
            params.insert(key, value);
            rest = next.trim_start().trim_start_matches(',').trim_start();
        }
        Some(Challenge {
            scheme: scheme.to_ascii_lowercase(),
            params,
        })
    }
}

/// A token service's answer.
#[derive(Deserialize)]
pub(crate) struct TokenResponse {
    pub token: Option<String>,
    pub access_token: Option<String>,
}

/// Reads the `auths` of a Docker `config.json` (`auth` = base64 `user:password`, or
/// `username`/`password`, or `identitytoken`, which is used as a bearer token).
/// Credential helpers (`credsStore`, `credHelpers`) are not run.
pub fn load_docker_config(path: &Path) -> Result<BTreeMap<String, RegistryAuth>> {
    let bad = |reason: String| ImageError::Credentials {
        path: path.to_path_buf(),
        reason,
    };
    let bytes = std::fs::read(path).map_err(|e| bad(e.to_string()))?;
    #[derive(Deserialize)]
    struct File {
        #[serde(default)]
        auths: BTreeMap<String, Entry>,
    }
    #[derive(Deserialize)]
    struct Entry {
        auth: Option<String>,
        username: Option<String>,
        password: Option<String>,
        identitytoken: Option<String>,
    }
    let f: File = serde_json::from_slice(&bytes).map_err(|e| bad(e.to_string()))?;
    let mut out = BTreeMap::new();
    for (key, e) in f.auths {
        let host = registry_key(&key);
        let auth = if let Some(tok) = e.identitytoken.filter(|t| !t.is_empty()) {
            RegistryAuth::Bearer(tok)
        } else if let Some(a) = e.auth.filter(|a| !a.is_empty()) {
            let raw = base64::engine::general_purpose::STANDARD
                .decode(a.trim())
                .map_err(|err| bad(format!("auths.{key}.auth: {err}")))?;
            let raw =
                String::from_utf8(raw).map_err(|err| bad(format!("auths.{key}.auth: {err}")))?;
            let (u, p) = raw.split_once(':').ok_or_else(|| {
                bad(format!(
                    "auths.{key}.auth: expected base64 of user:password"
                ))
            })?;
            RegistryAuth::Basic {
                username: u.to_string(),
                password: p.to_string(),
            }
        } else if let (Some(u), Some(p)) = (e.username, e.password) {
            RegistryAuth::Basic {
                username: u,
                password: p,
            }
        } else {
            continue;
        };
        out.insert(host, auth);
    }
    Ok(out)
}

/// The default `config.json`: `$DOCKER_CONFIG/config.json`, else `~/.docker/config.json`.
pub fn default_docker_config() -> Option<PathBuf> {
    if let Some(d) = std::env::var_os("DOCKER_CONFIG") {
        return Some(PathBuf::from(d).join("config.json"));
    }
    std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".docker").join("config.json"))
}

/// config.json keys may be URLs (`https://host/v1/`); the registry is the host part.
/// Docker Hub's legacy keys map to `docker.io`.
fn registry_key(key: &str) -> String {
    let k = key
        .trim_start_matches("https://")
        .trim_start_matches("http://");
    let host = k.split('/').next().unwrap_or(k);
    match host {
        "index.docker.io" => crate::reference::DEFAULT_REGISTRY.to_string(),
        h => h.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn challenges() {
        let c = Challenge::parse(
            r#"Bearer realm="https://auth.example/token",service="reg.example",scope="repository:a/b:pull,push""#,
        )
        .unwrap();
        assert_eq!(c.scheme, "bearer");
        assert_eq!(c.params["realm"], "https://auth.example/token");
        assert_eq!(c.params["scope"], "repository:a/b:pull,push");
        let c = Challenge::parse(r#"Basic realm="Registry Realm""#).unwrap();
        assert_eq!(c.scheme, "basic");
        assert_eq!(c.params["realm"], "Registry Realm");
        let c = Challenge::parse(r#"Bearer realm=http://x/t, service = "s\"q""#).unwrap();
        assert_eq!(c.params["realm"], "http://x/t");
        assert_eq!(c.params["service"], "s\"q");
        assert_eq!(Challenge::parse("").map(|c| c.scheme), None);
    }

    #[test]
    fn docker_config() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("config.json");
        let auth = base64::engine::general_purpose::STANDARD.encode("alice:s3cret:with:colons");
        std::fs::write(
            &p,
            format!(
                r#"{{"auths":{{"https://index.docker.io/v1/":{{"auth":"{auth}"}},"127.0.0.1:5000":{{"username":"bob","password":"pw"}},"tok.example":{{"identitytoken":"T"}},"empty.example":{{}}}},"credsStore":"desktop"}}"#
            ),
        )
        .unwrap();
        let m = load_docker_config(&p).unwrap();
        assert_eq!(
            m["docker.io"],
            RegistryAuth::Basic {
                username: "alice".into(),
                password: "s3cret:with:colons".into()
            }
        );
        assert_eq!(
            m["127.0.0.1:5000"],
            RegistryAuth::Basic {
                username: "bob".into(),
                password: "pw".into()
            }
        );
        assert_eq!(m["tok.example"], RegistryAuth::Bearer("T".into()));
        assert!(!m.contains_key("empty.example"));
        std::fs::write(&p, r#"{"auths":{"x":{"auth":"!!"}}}"#).unwrap();
        assert!(matches!(
            load_docker_config(&p),
            Err(ImageError::Credentials { .. })
        ));
    }
}
