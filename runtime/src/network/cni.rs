//! CNI network configuration discovery.
//!
//! Follows the CNI spec's rules for picking the network: the lexically first
//! `*.conflist`, `*.conf` or `*.json` file in the conf dir that parses. The
//! pod is only network-ready when every plugin the chosen config names exists
//! in a plugin dir, because kubelet would otherwise schedule pods onto a node
//! whose first sandbox then fails.

use std::path::{Path, PathBuf};

use crate::config::CniConfig;

/// The network that pods would be attached to.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Network {
    pub name: String,
    /// The conflist's `cniVersion`: every plugin must list it in VERSION,
    /// and it is the version injected into each plugin's config. `None`
    /// for old configs that omit it (the spec requires it since 0.4.0).
    pub cni_version: Option<String>,
    pub file: PathBuf,
    /// Plugin types in call order, each with where it was found.
    pub plugins: Vec<(String, PathBuf)>,
}

/// Finds the default network and checks that its plugins are installed.
/// The error is a one-line reason suitable for the CRI `NetworkReady`
/// condition.
pub fn default_network(cfg: &CniConfig) -> Result<Network, String> {
    let dir = cfg.conf_dir.as_path();
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(|e| format!("cannot read CNI config dir {}: {e}", dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            matches!(
                p.extension().and_then(|e| e.to_str()),
                Some("conflist" | "conf" | "json")
            )
        })
        .collect();
    files.sort();
    let mut problems = Vec::new();
    for file in files {
        match parse_network(&file) {
            Ok((name, cni_version, types)) => {
                let mut plugins = Vec::new();
                for t in types {
                    let found = find_plugin(
                        &t,
                        &cfg.bin_dirs.iter().map(|d| d.as_path()).collect::<Vec<_>>(),
                    )
                    .ok_or_else(|| {
                        format!(
                            "CNI network {name:?} ({}) needs plugin {t:?}, not found in {}",
                            file.display(),
                            cfg.bin_dirs
                                .iter()
                                .map(|d| d.to_string())
                                .collect::<Vec<_>>()
                                .join(", ")
                        )
                    })?;
                    plugins.push((t, found));
                }
                return Ok(Network {
                    name,
                    cni_version,
                    file,
                    plugins,
                });
            }
            Err(e) => problems.push(e),
        }
    }
    if problems.is_empty() {
        Err(format!("no CNI network config in {}", dir.display()))
    } else {
        Err(format!(
            "no usable CNI network config: {}",
            problems.join("; ")
        ))
    }
}

/// Returns the network name, its `cniVersion` and its plugin types.
fn parse_network(file: &Path) -> Result<(String, Option<String>, Vec<String>), String> {
    let text = std::fs::read_to_string(file).map_err(|e| format!("{}: {e}", file.display()))?;
    let v: serde_json::Value =
        serde_json::from_str(&text).map_err(|e| format!("{}: {e}", file.display()))?;
    let name = v
        .get("name")
        .and_then(|n| n.as_str())
        .ok_or_else(|| format!("{}: missing \"name\"", file.display()))?
        .to_string();
    let cni_version = match v.get("cniVersion") {
        None => None,
        Some(serde_json::Value::String(s)) => Some(s.clone()),
        Some(_) => {
            return Err(format!(
                "{}: \"cniVersion\" is not a string",
                file.display()
            ));
        }
    };
    let plugin_type = |p: &serde_json::Value| {
        p.get("type")
            .and_then(|t| t.as_str())
            .map(str::to_string)
            .ok_or_else(|| format!("{}: a plugin has no \"type\"", file.display()))
    };
    let types = match v.get("plugins") {
        Some(serde_json::Value::Array(list)) if !list.is_empty() => {
            list.iter()
                .map(plugin_type)
                .collect::<Result<Vec<_>, _>>()?
        }
        Some(_) => {
            return Err(format!(
                "{}: \"plugins\" must be a non-empty list",
                file.display()
            ));
        }
        None => vec![plugin_type(&v)?],
    };
    for t in &types {
        // A type is a file name in the plugin dir; anything else would let a
        // config execute arbitrary paths.
        if t.is_empty() || t.contains('/') || t == "." || t == ".." {
            return Err(format!("{}: invalid plugin type {t:?}", file.display()));
        }
    }
    Ok((name, cni_version, types))
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
    fn empty_dir_and_traversal() {
        let d = tempfile::tempdir().unwrap();
        let e = default_network(&cfg(d.path(), d.path())).unwrap_err();
        assert!(e.contains("no CNI network config"), "{e}");
        std::fs::write(
            d.path().join("a.conf"),
            r#"{"name":"n","type":"../../bin/sh"}"#,
        )
        .unwrap();
        let e = default_network(&cfg(d.path(), d.path())).unwrap_err();
        assert!(e.contains("invalid plugin type"), "{e}");
    }
}
