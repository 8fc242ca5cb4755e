//! `vmpod bench stream`: what `kubectl exec` and `kubectl port-forward` cost
//! through vmpod's streaming server, next to the direct peers measured in
//! the same run against one private `vmpod serve`.
//!
//! One POD-network pod runs two containers: an idle `sleep 86400`, and the
//! dd sink of `vmpod bench network` (busybox `nc -ll -p 5001 -e sh -c 'dd
//! of=/dev/null bs=65536 count=N iflag=fullblock 2>&1'`), which per
//! connection reads N 64 KiB records, writes dd's `A+B records in` line back
//! and closes.
//!
//! **Exec of `true`.** Both paths run `true` in the idle container through
//! the shim and the agent and learn that it exited 0:
//!
//! - streaming, as `kubectl exec` does: the CRI `Exec` call (stdout only, no
//!   tty), a TCP connection to the URL it returns, the HTTP/1.1 upgrade to
//!   SPDY/3.1 (`v4.channel.k8s.io`), the `error` and `stdout` streams opened
//!   (each open waits for the server's reply), then both read to their end
//!   and the JSON `Status` on the error stream checked to say `Success`.
//!   Timed from the Exec call to the end of the error stream, where kubectl
//!   has its exit code; closing the session afterwards is not timed.
//! - ExecSync: timed from request to answer, exit code 0 checked.
//!
//! The process start in the guest is the same on both; the difference is
//! the price of the interactive protocol: the URL hop, the upgrade and the
//! SPDY stream handshakes.
//!
//! **Port-forward throughput.** Both paths write the same N records to the
//! same sink and end at the same point, the sink's reply and close; every
//! reply is checked to say all N records arrived:
//!
//! - port-forward: one SPDY session for the whole run, from a CRI
//!   `PortForward` URL, set up untimed before the first sample, as a running
//!   `kubectl port-forward` holds one. Per sample a new stream pair, `error`
//!   then `data`, with `port` 5001 and a fresh `requestid`: one forwarded
//!   connection, which the agent makes to localhost:5001 inside the VM.
//!   Timed from opening the pair to the end of the data stream, after
//!   writing the N records on it and finishing it, and reading the reply.
//! - direct TCP: the bench connects to the pod IP, port 5001, writes the N
//!   records, shuts its write side and reads the reply to EOF (`vmpod bench
//!   network`'s host → pod path).
//!
//! Port-forward's extra hops are SPDY framing over loopback to the daemon,
//! the shim's gRPC stream, vsock to the agent and loopback TCP in the guest,
//! against the TAP of the direct path.
//!
//! Each comparison takes turns by rounds, the order swapped every round,
//! after one untimed warm-up of each path. The upgraded connections set
//! TCP_NODELAY, as Go's net package (kubectl's) does by default.

use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use vmpod_cri_api::RuntimeServiceClient;
use vmpod_cri_api::v1::{ExecRequest, NamespaceMode, PortForwardRequest};
use vmpod_spdy::{Incoming, RecvStream, Session};

use super::network::{
    PORT, RECORD, Rt, TRANSFER_LIMIT, check_reply, exec_true, mb_per_s, ms, pod_ip, pull,
    remove_all_pods, run_pod, send, start_container, throughput_table, wait_for_sink,
};
use super::{PrivateDaemon, Samples, connect, print_table};

pub struct Options {
    /// A busybox image: `sh`, `sleep`, `true`, and the `busybox` binary with
    /// the `nc` (with `-e`) and `dd` applets.
    pub image: String,
    /// Timed rounds, each path once per round.
    pub rounds: usize,
    /// MiB per throughput sample.
    pub mib: u64,
    pub config_file: Option<std::path::PathBuf>,
}

/// kubectl exec's remotecommand version with a JSON exit status.
const EXEC_PROTOCOL: &str = "v4.channel.k8s.io";
const PORT_FORWARD_PROTOCOL: &str = "portforward.k8s.io";
/// How long a streaming exec of `true` may take, upgrade included.
const EXEC_LIMIT: Duration = Duration::from_secs(60);
/// The most an upgrade response head may be.
const MAX_HEAD: usize = 64 << 10;

