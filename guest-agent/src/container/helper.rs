//! The agent's hidden helper modes: `vmpod-agent __vmpod-container-init`,
//! `__vmpod-container-exec` and `__vmpod-pod-pause`.
//!
//! The agent is a tokio process with threads, and setns(CLONE_NEWNS),
//! unshare(CLONE_NEWNS) and a clean fork are only possible, or only safe,
//! in a single-threaded process. So the agent re-executes its own binary
//! (`/proc/self/exe`) with the plan on an inherited socket, and this code,
//! run first thing in `main`, does the namespace work.
//!
//! Container init (fds: 0-2 the container's stdio, 3 control, 4 sync):
//!
//! ```text
//! helper H: read Plan; join the cgroup; setns/unshare pid and ipc; fork
//!   child C (pid 1 of a new pid namespace, or a member of the pod's):
//!     setsid (+ controlling tty); unshare mnt+cgroup; mounts; pivot_root;
//!     sysctls, masks; user, capabilities, seccomp; look up args[0];
//!     send Ready; wait for Start; exec (or report why not)
//!   H: send Pid(C); wait for Ack (the agent now watches C); exit 0
//! ```
//!
//! H exits only after the agent registered C with the reaper, so C's exit
//! status, which reaches the agent once C is reparented to it, cannot be
//! reaped unclaimed. An exec (ExecSync, Exec) helper stays the parent of
//! its process and exits with its status; the pause process is the init of the
//! pod's pid namespace and reaps whatever is orphaned there.

use std::io::{self, Write};
use std::os::fd::{FromRawFd, OwnedFd};
use std::os::unix::net::UnixStream;

use anyhow::{Context, Result};
use nix::sched::{CloneFlags, setns, unshare};
use nix::unistd::{ForkResult, fork};
use prost::Message;

use super::channel::{self, CTL_FD, Msg, SYNC_FD};
use super::mounts;
use super::plan::{ExecPlan, InitPlan, NsAction, NsPlan, ProcessPlan};
use super::process::{self, ExecError};

pub const INIT_ARG: &str = "__vmpod-container-init";
pub const EXEC_ARG: &str = "__vmpod-container-exec";
pub const PAUSE_ARG: &str = "__vmpod-pod-pause";

/// Runs a helper mode if argv asks for one; returns its exit code. `None`
/// means this is a normal agent start.
pub fn run_if_requested() -> Option<u8> {
    let mode = std::env::args_os().nth(1)?;
    let code = match mode.to_str()? {
        INIT_ARG => container_init(),
        EXEC_ARG => container_exec(),
        PAUSE_ARG => pod_pause(),
        _ => return None,
    };
    Some(code)
}

/// Errors the helper reports: a gRPC code and text for the agent.
struct Failure {
    code: tonic::Code,
    message: String,
}

impl From<anyhow::Error> for Failure {
    fn from(e: anyhow::Error) -> Self {
        // A missing source, destination or directory is the caller's to
        // fix; anything else is ours.
        let code = match e.root_cause().downcast_ref::<io::Error>() {
            Some(io)
                if matches!(
                    io.kind(),
                    io::ErrorKind::NotFound
                        | io::ErrorKind::NotADirectory
                        | io::ErrorKind::IsADirectory
                        | io::ErrorKind::PermissionDenied
                        | io::ErrorKind::ReadOnlyFilesystem
                ) =>
            {
                tonic::Code::FailedPrecondition
            }
            _ => match e.root_cause().downcast_ref::<nix::errno::Errno>() {
                Some(nix::errno::Errno::ENOENT | nix::errno::Errno::ENOTDIR) => {
                    tonic::Code::FailedPrecondition
                }
                _ => tonic::Code::Internal,
            },
        };
        Failure {
            code,
            message: format!("{e:#}"),
        }
    }
}

fn report(sock: &mut UnixStream, code: tonic::Code, message: String) {
    let _ = channel::send(
        sock,
        &Msg::Error {
            code: code as i32,
            message,
        },
    );
}

/// Takes an inherited fd, marking it close-on-exec (the dup2 that put it
/// there cleared the flag).
fn inherited(fd: i32) -> io::Result<UnixStream> {
    // SAFETY: fcntl on an fd number.
    if unsafe { libc::fcntl(fd, libc::F_SETFD, libc::FD_CLOEXEC) } != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: the agent passes these fds for us to own.
    Ok(UnixStream::from(unsafe { OwnedFd::from_raw_fd(fd) }))
}

