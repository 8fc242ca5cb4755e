//! `vmpod serve` start-up, shutdown and bad-input behaviour, against the
//! real binary: socket handling, the state-dir lock, config errors, and
//! nothing left half-created when start-up fails.

use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use vmpod_tests::daemon::{Daemon, binary, test_config};

/// Runs `vmpod serve ARGS` expecting it to fail fast; returns (code, stderr).
fn serve_expect_failure(args: &[&str]) -> (i32, String) {
    let mut child = Command::new(binary("vmpod"))
        .arg("serve")
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(15);
    while child.try_wait().unwrap().is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("vmpod serve {args:?} kept running; it should have failed");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let out = child.wait_with_output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// The failure is one `vmpod: ...` line on stderr.
fn one_error_line(stderr: &str) -> &str {
    let lines: Vec<&str> = stderr
        .lines()
        .filter(|l| l.starts_with("vmpod: "))
        .collect();
    assert_eq!(lines.len(), 1, "want one error line, got:\n{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
    lines[0]
}

fn path_str(p: &Path) -> &str {
    p.to_str().unwrap()
}

#[tokio::test]
async fn socket_is_created_0660_and_removed_on_sigterm() {
    let mut d = Daemon::start().await.unwrap();
    let meta = std::fs::symlink_metadata(&d.socket).unwrap();
    assert!(meta.file_type().is_socket());
    assert_eq!(meta.permissions().mode() & 0o777, 0o660);
    assert!(d.state_dir.join("vmpod.redb").is_file());
    let status = d.stop_with(libc::SIGTERM, Duration::from_secs(10)).unwrap();
    assert!(status.success(), "{status}");
    assert!(!d.socket.exists(), "socket removed on shutdown");
    assert!(d.log_text().contains("shutting down"), "{}", d.log_text());
}

#[tokio::test]
async fn sigint_also_shuts_down_gracefully() {
    let mut d = Daemon::start().await.unwrap();
    let status = d.stop_with(libc::SIGINT, Duration::from_secs(10)).unwrap();
    assert!(status.success(), "{status}");
    assert!(!d.socket.exists());
}

#[tokio::test]
async fn stale_socket_is_replaced_and_state_survives_restart() {
    let mut d = Daemon::start().await.unwrap();
    // Simulate a crash: SIGKILL leaves the socket file behind.
    let status = d.stop_with(libc::SIGKILL, Duration::from_secs(10)).unwrap();
    assert!(!status.success());
    assert!(d.socket.exists(), "SIGKILL leaves the socket file");
    let config = d.dir.path().join("config.toml");
    let log = d.dir.path().join("daemon2.log");
    let mut child =
        vmpod_tests::daemon::spawn_serve(&config, &d.socket, &d.state_dir, &log).unwrap();
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        if tokio::net::UnixStream::connect(&d.socket).await.is_ok() {
            break;
        }
        assert!(
            child.try_wait().unwrap().is_none(),
            "{}",
            std::fs::read_to_string(&log).unwrap()
        );
        assert!(Instant::now() < deadline, "restart did not serve");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let channel = vmpod_tests::daemon::connect_unix(&d.socket).await.unwrap();
    let mut rt = vmpod_cri_api::RuntimeServiceClient::new(channel);
    rt.version(vmpod_cri_api::v1::VersionRequest::default())
        .await
        .unwrap();
    let _ = child.kill();
    let _ = child.wait();
    assert!(
        std::fs::read_to_string(&log)
            .unwrap()
            .contains("replacing stale socket")
    );
}

#[tokio::test]
async fn second_daemon_on_same_state_dir_exits_2_and_leaves_first_intact() {
    let d = Daemon::start().await.unwrap();
    let other_sock_dir = d.dir.path().join("other-run");
    let other_sock = other_sock_dir.join("vmpod.sock");
    let (code, err) = serve_expect_failure(&[
        "--socket",
        path_str(&other_sock),
        "--state-dir",
        path_str(&d.state_dir),
    ]);
    assert_eq!(code, 2, "{err}");
    let line = one_error_line(&err);
    assert!(line.contains("in use by another vmpod daemon"), "{line}");
    assert!(line.contains(&format!("pid {}", d.pid())), "{line}");
    assert!(
        !other_sock_dir.exists(),
        "failed start-up must not leave its socket dir"
    );
    // The first daemon is untouched.
    d.runtime()
        .await
        .unwrap()
        .version(vmpod_cri_api::v1::VersionRequest::default())
        .await
        .unwrap();
}

#[tokio::test]
async fn socket_served_by_another_daemon_is_not_stolen() {
    let d = Daemon::start().await.unwrap();
    let other_state = d.dir.path().join("other-state");
    let (code, err) = serve_expect_failure(&[
        "--socket",
        path_str(&d.socket),
        "--state-dir",
        path_str(&other_state),
    ]);
    assert_eq!(code, 2, "{err}");
    assert!(
        one_error_line(&err).contains("in use by another process"),
        "{err}"
    );
    assert!(
        !other_state.exists(),
        "failed start-up must remove the state dir it created"
    );
    d.runtime()
        .await
        .unwrap()
        .version(vmpod_cri_api::v1::VersionRequest::default())
        .await
        .unwrap();
}

#[test]
fn non_socket_file_at_socket_path_is_refused_and_kept() {
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("vmpod.sock");
    std::fs::write(&sock, "precious").unwrap();
    let state = dir.path().join("state");
    let (code, err) =
        serve_expect_failure(&["--socket", path_str(&sock), "--state-dir", path_str(&state)]);
    assert_eq!(code, 2, "{err}");
    assert!(one_error_line(&err).contains("is not a socket"), "{err}");
    assert_eq!(std::fs::read_to_string(&sock).unwrap(), "precious");
    assert!(!state.exists());
}

#[test]
fn malformed_config_names_file_line_and_key() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("config.toml");
    std::fs::write(
        &config,
        "log-level = \"info\"\n[vm]\nbackend = \"auto\"\nvcpu = 4\n",
    )
    .unwrap();
    let state = dir.path().join("state");
    let (code, err) = serve_expect_failure(&[
        "--config",
        path_str(&config),
        "--state-dir",
        path_str(&state),
        "--socket",
        path_str(&dir.path().join("s.sock")),
    ]);
    assert_eq!(code, 2, "{err}");
    let line = one_error_line(&err);
    assert!(line.contains(&format!("{}:4:", config.display())), "{line}");
    assert!(line.contains("vcpu"), "{line}");
    assert!(!state.exists(), "nothing created for a bad config");

    std::fs::write(&config, "log-level = \"loud\"\n").unwrap();
    let (code, err) = serve_expect_failure(&["--config", path_str(&config)]);
    assert_eq!(code, 2);
    let line = one_error_line(&err);
    assert!(line.contains(":1:") && line.contains("loud"), "{line}");

    std::fs::write(&config, "socket = [1,\n").unwrap();
    let (code, err) = serve_expect_failure(&["--config", path_str(&config)]);
    assert_eq!(code, 2);
    assert!(
        one_error_line(&err).contains(&config.display().to_string()),
        "{err}"
    );
}

/// A read-only tmpfs, unmounted on drop. Needs CAP_SYS_ADMIN, which the
/// suite has (it runs as root, like the daemon).
struct ReadOnlyMount {
    path: PathBuf,
    _dir: tempfile::TempDir,
}

impl ReadOnlyMount {
    fn new() -> ReadOnlyMount {
        let dir = tempfile::tempdir().unwrap();
        let mnt = dir.path().join("ro");
        std::fs::create_dir(&mnt).unwrap();
        nix::mount::mount(
            Some("tmpfs"),
            &mnt,
            Some("tmpfs"),
            nix::mount::MsFlags::MS_RDONLY,
            None::<&str>,
        )
        .expect("mounting a read-only tmpfs needs root (CAP_SYS_ADMIN)");
        ReadOnlyMount {
            path: mnt,
            _dir: dir,
        }
    }
}

impl Drop for ReadOnlyMount {
    fn drop(&mut self) {
        let _ = nix::mount::umount2(&self.path, nix::mount::MntFlags::MNT_DETACH);
    }
}

#[test]
fn state_dir_on_read_only_fs_exits_2_without_leftovers() {
    let ro = ReadOnlyMount::new();
    let dir = tempfile::tempdir().unwrap();
    let sock_dir = dir.path().join("run");
    let (code, err) = serve_expect_failure(&[
        "--state-dir",
        path_str(&ro.path.join("state")),
        "--socket",
        path_str(&sock_dir.join("vmpod.sock")),
    ]);
    assert_eq!(code, 2, "{err}");
    let line = one_error_line(&err);
    assert!(line.contains("Read-only file system"), "{line}");
    assert!(line.contains("state"), "{line}");
    assert!(!sock_dir.exists());
}

#[test]
fn socket_in_unwritable_missing_dir_exits_2_without_leftovers() {
    let ro = ReadOnlyMount::new();
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let (code, err) = serve_expect_failure(&[
        "--state-dir",
        path_str(&state),
        "--socket",
        path_str(&ro.path.join("missing/vmpod.sock")),
    ]);
    assert_eq!(code, 2, "{err}");
    let line = one_error_line(&err);
    assert!(line.contains("socket dir"), "{line}");
    assert!(line.contains("Read-only file system"), "{line}");
    assert!(
        !state.exists(),
        "state dir created before the socket failure is rolled back"
    );
}

#[tokio::test]
async fn json_logs_are_structured() {
    let config = format!("log-format = \"json\"\n{}", test_config(""));
    let mut d = Daemon::start_with_config(&config).await.unwrap();
    d.stop_with(libc::SIGTERM, Duration::from_secs(10)).unwrap();
    let log = d.log_text();
    let first = log.lines().next().expect("some log output");
    let v: serde_json::Value =
        serde_json::from_str(first).unwrap_or_else(|e| panic!("{e}: {first}"));
    assert!(
        v.get("level").is_some() && v.get("message").is_some(),
        "{first}"
    );
}
