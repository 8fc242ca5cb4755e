//! Validation of a `ContainerSpec` before anything is created.
//!
//! Every check names the offending field (`process.args`, `mounts[2].destination`)
//! so the shim and, behind it, kubelet can say what was wrong. Errors are
//! `InvalidArgument`: they depend on the request alone, never on the guest.

use nix::mount::MsFlags;
use tonic::Status;
use vmpod_agent_proto::v1::{
    ContainerSpec, Mount, NamespaceMode, Propagation, Resources, Security, seccomp,
};

/// The longest id (the shim uses CRI's 64 hex digits).
pub const MAX_ID_LEN: usize = 64;

fn invalid(field: &str, why: impl std::fmt::Display) -> Status {
    Status::invalid_argument(format!("{field}: {why}"))
}

/// A container id: 1-64 of `[A-Za-z0-9_-]`, so it is safe as a path
/// component and a cgroup name.
pub fn check_id(field: &str, id: &str) -> Result<(), Status> {
    if id.is_empty() || id.len() > MAX_ID_LEN {
        return Err(invalid(field, format!("must be 1-{MAX_ID_LEN} characters")));
    }
    if !id
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
    {
        return Err(invalid(
            field,
            format!("{id:?} may only hold letters, digits, '_' and '-'"),
        ));
    }
    Ok(())
}

/// An absolute path without `..` components or NUL bytes.
pub fn check_abs_path(field: &str, path: &str) -> Result<(), Status> {
    if !path.starts_with('/') {
        return Err(invalid(field, format!("{path:?} is not an absolute path")));
    }
    if path.contains('\0') {
        return Err(invalid(field, "contains a NUL byte"));
    }
    if path.split('/').any(|c| c == "..") {
        return Err(invalid(field, format!("{path:?} contains \"..\"")));
    }
    Ok(())
}

fn check_no_nul(field: &str, s: &str) -> Result<(), Status> {
    if s.contains('\0') {
        return Err(invalid(field, "contains a NUL byte"));
    }
    Ok(())
}

/// The namespace modes of the spec, decoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NsModes {
    pub pid: NamespaceMode,
    pub ipc: NamespaceMode,
}

fn ns_mode(field: &str, raw: i32) -> Result<NamespaceMode, Status> {
    NamespaceMode::try_from(raw).map_err(|_| invalid(field, format!("unknown mode {raw}")))
}

/// Checks the whole spec; returns the decoded namespace modes.
pub fn validate(spec: &ContainerSpec) -> Result<NsModes, Status> {
    check_id("spec.id", &spec.id)?;
    if spec.rootfs.is_empty() {
        return Err(invalid("spec.rootfs", "is required"));
    }
    check_abs_path("spec.rootfs", &spec.rootfs)?;
    if !spec.writable_dir.is_empty() {
        check_abs_path("spec.writable_dir", &spec.writable_dir)?;
    }

    let process = spec
        .process
        .as_ref()
        .ok_or_else(|| invalid("spec.process", "is required"))?;
    if process.args.first().is_none_or(|a| a.is_empty()) {
        return Err(invalid("process.args", "needs a command (args[0])"));
    }
    for (i, a) in process.args.iter().enumerate() {
        check_no_nul(&format!("process.args[{i}]"), a)?;
    }
    for (i, e) in process.env.iter().enumerate() {
        let field = format!("process.env[{i}]");
        check_no_nul(&field, e)?;
        match e.split_once('=') {
            Some((k, _)) if !k.is_empty() => {}
            _ => return Err(invalid(&field, format!("{e:?} is not KEY=VALUE"))),
        }
    }
    if !process.cwd.is_empty() {
        check_abs_path("process.cwd", &process.cwd)?;
    }
    if let Some(user) = &process.user {
        if user.uid.is_some() && !user.username.is_empty() {
            return Err(invalid("process.user", "set uid or username, not both"));
        }
        if user.gid.is_some() && !user.groupname.is_empty() {
            return Err(invalid("process.user", "set gid or groupname, not both"));
        }
        for (field, name) in [
            ("process.user.username", &user.username),
            ("process.user.groupname", &user.groupname),
        ] {
            if name.contains([':', '\n', '\0']) {
                return Err(invalid(field, format!("{name:?} is not a valid name")));
            }
        }
    }

    for (i, m) in spec.mounts.iter().enumerate() {
        check_mount(i, m)?;
    }

    let namespaces = spec.namespaces.unwrap_or_default();
    let modes = NsModes {
        pid: ns_mode("namespaces.pid", namespaces.pid)?,
        ipc: ns_mode("namespaces.ipc", namespaces.ipc)?,
    };
    if let Some(security) = &spec.security {
        check_security(security, modes)?;
    }
    if let Some(resources) = &spec.resources {
        check_resources("resources", resources)?;
    }
    Ok(modes)
}

