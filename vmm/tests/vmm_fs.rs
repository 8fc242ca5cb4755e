//! virtio-fs in the built-in VMM on this machine's /dev/kvm: the Rust fs
//! guest (`tests/guests/rust/src/bin/fs.rs`) speaks FUSE through the
//! vhost-user frontend to a real virtiofsd, started with the shim's own
//! arguments; and to fake backends served by the test that hang up, send
//! garbage, stall or garble a reply, each of which must end in
//! DEVICE_NEEDS_RESET for the guest and a clean VMM exit, never a hang or a
//! crash (the VMM runs under its seccomp filter throughout). A fake is used
//! rather than killing virtiofsd at the right moment: the guest runs for
//! milliseconds, so a kill could not be placed between two of its requests
//! without a race, while a fake misbehaves at a chosen message; a killed
//! virtiofsd shows the VMM the same thing as the fake's hang-up, a closed
//! socket. Without /dev/kvm (or virtiofsd) these tests fail: they never
//! pass by skipping.

mod common;

use common::guests::*;

use std::io::{Read, Write};
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use vmpod_vmm::devices::virtio::fs::{FsConfig, FsDevice};
use vmpod_vmm::{self as vmm, BootProtocol, ExitReason, VmmConfig};

/// What the guest reads.
const HELLO: &str = "hello from the host\nsecond line\n";
/// What the guest writes (its `PAYLOAD`).
const PAYLOAD: &str = "written by the vmpod fs guest\n";

fn fs_guest() -> String {
    guests().join("fs.elf").to_string_lossy().into_owned()
}

impl Run {
    fn assert_serial(&self, line: &str) {
        assert!(
            self.serial.contains(line),
            "{line:?} missing from the serial output: {}\nstderr: {}",
            self.serial,
            self.stderr
        );
    }

    fn assert_logged(&self, text: &str) {
        assert!(
            self.stderr.contains(text),
            "{text:?} not logged: {}",
            self.stderr
        );
    }
}

/// virtiofsd: `VMPOD_VIRTIOFSD`, else on PATH, else in ~/.cargo/bin (where
/// scripts/install-deps.sh puts it).
fn virtiofsd_binary() -> PathBuf {
    if let Some(p) = std::env::var_os("VMPOD_VIRTIOFSD") {
        return PathBuf::from(p);
    }
    let mut dirs: Vec<PathBuf> = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).collect())
        .unwrap_or_default();
    if let Some(home) = std::env::var_os("HOME") {
        dirs.push(PathBuf::from(home).join(".cargo/bin"));
    }
    dirs.into_iter()
        .map(|d| d.join("virtiofsd"))
        .find(|p| p.is_file())
        .unwrap_or_else(|| {
            panic!(
                "virtiofsd not found (scripts/install-deps.sh installs it); these tests do not skip"
            )
        })
}

/// A virtiofsd serving a temporary share that holds `hello.txt`, with the
/// shim's arguments (`shim/src/backends.rs`). Dropping it kills the
/// daemon if it still runs, reaps it, and removes the directory.
struct Virtiofsd {
    child: Child,
    dir: tempfile::TempDir,
}

impl Virtiofsd {
    fn start() -> Virtiofsd {
        let dir = tempfile::tempdir().expect("tempdir");
        let share = dir.path().join("share");
        std::fs::create_dir(&share).expect("share dir");
        std::fs::write(share.join("hello.txt"), HELLO).expect("hello.txt");
        let log = std::fs::File::create(dir.path().join("virtiofsd.log")).expect("log file");
        let socket = dir.path().join("vfs.sock");
        let child = Command::new(virtiofsd_binary())
            .arg("--socket-path")
            .arg(&socket)
            .arg("--shared-dir")
            .arg(&share)
            .arg("--cache=never")
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log fd"))
            .stderr(log)
            .spawn()
            .expect("spawn virtiofsd");
        let mut daemon = Virtiofsd { child, dir };
        let deadline = Instant::now() + Duration::from_secs(10);
        while !socket.exists() {
            if let Ok(Some(status)) = daemon.child.try_wait() {
                panic!(
                    "virtiofsd exited ({status}) before creating its socket: {}",
                    daemon.log()
                );
            }
            assert!(
                Instant::now() < deadline,
                "virtiofsd made no socket in 10 s: {}",
                daemon.log()
            );
            std::thread::sleep(Duration::from_millis(10));
        }
        daemon
    }

