//! The host checks behind `vmpod check` and the CRI `Status` conditions.
//!
//! Every check yields pass, warn or fail with a one-line reason. A failed
//! check that a pod needs makes the host unable to run pods; warnings name
//! degraded but working set-ups (TCG instead of KVM, no CNI yet).

use std::fmt;
use std::path::Path;
use std::time::Duration;

use serde::Serialize;

use super::backend::{self, Accel, Backend, Decision, VirtFacts};
use super::vsock::VsockBackend;
use super::{CgroupLayout, guest_image, which};
use crate::config::{Config, Program};
use crate::network::{cni, plugin};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Verdict {
    Pass,
    Warn,
    Fail,
}

impl fmt::Display for Verdict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Verdict::Pass => "pass",
            Verdict::Warn => "warn",
            Verdict::Fail => "fail",
        })
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct Check {
    pub name: &'static str,
    pub verdict: Verdict,
    pub reason: String,
}

/// How much work a check run may do. `Status` is polled by kubelet every few
/// seconds, so it skips running helper programs for their versions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Depth {
    Quick,
    Full,
}

#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub checks: Vec<Check>,
    pub backend: Result<Decision, String>,
    /// The pod network, or why there is none.
    pub network: Result<cni::Network, String>,
    pub kernel_version: Result<String, String>,
}

impl Report {
    /// A pod can run when the backend resolved and no check failed.
    pub fn pods_can_run(&self) -> bool {
        self.backend.is_ok() && self.checks.iter().all(|c| c.verdict != Verdict::Fail)
    }

    /// Why pods cannot run: the failed checks, joined.
    pub fn blockers(&self) -> Vec<String> {
        let mut out: Vec<String> = self
            .checks
            .iter()
            .filter(|c| c.verdict == Verdict::Fail)
            .map(|c| format!("{}: {}", c.name, c.reason))
            .collect();
        if let Err(e) = &self.backend {
            out.push(format!("backend: {e}"));
        }
        out
    }
}

fn check(name: &'static str, verdict: Verdict, reason: impl Into<String>) -> Check {
    Check {
        name,
        verdict,
        reason: reason.into(),
    }
}

/// Runs every host check against `config`.
pub fn run(config: &Config, depth: Depth) -> Report {
    let facts = VirtFacts::probe();
    let decision = backend::choose(config.vm.backend, &facts);
    let uses_qemu = matches!(
        decision,
        Ok(Decision {
            backend: Backend::Qemu { .. },
            ..
        }) | Err(_)
    );
    let mut checks = Vec::new();

    checks.push(match &facts.kvm {
        Ok(v) => check(
            "/dev/kvm",
            Verdict::Pass,
            format!("usable, KVM API version {v}"),
        ),
        Err(e) => check(
            "/dev/kvm",
            Verdict::Warn,
            format!("{e}; VMs fall back to TCG"),
        ),
    });
    checks.push(if facts.hw_virt {
        check("hardware virtualization", Verdict::Pass, "CPU has vmx/svm")
    } else {
        check(
            "hardware virtualization",
            Verdict::Warn,
            "no vmx/svm in /proc/cpuinfo: KVM cannot run Linux guests, QEMU/TCG is used (slower)",
        )
    });

    let kernel_version = guest_image::kernel_version(config.vm.kernel.as_path());
    checks.push(match &kernel_version {
        Ok(v) => check(
            "guest kernel",
            Verdict::Pass,
            format!("{} (Linux {v})", config.vm.kernel),
        ),
        Err(e) => check(
            "guest kernel",
            Verdict::Fail,
            format!("{e}; build it with images/build.sh"),
        ),
    });
    checks.push(file_check(
        "guest initramfs",
        config.vm.initramfs.as_path(),
        "build it with images/build.sh",
    ));

    let helper_required = if uses_qemu {
        Verdict::Fail
    } else {
        Verdict::Warn
    };
    checks.push(program_check(
        "qemu-system-x86_64",
        &config.helpers.qemu,
        helper_required,
        "apt-get install qemu-system-x86",
        depth,
    ));
    checks.push(program_check(
        "virtiofsd",
        &config.helpers.virtiofsd,
        Verdict::Fail,
        "cargo install --locked virtiofsd (needs libcap-ng-dev libseccomp-dev)",
        depth,
    ));

    let kernel_vsock = super::vsock::probe_kernel();
    checks.push(match &kernel_vsock {
        Ok(()) => check(
            "/dev/vhost-vsock",
            Verdict::Pass,
            "in-kernel vsock backend available",
        ),
        Err(e) => check("/dev/vhost-vsock", Verdict::Warn, e.clone()),
    });
    // An unresolvable backend is reported above; judge vsock as for QEMU,
    // the backend that needs the most.
    let vsock_backend = match &decision {
        Ok(d) => d.backend,
        Err(_) => Backend::Qemu { accel: Accel::Tcg },
    };
    let vsock = super::vsock::choose(config.vm.vsock, vsock_backend, &kernel_vsock);
    checks.push(match &vsock {
        Ok(d) => check("vsock", Verdict::Pass, d.reason.clone()),
        Err(e) => check("vsock", Verdict::Fail, e.clone()),
    });
    let needs_helper = matches!(&vsock, Ok(d) if d.backend == VsockBackend::VhostUser);
    checks.push(program_check(
        "vhost-device-vsock",
        &config.helpers.vhost_device_vsock,
        if needs_helper {
            Verdict::Fail
        } else {
            Verdict::Warn
        },
        "cargo install --locked vhost-device-vsock",
        depth,
    ));

    checks.push(if Path::new("/dev/net/tun").exists() {
        check(
            "/dev/net/tun",
            Verdict::Pass,
            "TAP devices available for pod networks",
        )
    } else {
        check(
            "/dev/net/tun",
            Verdict::Warn,
            "missing: pods get no network interface",
        )
    });

    let network = cni::default_network(&config.cni);
    checks.push(cni_check(config, &network, depth));

    checks.push(match super::cgroup_layout() {
        CgroupLayout::Unified => check("cgroups", Verdict::Pass, "cgroup v2 (unified)"),
        CgroupLayout::Hybrid => check(
            "cgroups",
            Verdict::Pass,
            "cgroup v1 controllers with a v2 hierarchy (hybrid); pod processes use v1",
        ),
        CgroupLayout::Legacy => check("cgroups", Verdict::Pass, "cgroup v1"),
        CgroupLayout::None => check(
            "cgroups",
            Verdict::Warn,
            "no cgroup filesystem mounted: pod resources are not accounted on the host",
        ),
    });

    checks.push(if super::kernel_has_filesystem("overlay") {
        check("overlayfs", Verdict::Pass, "supported by the host kernel")
    } else {
        check(
            "overlayfs",
            Verdict::Fail,
            "not in /proc/filesystems: container root filesystems cannot be assembled",
        )
    });

    Report {
        checks,
        backend: decision,
        network,
        kernel_version,
    }
}