pub async fn run(opts: Options) -> Result<()> {
    if opts.rounds == 0 || opts.mib == 0 {
        bail!("--rounds and --mib must be at least 1");
    }
    let work = tempfile::Builder::new()
        .prefix("vmpod-bench-stream-")
        .tempdir()
        .context("creating a scratch dir")?;
    let (_daemon, socket) = PrivateDaemon::start(work.path(), opts.config_file.as_deref())?;
    let channel = connect(&socket).await?;
    let mut rt = RuntimeServiceClient::new(channel.clone());
    eprintln!("stream: pulling {}", opts.image);
    pull(channel, &opts.image).await?;

    let result = measure(&opts, &mut rt, work.path()).await;
    eprintln!("stream: stopping and removing the pod");
    remove_all_pods(&mut rt).await;
    let report = result?;
    report.print(&opts);
    Ok(())
}

#[derive(Default)]
struct Report {
    /// ms per exec of `true`.
    exec_streaming: Samples,
    exec_sync: Samples,
    /// MB/s per path.
    port_forward: Samples,
    direct: Samples,
    /// The raw times behind them, ms.
    port_forward_ms: Samples,
    direct_ms: Samples,
}

impl Report {
    fn print(&self, opts: &Options) {
        println!();
        println!(
            "exec `true` in a running container, {} rounds:",
            opts.rounds
        );
        print_table(&[
            ("Exec → upgrade → SPDY → exit status", &self.exec_streaming),
            ("ExecSync (request → answer)", &self.exec_sync),
        ]);
        let (streaming, sync) = (&self.exec_streaming, &self.exec_sync);
        println!();
        println!(
            "streaming / ExecSync: ratio {:.3} ({:+.1} ms median, {:.1} vs {:.1} ms)",
            streaming.median() / sync.median(),
            streaming.median() - sync.median(),
            streaming.median(),
            sync.median()
        );
        println!();
        println!(
            "TCP into the pod, {} MiB per sample, {} rounds (open → sink's reply and close):",
            opts.mib, opts.rounds
        );
        print!(
            "{}",
            throughput_table(
                &[
                    ("direct TCP (bench → pod IP)", &self.direct),
                    ("port-forward (SPDY stream pair)", &self.port_forward),
                ],
                &self.direct,
                "direct TCP",
            )
        );
        println!();
        print_table(&[
            ("direct TCP transfer", &self.direct_ms),
            ("port-forward transfer", &self.port_forward_ms),
        ]);
    }
}

async fn measure(opts: &Options, rt: &mut Rt, work: &Path) -> Result<Report> {
    let mut report = Report::default();
    let logs = work.join("logs");
    let records = opts.mib * (1024 * 1024 / RECORD as u64);
    let bytes = records * RECORD as u64;

    eprintln!("stream: one pod with an idle container and the sink");
    let (pod, _) = run_pod(rt, &logs, "stream", NamespaceMode::Pod).await?;
    let ip = pod_ip(rt, &pod)
        .await?
        .ok_or_else(|| anyhow!("pod {pod} has no IP"))?;
    let pod_logs = logs.join("stream");
    let sink_script =
        format!("busybox dd of=/dev/null bs={RECORD} count={records} iflag=fullblock 2>&1");
    start_container(
        rt,
        &pod_logs,
        &pod,
        &opts.image,
        "sink",
        &[
            "busybox",
            "nc",
            "-ll",
            "-p",
            &PORT.to_string(),
            "-e",
            "sh",
            "-c",
            &sink_script,
        ],
    )
    .await?;
    let idle = start_container(
        rt,
        &pod_logs,
        &pod,
        &opts.image,
        "idle",
        &["sleep", "86400"],
    )
    .await?;
    let pod_addr = SocketAddr::new(ip, PORT);
    eprintln!("stream: the pod is {ip}; waiting for the sink on {pod_addr}");
    wait_for_sink(pod_addr).await?;

    eprintln!("stream: exec `true`, warm-up (not counted)");
    for path in ExecPath::ALL {
        path.measure(rt, &idle).await?;
    }
    for r in 0..opts.rounds {
        eprintln!("stream: exec round {}/{}", r + 1, opts.rounds);
        for k in 0..ExecPath::ALL.len() {
            let path = ExecPath::ALL[(k + r) % ExecPath::ALL.len()];
            let elapsed = path.measure(rt, &idle).await?;
            match path {
                ExecPath::Streaming => report.exec_streaming.push(ms(elapsed)),
                ExecPath::Sync => report.exec_sync.push(ms(elapsed)),
            }
        }
    }

    eprintln!("stream: port-forward session to pod {pod}, port {PORT}");
    let mut forward = PortForward::open(rt, &pod).await?;
    eprintln!(
        "stream: transfer warm-up ({} MiB per path, not counted)",
        opts.mib
    );
    for path in Transfer::ALL {
        path.measure(&mut forward, pod_addr, records).await?;
    }
    for r in 0..opts.rounds {
        eprintln!("stream: transfer round {}/{}", r + 1, opts.rounds);
        for k in 0..Transfer::ALL.len() {
            let path = Transfer::ALL[(k + r) % Transfer::ALL.len()];
            let elapsed = path.measure(&mut forward, pod_addr, records).await?;
            let (raw, rate) = match path {
                Transfer::PortForward => (&mut report.port_forward_ms, &mut report.port_forward),
                Transfer::Direct => (&mut report.direct_ms, &mut report.direct),
            };
            raw.push(ms(elapsed));
            rate.push(mb_per_s(bytes, elapsed, Duration::ZERO));
        }
    }
    forward.session.close().await;
    Ok(report)
}

