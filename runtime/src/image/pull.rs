//! Pulling an image: resolve, download, verify, unpack, record.
//!
//! Everything from a registry is untrusted. Digests are validated before
//! they name files; every blob is hashed and sized while it streams to disk
//! and only renamed into the store when both match the manifest; every
//! layer's uncompressed stream must hash to the config's diff_id before its
//! snapshot becomes visible. A pull that fails at any point leaves the store
//! as it was, minus nothing and plus only complete, verified content.

use std::time::{Duration, Instant};

use futures_util::{StreamExt, TryStreamExt};
use oci_client::client::{ClientConfig, ClientProtocol, linux_amd64_resolver};
use oci_client::errors::{OciDistributionError, OciErrorCode};
use oci_client::manifest::{OciDescriptor, OciImageManifest};
use oci_client::secrets::RegistryAuth;
use oci_client::{Client, Reference};
use sha2::{Digest, Sha256};
use tokio::io::AsyncWriteExt;
use tokio::sync::mpsc::UnboundedSender;

use super::content::{ContentStore, chain_ids};
use super::reference::{self, validate_digest};
use super::unpack::{self, Compression};
use crate::config::RegistryConfig;
use crate::state::{ImageRecord, LayerRecord, Store};

/// Layers downloaded and unpacked at once.
const PARALLEL_LAYERS: usize = 6;
/// Configs are small JSON documents; a bigger one is hostile.
const MAX_CONFIG_BYTES: u64 = 8 << 20;

/// Credentials from the CRI request, already decoded.
#[derive(Clone, Default)]
pub struct Credentials {
    pub username: String,
    pub password: String,
    pub bearer: String,
}

impl Credentials {
    /// From CRI `AuthConfig`: username/password, the base64 `auth` field,
    /// or an identity/registry token.
    pub fn from_cri(a: &vmpod_cri_api::v1::AuthConfig) -> Result<Credentials, String> {
        let mut c = Credentials {
            username: a.username.clone(),
            password: a.password.clone(),
            bearer: if a.registry_token.is_empty() {
                a.identity_token.clone()
            } else {
                a.registry_token.clone()
            },
        };
        if !a.auth.is_empty() && c.username.is_empty() {
            use base64::Engine;
            let raw = base64::engine::general_purpose::STANDARD
                .decode(a.auth.trim())
                .map_err(|_| "auth.auth is not valid base64".to_string())?;
            let text = String::from_utf8(raw).map_err(|_| "auth.auth is not UTF-8".to_string())?;
            let (u, p) = text
                .split_once(':')
                .ok_or_else(|| "auth.auth must decode to user:password".to_string())?;
            c.username = u.to_string();
            c.password = p.to_string();
        }
        Ok(c)
    }

