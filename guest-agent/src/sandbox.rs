//! SetupSandbox: the per-pod guest preparation the shim asks for once the
//! agent is healthy: hostname, /etc/hosts, /etc/resolv.conf, the virtio-fs
//! share and the pod's network interfaces. Every step converges on the
//! requested state, so a repeated call with the same values changes
//! nothing.

use std::fmt::Write as _;
use std::fs;
use std::io::Write as _;
use std::net::IpAddr;
use std::os::unix::fs::DirBuilderExt;
use std::path::Path;

use anyhow::{Context, Result, bail};
use nix::mount::{MsFlags, mount};
use tokio::sync::Mutex;
use vmpod_agent_proto::SHARE_MOUNTPOINT;
use vmpod_agent_proto::v1::{NetworkInterface, SetupSandboxRequest};

use crate::mounts;
use crate::net::{self, Cidr, MacAddr};

pub const RESOLV_CONF: &str = "/etc/resolv.conf";
pub const HOSTS: &str = "/etc/hosts";
pub const HOSTNAME: &str = "/etc/hostname";

/// Longest virtio-fs tag (the `tag` field of the device config is 36 bytes).
const MAX_TAG_LEN: usize = 36;
/// HOST_NAME_MAX on Linux.
const MAX_HOSTNAME_LEN: usize = 64;

// Bounds on what the host may ask for, far above any real pod, so that a
// broken or hostile request cannot make the agent do unbounded work.
const MAX_INTERFACES: usize = 8;
const MAX_ADDRESSES: usize = 16;
const MAX_ROUTES: usize = 64;
/// RFC 791: every IPv4 link must carry 68-byte datagrams.
const MIN_MTU: u32 = 68;
const MAX_MTU: u32 = 65535;
/// RFC 8200. Below it Linux turns IPv6 off on the interface, and its
/// addresses could not be added.
const MIN_IPV6_MTU: u32 = 1280;

/// Serialises concurrent SetupSandbox calls. An async lock: it is held
/// across the network set-up, which awaits netlink replies.
static SETUP_LOCK: Mutex<()> = Mutex::const_new(());

/// A request that passed validation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SandboxSetup {
    hostname: Option<String>,
    resolv_conf: String,
    hosts: String,
    share_tag: Option<String>,
    /// The host's clock at the time of the request, to set the guest's.
    host_time_ns: Option<i64>,
    interfaces: Vec<net::Interface>,
}

impl SandboxSetup {
    /// Checks the request; the error is meant for the caller
    /// (`InvalidArgument`).
    pub fn from_request(req: &SetupSandboxRequest) -> Result<Self> {
        let hostname = if req.hostname.is_empty() {
            None
        } else {
            validate_hostname(&req.hostname)?;
            Some(req.hostname.clone())
        };
        let share_tag = if req.share_tag.is_empty() {
            None
        } else {
            validate_tag(&req.share_tag)?;
            Some(req.share_tag.clone())
        };
        let interfaces = validate_interfaces(&req.interfaces)?;
        Ok(Self {
            resolv_conf: render_resolv_conf(&req.dns_servers, &req.dns_searches, &req.dns_options)?,
            hosts: render_hosts(hostname.as_deref(), &interfaces),
            hostname,
            share_tag,
            host_time_ns: (req.host_time_ns > 0).then_some(req.host_time_ns),
            interfaces,
        })
    }

    /// Applies the setup to this guest; returns where the share is mounted
    /// (empty if there is none).
    ///
    /// The files and the share come first: they are quick, and they give a
    /// virtio-net card that probes late time to appear before the network
    /// set-up waits for it.
    pub async fn apply(self) -> Result<String> {
        let guard = SETUP_LOCK.lock().await;
        let interfaces = self.interfaces.clone();
        // The guard travels with the blocking task: if the caller gives up
        // (and this future is dropped) the task still runs to its end, and
        // a retry must not write the same files alongside it.
        let (_guard, share_mountpoint) = tokio::task::spawn_blocking(move || {
            let result = self.apply_blocking();
            (guard, result)
        })
        .await
        .context("the SetupSandbox file set-up task failed")?;
        let share_mountpoint = share_mountpoint?;
        net::configure(&interfaces)
            .await
            .context("cannot configure the pod network")?;
        Ok(share_mountpoint)
    }

