//! The guest plays the attacker. A privileged container (all capabilities,
//! no seccomp: guest root) in the guest's PID namespace reaches the pod's
//! whole virtio-fs share through PID 1's root and tries each way a compromised guest could reach the host through it;
//! then its VM is killed and the pod removed, which is when a host that
//! trusted the share's layout would have followed the guest's symlinks.
//! Every test asserts that nothing changed on the host outside the pod's
//! own upper dirs and volumes.
//!
//! Real `vmpod serve`, real registry on loopback, real QEMU/TCG VM and
//! virtiofsd. One VM for the whole suite: boots are the expensive part.

use std::collections::BTreeMap;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use vmpod_cri_api::v1::*;
use vmpod_tests::pod::Pod;

/// Small limits, so that filling them takes a moment under TCG.
const WRITABLE_LAYER_BYTES: u64 = 16 << 20;
const CONSOLE_LOG_BYTES: u64 = 64 << 10;
/// The share as the guest's agent mounted it, seen from a container in the
/// guest's PID namespace.
const SHARE: &str = "/proc/1/root/run/vmpod/share";

/// Every file below `dir` with its content (symlinks as their target),
/// to show a tree did not change.
fn snapshot(dir: &Path) -> BTreeMap<PathBuf, String> {
    let mut out = BTreeMap::new();
    let mut stack = vec![dir.to_owned()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in entries.flatten() {
            let p = e.path();
            let meta = std::fs::symlink_metadata(&p).expect("lstat");
            let what = if meta.file_type().is_symlink() {
                format!("-> {}", std::fs::read_link(&p).expect("readlink").display())
            } else if meta.is_dir() {
                stack.push(p.clone());
                "dir".to_owned()
            } else {
                format!(
                    "{:o} {}",
                    meta.mode(),
                    String::from_utf8_lossy(&std::fs::read(&p).unwrap_or_default())
                )
            };
            out.insert(p, what);
        }
    }
    out
}

/// (mount point, options) of every mount below `dir`, from mountinfo
/// (per-mount options and super options together).
fn mounts_below(dir: &Path) -> Vec<(String, String)> {
    let prefix = dir.to_string_lossy().into_owned();
    std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap_or_default()
        .lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split(' ').collect();
            let point = *f.get(4)?;
            (point == prefix || point.starts_with(&format!("{prefix}/")))
                .then(|| (point.to_owned(), f.get(5).copied().unwrap_or("").to_owned()))
        })
        .collect()
}

