//! The CPUID a vCPU sees: KVM_GET_SUPPORTED_CPUID (what host and KVM can
//! offer) passed through this filter. The filter, leaf by leaf:
//!
//! - 0x1: initial APIC id = vCPU index, logical processor count = vCPUs,
//!   HTT when there is more than one; the hypervisor bit (ECX 31) set;
//!   removed: MONITOR/MWAIT (guest must not idle in mwait), VMX and SMX (no
//!   nested virtualization), DTES64/DS/DS-CPL/EST/TM/TM2/PBE/ACPI (thermal,
//!   debug store: not emulated), PDCM (no perf capabilities MSR).
//! - 0x4: cache topology: all vCPUs are cores of one package, one thread each.
//! - 0x6: thermal and power management: cleared (not emulated).
//! - 0x7.0: removed SGX, SGX_LC, WAITPKG (umwait/tpause), PCONFIG.
//! - 0xa: architectural PMU: cleared, there is no vPMU.
//! - 0xb / 0x1f: extended topology: level 0 SMT (1 thread), level 1 core
//!   (vCPUs cores), x2APIC id = vCPU index.
//! - 0x4000_0000: the KVM signature "KVMKVMKVM" and its feature leaf, so the
//!   guest uses kvmclock and paravirtual features (kept from KVM).
//! - 0x8000_0001: SVM removed (no nested virtualization).

use kvm_bindings::{CpuId, kvm_cpuid_entry2};

const ECX_MONITOR: u32 = 1 << 3;
const ECX_DTES64: u32 = 1 << 2;
const ECX_DS_CPL: u32 = 1 << 4;
const ECX_VMX: u32 = 1 << 5;
const ECX_SMX: u32 = 1 << 6;
const ECX_EST: u32 = 1 << 7;
const ECX_TM2: u32 = 1 << 8;
const ECX_PDCM: u32 = 1 << 15;
const ECX_HYPERVISOR: u32 = 1 << 31;
const EDX_DS: u32 = 1 << 21;
const EDX_ACPI: u32 = 1 << 22;
const EDX_HTT: u32 = 1 << 28;
const EDX_TM: u32 = 1 << 29;
const EDX_PBE: u32 = 1 << 31;
const LEAF7_EBX_SGX: u32 = 1 << 2;
const LEAF7_ECX_WAITPKG: u32 = 1 << 5;
const LEAF7_ECX_SGX_LC: u32 = 1 << 30;
const LEAF7_EDX_PCONFIG: u32 = 1 << 18;
const EXT_ECX_SVM: u32 = 1 << 2;
const KVM_SIGNATURE: [u32; 3] = [0x4b4d_564b, 0x564b_4d56, 0x0000_004d]; // "KVMKVMKVM\0\0\0"

/// Applies the filter for vCPU `index` of `vcpus`.
pub fn filter(cpuid: &mut CpuId, index: u8, vcpus: u8) {
    let apic_id = u32::from(index);
    let n = u32::from(vcpus.max(1));
    // Bits needed to number the cores: x2APIC ids are laid out by this shift.
    let core_shift = 32 - (n - 1).leading_zeros();
    let mut have_hypervisor_leaf = false;
    for e in cpuid.as_mut_slice() {
        match e.function {
            0x1 => {
                e.ebx = (e.ebx & 0x0000_ffff) | (apic_id << 24) | (n << 16);
                e.ecx &= !(ECX_MONITOR
                    | ECX_DTES64
                    | ECX_DS_CPL
                    | ECX_VMX
                    | ECX_SMX
                    | ECX_EST
                    | ECX_TM2
                    | ECX_PDCM);
                e.ecx |= ECX_HYPERVISOR;
                e.edx &= !(EDX_DS | EDX_ACPI | EDX_TM | EDX_PBE);
                if n > 1 {
                    e.edx |= EDX_HTT;
                } else {
                    e.edx &= !EDX_HTT;
                }
            }
            0x4 => {
                // EAX[31:26] cores per package - 1; EAX[25:14] threads sharing
                // this cache - 1 (all cores for L3, one for the rest).
                let level = (e.eax >> 5) & 0x7;
                let sharing = if level >= 3 { n - 1 } else { 0 };
                e.eax = (e.eax & 0x3fff) | ((n - 1) << 26) | (sharing << 14);
            }
            0x6 => {
                e.eax = 0;
                e.ebx = 0;
                e.ecx = 0;
                e.edx = 0;
            }
            0x7 if e.index == 0 => {
                e.ebx &= !LEAF7_EBX_SGX;
                e.ecx &= !(LEAF7_ECX_WAITPKG | LEAF7_ECX_SGX_LC);
                e.edx &= !LEAF7_EDX_PCONFIG;
            }
            0xa => {
                e.eax = 0;
                e.ebx = 0;
                e.ecx = 0;
                e.edx = 0;
            }
            0xb | 0x1f => {
                e.edx = apic_id;
                match e.index {
                    0 => {
                        e.eax = 0; // no SMT bits
                        e.ebx = 1;
                        e.ecx = 1 << 8; // level type SMT
                    }
                    1 => {
                        e.eax = core_shift;
                        e.ebx = n;
                        e.ecx = (2 << 8) | 1; // level type core
                    }
                    i => {
                        e.eax = 0;
                        e.ebx = 0;
                        e.ecx = i;
                    }
                }
            }
            0x4000_0000 => {
                have_hypervisor_leaf = true;
                e.eax = e.eax.max(0x4000_0001);
                [e.ebx, e.ecx, e.edx] = KVM_SIGNATURE;
            }
            0x8000_0001 => e.ecx &= !EXT_ECX_SVM,
            _ => {}
        }
    }
    if !have_hypervisor_leaf {
        // KVM always reports it; should a kernel not, the guest still learns
        // what it runs on. The push fails only when the array is full.
        let _ = cpuid.push(kvm_cpuid_entry2 {
            function: 0x4000_0000,
            eax: 0x4000_0001,
            ebx: KVM_SIGNATURE[0],
            ecx: KVM_SIGNATURE[1],
            edx: KVM_SIGNATURE[2],
            ..Default::default()
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(function: u32, index: u32) -> kvm_cpuid_entry2 {
        kvm_cpuid_entry2 {
            function,
            index,
            eax: 0xffff_ffff,
            ebx: 0xffff_ffff,
            ecx: 0xffff_ffff,
            edx: 0xffff_ffff,
            ..Default::default()
        }
    }

    #[test]
    fn topology_and_masks() {
        let mut c =
            CpuId::from_entries(&[entry(1, 0), entry(0xb, 0), entry(0xb, 1), entry(0xa, 0)])
                .expect("cpuid");
        filter(&mut c, 1, 2);
        let e = c.as_slice();
        assert_eq!(e[0].ebx >> 24, 1, "apic id");
        assert_eq!((e[0].ebx >> 16) & 0xff, 2, "logical count");
        assert_eq!(e[0].ecx & ECX_VMX, 0);
        assert_eq!(e[0].ecx & ECX_MONITOR, 0);
        assert_ne!(e[0].ecx & ECX_HYPERVISOR, 0);
        assert_ne!(e[0].edx & EDX_HTT, 0);
        assert_eq!((e[1].ebx, e[1].edx), (1, 1));
        assert_eq!((e[2].eax, e[2].ebx, e[2].ecx), (1, 2, 0x201));
        assert_eq!(e[3].eax, 0, "no PMU");
        let sig = e
            .iter()
            .find(|x| x.function == 0x4000_0000)
            .expect("hypervisor leaf");
        assert_eq!([sig.ebx, sig.ecx, sig.edx], KVM_SIGNATURE);
    }
}
