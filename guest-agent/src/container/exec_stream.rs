//! Exec: a command in a running container with its stdio streamed both
//! ways (`kubectl exec`).
//!
//! The command starts as ExecSync's does: the exec helper joins the
//! container's namespaces and cgroup, forks the command into a session of
//! its own and stays its parent, exiting with its status. Its stdio is a
//! new pty (tty) or pipes, with /dev/null for a stream nobody asked for.
//! Then one task runs the session:
//!
//! ```text
//! stdout/stderr readers ── 32 KiB chunks ──► bounded channel ──► response
//! request ──► stdin (non-blocking writes), close_stdin (^D on a tty), resize
//! helper exits ──► the rest of the output (short grace) ──► exit_code, end
//! client gone ──► SIGHUP to the command's session ──2 s──► SIGKILL to it
//! ```
//!
//! Nothing is buffered past one read per stream and the channel: a client
//! that reads slowly stalls the readers, the pipes fill and the command
//! blocks on its writes, as on a slow terminal. Stdin is written only as
//! fast as the command reads it, which in turn stalls the request stream.

use std::fs::File;
use std::io;
use std::os::fd::OwnedFd;
use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicI32, Ordering};
use std::time::Duration;

use tokio::io::unix::AsyncFd;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::time::Instant;
use tokio_stream::wrappers::ReceiverStream;
use tokio_stream::{Stream, StreamExt};
use tonic::Status;
use tracing::{debug, warn};
use vmpod_agent_proto::v1::stdio_input::Input;
use vmpod_agent_proto::v1::stdio_output::Output;
use vmpod_agent_proto::v1::{OutputChunk, OutputStream, StdioInput, StdioOutput, StdioStart};

use super::exec::{DRAIN_GRACE, check_args, exec_plan, follow_start};
use super::fdio::{FdWriter, async_reader, read_some};
use super::helper::EXEC_ARG;
use super::plan::ExecPlan;
use super::pty::{self, Size};
use super::{Containers, stdio_start, validate};
use crate::reaper::Exit;

/// One read, and the largest chunk.
const READ_SIZE: usize = 32 << 10;
/// Chunks in flight between the readers and the response.
const OUTPUT_QUEUE: usize = 4;
/// After the command exited, the most output still forwarded per stream:
/// what it left in the pipe (at most a pipe's or a pty's buffer), and what
/// background children write during the drain grace.
const AFTER_EXIT_LIMIT: usize = 1 << 20;
/// Between SIGHUP and SIGKILL when the client went away.
const HANGUP_GRACE: Duration = Duration::from_secs(2);
/// How long the helper of a killed command may take to report its exit.
const REAP_TIMEOUT: Duration = Duration::from_secs(10);

type Tx = mpsc::Sender<Result<StdioOutput, Status>>;

/// The Exec response stream.
pub type ExecOutput = ReceiverStream<Result<StdioOutput, Status>>;

/// Checks an Exec `start` on its own; returns the initial terminal size.
fn check_start(start: &StdioStart) -> Result<Option<Size>, Status> {
    validate::check_id("start.id", &start.id)?;
    check_args("start.args", &start.args)?;
    // As kubelet's streaming server: a tty has one output stream.
    if start.tty && start.stderr {
        return Err(Status::invalid_argument(
            "start.stderr: cannot be set with tty (a tty's output is all on stdout)",
        ));
    }
    if !(start.stdin || start.stdout || start.stderr) {
        return Err(Status::invalid_argument(
            "start: needs at least one of stdin, stdout and stderr",
        ));
    }
    match (&start.size, start.tty) {
        (Some(size), true) => Size::from_proto("start.size", size),
        _ => Ok(None),
    }
}

/// The command's stdio: what the helper gets on fds 0-2, and what the
/// session keeps.
struct Stdio {
    child: [OwnedFd; 3],
    /// Where stdin bytes go: the pipe's write end, or a dup of the master.
    stdin: Option<OwnedFd>,
    /// The pty master, for resizes.
    master: Option<OwnedFd>,
    /// Read ends. A pty's output nobody asked for is read and dropped, so
    /// that the command does not block on a full terminal.
    outputs: Vec<(OwnedFd, Option<OutputStream>)>,
}

