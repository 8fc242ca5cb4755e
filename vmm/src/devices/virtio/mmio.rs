//! The virtio-mmio transport, version 2 (virtio 1.x "modern"): the register
//! file at one 4 KiB page per device, the device status state machine, and
//! the queue configuration it hands to the device at DRIVER_OK.
//!
//! Everything here is driven by the guest, so nothing the guest writes may
//! panic or wedge the VMM: accesses of the wrong size or at unknown offsets
//! are logged and ignored; an illegal status transition, an invalid queue
//! configuration or a failed activation sets DEVICE_NEEDS_RESET (and raises
//! a config interrupt when the driver is live), after which only a reset
//! (status 0) is accepted, and the queue teardown a driver may do before it
//! (QueueSel, QueueReady 0). QueueReady 0 on a live device stops it until
//! the next reset (no VIRTIO_F_RING_RESET: queues cannot stop one by one). QueueNotify normally never exits: an ioeventfd per
//! queue catches it in KVM; a notify that does exit names no valid queue or
//! came before the ioeventfd was registered, and is forwarded or logged.

use std::sync::Arc;

use virtio_queue::{Queue, QueueT};
use vm_memory::GuestAddress;
use vmm_sys_util::eventfd::EventFd;

use super::{Activation, Interrupt, VIRTIO_F_VERSION_1, VirtioDevice};
use crate::devices::bus::BusDevice;
use crate::memory::GuestMemoryMmap;

const MAGIC: u32 = 0x7472_6976; // "virt"
const VERSION: u32 = 2;
const VENDOR_ID: u32 = 0x444f_504d; // "MPOD"

/// Guest mistakes logged at warn level per device (and, separately, the
/// NEEDS_RESET events); the rest go to debug, so a hostile guest cannot fill
/// the disk through the VMM's log.
const LOG_BUDGET: u32 = 32;

/// `complain!(transport, counter, fmt, args..)`: warn within the budget.
macro_rules! complain {
    ($t:expr, $counter:ident, $($arg:tt)*) => {{
        if $t.$counter < LOG_BUDGET {
            $t.$counter += 1;
            tracing::warn!("virtio-mmio@{:#x}: {}", $t.base, format_args!($($arg)*));
            if $t.$counter == LOG_BUDGET {
                tracing::warn!(
                    "virtio-mmio@{:#x}: more guest errors like these are logged at debug level only",
                    $t.base
                );
            }
        } else {
            tracing::debug!("virtio-mmio@{:#x}: {}", $t.base, format_args!($($arg)*));
        }
    }};
}

pub const STATUS_ACKNOWLEDGE: u32 = 1;
pub const STATUS_DRIVER: u32 = 2;
pub const STATUS_DRIVER_OK: u32 = 4;
pub const STATUS_FEATURES_OK: u32 = 8;
pub const STATUS_NEEDS_RESET: u32 = 0x40;
pub const STATUS_FAILED: u32 = 0x80;

