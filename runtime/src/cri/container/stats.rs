//! Container and pod stats: `ContainerStats`, `ListContainerStats`,
//! `PodSandboxStats`, `ListPodSandboxStats`, `ListMetricDescriptors` and
//! `ListPodSandboxMetrics`. Per-container figures come from the guest's
//! cgroup v2 files through one agent `Stats` call per pod. A pod's own CPU
//! and memory, which kubelet uses to pick pods to evict, are the host's
//! accounting of the pod's VM processes ([`host_stats`]): a hostile guest
//! could under-report its total, and the VM's overhead is the pod's too.
//! Where the host accounts nothing (no cgroups, no memory controller) the
//! guest's total is reported instead.
//!
//! `usage_nano_cores` is a rate, so it needs two samples: the previous one
//! of each container and pod is kept here, and the first sample of a
//! container reports no rate (as kubelet's own cadvisor path does).

use std::collections::HashMap;
use std::sync::{Arc, LazyLock, Mutex};

use tonic::Status;
use vmpod_agent_proto::v1 as agent;
use vmpod_cri_api::v1 as cri;

use super::{attributes, sandbox_of};
use crate::container::{self, is_live};
use crate::cri::sandbox::{cri_metadata as sandbox_metadata, store_err};
use crate::daemon::Daemon;
use crate::sandbox::host_stats::{self, HostUsage};
use crate::state::{ContainerRecord, SandboxRecord, SandboxState};

/// (timestamp ns, cumulative cpu ns) of the last sample per container or
/// pod; a pod's host samples are kept under [`host_key`], since they are on
/// another clock and count other processes than the guest's.
static CPU_SAMPLES: LazyLock<Mutex<HashMap<String, (i64, u64)>>> =
    LazyLock::new(|| Mutex::new(HashMap::new()));

fn u64v(value: u64) -> Option<cri::UInt64Value> {
    Some(cri::UInt64Value { value })
}

fn nano_cores(key: &str, ts: i64, cpu_ns: u64) -> Option<cri::UInt64Value> {
    let mut samples = CPU_SAMPLES.lock().unwrap_or_else(|p| p.into_inner());
    let prev = samples.insert(key.to_string(), (ts, cpu_ns));
    let (pts, pcpu) = prev?;
    let dt = u64::try_from(ts.checked_sub(pts)?)
        .ok()
        .filter(|d| *d > 0)?;
    let used = cpu_ns.checked_sub(pcpu)?;
    u64v((u128::from(used) * 1_000_000_000 / u128::from(dt)) as u64)
}

fn host_key(sandbox_id: &str) -> String {
    format!("host/{sandbox_id}")
}

fn cpu(key: &str, ts: i64, cpu_ns: u64) -> cri::CpuUsage {
    cri::CpuUsage {
        timestamp: ts,
        usage_core_nano_seconds: u64v(cpu_ns),
        usage_nano_cores: nano_cores(key, ts, cpu_ns),
        psi: None,
    }
}

fn memory(ts: i64, u: &agent::CgroupUsage) -> cri::MemoryUsage {
    cri::MemoryUsage {
        timestamp: ts,
        working_set_bytes: u64v(u.memory_working_set_bytes),
        available_bytes: (u.memory_limit_bytes > 0)
            .then(|| {
                u.memory_limit_bytes
                    .saturating_sub(u.memory_working_set_bytes)
            })
            .and_then(u64v),
        usage_bytes: u64v(u.memory_usage_bytes),
        rss_bytes: u64v(u.memory_rss_bytes),
        page_faults: u64v(u.page_faults),
        major_page_faults: u64v(u.major_page_faults),
        psi: None,
    }
}

fn container_stats(
    daemon: &Daemon,
    rec: &ContainerRecord,
    ts: i64,
    u: &agent::ContainerUsage,
) -> cri::ContainerStats {
    let usage = u.usage.unwrap_or_default();
    cri::ContainerStats {
        attributes: Some(attributes(rec)),
        cpu: Some(cpu(&rec.id, ts, usage.cpu_usage_ns)),
        memory: Some(memory(ts, &usage)),
        writable_layer: Some(cri::FilesystemUsage {
            timestamp: ts,
            fs_id: Some(cri::FilesystemIdentifier {
                mountpoint: daemon.content.root().display().to_string(),
            }),
            used_bytes: u64v(u.writable_bytes),
            inodes_used: u64v(u.writable_inodes),
        }),
        swap: None,
        io: None,
    }
}

