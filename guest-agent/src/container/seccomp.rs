//! Seccomp filters: the built-in RuntimeDefault profile, OCI/Docker JSON
//! profiles, and a small compiler to classic BPF.
//!
//! RuntimeDefault allows by default and returns EPERM for what Docker's
//! default profile withholds from an unprivileged container (kernel
//! modules, kexec, keyrings, ptrace and process_vm_*, mount and namespace
//! calls, clock setting, BPF, perf, userfaultfd, io_uring, ...). As in
//! Docker, a capability the container was given re-allows the calls it
//! guards (CAP_SYS_ADMIN: mount, unshare, setns, ...). It also refuses
//! AF_VSOCK sockets: inside a vmpod guest vsock is the agent's own channel
//! to the host and no business of a container.
//!
//! Filters are compiled here rather than with libseccomp, which would need
//! a C library in the static agent. The program checks the architecture
//! (anything but x86_64, and x32 numbers, get ENOSYS), then tests rules in
//! order, first match wins: conditional rules of a profile before
//! unconditional ones, which is how libseccomp's per-syscall rules behave.

use std::io;

use serde_json::Value;
use tonic::Status;
use vmpod_agent_proto::v1::{Security, seccomp};

use super::caps;
use super::syscalls;

const AUDIT_ARCH_X86_64: u32 = 0xC000_003E;
const X32_SYSCALL_BIT: u32 = 0x4000_0000;
/// BPF_MAXINSNS.
const MAX_INSNS: usize = 4096;

const RET_KILL_PROCESS: u32 = 0x8000_0000;
const RET_KILL_THREAD: u32 = 0;
const RET_TRAP: u32 = 0x0003_0000;
const RET_ERRNO: u32 = 0x0005_0000;
const RET_TRACE: u32 = 0x7ff0_0000;
const RET_LOG: u32 = 0x7ffc_0000;
const RET_ALLOW: u32 = 0x7fff_0000;

const LD_W_ABS: u16 = 0x20;
const JMP_JEQ_K: u16 = 0x15;
const JMP_JGT_K: u16 = 0x25;
const JMP_JGE_K: u16 = 0x35;
const ALU_AND_K: u16 = 0x54;
const RET_K: u16 = 0x06;

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