/// Register offsets.
pub mod reg {
    pub const MAGIC: u64 = 0x000;
    pub const VERSION: u64 = 0x004;
    pub const DEVICE_ID: u64 = 0x008;
    pub const VENDOR_ID: u64 = 0x00c;
    pub const DEVICE_FEATURES: u64 = 0x010;
    pub const DEVICE_FEATURES_SEL: u64 = 0x014;
    pub const DRIVER_FEATURES: u64 = 0x020;
    pub const DRIVER_FEATURES_SEL: u64 = 0x024;
    pub const QUEUE_SEL: u64 = 0x030;
    pub const QUEUE_NUM_MAX: u64 = 0x034;
    pub const QUEUE_NUM: u64 = 0x038;
    pub const QUEUE_READY: u64 = 0x044;
    pub const QUEUE_NOTIFY: u64 = 0x050;
    pub const INTERRUPT_STATUS: u64 = 0x060;
    pub const INTERRUPT_ACK: u64 = 0x064;
    pub const STATUS: u64 = 0x070;
    pub const QUEUE_DESC_LOW: u64 = 0x080;
    pub const QUEUE_DESC_HIGH: u64 = 0x084;
    pub const QUEUE_DRIVER_LOW: u64 = 0x090;
    pub const QUEUE_DRIVER_HIGH: u64 = 0x094;
    pub const QUEUE_DEVICE_LOW: u64 = 0x0a0;
    pub const QUEUE_DEVICE_HIGH: u64 = 0x0a4;
    pub const SHM_SEL: u64 = 0x0ac;
    pub const SHM_LEN_LOW: u64 = 0x0b0;
    pub const SHM_LEN_HIGH: u64 = 0x0b4;
    pub const SHM_BASE_LOW: u64 = 0x0b8;
    pub const SHM_BASE_HIGH: u64 = 0x0bc;
    pub const CONFIG_GENERATION: u64 = 0x0fc;
    pub const CONFIG: u64 = 0x100;
}

pub struct MmioTransport {
    device: Box<dyn VirtioDevice>,
    memory: Arc<GuestMemoryMmap>,
    interrupt: Arc<Interrupt>,
    queues: Vec<Queue>,
    notifiers: Vec<EventFd>,
    /// Guest-physical base, for log lines.
    base: u64,
    status: u32,
    device_features_sel: u32,
    driver_features_sel: u32,
    acked_features: u64,
    queue_sel: u32,
    config_generation: u32,
    activated: bool,
    complaints: u32,
    resets_logged: u32,
}

impl MmioTransport {
    /// `notifiers[i]` is signalled on a QueueNotify for queue i (an
    /// ioeventfd the builder registered, or a plain eventfd in tests).
    pub fn new(
        device: Box<dyn VirtioDevice>,
        memory: Arc<GuestMemoryMmap>,
        interrupt: Arc<Interrupt>,
        notifiers: Vec<EventFd>,
        base: u64,
    ) -> anyhow::Result<Self> {
        let queues = device
            .queue_max_sizes()
            .iter()
            .map(|max| {
                Queue::new(*max)
                    .map_err(|e| anyhow::anyhow!("virtio queue of max size {max}: {e:?}"))
            })
            .collect::<anyhow::Result<Vec<_>>>()?;
        if notifiers.len() != queues.len() {
            anyhow::bail!(
                "virtio-mmio at {base:#x}: {} notifiers for {} queues",
                notifiers.len(),
                queues.len()
            );
        }
        Ok(MmioTransport {
            device,
            memory,
            interrupt,
            queues,
            notifiers,
            base,
            status: 0,
            device_features_sel: 0,
            driver_features_sel: 0,
            acked_features: 0,
            queue_sel: 0,
            config_generation: 0,
            activated: false,
            complaints: 0,
            resets_logged: 0,
        })
    }

    pub fn status(&self) -> u32 {
        self.status
    }

    pub fn is_activated(&self) -> bool {
        self.activated
    }

    fn needs_reset(&mut self, why: &str) {
        let device = self.device.device_type();
        complain!(
            self,
            resets_logged,
            "(device {device}) {why}; marking DEVICE_NEEDS_RESET"
        );
        self.status |= STATUS_NEEDS_RESET;
        if self.status & STATUS_DRIVER_OK != 0 {
            self.interrupt.signal_config_change();
        }
    }

    fn ignored(&mut self, what: &str, offset: u64, len: usize) {
        complain!(
            self,
            complaints,
            "ignored {len}-byte {what} at +{offset:#x}"
        );
    }

    fn reset(&mut self) {
        if self.activated {
            self.device.reset();
            self.activated = false;
        }
        for q in &mut self.queues {
            q.reset();
        }
        self.status = 0;
        self.device_features_sel = 0;
        self.driver_features_sel = 0;
        self.acked_features = 0;
        self.queue_sel = 0;
        self.interrupt.clear();
    }