fn read_plan<M: Message + Default>(ctl: &mut UnixStream) -> Result<M> {
    match channel::recv(ctl).context("reading the plan")? {
        Some(Msg::Plan(bytes)) => M::decode(bytes.as_slice()).context("decoding the plan"),
        other => anyhow::bail!("expected a plan, got {other:?}"),
    }
}

fn join_cgroup(dir: &str) -> Result<()> {
    if dir.is_empty() {
        return Ok(());
    }
    let path = format!("{dir}/cgroup.procs");
    std::fs::OpenOptions::new()
        .write(true)
        .open(&path)
        .and_then(|mut f| f.write_all(b"0"))
        .with_context(|| format!("cannot join the cgroup {dir}"))
}

fn enter_ns(ns: Option<&NsPlan>, flag: CloneFlags, what: &str) -> Result<()> {
    let Some(ns) = ns else { return Ok(()) };
    match NsAction::try_from(ns.action).unwrap_or(NsAction::Keep) {
        NsAction::Keep => Ok(()),
        NsAction::New => unshare(flag).with_context(|| format!("unshare({what})")),
        NsAction::Join => {
            let f = std::fs::File::open(&ns.path)
                .with_context(|| format!("cannot open {}", ns.path))?;
            setns(f, flag).with_context(|| format!("setns({what}) into {}", ns.path))
        }
    }
}

/// Waits for the agent's go-ahead after reporting `child`; kills the child
/// if the agent went away instead.
fn hand_over(ctl: &mut UnixStream, child: nix::unistd::Pid) -> u8 {
    let sent = channel::send(ctl, &Msg::Pid(child.as_raw()));
    match sent.and_then(|()| channel::recv(ctl)) {
        Ok(Some(Msg::Ack)) => 0,
        _ => {
            let _ = nix::sys::signal::kill(child, nix::sys::signal::Signal::SIGKILL);
            1
        }
    }
}

fn container_init() -> u8 {
    let (mut ctl, sync) = match (inherited(CTL_FD), inherited(SYNC_FD)) {
        (Ok(c), Ok(s)) => (c, s),
        _ => return 1,
    };
    let plan: InitPlan = match read_plan(&mut ctl) {
        Ok(p) => p,
        Err(e) => {
            let f = Failure::from(e);
            report(&mut ctl, f.code, f.message);
            return 1;
        }
    };
    let prepared = (|| -> Result<()> {
        join_cgroup(&plan.cgroup_dir)?;
        enter_ns(plan.pid_ns.as_ref(), CloneFlags::CLONE_NEWPID, "pid")?;
        enter_ns(plan.ipc_ns.as_ref(), CloneFlags::CLONE_NEWIPC, "ipc")?;
        Ok(())
    })();
    if let Err(e) = prepared {
        let f = Failure::from(e);
        report(&mut ctl, f.code, f.message);
        return 1;
    }
    // SAFETY: this process is single-threaded (a fresh exec that started
    // no threads), so the child may do anything.
    match unsafe { fork() } {
        Err(e) => {
            report(&mut ctl, tonic::Code::Internal, format!("fork: {e}"));
            1
        }
        Ok(ForkResult::Child) => {
            drop(ctl);
            init_child(&plan, sync)
        }
        Ok(ForkResult::Parent { child }) => {
            drop(sync);
            hand_over(&mut ctl, child)
        }
    }
}

