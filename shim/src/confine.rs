//! Confinement of the host processes that face the guest (QEMU, virtiofsd,
//! vhost-device-vsock), applied between fork and exec. Their memory limit
//! is the pod cgroup's, set by the daemon before the shim starts.
//!
//! The guest is hostile: its kernel and agent may be compromised and then
//! drive every message these processes parse. Each of them therefore gives
//! up, before it runs its first instruction, what it does not need: root
//! (where the program can live without it), capabilities (the bounding set
//! too, so nothing can be regained by exec), the ability to gain privileges
//! (no_new_privs), and system calls (a seccomp filter). The pieces are
//! prepared in the shim (paths opened, BPF compiled) and only applied in the
//! child, which allocates nothing and makes raw syscalls only.

use std::ffi::CString;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, anyhow, bail};
use seccompiler::{
    BpfProgram, SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompFilter,
    SeccompRule, TargetArch,
};
use std::collections::BTreeMap;
use vmpod_shim_api::vm_spec::VmmUser;

/// Stands for the child's own pid in a filter compiled before the fork;
/// [`Confinement::apply`] patches the real pid in. Above any pid_max (2^22)
/// and unlike every other constant of a filter (syscall numbers, the audit
/// arch, return values).
const OWN_PID: u64 = 0x3ead_beef;

/// BPF `JMP | JEQ | K`: the only instruction whose `k` holds a compared
/// argument value.
const BPF_JEQ_K: u16 = 0x15;

/// What a child gives up before exec. Built in the shim, applied in the
/// child by [`Confinement::apply`].
#[derive(Default)]
pub struct Confinement {
    /// The directory the child starts in, entered while it is still root: a
    /// helper then uses relative paths for its sockets and never needs to
    /// traverse the root-only directories above the pod's `run/`.
    cwd: Option<CString>,
    /// Switch to this uid/gid, with no supplementary groups; every
    /// capability goes with root. `None`: stay root (virtiofsd, which
    /// drops to its own reduced set; QEMU, which switches itself with
    /// `-runas` after it opened its files).
    user: Option<VmmUser>,
    /// The file mode mask: the sockets a helper creates are for its owner
    /// (and root) only.
    umask: Option<libc::mode_t>,
    /// Empty the bounding set, so no exec can bring a capability back.
    drop_bounding: bool,
    /// seccomp filters, installed last, in order.
    filters: Vec<BpfProgram>,
    /// The program, opened by the shim: after the switch to `user` a path
    /// under a root-only directory (`/root/.cargo/bin`) could not be
    /// executed. Held until the child has exec'd.
    program: Option<OwnedFd>,
}

impl Confinement {
    pub fn new() -> Confinement {
        Confinement::default()
    }

    pub fn cwd(mut self, dir: &Path) -> Result<Confinement> {
        let c = CString::new(dir.as_os_str().as_bytes())
            .with_context(|| format!("{} contains a NUL byte", dir.display()))?;
        self.cwd = Some(c);
        Ok(self)
    }

    pub fn user(mut self, user: VmmUser) -> Result<Confinement> {
        if user.uid == 0 || user.gid == 0 {
            bail!(
                "a confined helper must not run as root (got {}:{})",
                user.uid,
                user.gid
            );
        }
        self.user = Some(user);
        self.drop_bounding = true;
        Ok(self)
    }

    pub fn umask(mut self, mask: libc::mode_t) -> Confinement {
        self.umask = Some(mask);
        self
    }

    pub fn filter(mut self, program: BpfProgram) -> Confinement {
        self.filters.push(program);
        self
    }

    /// Opens `binary` for a later exec through `/proc/self/fd/N`, and
    /// returns that path: the one to give `Command::new`.
    pub fn exec_by_fd(&mut self, binary: &Path) -> Result<PathBuf> {
        let f = std::fs::File::open(binary)
            .with_context(|| format!("opening {} for exec", binary.display()))?;
        let fd: OwnedFd = f.into();
        let path = PathBuf::from(format!("/proc/self/fd/{}", fd.as_raw_fd()));
        self.program = Some(fd);
        Ok(path)
    }

