//! Which hypervisor backend runs pods on this host, and why.
//!
//! The decision rests on two facts that are easy to confuse: `/dev/kvm` can
//! exist and answer ioctls on a CPU without hardware virtualization (nested
//! or emulated KVM). Such a KVM runs tiny guests but not Linux, so it must not
//! be picked for pods.

use std::fmt;
use std::fs::OpenOptions;
use std::os::fd::AsRawFd;

use serde::Serialize;

use crate::config::BackendChoice;

/// What the host offers for running VMs.
#[derive(Debug, Clone, Serialize)]
pub struct VirtFacts {
    /// KVM API version, or why `/dev/kvm` cannot be used.
    pub kvm: Result<i32, String>,
    /// The CPU advertises vmx (Intel) or svm (AMD).
    pub hw_virt: bool,
}

impl VirtFacts {
    pub fn probe() -> VirtFacts {
        VirtFacts {
            kvm: probe_kvm(),
            hw_virt: probe_hw_virt(),
        }
    }
}

/// `KVM_GET_API_VERSION`, `_IO(KVMIO, 0x00)`.
const KVM_GET_API_VERSION: libc::c_ulong = 0xAE00;
/// The only KVM API version Linux has ever shipped.
const KVM_API_VERSION: i32 = 12;

fn probe_kvm() -> Result<i32, String> {
    let kvm = OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
        .map_err(|e| format!("cannot open /dev/kvm: {e}"))?;
    // SAFETY: KVM_GET_API_VERSION takes no argument and only returns an int.
    let v = unsafe { libc::ioctl(kvm.as_raw_fd(), KVM_GET_API_VERSION, 0) };
    if v < 0 {
        return Err(format!(
            "KVM_GET_API_VERSION failed: {}",
            std::io::Error::last_os_error()
        ));
    }
    if v != KVM_API_VERSION {
        return Err(format!("unsupported KVM API version {v}"));
    }
    Ok(v)
}

fn probe_hw_virt() -> bool {
    std::fs::read_to_string("/proc/cpuinfo")
        .map(|s| cpuinfo_has_hw_virt(&s))
        .unwrap_or(false)
}