fn check_mount(i: usize, m: &Mount) -> Result<(), Status> {
    let field = |f: &str| format!("mounts[{i}].{f}");
    check_abs_path(&field("destination"), &m.destination)?;
    if m.destination.trim_end_matches('/').is_empty() {
        return Err(invalid(&field("destination"), "cannot be the root"));
    }
    check_no_nul(&field("source"), &m.source)?;
    if is_bind(m) {
        if m.source.is_empty() {
            return Err(invalid(&field("source"), "a bind mount needs a source"));
        }
        check_abs_path(&field("source"), &m.source)?;
    } else if !m
        .r#type
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'_' || b == b'-')
    {
        return Err(invalid(
            &field("type"),
            format!("{:?} is not a filesystem type", m.r#type),
        ));
    }
    Propagation::try_from(m.propagation).map_err(|_| {
        invalid(
            &field("propagation"),
            format!("unknown value {}", m.propagation),
        )
    })?;
    parse_mount_options(&field("options"), &m.options)?;
    Ok(())
}

/// Whether a mount is a bind mount: type "bind" or empty, or a "bind" /
/// "rbind" option (the OCI way).
pub fn is_bind(m: &Mount) -> bool {
    m.r#type.is_empty()
        || m.r#type == "bind"
        || m.options.iter().any(|o| o == "bind" || o == "rbind")
}

/// Mount options turned into flags: what the mount call gets, and what
/// only a later propagation change can apply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MountOptions {
    pub flags: MsFlags,
    /// Filesystem-specific options (`size=64m`), comma-joined.
    pub data: String,
    /// `bind` (not `rbind`) was asked for: no submounts.
    pub non_recursive: bool,
    pub readonly: bool,
    /// A propagation option (`rslave`, ...), overriding the spec's field.
    pub propagation: Option<MsFlags>,
}

impl Default for MountOptions {
    fn default() -> Self {
        Self {
            flags: MsFlags::empty(),
            data: String::new(),
            non_recursive: false,
            readonly: false,
            propagation: None,
        }
    }
}

/// Parses fstab-style options. Unknown words that look like `key=value`
/// or a plain word go to the filesystem as data, as mount(8) does.
pub fn parse_mount_options(field: &str, options: &[String]) -> Result<MountOptions, Status> {
    let mut out = MountOptions::default();
    let mut data = Vec::new();
    for opt in options {
        check_no_nul(field, opt)?;
        if opt.contains(',') {
            return Err(invalid(
                field,
                format!("{opt:?}: give one option per entry"),
            ));
        }
        let (set, clear) = match opt.as_str() {
            "ro" => {
                out.readonly = true;
                (MsFlags::empty(), MsFlags::empty())
            }
            "rw" => {
                out.readonly = false;
                (MsFlags::empty(), MsFlags::empty())
            }
            "bind" => {
                out.non_recursive = true;
                (MsFlags::empty(), MsFlags::empty())
            }
            "rbind" => {
                out.non_recursive = false;
                (MsFlags::empty(), MsFlags::empty())
            }
            "nosuid" => (MsFlags::MS_NOSUID, MsFlags::empty()),
            "suid" => (MsFlags::empty(), MsFlags::MS_NOSUID),
            "nodev" => (MsFlags::MS_NODEV, MsFlags::empty()),
            "dev" => (MsFlags::empty(), MsFlags::MS_NODEV),
            "noexec" => (MsFlags::MS_NOEXEC, MsFlags::empty()),
            "exec" => (MsFlags::empty(), MsFlags::MS_NOEXEC),
            "sync" => (MsFlags::MS_SYNCHRONOUS, MsFlags::empty()),
            "async" => (MsFlags::empty(), MsFlags::MS_SYNCHRONOUS),
            "dirsync" => (MsFlags::MS_DIRSYNC, MsFlags::empty()),
            "noatime" => (MsFlags::MS_NOATIME, MsFlags::empty()),
            "atime" => (MsFlags::empty(), MsFlags::MS_NOATIME),
            "nodiratime" => (MsFlags::MS_NODIRATIME, MsFlags::empty()),
            "diratime" => (MsFlags::empty(), MsFlags::MS_NODIRATIME),
            "relatime" => (MsFlags::MS_RELATIME, MsFlags::empty()),
            "norelatime" => (MsFlags::empty(), MsFlags::MS_RELATIME),
            "strictatime" => (MsFlags::MS_STRICTATIME, MsFlags::empty()),
            "nostrictatime" => (MsFlags::empty(), MsFlags::MS_STRICTATIME),
            "defaults" => (MsFlags::empty(), MsFlags::empty()),
            "private" | "rprivate" => {
                out.propagation = Some(MsFlags::MS_PRIVATE);
                (MsFlags::empty(), MsFlags::empty())
            }
            "slave" | "rslave" => {
                out.propagation = Some(MsFlags::MS_SLAVE);
                (MsFlags::empty(), MsFlags::empty())
            }
            "shared" | "rshared" => {
                out.propagation = Some(MsFlags::MS_SHARED);
                (MsFlags::empty(), MsFlags::empty())
            }
            "unbindable" | "runbindable" => {
                out.propagation = Some(MsFlags::MS_UNBINDABLE);
                (MsFlags::empty(), MsFlags::empty())
            }
            "" => return Err(invalid(field, "empty option")),
            other => {
                data.push(other.to_string());
                (MsFlags::empty(), MsFlags::empty())
            }
        };
        out.flags.insert(set);
        out.flags.remove(clear);
    }
    out.data = data.join(",");
    Ok(out)
}

