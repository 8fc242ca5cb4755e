//! `PodSandboxStatus`: one pod's state, with VM details when verbose.

use std::collections::HashMap;
use std::sync::Arc;

use tonic::Status;
use vmpod_cri_api::v1::{
    LinuxPodSandboxStatus, Namespace, NamespaceOption, PodIp, PodSandboxNetworkStatus,
    PodSandboxStatus, PodSandboxStatusRequest, PodSandboxStatusResponse,
};

use super::{cri_metadata, cri_state, find};
use crate::daemon::Daemon;
use crate::state::{SandboxRecord, SandboxState};

pub async fn pod_sandbox_status(
    daemon: &Arc<Daemon>,
    req: PodSandboxStatusRequest,
) -> Result<PodSandboxStatusResponse, Status> {
    let rec = find(daemon, &req.pod_sandbox_id)?.ok_or_else(|| {
        Status::not_found(format!("pod sandbox {:?} not found", req.pod_sandbox_id))
    })?;
    let info = if req.verbose {
        verbose_info(&rec)?
    } else {
        HashMap::new()
    };
    Ok(PodSandboxStatusResponse {
        status: Some(cri_sandbox_status(&rec)),
        info,
        containers_statuses: crate::cri::container::status::statuses_of(daemon, &rec.id)?,
        timestamp: crate::clock::unix_nanos(),
    })
}

/// The pod's IPs from its CNI result, the first (IPv4 when it has one) as
/// the primary. A pod that is not ready reports none: its lease may already
/// be released and given to another pod.
fn network_status(rec: &SandboxRecord) -> PodSandboxNetworkStatus {
    let ips = match (&rec.network, rec.state) {
        (Some(net), SandboxState::Ready) => net.ips.as_slice(),
        _ => &[],
    };
    PodSandboxNetworkStatus {
        ip: ips.first().cloned().unwrap_or_default(),
        additional_ips: ips
            .iter()
            .skip(1)
            .map(|ip| PodIp { ip: ip.clone() })
            .collect(),
    }
}

/// The CRI view of a sandbox record, shared with GetContainerEvents.
pub(crate) fn cri_sandbox_status(rec: &SandboxRecord) -> PodSandboxStatus {
    let [network, pid, ipc] = rec.namespace_modes;
    PodSandboxStatus {
        id: rec.id.clone(),
        metadata: Some(cri_metadata(rec)),
        state: cri_state(rec).into(),
        created_at: rec.created_at,
        network: Some(network_status(rec)),
        linux: Some(LinuxPodSandboxStatus {
            namespaces: Some(Namespace {
                options: Some(NamespaceOption {
                    network,
                    pid,
                    ipc,
                    ..Default::default()
                }),
            }),
        }),
        labels: rec.labels.clone().into_iter().collect(),
        annotations: rec.annotations.clone().into_iter().collect(),
        runtime_handler: rec.runtime_handler.clone(),
    }
}

/// Boot phases as milliseconds after the shim started, the way people read
/// them; absent phases are null.
fn verbose_info(rec: &SandboxRecord) -> Result<HashMap<String, String>, Status> {
    let [start, vmm, kernel, agent] = rec.vm.boot_ns;
    let ms = |t: u64| (t >= start && t > 0 && start > 0).then(|| (t - start) as f64 / 1e6);
    let info = serde_json::json!({
        "backend": rec.vm.backend,
        "vcpus": rec.vm.vcpus,
        "memoryMiB": rec.vm.memory_mib,
        "shimPid": rec.vm.shim_pid,
        "vmPid": rec.vm.vmm_pid,
        "podDir": rec.pod_dir,
        "cgroups": rec.cgroups,
        "hostname": rec.hostname,
        "reason": rec.reason,
        "bootPhasesMs": {
            "vmmSpawned": ms(vmm),
            "kernelEntry": ms(kernel),
            "agentReady": ms(agent),
        },
    });
    let text = serde_json::to_string(&info)
        .map_err(|e| Status::internal(format!("encoding info: {e}")))?;
    Ok(HashMap::from([("info".to_string(), text)]))
}
