//! An HTTP client for the OCI distribution API (Docker Registry v2): the challenge/token
//! dance, manifest and blob GETs, registry error messages.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Mutex;

use reqwest::header::{HeaderValue, ACCEPT, AUTHORIZATION, WWW_AUTHENTICATE};
use reqwest::{Response, StatusCode};

use super::auth::{Challenge, RegistryAuth, TokenResponse};
use crate::digest::Digest;
use crate::error::{ImageError, Result};
use crate::reference::Reference;
use crate::spec::media;

/// The largest manifest or index accepted (the distribution spec suggests 4 MiB).
pub const MAX_MANIFEST_BYTES: usize = 4 * 1024 * 1024;

/// How to reach registries.
#[derive(Clone, Debug)]
pub struct RegistryConfig {
    /// Registries (`host[:port]`) that may be spoken to over plain HTTP. No other is.
    pub insecure: BTreeSet<String>,
    /// Where a registry's API lives when not at `https://<registry>` (e.g. a mirror, or
    /// the API host of a registry whose name differs): registry → base URL.
    pub endpoints: BTreeMap<String, String>,
    /// Credentials by registry (`docker.io`, `host:port`), e.g. from
    /// [`super::load_docker_config`].
    pub credentials: BTreeMap<String, RegistryAuth>,
    /// Layers downloaded at once per pull (Docker's default is 3).
    pub max_concurrent_downloads: usize,
    /// The User-Agent header.
    pub user_agent: String,
}

impl Default for RegistryConfig {
    fn default() -> Self {
        RegistryConfig {
            insecure: BTreeSet::new(),
            endpoints: BTreeMap::new(),
            credentials: BTreeMap::new(),
            max_concurrent_downloads: 3,
            user_agent: concat!("wharf-image/", env!("CARGO_PKG_VERSION")).to_string(),
        }
    }
}

/// A registry client with a token cache; cheap to share.
pub struct RegistryClient {
    http: reqwest::Client,
    config: RegistryConfig,
    /// (registry, scope) → the Authorization header that worked.
    auth_cache: Mutex<HashMap<(String, String), HeaderValue>>,
}

impl RegistryClient {
    /// A client with `config`.
    pub fn new(config: RegistryConfig) -> Result<RegistryClient> {
        let http = reqwest::Client::builder()
            .user_agent(config.user_agent.clone())
            .build()
            .map_err(|e| ImageError::Registry {
                registry: String::new(),
                op: "build HTTP client".into(),
                reason: e.to_string(),
            })?;
        Ok(RegistryClient {
            http,
            config,
            auth_cache: Mutex::new(HashMap::new()),
        })
    }

    /// The configuration.
    pub fn config(&self) -> &RegistryConfig {
        &self.config
    }

    fn base_url(&self, registry: &str) -> Result<String> {
        let insecure = self.config.insecure.contains(registry);
        let url = match self.config.endpoints.get(registry) {
            Some(u) => u.trim_end_matches('/').to_string(),
            None if insecure => format!("http://{registry}"),
            None => format!("https://{registry}"),
        };
        if url.starts_with("http://") && !insecure {
            return Err(ImageError::InsecureNotAllowed(registry.to_string()));
        }
        Ok(url)
    }

    fn registry_err(r: &Reference, op: &str, reason: impl std::fmt::Display) -> ImageError {
        ImageError::Registry {
            registry: r.registry().to_string(),
            op: op.to_string(),
            reason: reason.to_string(),
        }
    }