/// Sysctls a container may set: only those the kernel keeps per namespace.
/// IPC ones need an IPC namespace of the container's or the pod's; `net.*`
/// is always the pod's, since the VM is the pod's network namespace.
fn check_sysctl(key: &str, modes: NsModes) -> Result<(), String> {
    let ipc = key.starts_with("kernel.shm")
        || key.starts_with("kernel.msg")
        || key == "kernel.sem"
        || key.starts_with("fs.mqueue.");
    let net = key.starts_with("net.");
    if !ipc && !net {
        return Err(
            "not a namespaced sysctl (kernel.shm*, kernel.msg*, kernel.sem, fs.mqueue.*, net.*)"
                .into(),
        );
    }
    if ipc && modes.ipc == NamespaceMode::NamespaceNode {
        return Err("IPC sysctls need an IPC namespace other than the node's".into());
    }
    if key.split('.').any(|c| c.is_empty() || c == "..")
        || !key
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'_' || b == b'-')
    {
        return Err("is not a sysctl name".into());
    }
    Ok(())
}

fn check_security(s: &Security, modes: NsModes) -> Result<(), Status> {
    for (i, p) in s.masked_paths.iter().enumerate() {
        check_abs_path(&format!("security.masked_paths[{i}]"), p)?;
    }
    for (i, p) in s.readonly_paths.iter().enumerate() {
        check_abs_path(&format!("security.readonly_paths[{i}]"), p)?;
    }
    for (key, value) in &s.sysctls {
        let field = format!("security.sysctls[{key}]");
        check_sysctl(key, modes).map_err(|why| invalid(&field, why))?;
        if value.contains(['\n', '\0']) {
            return Err(invalid(&field, "value holds a newline or NUL"));
        }
    }
    if let Some(sc) = &s.seccomp {
        let kind = seccomp::Kind::try_from(sc.kind)
            .map_err(|_| invalid("security.seccomp.kind", format!("unknown kind {}", sc.kind)))?;
        if kind == seccomp::Kind::Profile && sc.profile_json.trim().is_empty() {
            return Err(invalid(
                "security.seccomp.profile_json",
                "PROFILE needs a profile",
            ));
        }
    }
    // Capability names are checked where they are resolved (caps.rs).
    Ok(())
}

