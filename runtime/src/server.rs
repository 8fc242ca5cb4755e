//! `vmpod serve`: bring the daemon up, serve CRI, shut down cleanly.
//!
//! Start-up is transactional: every directory it creates is recorded, and if
//! a later step fails they are removed again, so a bad flag never leaves a
//! half-made state dir or socket dir behind.

use std::io::ErrorKind;
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context, Result, anyhow};
use tokio::net::UnixListener;
use tokio::signal::unix::{SignalKind, signal};
use tokio_stream::StreamExt;
use tokio_stream::wrappers::UnixListenerStream;
use vmpod_cri_api::{ImageServiceServer, RuntimeServiceServer};

use crate::config::Config;
use crate::cri::Cri;
use crate::daemon::Daemon;
use crate::state::Store;

/// The socket is for kubelet (root) and an operator group, nobody else.
const SOCKET_MODE: u32 = 0o660;

/// A failure before the daemon started serving: reported as one line and
/// exit code 2.
#[derive(Debug)]
pub struct StartupError(pub anyhow::Error);

/// Directories created during start-up, removed again if start-up fails.
#[derive(Default)]
struct Created(Vec<PathBuf>);

impl Created {
    /// `create_dir_all` that remembers which components were new.
    fn dir_all(&mut self, dir: &Path, mode: u32) -> Result<()> {
        let mut missing = Vec::new();
        let mut cur = Some(dir);
        while let Some(d) = cur {
            if d.exists() {
                break;
            }
            missing.push(d.to_path_buf());
            cur = d.parent();
        }
        for d in missing.into_iter().rev() {
            match std::fs::create_dir(&d) {
                Ok(()) => {
                    self.0.push(d.clone());
                    std::fs::set_permissions(&d, std::fs::Permissions::from_mode(mode))
                        .with_context(|| format!("cannot set mode of {}", d.display()))?;
                }
                Err(e) if e.kind() == ErrorKind::AlreadyExists => {}
                Err(e) => return Err(e).with_context(|| format!("cannot create {}", d.display())),
            }
        }
        if !dir.is_dir() {
            return Err(anyhow!("{} exists and is not a directory", dir.display()));
        }
        Ok(())
    }

    fn roll_back(self) {
        for d in self.0.into_iter().rev() {
            if let Err(e) = std::fs::remove_dir_all(&d) {
                tracing::warn!(dir = %d.display(), error = %e, "cannot remove directory created during failed start-up");
            }
        }
    }
}

/// A bound CRI socket that removes its file when dropped, but only if the
/// file is still the one we bound (another daemon may have replaced it).
struct BoundSocket {
    path: PathBuf,
    inode: u64,
}

