//! The TAP that carries a pod's traffic to its VM, spliced onto the
//! interface that CNI configured.
//!
//! CNI plugins configure a veth (or whatever they make) called `eth0` in the
//! pod's namespace, but a VM needs a TAP. Rather than teach each plugin
//! about TAPs, every frame arriving on eth0 is redirected to the TAP and
//! every frame the VM sends is redirected out of eth0, with tc ingress
//! filters both ways (Kata Containers' "tcfilter" model). The guest takes
//! eth0's MAC, IP and MTU, so to the network it is where eth0 was, and any
//! plugin works unchanged. eth0 keeps its address in the namespace, which
//! is harmless: none of its inbound traffic reaches the namespace's stack.

use std::fs::{File, OpenOptions};
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::Path;
use std::pin::pin;

use anyhow::{Context, Result, anyhow, bail};
use futures_util::TryStreamExt;
use rtnetlink::packet_route::link::{LinkAttribute, LinkMessage};
use rtnetlink::packet_route::tc::TcHandle;
use rtnetlink::{Handle, LinkUnspec};

use super::netns;

/// The TAP's name inside the pod's namespace; the shim opens it by this
/// name. Each pod has its own namespace, so one name serves every pod.
pub const TAP_NAME: &str = "tap0";

/// The flags the shim's TUNSETIFF uses too: a persistent TAP accepts any
/// later attach, but the same flags keep the device's expectations (no
/// packet info, virtio-net header) the same whoever holds it.
const TAP_FLAGS: libc::c_int = libc::IFF_TAP | libc::IFF_NO_PI | libc::IFF_VNET_HDR;

/// `parent ffff:`, where filters of an ingress qdisc hang.
const INGRESS_PARENT: u32 = 0xffff_0000;

/// What the guest's NIC must look like to stand in for the CNI interface.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Card {
    /// Lowercase `aa:bb:cc:dd:ee:ff`. Peers (the bridge, the neighbours
    /// CNI may have set up) already know eth0 by this address.
    pub mac: String,
    pub mtu: u32,
}

/// Creates the TAP `tap` in the namespace at `netns` and splices it onto
/// `cni_if`, returning what the guest's card must copy from `cni_if`.
///
/// A retry after a crash finds the TAP and the qdiscs already there and
/// reuses the TAP (a VM may already hold it) while rebuilding the filters,
/// so the result is one splice, not two. A failure once the TAP exists
/// deletes it (a half-spliced TAP is of no use, even one a previous try
/// made) and `cni_if`'s ingress qdisc; a device of another kind already
/// named `tap` is refused and left alone.
///
/// Blocks for a few netlink round trips; async code calls it from
/// `spawn_blocking`.
pub fn connect(netns: &Path, cni_if: &str, tap: &str) -> Result<Card> {
    check_ifname(cni_if)?;
    check_ifname(tap)?;
    netns::run_in(netns, || {
        netlink(async |h| connect_here(&h, cni_if, tap).await)
    })
    .with_context(|| {
        format!(
            "cannot connect TAP {tap} to {cni_if} in network namespace {}",
            netns.display()
        )
    })
}

/// Deletes the TAP and `cni_if`'s ingress qdisc (and with it the filters),
/// tolerating either being gone. Deleting the namespace removes both too;
/// this is for retries and for tests. A namespace that no longer exists has
/// nothing left to disconnect.
#[cfg_attr(
    not(test),
    expect(
        dead_code,
        reason = "teardown deletes the netns, which takes the TAP with it; tests disconnect"
    )
)]
pub fn disconnect(netns: &Path, cni_if: &str, tap: &str) -> Result<()> {
    check_ifname(cni_if)?;
    check_ifname(tap)?;
    match std::fs::symlink_metadata(netns) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        _ => {}
    }
    netns::run_in(netns, || netlink(async |h| undo(&h, cni_if, tap).await)).with_context(|| {
        format!(
            "cannot disconnect TAP {tap} from {cni_if} in network namespace {}",
            netns.display()
        )
    })
}

