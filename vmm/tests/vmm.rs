//! The built-in VMM against the tiny guests in `tests/guests/` on this
//! machine's /dev/kvm: every entry path, serial output, the boot timer, the
//! exit status, two vCPUs, a hostile guest, and the errors for a bad kernel
//! and an impossible memory size. Without /dev/kvm these tests fail: they
//! never pass by skipping.

mod common;

use common::guests::*;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use vmpod_vmm::{self as vmm, BootProtocol, ExitReason, VmmConfig};

const CMDLINE: &str = "console=ttyS0 reboot=k panic=1 vmpod.test=1";

fn initrd() -> PathBuf {
    let p = std::env::temp_dir().join(format!("vmpod-vmm-test-initrd-{}", std::process::id()));
    std::fs::write(&p, b"initrd-contents-ok").expect("write initrd");
    p
}

impl Run {
    /// The `--stats` line's JSON.
    fn stats(&self) -> serde_json::Value {
        let line = self
            .stderr
            .lines()
            .find_map(|l| l.strip_prefix("vmpod-vmm-stats: "))
            .unwrap_or_else(|| panic!("no stats line in {}", self.stderr));
        serde_json::from_str(line).expect("stats json")
    }

    fn assert_boot_timer(&self) {
        let us = self.stats()["boot_timer_us"].as_u64();
        assert!(
            matches!(us, Some(t) if t > 0),
            "boot timer not recorded: {}",
            self.stderr
        );
        assert!(self.stderr.contains("guest boot time: "), "{}", self.stderr);
    }
}

#[test]
fn elf_64_bit_entry_prints_writes_boot_timer_and_resets() {
    let initrd = initrd();
    let r = run(&[
        "--kernel",
        &guest("elf64.elf"),
        "--initramfs",
        &initrd.to_string_lossy(),
        "--cmdline",
        CMDLINE,
        "--stats",
    ]);
    r.assert_reset();
    r.assert_boot_timer();
    assert!(
        r.serial.contains(&format!(
            "vmpod-guest: elf64 ok e820=3 cmdline={CMDLINE} initrd=initrd-contents-ok\n"
        )),
        "{}",
        r.serial
    );
    assert_eq!(r.stats()["exit"], "reset");
}

#[test]
fn rust_no_std_guest_boots_prints_and_resets() {
    // tests/guests/rust: the entry stub, SSE, the console, the heap and the
    // i8042 exit of the library every Rust guest links.
    let r = run(&["--kernel", &guest("hello.elf"), "--stats"]);
    r.assert_reset();
    assert!(
        r.serial
            .contains("vmpod-guest: hello from Rust, squares=[1, 4, 9, 16]\n"),
        "{}",
        r.serial
    );
    assert!(!r.serial.contains("PANIC"), "{}", r.serial);
    // The CMOS clock shows the host's year (UTC).
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_secs();
    let year = vmpod_vmm::devices::legacy::cmos::Civil::from_unix(secs).year;
    assert!(
        r.serial
            .contains(&format!("vmpod-guest: hello rtc {year}\n")),
        "{}",
        r.serial
    );
    assert_eq!(r.stats()["exit"], "reset");
    // With a disk it reads sector 0 through virtio-drivers: the HAL, the
    // DMA pages and the device lookup work. Dropping the driver stops the
    // queues (QueueReady 0, read back) and resets the device.
    let path = disk("rust-hello");
    let spec = path.to_string_lossy().into_owned();
    let r = run(&["--kernel", &guest("hello.elf"), "--disk", &spec]);
    r.assert_reset();
    for line in [
        "vmpod-guest: hello blk0 capacity=8 sector0=vmpod-disk-ok-0!\n",
        "vmpod-guest: hello blk0 released\n",
    ] {
        assert!(r.serial.contains(line), "{line:?} missing: {}", r.serial);
    }
    assert!(!r.stderr.contains("WARN"), "{}", r.stderr);
    let _ = std::fs::remove_file(&path);
}

