//! ExecSync: one command in a running container, output captured.
//!
//! The exec helper joins the container's namespaces and cgroup, forks the
//! command (in a session of its own, so a timeout can kill its whole
//! process group) and stays its parent, exiting with its status. Each
//! output stream keeps at most `output_limit` bytes but is read to the
//! end, so a chatty command never blocks on a full pipe.

use std::io;
use std::os::fd::OwnedFd;
use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicI32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use prost::Message;
use tonic::{Code, Status};
use vmpod_agent_proto::v1::{ContainerState, ExecSyncRequest, ExecSyncResponse};

use super::channel::{self, Msg};
use super::fdio::{async_reader, read_some};
use super::helper::EXEC_ARG;
use super::plan::ExecPlan;
use super::{Container, Containers, validate};

/// Per stream, when the request says 0.
pub const DEFAULT_OUTPUT_LIMIT: u64 = 16 << 20;
/// After the command exited, how long its output pipes may stay open
/// (held by something it left running in the background) before we stop
/// reading.
pub(super) const DRAIN_GRACE: Duration = Duration::from_millis(500);

/// Reads `fd` to EOF into `buf`, keeping at most `limit` bytes.
async fn drain(fd: OwnedFd, limit: usize, buf: Arc<Mutex<Vec<u8>>>) -> io::Result<()> {
    let afd = async_reader(fd)?;
    let mut chunk = vec![0u8; 32 << 10];
    loop {
        let n = read_some(&afd, &mut chunk).await?;
        if n == 0 {
            return Ok(());
        }
        let mut b = buf.lock().unwrap_or_else(|e| e.into_inner());
        let room = limit.saturating_sub(b.len());
        b.extend_from_slice(&chunk[..n.min(room)]);
    }
}

/// Checks an exec's argv; `field` names it in the error.
pub(super) fn check_args(field: &str, args: &[String]) -> Result<(), Status> {
    if args.first().is_none_or(|a| a.is_empty()) {
        return Err(Status::invalid_argument(format!(
            "{field}: needs a command ({field}[0])"
        )));
    }
    if args.iter().any(|a| a.contains('\0')) {
        return Err(Status::invalid_argument(format!(
            "{field}: contains a NUL byte"
        )));
    }
    Ok(())
}

/// The plan to run `args` in the running container `c` as its own process
/// runs: the same user, capabilities, seccomp, env and cwd. With `tty`
/// the command gets the terminal on fds 0-2 as its controlling terminal
/// (and TERM, as the container's own tty process does).
pub(super) fn exec_plan(c: &Container, args: &[String], tty: bool) -> Result<ExecPlan, Status> {
    let st = c.status();
    if st.state != ContainerState::ContainerRunning as i32 {
        return Err(Status::failed_precondition(format!(
            "container {} is not running",
            c.id
        )));
    }
    let mut process = c.process.clone();
    process.args = args.to_vec();
    process.tty = tty;
    if tty && !process.env.iter().any(|e| e.starts_with("TERM=")) {
        process.env.push("TERM=xterm".into());
    }
    Ok(ExecPlan {
        target_pid: st.pid as i32,
        cgroup_dir: c.cgroup.dir().to_string_lossy().into_owned(),
        process: Some(process),
    })
}

/// Sends `plan` to the exec helper and follows its report until the
/// command has exec'd: the control socket reaches EOF once the helper let
/// go of it and the command's exec closed its copy. The command's pid is
/// stored in `pid` as soon as it is known, so that a caller that gives up
/// waiting can still kill it. Errs with why the command did not start.
pub(super) async fn follow_start(
    ctl: &mut tokio::net::UnixStream,
    plan: &ExecPlan,
    pid: &AtomicI32,
) -> Result<(), Status> {
    channel::send_async(ctl, &Msg::Plan(plan.encode_to_vec()))
        .await
        .map_err(|e| Status::internal(format!("sending the exec plan: {e}")))?;
    let mut failure = None;
    loop {
        match channel::recv_async(ctl).await {
            Ok(Some(Msg::Pid(p))) => pid.store(p, Ordering::SeqCst),
            Ok(Some(Msg::Error { code, message })) => {
                failure.get_or_insert(Status::new(Code::from(code), message));
            }
            Ok(Some(other)) => {
                failure.get_or_insert(Status::internal(format!(
                    "unexpected message from the exec helper: {other:?}"
                )));
            }
            Ok(None) | Err(_) => break,
        }
    }
    match failure {
        Some(f) => Err(f),
        None if pid.load(Ordering::SeqCst) <= 0 => Err(Status::internal(
            "the exec helper ended without starting the command",
        )),
        None => Ok(()),
    }
}

