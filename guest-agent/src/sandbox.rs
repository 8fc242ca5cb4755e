//! SetupSandbox: the per-pod guest preparation the shim asks for once the
//! agent is healthy: hostname, /etc/hosts, /etc/resolv.conf and the
//! virtio-fs share. Every step converges on the requested state, so a
//! repeated call with the same values changes nothing.

use std::fmt::Write as _;
use std::fs;
use std::io::Write as _;
use std::net::IpAddr;
use std::os::unix::fs::DirBuilderExt;
use std::path::Path;
use std::sync::Mutex;

use anyhow::{Context, Result, bail};
use nix::mount::{MsFlags, mount};
use vmpod_agent_proto::SHARE_MOUNTPOINT;
use vmpod_agent_proto::v1::SetupSandboxRequest;

use crate::mounts;

pub const RESOLV_CONF: &str = "/etc/resolv.conf";
pub const HOSTS: &str = "/etc/hosts";
pub const HOSTNAME: &str = "/etc/hostname";

/// Longest virtio-fs tag (the `tag` field of the device config is 36 bytes).
const MAX_TAG_LEN: usize = 36;
/// HOST_NAME_MAX on Linux.
const MAX_HOSTNAME_LEN: usize = 64;

/// Serialises concurrent SetupSandbox calls.
static SETUP_LOCK: Mutex<()> = Mutex::new(());

/// A request that passed validation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SandboxSetup {
    hostname: Option<String>,
    resolv_conf: String,
    hosts: String,
    share_tag: Option<String>,
    /// The host's clock at the time of the request, to set the guest's.
    host_time_ns: Option<i64>,
}

impl SandboxSetup {
    /// Checks the request; the error is meant for the caller
    /// (`InvalidArgument`).
    pub fn from_request(req: &SetupSandboxRequest) -> Result<Self> {
        let hostname = if req.hostname.is_empty() {
            None
        } else {
            validate_hostname(&req.hostname)?;
            Some(req.hostname.clone())
        };
        let share_tag = if req.share_tag.is_empty() {
            None
        } else {
            validate_tag(&req.share_tag)?;
            Some(req.share_tag.clone())
        };
        Ok(Self {
            resolv_conf: render_resolv_conf(&req.dns_servers, &req.dns_searches, &req.dns_options)?,
            hosts: render_hosts(hostname.as_deref()),
            hostname,
            share_tag,
            host_time_ns: (req.host_time_ns > 0).then_some(req.host_time_ns),
        })
    }

    /// Applies the setup to this guest; returns where the share is mounted
    /// (empty if there is none). Blocking: call it off the async runtime.
    pub fn apply(&self) -> Result<String> {
        let _guard = SETUP_LOCK.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(ns) = self.host_time_ns {
            set_clock(ns)?;
        }
        if let Some(hostname) = &self.hostname {
            nix::unistd::sethostname(hostname)
                .with_context(|| format!("cannot set the hostname to {hostname:?}"))?;
        }
        // Containers get it bound in, as they do hosts and resolv.conf.
        let current = nix::unistd::gethostname().context("cannot read the hostname")?;
        write_atomically(
            Path::new(HOSTNAME),
            &format!("{}\n", current.to_string_lossy()),
        )?;
        write_atomically(Path::new(HOSTS), &self.hosts)?;
        write_atomically(Path::new(RESOLV_CONF), &self.resolv_conf)?;
        match &self.share_tag {
            Some(tag) => {
                mount_share(tag, Path::new(SHARE_MOUNTPOINT))?;
                Ok(SHARE_MOUNTPOINT.to_string())
            }
            None => Ok(String::new()),
        }
    }
}

/// Steps the guest's wall clock to the host's. A few milliseconds of
/// transit are not worth correcting for: nothing compares times that
/// finely across the VM boundary.
fn set_clock(ns: i64) -> Result<()> {
    let ts = nix::sys::time::TimeSpec::new(ns / 1_000_000_000, ns % 1_000_000_000);
    nix::time::clock_settime(nix::time::ClockId::CLOCK_REALTIME, ts)
        .context("cannot set the guest clock to the host's")
}

fn validate_hostname(name: &str) -> Result<()> {
    if name.len() > MAX_HOSTNAME_LEN {
        bail!("hostname {name:?} is longer than {MAX_HOSTNAME_LEN} bytes");
    }
    for label in name.split('.') {
        let ok = !label.is_empty()
            && !label.starts_with('-')
            && !label.ends_with('-')
            && label
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-');
        if !ok {
            bail!("hostname {name:?} is not a valid DNS name");
        }
    }
    Ok(())
}

fn validate_tag(tag: &str) -> Result<()> {
    if tag.len() > MAX_TAG_LEN {
        bail!("share tag {tag:?} is longer than {MAX_TAG_LEN} bytes");
    }
    if !tag.bytes().all(|b| b.is_ascii_graphic()) {
        bail!("share tag {tag:?} must be printable ASCII without spaces");
    }
    Ok(())
}

/// resolv.conf(5) for the given DNS settings; empty settings give an empty
/// file, as kubelet does for a pod without DNS.
pub fn render_resolv_conf(
    servers: &[String],
    searches: &[String],
    options: &[String],
) -> Result<String> {
    let mut out = String::new();
    for server in servers {
        let ip: IpAddr = server
            .parse()
            .with_context(|| format!("DNS server {server:?} is not an IP address"))?;
        let _ = writeln!(out, "nameserver {ip}");
    }
    for (what, words) in [("search", searches), ("options", options)] {
        if words.is_empty() {
            continue;
        }
        for word in words {
            if word.is_empty() || !word.bytes().all(|b| b.is_ascii_graphic()) {
                bail!("DNS {what} entry {word:?} must be a non-empty word of printable ASCII");
            }
        }
        let _ = writeln!(out, "{what} {}", words.join(" "));
    }
    Ok(out)
}

