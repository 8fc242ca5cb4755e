//! The kvm backend end to end: a real `vmpod-shim` boots the real guest
//! kernel and agent (`images/build.sh`) on the built-in VMM, with the
//! in-process vsock as the agent channel and virtio-fs to a real virtiofsd.
//!
//! Booting Linux needs hardware virtualization. On a host without it (this
//! project's CI machines: /dev/kvm works there but runs tiny guests only)
//! the test is reported as *ignored*, with the reason on stderr, never as
//! passed; `cargo test --test kvm_pod -- --ignored` runs it anyway and fails
//! there. Hence its own harness (libtest-mimic), which can decide at run
//! time.

mod common;

use std::time::Duration;

use common::*;
use libtest_mimic::{Arguments, Failed, Trial};
use vmpod_agent_proto::v1::GuestInfoRequest;
use vmpod_shim_api::v1::Phase;

fn main() {
    let args = Arguments::from_args();
    let unavailable = why_no_hardware_kvm();
    if let Some(why) = &unavailable {
        eprintln!("kvm_pod: skipped: {why}");
    }
    let trials = vec![
        Trial::test(
            "kvm_backend_boots_the_real_guest_and_serves_the_agent",
            boot_and_talk,
        )
        .with_ignored_flag(unavailable.is_some()),
    ];
    libtest_mimic::run(&args, trials).exit();
}

/// Why Linux cannot boot on the built-in VMM here, if it cannot.
fn why_no_hardware_kvm() -> Option<String> {
    if let Err(e) = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
    {
        return Some(format!("/dev/kvm is unusable ({e})"));
    }
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let hw = cpuinfo
        .lines()
        .filter(|l| l.starts_with("flags"))
        .any(|l| l.split_whitespace().any(|f| f == "vmx" || f == "svm"));
    if !hw {
        return Some(
            "the CPU has no vmx/svm: this KVM runs tiny guests but not a Linux guest".into(),
        );
    }
    None
}

fn boot_and_talk() -> Result<(), Failed> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("tokio runtime: {e}"))?;
    rt.block_on(async {
        let dir = tempfile::tempdir().expect("tempdir");
        let pod = dir.path().to_owned();
        let (kernel, initramfs) = guest_image();
        write_spec_for("kvm", &pod, &kernel, &initramfs, 20_000);
        let mut shim = start_shim(&pod);
        let mut client = connect(&pod).await;
        let state = watch_until(
            &mut client,
            &[Phase::Ready, Phase::Failed],
            Duration::from_secs(60),
        )
        .await;
        if state.phase() != Phase::Ready {
            return Err(format!(
                "the VM did not reach READY: {}\nshim.log:\n{}",
                state.error,
                shim_log(&pod)
            )
            .into());
        }
        report(&state);
        assert_eq!(state.backend, "kvm");
        // The VMM is the shim itself: no VMM process, no vsock helper.
        assert_eq!(state.vmm_pid, shim.id());
        let info = client
            .guest_info(GuestInfoRequest {})
            .await
            .map_err(|e| format!("GuestInfo: {e}"))?
            .into_inner();
        assert!(
            info.kernel_release.contains("vmpod"),
            "{}",
            info.kernel_release
        );
        assert_eq!(info.hostname, "boot-test");
        shutdown_and_check(&mut client, &mut shim, &pod).await;
        Ok(())
    })
}
