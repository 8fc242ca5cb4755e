//! Pod networking end to end: a real `vmpod serve`, Debian's CNI plugins
//! (bridge, host-local, portmap, loopback), QEMU/TCG VMs, and the loopback
//! registry. Traffic is real TCP between pods, the host and hostPorts.
//!
//! Plugins that fail, hang, answer garbage, or kill the daemon in the
//! middle of ADD are small shell scripts (`chaos`) chained after the real
//! bridge plugin: the real plugins make the netns, veth and lease, and the
//! script decides what happens next. That is the only thing mocked.
//!
//! Each test that checks for leftovers uses its own bridge and subnet, so
//! the other tests' pods on the shared default bridge cannot blur counts.

use std::io::{Read, Write};
use std::net::{Ipv4Addr, TcpListener, TcpStream};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use tonic::transport::Channel;
use vmpod_cri_api::v1::*;
use vmpod_cri_api::{ImageServiceClient, RuntimeServiceClient};
use vmpod_tests::daemon::{Daemon, pull, test_config};
use vmpod_tests::registry::{Registry, fixtures_dir};

type Rt = RuntimeServiceClient<Channel>;

/// Where host-local keeps its leases by default.
const LEASE_DIR: &str = "/var/lib/cni/networks";
const NC_PORT: u16 = 9000;

/// A daemon with the busybox fixture pulled and a CNI conf dir of the
/// test's own (empty: the embedded default).
struct Node {
    daemon: Daemon,
    rt: Rt,
    busybox: String,
    conf_dir: PathBuf,
    bin_dir: PathBuf,
    _registry: Registry,
}

impl Node {
    /// `cni` is extra `[cni]` keys; the conf dir and a bin dir for the
    /// test's scripts come first in the search.
    async fn start(cni: &str, conflist: Option<&str>) -> Node {
        let reg = Registry::start();
        reg.push_fixture(fixtures_dir(), "busybox", "busybox:latest");
        let dir = tempfile::Builder::new()
            .prefix("vmpod-net-")
            .tempdir()
            .expect("tempdir")
            .keep();
        let conf_dir = dir.join("net.d");
        let bin_dir = dir.join("bin");
        std::fs::create_dir_all(&conf_dir).expect("conf dir");
        std::fs::create_dir_all(&bin_dir).expect("bin dir");
        if let Some(text) = conflist {
            std::fs::write(conf_dir.join("10-test.conflist"), text).expect("conflist");
        }
        let cfg = format!(
            "[cni]\nconf-dir = {:?}\nbin-dirs = [{:?}, \"/usr/lib/cni\", \"/opt/cni/bin\"]\n{cni}\n\
             [registry.hosts.\"{}\"]\nplain-http = true\n",
            conf_dir,
            bin_dir,
            reg.addr()
        );
        let daemon = Daemon::start_with_config(&test_config(&cfg))
            .await
            .expect("vmpod serve starts");
        let mut images: ImageServiceClient<Channel> = daemon.images().await.expect("images");
        let busybox = format!("{}/busybox:latest", reg.addr());
        pull(&mut images, &busybox).await.expect("pull busybox");
        let rt = daemon.runtime().await.expect("runtime client");
        Node {
            daemon,
            rt,
            busybox,
            conf_dir,
            bin_dir,
            _registry: reg,
        }
    }

    fn pod_config(name: &str, ports: &[(u16, u16)]) -> PodSandboxConfig {
        PodSandboxConfig {
            metadata: Some(PodSandboxMetadata {
                name: name.into(),
                uid: format!("uid-{name}"),
                namespace: "vmpod-net".into(),
                attempt: 0,
            }),
            hostname: name.into(),
            port_mappings: ports
                .iter()
                .map(|&(host, container)| PortMapping {
                    protocol: Protocol::Tcp as i32,
                    container_port: i32::from(container),
                    host_port: i32::from(host),
                    host_ip: String::new(),
                })
                .collect(),
            ..Default::default()
        }
    }

    async fn try_run_pod(
        &mut self,
        name: &str,
        ports: &[(u16, u16)],
    ) -> Result<String, tonic::Status> {
        self.rt
            .run_pod_sandbox(RunPodSandboxRequest {
                config: Some(Self::pod_config(name, ports)),
                runtime_handler: String::new(),
            })
            .await
            .map(|r| r.into_inner().pod_sandbox_id)
    }

