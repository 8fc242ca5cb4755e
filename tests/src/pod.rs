//! One daemon, one loopback registry with the busybox fixture, one READY
//! pod, driven through CRI like kubelet does. VM boots are the expensive
//! part under TCG, so tests boot one pod and check several things in it.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use tonic::transport::Channel;
use vmpod_cri_api::v1::*;
use vmpod_cri_api::{ImageServiceClient, RuntimeServiceClient};

use crate::daemon::{Daemon, pull, test_config};
use crate::registry::{Registry, fixtures_dir};

pub type Rt = RuntimeServiceClient<Channel>;

pub struct Pod {
    pub daemon: Daemon,
    pub rt: Rt,
    pub sandbox: String,
    pub log_dir: PathBuf,
    /// The busybox fixture, pulled.
    pub busybox: String,
    /// The `config` fixture (an image config with env, user, workdir), pulled.
    pub config_image: String,
    _registry: Registry,
    _logs: tempfile::TempDir,
}

impl Pod {
    /// A pod named `name`; `config` is added to the daemon's test config,
    /// inside its `[vm]` section (start another section for other keys).
    pub async fn start(name: &str, config: &str, linux: Option<LinuxPodSandboxConfig>) -> Pod {
        let reg = Registry::start();
        reg.push_fixture(fixtures_dir(), "busybox", "busybox:latest");
        reg.push_fixture(fixtures_dir(), "config", "config:latest");
        let cfg = format!(
            "{config}\n[registry.hosts.\"{}\"]\nplain-http = true\n",
            reg.addr()
        );
        let daemon = Daemon::start_with_config(&test_config(&cfg))
            .await
            .expect("vmpod serve starts");
        let mut images: ImageServiceClient<Channel> = daemon.images().await.expect("images");
        let busybox = format!("{}/busybox:latest", reg.addr());
        let config_image = format!("{}/config:latest", reg.addr());
        for image in [&busybox, &config_image] {
            pull(&mut images, image)
                .await
                .unwrap_or_else(|e| panic!("pull {image}: {e}"));
        }
        let logs = tempfile::Builder::new()
            .prefix("vmpod-logs-")
            .tempdir()
            .expect("tempdir");
        let log_dir = logs.path().join(name);
        std::fs::create_dir_all(&log_dir).expect("log dir");
        let mut rt = daemon.runtime().await.expect("runtime client");
        let sandbox = rt
            .run_pod_sandbox(RunPodSandboxRequest {
                config: Some(PodSandboxConfig {
                    metadata: Some(PodSandboxMetadata {
                        name: name.into(),
                        uid: format!("uid-{name}"),
                        namespace: "vmpod-test".into(),
                        attempt: 0,
                    }),
                    hostname: format!("{name}-host"),
                    log_directory: log_dir.to_string_lossy().into(),
                    dns_config: Some(DnsConfig {
                        servers: vec!["10.96.0.10".into()],
                        searches: vec!["vmpod-test.svc.cluster.local".into()],
                        options: vec![],
                    }),
                    linux,
                    ..Default::default()
                }),
                runtime_handler: String::new(),
            })
            .await
            .unwrap_or_else(|e| panic!("RunPodSandbox: {e}\n{}", daemon.log_text()))
            .into_inner()
            .pod_sandbox_id;
        Pod {
            daemon,
            rt,
            sandbox,
            log_dir,
            busybox,
            config_image,
            _registry: reg,
            _logs: logs,
        }
    }

    /// The pod's directory on the host.
    pub fn pod_dir(&self) -> PathBuf {
        self.daemon.state_dir.join("pods").join(&self.sandbox[..16])
    }

    /// A busybox container running `cmd`, logging to `<name>/0.log`.
    pub fn config(&self, name: &str, cmd: &[&str]) -> ContainerConfig {
        self.config_of(&self.busybox, name, cmd)
    }

    /// A container of `image` running `cmd`, logging to `<name>/0.log`.
    pub fn config_of(&self, image: &str, name: &str, cmd: &[&str]) -> ContainerConfig {
        ContainerConfig {
            metadata: Some(ContainerMetadata {
                name: name.into(),
                attempt: 0,
            }),
            image: Some(ImageSpec {
                image: image.to_string(),
                ..Default::default()
            }),
            command: cmd.iter().map(|s| s.to_string()).collect(),
            log_path: format!("{name}/0.log"),
            linux: Some(LinuxContainerConfig::default()),
            ..Default::default()
        }
    }

    /// A busybox container that grows a string until its 32 MiB memory
    /// limit gets it OOM-killed.
    pub fn oom_config(&self, name: &str) -> ContainerConfig {
        let mut c = self.config(
            name,
            &[
                "sh",
                "-c",
                "a=xxxxxxxxxxxxxxxx; while true; do a=\"$a$a\"; done",
            ],
        );
        c.linux = Some(LinuxContainerConfig {
            resources: Some(LinuxContainerResources {
                memory_limit_in_bytes: 32 << 20,
                ..Default::default()
            }),
            security_context: None,
        });
        c
    }

