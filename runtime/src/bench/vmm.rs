//! `vmpod bench vmm`: the built-in VMM (`vmpod-vmm`, the same code the shim
//! runs in-process) against QEMU `-M microvm`, and Firecracker when a binary
//! is given, booting the same tiny PVH guest (`tests/guests/pvh.elf`: prints
//! a line over serial, writes the boot timer, resets).
//!
//! Method, per run, the VMMs taking turns so machine noise hits all alike:
//! - time from just before `spawn` to the first byte on the VMM's stdout
//!   (the guest's serial port) and to the process being reaped;
//! - peak RSS: the kernel's high-water mark `VmHWM` from `/proc/PID/status`,
//!   read every millisecond while the VMM runs. It is monotonic, so any read
//!   after the peak sees it; the exit path only unmaps. Not `wait4`'s
//!   `ru_maxrss`: the child is spawned with vfork, and Linux folds the
//!   pre-exec mm (the benchmark's own, several MiB) into `ru_maxrss`, which
//!   would hide any VMM smaller than the benchmark. `ru_maxrss` is kept in
//!   the JSON as an upper bound. For the built-in VMM the guest RAM it
//!   touched (the memfd's allocated pages, reported by `--stats`) is
//!   subtracted, giving the VMM's own footprint; QEMU and Firecracker give
//!   no such figure, so theirs include the guest's few pages (tens of KiB
//!   for this guest) and are, if anything, slightly high.
//!
//! The VMM binary's own size matters for RSS (its text pages are resident):
//! a static build drops ld.so and libc.so (about 1.3 MiB here) —
//! `cargo rustc --release -p vmpod-vmm --bin vmpod-vmm --target
//! x86_64-unknown-linux-gnu -- -C target-feature=+crt-static`, then pass
//! `--vmm target/x86_64-unknown-linux-gnu/release/vmpod-vmm`.
//!
//! QEMU runs with KVM and `-cpu host,-arch-capabilities` (plain `host`
//! aborts on hosts that hide ARCH_CAPABILITIES), no defaults, and an
//! `isa-debug-exit` device: microvm has no i8042, so the guest's second way
//! out ends QEMU (exit status 1).

use std::io::Read;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use serde_json::json;

use super::Samples;

pub struct Options {
    pub count: usize,
    pub firecracker: Option<PathBuf>,
    pub qemu: PathBuf,
    pub vmm: Option<PathBuf>,
    pub guest: Option<PathBuf>,
    pub out: PathBuf,
}

const MEMORY_MIB: u64 = 128;
const CMDLINE: &str = "console=ttyS0 reboot=k panic=1";
const GUEST_LINE: &str = "vmpod-guest: pvh ok";
const RUN_TIMEOUT: Duration = Duration::from_secs(20);

struct Vmm {
    name: &'static str,
    program: PathBuf,
    args: Vec<String>,
    /// The exit status a clean run ends with.
    expected_code: i32,
    samples: Vec<Sample>,
}

#[derive(Clone, Copy)]
struct Sample {
    first_byte_ms: f64,
    exit_ms: f64,
    /// VmHWM, sampled.
    peak_rss_kib: u64,
    /// wait4's ru_maxrss: includes the pre-exec (benchmark's) mm.
    ru_maxrss_kib: u64,
    /// Guest RAM inside the peak RSS, where the VMM reports it.
    guest_kib: Option<u64>,
}

impl Sample {
    fn rss_outside_guest_kib(&self) -> u64 {
        self.peak_rss_kib
            .saturating_sub(self.guest_kib.unwrap_or(0))
    }
}

/// `scripts/build-vmm.sh`'s static build when it exists beside this
/// target dir, else the `vmpod-vmm` next to vmpod.
fn default_vmm(exe_dir: &Path) -> PathBuf {
    let triple = format!("{}-unknown-linux-gnu", std::env::consts::ARCH);
    let built = exe_dir.join("..").join(triple).join("vmm/vmpod-vmm");
    if built.is_file() {
        built
    } else {
        exe_dir.join("vmpod-vmm")
    }
}

