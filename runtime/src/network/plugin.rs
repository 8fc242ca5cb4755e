//! The CNI exec protocol (spec 1.0.0; 0.4.0 results accepted).
//!
//! No maintained Rust CNI client exists, so this is the small part of libcni
//! that vmpod needs: run one plugin binary with the CNI environment and a
//! network config on stdin, and turn what it prints into a result or a typed
//! error. Choosing the conflist lives in `cni`; deciding when to call ADD or
//! DEL belongs to the sandbox code. Plugin output is untrusted input: it is
//! read with a size bound, parsed strictly, and a plugin that hangs is killed
//! with its whole process group.

use std::fmt;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};

/// The most stdout or stderr read from a plugin. Real results are a few KiB;
/// the bound keeps a broken or hostile plugin from growing the daemon.
pub const OUTPUT_LIMIT: usize = 1 << 20;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Command {
    Add,
    Del,
    #[cfg_attr(
        not(test),
        expect(
            dead_code,
            reason = "CHECK joins when sandboxes re-verify their network"
        )
    )]
    Check,
    Version,
}

impl Command {
    fn as_str(self) -> &'static str {
        match self {
            Command::Add => "ADD",
            Command::Del => "DEL",
            Command::Check => "CHECK",
            Command::Version => "VERSION",
        }
    }
}

impl fmt::Display for Command {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Where and how a plugin runs: the per-attachment values of the CNI
/// environment. One `Invocation` serves every plugin of a conflist, since
/// the spec gives them all the same container, netns and interface.
#[derive(Debug, Clone)]
pub struct Invocation {
    pub container_id: String,
    /// Path of the pod's network namespace, e.g. `/var/run/netns/vmpod-…`.
    pub netns: PathBuf,
    pub ifname: String,
    /// `CNI_ARGS` pairs such as `K8S_POD_NAMESPACE`; joined as `K=V;K=V`.
    pub args: Vec<(String, String)>,
    /// The plugin dirs; chained plugins (and IPAM) are looked up there.
    pub bin_dirs: Vec<PathBuf>,
    pub timeout: Duration,
}

/// Why a plugin call did not give a usable answer. Every variant is shown
/// with the plugin and the command, so a log line alone says what failed.
#[derive(Debug)]
pub struct PluginError {
    pub plugin: PathBuf,
    pub command: Command,
    pub kind: ErrorKind,
}

#[derive(Debug)]
pub enum ErrorKind {
    Spawn(std::io::Error),
    Io(std::io::Error),
    /// The plugin ran past its deadline and was killed.
    Timeout(Duration),
    /// The plugin exited non-zero with a CNI error object.
    Plugin {
        code: u32,
        msg: String,
        details: String,
    },
    /// The plugin exited non-zero without a CNI error object; `output` is
    /// its stderr (or stdout when stderr was empty), trimmed.
    Failed {
        status: ExitStatus,
        output: String,
    },
    /// The plugin succeeded but its output is not a result we understand.
    BadOutput(String),
    /// Stdout passed [`OUTPUT_LIMIT`]; the plugin was killed.
    TooLarge,
}

impl fmt::Display for PluginError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "CNI plugin {} {}: ", self.plugin.display(), self.command)?;
        match &self.kind {
            ErrorKind::Spawn(e) => write!(f, "cannot start: {e}"),
            ErrorKind::Io(e) => write!(f, "talking to the plugin: {e}"),
            ErrorKind::Timeout(t) => write!(f, "did not finish within {t:?}; killed"),
            ErrorKind::Plugin { code, msg, details } if details.is_empty() => {
                write!(f, "error {code}: {msg}")
            }
            ErrorKind::Plugin { code, msg, details } => {
                write!(f, "error {code}: {msg} ({details})")
            }
            ErrorKind::Failed { status, output } if output.is_empty() => {
                write!(f, "{status} with no output")
            }
            ErrorKind::Failed { status, output } => write!(f, "{status}: {output}"),
            ErrorKind::BadOutput(e) => write!(f, "unreadable output: {e}"),
            ErrorKind::TooLarge => write!(f, "output exceeds {OUTPUT_LIMIT} bytes; killed"),
        }
    }
}

