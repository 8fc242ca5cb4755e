//! vCPUs: their initial state (CPUID, MSRs, FPU, LAPIC, registers for the
//! entry mode), one thread each running KVM_RUN and dispatching exits to the
//! buses, and the [`Control`] that pauses, resumes and stops them.
//!
//! Stopping a thread blocked in KVM_RUN takes a signal: [`kick_signal`]
//! (SIGRTMIN) is sent with `pthread_kill`, and its handler sets the thread's
//! `kvm_run.immediate_exit`. So a kick that lands just *before* KVM_RUN is
//! entered is not lost: KVM sees `immediate_exit` and returns EINTR at once.
//! Only the boot vCPU gets entry registers; the others stay in the in-kernel
//! LAPIC's wait-for-SIPI state until the guest starts them (INIT-SIPI-SIPI),
//! which is how Linux brings up APs from the MP table.

use std::cell::Cell;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, Once};

use anyhow::{Context, Result, bail};
use kvm_bindings::{CpuId, Msrs, kvm_fpu, kvm_msr_entry, kvm_regs};
use kvm_ioctls::{VcpuExit, VcpuFd};

use super::exit::ExitReason;
use super::vm::Vm;
use crate::boot::EntryPoint;
use crate::boot::layout::{
    BOOT_STACK_POINTER, GDT_START, IDT_START, PML4_START, PVH_INFO_START, ZERO_PAGE_START,
};
use crate::boot::paging::{
    CODE32_SELECTOR, CODE64_SELECTOR, DATA_SELECTOR, GDT, TSS_SELECTOR, segment,
};
use crate::devices::bus::Buses;

const X86_CR0_PE: u64 = 1 << 0;
const X86_CR0_ET: u64 = 1 << 4;
const X86_CR0_PG: u64 = 1 << 31;
const X86_CR4_PAE: u64 = 1 << 5;
const EFER_LME: u64 = 1 << 8;
const EFER_LMA: u64 = 1 << 10;

const MSR_IA32_TSC: u32 = 0x10;
const MSR_IA32_SYSENTER_CS: u32 = 0x174;
const MSR_IA32_SYSENTER_ESP: u32 = 0x175;
const MSR_IA32_SYSENTER_EIP: u32 = 0x176;
const MSR_IA32_MISC_ENABLE: u32 = 0x1a0;
const MSR_MTRR_DEF_TYPE: u32 = 0x2ff;
const MSR_STAR: u32 = 0xc000_0081;
const MSR_LSTAR: u32 = 0xc000_0082;
const MSR_CSTAR: u32 = 0xc000_0083;
const MSR_SYSCALL_MASK: u32 = 0xc000_0084;
const MSR_KERNEL_GS_BASE: u32 = 0xc000_0102;
/// MISC_ENABLE.FAST_STRING: Linux expects it set by firmware.
const MISC_ENABLE_FAST_STRING: u64 = 1;
/// MTRRs enabled, default type write-back: without firmware nobody else
/// would set it and the guest would run uncached.
const MTRR_ENABLE_WB: u64 = (1 << 11) | 6;

const APIC_LVT0: usize = 0x350;
const APIC_LVT1: usize = 0x360;
const APIC_MODE_NMI: u32 = 0x4;
const APIC_MODE_EXTINT: u32 = 0x7;

const KVM_SYSTEM_EVENT_SHUTDOWN: u32 = 1;
const KVM_SYSTEM_EVENT_RESET: u32 = 2;
const KVM_SYSTEM_EVENT_CRASH: u32 = 3;

pub struct Vcpu {
    fd: VcpuFd,
    index: u8,
}

impl Vcpu {
    /// Creates vCPU `index` and gives it everything but entry registers.
    pub fn new(vm: &Vm, index: u8, vcpus: u8, supported: &CpuId) -> Result<Vcpu> {
        let fd = vm
            .fd()
            .create_vcpu(u64::from(index))
            .with_context(|| format!("KVM_CREATE_VCPU {index}"))?;
        let mut cpuid = supported.clone();
        super::cpuid::filter(&mut cpuid, index, vcpus);
        fd.set_cpuid2(&cpuid)
            .with_context(|| format!("KVM_SET_CPUID2 on vCPU {index}"))?;
        let vcpu = Vcpu { fd, index };
        vcpu.set_msrs()?;
        vcpu.set_lapic()?;
        let fpu = kvm_fpu {
            fcw: 0x37f,
            mxcsr: 0x1f80,
            ..Default::default()
        };
        vcpu.fd
            .set_fpu(&fpu)
            .with_context(|| format!("KVM_SET_FPU on vCPU {index}"))?;
        Ok(vcpu)
    }

