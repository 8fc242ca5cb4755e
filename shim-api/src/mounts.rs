//! Unmounting and deleting a pod's host-only directory: shared by the shim
//! (its own teardown) and the daemon (RemovePodSandbox, orphaned pod dirs
//! after a crash), which must never delete through a mount that is still
//! attached.

use std::path::Path;

use anyhow::{Context, Result, bail};
use nix::mount::{MntFlags, umount2};

/// Deletes `dir` (a host-only pod dir) once nothing is mounted below it:
/// deleting through a bind mount would delete the host's files.
pub fn remove_unmounted(dir: &Path) -> Result<()> {
    release(dir);
    let left = mounts_under(dir);
    if !left.is_empty() {
        bail!(
            "not deleting {}: still mounted below it: {}",
            dir.display(),
            left.join(", ")
        );
    }
    match std::fs::remove_dir_all(dir) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e).with_context(|| format!("removing {}", dir.display())),
    }
}

/// Detaches the share and everything mounted below it. Idempotent.
pub fn release(share: &Path) {
    // Deepest first, so each unmount finds its parent still mounted.
    let mut points = mounts_under(share);
    points.sort_by_key(|p| std::cmp::Reverse(p.len()));
    for p in points {
        if let Err(e) = umount2(
            Path::new(&p),
            MntFlags::MNT_DETACH | MntFlags::UMOUNT_NOFOLLOW,
        ) {
            tracing::warn!(mount = %p, error = %e, "cannot unmount");
        }
    }
}

/// Mount points at or below `dir`, from this process's mountinfo.
pub fn mounts_under(dir: &Path) -> Vec<String> {
    let dir = dir.to_string_lossy();
    std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        .map(unescape)
        .filter(|m| m == dir.as_ref() || m.starts_with(&format!("{dir}/")))
        .collect()
}

/// mountinfo escapes space, tab, newline and backslash as octal.
fn unescape(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\'
            && i + 3 < b.len()
            && b[i + 1..i + 4].iter().all(|c| (b'0'..=b'7').contains(c))
        {
            out.push((b[i + 1] - b'0') * 64 + (b[i + 2] - b'0') * 8 + (b[i + 3] - b'0'));
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unescapes_mountinfo() {
        assert_eq!(unescape("/a\\040b"), "/a b");
        assert_eq!(unescape("/plain"), "/plain");
    }
}
