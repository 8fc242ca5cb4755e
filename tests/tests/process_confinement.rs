//! The host processes that face the guest run confined: one real pod through
//! a real `vmpod serve` (QEMU/TCG here), then each of QEMU, virtiofsd (both
//! its processes) and vhost-device-vsock read from /proc: who it runs as,
//! which capabilities it holds, no_new_privs, seccomp, and that it sits in
//! the pod's cgroup under a memory limit.

use std::path::{Path, PathBuf};
use std::time::Duration;

use tonic::transport::Channel;
use vmpod_cri_api::RuntimeServiceClient;
use vmpod_cri_api::v1::*;
use vmpod_shim_api::ShimClient;
use vmpod_tests::daemon::{Daemon, connect_unix};
use vmpod_tests::host::processes_mentioning;

type Rt = RuntimeServiceClient<Channel>;

/// What virtiofsd keeps to serve files of any owner (`--modcaps=-mknod:
/// -setfcap`, `--inode-file-handles=never`): CHOWN, DAC_OVERRIDE, FOWNER,
/// FSETID, SETGID, SETUID.
const VIRTIOFSD_CAPS: u64 = 0xdb;
const CAP_DAC_READ_SEARCH: u64 = 1 << 2;
const CAP_SYS_ADMIN: u64 = 1 << 21;
const CAP_MKNOD: u64 = 1 << 27;
const CAP_SETFCAP: u64 = 1 << 31;