async fn connect_here(h: &Handle, cni_if: &str, tap: &str) -> Result<Card> {
    let cni = find_link(h, cni_if)
        .await?
        .ok_or_else(|| anyhow!("CNI interface {cni_if} not found"))?;
    let card = card_of(&cni, cni_if)?;
    // Nothing is made before this point, so nothing needs undoing.
    make_tap(tap)?;
    match splice(h, cni.header.index, tap, card.mtu).await {
        Ok(()) => Ok(card),
        Err(e) => {
            if let Err(u) = undo(h, cni_if, tap).await {
                tracing::warn!(error = %format!("{u:#}"), tap, cni_if,
                    "cannot undo a failed TAP connect; deleting the namespace will");
            }
            Err(e)
        }
    }
}

/// Sizes the TAP like the CNI interface, brings it up, and redirects each
/// one's ingress to the other.
async fn splice(h: &Handle, cni_index: u32, tap: &str, mtu: u32) -> Result<()> {
    let tap_index = find_link(h, tap)
        .await?
        .ok_or_else(|| anyhow!("TAP {tap} vanished after it was created"))?
        .header
        .index;
    h.link()
        .set(LinkUnspec::new_with_index(tap_index).mtu(mtu).up().build())
        .execute()
        .await
        .with_context(|| format!("cannot set MTU {mtu} on {tap} and bring it up"))?;
    for (from, to) in [(cni_index, tap_index), (tap_index, cni_index)] {
        let from_i32 = i32::try_from(from).context("interface index out of range")?;
        // A retry finds the qdisc of the first try; deleting it drops its
        // filters too, so the redirect is installed exactly once.
        delete_ingress(h, from).await?;
        h.qdisc()
            .add(from_i32)
            .ingress()
            .execute()
            .await
            .with_context(|| format!("cannot add an ingress qdisc to interface {from}"))?;
        h.traffic_filter(from_i32)
            .add()
            .parent(INGRESS_PARENT)
            // tc wants the protocol in network byte order; 0x0003 as is
            // would match no frame at all.
            .protocol((libc::ETH_P_ALL as u16).to_be())
            .redirect(to)
            .context("cannot build the redirect filter")?
            .execute()
            .await
            .with_context(|| {
                format!("cannot redirect ingress of interface {from} to interface {to}")
            })?;
    }
    Ok(())
}

/// Removes the TAP and `cni_if`'s ingress qdisc where present. The TAP's
/// own qdisc goes with the TAP.
async fn undo(h: &Handle, cni_if: &str, tap: &str) -> Result<()> {
    if let Some(t) = find_link(h, tap).await? {
        match h.link().del(t.header.index).execute().await {
            Err(e) if errno(&e) != Some(libc::ENODEV) => {
                return Err(e).with_context(|| format!("cannot delete TAP {tap}"));
            }
            _ => {}
        }
    }
    if let Some(c) = find_link(h, cni_if).await? {
        delete_ingress(h, c.header.index).await?;
    }
    Ok(())
}

/// Creates the persistent TAP, or attaches to it if a previous try made it
/// (the kernel refuses if `name` is some other kind of device), then lets
/// go: the shim opens it again for the VM.
fn make_tap(name: &str) -> Result<()> {
    let fd = open_tap(name)?;
    // SAFETY: TUNSETPERSIST takes its argument by value, not a pointer.
    if unsafe { libc::ioctl(fd.as_raw_fd(), libc::TUNSETPERSIST, 1 as libc::c_ulong) } < 0 {
        return Err(std::io::Error::last_os_error())
            .with_context(|| format!("cannot make TAP {name} persistent"));
    }
    Ok(())
}

/// Opens `/dev/net/tun` attached to the TAP `name`, creating the TAP if
/// absent. The device is looked up in the namespace of the calling thread.
pub(crate) fn open_tap(name: &str) -> Result<OwnedFd> {
    check_ifname(name)?;
    // std opens with O_CLOEXEC.
    let tun: File = OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/net/tun")
        .context("cannot open /dev/net/tun")?;
    // SAFETY: ifreq is plain old data; all zeroes is a valid value.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    // check_ifname bounds the length below IFNAMSIZ, so the name stays
    // NUL-terminated.
    for (dst, src) in req.ifr_name.iter_mut().zip(name.bytes()) {
        *dst = src as libc::c_char;
    }
    req.ifr_ifru.ifru_flags = TAP_FLAGS as libc::c_short;
    // SAFETY: TUNSETIFF reads and writes one ifreq, which `req` is.
    if unsafe { libc::ioctl(tun.as_raw_fd(), libc::TUNSETIFF, &mut req) } < 0 {
        return Err(std::io::Error::last_os_error())
            .with_context(|| format!("cannot create or attach TAP {name} (TUNSETIFF)"));
    }
    Ok(tun.into())
}