    fn socket(&self) -> PathBuf {
        self.dir.path().join("vfs.sock")
    }

    fn share(&self) -> PathBuf {
        self.dir.path().join("share")
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("virtiofsd.log")).unwrap_or_default()
    }

    /// Whether the daemon ended by itself within `within` (it does once its
    /// frontend disconnects).
    fn exits_within(&mut self, within: Duration) -> bool {
        let deadline = Instant::now() + within;
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return true;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        false
    }
}

impl Drop for Virtiofsd {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
        }
        let _ = self.child.wait();
    }
}

#[test]
fn fs_guest_reads_and_writes_the_share_through_virtiofsd() {
    let mut daemon = Virtiofsd::start();
    let spec = format!("socket={},tag=vmpod", daemon.socket().display());
    let guest = fs_guest();
    let started = Instant::now();
    let r = run(&["--kernel", &guest, "--fs", &spec]);
    let took = started.elapsed();
    r.assert_reset();
    r.assert_serial("vmpod-guest: fs tag=vmpod request-queues=1\n");
    // irq=1: InterruptStatus showed the used-ring bit, set by the VMM's
    // relay of virtiofsd's call eventfd.
    r.assert_serial("vmpod-guest: fs init major=7 minor=");
    r.assert_serial(" irq=1\n");
    r.assert_serial("vmpod-guest: fs lookup hello.txt node=");
    r.assert_serial(&format!(" size={}\n", HELLO.len()));
    r.assert_serial(&format!(
        "vmpod-guest: fs read hello.txt bytes={} text={}\n",
        HELLO.len(),
        HELLO.replace('\n', "|")
    ));
    r.assert_serial(&format!(
        "vmpod-guest: fs wrote from-guest.txt bytes={}\n",
        PAYLOAD.len()
    ));
    // The driver's reset stopped the rings (GET_VRING_BASE) and completed.
    r.assert_serial("vmpod-guest: fs done status=0x0\n");
    // Started again after the reset, and left live at the guest's end: the
    // VMM stopped the rings on its way out.
    r.assert_serial("vmpod-guest: fs again lookup hello.txt node=");
    let written = std::fs::read_to_string(daemon.share().join("from-guest.txt"))
        .unwrap_or_else(|e| panic!("from-guest.txt on the host: {e}; {}", daemon.log()));
    assert_eq!(written, PAYLOAD);
    // The VMM closed the connection on its way out: virtiofsd ends itself.
    assert!(
        daemon.exits_within(Duration::from_secs(5)),
        "virtiofsd still runs after the VMM exited: {}",
        daemon.log()
    );
    eprintln!("vmpod-vmm with virtiofsd: {took:?}");
}

/// A writer the test can read back.
#[derive(Clone, Default)]
struct Shared(Arc<Mutex<Vec<u8>>>);

