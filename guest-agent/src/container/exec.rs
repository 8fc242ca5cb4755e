//! ExecSync: one command in a running container, output captured.
//!
//! The exec helper joins the container's namespaces and cgroup, forks the
//! command (in a session of its own, so a timeout can kill its whole
//! process group) and stays its parent, exiting with its status. Each
//! output stream keeps at most `output_limit` bytes but is read to the
//! end, so a chatty command never blocks on a full pipe.

use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
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
use super::helper::EXEC_ARG;
use super::plan::ExecPlan;
use super::{Containers, validate};

/// Per stream, when the request says 0.
pub const DEFAULT_OUTPUT_LIMIT: u64 = 16 << 20;
/// After the command exited, how long its output pipes may stay open
/// (held by something it left running in the background) before we stop
/// reading.
const DRAIN_GRACE: Duration = Duration::from_millis(500);

/// Reads `fd` to EOF into `buf`, keeping at most `limit` bytes.
async fn drain(fd: OwnedFd, limit: usize, buf: Arc<Mutex<Vec<u8>>>) -> io::Result<()> {
    let afd = super::output::async_reader(fd)?;
    let mut chunk = vec![0u8; 32 << 10];
    loop {
        let mut guard = afd.readable().await?;
        let res = guard.try_io(|fd| {
            // SAFETY: reading into our own buffer.
            let n = unsafe { libc::read(fd.as_raw_fd(), chunk.as_mut_ptr().cast(), chunk.len()) };
            if n < 0 {
                Err(io::Error::last_os_error())
            } else {
                Ok(n as usize)
            }
        });
        match res {
            Err(_would_block) => continue,
            Ok(Ok(0)) => return Ok(()),
            Ok(Ok(n)) => {
                let mut b = buf.lock().unwrap_or_else(|e| e.into_inner());
                let room = limit.saturating_sub(b.len());
                b.extend_from_slice(&chunk[..n.min(room)]);
            }
            Ok(Err(e)) if e.kind() == io::ErrorKind::Interrupted => continue,
            Ok(Err(e)) => return Err(e),
        }
    }
}

impl Containers {
    /// ExecSync.
    pub async fn exec_sync(&self, req: ExecSyncRequest) -> Result<ExecSyncResponse, Status> {
        validate::check_id("id", &req.id)?;
        let c = self.get(&req.id)?;
        if req.args.first().is_none_or(|a| a.is_empty()) {
            return Err(Status::invalid_argument("args: needs a command (args[0])"));
        }
        if req.args.iter().any(|a| a.contains('\0')) {
            return Err(Status::invalid_argument("args: contains a NUL byte"));
        }
        let st = c.status();
        if st.state != ContainerState::ContainerRunning as i32 {
            return Err(Status::failed_precondition(format!(
                "container {} is not running",
                req.id
            )));
        }
        let mut process = c.process.clone();
        process.args = req.args.clone();
        process.tty = false;
        let plan = ExecPlan {
            target_pid: st.pid as i32,
            cgroup_dir: c.cgroup.dir().to_string_lossy().into_owned(),
            process: Some(process),
        };
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
        channel::send_async(&mut ctl, &Msg::Plan(plan.encode_to_vec()))
            .await
            .map_err(|e| Status::internal(format!("sending the exec plan: {e}")))?;

        // Written by the conversation, read after it: shared references
        // only, so the future stays Send.
        let command_pid = AtomicI32::new(0);
        let failure: Mutex<Option<Status>> = Mutex::new(None);
        let fail = |st: Status| {
            *failure.lock().unwrap_or_else(|e| e.into_inner()) = Some(st);
        };
        let finished = {
            let work = async {
                loop {
                    match channel::recv_async(&mut ctl).await {
                        Ok(Some(Msg::Pid(p))) => command_pid.store(p, Ordering::SeqCst),
                        Ok(Some(Msg::Error { code, message })) => {
                            fail(Status::new(Code::from(code), message));
                        }
                        Ok(Some(other)) => fail(Status::internal(format!(
                            "unexpected message from the exec helper: {other:?}"
                        ))),
                        // EOF: the command exec'd (or failed, reported
                        // above) and the helper let go of the socket.
                        Ok(None) | Err(_) => break,
                    }
                }
                (&mut exit).await
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
            Some(e) => (e, false),
            None => {
                let p = command_pid.load(Ordering::SeqCst);
                if p > 0 {
                    let _ = kill(Pid::from_raw(-p), Signal::SIGKILL);
                }
                let _ = kill(Pid::from_raw(helper_pid), Signal::SIGKILL);
                (exit.await, true)
            }
        };
        let failure = failure.into_inner().unwrap_or_else(|e| e.into_inner());
        if let Some(f) = failure {
            return Err(f);
        }
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
