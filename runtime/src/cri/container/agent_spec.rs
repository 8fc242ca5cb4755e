//! From a CRI `ContainerConfig` and the image's config to what the shim
//! and agent run: the agent's `ContainerSpec` (process, security,
//! namespaces, resources) and the host paths to bind in.
//!
//! The merge rules are kubelet's and containerd's, so a pod behaves the same
//! on vmpod: a CRI `command` replaces the image's ENTRYPOINT and drops its
//! CMD; CRI `args` alone replace only CMD; CRI envs override image envs of
//! the same name; the CRI user beats the image's USER.
//!
//! Every problem is an INVALID_ARGUMENT naming the field, since the request
//! is the client's and the message is all kubelet shows.

use std::collections::BTreeMap;
use std::path::{Component, Path};

use tonic::Status;
use vmpod_agent_proto::v1 as agent;
use vmpod_cri_api::v1 as cri;
use vmpod_shim_api::v1::HostMount;

use crate::error::invalid;
use crate::image::config::ImageConfig;

/// A localhost seccomp profile larger than this is not a profile.
const MAX_SECCOMP_PROFILE: u64 = 1 << 20;
/// Bounds on what one request may ask for, so a hostile client cannot make
/// the daemon, shim or agent hold arbitrary amounts of it.
const MAX_ARGS: usize = 4096;
const MAX_ENVS: usize = 4096;
const MAX_MOUNTS: usize = 256;
const MAX_STRING: usize = 128 * 1024;

/// What CreateContainer hands the shim.
#[derive(Debug, Clone)]
pub struct Built {
    pub spec: agent::ContainerSpec,
    pub mounts: Vec<HostMount>,
    /// Absolute host path of the log file, or empty.
    pub log_path: String,
    pub stop_signal: i32,
}

/// The sandbox facts a container's spec depends on.
pub struct SandboxContext<'a> {
    pub log_directory: &'a str,
    pub sysctls: &'a BTreeMap<String, String>,
}

fn check_string(field: &str, s: &str) -> Result<(), Status> {
    if s.len() > MAX_STRING {
        return Err(invalid(
            field,
            format!("is {} bytes, more than {MAX_STRING}", s.len()),
        ));
    }
    if s.contains('\0') {
        return Err(invalid(field, "must not contain NUL"));
    }
    Ok(())
}

/// An absolute path with no `..`, as every in-container path must be.
fn check_container_path(field: &str, p: &str) -> Result<(), Status> {
    check_string(field, p)?;
    let path = Path::new(p);
    if !path.is_absolute() || path.components().any(|c| c == Component::ParentDir) {
        return Err(invalid(
            field,
            format!("{p:?} must be an absolute path without \"..\""),
        ));
    }
    Ok(())
}

