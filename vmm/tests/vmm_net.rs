//! virtio-net end to end: `vmpod-vmm` boots the Rust network guests
//! (tests/guests/rust/src/bin/net*.rs) on a TAP in a network namespace of
//! the test's own, and the test speaks to the guest through an AF_PACKET
//! socket on that TAP, checking every frame byte for byte in both
//! directions, then the guest's serial output. The protocol is documented
//! in tests/guests/rust/src/eth.rs. Needs root (network namespaces, TAPs)
//! and /dev/kvm; without them these tests fail, they never skip.
mod common;

use common::guests::*;

use std::io::Read;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// The guest's address, given with `mac=`, and the TAP's on the host side.
const GUEST_MAC: [u8; 6] = [0x02, 0x00, 0x00, 0xaa, 0xbb, 0x01];
const GUEST_MAC_STR: &str = "02:00:00:aa:bb:01";
const HOST_MAC: [u8; 6] = [0x02, 0x00, 0x00, 0x00, 0x00, 0xfe];
const HOST_MAC_STR: &str = "02:00:00:00:00:fe";
/// tests/guests/rust/src/eth.rs.
const TYPE_GUEST: u16 = 0x88b5;
const TYPE_HOST: u16 = 0x88b6;
const TYPE_ECHO: u16 = 0x88b7;
const BIG: usize = 1500;
const DEADLINE: Duration = Duration::from_secs(60);

// --- the network namespace ---

/// A network namespace for one test, deleted on drop (also when the test
/// fails), with everything in it.
struct Netns {
    name: String,
}

impl Netns {
    fn new(what: &str) -> Netns {
        static N: AtomicU32 = AtomicU32::new(0);
        let name = format!(
            "vmpod-net-{}-{}-{what}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        );
        run_ip(&["netns", "add", &name]);
        let ns = Netns { name };
        // No IPv6 autoconfiguration chatter on the TAP: only the test's
        // frames cross it. (Best effort: a kernel without IPv6 has nothing
        // to turn off.)
        ns.enter(|| {
            for conf in ["all", "default"] {
                let _ = std::fs::write(format!("/proc/sys/net/ipv6/conf/{conf}/disable_ipv6"), "1");
            }
        });
        ns
    }

    fn ip(&self, args: &[&str]) {
        let mut all = vec!["-n", &self.name];
        all.extend_from_slice(args);
        run_ip(&all);
    }

    /// A TAP named `tap` with the host-side address, up.
    fn tap(&self, tap: &str) {
        self.ip(&["tuntap", "add", "dev", tap, "mode", "tap"]);
        self.ip(&["link", "set", "dev", tap, "address", HOST_MAC_STR]);
        self.ip(&["link", "set", "dev", tap, "up"]);
    }

    /// Runs `f` on a thread that has joined the namespace (setns moves only
    /// the calling thread); sockets and fds it opens stay in the namespace.
    fn enter<T: Send>(&self, f: impl FnOnce() -> T + Send) -> T {
        let path = format!("/run/netns/{}", self.name);
        std::thread::scope(|s| {
            s.spawn(|| {
                let ns = std::fs::File::open(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
                // SAFETY: setns on an fd we hold, for this thread only.
                let r = unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) };
                assert_eq!(r, 0, "setns {path}: {}", std::io::Error::last_os_error());
                f()
            })
            .join()
            .expect("the namespace thread panicked")
        })
    }

    /// `ip netns exec NS vmpod-vmm ARGS`.
    fn vmm(&self, args: &[&str]) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.name, env!("CARGO_BIN_EXE_vmpod-vmm")])
            .args(args);
        c
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let out = Command::new("ip")
            .args(["netns", "delete", &self.name])
            .output();
        match out {
            Ok(o) if o.status.success() => {}
            Ok(o) => eprintln!(
                "deleting netns {}: {}",
                self.name,
                String::from_utf8_lossy(&o.stderr)
            ),
            Err(e) => eprintln!("deleting netns {}: {e}", self.name),
        }
    }
}

