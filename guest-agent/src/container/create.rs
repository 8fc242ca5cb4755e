//! CreateContainer and StartContainer.
//!
//! Create resolves everything that can be wrong with the request first
//! (spec, user, capabilities, seccomp), then makes the cgroup, the stdio
//! and the helper process, and returns once the init reports it is set up
//! and waiting. Start tells it to exec and reports how that went: the
//! sync socket is close-on-exec, so EOF means the exec happened, and an
//! Error frame carries why it did not.

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use nix::mount::MsFlags;
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use prost::Message;
use tokio::sync::{oneshot, watch};
use tonic::{Code, Status};
use tracing::{info, warn};
use vmpod_agent_proto::v1::{
    ContainerEventType, ContainerSpec, ContainerState, ContainerStatus, Mount, NamespaceMode,
    OutputStream, Propagation,
};

use super::channel::{self, Msg};
use super::helper::{INIT_ARG, PAUSE_ARG};
use super::mounts::{DEFAULT_MASKED, DEFAULT_READONLY};
use super::output::Output;
use super::plan::{InitPlan, MountPlan, NsAction, NsPlan, ProcessPlan};
use super::process::DEFAULT_PATH;
use super::stdin::ContainerStdin;
use super::{Container, Containers, Pause, caps, now_ns, pty, seccomp, user, validate};
use crate::reaper::{self, Exit};

/// Removes an id from the "being created" set when creation ends.
struct Reservation<'a> {
    owner: &'a Containers,
    id: String,
}

impl Drop for Reservation<'_> {
    fn drop(&mut self) {
        self.owner
            .creating
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&self.id);
    }
}

fn internal(what: &str, e: impl std::fmt::Display) -> Status {
    Status::internal(format!("{what}: {e}"))
}

/// A copy of `fd` numbered 10 or above, so that the dup2 onto 3 and 4 in
/// the child cannot clobber one with the other.
fn high_fd(fd: &OwnedFd) -> std::io::Result<OwnedFd> {
    // SAFETY: F_DUPFD_CLOEXEC returns a fresh fd we own.
    let raw = unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_DUPFD_CLOEXEC, 10) };
    if raw < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: fresh fd.
    Ok(unsafe { OwnedFd::from_raw_fd(raw) })
}

fn pipe() -> Result<(OwnedFd, OwnedFd), Status> {
    nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(|e| internal("pipe", e))
}

fn to_tokio(s: UnixStream) -> Result<tokio::net::UnixStream, Status> {
    s.set_nonblocking(true).map_err(|e| internal("socket", e))?;
    tokio::net::UnixStream::from_std(s).map_err(|e| internal("socket", e))
}

/// The three stdio fds of the helper, plus what the agent keeps.
struct Stdio3 {
    child: [OwnedFd; 3],
    /// (fd, stream) for the output readers.
    sources: Vec<(OwnedFd, OutputStream)>,
    stdin_writer: Option<OwnedFd>,
    /// A dup of the pty master, for resizes.
    pty_master: Option<OwnedFd>,
}

fn stdio(tty: bool, keep_stdin: bool) -> Result<Stdio3, Status> {
    let dup = |fd: &OwnedFd| fd.try_clone().map_err(|e| internal("dup", e));
    if tty {
        let pty = pty::open().map_err(|e| internal("opening a pty", e))?;
        let stdin_writer = if keep_stdin {
            Some(dup(&pty.master)?)
        } else {
            None
        };
        Ok(Stdio3 {
            child: [dup(&pty.slave)?, dup(&pty.slave)?, pty.slave],
            pty_master: Some(dup(&pty.master)?),
            sources: vec![(pty.master, OutputStream::Stdout)],
            stdin_writer,
        })
    } else {
        let (out_r, out_w) = pipe()?;
        let (err_r, err_w) = pipe()?;
        let (stdin, stdin_writer) = if keep_stdin {
            let (r, w) = pipe()?;
            (r, Some(w))
        } else {
            let null = std::fs::File::open("/dev/null").map_err(|e| internal("/dev/null", e))?;
            (OwnedFd::from(null), None)
        };
        Ok(Stdio3 {
            child: [stdin, out_w, err_w],
            sources: vec![(out_r, OutputStream::Stdout), (err_r, OutputStream::Stderr)],
            stdin_writer,
            pty_master: None,
        })
    }
}

