//! The seccomp-BPF allow-list for the VMM's threads once the guest runs.
//!
//! Everything the VMM opens, maps or registers with KVM is done before the
//! first KVM_RUN, so what a vCPU thread (and the device worker threads it
//! spawns, which inherit its filter) needs afterwards is small. The list
//! below is what `strace -f` of `vmpod-vmm` shows for every test guest
//! (ELF/PVH/bzImage entry, two vCPUs, the hostile guest, virtio-blk
//! read-write, read-only and hostile, virtio-net on a named TAP, a TAP fd
//! and hostile) from the first vCPU thread's creation
//! to the process's exit, plus three the traced runs did not need but the
//! same code paths can reach: `brk`/`mremap` (malloc), `clock_gettime` (when
//! the vDSO falls back to the syscall) and `writev`/`ppoll` (same power as
//! `write`/`poll`). The virtio-fs guests against virtiofsd and against the
//! misbehaving fake backends of `vmm/tests/vmm_fs.rs` added what the
//! vhost-user frontend needs: `sendmsg`/`recvmsg` on the backend's socket
//! and `shutdown(SHUT_RDWR)` of it. The vsock guest's 1 MiB echoes in both
//! directions added the vsock worker's: epoll, socket I/O, `accept4`, an
//! AF_UNIX `socket` + `connect` for guest-initiated connections, FIONBIO
//! and `getrandom`.
//!
//! Anything else kills the whole process (`SECCOMP_RET_KILL_PROCESS`), not
//! a trap: a SIGSYS handler would run inside the compromised process and
//! could be talked out of aborting, and the in-process backend must not let
//! one VMM thread die while the others carry on. To see which call was
//! refused, run `vmpod-vmm --no-seccomp` under `strace -f`, or read the
//! kernel's audit record (`type=SECCOMP ... syscall=N`).
//!
//! Two filters are stacked: the first answers `clone3` with ENOSYS (its
//! flags sit behind a pointer seccomp cannot read), so glibc falls back to
//! `clone`, whose flags the allow-list checks are those of a thread; the
//! second is the allow-list. The kernel takes the strictest answer of the
//! two.

use anyhow::{Context, Result, anyhow};
use seccompiler::{
    BpfProgram, SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompFilter,
    SeccompRule, TargetArch,
};
use std::collections::BTreeMap;

/// `_IO(KVMIO, 0x80)`.
const KVM_RUN: u64 = 0xae80;

/// glibc's internal SIGRTMIN+1 (the kernel's signal 33), whose handler it
/// installs lazily before the first thread is created.
const GLIBC_SIGSETXID: u64 = 33;

/// Where the filter goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Seccomp {
    /// No filter (`vmpod-vmm --no-seccomp`, for debugging).
    Off,
    /// Each vCPU thread installs the filter on itself before its first
    /// KVM_RUN; device workers it spawns inherit it. The rest of the process
    /// (the shim's tokio runtime, gRPC) is untouched. The in-process default.
    VmmThreads,
    /// The whole process, with TSYNC, once set-up is done and before the
    /// vCPU threads are spawned: for the standalone `vmpod-vmm`, whose main
    /// thread only waits for the guest, prints and exits afterwards.
    Process,
}

/// The compiled filters, in installation order.
pub struct Filters {
    programs: [BpfProgram; 2],
}

impl Filters {
    /// Compiles the filters for this process (`tgkill` is limited to its own
    /// pid, so compile in the process that installs them).
    pub fn new() -> Result<Filters> {
        let arch = TargetArch::try_from(std::env::consts::ARCH)
            .map_err(|e| anyhow!("seccomp: unsupported architecture: {e}"))?;
        let clone3: BTreeMap<i64, Vec<SeccompRule>> = [(libc::SYS_clone3, Vec::new())].into();
        let clone3 = SeccompFilter::new(
            clone3,
            SeccompAction::Allow,
            SeccompAction::Errno(libc::ENOSYS as u32),
            arch,
        )
        .context("seccomp: the clone3 filter")?;
        let allow = SeccompFilter::new(
            allow_list()?,
            SeccompAction::KillProcess,
            SeccompAction::Allow,
            arch,
        )
        .context("seccomp: the allow-list")?;
        Ok(Filters {
            programs: [
                clone3
                    .try_into()
                    .context("seccomp: compiling the clone3 filter")?,
                allow
                    .try_into()
                    .context("seccomp: compiling the allow-list")?,
            ],
        })
    }

