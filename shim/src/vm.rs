//! The VM's state machine: boot (helpers, VMM, agent), supervise, stop.
//!
//! One task owns every child process and is the only writer of the state;
//! everything else (the gRPC service, signal handling) talks to it through
//! commands. Child exits arrive on one channel, so "boot step N" and "some
//! child died" race in a single `select!` and a dead VMM is seen at once.

use std::os::fd::OwnedFd;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result};
use nix::sys::signal::Signal;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tonic::Status;
use tonic::transport::Channel;
use vmpod_agent_proto::v1::{NetworkInterface, Route, SetupSandboxRequest};
use vmpod_agent_proto::{AGENT_VSOCK_PORT, AgentClient, SHARE_TAG};
use vmpod_shim_api::v1::{BootTimes, Phase, VmState};
use vmpod_shim_api::vm_spec::{BackendSpec, GuestInterface, VmSpec, VmmUser, VsockTransport};

use crate::agent::{self, AgentAddr};
use crate::backends;
use crate::console::{self, ConsoleTail};
use crate::container::Containers;
use crate::hypervisor::qemu;
use crate::hypervisor::{BASE_CMDLINE, Hypervisor, NetCard, RunningVm, VirtioFs, VmConfig, Vsock};
use crate::pod_dir::PodDir;
use crate::process::{self, Exit, ExitSender, Process, describe, log_tail};
use crate::relay::{AgentSource, describe_vm};

/// Grace for QEMU when the shim stops on its own (failure, signal).
pub const DEFAULT_STOP_GRACE: Duration = Duration::from_millis(2000);
/// vhost-user daemons hold no guest state; they get little time.
const HELPER_GRACE: Duration = Duration::from_millis(1000);
/// Orphans are already SIGKILLed by their parent's death; this is a bound.
const ORPHAN_GRACE: Duration = Duration::from_millis(500);
/// How much serial console goes into an error message.
const ERROR_CONSOLE_TAIL: usize = 2048;

pub fn now_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0)
}

/// State readable without asking the VM task.
pub struct Shared {
    pub state: watch::Sender<VmState>,
    agent: Mutex<Option<AgentClient<Channel>>>,
}

impl Shared {
    fn set_agent(&self, client: Option<AgentClient<Channel>>) {
        *self.agent.lock().unwrap_or_else(|e| e.into_inner()) = client;
    }
}

enum Command {
    Shutdown {
        grace: Duration,
        done: oneshot::Sender<()>,
    },
}

/// What the rest of the shim holds to observe and steer the VM.
#[derive(Clone)]
pub struct VmHandle {
    shared: Arc<Shared>,
    commands: mpsc::Sender<Command>,
}

impl VmHandle {
    pub fn state(&self) -> VmState {
        self.shared.state.borrow().clone()
    }

    pub fn subscribe(&self) -> watch::Receiver<VmState> {
        self.shared.state.subscribe()
    }

    /// A client for the agent, only while the VM is READY.
    pub fn agent(&self) -> Option<AgentClient<Channel>> {
        if self.state().phase != Phase::Ready as i32 {
            return None;
        }
        self.shared
            .agent
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Stops the VM and every helper; resolves once all are reaped and the
    /// phase is STOPPED. Safe to call any number of times.
    pub async fn shutdown(&self, grace: Duration) {
        let (done, wait) = oneshot::channel();
        if self
            .commands
            .send(Command::Shutdown { grace, done })
            .await
            .is_ok()
        {
            let _ = wait.await;
        }
    }
}

impl AgentSource for VmHandle {
    fn client(&self) -> Result<AgentClient<Channel>, Status> {
        self.agent().ok_or_else(|| {
            Status::unavailable(format!(
                "guest agent not reachable: {}",
                describe_vm(&self.state())
            ))
        })
    }

