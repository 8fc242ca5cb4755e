//! What a pod's VM costs the host, read from the pod's host cgroup leaf
//! (shim, VMM, helpers; see [`super::cgroup`]).
//!
//! The guest agent reports usage too, but the guest is not trusted: one that
//! under-reports would dodge kubelet's eviction. The kernel's accounting of
//! the processes that hold the guest's RAM cannot be talked down from
//! inside the VM, so the pod-level figures come from here.

use std::path::{Path, PathBuf};

/// The host's memory figures for a pod, in the shape kubelet's cadvisor
/// path reports a pod cgroup.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Memory {
    /// v2 `memory.current`, v1 `memory.usage_in_bytes`.
    pub usage_bytes: u64,
    pub working_set_bytes: u64,
    /// Anonymous memory: v2 `anon`, v1 `total_rss`.
    pub rss_bytes: u64,
    /// Page cache, including the shared memory that holds the guest's RAM
    /// when it is a memfd: v2 `file`, v1 `total_cache`.
    pub file_bytes: u64,
    pub page_faults: u64,
    pub major_page_faults: u64,
    /// `None` when the leaf has no limit.
    pub limit_bytes: Option<u64>,
}

/// One reading of a pod's leaf. Each half fails on its own: a host may
/// account CPU but not memory (a v2 parent without the memory controller
/// in `cgroup.subtree_control`).
#[derive(Debug)]
pub struct HostUsage {
    /// Cumulative CPU time of every process in the leaf, in ns.
    pub cpu_usage_ns: Result<u64, String>,
    pub memory: Result<Memory, String>,
}

/// v1 reports "no limit" as `PAGE_COUNTER_MAX` pages, rounded down to a
/// page (9223372036854771712 with 4 KiB pages); anything this large is no
/// limit in practice either.
const V1_UNLIMITED: u64 = 1 << 62;

/// Reads the leaf dirs a sandbox recorded (one on v2, one per controller
/// hierarchy on v1).
pub fn read(dirs: &[PathBuf]) -> HostUsage {
    if dirs.is_empty() {
        let none = || "the pod has no host cgroup (the host mounts none)".to_string();
        return HostUsage {
            cpu_usage_ns: Err(none()),
            memory: Err(none()),
        };
    }
    HostUsage {
        cpu_usage_ns: first_of(dirs, read_cpu, "CPU"),
        memory: first_of(dirs, read_memory, "memory"),
    }
}

/// The first dir that has the controller's files answers; `Ok(None)` from
/// a reader means "not this hierarchy".
fn first_of<T>(
    dirs: &[PathBuf],
    reader: fn(&Path) -> Result<Option<T>, String>,
    what: &str,
) -> Result<T, String> {
    for dir in dirs {
        if let Some(v) = reader(dir)? {
            return Ok(v);
        }
    }
    let shown: Vec<String> = dirs.iter().map(|d| d.display().to_string()).collect();
    Err(format!(
        "no {what} accounting in the pod's host cgroup ({})",
        shown.join(", ")
    ))
}