    /// Installs both filters on the calling thread only (and so on threads
    /// it creates later). Allocates nothing, so a forked child may call it.
    pub fn apply_to_current_thread(&self) -> Result<()> {
        for p in &self.programs {
            seccompiler::apply_filter(p).context("installing the seccomp filter on this thread")?;
        }
        Ok(())
    }

    /// Installs both filters on every thread of the process (TSYNC).
    pub fn apply_to_process(&self) -> Result<()> {
        for p in &self.programs {
            seccompiler::apply_filter_all_threads(p)
                .context("installing the seccomp filter on every thread (TSYNC)")?;
        }
        Ok(())
    }
}

fn cond(arg: u8, op: SeccompCmpOp, value: u64) -> Result<SeccompCondition> {
    SeccompCondition::new(arg, SeccompCmpArgLen::Dword, op, value)
        .with_context(|| format!("seccomp: condition on argument {arg}"))
}

/// One rule per value: the syscall is allowed when argument `arg` equals
/// any of `values`.
fn any_of(arg: u8, values: &[u64]) -> Result<Vec<SeccompRule>> {
    values
        .iter()
        .map(|v| {
            SeccompRule::new(vec![cond(arg, SeccompCmpOp::Eq, *v)?])
                .context("seccomp: building a rule")
        })
        .collect()
}

/// Every condition must hold.
fn all_of(conditions: Vec<SeccompCondition>) -> Result<Vec<SeccompRule>> {
    Ok(vec![
        SeccompRule::new(conditions).context("seccomp: building a rule")?,
    ])
}