pub fn build(
    id: &str,
    config: &cri::ContainerConfig,
    image: &ImageConfig,
    sandbox: &SandboxContext<'_>,
) -> Result<Built, Status> {
    let linux = config.linux.clone().unwrap_or_default();
    let sc = linux.security_context.clone().unwrap_or_default();

    let process = process(config, image, &sc)?;
    let mounts = host_mounts(config)?;
    let security = security(&sc, sandbox)?;
    let namespaces = namespaces(&sc)?;
    let resources = linux.resources.as_ref().map(resources).transpose()?;
    let log_path = log_path(config, sandbox)?;
    let stop_signal = stop_signal(config, image)?;

    if !config.devices.is_empty() || !config.cdi_devices.is_empty() {
        return Err(invalid(
            "devices",
            "host devices cannot be passed into a pod VM",
        ));
    }
    if let Some(se) = &sc.selinux_options
        && (!se.r#type.is_empty() || !se.level.is_empty())
    {
        tracing::info!(
            container = id,
            "SELinux options ignored: the guest has no SELinux"
        );
    }
    let apparmor = sc
        .apparmor
        .as_ref()
        .is_some_and(|p| p.profile_type != cri::security_profile::ProfileType::Unconfined as i32);
    #[allow(deprecated)] // old kubelets still send the string form
    let apparmor_string = !sc.apparmor_profile.is_empty();
    if apparmor || apparmor_string {
        tracing::info!(
            container = id,
            "AppArmor profile ignored: the guest has no AppArmor"
        );
    }

    Ok(Built {
        spec: agent::ContainerSpec {
            id: id.to_string(),
            rootfs: String::new(),
            readonly_rootfs: sc.readonly_rootfs,
            process: Some(process),
            mounts: sandbox_files(&mounts),
            security: Some(security),
            namespaces: Some(namespaces),
            resources,
            ..Default::default()
        },
        mounts,
        log_path,
        stop_signal,
    })
}

fn process(
    config: &cri::ContainerConfig,
    image: &ImageConfig,
    sc: &cri::LinuxContainerSecurityContext,
) -> Result<agent::Process, Status> {
    if config.command.len() + config.args.len() > MAX_ARGS {
        return Err(invalid("command/args", format!("more than {MAX_ARGS}")));
    }
    for (i, a) in config.command.iter().enumerate() {
        check_string(&format!("command[{i}]"), a)?;
    }
    for (i, a) in config.args.iter().enumerate() {
        check_string(&format!("args[{i}]"), a)?;
    }
    let mut args: Vec<String> = if config.command.is_empty() {
        let mut v = image.entrypoint.clone().unwrap_or_default();
        if config.args.is_empty() {
            v.extend(image.cmd.clone().unwrap_or_default());
        } else {
            v.extend(config.args.iter().cloned());
        }
        v
    } else {
        let mut v = config.command.clone();
        v.extend(config.args.iter().cloned());
        v
    };
    if args.first().is_none_or(String::is_empty) {
        return Err(invalid(
            "command",
            "no command given and the image has no ENTRYPOINT or CMD",
        ));
    }
    args.shrink_to_fit();

    if config.envs.len() > MAX_ENVS {
        return Err(invalid("envs", format!("more than {MAX_ENVS}")));
    }
    let mut env: Vec<String> = image.env.clone().unwrap_or_default();
    for (i, kv) in config.envs.iter().enumerate() {
        if kv.key.is_empty() || kv.key.contains('=') {
            return Err(invalid(
                &format!("envs[{i}].key"),
                format!("{:?} is not a variable name", kv.key),
            ));
        }
        check_string(&format!("envs[{i}].key"), &kv.key)?;
        let value = std::str::from_utf8(&kv.value)
            .map_err(|_| invalid(&format!("envs[{i}].value"), "is not UTF-8"))?;
        check_string(&format!("envs[{i}].value"), value)?;
        let prefix = format!("{}=", kv.key);
        env.retain(|e| !e.starts_with(&prefix) && e != &kv.key);
        env.push(format!("{}={value}", kv.key));
    }

    let cwd = if config.working_dir.is_empty() {
        image.working_dir.clone()
    } else {
        config.working_dir.clone()
    };
    if !cwd.is_empty() {
        check_container_path("working_dir", &cwd)?;
    }

    Ok(agent::Process {
        args,
        env,
        cwd,
        user: Some(user(image, sc)?),
        tty: config.tty,
        stdin: config.stdin,
        stdin_once: config.stdin_once,
    })
}

/// The CRI user if any, else the image's `USER` (`name`, `uid`,
/// `name:group`, `uid:gid`, ...).
fn user(
    image: &ImageConfig,
    sc: &cri::LinuxContainerSecurityContext,
) -> Result<agent::User, Status> {
    let mut u = agent::User::default();
    let (img_user, img_group) = match image.user.split_once(':') {
        Some((a, b)) => (a, b),
        None => (image.user.as_str(), ""),
    };
    if let Some(v) = &sc.run_as_user {
        u.uid = Some(id_from("run_as_user", v.value)?);
    } else if !sc.run_as_username.is_empty() {
        check_string("run_as_username", &sc.run_as_username)?;
        u.username = sc.run_as_username.clone();
    } else if let Ok(n) = img_user.parse::<u32>() {
        u.uid = Some(n);
    } else if !img_user.is_empty() {
        u.username = img_user.to_string();
    }
    if let Some(v) = &sc.run_as_group {
        u.gid = Some(id_from("run_as_group", v.value)?);
    } else if sc.run_as_user.is_none() && sc.run_as_username.is_empty() {
        // The image's group goes with the image's user only.
        if let Ok(n) = img_group.parse::<u32>() {
            u.gid = Some(n);
        } else if !img_group.is_empty() {
            u.groupname = img_group.to_string();
        }
    }
    for (i, g) in sc.supplemental_groups.iter().enumerate() {
        u.additional_gids
            .push(id_from(&format!("supplemental_groups[{i}]"), *g)?);
    }
    u.strict_groups = sc.supplemental_groups_policy == cri::SupplementalGroupsPolicy::Strict as i32;
    Ok(u)
}

fn id_from(field: &str, v: i64) -> Result<u32, Status> {
    u32::try_from(v).map_err(|_| invalid(field, format!("{v} is not a valid id")))
}

fn host_mounts(config: &cri::ContainerConfig) -> Result<Vec<HostMount>, Status> {
    if config.mounts.len() > MAX_MOUNTS {
        return Err(invalid("mounts", format!("more than {MAX_MOUNTS}")));
    }
    let mut out = Vec::with_capacity(config.mounts.len());
    for (i, m) in config.mounts.iter().enumerate() {
        let field = |f: &str| format!("mounts[{i}].{f}");
        check_container_path(&field("container_path"), &m.container_path)?;
        if m.image.is_some() {
            return Err(invalid(&field("image"), "image volumes are not supported"));
        }
        if !m.uid_mappings.is_empty() || !m.gid_mappings.is_empty() {
            return Err(invalid(
                &field("uidMappings"),
                "user namespaces are not supported",
            ));
        }
        if m.recursive_read_only && !m.readonly {
            return Err(invalid(
                &field("recursive_read_only"),
                "requires readonly to be set too",
            ));
        }
        check_string(&field("host_path"), &m.host_path)?;
        let host = Path::new(&m.host_path);
        if !host.is_absolute() {
            return Err(invalid(
                &field("host_path"),
                format!("{:?} must be an absolute path", m.host_path),
            ));
        }
        if std::fs::symlink_metadata(host).is_err() {
            return Err(Status::not_found(format!(
                "{}: {} does not exist on the host",
                field("host_path"),
                m.host_path
            )));
        }
        if m.selinux_relabel {
            tracing::info!(
                host_path = %m.host_path,
                "selinux_relabel ignored: the guest has no SELinux"
            );
        }
        let propagation = match cri::MountPropagation::try_from(m.propagation) {
            Ok(cri::MountPropagation::PropagationPrivate) => agent::Propagation::Private,
            Ok(cri::MountPropagation::PropagationHostToContainer) => {
                agent::Propagation::HostToContainer
            }
            Ok(cri::MountPropagation::PropagationBidirectional) => {
                agent::Propagation::Bidirectional
            }
            Err(_) => {
                return Err(invalid(
                    &field("propagation"),
                    format!("{} is not a propagation mode", m.propagation),
                ));
            }
        };
        out.push(HostMount {
            host_path: m.host_path.clone(),
            container_path: m.container_path.clone(),
            readonly: m.readonly,
            recursive_readonly: m.recursive_read_only,
            propagation: propagation.into(),
        });
    }
    Ok(out)
}

/// The pod's /etc/resolv.conf, /etc/hosts and /etc/hostname, which SetupSandbox wrote in
/// the guest from the sandbox config, bound into every container like
/// containerd does, unless a CRI mount (kubelet's own hosts file) covers
/// the path already.
fn sandbox_files(mounts: &[HostMount]) -> Vec<agent::Mount> {
    ["/etc/resolv.conf", "/etc/hosts", "/etc/hostname"]
        .into_iter()
        .filter(|p| {
            !mounts
                .iter()
                .any(|m| Path::new(&m.container_path) == Path::new(p))
        })
        .map(|p| agent::Mount {
            source: p.to_string(),
            destination: p.to_string(),
            r#type: "bind".into(),
            ..Default::default()
        })
        .collect()
}

fn security(
    sc: &cri::LinuxContainerSecurityContext,
    sandbox: &SandboxContext<'_>,
) -> Result<agent::Security, Status> {
    let caps = sc.capabilities.clone().unwrap_or_default();
    for (field, list) in [
        ("capabilities.add_capabilities", &caps.add_capabilities),
        ("capabilities.drop_capabilities", &caps.drop_capabilities),
    ] {
        for (i, c) in list.iter().enumerate() {
            if !valid_capability(c) {
                return Err(invalid(
                    &format!("{field}[{i}]"),
                    format!("{c:?} is not a capability"),
                ));
            }
        }
    }
    if !caps.add_ambient_capabilities.is_empty() {
        return Err(invalid(
            "capabilities.add_ambient_capabilities",
            "ambient capabilities are not supported",
        ));
    }
    for (field, list) in [
        ("masked_paths", &sc.masked_paths),
        ("readonly_paths", &sc.readonly_paths),
    ] {
        for (i, p) in list.iter().enumerate() {
            check_container_path(&format!("{field}[{i}]"), p)?;
        }
    }
    Ok(agent::Security {
        privileged: sc.privileged,
        add_capabilities: caps.add_capabilities,
        drop_capabilities: caps.drop_capabilities,
        no_new_privs: sc.no_new_privs,
        seccomp: Some(seccomp(sc)?),
        masked_paths: sc.masked_paths.clone(),
        readonly_paths: sc.readonly_paths.clone(),
        sysctls: sandbox
            .sysctls
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect(),
    })
}

/// `CAP_X`, `X` (any case) or `ALL`.
fn valid_capability(c: &str) -> bool {
    let name = c
        .strip_prefix("CAP_")
        .or_else(|| c.strip_prefix("cap_"))
        .unwrap_or(c);
    !name.is_empty()
        && name.len() <= 32
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
}

fn seccomp(sc: &cri::LinuxContainerSecurityContext) -> Result<agent::Seccomp, Status> {
    use agent::seccomp::Kind;
    use cri::security_profile::ProfileType;
    let unconfined = agent::Seccomp {
        kind: Kind::Unconfined.into(),
        profile_json: String::new(),
    };
    if sc.privileged {
        return Ok(unconfined);
    }
    let (kind, localhost) = match &sc.seccomp {
        Some(p) => match ProfileType::try_from(p.profile_type) {
            Ok(ProfileType::RuntimeDefault) => (Kind::RuntimeDefault, None),
            Ok(ProfileType::Unconfined) => (Kind::Unconfined, None),
            Ok(ProfileType::Localhost) => (Kind::Profile, Some(p.localhost_ref.clone())),
            Err(_) => {
                return Err(invalid(
                    "security_context.seccomp.profile_type",
                    format!("{} is not a profile type", p.profile_type),
                ));
            }
        },
        // The deprecated string form, as old kubelets send it.
        #[allow(deprecated)]
        None => match sc.seccomp_profile_path.as_str() {
            "" | "unconfined" => (Kind::Unconfined, None),
            "runtime/default" | "docker/default" => (Kind::RuntimeDefault, None),
            p => match p.strip_prefix("localhost/") {
                Some(path) => (Kind::Profile, Some(path.to_string())),
                None => {
                    return Err(invalid(
                        "security_context.seccomp_profile_path",
                        format!("{p:?} is not a known profile"),
                    ));
                }
            },
        },
    };
    let profile_json = match localhost {
        None => String::new(),
        Some(path) => read_profile(&path)?,
    };
    Ok(agent::Seccomp {
        kind: kind.into(),
        profile_json,
    })
}

/// Reads a localhost seccomp profile: a JSON object, of bounded size.
fn read_profile(path: &str) -> Result<String, Status> {
    let field = "security_context.seccomp.localhost_ref";
    if !Path::new(path).is_absolute() {
        return Err(invalid(field, format!("{path:?} must be an absolute path")));
    }
    let meta =
        std::fs::metadata(path).map_err(|e| invalid(field, format!("cannot read {path}: {e}")))?;
    if !meta.is_file() || meta.len() > MAX_SECCOMP_PROFILE {
        return Err(invalid(
            field,
            format!("{path} is not a file of at most {MAX_SECCOMP_PROFILE} bytes"),
        ));
    }
    let text = std::fs::read_to_string(path)
        .map_err(|e| invalid(field, format!("cannot read {path}: {e}")))?;
    match serde_json::from_str::<serde_json::Value>(&text) {
        Ok(serde_json::Value::Object(_)) => Ok(text),
        Ok(_) => Err(invalid(field, format!("{path} is not a JSON object"))),
        Err(e) => Err(invalid(field, format!("{path} is not valid JSON: {e}"))),
    }
}

fn namespaces(sc: &cri::LinuxContainerSecurityContext) -> Result<agent::Namespaces, Status> {
    let opts = sc.namespace_options.clone().unwrap_or_default();
    let map = |field: &str, v: i32| -> Result<agent::NamespaceMode, Status> {
        match cri::NamespaceMode::try_from(v) {
            Ok(cri::NamespaceMode::Pod) => Ok(agent::NamespaceMode::NamespacePod),
            Ok(cri::NamespaceMode::Container) => Ok(agent::NamespaceMode::NamespaceContainer),
            Ok(cri::NamespaceMode::Node) => Ok(agent::NamespaceMode::NamespaceNode),
            Ok(cri::NamespaceMode::Target) => Err(invalid(
                field,
                "TARGET (another container's namespace) is not supported yet",
            )),
            Err(_) => Err(invalid(field, format!("{v} is not a namespace mode"))),
        }
    };
    if opts.userns_options.as_ref().is_some_and(|u| u.mode != 0) {
        return Err(invalid(
            "security_context.namespace_options.userns_options",
            "user namespaces are not supported",
        ));
    }
    let pid = map("security_context.namespace_options.pid", opts.pid)?;
    let ipc = map("security_context.namespace_options.ipc", opts.ipc)?;
    if ipc == agent::NamespaceMode::NamespaceContainer {
        // kubelet only ever asks for POD or NODE; CONTAINER would be a bug.
        tracing::debug!("IPC namespace of the container's own requested");
    }
    Ok(agent::Namespaces {
        pid: pid.into(),
        ipc: ipc.into(),
    })
}

pub fn resources(r: &cri::LinuxContainerResources) -> Result<agent::Resources, Status> {
    for (field, v) in [
        ("resources.cpu_period", r.cpu_period),
        ("resources.cpu_quota", r.cpu_quota),
        ("resources.cpu_shares", r.cpu_shares),
        ("resources.memory_limit_in_bytes", r.memory_limit_in_bytes),
    ] {
        if v < 0 {
            return Err(invalid(field, format!("{v} is negative")));
        }
    }
    if !(-1000..=1000).contains(&r.oom_score_adj) {
        return Err(invalid(
            "resources.oom_score_adj",
            format!("{} is outside -1000..1000", r.oom_score_adj),
        ));
    }
    for (field, v) in [
        ("resources.cpuset_cpus", &r.cpuset_cpus),
        ("resources.cpuset_mems", &r.cpuset_mems),
    ] {
        if !v
            .bytes()
            .all(|b| b.is_ascii_digit() || b == b',' || b == b'-')
        {
            return Err(invalid(field, format!("{v:?} is not a cpu list")));
        }
    }
    for (k, v) in &r.unified {
        let valid_key = !k.is_empty()
            && k.len() <= 64
            && k.contains('.')
            && k.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'_');
        if !valid_key {
            return Err(invalid(
                "resources.unified",
                format!("{k:?} is not a cgroup file name"),
            ));
        }
        check_string(&format!("resources.unified[{k}]"), v)?;
        if v.contains('\n') {
            return Err(invalid(
                &format!("resources.unified[{k}]"),
                "must be one line",
            ));
        }
    }
    let mut hugepage_limits = std::collections::HashMap::new();
    for h in &r.hugepage_limits {
        if !h.page_size.bytes().all(|b| b.is_ascii_alphanumeric()) || h.page_size.is_empty() {
            return Err(invalid(
                "resources.hugepage_limits",
                format!("{:?} is not a page size", h.page_size),
            ));
        }
        hugepage_limits.insert(h.page_size.clone(), h.limit);
    }
    Ok(agent::Resources {
        cpu_period: r.cpu_period,
        cpu_quota: r.cpu_quota,
        cpu_shares: r.cpu_shares,
        memory_limit_bytes: r.memory_limit_in_bytes,
        oom_score_adj: r.oom_score_adj,
        cpuset_cpus: r.cpuset_cpus.clone(),
        cpuset_mems: r.cpuset_mems.clone(),
        hugepage_limits,
        unified: r.unified.clone(),
        memory_swap_limit_bytes: r.memory_swap_limit_in_bytes,
        pids_limit: 0,
    })
}

