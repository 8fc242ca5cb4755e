//! `vmpod-vmm`: the built-in VMM as a process of its own, for integration
//! tests and `vmpod bench vmm`. Boots a kernel, copies the guest's serial
//! output to a file or stdout, and exits with a status that says how the
//! guest ended: 0 for a reset (i8042) or power-off, 2 for a triple fault,
//! 3 for a KVM internal error / failed entry, 1 for anything the VMM could
//! not do (bad kernel, too much memory, no /dev/kvm), with the reason on
//! stderr.

use std::fs::OpenOptions;
use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, Result};
use clap::{Parser, ValueEnum};

use vmpod_vmm::devices::legacy::serial::Output;
use vmpod_vmm::devices::virtio::VirtioDevice;
use vmpod_vmm::devices::virtio::block::{BlockDevice, DiskConfig};
use vmpod_vmm::devices::virtio::fs::{FsConfig, FsDevice};
use vmpod_vmm::devices::virtio::net::{NetBackend, NetConfig, NetDevice};
use vmpod_vmm::devices::virtio::null::NullDevice;
use vmpod_vmm::devices::virtio::vhost_user::DEFAULT_TIMEOUT;
use vmpod_vmm::devices::virtio::vsock::{VsockConfig, VsockDevice};
use vmpod_vmm::privilege::Credentials;
use vmpod_vmm::{BootProtocol, Seccomp, VmmConfig};

