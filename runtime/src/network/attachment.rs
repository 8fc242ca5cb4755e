//! A pod's attachment to the CNI network: its named netns, the plugin
//! chain's ADD and DEL, and the TAP that carries the CNI interface's traffic
//! into the VM.
//!
//! The order is what makes crash recovery exact. The record
//! ([`NetworkRecord`]) is written before the netns exists, and again once
//! ADD has a result, so a daemon killed anywhere in between finds on restart
//! everything DEL needs: the same conflist, the same capability args, and
//! the result as `prevResult` when there was one. DEL without a result is
//! what the spec asks plugins to tolerate, so an ADD cut short still gets
//! its lease released.
//!
//! The CNI plugins never see the VM. They configure `eth0` in the netns as
//! they would for a container; [`super::tap`] then joins a TAP to `eth0`
//! with tc redirects both ways, and the guest's card takes `eth0`'s MAC and
//! addresses. Any plugin works unchanged, and its view (ARP, the bridge's
//! FDB, portmap's DNAT to the pod IP) stays true.

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::{Map, Value, json};
use vmpod_shim_api::vm_spec::{GuestInterface, GuestRoute, NetSpec};

use super::cni::{self, Network};
use super::plugin::{self, CniResult, Command, Invocation};
use super::{netns, tap};
use crate::config::CniConfig;
use crate::state::NetworkRecord;

/// The CNI interface in every pod's netns, as kubelet's other runtimes
/// name it.
pub const IFNAME: &str = "eth0";

/// What a pod asks of its network.
#[derive(Debug, Clone, Default)]
pub struct PodNetworkRequest {
    pub sandbox_id: String,
    pub name: String,
    pub namespace: String,
    pub uid: String,
    pub port_mappings: Vec<PortMapping>,
    pub dns_servers: Vec<String>,
    pub dns_searches: Vec<String>,
    pub dns_options: Vec<String>,
}

/// A hostPort mapping, as portmap's `portMappings` capability takes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PortMapping {
    pub host_port: u16,
    pub container_port: u16,
    /// `tcp`, `udp` or `sctp`.
    pub protocol: &'static str,
    /// Empty: every host address.
    pub host_ip: String,
}

/// What the VM is given once the pod is attached.
#[derive(Debug, Clone)]
pub struct Attached {
    pub card: NetSpec,
    pub guest: GuestInterface,
}

/// Starts the record of an attachment to `net`; nothing exists on the host
/// yet. The caller stores it before calling [`attach`].
pub fn plan(net: &Network, req: &PodNetworkRequest) -> Result<NetworkRecord, String> {
    for (field, value) in [
        ("config.metadata.name", &req.name),
        ("config.metadata.namespace", &req.namespace),
        ("config.metadata.uid", &req.uid),
    ] {
        // CNI_ARGS is `K=V;K=V`: either byte would let a pod's name forge
        // or break another argument.
        if value.contains([';', '=']) {
            return Err(format!(
                "{field} {value:?} contains ';' or '=', which CNI_ARGS cannot carry"
            ));
        }
    }
    let conflist = serde_json::to_string(&net.conflist)
        .map_err(|e| format!("encoding the CNI conflist: {e}"))?;
    let mut caps = Map::new();
    if !req.port_mappings.is_empty() {
        caps.insert(
            "portMappings".into(),
            Value::Array(
                req.port_mappings
                    .iter()
                    .map(|m| {
                        json!({
                            "hostPort": m.host_port,
                            "containerPort": m.container_port,
                            "protocol": m.protocol,
                            "hostIP": m.host_ip,
                        })
                    })
                    .collect(),
            ),
        );
    }
    caps.insert(
        "dns".into(),
        json!({
            "servers": req.dns_servers,
            "searches": req.dns_searches,
            "options": req.dns_options,
        }),
    );
    Ok(NetworkRecord {
        sandbox_id: req.sandbox_id.clone(),
        netns: Path::new(netns::NETNS_DIR)
            .join(netns::name_for(&req.sandbox_id).map_err(|e| format!("{e:#}"))?),
        ifname: IFNAME.into(),
        tap: tap::TAP_NAME.into(),
        conflist,
        args: vec![
            ("IgnoreUnknown".into(), "1".into()),
            ("K8S_POD_NAMESPACE".into(), req.namespace.clone()),
            ("K8S_POD_NAME".into(), req.name.clone()),
            ("K8S_POD_INFRA_CONTAINER_ID".into(), req.sandbox_id.clone()),
            ("K8S_POD_UID".into(), req.uid.clone()),
        ],
        capability_args: Value::Object(caps).to_string(),
        loopback: true,
        result: None,
        ips: Vec::new(),
    })
}

