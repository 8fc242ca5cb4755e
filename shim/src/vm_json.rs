//! Loading and checking `vm.json`. The daemon validated it already, but the
//! shim is the process that acts on it, and a bad value found here costs one
//! clear line instead of a VM that hangs at boot.

use std::path::{Component, Path};

use thiserror::Error;
use vmpod_shim_api::vm_spec::{
    BackendSpec, MAX_CONSOLE_LOG_BYTES, MAX_GUEST_CID, MIN_CONSOLE_LOG_BYTES, MIN_GUEST_CID,
    NetSpec, VmSpec, VsockTransport,
};
use vmpod_vmm::devices::virtio::net::MacAddress;

#[derive(Debug, Error)]
pub enum SpecError {
    #[error("reading {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("{path}: {source}")]
    Parse {
        path: String,
        source: serde_json::Error,
    },
    #[error("{path}: field `{field}`: {reason}")]
    Invalid {
        path: String,
        field: &'static str,
        reason: String,
    },
}

/// Guest memory below this does not fit the kernel plus the initramfs.
pub const MIN_MEMORY_MIB: u64 = 64;
/// microvm has no reason to go higher, and a typo (GiB for MiB) should fail.
pub const MAX_MEMORY_MIB: u64 = 256 * 1024;
pub const MAX_VCPUS: u32 = 255;

pub fn load(path: &Path) -> Result<VmSpec, SpecError> {
    let shown = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|source| SpecError::Read {
        path: shown.clone(),
        source,
    })?;
    let spec: VmSpec = serde_json::from_str(&text).map_err(|source| SpecError::Parse {
        path: shown.clone(),
        source,
    })?;
    validate(&spec).map_err(|(field, reason)| SpecError::Invalid {
        path: shown,
        field,
        reason,
    })?;
    Ok(spec)
}

/// Returns the offending field (its `vm.json` name) and why.
pub fn validate(spec: &VmSpec) -> Result<(), (&'static str, String)> {
    if spec.id.is_empty() {
        return Err(("id", "must not be empty".into()));
    }
    if spec.id.chars().any(|c| c.is_control() || c == '/') {
        return Err((
            "id",
            format!("{:?} contains '/' or control characters", spec.id),
        ));
    }
    file(&spec.kernel, "kernel")?;
    file(&spec.initramfs, "initramfs")?;
    if spec.vcpus == 0 || spec.vcpus > MAX_VCPUS {
        return Err(("vcpus", format!("{} is not in 1..={MAX_VCPUS}", spec.vcpus)));
    }
    if !(MIN_MEMORY_MIB..=MAX_MEMORY_MIB).contains(&spec.memory_mib) {
        return Err((
            "memory-mib",
            format!(
                "{} is not in {MIN_MEMORY_MIB}..={MAX_MEMORY_MIB}",
                spec.memory_mib
            ),
        ));
    }
    if spec.boot_timeout_ms == 0 {
        return Err(("boot-timeout-ms", "must be positive".into()));
    }
    match (&spec.helpers.qemu, spec.backend) {
        (Some(qemu), _) => file(qemu, "helpers.qemu")?,
        (None, BackendSpec::Kvm) => {}
        (None, _) => return Err(("helpers.qemu", "the qemu backends need it".into())),
    }
    file(&spec.helpers.virtiofsd, "helpers.virtiofsd")?;
    if let Some(vsock) = &spec.helpers.vhost_device_vsock {
        file(vsock, "helpers.vhost-device-vsock")?;
    }
    validate_vsock(spec)?;
    if !(MIN_CONSOLE_LOG_BYTES..=MAX_CONSOLE_LOG_BYTES).contains(&spec.console_log_bytes) {
        return Err((
            "console-log-bytes",
            format!(
                "{} is not in {MIN_CONSOLE_LOG_BYTES}..={MAX_CONSOLE_LOG_BYTES}",
                spec.console_log_bytes
            ),
        ));
    }
    if let Some(u) = spec.vmm_user
        && (u.uid == 0 || u.gid == 0)
    {
        return Err((
            "vmm-user",
            format!("{}:{} is root; the VMM threads must not be", u.uid, u.gid),
        ));
    }
    let h = &spec.guest.hostname;
    if h.len() > 64
        || h.chars()
            .any(|c| !(c.is_ascii_alphanumeric() || c == '-' || c == '.'))
    {
        return Err(("guest.hostname", format!("{h:?} is not a valid hostname")));
    }
    if let Some(net) = &spec.network {
        validate_network(net)?;
    }
    validate_interfaces(spec)?;
    Ok(())
}

/// Where `ip netns` and the daemon keep named network namespaces.
const NETNS_DIRS: [&str; 2] = ["/run/netns", "/var/run/netns"];

