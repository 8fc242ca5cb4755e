//! The shim's kvm backend (`hypervisor/kvm.rs`) on this machine's /dev/kvm,
//! with the tiny guests of `tests/guests/` rather than Linux: the console
//! and the exit reach the shim's channels, a vhost vsock is refused, and
//! the vCPU runs as the VMM user while the shim's own threads stay root.
//! The VMM itself is tested in `vmm/tests/`. Without /dev/kvm these tests
//! fail: they never pass by skipping.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::time::Duration;

/// Builds the test guests once (the script is cached) and returns their dir.
fn guests() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        if let Err(e) = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open("/dev/kvm")
        {
            panic!(
                "these tests need a usable /dev/kvm and this host has none ({e}); they do not skip"
            );
        }
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/guests/build.sh");
        let out = Command::new(&script)
            .output()
            .unwrap_or_else(|e| panic!("running {}: {e}", script.display()));
        assert!(
            out.status.success(),
            "{} failed: {}",
            script.display(),
            String::from_utf8_lossy(&out.stderr)
        );
        PathBuf::from(String::from_utf8_lossy(&out.stdout).trim())
    })
}

fn initrd() -> PathBuf {
    let p = std::env::temp_dir().join(format!("vmpod-kvm-test-initrd-{}", std::process::id()));
    std::fs::write(&p, b"initrd-contents-ok").expect("write initrd");
    p
}

/// (tid, status) of this process's threads whose name starts with `prefix`.
fn threads_named(prefix: &str) -> Vec<(String, String)> {
    std::fs::read_dir("/proc/self/task")
        .expect("/proc/self/task")
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            let tid = e.file_name().to_string_lossy().into_owned();
            let status = std::fs::read_to_string(e.path().join("status")).ok()?;
            Some((tid, status))
        })
        .filter(|(_, status)| {
            status
                .lines()
                .find_map(|l| l.strip_prefix("Name:"))
                .is_some_and(|n| n.trim().starts_with(prefix))
        })
        .collect()
}

