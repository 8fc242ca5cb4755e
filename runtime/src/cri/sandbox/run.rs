//! `RunPodSandbox`: boot the pod's microVM and wait for its agent.
//!
//! Order matters for crash safety: the record is reserved (state
//! `Creating`) before anything exists on the host, and every resource is
//! recorded before it is created. If the daemon dies at any point, restart
//! recovery finds the record and undoes exactly what was made. If boot fails
//! while the daemon lives, the same teardown runs here.

use crate::config::BackendChoice;
use std::net::IpAddr;
use std::os::unix::fs::DirBuilderExt;
use std::path::{Component, Path};
use std::sync::Arc;
use std::time::Duration;

use tonic::Status;
use vmpod_cri_api::v1::{PodSandboxConfig, RunPodSandboxRequest, RunPodSandboxResponse};
use vmpod_shim_api::spec::{
    BUILTIN_VMM_MAX_VCPUS, BackendSpec, GuestSetup, Helpers, VmSpec, VsockSpec, VsockTransport,
};
use vmpod_shim_api::v1::VmState;

use super::store_err;
use crate::daemon::Daemon;
use crate::host::backend::{self, Accel, Backend, VirtFacts};
use crate::host::vsock::{self, VsockBackend};
use crate::sandbox::cid::CidError;
use crate::sandbox::{self, cgroup, monitor, resources, shim};
use crate::state::{Metadata, ReserveError, SandboxRecord, SandboxState, VmRecord};

/// Longest name, namespace or uid: a DNS subdomain, like Kubernetes.
const MAX_NAME: usize = 253;
/// Linux's HOST_NAME_MAX.
const MAX_HOSTNAME: usize = 64;
/// glibc's resolver reads at most 3 nameservers and 6 search domains; more
/// would be silently ignored in the guest, so they are refused instead.
const MAX_DNS_SERVERS: usize = 3;
const MAX_DNS_SEARCHES: usize = 6;

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