/// The kernel's rule (`dev_valid_name`): a name it would refuse is better
/// refused here, with the name in the message.
fn check_ifname(name: &str) -> Result<()> {
    if name.is_empty()
        || name.len() >= libc::IFNAMSIZ
        || name == "."
        || name == ".."
        || name
            .bytes()
            .any(|b| b == b'/' || b == b':' || b == 0 || b.is_ascii_whitespace())
    {
        bail!("{name:?} is not a valid interface name");
    }
    Ok(())
}

fn card_of(link: &LinkMessage, name: &str) -> Result<Card> {
    let mut mac = None;
    let mut mtu = None;
    for attr in &link.attributes {
        match attr {
            LinkAttribute::Address(a) => mac = Some(a),
            LinkAttribute::Mtu(m) => mtu = Some(*m),
            _ => {}
        }
    }
    let mac = mac.filter(|a| a.len() == 6).ok_or_else(|| {
        anyhow!("CNI interface {name} has no Ethernet MAC address; a VM's card needs one")
    })?;
    let mtu = mtu.ok_or_else(|| anyhow!("CNI interface {name} reports no MTU"))?;
    Ok(Card {
        mac: mac
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect::<Vec<_>>()
            .join(":"),
        mtu,
    })
}

async fn find_link(h: &Handle, name: &str) -> Result<Option<LinkMessage>> {
    let links = h.link().get().match_name(name.to_string()).execute();
    match pin!(links).try_next().await {
        Ok(link) => Ok(link),
        Err(e) if errno(&e) == Some(libc::ENODEV) => Ok(None),
        Err(e) => Err(e).with_context(|| format!("cannot look up interface {name}")),
    }
}

/// Deletes the ingress qdisc of interface `index`, if it has one.
async fn delete_ingress(h: &Handle, index: u32) -> Result<()> {
    let mut req = h
        .qdisc()
        .del(i32::try_from(index).context("interface index out of range")?);
    req.message_mut().header.parent = TcHandle::INGRESS;
    match req.execute().await {
        Err(e) if errno(&e) != Some(libc::ENOENT) => {
            Err(e).with_context(|| format!("cannot delete the ingress qdisc of interface {index}"))
        }
        _ => Ok(()),
    }
}

/// The errno of a kernel refusal (netlink carries it negated).
fn errno(e: &rtnetlink::Error) -> Option<i32> {
    match e {
        rtnetlink::Error::NetlinkError(m) => m.code.map(|c| -c.get()),
        _ => None,
    }
}

/// Runs `f` with a netlink handle on a current-thread runtime. The socket
/// belongs to the namespace of the thread that opens it, so this runs on
/// the thread `netns::run_in` made, never on the daemon's runtime.
pub(crate) fn netlink<T>(f: impl AsyncFnOnce(Handle) -> Result<T>) -> Result<T> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .build()
        .context("cannot start a runtime for netlink")?;
    rt.block_on(async {
        let (conn, handle, _) =
            rtnetlink::new_connection().context("cannot open a netlink socket")?;
        let conn = tokio::spawn(conn);
        let out = f(handle).await;
        conn.abort();
        out
    })
}

#[cfg(test)]
mod tests {
    use std::net::{IpAddr, Ipv4Addr, UdpSocket};
    use std::time::{Duration, Instant};

    use rtnetlink::LinkVeth;

    use super::*;
    use crate::network::netns::run_in;
    use crate::network::netns::tests::Ns;