    async fn run_pod(&mut self, name: &str, ports: &[(u16, u16)]) -> String {
        match self.try_run_pod(name, ports).await {
            Ok(id) => id,
            Err(e) => panic!("RunPodSandbox {name}: {e}\n{}", self.daemon.log_text()),
        }
    }

    /// The pod's IPs: primary first.
    async fn ips(&mut self, sandbox: &str) -> Vec<String> {
        let status = self
            .rt
            .pod_sandbox_status(PodSandboxStatusRequest {
                pod_sandbox_id: sandbox.into(),
                verbose: false,
            })
            .await
            .expect("PodSandboxStatus")
            .into_inner()
            .status
            .expect("status");
        let net = status.network.unwrap_or_default();
        let mut ips = vec![net.ip];
        ips.extend(net.additional_ips.into_iter().map(|p| p.ip));
        ips.retain(|ip| !ip.is_empty());
        ips
    }

    /// Creates and starts a busybox container running `cmd`.
    async fn run(&mut self, sandbox: &str, name: &str, cmd: &[&str]) -> String {
        let config = ContainerConfig {
            metadata: Some(ContainerMetadata {
                name: name.into(),
                attempt: 0,
            }),
            image: Some(ImageSpec {
                image: self.busybox.clone(),
                ..Default::default()
            }),
            command: cmd.iter().map(|s| s.to_string()).collect(),
            linux: Some(LinuxContainerConfig::default()),
            ..Default::default()
        };
        let id = self
            .rt
            .create_container(CreateContainerRequest {
                pod_sandbox_id: sandbox.into(),
                config: Some(config),
                sandbox_config: None,
            })
            .await
            .unwrap_or_else(|e| panic!("CreateContainer: {e}\n{}", self.daemon.log_text()))
            .into_inner()
            .container_id;
        self.rt
            .start_container(StartContainerRequest {
                container_id: id.clone(),
            })
            .await
            .unwrap_or_else(|e| panic!("StartContainer: {e}\n{}", self.daemon.log_text()));
        id
    }

    /// Runs a shell script in a container; returns (exit code, output).
    async fn sh(&mut self, container: &str, script: &str) -> (i32, String) {
        let r = self
            .rt
            .exec_sync(ExecSyncRequest {
                container_id: container.into(),
                cmd: vec!["sh".into(), "-c".into(), script.into()],
                timeout: 30,
            })
            .await
            .unwrap_or_else(|e| panic!("exec {script:?}: {e}"))
            .into_inner();
        let mut out = String::from_utf8_lossy(&r.stdout).into_owned();
        out.push_str(&String::from_utf8_lossy(&r.stderr));
        (r.exit_code, out)
    }

    /// Retries `script` until it prints `want`: a server container may not
    /// be listening the moment StartContainer returns.
    async fn sh_until(&mut self, container: &str, script: &str, want: &str) -> String {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let (code, out) = self.sh(container, script).await;
            if code == 0 && out.contains(want) {
                return out;
            }
            assert!(
                Instant::now() < deadline,
                "{script:?} never printed {want:?}; last: exit {code}: {out}"
            );
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
    }

    async fn stop_and_remove(&mut self, sandbox: &str) {
        self.rt
            .stop_pod_sandbox(StopPodSandboxRequest {
                pod_sandbox_id: sandbox.into(),
            })
            .await
            .expect("StopPodSandbox");
        self.rt
            .remove_pod_sandbox(RemovePodSandboxRequest {
                pod_sandbox_id: sandbox.into(),
            })
            .await
            .expect("RemovePodSandbox");
    }

    async fn sandboxes(&mut self) -> Vec<PodSandbox> {
        self.rt
            .list_pod_sandbox(ListPodSandboxRequest { filter: None })
            .await
            .expect("ListPodSandbox")
            .into_inner()
            .items
    }

