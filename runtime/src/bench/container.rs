//! `vmpod bench container`: how long a container takes from the CRI calls
//! to its first output line in the log file, and how long an ExecSync
//! round trip is, next to the RunPodSandbox time of the pods they run in,
//! all against one private `vmpod serve` in the same run.
//!
//! The first-line figure is CreateContainer + StartContainer as kubelet
//! issues them, timed until the line `echo` wrote is in the CRI log: the
//! whole path through daemon, shim, agent, container setup and the log
//! relay.
//!
//! With `--baseline DIR` it compares the state and stop calls instead:
//! a private daemon of this build and one of a previous revision (its
//! `vmpod`, `vmpod-shim` and guest initramfs, from
//! `scripts/build-baseline.sh`), same config and kernel, each with a pod;
//! they take turns, one container each per round, and every call is timed
//! client-side from request to answer.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use vmpod_cri_api::v1::{
    ContainerConfig, ContainerMetadata, ContainerState, ContainerStatusRequest,
    CreateContainerRequest, ExecSyncRequest, ImageSpec, LinuxContainerConfig,
    ListContainersRequest, PodSandboxConfig, PodSandboxMetadata, PullImageRequest,
    RemoveContainerRequest, RemovePodSandboxRequest, RunPodSandboxRequest, StartContainerRequest,
    StopContainerRequest, StopPodSandboxRequest,
};
use vmpod_cri_api::{ImageServiceClient, RuntimeServiceClient};

use super::{PrivateDaemon, Samples, connect, print_table};

pub struct Options {
    /// An image with `sh`, `echo`, `sleep` and `true` (busybox).
    pub image: String,
    pub count: usize,
    pub pods: usize,
    pub config_file: Option<PathBuf>,
    pub baseline: Option<PathBuf>,
}

/// How long the first output line may take before the run is a failure.
const FIRST_LINE_LIMIT: Duration = Duration::from_secs(60);

pub async fn run(opts: Options) -> Result<()> {
    if opts.count == 0 || opts.pods == 0 {
        bail!("--count and --pods must be at least 1");
    }
    if let Some(dir) = &opts.baseline {
        return compare_calls(&opts, dir).await;
    }
    let work = tempfile::Builder::new()
        .prefix("vmpod-bench-container-")
        .tempdir()
        .context("creating a scratch dir")?;
    let (_daemon, socket) = PrivateDaemon::start(work.path(), opts.config_file.as_deref())?;
    let channel = connect(&socket).await?;
    let mut rt = RuntimeServiceClient::new(channel.clone());
    let mut images = ImageServiceClient::new(channel);
    eprintln!("container: pulling {}", opts.image);
    images
        .pull_image(PullImageRequest {
            image: Some(ImageSpec {
                image: opts.image.clone(),
                ..Default::default()
            }),
            auth: None,
            sandbox_config: None,
        })
        .await
        .map_err(|e| anyhow!("pulling {}: {}", opts.image, e.message()))?;

    let logs = work.path().join("logs");
    let mut boot = Samples::default();
    let mut sandboxes = Vec::new();
    for i in 0..opts.pods {
        let t0 = Instant::now();
        let id = rt
            .run_pod_sandbox(RunPodSandboxRequest {
                config: Some(PodSandboxConfig {
                    metadata: Some(PodSandboxMetadata {
                        name: format!("bench-{i}"),
                        uid: format!("bench-uid-{i}"),
                        namespace: "bench".into(),
                        attempt: 0,
                    }),
                    log_directory: logs.join(format!("pod-{i}")).to_string_lossy().into(),
                    ..Default::default()
                }),
                runtime_handler: String::new(),
            })
            .await
            .map_err(|e| anyhow!("RunPodSandbox #{i}: {}", e.message()))?
            .into_inner()
            .pod_sandbox_id;
        boot.push(ms(t0.elapsed()));
        sandboxes.push(id);
    }
    // Containers run in the last pod; the others only gave boot samples.
    let pod_log_dir = logs.join(format!("pod-{}", opts.pods - 1));
    let sandbox = sandboxes.last().cloned().unwrap_or_default();
    eprintln!(
        "container: {} containers to first log line, then {} ExecSync round trips",
        opts.count, opts.count
    );

    let mut first_line = Samples::default();
    for i in 0..opts.count {
        let name = format!("c{i}");
        std::fs::create_dir_all(pod_log_dir.join(&name))?;
        let marker = format!("vmpod-bench-{i}");
        let config = container_config(&opts.image, &name, &["echo", &marker]);
        let t0 = Instant::now();
        let id = create_and_start(&mut rt, &sandbox, config).await?;
        wait_for_line(&pod_log_dir.join(&name).join("0.log"), &marker).await?;
        first_line.push(ms(t0.elapsed()));
        remove(&mut rt, &id).await?;
    }

    let mut exec = Samples::default();
    std::fs::create_dir_all(pod_log_dir.join("exec"))?;
    let target = create_and_start(
        &mut rt,
        &sandbox,
        container_config(&opts.image, "exec", &["sleep", "3600"]),
    )
    .await?;
    for _ in 0..opts.count {
        let t0 = Instant::now();
        let r = rt
            .exec_sync(ExecSyncRequest {
                container_id: target.clone(),
                cmd: vec!["true".into()],
                timeout: 30,
            })
            .await
            .map_err(|e| anyhow!("ExecSync: {}", e.message()))?
            .into_inner();
        if r.exit_code != 0 {
            bail!("ExecSync true exited {}", r.exit_code);
        }
        exec.push(ms(t0.elapsed()));
    }
    remove(&mut rt, &target).await?;
    for id in sandboxes {
        let _ = rt
            .stop_pod_sandbox(StopPodSandboxRequest {
                pod_sandbox_id: id.clone(),
            })
            .await;
        let _ = rt
            .remove_pod_sandbox(RemovePodSandboxRequest { pod_sandbox_id: id })
            .await;
    }

    println!();
    print_table(&[
        ("RunPodSandbox (the pods' VMs)", &boot),
        ("Create+Start → first log line", &first_line),
        ("ExecSync `true` round trip", &exec),
    ]);
    println!();
    println!(
        "a container's first output takes {:.1} ms median after its pod is up ({:.1} ms to boot the pod): {:.1} ms from nothing to output",
        first_line.median(),
        boot.median(),
        first_line.median() + boot.median()
    );
    Ok(())
}