/// A cgroup file's text; `Ok(None)` when the file is not there.
fn read_opt(path: &Path) -> Result<Option<String>, String> {
    match std::fs::read_to_string(path) {
        Ok(s) => Ok(Some(s)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(format!("reading {}: {e}", path.display())),
    }
}

fn read_req(path: &Path) -> Result<String, String> {
    read_opt(path)?.ok_or_else(|| format!("{} is missing", path.display()))
}

fn read_cpu(dir: &Path) -> Result<Option<u64>, String> {
    // v1's cpu controller has a `cpu.stat` too, without `usage_usec`; only
    // cpuacct counts time there.
    if let Some(stat) = read_opt(&dir.join("cpu.stat"))?
        && let Some(usec) = keyed(&stat, "usage_usec")
    {
        return Ok(Some(usec.saturating_mul(1000)));
    }
    let path = dir.join("cpuacct.usage");
    match read_opt(&path)? {
        Some(text) => single(&text)
            .map(Some)
            .ok_or_else(|| format!("{}: not a number: {:?}", path.display(), text.trim())),
        None => Ok(None),
    }
}

fn read_memory(dir: &Path) -> Result<Option<Memory>, String> {
    let ctx = |e: String| format!("{}: {e}", dir.display());
    if let Some(current) = read_opt(&dir.join("memory.current"))? {
        let stat = read_req(&dir.join("memory.stat"))?;
        let max = read_opt(&dir.join("memory.max"))?;
        return memory_v2(&current, &stat, max.as_deref())
            .map(Some)
            .map_err(ctx);
    }
    if let Some(usage) = read_opt(&dir.join("memory.usage_in_bytes"))? {
        let stat = read_req(&dir.join("memory.stat"))?;
        let limit = read_opt(&dir.join("memory.limit_in_bytes"))?;
        return memory_v1(&usage, &stat, limit.as_deref())
            .map(Some)
            .map_err(ctx);
    }
    Ok(None)
}

/// A one-number file (`memory.current`, `cpuacct.usage`).
fn single(text: &str) -> Option<u64> {
    text.trim().parse().ok()
}

/// A value from a flat-keyed file (`memory.stat`, `cpu.stat`): `key value`
/// lines.
fn keyed(text: &str, key: &str) -> Option<u64> {
    text.lines().find_map(|l| {
        let (k, v) = l.split_once(' ')?;
        (k == key).then(|| v.trim().parse().ok()).flatten()
    })
}

/// Working set as kubelet computes it for eviction: usage minus the
/// inactive file cache, never below zero. cadvisor's `setMemoryStats`
/// (container/libcontainer/handler.go) subtracts `inactive_file` on v2 and
/// `total_inactive_file` on v1, and kubelet's node-pressure eviction
/// (kubernetes.io/docs/concepts/scheduling-eviction/node-pressure-eviction)
/// ranks pods by that figure. Inactive file pages are reclaimable without
/// swap, so they are not pressure the pod puts on the node. The guest's RAM
/// (anonymous memory or a memfd, both on the anon LRU) always counts.
fn working_set(usage: u64, inactive_file: u64) -> u64 {
    usage.saturating_sub(inactive_file)
}

fn memory_v2(current: &str, stat: &str, max: Option<&str>) -> Result<Memory, String> {
    let usage = single(current)
        .ok_or_else(|| format!("memory.current: not a number: {:?}", current.trim()))?;
    let field = |k: &str| keyed(stat, k).ok_or_else(|| format!("memory.stat has no {k:?} line"));
    Ok(Memory {
        usage_bytes: usage,
        working_set_bytes: working_set(usage, field("inactive_file")?),
        rss_bytes: field("anon")?,
        file_bytes: field("file")?,
        page_faults: keyed(stat, "pgfault").unwrap_or(0),
        major_page_faults: keyed(stat, "pgmajfault").unwrap_or(0),
        // "max" (no limit) does not parse, nor does a missing file.
        limit_bytes: max.and_then(single),
    })
}

fn memory_v1(usage: &str, stat: &str, limit: Option<&str>) -> Result<Memory, String> {
    let usage_bytes = single(usage)
        .ok_or_else(|| format!("memory.usage_in_bytes: not a number: {:?}", usage.trim()))?;
    // The `total_` lines include descendants; the leaf has none today, but
    // they are what cadvisor reads.
    let field = |k: &str| {
        keyed(stat, &format!("total_{k}"))
            .or_else(|| keyed(stat, k))
            .ok_or_else(|| format!("memory.stat has no {k:?} line"))
    };
    Ok(Memory {
        usage_bytes,
        working_set_bytes: working_set(usage_bytes, field("inactive_file")?),
        rss_bytes: field("rss")?,
        file_bytes: field("cache")?,
        page_faults: field("pgfault").unwrap_or(0),
        major_page_faults: field("pgmajfault").unwrap_or(0),
        limit_bytes: limit.and_then(single).filter(|l| *l < V1_UNLIMITED),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const V2_STAT: &str = "anon 104857600\nfile 52428800\nkernel 1048576\n\
        shmem 41943040\ninactive_anon 0\nactive_anon 146800640\n\
        inactive_file 8388608\nactive_file 2097152\npgfault 12345\npgmajfault 7\n";

    #[test]
    fn v2_memory_figures() {
        let m = memory_v2("160000000\n", V2_STAT, Some("max\n")).unwrap();
        assert_eq!(
            m,
            Memory {
                usage_bytes: 160_000_000,
                working_set_bytes: 160_000_000 - 8_388_608,
                rss_bytes: 104_857_600,
                file_bytes: 52_428_800,
                page_faults: 12345,
                major_page_faults: 7,
                limit_bytes: None,
            }
        );
        let limited = memory_v2("1000\n", V2_STAT, Some("536870912\n")).unwrap();
        assert_eq!(limited.limit_bytes, Some(512 << 20));
        // More inactive file cache than usage (the two are read apart).
        assert_eq!(limited.working_set_bytes, 0);
    }

    #[test]
    fn v2_memory_errors_name_the_file_and_line() {
        let e = memory_v2("lots\n", V2_STAT, None).unwrap_err();
        assert!(e.contains("memory.current") && e.contains("lots"), "{e}");
        let e = memory_v2("1\n", "anon 1\nfile 1\n", None).unwrap_err();
        assert!(e.contains("inactive_file"), "{e}");
    }

    #[test]
    fn v1_memory_prefers_hierarchical_totals() {
        let stat = "cache 100\nrss 200\ninactive_file 50\npgfault 3\npgmajfault 1\n\
            hierarchical_memory_limit 9223372036854771712\n\
            total_cache 4096\ntotal_rss 8192\ntotal_inactive_file 1024\n\
            total_pgfault 30\ntotal_pgmajfault 10\n";
        let m = memory_v1("16384\n", stat, Some("9223372036854771712\n")).unwrap();
        assert_eq!(
            m,
            Memory {
                usage_bytes: 16384,
                working_set_bytes: 16384 - 1024,
                rss_bytes: 8192,
                file_bytes: 4096,
                page_faults: 30,
                major_page_faults: 10,
                limit_bytes: None,
            }
        );
        let flat = "cache 100\nrss 200\ninactive_file 50\n";
        let m = memory_v1("400\n", flat, Some("1048576\n")).unwrap();
        assert_eq!((m.working_set_bytes, m.rss_bytes), (350, 200));
        assert_eq!((m.page_faults, m.limit_bytes), (0, Some(1 << 20)));
    }

    #[test]
    fn keyed_lines_match_whole_keys() {
        let stat = "usage_usec_extra 1\nusage_usec 250\nuser_usec 200\n";
        assert_eq!(keyed(stat, "usage_usec"), Some(250));
        assert_eq!(keyed(stat, "usage"), None);
        assert_eq!(keyed("a x\n", "a"), None);
    }

    fn write(dir: &Path, files: &[(&str, &str)]) {
        std::fs::create_dir_all(dir).unwrap();
        for (name, text) in files {
            std::fs::write(dir.join(name), text).unwrap();
        }
    }

    #[test]
    fn reads_a_v2_leaf() {
        let tmp = tempfile::tempdir().unwrap();
        let leaf = tmp.path().join("vmpod-0123");
        write(
            &leaf,
            &[
                (
                    "cpu.stat",
                    "usage_usec 1500\nuser_usec 1000\nsystem_usec 500\n",
                ),
                ("memory.current", "160000000\n"),
                ("memory.stat", V2_STAT),
                ("memory.max", "max\n"),
            ],
        );
        let u = read(&[leaf]);
        assert_eq!(u.cpu_usage_ns, Ok(1_500_000));
        assert_eq!(u.memory.unwrap().rss_bytes, 104_857_600);
    }

    #[test]
    fn reads_v1_leaves_across_hierarchies() {
        let tmp = tempfile::tempdir().unwrap();
        let cpu = tmp.path().join("cpu/vmpod/vmpod-0123");
        let cpuacct = tmp.path().join("cpuacct/vmpod/vmpod-0123");
        let memory = tmp.path().join("memory/vmpod/vmpod-0123");
        let pids = tmp.path().join("pids/vmpod/vmpod-0123");
        // v1's cpu.stat has no usage_usec: it must not be taken for time.
        write(&cpu, &[("cpu.stat", "nr_periods 0\nnr_throttled 0\n")]);
        write(&cpuacct, &[("cpuacct.usage", "987654321\n")]);
        write(
            &memory,
            &[
                ("memory.usage_in_bytes", "4096\n"),
                (
                    "memory.stat",
                    "total_rss 1024\ntotal_cache 2048\ntotal_inactive_file 512\n",
                ),
                ("memory.limit_in_bytes", "9223372036854771712\n"),
            ],
        );
        write(&pids, &[("pids.current", "3\n")]);
        let u = read(&[cpu, pids, memory, cpuacct]);
        assert_eq!(u.cpu_usage_ns, Ok(987_654_321));
        assert_eq!(u.memory.unwrap().working_set_bytes, 3584);
    }

    #[test]
    fn missing_accounting_is_an_error_per_half() {
        let tmp = tempfile::tempdir().unwrap();
        let leaf = tmp.path().join("vmpod-0123");
        write(&leaf, &[("cpu.stat", "usage_usec 7\n")]);
        let u = read(std::slice::from_ref(&leaf));
        assert_eq!(u.cpu_usage_ns, Ok(7000));
        let e = u.memory.unwrap_err();
        assert!(
            e.contains("no memory accounting") && e.contains("vmpod-0123"),
            "{e}"
        );
        // memory.current without memory.stat is a broken leaf, named.
        write(&leaf, &[("memory.current", "1\n")]);
        let e = read(std::slice::from_ref(&leaf)).memory.unwrap_err();
        assert!(e.contains("memory.stat is missing"), "{e}");
        let e = read(&[]).cpu_usage_ns.unwrap_err();
        assert!(e.contains("no host cgroup"), "{e}");
        let gone = tmp.path().join("gone");
        assert!(
            read(&[gone])
                .memory
                .unwrap_err()
                .contains("no memory accounting")
        );
    }
}