    fn selected_queue(&mut self) -> Option<&mut Queue> {
        self.queues.get_mut(self.queue_sel as usize)
    }

    /// Queue registers may change only between FEATURES_OK and DRIVER_OK,
    /// and only while the queue is not ready.
    fn queue_writable(&mut self, offset: u64) -> bool {
        let phase_ok = self.status & STATUS_FEATURES_OK != 0 && self.status & STATUS_DRIVER_OK == 0;
        let sel = self.queue_sel;
        let ready = match self.queues.get(sel as usize) {
            None => {
                complain!(
                    self,
                    complaints,
                    "queue {sel} does not exist (+{offset:#x} write ignored)"
                );
                return false;
            }
            Some(q) => q.ready(),
        };
        if !phase_ok || (ready && offset != reg::QUEUE_READY) {
            complain!(
                self,
                complaints,
                "queue {sel} register +{offset:#x} written outside setup; ignored"
            );
            return false;
        }
        true
    }

    /// QueueReady = 0: "to stop using the queue the driver MUST write zero
    /// to QueueReady and MUST read the value back" (virtio 1.x 4.2.2.2),
    /// allowed at any time, since a driver may take its queues down before
    /// it resets the device (virtio-drivers does so on drop). Without
    /// VIRTIO_F_RING_RESET a device cannot lose one queue and keep serving
    /// the others, so a live device stops serving altogether until the
    /// driver resets it; the queue reads back 0 at once.
    fn stop_queue(&mut self) {
        let sel = self.queue_sel;
        let Some(q) = self.queues.get_mut(sel as usize) else {
            complain!(
                self,
                complaints,
                "QueueReady 0 for queue {sel}, which does not exist"
            );
            return;
        };
        if !q.ready() {
            return;
        }
        q.set_ready(false);
        if self.activated {
            tracing::debug!(
                "virtio-mmio@{:#x}: the driver stopped queue {sel}; the device stops until reset",
                self.base
            );
            self.device.reset();
            self.activated = false;
        }
    }

    /// A zero written to a stopped queue's size or ring address once the
    /// driver is live: the rest of a teardown (virtio-drivers clears them
    /// after QueueReady 0). Ignored without a complaint.
    fn queue_teardown(&self, offset: u64, value: u32) -> bool {
        let stopped = self
            .queues
            .get(self.queue_sel as usize)
            .is_some_and(|q| !q.ready());
        let quiet = value == 0 && stopped && self.status & STATUS_DRIVER_OK != 0;
        if quiet {
            tracing::debug!(
                "virtio-mmio@{:#x}: queue {} register +{offset:#x} cleared after DRIVER_OK; ignored",
                self.base,
                self.queue_sel
            );
        }
        quiet
    }

    fn set_queue_address(&mut self, offset: u64, value: u32) {
        if self.queue_teardown(offset, value) || !self.queue_writable(offset) {
            return;
        }
        let Some(q) = self.selected_queue() else {
            return;
        };
        let (current, high) = match offset {
            reg::QUEUE_DESC_LOW | reg::QUEUE_DESC_HIGH => {
                (q.desc_table(), offset == reg::QUEUE_DESC_HIGH)
            }
            reg::QUEUE_DRIVER_LOW | reg::QUEUE_DRIVER_HIGH => {
                (q.avail_ring(), offset == reg::QUEUE_DRIVER_HIGH)
            }
            _ => (q.used_ring(), offset == reg::QUEUE_DEVICE_HIGH),
        };
        let addr = if high {
            (current & 0xffff_ffff) | (u64::from(value) << 32)
        } else {
            (current & !0xffff_ffff) | u64::from(value)
        };
        let result = match offset {
            reg::QUEUE_DESC_LOW | reg::QUEUE_DESC_HIGH => {
                q.try_set_desc_table_address(GuestAddress(addr))
            }
            reg::QUEUE_DRIVER_LOW | reg::QUEUE_DRIVER_HIGH => {
                q.try_set_avail_ring_address(GuestAddress(addr))
            }
            _ => q.try_set_used_ring_address(GuestAddress(addr)),
        };
        if let Err(e) = result {
            let sel = self.queue_sel;
            self.needs_reset(&format!("queue {sel}: bad ring address {addr:#x}: {e:?}"));
        }
    }

