//! VM size from the pod's resources.
//!
//! kubelet passes the pod's aggregate limits and its RuntimeClass overhead
//! in `LinuxPodSandboxConfig`; the VM gets their sum, so what the scheduler
//! reserved is what the guest can use. Without limits, config defaults
//! apply.

use crate::config::{MAX_MEMORY_MIB, MAX_VCPUS, MIN_MEMORY_MIB, VmConfig};

const MIB: i64 = 1 << 20;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VmSize {
    pub vcpus: u32,
    pub memory_mib: u64,
}

/// Host memory for everything besides guest RAM: QEMU's TCG translation
/// buffer (`tb-size`, see the shim's qemu.rs) and its own heap, virtiofsd,
/// the vsock helper, the shim and its log relays; page cache they cause is
/// charged too but reclaimable.
pub const HOST_OVERHEAD_MIB: u64 = 512;

impl VmSize {
    /// The memory limit of the pod's host cgroup: its host processes
    /// together may use guest RAM plus the overhead, so a guest that makes
    /// QEMU or a helper grow beyond is OOM-killed in its own cgroup instead
    /// of pressing the host.
    pub fn host_memory_limit_bytes(&self) -> u64 {
        self.memory_mib
            .saturating_add(HOST_OVERHEAD_MIB)
            .saturating_mul(1 << 20)
    }
}

/// CPU and memory limits as kubelet passes them (CFS quota over period,
/// bytes); zero or less means no limit.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Limits {
    pub cpu_quota: i64,
    pub cpu_period: i64,
    pub memory_limit_bytes: i64,
}

pub fn vm_size(vm: &VmConfig, resources: &Limits, overhead: &Limits) -> VmSize {
    let cpus = |r: &Limits| -> f64 {
        if r.cpu_quota > 0 && r.cpu_period > 0 {
            r.cpu_quota as f64 / r.cpu_period as f64
        } else {
            0.0
        }
    };
    let mem = |r: &Limits| -> i64 { r.memory_limit_bytes.max(0) };
    let limit_cpus = cpus(resources);
    let vcpus = if limit_cpus > 0.0 {
        ((limit_cpus + cpus(overhead)).ceil() as u32).clamp(1, MAX_VCPUS)
    } else {
        vm.vcpus
    };
    let limit_mem = mem(resources);
    let memory_mib = if limit_mem > 0 {
        let total = limit_mem.saturating_add(mem(overhead));
        (total.div_euclid(MIB) + i64::from(total % MIB != 0)) as u64
    } else {
        vm.memory_mib
    }
    .clamp(MIN_MEMORY_MIB, MAX_MEMORY_MIB);
    VmSize { vcpus, memory_mib }
}

#[cfg(test)]
mod tests {

    #[test]
    fn the_host_limit_is_guest_ram_plus_the_overhead() {
        let s = VmSize {
            vcpus: 1,
            memory_mib: 256,
        };
        assert_eq!(s.host_memory_limit_bytes(), (256 + HOST_OVERHEAD_MIB) << 20);
    }

    use super::*;

    fn res(quota: i64, period: i64, mem: i64) -> Limits {
        Limits {
            cpu_quota: quota,
            cpu_period: period,
            memory_limit_bytes: mem,
        }
    }

    const NONE: Limits = Limits {
        cpu_quota: 0,
        cpu_period: 0,
        memory_limit_bytes: 0,
    };

    #[test]
    fn defaults_without_limits() {
        let vm = VmConfig::default();
        assert_eq!(
            vm_size(&vm, &NONE, &NONE),
            VmSize {
                vcpus: 1,
                memory_mib: 256
            }
        );
        assert_eq!(
            vm_size(&vm, &res(0, 0, 0), &NONE),
            VmSize {
                vcpus: 1,
                memory_mib: 256
            }
        );
    }

    #[test]
    fn limits_plus_overhead_rounded_up() {
        let vm = VmConfig::default();
        let s = vm_size(
            &vm,
            &res(150_000, 100_000, 300 * MIB),
            &res(25_000, 100_000, 50 * MIB + 1),
        );
        assert_eq!(
            s,
            VmSize {
                vcpus: 2,
                memory_mib: 351
            }
        );
    }

    #[test]
    fn tiny_limits_clamped_to_a_bootable_minimum() {
        let s = vm_size(&VmConfig::default(), &res(0, 0, MIB), &NONE);
        assert_eq!(s.memory_mib, MIN_MEMORY_MIB);
    }
}
