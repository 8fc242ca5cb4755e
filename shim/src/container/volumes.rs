//! Host paths bound into a container, through the pod share.
//!
//! The guest can only see what virtiofsd serves, and virtiofsd only sees
//! mounts that propagate into its mount namespace: each volume is bound at
//! `share/containers/<id>/mounts/<n>` (under the shared share mount, see
//! [`crate::share`]) and the agent binds that on into the container.
//!
//! What arrives in virtiofsd's namespace is a *copy* of the mount made here,
//! cloned when it is attached, and later flag changes do not follow it. A
//! read-only volume therefore has to be read-only before it is attached, or
//! virtiofsd would serve a writable copy of a read-only volume to the guest.
//! The mount API (`open_tree` → `mount_setattr` → `move_mount`, Linux 5.12)
//! does exactly that: the tree is prepared detached and attached last. On
//! older kernels the classic `mount(2)` sequence is used; there the read-only
//! flag holds on the host side only and the guest agent's read-only bind is
//! the remaining barrier (which is logged), and propagation can only be
//! changed after attaching, which for PRIVATE and HOST_TO_CONTAINER cuts
//! virtiofsd's copy loose: it then stays until the VM stops.
//!
//! Every bind is nosuid and nodev on the host, like the share it sits in:
//! a guest that writes a setuid binary or a device node into a rw volume
//! must not get a host process to honour it through this mount.
//!
//! The target is a mount point inside the read-only share, handed over as
//! an O_PATH fd resolved beneath the share ([`crate::share::PodShare`]), so
//! the attach cannot be redirected by anything the guest wrote.
//!
//! Propagation is set on the detached tree too. The share is shared, so
//! whatever is attached under it becomes shared in a peer group of its own,
//! with virtiofsd's copy as its slave: that link is what carries a later
//! unmount (of the bind and of each of its submounts) into virtiofsd's
//! namespace, so it is kept. What the request decides is the link to the
//! host's mount of the source: PRIVATE cuts it before attaching (the
//! clone of a shared source is otherwise its peer), HOST_TO_CONTAINER makes
//! the clone its slave (the host's later mounts under the source arrive,
//! in virtiofsd's copy too), BIDIRECTIONAL keeps it a peer.

use std::ffi::{CStr, CString};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use nix::errno::Errno;
use nix::mount::{MntFlags, MsFlags, mount, umount2};
use nix::sys::statvfs::{FsFlags, statvfs};
use vmpod_agent_proto::v1::Propagation;

/// How one host path is bound.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BindOptions {
    pub readonly: bool,
    /// Also every submount of the source (needs `readonly`).
    pub recursive_readonly: bool,
    pub propagation: Propagation,
}

/// Which kernel interface does the work; tests force the legacy one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Api {
    /// The mount API, falling back to [`Api::Legacy`] where the kernel
    /// lacks it.
    Auto,
    /// Only tests choose it; [`Api::Auto`] falls back to it by itself.
    #[cfg_attr(not(test), allow(dead_code))]
    Legacy,
}

/// Creates the mount point for `source` at `target`: a directory for a
/// directory, an empty file for anything else (files, sockets, devices),
/// since a bind needs a mount point of the same kind.
pub fn create_mountpoint(source: &Path, target: &Path) -> Result<()> {
    let meta =
        std::fs::metadata(source).with_context(|| format!("inspecting {}", source.display()))?;
    if meta.is_dir() {
        std::fs::create_dir(target)
    } else {
        std::fs::File::create_new(target).map(drop)
    }
    .with_context(|| format!("creating mount point {}", target.display()))
}

/// A mount point to attach to: the fd does the attaching; the path (inside
/// the read-only share, so out of the guest's reach) names it in errors and
/// in the legacy steps that must reach the mount made on it.
pub struct Target {
    pub fd: OwnedFd,
    pub path: PathBuf,
}

impl Target {
    /// `rel` beneath `root` (see [`crate::share::open_beneath`]).
    pub fn beneath(root: &Path, rel: &Path) -> Result<Target> {
        Ok(Target {
            fd: crate::share::open_beneath(root, rel)?,
            path: root.join(rel),
        })
    }
}