/// Why an attachment failed, split by whose fault it is, so that the CRI
/// layer can answer with the right code.
#[derive(Debug)]
pub enum AttachError {
    /// A plugin failed or answered garbage; its message is kept verbatim
    /// (host-local's "no IP addresses available" among them).
    Plugin(String),
    /// The host could not do its part: netns, TAP, tc.
    Host(String),
}

impl std::fmt::Display for AttachError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            AttachError::Plugin(e) | AttachError::Host(e) => f.write_str(e),
        }
    }
}

/// Creates the netns, runs ADD and joins the TAP. `on_result` is called
/// with the record once ADD succeeded, before the TAP exists, so the
/// caller can persist the result. On failure the caller owns the undo
/// ([`detach`]), as it does after a crash.
pub async fn attach(
    cfg: &CniConfig,
    rec: &mut NetworkRecord,
    mut on_result: impl FnMut(&NetworkRecord) -> Result<(), String>,
) -> Result<Attached, AttachError> {
    let host = AttachError::Host;
    let conflist: Value = serde_json::from_str(&rec.conflist)
        .map_err(|e| host(format!("the recorded conflist: {e}")))?;
    let name = rec
        .netns
        .file_name()
        .and_then(|n| n.to_str())
        .ok_or_else(|| host(format!("netns path {} has no name", rec.netns.display())))?
        .to_string();
    tokio::task::spawn_blocking(move || netns::create(&name))
        .await
        .map_err(|e| host(format!("netns task: {e}")))?
        .map_err(|e| host(format!("{e:#}")))?;

    let chain = Chain::new(cfg, rec, &conflist).map_err(AttachError::Plugin)?;
    if rec.loopback
        && let Some(lo) = chain.loopback()
    {
        lo.add().await.map_err(AttachError::Plugin)?;
    }
    let result = chain.add().await.map_err(AttachError::Plugin)?;
    let parsed: CniResult = serde_json::from_value(result.clone()).map_err(|e| {
        AttachError::Plugin(format!(
            "the CNI chain's result is not a CNI result: {e}: {result}"
        ))
    })?;
    rec.result = Some(result.to_string());
    rec.ips = pod_ips(&parsed);
    if rec.ips.is_empty() {
        return Err(AttachError::Plugin(format!(
            "CNI network {:?} gave the pod no IP address: {result}",
            conflist.get("name").and_then(Value::as_str).unwrap_or("")
        )));
    }
    on_result(rec).map_err(host)?;

    let (path, ifname, tap_name) = (rec.netns.clone(), rec.ifname.clone(), rec.tap.clone());
    let card = tokio::task::spawn_blocking(move || tap::connect(&path, &ifname, &tap_name))
        .await
        .map_err(|e| host(format!("TAP task: {e}")))?
        .map_err(|e| host(format!("{e:#}")))?;
    let guest = guest_interface(&parsed, &card.mac, card.mtu);
    Ok(Attached {
        card: NetSpec {
            netns: rec.netns.clone(),
            tap: rec.tap.clone(),
            mac: card.mac,
        },
        guest,
    })
}

