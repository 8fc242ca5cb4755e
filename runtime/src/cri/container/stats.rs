//! `ContainerStats` and `ListContainerStats`: per-container figures from
//! the guest's cgroup v2 files through one agent `Stats` call per pod
//! (`container::sample_stats`), and the conversions the pod-level calls in
//! `cri/sandbox/stats.rs` share.
//!
//! `usage_nano_cores` is a rate, so it needs two samples: the previous one
//! of each container is kept by the daemon (`container::Registry`), and the
//! first sample of a container reports no rate (as kubelet's own cadvisor
//! path does).

use std::collections::HashMap;
use std::sync::Arc;

use tonic::Status;
use vmpod_agent_proto::v1 as agent;
use vmpod_cri_api::v1 as cri;

use super::{attributes, sandbox_of};
use crate::container::{self, is_live};
use crate::cpu_samples::{CpuSamples, Source};
use crate::daemon::Daemon;
use crate::error::store_err;
use crate::state::ContainerRecord;

pub(crate) fn u64v(value: u64) -> Option<cri::UInt64Value> {
    Some(cri::UInt64Value { value })
}

/// A CPU sample, with the rate since the previous one from `samples`.
pub(crate) fn cpu(
    samples: &CpuSamples,
    id: &str,
    source: Source,
    ts: i64,
    cpu_ns: u64,
) -> cri::CpuUsage {
    cri::CpuUsage {
        timestamp: ts,
        usage_core_nano_seconds: u64v(cpu_ns),
        usage_nano_cores: samples.nano_cores(id, source, ts, cpu_ns).and_then(u64v),
        psi: None,
    }
}

pub(crate) fn memory(ts: i64, u: &agent::CgroupUsage) -> cri::MemoryUsage {
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

pub(crate) fn container_stats(
    daemon: &Daemon,
    rec: &ContainerRecord,
    ts: i64,
    u: &agent::ContainerUsage,
) -> cri::ContainerStats {
    let usage = u.usage.unwrap_or_default();
    let samples = &daemon.containers.cpu_samples;
    cri::ContainerStats {
        attributes: Some(attributes(rec)),
        cpu: Some(cpu(samples, &rec.id, Source::Guest, ts, usage.cpu_usage_ns)),
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
    let resp = container::sample_stats(&sandbox, std::slice::from_ref(&rec)).await?;
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
        match container::sample_stats(&sandbox, &recs).await {
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
