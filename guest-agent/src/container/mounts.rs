//! The container's mount namespace, built by its init helper: runs after
//! `unshare(CLONE_NEWNS)` in the process that becomes the container.
//!
//! Before pivot_root everything is addressed through the container root
//! with `resolve.rs` (an image's symlinks cannot redirect a mount onto a
//! guest path), and a mount point is named by `/proc/self/fd/N` of an fd
//! resolved that way. After pivot_root the root *is* the container's, so
//! plain paths are safe for masking and read-only paths.

use std::ffi::CString;
use std::io;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::path::Path;

use anyhow::{Context, Result};
use nix::mount::{MntFlags, MsFlags, mount, umount2};

use super::plan::{InitPlan, MountPlan};
use super::resolve::{self, Leaf, fd_path, mkdir_all_in_root, open_in_root};

/// What the default masks, when the spec gives no list (containerd's).
pub const DEFAULT_MASKED: &[&str] = &[
    "/proc/acpi",
    "/proc/asound",
    "/proc/kcore",
    "/proc/keys",
    "/proc/latency_stats",
    "/proc/timer_list",
    "/proc/timer_stats",
    "/proc/sched_debug",
    "/proc/scsi",
    "/sys/firmware",
    "/sys/devices/virtual/powercap",
];

/// What the default makes read-only (containerd's).
pub const DEFAULT_READONLY: &[&str] = &[
    "/proc/bus",
    "/proc/fs",
    "/proc/irq",
    "/proc/sys",
    "/proc/sysrq-trigger",
];

const NOSUID_NODEV_NOEXEC: MsFlags = MsFlags::MS_NOSUID
    .union(MsFlags::MS_NODEV)
    .union(MsFlags::MS_NOEXEC);

fn mnt(
    source: Option<&str>,
    target: &str,
    fstype: Option<&str>,
    flags: MsFlags,
    data: Option<&str>,
) -> io::Result<()> {
    mount(source, target, fstype, flags, data).map_err(io::Error::from)
}

/// Flags the kernel keeps on a mount and a bind remount must repeat
/// (leaving them out of MS_REMOUNT would try to clear them).
fn kept_flags(path: &str) -> MsFlags {
    let Ok(c) = CString::new(path) else {
        return MsFlags::empty();
    };
    // SAFETY: statvfs fills the zeroed struct; path is NUL-terminated.
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    if unsafe { libc::statvfs(c.as_ptr(), &mut st) } != 0 {
        return MsFlags::empty();
    }
    let mut out = MsFlags::empty();
    for (st_flag, ms) in [
        (libc::ST_NOSUID, MsFlags::MS_NOSUID),
        (libc::ST_NODEV, MsFlags::MS_NODEV),
        (libc::ST_NOEXEC, MsFlags::MS_NOEXEC),
        (libc::ST_NOATIME, MsFlags::MS_NOATIME),
        (libc::ST_NODIRATIME, MsFlags::MS_NODIRATIME),
        (libc::ST_RELATIME, MsFlags::MS_RELATIME),
    ] {
        if st.f_flag & st_flag != 0 {
            out |= ms;
        }
    }
    out
}

fn remount_readonly(path: &str) -> io::Result<()> {
    mnt(
        None,
        path,
        None,
        MsFlags::MS_BIND | MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY | kept_flags(path),
        None,
    )
}

