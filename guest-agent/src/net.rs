//! The guest's own network set-up: the loopback interface.
//!
//! Every container of a pod shares the guest's network namespace, as
//! containers of a pod share one in Kubernetes, and they talk to each other
//! over `localhost`. The kernel creates `lo` down; nothing else in a vmpod
//! guest would bring it up, so the agent does before it serves.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

use anyhow::{Context, Result, bail};

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
}