/// Checks resource values (also used by UpdateContainer).
pub fn check_resources(prefix: &str, r: &Resources) -> Result<(), Status> {
    let field = |f: &str| format!("{prefix}.{f}");
    if r.cpu_period != 0 && !(1_000..=1_000_000).contains(&r.cpu_period) {
        return Err(invalid(
            &field("cpu_period"),
            "must be 1000-1000000 (us) or 0",
        ));
    }
    if r.cpu_quota < -1 || (r.cpu_quota > 0 && r.cpu_quota < 1_000) {
        return Err(invalid(
            &field("cpu_quota"),
            "must be >= 1000 (us), 0 or -1",
        ));
    }
    if r.cpu_shares < 0 {
        return Err(invalid(&field("cpu_shares"), "must not be negative"));
    }
    if r.memory_limit_bytes < 0 {
        return Err(invalid(
            &field("memory_limit_bytes"),
            "must not be negative",
        ));
    }
    if r.memory_swap_limit_bytes < -1 {
        return Err(invalid(&field("memory_swap_limit_bytes"), "must be >= -1"));
    }
    if r.memory_swap_limit_bytes > 0
        && (r.memory_limit_bytes == 0 || r.memory_swap_limit_bytes < r.memory_limit_bytes)
    {
        return Err(invalid(
            &field("memory_swap_limit_bytes"),
            "is memory + swap: needs a memory limit and must not be below it",
        ));
    }
    if r.pids_limit < -1 {
        return Err(invalid(&field("pids_limit"), "must be >= -1"));
    }
    if !(-1000..=1000).contains(&r.oom_score_adj) {
        return Err(invalid(&field("oom_score_adj"), "must be -1000..1000"));
    }
    for (f, v) in [
        ("cpuset_cpus", &r.cpuset_cpus),
        ("cpuset_mems", &r.cpuset_mems),
    ] {
        if !v
            .bytes()
            .all(|b| b.is_ascii_digit() || b == b',' || b == b'-')
        {
            return Err(invalid(
                &field(f),
                format!("{v:?} is not a cpu list like 0-3,5"),
            ));
        }
    }
    for size in r.hugepage_limits.keys() {
        let digits = size.trim_end_matches(['K', 'M', 'G', 'B']);
        let ok = size.len() > digits.len()
            && size.ends_with("B")
            && !digits.is_empty()
            && digits.bytes().all(|b| b.is_ascii_digit())
            && matches!(&size[digits.len()..], "KB" | "MB" | "GB");
        if !ok {
            return Err(invalid(
                &field(&format!("hugepage_limits[{size}]")),
                "page size must look like 2MB or 1GB",
            ));
        }
    }
    for (key, value) in &r.unified {
        let f = field(&format!("unified[{key}]"));
        let reserved = matches!(
            key.as_str(),
            "cgroup.procs"
                | "cgroup.threads"
                | "cgroup.kill"
                | "cgroup.subtree_control"
                | "cgroup.type"
                | "cgroup.freeze"
        );
        if key.is_empty()
            || key.contains('/')
            || key == "."
            || key == ".."
            || !key.contains('.')
            || reserved
        {
            return Err(invalid(&f, "is not a settable cgroup v2 file name"));
        }
        if value.contains('\0') {
            return Err(invalid(&f, "value holds a NUL byte"));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use vmpod_agent_proto::v1::{Namespaces, Process, Seccomp, User};

    fn spec() -> ContainerSpec {
        ContainerSpec {
            id: "c1".into(),
            rootfs: "/run/vmpod/share/containers/c1/rootfs".into(),
            process: Some(Process {
                args: vec!["sh".into()],
                env: vec!["A=b".into()],
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    fn err_of(s: &ContainerSpec) -> String {
        let e = validate(s).unwrap_err();
        assert_eq!(e.code(), tonic::Code::InvalidArgument);
        e.message().to_string()
    }

    #[test]
    fn accepts_a_minimal_spec() {
        let modes = validate(&spec()).unwrap();
        assert_eq!(modes.pid, NamespaceMode::NamespacePod);
    }

    #[test]
    fn names_the_bad_field() {
        let mut s = spec();
        s.id = "a/b".into();
        assert!(err_of(&s).starts_with("spec.id:"));
        s.id = "x".repeat(65);
        assert!(err_of(&s).starts_with("spec.id:"));

        let mut s = spec();
        s.rootfs = "relative".into();
        assert!(err_of(&s).starts_with("spec.rootfs:"));

        let mut s = spec();
        s.process.as_mut().unwrap().args.clear();
        assert!(err_of(&s).starts_with("process.args:"));

        let mut s = spec();
        s.process.as_mut().unwrap().env.push("=x".into());
        assert!(err_of(&s).starts_with("process.env[1]:"));

        let mut s = spec();
        s.process.as_mut().unwrap().cwd = "/a/../b".into();
        assert!(err_of(&s).starts_with("process.cwd:"));

        let mut s = spec();
        s.process.as_mut().unwrap().user = Some(User {
            uid: Some(1),
            username: "x".into(),
            ..Default::default()
        });
        assert!(err_of(&s).starts_with("process.user:"));

        let mut s = spec();
        s.mounts.push(Mount {
            source: "/src".into(),
            destination: "/ok".into(),
            ..Default::default()
        });
        s.mounts.push(Mount {
            source: "/src".into(),
            destination: "/x/../../etc".into(),
            ..Default::default()
        });
        assert!(err_of(&s).starts_with("mounts[1].destination:"));

        let mut s = spec();
        s.mounts.push(Mount {
            source: "rel".into(),
            destination: "/d".into(),
            ..Default::default()
        });
        assert!(err_of(&s).starts_with("mounts[0].source:"));

        let mut s = spec();
        s.mounts.push(Mount {
            source: "tmpfs".into(),
            destination: "/".into(),
            r#type: "tmpfs".into(),
            ..Default::default()
        });
        assert!(err_of(&s).starts_with("mounts[0].destination:"));

        let mut s = spec();
        s.namespaces = Some(Namespaces { pid: 7, ipc: 0 });
        assert!(err_of(&s).starts_with("namespaces.pid:"));
    }

    #[test]
    fn sysctls_must_be_namespaced() {
        let mut s = spec();
        let mut sec = Security::default();
        sec.sysctls.insert("net.ipv4.ip_forward".into(), "1".into());
        sec.sysctls.insert("kernel.shmmax".into(), "1000".into());
        s.security = Some(sec.clone());
        validate(&s).unwrap();

        sec.sysctls.insert("kernel.panic".into(), "1".into());
        s.security = Some(sec.clone());
        assert!(err_of(&s).starts_with("security.sysctls[kernel.panic]:"));

        sec.sysctls.remove("kernel.panic");
        s.security = Some(sec);
        s.namespaces = Some(Namespaces {
            pid: 0,
            ipc: NamespaceMode::NamespaceNode as i32,
        });
        assert!(err_of(&s).starts_with("security.sysctls[kernel.shmmax]:"));
    }

    #[test]
    fn seccomp_profile_needs_json() {
        let mut s = spec();
        s.security = Some(Security {
            seccomp: Some(Seccomp {
                kind: seccomp::Kind::Profile as i32,
                profile_json: " ".into(),
            }),
            ..Default::default()
        });
        assert!(err_of(&s).starts_with("security.seccomp.profile_json:"));
    }

    #[test]
    fn resources() {
        let ok = Resources {
            cpu_period: 100_000,
            cpu_quota: 50_000,
            cpu_shares: 512,
            memory_limit_bytes: 1 << 26,
            memory_swap_limit_bytes: 1 << 27,
            pids_limit: 100,
            cpuset_cpus: "0-1,3".into(),
            hugepage_limits: [("2MB".to_string(), 0u64)].into(),
            unified: [("memory.high".to_string(), "64M".to_string())].into(),
            ..Default::default()
        };
        check_resources("r", &ok).unwrap();
        let bad = [
            Resources {
                cpu_period: 10,
                ..Default::default()
            },
            Resources {
                memory_swap_limit_bytes: 5,
                ..Default::default()
            },
            Resources {
                oom_score_adj: 1001,
                ..Default::default()
            },
            Resources {
                cpuset_cpus: "0;1".into(),
                ..Default::default()
            },
            Resources {
                hugepage_limits: [("2M".to_string(), 0u64)].into(),
                ..Default::default()
            },
            Resources {
                unified: [("../memory.max".to_string(), "1".to_string())].into(),
                ..Default::default()
            },
            Resources {
                unified: [("cgroup.procs".to_string(), "1".to_string())].into(),
                ..Default::default()
            },
        ];
        for r in bad {
            let e = check_resources("r", &r).unwrap_err();
            assert_eq!(e.code(), tonic::Code::InvalidArgument, "{r:?}");
        }
    }

    #[test]
    fn mount_options() {
        let o = parse_mount_options(
            "f",
            &["ro", "nosuid", "bind", "rslave", "size=1m", "mode=755"].map(String::from),
        )
        .unwrap();
        assert!(o.readonly && o.non_recursive);
        assert_eq!(o.flags, MsFlags::MS_NOSUID);
        assert_eq!(o.propagation, Some(MsFlags::MS_SLAVE));
        assert_eq!(o.data, "size=1m,mode=755");
        assert!(parse_mount_options("f", &["a,b".into()]).is_err());
    }
}
