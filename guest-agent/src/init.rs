//! What PID 1 does for the guest: pseudo filesystems, the console, and
//! turning the VM off. Reaping orphans is [`crate::reaper`]'s job.

use std::fs;
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::Path;

use anyhow::{Context, Result};
use nix::fcntl::{OFlag, open};
use nix::mount::{MsFlags, mount};
use nix::sys::reboot::{RebootMode, reboot};
use nix::sys::stat::Mode;
use nix::unistd::{dup2_stderr, dup2_stdin, dup2_stdout};

use crate::mounts;

/// A filesystem PID 1 mounts before anything else runs.
struct MountSpec {
    source: &'static str,
    target: &'static str,
    fstype: &'static str,
    flags: MsFlags,
    data: Option<&'static str>,
    /// Mode of the mount point if it has to be created.
    dir_mode: u32,
}

const NOSUID_NODEV: MsFlags = MsFlags::MS_NOSUID.union(MsFlags::MS_NODEV);
const NOSUID_NODEV_NOEXEC: MsFlags = NOSUID_NODEV.union(MsFlags::MS_NOEXEC);

/// In mount order: /proc first (the others are checked against its
/// mountinfo), /dev before the console is reopened and before /dev/pts.
const MOUNTS: &[MountSpec] = &[
    MountSpec {
        source: "proc",
        target: "/proc",
        fstype: "proc",
        flags: NOSUID_NODEV_NOEXEC,
        data: None,
        dir_mode: 0o555,
    },
    MountSpec {
        source: "sysfs",
        target: "/sys",
        fstype: "sysfs",
        flags: NOSUID_NODEV_NOEXEC,
        data: None,
        dir_mode: 0o555,
    },
    // Linux 6.1 does not mount devtmpfs itself when booting an initramfs.
    MountSpec {
        source: "devtmpfs",
        target: "/dev",
        fstype: "devtmpfs",
        flags: MsFlags::MS_NOSUID,
        data: Some("mode=0755"),
        dir_mode: 0o755,
    },
    MountSpec {
        source: "devpts",
        target: "/dev/pts",
        fstype: "devpts",
        flags: MsFlags::MS_NOSUID.union(MsFlags::MS_NOEXEC),
        data: Some("newinstance,ptmxmode=0666,mode=0620"),
        dir_mode: 0o755,
    },
    MountSpec {
        source: "shm",
        target: "/dev/shm",
        fstype: "tmpfs",
        flags: NOSUID_NODEV,
        data: Some("mode=1777"),
        dir_mode: 0o1777,
    },
    MountSpec {
        source: "tmpfs",
        target: "/run",
        fstype: "tmpfs",
        flags: NOSUID_NODEV,
        data: Some("mode=0755"),
        dir_mode: 0o755,
    },
    MountSpec {
        source: "tmpfs",
        target: "/tmp",
        fstype: "tmpfs",
        flags: NOSUID_NODEV,
        data: Some("mode=1777"),
        dir_mode: 0o1777,
    },
    // nsdelegate: containers with their own cgroup namespace may manage
    // their subtree, but not move processes out of it.
    MountSpec {
        source: "cgroup2",
        target: "/sys/fs/cgroup",
        fstype: "cgroup2",
        flags: NOSUID_NODEV_NOEXEC,
        data: Some("nsdelegate"),
        dir_mode: 0o555,
    },
];

/// Symlinks that devtmpfs does not provide but programs expect.
const DEV_LINKS: &[(&str, &str)] = &[
    ("/proc/self/fd", "/dev/fd"),
    ("/proc/self/fd/0", "/dev/stdin"),
    ("/proc/self/fd/1", "/dev/stdout"),
    ("/proc/self/fd/2", "/dev/stderr"),
    ("/proc/kcore", "/dev/core"),
];

/// Prepares the guest. Runs before logging is set up: errors are returned
/// and printed by [`fatal`].
pub fn setup() -> Result<()> {
    make_root_pivotable().context("cannot move the root off the initramfs")?;
    for spec in MOUNTS {
        mount_once(spec)?;
        if spec.target == "/dev" {
            attach_console().context("cannot attach stdio to /dev/console")?;
            for (target, link) in DEV_LINKS {
                match std::os::unix::fs::symlink(target, link) {
                    Ok(()) => {}
                    Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
                    Err(e) => return Err(e).with_context(|| format!("cannot create {link}")),
                }
            }
        }
    }
    crate::net::link_up("lo").context("cannot bring up the loopback interface")?;
    Ok(())
}

/// Where the root is bound while it is moved; removed again at once.
const ROOT_BIND: &str = "/.vmpod-root";

