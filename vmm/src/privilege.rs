//! What the VMM's threads give up before the guest runs: every capability
//! (effective, permitted, inheritable, ambient and the bounding set), the
//! right to gain privilege (`no_new_privs`), and, when asked, root itself
//! (`--uid`/`--gid`).
//!
//! After set-up a VMM thread only drives fds it already holds: vCPU fds,
//! eventfds, guest memory, disk files, the TAP, the vhost-user and vsock
//! sockets. None of that needs a capability or uid 0, so a guest that takes
//! over a VMM thread gets an unprivileged thread, confined further by the
//! seccomp filter that is installed right after.
//!
//! Credentials are per thread in Linux, but glibc's `setuid` family changes
//! every thread of the process. The shim's own threads must stay root (they
//! mount the containers' root filesystems), so this uses the raw syscalls,
//! which change only the calling thread; threads it spawns later (device
//! workers) inherit what it has. For the standalone `vmpod-vmm` the builder
//! calls it on the main thread before any other thread exists, so it holds
//! for the whole process.

use std::io;

use anyhow::{Context, Result, bail};

/// An unprivileged identity for the VMM threads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Credentials {
    pub uid: u32,
    pub gid: u32,
}

/// `_LINUX_CAPABILITY_VERSION_3`: 64-bit capability sets in two words.
const CAPABILITY_VERSION_3: u32 = 0x2008_0522;

#[repr(C)]
struct CapHeader {
    version: u32,
    pid: i32,
}

#[repr(C)]
#[derive(Default, Clone, Copy)]
struct CapData {
    effective: u32,
    permitted: u32,
    inheritable: u32,
}

fn check(r: libc::c_long, what: &str) -> Result<()> {
    if r < 0 {
        return Err(io::Error::last_os_error()).with_context(|| what.to_owned());
    }
    Ok(())
}

/// The calling thread's permitted set is empty.
fn holds_no_capability() -> Result<bool> {
    let mut header = CapHeader {
        version: CAPABILITY_VERSION_3,
        pid: 0,
    };
    let mut data = [CapData::default(); 2];
    // SAFETY: capget writes two CapData into `data`, as version 3 says.
    let r = unsafe { libc::syscall(libc::SYS_capget, &mut header, data.as_mut_ptr()) };
    check(r, "capget")?;
    Ok(data.iter().all(|d| d.permitted == 0 && d.effective == 0))
}

/// Drops the calling thread's privileges as described above. Must run
/// before the thread's seccomp filter, which allows none of these calls.
pub fn drop_current_thread(credentials: Option<Credentials>) -> Result<()> {
    // The bounding set first: dropping from it needs CAP_SETPCAP, which the
    // uid change below takes away. A thread that holds no capability has
    // nothing to drop and may not (EPERM); that is fine.
    let unprivileged = holds_no_capability()?;
    for cap in 0..64 {
        // SAFETY: prctl with integer arguments.
        let r = unsafe { libc::prctl(libc::PR_CAPBSET_DROP, cap, 0, 0, 0) };
        if r < 0 {
            let e = io::Error::last_os_error();
            match e.raw_os_error() {
                // Past the kernel's last capability.
                Some(libc::EINVAL) => break,
                Some(libc::EPERM) if unprivileged => break,
                _ => return Err(e).with_context(|| format!("dropping capability {cap}")),
            }
        }
    }
    // SAFETY: prctl with integer arguments.
    let r = unsafe {
        libc::prctl(
            libc::PR_CAP_AMBIENT,
            libc::PR_CAP_AMBIENT_CLEAR_ALL,
            0,
            0,
            0,
        )
    };
    check(r.into(), "clearing the ambient capabilities")?;
    if let Some(Credentials { uid, gid }) = credentials {
        if uid == 0 || gid == 0 {
            bail!("the VMM's uid and gid must not be 0 (got {uid}:{gid})");
        }
        // Groups, then gid, then uid: each step needs what the next removes.
        // SAFETY: raw syscalls with integer arguments and no buffer.
        unsafe {
            check(
                libc::syscall(libc::SYS_setgroups, 0, std::ptr::null::<libc::gid_t>()),
                "clearing the supplementary groups",
            )?;
            check(
                libc::syscall(libc::SYS_setresgid, gid, gid, gid),
                &format!("switching to gid {gid}"),
            )?;
            check(
                libc::syscall(libc::SYS_setresuid, uid, uid, uid),
                &format!("switching to uid {uid}"),
            )?;
        }
    }
    let header = CapHeader {
        version: CAPABILITY_VERSION_3,
        pid: 0,
    };
    let data = [CapData::default(); 2];
    // SAFETY: capset reads two CapData from `data`, as version 3 says.
    let r = unsafe { libc::syscall(libc::SYS_capset, &header, data.as_ptr()) };
    check(r, "clearing the capability sets")?;
    // SAFETY: prctl with integer arguments.
    let r = unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) };
    check(r.into(), "setting no_new_privs")?;
    Ok(())
}