    fn set_status(&mut self, value: u32) {
        if value == 0 {
            self.reset();
            return;
        }
        let old = self.status;
        if old & STATUS_NEEDS_RESET != 0 {
            complain!(
                self,
                complaints,
                "status {value:#x} ignored until the driver resets the device"
            );
            return;
        }
        if value & STATUS_FAILED != 0 {
            complain!(
                self,
                complaints,
                "the driver gave up on the device (FAILED)"
            );
            self.status |= STATUS_FAILED;
            return;
        }
        let known = STATUS_ACKNOWLEDGE | STATUS_DRIVER | STATUS_FEATURES_OK | STATUS_DRIVER_OK;
        let has = |bit| value & bit != 0;
        let valid = value & !known == 0
            && value & old == old
            && (!has(STATUS_DRIVER) || has(STATUS_ACKNOWLEDGE))
            && (!has(STATUS_FEATURES_OK) || has(STATUS_DRIVER))
            && (!has(STATUS_DRIVER_OK) || has(STATUS_FEATURES_OK));
        if !valid {
            self.needs_reset(&format!("illegal status transition {old:#x} -> {value:#x}"));
            return;
        }
        let mut value = value;
        if has(STATUS_FEATURES_OK) && old & STATUS_FEATURES_OK == 0 {
            // Only the modern interface: refuse (leave FEATURES_OK clear, as
            // the spec says) a driver that did not accept VERSION_1.
            if self.acked_features & VIRTIO_F_VERSION_1 == 0 {
                complain!(
                    self,
                    complaints,
                    "driver did not accept VIRTIO_F_VERSION_1; FEATURES_OK refused"
                );
                value &= !(STATUS_FEATURES_OK | STATUS_DRIVER_OK);
            }
        }
        self.status = value;
        if value & STATUS_DRIVER_OK != 0 && old & STATUS_DRIVER_OK == 0 {
            self.activate();
        }
    }

    fn activate(&mut self) {
        for (i, q) in self.queues.iter().enumerate() {
            if q.ready() && !q.is_valid(self.memory.as_ref()) {
                let (size, desc) = (q.size(), q.desc_table());
                self.needs_reset(&format!(
                    "queue {i} is ready but invalid (size {size}, descriptors at {desc:#x}, rings outside guest memory or misaligned)"
                ));
                return;
            }
        }
        let mut notifiers = Vec::with_capacity(self.notifiers.len());
        for n in &self.notifiers {
            match n.try_clone() {
                Ok(n) => notifiers.push(n),
                Err(e) => {
                    self.needs_reset(&format!("duplicating a queue notifier: {e}"));
                    return;
                }
            }
        }
        // The device gets its own copies; the transport keeps answering
        // register reads from its own.
        let mut queues = Vec::with_capacity(self.queues.len());
        for (i, q) in self.queues.iter().enumerate() {
            match Queue::try_from(q.state()) {
                Ok(q) => queues.push(q),
                Err(e) => {
                    self.needs_reset(&format!("queue {i}: {e:?}"));
                    return;
                }
            }
        }
        let activation = Activation {
            memory: self.memory.clone(),
            acked_features: self.acked_features,
            queues,
            notifiers,
            interrupt: self.interrupt.clone(),
        };
        match self.device.activate(activation) {
            Ok(()) => self.activated = true,
            Err(e) => self.needs_reset(&format!("activation failed: {e:#}")),
        }
    }

