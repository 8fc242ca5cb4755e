//! Real containers on this host, through the registry API, with the real
//! agent binary as the helper.
//!
//! They need root (namespaces, mounts, cgroups), as the project's machines
//! and CI have; without it each test says so and returns. The root is a
//! busybox tree built in a temporary directory. The host's cgroup v2
//! hierarchy (wherever mountinfo says it is) stands in for the guest's;
//! where the host keeps its controllers in cgroup v1, the limit checks say
//! so and check only what works without controllers.

use std::collections::BTreeMap;
use std::os::unix::fs::symlink;
use std::path::{Path, PathBuf};
use std::sync::{LazyLock, OnceLock};
use std::time::Duration;

use tokio::runtime::Runtime;
use tokio_stream::StreamExt;
use tonic::Code;
use vmpod_agent::container::{Config, Containers, find_cgroup2_mount};
use vmpod_agent::reaper;
use vmpod_agent_proto::v1::{
    ContainerSpec, ContainerState, ExecSyncRequest, Mount, NamespaceMode, Namespaces, OutputStream,
    Process, Resources, Seccomp, Security, User, seccomp,
};

/// One runtime for all tests: the SIGCHLD reaper is per process and lives
/// on it.
static RT: LazyLock<Runtime> = LazyLock::new(|| {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime")
});

fn rt() -> &'static Runtime {
    static REAPER: OnceLock<()> = OnceLock::new();
    REAPER.get_or_init(|| RT.block_on(async { reaper::install().expect("reaper") }));
    &RT
}

const BUSYBOX: &str = "/bin/busybox";
const APPLETS: &[&str] = &[
    "sh", "echo", "cat", "sleep", "id", "ls", "pwd", "touch", "mkdir", "env", "true", "false",
    "kill", "ps", "grep", "test", "printf", "head", "yes", "wc", "tty", "stat", "unshare", "trap",
    "chown", "tr",
];

struct Fixture {
    _dir: tempfile::TempDir,
    base: PathBuf,
    rootfs: PathBuf,
    containers: Containers,
    cgroup_parent: PathBuf,
}