    fn why_unavailable(&self) -> String {
        describe_vm(&self.state())
    }
}

pub struct Machine {
    spec: VmSpec,
    pod: PodDir,
    hypervisor: Box<dyn Hypervisor + Send + Sync>,
    shared: Arc<Shared>,
    /// Their host mounts live under the share and go before it does.
    containers: Arc<Containers>,
    /// Set at shim start: the boot deadline counts from there.
    started: Instant,
    helpers: Vec<Process>,
    vmm: Option<Box<dyn RunningVm>>,
    console: ConsoleTail,
    console_task: Option<JoinHandle<()>>,
    exits: ExitSender,
    exits_rx: mpsc::UnboundedReceiver<Exit>,
    commands: mpsc::Receiver<Command>,
}

/// What ended the boot phase.
enum BootEvent {
    Booted(Result<AgentClient<Channel>>),
    ChildExit(Exit),
    Command(Command),
    Deadline,
}

impl Machine {
    pub fn new(
        spec: VmSpec,
        pod: PodDir,
        hypervisor: Box<dyn Hypervisor + Send + Sync>,
        containers: Arc<Containers>,
        shim_start_ns: u64,
        started: Instant,
    ) -> (Machine, VmHandle) {
        let state = VmState {
            phase: Phase::Booting as i32,
            error: String::new(),
            vmm_pid: 0,
            shim_pid: std::process::id(),
            backend: hypervisor.name().to_owned(),
            vcpus: spec.vcpus,
            memory_mib: spec.memory_mib,
            boot: Some(BootTimes {
                shim_start_ns,
                ..Default::default()
            }),
        };
        let shared = Arc::new(Shared {
            state: watch::Sender::new(state),
            agent: Mutex::new(None),
        });
        let (exits, exits_rx) = mpsc::unbounded_channel();
        let (cmd_tx, commands) = mpsc::channel(8);
        let handle = VmHandle {
            shared: shared.clone(),
            commands: cmd_tx,
        };
        let machine = Machine {
            spec,
            pod,
            hypervisor,
            shared,
            containers,
            started,
            helpers: Vec::new(),
            vmm: None,
            console: ConsoleTail::default(),
            console_task: None,
            exits,
            exits_rx,
            commands,
        };
        (machine, handle)
    }

    pub async fn run(mut self) {
        let timeout = Duration::from_millis(self.spec.boot_timeout_ms);
        let deadline = self.started + timeout;
        let event = {
            // Split borrows: the boot future holds `self` mutably, the other
            // branches only the channels, moved out for the duration.
            let mut exits_rx = std::mem::replace(&mut self.exits_rx, mpsc::unbounded_channel().1);
            let mut commands = std::mem::replace(&mut self.commands, mpsc::channel(1).1);
            let event = tokio::select! {
                r = self.boot(deadline) => BootEvent::Booted(r),
                Some(exit) = exits_rx.recv() => BootEvent::ChildExit(exit),
                Some(cmd) = commands.recv() => BootEvent::Command(cmd),
                _ = tokio::time::sleep_until(deadline) => BootEvent::Deadline,
            };
            self.exits_rx = exits_rx;
            self.commands = commands;
            event
        };
        match event {
            BootEvent::Booted(Ok(client)) => self.ready(client),
            BootEvent::Booted(Err(e)) if Instant::now() >= deadline => {
                let reason = self.timeout_reason(timeout, Some(&e));
                self.fail(reason).await
            }
            BootEvent::Booted(Err(e)) => {
                let reason = format!("boot failed: {e:#}{}", self.console_suffix());
                self.fail(reason).await
            }
            BootEvent::Deadline => {
                let reason = self.timeout_reason(timeout, None);
                self.fail(reason).await
            }
            BootEvent::ChildExit(exit) => {
                let exit = self.root_cause(exit).await;
                let reason = self.exit_reason(&exit, "during boot");
                self.fail(reason).await
            }
            BootEvent::Command(cmd) => self.command(cmd).await,
        }
        loop {
            tokio::select! {
                Some(exit) = self.exits_rx.recv() => {
                    // Exits after READY are failures; during or after a stop
                    // they are the stop itself (virtiofsd also quits on its
                    // own once the VMM is gone).
                    if self.phase() == Phase::Ready {
                        let reason = self.exit_reason(&exit, "unexpectedly");
                        self.fail(reason).await;
                    }
                }
                cmd = self.commands.recv() => match cmd {
                    Some(cmd) => self.command(cmd).await,
                    None => break,
                },
            }
        }
        self.teardown(DEFAULT_STOP_GRACE).await;
    }

