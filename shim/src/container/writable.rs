//! A container's writable layer: a file system of its own, so the guest
//! cannot grow it past its quota and the host can measure it without
//! trusting the guest or walking what the guest wrote.
//!
//! Each container gets a sparse file (`writable/<id>.img`, the quota is its
//! size) holding an ext4 file system, attached to a loop device and mounted
//! nosuid,nodev at `writable/<id>/`, a host-only directory the guest never
//! sees. The overlay's upper and work dirs live on it. This works on every
//! host file system, where project quotas need XFS or an ext4 made with
//! them; it costs one loop device per container and about 25 ms of mkfs.
//!
//! The loop device is configured with autoclear, so it goes away with the
//! last unmount, even if the shim is killed before it cleans up; what is
//! left is a file that the pod dir's removal deletes.

use std::fs::{File, OpenOptions};
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::{Context, Result, bail};
use nix::errno::Errno;
use nix::mount::{MntFlags, MsFlags, mount, umount2};
use nix::sys::statvfs::statvfs;

pub use vmpod_shim_api::{
    DEFAULT_WRITABLE_LAYER_BYTES as DEFAULT_BYTES, MAX_WRITABLE_LAYER_BYTES as MAX_BYTES,
    MIN_WRITABLE_LAYER_BYTES as MIN_BYTES,
};

/// Where mkfs.ext4 is looked for before PATH (the shim may run with a
/// minimal one).
const MKFS: [&str; 2] = ["/usr/sbin/mkfs.ext4", "/sbin/mkfs.ext4"];

/// A mounted writable layer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Writable {
    /// The sparse image file.
    pub image: PathBuf,
    /// Where its file system is mounted; `upper/` and `work/` live here.
    pub mountpoint: PathBuf,
    /// What the fresh file system already used (bytes, inodes), so usage
    /// reports the container's writes only.
    baseline: (u64, u64),
}

impl Writable {
    pub fn upper(&self) -> PathBuf {
        self.mountpoint.join("upper")
    }
    pub fn work(&self) -> PathBuf {
        self.mountpoint.join("work")
    }

    /// Bytes and inodes the container has written, measured on the host.
    pub fn usage(&self) -> Result<(u64, u64)> {
        let (bytes, inodes) = used(&self.mountpoint)?;
        Ok((
            bytes.saturating_sub(self.baseline.0),
            inodes.saturating_sub(self.baseline.1),
        ))
    }
}

/// The paths of container `id`'s writable layer under `root`.
fn paths(root: &Path, id: &str) -> (PathBuf, PathBuf) {
    (root.join(format!("{id}.img")), root.join(id))
}

/// Makes and mounts container `id`'s writable layer of `bytes` under
/// `root` (host-only). On error nothing is left.
pub fn create(root: &Path, id: &str, bytes: u64) -> Result<Writable> {
    super::id::check_id(id).map_err(anyhow::Error::msg)?;
    if !(MIN_BYTES..=MAX_BYTES).contains(&bytes) {
        bail!("a writable layer of {bytes} bytes is out of range {MIN_BYTES}..={MAX_BYTES}");
    }
    let (image, mountpoint) = paths(root, id);
    let made = make(&image, &mountpoint, bytes);
    if made.is_err() {
        let _ = remove(root, id);
    }
    made
}

