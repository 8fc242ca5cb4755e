//! Daemon configuration: a TOML file whose every key has a working default.
//!
//! The file is optional. Unknown keys and bad values are startup errors that
//! name the file, line and key, because a typo that is silently ignored turns
//! into a production incident weeks later. CLI flags override file values.

use std::fmt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Deserializer, Serialize};
use vmpod_shim_api::vm_spec::VmmUser;

/// Where `vmpod serve` looks for its config when `--config` is not given.
pub const DEFAULT_CONFIG_PATH: &str = "/etc/vmpod/config.toml";

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields, rename_all = "kebab-case")]
pub struct Config {
    /// CRI socket kubelet and crictl connect to.
    pub socket: AbsPath,
    /// Root of the daemon's persistent state (redb database, pod dirs).
    pub state_dir: AbsPath,
    pub log_level: LogLevel,
    pub log_format: LogFormat,
    /// Reported to kubelet through `RuntimeConfig`; must match kubelet's own.
    pub cgroup_driver: CgroupDriver,
    pub vm: VmConfig,
    pub helpers: HelpersConfig,
    pub cni: CniConfig,
    pub registry: RegistryConfig,
    pub streaming: StreamingConfig,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            socket: AbsPath::new("/run/vmpod/vmpod.sock"),
            state_dir: AbsPath::new("/var/lib/vmpod"),
            log_level: LogLevel::Info,
            log_format: LogFormat::Text,
            cgroup_driver: CgroupDriver::Cgroupfs,
            vm: VmConfig::default(),
            helpers: HelpersConfig::default(),
            cni: CniConfig::default(),
            registry: RegistryConfig::default(),
            streaming: StreamingConfig::default(),
        }
    }
}

/// How images are pulled. Per-host settings follow containerd's
/// `hosts.toml` in spirit: mirrors tried in order, then the origin.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields, rename_all = "kebab-case")]
pub struct RegistryConfig {
    /// Connect timeout, and the longest a registry may stay silent during a
    /// transfer, before the pull fails.
    #[serde(deserialize_with = "timeout_secs")]
    pub timeout_secs: u64,
    /// Images reported as pinned, so kubelet's image GC never removes them.
    pub pinned_images: Vec<String>,
    /// Most inodes one layer may create: tar entries plus the parent
    /// directories their names imply. Millions of empty entries fit in a
    /// few MiB of gzip; the default is past the biggest real layers (a few
    /// hundred thousand files).
    #[serde(deserialize_with = "limit")]
    pub max_layer_entries: u64,
    /// Most decompressed bytes of one layer's tar stream, counted as it is
    /// read, so a gzip bomb stops before the disk fills. 16 GiB: past any
    /// ML base layer we know of.
    #[serde(deserialize_with = "limit")]
    pub max_layer_bytes: u64,
    /// Most decompressed bytes all layers of one pull may add, so many
    /// layers under the per-layer limit cannot fill the disk together.
    #[serde(deserialize_with = "limit")]
    pub max_image_bytes: u64,
    /// Longest entry name in a layer, in bytes: PATH_MAX, past which a
    /// container could not use the file anyway.
    #[serde(deserialize_with = "limit")]
    pub max_path_length: u64,
    /// Deepest entry name in a layer, in components: each one is a
    /// directory the unpack may create and holds open while it walks.
    #[serde(deserialize_with = "limit")]
    pub max_path_depth: u64,
    /// Settings per registry host (`docker.io`, `127.0.0.1:5000`, ...).
    pub hosts: std::collections::BTreeMap<String, RegistryHost>,
}

impl Default for RegistryConfig {
    fn default() -> Self {
        use crate::image::unpack;
        Self {
            timeout_secs: 30,
            pinned_images: Vec::new(),
            max_layer_entries: unpack::DEFAULT_MAX_LAYER_ENTRIES,
            max_layer_bytes: unpack::DEFAULT_MAX_LAYER_BYTES,
            max_image_bytes: unpack::DEFAULT_MAX_IMAGE_BYTES,
            max_path_length: unpack::DEFAULT_MAX_PATH_LENGTH,
            max_path_depth: unpack::DEFAULT_MAX_PATH_DEPTH,
            hosts: Default::default(),
        }
    }
}

/// A `registry.max-*` limit: 0 would refuse every layer, so it is a
/// mistake rather than a way to turn the limit off.
fn limit<'de, D: Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
    let v = u64::deserialize(d)?;
    if v == 0 {
        return Err(serde::de::Error::custom("must be at least 1"));
    }
    Ok(v)
}

