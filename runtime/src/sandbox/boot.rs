//! Booting a pod: plan the VM, record it, make its host resources, start
//! its shim and wait for the guest, or undo all of it.
//!
//! Order matters for crash safety: the record is reserved (state
//! `Creating`) before anything exists on the host, and every resource is
//! recorded before it is created. If the daemon dies at any point, restart
//! recovery finds the record and undoes exactly what was made. If boot fails
//! while the daemon lives, the same teardown runs here.
//!
//! The request arrives validated (`cri/sandbox/run.rs` checks and
//! translates RunPodSandbox into a [`PodRequest`]).

use std::collections::BTreeMap;
use std::os::unix::fs::DirBuilderExt;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tonic::Status;
use vmpod_shim_api::v1::VmState;
use vmpod_shim_api::vm_spec::{
    BUILTIN_VMM_MAX_VCPUS, BackendSpec, GuestSetup, Helpers, VmSpec, VsockSpec, VsockTransport,
};

use super::cid::CidError;
use super::resources::{self, Limits};
use super::{cgroup, monitor, shim};
use crate::config::BackendChoice;
use crate::daemon::Daemon;
use crate::error::store_err;
use crate::host::backend::{self, Accel, Backend, VirtFacts};
use crate::host::vsock::{self, VsockBackend};
use crate::network::attachment::{self, AttachError, PodNetworkRequest};
use crate::network::cni;
use crate::state::{Metadata, NetworkRecord, ReserveError, SandboxRecord, SandboxState, VmRecord};

/// Handlers this runtime serves (RuntimeClass `handler`). kubelet sends ""
/// for the default; "" and "vmpod" use the configured `[vm] backend`,
/// the others pin one.
pub const RUNTIME_HANDLERS: &[&str] = &["", "vmpod", "vmpod-kvm", "vmpod-qemu"];

/// The backend choice a runtime handler stands for.
fn handler_backend(handler: &str, configured: BackendChoice) -> BackendChoice {
    match handler {
        "vmpod-kvm" => BackendChoice::Kvm,
        "vmpod-qemu" => BackendChoice::Qemu,
        _ => configured,
    }
}

/// Extra time, past the guest's boot timeout, for the shim to tear down and
/// report before the daemon gives up on it.
const SHIM_REPORT_MARGIN: Duration = Duration::from_secs(10);
const SHIM_SOCKET_TIMEOUT: Duration = Duration::from_secs(10);

/// A pod to boot, already validated: what its record keeps and what its VM
/// is made from.
pub struct PodRequest {
    pub metadata: Metadata,
    /// One of [`RUNTIME_HANDLERS`].
    pub runtime_handler: String,
    pub labels: BTreeMap<String, String>,
    pub annotations: BTreeMap<String, String>,
    pub log_directory: String,
    /// The namespace modes (network, pid, ipc) as the client gave them.
    pub namespace_modes: [i32; 3],
    pub sysctls: BTreeMap<String, String>,
    /// The parent of the pod's host cgroup, as the client names it.
    pub cgroup_parent: String,
    /// The pod's limits and its runtime overhead: the VM gets their sum.
    pub limits: Limits,
    pub overhead: Limits,
    /// Hostname and DNS, set up in the guest.
    pub guest: GuestSetup,
    /// The pod's own network; `None` for a pod on the node's network,
    /// which gets loopback only until host-network pods exist. Its
    /// `sandbox_id` is filled in here.
    pub network: Option<PodNetworkRequest>,
}