    fn set_msrs(&self) -> Result<()> {
        let entries: Vec<kvm_msr_entry> = [
            (MSR_IA32_SYSENTER_CS, 0),
            (MSR_IA32_SYSENTER_ESP, 0),
            (MSR_IA32_SYSENTER_EIP, 0),
            (MSR_STAR, 0),
            (MSR_CSTAR, 0),
            (MSR_KERNEL_GS_BASE, 0),
            (MSR_SYSCALL_MASK, 0),
            (MSR_LSTAR, 0),
            (MSR_IA32_TSC, 0),
            (MSR_IA32_MISC_ENABLE, MISC_ENABLE_FAST_STRING),
            (MSR_MTRR_DEF_TYPE, MTRR_ENABLE_WB),
        ]
        .into_iter()
        .map(|(index, data)| kvm_msr_entry {
            index,
            data,
            ..Default::default()
        })
        .collect();
        let msrs = Msrs::from_entries(&entries).context("building the MSR list")?;
        let set = self
            .fd
            .set_msrs(&msrs)
            .with_context(|| format!("KVM_SET_MSRS on vCPU {}", self.index))?;
        if set != entries.len() {
            let failed = entries.get(set).map(|e| e.index).unwrap_or(0);
            bail!(
                "KVM_SET_MSRS on vCPU {}: only {set} of {} MSRs set; MSR {failed:#x} refused",
                self.index,
                entries.len()
            );
        }
        Ok(())
    }

    /// LINT0 delivers the PIC's ExtINT, LINT1 NMIs: the virtual-wire setup a
    /// BIOS leaves behind, and what the MP table tells the guest.
    fn set_lapic(&self) -> Result<()> {
        let mut lapic = self
            .fd
            .get_lapic()
            .with_context(|| format!("KVM_GET_LAPIC on vCPU {}", self.index))?;
        for (offset, mode) in [(APIC_LVT0, APIC_MODE_EXTINT), (APIC_LVT1, APIC_MODE_NMI)] {
            let mut raw = [0u8; 4];
            for (i, b) in raw.iter_mut().enumerate() {
                *b = lapic.regs[offset + i] as u8;
            }
            let value = (u32::from_le_bytes(raw) & !0x700) | (mode << 8);
            for (i, b) in value.to_le_bytes().iter().enumerate() {
                lapic.regs[offset + i] = *b as _;
            }
        }
        self.fd
            .set_lapic(&lapic)
            .with_context(|| format!("KVM_SET_LAPIC on vCPU {}", self.index))
    }

    /// Registers and segments for the boot vCPU's entry mode.
    pub fn set_entry(&self, entry: EntryPoint) -> Result<()> {
        let mut sregs = self.fd.get_sregs().context("KVM_GET_SREGS")?;
        sregs.gdt.base = GDT_START;
        sregs.gdt.limit = (GDT.len() * 8 - 1) as u16;
        sregs.idt.base = IDT_START;
        sregs.idt.limit = 7;
        let data = segment(DATA_SELECTOR);
        sregs.ds = data;
        sregs.es = data;
        sregs.fs = data;
        sregs.gs = data;
        sregs.ss = data;
        sregs.tr = segment(TSS_SELECTOR);
        let mut regs = kvm_regs {
            rflags: 0x2,
            ..Default::default()
        };
        match entry {
            EntryPoint::Linux64 { entry } => {
                sregs.cs = segment(CODE64_SELECTOR);
                sregs.cr3 = PML4_START;
                sregs.cr4 |= X86_CR4_PAE;
                sregs.cr0 |= X86_CR0_PE | X86_CR0_ET | X86_CR0_PG;
                sregs.efer |= EFER_LME | EFER_LMA;
                regs.rip = entry.0;
                regs.rsp = BOOT_STACK_POINTER;
                regs.rbp = BOOT_STACK_POINTER;
                regs.rsi = ZERO_PAGE_START;
            }
            EntryPoint::Pvh { entry } => {
                sregs.cs = segment(CODE32_SELECTOR);
                sregs.cr0 = X86_CR0_PE | X86_CR0_ET;
                sregs.cr4 = 0;
                sregs.efer = 0;
                regs.rip = entry.0;
                regs.rbx = PVH_INFO_START;
            }
        }
        self.fd.set_sregs(&sregs).context("KVM_SET_SREGS")?;
        self.fd.set_regs(&regs).context("KVM_SET_REGS")
    }

