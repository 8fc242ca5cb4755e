//! Container root filesystems, assembled on the host inside the pod share.
//!
//! A container's root is an overlay of its image's layer snapshots (each an
//! overlayfs-format diff from the image store) plus a writable upper dir of
//! its own, mounted at `share/containers/<id>/rootfs`. Because the share is
//! a shared mount ([`crate::share`]), the mount reaches virtiofsd and the
//! guest sees the merged tree at `/run/vmpod/share/containers/<id>/rootfs`.
//! The upper dir lives beside it, so a container's writes stay in the pod
//! and go away with it.

use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};

use vmpod_agent_proto::v1::Propagation;

use super::{CONTAINERS_DIR, volumes};
use nix::mount::{MntFlags, MsFlags, mount, umount2};

/// The kernel copies mount options into one page.
const MAX_OPTIONS: usize = 4000;

/// A mounted container root.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rootfs {
    /// `share/containers/<id>`: rootfs, upper and work dirs.
    pub dir: PathBuf,
    /// The merged tree.
    pub mountpoint: PathBuf,
}

/// Mounts the root of container `id`. `lowers` are snapshot dirs, the
/// image's top layer first. A read-only root gets no upper dir at all, so
/// nothing in the container can write to it.
pub fn mount_rootfs(share: &Path, id: &str, lowers: &[PathBuf], readonly: bool) -> Result<Rootfs> {
    super::check_id(id).map_err(anyhow::Error::msg)?;
    if lowers.is_empty() {
        bail!("an image needs at least one layer");
    }
    for l in lowers {
        // ':' and ',' separate overlay options; a path holding them would
        // change what gets mounted.
        let bytes = l.as_os_str().as_bytes();
        if !l.is_absolute() || bytes.iter().any(|b| matches!(b, b':' | b',' | b'\0')) {
            bail!("layer path {} cannot be used in an overlay", l.display());
        }
        if !l.is_dir() {
            bail!("layer {} is missing", l.display());
        }
    }
    let dir = share.join(CONTAINERS_DIR).join(id);
    if dir.exists() {
        bail!("container {id} already has a root at {}", dir.display());
    }
    let mountpoint = dir.join("rootfs");
    std::fs::create_dir_all(&mountpoint)
        .with_context(|| format!("creating {}", mountpoint.display()))?;
    let rootfs = Rootfs {
        dir: dir.clone(),
        mountpoint,
    };
    let result = mount_layers(&rootfs, lowers, readonly);
    if let Err(e) = result {
        let _ = std::fs::remove_dir_all(&dir);
        return Err(e);
    }
    Ok(rootfs)
}

fn mount_layers(rootfs: &Rootfs, lowers: &[PathBuf], readonly: bool) -> Result<()> {
    let lower = lowers
        .iter()
        .map(|p| p.to_string_lossy().into_owned())
        .collect::<Vec<_>>()
        .join(":");
    if readonly && lowers.len() == 1 {
        // overlayfs needs two layers when there is no upper dir; one
        // read-only layer is a read-only bind mount, made read-only before
        // it is attached so that virtiofsd's copy is too: the layer is the
        // image store's, shared with every other pod of that image.
        let opts = volumes::BindOptions {
            readonly: true,
            recursive_readonly: false,
            propagation: Propagation::Private,
        };
        return volumes::bind(&lowers[0], &rootfs.mountpoint, &opts)
            .with_context(|| format!("bind-mounting {} read-only", lowers[0].display()));
    }
    let options = if readonly {
        format!("lowerdir={lower}")
    } else {
        let upper = rootfs.dir.join("upper");
        let work = rootfs.dir.join("work");
        for d in [&upper, &work] {
            std::fs::create_dir(d).with_context(|| format!("creating {}", d.display()))?;
        }
        format!(
            "lowerdir={lower},upperdir={},workdir={}",
            upper.display(),
            work.display()
        )
    };
    if options.len() > MAX_OPTIONS {
        bail!(
            "{} layers need {} bytes of overlay options, more than the kernel takes",
            lowers.len(),
            options.len()
        );
    }
    let flags = if readonly {
        MsFlags::MS_RDONLY
    } else {
        MsFlags::empty()
    };
    mount(
        Some("overlay"),
        &rootfs.mountpoint,
        Some("overlay"),
        flags,
        Some(options.as_str()),
    )
    .with_context(|| format!("mounting the overlay at {}", rootfs.mountpoint.display()))
}

