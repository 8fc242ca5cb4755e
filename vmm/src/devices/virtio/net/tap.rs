//! The host side of a virtio-net device: a TAP, opened by name in the
//! calling thread's network namespace or taken as an fd someone else opened
//! (how the shim will hand over a TAP made in the pod's netns).
//!
//! Either way the fd ends up the same: `IFF_TAP | IFF_NO_PI | IFF_VNET_HDR`,
//! a 12-byte vnet header (virtio 1.x's `virtio_net_hdr_v1`, so a frame
//! crosses with the same header on both sides), no offloads (the kernel
//! then hands over only whole, checksummed frames, and takes no GSO or
//! checksum requests from us), non-blocking and close-on-exec. Every
//! failure names the TAP or the fd and what is wrong with it.

use std::ffi::CStr;
use std::fs::OpenOptions;
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::fs::OpenOptionsExt;

use anyhow::{Context, Result, bail};

/// The vnet header on the TAP: `struct virtio_net_hdr_v1`.
pub const VNET_HDR_SIZE: usize = 12;

const TUN_DEVICE: &str = "/dev/net/tun";
/// The flags every TAP we serve has.
const TAP_FLAGS: libc::c_int = libc::IFF_TAP | libc::IFF_NO_PI | libc::IFF_VNET_HDR;

/// An open TAP.
#[derive(Debug)]
pub struct Tap {
    fd: OwnedFd,
    /// The interface name, for log lines and errors.
    name: String,
}

/// Whether `name` could name a network interface (Linux's `dev_valid_name`):
/// 1 to 15 bytes, not `.` or `..`, no `/`, `:` or whitespace.
pub fn check_name(name: &str) -> Result<(), String> {
    if name.is_empty() || name.len() >= libc::IFNAMSIZ {
        return Err(format!(
            "interface name {name:?} must be 1 to {} bytes",
            libc::IFNAMSIZ - 1
        ));
    }
    if name == "."
        || name == ".."
        || name.contains(['/', ':'])
        || name.contains(char::is_whitespace)
    {
        return Err(format!(
            "interface name {name:?} is not valid (no '/', ':' or whitespace, not . or ..)"
        ));
    }
    Ok(())
}

fn ifreq(name: &str) -> libc::ifreq {
    // SAFETY: ifreq is plain data; all zeroes is a valid value.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    // check_name keeps it under IFNAMSIZ, so a NUL always follows.
    for (dst, src) in req.ifr_name.iter_mut().zip(name.bytes()) {
        *dst = src as libc::c_char;
    }
    req
}

/// The interface index of `name` in this thread's network namespace; 0
/// when there is none.
fn index_of(name: &str) -> u32 {
    let Ok(c) = std::ffi::CString::new(name) else {
        return 0;
    };
    // SAFETY: a NUL-terminated string that lives across the call.
    unsafe { libc::if_nametoindex(c.as_ptr()) }
}

