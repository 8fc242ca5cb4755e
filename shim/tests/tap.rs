//! The pod's TAP, as the daemon leaves it (a persistent `vnet_hdr` TAP in
//! the pod's named netns): the shim opens it from outside the namespace,
//! frames cross through the fd, failures name the netns and the TAP, and
//! a real shim boots QEMU/TCG with it as the guest's card.
//!
//! They need root (namespaces, TAPs); without it each says SKIP and
//! returns. The boot also needs the guest image and helpers, like
//! `boot.rs`.

mod common;

use std::os::fd::{AsRawFd, OwnedFd};
use std::time::{Duration, Instant};

use common::netns::{Netns, why_not};
use common::*;
use vmpod_agent_proto::v1::StatsRequest;
use vmpod_shim::tap::{attached_to, open_in_netns};
use vmpod_shim_api::v1::Phase;

macro_rules! need_root {
    ($test:expr) => {
        if let Some(why) = why_not() {
            eprintln!("SKIP {}: {why}", $test);
            return;
        }
    };
}

const GUEST_MAC: [u8; 6] = [0x02, 0x42, 0x0a, 0xc7, 0x00, 0x02];
/// The vnet header `IFF_VNET_HDR` puts before every frame (12 bytes, as
/// the shim's open sets it).
const VNET_HDR: usize = 12;

fn own_netns() -> std::path::PathBuf {
    std::fs::read_link("/proc/thread-self/ns/net").expect("own netns")
}

/// An ARP request from the guest's address 10.199.0.2 for 10.199.0.1, as
/// it crosses the TAP: vnet header (no offloads), then the frame.
fn arp_request() -> Vec<u8> {
    let mut f = vec![0u8; VNET_HDR];
    f.extend_from_slice(&[0xff; 6]);
    f.extend_from_slice(&GUEST_MAC);
    f.extend_from_slice(&[0x08, 0x06]);
    // Ethernet, IPv4, 6-byte and 4-byte addresses, request.
    f.extend_from_slice(&[0, 1, 0x08, 0x00, 6, 4, 0, 1]);
    f.extend_from_slice(&GUEST_MAC);
    f.extend_from_slice(&[10, 199, 0, 2]);
    f.extend_from_slice(&[0; 6]);
    f.extend_from_slice(&[10, 199, 0, 1]);
    f
}