fn finalize_env(mut env: Vec<String>, home: Option<&str>, tty: bool) -> Vec<String> {
    let has = |env: &[String], key: &str| {
        env.iter()
            .any(|e| e.split_once('=').is_some_and(|(k, _)| k == key))
    };
    if !has(&env, "PATH") {
        env.push(format!("PATH={DEFAULT_PATH}"));
    }
    if !has(&env, "HOME") {
        env.push(format!("HOME={}", home.unwrap_or("/")));
    }
    if tty && !has(&env, "TERM") {
        env.push("TERM=xterm".into());
    }
    env
}

fn mount_plans(mounts: &[Mount]) -> Result<Vec<MountPlan>, Status> {
    mounts
        .iter()
        .enumerate()
        .map(|(i, m)| {
            let o = validate::parse_mount_options(&format!("mounts[{i}].options"), &m.options)?;
            let bind = validate::is_bind(m);
            let mut flags = o.flags;
            if bind {
                flags |= MsFlags::MS_BIND;
                if !o.non_recursive {
                    flags |= MsFlags::MS_REC;
                }
            }
            let propagation = o.propagation.unwrap_or(
                match Propagation::try_from(m.propagation).unwrap_or(Propagation::Private) {
                    Propagation::Private => MsFlags::MS_PRIVATE,
                    Propagation::HostToContainer => MsFlags::MS_SLAVE,
                    Propagation::Bidirectional => MsFlags::MS_SHARED,
                },
            );
            Ok(MountPlan {
                source: m.source.clone(),
                destination: m.destination.clone(),
                fstype: if bind {
                    String::new()
                } else {
                    m.r#type.clone()
                },
                flags: flags.bits() as u64,
                data: o.data,
                readonly: m.readonly || m.recursive_readonly || o.readonly,
                recursive_readonly: m.recursive_readonly,
                propagation: propagation.bits() as u64,
            })
        })
        .collect()
}