/// An ELF without a PT_INTERP program header needs no dynamic loader.
fn is_static(binary: &Path) -> bool {
    const PT_INTERP: u32 = 3;
    let Ok(elf) = std::fs::read(binary) else {
        return false;
    };
    let word = |at: usize, n: usize| -> Option<u64> {
        let b = elf.get(at..at + n)?;
        Some(
            b.iter()
                .rev()
                .fold(0u64, |acc, x| (acc << 8) | u64::from(*x)),
        )
    };
    // 64-bit little-endian ELF only: e_phoff at 0x20, e_phentsize 0x36, e_phnum 0x38.
    if elf.get(..6) != Some(&[0x7f, b'E', b'L', b'F', 2, 1][..]) {
        return false;
    }
    let (Some(phoff), Some(phentsize), Some(phnum)) = (word(0x20, 8), word(0x36, 2), word(0x38, 2))
    else {
        return false;
    };
    !(0..phnum).any(|i| {
        let at = usize::try_from(phoff + i * phentsize).unwrap_or(usize::MAX);
        word(at, 4) == Some(u64::from(PT_INTERP))
    })
}

pub fn run(opts: Options) -> Result<()> {
    if opts.count == 0 {
        bail!("--count must be at least 1");
    }
    let exe = std::env::current_exe().context("locating the vmpod binary")?;
    let exe_dir = exe.parent().context("the vmpod binary has no directory")?;
    let vmm = match &opts.vmm {
        Some(v) => v.clone(),
        None => default_vmm(exe_dir),
    };
    if !vmm.is_file() {
        bail!(
            "{} not found: build it with scripts/build-vmm.sh (static, as benchmarked) or pass --vmm",
            vmm.display()
        );
    }
    if !is_static(&vmm) {
        eprintln!(
            "note: {} is dynamically linked; ld.so and libc.so add about 1.3 MiB of RSS (scripts/build-vmm.sh builds it static)",
            vmm.display()
        );
    }
    let guest = match &opts.guest {
        Some(g) => g.clone(),
        None => exe_dir.join("../guests/pvh.elf"),
    };
    if !guest.is_file() {
        bail!(
            "guest {} not found: run tests/guests/build.sh or pass --guest",
            guest.display()
        );
    }
    let guest = guest
        .canonicalize()
        .with_context(|| format!("resolving {}", guest.display()))?;
    std::fs::create_dir_all(&opts.out)
        .with_context(|| format!("creating {}", opts.out.display()))?;

    let guest_s = guest.to_string_lossy().into_owned();
    let mut vmms = vec![
        Vmm {
            name: "vmpod",
            program: vmm,
            args: vec![
                "--kernel".into(),
                guest_s.clone(),
                "--memory-mib".into(),
                MEMORY_MIB.to_string(),
                "--cmdline".into(),
                CMDLINE.into(),
                "--stats".into(),
            ],
            expected_code: 0,
            samples: Vec::new(),
        },
        Vmm {
            name: "qemu-microvm",
            program: opts.qemu.clone(),
            args: [
                "-M",
                "microvm",
                "-accel",
                "kvm",
                "-cpu",
                "host,-arch-capabilities",
                "-m",
                &format!("{MEMORY_MIB}M"),
                "-smp",
                "1",
                "-nodefaults",
                "-no-user-config",
                "-nographic",
                "-serial",
                "stdio",
                "-no-reboot",
                "-device",
                "isa-debug-exit,iobase=0xf4,iosize=4",
                "-kernel",
                &guest_s,
                "-append",
                CMDLINE,
            ]
            .iter()
            .map(|s| s.to_string())
            .collect(),
            expected_code: 1,
            samples: Vec::new(),
        },
    ];
    if let Some(fc) = &opts.firecracker {
        let config = opts.out.join("firecracker.json");
        let body = json!({
            "boot-source": {"kernel_image_path": guest_s, "boot_args": CMDLINE},
            "drives": [],
            "machine-config": {"vcpu_count": 1, "mem_size_mib": MEMORY_MIB},
        });
        std::fs::write(&config, serde_json::to_vec_pretty(&body)?)
            .with_context(|| format!("writing {}", config.display()))?;
        vmms.push(Vmm {
            name: "firecracker",
            program: fc.clone(),
            args: vec![
                "--no-api".into(),
                "--boot-timer".into(),
                "--config-file".into(),
                config.to_string_lossy().into_owned(),
            ],
            expected_code: 0,
            samples: Vec::new(),
        });
    }

    eprintln!(
        "booting {} {} times each ({} MiB, 1 vCPU), taking turns",
        guest.display(),
        opts.count,
        MEMORY_MIB
    );
    for i in 0..opts.count {
        for v in &mut vmms {
            let s = measure(v).with_context(|| format!("{} run {}", v.name, i + 1))?;
            v.samples.push(s);
        }
    }

    print_summary(&vmms);
    let report = json_report(&vmms, &guest, opts.count);
    let json_path = opts.out.join("bench-vmm.json");
    std::fs::write(&json_path, serde_json::to_vec_pretty(&report)?)
        .with_context(|| format!("writing {}", json_path.display()))?;
    let svg_path = opts.out.join("bench-vmm.svg");
    std::fs::write(&svg_path, svg(&vmms))
        .with_context(|| format!("writing {}", svg_path.display()))?;
    println!("wrote {} and {}", json_path.display(), svg_path.display());
    Ok(())
}

