//! Starting and talking to a pod's `vmpod-shim`.
//!
//! The shim runs in its own session so that it survives a restart of the
//! daemon; the daemon finds it again through the socket in the pod dir.
//! Every pid the daemon signals is first checked against `/proc/PID/cmdline`
//! so a recycled pid can never take a kill meant for a dead shim.

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use tokio_stream::StreamExt;
use tonic::transport::{Channel, Endpoint};
use vmpod_shim_api::ShimClient;
use vmpod_shim_api::layout;
use vmpod_shim_api::v1::{Phase, ShutdownRequest, VmState, WatchRequest};
use vmpod_shim_api::vm_spec::VmSpec;

/// Writes the spec and starts the shim. Returns the shim's pid.
pub fn spawn(
    shim: &Path,
    pod_dir: &Path,
    spec: &VmSpec,
    cgroup_procs: &[PathBuf],
) -> Result<u32, String> {
    let spec_path = pod_dir.join(layout::SPEC);
    let json = serde_json::to_vec_pretty(spec).map_err(|e| format!("encoding VM spec: {e}"))?;
    std::fs::write(&spec_path, json)
        .map_err(|e| format!("cannot write {}: {e}", spec_path.display()))?;
    let log_path = pod_dir.join(layout::SHIM_LOG);
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&log_path)
        .map_err(|e| format!("cannot open {}: {e}", log_path.display()))?;
    let log2 = log
        .try_clone()
        .map_err(|e| format!("cannot dup {}: {e}", log_path.display()))?;
    let mut cmd = tokio::process::Command::new(shim);
    cmd.arg("--pod-dir").arg(pod_dir);
    for p in cgroup_procs {
        cmd.arg("--cgroup-procs").arg(p);
    }
    cmd.stdin(std::process::Stdio::null())
        .stdout(log)
        .stderr(log2)
        .kill_on_drop(false);
    // SAFETY: setsid is async-signal-safe and touches no memory of ours.
    unsafe {
        cmd.as_std_mut().pre_exec(|| {
            nix::unistd::setsid().map_err(std::io::Error::from)?;
            Ok(())
        });
    }
    let mut child = cmd
        .spawn()
        .map_err(|e| format!("cannot start {}: {e}", shim.display()))?;
    let pid = child.id().ok_or("shim exited at once")?;
    // The shim is our child until we exit: reap it so it never lingers as
    // a zombie after it stops.
    tokio::spawn(async move {
        let _ = child.wait().await;
    });
    Ok(pid)
}

/// Connects to the shim's socket, waiting up to `timeout` for it to appear.
pub async fn connect(pod_dir: &Path, timeout: Duration) -> Result<ShimClient<Channel>, String> {
    let socket = pod_dir.join(layout::SHIM_SOCKET);
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        match tokio::net::UnixStream::connect(&socket).await {
            Ok(_) => break,
            Err(e) if tokio::time::Instant::now() >= deadline => {
                return Err(format!(
                    "shim socket {} not available: {e}",
                    socket.display()
                ));
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(10)).await,
        }
    }
    let channel = uds_channel(socket)
        .await
        .map_err(|e| format!("cannot connect to shim: {e}"))?;
    Ok(ShimClient::new(channel))
}

pub async fn uds_channel(path: PathBuf) -> Result<Channel, tonic::transport::Error> {
    // The authority is required by the HTTP/2 client but never resolved.
    Endpoint::from_static("http://shim")
        .connect_with_connector(tower::service_fn(move |_| {
            let path = path.clone();
            async move {
                let s = tokio::net::UnixStream::connect(path).await?;
                Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(s))
            }
        }))
        .await
}

/// Follows the shim's state until the VM is ready or has failed.
pub async fn wait_ready(
    client: &mut ShimClient<Channel>,
    timeout: Duration,
) -> Result<VmState, String> {
    let mut stream = client
        .watch(WatchRequest {})
        .await
        .map_err(|e| format!("shim Watch failed: {}", e.message()))?
        .into_inner();
    let result = tokio::time::timeout(timeout, async {
        while let Some(item) = stream.next().await {
            let state = item.map_err(|e| format!("shim Watch broke: {}", e.message()))?;
            match state.phase() {
                Phase::Ready => return Ok(state),
                Phase::Failed => return Err(state.error),
                Phase::Stopped => return Err("VM stopped during boot".to_string()),
                Phase::Booting | Phase::Unspecified => {}
            }
        }
        Err("shim exited during boot".to_string())
    })
    .await;
    result.unwrap_or_else(|_| {
        Err(format!(
            "shim did not report the VM ready within {timeout:?}"
        ))
    })
}

/// Whether `pid` is still the shim of `pod_dir`.
pub fn is_shim_of(pid: u32, pod_dir: &Path) -> bool {
    if pid == 0 {
        return false;
    }
    let Ok(cmdline) = std::fs::read(format!("/proc/{pid}/cmdline")) else {
        return false;
    };
    let needle = pod_dir.as_os_str().as_encoded_bytes();
    cmdline.split(|&b| b == 0).any(|arg| arg == needle)
}

/// Stops the VM through the shim, falling back to SIGKILL of the shim (its
/// VMM and helpers die with it through PDEATHSIG). Returns once the shim is
/// gone.
pub async fn stop(pod_dir: &Path, shim_pid: u32, grace: Duration) {
    if is_shim_of(shim_pid, pod_dir)
        && let Ok(mut client) = connect(pod_dir, Duration::from_millis(500)).await
    {
        let req = ShutdownRequest {
            timeout_ms: u32::try_from(grace.as_millis()).unwrap_or(u32::MAX),
            keep_running: false,
        };
        if let Err(e) =
            tokio::time::timeout(grace + Duration::from_secs(3), client.shutdown(req)).await
        {
            tracing::warn!(pod_dir = %pod_dir.display(), error = %e, "shim Shutdown timed out");
        }
    }
    let deadline = tokio::time::Instant::now() + Duration::from_secs(3);
    while is_shim_of(shim_pid, pod_dir) && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    if is_shim_of(shim_pid, pod_dir) {
        tracing::warn!(pid = shim_pid, "shim did not exit; killing it");
        kill(shim_pid);
        let deadline = tokio::time::Instant::now() + Duration::from_secs(2);
        while is_shim_of(shim_pid, pod_dir) && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

fn kill(pid: u32) {
    if let Ok(pid) = i32::try_from(pid) {
        let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::SIGKILL);
    }
}