    /// GET `/v2/<repo>/<path>`, answering an authentication challenge once.
    async fn get(
        &self,
        r: &Reference,
        path: &str,
        accept: Option<&str>,
        creds: Option<&RegistryAuth>,
    ) -> Result<Response> {
        let url = format!(
            "{}/v2/{}/{path}",
            self.base_url(r.registry())?,
            r.repository()
        );
        let op = format!("GET {url}");
        let scope = format!("repository:{}:pull", r.repository());
        let key = (r.registry().to_string(), scope.clone());
        let creds = creds.or_else(|| self.config.credentials.get(r.registry()));
        let mut auth = self
            .auth_cache
            .lock()
            .expect("auth cache")
            .get(&key)
            .cloned();
        if auth.is_none() {
            if let Some(RegistryAuth::Bearer(t)) = creds {
                auth = HeaderValue::from_str(&format!("Bearer {t}")).ok();
            }
        }
        for attempt in 0..2 {
            let mut req = self.http.get(&url);
            if let Some(a) = accept {
                req = req.header(ACCEPT, a);
            }
            if let Some(a) = &auth {
                req = req.header(AUTHORIZATION, a.clone());
            }
            let resp = req
                .send()
                .await
                .map_err(|e| Self::registry_err(r, &op, e))?;
            if resp.status() != StatusCode::UNAUTHORIZED {
                if let Some(a) = auth {
                    self.auth_cache.lock().expect("auth cache").insert(key, a);
                }
                return check_status(r, &op, resp).await;
            }
            let unauthorized = |reason: String| ImageError::Unauthorized {
                registry: r.registry().to_string(),
                scope: scope.clone(),
                reason,
            };
            if attempt == 1 {
                return Err(unauthorized(registry_message(resp).await));
            }
            let challenge = resp
                .headers()
                .get(WWW_AUTHENTICATE)
                .and_then(|v| v.to_str().ok())
                .and_then(Challenge::parse)
                .ok_or_else(|| {
                    unauthorized("401 without a usable WWW-Authenticate challenge".into())
                })?;
            auth = Some(match challenge.scheme.as_str() {
                "bearer" => self.fetch_token(r, &challenge, &scope, creds).await?,
                "basic" => match creds {
                    Some(RegistryAuth::Basic { username, password }) => {
                        HeaderValue::from_str(&RegistryAuth::basic_header(username, password))
                            .map_err(|e| unauthorized(e.to_string()))?
                    }
                    _ => {
                        return Err(unauthorized(
                            "the registry wants Basic credentials and none are configured".into(),
                        ))
                    }
                },
                other => return Err(unauthorized(format!("unsupported auth scheme {other:?}"))),
            });
        }
        unreachable!("the loop returns on its second attempt")
    }

    async fn fetch_token(
        &self,
        r: &Reference,
        ch: &Challenge,
        scope: &str,
        creds: Option<&RegistryAuth>,
    ) -> Result<HeaderValue> {
        let realm = ch
            .params
            .get("realm")
            .ok_or_else(|| ImageError::Unauthorized {
                registry: r.registry().to_string(),
                scope: scope.to_string(),
                reason: "bearer challenge without realm".into(),
            })?;
        let op = format!("token from {realm}");
        if realm.starts_with("http://") {
            // A token realm over plain HTTP is acceptable only for a registry the user
            // allowed plain HTTP for.
            if !self.config.insecure.contains(r.registry()) {
                return Err(ImageError::InsecureNotAllowed(realm.clone()));
            }
        }
        let mut query: Vec<(&str, &str)> = Vec::new();
        if let Some(s) = ch.params.get("service") {
            query.push(("service", s));
        }
        query.push((
            "scope",
            ch.params.get("scope").map_or(scope, String::as_str),
        ));
        let mut req = self.http.get(realm).query(&query);
        if let Some(RegistryAuth::Basic { username, password }) = creds {
            req = req.basic_auth(username, Some(password));
        }
        let resp = req
            .send()
            .await
            .map_err(|e| Self::registry_err(r, &op, e))?;
        if resp.status() == StatusCode::UNAUTHORIZED || resp.status() == StatusCode::FORBIDDEN {
            return Err(ImageError::Unauthorized {
                registry: r.registry().to_string(),
                scope: scope.to_string(),
                reason: format!("token service: {}", registry_message(resp).await),
            });
        }
        let resp = check_status(r, &op, resp).await?;
        let body = resp
            .bytes()
            .await
            .map_err(|e| Self::registry_err(r, &op, e))?;
        let t: TokenResponse =
            serde_json::from_slice(&body).map_err(|e| Self::registry_err(r, &op, e))?;
        let token = t
            .token
            .or(t.access_token)
            .filter(|t| !t.is_empty())
            .ok_or_else(|| Self::registry_err(r, &op, "no token in the answer"))?;
        HeaderValue::from_str(&format!("Bearer {token}")).map_err(|e| Self::registry_err(r, &op, e))
    }