#[test]
fn a_panicking_rust_guest_is_a_guest_failure() {
    // The panic handler prints the message, then triple-faults: a triple
    // fault (exit 2), or an emulation failure (exit 3) on the nested KVM of
    // these test machines, never a clean reset.
    let r = run(&["--kernel", &guest("panic.elf")]);
    assert!(
        r.serial
            .contains("PANIC: on purpose, value 42 at src/bin/panic.rs:"),
        "{}",
        r.serial
    );
    assert!(
        matches!(r.code, Some(2 | 3)),
        "exit {:?}: {}",
        r.code,
        r.stderr
    );
    assert!(
        r.stderr.contains("vmpod-vmm: guest failed: "),
        "{}",
        r.stderr
    );
}

#[test]
fn pvh_note_is_preferred_and_gets_start_info() {
    let initrd = initrd();
    let r = run(&[
        "--kernel",
        &guest("pvh.elf"),
        "--initramfs",
        &initrd.to_string_lossy(),
        "--cmdline",
        CMDLINE,
        "--stats",
    ]);
    r.assert_reset();
    r.assert_boot_timer();
    assert!(
        r.serial.contains(&format!(
            "vmpod-guest: pvh ok modules=1 memmap=3 cmdline={CMDLINE}\n"
        )),
        "{}",
        r.serial
    );
}

#[test]
fn forcing_the_64_bit_entry_on_a_pvh_only_guest_is_a_guest_failure() {
    // The PVH guest's ELF entry point prints and triple-faults on purpose
    // (an empty IDT, then int3). KVM reports a triple fault; the nested KVM
    // of these test machines reports an emulation failure instead. Either
    // way the VMM exits nonzero and says what happened.
    let r = run(&["--kernel", &guest("pvh.elf"), "--boot", "linux64"]);
    assert!(r.serial.contains("wrong entry"), "{}", r.serial);
    match r.code {
        Some(2) => assert!(r.stderr.contains("triple fault on vCPU 0"), "{}", r.stderr),
        Some(3) => assert!(
            r.stderr.contains("KVM internal error on vCPU 0"),
            "{}",
            r.stderr
        ),
        other => panic!("exit {other:?}: {}", r.stderr),
    }
    assert!(
        r.stderr.contains("vmpod-vmm: guest failed: "),
        "{}",
        r.stderr
    );
}

#[test]
fn bzimage_setup_header_entry() {
    let initrd = initrd();
    let r = run(&[
        "--kernel",
        &guest("bzimage.bin"),
        "--initramfs",
        &initrd.to_string_lossy(),
        "--cmdline",
        CMDLINE,
        "--stats",
    ]);
    r.assert_reset();
    r.assert_boot_timer();
    assert!(
        r.serial.contains(&format!(
            "vmpod-guest: bzimage ok e820=3 cmdline={CMDLINE} initrd=initrd-contents-ok\n"
        )),
        "{}",
        r.serial
    );
}

#[test]
fn two_vcpus_both_report_in() {
    let r = run(&["--kernel", &guest("smp.elf"), "--vcpus", "2"]);
    r.assert_reset();
    for line in [
        "vmpod-guest: cpu0 up\n",
        "vmpod-guest: mptable cpus=2\n",
        "vmpod-guest: cpu1 up\n",
        "vmpod-guest: smp ok\n",
    ] {
        assert!(r.serial.contains(line), "{line:?} missing: {}", r.serial);
    }
}

#[test]
fn hostile_guest_cannot_take_the_vmm_down() {
    let r = run(&[
        "--kernel",
        &guest("hostile.elf"),
        "--test-virtio-null",
        "1",
        "--stats",
    ]);
    r.assert_reset();
    assert!(
        r.serial.contains("vmpod-guest: hostile start\n"),
        "{}",
        r.serial
    );
    assert!(
        r.serial.contains("vmpod-guest: needs-reset ok\n"),
        "{}",
        r.serial
    );
    assert!(
        r.serial.contains("vmpod-guest: hostile survived\n"),
        "{}",
        r.serial
    );
    assert!(
        r.stderr.contains("marking DEVICE_NEEDS_RESET"),
        "{}",
        r.stderr
    );
    // The garbage never hit the boot timer's magic, only finish64 did.
    r.assert_boot_timer();
    // Guest-triggered warnings are capped.
    let warnings = r.stderr.lines().filter(|l| l.contains("WARN")).count();
    assert!(warnings < 100, "{warnings} warning lines");
}