impl Drop for BoundSocket {
    fn drop(&mut self) {
        if std::fs::symlink_metadata(&self.path).is_ok_and(|m| m.ino() == self.inode) {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

pub async fn serve(config: Config) -> Result<(), StartupError> {
    let mut created = Created::default();
    let started = start(&config, &mut created).await;
    let (listener, socket, daemon) = match started {
        Ok(v) => v,
        Err(e) => {
            created.roll_back();
            return Err(StartupError(e));
        }
    };
    tracing::info!(
        socket = %config.socket,
        state_dir = %config.state_dir,
        version = env!("CARGO_PKG_VERSION"),
        "vmpod serving CRI v1"
    );

    let admin = crate::admin::Admin::new(daemon.clone());
    let cri = Cri::new(daemon);
    let result = tonic::transport::Server::builder()
        .add_service(RuntimeServiceServer::new(cri.clone()))
        .add_service(ImageServiceServer::new(cri))
        .add_service(crate::admin::v1::images_server::ImagesServer::new(admin))
        .serve_with_incoming_shutdown(
            UnixListenerStream::new(listener).map(|conn| conn.map(crate::authority::relay)),
            shutdown_signal(),
        )
        .await;
    drop(socket);
    match result {
        Ok(()) => {
            tracing::info!("vmpod stopped");
            Ok(())
        }
        // Serving errors after start-up are not start-up errors, but the
        // caller's exit-code mapping is the same single line.
        Err(e) => Err(StartupError(anyhow!("CRI server failed: {e}"))),
    }
}

async fn start(
    config: &Config,
    created: &mut Created,
) -> Result<(UnixListener, BoundSocket, Arc<Daemon>)> {
    let state_dir = config.state_dir.as_path();
    let len = state_dir.as_os_str().len();
    if len > crate::sandbox::MAX_STATE_DIR_LEN {
        return Err(anyhow!(
            "state dir {} is {len} bytes long; at most {} fit, because pod sockets below it must fit a unix socket path",
            state_dir.display(),
            crate::sandbox::MAX_STATE_DIR_LEN
        ));
    }
    created
        .dir_all(state_dir, 0o711)
        .with_context(|| format!("state dir {}", state_dir.display()))?;
    let store = Store::open(state_dir)?;

    let socket_path = config.socket.as_path();
    let socket_dir = socket_path
        .parent()
        .ok_or_else(|| anyhow!("socket path {} has no parent dir", socket_path.display()))?;
    created
        .dir_all(socket_dir, 0o755)
        .with_context(|| format!("socket dir for {}", socket_path.display()))?;
    remove_stale_socket(socket_path)?;
    let listener = UnixListener::bind(socket_path)
        .with_context(|| format!("cannot bind CRI socket {}", socket_path.display()))?;
    let meta = std::fs::metadata(socket_path)
        .with_context(|| format!("cannot stat {}", socket_path.display()))?;
    let bound = BoundSocket {
        path: socket_path.to_path_buf(),
        inode: meta.ino(),
    };
    std::fs::set_permissions(socket_path, std::fs::Permissions::from_mode(SOCKET_MODE))
        .with_context(|| format!("cannot set mode of {}", socket_path.display()))?;

    let daemon = Arc::new(Daemon {
        config: Arc::new(config.clone()),
        store,
        sandboxes: Default::default(),
        containers: Default::default(),
        content: crate::image::ContentStore::open(&state_dir.join("images"))
            .map_err(|e| anyhow!("image store: {e}"))?,
        streaming: crate::stream::StreamServer::start(&config.streaming).await?,
    });
    crate::sandbox::recover::recover(&daemon)
        .await
        .map_err(|e| anyhow!("restart recovery: {e}"))?;
    Ok((listener, bound, daemon))
}

/// Replaces a socket file left by a daemon that died, but never one that a
/// live process still serves, and never a file that is not a socket.
fn remove_stale_socket(path: &Path) -> Result<()> {
    let meta = match std::fs::symlink_metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e).with_context(|| format!("cannot stat {}", path.display())),
    };
    if !meta.file_type().is_socket() {
        return Err(anyhow!(
            "{} exists and is not a socket; refusing to replace it",
            path.display()
        ));
    }
    match std::os::unix::net::UnixStream::connect(path) {
        Ok(_) => Err(anyhow!(
            "socket {} is in use by another process (is another vmpod running?)",
            path.display()
        )),
        Err(e) if e.kind() == ErrorKind::ConnectionRefused => {
            tracing::info!(socket = %path.display(), "replacing stale socket");
            std::fs::remove_file(path)
                .with_context(|| format!("cannot remove stale socket {}", path.display()))
        }
        Err(e) => {
            Err(e).with_context(|| format!("cannot probe existing socket {}", path.display()))
        }
    }
}

async fn shutdown_signal() {
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        tracing::error!("cannot install signal handlers; stop the daemon with SIGKILL");
        return std::future::pending().await;
    };
    let name = tokio::select! {
        _ = term.recv() => "SIGTERM",
        _ = int.recv() => "SIGINT",
    };
    tracing::info!(signal = name, "shutting down");
}
