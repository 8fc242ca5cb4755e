//! The guest's own network set-up: the loopback interface, and the pod's
//! interface when SetupSandbox describes one.
//!
//! Every container of a pod shares the guest's network namespace, as
//! containers of a pod share one in Kubernetes, and they talk to each other
//! over `localhost`. The kernel creates `lo` down; nothing else in a vmpod
//! guest would bring it up, so the agent does before it serves.
//!
//! The pod's own interface is a virtio-net card the host created with a MAC
//! of its choosing. The guest kernel names cards in probe order, so the MAC
//! is the one name both sides agree on. The host (its CNI result) decides
//! every address and route; the guest runs no DHCP or router discovery, and
//! the agent installs exactly what it is told, over rtnetlink.

use std::fmt;
use std::io;
use std::net::IpAddr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::pin::pin;
use std::str::FromStr;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use futures_util::TryStreamExt;
use netlink_packet_route::address::{AddressAttribute, AddressFlags, AddressHeaderFlags};
use netlink_packet_route::link::LinkAttribute;
use netlink_packet_route::route::{RouteMessage, RouteScope};
use rtnetlink::{Handle, LinkUnspec, RouteMessageBuilder};

/// A socket for interface ioctls, and the request naming `name`.
fn request(name: &str) -> Result<(OwnedFd, libc::ifreq)> {
    // SAFETY: a plain socket(2); the fd is owned below.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error()).context("socket(AF_INET) for interface ioctls");
    }
    // SAFETY: fd was just returned by socket(2) and is owned by nothing else.
    let sock = unsafe { OwnedFd::from_raw_fd(fd) };
    // SAFETY: ifreq is plain old data; all zeroes is a valid value.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    let bytes = name.as_bytes();
    if bytes.is_empty() || bytes.len() >= req.ifr_name.len() {
        bail!("interface name {name:?} does not fit IFNAMSIZ");
    }
    for (dst, src) in req.ifr_name.iter_mut().zip(bytes) {
        *dst = *src as libc::c_char;
    }
    Ok((sock, req))
}

fn read_flags(sock: &OwnedFd, req: &mut libc::ifreq, name: &str) -> Result<libc::c_short> {
    // SAFETY: SIOCGIFFLAGS writes the flags into `req`, which outlives the call.
    if unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCGIFFLAGS, &mut *req) } < 0 {
        return Err(io::Error::last_os_error()).with_context(|| format!("reading {name}'s flags"));
    }
    // SAFETY: SIOCGIFFLAGS filled the flags member of the union.
    Ok(unsafe { req.ifr_ifru.ifru_flags })
}

/// Whether interface `name` is up.
pub fn is_up(name: &str) -> Result<bool> {
    let (sock, mut req) = request(name)?;
    Ok(read_flags(&sock, &mut req, name)? & libc::IFF_UP as libc::c_short != 0)
}

/// Brings `name` up (IFF_UP), as `ip link set dev NAME up` would.
pub fn link_up(name: &str) -> Result<()> {
    let (sock, mut req) = request(name)?;
    let flags = read_flags(&sock, &mut req, name)?;
    req.ifr_ifru.ifru_flags = flags | libc::IFF_UP as libc::c_short;
    // SAFETY: SIOCSIFFLAGS reads `req`, which outlives the call.
    if unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCSIFFLAGS, &req) } < 0 {
        return Err(io::Error::last_os_error()).with_context(|| format!("bringing {name} up"));
    }
    Ok(())
}

/// An Ethernet address, as the host gives it to the card.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct MacAddr(pub [u8; 6]);

impl FromStr for MacAddr {
    type Err = anyhow::Error;