#[derive(Parser, Debug)]
#[command(
    name = "vmpod-vmm",
    version,
    about = "Boot a kernel in vmpod's built-in KVM VMM"
)]
struct Args {
    /// ELF vmlinux (64-bit entry or PVH note) or bzImage.
    #[arg(long)]
    pub kernel: PathBuf,
    #[arg(long)]
    pub initramfs: Option<PathBuf>,
    #[arg(long, default_value_t = 128)]
    pub memory_mib: u64,
    #[arg(long, default_value_t = 1)]
    pub vcpus: u8,
    #[arg(long, default_value = "console=ttyS0 reboot=k panic=1")]
    pub cmdline: String,
    /// Where the guest's serial output goes: a file (appended), or `-` for stdout.
    #[arg(long, default_value = "-")]
    pub serial: String,
    /// Entry path for an ELF kernel.
    #[arg(long, value_enum, default_value_t = Boot::Auto)]
    pub boot: Boot,
    /// Print one `vmpod-vmm-stats: {json}` line on stderr at the end.
    #[arg(long)]
    pub stats: bool,
    /// A virtio-blk disk backed by FILE (`FILE,ro` for read-only); repeatable.
    /// Disks follow the placeholder devices on the MMIO bus.
    #[arg(long = "disk", value_name = "FILE[,ro]")]
    pub disks: Vec<DiskConfig>,
    /// A virtio-vsock device with guest CID N whose host end is the unix
    /// socket PATH (Firecracker's hybrid vsock: `CONNECT <port>\n` on PATH
    /// reaches a guest listener; guest connections to host port P reach
    /// `PATH_P`). It follows the disks on the MMIO bus.
    #[arg(long, value_name = "cid=N,uds=PATH")]
    pub vsock: Option<VsockConfig>,
    /// A virtio-fs device served by the vhost-user backend (virtiofsd)
    /// listening on PATH, mounted in the guest by TAG; repeatable. Follows
    /// the disks on the MMIO bus. The backend must be running: it is
    /// connected before the guest starts.
    #[arg(long = "fs", value_name = "socket=PATH,tag=TAG")]
    pub fs: Vec<FsConfig>,
    /// A virtio-net device on a TAP; repeatable. `tap=NAME` attaches to the
    /// existing TAP NAME in vmpod-vmm's network namespace (`ip tuntap add
    /// dev NAME mode tap`; it is never created); `fd=N` takes over the
    /// inherited TAP fd N, opened with IFF_TAP | IFF_NO_PI | IFF_VNET_HDR.
    /// `mac=` sets the guest's address (default: random, locally
    /// administered). Network devices follow the disks on the MMIO bus, in
    /// the order given.
    #[arg(long = "net", value_name = "tap=NAME|fd=N[,mac=MAC]")]
    pub nets: Vec<NetConfig>,
    /// Attach N placeholder virtio-mmio devices (ID 0), to exercise the
    /// transport with test guests.
    #[arg(long, hide = true, default_value_t = 0)]
    pub test_virtio_null: usize,
    /// Run the VM as this unprivileged user once it is set up (every
    /// capability is dropped in any case; see `privilege.rs`).
    #[arg(long, value_name = "UID:GID")]
    pub user: Option<Credentials>,
    /// Bound every exchange with a vhost-user backend by this many ms
    /// instead of the default 5 s, so tests of a stalling backend are quick.
    #[arg(long, hide = true)]
    pub test_vhost_user_timeout_ms: Option<u64>,
    /// Run without the seccomp allow-list (for debugging a filtered
    /// syscall, e.g. under `strace -f`).
    #[arg(long)]
    pub no_seccomp: bool,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum Boot {
    Auto,
    Linux64,
    Pvh,
}

fn main() -> ExitCode {
    let args = Args::parse();
    // A plain level, not an EnvFilter: its directive parser and regex
    // engine are a few hundred KiB of code the process would fault in on
    // every start, and the standalone VMM has one module worth filtering.
    let level = std::env::var("VMPOD_VMM_LOG")
        .ok()
        .and_then(|v| v.parse::<tracing_subscriber::filter::LevelFilter>().ok())
        .unwrap_or(tracing_subscriber::filter::LevelFilter::INFO);
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(false)
        .with_target(false)
        .with_max_level(level)
        .init();
    match run(args) {
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            eprintln!("vmpod-vmm: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(args: Args) -> Result<u8> {
    let serial: Output = if args.serial == "-" {
        Box::new(std::io::stdout())
    } else {
        Box::new(
            OpenOptions::new()
                .create(true)
                .append(true)
                .open(&args.serial)
                .with_context(|| format!("opening serial output {}", args.serial))?,
        )
    };
    let mut virtio: Vec<Box<dyn VirtioDevice>> = (0..args.test_virtio_null)
        .map(|_| Box::new(NullDevice::default()) as Box<dyn VirtioDevice>)
        .collect();
    for disk in &args.disks {
        virtio.push(Box::new(BlockDevice::open(disk)?));
    }
    if let Some(vsock) = args.vsock {
        virtio.push(Box::new(VsockDevice::new(vsock)?));
    }
    let vhost_user_timeout = args
        .test_vhost_user_timeout_ms
        .map_or(DEFAULT_TIMEOUT, Duration::from_millis);
    for fs in &args.fs {
        virtio.push(Box::new(FsDevice::connect_with_timeout(
            fs,
            vhost_user_timeout,
        )?));
    }
    let mut fds: Vec<_> = args
        .nets
        .iter()
        .filter_map(|n| match n.backend {
            NetBackend::Fd(fd) => Some(fd),
            NetBackend::Tap(_) => None,
        })
        .collect();
    fds.sort_unstable();
    if let Some(w) = fds.windows(2).find(|w| w[0] == w[1]) {
        anyhow::bail!("TAP fd {} is given to more than one --net device", w[0]);
    }
    for net in &args.nets {
        virtio.push(Box::new(NetDevice::open(net)?));
    }
    let seccomp = if args.no_seccomp {
        Seccomp::Off
    } else {
        Seccomp::Process
    };
    let mut vmm = vmpod_vmm::build_with(
        VmmConfig {
            kernel: args.kernel,
            initramfs: args.initramfs,
            cmdline: args.cmdline,
            vcpus: args.vcpus,
            memory_mib: args.memory_mib,
            serial,
            boot: match args.boot {
                Boot::Auto => BootProtocol::Auto,
                Boot::Linux64 => BootProtocol::Linux64,
                Boot::Pvh => BootProtocol::Pvh,
            },
            virtio,
            user: args.user,
        },
        seccomp,
    )?;
    let reason = vmm.wait();
    let code = reason.exit_code();
    if code == 0 {
        eprintln!("vmpod-vmm: {reason}");
    } else {
        eprintln!("vmpod-vmm: guest failed: {reason}");
    }
    if args.stats {
        let stats = serde_json::json!({
            "exit": reason.name(),
            "boot_timer_us": vmm.boot_time().map(|d| d.as_micros() as u64),
            "guest_resident_kib": vmm.guest_resident_bytes() >> 10,
            "run_us": vmm.started().elapsed().as_micros() as u64,
        });
        let _ = writeln!(std::io::stderr(), "vmpod-vmm-stats: {stats}");
    }
    Ok(code as u8)
}