fn timeout_secs<'de, D: Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
    let v = u64::deserialize(d)?;
    if !(1..=3600).contains(&v) {
        return Err(serde::de::Error::custom(format!(
            "{v} is out of range 1..=3600"
        )));
    }
    Ok(v)
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields, rename_all = "kebab-case")]
pub struct RegistryHost {
    /// Mirror URLs (`https://host[:port]` or `http://host[:port]`), tried in
    /// order before the registry itself.
    pub mirrors: Vec<MirrorUrl>,
    /// Speak plain HTTP to this host.
    pub plain_http: bool,
    /// Accept any TLS certificate from this host.
    pub skip_verify: bool,
    /// Credentials used when the CRI request carries none.
    pub username: Option<String>,
    #[serde(skip_serializing)]
    pub password: Option<String>,
}

/// A mirror: scheme plus `host[:port]`, no path.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(into = "String")]
pub struct MirrorUrl {
    pub host: String,
    pub plain_http: bool,
}

impl From<MirrorUrl> for String {
    fn from(m: MirrorUrl) -> String {
        format!(
            "{}://{}",
            if m.plain_http { "http" } else { "https" },
            m.host
        )
    }
}

impl<'de> Deserialize<'de> for MirrorUrl {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        let (plain_http, rest) = if let Some(r) = s.strip_prefix("http://") {
            (true, r)
        } else if let Some(r) = s.strip_prefix("https://") {
            (false, r)
        } else {
            return Err(serde::de::Error::custom(format!(
                "mirror {s:?} must start with http:// or https://"
            )));
        };
        let host = rest.trim_end_matches('/');
        if host.is_empty() || host.contains('/') || host.contains(char::is_whitespace) {
            return Err(serde::de::Error::custom(format!(
                "mirror {s:?} must be scheme://host[:port] without a path"
            )));
        }
        Ok(MirrorUrl {
            host: host.to_string(),
            plain_http,
        })
    }
}

/// How pods' microVMs are built and booted.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields, rename_all = "kebab-case")]
pub struct VmConfig {
    pub backend: BackendChoice,
    /// How QEMU's guest vsock is backed; see [`crate::host::vsock`].
    pub vsock: VsockChoice,
    /// Uncompressed guest kernel (`vmlinux`) built by `images/build.sh`.
    pub kernel: AbsPath,
    /// Initramfs holding the static `vmpod-agent` as `/init`.
    pub initramfs: AbsPath,
    /// vCPUs of a pod whose config sets no CPU limit.
    #[serde(deserialize_with = "vcpus")]
    pub vcpus: u32,
    /// Memory of a pod whose config sets no memory limit.
    #[serde(deserialize_with = "memory_mib")]
    pub memory_mib: u64,
    /// How long a VM may take to reach agent-ready. Unset: 60 s under TCG,
    /// 10 s with KVM.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub boot_timeout_secs: Option<u64>,
    /// `UID:GID` the built-in VMM's threads run as once a pod's VM is
    /// built (they drop every capability in any case); never root.
    #[serde(deserialize_with = "vmm_user", serialize_with = "vmm_user_text")]
    pub vmm_user: VmmUser,
    /// Size at which a pod's `console.log` is rotated to `console.log.1`:
    /// the guest decides how much it prints, so this bounds what it can
    /// take of the host's disk (twice this per pod).
    #[serde(deserialize_with = "console_log_bytes")]
    pub console_log_bytes: u64,
    /// Quota of each container's writable layer (a sparse, size-capped file
    /// system on the host): what a guest can write to the host's disk per
    /// container, whatever it does.
    #[serde(deserialize_with = "writable_layer_bytes")]
    pub writable_layer_bytes: u64,
}

fn writable_layer_bytes<'de, D: Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
    use vmpod_shim_api::{MAX_WRITABLE_LAYER_BYTES as MAX, MIN_WRITABLE_LAYER_BYTES as MIN};
    let v = u64::deserialize(d)?;
    if !(MIN..=MAX).contains(&v) {
        return Err(serde::de::Error::custom(format!(
            "{v} is out of range {MIN}..={MAX}"
        )));
    }
    Ok(v)
}

fn console_log_bytes<'de, D: Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
    use vmpod_shim_api::vm_spec::{MAX_CONSOLE_LOG_BYTES, MIN_CONSOLE_LOG_BYTES};
    let v = u64::deserialize(d)?;
    if !(MIN_CONSOLE_LOG_BYTES..=MAX_CONSOLE_LOG_BYTES).contains(&v) {
        return Err(serde::de::Error::custom(format!(
            "{v} is out of range {MIN_CONSOLE_LOG_BYTES}..={MAX_CONSOLE_LOG_BYTES}"
        )));
    }
    Ok(v)
}

