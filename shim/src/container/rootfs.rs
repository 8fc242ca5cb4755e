//! Container root filesystems, assembled on the host inside the pod share.
//!
//! A container's root is an overlay of its image's layer snapshots (each an
//! overlayfs-format diff from the image store) plus a writable upper dir of
//! its own, mounted at `share/containers/<id>/rootfs`. Because the share is
//! a shared mount ([`crate::share`]), the mount reaches virtiofsd and the
//! guest sees the merged tree at `/run/vmpod/share/containers/<id>/rootfs`.
//! The upper dir is not in the share: it lives on the container's writable
//! layer ([`super::writable`]), a host-only, size-capped file system, so the
//! guest writes only through the overlay and never names a host path.

use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};

use vmpod_agent_proto::v1::Propagation;

use super::id::{CONTAINERS_DIR, check_id};
use super::volumes;
use super::writable::Writable;
use crate::share::PodShare;
use nix::mount::{MsFlags, mount};

/// The kernel copies mount options into one page.
const MAX_OPTIONS: usize = 4000;

/// A mounted container root.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rootfs {
    /// `skeleton/containers/<id>`: the host-only side of the container's
    /// dir in the share, where its mount points are made.
    pub dir: PathBuf,
    /// The merged tree, as the host names it: inside the read-only share.
    pub mountpoint: PathBuf,
}

/// `containers/<id>` relative to the share (and to the skeleton).
pub fn relative_dir(id: &str) -> PathBuf {
    Path::new(CONTAINERS_DIR).join(id)
}

/// Mounts the root of container `id`. `lowers` are snapshot dirs, the
/// image's top layer first. `upper` is the writable layer; without one the
/// root is read-only (the only case that needs no mount points made in it).
pub fn mount_rootfs(
    pod: &PodShare,
    id: &str,
    lowers: &[PathBuf],
    upper: Option<&Writable>,
) -> Result<Rootfs> {
    check_id(id).map_err(anyhow::Error::msg)?;
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
    let rel = relative_dir(id);
    let dir = pod.skeleton.join(&rel);
    if dir.exists() {
        bail!("container {id} already has a root at {}", dir.display());
    }
    std::fs::create_dir_all(dir.join("rootfs"))
        .with_context(|| format!("creating {}", dir.join("rootfs").display()))?;
    let rootfs = Rootfs {
        dir: dir.clone(),
        mountpoint: pod.share.join(&rel).join("rootfs"),
    };
    let result = volumes::Target::beneath(&pod.share, &rel.join("rootfs"))
        .and_then(|target| mount_layers(&target, lowers, upper));
    if let Err(e) = result {
        let _ = std::fs::remove_dir_all(&dir);
        return Err(e);
    }
    Ok(rootfs)
}

fn mount_layers(
    target: &volumes::Target,
    lowers: &[PathBuf],
    upper: Option<&Writable>,
) -> Result<()> {
    let lower = lowers
        .iter()
        .map(|p| p.to_string_lossy().into_owned())
        .collect::<Vec<_>>()
        .join(":");
    if upper.is_none() && lowers.len() == 1 {
        // overlayfs needs two layers when there is no upper dir; one
        // read-only layer is a read-only bind mount, made read-only before
        // it is attached so that virtiofsd's copy is too: the layer is the
        // image store's, shared with every other pod of that image.
        let opts = volumes::BindOptions {
            readonly: true,
            recursive_readonly: false,
            propagation: Propagation::Private,
        };
        return volumes::bind(&lowers[0], target, &opts)
            .with_context(|| format!("bind-mounting {} read-only", lowers[0].display()));
    }
    let options = match upper {
        None => format!("lowerdir={lower}"),
        Some(w) => format!(
            "lowerdir={lower},upperdir={},workdir={}",
            w.upper().display(),
            w.work().display()
        ),
    };
    if options.len() > MAX_OPTIONS {
        bail!(
            "{} layers need {} bytes of overlay options, more than the kernel takes",
            lowers.len(),
            options.len()
        );
    }
    let mut flags = MsFlags::MS_NOSUID | MsFlags::MS_NODEV;
    if upper.is_none() {
        flags |= MsFlags::MS_RDONLY;
    }
    mount(
        Some("overlay"),
        &crate::share::fd_path(&target.fd),
        Some("overlay"),
        flags,
        Some(options.as_str()),
    )
    .with_context(|| format!("mounting the overlay at {}", target.path.display()))
}

