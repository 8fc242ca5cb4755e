//! Pod sandboxes end to end: a real `vmpod serve`, real shims, real VMs
//! (QEMU/TCG on hosts without hardware virtualization), driven through the
//! CRI gRPC API like kubelet does.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use tonic::Code;
use tonic::transport::Channel;
use vmpod_cri_api::RuntimeServiceClient;
use vmpod_cri_api::v1::*;
use vmpod_shim_api::ShimClient;
use vmpod_tests::daemon::{Daemon, connect_unix, test_config};
use vmpod_tests::host::{cgroups_named, mounts_under, processes_mentioning};

type Rt = RuntimeServiceClient<Channel>;

fn pod_config(name: &str, labels: &[(&str, &str)]) -> PodSandboxConfig {
    PodSandboxConfig {
        metadata: Some(PodSandboxMetadata {
            name: name.into(),
            uid: format!("uid-{name}"),
            namespace: "vmpod-test".into(),
            attempt: 0,
        }),
        hostname: format!("{name}-host"),
        log_directory: format!("/var/log/pods/vmpod-test_{name}"),
        dns_config: Some(DnsConfig {
            servers: vec!["10.96.0.10".into()],
            searches: vec!["vmpod-test.svc.cluster.local".into()],
            options: vec!["ndots:5".into()],
        }),
        labels: labels
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
        linux: Some(LinuxPodSandboxConfig {
            cgroup_parent: format!("/vmpod-test/pod-{name}"),
            ..Default::default()
        }),
        ..Default::default()
    }
}

async fn run(rt: &mut Rt, config: PodSandboxConfig) -> Result<String, tonic::Status> {
    rt.run_pod_sandbox(RunPodSandboxRequest {
        config: Some(config),
        runtime_handler: String::new(),
    })
    .await
    .map(|r| r.into_inner().pod_sandbox_id)
}

async fn status(rt: &mut Rt, id: &str) -> PodSandboxStatusResponse {
    rt.pod_sandbox_status(PodSandboxStatusRequest {
        pod_sandbox_id: id.into(),
        verbose: true,
    })
    .await
    .unwrap()
    .into_inner()
}

fn state_of(s: &PodSandboxStatusResponse) -> PodSandboxState {
    s.status.as_ref().unwrap().state()
}

fn info(s: &PodSandboxStatusResponse) -> serde_json::Value {
    serde_json::from_str(&s.info["info"]).unwrap()
}