    async fn network_condition(&mut self) -> RuntimeCondition {
        self.rt
            .status(StatusRequest { verbose: false })
            .await
            .expect("Status")
            .into_inner()
            .status
            .expect("status")
            .conditions
            .into_iter()
            .find(|c| c.r#type == "NetworkReady")
            .expect("a NetworkReady condition")
    }

    /// Installs an executable script in the test's plugin dir.
    fn plugin(&self, name: &str, script: &str) {
        let path = self.bin_dir.join(name);
        std::fs::write(&path, script).expect("plugin script");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    }
}

/// A conflist of the test's own: a bridge and subnet no other test uses,
/// host-local, portmap, and `extra` plugins chained after them.
fn conflist(name: &str, bridge: &str, subnet: &str, extra: &str) -> String {
    format!(
        r#"{{"cniVersion":"1.0.0","name":"{name}","plugins":[
            {{"type":"bridge","bridge":"{bridge}","isGateway":true,"ipMasq":true,"hairpinMode":true,
              "ipam":{{"type":"host-local","ranges":[[{{"subnet":"{subnet}"}}]],"routes":[{{"dst":"0.0.0.0/0"}}]}}}},
            {{"type":"portmap","capabilities":{{"portMappings":true}},"snat":true}}{extra}]}}"#
    )
}

/// A port nothing listens on now.
fn free_port() -> u16 {
    TcpListener::bind((Ipv4Addr::UNSPECIFIED, 0))
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

/// The host's own first global IPv4 address (not loopback, not a pod
/// bridge): what a client elsewhere would use for a hostPort.
fn host_address() -> String {
    let out = std::process::Command::new("ip")
        .args(["-o", "-4", "addr", "show", "scope", "global"])
        .output()
        .expect("ip addr");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| !l.contains("vmpod"))
        .find_map(|l| {
            let cidr = l.split_whitespace().skip_while(|w| *w != "inet").nth(1)?;
            Some(cidr.split('/').next()?.to_string())
        })
        .expect("the host has a global IPv4 address")
}

/// Reads what a server sends on connect, retrying until it answers.
fn read_from(addr: &str, port: u16) -> String {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let attempt = TcpStream::connect_timeout(
            &format!("{addr}:{port}").parse().expect("socket address"),
            Duration::from_secs(2),
        )
        .and_then(|mut s| {
            s.set_read_timeout(Some(Duration::from_secs(5)))?;
            let mut out = String::new();
            s.read_to_string(&mut out)?;
            Ok(out)
        });
        match attempt {
            Ok(out) if !out.is_empty() => return out,
            other => assert!(
                Instant::now() < deadline,
                "nothing from {addr}:{port}: {other:?}"
            ),
        }
        std::thread::sleep(Duration::from_millis(300));
    }
}

fn bridge_ip(bridge: &str) -> String {
    let out = std::process::Command::new("ip")
        .args(["-o", "-4", "addr", "show", "dev", bridge])
        .output()
        .expect("ip addr");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    text.split_whitespace()
        .skip_while(|w| *w != "inet")
        .nth(1)
        .and_then(|c| c.split('/').next())
        .map(str::to_string)
        .unwrap_or_else(|| panic!("bridge {bridge} has no IPv4 address: {text}"))
}

/// The whole acceptance walk on one network: two pods with distinct IPs in
/// `subnet_prefix`, pod→pod TCP, host→pod, pod→host bridge, hostPort from
/// the host's own address, and two containers of a pod over 127.0.0.1.
async fn pods_talk(node: &mut Node, bridge: &str, subnet_prefix: &str) {
    let host_port = free_port();
    let a = node.run_pod("net-a", &[(host_port, NC_PORT)]).await;
    let b = node.run_pod("net-b", &[]).await;
    let (a_ips, b_ips) = (node.ips(&a).await, node.ips(&b).await);
    assert_eq!(a_ips.len(), 1, "{a_ips:?}");
    assert!(a_ips[0].starts_with(subnet_prefix), "{a_ips:?}");
    assert!(b_ips[0].starts_with(subnet_prefix), "{b_ips:?}");
    assert_ne!(a_ips[0], b_ips[0], "two pods got the same IP");
    let a_ip = a_ips[0].clone();

    // A persistent busybox nc server in pod A.
    let server = node
        .run(
            &a,
            "server",
            &[
                "busybox",
                "nc",
                "-ll",
                "-p",
                "9000",
                "-e",
                "echo",
                "hello-from-a",
            ],
        )
        .await;
    let client = node.run(&b, "client", &["sleep", "3600"]).await;

    // The guest's eth0 carries the pod IP and the CNI interface's MAC.
    let (_, addr) = node.sh(&client, "busybox ip -o addr show dev eth0").await;
    assert!(addr.contains(&b_ips[0]), "{addr}");

    // Pod → pod.
    node.sh_until(
        &client,
        &format!("busybox nc {a_ip} {NC_PORT}"),
        "hello-from-a",
    )
    .await;
    // Host → pod.
    assert!(read_from(&a_ip, NC_PORT).contains("hello-from-a"));
    // Pod → the host's bridge address.
    let gateway = bridge_ip(bridge);
    let listener = TcpListener::bind((gateway.as_str(), 0)).expect("listen on the bridge");
    let port = listener.local_addr().expect("addr").port();
    let serve = std::thread::spawn(move || {
        if let Ok((mut s, _)) = listener.accept() {
            let _ = s.write_all(b"hello-from-host\n");
        }
    });
    node.sh_until(
        &client,
        &format!("busybox nc {gateway} {port}"),
        "hello-from-host",
    )
    .await;
    serve.join().expect("host server");
    // hostPort, from the host's own address.
    let host = host_address();
    assert!(
        read_from(&host, host_port).contains("hello-from-a"),
        "hostPort {host}:{host_port}"
    );
    // Two containers of pod A over loopback.
    let sidecar = node.run(&a, "sidecar", &["sleep", "3600"]).await;
    node.sh_until(
        &sidecar,
        &format!("busybox nc 127.0.0.1 {NC_PORT}"),
        "hello-from-a",
    )
    .await;
    let _ = server;

    for p in [&a, &b] {
        node.stop_and_remove(p).await;
    }
}

