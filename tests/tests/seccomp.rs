//! Container seccomp end to end: a real `vmpod serve`, the `sysprobe`
//! fixture from a loopback registry, one pod VM (QEMU/TCG where there is no
//! KVM), and the filters installed by the guest agent. `sysprobe` makes raw
//! system calls no busybox applet makes and prints the outcome.
//!
//! Three containers in the one pod: RuntimeDefault, RuntimeDefault with
//! CAP_SYS_ADMIN, and Unconfined with CAP_SYS_ADMIN. Between the last two
//! the profile is the only difference, so a call RuntimeDefault lists for
//! no capability (migrate_pages) shows the allow list: EPERM from the
//! filter there, the kernel's own answer unconfined. fanotify_init is
//! capability-gated, as in Docker's profile: EPERM without CAP_SYS_ADMIN,
//! the kernel's answer with it. The guest kernel is built without fanotify
//! and NUMA, so its own answer to both is ENOSYS, never EPERM, and an EPERM
//! can only have come from the filter.

use tonic::transport::Channel;
use vmpod_cri_api::v1::*;
use vmpod_cri_api::{ImageServiceClient, RuntimeServiceClient};
use vmpod_tests::daemon::{Daemon, test_config};
use vmpod_tests::registry::{Registry, fixtures_dir};

type Rt = RuntimeServiceClient<Channel>;

/// A container that stays up for ExecSync, with the given seccomp
/// profile and capabilities added to the default set.
fn prober(
    image: &str,
    name: &str,
    profile: security_profile::ProfileType,
    add: &[&str],
) -> ContainerConfig {
    ContainerConfig {
        metadata: Some(ContainerMetadata {
            name: name.into(),
            attempt: 0,
        }),
        image: Some(ImageSpec {
            image: image.into(),
            ..Default::default()
        }),
        command: vec!["sleep".into(), "600".into()],
        log_path: format!("{name}.log"),
        linux: Some(LinuxContainerConfig {
            security_context: Some(LinuxContainerSecurityContext {
                capabilities: Some(Capability {
                    add_capabilities: add.iter().map(|c| c.to_string()).collect(),
                    ..Default::default()
                }),
                seccomp: Some(SecurityProfile {
                    profile_type: profile as i32,
                    localhost_ref: String::new(),
                }),
                ..Default::default()
            }),
            resources: None,
        }),
        ..Default::default()
    }
}

/// Runs `sysprobe NR ARGS...` in container `id`; returns its stdout line.
async fn probe(rt: &mut Rt, id: &str, nr: i64, args: &[u64]) -> String {
    let mut cmd = vec!["sysprobe".to_string(), nr.to_string()];
    cmd.extend(args.iter().map(|a| a.to_string()));
    let r = rt
        .exec_sync(ExecSyncRequest {
            container_id: id.into(),
            cmd: cmd.clone(),
            timeout: 60,
        })
        .await
        .unwrap_or_else(|e| panic!("exec {cmd:?} in {id}: {e}"))
        .into_inner();
    let out = String::from_utf8_lossy(&r.stdout).trim().to_string();
    assert!(
        matches!(r.exit_code, 0 | 1),
        "{cmd:?} in {id}: exit {} stdout {out:?} stderr {:?}",
        r.exit_code,
        String::from_utf8_lossy(&r.stderr)
    );
    out
}

