//! An HTTP client for the OCI distribution API (Docker Registry v2): the challenge/token
//! dance, manifest and blob GETs, registry error messages.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Mutex;
use std::time::{Duration, SystemTime};

use reqwest::header::{
    HeaderMap, HeaderValue, ACCEPT, AUTHORIZATION, RANGE, RETRY_AFTER, WWW_AUTHENTICATE,
};
use reqwest::{RequestBuilder, Response, StatusCode};

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
    /// How transient failures (connection errors, 5xx, 429) are retried.
    pub retry: RetryPolicy,
}

/// Bounded retries with exponential backoff for transient registry failures: a refused or
/// reset connection, a body cut short, `408`, `429`, `500`, `502`, `503`, `504`. A
/// `Retry-After` header (seconds or an HTTP date) replaces the computed delay, capped at
/// [`RetryPolicy::max_delay`]. Other statuses (`401`, `404`, …) are answered at once.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Tries of one request in all, the first included (1 disables retries). A blob
    /// body that breaks off is resumed (a `Range` request from the bytes received) at
    /// most `attempts - 1` times per blob, each resumption retried like any request.
    pub attempts: u32,
    /// The delay before the first retry; each later retry waits twice the previous one.
    pub base_delay: Duration,
    /// The longest single wait, `Retry-After` included.
    pub max_delay: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            attempts: 5,
            base_delay: Duration::from_millis(200),
            max_delay: Duration::from_secs(10),
        }
    }
}

impl RetryPolicy {
    /// The wait before retry number `retry` (1 for the first retry), or the server's
    /// `Retry-After`, both capped at `max_delay`.
    pub fn delay(&self, retry: u32, retry_after: Option<Duration>) -> Duration {
        let backoff = self
            .base_delay
            .saturating_mul(1u32 << retry.saturating_sub(1).min(16));
        retry_after.unwrap_or(backoff).min(self.max_delay)
    }
}

/// Whether a status is worth retrying.
pub(crate) fn transient_status(status: StatusCode) -> bool {
    matches!(status.as_u16(), 408 | 429 | 500 | 502 | 503 | 504)
}

/// The `Retry-After` header: delay-seconds or an HTTP date (relative to `now`).
pub(crate) fn retry_after(headers: &HeaderMap, now: SystemTime) -> Option<Duration> {
    let v = headers.get(RETRY_AFTER)?.to_str().ok()?.trim();
    if let Ok(secs) = v.parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    let at = jiff::fmt::rfc2822::DateTimeParser::new()
        .parse_timestamp(v)
        .ok()?;
    let at = SystemTime::from(at);
    Some(at.duration_since(now).unwrap_or(Duration::ZERO))
}

/// Whether a request or body error is worth retrying: connection refused, reset or
/// aborted, a timeout, a connection closed before the message (or body) completed.
pub(crate) fn transient_error(e: &reqwest::Error) -> bool {
    if e.is_timeout() || e.is_connect() {
        return true;
    }
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = source {
        if let Some(io) = err.downcast_ref::<std::io::Error>() {
            use std::io::ErrorKind::*;
            if matches!(
                io.kind(),
                ConnectionReset
                    | ConnectionRefused
                    | ConnectionAborted
                    | BrokenPipe
                    | TimedOut
                    | UnexpectedEof
                    | NotConnected
            ) {
                return true;
            }
        }
        if let Some(h) = err.downcast_ref::<hyper::Error>() {
            if h.is_incomplete_message() || h.is_closed() || h.is_canceled() {
                return true;
            }
        }
        source = err.source();
    }
    false
}