/// The sandbox's log dir joined with the container's relative log path, as
/// kubelet lays them out (`<pod log dir>/<name>/<attempt>.log`).
fn log_path(config: &cri::ContainerConfig, sandbox: &SandboxContext<'_>) -> Result<String, Status> {
    if config.log_path.is_empty() {
        return Ok(String::new());
    }
    check_string("log_path", &config.log_path)?;
    let rel = Path::new(&config.log_path);
    if rel.is_absolute() || rel.components().any(|c| c == Component::ParentDir) {
        return Err(invalid(
            "log_path",
            format!(
                "{:?} must be relative to the sandbox's log_directory, without \"..\"",
                config.log_path
            ),
        ));
    }
    if sandbox.log_directory.is_empty() {
        return Err(invalid(
            "log_path",
            "is set but the sandbox has no log_directory",
        ));
    }
    Ok(Path::new(sandbox.log_directory)
        .join(rel)
        .to_string_lossy()
        .into_owned())
}

fn stop_signal(config: &cri::ContainerConfig, image: &ImageConfig) -> Result<i32, Status> {
    if config.stop_signal != 0 {
        // The CRI enum's numbers are the Linux ones (SIGHUP = 1, ...).
        return Ok(config.stop_signal);
    }
    if image.stop_signal.is_empty() {
        return Ok(0);
    }
    parse_signal(&image.stop_signal).ok_or_else(|| {
        Status::failed_precondition(format!(
            "the image's StopSignal {:?} is not a signal",
            image.stop_signal
        ))
    })
}

