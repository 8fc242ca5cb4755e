//! Helpers shared by the shim's end-to-end tests: a real shim on the real
//! guest image, one VM at a time.
// Each test binary uses a subset.
#![allow(dead_code)]

pub mod netns;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use hyper_util::rt::TokioIo;
use tokio::net::UnixStream;
use tokio::sync::Mutex;
use tonic::transport::{Channel, Endpoint, Uri};
use vmpod_shim_api::ShimClient;
use vmpod_shim_api::v1::{Phase, ShutdownRequest, VmState, WatchRequest};

/// TCG boots take a core or two each; the host has two. One VM at a time.
/// A tokio mutex, since the guard is held across awaits; it works across
/// the per-test runtimes.
pub static SERIAL: Mutex<()> = Mutex::const_new(());

pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("shim/ has a parent")
        .to_owned()
}

pub fn guest_image() -> (PathBuf, PathBuf) {
    let out = repo_root().join("images/out");
    let kernel = out.join("vmlinux");
    let initramfs = out.join("initramfs.cpio.gz");
    for p in [&kernel, &initramfs] {
        assert!(
            p.is_file(),
            "guest image file {} is missing: run images/build.sh first",
            p.display()
        );
    }
    (kernel, initramfs)
}

pub fn find_program(name: &str) -> PathBuf {
    let mut dirs: Vec<PathBuf> = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).collect())
        .unwrap_or_default();
    if let Some(home) = std::env::var_os("HOME") {
        dirs.push(Path::new(&home).join(".cargo/bin"));
    }
    dirs.into_iter()
        .map(|d| d.join(name))
        .find(|p| p.is_file())
        .unwrap_or_else(|| {
            panic!("{name} not found on PATH or in ~/.cargo/bin (cargo install --locked {name})")
        })
}

pub fn write_spec(pod: &Path, kernel: &Path, initramfs: &Path, timeout_ms: u64) {
    write_spec_for("qemu-tcg", pod, kernel, initramfs, timeout_ms);
}

/// `vm.json` for `backend`; the built-in VMM (`kvm`) gets no QEMU and no
/// vsock helper, since it serves vsock itself.
pub fn write_spec_for(backend: &str, pod: &Path, kernel: &Path, initramfs: &Path, timeout_ms: u64) {
    let helpers = if backend == "kvm" {
        serde_json::json!({ "virtiofsd": find_program("virtiofsd") })
    } else {
        serde_json::json!({
            "qemu": find_program("qemu-system-x86_64"),
            "virtiofsd": find_program("virtiofsd"),
            "vhost-device-vsock": find_program("vhost-device-vsock"),
        })
    };
    let mut spec = serde_json::json!({
        "id": "boot-test",
        "backend": backend,
        "kernel": kernel,
        "initramfs": initramfs,
        "vcpus": 1,
        "memory-mib": 256,
        "boot-timeout-ms": timeout_ms,
        "helpers": helpers,
        "guest": {
            "hostname": "boot-test",
            "dns-servers": ["10.0.0.10"],
            "dns-searches": ["svc.cluster.local"],
            "dns-options": ["ndots:5"],
        },
    });
    if backend == "kvm" {
        // As the daemon's default `vm.vmm-user`.
        spec["vmm-user"] = serde_json::json!({ "uid": 65534, "gid": 65534 });
    }
    std::fs::write(
        pod.join("vm.json"),
        serde_json::to_vec_pretty(&spec).expect("json"),
    )
    .expect("write vm.json");
}

/// The shim under test; killed if a test fails half-way, so a failure never
/// leaves a VM running (its children die with it through PDEATHSIG).
pub struct ShimProcess(pub Child);

impl std::ops::Deref for ShimProcess {
    type Target = Child;
    fn deref(&self) -> &Child {
        &self.0
    }
}

impl std::ops::DerefMut for ShimProcess {
    fn deref_mut(&mut self) -> &mut Child {
        &mut self.0
    }
}