    /// The thread body: runs until the VM ends, then returns.
    pub fn run(mut self, control: Arc<Control>, buses: Arc<Buses>) {
        let run = self.fd.get_kvm_run();
        IMMEDIATE_EXIT.with(|c| c.set(&mut run.immediate_exit as *mut u8));
        control.register_current_thread();
        loop {
            if control.checkpoint() {
                break;
            }
            let outcome = match self.fd.run() {
                Ok(VcpuExit::IoIn(port, data)) => {
                    if !buses.pio.read(u64::from(port), data) {
                        data.fill(0xff);
                    }
                    Outcome::Continue
                }
                Ok(VcpuExit::IoOut(port, data)) => {
                    buses.pio.write(u64::from(port), data);
                    Outcome::Continue
                }
                Ok(VcpuExit::MmioRead(addr, data)) => {
                    if !buses.mmio.read(addr, data) {
                        data.fill(0xff);
                    }
                    Outcome::Continue
                }
                Ok(VcpuExit::MmioWrite(addr, data)) => {
                    buses.mmio.write(addr, data);
                    Outcome::Continue
                }
                // With the in-kernel irqchip HLT is handled by KVM; an exit
                // here is spurious.
                Ok(VcpuExit::Hlt) => Outcome::Continue,
                Ok(VcpuExit::Shutdown) => {
                    Outcome::Exit(ExitReason::TripleFault { vcpu: self.index })
                }
                Ok(VcpuExit::SystemEvent(kind, _)) => Outcome::Exit(match kind {
                    KVM_SYSTEM_EVENT_SHUTDOWN => ExitReason::PowerOff,
                    KVM_SYSTEM_EVENT_RESET => ExitReason::Reset,
                    KVM_SYSTEM_EVENT_CRASH => ExitReason::Crash { vcpu: self.index },
                    other => ExitReason::Error {
                        vcpu: Some(self.index),
                        message: format!("unknown KVM system event {other}"),
                    },
                }),
                Ok(VcpuExit::InternalError) => Outcome::InternalError,
                Ok(VcpuExit::FailEntry(reason, _)) => Outcome::Exit(ExitReason::FailEntry {
                    vcpu: self.index,
                    reason,
                }),
                Ok(other) => Outcome::Exit(ExitReason::Error {
                    vcpu: Some(self.index),
                    message: format!("unexpected vCPU exit {other:?}"),
                }),
                Err(e) if e.errno() == libc::EINTR || e.errno() == libc::EAGAIN => Outcome::Kicked,
                Err(e) => Outcome::Exit(ExitReason::Error {
                    vcpu: Some(self.index),
                    message: format!("KVM_RUN: {e}"),
                }),
            };
            match outcome {
                Outcome::Continue => {}
                Outcome::Kicked => self.fd.set_kvm_immediate_exit(0),
                Outcome::InternalError => {
                    // SAFETY: exit_reason is KVM_EXIT_INTERNAL_ERROR, so the
                    // `internal` member of the union is the one KVM filled.
                    let suberror =
                        unsafe { self.fd.get_kvm_run().__bindgen_anon_1.internal.suberror };
                    control.request_exit(ExitReason::InternalError {
                        vcpu: self.index,
                        suberror,
                    });
                }
                Outcome::Exit(reason) => control.request_exit(reason),
            }
        }
        // The kvm_run mapping goes away with the fd; the handler must not
        // touch it afterwards.
        IMMEDIATE_EXIT.with(|c| c.set(std::ptr::null_mut()));
    }
}

enum Outcome {
    Continue,
    Kicked,
    InternalError,
    Exit(ExitReason),
}

thread_local! {
    /// This thread's `kvm_run.immediate_exit`, for the kick handler. A const
    /// initializer and no destructor: reading it is async-signal-safe.
    static IMMEDIATE_EXIT: Cell<*mut u8> = const { Cell::new(std::ptr::null_mut()) };
}

/// The real-time signal that kicks vCPU threads out of KVM_RUN.
pub fn kick_signal() -> libc::c_int {
    libc::SIGRTMIN()
}

extern "C" fn on_kick(_: libc::c_int) {
    let ptr = IMMEDIATE_EXIT.with(|c| c.get());
    if !ptr.is_null() {
        // SAFETY: the pointer is this thread's live kvm_run mapping (cleared
        // before the vCPU fd is dropped); a volatile byte store is
        // async-signal-safe.
        unsafe { std::ptr::write_volatile(ptr, 1) };
    }
}

