//! How a guest ended, as every layer reports it: the vCPU loop and the
//! i8042 reset line record it in the shared vCPU control, and the VMM's
//! owner reads it back (`vmpod_vmm::ExitReason`). It sits below all of
//! them so that none has to reach up to the crate root for it.

use std::fmt;

/// How a guest ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ExitReason {
    /// The guest reset itself through the i8042 (Linux `reboot=k`).
    Reset,
    /// KVM reported a guest power-off (PSCI/ACPI system event).
    PowerOff,
    /// The host asked the VM to stop.
    Stopped,
    /// KVM_EXIT_SHUTDOWN: the guest triple-faulted.
    TripleFault { vcpu: u8 },
    /// KVM could not emulate an instruction, or similar.
    InternalError { vcpu: u8, suberror: u32 },
    /// VM entry failed; the hardware reason is in `reason`.
    FailEntry { vcpu: u8, reason: u64 },
    /// KVM reported a guest crash.
    Crash { vcpu: u8 },
    /// An unexpected exit or a failed ioctl.
    Error { vcpu: Option<u8>, message: String },
}

impl ExitReason {
    /// Process exit code for the standalone VMM: 0 for the endings a guest
    /// asks for, distinct codes for the failures.
    pub fn exit_code(&self) -> i32 {
        match self {
            ExitReason::Reset | ExitReason::PowerOff | ExitReason::Stopped => 0,
            ExitReason::Error { .. } => 1,
            ExitReason::TripleFault { .. } => 2,
            ExitReason::InternalError { .. } | ExitReason::FailEntry { .. } => 3,
            ExitReason::Crash { .. } => 4,
        }
    }

    /// A short machine-readable name.
    pub fn name(&self) -> &'static str {
        match self {
            ExitReason::Reset => "reset",
            ExitReason::PowerOff => "power-off",
            ExitReason::Stopped => "stopped",
            ExitReason::TripleFault { .. } => "triple-fault",
            ExitReason::InternalError { .. } => "internal-error",
            ExitReason::FailEntry { .. } => "fail-entry",
            ExitReason::Crash { .. } => "crash",
            ExitReason::Error { .. } => "error",
        }
    }
}

impl fmt::Display for ExitReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ExitReason::Reset => write!(f, "guest reset (i8042)"),
            ExitReason::PowerOff => write!(f, "guest powered off"),
            ExitReason::Stopped => write!(f, "stopped by the host"),
            ExitReason::TripleFault { vcpu } => {
                write!(f, "triple fault on vCPU {vcpu} (KVM_EXIT_SHUTDOWN)")
            }
            ExitReason::InternalError { vcpu, suberror } => write!(
                f,
                "KVM internal error on vCPU {vcpu} (suberror {suberror}{})",
                if *suberror == 1 {
                    ": emulation failure"
                } else {
                    ""
                }
            ),
            ExitReason::FailEntry { vcpu, reason } => {
                write!(
                    f,
                    "VM entry failed on vCPU {vcpu} (hardware reason {reason:#x})"
                )
            }
            ExitReason::Crash { vcpu } => write!(f, "guest crashed on vCPU {vcpu}"),
            ExitReason::Error {
                vcpu: Some(v),
                message,
            } => write!(f, "vCPU {v}: {message}"),
            ExitReason::Error {
                vcpu: None,
                message,
            } => write!(f, "{message}"),
        }
    }
}