impl Action {
    fn ret(self) -> u32 {
        match self {
            Action::Allow => RET_ALLOW,
            Action::Errno(e) => RET_ERRNO | u32::from(e),
            Action::KillThread => RET_KILL_THREAD,
            Action::KillProcess => RET_KILL_PROCESS,
            Action::Trap => RET_TRAP,
            Action::Trace(d) => RET_TRACE | u32::from(d),
            Action::Log => RET_LOG,
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

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rule {
    pub nr: u32,
    /// All must hold.
    pub conds: Vec<Cond>,
    pub action: Action,
}

#[derive(Clone, Copy)]
enum Target {
    Next,
    Label(usize),
}

struct Insn {
    code: u16,
    jt: Target,
    jf: Target,
    k: u32,
}

/// A tiny assembler with forward labels.
#[derive(Default)]
struct Asm {
    insns: Vec<Insn>,
    labels: Vec<Option<usize>>,
}

impl Asm {
    fn label(&mut self) -> usize {
        self.labels.push(None);
        self.labels.len() - 1
    }
    fn bind(&mut self, label: usize) {
        self.labels[label] = Some(self.insns.len());
    }
    fn stmt(&mut self, code: u16, k: u32) {
        self.insns.push(Insn {
            code,
            jt: Target::Next,
            jf: Target::Next,
            k,
        });
    }
    fn jump(&mut self, code: u16, k: u32, jt: Target, jf: Target) {
        self.insns.push(Insn { code, jt, jf, k });
    }
    fn ret(&mut self, k: u32) {
        self.stmt(RET_K, k);
    }
    fn finish(self) -> Result<Vec<u8>, String> {
        if self.insns.len() > MAX_INSNS {
            return Err(format!(
                "the filter needs {} instructions, more than the kernel's {MAX_INSNS}",
                self.insns.len()
            ));
        }
        let mut out = Vec::with_capacity(self.insns.len() * 8);
        for (i, insn) in self.insns.iter().enumerate() {
            let off = |t: Target| -> Result<u8, String> {
                match t {
                    Target::Next => Ok(0),
                    Target::Label(l) => {
                        let pos = self.labels[l].ok_or("unbound label")?;
                        let d = pos
                            .checked_sub(i + 1)
                            .ok_or("backward jump in seccomp program")?;
                        u8::try_from(d).map_err(|_| "seccomp jump too far".to_string())
                    }
                }
            };
            out.extend_from_slice(&insn.code.to_le_bytes());
            out.push(off(insn.jt)?);
            out.push(off(insn.jf)?);
            out.extend_from_slice(&insn.k.to_le_bytes());
        }
        Ok(out)
    }
}

fn arg_lo(index: u8) -> u32 {
    16 + 8 * u32::from(index)
}

fn emit_cond(asm: &mut Asm, c: &Cond, fail: Target) {
    use Target::{Label, Next};
    let pass = asm.label();
    let pass_t = Label(pass);
    let (lo_off, hi_off) = (arg_lo(c.index), arg_lo(c.index) + 4);
    let (vh, vl) = ((c.value >> 32) as u32, c.value as u32);
    match c.op {
        Op::Eq => {
            asm.stmt(LD_W_ABS, hi_off);
            asm.jump(JMP_JEQ_K, vh, Next, fail);
            asm.stmt(LD_W_ABS, lo_off);
            asm.jump(JMP_JEQ_K, vl, pass_t, fail);
        }
        Op::Ne => {
            asm.stmt(LD_W_ABS, hi_off);
            asm.jump(JMP_JEQ_K, vh, Next, pass_t);
            asm.stmt(LD_W_ABS, lo_off);
            asm.jump(JMP_JEQ_K, vl, fail, pass_t);
        }
        Op::MaskedEq => {
            let (dh, dl) = ((c.value_two >> 32) as u32, c.value_two as u32);
            asm.stmt(LD_W_ABS, hi_off);
            asm.stmt(ALU_AND_K, vh);
            asm.jump(JMP_JEQ_K, dh, Next, fail);
            asm.stmt(LD_W_ABS, lo_off);
            asm.stmt(ALU_AND_K, vl);
            asm.jump(JMP_JEQ_K, dl, pass_t, fail);
        }
        Op::Gt | Op::Ge => {
            asm.stmt(LD_W_ABS, hi_off);
            asm.jump(JMP_JGT_K, vh, pass_t, Next);
            asm.jump(JMP_JEQ_K, vh, Next, fail);
            asm.stmt(LD_W_ABS, lo_off);
            let code = if c.op == Op::Gt { JMP_JGT_K } else { JMP_JGE_K };
            asm.jump(code, vl, pass_t, fail);
        }
        Op::Lt | Op::Le => {
            asm.stmt(LD_W_ABS, hi_off);
            asm.jump(JMP_JGT_K, vh, fail, Next);
            asm.jump(JMP_JEQ_K, vh, Next, pass_t);
            asm.stmt(LD_W_ABS, lo_off);
            // a < v  <=> !(a >= v);  a <= v  <=> !(a > v)
            let code = if c.op == Op::Lt { JMP_JGE_K } else { JMP_JGT_K };
            asm.jump(code, vl, fail, pass_t);
        }
    }
    asm.bind(pass);
}

/// Compiles rules (first match wins) and a default action to BPF bytes
/// (`struct sock_filter` array, 8 bytes each).
pub fn compile(rules: &[Rule], default: Action) -> Result<Vec<u8>, String> {
    use Target::{Label, Next};
    let mut asm = Asm::default();
    let bad_arch = Action::Errno(libc::ENOSYS as u16).ret();
    let arch_ok = asm.label();
    asm.stmt(LD_W_ABS, 4);
    asm.jump(JMP_JEQ_K, AUDIT_ARCH_X86_64, Label(arch_ok), Next);
    asm.ret(bad_arch);
    asm.bind(arch_ok);
    let not_x32 = asm.label();
    asm.stmt(LD_W_ABS, 0);
    asm.jump(JMP_JGE_K, X32_SYSCALL_BIT, Next, Label(not_x32));
    asm.ret(bad_arch);
    asm.bind(not_x32);
    let mut a_is_nr = true;
    for rule in rules {
        let next = asm.label();
        if !a_is_nr {
            asm.stmt(LD_W_ABS, 0);
        }
        asm.jump(JMP_JEQ_K, rule.nr, Next, Label(next));
        for c in &rule.conds {
            emit_cond(&mut asm, c, Label(next));
        }
        asm.ret(rule.action.ret());
        asm.bind(next);
        a_is_nr = rule.conds.is_empty();
    }
    asm.ret(default.ret());
    asm.finish()
}

/// Calls the default profile blocks, and the capability that re-allows
/// each (None: always blocked).
const BLOCKED: &[(&str, Option<&str>)] = &[
    ("acct", Some("SYS_PACCT")),
    ("add_key", None),
    ("bpf", Some("SYS_ADMIN")),
    ("clock_adjtime", Some("SYS_TIME")),
    ("clock_settime", Some("SYS_TIME")),
    ("create_module", None),
    ("delete_module", Some("SYS_MODULE")),
    ("finit_module", Some("SYS_MODULE")),
    ("fsconfig", Some("SYS_ADMIN")),
    ("fsmount", Some("SYS_ADMIN")),
    ("fsopen", Some("SYS_ADMIN")),
    ("fspick", Some("SYS_ADMIN")),
    ("get_kernel_syms", None),
    ("get_mempolicy", Some("SYS_NICE")),
    ("init_module", Some("SYS_MODULE")),
    ("io_uring_enter", None),
    ("io_uring_register", None),
    ("io_uring_setup", None),
    ("ioperm", Some("SYS_RAWIO")),
    ("iopl", Some("SYS_RAWIO")),
    ("kcmp", Some("SYS_PTRACE")),
    ("kexec_file_load", None),
    ("kexec_load", None),
    ("keyctl", None),
    ("lookup_dcookie", Some("SYS_ADMIN")),
    ("mbind", Some("SYS_NICE")),
    ("mount", Some("SYS_ADMIN")),
    ("mount_setattr", Some("SYS_ADMIN")),
    ("move_mount", Some("SYS_ADMIN")),
    ("move_pages", Some("SYS_NICE")),
    ("name_to_handle_at", Some("SYS_ADMIN")),
    ("nfsservctl", None),
    ("open_by_handle_at", Some("DAC_READ_SEARCH")),
    ("open_tree", Some("SYS_ADMIN")),
    ("perf_event_open", Some("SYS_ADMIN")),
    ("pidfd_getfd", Some("SYS_PTRACE")),
    ("pivot_root", Some("SYS_ADMIN")),
    ("process_madvise", Some("SYS_PTRACE")),
    ("process_vm_readv", Some("SYS_PTRACE")),
    ("process_vm_writev", Some("SYS_PTRACE")),
    ("ptrace", Some("SYS_PTRACE")),
    ("query_module", None),
    ("quotactl", Some("SYS_ADMIN")),
    ("quotactl_fd", Some("SYS_ADMIN")),
    ("reboot", Some("SYS_BOOT")),
    ("request_key", None),
    ("set_mempolicy", Some("SYS_NICE")),
    ("setns", Some("SYS_ADMIN")),
    ("settimeofday", Some("SYS_TIME")),
    ("stime", Some("SYS_TIME")),
    ("swapoff", None),
    ("swapon", None),
    ("syslog", Some("SYSLOG")),
    ("sysfs", None),
    ("_sysctl", None),
    ("umount", Some("SYS_ADMIN")),
    ("umount2", Some("SYS_ADMIN")),
    ("unshare", Some("SYS_ADMIN")),
    ("uselib", None),
    ("userfaultfd", None),
    ("ustat", None),
    ("vm86", None),
    ("vm86old", None),
];

/// personality(2) values Docker allows: PER_LINUX, PER_LINUX32,
/// UNAME26 variants and the 0xffffffff query.
const PERSONALITIES: &[u64] = &[0x0, 0x8, 0x20000, 0x20008, 0xffff_ffff];

/// clone(2) flags that make namespaces.
const CLONE_NS_FLAGS: u64 = 0x7E02_0000;

const AF_VSOCK: u64 = 40;

fn has(caps_set: u64, name: &str) -> bool {
    caps::parse(name).is_some_and(|c| caps_set & caps::bit(c) != 0)
}

/// The RuntimeDefault rules for a container with capability set `caps_set`.
pub fn runtime_default(caps_set: u64) -> Vec<Rule> {
    let eperm = Action::Errno(libc::EPERM as u16);
    let nr = |name: &str| syscalls::number(name);
    let mut rules = Vec::new();
    if let Some(n) = nr("personality") {
        for &v in PERSONALITIES {
            rules.push(Rule {
                nr: n,
                conds: vec![Cond {
                    index: 0,
                    op: Op::Eq,
                    value: v,
                    value_two: 0,
                }],
                action: Action::Allow,
            });
        }
        rules.push(Rule {
            nr: n,
            conds: vec![],
            action: eperm,
        });
    }
    if !has(caps_set, "SYS_ADMIN") {
        if let Some(n) = nr("clone") {
            rules.push(Rule {
                nr: n,
                conds: vec![Cond {
                    index: 0,
                    op: Op::MaskedEq,
                    value: CLONE_NS_FLAGS,
                    value_two: 0,
                }],
                action: Action::Allow,
            });
            rules.push(Rule {
                nr: n,
                conds: vec![],
                action: eperm,
            });
        }
        // ENOSYS, so libc falls back to clone(2), whose flags we can see.
        if let Some(n) = nr("clone3") {
            rules.push(Rule {
                nr: n,
                conds: vec![],
                action: Action::Errno(libc::ENOSYS as u16),
            });
        }
    }
    if let Some(n) = nr("socket") {
        rules.push(Rule {
            nr: n,
            conds: vec![Cond {
                index: 0,
                op: Op::Eq,
                value: AF_VSOCK,
                value_two: 0,
            }],
            action: Action::Errno(libc::EAFNOSUPPORT as u16),
        });
    }
    for (name, cap) in BLOCKED {
        if cap.is_some_and(|c| has(caps_set, c)) {
            continue;
        }
        // BPF and perf also have capabilities of their own now.
        if (*name == "bpf" && has(caps_set, "BPF"))
            || (*name == "perf_event_open" && has(caps_set, "PERFMON"))
            || (*name == "syslog" && has(caps_set, "SYS_ADMIN"))
        {
            continue;
        }
        if let Some(n) = nr(name) {
            rules.push(Rule {
                nr: n,
                conds: vec![],
                action: eperm,
            });
        }
    }
    rules
}

fn invalid(why: impl std::fmt::Display) -> Status {
    Status::invalid_argument(format!("security.seccomp.profile_json: {why}"))
}

fn parse_action(name: &str, errno: Option<u64>) -> Result<Action, Status> {
    let errno16 = |e: Option<u64>| -> Result<u16, Status> {
        let e = e.unwrap_or(libc::EPERM as u64);
        u16::try_from(e).map_err(|_| invalid(format!("errnoRet {e} is out of range")))
    };
    Ok(match name {
        "SCMP_ACT_ALLOW" => Action::Allow,
        "SCMP_ACT_ERRNO" => Action::Errno(errno16(errno)?),
        "SCMP_ACT_KILL" | "SCMP_ACT_KILL_THREAD" => Action::KillThread,
        "SCMP_ACT_KILL_PROCESS" => Action::KillProcess,
        "SCMP_ACT_TRAP" => Action::Trap,
        "SCMP_ACT_TRACE" => Action::Trace(errno16(errno)?),
        "SCMP_ACT_LOG" => Action::Log,
        "SCMP_ACT_NOTIFY" => return Err(invalid("SCMP_ACT_NOTIFY is not supported")),
        other => return Err(invalid(format!("unknown action {other:?}"))),
    })
}

fn parse_op(name: &str) -> Result<Op, Status> {
    Ok(match name {
        "SCMP_CMP_EQ" => Op::Eq,
        "SCMP_CMP_NE" => Op::Ne,
        "SCMP_CMP_LT" => Op::Lt,
        "SCMP_CMP_LE" => Op::Le,
        "SCMP_CMP_GT" => Op::Gt,
        "SCMP_CMP_GE" => Op::Ge,
        "SCMP_CMP_MASKED_EQ" => Op::MaskedEq,
        other => return Err(invalid(format!("unknown operator {other:?}"))),
    })
}

fn is_our_arch(name: &str) -> bool {
    matches!(name, "amd64" | "x86_64" | "SCMP_ARCH_X86_64" | "x86-64")
}

/// Docker-format `includes` / `excludes`: capability and architecture
/// filters on a syscall group. `minKernel` is ignored (the guest kernel
/// is recent).
fn filter_applies(entry: &Value, caps_set: u64) -> bool {
    let list = |v: Option<&Value>, key: &str| -> Vec<String> {
        v.and_then(|o| o.get(key))
            .and_then(Value::as_array)
            .map(|a| {
                a.iter()
                    .filter_map(|s| s.as_str().map(String::from))
                    .collect()
            })
            .unwrap_or_default()
    };
    let inc = entry.get("includes");
    let exc = entry.get("excludes");
    let inc_caps = list(inc, "caps");
    let inc_arches = list(inc, "arches");
    let exc_caps = list(exc, "caps");
    let exc_arches = list(exc, "arches");
    let has_cap = |n: &String| has(caps_set, n);
    (inc_caps.is_empty() || inc_caps.iter().all(has_cap))
        && (inc_arches.is_empty() || inc_arches.iter().any(|a| is_our_arch(a)))
        && !exc_caps.iter().any(has_cap)
        && !exc_arches.iter().any(|a| is_our_arch(a))
}

/// Parses an OCI (`linux.seccomp`) or Docker profile.
pub fn parse_profile(json: &str, caps_set: u64) -> Result<(Vec<Rule>, Action), Status> {
    let v: Value = serde_json::from_str(json).map_err(|e| invalid(format!("not JSON: {e}")))?;
    let default_name = v
        .get("defaultAction")
        .and_then(Value::as_str)
        .ok_or_else(|| invalid("defaultAction is missing"))?;
    let default_errno = v.get("defaultErrnoRet").and_then(Value::as_u64);
    let default = parse_action(default_name, default_errno)?;
    let mut conditional = Vec::new();
    let mut unconditional = Vec::new();
    let entries = match v.get("syscalls") {
        None | Some(Value::Null) => &Vec::new(),
        Some(Value::Array(a)) => a,
        Some(_) => return Err(invalid("syscalls must be a list")),
    };
    for (i, entry) in entries.iter().enumerate() {
        if !filter_applies(entry, caps_set) {
            continue;
        }
        let mut names: Vec<&str> = entry
            .get("names")
            .and_then(Value::as_array)
            .map(|a| a.iter().filter_map(Value::as_str).collect())
            .unwrap_or_default();
        if let Some(n) = entry.get("name").and_then(Value::as_str) {
            names.push(n);
        }
        let action_name = entry
            .get("action")
            .and_then(Value::as_str)
            .ok_or_else(|| invalid(format!("syscalls[{i}].action is missing")))?;
        let errno = entry.get("errnoRet").and_then(Value::as_u64);
        let action = parse_action(action_name, errno)?;
        let mut conds = Vec::new();
        if let Some(args) = entry.get("args").and_then(Value::as_array) {
            for (j, a) in args.iter().enumerate() {
                let index = a
                    .get("index")
                    .and_then(Value::as_u64)
                    .filter(|i| *i < 6)
                    .ok_or_else(|| invalid(format!("syscalls[{i}].args[{j}].index must be 0-5")))?;
                let op = parse_op(a.get("op").and_then(Value::as_str).unwrap_or(""))?;
                conds.push(Cond {
                    index: index as u8,
                    op,
                    value: a.get("value").and_then(Value::as_u64).unwrap_or(0),
                    value_two: a.get("valueTwo").and_then(Value::as_u64).unwrap_or(0),
                });
            }
        }
        // A rule that does what the default does changes nothing (runc
        // skips them too), and would only cost instructions.
        if action == default {
            continue;
        }
        // Several conditions on one argument are alternatives (runc and
        // libseccomp treat them so); on different arguments, all must hold.
        let alternatives = conds.len() > 1 && conds.iter().all(|c| c.index == conds[0].index);
        for name in names {
            let Some(nr) = syscalls::number(name) else {
                continue;
            };
            if conds.is_empty() {
                unconditional.push(Rule {
                    nr,
                    conds: vec![],
                    action,
                });
            } else if alternatives {
                for c in &conds {
                    conditional.push(Rule {
                        nr,
                        conds: vec![*c],
                        action,
                    });
                }
            } else {
                conditional.push(Rule {
                    nr,
                    conds: conds.clone(),
                    action,
                });
            }
        }
    }
    conditional.extend(unconditional);
    Ok((conditional, default))
}

/// The compiled filter for a container, or an empty vector when it runs
/// unconfined (privileged containers always do).
pub fn build(security: Option<&Security>, caps_set: u64) -> Result<Vec<u8>, Status> {
    let sc = security.and_then(|s| s.seccomp.clone()).unwrap_or_default();
    if security.is_some_and(|s| s.privileged) {
        return Ok(Vec::new());
    }
    let kind = seccomp::Kind::try_from(sc.kind).unwrap_or(seccomp::Kind::RuntimeDefault);
    let (rules, default) = match kind {
        seccomp::Kind::Unconfined => return Ok(Vec::new()),
        seccomp::Kind::RuntimeDefault => (runtime_default(caps_set), Action::Allow),
        seccomp::Kind::Profile => parse_profile(&sc.profile_json, caps_set)?,
    };
    compile(&rules, default).map_err(invalid)
}

/// Installs a compiled filter on the calling thread. Without
/// no_new_privs this needs CAP_SYS_ADMIN in the effective set.
pub fn install(bpf: &[u8]) -> io::Result<()> {
    if bpf.is_empty() {
        return Ok(());
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

    /// A classic-BPF interpreter for the subset we emit, to test programs
    /// without installing them.
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
                LD_W_ABS => {
                    let k = k as usize;
                    a = u32::from_le_bytes(data[k..k + 4].try_into().unwrap());
                }
                ALU_AND_K => a &= k,
                RET_K => return k,
                JMP_JEQ_K | JMP_JGT_K | JMP_JGE_K => {
                    let t = match code {
                        JMP_JEQ_K => a == k,
                        JMP_JGT_K => a > k,
                        _ => a >= k,
                    };
                    pc += usize::from(if t { jt } else { jf });
                }
                other => panic!("unexpected opcode {other:#x}"),
            }
        }
    }

    fn call(bpf: &[u8], name: &str, args: [u64; 6]) -> u32 {
        run(
            bpf,
            syscalls::number(name).unwrap(),
            AUDIT_ARCH_X86_64,
            args,
        )
    }

    const EPERM: u32 = RET_ERRNO | libc::EPERM as u32;

    #[test]
    fn runtime_default_blocks_and_allows() {
        let caps_set = caps::compute(None).unwrap();
        let bpf = compile(&runtime_default(caps_set), Action::Allow).unwrap();
        assert_eq!(call(&bpf, "read", [0; 6]), RET_ALLOW);
        assert_eq!(call(&bpf, "kexec_load", [0; 6]), EPERM);
        assert_eq!(call(&bpf, "mount", [0; 6]), EPERM);
        assert_eq!(call(&bpf, "unshare", [0; 6]), EPERM);
        assert_eq!(call(&bpf, "personality", [0; 6]), RET_ALLOW);
        assert_eq!(
            call(&bpf, "personality", [0xffff_ffff, 0, 0, 0, 0, 0]),
            RET_ALLOW
        );
        assert_eq!(
            call(&bpf, "personality", [0x0040_0000, 0, 0, 0, 0, 0]),
            EPERM
        );
        // fork-like clone is fine; clone with CLONE_NEWUSER is not.
        assert_eq!(call(&bpf, "clone", [0x11, 0, 0, 0, 0, 0]), RET_ALLOW);
        assert_eq!(call(&bpf, "clone", [0x1000_0011, 0, 0, 0, 0, 0]), EPERM);
        assert_eq!(
            call(&bpf, "clone3", [0; 6]),
            RET_ERRNO | libc::ENOSYS as u32
        );
        assert_eq!(call(&bpf, "socket", [2, 1, 0, 0, 0, 0]), RET_ALLOW);
        assert_eq!(
            call(&bpf, "socket", [AF_VSOCK, 1, 0, 0, 0, 0]),
            RET_ERRNO | libc::EAFNOSUPPORT as u32
        );
        // Wrong architecture and x32 numbers.
        assert_eq!(
            run(&bpf, 0, 0x4000_0003, [0; 6]),
            RET_ERRNO | libc::ENOSYS as u32
        );
        assert_eq!(
            run(&bpf, X32_SYSCALL_BIT | 246, AUDIT_ARCH_X86_64, [0; 6]),
            RET_ERRNO | libc::ENOSYS as u32
        );
    }

    #[test]
    fn capabilities_relax_the_default() {
        let caps_set = caps::compute(None).unwrap() | caps::bit(caps::SYS_ADMIN);
        let bpf = compile(&runtime_default(caps_set), Action::Allow).unwrap();
        assert_eq!(call(&bpf, "mount", [0; 6]), RET_ALLOW);
        assert_eq!(call(&bpf, "clone", [0x1000_0011, 0, 0, 0, 0, 0]), RET_ALLOW);
        assert_eq!(call(&bpf, "kexec_load", [0; 6]), EPERM);
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
                conds: vec![Cond {
                    index: 2,
                    op,
                    value,
                    value_two: 0,
                }],
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
            "syscalls": [
                {"names": ["read", "write", "exit_group", "not_a_syscall"], "action": "SCMP_ACT_ALLOW"},
                {"names": ["personality"], "action": "SCMP_ACT_ALLOW",
                 "args": [{"index": 0, "value": 0, "op": "SCMP_CMP_EQ"},
                          {"index": 0, "value": 8, "op": "SCMP_CMP_EQ"}]},
                {"names": ["mount"], "action": "SCMP_ACT_ALLOW", "includes": {"caps": ["CAP_SYS_ADMIN"]}},
                {"names": ["getpid"], "action": "SCMP_ACT_ERRNO", "errnoRet": 1},
                {"names": ["uname"], "action": "SCMP_ACT_ERRNO"}
            ]
        }"#;
        let caps_set = caps::compute(None).unwrap();
        let (rules, default) = parse_profile(json, caps_set).unwrap();
        assert_eq!(default, Action::Errno(38));
        let bpf = compile(&rules, default).unwrap();
        assert_eq!(call(&bpf, "read", [0; 6]), RET_ALLOW);
        assert_eq!(call(&bpf, "openat", [0; 6]), RET_ERRNO | 38);
        assert_eq!(call(&bpf, "personality", [8, 0, 0, 0, 0, 0]), RET_ALLOW);
        assert_eq!(
            call(&bpf, "personality", [9, 0, 0, 0, 0, 0]),
            RET_ERRNO | 38
        );
        assert_eq!(call(&bpf, "mount", [0; 6]), RET_ERRNO | 38);
        assert_eq!(call(&bpf, "getpid", [0; 6]), RET_ERRNO | 1);
        assert_eq!(call(&bpf, "uname", [0; 6]), EPERM);

        let (rules, _) = parse_profile(json, caps_set | caps::bit(caps::SYS_ADMIN)).unwrap();
        let bpf = compile(&rules, default).unwrap();
        assert_eq!(call(&bpf, "mount", [0; 6]), RET_ALLOW);
    }

    #[test]
    fn bad_profiles_name_the_field() {
        for json in [
            "nope",
            "{}",
            r#"{"defaultAction": "SCMP_ACT_FLY"}"#,
            r#"{"defaultAction": "SCMP_ACT_ALLOW", "syscalls": [{"names": ["read"]}]}"#,
            r#"{"defaultAction": "SCMP_ACT_ALLOW", "syscalls": [{"names": ["read"], "action": "SCMP_ACT_ERRNO", "args": [{"index": 9, "op": "SCMP_CMP_EQ"}]}]}"#,
            r#"{"defaultAction": "SCMP_ACT_NOTIFY"}"#,
        ] {
            let e = parse_profile(json, 0).unwrap_err();
            assert_eq!(e.code(), tonic::Code::InvalidArgument);
            assert!(
                e.message().starts_with("security.seccomp.profile_json:"),
                "{}",
                e.message()
            );
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
}