impl Write for Shared {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().expect("lock").extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[test]
fn in_process_vmm_serves_the_fs_guest_under_per_thread_seccomp() {
    // The shim's way: the VMM in this process, the filter on its vCPU
    // thread only, the vhost-user monitor spawned (so filtered) from there.
    let mut daemon = Virtiofsd::start();
    let config = FsConfig {
        socket: daemon.socket(),
        tag: "vmpod".into(),
    };
    let device = FsDevice::connect(&config).expect("connect to virtiofsd");
    let out = Shared::default();
    let mut vm = vmm::build(VmmConfig {
        kernel: guests().join("fs.elf"),
        initramfs: None,
        cmdline: "console=ttyS0 reboot=k panic=1".into(),
        vcpus: 1,
        memory_mib: 64,
        serial: Box::new(out.clone()),
        boot: BootProtocol::Auto,
        virtio: vec![Box::new(device)],
        user: None,
    })
    .expect("build");
    assert_eq!(vm.wait(), ExitReason::Reset);
    drop(vm);
    // Dropping the VM (the device still live) stopped the rings and joined
    // the monitor thread; no other test of this binary runs a VMM in this
    // process.
    let monitors: Vec<String> = std::fs::read_dir("/proc/self/task")
        .expect("/proc/self/task")
        .filter_map(|e| std::fs::read_to_string(e.ok()?.path().join("comm")).ok())
        .filter(|name| name.trim() == "vhost-user")
        .collect();
    assert!(monitors.is_empty(), "monitor threads left: {monitors:?}");
    let serial = String::from_utf8_lossy(&out.0.lock().expect("lock")).into_owned();
    assert!(
        serial.contains(&format!("text={}\n", HELLO.replace('\n', "|"))),
        "{serial}"
    );
    assert!(
        serial.contains("vmpod-guest: fs done status=0x0\n"),
        "{serial}"
    );
    assert!(serial.contains("vmpod-guest: fs again lookup"), "{serial}");
    assert_eq!(
        std::fs::read_to_string(daemon.share().join("from-guest.txt")).expect("from-guest.txt"),
        PAYLOAD
    );
    assert!(
        daemon.exits_within(Duration::from_secs(5)),
        "{}",
        daemon.log()
    );
}

#[test]
fn a_socket_with_nothing_listening_is_named_before_any_guest_runs() {
    let dir = tempfile::tempdir().expect("tempdir");
    let socket = dir.path().join("absent.sock");
    let spec = format!("socket={},tag=vmpod", socket.display());
    // Built (on first use) before the clock starts.
    let guest = fs_guest();
    let started = Instant::now();
    let r = run(&["--kernel", &guest, "--fs", &spec]);
    assert_eq!(r.code, Some(1), "{}", r.stderr);
    r.assert_logged(&format!(
        "connecting to the vhost-user backend socket {}",
        socket.display()
    ));
    assert!(r.serial.is_empty(), "a guest ran: {}", r.serial);
    assert!(started.elapsed() < Duration::from_secs(5));
    // A socket file nobody listens on (a daemon that died) is named too.
    drop(UnixListener::bind(&socket).expect("bind"));
    let r = run(&["--kernel", &fs_guest(), "--fs", &spec]);
    assert_eq!(r.code, Some(1), "{}", r.stderr);
    r.assert_logged(&socket.display().to_string());
    r.assert_logged("Connection refused");
    assert!(r.serial.is_empty(), "a guest ran: {}", r.serial);
    // A malformed --fs is a usage error naming what is wrong.
    let r = run(&[
        "--kernel",
        &fs_guest(),
        "--fs",
        "socket=/x,tag=vmpod,dax=on",
    ]);
    assert_eq!(r.code, Some(2), "{}", r.stderr);
    r.assert_logged("unknown fs option \"dax\"");
}

/// How a fake backend goes wrong.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Fault {
    /// Answers the activation, then closes the connection (a virtiofsd
    /// that died mid-run).
    HangUpMidRun,
    /// Answers the activation, then sends a message nobody asked for.
    GarbageMidRun,
    /// Never answers SET_MEM_TABLE.
    StallMemTable,
    /// Answers SET_MEM_TABLE with a reply to another request.
    GarbleMemTable,
}

const GET_FEATURES: u32 = 1;
const SET_MEM_TABLE: u32 = 5;
const GET_VRING_BASE: u32 = 11;
const GET_PROTOCOL_FEATURES: u32 = 15;
const SET_VRING_ENABLE: u32 = 18;
const NEED_REPLY: u32 = 0x8;
const VIRTIO_F_VERSION_1: u64 = 1 << 32;
const VHOST_USER_F_PROTOCOL_FEATURES: u64 = 1 << 30;
const VHOST_USER_PROTOCOL_F_REPLY_ACK: u64 = 1 << 3;

fn reply(code: u32, body: &[u8]) -> Vec<u8> {
    let mut m = Vec::new();
    for w in [code, 0x5, body.len() as u32] {
        m.extend_from_slice(&w.to_le_bytes());
    }
    m.extend_from_slice(body);
    m
}

