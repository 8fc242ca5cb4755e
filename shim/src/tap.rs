//! Opening the pod's TAP. The daemon made it, persistent, in the pod's
//! network namespace and joined it to the CNI interface there; the shim
//! attaches to it from inside that namespace and hands the fd to the VMM.
//! A TAP fd keeps carrying frames whatever namespace its holder is in, so
//! neither the VMM nor the rest of the shim ever enters the pod's netns or
//! needs CAP_NET_ADMIN.
//!
//! The attach itself is the built-in VMM's ([`Tap::open`]): the same flags
//! (`IFF_TAP | IFF_NO_PI | IFF_VNET_HDR`, which must match the daemon's
//! `ip tuntap add ... vnet_hdr`), and a missing interface is an error rather
//! than the fresh, unconnected TAP a bare TUNSETIFF would create.

use std::fs::File;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, anyhow};
use vmpod_vmm::devices::virtio::net::tap::Tap;

/// Attaches to the existing TAP `name` in the network namespace `netns`
/// (a file such as `/run/netns/vmpod-<id>`) and returns its fd,
/// close-on-exec and non-blocking. Every error names both.
///
/// The namespace is entered on a thread spawned for this alone, which
/// exits right after: `setns` moves only the calling thread, and a thread
/// that stays behind (a tokio blocking-pool worker, say) would run
/// whatever it does next inside the pod's network.
pub fn open_in_netns(netns: &Path, name: &str) -> Result<OwnedFd> {
    let ns: PathBuf = netns.to_owned();
    let tap = name.to_owned();
    std::thread::Builder::new()
        .name("tap-open".into())
        .spawn(move || attach(&ns, &tap))
        .context("spawning the thread that opens the TAP")?
        .join()
        .map_err(|_| anyhow!("the thread opening the TAP panicked"))?
        .with_context(|| {
            format!(
                "opening TAP {name} in network namespace {}",
                netns.display()
            )
        })
}

/// Runs on its own thread: [`open_in_netns`].
fn attach(netns: &Path, name: &str) -> Result<OwnedFd> {
    // O_CLOEXEC by default in std: a child spawned meanwhile gets nothing.
    let ns = File::open(netns).map_err(|e| {
        let hint = if e.kind() == std::io::ErrorKind::NotFound {
            " (the daemon creates it before the shim starts; was the pod's netns removed?)"
        } else {
            ""
        };
        anyhow!("opening the namespace: {e}{hint}")
    })?;
    // SAFETY: setns on an fd we hold open; it changes this thread only.
    if unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
        let e = std::io::Error::last_os_error();
        let hint = match e.raw_os_error() {
            Some(libc::EINVAL) => " (the file is not a network namespace)",
            Some(libc::EPERM) => " (entering it needs CAP_SYS_ADMIN)",
            _ => "",
        };
        return Err(anyhow!("entering the namespace (setns): {e}{hint}"));
    }
    let tap = Tap::open(name)?;
    // `Tap` keeps its fd; a duplicate shares the open file (its flags and
    // vnet header size) and is close-on-exec, numbered 3 or above, so a
    // child can be given it without disturbing its stdio.
    tap.as_fd()
        .try_clone_to_owned()
        .context("duplicating the TAP fd")
}

/// The name and `IFF_*` flags of the TAP `fd` is attached to (TUNGETIFF),
/// for tests and diagnostics.
pub fn attached_to(fd: &OwnedFd) -> std::io::Result<(String, libc::c_int)> {
    // SAFETY: ifreq is plain data; all zeroes is a valid value.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    // SAFETY: TUNGETIFF writes the ifreq, which outlives the call.
    if unsafe { libc::ioctl(fd.as_raw_fd(), libc::TUNGETIFF, &mut req) } < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: the kernel NUL-terminates the name within IFNAMSIZ, and the
    // struct was zeroed first.
    let name = unsafe { std::ffi::CStr::from_ptr(req.ifr_name.as_ptr()) }
        .to_string_lossy()
        .into_owned();
    // SAFETY: TUNGETIFF fills the flags member.
    let flags = libc::c_int::from(unsafe { req.ifr_ifru.ifru_flags }) & 0xffff;
    Ok((name, flags))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missing_netns_is_named() {
        let e = open_in_netns(Path::new("/run/netns/vmpod-no-such-ns"), "tap0")
            .expect_err("no such netns");
        let e = format!("{e:#}");
        assert!(e.contains("/run/netns/vmpod-no-such-ns"), "{e}");
        assert!(e.contains("TAP tap0"), "{e}");
        assert!(e.contains("No such file"), "{e}");
    }

    #[test]
    fn a_file_that_is_no_netns_is_refused() {
        let f = tempfile::NamedTempFile::new().expect("temp file");
        let e = open_in_netns(f.path(), "tap0").expect_err("not a netns");
        let e = format!("{e:#}");
        assert!(e.contains(&f.path().display().to_string()), "{e}");
        // EINVAL as root; EPERM without CAP_SYS_ADMIN.
        assert!(e.contains("setns"), "{e}");
    }

    #[test]
    fn the_caller_stays_in_its_own_netns() {
        let before = std::fs::read_link("/proc/thread-self/ns/net").expect("own netns");
        let _ = open_in_netns(Path::new("/proc/1/ns/net"), "vmpod-nosuch0");
        let after = std::fs::read_link("/proc/thread-self/ns/net").expect("own netns");
        assert_eq!(before, after);
    }
}