/// One side of the comparison: a private daemon with one pod.
struct Side {
    name: &'static str,
    _daemon: PrivateDaemon,
    _work: tempfile::TempDir,
    logs: PathBuf,
    rt: RuntimeServiceClient<tonic::transport::Channel>,
    sandbox: String,
    status: Samples,
    list: Samples,
    stop: Samples,
}

impl Side {
    async fn start(
        name: &'static str,
        exe: &Path,
        config: Option<&Path>,
        image: &str,
    ) -> Result<Side> {
        let work = tempfile::Builder::new()
            .prefix("vmpod-bench-calls-")
            .tempdir()
            .context("creating a scratch dir")?;
        let (daemon, socket) = PrivateDaemon::start_exe(exe, work.path(), config)?;
        let channel = connect(&socket).await?;
        let mut rt = RuntimeServiceClient::new(channel.clone());
        ImageServiceClient::new(channel)
            .pull_image(PullImageRequest {
                image: Some(ImageSpec {
                    image: image.into(),
                    ..Default::default()
                }),
                auth: None,
                sandbox_config: None,
            })
            .await
            .map_err(|e| anyhow!("{name}: pulling {image}: {}", e.message()))?;
        let logs = work.path().join("logs");
        std::fs::create_dir_all(&logs)?;
        let sandbox = rt
            .run_pod_sandbox(RunPodSandboxRequest {
                config: Some(PodSandboxConfig {
                    metadata: Some(PodSandboxMetadata {
                        name: format!("bench-{name}"),
                        uid: format!("bench-uid-{name}"),
                        namespace: "bench".into(),
                        attempt: 0,
                    }),
                    log_directory: logs.to_string_lossy().into(),
                    ..Default::default()
                }),
                runtime_handler: String::new(),
            })
            .await
            .map_err(|e| anyhow!("{name}: RunPodSandbox: {}", e.message()))?
            .into_inner()
            .pod_sandbox_id;
        Ok(Side {
            name,
            _daemon: daemon,
            _work: work,
            logs,
            rt,
            sandbox,
            status: Samples::default(),
            list: Samples::default(),
            stop: Samples::default(),
        })
    }

