//! vmpod-shim: one process per pod, owning the pod's microVM.
//!
//! Started detached by `vmpod serve` after it wrote `<pod-dir>/vm.json`; it
//! outlives daemon restarts and is found again through `shim.sock`.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, Result};
use clap::Parser;
use tokio::net::UnixListener;
use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::UnixListenerStream;
use vmpod_shim_api::ShimServer;
use vmpod_shim_api::vm_spec::{BackendSpec, VmSpec};

use vmpod_shim::container::Containers;
use vmpod_shim::hypervisor::Hypervisor;
use vmpod_shim::hypervisor::kvm::Kvm;
use vmpod_shim::hypervisor::qemu::{Accel, Qemu};
use vmpod_shim::pod_dir::PodDir;
use vmpod_shim::service::ShimService;
use vmpod_shim::vm::{DEFAULT_STOP_GRACE, Machine};
use vmpod_shim::{commands, process, vm, vm_json};

#[derive(Parser, Debug)]
#[command(name = "vmpod-shim", version, about = "Owns one pod's microVM")]
struct Args {
    /// The pod directory holding vm.json; the shim's sockets and logs go there.
    #[arg(long)]
    pod_dir: PathBuf,
    /// A cgroup.procs file to join before anything is spawned (repeatable).
    #[arg(long = "cgroup-procs")]
    cgroup_procs: Vec<PathBuf>,
    /// Print, as JSON on stdout, the argv of every helper and of the VMM
    /// that vm.json asks for, then exit without starting anything (see
    /// `commands.rs`; `vmpod bench` boots its raw baseline from it).
    #[arg(long)]
    print_commands: bool,
}