/// Boots the pod `req` describes and returns its sandbox id once the guest
/// is ready. Runs to completion even if the caller gives up: a dropped
/// future would skip the teardown of a failed boot.
pub async fn run(daemon: &Arc<Daemon>, req: PodRequest) -> Result<String, Status> {
    let plan = plan_vm(daemon, &req.runtime_handler)?;
    let network = match &req.network {
        None => None,
        Some(_) => Some(cni::default_network(&daemon.config.cni).map_err(|e| {
            Status::failed_precondition(format!("the pod network is not ready: {e}"))
        })?),
    };

    let id = crate::state::new_id()
        .map_err(|e| Status::internal(format!("cannot read /dev/urandom: {e}")))?;
    let network = match (network, req.network) {
        (Some(net), Some(mut pod)) => {
            pod.sandbox_id = id.clone();
            Some(attachment::plan(&net, &pod).map_err(Status::invalid_argument)?)
        }
        _ => None,
    };
    // Allocated before the record is first written, so the record always
    // names what it holds; released with the record (Registry::forget).
    let vsock_cid = daemon
        .sandboxes
        .allocate_cid(&id, plan.vsock.is_kernel())
        .map_err(|e| match e {
            CidError::Exhausted { .. } => Status::resource_exhausted(e.to_string()),
            _ => Status::failed_precondition(e.to_string()),
        })?;
    let rec = SandboxRecord {
        id: id.clone(),
        metadata: req.metadata,
        state: SandboxState::Creating,
        created_at: crate::clock::unix_nanos(),
        labels: req.labels,
        annotations: req.annotations,
        runtime_handler: req.runtime_handler,
        hostname: req.guest.hostname.clone(),
        log_directory: req.log_directory,
        pod_dir: super::pod_dir(daemon.config.state_dir.as_path(), &id),
        cgroups: Vec::new(),
        namespace_modes: req.namespace_modes,
        sysctls: req.sysctls,
        vsock_cid: Some(vsock_cid),
        vm: VmRecord::default(),
        event_seq: 0,
        reason: String::new(),
        network: None,
    };
    if let Err(e) = daemon.store.reserve_sandbox(&rec) {
        daemon.sandboxes.release_cid(&id);
        return Err(match e {
            ReserveError::Exists(existing) => Status::already_exists(format!(
                "sandbox name {:?} (namespace {:?}, uid {:?}, attempt {}) is already used by sandbox {existing}",
                rec.metadata.name, rec.metadata.namespace, rec.metadata.uid, rec.metadata.attempt
            )),
            ReserveError::Store(e) => store_err(e),
        });
    }

    let mut size = resources::vm_size(&daemon.config.vm, &req.limits, &req.overhead);
    // The built-in VMM's MP table holds at most this many CPUs; a bigger
    // limit gets a VM that size, like any limit past MAX_VCPUS.
    if plan.backend == BackendSpec::Kvm && size.vcpus > BUILTIN_VMM_MAX_VCPUS {
        tracing::warn!(
            vcpus = size.vcpus,
            "the built-in VMM runs at most {BUILTIN_VMM_MAX_VCPUS} vCPUs; the VM gets that many"
        );
        size.vcpus = BUILTIN_VMM_MAX_VCPUS;
    }

    let d = daemon.clone();
    let cgroup_parent = req.cgroup_parent;
    let guest = req.guest;
    tokio::spawn(async move {
        let lock = d.sandboxes.lock_for(&rec.id);
        let _guard = lock.lock().await;
        let mut rec = rec;
        match boot(&d, &mut rec, plan, size, &cgroup_parent, guest, network).await {
            Ok(()) => {
                monitor::start(&d, &rec);
                tracing::info!(sandbox = %rec.id, name = %rec.metadata.name, "sandbox ready");
                Ok(rec.id)
            }
            Err(status) => {
                tracing::warn!(sandbox = %rec.id, error = %status.message(), "sandbox boot failed; tearing down");
                super::teardown(&d, &rec).await;
                Err(status)
            }
        }
    })
    .await
    .map_err(|e| Status::internal(format!("RunPodSandbox task failed: {e}")))?
}

/// What the host will boot the VM with; any gap is FAILED_PRECONDITION with
/// what to install.
struct Plan {
    backend: BackendSpec,
    vsock: VsockBackend,
    helpers: Helpers,
    shim: PathBuf,
    boot_timeout: Duration,
}

