//! Per-pod network namespaces, pinned by bind mounts under `/run/netns`.
//!
//! A bind mount of the namespace file, not a process or an open fd, keeps
//! the namespace alive: it survives daemon restarts, and CNI plugins,
//! `ip netns` and the shim can all name it by path. This is iproute2's
//! layout, so operators can inspect a pod with `ip netns exec`.
//!
//! `setns` and `unshare` change only the calling thread, so work inside a
//! namespace runs on a thread made for it and discarded after: a thread that
//! has left the host's namespace must never return to a pool where other
//! code would then open sockets in the pod's namespace.

use std::fs::File;
use std::os::fd::AsFd;
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, anyhow, bail};
use nix::errno::Errno;
use nix::fcntl::OFlag;
use nix::mount::{MntFlags, MsFlags};
use nix::sched::CloneFlags;
use nix::sys::stat::Mode;

/// Where iproute2 and CNI runtimes pin named namespaces.
pub const NETNS_DIR: &str = "/run/netns";

/// Every namespace vmpod makes starts with this, so `remove` can refuse
/// anything it did not make, and operators can tell vmpod's from others'.
const PREFIX: &str = "vmpod-";

/// Sandbox-id characters kept in a name: 64 bits are plenty to keep pods
/// apart on one node, and short names read well in `ip netns list`.
const ID_CHARS: usize = 16;

/// Longer names are no use and would only be a corrupt record.
const NAME_MAX: usize = 64;

/// The namespace name for a sandbox. Sandbox ids are 64 hex characters
/// (`state::new_id`); anything else is a corrupt record and is refused
/// rather than turned into an odd path.
pub fn name_for(sandbox_id: &str) -> Result<String> {
    match sandbox_id.get(..ID_CHARS) {
        Some(head) if head.bytes().all(|b| b.is_ascii_hexdigit()) => {
            Ok(format!("{PREFIX}{}", head.to_ascii_lowercase()))
        }
        _ => bail!(
            "sandbox id {sandbox_id:?} does not start with {ID_CHARS} hex digits; \
             cannot name its network namespace"
        ),
    }
}

/// Names are checked before they become paths, so neither a bad id nor a
/// corrupt record can reach outside `NETNS_DIR` or touch a namespace that
/// another tool owns.
fn check_name(name: &str) -> Result<()> {
    let rest = name.strip_prefix(PREFIX).unwrap_or("");
    if rest.is_empty()
        || name.len() > NAME_MAX
        || !rest
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    {
        bail!(
            "{name:?} is not a vmpod network namespace name \
             ({PREFIX}<letters, digits, - or _>, at most {NAME_MAX} bytes)"
        );
    }
    Ok(())
}

/// Creates and pins a new network namespace named `name` and returns its
/// path. Fails if the name is taken, leaving the existing one alone: two
/// pods must never share a namespace because of a stale record.
pub fn create(name: &str) -> Result<PathBuf> {
    check_name(name)?;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o755)
        .create(NETNS_DIR)
        .with_context(|| format!("cannot create {NETNS_DIR}"))?;
    let path = Path::new(NETNS_DIR).join(name);
    // O_EXCL: from here on the file is ours and removing it on failure
    // cannot destroy someone else's namespace.
    let file = nix::fcntl::open(
        &path,
        OFlag::O_RDONLY | OFlag::O_CREAT | OFlag::O_EXCL | OFlag::O_CLOEXEC,
        Mode::empty(),
    )
    .with_context(|| format!("cannot create network namespace file {}", path.display()))?;
    drop(file);
    let pinned = on_thread("netns-create", || {
        nix::sched::unshare(CloneFlags::CLONE_NEWNET)
            .context("cannot unshare a new network namespace")?;
        nix::mount::mount(
            Some("/proc/thread-self/ns/net"),
            &path,
            None::<&str>,
            MsFlags::MS_BIND,
            None::<&str>,
        )
        .with_context(|| format!("cannot bind-mount the new namespace on {}", path.display()))
    });
    match pinned {
        Ok(()) => Ok(path),
        Err(e) => {
            if let Err(rm) = std::fs::remove_file(&path) {
                tracing::warn!(path = %path.display(), error = %rm,
                    "cannot remove the file of a namespace that failed to pin");
            }
            Err(e)
        }
    }
}