    /// Applies everything, in the order each step needs: directory and mask
    /// while root, no_new_privs, the bounding and ambient sets (which need
    /// CAP_SETPCAP), groups, gid, uid (which clears the permitted and
    /// effective sets), then `after_user` (the parent-death signal, which a
    /// credential change resets), then the filters, patched with the pid.
    ///
    /// # Safety
    /// Only between fork and exec: it makes raw syscalls, allocates nothing
    /// and returns the errno of the step that failed.
    pub unsafe fn apply(
        &mut self,
        after_user: impl FnOnce() -> std::io::Result<()>,
    ) -> std::io::Result<()> {
        let last = || std::io::Error::last_os_error();
        // SAFETY (whole block): raw syscalls with valid pointers (the
        // CString and the BPF program live in `self`).
        unsafe {
            if let Some(dir) = &self.cwd
                && libc::chdir(dir.as_ptr()) != 0
            {
                return Err(last());
            }
            if let Some(mask) = self.umask {
                libc::umask(mask);
            }
            if libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0 {
                return Err(last());
            }
            if self.drop_bounding {
                for cap in 0..=63 {
                    if libc::prctl(libc::PR_CAPBSET_DROP, cap, 0, 0, 0) != 0 {
                        // EINVAL: past the kernel's last capability.
                        if std::io::Error::last_os_error().raw_os_error() == Some(libc::EINVAL) {
                            break;
                        }
                        return Err(last());
                    }
                }
                if libc::prctl(
                    libc::PR_CAP_AMBIENT,
                    libc::PR_CAP_AMBIENT_CLEAR_ALL,
                    0,
                    0,
                    0,
                ) != 0
                {
                    return Err(last());
                }
            }
            // Groups, then gid, then uid: each step needs what the next
            // one removes.
            if let Some(VmmUser { uid, gid }) = self.user
                && (libc::syscall(libc::SYS_setgroups, 0, std::ptr::null::<libc::gid_t>()) != 0
                    || libc::syscall(libc::SYS_setresgid, gid, gid, gid) != 0
                    || libc::syscall(libc::SYS_setresuid, uid, uid, uid) != 0)
            {
                return Err(last());
            }
            after_user()?;
            let pid = libc::getpid() as u32;
            for program in &mut self.filters {
                for insn in program.iter_mut() {
                    if insn.code == BPF_JEQ_K && u64::from(insn.k) == OWN_PID {
                        insn.k = pid;
                    }
                }
                let prog = libc::sock_fprog {
                    len: program.len() as u16,
                    filter: program.as_mut_ptr().cast::<libc::sock_filter>(),
                };
                if libc::syscall(
                    libc::SYS_seccomp,
                    libc::SECCOMP_SET_MODE_FILTER,
                    0,
                    &prog as *const libc::sock_fprog,
                ) != 0
                {
                    return Err(last());
                }
            }
        }
        Ok(())
    }
}

fn arch() -> Result<TargetArch> {
    TargetArch::try_from(std::env::consts::ARCH)
        .map_err(|e| anyhow!("seccomp: unsupported architecture: {e}"))
}

fn cond(arg: u8, op: SeccompCmpOp, value: u64) -> Result<SeccompCondition> {
    SeccompCondition::new(arg, SeccompCmpArgLen::Dword, op, value)
        .with_context(|| format!("seccomp: condition on argument {arg}"))
}

fn rule(conditions: Vec<SeccompCondition>) -> Result<SeccompRule> {
    SeccompRule::new(conditions).context("seccomp: building a rule")
}