/// The two ways to run `true`.
#[derive(Clone, Copy)]
enum ExecPath {
    Streaming,
    Sync,
}

impl ExecPath {
    const ALL: [ExecPath; 2] = [ExecPath::Streaming, ExecPath::Sync];

    async fn measure(self, rt: &mut Rt, container: &str) -> Result<Duration> {
        match self {
            ExecPath::Streaming => exec_streaming(rt, container)
                .await
                .context("streaming exec of `true`"),
            ExecPath::Sync => exec_true(rt, container).await,
        }
    }
}

/// The two ways into the sink.
#[derive(Clone, Copy)]
enum Transfer {
    PortForward,
    Direct,
}

impl Transfer {
    const ALL: [Transfer; 2] = [Transfer::PortForward, Transfer::Direct];

    async fn measure(
        self,
        forward: &mut PortForward,
        pod: SocketAddr,
        records: u64,
    ) -> Result<Duration> {
        match self {
            Transfer::PortForward => forward.send(records).await.context("port-forward transfer"),
            Transfer::Direct => send(pod, records).await.context("direct TCP transfer"),
        }
    }
}

/// `kubectl exec CONTAINER -- true` against the daemon directly: Exec, the
/// upgrade, the error and stdout streams, the exit status. Timed from the
/// Exec call to the end of the error stream.
async fn exec_streaming(rt: &mut Rt, container: &str) -> Result<Duration> {
    let t0 = Instant::now();
    let url = rt
        .exec(ExecRequest {
            container_id: container.into(),
            cmd: vec!["true".into()],
            stdout: true,
            ..Default::default()
        })
        .await
        .map_err(|e| anyhow!("Exec `true`: {}", e.message()))?
        .into_inner()
        .url;
    let (session, _incoming, status, stdout) = tokio::time::timeout(EXEC_LIMIT, async {
        let io = spdy_upgrade(&url, EXEC_PROTOCOL).await?;
        let (session, incoming) = Session::client(io, vmpod_spdy::Config::default());
        let (mut error, mut error_tx) = open(&session, &[("streamtype", "error")]).await?.split();
        // The client never writes on the error stream.
        error_tx
            .finish()
            .await
            .context("finishing the error stream")?;
        // Our side of stdout stays open until the status is in, as
        // kubectl's does; dropping it would send a FIN.
        let (mut stdout, _stdout_tx) = open(&session, &[("streamtype", "stdout")]).await?.split();
        let (status, out) = tokio::join!(read_all(&mut error), read_all(&mut stdout));
        anyhow::Ok((session, incoming, status, out))
    })
    .await
    .map_err(|_| anyhow!("{url}: no exit status within {EXEC_LIMIT:?}"))??;
    let elapsed = t0.elapsed();
    session.close().await;
    check_success(&status)?;
    if !stdout.is_empty() {
        bail!(
            "`true` wrote to stdout: {:?}",
            String::from_utf8_lossy(&stdout)
        );
    }
    Ok(elapsed)
}

/// A port-forward session held for the run, as `kubectl port-forward` holds
/// one while it forwards connections.
struct PortForward {
    session: Session,
    _incoming: Incoming,
    /// The next stream pair's `requestid`.
    next_request: u64,
}

impl PortForward {
    async fn open(rt: &mut Rt, pod: &str) -> Result<PortForward> {
        let url = rt
            .port_forward(PortForwardRequest {
                pod_sandbox_id: pod.into(),
                port: vec![PORT.into()],
            })
            .await
            .map_err(|e| anyhow!("PortForward {pod}: {}", e.message()))?
            .into_inner()
            .url;
        let io = spdy_upgrade(&url, PORT_FORWARD_PROTOCOL).await?;
        let (session, incoming) = Session::client(io, vmpod_spdy::Config::default());
        Ok(PortForward {
            session,
            _incoming: incoming,
            next_request: 0,
        })
    }