/// Runs DEL (the chain in reverse, then loopback) with what ADD was given,
/// then removes the netns. A DEL that fails leaves the netns, so that a
/// retry finds the interfaces the plugins still have to clean.
pub async fn detach(cfg: &CniConfig, rec: &NetworkRecord) -> Result<(), String> {
    let conflist: Value =
        serde_json::from_str(&rec.conflist).map_err(|e| format!("the recorded conflist: {e}"))?;
    let chain = Chain::new(cfg, rec, &conflist)?;
    chain.del().await?;
    if rec.loopback
        && let Some(lo) = chain.loopback()
    {
        lo.del().await?;
    }
    remove_netns(rec).await
}

/// Removes the netns whatever DEL did: for a pod whose DEL is left to the
/// pending table, the netns must not outlive the sandbox.
pub async fn remove_netns(rec: &NetworkRecord) -> Result<(), String> {
    let path = rec.netns.clone();
    tokio::task::spawn_blocking(move || netns::remove(&path))
        .await
        .map_err(|e| format!("netns task: {e}"))?
        .map_err(|e| format!("{e:#}"))
}

/// The plugin chain of one attachment, ready to run.
struct Chain {
    name: String,
    version: String,
    plugins: Vec<(Value, PathBuf)>,
    invocation: Invocation,
    caps: Map<String, Value>,
    prev_result: Option<Value>,
    bin_dirs: Vec<PathBuf>,
}

impl Chain {
    fn new(cfg: &CniConfig, rec: &NetworkRecord, conflist: &Value) -> Result<Chain, String> {
        let bin_dirs: Vec<PathBuf> = cfg
            .bin_dirs
            .iter()
            .map(|d| d.as_path().to_path_buf())
            .collect();
        let dirs: Vec<&Path> = bin_dirs.iter().map(PathBuf::as_path).collect();
        let name = conflist
            .get("name")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string();
        // The spec's default for a config that names none.
        let version = conflist
            .get("cniVersion")
            .and_then(Value::as_str)
            .unwrap_or("0.2.0")
            .to_string();
        let list = conflist
            .get("plugins")
            .and_then(Value::as_array)
            .ok_or("the recorded conflist has no plugins")?;
        let mut plugins = Vec::new();
        for p in list {
            let t = p.get("type").and_then(Value::as_str).unwrap_or_default();
            let path = cni::find_plugin(t, &dirs).ok_or_else(|| {
                format!("CNI plugin {t:?} of network {name:?} is not in any plugin dir")
            })?;
            plugins.push((p.clone(), path));
        }
        let caps = match serde_json::from_str(&rec.capability_args) {
            Ok(Value::Object(m)) => m,
            _ => Map::new(),
        };
        let prev_result = rec
            .result
            .as_deref()
            .and_then(|r| serde_json::from_str(r).ok());
        Ok(Chain {
            name,
            version,
            plugins,
            invocation: Invocation {
                container_id: rec.sandbox_id.clone(),
                netns: rec.netns.clone(),
                ifname: rec.ifname.clone(),
                args: rec.args.clone(),
                bin_dirs: bin_dirs.clone(),
                timeout: Duration::from_secs(cfg.timeout_secs),
            },
            caps,
            prev_result,
            bin_dirs,
        })
    }

    /// containerd's loopback network: the loopback plugin on `lo`, alone.
    /// `None` where the plugin is not installed; the VM has its own `lo`,
    /// so the netns's only matters to tools that look inside it.
    fn loopback(&self) -> Option<Chain> {
        let dirs: Vec<&Path> = self.bin_dirs.iter().map(PathBuf::as_path).collect();
        let path = cni::find_plugin("loopback", &dirs)?;
        Some(Chain {
            name: "cni-loopback".into(),
            version: self.version.clone(),
            plugins: vec![(json!({ "type": "loopback" }), path)],
            invocation: Invocation {
                ifname: "lo".into(),
                ..self.invocation.clone()
            },
            caps: Map::new(),
            prev_result: None,
            bin_dirs: self.bin_dirs.clone(),
        })
    }

