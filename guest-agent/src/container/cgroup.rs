//! cgroup v2 for containers: `<root>/<parent>/<id>`, normally
//! `/sys/fs/cgroup/vmpod/<id>`.
//!
//! The parent holds no processes itself, so every controller the kernel
//! offers can be enabled for its children (the no-internal-processes
//! rule), and its usage is the pod's. Limits are written as the CRI
//! fields ask; the conversions are the ones runc and crun use for v2.

use std::fs;
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

use tonic::Status;
use tracing::{debug, warn};
use vmpod_agent_proto::v1::{CgroupUsage, Resources};

/// Where the pod's container cgroups live.
#[derive(Debug, Clone)]
pub struct CgroupTree {
    parent: PathBuf,
}

impl CgroupTree {
    pub fn new(root: &Path, parent: &str) -> Self {
        Self {
            parent: root.join(parent),
        }
    }

    pub fn parent(&self) -> &Path {
        &self.parent
    }

    /// Creates the parent and enables, for it and its children, every
    /// controller its own parent offers. Idempotent.
    pub fn ensure_parent(&self) -> Result<(), Status> {
        if let Some(root) = self.parent.parent() {
            enable_controllers(root);
        }
        match fs::create_dir(&self.parent) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
            Err(e) => {
                return Err(Status::failed_precondition(format!(
                    "cannot create the cgroup {}: {e}",
                    self.parent.display()
                )));
            }
        }
        enable_controllers(&self.parent);
        Ok(())
    }

    /// Creates the container's cgroup (an existing one, left over from a
    /// container of the same id, is reused) and applies `resources`.
    pub fn create(&self, id: &str, resources: Option<&Resources>) -> Result<Cgroup, Status> {
        self.ensure_parent()?;
        let dir = self.parent.join(id);
        match fs::create_dir(&dir) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
            Err(e) => {
                return Err(Status::failed_precondition(format!(
                    "cannot create the cgroup {}: {e}",
                    dir.display()
                )));
            }
        }
        let cg = Cgroup { dir };
        if let Some(r) = resources
            && let Err(e) = cg.apply(r)
        {
            let _ = cg.remove();
            return Err(e);
        }
        Ok(cg)
    }
}

/// Writes `+c` for each controller in `dir/cgroup.controllers` into
/// `dir/cgroup.subtree_control`, one at a time so that one the kernel
/// refuses does not keep the others off.
fn enable_controllers(dir: &Path) {
    let Ok(list) = fs::read_to_string(dir.join("cgroup.controllers")) else {
        return;
    };
    let enabled = fs::read_to_string(dir.join("cgroup.subtree_control")).unwrap_or_default();
    for c in list.split_whitespace() {
        if enabled.split_whitespace().any(|e| e == c) {
            continue;
        }
        if let Err(e) = write_file(&dir.join("cgroup.subtree_control"), &format!("+{c}")) {
            debug!(controller = c, dir = %dir.display(), "cannot enable controller: {e}");
        }
    }
}

fn write_file(path: &Path, value: &str) -> io::Result<()> {
    let mut f = fs::OpenOptions::new().write(true).open(path)?;
    f.write_all(value.as_bytes())
}

/// cpu.weight (1-10000) from CPU shares (2-262144), as runc converts.
pub fn shares_to_weight(shares: u64) -> u64 {
    let shares = shares.clamp(2, 262_144);
    1 + ((shares - 2) * 9999) / 262_142
}

/// One container's cgroup.
#[derive(Debug, Clone)]
pub struct Cgroup {
    dir: PathBuf,
}

impl Cgroup {
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn set(&self, file: &str, value: &str) -> Result<(), Status> {
        let path = self.dir.join(file);
        write_file(&path, value).map_err(|e| match e.raw_os_error() {
            Some(libc::ENOENT) => Status::failed_precondition(format!(
                "cannot set {file}: the cgroup has no such file (controller not available in this guest?)"
            )),
            Some(libc::EINVAL) | Some(libc::ERANGE) | Some(libc::EOVERFLOW) => {
                Status::invalid_argument(format!("{file}: the kernel refused {value:?}: {e}"))
            }
            _ => Status::internal(format!("cannot write {value:?} to {}: {e}", path.display())),
        })
    }