/// What no process facing the guest has any business doing: debugging or
/// reading other processes, loading code into the kernel, the kernel's
/// larger attack surfaces (BPF, perf, io_uring, userfaultfd, keyrings),
/// opening files by handle (escapes a chroot or mount namespace with
/// CAP_DAC_READ_SEARCH), and the host's clock, swap and power. A deny-list,
/// answered with EPERM, because QEMU and virtiofsd are foreign programs that
/// sandbox themselves further (QEMU's `-sandbox`, virtiofsd's namespaces and
/// allow-list): this one must not break a version that does something new
/// at start-up, only remove what their own filters leave open.
const DENIED: &[i64] = &[
    libc::SYS_ptrace,
    libc::SYS_process_vm_readv,
    libc::SYS_process_vm_writev,
    libc::SYS_pidfd_getfd,
    libc::SYS_kcmp,
    libc::SYS_kexec_load,
    libc::SYS_kexec_file_load,
    libc::SYS_init_module,
    libc::SYS_finit_module,
    libc::SYS_delete_module,
    libc::SYS_bpf,
    libc::SYS_perf_event_open,
    libc::SYS_userfaultfd,
    libc::SYS_io_uring_setup,
    libc::SYS_io_uring_enter,
    libc::SYS_io_uring_register,
    libc::SYS_keyctl,
    libc::SYS_add_key,
    libc::SYS_request_key,
    libc::SYS_open_by_handle_at,
    libc::SYS_fanotify_init,
    libc::SYS_acct,
    libc::SYS_swapon,
    libc::SYS_swapoff,
    libc::SYS_reboot,
    libc::SYS_settimeofday,
    libc::SYS_clock_settime,
    libc::SYS_clock_adjtime,
    libc::SYS_syslog,
    libc::SYS_quotactl,
];

/// [`DENIED`], and for a process that runs as the uid every pod's QEMU and
/// vsock helper share: no signal to any process but itself, so one pod's
/// compromised VMM cannot kill or stop another pod's.
pub fn deny_list(own_signals_only: bool) -> Result<BpfProgram> {
    let mut rules: BTreeMap<i64, Vec<SeccompRule>> =
        DENIED.iter().map(|&nr| (nr, Vec::new())).collect();
    if own_signals_only {
        let not_me = |arg| -> Result<Vec<SeccompRule>> {
            Ok(vec![rule(vec![cond(arg, SeccompCmpOp::Ne, OWN_PID)?])?])
        };
        rules.insert(libc::SYS_kill, not_me(0)?);
        rules.insert(libc::SYS_tgkill, not_me(0)?);
        rules.insert(libc::SYS_rt_sigqueueinfo, not_me(0)?);
        rules.insert(libc::SYS_rt_tgsigqueueinfo, not_me(0)?);
        for nr in [
            libc::SYS_tkill,
            libc::SYS_pidfd_open,
            libc::SYS_pidfd_send_signal,
        ] {
            rules.insert(nr, Vec::new());
        }
    }
    let filter = SeccompFilter::new(
        rules,
        SeccompAction::Allow,
        SeccompAction::Errno(libc::EPERM as u32),
        arch()?,
    )
    .context("seccomp: the deny-list")?;
    filter
        .try_into()
        .context("seccomp: compiling the deny-list")
}

/// vhost-device-vsock's allow-list: what `strace -f` of the helper shows
/// from its exec to its exit over pod boots, agent calls, container output
/// and stop (see the table in `allowed_vsock_syscalls`). It runs with no
/// capability as the shared VMM uid, so the list's point is the kernel
/// surface and the other pods: no path operation but opening read-only
/// (the loader's libraries) and binding its sockets in its own directory,
/// no new process (threads only), no signal to another process. Anything
/// else kills it, and its exit turns the pod NOTREADY with its log tail.
pub fn vsock_allow_list() -> Result<Vec<BpfProgram>> {
    let arch = arch()?;
    // clone3's flags sit behind a pointer seccomp cannot read: ENOSYS makes
    // glibc fall back to clone, whose flags the allow-list checks.
    let clone3 = SeccompFilter::new(
        [(libc::SYS_clone3, Vec::new())].into(),
        SeccompAction::Allow,
        SeccompAction::Errno(libc::ENOSYS as u32),
        arch,
    )
    .context("seccomp: the clone3 filter")?;
    let allow = SeccompFilter::new(
        vsock_rules()?,
        SeccompAction::KillProcess,
        SeccompAction::Allow,
        arch,
    )
    .context("seccomp: vhost-device-vsock's allow-list")?;
    Ok(vec![
        clone3
            .try_into()
            .context("seccomp: compiling the clone3 filter")?,
        allow
            .try_into()
            .context("seccomp: compiling vhost-device-vsock's allow-list")?,
    ])
}