/// `vm.vmm-user` is written `UID:GID`, parsed (and root refused) as
/// `vmpod-vmm --user` parses it.
fn vmm_user<'de, D: Deserializer<'de>>(d: D) -> Result<VmmUser, D::Error> {
    String::deserialize(d)?
        .parse()
        .map_err(serde::de::Error::custom)
}

fn vmm_user_text<S: serde::Serializer>(c: &VmmUser, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&format!("{}:{}", c.uid, c.gid))
}

impl Default for VmConfig {
    fn default() -> Self {
        Self {
            backend: BackendChoice::Auto,
            vsock: VsockChoice::Auto,
            kernel: AbsPath::new("/usr/local/share/vmpod/vmlinux"),
            initramfs: AbsPath::new("/usr/local/share/vmpod/initramfs.cpio.gz"),
            vcpus: 1,
            memory_mib: 256,
            boot_timeout_secs: None,
            // nobody:nogroup on Debian.
            vmm_user: VmmUser {
                uid: 65534,
                gid: 65534,
            },
            console_log_bytes: vmpod_shim_api::vm_spec::DEFAULT_CONSOLE_LOG_BYTES,
            writable_layer_bytes: vmpod_shim_api::DEFAULT_WRITABLE_LAYER_BYTES,
        }
    }
}

/// Most vCPUs one VM may get; QEMU's microvm and our guest kernel handle
/// far more, but a pod asking for more is almost surely a unit mistake.
pub const MAX_VCPUS: u32 = 64;
/// Below this the guest kernel and agent do not fit.
pub const MIN_MEMORY_MIB: u64 = 64;
pub const MAX_MEMORY_MIB: u64 = 1 << 20;

fn vcpus<'de, D: Deserializer<'de>>(d: D) -> Result<u32, D::Error> {
    let v = u32::deserialize(d)?;
    if !(1..=MAX_VCPUS).contains(&v) {
        return Err(serde::de::Error::custom(format!(
            "{v} is out of range 1..={MAX_VCPUS}"
        )));
    }
    Ok(v)
}

fn memory_mib<'de, D: Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
    let v = u64::deserialize(d)?;
    if !(MIN_MEMORY_MIB..=MAX_MEMORY_MIB).contains(&v) {
        return Err(serde::de::Error::custom(format!(
            "{v} is out of range {MIN_MEMORY_MIB}..={MAX_MEMORY_MIB}"
        )));
    }
    Ok(v)
}

/// External programs the shim starts. A bare name is looked up in `PATH`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields, rename_all = "kebab-case")]
pub struct HelpersConfig {
    /// The per-pod shim; a bare name is first looked for beside `vmpod`.
    pub shim: Program,
    pub qemu: Program,
    pub virtiofsd: Program,
    pub vhost_device_vsock: Program,
}

impl Default for HelpersConfig {
    fn default() -> Self {
        Self {
            shim: Program("vmpod-shim".into()),
            qemu: Program("qemu-system-x86_64".into()),
            virtiofsd: Program("virtiofsd".into()),
            vhost_device_vsock: Program("vhost-device-vsock".into()),
        }
    }
}

/// Where the CNI plugins and network configs live (CNI spec defaults, plus
/// Debian's plugin dir).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields, rename_all = "kebab-case")]
pub struct CniConfig {
    pub bin_dirs: Vec<AbsPath>,
    pub conf_dir: AbsPath,
    /// How long one plugin call may take before it is killed and the
    /// sandbox fails (or, for DEL, is retried later).
    #[serde(deserialize_with = "timeout_secs")]
    pub timeout_secs: u64,
    /// The embedded default network's pod subnet (host-local), used only
    /// when the conf dir holds no config.
    pub default_subnet: Subnet,
}

impl Default for CniConfig {
    fn default() -> Self {
        Self {
            bin_dirs: vec![AbsPath::new("/opt/cni/bin"), AbsPath::new("/usr/lib/cni")],
            conf_dir: AbsPath::new("/etc/cni/net.d"),
            timeout_secs: 30,
            default_subnet: Subnet {
                addr: std::net::Ipv4Addr::new(10, 87, 0, 0),
                prefix: 16,
            },
        }
    }
}

/// The streaming server behind `kubectl exec`, `attach` and `port-forward`:
/// the CRI calls answer with a URL on it, and kubelet proxies the client's
/// connection there.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields, rename_all = "kebab-case")]
pub struct StreamingConfig {
    /// Where it listens. Port 0 picks a free port at start.
    pub address: StreamAddress,
    /// How long a URL handed out by Exec, Attach or PortForward stays
    /// valid; each is also good for one connection only.
    #[serde(deserialize_with = "timeout_secs")]
    pub token_ttl_secs: u64,
    /// A session with no traffic either way for this long is closed.
    #[serde(deserialize_with = "idle_secs")]
    pub idle_timeout_secs: u64,
}

