//! End-to-end tests of vmpod-shim with a real QEMU/TCG guest.
//!
//! They need the guest image from `images/build.sh` (kernel + initramfs with
//! the agent) and the helpers `vhost-device-vsock` and `virtiofsd` on PATH
//! or in ~/.cargo/bin. A missing piece fails the test with what to do; it
//! never passes silently.

mod common;

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use common::*;
use vmpod_agent_proto::v1::GuestInfoRequest;
use vmpod_shim_api::v1::{Phase, ShutdownRequest, StateRequest, WatchRequest};

#[tokio::test(flavor = "current_thread")]
async fn boots_to_ready_then_shuts_down_cleanly() {
    let _one = SERIAL.lock().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let pod = dir.path().to_owned();
    let (mut shim, mut client, state) = boot_in(&pod).await;
    report(&state);
    assert_eq!(state.backend, "qemu-tcg");
    assert_eq!(state.vcpus, 1);
    assert_eq!(state.memory_mib, 256);
    assert_eq!(state.shim_pid, shim.id());
    assert_ne!(state.vmm_pid, 0);
    let b = state.boot.unwrap_or_default();
    assert!(b.shim_start_ns > 0 && b.vmm_spawned_ns >= b.shim_start_ns);
    assert!(
        b.kernel_entry_ns >= b.vmm_spawned_ns && b.agent_ready_ns >= b.kernel_entry_ns,
        "{b:?}"
    );
    let pid_file = std::fs::read_to_string(pod.join("shim.pid")).expect("shim.pid");
    assert_eq!(pid_file.trim(), shim.id().to_string());

    let info = client
        .guest_info(GuestInfoRequest {})
        .await
        .expect("GuestInfo")
        .into_inner();
    assert!(
        info.kernel_release.contains("vmpod"),
        "kernel_release {:?}",
        info.kernel_release
    );
    assert_eq!(info.hostname, "boot-test");
    eprintln!(
        "guest: {} {} cpus, uptime {:.2}s",
        info.kernel_release, info.cpus, info.uptime_seconds
    );
    assert!(
        std::fs::metadata(pod.join("console.log"))
            .expect("console.log")
            .len()
            > 0
    );

    shutdown_and_check(&mut client, &mut shim, &pod).await;
}

#[tokio::test(flavor = "current_thread")]
async fn killed_vmm_is_failed_within_two_seconds() {
    let _one = SERIAL.lock().await;
    let Booted {
        _dir: _tmp,
        pod,
        mut shim,
        mut client,
        state,
    } = boot_to_ready().await;

    let mut stream = client
        .watch(WatchRequest {})
        .await
        .expect("Watch")
        .into_inner();
    let _current = stream.message().await.expect("Watch").expect("first state");
    let killed = Instant::now();
    let rc = unsafe { libc::kill(state.vmm_pid as i32, libc::SIGKILL) };
    assert_eq!(rc, 0, "kill -9 {}", state.vmm_pid);
    let failed = tokio::time::timeout(Duration::from_secs(2), async {
        loop {
            match stream.message().await.expect("Watch") {
                Some(s) if s.phase() == Phase::Failed => return s,
                Some(_) => {}
                None => panic!("Watch ended"),
            }
        }
    })
    .await
    .expect("FAILED within 2 s of kill -9");
    eprintln!(
        "FAILED {} ms after kill -9: {}",
        killed.elapsed().as_millis(),
        failed.error.lines().next().unwrap_or("")
    );
    assert!(failed.error.contains("qemu"), "{}", failed.error);
    assert!(failed.error.contains("SIGKILL"), "{}", failed.error);

    // Guest calls now fail as unavailable, not hang.
    let e = client.guest_info(GuestInfoRequest {}).await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::Unavailable);
    shutdown_and_check(&mut client, &mut shim, &pod).await;
}