#[tokio::test]
async fn embedded_default_network_connects_pods_the_host_and_host_ports() {
    let mut node = Node::start("", None).await;
    let cond = node.network_condition().await;
    assert!(cond.status, "{cond:?}");
    assert_eq!(cond.reason, "EmbeddedDefaultNetwork", "{cond:?}");
    assert!(cond.message.contains("vmpod0"), "{cond:?}");
    pods_talk(&mut node, "vmpod0", "10.87.").await;
}

#[tokio::test]
async fn a_conflist_in_the_conf_dir_wins() {
    let list = conflist("vmpod-user", "vmpodu0", "10.86.10.0/24", "");
    let mut node = Node::start("", Some(&list)).await;
    let cond = node.network_condition().await;
    assert!(cond.status, "{cond:?}");
    assert_eq!(cond.reason, "CNIConfigured", "{cond:?}");
    assert!(cond.message.contains("10-test.conflist"), "{cond:?}");
    pods_talk(&mut node, "vmpodu0", "10.86.10.").await;
}

/// What a pod can leave on the host: its netns, veths on the bridge, a
/// lease, iptables rules naming it.
fn leftovers(ids: &[String], network: &str, bridge: &str) -> Vec<String> {
    let mut found = Vec::new();
    for id in ids {
        let ns = Path::new("/run/netns").join(format!("vmpod-{}", &id[..16]));
        if ns.exists() {
            found.push(format!("netns {}", ns.display()));
        }
    }
    let veths = std::process::Command::new("ip")
        .args(["-o", "link", "show", "master", bridge])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default();
    for line in veths.lines() {
        found.push(format!("veth on {bridge}: {line}"));
    }
    let leases = Path::new(LEASE_DIR).join(network);
    if let Ok(entries) = std::fs::read_dir(&leases) {
        for e in entries.flatten() {
            let text = std::fs::read_to_string(e.path()).unwrap_or_default();
            if ids.iter().any(|id| text.contains(id.as_str())) {
                found.push(format!("lease {}: {text:?}", e.path().display()));
            }
        }
    }
    let rules = std::process::Command::new("iptables-save")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default();
    for line in rules.lines() {
        if ids.iter().any(|id| line.contains(id.as_str())) {
            found.push(format!("iptables: {line}"));
        }
    }
    found
}

#[tokio::test]
async fn ten_pods_leave_no_netns_veth_lease_or_rule() {
    let list = conflist("vmpod-leaks", "vmpodl0", "10.86.20.0/24", "");
    let mut node = Node::start("", Some(&list)).await;
    let mut ids = Vec::new();
    for i in 0..10 {
        let port = free_port();
        ids.push(node.run_pod(&format!("leak-{i}"), &[(port, 80)]).await);
    }
    let during = leftovers(&ids, "vmpod-leaks", "vmpodl0");
    assert!(
        during.iter().filter(|l| l.starts_with("netns")).count() == 10
            && during.iter().filter(|l| l.starts_with("lease")).count() == 10
            && during.iter().filter(|l| l.starts_with("veth")).count() == 10
            && during.iter().any(|l| l.starts_with("iptables")),
        "the check must see what running pods hold: {during:#?}"
    );
    for id in &ids {
        node.stop_and_remove(id).await;
    }
    let after = leftovers(&ids, "vmpod-leaks", "vmpodl0");
    assert!(after.is_empty(), "left behind: {after:#?}");
}

