//! The built-in VMM's tests share these: the test guests (built once by
//! `tests/guests/build.sh`, cached), the KVM requirement, and `vmpod-vmm`
//! run with a deadline. Without a usable /dev/kvm the tests fail: they
//! never pass by skipping.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// Builds the guests once (the script is cached) and returns their dir.
pub fn guests() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        require_kvm();
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

pub fn require_kvm() {
    if let Err(e) = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
    {
        panic!("these tests need a usable /dev/kvm and this host has none ({e}); they do not skip");
    }
}

/// A guest's path, as an argument.
pub fn guest(name: &str) -> String {
    guests().join(name).to_string_lossy().into_owned()
}

/// Runs `vmpod-vmm` with a deadline; returns its output.
pub fn vmm(args: &[&str]) -> Output {
    wait_with_deadline(spawn_vmm(args), args)
}

pub fn spawn_vmm(args: &[&str]) -> Child {
    Command::new(env!("CARGO_BIN_EXE_vmpod-vmm"))
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn vmpod-vmm")
}

/// Waits up to 60 s for `child`, killing it (and failing) past that.
pub fn wait_with_deadline(mut child: Child, args: &[&str]) -> Output {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if child.try_wait().expect("try_wait").is_some() {
            return child.wait_with_output().expect("output");
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let out = child.wait_with_output().expect("output");
            panic!(
                "vmpod-vmm {args:?} did not exit within 60 s; stdout: {} stderr: {}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// How a `vmpod-vmm` run ended, as text.
pub struct Run {
    pub code: Option<i32>,
    pub serial: String,
    pub stderr: String,
}

pub fn run(args: &[&str]) -> Run {
    let out = vmm(args);
    Run {
        code: out.status.code(),
        serial: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

impl Run {
    /// The guest reset itself and said so last.
    pub fn assert_reset(&self) {
        assert_eq!(
            self.code,
            Some(0),
            "serial: {}\nstderr: {}",
            self.serial,
            self.stderr
        );
        assert!(
            self.stderr.contains("guest reset (i8042)"),
            "{}",
            self.stderr
        );
        assert!(
            self.serial.ends_with("vmpod-guest: reset\n"),
            "{}",
            self.serial
        );
    }
}