/// One boot: spawn, first stdout byte, EOF, reap with rusage.
fn measure(v: &Vmm) -> Result<Sample> {
    let mut cmd = Command::new(&v.program);
    cmd.args(&v.args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let start = Instant::now();
    let mut child = cmd
        .spawn()
        .with_context(|| format!("spawning {}", v.program.display()))?;
    let pid = child.id() as libc::pid_t;
    let mut stdout = child.stdout.take().context("no stdout pipe")?;
    let stderr = child.stderr.take().context("no stderr pipe")?;
    let err_reader = std::thread::spawn(move || {
        let mut s = String::new();
        let mut stderr = stderr;
        let _ = stderr.read_to_string(&mut s);
        s
    });

    let mut serial = Vec::new();
    let mut first = None;
    let deadline = start + RUN_TIMEOUT;
    let mut timed_out = false;
    let mut buf = [0u8; 4096];
    // spawn() returned, so the child has exec'd: every VmHWM read is the
    // VMM's own mm.
    let mut hwm = vm_hwm_kib(pid).unwrap_or(0);
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            timed_out = true;
            break;
        }
        let ready = readable(&stdout, left.min(Duration::from_millis(1)));
        if let Some(k) = vm_hwm_kib(pid) {
            hwm = hwm.max(k);
        }
        if !ready {
            continue;
        }
        match stdout.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => {
                first.get_or_insert_with(|| start.elapsed());
                serial.extend_from_slice(&buf[..n]);
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e).context("reading the serial output"),
        }
    }
    if timed_out {
        // Not reaped yet, so the pid cannot have been reused.
        // SAFETY: kill on our own unreaped child.
        unsafe { libc::kill(pid, libc::SIGKILL) };
    }
    let mut status = 0;
    // SAFETY: a zeroed rusage for wait4 to fill.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: waits for our own child; status and usage are valid pointers.
    let reaped = unsafe { libc::wait4(pid, &mut status, 0, &mut usage) };
    let exited = start.elapsed();
    let errors = err_reader.join().unwrap_or_default();
    if reaped != pid {
        bail!("wait4: {}", std::io::Error::last_os_error());
    }
    let serial = String::from_utf8_lossy(&serial).into_owned();
    if timed_out {
        bail!("no exit within {RUN_TIMEOUT:?}; serial: {serial:?}; stderr: {errors}");
    }
    let code = libc::WIFEXITED(status).then(|| libc::WEXITSTATUS(status));
    if code != Some(v.expected_code) || !serial.contains(GUEST_LINE) {
        bail!(
            "exit {code:?} (expected {}); serial: {serial:?}; stderr: {errors}",
            v.expected_code
        );
    }
    let guest_kib = errors
        .lines()
        .find_map(|l| l.strip_prefix("vmpod-vmm-stats: "))
        .and_then(|j| serde_json::from_str::<serde_json::Value>(j).ok())
        .and_then(|j| j["guest_resident_kib"].as_u64());
    let Some(first) = first else {
        bail!("no serial output");
    };
    if hwm == 0 {
        bail!("no VmHWM sample from /proc/{pid}/status");
    }
    Ok(Sample {
        first_byte_ms: first.as_secs_f64() * 1e3,
        exit_ms: exited.as_secs_f64() * 1e3,
        peak_rss_kib: hwm,
        ru_maxrss_kib: usage.ru_maxrss as u64,
        guest_kib,
    })
}

/// VmHWM of a live process; `None` once it is a zombie (or gone).
fn vm_hwm_kib(pid: libc::pid_t) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
}

