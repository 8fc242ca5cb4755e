//! KVM state: the VM (`vm.rs`: fd, irqchip, PIT, memory slots, irqfd and
//! ioeventfd), the vCPUs (`vcpu.rs`: registers, threads, kick, pause), the
//! CPUID the guest sees (`cpuid.rs`) and how the guest ended (`exit.rs`).

pub mod cpuid;
pub mod exit;
pub mod vcpu;
pub mod vm;