/// A /proc status field, its words joined by one space.
fn status_field(status: &str, name: &str) -> String {
    status
        .lines()
        .find_map(|l| l.strip_prefix(name))
        .map(|v| v.split_whitespace().collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

/// The tests of this binary share one process: the VMM-user test counts
/// the process's vCPU threads by uid, so VMs of the other tests must not
/// overlap with it.
static ONE_VM: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

#[tokio::test(flavor = "current_thread")]
async fn kvm_backend_reports_console_and_exit() {
    let _one_vm_at_a_time = ONE_VM.lock().await;
    use vmpod_shim::hypervisor::kvm::Kvm;
    use vmpod_shim::hypervisor::{BASE_CMDLINE, Hypervisor, VmConfig, Vsock};

    let initrd = initrd();
    let dir = tempfile::tempdir().expect("tempdir");
    let uds = dir.path().join("vm.vsock");
    let mut config = VmConfig {
        name: "test".into(),
        kernel: guests().join("elf64.elf"),
        initramfs: initrd,
        cmdline: BASE_CMDLINE.into(),
        vcpus: 1,
        memory_mib: 64,
        vsock: Vsock::Kernel { guest_cid: 3 },
        fs: None,
        log: std::env::temp_dir().join("vmpod-kvm-test.log"),
        vmm_user: None,
        net: None,
    };
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let refused = Kvm.start(&config, tx.clone());
    let e = refused.err().expect("refuses a vhost vsock").to_string();
    assert!(e.contains("serves vsock itself"), "{e}");
    config.vsock = Vsock::InProcess { guest_cid: 3, uds };

    let backend = Kvm;
    assert_eq!(backend.name(), "kvm");
    let mut vm = backend.start(&config, tx).expect("start");
    assert_eq!(vm.pid(), std::process::id());
    let mut console = vm.take_console().expect("console");
    let mut text = String::new();
    tokio::time::timeout(
        Duration::from_secs(30),
        tokio::io::AsyncReadExt::read_to_string(&mut console, &mut text),
    )
    .await
    .expect("console EOF in time")
    .expect("read console");
    assert!(text.contains("elf64 ok"), "{text}");
    assert!(text.contains("reboot=k"), "reboot=t rewritten: {text}");
    let exit = rx.recv().await.expect("exit reported");
    assert_eq!(exit.name, "kvm");
    assert_eq!(exit.status.code(), Some(0));
    assert!(vm.diagnostics().contains("reset"), "{}", vm.diagnostics());
    // Stopping a VM that already ended returns its status at once.
    let status = vm.stop(Duration::from_secs(1)).await;
    assert_eq!(status.code(), Some(0));
}

#[tokio::test(flavor = "current_thread")]
async fn kvm_backend_runs_the_vcpus_as_the_vmm_user() {
    let _one_vm_at_a_time = ONE_VM.lock().await;
    use vmpod_shim::hypervisor::kvm::Kvm;
    use vmpod_shim::hypervisor::{BASE_CMDLINE, Hypervisor, VmConfig, Vsock};

    let dir = tempfile::tempdir().expect("tempdir");
    let config = VmConfig {
        name: "test".into(),
        // One vCPU: the SMP guest spins waiting for its AP, so it runs
        // until stopped.
        kernel: guests().join("smp.elf"),
        initramfs: initrd(),
        cmdline: BASE_CMDLINE.into(),
        vcpus: 1,
        memory_mib: 64,
        vsock: Vsock::InProcess {
            guest_cid: 3,
            uds: dir.path().join("vm.vsock"),
        },
        fs: None,
        log: dir.path().join("kvm.log"),
        vmm_user: Some(vmpod_shim_api::vm_spec::VmmUser {
            uid: 65534,
            gid: 65534,
        }),
        net: None,
    };
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let mut vm = Kvm.start(&config, tx).expect("start");
    let mut console = vm.take_console().expect("console");
    let mut text = String::new();
    let mut buf = [0u8; 256];
    while !text.contains("cpu0 up") {
        let n = tokio::time::timeout(
            Duration::from_secs(20),
            tokio::io::AsyncReadExt::read(&mut console, &mut buf),
        )
        .await
        .expect("the guest printed in time")
        .expect("read console");
        assert!(n > 0, "console closed: {text}");
        text.push_str(&String::from_utf8_lossy(&buf[..n]));
    }
    // The other test of this binary may run a VM in this process too, as root;
    // this VM's vCPU is the one running as the VMM user.
    let ours: Vec<_> = threads_named("vcpu")
        .into_iter()
        .filter(|(_, st)| status_field(st, "Uid:") == "65534 65534 65534 65534")
        .collect();
    assert_eq!(ours.len(), 1, "{ours:?}");
    let (tid, st) = &ours[0];
    assert_eq!(status_field(st, "Gid:"), "65534 65534 65534 65534", "{tid}");
    assert_eq!(status_field(st, "CapEff:"), "0000000000000000", "{tid}");
    let me = std::fs::read_to_string("/proc/thread-self/status").expect("own status");
    assert_ne!(status_field(&me, "Uid:"), "65534 65534 65534 65534");
    let status = vm.stop(Duration::from_secs(5)).await;
    assert_eq!(status.code(), Some(0), "stopped by the host");
    assert_eq!(rx.recv().await.expect("exit").name, "kvm");
}

// Only the namespace fixture: the rest of `common` is for QEMU boots.
#[path = "common/netns.rs"]
#[allow(dead_code)]
mod netns;

/// The card of the built-in VMM is the TAP fd the shim opened in the pod's
/// netns: the device takes it (flags checked, its own vnet header set) and
/// lets it go with the VM.
#[tokio::test(flavor = "current_thread")]
async fn kvm_backend_takes_the_pods_tap() {
    let _one_vm_at_a_time = ONE_VM.lock().await;
    use std::sync::Arc;
    use vmpod_shim::hypervisor::kvm::Kvm;
    use vmpod_shim::hypervisor::{BASE_CMDLINE, Hypervisor, NetCard, VmConfig, Vsock};

    if let Some(why) = netns::why_not() {
        eprintln!("SKIP kvm_backend_takes_the_pods_tap: {why}");
        return;
    }
    let ns = netns::Netns::new();
    ns.add_tap("tapt0");
    let tap = vmpod_shim::tap::open_in_netns(&ns.path(), "tapt0").expect("open the TAP");
    let dir = tempfile::tempdir().expect("tempdir");
    let config = VmConfig {
        name: "test".into(),
        kernel: guests().join("elf64.elf"),
        initramfs: initrd(),
        cmdline: BASE_CMDLINE.into(),
        vcpus: 1,
        memory_mib: 64,
        vsock: Vsock::InProcess {
            guest_cid: 3,
            uds: dir.path().join("vm.vsock"),
        },
        fs: None,
        log: dir.path().join("kvm.log"),
        vmm_user: None,
        net: Some(NetCard {
            tap: Some(Arc::new(tap)),
            mac: "02:42:0a:c7:00:02".parse().expect("MAC"),
            vhost_net: false,
        }),
    };
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let vm = Kvm
        .start(&config, tx)
        .expect("start with the TAP as its card");
    drop(config);
    let exit = tokio::time::timeout(Duration::from_secs(30), rx.recv())
        .await
        .expect("the guest ended in time")
        .expect("exit reported");
    assert_eq!(exit.status.code(), Some(0), "{}", vm.diagnostics());
    drop(vm);
    // Nothing in this process holds the TAP any more.
    let again = vmpod_shim::tap::open_in_netns(&ns.path(), "tapt0").expect("reopen");
    assert_eq!(
        vmpod_shim::tap::attached_to(&again).expect("TUNGETIFF").0,
        "tapt0"
    );
}
