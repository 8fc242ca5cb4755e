//! `Status`: is this node able to run pods, and do pods get a network?
//!
//! Both conditions come from the same host checks as `vmpod check`, so the
//! node condition kubelet shows and the operator's diagnosis agree.

use std::collections::HashMap;

use tonic::Status;
use vmpod_cri_api::v1::{
    RuntimeCondition, RuntimeFeatures, RuntimeHandler, RuntimeHandlerFeatures, RuntimeStatus,
    StatusRequest, StatusResponse,
};

use crate::daemon::Daemon;
use crate::host::check::{self, Depth, Report};
use crate::network::cni;

pub const RUNTIME_READY: &str = "RuntimeReady";
pub const NETWORK_READY: &str = "NetworkReady";

pub async fn status(daemon: &Daemon, req: StatusRequest) -> Result<StatusResponse, Status> {
    let config = daemon.config.clone();
    let report = tokio::task::spawn_blocking(move || check::run(&config, Depth::Quick))
        .await
        .map_err(|e| Status::internal(format!("host check task failed: {e}")))?;

    let conditions = vec![
        runtime_condition(&report),
        network_condition(&report, daemon.config.cni.conf_dir.as_path()),
    ];
    let info = if req.verbose {
        verbose_info(daemon, &report)?
    } else {
        HashMap::new()
    };
    Ok(StatusResponse {
        status: Some(RuntimeStatus { conditions }),
        info,
        runtime_handlers: crate::sandbox::boot::RUNTIME_HANDLERS
            .iter()
            .map(|name| RuntimeHandler {
                name: (*name).to_string(),
                features: Some(RuntimeHandlerFeatures {
                    recursive_read_only_mounts: false,
                    user_namespaces: false,
                }),
            })
            .collect(),
        features: Some(RuntimeFeatures {
            supplemental_groups_policy: false,
        }),
    })
}

fn runtime_condition(report: &Report) -> RuntimeCondition {
    let blockers = report.blockers();
    if blockers.is_empty() {
        let backend = report
            .backend
            .as_ref()
            .map(|d| d.backend.to_string())
            .unwrap_or_default();
        RuntimeCondition {
            r#type: RUNTIME_READY.into(),
            status: true,
            reason: "BackendReady".into(),
            message: format!("pods run on {backend}"),
        }
    } else {
        let reason = if report.backend.is_err() {
            "NoUsableBackend"
        } else if report
            .checks
            .iter()
            .any(|c| c.name.starts_with("guest") && c.verdict == check::Verdict::Fail)
        {
            "GuestImageMissing"
        } else {
            "HostNotReady"
        };
        RuntimeCondition {
            r#type: RUNTIME_READY.into(),
            status: false,
            reason: reason.into(),
            message: blockers.join("; "),
        }
    }
}

fn network_condition(report: &Report, conf_dir: &std::path::Path) -> RuntimeCondition {
    match &report.network {
        Ok(n) => RuntimeCondition {
            r#type: NETWORK_READY.into(),
            status: true,
            reason: match n.source {
                cni::Source::File(_) => "CNIConfigured".into(),
                cni::Source::Embedded => "EmbeddedDefaultNetwork".into(),
            },
            message: match &n.source {
                cni::Source::File(f) => format!("CNI network {:?} from {}", n.name, f.display()),
                cni::Source::Embedded => format!(
                    "no CNI config in {}: pods join vmpod's embedded default network {:?} (bridge {}); put a conflist there to use another",
                    conf_dir.display(),
                    n.name,
                    cni::DEFAULT_BRIDGE
                ),
            },
        },
        Err(e) => RuntimeCondition {
            r#type: NETWORK_READY.into(),
            status: false,
            reason: "NetworkPluginNotReady".into(),
            message: e.clone(),
        },
    }
}

/// Values are JSON documents, as crictl and containerd expect.
fn verbose_info(daemon: &Daemon, report: &Report) -> Result<HashMap<String, String>, Status> {
    let json = |v: serde_json::Value| {
        serde_json::to_string(&v).map_err(|e| Status::internal(format!("encoding info: {e}")))
    };
    let backend = match &report.backend {
        Ok(d) => serde_json::json!({ "backend": d.backend, "reason": d.reason }),
        Err(e) => serde_json::json!({ "backend": null, "reason": e }),
    };
    let guest = serde_json::json!({
        "kernel": daemon.config.vm.kernel,
        "kernelVersion": report.kernel_version.as_ref().ok(),
        "kernelError": report.kernel_version.as_ref().err(),
        "initramfs": daemon.config.vm.initramfs,
    });
    let mut info = HashMap::new();
    info.insert("backend".into(), json(backend)?);
    info.insert("guest".into(), json(guest)?);
    let schema = daemon
        .store
        .schema_version()
        .map_err(|e| Status::internal(e.to_string()))?;
    info.insert(
        "state".into(),
        json(serde_json::json!({ "dir": daemon.config.state_dir, "schemaVersion": schema }))?,
    );
    // kubelet's EventedPLEG gate needs GetContainerEvents; it is served
    // from each pod's event stream, so enabling the gate is safe.
    info.insert(
        "features".into(),
        json(serde_json::json!({
            "containerEvents": true,
            "eventedPLEG": "supported: GetContainerEvents streams every container state change",
        }))?,
    );
    info.insert(
        "checks".into(),
        json(serde_json::to_value(&report.checks).unwrap_or_default())?,
    );
    info.insert(
        "config".into(),
        json(serde_json::to_value(&*daemon.config).unwrap_or_default())?,
    );
    Ok(info)
}
