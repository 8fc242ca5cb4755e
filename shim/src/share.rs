//! The pod share: the directory virtiofsd exports to the guest.
//!
//! virtiofsd (with its default namespace sandbox) runs in a mount namespace
//! of its own, copied when it starts. Mounts made under the share after that
//! (container root filesystems, volumes) would stay invisible to it, and so
//! to the guest. Making the share a bind mount of itself with shared
//! propagation before virtiofsd starts means its copy is a slave that
//! receives every later mount. [`release`] undoes it when the VM is gone.

use std::path::Path;

use anyhow::{Context, Result};
use nix::mount::{MntFlags, MsFlags, mount, umount2};

/// Turns `share` into a shared mount point.
pub fn make_propagating(share: &Path) -> Result<()> {
    mount(
        Some(share),
        share,
        None::<&str>,
        MsFlags::MS_BIND,
        None::<&str>,
    )
    .with_context(|| format!("bind-mounting {} onto itself", share.display()))?;
    if let Err(e) = mount(
        None::<&str>,
        share,
        None::<&str>,
        MsFlags::MS_SHARED,
        None::<&str>,
    ) {
        let _ = umount2(share, MntFlags::MNT_DETACH);
        return Err(e).with_context(|| format!("making {} a shared mount", share.display()));
    }
    Ok(())
}

/// Detaches the share and everything mounted below it. Idempotent.
pub fn release(share: &Path) {
    // Deepest first, so each unmount finds its parent still mounted.
    let mut points = mounts_under(share);
    points.sort_by_key(|p| std::cmp::Reverse(p.len()));
    for p in points {
        if let Err(e) = umount2(Path::new(&p), MntFlags::MNT_DETACH) {
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
    fn later_mounts_propagate_and_release_cleans_up() {
        let dir = tempfile::tempdir().expect("tempdir");
        let share = dir.path().join("share");
        std::fs::create_dir(&share).expect("mkdir");
        make_propagating(&share).expect("needs root, like the shim");
        // A new mount namespace copies the mount table, like virtiofsd's
        // sandbox; a mount made afterwards must show up in it.
        let probe = share.join("probe");
        std::fs::create_dir(&probe).expect("mkdir");
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
        mount(
            Some("tmpfs"),
            &probe,
            Some("tmpfs"),
            MsFlags::empty(),
            None::<&str>,
        )
        .expect("mount tmpfs");
        let out = child.wait_with_output().expect("unshare output");
        let seen = String::from_utf8_lossy(&out.stdout).contains(probe.to_string_lossy().as_ref());
        release(&share);
        assert!(
            seen,
            "a mount made after the namespace was copied did not propagate"
        );
        assert!(mounts_under(&share).is_empty(), "release left mounts");
    }

    #[test]
    fn unescapes_mountinfo() {
        assert_eq!(unescape("/a\\040b"), "/a b");
        assert_eq!(unescape("/plain"), "/plain");
    }
}
