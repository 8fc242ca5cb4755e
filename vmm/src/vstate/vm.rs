//! The VM file descriptor and what lives on it: in-kernel IRQCHIP (PIC,
//! IOAPIC, LAPICs) and PIT, guest memory slots, irqfds and ioeventfds.

use anyhow::{Context, Result};
use kvm_bindings::{KVM_PIT_SPEAKER_DUMMY, kvm_pit_config, kvm_userspace_memory_region};
use kvm_ioctls::{IoEventAddress, Kvm, VmFd};
use vmm_sys_util::eventfd::EventFd;

use crate::boot::layout::KVM_TSS_ADDRESS;
use crate::memory::GuestRam;

pub struct Vm {
    fd: VmFd,
}

impl Vm {
    /// KVM fds are created O_CLOEXEC by the kernel (anon inodes).
    pub fn new(kvm: &Kvm) -> Result<Vm> {
        let fd = kvm.create_vm().context("KVM_CREATE_VM")?;
        // Intel needs three pages for the real-mode TSS; harmless elsewhere.
        fd.set_tss_address(KVM_TSS_ADDRESS)
            .context("KVM_SET_TSS_ADDR")?;
        // The irqchip must exist before any vCPU: each vCPU gets its LAPIC.
        fd.create_irq_chip().context("KVM_CREATE_IRQCHIP")?;
        // Dummy speaker port (0x61) so PIT calibration works without exits.
        let pit = kvm_pit_config {
            flags: KVM_PIT_SPEAKER_DUMMY,
            ..Default::default()
        };
        fd.create_pit2(pit).context("KVM_CREATE_PIT2")?;
        Ok(Vm { fd })
    }

    pub fn fd(&self) -> &VmFd {
        &self.fd
    }

    /// One KVM memory slot per guest RAM region.
    pub fn register_memory(&self, ram: &GuestRam) -> Result<()> {
        for (slot, (guest, size, host)) in ram.slots().into_iter().enumerate() {
            let region = kvm_userspace_memory_region {
                slot: slot as u32,
                flags: 0,
                guest_phys_addr: guest,
                memory_size: size,
                userspace_addr: host,
            };
            // SAFETY: the host range is a live mapping owned by `ram`, which
            // outlives the VM (the Vmm drops vCPUs and VM before memory).
            unsafe { self.fd.set_user_memory_region(region) }
                .with_context(|| format!("KVM_SET_USER_MEMORY_REGION slot {slot} at {guest:#x}"))?;
        }
        Ok(())
    }

    /// An eventfd whose write raises `gsi` on the in-kernel irqchip: devices
    /// interrupt the guest without taking any lock or making a vCPU exit.
    pub fn irqfd(&self, gsi: u32) -> Result<EventFd> {
        let evt = new_eventfd()?;
        self.fd
            .register_irqfd(&evt, gsi)
            .with_context(|| format!("KVM_IRQFD for GSI {gsi}"))?;
        Ok(evt)
    }

    /// An eventfd KVM signals when the guest writes `value` (32-bit) at
    /// `addr`: a QueueNotify costs no exit to userspace.
    pub fn ioeventfd(&self, addr: u64, value: u32) -> Result<EventFd> {
        let evt = new_eventfd()?;
        self.fd
            .register_ioevent(&evt, &IoEventAddress::Mmio(addr), value)
            .with_context(|| format!("KVM_IOEVENTFD at {addr:#x} for {value}"))?;
        Ok(evt)
    }
}

/// Non-blocking and close-on-exec: no child of the shim inherits device fds.
pub fn new_eventfd() -> Result<EventFd> {
    EventFd::new(libc::EFD_NONBLOCK | libc::EFD_CLOEXEC).context("creating an eventfd")
}