fn make(image: &Path, mountpoint: &Path, bytes: u64) -> Result<Writable> {
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .mode(0o600)
        .custom_flags(libc::O_CLOEXEC | libc::O_NOFOLLOW)
        .open(image)
        .with_context(|| format!("creating {}", image.display()))?;
    file.set_len(bytes)
        .with_context(|| format!("sizing {} to {bytes} bytes", image.display()))?;
    mkfs(image)?;
    std::fs::create_dir(mountpoint)
        .with_context(|| format!("creating {}", mountpoint.display()))?;
    let device = attach_loop(&file).with_context(|| format!("attaching {}", image.display()))?;
    mount(
        Some(&device.path),
        mountpoint,
        Some("ext4"),
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
        None::<&str>,
    )
    .with_context(|| {
        format!(
            "mounting {} ({}) at {}",
            image.display(),
            device.path.display(),
            mountpoint.display()
        )
    })?;
    // Mounted: the file system holds the loop device now, and autoclear
    // frees it at the last unmount.
    drop(device);
    let baseline = used(mountpoint)?;
    let w = Writable {
        image: image.to_owned(),
        mountpoint: mountpoint.to_owned(),
        baseline,
    };
    for d in [w.upper(), w.work()] {
        std::fs::create_dir(&d).with_context(|| format!("creating {}", d.display()))?;
    }
    Ok(w)
}

/// Unmounts and deletes container `id`'s writable layer. Idempotent.
pub fn remove(root: &Path, id: &str) -> Result<()> {
    let (image, mountpoint) = paths(root, id);
    match umount2(
        &mountpoint,
        MntFlags::MNT_DETACH | MntFlags::UMOUNT_NOFOLLOW,
    ) {
        Ok(()) | Err(Errno::EINVAL) | Err(Errno::ENOENT) => {}
        Err(e) => return Err(e).with_context(|| format!("unmounting {}", mountpoint.display())),
    }
    // Unmounted, the mount point is an empty directory of the host's.
    for (path, removed) in [
        (&mountpoint, std::fs::remove_dir(&mountpoint)),
        (&image, std::fs::remove_file(&image)),
    ] {
        match removed {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                return Err(e).with_context(|| format!("removing {}", path.display()));
            }
            _ => {}
        }
    }
    Ok(())
}

fn used(mountpoint: &Path) -> Result<(u64, u64)> {
    let st = statvfs(mountpoint).with_context(|| format!("statvfs {}", mountpoint.display()))?;
    let bytes = (st.blocks() as u64)
        .saturating_sub(st.blocks_free() as u64)
        .saturating_mul(st.fragment_size() as u64);
    let inodes = (st.files() as u64).saturating_sub(st.files_free() as u64);
    Ok((bytes, inodes))
}

