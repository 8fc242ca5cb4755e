//! `vmpod-agent`: PID 1 of a vmpod guest.
//!
//! Started by the kernel as `/init` from the initramfs. It mounts the pseudo
//! filesystems, takes over the serial console, prints the boot banner
//! (`BANNER_PREFIX ...`) and serves the `Agent` gRPC service on vsock port
//! `AGENT_VSOCK_PORT`, where the host's shim reaches it through hybrid vsock.
//!
//! PID 1 must never exit: the kernel would panic. Every fatal error is
//! printed to the console and then the VM is shut down (see
//! [`init::power_off`]), so the host sees the VM exit instead of a hang.
//!
//! Run as any other PID (e.g. on a host, for debugging) it skips the guest
//! setup and simply serves.

use std::process::ExitCode;
use std::sync::Arc;

use anyhow::{Context, Result};
use tracing::{info, warn};
use vmpod_agent::container::{self, Containers};
use vmpod_agent::server::{AgentService, BootTimes};
use vmpod_agent::{VERSION, init, logging, reaper, sysinfo, vsock};
use vmpod_agent_proto::{AGENT_VSOCK_PORT, AgentServer, BANNER_PREFIX};

fn main() -> ExitCode {
    // The agent re-executes itself as a single-threaded helper to set up
    // containers (see `container::helper`); those modes never return here.
    if let Some(code) = container::helper::run_if_requested() {
        return ExitCode::from(code);
    }
    let agent_start_ns = sysinfo::boottime_ns();
    let pid1 = std::process::id() == 1;
    let result = run(pid1, agent_start_ns);
    if pid1 {
        match result {
            Ok(()) => init::power_off("the agent stopped"),
            Err(err) => init::fatal(&err),
        }
    }
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("vmpod-agent: error: {err:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(pid1: bool, agent_start_ns: u64) -> Result<()> {
    if pid1 {
        init::setup().context("guest setup failed")?;
    }
    let mounts_done_ns = sysinfo::boottime_ns();
    logging::init();

    // One vCPU is the common case; a current-thread runtime is enough for a
    // control-plane agent and keeps the binary and its footprint small.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot create the tokio runtime")?;
    runtime.block_on(serve(pid1, agent_start_ns, mounts_done_ns))
}

async fn serve(pid1: bool, agent_start_ns: u64, mounts_done_ns: u64) -> Result<()> {
    // Containers need exit statuses everywhere, not only as PID 1 (off the
    // guest the reaper makes the agent a child subreaper).
    reaper::install().context("cannot install the SIGCHLD reaper")?;
    let containers = Arc::new(Containers::new(container::Config::default()));
    let incoming = vsock::listen(AGENT_VSOCK_PORT)?;
    let boot = BootTimes {
        agent_start_ns,
        mounts_done_ns,
        serving_ns: sysinfo::boottime_ns(),
    };
    let kernel = sysinfo::KernelInfo::current();

    // The banner is the agent's first line on the console. The listener is
    // already bound, so a host that waits for it can connect at once.
    init::console_line(&format!(
        "{BANNER_PREFIX} version={VERSION} kernel={} pid={}",
        kernel.release,
        std::process::id()
    ));
    info!(
        port = AGENT_VSOCK_PORT,
        agent_start_ms = ms(boot.agent_start_ns),
        mounts_done_ms = ms(boot.mounts_done_ns),
        serving_ms = ms(boot.serving_ns),
        "serving gRPC on vsock"
    );

    // Events streams never end on their own, and a graceful shutdown
    // waits for every open call: end them once shutdown is asked for.
    let shutdown = {
        let containers = Arc::clone(&containers);
        async move {
            shutdown_requested().await;
            containers.close_events();
        }
    };
    tonic::transport::Server::builder()
        .add_service(AgentServer::new(AgentService::new(boot, pid1, containers)))
        .serve_with_incoming_shutdown(incoming, shutdown)
        .await
        .context("the gRPC server failed")?;
    info!("shutting down");
    Ok(())
}

/// Resolves on SIGTERM or SIGINT (the kernel sends SIGINT to init on
/// Ctrl-Alt-Del). If the handlers cannot be installed it never resolves.
async fn shutdown_requested() {
    use tokio::signal::unix::{SignalKind, signal};
    match (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) {
        (Ok(mut term), Ok(mut int)) => {
            tokio::select! {
                _ = term.recv() => info!("SIGTERM received"),
                _ = int.recv() => info!("SIGINT received"),
            }
        }
        (Err(err), _) | (_, Err(err)) => {
            warn!("cannot install shutdown signal handlers: {err}");
            std::future::pending::<()>().await;
        }
    }
}

fn ms(ns: u64) -> f64 {
    ns as f64 / 1e6
}