    const ETH0_MAC: [u8; 6] = [0x02, 0x00, 0x0a, 0x63, 0x00, 0x01];
    const ETH0_IP: Ipv4Addr = Ipv4Addr::new(10, 99, 0, 1);
    const PEER_IP: Ipv4Addr = Ipv4Addr::new(10, 99, 0, 2);
    const MTU: u32 = 1400;
    /// `struct virtio_net_hdr`, the size IFF_VNET_HDR uses until
    /// TUNSETVNETHDRSZ says otherwise.
    const VNET_HDR: usize = 10;

    /// A pod-like namespace: eth0 (one end of a veth) in `pod`, the other
    /// end `peer0` with an address in `peer`, standing in for the node side
    /// that CNI would make. The host's namespace is never touched.
    fn wire(pod: &Ns, peer: &Ns) -> [u8; 6] {
        let peer_path = peer.0.clone();
        run_in(&pod.0, || {
            netlink(async |h| {
                h.link()
                    .add(
                        LinkVeth::new("eth0", "peer0")
                            .address(ETH0_MAC.to_vec())
                            .mtu(MTU)
                            .build(),
                    )
                    .execute()
                    .await?;
                let target = File::open(&peer_path)?;
                h.link()
                    .set(
                        LinkUnspec::new_with_name("peer0")
                            .setns_by_fd(target.as_raw_fd())
                            .build(),
                    )
                    .execute()
                    .await?;
                h.link()
                    .set(LinkUnspec::new_with_name("eth0").up().build())
                    .execute()
                    .await?;
                Ok(())
            })
        })
        .expect("wire the pod side");
        run_in(&peer.0, || {
            netlink(async |h| {
                let p = find_link(&h, "peer0").await?.context("peer0 moved")?;
                h.link()
                    .set(
                        LinkUnspec::new_with_index(p.header.index)
                            .mtu(MTU)
                            .up()
                            .build(),
                    )
                    .execute()
                    .await?;
                h.address()
                    .add(p.header.index, IpAddr::V4(PEER_IP), 24)
                    .execute()
                    .await?;
                let mac = card_of(&p, "peer0")?.mac;
                let mut out = [0u8; 6];
                for (o, part) in out.iter_mut().zip(mac.split(':')) {
                    *o = u8::from_str_radix(part, 16)?;
                }
                Ok(out)
            })
        })
        .expect("wire the peer side")
    }

    fn link_in(ns: &Path, name: &'static str) -> Option<LinkMessage> {
        run_in(ns, || netlink(async |h| find_link(&h, name).await)).unwrap()
    }

    fn has_ingress_qdisc(ns: &Path, name: &'static str) -> bool {
        run_in(ns, || {
            netlink(async |h| {
                let Some(link) = find_link(&h, name).await? else {
                    return Ok(false);
                };
                let index = link.header.index as i32;
                let qdiscs: Vec<_> = h.qdisc().get().execute().try_collect().await?;
                Ok(qdiscs
                    .iter()
                    .any(|q| q.header.index == index && q.header.parent == TcHandle::INGRESS))
            })
        })
        .unwrap()
    }