impl Containers {
    fn reserve(&self, id: &str) -> Result<Reservation<'_>, Status> {
        let mut creating = self.creating.lock().unwrap_or_else(|e| e.into_inner());
        if self.lock_map().contains_key(id) || !creating.insert(id.to_string()) {
            return Err(Status::already_exists(format!(
                "container {id} already exists"
            )));
        }
        Ok(Reservation {
            owner: self,
            id: id.to_string(),
        })
    }

    /// Starts the helper binary in `mode` with the given stdio and extra
    /// fds (which become 3, 4, ...); returns its pid and exit receiver.
    pub(super) fn spawn_helper(
        &self,
        mode: &str,
        stdio: Option<[OwnedFd; 3]>,
        extra: &[&OwnedFd],
    ) -> Result<(i32, oneshot::Receiver<Exit>), Status> {
        let high: Vec<OwnedFd> = extra
            .iter()
            .map(|fd| high_fd(fd))
            .collect::<Result<_, _>>()
            .map_err(|e| internal("dup", e))?;
        let raw: Vec<i32> = high.iter().map(|f| f.as_raw_fd()).collect();
        let mut cmd = Command::new(&self.config.helper);
        // argv[0] as the binary calls itself, not "/proc/self/exe".
        cmd.arg0("vmpod-agent").arg(mode).env_clear();
        match stdio {
            Some([i, o, e]) => {
                cmd.stdin(Stdio::from(i))
                    .stdout(Stdio::from(o))
                    .stderr(Stdio::from(e));
            }
            None => {
                cmd.stdin(Stdio::null())
                    .stdout(Stdio::null())
                    .stderr(Stdio::null());
            }
        }
        // SAFETY: dup2 is async-signal-safe and the closure allocates
        // nothing; the source fds are >= 10 (see high_fd).
        unsafe {
            cmd.pre_exec(move || {
                for (i, fd) in raw.iter().enumerate() {
                    if libc::dup2(*fd, 3 + i as i32) < 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                }
                Ok(())
            });
        }
        let (_child, pid, exit) = reaper::spawn_tracked(|| {
            let child = cmd.spawn()?;
            Ok((child.id() as i32, child))
        })
        .map_err(|e| {
            internal(
                &format!("cannot start the helper {}", self.config.helper.display()),
                e,
            )
        })?;
        // `cmd` owns the child's stdio copies; they must close here so
        // that EOF on the pipes means the container closed them.
        drop(cmd);
        drop(high);
        Ok((pid, exit))
    }

    /// The pause process's pid, starting one if there is none (or it died).
    async fn pod_pause(&self) -> Result<i32, Status> {
        let mut guard = self.pause.lock().await;
        if let Some(p) = guard.as_ref()
            && p.alive.load(Ordering::SeqCst)
        {
            return Ok(p.pid);
        }
        let (ctl_agent, ctl_helper) = UnixStream::pair().map_err(|e| internal("socketpair", e))?;
        let ctl_helper = OwnedFd::from(ctl_helper);
        let (_helper_pid, _helper_exit) = self.spawn_helper(PAUSE_ARG, None, &[&ctl_helper])?;
        drop(ctl_helper);
        let mut ctl = to_tokio(ctl_agent)?;
        let pid =
            match tokio::time::timeout(self.config.setup_timeout, channel::recv_async(&mut ctl))
                .await
            {
                Ok(Ok(Some(Msg::Pid(pid)))) => pid,
                Ok(Ok(Some(Msg::Error { message, .. }))) => {
                    return Err(Status::internal(format!(
                        "cannot start the pod's pause process: {message}"
                    )));
                }
                other => {
                    return Err(Status::internal(format!(
                        "the pause helper failed: {other:?}"
                    )));
                }
            };
        let exit = reaper::watch(pid);
        channel::send_async(&mut ctl, &Msg::Ack)
            .await
            .map_err(|e| internal("pause helper", e))?;
        let alive = Arc::new(AtomicBool::new(true));
        let flag = Arc::clone(&alive);
        tokio::spawn(async move {
            let status = exit.await;
            flag.store(false, Ordering::SeqCst);
            warn!(pid, ?status, "the pod's pause process exited");
        });
        info!(pid, "pod namespaces created");
        *guard = Some(Pause { pid, alive });
        Ok(pid)
    }

    fn ns_plan(&self, mode: NamespaceMode, pause: Option<i32>, kind: &str) -> NsPlan {
        match (mode, pause) {
            (NamespaceMode::NamespaceContainer, _) => NsPlan {
                action: NsAction::New as i32,
                path: String::new(),
            },
            (NamespaceMode::NamespacePod, Some(pid)) => NsPlan {
                action: NsAction::Join as i32,
                path: format!("/proc/{pid}/ns/{kind}"),
            },
            _ => NsPlan {
                action: NsAction::Keep as i32,
                path: String::new(),
            },
        }
    }

    /// CreateContainer.
    pub async fn create(&self, spec: ContainerSpec) -> Result<ContainerStatus, Status> {
        let modes = validate::validate(&spec)?;
        let id = spec.id.clone();
        let _reservation = self.reserve(&id)?;
        let Some(process) = spec.process.clone() else {
            return Err(Status::invalid_argument("spec.process: is required"));
        };
        let security = spec.security.as_ref();
        let privileged = security.is_some_and(|s| s.privileged);
        let caps_set = caps::compute(security)?;
        let bpf = seccomp::build(security, caps_set)?;
        let rootfs = Path::new(&spec.rootfs);
        if !rootfs.is_dir() {
            return Err(Status::failed_precondition(format!(
                "spec.rootfs: {} is not a directory in the guest",
                spec.rootfs
            )));
        }
        let who = user::resolve(rootfs, &process.user.clone().unwrap_or_default())?;
        let process_plan = ProcessPlan {
            args: process.args.clone(),
            env: finalize_env(process.env.clone(), who.home.as_deref(), process.tty),
            cwd: if process.cwd.is_empty() {
                "/".into()
            } else {
                process.cwd.clone()
            },
            uid: who.uid,
            gid: who.gid,
            additional_gids: who.additional_gids,
            capabilities: caps_set,
            no_new_privs: security.is_some_and(|s| s.no_new_privs),
            seccomp_bpf: bpf,
            tty: process.tty,
        };
        let pick = |given: &[String], default: &[&str]| -> Vec<String> {
            if privileged {
                Vec::new()
            } else if given.is_empty() {
                default.iter().map(|s| s.to_string()).collect()
            } else {
                given.to_vec()
            }
        };
        let resources = spec.resources.clone().unwrap_or_default();
        let mut plan = InitPlan {
            rootfs: spec.rootfs.clone(),
            readonly_rootfs: spec.readonly_rootfs,
            cgroup_dir: String::new(),
            pid_ns: None,
            ipc_ns: None,
            mounts: mount_plans(&spec.mounts)?,
            masked_paths: pick(
                security.map_or(&[][..], |s| &s.masked_paths),
                DEFAULT_MASKED,
            ),
            readonly_paths: pick(
                security.map_or(&[][..], |s| &s.readonly_paths),
                DEFAULT_READONLY,
            ),
            sysctls: security
                .map(|s| s.sysctls.clone().into_iter().collect())
                .unwrap_or_default(),
            privileged,
            tty: process.tty,
            process: Some(process_plan.clone()),
            oom_score_adj: (resources.oom_score_adj != 0).then_some(resources.oom_score_adj as i32),
        };

        let pause = if modes.pid == NamespaceMode::NamespacePod
            || modes.ipc == NamespaceMode::NamespacePod
        {
            Some(self.pod_pause().await?)
        } else {
            None
        };
        plan.pid_ns = Some(self.ns_plan(modes.pid, pause, "pid"));
        plan.ipc_ns = Some(self.ns_plan(modes.ipc, pause, "ipc"));

        let cgroup = self.tree.create(&id, spec.resources.as_ref())?;
        plan.cgroup_dir = cgroup.dir().to_string_lossy().into_owned();

        let output = Output::new();
        let launched = tokio::time::timeout(
            self.config.setup_timeout,
            self.launch_init(&plan, process.stdin, &output),
        )
        .await
        .unwrap_or_else(|_| {
            Err(Status::deadline_exceeded(format!(
                "container {id} was not set up within {:?}",
                self.config.setup_timeout
            )))
        });
        let (pid, exit, sync, io) = match launched {
            Ok(v) => v,
            Err(e) => {
                let cg = cgroup.clone();
                let _ = tokio::task::spawn_blocking(move || cg.remove()).await;
                return Err(e);
            }
        };

        let status = ContainerStatus {
            id: id.clone(),
            state: ContainerState::ContainerCreated as i32,
            pid: pid as u32,
            created_at_ns: now_ns(),
            ..Default::default()
        };
        let (tx, _) = watch::channel(status.clone());
        let container = Arc::new(Container {
            id: id.clone(),
            spec,
            process: process_plan,
            cgroup,
            output,
            status: tx,
            events: Arc::clone(&self.events),
            sync: tokio::sync::Mutex::new(Some(sync)),
            start_gate: tokio::sync::Mutex::new(()),
            stdin: io.stdin,
            pty_master: io.pty_master,
        });
        {
            // Announced under the map lock: nothing can reach the container
            // (to start or remove it) before its CREATED is in the log.
            let mut map = self.lock_map();
            map.insert(id.clone(), Arc::clone(&container));
            self.events
                .emit(ContainerEventType::ContainerEventCreated, status.clone());
        }
        // Only now, so that even an init that is already dead is STOPPED
        // after it was CREATED.
        tokio::spawn(watch_exit(container, exit));
        info!(id, pid, "container created");
        Ok(status)
    }

    /// Spawns the init helper and runs the handshake up to Ready.
    async fn launch_init(
        &self,
        plan: &InitPlan,
        keep_stdin: bool,
        output: &Arc<Output>,
    ) -> Result<(i32, oneshot::Receiver<Exit>, tokio::net::UnixStream, KeptIo), Status> {
        let io = stdio(plan.tty, keep_stdin)?;
        let kept = KeptIo {
            stdin: ContainerStdin::new(io.stdin_writer, plan.tty)
                .map_err(|e| internal("stdin writer", e))?,
            pty_master: io.pty_master,
        };
        let (ctl_agent, ctl_helper) = UnixStream::pair().map_err(|e| internal("socketpair", e))?;
        let (sync_agent, sync_helper) =
            UnixStream::pair().map_err(|e| internal("socketpair", e))?;
        let (ctl_helper, sync_helper) = (OwnedFd::from(ctl_helper), OwnedFd::from(sync_helper));
        let (_helper_pid, helper_exit) =
            self.spawn_helper(INIT_ARG, Some(io.child), &[&ctl_helper, &sync_helper])?;
        drop((ctl_helper, sync_helper));
        for (fd, stream) in io.sources {
            output
                .add_source(fd, stream)
                .map_err(|e| internal("output reader", e))?;
        }
        let mut ctl = to_tokio(ctl_agent)?;
        let mut sync = to_tokio(sync_agent)?;

        channel::send_async(&mut ctl, &Msg::Plan(plan.encode_to_vec()))
            .await
            .map_err(|e| internal("sending the plan to the helper", e))?;
        let pid = match channel::recv_async(&mut ctl).await {
            Ok(Some(Msg::Pid(pid))) => pid,
            Ok(Some(Msg::Error { code, message })) => {
                return Err(Status::new(Code::from(code), message));
            }
            other => {
                let status = helper_exit.await.ok();
                return Err(Status::internal(format!(
                    "the container helper failed ({other:?}, exit {status:?})"
                )));
            }
        };
        let exit = reaper::watch(pid);
        channel::send_async(&mut ctl, &Msg::Ack)
            .await
            .map_err(|e| internal("helper", e))?;
        let kill_it = || {
            let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
        };
        match channel::recv_async(&mut sync).await {
            Ok(Some(Msg::Ready)) => {}
            Ok(Some(Msg::Error { code, message })) => {
                kill_it();
                return Err(Status::new(Code::from(code), message));
            }
            other => {
                kill_it();
                return Err(Status::internal(format!(
                    "the container init died during setup ({other:?})"
                )));
            }
        }
        Ok((pid, exit, sync, kept))
    }

    /// StartContainer.
    pub async fn start(&self, id: &str) -> Result<ContainerStatus, Status> {
        let c = self.get(id)?;
        // On its own task: a caller that gives up half way must not leave
        // behind a container whose exec went ahead but which still says
        // CREATED (so StopContainer would leave it alone) and never got
        // its STARTED.
        tokio::spawn(start(c))
            .await
            .map_err(|e| Status::internal(format!("the StartContainer task of {id} failed: {e}")))?
    }
}

