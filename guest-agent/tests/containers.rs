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
use std::sync::{Arc, LazyLock, OnceLock};
use std::time::Duration;

use tokio::runtime::Runtime;
use tokio_stream::StreamExt;
use tonic::Code;
use vmpod_agent::container::events::EventStream;
use vmpod_agent::container::{Config, Containers, find_cgroup2_mount};
use vmpod_agent::reaper;
use vmpod_agent_proto::v1::{
    ContainerEvent, ContainerEventType, ContainerSpec, ContainerState, ExecSyncRequest, Mount,
    NamespaceMode, Namespaces, OutputStream, Process, Resources, Seccomp, Security, User, seccomp,
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
    "chown", "tr", "stty", "seq",
];

struct Fixture {
    _dir: tempfile::TempDir,
    base: PathBuf,
    rootfs: PathBuf,
    containers: Arc<Containers>,
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
            containers: Arc::new(Containers::new(config)),
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

/// Waits (up to 10 s) for the first line of the container's output, so a
/// test knows its traps are set.
async fn ready(f: &Fixture, id: &str) {
    let mut out = f.containers.read_output(id).unwrap();
    let first = tokio::time::timeout(Duration::from_secs(10), out.next())
        .await
        .expect("no output within 10 s")
        .unwrap()
        .unwrap();
    assert_eq!(first.data, b"ready\n");
}

#[test]
fn stop_kills_what_ignores_the_signal_after_the_grace() {
    let Some(f) = Fixture::new("stopkill") else {
        return;
    };
    rt().block_on(async {
        let spec = f.spec(
            "stop1",
            &[
                "sh",
                "-c",
                "trap '' TERM; echo ready; while true; do sleep 1; done",
            ],
        );
        f.containers.create(spec).await.unwrap();
        f.containers.start("stop1").await.unwrap();
        ready(&f, "stop1").await;

        let grace = Duration::from_millis(700);
        let started = std::time::Instant::now();
        let st = f.containers.stop("stop1", 0, grace).await.unwrap();
        let elapsed = started.elapsed();
        assert_eq!(st.state, ContainerState::ContainerExited as i32, "{st:?}");
        assert_eq!(st.exit_code, 128 + libc::SIGKILL);
        assert!(elapsed >= grace, "killed after {elapsed:?}");
        assert!(elapsed < grace + Duration::from_secs(5), "{elapsed:?}");
        // Its `sleep` went with it (cgroup.kill); the kernel empties the
        // cgroup a moment after the kill.
        let procs = f.cgroup_parent.join("stop1/cgroup.procs");
        let mut left = String::new();
        for _ in 0..200 {
            left = std::fs::read_to_string(&procs).unwrap();
            if left.is_empty() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert_eq!(left, "", "processes left in the cgroup");

        // Again: the same status at once.
        let started = std::time::Instant::now();
        let again = f.containers.stop("stop1", 0, grace).await.unwrap();
        assert!(started.elapsed() < Duration::from_millis(100));
        assert_eq!(again, st);
        assert_eq!(f.containers.status("stop1").unwrap(), st);

        let e = f.containers.stop("stop1", 65, grace).await.unwrap_err();
        assert_eq!(e.code(), Code::InvalidArgument);
        assert!(e.message().contains("65"), "{}", e.message());
        let e = f.containers.stop("nope", 0, grace).await.unwrap_err();
        assert_eq!(e.code(), Code::NotFound);
        let e = f.containers.status("nope").unwrap_err();
        assert_eq!(e.code(), Code::NotFound);
        f.containers.remove("stop1").await.unwrap();
    });
}

#[test]
fn stop_ends_what_exits_on_the_signal() {
    let Some(f) = Fixture::new("stopterm") else {
        return;
    };
    rt().block_on(async {
        let long = Duration::from_secs(20);
        // (id, signal, exit code): SIGTERM by default, any signal asked
        // for, real-time ones included.
        for (id, signal, code) in [
            ("term1", 0, 128 + libc::SIGTERM),
            ("int1", libc::SIGINT, 128 + libc::SIGINT),
            ("rt1", 40, 128 + 40),
        ] {
            f.containers
                .create(f.spec(id, &["sleep", "1000"]))
                .await
                .unwrap();
            f.containers.start(id).await.unwrap();
            let started = std::time::Instant::now();
            let st = f.containers.stop(id, signal, long).await.unwrap();
            assert_eq!(st.state, ContainerState::ContainerExited as i32, "{st:?}");
            assert_eq!(st.exit_code, code, "{id}");
            assert!(started.elapsed() < Duration::from_secs(5), "{id}");
        }

        // A shell that exits with its own code on TERM.
        let spec = f.spec(
            "own1",
            &[
                "sh",
                "-c",
                "trap 'exit 7' TERM; echo ready; while true; do sleep 1; done",
            ],
        );
        f.containers.create(spec).await.unwrap();
        f.containers.start("own1").await.unwrap();
        ready(&f, "own1").await;
        let st = f.containers.stop("own1", 0, long).await.unwrap();
        assert_eq!(st.exit_code, 7, "{st:?}");

        // No grace: killed at once.
        f.containers
            .create(f.spec("now1", &["sleep", "1000"]))
            .await
            .unwrap();
        f.containers.start("now1").await.unwrap();
        let st = f.containers.stop("now1", 0, Duration::ZERO).await.unwrap();
        assert_eq!(st.exit_code, 128 + libc::SIGKILL);

        // Created, not started: answered as it is, and left alone.
        let created = f
            .containers
            .create(f.spec("idle1", &["true"]))
            .await
            .unwrap();
        let st = f.containers.stop("idle1", 0, long).await.unwrap();
        assert_eq!(st, created);
        let st = f.containers.status("idle1").unwrap();
        assert_eq!(st.state, ContainerState::ContainerCreated as i32);
    });
}

/// The next event, within 10 s.
async fn next_event(events: &mut EventStream) -> ContainerEvent {
    tokio::time::timeout(Duration::from_secs(10), events.next())
        .await
        .expect("no event within 10 s")
        .expect("the events stream ended")
        .expect("an event")
}

fn kind(e: &ContainerEvent) -> ContainerEventType {
    ContainerEventType::try_from(e.r#type).expect("a known event type")
}

#[test]
fn events_follow_the_lifecycle_and_replay() {
    use ContainerEventType::{
        ContainerEventCreated as Created, ContainerEventDeleted as Deleted,
        ContainerEventStarted as Started, ContainerEventStopped as Stopped,
    };
    let Some(f) = Fixture::new("events") else {
        return;
    };
    rt().block_on(async {
        let mut events = f.containers.events(0).unwrap();
        f.containers
            .create(f.spec("ev1", &["sh", "-c", "exit 3"]))
            .await
            .unwrap();
        f.containers.start("ev1").await.unwrap();
        f.wait("ev1").await;
        f.containers.remove("ev1").await.unwrap();
        let mut got = Vec::new();
        for _ in 0..4 {
            got.push(next_event(&mut events).await);
        }
        let summary: Vec<(u64, ContainerEventType, i32)> = got
            .iter()
            .map(|e| (e.seq, kind(e), e.status.as_ref().unwrap().state))
            .collect();
        let (created, running, exited) = (
            ContainerState::ContainerCreated as i32,
            ContainerState::ContainerRunning as i32,
            ContainerState::ContainerExited as i32,
        );
        assert_eq!(
            summary,
            [
                (1, Created, created),
                (2, Started, running),
                (3, Stopped, exited),
                (4, Deleted, exited),
            ]
        );
        let stopped = got[2].status.as_ref().unwrap();
        assert_eq!((stopped.id.as_str(), stopped.exit_code), ("ev1", 3));
        assert!(stopped.finished_at_ns >= stopped.started_at_ns && stopped.started_at_ns > 0);
        assert_eq!(got[3].status, got[2].status);
        assert!(got.iter().all(|e| !e.resync));

        // A second call replays from after the given seq.
        let mut replay = f.containers.events(2).unwrap();
        assert_eq!(next_event(&mut replay).await, got[2]);
        assert_eq!(next_event(&mut replay).await, got[3]);

        // A failed exec: CREATED, then STOPPED saying why, never STARTED.
        f.containers
            .create(f.spec("ev2", &["no-such-command"]))
            .await
            .unwrap();
        f.containers.start("ev2").await.unwrap_err();
        for stream in [&mut events, &mut replay] {
            let e = next_event(stream).await;
            assert_eq!((e.seq, kind(&e)), (5, Created));
            let e = next_event(stream).await;
            assert_eq!((e.seq, kind(&e)), (6, Stopped));
            let st = e.status.unwrap();
            assert_eq!(st.exit_code, 127);
            assert!(st.message.contains("executable file not found"), "{st:?}");
            assert_eq!(st.started_at_ns, 0);
        }

        // Commands that exit at once race StartContainer's own reading of
        // the exec: STOPPED still always comes after STARTED.
        for i in 0..10 {
            let id = format!("fast{i}");
            f.containers.create(f.spec(&id, &["true"])).await.unwrap();
            f.containers.start(&id).await.unwrap();
            let kinds = [(); 3].map(|_| ());
            let mut seen = Vec::new();
            for () in kinds {
                let e = next_event(&mut events).await;
                assert_eq!(e.status.as_ref().unwrap().id, id);
                seen.push(kind(&e));
            }
            assert_eq!(seen, [Created, Started, Stopped], "{id}");
        }

        // Exit to event: the reaper's SIGCHLD straight to the stream.
        f.containers
            .create(f.spec("ev3", &["sleep", "1000"]))
            .await
            .unwrap();
        f.containers.start("ev3").await.unwrap();
        for want in [Created, Started] {
            assert_eq!(kind(&next_event(&mut events).await), want);
        }
        let killed = std::time::Instant::now();
        f.containers.signal("ev3", libc::SIGKILL).unwrap();
        let e = next_event(&mut events).await;
        let latency = killed.elapsed();
        assert_eq!(kind(&e), Stopped);
        assert_eq!(e.status.unwrap().exit_code, 128 + libc::SIGKILL);
        eprintln!("SIGKILL to STOPPED event: {latency:?}");
        assert!(latency < Duration::from_millis(100), "{latency:?}");
    });
}

#[test]
fn stop_status_and_events_over_grpc() {
    use ContainerEventType::{
        ContainerEventCreated as Created, ContainerEventStarted as Started,
        ContainerEventStopped as Stopped,
    };
    use vmpod_agent::server::{AgentService, BootTimes};
    use vmpod_agent_proto::v1::{
        ContainerRef, CreateContainerRequest, EventsRequest, StopContainerRequest,
    };
    use vmpod_agent_proto::{AgentClient, AgentServer};

    let Some(f) = Fixture::new("grpc") else {
        return;
    };
    rt().block_on(async {
        // NODELAY: vsock (and a unix socket) has no Nagle; loopback TCP
        // would hold each small event frame for a delayed ACK (~40 ms).
        let incoming = tonic::transport::server::TcpIncoming::bind("127.0.0.1:0".parse().unwrap())
            .unwrap()
            .with_nodelay(Some(true));
        let addr = incoming.local_addr().unwrap();
        let boot = BootTimes {
            agent_start_ns: 0,
            mounts_done_ns: 0,
            serving_ns: 0,
        };
        let service = AgentService::new(boot, false, Arc::clone(&f.containers));
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let server = tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(AgentServer::new(service))
                .serve_with_incoming_shutdown(incoming, async {
                    let _ = stop_rx.await;
                }),
        );
        let mut client = AgentClient::connect(format!("http://{addr}"))
            .await
            .unwrap();
        let mut events = client
            .events(EventsRequest { after_seq: 0 })
            .await
            .unwrap()
            .into_inner();
        let mut next = async || {
            tokio::time::timeout(Duration::from_secs(10), events.message())
                .await
                .expect("no event within 10 s")
                .expect("an event")
                .expect("the stream ended")
        };

        let e = client
            .container_status(ContainerRef { id: "nope".into() })
            .await
            .unwrap_err();
        assert_eq!(e.code(), Code::NotFound);

        for id in ["g1", "g2"] {
            client
                .create_container(CreateContainerRequest {
                    spec: Some(f.spec(id, &["sleep", "1000"])),
                })
                .await
                .unwrap();
            client
                .start_container(ContainerRef { id: id.into() })
                .await
                .unwrap();
        }
        let st = client
            .stop_container(StopContainerRequest {
                id: "g1".into(),
                signal: 0,
                timeout_ms: 10_000,
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(st.exit_code, 128 + libc::SIGTERM, "{st:?}");
        let st = client
            .container_status(ContainerRef { id: "g1".into() })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(st.state, ContainerState::ContainerExited as i32);
        let mut seen = Vec::new();
        for _ in 0..5 {
            let e = next().await;
            seen.push((e.seq, e.status.unwrap().id, kind_of(e.r#type)));
        }
        let want = |seq: u64, id: &str, k| (seq, id.to_string(), k);
        assert_eq!(
            seen,
            [
                want(1, "g1", Created),
                want(2, "g1", Started),
                want(3, "g2", Created),
                want(4, "g2", Started),
                want(5, "g1", Stopped),
            ]
        );

        // Exit to event, through gRPC: the host wants this under 100 ms
        // over vsock; loopback TCP is the same code path here.
        let killed = std::time::Instant::now();
        client
            .stop_container(StopContainerRequest {
                id: "g2".into(),
                signal: libc::SIGKILL,
                timeout_ms: 0,
            })
            .await
            .unwrap();
        let e = next().await;
        let latency = killed.elapsed();
        assert_eq!((e.seq, kind_of(e.r#type)), (6, Stopped));
        eprintln!("StopContainer(SIGKILL, no grace) to STOPPED over gRPC: {latency:?}");
        assert!(latency < Duration::from_millis(100), "{latency:?}");

        // The agent's shutdown ends the open stream, so the server can
        // finish gracefully.
        f.containers.close_events();
        let end = tokio::time::timeout(Duration::from_secs(5), events.message())
            .await
            .expect("the stream did not end");
        assert!(matches!(end, Ok(None)), "{end:?}");
        let _ = stop_tx.send(());
        tokio::time::timeout(Duration::from_secs(5), server)
            .await
            .expect("the server did not shut down")
            .unwrap()
            .unwrap();
    });
}

fn kind_of(t: i32) -> ContainerEventType {
    ContainerEventType::try_from(t).expect("a known event type")
}

// --- Exec and Attach with streamed stdio ---

mod stdio {
    use super::*;
    use tokio::sync::mpsc;
    use tokio_stream::wrappers::ReceiverStream;
    pub use vmpod_agent_proto::v1::StdioStart;
    use vmpod_agent_proto::v1::stdio_input::Input;
    use vmpod_agent_proto::v1::stdio_output::Output;
    use vmpod_agent_proto::v1::{StdioInput, StdioOutput, TerminalSize};

    pub type In = mpsc::Sender<Result<StdioInput, tonic::Status>>;

    /// An input stream that starts with `start`, fed by the test.
    pub fn opened(start: StdioStart) -> (In, ReceiverStream<Result<StdioInput, tonic::Status>>) {
        let (tx, rx) = mpsc::channel(16);
        tx.try_send(Ok(msg(Input::Start(start)))).unwrap();
        (tx, ReceiverStream::new(rx))
    }

    pub fn msg(input: Input) -> StdioInput {
        StdioInput { input: Some(input) }
    }

    pub async fn send(tx: &In, input: Input) {
        tx.send(Ok(msg(input)))
            .await
            .expect("the agent stopped reading");
    }

    pub fn exec_start(id: &str, args: &[&str]) -> StdioStart {
        StdioStart {
            id: id.into(),
            args: args.iter().map(|s| s.to_string()).collect(),
            stdin: true,
            stdout: true,
            stderr: true,
            ..Default::default()
        }
    }

    pub fn size(width: u32, height: u32) -> TerminalSize {
        TerminalSize { width, height }
    }

    /// What an exec said: stdout, stderr and the exit code, which must be
    /// the last message.
    #[derive(Debug, Default)]
    pub struct Said {
        pub out: Vec<u8>,
        pub err: Vec<u8>,
        pub exit: Option<i32>,
    }

    impl Said {
        pub fn out(&self) -> String {
            String::from_utf8_lossy(&self.out).into_owned()
        }
    }

    /// Reads the output until `until` holds or the stream ends.
    pub async fn read_until(
        out: &mut (impl tokio_stream::Stream<Item = Result<StdioOutput, tonic::Status>> + Unpin),
        said: &mut Said,
        until: impl Fn(&Said) -> bool,
    ) {
        let read = async {
            while !until(said) {
                let Some(m) = out.next().await else { return };
                assert!(said.exit.is_none(), "output after the exit code");
                match m.expect("an output message").output {
                    Some(Output::Chunk(c)) if c.stream == OutputStream::Stderr as i32 => {
                        said.err.extend(c.data)
                    }
                    Some(Output::Chunk(c)) => said.out.extend(c.data),
                    Some(Output::ExitCode(code)) => said.exit = Some(code),
                    None => panic!("an empty output message"),
                }
            }
        };
        tokio::time::timeout(Duration::from_secs(20), read)
            .await
            .unwrap_or_else(|_| panic!("timed out; so far {said:?}"));
    }

    pub async fn read_all(
        out: &mut (impl tokio_stream::Stream<Item = Result<StdioOutput, tonic::Status>> + Unpin),
    ) -> Said {
        let mut said = Said::default();
        read_until(out, &mut said, |_| false).await;
        said
    }

    /// Whether a process with exactly this command line runs in `id`.
    pub async fn runs(f: &Fixture, id: &str, cmdline: &str) -> bool {
        let r = f
            .containers
            .exec_sync(ExecSyncRequest {
                id: id.into(),
                args: ["ps", "-o", "args"].map(String::from).to_vec(),
                ..Default::default()
            })
            .await
            .unwrap();
        String::from_utf8_lossy(&r.stdout)
            .lines()
            .any(|l| l.trim() == cmdline)
    }
}

#[test]
fn exec_stream_pipes_stdin_and_exit_code() {
    use stdio::*;
    use vmpod_agent_proto::v1::stdio_input::Input;
    let Some(f) = Fixture::new("xpipes") else {
        return;
    };
    rt().block_on(async {
        f.containers
            .create(f.spec("xp1", &["sleep", "999"]))
            .await
            .unwrap();
        f.containers.start("xp1").await.unwrap();

        let (tx, input) = opened(exec_start(
            "xp1",
            &[
                "sh",
                "-c",
                "test -t 0 || echo no-tty; cat; echo err >&2; exit 5",
            ],
        ));
        let mut out = f.containers.exec(input).await.unwrap();
        send(&tx, Input::Stdin(b"hello\n".to_vec())).await;
        let mut said = Said::default();
        read_until(&mut out, &mut said, |s| s.out().contains("hello")).await;
        send(&tx, Input::CloseStdin(true)).await;
        read_until(&mut out, &mut said, |_| false).await;
        assert_eq!(said.out(), "no-tty\nhello\n");
        assert_eq!(said.err, b"err\n");
        assert_eq!(said.exit, Some(5));

        // stdin not asked for: /dev/null (cat ends at once); the input's
        // clean end is no hang-up.
        let mut start = exec_start("xp1", &["sh", "-c", "cat; echo done"]);
        start.stdin = false;
        start.stderr = false;
        let (tx, input) = opened(start);
        drop(tx);
        let said = read_all(&mut f.containers.exec(input).await.unwrap()).await;
        assert_eq!((said.out().as_str(), said.exit), ("done\n", Some(0)));

        // A clean end of the input closes stdin when it was asked for.
        let (tx, input) = opened(exec_start("xp1", &["cat"]));
        let mut out = f.containers.exec(input).await.unwrap();
        send(&tx, Input::Stdin(b"last".to_vec())).await;
        drop(tx);
        let said = read_all(&mut out).await;
        assert_eq!((said.out().as_str(), said.exit), ("last", Some(0)));

        // Killed by a signal: 128 + n.
        let (_tx, input) = opened(exec_start("xp1", &["sh", "-c", "kill -9 $$"]));
        let said = read_all(&mut f.containers.exec(input).await.unwrap()).await;
        assert_eq!(said.exit, Some(128 + 9));

        let (_tx, input) = opened(exec_start("xp1", &["no-such-tool"]));
        let e = f.containers.exec(input).await.unwrap_err();
        assert_eq!(e.code(), Code::FailedPrecondition);
        assert!(
            e.message().contains("executable file not found"),
            "{}",
            e.message()
        );

        // Bytes for a stdin nobody asked for break the protocol.
        let mut start = exec_start("xp1", &["sleep", "1003"]);
        start.stdin = false;
        let (tx, input) = opened(start);
        let mut out = f.containers.exec(input).await.unwrap();
        send(&tx, Input::Stdin(b"x".to_vec())).await;
        let e = tokio::time::timeout(Duration::from_secs(10), out.next())
            .await
            .unwrap()
            .unwrap()
            .unwrap_err();
        assert_eq!(e.code(), Code::InvalidArgument);
        assert!(e.message().starts_with("stdin: "), "{}", e.message());
    });
}

#[test]
fn exec_stream_slow_reader_gets_everything() {
    use stdio::*;
    let Some(f) = Fixture::new("xslow") else {
        return;
    };
    rt().block_on(async {
        f.containers
            .create(f.spec("xs1", &["sleep", "999"]))
            .await
            .unwrap();
        f.containers.start("xs1").await.unwrap();
        let (_tx, input) = opened(exec_start(
            "xs1",
            &[
                "sh",
                "-c",
                "yes 0123456789 | head -c 3000000; echo tail >&2",
            ],
        ));
        let mut out = f.containers.exec(input).await.unwrap();
        // Nobody reads for a while: the command blocks on its pipe (and
        // may well exit meanwhile, once the rest fits in the pipe).
        tokio::time::sleep(Duration::from_millis(1500)).await;
        let said = read_all(&mut out).await;
        assert_eq!(said.out.len(), 3_000_000);
        assert!(said.out.starts_with(b"0123456789\n0123456789\n"));
        assert_eq!(said.err, b"tail\n");
        assert_eq!(said.exit, Some(0));
    });
}

#[test]
fn exec_stream_tty_size_resize_and_eof() {
    use stdio::*;
    use vmpod_agent_proto::v1::stdio_input::Input;
    let Some(f) = Fixture::new("xtty") else {
        return;
    };
    rt().block_on(async {
        f.containers
            .create(f.spec("xt1", &["sleep", "999"]))
            .await
            .unwrap();
        f.containers.start("xt1").await.unwrap();

        let mut start = exec_start("xt1", &["sh"]);
        start.tty = true;
        start.stderr = true;
        let (_tx, bad) = opened(start.clone());
        let e = f.containers.exec(bad).await.unwrap_err();
        assert_eq!(e.code(), Code::InvalidArgument);

        start.stderr = false;
        start.size = Some(size(100, 30));
        let (tx, input) = opened(start);
        let mut out = f.containers.exec(input).await.unwrap();
        let mut said = Said::default();
        send(&tx, Input::Stdin(b"stty size; echo $TERM\n".to_vec())).await;
        read_until(&mut out, &mut said, |s| {
            s.out().contains("30 100\r\nxterm\r\n")
        })
        .await;
        send(&tx, Input::Resize(size(120, 40))).await;
        send(&tx, Input::Stdin(b"stty size\n".to_vec())).await;
        // Wait for the next prompt: ash switches the terminal to raw mode
        // for its line editor before printing it, and a ^D sent earlier,
        // while the terminal was still cooked, can be flushed by that switch.
        read_until(&mut out, &mut said, |s| s.out().contains("40 120\r\n/ # ")).await;
        // ^D on an empty line: the shell reads EOF and exits.
        send(&tx, Input::CloseStdin(true)).await;
        read_until(&mut out, &mut said, |_| false).await;
        assert_eq!(said.exit, Some(0), "{}", said.out());
        assert!(said.err.is_empty());

        // The tty is the command's controlling terminal: a resize sends
        // SIGWINCH to its foreground process group.
        let mut start = exec_start(
            "xt1",
            &[
                "sh",
                "-c",
                "trap 'echo winch; exit 7' WINCH; echo ready; while :; do sleep 1; done",
            ],
        );
        start.tty = true;
        start.stderr = false;
        let (tx, input) = opened(start);
        let mut out = f.containers.exec(input).await.unwrap();
        let mut said = Said::default();
        read_until(&mut out, &mut said, |s| s.out().contains("ready")).await;
        send(&tx, Input::Resize(size(90, 20))).await;
        read_until(&mut out, &mut said, |_| false).await;
        assert_eq!(said.exit, Some(7), "{}", said.out());
        assert!(said.out().contains("winch"), "{}", said.out());
    });
}

#[test]
fn exec_stream_hang_up_leaves_nothing_running() {
    use stdio::*;
    let Some(f) = Fixture::new("xhup") else {
        return;
    };
    rt().block_on(async {
        f.containers
            .create(f.spec("xh1", &["sleep", "999"]))
            .await
            .unwrap();
        f.containers.start("xh1").await.unwrap();

        // Ends on SIGHUP: gone at once when the input breaks.
        let (tx, input) = opened(exec_start("xh1", &["sleep", "1001"]));
        let _out = f.containers.exec(input).await.unwrap();
        assert!(runs(&f, "xh1", "sleep 1001").await);
        let hung_up = std::time::Instant::now();
        tx.send(Err(tonic::Status::cancelled("client gone")))
            .await
            .unwrap();
        while runs(&f, "xh1", "sleep 1001").await {
            assert!(
                hung_up.elapsed() < Duration::from_secs(1),
                "SIGHUP did not end it"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }

        // Ignores SIGHUP, with a background job: SIGKILL after the grace,
        // when the client stops reading the output.
        let (_tx, input) = opened(exec_start(
            "xh1",
            &["sh", "-c", "trap '' HUP; sleep 1002 & sleep 1002"],
        ));
        let out = f.containers.exec(input).await.unwrap();
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert!(runs(&f, "xh1", "sleep 1002").await);
        let hung_up = std::time::Instant::now();
        drop(out);
        tokio::time::sleep(Duration::from_millis(1000)).await;
        assert!(
            runs(&f, "xh1", "sleep 1002").await,
            "killed before the grace"
        );
        while runs(&f, "xh1", "sleep 1002").await {
            assert!(hung_up.elapsed() < Duration::from_secs(5), "not killed");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let elapsed = hung_up.elapsed();
        assert!(elapsed >= Duration::from_secs(2), "{elapsed:?}");
        // The container itself is untouched.
        let st = f.containers.status("xh1").unwrap();
        assert_eq!(st.state, ContainerState::ContainerRunning as i32);
    });
}

#[test]
fn exec_stream_sixty_at_once() {
    use stdio::*;
    use vmpod_agent_proto::v1::stdio_input::Input;
    let Some(f) = Fixture::new("xmany") else {
        return;
    };
    rt().block_on(async {
        f.containers
            .create(f.spec("xm1", &["sleep", "999"]))
            .await
            .unwrap();
        f.containers.start("xm1").await.unwrap();
        let sessions = (0..60).map(|i| {
            let containers = Arc::clone(&f.containers);
            tokio::spawn(async move {
                let (tx, input) = opened(exec_start("xm1", &["cat"]));
                let mut out = containers.exec(input).await.unwrap();
                // More than a pipe holds, so stdin and stdout both fill.
                let data: Vec<u8> = (0..200_000u32).map(|n| (n * 31 + i) as u8).collect();
                let feed = {
                    let data = data.clone();
                    tokio::spawn(async move {
                        for chunk in data.chunks(7000) {
                            send(&tx, Input::Stdin(chunk.to_vec())).await;
                        }
                        send(&tx, Input::CloseStdin(true)).await;
                        tx
                    })
                };
                let said = read_all(&mut out).await;
                drop(feed.await.unwrap());
                assert_eq!(said.exit, Some(0), "session {i}");
                assert!(
                    said.out == data,
                    "session {i}: {} bytes back",
                    said.out.len()
                );
            })
        });
        let started = std::time::Instant::now();
        for s in sessions.collect::<Vec<_>>() {
            s.await.unwrap();
        }
        eprintln!(
            "60 exec sessions of 200 kB each way: {:?}",
            started.elapsed()
        );
    });
}

#[test]
fn attach_forwards_stdin_and_honours_stdin_once() {
    use stdio::*;
    use vmpod_agent_proto::v1::stdio_input::Input;
    let Some(f) = Fixture::new("attach") else {
        return;
    };
    rt().block_on(async {
        let attach_start = |id: &str| StdioStart {
            id: id.into(),
            stdin: true,
            stdout: true,
            ..Default::default()
        };
        // Not stdin_once: each attach may come and go, stdin stays open.
        let mut spec = f.spec("at1", &["cat"]);
        spec.process.as_mut().unwrap().stdin = true;
        f.containers.create(spec).await.unwrap();
        f.containers.start("at1").await.unwrap();
        let mut output = f.containers.read_output("at1").unwrap();
        for (line, close) in [("one\n", false), ("two\n", true)] {
            let (tx, input) = opened(attach_start("at1"));
            send(&tx, Input::Stdin(line.as_bytes().to_vec())).await;
            if close {
                send(&tx, Input::CloseStdin(true)).await;
            }
            drop(tx);
            f.containers.attach(input).await.unwrap();
            let chunk = tokio::time::timeout(Duration::from_secs(10), output.next())
                .await
                .unwrap()
                .unwrap()
                .unwrap();
            assert_eq!(chunk.data, line.as_bytes());
        }
        assert_eq!(
            f.containers.status("at1").unwrap().state,
            ContainerState::ContainerRunning as i32
        );
        // A wrong tty flag is named.
        let (_tx, input) = opened(StdioStart {
            tty: true,
            ..attach_start("at1")
        });
        let e = f.containers.attach(input).await.unwrap_err();
        assert_eq!(e.code(), Code::InvalidArgument);
        assert!(e.message().starts_with("start.tty: "), "{}", e.message());
        // Returns when the container exits, with the input still open.
        let (_tx, input) = opened(attach_start("at1"));
        let attach = f.containers.attach(input);
        let kill = async {
            tokio::time::sleep(Duration::from_millis(200)).await;
            f.containers.signal("at1", libc::SIGKILL).unwrap();
        };
        let (r, ()) = tokio::time::timeout(Duration::from_secs(10), async {
            tokio::join!(attach, kill)
        })
        .await
        .expect("attach did not end with the container");
        r.unwrap();

        // stdin_once: the first attach's end closes stdin; cat exits.
        let mut spec = f.spec("at2", &["sh", "-c", "cat; echo eof"]);
        let p = spec.process.as_mut().unwrap();
        p.stdin = true;
        p.stdin_once = true;
        f.containers.create(spec).await.unwrap();
        f.containers.start("at2").await.unwrap();
        let (tx, input) = opened(attach_start("at2"));
        send(&tx, Input::Stdin(b"once\n".to_vec())).await;
        drop(tx);
        f.containers.attach(input).await.unwrap();
        let (out, _) = f.output("at2").await;
        assert_eq!(out, "once\neof\n");
        assert_eq!(f.wait("at2").await.exit_code, 0);

        // No stdin at all.
        f.containers
            .create(f.spec("at3", &["sleep", "999"]))
            .await
            .unwrap();
        f.containers.start("at3").await.unwrap();
        let (_tx, input) = opened(attach_start("at3"));
        let e = f.containers.attach(input).await.unwrap_err();
        assert_eq!(e.code(), Code::FailedPrecondition);
        assert_eq!(e.message(), "container at3 was not created with stdin");
        let (tx, input) = opened(StdioStart {
            stdin: false,
            ..attach_start("at3")
        });
        send(&tx, Input::Stdin(b"x".to_vec())).await;
        let e = f.containers.attach(input).await.unwrap_err();
        assert_eq!(e.message(), "container at3 was not created with stdin");
    });
}

#[test]
fn attach_to_a_tty_resizes_and_closes_with_eof() {
    use stdio::*;
    use vmpod_agent_proto::v1::stdio_input::Input;
    let Some(f) = Fixture::new("attachtty") else {
        return;
    };
    rt().block_on(async {
        let tty_start = |id: &str| StdioStart {
            id: id.into(),
            tty: true,
            stdin: true,
            stdout: true,
            ..Default::default()
        };
        // Without stdin, a resize still reaches the tty.
        let mut spec = f.spec(
            "att1",
            &[
                "sh",
                "-c",
                "trap 'stty size; exit 7' WINCH; while :; do sleep 1; done",
            ],
        );
        spec.process.as_mut().unwrap().tty = true;
        f.containers.create(spec).await.unwrap();
        f.containers.start("att1").await.unwrap();
        tokio::time::sleep(Duration::from_millis(300)).await;
        let (tx, input) = opened(StdioStart {
            stdin: false,
            ..tty_start("att1")
        });
        send(&tx, Input::Resize(size(77, 22))).await;
        let attach = f.containers.attach(input);
        tokio::time::timeout(Duration::from_secs(10), attach)
            .await
            .expect("attach did not end with the container")
            .unwrap();
        let (out, _) = f.output("att1").await;
        assert_eq!(out, "22 77\r\n");
        assert_eq!(f.wait("att1").await.exit_code, 7);

        // stdin_once on a tty: the end of the first attach is a ^D.
        let mut spec = f.spec("att2", &["sh", "-c", "cat; echo eof"]);
        let p = spec.process.as_mut().unwrap();
        p.tty = true;
        p.stdin = true;
        p.stdin_once = true;
        f.containers.create(spec).await.unwrap();
        f.containers.start("att2").await.unwrap();
        let (tx, input) = opened(tty_start("att2"));
        send(&tx, Input::Stdin(b"typed\n".to_vec())).await;
        drop(tx);
        f.containers.attach(input).await.unwrap();
        let (out, _) = f.output("att2").await;
        // The tty echoes the input, then cat repeats it.
        assert_eq!(out, "typed\r\ntyped\r\neof\r\n");
        assert_eq!(f.wait("att2").await.exit_code, 0);
    });
}

#[test]
fn exec_attach_and_port_forward_over_grpc() {
    use stdio::*;
    use tokio::sync::mpsc;
    use tokio_stream::wrappers::ReceiverStream;
    use vmpod_agent::server::{AgentService, BootTimes};
    use vmpod_agent_proto::v1::port_forward_input::Input as PfInput;
    use vmpod_agent_proto::v1::port_forward_output::Output as PfOutput;
    use vmpod_agent_proto::v1::stdio_input::Input;
    use vmpod_agent_proto::v1::stdio_output::Output;
    use vmpod_agent_proto::v1::{PortForwardInput, StdioInput};
    use vmpod_agent_proto::{AgentClient, AgentServer};

    let Some(f) = Fixture::new("xgrpc") else {
        return;
    };
    rt().block_on(async {
        let incoming = tonic::transport::server::TcpIncoming::bind("127.0.0.1:0".parse().unwrap())
            .unwrap()
            .with_nodelay(Some(true));
        let addr = incoming.local_addr().unwrap();
        let boot = BootTimes {
            agent_start_ns: 0,
            mounts_done_ns: 0,
            serving_ns: 0,
        };
        let service = AgentService::new(boot, false, Arc::clone(&f.containers));
        tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(AgentServer::new(service))
                .serve_with_incoming(incoming),
        );
        let mut client = AgentClient::connect(format!("http://{addr}"))
            .await
            .unwrap();
        f.containers
            .create(f.spec("xg1", &["sleep", "999"]))
            .await
            .unwrap();
        f.containers.start("xg1").await.unwrap();

        // An exec to its end.
        let (tx, rx) = mpsc::channel::<StdioInput>(4);
        tx.send(msg(Input::Start(exec_start(
            "xg1",
            &["sh", "-c", "cat; exit 3"],
        ))))
        .await
        .unwrap();
        let mut out = client
            .exec(ReceiverStream::new(rx))
            .await
            .unwrap()
            .into_inner();
        tx.send(msg(Input::Stdin(b"over grpc".to_vec())))
            .await
            .unwrap();
        drop(tx);
        let mut said = Said::default();
        while let Some(m) = out.message().await.unwrap() {
            match m.output.unwrap() {
                Output::Chunk(c) => said.out.extend(c.data),
                Output::ExitCode(c) => said.exit = Some(c),
            }
        }
        assert_eq!((said.out().as_str(), said.exit), ("over grpc", Some(3)));

        // A client that drops the call: the command is hung up on.
        let (tx, rx) = mpsc::channel::<StdioInput>(4);
        tx.send(msg(Input::Start(exec_start("xg1", &["sleep", "1004"]))))
            .await
            .unwrap();
        let out = client
            .exec(ReceiverStream::new(rx))
            .await
            .unwrap()
            .into_inner();
        assert!(runs(&f, "xg1", "sleep 1004").await);
        let dropped = std::time::Instant::now();
        drop(out);
        drop(tx);
        while runs(&f, "xg1", "sleep 1004").await {
            assert!(dropped.elapsed() < Duration::from_secs(5), "still running");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        eprintln!(
            "dropped exec call to its command gone: {:?}",
            dropped.elapsed()
        );

        // Attach: errors come back as statuses.
        let (tx, rx) = mpsc::channel::<StdioInput>(4);
        tx.send(msg(Input::Start(StdioStart {
            id: "xg1".into(),
            stdin: true,
            ..Default::default()
        })))
        .await
        .unwrap();
        drop(tx);
        let e = client.attach(ReceiverStream::new(rx)).await.unwrap_err();
        assert_eq!(e.code(), Code::FailedPrecondition);
        assert_eq!(e.message(), "container xg1 was not created with stdin");

        // PortForward: a refused port, then a round trip.
        let refused = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap().port()
        };
        let port_msg = |p: u16| PortForwardInput {
            input: Some(PfInput::Port(p.into())),
        };
        let e = client
            .port_forward(tokio_stream::iter(vec![port_msg(refused)]))
            .await
            .unwrap_err();
        assert_eq!(e.code(), Code::Unavailable);
        assert!(
            e.message().contains("connection refused"),
            "{}",
            e.message()
        );

        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let echo = tokio::spawn(async move {
            use tokio::io::{AsyncReadExt, AsyncWriteExt};
            let (mut s, _) = listener.accept().await.unwrap();
            let mut got = Vec::new();
            s.read_to_end(&mut got).await.unwrap();
            s.write_all(&got).await.unwrap();
        });
        let input = tokio_stream::iter(vec![
            port_msg(port),
            PortForwardInput {
                input: Some(PfInput::Data(b"ping".to_vec())),
            },
            PortForwardInput {
                input: Some(PfInput::CloseWrite(true)),
            },
        ]);
        let mut out = client.port_forward(input).await.unwrap().into_inner();
        let mut got = Vec::new();
        let mut connected = false;
        while let Some(m) = out.message().await.unwrap() {
            match m.output.unwrap() {
                PfOutput::Connected(c) => connected = c,
                PfOutput::Data(d) => got.extend(d),
            }
        }
        assert!(connected);
        assert_eq!(got, b"ping");
        echo.await.unwrap();
    });
}
