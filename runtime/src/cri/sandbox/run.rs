//! `RunPodSandbox`: validate the request, translate it into a
//! [`PodRequest`] and boot it (`sandbox/boot.rs` does the work: record,
//! host resources, shim, guest, and the undo of a failed boot).

use std::net::IpAddr;
use std::path::{Component, Path};
use std::sync::Arc;

use tonic::Status;
use vmpod_cri_api::v1::{
    LinuxContainerResources, NamespaceMode, PodSandboxConfig, Protocol, RunPodSandboxRequest,
    RunPodSandboxResponse,
};
use vmpod_shim_api::vm_spec::GuestSetup;

use crate::cri::labels::check_labels;
use crate::daemon::Daemon;
use crate::error::invalid;
use crate::network::attachment::{PodNetworkRequest, PortMapping};
use crate::sandbox::boot::{self, PodRequest, RUNTIME_HANDLERS};
use crate::sandbox::resources::Limits;
use crate::state::Metadata;

/// Longest name, namespace or uid: a DNS subdomain, like Kubernetes.
const MAX_NAME: usize = 253;
/// Linux's HOST_NAME_MAX.
const MAX_HOSTNAME: usize = 64;
/// glibc's resolver reads at most 3 nameservers and 6 search domains; more
/// would be silently ignored in the guest, so they are refused instead.
const MAX_DNS_SERVERS: usize = 3;
const MAX_DNS_SEARCHES: usize = 6;

pub async fn run_pod_sandbox(
    daemon: &Arc<Daemon>,
    req: RunPodSandboxRequest,
) -> Result<RunPodSandboxResponse, Status> {
    let config = req
        .config
        .ok_or_else(|| Status::invalid_argument("config is required"))?;
    let valid = validate(&config, &req.runtime_handler)?;
    let linux = config.linux.as_ref();
    let ns = linux
        .and_then(|l| l.security_context.as_ref())
        .and_then(|s| s.namespace_options.as_ref());
    let dns = config.dns_config.clone().unwrap_or_default();
    let own_network = ns.is_none_or(|n| n.network != NamespaceMode::Node as i32);
    let network = own_network.then(|| PodNetworkRequest {
        sandbox_id: String::new(),
        name: valid.metadata.name.clone(),
        namespace: valid.metadata.namespace.clone(),
        uid: valid.metadata.uid.clone(),
        port_mappings: valid.port_mappings,
        dns_servers: dns.servers.clone(),
        dns_searches: dns.searches.clone(),
        dns_options: dns.options.clone(),
    });
    let pod = PodRequest {
        metadata: valid.metadata,
        runtime_handler: req.runtime_handler,
        labels: config.labels.clone().into_iter().collect(),
        annotations: config.annotations.clone().into_iter().collect(),
        log_directory: config.log_directory.clone(),
        namespace_modes: ns.map_or([0; 3], |n| [n.network, n.pid, n.ipc]),
        sysctls: linux
            .map(|l| l.sysctls.clone().into_iter().collect())
            .unwrap_or_default(),
        cgroup_parent: linux.map(|l| l.cgroup_parent.clone()).unwrap_or_default(),
        limits: limits(linux.and_then(|l| l.resources.as_ref())),
        overhead: limits(linux.and_then(|l| l.overhead.as_ref())),
        guest: GuestSetup {
            hostname: valid.hostname,
            dns_servers: dns.servers,
            dns_searches: dns.searches,
            dns_options: dns.options,
            interfaces: Vec::new(),
        },
        network,
    };
    let pod_sandbox_id = boot::run(daemon, pod).await?;
    Ok(RunPodSandboxResponse { pod_sandbox_id })
}

/// The pod's CPU and memory limits (or its overhead); absent is none.
fn limits(r: Option<&LinuxContainerResources>) -> Limits {
    r.map_or_else(Limits::default, |r| Limits {
        cpu_quota: r.cpu_quota,
        cpu_period: r.cpu_period,
        memory_limit_bytes: r.memory_limit_in_bytes,
    })
}

struct Valid {
    metadata: Metadata,
    hostname: String,
    port_mappings: Vec<PortMapping>,
}

/// The hostPort mappings portmap is given: kubelet sends every declared
/// container port, and only those with a host port are mappings.
fn port_mappings(config: &PodSandboxConfig) -> Result<Vec<PortMapping>, Status> {
    let mut out = Vec::new();
    for (i, m) in config.port_mappings.iter().enumerate() {
        let field = |f: &str| format!("config.port_mappings[{i}].{f}");
        let port = |f: &str, v: i32, zero_ok: bool| {
            u16::try_from(v)
                .ok()
                .filter(|p| zero_ok || *p != 0)
                .ok_or_else(|| invalid(&field(f), format!("{v} is not a port (1..=65535)")))
        };
        let container_port = port("container_port", m.container_port, false)?;
        let host_port = port("host_port", m.host_port, true)?;
        let protocol = match Protocol::try_from(m.protocol) {
            Ok(Protocol::Tcp) => "tcp",
            Ok(Protocol::Udp) => "udp",
            Ok(Protocol::Sctp) => "sctp",
            Err(_) => {
                return Err(invalid(
                    &field("protocol"),
                    format!("{} is not TCP, UDP or SCTP", m.protocol),
                ));
            }
        };
        if !m.host_ip.is_empty() && m.host_ip.parse::<IpAddr>().is_err() {
            return Err(invalid(
                &field("host_ip"),
                format!("{:?} is not an IP address", m.host_ip),
            ));
        }
        if host_port != 0 {
            out.push(PortMapping {
                host_port,
                container_port,
                protocol,
                host_ip: m.host_ip.clone(),
            });
        }
    }
    Ok(out)
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

    check_labels(&config.labels, &config.annotations)?;

    Ok(Valid {
        metadata: Metadata {
            name: md.name.clone(),
            uid: md.uid.clone(),
            namespace: md.namespace.clone(),
            attempt,
        },
        hostname,
        port_mappings: port_mappings(config)?,
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
    fn resources_translate_to_limits() {
        assert_eq!(limits(None), Limits::default());
        let r = LinuxContainerResources {
            cpu_quota: 150_000,
            cpu_period: 100_000,
            memory_limit_in_bytes: 300 << 20,
            cpu_shares: 7,
            ..Default::default()
        };
        assert_eq!(
            limits(Some(&r)),
            Limits {
                cpu_quota: 150_000,
                cpu_period: 100_000,
                memory_limit_bytes: 300 << 20,
            }
        );
    }

    #[test]
    fn valid_config_and_hostname_from_name() {
        let v = validate(&config("web_0"), "vmpod").unwrap();
        assert_eq!(v.hostname, "web-0");
        assert_eq!(sanitize_hostname(&"x".repeat(100)).len(), MAX_HOSTNAME);
    }
}