    /// One round: a container whose shell exits on SIGTERM, once its trap
    /// is set (it says so in its log), then one timed ContainerStatus,
    /// ListContainers and StopContainer (10 s grace), and an untimed check
    /// that the stop went through the trap (exit 0).
    async fn round(&mut self, image: &str, i: usize) -> Result<()> {
        let name = format!("c{i}");
        let marker = format!("vmpod-bench-ready-{i}");
        let script = format!("trap 'exit 0' TERM; echo {marker}; sleep 600 & wait");
        let mut config = container_config(image, &name, &["sh", "-c", &script]);
        config.log_path = format!("{name}.log");
        let id = create_and_start(&mut self.rt, &self.sandbox, config).await?;
        wait_for_line(&self.logs.join(format!("{name}.log")), &marker)
            .await
            .with_context(|| format!("{}: container {id} never became ready", self.name))?;
        let t0 = Instant::now();
        let state = self
            .rt
            .container_status(ContainerStatusRequest {
                container_id: id.clone(),
                verbose: false,
            })
            .await
            .map_err(|e| anyhow!("{}: ContainerStatus: {}", self.name, e.message()))?
            .into_inner()
            .status
            .map(|s| s.state());
        self.status.push(ms(t0.elapsed()));
        if state != Some(ContainerState::ContainerRunning) {
            bail!("{}: container {id} is {state:?}, not running", self.name);
        }
        let t0 = Instant::now();
        self.rt
            .list_containers(ListContainersRequest { filter: None })
            .await
            .map_err(|e| anyhow!("{}: ListContainers: {}", self.name, e.message()))?;
        self.list.push(ms(t0.elapsed()));
        let t0 = Instant::now();
        self.rt
            .stop_container(StopContainerRequest {
                container_id: id.clone(),
                timeout: 10,
            })
            .await
            .map_err(|e| anyhow!("{}: StopContainer: {}", self.name, e.message()))?;
        self.stop.push(ms(t0.elapsed()));
        let exit = self
            .rt
            .container_status(ContainerStatusRequest {
                container_id: id.clone(),
                verbose: false,
            })
            .await
            .map_err(|e| anyhow!("{}: ContainerStatus after stop: {}", self.name, e.message()))?
            .into_inner()
            .status
            .map(|s| (s.state(), s.exit_code));
        if exit != Some((ContainerState::ContainerExited, 0)) {
            bail!(
                "{}: container {id} after StopContainer is {exit:?}, not exited 0 by its TERM trap",
                self.name
            );
        }
        remove(&mut self.rt, &id).await
    }
}

