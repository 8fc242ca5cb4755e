//! End-to-end: containers in a real QEMU/TCG guest through the shim, with a
//! busybox root made from the host's static /bin/busybox (Debian's
//! busybox-static) as a single layer.
//!
//! Needs the same guest image and helpers as `boot.rs`, with an agent that
//! runs containers.

mod common;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::*;
use tonic::Code;
use tonic::transport::Channel;
use vmpod_agent_proto::v1::{
    ContainerRef, ContainerSpec, ContainerState, ListContainersRequest, Process,
};
use vmpod_shim_api::ShimClient;
use vmpod_shim_api::v1::{CreateContainerRequest, HostMount, StopContainerRequest};

/// A busybox root: the binary, the applets the tests run, and the few
/// files and mount points a container expects.
fn busybox_layer(dir: &Path) -> PathBuf {
    let layer = dir.join("layer");
    for d in ["bin", "etc", "proc", "sys", "dev", "tmp", "data"] {
        std::fs::create_dir_all(layer.join(d)).expect("mkdir layer");
    }
    let busybox = Path::new("/bin/busybox");
    assert!(
        busybox.is_file(),
        "/bin/busybox is missing: apt-get install busybox-static"
    );
    std::fs::copy(busybox, layer.join("bin/busybox")).expect("copy busybox");
    for applet in ["sh", "echo", "cat", "sleep", "printf", "true"] {
        std::os::unix::fs::symlink("busybox", layer.join("bin").join(applet)).expect("symlink");
    }
    std::fs::write(layer.join("etc/passwd"), "root:x:0:0:root:/:/bin/sh\n").expect("passwd");
    std::fs::write(layer.join("etc/group"), "root:x:0:\n").expect("group");
    layer
}

fn request(
    id: &str,
    layer: &Path,
    volume: &Path,
    log: &Path,
    args: &[&str],
) -> CreateContainerRequest {
    CreateContainerRequest {
        layers: vec![layer.to_string_lossy().into_owned()],
        mounts: vec![HostMount {
            host_path: volume.to_string_lossy().into_owned(),
            container_path: "/data".into(),
            readonly: true,
            ..Default::default()
        }],
        log_path: log.to_string_lossy().into_owned(),
        writable_layer_bytes: 0,
        spec: Some(ContainerSpec {
            id: id.into(),
            process: Some(Process {
                args: args.iter().map(|a| a.to_string()).collect(),
                env: vec!["PATH=/bin".into()],
                ..Default::default()
            }),
            ..Default::default()
        }),
    }
}

/// The log's records as "stream tag content", without timestamps.
fn records(log: &Path) -> Vec<String> {
    std::fs::read_to_string(log)
        .unwrap_or_default()
        .lines()
        .map(|l| l.split_once(' ').map_or("", |(_, rest)| rest).to_owned())
        .collect()
}