    /// Each plugin in order, each given the previous one's result; returns
    /// the last result.
    async fn add(&self) -> Result<Value, String> {
        let mut prev: Option<Value> = None;
        for (conf, path) in &self.plugins {
            let stdin =
                plugin::plugin_config(conf, &self.name, &self.version, prev.as_ref(), &self.caps)?;
            let (result, _) = plugin::add(path, &self.invocation, &stdin)
                .await
                .map_err(|e| e.to_string())?;
            prev = Some(result);
        }
        prev.ok_or_else(|| format!("CNI network {:?} has no plugins", self.name))
    }

    /// Each plugin in reverse order, each given the ADD result. Every
    /// plugin is tried; the first error is returned.
    async fn del(&self) -> Result<(), String> {
        let mut first_error = None;
        for (conf, path) in self.plugins.iter().rev() {
            let stdin = plugin::plugin_config(
                conf,
                &self.name,
                &self.version,
                self.prev_result.as_ref(),
                &self.caps,
            )?;
            if let Err(e) = plugin::run_quiet(path, Command::Del, &self.invocation, &stdin).await {
                tracing::warn!(sandbox = %self.invocation.container_id, error = %e, "CNI DEL");
                first_error.get_or_insert(e.to_string());
            }
        }
        first_error.map_or(Ok(()), Err)
    }
}

/// Whether an IP config belongs to the pod's side: results list the host's
/// interfaces (bridge, veth host end) too, and only interfaces with a
/// `sandbox` are the pod's. An IP naming no interface is the pod's, as in
/// results of plugins that do not list interfaces.
fn is_pod_ip(result: &CniResult, ip: &plugin::IpConfig) -> bool {
    match ip.interface.and_then(|i| result.interfaces.get(i)) {
        None => true,
        Some(iface) => iface.sandbox.as_deref().is_some_and(|s| !s.is_empty()),
    }
}

/// The pod's IPs, IPv4 first, as kubelet takes the first as the primary
/// and dual-stack clusters list v4 first.
fn pod_ips(result: &CniResult) -> Vec<String> {
    let mut ips: Vec<IpAddr> = result
        .ips
        .iter()
        .filter(|ip| is_pod_ip(result, ip))
        .map(|ip| ip.address.addr)
        .collect();
    ips.sort_by_key(|ip| ip.is_ipv6());
    ips.dedup();
    ips.iter().map(IpAddr::to_string).collect()
}

