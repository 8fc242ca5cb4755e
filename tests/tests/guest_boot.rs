//! Boots the real guest image (images/out, from images/build.sh) under
//! QEMU/TCG with the production device contract and talks to vmpod-agent
//! over hybrid vsock: the banner, Health, GuestInfo and SetupSandbox.
//!
//! A missing image is a failure, not a skip: run `images/build.sh`.

use std::time::{Duration, Instant};

use anyhow::{Context, Result, ensure};
use vmpod_agent_proto::v1::{GuestInfoRequest, HealthRequest, SetupSandboxRequest};
use vmpod_agent_proto::{AGENT_VSOCK_PORT, SHARE_MOUNTPOINT};
use vmpod_tests::daemon::repo_root;
use vmpod_tests::guest::{GuestConfig, GuestVm};

/// SetupSandbox sets the guest clock; a day off shows it really does.
const DAY_NS: i64 = 86_400 * 1_000_000_000;

fn now_ns() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as i64)
}

/// TCG boots in about a second here; the margin is for loaded CI machines.
const BOOT_TIMEOUT: Duration = Duration::from_secs(90);

/// Boots a VM, runs `check` against it, and on failure panics with the
/// error and the tail of the serial console. The VM is torn down in any case.
async fn with_guest<F>(config: GuestConfig, check: F)
where
    F: AsyncFnOnce(&mut GuestVm) -> Result<()>,
{
    let mut vm = match GuestVm::boot(&config) {
        Ok(vm) => vm,
        Err(err) => panic!("cannot boot the guest: {err:#}"),
    };
    let result = check(&mut vm).await;
    if let Err(err) = result {
        panic!("{err:#}\n{}", vm.diagnostics(40));
    }
}