impl Drop for ShimProcess {
    fn drop(&mut self) {
        if let Ok(None) = self.0.try_wait() {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

pub fn start_shim(pod: &Path) -> ShimProcess {
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(pod.join("shim.log"))
        .expect("shim.log");
    ShimProcess(
        Command::new(env!("CARGO_BIN_EXE_vmpod-shim"))
            .arg("--pod-dir")
            .arg(pod)
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("dup"))
            .stderr(log)
            .spawn()
            .expect("spawn vmpod-shim"),
    )
}

pub async fn connect(pod: &Path) -> ShimClient<Channel> {
    let sock = pod.join("shim.sock");
    let deadline = Instant::now() + Duration::from_secs(10);
    while !sock.exists() {
        assert!(
            Instant::now() < deadline,
            "shim.sock did not appear; shim.log:\n{}",
            shim_log(pod)
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let channel = Endpoint::from_static("http://shim.sock")
        .connect_with_connector(tower::service_fn(move |_: Uri| {
            let sock = sock.clone();
            async move { Ok::<_, std::io::Error>(TokioIo::new(UnixStream::connect(sock).await?)) }
        }))
        .await
        .expect("connect shim.sock");
    ShimClient::new(channel)
}

pub fn shim_log(pod: &Path) -> String {
    std::fs::read_to_string(pod.join("shim.log")).unwrap_or_default()
}

/// Follows Watch until the phase is one of `until`; returns that state.
pub async fn watch_until(
    client: &mut ShimClient<Channel>,
    until: &[Phase],
    limit: Duration,
) -> VmState {
    let mut stream = client
        .watch(WatchRequest {})
        .await
        .expect("Watch")
        .into_inner();
    let fut = async {
        loop {
            match stream.message().await.expect("Watch stream") {
                Some(s) if until.contains(&s.phase()) => return s,
                Some(_) => {}
                None => panic!("Watch stream ended"),
            }
        }
    };
    tokio::time::timeout(limit, fut)
        .await
        .unwrap_or_else(|_| panic!("no phase in {until:?} within {limit:?}"))
}

pub fn ms_since(start: u64, t: u64) -> String {
    if t == 0 {
        "-".into()
    } else {
        format!("{} ms", t.saturating_sub(start) / 1_000_000)
    }
}

pub fn report(state: &VmState) {
    let b = state.boot.unwrap_or_default();
    eprintln!(
        "boot from shim start: vmm spawned {}, kernel entry {}, agent ready {}",
        ms_since(b.shim_start_ns, b.vmm_spawned_ns),
        ms_since(b.shim_start_ns, b.kernel_entry_ns),
        ms_since(b.shim_start_ns, b.agent_ready_ns)
    );
}

/// Pids whose command line mentions `needle` (the pod dir), other than ours.
pub fn processes_mentioning(needle: &Path) -> Vec<(u32, String)> {
    let needle = needle.to_string_lossy().into_owned();
    let me = std::process::id();
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").expect("/proc").flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<u32>().ok())
        else {
            continue;
        };
        if pid == me {
            continue;
        }
        let Ok(raw) = std::fs::read(entry.path().join("cmdline")) else {
            continue;
        };
        let cmd = String::from_utf8_lossy(&raw).replace('\0', " ");
        if cmd.contains(&needle) {
            found.push((pid, cmd));
        }
    }
    found
}

pub fn wait_exit(child: &mut Child, limit: Duration) -> std::process::ExitStatus {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(s) = child.try_wait().expect("try_wait") {
            return s;
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            panic!("shim did not exit within {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Shuts the shim down and checks it left nothing behind.
pub async fn shutdown_and_check(client: &mut ShimClient<Channel>, shim: &mut Child, pod: &Path) {
    client
        .shutdown(ShutdownRequest {
            timeout_ms: 2000,
            keep_running: false,
        })
        .await
        .expect("Shutdown");
    let status = wait_exit(shim, Duration::from_secs(10));
    assert!(
        status.success(),
        "shim exit {status}; log:\n{}",
        shim_log(pod)
    );
    let left = processes_mentioning(pod);
    assert!(left.is_empty(), "processes left behind: {left:?}");
    assert!(!pod.join("shim.sock").exists(), "shim.sock still there");
    assert!(!pod.join("shim.pid").exists(), "shim.pid still there");
}

/// A shim whose VM reached READY, for tests that start from there.
pub struct Booted {
    pub _dir: tempfile::TempDir,
    pub pod: PathBuf,
    pub shim: ShimProcess,
    pub client: ShimClient<Channel>,
    pub state: VmState,
}

pub async fn boot_to_ready() -> Booted {
    let dir = tempfile::tempdir().expect("tempdir");
    let pod = dir.path().to_owned();
    let (shim, client, state) = boot_in(&pod).await;
    Booted {
        _dir: dir,
        pod,
        shim,
        client,
        state,
    }
}

/// Starts a shim on the real image and waits for READY.
pub async fn boot_ready(pod: &Path) -> (ShimProcess, ShimClient<Channel>) {
    let (shim, client, _) = boot_in(pod).await;
    (shim, client)
}

/// Starts a shim in `pod` on the real image; panics with its log unless
/// the VM reaches READY.
pub async fn boot_in(pod: &Path) -> (ShimProcess, ShimClient<Channel>, VmState) {
    let (kernel, initramfs) = guest_image();
    write_spec(pod, &kernel, &initramfs, 90_000);
    let shim = start_shim(pod);
    let mut client = connect(pod).await;
    let state = watch_until(
        &mut client,
        &[Phase::Ready, Phase::Failed],
        Duration::from_secs(120),
    )
    .await;
    assert_eq!(
        state.phase(),
        Phase::Ready,
        "error: {}\nshim.log:\n{}",
        state.error,
        shim_log(pod)
    );
    (shim, client, state)
}
