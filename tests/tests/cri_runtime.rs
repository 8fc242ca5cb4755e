//! The runtime-level CRI calls against a real `vmpod serve`, through a tonic
//! client on its unix socket: Version, Status, RuntimeConfig, and the
//! UNIMPLEMENTED answer for calls later issues implement.

use std::collections::HashMap;

use tonic::Code;
use vmpod_cri_api::v1::*;
use vmpod_tests::daemon::{Daemon, guest_kernel, test_config};

#[tokio::test]
async fn version_names_runtime_and_api() {
    let d = Daemon::start().await.unwrap();
    let v = d
        .runtime()
        .await
        .unwrap()
        .version(VersionRequest {
            version: "v1".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(v.runtime_name, "vmpod");
    assert_eq!(v.runtime_api_version, "v1");
    assert_eq!(v.runtime_version, env!("CARGO_PKG_VERSION"));
}

fn conditions(s: &StatusResponse) -> HashMap<String, RuntimeCondition> {
    s.status
        .as_ref()
        .expect("status present")
        .conditions
        .iter()
        .map(|c| (c.r#type.clone(), c.clone()))
        .collect()
}

#[tokio::test]
async fn status_reports_runtime_ready_and_network_not_ready_without_cni() {
    // No CNI config: the embedded default network is chosen, and with no
    // plugins to run it NetworkReady is false, naming the missing plugin and
    // where it was looked for.
    let d = Daemon::start_with_config(&test_config(
        "[cni]\nconf-dir = \"/nonexistent/vmpod-test/net.d\"\nbin-dirs = [\"/nonexistent/vmpod-test/bin\"]\n",
    ))
    .await
    .unwrap();
    let s = d
        .runtime()
        .await
        .unwrap()
        .status(StatusRequest { verbose: false })
        .await
        .unwrap()
        .into_inner();
    let c = conditions(&s);
    let rt = &c["RuntimeReady"];
    // The guest image is built by images/build.sh before the suite runs, and
    // this host has QEMU and the helpers, so the runtime is ready.
    assert!(
        rt.status,
        "RuntimeReady false: {} {}",
        rt.reason, rt.message
    );
    assert_eq!(rt.reason, "BackendReady");
    assert!(rt.message.contains("qemu"), "{}", rt.message);
    let net = &c["NetworkReady"];
    assert!(!net.status);
    assert_eq!(net.reason, "NetworkPluginNotReady");
    for want in [
        "embedded default",
        "\"bridge\"",
        "/nonexistent/vmpod-test/bin",
    ] {
        assert!(net.message.contains(want), "{want}: {}", net.message);
    }
    assert!(s.info.is_empty(), "info only when verbose");
}

#[tokio::test]
async fn status_network_ready_with_cni_config_and_verbose_info() {
    let dir = tempfile::tempdir().unwrap();
    let conf = dir.path().join("net.d");
    let bin = dir.path().join("bin");
    std::fs::create_dir_all(&conf).unwrap();
    std::fs::create_dir_all(&bin).unwrap();
    for plugin in ["bridge", "host-local"] {
        let p = bin.join(plugin);
        std::fs::write(&p, "#!/bin/sh\nexit 1\n").unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    std::fs::write(
        conf.join("10-vmpod.conflist"),
        r#"{"cniVersion":"1.0.0","name":"vmpod-test","plugins":[{"type":"bridge","ipam":{"type":"host-local"}}]}"#,
    )
    .unwrap();
    let d = Daemon::start_with_config(&test_config(&format!(
        "[cni]\nconf-dir = {conf:?}\nbin-dirs = [{bin:?}]\n"
    )))
    .await
    .unwrap();
    let s = d
        .runtime()
        .await
        .unwrap()
        .status(StatusRequest { verbose: true })
        .await
        .unwrap()
        .into_inner();
    let c = conditions(&s);
    assert!(c["RuntimeReady"].status);
    let net = &c["NetworkReady"];
    assert!(net.status, "{} {}", net.reason, net.message);
    assert!(net.message.contains("vmpod-test"), "{}", net.message);

    let backend: serde_json::Value = serde_json::from_str(&s.info["backend"]).unwrap();
    assert_eq!(backend["backend"]["name"], "qemu");
    let guest: serde_json::Value = serde_json::from_str(&s.info["guest"]).unwrap();
    assert_eq!(guest["kernel"], guest_kernel().display().to_string());
    let kv = guest["kernelVersion"]
        .as_str()
        .expect("kernel version read from vmlinux");
    assert!(kv.starts_with("6.1"), "{kv}");
    let state: serde_json::Value = serde_json::from_str(&s.info["state"]).unwrap();
    assert_eq!(state["schemaVersion"], 5);
}

#[tokio::test]
async fn status_runtime_not_ready_without_guest_kernel() {
    let d = Daemon::start_with_config(
        "[vm]\nkernel = \"/nonexistent/vmlinux\"\ninitramfs = \"/nonexistent/initramfs\"\n",
    )
    .await
    .unwrap();
    let s = d
        .runtime()
        .await
        .unwrap()
        .status(StatusRequest { verbose: false })
        .await
        .unwrap()
        .into_inner();
    let rt = &conditions(&s)["RuntimeReady"];
    assert!(!rt.status);
    assert_eq!(rt.reason, "GuestImageMissing");
    assert!(
        rt.message.contains("/nonexistent/vmlinux"),
        "{}",
        rt.message
    );
    assert!(rt.message.contains("images/build.sh"), "{}", rt.message);
}

#[tokio::test]
async fn runtime_config_reports_configured_cgroup_driver() {
    for (name, want) in [
        ("cgroupfs", CgroupDriver::Cgroupfs),
        ("systemd", CgroupDriver::Systemd),
    ] {
        // cgroup-driver is a top-level key, so it must precede [vm].
        let config = format!("cgroup-driver = {name:?}\n{}", test_config(""));
        let d = Daemon::start_with_config(&config).await.unwrap();
        let r = d
            .runtime()
            .await
            .unwrap()
            .runtime_config(RuntimeConfigRequest {})
            .await
            .unwrap()
            .into_inner();
        assert_eq!(r.linux.unwrap().cgroup_driver(), want, "{name}");
    }
}

#[tokio::test]
async fn unimplemented_and_bad_calls_get_clear_errors_and_daemon_stays_healthy() {
    let d = Daemon::start().await.unwrap();
    let mut rt = d.runtime().await.unwrap();
    let mut img = d.images().await.unwrap();

    let e = rt
        .checkpoint_container(CheckpointContainerRequest::default())
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::Unimplemented);
    assert!(
        e.message().contains("CheckpointContainer"),
        "{}",
        e.message()
    );

    // The streaming calls are served (tests/tests/streaming.rs); empty
    // requests name what is missing.
    let e = rt.exec(ExecRequest::default()).await.unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    assert!(e.message().starts_with("cmd:"), "{}", e.message());
    let e = rt
        .port_forward(PortForwardRequest::default())
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    assert!(
        e.message().starts_with("pod_sandbox_id:"),
        "{}",
        e.message()
    );
    let e = rt
        .attach(AttachRequest {
            stdout: true,
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    assert!(e.message().starts_with("container_id:"), "{}", e.message());

    // GetContainerEvents is served (tests/tests/container_events.rs): a
    // stream that stays open with nothing happening.
    let mut events = rt
        .get_container_events(GetEventsRequest::default())
        .await
        .expect("GetContainerEvents")
        .into_inner();
    let quiet = tokio::time::timeout(std::time::Duration::from_millis(200), events.message()).await;
    assert!(quiet.is_err(), "an event with no containers: {quiet:?}");

    // Bad requests to implemented calls are clear errors, too.
    let e = rt
        .create_container(CreateContainerRequest::default())
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    assert!(e.message().starts_with("config:"), "{}", e.message());
    let e = rt.exec_sync(ExecSyncRequest::default()).await.unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    assert!(e.message().starts_with("cmd:"), "{}", e.message());
    let e = rt
        .container_status(ContainerStatusRequest {
            container_id: "nope".into(),
            verbose: false,
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::NotFound);
    let listed = rt
        .list_containers(ListContainersRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert!(listed.containers.is_empty());

    let e = img
        .pull_image(PullImageRequest::default())
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    assert!(e.message().contains("image"), "{}", e.message());

    // Still serving after the errors.
    rt.version(VersionRequest::default()).await.unwrap();
}

/// A message whose field 1 is a varint where `VersionRequest` has a string.
#[derive(Clone, PartialEq, prost::Message)]
struct WrongWireType {
    #[prost(uint64, tag = "1")]
    version: u64,
}

#[tokio::test]
async fn malformed_and_oversized_requests_get_errors_and_daemon_stays_healthy() {
    let d = Daemon::start().await.unwrap();
    let channel = vmpod_tests::daemon::connect_unix(&d.socket).await.unwrap();
    let mut grpc = tonic::client::Grpc::new(channel);
    grpc.ready().await.unwrap();
    let path = http::uri::PathAndQuery::from_static("/runtime.v1.RuntimeService/Version");
    let codec = tonic_prost::ProstCodec::<WrongWireType, VersionResponse>::default();
    let e = grpc
        .unary(
            tonic::Request::new(WrongWireType { version: 7 }),
            path,
            codec,
        )
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::Internal, "{e:?}");
    assert!(e.message().contains("decode"), "{}", e.message());

    let mut rt = d.runtime().await.unwrap();
    let e = rt
        .version(VersionRequest {
            version: "x".repeat(5 << 20),
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::OutOfRange, "{e:?}");

    // Still serving after both.
    let v = rt
        .version(VersionRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert_eq!(v.runtime_name, "vmpod");
}

/// grpc-go clients before kubelet 1.27 (crictl 1.26 among them) send the
/// socket path as `:authority`; the h2 server under tonic would reset such
/// streams. This speaks raw HTTP/2 the way those clients do.
#[tokio::test]
async fn socket_path_authority_from_old_grpc_go_clients_is_accepted() {
    use prost::Message;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let d = Daemon::start().await.unwrap();
    let mut s = tokio::net::UnixStream::connect(&d.socket).await.unwrap();
    let frame = |kind: u8, flags: u8, stream: u32, payload: &[u8]| {
        let len = payload.len();
        let mut v = vec![(len >> 16) as u8, (len >> 8) as u8, len as u8, kind, flags];
        v.extend_from_slice(&stream.to_be_bytes());
        v.extend_from_slice(payload);
        v
    };
    let socket_path = d.socket.display().to_string();
    let mut enc = loona_hpack::Encoder::new();
    let block = enc.encode(vec![
        (&b":method"[..], &b"POST"[..]),
        (&b":scheme"[..], &b"http"[..]),
        (&b":authority"[..], socket_path.as_bytes()),
        (&b":path"[..], &b"/runtime.v1.RuntimeService/Version"[..]),
        (&b"content-type"[..], &b"application/grpc"[..]),
        (&b"te"[..], &b"trailers"[..]),
    ]);
    let mut out = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
    out.extend(frame(4, 0, 0, &[]));
    out.extend(frame(1, 0x4, 1, &block));
    let msg = VersionRequest {
        version: "v1".into(),
    }
    .encode_to_vec();
    let mut grpc = vec![0u8];
    grpc.extend_from_slice(&(msg.len() as u32).to_be_bytes());
    grpc.extend_from_slice(&msg);
    out.extend(frame(0, 0x1, 1, &grpc));
    s.write_all(&out).await.unwrap();

    let mut dec = loona_hpack::Decoder::new();
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(10);
    let mut body = Vec::new();
    let mut grpc_status = None;
    while grpc_status.is_none() {
        let mut head = [0u8; 9];
        tokio::time::timeout_at(deadline, s.read_exact(&mut head))
            .await
            .expect("server answered in time")
            .expect("connection stays open");
        let len = (head[0] as usize) << 16 | (head[1] as usize) << 8 | head[2] as usize;
        let mut payload = vec![0u8; len];
        s.read_exact(&mut payload).await.unwrap();
        match head[3] {
            // SETTINGS from the server: acknowledge.
            4 if head[4] & 1 == 0 => s.write_all(&frame(4, 1, 0, &[])).await.unwrap(),
            // RST_STREAM: the bug this guards against.
            3 => panic!("server reset the stream (error code {payload:?})"),
            0 => body.extend_from_slice(&payload),
            1 => {
                for (n, v) in dec.decode(&payload).unwrap() {
                    if n == b"grpc-status" {
                        grpc_status = Some(String::from_utf8(v).unwrap());
                    }
                }
            }
            _ => {}
        }
    }
    assert_eq!(grpc_status.as_deref(), Some("0"));
    let resp = VersionResponse::decode(&body[5..]).unwrap();
    assert_eq!(resp.runtime_name, "vmpod");
}
