//! Booting the real guest image (`images/out`) under QEMU with the device
//! contract of the design brief, and reaching its agent over hybrid vsock.
//!
//! The QEMU command line is the TCG one verified on the project's machines:
//! microvm with pit/pic/rtc (TCG hangs calibrating the TSC without them),
//! `acpi=off` (otherwise QEMU does not put `virtio_mmio.device=` on the
//! kernel command line), and memfd guest memory with `share=on` (otherwise
//! the vhost-user backends cannot map it and vsock silently hangs).

use std::fs::{self, File};
use std::io;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use hyper_util::rt::TokioIo;
use tempfile::TempDir;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixStream;
use tonic::transport::{Channel, Endpoint};
use vmpod_agent_proto::{AGENT_VSOCK_PORT, AgentClient, BANNER_PREFIX, GUEST_CID, SHARE_TAG};

use crate::daemon::{guest_initramfs, guest_kernel};

/// How a test VM is shaped.
#[derive(Debug, Clone)]
pub struct GuestConfig {
    pub memory_mib: u32,
    pub cpus: u32,
    /// A host directory to export as virtio-fs tag [`SHARE_TAG`].
    pub share: Option<PathBuf>,
}

impl Default for GuestConfig {
    fn default() -> Self {
        Self {
            memory_mib: 256,
            cpus: 1,
            share: None,
        }
    }
}

/// A running guest and its helper processes. Dropping it kills them all
/// and removes the run directory, whether the test passed or not.
pub struct GuestVm {
    // Field order is drop order: processes first, then their directory.
    qemu: Option<Child>,
    helpers: Vec<(String, Child)>,
    /// When QEMU was started; boot figures are measured from here.
    pub started: Instant,
    run_dir: TempDir,
}

/// Finds `name` on PATH or in ~/.cargo/bin (where `cargo install` puts the
/// vhost-user daemons).
pub fn find_program(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    let cargo_bin = std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cargo/bin"));
    std::env::split_paths(&path)
        .chain(cargo_bin)
        .map(|dir| dir.join(name))
        .find(|p| p.is_file())
}

fn require_program(name: &str, hint: &str) -> Result<PathBuf> {
    find_program(name).ok_or_else(|| anyhow!("{name} not found on PATH or in ~/.cargo/bin; {hint}"))
}

/// The guest image, or an error telling how to build it.
pub fn guest_image() -> Result<(PathBuf, PathBuf)> {
    let (kernel, initramfs) = (guest_kernel(), guest_initramfs());
    for p in [&kernel, &initramfs] {
        if !p.is_file() {
            bail!(
                "guest image {} is missing: run images/build.sh first",
                p.display()
            );
        }
    }
    Ok((kernel, initramfs))
}

/// A command whose process gets SIGKILL if the test process dies, so a
/// crashed test cannot leak a VM.
fn command(program: &Path) -> Command {
    let mut cmd = Command::new(program);
    cmd.stdin(Stdio::null());
    // SAFETY: prctl is async-signal-safe and touches no memory of the parent.
    unsafe {
        cmd.pre_exec(|| {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                return Err(io::Error::last_os_error());
            }
            Ok(())
        });
    }
    cmd
}

fn log_file(path: &Path) -> Result<Stdio> {
    Ok(File::create(path)
        .with_context(|| format!("cannot create {}", path.display()))?
        .into())
}