/// `SIGTERM`, `TERM` or `15`.
pub fn parse_signal(s: &str) -> Option<i32> {
    if let Ok(n) = s.parse::<i32>() {
        return (1..=64).contains(&n).then_some(n);
    }
    let name = s.strip_prefix("SIG").unwrap_or(s).to_ascii_uppercase();
    let sig: nix::sys::signal::Signal = format!("SIG{name}").parse().ok()?;
    Some(sig as i32)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ctx() -> (String, BTreeMap<String, String>) {
        ("/var/log/pods/p".to_string(), BTreeMap::new())
    }

    fn build_with(config: &cri::ContainerConfig, image: &ImageConfig) -> Result<Built, Status> {
        let (dir, sysctls) = ctx();
        build(
            "c1",
            config,
            image,
            &SandboxContext {
                log_directory: &dir,
                sysctls: &sysctls,
            },
        )
    }

    fn image() -> ImageConfig {
        ImageConfig::from_blob(
            br#"{"config":{"User":"app:staff","Env":["PATH=/bin","A=image"],
                 "Entrypoint":["/entry"],"Cmd":["default"],"WorkingDir":"/srv",
                 "StopSignal":"SIGQUIT"},"rootfs":{}}"#,
        )
        .unwrap()
    }

    fn err(config: &cri::ContainerConfig) -> String {
        build_with(config, &image())
            .unwrap_err()
            .message()
            .to_string()
    }

    #[test]
    fn image_defaults_apply() {
        let b = build_with(&cri::ContainerConfig::default(), &image()).unwrap();
        let p = b.spec.process.unwrap();
        assert_eq!(p.args, ["/entry", "default"]);
        assert_eq!(p.cwd, "/srv");
        assert_eq!(p.env, ["PATH=/bin", "A=image"]);
        let u = p.user.unwrap();
        assert_eq!(
            (u.username.as_str(), u.groupname.as_str()),
            ("app", "staff")
        );
        assert_eq!(b.stop_signal, libc::SIGQUIT);
        assert!(b.log_path.is_empty());
        let dests: Vec<&str> = b
            .spec
            .mounts
            .iter()
            .map(|m| m.destination.as_str())
            .collect();
        assert_eq!(dests, ["/etc/resolv.conf", "/etc/hosts", "/etc/hostname"]);
    }

    #[test]
    fn cri_overrides_follow_kubelet_rules() {
        let mut c = cri::ContainerConfig {
            args: vec!["x".into()],
            working_dir: "/w".into(),
            envs: vec![cri::KeyValue {
                key: "A".into(),
                value: b"cri".to_vec(),
            }],
            log_path: "c/0.log".into(),
            ..Default::default()
        };
        let b = build_with(&c, &image()).unwrap();
        let p = b.spec.process.unwrap();
        assert_eq!(p.args, ["/entry", "x"], "args replace CMD only");
        assert_eq!(p.env, ["PATH=/bin", "A=cri"]);
        assert_eq!(p.cwd, "/w");
        assert_eq!(b.log_path, "/var/log/pods/p/c/0.log");

        c.command = vec!["/bin/sh".into()];
        let p = build_with(&c, &image()).unwrap().spec.process.unwrap();
        assert_eq!(
            p.args,
            ["/bin/sh", "x"],
            "command replaces ENTRYPOINT and CMD"
        );

        let mut sc = cri::LinuxContainerSecurityContext {
            run_as_user: Some(cri::Int64Value { value: 1000 }),
            supplemental_groups: vec![5, 6],
            ..Default::default()
        };
        c.linux = Some(cri::LinuxContainerConfig {
            security_context: Some(sc.clone()),
            resources: None,
        });
        let u = build_with(&c, &image())
            .unwrap()
            .spec
            .process
            .unwrap()
            .user
            .unwrap();
        assert_eq!(u.uid, Some(1000));
        assert!(u.username.is_empty() && u.groupname.is_empty() && u.gid.is_none());
        assert_eq!(u.additional_gids, [5, 6]);
        sc.run_as_group = Some(cri::Int64Value { value: 7 });
        c.linux = Some(cri::LinuxContainerConfig {
            security_context: Some(sc),
            resources: None,
        });
        let u = build_with(&c, &image())
            .unwrap()
            .spec
            .process
            .unwrap()
            .user
            .unwrap();
        assert_eq!(u.gid, Some(7));
    }

    #[test]
    fn bad_fields_are_named() {
        let empty = ImageConfig::default();
        let (dir, sysctls) = ctx();
        let e = build(
            "c",
            &cri::ContainerConfig::default(),
            &empty,
            &SandboxContext {
                log_directory: &dir,
                sysctls: &sysctls,
            },
        )
        .unwrap_err();
        assert!(e.message().starts_with("command:"), "{}", e.message());

        let mount = |p: &str| cri::ContainerConfig {
            mounts: vec![cri::Mount {
                container_path: p.into(),
                host_path: "/tmp".into(),
                ..Default::default()
            }],
            ..Default::default()
        };
        assert!(err(&mount("relative")).starts_with("mounts[0].container_path:"));
        assert!(err(&mount("/a/../etc")).starts_with("mounts[0].container_path:"));
        let mut m = mount("/data");
        m.mounts[0].host_path = "/nonexistent/vmpod-test".into();
        let e = build_with(&m, &image()).unwrap_err();
        assert_eq!(e.code(), tonic::Code::NotFound);
        assert!(e.message().contains("/nonexistent/vmpod-test"));

        let c = cri::ContainerConfig {
            log_path: "../escape.log".into(),
            ..Default::default()
        };
        assert!(err(&c).starts_with("log_path:"));
        let c = cri::ContainerConfig {
            envs: vec![cri::KeyValue {
                key: "A=B".into(),
                value: Vec::new(),
            }],
            ..Default::default()
        };
        assert!(err(&c).starts_with("envs[0].key:"));
        let c = cri::ContainerConfig {
            linux: Some(cri::LinuxContainerConfig {
                resources: Some(cri::LinuxContainerResources {
                    unified: [("../memory.max".to_string(), "1".to_string())].into(),
                    ..Default::default()
                }),
                security_context: None,
            }),
            ..Default::default()
        };
        assert!(err(&c).starts_with("resources.unified:"));
    }

    #[test]
    fn seccomp_profiles() {
        use agent::seccomp::Kind;
        let with = |sc: cri::LinuxContainerSecurityContext| {
            let c = cri::ContainerConfig {
                linux: Some(cri::LinuxContainerConfig {
                    security_context: Some(sc),
                    resources: None,
                }),
                ..Default::default()
            };
            build_with(&c, &image())
        };
        let kind = |sc| {
            with(sc)
                .unwrap()
                .spec
                .security
                .unwrap()
                .seccomp
                .unwrap()
                .kind
        };
        assert_eq!(kind(Default::default()), Kind::Unconfined as i32);
        assert_eq!(
            kind(cri::LinuxContainerSecurityContext {
                seccomp: Some(cri::SecurityProfile::default()),
                ..Default::default()
            }),
            Kind::RuntimeDefault as i32
        );
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("p.json");
        std::fs::write(&path, r#"{"defaultAction":"SCMP_ACT_ALLOW"}"#).unwrap();
        let sc = cri::LinuxContainerSecurityContext {
            seccomp: Some(cri::SecurityProfile {
                profile_type: 2,
                localhost_ref: path.to_string_lossy().into(),
            }),
            ..Default::default()
        };
        let s = with(sc).unwrap().spec.security.unwrap().seccomp.unwrap();
        assert_eq!(s.kind, Kind::Profile as i32);
        assert!(s.profile_json.contains("SCMP_ACT_ALLOW"));
        std::fs::write(&path, "not json").unwrap();
        let sc = cri::LinuxContainerSecurityContext {
            seccomp: Some(cri::SecurityProfile {
                profile_type: 2,
                localhost_ref: path.to_string_lossy().into(),
            }),
            ..Default::default()
        };
        let e = with(sc).unwrap_err();
        assert!(e.message().contains("not valid JSON"), "{}", e.message());
    }

    #[test]
    fn signals_parse() {
        assert_eq!(parse_signal("SIGKILL"), Some(9));
        assert_eq!(parse_signal("term"), Some(15));
        assert_eq!(parse_signal("3"), Some(3));
        assert_eq!(parse_signal("SIGNOPE"), None);
        assert_eq!(parse_signal("99"), None);
    }
}