/// Time one plugin gets to answer VERSION. Plugins answer from memory, so
/// anything slower than this is hung or broken.
const CNI_VERSION_TIMEOUT: Duration = Duration::from_secs(2);

/// The CNI row. A plugin that exists but cannot run, or does not speak the
/// conflist's version, would fail every sandbox's ADD; asking each one for
/// VERSION finds that before a pod does. Only the full depth runs them:
/// `Status` is polled every few seconds on a blocking thread, and a hung
/// plugin would hold each poll for the timeout. It stays a warning, like a
/// missing config, while pods still start without a network.
fn cni_check(config: &Config, network: &Result<cni::Network, String>, depth: Depth) -> Check {
    let n = match network {
        Ok(n) => n,
        Err(e) => {
            return check(
                "CNI",
                Verdict::Warn,
                format!("{e}: pods with their own network cannot start"),
            );
        }
    };
    let summary = format!(
        "network {:?} from {} ({})",
        n.name,
        n.source,
        n.plugins
            .iter()
            .map(|(t, _)| t.as_str())
            .collect::<Vec<_>>()
            .join(", ")
    );
    if depth == Depth::Quick {
        return check("CNI", Verdict::Pass, summary);
    }
    let Some(want) = n.cni_version.as_deref() else {
        return check(
            "CNI",
            Verdict::Warn,
            format!("{summary}: {} has no \"cniVersion\"", n.source),
        );
    };
    let bin_dirs: Vec<_> = config
        .cni
        .bin_dirs
        .iter()
        .map(|d| d.as_path().to_path_buf())
        .collect();
    let problems: Vec<String> = plugin_versions(n, want, &bin_dirs)
        .into_iter()
        .zip(&n.plugins)
        .filter_map(|(answer, (t, path))| match answer {
            Ok(v) if v.supported_versions.iter().any(|s| s == want) => None,
            Ok(v) => Some(format!(
                "plugin {t:?} ({}) does not support CNI {want} (supports {})",
                path.display(),
                v.supported_versions.join(", ")
            )),
            Err(e) => Some(e),
        })
        .collect();
    if problems.is_empty() {
        check(
            "CNI",
            Verdict::Pass,
            format!("{summary}, all speak CNI {want}"),
        )
    } else {
        check(
            "CNI",
            Verdict::Warn,
            format!("{summary}: {}", problems.join("; ")),
        )
    }
}