impl GuestVm {
    /// Starts the helpers and QEMU. Returns once QEMU runs; the guest boots
    /// in the background (see [`GuestVm::wait_for_banner`]).
    pub fn boot(config: &GuestConfig) -> Result<Self> {
        let (kernel, initramfs) = guest_image()?;
        let qemu_bin = require_program("qemu-system-x86_64", "install Debian's qemu-system-x86")?;
        let vsock_bin = require_program(
            "vhost-device-vsock",
            "run scripts/install-deps.sh (cargo install vhost-device-vsock)",
        )?;
        let run_dir = tempfile::Builder::new()
            .prefix("vmpod-guest-")
            .tempdir()
            .context("cannot create the run dir")?;
        let mut vm = Self {
            qemu: None,
            helpers: Vec::new(),
            started: Instant::now(),
            run_dir,
        };
        let dir = vm.run_dir.path().to_path_buf();

        let vsock_sock = dir.join("vsock.sock");
        let mut cmd = command(&vsock_bin);
        cmd.arg("--guest-cid")
            .arg(GUEST_CID.to_string())
            .arg("--socket")
            .arg(&vsock_sock)
            .arg("--uds-path")
            .arg(vm.vsock_uds())
            .stdout(log_file(&dir.join("vhost-device-vsock.log"))?)
            .stderr(log_file(&dir.join("vhost-device-vsock.err"))?);
        vm.spawn_helper("vhost-device-vsock", cmd)?;
        vm.wait_for_socket("vhost-device-vsock", &vsock_sock)?;

        let mut fs_args = Vec::new();
        if let Some(share) = &config.share {
            let virtiofsd = require_program(
                "virtiofsd",
                "run scripts/install-deps.sh (cargo install virtiofsd)",
            )?;
            let fs_sock = dir.join("vfs.sock");
            let mut cmd = command(&virtiofsd);
            cmd.arg("--socket-path")
                .arg(&fs_sock)
                .arg("--shared-dir")
                .arg(share)
                .arg("--cache=never")
                .stdout(log_file(&dir.join("virtiofsd.log"))?)
                .stderr(log_file(&dir.join("virtiofsd.err"))?);
            vm.spawn_helper("virtiofsd", cmd)?;
            vm.wait_for_socket("virtiofsd", &fs_sock)?;
            fs_args = vec![
                "-chardev".to_string(),
                format!("socket,id=vfs0,path={}", fs_sock.display()),
                "-device".to_string(),
                format!("vhost-user-fs-device,chardev=vfs0,tag={SHARE_TAG}"),
            ];
        }

        let mem = config.memory_mib;
        let mut cmd = command(&qemu_bin);
        cmd.args(["-accel", "tcg", "-cpu", "max"])
            .arg("-m")
            .arg(format!("{mem}M"))
            .arg("-smp")
            .arg(config.cpus.to_string())
            .args([
                "-M",
                "microvm,pit=on,pic=on,rtc=on,acpi=off,memory-backend=mem",
            ])
            .arg("-object")
            .arg(format!("memory-backend-memfd,id=mem,size={mem}M,share=on"))
            .args(["-nodefaults", "-no-user-config", "-nographic", "-no-reboot"])
            .arg("-serial")
            .arg(format!("file:{}", vm.serial_log().display()))
            .arg("-kernel")
            .arg(&kernel)
            .arg("-initrd")
            .arg(&initramfs)
            .args(["-append", "console=ttyS0 reboot=t panic=-1 quiet"])
            .arg("-chardev")
            .arg(format!("socket,id=vsock0,path={}", vsock_sock.display()))
            .args(["-device", "vhost-user-vsock-device,chardev=vsock0"])
            .args(&fs_args)
            .stdout(log_file(&dir.join("qemu.log"))?)
            .stderr(log_file(&dir.join("qemu.err"))?);
        vm.started = Instant::now();
        vm.qemu = Some(
            cmd.spawn()
                .with_context(|| format!("cannot start {}", qemu_bin.display()))?,
        );
        Ok(vm)
    }

    fn spawn_helper(&mut self, name: &str, mut cmd: Command) -> Result<()> {
        let child = cmd
            .spawn()
            .with_context(|| format!("cannot start {name}"))?;
        self.helpers.push((name.to_string(), child));
        Ok(())
    }

