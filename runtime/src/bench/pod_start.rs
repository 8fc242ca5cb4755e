//! `vmpod bench pod-start`: what vmpod adds on top of the VM it boots.
//!
//! Runs N sequential RunPodSandbox calls against a private `vmpod serve`
//! and reads each pod's boot phases from PodSandboxStatus. In the same run it
//! boots the same kernel and initramfs with the same QEMU command line and
//! the same vhost-user helpers, started directly with no shim, no daemon and
//! no agent handshake, and times them to the agent's banner. The ratio of the
//! two medians is the runtime's overhead.
//!
//! The raw boot's command lines are the shim's own: the bench writes a
//! `vm.json` into a scratch pod dir and asks `vmpod-shim --print-commands`
//! for the argv of each helper and of QEMU, so the daemon links no shim
//! code.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use serde::Deserialize;
use vmpod_cri_api::RuntimeServiceClient;
use vmpod_cri_api::v1::{
    PodSandboxConfig, PodSandboxMetadata, PodSandboxStatusRequest, RemovePodSandboxRequest,
    RunPodSandboxRequest, StopPodSandboxRequest,
};
use vmpod_shim_api::layout;
use vmpod_shim_api::vm_spec::{
    BackendSpec, DEFAULT_CONSOLE_LOG_BYTES, GuestSetup, Helpers, VmSpec, VsockSpec, VsockTransport,
};

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

/// What `vmpod-shim --print-commands` prints (see the shim's
/// `commands.rs`); only the parts the raw boot uses.
#[derive(Debug, Deserialize)]
struct ShimCommands {
    helpers: Vec<HelperCommand>,
    vmm: Option<VmmCommand>,
}

#[derive(Debug, Deserialize)]
struct HelperCommand {
    name: String,
    socket: PathBuf,
    argv: Vec<String>,
}

#[derive(Debug, Deserialize)]
struct VmmCommand {
    argv: Vec<String>,
}

/// The shim binary as the daemon finds it.
fn shim_binary(config: &Config) -> Result<PathBuf> {
    crate::host::shim_binary(config).ok_or_else(|| {
        anyhow!(
            "{:?} not found beside vmpod or in PATH",
            config.helpers.shim.0
        )
    })
}

/// The helpers' and QEMU's argv for `dir`, from the shim itself.
fn shim_commands(shim: &Path, dir: &Path) -> Result<ShimCommands> {
    let out = Command::new(shim)
        .arg("--pod-dir")
        .arg(dir)
        .arg("--print-commands")
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("running {} --print-commands", shim.display()))?;
    if !out.status.success() {
        bail!(
            "{} --print-commands: {}: {}",
            shim.display(),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    serde_json::from_slice(&out.stdout).context("reading the shim's --print-commands output")
}

fn spawn(argv: &[String], stdout: Stdio) -> Result<Child> {
    let (program, args) = argv.split_first().context("an empty argv")?;
    Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .stdout(stdout)
        .stderr(Stdio::null())
        .spawn()
        .with_context(|| format!("spawning {program}"))
}

fn measure_raw(config: &Config, count: usize, work: &Path) -> Result<Samples> {
    let backend = match backend::choose(config.vm.backend, &VirtFacts::probe())
        .map_err(|e| anyhow!(e))?
        .backend
    {
        Backend::Qemu {
            accel: backend::Accel::Kvm,
        } => BackendSpec::QemuKvm,
        Backend::Qemu {
            accel: backend::Accel::Tcg,
        } => BackendSpec::QemuTcg,
        Backend::Kvm => bail!("the raw baseline is QEMU; the kvm backend has no raw peer here"),
    };
    let find = |p: &crate::config::Program| {
        crate::host::which(p).ok_or_else(|| anyhow!("{:?} not found", p.0))
    };
    let helpers = Helpers {
        qemu: Some(find(&config.helpers.qemu)?),
        virtiofsd: find(&config.helpers.virtiofsd)?,
        vhost_device_vsock: Some(find(&config.helpers.vhost_device_vsock)?),
    };
    let shim = shim_binary(config)?;
    let mut samples = Samples::default();
    for i in 0..count {
        let dir = work.join(format!("raw-{i}"));
        std::fs::create_dir_all(&dir)?;
        std::fs::create_dir_all(dir.join(layout::RUN_DIR)).context("creating the raw run dir")?;
        std::fs::create_dir_all(dir.join(layout::SHARE_DIR))
            .context("creating the raw share dir")?;
        // As the daemon writes it (cri/sandbox/run.rs), over the vhost-user
        // vsock helper as before.
        let spec = VmSpec {
            id: format!("raw-{i}"),
            backend,
            kernel: config.vm.kernel.as_path().to_path_buf(),
            initramfs: config.vm.initramfs.as_path().to_path_buf(),
            vcpus: config.vm.vcpus,
            memory_mib: config.vm.memory_mib,
            boot_timeout_ms: 60_000,
            helpers: helpers.clone(),
            vsock: VsockSpec {
                guest_cid: vmpod_agent_proto::GUEST_CID,
                transport: VsockTransport::Hybrid,
            },
            guest: GuestSetup::default(),
            vmm_user: Some(config.vm.vmm_user),
            console_log_bytes: DEFAULT_CONSOLE_LOG_BYTES,
            network: None,
        };
        std::fs::write(dir.join(layout::SPEC), serde_json::to_vec_pretty(&spec)?)
            .context("writing the raw vm.json")?;
        let commands = shim_commands(&shim, &dir)?;
        let vmm = commands
            .vmm
            .context("the shim names no VMM process for the raw boot")?;
        let t0 = Instant::now();
        let mut procs = Procs(Vec::new());
        for helper in &commands.helpers {
            procs.0.push(
                spawn(&helper.argv, Stdio::null())
                    .with_context(|| format!("starting {}", helper.name))?,
            );
        }
        for helper in &commands.helpers {
            wait_for(&helper.socket)?;
        }
        let mut child = spawn(&vmm.argv, Stdio::piped()).context("starting qemu")?;
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