    /// Clock, hostname, files and share: plain syscalls and file IO.
    fn apply_blocking(&self) -> Result<String> {
        if let Some(ns) = self.host_time_ns {
            set_clock(ns)?;
        }
        if let Some(hostname) = &self.hostname {
            nix::unistd::sethostname(hostname)
                .with_context(|| format!("cannot set the hostname to {hostname:?}"))?;
        }
        // Containers get it bound in, as they do hosts and resolv.conf.
        let current = nix::unistd::gethostname().context("cannot read the hostname")?;
        write_atomically(
            Path::new(HOSTNAME),
            &format!("{}\n", current.to_string_lossy()),
        )?;
        write_atomically(Path::new(HOSTS), &self.hosts)?;
        write_atomically(Path::new(RESOLV_CONF), &self.resolv_conf)?;
        match &self.share_tag {
            Some(tag) => {
                mount_share(tag, Path::new(SHARE_MOUNTPOINT))?;
                Ok(SHARE_MOUNTPOINT.to_string())
            }
            None => Ok(String::new()),
        }
    }
}

/// Steps the guest's wall clock to the host's. A few milliseconds of
/// transit are not worth correcting for: nothing compares times that
/// finely across the VM boundary.
fn set_clock(ns: i64) -> Result<()> {
    let ts = nix::sys::time::TimeSpec::new(ns / 1_000_000_000, ns % 1_000_000_000);
    nix::time::clock_settime(nix::time::ClockId::CLOCK_REALTIME, ts)
        .context("cannot set the guest clock to the host's")
}

fn validate_hostname(name: &str) -> Result<()> {
    if name.len() > MAX_HOSTNAME_LEN {
        bail!("hostname {name:?} is longer than {MAX_HOSTNAME_LEN} bytes");
    }
    for label in name.split('.') {
        let ok = !label.is_empty()
            && !label.starts_with('-')
            && !label.ends_with('-')
            && label
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-');
        if !ok {
            bail!("hostname {name:?} is not a valid DNS name");
        }
    }
    Ok(())
}

/// The request's interfaces in typed form; errors name the field, e.g.
/// `interfaces[0].routes[2].gateway`.
fn validate_interfaces(list: &[NetworkInterface]) -> Result<Vec<net::Interface>> {
    if list.len() > MAX_INTERFACES {
        bail!(
            "interfaces: {} given, at most {MAX_INTERFACES} are allowed",
            list.len()
        );
    }
    let mut out: Vec<net::Interface> = Vec::with_capacity(list.len());
    for (i, iface) in list.iter().enumerate() {
        let parsed = validate_interface(iface, &format!("interfaces[{i}]"))?;
        if let Some(j) = out.iter().position(|o| o.mac == parsed.mac) {
            bail!(
                "interfaces[{i}].mac: {} is also the MAC of interfaces[{j}]",
                parsed.mac
            );
        }
        out.push(parsed);
    }
    Ok(out)
}