    /// Waits until a helper has created its listening socket.
    fn wait_for_socket(&mut self, name: &str, path: &Path) -> Result<()> {
        let deadline = Instant::now() + Duration::from_secs(10);
        while !path.exists() {
            if let Some((_, child)) = self.helpers.iter_mut().find(|(n, _)| n == name)
                && let Some(status) = child.try_wait().context("waitpid")?
            {
                bail!("{name} exited with {status}: {}", self.helper_log(name));
            }
            if Instant::now() > deadline {
                bail!("{name} did not create {} within 10 s", path.display());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(())
    }

    fn helper_log(&self, name: &str) -> String {
        let err = fs::read_to_string(self.run_dir.path().join(format!("{name}.err")));
        tail(&err.unwrap_or_default(), 20)
    }

    pub fn run_dir(&self) -> &Path {
        self.run_dir.path()
    }

    /// The host side of hybrid vsock (vhost-device-vsock's `--uds-path`).
    pub fn vsock_uds(&self) -> PathBuf {
        self.run_dir.path().join("vm.vsock")
    }

    pub fn serial_log(&self) -> PathBuf {
        self.run_dir.path().join("serial.log")
    }

    /// The serial console so far.
    pub fn serial_text(&self) -> String {
        fs::read(self.serial_log())
            .map(|b| String::from_utf8_lossy(&b).into_owned())
            .unwrap_or_default()
    }

    /// The last `lines` lines of the serial log, plus QEMU's stderr, for
    /// failure messages.
    pub fn diagnostics(&self, lines: usize) -> String {
        let qemu_err = fs::read_to_string(self.run_dir.path().join("qemu.err")).unwrap_or_default();
        format!(
            "--- serial log (last {lines} lines) ---\n{}\n--- qemu stderr ---\n{}",
            tail(&self.serial_text(), lines),
            tail(&qemu_err, lines)
        )
    }

    /// Whether QEMU is still running; an error carries its exit status.
    fn check_running(&mut self) -> Result<()> {
        match self.qemu.as_mut() {
            Some(qemu) => match qemu.try_wait().context("waitpid qemu")? {
                None => Ok(()),
                Some(status) => bail!("qemu exited early with {status}"),
            },
            None => bail!("qemu is not running"),
        }
    }

    /// Waits for the agent's banner line on the serial console and returns
    /// it, failing early if QEMU exits.
    pub async fn wait_for_banner(&mut self, timeout: Duration) -> Result<String> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(line) = self
                .serial_text()
                .lines()
                .find(|l| l.contains(BANNER_PREFIX))
            {
                return Ok(line.trim_end().to_string());
            }
            self.check_running()?;
            if Instant::now() > deadline {
                bail!("no {BANNER_PREFIX:?} on the serial console within {timeout:?}");
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Opens a stream to guest vsock `port` through hybrid vsock, retrying
    /// until `timeout` (the listener may not be up yet).
    pub async fn connect_vsock(&mut self, port: u32, timeout: Duration) -> Result<UnixStream> {
        let deadline = Instant::now() + timeout;
        loop {
            match hybrid_vsock_connect(&self.vsock_uds(), port).await {
                Ok(stream) => return Ok(stream),
                Err(err) if Instant::now() < deadline => {
                    self.check_running()?;
                    let _ = err;
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                Err(err) => {
                    return Err(err.context(format!("no vsock connection within {timeout:?}")));
                }
            }
        }
    }

    /// A gRPC client for the agent. Every (re)connect of the channel goes
    /// through a fresh hybrid-vsock handshake.
    pub async fn agent_client(&self) -> Result<AgentClient<Channel>> {
        let uds = self.vsock_uds();
        // The authority is never resolved: the connector ignores the URI.
        let channel = Endpoint::from_static("http://vmpod-agent.vsock")
            .connect_timeout(Duration::from_secs(10))
            .timeout(Duration::from_secs(30))
            .connect_with_connector(tower::service_fn(move |_: http::Uri| {
                let uds = uds.clone();
                async move {
                    let stream = hybrid_vsock_connect(&uds, AGENT_VSOCK_PORT)
                        .await
                        .map_err(|e| io::Error::other(format!("{e:#}")))?;
                    Ok::<_, io::Error>(TokioIo::new(stream))
                }
            }))
            .await
            .context("cannot open a gRPC channel to the agent")?;
        Ok(AgentClient::new(channel))
    }

    /// Waits up to `timeout` for QEMU to exit by itself.
    pub async fn wait_for_exit(&mut self, timeout: Duration) -> Result<std::process::ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            let qemu = self.qemu.as_mut().context("qemu is not running")?;
            if let Some(status) = qemu.try_wait().context("waitpid qemu")? {
                return Ok(status);
            }
            if Instant::now() > deadline {
                bail!("qemu still running after {timeout:?}");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

impl Drop for GuestVm {
    fn drop(&mut self) {
        // QEMU first, so the helpers see their peer go away.
        for child in self
            .qemu
            .iter_mut()
            .chain(self.helpers.iter_mut().map(|(_, c)| c))
        {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Firecracker-style hybrid vsock: connect to the unix socket, send
/// `CONNECT <port>\n`, expect `OK <host port>\n`. Reads the reply a byte at
/// a time so nothing of the following stream is consumed.
pub async fn hybrid_vsock_connect(uds: &Path, port: u32) -> Result<UnixStream> {
    let handshake = async {
        let mut stream = UnixStream::connect(uds)
            .await
            .with_context(|| format!("cannot connect to {}", uds.display()))?;
        stream
            .write_all(format!("CONNECT {port}\n").as_bytes())
            .await
            .context("cannot send CONNECT")?;
        let mut reply = Vec::with_capacity(16);
        loop {
            let byte = stream.read_u8().await.with_context(|| {
                format!(
                    "connection closed during the handshake (guest port {port} not listening?), got {:?}",
                    String::from_utf8_lossy(&reply)
                )
            })?;
            if byte == b'\n' {
                break;
            }
            reply.push(byte);
            if reply.len() > 32 {
                bail!(
                    "handshake reply too long: {:?}",
                    String::from_utf8_lossy(&reply)
                );
            }
        }
        let reply = String::from_utf8_lossy(&reply);
        let ok = reply
            .strip_prefix("OK ")
            .is_some_and(|n| n.parse::<u32>().is_ok());
        if !ok {
            bail!("unexpected handshake reply {reply:?}");
        }
        Ok(stream)
    };
    tokio::time::timeout(Duration::from_secs(5), handshake)
        .await
        .context("hybrid vsock handshake timed out")?
}

fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}