/// Loop devices whose backing file lies under `dir`.
fn loops_under(dir: &Path) -> Vec<String> {
    let prefix = dir.to_string_lossy().into_owned();
    let Ok(entries) = std::fs::read_dir("/sys/block") else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|e| {
            let backing = std::fs::read_to_string(e.path().join("loop/backing_file")).ok()?;
            backing
                .trim()
                .starts_with(&prefix)
                .then(|| format!("{}: {}", e.file_name().to_string_lossy(), backing.trim()))
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_root_guest_cannot_reach_the_host() {
    let host = tempfile::Builder::new()
        .prefix("vmpod-hostile-")
        .tempdir()
        .unwrap();
    let canary = host.path().join("canary");
    std::fs::create_dir(&canary).unwrap();
    std::fs::write(canary.join("keep"), "alive\n").unwrap();
    let volume = host.path().join("volume");
    std::fs::create_dir(&volume).unwrap();
    std::fs::write(volume.join("data"), "data\n").unwrap();

    let config = format!(
        "writable-layer-bytes = {WRITABLE_LAYER_BYTES}\nconsole-log-bytes = {CONSOLE_LOG_BYTES}\n"
    );
    let mut pod = Pod::start("hostile", &config, None).await;
    let pod_dir = pod.pod_dir();
    let state = pod.daemon.state_dir.clone();
    // A neighbour's share, as another pod of the node has it.
    let neighbour = state.join("pods/ffffffffffffffff/share");
    std::fs::create_dir_all(&neighbour).unwrap();
    std::fs::write(neighbour.join("secret"), "theirs\n").unwrap();
    let canary_before = snapshot(&canary);
    let neighbour_before = snapshot(&neighbour);

    let mut c = pod.config("attacker", &["sleep", "3600"]);
    c.linux = Some(LinuxContainerConfig {
        security_context: Some(LinuxContainerSecurityContext {
            privileged: true,
            namespace_options: Some(NamespaceOption {
                pid: NamespaceMode::Node as i32,
                ..Default::default()
            }),
            ..Default::default()
        }),
        ..Default::default()
    });
    c.mounts = vec![Mount {
        container_path: "/vol".into(),
        host_path: volume.to_string_lossy().into(),
        ..Default::default()
    }];
    let id = pod.run(c).await;
    let share = format!("{SHARE}/containers/{id}");
    let canary_path = canary.display().to_string();
    // Guest root mounts the whole share for itself.
    // Guest root reaches the whole share through the agent's (PID 1's)
    // mount namespace.
    let listing = pod.sh(&id, &format!("ls {SHARE}/containers")).await;
    assert!(listing.contains(&id), "{SHARE}/containers: {listing}");

    // 1. The share's skeleton is read-only: `containers` cannot be
    //    replaced by a symlink to a host dir, nor can a symlink be planted
    //    where the next container's root or volume mount point will be.
    for attack in [
        format!("mv {SHARE}/containers {SHARE}/gone"),
        format!("ln -s {canary_path} {SHARE}/planted"),
        format!("ln -s {canary_path} {SHARE}/containers/next"),
        format!("mkdir {SHARE}/containers/next"),
        format!("rmdir {share}/rootfs"),
        format!("mv {share}/mounts/0 {share}/mounts/old"),
        format!("ln -s {canary_path} {share}/mounts/1"),
        format!("touch {share}/upper"),
    ] {
        let (code, out) = pod.sh_any(&id, &attack).await;
        assert_ne!(code, 0, "{attack:?} succeeded: {out}");
        assert!(
            out.contains("Read-only file system"),
            "{attack:?} failed for another reason: {out}"
        );
    }
    // The next container is made where the host put its mount points.
    let second = pod.run(pod.config("second", &["sleep", "3600"])).await;
    assert_eq!(
        pod.sh(&second, "ls /bin/busybox").await.trim(),
        "/bin/busybox"
    );
    let listing = pod.sh(&id, &format!("ls {SHARE}/containers")).await;
    assert!(listing.contains(&second), "{SHARE}/containers: {listing}");
    assert!(
        mounts_below(&canary).is_empty(),
        "something was mounted on the canary"
    );

    // 2. Tricks inside the rw hostPath volume: symlinks and `..` resolve
    //    in the guest; hard links to files outside the volume cannot be
    //    made, through the container's own mounts or the whole share.
    let tricks = format!(
        "cd /vol && ln -s {canary_path} abs && ln -s .. up && ln -s / root && \
         echo escaped > up/escaped && (echo overwritten > abs/keep || true) && \
         (echo x > root/etc/host-file || true) && \
         (ln /etc/passwd /vol/hard || true) && \
         (ln {share}/rootfs/etc/passwd {share}/mounts/0/hard2 || true) && \
         (ln {share}/rootfs/bin/busybox {SHARE}/hard3 || true) && ls -la /vol"
    );
    pod.sh(&id, &tricks).await;
    for name in ["hard", "hard2"] {
        if let Ok(m) = std::fs::symlink_metadata(volume.join(name)) {
            assert_eq!(
                m.nlink(),
                1,
                "{name} is a link to a file outside the volume"
            );
        }
    }
    assert!(
        !host.path().join("escaped").exists(),
        "`..` left the volume on the host"
    );
    assert_eq!(snapshot(&canary), canary_before, "the canary changed");

    // 3. Another pod's share is not reachable from this one.
    let (_, out) = pod
        .sh_any(
            &id,
            &format!(
                "ls {SHARE}/.. {SHARE}/../.. ; cat {SHARE}/../ffffffffffffffff/share/secret; \
                 echo pwned > {SHARE}/../../ffffffffffffffff/share/secret; \
                 ls -R {SHARE} | grep -c secret"
            ),
        )
        .await;
    assert!(!out.contains("theirs"), "read the neighbour's share: {out}");
    assert_eq!(
        snapshot(&neighbour),
        neighbour_before,
        "the neighbour's share changed"
    );

    // 4. setuid and device files written from the guest are inert on the
    //    host: every mount of the pod is nosuid,nodev there.
    pod.sh_any(
        &id,
        &format!(
            "cp /bin/busybox /vol/suid; chmod 4755 /vol/suid; mknod /vol/null c 1 3; \
             cp /bin/busybox /suid; chmod 4755 /suid; mknod /devnode c 1 3; \
             mknod {share}/rootfs/devnode2 c 1 3"
        ),
    )
    .await;
    let mounts = mounts_below(&pod_dir);
    assert!(!mounts.is_empty());
    for (point, options) in &mounts {
        let opts: Vec<&str> = options.split(',').collect();
        assert!(
            opts.contains(&"nosuid") && opts.contains(&"nodev"),
            "{point} is mounted {options}, not nosuid,nodev"
        );
    }
    let host_side = pod_dir.join(format!("share/containers/{id}"));
    for node in [
        host_side.join("mounts/0/null"),
        host_side.join("rootfs/devnode"),
        pod_dir.join(format!("writable/{id}/upper/devnode")),
    ] {
        if node.exists() {
            let e = std::fs::OpenOptions::new()
                .write(true)
                .open(&node)
                .expect_err("a guest-made device node opened on the host");
            assert_eq!(
                e.raw_os_error(),
                Some(libc::EACCES),
                "{}: {e}",
                node.display()
            );
        }
    }

    // 5. The console is capped: a guest writing to the serial port keeps
    //    at most two files of the configured size on the host.
    pod.sh(
        &id,
        "mkdir -p /mnt/dev && mount -t tmpfs none /mnt/dev && mknod /mnt/dev/ttyS0 c 4 64 && \
         head -c 400000 /dev/zero | tr '\\0' A > /mnt/dev/ttyS0",
    )
    .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let console = pod_dir.join("console.log");
    let rotated = pod_dir.join("console.log.1");
    for f in [&console, &rotated] {
        let len = std::fs::metadata(f).map(|m| m.len()).unwrap_or(0);
        assert!(
            len <= CONSOLE_LOG_BYTES,
            "{} is {len} bytes, over the cap of {CONSOLE_LOG_BYTES}",
            f.display()
        );
    }
    assert!(rotated.exists(), "400 kB of console did not rotate the log");

    // 6. The writable layer has a quota: the container gets ENOSPC, the
    //    host keeps a file of the configured size, and the usage reported
    //    to kubelet is the host's measure.
    let (code, out) = pod
        .sh_any(
            &second,
            "dd if=/dev/zero of=/fill bs=1M count=64 2>&1; sync",
        )
        .await;
    assert!(
        out.contains("No space left on device"),
        "filling the writable layer: exit {code}: {out}"
    );
    let image = pod_dir.join(format!("writable/{second}.img"));
    let meta = std::fs::metadata(&image).expect("the writable layer's image");
    assert_eq!(meta.len(), WRITABLE_LAYER_BYTES);
    assert!(
        meta.blocks() * 512 <= WRITABLE_LAYER_BYTES,
        "image grew past its size"
    );
    let stats = pod
        .rt
        .container_stats(ContainerStatsRequest {
            container_id: second.clone(),
        })
        .await
        .expect("ContainerStats")
        .into_inner()
        .stats
        .expect("stats");
    let used = stats
        .writable_layer
        .and_then(|w| w.used_bytes)
        .map(|b| b.value)
        .unwrap_or(0);
    assert!(
        used > WRITABLE_LAYER_BYTES / 2 && used <= WRITABLE_LAYER_BYTES,
        "writable layer reports {used} bytes"
    );

    // 7. Last, the teardown a crash causes: the guest replaces what it
    //    can with symlinks to the canary, the VM is killed, the pod removed.
    pod.sh_any(
        &id,
        &format!(
            "rm -rf {share}/mounts/0/* ; ln -s {canary_path} {share}/mounts/0/link; \
             ln -s {canary_path} {share}/rootfs/link; ln -sfn {canary_path} {SHARE}/containers"
        ),
    )
    .await;
    let vm = pod.vm_pid().await;
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(vm as i32),
        nix::sys::signal::Signal::SIGKILL,
    )
    .expect("kill the VMM");
    let t0 = Instant::now();
    loop {
        let status = pod.sandbox_status().await;
        if status.status.map(|s| s.state()) == Some(PodSandboxState::SandboxNotready) {
            break;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(30),
            "pod still ready after its VM died"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    pod.remove_pod().await;

    assert_eq!(snapshot(&canary), canary_before, "the canary changed");
    assert_eq!(
        snapshot(&neighbour),
        neighbour_before,
        "the neighbour's share changed"
    );
    assert!(!pod_dir.exists(), "the pod dir is left");
    assert!(
        mounts_below(&state).is_empty(),
        "mounts left: {:?}",
        mounts_below(&state)
    );
    assert!(
        loops_under(&state).is_empty(),
        "loop devices left: {:?}",
        loops_under(&state)
    );
    // The volume is the user's: what the guest wrote there stays, and
    // nothing of it was followed out.
    assert!(volume.is_dir());
    assert!(
        std::fs::symlink_metadata(volume.join("link")).is_ok_and(|m| m.file_type().is_symlink())
    );
}