/// Makes `/` a bind mount of the initramfs instead of the initramfs itself.
///
/// pivot_root(2) refuses to move away from the initial rootfs (it has no
/// parent mount), and every container init pivots into its rootfs: with
/// `chroot` instead, a process holding CAP_SYS_CHROOT (a default
/// capability) could climb out of its container. This is what
/// switch_root does, without deleting anything: bind the root onto a
/// directory, move that mount onto `/` and chroot into it. Later mount
/// namespaces then have a root with a parent, and pivot_root works.
fn make_root_pivotable() -> Result<()> {
    use nix::unistd::{chdir, chroot};
    match fs::create_dir(ROOT_BIND) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(e).with_context(|| format!("cannot create {ROOT_BIND}")),
    }
    mount(
        Some("/"),
        ROOT_BIND,
        None::<&str>,
        MsFlags::MS_BIND,
        None::<&str>,
    )
    .with_context(|| format!("cannot bind / onto {ROOT_BIND}"))?;
    chdir(ROOT_BIND).with_context(|| format!("cannot chdir to {ROOT_BIND}"))?;
    mount(Some("."), "/", None::<&str>, MsFlags::MS_MOVE, None::<&str>)
        .context("cannot move the root bind mount onto /")?;
    chroot(".").context("cannot chroot into the root bind mount")?;
    chdir("/").context("cannot chdir to /")?;
    // The same directory, now uncovered, inside the bind mount.
    let _ = fs::remove_dir(ROOT_BIND);
    Ok(())
}

fn mount_once(spec: &MountSpec) -> Result<()> {
    let target = Path::new(spec.target);
    if is_mounted(target)? {
        return Ok(());
    }
    if !target.is_dir() {
        fs::DirBuilder::new()
            .recursive(true)
            .mode(spec.dir_mode)
            .create(target)
            .with_context(|| format!("cannot create mount point {}", spec.target))?;
        // The umask (022 for init) strips the sticky and world bits.
        fs::set_permissions(target, fs::Permissions::from_mode(spec.dir_mode))
            .with_context(|| format!("cannot chmod {}", spec.target))?;
    }
    mount(
        Some(spec.source),
        target,
        Some(spec.fstype),
        spec.flags,
        spec.data,
    )
    .with_context(|| {
        format!(
            "cannot mount {} ({}) on {}",
            spec.source, spec.fstype, spec.target
        )
    })
}

/// Whether something is already mounted on `target` (the kernel or a
/// previous agent may have done it).
fn is_mounted(target: &Path) -> Result<bool> {
    let target = target.to_string_lossy();
    Ok(mounts::current()?.iter().any(|m| m.mount_point == target))
}

/// Points fds 0, 1 and 2 at /dev/console. The kernel did that already if
/// the initramfs had a /dev/console node; this makes it so in any case, and
/// on the devtmpfs node.
fn attach_console() -> Result<()> {
    let fd = open(
        "/dev/console",
        OFlag::O_RDWR | OFlag::O_NOCTTY | OFlag::O_CLOEXEC,
        Mode::empty(),
    )
    .context("cannot open /dev/console")?;
    dup2_stdin(&fd).context("dup2 to stdin")?;
    dup2_stdout(&fd).context("dup2 to stdout")?;
    dup2_stderr(&fd).context("dup2 to stderr")?;
    Ok(())
}

/// Writes one line straight to the console (stdout), bypassing the logger:
/// for the banner, which hosts match on literally.
pub fn console_line(line: &str) {
    let mut out = std::io::stdout().lock();
    // Nothing sensible can be done if the console is gone.
    let _ = writeln!(out, "{line}").and_then(|()| out.flush());
}

/// Prints a fatal error to the console and shuts the VM down.
pub fn fatal(err: &anyhow::Error) -> ! {
    let msg = format!("vmpod-agent: fatal: {err:#}\n");
    if std::io::stderr().write_all(msg.as_bytes()).is_err() {
        // stdio may not be attached yet; the kernel log reaches the console
        // even with `quiet` at error level.
        if let Ok(mut kmsg) = fs::OpenOptions::new().write(true).open("/dev/kmsg") {
            let _ = kmsg.write_all(format!("<3>{msg}").as_bytes());
        }
    }
    power_off("fatal error")
}

/// Ends the VM: sync, then `reboot(RB_AUTOBOOT)`.
///
/// Not `RB_POWER_OFF`: without ACPI (the microvm guests boot with
/// `acpi=off`) x86 Linux has no power-off method and only halts the CPUs,
/// so the VMM would keep running. A reboot with `reboot=t` on the kernel
/// command line is a triple fault, which every VMM sees: QEMU with
/// `-no-reboot` exits, KVM reports `KVM_EXIT_SHUTDOWN`, and with `reboot=k`
/// the built-in VMM gets an i8042 reset. The host never restarts a guest in
/// place, so in vmpod a guest reboot means "this VM is done".
pub fn power_off(why: &str) -> ! {
    let _ = writeln!(
        std::io::stderr(),
        "vmpod-agent: {why}; shutting the VM down"
    );
    nix::unistd::sync();
    let err = match reboot(RebootMode::RB_AUTOBOOT) {
        Ok(never) => match never {},
        Err(err) => err,
    };
    let _ = writeln!(std::io::stderr(), "vmpod-agent: reboot(2) failed: {err}");
    // Exiting as PID 1 panics the kernel; with `panic=-1` that reboots too.
    std::process::exit(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mounts_are_ordered() {
        let pos = |t: &str| MOUNTS.iter().position(|m| m.target == t).unwrap();
        assert_eq!(pos("/proc"), 0);
        assert!(pos("/dev") < pos("/dev/pts"));
        assert!(pos("/sys") < pos("/sys/fs/cgroup"));
    }
}