/// The guest's /etc/hosts: loopback names, plus the pod hostname.
pub fn render_hosts(hostname: Option<&str>) -> String {
    let mut out = String::from("127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n");
    if let Some(name) = hostname {
        let _ = writeln!(out, "127.0.1.1\t{name}");
    }
    out
}

/// Replaces `path` with `contents` so readers never see a partial file.
fn write_atomically(path: &Path, contents: &str) -> Result<()> {
    if fs::read_to_string(path).is_ok_and(|old| old == contents) {
        return Ok(());
    }
    let dir = path.parent().context("path has no parent")?;
    fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let tmp = path.with_extension("vmpod-tmp");
    let mut file =
        fs::File::create(&tmp).with_context(|| format!("cannot create {}", tmp.display()))?;
    file.write_all(contents.as_bytes())
        .and_then(|()| file.sync_all())
        .with_context(|| format!("cannot write {}", tmp.display()))?;
    fs::rename(&tmp, path).with_context(|| format!("cannot replace {}", path.display()))
}

/// Mounts the virtio-fs share `tag` on `target`, unless it already is.
fn mount_share(tag: &str, target: &Path) -> Result<()> {
    let target_str = target.to_string_lossy();
    if let Some(existing) = mounts::current()?
        .into_iter()
        .rev()
        .find(|m| m.mount_point == target_str)
    {
        if existing.fstype == "virtiofs" && existing.source == tag {
            return Ok(());
        }
        bail!(
            "{target_str} already holds {} ({}), not virtio-fs tag {tag:?}",
            existing.source,
            existing.fstype
        );
    }
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o755)
        .create(target)
        .with_context(|| format!("cannot create {target_str}"))?;
    // No nosuid/nodev: container root filesystems live on the share and may
    // hold setuid binaries; device nodes come from the container runtime.
    mount(
        Some(tag),
        target,
        Some("virtiofs"),
        MsFlags::empty(),
        None::<&str>,
    )
    .with_context(|| format!("cannot mount virtio-fs tag {tag:?} on {target_str}"))
}

/// Mount points of virtio-fs filesystems, for GuestInfo.
pub fn virtiofs_mounts() -> Result<Vec<String>> {
    Ok(mounts::current()?
        .into_iter()
        .filter(|m| m.fstype == "virtiofs")
        .map(|m| m.mount_point)
        .collect())
}

/// A file's contents, or empty if it does not exist.
pub fn read_optional(path: &str) -> Result<String> {
    match fs::read_to_string(path) {
        Ok(text) => Ok(text),
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => Ok(String::new()),
        Err(err) => Err(err).with_context(|| format!("cannot read {path}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request() -> SetupSandboxRequest {
        SetupSandboxRequest {
            hostname: "web-0".into(),
            dns_servers: vec!["10.96.0.10".into(), "fd00::a".into()],
            dns_searches: vec![
                "default.svc.cluster.local".into(),
                "svc.cluster.local".into(),
            ],
            dns_options: vec!["ndots:5".into()],
            share_tag: "vmpod".into(),
            host_time_ns: 0,
            interfaces: Vec::new(),
        }
    }

    #[test]
    fn renders_a_full_request() {
        let s = SandboxSetup::from_request(&request()).unwrap();
        assert_eq!(
            s.resolv_conf,
            "nameserver 10.96.0.10\nnameserver fd00::a\n\
             search default.svc.cluster.local svc.cluster.local\noptions ndots:5\n"
        );
        assert!(s.hosts.ends_with("127.0.1.1\tweb-0\n"));
        assert_eq!(s.share_tag.as_deref(), Some("vmpod"));
    }

    #[test]
    fn empty_request_is_valid() {
        let s = SandboxSetup::from_request(&SetupSandboxRequest::default()).unwrap();
        assert_eq!(s.resolv_conf, "");
        assert_eq!(s.hostname, None);
        assert_eq!(s.share_tag, None);
        assert!(s.hosts.starts_with("127.0.0.1\tlocalhost\n"));
    }

    #[test]
    fn rejects_bad_input() {
        let bad = [
            SetupSandboxRequest {
                hostname: "a b".into(),
                ..request()
            },
            SetupSandboxRequest {
                hostname: "-a".into(),
                ..request()
            },
            SetupSandboxRequest {
                hostname: "a..b".into(),
                ..request()
            },
            SetupSandboxRequest {
                hostname: "a".repeat(65),
                ..request()
            },
            SetupSandboxRequest {
                dns_servers: vec!["dns.example".into()],
                ..request()
            },
            SetupSandboxRequest {
                dns_searches: vec!["a\nnameserver 1.1.1.1".into()],
                ..request()
            },
            SetupSandboxRequest {
                dns_options: vec![String::new()],
                ..request()
            },
            SetupSandboxRequest {
                share_tag: "x".repeat(37),
                ..request()
            },
            SetupSandboxRequest {
                share_tag: "a b".into(),
                ..request()
            },
        ];
        for req in bad {
            assert!(SandboxSetup::from_request(&req).is_err(), "{req:?}");
        }
    }

    #[test]
    fn atomic_write_replaces_and_is_idempotent() {
        let dir = std::env::temp_dir().join(format!("vmpod-agent-test-{}", std::process::id()));
        let path = dir.join("etc/hosts");
        write_atomically(&path, "one\n").unwrap();
        write_atomically(&path, "two\n").unwrap();
        write_atomically(&path, "two\n").unwrap();
        assert_eq!(fs::read_to_string(&path).unwrap(), "two\n");
        assert!(!path.with_extension("vmpod-tmp").exists());
        fs::remove_dir_all(&dir).unwrap();
    }
}