    async fn boot(&mut self, deadline: Instant) -> Result<AgentClient<Channel>> {
        let pod = self.pod.clone();
        // First, while nothing is running yet: a netns or TAP the daemon
        // did not make (or removed) fails the boot with nothing to undo.
        let tap = open_tap(&self.spec)?;
        let vmm_user = self.spec.vmm_user.unwrap_or(DEFAULT_VMM_USER);
        let VsockPlan {
            vsock,
            agent: agent_addr,
            helper,
        } = vsock_plan(&self.spec, &pod)?;
        if !matches!(vsock, Vsock::Kernel { .. }) {
            backends::remove_stale(&pod.hybrid_vsock())?;
        }
        if let Some(bin) = helper {
            backends::open_run_dir_to(&pod, vmm_user)?;
            let (cmd, confinement) = backends::vhost_device_vsock_confined(
                &bin,
                &pod,
                self.spec.vsock.guest_cid,
                vmm_user,
            )?;
            let p = backends::spawn(
                backends::VHOST_DEVICE_VSOCK,
                cmd,
                confinement,
                &pod.vsock_backend_socket(),
                &pod,
                self.exits.clone(),
            )?;
            self.helpers.push(p);
        }
        let cmd = backends::virtiofsd_command(&self.spec.helpers.virtiofsd, &pod);
        let p = backends::spawn(
            backends::VIRTIOFSD,
            cmd,
            backends::virtiofsd_confinement()?,
            &pod.virtiofs_socket(),
            &pod,
            self.exits.clone(),
        )?;
        self.helpers.push(p);
        // Both helpers start in parallel; wait for their sockets afterwards.
        for (helper, socket) in self.helpers.iter().zip(helper_sockets(&pod, &vsock)) {
            backends::wait_for_socket(helper, &socket, &pod).await?;
        }

        let config = vm_config(&self.spec, &pod, vsock, self.hypervisor.name(), tap)?;
        let mut vm = self
            .hypervisor
            .start(&config, self.exits.clone())
            .context("starting the VMM")?;
        let vmm_pid = vm.pid();
        self.shared.state.send_modify(|s| {
            s.vmm_pid = vmm_pid;
            boot_times(s).vmm_spawned_ns = now_ns();
        });
        if let Some(serial) = vm.take_console() {
            let shared = self.shared.clone();
            let task = console::spawn_reader(
                serial,
                &pod.console_log(),
                self.spec.console_log_bytes,
                self.console.clone(),
                move || {
                    shared
                        .state
                        .send_modify(|s| boot_times(s).kernel_entry_ns = now_ns());
                },
            )?;
            self.console_task = Some(task);
        }
        let has_console = self.console_task.is_some();
        self.vmm = Some(vm);

        // Connecting before the guest's vsock driver is up makes
        // vhost-device-vsock 0.3 log "backend event before vring
        // initialization", and about one boot in twenty then never delivers
        // a host connection to the guest. The banner is printed once the
        // agent listens, so the first CONNECT waits for it. Kernel vsock has
        // no such bug, but an earlier connect there only burns attempts on
        // resets (or a 2 s connect timeout while the guest has no driver),
        // and the wait turns a guest that never starts its agent into the
        // clearer error below.
        if has_console {
            tokio::time::timeout_at(deadline, self.console.banner_seen())
                .await
                .map_err(|_| anyhow::anyhow!("the agent's banner never appeared on the console"))?;
        }
        let guest = &self.spec.guest;
        let setup = SetupSandboxRequest {
            hostname: guest.hostname.clone(),
            dns_servers: guest.dns_servers.clone(),
            dns_searches: guest.dns_searches.clone(),
            dns_options: guest.dns_options.clone(),
            share_tag: SHARE_TAG.to_owned(),
            host_time_ns: i64::try_from(now_ns()).unwrap_or(0),
            interfaces: guest.interfaces.iter().map(interface).collect(),
        };
        let (client, mountpoint) =
            agent::connect_ready(&agent_addr, AGENT_VSOCK_PORT, deadline, &setup).await?;
        tracing::info!(%mountpoint, "sandbox set up in the guest");
        Ok(client)
    }