    /// Only the canonical `02:00:00:aa:bb:cc` form (either case): it is
    /// what the host writes, and anything looser would only hide a bug
    /// there.
    fn from_str(text: &str) -> Result<Self> {
        let mut bytes = [0u8; 6];
        let mut parts = text.split(':');
        for byte in &mut bytes {
            let Some(part) = parts
                .next()
                .filter(|p| p.len() == 2 && p.bytes().all(|b| b.is_ascii_hexdigit()))
            else {
                bail!("{text:?} is not a MAC address (six hex bytes, like 02:00:00:aa:bb:cc)");
            };
            *byte = u8::from_str_radix(part, 16)
                .with_context(|| format!("{text:?} is not a MAC address"))?;
        }
        if parts.next().is_some() {
            bail!("{text:?} is not a MAC address (six hex bytes, like 02:00:00:aa:bb:cc)");
        }
        if bytes == [0; 6] {
            bail!("{text:?} is the all-zero MAC, which no card can have");
        }
        // The I/G bit: a group address never names one card.
        if bytes[0] & 1 != 0 {
            bail!("{text:?} is a multicast MAC; a card needs a unicast one");
        }
        Ok(Self(bytes))
    }
}

impl fmt::Display for MacAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let [a, b, c, d, e, g] = self.0;
        write!(f, "{a:02x}:{b:02x}:{c:02x}:{d:02x}:{e:02x}:{g:02x}")
    }
}

/// An IP address with a prefix length: an interface address (whose host
/// bits name the interface) or a route destination (whose host bits are
/// zero).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    addr: IpAddr,
    prefix_len: u8,
}

impl Cidr {
    /// The prefix length must fit the address family.
    pub fn new(addr: IpAddr, prefix_len: u8) -> Result<Self> {
        let max = max_prefix_len(addr);
        if prefix_len > max {
            bail!(
                "prefix length {prefix_len} is too long for {} (at most {max})",
                family_name(addr)
            );
        }
        Ok(Self { addr, prefix_len })
    }

    pub fn addr(&self) -> IpAddr {
        self.addr
    }

    pub fn prefix_len(&self) -> u8 {
        self.prefix_len
    }

    /// The address with its host bits cleared.
    pub fn network(&self) -> IpAddr {
        match self.addr {
            IpAddr::V4(a) => {
                let mask = u32::MAX
                    .checked_shl(32 - u32::from(self.prefix_len))
                    .unwrap_or(0);
                IpAddr::V4((u32::from(a) & mask).into())
            }
            IpAddr::V6(a) => {
                let mask = u128::MAX
                    .checked_shl(128 - u32::from(self.prefix_len))
                    .unwrap_or(0);
                IpAddr::V6((u128::from(a) & mask).into())
            }
        }
    }
}

impl FromStr for Cidr {
    type Err = anyhow::Error;

    fn from_str(text: &str) -> Result<Self> {
        let Some((addr, len)) = text.split_once('/') else {
            bail!("{text:?} is not in IP/prefix form, like 10.0.0.5/24 or fd00::5/64");
        };
        let addr: IpAddr = addr
            .parse()
            .with_context(|| format!("{text:?}: {addr:?} is not an IP address"))?;
        // u8's parser takes a leading '+'; a prefix length is digits only.
        let prefix_len = Some(len)
            .filter(|l| !l.is_empty() && l.bytes().all(|b| b.is_ascii_digit()))
            .and_then(|l| l.parse::<u8>().ok());
        let Some(prefix_len) = prefix_len else {
            bail!("{text:?}: {len:?} is not a prefix length");
        };
        Self::new(addr, prefix_len).with_context(|| format!("{text:?}"))
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix_len)
    }
}

fn max_prefix_len(addr: IpAddr) -> u8 {
    if addr.is_ipv4() { 32 } else { 128 }
}

fn family_name(addr: IpAddr) -> &'static str {
    if addr.is_ipv4() { "IPv4" } else { "IPv6" }
}

/// A route through the pod interface.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Route {
    pub destination: Cidr,
    /// None: the destination is on the link itself.
    pub gateway: Option<IpAddr>,
}

impl fmt::Display for Route {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.gateway {
            Some(gw) => write!(f, "{} via {gw}", self.destination),
            None => write!(f, "{} on-link", self.destination),
        }
    }
}