/// The shim enters `netns` as root to open the TAP, so a path that could
/// lead anywhere else (another pod's namespace through `..`, the host's
/// through `/proc/1/ns/net`) is refused before anything is opened.
fn validate_network(net: &NetSpec) -> Result<(), (&'static str, String)> {
    let ns = &net.netns;
    let shown = ns.display();
    if !ns.is_absolute() {
        return Err(("network.netns", format!("{shown} is not an absolute path")));
    }
    if ns.components().any(|c| c == Component::ParentDir) {
        return Err(("network.netns", format!("{shown} contains '..'")));
    }
    let named = ns.file_name().is_some()
        && ns
            .parent()
            .is_some_and(|dir| NETNS_DIRS.iter().any(|d| dir == Path::new(d)));
    if !named {
        return Err((
            "network.netns",
            format!(
                "{shown} is not a named network namespace (a file directly in {})",
                NETNS_DIRS.join(" or ")
            ),
        ));
    }
    check_ifname(&net.tap).map_err(|e| ("network.tap", e))?;
    parse_mac(&net.mac).map_err(|e| ("network.mac", e))?;
    Ok(())
}

/// IFNAMSIZ less the NUL, in the characters a CNI plugin or `ip` would use:
/// the name goes into an ioctl and into log lines, so nothing that could
/// be mistaken for a path or an option.
fn check_ifname(name: &str) -> Result<(), String> {
    if name.is_empty() || name.len() >= libc::IFNAMSIZ {
        return Err(format!(
            "{name:?} is not 1 to {} bytes long",
            libc::IFNAMSIZ - 1
        ));
    }
    if name == "." || name == ".." {
        return Err(format!("{name:?} cannot name an interface"));
    }
    if !name
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'))
    {
        return Err(format!(
            "{name:?} has characters other than A-Z, a-z, 0-9, '_', '.' and '-'"
        ));
    }
    Ok(())
}

/// The VMM's own parser: unicast and not all zeroes, as a NIC needs.
fn parse_mac(mac: &str) -> Result<MacAddress, String> {
    mac.parse()
}

/// The agent finds each guest interface by its MAC, and the VM has one
/// card: an entry for any other MAC would fail the boot inside the guest,
/// where the error is harder to read.
fn validate_interfaces(spec: &VmSpec) -> Result<(), (&'static str, String)> {
    let interfaces = &spec.guest.interfaces;
    if interfaces.is_empty() {
        return Ok(());
    }
    let Some(net) = &spec.network else {
        return Err((
            "guest.interfaces",
            "configures a network card, but `network` gives the VM none".into(),
        ));
    };
    let card = parse_mac(&net.mac).map_err(|e| ("network.mac", e))?;
    for iface in interfaces {
        let mac = parse_mac(&iface.mac).map_err(|e| ("guest.interfaces.mac", e))?;
        if mac != card {
            return Err((
                "guest.interfaces.mac",
                format!("{} is not the VM's card ({card}, network.mac)", iface.mac),
            ));
        }
    }
    Ok(())
}

/// A transport the backend cannot serve would only show as a boot timeout.
fn validate_vsock(spec: &VmSpec) -> Result<(), (&'static str, String)> {
    let cid = spec.vsock.guest_cid;
    if !(MIN_GUEST_CID..=MAX_GUEST_CID).contains(&cid) {
        return Err((
            "vsock.guest-cid",
            format!("{cid} is reserved (guests use {MIN_GUEST_CID}..={MAX_GUEST_CID})"),
        ));
    }
    match (spec.vsock.transport, spec.backend) {
        (VsockTransport::Kernel, BackendSpec::Kvm) => Err((
            "vsock.transport",
            "the built-in VMM serves its own hybrid vsock, not the kernel's".into(),
        )),
        (VsockTransport::Hybrid, BackendSpec::QemuKvm | BackendSpec::QemuTcg)
            if spec.helpers.vhost_device_vsock.is_none() =>
        {
            Err((
                "helpers.vhost-device-vsock",
                "QEMU with the hybrid vsock transport needs it".into(),
            ))
        }
        _ => Ok(()),
    }
}

