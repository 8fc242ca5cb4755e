//! A real Docker distribution registry (`docker-registry` 2.8 from Debian)
//! on loopback, the OCI test fixtures from `images/test/`, and a small
//! HTTP/1.1 client for poking at both.
//!
//! Typical use:
//!
//! ```text
//! let reg = Registry::start();
//! reg.push_fixture(fixtures_dir(), "busybox", "busybox:latest");
//! let digest = reg.manifest_digest("busybox", "latest");
//! // pull "127.0.0.1:PORT/busybox:latest" or "...busybox@<digest>"
//! assert_eq!(reg.blob_get_count(&layer_digest), 1);
//! ```
//!
//! The registry process is started with `PR_SET_PDEATHSIG`, which fires when
//! the *thread* that spawned it exits. Start a registry in the test that uses
//! it (it takes ~100 ms), not in a `static` shared between test threads.

use std::collections::BTreeMap;
use std::fs::OpenOptions;
use std::io;
use std::net::TcpListener;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering as AtomicOrdering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use bytes::Bytes;
use http_body_util::{BodyExt, Empty, Full};
use hyper_util::rt::TokioIo;
use ring::rand::SystemRandom;
use ring::signature::{
    ECDSA_P256_SHA256_ASN1_SIGNING, ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair, KeyPair as _,
};
use tempfile::TempDir;

use crate::daemon::repo_root;

const REGISTRY_BIN: &str = "/usr/bin/docker-registry";

/// Accept header for manifest requests: OCI and Docker, lists and images.
pub const MANIFEST_ACCEPT: &str = "application/vnd.oci.image.index.v1+json, \
     application/vnd.oci.image.manifest.v1+json, \
     application/vnd.docker.distribution.manifest.list.v2+json, \
     application/vnd.docker.distribution.manifest.v2+json";

/// A `docker-registry serve` on 127.0.0.1, killed and its storage removed on
/// drop.
pub struct Registry {
    child: Option<Child>,
    addr: String,
    auth: Auth,
    log: PathBuf,
    dir: TempDir,
}

/// How a [`Registry`] authenticates clients.
#[derive(Clone)]
enum Auth {
    Open,
    /// htpasswd: HTTP basic auth with these credentials.
    Basic(String, String),
    /// `auth: token:`: bearer JWTs from this token server.
    Token(Arc<TokenState>),
}

/// One line of the registry's access log.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AccessLogEntry {
    pub method: String,
    /// Request target as sent, query string included.
    pub path: String,
    pub status: u16,
}

impl Registry {
    /// Starts an open registry (no auth). Panics with the registry's log if
    /// it does not come up.
    pub fn start() -> Registry {
        Self::try_start(Auth::Open).unwrap_or_else(|e| panic!("starting docker-registry: {e:#}"))
    }

    /// Starts a registry that demands HTTP basic auth as `user`/`pass`
    /// (htpasswd backend). Anonymous requests get 401 with
    /// `WWW-Authenticate: Basic realm="vmpod-test"`.
    pub fn start_with_htpasswd(user: &str, pass: &str) -> Registry {
        Self::try_start(Auth::Basic(user.to_string(), pass.to_string()))
            .unwrap_or_else(|e| panic!("starting docker-registry with htpasswd: {e:#}"))
    }

    /// Starts a registry in distribution's token mode (`auth: token:`),
    /// trusting JWTs signed by `tokens`: a request without a valid bearer
    /// token gets 401 with `WWW-Authenticate: Bearer realm="<tokens
    /// realm>",service="...",scope="repository:NAME:pull"`. Fixtures are
    /// pushed with the token server's credentials.
    pub fn start_with_token_auth(tokens: &TokenServer) -> Registry {
        Self::try_start(Auth::Token(tokens.state.clone()))
            .unwrap_or_else(|e| panic!("starting docker-registry with token auth: {e:#}"))
    }