/// ext4 without a journal (a container's scratch space does not outlive
/// a host crash anyway), no reserved blocks, lazy init: about 25 ms for
/// 10 GiB, and only a few MiB of the sparse file are written.
fn mkfs(image: &Path) -> Result<()> {
    let program = MKFS
        .into_iter()
        .find(|p| Path::new(p).exists())
        .unwrap_or("mkfs.ext4");
    let out = Command::new(program)
        .args([
            "-q",
            "-F",
            "-m",
            "0",
            "-O",
            "^has_journal",
            "-E",
            "lazy_itable_init=1,lazy_journal_init=1,nodiscard",
        ])
        .arg(image)
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("running {program} (e2fsprogs)"))?;
    if !out.status.success() {
        bail!(
            "{program} {} failed ({}): {}",
            image.display(),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

/// A configured loop device, open.
struct Loop {
    path: PathBuf,
    _fd: OwnedFd,
}

const LOOP_CTL_GET_FREE: libc::c_ulong = 0x4C82;
const LOOP_CONFIGURE: libc::c_ulong = 0x4C0A;
const LO_FLAGS_AUTOCLEAR: u32 = 4;

/// `struct loop_info64` (linux/loop.h).
#[repr(C)]
struct LoopInfo64 {
    device: u64,
    inode: u64,
    rdevice: u64,
    offset: u64,
    sizelimit: u64,
    number: u32,
    encrypt_type: u32,
    encrypt_key_size: u32,
    flags: u32,
    file_name: [u8; 64],
    crypt_name: [u8; 64],
    encrypt_key: [u8; 32],
    init: [u64; 2],
}

/// `struct loop_config` (linux/loop.h, Linux 5.8).
#[repr(C)]
struct LoopConfig {
    fd: u32,
    block_size: u32,
    info: LoopInfo64,
    reserved: [u64; 8],
}

/// Attaches `file` to a free loop device with autoclear, in one ioctl
/// (LOOP_CONFIGURE), so a device is never seen half set up. Another
/// process may take the free device first; that is retried.
fn attach_loop(file: &File) -> Result<Loop> {
    let control = OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_CLOEXEC)
        .open("/dev/loop-control")
        .context("opening /dev/loop-control")?;
    for _ in 0..16 {
        // SAFETY: LOOP_CTL_GET_FREE takes no argument and returns a number.
        let n = unsafe { libc::ioctl(control.as_raw_fd(), LOOP_CTL_GET_FREE as _) };
        if n < 0 {
            return Err(std::io::Error::last_os_error()).context("LOOP_CTL_GET_FREE");
        }
        let path = PathBuf::from(format!("/dev/loop{n}"));
        let dev = OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_CLOEXEC)
            .open(&path)
            .with_context(|| format!("opening {}", path.display()))?;
        let mut config = LoopConfig {
            fd: u32::try_from(file.as_raw_fd()).context("fd number")?,
            block_size: 0,
            // SAFETY: loop_info64 is plain integers and byte arrays, for
            // which all zeroes is the documented "unset" value.
            info: unsafe { std::mem::zeroed() },
            reserved: [0; 8],
        };
        config.info.flags = LO_FLAGS_AUTOCLEAR;
        // SAFETY: `config` is a valid loop_config that outlives the call.
        let rc = unsafe {
            libc::ioctl(
                dev.as_raw_fd(),
                LOOP_CONFIGURE as _,
                &config as *const LoopConfig,
            )
        };
        if rc == 0 {
            return Ok(Loop {
                path,
                _fd: dev.into(),
            });
        }
        let e = std::io::Error::last_os_error();
        if e.raw_os_error() != Some(libc::EBUSY) {
            return Err(e).with_context(|| format!("LOOP_CONFIGURE on {}", path.display()));
        }
    }
    bail!("no free loop device after 16 tries")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_quota_holds_usage_is_measured_and_removal_leaves_nothing() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path();
        let w = create(root, "c1", 8 << 20).expect("writable layer (root, loop devices)");
        let fill = std::panic::catch_unwind(|| {
            let (bytes, _) = w.usage().unwrap();
            assert!(bytes < 64 << 10, "a fresh layer reports {bytes} bytes");
            std::fs::write(w.upper().join("one"), vec![1u8; 1 << 20]).unwrap();
            let (bytes, inodes) = w.usage().unwrap();
            assert!((1 << 20..2 << 20).contains(&bytes), "{bytes}");
            assert!(inodes >= 1, "{inodes}");
            // Past the quota: ENOSPC, not the host's disk.
            let e = std::fs::write(w.upper().join("big"), vec![2u8; 16 << 20]).unwrap_err();
            assert_eq!(e.raw_os_error(), Some(libc::ENOSPC), "{e}");
            let on_disk = std::fs::metadata(&w.image).unwrap().len();
            assert_eq!(on_disk, 8 << 20);
            let flags = statvfs(&w.mountpoint).unwrap().flags();
            use nix::sys::statvfs::FsFlags;
            assert!(flags.contains(FsFlags::ST_NOSUID) && flags.contains(FsFlags::ST_NODEV));
        });
        remove(root, "c1").unwrap();
        fill.unwrap();
        assert!(!w.image.exists() && !w.mountpoint.exists());
        assert!(vmpod_shim_api::mounts::mounts_under(root).is_empty());
        remove(root, "c1").expect("idempotent");
    }

    #[test]
    fn bad_requests_leave_nothing() {
        let tmp = tempfile::tempdir().unwrap();
        assert!(create(tmp.path(), "../x", DEFAULT_BYTES).is_err());
        let e = create(tmp.path(), "c", 1024).unwrap_err();
        assert!(format!("{e:#}").contains("out of range"), "{e:#}");
        assert_eq!(std::fs::read_dir(tmp.path()).unwrap().count(), 0);
    }
}
