//! A named network namespace with a TAP in it, as the daemon leaves one for
//! a pod: `ip netns add`, then a persistent `vnet_hdr` TAP inside. Removed
//! (TAP and all) when dropped. Needs root.

use std::path::PathBuf;
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};

pub struct Netns {
    pub name: String,
}

/// Whether this process may make namespaces and TAPs; the reason if not.
pub fn why_not() -> Option<String> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return Some("needs root (ip netns add, ip tuntap add)".into());
    }
    if !std::path::Path::new("/dev/net/tun").exists() {
        return Some("/dev/net/tun is missing".into());
    }
    None
}

impl Netns {
    /// A fresh namespace named after this process and a counter, so
    /// parallel tests and concurrent runs never share one.
    pub fn new() -> Netns {
        static N: AtomicU32 = AtomicU32::new(0);
        let name = format!(
            "vmpod-t{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        );
        run(&["netns", "add", &name]);
        Netns { name }
    }

    pub fn path(&self) -> PathBuf {
        PathBuf::from("/run/netns").join(&self.name)
    }

    /// `ip -n NS ARGS`, which must succeed.
    pub fn ip(&self, args: &[&str]) -> String {
        let mut all = vec!["-n", self.name.as_str()];
        all.extend_from_slice(args);
        run(&all)
    }

    /// `ip -n NS ARGS`, success or not.
    pub fn try_ip(&self, args: &[&str]) -> std::process::Output {
        Command::new("ip")
            .arg("-n")
            .arg(&self.name)
            .args(args)
            .output()
            .expect("running ip")
    }

    /// A persistent TAP as the daemon makes it (IFF_TAP | IFF_NO_PI |
    /// IFF_VNET_HDR).
    pub fn add_tap(&self, name: &str) {
        self.ip(&["tuntap", "add", "dev", name, "mode", "tap", "vnet_hdr"]);
    }

    /// The kernel's counters of `dev` in this namespace, `rx`/`tx` then
    /// `packets`/`bytes`.
    pub fn stat(&self, dev: &str, dir: &str, what: &str) -> u64 {
        let text = self.ip(&["-s", "-j", "link", "show", "dev", dev]);
        let v: serde_json::Value = serde_json::from_str(&text).expect("ip -j output");
        v[0]["stats64"][dir][what]
            .as_u64()
            .unwrap_or_else(|| panic!("no stats64.{dir}.{what} in {text}"))
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        // Deleting the namespace deletes the TAPs in it.
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .status();
    }
}

fn run(args: &[&str]) -> String {
    let out = Command::new("ip")
        .args(args)
        .output()
        .expect("running ip (iproute2)");
    assert!(
        out.status.success(),
        "ip {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}