    fn try_start(auth_mode: Auth) -> Result<Registry> {
        if !Path::new(REGISTRY_BIN).exists() {
            bail!(
                "{REGISTRY_BIN} not found; run scripts/install-deps.sh (package docker-registry)"
            );
        }
        let dir = tempfile::Builder::new()
            .prefix("vmpod-registry-")
            .tempdir()
            .context("cannot create registry tempdir")?;
        let port = free_port()?;
        let addr = format!("127.0.0.1:{port}");
        let storage = dir.path().join("storage");
        std::fs::create_dir(&storage).context("cannot create registry storage dir")?;

        let auth = match &auth_mode {
            Auth::Open => String::new(),
            Auth::Token(t) => {
                let bundle = dir.path().join("token-ca.pem");
                std::fs::write(&bundle, &t.cert_pem).context("cannot write token cert bundle")?;
                format!(
                    "auth:\n  token:\n    realm: {}\n    service: {}\n    issuer: {}\n    rootcertbundle: {}\n",
                    yaml_text(&t.realm),
                    yaml_text(&t.service),
                    yaml_text(TOKEN_ISSUER),
                    yaml_str(&bundle)
                )
            }
            Auth::Basic(user, pass) => {
                let out = Command::new("htpasswd")
                    .args(["-Bbn", user, pass])
                    .stdin(Stdio::null())
                    .output()
                    .context("cannot run htpasswd (package apache2-utils)")?;
                if !out.status.success() {
                    bail!(
                        "htpasswd -Bbn failed: {}: {}",
                        out.status,
                        String::from_utf8_lossy(&out.stderr)
                    );
                }
                let file = dir.path().join("htpasswd");
                std::fs::write(&file, &out.stdout).context("cannot write htpasswd file")?;
                format!(
                    "auth:\n  htpasswd:\n    realm: vmpod-test\n    path: {}\n",
                    yaml_str(&file)
                )
            }
        };
        // `log.accesslog` puts one combined-log line per request on stdout;
        // blob_get_count() parses those. The storage health check and the
        // upload purger are off: they only add background noise.
        let config = format!(
            "version: 0.1\n\
             log:\n  level: info\n  formatter: text\n  accesslog:\n    disabled: false\n\
             storage:\n  filesystem:\n    rootdirectory: {storage}\n  delete:\n    enabled: true\n  \
             maintenance:\n    uploadpurging:\n      enabled: false\n\
             http:\n  addr: {addr}\n\
             health:\n  storagedriver:\n    enabled: false\n\
             {auth}",
            storage = yaml_str(&storage),
        );
        let config_path = dir.path().join("config.yml");
        std::fs::write(&config_path, config).context("cannot write registry config")?;

        let log = dir.path().join("registry.log");
        let out = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .context("cannot create registry log")?;
        let err = out.try_clone().context("cannot dup registry log fd")?;
        let mut cmd = Command::new(REGISTRY_BIN);
        cmd.arg("serve")
            .arg(&config_path)
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err);
        // SAFETY: prctl is async-signal-safe and touches no parent memory.
        unsafe {
            cmd.pre_exec(|| {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                    return Err(io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let child = cmd.spawn().context("cannot spawn docker-registry")?;
        let mut reg = Registry {
            child: Some(child),
            addr,
            auth: auth_mode,
            log,
            dir,
        };
        reg.wait_ready(Duration::from_secs(10))?;
        Ok(reg)
    }

    fn wait_ready(&mut self, timeout: Duration) -> Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(child) = self.child.as_mut()
                && let Some(status) = child.try_wait().context("waitpid registry")?
            {
                bail!(
                    "docker-registry exited with {status}; log:\n{}",
                    self.log_text()
                );
            }
            // 200, or 401 with auth: either way it serves the API.
            match http_request(&self.addr, "GET", "/v2/", &[], Duration::from_secs(1)) {
                Ok(r) if r.status == 200 || r.status == 401 => return Ok(()),
                Ok(r) => bail!("GET /v2/ answered {}; log:\n{}", r.status, self.log_text()),
                Err(_) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(20))
                }
                Err(e) => bail!(
                    "registry not ready after {timeout:?}: {e:#}; log:\n{}",
                    self.log_text()
                ),
            }
        }
    }

    /// "127.0.0.1:PORT", for image references ("127.0.0.1:PORT/busybox:latest").
    pub fn addr(&self) -> &str {
        &self.addr
    }

    /// The credentials clients must present: those given to
    /// `start_with_htpasswd`, or the token server's for token auth.
    pub fn creds(&self) -> Option<(&str, &str)> {
        match &self.auth {
            Auth::Open => None,
            Auth::Basic(u, p) => Some((u.as_str(), p.as_str())),
            Auth::Token(t) => Some((t.user.as_str(), t.pass.as_str())),
        }
    }

    /// The registry's combined stdout/stderr (app log and access log).
    pub fn log_path(&self) -> &Path {
        &self.log
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_else(|e| format!("(cannot read log: {e})"))
    }

    /// The registry's storage and config directory.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Copies fixture `image_name` (a layout under `layout_dir`, normally
    /// [`fixtures_dir()`]) to `repo_tag` ("busybox:latest") on this registry
    /// with `skopeo copy --all --preserve-digests`, so the pushed manifest
    /// (or index) digest equals [`fixture_digest`]`(image_name)`.
    pub fn push_fixture(&self, layout_dir: &Path, image_name: &str, repo_tag: &str) {
        let src = format!("oci:{}:{image_name}", layout_dir.join(image_name).display());
        let dst = format!("docker://{}/{repo_tag}", self.addr);
        let mut cmd = Command::new("skopeo");
        // --insecure-policy: do not depend on the host's /etc/containers/policy.json.
        cmd.args([
            "--insecure-policy",
            "copy",
            "--quiet",
            "--all",
            "--preserve-digests",
            "--dest-tls-verify=false",
        ]);
        if let Some((user, pass)) = self.creds() {
            cmd.arg("--dest-creds").arg(format!("{user}:{pass}"));
        }
        cmd.arg(&src).arg(&dst).stdin(Stdio::null());
        let out = cmd
            .output()
            .unwrap_or_else(|e| panic!("cannot run skopeo (package skopeo): {e}"));
        if !out.status.success() {
            panic!(
                "skopeo copy {src} {dst} failed: {}\n{}\nregistry log:\n{}",
                out.status,
                String::from_utf8_lossy(&out.stderr),
                self.log_text()
            );
        }
    }

    /// Every request in the access log so far, in order.
    pub fn access_log(&self) -> Vec<AccessLogEntry> {
        self.log_text()
            .lines()
            .filter_map(parse_access_line)
            .collect()
    }

    /// How many GET requests for `/v2/<any repo>/blobs/<digest>` the registry
    /// has logged (any status). The access line is written just after the
    /// response, so this waits until the count holds still for 100 ms.
    pub fn blob_get_count(&self, digest: &str) -> usize {
        let suffix = format!("/blobs/{digest}");
        let count = || {
            self.access_log()
                .iter()
                .filter(|e| e.method == "GET" && e.path.starts_with("/v2/"))
                .filter(|e| e.path.split('?').next().unwrap_or("").ends_with(&suffix))
                .count()
        };
        let mut last = count();
        for _ in 0..10 {
            std::thread::sleep(Duration::from_millis(100));
            let now = count();
            if now == last {
                break;
            }
            last = now;
        }
        last
    }

    /// Digest of `repo:tag` (or `repo@digest`) as the registry serves it, from
    /// a HEAD with an Accept header listing OCI and Docker manifest and list
    /// types. Uses the registry's basic-auth credentials, if any.
    pub fn manifest_digest(&self, repo: &str, reference: &str) -> String {
        let path = format!("/v2/{repo}/manifests/{reference}");
        let resp = self
            .request("HEAD", &path, &[("Accept", MANIFEST_ACCEPT)])
            .unwrap_or_else(|e| panic!("HEAD {path}: {e:#}"));
        if resp.status != 200 {
            panic!("HEAD {path}: status {}", resp.status);
        }
        resp.header("docker-content-digest")
            .unwrap_or_else(|| panic!("HEAD {path}: no Docker-Content-Digest header"))
            .to_string()
    }

    /// A request to this registry, with basic auth when it has credentials,
    /// or, in token mode, a bearer token for the repository `path` names
    /// (`/v2/<repo>/manifests/...` or `/v2/<repo>/blobs/...`), minted
    /// directly by the token server.
    pub fn request(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
    ) -> Result<HttpResponse> {
        let mut all: Vec<(&str, String)> =
            headers.iter().map(|(k, v)| (*k, v.to_string())).collect();
        match &self.auth {
            Auth::Open => {}
            Auth::Basic(user, pass) => all.push(("Authorization", basic_auth(user, pass))),
            Auth::Token(t) => {
                let repo = path
                    .strip_prefix("/v2/")
                    .and_then(|rest| {
                        ["/manifests/", "/blobs/", "/tags/"]
                            .iter()
                            .find_map(|sep| rest.split_once(sep).map(|(repo, _)| repo))
                    })
                    .unwrap_or("");
                let access = if repo.is_empty() {
                    Vec::new()
                } else {
                    vec![(repo.to_string(), vec!["pull".to_string()])]
                };
                let token = t.mint(&t.user, &access)?;
                all.push(("Authorization", format!("Bearer {token}")));
            }
        }
        let refs: Vec<(&str, &str)> = all.iter().map(|(k, v)| (*k, v.as_str())).collect();
        http_request(&self.addr, method, path, &refs, Duration::from_secs(10))
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// `iss` of every token the [`TokenServer`] signs, and the registry's
/// `auth.token.issuer`.
const TOKEN_ISSUER: &str = "vmpod-test-token-issuer";
/// How long a minted token is valid.
const TOKEN_TTL_SECS: u64 = 300;

/// A Docker token-auth server (the `realm` of a registry in token mode, see
/// <https://distribution.github.io/distribution/spec/auth/token/>) on
/// 127.0.0.1, for [`Registry::start_with_token_auth`].
///
/// `GET /token?service=S&scope=repository:NAME:ACTIONS[&scope=...]`:
/// - with HTTP basic auth matching the server's one account, answers 200
///   `{"token": JWT, "access_token": JWT, ...}` granting every action asked
///   for on `repository` scopes;
/// - anonymously, answers 200 with a token that grants nothing (what public
///   token servers do), so the registry then refuses the request itself;
/// - with wrong credentials, or for another service, answers 401.
///
/// The JWT is what distribution 2.8 verifies: ES256, header `kid` = the
/// libtrust key id of the key in the certificate written to the registry's
/// `rootcertbundle`, claims `iss`, `sub`, `aud` (= service), `exp`, `nbf`,
/// `iat`, `jti` and `access`. The key and its self-signed certificate are
/// made fresh per server with `ring`, so no openssl CLI is needed.
///
/// Every request is recorded ([`TokenServer::requests`]) so a test can tell
/// whether a client went through the realm and with which credentials.
pub struct TokenServer {
    state: Arc<TokenState>,
    rt: Option<tokio::runtime::Runtime>,
}

struct TokenState {
    key: EcdsaKeyPair,
    rng: SystemRandom,
    kid: String,
    cert_pem: String,
    realm: String,
    service: String,
    user: String,
    pass: String,
    serial: AtomicU64,
    requests: Mutex<Vec<TokenRequest>>,
}

/// One request the token server answered.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TokenRequest {
    /// The basic-auth user presented; `None` for an anonymous request.
    pub user: Option<String>,
    /// `scope` parameters, in order.
    pub scopes: Vec<String>,
    pub status: u16,
}