impl Default for StreamingConfig {
    fn default() -> Self {
        Self {
            address: StreamAddress(std::net::SocketAddr::from(([127, 0, 0, 1], 0))),
            token_ttl_secs: 60,
            idle_timeout_secs: 4 * 3600,
        }
    }
}

fn idle_secs<'de, D: Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
    let v = u64::deserialize(d)?;
    if !(1..=7 * 24 * 3600).contains(&v) {
        return Err(serde::de::Error::custom(format!(
            "{v} is out of range 1..=604800"
        )));
    }
    Ok(v)
}

/// `IP:port` with a concrete IP: the address also goes into the URLs
/// kubelet connects to, so 0.0.0.0 or :: would name no host.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct StreamAddress(pub std::net::SocketAddr);

impl TryFrom<String> for StreamAddress {
    type Error = String;
    fn try_from(s: String) -> Result<Self, String> {
        let addr: std::net::SocketAddr = s.parse().map_err(|_| {
            format!("{s:?} is not IP:port (e.g. \"127.0.0.1:0\" or \"[::1]:10010\")")
        })?;
        if addr.ip().is_unspecified() {
            return Err(format!(
                "{s:?}: an unspecified IP cannot go into a URL; give the node IP kubelet reaches, or 127.0.0.1"
            ));
        }
        Ok(StreamAddress(addr))
    }
}

impl From<StreamAddress> for String {
    fn from(a: StreamAddress) -> String {
        a.0.to_string()
    }
}

/// An IPv4 network in CIDR notation (`10.87.0.0/16`) with no host bits
/// set, between /8 and /28 so that it holds pods and is not the whole
/// address space.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Subnet {
    pub addr: std::net::Ipv4Addr,
    pub prefix: u8,
}

impl TryFrom<String> for Subnet {
    type Error = String;
    fn try_from(s: String) -> Result<Self, String> {
        let (a, p) = s
            .split_once('/')
            .ok_or_else(|| format!("{s:?} is not a CIDR subnet like 10.87.0.0/16"))?;
        let addr: std::net::Ipv4Addr = a
            .parse()
            .map_err(|_| format!("{s:?}: {a:?} is not an IPv4 address"))?;
        let prefix: u8 = p
            .parse()
            .map_err(|_| format!("{s:?}: {p:?} is not a prefix length"))?;
        if !(8..=28).contains(&prefix) {
            return Err(format!("{s:?}: prefix /{prefix} is outside /8../28"));
        }
        let mask = u32::MAX << (32 - u32::from(prefix));
        if u32::from(addr) & !mask != 0 {
            return Err(format!(
                "{s:?} has host bits set; the network is {}/{prefix}",
                std::net::Ipv4Addr::from(u32::from(addr) & mask)
            ));
        }
        Ok(Subnet { addr, prefix })
    }
}

impl From<Subnet> for String {
    fn from(s: Subnet) -> String {
        s.to_string()
    }
}

impl fmt::Display for Subnet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

/// An absolute path. Relative paths are rejected at load time: the daemon
/// changes directory never, but kubelet's view of "relative" is undefined.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(transparent)]
pub struct AbsPath(PathBuf);

impl AbsPath {
    fn new(p: &str) -> Self {
        Self(PathBuf::from(p))
    }

    pub fn parse(p: impl Into<PathBuf>) -> Result<Self, String> {
        let p = p.into();
        if p.as_os_str().is_empty() {
            return Err("path must not be empty".into());
        }
        if !p.is_absolute() {
            return Err(format!("path {} must be absolute", p.display()));
        }
        Ok(Self(p))
    }

    pub fn as_path(&self) -> &Path {
        &self.0
    }
}

impl<'de> Deserialize<'de> for AbsPath {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        AbsPath::parse(s).map_err(serde::de::Error::custom)
    }
}

impl std::str::FromStr for AbsPath {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        AbsPath::parse(s)
    }
}

impl fmt::Display for AbsPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.display().fmt(f)
    }
}

/// A program name or absolute path.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(transparent)]
pub struct Program(pub String);