/// Unpins and deletes a namespace made by `create`. Idempotent, so teardown
/// can be retried after a crash at any point. Paths are only accepted in
/// the exact form `create` returns: a corrupt record must never unmount or
/// delete anything else.
pub fn remove(path: &Path) -> Result<()> {
    let name = path
        .to_str()
        .and_then(|p| p.strip_prefix(NETNS_DIR))
        .and_then(|p| p.strip_prefix('/'))
        .ok_or_else(|| {
            anyhow!(
                "refusing to remove {}: not a vmpod network namespace in {NETNS_DIR}",
                path.display()
            )
        })?;
    check_name(name).with_context(|| format!("refusing to remove {}", path.display()))?;
    // NOFOLLOW: only root can write NETNS_DIR, but a planted symlink must
    // still not turn this into an unmount of something else.
    match nix::mount::umount2(path, MntFlags::MNT_DETACH | MntFlags::UMOUNT_NOFOLLOW) {
        // EINVAL: the file exists but is not mounted (a create that died
        // between the two steps, or a second remove).
        Ok(()) | Err(Errno::EINVAL | Errno::ENOENT) => {}
        Err(e) => {
            return Err(e).with_context(|| format!("cannot unmount {}", path.display()));
        }
    }
    match nix::unistd::unlink(path) {
        Ok(()) | Err(Errno::ENOENT) => Ok(()),
        Err(e) => Err(e).with_context(|| format!("cannot delete {}", path.display())),
    }
}

/// Runs `f` inside the namespace pinned at `path` and returns its result.
/// Sockets that `f` opens (netlink, packet, a TAP's fd) stay in that
/// namespace after it returns, whatever thread then uses them.
///
/// Blocks until `f` is done; async code calls it from `spawn_blocking`.
pub fn run_in<T: Send>(path: &Path, f: impl FnOnce() -> Result<T> + Send) -> Result<T> {
    on_thread("netns", || {
        enter(path)?;
        f()
    })
}

fn enter(path: &Path) -> Result<()> {
    // std opens with O_CLOEXEC, so a plugin forked meanwhile cannot inherit it.
    let ns = File::open(path)
        .with_context(|| format!("cannot open network namespace {}", path.display()))?;
    nix::sched::setns(ns.as_fd(), CloneFlags::CLONE_NEWNET)
        .with_context(|| format!("cannot enter network namespace {}", path.display()))
}