    /// Waits until `fd` is readable; false on timeout.
    fn readable(fd: &impl AsRawFd, until: Instant) -> bool {
        let left = until.saturating_duration_since(Instant::now());
        let mut p = libc::pollfd {
            fd: fd.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one valid pollfd.
        let n = unsafe { libc::poll(&mut p, 1, left.as_millis() as libc::c_int) };
        n > 0
    }

    /// Reads frames until `want` accepts one; panics naming `what` on
    /// timeout. `skip` bytes of header precede each frame.
    fn read_until(
        fd: &impl AsRawFd,
        skip: usize,
        what: &str,
        want: impl Fn(&[u8]) -> bool,
    ) -> Vec<u8> {
        let until = Instant::now() + Duration::from_secs(5);
        let mut buf = vec![0u8; 65536];
        let mut seen = 0;
        while readable(fd, until) {
            // SAFETY: reads into a buffer of the given length.
            let n = unsafe { libc::read(fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
            assert!(n >= 0, "read: {}", std::io::Error::last_os_error());
            let n = n as usize;
            assert!(n >= skip, "short read of {n} bytes");
            seen += 1;
            if want(&buf[skip..n]) {
                return buf[skip..n].to_vec();
            }
        }
        panic!("no {what} within 5 s ({seen} other frames)");
    }

    fn write_all(fd: &impl AsRawFd, frame: &[u8]) {
        // SAFETY: writes from a buffer of the given length.
        let n = unsafe { libc::write(fd.as_raw_fd(), frame.as_ptr().cast(), frame.len()) };
        assert_eq!(
            n,
            frame.len() as isize,
            "write: {}",
            std::io::Error::last_os_error()
        );
    }

    /// A raw socket on `ifname` that sees every frame the interface
    /// receives, opened in (and staying in) the namespace of the caller.
    fn packet_socket(ifname: &str) -> Result<OwnedFd> {
        let proto = (libc::ETH_P_ALL as u16).to_be();
        // SAFETY: plain socket(2).
        let fd = unsafe {
            libc::socket(
                libc::AF_PACKET,
                libc::SOCK_RAW | libc::SOCK_CLOEXEC,
                libc::c_int::from(proto),
            )
        };
        if fd < 0 {
            return Err(std::io::Error::last_os_error().into());
        }
        // SAFETY: fd is a fresh socket we own.
        let fd = unsafe { <OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd) };
        let name = std::ffi::CString::new(ifname)?;
        // SAFETY: a NUL-terminated name.
        let index = unsafe { libc::if_nametoindex(name.as_ptr()) };
        if index == 0 {
            return Err(std::io::Error::last_os_error().into());
        }
        // SAFETY: all-zero sockaddr_ll is valid; fields are set below.
        let mut addr: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
        addr.sll_family = libc::AF_PACKET as u16;
        addr.sll_protocol = proto;
        addr.sll_ifindex = index as i32;
        // SAFETY: addr is a sockaddr_ll of the length given.
        let r = unsafe {
            libc::bind(
                fd.as_raw_fd(),
                (&addr as *const libc::sockaddr_ll).cast(),
                std::mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t,
            )
        };
        if r < 0 {
            return Err(std::io::Error::last_os_error().into());
        }
        Ok(fd)
    }

    fn is_arp_request_for(frame: &[u8], ip: Ipv4Addr) -> bool {
        frame.len() >= 42
            && frame[12..14] == [0x08, 0x06]
            && frame[20..22] == [0, 1]
            && frame[38..42] == ip.octets()
    }

    #[test]
    fn connect_splices_the_tap_onto_eth0_both_ways() {
        let pod = Ns::new("splice-pod");
        let peer = Ns::new("splice-peer");
        let peer_mac = wire(&pod, &peer);

        let card = connect(&pod.0, "eth0", TAP_NAME).unwrap();
        assert_eq!(
            card,
            Card {
                mac: "02:00:0a:63:00:01".into(),
                mtu: MTU
            }
        );
        // A retry (the daemon died after connect) reuses the TAP and
        // leaves one working splice.
        let tap_index = link_in(&pod.0, TAP_NAME).unwrap().header.index;
        assert_eq!(connect(&pod.0, "eth0", TAP_NAME).unwrap(), card);
        let tap = link_in(&pod.0, TAP_NAME).unwrap();
        assert_eq!(tap.header.index, tap_index, "the retry made a new TAP");
        assert_eq!(card_of(&tap, TAP_NAME).unwrap().mtu, MTU);
        assert!(has_ingress_qdisc(&pod.0, "eth0"));
        assert!(has_ingress_qdisc(&pod.0, TAP_NAME));

        // The VM's side: what the shim does, in the pod's namespace.
        let vm = run_in(&pod.0, || open_tap(TAP_NAME)).unwrap();
        let (udp, sniffer) = run_in(&peer.0, || {
            let udp = UdpSocket::bind((PEER_IP, 0))?;
            Ok((udp, packet_socket("peer0")?))
        })
        .unwrap();

        // Node to VM: the peer must resolve eth0's IP first, and its ARP
        // request has to come out of the TAP.
        let payload = b"vmpod tap splice test";
        udp.send_to(payload, (ETH0_IP, 9)).unwrap();
        let request = read_until(&vm, VNET_HDR, "ARP request on the TAP", |f| {
            is_arp_request_for(f, ETH0_IP)
        });
        assert_eq!(request[6..12], peer_mac, "the request's source is the peer");

        // VM to node: the guest's ARP reply, written into the TAP, reaches
        // the peer byte for byte ...
        let mut reply = vec![0u8; VNET_HDR];
        reply.extend_from_slice(&peer_mac);
        reply.extend_from_slice(&ETH0_MAC);
        reply.extend_from_slice(&[0x08, 0x06, 0, 1, 0x08, 0x00, 6, 4, 0, 2]);
        reply.extend_from_slice(&ETH0_MAC);
        reply.extend_from_slice(&ETH0_IP.octets());
        reply.extend_from_slice(&peer_mac);
        reply.extend_from_slice(&PEER_IP.octets());
        write_all(&vm, &reply);
        let frame = &reply[VNET_HDR..];
        read_until(&sniffer, 0, "ARP reply on the peer", |f| {
            f.len() >= frame.len() && &f[..frame.len()] == frame
        });

        // ... and the peer believes it: the datagram it queued behind the
        // ARP now goes out, to eth0's MAC, and reaches the VM.
        let datagram = read_until(&vm, VNET_HDR, "the UDP datagram on the TAP", |f| {
            f.len() >= 14 && f[12..14] == [0x08, 0x00] && f.ends_with(payload)
        });
        assert_eq!(datagram[..6], ETH0_MAC);

        drop(vm);
        disconnect(&pod.0, "eth0", TAP_NAME).unwrap();
        assert!(link_in(&pod.0, TAP_NAME).is_none());
        assert!(!has_ingress_qdisc(&pod.0, "eth0"));
        // Again, and once the namespace is gone.
        disconnect(&pod.0, "eth0", TAP_NAME).unwrap();
        let path = pod.0.clone();
        drop(pod);
        disconnect(&path, "eth0", TAP_NAME).unwrap();
    }

    #[test]
    fn connect_without_the_cni_interface_fails_and_leaves_no_tap() {
        let pod = Ns::new("nocni");
        let e = connect(&pod.0, "eth9", TAP_NAME).unwrap_err();
        let msg = format!("{e:#}");
        assert!(msg.contains("eth9") && msg.contains("not found"), "{msg}");
        assert!(link_in(&pod.0, TAP_NAME).is_none());
    }

    #[test]
    fn a_failure_after_the_tap_exists_removes_it() {
        // A TAP cannot take MTU 65535 (its limit is 65535 less the Ethernet
        // header), a veth can: setting the MTU fails after the TAP is made.
        let pod = Ns::new("undo");
        run_in(&pod.0, || {
            netlink(async |h| {
                h.link()
                    .add(LinkVeth::new("eth0", "eth0peer").mtu(65535).build())
                    .execute()
                    .await?;
                Ok(())
            })
        })
        .unwrap();
        let e = connect(&pod.0, "eth0", TAP_NAME).unwrap_err();
        assert!(format!("{e:#}").contains("MTU 65535"), "{e:#}");
        assert!(
            link_in(&pod.0, TAP_NAME).is_none(),
            "the TAP was left behind"
        );
        assert!(!has_ingress_qdisc(&pod.0, "eth0"));
    }

    #[test]
    fn connect_refuses_a_non_tap_device_in_the_taps_place() {
        let pod = Ns::new("nottap");
        run_in(&pod.0, || {
            netlink(async |h| {
                for (name, peer) in [("eth0", "eth0peer"), (TAP_NAME, "tap0peer")] {
                    h.link()
                        .add(LinkVeth::new(name, peer).build())
                        .execute()
                        .await?;
                }
                Ok(())
            })
        })
        .unwrap();
        let e = connect(&pod.0, "eth0", TAP_NAME).unwrap_err();
        assert!(format!("{e:#}").contains("TUNSETIFF"), "{e:#}");
        // Not ours to delete.
        assert!(link_in(&pod.0, TAP_NAME).is_some());
    }

    #[test]
    fn interface_names_are_checked() {
        for bad in ["", "a/b", "a:b", "a b", ".", "..", "sixteen-chars-xx"] {
            assert!(check_ifname(bad).is_err(), "{bad:?}");
        }
        check_ifname("fifteen-chars-x").unwrap();
    }
}
