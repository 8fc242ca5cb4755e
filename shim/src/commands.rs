//! `vmpod-shim --pod-dir DIR --print-commands`: what a start from the pod
//! dir's `vm.json` would run, printed as JSON on stdout, with nothing
//! started. `vmpod bench pod-start` boots its raw baseline from it: the same
//! helpers and the same QEMU command line as the shim, driven by binaries
//! rather than by linking the shim into the daemon.
//!
//! ```json
//! {
//!   "backend": "qemu-tcg",
//!   "helpers": [
//!     { "name": "vhost-device-vsock", "socket": "DIR/run/vsock.sock", "argv": ["..."] },
//!     { "name": "virtiofsd", "socket": "DIR/run/vfs.sock", "argv": ["..."] }
//!   ],
//!   "vmm": { "name": "qemu", "argv": ["/usr/bin/qemu-system-x86_64", "..."] }
//! }
//! ```
//!
//! Helpers are listed in start order, each with the socket whose appearance
//! means it is up (the VMM connects to it). `vmm` is `null` for the `kvm`
//! backend, whose VMM runs on the shim's own threads. Every argv starts with
//! the program's absolute path and uses absolute paths throughout; what the
//! shim wraps around them for a pod cannot be said in an argv and is left
//! out: confinement (`confine.rs`: seccomp filters, capabilities, the VMM
//! user for vhost-device-vsock, which the shim also starts from `run/` with
//! relative paths), stdio redirection and cgroups. QEMU drops to the VMM
//! user itself (`-runas`), so that is in its argv.
//!
//! A pod with a network card (`vm.json`'s `network`) gets QEMU's card
//! options with `fd=TAP_FD` in place of the TAP's fd number, which only
//! exists once the TAP is open; `vmm.tap` then says which TAP to open,
//! where, and what to replace:
//!
//! ```json
//! "tap": { "netns": "/run/netns/vmpod-ID", "name": "tap0", "placeholder": "TAP_FD" }
//! ```
//!
//! (attached with `IFF_TAP | IFF_NO_PI | IFF_VNET_HDR`, inherited by QEMU
//! under the number put in its place).
//!
//! The vsock choice and the VM's configuration are `vm.rs`'s own
//! (`vsock_plan`, `vm_config`), which `Machine::boot` starts from.

use std::ffi::OsString;
use std::path::PathBuf;

use anyhow::{Context, Result};
use vmpod_shim_api::vm_spec::{BackendSpec, VmSpec};

use crate::backends;
use crate::hypervisor::qemu::{self, Accel};
use crate::pod_dir::PodDir;
use crate::vm;

/// A vhost-user daemon the shim would start before the VMM.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Helper {
    pub name: &'static str,
    pub argv: Vec<OsString>,
    /// Created by the helper once it serves.
    pub socket: PathBuf,
}

/// The VMM process the shim would start.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VmmProcess {
    pub name: &'static str,
    pub argv: Vec<OsString>,
    /// The TAP whose fd `argv` wants in place of
    /// [`qemu::TAP_FD_PLACEHOLDER`].
    pub tap: Option<PlannedTap>,
}

/// A TAP to open in a network namespace before the VMM starts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlannedTap {
    pub netns: PathBuf,
    pub name: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Commands {
    pub backend: BackendSpec,
    pub helpers: Vec<Helper>,
    /// `None` when the VMM is in-process (the kvm backend).
    pub vmm: Option<VmmProcess>,
}

/// What a start of `spec` in `pod` would run. Pure: nothing is created,
/// removed or started.
pub fn planned(spec: &VmSpec, pod: &PodDir) -> Result<Commands> {
    let plan = vm::vsock_plan(spec, pod)?;
    let mut helpers = Vec::new();
    if let Some(bin) = &plan.helper {
        helpers.push(Helper {
            name: backends::VHOST_DEVICE_VSOCK,
            argv: argv(&backends::vhost_device_vsock_command(
                bin,
                pod,
                spec.vsock.guest_cid,
            )),
            socket: pod.vsock_backend_socket(),
        });
    }
    helpers.push(Helper {
        name: backends::VIRTIOFSD,
        argv: argv(&backends::virtiofsd_command(&spec.helpers.virtiofsd, pod)),
        socket: pod.virtiofs_socket(),
    });
    let accel = match spec.backend {
        BackendSpec::QemuKvm => Accel::Kvm,
        BackendSpec::QemuTcg => Accel::Tcg,
        BackendSpec::Kvm => {
            return Ok(Commands {
                backend: spec.backend,
                helpers,
                vmm: None,
            });
        }
    };
    let binary = spec
        .helpers
        .qemu
        .clone()
        .context("helpers.qemu: the qemu backends need it")?;
    // No TAP is opened for a plan: the argv gets the placeholder.
    let config = vm::vm_config(spec, pod, plan.vsock, spec.backend.name(), None)?;
    let mut vmm = vec![binary.into_os_string()];
    vmm.extend(qemu::args(&config, accel)?);
    Ok(Commands {
        backend: spec.backend,
        helpers,
        vmm: Some(VmmProcess {
            name: qemu::PROCESS_NAME,
            argv: vmm,
            tap: spec.network.as_ref().map(|n| PlannedTap {
                netns: n.netns.clone(),
                name: n.tap.clone(),
            }),
        }),
    })
}