#[test]
fn a_file_that_is_no_kernel_is_named() {
    let bad = guest("garbage.bin");
    let r = run(&["--kernel", &bad]);
    assert_eq!(r.code, Some(1));
    assert!(
        r.stderr.contains(&bad) && r.stderr.contains("neither an ELF vmlinux nor a bzImage"),
        "{}",
        r.stderr
    );
    let r = run(&["--kernel", "/nonexistent/vmlinux"]);
    assert_eq!(r.code, Some(1));
    assert!(
        r.stderr.contains("kernel /nonexistent/vmlinux"),
        "{}",
        r.stderr
    );
}

#[test]
fn impossible_memory_size_fails_before_any_guest_runs() {
    let started = Instant::now();
    let r = run(&["--kernel", &guest("elf64.elf"), "--memory-mib", "16777216"]);
    assert_eq!(r.code, Some(1), "{}", r.stderr);
    assert!(
        r.stderr.contains("more than this host can provide"),
        "{}",
        r.stderr
    );
    assert!(r.serial.is_empty(), "a guest ran: {}", r.serial);
    assert!(started.elapsed() < Duration::from_secs(10));
}

/// A writer the test can read back.
#[derive(Clone, Default)]
struct Shared(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for Shared {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().expect("lock").extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[test]
fn pause_resume_and_stop_join_every_vcpu() {
    // With one vCPU the SMP guest's INIT-SIPI reaches nobody and it spins
    // waiting for the AP: a guest that is running and never ends by itself.
    let out = Shared::default();
    let mut vm = vmm::build(VmmConfig {
        kernel: guests().join("smp.elf"),
        initramfs: None,
        cmdline: CMDLINE.into(),
        vcpus: 1,
        memory_mib: 64,
        serial: Box::new(out.clone()),
        boot: BootProtocol::Auto,
        virtio: Vec::new(),
        user: None,
    })
    .expect("build");
    let handle = vm.handle();
    let deadline = Instant::now() + Duration::from_secs(10);
    while !String::from_utf8_lossy(&out.0.lock().expect("lock")).contains("cpu0 up") {
        assert!(Instant::now() < deadline, "guest never printed");
        std::thread::sleep(Duration::from_millis(5));
    }
    // The vCPU threads are filtered, the rest of this process is not.
    let vcpus = threads_named("vcpu");
    assert!(!vcpus.is_empty(), "no vCPU thread found");
    for (tid, status) in &vcpus {
        assert_eq!(seccomp_mode(status), Some(2), "vCPU thread {tid}: {status}");
    }
    let me = std::fs::read_to_string("/proc/thread-self/status").expect("own status");
    assert_eq!(seccomp_mode(&me), Some(0), "{me}");
    // Likewise their privileges: the vCPU threads hold no capability, this
    // one keeps what it had.
    for (tid, status) in &vcpus {
        assert_eq!(
            status_field(status, "CapEff:"),
            "0000000000000000",
            "vCPU {tid}"
        );
        assert_eq!(
            status_field(status, "CapBnd:"),
            "0000000000000000",
            "vCPU {tid}"
        );
    }
    let mine = std::fs::read_to_string("/proc/self/status").expect("process status");
    assert_eq!(status_field(&me, "CapEff:"), status_field(&mine, "CapEff:"));
    handle.pause();
    assert!(handle.is_paused());
    assert_eq!(handle.exit_reason(), None);
    handle.resume();
    assert!(!handle.is_paused());
    handle.stop();
    assert_eq!(vm.wait(), ExitReason::Stopped);
}

/// `Seccomp:` from a /proc status file: 0 off, 2 filter.
fn seccomp_mode(status: &str) -> Option<u32> {
    status
        .lines()
        .find_map(|l| l.strip_prefix("Seccomp:"))
        .and_then(|v| v.trim().parse().ok())
}

/// (tid, status) of this process's threads whose name starts with `prefix`.
fn threads_named(prefix: &str) -> Vec<(String, String)> {
    threads_of("self")
        .into_iter()
        .filter(|(_, status)| {
            status
                .lines()
                .find_map(|l| l.strip_prefix("Name:"))
                .is_some_and(|n| n.trim().starts_with(prefix))
        })
        .collect()
}

/// (tid, status) of every thread of `pid` that still exists.
fn threads_of(pid: &str) -> Vec<(String, String)> {
    let dir = format!("/proc/{pid}/task");
    std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{dir}: {e}"))
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            let tid = e.file_name().to_string_lossy().into_owned();
            let status = std::fs::read_to_string(e.path().join("status")).ok()?;
            Some((tid, status))
        })
        .collect()
}

