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
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::TokioIo;
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
    creds: Option<(String, String)>,
    log: PathBuf,
    dir: TempDir,
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
        Self::try_start(None).unwrap_or_else(|e| panic!("starting docker-registry: {e:#}"))
    }

    /// Starts a registry that demands HTTP basic auth as `user`/`pass`
    /// (htpasswd backend). Anonymous requests get 401 with
    /// `WWW-Authenticate: Basic realm="vmpod-test"`.
    pub fn start_with_htpasswd(user: &str, pass: &str) -> Registry {
        Self::try_start(Some((user, pass)))
            .unwrap_or_else(|e| panic!("starting docker-registry with htpasswd: {e:#}"))
    }

    fn try_start(creds: Option<(&str, &str)>) -> Result<Registry> {
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

        let auth = match creds {
            None => String::new(),
            Some((user, pass)) => {
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
            creds: creds.map(|(u, p)| (u.to_string(), p.to_string())),
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

    /// The credentials given to `start_with_htpasswd`, if any.
    pub fn creds(&self) -> Option<(&str, &str)> {
        self.creds.as_ref().map(|(u, p)| (u.as_str(), p.as_str()))
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
        if let Some((user, pass)) = &self.creds {
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

    /// A request to this registry, with basic auth when it has credentials.
    pub fn request(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
    ) -> Result<HttpResponse> {
        let mut all: Vec<(&str, String)> =
            headers.iter().map(|(k, v)| (*k, v.to_string())).collect();
        if let Some((user, pass)) = &self.creds {
            all.push(("Authorization", basic_auth(user, pass)));
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
    // JSON strings are valid YAML double-quoted scalars.
    serde_json::to_string(&p.to_string_lossy()).expect("a string serializes")
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