fn readable(fd: &impl AsRawFd, timeout: Duration) -> bool {
    let mut pfd = libc::pollfd {
        fd: fd.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    let ms = timeout.as_millis().min(i32::MAX as u128) as i32;
    loop {
        // SAFETY: one valid pollfd.
        let n = unsafe { libc::poll(&mut pfd, 1, ms) };
        if n >= 0 || std::io::Error::last_os_error().kind() != std::io::ErrorKind::Interrupted {
            return n > 0;
        }
    }
}

fn samples(v: &Vmm, f: impl Fn(&Sample) -> f64) -> Samples {
    let mut s = Samples::default();
    for x in &v.samples {
        s.push(f(x));
    }
    s
}

struct Summary {
    min: f64,
    median: f64,
    max: f64,
}

fn summary(s: &Samples) -> Summary {
    let v = s.sorted();
    Summary {
        min: v.first().copied().unwrap_or(f64::NAN),
        median: s.median(),
        max: v.last().copied().unwrap_or(f64::NAN),
    }
}

fn first_byte(v: &Vmm) -> Samples {
    samples(v, |s| s.first_byte_ms)
}
fn exit(v: &Vmm) -> Samples {
    samples(v, |s| s.exit_ms)
}
fn rss(v: &Vmm) -> Samples {
    samples(v, |s| s.rss_outside_guest_kib() as f64 / 1024.0)
}
fn raw_rss(v: &Vmm) -> Samples {
    samples(v, |s| s.peak_rss_kib as f64 / 1024.0)
}

fn print_summary(vmms: &[Vmm]) {
    println!(
        "{:<13} {:>24} {:>24} {:>11} {:>13} {:>3}",
        "vmm", "first byte ms min/med/max", "exit ms min/med/max", "RSS MiB", "RSS-guest MiB", "n"
    );
    for v in vmms {
        let (f, e) = (summary(&first_byte(v)), summary(&exit(v)));
        println!(
            "{:<13} {:>7.1} {:>7.1} {:>8.1} {:>7.1} {:>7.1} {:>8.1} {:>11.2} {:>13.2} {:>3}",
            v.name,
            f.min,
            f.median,
            f.max,
            e.min,
            e.median,
            e.max,
            raw_rss(v).median(),
            rss(v).median(),
            v.samples.len()
        );
    }
    let Some(ours) = vmms.first() else {
        return;
    };
    for other in &vmms[1..] {
        println!(
            "{} / vmpod (medians): first byte {:.1}x, exit {:.1}x, RSS outside guest {:.1}x",
            other.name,
            first_byte(other).median() / first_byte(ours).median(),
            exit(other).median() / exit(ours).median(),
            rss(other).median() / rss(ours).median()
        );
    }
}

fn json_report(vmms: &[Vmm], guest: &Path, count: usize) -> serde_json::Value {
    let stat = |s: &Samples| {
        let x = summary(s);
        json!({"min": x.min, "median": x.median, "max": x.max})
    };
    json!({
        "guest": guest,
        "runs": count,
        "memory_mib": MEMORY_MIB,
        "vcpus": 1,
        "method": "spawn to first stdout byte and to reap; peak RSS = VmHWM from /proc/PID/status sampled every 1 ms; vmpod's rss_outside_guest subtracts the memfd pages the guest touched",
        "vmms": vmms.iter().map(|v| json!({
            "name": v.name,
            "command": std::iter::once(v.program.to_string_lossy().into_owned()).chain(v.args.iter().cloned()).collect::<Vec<_>>(),
            "first_byte_ms": stat(&first_byte(v)),
            "exit_ms": stat(&exit(v)),
            "peak_rss_mib": stat(&raw_rss(v)),
            "rss_outside_guest_mib": stat(&rss(v)),
            "samples": v.samples.iter().map(|s| json!({
                "first_byte_ms": s.first_byte_ms,
                "exit_ms": s.exit_ms,
                "peak_rss_kib": s.peak_rss_kib,
                "ru_maxrss_kib": s.ru_maxrss_kib,
                "guest_kib": s.guest_kib,
            })).collect::<Vec<_>>(),
        })).collect::<Vec<_>>(),
    })
}

/// A dot plot per VMM (first byte and exit, each run a dot, the median a
/// bar) on a log time axis, and the RSS medians as bars.
fn svg(vmms: &[Vmm]) -> String {
    const W: f64 = 900.0;
    const LEFT: f64 = 130.0;
    const ROW: f64 = 70.0;
    let plot_w = W - LEFT - 30.0;
    let all: Vec<f64> = vmms
        .iter()
        .flat_map(|v| v.samples.iter().flat_map(|s| [s.first_byte_ms, s.exit_ms]))
        .filter(|x| x.is_finite() && *x > 0.0)
        .collect();
    let lo = all
        .iter()
        .copied()
        .fold(f64::INFINITY, f64::min)
        .max(0.1)
        .log10()
        .floor();
    let hi = all
        .iter()
        .copied()
        .fold(0.0, f64::max)
        .max(1.0)
        .log10()
        .ceil()
        .max(lo + 1.0);
    let x = |ms: f64| LEFT + (ms.max(0.1).log10() - lo) / (hi - lo) * plot_w;
    let time_h = 40.0 + ROW * vmms.len() as f64;
    let rss_top = time_h + 40.0;
    let h = rss_top + 30.0 * vmms.len() as f64 + 40.0;
    let mut s = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{W}\" height=\"{h}\" font-family=\"sans-serif\" font-size=\"12\">\n\
         <rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n\
         <text x=\"{LEFT}\" y=\"18\" font-size=\"14\">spawn → first serial byte (blue) and → exit (orange), ms, log scale; bar = median</text>\n"
    );
    let mut decade = lo;
    while decade <= hi {
        let ms = 10f64.powf(decade);
        let gx = x(ms);
        s += &format!(
            "<line x1=\"{gx:.1}\" y1=\"30\" x2=\"{gx:.1}\" y2=\"{time_h:.1}\" stroke=\"#ddd\"/><text x=\"{gx:.1}\" y=\"{:.1}\" text-anchor=\"middle\">{ms}</text>\n",
            time_h + 14.0
        );
        decade += 1.0;
    }
    for (i, v) in vmms.iter().enumerate() {
        let y = 40.0 + ROW * i as f64;
        s += &format!("<text x=\"10\" y=\"{:.1}\">{}</text>\n", y + 28.0, v.name);
        for (k, (color, get)) in [
            (
                "#1f77b4",
                (|s: &Sample| s.first_byte_ms) as fn(&Sample) -> f64,
            ),
            ("#ff7f0e", |s: &Sample| s.exit_ms),
        ]
        .iter()
        .enumerate()
        {
            let cy = y + 18.0 + 20.0 * k as f64;
            for smp in &v.samples {
                s += &format!(
                    "<circle cx=\"{:.1}\" cy=\"{cy:.1}\" r=\"3\" fill=\"{color}\" fill-opacity=\"0.5\"/>\n",
                    x(get(smp))
                );
            }
            let med = samples(v, get).median();
            if med.is_finite() {
                let mx = x(med);
                s += &format!(
                    "<line x1=\"{mx:.1}\" y1=\"{:.1}\" x2=\"{mx:.1}\" y2=\"{:.1}\" stroke=\"black\" stroke-width=\"2\"/><text x=\"{:.1}\" y=\"{:.1}\">{med:.1}</text>\n",
                    cy - 8.0,
                    cy + 8.0,
                    mx + 4.0,
                    cy - 6.0
                );
            }
        }
    }
    let max_rss = vmms
        .iter()
        .map(|v| raw_rss(v).median())
        .filter(|m| m.is_finite())
        .fold(1.0, f64::max);
    s += &format!(
        "<text x=\"{LEFT}\" y=\"{:.1}\" font-size=\"14\">peak RSS, MiB (median; dark: outside guest memory)</text>\n",
        rss_top - 12.0
    );
    for (i, v) in vmms.iter().enumerate() {
        let y = rss_top + 30.0 * i as f64;
        let (raw, own) = (raw_rss(v).median(), rss(v).median());
        s += &format!(
            "<text x=\"10\" y=\"{:.1}\">{}</text>\
             <rect x=\"{LEFT}\" y=\"{y:.1}\" width=\"{:.1}\" height=\"18\" fill=\"#bbb\"/>\
             <rect x=\"{LEFT}\" y=\"{y:.1}\" width=\"{:.1}\" height=\"18\" fill=\"#2ca02c\"/>\
             <text x=\"{:.1}\" y=\"{:.1}\">{own:.2} ({raw:.2})</text>\n",
            y + 13.0,
            v.name,
            raw / max_rss * plot_w,
            own / max_rss * plot_w,
            LEFT + raw / max_rss * plot_w + 6.0,
            y + 13.0
        );
    }
    s += "</svg>\n";
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn static_binaries_are_told_from_dynamic_ones() {
        let me = std::env::current_exe().expect("test binary");
        assert!(!is_static(&me), "the test binary is dynamically linked");
        // busybox-static is installed by scripts/install-deps.sh.
        assert!(is_static(Path::new("/bin/busybox")));
        assert!(!is_static(Path::new("/nonexistent")));
        let dir = tempfile::tempdir().expect("tempdir");
        let junk = dir.path().join("junk");
        std::fs::write(&junk, b"not an elf").expect("write");
        assert!(!is_static(&junk));
    }
}
