//! Containers end to end: a real `vmpod serve` pulling the busybox fixtures
//! from a real loopback registry, real shims and VMs (QEMU/TCG on hosts
//! without hardware virtualization), and the containers run by the guest
//! agent inside each pod's VM, driven through CRI like kubelet does.
//!
//! VM boots are the expensive part under TCG, so each test boots one pod and
//! checks several behaviours in it.

use std::path::Path;
use std::time::{Duration, Instant};

use tonic::Code;
use tonic::transport::Channel;
use vmpod_cri_api::ImageServiceClient;
use vmpod_cri_api::v1::*;
use vmpod_tests::host::{cgroups_named, mounts_under, processes_mentioning};
use vmpod_tests::pod::Pod;

type Rt = vmpod_tests::pod::Rt;

/// The records of a CRI log file: (stream, tag, content).
fn log_records(path: &Path) -> Vec<(String, String, String)> {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    text.lines()
        .map(|l| {
            let mut parts = l.splitn(4, ' ');
            let ts = parts.next().unwrap_or_default();
            assert!(
                ts.ends_with('Z') && ts.contains('T'),
                "not an RFC3339 timestamp: {l:?}"
            );
            (
                parts.next().unwrap_or_default().to_string(),
                parts.next().unwrap_or_default().to_string(),
                parts.next().unwrap_or_default().to_string(),
            )
        })
        .collect()
}

