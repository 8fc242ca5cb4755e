//! Host cgroups for a pod's processes (shim, VMM, helpers).
//!
//! kubelet accounts a pod's host usage under its `cgroup_parent`, so the
//! processes that make up the VM belong there, in a leaf of their own. The
//! shim joins the leaf itself before it spawns anything (it is handed the
//! `cgroup.procs` files), so no helper ever runs outside it. On cgroup v1 and
//! hybrid hosts, as here, the leaf is made in each accounting controller.

use std::path::{Path, PathBuf};

use crate::config::CgroupDriver;
use crate::host::CgroupLayout;

const CGROUP_ROOT: &str = "/sys/fs/cgroup";
/// v1 controllers that account a pod's usage. cpuset is left out: a v1
/// cpuset leaf needs cpus/mems copied in before it accepts tasks, and the
/// VM's vCPU count already bounds its CPU use.
const V1_CONTROLLERS: &[&str] = &["cpu", "cpuacct", "memory", "pids", "blkio"];

/// Where the pod's leaf goes, relative to a hierarchy root.
pub fn leaf_path(parent: &str, driver: CgroupDriver, sandbox_id: &str) -> Result<PathBuf, String> {
    let parent = match (driver, parent) {
        (_, "") => PathBuf::from("vmpod"),
        (CgroupDriver::Systemd, p) => expand_slice(p)?,
        (CgroupDriver::Cgroupfs, p) => relative_clean(p)?,
    };
    Ok(parent.join(format!("vmpod-{}", &sandbox_id[..sandbox_id.len().min(16)])))
}

/// `a-b-c.slice` → `a.slice/a-b.slice/a-b-c.slice`, systemd's nesting rule.
fn expand_slice(slice: &str) -> Result<PathBuf, String> {
    let name = slice.strip_suffix(".slice").ok_or_else(|| {
        format!("cgroup_parent {slice:?} is not a systemd slice (driver is systemd)")
    })?;
    if name.is_empty() || name.contains('/') || name.starts_with('-') || name.ends_with('-') {
        return Err(format!(
            "cgroup_parent {slice:?} is not a valid systemd slice name"
        ));
    }
    if name == "-" {
        return Ok(PathBuf::new());
    }
    let mut path = PathBuf::new();
    let mut prefix = String::new();
    for part in name.split('-') {
        if part.is_empty() {
            return Err(format!(
                "cgroup_parent {slice:?} has an empty slice component"
            ));
        }
        if !prefix.is_empty() {
            prefix.push('-');
        }
        prefix.push_str(part);
        path.push(format!("{prefix}.slice"));
    }
    Ok(path)
}

/// A cgroupfs parent must stay inside the hierarchy: no `..`.
fn relative_clean(p: &str) -> Result<PathBuf, String> {
    let mut out = PathBuf::new();
    for c in Path::new(p).components() {
        match c {
            std::path::Component::Normal(n) => out.push(n),
            std::path::Component::RootDir | std::path::Component::CurDir => {}
            _ => return Err(format!("cgroup_parent {p:?} must not contain \"..\"")),
        }
    }
    Ok(out)
}

/// The leaf dirs [`create`] will make, so they can be recorded first.
pub fn planned(leaf: &Path, layout: CgroupLayout) -> Vec<PathBuf> {
    roots(layout).into_iter().map(|r| r.join(leaf)).collect()
}

fn roots(layout: CgroupLayout) -> Vec<PathBuf> {
    match layout {
        CgroupLayout::Unified => vec![PathBuf::from(CGROUP_ROOT)],
        CgroupLayout::Hybrid | CgroupLayout::Legacy => v1_roots(),
        CgroupLayout::None => Vec::new(),
    }
}