    fn read_register(&mut self, offset: u64) -> u32 {
        match offset {
            reg::MAGIC => MAGIC,
            reg::VERSION => VERSION,
            reg::DEVICE_ID => self.device.device_type(),
            reg::VENDOR_ID => VENDOR_ID,
            reg::DEVICE_FEATURES => {
                let features = self.device.features() | VIRTIO_F_VERSION_1;
                match self.device_features_sel {
                    0 => features as u32,
                    1 => (features >> 32) as u32,
                    _ => 0,
                }
            }
            reg::QUEUE_NUM_MAX => self.selected_queue().map_or(0, |q| u32::from(q.max_size())),
            reg::QUEUE_READY => self.selected_queue().map_or(0, |q| u32::from(q.ready())),
            reg::INTERRUPT_STATUS => self.interrupt.status(),
            reg::STATUS => self.status,
            // No shared memory regions: length and base read as -1.
            reg::SHM_LEN_LOW | reg::SHM_LEN_HIGH | reg::SHM_BASE_LOW | reg::SHM_BASE_HIGH => {
                u32::MAX
            }
            reg::CONFIG_GENERATION => self.config_generation,
            _ => {
                self.ignored("read of a write-only or unknown register", offset, 4);
                0
            }
        }
    }

    fn write_register(&mut self, offset: u64, value: u32) {
        match offset {
            reg::DEVICE_FEATURES_SEL => self.device_features_sel = value,
            reg::DRIVER_FEATURES_SEL => self.driver_features_sel = value,
            reg::DRIVER_FEATURES => {
                if self.status & STATUS_DRIVER == 0 || self.status & STATUS_FEATURES_OK != 0 {
                    self.ignored(
                        "DriverFeatures write outside feature negotiation",
                        offset,
                        4,
                    );
                    return;
                }
                let offered = self.device.features() | VIRTIO_F_VERSION_1;
                let shift = match self.driver_features_sel {
                    0 => 0,
                    1 => 32,
                    sel => {
                        complain!(self, complaints, "DriverFeaturesSel {sel} does not exist");
                        return;
                    }
                };
                let mask = 0xffff_ffffu64 << shift;
                let accepted = (u64::from(value) << shift) & offered;
                if (u64::from(value) << shift) & !offered != 0 {
                    complain!(
                        self,
                        complaints,
                        "driver acked features {:#x} that were not offered; dropped",
                        (u64::from(value) << shift) & !offered
                    );
                }
                self.acked_features = (self.acked_features & !mask) | accepted;
            }
            reg::QUEUE_SEL => self.queue_sel = value,
            reg::QUEUE_NUM => {
                if self.queue_teardown(offset, value) || !self.queue_writable(offset) {
                    return;
                }
                let sel = self.queue_sel;
                let result = match u16::try_from(value) {
                    Ok(size) => self
                        .selected_queue()
                        .map(|q| q.try_set_size(size).map_err(|e| format!("{e:?}"))),
                    Err(_) => Some(Err("larger than 65535".to_owned())),
                };
                if let Some(Err(e)) = result {
                    self.needs_reset(&format!("queue {sel}: invalid size {value}: {e}"));
                }
            }
            reg::QUEUE_READY if value == 0 => self.stop_queue(),
            reg::QUEUE_READY => {
                if self.queue_writable(offset)
                    && let Some(q) = self.selected_queue()
                {
                    q.set_ready(value == 1);
                }
            }
            reg::QUEUE_NOTIFY => match self.notifiers.get(value as usize) {
                // Reaches us only if the ioeventfd did not catch it.
                Some(n) => {
                    if let Err(e) = n.write(1) {
                        complain!(self, complaints, "notifying queue {value}: {e}");
                    }
                }
                None => complain!(
                    self,
                    complaints,
                    "QueueNotify for queue {value}, which does not exist"
                ),
            },
            reg::INTERRUPT_ACK => self.interrupt.ack(value),
            reg::STATUS => self.set_status(value),
            reg::QUEUE_DESC_LOW
            | reg::QUEUE_DESC_HIGH
            | reg::QUEUE_DRIVER_LOW
            | reg::QUEUE_DRIVER_HIGH
            | reg::QUEUE_DEVICE_LOW
            | reg::QUEUE_DEVICE_HIGH => self.set_queue_address(offset, value),
            reg::SHM_SEL => {}
            _ => self.ignored("write to a read-only or unknown register", offset, 4),
        }
    }
}

