//! Seccomp filters for containers: the built-in RuntimeDefault profile and
//! OCI/Docker JSON profiles, compiled to classic BPF by seccompiler (the
//! crate the shim's VMM uses too), so no BPF is hand-assembled here.
//!
//! RuntimeDefault is an allow list with EPERM for everything else, the
//! shape of containerd's and Docker's default profile: a call nobody
//! reviewed, including one a newer kernel adds, is refused rather than let
//! through because no list named it. As in Docker, a capability the
//! container holds re-allows the calls it guards (CAP_SYS_ADMIN: mount,
//! unshare, setns, ...), and a few calls are allowed only with harmless
//! arguments (`personality`, `clone` without namespace flags, `socket`
//! without AF_VSOCK).
//!
//! Whatever the profile says, a confined container gets EAFNOSUPPORT for
//! AF_VSOCK sockets: inside a vmpod guest vsock is the agent's own channel
//! to the host and no business of a container. Unconfined (and privileged)
//! containers get no filter at all.
//!
//! A seccompiler filter has one action for every rule it matches, while a
//! profile gives calls different actions; so a profile becomes a stack of
//! filters, and the kernel, which runs every filter of a stack, keeps the
//! most restrictive verdict (kill, trap, errno, trace, log, allow; on a tie
//! the filter installed last). The first filter allows each call some rule
//! names, under that rule's conditions, and gives the rest the default
//! action; every other action gets a filter that returns it where its
//! rules match and allows the rest; the vsock guard comes last. A call two
//! rules of different actions match therefore gets the stricter one. Rules
//! whose action is the default are dropped, as runc does.
//!
//! Each filter first checks the architecture and kills a caller of another
//! ABI (i386); an x32 call carries x86_64's architecture with bit 30 set in
//! its number, so it matches no rule. The guest kernel has neither IA32 nor
//! x32 emulation, so neither kind can be made there anyway.

use std::collections::BTreeMap;
use std::io;

use oci_spec::runtime::{
    LinuxSeccomp, LinuxSeccompAction, LinuxSeccompArg, LinuxSeccompOperator, LinuxSyscall,
};
use seccompiler::{
    BpfProgram, SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompFilter,
    SeccompRule, TargetArch,
};
use serde::Deserialize;
use serde_json::Value;
use tonic::Status;
use vmpod_agent_proto::v1::{Security, seccomp};

use super::caps;
use super::syscalls;

/// What a matching rule does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    Allow,
    Errno(u16),
    KillThread,
    KillProcess,
    Trap,
    Trace(u16),
    Log,
}

impl From<Action> for SeccompAction {
    fn from(a: Action) -> Self {
        match a {
            Action::Allow => SeccompAction::Allow,
            Action::Errno(e) => SeccompAction::Errno(u32::from(e)),
            Action::KillThread => SeccompAction::KillThread,
            Action::KillProcess => SeccompAction::KillProcess,
            Action::Trap => SeccompAction::Trap,
            Action::Trace(d) => SeccompAction::Trace(u32::from(d)),
            Action::Log => SeccompAction::Log,
        }
    }
}

/// Comparison of one 64-bit syscall argument.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    Eq,
    Ne,
    Lt,
    Le,
    Gt,
    Ge,
    /// `(arg & value) == value_two`
    MaskedEq,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cond {
    pub index: u8,
    pub op: Op,
    pub value: u64,
    pub value_two: u64,
}

impl Cond {
    fn arg(index: u8, op: Op, value: u64) -> Cond {
        Cond {
            index,
            op,
            value,
            value_two: 0,
        }
    }