pub fn cpuinfo_has_hw_virt(cpuinfo: &str) -> bool {
    cpuinfo
        .lines()
        .filter(|l| l.starts_with("flags"))
        .any(|l| l.split_whitespace().any(|f| f == "vmx" || f == "svm"))
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Accel {
    Kvm,
    Tcg,
}

/// The backend a pod's VM runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(tag = "name", rename_all = "lowercase")]
pub enum Backend {
    /// The built-in VMM in `vmpod-shim`.
    Kvm,
    /// `qemu-system-x86_64 -M microvm` with the given accelerator.
    Qemu { accel: Accel },
}

impl fmt::Display for Backend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Backend::Kvm => f.write_str("kvm (built-in VMM)"),
            Backend::Qemu { accel: Accel::Kvm } => f.write_str("qemu (KVM acceleration)"),
            Backend::Qemu { accel: Accel::Tcg } => f.write_str("qemu (TCG software emulation)"),
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct Decision {
    pub backend: Backend,
    pub reason: String,
}

/// Resolves the configured choice against the host's facts.
pub fn choose(choice: BackendChoice, facts: &VirtFacts) -> Result<Decision, String> {
    let kvm_ok = facts.kvm.is_ok();
    let full_kvm = kvm_ok && facts.hw_virt;
    match choice {
        BackendChoice::Kvm if !full_kvm => Err(format!(
            "backend \"kvm\" needs /dev/kvm on a CPU with hardware virtualization: {}",
            why_no_kvm(facts)
        )),
        BackendChoice::Kvm => Ok(Decision {
            backend: Backend::Kvm,
            reason: "configured: built-in VMM on hardware-virtualized KVM".into(),
        }),
        BackendChoice::Qemu | BackendChoice::Auto => {
            let origin = if choice == BackendChoice::Auto {
                if full_kvm {
                    return Ok(Decision {
                        backend: Backend::Kvm,
                        reason: "hardware virtualization present: built-in KVM VMM".into(),
                    });
                }
                "auto"
            } else {
                "configured"
            };
            let (accel, why) = if full_kvm {
                (
                    Accel::Kvm,
                    "hardware virtualization present, QEMU uses KVM".to_string(),
                )
            } else {
                (
                    Accel::Tcg,
                    format!(
                        "{}, so Linux guests need the QEMU/TCG backend",
                        why_no_kvm(facts)
                    ),
                )
            };
            Ok(Decision {
                backend: Backend::Qemu { accel },
                reason: format!("{origin}: {why}"),
            })
        }
    }
}

fn why_no_kvm(facts: &VirtFacts) -> String {
    match &facts.kvm {
        Ok(_) if !facts.hw_virt => {
            "KVM without hardware virtualization (/dev/kvm works but the CPU has no vmx/svm)".into()
        }
        Ok(_) => "KVM is usable".into(),
        Err(e) => format!("KVM is unusable ({e})"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn facts(kvm: bool, hw: bool) -> VirtFacts {
        VirtFacts {
            kvm: if kvm {
                Ok(12)
            } else {
                Err("no /dev/kvm".into())
            },
            hw_virt: hw,
        }
    }

    #[test]
    fn kvm_without_hw_virt_falls_back_to_tcg() {
        let d = choose(BackendChoice::Auto, &facts(true, false)).unwrap();
        assert_eq!(d.backend, Backend::Qemu { accel: Accel::Tcg });
        assert!(
            d.reason.contains("KVM without hardware virtualization"),
            "{}",
            d.reason
        );
        assert!(d.reason.contains("QEMU/TCG"), "{}", d.reason);
    }

    #[test]
    fn full_kvm_accelerates_qemu() {
        let d = choose(BackendChoice::Qemu, &facts(true, true)).unwrap();
        assert_eq!(d.backend, Backend::Qemu { accel: Accel::Kvm });
    }

    #[test]
    fn no_kvm_uses_tcg() {
        let d = choose(BackendChoice::Auto, &facts(false, true)).unwrap();
        assert_eq!(d.backend, Backend::Qemu { accel: Accel::Tcg });
        assert!(d.reason.contains("no /dev/kvm"));
    }

    #[test]
    fn builtin_vmm_needs_hardware_virtualization() {
        let e = choose(BackendChoice::Kvm, &facts(true, false)).unwrap_err();
        assert!(e.contains("backend \"kvm\""), "{e}");
        assert!(e.contains("no vmx/svm"), "{e}");
        let e = choose(BackendChoice::Kvm, &facts(false, true)).unwrap_err();
        assert!(e.contains("no /dev/kvm"), "{e}");
        let d = choose(BackendChoice::Kvm, &facts(true, true)).unwrap();
        assert_eq!(d.backend, Backend::Kvm);
    }

    #[test]
    fn auto_prefers_the_builtin_vmm_on_full_kvm() {
        let d = choose(BackendChoice::Auto, &facts(true, true)).unwrap();
        assert_eq!(d.backend, Backend::Kvm);
        assert!(d.reason.contains("built-in"), "{}", d.reason);
        // Asking for qemu still gets QEMU with KVM.
        let d = choose(BackendChoice::Qemu, &facts(true, true)).unwrap();
        assert_eq!(d.backend, Backend::Qemu { accel: Accel::Kvm });
    }

    #[test]
    fn cpuinfo_flags() {
        assert!(cpuinfo_has_hw_virt(
            "processor: 0\nflags\t\t: fpu vme vmx sse\n"
        ));
        assert!(!cpuinfo_has_hw_virt("flags\t\t: fpu vme sse hypervisor\n"));
        assert!(!cpuinfo_has_hw_virt("model name: svm-like cpu\n"));
    }
}