fn vsock_rules() -> Result<BTreeMap<i64, Vec<SeccompRule>>> {
    let mut rules: BTreeMap<i64, Vec<SeccompRule>> = allowed_vsock_syscalls()
        .iter()
        .map(|&nr| (nr, Vec::new()))
        .collect();
    let thread_flags = (libc::CLONE_VM
        | libc::CLONE_FS
        | libc::CLONE_FILES
        | libc::CLONE_SIGHAND
        | libc::CLONE_THREAD) as u64;
    rules.insert(
        libc::SYS_clone,
        vec![rule(vec![cond(
            0,
            SeccompCmpOp::MaskedEq(thread_flags),
            thread_flags,
        )?])?],
    );
    rules.insert(
        libc::SYS_socket,
        vec![rule(vec![cond(
            0,
            SeccompCmpOp::Eq,
            libc::AF_UNIX as u64,
        )?])?],
    );
    // Read-only, never creating: the loader's cache and libraries.
    let read_only = (libc::O_ACCMODE | libc::O_CREAT | libc::O_TRUNC) as u64;
    rules.insert(
        libc::SYS_openat,
        vec![rule(vec![cond(2, SeccompCmpOp::MaskedEq(read_only), 0)?])?],
    );
    // Guest memory arrives as a memfd and is mapped shared, read-write;
    // nothing is ever mapped writable and executable at once (the loader
    // maps text read-execute, then data read-write).
    let wx = (libc::PROT_WRITE | libc::PROT_EXEC) as u64;
    let not_wx = |arg| -> Result<Vec<SeccompRule>> {
        Ok(vec![
            rule(vec![cond(arg, SeccompCmpOp::MaskedEq(wx), 0)?])?,
            rule(vec![cond(
                arg,
                SeccompCmpOp::MaskedEq(wx),
                libc::PROT_WRITE as u64,
            )?])?,
            rule(vec![cond(
                arg,
                SeccompCmpOp::MaskedEq(wx),
                libc::PROT_EXEC as u64,
            )?])?,
        ])
    };
    rules.insert(libc::SYS_mmap, not_wx(2)?);
    rules.insert(libc::SYS_mprotect, not_wx(2)?);
    // Signals to itself only (a panic's abort), patched with the pid.
    rules.insert(
        libc::SYS_tgkill,
        vec![rule(vec![cond(0, SeccompCmpOp::Eq, OWN_PID)?])?],
    );
    // Non-blocking mode and the terminal probe of a logger; nothing else.
    rules.insert(
        libc::SYS_ioctl,
        vec![
            rule(vec![cond(1, SeccompCmpOp::Eq, libc::FIONBIO)?])?,
            rule(vec![cond(1, SeccompCmpOp::Eq, libc::FIOCLEX)?])?,
            rule(vec![cond(1, SeccompCmpOp::Eq, libc::TCGETS)?])?,
        ],
    );
    Ok(rules)
}