impl Fixture {
    /// None (after saying why) when this machine cannot run containers.
    fn new(name: &str) -> Option<Fixture> {
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            eprintln!("SKIP {name}: containers need root");
            return None;
        }
        if !Path::new(BUSYBOX).exists() {
            eprintln!("SKIP {name}: {BUSYBOX} (Debian busybox-static) is missing");
            return None;
        }
        let cgroup_root = find_cgroup2_mount().expect("no cgroup2 mount on this host");
        let dir = tempfile::tempdir().expect("tempdir");
        let base = dir.path().to_path_buf();
        let rootfs = base.join("rootfs");
        for d in [
            "bin", "etc", "proc", "dev", "sys", "tmp", "root", "home/app",
        ] {
            std::fs::create_dir_all(rootfs.join(d)).unwrap();
        }
        std::fs::copy(BUSYBOX, rootfs.join("bin/busybox")).unwrap();
        for a in APPLETS {
            symlink("busybox", rootfs.join("bin").join(a)).unwrap();
        }
        std::fs::write(
            rootfs.join("etc/passwd"),
            "root:x:0:0:root:/root:/bin/sh\napp:x:1000:1000:app:/home/app:/bin/sh\n",
        )
        .unwrap();
        std::fs::write(
            rootfs.join("etc/group"),
            "root:x:0:\napp:x:1000:\nextra:x:2000:app\n",
        )
        .unwrap();
        let parent = format!("vmpod-test-{}-{name}", std::process::id());
        let config = Config {
            helper: PathBuf::from(env!("CARGO_BIN_EXE_vmpod-agent")),
            cgroup_root: cgroup_root.clone(),
            cgroup_parent: parent.clone(),
            setup_timeout: Duration::from_secs(30),
        };
        Some(Fixture {
            _dir: dir,
            base,
            rootfs,
            containers: Containers::new(config),
            cgroup_parent: cgroup_root.join(parent),
        })
    }

    fn spec(&self, id: &str, args: &[&str]) -> ContainerSpec {
        ContainerSpec {
            id: id.into(),
            rootfs: self.rootfs.to_string_lossy().into_owned(),
            process: Some(Process {
                args: args.iter().map(|s| s.to_string()).collect(),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    /// Create + start; then all output and the exit status.
    async fn run(&self, spec: ContainerSpec) -> (String, String, i32) {
        let id = spec.id.clone();
        self.containers.create(spec).await.expect("create");
        self.containers.start(&id).await.expect("start");
        let (out, err) = self.output(&id).await;
        let st = self.wait(&id).await;
        (out, err, st.exit_code)
    }

    async fn output(&self, id: &str) -> (String, String) {
        let mut stream = self.containers.read_output(id).expect("read_output");
        let (mut out, mut err) = (Vec::new(), Vec::new());
        let collect = async {
            while let Some(chunk) = stream.next().await {
                let chunk = chunk.expect("chunk");
                if chunk.stream == OutputStream::Stderr as i32 {
                    err.extend(chunk.data);
                } else {
                    out.extend(chunk.data);
                }
            }
        };
        tokio::time::timeout(Duration::from_secs(30), collect)
            .await
            .expect("output did not end");
        (
            String::from_utf8_lossy(&out).into_owned(),
            String::from_utf8_lossy(&err).into_owned(),
        )
    }

    async fn wait(&self, id: &str) -> vmpod_agent_proto::v1::ContainerStatus {
        let st = self
            .containers
            .wait(id, Duration::from_secs(30))
            .await
            .expect("wait");
        assert_eq!(st.state, ContainerState::ContainerExited as i32, "{st:?}");
        st
    }
}

impl Drop for Fixture {
    fn drop(&mut self) {
        rt().block_on(self.containers.shutdown());
        assert!(
            !self.cgroup_parent.exists() || std::thread::panicking(),
            "cgroup {} left behind",
            self.cgroup_parent.display()
        );
    }
}

fn node_pid(spec: &mut ContainerSpec) {
    spec.namespaces = Some(Namespaces {
        pid: NamespaceMode::NamespaceNode as i32,
        ipc: NamespaceMode::NamespaceNode as i32,
    });
}

#[test]
fn output_streams_and_exit_code() {
    let Some(f) = Fixture::new("output") else {
        return;
    };
    rt().block_on(async {
        let spec = f.spec(
            "out1",
            &["sh", "-c", "echo to-out; echo to-err >&2; exit 3"],
        );
        let created = f.containers.create(spec).await.unwrap();
        assert_eq!(created.state, ContainerState::ContainerCreated as i32);
        assert!(created.pid > 0);
        // Output written before anyone reads it is kept.
        let started = f.containers.start("out1").await.unwrap();
        assert!(started.started_at_ns > 0);
        f.containers.wait("out1", Duration::ZERO).await.unwrap();
        let (out, err) = f.output("out1").await;
        assert_eq!(out, "to-out\n");
        assert_eq!(err, "to-err\n");
        let st = f.wait("out1").await;
        assert_eq!(st.exit_code, 3);
        assert!(st.finished_at_ns >= st.started_at_ns);
        assert_eq!(f.containers.list().len(), 1);

        let e = f.containers.start("out1").await.unwrap_err();
        assert_eq!(e.code(), Code::FailedPrecondition);
        let e = f
            .containers
            .create(f.spec("out1", &["true"]))
            .await
            .unwrap_err();
        assert_eq!(e.code(), Code::AlreadyExists);
        f.containers.remove("out1").await.unwrap();
        let e = f.containers.status("out1").unwrap_err();
        assert_eq!(e.code(), Code::NotFound);
        assert!(!f.cgroup_parent.join("out1").exists());
    });
}

#[test]
fn missing_binary_fails_start_with_the_reason() {
    let Some(f) = Fixture::new("missing") else {
        return;
    };
    rt().block_on(async {
        f.containers
            .create(f.spec("miss", &["no-such-command", "x"]))
            .await
            .unwrap();
        let e = f.containers.start("miss").await.unwrap_err();
        assert_eq!(e.code(), Code::FailedPrecondition);
        assert_eq!(
            e.message(),
            "exec: \"no-such-command\": executable file not found in $PATH"
        );
        let st = f.wait("miss").await;
        assert_eq!(st.exit_code, 127);
        assert_eq!(st.message, e.message());
    });
}

#[test]
fn env_cwd_and_user_from_passwd() {
    let Some(f) = Fixture::new("user") else {
        return;
    };
    rt().block_on(async {
        let mut spec = f.spec(
            "user1",
            &["sh", "-c", "echo $FOO; pwd; id -u; id -g; id -G; echo $HOME; echo $PATH; grep CapEff /proc/self/status; grep -E '^Sig(Ign|Blk)' /proc/$$/status"],
        );
        let p = spec.process.as_mut().unwrap();
        p.env = vec!["FOO=bar".into()];
        p.cwd = "/work/dir".into();
        p.user = Some(User {
            username: "app".into(),
            ..Default::default()
        });
        let (out, err, code) = f.run(spec).await;
        assert_eq!(err, "");
        assert_eq!(code, 0);
        let lines: Vec<&str> = out.lines().collect();
        assert!(lines.len() == 10, "{out}");
        assert_eq!(
            lines,
            [
                "bar",
                "/work/dir",
                "1000",
                "1000",
                "1000 2000",
                "/home/app",
                "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
                "CapEff:\t0000000000000000",
                // Nothing ignored or blocked is inherited from the agent
                // (SIGQUIT is busybox sh's own doing, as on any host).
                "SigBlk:\t0000000000000000",
                "SigIgn:\t0000000000000004",
            ]
        );
        assert!(f.rootfs.join("work/dir").is_dir());

        // Root gets the default capabilities; an unknown user is refused
        // by name before anything runs.
        let (out, _, _) = f
            .run(f.spec("user2", &["sh", "-c", "grep -E 'CapEff|CapBnd' /proc/self/status"]))
            .await;
        assert_eq!(out, "CapEff:\t00000000a80425fb\nCapBnd:\t00000000a80425fb\n");
        let mut spec = f.spec("user3", &["true"]);
        spec.process.as_mut().unwrap().user = Some(User {
            username: "ghost".into(),
            ..Default::default()
        });
        let e = f.containers.create(spec).await.unwrap_err();
        assert_eq!(e.code(), Code::FailedPrecondition);
        assert!(e.message().contains("\"ghost\""), "{}", e.message());
        assert!(f.containers.status("user3").is_err());
    });
}

#[test]
fn readonly_rootfs_and_mounts() {
    let Some(f) = Fixture::new("mounts") else {
        return;
    };
    rt().block_on(async {
        let data = f.base.join("data");
        std::fs::create_dir_all(&data).unwrap();
        std::fs::write(data.join("file"), "hello\n").unwrap();
        let rw = f.base.join("rw");
        std::fs::create_dir_all(&rw).unwrap();
        let single = f.base.join("single-file");
        std::fs::write(&single, "one file\n").unwrap();

        let mut spec = f.spec(
            "ro1",
            &[
                "sh",
                "-c",
                "touch /newfile 2>/dev/null && echo root-writable || echo root-readonly; \
                 cat /data/file; \
                 touch /data/x 2>/dev/null && echo data-writable || echo data-readonly; \
                 echo from-container > /rw/out && echo rw-ok; \
                 cat /etc/single; \
                 touch /scratch/x && echo scratch-ok",
            ],
        );
        spec.readonly_rootfs = true;
        spec.mounts = vec![
            Mount {
                source: data.to_string_lossy().into_owned(),
                destination: "/data".into(),
                readonly: true,
                ..Default::default()
            },
            Mount {
                source: rw.to_string_lossy().into_owned(),
                destination: "/rw".into(),
                ..Default::default()
            },
            Mount {
                source: single.to_string_lossy().into_owned(),
                destination: "/etc/single".into(),
                readonly: true,
                ..Default::default()
            },
            Mount {
                source: "tmpfs".into(),
                destination: "/scratch".into(),
                r#type: "tmpfs".into(),
                options: vec!["size=1m".into(), "nosuid".into()],
                ..Default::default()
            },
        ];
        let (out, err, code) = f.run(spec).await;
        assert_eq!(err, "");
        assert_eq!(
            out,
            "root-readonly\nhello\ndata-readonly\nrw-ok\none file\nscratch-ok\n"
        );
        assert_eq!(code, 0);
        assert_eq!(
            std::fs::read_to_string(rw.join("out")).unwrap(),
            "from-container\n"
        );
        assert!(!f.rootfs.join("newfile").exists());

        // A destination that climbs out is refused up front.
        let mut spec = f.spec("ro2", &["true"]);
        spec.mounts = vec![Mount {
            source: data.to_string_lossy().into_owned(),
            destination: "/../../etc".into(),
            ..Default::default()
        }];
        let e = f.containers.create(spec).await.unwrap_err();
        assert_eq!(e.code(), Code::InvalidArgument);
        assert!(e.message().starts_with("mounts[0].destination:"));

        // A symlink in the image cannot redirect a mount onto the host.
        symlink("/../../../..", f.rootfs.join("escape")).unwrap();
        let mut spec = f.spec("ro3", &["sh", "-c", "cat /escape/mnt/file"]);
        spec.mounts = vec![Mount {
            source: data.to_string_lossy().into_owned(),
            destination: "/escape/mnt".into(),
            readonly: true,
            ..Default::default()
        }];
        let (out, _, _) = f.run(spec).await;
        assert_eq!(out, "hello\n");
        assert!(f.rootfs.join("mnt").is_dir(), "created inside the root");
    });
}

#[test]
fn default_masks_readonly_proc_and_sysctls() {
    let Some(f) = Fixture::new("masks") else {
        return;
    };
    rt().block_on(async {
        let mut spec = f.spec(
            "mask1",
            &[
                "sh",
                "-c",
                "test -s /proc/kcore && echo kcore-visible || echo kcore-masked; \
                 v=$(cat /proc/sys/kernel/domainname); \
                 (echo \"$v\" > /proc/sys/kernel/domainname) 2>/dev/null && echo sys-writable || echo sys-readonly; \
                 grep ' /sys ' /proc/self/mountinfo | grep -q ' ro,' && echo sysfs-ro; \
                 cat /proc/sys/kernel/shmmax; \
                 test -c /dev/null && test -c /dev/urandom && test -d /dev/pts && echo dev-ok",
            ],
        );
        spec.namespaces = Some(Namespaces {
            pid: NamespaceMode::NamespaceContainer as i32,
            ipc: NamespaceMode::NamespaceContainer as i32,
        });
        spec.security = Some(Security {
            sysctls: [("kernel.shmmax".to_string(), "12345678".to_string())].into(),
            ..Default::default()
        });
        let (out, err, code) = f.run(spec).await;
        assert_eq!(
            out,
            "kcore-masked\nsys-readonly\nsysfs-ro\n12345678\ndev-ok\n",
            "stderr: {err}"
        );
        assert_eq!(code, 0);
        // The host's own value is untouched (the sysctl is per IPC ns).
        let host = std::fs::read_to_string("/proc/sys/kernel/shmmax").unwrap();
        assert_ne!(host.trim(), "12345678");
    });
}

#[test]
fn sigkill_ends_a_process_that_ignores_sigterm() {
    let Some(f) = Fixture::new("kill") else {
        return;
    };
    rt().block_on(async {
        let mut spec = f.spec(
            "kill1",
            &[
                "sh",
                "-c",
                "trap '' TERM; echo ready; while true; do sleep 1; done",
            ],
        );
        node_pid(&mut spec);
        f.containers.create(spec).await.unwrap();
        f.containers.start("kill1").await.unwrap();
        let mut out = f.containers.read_output("kill1").unwrap();
        let first = tokio::time::timeout(Duration::from_secs(10), out.next())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        assert_eq!(first.data, b"ready\n");

        let e = f.containers.remove("kill1").await.unwrap_err();
        assert_eq!(e.code(), Code::FailedPrecondition);
        assert!(e.message().contains("is running; stop it first"));

        f.containers.signal("kill1", libc::SIGTERM).unwrap();
        let st = f
            .containers
            .wait("kill1", Duration::from_millis(500))
            .await
            .unwrap();
        assert_eq!(st.state, ContainerState::ContainerRunning as i32);

        f.containers.signal("kill1", libc::SIGKILL).unwrap();
        let st = f.wait("kill1").await;
        assert_eq!(st.exit_code, 128 + libc::SIGKILL);
        assert!(!st.oom_killed);
        // SIGKILL again is fine; SIGTERM to an exited container is not.
        f.containers.signal("kill1", libc::SIGKILL).unwrap();
        let e = f.containers.signal("kill1", libc::SIGTERM).unwrap_err();
        assert_eq!(e.code(), Code::FailedPrecondition);
        let e = f.containers.signal("nope", libc::SIGTERM).unwrap_err();
        assert_eq!(e.code(), Code::NotFound);
        f.containers.remove("kill1").await.unwrap();

        // A created, never started container can be removed.
        f.containers
            .create(f.spec("kill2", &["true"]))
            .await
            .unwrap();
        f.containers.remove("kill2").await.unwrap();
    });
}

#[test]
fn exec_sync_output_exit_code_and_timeout() {
    let Some(f) = Fixture::new("exec") else {
        return;
    };
    rt().block_on(async {
        let mut spec = f.spec("exec1", &["sleep", "1000"]);
        spec.process.as_mut().unwrap().env = vec!["FROM_SPEC=yes".into()];
        spec.namespaces = Some(Namespaces {
            pid: NamespaceMode::NamespaceContainer as i32,
            ipc: NamespaceMode::NamespaceContainer as i32,
        });
        f.containers.create(spec).await.unwrap();
        let e = f
            .containers
            .exec_sync(ExecSyncRequest {
                id: "exec1".into(),
                args: vec!["true".into()],
                ..Default::default()
            })
            .await
            .unwrap_err();
        assert_eq!(e.code(), Code::FailedPrecondition, "not started yet");
        f.containers.start("exec1").await.unwrap();

        let r = f
            .containers
            .exec_sync(ExecSyncRequest {
                id: "exec1".into(),
                args: [
                    "sh",
                    "-c",
                    "echo hi $FROM_SPEC; echo oops >&2; ls /proc | grep -c '^[0-9]'; exit 4",
                ]
                .map(String::from)
                .to_vec(),
                ..Default::default()
            })
            .await
            .unwrap();
        // Two processes in the container's pid namespace: sleep and sh
        // (ls and grep are forked by sh, so three or four; all small).
        let out = String::from_utf8_lossy(&r.stdout).into_owned();
        assert!(out.starts_with("hi yes\n"), "{out}");
        assert_eq!(String::from_utf8_lossy(&r.stderr), "oops\n");
        assert_eq!(r.exit_code, 4);
        assert!(!r.timed_out);

        let started = std::time::Instant::now();
        let r = f
            .containers
            .exec_sync(ExecSyncRequest {
                id: "exec1".into(),
                args: ["sh", "-c", "sleep 30 & sleep 30"]
                    .map(String::from)
                    .to_vec(),
                timeout_ms: 300,
                ..Default::default()
            })
            .await
            .unwrap();
        assert!(r.timed_out);
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "{:?}",
            started.elapsed()
        );

        let r = f
            .containers
            .exec_sync(ExecSyncRequest {
                id: "exec1".into(),
                args: ["sh", "-c", "yes | head -c 100000"]
                    .map(String::from)
                    .to_vec(),
                output_limit: 1000,
                ..Default::default()
            })
            .await
            .unwrap();
        assert_eq!(r.stdout.len(), 1000);
        assert_eq!(r.exit_code, 0);

        let e = f
            .containers
            .exec_sync(ExecSyncRequest {
                id: "exec1".into(),
                args: vec!["no-such-tool".into()],
                ..Default::default()
            })
            .await
            .unwrap_err();
        assert_eq!(e.code(), Code::FailedPrecondition);
        assert!(
            e.message().contains("executable file not found"),
            "{}",
            e.message()
        );

        // The container's init is still the one sleep.
        let st = f.containers.status("exec1").unwrap();
        assert_eq!(st.state, ContainerState::ContainerRunning as i32);
    });
}

#[test]
fn pid_namespaces() {
    let Some(f) = Fixture::new("pidns") else {
        return;
    };
    rt().block_on(async {
        let mut spec = f.spec("pid1", &["sh", "-c", "echo $$"]);
        spec.namespaces = Some(Namespaces {
            pid: NamespaceMode::NamespaceContainer as i32,
            ipc: NamespaceMode::NamespaceContainer as i32,
        });
        let (out, _, code) = f.run(spec).await;
        assert_eq!((out.as_str(), code), ("1\n", 0));

        // Pod mode: PID 1 is the pod's pause process, shared by both.
        f.containers
            .create(f.spec("pod1", &["sleep", "1000"]))
            .await
            .unwrap();
        f.containers.start("pod1").await.unwrap();
        let (out, _, _) = f
            .run(f.spec(
                "pod2",
                &[
                    "sh",
                    "-c",
                    "echo $$; tr '\\0' ' ' < /proc/1/cmdline; echo; ps -o comm | grep -c sleep",
                ],
            ))
            .await;
        let lines: Vec<&str> = out.lines().collect();
        assert_eq!(lines.len(), 3, "{out}");
        assert_ne!(lines[0], "1");
        assert!(lines[1].contains("__vmpod-pod-pause"), "{out}");
        assert_eq!(lines[2], "1", "sees the other container's sleep");
    });
}

#[test]
fn tty_merges_output_on_stdout() {
    let Some(f) = Fixture::new("tty") else { return };
    rt().block_on(async {
        let mut spec = f.spec(
            "tty1",
            &[
                "sh",
                "-c",
                "test -t 0 && test -t 1 && echo is-a-tty; echo $TERM; echo err >&2",
            ],
        );
        spec.process.as_mut().unwrap().tty = true;
        let (out, err, code) = f.run(spec).await;
        assert_eq!(err, "");
        assert_eq!(out, "is-a-tty\r\nxterm\r\nerr\r\n");
        assert_eq!(code, 0);
    });
}

#[test]
fn seccomp_and_capabilities() {
    let Some(f) = Fixture::new("seccomp") else {
        return;
    };
    rt().block_on(async {
        let profile = r#"{"defaultAction": "SCMP_ACT_ALLOW",
            "syscalls": [{"names": ["mkdir", "mkdirat"], "action": "SCMP_ACT_ERRNO", "errnoRet": 1}]}"#;
        let mut spec = f.spec(
            "sc1",
            &["sh", "-c", "mkdir /tmp/d 2>/dev/null && echo made || echo denied; touch /tmp/f && echo touched"],
        );
        spec.security = Some(Security {
            seccomp: Some(Seccomp {
                kind: seccomp::Kind::Profile as i32,
                profile_json: profile.into(),
            }),
            no_new_privs: true,
            ..Default::default()
        });
        let (out, _, _) = f.run(spec).await;
        assert_eq!(out, "denied\ntouched\n");

        // RuntimeDefault: unshare is refused even to root.
        let (out, _, _) = f
            .run(f.spec("sc2", &["sh", "-c", "unshare -m true 2>/dev/null && echo unshared || echo refused"]))
            .await;
        assert_eq!(out, "refused\n");

        // Dropping CHOWN takes it away from root.
        let mut spec = f.spec(
            "sc3",
            &["sh", "-c", "touch /tmp/c; chown 1000 /tmp/c 2>/dev/null && echo chowned || echo no-chown"],
        );
        spec.security = Some(Security {
            drop_capabilities: vec!["CHOWN".into()],
            ..Default::default()
        });
        let (out, _, _) = f.run(spec).await;
        assert_eq!(out, "no-chown\n");

        let mut spec = f.spec("sc4", &["true"]);
        spec.security = Some(Security {
            seccomp: Some(Seccomp {
                kind: seccomp::Kind::Profile as i32,
                profile_json: "{not json".into(),
            }),
            ..Default::default()
        });
        let e = f.containers.create(spec).await.unwrap_err();
        assert_eq!(e.code(), Code::InvalidArgument);
        assert!(e.message().starts_with("security.seccomp.profile_json:"));
    });
}

#[test]
fn cgroup_membership_limits_and_stats() {
    let Some(f) = Fixture::new("cgroup") else {
        return;
    };
    rt().block_on(async {
        let writable = f.base.join("upper");
        std::fs::create_dir_all(&writable).unwrap();
        std::fs::write(writable.join("blob"), vec![7u8; 64 << 10]).unwrap();
        let mut spec = f.spec("cg1", &["sh", "-c", "cat /proc/self/cgroup; sleep 1000"]);
        spec.writable_dir = writable.to_string_lossy().into_owned();
        let root = f.cgroup_parent.parent().unwrap().to_path_buf();
        let controllers =
            std::fs::read_to_string(root.join("cgroup.controllers")).unwrap_or_default();
        let have = |c: &str| controllers.split_whitespace().any(|x| x == c);
        let limits = have("memory") && have("pids");
        if limits {
            spec.resources = Some(Resources {
                memory_limit_bytes: 64 << 20,
                pids_limit: 50,
                ..Default::default()
            });
        } else {
            eprintln!(
                "NOTE cgroup_membership_limits_and_stats: {} offers no memory/pids controllers \
                 (the host keeps them in cgroup v1); checking membership, cgroup.kill and \
                 stats only, not limits",
                root.display()
            );
        }
        f.containers.create(spec).await.unwrap();
        f.containers.start("cg1").await.unwrap();
        let mut out = f.containers.read_output("cg1").unwrap();
        let first = tokio::time::timeout(Duration::from_secs(10), out.next())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        // Its own cgroup namespace: the container sees itself at the root
        // (a host with v1 hierarchies lists those too).
        let seen = String::from_utf8_lossy(&first.data).into_owned();
        assert!(seen.lines().any(|l| l == "0::/"), "{seen}");
        let cg = f.cgroup_parent.join("cg1");
        let st = f.containers.status("cg1").unwrap();
        let procs = std::fs::read_to_string(cg.join("cgroup.procs")).unwrap();
        assert!(procs.lines().any(|p| p == st.pid.to_string()), "{procs}");
        if limits {
            assert_eq!(
                std::fs::read_to_string(cg.join("memory.max"))
                    .unwrap()
                    .trim(),
                "67108864"
            );
            assert_eq!(
                std::fs::read_to_string(cg.join("pids.max")).unwrap().trim(),
                "50"
            );
            f.containers
                .update(
                    "cg1",
                    Some(&Resources {
                        pids_limit: 60,
                        ..Default::default()
                    }),
                )
                .unwrap();
            assert_eq!(
                std::fs::read_to_string(cg.join("pids.max")).unwrap().trim(),
                "60"
            );
        } else {
            let e = f
                .containers
                .update(
                    "cg1",
                    Some(&Resources {
                        unified: BTreeMap::from([("memory.high".to_string(), "1M".to_string())])
                            .into_iter()
                            .collect(),
                        ..Default::default()
                    }),
                )
                .unwrap_err();
            assert_eq!(e.code(), Code::FailedPrecondition, "{}", e.message());
        }
        let stats = f.containers.stats(&[]).await.unwrap();
        assert_eq!(stats.containers.len(), 1);
        let u = &stats.containers[0];
        assert_eq!(u.id, "cg1");
        assert!(u.writable_bytes >= 64 << 10, "{u:?}");
        assert_eq!(u.writable_inodes, 2);
        assert!(u.usage.as_ref().unwrap().cpu_usage_ns > 0 || !have("cpu"));
        assert!(stats.network.is_some() && stats.timestamp_ns > 0);
        let e = f.containers.stats(&["nope".to_string()]).await.unwrap_err();
        assert_eq!(e.code(), Code::NotFound);

        f.containers.signal("cg1", libc::SIGKILL).unwrap();
        let st = f.wait("cg1").await;
        assert_eq!(st.exit_code, 137);
        f.containers.remove("cg1").await.unwrap();
        assert!(!cg.exists());
    });
}
