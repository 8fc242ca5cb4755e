//! Pulling an image: resolve, download, verify, unpack, record.
//!
//! Everything from a registry is untrusted. Digests are validated before
//! they name files; every blob is hashed and sized while it streams in, and
//! nothing made from it becomes visible unless both match the manifest: a
//! config is renamed into `blobs/`, a layer (which streams straight into
//! its unpack and is not kept compressed) must also hash to the config's
//! diff_id before its snapshot is renamed into `snapshots/`. Data is
//! durable before each rename, and the renames before the image record. A
//! pull that fails at any point leaves the store as it was, minus nothing
//! and plus only complete, verified content. A layer that decompresses past
//! the `registry.max-*` limits (see `unpack::Limits`) fails the pull with
//! [`PullError::Limit`], RESOURCE_EXHAUSTED, before it can fill the disk.

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
use super::error::PullError;
use super::reference::{self, validate_digest};
use super::unpack::{self, Compression, ImageBytes, Limits};
use crate::config::RegistryConfig;
use crate::state::{ImageRecord, LayerRecord, Store};

/// Layers downloaded and unpacked at once.
const PARALLEL_LAYERS: usize = 6;
/// Configs are small JSON documents; a bigger one is hostile.
const MAX_CONFIG_BYTES: u64 = 8 << 20;

/// Registry credentials, already decoded from the request.
#[derive(Clone, Default)]
pub struct Credentials {
    pub username: String,
    pub password: String,
    pub bearer: String,
    /// A refresh token, exchanged at the registry's realm ([`super::token`]).
    pub identity_token: String,
}