fn run_ip(args: &[&str]) {
    let out = Command::new("ip")
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("running ip {args:?}: {e}"));
    assert!(
        out.status.success(),
        "ip {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

// --- frames ---

fn frame(dst: [u8; 6], src: [u8; 6], ethertype: u16, payload: &[u8]) -> Vec<u8> {
    let mut f = Vec::with_capacity(14 + payload.len());
    f.extend_from_slice(&dst);
    f.extend_from_slice(&src);
    f.extend_from_slice(&ethertype.to_be_bytes());
    f.extend_from_slice(payload);
    f
}

fn ethertype(f: &[u8]) -> Option<u16> {
    Some(u16::from_be_bytes([*f.get(12)?, *f.get(13)?]))
}

/// eth.rs's `big_payload`.
fn big_payload(prefix: &[u8]) -> Vec<u8> {
    let mut p = prefix.to_vec();
    while p.len() < BIG {
        p.push(((p.len() * 7 + 3) % 251) as u8);
    }
    p
}

fn fnv1a(bytes: &[u8]) -> u32 {
    bytes.iter().fold(0x811c_9dc5u32, |h, b| {
        (h ^ u32::from(*b)).wrapping_mul(0x0100_0193)
    })
}

/// An AF_PACKET socket bound to one interface: every frame that crosses
/// it, both ways (outgoing copies are skipped on receive).
struct PacketSocket {
    fd: OwnedFd,
}

impl PacketSocket {
    /// Opens it inside `ns` on `ifname`.
    fn open(ns: &Netns, ifname: &str) -> PacketSocket {
        let ifname = ifname.to_owned();
        ns.enter(move || {
            let proto = (libc::ETH_P_ALL as u16).to_be();
            // SAFETY: plain socket(2); the fd is owned right away.
            let fd = unsafe {
                libc::socket(
                    libc::AF_PACKET,
                    libc::SOCK_RAW | libc::SOCK_CLOEXEC,
                    i32::from(proto),
                )
            };
            assert!(
                fd >= 0,
                "AF_PACKET socket: {}",
                std::io::Error::last_os_error()
            );
            // SAFETY: just created, ours alone.
            let fd = unsafe { OwnedFd::from_raw_fd(fd) };
            let name = std::ffi::CString::new(ifname.clone()).expect("name");
            // SAFETY: a NUL-terminated name.
            let index = unsafe { libc::if_nametoindex(name.as_ptr()) };
            assert_ne!(index, 0, "{ifname}: {}", std::io::Error::last_os_error());
            // SAFETY: sockaddr_ll is plain data.
            let mut sll: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
            sll.sll_family = libc::AF_PACKET as u16;
            sll.sll_protocol = proto;
            sll.sll_ifindex = index as i32;
            // SAFETY: bind with a sockaddr_ll of the right size.
            let r = unsafe {
                libc::bind(
                    fd.as_raw_fd(),
                    (&sll as *const libc::sockaddr_ll).cast(),
                    std::mem::size_of::<libc::sockaddr_ll>() as u32,
                )
            };
            assert_eq!(
                r,
                0,
                "bind to {ifname}: {}",
                std::io::Error::last_os_error()
            );
            let tv = libc::timeval {
                tv_sec: 0,
                tv_usec: 100_000,
            };
            // SAFETY: SO_RCVTIMEO with a timeval.
            let r = unsafe {
                libc::setsockopt(
                    fd.as_raw_fd(),
                    libc::SOL_SOCKET,
                    libc::SO_RCVTIMEO,
                    (&tv as *const libc::timeval).cast(),
                    std::mem::size_of::<libc::timeval>() as u32,
                )
            };
            assert_eq!(r, 0, "SO_RCVTIMEO: {}", std::io::Error::last_os_error());
            PacketSocket { fd }
        })
    }

    fn send(&self, frame: &[u8]) {
        // SAFETY: frame is valid for reads of its length.
        let n = unsafe { libc::send(self.fd.as_raw_fd(), frame.as_ptr().cast(), frame.len(), 0) };
        assert_eq!(
            n,
            frame.len() as isize,
            "sending a {}-byte frame: {}",
            frame.len(),
            std::io::Error::last_os_error()
        );
    }

    /// The next incoming frame, or None after the 100 ms timeout.
    fn recv(&self) -> Option<Vec<u8>> {
        let mut buf = vec![0u8; 65_600];
        loop {
            // SAFETY: sockaddr_ll is plain data.
            let mut from: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
            let mut len = std::mem::size_of::<libc::sockaddr_ll>() as u32;
            // SAFETY: buf and from are valid for writes of their sizes.
            let n = unsafe {
                libc::recvfrom(
                    self.fd.as_raw_fd(),
                    buf.as_mut_ptr().cast(),
                    buf.len(),
                    0,
                    (&mut from as *mut libc::sockaddr_ll).cast(),
                    &mut len,
                )
            };
            if n < 0 {
                return None;
            }
            if from.sll_pkttype == libc::PACKET_OUTGOING {
                continue;
            }
            return Some(buf[..n as usize].to_vec());
        }
    }

    /// Collects `count` incoming frames of EtherType `kind`, ignoring
    /// others, while `vm` still runs.
    fn collect(&self, kind: u16, count: usize, vm: &mut Vm) -> Vec<Vec<u8>> {
        let deadline = Instant::now() + DEADLINE;
        let mut got = Vec::new();
        while got.len() < count {
            assert!(
                Instant::now() < deadline,
                "only {} of {count} frames of type {kind:04x} arrived; {}",
                got.len(),
                vm.describe()
            );
            match self.recv() {
                Some(f) if ethertype(&f) == Some(kind) => got.push(f),
                Some(_) => {}
                None => vm.check_alive(),
            }
        }
        got
    }
}

// --- the VMM process ---

/// A running `vmpod-vmm` whose serial output and log are collected as they
/// come; killed on drop.
struct Vm {
    child: Child,
    serial: Arc<Mutex<String>>,
    stderr: Arc<Mutex<String>>,
    status: Option<ExitStatus>,
}

impl Vm {
    fn spawn(mut command: Command) -> Vm {
        let mut child = command
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn vmpod-vmm");
        let serial = Arc::new(Mutex::new(String::new()));
        let stderr = Arc::new(Mutex::new(String::new()));
        for (mut pipe, sink) in [
            (
                Box::new(child.stdout.take().expect("stdout")) as Box<dyn Read + Send>,
                serial.clone(),
            ),
            (
                Box::new(child.stderr.take().expect("stderr")) as Box<dyn Read + Send>,
                stderr.clone(),
            ),
        ] {
            std::thread::spawn(move || {
                let mut buf = [0u8; 4096];
                while let Ok(n) = pipe.read(&mut buf) {
                    if n == 0 {
                        break;
                    }
                    sink.lock()
                        .expect("lock")
                        .push_str(&String::from_utf8_lossy(&buf[..n]));
                }
            });
        }
        Vm {
            child,
            serial,
            stderr,
            status: None,
        }
    }

    fn serial(&self) -> String {
        self.serial.lock().expect("lock").clone()
    }

    fn stderr(&self) -> String {
        self.stderr.lock().expect("lock").clone()
    }

    fn describe(&self) -> String {
        format!(
            "exit {:?}\nserial:\n{}\nstderr:\n{}",
            self.status,
            self.serial(),
            self.stderr()
        )
    }

    /// Panics (with everything the VMM said) if it has exited.
    fn check_alive(&mut self) {
        if let Some(status) = self.child.try_wait().expect("try_wait") {
            self.status = Some(status);
            // Let the readers drain the pipes.
            std::thread::sleep(Duration::from_millis(50));
            panic!("vmpod-vmm ended early; {}", self.describe());
        }
    }

    fn wait_serial(&mut self, line: &str) {
        let deadline = Instant::now() + DEADLINE;
        while !self.serial().contains(line) {
            self.check_alive();
            assert!(
                Instant::now() < deadline,
                "no {line:?} in time; {}",
                self.describe()
            );
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// Waits for the exit; returns the status code.
    fn wait(&mut self) -> Option<i32> {
        let deadline = Instant::now() + DEADLINE;
        let status = loop {
            if let Some(s) = self.child.try_wait().expect("try_wait") {
                break s;
            }
            assert!(
                Instant::now() < deadline,
                "vmpod-vmm did not exit; {}",
                self.describe()
            );
            std::thread::sleep(Duration::from_millis(10));
        };
        self.status = Some(status);
        // The pipes close with the process; give the readers a moment.
        let drained = Instant::now() + Duration::from_secs(2);
        while !self.stderr().contains("vmpod-vmm: ") && Instant::now() < drained {
            std::thread::sleep(Duration::from_millis(5));
        }
        status.code()
    }

    /// User plus system CPU time, in clock ticks, of the VMM's thread
    /// named `name` (`ip netns exec` execs the VMM, so the child's pid is
    /// the VMM's).
    fn thread_cpu(&self, name: &str) -> u64 {
        let dir = format!("/proc/{}/task", self.child.id());
        for entry in std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("{dir}: {e}")) {
            let path = entry.expect("task entry").path();
            let comm = std::fs::read_to_string(path.join("comm")).unwrap_or_default();
            if comm.trim() != name {
                continue;
            }
            let stat = std::fs::read_to_string(path.join("stat")).expect("stat");
            // Fields after the parenthesised name: state is field 3, utime
            // and stime are 14 and 15.
            let rest = &stat[stat.rfind(')').expect("stat format") + 2..];
            let fields: Vec<&str> = rest.split(' ').collect();
            let tick = |i: usize| fields[i - 3].parse::<u64>().expect("ticks");
            return tick(14) + tick(15);
        }
        panic!("no thread named {name} in {dir}");
    }

    fn assert_reset(&mut self) {
        let code = self.wait();
        assert_eq!(code, Some(0), "{}", self.describe());
        assert!(
            self.stderr().contains("guest reset (i8042)"),
            "{}",
            self.describe()
        );
        assert!(!self.serial().contains("PANIC"), "{}", self.describe());
    }
}

impl Drop for Vm {
    fn drop(&mut self) {
        if self.status.is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

// --- the exchange ---

/// The protocol of eth.rs against a running `net` guest: its four frames,
/// exactly; four host frames, each echoed back reversed, exactly; then the
/// guest's serial lines and a clean exit.
fn exchange(sock: &PacketSocket, vm: &mut Vm) {
    vm.wait_serial("vmpod-net: ready\n");
    let from_guest = sock.collect(TYPE_GUEST, 4, vm);
    let mut expected: Vec<Vec<u8>> = (0..3)
        .map(|n| {
            frame(
                [0xff; 6],
                GUEST_MAC,
                TYPE_GUEST,
                format!("vmpod-net {n}").as_bytes(),
            )
        })
        .collect();
    expected.push(frame(
        [0xff; 6],
        GUEST_MAC,
        TYPE_GUEST,
        &big_payload(b"vmpod-net big "),
    ));
    for (i, (got, want)) in from_guest.iter().zip(&expected).enumerate() {
        assert_eq!(got.len(), want.len(), "guest frame {i}: length");
        assert!(got == want, "guest frame {i} differs: {got:02x?}");
    }

    let payloads: Vec<Vec<u8>> = vec![
        b"host 0".to_vec(),
        b"host 1".to_vec(),
        big_payload(b"host big "),
        b"bye".to_vec(),
    ];
    for p in &payloads {
        sock.send(&frame(GUEST_MAC, HOST_MAC, TYPE_HOST, p));
    }
    let echoes = sock.collect(TYPE_ECHO, payloads.len(), vm);
    for (i, (got, p)) in echoes.iter().zip(&payloads).enumerate() {
        let reversed: Vec<u8> = p.iter().rev().copied().collect();
        let want = frame(HOST_MAC, GUEST_MAC, TYPE_ECHO, &reversed);
        assert_eq!(got.len(), want.len(), "echo {i}: length");
        assert!(*got == want, "echo {i} differs: {got:02x?}");
    }

    vm.assert_reset();
    let serial = vm.serial();
    let big = &payloads[2];
    for line in [
        format!("vmpod-net: device 0 mac {GUEST_MAC_STR}\n"),
        "vmpod-net: sent 4\n".to_owned(),
        format!("vmpod-net: got 20 bytes type 88b6 from {HOST_MAC_STR}: \"host 0\"\n"),
        format!("vmpod-net: got 20 bytes type 88b6 from {HOST_MAC_STR}: \"host 1\"\n"),
        format!(
            "vmpod-net: got {} bytes type 88b6 from {HOST_MAC_STR}: <{} bytes fnv1a {:08x}>\n",
            14 + big.len(),
            big.len(),
            fnv1a(big)
        ),
        format!("vmpod-net: got 17 bytes type 88b6 from {HOST_MAC_STR}: \"bye\"\n"),
        "vmpod-net: echoed 4\n".to_owned(),
    ] {
        assert!(
            serial.contains(&line),
            "{line:?} missing: {}",
            vm.describe()
        );
    }
    let stderr = vm.stderr();
    assert!(!stderr.contains("WARN"), "guest errors logged: {stderr}");
}

#[test]
fn virtio_net_frames_cross_a_named_tap_both_ways_exactly() {
    let kernel = guest("net.elf");
    let ns = Netns::new("io");
    ns.tap("tap0");
    let sock = PacketSocket::open(&ns, "tap0");
    let mut vm = Vm::spawn(ns.vmm(&[
        "--kernel",
        &kernel,
        "--net",
        &format!("tap=tap0,mac={GUEST_MAC_STR}"),
    ]));
    exchange(&sock, &mut vm);
}

/// Opens the TAP `name` in `ns` as the shim will: TUNSETIFF with `flags`.
fn open_tap_fd(ns: &Netns, name: &str, flags: libc::c_int) -> OwnedFd {
    let name = name.to_owned();
    ns.enter(move || {
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open("/dev/net/tun")
            .expect("/dev/net/tun");
        // SAFETY: ifreq is plain data.
        let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
        for (d, s) in req.ifr_name.iter_mut().zip(name.bytes()) {
            *d = s as libc::c_char;
        }
        req.ifr_ifru.ifru_flags = flags as libc::c_short;
        // SAFETY: TUNSETIFF with an ifreq that outlives the call.
        let r = unsafe { libc::ioctl(file.as_raw_fd(), libc::TUNSETIFF, &mut req) };
        assert_eq!(
            r,
            0,
            "TUNSETIFF {name}: {}",
            std::io::Error::last_os_error()
        );
        OwnedFd::from(file)
    })
}

/// `vmpod-vmm` (in the test's own network namespace) with `fd` as its fd 3.
fn vmm_with_fd3(fd: &OwnedFd, args: &[&str]) -> Command {
    let raw = fd.as_raw_fd();
    let mut c = Command::new(env!("CARGO_BIN_EXE_vmpod-vmm"));
    c.args(args);
    // SAFETY: dup2 is async-signal-safe; it runs in the child between fork
    // and exec and makes fd 3 a copy of the TAP, without CLOEXEC.
    unsafe {
        c.pre_exec(move || {
            if libc::dup2(raw, 3) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    c
}

#[test]
fn a_tap_fd_handed_over_carries_its_namespace_and_works_like_a_named_one() {
    let kernel = guest("net.elf");
    let ns = Netns::new("fd");
    ns.tap("tap0");
    let sock = PacketSocket::open(&ns, "tap0");
    let fd = open_tap_fd(
        &ns,
        "tap0",
        libc::IFF_TAP | libc::IFF_NO_PI | libc::IFF_VNET_HDR,
    );
    // vmpod-vmm itself stays in the test's namespace: the fd is the TAP.
    let mut vm = Vm::spawn(vmm_with_fd3(
        &fd,
        &[
            "--kernel",
            &kernel,
            "--net",
            &format!("fd=3,mac={GUEST_MAC_STR}"),
        ],
    ));
    drop(fd);
    exchange(&sock, &mut vm);
}

#[test]
fn a_missing_tap_or_a_fd_that_is_no_tap_is_named_before_the_guest_runs() {
    let kernel = guest("net.elf");
    let ns = Netns::new("bad");
    let started = Instant::now();
    let check = |command: Command, code: i32, says: &str| {
        let mut vm = Vm::spawn(command);
        assert_eq!(vm.wait(), Some(code), "{}", vm.describe());
        assert!(
            vm.stderr().contains(says),
            "{says:?} missing: {}",
            vm.describe()
        );
        assert!(vm.serial().is_empty(), "a guest ran: {}", vm.describe());
    };
    check(
        ns.vmm(&["--kernel", &kernel, "--net", "tap=tap0"]),
        1,
        "TAP tap0: no such network interface in this network namespace",
    );
    // Never created on the way.
    let shown = Command::new("ip")
        .args(["-n", &ns.name, "link", "show", "tap0"])
        .output()
        .expect("ip");
    assert!(!shown.status.success(), "tap0 was created");
    check(
        ns.vmm(&["--kernel", &kernel, "--net", "tap=lo"]),
        1,
        "TAP lo: attaching with TUNSETIFF: Invalid argument (os error 22): it exists but is not a TAP",
    );
    // stdin is /dev/null.
    let mut c = Command::new(env!("CARGO_BIN_EXE_vmpod-vmm"));
    c.args(["--kernel", &kernel, "--net", "fd=0"]);
    check(c, 1, "TAP fd 0: not a TAP device (TUNGETIFF: ");
    let mut c = Command::new(env!("CARGO_BIN_EXE_vmpod-vmm"));
    c.args(["--kernel", &kernel, "--net", "fd=57"]);
    check(c, 1, "TAP fd 57: not an open file descriptor");
    // A TAP opened without a vnet header.
    ns.tap("tap1");
    let fd = open_tap_fd(&ns, "tap1", libc::IFF_TAP | libc::IFF_NO_PI);
    check(
        vmm_with_fd3(&fd, &["--kernel", &kernel, "--net", "fd=3"]),
        1,
        "TAP fd 3: TAP tap1 was opened without IFF_VNET_HDR",
    );
    drop(fd);
    let mut c = Command::new(env!("CARGO_BIN_EXE_vmpod-vmm"));
    c.args([
        "--kernel",
        &kernel,
        "--net",
        "fd=3",
        "--net",
        "fd=3,mac=02:00:00:00:00:09",
    ]);
    check(c, 1, "TAP fd 3 is given to more than one --net device");
    // Bad options are usage errors naming the value.
    let mut c = Command::new(env!("CARGO_BIN_EXE_vmpod-vmm"));
    c.args([
        "--kernel",
        &kernel,
        "--net",
        "tap=tap0,mac=01:00:5e:00:00:01",
    ]);
    check(c, 2, "MAC address 01:00:5e:00:00:01 is multicast");
    let mut c = Command::new(env!("CARGO_BIN_EXE_vmpod-vmm"));
    c.args(["--kernel", &kernel, "--net", "tap=no/slash"]);
    check(c, 2, "interface name \"no/slash\" is not valid");
    assert!(started.elapsed() < Duration::from_secs(30));
}

#[test]
fn virtio_net_survives_a_hostile_driver() {
    let kernel = guest("net_hostile.elf");
    let ns = Netns::new("hostile");
    ns.tap("tap0");
    let sock = PacketSocket::open(&ns, "tap0");
    let mut vm = Vm::spawn(ns.vmm(&[
        "--kernel",
        &kernel,
        "--net",
        &format!("tap=tap0,mac={GUEST_MAC_STR}"),
    ]));
    vm.wait_serial("vmpod-net-hostile: rx posted\n");
    sock.send(&frame(GUEST_MAC, HOST_MAC, TYPE_HOST, b"hostile rx"));
    // Only the two valid frames come out, in order, exactly.
    let out = sock.collect(TYPE_GUEST, 2, &mut vm);
    assert_eq!(
        out[0],
        frame([0xff; 6], GUEST_MAC, TYPE_GUEST, b"vmpod-net-hostile ok")
    );
    assert_eq!(
        out[1],
        frame(
            [0xff; 6],
            GUEST_MAC,
            TYPE_GUEST,
            b"vmpod-net-hostile after reset"
        )
    );
    vm.assert_reset();
    let serial = vm.serial();
    for line in [
        format!("vmpod-net-hostile: mac {GUEST_MAC_STR}\n"),
        "vmpod-net-hostile: rx readable buffer returned len=0 untouched=true\n".to_owned(),
        format!(
            "vmpod-net-hostile: rx got 24 bytes num_buffers=1 type 88b6 from {HOST_MAC_STR}: \"hostile rx\"\n"
        ),
        "vmpod-net-hostile: tx outside-ram returned len=0\n".to_owned(),
        "vmpod-net-hostile: tx oversized returned len=0\n".to_owned(),
        "vmpod-net-hostile: tx ok sent\n".to_owned(),
        "vmpod-net-hostile: needs-reset ok interrupt-status=0x3\n".to_owned(),
        "vmpod-net-hostile: after reset sent\n".to_owned(),
    ] {
        assert!(
            serial.contains(&line),
            "{line:?} missing: {}",
            vm.describe()
        );
    }
    let stderr = vm.stderr();
    for logged in [
        "a device-readable descriptor in a receive chain; returned unused",
        "buffer 0x80000000+0x40 is outside guest memory; dropped",
        "the chain holds more than 65562 bytes; dropped",
        "is looped, oversized or truncated",
        "marking DEVICE_NEEDS_RESET",
    ] {
        assert!(stderr.contains(logged), "{logged:?} not logged: {stderr}");
    }
    // Nothing else came out of the guest: no stray frame of the bad chains.
    let deadline = Instant::now() + Duration::from_millis(300);
    while Instant::now() < deadline {
        if let Some(f) = sock.recv() {
            assert_ne!(
                ethertype(&f),
                Some(TYPE_GUEST),
                "a stray guest frame: {f:02x?}"
            );
        }
    }
}

#[test]
fn a_tap_deleted_under_a_running_guest_is_logged_once_and_never_spun_on() {
    let kernel = guest("net.elf");
    let ns = Netns::new("gone");
    ns.tap("tap0");
    let mut vm = Vm::spawn(ns.vmm(&[
        "--kernel",
        &kernel,
        "--net",
        &format!("tap=tap0,mac={GUEST_MAC_STR}"),
    ]));
    vm.wait_serial("vmpod-net: ready\n");
    ns.ip(&["link", "delete", "dev", "tap0"]);
    let said = "virtio-net tap0: the TAP reports an error";
    let deadline = Instant::now() + DEADLINE;
    while !vm.stderr().contains(said) {
        vm.check_alive();
        assert!(Instant::now() < deadline, "no {said:?}; {}", vm.describe());
        std::thread::sleep(Duration::from_millis(10));
    }
    // The TAP now polls as an error for good: the worker must leave it
    // alone rather than wake on it forever.
    let before = vm.thread_cpu("virtio-net");
    std::thread::sleep(Duration::from_millis(500));
    let used = vm.thread_cpu("virtio-net") - before;
    assert!(used <= 5, "the worker burnt {used} ticks in 500 ms");
    assert_eq!(vm.stderr().matches(said).count(), 1, "{}", vm.stderr());
    vm.check_alive();
}
