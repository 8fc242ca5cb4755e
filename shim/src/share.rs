//! The pod share: the directory virtiofsd exports to the guest, and the
//! rules for every host operation below it.
//!
//! The guest is hostile, and whatever virtiofsd exports read-write it can
//! rewrite: replace a directory by a symlink to `/`, plant one where the
//! shim will mount next. The share is therefore a *read-only* bind of a
//! host-only skeleton (`skeleton/`): the guest cannot create, rename or
//! delete anything in it. What it may write arrives as mounts below it: a
//! container's overlay root (whose upper dir lives on a host-only file
//! system of its own, see `container::writable`) and its rw volumes. The
//! shim creates directories and mount points in the skeleton, never through
//! the share, and resolves mount targets inside the share with
//! `openat2(RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS | RESOLVE_NO_XDEV)`, so
//! even a bug elsewhere cannot make it follow a path the guest chose.
//! The share and every mount below it are nosuid and nodev on the host.
//!
//! virtiofsd (with its default namespace sandbox) runs in a mount namespace
//! of its own, copied when it starts. Mounts made under the share after that
//! (container root filesystems, volumes) would stay invisible to it, and so
//! to the guest. The share bind has shared propagation, set before
//! virtiofsd starts, so its copy is a slave that receives every later
//! mount. `vmpod_shim_api::mounts::release` undoes it when the VM is gone.

