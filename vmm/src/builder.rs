//! The only place a microVM is assembled: check the request, guest memory,
//! the VM with its irqchip, devices on the buses, the kernel and its boot
//! structures, vCPUs, then one thread per vCPU. Everything that can fail
//! does so before the first guest instruction, with the step named; the
//! seccomp filter goes on last, after every fd is open and registered.

use std::path::Path;
use std::sync::{Arc, Condvar, Mutex, OnceLock, mpsc};
use std::time::Instant;

use anyhow::{Context, Result, bail};
use kvm_bindings::KVM_MAX_CPUID_ENTRIES;
use kvm_ioctls::Kvm;
use linux_loader::cmdline::Cmdline;

use super::boot::layout::{
    BOOT_TIMER_SIZE, BOOT_TIMER_START, CMDLINE_MAX_SIZE, IRQ_MAX, MAX_VCPUS, SERIAL_IRQ,
    VIRTIO_IRQ_START, VIRTIO_MMIO_SIZE, VIRTIO_MMIO_START,
};
use super::boot::{self, BootSpec};
use super::config::VmmConfig;
use super::devices::bus::Buses;
use super::devices::legacy::boot_timer::BootTimer;
use super::devices::legacy::cmos::{CMOS_BASE, CMOS_LEN, Cmos};
use super::devices::legacy::i8042::{I8042, I8042_BASE, I8042_LEN};
use super::devices::legacy::serial::{COM1_BASE, COM1_LEN, SerialDevice};
use super::devices::virtio::Interrupt;
use super::devices::virtio::mmio::{MmioTransport, cmdline_entry, reg};
use super::memory::GuestRam;
use super::privilege;
use super::seccomp::{Filters, Seccomp};
use super::vmm::Vmm;
use super::vstate::exit::ExitReason;
use super::vstate::vcpu::{self, Control, Vcpu};
use super::vstate::vm::Vm;

/// vCPU threads run guest code and device emulation only; KVM_RUN itself
/// runs on the kernel stack.
const VCPU_STACK_SIZE: usize = 256 * 1024;

pub const KVM_DEVICE: &str = "/dev/kvm";

/// Builds and starts the VM described by `config`, with the seccomp filter
/// on the VMM's own threads only ([`Seccomp::VmmThreads`]): what the
/// in-process backend needs, since the shim's other threads keep running.
pub fn build(config: VmmConfig) -> Result<Vmm> {
    build_with(config, Seccomp::VmmThreads)
}