fn plan_vm(daemon: &Daemon, handler: &str) -> Result<Plan, Status> {
    let cfg = &daemon.config;
    let choice = handler_backend(handler, cfg.vm.backend);
    let decision = backend::choose(choice, &VirtFacts::probe())
        .map_err(|e| Status::failed_precondition(format!("runtime handler {handler:?}: {e}")))?;
    let vsock = vsock::choose(cfg.vm.vsock, decision.backend, &vsock::probe_kernel())
        .map_err(|e| Status::failed_precondition(format!("runtime handler {handler:?}: {e}")))?
        .backend;
    let backend = match decision.backend {
        Backend::Qemu { accel: Accel::Kvm } => BackendSpec::QemuKvm,
        Backend::Qemu { accel: Accel::Tcg } => BackendSpec::QemuTcg,
        Backend::Kvm => BackendSpec::Kvm,
    };
    let builtin = backend == BackendSpec::Kvm;
    for (what, path) in [
        ("guest kernel", &cfg.vm.kernel),
        ("guest initramfs", &cfg.vm.initramfs),
    ] {
        if !path.as_path().is_file() {
            return Err(Status::failed_precondition(format!(
                "{what} {path} is missing; build it with images/build.sh (or run scripts/setup.sh)"
            )));
        }
    }
    let need = |p: &crate::config::Program, install: &str| {
        crate::host::which(p).ok_or_else(|| {
            Status::failed_precondition(format!(
                "{:?} is not installed; install it with: {install}",
                p.0
            ))
        })
    };
    // The built-in VMM needs neither QEMU nor a vsock helper.
    let qemu = if builtin {
        None
    } else {
        Some(need(&cfg.helpers.qemu, "apt-get install qemu-system-x86")?)
    };
    let virtiofsd = need(&cfg.helpers.virtiofsd, "cargo install --locked virtiofsd")?;
    let vhost_device_vsock = if vsock == VsockBackend::VhostUser {
        Some(need(
            &cfg.helpers.vhost_device_vsock,
            "cargo install --locked vhost-device-vsock",
        )?)
    } else {
        None
    };
    let shim = daemon.shim_binary().ok_or_else(|| {
        Status::failed_precondition(format!(
            "{:?} not found beside vmpod or in PATH",
            cfg.helpers.shim.0
        ))
    })?;
    let boot_timeout = Duration::from_secs(cfg.vm.boot_timeout_secs.unwrap_or(match backend {
        BackendSpec::QemuTcg => 60,
        BackendSpec::QemuKvm | BackendSpec::Kvm => 10,
    }));
    Ok(Plan {
        backend,
        vsock,
        helpers: Helpers {
            qemu,
            virtiofsd,
            vhost_device_vsock,
        },
        shim,
        boot_timeout,
    })
}

async fn boot(
    daemon: &Daemon,
    rec: &mut SandboxRecord,
    plan: Plan,
    size: resources::VmSize,
    cgroup_parent: &str,
    mut guest: GuestSetup,
    network: Option<NetworkRecord>,
) -> Result<(), Status> {
    let pods = daemon.config.state_dir.as_path().join(super::PODS_DIR);
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(&pods)
        .map_err(|e| Status::internal(format!("cannot create {}: {e}", pods.display())))?;
    std::fs::DirBuilder::new()
        .mode(0o700)
        .create(&rec.pod_dir)
        .map_err(|e| Status::internal(format!("cannot create {}: {e}", rec.pod_dir.display())))?;

    let leaf = cgroup::leaf_path(cgroup_parent, daemon.config.cgroup_driver, &rec.id)
        .map_err(|e| Status::invalid_argument(format!("config.linux.cgroup_parent: {e}")))?;
    let layout = crate::host::cgroup_layout();
    // Record the dirs before creating them, so a crash in between is cleaned.
    rec.cgroups = cgroup::planned(&leaf, layout);
    daemon.store.put_sandbox(rec).map_err(store_err)?;
    let dirs = cgroup::create(&leaf, layout).map_err(Status::internal)?;
    let limit = size.host_memory_limit_bytes();
    let limited = cgroup::limit_memory(&dirs, limit).map_err(Status::internal)?;
    if limited.is_empty() && !dirs.is_empty() {
        tracing::warn!(sandbox = %rec.id, "no memory controller on the pod's cgroup: its host processes run without a memory limit");
    } else {
        tracing::debug!(sandbox = %rec.id, bytes = limit, files = ?limited, "pod memory limit set");
    }
    let procs: Vec<_> = dirs.iter().map(|d| cgroup::procs_file(d)).collect();

    let card = match network {
        None => None,
        Some(net) => {
            let attached = attach_network(daemon, rec, net).await?;
            guest.interfaces = vec![attached.guest];
            Some(attached.card)
        }
    };

    let spec = VmSpec {
        id: rec.id.clone(),
        backend: plan.backend,
        kernel: daemon.config.vm.kernel.as_path().to_path_buf(),
        initramfs: daemon.config.vm.initramfs.as_path().to_path_buf(),
        vcpus: size.vcpus,
        memory_mib: size.memory_mib,
        boot_timeout_ms: u64::try_from(plan.boot_timeout.as_millis()).unwrap_or(u64::MAX),
        helpers: plan.helpers,
        vsock: VsockSpec {
            guest_cid: rec
                .vsock_cid
                .ok_or_else(|| Status::internal("the sandbox record holds no vsock CID"))?,
            transport: if plan.vsock.is_kernel() {
                VsockTransport::Kernel
            } else {
                VsockTransport::Hybrid
            },
        },
        guest,
        // Every backend: the built-in VMM's threads, QEMU (`-runas`) and
        // vhost-device-vsock all run as this user.
        vmm_user: Some(daemon.config.vm.vmm_user),
        console_log_bytes: daemon.config.vm.console_log_bytes,
        network: card,
    };
    let pid = shim::spawn(&plan.shim, &rec.pod_dir, &spec, &procs).map_err(Status::internal)?;
    rec.vm.shim_pid = pid;
    daemon.store.put_sandbox(rec).map_err(store_err)?;

    let mut client = shim::connect(&rec.pod_dir, SHIM_SOCKET_TIMEOUT)
        .await
        .map_err(|e| Status::internal(with_shim_log(rec, e)))?;
    let state = shim::wait_ready(&mut client, plan.boot_timeout + SHIM_REPORT_MARGIN)
        .await
        .map_err(|e| {
            if e.contains("within") {
                Status::deadline_exceeded(e)
            } else {
                Status::internal(with_shim_log(rec, e))
            }
        })?;
    rec.vm = vm_record(&state);
    rec.state = SandboxState::Ready;
    daemon.store.put_sandbox(rec).map_err(store_err)?;
    Ok(())
}