    /// Writes the limits `r` asks for; zero values leave a file alone.
    pub fn apply(&self, r: &Resources) -> Result<(), Status> {
        if r.cpu_shares > 0 {
            self.set(
                "cpu.weight",
                &shares_to_weight(r.cpu_shares as u64).to_string(),
            )?;
        }
        if r.cpu_quota != 0 || r.cpu_period != 0 {
            let period = if r.cpu_period > 0 {
                r.cpu_period
            } else {
                100_000
            };
            let quota = if r.cpu_quota > 0 {
                r.cpu_quota.to_string()
            } else {
                "max".to_string()
            };
            self.set("cpu.max", &format!("{quota} {period}"))?;
        }
        if !r.cpuset_cpus.is_empty() {
            self.set("cpuset.cpus", &r.cpuset_cpus)?;
        }
        if !r.cpuset_mems.is_empty() {
            self.set("cpuset.mems", &r.cpuset_mems)?;
        }
        if r.memory_limit_bytes > 0 {
            self.set("memory.max", &r.memory_limit_bytes.to_string())?;
        }
        // CRI's swap limit is memory + swap (the v1 meaning); v2 wants swap
        // alone. A guest without swap has no memory.swap.max: a request
        // for no swap is then already satisfied.
        let swap = match r.memory_swap_limit_bytes {
            -1 => Some("max".to_string()),
            s if s > 0 => Some((s - r.memory_limit_bytes).max(0).to_string()),
            _ => None,
        };
        if let Some(swap) = swap {
            let absent = !self.dir.join("memory.swap.max").exists();
            if !(absent && swap == "0") {
                self.set("memory.swap.max", &swap)?;
            }
        }
        match r.pids_limit {
            -1 => self.set("pids.max", "max")?,
            p if p > 0 => self.set("pids.max", &p.to_string())?,
            _ => {}
        }
        for (size, limit) in &r.hugepage_limits {
            self.set(&format!("hugetlb.{size}.max"), &limit.to_string())?;
        }
        // Raw files last, so they can refine what the fields set.
        for (key, value) in &r.unified {
            self.set(key, value)?;
        }
        Ok(())
    }

    /// SIGKILLs every process in the cgroup (cgroup.kill, Linux 5.14+).
    pub fn kill(&self) -> io::Result<()> {
        write_file(&self.dir.join("cgroup.kill"), "1")
    }

    /// Whether the memory controller killed something in this cgroup.
    pub fn oom_killed(&self) -> bool {
        read_keyed(&self.dir.join("memory.events"), "oom_kill").is_some_and(|n| n > 0)
    }

    /// Kills what is left and removes the directory. The kernel frees a
    /// cgroup only once its last process is gone, which takes a moment
    /// after cgroup.kill; rmdir is retried briefly for that.
    pub fn remove(&self) -> io::Result<()> {
        if !self.dir.exists() {
            return Ok(());
        }
        let _ = self.kill();
        let mut delay = Duration::from_millis(1);
        let mut waited = Duration::ZERO;
        loop {
            match fs::remove_dir(&self.dir) {
                Ok(()) => return Ok(()),
                Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
                Err(e)
                    if e.raw_os_error() == Some(libc::EBUSY) && waited < Duration::from_secs(5) =>
                {
                    std::thread::sleep(delay);
                    waited += delay;
                    delay = (delay * 2).min(Duration::from_millis(100));
                }
                Err(e) => {
                    warn!(dir = %self.dir.display(), "cannot remove cgroup: {e}");
                    return Err(e);
                }
            }
        }
    }
}

/// `key value` lines (cpu.stat, memory.stat, memory.events).
pub fn read_keyed(path: &Path, key: &str) -> Option<u64> {
    let text = fs::read_to_string(path).ok()?;
    parse_keyed(&text, key)
}