/// Runs `f` on a fresh thread and waits for it. A panic in `f` is a bug and
/// is carried on in the caller rather than turned into an error.
fn on_thread<T: Send>(name: &str, f: impl FnOnce() -> Result<T> + Send) -> Result<T> {
    std::thread::scope(|s| {
        let thread = std::thread::Builder::new()
            .name(name.to_string())
            .spawn_scoped(s, f)
            .context("cannot start a thread for network namespace work")?;
        thread
            .join()
            .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
    })
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// Removes a test's namespace however the test ends.
    pub(crate) struct Ns(pub(crate) PathBuf);

    impl Ns {
        /// A namespace unique to this process and `tag`, so tests can run in
        /// parallel and a leftover from a killed run is easy to spot.
        pub(crate) fn new(tag: &str) -> Ns {
            let name = format!("{PREFIX}test{}-{tag}", std::process::id());
            // A previous run with the same pid (containers reuse pids) may
            // have died before its guard ran.
            let _ = remove(&Path::new(NETNS_DIR).join(&name));
            Ns(create(&name).expect("create test netns (tests need root)"))
        }
    }

    impl Drop for Ns {
        fn drop(&mut self) {
            if let Err(e) = remove(&self.0) {
                eprintln!("cannot remove test netns {}: {e:#}", self.0.display());
            }
        }
    }

    /// The namespace's inode, which identifies it.
    fn ns_inode(path: &Path) -> u64 {
        use std::os::unix::fs::MetadataExt;
        std::fs::metadata(path).unwrap().ino()
    }

    fn own_netns_inode() -> u64 {
        ns_inode(Path::new("/proc/thread-self/ns/net"))
    }

    #[test]
    fn names_come_from_the_sandbox_id() {
        let id = "0123456789ABCDEF0123456789abcdef0123456789abcdef0123456789abcdef";
        assert_eq!(name_for(id).unwrap(), "vmpod-0123456789abcdef");
        for bad in ["", "0123", "../../etc/passwd/xx", "0123456789abcdeg"] {
            assert!(name_for(bad).is_err(), "{bad:?}");
        }
        // Multi-byte characters must not panic on slicing.
        assert!(name_for("0123456789abcde\u{e9}f").is_err());
    }

    #[test]
    fn create_makes_a_new_namespace_and_run_in_enters_it() {
        let ns = Ns::new("enter");
        assert!(ns.0.starts_with(NETNS_DIR));
        let host = own_netns_inode();
        let inside = run_in(&ns.0, || Ok(own_netns_inode())).unwrap();
        assert_ne!(inside, host, "run_in stayed in the host namespace");
        assert_eq!(
            inside,
            ns_inode(&ns.0),
            "run_in entered some other namespace"
        );
        // The caller's thread is never moved.
        assert_eq!(own_netns_inode(), host);
        // `ip netns` sees it (iproute2 is on the test hosts, but its
        // absence is not this module's failure).
        if let Ok(out) = std::process::Command::new("ip")
            .args(["netns", "list"])
            .output()
        {
            let name = ns.0.file_name().unwrap().to_str().unwrap();
            assert!(String::from_utf8_lossy(&out.stdout).contains(name));
        }
    }

    #[test]
    fn run_in_passes_errors_through_and_names_a_bad_path() {
        let ns = Ns::new("errs");
        let e = run_in(&ns.0, || -> Result<()> { bail!("inner failure") }).unwrap_err();
        assert_eq!(e.to_string(), "inner failure");
        let missing = Path::new(NETNS_DIR).join("vmpod-no-such-ns");
        let e = run_in(&missing, || Ok(())).unwrap_err();
        assert!(format!("{e:#}").contains("vmpod-no-such-ns"), "{e:#}");
        // A file that is not a namespace (here: an unpinned one).
        let plain = tempfile::NamedTempFile::new().unwrap();
        let e = run_in(plain.path(), || Ok(())).unwrap_err();
        assert!(
            format!("{e:#}").contains(&plain.path().display().to_string()),
            "{e:#}"
        );
    }

    #[test]
    fn create_refuses_a_taken_name_and_keeps_the_namespace() {
        let ns = Ns::new("taken");
        let before = ns_inode(&ns.0);
        let name = ns.0.file_name().unwrap().to_str().unwrap().to_string();
        let e = create(&name).unwrap_err();
        assert!(format!("{e:#}").contains(&name), "{e:#}");
        assert_eq!(
            ns_inode(&ns.0),
            before,
            "the existing namespace was replaced"
        );
        run_in(&ns.0, || Ok(())).expect("the existing namespace still works");
    }

    #[test]
    fn create_refuses_bad_names() {
        for bad in [
            "",
            "vmpod-",
            "other",
            "vmpod-../x",
            "vmpod-a/b",
            "vmpod-a b",
        ] {
            assert!(create(bad).is_err(), "{bad:?}");
        }
        assert!(create(&format!("vmpod-{}", "a".repeat(NAME_MAX))).is_err());
    }

    #[test]
    fn remove_is_idempotent() {
        let ns = Ns::new("rm");
        remove(&ns.0).unwrap();
        assert!(!ns.0.exists());
        remove(&ns.0).unwrap();
        // A file left by a create that died before mounting.
        std::fs::File::create(&ns.0).unwrap();
        remove(&ns.0).unwrap();
        assert!(!ns.0.exists());
    }

    #[test]
    fn remove_refuses_anything_but_its_own_namespaces() {
        // Each of these would be a disaster to unmount or delete; none is
        // touched because the path check comes first.
        for bad in [
            "/",
            "/etc/passwd",
            "/run/netns",
            "/run/netns/",
            "/run/netns/cni-1234",
            "/run/netns/vmpod-",
            "/run/netns/vmpod-a/../../../etc",
            "/run/netns/../netns/vmpod-a",
            "/run/netns//vmpod-a",
            "/run/netns/vmpod-a/.",
            "run/netns/vmpod-a",
            "/var/run/netns/vmpod-a",
            "/run/netnsvmpod-a",
        ] {
            let e = remove(Path::new(bad)).unwrap_err();
            assert!(format!("{e:#}").contains("refusing"), "{bad}: {e:#}");
        }
        // Another tool's namespace in the same directory survives.
        let other = Path::new(NETNS_DIR).join(format!("othertool-{}", std::process::id()));
        std::fs::File::create(&other).unwrap();
        assert!(remove(&other).is_err());
        assert!(other.exists());
        std::fs::remove_file(&other).unwrap();
    }
}