    /// One forwarded connection to the sink: a new error+data pair, the
    /// records written on data and the stream finished, the reply read to
    /// the stream's end. Timed from opening the pair to that end; fails
    /// unless the reply says all arrived, or on any text on the error
    /// stream.
    async fn send(&mut self, records: u64) -> Result<Duration> {
        let request = self.next_request.to_string();
        self.next_request += 1;
        let port = PORT.to_string();
        let headers = |kind: &'static str| {
            [
                ("streamtype", kind),
                ("port", port.as_str()),
                ("requestid", request.as_str()),
            ]
        };
        let buf = vec![0u8; RECORD];
        let session = &self.session;
        let t0 = Instant::now();
        let (reply, elapsed) = tokio::time::timeout(TRANSFER_LIMIT, async {
            let (mut error, mut error_tx) = open(session, &headers("error")).await?.split();
            error_tx
                .finish()
                .await
                .context("finishing the error stream")?;
            let (mut rx, mut tx) = open(session, &headers("data")).await?.split();
            let upload = async {
                for _ in 0..records {
                    tx.send(&buf).await.context("writing to the data stream")?;
                }
                tx.finish().await.context("finishing the data stream")
            };
            let download = async {
                let reply = read_all(&mut rx).await;
                (reply, t0.elapsed())
            };
            let transfer = async {
                let (sent, reply) = tokio::join!(upload, download);
                sent.map(|_| reply)
            };
            tokio::pin!(transfer);
            let failure = read_all(&mut error);
            tokio::pin!(failure);
            // The server writes on the error stream only when the
            // connection failed; then the data stream may never end.
            let (done, failure) = tokio::select! {
                done = &mut transfer => (done?, failure.await),
                text = &mut failure => {
                    if !text.is_empty() {
                        bail!("{}", String::from_utf8_lossy(&text).trim());
                    }
                    (transfer.await?, text)
                }
            };
            if !failure.is_empty() {
                bail!("{}", String::from_utf8_lossy(&failure).trim());
            }
            anyhow::Ok(done)
        })
        .await
        .map_err(|_| anyhow!("request {request}: no reply within {TRANSFER_LIMIT:?}"))?
        .with_context(|| format!("request {request}"))?;
        check_reply(&String::from_utf8_lossy(&reply), records)?;
        Ok(elapsed)
    }
}

async fn open(session: &Session, headers: &[(&str, &str)]) -> Result<vmpod_spdy::Stream> {
    session
        .open(
            headers
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            false,
        )
        .await
        .with_context(|| format!("opening a stream {headers:?}"))
}

/// Reads a stream to its end.
async fn read_all(rx: &mut RecvStream) -> Vec<u8> {
    let mut out = Vec::new();
    while let Some(b) = rx.recv().await {
        out.extend_from_slice(&b);
    }
    out
}

/// Connects to `url` and upgrades the connection to SPDY/3.1 offering
/// `protocol`. The response head is read through the buffer the session
/// then reads from, so no SPDY frame behind it is lost.
async fn spdy_upgrade(url: &str, protocol: &str) -> Result<BufReader<TcpStream>> {
    let (host, path) = split_url(url)?;
    let tcp = TcpStream::connect(host)
        .await
        .with_context(|| format!("connecting to {host}"))?;
    tcp.set_nodelay(true)
        .with_context(|| format!("TCP_NODELAY on the connection to {host}"))?;
    let mut io = BufReader::new(tcp);
    io.write_all(upgrade_request(host, path, protocol).as_bytes())
        .await
        .with_context(|| format!("{url}: sending the upgrade request"))?;
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") {
        let n = io
            .read_until(b'\n', &mut head)
            .await
            .with_context(|| format!("{url}: reading the response head"))?;
        if n == 0 {
            bail!(
                "{url}: connection closed inside the response head: {:?}",
                String::from_utf8_lossy(&head)
            );
        }
        if head.len() > MAX_HEAD {
            bail!("{url}: response head over {MAX_HEAD} bytes");
        }
    }
    let head = String::from_utf8_lossy(&head);
    match status_code(&head) {
        Some(101) => Ok(io),
        _ => bail!("{url}: upgrade to SPDY/3.1 refused: {:?}", head.trim()),
    }
}

/// `http://host:port/path` → (`host:port`, `/path`).
fn split_url(url: &str) -> Result<(&str, &str)> {
    let rest = url
        .strip_prefix("http://")
        .ok_or_else(|| anyhow!("not an http:// URL: {url:?}"))?;
    let slash = rest.find('/').unwrap_or(rest.len());
    match rest.split_at(slash) {
        ("", _) => bail!("no host in {url:?}"),
        (host, "") => Ok((host, "/")),
        (host, path) => Ok((host, path)),
    }
}