/// Binds `source` (recursively) onto the existing mount point `target`.
/// On error nothing stays mounted at `target`.
pub fn bind(source: &Path, target: &Target, opts: &BindOptions) -> Result<()> {
    bind_with(source, target, opts, Api::Auto)
}

pub(crate) fn bind_with(
    source: &Path,
    target: &Target,
    opts: &BindOptions,
    api: Api,
) -> Result<()> {
    let c_source = cstring(source)?;
    if api == Api::Auto {
        match bind_detached(&c_source, &target.fd, opts) {
            Ok(()) => return Ok(()),
            Err(Step::Unsupported) => {
                tracing::warn!(
                    source = %source.display(),
                    "kernel lacks the mount API (open_tree/mount_setattr); \
                     read-only volumes are read-only on the host side only"
                );
            }
            Err(Step::Failed(what, e)) => {
                return Err(e).with_context(|| format!("{what} for {}", source.display()));
            }
        }
    }
    bind_legacy(source, target, opts)?;
    if let Err(e) = set_propagation(&target.path, opts.propagation) {
        let _ = umount2(&target.path, MntFlags::MNT_DETACH);
        return Err(e);
    }
    Ok(())
}

enum Step {
    /// ENOSYS before anything was attached: use the classic calls.
    Unsupported,
    Failed(&'static str, std::io::Error),
}

/// The mount API path: clone the tree detached, set its flags, attach it.
fn bind_detached(source: &CStr, target: &OwnedFd, opts: &BindOptions) -> Result<(), Step> {
    let failed = |what| move |e: std::io::Error| Step::Failed(what, e);
    let tree = match open_tree(source) {
        Err(e) if e.raw_os_error() == Some(libc::ENOSYS) => return Err(Step::Unsupported),
        r => r.map_err(failed("open_tree"))?,
    };
    // A clone of a shared source is a peer of the host's mount; see the
    // module doc for why this is decided before attaching, and only then.
    let early = match opts.propagation {
        Propagation::Private => Some(ATTR_MS_PRIVATE),
        Propagation::HostToContainer => Some(ATTR_MS_SLAVE),
        Propagation::Bidirectional => None,
    };
    if let Some(propagation) = early {
        let attr = MountAttr {
            propagation,
            ..MountAttr::default()
        };
        match mount_setattr(&tree, true, &attr) {
            Err(e) if e.raw_os_error() == Some(libc::ENOSYS) => return Err(Step::Unsupported),
            r => r.map_err(failed("setting propagation"))?,
        }
    }
    let hardened = MountAttr {
        set: libc::MOUNT_ATTR_NOSUID | libc::MOUNT_ATTR_NODEV,
        ..MountAttr::default()
    };
    match mount_setattr(&tree, true, &hardened) {
        Err(e) if e.raw_os_error() == Some(libc::ENOSYS) => return Err(Step::Unsupported),
        r => r.map_err(failed("making the bind nosuid,nodev"))?,
    }
    if opts.readonly || opts.recursive_readonly {
        let attr = MountAttr {
            set: libc::MOUNT_ATTR_RDONLY,
            ..MountAttr::default()
        };
        match mount_setattr(&tree, opts.recursive_readonly, &attr) {
            Err(e) if e.raw_os_error() == Some(libc::ENOSYS) => return Err(Step::Unsupported),
            r => r.map_err(failed("making the bind read-only"))?,
        }
    }
    move_mount(&tree, target).map_err(failed("attaching the bind"))
}

/// The `mount(2)` path for kernels without the mount API. The bind is
/// attached through the target's fd; the remounts that follow reach the new
/// mount by its path, which lies in the read-only share.
fn bind_legacy(source: &Path, target: &Target, opts: &BindOptions) -> Result<()> {
    mount(
        Some(source),
        &crate::share::fd_path(&target.fd),
        None::<&str>,
        MsFlags::MS_BIND | MsFlags::MS_REC,
        None::<&str>,
    )
    .with_context(|| format!("bind-mounting {}", source.display()))?;
    let path = &target.path;
    let harden = || -> Result<()> {
        let readonly = opts.readonly || opts.recursive_readonly;
        remount(path, readonly)?;
        let target_str = path.to_string_lossy();
        for sub in vmpod_shim_api::mounts::mounts_under(path) {
            if sub != target_str {
                remount(Path::new(&sub), opts.recursive_readonly)?;
            }
        }
        Ok(())
    };
    if let Err(e) = harden() {
        let _ = umount2(path, MntFlags::MNT_DETACH);
        return Err(e);
    }
    Ok(())
}

/// Remounts one bind nosuid,nodev (and read-only if asked), keeping the
/// other flags it has (dropping one in a remount is refused where it is
/// locked, and would loosen the mount anyway).
fn remount(path: &Path, readonly: bool) -> Result<()> {
    let st = statvfs(path).with_context(|| format!("statvfs {}", path.display()))?;
    let mut flags = MsFlags::MS_BIND | MsFlags::MS_REMOUNT | MsFlags::MS_NOSUID | MsFlags::MS_NODEV;
    if readonly {
        flags |= MsFlags::MS_RDONLY;
    }
    for (fs, ms) in [
        (FsFlags::ST_NOSUID, MsFlags::MS_NOSUID),
        (FsFlags::ST_NODEV, MsFlags::MS_NODEV),
        (FsFlags::ST_NOEXEC, MsFlags::MS_NOEXEC),
        (FsFlags::ST_NOATIME, MsFlags::MS_NOATIME),
        (FsFlags::ST_NODIRATIME, MsFlags::MS_NODIRATIME),
        (FsFlags::ST_RELATIME, MsFlags::MS_RELATIME),
    ] {
        if st.flags().contains(fs) {
            flags |= ms;
        }
    }
    mount(None::<&str>, path, None::<&str>, flags, None::<&str>)
        .with_context(|| format!("remounting {} ({flags:?})", path.display()))
}

/// Applies the requested propagation to an attached bind and its
/// submounts (legacy path only).
fn set_propagation(target: &Path, propagation: Propagation) -> Result<()> {
    let kind = match propagation {
        Propagation::Private => MsFlags::MS_PRIVATE,
        Propagation::HostToContainer => MsFlags::MS_SLAVE,
        Propagation::Bidirectional => MsFlags::MS_SHARED,
    };
    mount(
        None::<&str>,
        target,
        None::<&str>,
        MsFlags::MS_REC | kind,
        None::<&str>,
    )
    .with_context(|| {
        format!(
            "setting {} propagation on {}",
            propagation.as_str_name(),
            target.display()
        )
    })
}

fn cstring(p: &Path) -> Result<CString> {
    CString::new(p.as_os_str().as_bytes())
        .with_context(|| format!("path {} contains a NUL byte", p.display()))
}

/// The fields of `struct mount_attr` (linux/mount.h) that are used.
#[derive(Default)]
struct MountAttr {
    set: u64,
    /// One of the `ATTR_MS_*` values; 0 leaves it.
    propagation: u64,
}

/// `mount_attr.propagation` takes the `MS_*` propagation flags, as a u64
/// whatever the width of `unsigned long`.
const ATTR_MS_PRIVATE: u64 = 1 << 18;
const ATTR_MS_SLAVE: u64 = 1 << 19;

fn open_tree(path: &CStr) -> std::io::Result<OwnedFd> {
    let flags =
        libc::OPEN_TREE_CLONE | libc::OPEN_TREE_CLOEXEC | libc::AT_RECURSIVE as libc::c_uint;
    // SAFETY: `path` is NUL-terminated and outlives the call; the syscall
    // takes no other pointers.
    let fd = unsafe { libc::syscall(libc::SYS_open_tree, libc::AT_FDCWD, path.as_ptr(), flags) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: the kernel just returned this fd to us; nothing else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as libc::c_int) })
}