    /// Whole 64-bit comparisons, as libseccomp makes them for runc.
    fn lower(&self) -> Result<SeccompCondition, String> {
        let (op, value) = match self.op {
            Op::Eq => (SeccompCmpOp::Eq, self.value),
            Op::Ne => (SeccompCmpOp::Ne, self.value),
            Op::Lt => (SeccompCmpOp::Lt, self.value),
            Op::Le => (SeccompCmpOp::Le, self.value),
            Op::Gt => (SeccompCmpOp::Gt, self.value),
            Op::Ge => (SeccompCmpOp::Ge, self.value),
            Op::MaskedEq => (SeccompCmpOp::MaskedEq(self.value), self.value_two),
        };
        SeccompCondition::new(self.index, SeccompCmpArgLen::Qword, op, value)
            .map_err(|e| format!("argument {}: {e}", self.index))
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rule {
    pub nr: u32,
    /// All must hold.
    pub conds: Vec<Cond>,
    pub action: Action,
}

impl Rule {
    fn allow(nr: u32, conds: Vec<Cond>) -> Rule {
        Rule {
            nr,
            conds,
            action: Action::Allow,
        }
    }
}

/// One filter of the stack: `on_match` where any of `rules` matches (by
/// number, then conditions), `otherwise` elsewhere. In the kernel's
/// `struct sock_filter` layout, 8 little-endian bytes an instruction, since
/// it travels to the helper in the plan.
fn program(rules: &[&Rule], on_match: Action, otherwise: Action) -> Result<Vec<u8>, String> {
    // None: some rule matches the call whatever its arguments.
    let mut chains: BTreeMap<i64, Option<Vec<SeccompRule>>> = BTreeMap::new();
    for rule in rules {
        let chain = chains
            .entry(i64::from(rule.nr))
            .or_insert_with(|| Some(Vec::new()));
        if rule.conds.is_empty() {
            *chain = None;
        } else if let Some(list) = chain {
            let conds = rule
                .conds
                .iter()
                .map(Cond::lower)
                .collect::<Result<Vec<_>, _>>()?;
            list.push(SeccompRule::new(conds).map_err(|e| e.to_string())?);
        }
    }
    let chains = chains
        .into_iter()
        .map(|(nr, chain)| (nr, chain.unwrap_or_default()))
        .collect();
    let filter = SeccompFilter::new(
        chains,
        otherwise.into(),
        on_match.into(),
        TargetArch::x86_64,
    )
    .map_err(|e| e.to_string())?;
    let insns: BpfProgram = filter
        .try_into()
        .map_err(|e: seccompiler::BackendError| e.to_string())?;
    let mut out = Vec::with_capacity(insns.len() * 8);
    for i in &insns {
        out.extend_from_slice(&i.code.to_le_bytes());
        out.push(i.jt);
        out.push(i.jf);
        out.extend_from_slice(&i.k.to_le_bytes());
    }
    Ok(out)
}

/// The filter stack for `rules` over `default`, in installation order (see
/// the module comment).
pub fn compile(rules: &[Rule], default: Action) -> Result<Vec<Vec<u8>>, String> {
    let rules: Vec<&Rule> = rules.iter().filter(|r| r.action != default).collect();
    let mut programs = Vec::new();
    if default != Action::Allow {
        programs.push(program(&rules, Action::Allow, default)?);
    }
    let mut actions: Vec<Action> = Vec::new();
    for r in &rules {
        if r.action != Action::Allow && !actions.contains(&r.action) {
            actions.push(r.action);
        }
    }
    for action in actions {
        let of: Vec<&Rule> = rules
            .iter()
            .copied()
            .filter(|r| r.action == action)
            .collect();
        programs.push(program(&of, action, Action::Allow)?);
    }
    Ok(programs)
}

const AF_VSOCK: u64 = libc::AF_VSOCK as u64;

/// The last filter of every confined container.
fn vsock_guard() -> Result<Vec<u8>, String> {
    let nr = syscalls::number("socket").ok_or("no number for socket")?;
    let rule = Rule {
        nr,
        conds: vec![Cond::arg(0, Op::Eq, AF_VSOCK)],
        action: Action::Errno(libc::EAFNOSUPPORT as u16),
    };
    program(&[&rule], rule.action, Action::Allow)
}

/// Calls RuntimeDefault allows whatever the container's capabilities. The
/// x86_64 part of Docker's default list, plus `fchmodat2`, which glibc
/// tries before falling back to `fchmodat` only on ENOSYS. Left out on
/// purpose: `io_uring_*` (containerd and Docker dropped them too: their
/// operations bypass this filter).
const ALWAYS: &[&str] = &[
    "accept",
    "accept4",
    "access",
    "adjtimex",
    "alarm",
    "arch_prctl",
    "bind",
    "brk",
    "capget",
    "capset",
    "chdir",
    "chmod",
    "chown",
    "clock_adjtime",
    "clock_getres",
    "clock_gettime",
    "clock_nanosleep",
    "close",
    "close_range",
    "connect",
    "copy_file_range",
    "creat",
    "dup",
    "dup2",
    "dup3",
    "epoll_create",
    "epoll_create1",
    "epoll_ctl",
    "epoll_ctl_old",
    "epoll_pwait",
    "epoll_pwait2",
    "epoll_wait",
    "epoll_wait_old",
    "eventfd",
    "eventfd2",
    "execve",
    "execveat",
    "exit",
    "exit_group",
    "faccessat",
    "faccessat2",
    "fadvise64",
    "fallocate",
    "fanotify_mark",
    "fchdir",
    "fchmod",
    "fchmodat",
    "fchmodat2",
    "fchown",
    "fchownat",
    "fcntl",
    "fdatasync",
    "fgetxattr",
    "flistxattr",
    "flock",
    "fork",
    "fremovexattr",
    "fsetxattr",
    "fstat",
    "fstatfs",
    "fsync",
    "ftruncate",
    "futex",
    "futex_waitv",
    "futimesat",
    "get_robust_list",
    "get_thread_area",
    "getcpu",
    "getcwd",
    "getdents",
    "getdents64",
    "getegid",
    "geteuid",
    "getgid",
    "getgroups",
    "getitimer",
    "getpeername",
    "getpgid",
    "getpgrp",
    "getpid",
    "getppid",
    "getpriority",
    "getrandom",
    "getresgid",
    "getresuid",
    "getrlimit",
    "getrusage",
    "getsid",
    "getsockname",
    "getsockopt",
    "gettid",
    "gettimeofday",
    "getuid",
    "getxattr",
    "inotify_add_watch",
    "inotify_init",
    "inotify_init1",
    "inotify_rm_watch",
    "io_cancel",
    "io_destroy",
    "io_getevents",
    "io_setup",
    "io_submit",
    "ioctl",
    "ioprio_get",
    "ioprio_set",
    "kill",
    "landlock_add_rule",
    "landlock_create_ruleset",
    "landlock_restrict_self",
    "lchown",
    "lgetxattr",
    "link",
    "linkat",
    "listen",
    "listxattr",
    "llistxattr",
    "lremovexattr",
    "lseek",
    "lsetxattr",
    "lstat",
    "madvise",
    "membarrier",
    "memfd_create",
    "memfd_secret",
    "mincore",
    "mkdir",
    "mkdirat",
    "mknod",
    "mknodat",
    "mlock",
    "mlock2",
    "mlockall",
    "mmap",
    "modify_ldt",
    "mprotect",
    "mq_getsetattr",
    "mq_notify",
    "mq_open",
    "mq_timedreceive",
    "mq_timedsend",
    "mq_unlink",
    "mremap",
    "msgctl",
    "msgget",
    "msgrcv",
    "msgsnd",
    "msync",
    "munlock",
    "munlockall",
    "munmap",
    "name_to_handle_at",
    "nanosleep",
    "newfstatat",
    "open",
    "openat",
    "openat2",
    "pause",
    "pidfd_open",
    "pidfd_send_signal",
    "pipe",
    "pipe2",
    "pkey_alloc",
    "pkey_free",
    "pkey_mprotect",
    "poll",
    "ppoll",
    "prctl",
    "pread64",
    "preadv",
    "preadv2",
    "prlimit64",
    "process_mrelease",
    // Docker allows these three on kernels from 4.8 on, where ptrace can no
    // longer be used to get around a seccomp filter; the guest's is 6.1.
    "process_vm_readv",
    "process_vm_writev",
    "ptrace",
    "pselect6",
    "pwrite64",
    "pwritev",
    "pwritev2",
    "read",
    "readahead",
    "readlink",
    "readlinkat",
    "readv",
    "recvfrom",
    "recvmmsg",
    "recvmsg",
    "remap_file_pages",
    "removexattr",
    "rename",
    "renameat",
    "renameat2",
    "restart_syscall",
    "rmdir",
    "rseq",
    "rt_sigaction",
    "rt_sigpending",
    "rt_sigprocmask",
    "rt_sigqueueinfo",
    "rt_sigreturn",
    "rt_sigsuspend",
    "rt_sigtimedwait",
    "rt_tgsigqueueinfo",
    "sched_get_priority_max",
    "sched_get_priority_min",
    "sched_getaffinity",
    "sched_getattr",
    "sched_getparam",
    "sched_getscheduler",
    "sched_rr_get_interval",
    "sched_setaffinity",
    "sched_setattr",
    "sched_setparam",
    "sched_setscheduler",
    "sched_yield",
    "seccomp",
    "select",
    "semctl",
    "semget",
    "semop",
    "semtimedop",
    "sendfile",
    "sendmmsg",
    "sendmsg",
    "sendto",
    "set_robust_list",
    "set_thread_area",
    "set_tid_address",
    "setfsgid",
    "setfsuid",
    "setgid",
    "setgroups",
    "setitimer",
    "setpgid",
    "setpriority",
    "setregid",
    "setresgid",
    "setresuid",
    "setreuid",
    "setrlimit",
    "setsid",
    "setsockopt",
    "setuid",
    "setxattr",
    "shmat",
    "shmctl",
    "shmdt",
    "shmget",
    "shutdown",
    "sigaltstack",
    "signalfd",
    "signalfd4",
    "socketpair",
    "splice",
    "stat",
    "statfs",
    "statx",
    "symlink",
    "symlinkat",
    "sync",
    "sync_file_range",
    "syncfs",
    "sysinfo",
    "tee",
    "tgkill",
    "time",
    "timer_create",
    "timer_delete",
    "timer_getoverrun",
    "timer_gettime",
    "timer_settime",
    "timerfd_create",
    "timerfd_gettime",
    "timerfd_settime",
    "times",
    "tkill",
    "truncate",
    "umask",
    "uname",
    "unlink",
    "unlinkat",
    "utime",
    "utimensat",
    "utimes",
    "vfork",
    "vmsplice",
    "wait4",
    "waitid",
    "write",
    "writev",
];

/// Calls a capability re-allows (with its name as in `caps`). A call may
/// be in several groups: any one of the capabilities is enough.
const BY_CAPABILITY: &[(&str, &[&str])] = &[
    (
        "SYS_ADMIN",
        &[
            "bpf",
            "clone",
            "clone3",
            "fanotify_init",
            "fsconfig",
            "fsmount",
            "fsopen",
            "fspick",
            "lookup_dcookie",
            "mount",
            "mount_setattr",
            "move_mount",
            "open_tree",
            "perf_event_open",
            "quotactl",
            "quotactl_fd",
            "setdomainname",
            "sethostname",
            "setns",
            "syslog",
            "umount2",
            "unshare",
        ],
    ),
    ("BPF", &["bpf"]),
    ("DAC_READ_SEARCH", &["open_by_handle_at"]),
    ("PERFMON", &["perf_event_open"]),
    ("SYS_BOOT", &["reboot"]),
    ("SYS_CHROOT", &["chroot"]),
    (
        "SYS_MODULE",
        &["delete_module", "finit_module", "init_module"],
    ),
    (
        "SYS_NICE",
        &[
            "get_mempolicy",
            "mbind",
            "set_mempolicy",
            "set_mempolicy_home_node",
        ],
    ),
    ("SYS_PACCT", &["acct"]),
    ("SYS_PTRACE", &["kcmp", "pidfd_getfd", "process_madvise"]),
    ("SYS_RAWIO", &["ioperm", "iopl"]),
    ("SYS_TIME", &["clock_settime", "settimeofday"]),
    ("SYS_TTY_CONFIG", &["vhangup"]),
    ("SYSLOG", &["syslog"]),
];

/// personality(2) values Docker allows: PER_LINUX, PER_LINUX32, their
/// UNAME26 variants, and the 0xffffffff query.
const PERSONALITIES: &[u64] = &[0x0, 0x8, 0x20000, 0x20008, 0xffff_ffff];

/// clone(2) flags that make namespaces: NEWNS, NEWCGROUP, NEWUTS, NEWIPC,
/// NEWUSER, NEWPID, NEWNET.
const CLONE_NS_FLAGS: u64 = 0x7E02_0000;

fn has(caps_set: u64, name: &str) -> bool {
    caps::parse(name).is_some_and(|c| caps_set & caps::bit(c) != 0)
}

/// The RuntimeDefault rules (over a default of EPERM) for a container with
/// capability set `caps_set`.
pub fn runtime_default(caps_set: u64) -> Vec<Rule> {
    let nr = |name: &str| syscalls::number(name);
    let mut names: Vec<&str> = ALWAYS.to_vec();
    for (cap, calls) in BY_CAPABILITY {
        if has(caps_set, cap) {
            names.extend_from_slice(calls);
        }
    }
    let mut rules: Vec<Rule> = names
        .iter()
        .filter_map(|n| nr(n))
        .map(|n| Rule::allow(n, vec![]))
        .collect();
    if let Some(n) = nr("personality") {
        for &v in PERSONALITIES {
            rules.push(Rule::allow(n, vec![Cond::arg(0, Op::Eq, v)]));
        }
    }
    if let Some(n) = nr("socket") {
        rules.push(Rule::allow(n, vec![Cond::arg(0, Op::Ne, AF_VSOCK)]));
    }
    if !has(caps_set, "SYS_ADMIN") {
        if let Some(n) = nr("clone") {
            rules.push(Rule::allow(
                n,
                vec![Cond {
                    index: 0,
                    op: Op::MaskedEq,
                    value: CLONE_NS_FLAGS,
                    value_two: 0,
                }],
            ));
        }
        // ENOSYS, not EPERM: glibc then falls back to clone(2), whose
        // flags the filter can see (clone3 passes them in memory).
        if let Some(n) = nr("clone3") {
            rules.push(Rule {
                nr: n,
                conds: vec![],
                action: Action::Errno(libc::ENOSYS as u16),
            });
        }
    }
    rules
}

fn invalid(why: impl std::fmt::Display) -> Status {
    Status::invalid_argument(format!("security.seccomp.profile_json: {why}"))
}

/// Docker's additions to an OCI syscall entry, which oci-spec's
/// `LinuxSyscall` does not know: `name` for a single call, and filters on
/// the container's capabilities and the architecture.
#[derive(Deserialize, Default)]
struct DockerEntry {
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    includes: Option<DockerFilter>,
    #[serde(default)]
    excludes: Option<DockerFilter>,
}

/// `minKernel` is ignored: the guest kernel is newer than any a profile
/// names.
#[derive(Deserialize, Default)]
struct DockerFilter {
    #[serde(default)]
    caps: Option<Vec<String>>,
    #[serde(default)]
    arches: Option<Vec<String>>,
}

fn is_our_arch(name: &str) -> bool {
    matches!(name, "amd64" | "x86_64" | "SCMP_ARCH_X86_64" | "x86-64")
}

impl DockerEntry {
    /// Includes: every capability and one of the architectures; excludes:
    /// none of either.
    fn applies(&self, caps_set: u64) -> bool {
        let empty = DockerFilter::default();
        let inc = self.includes.as_ref().unwrap_or(&empty);
        let exc = self.excludes.as_ref().unwrap_or(&empty);
        let list = |v: &Option<Vec<String>>| v.clone().unwrap_or_default();
        let (inc_caps, inc_arches) = (list(&inc.caps), list(&inc.arches));
        let (exc_caps, exc_arches) = (list(&exc.caps), list(&exc.arches));
        inc_caps.iter().all(|c| has(caps_set, c))
            && (inc_arches.is_empty() || inc_arches.iter().any(|a| is_our_arch(a)))
            && !exc_caps.iter().any(|c| has(caps_set, c))
            && !exc_arches.iter().any(|a| is_our_arch(a))
    }
}

fn action(a: LinuxSeccompAction, errno: Option<u32>, field: &str) -> Result<Action, Status> {
    let data = |e: Option<u32>| -> Result<u16, Status> {
        let e = e.unwrap_or(libc::EPERM as u32);
        u16::try_from(e).map_err(|_| invalid(format!("{field}: errno {e} is out of range")))
    };
    Ok(match a {
        LinuxSeccompAction::ScmpActAllow => Action::Allow,
        LinuxSeccompAction::ScmpActErrno => Action::Errno(data(errno)?),
        LinuxSeccompAction::ScmpActKill | LinuxSeccompAction::ScmpActKillThread => {
            Action::KillThread
        }
        LinuxSeccompAction::ScmpActKillProcess => Action::KillProcess,
        LinuxSeccompAction::ScmpActTrap => Action::Trap,
        LinuxSeccompAction::ScmpActTrace => Action::Trace(data(errno)?),
        LinuxSeccompAction::ScmpActLog => Action::Log,
        LinuxSeccompAction::ScmpActNotify => {
            return Err(invalid(format!(
                "{field}: SCMP_ACT_NOTIFY is not supported"
            )));
        }
    })
}

fn cond(a: &LinuxSeccompArg, field: &str) -> Result<Cond, Status> {
    let index = u8::try_from(a.index())
        .ok()
        .filter(|i| *i < 6)
        .ok_or_else(|| invalid(format!("{field}.index: {} is not 0-5", a.index())))?;
    let op = match a.op() {
        LinuxSeccompOperator::ScmpCmpEq => Op::Eq,
        LinuxSeccompOperator::ScmpCmpNe => Op::Ne,
        LinuxSeccompOperator::ScmpCmpLt => Op::Lt,
        LinuxSeccompOperator::ScmpCmpLe => Op::Le,
        LinuxSeccompOperator::ScmpCmpGt => Op::Gt,
        LinuxSeccompOperator::ScmpCmpGe => Op::Ge,
        LinuxSeccompOperator::ScmpCmpMaskedEq => Op::MaskedEq,
    };
    Ok(Cond {
        index,
        op,
        value: a.value(),
        value_two: a.value_two().unwrap_or(0),
    })
}

/// Reads the entries one by one, so an error names the entry; Docker's
/// `name` is folded into `names` for oci-spec's type.
fn entries(doc: &mut Value) -> Result<Vec<(LinuxSyscall, DockerEntry)>, Status> {
    let list = match doc.get_mut("syscalls").map(Value::take) {
        None | Some(Value::Null) => return Ok(Vec::new()),
        Some(Value::Array(list)) => list,
        Some(_) => return Err(invalid("syscalls: must be a list")),
    };
    let mut out = Vec::with_capacity(list.len());
    for (i, mut entry) in list.into_iter().enumerate() {
        let field = format!("syscalls[{i}]");
        let docker =
            DockerEntry::deserialize(&entry).map_err(|e| invalid(format!("{field}: {e}")))?;
        if let (Some(name), Some(obj)) = (&docker.name, entry.as_object_mut()) {
            let names = obj
                .entry("names")
                .or_insert_with(|| Value::Array(Vec::new()));
            if let Value::Array(names) = names {
                names.push(Value::String(name.clone()));
            }
        }
        let oci =
            LinuxSyscall::deserialize(&entry).map_err(|e| invalid(format!("{field}: {e}")))?;
        out.push((oci, docker));
    }
    Ok(out)
}

/// Parses an OCI (`linux.seccomp`) or Docker profile into rules over a
/// default action.
pub fn parse_profile(json: &str, caps_set: u64) -> Result<(Vec<Rule>, Action), Status> {
    let mut doc: Value =
        serde_json::from_str(json).map_err(|e| invalid(format!("not JSON: {e}")))?;
    if !doc.is_object() {
        return Err(invalid("must be a JSON object"));
    }
    let entries = entries(&mut doc)?;
    // Alone first, so that a bad action is named as the default's.
    if let Some(v) = doc.get("defaultAction") {
        LinuxSeccompAction::deserialize(v).map_err(|e| invalid(format!("defaultAction: {e}")))?;
    }
    let profile = LinuxSeccomp::deserialize(&doc).map_err(invalid)?;
    let default = action(
        profile.default_action(),
        profile.default_errno_ret(),
        "defaultAction",
    )?;
    let mut rules = Vec::new();
    for (i, (entry, docker)) in entries.iter().enumerate() {
        if !docker.applies(caps_set) {
            continue;
        }
        let field = format!("syscalls[{i}]");
        let act = action(entry.action(), entry.errno_ret(), &field)?;
        let conds = entry
            .args()
            .as_deref()
            .unwrap_or_default()
            .iter()
            .enumerate()
            .map(|(j, a)| cond(a, &format!("{field}.args[{j}]")))
            .collect::<Result<Vec<_>, _>>()?;
        // Several conditions on one argument are alternatives (runc and
        // libseccomp treat them so); on different arguments, all must hold.
        let alternatives = conds.len() > 1 && conds.iter().all(|c| c.index == conds[0].index);
        // Names this table lacks (other architectures' calls, or ones newer
        // than libc) are skipped, as runc does.
        for nr in entry.names().iter().filter_map(|n| syscalls::number(n)) {
            if alternatives {
                rules.extend(conds.iter().map(|c| Rule {
                    nr,
                    conds: vec![*c],
                    action: act,
                }));
            } else {
                rules.push(Rule {
                    nr,
                    conds: conds.clone(),
                    action: act,
                });
            }
        }
    }
    Ok((rules, default))
}

/// The compiled filters for a container, in installation order, or none
/// when it runs unconfined (privileged containers always do).
pub fn build(security: Option<&Security>, caps_set: u64) -> Result<Vec<Vec<u8>>, Status> {
    let sc = security.and_then(|s| s.seccomp.clone()).unwrap_or_default();
    if security.is_some_and(|s| s.privileged) {
        return Ok(Vec::new());
    }
    let kind = seccomp::Kind::try_from(sc.kind).unwrap_or(seccomp::Kind::RuntimeDefault);
    let mut programs = match kind {
        seccomp::Kind::Unconfined => return Ok(Vec::new()),
        seccomp::Kind::RuntimeDefault => compile(
            &runtime_default(caps_set),
            Action::Errno(libc::EPERM as u16),
        )
        .map_err(|e| Status::internal(format!("compiling RuntimeDefault seccomp: {e}")))?,
        seccomp::Kind::Profile => {
            let (rules, default) = parse_profile(&sc.profile_json, caps_set)?;
            compile(&rules, default).map_err(invalid)?
        }
    };
    programs.push(
        vsock_guard().map_err(|e| Status::internal(format!("compiling the vsock guard: {e}")))?,
    );
    Ok(programs)
}

/// Installs compiled filters on the calling thread, in order. Without
/// no_new_privs this needs CAP_SYS_ADMIN in the effective set.
/// (seccompiler's `apply_filter` would set no_new_privs itself, which is
/// the pod's choice, through allowPrivilegeEscalation, not ours.)
pub fn install(programs: &[Vec<u8>]) -> io::Result<()> {
    for (i, bpf) in programs.iter().enumerate() {
        install_one(bpf).map_err(|e| {
            io::Error::new(
                e.kind(),
                format!("filter {} of {}: {e}", i + 1, programs.len()),
            )
        })?;
    }
    Ok(())
}

fn install_one(bpf: &[u8]) -> io::Result<()> {
    if bpf.is_empty() || !bpf.len().is_multiple_of(8) {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{} bytes is not a BPF program", bpf.len()),
        ));
    }
    let insns: Vec<libc::sock_filter> = bpf
        .chunks_exact(8)
        .map(|c| libc::sock_filter {
            code: u16::from_le_bytes([c[0], c[1]]),
            jt: c[2],
            jf: c[3],
            k: u32::from_le_bytes([c[4], c[5], c[6], c[7]]),
        })
        .collect();
    let prog = libc::sock_fprog {
        len: u16::try_from(insns.len())
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "filter too long"))?,
        filter: insns.as_ptr() as *mut libc::sock_filter,
    };
    // SAFETY: prog points at `insns`, which outlives the call; the kernel
    // copies the program.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_seccomp,
            libc::SECCOMP_SET_MODE_FILTER,
            0,
            &prog as *const libc::sock_fprog,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const RET_KILL_PROCESS: u32 = 0x8000_0000;
    const RET_ERRNO: u32 = 0x0005_0000;
    const RET_ALLOW: u32 = 0x7fff_0000;
    const AUDIT_ARCH_X86_64: u32 = 0xC000_003E;
    const EPERM: u32 = RET_ERRNO | libc::EPERM as u32;
    const ENOSYS: u32 = RET_ERRNO | libc::ENOSYS as u32;
    const EAFNOSUPPORT: u32 = RET_ERRNO | libc::EAFNOSUPPORT as u32;

    /// A classic-BPF interpreter for what seccompiler emits, to test
    /// programs without installing them.
    fn run(bpf: &[u8], nr: u32, arch: u32, args: [u64; 6]) -> u32 {
        let mut data = [0u8; 64];
        data[0..4].copy_from_slice(&nr.to_le_bytes());
        data[4..8].copy_from_slice(&arch.to_le_bytes());
        for (i, a) in args.iter().enumerate() {
            data[16 + 8 * i..24 + 8 * i].copy_from_slice(&a.to_le_bytes());
        }
        let insns: Vec<(u16, u8, u8, u32)> = bpf
            .chunks_exact(8)
            .map(|c| {
                (
                    u16::from_le_bytes([c[0], c[1]]),
                    c[2],
                    c[3],
                    u32::from_le_bytes([c[4], c[5], c[6], c[7]]),
                )
            })
            .collect();
        let (mut pc, mut a) = (0usize, 0u32);
        loop {
            let (code, jt, jf, k) = insns[pc];
            pc += 1;
            match code {
                // ld [k]
                0x20 => {
                    let k = k as usize;
                    a = u32::from_le_bytes(data[k..k + 4].try_into().unwrap());
                }
                // and #k
                0x54 => a &= k,
                // ret #k
                0x06 => return k,
                // ja k
                0x05 => pc += k as usize,
                // jeq, jgt, jge, jset
                0x15 | 0x25 | 0x35 | 0x45 => {
                    let t = match code {
                        0x15 => a == k,
                        0x25 => a > k,
                        0x35 => a >= k,
                        _ => a & k != 0,
                    };
                    pc += usize::from(if t { jt } else { jf });
                }
                other => panic!("unexpected opcode {other:#x}"),
            }
        }
    }

    /// The kernel's verdict over a stack: the most restrictive action, and
    /// on a tie the filter installed last.
    fn verdict(programs: &[Vec<u8>], nr: u32, arch: u32, args: [u64; 6]) -> u32 {
        let rank = |r: u32| (r & 0xffff_0000) as i32;
        let mut ret = RET_ALLOW;
        for p in programs.iter().rev() {
            let cur = run(p, nr, arch, args);
            if rank(cur) < rank(ret) {
                ret = cur;
            }
        }
        ret
    }

    fn call(programs: &[Vec<u8>], name: &str, args: [u64; 6]) -> u32 {
        let nr = syscalls::number(name).unwrap_or_else(|| panic!("no syscall {name}"));
        verdict(programs, nr, AUDIT_ARCH_X86_64, args)
    }

    fn arg0(v: u64) -> [u64; 6] {
        [v, 0, 0, 0, 0, 0]
    }

    fn default_filters(caps_set: u64) -> Vec<Vec<u8>> {
        let s = Security {
            seccomp: Some(vmpod_agent_proto::v1::Seccomp {
                kind: seccomp::Kind::RuntimeDefault as i32,
                profile_json: String::new(),
            }),
            ..Default::default()
        };
        build(Some(&s), caps_set).unwrap()
    }

    const CLONE_NEWUSER: u64 = 0x1000_0000;

    #[test]
    fn every_runtime_default_name_is_an_x86_64_syscall() {
        let gated = BY_CAPABILITY.iter().flat_map(|(_, calls)| calls.iter());
        for name in ALWAYS.iter().chain(gated) {
            assert!(syscalls::number(name).is_some(), "{name} is not a syscall");
        }
        for (cap, calls) in BY_CAPABILITY {
            assert!(caps::parse(cap).is_some(), "{cap} is not a capability");
            for c in *calls {
                assert!(
                    !ALWAYS.contains(c),
                    "{c} is gated on {cap} and always allowed"
                );
            }
        }
    }

    #[test]
    fn runtime_default_is_an_allow_list() {
        let bpf = default_filters(caps::compute(None).unwrap());
        assert_eq!(call(&bpf, "read", [0; 6]), RET_ALLOW);
        assert_eq!(call(&bpf, "execve", [0; 6]), RET_ALLOW);
        assert_eq!(call(&bpf, "ptrace", [0; 6]), RET_ALLOW);
        // Not listed: refused, without a rule saying so.
        for name in [
            "fanotify_init",
            "kexec_load",
            "add_key",
            "keyctl",
            "userfaultfd",
            "io_uring_setup",
            "swapon",
            "mount",
            "unshare",
            "setns",
            "bpf",
        ] {
            assert_eq!(call(&bpf, name, [0; 6]), EPERM, "{name}");
        }
        // A number no kernel has given out yet.
        assert_eq!(verdict(&bpf, 1000, AUDIT_ARCH_X86_64, [0; 6]), EPERM);
        // Another architecture's call.
        assert_eq!(verdict(&bpf, 0, 0x4000_0003, [0; 6]), RET_KILL_PROCESS);
    }

    #[test]
    fn runtime_default_argument_filters() {
        let bpf = default_filters(caps::compute(None).unwrap());
        for v in [0, 8, 0x20000, 0x20008, 0xffff_ffff] {
            assert_eq!(call(&bpf, "personality", arg0(v)), RET_ALLOW, "{v:#x}");
        }
        assert_eq!(call(&bpf, "personality", arg0(0x0040_0000)), EPERM);
        assert_eq!(call(&bpf, "personality", arg0(8 | 1 << 32)), EPERM);
        // fork-like clone is fine; clone with CLONE_NEWUSER is not, nor
        // clone3, whose flags a filter cannot see.
        assert_eq!(call(&bpf, "clone", arg0(0x11)), RET_ALLOW);
        assert_eq!(call(&bpf, "clone", arg0(CLONE_NEWUSER | 0x11)), EPERM);
        assert_eq!(call(&bpf, "clone", arg0(0x2000_0000)), EPERM);
        assert_eq!(call(&bpf, "clone3", [0; 6]), ENOSYS);
        assert_eq!(call(&bpf, "socket", [2, 1, 0, 0, 0, 0]), RET_ALLOW);
        assert_eq!(call(&bpf, "socket", [1, 1, 0, 0, 0, 0]), RET_ALLOW);
        assert_eq!(
            call(&bpf, "socket", [AF_VSOCK, 1, 0, 0, 0, 0]),
            EAFNOSUPPORT
        );
    }

    #[test]
    fn capabilities_reopen_their_calls() {
        let admin = default_filters(caps::compute(None).unwrap() | caps::bit(caps::SYS_ADMIN));
        assert_eq!(call(&admin, "mount", [0; 6]), RET_ALLOW);
        assert_eq!(call(&admin, "fanotify_init", [0; 6]), RET_ALLOW);
        assert_eq!(call(&admin, "clone", arg0(CLONE_NEWUSER | 0x11)), RET_ALLOW);
        assert_eq!(call(&admin, "clone3", [0; 6]), RET_ALLOW);
        assert_eq!(call(&admin, "kexec_load", [0; 6]), EPERM);
        assert_eq!(call(&admin, "reboot", [0; 6]), EPERM);
        // The vsock guard does not yield to any capability.
        assert_eq!(
            call(&admin, "socket", [AF_VSOCK, 1, 0, 0, 0, 0]),
            EAFNOSUPPORT
        );

        // Each group: refused with no capabilities, allowed with its own.
        let none = default_filters(0);
        for (cap, calls) in BY_CAPABILITY {
            let one = default_filters(caps::bit(caps::parse(cap).unwrap()));
            for name in *calls {
                // Without the capability clone is still allowed to fork, and
                // clone3 answers ENOSYS so that libc uses clone.
                let (args, refused) = match *name {
                    "clone" => (arg0(CLONE_NEWUSER), EPERM),
                    "clone3" => ([0; 6], ENOSYS),
                    _ => ([0; 6], EPERM),
                };
                assert_eq!(call(&none, name, args), refused, "{name} without {cap}");
                assert_eq!(call(&one, name, args), RET_ALLOW, "{name} with {cap}");
            }
        }
    }

    #[test]
    fn comparisons_are_64_bit() {
        let nr = syscalls::number("write").unwrap();
        for (op, value, cases) in [
            (
                Op::Eq,
                5u64,
                vec![(5u64, true), (4, false), (5 | 1 << 32, false)],
            ),
            (Op::Ne, 5, vec![(5, false), (6, true), (5 | 1 << 40, true)]),
            (
                Op::Gt,
                1 << 32,
                vec![
                    (1 << 32, false),
                    ((1 << 32) + 1, true),
                    (7, false),
                    (2 << 32, true),
                ],
            ),
            (
                Op::Ge,
                1 << 32,
                vec![(1 << 32, true), ((1 << 32) - 1, false)],
            ),
            (
                Op::Lt,
                (1 << 32) + 5,
                vec![
                    (5, true),
                    ((1 << 32) + 4, true),
                    ((1 << 32) + 5, false),
                    (2 << 32, false),
                ],
            ),
            (
                Op::Le,
                10,
                vec![(10, true), (11, false), (0, true), (1 << 33, false)],
            ),
        ] {
            let rules = [Rule {
                nr,
                conds: vec![Cond::arg(2, op, value)],
                action: Action::Errno(1),
            }];
            let bpf = compile(&rules, Action::Allow).unwrap();
            for (arg, hit) in cases {
                let got = call(&bpf, "write", [0, 0, arg, 0, 0, 0]);
                assert_eq!(got == (RET_ERRNO | 1), hit, "{op:?} {value:#x} vs {arg:#x}");
            }
        }
        let rules = [Rule {
            nr,
            conds: vec![Cond {
                index: 0,
                op: Op::MaskedEq,
                value: 0xff << 32 | 0xf0,
                value_two: 0x10 << 32 | 0x20,
            }],
            action: Action::Errno(1),
        }];
        let bpf = compile(&rules, Action::Allow).unwrap();
        assert_eq!(
            call(&bpf, "write", [0x10 << 32 | 0x2f, 0, 0, 0, 0, 0]),
            RET_ERRNO | 1
        );
        assert_eq!(
            call(&bpf, "write", [0x11 << 32 | 0x2f, 0, 0, 0, 0, 0]),
            RET_ALLOW
        );
    }

    #[test]
    fn docker_style_profile() {
        let json = r#"{
            "defaultAction": "SCMP_ACT_ERRNO",
            "defaultErrnoRet": 38,
            "architectures": ["SCMP_ARCH_X86_64"],
            "archMap": [{"architecture": "SCMP_ARCH_X86_64", "subArchitectures": null}],
            "syscalls": [
                {"names": ["read", "write", "exit_group", "not_a_syscall"], "action": "SCMP_ACT_ALLOW"},
                {"name": "close", "action": "SCMP_ACT_ALLOW", "comment": "docker's single form"},
                {"names": ["personality"], "action": "SCMP_ACT_ALLOW",
                 "args": [{"index": 0, "value": 0, "op": "SCMP_CMP_EQ"},
                          {"index": 0, "value": 8, "op": "SCMP_CMP_EQ"}]},
                {"names": ["mount"], "action": "SCMP_ACT_ALLOW", "includes": {"caps": ["CAP_SYS_ADMIN"]}},
                {"names": ["umount2"], "action": "SCMP_ACT_ALLOW", "excludes": {"caps": ["CAP_SYS_ADMIN"]}},
                {"names": ["iopl"], "action": "SCMP_ACT_ALLOW", "includes": {"arches": ["s390x"]}},
                {"names": ["ptrace"], "action": "SCMP_ACT_ALLOW", "includes": {"minKernel": "4.8"}},
                {"names": ["getpid"], "action": "SCMP_ACT_ERRNO", "errnoRet": 1},
                {"names": ["uname"], "action": "SCMP_ACT_ERRNO"},
                {"names": ["kill"], "action": "SCMP_ACT_KILL_PROCESS",
                 "args": [{"index": 1, "value": 9, "op": "SCMP_CMP_EQ"}]},
                {"names": ["kill"], "action": "SCMP_ACT_ALLOW"}
            ]
        }"#;
        let caps_set = caps::compute(None).unwrap();
        let (rules, default) = parse_profile(json, caps_set).unwrap();
        assert_eq!(default, Action::Errno(38));
        let bpf = compile(&rules, default).unwrap();
        assert_eq!(call(&bpf, "read", [0; 6]), RET_ALLOW);
        assert_eq!(call(&bpf, "close", [0; 6]), RET_ALLOW);
        assert_eq!(call(&bpf, "openat", [0; 6]), RET_ERRNO | 38);
        assert_eq!(call(&bpf, "personality", arg0(8)), RET_ALLOW);
        assert_eq!(call(&bpf, "personality", arg0(9)), RET_ERRNO | 38);
        assert_eq!(call(&bpf, "mount", [0; 6]), RET_ERRNO | 38);
        assert_eq!(call(&bpf, "umount2", [0; 6]), RET_ALLOW);
        assert_eq!(call(&bpf, "iopl", [0; 6]), RET_ERRNO | 38);
        assert_eq!(call(&bpf, "ptrace", [0; 6]), RET_ALLOW);
        assert_eq!(call(&bpf, "getpid", [0; 6]), RET_ERRNO | 1);
        assert_eq!(call(&bpf, "uname", [0; 6]), EPERM);
        // Two rules match kill(_, 9): the stricter wins.
        assert_eq!(call(&bpf, "kill", [1, 15, 0, 0, 0, 0]), RET_ALLOW);
        assert_eq!(call(&bpf, "kill", [1, 9, 0, 0, 0, 0]), RET_KILL_PROCESS);

        let (rules, _) = parse_profile(json, caps_set | caps::bit(caps::SYS_ADMIN)).unwrap();
        let bpf = compile(&rules, default).unwrap();
        assert_eq!(call(&bpf, "mount", [0; 6]), RET_ALLOW);
        assert_eq!(call(&bpf, "umount2", [0; 6]), RET_ERRNO | 38);
    }

    #[test]
    fn profiles_keep_the_vsock_guard() {
        let s = Security {
            seccomp: Some(vmpod_agent_proto::v1::Seccomp {
                kind: seccomp::Kind::Profile as i32,
                profile_json: r#"{"defaultAction": "SCMP_ACT_ALLOW",
                    "syscalls": [{"names": ["socket"], "action": "SCMP_ACT_ALLOW"},
                                 {"names": ["kexec_load"], "action": "SCMP_ACT_ERRNO"}]}"#
                    .into(),
            }),
            ..Default::default()
        };
        let bpf = build(Some(&s), 0).unwrap();
        assert_eq!(
            call(&bpf, "socket", [AF_VSOCK, 1, 0, 0, 0, 0]),
            EAFNOSUPPORT
        );
        assert_eq!(call(&bpf, "socket", [2, 1, 0, 0, 0, 0]), RET_ALLOW);
        assert_eq!(call(&bpf, "kexec_load", [0; 6]), EPERM);
        assert_eq!(call(&bpf, "fanotify_init", [0; 6]), RET_ALLOW);
    }

    #[test]
    fn bad_profiles_name_the_field() {
        for (json, field) in [
            ("nope", "not JSON"),
            ("[]", "must be a JSON object"),
            ("{}", "defaultAction"),
            (r#"{"defaultAction": "SCMP_ACT_FLY"}"#, "defaultAction:"),
            (
                r#"{"defaultAction": "SCMP_ACT_ALLOW", "syscalls": [{"names": ["read"]}]}"#,
                "syscalls[0]: missing field `action`",
            ),
            (
                r#"{"defaultAction": "SCMP_ACT_ALLOW", "syscalls": {"names": ["read"]}}"#,
                "syscalls: must be a list",
            ),
            (
                r#"{"defaultAction": "SCMP_ACT_ALLOW", "syscalls": [{"names": ["read"], "action": "SCMP_ACT_ERRNO", "args": [{"index": 9, "value": 0, "op": "SCMP_CMP_EQ"}]}]}"#,
                "syscalls[0].args[0].index",
            ),
            (
                r#"{"defaultAction": "SCMP_ACT_ALLOW", "syscalls": [{"names": ["read"], "action": "SCMP_ACT_ERRNO", "errnoRet": 70000}]}"#,
                "syscalls[0]: errno 70000",
            ),
            (
                r#"{"defaultAction": "SCMP_ACT_ALLOW", "syscalls": [{"names": ["read"], "action": "SCMP_ACT_ALLOW", "includes": {"caps": "CAP_SYS_ADMIN"}}]}"#,
                "syscalls[0]:",
            ),
            (r#"{"defaultAction": "SCMP_ACT_NOTIFY"}"#, "defaultAction:"),
        ] {
            let e = parse_profile(json, 0).unwrap_err();
            assert_eq!(e.code(), tonic::Code::InvalidArgument);
            assert!(
                e.message().starts_with("security.seccomp.profile_json:"),
                "{}",
                e.message()
            );
            assert!(e.message().contains(field), "{json}: {}", e.message());
        }
    }

    #[test]
    fn privileged_and_unconfined_have_no_filter() {
        let s = Security {
            privileged: true,
            ..Default::default()
        };
        assert!(build(Some(&s), 0).unwrap().is_empty());
        let s = Security {
            seccomp: Some(vmpod_agent_proto::v1::Seccomp {
                kind: seccomp::Kind::Unconfined as i32,
                profile_json: String::new(),
            }),
            ..Default::default()
        };
        assert!(build(Some(&s), 0).unwrap().is_empty());
        assert!(!build(None, 0).unwrap().is_empty());
    }

    /// What the interpreter says, the kernel does: a forked child installs
    /// RuntimeDefault (as the helper does, after no_new_privs) and makes
    /// the calls. The child only makes raw system calls before `_exit`:
    /// the test process has other threads, so it must not allocate.
    #[test]
    fn runtime_default_holds_in_the_kernel() {
        let programs = default_filters(caps::compute(None).unwrap());
        let decoded: Vec<Vec<libc::sock_filter>> = programs
            .iter()
            .map(|p| {
                p.chunks_exact(8)
                    .map(|c| libc::sock_filter {
                        code: u16::from_le_bytes([c[0], c[1]]),
                        jt: c[2],
                        jf: c[3],
                        k: u32::from_le_bytes([c[4], c[5], c[6], c[7]]),
                    })
                    .collect()
            })
            .collect();
        let progs: Vec<libc::sock_fprog> = decoded
            .iter()
            .map(|d| libc::sock_fprog {
                len: d.len() as u16,
                filter: d.as_ptr() as *mut libc::sock_filter,
            })
            .collect();

        /// 0 when every call got what RuntimeDefault promises, else the
        /// number of the first that did not.
        unsafe fn child(progs: &[libc::sock_fprog]) -> i32 {
            // SAFETY (whole body): raw system calls with plain arguments
            // and pointers to live data.
            unsafe {
                if libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0 {
                    return 2;
                }
                for p in progs {
                    let p: *const libc::sock_fprog = p;
                    if libc::syscall(libc::SYS_seccomp, libc::SECCOMP_SET_MODE_FILTER, 0, p) != 0 {
                        return 3;
                    }
                }
                let errno = || *libc::__errno_location();
                let refused = |r: libc::c_long, e: i32| r == -1 && errno() == e;
                if libc::syscall(libc::SYS_getpid) <= 0 {
                    return 10;
                }
                if !refused(libc::syscall(libc::SYS_fanotify_init, 0, 0), libc::EPERM) {
                    return 11;
                }
                if !refused(
                    libc::syscall(libc::SYS_unshare, libc::CLONE_NEWUSER),
                    libc::EPERM,
                ) {
                    return 12;
                }
                if !refused(
                    libc::syscall(libc::SYS_clone3, std::ptr::null::<u8>(), 0),
                    libc::ENOSYS,
                ) {
                    return 13;
                }
                if !refused(
                    libc::syscall(libc::SYS_socket, libc::AF_VSOCK, libc::SOCK_STREAM, 0),
                    libc::EAFNOSUPPORT,
                ) {
                    return 14;
                }
                if libc::syscall(libc::SYS_socket, libc::AF_UNIX, libc::SOCK_STREAM, 0) < 0 {
                    return 15;
                }
                if libc::syscall(libc::SYS_personality, 0xffff_ffffu64) < 0 {
                    return 16;
                }
                if !refused(
                    libc::syscall(libc::SYS_personality, 0x0040_0000u64),
                    libc::EPERM,
                ) {
                    return 17;
                }
                0
            }
        }

        // SAFETY: the child runs only `child`, which makes raw system
        // calls, and leaves with _exit.
        let pid = unsafe { libc::fork() };
        assert!(pid >= 0, "fork: {}", io::Error::last_os_error());
        if pid == 0 {
            // SAFETY: see above.
            unsafe { libc::_exit(child(&progs)) };
        }
        let mut status = 0;
        // SAFETY: waits for our own child.
        let r = unsafe { libc::waitpid(pid, &mut status, 0) };
        assert_eq!(r, pid, "waitpid: {}", io::Error::last_os_error());
        assert!(libc::WIFEXITED(status), "child status {status:#x}");
        assert_eq!(libc::WEXITSTATUS(status), 0, "check that failed");
    }
}