/// Creates the leaf in every hierarchy that accounts pods and returns the
/// leaf dirs. Parents are created as needed (kubelet normally made them) and
/// left in place on removal.
///
/// On cgroup v2 the leaf's memory limit ([`limit_memory`]) needs the memory
/// controller enabled down to the leaf, which a parent we created has not.
pub fn create(leaf: &Path, layout: CgroupLayout) -> Result<Vec<PathBuf>, String> {
    let mut made = Vec::new();
    for root in roots(layout) {
        let dir = root.join(leaf);
        if let Err(e) = std::fs::create_dir_all(&dir) {
            remove(&made);
            return Err(format!("cannot create cgroup {}: {e}", dir.display()));
        }
        if layout == CgroupLayout::Unified {
            delegate_v2(&root, leaf);
        }
        made.push(dir);
    }
    Ok(made)
}

/// Enables the memory and pids controllers in each ancestor of `leaf`
/// (from the root down), so the leaf gets `memory.max` and `pids.max`.
/// Best effort: kubelet's parents already have them, and a parent that
/// holds processes refuses (no internal processes); then [`limit_memory`]
/// finds no `memory.max` and the pod runs unlimited (logged).
fn delegate_v2(root: &Path, leaf: &Path) {
    let mut dir = root.to_path_buf();
    for part in leaf.components() {
        let file = dir.join("cgroup.subtree_control");
        for controller in ["+memory", "+pids"] {
            if let Err(e) = std::fs::write(&file, controller) {
                tracing::debug!("{controller} in {}: {e}", file.display());
            }
        }
        dir.push(part);
    }
}

/// Limits the memory of the pod's leaf dirs (as [`create`] made them) to
/// `bytes`: `memory.max` on v2, `memory.limit_in_bytes` in the v1 memory
/// hierarchy; the other hierarchies have neither file. One limit for the
/// pod's host processes together (shim, VMM, helpers) rather than one per
/// helper: a helper's share would have to be guessed, while the sum is
/// known, and per-helper limits need sub-cgroups, which cgroup v2 forbids
/// beside the shim's own membership. Set before the shim starts, so
/// everything it spawns is covered. Returns the files written.
pub fn limit_memory(dirs: &[PathBuf], bytes: u64) -> Result<Vec<PathBuf>, String> {
    let mut written = Vec::new();
    for dir in dirs {
        let Some(file) = ["memory.max", "memory.limit_in_bytes"]
            .iter()
            .map(|f| dir.join(f))
            .find(|f| f.exists())
        else {
            continue;
        };
        std::fs::write(&file, bytes.to_string()).map_err(|e| {
            format!(
                "cannot set the pod's memory limit in {}: {e}",
                file.display()
            )
        })?;
        written.push(file);
    }
    Ok(written)
}

/// Mount points of the v1 controllers we use, each once (cpu and cpuacct
/// are often co-mounted).
fn v1_roots() -> Vec<PathBuf> {
    let mounts = std::fs::read_to_string("/proc/self/mounts").unwrap_or_default();
    let mut roots: Vec<PathBuf> = Vec::new();
    for line in mounts.lines() {
        let f: Vec<&str> = line.split_whitespace().collect();
        if f.len() < 4 || f[2] != "cgroup" {
            continue;
        }
        let opts: Vec<&str> = f[3].split(',').collect();
        if V1_CONTROLLERS.iter().any(|c| opts.contains(c)) {
            let p = PathBuf::from(f[1]);
            if !roots.contains(&p) {
                roots.push(p);
            }
        }
    }
    roots
}

/// Removes leaf dirs. A leaf still holding a process (a shim that has not
/// exited yet) is retried briefly, then reported. Whatever is still in a
/// pod's leaf when it goes is killed first: the shim is stopped by then,
/// and QEMU, which drops root itself (`-runas`), loses the parent-death
/// signal with it, so a QEMU whose shim was SIGKILLed would otherwise run
/// on.
pub fn remove(dirs: &[PathBuf]) -> Vec<String> {
    let mut errors = Vec::new();
    for dir in dirs {
        let mut last = None;
        for _ in 0..50 {
            kill_leftovers(dir);
            match std::fs::remove_dir(dir) {
                Ok(()) => {
                    last = None;
                    break;
                }
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                    last = None;
                    break;
                }
                Err(e) => {
                    last = Some(e);
                    std::thread::sleep(std::time::Duration::from_millis(20));
                }
            }
        }
        if let Some(e) = last {
            errors.push(format!("cannot remove cgroup {}: {e}", dir.display()));
        }
    }
    errors
}