/// Unmounts a container's root and deletes its mount points. Idempotent.
pub fn remove_rootfs(rootfs: &Rootfs) -> Result<()> {
    volumes::unmount_all(&rootfs.mountpoint)?;
    match std::fs::remove_dir_all(&rootfs.dir) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e).with_context(|| format!("removing {}", rootfs.dir.display())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::container::writable;

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

    fn pod(root: &Path) -> PodShare {
        let pod = PodShare::of(&root.join("pod"));
        pod.prepare().expect("share (root)");
        pod
    }

    #[test]
    fn writable_root_merges_layers_and_keeps_writes_in_upper() {
        let tmp = tempfile::tempdir().unwrap();
        let pod = pod(tmp.path());
        let lowers = layers(tmp.path());
        let w = writable::create(&pod.writable, "c1", 16 << 20).expect("writable (root)");
        let r = mount_rootfs(&pod, "c1", &lowers, Some(&w)).expect("overlay mount (root)");
        let check = std::panic::catch_unwind(|| {
            assert!(!r.mountpoint.join("a").exists(), "whiteout hides a");
            assert_eq!(std::fs::read(r.mountpoint.join("etc/b")).unwrap(), b"b");
            assert_eq!(std::fs::read(r.mountpoint.join("c")).unwrap(), b"c");
            std::fs::write(r.mountpoint.join("new"), b"n").unwrap();
            assert!(
                w.upper().join("new").exists(),
                "writes land in the upper dir"
            );
            assert!(!lowers[0].join("new").exists(), "layers stay untouched");
        });
        remove_rootfs(&r).unwrap();
        writable::remove(&pod.writable, "c1").unwrap();
        check.unwrap();
        assert!(!r.dir.exists());
        assert_eq!(
            vmpod_shim_api::mounts::mounts_under(&pod.share),
            vec![pod.share.to_string_lossy().into_owned()],
            "only the share itself stays mounted"
        );
        remove_rootfs(&r).unwrap();
        vmpod_shim_api::mounts::remove_unmounted(&tmp.path().join("pod")).unwrap();
    }

    #[test]
    fn readonly_roots_refuse_writes() {
        let tmp = tempfile::tempdir().unwrap();
        let pod = pod(tmp.path());
        let lowers = layers(tmp.path());
        for (id, layers) in [
            ("multi", lowers.clone()),
            ("single", vec![lowers[1].clone()]),
        ] {
            let r = mount_rootfs(&pod, id, &layers, None).expect("mount (root)");
            let err = std::fs::write(r.mountpoint.join("x"), b"x").unwrap_err();
            remove_rootfs(&r).unwrap();
            assert_eq!(err.raw_os_error(), Some(libc::EROFS), "{id}: {err}");
        }
        vmpod_shim_api::mounts::remove_unmounted(&tmp.path().join("pod")).unwrap();
    }

    /// A symlink where the mount point will be, as a guest that could
    /// write the tree would plant it: the mount must not follow it.
    #[test]
    fn a_planted_symlink_is_never_mounted_through() {
        let tmp = tempfile::tempdir().unwrap();
        let pod = pod(tmp.path());
        let victim = tmp.path().join("victim");
        std::fs::create_dir(&victim).unwrap();
        // Only the host can write the skeleton; this stands in for a bug
        // that let a symlink in anyway.
        std::fs::create_dir_all(pod.skeleton.join("containers/c1")).unwrap();
        std::os::unix::fs::symlink(&victim, pod.skeleton.join("containers/c1/rootfs")).unwrap();
        let target = volumes::Target::beneath(&pod.share, Path::new("containers/c1/rootfs"));
        assert!(target.is_err(), "resolved through a symlink");
        vmpod_shim_api::mounts::remove_unmounted(&tmp.path().join("pod")).unwrap();
        assert!(victim.is_dir(), "the victim is not the pod's to delete");
    }

    #[test]
    fn bad_ids_and_layer_paths_are_refused() {
        let tmp = tempfile::tempdir().unwrap();
        let pod = pod(tmp.path());
        let lowers = layers(tmp.path());
        for id in ["", "../escape", "a/b", &"x".repeat(65)] {
            assert!(mount_rootfs(&pod, id, &lowers, None).is_err(), "{id:?}");
        }
        let colon = tmp.path().join("lay:er");
        std::fs::create_dir(&colon).unwrap();
        assert!(mount_rootfs(&pod, "c", &[colon], None).is_err());
        assert!(mount_rootfs(&pod, "c", &[], None).is_err());
        assert!(mount_rootfs(&pod, "c", &[tmp.path().join("missing")], None).is_err());
        assert!(
            !pod.skeleton.join(CONTAINERS_DIR).join("c").exists(),
            "a refused mount leaves nothing"
        );
        vmpod_shim_api::mounts::remove_unmounted(&tmp.path().join("pod")).unwrap();
    }
}