#[tokio::test(flavor = "current_thread")]
async fn missing_kernel_is_rejected_before_anything_starts() {
    let _one = SERIAL.lock().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let pod = dir.path().to_owned();
    let initramfs = pod.join("initramfs");
    std::fs::write(&initramfs, b"x").expect("write");
    write_spec(&pod, Path::new("/nonexistent/vmlinux"), &initramfs, 5_000);
    let started = Instant::now();
    let out = Command::new(env!("CARGO_BIN_EXE_vmpod-shim"))
        .arg("--pod-dir")
        .arg(&pod)
        .output()
        .expect("run vmpod-shim");
    assert!(!out.status.success());
    assert!(started.elapsed() < Duration::from_secs(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    assert!(
        err.contains("`kernel`") && err.contains("/nonexistent/vmlinux"),
        "{err}"
    );
    assert!(!pod.join("shim.sock").exists());
}

#[tokio::test(flavor = "current_thread")]
async fn unbootable_kernel_fails_fast_and_cleans_up() {
    let _one = SERIAL.lock().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let pod = dir.path().to_owned();
    let kernel = pod.join("not-a-kernel");
    std::fs::write(&kernel, vec![0x5au8; 4096]).expect("write");
    write_spec(&pod, &kernel, &kernel, 60_000);
    let started = Instant::now();
    let mut shim = start_shim(&pod);
    let mut client = connect(&pod).await;
    let state = watch_until(
        &mut client,
        &[Phase::Failed, Phase::Ready],
        Duration::from_secs(10),
    )
    .await;
    eprintln!(
        "FAILED after {} ms: {}",
        started.elapsed().as_millis(),
        state.error
    );
    assert_eq!(state.phase(), Phase::Failed);
    assert!(state.error.contains("qemu"), "{}", state.error);
    let left = processes_mentioning(&pod);
    assert!(
        left.iter().all(|(pid, _)| *pid == shim.id()),
        "helpers outlived a failed boot: {left:?}"
    );
    let now = client
        .state(StateRequest {})
        .await
        .expect("State")
        .into_inner();
    assert_eq!(now.phase(), Phase::Failed);
    shutdown_and_check(&mut client, &mut shim, &pod).await;
}

#[tokio::test(flavor = "current_thread")]
async fn boot_timeout_fails_with_reason_and_cleans_up() {
    let _one = SERIAL.lock().await;
    let (kernel, initramfs) = guest_image();
    let dir = tempfile::tempdir().expect("tempdir");
    let pod = dir.path().to_owned();
    // Far less than a TCG boot takes, so the deadline hits a running VMM.
    write_spec(&pod, &kernel, &initramfs, 400);
    let started = Instant::now();
    let mut shim = start_shim(&pod);
    let mut client = connect(&pod).await;
    let state = watch_until(
        &mut client,
        &[Phase::Failed, Phase::Ready],
        Duration::from_secs(10),
    )
    .await;
    let took = started.elapsed();
    eprintln!(
        "FAILED after {} ms: {}",
        took.as_millis(),
        state.error.lines().next().unwrap_or("")
    );
    assert_eq!(state.phase(), Phase::Failed);
    assert!(
        state
            .error
            .contains("guest did not reach agent-ready within 400 ms"),
        "{}",
        state.error
    );
    assert!(state.error.contains("serial console"), "{}", state.error);
    // 400 ms deadline plus QEMU's SIGTERM exit; nowhere near the grace.
    assert!(took < Duration::from_secs(3), "{took:?}");
    let left = processes_mentioning(&pod);
    assert!(
        left.iter().all(|(pid, _)| *pid == shim.id()),
        "left behind: {left:?}"
    );
    shutdown_and_check(&mut client, &mut shim, &pod).await;
}

#[tokio::test(flavor = "current_thread")]
async fn keep_running_then_sigterm() {
    let _one = SERIAL.lock().await;
    let Booted {
        _dir: _tmp,
        pod,
        mut shim,
        mut client,
        state: _,
    } = boot_to_ready().await;
    let info = client
        .guest_info(GuestInfoRequest {})
        .await
        .expect("GuestInfo")
        .into_inner();
    assert!(
        info.resolv_conf.contains("10.0.0.10"),
        "resolv.conf: {}",
        info.resolv_conf
    );

    let mut stream = client
        .watch(WatchRequest {})
        .await
        .expect("Watch")
        .into_inner();
    for _ in 0..2 {
        client
            .shutdown(ShutdownRequest {
                timeout_ms: 0,
                keep_running: true,
            })
            .await
            .expect("Shutdown is idempotent");
    }
    let now = client
        .state(StateRequest {})
        .await
        .expect("State")
        .into_inner();
    assert_eq!(now.phase(), Phase::Stopped);
    assert!(
        shim.try_wait().expect("try_wait").is_none(),
        "keep_running: shim must stay"
    );
    let left = processes_mentioning(&pod);
    assert!(
        left.iter().all(|(pid, _)| *pid == shim.id()),
        "left behind: {left:?}"
    );
    let e = client.guest_info(GuestInfoRequest {}).await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::Unavailable);

    let rc = unsafe { libc::kill(shim.id() as i32, libc::SIGTERM) };
    assert_eq!(rc, 0);
    let status = wait_exit(&mut shim, Duration::from_secs(10));
    assert!(status.success(), "shim exit {status}");
    // The Watch stream ends cleanly, having shown STOPPED.
    let mut last = None;
    while let Ok(Some(s)) = stream.message().await {
        last = Some(s.phase());
    }
    assert_eq!(last, Some(Phase::Stopped));
    assert!(!pod.join("shim.sock").exists());
    assert!(!pod.join("shim.pid").exists());
    assert!(processes_mentioning(&pod).is_empty());
}

#[tokio::test(flavor = "current_thread")]
async fn dead_helper_is_failed_and_vm_torn_down() {
    let _one = SERIAL.lock().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let pod = dir.path().to_owned();
    let (mut shim, mut client) = boot_ready(&pod).await;
    let helper = processes_mentioning(&pod)
        .into_iter()
        .find(|(_, cmd)| cmd.contains("vhost-device-vsock"))
        .expect("vhost-device-vsock running");
    let killed = Instant::now();
    assert_eq!(unsafe { libc::kill(helper.0 as i32, libc::SIGKILL) }, 0);
    let state = watch_until(&mut client, &[Phase::Failed], Duration::from_secs(2)).await;
    eprintln!(
        "FAILED {} ms after kill -9 of the helper",
        killed.elapsed().as_millis()
    );
    assert!(
        state.error.contains("vhost-device-vsock") && state.error.contains("SIGKILL"),
        "{}",
        state.error
    );
    // FAILED is published after teardown: the VMM is gone too.
    let left = processes_mentioning(&pod);
    assert!(
        left.iter().all(|(pid, _)| *pid == shim.id()),
        "left behind: {left:?}"
    );
    shutdown_and_check(&mut client, &mut shim, &pod).await;
}

#[tokio::test(flavor = "current_thread")]
async fn children_die_with_a_killed_shim() {
    let _one = SERIAL.lock().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let pod = dir.path().to_owned();
    let (mut shim, _client) = boot_ready(&pod).await;
    assert!(
        processes_mentioning(&pod).len() >= 4,
        "shim, qemu and helpers expected"
    );
    shim.kill().expect("kill -9 shim");
    shim.wait().expect("reap shim");
    // QEMU switches to vm.vmm-user itself (`-runas`), which clears its
    // parent-death signal: it outlives a killed shim until the daemon kills
    // the pod's cgroup (StopPodSandbox; tests/tests/sandbox_lifecycle.rs).
    // Everything else dies with the shim.
    let is_qemu = |cmd: &str| cmd.contains("qemu-system");
    let deadline = Instant::now() + Duration::from_secs(3);
    loop {
        let left: Vec<_> = processes_mentioning(&pod)
            .into_iter()
            .filter(|(_, cmd)| !is_qemu(cmd))
            .collect();
        if left.is_empty() {
            break;
        }
        assert!(Instant::now() < deadline, "survived the shim: {left:?}");
        std::thread::sleep(Duration::from_millis(20));
    }
    for (pid, _) in processes_mentioning(&pod)
        .into_iter()
        .filter(|(_, c)| is_qemu(c))
    {
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
        let uid = status.lines().find(|l| l.starts_with("Uid:")).unwrap_or("");
        assert!(
            !uid.split_whitespace().skip(1).any(|u| u == "0"),
            "QEMU is root: {uid}"
        );
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid as i32),
            nix::sys::signal::Signal::SIGKILL,
        );
    }
    // A killed shim cannot release the share; the daemon does it before
    // deleting the pod dir, and so does this test.
    vmpod_shim_api::mounts::release(&pod);
    assert!(vmpod_shim_api::mounts::mounts_under(&pod).is_empty());
}