/// One pod interface, validated (see `sandbox::SandboxSetup`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Interface {
    pub mac: MacAddr,
    /// None keeps the driver's default.
    pub mtu: Option<u32>,
    pub addresses: Vec<Cidr>,
    pub routes: Vec<Route>,
}

/// How long SetupSandbox waits for the pod's card to appear: virtio-net
/// may probe after the agent already serves, but a card that is not there
/// after this long is not coming (a host/guest mismatch), and the caller is
/// better served by an error naming the MAC than by a hang.
pub const LINK_WAIT: Duration = Duration::from_secs(2);
const LINK_POLL: Duration = Duration::from_millis(20);

/// Configures each interface: MTU, addresses, up, then routes. Safe to
/// repeat: what is already there is left as it is, so a second call with
/// the same values changes nothing.
pub async fn configure(interfaces: &[Interface]) -> Result<()> {
    configure_within(interfaces, LINK_WAIT).await
}

/// [`configure`], waiting at most `wait` in all for the cards to appear.
pub async fn configure_within(interfaces: &[Interface], wait: Duration) -> Result<()> {
    if interfaces.is_empty() {
        return Ok(());
    }
    // The socket belongs to the network namespace of the thread that opens
    // it, which is the agent's (or a test's own).
    let (connection, handle, _) =
        rtnetlink::new_connection().context("cannot open an rtnetlink socket")?;
    // The connection task outlives its handles otherwise.
    let _connection = AbortOnDrop(tokio::spawn(connection));
    let deadline = tokio::time::Instant::now() + wait;
    for iface in interfaces {
        configure_one(&handle, iface, deadline, wait)
            .await
            .with_context(|| format!("cannot configure the interface with MAC {}", iface.mac))?;
    }
    Ok(())
}

struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// A link found by MAC.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Link {
    index: u32,
    name: String,
}

async fn configure_one(
    handle: &Handle,
    iface: &Interface,
    deadline: tokio::time::Instant,
    wait: Duration,
) -> Result<()> {
    let link = wait_for_link(handle, iface.mac, deadline, wait).await?;
    let Link { index, ref name } = link;
    if let Some(mtu) = iface.mtu {
        handle
            .link()
            .set(LinkUnspec::new_with_index(index).mtu(mtu).build())
            .execute()
            .await
            .with_context(|| format!("cannot set {name}'s MTU to {mtu}"))?;
    }
    if iface.addresses.iter().any(|a| a.addr().is_ipv6()) {
        disable_dad(name);
    }
    for &cidr in &iface.addresses {
        add_address(handle, index, cidr)
            .await
            .with_context(|| format!("cannot add address {cidr} to {name}"))?;
    }
    handle
        .link()
        .set(LinkUnspec::new_with_index(index).up().build())
        .execute()
        .await
        .with_context(|| format!("cannot bring {name} up"))?;
    // A gateway must be reachable when its route is added: through the
    // prefix of an address, or through an on-link route of this same list
    // (a /32 pod address with an on-link route to its gateway).
    let (on_link, via): (Vec<&Route>, Vec<&Route>) =
        iface.routes.iter().partition(|r| r.gateway.is_none());
    for route in on_link.into_iter().chain(via) {
        let message = route_message(index, route)?;
        tolerate_exists(handle.route().add(message).execute().await)
            .with_context(|| format!("cannot add route {route} on {name}"))?;
    }
    tracing::info!(
        interface = %name,
        mac = %iface.mac,
        addresses = iface.addresses.len(),
        routes = iface.routes.len(),
        "pod interface configured"
    );
    Ok(())
}