impl<'de> Deserialize<'de> for Program {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        if s.is_empty() {
            return Err(serde::de::Error::custom("program must not be empty"));
        }
        if s.contains('/') && !s.starts_with('/') {
            return Err(serde::de::Error::custom(format!(
                "program {s:?} must be a bare name looked up in PATH or an absolute path"
            )));
        }
        Ok(Program(s))
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum LogLevel {
    Error,
    Warn,
    Info,
    Debug,
    Trace,
}

impl LogLevel {
    pub fn as_str(self) -> &'static str {
        match self {
            LogLevel::Error => "error",
            LogLevel::Warn => "warn",
            LogLevel::Info => "info",
            LogLevel::Debug => "debug",
            LogLevel::Trace => "trace",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CgroupDriver {
    Cgroupfs,
    Systemd,
}

/// Which hypervisor backend runs pods. `auto` decides per host, see
/// [`crate::host::backend`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BackendChoice {
    Auto,
    Kvm,
    Qemu,
}

/// How QEMU's guest vsock is backed. The built-in VMM always serves its own
/// (see [`crate::host::vsock::choose`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum VsockChoice {
    /// The kernel's vhost-vsock where `/dev/vhost-vsock` opens, else
    /// vhost-device-vsock.
    Auto,
    /// vhost-device-vsock over vhost-user, even where the kernel's would do.
    VhostUser,
    /// The kernel's vhost-vsock; pods fail where `/dev/vhost-vsock` does not
    /// open.
    Kernel,
}

impl VsockChoice {
    /// As written in the config file.
    pub fn as_str(self) -> &'static str {
        match self {
            VsockChoice::Auto => "auto",
            VsockChoice::VhostUser => "vhost-user",
            VsockChoice::Kernel => "kernel",
        }
    }
}

/// A configuration error, already formatted as `file:line:col: message`.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct ConfigError(String);

/// Overrides given on the command line; `None` keeps the file's value.
#[derive(Debug, Default, Clone)]
pub struct Overrides {
    pub socket: Option<AbsPath>,
    pub state_dir: Option<AbsPath>,
    pub log_level: Option<LogLevel>,
    pub log_format: Option<LogFormat>,
}

impl Config {
    /// Loads `path`, or the default location when `path` is `None`. Only an
    /// explicitly named file must exist.
    pub fn load(path: Option<&Path>, overrides: &Overrides) -> Result<Config, ConfigError> {
        let (path, required) = match path {
            Some(p) => (p.to_path_buf(), true),
            None => (PathBuf::from(DEFAULT_CONFIG_PATH), false),
        };
        let mut config = match std::fs::read_to_string(&path) {
            Ok(text) => Config::parse(&text, &path)?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && !required => Config::default(),
            Err(e) => {
                return Err(ConfigError(format!(
                    "{}: cannot read config: {e}",
                    path.display()
                )));
            }
        };
        config.apply(overrides);
        Ok(config)
    }

    /// Parses TOML text; `origin` only labels error messages.
    pub fn parse(text: &str, origin: &Path) -> Result<Config, ConfigError> {
        toml::from_str(text).map_err(|e| {
            let message = e.message().trim_end();
            match e.span() {
                Some(span) => {
                    let (line, col) = line_col(text, span.start);
                    let key = key_at(text, span.start)
                        .map(|k| format!("{k}: "))
                        .unwrap_or_default();
                    ConfigError(format!("{}:{line}:{col}: {key}{message}", origin.display()))
                }
                None => ConfigError(format!("{}: {message}", origin.display())),
            }
        })
    }

    fn apply(&mut self, o: &Overrides) {
        if let Some(v) = &o.socket {
            self.socket = v.clone();
        }
        if let Some(v) = &o.state_dir {
            self.state_dir = v.clone();
        }
        if let Some(v) = o.log_level {
            self.log_level = v;
        }
        if let Some(v) = o.log_format {
            self.log_format = v;
        }
    }
}

/// 1-based line and column of a byte offset, for editor-friendly errors.
fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let before = &text[..offset.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let col = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
    (line, col)
}

/// The dotted key (`vm.backend`) whose line holds `offset`, found from the
/// line's `key =` and the closest `[table]` header above it. Best effort:
/// it only labels errors.
fn key_at(text: &str, offset: usize) -> Option<String> {
    let offset = offset.min(text.len());
    let line_start = text[..offset].rfind('\n').map_or(0, |i| i + 1);
    let line = text[line_start..].lines().next().unwrap_or_default();
    let (key, _) = line.split_once('=')?;
    let key = key.trim().trim_matches('"');
    if key.is_empty() || key.starts_with('#') {
        return None;
    }
    let table = text[..line_start]
        .lines()
        .rev()
        .map(str::trim)
        .find(|l| l.starts_with('[') && l.ends_with(']'))
        .map(|l| l.trim_matches(|c| c == '[' || c == ']').trim());
    Some(match table {
        Some(t) if !t.is_empty() => format!("{t}.{key}"),
        _ => key.to_string(),
    })
}