use std::os::fd::{AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use nix::fcntl::{OFlag, OpenHow, ResolveFlag, openat2};
use nix::mount::{MntFlags, MsFlags, mount, umount2};
use vmpod_shim_api::layout;

/// The pod share and the host-only trees beside it.
#[derive(Debug, Clone)]
pub struct PodShare {
    /// What virtiofsd exports: a read-only bind of `skeleton`.
    pub share: PathBuf,
    /// Host-only: the directories and mount points the share shows.
    pub skeleton: PathBuf,
    /// Host-only: the containers' writable layers.
    pub writable: PathBuf,
}

impl PodShare {
    /// The share of the pod whose directory is `pod_dir`.
    pub fn of(pod_dir: &Path) -> PodShare {
        PodShare {
            share: pod_dir.join(layout::SHARE_DIR),
            skeleton: pod_dir.join(layout::SKELETON_DIR),
            writable: pod_dir.join(layout::WRITABLE_DIR),
        }
    }

    /// Creates the three trees and mounts the share: the skeleton bound
    /// read-only, nosuid and nodev, with shared propagation.
    pub fn prepare(&self) -> Result<()> {
        for dir in [&self.share, &self.skeleton, &self.writable] {
            std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        }
        mount(
            Some(&self.skeleton),
            &self.share,
            None::<&str>,
            MsFlags::MS_BIND,
            None::<&str>,
        )
        .with_context(|| {
            format!(
                "bind-mounting {} onto {}",
                self.skeleton.display(),
                self.share.display()
            )
        })?;
        let locked = mount(
            None::<&str>,
            &self.share,
            None::<&str>,
            MsFlags::MS_BIND
                | MsFlags::MS_REMOUNT
                | MsFlags::MS_RDONLY
                | MsFlags::MS_NOSUID
                | MsFlags::MS_NODEV,
            None::<&str>,
        )
        .with_context(|| format!("making {} read-only", self.share.display()))
        .and_then(|()| {
            mount(
                None::<&str>,
                &self.share,
                None::<&str>,
                MsFlags::MS_SHARED,
                None::<&str>,
            )
            .with_context(|| format!("making {} a shared mount", self.share.display()))
        });
        if let Err(e) = locked {
            let _ = umount2(&self.share, MntFlags::MNT_DETACH);
            return Err(e);
        }
        Ok(())
    }
}

/// `rel` under `root` as an O_PATH fd, resolved without leaving `root`'s
/// own mount and without following any symlink: the mount target to hand
/// to `mount`/`move_mount`. A path that crosses a mount (the target is
/// already mounted on) fails with EXDEV. `root` itself must be a host-only
/// path.
pub fn open_beneath(root: &Path, rel: &Path) -> Result<OwnedFd> {
    if rel.is_absolute() {
        bail!("{} is not relative to {}", rel.display(), root.display());
    }
    let how = || {
        OpenHow::new()
            // No O_NOFOLLOW: with O_PATH it would hand back the symlink
            // itself, where RESOLVE_NO_SYMLINKS alone refuses it (ELOOP).
            .flags(OFlag::O_PATH | OFlag::O_CLOEXEC)
            .resolve(
                ResolveFlag::RESOLVE_BENEATH
                    | ResolveFlag::RESOLVE_NO_SYMLINKS
                    | ResolveFlag::RESOLVE_NO_XDEV,
            )
    };
    let base = nix::fcntl::open(
        root,
        OFlag::O_PATH | OFlag::O_CLOEXEC | OFlag::O_DIRECTORY,
        nix::sys::stat::Mode::empty(),
    )
    .with_context(|| format!("opening {}", root.display()))?;
    openat2(&base, rel, how()).with_context(|| {
        format!(
            "resolving {} beneath {} (no symlinks, no mount crossings)",
            rel.display(),
            root.display()
        )
    })
}

/// The path through which `mount(2)` reaches what `fd` refers to.
pub fn fd_path(fd: &OwnedFd) -> PathBuf {
    PathBuf::from(format!("/proc/self/fd/{}", fd.as_raw_fd()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use vmpod_shim_api::mounts::{mounts_under, release, remove_unmounted};

    fn prepared() -> (tempfile::TempDir, PodShare) {
        let dir = tempfile::tempdir().expect("tempdir");
        let pod = PodShare::of(dir.path());
        pod.prepare().expect("needs root, like the shim");
        (dir, pod)
    }

    #[test]
    fn later_mounts_propagate_and_release_cleans_up() {
        let (dir, pod) = prepared();
        let share = &pod.share;
        // A new mount namespace copies the mount table, like virtiofsd's
        // sandbox; a mount made afterwards must show up in it.
        std::fs::create_dir(pod.skeleton.join("probe")).expect("mkdir");
        let probe = share.join("probe");
        let child = std::process::Command::new("unshare")
            .args([
                "-m",
                "--propagation",
                "slave",
                "sh",
                "-c",
                "sleep 1; cat /proc/self/mountinfo",
            ])
            .stdout(std::process::Stdio::piped())
            .spawn()
            .expect("unshare (util-linux) runs");
        std::thread::sleep(std::time::Duration::from_millis(300));
        let target = open_beneath(&pod.share, Path::new("probe")).expect("open probe");
        mount(
            Some("tmpfs"),
            &fd_path(&target),
            Some("tmpfs"),
            MsFlags::empty(),
            None::<&str>,
        )
        .expect("mount tmpfs");
        let out = child.wait_with_output().expect("unshare output");
        let seen = String::from_utf8_lossy(&out.stdout).contains(probe.to_string_lossy().as_ref());
        let mounted = mounts_under(share);
        remove_unmounted(dir.path()).expect("remove");
        assert!(
            seen,
            "a mount made after the namespace was copied did not propagate"
        );
        assert!(mounted.contains(&probe.to_string_lossy().into_owned()));
        assert!(mounts_under(dir.path()).is_empty(), "release left mounts");
        assert!(!dir.path().exists());
    }

    #[test]
    fn the_share_is_read_only_nosuid_nodev() {
        let (dir, pod) = prepared();
        let write = std::fs::create_dir(pod.share.join("planted")).unwrap_err();
        let link = std::os::unix::fs::symlink("/", pod.share.join("containers")).unwrap_err();
        let flags = nix::sys::statvfs::statvfs(&pod.share).expect("statvfs");
        release(dir.path());
        assert_eq!(write.raw_os_error(), Some(libc::EROFS), "{write}");
        assert_eq!(link.raw_os_error(), Some(libc::EROFS), "{link}");
        use nix::sys::statvfs::FsFlags;
        for f in [FsFlags::ST_RDONLY, FsFlags::ST_NOSUID, FsFlags::ST_NODEV] {
            assert!(flags.flags().contains(f), "share lacks {f:?}");
        }
    }

    #[test]
    fn open_beneath_follows_no_symlink_and_stays_inside() {
        let dir = tempfile::tempdir().expect("tempdir");
        let root = dir.path();
        std::fs::create_dir_all(root.join("a/b")).unwrap();
        std::os::unix::fs::symlink("/etc", root.join("a/link")).unwrap();
        std::os::unix::fs::symlink("b", root.join("a/rel")).unwrap();
        assert!(open_beneath(root, Path::new("a/b")).is_ok());
        for bad in [
            "a/link",
            "a/link/passwd",
            "a/rel",
            "../x",
            "a/../../x",
            "/etc",
        ] {
            assert!(open_beneath(root, Path::new(bad)).is_err(), "{bad}");
        }
    }

    #[test]
    fn remove_unmounted_never_deletes_through_a_mount() {
        let dir = tempfile::tempdir().expect("tempdir");
        let victim = tempfile::tempdir().expect("tempdir");
        std::fs::write(victim.path().join("canary"), b"alive").unwrap();
        let target = dir.path().join("pod/bind");
        std::fs::create_dir_all(&target).unwrap();
        mount(
            Some(victim.path()),
            &target,
            None::<&str>,
            MsFlags::MS_BIND,
            None::<&str>,
        )
        .expect("bind (root)");
        remove_unmounted(&dir.path().join("pod")).expect("remove");
        assert_eq!(
            std::fs::read(victim.path().join("canary")).unwrap(),
            b"alive"
        );
        assert!(!dir.path().join("pod").exists());
    }
}
