//! The last steps before a container process execs, shared by a
//! container's init and ExecSync: credentials, capabilities, seccomp,
//! working directory, executable lookup. Runs in the single-threaded
//! helper, never in the agent.

use std::ffi::CString;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use super::caps;
use super::plan::ProcessPlan;
use super::seccomp;

/// Why a process could not exec: the text StartContainer reports and the
/// exit code the container gets, as shells use them (127 not found, 126
/// found but not executable).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExecError {
    pub message: String,
    pub exit_code: i32,
}

/// The default PATH of containers, as Docker and containerd use it.
pub const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

fn env_path(env: &[String]) -> &str {
    env.iter()
        .rev()
        .find_map(|e| e.strip_prefix("PATH="))
        .unwrap_or(DEFAULT_PATH)
}

fn is_executable(path: &Path) -> io::Result<bool> {
    let meta = std::fs::metadata(path)?;
    if !meta.is_file() || meta.permissions().mode() & 0o111 == 0 {
        return Ok(false);
    }
    let c = CString::new(path.as_os_str().as_bytes())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "NUL in path"))?;
    // SAFETY: NUL-terminated path. access() checks with the real ids,
    // which are the container user's by now.
    Ok(unsafe { libc::access(c.as_ptr(), libc::X_OK) } == 0)
}

/// Finds `args[0]` like execvp(3) with the container's PATH, so a missing
/// binary is reported by name before the container is started.
pub fn lookup(arg0: &str, env: &[String]) -> Result<PathBuf, ExecError> {
    if arg0.contains('/') {
        let p = PathBuf::from(arg0);
        return match is_executable(&p) {
            Ok(true) => Ok(p),
            Ok(false) => Err(ExecError {
                message: format!("exec: {arg0:?}: permission denied"),
                exit_code: 126,
            }),
            Err(e) => Err(ExecError {
                message: format!("exec: {arg0:?}: stat {arg0}: {}", describe(&e)),
                exit_code: 127,
            }),
        };
    }
    let mut denied = false;
    for dir in env_path(env).split(':') {
        let dir = if dir.is_empty() { "." } else { dir };
        let candidate = Path::new(dir).join(arg0);
        match is_executable(&candidate) {
            Ok(true) => return Ok(candidate),
            Ok(false) => denied |= candidate.is_file(),
            Err(_) => {}
        }
    }
    if denied {
        return Err(ExecError {
            message: format!("exec: {arg0:?}: permission denied"),
            exit_code: 126,
        });
    }
    Err(ExecError {
        message: format!("exec: {arg0:?}: executable file not found in $PATH"),
        exit_code: 127,
    })
}

/// strerror-like text without the " (os error N)" suffix.
pub fn describe(e: &io::Error) -> String {
    let s = e.to_string();
    match s.find(" (os error") {
        Some(i) => s[..i].to_lowercase(),
        None => s,
    }
}

fn check(rc: libc::c_int, what: &str) -> io::Result<()> {
    if rc != 0 {
        let e = io::Error::last_os_error();
        return Err(io::Error::new(
            e.kind(),
            format!("{what}: {}", describe(&e)),
        ));
    }
    Ok(())
}

/// Switches to the plan's user with its capabilities, sets no_new_privs
/// and, where it must come before the capability drop, seccomp. Returns
/// whether seccomp is still to be installed (just before exec).
///
/// Order matters: the bounding set is cut while still root (needs
/// CAP_SETPCAP); KEEPCAPS keeps the permitted set across setuid so capset
/// can then set exactly the plan's set. Without no_new_privs, installing a
/// filter needs CAP_SYS_ADMIN, so it happens before the drop, as runc does.
pub fn switch_credentials(p: &ProcessPlan) -> io::Result<bool> {
    caps::drop_bounding(p.capabilities)
        .map_err(|e| io::Error::new(e.kind(), format!("dropping bounding capabilities: {e}")))?;
    let seccomp_later = p.no_new_privs;
    if !seccomp_later {
        seccomp::install(&p.seccomp_bpf)
            .map_err(|e| io::Error::new(e.kind(), format!("installing seccomp: {e}")))?;
    }
    // SAFETY: prctl/setgroups/setres[ug]id with plain arguments.
    unsafe {
        check(
            libc::prctl(libc::PR_SET_KEEPCAPS, 1, 0, 0, 0),
            "prctl(PR_SET_KEEPCAPS)",
        )?;
        let groups: Vec<libc::gid_t> = p.additional_gids.clone();
        check(libc::setgroups(groups.len(), groups.as_ptr()), "setgroups")?;
        check(
            libc::setresgid(p.gid, p.gid, p.gid),
            &format!("setgid({})", p.gid),
        )?;
        check(
            libc::setresuid(p.uid, p.uid, p.uid),
            &format!("setuid({})", p.uid),
        )?;
    }
    caps::set_process_caps(p.capabilities)
        .map_err(|e| io::Error::new(e.kind(), format!("setting capabilities: {e}")))?;
    // SAFETY: prctl with integer arguments.
    unsafe {
        check(
            libc::prctl(libc::PR_SET_KEEPCAPS, 0, 0, 0, 0),
            "prctl(PR_SET_KEEPCAPS)",
        )?;
        if p.no_new_privs {
            check(
                libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0),
                "prctl(PR_SET_NO_NEW_PRIVS)",
            )?;
        }
    }
    Ok(seccomp_later)
}