    fn ready(&mut self, client: AgentClient<Channel>) {
        self.shared.set_agent(Some(client));
        self.shared.state.send_modify(|s| {
            s.phase = Phase::Ready as i32;
            boot_times(s).agent_ready_ns = now_ns();
        });
        let b = self.shared.state.borrow().boot.unwrap_or_default();
        let ms = |t: u64| {
            if t == 0 {
                "-".to_owned()
            } else {
                format!("{}", t.saturating_sub(b.shim_start_ns) / 1_000_000)
            }
        };
        tracing::info!(
            "READY: ms from shim start: vmm spawned {}, kernel entry {}, agent ready {}",
            ms(b.vmm_spawned_ns),
            ms(b.kernel_entry_ns),
            ms(b.agent_ready_ns)
        );
    }

    async fn command(&mut self, cmd: Command) {
        match cmd {
            Command::Shutdown { grace, done } => {
                if self.phase() != Phase::Stopped {
                    tracing::info!("shutdown requested (grace {grace:?})");
                }
                self.teardown(grace).await;
                self.shared
                    .state
                    .send_modify(|s| s.phase = Phase::Stopped as i32);
                let _ = done.send(());
            }
        }
    }

    /// Tears everything down, then publishes FAILED: a watcher that sees
    /// FAILED can rely on no process of this VM being left.
    async fn fail(&mut self, reason: String) {
        tracing::error!("{reason}");
        self.shared.set_agent(None);
        self.teardown(DEFAULT_STOP_GRACE).await;
        self.shared.state.send_modify(|s| {
            s.phase = Phase::Failed as i32;
            s.error = reason;
        });
    }

    /// Stops the VMM, then the helpers, and reaps all of them. Idempotent.
    async fn teardown(&mut self, grace: Duration) {
        self.shared.set_agent(None);
        if let Some(vm) = self.vmm.take() {
            let status = vm.stop(grace).await;
            tracing::info!("VMM stopped: {}", describe(status));
        }
        // All helpers get SIGTERM at once and share one grace period, so a
        // stop costs at most the VMM grace plus one helper grace.
        for helper in &self.helpers {
            if helper.status().is_none() {
                helper.signal(Signal::SIGTERM);
            }
        }
        let helper_deadline = Instant::now() + HELPER_GRACE;
        for helper in self.helpers.drain(..) {
            if tokio::time::timeout_at(helper_deadline, helper.wait())
                .await
                .is_err()
            {
                tracing::warn!(
                    process = helper.name(),
                    "no exit after SIGTERM, sending SIGKILL"
                );
                helper.signal(Signal::SIGKILL);
                helper.wait().await;
            }
        }
        // Whoever served the hybrid-vsock socket (the in-process device or
        // vhost-device-vsock) is gone; its socket file goes too.
        if let Err(e) = std::fs::remove_file(self.pod.hybrid_vsock())
            && e.kind() != std::io::ErrorKind::NotFound
        {
            tracing::warn!("removing {}: {e}", self.pod.hybrid_vsock().display());
        }
        // virtiofsd's namespace sandbox forks; its inner process dies with
        // the outer one and is reparented to us (the shim is a subreaper).
        process::reap_orphans(ORPHAN_GRACE).await;
        if let Some(task) = self.console_task.take() {
            // The VMM is gone, so the console is at EOF; this only flushes.
            let _ = tokio::time::timeout(Duration::from_secs(1), task).await;
        }
        // The guest is gone, and so are its containers: only their host
        // side (relays, root overlays, volume binds) is left to undo.
        self.containers.teardown_all().await;
        // The share and anything a failed teardown left (writable layers).
        vmpod_shim_api::mounts::release(self.pod.path());
    }