/// Polls the link list until a card with `mac` shows up or `deadline`
/// passes; the kernel announces new links on a multicast group too, but a
/// poll is simpler and the wait is short.
async fn wait_for_link(
    handle: &Handle,
    mac: MacAddr,
    deadline: tokio::time::Instant,
    wait: Duration,
) -> Result<Link> {
    loop {
        if let Some(link) = find_link(handle, mac).await? {
            return Ok(link);
        }
        if tokio::time::Instant::now() >= deadline {
            bail!(
                "no network interface has MAC {mac} (waited {} ms for it to appear)",
                wait.as_millis()
            );
        }
        tokio::time::sleep(LINK_POLL).await;
    }
}

/// The one link whose address is `mac`. Several would make the choice a
/// guess (a VLAN or macvlan a privileged container made on the card shares
/// its MAC), so that is an error naming them.
async fn find_link(handle: &Handle, mac: MacAddr) -> Result<Option<Link>> {
    let mut links = pin!(handle.link().get().execute());
    let mut found = Vec::new();
    while let Some(msg) = links
        .try_next()
        .await
        .context("cannot list the network interfaces")?
    {
        let matches = msg
            .attributes
            .iter()
            .any(|a| matches!(a, LinkAttribute::Address(hw) if hw.as_slice() == mac.0));
        if matches {
            let name = msg
                .attributes
                .iter()
                .find_map(|a| match a {
                    LinkAttribute::IfName(n) => Some(n.clone()),
                    _ => None,
                })
                .unwrap_or_else(|| format!("ifindex {}", msg.header.index));
            found.push(Link {
                index: msg.header.index,
                name,
            });
        }
    }
    if found.len() > 1 {
        let names: Vec<&str> = found.iter().map(|l| l.name.as_str()).collect();
        bail!(
            "MAC {mac} is on several interfaces ({}); cannot tell which is the pod's",
            names.join(", ")
        );
    }
    Ok(found.pop())
}

/// Adds `cidr` to link `index`. IPv6 addresses skip duplicate address
/// detection (IFA_F_NODAD): the host allocated them and the only other end
/// of the link is its tap, so DAD could only delay them (a second or so of
/// "tentative", during which nothing can bind or send from them).
async fn add_address(handle: &Handle, index: u32, cidr: Cidr) -> Result<()> {
    let mut request = handle.address().add(index, cidr.addr(), cidr.prefix_len());
    if cidr.addr().is_ipv6() {
        let message = request.message_mut();
        message.header.flags |= AddressHeaderFlags::Nodad;
        message
            .attributes
            .push(AddressAttribute::Flags(AddressFlags::Nodad));
    }
    tolerate_exists(request.execute().await)?;
    Ok(())
}

/// Turns DAD off for the kernel's own link-local address on `name`, which
/// IFA_F_NODAD cannot reach: with DAD it stays tentative for a second
/// after the link comes up, and neighbour discovery (to a `fe80::` gateway,
/// say) waits for it. Best effort: a kernel without the knob has IPv6 ready
/// anyway or not at all, and adding the addresses reports that.
fn disable_dad(name: &str) {
    let path = format!("/proc/sys/net/ipv6/conf/{name}/accept_dad");
    match std::fs::write(&path, "0") {
        Ok(()) => {}
        Err(err) if err.kind() == io::ErrorKind::NotFound => {}
        Err(err) => tracing::warn!("cannot turn off DAD ({path}): {err}"),
    }
}

/// The RTM_NEWROUTE message for `route` through link `index`, as
/// `ip route add` would build it: main table, static protocol, and for an
/// IPv4 on-link route the link scope (IPv6 routes are all universe scope).
fn route_message(index: u32, route: &Route) -> Result<RouteMessage> {
    let dst = route.destination;
    let builder = RouteMessageBuilder::<IpAddr>::new()
        .destination_prefix(dst.addr(), dst.prefix_len())
        .with_context(|| format!("route {route}"))?
        .output_interface(index);
    let builder = match route.gateway {
        Some(gateway) => builder
            .gateway(gateway)
            .with_context(|| format!("route {route}"))?,
        None if dst.addr().is_ipv4() => builder.scope(RouteScope::Link),
        None => builder,
    };
    Ok(builder.build())
}