/// Changes to the plan's working directory, creating it (as root, before
/// the user switch) if it is missing, as runc does.
pub fn enter_cwd(cwd: &str, create: bool) -> io::Result<()> {
    let cwd = if cwd.is_empty() { "/" } else { cwd };
    if create && !Path::new(cwd).exists() {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o755)
            .create(cwd)
            .map_err(|e| {
                io::Error::new(e.kind(), format!("creating cwd {cwd}: {}", describe(&e)))
            })?;
    }
    std::env::set_current_dir(cwd)
        .map_err(|e| io::Error::new(e.kind(), format!("chdir to {cwd}: {}", describe(&e))))
}

use std::os::unix::fs::DirBuilderExt;

/// Marks every fd from 3 up close-on-exec, so nothing of the agent's or
/// the helper's leaks into the container.
pub fn cloexec_from_3() {
    // SAFETY: close_range with CLOSE_RANGE_CLOEXEC only sets flags.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_close_range,
            3u32,
            u32::MAX,
            libc::CLOSE_RANGE_CLOEXEC,
        )
    };
    if rc != 0 {
        // Older kernels: do it by hand for the usual range.
        for fd in 3..1024 {
            // SAFETY: fcntl on a possibly closed fd just fails.
            unsafe { libc::fcntl(fd, libc::F_SETFD, libc::FD_CLOEXEC) };
        }
    }
}

/// Puts every signal back to its default disposition and unblocks all.
///
/// Ignored signals stay ignored across execve, and the Rust runtime of
/// the helper ignores SIGPIPE: without this every container would run
/// with SIGPIPE ignored, and `producer | head` would not end the way
/// programs expect.
pub fn reset_signals() {
    /// The kernel's `struct sigaction` on x86_64 (glibc's differs, and
    /// glibc refuses to touch the two signals it reserves, 32 and 33,
    /// which an ancestor may have left ignored all the same).
    #[repr(C)]
    struct KernelSigaction {
        handler: usize,
        flags: u64,
        restorer: usize,
        mask: u64,
    }
    let dfl = KernelSigaction {
        handler: libc::SIG_DFL,
        flags: 0,
        restorer: 0,
        mask: 0,
    };
    for sig in 1..=64 {
        if sig == libc::SIGKILL || sig == libc::SIGSTOP {
            continue;
        }
        // SAFETY: rt_sigaction with a valid struct and an 8-byte sigset;
        // numbers the kernel rejects just fail.
        unsafe {
            libc::syscall(
                libc::SYS_rt_sigaction,
                sig,
                &dfl as *const KernelSigaction,
                std::ptr::null_mut::<KernelSigaction>(),
                8usize,
            )
        };
    }
    // SAFETY: an empty, initialised set.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigprocmask(libc::SIG_SETMASK, &set, std::ptr::null_mut());
    }
}

/// execve(2) of the resolved binary; returns only on failure.
pub fn exec(path: &Path, p: &ProcessPlan) -> ExecError {
    let to_c = |s: &str| CString::new(s).unwrap_or_default();
    let Ok(cpath) = CString::new(path.as_os_str().as_bytes()) else {
        return ExecError {
            message: "exec: path holds NUL".into(),
            exit_code: 127,
        };
    };
    let argv: Vec<CString> = p.args.iter().map(|a| to_c(a)).collect();
    let envp: Vec<CString> = p.env.iter().map(|e| to_c(e)).collect();
    let mut argv_p: Vec<*const libc::c_char> = argv.iter().map(|a| a.as_ptr()).collect();
    argv_p.push(std::ptr::null());
    let mut envp_p: Vec<*const libc::c_char> = envp.iter().map(|e| e.as_ptr()).collect();
    envp_p.push(std::ptr::null());
    // SAFETY: NULL-terminated arrays of NUL-terminated strings that live
    // across the call.
    unsafe { libc::execve(cpath.as_ptr(), argv_p.as_ptr(), envp_p.as_ptr()) };
    let e = io::Error::last_os_error();
    ExecError {
        message: format!("exec: {:?}: {}", p.args[0], describe(&e)),
        exit_code: if e.raw_os_error() == Some(libc::ENOENT) {
            127
        } else {
            126
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lookup_uses_the_container_path() {
        let env = vec!["PATH=/nonexistent:/bin:/usr/bin".to_string()];
        assert!(lookup("sh", &env).unwrap().ends_with("sh"));
        let e = lookup("no-such-binary-here", &env).unwrap_err();
        assert_eq!(
            e.message,
            "exec: \"no-such-binary-here\": executable file not found in $PATH"
        );
        assert_eq!(e.exit_code, 127);
        let e = lookup("/no/such", &env).unwrap_err();
        assert_eq!(e.exit_code, 127);
        assert!(e.message.contains("no such file"), "{}", e.message);
        let e = lookup("/etc/passwd", &env).unwrap_err();
        assert_eq!(e.exit_code, 126);
    }
}