impl std::error::Error for PluginError {}

/// The spec's error object, printed on stdout with a non-zero exit.
#[derive(Debug, Deserialize)]
struct ErrorObject {
    code: u32,
    #[serde(default)]
    msg: String,
    #[serde(default)]
    details: String,
}

/// A CIDR address as CNI writes it (`10.88.0.5/16`), checked on parse so
/// later code never sees a malformed pod IP.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Cidr {
    pub addr: IpAddr,
    pub prefix: u8,
}

impl TryFrom<String> for Cidr {
    type Error = String;
    fn try_from(s: String) -> Result<Self, String> {
        let (a, p) = s
            .split_once('/')
            .ok_or_else(|| format!("{s:?} is not a CIDR address"))?;
        let addr: IpAddr = a.parse().map_err(|e| format!("{s:?}: {e}"))?;
        let prefix: u8 = p.parse().map_err(|e| format!("{s:?}: prefix: {e}"))?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        if prefix > max {
            return Err(format!("{s:?}: prefix longer than {max}"));
        }
        Ok(Cidr { addr, prefix })
    }
}

impl From<Cidr> for String {
    fn from(c: Cidr) -> String {
        format!("{}/{}", c.addr, c.prefix)
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Interface {
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mac: Option<String>,
    /// The netns path for interfaces inside the pod; absent for host ones
    /// (the bridge, the host end of a veth).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sandbox: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct IpConfig {
    pub address: Cidr,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gateway: Option<IpAddr>,
    /// Index into `interfaces`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interface: Option<usize>,
    /// 0.4.0 results carry "4" or "6" here; 1.0.0 dropped it. Kept so a
    /// cached 0.4.0 result round-trips unchanged as `prevResult`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Route {
    pub dst: Cidr,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gw: Option<IpAddr>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Dns {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub nameservers: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub domain: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub search: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub options: Vec<String>,
}

/// An ADD (or chained) result: what the pod's interface ended up with.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CniResult {
    #[serde(rename = "cniVersion")]
    pub cni_version: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub interfaces: Vec<Interface>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ips: Vec<IpConfig>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub routes: Vec<Route>,
    #[serde(default)]
    pub dns: Dns,
}

/// The answer to VERSION (its `cniVersion` echo is not needed).
#[derive(Debug, Clone, Deserialize)]
pub struct VersionInfo {
    #[serde(rename = "supportedVersions")]
    pub supported_versions: Vec<String>,
}

/// Builds the stdin of one plugin in a conflist, as the spec's "network
/// configuration" for that plugin: the list's `name` and `cniVersion` are
/// injected, `prevResult` chains the previous plugin's result, and only
/// the capability args the plugin declares in `capabilities` go into
/// `runtimeConfig` (a plugin must not see capabilities it did not ask for).
pub fn plugin_config(
    plugin: &Value,
    name: &str,
    cni_version: &str,
    prev_result: Option<&Value>,
    capability_args: &Map<String, Value>,
) -> Result<Value, String> {
    let Value::Object(mut conf) = plugin.clone() else {
        return Err("a plugin config is not a JSON object".into());
    };
    conf.insert("name".into(), Value::String(name.into()));
    conf.insert("cniVersion".into(), Value::String(cni_version.into()));
    match prev_result {
        Some(r) => conf.insert("prevResult".into(), r.clone()),
        None => conf.remove("prevResult"),
    };
    let wanted: Map<String, Value> = match conf.get("capabilities") {
        Some(Value::Object(caps)) => capability_args
            .iter()
            .filter(|(k, _)| caps.get(k.as_str()) == Some(&Value::Bool(true)))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect(),
        _ => Map::new(),
    };
    if wanted.is_empty() {
        conf.remove("runtimeConfig");
    } else {
        conf.insert("runtimeConfig".into(), Value::Object(wanted));
    }
    Ok(Value::Object(conf))
}

/// Runs ADD and parses the result (1.0.0 or 0.4.0).
/// Returns the result as the plugin printed it, which the next plugin of
/// a chain gets as `prevResult` unchanged, and parsed.
pub async fn add(
    plugin: &Path,
    inv: &Invocation,
    config: &Value,
) -> Result<(Value, CniResult), PluginError> {
    let out = invoke(plugin, Command::Add, inv, config).await?;
    let bad = |e: serde_json::Error| PluginError {
        plugin: plugin.to_path_buf(),
        command: Command::Add,
        kind: ErrorKind::BadOutput(e.to_string()),
    };
    let raw: Value = serde_json::from_slice(&out).map_err(bad)?;
    let parsed = serde_json::from_value(raw.clone()).map_err(bad)?;
    Ok((raw, parsed))
}

/// Runs DEL or CHECK, which print nothing on success.
pub async fn run_quiet(
    plugin: &Path,
    command: Command,
    inv: &Invocation,
    config: &Value,
) -> Result<(), PluginError> {
    invoke(plugin, command, inv, config).await.map(drop)
}

/// Asks a plugin which spec versions it speaks. `cni_version` is the
/// version the caller will use, as the spec's VERSION stdin requires.
pub async fn version(
    plugin: &Path,
    cni_version: &str,
    bin_dirs: &[PathBuf],
    timeout: Duration,
) -> Result<VersionInfo, PluginError> {
    let inv = Invocation {
        container_id: String::new(),
        netns: PathBuf::new(),
        ifname: String::new(),
        args: Vec::new(),
        bin_dirs: bin_dirs.to_vec(),
        timeout,
    };
    let stdin = serde_json::json!({ "cniVersion": cni_version });
    let out = invoke(plugin, Command::Version, &inv, &stdin).await?;
    serde_json::from_slice(&out).map_err(|e| PluginError {
        plugin: plugin.to_path_buf(),
        command: Command::Version,
        kind: ErrorKind::BadOutput(e.to_string()),
    })
}

/// Runs one plugin command and returns its stdout on success.
pub async fn invoke(
    plugin: &Path,
    command: Command,
    inv: &Invocation,
    config: &Value,
) -> Result<Vec<u8>, PluginError> {
    let fail = |kind| PluginError {
        plugin: plugin.to_path_buf(),
        command,
        kind,
    };
    let stdin =
        serde_json::to_vec(config).map_err(|e| fail(ErrorKind::BadOutput(e.to_string())))?;
    let cni_args = inv
        .args
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(";");
    let cni_path = inv
        .bin_dirs
        .iter()
        .map(|d| d.display().to_string())
        .collect::<Vec<_>>()
        .join(":");
    let mut cmd = tokio::process::Command::new(plugin);
    cmd.env("CNI_COMMAND", command.as_str())
        .env("CNI_CONTAINERID", &inv.container_id)
        .env("CNI_NETNS", &inv.netns)
        .env("CNI_IFNAME", &inv.ifname)
        .env("CNI_ARGS", cni_args)
        .env("CNI_PATH", cni_path)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        // Its own group, so a timeout also kills what the plugin spawned
        // (IPAM plugins, iptables) instead of leaving it holding our pipes.
        .process_group(0)
        // If the caller's future is dropped mid-call, the child must not
        // outlive it; tokio then reaps it in the background.
        .kill_on_drop(true);
    let (status, stdout, stderr) = exec(cmd, stdin, inv.timeout).await.map_err(fail)?;
    if status.success() {
        return Ok(stdout);
    }
    if let Ok(e) = serde_json::from_slice::<ErrorObject>(&stdout) {
        return Err(fail(ErrorKind::Plugin {
            code: e.code,
            msg: e.msg,
            details: e.details,
        }));
    }
    let text = |b: &[u8]| String::from_utf8_lossy(b).trim().to_string();
    let output = match text(&stderr) {
        s if s.is_empty() => text(&stdout),
        s => s,
    };
    // Keep error messages (which end up in CRI replies and logs) short.
    let output = match output.char_indices().nth(4096) {
        Some((i, _)) => format!("{}…", &output[..i]),
        None => output,
    };
    Err(fail(ErrorKind::Failed { status, output }))
}

/// Stdout ran past the limit.
struct Overflow;

async fn exec(
    mut cmd: tokio::process::Command,
    stdin: Vec<u8>,
    timeout: Duration,
) -> Result<(ExitStatus, Vec<u8>, Vec<u8>), ErrorKind> {
    let mut child = cmd.spawn().map_err(ErrorKind::Spawn)?;
    let pid = child.id();
    let (Some(mut child_in), Some(child_out), Some(child_err)) =
        (child.stdin.take(), child.stdout.take(), child.stderr.take())
    else {
        kill_group(pid);
        let _ = child.wait().await;
        return Err(ErrorKind::Io(std::io::Error::other("child pipes missing")));
    };
    let talk = async {
        let write = async {
            // A plugin may exit without reading stdin (VERSION often
            // does); that is not an error of ours.
            match child_in.write_all(&stdin).await {
                Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => Err(Ok(e)),
                _ => Ok(()),
            }
            .map(|()| drop(child_in))
        };
        let read_out = async {
            match read_bounded(child_out, OUTPUT_LIMIT).await {
                Ok((buf, false)) => Ok(buf),
                Ok((_, true)) => Err(Err(Overflow)),
                Err(e) => Err(Ok(e)),
            }
        };
        let read_err = async {
            let mut r = child_err;
            let (buf, more) = read_bounded(&mut r, OUTPUT_LIMIT).await.map_err(Ok)?;
            if more {
                // Stderr only feeds error messages: keep the head, drain
                // the rest so the plugin is not blocked on a full pipe.
                tokio::io::copy(&mut r, &mut tokio::io::sink())
                    .await
                    .map_err(Ok)?;
            }
            Ok(buf)
        };
        let ((), out, err) = tokio::try_join!(write, read_out, read_err)?;
        let status = child.wait().await.map_err(Ok)?;
        Ok::<_, Result<std::io::Error, Overflow>>((status, out, err))
    };
    let failure = match tokio::time::timeout(timeout, talk).await {
        Ok(Ok(done)) => return Ok(done),
        Ok(Err(Ok(e))) => ErrorKind::Io(e),
        Ok(Err(Err(Overflow))) => ErrorKind::TooLarge,
        Err(_) => ErrorKind::Timeout(timeout),
    };
    kill_group(pid);
    // Reap now so a timed-out plugin never lingers as a zombie; SIGKILL
    // cannot be ignored, so this wait is short.
    let _ = child.wait().await;
    Err(failure)
}

/// SIGKILLs the plugin's process group (the plugin is its leader).
fn kill_group(pid: Option<u32>) {
    let Some(pgid) = pid.and_then(|p| i32::try_from(p).ok()).filter(|p| *p > 0) else {
        return;
    };
    // SAFETY: kill(2) has no memory effects; the group id is that of our
    // own unreaped child, so it cannot have been reused.
    unsafe { libc::kill(-pgid, libc::SIGKILL) };
}

/// Reads at most `limit` bytes; the flag says there was more, which the
/// caller must then drain or kill the writer for.
async fn read_bounded(
    mut r: impl AsyncRead + Unpin,
    limit: usize,
) -> std::io::Result<(Vec<u8>, bool)> {
    let mut buf = Vec::new();
    (&mut r)
        .take(limit as u64 + 1)
        .read_to_end(&mut buf)
        .await?;
    if buf.len() <= limit {
        return Ok((buf, false));
    }
    buf.truncate(limit);
    Ok((buf, true))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Writes an executable shell script; fake plugins stand in for real
    /// ones so env, stdin and every failure mode can be checked.
    fn script(dir: &Path, name: &str, body: &str) -> PathBuf {
        use std::os::unix::fs::PermissionsExt;
        let p = dir.join(name);
        std::fs::write(&p, format!("#!/bin/sh\n{body}\n")).unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
        p
    }

    fn inv(dir: &Path, timeout: Duration) -> Invocation {
        Invocation {
            container_id: "c0ffee".into(),
            netns: PathBuf::from("/var/run/netns/vmpod-test"),
            ifname: "eth0".into(),
            args: vec![
                ("K8S_POD_NAMESPACE".into(), "default".into()),
                ("K8S_POD_NAME".into(), "web".into()),
            ],
            bin_dirs: vec![dir.to_path_buf(), PathBuf::from("/usr/lib/cni")],
            timeout,
        }
    }

    fn config() -> Value {
        let caps: Map<String, Value> = serde_json::from_str(
            r#"{"portMappings":[{"hostPort":8080,"containerPort":80,"protocol":"tcp"}],
                "dns":{"servers":["10.96.0.10"]}}"#,
        )
        .unwrap();
        plugin_config(
            &serde_json::json!({"type":"fake","capabilities":{"portMappings":true}}),
            "pods",
            "1.0.0",
            None,
            &caps,
        )
        .unwrap()
    }

    const RESULT_1_0: &str = r#"{"cniVersion":"1.0.0",
        "interfaces":[{"name":"cni0","mac":"aa:bb:cc:dd:ee:ff"},
                      {"name":"eth0","mac":"0a:58:0a:58:00:05","sandbox":"/var/run/netns/vmpod-test"}],
        "ips":[{"address":"10.88.0.5/16","gateway":"10.88.0.1","interface":1},
               {"address":"fd00::5/64","interface":1}],
        "routes":[{"dst":"0.0.0.0/0","gw":"10.88.0.1"}],
        "dns":{"nameservers":["10.96.0.10"]}}"#;