async fn compare_calls(opts: &Options, dir: &Path) -> Result<()> {
    for file in ["vmpod", "vmpod-shim", "initramfs.cpio.gz"] {
        if !dir.join(file).is_file() {
            bail!(
                "--baseline {}: no {file} (build it with scripts/build-baseline.sh REV DIR)",
                dir.display()
            );
        }
    }
    let exe = std::env::current_exe().context("locating the vmpod binary")?;
    // The baseline gets the same config, with its own guest initramfs.
    let scratch = tempfile::Builder::new()
        .prefix("vmpod-bench-baseline-")
        .tempdir()
        .context("creating a scratch dir")?;
    let mut table: toml::Table = match &opts.config_file {
        Some(f) => std::fs::read_to_string(f)
            .with_context(|| format!("reading {}", f.display()))?
            .parse()
            .with_context(|| format!("parsing {}", f.display()))?,
        None => toml::Table::new(),
    };
    let vm = table
        .entry("vm")
        .or_insert_with(|| toml::Value::Table(toml::Table::new()));
    let Some(vm) = vm.as_table_mut() else {
        bail!("the config's `vm` is not a table");
    };
    vm.insert(
        "initramfs".into(),
        toml::Value::String(dir.join("initramfs.cpio.gz").to_string_lossy().into()),
    );
    let baseline_config = scratch.path().join("baseline.toml");
    std::fs::write(&baseline_config, table.to_string())
        .with_context(|| format!("writing {}", baseline_config.display()))?;

    eprintln!(
        "container calls: this build against {} ({} rounds each, taking turns)",
        dir.display(),
        opts.count
    );
    let mut sides = [
        Side::start("this", &exe, opts.config_file.as_deref(), &opts.image).await?,
        Side::start(
            "baseline",
            &dir.join("vmpod"),
            Some(&baseline_config),
            &opts.image,
        )
        .await?,
    ];
    for i in 0..opts.count {
        // Alternate which side goes first, so neither always runs warm.
        let order = if i % 2 == 0 { [0, 1] } else { [1, 0] };
        for k in order {
            sides[k].round(&opts.image, i).await?;
        }
    }
    let [this, base] = &sides;
    println!();
    print_table(&[
        ("ContainerStatus: this build", &this.status),
        ("ContainerStatus: baseline", &base.status),
        ("ListContainers (1 pod): this build", &this.list),
        ("ListContainers (1 pod): baseline", &base.list),
        ("StopContainer (exits on TERM): this build", &this.stop),
        ("StopContainer (exits on TERM): baseline", &base.stop),
    ]);
    println!();
    for (call, new, old) in [
        ("ContainerStatus", &this.status, &base.status),
        ("ListContainers", &this.list, &base.list),
        ("StopContainer", &this.stop, &base.stop),
    ] {
        println!(
            "{call}: median {:.2} ms vs {:.2} ms, ratio {:.3}",
            new.median(),
            old.median(),
            new.median() / old.median()
        );
    }
    for side in &mut sides {
        let _ = side
            .rt
            .stop_pod_sandbox(StopPodSandboxRequest {
                pod_sandbox_id: side.sandbox.clone(),
            })
            .await;
        let _ = side
            .rt
            .remove_pod_sandbox(RemovePodSandboxRequest {
                pod_sandbox_id: side.sandbox.clone(),
            })
            .await;
    }
    Ok(())
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn container_config(image: &str, name: &str, cmd: &[&str]) -> ContainerConfig {
    ContainerConfig {
        metadata: Some(ContainerMetadata {
            name: name.into(),
            attempt: 0,
        }),
        image: Some(ImageSpec {
            image: image.into(),
            ..Default::default()
        }),
        command: cmd.iter().map(|s| s.to_string()).collect(),
        log_path: format!("{name}/0.log"),
        linux: Some(LinuxContainerConfig::default()),
        ..Default::default()
    }
}

/// CreateContainer then StartContainer, as kubelet issues them; shared
/// with `bench network`.
pub(super) async fn create_and_start(
    rt: &mut RuntimeServiceClient<tonic::transport::Channel>,
    sandbox: &str,
    config: ContainerConfig,
) -> Result<String> {
    let id = rt
        .create_container(CreateContainerRequest {
            pod_sandbox_id: sandbox.into(),
            config: Some(config),
            sandbox_config: None,
        })
        .await
        .map_err(|e| anyhow!("CreateContainer: {}", e.message()))?
        .into_inner()
        .container_id;
    rt.start_container(StartContainerRequest {
        container_id: id.clone(),
    })
    .await
    .map_err(|e| anyhow!("StartContainer: {}", e.message()))?;
    Ok(id)
}

async fn remove(rt: &mut RuntimeServiceClient<tonic::transport::Channel>, id: &str) -> Result<()> {
    rt.stop_container(StopContainerRequest {
        container_id: id.into(),
        timeout: 0,
    })
    .await
    .map_err(|e| anyhow!("StopContainer: {}", e.message()))?;
    rt.remove_container(RemoveContainerRequest {
        container_id: id.into(),
    })
    .await
    .map_err(|e| anyhow!("RemoveContainer: {}", e.message()))?;
    Ok(())
}

/// Polls the log every millisecond: cheap next to the latencies measured,
/// and simpler to trust than a file watch.
async fn wait_for_line(path: &Path, marker: &str) -> Result<()> {
    let t0 = Instant::now();
    loop {
        if std::fs::read_to_string(path).is_ok_and(|t| t.contains(marker)) {
            return Ok(());
        }
        if t0.elapsed() > FIRST_LINE_LIMIT {
            bail!(
                "{marker:?} did not reach {} within {FIRST_LINE_LIMIT:?}",
                path.display()
            );
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}
