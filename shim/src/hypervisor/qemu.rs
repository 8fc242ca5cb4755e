//! QEMU `-M microvm` as a VMM process.
//!
//! The command line encodes what was found to work on these hosts:
//! `acpi=off` (otherwise QEMU does not put `virtio_mmio.device=` on the kernel
//! command line and an ACPI-less guest sees no virtio devices), pit/pic/rtc
//! (TCG hangs at TSC calibration without them), and memfd guest memory with
//! `share=on` (vhost-user backends must map it; without it vsock and
//! virtio-fs hang silently).

use std::ffi::OsString;
use std::os::fd::{AsRawFd, RawFd};
use std::path::{Path, PathBuf};
use std::process::ExitStatus;
use std::time::Duration;

use anyhow::{Result, bail};
use tokio::process::Command;

use super::{BoxFuture, Console, Hypervisor, NetCard, RunningVm, VirtioFs, VmConfig, Vsock};
use crate::confine::{self, Confinement};
use crate::process::{ExitSender, Process, log_tail};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Accel {
    Tcg,
    Kvm,
}

pub struct Qemu {
    pub binary: PathBuf,
    pub accel: Accel,
}

impl Qemu {
    pub fn new(binary: PathBuf, accel: Accel) -> Self {
        Qemu { binary, accel }
    }
}

/// QEMU's TCG translation buffer, in MiB: part of the host overhead the
/// pod's memory limit allows for (the daemon's `sandbox/resources.rs`).
pub const TCG_TB_MIB: u64 = 256;

/// The process name used in logs and on the exit channel.
pub const PROCESS_NAME: &str = "qemu";

/// Stands for the TAP's fd number in a command line made from a config
/// without an open TAP (`--print-commands`): whoever runs that argv opens
/// the TAP and puts its number here. Not a number, so an argv run as it
/// is fails in QEMU's option parsing instead of using whatever fd happens
/// to be open under that number.
pub const TAP_FD_PLACEHOLDER: &str = "TAP_FD";

/// The character device QEMU's `vhost=on` opens; without it QEMU refuses
/// the netdev instead of falling back.
pub const VHOST_NET: &str = "/dev/vhost-net";

/// Whether QEMU can move the card's data path into the host kernel here.
pub fn vhost_net_available() -> bool {
    Path::new(VHOST_NET).exists()
}

/// QEMU's arguments for `config`; pure, so it can be tested.
pub fn args(config: &VmConfig, accel: Accel) -> Result<Vec<OsString>> {
    if config.memory_mib == 0 || config.vcpus == 0 {
        bail!("memory and vcpus must be positive");
    }
    let mem = format!("{}M", config.memory_mib);
    let mut a: Vec<OsString> = Vec::new();
    let mut push = |s: &str| a.push(OsString::from(s));
    push("-name");
    let name = escape(&config.name);
    push(&format!("vmpod-{name},process=vmpod-{name}"));
    push("-M");
    push("microvm,pit=on,pic=on,rtc=on,acpi=off,memory-backend=mem");
    push("-object");
    push(&format!("memory-backend-memfd,id=mem,size={mem},share=on"));
    push("-m");
    push(&mem);
    push("-smp");
    push(&config.vcpus.to_string());
    match accel {
        Accel::Tcg => {
            // The translation cache defaults to 1 GiB and, touched page by
            // page, would sit inside the pod's memory limit unbounded by
            // anything but time; 256 MiB holds a kernel and user space
            // translated many times over.
            push("-accel");
            push(&format!("tcg,tb-size={TCG_TB_MIB}"));
            push("-cpu");
            push("max");
        }
        Accel::Kvm => {
            // `host` and `max` abort with "failed to set MSR 0x10a" on
            // nested hosts that hide ARCH_CAPABILITIES.
            push("-accel");
            push("kvm");
            push("-cpu");
            push("host,-arch-capabilities");
        }
    }
    for flag in ["-nodefaults", "-no-user-config", "-nographic", "-no-reboot"] {
        push(flag);
    }
    // QEMU's own seccomp filter, installed before the guest runs: no
    // obsolete syscalls, no fork or exec, no scheduler or priority changes.
    // `elevateprivileges` stays allowed because QEMU installs the filter
    // before `-runas` calls setgid/setuid (QEMU 7.2 dies of SIGSYS with
    // `deny`); once it is the VMM user with every id equal and no
    // capability, a set*id call can change nothing.
    push("-sandbox");
    push("on,obsolete=deny,elevateprivileges=allow,spawn=deny,resourcecontrol=deny");
    if let Some(user) = config.vmm_user {
        // After every file and socket is open (kernel, initrd, memfd, the
        // vhost-user connections, stdio), QEMU drops root: setgroups,
        // setgid, setuid, which clears every capability and makes it
        // undumpable, so the other pods' processes under the same uid
        // cannot ptrace it or read its /proc files. `UID:GID` needs QEMU
        // 5.0 or later.
        if user.uid == 0 || user.gid == 0 {
            bail!(
                "the VMM user must not be root (got {}:{})",
                user.uid,
                user.gid
            );
        }
        push("-runas");
        push(&format!("{}:{}", user.uid, user.gid));
    }
    push("-serial");
    push("stdio");
    push("-append");
    push(&config.cmdline);
    match &config.vsock {
        Vsock::VhostUser { socket } => {
            push("-chardev");
            a.push(chardev("vsock0", socket));
            a.push("-device".into());
            a.push("vhost-user-vsock-device,chardev=vsock0".into());
        }
        Vsock::Kernel { guest_cid } => {
            a.push("-device".into());
            a.push(format!("vhost-vsock-device,guest-cid={guest_cid}").into());
        }
        Vsock::InProcess { .. } => {
            anyhow::bail!("QEMU has no in-process hybrid vsock; it needs vhost-device-vsock")
        }
    }
    if let Some(VirtioFs { socket, tag }) = &config.fs {
        a.push("-chardev".into());
        a.push(chardev("vfs0", socket));
        a.push("-device".into());
        a.push(format!("vhost-user-fs-device,chardev=vfs0,tag={tag}").into());
    }
    if let Some(card) = &config.net {
        a.extend(net_args(card));
    }
    a.push("-kernel".into());
    a.push(config.kernel.clone().into_os_string());
    a.push("-initrd".into());
    a.push(config.initramfs.clone().into_os_string());
    Ok(a)
}