impl TokenServer {
    /// Starts a token server whose one account is `user`/`pass`.
    pub fn start(user: &str, pass: &str) -> TokenServer {
        Self::try_start(user, pass).unwrap_or_else(|e| panic!("starting token server: {e:#}"))
    }

    fn try_start(user: &str, pass: &str) -> Result<TokenServer> {
        let rng = SystemRandom::new();
        let pkcs8 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng)
            .map_err(|_| anyhow!("cannot generate a P-256 key"))?;
        let key = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, pkcs8.as_ref(), &rng)
            .map_err(|e| anyhow!("cannot load the generated key: {e}"))?;
        let cert_key =
            EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_ASN1_SIGNING, pkcs8.as_ref(), &rng)
                .map_err(|e| anyhow!("cannot load the generated key: {e}"))?;
        let spki = p256_spki(key.public_key().as_ref());
        let cert = self_signed_cert(&cert_key, &rng, &spki)?;
        let listener = TcpListener::bind("127.0.0.1:0").context("token server: bind")?;
        listener
            .set_nonblocking(true)
            .context("token server: set_nonblocking")?;
        let addr = listener.local_addr().context("token server: local_addr")?;
        let state = Arc::new(TokenState {
            key,
            rng,
            kid: libtrust_key_id(&spki),
            cert_pem: pem("CERTIFICATE", &cert),
            realm: format!("http://{addr}/token"),
            service: format!("vmpod-test-registry-{}", addr.port()),
            user: user.to_string(),
            pass: pass.to_string(),
            serial: AtomicU64::new(0),
            requests: Mutex::new(Vec::new()),
        });
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("token-server")
            .enable_all()
            .build()
            .context("token server: build tokio runtime")?;
        let st = state.clone();
        rt.spawn(async move {
            let Ok(listener) = tokio::net::TcpListener::from_std(listener) else {
                return;
            };
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let st = st.clone();
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(
                        move |req: http::Request<hyper::body::Incoming>| {
                            let st = st.clone();
                            async move {
                                let resp = if req.method() == http::Method::POST {
                                    let body = req
                                        .into_body()
                                        .collect()
                                        .await
                                        .map(|b| b.to_bytes())
                                        .unwrap_or_default();
                                    st.answer_refresh(&String::from_utf8_lossy(&body))
                                } else {
                                    st.answer(&req)
                                };
                                Ok::<_, std::convert::Infallible>(resp)
                            }
                        },
                    );
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        Ok(TokenServer {
            state,
            rt: Some(rt),
        })
    }

    /// `http://127.0.0.1:PORT/token`, the realm registries send clients to.
    pub fn realm(&self) -> &str {
        &self.state.realm
    }

    /// The `service` the registry names in its challenge (and `aud`).
    pub fn service(&self) -> &str {
        &self.state.service
    }

    /// A token for `subject` granting `actions` on repository `repo`,
    /// signed like the ones the server hands out: what a client that got
    /// its token elsewhere (CRI `registry_token`) would hold.
    pub fn mint(&self, subject: &str, repo: &str, actions: &[&str]) -> String {
        let access = vec![(
            repo.to_string(),
            actions.iter().map(|a| a.to_string()).collect(),
        )];
        self.state
            .mint(subject, &access)
            .unwrap_or_else(|e| panic!("minting a token: {e:#}"))
    }

    /// The refresh token (CRI `identity_token`) of the server's account,
    /// as `docker login` would have stored it: exchanged by
    /// `POST /token grant_type=refresh_token`.
    pub fn identity_token(&self) -> String {
        self.state.refresh_token()
    }

    /// Every request answered so far, in order.
    pub fn requests(&self) -> Vec<TokenRequest> {
        self.state
            .requests
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }
}