/// The guest card's configuration: the pod's addresses, and the result's
/// routes. A route without `gw` goes through the gateway of the address
/// of its family, as the plugins themselves route it in a container.
fn guest_interface(result: &CniResult, mac: &str, mtu: u32) -> GuestInterface {
    let pod: Vec<&plugin::IpConfig> = result
        .ips
        .iter()
        .filter(|ip| is_pod_ip(result, ip))
        .collect();
    let gateway_for = |v6: bool| {
        pod.iter()
            .filter(|ip| ip.address.addr.is_ipv6() == v6)
            .find_map(|ip| ip.gateway)
    };
    let routes = result
        .routes
        .iter()
        .filter_map(|r| {
            let v6 = r.dst.addr.is_ipv6();
            let gateway = r.gw.or_else(|| gateway_for(v6));
            // A route of a family the pod has no address in cannot be
            // installed; skip it rather than fail the pod.
            pod.iter()
                .any(|ip| ip.address.addr.is_ipv6() == v6)
                .then(|| GuestRoute {
                    destination: String::from(r.dst),
                    gateway: gateway.map(|g| g.to_string()),
                })
        })
        .collect();
    GuestInterface {
        mac: mac.to_string(),
        mtu,
        addresses: pod.iter().map(|ip| String::from(ip.address)).collect(),
        routes,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn result(json: &str) -> CniResult {
        serde_json::from_str(json).unwrap()
    }

    /// The shape Debian's bridge + host-local give, with the host's
    /// interfaces listed first.
    const BRIDGE_RESULT: &str = r#"{
        "cniVersion": "1.0.0",
        "interfaces": [
            {"name": "vmpod0", "mac": "aa:aa:aa:aa:aa:aa"},
            {"name": "veth1234", "mac": "bb:bb:bb:bb:bb:bb"},
            {"name": "eth0", "mac": "02:11:22:33:44:55", "sandbox": "/run/netns/vmpod-x"}
        ],
        "ips": [
            {"address": "fd87::5/64", "gateway": "fd87::1", "interface": 2},
            {"address": "10.87.0.5/16", "gateway": "10.87.0.1", "interface": 2}
        ],
        "routes": [{"dst": "0.0.0.0/0"}, {"dst": "::/0"}, {"dst": "192.168.9.0/24", "gw": "10.87.0.9"}],
        "dns": {}
    }"#;

    #[test]
    fn pod_ips_put_v4_first_and_skip_host_interfaces() {
        let r = result(BRIDGE_RESULT);
        assert_eq!(pod_ips(&r), ["10.87.0.5", "fd87::5"]);
        let host_only = result(
            r#"{"cniVersion":"1.0.0","interfaces":[{"name":"br0"}],
                "ips":[{"address":"10.0.0.1/24","interface":0}]}"#,
        );
        assert!(pod_ips(&host_only).is_empty());
        let no_interfaces =
            result(r#"{"cniVersion":"0.4.0","ips":[{"version":"4","address":"10.0.0.7/24"}]}"#);
        assert_eq!(pod_ips(&no_interfaces), ["10.0.0.7"]);
    }

    #[test]
    fn guest_routes_take_the_gateway_of_their_family() {
        let r = result(BRIDGE_RESULT);
        let g = guest_interface(&r, "02:11:22:33:44:55", 1500);
        assert_eq!(g.addresses, ["fd87::5/64", "10.87.0.5/16"]);
        let routes: Vec<(&str, Option<&str>)> = g
            .routes
            .iter()
            .map(|r| (r.destination.as_str(), r.gateway.as_deref()))
            .collect();
        assert_eq!(
            routes,
            [
                ("0.0.0.0/0", Some("10.87.0.1")),
                ("::/0", Some("fd87::1")),
                ("192.168.9.0/24", Some("10.87.0.9")),
            ]
        );
        assert_eq!(g.mtu, 1500);
    }

    #[test]
    fn names_that_would_break_cni_args_are_refused() {
        let net = Network {
            name: "n".into(),
            cni_version: Some("1.0.0".into()),
            source: cni::Source::Embedded,
            plugins: vec![],
            conflist: json!({"name": "n", "cniVersion": "1.0.0", "plugins": []}),
        };
        let mut req = PodNetworkRequest {
            sandbox_id: "0123456789abcdef0123".into(),
            name: "web".into(),
            namespace: "default".into(),
            uid: "u1".into(),
            port_mappings: vec![PortMapping {
                host_port: 8080,
                container_port: 80,
                protocol: "tcp",
                host_ip: String::new(),
            }],
            ..Default::default()
        };
        let rec = plan(&net, &req).unwrap();
        assert!(rec.args.contains(&("K8S_POD_NAME".into(), "web".into())));
        assert!(rec.args.contains(&(
            "K8S_POD_INFRA_CONTAINER_ID".into(),
            "0123456789abcdef0123".into()
        )));
        let caps: Value = serde_json::from_str(&rec.capability_args).unwrap();
        assert_eq!(caps["portMappings"][0]["hostPort"], 8080);
        assert_eq!(caps["portMappings"][0]["protocol"], "tcp");
        req.name = "web;K8S_POD_UID=x".into();
        let e = plan(&net, &req).unwrap_err();
        assert!(e.contains("config.metadata.name"), "{e}");
    }
}