#[tokio::test]
async fn runtime_default_is_an_allow_list_in_a_real_pod() {
    let reg = Registry::start();
    reg.push_fixture(fixtures_dir(), "sysprobe", "sysprobe:latest");
    let cfg = format!("[registry.hosts.\"{}\"]\nplain-http = true\n", reg.addr());
    let daemon = Daemon::start_with_config(&test_config(&cfg)).await.unwrap();
    let image = format!("{}/sysprobe:latest", reg.addr());
    let mut images: ImageServiceClient<Channel> = daemon.images().await.unwrap();
    vmpod_tests::daemon::pull(&mut images, &image)
        .await
        .unwrap_or_else(|e| panic!("pull {image}: {e}"));

    let logs = tempfile::Builder::new()
        .prefix("vmpod-logs-")
        .tempdir()
        .unwrap();
    let mut rt = daemon.runtime().await.unwrap();
    let sandbox_config = PodSandboxConfig {
        metadata: Some(PodSandboxMetadata {
            name: "seccomp".into(),
            uid: "uid-seccomp".into(),
            namespace: "vmpod-test".into(),
            attempt: 0,
        }),
        hostname: "seccomp-host".into(),
        log_directory: logs.path().to_string_lossy().into(),
        ..Default::default()
    };
    let sandbox = rt
        .run_pod_sandbox(RunPodSandboxRequest {
            config: Some(sandbox_config.clone()),
            runtime_handler: String::new(),
        })
        .await
        .unwrap_or_else(|e| panic!("RunPodSandbox: {e}\n{}", daemon.log_text()))
        .into_inner()
        .pod_sandbox_id;

    use security_profile::ProfileType::{RuntimeDefault, Unconfined};
    let mut ids = Vec::new();
    for (name, profile, add) in [
        ("default", RuntimeDefault, &[][..]),
        ("default-admin", RuntimeDefault, &["CAP_SYS_ADMIN"][..]),
        ("unconfined-admin", Unconfined, &["CAP_SYS_ADMIN"][..]),
    ] {
        let id = rt
            .create_container(CreateContainerRequest {
                pod_sandbox_id: sandbox.clone(),
                config: Some(prober(&image, name, profile, add)),
                sandbox_config: Some(sandbox_config.clone()),
            })
            .await
            .unwrap_or_else(|e| panic!("CreateContainer {name}: {e}\n{}", daemon.log_text()))
            .into_inner()
            .container_id;
        rt.start_container(StartContainerRequest {
            container_id: id.clone(),
        })
        .await
        .unwrap_or_else(|e| panic!("StartContainer {name}: {e}\n{}", daemon.log_text()));
        ids.push(id);
    }
    let (default, admin, unconfined) = (&ids[0], &ids[1], &ids[2]);
    let is_eperm = |got: &str| got.starts_with("errno 1 EPERM");

    // Listed for no capability: the filter refuses it, the kernel would
    // not (migrate_pages(self, 0 nodes, NULL, NULL)).
    let migrate_pages = libc::SYS_migrate_pages;
    let got = probe(&mut rt, admin, migrate_pages, &[0, 0, 0, 0]).await;
    assert!(is_eperm(&got), "RuntimeDefault + SYS_ADMIN: {got}");
    let got = probe(&mut rt, unconfined, migrate_pages, &[0, 0, 0, 0]).await;
    assert!(!is_eperm(&got), "Unconfined + SYS_ADMIN: {got}");

    // Capability-gated: fanotify_init opens with CAP_SYS_ADMIN.
    let fanotify_init = libc::SYS_fanotify_init;
    let got = probe(&mut rt, default, fanotify_init, &[0, 0]).await;
    assert!(is_eperm(&got), "RuntimeDefault: {got}");
    for id in [admin, unconfined] {
        let got = probe(&mut rt, id, fanotify_init, &[0, 0]).await;
        assert!(!is_eperm(&got), "{id} with SYS_ADMIN: {got}");
    }
    let unshare_uts = [libc::CLONE_NEWUTS as u64];
    let got = probe(&mut rt, default, libc::SYS_unshare, &unshare_uts).await;
    assert!(is_eperm(&got), "RuntimeDefault: {got}");
    let got = probe(&mut rt, admin, libc::SYS_unshare, &unshare_uts).await;
    assert_eq!(got, "ok 0", "RuntimeDefault + SYS_ADMIN");

    // clone3 without CAP_SYS_ADMIN: ENOSYS from the filter, so that libc
    // falls back to clone; with it, the kernel's EINVAL for a 0-byte size.
    let got = probe(&mut rt, default, libc::SYS_clone3, &[0, 0]).await;
    assert!(got.starts_with("errno 38 ENOSYS"), "RuntimeDefault: {got}");
    let got = probe(&mut rt, admin, libc::SYS_clone3, &[0, 0]).await;
    assert!(
        got.starts_with("errno 22 EINVAL"),
        "RuntimeDefault + SYS_ADMIN: {got}"
    );

    // vsock is the agent's channel: refused under the profile whatever
    // the capabilities, while the kernel itself would hand one out.
    let vsock = [libc::AF_VSOCK as u64, libc::SOCK_STREAM as u64, 0];
    for id in [default, admin] {
        let got = probe(&mut rt, id, libc::SYS_socket, &vsock).await;
        assert!(got.starts_with("errno 97 EAFNOSUPPORT"), "{id}: {got}");
    }
    let got = probe(&mut rt, unconfined, libc::SYS_socket, &vsock).await;
    assert!(got.starts_with("ok "), "Unconfined: {got}");

    // An ordinary shell runs under the allow list.
    let r = rt
        .exec_sync(ExecSyncRequest {
            container_id: default.clone(),
            cmd: [
                "sh",
                "-c",
                "echo $(id -u) > /tmp/x && cat /tmp/x && ls / | wc -l",
            ]
            .map(String::from)
            .to_vec(),
            timeout: 60,
        })
        .await
        .unwrap_or_else(|e| panic!("exec sh: {e}"))
        .into_inner();
    assert_eq!(
        r.exit_code,
        0,
        "sh under RuntimeDefault: {}",
        String::from_utf8_lossy(&r.stderr)
    );
    assert!(String::from_utf8_lossy(&r.stdout).starts_with("0\n"));

    rt.stop_pod_sandbox(StopPodSandboxRequest {
        pod_sandbox_id: sandbox.clone(),
    })
    .await
    .unwrap();
    rt.remove_pod_sandbox(RemovePodSandboxRequest {
        pod_sandbox_id: sandbox,
    })
    .await
    .unwrap();
}