impl Credentials {
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
    /// Exchanged for `auth` just before the pull.
    identity_token: Option<String>,
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
                        identity_token: String::new(),
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
                identity_token: None,
            });
        }
        out.push(Endpoint {
            host: registry.to_string(),
            plain_http: origin_cfg.is_some_and(|c| c.plain_http),
            skip_verify: origin_cfg.is_some_and(|c| c.skip_verify),
            auth: creds.map_or_else(|| host_auth(registry), Credentials::registry_auth),
            identity_token: creds
                .map(|c| c.identity_token.clone())
                .filter(|t| !t.is_empty()),
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
        let exchanged;
        let ep = match &ep.identity_token {
            Some(refresh) => {
                let access = super::token::exchange(
                    &ep.host,
                    ep.plain_http,
                    ep.skip_verify,
                    Duration::from_secs(self.config.timeout_secs),
                    origin.repository(),
                    refresh,
                )
                .await?;
                exchanged = Endpoint {
                    host: ep.host.clone(),
                    plain_http: ep.plain_http,
                    skip_verify: ep.skip_verify,
                    auth: RegistryAuth::Bearer(access),
                    identity_token: None,
                };
                &exchanged
            }
            None => ep,
        };
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
        self.fetch_blob(&client, &remote, config_desc, &ep.host)
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
        // One budget for all layers of this pull, which unpack in parallel.
        let image_bytes = std::sync::Arc::new(ImageBytes::new(self.config.max_image_bytes));

        // Layers, a few at a time: download, verify, unpack, verify.
        let jobs: Vec<_> = manifest
            .layers
            .iter()
            .zip(diff_ids.iter().zip(chains.iter()))
            .map(|(layer, (diff_id, chain_id))| {
                let limits = Limits {
                    max_layer_entries: self.config.max_layer_entries,
                    max_layer_bytes: self.config.max_layer_bytes,
                    max_path_length: self.config.max_path_length,
                    max_path_depth: self.config.max_path_depth,
                    image: image_bytes.clone(),
                };
                self.layer(
                    &client, &remote, layer, diff_id, chain_id, &ep.host, &shown, limits,
                )
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
        // Every blob and snapshot is durable before its rename; the renames
        // themselves are before the record that names them.
        self.content
            .sync_dirs()
            .await
            .map_err(|e| PullError::Store(format!("syncing the image store: {e}")))?;
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

    /// Downloads, verifies and unpacks one layer into its snapshot.
    ///
    /// The compressed blob is not kept (containerd's
    /// `discard_unpacked_layers`): nothing in vmpod reads a layer blob once
    /// its snapshot exists, and writing it would double the disk traffic of
    /// every pull. The bytes are hashed as they stream to the unpacker, and
    /// the snapshot is committed only when both the blob digest (and size)
    /// and the uncompressed diff_id match. A later image with the same
    /// stack of layers reuses the snapshot by chain id; one that has the
    /// same layer on another parent downloads it again, as it would have to
    /// unpack it again anyway.
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
        limits: Limits,
    ) -> Result<LayerRecord, PullError> {
        let compression = Compression::from_media_type(&layer.media_type).ok_or_else(|| {
            bad(
                shown,
                format!("unsupported layer media type {:?}", layer.media_type),
            )
        })?;
        let size = u64::try_from(layer.size).map_err(|_| PullError::Digest {
            registry: host.to_string(),
            digest: layer.digest.clone(),
            detail: format!("negative size {}", layer.size),
        })?;
        let record = LayerRecord {
            digest: layer.digest.clone(),
            media_type: layer.media_type.clone(),
            size,
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
        // Concurrent pulls of images that share this stack wait here for one
        // download and unpack, then find the snapshot.
        let _chain = self.content.lock(chain_id).await;
        if snap_path.is_dir() {
            self.emit(Progress::Layer {
                digest: layer.digest.clone(),
                done: size,
                total: size,
                phase: LayerPhase::Exists,
            });
            return Ok(record);
        }
        let tmp = self.content.snapshot_tmp().map_err(PullError::Store)?;
        let dest = tmp.path().to_path_buf();
        let outcome = async move {
            let unpacked = if blob_path.is_file() {
                // A verified blob that a store written by an older vmpod
                // kept: unpack it instead of downloading it again.
                self.emit(Progress::Layer {
                    digest: layer.digest.clone(),
                    done: 0,
                    total: 0,
                    phase: LayerPhase::Unpacking,
                });
                let file = std::fs::File::open(&blob_path)
                    .map_err(|e| PullError::Store(format!("{}: {e}", blob_path.display())))?;
                tokio::task::spawn_blocking(move || {
                    let reader = std::io::BufReader::with_capacity(1 << 20, file);
                    unpack_durably(reader, compression, &dest, &limits)
                })
                .await
                .map_err(|e| PullError::Store(format!("unpack task failed: {e}")))?
            } else {
                // Unpack while downloading, so the two overlap.
                let (tx, rx) = tokio::sync::mpsc::channel(32);
                let unpacking = tokio::task::spawn_blocking(move || {
                    unpack_durably(ChannelReader::new(rx), compression, &dest, &limits)
                });
                let fetched = self
                    .download(
                        client,
                        remote,
                        layer,
                        host,
                        &mut Sink::Unpacker(Some(tx)),
                        true,
                    )
                    .await;
                let unpacked = unpacking
                    .await
                    .map_err(|e| PullError::Store(format!("unpack task failed: {e}")))?;
                // A failed download explains a failed unpack, not the reverse.
                fetched?;
                unpacked
            };
            unpacked.map_err(|e| match e {
                Durability::Unpack(e) => unpack_error(e, shown, &layer.digest),
                Durability::Sync(e) => {
                    PullError::Store(format!("syncing snapshot of layer {}: {e}", layer.digest))
                }
            })
        }
        .await;
        let unpacked = match outcome {
            Ok(u) => u,
            Err(e) => {
                // A layer stopped at a limit can leave up to that many inodes
                // behind; deleting them is blocking work, kept off the
                // runtime's threads.
                let _ = tokio::task::spawn_blocking(move || drop(tmp)).await;
                return Err(e);
            }
        };
        self.commit_snapshot(tmp, &snap_path, &unpacked, &layer.digest, diff_id, chain_id)?;
        Ok(record)
    }

    /// Checks the unpacked diff against the config and makes it visible.
    /// Its data is already durable ([`unpack_durably`]), so the rename can
    /// only ever expose a complete snapshot.
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

    /// Downloads a blob that is kept (the config) into the store unless it
    /// is there already: into `ingest/`, verified, fsync-ed, then renamed.
    async fn fetch_blob(
        &self,
        client: &Client,
        remote: &Reference,
        desc: &OciDescriptor,
        host: &str,
    ) -> Result<(), PullError> {
        let digest = &desc.digest;
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
            return Ok(());
        }
        let tmp = tempfile::Builder::new()
            .prefix("blob-")
            .tempfile_in(self.content.ingest_dir())
            .map_err(|e| PullError::Store(format!("cannot create a download file: {e}")))?;
        let (std_file, tmp_path) = tmp.into_parts();
        // Each tokio file write is a trip to the blocking pool; batching
        // registry chunks into 1 MiB writes keeps that off the hot path.
        let mut sink = Sink::File(tokio::io::BufWriter::with_capacity(
            1 << 20,
            tokio::fs::File::from_std(std_file),
        ));
        self.download(client, remote, desc, host, &mut sink, false)
            .await?;
        let Sink::File(mut file) = sink else {
            unreachable!("the sink stays a file");
        };
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
        Ok(())
    }

    /// Streams a blob from the registry into `sink`, counting it on the
    /// way; an error unless it is exactly the descriptor's size and digest.
    /// For an unpacker sink the stream is closed at the end, so the
    /// unpacker finishes while the digest is checked.
    ///
    /// The digest is checked twice over for a blob that is kept (a config,
    /// small): by oci-client and by us. A layer stream is hashed only once,
    /// by oci-client: `pull_blob_stream` always wraps the body in its
    /// `VerifyingStream`, which ends cleanly only when the digest of
    /// everything it yielded matches the descriptor and otherwise yields an
    /// error as its last item, so a layer whose stream ends without error
    /// has verified. Hashing it again here cost a sixth of a pull's CPU,
    /// and what is committed from a layer is bound to the (verified) config
    /// by its diff_id besides. `corrupt_blob_is_refused_and_a_retry_succeeds`
    /// in the end-to-end tests would notice if oci-client stopped checking.
    async fn download(
        &self,
        client: &Client,
        remote: &Reference,
        desc: &OciDescriptor,
        host: &str,
        sink: &mut Sink,
        report: bool,
    ) -> Result<(), PullError> {
        let digest = &desc.digest;
        let size = u64::try_from(desc.size).map_err(|_| PullError::Digest {
            registry: host.to_string(),
            digest: digest.clone(),
            detail: format!("negative size {}", desc.size),
        })?;
        let mut stream = client
            .pull_blob_stream(remote, desc)
            .await
            .map_err(|e| self.classify(e, host, &remote.whole()))?;
        let mut hasher = matches!(sink, Sink::File(_)).then(Sha256::new);
        let mut done: u64 = 0;
        let mut last_report = Instant::now();
        while let Some(chunk) = stream.next().await {
            let chunk = chunk.map_err(|e| self.stream_error(&e, host, digest))?;
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
            if let Some(h) = &mut hasher {
                h.update(&chunk);
            }
            match sink {
                Sink::File(file) => file
                    .write_all(&chunk)
                    .await
                    .map_err(|e| PullError::Store(format!("writing blob {digest}: {e}")))?,
                // An unpacker that stopped early has its own error to
                // report; the download still completes, so that a blob
                // that does not verify is reported as such.
                Sink::Unpacker(tx) => {
                    if let Some(t) = tx
                        && t.send(chunk).await.is_err()
                    {
                        *tx = None;
                    }
                }
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
        if let Sink::Unpacker(tx) = sink {
            *tx = None;
        }
        if done != size {
            return Err(PullError::Digest {
                registry: host.to_string(),
                digest: digest.clone(),
                detail: format!("got {done} bytes, expected {size}"),
            });
        }
        if let Some(h) = hasher {
            let actual = format!("sha256:{}", hex::encode(h.finalize()));
            if actual != *digest {
                return Err(PullError::Digest {
                    registry: host.to_string(),
                    digest: digest.clone(),
                    detail: format!("{done} bytes hashing to {actual}"),
                });
            }
        }
        if report {
            self.emit(Progress::Layer {
                digest: digest.clone(),
                done,
                total: size,
                phase: LayerPhase::Downloading,
            });
        }
        Ok(())
    }

    /// An error in the middle of a blob's body.
    fn stream_error(&self, e: &dyn std::error::Error, host: &str, digest: &str) -> PullError {
        let text = error_chain(e);
        if text.contains("Invalid digest") || text.contains("digest") && text.contains("Expected") {
            PullError::Digest {
                registry: host.to_string(),
                digest: digest.to_string(),
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
    if let unpack::UnpackError::Limit { .. } = e {
        PullError::Limit {
            reference: shown.to_string(),
            digest: blob_digest.to_string(),
            detail: e.to_string(),
        }
    } else if out_of_space(&e) {
        PullError::Store(format!("unpacking layer {blob_digest}: {e}"))
    } else {
        bad(shown, format!("layer {blob_digest}: {e}"))
    }
}

/// Where [`Puller::download`] puts a blob's bytes.
enum Sink {
    /// The ingest file of a blob that is kept (configs).
    File(tokio::io::BufWriter<tokio::fs::File>),
    /// A layer's unpacker; `None` once it has stopped reading or the
    /// stream has ended.
    Unpacker(Option<tokio::sync::mpsc::Sender<bytes::Bytes>>),
}

enum Durability {
    Unpack(unpack::UnpackError),
    Sync(std::io::Error),
}

/// Unpacks a layer into `dest` and makes all of it durable, so that the
/// rename that publishes it can never expose files whose data a crash lost.
///
/// One `syncfs` per layer instead of an fsync per file: a layer can hold
/// thousands of files, and each fsync is a journal commit. The unpacker
/// has already started writeback of every file it wrote
/// (`sync_file_range(SYNC_FILE_RANGE_WRITE)`), so the disk has been busy
/// while the rest of the layer streamed in and this mostly waits for the
/// tail. syncfs also flushes whatever else is dirty on the store's
/// filesystem; that is the price of not tracking every file.
fn unpack_durably(
    reader: impl std::io::Read,
    compression: Compression,
    dest: &std::path::Path,
    limits: &Limits,
) -> Result<unpack::Unpacked, Durability> {
    let unpacked = unpack::unpack(reader, compression, dest, limits).map_err(Durability::Unpack)?;
    super::content::sync_filesystem(dest).map_err(Durability::Sync)?;
    Ok(unpacked)
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
