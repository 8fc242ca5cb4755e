//! Stats: cgroup v2 usage per container and for the pod, the guest's
//! network counters, and the size of each writable layer.

use std::collections::HashSet;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use tonic::Status;
use vmpod_agent_proto::v1::{ContainerUsage, InterfaceUsage, NetworkUsage, StatsResponse};

use super::{Containers, cgroup, now_ns};

/// A walk stops after this many entries: stats must stay cheap even on a
/// writable layer someone filled with millions of files.
const MAX_WALK_ENTRIES: u64 = 1_000_000;

/// du-style usage of a directory tree: allocated bytes and inodes, each
/// hard-linked inode once, not crossing into other filesystems.
pub fn disk_usage(root: &Path) -> (u64, u64) {
    let Ok(meta) = std::fs::symlink_metadata(root) else {
        return (0, 0);
    };
    let dev = meta.dev();
    let mut seen: HashSet<u64> = HashSet::new();
    let (mut bytes, mut inodes, mut visited) = (0u64, 0u64, 0u64);
    let mut stack: Vec<PathBuf> = vec![root.to_path_buf()];
    let mut count = |m: &std::fs::Metadata, bytes: &mut u64, inodes: &mut u64| {
        if m.nlink() > 1 && !m.is_dir() && !seen.insert(m.ino()) {
            return;
        }
        *bytes += m.blocks() * 512;
        *inodes += 1;
    };
    count(&meta, &mut bytes, &mut inodes);
    while let Some(dir) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries.flatten() {
            visited += 1;
            if visited > MAX_WALK_ENTRIES {
                return (bytes, inodes);
            }
            let Ok(m) = entry.metadata() else { continue };
            if m.dev() != dev {
                continue;
            }
            count(&m, &mut bytes, &mut inodes);
            if m.is_dir() {
                stack.push(entry.path());
            }
        }
    }
    (bytes, inodes)
}

/// Sums `/proc/net/dev`, leaving out loopback.
pub fn network_usage(text: &str) -> NetworkUsage {
    let mut total = NetworkUsage::default();
    for line in text.lines().skip(2) {
        let Some((name, rest)) = line.split_once(':') else {
            continue;
        };
        let name = name.trim();
        if name == "lo" {
            continue;
        }
        let f: Vec<u64> = rest
            .split_whitespace()
            .map(|v| v.parse().unwrap_or(0))
            .collect();
        if f.len() < 11 {
            continue;
        }
        let iface = InterfaceUsage {
            name: name.to_string(),
            rx_bytes: f[0],
            rx_errors: f[2],
            tx_bytes: f[8],
            tx_errors: f[10],
        };
        total.rx_bytes += iface.rx_bytes;
        total.rx_errors += iface.rx_errors;
        total.tx_bytes += iface.tx_bytes;
        total.tx_errors += iface.tx_errors;
        total.interfaces.push(iface);
    }
    total
}

impl Containers {
    /// Stats for `ids` (every container when empty).
    pub async fn stats(&self, ids: &[String]) -> Result<StatsResponse, Status> {
        let containers = if ids.is_empty() {
            let mut all: Vec<_> = self.lock_map().values().cloned().collect();
            all.sort_by(|a, b| a.id.cmp(&b.id));
            all
        } else {
            ids.iter()
                .map(|id| self.get(id))
                .collect::<Result<Vec<_>, _>>()?
        };
        let jobs: Vec<(String, PathBuf, String)> = containers
            .iter()
            .map(|c| {
                (
                    c.id.clone(),
                    c.cgroup.dir().to_path_buf(),
                    c.spec.writable_dir.clone(),
                )
            })
            .collect();
        let parent = self.tree.parent().to_path_buf();
        // File reads and tree walks block; keep them off the runtime thread.
        tokio::task::spawn_blocking(move || {
            let containers = jobs
                .into_iter()
                .map(|(id, dir, writable)| {
                    let (writable_bytes, writable_inodes) = if writable.is_empty() {
                        (0, 0)
                    } else {
                        disk_usage(Path::new(&writable))
                    };
                    ContainerUsage {
                        id,
                        usage: Some(cgroup::usage(&dir)),
                        writable_bytes,
                        writable_inodes,
                    }
                })
                .collect();
            let net = std::fs::read_to_string("/proc/net/dev").unwrap_or_default();
            StatsResponse {
                containers,
                pod: Some(cgroup::usage(&parent)),
                network: Some(network_usage(&net)),
                timestamp_ns: now_ns(),
            }
        })
        .await
        .map_err(|e| Status::internal(format!("stats task failed: {e}")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn net_dev() {
        let text = "Inter-|   Receive                                                |  Transmit\n \
 face |bytes    packets errs drop fifo frame compressed multicast|bytes    packets errs drop fifo colls carrier compressed\n    \
lo:  100 1 0 0 0 0 0 0  100 1 0 0 0 0 0 0\n  \
eth0: 2000 10 1 0 0 0 0 0  3000 20 2 0 0 0 0 0\n  \
eth1: 5 1 0 0 0 0 0 0  7 1 0 0 0 0 0 0\n";
        let n = network_usage(text);
        assert_eq!(
            (n.rx_bytes, n.rx_errors, n.tx_bytes, n.tx_errors),
            (2005, 1, 3007, 2)
        );
        assert_eq!(n.interfaces.len(), 2);
        assert_eq!(n.interfaces[0].name, "eth0");
    }

    #[test]
    fn du_counts_hard_links_once() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("a"), vec![1u8; 10_000]).unwrap();
        std::fs::hard_link(dir.path().join("a"), dir.path().join("b")).unwrap();
        std::fs::create_dir(dir.path().join("d")).unwrap();
        std::fs::write(dir.path().join("d/c"), b"x").unwrap();
        let (bytes, inodes) = disk_usage(dir.path());
        // root, a (=b), d, d/c
        assert_eq!(inodes, 4);
        assert!(bytes >= 10_000, "{bytes}");
        assert_eq!(disk_usage(&dir.path().join("missing")), (0, 0));
    }
}