fn allow_list() -> Result<BTreeMap<i64, Vec<SeccompRule>>> {
    let no_exec = |arg| cond(arg, SeccompCmpOp::MaskedEq(libc::PROT_EXEC as u64), 0);
    let thread_flags = (libc::CLONE_VM
        | libc::CLONE_FS
        | libc::CLONE_FILES
        | libc::CLONE_SIGHAND
        | libc::CLONE_THREAD) as u64;
    // SAFETY: getpid has no preconditions.
    let pid = unsafe { libc::getpid() } as u64;
    let mut rules: BTreeMap<i64, Vec<SeccompRule>> = BTreeMap::new();
    let unconditional = [
        // Device emulation, serial and log output, virtio-blk I/O, frames
        // to and from a virtio-net TAP.
        libc::SYS_read,
        libc::SYS_write,
        libc::SYS_writev,
        libc::SYS_pread64,
        libc::SYS_pwrite64,
        libc::SYS_fdatasync,
        // The blk and net workers' wait on their queue and stop eventfds
        // (and the TAP), created (and their fds dropped) at activation and
        // reset.
        libc::SYS_poll,
        libc::SYS_ppoll,
        libc::SYS_eventfd2,
        libc::SYS_close,
        // Locks, condvars, thread join.
        libc::SYS_futex,
        // malloc and thread stacks (mmap/mprotect are below).
        libc::SYS_munmap,
        libc::SYS_mremap,
        libc::SYS_brk,
        // The SIGRTMIN kick and glibc's signal masking around thread
        // creation; Rust's stack-overflow handler's altstack.
        libc::SYS_rt_sigprocmask,
        libc::SYS_rt_sigreturn,
        libc::SYS_sigaltstack,
        libc::SYS_getpid,
        libc::SYS_gettid,
        // A new thread (a blk or net worker, spawned by a vCPU at activation;
        // the vCPU threads themselves under `Seccomp::Process`). clone3
        // gets ENOSYS from the first filter.
        libc::SYS_clone3,
        libc::SYS_set_robust_list,
        libc::SYS_rseq,
        libc::SYS_sched_getaffinity,
        libc::SYS_exit,
        libc::SYS_exit_group,
        libc::SYS_clock_gettime,
        // Guest RAM residency for `--stats` (fstat on the memfd).
        libc::SYS_fstat,
        // The vsock worker (spawned by a vCPU at activation): its epoll set
        // over the queue eventfds and unix sockets, the sockets' I/O (std
        // reads and writes sockets with recv/send), accepting host clients
        // on the already-bound listener, connecting to `<uds>_PORT` for a
        // guest connection (socket() is limited to AF_UNIX below), and
        // HashMap's per-thread random keys.
        libc::SYS_epoll_create1,
        libc::SYS_epoll_ctl,
        libc::SYS_epoll_wait,
        libc::SYS_epoll_pwait,
        libc::SYS_recvfrom,
        libc::SYS_sendto,
        libc::SYS_accept4,
        libc::SYS_connect,
        // Half-closing a vsock host socket (SHUT_WR), and the vhost-user
        // monitor ending an exchange past its deadline (SHUT_RDWR).
        libc::SYS_shutdown,
        libc::SYS_getrandom,
        // The vhost-user frontend (virtio-fs): its requests to the backend
        // at activation and reset, made on the vCPU thread that wrote
        // DRIVER_OK or the reset (and at the end, by whichever thread drops
        // the device). sendmsg carries the memfd and eventfds as
        // SCM_RIGHTS; recvmsg reads the replies. The socket was connected
        // before the filter went on; socket/connect stay refused.
        libc::SYS_sendmsg,
        libc::SYS_recvmsg,
    ];
    for nr in unconditional {
        rules.insert(nr, Vec::new());
    }
    // FIONBIO: std's set_nonblocking on an accepted vsock host socket.
    rules.insert(libc::SYS_ioctl, any_of(1, &[KVM_RUN, libc::FIONBIO])?);
    rules.insert(libc::SYS_socket, any_of(0, &[libc::AF_UNIX as u64])?);
    rules.insert(
        libc::SYS_fcntl,
        // F_GETFD: std's debug check when an fd is dropped; F_DUPFD_CLOEXEC:
        // an eventfd cloned for a device at activation.
        any_of(1, &[libc::F_GETFD as u64, libc::F_DUPFD_CLOEXEC as u64])?,
    );
    // Anonymous memory only, never executable.
    rules.insert(
        libc::SYS_mmap,
        all_of(vec![
            no_exec(2)?,
            cond(
                3,
                SeccompCmpOp::MaskedEq(libc::MAP_ANONYMOUS as u64),
                libc::MAP_ANONYMOUS as u64,
            )?,
        ])?,
    );
    rules.insert(libc::SYS_mprotect, all_of(vec![no_exec(2)?])?);
    rules.insert(libc::SYS_madvise, any_of(2, &[libc::MADV_DONTNEED as u64])?);
    // Threads only, never a new process.
    rules.insert(
        libc::SYS_clone,
        all_of(vec![cond(
            0,
            SeccompCmpOp::MaskedEq(thread_flags),
            thread_flags,
        )?])?,
    );
    rules.insert(libc::SYS_prctl, any_of(0, &[libc::PR_SET_NAME as u64])?);
    // The vhost-user monitor thread ends an exchange that outlived its
    // deadline, or a connection that misbehaved, by shutting the socket
    // down both ways (the crate's blocking reads cannot time out).
    // glibc installs its SIGSETXID handler on the process's first
    // pthread_create (the first vCPU thread under `Seccomp::Process`); no
    // other handler may change.
    rules.insert(libc::SYS_rt_sigaction, any_of(0, &[GLIBC_SIGSETXID])?);
    // Kicks go to this process's own threads.
    rules.insert(libc::SYS_tgkill, any_of(0, &[pid])?);
    // fstat through fstatat(fd, "", AT_EMPTY_PATH), never a path lookup.
    rules.insert(
        libc::SYS_newfstatat,
        all_of(vec![cond(
            3,
            SeccompCmpOp::MaskedEq(libc::AT_EMPTY_PATH as u64),
            libc::AT_EMPTY_PATH as u64,
        )?])?,
    );
    Ok(rules)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Forks, installs the filters in the child, runs `body` there and
    /// returns the child's wait status.
    fn in_filtered_child(body: fn() -> i32) -> libc::c_int {
        let filters = Filters::new().expect("compile");
        // SAFETY: the child only calls async-signal-safe code: the filter
        // installation (prctl + seccomp, no allocation), raw syscalls and
        // _exit.
        let pid = unsafe { libc::fork() };
        assert!(pid >= 0, "fork: {}", std::io::Error::last_os_error());
        if pid == 0 {
            let code = match filters.apply_to_current_thread() {
                Ok(()) => body(),
                Err(_) => 100,
            };
            // SAFETY: ends the child without running the parent's atexit
            // handlers or unwinding.
            unsafe { libc::_exit(code) };
        }
        let mut status = 0;
        // SAFETY: waits for the child we just forked.
        let r = unsafe { libc::waitpid(pid, &mut status, 0) };
        assert_eq!(r, pid, "waitpid: {}", std::io::Error::last_os_error());
        status
    }

    #[test]
    fn a_disallowed_syscall_kills_the_process_with_sigsys() {
        let status = in_filtered_child(|| {
            // SAFETY: a plain socket(2); the filter must stop it.
            unsafe { libc::syscall(libc::SYS_socket, libc::AF_INET, libc::SOCK_STREAM, 0) };
            0
        });
        assert!(
            libc::WIFSIGNALED(status) && libc::WTERMSIG(status) == libc::SIGSYS,
            "child status {status:#x}"
        );
        let status = in_filtered_child(|| {
            // SAFETY: openat(2) of a path: no file is opened after boot.
            unsafe { libc::syscall(libc::SYS_openat, libc::AT_FDCWD, c"/etc/passwd".as_ptr(), 0) };
            0
        });
        assert!(libc::WIFSIGNALED(status) && libc::WTERMSIG(status) == libc::SIGSYS);
    }

    #[test]
    fn allowed_syscalls_pass_and_arguments_are_checked() {
        // What the VMM needs passes; clone3 gets ENOSYS (glibc then uses
        // clone, whose flags are checked).
        let status = in_filtered_child(|| {
            // SAFETY: plain syscalls on no memory or on a local buffer.
            unsafe {
                if libc::syscall(libc::SYS_gettid) <= 0 {
                    return 1;
                }
                let mut ts: libc::timespec = std::mem::zeroed();
                if libc::syscall(libc::SYS_clock_gettime, libc::CLOCK_MONOTONIC, &mut ts) != 0 {
                    return 2;
                }
                if libc::syscall(libc::SYS_clone3, std::ptr::null::<u8>(), 0) != -1
                    || *libc::__errno_location() != libc::ENOSYS
                {
                    return 3;
                }
                let p = libc::mmap(
                    std::ptr::null_mut(),
                    4096,
                    libc::PROT_READ | libc::PROT_WRITE,
                    libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                    -1,
                    0,
                );
                if p == libc::MAP_FAILED || libc::munmap(p, 4096) != 0 {
                    return 4;
                }
            }
            0
        });
        assert!(
            libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0,
            "child status {status:#x}"
        );
        // An ioctl other than KVM_RUN and FIONBIO is refused.
        let status = in_filtered_child(|| {
            let mut n: libc::c_int = 0;
            // SAFETY: FIONREAD on stdin into a local int.
            unsafe { libc::ioctl(0, libc::FIONREAD, &mut n) };
            0
        });
        assert!(libc::WIFSIGNALED(status) && libc::WTERMSIG(status) == libc::SIGSYS);
        // Executable memory is refused.
        let status = in_filtered_child(|| {
            // SAFETY: an anonymous mapping the filter must refuse.
            unsafe {
                libc::mmap(
                    std::ptr::null_mut(),
                    4096,
                    libc::PROT_READ | libc::PROT_EXEC,
                    libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                    -1,
                    0,
                )
            };
            0
        });
        assert!(libc::WIFSIGNALED(status) && libc::WTERMSIG(status) == libc::SIGSYS);
    }
}