/// The unconditional entries of vhost-device-vsock's allow-list.
fn allowed_vsock_syscalls() -> Vec<i64> {
    vec![
        // The exec itself (the filter is installed before it; whatever is
        // exec'd inherits the filter, no_new_privs and the uid) and the
        // dynamic loader: libraries read and mapped, TLS, the stack limit,
        // std's read of /proc/self/maps for the main thread's guard page.
        libc::SYS_execve,
        libc::SYS_brk,
        libc::SYS_arch_prctl,
        libc::SYS_access,
        libc::SYS_newfstatat,
        libc::SYS_fstat,
        libc::SYS_statx,
        libc::SYS_pread64,
        libc::SYS_read,
        libc::SYS_lseek,
        libc::SYS_close,
        libc::SYS_munmap,
        libc::SYS_mremap,
        libc::SYS_madvise,
        libc::SYS_set_tid_address,
        libc::SYS_set_robust_list,
        libc::SYS_rseq,
        libc::SYS_prlimit64,
        libc::SYS_getrandom,
        libc::SYS_poll,
        libc::SYS_rt_sigaction,
        libc::SYS_rt_sigprocmask,
        libc::SYS_rt_sigreturn,
        libc::SYS_sigaltstack,
        libc::SYS_sched_getaffinity,
        libc::SYS_sched_yield,
        libc::SYS_getpid,
        libc::SYS_gettid,
        libc::SYS_getcwd,
        libc::SYS_readlink,
        libc::SYS_fcntl,
        libc::SYS_dup,
        libc::SYS_dup2,
        libc::SYS_dup3,
        // Thread names, and std's capability probe at start-up.
        libc::SYS_prctl,
        libc::SYS_futex,
        libc::SYS_clock_gettime,
        libc::SYS_clock_nanosleep,
        libc::SYS_nanosleep,
        libc::SYS_clone3,
        libc::SYS_exit,
        libc::SYS_exit_group,
        // Logging to the inherited log file.
        libc::SYS_write,
        libc::SYS_writev,
        // Its two listening sockets (the stale ones unlinked first), the
        // connections on them, and a guest-initiated connection to
        // `vm.vsock_<port>`, all relative to its directory.
        libc::SYS_unlink,
        libc::SYS_unlinkat,
        libc::SYS_bind,
        libc::SYS_listen,
        libc::SYS_accept,
        libc::SYS_accept4,
        libc::SYS_connect,
        libc::SYS_getsockopt,
        libc::SYS_setsockopt,
        libc::SYS_getsockname,
        libc::SYS_getpeername,
        libc::SYS_shutdown,
        libc::SYS_recvfrom,
        libc::SYS_recvmsg,
        libc::SYS_sendto,
        libc::SYS_sendmsg,
        libc::SYS_readv,
        // The vhost-user backend's event loop: epoll over the sockets and
        // the vrings' kick and call eventfds.
        libc::SYS_epoll_create1,
        libc::SYS_epoll_ctl,
        libc::SYS_epoll_wait,
        libc::SYS_epoll_pwait,
        libc::SYS_eventfd2,
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filters_compile() {
        let deny = deny_list(true).expect("deny-list");
        assert!(
            deny.iter()
                .any(|i| i.code == BPF_JEQ_K && u64::from(i.k) == OWN_PID),
            "the pid placeholder is compared somewhere"
        );
        assert_eq!(vsock_allow_list().expect("allow-list").len(), 2);
    }

    /// A child under the deny-list cannot signal its parent, and can
    /// signal itself.
    #[test]
    fn deny_list_keeps_signals_at_home() {
        use std::os::unix::process::CommandExt;
        let mut c = Confinement::new().filter(deny_list(true).expect("deny-list"));
        let mut cmd = std::process::Command::new("sh");
        cmd.args([
            "-c",
            "kill -0 $PPID || exit 7; kill -0 $$ && exit 0; exit 9",
        ]);
        // SAFETY: apply only makes raw syscalls.
        unsafe {
            cmd.pre_exec(move || c.apply(|| Ok(())));
        }
        let status = cmd.status().expect("run sh");
        assert_eq!(status.code(), Some(7), "kill of the parent was allowed");
    }
}