/// Records the attachment before anything of it exists, attaches, and
/// records the ADD result as soon as there is one: whatever happens after,
/// the record holds what DEL needs.
async fn attach_network(
    daemon: &Daemon,
    rec: &mut SandboxRecord,
    mut net: NetworkRecord,
) -> Result<attachment::Attached, Status> {
    rec.network = Some(net.clone());
    daemon.store.put_sandbox(rec).map_err(store_err)?;
    let started = std::time::Instant::now();
    let attached = attachment::attach(&daemon.config.cni, &mut net, |n| {
        daemon
            .store
            .update_sandbox(&n.sandbox_id, |r| {
                r.network = Some(n.clone());
                true
            })
            .map(drop)
            .map_err(|e| e.to_string())
    })
    .await;
    rec.network = Some(net);
    match attached {
        Ok(a) => {
            tracing::info!(
                sandbox = %rec.id,
                ips = ?rec.network.as_ref().map(|n| &n.ips),
                ms = started.elapsed().as_millis() as u64,
                "pod network attached"
            );
            Ok(a)
        }
        Err(AttachError::Plugin(e)) => Err(Status::unavailable(format!(
            "attaching the pod to the CNI network: {e}"
        ))),
        Err(AttachError::Host(e)) => Err(Status::internal(format!(
            "attaching the pod to the CNI network: {e}"
        ))),
    }
}

fn vm_record(s: &VmState) -> VmRecord {
    let b = s.boot.unwrap_or_default();
    VmRecord {
        backend: s.backend.clone(),
        vcpus: s.vcpus,
        memory_mib: s.memory_mib,
        shim_pid: s.shim_pid,
        vmm_pid: s.vmm_pid,
        boot_ns: [
            b.shim_start_ns,
            b.vmm_spawned_ns,
            b.kernel_entry_ns,
            b.agent_ready_ns,
        ],
    }
}

/// Appends the tail of the shim's own log, where a shim that failed before
/// it could serve explains why.
fn with_shim_log(rec: &SandboxRecord, msg: String) -> String {
    let log = std::fs::read_to_string(rec.pod_dir.join(vmpod_shim_api::layout::SHIM_LOG))
        .unwrap_or_default();
    let tail: Vec<&str> = log.lines().rev().take(10).collect();
    if tail.is_empty() {
        msg
    } else {
        let tail: Vec<&str> = tail.into_iter().rev().collect();
        format!("{msg}; shim log: {}", tail.join(" | "))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn handlers_pin_a_backend_or_follow_the_config() {
        for h in RUNTIME_HANDLERS {
            let pinned = handler_backend(h, BackendChoice::Auto);
            match *h {
                "vmpod-kvm" => assert_eq!(pinned, BackendChoice::Kvm),
                "vmpod-qemu" => assert_eq!(pinned, BackendChoice::Qemu),
                _ => assert_eq!(pinned, BackendChoice::Auto),
            }
        }
    }
}
