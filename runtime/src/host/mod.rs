//! What the host offers: virtualization, helper programs, kernel features.
//! `vmpod check` and the CRI `Status` call both read the host through here.

pub mod backend;
pub mod check;
pub mod guest_image;
pub mod vsock;

use std::path::{Path, PathBuf};

use crate::config::Program;

pub fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

/// Resolves a program like the shell does: absolute paths as given, bare
/// names through `PATH`, then `~/.cargo/bin` where `cargo install` puts the
/// vhost-user helpers when the daemon runs with a minimal `PATH`.
pub fn which(program: &Program) -> Option<PathBuf> {
    let name = &program.0;
    if name.starts_with('/') {
        let p = PathBuf::from(name);
        return is_executable(&p).then_some(p);
    }
    let mut dirs: Vec<PathBuf> = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).collect())
        .unwrap_or_default();
    if let Some(home) = std::env::var_os("HOME") {
        dirs.push(PathBuf::from(home).join(".cargo/bin"));
    }
    dirs.into_iter()
        .map(|d| d.join(name))
        .find(|p| is_executable(p))
}

/// The filesystems the running kernel supports (`/proc/filesystems`).
pub fn kernel_has_filesystem(fs: &str) -> bool {
    std::fs::read_to_string("/proc/filesystems")
        .is_ok_and(|s| s.lines().any(|l| l.split_whitespace().last() == Some(fs)))
}

/// How cgroups are mounted on the host.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum CgroupLayout {
    /// cgroup v2 only, mounted at /sys/fs/cgroup.
    Unified,
    /// v1 controllers, with a v2 hierarchy (usually without controllers).
    Hybrid,
    /// v1 only.
    Legacy,
    None,
}

pub fn cgroup_layout() -> CgroupLayout {
    let mounts = std::fs::read_to_string("/proc/self/mounts").unwrap_or_default();
    cgroup_layout_from_mounts(&mounts)
}

fn cgroup_layout_from_mounts(mounts: &str) -> CgroupLayout {
    let mut v1 = false;
    let mut v2_root = false;
    let mut v2_other = false;
    for line in mounts.lines() {
        let mut f = line.split_whitespace();
        let (Some(_), Some(target), Some(fstype)) = (f.next(), f.next(), f.next()) else {
            continue;
        };
        match fstype {
            "cgroup2" if target == "/sys/fs/cgroup" => v2_root = true,
            "cgroup2" => v2_other = true,
            "cgroup" => v1 = true,
            _ => {}
        }
    }
    match (v2_root, v1, v2_other) {
        (true, _, _) => CgroupLayout::Unified,
        (false, true, true) => CgroupLayout::Hybrid,
        (false, true, false) => CgroupLayout::Legacy,
        (false, false, true) => CgroupLayout::Hybrid,
        (false, false, false) => CgroupLayout::None,
    }
}

/// The shim binary: `helpers.shim`, where a bare name is looked for beside
/// the running `vmpod` first (so an unpacked release or `target/debug`
/// works without PATH), then on PATH.
pub fn shim_binary(config: &crate::config::Config) -> Option<PathBuf> {
    let name = &config.helpers.shim;
    if !name.0.starts_with('/')
        && let Some(dir) = std::env::current_exe()
            .ok()
            .and_then(|e| e.parent().map(PathBuf::from))
    {
        let beside = dir.join(&name.0);
        if is_executable(&beside) {
            return Some(beside);
        }
    }
    which(name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cgroup_layouts() {
        let hybrid = "cgroup /sys/fs/cgroup/cpu cgroup rw 0 0\ncgroup2 /sys/fs/cgroup/unified cgroup2 rw 0 0\n";
        assert_eq!(cgroup_layout_from_mounts(hybrid), CgroupLayout::Hybrid);
        assert_eq!(
            cgroup_layout_from_mounts("cgroup2 /sys/fs/cgroup cgroup2 rw 0 0\n"),
            CgroupLayout::Unified
        );
        assert_eq!(
            cgroup_layout_from_mounts("cgroup /sys/fs/cgroup/memory cgroup rw 0 0\n"),
            CgroupLayout::Legacy
        );
        assert_eq!(
            cgroup_layout_from_mounts("proc /proc proc rw 0 0\n"),
            CgroupLayout::None
        );
    }

    #[test]
    fn which_finds_sh_and_rejects_missing() {
        assert!(which(&Program("sh".into())).is_some());
        assert!(which(&Program("vmpod-no-such-program".into())).is_none());
        assert!(which(&Program("/nonexistent/qemu".into())).is_none());
    }
}