    /// The pod's status (not verbose).
    pub async fn sandbox_status(&mut self) -> PodSandboxStatusResponse {
        self.rt
            .pod_sandbox_status(PodSandboxStatusRequest {
                pod_sandbox_id: self.sandbox.clone(),
                verbose: false,
            })
            .await
            .expect("PodSandboxStatus")
            .into_inner()
    }

    pub async fn create(&mut self, config: ContainerConfig) -> Result<String, tonic::Status> {
        self.rt
            .create_container(CreateContainerRequest {
                pod_sandbox_id: self.sandbox.clone(),
                config: Some(config),
                sandbox_config: None,
            })
            .await
            .map(|r| r.into_inner().container_id)
    }

    pub async fn start_container(&mut self, id: &str) -> Result<(), tonic::Status> {
        self.rt
            .start_container(StartContainerRequest {
                container_id: id.into(),
            })
            .await
            .map(|_| ())
    }

    /// Creates and starts; panics with the daemon log on failure.
    pub async fn run(&mut self, config: ContainerConfig) -> String {
        let id = match self.create(config).await {
            Ok(id) => id,
            Err(e) => panic!("CreateContainer: {e}\n{}", self.daemon.log_text()),
        };
        if let Err(e) = self.start_container(&id).await {
            panic!("StartContainer: {e}\n{}", self.daemon.log_text());
        }
        id
    }

    /// The CRI log file of container `name`.
    pub fn log_path(&self, name: &str) -> PathBuf {
        self.log_dir.join(name).join("0.log")
    }

    pub async fn stop(&mut self, id: &str, timeout: i64) {
        self.rt
            .stop_container(StopContainerRequest {
                container_id: id.into(),
                timeout,
            })
            .await
            .expect("StopContainer");
    }

    pub async fn status(&mut self, id: &str) -> ContainerStatus {
        self.rt
            .container_status(ContainerStatusRequest {
                container_id: id.into(),
                verbose: false,
            })
            .await
            .expect("ContainerStatus")
            .into_inner()
            .status
            .expect("a status")
    }

    /// Waits for the container to exit; returns its final status.
    pub async fn wait_exit(&mut self, id: &str, limit: Duration) -> ContainerStatus {
        let t0 = Instant::now();
        loop {
            let s = self.status(id).await;
            if s.state() == ContainerState::ContainerExited {
                return s;
            }
            assert!(
                t0.elapsed() < limit,
                "container {id} still {:?} after {limit:?}",
                s.state()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    pub async fn exec(
        &mut self,
        id: &str,
        cmd: &[&str],
        timeout: i64,
    ) -> Result<ExecSyncResponse, tonic::Status> {
        self.rt
            .exec_sync(ExecSyncRequest {
                container_id: id.into(),
                cmd: cmd.iter().map(|s| s.to_string()).collect(),
                timeout,
            })
            .await
            .map(tonic::Response::into_inner)
    }

    /// Runs a shell script; returns (exit code, stdout + stderr).
    pub async fn sh_any(&mut self, id: &str, script: &str) -> (i32, String) {
        let r = self
            .exec(id, &["sh", "-c", script], 60)
            .await
            .unwrap_or_else(|e| panic!("exec {script:?}: {e}"));
        let mut out = String::from_utf8_lossy(&r.stdout).into_owned();
        out.push_str(&String::from_utf8_lossy(&r.stderr));
        (r.exit_code, out)
    }

    /// stdout of a successful exec, as text.
    pub async fn sh(&mut self, id: &str, script: &str) -> String {
        let r = self
            .exec(id, &["sh", "-c", script], 60)
            .await
            .unwrap_or_else(|e| panic!("exec {script:?}: {e}"));
        assert_eq!(
            r.exit_code,
            0,
            "exec {script:?}: stderr {}",
            String::from_utf8_lossy(&r.stderr)
        );
        String::from_utf8_lossy(&r.stdout).into_owned()
    }

    /// The VMM's pid, from PodSandboxStatus's verbose info.
    pub async fn vm_pid(&mut self) -> u32 {
        let info = self
            .rt
            .pod_sandbox_status(PodSandboxStatusRequest {
                pod_sandbox_id: self.sandbox.clone(),
                verbose: true,
            })
            .await
            .expect("PodSandboxStatus")
            .into_inner();
        let info: serde_json::Value =
            serde_json::from_str(&info.info["info"]).expect("verbose info is JSON");
        info["vmPid"]
            .as_u64()
            .and_then(|p| u32::try_from(p).ok())
            .filter(|p| *p > 0)
            .unwrap_or_else(|| panic!("no vmPid in {info}"))
    }

    pub async fn remove_pod(&mut self) {
        self.rt
            .stop_pod_sandbox(StopPodSandboxRequest {
                pod_sandbox_id: self.sandbox.clone(),
            })
            .await
            .expect("StopPodSandbox");
        self.rt
            .remove_pod_sandbox(RemovePodSandboxRequest {
                pod_sandbox_id: self.sandbox.clone(),
            })
            .await
            .expect("RemovePodSandbox");
    }
}