fn secs(d: Duration) -> f64 {
    d.as_secs_f64()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_boots_and_reports_guest_info() {
    with_guest(GuestConfig::default(), async |vm| {
        let banner = vm.wait_for_banner(BOOT_TIMEOUT).await?;
        let to_banner = vm.started.elapsed();
        let expected_release =
            std::fs::read_to_string(repo_root().join("images/out/vmlinux.version"))
                .context("cannot read images/out/vmlinux.version")?;
        let expected_release = expected_release.trim();
        ensure!(
            banner.contains(&format!("kernel={expected_release}")),
            "banner {banner:?} does not name kernel {expected_release}"
        );

        let stream = vm
            .connect_vsock(AGENT_VSOCK_PORT, Duration::from_secs(30))
            .await?;
        let to_vsock = vm.started.elapsed();
        drop(stream);

        let mut client = vm.agent_client().await?;
        let rpc_start = Instant::now();
        let health = client
            .health(HealthRequest {})
            .await
            .context("Health")?
            .into_inner();
        let health_rtt = rpc_start.elapsed();
        ensure!(health.ready, "agent not ready: {health:?}");
        ensure!(
            health.agent_version == env!("CARGO_PKG_VERSION"),
            "agent version {} differs from the workspace's {}",
            health.agent_version,
            env!("CARGO_PKG_VERSION")
        );

        let info = client
            .guest_info(GuestInfoRequest {})
            .await
            .context("GuestInfo")?
            .into_inner();
        ensure!(
            info.kernel_release.contains("vmpod") && info.kernel_release == expected_release,
            "kernel release {:?}, want {expected_release:?}",
            info.kernel_release
        );
        ensure!(!info.kernel_version.is_empty(), "empty kernel version");
        ensure!(info.cpus >= 1, "cpus = {}", info.cpus);
        ensure!(
            info.memory_total_bytes > 0 && info.memory_total_bytes <= 256 << 20,
            "memory total {} outside (0, 256 MiB]",
            info.memory_total_bytes
        );
        ensure!(
            info.memory_available_bytes > 0
                && info.memory_available_bytes <= info.memory_total_bytes,
            "memory available {} of {}",
            info.memory_available_bytes,
            info.memory_total_bytes
        );
        ensure!(info.uptime_seconds > 0.0, "uptime {}", info.uptime_seconds);
        let boot = info.boot.context("GuestInfo without boot timestamps")?;
        ensure!(
            0 < boot.agent_start_ns
                && boot.agent_start_ns <= boot.mounts_done_ns
                && boot.mounts_done_ns <= boot.serving_ns
                && (boot.serving_ns as f64) < info.uptime_seconds * 1e9,
            "boot timestamps out of order: {boot:?}, uptime {} s",
            info.uptime_seconds
        );
        ensure!(
            info.virtiofs_mounts.is_empty(),
            "unexpected virtio-fs mounts {:?}",
            info.virtiofs_mounts
        );

        eprintln!(
            "guest boot (QEMU/TCG, from qemu start): banner {:.3} s, vsock OK {:.3} s; \
             in guest (CLOCK_BOOTTIME): /init {:.3} s, mounts {:.3} s, serving {:.3} s; \
             Health round trip {:.1} ms; {} MiB total, {} MiB available, {} cpu(s)",
            secs(to_banner),
            secs(to_vsock),
            boot.agent_start_ns as f64 / 1e9,
            boot.mounts_done_ns as f64 / 1e9,
            boot.serving_ns as f64 / 1e9,
            health_rtt.as_secs_f64() * 1e3,
            info.memory_total_bytes >> 20,
            info.memory_available_bytes >> 20,
            info.cpus,
        );
        Ok(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn setup_sandbox_mounts_the_share_and_writes_etc() {
    let share = tempfile::tempdir().expect("share dir");
    let config = GuestConfig {
        share: Some(share.path().to_path_buf()),
        ..GuestConfig::default()
    };
    with_guest(config, async |vm| {
        vm.wait_for_banner(BOOT_TIMEOUT).await?;
        let mut client = vm.agent_client().await?;
        let request = SetupSandboxRequest {
            hostname: "pod-a".into(),
            dns_servers: vec!["10.96.0.10".into()],
            dns_searches: vec!["default.svc.cluster.local".into()],
            dns_options: vec!["ndots:5".into()],
            share_tag: vmpod_agent_proto::SHARE_TAG.into(),
            // A day ahead of the host: the guest must take whatever it is given.
            host_time_ns: now_ns() + DAY_NS,
            interfaces: Vec::new(),
        };
        // The second call must be a no-op that still succeeds.
        for attempt in 1..=2 {
            let resp = client
                .setup_sandbox(request.clone())
                .await
                .with_context(|| format!("SetupSandbox call {attempt}"))?
                .into_inner();
            ensure!(
                resp.share_mountpoint == SHARE_MOUNTPOINT,
                "share mounted at {:?}",
                resp.share_mountpoint
            );
        }
        let info = client
            .guest_info(GuestInfoRequest {})
            .await
            .context("GuestInfo")?
            .into_inner();
        ensure!(info.hostname == "pod-a", "hostname {:?}", info.hostname);
        let skew = info.wall_clock_ns - (now_ns() + DAY_NS);
        ensure!(
            skew.abs() < 60_000_000_000,
            "guest clock {} is not the host's time given to SetupSandbox (off by {skew} ns)",
            info.wall_clock_ns
        );
        ensure!(
            info.resolv_conf
                == "nameserver 10.96.0.10\nsearch default.svc.cluster.local\noptions ndots:5\n",
            "resolv.conf {:?}",
            info.resolv_conf
        );
        ensure!(info.hosts.contains("pod-a"), "hosts {:?}", info.hosts);
        ensure!(
            info.virtiofs_mounts == [SHARE_MOUNTPOINT],
            "virtio-fs mounts {:?}",
            info.virtiofs_mounts
        );

        let bad = client
            .setup_sandbox(SetupSandboxRequest {
                hostname: "not a hostname".into(),
                ..SetupSandboxRequest::default()
            })
            .await;
        ensure!(
            matches!(&bad, Err(s) if s.code() == tonic::Code::InvalidArgument),
            "bad hostname accepted: {bad:?}"
        );
        Ok(())
    })
    .await;
}
