//! `vmpod bench pod-start`: what vmpod adds on top of the VM it boots.
//!
//! Runs N sequential RunPodSandbox calls against a private `vmpod serve`
//! and reads each pod's boot phases from PodSandboxStatus. In the same run it
//! boots the same kernel and initramfs with the same QEMU command line and
//! the same vhost-user helpers, started directly with no shim, no daemon and
//! no agent handshake, and times them to the agent's banner. The ratio of the
//! two medians is the runtime's overhead.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use vmpod_cri_api::RuntimeServiceClient;
use vmpod_cri_api::v1::{
    PodSandboxConfig, PodSandboxMetadata, PodSandboxStatusRequest, RemovePodSandboxRequest,
    RunPodSandboxRequest, StopPodSandboxRequest,
};
use vmpod_shim::hypervisor::qemu::{self, Accel};
use vmpod_shim::hypervisor::{BASE_CMDLINE, VirtioFs, VmConfig, Vsock};
use vmpod_shim::pod_dir::PodDir;

use super::{PrivateDaemon, Samples, connect, print_table};
use crate::config::Config;
use crate::host::backend::{self, Backend, VirtFacts};

pub struct Options {
    pub count: usize,
    pub config_file: Option<PathBuf>,
}

pub async fn run(opts: Options, config: Config) -> Result<()> {
    if opts.count == 0 {
        bail!("--count must be at least 1");
    }
    let work = tempfile::Builder::new()
        .prefix("vmpod-bench-")
        .tempdir()
        .context("creating a scratch dir")?;
    eprintln!(
        "pod-start: {} sequential pods, then {} raw QEMU boots (kernel {})",
        opts.count, opts.count, config.vm.kernel
    );

    let runtime = measure_runtime(&opts, work.path()).await?;
    let raw = measure_raw(&config, opts.count, work.path())?;

    println!();
    print_table(&[
        ("shim start → VMM spawned", &runtime.vmm_spawned),
        ("shim start → kernel/init output", &runtime.kernel_entry),
        ("shim start → agent ready", &runtime.agent_ready),
        ("RunPodSandbox (client-side)", &runtime.total),
        ("raw: helpers+qemu → agent banner", &raw),
    ]);
    let ratio = runtime.total.median() / raw.median();
    println!();
    println!(
        "RunPodSandbox median {:.1} ms vs raw QEMU boot median {:.1} ms: ratio {ratio:.3} (runtime overhead {:+.1}%)",
        runtime.total.median(),
        raw.median(),
        (ratio - 1.0) * 100.0
    );
    Ok(())
}

struct RuntimeSamples {
    vmm_spawned: Samples,
    kernel_entry: Samples,
    agent_ready: Samples,
    total: Samples,
}

async fn measure_runtime(opts: &Options, work: &Path) -> Result<RuntimeSamples> {
    let (_daemon, socket) = PrivateDaemon::start(work, opts.config_file.as_deref())?;
    let mut rt = RuntimeServiceClient::new(connect(&socket).await?);

    let mut s = RuntimeSamples {
        vmm_spawned: Samples::default(),
        kernel_entry: Samples::default(),
        agent_ready: Samples::default(),
        total: Samples::default(),
    };
    for i in 0..opts.count {
        let config = PodSandboxConfig {
            metadata: Some(PodSandboxMetadata {
                name: format!("bench-{i}"),
                uid: format!("bench-uid-{i}"),
                namespace: "bench".into(),
                attempt: 0,
            }),
            ..Default::default()
        };
        let t0 = Instant::now();
        let id = rt
            .run_pod_sandbox(RunPodSandboxRequest {
                config: Some(config),
                runtime_handler: String::new(),
            })
            .await
            .map_err(|e| anyhow!("RunPodSandbox #{i}: {}", e.message()))?
            .into_inner()
            .pod_sandbox_id;
        let total = t0.elapsed();
        let status = rt
            .pod_sandbox_status(PodSandboxStatusRequest {
                pod_sandbox_id: id.clone(),
                verbose: true,
            })
            .await
            .map_err(|e| anyhow!("PodSandboxStatus: {}", e.message()))?
            .into_inner();
        let info: serde_json::Value = serde_json::from_str(
            status
                .info
                .get("info")
                .ok_or_else(|| anyhow!("no verbose info"))?,
        )?;
        let phase = |k: &str| info["bootPhasesMs"][k].as_f64().unwrap_or(f64::NAN);
        s.vmm_spawned.push(phase("vmmSpawned"));
        s.kernel_entry.push(phase("kernelEntry"));
        s.agent_ready.push(phase("agentReady"));
        s.total.push(total.as_secs_f64() * 1e3);
        eprintln!(
            "  pod {}/{}: {:.0} ms",
            i + 1,
            opts.count,
            total.as_secs_f64() * 1e3
        );
        rt.stop_pod_sandbox(StopPodSandboxRequest {
            pod_sandbox_id: id.clone(),
        })
        .await
        .map_err(|e| anyhow!("StopPodSandbox: {}", e.message()))?;
        rt.remove_pod_sandbox(RemovePodSandboxRequest { pod_sandbox_id: id })
            .await
            .map_err(|e| anyhow!("RemovePodSandbox: {}", e.message()))?;
    }
    Ok(s)
}