fn validate_interface(iface: &NetworkInterface, field: &str) -> Result<net::Interface> {
    let mac: MacAddr = iface.mac.parse().with_context(|| format!("{field}.mac"))?;
    let mtu = match iface.mtu {
        0 => None,
        mtu @ MIN_MTU..=MAX_MTU => Some(mtu),
        mtu => bail!(
            "{field}.mtu: {mtu} is out of range (0 for the kernel's default, \
             or {MIN_MTU} to {MAX_MTU})"
        ),
    };
    if iface.addresses.len() > MAX_ADDRESSES {
        bail!(
            "{field}.addresses: {} given, at most {MAX_ADDRESSES} are allowed",
            iface.addresses.len()
        );
    }
    let mut addresses = Vec::with_capacity(iface.addresses.len());
    for (i, text) in iface.addresses.iter().enumerate() {
        let cidr: Cidr = text
            .parse()
            .with_context(|| format!("{field}.addresses[{i}]"))?;
        if !is_unicast(cidr.addr()) {
            bail!(
                "{field}.addresses[{i}]: {text:?} is not a unicast address an \
                 interface can have"
            );
        }
        addresses.push(cidr);
    }
    if let Some(mtu) = mtu
        && mtu < MIN_IPV6_MTU
        && addresses.iter().any(|a| a.addr().is_ipv6())
    {
        bail!(
            "{field}.mtu: {mtu} is below IPv6's minimum of {MIN_IPV6_MTU}, \
             and the interface has IPv6 addresses"
        );
    }
    if iface.routes.len() > MAX_ROUTES {
        bail!(
            "{field}.routes: {} given, at most {MAX_ROUTES} are allowed",
            iface.routes.len()
        );
    }
    let mut routes = Vec::with_capacity(iface.routes.len());
    for (i, route) in iface.routes.iter().enumerate() {
        let field = format!("{field}.routes[{i}]");
        let destination: Cidr = route
            .destination
            .parse()
            .with_context(|| format!("{field}.destination"))?;
        // The kernel would refuse it with a bare EINVAL.
        if destination.network() != destination.addr() {
            bail!(
                "{field}.destination: {:?} has bits set past its prefix \
                 (the network is {}/{})",
                route.destination,
                destination.network(),
                destination.prefix_len()
            );
        }
        let gateway = if route.gateway.is_empty() {
            None
        } else {
            let gw: IpAddr = route.gateway.parse().with_context(|| {
                format!("{field}.gateway: {:?} is not an IP address", route.gateway)
            })?;
            if gw.is_ipv4() != destination.addr().is_ipv4() {
                bail!(
                    "{field}.gateway: {gw} is not of the same family as the \
                     destination {destination}"
                );
            }
            if !is_unicast(gw) {
                bail!("{field}.gateway: {gw} is not a unicast address");
            }
            Some(gw)
        };
        routes.push(net::Route {
            destination,
            gateway,
        });
    }
    Ok(net::Interface {
        mac,
        mtu,
        addresses,
        routes,
    })
}

/// Whether `ip` can be an interface's address or a next hop.
fn is_unicast(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => !(v4.is_unspecified() || v4.is_multicast() || v4.is_broadcast()),
        IpAddr::V6(v6) => !(v6.is_unspecified() || v6.is_multicast()),
    }
}

fn validate_tag(tag: &str) -> Result<()> {
    if tag.len() > MAX_TAG_LEN {
        bail!("share tag {tag:?} is longer than {MAX_TAG_LEN} bytes");
    }
    if !tag.bytes().all(|b| b.is_ascii_graphic()) {
        bail!("share tag {tag:?} must be printable ASCII without spaces");
    }
    Ok(())
}

/// resolv.conf(5) for the given DNS settings; empty settings give an empty
/// file, as kubelet does for a pod without DNS.
pub fn render_resolv_conf(
    servers: &[String],
    searches: &[String],
    options: &[String],
) -> Result<String> {
    let mut out = String::new();
    for server in servers {
        let ip: IpAddr = server
            .parse()
            .with_context(|| format!("DNS server {server:?} is not an IP address"))?;
        let _ = writeln!(out, "nameserver {ip}");
    }
    for (what, words) in [("search", searches), ("options", options)] {
        if words.is_empty() {
            continue;
        }
        for word in words {
            if word.is_empty() || !word.bytes().all(|b| b.is_ascii_graphic()) {
                bail!("DNS {what} entry {word:?} must be a non-empty word of printable ASCII");
            }
        }
        let _ = writeln!(out, "{what} {}", words.join(" "));
    }
    Ok(out)
}