async fn wait_for_log(path: &Path, needle: &str, limit: Duration) {
    let t0 = Instant::now();
    while !std::fs::read_to_string(path)
        .unwrap_or_default()
        .contains(needle)
    {
        assert!(
            t0.elapsed() < limit,
            "{needle:?} not in {} after {limit:?}: {:?}",
            path.display(),
            std::fs::read_to_string(path).unwrap_or_default()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn logs_exit_codes_and_process_config() {
    let mut pod = Pod::start("basics", "", None).await;

    // stdout and stderr land in the CRI log with their stream tags.
    let id = pod
        .run(pod.config(
            "echo",
            &[
                "sh",
                "-c",
                "echo out-line; echo err-line >&2; printf partial",
            ],
        ))
        .await;
    let s = pod.wait_exit(&id, Duration::from_secs(30)).await;
    assert_eq!((s.exit_code, s.reason.as_str()), (0, "Completed"));
    // Times come from one clock: the guest's is set from the host's.
    assert!(
        s.created_at > 0 && s.started_at >= s.created_at && s.finished_at >= s.started_at,
        "created {} started {} finished {}",
        s.created_at,
        s.started_at,
        s.finished_at
    );
    wait_for_log(&pod.log_path("echo"), "partial", Duration::from_secs(5)).await;
    let recs = log_records(&pod.log_path("echo"));
    assert!(
        recs.contains(&("stdout".into(), "F".into(), "out-line".into())),
        "{recs:?}"
    );
    assert!(
        recs.contains(&("stderr".into(), "F".into(), "err-line".into())),
        "{recs:?}"
    );
    assert!(
        recs.contains(&("stdout".into(), "P".into(), "partial".into())),
        "{recs:?}"
    );
    assert_eq!(s.log_path, pod.log_path("echo").to_string_lossy());

    // A failing command: exit code 3, reason Error.
    let id = pod.run(pod.config("three", &["sh", "-c", "exit 3"])).await;
    let s = pod.wait_exit(&id, Duration::from_secs(30)).await;
    assert_eq!((s.exit_code, s.reason.as_str()), (3, "Error"));

    // The image's USER, ENV, WORKDIR and ENTRYPOINT/CMD.
    let c = pod.config_of(&pod.config_image, "image-config", &[]);
    let id = pod.run(c).await;
    pod.wait_exit(&id, Duration::from_secs(30)).await;
    wait_for_log(
        &pod.log_path("image-config"),
        "from-image",
        Duration::from_secs(5),
    )
    .await;

    let c = pod.config_of(
        &pod.config_image,
        "image-env",
        &["sh", "-c", "echo \"$(id -u):$(id -g) $(pwd) $GREETING\""],
    );
    let id = pod.run(c).await;
    pod.wait_exit(&id, Duration::from_secs(30)).await;
    wait_for_log(
        &pod.log_path("image-env"),
        "1000:1000 /home/app hello",
        Duration::from_secs(5),
    )
    .await;

    // The CRI config beats the image: user, group, workdir, env.
    let mut c = pod.config_of(
        &pod.config_image,
        "cri-config",
        &[
            "sh",
            "-c",
            "echo \"$(id -u):$(id -g) $(id -G) $(pwd) $GREETING\"",
        ],
    );
    c.working_dir = "/tmp/work".into();
    c.envs = vec![KeyValue {
        key: "GREETING".into(),
        value: b"from-cri".to_vec(),
    }];
    c.linux = Some(LinuxContainerConfig {
        security_context: Some(LinuxContainerSecurityContext {
            run_as_user: Some(Int64Value { value: 4242 }),
            run_as_group: Some(Int64Value { value: 4343 }),
            supplemental_groups: vec![77],
            ..Default::default()
        }),
        resources: None,
    });
    let id = pod.run(c).await;
    pod.wait_exit(&id, Duration::from_secs(30)).await;
    wait_for_log(
        &pod.log_path("cri-config"),
        "4242:4343",
        Duration::from_secs(5),
    )
    .await;
    let text = std::fs::read_to_string(pod.log_path("cri-config")).unwrap();
    assert!(
        text.contains("77") && text.contains("/tmp/work from-cri"),
        "{text}"
    );

    // A missing binary fails StartContainer with the agent's message, and
    // the container is then exited.
    let id = pod
        .create(pod.config("missing", &["no-such-binary"]))
        .await
        .unwrap();
    let e = pod.start_container(&id).await.unwrap_err();
    assert!(
        e.message().contains("executable file not found"),
        "{}: {}",
        e.code(),
        e.message()
    );
    assert!(e.message().contains("no-such-binary"), "{}", e.message());
    let s = pod.status(&id).await;
    assert_eq!(s.state(), ContainerState::ContainerExited);
    assert_ne!(s.exit_code, 0);
    assert_eq!(
        s.started_at, 0,
        "a container that never ran has no start time"
    );
    assert!(s.message.contains("no-such-binary"), "{s:?}");

    // A second start is refused; removing a running container kills it
    // (CRI: "must be forcibly removed").
    let id = pod.run(pod.config("sleeper", &["sleep", "600"])).await;
    let e = pod.start_container(&id).await.unwrap_err();
    assert_eq!(e.code(), Code::FailedPrecondition, "{e}");
    let doomed = pod.run(pod.config("doomed", &["sleep", "601"])).await;
    pod.rt
        .remove_container(RemoveContainerRequest {
            container_id: doomed.clone(),
        })
        .await
        .unwrap();
    let e = pod
        .rt
        .container_status(ContainerStatusRequest {
            container_id: doomed,
            verbose: false,
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::NotFound, "{e}");
    assert!(!pod.sh(&id, "ps").await.contains("sleep 601"));

    // List filters.
    let list = pod
        .rt
        .list_containers(ListContainersRequest {
            filter: Some(ContainerFilter {
                state: Some(ContainerStateValue {
                    state: ContainerState::ContainerRunning.into(),
                }),
                pod_sandbox_id: pod.sandbox.clone(),
                ..Default::default()
            }),
        })
        .await
        .unwrap()
        .into_inner()
        .containers;
    assert_eq!(list.len(), 1, "{list:?}");
    assert_eq!(list[0].id, id);
    let all = pod
        .rt
        .list_containers(ListContainersRequest { filter: None })
        .await
        .unwrap()
        .into_inner()
        .containers;
    assert_eq!(all.len(), 7, "{all:?}");

    pod.stop(&id, 0).await;
    let s = pod.status(&id).await;
    assert_eq!(s.state(), ContainerState::ContainerExited);
    assert_eq!(s.exit_code, 137);
    pod.rt
        .remove_container(RemoveContainerRequest { container_id: id })
        .await
        .unwrap();

    // The image stays while containers made from it exist, and goes once
    // they are removed with their pod.
    let mut images: ImageServiceClient<Channel> = pod.daemon.images().await.unwrap();
    let spec = |image: &str| {
        Some(ImageSpec {
            image: image.to_string(),
            ..Default::default()
        })
    };
    let e = images
        .remove_image(RemoveImageRequest {
            image: spec(&pod.busybox),
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::FailedPrecondition, "{e}");
    assert!(e.message().contains("used by"), "{e}");
    pod.remove_pod().await;
    images
        .remove_image(RemoveImageRequest {
            image: spec(&pod.busybox),
        })
        .await
        .unwrap();
    let left = images
        .image_status(ImageStatusRequest {
            image: spec(&pod.busybox),
            verbose: false,
        })
        .await
        .unwrap()
        .into_inner();
    assert!(left.image.is_none(), "{left:?}");
}

#[tokio::test]
async fn bad_requests_name_the_problem() {
    let mut pod = Pod::start("bad", "", None).await;
    let mut c = pod.config("unpulled", &["true"]);
    c.image = Some(ImageSpec {
        image: "127.0.0.1:1/never-pulled:latest".into(),
        ..Default::default()
    });
    let e = pod.create(c).await.unwrap_err();
    assert_eq!(e.code(), Code::NotFound, "{e}");
    assert!(e.message().contains("never-pulled"), "{e}");

    for bad in ["relative/path", "/a/../../etc"] {
        let mut c = pod.config("badmount", &["true"]);
        c.mounts = vec![Mount {
            container_path: bad.into(),
            host_path: "/tmp".into(),
            ..Default::default()
        }];
        let e = pod.create(c).await.unwrap_err();
        assert_eq!(e.code(), Code::InvalidArgument, "{e}");
        assert!(e.message().starts_with("mounts[0].container_path"), "{e}");
    }
    let mut c = pod.config("nohost", &["true"]);
    c.mounts = vec![Mount {
        container_path: "/data".into(),
        host_path: "/nonexistent/vmpod-hostpath".into(),
        ..Default::default()
    }];
    let e = pod.create(c).await.unwrap_err();
    assert!(e.message().contains("/nonexistent/vmpod-hostpath"), "{e}");

    let mut rt = pod.rt.clone();
    let e = rt
        .create_container(CreateContainerRequest {
            pod_sandbox_id: "no-such-sandbox".into(),
            config: Some(pod.config("x", &["true"])),
            sandbox_config: None,
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::FailedPrecondition, "{e}");
    // Nothing half-made is left listed.
    let all = rt
        .list_containers(ListContainersRequest { filter: None })
        .await
        .unwrap()
        .into_inner()
        .containers;
    assert!(all.is_empty(), "{all:?}");

    rt.stop_pod_sandbox(StopPodSandboxRequest {
        pod_sandbox_id: pod.sandbox.clone(),
    })
    .await
    .unwrap();
    let e = pod.create(pod.config("late", &["true"])).await.unwrap_err();
    assert_eq!(e.code(), Code::FailedPrecondition, "{e}");
    pod.remove_pod().await;
}

#[tokio::test]
async fn rootfs_and_mounts() {
    let mut pod = Pod::start("mounts", "", None).await;
    let host = tempfile::tempdir().unwrap();
    std::fs::write(host.path().join("file.txt"), "host-file\n").unwrap();
    std::fs::create_dir(host.path().join("dir")).unwrap();
    std::fs::write(host.path().join("dir/inside"), "host-dir\n").unwrap();
    std::fs::create_dir(host.path().join("rw")).unwrap();

    let mut c = pod.config("ro", &["sleep", "600"]);
    c.mounts = vec![
        Mount {
            container_path: "/etc/hostfile".into(),
            host_path: host.path().join("file.txt").to_string_lossy().into(),
            readonly: true,
            ..Default::default()
        },
        Mount {
            container_path: "/mnt/dir".into(),
            host_path: host.path().join("dir").to_string_lossy().into(),
            readonly: true,
            ..Default::default()
        },
        Mount {
            container_path: "/mnt/rw".into(),
            host_path: host.path().join("rw").to_string_lossy().into(),
            ..Default::default()
        },
    ];
    c.linux = Some(LinuxContainerConfig {
        security_context: Some(LinuxContainerSecurityContext {
            readonly_rootfs: true,
            ..Default::default()
        }),
        resources: None,
    });
    let id = pod.run(c).await;
    assert_eq!(
        pod.sh(&id, "cat /etc/hostfile /mnt/dir/inside").await,
        "host-file\nhost-dir\n"
    );
    // Read-only root, read-only mounts.
    for target in ["/newfile", "/etc/hostfile", "/mnt/dir/new"] {
        let r = pod
            .exec(&id, &["sh", "-c", &format!("echo x > {target}")], 30)
            .await
            .unwrap();
        assert_ne!(r.exit_code, 0, "writing {target} must fail");
        let err = String::from_utf8_lossy(&r.stderr);
        assert!(err.contains("Read-only file system"), "{target}: {err}");
    }
    // A writable mount writes through to the host.
    pod.sh(&id, "echo from-guest > /mnt/rw/out").await;
    assert_eq!(
        std::fs::read_to_string(host.path().join("rw/out")).unwrap(),
        "from-guest\n"
    );

    // A writable root keeps writes in the container's own upper dir.
    let id2 = pod.run(pod.config("rw", &["sleep", "600"])).await;
    pod.sh(&id2, "echo hi > /newfile && cat /newfile").await;
    let id3 = pod.run(pod.config("rw2", &["sleep", "600"])).await;
    let r = pod.exec(&id3, &["cat", "/newfile"], 30).await.unwrap();
    assert_ne!(
        r.exit_code, 0,
        "one container's writes leak into another's root"
    );

    // RemovePodSandbox with running containers leaves no overlay or upper
    // dir on the host.
    let pod_dir = pod.daemon.state_dir.join("pods");
    assert!(
        mounts_under(&pod_dir)
            .iter()
            .any(|m| m.ends_with("/rootfs")),
        "expected container overlays under {}: {:?}",
        pod_dir.display(),
        mounts_under(&pod_dir)
    );
    pod.remove_pod().await;
    assert!(
        mounts_under(&pod_dir).is_empty(),
        "{:?}",
        mounts_under(&pod_dir)
    );
    assert!(
        std::fs::read_dir(&pod_dir).map_or(true, |mut d| d.next().is_none()),
        "pod dirs left in {}",
        pod_dir.display()
    );
    let list = pod
        .rt
        .list_containers(ListContainersRequest { filter: None })
        .await
        .unwrap()
        .into_inner()
        .containers;
    assert!(list.is_empty(), "{list:?}");
    // The host file was bind-mounted, never copied or changed.
    assert_eq!(
        std::fs::read_to_string(host.path().join("file.txt")).unwrap(),
        "host-file\n"
    );
}

#[tokio::test]
async fn pod_namespaces_are_shared() {
    let mut pod = Pod::start(
        "shared",
        "",
        Some(LinuxPodSandboxConfig {
            security_context: Some(LinuxSandboxSecurityContext {
                namespace_options: Some(NamespaceOption {
                    pid: NamespaceMode::Pod.into(),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        }),
    )
    .await;
    let pod_pid = |mut c: ContainerConfig| {
        c.linux = Some(LinuxContainerConfig {
            security_context: Some(LinuxContainerSecurityContext {
                namespace_options: Some(NamespaceOption {
                    pid: NamespaceMode::Pod.into(),
                    ipc: NamespaceMode::Pod.into(),
                    network: NamespaceMode::Pod.into(),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            resources: None,
        });
        c
    };
    let a = pod.run(pod_pid(pod.config("a", &["sleep", "601"]))).await;
    let b = pod.run(pod_pid(pod.config("b", &["sleep", "602"]))).await;
    // Same network (localhost) and IPC namespaces.
    for ns in ["net", "ipc", "pid"] {
        let cmd = format!("readlink /proc/self/ns/{ns}");
        let na = pod.sh(&a, &cmd).await;
        let nb = pod.sh(&b, &cmd).await;
        assert_eq!(na, nb, "{ns} namespace differs");
    }
    // The shared network has a working loopback: b reaches a server in a
    // over localhost.
    pod.sh(
        &a,
        "mkdir -p /tmp/www && echo hello-from-a > /tmp/www/index.html && httpd -p 127.0.0.1:7070 -h /tmp/www",
    )
    .await;
    let got = pod.sh(&b, "wget -q -O - http://127.0.0.1:7070/").await;
    assert_eq!(got.trim(), "hello-from-a", "localhost between containers");
    // PID POD: each sees the other's process.
    let ps = pod.sh(&a, "ps").await;
    assert!(ps.contains("sleep 602") && ps.contains("sleep 601"), "{ps}");
    // The hostname, DNS config and hosts file are the pod's.
    assert_eq!(pod.sh(&a, "hostname").await.trim(), "shared-host");
    let resolv = pod.sh(&a, "cat /etc/resolv.conf").await;
    assert!(
        resolv.contains("nameserver 10.96.0.10") && resolv.contains("vmpod-test.svc.cluster.local"),
        "{resolv}"
    );
    let hosts = pod.sh(&b, "cat /etc/hosts").await;
    assert!(hosts.contains("shared-host"), "{hosts}");

    // PID CONTAINER: its own namespace, the command is PID 1.
    let mut c = pod.config("own", &["sleep", "603"]);
    c.linux = Some(LinuxContainerConfig {
        security_context: Some(LinuxContainerSecurityContext {
            namespace_options: Some(NamespaceOption {
                pid: NamespaceMode::Container.into(),
                ..Default::default()
            }),
            ..Default::default()
        }),
        resources: None,
    });
    let own = pod.run(c).await;
    let ps = pod.sh(&own, "ps").await;
    assert!(!ps.contains("sleep 601"), "{ps}");
    assert!(
        ps.lines()
            .any(|l| l.trim_start().starts_with("1 ") && l.contains("sleep 603")),
        "{ps}"
    );
    pod.remove_pod().await;
}

#[tokio::test]
async fn limits_stop_exec_and_stats() {
    let mut pod = Pod::start("limits", "", None).await;

    // 32 MiB limit, a shell that doubles a string until it is killed.
    let c = pod.oom_config("oom");
    let id = pod.run(c).await;
    let s = pod.wait_exit(&id, Duration::from_secs(60)).await;
    assert_eq!(s.reason, "OOMKilled", "{s:?}");

    // A process that ignores SIGTERM is killed after the 2 s grace.
    let id = pod
        .run(pod.config(
            "stubborn",
            &[
                "sh",
                "-c",
                "trap '' TERM; echo ready; while true; do sleep 1; done",
            ],
        ))
        .await;
    wait_for_log(&pod.log_path("stubborn"), "ready", Duration::from_secs(20)).await;
    let t0 = Instant::now();
    pod.stop(&id, 2).await;
    let took = t0.elapsed();
    let s = pod.status(&id).await;
    assert_eq!(s.state(), ContainerState::ContainerExited);
    assert_eq!(s.exit_code, 137, "{s:?}");
    // The agent times the grace with the guest's clock, which under TCG
    // runs up to a few percent off the host's.
    assert!(
        took >= Duration::from_millis(1800) && took < Duration::from_secs(10),
        "stop took {took:?}"
    );

    // ExecSync: output, exit code, and the timeout kills the command.
    let id = pod.run(pod.config("work", &["sleep", "600"])).await;
    let r = pod
        .exec(
            &id,
            &["sh", "-c", "echo to-out; echo to-err >&2; exit 7"],
            30,
        )
        .await
        .unwrap();
    assert_eq!(
        (r.stdout.as_slice(), r.stderr.as_slice(), r.exit_code),
        (&b"to-out\n"[..], &b"to-err\n"[..], 7)
    );
    let t0 = Instant::now();
    let e = pod
        .exec(&id, &["sh", "-c", "sleep 300; echo never"], 2)
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::DeadlineExceeded, "{e}");
    assert!(t0.elapsed() < Duration::from_secs(12), "{:?}", t0.elapsed());
    let ps = pod.sh(&id, "ps").await;
    assert!(
        !ps.contains("sleep 300"),
        "the timed-out command lives on: {ps}"
    );

    // UpdateContainerResources reaches the guest cgroup.
    pod.rt
        .update_container_resources(UpdateContainerResourcesRequest {
            container_id: id.clone(),
            linux: Some(LinuxContainerResources {
                memory_limit_in_bytes: 64 << 20,
                ..Default::default()
            }),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(
        pod.sh(&id, "cat /sys/fs/cgroup/memory.max").await.trim(),
        (64u64 << 20).to_string()
    );

    // Stats are there and grow with load.
    let stats = |rt: &mut Rt, id: String| {
        let mut rt = rt.clone();
        async move {
            rt.container_stats(ContainerStatsRequest { container_id: id })
                .await
                .unwrap()
                .into_inner()
                .stats
                .unwrap()
        }
    };
    let before = stats(&mut pod.rt, id.clone()).await;
    let cpu0 = before
        .cpu
        .as_ref()
        .unwrap()
        .usage_core_nano_seconds
        .unwrap()
        .value;
    let mem0 = before
        .memory
        .as_ref()
        .unwrap()
        .working_set_bytes
        .unwrap()
        .value;
    assert!(cpu0 > 0 && mem0 > 0, "{before:?}");
    pod.sh(&id, "i=0; while [ $i -lt 20000 ]; do i=$((i+1)); done; dd if=/dev/zero of=/tmp/fill bs=1024 count=8192 2>/dev/null").await;
    let after = stats(&mut pod.rt, id.clone()).await;
    let cpu1 = after
        .cpu
        .as_ref()
        .unwrap()
        .usage_core_nano_seconds
        .unwrap()
        .value;
    assert!(cpu1 > cpu0, "cpu {cpu0} -> {cpu1}");
    let wl = after
        .writable_layer
        .as_ref()
        .unwrap()
        .used_bytes
        .unwrap()
        .value;
    assert!(
        wl >= 8 << 20,
        "writable layer {wl} bytes after writing 8 MiB"
    );
    let pod_stats = pod
        .rt
        .pod_sandbox_stats(PodSandboxStatsRequest {
            pod_sandbox_id: pod.sandbox.clone(),
        })
        .await
        .unwrap()
        .into_inner()
        .stats
        .unwrap();
    let linux = pod_stats.linux.unwrap();
    // The pod's memory is the host's accounting of its VM processes, not
    // what the guest says: the guest RAM the VMM touched (tens of MiB for
    // a booted kernel and agent) is more than the guest counts in its
    // containers, and matches the pod's host cgroup.
    let pod_memory = linux.memory.unwrap();
    let pod_ws = pod_memory.working_set_bytes.unwrap().value;
    let containers_ws: u64 = linux
        .containers
        .iter()
        .map(|c| c.memory.as_ref().unwrap().working_set_bytes.unwrap().value)
        .sum();
    assert!(pod_ws > 10 << 20, "pod working set {pod_ws} bytes");
    assert!(
        pod_ws > containers_ws,
        "pod working set {pod_ws} <= its containers' {containers_ws}"
    );
    let host_usage = cgroups_named(&format!("vmpod-{}", &pod.sandbox[..16]))
        .iter()
        .find_map(|dir| {
            ["memory.current", "memory.usage_in_bytes"]
                .iter()
                .find_map(|f| std::fs::read_to_string(Path::new(dir).join(f)).ok())
        })
        .and_then(|t| t.trim().parse::<u64>().ok())
        .expect("the pod's host cgroup accounts memory");
    let pod_usage = pod_memory.usage_bytes.unwrap().value;
    assert!(
        pod_usage.abs_diff(host_usage) < host_usage / 4 + (4 << 20),
        "pod usage {pod_usage} bytes, its host cgroup {host_usage}"
    );
    let pod_cpu = linux.cpu.unwrap().usage_core_nano_seconds.unwrap().value;
    assert!(
        pod_cpu > cpu1,
        "pod CPU {pod_cpu} ns is not more than a container's {cpu1}: not the VM's"
    );
    assert!(
        linux
            .containers
            .iter()
            .any(|c| c.attributes.as_ref().unwrap().id == id)
    );
    let list = pod
        .rt
        .list_container_stats(ListContainerStatsRequest { filter: None })
        .await
        .unwrap()
        .into_inner()
        .stats;
    assert!(list.iter().any(|s| s.attributes.as_ref().unwrap().id == id));

    // The metrics calls: every metric a container reports is described, and
    // its working set is the one the stats call sees (non-zero).
    let described: Vec<String> = pod
        .rt
        .list_metric_descriptors(ListMetricDescriptorsRequest {})
        .await
        .unwrap()
        .into_inner()
        .descriptors
        .into_iter()
        .map(|d| d.name)
        .collect();
    let metrics = pod
        .rt
        .list_pod_sandbox_metrics(ListPodSandboxMetricsRequest {})
        .await
        .unwrap()
        .into_inner()
        .pod_metrics;
    let ours = metrics
        .iter()
        .find(|m| m.pod_sandbox_id == pod.sandbox)
        .unwrap_or_else(|| panic!("no metrics for the pod: {metrics:?}"));
    let work = ours
        .container_metrics
        .iter()
        .find(|c| c.container_id == id)
        .unwrap_or_else(|| panic!("no metrics for the container: {ours:?}"));
    for m in &work.metrics {
        assert!(described.contains(&m.name), "{} is not described", m.name);
        assert_eq!(m.label_values, ["work"]);
    }
    let ws = work
        .metrics
        .iter()
        .find(|m| m.name == "container_memory_working_set_bytes")
        .and_then(|m| m.value)
        .map(|v| v.value);
    assert!(ws.is_some_and(|v| v > 0), "{work:?}");
    pod.remove_pod().await;
}

#[tokio::test]
async fn logs_survive_a_daemon_kill() {
    let mut pod = Pod::start("restart", "", None).await;
    let id = pod
        .run(pod.config(
            "ticker",
            &[
                "sh",
                "-c",
                "i=0; while true; do i=$((i+1)); echo line-$i; sleep 0.05; done",
            ],
        ))
        .await;
    wait_for_log(&pod.log_path("ticker"), "line-5\n", Duration::from_secs(20)).await;
    let before = log_records(&pod.log_path("ticker")).len();
    // SIGKILL, then a new daemon on the same state: the shim and the log
    // relay never stopped.
    pod.daemon.restart().await.unwrap();
    pod.rt = pod.daemon.runtime().await.unwrap();
    let s = pod.status(&id).await;
    assert_eq!(s.state(), ContainerState::ContainerRunning);
    let target = format!("line-{}\n", before + 10);
    wait_for_log(&pod.log_path("ticker"), &target, Duration::from_secs(60)).await;
    pod.stop(&id, 0).await;
    // Every line from 1 to the last one is there, in order, once.
    let lines: Vec<u64> = log_records(&pod.log_path("ticker"))
        .into_iter()
        .map(|(stream, tag, content)| {
            assert_eq!((stream.as_str(), tag.as_str()), ("stdout", "F"));
            content
                .strip_prefix("line-")
                .and_then(|n| n.parse().ok())
                .unwrap_or_else(|| panic!("unexpected record {content:?}"))
        })
        .collect();
    assert!(lines.len() >= before + 10, "{} lines", lines.len());
    for (i, n) in lines.iter().enumerate() {
        assert_eq!(*n, i as u64 + 1, "line {i} is {n}: lost or repeated");
    }
    pod.remove_pod().await;
}

#[tokio::test]
async fn vm_death_turns_containers_exited() {
    let mut pod = Pod::start("death", "", None).await;
    let id = pod.run(pod.config("victim", &["sleep", "600"])).await;
    let info = pod
        .rt
        .pod_sandbox_status(PodSandboxStatusRequest {
            pod_sandbox_id: pod.sandbox.clone(),
            verbose: true,
        })
        .await
        .unwrap()
        .into_inner();
    let info: serde_json::Value = serde_json::from_str(&info.info["info"]).unwrap();
    let vmm = info["vmPid"]
        .as_u64()
        .filter(|p| *p > 0)
        .unwrap_or_else(|| panic!("no vmPid in {info}"));
    let procs = processes_mentioning(&pod.sandbox[..16]);
    assert!(
        procs.iter().any(|(pid, _)| u64::from(*pid) == vmm),
        "vmPid {vmm} is not one of the pod's processes: {procs:?}"
    );
    // SAFETY: kill(2) of the VMM process of our test pod.
    unsafe { libc::kill(vmm as i32, libc::SIGKILL) };
    let t0 = Instant::now();
    loop {
        match pod
            .rt
            .exec_sync(ExecSyncRequest {
                container_id: id.clone(),
                cmd: vec!["true".into()],
                timeout: 5,
            })
            .await
        {
            Err(e) if e.code() == Code::Unavailable || e.code() == Code::FailedPrecondition => {
                break;
            }
            other => assert!(
                t0.elapsed() < Duration::from_secs(20),
                "exec after VM death: {other:?}"
            ),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let s = pod.wait_exit(&id, Duration::from_secs(20)).await;
    assert_eq!(s.reason, "Error", "{s:?}");
    assert!(!s.message.is_empty());
    pod.remove_pod().await;
}
