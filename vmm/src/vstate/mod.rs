//! KVM state: the VM (`vm.rs`: fd, irqchip, PIT, memory slots, irqfd and
//! ioeventfd), the vCPUs (`vcpu.rs`: registers, threads, kick, pause) and
//! the CPUID the guest sees (`cpuid.rs`).

pub mod cpuid;
pub mod vcpu;
pub mod vm;