impl Default for RegistryConfig {
    fn default() -> Self {
        RegistryConfig {
            insecure: BTreeSet::new(),
            endpoints: BTreeMap::new(),
            credentials: BTreeMap::new(),
            max_concurrent_downloads: 3,
            user_agent: concat!("wharf-image/", env!("CARGO_PKG_VERSION")).to_string(),
            retry: RetryPolicy::default(),
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

    /// Sends the request `build` makes, again after a transient failure (see
    /// [`RetryPolicy`]). Returns the last response (a success, a status that is not worth
    /// retrying, or a transient one once the attempts are spent) or the last error.
    async fn send_retrying(
        &self,
        r: &Reference,
        op: &str,
        build: impl Fn() -> RequestBuilder,
    ) -> Result<Response> {
        let policy = &self.config.retry;
        let mut attempt = 1;
        let outcome = loop {
            let outcome = build().send().await;
            let transient = match &outcome {
                Ok(resp) if transient_status(resp.status()) => {
                    Some(retry_after(resp.headers(), SystemTime::now()))
                }
                Err(e) if transient_error(e) => Some(None),
                _ => None,
            };
            let Some(wait) = transient else {
                break outcome;
            };
            if attempt >= policy.attempts {
                break outcome;
            }
            let delay = policy.delay(attempt, wait);
            match &outcome {
                Ok(resp) => {
                    tracing::debug!(%op, status = %resp.status(), attempt, ?delay, "registry busy, retrying")
                }
                Err(e) => {
                    tracing::debug!(%op, error = %e, attempt, ?delay, "request failed, retrying")
                }
            }
            drop(outcome);
            tokio::time::sleep(delay).await;
            attempt += 1;
        };
        outcome.map_err(|e| {
            let reason = if attempt > 1 {
                format!("{e} (after {attempt} attempts)")
            } else {
                e.to_string()
            };
            Self::registry_err(r, op, reason)
        })
    }

    /// GET `/v2/<repo>/<path>`, answering an authentication challenge once.
    async fn get(
        &self,
        r: &Reference,
        path: &str,
        accept: Option<&str>,
        creds: Option<&RegistryAuth>,
    ) -> Result<Response> {
        self.get_range(r, path, accept, creds, 0).await
    }

    /// [`RegistryClient::get`] from byte `offset` on (a `Range` request when not 0).
    async fn get_range(
        &self,
        r: &Reference,
        path: &str,
        accept: Option<&str>,
        creds: Option<&RegistryAuth>,
        offset: u64,
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
            let resp = self
                .send_retrying(r, &op, || {
                    let mut req = self.http.get(&url);
                    if let Some(a) = accept {
                        req = req.header(ACCEPT, a);
                    }
                    if let Some(a) = &auth {
                        req = req.header(AUTHORIZATION, a.clone());
                    }
                    if offset > 0 {
                        req = req.header(RANGE, format!("bytes={offset}-"));
                    }
                    req
                })
                .await?;
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
        let resp = self
            .send_retrying(r, &op, || {
                let req = self.http.get(realm).query(&query);
                match creds {
                    Some(RegistryAuth::Basic { username, password }) => {
                        req.basic_auth(username, Some(password))
                    }
                    _ => req,
                }
            })
            .await?;
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

    /// Resumes a blob download at byte `offset` (a `Range` request). The registry may
    /// answer `206 Partial Content` from `offset`, or `200` with the whole blob again (the
    /// caller drops the bytes it already has).
    pub async fn fetch_blob_from(
        &self,
        r: &Reference,
        digest: &Digest,
        creds: Option<&RegistryAuth>,
        offset: u64,
    ) -> Result<Response> {
        self.get_range(r, &format!("blobs/{digest}"), None, creds, offset)
            .await
    }
}

/// How many leading bytes of a resumed blob response (asked from `offset`) repeat bytes
/// already received: 0 for a `206` starting at `offset`, `offset` for a `200` (the whole
/// blob again); `None` for a `206` that starts elsewhere (unusable).
pub(crate) fn resume_skip(status: StatusCode, headers: &HeaderMap, offset: u64) -> Option<u64> {
    if status != StatusCode::PARTIAL_CONTENT {
        return Some(offset);
    }
    let range = headers.get(reqwest::header::CONTENT_RANGE)?.to_str().ok()?;
    let start = range
        .strip_prefix("bytes ")?
        .split('-')
        .next()?
        .trim()
        .parse::<u64>()
        .ok()?;
    (start == offset).then_some(0)
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_and_is_capped() {
        let p = RetryPolicy {
            attempts: 6,
            base_delay: Duration::from_millis(100),
            max_delay: Duration::from_secs(1),
        };
        let ms = |retry, after| p.delay(retry, after).as_millis();
        assert_eq!(
            [ms(1, None), ms(2, None), ms(3, None), ms(4, None)],
            [100, 200, 400, 800]
        );
        assert_eq!(ms(5, None), 1000);
        assert_eq!(ms(40, None), 1000);
        // The server's Retry-After wins, within the cap.
        assert_eq!(ms(1, Some(Duration::from_millis(700))), 700);
        assert_eq!(ms(1, Some(Duration::from_secs(3600))), 1000);
    }

    #[test]
    fn retry_after_seconds_and_http_dates() {
        let mut h = HeaderMap::new();
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_445_412_480); // 07:28:00
        assert_eq!(retry_after(&h, now), None);
        h.insert(RETRY_AFTER, HeaderValue::from_static("7"));
        assert_eq!(retry_after(&h, now), Some(Duration::from_secs(7)));
        h.insert(
            RETRY_AFTER,
            HeaderValue::from_static("Wed, 21 Oct 2015 07:28:30 GMT"),
        );
        assert_eq!(retry_after(&h, now), Some(Duration::from_secs(30)));
        // A date in the past means now.
        let later = now + Duration::from_secs(60);
        assert_eq!(retry_after(&h, later), Some(Duration::ZERO));
        h.insert(RETRY_AFTER, HeaderValue::from_static("soon"));
        assert_eq!(retry_after(&h, now), None);
    }

    #[test]
    fn which_statuses_are_retried() {
        for s in [408, 429, 500, 502, 503, 504] {
            assert!(transient_status(StatusCode::from_u16(s).unwrap()), "{s}");
        }
        for s in [200, 206, 400, 401, 403, 404, 416, 501] {
            assert!(!transient_status(StatusCode::from_u16(s).unwrap()), "{s}");
        }
    }

    #[test]
    fn resumed_answers() {
        let mut h = HeaderMap::new();
        // A whole blob again: drop what was received.
        assert_eq!(resume_skip(StatusCode::OK, &h, 1000), Some(1000));
        h.insert(
            reqwest::header::CONTENT_RANGE,
            HeaderValue::from_static("bytes 1000-4999/5000"),
        );
        assert_eq!(resume_skip(StatusCode::PARTIAL_CONTENT, &h, 1000), Some(0));
        assert_eq!(resume_skip(StatusCode::PARTIAL_CONTENT, &h, 999), None);
        h.remove(reqwest::header::CONTENT_RANGE);
        assert_eq!(resume_skip(StatusCode::PARTIAL_CONTENT, &h, 1000), None);
    }
}
