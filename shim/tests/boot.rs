//! End-to-end tests of vmpod-shim with a real QEMU/TCG guest.
//!
//! They need the guest image from `images/build.sh` (kernel + initramfs with
//! the agent) and the helpers `vhost-device-vsock` and `virtiofsd` on PATH
//! or in ~/.cargo/bin. A missing piece fails the test with what to do; it
//! never passes silently.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use hyper_util::rt::TokioIo;
use tokio::net::UnixStream;
use tokio::sync::Mutex;
use tonic::transport::{Channel, Endpoint, Uri};
use vmpod_agent_proto::v1::GuestInfoRequest;
use vmpod_shim_api::ShimClient;
use vmpod_shim_api::v1::{Phase, ShutdownRequest, StateRequest, VmState, WatchRequest};

/// TCG boots take a core or two each; the host has two. One VM at a time.
/// A tokio mutex, since the guard is held across awaits; it works across
/// the per-test runtimes.
static SERIAL: Mutex<()> = Mutex::const_new(());

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("shim/ has a parent")
        .to_owned()
}

fn guest_image() -> (PathBuf, PathBuf) {
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

fn find_program(name: &str) -> PathBuf {
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

fn write_spec(pod: &Path, kernel: &Path, initramfs: &Path, timeout_ms: u64) {
    let spec = serde_json::json!({
        "id": "boot-test",
        "backend": "qemu-tcg",
        "kernel": kernel,
        "initramfs": initramfs,
        "vcpus": 1,
        "memory-mib": 256,
        "boot-timeout-ms": timeout_ms,
        "helpers": {
            "qemu": find_program("qemu-system-x86_64"),
            "virtiofsd": find_program("virtiofsd"),
            "vhost-device-vsock": find_program("vhost-device-vsock"),
        },
        "guest": {
            "hostname": "boot-test",
            "dns-servers": ["10.0.0.10"],
            "dns-searches": ["svc.cluster.local"],
            "dns-options": ["ndots:5"],
        },
    });
    std::fs::write(
        pod.join("vm.json"),
        serde_json::to_vec_pretty(&spec).expect("json"),
    )
    .expect("write vm.json");
}

/// The shim under test; killed if a test fails half-way, so a failure never
/// leaves a VM running (its children die with it through PDEATHSIG).
struct ShimProcess(Child);

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

fn start_shim(pod: &Path) -> ShimProcess {
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

async fn connect(pod: &Path) -> ShimClient<Channel> {
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

fn shim_log(pod: &Path) -> String {
    std::fs::read_to_string(pod.join("shim.log")).unwrap_or_default()
}

/// Follows Watch until the phase is one of `until`; returns that state.
async fn watch_until(
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

fn ms_since(start: u64, t: u64) -> String {
    if t == 0 {
        "-".into()
    } else {
        format!("{} ms", t.saturating_sub(start) / 1_000_000)
    }
}

fn report(state: &VmState) {
    let b = state.boot.unwrap_or_default();
    eprintln!(
        "boot from shim start: vmm spawned {}, kernel entry {}, agent ready {}",
        ms_since(b.shim_start_ns, b.vmm_spawned_ns),
        ms_since(b.shim_start_ns, b.kernel_entry_ns),
        ms_since(b.shim_start_ns, b.agent_ready_ns)
    );
}

/// Pids whose command line mentions `needle` (the pod dir), other than ours.
fn processes_mentioning(needle: &Path) -> Vec<(u32, String)> {
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

fn wait_exit(child: &mut Child, limit: Duration) -> std::process::ExitStatus {
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
async fn shutdown_and_check(client: &mut ShimClient<Channel>, shim: &mut Child, pod: &Path) {
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
struct Booted {
    _dir: tempfile::TempDir,
    pod: PathBuf,
    shim: ShimProcess,
    client: ShimClient<Channel>,
    state: VmState,
}

async fn boot_to_ready() -> Booted {
    let (kernel, initramfs) = guest_image();
    let dir = tempfile::tempdir().expect("tempdir");
    let pod = dir.path().to_owned();
    write_spec(&pod, &kernel, &initramfs, 90_000);
    let shim = start_shim(&pod);
    let mut client = connect(&pod).await;
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
        shim_log(&pod)
    );
    Booted {
        _dir: dir,
        pod,
        shim,
        client,
        state,
    }
}

#[tokio::test(flavor = "current_thread")]
async fn boots_to_ready_then_shuts_down_cleanly() {
    let _one = SERIAL.lock().await;
    let (kernel, initramfs) = guest_image();
    let dir = tempfile::tempdir().expect("tempdir");
    let pod = dir.path().to_owned();
    write_spec(&pod, &kernel, &initramfs, 90_000);
    let mut shim = start_shim(&pod);
    let mut client = connect(&pod).await;

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
        shim_log(&pod)
    );
    report(&state);
    assert_eq!(state.backend, "qemu-tcg");
    assert_eq!(state.vcpus, 1);
    assert_eq!(state.memory_mib, 256);
    assert_eq!(state.shim_pid, shim.id());
    assert_ne!(state.vmm_pid, 0);
    let b = state.boot.unwrap_or_default();
    assert!(b.shim_start_ns > 0 && b.vmm_spawned_ns >= b.shim_start_ns);
    assert!(
        b.kernel_entry_ns >= b.vmm_spawned_ns && b.agent_ready_ns >= b.kernel_entry_ns,
        "{b:?}"
    );
    let pid_file = std::fs::read_to_string(pod.join("shim.pid")).expect("shim.pid");
    assert_eq!(pid_file.trim(), shim.id().to_string());

    let info = client
        .guest_info(GuestInfoRequest {})
        .await
        .expect("GuestInfo")
        .into_inner();
    assert!(
        info.kernel_release.contains("vmpod"),
        "kernel_release {:?}",
        info.kernel_release
    );
    assert_eq!(info.hostname, "boot-test");
    eprintln!(
        "guest: {} {} cpus, uptime {:.2}s",
        info.kernel_release, info.cpus, info.uptime_seconds
    );
    assert!(
        std::fs::metadata(pod.join("console.log"))
            .expect("console.log")
            .len()
            > 0
    );

    shutdown_and_check(&mut client, &mut shim, &pod).await;
}

#[tokio::test(flavor = "current_thread")]
async fn killed_vmm_is_failed_within_two_seconds() {
    let _one = SERIAL.lock().await;
    let Booted {
        _dir: _tmp,
        pod,
        mut shim,
        mut client,
        state,
    } = boot_to_ready().await;

    let mut stream = client
        .watch(WatchRequest {})
        .await
        .expect("Watch")
        .into_inner();
    let _current = stream.message().await.expect("Watch").expect("first state");
    let killed = Instant::now();
    let rc = unsafe { libc::kill(state.vmm_pid as i32, libc::SIGKILL) };
    assert_eq!(rc, 0, "kill -9 {}", state.vmm_pid);
    let failed = tokio::time::timeout(Duration::from_secs(2), async {
        loop {
            match stream.message().await.expect("Watch") {
                Some(s) if s.phase() == Phase::Failed => return s,
                Some(_) => {}
                None => panic!("Watch ended"),
            }
        }
    })
    .await
    .expect("FAILED within 2 s of kill -9");
    eprintln!(
        "FAILED {} ms after kill -9: {}",
        killed.elapsed().as_millis(),
        failed.error.lines().next().unwrap_or("")
    );
    assert!(failed.error.contains("qemu"), "{}", failed.error);
    assert!(failed.error.contains("SIGKILL"), "{}", failed.error);

    // Guest calls now fail as unavailable, not hang.
    let e = client.guest_info(GuestInfoRequest {}).await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::Unavailable);
    shutdown_and_check(&mut client, &mut shim, &pod).await;
}

#[tokio::test(flavor = "current_thread")]
async fn missing_kernel_is_rejected_before_anything_starts() {
    let _one = SERIAL.lock().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let pod = dir.path().to_owned();
    let initramfs = pod.join("initramfs");
    std::fs::write(&initramfs, b"x").expect("write");
    write_spec(&pod, Path::new("/nonexistent/vmlinux"), &initramfs, 5_000);
    let started = Instant::now();
    let out = Command::new(env!("CARGO_BIN_EXE_vmpod-shim"))
        .arg("--pod-dir")
        .arg(&pod)
        .output()
        .expect("run vmpod-shim");
    assert!(!out.status.success());
    assert!(started.elapsed() < Duration::from_secs(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    assert!(
        err.contains("`kernel`") && err.contains("/nonexistent/vmlinux"),
        "{err}"
    );
    assert!(!pod.join("shim.sock").exists());
}

#[tokio::test(flavor = "current_thread")]
async fn unbootable_kernel_fails_fast_and_cleans_up() {
    let _one = SERIAL.lock().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let pod = dir.path().to_owned();
    let kernel = pod.join("not-a-kernel");
    std::fs::write(&kernel, vec![0x5au8; 4096]).expect("write");
    write_spec(&pod, &kernel, &kernel, 60_000);
    let started = Instant::now();
    let mut shim = start_shim(&pod);
    let mut client = connect(&pod).await;
    let state = watch_until(
        &mut client,
        &[Phase::Failed, Phase::Ready],
        Duration::from_secs(10),
    )
    .await;
    eprintln!(
        "FAILED after {} ms: {}",
        started.elapsed().as_millis(),
        state.error
    );
    assert_eq!(state.phase(), Phase::Failed);
    assert!(state.error.contains("qemu"), "{}", state.error);
    let left = processes_mentioning(&pod);
    assert!(
        left.iter().all(|(pid, _)| *pid == shim.id()),
        "helpers outlived a failed boot: {left:?}"
    );
    let now = client
        .state(StateRequest {})
        .await
        .expect("State")
        .into_inner();
    assert_eq!(now.phase(), Phase::Failed);
    shutdown_and_check(&mut client, &mut shim, &pod).await;
}

#[tokio::test(flavor = "current_thread")]
async fn boot_timeout_fails_with_reason_and_cleans_up() {
    let _one = SERIAL.lock().await;
    let (kernel, initramfs) = guest_image();
    let dir = tempfile::tempdir().expect("tempdir");
    let pod = dir.path().to_owned();
    // Far less than a TCG boot takes, so the deadline hits a running VMM.
    write_spec(&pod, &kernel, &initramfs, 400);
    let started = Instant::now();
    let mut shim = start_shim(&pod);
    let mut client = connect(&pod).await;
    let state = watch_until(
        &mut client,
        &[Phase::Failed, Phase::Ready],
        Duration::from_secs(10),
    )
    .await;
    let took = started.elapsed();
    eprintln!(
        "FAILED after {} ms: {}",
        took.as_millis(),
        state.error.lines().next().unwrap_or("")
    );
    assert_eq!(state.phase(), Phase::Failed);
    assert!(
        state
            .error
            .contains("guest did not reach agent-ready within 400 ms"),
        "{}",
        state.error
    );
    assert!(state.error.contains("serial console"), "{}", state.error);
    // 400 ms deadline plus QEMU's SIGTERM exit; nowhere near the grace.
    assert!(took < Duration::from_secs(3), "{took:?}");
    let left = processes_mentioning(&pod);
    assert!(
        left.iter().all(|(pid, _)| *pid == shim.id()),
        "left behind: {left:?}"
    );
    shutdown_and_check(&mut client, &mut shim, &pod).await;
}

#[tokio::test(flavor = "current_thread")]
async fn keep_running_then_sigterm() {
    let _one = SERIAL.lock().await;
    let Booted {
        _dir: _tmp,
        pod,
        mut shim,
        mut client,
        state: _,
    } = boot_to_ready().await;
    let info = client
        .guest_info(GuestInfoRequest {})
        .await
        .expect("GuestInfo")
        .into_inner();
    assert!(
        info.resolv_conf.contains("10.0.0.10"),
        "resolv.conf: {}",
        info.resolv_conf
    );

    let mut stream = client
        .watch(WatchRequest {})
        .await
        .expect("Watch")
        .into_inner();
    for _ in 0..2 {
        client
            .shutdown(ShutdownRequest {
                timeout_ms: 0,
                keep_running: true,
            })
            .await
            .expect("Shutdown is idempotent");
    }
    let now = client
        .state(StateRequest {})
        .await
        .expect("State")
        .into_inner();
    assert_eq!(now.phase(), Phase::Stopped);
    assert!(
        shim.try_wait().expect("try_wait").is_none(),
        "keep_running: shim must stay"
    );
    let left = processes_mentioning(&pod);
    assert!(
        left.iter().all(|(pid, _)| *pid == shim.id()),
        "left behind: {left:?}"
    );
    let e = client.guest_info(GuestInfoRequest {}).await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::Unavailable);

    let rc = unsafe { libc::kill(shim.id() as i32, libc::SIGTERM) };
    assert_eq!(rc, 0);
    let status = wait_exit(&mut shim, Duration::from_secs(10));
    assert!(status.success(), "shim exit {status}");
    // The Watch stream ends cleanly, having shown STOPPED.
    let mut last = None;
    while let Ok(Some(s)) = stream.message().await {
        last = Some(s.phase());
    }
    assert_eq!(last, Some(Phase::Stopped));
    assert!(!pod.join("shim.sock").exists());
    assert!(!pod.join("shim.pid").exists());
    assert!(processes_mentioning(&pod).is_empty());
}

/// Starts a shim on the real image and waits for READY.
async fn boot_ready(pod: &Path) -> (ShimProcess, ShimClient<Channel>) {
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
    (shim, client)
}

#[tokio::test(flavor = "current_thread")]
async fn dead_helper_is_failed_and_vm_torn_down() {
    let _one = SERIAL.lock().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let pod = dir.path().to_owned();
    let (mut shim, mut client) = boot_ready(&pod).await;
    let helper = processes_mentioning(&pod)
        .into_iter()
        .find(|(_, cmd)| cmd.contains("vhost-device-vsock"))
        .expect("vhost-device-vsock running");
    let killed = Instant::now();
    assert_eq!(unsafe { libc::kill(helper.0 as i32, libc::SIGKILL) }, 0);
    let state = watch_until(&mut client, &[Phase::Failed], Duration::from_secs(2)).await;
    eprintln!(
        "FAILED {} ms after kill -9 of the helper",
        killed.elapsed().as_millis()
    );
    assert!(
        state.error.contains("vhost-device-vsock") && state.error.contains("SIGKILL"),
        "{}",
        state.error
    );
    // FAILED is published after teardown: the VMM is gone too.
    let left = processes_mentioning(&pod);
    assert!(
        left.iter().all(|(pid, _)| *pid == shim.id()),
        "left behind: {left:?}"
    );
    shutdown_and_check(&mut client, &mut shim, &pod).await;
}

#[tokio::test(flavor = "current_thread")]
async fn children_die_with_a_killed_shim() {
    let _one = SERIAL.lock().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let pod = dir.path().to_owned();
    let (mut shim, _client) = boot_ready(&pod).await;
    assert!(
        processes_mentioning(&pod).len() >= 4,
        "shim, qemu and helpers expected"
    );
    shim.kill().expect("kill -9 shim");
    shim.wait().expect("reap shim");
    let deadline = Instant::now() + Duration::from_secs(3);
    loop {
        let left = processes_mentioning(&pod);
        if left.is_empty() {
            break;
        }
        assert!(Instant::now() < deadline, "survived the shim: {left:?}");
        std::thread::sleep(Duration::from_millis(20));
    }
}