/// VERSION of every plugin of `n`, in plugin order, run concurrently so a
/// hung plugin costs one timeout rather than one each. The plugin client is
/// async; `run` is called from plain threads (the CLI, `spawn_blocking`), so
/// a private thread with its own runtime keeps that working in both.
fn plugin_versions(
    n: &cni::Network,
    want: &str,
    bin_dirs: &[std::path::PathBuf],
) -> Vec<Result<plugin::VersionInfo, String>> {
    let paths: Vec<_> = n.plugins.iter().map(|(_, p)| p.clone()).collect();
    let (want, bin_dirs) = (want.to_string(), bin_dirs.to_vec());
    let count = paths.len();
    let joined = std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| format!("cannot start a runtime to run CNI plugins: {e}"))?;
        Ok::<_, String>(
            rt.block_on(futures_util::future::join_all(paths.iter().map(|p| {
                let (want, bin_dirs) = (&want, &bin_dirs);
                async move {
                    plugin::version(p, want, bin_dirs, CNI_VERSION_TIMEOUT)
                        .await
                        .map_err(|e| e.to_string())
                }
            }))),
        )
    })
    .join();
    match joined {
        Ok(Ok(v)) => v,
        Ok(Err(e)) => vec![Err(e); count],
        Err(_) => vec![Err("running CNI plugins panicked".to_string()); count],
    }
}

fn file_check(name: &'static str, path: &Path, fix: &str) -> Check {
    match std::fs::metadata(path) {
        Ok(m) if m.is_file() && m.len() > 0 => check(
            name,
            Verdict::Pass,
            format!("{} ({} KiB)", path.display(), m.len() / 1024),
        ),
        Ok(_) => check(
            name,
            Verdict::Fail,
            format!("{} is empty or not a file; {fix}", path.display()),
        ),
        Err(e) => check(
            name,
            Verdict::Fail,
            format!("{}: {e}; {fix}", path.display()),
        ),
    }
}

fn program_check(
    name: &'static str,
    program: &Program,
    if_missing: Verdict,
    install: &str,
    depth: Depth,
) -> Check {
    let Some(path) = which(program) else {
        return check(
            name,
            if_missing,
            format!("{:?} not found in PATH; install: {install}", program.0),
        );
    };
    if depth == Depth::Quick {
        return check(name, Verdict::Pass, path.display().to_string());
    }
    match program_version(&path) {
        Ok(v) => check(name, Verdict::Pass, format!("{} ({v})", path.display())),
        Err(e) => check(name, if_missing, format!("{}: {e}", path.display())),
    }
}

/// First line of `PROGRAM --version`, bounded in time so a hung helper
/// cannot hang `vmpod check`.
fn program_version(path: &Path) -> Result<String, String> {
    use std::process::{Command, Stdio};
    let mut child = Command::new(path)
        .arg("--version")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| format!("cannot run --version: {e}"))?;
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    loop {
        match child.try_wait() {
            Ok(Some(_)) => break,
            Ok(None) if std::time::Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(10))
            }
            Ok(None) => {
                let _ = child.kill();
                let _ = child.wait();
                return Err("--version did not finish within 5 s".into());
            }
            Err(e) => return Err(format!("waiting for --version: {e}")),
        }
    }
    let out = child
        .wait_with_output()
        .map_err(|e| format!("reading --version: {e}"))?;
    let text = String::from_utf8_lossy(&out.stdout);
    Ok(text
        .lines()
        .next()
        .unwrap_or("unknown version")
        .trim()
        .to_string())
}

/// Prints the report as the `vmpod check` table.
pub fn render(report: &Report) -> String {
    use fmt::Write;
    let width = report
        .checks
        .iter()
        .map(|c| c.name.len())
        .max()
        .unwrap_or(0);
    let mut s = String::new();
    for c in &report.checks {
        let _ = writeln!(s, "{:<4}  {:<width$}  {}", c.verdict, c.name, c.reason);
    }
    let _ = writeln!(s);
    match &report.backend {
        Ok(d) => {
            let _ = writeln!(s, "backend: {} ({})", d.backend, d.reason);
            if d.backend == (Backend::Qemu { accel: Accel::Tcg }) {
                let _ = writeln!(
                    s,
                    "note: TCG emulates the CPU in software; pods boot in about a second instead of tens of milliseconds"
                );
            }
        }
        Err(e) => {
            let _ = writeln!(s, "backend: none ({e})");
        }
    }
    if report.pods_can_run() {
        let _ = writeln!(s, "verdict: this host can run pods");
    } else {
        let _ = writeln!(s, "verdict: this host cannot run pods:");
        for b in report.blockers() {
            let _ = writeln!(s, "  - {b}");
        }
    }
    s
}