impl Containers {
    /// ExecSync.
    pub async fn exec_sync(&self, req: ExecSyncRequest) -> Result<ExecSyncResponse, Status> {
        validate::check_id("id", &req.id)?;
        let c = self.get(&req.id)?;
        check_args("args", &req.args)?;
        let plan = exec_plan(&c, &req.args, false)?;
        let limit = match req.output_limit {
            0 => DEFAULT_OUTPUT_LIMIT,
            n => n,
        } as usize;

        let pipe = || {
            nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)
                .map_err(|e| Status::internal(format!("pipe: {e}")))
        };
        let (out_r, out_w) = pipe()?;
        let (err_r, err_w) = pipe()?;
        let null = std::fs::File::open("/dev/null")
            .map_err(|e| Status::internal(format!("/dev/null: {e}")))?;
        let (ctl_agent, ctl_helper) =
            UnixStream::pair().map_err(|e| Status::internal(format!("socketpair: {e}")))?;
        let ctl_helper = OwnedFd::from(ctl_helper);
        let (helper_pid, mut exit) = self.spawn_helper(
            EXEC_ARG,
            Some([OwnedFd::from(null), out_w, err_w]),
            &[&ctl_helper],
        )?;
        drop(ctl_helper);

        let stdout = Arc::new(Mutex::new(Vec::new()));
        let stderr = Arc::new(Mutex::new(Vec::new()));
        let readers = [
            tokio::spawn(drain(out_r, limit, Arc::clone(&stdout))),
            tokio::spawn(drain(err_r, limit, Arc::clone(&stderr))),
        ];

        ctl_agent
            .set_nonblocking(true)
            .map_err(|e| Status::internal(format!("socket: {e}")))?;
        let mut ctl = tokio::net::UnixStream::from_std(ctl_agent)
            .map_err(|e| Status::internal(format!("socket: {e}")))?;

        // Written by the start, read after it: shared references only, so
        // the future stays Send.
        let command_pid = AtomicI32::new(0);
        let finished = {
            let work = async {
                let started = follow_start(&mut ctl, &plan, &command_pid).await;
                (started, (&mut exit).await)
            };
            tokio::pin!(work);
            if req.timeout_ms == 0 {
                Some(work.await)
            } else {
                tokio::select! {
                    e = &mut work => Some(e),
                    _ = tokio::time::sleep(Duration::from_millis(req.timeout_ms)) => None,
                }
            }
        };
        let (exit, timed_out) = match finished {
            Some((started, e)) => {
                started?;
                (e, false)
            }
            None => {
                let p = command_pid.load(Ordering::SeqCst);
                if p > 0 {
                    let _ = kill(Pid::from_raw(-p), Signal::SIGKILL);
                }
                let _ = kill(Pid::from_raw(helper_pid), Signal::SIGKILL);
                (exit.await, true)
            }
        };
        let exit = exit.map_err(|_| Status::internal("the exec helper's exit was lost"))?;

        for mut r in readers {
            if tokio::time::timeout(DRAIN_GRACE, &mut r).await.is_err() {
                r.abort();
            }
        }
        let take = |b: &Arc<Mutex<Vec<u8>>>| {
            std::mem::take(&mut *b.lock().unwrap_or_else(|e| e.into_inner()))
        };
        Ok(ExecSyncResponse {
            stdout: take(&stdout),
            stderr: take(&stderr),
            exit_code: exit.code(),
            timed_out,
        })
    }
}