/// Unmounts a container's root and deletes its dir, upper included.
/// Idempotent.
pub fn remove_rootfs(rootfs: &Rootfs) -> Result<()> {
    match umount2(&rootfs.mountpoint, MntFlags::MNT_DETACH) {
        Ok(()) | Err(nix::errno::Errno::EINVAL) | Err(nix::errno::Errno::ENOENT) => {}
        Err(e) => {
            return Err(e).with_context(|| format!("unmounting {}", rootfs.mountpoint.display()));
        }
    }
    match std::fs::remove_dir_all(&rootfs.dir) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e).with_context(|| format!("removing {}", rootfs.dir.display())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Two layers in overlayfs format: the top one whites out `a`.
    fn layers(root: &Path) -> Vec<PathBuf> {
        let bottom = root.join("layers/1");
        let top = root.join("layers/2");
        std::fs::create_dir_all(bottom.join("etc")).unwrap();
        std::fs::create_dir_all(&top).unwrap();
        std::fs::write(bottom.join("a"), b"a").unwrap();
        std::fs::write(bottom.join("etc/b"), b"b").unwrap();
        std::fs::write(top.join("c"), b"c").unwrap();
        nix::sys::stat::mknod(
            &top.join("a"),
            nix::sys::stat::SFlag::S_IFCHR,
            nix::sys::stat::Mode::from_bits_truncate(0o600),
            0,
        )
        .expect("mknod whiteout (root)");
        vec![top, bottom]
    }

    #[test]
    fn writable_root_merges_layers_and_keeps_writes_in_upper() {
        let tmp = tempfile::tempdir().unwrap();
        let share = tmp.path().join("share");
        let lowers = layers(tmp.path());
        let r = mount_rootfs(&share, "c1", &lowers, false).expect("overlay mount (root)");
        let check = std::panic::catch_unwind(|| {
            assert!(!r.mountpoint.join("a").exists(), "whiteout hides a");
            assert_eq!(std::fs::read(r.mountpoint.join("etc/b")).unwrap(), b"b");
            assert_eq!(std::fs::read(r.mountpoint.join("c")).unwrap(), b"c");
            std::fs::write(r.mountpoint.join("new"), b"n").unwrap();
            assert!(
                r.dir.join("upper/new").exists(),
                "writes land in the upper dir"
            );
            assert!(!lowers[0].join("new").exists(), "layers stay untouched");
        });
        remove_rootfs(&r).unwrap();
        check.unwrap();
        assert!(!r.dir.exists());
        assert!(crate::share::mounts_under(&share).is_empty());
        remove_rootfs(&r).unwrap();
    }

    #[test]
    fn readonly_roots_refuse_writes() {
        let tmp = tempfile::tempdir().unwrap();
        let share = tmp.path().join("share");
        let lowers = layers(tmp.path());
        for (id, layers) in [
            ("multi", lowers.clone()),
            ("single", vec![lowers[1].clone()]),
        ] {
            let r = mount_rootfs(&share, id, &layers, true).expect("mount (root)");
            let err = std::fs::write(r.mountpoint.join("x"), b"x").unwrap_err();
            remove_rootfs(&r).unwrap();
            assert_eq!(err.raw_os_error(), Some(libc::EROFS), "{id}: {err}");
            assert!(!r.dir.join("upper").exists());
        }
    }

    #[test]
    fn bad_ids_and_layer_paths_are_refused() {
        let tmp = tempfile::tempdir().unwrap();
        let share = tmp.path().join("share");
        let lowers = layers(tmp.path());
        for id in ["", "../escape", "a/b", &"x".repeat(65)] {
            assert!(mount_rootfs(&share, id, &lowers, false).is_err(), "{id:?}");
        }
        let colon = tmp.path().join("lay:er");
        std::fs::create_dir(&colon).unwrap();
        assert!(mount_rootfs(&share, "c", &[colon], false).is_err());
        assert!(mount_rootfs(&share, "c", &[], false).is_err());
        assert!(mount_rootfs(&share, "c", &[tmp.path().join("missing")], false).is_err());
        assert!(
            !share.join(CONTAINERS_DIR).join("c").exists(),
            "a refused mount leaves nothing"
        );
    }
}