/// The container's first process; returns only to exit.
fn init_child(plan: &InitPlan, mut sync: UnixStream) -> u8 {
    let setup = (|| -> Result<(ProcessPlan, Result<std::path::PathBuf, ExecError>, bool)> {
        let p = plan.process.clone().context("the plan has no process")?;
        become_session_leader(plan.tty)?;
        let mut flags = CloneFlags::CLONE_NEWNS;
        if !plan.cgroup_dir.is_empty() {
            flags |= CloneFlags::CLONE_NEWCGROUP;
        }
        unshare(flags).context("unshare(mnt, cgroup)")?;
        mounts::prepare(plan)?;
        mounts::pivot(&plan.rootfs)?;
        mounts::after_pivot(plan)?;
        process::enter_cwd(&p.cwd, true)?;
        if plan.readonly_rootfs {
            mounts::readonly_root()?;
        }
        if let Some(adj) = plan.oom_score_adj {
            std::fs::write("/proc/self/oom_score_adj", adj.to_string())
                .context("cannot set oom_score_adj")?;
        }
        let seccomp_later = process::switch_credentials(&p)?;
        // Again as the user: a directory root could enter but the user
        // cannot is an error now rather than a confusing one later.
        process::enter_cwd(&p.cwd, false)?;
        let exe = process::lookup(&p.args[0], &p.env);
        Ok((p, exe, seccomp_later))
    })();
    let (p, exe, seccomp_later) = match setup {
        Ok(v) => v,
        Err(e) => {
            let f = Failure::from(e);
            report(&mut sync, f.code, f.message);
            return 1;
        }
    };
    if channel::send(&mut sync, &Msg::Ready).is_err() {
        return 1;
    }
    match channel::recv(&mut sync) {
        Ok(Some(Msg::Start)) => {}
        // The agent gave up on this container (removed before start).
        _ => return 1,
    }
    let err = match exe {
        Err(e) => e,
        Ok(path) => {
            process::cloexec_from_3();
            process::reset_signals();
            if seccomp_later && let Err(e) = super::seccomp::install(&p.seccomp_bpf) {
                report(
                    &mut sync,
                    tonic::Code::Internal,
                    format!("installing seccomp: {e}"),
                );
                return 1;
            }
            process::exec(&path, &p)
        }
    };
    report(&mut sync, tonic::Code::FailedPrecondition, err.message);
    err.exit_code as u8
}

/// A new session, and with a tty (on fds 0-2) that tty as the controlling
/// terminal.
fn become_session_leader(tty: bool) -> Result<()> {
    nix::unistd::setsid().context("setsid")?;
    if tty {
        // SAFETY: ioctl on fd 0 with an integer argument.
        if unsafe { libc::ioctl(0, libc::TIOCSCTTY, 0) } != 0 {
            return Err(io::Error::last_os_error()).context("ioctl(TIOCSCTTY)");
        }
    }
    Ok(())
}

/// Namespaces of `pid` to join for an exec, in order: mnt last, since it
/// also changes root and cwd. Ones we already share are skipped (setns
/// into one's own namespace is refused for some kinds).
fn exec_namespaces(pid: i32) -> Result<Vec<(std::fs::File, CloneFlags, &'static str)>> {
    use std::os::unix::fs::MetadataExt;
    let mut out = Vec::new();
    for (name, flag) in [
        ("ipc", CloneFlags::CLONE_NEWIPC),
        ("pid", CloneFlags::CLONE_NEWPID),
        ("cgroup", CloneFlags::CLONE_NEWCGROUP),
        ("mnt", CloneFlags::CLONE_NEWNS),
    ] {
        let theirs = format!("/proc/{pid}/ns/{name}");
        let ours = format!("/proc/self/ns/{name}");
        let same = match (std::fs::metadata(&theirs), std::fs::metadata(&ours)) {
            (Ok(a), Ok(b)) => a.ino() == b.ino() && a.dev() == b.dev(),
            (Err(e), _) => return Err(e).with_context(|| format!("cannot see {theirs}")),
            _ => false,
        };
        if !same {
            let f =
                std::fs::File::open(&theirs).with_context(|| format!("cannot open {theirs}"))?;
            out.push((f, flag, name));
        }
    }
    Ok(out)
}

fn container_exec() -> u8 {
    let mut ctl = match inherited(CTL_FD) {
        Ok(c) => c,
        Err(_) => return 1,
    };
    let plan: ExecPlan = match read_plan(&mut ctl) {
        Ok(p) => p,
        Err(e) => {
            let f = Failure::from(e);
            report(&mut ctl, f.code, f.message);
            return 1;
        }
    };
    let entered = (|| -> Result<ProcessPlan> {
        let p = plan.process.clone().context("the plan has no process")?;
        // Open every namespace first: once in the container's mount
        // namespace, /proc/<pid> means something else.
        let namespaces = exec_namespaces(plan.target_pid)?;
        join_cgroup(&plan.cgroup_dir)?;
        for (f, flag, name) in namespaces {
            setns(f, flag).with_context(|| format!("setns({name})"))?;
        }
        Ok(p)
    })();
    let p = match entered {
        Ok(p) => p,
        Err(e) => {
            let f = Failure::from(e);
            report(&mut ctl, f.code, f.message);
            return 1;
        }
    };
    // SAFETY: single-threaded, as above.
    match unsafe { fork() } {
        Err(e) => {
            report(&mut ctl, tonic::Code::Internal, format!("fork: {e}"));
            1
        }
        Ok(ForkResult::Child) => exec_child(&p, ctl),
        Ok(ForkResult::Parent { child }) => {
            let _ = channel::send(&mut ctl, &Msg::Pid(child.as_raw()));
            drop(ctl);
            wait_for(child)
        }
    }
}