/// Installs the kick handler once per process. No SA_RESTART: KVM_RUN must
/// return EINTR.
pub fn install_kick_handler() -> Result<()> {
    static ONCE: Once = Once::new();
    static mut RESULT: i32 = 0;
    ONCE.call_once(|| {
        // SAFETY: a zeroed sigaction with a handler of the right signature;
        // sigemptyset and sigaction only write the struct and the table.
        unsafe {
            let mut action: libc::sigaction = std::mem::zeroed();
            action.sa_sigaction = on_kick as extern "C" fn(libc::c_int) as usize;
            libc::sigemptyset(&mut action.sa_mask);
            action.sa_flags = 0;
            if libc::sigaction(kick_signal(), &action, std::ptr::null_mut()) != 0 {
                RESULT = std::io::Error::last_os_error().raw_os_error().unwrap_or(-1);
            }
        }
    });
    // SAFETY: written only inside call_once, which has completed here.
    let errno = unsafe { RESULT };
    if errno != 0 {
        bail!(
            "installing the vCPU kick handler: {}",
            std::io::Error::from_raw_os_error(errno)
        );
    }
    Ok(())
}

/// Shared by the vCPU threads, the devices that end the VM (i8042) and the
/// owner of the VM: the exit reason (first one wins), pause state, and who
/// to kick.
pub struct Control {
    /// Set when anything needs a vCPU's attention at its next checkpoint.
    attention: AtomicBool,
    state: Mutex<State>,
    changed: Condvar,
}

#[derive(Default)]
struct State {
    exit: Option<ExitReason>,
    pause_requested: bool,
    parked: usize,
    threads: Vec<libc::pthread_t>,
    /// vCPU threads that have not returned yet.
    running: usize,
}

impl Control {
    pub fn new(vcpus: usize) -> Arc<Control> {
        Arc::new(Control {
            attention: AtomicBool::new(false),
            state: Mutex::new(State {
                running: vcpus,
                ..Default::default()
            }),
            changed: Condvar::new(),
        })
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn register_current_thread(&self) {
        // SAFETY: pthread_self has no preconditions.
        let me = unsafe { libc::pthread_self() };
        self.lock().threads.push(me);
    }

    /// Ends the VM with `reason` unless it already has one; kicks every vCPU.
    pub fn request_exit(&self, reason: ExitReason) {
        let mut s = self.lock();
        if s.exit.is_none() {
            s.exit = Some(reason);
        }
        self.attention.store(true, Ordering::SeqCst);
        kick_all(&s.threads);
        drop(s);
        self.changed.notify_all();
    }

    pub fn exit_reason(&self) -> Option<ExitReason> {
        self.lock().exit.clone()
    }

    /// Called by a vCPU before each KVM_RUN; true when it must return. Parks
    /// the thread while a pause is in effect.
    fn checkpoint(&self) -> bool {
        if !self.attention.load(Ordering::SeqCst) {
            return false;
        }
        let mut s = self.lock();
        if s.pause_requested && s.exit.is_none() {
            s.parked += 1;
            self.changed.notify_all();
            while s.pause_requested && s.exit.is_none() {
                s = self.changed.wait(s).unwrap_or_else(|e| e.into_inner());
            }
            s.parked -= 1;
        }
        s.exit.is_some()
    }

    /// Stops every vCPU outside KVM_RUN; returns once all are parked (or the
    /// VM ended meanwhile).
    pub fn pause(&self) {
        let mut s = self.lock();
        s.pause_requested = true;
        self.attention.store(true, Ordering::SeqCst);
        kick_all(&s.threads);
        while s.parked < s.running && s.exit.is_none() {
            s = self.changed.wait(s).unwrap_or_else(|e| e.into_inner());
        }
    }

    pub fn resume(&self) {
        let mut s = self.lock();
        s.pause_requested = false;
        let ending = s.exit.is_some();
        self.attention.store(ending, Ordering::SeqCst);
        drop(s);
        self.changed.notify_all();
    }

    pub fn is_paused(&self) -> bool {
        let s = self.lock();
        s.pause_requested && s.parked == s.running
    }

    /// Blocks until the VM has an exit reason.
    pub fn wait_exit(&self) -> ExitReason {
        let mut s = self.lock();
        loop {
            if let Some(r) = &s.exit {
                return r.clone();
            }
            s = self.changed.wait(s).unwrap_or_else(|e| e.into_inner());
        }
    }

    /// A vCPU thread is about to return.
    pub fn thread_done(&self) {
        let mut s = self.lock();
        // SAFETY: pthread_self has no preconditions.
        let me = unsafe { libc::pthread_self() };
        s.threads.retain(|t| *t != me);
        s.running = s.running.saturating_sub(1);
        drop(s);
        self.changed.notify_all();
    }
}

fn kick_all(threads: &[libc::pthread_t]) {
    for t in threads {
        // SAFETY: every listed thread is alive: a vCPU removes itself (under
        // the same lock) before it returns, and only then can it be joined.
        unsafe { libc::pthread_kill(*t, kick_signal()) };
    }
}