/// The card as QEMU options. The TAP comes as an inherited fd
/// ([`inherit_fd`]): QEMU never opens it by name, so it needs neither the
/// pod's netns nor CAP_NET_ADMIN, and `-sandbox`'s `spawn=deny` is no
/// obstacle (no ifup script). The MAC is always given: QEMU's default
/// (52:54:00:12:34:56) would be the same for every pod on a CNI bridge.
pub fn net_args(card: &NetCard) -> [OsString; 4] {
    let fd = card.tap.as_ref().map_or_else(
        || TAP_FD_PLACEHOLDER.to_owned(),
        |t| t.as_raw_fd().to_string(),
    );
    let vhost = if card.vhost_net { "on" } else { "off" };
    [
        "-netdev".into(),
        format!("tap,id=net0,fd={fd},vhost={vhost}").into(),
        "-device".into(),
        format!("virtio-net-device,netdev=net0,mac={}", card.mac).into(),
    ]
}

/// Lets `cmd`'s program inherit `fd` under its own number. The fd stays
/// close-on-exec in the shim, so no other child (a helper spawned at the
/// same time) gets it; only this child's copy of the descriptor table
/// loses the flag, between fork and exec. Clearing the flag, rather than
/// `dup2` to a fixed number, cannot land on an fd the child still needs
/// before exec (std's exec-error pipe): `fd` is open in the shim, so no
/// other descriptor has its number.
pub fn inherit_fd(cmd: &mut Command, fd: RawFd) {
    // SAFETY: the closure runs between fork and exec and makes one
    // async-signal-safe syscall on a descriptor the fork copied.
    unsafe {
        cmd.pre_exec(move || {
            if libc::fcntl(fd, libc::F_SETFD, 0) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
}

fn chardev(id: &str, path: &std::path::Path) -> OsString {
    OsString::from(format!(
        "socket,id={id},path={}",
        escape(&path.as_os_str().to_string_lossy())
    ))
}

/// QEMU option syntax: a ',' inside a value is written ',,'.
fn escape(value: &str) -> String {
    value.replace(',', ",,")
}

impl Hypervisor for Qemu {
    fn name(&self) -> &'static str {
        match self.accel {
            Accel::Tcg => "qemu-tcg",
            Accel::Kvm => "qemu-kvm",
        }
    }

    fn start(&self, config: &VmConfig, exits: ExitSender) -> Result<Box<dyn RunningVm>> {
        let mut cmd = Command::new(&self.binary);
        cmd.args(args(config, self.accel)?);
        if let Some(card) = &config.net {
            let Some(tap) = &card.tap else {
                bail!("the network card has no TAP open (a plan, not a VM to start)");
            };
            // Registered before the confinement's own pre_exec step, so it
            // runs before the seccomp filters are installed.
            inherit_fd(&mut cmd, tap.as_raw_fd());
        }
        let log = crate::process::open_append(&config.log)?;
        cmd.stdout(std::process::Stdio::piped()).stderr(log);
        // Our deny-list under QEMU's filter: what `-sandbox` leaves open
        // (ptrace, signals to other processes of the shared VMM uid, BPF,
        // io_uring, ...).
        let confinement = Confinement::new().filter(confine::deny_list(true)?);
        let (process, stdout) =
            Process::spawn_confined(PROCESS_NAME, cmd, exits, Some(confinement))?;
        Ok(Box::new(QemuVm {
            process,
            console: stdout.map(|s| Box::pin(s) as Console),
            log: config.log.clone(),
        }))
    }
}

struct QemuVm {
    process: Process,
    console: Option<Console>,
    log: PathBuf,
}

impl RunningVm for QemuVm {
    fn pid(&self) -> u32 {
        self.process.pid()
    }

    fn process_name(&self) -> &str {
        self.process.name()
    }

    fn take_console(&mut self) -> Option<Console> {
        self.console.take()
    }

    fn stop(&self, grace: Duration) -> BoxFuture<'_, ExitStatus> {
        // QEMU exits cleanly on SIGTERM; the guest gets no ACPI power button
        // (there is no ACPI), so the grace period is for QEMU itself.
        Box::pin(self.process.terminate(grace))
    }

    fn diagnostics(&self) -> String {
        log_tail(&self.log, 2048)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::OwnedFd;
    use std::sync::Arc;
    use vmpod_shim_api::vm_spec::VmmUser;

    fn config() -> VmConfig {
        VmConfig {
            name: "pod,1".into(),
            kernel: "/img/vmlinux".into(),
            initramfs: "/img/initramfs.cpio.gz".into(),
            cmdline: super::super::BASE_CMDLINE.into(),
            vcpus: 2,
            memory_mib: 256,
            vsock: Vsock::VhostUser {
                socket: "/pods/a,b/run/vsock.sock".into(),
            },
            fs: Some(VirtioFs {
                socket: "/pods/p/run/vfs.sock".into(),
                tag: "vmpod".into(),
            }),
            log: "/pods/p/run/qemu.log".into(),
            vmm_user: Some(VmmUser {
                uid: 65534,
                gid: 65534,
            }),
            net: None,
        }
    }

    fn card(tap: Option<Arc<OwnedFd>>, vhost_net: bool) -> NetCard {
        NetCard {
            tap,
            mac: "02:42:0a:58:00:05".parse().expect("MAC"),
            vhost_net,
        }
    }

    fn some_fd() -> Arc<OwnedFd> {
        Arc::new(OwnedFd::from(
            std::fs::File::open("/dev/null").expect("/dev/null"),
        ))
    }

    fn joined(a: &[OsString]) -> String {
        a.iter()
            .map(|s| s.to_string_lossy().into_owned())
            .collect::<Vec<_>>()
            .join(" ")
    }

    /// The value after `flag`, for every occurrence.
    fn values<'a>(a: &'a [OsString], flag: &str) -> Vec<&'a str> {
        a.windows(2)
            .filter(|w| w[0] == flag)
            .filter_map(|w| w[1].to_str())
            .collect()
    }

    #[test]
    fn tcg_command_line_has_what_boots_here() {
        let a = args(&config(), Accel::Tcg).expect("args");
        assert_eq!(
            values(&a, "-M"),
            ["microvm,pit=on,pic=on,rtc=on,acpi=off,memory-backend=mem"]
        );
        assert_eq!(
            values(&a, "-object"),
            ["memory-backend-memfd,id=mem,size=256M,share=on"]
        );
        assert_eq!(values(&a, "-name"), ["vmpod-pod,,1,process=vmpod-pod,,1"]);
        assert_eq!(values(&a, "-m"), ["256M"]);
        assert_eq!(values(&a, "-smp"), ["2"]);
        assert_eq!(values(&a, "-accel"), ["tcg,tb-size=256"]);
        assert_eq!(values(&a, "-cpu"), ["max"]);
        assert_eq!(values(&a, "-serial"), ["stdio"]);
        assert_eq!(
            values(&a, "-sandbox"),
            ["on,obsolete=deny,elevateprivileges=allow,spawn=deny,resourcecontrol=deny"]
        );
        assert_eq!(values(&a, "-runas"), ["65534:65534"]);
        assert_eq!(
            values(&a, "-append"),
            ["console=ttyS0 reboot=t panic=-1 quiet"]
        );
        assert_eq!(values(&a, "-kernel"), ["/img/vmlinux"]);
        assert_eq!(values(&a, "-initrd"), ["/img/initramfs.cpio.gz"]);
        assert_eq!(
            values(&a, "-chardev"),
            [
                "socket,id=vsock0,path=/pods/a,,b/run/vsock.sock",
                "socket,id=vfs0,path=/pods/p/run/vfs.sock"
            ]
        );
        assert_eq!(
            values(&a, "-device"),
            [
                "vhost-user-vsock-device,chardev=vsock0",
                "vhost-user-fs-device,chardev=vfs0,tag=vmpod"
            ]
        );
        let all = joined(&a);
        for flag in ["-nodefaults", "-no-user-config", "-nographic", "-no-reboot"] {
            assert!(all.contains(flag), "{flag} missing: {all}");
        }
        // microvm adds the virtio_mmio.device= entries itself.
        assert!(!all.contains("virtio_mmio"), "{all}");
    }

    #[test]
    fn no_network_no_netdev() {
        let a = args(&config(), Accel::Tcg).expect("args");
        assert!(values(&a, "-netdev").is_empty());
        assert!(!joined(&a).contains("virtio-net"));
    }

    #[test]
    fn the_tap_goes_in_by_fd_with_the_cards_mac() {
        let fd = some_fd();
        let n = fd.as_raw_fd();
        for (vhost_net, vhost) in [(false, "off"), (true, "on")] {
            let mut c = config();
            c.net = Some(card(Some(fd.clone()), vhost_net));
            let a = args(&c, Accel::Tcg).expect("args");
            assert_eq!(
                values(&a, "-netdev"),
                [format!("tap,id=net0,fd={n},vhost={vhost}")]
            );
            assert_eq!(
                values(&a, "-device"),
                [
                    "vhost-user-vsock-device,chardev=vsock0",
                    "vhost-user-fs-device,chardev=vfs0,tag=vmpod",
                    "virtio-net-device,netdev=net0,mac=02:42:0a:58:00:05"
                ]
            );
            // Before the boot files, after every other device.
            let pos = |flag: &str| a.iter().position(|x| x == flag).expect(flag);
            assert!(pos("-netdev") < pos("-kernel"));
        }
    }

    #[test]
    fn a_plan_without_a_tap_shows_the_placeholder_and_cannot_start() {
        let mut c = config();
        c.net = Some(card(None, false));
        let a = args(&c, Accel::Kvm).expect("args");
        assert_eq!(values(&a, "-netdev"), ["tap,id=net0,fd=TAP_FD,vhost=off"]);
        let (tx, _rx) = tokio::sync::mpsc::unbounded_channel();
        let qemu = Qemu::new("/bin/true".into(), Accel::Tcg);
        let e = qemu
            .start(&c, tx)
            .err()
            .expect("refused without a TAP")
            .to_string();
        assert!(e.contains("no TAP open"), "{e}");
    }

    /// Only the child that was given the fd sees it, under the same
    /// number, and through the shim's confinement.
    #[tokio::test(flavor = "current_thread")]
    async fn the_child_inherits_the_fd_and_nobody_else_does() {
        let fd = some_fd();
        let n = fd.as_raw_fd();
        let check = format!("test \"$(readlink /proc/self/fd/{n})\" = /dev/null");
        let run = |inherit: bool| {
            let (tx, _rx) = tokio::sync::mpsc::unbounded_channel();
            let mut cmd = Command::new("sh");
            cmd.args(["-c", &check]);
            if inherit {
                inherit_fd(&mut cmd, n);
            }
            let confinement = Confinement::new().filter(confine::deny_list(true).expect("filter"));
            Process::spawn_confined("fd-check", cmd, tx, Some(confinement))
                .expect("spawn")
                .0
        };
        assert_eq!(run(true).wait().await.code(), Some(0), "fd {n} inherited");
        assert_eq!(run(false).wait().await.code(), Some(1), "fd {n} leaked");
        // The shim's own descriptor is still close-on-exec.
        // SAFETY: F_GETFD on an fd we hold.
        let flags = unsafe { libc::fcntl(n, libc::F_GETFD) };
        assert_eq!(flags & libc::FD_CLOEXEC, libc::FD_CLOEXEC);
    }

    #[test]
    fn kvm_and_kernel_vsock() {
        let mut c = config();
        // The daemon's allocation, not a fixed CID: kernel CIDs are host-wide.
        c.vsock = Vsock::Kernel { guest_cid: 4711 };
        c.fs = None;
        let a = args(&c, Accel::Kvm).expect("args");
        assert_eq!(values(&a, "-accel"), ["kvm"]);
        assert_eq!(values(&a, "-cpu"), ["host,-arch-capabilities"]);
        assert_eq!(values(&a, "-device"), ["vhost-vsock-device,guest-cid=4711"]);
        assert!(values(&a, "-chardev").is_empty());
    }
}