/// SIGKILLs every process in a pod's leaf: `cgroup.kill` on v2, each pid of
/// `cgroup.procs` on v1. Only a dir named `vmpod-…` is touched, so a
/// corrupt record can never kill anything outside a pod.
fn kill_leftovers(dir: &Path) {
    let is_pod_leaf = dir
        .file_name()
        .and_then(|n| n.to_str())
        .is_some_and(|n| n.starts_with("vmpod-"));
    if !is_pod_leaf {
        return;
    }
    let kill = dir.join("cgroup.kill");
    if kill.exists() && std::fs::write(&kill, "1").is_ok() {
        return;
    }
    let Ok(procs) = std::fs::read_to_string(procs_file(dir)) else {
        return;
    };
    for pid in procs.lines().filter_map(|l| l.trim().parse::<i32>().ok()) {
        if pid > 0 {
            tracing::warn!(pid, cgroup = %dir.display(), "killing a process left in the pod's cgroup");
            // SAFETY: kill with a positive pid and a valid signal.
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
    }
}

/// The `cgroup.procs` file the shim writes its pid to.
pub fn procs_file(dir: &Path) -> PathBuf {
    dir.join("cgroup.procs")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The limit goes where each hierarchy keeps it (files as the kernel
    /// shows them: v2, v1 memory, v1 cpu), and nowhere else.
    #[test]
    fn the_memory_limit_lands_in_each_memory_hierarchy() {
        let tmp = tempfile::tempdir().unwrap();
        let (v2, v1mem, v1cpu) = (
            tmp.path().join("v2"),
            tmp.path().join("mem"),
            tmp.path().join("cpu"),
        );
        for d in [&v2, &v1mem, &v1cpu] {
            std::fs::create_dir(d).unwrap();
        }
        std::fs::write(v2.join("memory.max"), "max").unwrap();
        std::fs::write(v1mem.join("memory.limit_in_bytes"), "9223372036854771712").unwrap();
        std::fs::write(v1cpu.join("cpu.shares"), "1024").unwrap();
        let written = limit_memory(&[v2.clone(), v1mem.clone(), v1cpu.clone()], 768 << 20).unwrap();
        assert_eq!(
            written,
            [v2.join("memory.max"), v1mem.join("memory.limit_in_bytes")]
        );
        for f in &written {
            assert_eq!(
                std::fs::read_to_string(f).unwrap(),
                (768u64 << 20).to_string()
            );
        }
        assert_eq!(std::fs::read_dir(&v1cpu).unwrap().count(), 1);
        assert!(limit_memory(&[], 1).unwrap().is_empty());
    }

    #[test]
    fn systemd_slices_expand() {
        let p = leaf_path(
            "kubepods-besteffort-pod12.slice",
            CgroupDriver::Systemd,
            "abcdef",
        )
        .unwrap();
        assert_eq!(
            p,
            PathBuf::from(
                "kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod12.slice/vmpod-abcdef"
            )
        );
        assert!(leaf_path("kubepods", CgroupDriver::Systemd, "a").is_err());
    }

    #[test]
    fn cgroupfs_parent_is_confined() {
        let p = leaf_path(
            "/kubepods/burstable/pod1",
            CgroupDriver::Cgroupfs,
            "0123456789abcdef0123",
        )
        .unwrap();
        assert_eq!(
            p,
            PathBuf::from("kubepods/burstable/pod1/vmpod-0123456789abcdef")
        );
        assert!(leaf_path("/kubepods/../../etc", CgroupDriver::Cgroupfs, "a").is_err());
        assert_eq!(
            leaf_path("", CgroupDriver::Cgroupfs, "a").unwrap(),
            PathBuf::from("vmpod/vmpod-a")
        );
    }
}