/// One pod's stats: its live containers and the pod totals. A pod whose VM
/// does not answer has no stats (rather than zeros, which would read as
/// "idle").
async fn sample(
    sandbox: &SandboxRecord,
    containers: &[ContainerRecord],
) -> Result<agent::StatsResponse, Status> {
    let mut client = container::shim_client(sandbox).await?;
    let resp = client
        .stats(agent::StatsRequest {
            ids: containers.iter().map(|c| c.id.clone()).collect(),
        })
        .await
        .map_err(|e| container::shim_err("reading stats in the pod VM", e))?
        .into_inner();
    Ok(resp)
}

fn live_containers_of(daemon: &Daemon, sandbox_id: &str) -> Result<Vec<ContainerRecord>, Status> {
    Ok(container::containers_of(daemon, sandbox_id)
        .map_err(store_err)?
        .into_iter()
        .filter(is_live)
        .collect())
}

/// The ready sandboxes a stats filter selects.
fn ready_sandboxes(
    daemon: &Daemon,
    filter: &cri::PodSandboxStatsFilter,
) -> Result<Vec<SandboxRecord>, Status> {
    Ok(daemon
        .store
        .list_sandboxes()
        .map_err(store_err)?
        .into_iter()
        .filter(|s| s.state == SandboxState::Ready)
        .filter(|s| filter.id.is_empty() || s.id.starts_with(&filter.id))
        .filter(|s| {
            filter
                .label_selector
                .iter()
                .all(|(k, v)| s.labels.get(k) == Some(v))
        })
        .collect())
}

pub async fn container_stats_call(
    daemon: &Arc<Daemon>,
    req: cri::ContainerStatsRequest,
) -> Result<cri::ContainerStatsResponse, Status> {
    let rec = super::get_fresh(daemon, &req.container_id).await?;
    if !is_live(&rec) {
        return Err(Status::failed_precondition(format!(
            "container {} is not running",
            rec.id
        )));
    }
    let sandbox = sandbox_of(daemon, &rec)?;
    let resp = sample(&sandbox, std::slice::from_ref(&rec)).await?;
    let usage = resp
        .containers
        .iter()
        .find(|u| u.id == rec.id)
        .ok_or_else(|| Status::not_found(format!("no stats for container {} in its VM", rec.id)))?;
    Ok(cri::ContainerStatsResponse {
        stats: Some(container_stats(daemon, &rec, resp.timestamp_ns, usage)),
    })
}

pub async fn list_container_stats(
    daemon: &Arc<Daemon>,
    req: cri::ListContainerStatsRequest,
) -> Result<cri::ListContainerStatsResponse, Status> {
    container::refresh_all(daemon).await?;
    let filter = req.filter.unwrap_or_default();
    let wanted: Vec<ContainerRecord> = daemon
        .store
        .list_containers()
        .map_err(store_err)?
        .into_iter()
        .filter(is_live)
        .filter(|r| filter.id.is_empty() || r.id.starts_with(&filter.id))
        .filter(|r| {
            filter.pod_sandbox_id.is_empty() || r.sandbox_id.starts_with(&filter.pod_sandbox_id)
        })
        .filter(|r| {
            filter
                .label_selector
                .iter()
                .all(|(k, v)| r.labels.get(k) == Some(v))
        })
        .collect();
    let mut by_sandbox: HashMap<String, Vec<ContainerRecord>> = HashMap::new();
    for r in wanted {
        by_sandbox.entry(r.sandbox_id.clone()).or_default().push(r);
    }
    let mut stats = Vec::new();
    for (sandbox_id, recs) in by_sandbox {
        let Some(sandbox) = daemon.store.get_sandbox(&sandbox_id).map_err(store_err)? else {
            continue;
        };
        match sample(&sandbox, &recs).await {
            Ok(resp) => {
                for rec in &recs {
                    if let Some(u) = resp.containers.iter().find(|u| u.id == rec.id) {
                        stats.push(container_stats(daemon, rec, resp.timestamp_ns, u));
                    }
                }
            }
            Err(e) => {
                tracing::debug!(sandbox = %sandbox_id, error = %e.message(), "no stats for pod");
            }
        }
    }
    Ok(cri::ListContainerStatsResponse { stats })
}

/// Devices the guest kernel creates by itself for IPv6 and IP tunnels.
fn is_tunnel_device(name: &str) -> bool {
    [
        "sit", "tunl", "ip6tnl", "ip6gre", "gre", "gretap", "erspan", "ip_vti", "ip6_vti",
    ]
    .iter()
    .any(|p| name.starts_with(p) && name[p.len()..].bytes().all(|b| b.is_ascii_digit()))
}