fn main() -> ExitCode {
    let shim_start_ns = vm::now_ns();
    let started = tokio::time::Instant::now();
    let args = Args::parse();
    if args.print_commands {
        return print_commands(&PodDir::new(args.pod_dir));
    }
    // Cgroups first, so every child (helpers, VMM) is accounted to the pod.
    for file in &args.cgroup_procs {
        if let Err(e) = std::fs::write(file, format!("{}\n", std::process::id())) {
            eprintln!("vmpod-shim: joining cgroup via {}: {e}", file.display());
            return ExitCode::FAILURE;
        }
    }
    if let Err(e) = process::become_subreaper() {
        eprintln!("vmpod-shim: {e:#}");
        return ExitCode::FAILURE;
    }
    let pod = PodDir::new(args.pod_dir);
    let spec = match vm_json::load(&pod.spec()) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("vmpod-shim: invalid VM spec: {e}");
            return ExitCode::FAILURE;
        }
    };
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(false)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("VMPOD_SHIM_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .init();
    // A current-thread runtime on purpose: PR_SET_PDEATHSIG fires when the
    // forking *thread* exits, so all children must be forked by the main
    // thread, which lives exactly as long as the shim.
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("vmpod-shim: starting the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(pod, spec, shim_start_ns, started)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e:#}");
            eprintln!("vmpod-shim: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// `--print-commands`: vm.json loaded and checked as for a start; nothing
/// joined, created or spawned.
fn print_commands(pod: &PodDir) -> ExitCode {
    let spec = match vm_json::load(&pod.spec()) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("vmpod-shim: invalid VM spec: {e}");
            return ExitCode::FAILURE;
        }
    };
    let json = commands::planned(&spec, pod)
        .and_then(|c| c.to_json())
        .and_then(|j| Ok(serde_json::to_string_pretty(&j)?));
    match json {
        Ok(text) => {
            println!("{text}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("vmpod-shim: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn hypervisor_for(spec: &VmSpec) -> Result<Box<dyn Hypervisor + Send + Sync>> {
    let accel = match spec.backend {
        BackendSpec::QemuKvm => Accel::Kvm,
        BackendSpec::QemuTcg => Accel::Tcg,
        BackendSpec::Kvm => return Ok(Box::new(Kvm)),
    };
    let qemu = spec
        .helpers
        .qemu
        .clone()
        .context("helpers.qemu: the qemu backends need it")?;
    Ok(Box::new(Qemu::new(qemu, accel)))
}

async fn run(
    pod: PodDir,
    spec: VmSpec,
    shim_start_ns: u64,
    started: tokio::time::Instant,
) -> Result<()> {
    tracing::info!(id = %spec.id, backend = spec.backend.name(), pod_dir = %pod.path().display(), "shim starting");
    vm::prepare_dirs(&pod)?;
    let listener = bind_private(&pod.shim_socket())?;

    let hypervisor = hypervisor_for(&spec)?;
    let containers = Containers::new(vmpod_shim::share::PodShare::of(pod.path()));
    let (machine, handle) = Machine::new(
        spec,
        pod.clone(),
        hypervisor,
        containers.clone(),
        shim_start_ns,
        started,
    );
    let (exit_tx, mut exit_rx) = mpsc::unbounded_channel();
    let (exiting_tx, exiting_rx) = watch::channel(false);
    let service = ShimService::new(handle.clone(), containers.clone(), exit_tx, exiting_rx);
    let (stop_server, server_stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(ShimServer::new(service))
            .serve_with_incoming_shutdown(UnixListenerStream::new(listener), async {
                let _ = server_stopped.await;
            }),
    );
    write_pid(&pod.shim_pid())?;
    let vm_task = tokio::spawn(machine.run());
    let events_task = tokio::spawn(vmpod_shim::events::pump(
        handle.clone(),
        containers.events().clone(),
        containers.known(),
        handle.subscribe(),
    ));

    let mut sigterm = signal(SignalKind::terminate()).context("installing SIGTERM handler")?;
    let mut sigint = signal(SignalKind::interrupt()).context("installing SIGINT handler")?;
    tokio::select! {
        _ = exit_rx.recv() => tracing::info!("exiting after Shutdown"),
        _ = sigterm.recv() => {
            tracing::info!("SIGTERM: shutting down");
            handle.shutdown(DEFAULT_STOP_GRACE).await;
        }
        _ = sigint.recv() => {
            tracing::info!("SIGINT: shutting down");
            handle.shutdown(DEFAULT_STOP_GRACE).await;
        }
    }

    // The socket goes first: a daemon that finds no socket knows not to
    // reconnect.
    remove_if_exists(&pod.shim_socket());
    remove_if_exists(&pod.shim_pid());
    let _ = exiting_tx.send(true);
    let _ = stop_server.send(());
    let _ = tokio::time::timeout(Duration::from_millis(500), server).await;
    // Normally already stopped; this makes sure no child outlives us.
    handle.shutdown(DEFAULT_STOP_GRACE).await;
    drop(handle);
    vm_task.abort();
    events_task.abort();
    tracing::info!("shim exiting");
    Ok(())
}

/// Binds `shim.sock` readable by root only: whoever can talk to it can stop
/// the pod. The umask covers the window between bind and chmod.
fn bind_private(path: &Path) -> Result<UnixListener> {
    remove_if_exists(path);
    // SAFETY: umask only swaps the process mask; nothing else runs yet.
    let old = unsafe { libc::umask(0o177) };
    let bound = UnixListener::bind(path);
    // SAFETY: as above, restoring the previous mask.
    unsafe { libc::umask(old) };
    let listener = bound.with_context(|| format!("binding {}", path.display()))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
        .with_context(|| format!("chmod 0600 {}", path.display()))?;
    Ok(listener)
}

/// Written atomically so a reader never sees a partial pid.
fn write_pid(path: &Path) -> Result<()> {
    let tmp = path.with_extension("pid.tmp");
    std::fs::write(&tmp, format!("{}\n", std::process::id()))
        .with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| format!("renaming to {}", path.display()))
}

fn remove_if_exists(path: &Path) {
    if let Err(e) = std::fs::remove_file(path)
        && e.kind() != std::io::ErrorKind::NotFound
    {
        tracing::warn!("removing {}: {e}", path.display());
    }
}