/// Starts `vmpod-vmm` on the SMP guest with one vCPU (it spins waiting for
/// the AP, so it runs until killed), waits for its first line, and returns
/// the /proc status of each of its threads.
fn spinning_vmm_threads(extra: &[&str]) -> Vec<(String, String)> {
    let serial = std::env::temp_dir().join(format!(
        "vmpod-vmm-test-seccomp-{}-{}",
        std::process::id(),
        extra.len()
    ));
    let _ = std::fs::remove_file(&serial);
    let mut args = vec![
        "--kernel".to_owned(),
        guest("smp.elf"),
        "--serial".to_owned(),
        serial.to_string_lossy().into_owned(),
    ];
    args.extend(extra.iter().map(|s| s.to_string()));
    let mut child = Command::new(env!("CARGO_BIN_EXE_vmpod-vmm"))
        .args(&args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn vmpod-vmm");
    let deadline = Instant::now() + Duration::from_secs(20);
    while !std::fs::read_to_string(&serial)
        .unwrap_or_default()
        .contains("cpu0 up")
    {
        if Instant::now() > deadline || child.try_wait().expect("try_wait").is_some() {
            let _ = child.kill();
            let out = child.wait_with_output().expect("output");
            panic!(
                "the guest never printed; {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    let threads = threads_of(&child.id().to_string());
    let _ = child.kill();
    let _ = child.wait();
    let _ = std::fs::remove_file(&serial);
    threads
}

/// A /proc status field, its words joined by one space.
fn status_field(status: &str, name: &str) -> String {
    status
        .lines()
        .find_map(|l| l.strip_prefix(name))
        .map(|v| v.split_whitespace().collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

/// The Seccomp mode and filter count of each thread.
fn spinning_vmm_seccomp(extra: &[&str]) -> Vec<(String, Option<u32>, Option<u32>)> {
    spinning_vmm_threads(extra)
        .into_iter()
        .map(|(tid, status)| {
            (
                tid,
                status_field(&status, "Seccomp:").parse().ok(),
                status_field(&status, "Seccomp_filters:").parse().ok(),
            )
        })
        .collect()
}

#[test]
fn vmpod_vmm_threads_hold_no_privilege() {
    let caps = ["CapInh:", "CapPrm:", "CapEff:", "CapBnd:", "CapAmb:"];
    let none = "0000000000000000";
    for extra in [&[][..], &["--user", "65534:65534"][..]] {
        let threads = spinning_vmm_threads(extra);
        assert!(threads.len() >= 2, "{threads:?}");
        for (tid, status) in &threads {
            for set in caps {
                assert_eq!(
                    status_field(status, set),
                    none,
                    "{extra:?} thread {tid}: {set}"
                );
            }
            assert_eq!(status_field(status, "NoNewPrivs:"), "1", "thread {tid}");
            if !extra.is_empty() {
                assert_eq!(status_field(status, "Uid:"), "65534 65534 65534 65534");
                assert_eq!(status_field(status, "Gid:"), "65534 65534 65534 65534");
                assert_eq!(status_field(status, "Groups:"), "");
            }
        }
    }
    let r = run(&["--kernel", &guest("elf64.elf"), "--user", "0:0"]);
    assert_eq!(r.code, Some(2), "{}", r.stderr);
    assert!(r.stderr.contains("uid 0 is root"), "{}", r.stderr);
}

#[test]
fn vmpod_vmm_runs_the_guest_under_its_seccomp_filter() {
    let threads = spinning_vmm_seccomp(&[]);
    // The main thread and the vCPU thread at least.
    assert!(threads.len() >= 2, "{threads:?}");
    for (tid, mode, filters) in &threads {
        assert_eq!(*mode, Some(2), "thread {tid} not filtered: {threads:?}");
        assert_eq!(*filters, Some(2), "thread {tid}: {threads:?}");
    }
    let threads = spinning_vmm_seccomp(&["--no-seccomp"]);
    for (tid, mode, _) in &threads {
        assert_eq!(*mode, Some(0), "thread {tid} filtered: {threads:?}");
    }
}

#[test]
fn two_vms_in_one_process() {
    // The shim may one day hold more than one VM; nothing is global but the
    // kick handler.
    let a = Shared::default();
    let b = Shared::default();
    let config = |out: &Shared| VmmConfig {
        kernel: guests().join("elf64.elf"),
        initramfs: None,
        cmdline: CMDLINE.into(),
        vcpus: 1,
        memory_mib: 32,
        serial: Box::new(out.clone()),
        boot: BootProtocol::Auto,
        virtio: Vec::new(),
        user: None,
    };
    let mut va = vmm::build(config(&a)).expect("build a");
    let mut vb = vmm::build(config(&b)).expect("build b");
    assert_eq!(va.wait(), ExitReason::Reset);
    assert_eq!(vb.wait(), ExitReason::Reset);
    assert!(va.boot_time().is_some() && vb.boot_time().is_some());
    for out in [a, b] {
        let text = String::from_utf8_lossy(&out.0.lock().expect("lock")).into_owned();
        assert!(text.contains("elf64 ok"), "{text}");
    }
}

/// A disk image for the virtio-blk guests: sector 0 starts with a marker the
/// guest prints, the rest is a byte pattern the guest must not touch.
fn disk(name: &str) -> PathBuf {
    let p = std::env::temp_dir().join(format!("vmpod-vmm-test-{name}-{}", std::process::id()));
    let mut image: Vec<u8> = (0..8 * 512).map(|i| (i % 251) as u8).collect();
    image[..16].copy_from_slice(b"vmpod-disk-ok-0!");
    std::fs::write(&p, &image).expect("write disk image");
    p
}

/// What `blk.S` writes to sector 1.
fn guest_pattern() -> Vec<u8> {
    (0..512u32).map(|i| (i as u8) ^ 0x5a).collect()
}

#[test]
fn virtio_blk_reads_and_writes_the_host_file() {
    let path = disk("blk");
    let before = std::fs::read(&path).expect("read disk");
    let spec = path.to_string_lossy().into_owned();
    let r = run(&["--kernel", &guest("blk.elf"), "--disk", &spec]);
    r.assert_reset();
    let sector0 = String::from_utf8_lossy(&before[..16]).into_owned();
    for line in [
        "vmpod-guest: blk capacity=08\n".to_owned(),
        "vmpod-guest: blk read status=00\n".to_owned(),
        format!("vmpod-guest: blk sector0={sector0}\n"),
        "vmpod-guest: blk write status=00\n".to_owned(),
        "vmpod-guest: blk flush status=00\n".to_owned(),
        "vmpod-guest: blk done\n".to_owned(),
    ] {
        assert!(r.serial.contains(&line), "{line:?} missing: {}", r.serial);
    }
    let after = std::fs::read(&path).expect("read disk");
    assert_eq!(&after[512..1024], guest_pattern().as_slice(), "sector 1");
    assert_eq!(after[..512], before[..512], "sector 0 untouched");
    assert_eq!(after[1024..], before[1024..], "sectors 2.. untouched");
    let _ = std::fs::remove_file(&path);
}

#[test]
fn virtio_blk_read_only_refuses_writes() {
    let path = disk("blk-ro");
    let before = std::fs::read(&path).expect("read disk");
    let spec = format!("{},ro", path.display());
    let r = run(&["--kernel", &guest("blk.elf"), "--disk", &spec]);
    r.assert_reset();
    assert!(
        r.serial.contains("vmpod-guest: blk read status=00\n"),
        "{}",
        r.serial
    );
    assert!(
        r.serial.contains("vmpod-guest: blk write status=01\n"),
        "IOERR expected: {}",
        r.serial
    );
    assert!(r.stderr.contains("read-only disk"), "{}", r.stderr);
    assert_eq!(std::fs::read(&path).expect("read disk"), before);
    let _ = std::fs::remove_file(&path);
}

#[test]
fn virtio_blk_survives_a_hostile_driver() {
    let path = disk("blk-hostile");
    let before = std::fs::read(&path).expect("read disk");
    let spec = path.to_string_lossy().into_owned();
    let r = run(&["--kernel", &guest("blk_hostile.elf"), "--disk", &spec]);
    r.assert_reset();
    for line in [
        "vmpod-guest: blk read status=00\n",
        "vmpod-guest: blk oob status=01\n",
        "vmpod-guest: blk beyond status=01\n",
        "vmpod-guest: blk loop needs-reset ok\n",
        "vmpod-guest: blk done\n",
    ] {
        assert!(r.serial.contains(line), "{line:?} missing: {}", r.serial);
    }
    for logged in [
        "is outside guest memory",
        "lie beyond the disk's 8 sectors",
        "looped, oversized or truncated",
        "marking DEVICE_NEEDS_RESET",
    ] {
        assert!(
            r.stderr.contains(logged),
            "{logged:?} not logged: {}",
            r.stderr
        );
    }
    assert_eq!(std::fs::read(&path).expect("read disk"), before);
    let _ = std::fs::remove_file(&path);
}

#[test]
fn a_missing_disk_is_named() {
    let r = run(&[
        "--kernel",
        &guest("blk.elf"),
        "--disk",
        "/nonexistent/disk.img",
    ]);
    assert_eq!(r.code, Some(1), "{}", r.stderr);
    assert!(
        r.stderr.contains("opening disk /nonexistent/disk.img"),
        "{}",
        r.stderr
    );
    assert!(r.serial.is_empty(), "a guest ran: {}", r.serial);
    let r = run(&["--kernel", &guest("blk.elf"), "--disk", "x,rx"]);
    assert_eq!(r.code, Some(2), "clap usage error: {}", r.stderr);
    assert!(r.stderr.contains("unknown disk option"), "{}", r.stderr);
}

/// The vsock guest's test data: distinct from the guest's own pattern, so
/// an echo cannot be mistaken for the other direction's bytes.
fn host_pattern(len: usize) -> Vec<u8> {
    (0..len)
        .map(|i| (i.wrapping_mul(31).wrapping_add(7) % 256) as u8)
        .collect()
}

/// Connects through the hybrid-vsock socket to guest `port`, retrying
/// until the guest listens (until then its RST closes the socket).
fn hybrid_connect(uds: &Path, port: u32) -> std::os::unix::net::UnixStream {
    use std::io::{Read, Write};
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        assert!(
            Instant::now() < deadline,
            "guest port {port} never accepted through {}",
            uds.display()
        );
        if let Ok(mut s) = std::os::unix::net::UnixStream::connect(uds) {
            s.write_all(format!("CONNECT {port}\n").as_bytes())
                .expect("write CONNECT");
            let mut line = Vec::new();
            let mut byte = [0u8; 1];
            while let Ok(1) = s.read(&mut byte) {
                if byte[0] == b'\n' {
                    break;
                }
                line.push(byte[0]);
            }
            let line = String::from_utf8_lossy(&line);
            if let Some(host_port) = line.strip_prefix("OK ") {
                let host_port: u32 = host_port.parse().expect("OK <port>");
                assert!(host_port >= 1 << 30, "host ports are ephemeral: {line}");
                return s;
            }
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn vsock_echoes_a_mebibyte_host_initiated_and_guest_initiated() {
    use std::io::{Read, Write};
    use std::os::unix::net::UnixListener;
    const TOTAL: usize = 1 << 20;

    let dir = tempfile::tempdir().expect("tempdir");
    let uds = dir.path().join("vm.vsock");
    // Guest-initiated connections to host port 6000 land on `<uds>_6000`,
    // where this echoes everything back.
    let listener = UnixListener::bind(dir.path().join("vm.vsock_6000")).expect("bind");
    let echo = std::thread::spawn(move || {
        let (mut s, _) = listener.accept().expect("accept");
        let mut buf = vec![0u8; 64 * 1024];
        let mut total = 0;
        loop {
            match s.read(&mut buf) {
                Ok(0) | Err(_) => return total,
                Ok(n) => {
                    s.write_all(&buf[..n]).expect("echo");
                    total += n;
                }
            }
        }
    });
    let vsock = format!("cid=3,uds={}", uds.display());
    let kernel = guest("vsock.elf");
    let args = ["--kernel", &kernel, "--memory-mib", "64", "--vsock", &vsock];
    let child = spawn_vmm(&args);

    let mut stream = hybrid_connect(&uds, 5000);
    let data = host_pattern(TOTAL);
    let mut writer = stream.try_clone().expect("clone");
    let sent = data.clone();
    let writer = std::thread::spawn(move || writer.write_all(&sent).expect("send 1 MiB"));
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .expect("timeout");
    let mut back = vec![0u8; TOTAL];
    stream.read_exact(&mut back).expect("read the echo");
    writer.join().expect("writer");
    assert!(back == data, "the host-initiated echo differs");
    drop(stream);

    let out = wait_with_deadline(child, &args);
    let serial = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        out.status.code(),
        Some(0),
        "serial: {serial}\nstderr: {stderr}"
    );
    assert!(serial.contains("vsock: listening cid=3"), "{serial}");
    assert!(
        serial.contains(&format!("vsock: host-initiated echoed {TOTAL} bytes")),
        "{serial}"
    );
    assert!(
        serial.contains(&format!("vsock: guest-initiated echo ok {TOTAL} bytes")),
        "{serial}"
    );
    assert_eq!(echo.join().expect("echo thread"), TOTAL);
}

/// A host listener on `path` polled from a thread until `stop`: it accepts
/// every connection and keeps it unread; at the end it reads each to EOF
/// and returns the bytes each carried.
fn hold_connections(
    path: &Path,
    stop: Arc<std::sync::atomic::AtomicBool>,
) -> std::thread::JoinHandle<Vec<usize>> {
    use std::io::Read;
    use std::sync::atomic::Ordering;
    let listener = std::os::unix::net::UnixListener::bind(path).expect("bind");
    listener.set_nonblocking(true).expect("nonblocking");
    std::thread::spawn(move || {
        let mut held = Vec::new();
        while !stop.load(Ordering::SeqCst) {
            match listener.accept() {
                Ok((s, _)) => held.push(s),
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                    std::thread::sleep(Duration::from_millis(5));
                }
                Err(e) => panic!("accept: {e}"),
            }
        }
        held.into_iter()
            .map(|mut s| {
                s.set_nonblocking(false).expect("blocking");
                s.set_read_timeout(Some(Duration::from_secs(10)))
                    .expect("timeout");
                let mut data = Vec::new();
                s.read_to_end(&mut data).expect("read to EOF");
                data.len()
            })
            .collect()
    })
}

#[test]
fn vsock_survives_a_hostile_driver() {
    use std::sync::atomic::{AtomicBool, Ordering};
    let dir = tempfile::tempdir().expect("tempdir");
    let uds = dir.path().join("vm.vsock");
    let stop = Arc::new(AtomicBool::new(false));
    // 6001 accepts (steps 2 and 5), 6002 accepts and never reads (step 4);
    // nothing listens on 6003 (the flood of step 3).
    let accept = hold_connections(&dir.path().join("vm.vsock_6001"), stop.clone());
    let sink = hold_connections(&dir.path().join("vm.vsock_6002"), stop.clone());
    let vsock = format!("cid=3,uds={}", uds.display());
    let kernel = guest("vsock_hostile.elf");
    let started = Instant::now();
    let r = run(&["--kernel", &kernel, "--vsock", &vsock]);
    let elapsed = started.elapsed();
    stop.store(true, Ordering::SeqCst);
    r.assert_reset();
    for line in [
        "vsock-hostile: garbage written magic=0x74726976 device=19 unknown=0 queue77-max=0 cid=3 status=0x0\n",
        "vsock-hostile: illegal status 0x40 then 0x40, after reset 0x0\n",
        "vsock-hostile: ready cid=3\n",
        "vsock-hostile: tx short-header returned len=0\n",
        "vsock-hostile: tx writable-header returned len=0\n",
        "vsock-hostile: tx data-outside-ram returned len=0\n",
        "vsock-hostile: tx len-over-64k returned len=0\n",
        "vsock-hostile: tx looped returned len=0\n",
        "vsock-hostile: tx chain-as-long-as-queue returned len=0\n",
        "vsock-hostile: tx next-out-of-range returned len=0\n",
        "vsock-hostile: tx indirect-outside-ram returned len=0\n",
        "vsock-hostile: still serving: RESPONSE from port 6001 buf_alloc=262144\n",
        // With no RX buffer given back, the device answered into the 256 it
        // had, queued 1024 more replies (its cap) and stopped taking TX
        // chains; a whole TX queue (256) waited.
        "vsock-hostile: flood stalled tx-used=1280 posted=1536 rx-buffers=256 rst=256 other=0 backlog=1024\n",
        "vsock-hostile: flood resumed tx-used=3000 rst=3000 other=0\n",
        "vsock-hostile: credit connected to port 6002 buf_alloc=262144\n",
        "vsock-hostile: needs-reset ok status=0x4f interrupt-status=0x3\n",
        "vsock-hostile: after reset status=0x0, RESPONSE from port 6001\n",
    ] {
        assert!(r.serial.contains(line), "{line:?} missing: {}", r.serial);
    }
    // "credit reset after S KiB sent, credit-updates=N (the host took T KiB)"
    let credit = r
        .serial
        .lines()
        .find(|l| l.starts_with("vsock-hostile: credit reset after "))
        .unwrap_or_else(|| panic!("no credit reset line: {}", r.serial));
    let kib = |after: &str| -> usize {
        credit
            .split(after)
            .nth(1)
            .and_then(|rest| rest.split(' ').next())
            .and_then(|n| n.parse::<usize>().ok())
            .unwrap_or_else(|| panic!("no number after {after:?} in {credit:?}"))
            * 1024
    };
    let (sent, took) = (kib("reset after "), kib("the host took "));
    assert!(!r.serial.contains("unexpected"), "{}", r.serial);
    for logged in [
        "ignored 1-byte register write",
        "ignored 4-byte unaligned register write",
        "ignored 8-byte register write",
        "QueueNotify for queue 99, which does not exist",
        "write to the read-only config space",
        "illegal status transition 0x0 -> 0x4; marking DEVICE_NEEDS_RESET",
        "dropping a malformed TX packet",
        "-byte credit already held; resetting",
        "the TX available ring is invalid",
        "virtio-vsock: the TX available ring is invalid",
    ] {
        assert!(
            r.stderr.contains(logged),
            "{logged:?} not logged: {}",
            r.stderr
        );
    }
    assert!(
        r.stderr.contains("marking DEVICE_NEEDS_RESET"),
        "{}",
        r.stderr
    );
    // Guest-triggered warnings are capped: the 3000 refused connections
    // are not logged one by one.
    let warnings = r.stderr.lines().filter(|l| l.contains("WARN")).count();
    assert!(warnings < 100, "{warnings} warning lines: {}", r.stderr);
    // Step 2's and step 5's connections; step 4's, cut by the device.
    assert_eq!(accept.join().expect("6001").len(), 2);
    let sunk = sink.join().expect("6002");
    assert_eq!(sunk.len(), 1, "{sunk:?}");
    // The device held no more than its 256 KiB credit for the host, and
    // refused the 64 KiB packet past it: the rest reached the socket.
    const BUF_ALLOC: usize = 256 << 10;
    const PACKET: usize = 64 << 10;
    assert!(sent > BUF_ALLOC, "reset after only {sent} bytes: {credit}");
    assert!(
        took <= sunk[0] && sunk[0] < sent && sent <= sunk[0] + BUF_ALLOC + PACKET,
        "the host got {} bytes of the {sent} the guest sent: {credit}",
        sunk[0]
    );
    assert!(elapsed < Duration::from_secs(10), "took {elapsed:?}");
}

#[test]
fn a_vsock_socket_that_cannot_be_bound_is_named() {
    let kernel = guest("elf64.elf");
    let r = run(&[
        "--kernel",
        &kernel,
        "--vsock",
        "cid=3,uds=/nonexistent-dir/vm.vsock",
    ]);
    assert_eq!(r.code, Some(1), "{}", r.stderr);
    assert!(
        r.stderr
            .contains("binding the vsock socket /nonexistent-dir/vm.vsock"),
        "{}",
        r.stderr
    );
    assert!(r.serial.is_empty(), "no guest ran: {}", r.serial);
    let r = run(&["--kernel", &kernel, "--vsock", "cid=2,uds=/tmp/x"]);
    assert_eq!(r.code, Some(2), "clap usage error: {}", r.stderr);
    assert!(r.stderr.contains("reserved"), "{}", r.stderr);
}