/// Builds and starts the VM described by `config`, with the seccomp filter
/// placed as `seccomp` says.
pub fn build_with(config: VmmConfig, seccomp: Seccomp) -> Result<Vmm> {
    let started = Instant::now();
    let VmmConfig {
        kernel,
        initramfs,
        cmdline,
        vcpus,
        memory_mib,
        serial,
        boot: protocol,
        virtio,
        user,
    } = config;
    if vcpus == 0 || vcpus > MAX_VCPUS {
        bail!("{vcpus} vCPUs requested; the built-in VMM supports 1..={MAX_VCPUS}");
    }
    let max_devices = (IRQ_MAX - VIRTIO_IRQ_START + 1) as usize;
    if virtio.len() > max_devices {
        bail!(
            "{} virtio devices requested; at most {max_devices} fit",
            virtio.len()
        );
    }
    // Cheap checks on the files first, so a typo costs no KVM set-up.
    check_file(&kernel, "kernel")?;
    if let Some(i) = &initramfs {
        check_file(i, "initramfs")?;
    }

    let ram = GuestRam::new(memory_mib)?;
    let kvm = Kvm::new().with_context(|| format!("opening {KVM_DEVICE}"))?;
    vcpu::install_kick_handler()?;
    let vm = Vm::new(&kvm)?;
    vm.register_memory(&ram)?;
    let memory = ram.memory().clone();
    let control = Control::new(usize::from(vcpus));

    let mut cmdline = Cmdline::try_from(&cmdline, CMDLINE_MAX_SIZE)
        .map_err(|e| anyhow::anyhow!("kernel command line: {e}"))?;
    let mut buses = Buses::default();
    let serial = SerialDevice::new(vm.irqfd(SERIAL_IRQ)?, serial);
    buses
        .pio
        .insert(COM1_BASE, COM1_LEN, Arc::new(Mutex::new(serial)))?;
    buses.pio.insert(
        I8042_BASE,
        I8042_LEN,
        Arc::new(Mutex::new(I8042::new(control.clone()))),
    )?;
    buses
        .pio
        .insert(CMOS_BASE, CMOS_LEN, Arc::new(Mutex::new(Cmos::default())))?;
    let boot_time = Arc::new(OnceLock::new());
    buses.mmio.insert(
        BOOT_TIMER_START,
        BOOT_TIMER_SIZE,
        Arc::new(Mutex::new(BootTimer::new(started, boot_time.clone()))),
    )?;
    for (i, device) in virtio.into_iter().enumerate() {
        let base = VIRTIO_MMIO_START + i as u64 * VIRTIO_MMIO_SIZE;
        let irq = VIRTIO_IRQ_START + i as u32;
        let notifiers = (0..device.queue_max_sizes().len())
            .map(|q| vm.ioeventfd(base + reg::QUEUE_NOTIFY, q as u32))
            .collect::<Result<Vec<_>>>()?;
        let interrupt = Arc::new(Interrupt::new(vm.irqfd(irq)?));
        let transport = MmioTransport::new(device, memory.clone(), interrupt, notifiers, base)?;
        buses
            .mmio
            .insert(base, VIRTIO_MMIO_SIZE, Arc::new(Mutex::new(transport)))?;
        cmdline
            .insert_str(cmdline_entry(base, VIRTIO_MMIO_SIZE, irq))
            .map_err(|e| anyhow::anyhow!("adding virtio device {i} to the command line: {e}"))?;
    }

    let entry = boot::load(
        &memory,
        &BootSpec {
            kernel: &kernel,
            initramfs: initramfs.as_deref(),
            cmdline: &cmdline,
            vcpus,
            ram_size: memory_mib << 20,
            protocol,
        },
    )?;

    let supported = kvm
        .get_supported_cpuid(KVM_MAX_CPUID_ENTRIES)
        .context("KVM_GET_SUPPORTED_CPUID")?;
    let mut cpus = Vec::with_capacity(usize::from(vcpus));
    for index in 0..vcpus {
        cpus.push(Vcpu::new(&vm, index, vcpus, &supported)?);
    }
    cpus[0].set_entry(entry)?;

    let buses = Arc::new(buses);
    let filters = match seccomp {
        Seccomp::Off => None,
        Seccomp::VmmThreads | Seccomp::Process => Some(Arc::new(Filters::new()?)),
    };
    // Process-wide, this (still the only) thread drops its privileges and
    // installs the filter, and the vCPU threads inherit both; otherwise
    // each vCPU thread does so for itself.
    let process_wide = seccomp == Seccomp::Process;
    if process_wide {
        privilege::drop_current_thread(user).context("dropping the VMM's privileges")?;
        if let Some(f) = &filters {
            f.apply_to_process()?;
        }
    }
    let per_thread = filters.filter(|_| !process_wide);
    // Each vCPU thread reports whether its filter is on, then waits at the
    // gate, so none enters KVM_RUN until all are filtered (or the VM has
    // been called off, which their first checkpoint sees).
    let (installed_tx, installed_rx) = mpsc::channel::<Result<()>>();
    let gate = Arc::new(Gate::default());
    let mut threads = Vec::with_capacity(cpus.len());
    let mut failure = None;
    for (index, cpu) in cpus.into_iter().enumerate() {
        let (control_t, buses_t) = (control.clone(), buses.clone());
        let (filters_t, installed_t, gate_t) =
            (per_thread.clone(), installed_tx.clone(), gate.clone());
        let spawned = std::thread::Builder::new()
            .name(format!("vcpu{index}"))
            .stack_size(VCPU_STACK_SIZE)
            .spawn(move || {
                let dropped = if process_wide {
                    Ok(())
                } else {
                    privilege::drop_current_thread(user)
                        .with_context(|| format!("vCPU {index}: dropping privileges"))
                };
                let installed = dropped.and_then(|()| match &filters_t {
                    Some(f) => f
                        .apply_to_current_thread()
                        .with_context(|| format!("vCPU {index}")),
                    None => Ok(()),
                });
                let _ = installed_t.send(installed);
                gate_t.wait();
                cpu.run(control_t.clone(), buses_t);
                control_t.thread_done();
            });
        match spawned {
            Ok(t) => threads.push(t),
            Err(e) => {
                failure = Some(
                    anyhow::Error::new(e).context(format!("spawning the thread for vCPU {index}")),
                );
                break;
            }
        }
    }
    drop(installed_tx);
    if failure.is_none() {
        for _ in 0..threads.len() {
            match installed_rx.recv() {
                Ok(Ok(())) => {}
                Ok(Err(e)) => {
                    failure = Some(e);
                    break;
                }
                Err(_) => {
                    failure = Some(anyhow::anyhow!(
                        "a vCPU thread ended before installing its seccomp filter"
                    ));
                    break;
                }
            }
        }
    }
    if let Some(e) = failure {
        // Stop and join the threads already running before failing.
        control.request_exit(ExitReason::Stopped);
        gate.open();
        let mut partial = Vmm {
            control,
            threads,
            boot_time,
            started,
            _buses: buses,
            _vm: vm,
            ram,
        };
        partial.join();
        return Err(e);
    }
    gate.open();
    tracing::debug!(
        "VM started in {} us: {vcpus} vCPUs, {memory_mib} MiB, {entry:?}, seccomp {seccomp:?}",
        started.elapsed().as_micros()
    );
    Ok(Vmm {
        control,
        threads,
        boot_time,
        started,
        _buses: buses,
        _vm: vm,
        ram,
    })
}

/// Holds vCPU threads until the builder lets them run.
#[derive(Default)]
struct Gate {
    open: Mutex<bool>,
    opened: Condvar,
}

impl Gate {
    fn open(&self) {
        *self.open.lock().unwrap_or_else(|e| e.into_inner()) = true;
        self.opened.notify_all();
    }

    fn wait(&self) {
        let mut open = self.open.lock().unwrap_or_else(|e| e.into_inner());
        while !*open {
            open = self.opened.wait(open).unwrap_or_else(|e| e.into_inner());
        }
    }
}

fn check_file(path: &Path, what: &str) -> Result<()> {
    match std::fs::metadata(path) {
        Ok(m) if m.is_file() => Ok(()),
        Ok(_) => bail!("{what} {} is not a regular file", path.display()),
        Err(e) => Err(e).with_context(|| format!("{what} {}", path.display())),
    }
}