fn pod_config(name: &str) -> PodSandboxConfig {
    PodSandboxConfig {
        metadata: Some(PodSandboxMetadata {
            name: name.into(),
            uid: format!("uid-{name}"),
            namespace: "vmpod-test".into(),
            attempt: 0,
        }),
        hostname: format!("{name}-host"),
        linux: Some(LinuxPodSandboxConfig {
            cgroup_parent: format!("/vmpod-test/pod-{name}"),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// The fields of /proc/<pid>/status this test reads.
#[derive(Debug)]
struct Status {
    pid: u32,
    uids: Vec<u32>,
    cap_eff: u64,
    cap_prm: u64,
    cap_bnd: u64,
    no_new_privs: u32,
    seccomp: u32,
}

fn status(pid: u32) -> Status {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_else(|e| panic!("/proc/{pid}/status: {e}"));
    let field = |name: &str| -> String {
        text.lines()
            .find_map(|l| l.strip_prefix(name))
            .map(|v| v.trim().to_owned())
            .unwrap_or_else(|| panic!("no {name} in /proc/{pid}/status:\n{text}"))
    };
    let hex = |name: &str| {
        u64::from_str_radix(&field(name), 16).unwrap_or_else(|e| panic!("{name}: {e}"))
    };
    let num = |name: &str| {
        field(name)
            .parse::<u32>()
            .unwrap_or_else(|e| panic!("{name}: {e}"))
    };
    Status {
        pid,
        uids: field("Uid:")
            .split_whitespace()
            .map(|u| u.parse().expect("uid"))
            .collect(),
        cap_eff: hex("CapEff:"),
        cap_prm: hex("CapPrm:"),
        cap_bnd: hex("CapBnd:"),
        no_new_privs: num("NoNewPrivs:"),
        seccomp: num("Seccomp:"),
    }
}

/// The pod's memory cgroup of `pid` and the limit set on it, in bytes.
fn memory_limit(pid: u32, leaf: &str) -> (String, u64) {
    let cgroups = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).expect("cgroup");
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").expect("mountinfo");
    for line in cgroups.lines() {
        let mut f = line.splitn(3, ':');
        let (_, controllers, path) = (f.next(), f.next().unwrap_or(""), f.next().unwrap_or(""));
        let v2 = controllers.is_empty();
        if !v2 && !controllers.split(',').any(|c| c == "memory") {
            continue;
        }
        if !path.ends_with(leaf) {
            continue;
        }
        for m in mountinfo.lines() {
            let Some((left, right)) = m.split_once(" - ") else {
                continue;
            };
            let r: Vec<&str> = right.split_whitespace().collect();
            let ok = if v2 {
                r.first() == Some(&"cgroup2")
            } else {
                r.first() == Some(&"cgroup")
                    && r.get(2)
                        .is_some_and(|o| o.split(',').any(|o| o == "memory"))
            };
            let l: Vec<&str> = left.split_whitespace().collect();
            if !ok || l.get(3) != Some(&"/") {
                continue;
            }
            let dir = Path::new(l[4]).join(path.trim_start_matches('/'));
            let file = dir.join(if v2 {
                "memory.max"
            } else {
                "memory.limit_in_bytes"
            });
            let Ok(text) = std::fs::read_to_string(&file) else {
                continue;
            };
            let bytes = text.trim().parse::<u64>().unwrap_or(u64::MAX);
            return (file.display().to_string(), bytes);
        }
    }
    panic!("pid {pid} is not in a memory cgroup named {leaf}:\n{cgroups}");
}

fn pod_dir(d: &Daemon, id: &str) -> PathBuf {
    d.state_dir.join("pods").join(&id[..16])
}

/// Everything a pod's process must satisfy whoever it runs as.
fn assert_common(s: &Status, leaf: &str, guest_bytes: u64) {
    assert_eq!(s.seccomp, 2, "{s:?}: no seccomp filter");
    assert_eq!(s.no_new_privs, 1, "{s:?}: can gain privileges by exec");
    let (file, limit) = memory_limit(s.pid, leaf);
    assert!(
        limit >= guest_bytes && limit < 1 << 40,
        "{s:?}: {file} is {limit}, not a limit above guest RAM"
    );
}

#[tokio::test]
async fn guest_facing_processes_are_confined() {
    let d = Daemon::start().await.unwrap();
    let mut rt: Rt = d.runtime().await.unwrap();
    let id = rt
        .run_pod_sandbox(RunPodSandboxRequest {
            config: Some(pod_config("confined")),
            runtime_handler: String::new(),
        })
        .await
        .unwrap()
        .into_inner()
        .pod_sandbox_id;
    let st = rt
        .pod_sandbox_status(PodSandboxStatusRequest {
            pod_sandbox_id: id.clone(),
            verbose: true,
        })
        .await
        .unwrap()
        .into_inner();
    let info: serde_json::Value = serde_json::from_str(&st.info["info"]).unwrap();
    assert!(
        info["backend"].as_str().unwrap_or("").starts_with("qemu"),
        "{info}"
    );
    let guest_bytes = info["memoryMiB"].as_u64().unwrap() << 20;
    let vm_pid = u32::try_from(info["vmPid"].as_u64().unwrap()).unwrap();
    let leaf = format!("vmpod-{}", &id[..16]);
    let dir = pod_dir(&d, &id);
    let procs = processes_mentioning(&dir.display().to_string());
    let pids = |what: &str| -> Vec<u32> {
        procs
            .iter()
            .filter(|(_, cmd)| cmd.contains(what))
            .map(|(pid, _)| *pid)
            .collect()
    };

    // QEMU: the VMM user after -runas, nothing effective, its own filter
    // and ours.
    let qemu = status(vm_pid);
    eprintln!("qemu: {qemu:?}");
    assert!(qemu.uids.iter().all(|&u| u != 0), "{qemu:?}: runs as root");
    assert_eq!(qemu.cap_eff, 0, "{qemu:?}");
    assert_eq!(qemu.cap_prm, 0, "{qemu:?}");
    assert_common(&qemu, &leaf, guest_bytes);

    // vhost-device-vsock: the VMM user from its first instruction, no
    // capability even in the bounding set, the allow-list.
    let vsock = pids("vhost-device-vsock");
    assert_eq!(vsock.len(), 1, "{procs:?}");
    let vsock = status(vsock[0]);
    eprintln!("vhost-device-vsock: {vsock:?}");
    assert!(
        vsock.uids.iter().all(|&u| u != 0),
        "{vsock:?}: runs as root"
    );
    assert_eq!(vsock.cap_eff, 0, "{vsock:?}");
    assert_eq!(vsock.cap_prm, 0, "{vsock:?}");
    assert_eq!(vsock.cap_bnd, 0, "{vsock:?}");
    assert_common(&vsock, &leaf, guest_bytes);

    // virtiofsd must stay uid 0 to serve files of every owner; both of its
    // processes (the outer one only waits for the sandboxed one) hold at
    // most the six file capabilities, never MKNOD, SETFCAP, SYS_ADMIN or
    // DAC_READ_SEARCH (file handles), and run filtered.
    let vfs = pids("virtiofsd");
    assert_eq!(vfs.len(), 2, "outer and sandboxed virtiofsd: {procs:?}");
    for pid in vfs {
        let s = status(pid);
        eprintln!("virtiofsd: {s:?}");
        assert_eq!(s.cap_eff & !VIRTIOFSD_CAPS, 0, "{s:?}: extra capabilities");
        assert_eq!(s.cap_bnd & !VIRTIOFSD_CAPS, 0, "{s:?}: extra bounding set");
        for cap in [CAP_MKNOD, CAP_SETFCAP, CAP_SYS_ADMIN, CAP_DAC_READ_SEARCH] {
            assert_eq!(s.cap_eff & cap, 0, "{s:?}");
        }
        assert_common(&s, &leaf, guest_bytes);
    }

    // The confined helpers still serve the pod: an agent call after the
    // checks goes through vhost-device-vsock, QEMU and the guest.
    let mut shim = ShimClient::new(connect_unix(&dir.join("shim.sock")).await.unwrap());
    for _ in 0..3 {
        shim.guest_info(vmpod_agent_proto::v1::GuestInfoRequest {})
            .await
            .unwrap();
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    for pid in [vm_pid, vsock.pid] {
        assert!(
            Path::new(&format!("/proc/{pid}")).exists(),
            "{pid} died after agent calls; {}",
            std::fs::read_to_string(dir.join("run/vhost-device-vsock.log")).unwrap_or_default()
        );
    }

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
    let left = processes_mentioning(&dir.display().to_string());
    assert!(left.is_empty(), "processes left behind: {left:?}");
}