/// The request kubectl sends (through kubelet) to start a SPDY session.
fn upgrade_request(host: &str, path: &str, protocol: &str) -> String {
    format!(
        "POST {path} HTTP/1.1\r\nHost: {host}\r\nConnection: Upgrade\r\nUpgrade: SPDY/3.1\r\n\
         X-Stream-Protocol-Version: {protocol}\r\nContent-Length: 0\r\n\r\n"
    )
}

/// The status code of a response head.
fn status_code(head: &str) -> Option<u16> {
    let line = head.lines().next()?;
    let mut parts = line.split(' ');
    if !parts.next()?.starts_with("HTTP/1.") {
        return None;
    }
    parts.next()?.parse().ok()
}

/// Fails unless the error stream's JSON `Status` says `Success`; the
/// failure names the exit code when the command exited non-zero.
fn check_success(status: &[u8]) -> Result<()> {
    if status.is_empty() {
        bail!("the error stream ended without a status");
    }
    let v: serde_json::Value = serde_json::from_slice(status)
        .with_context(|| format!("status {:?}", String::from_utf8_lossy(status)))?;
    match v["status"].as_str() {
        Some("Success") => Ok(()),
        _ if v["reason"] == "NonZeroExitCode" => {
            let code = v["details"]["causes"]
                .as_array()
                .and_then(|causes| causes.iter().find(|c| c["reason"] == "ExitCode"))
                .and_then(|c| c["message"].as_str())
                .unwrap_or("?");
            bail!(
                "exited {code}: {}",
                v["message"].as_str().unwrap_or_default()
            )
        }
        _ => bail!(
            "failed: {}",
            v["message"]
                .as_str()
                .map_or_else(|| v.to_string(), String::from)
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_split_into_host_and_path() {
        assert_eq!(
            split_url("http://127.0.0.1:41234/exec/abc").unwrap(),
            ("127.0.0.1:41234", "/exec/abc")
        );
        assert_eq!(
            split_url("http://[::1]:10010/portforward/t?x=1").unwrap(),
            ("[::1]:10010", "/portforward/t?x=1")
        );
        assert_eq!(
            split_url("http://127.0.0.1:80").unwrap(),
            ("127.0.0.1:80", "/")
        );
        assert!(split_url("https://127.0.0.1/exec/abc").is_err());
        assert!(split_url("http:///exec").is_err());
    }

    #[test]
    fn upgrade_request_is_kubectls() {
        let r = upgrade_request("127.0.0.1:1", "/exec/t", EXEC_PROTOCOL);
        assert!(r.starts_with("POST /exec/t HTTP/1.1\r\n"), "{r}");
        for h in [
            "Host: 127.0.0.1:1\r\n",
            "Connection: Upgrade\r\n",
            "Upgrade: SPDY/3.1\r\n",
            "X-Stream-Protocol-Version: v4.channel.k8s.io\r\n",
        ] {
            assert!(r.contains(h), "{h:?} in {r:?}");
        }
        assert!(r.ends_with("\r\n\r\n"));
        assert_eq!(r.matches("\r\n\r\n").count(), 1);
    }

    #[test]
    fn status_codes() {
        assert_eq!(
            status_code("HTTP/1.1 101 Switching Protocols\r\nUpgrade: SPDY/3.1\r\n\r\n"),
            Some(101)
        );
        assert_eq!(status_code("HTTP/1.1 403 Forbidden\r\n\r\n"), Some(403));
        assert_eq!(status_code("SPDY garbage\r\n\r\n"), None);
        assert_eq!(status_code(""), None);
    }

    #[test]
    fn exit_status_from_the_error_stream() {
        assert!(check_success(br#"{"metadata":{},"status":"Success"}"#).is_ok());
        let exited = br#"{"metadata":{},"status":"Failure","message":"command terminated with non-zero exit code: exit code 3","reason":"NonZeroExitCode","details":{"causes":[{"reason":"ExitCode","message":"3"}]}}"#;
        let e = check_success(exited).unwrap_err().to_string();
        assert!(e.starts_with("exited 3: "), "{e}");
        let failed = br#"{"metadata":{},"status":"Failure","message":"no such file","reason":"InternalError","code":500}"#;
        assert_eq!(
            check_success(failed).unwrap_err().to_string(),
            "failed: no such file"
        );
        assert!(check_success(b"").is_err());
        assert!(check_success(b"command terminated").is_err());
    }
}