/// A vhost-user backend that negotiates as virtiofsd does (REPLY_ACK,
/// PROTOCOL_FEATURES) and then commits `fault`. It never touches the rings,
/// so the guest's FUSE_INIT stays unanswered. Serves one connection; the
/// thread ends at EOF or its hang-up.
fn fake_backend(socket: &Path, fault: Fault) -> JoinHandle<()> {
    let listener = UnixListener::bind(socket).expect("bind the fake backend");
    std::thread::spawn(move || {
        let Ok((mut s, _)) = listener.accept() else {
            return;
        };
        let mut header = [0u8; 12];
        // read() drops the fds that come with SET_MEM_TABLE and the rings.
        while s.read_exact(&mut header).is_ok() {
            let word = |i: usize| {
                u32::from_le_bytes(header[i * 4..i * 4 + 4].try_into().expect("4 bytes"))
            };
            let (code, flags) = (word(0), word(1));
            let mut body = vec![0u8; word(2) as usize];
            if s.read_exact(&mut body).is_err() {
                return;
            }
            let ack = reply(code, &0u64.to_le_bytes());
            let answer = match code {
                GET_FEATURES => reply(
                    code,
                    &(VIRTIO_F_VERSION_1 | VHOST_USER_F_PROTOCOL_FEATURES).to_le_bytes(),
                ),
                GET_PROTOCOL_FEATURES => {
                    reply(code, &VHOST_USER_PROTOCOL_F_REPLY_ACK.to_le_bytes())
                }
                GET_VRING_BASE => reply(code, &body),
                SET_MEM_TABLE if fault == Fault::StallMemTable => continue,
                SET_MEM_TABLE if fault == Fault::GarbleMemTable => {
                    reply(GET_FEATURES, &0u64.to_le_bytes())
                }
                _ if flags & NEED_REPLY != 0 => ack,
                _ => continue,
            };
            if s.write_all(&answer).is_err() {
                return;
            }
            // The request queue's ENABLE ends the activation.
            if code == SET_VRING_ENABLE && body[..8] == [1, 0, 0, 0, 1, 0, 0, 0] {
                std::thread::sleep(Duration::from_millis(200));
                match fault {
                    Fault::HangUpMidRun => return,
                    Fault::GarbageMidRun if s.write_all(b"not a vhost-user message").is_err() => {
                        return;
                    }
                    _ => {}
                }
            }
        }
    })
}

/// Runs the fs guest against a fake backend committing `fault`; the guest
/// must see NEEDS_RESET, reset the device and end, and the VMM exit 0.
fn against_fake(fault: Fault) -> Run {
    let dir = tempfile::tempdir().expect("tempdir");
    let socket = dir.path().join("fake.sock");
    let server = fake_backend(&socket, fault);
    let spec = format!("socket={},tag=vmpod", socket.display());
    // Built (on first use) before the clock starts.
    let guest = fs_guest();
    let started = Instant::now();
    let r = run(&[
        "--kernel",
        &guest,
        "--fs",
        &spec,
        "--test-vhost-user-timeout-ms",
        "300",
    ]);
    r.assert_reset();
    r.assert_serial("vmpod-guest: fs needs-reset\n");
    r.assert_serial("vmpod-guest: fs needs-reset ok\n");
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "{fault:?} took {:?}",
        started.elapsed()
    );
    server.join().expect("fake backend");
    r
}

#[test]
fn a_backend_that_goes_away_mid_run_makes_the_device_need_a_reset() {
    let r = against_fake(Fault::HangUpMidRun);
    // FUSE_INIT went out before the hang-up and was never answered.
    assert!(!r.serial.contains("fs init"), "{}", r.serial);
    r.assert_logged("hung up (did it exit?); marking DEVICE_NEEDS_RESET");
}

#[test]
fn a_backend_that_sends_garbage_mid_run_makes_the_device_need_a_reset() {
    let r = against_fake(Fault::GarbageMidRun);
    r.assert_logged("sent a message nobody asked for; the connection is closed");
    r.assert_logged("marking DEVICE_NEEDS_RESET");
}

#[test]
fn a_stalled_or_garbled_activation_fails_within_the_timeout() {
    let r = against_fake(Fault::StallMemTable);
    r.assert_logged("did not answer within 300ms during the activation");
    r.assert_logged("activation failed");
    let r = against_fake(Fault::GarbleMemTable);
    r.assert_logged("failed the activation");
    r.assert_logged("activation failed");
}