impl Drop for TokenServer {
    fn drop(&mut self) {
        if let Some(rt) = self.rt.take() {
            rt.shutdown_background();
        }
    }
}

impl TokenState {
    fn refresh_token(&self) -> String {
        format!("refresh-{}-{}", self.user, self.kid.len())
    }

    /// `POST /token` with an OAuth2 refresh-token grant (form encoded).
    fn answer_refresh(&self, form: &str) -> http::Response<Full<Bytes>> {
        let mut fields = BTreeMap::new();
        let mut scopes = Vec::new();
        for pair in form.split('&') {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            let v = percent_decode(&v.replace('+', " "));
            if k == "scope" {
                scopes.extend(v.split(' ').map(str::to_string));
            } else {
                fields.insert(k.to_string(), v);
            }
        }
        let field = |k: &str| fields.get(k).map(String::as_str).unwrap_or_default();
        let (status, body) =
            if field("grant_type") != "refresh_token" || field("service") != self.service {
                (400, r#"{"error":"unsupported_grant_type"}"#.to_string())
            } else if field("refresh_token") != self.refresh_token() {
                (401, r#"{"error":"invalid_grant"}"#.to_string())
            } else {
                let access: Vec<(String, Vec<String>)> =
                    scopes.iter().filter_map(|s| parse_scope(s)).collect();
                match self.mint(&self.user, &access) {
                    Ok(token) => (
                        200,
                        serde_json::json!({"access_token": token, "expires_in": TOKEN_TTL_SECS})
                            .to_string(),
                    ),
                    Err(e) => (500, format!("{{\"error\": {:?}}}", format!("{e:#}"))),
                }
            };
        self.requests
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(TokenRequest {
                user: Some(format!("refresh:{}", field("client_id"))),
                scopes,
                status,
            });
        let mut resp = http::Response::new(Full::new(Bytes::from(body)));
        *resp.status_mut() =
            http::StatusCode::from_u16(status).unwrap_or(http::StatusCode::INTERNAL_SERVER_ERROR);
        resp
    }

    fn answer(&self, req: &http::Request<hyper::body::Incoming>) -> http::Response<Full<Bytes>> {
        let mut scopes = Vec::new();
        let mut service = None;
        for pair in req.uri().query().unwrap_or("").split('&') {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            let v = percent_decode(v);
            match k {
                "scope" => scopes.push(v),
                "service" => service = Some(v),
                _ => {}
            }
        }
        let user = req
            .headers()
            .get(http::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .map(parse_basic);
        let (status, body) = self.decide(req, service.as_deref(), &scopes, user.as_ref());
        self.requests
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(TokenRequest {
                user: user.map(|u| u.map_or_else(|| "(malformed)".to_string(), |(u, _)| u)),
                scopes,
                status,
            });
        let mut resp = http::Response::new(Full::new(Bytes::from(body)));
        *resp.status_mut() =
            http::StatusCode::from_u16(status).unwrap_or(http::StatusCode::INTERNAL_SERVER_ERROR);
        resp.headers_mut().insert(
            http::header::CONTENT_TYPE,
            http::HeaderValue::from_static("application/json"),
        );
        resp
    }

    /// The status and body for one token request. `user` is `None` without
    /// an Authorization header, `Some(None)` for one that is not basic auth.
    fn decide(
        &self,
        req: &http::Request<hyper::body::Incoming>,
        service: Option<&str>,
        scopes: &[String],
        user: Option<&Option<(String, String)>>,
    ) -> (u16, String) {
        let deny = |status: u16, msg: &str| {
            let body = serde_json::json!({"errors": [{"code": "UNAUTHORIZED", "message": msg}]});
            (status, body.to_string())
        };
        if req.uri().path() != "/token" || req.method() != http::Method::GET {
            return deny(404, "only GET /token is served");
        }
        if service != Some(self.service.as_str()) {
            return deny(400, "unknown service");
        }
        let subject = match user {
            None => String::new(),
            Some(Some((u, p))) if *u == self.user && *p == self.pass => u.clone(),
            Some(_) => return deny(401, "invalid username or password"),
        };
        // Anonymous callers get a token that grants nothing.
        let access: Vec<(String, Vec<String>)> = if subject.is_empty() {
            Vec::new()
        } else {
            scopes.iter().filter_map(|s| parse_scope(s)).collect()
        };
        match self.mint(&subject, &access) {
            Ok(token) => {
                let body = serde_json::json!({
                    "token": token,
                    "access_token": token,
                    "expires_in": TOKEN_TTL_SECS,
                });
                (200, body.to_string())
            }
            Err(e) => (500, format!("{{\"error\": {:?}}}", format!("{e:#}"))),
        }
    }

    /// An ES256 JWT as distribution's token verifier expects it.
    fn mint(&self, subject: &str, access: &[(String, Vec<String>)]) -> Result<String> {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .context("clock before 1970")?
            .as_secs();
        let header = serde_json::json!({"typ": "JWT", "alg": "ES256", "kid": self.kid});
        let access: Vec<_> = access
            .iter()
            .map(|(name, actions)| {
                serde_json::json!({"type": "repository", "name": name, "actions": actions})
            })
            .collect();
        let claims = serde_json::json!({
            "iss": TOKEN_ISSUER,
            "sub": subject,
            "aud": self.service,
            "exp": now + TOKEN_TTL_SECS,
            "nbf": now.saturating_sub(10),
            "iat": now,
            "jti": format!("vmpod-test-{}", self.serial.fetch_add(1, AtomicOrdering::SeqCst)),
            "access": access,
        });
        let b64 = |v: &serde_json::Value| URL_SAFE_NO_PAD.encode(v.to_string());
        let signing_input = format!("{}.{}", b64(&header), b64(&claims));
        let sig = self
            .key
            .sign(&self.rng, signing_input.as_bytes())
            .map_err(|_| anyhow!("ES256 signing failed"))?;
        Ok(format!(
            "{signing_input}.{}",
            URL_SAFE_NO_PAD.encode(sig.as_ref())
        ))
    }
}

/// `Basic base64(user:pass)` → `Some((user, pass))`; anything else `None`.
fn parse_basic(header: &str) -> Option<(String, String)> {
    let b64 = header.strip_prefix("Basic ")?;
    let raw = STANDARD.decode(b64.trim()).ok()?;
    let text = String::from_utf8(raw).ok()?;
    let (u, p) = text.split_once(':')?;
    Some((u.to_string(), p.to_string()))
}

/// `repository:NAME:a,b` → `(NAME, [a, b])`; other resource types `None`.
fn parse_scope(scope: &str) -> Option<(String, Vec<String>)> {
    let rest = scope.strip_prefix("repository:")?;
    let (name, actions) = rest.rsplit_once(':')?;
    Some((
        name.to_string(),
        actions.split(',').map(str::to_string).collect(),
    ))
}

/// Decodes `%XX` escapes and `+` (form encoding) in a query value.
fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let hex = |c: u8| char::from(c).to_digit(16).map(|d| d as u8);
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match (
            b[i],
            b.get(i + 1).copied().and_then(hex),
            b.get(i + 2).copied().and_then(hex),
        ) {
            (b'%', Some(hi), Some(lo)) => {
                out.push(hi << 4 | lo);
                i += 3;
            }
            (b'+', ..) => {
                out.push(b' ');
                i += 1;
            }
            (c, ..) => {
                out.push(c);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// A DER TLV.
fn der(tag: u8, content: &[u8]) -> Vec<u8> {
    let mut out = vec![tag];
    let len = content.len();
    if len < 0x80 {
        out.push(len as u8);
    } else {
        let bytes: Vec<u8> = len
            .to_be_bytes()
            .iter()
            .copied()
            .skip_while(|&b| b == 0)
            .collect();
        out.push(0x80 | bytes.len() as u8);
        out.extend_from_slice(&bytes);
    }
    out.extend_from_slice(content);
    out
}

/// SubjectPublicKeyInfo of an uncompressed P-256 point.
fn p256_spki(point: &[u8]) -> Vec<u8> {
    // SEQUENCE { OID id-ecPublicKey, OID prime256v1 }
    let alg = der(
        0x30,
        &[
            &der(0x06, &[0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01])[..],
            &der(0x06, &[0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07])[..],
        ]
        .concat(),
    );
    let mut bits = vec![0u8];
    bits.extend_from_slice(point);
    der(0x30, &[alg, der(0x03, &bits)].concat())
}

/// A minimal self-signed X.509 v3 certificate (no extensions) for `spki`,
/// enough for distribution to load from `rootcertbundle`.
fn self_signed_cert(key: &EcdsaKeyPair, rng: &SystemRandom, spki: &[u8]) -> Result<Vec<u8>> {
    // ecdsa-with-SHA256
    let sig_alg = der(
        0x30,
        &der(0x06, &[0x2a, 0x86, 0x48, 0xce, 0x3d, 0x04, 0x03, 0x02]),
    );
    // SEQUENCE { SET { SEQUENCE { OID commonName, UTF8String } } }
    let name = der(
        0x30,
        &der(
            0x31,
            &der(
                0x30,
                &[
                    der(0x06, &[0x55, 0x04, 0x03]),
                    der(0x0c, b"vmpod test token issuer"),
                ]
                .concat(),
            ),
        ),
    );
    let validity = der(
        0x30,
        &[der(0x17, b"200101000000Z"), der(0x17, b"491231235959Z")].concat(),
    );
    let tbs = der(
        0x30,
        &[
            der(0xa0, &der(0x02, &[2])), // version v3
            der(0x02, &[1]),             // serial
            sig_alg.clone(),
            name.clone(),
            validity,
            name,
            spki.to_vec(),
        ]
        .concat(),
    );
    let sig = key
        .sign(rng, &tbs)
        .map_err(|_| anyhow!("cannot sign the certificate"))?;
    let mut bits = vec![0u8];
    bits.extend_from_slice(sig.as_ref());
    Ok(der(0x30, &[tbs, sig_alg, der(0x03, &bits)].concat()))
}

/// libtrust's key id, which distribution matches against a token's `kid`:
/// the first 240 bits of SHA-256(SPKI DER), base32, in groups of four
/// joined by `:`.
fn libtrust_key_id(spki: &[u8]) -> String {
    const ALPHABET: &[u8; 32] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567";
    let hash = ring::digest::digest(&ring::digest::SHA256, spki);
    let bytes = &hash.as_ref()[..30];
    let mut b32 = String::with_capacity(48);
    // 30 bytes = 240 bits = 48 five-bit groups, no padding.
    for chunk in bytes.chunks(5) {
        let n = chunk.iter().fold(0u64, |acc, &b| (acc << 8) | u64::from(b));
        for i in (0..8).rev() {
            b32.push(ALPHABET[((n >> (5 * i)) & 31) as usize] as char);
        }
    }
    b32.as_bytes()
        .chunks(4)
        .map(|c| String::from_utf8_lossy(c).into_owned())
        .collect::<Vec<_>>()
        .join(":")
}

fn pem(label: &str, der: &[u8]) -> String {
    let b64 = STANDARD.encode(der);
    let mut out = format!("-----BEGIN {label}-----\n");
    for line in b64.as_bytes().chunks(64) {
        out.push_str(&String::from_utf8_lossy(line));
        out.push('\n');
    }
    out.push_str(&format!("-----END {label}-----\n"));
    out
}

/// Parses a combined-log-format line:
/// `127.0.0.1 - - [date] "GET /v2/x/blobs/sha256:.. HTTP/1.1" 200 123 "" "ua"`.
fn parse_access_line(line: &str) -> Option<AccessLogEntry> {
    if line.starts_with("time=") {
        return None;
    }
    let rest = &line[line.find("] \"")? + 3..];
    let (request, rest) = rest.split_once('"')?;
    let mut req = request.split(' ');
    let method = req.next()?.to_string();
    let path = req.next()?.to_string();
    if !req.next()?.starts_with("HTTP/") {
        return None;
    }
    let status = rest.split_whitespace().next()?.parse().ok()?;
    Some(AccessLogEntry {
        method,
        path,
        status,
    })
}

fn yaml_str(p: &Path) -> String {
    yaml_text(&p.to_string_lossy())
}

fn yaml_text(s: &str) -> String {
    // JSON strings are valid YAML double-quoted scalars.
    serde_json::to_string(s).expect("a string serializes")
}

/// A TCP port on 127.0.0.1 that was free a moment ago.
pub fn free_port() -> Result<u16> {
    let l = TcpListener::bind("127.0.0.1:0").context("cannot bind 127.0.0.1:0")?;
    Ok(l.local_addr().context("local_addr")?.port())
}

/// The directory holding the fixture layouts (`<dir>/<name>/` for each image,
/// see `images/test/README.md`). Runs `images/test/build-test-images.sh` once
/// per test process; it is a no-op when its cache is fresh.
pub fn fixtures_dir() -> &'static Path {
    static DIR: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    DIR.get_or_init(|| {
        let script = repo_root().join("images/test/build-test-images.sh");
        let out = Command::new("bash")
            .arg(&script)
            .stdin(Stdio::null())
            .stderr(Stdio::inherit())
            .output()
            .map_err(|e| format!("cannot run {}: {e}", script.display()))?;
        if !out.status.success() {
            return Err(format!("{} failed: {}", script.display(), out.status));
        }
        let stdout = String::from_utf8_lossy(&out.stdout);
        let last = stdout.lines().last().unwrap_or("").trim();
        let dir = PathBuf::from(last);
        if !dir.join("digests.json").is_file() {
            return Err(format!(
                "{} printed {last:?}, which has no digests.json",
                script.display()
            ));
        }
        Ok(dir)
    })
    .as_ref()
    .map(PathBuf::as_path)
    .unwrap_or_else(|e| panic!("test fixtures: {e}"))
}

/// The digest of a fixture's top-level manifest (an image index for
/// `multiarch`), from `digests.json`. Pushing with [`Registry::push_fixture`]
/// preserves it, so tests can pull `repo@<this>`.
pub fn fixture_digest(name: &str) -> String {
    let digests = fixture_digests();
    digests
        .get(name)
        .unwrap_or_else(|| panic!("no fixture {name:?}; have {:?}", digests.keys()))
        .clone()
}

/// All fixture names and their top-level digests.
pub fn fixture_digests() -> BTreeMap<String, String> {
    let path = fixtures_dir().join("digests.json");
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("bad {}: {e}", path.display()))
}

/// Reads a blob of fixture `name` by digest.
pub fn fixture_blob(name: &str, digest: &str) -> Vec<u8> {
    let hex = digest
        .strip_prefix("sha256:")
        .unwrap_or_else(|| panic!("not a sha256 digest: {digest}"));
    let path = fixtures_dir().join(name).join("blobs/sha256").join(hex);
    std::fs::read(&path).unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()))
}

/// A JSON blob of fixture `name` (a manifest, index or config) by digest.
pub fn fixture_json(name: &str, digest: &str) -> serde_json::Value {
    serde_json::from_slice(&fixture_blob(name, digest))
        .unwrap_or_else(|e| panic!("fixture {name} blob {digest} is not JSON: {e}"))
}

/// `Basic base64(user:pass)`.
pub fn basic_auth(user: &str, pass: &str) -> String {
    format!("Basic {}", base64(format!("{user}:{pass}").as_bytes()))
}

fn base64(data: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(data.len().div_ceil(3) * 4);
    for chunk in data.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(ALPHABET[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// A response read in full.
#[derive(Debug)]
pub struct HttpResponse {
    pub status: u16,
    pub headers: http::HeaderMap,
    pub body: Bytes,
}

impl HttpResponse {
    /// A header's value, if present and valid UTF-8.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    pub fn json(&self) -> Result<serde_json::Value> {
        serde_json::from_slice(&self.body).context("response body is not JSON")
    }
}

/// One HTTP/1.1 request to `addr` ("127.0.0.1:PORT") on a fresh connection,
/// the whole exchange bounded by `timeout`. Callable from sync code and from
/// inside a tokio runtime alike: it runs on a scoped thread with its own
/// current-thread runtime.
pub fn http_request(
    addr: &str,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    timeout: Duration,
) -> Result<HttpResponse> {
    std::thread::scope(|s| {
        s.spawn(|| {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .context("cannot build a tokio runtime")?;
            rt.block_on(http_request_async(addr, method, path, headers, timeout))
        })
        .join()
        .map_err(|_| anyhow!("HTTP client thread panicked"))?
    })
}

/// Async form of [`http_request`].
pub async fn http_request_async(
    addr: &str,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    timeout: Duration,
) -> Result<HttpResponse> {
    let exchange = async {
        let stream = tokio::net::TcpStream::connect(addr)
            .await
            .with_context(|| format!("connect {addr}"))?;
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .context("HTTP handshake")?;
        let conn = tokio::spawn(conn);
        let mut req = http::Request::builder()
            .method(method)
            .uri(path)
            .header("Host", addr)
            .header("User-Agent", "vmpod-tests");
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        let req = req
            .body(Empty::<Bytes>::new())
            .context("building HTTP request")?;
        let resp = sender.send_request(req).await.context("sending request")?;
        let status = resp.status().as_u16();
        let headers = resp.headers().clone();
        let body = resp
            .into_body()
            .collect()
            .await
            .context("reading response body")?
            .to_bytes();
        conn.abort();
        Ok(HttpResponse {
            status,
            headers,
            body,
        })
    };
    tokio::time::timeout(timeout, exchange)
        .await
        .map_err(|_| anyhow!("{method} http://{addr}{path} timed out after {timeout:?}"))?
}

/// A one-layer linux/amd64 image made by a test, for [`push_generated_image`].
pub struct GeneratedImage<'a> {
    /// "repo:tag" to push it as.
    pub repo_tag: &'a str,
    /// The layer blob as the registry will serve it (compressed or not).
    pub layer: &'a Path,
    /// Its media type, e.g. `application/vnd.oci.image.layer.v1.tar+gzip`.
    pub media_type: &'a str,
    /// `sha256:<hex>` of the uncompressed tar, for the config's diff_ids.
    pub diff_id: &'a str,
}

/// Pushes `image` to `reg` the way fixtures are pushed (an OCI layout and
/// `skopeo copy`), so a test can serve a layer it generated, say one too
/// big to keep in git. The layer file is hard-linked into the layout when
/// it can be, so a big blob is not copied. Returns the layer's digest.
pub fn push_generated_image(reg: &Registry, image: &GeneratedImage<'_>) -> Result<String> {
    fn sha256_hex(data: &mut dyn io::Read) -> Result<String> {
        let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
        let mut buf = vec![0u8; 1 << 20];
        loop {
            let n = data.read(&mut buf).context("reading a blob to hash it")?;
            if n == 0 {
                break;
            }
            ctx.update(&buf[..n]);
        }
        Ok(ctx
            .finish()
            .as_ref()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect())
    }
    let layouts = tempfile::Builder::new()
        .prefix("vmpod-generated-")
        .tempdir()
        .context("cannot create a layout dir")?;
    let name = "generated";
    let blobs = layouts.path().join(name).join("blobs/sha256");
    std::fs::create_dir_all(&blobs).context("cannot create the layout's blobs dir")?;
    let put = |bytes: &[u8]| -> Result<(String, usize)> {
        let hex = sha256_hex(&mut &bytes[..])?;
        std::fs::write(blobs.join(&hex), bytes).context("cannot write a layout blob")?;
        Ok((format!("sha256:{hex}"), bytes.len()))
    };
    let mut file = std::fs::File::open(image.layer)
        .with_context(|| format!("cannot open layer {}", image.layer.display()))?;
    let layer_hex = sha256_hex(&mut file)?;
    let layer_size = file.metadata().context("stat layer")?.len();
    let layer_blob = blobs.join(&layer_hex);
    if std::fs::hard_link(image.layer, &layer_blob).is_err() {
        std::fs::copy(image.layer, &layer_blob).context("cannot copy the layer into the layout")?;
    }
    let config = serde_json::json!({
        "architecture": "amd64", "os": "linux", "config": {},
        "rootfs": {"type": "layers", "diff_ids": [image.diff_id]},
    });
    let (config_digest, config_size) = put(&serde_json::to_vec(&config)?)?;
    let layer_digest = format!("sha256:{layer_hex}");
    let manifest = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                   "digest": config_digest, "size": config_size},
        "layers": [{"mediaType": image.media_type, "digest": layer_digest, "size": layer_size}],
    });
    let (manifest_digest, manifest_size) = put(&serde_json::to_vec(&manifest)?)?;
    let index = serde_json::json!({
        "schemaVersion": 2,
        "manifests": [{
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "digest": manifest_digest, "size": manifest_size,
            "annotations": {"org.opencontainers.image.ref.name": name},
        }],
    });
    std::fs::write(
        layouts.path().join(name).join("index.json"),
        serde_json::to_vec(&index)?,
    )
    .context("cannot write index.json")?;
    std::fs::write(
        layouts.path().join(name).join("oci-layout"),
        br#"{"imageLayoutVersion":"1.0.0"}"#,
    )
    .context("cannot write oci-layout")?;
    reg.push_fixture(layouts.path(), name, image.repo_tag);
    Ok(layer_digest)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_matches_rfc4648() {
        for (input, want) in [
            ("", ""),
            ("f", "Zg=="),
            ("fo", "Zm8="),
            ("foo", "Zm9v"),
            ("foob", "Zm9vYg=="),
            ("fooba", "Zm9vYmE="),
            ("foobar", "Zm9vYmFy"),
        ] {
            assert_eq!(base64(input.as_bytes()), want);
        }
    }

    #[test]
    fn token_server_helpers() {
        assert_eq!(
            percent_decode("repository%3Aa%2Fb%3Apull%2Cpush+x%zz"),
            "repository:a/b:pull,push x%zz"
        );
        assert_eq!(
            parse_scope("repository:a/b:pull,push"),
            Some(("a/b".to_string(), vec!["pull".into(), "push".into()]))
        );
        assert_eq!(parse_scope("registry:catalog:*"), None);
        assert_eq!(
            parse_basic("Basic cHVsbGVyOnMzY3JldA=="),
            Some(("puller".into(), "s3cret".into()))
        );
        assert_eq!(parse_basic("Bearer x"), None);
        // Long DER lengths use the 0x8N form.
        assert_eq!(&der(0x04, &[0; 300])[..4], &[0x04, 0x82, 0x01, 0x2c]);
        // libtrust ids: 12 groups of 4 base32 characters.
        let id = libtrust_key_id(b"any key");
        let groups: Vec<&str> = id.split(':').collect();
        assert_eq!(groups.len(), 12, "{id}");
        assert!(groups.iter().all(|g| {
            g.len() == 4
                && g.bytes()
                    .all(|b| b.is_ascii_uppercase() || (b'2'..=b'7').contains(&b))
        }));
    }

    #[test]
    fn parses_access_log_lines() {
        let line = r#"127.0.0.1 - - [25/Nov/2026:06:53:25 +0000] "GET /v2/busybox/blobs/sha256:00df HTTP/1.1" 200 1234 "" "skopeo/1.9.3""#;
        assert_eq!(
            parse_access_line(line),
            Some(AccessLogEntry {
                method: "GET".into(),
                path: "/v2/busybox/blobs/sha256:00df".into(),
                status: 200
            })
        );
        let app = r#"time="2026-11-25T06:53:25Z" level=info msg="response completed" http.request.uri="/v2/" [x] "y""#;
        assert_eq!(parse_access_line(app), None);
    }
}