/// The host's memory figures in the guest's message shape, so that both
/// go through the one CRI conversion.
fn host_memory(m: &host_stats::Memory) -> agent::CgroupUsage {
    agent::CgroupUsage {
        memory_usage_bytes: m.usage_bytes,
        memory_working_set_bytes: m.working_set_bytes,
        memory_rss_bytes: m.rss_bytes,
        page_faults: m.page_faults,
        major_page_faults: m.major_page_faults,
        memory_limit_bytes: m.limit_bytes.unwrap_or(0),
        ..Default::default()
    }
}

/// The pod-level CPU and memory: the host's figures (on the host's clock),
/// each replaced by the guest's only where the host has none.
fn pod_usage(
    sandbox_id: &str,
    guest_ts: i64,
    guest: &agent::CgroupUsage,
    host: &HostUsage,
    host_ts: i64,
) -> (cri::CpuUsage, cri::MemoryUsage) {
    let cpu_usage = match &host.cpu_usage_ns {
        Ok(ns) => cpu(&host_key(sandbox_id), host_ts, *ns),
        Err(e) => {
            tracing::debug!(sandbox = sandbox_id, error = %e, "pod CPU from the guest");
            cpu(sandbox_id, guest_ts, guest.cpu_usage_ns)
        }
    };
    let memory_usage = match &host.memory {
        Ok(m) => {
            // The guest's own total stays visible for debugging only; it
            // must not decide anything.
            tracing::debug!(
                sandbox = sandbox_id,
                host_working_set = m.working_set_bytes,
                host_file = m.file_bytes,
                guest_working_set = guest.memory_working_set_bytes,
                "pod memory"
            );
            memory(host_ts, &host_memory(m))
        }
        Err(e) => {
            tracing::debug!(sandbox = sandbox_id, error = %e, "pod memory from the guest");
            memory(guest_ts, guest)
        }
    };
    (cpu_usage, memory_usage)
}

fn pod_stats(
    daemon: &Daemon,
    sandbox: &SandboxRecord,
    containers: &[ContainerRecord],
    resp: &agent::StatsResponse,
) -> cri::PodSandboxStats {
    let ts = resp.timestamp_ns;
    let pod = resp.pod.unwrap_or_default();
    // Read right after the guest's sample, so the two describe one moment.
    let host_ts = crate::clock::unix_nanos();
    let host = host_stats::read(&sandbox.cgroups);
    let (pod_cpu, pod_memory) = pod_usage(&sandbox.id, ts, &pod, &host, host_ts);
    let net = resp.network.clone().unwrap_or_default();
    let iface = |i: &agent::InterfaceUsage| cri::NetworkInterfaceUsage {
        name: i.name.clone(),
        rx_bytes: u64v(i.rx_bytes),
        rx_errors: u64v(i.rx_errors),
        tx_bytes: u64v(i.tx_bytes),
        tx_errors: u64v(i.tx_errors),
    };
    // The guest kernel's own tunnel devices (sit0 and the like) are not
    // pod networks; the default interface is eth0, else the first other one.
    let pod_nets: Vec<&agent::InterfaceUsage> = net
        .interfaces
        .iter()
        .filter(|i| !is_tunnel_device(&i.name))
        .collect();
    let interfaces: Vec<cri::NetworkInterfaceUsage> = pod_nets.iter().map(|i| iface(i)).collect();
    let default_interface = pod_nets
        .iter()
        .find(|i| i.name == "eth0")
        .or_else(|| pod_nets.first())
        .map(|i| iface(i));
    cri::PodSandboxStats {
        attributes: Some(cri::PodSandboxAttributes {
            id: sandbox.id.clone(),
            metadata: Some(sandbox_metadata(sandbox)),
            labels: sandbox.labels.clone().into_iter().collect(),
            annotations: sandbox.annotations.clone().into_iter().collect(),
        }),
        linux: Some(cri::LinuxPodSandboxStats {
            cpu: Some(pod_cpu),
            memory: Some(pod_memory),
            network: Some(cri::NetworkUsage {
                timestamp: ts,
                default_interface,
                interfaces,
            }),
            process: Some(cri::ProcessUsage {
                timestamp: ts,
                process_count: u64v(pod.pids),
            }),
            containers: containers
                .iter()
                .filter_map(|rec| {
                    resp.containers
                        .iter()
                        .find(|u| u.id == rec.id)
                        .map(|u| container_stats(daemon, rec, ts, u))
                })
                .collect(),
            io: None,
        }),
        windows: None,
    }
}