    fn registry_auth(&self) -> RegistryAuth {
        if !self.bearer.is_empty() {
            RegistryAuth::Bearer(self.bearer.clone())
        } else if !self.username.is_empty() {
            RegistryAuth::Basic(self.username.clone(), self.password.clone())
        } else {
            RegistryAuth::Anonymous
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum PullError {
    #[error("{0}")]
    InvalidReference(String),
    #[error("image {0} not found")]
    NotFound(String),
    #[error("authentication failed for registry {registry}: {detail}")]
    Auth { registry: String, detail: String },
    #[error("blob {digest} from {registry} failed verification: {detail}")]
    Digest {
        registry: String,
        digest: String,
        detail: String,
    },
    #[error("registry {registry} timed out after {secs} s")]
    Timeout { registry: String, secs: u64 },
    #[error("registry {registry}: {detail}")]
    Registry { registry: String, detail: String },
    #[error("image {reference}: {detail}")]
    BadImage { reference: String, detail: String },
    #[error("storing the image: {0}")]
    Store(String),
}

/// Progress of one pull, for `vmpod pull`'s bars.
#[derive(Debug, Clone)]
pub enum Progress {
    Resolved {
        reference: String,
        layers: Vec<(String, u64)>,
    },
    Layer {
        digest: String,
        done: u64,
        total: u64,
        phase: LayerPhase,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LayerPhase {
    Downloading,
    Unpacking,
    /// Already in the store.
    Exists,
    Done,
}

/// One place to pull from: a mirror or the registry itself.
struct Endpoint {
    host: String,
    plain_http: bool,
    skip_verify: bool,
    auth: RegistryAuth,
}

pub struct Puller<'a> {
    pub config: &'a RegistryConfig,
    pub content: &'a ContentStore,
    pub store: &'a Store,
    pub progress: Option<UnboundedSender<Progress>>,
}

impl Puller<'_> {
    pub async fn pull(
        &self,
        image: &str,
        creds: Option<&Credentials>,
    ) -> Result<ImageRecord, PullError> {
        let reference = reference::parse(image).map_err(PullError::InvalidReference)?;
        let endpoints = self.endpoints(&reference, creds);
        let mut failures = Vec::new();
        let count = endpoints.len();
        for (i, ep) in endpoints.into_iter().enumerate() {
            let is_origin = i + 1 == count;
            match self.pull_from(&ep, &reference).await {
                Ok(rec) => return Ok(rec),
                Err(e) if is_origin => {
                    if !failures.is_empty() {
                        tracing::warn!(image, mirrors = ?failures, "all mirrors failed");
                    }
                    return Err(e);
                }
                Err(e) => {
                    tracing::warn!(image, mirror = %ep.host, error = %e, "mirror failed, trying the next");
                    failures.push(format!("{}: {e}", ep.host));
                }
            }
        }
        Err(PullError::Registry {
            registry: reference.registry().to_string(),
            detail: "no endpoint to pull from".into(),
        })
    }

    fn endpoints(&self, r: &Reference, creds: Option<&Credentials>) -> Vec<Endpoint> {
        let registry = r.registry();
        let host_auth = |host: &str| {
            self.config
                .hosts
                .get(host)
                .and_then(|h| {
                    h.username.as_ref().map(|u| Credentials {
                        username: u.clone(),
                        password: h.password.clone().unwrap_or_default(),
                        bearer: String::new(),
                    })
                })
                .map_or(RegistryAuth::Anonymous, |c| c.registry_auth())
        };
        let mut out = Vec::new();
        let origin_cfg = self.config.hosts.get(registry);
        for m in origin_cfg.map(|h| h.mirrors.as_slice()).unwrap_or_default() {
            let mcfg = self.config.hosts.get(&m.host);
            out.push(Endpoint {
                host: m.host.clone(),
                plain_http: m.plain_http || mcfg.is_some_and(|c| c.plain_http),
                skip_verify: mcfg.is_some_and(|c| c.skip_verify),
                auth: host_auth(&m.host),
            });
        }
        out.push(Endpoint {
            host: registry.to_string(),
            plain_http: origin_cfg.is_some_and(|c| c.plain_http),
            skip_verify: origin_cfg.is_some_and(|c| c.skip_verify),
            auth: creds.map_or_else(|| host_auth(registry), Credentials::registry_auth),
        });
        out
    }

    fn client(&self, ep: &Endpoint) -> Client {
        let timeout = Duration::from_secs(self.config.timeout_secs);
        Client::new(ClientConfig {
            protocol: if ep.plain_http {
                ClientProtocol::Http
            } else {
                ClientProtocol::Https
            },
            accept_invalid_certificates: ep.skip_verify,
            platform_resolver: Some(Box::new(linux_amd64_resolver)),
            read_timeout: Some(timeout),
            connect_timeout: Some(timeout),
            user_agent: concat!("vmpod/", env!("CARGO_PKG_VERSION")),
            ..Default::default()
        })
    }

    async fn pull_from(&self, ep: &Endpoint, origin: &Reference) -> Result<ImageRecord, PullError> {
        let started = Instant::now();
        let client = self.client(ep);
        let remote = match origin.digest() {
            Some(d) => Reference::with_digest(
                ep.host.clone(),
                origin.repository().to_string(),
                d.to_string(),
            ),
            None => Reference::with_tag(
                ep.host.clone(),
                origin.repository().to_string(),
                origin.tag().unwrap_or("latest").to_string(),
            ),
        };
        let shown = origin.whole();
        let fail = |e: OciDistributionError| self.classify(e, &ep.host, &shown);

        let (manifest, manifest_digest, list_digest) = client
            .pull_image_manifest_and_list_digest(&remote, &ep.auth)
            .await
            .map_err(fail)?;
        validate_digest(&manifest_digest).map_err(|e| bad(&shown, e))?;
        if let Some(want) = origin.digest() {
            let got = list_digest.as_deref().unwrap_or(&manifest_digest);
            if got != want {
                return Err(PullError::Digest {
                    registry: ep.host.clone(),
                    digest: want.to_string(),
                    detail: format!("manifest has digest {got}"),
                });
            }
        }
        self.emit(Progress::Resolved {
            reference: shown.clone(),
            layers: manifest
                .layers
                .iter()
                .map(|l| (l.digest.clone(), u64::try_from(l.size).unwrap_or(0)))
                .collect(),
        });

        // The config: small, verified, stored like any blob.
        let config_desc = &manifest.config;
        if u64::try_from(config_desc.size).unwrap_or(u64::MAX) > MAX_CONFIG_BYTES {
            return Err(bad(&shown, format!("config is {} bytes", config_desc.size)));
        }
        self.fetch_blob(&client, &remote, config_desc, &ep.host, false, None)
            .await?;
        let config_path = self
            .content
            .blob_path(&config_desc.digest)
            .map_err(|e| bad(&shown, e))?;
        let config_bytes = std::fs::read(&config_path)
            .map_err(|e| PullError::Store(format!("{}: {e}", config_path.display())))?;
        let config: serde_json::Value = serde_json::from_slice(&config_bytes)
            .map_err(|e| bad(&shown, format!("config is not JSON: {e}")))?;
        let diff_ids = diff_ids(&config, &manifest).map_err(|e| bad(&shown, e))?;
        let chains = chain_ids(&diff_ids);

        // Layers, a few at a time: download, verify, unpack, verify.
        let jobs: Vec<_> = manifest
            .layers
            .iter()
            .zip(diff_ids.iter().zip(chains.iter()))
            .map(|(layer, (diff_id, chain_id))| {
                self.layer(&client, &remote, layer, diff_id, chain_id, &ep.host, &shown)
            })
            .collect();
        let layers: Vec<LayerRecord> = futures_util::stream::iter(jobs)
            .buffered(PARALLEL_LAYERS)
            .try_collect()
            .await?;

        let size = u64::try_from(config_desc.size).unwrap_or(0)
            + layers.iter().map(|l| l.size).sum::<u64>();
        let rec = ImageRecord {
            id: config_desc.digest.clone(),
            repo_tags: reference::tag_name(origin).into_iter().collect(),
            blobs: std::iter::once(config_desc.digest.clone())
                .chain(layers.iter().map(|l| l.digest.clone()))
                .collect(),
            repo_digests: vec![reference::digest_name(
                origin,
                list_digest.as_deref().unwrap_or(&manifest_digest),
            )],
            manifest_digest,
            config_media_type: config_desc.media_type.clone(),
            layers,
            size,
            user: config["config"]["User"]
                .as_str()
                .unwrap_or_default()
                .to_string(),
            pulled_at: crate::clock::unix_nanos(),
        };
        let rec = self
            .store
            .put_image(&rec)
            .map_err(|e| PullError::Store(e.to_string()))?;
        tracing::info!(
            image = %shown,
            id = %rec.id,
            from = %ep.host,
            bytes = rec.size,
            ms = started.elapsed().as_millis() as u64,
            "image pulled"
        );
        Ok(rec)
    }

    /// Downloads, verifies and unpacks one layer.
    #[allow(clippy::too_many_arguments)]
    async fn layer(
        &self,
        client: &Client,
        remote: &Reference,
        layer: &OciDescriptor,
        diff_id: &str,
        chain_id: &str,
        host: &str,
        shown: &str,
    ) -> Result<LayerRecord, PullError> {
        let compression = Compression::from_media_type(&layer.media_type).ok_or_else(|| {
            bad(
                shown,
                format!("unsupported layer media type {:?}", layer.media_type),
            )
        })?;
        let record = LayerRecord {
            digest: layer.digest.clone(),
            media_type: layer.media_type.clone(),
            size: u64::try_from(layer.size).unwrap_or(0),
            diff_id: diff_id.to_string(),
            chain_id: chain_id.to_string(),
        };
        let blob_path = self
            .content
            .blob_path(&layer.digest)
            .map_err(|e| bad(shown, e))?;
        let snap_path = self
            .content
            .snapshot_path(chain_id)
            .map_err(|e| bad(shown, e))?;
        if !blob_path.is_file() && !snap_path.is_dir() {
            // Neither is here: unpack while downloading, so the two overlap.
            // Lock order is chain, then blob (inside fetch_blob).
            let _chain = self.content.lock(chain_id).await;
            if !snap_path.is_dir() {
                let tmp = self.content.snapshot_tmp().map_err(PullError::Store)?;
                let dest = tmp.path().to_path_buf();
                let (tx, rx) = tokio::sync::mpsc::channel(32);
                let unpacking = tokio::task::spawn_blocking(move || {
                    unpack::unpack(ChannelReader::new(rx), compression, &dest)
                });
                let fetched = self
                    .fetch_blob(client, remote, layer, host, true, Some(tx))
                    .await;
                let unpacked = unpacking
                    .await
                    .map_err(|e| PullError::Store(format!("unpack task failed: {e}")))?;
                // A failed download explains a failed unpack, not the reverse.
                let downloaded = fetched?;
                if downloaded {
                    let unpacked = unpacked.map_err(|e| unpack_error(e, shown, &layer.digest))?;
                    self.commit_snapshot(
                        tmp,
                        &snap_path,
                        &unpacked,
                        &layer.digest,
                        diff_id,
                        chain_id,
                    )?;
                    return Ok(record);
                }
                // Someone else stored the blob meanwhile: unpack from it.
            }
        }
        self.fetch_blob(client, remote, layer, host, true, None)
            .await?;
        self.ensure_snapshot(&layer.digest, compression, diff_id, chain_id, shown)
            .await?;
        Ok(record)
    }

    /// Checks the unpacked diff against the config and makes it visible.
    fn commit_snapshot(
        &self,
        tmp: tempfile::TempDir,
        final_path: &std::path::Path,
        unpacked: &unpack::Unpacked,
        blob_digest: &str,
        diff_id: &str,
        chain_id: &str,
    ) -> Result<(), PullError> {
        if unpacked.diff_id != diff_id {
            return Err(PullError::Digest {
                registry: String::from("(layer content)"),
                digest: blob_digest.to_string(),
                detail: format!(
                    "uncompressed layer hashes to {}, config says {diff_id}",
                    unpacked.diff_id
                ),
            });
        }
        let tmp_path = tmp.keep();
        if let Err(e) = std::fs::rename(&tmp_path, final_path) {
            let _ = std::fs::remove_dir_all(&tmp_path);
            return Err(PullError::Store(format!(
                "storing snapshot {chain_id}: {e}"
            )));
        }
        self.emit(Progress::Layer {
            digest: blob_digest.to_string(),
            done: 0,
            total: 0,
            phase: LayerPhase::Done,
        });
        Ok(())
    }

    fn emit(&self, p: Progress) {
        if let Some(tx) = &self.progress {
            let _ = tx.send(p);
        }
    }

    /// Downloads a blob into the store unless it is there already.
    async fn fetch_blob(
        &self,
        client: &Client,
        remote: &Reference,
        desc: &OciDescriptor,
        host: &str,
        report: bool,
        tee: Option<tokio::sync::mpsc::Sender<bytes::Bytes>>,
    ) -> Result<bool, PullError> {
        let digest = &desc.digest;
        let size = u64::try_from(desc.size).map_err(|_| PullError::Digest {
            registry: host.to_string(),
            digest: digest.clone(),
            detail: format!("negative size {}", desc.size),
        })?;
        let final_path = self
            .content
            .blob_path(digest)
            .map_err(|e| PullError::Digest {
                registry: host.to_string(),
                digest: digest.clone(),
                detail: e,
            })?;
        let _guard = self.content.lock(digest).await;
        if final_path.is_file() {
            if report {
                self.emit(Progress::Layer {
                    digest: digest.clone(),
                    done: size,
                    total: size,
                    phase: LayerPhase::Exists,
                });
            }
            return Ok(false);
        }
        let mut tee = tee;
        let tmp = tempfile::Builder::new()
            .prefix("blob-")
            .tempfile_in(self.content.ingest_dir())
            .map_err(|e| PullError::Store(format!("cannot create a download file: {e}")))?;
        let (std_file, tmp_path) = tmp.into_parts();
        // Each tokio file write is a trip to the blocking pool; batching
        // registry chunks into 1 MiB writes keeps that off the hot path.
        let mut file =
            tokio::io::BufWriter::with_capacity(1 << 20, tokio::fs::File::from_std(std_file));
        let mut stream = client
            .pull_blob_stream(remote, desc)
            .await
            .map_err(|e| self.classify(e, host, &remote.whole()))?;
        let mut hasher = Sha256::new();
        let mut done: u64 = 0;
        let mut last_report = Instant::now();
        while let Some(chunk) = stream.next().await {
            let chunk = chunk.map_err(|e| {
                let text = error_chain(&e);
                if text.contains("Invalid digest")
                    || text.contains("digest") && text.contains("Expected")
                {
                    PullError::Digest {
                        registry: host.to_string(),
                        digest: digest.clone(),
                        detail: text,
                    }
                } else if text.contains("timed out") {
                    PullError::Timeout {
                        registry: host.to_string(),
                        secs: self.config.timeout_secs,
                    }
                } else {
                    PullError::Registry {
                        registry: host.to_string(),
                        detail: format!("downloading {digest}: {text}"),
                    }
                }
            })?;
            done += chunk.len() as u64;
            if done > size {
                return Err(PullError::Digest {
                    registry: host.to_string(),
                    digest: digest.clone(),
                    detail: format!(
                        "registry sent more than the {size} bytes the manifest declares"
                    ),
                });
            }
            hasher.update(&chunk);
            file.write_all(&chunk)
                .await
                .map_err(|e| PullError::Store(format!("writing blob {digest}: {e}")))?;
            // An unpacker that stopped early has its own error to report;
            // the download still completes so the blob can be verified.
            if let Some(t) = &tee
                && t.send(chunk.clone()).await.is_err()
            {
                tee = None;
            }
            if report && last_report.elapsed() > Duration::from_millis(100) {
                last_report = Instant::now();
                self.emit(Progress::Layer {
                    digest: digest.clone(),
                    done,
                    total: size,
                    phase: LayerPhase::Downloading,
                });
            }
        }
        // End of stream for the unpacker, which then finishes in parallel
        // with the checks and the fsync below.
        drop(tee);
        let actual = format!("sha256:{}", hex::encode(hasher.finalize()));
        if done != size || actual != *digest {
            return Err(PullError::Digest {
                registry: host.to_string(),
                digest: digest.clone(),
                detail: format!("got {done} bytes hashing to {actual}, expected {size} bytes"),
            });
        }
        file.flush()
            .await
            .map_err(|e| PullError::Store(format!("writing blob {digest}: {e}")))?;
        file.get_ref()
            .sync_data()
            .await
            .map_err(|e| PullError::Store(format!("syncing blob {digest}: {e}")))?;
        drop(file);
        tmp_path
            .persist(&final_path)
            .map_err(|e| PullError::Store(format!("storing blob {digest}: {e}")))?;
        if report {
            self.emit(Progress::Layer {
                digest: digest.clone(),
                done,
                total: size,
                phase: LayerPhase::Downloading,
            });
        }
        Ok(true)
    }

    async fn ensure_snapshot(
        &self,
        blob_digest: &str,
        compression: Compression,
        diff_id: &str,
        chain_id: &str,
        display: &str,
    ) -> Result<(), PullError> {
        let final_path = self
            .content
            .snapshot_path(chain_id)
            .map_err(|e| bad(display, e))?;
        let _guard = self.content.lock(chain_id).await;
        if final_path.is_dir() {
            self.emit(Progress::Layer {
                digest: blob_digest.to_string(),
                done: 0,
                total: 0,
                phase: LayerPhase::Done,
            });
            return Ok(());
        }
        self.emit(Progress::Layer {
            digest: blob_digest.to_string(),
            done: 0,
            total: 0,
            phase: LayerPhase::Unpacking,
        });
        let blob = self
            .content
            .blob_path(blob_digest)
            .map_err(|e| bad(display, e))?;
        let tmp = self.content.snapshot_tmp().map_err(PullError::Store)?;
        let dest = tmp.path().to_path_buf();
        let file = std::fs::File::open(&blob)
            .map_err(|e| PullError::Store(format!("{}: {e}", blob.display())))?;
        let unpacked = tokio::task::spawn_blocking(move || {
            let reader = std::io::BufReader::with_capacity(1 << 20, file);
            unpack::unpack(reader, compression, &dest)
        })
        .await
        .map_err(|e| PullError::Store(format!("unpack task failed: {e}")))?
        .map_err(|e| unpack_error(e, display, blob_digest))?;
        self.commit_snapshot(tmp, &final_path, &unpacked, blob_digest, diff_id, chain_id)
    }

    fn classify(&self, e: OciDistributionError, host: &str, image: &str) -> PullError {
        let registry = host.to_string();
        match e {
            OciDistributionError::ImageManifestNotFoundError(_) => {
                PullError::NotFound(image.to_string())
            }
            OciDistributionError::RegistryError { envelope, .. } => {
                let codes: Vec<_> = envelope.errors.iter().map(|e| &e.code).collect();
                if codes.iter().any(|c| {
                    matches!(
                        c,
                        OciErrorCode::ManifestUnknown
                            | OciErrorCode::NameUnknown
                            | OciErrorCode::BlobUnknown
                    )
                }) {
                    PullError::NotFound(image.to_string())
                } else if codes
                    .iter()
                    .any(|c| matches!(c, OciErrorCode::Unauthorized | OciErrorCode::Denied))
                {
                    PullError::Auth {
                        registry,
                        detail: format!("{:?}", envelope.errors),
                    }
                } else {
                    PullError::Registry {
                        registry,
                        detail: format!("{:?}", envelope.errors),
                    }
                }
            }
            OciDistributionError::ServerError { code: 404, .. } => {
                PullError::NotFound(image.to_string())
            }
            OciDistributionError::ServerError {
                code: 401 | 403,
                message,
                ..
            } => PullError::Auth {
                registry,
                detail: message,
            },
            OciDistributionError::UnauthorizedError { url } => PullError::Auth {
                registry,
                detail: format!("unauthorized at {url}"),
            },
            OciDistributionError::AuthenticationFailure(d) => PullError::Auth {
                registry,
                detail: d,
            },
            OciDistributionError::DigestError(d) => PullError::Digest {
                registry,
                digest: String::new(),
                detail: d.to_string(),
            },
            OciDistributionError::RequestError(r) if r.is_timeout() => PullError::Timeout {
                registry,
                secs: self.config.timeout_secs,
            },
            other => {
                // reqwest reports a read timeout deep in the source chain.
                let text = error_chain(&other);
                if text.contains("timed out") {
                    PullError::Timeout {
                        registry,
                        secs: self.config.timeout_secs,
                    }
                } else {
                    PullError::Registry {
                        registry,
                        detail: text,
                    }
                }
            }
        }
    }
}

/// Our disk filling up is a store error, not the image's fault; anything
/// else wrong with a layer is the image's.
fn unpack_error(e: unpack::UnpackError, shown: &str, blob_digest: &str) -> PullError {
    if out_of_space(&e) {
        PullError::Store(format!("unpacking layer {blob_digest}: {e}"))
    } else {
        bad(shown, format!("layer {blob_digest}: {e}"))
    }
}

/// Feeds a layer's bytes from the download to the blocking unpacker.
struct ChannelReader {
    rx: tokio::sync::mpsc::Receiver<bytes::Bytes>,
    current: bytes::Bytes,
}

impl ChannelReader {
    fn new(rx: tokio::sync::mpsc::Receiver<bytes::Bytes>) -> Self {
        Self {
            rx,
            current: bytes::Bytes::new(),
        }
    }
}

impl std::io::Read for ChannelReader {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        while self.current.is_empty() {
            match self.rx.blocking_recv() {
                Some(chunk) => self.current = chunk,
                None => return Ok(0),
            }
        }
        let n = buf.len().min(self.current.len());
        buf[..n].copy_from_slice(&self.current.split_to(n));
        Ok(n)
    }
}

/// ENOSPC or EDQUOT anywhere in the error's causes.
fn out_of_space(e: &(dyn std::error::Error + 'static)) -> bool {
    let mut cur = Some(e);
    while let Some(err) = cur {
        if let Some(io) = err.downcast_ref::<std::io::Error>()
            && matches!(io.raw_os_error(), Some(libc::ENOSPC) | Some(libc::EDQUOT))
        {
            return true;
        }
        cur = err.source();
    }
    false
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut src = e.source();
    while let Some(inner) = src {
        s.push_str(": ");
        s.push_str(&inner.to_string());
        src = inner.source();
    }
    s
}

fn bad(reference: &str, detail: impl Into<String>) -> PullError {
    PullError::BadImage {
        reference: reference.to_string(),
        detail: detail.into(),
    }
}

/// The config's diff_ids, one per manifest layer, each a valid digest.
fn diff_ids(
    config: &serde_json::Value,
    manifest: &OciImageManifest,
) -> Result<Vec<String>, String> {
    let ids: Vec<String> = config["rootfs"]["diff_ids"]
        .as_array()
        .ok_or("config has no rootfs.diff_ids")?
        .iter()
        .map(|v| {
            v.as_str()
                .map(str::to_string)
                .ok_or("a diff_id is not a string")
        })
        .collect::<Result<_, _>>()?;
    if ids.len() != manifest.layers.len() {
        return Err(format!(
            "config lists {} diff_ids for {} layers",
            ids.len(),
            manifest.layers.len()
        ));
    }
    for d in ids.iter().chain(manifest.layers.iter().map(|l| &l.digest)) {
        validate_digest(d)?;
    }
    if let Some(os) = config["os"].as_str()
        && os != "linux"
    {
        return Err(format!("image is for {os}, pods run linux"));
    }
    Ok(ids)
}