    #[tokio::test]
    async fn add_passes_env_and_stdin_and_parses_1_0_0() {
        let d = tempfile::tempdir().unwrap();
        // The script fails loudly (exit 9, message on stderr) on any
        // mismatch, so the assertion below names what was wrong.
        let body = format!(
            r#"in=$(cat)
want() {{ [ "$1" = "$2" ] || {{ echo "$3: got '$1'" >&2; exit 9; }}; }}
want "$CNI_COMMAND" ADD command
want "$CNI_CONTAINERID" c0ffee id
want "$CNI_NETNS" /var/run/netns/vmpod-test netns
want "$CNI_IFNAME" eth0 ifname
want "$CNI_ARGS" "K8S_POD_NAMESPACE=default;K8S_POD_NAME=web" args
want "$CNI_PATH" "{dir}:/usr/lib/cni" path
case "$in" in *'"name":"pods"'*) ;; *) echo "no name: $in" >&2; exit 9;; esac
case "$in" in *'"cniVersion":"1.0.0"'*) ;; *) echo "no version: $in" >&2; exit 9;; esac
case "$in" in *'"runtimeConfig":{{"portMappings"'*) ;; *) echo "no caps: $in" >&2; exit 9;; esac
case "$in" in *'"dns"'*) echo "undeclared capability passed: $in" >&2; exit 9;; esac
cat <<'END'
{RESULT_1_0}
END"#,
            dir = d.path().display()
        );
        let p = script(d.path(), "fake", &body);
        let (_, r) = add(&p, &inv(d.path(), Duration::from_secs(10)), &config())
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(r.cni_version, "1.0.0");
        assert_eq!(r.ips.len(), 2);
        assert_eq!(
            r.ips[0].address.addr,
            "10.88.0.5".parse::<IpAddr>().unwrap()
        );
        assert_eq!(r.ips[0].address.prefix, 16);
        assert_eq!(r.ips[0].interface, Some(1));
        assert_eq!(
            r.interfaces[1].sandbox.as_deref(),
            Some("/var/run/netns/vmpod-test")
        );
        assert_eq!(r.routes[0].gw, Some("10.88.0.1".parse().unwrap()));
        assert_eq!(r.dns.nameservers, ["10.96.0.10"]);
    }

    #[tokio::test]
    async fn add_parses_0_4_0_result_and_round_trips_version() {
        let d = tempfile::tempdir().unwrap();
        let p = script(
            d.path(),
            "old",
            r#"cat >/dev/null
echo '{"cniVersion":"0.4.0","interfaces":[{"name":"eth0","sandbox":"/n"}],
"ips":[{"version":"4","address":"10.1.0.7/24","gateway":"10.1.0.1","interface":0}],"dns":{}}'"#,
        );
        let (_, r) = add(&p, &inv(d.path(), Duration::from_secs(10)), &config())
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(r.cni_version, "0.4.0");
        assert_eq!(r.ips[0].version.as_deref(), Some("4"));
        assert_eq!(String::from(r.ips[0].address), "10.1.0.7/24");
        // As prevResult it must still carry the 0.4.0 fields.
        let back = serde_json::to_value(&r).unwrap();
        assert_eq!(back["ips"][0]["version"], "4");
    }

    #[tokio::test]
    async fn error_object_becomes_typed_error() {
        let d = tempfile::tempdir().unwrap();
        let p = script(
            d.path(),
            "failing",
            r#"cat >/dev/null
echo '{"cniVersion":"1.0.0","code":7,"msg":"invalid network config","details":"no subnet"}'
echo 'ignored' >&2
exit 1"#,
        );
        let e = add(&p, &inv(d.path(), Duration::from_secs(10)), &config())
            .await
            .unwrap_err();
        match &e.kind {
            ErrorKind::Plugin { code, msg, details } => {
                assert_eq!(*code, 7);
                assert_eq!(msg, "invalid network config");
                assert_eq!(details, "no subnet");
            }
            other => panic!("{other:?}"),
        }
        let s = e.to_string();
        assert!(
            s.contains("failing") && s.contains("ADD") && s.contains("error 7"),
            "{s}"
        );
    }

    #[tokio::test]
    async fn non_json_failure_uses_stderr() {
        let d = tempfile::tempdir().unwrap();
        let p = script(d.path(), "crash", "echo 'panic: boom' >&2\nexit 2");
        let e = run_quiet(
            &p,
            Command::Del,
            &inv(d.path(), Duration::from_secs(10)),
            &config(),
        )
        .await
        .unwrap_err();
        assert!(matches!(e.kind, ErrorKind::Failed { .. }), "{e:?}");
        let s = e.to_string();
        assert!(s.contains("DEL") && s.contains("panic: boom"), "{s}");
    }

    #[tokio::test]
    async fn quiet_success_is_ok() {
        let d = tempfile::tempdir().unwrap();
        let p = script(
            d.path(),
            "checker",
            r#"[ "$CNI_COMMAND" = CHECK ] || exit 3"#,
        );
        run_quiet(
            &p,
            Command::Check,
            &inv(d.path(), Duration::from_secs(10)),
            &config(),
        )
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    }

    #[tokio::test]
    async fn garbage_output_is_rejected() {
        let d = tempfile::tempdir().unwrap();
        let i = inv(d.path(), Duration::from_secs(10));
        let p = script(
            d.path(),
            "garbage",
            "cat >/dev/null\necho 'hello, not json'",
        );
        let e = add(&p, &i, &config()).await.unwrap_err();
        assert!(matches!(e.kind, ErrorKind::BadOutput(_)), "{e:?}");
        // Valid JSON with a malformed pod IP is garbage too.
        let p = script(
            d.path(),
            "badip",
            r#"cat >/dev/null; echo '{"cniVersion":"1.0.0","ips":[{"address":"10.0.0.300/8"}]}'"#,
        );
        let e = add(&p, &i, &config()).await.unwrap_err();
        assert!(e.to_string().contains("10.0.0.300/8"), "{e}");
    }

    #[tokio::test]
    async fn hung_plugin_is_killed_and_reaped() {
        let d = tempfile::tempdir().unwrap();
        let pidfile = d.path().join("pid");
        // The backgrounded sleep checks that the whole group dies, not only
        // the script.
        let p = script(
            d.path(),
            "hang",
            &format!(
                "echo $$ > {}\nsleep 30 &\necho $! >> {}\nwait",
                pidfile.display(),
                pidfile.display()
            ),
        );
        let started = std::time::Instant::now();
        let e = add(&p, &inv(d.path(), Duration::from_millis(500)), &config())
            .await
            .unwrap_err();
        assert!(started.elapsed() < Duration::from_secs(10));
        assert!(matches!(e.kind, ErrorKind::Timeout(_)), "{e:?}");
        let s = e.to_string();
        assert!(
            s.contains("hang") && s.contains("ADD") && s.contains("500ms"),
            "{s}"
        );
        let pids = std::fs::read_to_string(&pidfile).unwrap();
        let mut pids = pids.lines();
        let script_pid = pids.next().unwrap();
        // Reaped: no /proc entry at all (a zombie would still have one).
        assert!(
            !Path::new(&format!("/proc/{script_pid}")).exists(),
            "plugin {script_pid} not reaped"
        );
        if let Some(sleep_pid) = pids.next() {
            // Orphans are reaped by init; give it a moment, then accept
            // either gone or a zombie awaiting init, but never running.
            std::thread::sleep(Duration::from_millis(200));
            let stat =
                std::fs::read_to_string(format!("/proc/{sleep_pid}/stat")).unwrap_or_default();
            let state = stat
                .rsplit(')')
                .next()
                .unwrap_or("")
                .split_whitespace()
                .next();
            assert!(
                matches!(state, None | Some("Z")),
                "sleep {sleep_pid} still {state:?}"
            );
        }
    }

    #[tokio::test]
    async fn oversized_output_is_bounded() {
        let d = tempfile::tempdir().unwrap();
        // Endless stdout: must end by the size bound, well before the
        // timeout.
        let p = script(
            d.path(),
            "flood",
            "cat >/dev/null\nyes '{\"cniVersion\":\"1.0.0\"}'",
        );
        let started = std::time::Instant::now();
        let e = add(&p, &inv(d.path(), Duration::from_secs(20)), &config())
            .await
            .unwrap_err();
        assert!(matches!(e.kind, ErrorKind::TooLarge), "{e:?}");
        assert!(started.elapsed() < Duration::from_secs(10));
        // Endless stderr on failure: the message is bounded.
        let p = script(
            d.path(),
            "loud",
            "cat >/dev/null\nhead -c 3000000 /dev/zero | tr '\\0' x >&2\nexit 1",
        );
        let e = add(&p, &inv(d.path(), Duration::from_secs(20)), &config())
            .await
            .unwrap_err();
        match &e.kind {
            ErrorKind::Failed { output, .. } => assert!(output.len() < 5000, "{}", output.len()),
            other => panic!("{other:?}"),
        }
    }

    #[tokio::test]
    async fn spawn_failure_names_plugin() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("absent");
        let e = version(&p, "1.0.0", &[], Duration::from_secs(2))
            .await
            .unwrap_err();
        assert!(matches!(e.kind, ErrorKind::Spawn(_)), "{e:?}");
        assert!(e.to_string().contains("absent"), "{e}");
    }

    #[test]
    fn plugin_config_chains_prev_result() {
        let prev = serde_json::json!({"cniVersion":"1.0.0","ips":[]});
        let c = plugin_config(
            &serde_json::json!({"type":"portmap","runtimeConfig":{"stale":1}}),
            "pods",
            "1.0.0",
            Some(&prev),
            &Map::new(),
        )
        .unwrap();
        assert_eq!(c["prevResult"], prev);
        assert_eq!(c["name"], "pods");
        assert!(c.get("runtimeConfig").is_none(), "{c}");
        assert!(plugin_config(&serde_json::json!([1]), "n", "1.0.0", None, &Map::new()).is_err());
    }

    #[tokio::test]
    async fn real_loopback_version() {
        let lo = Path::new("/usr/lib/cni/loopback");
        if !crate::host::is_executable(lo) {
            println!("skipped: {} is not installed", lo.display());
            return;
        }
        let v = version(
            lo,
            "1.0.0",
            &[PathBuf::from("/usr/lib/cni")],
            Duration::from_secs(5),
        )
        .await
        .unwrap_or_else(|e| panic!("{e}"));
        assert!(v.supported_versions.iter().any(|s| s == "1.0.0"), "{v:?}");
        assert!(v.supported_versions.iter().any(|s| s == "0.4.0"), "{v:?}");
    }
}