fn file(path: &Path, field: &'static str) -> Result<(), (&'static str, String)> {
    if !path.is_absolute() {
        return Err((field, format!("{} is not an absolute path", path.display())));
    }
    match std::fs::metadata(path) {
        Ok(m) if m.is_file() => Ok(()),
        Ok(_) => Err((field, format!("{} is not a regular file", path.display()))),
        Err(e) => Err((field, format!("{}: {e}", path.display()))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;
    use vmpod_shim_api::vm_spec::{GuestInterface, GuestRoute, GuestSetup, Helpers, VsockSpec};

    fn good() -> VmSpec {
        let sh = PathBuf::from("/bin/sh");
        VmSpec {
            id: "pod-1".into(),
            backend: BackendSpec::QemuTcg,
            kernel: sh.clone(),
            initramfs: sh.clone(),
            vcpus: 1,
            memory_mib: 256,
            boot_timeout_ms: 1000,
            helpers: Helpers {
                qemu: Some(sh.clone()),
                virtiofsd: sh.clone(),
                vhost_device_vsock: Some(sh),
            },
            vsock: VsockSpec {
                guest_cid: 3,
                transport: VsockTransport::Hybrid,
            },
            guest: GuestSetup {
                hostname: "web-1".into(),
                ..Default::default()
            },
            vmm_user: None,
            console_log_bytes: vmpod_shim_api::vm_spec::DEFAULT_CONSOLE_LOG_BYTES,
            network: None,
        }
    }

    #[test]
    fn console_log_cap_is_bounded() {
        for bytes in [0, MIN_CONSOLE_LOG_BYTES - 1, MAX_CONSOLE_LOG_BYTES + 1] {
            let mut s = good();
            s.console_log_bytes = bytes;
            assert_eq!(validate(&s).unwrap_err().0, "console-log-bytes", "{bytes}");
        }
        // A vm.json without the field (an older daemon's) gets the default.
        let mut json = serde_json::to_value(good()).expect("to json");
        json.as_object_mut()
            .expect("object")
            .remove("console-log-bytes");
        let s: VmSpec = serde_json::from_value(json).expect("from json");
        assert_eq!(
            s.console_log_bytes,
            vmpod_shim_api::vm_spec::DEFAULT_CONSOLE_LOG_BYTES
        );
    }

    #[test]
    fn accepts_good_spec() {
        assert_eq!(validate(&good()), Ok(()));
    }

    #[test]
    fn names_the_bad_field() {
        let mut s = good();
        s.kernel = "/nonexistent/vmlinux".into();
        assert_eq!(validate(&s).unwrap_err().0, "kernel");
        let mut s = good();
        s.initramfs = "relative.cpio".into();
        assert_eq!(validate(&s).unwrap_err().0, "initramfs");
        let mut s = good();
        s.vcpus = 0;
        assert_eq!(validate(&s).unwrap_err().0, "vcpus");
        let mut s = good();
        s.memory_mib = 16;
        assert_eq!(validate(&s).unwrap_err().0, "memory-mib");
        let mut s = good();
        s.helpers.vhost_device_vsock = Some("/nope".into());
        assert_eq!(validate(&s).unwrap_err().0, "helpers.vhost-device-vsock");
        let mut s = good();
        s.helpers.qemu = None;
        assert_eq!(validate(&s).unwrap_err().0, "helpers.qemu");
        s.backend = BackendSpec::Kvm;
        assert_eq!(validate(&s), Ok(()), "the built-in VMM needs no QEMU");
        let mut s = good();
        s.vmm_user = Some(vmpod_shim_api::vm_spec::VmmUser { uid: 0, gid: 5 });
        assert_eq!(validate(&s).unwrap_err().0, "vmm-user");
        let mut s = good();
        s.guest.hostname = "a b".into();
        assert_eq!(validate(&s).unwrap_err().0, "guest.hostname");
    }

    fn with_network() -> VmSpec {
        let mut s = good();
        s.network = Some(NetSpec {
            netns: "/run/netns/vmpod-pod-1".into(),
            tap: "tap0".into(),
            mac: "02:42:0a:58:00:05".into(),
        });
        s.guest.interfaces = vec![GuestInterface {
            mac: "02:42:0A:58:00:05".into(),
            mtu: 1500,
            addresses: vec!["10.88.0.5/16".into()],
            routes: vec![GuestRoute {
                destination: "0.0.0.0/0".into(),
                gateway: Some("10.88.0.1".into()),
            }],
        }];
        s
    }

    #[test]
    fn a_good_network_passes() {
        assert_eq!(validate(&with_network()), Ok(()));
        let mut s = with_network();
        if let Some(n) = s.network.as_mut() {
            n.netns = "/var/run/netns/x".into();
            n.tap = "a.b_c-9-fifteen".into();
        }
        assert_eq!(validate(&s), Ok(()), "/var/run/netns, 15 bytes");
        // Loopback only: no card, nothing for the guest to configure.
        let mut s = with_network();
        s.network = None;
        s.guest.interfaces.clear();
        assert_eq!(validate(&s), Ok(()));
    }

    #[test]
    fn each_bad_network_field_is_named() {
        let bad_netns = [
            "run/netns/x",
            "/run/netns/../netns/x",
            "/run/netns/x/..",
            "/proc/1/ns/net",
            "/run/netns",
            "/run/netns/",
            "/run/netns/a/b",
            "/tmp/netns/x",
        ];
        for netns in bad_netns {
            let mut s = with_network();
            if let Some(n) = s.network.as_mut() {
                n.netns = netns.into();
            }
            let (field, why) = validate(&s).expect_err(netns);
            assert_eq!(field, "network.netns", "{netns}: {why}");
            assert!(why.contains(netns.trim_end_matches('/')), "{why}");
        }
        let bad_taps = [
            "",
            "sixteen-bytes-xx",
            ".",
            "..",
            "tap/0",
            "tap 0",
            "tap:0",
            "t\u{e4}p",
        ];
        for tap in bad_taps {
            let mut s = with_network();
            if let Some(n) = s.network.as_mut() {
                n.tap = tap.into();
            }
            let (field, why) = validate(&s).expect_err(tap);
            assert_eq!(field, "network.tap", "{tap:?}: {why}");
        }
        for mac in [
            "",
            "02:00:00:00:00",
            "02:00:00:00:00:01:02",
            "02-00-00-00-00-01",
            "0g:00:00:00:00:01",
            "01:00:5e:00:00:01",
            "ff:ff:ff:ff:ff:ff",
            "00:00:00:00:00:00",
        ] {
            let mut s = with_network();
            s.guest.interfaces.clear();
            if let Some(n) = s.network.as_mut() {
                n.mac = mac.into();
            }
            let (field, why) = validate(&s).expect_err(mac);
            assert_eq!(field, "network.mac", "{mac:?}: {why}");
            assert!(why.contains("MAC address"), "{why}");
        }
    }

    #[test]
    fn guest_interfaces_must_be_the_vms_card() {
        let mut s = with_network();
        s.guest.interfaces[0].mac = "02:42:0a:58:00:06".into();
        let (field, why) = validate(&s).expect_err("another MAC");
        assert_eq!(field, "guest.interfaces.mac");
        assert!(why.contains("02:42:0a:58:00:05"), "{why}");
        s.guest.interfaces[0].mac = "nonsense".into();
        assert_eq!(validate(&s).unwrap_err().0, "guest.interfaces.mac");
        let mut s = with_network();
        s.network = None;
        assert_eq!(validate(&s).unwrap_err().0, "guest.interfaces");
    }

    #[test]
    fn a_spec_with_network_round_trips_through_json() {
        let s = with_network();
        let text = serde_json::to_string(&s).expect("to json");
        assert!(
            text.contains(r#""network":{"netns":"/run/netns/vmpod-pod-1""#),
            "{text}"
        );
        let back: VmSpec = serde_json::from_str(&text).expect("from json");
        assert_eq!(back, s);
    }

    #[test]
    fn vsock_cid_and_transport_must_fit_the_backend() {
        for cid in [0, 1, 2, u32::MAX] {
            let mut s = good();
            s.vsock.guest_cid = cid;
            assert_eq!(validate(&s).unwrap_err().0, "vsock.guest-cid", "{cid}");
        }
        let mut s = good();
        s.vsock.guest_cid = u32::MAX - 1;
        assert_eq!(validate(&s), Ok(()));
        // QEMU on the kernel's vsock needs no helper.
        s.vsock.transport = VsockTransport::Kernel;
        s.helpers.vhost_device_vsock = None;
        assert_eq!(validate(&s), Ok(()));
        s.backend = BackendSpec::Kvm;
        assert_eq!(validate(&s).unwrap_err().0, "vsock.transport");
        s.vsock.transport = VsockTransport::Hybrid;
        assert_eq!(validate(&s), Ok(()), "the built-in VMM serves vsock itself");
        s.backend = BackendSpec::QemuKvm;
        assert_eq!(validate(&s).unwrap_err().0, "helpers.vhost-device-vsock");
    }

    #[test]
    fn a_spec_without_vsock_gets_cid_3_over_hybrid() {
        let mut json = serde_json::to_value(good()).expect("json");
        json.as_object_mut().expect("object").remove("vsock");
        let s: VmSpec = serde_json::from_value(json).expect("parses");
        assert_eq!(
            s.vsock,
            VsockSpec {
                guest_cid: 3,
                transport: VsockTransport::Hybrid
            }
        );
        assert_eq!(validate(&s), Ok(()));
    }

    #[test]
    fn parse_errors_name_the_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        let p = dir.path().join("vm.json");
        std::fs::write(&p, r#"{"id": "x", "bogus": 1}"#).expect("write");
        let e = load(&p).unwrap_err().to_string();
        assert!(e.contains("vm.json"), "{e}");
        assert!(e.contains("bogus"), "{e}");
    }
}