fn internal(what: &str, e: impl std::fmt::Display) -> Status {
    Status::internal(format!("{what}: {e}"))
}

fn stdio(start: &StdioStart, size: Option<Size>) -> Result<Stdio, Status> {
    let dup = |fd: &OwnedFd| fd.try_clone().map_err(|e| internal("dup", e));
    if start.tty {
        let p = pty::open().map_err(|e| internal("opening a pty", e))?;
        // Before the command starts, so it sees the size from the start.
        if let Some(size) = size {
            pty::set_size(&p.master, size).map_err(|e| internal("setting the tty size", e))?;
        }
        return Ok(Stdio {
            child: [dup(&p.slave)?, dup(&p.slave)?, p.slave],
            stdin: if start.stdin {
                Some(dup(&p.master)?)
            } else {
                None
            },
            master: Some(dup(&p.master)?),
            outputs: vec![(p.master, start.stdout.then_some(OutputStream::Stdout))],
        });
    }
    let pipe = || nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(|e| internal("pipe", e));
    let null = |write: bool| {
        File::options()
            .read(!write)
            .write(write)
            .open("/dev/null")
            .map(OwnedFd::from)
            .map_err(|e| internal("/dev/null", e))
    };
    let (stdin_r, stdin) = if start.stdin {
        let (r, w) = pipe()?;
        (r, Some(w))
    } else {
        (null(false)?, None)
    };
    let mut outputs = Vec::new();
    let mut output = |wanted: bool, stream: OutputStream| -> Result<OwnedFd, Status> {
        if !wanted {
            return null(true);
        }
        let (r, w) = pipe()?;
        outputs.push((r, Some(stream)));
        Ok(w)
    };
    let stdout_w = output(start.stdout, OutputStream::Stdout)?;
    let stderr_w = output(start.stderr, OutputStream::Stderr)?;
    Ok(Stdio {
        child: [stdin_r, stdout_w, stderr_w],
        stdin,
        master: None,
        outputs,
    })
}

/// What the session task takes over once the helper runs.
struct Launch {
    id: String,
    helper_pid: i32,
    helper_exit: oneshot::Receiver<Exit>,
    ctl: UnixStream,
    plan: ExecPlan,
    setup_timeout: Duration,
    tty: bool,
    stdin: Option<OwnedFd>,
    master: Option<OwnedFd>,
    outputs: Vec<(OwnedFd, Option<OutputStream>)>,
}

impl Containers {
    /// Exec: starts the command the first input message asks for and
    /// returns its output stream; a task runs the session from then on.
    /// A command that cannot start fails the call (FAILED_PRECONDITION for
    /// a missing executable).
    pub async fn exec<S>(&self, mut input: S) -> Result<ExecOutput, Status>
    where
        S: Stream<Item = Result<StdioInput, Status>> + Send + Unpin + 'static,
    {
        let start = stdio_start::first(&mut input).await?;
        let size = check_start(&start)?;
        let c = self.get(&start.id)?;
        let plan = exec_plan(&c, &start.args, start.tty)?;
        let io = stdio(&start, size)?;
        let (ctl, ctl_helper) = UnixStream::pair().map_err(|e| internal("socketpair", e))?;
        let ctl_helper = OwnedFd::from(ctl_helper);
        let (helper_pid, helper_exit) =
            self.spawn_helper(EXEC_ARG, Some(io.child), &[&ctl_helper])?;
        drop(ctl_helper);
        // From here on the task owns the helper (which waits for the plan).
        // Should this call be dropped, the task still starts the command,
        // finds nobody reading and hangs up.
        let launch = Launch {
            id: start.id,
            helper_pid,
            helper_exit,
            ctl,
            plan,
            setup_timeout: self.config.setup_timeout,
            tty: start.tty,
            stdin: io.stdin,
            master: io.master,
            outputs: io.outputs,
        };
        let (tx, rx) = mpsc::channel(OUTPUT_QUEUE);
        let (started_tx, started_rx) = oneshot::channel();
        tokio::spawn(session(launch, input, tx, started_tx));
        match started_rx.await {
            Ok(Ok(())) => Ok(ReceiverStream::new(rx)),
            Ok(Err(e)) => Err(e),
            Err(_) => Err(Status::internal(
                "the exec session ended before its command started",
            )),
        }
    }
}