/// The next ARP reply to the guest's MAC read from `fd` within `limit`;
/// other frames (IPv6 neighbour discovery, MLD) are skipped.
fn arp_reply(fd: &OwnedFd, limit: Duration) -> Option<Vec<u8>> {
    let deadline = Instant::now() + limit;
    let mut buf = [0u8; 2048];
    while Instant::now() < deadline {
        let mut p = libc::pollfd {
            fd: fd.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one valid pollfd.
        if unsafe { libc::poll(&mut p, 1, 100) } <= 0 {
            continue;
        }
        // SAFETY: buf is valid for its length.
        let n = unsafe { libc::read(fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
        let Ok(n) = usize::try_from(n) else {
            continue;
        };
        let frame = &buf[VNET_HDR.min(n)..n];
        if frame.len() >= 42
            && frame[..6] == GUEST_MAC
            && frame[12..14] == [0x08, 0x06]
            && frame[20..22] == [0, 2]
        {
            return Some(frame.to_vec());
        }
    }
    None
}

#[test]
fn opens_the_tap_from_outside_its_netns_and_frames_cross() {
    need_root!("opens_the_tap_from_outside_its_netns_and_frames_cross");
    let ns = Netns::new();
    ns.add_tap("tapt0");
    let before = own_netns();
    let fd = open_in_netns(&ns.path(), "tapt0").expect("open the TAP");
    assert_eq!(own_netns(), before, "the caller never left its netns");

    let (name, flags) = attached_to(&fd).expect("TUNGETIFF");
    assert_eq!(name, "tapt0");
    let want = libc::IFF_TAP | libc::IFF_NO_PI | libc::IFF_VNET_HDR;
    assert_eq!(flags & want, want, "flags {flags:#x}");
    // SAFETY: fcntl queries on an fd we hold.
    let (fd_flags, fl_flags) = unsafe {
        (
            libc::fcntl(fd.as_raw_fd(), libc::F_GETFD),
            libc::fcntl(fd.as_raw_fd(), libc::F_GETFL),
        )
    };
    assert_ne!(fd_flags & libc::FD_CLOEXEC, 0, "close-on-exec");
    assert_ne!(fl_flags & libc::O_NONBLOCK, 0, "non-blocking");
    assert!(fd.as_raw_fd() > 2, "clear of stdio: {}", fd.as_raw_fd());

    // Both ways through the fd, from a thread outside the namespace: the
    // namespace's kernel answers an ARP request written into the TAP.
    ns.ip(&["addr", "add", "10.199.0.1/24", "dev", "tapt0"]);
    ns.ip(&["link", "set", "tapt0", "up"]);
    let rx_before = ns.stat("tapt0", "rx", "packets");
    let frame = arp_request();
    // SAFETY: frame is valid for its length.
    let n = unsafe { libc::write(fd.as_raw_fd(), frame.as_ptr().cast(), frame.len()) };
    assert_eq!(
        n,
        frame.len() as isize,
        "write: {}",
        std::io::Error::last_os_error()
    );
    assert!(ns.stat("tapt0", "rx", "packets") > rx_before);
    let reply = arp_reply(&fd, Duration::from_secs(3)).expect("an ARP reply through the TAP");
    assert_eq!(&reply[28..32], &[10, 199, 0, 1], "sender 10.199.0.1");

    // Closed, the TAP is free again and still there (persistent).
    drop(fd);
    let again = open_in_netns(&ns.path(), "tapt0").expect("reopen");
    assert_eq!(attached_to(&again).expect("TUNGETIFF").0, "tapt0");
}

#[test]
fn a_missing_tap_is_named_and_not_created() {
    need_root!("a_missing_tap_is_named_and_not_created");
    let ns = Netns::new();
    let e = open_in_netns(&ns.path(), "nosuch0").expect_err("no such TAP");
    let e = format!("{e:#}");
    assert!(e.contains("nosuch0"), "{e}");
    assert!(e.contains(&ns.path().display().to_string()), "{e}");
    assert!(e.contains("no such network interface"), "{e}");
    assert!(
        !ns.try_ip(&["link", "show", "nosuch0"]).status.success(),
        "TUNSETIFF created a TAP"
    );
    // Nor in the caller's namespace.
    assert!(
        !std::path::Path::new("/sys/class/net/nosuch0").exists(),
        "a TAP appeared in the caller's netns"
    );
}

#[test]
fn a_missing_netns_is_named() {
    need_root!("a_missing_netns_is_named");
    let path = format!("/run/netns/vmpod-gone-{}", std::process::id());
    let e = open_in_netns(path.as_ref(), "tap0").expect_err("no such netns");
    let e = format!("{e:#}");
    assert!(e.contains(&path) && e.contains("tap0"), "{e}");
    assert!(e.contains("No such file"), "{e}");
}

#[test]
fn a_tap_someone_holds_is_refused_with_the_reason() {
    need_root!("a_tap_someone_holds_is_refused_with_the_reason");
    let ns = Netns::new();
    ns.add_tap("tapt0");
    let _held = open_in_netns(&ns.path(), "tapt0").expect("first open");
    let e = open_in_netns(&ns.path(), "tapt0").expect_err("busy");
    let e = format!("{e:#}");
    assert!(
        e.contains("tapt0") && e.contains("another process has it open"),
        "{e}"
    );
}

/// A real shim on the real guest image with the TAP as its card: QEMU
/// takes it by fd under its `-sandbox` and the shim's deny-list (the
/// guest's driver negotiating features makes QEMU set the TAP's offloads
/// and header size), the guest sees the card, QEMU holds the TAP and the
/// shim does not.
#[tokio::test(flavor = "current_thread")]
async fn qemu_boots_with_the_tap_as_the_guests_card() {
    need_root!("qemu_boots_with_the_tap_as_the_guests_card");
    let _one = SERIAL.lock().await;
    let ns = Netns::new();
    ns.add_tap("tap0");
    ns.ip(&["link", "set", "tap0", "up"]);
    let dir = tempfile::tempdir().expect("tempdir");
    let pod = dir.path().to_owned();
    let (kernel, initramfs) = guest_image();
    write_spec(&pod, &kernel, &initramfs, 90_000);
    let spec_path = pod.join("vm.json");
    let mut spec: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&spec_path).expect("vm.json")).expect("json");
    spec["network"] = serde_json::json!({
        "netns": ns.path(),
        "tap": "tap0",
        "mac": "02:42:0a:c7:00:02",
    });
    spec["guest"]["interfaces"] = serde_json::json!([{
        "mac": "02:42:0a:c7:00:02",
        "mtu": 1500,
        "addresses": ["10.199.0.2/24"],
        "routes": [{ "destination": "0.0.0.0/0", "gateway": "10.199.0.1" }],
    }]);
    std::fs::write(&spec_path, serde_json::to_vec(&spec).expect("json")).expect("write");

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

    let stats = client
        .stats(StatsRequest { ids: Vec::new() })
        .await
        .expect("Stats")
        .into_inner();
    let names: Vec<String> = stats
        .network
        .map(|n| n.interfaces.into_iter().map(|i| i.name).collect())
        .unwrap_or_default();
    // sit0 is the kernel's own (IPv6-in-IPv4); eth0 is the card.
    assert!(
        names.iter().any(|n| n == "eth0"),
        "the guest's interfaces besides lo: {names:?}"
    );

    let tun_fds = |pid: u32| -> Vec<String> {
        let dir = format!("/proc/{pid}/fd");
        std::fs::read_dir(&dir)
            .expect(&dir)
            .flatten()
            .filter(|e| {
                std::fs::read_link(e.path())
                    .is_ok_and(|l| l == std::path::Path::new("/dev/net/tun"))
            })
            .map(|e| {
                std::fs::read_to_string(format!(
                    "/proc/{pid}/fdinfo/{}",
                    e.file_name().to_string_lossy()
                ))
                .unwrap_or_default()
            })
            .collect()
    };
    let qemu = tun_fds(state.vmm_pid);
    assert_eq!(qemu.len(), 1, "QEMU's TAP fds: {qemu:?}");
    assert!(qemu[0].contains("iff:\ttap0"), "{}", qemu[0]);
    assert!(tun_fds(shim.id()).is_empty(), "the shim kept the TAP open");

    let log = std::fs::read_to_string(pod.join("run/qemu-tcg.log")).expect("QEMU's log");
    for bad in ["TUN", "tap", "vnet", "offload"] {
        assert!(!log.contains(bad), "QEMU complained about the TAP:\n{log}");
    }

    shutdown_and_check(&mut client, &mut shim, &pod).await;
    // The daemon's TAP outlives the VM and is free for the next one.
    let again = open_in_netns(&ns.path(), "tap0").expect("reopen after the VM");
    assert_eq!(attached_to(&again).expect("TUNGETIFF").0, "tap0");
}
