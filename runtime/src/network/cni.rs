//! CNI network configuration discovery.
//!
//! Follows containerd's rule for picking the network: the lexically first
//! `*.conflist`, `*.conf` or `*.json` file in the conf dir that parses. A
//! conf dir with no such file at all gets vmpod's embedded default, so a
//! fresh machine gives pods a network with no configuration; a dir whose
//! files are all broken does not, because the operator meant to configure
//! something and should see why it failed. The pod is only network-ready
//! when every plugin the chosen config names exists in a plugin dir, because
//! kubelet would otherwise schedule pods onto a node whose first sandbox
//! then fails.

use std::fmt;
use std::path::{Path, PathBuf};

use serde_json::{Value, json};

use crate::config::CniConfig;

/// The embedded default network's name: host-local keeps its leases under
/// `/var/lib/cni/networks/<name>`.
pub const DEFAULT_NETWORK_NAME: &str = "vmpod";
/// The embedded default's bridge on the host.
pub const DEFAULT_BRIDGE: &str = "vmpod0";

/// The network that pods would be attached to.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Network {
    pub name: String,
    /// The conflist's `cniVersion`: every plugin must list it in VERSION,
    /// and it is the version injected into each plugin's config. `None`
    /// for old configs that omit it (the spec requires it since 0.4.0).
    pub cni_version: Option<String>,
    pub source: Source,
    /// Plugin types in call order, each with where it was found.
    pub plugins: Vec<(String, PathBuf)>,
    /// The network as a conflist (`name`, `cniVersion`, `plugins`), a
    /// single-plugin `.conf` lifted into one: what ADD runs, and what the
    /// sandbox record keeps so DEL runs the same after a config change.
    pub conflist: Value,
}

/// Where the network came from, for NetworkReady and `vmpod check`.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Source {
    File(PathBuf),
    /// No config in the conf dir: [`embedded_default`].
    Embedded,
}

impl fmt::Display for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Source::File(p) => write!(f, "{}", p.display()),
            Source::Embedded => f.write_str("vmpod's embedded default"),
        }
    }
}

/// vmpod's own network for a conf dir without any config: a bridge with
/// NAT to the outside on a private subnet, and hostPort mappings. Debian's
/// `containernetworking-plugins` has every plugin it names.
pub fn embedded_default(cfg: &CniConfig) -> Value {
    json!({
        "cniVersion": "1.0.0",
        "name": DEFAULT_NETWORK_NAME,
        "plugins": [
            {
                "type": "bridge",
                "bridge": DEFAULT_BRIDGE,
                "isGateway": true,
                "ipMasq": true,
                "hairpinMode": true,
                "ipam": {
                    "type": "host-local",
                    "ranges": [[{ "subnet": cfg.default_subnet.to_string() }]],
                    "routes": [{ "dst": "0.0.0.0/0" }]
                }
            },
            {
                "type": "portmap",
                "capabilities": { "portMappings": true },
                "snat": true
            }
        ]
    })
}

/// Finds the default network and checks that its plugins are installed.
/// The error is a one-line reason suitable for the CRI `NetworkReady`
/// condition.
pub fn default_network(cfg: &CniConfig) -> Result<Network, String> {
    let dir = cfg.conf_dir.as_path();
    let mut files: Vec<PathBuf> = match std::fs::read_dir(dir) {
        Ok(entries) => entries
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| {
                matches!(
                    p.extension().and_then(|e| e.to_str()),
                    Some("conflist" | "conf" | "json")
                )
            })
            .collect(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
        Err(e) => return Err(format!("cannot read CNI config dir {}: {e}", dir.display())),
    };
    files.sort();
    if files.is_empty() {
        return resolve(cfg, embedded_default(cfg), Source::Embedded);
    }
    let mut problems = Vec::new();
    for file in files {
        let parsed = std::fs::read_to_string(&file)
            .map_err(|e| e.to_string())
            .and_then(|text| serde_json::from_str::<Value>(&text).map_err(|e| e.to_string()));
        match parsed {
            Ok(v) => match resolve(cfg, v, Source::File(file.clone())) {
                Ok(n) => return Ok(n),
                Err(e) if e.starts_with(NEEDS_PLUGIN) => return Err(e),
                Err(e) => problems.push(e),
            },
            Err(e) => problems.push(format!("{}: {e}", file.display())),
        }
    }
    Err(format!(
        "no usable CNI network config in {}: {}",
        dir.display(),
        problems.join("; ")
    ))
}

