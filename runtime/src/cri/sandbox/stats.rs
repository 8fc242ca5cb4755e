//! `PodSandboxStats` and `ListPodSandboxStats`. A pod's own CPU and
//! memory, which kubelet uses to pick pods to evict, are the host's
//! accounting of the pod's VM processes (`sandbox::host_stats`): a hostile
//! guest could under-report its total, and the VM's overhead is the pod's
//! too. Where the host accounts nothing (no cgroups, no memory controller)
//! the guest's total is reported instead. Its containers' figures are the
//! guest's, converted as ContainerStats converts them.

use std::sync::Arc;

use tonic::Status;
use vmpod_agent_proto::v1 as agent;
use vmpod_cri_api::v1 as cri;

use super::cri_metadata;
use crate::container;
use crate::cpu_samples::{CpuSamples, Source};
use crate::cri::container::stats::{container_stats, cpu, memory, u64v};
use crate::daemon::Daemon;
use crate::error::store_err;
use crate::sandbox::host_stats::{self, HostUsage};
use crate::state::{ContainerRecord, SandboxRecord, SandboxState};

/// The ready sandboxes a stats filter selects.
pub(super) fn ready_sandboxes(
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

/// Devices the guest kernel creates by itself for IPv6 and IP tunnels.
pub(super) fn is_tunnel_device(name: &str) -> bool {
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
    samples: &CpuSamples,
    sandbox_id: &str,
    guest_ts: i64,
    guest: &agent::CgroupUsage,
    host: &HostUsage,
    host_ts: i64,
) -> (cri::CpuUsage, cri::MemoryUsage) {
    let cpu_usage = match &host.cpu_usage_ns {
        Ok(ns) => cpu(samples, sandbox_id, Source::Host, host_ts, *ns),
        Err(e) => {
            tracing::debug!(sandbox = sandbox_id, error = %e, "pod CPU from the guest");
            cpu(
                samples,
                sandbox_id,
                Source::Guest,
                guest_ts,
                guest.cpu_usage_ns,
            )
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
    let samples = &daemon.sandboxes.cpu_samples;
    let (pod_cpu, pod_memory) = pod_usage(samples, &sandbox.id, ts, &pod, &host, host_ts);
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
            metadata: Some(cri_metadata(sandbox)),
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
    let sandbox = super::find(daemon, &req.pod_sandbox_id)?
        .ok_or_else(|| Status::not_found(format!("sandbox {:?} not found", req.pod_sandbox_id)))?;
    if sandbox.state != SandboxState::Ready {
        return Err(Status::failed_precondition(format!(
            "sandbox {} is not ready",
            sandbox.id
        )));
    }
    container::refresh(daemon, &sandbox.id).await?;
    let containers = container::live_containers_of(daemon, &sandbox.id).map_err(store_err)?;
    let resp = container::sample_stats(&sandbox, &containers).await?;
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
        let containers = container::live_containers_of(daemon, &sandbox.id).map_err(store_err)?;
        match container::sample_stats(&sandbox, &containers).await {
            Ok(resp) => stats.push(pod_stats(daemon, &sandbox, &containers, &resp)),
            Err(e) => {
                tracing::debug!(sandbox = %sandbox.id, error = %e.message(), "no stats for pod")
            }
        }
    }
    Ok(cri::ListPodSandboxStatsResponse { stats })
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
        let samples = CpuSamples::default();
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
        let usage = |guest_ts, host_cpu, host_ts| {
            pod_usage(&samples, id, guest_ts, &guest(), &host(host_cpu), host_ts)
        };
        let (c, m) = usage(10, 1_000_000_000, 1_000_000_000);
        assert_eq!(c.usage_core_nano_seconds, u64v(1_000_000_000));
        assert_eq!(c.usage_nano_cores, None);
        assert_eq!(m.working_set_bytes, u64v(200 << 20));
        assert_eq!(m.available_bytes, u64v(312 << 20));
        assert_eq!(m.timestamp, 1_000_000_000);
        // A guest sample in between must not be the host's previous one.
        let _ = cpu(&samples, id, Source::Guest, 20, 7);
        let (c, _) = usage(30, 1_500_000_000, 2_000_000_000);
        assert_eq!(c.usage_nano_cores, u64v(500_000_000));
        samples.forget(id);
        let (c, _) = usage(30, 2_000_000_000, 3_000_000_000);
        assert_eq!(c.usage_nano_cores, None);
    }

    #[test]
    fn pod_usage_falls_back_to_the_guest_per_half() {
        let host = HostUsage {
            cpu_usage_ns: Ok(42_000),
            memory: Err("no memory accounting".into()),
        };
        let samples = CpuSamples::default();
        let (c, m) = pod_usage(&samples, "pod-usage-guest", 10, &guest(), &host, 99);
        assert_eq!((c.usage_core_nano_seconds, c.timestamp), (u64v(42_000), 99));
        assert_eq!((m.working_set_bytes, m.timestamp), (u64v(1 << 20), 10));
    }
}