impl Tap {
    /// Attaches to the existing TAP `name` in this thread's network
    /// namespace. A missing interface is an error, not a new TAP: TUNSETIFF
    /// would quietly create one, which nothing would ever route to.
    pub fn open(name: &str) -> Result<Tap> {
        check_name(name).map_err(|e| anyhow::anyhow!("TAP {name:?}: {e}"))?;
        let index = index_of(name);
        if index == 0 {
            bail!(
                "TAP {name}: no such network interface in this network namespace (create it first, e.g. `ip tuntap add dev {name} mode tap`)"
            );
        }
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC)
            .open(TUN_DEVICE)
            .with_context(|| format!("TAP {name}: opening {TUN_DEVICE}"))?;
        let fd = OwnedFd::from(file);
        let mut req = ifreq(name);
        req.ifr_ifru.ifru_flags = TAP_FLAGS as libc::c_short;
        // SAFETY: TUNSETIFF reads and writes the ifreq, which outlives the
        // call; the fd is a /dev/net/tun fd we own.
        if unsafe { libc::ioctl(fd.as_raw_fd(), libc::TUNSETIFF, &mut req) } < 0 {
            let e = io::Error::last_os_error();
            let hint = match e.raw_os_error() {
                Some(libc::EINVAL) => {
                    ": it exists but is not a TAP (a TUN, or no tun device at all?)"
                }
                Some(libc::EBUSY) => {
                    ": another process has it open (a TAP without multi_queue takes one)"
                }
                Some(libc::EPERM) => ": not permitted (needs CAP_NET_ADMIN or the TAP's owner)",
                _ => "",
            };
            bail!("TAP {name}: attaching with TUNSETIFF: {e}{hint}");
        }
        // The name now resolves to the device we hold; if it was deleted
        // and TUNSETIFF made a fresh one, the index tells.
        if index_of(name) != index {
            bail!("TAP {name}: the interface went away while it was being opened");
        }
        let tap = Tap {
            fd,
            name: name.to_owned(),
        };
        tap.configure()?;
        Ok(tap)
    }

    /// Takes over `fd`, which must be an attached TAP opened with
    /// `IFF_TAP | IFF_NO_PI | IFF_VNET_HDR`. It is made non-blocking (on the
    /// open file, so for every holder) and close-on-exec.
    ///
    /// # Safety
    ///
    /// `fd` must be owned by nobody else in this process: from here on the
    /// returned `Tap` closes it.
    pub unsafe fn from_raw_fd(fd: RawFd) -> Result<Tap> {
        // SAFETY: F_GETFD only inspects the descriptor table.
        if fd < 0 || unsafe { libc::fcntl(fd, libc::F_GETFD) } < 0 {
            bail!("TAP fd {fd}: not an open file descriptor");
        }
        // Checked while still borrowed: an fd that is no TAP (stdout, say)
        // is left open, not closed by a Tap that never was.
        // SAFETY: the fd is open (above) and stays so during the check.
        let name = inspect(unsafe { BorrowedFd::borrow_raw(fd) })
            .with_context(|| format!("TAP fd {fd}"))?;
        // SAFETY: the caller gives us the fd.
        let owned = unsafe { OwnedFd::from_raw_fd(fd) };
        Self::adopt(owned, name).with_context(|| format!("TAP fd {fd}"))
    }

    /// As [`Tap::from_raw_fd`], for an fd already owned.
    pub fn from_fd(fd: OwnedFd) -> Result<Tap> {
        let name = inspect(fd.as_fd())?;
        Self::adopt(fd, name)
    }

    /// Non-blocking, close-on-exec, configured.
    fn adopt(fd: OwnedFd, name: String) -> Result<Tap> {
        let raw = fd.as_raw_fd();
        set_flag(raw, libc::F_GETFL, libc::F_SETFL, libc::O_NONBLOCK)
            .with_context(|| format!("TAP {name}: making it non-blocking"))?;
        set_flag(raw, libc::F_GETFD, libc::F_SETFD, libc::FD_CLOEXEC)
            .with_context(|| format!("TAP {name}: making it close-on-exec"))?;
        let tap = Tap { fd, name };
        tap.configure()?;
        Ok(tap)
    }

    /// A 12-byte vnet header, no offloads.
    fn configure(&self) -> Result<()> {
        let size = VNET_HDR_SIZE as libc::c_int;
        // SAFETY: TUNSETVNETHDRSZ reads an int that outlives the call.
        if unsafe { libc::ioctl(self.fd.as_raw_fd(), libc::TUNSETVNETHDRSZ, &size) } < 0 {
            return Err(io::Error::last_os_error())
                .with_context(|| format!("TAP {}: TUNSETVNETHDRSZ {size}", self.name));
        }
        // SAFETY: TUNSETOFFLOAD takes its argument by value.
        if unsafe { libc::ioctl(self.fd.as_raw_fd(), libc::TUNSETOFFLOAD, 0 as libc::c_ulong) } < 0
        {
            return Err(io::Error::last_os_error())
                .with_context(|| format!("TAP {}: TUNSETOFFLOAD 0", self.name));
        }
        Ok(())
    }

    /// Any datagram fd standing in for a TAP (a socketpair end in unit
    /// tests): no ioctls.
    #[cfg(test)]
    pub(super) fn for_test(fd: OwnedFd, name: &str) -> Tap {
        Tap {
            fd,
            name: name.to_owned(),
        }
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// One frame (vnet header first) into `buf`; WouldBlock when none.
    pub fn read(&self, buf: &mut [u8]) -> io::Result<usize> {
        // SAFETY: buf is valid for writes of buf.len() bytes.
        let n = unsafe { libc::read(self.fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(n as usize)
    }

    /// One frame (vnet header first) from `buf`.
    pub fn write(&self, buf: &[u8]) -> io::Result<usize> {
        // SAFETY: buf is valid for reads of buf.len() bytes.
        let n = unsafe { libc::write(self.fd.as_raw_fd(), buf.as_ptr().cast(), buf.len()) };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(n as usize)
    }
}

impl AsFd for Tap {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

/// The name of the TAP `fd` is attached to, if it is one with the flags we
/// need.
fn inspect(fd: BorrowedFd<'_>) -> Result<String> {
    let raw = fd.as_raw_fd();
    let mut req = ifreq("");
    // SAFETY: TUNGETIFF writes the ifreq, which outlives the call; on
    // a file that is not an attached tun/tap it fails and writes nothing.
    if unsafe { libc::ioctl(raw, libc::TUNGETIFF, &mut req) } < 0 {
        let e = io::Error::last_os_error();
        bail!("not a TAP device (TUNGETIFF: {e})");
    }
    // SAFETY: TUNGETIFF filled the flags member.
    let flags = libc::c_int::from(unsafe { req.ifr_ifru.ifru_flags }) & 0xffff;
    // SAFETY: the kernel NUL-terminates the name within IFNAMSIZ, and
    // the array was zeroed before.
    let name = unsafe { CStr::from_ptr(req.ifr_name.as_ptr()) }
        .to_string_lossy()
        .into_owned();
    if flags & libc::IFF_TAP == 0 {
        bail!("{name} is a TUN, not a TAP (no IFF_TAP)");
    }
    let missing: Vec<&str> = [
        (libc::IFF_NO_PI, "IFF_NO_PI"),
        (libc::IFF_VNET_HDR, "IFF_VNET_HDR"),
    ]
    .into_iter()
    .filter(|(bit, _)| flags & bit == 0)
    .map(|(_, what)| what)
    .collect();
    if !missing.is_empty() {
        bail!(
            "TAP {name} was opened without {}; open it with IFF_TAP | IFF_NO_PI | IFF_VNET_HDR",
            missing.join(" and ")
        );
    }
    Ok(name)
}

fn set_flag(fd: RawFd, get: libc::c_int, set: libc::c_int, flag: libc::c_int) -> io::Result<()> {
    // SAFETY: fcntl get/set of an fd's flags; no memory is involved.
    let flags = unsafe { libc::fcntl(fd, get) };
    // SAFETY: as above.
    if flags < 0 || unsafe { libc::fcntl(fd, set, flags | flag) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn interface_names() {
        for ok in ["tap0", "eth0.100", "a", "fifteen-chars-x"] {
            assert!(check_name(ok).is_ok(), "{ok}");
        }
        for bad in ["", ".", "..", "a/b", "a:b", "a b", "sixteen-chars-xx"] {
            assert!(check_name(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn a_file_that_is_no_tap_is_refused_with_the_reason() {
        let file = std::fs::File::open("/dev/null").expect("/dev/null");
        let e = Tap::from_fd(OwnedFd::from(file)).expect_err("not a TAP");
        assert!(format!("{e:#}").contains("not a TAP device"), "{e:#}");
        // Refused while borrowed: the fd stays open for its owner.
        let raw = std::os::fd::IntoRawFd::into_raw_fd(
            std::fs::File::open("/dev/null").expect("/dev/null"),
        );
        // SAFETY: raw is ours; on success the Tap would own it.
        let e = unsafe { Tap::from_raw_fd(raw) }.expect_err("not a TAP");
        assert!(
            format!("{e:#}").contains(&format!("TAP fd {raw}: not a TAP device")),
            "{e:#}"
        );
        // SAFETY: F_GETFD on a number; then the fd is ours to close.
        unsafe {
            assert!(
                libc::fcntl(raw, libc::F_GETFD) >= 0,
                "the refused fd was closed"
            );
            drop(OwnedFd::from_raw_fd(raw));
        }
        // SAFETY: a number far above any fd this process has open.
        let e = unsafe { Tap::from_raw_fd(1_000_000) }.expect_err("not open");
        assert!(
            format!("{e:#}").contains("TAP fd 1000000: not an open file descriptor"),
            "{e:#}"
        );
    }

    #[test]
    fn a_missing_tap_is_not_created() {
        let e = Tap::open("vmpod-nosuch0").expect_err("missing");
        assert!(
            format!("{e:#}").contains("TAP vmpod-nosuch0: no such network interface"),
            "{e:#}"
        );
        assert_eq!(index_of("vmpod-nosuch0"), 0, "nothing was created");
        let e = Tap::open("bad/name").expect_err("invalid");
        assert!(format!("{e:#}").contains("is not valid"), "{e:#}");
    }
}