fn argv(cmd: &tokio::process::Command) -> Vec<OsString> {
    let std = cmd.as_std();
    std::iter::once(std.get_program())
        .chain(std.get_args())
        .map(|a| a.to_os_string())
        .collect()
}

impl Commands {
    /// The JSON printed by `--print-commands`; fails on a path that is not
    /// UTF-8, which JSON could only show altered.
    pub fn to_json(&self) -> Result<serde_json::Value> {
        fn strings(argv: &[OsString]) -> Result<Vec<&str>> {
            argv.iter()
                .map(|a| a.to_str().with_context(|| format!("{a:?} is not UTF-8")))
                .collect()
        }
        let helpers = self
            .helpers
            .iter()
            .map(|h| {
                Ok(serde_json::json!({
                    "name": h.name,
                    "socket": h.socket.to_str().with_context(|| format!("{:?} is not UTF-8", h.socket))?,
                    "argv": strings(&h.argv)?,
                }))
            })
            .collect::<Result<Vec<_>>>()?;
        let vmm = match &self.vmm {
            Some(v) => {
                let mut vmm = serde_json::json!({ "name": v.name, "argv": strings(&v.argv)? });
                if let Some(tap) = &v.tap {
                    vmm["tap"] = serde_json::json!({
                        "netns": tap.netns.to_str().with_context(|| format!("{:?} is not UTF-8", tap.netns))?,
                        "name": tap.name,
                        "placeholder": qemu::TAP_FD_PLACEHOLDER,
                    });
                }
                vmm
            }
            None => serde_json::Value::Null,
        };
        Ok(serde_json::json!({
            "backend": self.backend.name(),
            "helpers": helpers,
            "vmm": vmm,
        }))
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use vmpod_agent_proto::SHARE_TAG;
    use vmpod_shim_api::vm_spec::{
        GuestSetup, Helpers, NetSpec, VmmUser, VsockSpec, VsockTransport,
    };

    use super::*;
    use crate::hypervisor::{BASE_CMDLINE, VirtioFs, VmConfig, Vsock};
    use crate::vm::DEFAULT_VMM_USER;

    fn spec(backend: BackendSpec, transport: VsockTransport) -> VmSpec {
        VmSpec {
            id: "pod-1".into(),
            backend,
            kernel: "/img/vmlinux".into(),
            initramfs: "/img/initramfs.cpio.gz".into(),
            vcpus: 2,
            memory_mib: 256,
            boot_timeout_ms: 1000,
            helpers: Helpers {
                qemu: Some("/bin/qemu".into()),
                virtiofsd: "/bin/virtiofsd".into(),
                vhost_device_vsock: Some("/bin/vhost-device-vsock".into()),
            },
            vsock: VsockSpec {
                guest_cid: 7,
                transport,
            },
            guest: GuestSetup::default(),
            vmm_user: None,
            console_log_bytes: 1 << 20,
            network: None,
        }
    }

    fn pod() -> PodDir {
        PodDir::new("/pods/p".into())
    }

    fn strs(argv: &[OsString]) -> Vec<&str> {
        argv.iter().map(|a| a.to_str().expect("utf-8")).collect()
    }

    fn value_after<'a>(argv: &'a [OsString], flag: &str) -> Vec<&'a str> {
        let a = strs(argv);
        a.windows(2)
            .filter(|w| w[0] == flag)
            .map(|w| w[1])
            .collect()
    }

    #[test]
    fn qemu_with_hybrid_vsock_starts_both_helpers_then_qemu() {
        let c =
            planned(&spec(BackendSpec::QemuTcg, VsockTransport::Hybrid), &pod()).expect("planned");
        let names: Vec<_> = c.helpers.iter().map(|h| h.name).collect();
        assert_eq!(names, ["vhost-device-vsock", "virtiofsd"]);
        let vsock = &c.helpers[0];
        assert_eq!(vsock.socket, Path::new("/pods/p/run/vsock.sock"));
        assert_eq!(
            strs(&vsock.argv),
            [
                "/bin/vhost-device-vsock",
                "--guest-cid",
                "7",
                "--socket",
                "/pods/p/run/vsock.sock",
                "--uds-path",
                "/pods/p/run/vm.vsock"
            ]
        );
        let fs = &c.helpers[1];
        assert_eq!(fs.socket, Path::new("/pods/p/run/vfs.sock"));
        assert_eq!(fs.argv[0], "/bin/virtiofsd");
        assert_eq!(value_after(&fs.argv, "--shared-dir"), ["/pods/p/share"]);

        let vmm = c.vmm.expect("a VMM process");
        assert_eq!(vmm.name, "qemu");
        assert_eq!(vmm.argv[0], "/bin/qemu");
        // Exactly the shim's QEMU command line, the VMM user included.
        let config = VmConfig {
            name: "pod-1".into(),
            kernel: "/img/vmlinux".into(),
            initramfs: "/img/initramfs.cpio.gz".into(),
            cmdline: BASE_CMDLINE.into(),
            vcpus: 2,
            memory_mib: 256,
            vsock: Vsock::VhostUser {
                socket: "/pods/p/run/vsock.sock".into(),
            },
            fs: Some(VirtioFs {
                socket: "/pods/p/run/vfs.sock".into(),
                tag: SHARE_TAG.into(),
            }),
            log: "/pods/p/run/qemu-tcg.log".into(),
            vmm_user: Some(DEFAULT_VMM_USER),
            net: None,
        };
        assert_eq!(
            vmm.argv[1..],
            qemu::args(&config, Accel::Tcg).expect("args")[..]
        );
        assert_eq!(value_after(&vmm.argv, "-runas"), ["65534:65534"]);
        assert_eq!(vmm.tap, None);
        assert!(value_after(&vmm.argv, "-netdev").is_empty());
    }

    #[test]
    fn a_network_card_shows_the_tap_to_open_and_where_its_fd_goes() {
        let mut s = spec(BackendSpec::QemuTcg, VsockTransport::Hybrid);
        s.network = Some(NetSpec {
            netns: "/run/netns/vmpod-pod-1".into(),
            tap: "tap0".into(),
            mac: "02:42:0A:58:00:05".into(),
        });
        let c = planned(&s, &pod()).expect("planned");
        let vmm = c.vmm.clone().expect("a VMM process");
        let vhost = if qemu::vhost_net_available() {
            "on"
        } else {
            "off"
        };
        assert_eq!(
            value_after(&vmm.argv, "-netdev"),
            [format!("tap,id=net0,fd=TAP_FD,vhost={vhost}")]
        );
        assert_eq!(
            value_after(&vmm.argv, "-device").last(),
            Some(&"virtio-net-device,netdev=net0,mac=02:42:0a:58:00:05")
        );
        assert_eq!(
            vmm.tap,
            Some(PlannedTap {
                netns: "/run/netns/vmpod-pod-1".into(),
                name: "tap0".into(),
            })
        );
        let json = c.to_json().expect("json");
        assert_eq!(
            json["vmm"]["tap"],
            serde_json::json!({
                "netns": "/run/netns/vmpod-pod-1",
                "name": "tap0",
                "placeholder": "TAP_FD",
            })
        );
        // The kvm backend has no argv; its card is the shim's business.
        s.backend = BackendSpec::Kvm;
        s.helpers.vhost_device_vsock = None;
        assert_eq!(planned(&s, &pod()).expect("planned").vmm, None);
    }

    #[test]
    fn kernel_vsock_needs_no_vsock_helper_and_the_vmm_user_is_the_specs() {
        let mut s = spec(BackendSpec::QemuKvm, VsockTransport::Kernel);
        s.vmm_user = Some(VmmUser {
            uid: 1000,
            gid: 1001,
        });
        let c = planned(&s, &pod()).expect("planned");
        let names: Vec<_> = c.helpers.iter().map(|h| h.name).collect();
        assert_eq!(names, ["virtiofsd"]);
        let vmm = c.vmm.expect("a VMM process");
        assert_eq!(
            value_after(&vmm.argv, "-device")[0],
            "vhost-vsock-device,guest-cid=7"
        );
        assert_eq!(value_after(&vmm.argv, "-accel"), ["kvm"]);
        assert_eq!(value_after(&vmm.argv, "-runas"), ["1000:1001"]);
    }

    #[test]
    fn the_kvm_backend_has_no_vmm_process() {
        let mut s = spec(BackendSpec::Kvm, VsockTransport::Hybrid);
        s.helpers.qemu = None;
        s.helpers.vhost_device_vsock = None;
        let c = planned(&s, &pod()).expect("planned");
        assert_eq!(c.helpers.len(), 1);
        assert_eq!(c.vmm, None);
        let json = c.to_json().expect("json");
        assert_eq!(json["backend"], "kvm");
        assert!(json["vmm"].is_null());
        assert_eq!(json["helpers"][0]["name"], "virtiofsd");
        assert_eq!(json["helpers"][0]["socket"], "/pods/p/run/vfs.sock");
    }

    #[test]
    fn json_carries_every_argv() {
        let c =
            planned(&spec(BackendSpec::QemuTcg, VsockTransport::Hybrid), &pod()).expect("planned");
        let json = c.to_json().expect("json");
        assert_eq!(json["backend"], "qemu-tcg");
        assert_eq!(json["vmm"]["name"], "qemu");
        let argv = json["vmm"]["argv"].as_array().expect("argv");
        assert_eq!(argv.len(), c.vmm.as_ref().map_or(0, |v| v.argv.len()));
        assert_eq!(json["helpers"].as_array().map(Vec::len), Some(2));
        assert_eq!(json["helpers"][0]["argv"][0], "/bin/vhost-device-vsock");
    }
}