/// mount_setattr(2) with AT_RECURSIVE: read-only for a mount and every
/// mount below it (a plain remount only covers the top one).
fn recursive_readonly(fd: &OwnedFd) -> io::Result<()> {
    // SAFETY: mount_attr is plain data.
    let mut attr: libc::mount_attr = unsafe { std::mem::zeroed() };
    attr.attr_set = libc::MOUNT_ATTR_RDONLY;
    let empty = c"";
    // SAFETY: a valid fd, an empty path with AT_EMPTY_PATH, and the size
    // of the struct passed.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_mount_setattr,
            fd.as_raw_fd(),
            empty.as_ptr(),
            (libc::AT_EMPTY_PATH | libc::AT_RECURSIVE) as libc::c_uint,
            &mut attr as *mut libc::mount_attr,
            std::mem::size_of::<libc::mount_attr>(),
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Everything before pivot_root: the root as its own mount, the standard
/// filesystems, and the spec's mounts.
pub fn prepare(plan: &InitPlan) -> Result<()> {
    // Nothing we mount may leak back into the guest's namespace; guest
    // mounts under bind sources still propagate in.
    mnt(None, "/", None, MsFlags::MS_REC | MsFlags::MS_SLAVE, None)
        .context("cannot make / a slave mount")?;
    let rootfs = plan.rootfs.as_str();
    mnt(
        Some(rootfs),
        rootfs,
        None,
        MsFlags::MS_BIND | MsFlags::MS_REC,
        None,
    )
    .with_context(|| format!("cannot bind the root {rootfs} onto itself"))?;
    let root = resolve::open_dir(Path::new(rootfs))
        .with_context(|| format!("cannot open the root {rootfs}"))?;
    let root = root.as_fd();

    let at = |path: &str, leaf: Leaf| -> Result<OwnedFd> {
        mkdir_all_in_root(root, path, leaf)
            .with_context(|| format!("cannot create the mount point {path} in the container"))
    };
    let ro = |privileged: bool| {
        if privileged {
            MsFlags::empty()
        } else {
            MsFlags::MS_RDONLY
        }
    };

    let t = at("/proc", Leaf::Dir)?;
    mnt(
        Some("proc"),
        &fd_path(&t),
        Some("proc"),
        NOSUID_NODEV_NOEXEC,
        None,
    )
    .context("cannot mount /proc")?;

    let t = at("/dev", Leaf::Dir)?;
    mnt(
        Some("tmpfs"),
        &fd_path(&t),
        Some("tmpfs"),
        MsFlags::MS_NOSUID | MsFlags::MS_STRICTATIME,
        Some("mode=755,size=65536k"),
    )
    .context("cannot mount /dev")?;
    populate_dev(root, plan.tty)?;

    let t = at("/sys", Leaf::Dir)?;
    mnt(
        Some("sysfs"),
        &fd_path(&t),
        Some("sysfs"),
        NOSUID_NODEV_NOEXEC | ro(plan.privileged),
        None,
    )
    .context("cannot mount /sys")?;
    if !plan.cgroup_dir.is_empty() {
        // sysfs provides the directory; it cannot be created on a
        // read-only sysfs, and need not be.
        let t = open_in_root(root, "/sys/fs/cgroup", libc::O_PATH | libc::O_DIRECTORY)
            .context("the container's /sys has no fs/cgroup")?;
        mnt(
            Some("cgroup"),
            &fd_path(&t),
            Some("cgroup2"),
            NOSUID_NODEV_NOEXEC | MsFlags::MS_RELATIME | ro(plan.privileged),
            None,
        )
        .context("cannot mount /sys/fs/cgroup")?;
    }

    for m in &plan.mounts {
        spec_mount(root, m).with_context(|| format!("mount on {}", m.destination))?;
    }
    Ok(())
}

/// /dev: the usual nodes, links, /dev/pts (its own devpts instance),
/// /dev/shm, /dev/mqueue, and /dev/console for a tty.
fn populate_dev(root: std::os::fd::BorrowedFd<'_>, tty: bool) -> Result<()> {
    let dev = open_in_root(root, "/dev", libc::O_PATH | libc::O_DIRECTORY)
        .context("cannot open the new /dev")?;
    // SAFETY: umask only changes this process's mask.
    let old = unsafe { libc::umask(0) };
    let result = (|| -> Result<()> {
        for (name, major, minor) in [
            ("null", 1, 3),
            ("zero", 1, 5),
            ("full", 1, 7),
            ("random", 1, 8),
            ("urandom", 1, 9),
            ("tty", 5, 0),
        ] {
            let c = CString::new(name).context("name")?;
            // SAFETY: valid dirfd and name.
            let rc = unsafe {
                libc::mknodat(
                    dev.as_raw_fd(),
                    c.as_ptr(),
                    libc::S_IFCHR | 0o666,
                    libc::makedev(major, minor),
                )
            };
            if rc != 0 {
                return Err(io::Error::last_os_error())
                    .with_context(|| format!("mknod /dev/{name}"));
            }
        }
        for (target, name) in [
            ("/proc/self/fd", "fd"),
            ("/proc/self/fd/0", "stdin"),
            ("/proc/self/fd/1", "stdout"),
            ("/proc/self/fd/2", "stderr"),
            ("pts/ptmx", "ptmx"),
            ("/proc/kcore", "core"),
        ] {
            let (t, n) = (CString::new(target)?, CString::new(name)?);
            // SAFETY: valid strings and dirfd.
            if unsafe { libc::symlinkat(t.as_ptr(), dev.as_raw_fd(), n.as_ptr()) } != 0 {
                return Err(io::Error::last_os_error())
                    .with_context(|| format!("symlink /dev/{name}"));
            }
        }
        for name in ["pts", "shm", "mqueue"] {
            let n = CString::new(name)?;
            let mode = if name == "shm" { 0o1777 } else { 0o755 };
            // SAFETY: valid dirfd and name.
            if unsafe { libc::mkdirat(dev.as_raw_fd(), n.as_ptr(), mode) } != 0 {
                return Err(io::Error::last_os_error())
                    .with_context(|| format!("mkdir /dev/{name}"));
            }
        }
        if tty {
            let n = CString::new("console")?;
            // SAFETY: valid dirfd and name; the fd is closed at once.
            let fd = unsafe {
                libc::openat(
                    dev.as_raw_fd(),
                    n.as_ptr(),
                    libc::O_CREAT | libc::O_EXCL | libc::O_WRONLY | libc::O_CLOEXEC,
                    0o600,
                )
            };
            if fd < 0 {
                return Err(io::Error::last_os_error()).context("create /dev/console");
            }
            // SAFETY: fd was just opened.
            unsafe { libc::close(fd) };
        }
        Ok(())
    })();
    // SAFETY: restores the mask.
    unsafe { libc::umask(old) };
    result?;

    let sub = |p: &str| -> Result<OwnedFd> {
        open_in_root(root, p, libc::O_PATH).with_context(|| format!("cannot open {p}"))
    };
    mnt(
        Some("devpts"),
        &fd_path(&sub("/dev/pts")?),
        Some("devpts"),
        MsFlags::MS_NOSUID | MsFlags::MS_NOEXEC,
        Some("newinstance,ptmxmode=0666,mode=0620,gid=5"),
    )
    .context("cannot mount /dev/pts")?;
    mnt(
        Some("shm"),
        &fd_path(&sub("/dev/shm")?),
        Some("tmpfs"),
        NOSUID_NODEV_NOEXEC,
        Some("mode=1777,size=65536k"),
    )
    .context("cannot mount /dev/shm")?;
    mnt(
        Some("mqueue"),
        &fd_path(&sub("/dev/mqueue")?),
        Some("mqueue"),
        NOSUID_NODEV_NOEXEC,
        None,
    )
    .context("cannot mount /dev/mqueue")?;
    if tty {
        // The pty slave is our stdin; /dev/console is a bind of it. By
        // path, not by /proc/self/fd/0: that fd was opened in the guest's
        // mount namespace, and a bind source must be in ours (the copy of
        // the guest's /dev/pts that unshare gave us).
        let slave = std::fs::read_link("/proc/self/fd/0").context("cannot name the tty")?;
        let slave = slave.to_str().context("tty path is not UTF-8")?;
        mnt(
            Some(slave),
            &fd_path(&sub("/dev/console")?),
            None,
            MsFlags::MS_BIND,
            None,
        )
        .context("cannot bind the tty onto /dev/console")?;
    }
    Ok(())
}

fn spec_mount(root: std::os::fd::BorrowedFd<'_>, m: &MountPlan) -> Result<()> {
    let flags = MsFlags::from_bits_truncate(m.flags as libc::c_ulong);
    let is_bind = m.fstype.is_empty();
    let leaf = if is_bind {
        let meta =
            std::fs::metadata(&m.source).with_context(|| format!("mount source {}", m.source))?;
        if meta.is_dir() { Leaf::Dir } else { Leaf::File }
    } else {
        Leaf::Dir
    };
    let target = mkdir_all_in_root(root, &m.destination, leaf)
        .with_context(|| format!("cannot create the mount point {}", m.destination))?;
    if is_bind {
        mnt(Some(&m.source), &fd_path(&target), None, flags, None)
            .with_context(|| format!("cannot bind {}", m.source))?;
    } else {
        let data = (!m.data.is_empty()).then_some(m.data.as_str());
        let ro = if m.readonly {
            MsFlags::MS_RDONLY
        } else {
            MsFlags::empty()
        };
        mnt(
            Some(if m.source.is_empty() {
                &m.fstype
            } else {
                &m.source
            }),
            &fd_path(&target),
            Some(&m.fstype),
            flags | ro,
            data,
        )
        .with_context(|| format!("cannot mount {} ({})", m.source, m.fstype))?;
    }
    // The fd still names the covered directory; look again to get the
    // new mount.
    let mounted = open_in_root(root, &m.destination, libc::O_PATH)
        .with_context(|| format!("cannot reopen {}", m.destination))?;
    let path = fd_path(&mounted);
    if is_bind {
        // The flags a bind mount should have (nosuid, ...) only take
        // effect with a remount.
        let extra = flags.difference(MsFlags::MS_BIND | MsFlags::MS_REC);
        if m.readonly || !extra.is_empty() {
            let ro = if m.readonly {
                MsFlags::MS_RDONLY
            } else {
                MsFlags::empty()
            };
            mnt(
                None,
                &path,
                None,
                MsFlags::MS_BIND | MsFlags::MS_REMOUNT | ro | extra | kept_flags(&path),
                None,
            )
            .context("cannot remount the bind with its flags")?;
        }
    }
    if m.recursive_readonly {
        recursive_readonly(&mounted).context("cannot make the mount recursively read-only")?;
    }
    if m.propagation != 0 {
        let p = MsFlags::from_bits_truncate(m.propagation as libc::c_ulong);
        mnt(None, &path, None, MsFlags::MS_REC | p, None)
            .context("cannot set mount propagation")?;
    }
    Ok(())
}

/// Makes the container root the process's root and drops the guest's.
pub fn pivot(rootfs: &str) -> Result<()> {
    std::env::set_current_dir(rootfs).with_context(|| format!("chdir {rootfs}"))?;
    nix::unistd::pivot_root(".", ".").context("pivot_root")?;
    // The old root is now stacked on "."; slave it so the unmount cannot
    // propagate, then detach it.
    mnt(None, ".", None, MsFlags::MS_SLAVE | MsFlags::MS_REC, None)
        .context("cannot make the old root a slave")?;
    umount2(".", MntFlags::MNT_DETACH).context("cannot detach the old root")?;
    std::env::set_current_dir("/").context("chdir /")?;
    Ok(())
}

/// After pivot_root: sysctls (while /proc/sys is still writable), masked
/// and read-only paths.
pub fn after_pivot(plan: &InitPlan) -> Result<()> {
    for (key, value) in &plan.sysctls {
        let path = format!("/proc/sys/{}", key.replace('.', "/"));
        std::fs::write(&path, value).with_context(|| format!("cannot set sysctl {key}"))?;
    }
    for p in &plan.masked_paths {
        match std::fs::metadata(p) {
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
            Err(e) => return Err(e).with_context(|| format!("cannot mask {p}")),
            Ok(meta) if meta.is_dir() => mnt(
                Some("tmpfs"),
                p,
                Some("tmpfs"),
                MsFlags::MS_RDONLY | NOSUID_NODEV_NOEXEC,
                Some("size=0"),
            ),
            Ok(_) => mnt(Some("/dev/null"), p, None, MsFlags::MS_BIND, None),
        }
        .with_context(|| format!("cannot mask {p}"))?;
    }
    for p in &plan.readonly_paths {
        match mnt(Some(p), p, None, MsFlags::MS_BIND | MsFlags::MS_REC, None) {
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
            other => other.with_context(|| format!("cannot bind {p} read-only"))?,
        }
        remount_readonly(p).with_context(|| format!("cannot make {p} read-only"))?;
    }
    Ok(())
}

/// The read-only root, last of the mount steps (the cwd may need creating
/// first).
pub fn readonly_root() -> Result<()> {
    remount_readonly("/").context("cannot remount / read-only")
}