pub async fn pod_sandbox_stats(
    daemon: &Arc<Daemon>,
    req: cri::PodSandboxStatsRequest,
) -> Result<cri::PodSandboxStatsResponse, Status> {
    let sandbox = crate::cri::sandbox::find(daemon, &req.pod_sandbox_id)?
        .ok_or_else(|| Status::not_found(format!("sandbox {:?} not found", req.pod_sandbox_id)))?;
    if sandbox.state != SandboxState::Ready {
        return Err(Status::failed_precondition(format!(
            "sandbox {} is not ready",
            sandbox.id
        )));
    }
    container::refresh(daemon, &sandbox.id).await?;
    let containers = live_containers_of(daemon, &sandbox.id)?;
    let resp = sample(&sandbox, &containers).await?;
    Ok(cri::PodSandboxStatsResponse {
        stats: Some(pod_stats(daemon, &sandbox, &containers, &resp)),
    })
}

pub async fn list_pod_sandbox_stats(
    daemon: &Arc<Daemon>,
    req: cri::ListPodSandboxStatsRequest,
) -> Result<cri::ListPodSandboxStatsResponse, Status> {
    container::refresh_all(daemon).await?;
    let filter = req.filter.unwrap_or_default();
    let mut stats = Vec::new();
    for sandbox in ready_sandboxes(daemon, &filter)? {
        let containers = live_containers_of(daemon, &sandbox.id)?;
        match sample(&sandbox, &containers).await {
            Ok(resp) => stats.push(pod_stats(daemon, &sandbox, &containers, &resp)),
            Err(e) => {
                tracing::debug!(sandbox = %sandbox.id, error = %e.message(), "no stats for pod")
            }
        }
    }
    Ok(cri::ListPodSandboxStatsResponse { stats })
}

/// The metrics vmpod reports, cadvisor's names where the unit fits in an
/// integer. Containers carry label `container`, pods `pod`.
const METRICS: &[(&str, &str, cri::MetricType)] = &[
    (
        "container_cpu_usage_nanoseconds_total",
        "Cumulative CPU time consumed, in nanoseconds",
        cri::MetricType::Counter,
    ),
    (
        "container_memory_usage_bytes",
        "Current memory usage, including all memory regardless of when it was accessed",
        cri::MetricType::Gauge,
    ),
    (
        "container_memory_working_set_bytes",
        "Current working set: usage minus inactive file cache",
        cri::MetricType::Gauge,
    ),
    (
        "container_memory_rss",
        "Size of anonymous memory",
        cri::MetricType::Gauge,
    ),
    (
        "container_memory_failures_total",
        "Cumulative page faults",
        cri::MetricType::Counter,
    ),
];

pub fn list_metric_descriptors() -> cri::ListMetricDescriptorsResponse {
    let mut descriptors: Vec<cri::MetricDescriptor> = METRICS
        .iter()
        .map(|(name, help, _)| cri::MetricDescriptor {
            name: (*name).to_string(),
            help: (*help).to_string(),
            label_keys: vec!["container".into()],
        })
        .collect();
    descriptors.extend([
        cri::MetricDescriptor {
            name: "container_network_receive_bytes_total".into(),
            help: "Cumulative bytes received by the pod".into(),
            label_keys: vec!["interface".into()],
        },
        cri::MetricDescriptor {
            name: "container_network_transmit_bytes_total".into(),
            help: "Cumulative bytes transmitted by the pod".into(),
            label_keys: vec!["interface".into()],
        },
    ]);
    cri::ListMetricDescriptorsResponse { descriptors }
}

fn usage_metrics(label: &str, ts: i64, u: &agent::CgroupUsage) -> Vec<cri::Metric> {
    let values = [
        u.cpu_usage_ns,
        u.memory_usage_bytes,
        u.memory_working_set_bytes,
        u.memory_rss_bytes,
        u.page_faults,
    ];
    METRICS
        .iter()
        .zip(values)
        .map(|((name, _, ty), value)| cri::Metric {
            name: (*name).to_string(),
            timestamp: ts,
            metric_type: (*ty).into(),
            label_values: vec![label.to_string()],
            value: u64v(value),
        })
        .collect()
}