/// Polls until the sandbox is NOTREADY, failing past `limit`; returns the
/// reason the daemon recorded.
async fn not_ready_within(rt: &mut Rt, id: &str, limit: Duration) -> String {
    let t0 = Instant::now();
    loop {
        let s = status(rt, id).await;
        if state_of(&s) == PodSandboxState::SandboxNotready {
            let reason = info(&s)["reason"].as_str().unwrap_or_default().to_string();
            eprintln!("NOTREADY after {:?}: {reason}", t0.elapsed());
            return reason;
        }
        assert!(
            t0.elapsed() < limit,
            "still READY {limit:?} after the failure"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn pod_dir(d: &Daemon, id: &str) -> PathBuf {
    // The daemon names pod dirs by the first 16 hex digits of the id.
    d.state_dir.join("pods").join(&id[..16])
}

async fn shim_client(d: &Daemon, id: &str) -> ShimClient<Channel> {
    ShimClient::new(
        connect_unix(&pod_dir(d, id).join("shim.sock"))
            .await
            .unwrap(),
    )
}

/// Asserts nothing of sandbox `id` remains on the host.
fn assert_no_traces(d: &Daemon, id: &str) {
    let dir = pod_dir(d, id);
    assert!(!dir.exists(), "pod dir {} left behind", dir.display());
    let procs = processes_mentioning(&dir.display().to_string());
    assert!(procs.is_empty(), "processes left behind: {procs:?}");
    assert!(mounts_under(&dir).is_empty(), "mounts left behind");
    let cg = cgroups_named(&format!("vmpod-{}", &id[..16]));
    assert!(cg.is_empty(), "cgroups left behind: {cg:?}");
}

fn assert_vm_gone(d: &Daemon, id: &str) {
    let dir = pod_dir(d, id);
    let procs = processes_mentioning(&dir.display().to_string());
    assert!(procs.is_empty(), "VM or helper processes remain: {procs:?}");
}

#[tokio::test]
async fn run_status_guest_info_stop_remove() {
    let d = Daemon::start().await.unwrap();
    let mut rt = d.runtime().await.unwrap();
    let t0 = Instant::now();
    let id = run(&mut rt, pod_config("web", &[("app", "web")]))
        .await
        .unwrap();
    eprintln!("RunPodSandbox took {:?}", t0.elapsed());

    let s = status(&mut rt, &id).await;
    assert_eq!(state_of(&s), PodSandboxState::SandboxReady);
    let md = s.status.as_ref().unwrap().metadata.as_ref().unwrap();
    assert_eq!(md.name, "web");
    let i = info(&s);
    assert!(i["backend"].as_str().unwrap().starts_with("qemu"), "{i}");
    assert_eq!(i["vcpus"], 1);
    assert_eq!(i["memoryMiB"], 256);
    assert!(i["vmPid"].as_u64().unwrap() > 0, "{i}");
    for phase in ["vmmSpawned", "kernelEntry", "agentReady"] {
        assert!(
            i["bootPhasesMs"][phase].as_f64().is_some(),
            "{phase} missing: {i}"
        );
    }
    eprintln!("boot phases: {}", i["bootPhasesMs"]);

    // The guest, through the shim: our kernel, the hostname, DNS.
    let g = shim_client(&d, &id)
        .await
        .guest_info(vmpod_agent_proto::v1::GuestInfoRequest {})
        .await
        .unwrap()
        .into_inner();
    let built = std::fs::read_to_string(
        vmpod_tests::daemon::repo_root().join("images/out/vmlinux.version"),
    )
    .unwrap_or_default();
    assert!(g.kernel_release.contains("vmpod"), "{}", g.kernel_release);
    if !built.trim().is_empty() {
        assert_eq!(g.kernel_release, built.trim());
    }
    assert_eq!(g.hostname, "web-host");
    assert!(
        g.resolv_conf.contains("nameserver 10.96.0.10"),
        "{}",
        g.resolv_conf
    );
    assert!(
        g.resolv_conf
            .contains("search vmpod-test.svc.cluster.local"),
        "{}",
        g.resolv_conf
    );
    assert!(
        g.resolv_conf.contains("options ndots:5"),
        "{}",
        g.resolv_conf
    );
    assert!(g.hosts.contains("web-host"), "{}", g.hosts);
    assert!(
        !g.virtiofs_mounts.is_empty(),
        "pod share not mounted in the guest"
    );

    // Host-side processes live in the pod's cgroup.
    let cgroups = i["cgroups"].as_array().unwrap();
    if let Some(cg) = cgroups.first() {
        let procs =
            std::fs::read_to_string(Path::new(cg.as_str().unwrap()).join("cgroup.procs")).unwrap();
        let vm_pid = i["vmPid"].as_u64().unwrap().to_string();
        assert!(
            procs.lines().any(|l| l == vm_pid),
            "VM pid {vm_pid} not in {cg}: {procs}"
        );
    }

    // A mount made under the share now (as container root filesystems will
    // be) reaches virtiofsd's own mount namespace, hence the guest. The
    // share is a read-only view of the host-only skeleton: mount points are
    // made there.
    std::fs::create_dir(pod_dir(&d, &id).join("skeleton/probe")).unwrap();
    let probe = pod_dir(&d, &id).join("share/probe");
    nix::mount::mount(
        Some("tmpfs"),
        &probe,
        Some("tmpfs"),
        nix::mount::MsFlags::empty(),
        None::<&str>,
    )
    .expect("mount tmpfs (root)");
    let virtiofsd: Vec<u32> = processes_mentioning(&pod_dir(&d, &id).display().to_string())
        .into_iter()
        .filter(|(_, cmd)| cmd.contains("virtiofsd"))
        .map(|(pid, _)| pid)
        .collect();
    assert!(!virtiofsd.is_empty());
    let seen = virtiofsd.iter().any(|pid| {
        std::fs::read_to_string(format!("/proc/{pid}/mountinfo"))
            .is_ok_and(|m| m.contains("/probe "))
    });
    assert!(
        seen,
        "a mount under the share did not propagate into virtiofsd"
    );

    // Stop: NOTREADY, no VM or helper left; idempotent.
    rt.stop_pod_sandbox(StopPodSandboxRequest {
        pod_sandbox_id: id.clone(),
    })
    .await
    .unwrap();
    assert_eq!(
        state_of(&status(&mut rt, &id).await),
        PodSandboxState::SandboxNotready
    );
    assert_vm_gone(&d, &id);
    rt.stop_pod_sandbox(StopPodSandboxRequest {
        pod_sandbox_id: id.clone(),
    })
    .await
    .unwrap();

    // Remove: gone, with every trace.
    rt.remove_pod_sandbox(RemovePodSandboxRequest {
        pod_sandbox_id: id.clone(),
    })
    .await
    .unwrap();
    let e = rt
        .pod_sandbox_status(PodSandboxStatusRequest {
            pod_sandbox_id: id.clone(),
            verbose: false,
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::NotFound);
    assert_no_traces(&d, &id);

    // Unknown ids are not errors for stop and remove.
    rt.stop_pod_sandbox(StopPodSandboxRequest {
        pod_sandbox_id: id.clone(),
    })
    .await
    .unwrap();
    rt.remove_pod_sandbox(RemovePodSandboxRequest {
        pod_sandbox_id: "f00".repeat(20),
    })
    .await
    .unwrap();
}

#[tokio::test]
async fn list_filters_and_duplicate_names() {
    let d = Daemon::start().await.unwrap();
    let mut rt = d.runtime().await.unwrap();
    let a = run(&mut rt, pod_config("a", &[("app", "x"), ("tier", "front")]))
        .await
        .unwrap();
    let b = run(&mut rt, pod_config("b", &[("app", "x"), ("tier", "back")]))
        .await
        .unwrap();

    let e = run(&mut rt, pod_config("a", &[])).await.unwrap_err();
    assert_eq!(e.code(), Code::AlreadyExists, "{e:?}");
    assert!(e.message().contains(&a), "{}", e.message());

    rt.stop_pod_sandbox(StopPodSandboxRequest {
        pod_sandbox_id: b.clone(),
    })
    .await
    .unwrap();

    let list = |filter: PodSandboxFilter| {
        let mut rt = rt.clone();
        async move {
            let mut ids: Vec<String> = rt
                .list_pod_sandbox(ListPodSandboxRequest {
                    filter: Some(filter),
                })
                .await
                .unwrap()
                .into_inner()
                .items
                .into_iter()
                .map(|p| p.id)
                .collect();
            ids.sort();
            ids
        }
    };
    let mut both = vec![a.clone(), b.clone()];
    both.sort();
    assert_eq!(list(PodSandboxFilter::default()).await, both);
    assert_eq!(
        list(PodSandboxFilter {
            id: a.clone(),
            ..Default::default()
        })
        .await,
        vec![a.clone()]
    );
    assert_eq!(
        list(PodSandboxFilter {
            id: b[..12].to_string(),
            ..Default::default()
        })
        .await,
        vec![b.clone()]
    );
    let ready = PodSandboxStateValue {
        state: PodSandboxState::SandboxReady.into(),
    };
    let notready = PodSandboxStateValue {
        state: PodSandboxState::SandboxNotready.into(),
    };
    assert_eq!(
        list(PodSandboxFilter {
            state: Some(ready),
            ..Default::default()
        })
        .await,
        vec![a.clone()]
    );
    assert_eq!(
        list(PodSandboxFilter {
            state: Some(notready),
            ..Default::default()
        })
        .await,
        vec![b.clone()]
    );
    let sel = |pairs: &[(&str, &str)]| -> HashMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    };
    assert_eq!(
        list(PodSandboxFilter {
            label_selector: sel(&[("app", "x")]),
            ..Default::default()
        })
        .await,
        both
    );
    assert_eq!(
        list(PodSandboxFilter {
            label_selector: sel(&[("app", "x"), ("tier", "back")]),
            ..Default::default()
        })
        .await,
        vec![b.clone()]
    );
    assert!(
        list(PodSandboxFilter {
            label_selector: sel(&[("app", "y")]),
            ..Default::default()
        })
        .await
        .is_empty()
    );
    assert!(
        list(PodSandboxFilter {
            id: a.clone(),
            state: Some(notready),
            ..Default::default()
        })
        .await
        .is_empty()
    );

    for id in [&a, &b] {
        rt.remove_pod_sandbox(RemovePodSandboxRequest {
            pod_sandbox_id: id.clone(),
        })
        .await
        .unwrap();
        assert_no_traces(&d, id);
    }
}

#[tokio::test]
async fn bad_sandbox_configs_are_invalid_argument() {
    let d = Daemon::start().await.unwrap();
    let mut rt = d.runtime().await.unwrap();
    let cases: Vec<(PodSandboxConfig, &str)> = vec![
        (
            PodSandboxConfig {
                metadata: None,
                ..pod_config("x", &[])
            },
            "config.metadata",
        ),
        (pod_config("", &[]), "config.metadata.name"),
        (pod_config(&"n".repeat(254), &[]), "config.metadata.name"),
        (
            PodSandboxConfig {
                log_directory: "var/log/pods".into(),
                ..pod_config("x", &[])
            },
            "config.log_directory",
        ),
        (
            PodSandboxConfig {
                log_directory: "/var/log/pods/../../../etc".into(),
                ..pod_config("x", &[])
            },
            "config.log_directory",
        ),
    ];
    for (config, field) in cases {
        let e = run(&mut rt, config).await.unwrap_err();
        assert_eq!(e.code(), Code::InvalidArgument, "{field}: {e:?}");
        assert!(e.message().starts_with(field), "{field}: {}", e.message());
    }
    let e = rt
        .run_pod_sandbox(RunPodSandboxRequest {
            config: None,
            runtime_handler: String::new(),
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    // Nothing was created for any of them.
    let pods = d.state_dir.join("pods");
    assert!(std::fs::read_dir(&pods).map(|r| r.count()).unwrap_or(0) == 0);
    rt.version(VersionRequest::default()).await.unwrap();
}

#[tokio::test]
async fn missing_kernel_or_helper_is_failed_precondition() {
    let d = Daemon::start_with_config(
        "[vm]\nkernel = \"/nonexistent/vmlinux\"\ninitramfs = \"/nonexistent/initramfs\"\n",
    )
    .await
    .unwrap();
    let mut rt = d.runtime().await.unwrap();
    let e = run(&mut rt, pod_config("k", &[])).await.unwrap_err();
    assert_eq!(e.code(), Code::FailedPrecondition, "{e:?}");
    assert!(
        e.message().contains("/nonexistent/vmlinux") && e.message().contains("images/build.sh"),
        "{}",
        e.message()
    );

    let d = Daemon::start_with_config(&test_config(
        "[helpers]\nvirtiofsd = \"/nonexistent/virtiofsd\"\n",
    ))
    .await
    .unwrap();
    let mut rt = d.runtime().await.unwrap();
    let e = run(&mut rt, pod_config("h", &[])).await.unwrap_err();
    assert_eq!(e.code(), Code::FailedPrecondition, "{e:?}");
    assert!(
        e.message().contains("cargo install --locked virtiofsd"),
        "{}",
        e.message()
    );
}

/// Builds an initramfs whose /init prints a line and then never answers,
/// so the boot must time out. Needs gcc with static glibc and cpio, which
/// the suite's install step provides.
fn hanging_initramfs(dir: &Path) -> PathBuf {
    let src = dir.join("init.c");
    std::fs::write(
        &src,
        r#"#include <fcntl.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <unistd.h>
int main(void) {
    mkdir("/dev", 0755);
    mount("devtmpfs", "/dev", "devtmpfs", 0, 0);
    int fd = open("/dev/console", O_WRONLY);
    const char msg[] = "vmpod-test: this init never becomes ready\n";
    if (fd >= 0) write(fd, msg, sizeof msg - 1);
    for (;;) pause();
}
"#,
    )
    .unwrap();
    let root = dir.join("root");
    std::fs::create_dir_all(&root).unwrap();
    let st = std::process::Command::new("gcc")
        .args(["-static", "-O2", "-o"])
        .arg(root.join("init"))
        .arg(&src)
        .status()
        .unwrap();
    assert!(st.success(), "gcc -static failed");
    let out = dir.join("hang.cpio");
    let st = std::process::Command::new("sh")
        .arg("-c")
        .arg(format!(
            "cd {} && echo init | cpio -o -H newc --quiet > {}",
            root.display(),
            out.display()
        ))
        .status()
        .unwrap();
    assert!(st.success(), "cpio failed");
    out
}

#[tokio::test]
async fn boot_timeout_tears_down_and_reports_serial_tail() {
    let tmp = tempfile::tempdir().unwrap();
    let initrd = hanging_initramfs(tmp.path());
    let config = format!(
        "[vm]\nkernel = {:?}\ninitramfs = {initrd:?}\nboot-timeout-secs = 8\n",
        vmpod_tests::daemon::guest_kernel()
    );
    let d = Daemon::start_with_config(&config).await.unwrap();
    let mut rt = d.runtime().await.unwrap();
    let t0 = Instant::now();
    let e = run(&mut rt, pod_config("slow", &[])).await.unwrap_err();
    assert_eq!(e.code(), Code::DeadlineExceeded, "{e:?}");
    assert!(
        e.message().contains("this init never becomes ready"),
        "serial tail missing: {}",
        e.message()
    );
    assert!(
        t0.elapsed() < Duration::from_secs(30),
        "took {:?}",
        t0.elapsed()
    );
    let list = rt
        .list_pod_sandbox(ListPodSandboxRequest::default())
        .await
        .unwrap()
        .into_inner()
        .items;
    assert!(list.is_empty(), "failed sandbox still listed");
    let pods = d.state_dir.join("pods");
    assert_eq!(std::fs::read_dir(&pods).map(|r| r.count()).unwrap_or(0), 0);
    assert!(processes_mentioning(&pods.display().to_string()).is_empty());
}

#[tokio::test]
async fn vm_killed_turns_not_ready_within_2s() {
    let d = Daemon::start().await.unwrap();
    let mut rt = d.runtime().await.unwrap();
    let id = run(&mut rt, pod_config("victim", &[])).await.unwrap();
    let vm_pid = info(&status(&mut rt, &id).await)["vmPid"].as_u64().unwrap();
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(vm_pid as i32),
        nix::sys::signal::SIGKILL,
    )
    .unwrap();
    let reason = not_ready_within(&mut rt, &id, Duration::from_secs(2)).await;
    assert!(reason.contains("qemu"), "{reason}");
    rt.stop_pod_sandbox(StopPodSandboxRequest {
        pod_sandbox_id: id.clone(),
    })
    .await
    .unwrap();
    rt.remove_pod_sandbox(RemovePodSandboxRequest {
        pod_sandbox_id: id.clone(),
    })
    .await
    .unwrap();
    assert_no_traces(&d, &id);
}

#[tokio::test]
async fn daemon_kill_9_and_restart_keeps_pods() {
    let mut d = Daemon::start().await.unwrap();
    let mut rt = d.runtime().await.unwrap();
    let a = run(&mut rt, pod_config("p1", &[])).await.unwrap();
    let b = run(&mut rt, pod_config("p2", &[])).await.unwrap();
    drop(rt);
    d.stop_with(libc::SIGKILL, Duration::from_secs(5)).unwrap();

    d.restart().await.unwrap();
    let mut rt = d.runtime().await.unwrap();
    for id in [&a, &b] {
        let s = status(&mut rt, id).await;
        assert_eq!(
            state_of(&s),
            PodSandboxState::SandboxReady,
            "{id}: {}",
            info(&s)
        );
    }
    // The reconnected monitors still work: the shim still answers.
    for id in [&a, &b] {
        shim_client(&d, id)
            .await
            .state(vmpod_shim_api::v1::StateRequest {})
            .await
            .unwrap();
        rt.stop_pod_sandbox(StopPodSandboxRequest {
            pod_sandbox_id: id.clone(),
        })
        .await
        .unwrap();
        rt.remove_pod_sandbox(RemovePodSandboxRequest {
            pod_sandbox_id: id.clone(),
        })
        .await
        .unwrap();
        assert_no_traces(&d, id);
    }
}

#[tokio::test]
async fn eight_concurrent_sandboxes() {
    let d = Daemon::start().await.unwrap();
    let rt = d.runtime().await.unwrap();
    let t0 = Instant::now();
    let tasks: Vec<_> = (0..8)
        .map(|i| {
            let mut rt = rt.clone();
            tokio::spawn(async move { run(&mut rt, pod_config(&format!("c{i}"), &[])).await })
        })
        .collect();
    let mut ids = Vec::new();
    for t in tasks {
        match t.await.unwrap() {
            Ok(id) => ids.push(id),
            // Allowed only as a clean failure, e.g. when memory is short.
            Err(e) => eprintln!("sandbox failed cleanly: {e:?}"),
        }
    }
    eprintln!("{} of 8 sandboxes ready in {:?}", ids.len(), t0.elapsed());
    assert_eq!(ids.len(), 8, "this host has the memory for 8 small VMs");
    let mut rt = rt.clone();
    for id in &ids {
        assert_eq!(
            state_of(&status(&mut rt, id).await),
            PodSandboxState::SandboxReady
        );
    }
    let removals: Vec<_> = ids
        .iter()
        .map(|id| {
            let mut rt = rt.clone();
            let id = id.clone();
            tokio::spawn(async move {
                rt.remove_pod_sandbox(RemovePodSandboxRequest { pod_sandbox_id: id })
                    .await
            })
        })
        .collect();
    for r in removals {
        r.await.unwrap().unwrap();
    }
    for id in &ids {
        assert_no_traces(&d, id);
    }
    assert!(
        rt.list_pod_sandbox(ListPodSandboxRequest::default())
            .await
            .unwrap()
            .into_inner()
            .items
            .is_empty()
    );
}

#[tokio::test]
async fn daemon_killed_mid_run_pod_sandbox_is_cleaned_on_restart() {
    let tmp = tempfile::tempdir().unwrap();
    let initrd = hanging_initramfs(tmp.path());
    let config = format!(
        "[vm]\nkernel = {:?}\ninitramfs = {initrd:?}\nboot-timeout-secs = 120\n",
        vmpod_tests::daemon::guest_kernel()
    );
    let mut d = Daemon::start_with_config(&config).await.unwrap();
    let rt = d.runtime().await.unwrap();
    let call = tokio::spawn(async move {
        let mut rt = rt;
        run(&mut rt, pod_config("interrupted", &[])).await
    });
    // Wait until the shim's VM is up, then kill the daemon under it.
    let pods = d.state_dir.join("pods");
    let deadline = Instant::now() + Duration::from_secs(20);
    let pod = loop {
        let console = std::fs::read_dir(&pods)
            .ok()
            .and_then(|mut r| r.next())
            .and_then(|e| e.ok())
            .map(|e| e.path());
        if let Some(dir) = console
            && std::fs::read_to_string(dir.join("console.log"))
                .is_ok_and(|c| c.contains("never becomes ready"))
        {
            break dir;
        }
        assert!(Instant::now() < deadline, "the hanging guest never booted");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    d.stop_with(libc::SIGKILL, Duration::from_secs(5)).unwrap();
    assert!(
        call.await.unwrap().is_err(),
        "the interrupted call cannot succeed"
    );
    assert!(
        !processes_mentioning(&pod.display().to_string()).is_empty(),
        "the shim outlives the daemon"
    );

    d.restart().await.unwrap();
    let mut rt = d.runtime().await.unwrap();
    // Recovery ran before the daemon served: nothing of the attempt is left.
    assert!(
        rt.list_pod_sandbox(ListPodSandboxRequest::default())
            .await
            .unwrap()
            .into_inner()
            .items
            .is_empty()
    );
    assert!(
        !pod.exists(),
        "pod dir of the interrupted sandbox left behind"
    );
    let procs = processes_mentioning(&pod.display().to_string());
    assert!(procs.is_empty(), "processes left behind: {procs:?}");
    let name = pod.file_name().unwrap().to_string_lossy().into_owned();
    assert!(cgroups_named(&format!("vmpod-{name}")).is_empty());
}

#[tokio::test]
async fn helper_killed_turns_not_ready() {
    let d = Daemon::start().await.unwrap();
    let mut rt = d.runtime().await.unwrap();
    let id = run(&mut rt, pod_config("helperless", &[])).await.unwrap();
    let dir = pod_dir(&d, &id);
    let (pid, _) = processes_mentioning(&dir.display().to_string())
        .into_iter()
        .find(|(_, cmd)| cmd.contains("vhost-device-vsock"))
        .expect("vhost-device-vsock runs for the pod");
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid as i32),
        nix::sys::signal::SIGKILL,
    )
    .unwrap();
    let reason = not_ready_within(&mut rt, &id, Duration::from_secs(2)).await;
    assert!(reason.contains("vhost-device-vsock"), "{reason}");
    rt.remove_pod_sandbox(RemovePodSandboxRequest {
        pod_sandbox_id: id.clone(),
    })
    .await
    .unwrap();
    assert_no_traces(&d, &id);
}
