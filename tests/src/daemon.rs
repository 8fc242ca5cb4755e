//! Starting a real `vmpod serve` on a private socket and state dir.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use tempfile::TempDir;
use tonic::transport::{Channel, Endpoint};
use vmpod_cri_api::{ImageServiceClient, RuntimeServiceClient};

/// Pulls `image` (no auth, no sandbox config), as kubelet does for a pod's
/// first container; returns the image ref.
pub async fn pull(
    images: &mut ImageServiceClient<Channel>,
    image: &str,
) -> std::result::Result<String, tonic::Status> {
    images
        .pull_image(vmpod_cri_api::v1::PullImageRequest {
            image: Some(vmpod_cri_api::v1::ImageSpec {
                image: image.to_owned(),
                ..Default::default()
            }),
            auth: None,
            sandbox_config: None,
        })
        .await
        .map(|r| r.into_inner().image_ref)
}

/// The workspace root.
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ has a parent")
        .to_path_buf()
}

/// Path of a workspace binary, built once per test process.
///
/// Cargo only builds a package's own binaries for its integration tests, so
/// the harness runs `cargo build` for the others. Cargo releases its lock
/// before running tests, so this does not deadlock, and it is a no-op when
/// the binaries are fresh.
pub fn binary(name: &str) -> PathBuf {
    static BUILT: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    let dir = BUILT
        .get_or_init(|| {
            let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
            let status = Command::new(cargo)
                .args(["build", "--quiet", "-p", "vmpod", "-p", "vmpod-shim"])
                .current_dir(repo_root())
                .status()
                .map_err(|e| format!("cannot run cargo build: {e}"))?;
            if !status.success() {
                return Err(format!("cargo build failed: {status}"));
            }
            // target/debug/deps/this-test -> target/debug
            let exe = std::env::current_exe().map_err(|e| e.to_string())?;
            exe.parent()
                .and_then(Path::parent)
                .map(Path::to_path_buf)
                .ok_or_else(|| "cannot locate target dir".to_string())
        })
        .as_ref()
        .unwrap_or_else(|e| panic!("{e}"));
    dir.join(name)
}

/// Paths of the guest image built by `images/build.sh`.
pub fn guest_kernel() -> PathBuf {
    repo_root().join("images/out/vmlinux")
}

pub fn guest_initramfs() -> PathBuf {
    repo_root().join("images/out/initramfs.cpio.gz")
}

/// A config file pointing the daemon at the workspace's guest image, so
/// tests do not depend on what is installed system-wide.
pub fn test_config(extra: &str) -> String {
    format!(
        "[vm]\nkernel = {:?}\ninitramfs = {:?}\n{extra}",
        guest_kernel(),
        guest_initramfs()
    )
}

/// A running `vmpod serve`, killed and cleaned up on drop.
pub struct Daemon {
    child: Option<Child>,
    pub socket: PathBuf,
    pub state_dir: PathBuf,
    pub log: PathBuf,
    pub dir: TempDir,
}

impl Daemon {
    /// Starts a daemon with the test config and waits until it serves.
    pub async fn start() -> Result<Daemon> {
        Self::start_with_config(&test_config("")).await
    }

    pub async fn start_with_config(config: &str) -> Result<Daemon> {
        Self::start_in(config, None).await
    }

    /// Like `start_with_config`, with the state dir at `state_dir` (say, on
    /// a small tmpfs) instead of inside the daemon's temp dir.
    pub async fn start_in(config: &str, state_dir: Option<PathBuf>) -> Result<Daemon> {
        let dir = tempfile::Builder::new().prefix("vmpod-test-").tempdir()?;
        let socket = dir.path().join("run/vmpod.sock");
        let state_dir = state_dir.unwrap_or_else(|| dir.path().join("state"));
        let config_path = dir.path().join("config.toml");
        std::fs::write(&config_path, config)?;
        let log = dir.path().join("daemon.log");
        let child = spawn_serve(&config_path, &socket, &state_dir, &log)?;
        let mut daemon = Daemon {
            child: Some(child),
            socket,
            state_dir,
            log,
            dir,
        };
        daemon.wait_serving(Duration::from_secs(20)).await?;
        Ok(daemon)
    }

    async fn wait_serving(&mut self, timeout: Duration) -> Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(child) = self.child.as_mut()
                && let Some(status) = child.try_wait()?
            {
                bail!(
                    "vmpod serve exited early with {status}:\n{}",
                    self.log_text()
                );
            }
            if tokio::net::UnixStream::connect(&self.socket).await.is_ok() {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!(
                    "vmpod serve did not listen within {timeout:?}:\n{}",
                    self.log_text()
                );
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().map_or(0, Child::id)
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub async fn runtime(&self) -> Result<RuntimeServiceClient<Channel>> {
        Ok(RuntimeServiceClient::new(connect_unix(&self.socket).await?))
    }

    pub async fn images(&self) -> Result<ImageServiceClient<Channel>> {
        Ok(ImageServiceClient::new(connect_unix(&self.socket).await?))
    }

    /// Restarts the daemon on the same socket, state dir and config (after
    /// SIGKILL if it is running), and waits until it serves again.
    pub async fn restart(&mut self) -> Result<()> {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        let log = self.dir.path().join("daemon-restarted.log");
        let child = spawn_serve(
            &self.dir.path().join("config.toml"),
            &self.socket,
            &self.state_dir,
            &log,
        )?;
        self.child = Some(child);
        self.log = log;
        self.wait_serving(Duration::from_secs(20)).await
    }

    /// Sends `signal` and waits for the daemon to exit.
    pub fn stop_with(&mut self, signal: i32, timeout: Duration) -> Result<ExitStatus> {
        let mut child = self.child.take().context("daemon already stopped")?;
        let pid = i32::try_from(child.id())?;
        // SAFETY: plain kill(2) on our own, not yet reaped, child.
        if unsafe { libc::kill(pid, signal) } != 0 {
            bail!("kill failed: {}", std::io::Error::last_os_error());
        }
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = child.try_wait()? {
                return Ok(status);
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                return Err(anyhow!(
                    "daemon did not exit within {timeout:?} of signal {signal}"
                ));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Spawns `vmpod serve` with its output in `log`.
pub fn spawn_serve(config: &Path, socket: &Path, state_dir: &Path, log: &Path) -> Result<Child> {
    let out = std::fs::File::create(log)?;
    Command::new(binary("vmpod"))
        .arg("serve")
        .arg("--config")
        .arg(config)
        .arg("--socket")
        .arg(socket)
        .arg("--state-dir")
        .arg(state_dir)
        .arg("--log-level")
        .arg("debug")
        .stdin(Stdio::null())
        .stdout(out.try_clone()?)
        .stderr(out)
        .spawn()
        .context("spawning vmpod serve")
}

/// A gRPC channel over a unix socket, the way kubelet connects.
pub async fn connect_unix(path: &Path) -> Result<Channel> {
    let path = path.to_path_buf();
    // The URI is required by tonic but unused: the connector dials the socket.
    let channel = Endpoint::try_from("http://[::]:50051")?
        .connect_with_connector(tower::service_fn(move |_| {
            let path = path.clone();
            async move {
                let stream = tokio::net::UnixStream::connect(path).await?;
                Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(stream))
            }
        }))
        .await?;
    Ok(channel)
}