/// Kills and reaps the raw boot's processes however the measurement ends.
struct Procs(Vec<Child>);

impl Drop for Procs {
    fn drop(&mut self) {
        for c in &mut self.0 {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn measure_raw(config: &Config, count: usize, work: &Path) -> Result<Samples> {
    let accel = match backend::choose(config.vm.backend, &VirtFacts::probe())
        .map_err(|e| anyhow!(e))?
        .backend
    {
        Backend::Qemu {
            accel: backend::Accel::Kvm,
        } => Accel::Kvm,
        Backend::Qemu {
            accel: backend::Accel::Tcg,
        } => Accel::Tcg,
        Backend::Kvm => bail!("the raw baseline is QEMU; the kvm backend has no raw peer here"),
    };
    let find = |p: &crate::config::Program| {
        crate::host::which(p).ok_or_else(|| anyhow!("{:?} not found", p.0))
    };
    let qemu_bin = find(&config.helpers.qemu)?;
    let virtiofsd = find(&config.helpers.virtiofsd)?;
    let vsock = find(&config.helpers.vhost_device_vsock)?;
    let mut samples = Samples::default();
    for i in 0..count {
        let dir = work.join(format!("raw-{i}"));
        std::fs::create_dir_all(&dir)?;
        let pod = PodDir::new(dir.clone());
        std::fs::create_dir_all(pod.run()).context("creating the raw run dir")?;
        std::fs::create_dir_all(pod.share()).context("creating the raw share dir")?;
        let t0 = Instant::now();
        let mut procs = Procs(Vec::new());
        for cmd in [
            vmpod_shim::helpers::vhost_device_vsock_command(
                &vsock,
                &pod,
                vmpod_agent_proto::GUEST_CID,
            ),
            vmpod_shim::helpers::virtiofsd_command(&virtiofsd, &pod),
        ] {
            let mut cmd = cmd.into_std();
            procs.0.push(
                cmd.stdin(Stdio::null())
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .spawn()
                    .context("spawning a helper")?,
            );
        }
        for sock in [pod.vsock_backend_socket(), pod.virtiofs_socket()] {
            wait_for(&sock)?;
        }
        let vm = VmConfig {
            name: format!("raw-{i}"),
            kernel: config.vm.kernel.as_path().to_path_buf(),
            initramfs: config.vm.initramfs.as_path().to_path_buf(),
            cmdline: BASE_CMDLINE.to_string(),
            vcpus: config.vm.vcpus,
            memory_mib: config.vm.memory_mib,
            vsock: Vsock::VhostUser {
                socket: pod.vsock_backend_socket(),
            },
            fs: Some(VirtioFs {
                socket: pod.virtiofs_socket(),
                tag: vmpod_agent_proto::SHARE_TAG.to_string(),
            }),
            log: dir.join("qemu.log"),
            vmm_user: None,
        };
        let mut child = Command::new(&qemu_bin)
            .args(qemu::args(&vm, accel)?)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .context("spawning qemu")?;
        let stdout = child.stdout.take().context("qemu stdout")?;
        procs.0.push(child);
        let mut lines = BufReader::new(stdout).lines();
        let found = lines.any(|l| l.is_ok_and(|l| l.contains(vmpod_agent_proto::BANNER_PREFIX)));
        if !found {
            bail!("raw boot #{i}: qemu exited before the agent banner");
        }
        let ms = t0.elapsed().as_secs_f64() * 1e3;
        samples.push(ms);
        eprintln!("  raw boot {}/{count}: {ms:.0} ms", i + 1);
        drop(procs);
    }
    Ok(samples)
}

fn wait_for(path: &Path) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !path.exists() {
        if Instant::now() > deadline {
            bail!("{} did not appear", path.display());
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    Ok(())
}