#[tokio::test]
async fn stop_after_a_daemon_kill_releases_the_lease() {
    let list = conflist("vmpod-restart", "vmpodr0", "10.86.30.0/24", "");
    let mut node = Node::start("", Some(&list)).await;
    let id = node.run_pod("restart", &[(free_port(), 80)]).await;
    assert_eq!(
        leftovers(std::slice::from_ref(&id), "vmpod-restart", "vmpodr0")
            .iter()
            .filter(|l| l.starts_with("lease"))
            .count(),
        1
    );
    node.daemon.restart().await.expect("restart after kill -9");
    node.rt = node.daemon.runtime().await.expect("runtime client");
    assert_eq!(node.ips(&id).await.len(), 1, "the pod keeps its IP");
    node.stop_and_remove(&id).await;
    let after = leftovers(&[id], "vmpod-restart", "vmpodr0");
    assert!(after.is_empty(), "left behind: {after:#?}");
}

/// The 64-hex ids on log lines containing `needle`.
fn ids_in(log: &str, needle: &str) -> Vec<String> {
    log.lines()
        .filter(|l| l.contains(needle))
        .flat_map(|l| {
            l.split(|c: char| !c.is_ascii_hexdigit())
                .filter(|w| w.len() == 64)
                .map(str::to_string)
                .collect::<Vec<_>>()
        })
        .collect()
}

/// A chained plugin that passes the previous result through on ADD, and
/// otherwise does what `add_action` says.
fn chaos_plugin(add_action: &str) -> String {
    format!(
        "#!/bin/sh\n\
         input=$(cat)\n\
         case \"$CNI_COMMAND\" in\n\
         VERSION) echo '{{\"cniVersion\":\"1.0.0\",\"supportedVersions\":[\"0.4.0\",\"1.0.0\"]}}' ;;\n\
         ADD) {add_action}\n\
              printf '%s' \"$input\" | jq -c .prevResult ;;\n\
         *) ;;\n\
         esac\n"
    )
}

#[tokio::test]
async fn failing_hanging_and_garbage_plugins_fail_the_pod_and_leave_nothing() {
    let chained = r#",{"type":"chaos"}"#;
    let list = conflist("vmpod-chaos", "vmpodc0", "10.86.40.0/24", chained);
    let mut node = Node::start("timeout-secs = 2", Some(&list)).await;
    let cases = [
        (
            "fails",
            r#"echo '{"cniVersion":"1.0.0","code":11,"msg":"chaos says no"}'; exit 1"#,
            "chaos says no",
        ),
        ("hangs", "sleep 30", "did not finish within"),
        (
            "garbage",
            "echo 'this is not json'; exit 0",
            "unreadable output",
        ),
    ];
    let mut ids_seen = Vec::new();
    for (name, action, want) in cases {
        node.plugin("chaos", &chaos_plugin(action));
        let t0 = Instant::now();
        let err = node
            .try_run_pod(name, &[(free_port(), 80)])
            .await
            .expect_err("the pod must fail");
        assert!(err.message().contains(want), "{name}: {err:?}");
        assert!(
            t0.elapsed() < Duration::from_secs(20),
            "{name}: took {:?}",
            t0.elapsed()
        );
        // The daemon logged the sandbox it tore down; nothing of it may
        // remain, and the daemon still serves.
        ids_seen.extend(ids_in(&node.daemon.log_text(), "sandbox boot failed"));
        node.network_condition().await;
    }
    ids_seen.sort();
    ids_seen.dedup();
    assert_eq!(ids_seen.len(), 3, "three failed boots logged: {ids_seen:?}");
    let after = leftovers(&ids_seen, "vmpod-chaos", "vmpodc0");
    assert!(after.is_empty(), "left behind: {after:#?}");
    let sandboxes = node.sandboxes().await;
    assert!(sandboxes.is_empty(), "{sandboxes:?}");
}