/// The commented default configuration printed by `vmpod config default`.
/// A test parses it back and compares it with `Config::default()`, so the two
/// cannot drift apart.
pub const DEFAULT_CONFIG_TOML: &str = r#"# vmpod configuration. Every key is optional; the values shown are the defaults.
# Command-line flags of the same name override this file.

# CRI socket that kubelet and crictl connect to. Created with mode 0660.
socket = "/run/vmpod/vmpod.sock"

# Persistent state: the redb database, one directory per pod. Only one daemon
# may use a state dir at a time.
state-dir = "/var/lib/vmpod"

# error | warn | info | debug | trace
log-level = "info"

# text | json
log-format = "text"

# cgroupfs | systemd. Must match kubelet's --cgroup-driver.
cgroup-driver = "cgroupfs"

[vm]
# auto: the built-in KVM VMM where it can run Linux guests, else QEMU (with KVM
# when the CPU has hardware virtualization, else TCG). kvm | qemu force one.
backend = "auto"
# The agent channel of QEMU pods. auto: the host kernel's vhost-vsock where
# /dev/vhost-vsock opens (no helper process; guest CIDs are host-wide, so
# vmpod gives each pod its own), else vhost-device-vsock. vhost-user | kernel
# force one; with kernel, pods fail to start where /dev/vhost-vsock does not
# open. The built-in VMM serves its own vsock and ignores this key.
vsock = "auto"
# Guest kernel (uncompressed vmlinux) and initramfs, built by images/build.sh.
kernel = "/usr/local/share/vmpod/vmlinux"
initramfs = "/usr/local/share/vmpod/initramfs.cpio.gz"
# Size of a pod whose sandbox config sets no CPU or memory limit. With limits,
# the VM gets the pod's limits plus its overhead.
vcpus = 1
memory-mib = 256
# How long a VM may take to reach agent-ready before RunPodSandbox fails.
# Unset: 60 under TCG, 10 with KVM.
# boot-timeout-secs = 60
# UID:GID the built-in VMM's threads run as once a VM is built (they drop
# every capability as well). Never root.
vmm-user = "65534:65534"
# A pod's console.log is renamed to console.log.1 at this size (replacing the
# previous one), so a guest flooding its serial console keeps at most twice
# this on disk. 4096 to 1073741824.
console-log-bytes = 1048576
# Quota of each container's writable layer: a sparse file system of this size
# on the host, so a container gets ENOSPC, not the node's disk. 10 GiB.
writable-layer-bytes = 10737418240

[helpers]
# The per-pod shim. A bare name is looked for beside the vmpod binary first.
shim = "vmpod-shim"
# Programs the per-pod shim starts: a bare name is looked up in PATH.
qemu = "qemu-system-x86_64"
virtiofsd = "virtiofsd"
vhost-device-vsock = "vhost-device-vsock"

[cni]
# Directories searched for CNI plugin binaries, in order.
bin-dirs = ["/opt/cni/bin", "/usr/lib/cni"]
# Directory holding the CNI network configuration (*.conflist, *.conf). The
# lexically first valid file is used. With no file there at all, pods join
# vmpod's embedded default network: bridge vmpod0, host-local IPs from
# default-subnet, NAT to the outside, hostPort through portmap.
conf-dir = "/etc/cni/net.d"
# Longest a CNI plugin may run before it is killed.
timeout-secs = 30
# The embedded default network's pod subnet.
default-subnet = "10.87.0.0/16"

[streaming]
# The server behind kubectl exec, attach and port-forward: Exec, Attach and
# PortForward answer with a URL on it, which kubelet proxies to. Port 0 picks a
# free port at start.
address = "127.0.0.1:0"
# How long such a URL stays valid (each is good for one connection).
token-ttl-secs = 60
# A session with no traffic for this long is closed (4 hours).
idle-timeout-secs = 14400

[registry]
# Connect timeout, and the longest a registry may stay silent mid-transfer.
timeout-secs = 30
# Images reported as pinned: kubelet's image GC never removes them.
pinned-images = []
# Limits on what one layer may make the daemon unpack, checked as the layer
# streams in; a pull past one fails with RESOURCE_EXHAUSTED naming the key and
# the layer, and leaves nothing behind. The defaults are past any real image.
# Inodes per layer: tar entries plus the parent directories they imply.
max-layer-entries = 1000000
# Decompressed bytes per layer (16 GiB) and per pull of an image (64 GiB).
max-layer-bytes = 17179869184
max-image-bytes = 68719476736
# Longest (bytes) and deepest (components) entry name in a layer.
max-path-length = 4096
max-path-depth = 256