async fn wait_for_records(log: &Path, want: &[&str], limit: Duration) -> Vec<String> {
    let deadline = Instant::now() + limit;
    loop {
        let got = records(log);
        if want.iter().all(|w| got.iter().any(|g| g == w)) || Instant::now() >= deadline {
            return got;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn container_mounts(pod: &Path) -> Vec<String> {
    vmpod_shim_api::mounts::mounts_under(&pod.join("share/containers"))
}

async fn remove(client: &mut ShimClient<Channel>, id: &str) {
    client
        .remove_container(ContainerRef { id: id.into() })
        .await
        .unwrap_or_else(|e| panic!("RemoveContainer {id}: {e}"));
}

#[tokio::test(flavor = "current_thread")]
async fn create_start_log_stop_remove_in_a_real_guest() {
    let _one = SERIAL.lock().await;
    let Booted {
        _dir: tmp,
        pod,
        mut shim,
        mut client,
        state: _,
    } = boot_to_ready().await;
    let work = tmp.path().join("work");
    let layer = busybox_layer(&work);
    let volume = work.join("volume");
    std::fs::create_dir_all(&volume).unwrap();
    std::fs::write(volume.join("greeting"), "from-host\n").unwrap();
    let logs = work.join("logs");
    std::fs::create_dir_all(&logs).unwrap();
    let log = logs.join("c1.log");

    let script = "echo hello-stdout; echo hello-stderr >&2; cat /data/greeting; \
                  if echo x > /data/x; then echo data-rw; else echo data-ro; fi; \
                  printf no-newline; exec sleep 1000";
    let created = client
        .create_container(request("c1", &layer, &volume, &log, &["sh", "-c", script]))
        .await
        .unwrap_or_else(|e| panic!("CreateContainer: {e}\nshim.log:\n{}", shim_log(&pod)))
        .into_inner();
    assert_eq!(created.state(), ContainerState::ContainerCreated);
    assert!(pod.join("share/containers/c1/rootfs/bin/busybox").is_file());

    let started = client
        .start_container(ContainerRef { id: "c1".into() })
        .await
        .unwrap_or_else(|e| panic!("StartContainer: {e}\nshim.log:\n{}", shim_log(&pod)))
        .into_inner();
    assert_eq!(started.state(), ContainerState::ContainerRunning);
    let want = [
        "stdout F hello-stdout",
        "stderr F hello-stderr",
        "stdout F from-host",
        "stdout F data-ro",
    ];
    let got = wait_for_records(&log, &want, Duration::from_secs(30)).await;
    for w in want {
        assert!(got.iter().any(|g| g == w), "{w:?} not in log: {got:?}");
    }
    assert!(!volume.join("x").exists(), "read-only volume was written");

    let listed = client
        .list_containers(ListContainersRequest {})
        .await
        .expect("ListContainers")
        .into_inner();
    let c1 = listed
        .containers
        .iter()
        .find(|c| c.id == "c1")
        .expect("c1 listed");
    assert_eq!(c1.state(), ContainerState::ContainerRunning);

    // Removing a running container is refused, and changes nothing.
    let e = client
        .remove_container(ContainerRef { id: "c1".into() })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::FailedPrecondition, "{}", e.message());
    assert!(pod.join("share/containers/c1/rootfs/bin/busybox").is_file());

    let stopped = client
        .stop_container(StopContainerRequest {
            id: "c1".into(),
            timeout_ms: 5000,
            signal: 0,
        })
        .await
        .expect("StopContainer")
        .into_inner();
    assert_eq!(stopped.state(), ContainerState::ContainerExited);
    assert_eq!(stopped.exit_code, 128 + libc::SIGTERM, "{stopped:?}");
    let again = client
        .stop_container(StopContainerRequest {
            id: "c1".into(),
            timeout_ms: 5000,
            signal: 0,
        })
        .await
        .expect("StopContainer again")
        .into_inner();
    assert_eq!(again.exit_code, stopped.exit_code);
    // The unterminated tail arrives once the output is closed.
    let got = wait_for_records(&log, &["stdout P no-newline"], Duration::from_secs(10)).await;
    assert!(
        got.iter().any(|g| g == "stdout P no-newline"),
        "partial line not flushed: {got:?}"
    );

    remove(&mut client, "c1").await;
    assert!(!pod.join("share/containers/c1").exists());
    assert!(
        container_mounts(&pod).is_empty(),
        "{:?}",
        container_mounts(&pod)
    );
    assert_eq!(
        std::fs::read_to_string(volume.join("greeting")).unwrap(),
        "from-host\n"
    );
    remove(&mut client, "c1").await;

    // A missing binary fails StartContainer with the agent's reason.
    let log2 = logs.join("c2.log");
    client
        .create_container(request("c2", &layer, &volume, &log2, &["no-such-binary"]))
        .await
        .expect("CreateContainer c2");
    let e = client
        .start_container(ContainerRef { id: "c2".into() })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::FailedPrecondition, "{}", e.message());
    assert!(
        e.message().contains("no-such-binary"),
        "message: {}",
        e.message()
    );
    remove(&mut client, "c2").await;

    // Shutdown with a container still there leaves no mount in the pod dir.
    client
        .create_container(request(
            "c3",
            &layer,
            &volume,
            &logs.join("c3.log"),
            &["sleep", "1000"],
        ))
        .await
        .expect("CreateContainer c3");
    client
        .start_container(ContainerRef { id: "c3".into() })
        .await
        .expect("StartContainer c3");
    assert!(!container_mounts(&pod).is_empty());
    shutdown_and_check(&mut client, &mut shim, &pod).await;
    let left = vmpod_shim_api::mounts::mounts_under(&pod);
    assert!(left.is_empty(), "mounts left in the pod dir: {left:?}");
}