pub async fn run_pod_sandbox(
    daemon: &Arc<Daemon>,
    req: RunPodSandboxRequest,
) -> Result<RunPodSandboxResponse, Status> {
    let config = req
        .config
        .ok_or_else(|| Status::invalid_argument("config is required"))?;
    let valid = validate(&config, &req.runtime_handler)?;
    let plan = plan_vm(daemon, &req.runtime_handler)?;

    let id = new_id()?;
    // Allocated before the record is first written, so the record always
    // names what it holds; released with the record (Registry::forget).
    let vsock_cid = daemon
        .sandboxes
        .allocate_cid(&id, plan.vsock.is_kernel())
        .map_err(|e| match e {
            CidError::Exhausted { .. } => Status::resource_exhausted(e.to_string()),
            _ => Status::failed_precondition(e.to_string()),
        })?;
    let now = crate::clock::unix_nanos();
    let linux = config.linux.as_ref();
    let ns = linux
        .and_then(|l| l.security_context.as_ref())
        .and_then(|s| s.namespace_options.as_ref());
    let rec = SandboxRecord {
        id: id.clone(),
        metadata: valid.metadata,
        state: SandboxState::Creating,
        created_at: now,
        labels: config.labels.clone().into_iter().collect(),
        annotations: config.annotations.clone().into_iter().collect(),
        runtime_handler: req.runtime_handler.clone(),
        hostname: valid.hostname.clone(),
        log_directory: config.log_directory.clone(),
        pod_dir: sandbox::pod_dir(daemon.config.state_dir.as_path(), &id),
        cgroups: Vec::new(),
        namespace_modes: ns.map_or([0; 3], |n| [n.network, n.pid, n.ipc]),
        sysctls: linux
            .map(|l| l.sysctls.clone().into_iter().collect())
            .unwrap_or_default(),
        vsock_cid: Some(vsock_cid),
        vm: VmRecord::default(),
        reason: String::new(),
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

    let mut size = resources::vm_size(
        &daemon.config.vm,
        linux.and_then(|l| l.resources.as_ref()),
        linux.and_then(|l| l.overhead.as_ref()),
    );
    // The built-in VMM's MP table holds at most this many CPUs; a bigger
    // limit gets a VM that size, like any limit past MAX_VCPUS.
    if plan.backend == BackendSpec::Kvm && size.vcpus > BUILTIN_VMM_MAX_VCPUS {
        tracing::warn!(
            vcpus = size.vcpus,
            "the built-in VMM runs at most {BUILTIN_VMM_MAX_VCPUS} vCPUs; the VM gets that many"
        );
        size.vcpus = BUILTIN_VMM_MAX_VCPUS;
    }
    let cgroup_parent = linux.map(|l| l.cgroup_parent.clone()).unwrap_or_default();
    let guest = GuestSetup {
        hostname: valid.hostname,
        dns_servers: config
            .dns_config
            .as_ref()
            .map(|d| d.servers.clone())
            .unwrap_or_default(),
        dns_searches: config
            .dns_config
            .as_ref()
            .map(|d| d.searches.clone())
            .unwrap_or_default(),
        dns_options: config
            .dns_config
            .as_ref()
            .map(|d| d.options.clone())
            .unwrap_or_default(),
    };

    // Run to completion even if kubelet gives up on the call: a dropped
    // future would skip the teardown of a failed boot.
    let d = daemon.clone();
    tokio::spawn(async move {
        let lock = d.sandboxes.lock_for(&rec.id);
        let _guard = lock.lock().await;
        let mut rec = rec;
        match boot(&d, &mut rec, plan, size, &cgroup_parent, guest).await {
            Ok(()) => {
                monitor::start(&d, &rec);
                tracing::info!(sandbox = %rec.id, name = %rec.metadata.name, "sandbox ready");
                Ok(RunPodSandboxResponse { pod_sandbox_id: rec.id })
            }
            Err(status) => {
                tracing::warn!(sandbox = %rec.id, error = %status.message(), "sandbox boot failed; tearing down");
                sandbox::teardown(&d, &rec).await;
                Err(status)
            }
        }
    })
    .await
    .map_err(|e| Status::internal(format!("RunPodSandbox task failed: {e}")))?
}

struct Valid {
    metadata: Metadata,
    hostname: String,
}

fn invalid(field: &str, problem: impl std::fmt::Display) -> Status {
    Status::invalid_argument(format!("{field}: {problem}"))
}

fn validate(config: &PodSandboxConfig, handler: &str) -> Result<Valid, Status> {
    if !RUNTIME_HANDLERS.contains(&handler) {
        return Err(invalid(
            "runtime_handler",
            format!("{handler:?} is not served by vmpod (known: {RUNTIME_HANDLERS:?})"),
        ));
    }
    let md = config
        .metadata
        .as_ref()
        .ok_or_else(|| invalid("config.metadata", "is required"))?;
    if md.name.is_empty() {
        return Err(invalid("config.metadata.name", "must not be empty"));
    }
    for (field, value) in [
        ("config.metadata.name", &md.name),
        ("config.metadata.namespace", &md.namespace),
        ("config.metadata.uid", &md.uid),
    ] {
        if value.len() > MAX_NAME {
            return Err(invalid(
                field,
                format!("is {} bytes, more than {MAX_NAME}", value.len()),
            ));
        }
        if value.contains('\0') {
            return Err(invalid(field, "must not contain NUL"));
        }
    }
    let attempt = md.attempt;

    let hostname = if config.hostname.is_empty() {
        sanitize_hostname(&md.name)
    } else {
        config.hostname.clone()
    };
    if hostname.len() > MAX_HOSTNAME
        || hostname.is_empty()
        || !hostname
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.')
    {
        return Err(invalid(
            "config.hostname",
            format!(
                "{hostname:?} is not a valid hostname (letters, digits, '-', '.', at most {MAX_HOSTNAME})"
            ),
        ));
    }

    if !config.log_directory.is_empty() {
        let p = Path::new(&config.log_directory);
        if !p.is_absolute() || p.components().any(|c| c == Component::ParentDir) {
            return Err(invalid(
                "config.log_directory",
                format!(
                    "{:?} must be an absolute path without \"..\"",
                    config.log_directory
                ),
            ));
        }
    }

    if let Some(linux) = &config.linux {
        for (k, v) in &linux.sysctls {
            let valid_key = !k.is_empty()
                && k.len() <= MAX_NAME
                && k.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-' | b'/'))
                && !k
                    .split(['.', '/'])
                    .any(|part| part.is_empty() || part == "..");
            if !valid_key {
                return Err(invalid(
                    "config.linux.sysctls",
                    format!("{k:?} is not a sysctl name"),
                ));
            }
            if v.len() > MAX_NAME || v.contains(['\n', '\0']) {
                return Err(invalid(
                    &format!("config.linux.sysctls[{k}]"),
                    "must be one line of at most 253 bytes",
                ));
            }
        }
    }

    if let Some(dns) = &config.dns_config {
        if dns.servers.len() > MAX_DNS_SERVERS {
            return Err(invalid(
                "config.dns_config.servers",
                format!(
                    "{} servers, at most {MAX_DNS_SERVERS} are usable",
                    dns.servers.len()
                ),
            ));
        }
        for (i, s) in dns.servers.iter().enumerate() {
            if s.parse::<IpAddr>().is_err() {
                return Err(invalid(
                    &format!("config.dns_config.servers[{i}]"),
                    format!("{s:?} is not an IP address"),
                ));
            }
        }
        if dns.searches.len() > MAX_DNS_SEARCHES {
            return Err(invalid(
                "config.dns_config.searches",
                format!("{} domains, at most {MAX_DNS_SEARCHES}", dns.searches.len()),
            ));
        }
        for (field, list) in [
            ("config.dns_config.searches", &dns.searches),
            ("config.dns_config.options", &dns.options),
        ] {
            for (i, v) in list.iter().enumerate() {
                if v.is_empty()
                    || v.len() > MAX_NAME
                    || v.bytes().any(|b| b.is_ascii_whitespace() || b == 0)
                {
                    return Err(invalid(
                        &format!("{field}[{i}]"),
                        format!("{v:?} is not valid"),
                    ));
                }
            }
        }
    }

    crate::cri::check_labels(&config.labels, &config.annotations)?;

    Ok(Valid {
        metadata: Metadata {
            name: md.name.clone(),
            uid: md.uid.clone(),
            namespace: md.namespace.clone(),
            attempt,
        },
        hostname,
    })
}

/// A pod name is a DNS subdomain; as a hostname it must fit 64 bytes.
fn sanitize_hostname(name: &str) -> String {
    let s: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '.' {
                c
            } else {
                '-'
            }
        })
        .take(MAX_HOSTNAME)
        .collect();
    s.trim_end_matches(['-', '.']).to_string()
}