#[tokio::test]
async fn ip_exhaustion_is_reported_verbatim() {
    // One address in the range, already leased to someone else.
    let data = tempfile::tempdir().expect("tempdir");
    let list = format!(
        r#"{{"cniVersion":"1.0.0","name":"vmpod-full","plugins":[
            {{"type":"bridge","bridge":"vmpodf0","ipam":{{"type":"host-local","dataDir":{:?},
              "ranges":[[{{"subnet":"10.86.50.0/24","rangeStart":"10.86.50.9","rangeEnd":"10.86.50.9"}}]]}}}}]}}"#,
        data.path()
    );
    std::fs::create_dir_all(data.path().join("vmpod-full")).expect("lease dir");
    std::fs::write(
        data.path().join("vmpod-full/10.86.50.9"),
        "someone-else\r\neth0",
    )
    .expect("lease");
    let mut node = Node::start("", Some(&list)).await;
    let err = node
        .try_run_pod("full", &[])
        .await
        .expect_err("no address is free");
    assert!(
        err.message().contains("no IP addresses available"),
        "{err:?}"
    );
    assert!(node.network_condition().await.status);
}

#[tokio::test]
async fn a_malformed_conflist_is_named_and_refuses_pods() {
    let mut node = Node::start("", Some("{ \"name\": \"broken\", ")).await;
    let cond = node.network_condition().await;
    assert!(!cond.status, "{cond:?}");
    assert!(cond.message.contains("10-test.conflist"), "{cond:?}");
    let err = node
        .try_run_pod("refused", &[])
        .await
        .expect_err("RunPodSandbox must fail");
    assert_eq!(err.code(), tonic::Code::FailedPrecondition, "{err:?}");
    assert!(err.message().contains("10-test.conflist"), "{err:?}");
    // Fixing the file needs no restart.
    std::fs::write(
        node.conf_dir.join("10-test.conflist"),
        conflist("vmpod-fixed", "vmpodm0", "10.86.60.0/24", ""),
    )
    .expect("fix");
    assert!(node.network_condition().await.status);
}

#[tokio::test]
async fn a_daemon_killed_during_cni_add_leaves_nothing_after_restart() {
    let chained = r#",{"type":"chaos"}"#;
    let list = conflist("vmpod-crash", "vmpodk0", "10.86.70.0/24", chained);
    let mut node = Node::start("", Some(&list)).await;
    let marker = node.bin_dir.join("killed");
    // The first ADD kills the daemon (its parent) after bridge and
    // host-local made the veth and the lease; later calls pass through.
    node.plugin(
        "chaos",
        &chaos_plugin(&format!(
            "if [ ! -e {m:?} ]; then touch {m:?}; kill -9 $PPID; sleep 5; fi",
            m = marker
        )),
    );
    let err = node.try_run_pod("crash", &[(free_port(), 80)]).await;
    assert!(err.is_err(), "the daemon died mid-call: {err:?}");
    assert!(marker.exists(), "the plugin ran");
    // The lease file names the sandbox that held it.
    let leases = Path::new(LEASE_DIR).join("vmpod-crash");
    let held: Vec<String> = std::fs::read_dir(&leases)
        .map(|d| {
            d.flatten()
                .filter_map(|e| std::fs::read_to_string(e.path()).ok())
                .filter_map(|t| t.lines().next().map(str::to_string))
                .filter(|t| t.len() == 64)
                .collect()
        })
        .unwrap_or_default();
    assert_eq!(
        held.len(),
        1,
        "ADD leased one address before the kill: {held:?}"
    );
    let before = leftovers(&held, "vmpod-crash", "vmpodk0");
    assert!(
        before.iter().any(|l| l.starts_with("netns")),
        "the netns exists before the restart: {before:#?}"
    );
    node.daemon.restart().await.expect("restart");
    node.rt = node.daemon.runtime().await.expect("runtime client");
    // The socket is bound before recovery runs; an answer means it is done.
    let sandboxes = node.sandboxes().await;
    assert!(sandboxes.is_empty(), "{sandboxes:?}");
    let after = leftovers(&held, "vmpod-crash", "vmpodk0");
    assert!(
        after.is_empty(),
        "left behind: {after:?}\n{}",
        node.daemon.log_text()
    );
}