/// The whole session: start, pump, then the exit or a hang-up.
async fn session<S>(l: Launch, mut input: S, tx: Tx, started: oneshot::Sender<Result<(), Status>>)
where
    S: Stream<Item = Result<StdioInput, Status>> + Unpin,
{
    let Launch {
        id,
        helper_pid,
        mut helper_exit,
        ctl,
        plan,
        setup_timeout,
        tty,
        stdin,
        master,
        outputs,
    } = l;
    // Registered before the command may run; on failure the helper, which
    // waits for the plan, reads EOF instead and exits.
    let registered = (|| -> io::Result<_> {
        let stdin = match stdin {
            Some(fd) => Stdin::Open {
                writer: FdWriter::new(fd)?,
                tty,
            },
            None => Stdin::NotWanted,
        };
        let readers = outputs
            .into_iter()
            .map(|(fd, stream)| Ok((async_reader(fd)?, stream)))
            .collect::<io::Result<Vec<_>>>()?;
        Ok((stdin, readers))
    })();
    let (mut stdin, readers) = match registered {
        Ok(v) => v,
        Err(e) => {
            let _ = started.send(Err(internal("registering the command's stdio", e)));
            return;
        }
    };
    let command_pid = match start_command(ctl, &plan, setup_timeout, helper_pid).await {
        Ok(pid) => pid,
        Err(e) => {
            let _ = started.send(Err(e));
            return;
        }
    };
    // If the call was dropped meanwhile, `tx.closed()` below says so.
    let _ = started.send(Ok(()));
    debug!(id, command_pid, "exec session started");

    let (exited_tx, exited_rx) = watch::channel(false);
    let readers: Vec<_> = readers
        .into_iter()
        .map(|(afd, stream)| tokio::spawn(pump_output(afd, stream, tx.clone(), exited_rx.clone())))
        .collect();
    enum End {
        Exited(Result<Exit, oneshot::error::RecvError>),
        HungUp(Option<Status>),
    }
    let end = tokio::select! {
        exit = &mut helper_exit => End::Exited(exit),
        why = forward_input(&mut input, &mut stdin, master.as_ref()) => End::HungUp(why),
        () = tx.closed() => End::HungUp(None),
    };
    drop(stdin);
    match end {
        End::Exited(exit) => {
            let _ = exited_tx.send(true);
            for r in readers {
                let _ = r.await;
            }
            let last = match exit {
                Ok(exit) => Ok(StdioOutput {
                    output: Some(Output::ExitCode(exit.code())),
                }),
                Err(_) => Err(Status::internal("the exec helper's exit was lost")),
            };
            let _ = tx.send(last).await;
            debug!(id, command_pid, "exec session ended");
        }
        End::HungUp(why) => {
            for r in &readers {
                r.abort();
            }
            if let Some(status) = why {
                // The client broke the protocol; tell it why, if it reads.
                let _ = tokio::time::timeout(HANGUP_GRACE, tx.send(Err(status))).await;
            }
            drop(tx);
            debug!(id, command_pid, "exec client went away; hanging up");
            hang_up(&id, command_pid, helper_pid, helper_exit).await;
        }
    }
}

