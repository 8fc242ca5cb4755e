//! `vmpod check` against this host: its verdicts must match what the test
//! reads from the host itself.

use std::process::Command;

use vmpod_tests::daemon::{binary, test_config};

fn run_check(config: &str) -> (i32, String) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("config.toml");
    std::fs::write(&path, config).unwrap();
    let out = Command::new(binary("vmpod"))
        .args(["check", "--config"])
        .arg(&path)
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    )
}

fn line<'a>(out: &'a str, name: &str) -> &'a str {
    out.lines()
        .find(|l| l.get(6..).is_some_and(|rest| rest.starts_with(name)))
        .unwrap_or_else(|| panic!("no {name} line in:\n{out}"))
}

fn host_has_hw_virt() -> bool {
    std::fs::read_to_string("/proc/cpuinfo")
        .unwrap()
        .lines()
        .filter(|l| l.starts_with("flags"))
        .any(|l| l.split_whitespace().any(|f| f == "vmx" || f == "svm"))
}

fn host_kvm_usable() -> bool {
    std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
        .is_ok()
}

#[test]
fn verdict_matches_host() {
    let (code, out) = run_check(&test_config(""));
    let hw = host_has_hw_virt();
    let kvm = host_kvm_usable();
    assert!(
        line(&out, "hardware virtualization").starts_with(if hw { "pass" } else { "warn" }),
        "{out}"
    );
    assert!(
        line(&out, "/dev/kvm").starts_with(if kvm { "pass" } else { "warn" }),
        "{out}"
    );
    assert!(line(&out, "guest kernel").starts_with("pass"), "{out}");
    assert!(line(&out, "overlayfs").starts_with("pass"), "{out}");
    let backend = out
        .lines()
        .find(|l| l.starts_with("backend:"))
        .expect("backend line");
    if kvm && hw {
        assert!(backend.contains("KVM acceleration"), "{backend}");
    } else {
        assert!(backend.contains("TCG"), "{backend}");
        if kvm {
            assert!(
                backend.contains("KVM without hardware virtualization"),
                "{backend}"
            );
            assert!(
                backend.contains("Linux guests need the QEMU/TCG backend"),
                "{backend}"
            );
        }
    }
    // The suite's set-up installs QEMU, the helpers and the guest image, so
    // this host can run pods.
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("verdict: this host can run pods"), "{out}");
}

#[test]
fn missing_guest_kernel_fails_with_exit_1() {
    let (code, out) = run_check("[vm]\nkernel = \"/nonexistent/vmlinux\"\n");
    assert_eq!(code, 1, "{out}");
    assert!(line(&out, "guest kernel").starts_with("fail"), "{out}");
    assert!(out.contains("verdict: this host cannot run pods"), "{out}");
    assert!(out.contains("images/build.sh"), "{out}");
}

#[test]
fn missing_qemu_fails_and_kvm_backend_is_refused() {
    let (code, out) = run_check(&test_config("[helpers]\nqemu = \"/nonexistent/qemu\"\n"));
    assert_eq!(code, 1, "{out}");
    assert!(
        line(&out, "qemu-system-x86_64").starts_with("fail"),
        "{out}"
    );
    assert!(out.contains("apt-get install qemu-system-x86"), "{out}");

    let (code, out) = run_check(&test_config("backend = \"kvm\"\n"));
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("backend: none"), "{out}");
}

#[test]
fn config_default_round_trips() {
    let out = Command::new(binary("vmpod"))
        .args(["config", "default"])
        .output()
        .unwrap();
    assert!(out.status.success());
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(text.contains("socket = \"/run/vmpod/vmpod.sock\""));
    // The printed default is itself a valid config.
    let (code, _) = run_check(&text);
    assert!(code == 0 || code == 1);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("c.toml");
    std::fs::write(&path, &text).unwrap();
    let out = Command::new(binary("vmpod"))
        .args(["check", "--json", "--config"])
        .arg(&path)
        .output()
        .unwrap();
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(v["checks"].as_array().is_some_and(|c| c.len() >= 12));
}