    fn phase(&self) -> Phase {
        Phase::try_from(self.shared.state.borrow().phase).unwrap_or(Phase::Unspecified)
    }

    /// When the VMM dies, virtiofsd sees its client go and exits too, and
    /// its exit can arrive first. A helper's exit therefore waits a moment
    /// for a VMM exit, which is then the one reported.
    async fn root_cause(&mut self, first: Exit) -> Exit {
        let is_vmm = |e: &Exit, vmm: &Option<Box<dyn RunningVm>>| {
            vmm.as_ref()
                .is_some_and(|vm| vm.process_name() == e.name && vm.pid() == e.pid)
        };
        if is_vmm(&first, &self.vmm) {
            return first;
        }
        let window = tokio::time::sleep(Duration::from_millis(200));
        tokio::pin!(window);
        loop {
            tokio::select! {
                Some(next) = self.exits_rx.recv() => {
                    if is_vmm(&next, &self.vmm) {
                        return next;
                    }
                }
                _ = &mut window => return first,
            }
        }
    }

    fn exit_reason(&self, exit: &Exit, when: &str) -> String {
        let is_vmm = self
            .vmm
            .as_ref()
            .is_some_and(|vm| vm.process_name() == exit.name && vm.pid() == exit.pid);
        let mut reason = format!(
            "{} (pid {}) exited {when}: {}",
            exit.name,
            exit.pid,
            describe(exit.status)
        );
        if is_vmm {
            if let Some(vm) = &self.vmm {
                let diag = vm.diagnostics();
                if !diag.is_empty() {
                    reason.push_str(&format!("\n{} log:\n{diag}", exit.name));
                }
            }
            reason.push_str(&self.console_suffix());
        } else {
            let log = self.pod.process_log(&exit.name);
            reason.push_str(&format!("\n{} log:\n{}", exit.name, log_tail(&log, 2048)));
        }
        reason
    }

    fn timeout_reason(&self, timeout: Duration, last: Option<&anyhow::Error>) -> String {
        let mut reason = format!(
            "guest did not reach agent-ready within {} ms",
            timeout.as_millis()
        );
        if let Some(e) = last {
            reason.push_str(&format!(" (last error: {e:#})"));
        }
        reason.push_str(&self.console_suffix());
        reason
    }