impl MmioTransport {
    /// Folds a NEEDS_RESET the device raised from its own thread into the
    /// status, so reads report it and writes are refused as for our own.
    fn sync_device_status(&mut self) {
        if self.interrupt.device_needs_reset() {
            self.status |= STATUS_NEEDS_RESET;
        }
    }
}

impl BusDevice for MmioTransport {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        self.sync_device_status();
        if offset >= reg::CONFIG {
            self.device.read_config(offset - reg::CONFIG, data);
            return;
        }
        if data.len() != 4 || !offset.is_multiple_of(4) {
            self.ignored(
                "register read (registers are 32-bit, aligned)",
                offset,
                data.len(),
            );
            data.fill(0);
            return;
        }
        let value = self.read_register(offset);
        data.copy_from_slice(&value.to_le_bytes());
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        self.sync_device_status();
        if offset >= reg::CONFIG {
            if self.status & STATUS_NEEDS_RESET == 0 {
                self.device.write_config(offset - reg::CONFIG, data);
            }
            return;
        }
        let Ok(bytes) = <[u8; 4]>::try_from(data) else {
            self.ignored("register write (registers are 32-bit)", offset, data.len());
            return;
        };
        if !offset.is_multiple_of(4) {
            self.ignored("unaligned register write", offset, 4);
            return;
        }
        let value = u32::from_le_bytes(bytes);
        // A driver that found the device broken may still take its queues
        // down (select, QueueReady 0) before it resets it.
        let teardown = offset == reg::QUEUE_SEL || (offset == reg::QUEUE_READY && value == 0);
        if self.status & STATUS_NEEDS_RESET != 0
            && offset != reg::STATUS
            && offset != reg::INTERRUPT_ACK
            && !teardown
        {
            tracing::debug!(
                "virtio-mmio@{:#x}: +{offset:#x} written while NEEDS_RESET; ignored",
                self.base
            );
            return;
        }
        self.write_register(offset, value);
    }
}