/// The guest's /etc/hosts: loopback names, plus the pod hostname.
///
/// The hostname maps to the pod's first IPv4 and first IPv6 address, as
/// kubelet's hosts file does: a program that looks up its own name (to
/// advertise itself to peers, say) must get an address others can reach.
/// Link-local IPv6 addresses are skipped, being useless without a zone.
/// Only a pod with no address falls back to 127.0.1.1, so that its name
/// still resolves.
pub fn render_hosts(hostname: Option<&str>, interfaces: &[net::Interface]) -> String {
    let mut out = String::from("127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n");
    let Some(name) = hostname else {
        return out;
    };
    let mut addrs = interfaces.iter().flat_map(|i| &i.addresses).map(Cidr::addr);
    let v4 = addrs.clone().find(IpAddr::is_ipv4);
    let v6 = addrs.find(|a| matches!(a, IpAddr::V6(v6) if !v6.is_unicast_link_local()));
    if v4.is_none() && v6.is_none() {
        let _ = writeln!(out, "127.0.1.1\t{name}");
    }
    for ip in [v4, v6].into_iter().flatten() {
        let _ = writeln!(out, "{ip}\t{name}");
    }
    out
}

/// Replaces `path` with `contents` so readers never see a partial file.
fn write_atomically(path: &Path, contents: &str) -> Result<()> {
    if fs::read_to_string(path).is_ok_and(|old| old == contents) {
        return Ok(());
    }
    let dir = path.parent().context("path has no parent")?;
    fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let tmp = path.with_extension("vmpod-tmp");
    let mut file =
        fs::File::create(&tmp).with_context(|| format!("cannot create {}", tmp.display()))?;
    file.write_all(contents.as_bytes())
        .and_then(|()| file.sync_all())
        .with_context(|| format!("cannot write {}", tmp.display()))?;
    fs::rename(&tmp, path).with_context(|| format!("cannot replace {}", path.display()))
}

/// Mounts the virtio-fs share `tag` on `target`, unless it already is.
fn mount_share(tag: &str, target: &Path) -> Result<()> {
    let target_str = target.to_string_lossy();
    if let Some(existing) = mounts::current()?
        .into_iter()
        .rev()
        .find(|m| m.mount_point == target_str)
    {
        if existing.fstype == "virtiofs" && existing.source == tag {
            return Ok(());
        }
        bail!(
            "{target_str} already holds {} ({}), not virtio-fs tag {tag:?}",
            existing.source,
            existing.fstype
        );
    }
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o755)
        .create(target)
        .with_context(|| format!("cannot create {target_str}"))?;
    // No nosuid/nodev: container root filesystems live on the share and may
    // hold setuid binaries; device nodes come from the container runtime.
    mount(
        Some(tag),
        target,
        Some("virtiofs"),
        MsFlags::empty(),
        None::<&str>,
    )
    .with_context(|| format!("cannot mount virtio-fs tag {tag:?} on {target_str}"))
}

/// Mount points of virtio-fs filesystems, for GuestInfo.
pub fn virtiofs_mounts() -> Result<Vec<String>> {
    Ok(mounts::current()?
        .into_iter()
        .filter(|m| m.fstype == "virtiofs")
        .map(|m| m.mount_point)
        .collect())
}