pub async fn list_pod_sandbox_metrics(
    daemon: &Arc<Daemon>,
) -> Result<cri::ListPodSandboxMetricsResponse, Status> {
    container::refresh_all(daemon).await?;
    let mut pod_metrics = Vec::new();
    for sandbox in ready_sandboxes(daemon, &cri::PodSandboxStatsFilter::default())? {
        let containers = live_containers_of(daemon, &sandbox.id)?;
        let resp = match sample(&sandbox, &containers).await {
            Ok(resp) => resp,
            Err(e) => {
                tracing::debug!(sandbox = %sandbox.id, error = %e.message(), "no metrics for pod");
                continue;
            }
        };
        let ts = resp.timestamp_ns;
        let mut metrics = Vec::new();
        let net = resp.network.clone().unwrap_or_default();
        for i in net.interfaces.iter().filter(|i| !is_tunnel_device(&i.name)) {
            for (name, v) in [
                ("container_network_receive_bytes_total", i.rx_bytes),
                ("container_network_transmit_bytes_total", i.tx_bytes),
            ] {
                metrics.push(cri::Metric {
                    name: name.to_string(),
                    timestamp: ts,
                    metric_type: cri::MetricType::Counter.into(),
                    label_values: vec![i.name.clone()],
                    value: u64v(v),
                });
            }
        }
        let container_metrics = containers
            .iter()
            .filter_map(|rec| {
                let u = resp.containers.iter().find(|u| u.id == rec.id)?;
                Some(cri::ContainerMetrics {
                    container_id: rec.id.clone(),
                    metrics: usage_metrics(&rec.metadata.name, ts, &u.usage.unwrap_or_default()),
                })
            })
            .collect();
        pod_metrics.push(cri::PodSandboxMetrics {
            pod_sandbox_id: sandbox.id.clone(),
            metrics,
            container_metrics,
        });
    }
    Ok(cri::ListPodSandboxMetricsResponse { pod_metrics })
}

/// Drops the CPU samples of removed containers and pods.
pub fn forget(ids: &[String]) {
    let mut samples = CPU_SAMPLES.lock().unwrap_or_else(|p| p.into_inner());
    for id in ids {
        samples.remove(id);
        samples.remove(&host_key(id));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn guest() -> agent::CgroupUsage {
        agent::CgroupUsage {
            cpu_usage_ns: 5,
            memory_usage_bytes: 1 << 20,
            memory_working_set_bytes: 1 << 20,
            memory_limit_bytes: 256 << 20,
            ..Default::default()
        }
    }

    #[test]
    fn pod_usage_is_the_hosts_with_its_own_cpu_samples() {
        let id = "pod-usage-host";
        let host = |cpu_ns: u64| HostUsage {
            cpu_usage_ns: Ok(cpu_ns),
            memory: Ok(host_stats::Memory {
                usage_bytes: 300 << 20,
                working_set_bytes: 200 << 20,
                rss_bytes: 20 << 20,
                file_bytes: 280 << 20,
                page_faults: 9,
                major_page_faults: 1,
                limit_bytes: Some(512 << 20),
            }),
        };
        let (c, m) = pod_usage(id, 10, &guest(), &host(1_000_000_000), 1_000_000_000);
        assert_eq!(c.usage_core_nano_seconds, u64v(1_000_000_000));
        assert_eq!(c.usage_nano_cores, None);
        assert_eq!(m.working_set_bytes, u64v(200 << 20));
        assert_eq!(m.available_bytes, u64v(312 << 20));
        assert_eq!(m.timestamp, 1_000_000_000);
        // A guest sample in between must not be the host's previous one.
        let _ = cpu(id, 20, 7);
        let (c, _) = pod_usage(id, 30, &guest(), &host(1_500_000_000), 2_000_000_000);
        assert_eq!(c.usage_nano_cores, u64v(500_000_000));
        forget(&[id.to_string()]);
        let (c, _) = pod_usage(id, 30, &guest(), &host(2_000_000_000), 3_000_000_000);
        assert_eq!(c.usage_nano_cores, None);
        forget(&[id.to_string()]);
    }

    #[test]
    fn pod_usage_falls_back_to_the_guest_per_half() {
        let host = HostUsage {
            cpu_usage_ns: Ok(42_000),
            memory: Err("no memory accounting".into()),
        };
        let (c, m) = pod_usage("pod-usage-guest", 10, &guest(), &host, 99);
        assert_eq!((c.usage_core_nano_seconds, c.timestamp), (u64v(42_000), 99));
        assert_eq!((m.working_set_bytes, m.timestamp), (u64v(1 << 20), 10));
        forget(&["pod-usage-guest".to_string()]);
    }
}
