//! `ListMetricDescriptors` and `ListPodSandboxMetrics`: per pod, its
//! network interfaces and its containers' usage, under cadvisor's names.

use std::sync::Arc;

use tonic::Status;
use vmpod_agent_proto::v1 as agent;
use vmpod_cri_api::v1 as cri;

use super::stats::{is_tunnel_device, ready_sandboxes};
use crate::container;
use crate::cri::container::stats::u64v;
use crate::daemon::Daemon;
use crate::error::store_err;

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
        let containers = container::live_containers_of(daemon, &sandbox.id).map_err(store_err)?;
        let resp = match container::sample_stats(&sandbox, &containers).await {
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