# Per registry host, in the spirit of containerd's hosts.toml. Mirrors are
# tried in order, then the registry itself.
# [registry.hosts."docker.io"]
# mirrors = ["https://mirror.example.com", "http://10.0.0.5:5000"]
#
# [registry.hosts."registry.local:5000"]
# plain-http = true        # speak HTTP, not HTTPS
# skip-verify = false      # accept any TLS certificate
# username = "puller"      # used when the CRI request has no credentials
# password = "secret"
"#;

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Config, ConfigError> {
        Config::parse(text, Path::new("/etc/vmpod/config.toml"))
    }

    #[test]
    fn default_text_matches_default_struct() {
        assert_eq!(parse(DEFAULT_CONFIG_TOML).unwrap(), Config::default());
    }

    #[test]
    fn empty_file_gives_defaults() {
        assert_eq!(parse("").unwrap(), Config::default());
    }

    #[test]
    fn unknown_key_names_file_line_and_key() {
        let err = parse("log-level = \"info\"\n\n[vm]\nkernal = \"/x\"\n").unwrap_err();
        let msg = err.to_string();
        assert!(msg.starts_with("/etc/vmpod/config.toml:4:1:"), "{msg}");
        assert!(msg.contains("vm.kernal"), "{msg}");
    }

    #[test]
    fn bad_value_names_line_and_value() {
        let msg = parse("\n[vm]\nbackend = \"xen\"\n")
            .unwrap_err()
            .to_string();
        assert!(msg.starts_with("/etc/vmpod/config.toml:3:"), "{msg}");
        assert!(msg.contains("vm.backend: "), "{msg}");
        assert!(msg.contains("xen"), "{msg}");
    }

    #[test]
    fn vsock_choice_values() {
        assert_eq!(parse("").unwrap().vm.vsock, VsockChoice::Auto);
        for (text, want) in [
            ("auto", VsockChoice::Auto),
            ("vhost-user", VsockChoice::VhostUser),
            ("kernel", VsockChoice::Kernel),
        ] {
            let c = parse(&format!("[vm]\nvsock = \"{text}\"\n")).unwrap();
            assert_eq!(c.vm.vsock, want);
            assert_eq!(want.as_str(), text);
        }
        let msg = parse("[vm]\nbackend = \"qemu\"\nvsock = \"vhost\"\n")
            .unwrap_err()
            .to_string();
        assert!(msg.starts_with("/etc/vmpod/config.toml:3:"), "{msg}");
        assert!(msg.contains("vm.vsock: "), "{msg}");
        assert!(msg.contains("vhost"), "{msg}");
    }

    #[test]
    fn writable_layer_bytes_range() {
        assert_eq!(parse("").unwrap().vm.writable_layer_bytes, 10 << 30);
        let c = parse("[vm]\nwritable-layer-bytes = 16777216\n").unwrap();
        assert_eq!(c.vm.writable_layer_bytes, 16 << 20);
        let msg = parse("[vm]\nwritable-layer-bytes = 1024\n")
            .unwrap_err()
            .to_string();
        assert!(msg.contains("vm.writable-layer-bytes"), "{msg}");
    }

    #[test]
    fn console_log_bytes_range() {
        assert_eq!(parse("").unwrap().vm.console_log_bytes, 1 << 20);
        let c = parse("[vm]\nconsole-log-bytes = 65536\n").unwrap();
        assert_eq!(c.vm.console_log_bytes, 65536);
        for bad in ["0", "4095", "1073741825", "-1"] {
            let msg = parse(&format!("[vm]\nconsole-log-bytes = {bad}\n"))
                .unwrap_err()
                .to_string();
            assert!(
                msg.starts_with("/etc/vmpod/config.toml:2:")
                    && msg.contains("vm.console-log-bytes"),
                "{msg}"
            );
        }
    }

    #[test]
    fn out_of_range_sizes_rejected() {
        let msg = parse("[vm]\nvcpus = 0\n").unwrap_err().to_string();
        assert!(
            msg.contains(":2:") && msg.contains("vm.vcpus") && msg.contains("out of range"),
            "{msg}"
        );
        assert!(parse("[vm]\nmemory-mib = 16\n").is_err());
        let msg = parse("[vm]\nvmm-user = \"0:0\"\n").unwrap_err().to_string();
        assert!(msg.contains("vm.vmm-user") && msg.contains("root"), "{msg}");
        assert!(parse("[vm]\nvmm-user = \"nobody\"\n").is_err());
        let user = parse("[vm]\nvmm-user = \"1000:1001\"\n")
            .unwrap()
            .vm
            .vmm_user;
        assert_eq!((user.uid, user.gid), (1000, 1001));
        assert_eq!(
            parse("[vm]\nmemory-mib = 512\n").unwrap().vm.memory_mib,
            512
        );
    }

    #[test]
    fn registry_hosts_and_mirrors() {
        let c = parse(
            "[registry.hosts.\"docker.io\"]\nmirrors = [\"http://127.0.0.1:5000\", \"https://m.example/\"]\n\
             [registry.hosts.\"r:5000\"]\nplain-http = true\nusername = \"u\"\npassword = \"p\"\n",
        )
        .unwrap();
        let dh = &c.registry.hosts["docker.io"];
        assert_eq!(
            dh.mirrors[0],
            MirrorUrl {
                host: "127.0.0.1:5000".into(),
                plain_http: true
            }
        );
        assert_eq!(dh.mirrors[1].host, "m.example");
        assert!(c.registry.hosts["r:5000"].plain_http);
        let msg = parse("[registry.hosts.x]\nmirrors = [\"ftp://m\"]\n")
            .unwrap_err()
            .to_string();
        assert!(msg.contains(":2:") && msg.contains("http://"), "{msg}");
        let msg = parse("[registry.hosts.x]\nmirors = []\n")
            .unwrap_err()
            .to_string();
        assert!(msg.contains("registry.hosts.x.mirors"), "{msg}");
    }

    #[test]
    fn registry_limits() {
        let c = parse(
            "[registry]\nmax-layer-entries = 10\nmax-layer-bytes = 1048576\n\
             max-image-bytes = 2097152\nmax-path-length = 100\nmax-path-depth = 4\n",
        )
        .unwrap();
        let r = &c.registry;
        assert_eq!(
            (
                r.max_layer_entries,
                r.max_layer_bytes,
                r.max_image_bytes,
                r.max_path_length,
                r.max_path_depth
            ),
            (10, 1 << 20, 2 << 20, 100, 4)
        );
        let msg = parse("[registry]\n\nmax-layer-bytes = 0\n")
            .unwrap_err()
            .to_string();
        assert!(
            msg.contains(":3:")
                && msg.contains("registry.max-layer-bytes: ")
                && msg.contains("at least 1"),
            "{msg}"
        );
        let msg = parse("[registry]\nmax-path-depth = -1\n")
            .unwrap_err()
            .to_string();
        assert!(msg.contains("registry.max-path-depth"), "{msg}");
    }

    #[test]
    fn relative_path_rejected() {
        let msg = parse("state-dir = \"var/lib\"\n").unwrap_err().to_string();
        assert!(
            msg.contains(":1:") && msg.contains("must be absolute"),
            "{msg}"
        );
    }

    #[test]
    fn relative_program_rejected_but_bare_name_accepted() {
        assert!(parse("[helpers]\nqemu = \"bin/qemu\"\n").is_err());
        let c = parse("[helpers]\nqemu = \"qemu-kvm\"\n").unwrap();
        assert_eq!(c.helpers.qemu.0, "qemu-kvm");
    }

    #[test]
    fn overrides_win_over_file() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("c.toml");
        std::fs::write(&file, "socket = \"/a.sock\"\nlog-level = \"warn\"\n").unwrap();
        let o = Overrides {
            socket: Some(AbsPath::new("/b.sock")),
            ..Default::default()
        };
        let c = Config::load(Some(&file), &o).unwrap();
        assert_eq!(c.socket.as_path(), Path::new("/b.sock"));
        assert_eq!(c.log_level, LogLevel::Warn);
    }

    #[test]
    fn streaming_address_must_name_a_host() {
        let c = parse("[streaming]\naddress = \"[::1]:10010\"\n").unwrap();
        assert_eq!(c.streaming.address.0.port(), 10010);
        let msg = parse("[streaming]\naddress = \"0.0.0.0:10010\"\n")
            .unwrap_err()
            .to_string();
        assert!(
            msg.contains("address") && msg.contains("unspecified"),
            "{msg}"
        );
        let msg = parse("[streaming]\naddress = \"localhost\"\n")
            .unwrap_err()
            .to_string();
        assert!(msg.contains("not IP:port"), "{msg}");
        assert!(parse("[streaming]\ntoken-ttl-secs = 0\n").is_err());
    }

    #[test]
    fn named_missing_file_is_an_error() {
        let err = Config::load(
            Some(Path::new("/nonexistent/vmpod.toml")),
            &Overrides::default(),
        );
        assert!(
            err.unwrap_err()
                .to_string()
                .contains("/nonexistent/vmpod.toml")
        );
    }
}