    /// Fetches a manifest or index by tag or digest (`what`), verified against the digest
    /// when one was asked for or announced. Returns bytes, media type and digest.
    pub async fn fetch_manifest(
        &self,
        r: &Reference,
        what: &str,
        creds: Option<&RegistryAuth>,
    ) -> Result<(Vec<u8>, String, Digest)> {
        let accept = [
            media::OCI_MANIFEST,
            media::OCI_INDEX,
            media::DOCKER_MANIFEST,
            media::DOCKER_MANIFEST_LIST,
        ]
        .join(", ");
        let op = format!("GET manifest {}:{what}", r.name());
        let mut resp = self
            .get(r, &format!("manifests/{what}"), Some(&accept), creds)
            .await?;
        let media_type = resp
            .headers()
            .get(reqwest::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .map(|s| s.split(';').next().unwrap_or(s).trim().to_string())
            .unwrap_or_default();
        let announced = resp
            .headers()
            .get("docker-content-digest")
            .and_then(|v| v.to_str().ok())
            .and_then(|s| s.parse::<Digest>().ok());
        let mut body = Vec::new();
        while let Some(chunk) = resp
            .chunk()
            .await
            .map_err(|e| Self::registry_err(r, &op, e))?
        {
            body.extend_from_slice(&chunk);
            if body.len() > MAX_MANIFEST_BYTES {
                return Err(ImageError::malformed(
                    op,
                    format!("manifest larger than {MAX_MANIFEST_BYTES} bytes"),
                ));
            }
        }
        let actual = Digest::of(&body);
        let expected = match what.parse::<Digest>() {
            Ok(d) => Some(d),
            Err(_) => announced,
        };
        if let Some(expected) = expected {
            if expected != actual {
                return Err(ImageError::DigestMismatch {
                    what: format!("manifest {}:{what}", r.name()),
                    expected,
                    actual,
                });
            }
        }
        Ok((body, media_type, actual))
    }

    /// Starts a blob download.
    pub async fn fetch_blob(
        &self,
        r: &Reference,
        digest: &Digest,
        creds: Option<&RegistryAuth>,
    ) -> Result<Response> {
        self.get(r, &format!("blobs/{digest}"), None, creds).await
    }
}

async fn check_status(r: &Reference, op: &str, resp: Response) -> Result<Response> {
    let status = resp.status();
    if status.is_success() {
        return Ok(resp);
    }
    let msg = registry_message(resp).await;
    if status == StatusCode::NOT_FOUND {
        return Err(ImageError::ImageNotFound(format!("{r}: {msg}")));
    }
    Err(RegistryClient::registry_err(r, op, msg))
}

/// The registry's error message (`{"errors":[{"code","message"}]}`) with the status.
async fn registry_message(resp: Response) -> String {
    let status = resp.status();
    let body = resp.bytes().await.unwrap_or_default();
    #[derive(serde::Deserialize)]
    struct Errors {
        errors: Vec<E>,
    }
    #[derive(serde::Deserialize)]
    struct E {
        code: Option<String>,
        message: Option<String>,
    }
    let detail = serde_json::from_slice::<Errors>(&body)
        .ok()
        .map(|e| {
            e.errors
                .iter()
                .map(|x| {
                    format!(
                        "{}: {}",
                        x.code.as_deref().unwrap_or("?"),
                        x.message.as_deref().unwrap_or("")
                    )
                })
                .collect::<Vec<_>>()
                .join("; ")
        })
        .unwrap_or_else(|| String::from_utf8_lossy(&body[..body.len().min(200)]).into_owned());
    format!("{status}: {detail}")
}