/// EEXIST means a repeated SetupSandbox already did this. (What exists may
/// differ from what is asked, e.g. a route to the same destination through
/// another gateway; nothing but the agent configures the guest's network,
/// and the host never asks twice with different values.)
fn tolerate_exists(result: Result<(), rtnetlink::Error>) -> Result<(), rtnetlink::Error> {
    match result {
        Err(rtnetlink::Error::NetlinkError(msg))
            if msg.to_io().raw_os_error() == Some(libc::EEXIST) =>
        {
            Ok(())
        }
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// In a fresh network namespace of its own thread (needs root, as
    /// the agent's other tests do): `lo` starts down and comes up.
    #[test]
    fn loopback_comes_up_in_a_new_namespace() {
        std::thread::spawn(|| {
            nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET).expect("unshare(net)");
            assert!(!is_up("lo").expect("flags"), "a new namespace's lo is down");
            link_up("lo").expect("link up");
            assert!(is_up("lo").expect("flags"));
            let e = link_up("no-such-if0").expect_err("missing interface");
            assert!(format!("{e:#}").contains("no-such-if0"), "{e:#}");
        })
        .join()
        .expect("test thread");
    }

    #[test]
    fn parses_and_prints_macs_and_cidrs() {
        let mac: MacAddr = "02:00:00:AA:bb:0c".parse().unwrap();
        assert_eq!(mac.to_string(), "02:00:00:aa:bb:0c");
        let cidr: Cidr = "10.87.0.5/16".parse().unwrap();
        assert_eq!(
            (cidr.to_string(), cidr.prefix_len()),
            ("10.87.0.5/16".into(), 16)
        );
        assert_eq!(cidr.network().to_string(), "10.87.0.0");
        let v6: Cidr = "fd00::5:1/112".parse().unwrap();
        assert_eq!(v6.network().to_string(), "fd00::5:0");
        for (text, network) in [
            ("0.0.0.0/0", "0.0.0.0"),
            ("10.1.2.3/0", "0.0.0.0"),
            ("10.1.2.3/32", "10.1.2.3"),
            ("::/0", "::"),
            ("fd00::1/0", "::"),
            ("fd00::1/128", "fd00::1"),
        ] {
            let c: Cidr = text.parse().unwrap();
            assert_eq!(c.network().to_string(), network, "{text}");
        }
        for bad in [
            "10.0.0.1",
            "10.0.0.1/33",
            "::/129",
            "/8",
            "10.0.0.1/-1",
            "10.0.0.1/8/8",
        ] {
            assert!(bad.parse::<Cidr>().is_err(), "{bad}");
        }
    }

    const TEST_MAC: MacAddr = MacAddr([0x02, 0, 0, 0xaa, 0xbb, 0xcc]);

    /// Runs `test` on a thread of its own in a fresh network namespace
    /// (needs root), on a current-thread runtime as the agent's: rtnetlink
    /// sockets belong to the namespace of the thread that opens them.
    fn in_new_netns<F>(test: impl FnOnce() -> F + Send + 'static)
    where
        F: std::future::Future<Output = ()>,
    {
        std::thread::spawn(|| {
            nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET).expect("unshare(net)");
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime")
                .block_on(test());
        })
        .join()
        .expect("test thread");
    }

    /// An rtnetlink handle for the current thread's namespace; the
    /// connection runs as long as the returned guard.
    fn connect() -> (Handle, AbortOnDrop) {
        let (connection, handle, _) = rtnetlink::new_connection().expect("rtnetlink");
        (handle, AbortOnDrop(tokio::spawn(connection)))
    }

    /// A stand-in for the virtio-net card, with `mac`: a dummy interface,
    /// or where the kernel has no dummy driver a (port-less) bridge, or an
    /// ifb. All are Ethernet devices whose MAC is set at creation; the
    /// first two do IPv6 DAD, so they also prove that it is skipped.
    async fn add_card(handle: &Handle, name: &str, mac: MacAddr) -> u32 {
        let hw = mac.0.to_vec();
        let kinds = [
            (
                "dummy",
                rtnetlink::LinkDummy::new(name).address(hw.clone()).build(),
            ),
            (
                "bridge",
                rtnetlink::LinkBridge::new(name)
                    .down()
                    .address(hw.clone())
                    .build(),
            ),
            ("ifb", rtnetlink::LinkIfb::new(name).address(hw).build()),
        ];
        let mut errors = Vec::new();
        for (kind, message) in kinds {
            match handle.link().add(message).execute().await {
                Ok(()) => {
                    let link = find_link(handle, mac).await.expect("find");
                    return link.expect("the card").index;
                }
                Err(err) => errors.push(format!("{kind}: {err}")),
            }
        }
        panic!("cannot create a test card: {}", errors.join("; "));
    }

    fn pod_interface() -> Interface {
        let cidr = |t: &str| t.parse::<Cidr>().unwrap();
        Interface {
            mac: TEST_MAC,
            mtu: Some(1400),
            addresses: vec![cidr("10.0.0.5/24"), cidr("fd00::5/64")],
            // The gateway of 172.16/16 is only reachable through the
            // on-link route listed after it.
            routes: vec![
                Route {
                    destination: cidr("0.0.0.0/0"),
                    gateway: Some("10.0.0.1".parse().unwrap()),
                },
                Route {
                    destination: cidr("::/0"),
                    gateway: Some("fd00::1".parse().unwrap()),
                },
                Route {
                    destination: cidr("172.16.0.0/16"),
                    gateway: Some("192.168.7.1".parse().unwrap()),
                },
                Route {
                    destination: cidr("192.168.7.0/24"),
                    gateway: None,
                },
            ],
        }
    }

    /// What the kernel holds for link `index`: (mtu, up), its addresses
    /// (address/prefix, tentative) and its static routes in the main table.
    async fn observe(
        handle: &Handle,
        index: u32,
    ) -> ((u32, bool), Vec<(String, bool)>, Vec<String>) {
        use netlink_packet_route::link::LinkFlags;
        use netlink_packet_route::route::{RouteAttribute, RouteHeader, RouteProtocol};

        let mut links = pin!(handle.link().get().match_index(index).execute());
        let link = links
            .try_next()
            .await
            .expect("link dump")
            .expect("the link");
        let mtu = link
            .attributes
            .iter()
            .find_map(|a| match a {
                LinkAttribute::Mtu(m) => Some(*m),
                _ => None,
            })
            .expect("an MTU");
        let up = link.header.flags.contains(LinkFlags::Up);

        let mut addresses = Vec::new();
        let mut dump = pin!(
            handle
                .address()
                .get()
                .set_link_index_filter(index)
                .execute()
        );
        while let Some(msg) = dump.try_next().await.expect("address dump") {
            let mut addr = None;
            let mut tentative = false;
            for attr in &msg.attributes {
                match attr {
                    AddressAttribute::Address(a) => addr = Some(*a),
                    AddressAttribute::Flags(f) => tentative = f.contains(AddressFlags::Tentative),
                    _ => {}
                }
            }
            let addr = addr.expect("an address");
            if !matches!(addr, IpAddr::V6(v6) if v6.is_unicast_link_local()) {
                addresses.push((format!("{addr}/{}", msg.header.prefix_len), tentative));
            }
        }
        addresses.sort();

        let mut routes = Vec::new();
        for family in [
            RouteMessageBuilder::<std::net::Ipv4Addr>::new().build(),
            RouteMessageBuilder::<std::net::Ipv6Addr>::new().build(),
        ] {
            let mut dump = pin!(handle.route().get(family).execute());
            while let Some(msg) = dump.try_next().await.expect("route dump") {
                if msg.header.table != RouteHeader::RT_TABLE_MAIN
                    || msg.header.protocol != RouteProtocol::Static
                {
                    continue;
                }
                let mut dst = None;
                let mut gateway = None;
                let mut oif = None;
                for attr in &msg.attributes {
                    match attr {
                        RouteAttribute::Destination(d) => dst = Some(format!("{d:?}")),
                        RouteAttribute::Gateway(g) => gateway = Some(format!("{g:?}")),
                        RouteAttribute::Oif(o) => oif = Some(*o),
                        _ => {}
                    }
                }
                assert_eq!(oif, Some(index), "{msg:?}");
                routes.push(format!(
                    "{}/{} via {} scope {:?}",
                    dst.unwrap_or_else(|| "default".into()),
                    msg.header.destination_prefix_length,
                    gateway.unwrap_or_else(|| "-".into()),
                    msg.header.scope,
                ));
            }
        }
        routes.sort();
        ((mtu, up), addresses, routes)
    }

    /// The whole pod interface set-up on a stand-in card, twice.
    #[test]
    fn pod_interface_is_configured_in_a_new_namespace() {
        in_new_netns(|| async {
            let (handle, _conn) = connect();
            let index = add_card(&handle, "pod0", TEST_MAC).await;
            let before = observe(&handle, index).await;
            assert_eq!(before.0, (1500, false), "{before:?}");

            let config = [pod_interface()];
            configure(&config).await.expect("configure");
            let after = observe(&handle, index).await;
            assert_eq!(after.0, (1400, true));
            // Not tentative: usable at once; nor will the link-local be.
            let accept_dad = std::fs::read_to_string("/proc/sys/net/ipv6/conf/pod0/accept_dad");
            assert_eq!(accept_dad.expect("accept_dad"), "0\n");
            assert_eq!(
                after.1,
                [
                    ("10.0.0.5/24".to_string(), false),
                    ("fd00::5/64".to_string(), false)
                ]
            );
            assert_eq!(
                after.2,
                [
                    "Inet(172.16.0.0)/16 via Inet(192.168.7.1) scope Universe",
                    "Inet(192.168.7.0)/24 via - scope Link",
                    "default/0 via Inet(10.0.0.1) scope Universe",
                    "default/0 via Inet6(fd00::1) scope Universe",
                ]
            );

            // Idempotent: a repeated SetupSandbox succeeds and changes nothing.
            configure(&config).await.expect("configure again");
            assert_eq!(observe(&handle, index).await, after);
        });
    }

    #[test]
    fn waits_for_a_late_card_and_names_a_missing_one() {
        in_new_netns(|| async {
            let (handle, _conn) = connect();
            let late = async {
                tokio::time::sleep(Duration::from_millis(200)).await;
                add_card(&handle, "late0", TEST_MAC).await
            };
            let config = [Interface {
                mac: TEST_MAC,
                mtu: None,
                addresses: vec!["10.9.0.2/24".parse().unwrap()],
                routes: Vec::new(),
            }];
            let (configured, index) = tokio::join!(configure(&config), late);
            configured.expect("configure a late card");
            let (_, addresses, _) = observe(&handle, index).await;
            assert_eq!(addresses, [("10.9.0.2/24".to_string(), false)]);

            let missing = Interface {
                mac: MacAddr([0x02, 0, 0, 0, 0, 0x99]),
                ..config[0].clone()
            };
            let start = tokio::time::Instant::now();
            let err = configure_within(&[missing], Duration::from_millis(100))
                .await
                .expect_err("no such card");
            assert!(start.elapsed() >= Duration::from_millis(100));
            assert_eq!(
                format!("{err:#}"),
                "cannot configure the interface with MAC 02:00:00:00:00:99: \
                 no network interface has MAC 02:00:00:00:00:99 \
                 (waited 100 ms for it to appear)"
            );
        });
    }

    #[test]
    fn no_interfaces_need_no_netlink() {
        // Off-guest and unprivileged too: nothing is opened.
        tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("runtime")
            .block_on(configure(&[]))
            .expect("nothing to do");
    }
}