/// Lets the helper start the command; its pid, or why it did not start.
async fn start_command(
    ctl: UnixStream,
    plan: &ExecPlan,
    timeout: Duration,
    helper_pid: i32,
) -> Result<i32, Status> {
    ctl.set_nonblocking(true)
        .map_err(|e| internal("socket", e))?;
    let mut ctl = tokio::net::UnixStream::from_std(ctl).map_err(|e| internal("socket", e))?;
    let pid = AtomicI32::new(0);
    match tokio::time::timeout(timeout, follow_start(&mut ctl, plan, &pid)).await {
        Ok(Ok(())) => Ok(pid.load(Ordering::SeqCst)),
        Ok(Err(e)) => Err(e),
        Err(_) => {
            // Stuck before its exec (a hung filesystem, say).
            let p = pid.load(Ordering::SeqCst);
            for target in [p, -p, helper_pid] {
                if target != 0 {
                    // SAFETY: kill(2) with plain integers; p > 1 when set.
                    unsafe { libc::kill(target, libc::SIGKILL) };
                }
            }
            Err(Status::deadline_exceeded(format!(
                "the command did not start within {timeout:?}"
            )))
        }
    }
}

/// The command's stdin as the session sees it.
enum Stdin {
    NotWanted,
    Open {
        writer: FdWriter,
        tty: bool,
    },
    /// After close_stdin, or once the command stopped reading: further
    /// bytes are dropped.
    Closed,
}

impl Stdin {
    async fn write(&mut self, data: &[u8]) -> Result<(), Status> {
        match self {
            Stdin::NotWanted => Err(Status::invalid_argument(
                "stdin: the session was started without stdin",
            )),
            Stdin::Closed => Ok(()),
            Stdin::Open { writer, .. } => {
                if let Err(e) = writer.write_all(data).await {
                    debug!("exec stdin: {e}");
                    *self = Stdin::Closed;
                }
                Ok(())
            }
        }
    }

    /// EOF for the command: the pipe closes; a tty reads ^D (closing the
    /// master would hang it up).
    async fn close(&mut self) {
        if !matches!(self, Stdin::Open { .. }) {
            return;
        }
        if let Stdin::Open { writer, tty: true } = std::mem::replace(self, Stdin::Closed) {
            let _ = writer.write_all(&[pty::EOF_BYTE]).await;
        }
    }
}

/// Applies the client's input. Returns when the client went away: with a
/// status when it broke the protocol. A clean end of input is a stdin
/// close; the client still reads, so this then waits for ever (the exit
/// ends the session).
async fn forward_input<S>(
    input: &mut S,
    stdin: &mut Stdin,
    master: Option<&OwnedFd>,
) -> Option<Status>
where
    S: Stream<Item = Result<StdioInput, Status>> + Unpin,
{
    loop {
        let msg = match input.next().await {
            Some(Ok(msg)) => msg,
            Some(Err(e)) => {
                debug!("exec input broke: {e}");
                return None;
            }
            None => {
                stdin.close().await;
                return std::future::pending().await;
            }
        };
        match msg.input {
            Some(Input::Start(_)) => return Some(stdio_start::repeated()),
            Some(Input::Stdin(bytes)) => {
                if let Err(e) = stdin.write(&bytes).await {
                    return Some(e);
                }
            }
            Some(Input::CloseStdin(true)) => stdin.close().await,
            Some(Input::Resize(size)) => match Size::from_proto("resize", &size) {
                Err(e) => return Some(e),
                Ok(Some(size)) => {
                    if let Some(m) = master
                        && let Err(e) = pty::set_size(m, size)
                    {
                        debug!("exec resize: {e}");
                    }
                }
                Ok(None) => {}
            },
            Some(Input::CloseStdin(false)) | None => {}
        }
    }
}