/// What the host will boot the VM with; any gap is FAILED_PRECONDITION with
/// what to install.
struct Plan {
    backend: BackendSpec,
    vsock: VsockBackend,
    helpers: Helpers,
    shim: std::path::PathBuf,
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
    guest: GuestSetup,
) -> Result<(), Status> {
    let pods = daemon.config.state_dir.as_path().join(sandbox::PODS_DIR);
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

/// 256 random bits, hex: the same shape as containerd's ids, so tools that
/// abbreviate them work unchanged.
pub(crate) fn new_id() -> Result<String, Status> {
    use std::io::Read;
    let mut bytes = [0u8; 32];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut bytes))
        .map_err(|e| Status::internal(format!("cannot read /dev/urandom: {e}")))?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use vmpod_cri_api::v1::{DnsConfig, PodSandboxMetadata};

    fn config(name: &str) -> PodSandboxConfig {
        PodSandboxConfig {
            metadata: Some(PodSandboxMetadata {
                name: name.into(),
                uid: "uid".into(),
                namespace: "default".into(),
                attempt: 0,
            }),
            ..Default::default()
        }
    }

    fn err(c: &PodSandboxConfig) -> String {
        validate(c, "")
            .err()
            .expect("invalid")
            .message()
            .to_string()
    }

    #[test]
    fn field_errors_name_the_field() {
        assert!(err(&PodSandboxConfig::default()).starts_with("config.metadata:"));
        assert!(err(&config("")).starts_with("config.metadata.name:"));
        assert!(err(&config(&"a".repeat(254))).starts_with("config.metadata.name:"));
        let mut c = config("p");
        c.log_directory = "relative/logs".into();
        assert!(err(&c).starts_with("config.log_directory:"));
        c.log_directory = "/var/log/../../etc".into();
        assert!(err(&c).starts_with("config.log_directory:"));
        let mut c = config("p");
        c.dns_config = Some(DnsConfig {
            servers: vec!["10.0.0.10".into(), "not-an-ip".into()],
            ..Default::default()
        });
        assert!(err(&c).starts_with("config.dns_config.servers[1]:"));
        let mut c = config("p");
        c.hostname = "bad host".into();
        assert!(err(&c).starts_with("config.hostname:"));
        assert!(validate(&config("p"), "runc").is_err());
    }

    #[test]
    fn valid_config_and_hostname_from_name() {
        let v = validate(&config("web_0"), "vmpod").unwrap();
        assert_eq!(v.hostname, "web-0");
        assert_eq!(sanitize_hostname(&"x".repeat(100)).len(), MAX_HOSTNAME);
    }

    #[test]
    fn ids_are_unique_hex() {
        let a = new_id().unwrap();
        assert_eq!(a.len(), 64);
        assert!(a.bytes().all(|b| b.is_ascii_hexdigit()));
        assert_ne!(a, new_id().unwrap());
    }
}