fn exec_child(p: &ProcessPlan, mut ctl: UnixStream) -> u8 {
    let prepared = (|| -> Result<(std::path::PathBuf, bool)> {
        // Its own session and process group, so a timeout or a hang-up can
        // signal what it started; with a tty (Exec), that tty on fds 0-2
        // becomes its controlling terminal.
        become_session_leader(p.tty)?;
        let seccomp_later = process::switch_credentials(p)?;
        process::enter_cwd(&p.cwd, false)?;
        Ok((
            process::lookup(&p.args[0], &p.env).map_err(|e| anyhow::Error::new(ExecFailed(e)))?,
            seccomp_later,
        ))
    })();
    let (path, seccomp_later) = match prepared {
        Ok(v) => v,
        Err(e) => {
            if let Some(ExecFailed(x)) = e.downcast_ref::<ExecFailed>() {
                report(&mut ctl, tonic::Code::FailedPrecondition, x.message.clone());
                return x.exit_code as u8;
            }
            let f = Failure::from(e);
            report(&mut ctl, f.code, f.message);
            return 1;
        }
    };
    process::cloexec_from_3();
    process::reset_signals();
    if seccomp_later && let Err(e) = super::seccomp::install(&p.seccomp_bpf) {
        report(
            &mut ctl,
            tonic::Code::Internal,
            format!("installing seccomp: {e}"),
        );
        return 1;
    }
    let err = process::exec(&path, p);
    report(&mut ctl, tonic::Code::FailedPrecondition, err.message);
    err.exit_code as u8
}

#[derive(Debug)]
struct ExecFailed(ExecError);

impl std::fmt::Display for ExecFailed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0.message)
    }
}

impl std::error::Error for ExecFailed {}

/// Blocks until `child` exits; returns its status the shell way.
fn wait_for(child: nix::unistd::Pid) -> u8 {
    use crate::reaper::{Waited, wait_raw};
    loop {
        match wait_raw(child.as_raw(), false) {
            Ok(Waited::Exit(_, exit)) => return exit.code() as u8,
            Ok(_) | Err(nix::errno::Errno::EINTR) => continue,
            Err(_) => return 255,
        }
    }
}

/// The pod's pid and ipc namespaces live as long as this process.
fn pod_pause() -> u8 {
    let mut ctl = match inherited(CTL_FD) {
        Ok(c) => c,
        Err(_) => return 1,
    };
    if let Err(e) = unshare(CloneFlags::CLONE_NEWPID | CloneFlags::CLONE_NEWIPC) {
        report(
            &mut ctl,
            tonic::Code::Internal,
            format!("unshare(pid, ipc): {e}"),
        );
        return 1;
    }
    // SAFETY: single-threaded.
    match unsafe { fork() } {
        Err(e) => {
            report(&mut ctl, tonic::Code::Internal, format!("fork: {e}"));
            1
        }
        Ok(ForkResult::Child) => {
            drop(ctl);
            pause_loop()
        }
        Ok(ForkResult::Parent { child }) => hand_over(&mut ctl, child),
    }
}

/// PID 1 of the pod's pid namespace: reaps orphans until killed.
fn pause_loop() -> ! {
    use crate::reaper::{Waited, wait_raw};
    use nix::sys::signal::{SigSet, Signal};
    let _ = nix::unistd::setsid();
    // Seen by containers as their PID 1 in `ps`; "exe" (from
    // /proc/self/exe) would say nothing.
    // SAFETY: PR_SET_NAME reads a NUL-terminated string of <= 16 bytes.
    unsafe { libc::prctl(libc::PR_SET_NAME, c"pause".as_ptr(), 0, 0, 0) };
    let mut set = SigSet::empty();
    set.add(Signal::SIGCHLD);
    let _ = set.thread_block();
    let _ = nix::unistd::chdir("/");
    loop {
        loop {
            match wait_raw(-1, true) {
                Ok(Waited::Nothing) | Err(_) => break,
                Ok(_) => {}
            }
        }
        let _ = set.wait();
    }
}