/// Forwards one output stream (`stream` None: drops it) until EOF. Once
/// the command exited, only what is there already or comes within the
/// drain grace (pipes held open by background children), and at most
/// AFTER_EXIT_LIMIT bytes.
async fn pump_output(
    afd: AsyncFd<OwnedFd>,
    stream: Option<OutputStream>,
    tx: Tx,
    mut exited: watch::Receiver<bool>,
) {
    let mut buf = vec![0u8; READ_SIZE];
    // Once the command exited: the end of the grace, bytes still allowed.
    let mut draining: Option<(Instant, usize)> = None;
    loop {
        let read = match draining {
            None => tokio::select! {
                r = read_some(&afd, &mut buf) => r,
                _ = exited.wait_for(|e| *e) => {
                    draining = Some((Instant::now() + DRAIN_GRACE, AFTER_EXIT_LIMIT));
                    continue;
                }
            },
            // `timeout_at` polls the read first, so data that is already
            // there wins over an expired grace: a slow client does not
            // lose what the command wrote last.
            Some((deadline, _)) => {
                match tokio::time::timeout_at(deadline, read_some(&afd, &mut buf)).await {
                    Ok(r) => r,
                    Err(_) => return,
                }
            }
        };
        let n = match read {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        if let Some(stream) = stream {
            let chunk = OutputChunk {
                stream: stream as i32,
                data: buf[..n].to_vec(),
            };
            let msg = StdioOutput {
                output: Some(Output::Chunk(chunk)),
            };
            if tx.send(Ok(msg)).await.is_err() {
                return;
            }
        }
        if let Some((_, left)) = &mut draining {
            *left = left.saturating_sub(n);
            if *left == 0 {
                return;
            }
        }
    }
}

/// The client went away before the command exited: SIGHUP to the
/// command's session (what a terminal's hang-up sends), SIGKILL to
/// whatever is still in it after HANGUP_GRACE, then the helper's exit
/// (it reaps the command), so nothing of the session is left running.
async fn hang_up(id: &str, sid: i32, helper_pid: i32, mut helper_exit: oneshot::Receiver<Exit>) {
    signal_session(sid, libc::SIGHUP);
    let deadline = Instant::now() + HANGUP_GRACE;
    while Instant::now() < deadline && !session_members(sid).is_empty() {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    signal_session(sid, libc::SIGKILL);
    if tokio::time::timeout(REAP_TIMEOUT, &mut helper_exit)
        .await
        .is_err()
    {
        warn!(
            id,
            sid, "the exec helper outlived its killed command; killing it"
        );
        // SAFETY: kill(2) with plain integers.
        unsafe { libc::kill(helper_pid, libc::SIGKILL) };
        let _ = helper_exit.await;
    }
}

/// Sends `sig` to every process of the session `sid` (the command's): its
/// leader's process group in one kill, then each process that moved to
/// another group of the session (a shell's jobs).
fn signal_session(sid: i32, sig: i32) {
    // Never our own group (0) or every process (-1).
    if sid <= 1 {
        return;
    }
    // SAFETY: kill(2) with plain integers; -sid is a process group.
    unsafe { libc::kill(-sid, sig) };
    for pid in session_members(sid) {
        // SAFETY: as above.
        unsafe { libc::kill(pid, sig) };
    }
}

/// The live (not zombie) processes of the session `sid`, from /proc. A
/// session id stays reserved while any process is in the session, so the
/// number cannot name someone else's meanwhile.
fn session_members(sid: i32) -> Vec<i32> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.filter_map(|entry| {
        let pid: i32 = entry.ok()?.file_name().to_str()?.parse().ok()?;
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
        let (state, session) = parse_stat(&stat)?;
        (session == sid && state != 'Z').then_some(pid)
    })
    .collect()
}

/// (state, session) of a /proc/<pid>/stat line: "pid (comm) state ppid
/// pgrp session ...", where comm may hold spaces and parentheses.
fn parse_stat(stat: &str) -> Option<(char, i32)> {
    let rest = &stat[stat.rfind(')')? + 1..];
    let mut fields = rest.split_ascii_whitespace();
    let state = fields.next()?.chars().next()?;
    let session = fields.nth(2)?.parse().ok()?;
    Some((state, session))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::process::CommandExt;
    use vmpod_agent_proto::v1::TerminalSize;

    fn start() -> StdioStart {
        StdioStart {
            id: "c1".into(),
            args: vec!["sh".into()],
            stdin: true,
            stdout: true,
            ..Default::default()
        }
    }

    fn refused(start: StdioStart, field: &str) {
        let e = check_start(&start).unwrap_err();
        assert_eq!(e.code(), tonic::Code::InvalidArgument);
        assert!(
            e.message().starts_with(&format!("{field}: ")),
            "{field}: {}",
            e.message()
        );
    }

    #[test]
    fn start_is_checked() {
        assert_eq!(check_start(&start()).unwrap(), None);
        let sized = StdioStart {
            tty: true,
            size: Some(TerminalSize {
                width: 100,
                height: 30,
            }),
            ..start()
        };
        assert_eq!(
            check_start(&sized).unwrap(),
            Some(Size {
                width: 100,
                height: 30
            })
        );
        refused(
            StdioStart {
                id: String::new(),
                ..start()
            },
            "start.id",
        );
        refused(
            StdioStart {
                args: vec![],
                ..start()
            },
            "start.args",
        );
        refused(
            StdioStart {
                args: vec!["a\0b".into()],
                ..start()
            },
            "start.args",
        );
        refused(
            StdioStart {
                tty: true,
                stderr: true,
                ..start()
            },
            "start.stderr",
        );
        refused(
            StdioStart {
                stdin: false,
                stdout: false,
                ..start()
            },
            "start",
        );
        refused(
            StdioStart {
                tty: true,
                size: Some(TerminalSize {
                    width: 80,
                    height: 100_000,
                }),
                ..start()
            },
            "start.size.height",
        );
    }

    #[tokio::test]
    async fn exec_in_an_unknown_container() {
        let containers = Containers::new(super::super::Config::default());
        let input = tokio_stream::iter(vec![Ok(StdioInput {
            input: Some(Input::Start(start())),
        })]);
        let e = containers.exec(input).await.unwrap_err();
        assert_eq!(e.code(), tonic::Code::NotFound);
    }

    #[test]
    fn stat_lines_with_odd_names() {
        assert_eq!(
            parse_stat("42 (a b) c)) S 1 42 40 0 -1 4194560"),
            Some(('S', 40))
        );
        assert_eq!(parse_stat("42 (x) Z 1 42 42"), Some(('Z', 42)));
        assert_eq!(parse_stat("garbage"), None);
    }

    /// The process group of `pid`.
    fn pgrp(pid: i32) -> Option<i32> {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
        let rest = &stat[stat.rfind(')')? + 1..];
        rest.split_ascii_whitespace().nth(2)?.parse().ok()
    }

    fn wait_until(what: &str, mut done: impl FnMut() -> bool) {
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while !done() {
            assert!(std::time::Instant::now() < deadline, "{what}");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    #[test]
    fn hang_up_signals_reach_the_whole_session() {
        // A session like an exec'd shell's: a leader that ignores SIGHUP,
        // and a job in a process group of its own that does not.
        let (sleep, arg) = (c"/bin/sleep", c"100");
        if !std::path::Path::new("/bin/sleep").exists() {
            eprintln!("SKIP: no /bin/sleep");
            return;
        }
        let mut leader = std::process::Command::new("/bin/sh");
        leader.args(["-c", "trap '' HUP; sleep 100"]);
        // SAFETY: only async-signal-safe calls between fork and exec.
        unsafe {
            leader.pre_exec(move || {
                nix::unistd::setsid()?;
                if libc::fork() == 0 {
                    libc::setpgid(0, 0);
                    let argv = [sleep.as_ptr(), arg.as_ptr(), std::ptr::null()];
                    libc::execv(sleep.as_ptr(), argv.as_ptr());
                    libc::_exit(127);
                }
                Ok(())
            })
        };
        let mut child = leader.spawn().unwrap();
        let sid = child.id() as i32;
        let job = |members: &[i32]| members.iter().copied().find(|&p| pgrp(p) != Some(sid));
        wait_until("the job starts", || job(&session_members(sid)).is_some());
        let members = session_members(sid);
        assert!(members.contains(&sid), "{members:?}");

        signal_session(sid, libc::SIGHUP);
        wait_until("SIGHUP ends the job in its own group", || {
            job(&session_members(sid)).is_none()
        });
        std::thread::sleep(Duration::from_millis(50));
        assert!(
            session_members(sid).contains(&sid),
            "the leader ignores SIGHUP"
        );

        signal_session(sid, libc::SIGKILL);
        child.wait().unwrap();
        wait_until("SIGKILL ends the session", || {
            session_members(sid).is_empty()
        });
    }
}