/// A file's contents, or empty if it does not exist.
pub fn read_optional(path: &str) -> Result<String> {
    match fs::read_to_string(path) {
        Ok(text) => Ok(text),
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => Ok(String::new()),
        Err(err) => Err(err).with_context(|| format!("cannot read {path}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request() -> SetupSandboxRequest {
        SetupSandboxRequest {
            hostname: "web-0".into(),
            dns_servers: vec!["10.96.0.10".into(), "fd00::a".into()],
            dns_searches: vec![
                "default.svc.cluster.local".into(),
                "svc.cluster.local".into(),
            ],
            dns_options: vec!["ndots:5".into()],
            share_tag: "vmpod".into(),
            host_time_ns: 0,
            interfaces: Vec::new(),
        }
    }

    #[test]
    fn renders_a_full_request() {
        let s = SandboxSetup::from_request(&request()).unwrap();
        assert_eq!(
            s.resolv_conf,
            "nameserver 10.96.0.10\nnameserver fd00::a\n\
             search default.svc.cluster.local svc.cluster.local\noptions ndots:5\n"
        );
        assert!(s.hosts.ends_with("127.0.1.1\tweb-0\n"));
        assert_eq!(s.share_tag.as_deref(), Some("vmpod"));
    }

    #[test]
    fn empty_request_is_valid() {
        let s = SandboxSetup::from_request(&SetupSandboxRequest::default()).unwrap();
        assert_eq!(s.resolv_conf, "");
        assert_eq!(s.hostname, None);
        assert_eq!(s.share_tag, None);
        assert!(s.hosts.starts_with("127.0.0.1\tlocalhost\n"));
    }

    #[test]
    fn rejects_bad_input() {
        let bad = [
            SetupSandboxRequest {
                hostname: "a b".into(),
                ..request()
            },
            SetupSandboxRequest {
                hostname: "-a".into(),
                ..request()
            },
            SetupSandboxRequest {
                hostname: "a..b".into(),
                ..request()
            },
            SetupSandboxRequest {
                hostname: "a".repeat(65),
                ..request()
            },
            SetupSandboxRequest {
                dns_servers: vec!["dns.example".into()],
                ..request()
            },
            SetupSandboxRequest {
                dns_searches: vec!["a\nnameserver 1.1.1.1".into()],
                ..request()
            },
            SetupSandboxRequest {
                dns_options: vec![String::new()],
                ..request()
            },
            SetupSandboxRequest {
                share_tag: "x".repeat(37),
                ..request()
            },
            SetupSandboxRequest {
                share_tag: "a b".into(),
                ..request()
            },
        ];
        for req in bad {
            assert!(SandboxSetup::from_request(&req).is_err(), "{req:?}");
        }
    }

    fn pod_interface() -> NetworkInterface {
        use vmpod_agent_proto::v1::Route;
        NetworkInterface {
            mac: "02:00:00:AA:bb:cc".into(),
            mtu: 1400,
            addresses: vec!["10.87.0.5/16".into(), "fd00::5/64".into()],
            routes: vec![
                Route {
                    destination: "0.0.0.0/0".into(),
                    gateway: "10.87.0.1".into(),
                },
                Route {
                    destination: "::/0".into(),
                    gateway: "fd00::1".into(),
                },
                Route {
                    destination: "192.168.7.0/24".into(),
                    gateway: String::new(),
                },
            ],
        }
    }

    fn with_interface(iface: NetworkInterface) -> SetupSandboxRequest {
        SetupSandboxRequest {
            interfaces: vec![iface],
            ..request()
        }
    }

    #[test]
    fn validates_an_interface_into_typed_form() {
        let s = SandboxSetup::from_request(&with_interface(pod_interface())).unwrap();
        let [iface] = s.interfaces.as_slice() else {
            panic!("{:?}", s.interfaces)
        };
        assert_eq!(iface.mac, MacAddr([2, 0, 0, 0xaa, 0xbb, 0xcc]));
        assert_eq!(iface.mac.to_string(), "02:00:00:aa:bb:cc");
        assert_eq!(iface.mtu, Some(1400));
        let addrs: Vec<String> = iface.addresses.iter().map(|a| a.to_string()).collect();
        assert_eq!(addrs, ["10.87.0.5/16", "fd00::5/64"]);
        let routes: Vec<String> = iface.routes.iter().map(|r| r.to_string()).collect();
        assert_eq!(
            routes,
            [
                "0.0.0.0/0 via 10.87.0.1",
                "::/0 via fd00::1",
                "192.168.7.0/24 on-link"
            ]
        );
        // Zero MTU and no addresses or routes: a bare card, kernel defaults.
        let bare = NetworkInterface {
            mac: "02:00:00:00:00:01".into(),
            ..Default::default()
        };
        let s = SandboxSetup::from_request(&with_interface(bare)).unwrap();
        assert_eq!(s.interfaces[0].mtu, None);
        // The edges of the MTU range; a small MTU is fine without IPv6.
        for mtu in [68, 65535] {
            let iface = NetworkInterface {
                mtu,
                addresses: vec!["10.0.0.2/8".into()],
                ..pod_interface()
            };
            SandboxSetup::from_request(&with_interface(iface)).unwrap();
        }
        let eight = (0..8)
            .map(|i| NetworkInterface {
                mac: format!("02:00:00:00:00:{i:02x}"),
                ..Default::default()
            })
            .collect();
        SandboxSetup::from_request(&SetupSandboxRequest {
            interfaces: eight,
            ..request()
        })
        .unwrap();
    }

    /// Each bad field is refused with an error that names it and the value.
    #[test]
    fn rejects_bad_interfaces() {
        use vmpod_agent_proto::v1::Route;
        let route = |destination: &str, gateway: &str| NetworkInterface {
            routes: vec![Route {
                destination: destination.into(),
                gateway: gateway.into(),
            }],
            ..pod_interface()
        };
        let address = |a: &str| NetworkInterface {
            addresses: vec![a.into()],
            ..pod_interface()
        };
        let mac = |m: &str| NetworkInterface {
            mac: m.into(),
            ..pod_interface()
        };
        let mtu = |mtu| NetworkInterface {
            mtu,
            ..pod_interface()
        };
        let cases: Vec<(NetworkInterface, &str)> = vec![
            (mac(""), "interfaces[0].mac: \"\" is not a MAC address"),
            (
                mac("02:00:00:aa:bb"),
                "interfaces[0].mac: \"02:00:00:aa:bb\"",
            ),
            (mac("02:00:00:aa:bb:cc:dd"), "interfaces[0].mac"),
            (mac("02-00-00-aa-bb-cc"), "interfaces[0].mac"),
            (mac("02:00:00:aa:bb:c"), "interfaces[0].mac"),
            (mac("02:00:00:aa:bb:+c"), "interfaces[0].mac"),
            (mac("02:00:00:aa:bb:gg"), "interfaces[0].mac"),
            (mac("00:00:00:00:00:00"), "all-zero"),
            (mac("01:00:5e:00:00:01"), "multicast MAC"),
            (mtu(67), "interfaces[0].mtu: 67 is out of range"),
            (mtu(65536), "interfaces[0].mtu: 65536"),
            (mtu(1000), "interfaces[0].mtu: 1000 is below IPv6's minimum"),
            (
                address("10.0.0.5"),
                "interfaces[0].addresses[0]: \"10.0.0.5\" is not in IP/prefix form",
            ),
            (
                address("10.0.0.5/33"),
                "interfaces[0].addresses[0]: \"10.0.0.5/33\": prefix length 33 is too long for IPv4",
            ),
            (address("fd00::5/129"), "too long for IPv6 (at most 128)"),
            (address("10.0.0.5/"), "\"\" is not a prefix length"),
            (address("10.0.0.5/+8"), "\"+8\" is not a prefix length"),
            (address("10.0.0.5/300"), "\"300\" is not a prefix length"),
            (address("host/24"), "\"host\" is not an IP address"),
            (address("0.0.0.0/8"), "not a unicast address"),
            (address("224.0.0.1/4"), "not a unicast address"),
            (address("ff02::1/64"), "not a unicast address"),
            (
                route("0.0.0.0", "10.87.0.1"),
                "interfaces[0].routes[0].destination: \"0.0.0.0\"",
            ),
            (
                route("10.0.0.5/8", ""),
                "interfaces[0].routes[0].destination: \"10.0.0.5/8\" has bits set past its prefix (the network is 10.0.0.0/8)",
            ),
            (
                route("0.0.0.0/0", "gw"),
                "interfaces[0].routes[0].gateway: \"gw\" is not an IP address",
            ),
            (
                route("0.0.0.0/0", "10.87.0.1/16"),
                "interfaces[0].routes[0].gateway",
            ),
            (
                route("0.0.0.0/0", "fd00::1"),
                "interfaces[0].routes[0].gateway: fd00::1 is not of the same family as the destination 0.0.0.0/0",
            ),
            (route("::/0", "10.87.0.1"), "not of the same family"),
            (
                route("::/0", "::"),
                "interfaces[0].routes[0].gateway: :: is not a unicast address",
            ),
            (
                NetworkInterface {
                    addresses: vec!["10.0.0.1/8".into(); 17],
                    ..pod_interface()
                },
                "interfaces[0].addresses: 17 given, at most 16",
            ),
            (
                NetworkInterface {
                    routes: vec![Route::default(); 65],
                    ..pod_interface()
                },
                "interfaces[0].routes: 65 given, at most 64",
            ),
        ];
        for (iface, want) in cases {
            let err = SandboxSetup::from_request(&with_interface(iface.clone()))
                .expect_err(&format!("{iface:?} should be refused"));
            let msg = format!("{err:#}");
            assert!(msg.contains(want), "{iface:?}: {msg:?} lacks {want:?}");
        }
        let nine = (0..9)
            .map(|i| NetworkInterface {
                mac: format!("02:00:00:00:00:{i:02x}"),
                ..Default::default()
            })
            .collect();
        let err = SandboxSetup::from_request(&SetupSandboxRequest {
            interfaces: nine,
            ..request()
        })
        .unwrap_err();
        assert_eq!(
            format!("{err:#}"),
            "interfaces: 9 given, at most 8 are allowed"
        );
        let twice = SetupSandboxRequest {
            interfaces: vec![pod_interface(), mac("02:00:00:aa:bb:cc")],
            ..request()
        };
        let err = SandboxSetup::from_request(&twice).unwrap_err();
        assert_eq!(
            format!("{err:#}"),
            "interfaces[1].mac: 02:00:00:aa:bb:cc is also the MAC of interfaces[0]"
        );
    }

    #[test]
    fn hosts_map_the_hostname_to_the_pod_addresses() {
        let s = SandboxSetup::from_request(&with_interface(pod_interface())).unwrap();
        assert_eq!(
            s.hosts,
            "127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n\
             10.87.0.5\tweb-0\nfd00::5\tweb-0\n"
        );
        // The first of each family, across interfaces; link-local skipped.
        let first = NetworkInterface {
            addresses: vec!["fe80::5/64".into(), "fd00::7/64".into()],
            ..Default::default()
        };
        let second = NetworkInterface {
            addresses: vec!["10.1.0.9/24".into(), "10.1.0.10/24".into()],
            ..Default::default()
        };
        let ifaces: Vec<net::Interface> = [first, second]
            .iter()
            .enumerate()
            .map(|(i, iface)| {
                validate_interface(
                    &NetworkInterface {
                        mac: format!("02:00:00:00:00:{i:02x}"),
                        ..iface.clone()
                    },
                    "test",
                )
                .unwrap()
            })
            .collect();
        let hosts = render_hosts(Some("db"), &ifaces);
        assert!(
            hosts.ends_with("ip6-loopback\n10.1.0.9\tdb\nfd00::7\tdb\n"),
            "{hosts}"
        );
        // Only IPv6: no 127.0.1.1 line either.
        let hosts = render_hosts(Some("db"), &ifaces[..1]);
        assert!(hosts.ends_with("ip6-loopback\nfd00::7\tdb\n"), "{hosts}");
        // No hostname: nothing to map.
        assert_eq!(
            render_hosts(None, &ifaces),
            "127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n"
        );
    }

    #[test]
    fn atomic_write_replaces_and_is_idempotent() {
        let dir = std::env::temp_dir().join(format!("vmpod-agent-test-{}", std::process::id()));
        let path = dir.join("etc/hosts");
        write_atomically(&path, "one\n").unwrap();
        write_atomically(&path, "two\n").unwrap();
        write_atomically(&path, "two\n").unwrap();
        assert_eq!(fs::read_to_string(&path).unwrap(), "two\n");
        assert!(!path.with_extension("vmpod-tmp").exists());
        fs::remove_dir_all(&dir).unwrap();
    }
}