/// What the agent keeps of a new container's stdio for Attach.
struct KeptIo {
    stdin: ContainerStdin,
    pty_master: Option<OwnedFd>,
}

/// Publishes the init's exit as soon as the reaper has it.
async fn watch_exit(c: Arc<Container>, exit: oneshot::Receiver<Exit>) {
    let exit = exit.await;
    // Free at once unless StartContainer is between Start and publishing
    // how the exec went, which the exit must come after.
    let _gate = c.start_gate.lock().await;
    let oom = c.cgroup.oom_killed();
    c.transition(ContainerEventType::ContainerEventStopped, |s| {
        s.state = ContainerState::ContainerExited as i32;
        s.pid = 0;
        s.finished_at_ns = now_ns();
        s.exit_code = exit.map_or(255, |e| e.code());
        s.oom_killed = oom;
        if oom && s.message.is_empty() {
            s.message = "OOMKilled".into();
        }
        true
    });
    info!(id = %c.id, exit_code = c.status.borrow().exit_code, oom, "container exited");
}

/// StartContainer's work: lets the init exec and reports how that went.
async fn start(c: Arc<Container>) -> Result<ContainerStatus, Status> {
    let id = c.id.as_str();
    let mut guard = c.sync.lock().await;
    let st = c.status();
    if st.state == ContainerState::ContainerRunning as i32 {
        return Err(Status::failed_precondition(format!(
            "container {id} is already running"
        )));
    }
    if st.state == ContainerState::ContainerExited as i32 {
        return Err(Status::failed_precondition(format!(
            "container {id} has exited"
        )));
    }
    let Some(mut sync) = guard.take() else {
        return Err(Status::failed_precondition(format!(
            "container {id} was already started"
        )));
    };
    let gate = c.start_gate.lock().await;
    c.status.send_modify(|s| s.started_at_ns = now_ns());
    let sent = channel::send_async(&mut sync, &Msg::Start).await;
    let reply = match sent {
        Ok(()) => channel::recv_async(&mut sync).await,
        Err(e) => Err(e),
    };
    match reply {
        Ok(None) => {
            // The exit watcher waits for the gate, so this is still
            // CREATED even if the command has already exited.
            c.transition(ContainerEventType::ContainerEventStarted, |s| {
                if s.state != ContainerState::ContainerCreated as i32 {
                    return false;
                }
                s.state = ContainerState::ContainerRunning as i32;
                true
            });
            drop(gate);
            info!(id, "container started");
            Ok(c.status())
        }
        Ok(Some(Msg::Error { code: _, message })) => {
            // The init exits right after reporting; recorded before its
            // exit is published, so that STOPPED says why. It never ran
            // its command: no start time, as in CRI.
            c.status.send_modify(|s| {
                s.started_at_ns = 0;
                if s.message.is_empty() {
                    s.message = message.clone();
                }
            });
            drop(gate);
            let _ = c.exited_within(Duration::from_secs(5)).await;
            warn!(id, %message, "container failed to start");
            Err(Status::failed_precondition(message))
        }
        other => Err(Status::failed_precondition(format!(
            "container {id} died before it could start ({other:?})"
        ))),
    }
}