/// The kernel command-line entry that declares a device to Linux's
/// virtio-mmio driver (`CONFIG_VIRTIO_MMIO_CMDLINE_DEVICES`).
pub fn cmdline_entry(base: u64, size: u64, irq: u32) -> String {
    format!("virtio_mmio.device={}K@{base:#x}:{irq}", size >> 10)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::devices::virtio::null::NullDevice;
    use crate::vstate::vm::new_eventfd;
    use vm_memory::GuestAddress;

    fn transport() -> MmioTransport {
        let mem =
            Arc::new(GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 1 << 20)]).expect("memory"));
        let irq = Arc::new(Interrupt::new(new_eventfd().expect("eventfd")));
        MmioTransport::new(
            Box::new(NullDevice::default()),
            mem,
            irq,
            vec![new_eventfd().expect("eventfd")],
            0xc000_1000,
        )
        .expect("transport")
    }

    fn w(t: &mut MmioTransport, offset: u64, value: u32) {
        t.write(offset, &value.to_le_bytes());
    }

    fn r(t: &mut MmioTransport, offset: u64) -> u32 {
        let mut b = [0u8; 4];
        t.read(offset, &mut b);
        u32::from_le_bytes(b)
    }

    fn negotiate(t: &mut MmioTransport) {
        w(t, reg::STATUS, 0);
        w(t, reg::STATUS, STATUS_ACKNOWLEDGE);
        w(t, reg::STATUS, STATUS_ACKNOWLEDGE | STATUS_DRIVER);
        w(t, reg::DRIVER_FEATURES_SEL, 1);
        w(t, reg::DRIVER_FEATURES, 1);
        w(
            t,
            reg::STATUS,
            STATUS_ACKNOWLEDGE | STATUS_DRIVER | STATUS_FEATURES_OK,
        );
    }

    fn set_queue(t: &mut MmioTransport, size: u32, desc: u64, avail: u64, used: u64) {
        w(t, reg::QUEUE_SEL, 0);
        w(t, reg::QUEUE_NUM, size);
        w(t, reg::QUEUE_DESC_LOW, desc as u32);
        w(t, reg::QUEUE_DESC_HIGH, (desc >> 32) as u32);
        w(t, reg::QUEUE_DRIVER_LOW, avail as u32);
        w(t, reg::QUEUE_DRIVER_HIGH, (avail >> 32) as u32);
        w(t, reg::QUEUE_DEVICE_LOW, used as u32);
        w(t, reg::QUEUE_DEVICE_HIGH, (used >> 32) as u32);
        w(t, reg::QUEUE_READY, 1);
    }

    #[test]
    fn identity_registers() {
        let mut t = transport();
        assert_eq!(r(&mut t, reg::MAGIC), MAGIC);
        assert_eq!(r(&mut t, reg::VERSION), 2);
        assert_eq!(r(&mut t, reg::DEVICE_ID), 0);
        w(&mut t, reg::DEVICE_FEATURES_SEL, 1);
        assert_eq!(r(&mut t, reg::DEVICE_FEATURES), 1, "VERSION_1");
        assert_eq!(r(&mut t, reg::QUEUE_NUM_MAX), 256);
    }

    #[test]
    fn valid_handshake_activates() {
        let mut t = transport();
        negotiate(&mut t);
        assert_ne!(r(&mut t, reg::STATUS) & STATUS_FEATURES_OK, 0);
        set_queue(&mut t, 16, 0x1000, 0x2000, 0x3000);
        w(&mut t, reg::STATUS, 0xf);
        assert!(t.is_activated());
        assert_eq!(r(&mut t, reg::STATUS), 0xf);
        w(&mut t, reg::STATUS, 0);
        assert!(!t.is_activated());
        assert_eq!(r(&mut t, reg::QUEUE_READY), 0);
    }

    #[test]
    fn features_without_version_1_are_refused() {
        let mut t = transport();
        w(&mut t, reg::STATUS, STATUS_ACKNOWLEDGE);
        w(&mut t, reg::STATUS, STATUS_ACKNOWLEDGE | STATUS_DRIVER);
        w(
            &mut t,
            reg::STATUS,
            STATUS_ACKNOWLEDGE | STATUS_DRIVER | STATUS_FEATURES_OK,
        );
        assert_eq!(r(&mut t, reg::STATUS) & STATUS_FEATURES_OK, 0);
    }

    #[test]
    fn bad_queues_mark_needs_reset() {
        let mut t = transport();
        negotiate(&mut t);
        w(&mut t, reg::QUEUE_NUM, 3);
        assert_ne!(t.status() & STATUS_NEEDS_RESET, 0, "size 3");
        // Nothing but a reset is accepted now.
        w(&mut t, reg::STATUS, 0xf);
        assert!(!t.is_activated());
        negotiate(&mut t);
        assert_eq!(t.status() & STATUS_NEEDS_RESET, 0, "reset clears it");
        set_queue(&mut t, 16, 0xffff_f000_0000, 0x2000, 0x3000);
        w(&mut t, reg::STATUS, 0xf);
        assert!(!t.is_activated());
        assert_ne!(t.status() & STATUS_NEEDS_RESET, 0, "rings outside memory");
    }

    #[test]
    fn needs_reset_from_the_device_thread_is_reported_until_reset() {
        let mut t = transport();
        negotiate(&mut t);
        set_queue(&mut t, 16, 0x1000, 0x2000, 0x3000);
        w(&mut t, reg::STATUS, 0xf);
        assert!(t.is_activated());
        // What a device's worker does when a chain is unanswerable.
        t.interrupt.signal_needs_reset();
        assert_eq!(r(&mut t, reg::STATUS), 0xf | STATUS_NEEDS_RESET);
        assert_ne!(r(&mut t, reg::INTERRUPT_STATUS) & 2, 0, "config interrupt");
        w(&mut t, reg::QUEUE_SEL, 0);
        w(&mut t, reg::STATUS, 0);
        assert_eq!(r(&mut t, reg::STATUS), 0, "a reset clears it");
        assert!(!t.is_activated());
    }

    #[test]
    fn queue_ready_zero_stops_a_live_device_and_reads_back_zero() {
        let mut t = transport();
        negotiate(&mut t);
        set_queue(&mut t, 16, 0x1000, 0x2000, 0x3000);
        w(&mut t, reg::STATUS, 0xf);
        assert!(t.is_activated());
        w(&mut t, reg::QUEUE_SEL, 0);
        w(&mut t, reg::QUEUE_READY, 0);
        assert_eq!(r(&mut t, reg::QUEUE_READY), 0, "read back at once");
        assert!(!t.is_activated(), "the device stopped serving");
        // virtio-drivers then clears the queue's size and addresses.
        for offset in [reg::QUEUE_NUM, reg::QUEUE_DESC_LOW, reg::QUEUE_DEVICE_HIGH] {
            w(&mut t, offset, 0);
        }
        assert_eq!(t.complaints, 0, "a teardown is no guest error");
        assert_eq!(t.status() & STATUS_NEEDS_RESET, 0, "not an error");
        // A queue that is not ready, or does not exist: nothing happens.
        w(&mut t, reg::QUEUE_READY, 0);
        w(&mut t, reg::QUEUE_SEL, 7);
        w(&mut t, reg::QUEUE_READY, 0);
        assert_eq!(t.status() & STATUS_NEEDS_RESET, 0);
        // Re-initialisation after a reset works as before.
        negotiate(&mut t);
        set_queue(&mut t, 16, 0x1000, 0x2000, 0x3000);
        w(&mut t, reg::STATUS, 0xf);
        assert!(t.is_activated());

        // Teardown is accepted while NEEDS_RESET, too.
        t.interrupt.signal_needs_reset();
        w(&mut t, reg::QUEUE_SEL, 0);
        w(&mut t, reg::QUEUE_READY, 0);
        assert_eq!(r(&mut t, reg::QUEUE_READY), 0);
        assert!(!t.is_activated());
        w(&mut t, reg::STATUS, 0);
        assert_eq!(r(&mut t, reg::STATUS), 0);
    }

    #[test]
    fn garbage_never_panics() {
        let mut t = transport();
        let mut seed = 0x1234_5678u32;
        for _ in 0..20_000 {
            seed ^= seed << 13;
            seed ^= seed >> 17;
            seed ^= seed << 5;
            let offset = u64::from(seed % 0x140);
            let len = [1usize, 2, 4, 8][(seed >> 9) as usize % 4];
            let bytes = seed.wrapping_mul(2_654_435_761).to_le_bytes();
            let mut data = [0u8; 8];
            for (i, d) in data.iter_mut().enumerate() {
                *d = bytes[i % 4];
            }
            if seed & 1 == 0 {
                t.write(offset, &data[..len]);
            } else {
                t.read(offset, &mut data[..len]);
            }
        }
        w(&mut t, reg::STATUS, 0);
        assert_eq!(t.status(), 0);
    }

    #[test]
    fn cmdline_entry_format() {
        assert_eq!(
            cmdline_entry(0xc000_1000, 0x1000, 5),
            "virtio_mmio.device=4K@0xc0001000:5"
        );
    }
}