    fn console_suffix(&self) -> String {
        let tail = self.console.last(ERROR_CONSOLE_TAIL);
        if tail.is_empty() {
            "\nserial console: (no output)".to_owned()
        } else {
            format!("\nserial console tail:\n{tail}")
        }
    }
}

fn boot_times(s: &mut VmState) -> &mut BootTimes {
    s.boot.get_or_insert_with(BootTimes::default)
}

/// The socket each started helper announces readiness with, in start order.
/// How the guest's vsock is served, as `vm.json` asks.
pub struct VsockPlan {
    /// The device the VMM gets.
    pub vsock: Vsock,
    /// Where the shim reaches the agent.
    pub agent: AgentAddr,
    /// The vhost-device-vsock binary to start first, if the VMM needs one.
    pub helper: Option<std::path::PathBuf>,
}

/// The vsock choice of a start of `spec` in `pod`; `Machine::boot` and
/// `--print-commands` (`crate::commands`) both follow it. `vm_json.rs`
/// checked that the backend can serve the transport.
pub fn vsock_plan(spec: &VmSpec, pod: &PodDir) -> Result<VsockPlan> {
    let guest_cid = spec.vsock.guest_cid;
    Ok(match (spec.vsock.transport, spec.backend) {
        (VsockTransport::Kernel, _) => VsockPlan {
            vsock: Vsock::Kernel { guest_cid },
            agent: AgentAddr::Kernel { cid: guest_cid },
            helper: None,
        },
        // The built-in VMM serves the hybrid-vsock socket itself.
        (VsockTransport::Hybrid, BackendSpec::Kvm) => VsockPlan {
            vsock: Vsock::InProcess {
                guest_cid,
                uds: pod.hybrid_vsock(),
            },
            agent: AgentAddr::Hybrid(pod.hybrid_vsock()),
            helper: None,
        },
        (VsockTransport::Hybrid, BackendSpec::QemuKvm | BackendSpec::QemuTcg) => VsockPlan {
            vsock: Vsock::VhostUser {
                socket: pod.vsock_backend_socket(),
            },
            agent: AgentAddr::Hybrid(pod.hybrid_vsock()),
            helper: Some(
                spec.helpers
                    .vhost_device_vsock
                    .clone()
                    .context("hybrid vsock for QEMU needs helpers.vhost-device-vsock")?,
            ),
        },
    })
}

/// The pod's TAP when `vm.json` gives the VM a card (see [`crate::tap`]).
fn open_tap(spec: &VmSpec) -> Result<Option<Arc<OwnedFd>>> {
    let Some(net) = &spec.network else {
        return Ok(None);
    };
    let fd = crate::tap::open_in_netns(&net.netns, &net.tap)?;
    tracing::info!(
        netns = %net.netns.display(),
        tap = %net.tap,
        mac = %net.mac,
        "opened the pod's TAP"
    );
    Ok(Some(Arc::new(fd)))
}

/// A guest interface as the agent takes it: an on-link route is an empty
/// gateway there.
fn interface(i: &GuestInterface) -> NetworkInterface {
    NetworkInterface {
        mac: i.mac.clone(),
        mtu: i.mtu,
        addresses: i.addresses.clone(),
        routes: i
            .routes
            .iter()
            .map(|r| Route {
                destination: r.destination.clone(),
                gateway: r.gateway.clone().unwrap_or_default(),
            })
            .collect(),
    }
}

/// The VM a start of `spec` in `pod` boots, its VMM's log named `log_name`.
/// `tap` is the pod's TAP when `spec` has a network; `None` there makes a
/// plan (`--print-commands`) that shows where the fd would go.
pub fn vm_config(
    spec: &VmSpec,
    pod: &PodDir,
    vsock: Vsock,
    log_name: &str,
    tap: Option<Arc<OwnedFd>>,
) -> Result<VmConfig> {
    let net = match &spec.network {
        Some(n) => Some(NetCard {
            tap,
            mac: n
                .mac
                .parse()
                .map_err(|e| anyhow::anyhow!("network.mac: {e}"))?,
            vhost_net: qemu::vhost_net_available(),
        }),
        None => None,
    };
    Ok(VmConfig {
        name: spec.id.clone(),
        kernel: spec.kernel.clone(),
        initramfs: spec.initramfs.clone(),
        cmdline: BASE_CMDLINE.to_owned(),
        vcpus: spec.vcpus,
        memory_mib: spec.memory_mib,
        vsock,
        fs: Some(VirtioFs {
            socket: pod.virtiofs_socket(),
            tag: SHARE_TAG.to_owned(),
        }),
        log: pod.process_log(log_name),
        vmm_user: Some(spec.vmm_user.unwrap_or(DEFAULT_VMM_USER)),
        net,
    })
}

fn helper_sockets(pod: &PodDir, vsock: &Vsock) -> Vec<std::path::PathBuf> {
    let mut v = Vec::new();
    if matches!(vsock, Vsock::VhostUser { .. }) {
        v.push(pod.vsock_backend_socket());
    }
    v.push(pod.virtiofs_socket());
    v
}

/// `vm.vmm-user`'s default, for a vm.json that names none (an older
/// daemon passed it for the built-in VMM only): QEMU and the vsock helper
/// never run as root.
pub const DEFAULT_VMM_USER: VmmUser = VmmUser {
    uid: 65534,
    gid: 65534,
};

/// Creates the pod's `run/` directory and its share (read-only bind of the
/// host-only skeleton, see [`crate::share`]).
pub fn prepare_dirs(pod: &PodDir) -> Result<()> {
    create_dir(&pod.run())?;
    crate::share::PodShare::of(pod.path()).prepare()
}

fn create_dir(dir: &Path) -> Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use vmpod_shim_api::vm_spec::{GuestRoute, GuestSetup, Helpers, NetSpec, VsockSpec};