fn parse_keyed(text: &str, key: &str) -> Option<u64> {
    text.lines().find_map(|l| {
        let (k, v) = l.split_once(' ')?;
        (k == key).then(|| v.trim().parse().ok()).flatten()
    })
}

fn read_u64(path: &Path) -> Option<u64> {
    fs::read_to_string(path).ok()?.trim().parse().ok()
}

/// Usage of the cgroup at `dir`; files that do not exist (a controller
/// that is off) read as zero.
pub fn usage(dir: &Path) -> CgroupUsage {
    let stat = fs::read_to_string(dir.join("memory.stat")).unwrap_or_default();
    let mem = read_u64(&dir.join("memory.current")).unwrap_or(0);
    let inactive_file = parse_keyed(&stat, "inactive_file").unwrap_or(0);
    CgroupUsage {
        cpu_usage_ns: read_keyed(&dir.join("cpu.stat"), "usage_usec").unwrap_or(0) * 1000,
        memory_usage_bytes: mem,
        memory_working_set_bytes: mem.saturating_sub(inactive_file),
        memory_rss_bytes: parse_keyed(&stat, "anon").unwrap_or(0),
        page_faults: parse_keyed(&stat, "pgfault").unwrap_or(0),
        major_page_faults: parse_keyed(&stat, "pgmajfault").unwrap_or(0),
        // "max" does not parse: unlimited reads as 0.
        memory_limit_bytes: read_u64(&dir.join("memory.max")).unwrap_or(0),
        pids: read_u64(&dir.join("pids.current")).unwrap_or(0),
    }
}

/// The mount point of the cgroup v2 hierarchy, from mountinfo.
pub fn find_cgroup2_mount() -> Option<PathBuf> {
    crate::mounts::current()
        .ok()?
        .into_iter()
        .find(|m| m.fstype == "cgroup2")
        .map(|m| PathBuf::from(m.mount_point))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn weight_conversion() {
        assert_eq!(shares_to_weight(2), 1);
        assert_eq!(shares_to_weight(1024), 39);
        assert_eq!(shares_to_weight(262_144), 10_000);
        assert_eq!(shares_to_weight(0), 1);
    }

    #[test]
    fn keyed_files() {
        let t = "anon 4096\nfile 8192\ninactive_file 100\npgfault 7\n";
        assert_eq!(parse_keyed(t, "anon"), Some(4096));
        assert_eq!(parse_keyed(t, "inactive_file"), Some(100));
        assert_eq!(parse_keyed(t, "file_mapped"), None);
    }

    #[test]
    fn writes_limits_into_files() {
        // A plain directory stands in for the cgroup: the files exist, so
        // what is written can be read back.
        let dir = tempfile::tempdir().unwrap();
        for f in [
            "cpu.weight",
            "cpu.max",
            "memory.max",
            "pids.max",
            "memory.high",
        ] {
            fs::write(dir.path().join(f), "").unwrap();
        }
        let cg = Cgroup {
            dir: dir.path().to_path_buf(),
        };
        cg.apply(&Resources {
            cpu_shares: 1024,
            cpu_quota: 50_000,
            memory_limit_bytes: 1 << 26,
            memory_swap_limit_bytes: 1 << 26,
            pids_limit: -1,
            unified: [("memory.high".to_string(), "32M".to_string())].into(),
            ..Default::default()
        })
        .unwrap();
        let read = |f: &str| fs::read_to_string(dir.path().join(f)).unwrap();
        assert_eq!(read("cpu.weight"), "39");
        assert_eq!(read("cpu.max"), "50000 100000");
        assert_eq!(read("memory.max"), "67108864");
        assert_eq!(read("pids.max"), "max");
        assert_eq!(read("memory.high"), "32M");
        // No memory.swap.max and swap == memory: nothing to do.
        let e = cg
            .apply(&Resources {
                cpuset_cpus: "0".into(),
                ..Default::default()
            })
            .unwrap_err();
        assert_eq!(e.code(), tonic::Code::FailedPrecondition);
        assert!(e.message().contains("cpuset.cpus"));
    }
}