/// Starts the error of a config that parses but names a missing plugin:
/// that config is still the chosen one, so later files are not tried.
const NEEDS_PLUGIN: &str = "CNI network ";

fn resolve(cfg: &CniConfig, v: Value, source: Source) -> Result<Network, String> {
    let (name, cni_version, conflist) = parse_network(v).map_err(|e| format!("{source}: {e}"))?;
    let bin_dirs: Vec<&Path> = cfg.bin_dirs.iter().map(|d| d.as_path()).collect();
    let mut plugins = Vec::new();
    for t in plugin_types(&conflist) {
        let found = find_plugin(&t, &bin_dirs).ok_or_else(|| {
            format!(
                "{NEEDS_PLUGIN}{name:?} ({source}) needs plugin {t:?}, not found in {}",
                cfg.bin_dirs
                    .iter()
                    .map(|d| d.to_string())
                    .collect::<Vec<_>>()
                    .join(", ")
            )
        })?;
        plugins.push((t, found));
    }
    Ok(Network {
        name,
        cni_version,
        source,
        plugins,
        conflist,
    })
}

/// The plugin types of a conflist made by [`parse_network`], in order.
pub fn plugin_types(conflist: &Value) -> Vec<String> {
    conflist
        .get("plugins")
        .and_then(Value::as_array)
        .map(|list| {
            list.iter()
                .filter_map(|p| p.get("type").and_then(Value::as_str).map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}

/// Returns the network name, its `cniVersion` and the network as a
/// conflist.
fn parse_network(v: Value) -> Result<(String, Option<String>, Value), String> {
    let name = v
        .get("name")
        .and_then(|n| n.as_str())
        .ok_or("missing \"name\"")?
        .to_string();
    let cni_version = match v.get("cniVersion") {
        None => None,
        Some(Value::String(s)) => Some(s.clone()),
        Some(_) => return Err("\"cniVersion\" is not a string".into()),
    };
    let plugins = match v.get("plugins") {
        Some(Value::Array(list)) if !list.is_empty() => list.clone(),
        Some(_) => return Err("\"plugins\" must be a non-empty list".into()),
        // A single-plugin `.conf`: the whole object is the plugin.
        None => vec![v.clone()],
    };
    for p in &plugins {
        if !p.is_object() {
            return Err("a plugin is not a JSON object".into());
        }
        let t = p
            .get("type")
            .and_then(|t| t.as_str())
            .ok_or("a plugin has no \"type\"")?;
        // A type is a file name in the plugin dir; anything else would let a
        // config execute arbitrary paths.
        if t.is_empty() || t.contains('/') || t == "." || t == ".." {
            return Err(format!("invalid plugin type {t:?}"));
        }
    }
    let mut conflist = serde_json::Map::new();
    conflist.insert("name".into(), Value::String(name.clone()));
    if let Some(version) = &cni_version {
        conflist.insert("cniVersion".into(), Value::String(version.clone()));
    }
    conflist.insert("plugins".into(), Value::Array(plugins));
    Ok((name, cni_version, Value::Object(conflist)))
}

pub fn find_plugin(name: &str, dirs: &[&Path]) -> Option<PathBuf> {
    dirs.iter()
        .map(|d| d.join(name))
        .find(|p| crate::host::is_executable(p))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::AbsPath;

    fn cfg(conf: &Path, bin: &Path) -> CniConfig {
        CniConfig {
            bin_dirs: vec![AbsPath::parse(bin).unwrap()],
            conf_dir: AbsPath::parse(conf).unwrap(),
            ..CniConfig::default()
        }
    }

    fn exe(path: &Path) {
        use std::os::unix::fs::PermissionsExt;
        std::fs::write(path, "#!/bin/sh\n").unwrap();
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755)).unwrap();
    }

    #[test]
    fn picks_first_conflist_and_resolves_plugins() {
        let d = tempfile::tempdir().unwrap();
        let (conf, bin) = (d.path().join("net.d"), d.path().join("bin"));
        std::fs::create_dir_all(&conf).unwrap();
        std::fs::create_dir_all(&bin).unwrap();
        exe(&bin.join("bridge"));
        exe(&bin.join("portmap"));
        std::fs::write(
            conf.join("10-pods.conflist"),
            r#"{"cniVersion":"1.0.0","name":"pods","plugins":[{"type":"bridge"},{"type":"portmap"}]}"#,
        )
        .unwrap();
        std::fs::write(
            conf.join("20-other.conf"),
            r#"{"name":"other","type":"macvlan"}"#,
        )
        .unwrap();
        let n = default_network(&cfg(&conf, &bin)).unwrap();
        assert_eq!(n.name, "pods");
        assert_eq!(n.cni_version.as_deref(), Some("1.0.0"));
        assert_eq!(n.plugins.len(), 2);
    }

    #[test]
    fn missing_plugin_is_named() {
        let d = tempfile::tempdir().unwrap();
        std::fs::write(d.path().join("a.conf"), r#"{"name":"n","type":"bridge"}"#).unwrap();
        let e = default_network(&cfg(d.path(), d.path())).unwrap_err();
        assert!(e.contains("\"bridge\""), "{e}");
    }

    #[test]
    fn empty_dir_gets_the_embedded_default_and_traversal_is_refused() {
        let d = tempfile::tempdir().unwrap();
        // No plugins in the bin dir: the default is chosen, and not ready.
        let e = default_network(&cfg(d.path(), d.path())).unwrap_err();
        assert!(e.contains("vmpod's embedded default"), "{e}");
        assert!(e.contains("\"bridge\""), "{e}");
        for t in ["bridge", "host-local", "portmap"] {
            exe(&d.path().join(t));
        }
        let n = default_network(&cfg(&d.path().join("absent"), d.path())).unwrap();
        assert_eq!(n.source, Source::Embedded);
        assert_eq!(n.name, DEFAULT_NETWORK_NAME);
        assert_eq!(plugin_types(&n.conflist), ["bridge", "portmap"]);
        assert_eq!(
            n.conflist["plugins"][0]["ipam"]["ranges"][0][0]["subnet"],
            "10.87.0.0/16"
        );
        std::fs::write(
            d.path().join("a.conf"),
            r#"{"name":"n","type":"../../bin/sh"}"#,
        )
        .unwrap();
        let e = default_network(&cfg(d.path(), d.path())).unwrap_err();
        assert!(e.contains("invalid plugin type"), "{e}");
        assert!(e.contains("a.conf"), "{e}");
    }

    #[test]
    fn broken_files_are_named_and_a_later_valid_one_wins() {
        let d = tempfile::tempdir().unwrap();
        exe(&d.path().join("bridge"));
        std::fs::write(d.path().join("10-bad.conflist"), "{not json").unwrap();
        let e = default_network(&cfg(d.path(), d.path())).unwrap_err();
        assert!(e.contains("10-bad.conflist"), "{e}");
        assert!(!e.contains("embedded"), "{e}");
        std::fs::write(
            d.path().join("20-good.conf"),
            r#"{"cniVersion":"0.4.0","name":"n","type":"bridge","bridge":"b0"}"#,
        )
        .unwrap();
        let n = default_network(&cfg(d.path(), d.path())).unwrap();
        assert_eq!(n.source, Source::File(d.path().join("20-good.conf")));
        // The .conf is lifted into a conflist that keeps the plugin's keys.
        assert_eq!(n.conflist["plugins"][0]["bridge"], "b0");
        assert_eq!(n.conflist["cniVersion"], "0.4.0");
    }
}