/// `UID:GID` for `vmpod-vmm --user`.
impl std::str::FromStr for Credentials {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let (uid, gid) = s
            .split_once(':')
            .ok_or_else(|| format!("{s:?} is not UID:GID"))?;
        let id = |v: &str, what: &str| -> Result<u32, String> {
            match v.parse::<u32>() {
                Ok(0) => Err(format!("{what} 0 is root; the point is not to be")),
                Ok(n) => Ok(n),
                Err(_) => Err(format!("{what} {v:?} is not a number")),
            }
        };
        Ok(Credentials {
            uid: id(uid, "uid")?,
            gid: id(gid, "gid")?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn user_parsing() {
        assert_eq!(
            "65534:65534".parse::<Credentials>(),
            Ok(Credentials {
                uid: 65534,
                gid: 65534
            })
        );
        assert!("0:5".parse::<Credentials>().unwrap_err().contains("uid 0"));
        assert!(
            "5:x"
                .parse::<Credentials>()
                .unwrap_err()
                .contains("gid \"x\"")
        );
        assert!("5".parse::<Credentials>().unwrap_err().contains("UID:GID"));
    }

    #[test]
    fn a_thread_drops_everything_and_the_others_keep_theirs() {
        let before = std::fs::read_to_string("/proc/thread-self/status").unwrap();
        let status = std::thread::spawn(|| {
            drop_current_thread(Some(Credentials {
                uid: 65534,
                gid: 65534,
            }))
            .map(|()| std::fs::read_to_string("/proc/thread-self/status").unwrap())
        })
        .join()
        .unwrap();
        let field = |s: &str, name: &str| {
            s.lines()
                .find_map(|l| l.strip_prefix(name))
                .map(|v| v.split_whitespace().collect::<Vec<_>>().join(" "))
                .unwrap_or_default()
        };
        let is_root = field(&before, "Uid:").starts_with("0 ");
        match status {
            Ok(s) => {
                assert_eq!(field(&s, "Uid:"), "65534 65534 65534 65534");
                assert_eq!(field(&s, "Gid:"), "65534 65534 65534 65534");
                assert_eq!(field(&s, "Groups:"), "");
                for set in ["CapInh:", "CapPrm:", "CapEff:", "CapBnd:", "CapAmb:"] {
                    assert_eq!(field(&s, set), "0000000000000000", "{set} in {s}");
                }
                assert_eq!(field(&s, "NoNewPrivs:"), "1");
            }
            // Switching uid needs CAP_SETUID; without root that fails.
            Err(e) => assert!(!is_root, "{e:#}"),
        }
        let after = std::fs::read_to_string("/proc/thread-self/status").unwrap();
        assert_eq!(field(&before, "Uid:"), field(&after, "Uid:"));
        assert_eq!(field(&before, "CapEff:"), field(&after, "CapEff:"));
    }
}