    fn spec() -> VmSpec {
        VmSpec {
            id: "pod-1".into(),
            backend: BackendSpec::QemuTcg,
            kernel: "/img/vmlinux".into(),
            initramfs: "/img/initramfs.cpio.gz".into(),
            vcpus: 1,
            memory_mib: 256,
            boot_timeout_ms: 1000,
            helpers: Helpers {
                qemu: Some("/bin/qemu".into()),
                virtiofsd: "/bin/virtiofsd".into(),
                vhost_device_vsock: Some("/bin/vhost-device-vsock".into()),
            },
            vsock: VsockSpec::default(),
            guest: GuestSetup::default(),
            vmm_user: None,
            console_log_bytes: 1 << 20,
            network: Some(NetSpec {
                netns: "/run/netns/vmpod-pod-1".into(),
                tap: "tap0".into(),
                mac: "02:42:0A:58:00:05".into(),
            }),
        }
    }

    #[test]
    fn guest_interfaces_reach_the_agent_with_on_link_routes_empty() {
        let i = GuestInterface {
            mac: "02:42:0a:58:00:05".into(),
            mtu: 1450,
            addresses: vec!["10.88.0.5/16".into(), "fd00::5/64".into()],
            routes: vec![
                GuestRoute {
                    destination: "0.0.0.0/0".into(),
                    gateway: Some("10.88.0.1".into()),
                },
                GuestRoute {
                    destination: "10.99.0.0/16".into(),
                    gateway: None,
                },
            ],
        };
        assert_eq!(
            interface(&i),
            NetworkInterface {
                mac: "02:42:0a:58:00:05".into(),
                mtu: 1450,
                addresses: vec!["10.88.0.5/16".into(), "fd00::5/64".into()],
                routes: vec![
                    Route {
                        destination: "0.0.0.0/0".into(),
                        gateway: "10.88.0.1".into(),
                    },
                    Route {
                        destination: "10.99.0.0/16".into(),
                        gateway: String::new(),
                    },
                ],
            }
        );
    }

    #[test]
    fn the_card_follows_the_spec() {
        let pod = PodDir::new("/pods/p".into());
        let vsock = Vsock::Kernel { guest_cid: 3 };
        let c = vm_config(&spec(), &pod, vsock.clone(), "qemu-tcg", None).expect("config");
        let card = c.net.expect("a card");
        assert_eq!(card.mac.to_string(), "02:42:0a:58:00:05");
        assert!(card.tap.is_none());
        assert_eq!(card.vhost_net, qemu::vhost_net_available());

        let mut s = spec();
        s.network = None;
        let c = vm_config(&s, &pod, vsock.clone(), "qemu-tcg", None).expect("config");
        assert_eq!(c.net, None);

        let mut s = spec();
        if let Some(n) = s.network.as_mut() {
            n.mac = "01:00:00:00:00:01".into();
        }
        let e = vm_config(&s, &pod, vsock, "qemu-tcg", None).expect_err("multicast");
        assert!(e.to_string().contains("network.mac"), "{e}");
    }

    #[test]
    fn no_network_opens_nothing() {
        let mut s = spec();
        s.network = None;
        assert!(open_tap(&s).expect("nothing to open").is_none());
        let e = open_tap(&spec()).expect_err("no such netns here");
        let e = format!("{e:#}");
        assert!(
            e.contains("/run/netns/vmpod-pod-1") && e.contains("tap0"),
            "{e}"
        );
    }
}