fn mount_setattr(tree: &OwnedFd, recursive: bool, attr: &MountAttr) -> std::io::Result<()> {
    let raw = libc::mount_attr {
        attr_set: attr.set,
        attr_clr: 0,
        propagation: attr.propagation,
        userns_fd: 0,
    };
    let mut flags = libc::AT_EMPTY_PATH as libc::c_uint;
    if recursive {
        flags |= libc::AT_RECURSIVE as libc::c_uint;
    }
    // SAFETY: the path is an empty NUL-terminated string, `raw` lives on
    // the stack for the call and its size is passed along.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_mount_setattr,
            tree.as_raw_fd(),
            c"".as_ptr(),
            flags,
            &raw as *const libc::mount_attr,
            std::mem::size_of::<libc::mount_attr>(),
        )
    };
    if rc < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

fn move_mount(tree: &OwnedFd, target: &OwnedFd) -> std::io::Result<()> {
    // SAFETY: both paths are empty NUL-terminated strings; the fds are ours.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_move_mount,
            tree.as_raw_fd(),
            c"".as_ptr(),
            target.as_raw_fd(),
            c"".as_ptr(),
            libc::MOVE_MOUNT_F_EMPTY_PATH | libc::MOVE_MOUNT_T_EMPTY_PATH,
        )
    };
    if rc < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// Detaches every mount at or below `dir`, deepest first, then checks
/// that none is left: deleting through a bind would delete the host's files.
///
/// A path names only the topmost of the mounts stacked on it, so a mount
/// hidden under another (a volume whose source had one) becomes reachable
/// only once the one above is gone: passes repeat while they make progress.
pub fn unmount_all(dir: &Path) -> Result<()> {
    let mut left = vmpod_shim_api::mounts::mounts_under(dir);
    while !left.is_empty() {
        left.sort_by_key(|p| std::cmp::Reverse(p.len()));
        for p in &left {
            match umount2(
                Path::new(p),
                MntFlags::MNT_DETACH | MntFlags::UMOUNT_NOFOLLOW,
            ) {
                Ok(()) | Err(Errno::EINVAL) | Err(Errno::ENOENT) => {}
                Err(e) => tracing::warn!(mount = %p, error = %e, "cannot unmount"),
            }
        }
        let now = vmpod_shim_api::mounts::mounts_under(dir);
        if now.len() >= left.len() {
            anyhow::bail!("mounts left under {}: {}", dir.display(), now.join(", "));
        }
        left = now;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{BufRead, BufReader, Write};
    use std::path::PathBuf;
    use std::process::{Command, Stdio};

    const APIS: [Api; 2] = [Api::Auto, Api::Legacy];

    fn opts(readonly: bool, recursive: bool, propagation: Propagation) -> BindOptions {
        BindOptions {
            readonly,
            recursive_readonly: recursive,
            propagation,
        }
    }

    /// A source dir with a file and a tmpfs submount holding another.
    struct Source {
        _tmp: tempfile::TempDir,
        root: PathBuf,
        dir: PathBuf,
        sub: PathBuf,
    }

    impl Source {
        fn new() -> Source {
            let tmp = tempfile::tempdir().unwrap();
            let root = tmp.path().to_owned();
            let dir = root.join("src");
            let sub = dir.join("sub");
            std::fs::create_dir_all(&sub).unwrap();
            std::fs::write(dir.join("f"), b"f").unwrap();
            mount(
                Some("tmpfs"),
                &sub,
                Some("tmpfs"),
                MsFlags::empty(),
                None::<&str>,
            )
            .expect("mount tmpfs (root)");
            std::fs::write(sub.join("g"), b"g").unwrap();
            Source {
                _tmp: tmp,
                root,
                dir,
                sub,
            }
        }

        fn target(&self, name: &str) -> Target {
            create_mountpoint(&self.dir, &self.root.join(name)).unwrap();
            Target::beneath(&self.root, Path::new(name)).unwrap()
        }
    }

    impl Drop for Source {
        fn drop(&mut self) {
            let _ = unmount_all(&self.root);
        }
    }

    fn erofs(path: &Path) -> bool {
        std::fs::write(path, b"x")
            .err()
            .is_some_and(|e| e.raw_os_error() == Some(libc::EROFS))
    }

    #[test]
    fn readonly_covers_the_top_and_recursive_readonly_every_submount() {
        for api in APIS {
            let src = Source::new();
            let plain = src.target("plain");
            bind_with(
                &src.dir,
                &plain,
                &opts(true, false, Propagation::Private),
                api,
            )
            .unwrap();
            assert_eq!(
                std::fs::read(plain.path.join("sub/g")).unwrap(),
                b"g",
                "{api:?}: recursive"
            );
            assert!(erofs(&plain.path.join("x")), "{api:?}: top is read-only");
            assert!(
                !erofs(&plain.path.join("sub/x")),
                "{api:?}: submount stays writable"
            );

            let rro = src.target("rro");
            bind_with(&src.dir, &rro, &opts(true, true, Propagation::Private), api).unwrap();
            assert!(erofs(&rro.path.join("x")), "{api:?}");
            assert!(
                erofs(&rro.path.join("sub/y")),
                "{api:?}: submount read-only too"
            );

            assert!(
                !erofs(&src.dir.join("h")),
                "{api:?}: the source stays writable"
            );
            assert!(!erofs(&src.sub.join("h")), "{api:?}");
        }
    }

    #[test]
    fn files_bind_onto_files() {
        for api in APIS {
            let src = Source::new();
            let file = src.dir.join("f");
            create_mountpoint(&file, &src.root.join("file-target")).unwrap();
            let target = Target::beneath(&src.root, Path::new("file-target")).unwrap();
            assert!(target.path.is_file());
            bind_with(
                &file,
                &target,
                &opts(false, false, Propagation::Private),
                api,
            )
            .unwrap();
            std::fs::write(&target.path, b"written").unwrap();
            assert_eq!(std::fs::read(&file).unwrap(), b"written", "{api:?}");
        }
    }

    /// A mount made on the host under a (shared) source reaches a
    /// HOST_TO_CONTAINER bind, not a PRIVATE one; and nothing mounted under
    /// a bind flows back to the host.
    #[test]
    fn propagation_follows_the_request() {
        for api in APIS {
            let src = Source::new();
            // Only a shared source has anything to propagate.
            mount(
                Some(&src.dir),
                &src.dir,
                None::<&str>,
                MsFlags::MS_BIND | MsFlags::MS_REC,
                None::<&str>,
            )
            .unwrap();
            mount(
                None::<&str>,
                &src.dir,
                None::<&str>,
                MsFlags::MS_SHARED,
                None::<&str>,
            )
            .unwrap();
            std::fs::create_dir_all(src.dir.join("later")).unwrap();
            let private = src.target("private");
            let slave = src.target("slave");
            bind_with(
                &src.dir,
                &private,
                &opts(false, false, Propagation::Private),
                api,
            )
            .unwrap();
            bind_with(
                &src.dir,
                &slave,
                &opts(false, false, Propagation::HostToContainer),
                api,
            )
            .unwrap();
            mount(
                Some("tmpfs"),
                &src.dir.join("later"),
                Some("tmpfs"),
                MsFlags::empty(),
                None::<&str>,
            )
            .unwrap();
            std::fs::write(src.dir.join("later/new"), b"n").unwrap();
            assert!(
                slave.path.join("later/new").exists(),
                "{api:?}: rslave receives"
            );
            assert!(
                !private.path.join("later/new").exists(),
                "{api:?}: rprivate does not"
            );

            mount(
                Some("tmpfs"),
                &slave.path.join("sub"),
                Some("tmpfs"),
                MsFlags::empty(),
                None::<&str>,
            )
            .unwrap();
            std::fs::write(slave.path.join("sub/back"), b"b").unwrap();
            assert!(
                !src.sub.join("back").exists(),
                "{api:?}: nothing flows back"
            );
        }
    }

    /// The copy of a read-only bind that reaches a namespace like
    /// virtiofsd's (a slave of the share) is read-only as well, and goes
    /// away when the bind is unmounted.
    #[test]
    fn readonly_reaches_a_slave_namespace_and_unmount_follows() {
        let src = Source::new();
        let pod = crate::share::PodShare::of(&src.root.join("pod"));
        pod.prepare().unwrap();
        create_mountpoint(&src.dir, &pod.skeleton.join("vol")).unwrap();
        let target = Target::beneath(&pod.share, Path::new("vol")).unwrap();
        // The child reports once its namespace exists, then dumps its
        // mount table each time it is poked.
        let mut child = Command::new("unshare")
            .args([
                "-m",
                "--propagation",
                "slave",
                "sh",
                "-c",
                "echo ready; read a; cat /proc/self/mountinfo; echo ===; read b; cat /proc/self/mountinfo; echo ===",
            ])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("unshare (util-linux) runs");
        let mut stdin = child.stdin.take().unwrap();
        let mut out = BufReader::new(child.stdout.take().unwrap());
        let mut line = String::new();
        out.read_line(&mut line).unwrap();
        assert_eq!(line.trim(), "ready");

        let bound = bind(&src.dir, &target, &opts(true, false, Propagation::Private));
        let dump = |stdin: &mut std::process::ChildStdin, out: &mut BufReader<_>| {
            writeln!(stdin).unwrap();
            let mut table = Vec::new();
            loop {
                let mut l = String::new();
                if out.read_line(&mut l).unwrap() == 0 || l.trim() == "===" {
                    return table;
                }
                table.push(l);
            }
        };
        let before = dump(&mut stdin, &mut out);
        unmount_all(&target.path).unwrap();
        let after = dump(&mut stdin, &mut out);
        let _ = child.wait();
        vmpod_shim_api::mounts::release(&pod.share);
        bound.unwrap();

        let t = target.path.to_string_lossy().into_owned();
        let entry = before
            .iter()
            .find(|l| l.split(' ').nth(4) == Some(t.as_str()))
            .unwrap_or_else(|| panic!("bind did not propagate: {before:?}"));
        let options = entry.split(' ').nth(5).unwrap_or("");
        assert!(
            options.split(',').any(|o| o == "ro"),
            "copy is not read-only: {entry}"
        );
        assert!(
            !after
                .iter()
                .any(|l| l.split(' ').nth(4) == Some(t.as_str())),
            "unmount did not propagate"
        );
    }

    #[test]
    fn unmount_all_leaves_the_source_alone() {
        let src = Source::new();
        let target = src.target("t");
        bind(&src.dir, &target, &opts(false, false, Propagation::Private)).unwrap();
        unmount_all(&target.path).unwrap();
        std::fs::remove_dir_all(&target.path).unwrap();
        assert_eq!(std::fs::read(src.dir.join("f")).unwrap(), b"f");
        assert_eq!(std::fs::read(src.sub.join("g")).unwrap(), b"g");
    }

    #[test]
    fn missing_source_fails_and_mounts_nothing() {
        let src = Source::new();
        let target = src.target("t");
        assert!(
            bind(
                &src.root.join("missing"),
                &target,
                &opts(true, false, Propagation::Private)
            )
            .is_err()
        );
        assert!(vmpod_shim_api::mounts::mounts_under(&target.path).is_empty());
    }

    /// Whatever the request, the host side of a volume honours no setuid
    /// bit and no device node the guest may have written into it.
    #[test]
    fn every_bind_is_nosuid_and_nodev() {
        use nix::sys::statvfs::FsFlags;
        for api in APIS {
            let src = Source::new();
            let target = src.target("t");
            bind_with(
                &src.dir,
                &target,
                &opts(false, false, Propagation::Private),
                api,
            )
            .unwrap();
            for p in [target.path.clone(), target.path.join("sub")] {
                let flags = statvfs(&p).unwrap().flags();
                assert!(
                    flags.contains(FsFlags::ST_NOSUID) && flags.contains(FsFlags::ST_NODEV),
                    "{api:?}: {} is {flags:?}",
                    p.display()
                );
            }
            assert!(!erofs(&target.path.join("x")), "{api:?}: still writable");
        }
    }
}
