//! `vmpod bench network`: what pod networking costs, next to peers measured
//! in the same run against one private `vmpod serve`.
//!
//! **RunPodSandbox with and without a network.** Pods with
//! `namespace_options.network = POD` (a netns, the CNI chain, a TAP and the
//! guest's eth0) take turns with pods with `network = NODE` (no network,
//! loopback only), the order swapped every pair so neither side always runs
//! second. Each call is timed client-side from request to answer: the pod is
//! READY then, its interface configured. Untimed, the bench checks each POD
//! pod reports an IP and each NODE pod none, then stops and removes it. The
//! difference of the medians is the network's share of a pod start.
//!
//! **TCP throughput.** Two POD pods: A runs a sink container, B an idle
//! one. The sink is busybox `nc -ll -p 5001 -e sh -c 'dd of=/dev/null
//! bs=65536 count=N iflag=fullblock 2>&1'`: per connection, dd reads the
//! socket directly until it has N 64 KiB records (or EOF), writes its
//! `A+B records in` line back and exits, which closes the connection. Every
//! path is timed to the same point, from the client's connect to the
//! client seeing that reply and the close, and every reply is checked to
//! say all N records arrived:
//!
//! - host loopback: a tokio listener on 127.0.0.1 in the bench process that
//!   answers the same way, and the same client code as host → pod;
//! - host → pod: the bench connects to A's pod IP, port 5001, writes the
//!   N records, shuts its write side and reads the reply to EOF;
//! - pod → pod: an ExecSync in B of busybox `nc A-IP 5001 -e sh -c 'dd
//!   if=/dev/zero bs=65536 count=N; cat >&2'`: dd writes into the socket
//!   itself (nc's own relay copies in small chunks and would be the
//!   bottleneck), and `cat` waits for A's reply and the close. The ExecSync
//!   round trip includes process starts in the guest and the CRI/agent path,
//!   so an ExecSync of `true` in the same container, in the same round, is
//!   subtracted as overhead; both raw figures are printed too.
//!
//! The three paths take turns by rounds (order rotated each round) after
//! one untimed warm-up round, and each is printed next to loopback.

use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tonic::transport::Channel;
use vmpod_cri_api::v1::{
    ContainerConfig, ContainerMetadata, ExecSyncRequest, ImageSpec, LinuxContainerConfig,
    LinuxPodSandboxConfig, LinuxSandboxSecurityContext, ListPodSandboxRequest, NamespaceMode,
    NamespaceOption, PodSandboxConfig, PodSandboxMetadata, PodSandboxState,
    PodSandboxStatusRequest, PullImageRequest, RemovePodSandboxRequest, RunPodSandboxRequest,
    StopPodSandboxRequest,
};
use vmpod_cri_api::{ImageServiceClient, RuntimeServiceClient};

use super::{PrivateDaemon, Samples, connect, print_table};

pub struct Options {
    /// A busybox image: `sh`, `sleep`, and the `busybox` binary with the
    /// `nc` (with `-e`), `dd` and `cat` applets.
    pub image: String,
    /// Pods per arm of the RunPodSandbox comparison.
    pub count: usize,
    /// Timed throughput rounds, each path once per round.
    pub rounds: usize,
    /// MiB per throughput sample.
    pub mib: u64,
    pub config_file: Option<std::path::PathBuf>,
}

pub(super) type Rt = RuntimeServiceClient<Channel>;

/// The sink's port in pod A.
pub(super) const PORT: u16 = 5001;
/// dd's block size on both ends, and the loopback sink's unit.
pub(super) const RECORD: usize = 64 * 1024;
/// How long one transfer may take (QEMU/TCG guests are slow).
pub(super) const TRANSFER_LIMIT: Duration = Duration::from_secs(600);
/// How long the sink may take to listen after StartContainer.
const SINK_READY_LIMIT: Duration = Duration::from_secs(60);

pub async fn run(opts: Options) -> Result<()> {
    if opts.count == 0 || opts.rounds == 0 || opts.mib == 0 {
        bail!("--count, --rounds and --mib must be at least 1");
    }
    let work = tempfile::Builder::new()
        .prefix("vmpod-bench-network-")
        .tempdir()
        .context("creating a scratch dir")?;
    let (_daemon, socket) = PrivateDaemon::start(work.path(), opts.config_file.as_deref())?;
    let channel = connect(&socket).await?;
    let mut rt = RuntimeServiceClient::new(channel.clone());
    eprintln!("network: pulling {}", opts.image);
    pull(channel, &opts.image).await?;

    let result = measure(&opts, &mut rt, work.path()).await;
    eprintln!("network: stopping and removing the pods");
    remove_all_pods(&mut rt).await;
    let report = result?;
    report.print(&opts);
    Ok(())
}

/// Pulls `image` into the private daemon's store.
pub(super) async fn pull(channel: Channel, image: &str) -> Result<()> {
    ImageServiceClient::new(channel)
        .pull_image(PullImageRequest {
            image: Some(ImageSpec {
                image: image.into(),
                ..Default::default()
            }),
            auth: None,
            sandbox_config: None,
        })
        .await
        .map_err(|e| anyhow!("pulling {image}: {}", e.message()))?;
    Ok(())
}

#[derive(Default)]
struct Report {
    with_network: Samples,
    without_network: Samples,
    /// MB/s per path.
    loopback: Samples,
    host_to_pod: Samples,
    pod_to_pod: Samples,
    /// The raw times behind them, ms.
    loopback_ms: Samples,
    host_to_pod_ms: Samples,
    pod_to_pod_exec_ms: Samples,
    exec_true_ms: Samples,
}

impl Report {
    fn print(&self, opts: &Options) {
        println!();
        print_table(&[
            (
                "RunPodSandbox, POD network (netns+CNI+TAP)",
                &self.with_network,
            ),
            (
                "RunPodSandbox, NODE network (no network)",
                &self.without_network,
            ),
        ]);
        let (with, without) = (&self.with_network, &self.without_network);
        println!();
        println!(
            "network share of a pod start: {:+.1} ms median ({:+.1} ms p95), ratio {:.3} ({:.1} vs {:.1} ms median)",
            with.median() - without.median(),
            with.percentile(95.0) - without.percentile(95.0),
            with.median() / without.median(),
            with.median(),
            without.median()
        );
        println!();
        println!(
            "TCP, {} MiB per sample, {} rounds (connect → sink's reply and close):",
            opts.mib, opts.rounds
        );
        print!(
            "{}",
            throughput_table(
                &[
                    ("host loopback (127.0.0.1)", &self.loopback),
                    ("host → pod (bench → pod IP)", &self.host_to_pod),
                    ("pod → pod (ExecSync − `true`)", &self.pod_to_pod),
                ],
                &self.loopback,
                "loopback",
            )
        );
        println!();
        print_table(&[
            ("host loopback transfer", &self.loopback_ms),
            ("host → pod transfer", &self.host_to_pod_ms),
            ("pod → pod ExecSync (nc+dd)", &self.pod_to_pod_exec_ms),
            ("ExecSync `true` (same container)", &self.exec_true_ms),
        ]);
    }
}

async fn measure(opts: &Options, rt: &mut Rt, work: &Path) -> Result<Report> {
    let mut report = Report::default();
    let logs = work.join("logs");

    eprintln!(
        "network: {} pods with POD network and {} with NODE network, taking turns",
        opts.count, opts.count
    );
    for i in 0..opts.count {
        let order = if i % 2 == 0 {
            [NamespaceMode::Pod, NamespaceMode::Node]
        } else {
            [NamespaceMode::Node, NamespaceMode::Pod]
        };
        for mode in order {
            let name = format!("{}-{i}", mode_name(mode));
            let (id, elapsed) = run_pod(rt, &logs, &name, mode).await?;
            let ip = pod_ip(rt, &id).await?;
            match (mode, ip) {
                (NamespaceMode::Pod, None) => bail!("pod {name} ({id}) has no IP"),
                (NamespaceMode::Node, Some(ip)) => {
                    bail!("pod {name} ({id}) has NODE network but reports IP {ip}")
                }
                _ => {}
            }
            remove_pod(rt, &id).await?;
            let samples = if mode == NamespaceMode::Pod {
                &mut report.with_network
            } else {
                &mut report.without_network
            };
            samples.push(ms(elapsed));
        }
    }

    let records = opts.mib * (1024 * 1024 / RECORD as u64);
    let bytes = records * RECORD as u64;
    eprintln!("network: pods A (sink) and B for throughput");
    let loopback = loopback_sink(records).await?;
    let (pod_a, _) = run_pod(rt, &logs, "sink", NamespaceMode::Pod).await?;
    let ip_a = pod_ip(rt, &pod_a)
        .await?
        .ok_or_else(|| anyhow!("pod A ({pod_a}) has no IP"))?;
    let (pod_b, _) = run_pod(rt, &logs, "client", NamespaceMode::Pod).await?;
    let ip_b = pod_ip(rt, &pod_b)
        .await?
        .ok_or_else(|| anyhow!("pod B ({pod_b}) has no IP"))?;
    let sink_script =
        format!("busybox dd of=/dev/null bs={RECORD} count={records} iflag=fullblock 2>&1");
    start_container(
        rt,
        &logs.join("sink"),
        &pod_a,
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
    let client = start_container(
        rt,
        &logs.join("client"),
        &pod_b,
        &opts.image,
        "client",
        &["sleep", "86400"],
    )
    .await?;
    let pod_addr = SocketAddr::new(ip_a, PORT);
    eprintln!("network: A is {ip_a}, B is {ip_b}; waiting for the sink on {pod_addr}");
    wait_for_sink(pod_addr).await?;

    eprintln!(
        "network: warm-up round ({} MiB per path, not counted)",
        opts.mib
    );
    for path in Path3::ALL {
        path.measure(rt, &client, loopback, pod_addr, records)
            .await?;
    }
    for r in 0..opts.rounds {
        eprintln!("network: round {}/{}", r + 1, opts.rounds);
        for k in 0..Path3::ALL.len() {
            let path = Path3::ALL[(k + r) % Path3::ALL.len()];
            let m = path
                .measure(rt, &client, loopback, pod_addr, records)
                .await?;
            match path {
                Path3::Loopback => {
                    report.loopback_ms.push(ms(m.elapsed));
                    report
                        .loopback
                        .push(mb_per_s(bytes, m.elapsed, Duration::ZERO));
                }
                Path3::HostToPod => {
                    report.host_to_pod_ms.push(ms(m.elapsed));
                    report
                        .host_to_pod
                        .push(mb_per_s(bytes, m.elapsed, Duration::ZERO));
                }
                Path3::PodToPod => {
                    report.pod_to_pod_exec_ms.push(ms(m.elapsed));
                    report.exec_true_ms.push(ms(m.overhead));
                    report
                        .pod_to_pod
                        .push(mb_per_s(bytes, m.elapsed, m.overhead));
                }
            }
        }
    }
    Ok(report)
}

/// The three throughput paths.
#[derive(Clone, Copy)]
enum Path3 {
    Loopback,
    HostToPod,
    PodToPod,
}

struct Measured {
    elapsed: Duration,
    /// What the path's timing includes that is not the transfer.
    overhead: Duration,
}

impl Path3 {
    const ALL: [Path3; 3] = [Path3::Loopback, Path3::HostToPod, Path3::PodToPod];

    async fn measure(
        self,
        rt: &mut Rt,
        client: &str,
        loopback: SocketAddr,
        pod: SocketAddr,
        records: u64,
    ) -> Result<Measured> {
        let (elapsed, overhead) = match self {
            Path3::Loopback => (
                send(loopback, records)
                    .await
                    .context("host loopback transfer")?,
                Duration::ZERO,
            ),
            Path3::HostToPod => (
                send(pod, records).await.context("host → pod transfer")?,
                Duration::ZERO,
            ),
            Path3::PodToPod => {
                let overhead = exec_true(rt, client).await?;
                let elapsed = exec_send(rt, client, pod, records)
                    .await
                    .context("pod → pod transfer")?;
                (elapsed, overhead)
            }
        };
        Ok(Measured { elapsed, overhead })
    }
}

/// A listener on 127.0.0.1 that answers like pod A's dd sink: reads up to
/// `records` 64 KiB records (or EOF), writes dd's `A+B records in` line
/// and closes.
async fn loopback_sink(records: u64) -> Result<SocketAddr> {
    let listener = TcpListener::bind("127.0.0.1:0")
        .await
        .context("binding the loopback sink")?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move {
        while let Ok((mut conn, _)) = listener.accept().await {
            tokio::spawn(async move {
                let limit = records * RECORD as u64;
                let mut buf = vec![0u8; RECORD];
                let mut got = 0u64;
                while got < limit {
                    let want = buf.len().min((limit - got) as usize);
                    match conn.read(&mut buf[..want]).await {
                        Ok(0) | Err(_) => break,
                        Ok(n) => got += n as u64,
                    }
                }
                let (full, partial) = (
                    got / RECORD as u64,
                    u64::from(!got.is_multiple_of(RECORD as u64)),
                );
                let reply = format!("{full}+{partial} records in\n{full}+{partial} records out\n");
                let _ = conn.write_all(reply.as_bytes()).await;
                let _ = conn.shutdown().await;
            });
        }
    });
    Ok(addr)
}

/// The host-side client, the same for loopback and the pod: connect, write
/// `records` 64 KiB records, shut the write side, read the reply to EOF.
/// Timed from connect to EOF; fails unless the reply says all arrived.
pub(super) async fn send(addr: SocketAddr, records: u64) -> Result<Duration> {
    let buf = vec![0u8; RECORD];
    let t0 = Instant::now();
    let reply = tokio::time::timeout(TRANSFER_LIMIT, async {
        let mut s = TcpStream::connect(addr)
            .await
            .with_context(|| format!("connecting to {addr}"))?;
        for _ in 0..records {
            s.write_all(&buf)
                .await
                .with_context(|| format!("writing to {addr}"))?;
        }
        s.shutdown()
            .await
            .with_context(|| format!("shutting down the write side to {addr}"))?;
        let mut reply = Vec::new();
        s.read_to_end(&mut reply)
            .await
            .with_context(|| format!("reading the reply from {addr}"))?;
        anyhow::Ok(reply)
    })
    .await
    .map_err(|_| anyhow!("{addr}: no reply within {TRANSFER_LIMIT:?}"))??;
    let elapsed = t0.elapsed();
    check_reply(&String::from_utf8_lossy(&reply), records)?;
    Ok(elapsed)
}

/// Waits until the sink in pod A answers an empty transfer.
pub(super) async fn wait_for_sink(addr: SocketAddr) -> Result<()> {
    let t0 = Instant::now();
    loop {
        let err = match tokio::time::timeout(Duration::from_secs(10), send(addr, 0)).await {
            Ok(Ok(_)) => return Ok(()),
            Ok(Err(e)) => e,
            Err(_) => anyhow!("no answer within 10 s"),
        };
        if t0.elapsed() > SINK_READY_LIMIT {
            return Err(err.context(format!(
                "the sink on {addr} did not answer within {SINK_READY_LIMIT:?}"
            )));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// pod → pod: ExecSync in B of an nc whose `-e` child is dd writing into
/// the socket, then `cat` relaying A's reply to stderr until A closes.
async fn exec_send(rt: &mut Rt, container: &str, to: SocketAddr, records: u64) -> Result<Duration> {
    let script =
        format!("busybox dd if=/dev/zero bs={RECORD} count={records} 2>/dev/null; busybox cat >&2");
    let cmd = [
        "busybox",
        "nc",
        &to.ip().to_string(),
        &to.port().to_string(),
        "-e",
        "sh",
        "-c",
        &script,
    ];
    let t0 = Instant::now();
    let r = exec(rt, container, &cmd).await?;
    let elapsed = t0.elapsed();
    if r.exit_code != 0 {
        bail!(
            "`{}` exited {}: {}",
            cmd.join(" "),
            r.exit_code,
            String::from_utf8_lossy(&r.stderr).trim()
        );
    }
    check_reply(&String::from_utf8_lossy(&r.stderr), records)?;
    Ok(elapsed)
}

pub(super) async fn exec_true(rt: &mut Rt, container: &str) -> Result<Duration> {
    let t0 = Instant::now();
    let r = exec(rt, container, &["true"]).await?;
    let elapsed = t0.elapsed();
    if r.exit_code != 0 {
        bail!("ExecSync `true` exited {}", r.exit_code);
    }
    Ok(elapsed)
}

async fn exec(
    rt: &mut Rt,
    container: &str,
    cmd: &[&str],
) -> Result<vmpod_cri_api::v1::ExecSyncResponse> {
    Ok(rt
        .exec_sync(ExecSyncRequest {
            container_id: container.into(),
            cmd: cmd.iter().map(|s| s.to_string()).collect(),
            timeout: TRANSFER_LIMIT.as_secs() as i64,
        })
        .await
        .map_err(|e| anyhow!("ExecSync `{}`: {}", cmd.join(" "), e.message()))?
        .into_inner())
}

/// Fails unless the sink's reply says it got exactly `records` records.
pub(super) fn check_reply(reply: &str, records: u64) -> Result<()> {
    match parse_records_in(reply) {
        Some((full, 0)) if full == records => Ok(()),
        Some((full, partial)) => bail!(
            "the sink got {full} full and {partial} partial records, not {records}: {:?}",
            reply.trim()
        ),
        None => bail!(
            "the sink's reply has no `records in` line: {:?}",
            reply.trim()
        ),
    }
}

/// dd's `A+B records in` line: full and partial records read.
fn parse_records_in(text: &str) -> Option<(u64, u64)> {
    let line = text
        .lines()
        .find_map(|l| l.trim().strip_suffix(" records in"))?;
    let (full, partial) = line.trim().split_once('+')?;
    Some((full.parse().ok()?, partial.parse().ok()?))
}

/// MB/s (10^6 bytes) for `bytes` in `elapsed` less `overhead`; NaN when
/// the overhead is not less than the time (a figure that means nothing).
pub(super) fn mb_per_s(bytes: u64, elapsed: Duration, overhead: Duration) -> f64 {
    match elapsed.checked_sub(overhead) {
        Some(d) if !d.is_zero() => bytes as f64 / 1e6 / d.as_secs_f64(),
        _ => f64::NAN,
    }
}

/// Throughput rows (MB/s samples) with each median's ratio to `reference`'s.
pub(super) fn throughput_table(
    rows: &[(&str, &Samples)],
    reference: &Samples,
    reference_label: &str,
) -> String {
    let width = rows
        .iter()
        .map(|(n, _)| n.chars().count())
        .max()
        .unwrap_or(0);
    let ratio = format!("× {reference_label}");
    let ratio_width = ratio.chars().count().max(10);
    let mut out = format!(
        "{:<width$}  {:>12}  {:>10}  {:>10}  {:>3}  {ratio:>ratio_width$}\n",
        "path", "median MB/s", "min MB/s", "max MB/s", "n"
    );
    for (name, s) in rows {
        let v = s.sorted();
        out.push_str(&format!(
            "{name:<width$}  {:>12.1}  {:>10.1}  {:>10.1}  {:>3}  {:>ratio_width$.3}\n",
            s.median(),
            v.first().copied().unwrap_or(f64::NAN),
            v.last().copied().unwrap_or(f64::NAN),
            v.len(),
            s.median() / reference.median()
        ));
    }
    out
}

fn mode_name(mode: NamespaceMode) -> &'static str {
    match mode {
        NamespaceMode::Node => "node",
        _ => "pod",
    }
}

/// RunPodSandbox with the given network mode, timed request to answer.
pub(super) async fn run_pod(
    rt: &mut Rt,
    logs: &Path,
    name: &str,
    network: NamespaceMode,
) -> Result<(String, Duration)> {
    let log_dir = logs.join(name);
    std::fs::create_dir_all(&log_dir).with_context(|| format!("creating {}", log_dir.display()))?;
    let config = PodSandboxConfig {
        metadata: Some(PodSandboxMetadata {
            name: format!("bench-net-{name}"),
            uid: format!("bench-net-uid-{name}"),
            namespace: "bench".into(),
            attempt: 0,
        }),
        log_directory: log_dir.to_string_lossy().into(),
        linux: Some(LinuxPodSandboxConfig {
            security_context: Some(LinuxSandboxSecurityContext {
                namespace_options: Some(NamespaceOption {
                    network: network as i32,
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        }),
        ..Default::default()
    };
    let t0 = Instant::now();
    let id = rt
        .run_pod_sandbox(RunPodSandboxRequest {
            config: Some(config),
            runtime_handler: String::new(),
        })
        .await
        .map_err(|e| {
            anyhow!(
                "RunPodSandbox {name} ({} network): {}",
                mode_name(network).to_uppercase(),
                e.message()
            )
        })?
        .into_inner()
        .pod_sandbox_id;
    Ok((id, t0.elapsed()))
}

/// The pod's primary IP; fails unless the pod is READY.
pub(super) async fn pod_ip(rt: &mut Rt, id: &str) -> Result<Option<IpAddr>> {
    let status = rt
        .pod_sandbox_status(PodSandboxStatusRequest {
            pod_sandbox_id: id.into(),
            verbose: false,
        })
        .await
        .map_err(|e| anyhow!("PodSandboxStatus {id}: {}", e.message()))?
        .into_inner()
        .status
        .ok_or_else(|| anyhow!("PodSandboxStatus {id}: no status"))?;
    if status.state() != PodSandboxState::SandboxReady {
        bail!("pod {id} is {:?} after RunPodSandbox", status.state());
    }
    let ip = status.network.map(|n| n.ip).unwrap_or_default();
    if ip.is_empty() {
        return Ok(None);
    }
    ip.parse()
        .map(Some)
        .with_context(|| format!("pod {id} reports IP {ip:?}"))
}

pub(super) async fn start_container(
    rt: &mut Rt,
    log_dir: &Path,
    sandbox: &str,
    image: &str,
    name: &str,
    cmd: &[&str],
) -> Result<String> {
    std::fs::create_dir_all(log_dir).with_context(|| format!("creating {}", log_dir.display()))?;
    let config = ContainerConfig {
        metadata: Some(ContainerMetadata {
            name: name.into(),
            attempt: 0,
        }),
        image: Some(ImageSpec {
            image: image.into(),
            ..Default::default()
        }),
        command: cmd.iter().map(|s| s.to_string()).collect(),
        log_path: format!("{name}.log"),
        linux: Some(LinuxContainerConfig::default()),
        ..Default::default()
    };
    super::container::create_and_start(rt, sandbox, config)
        .await
        .with_context(|| format!("container {name}"))
}

async fn remove_pod(rt: &mut Rt, id: &str) -> Result<()> {
    rt.stop_pod_sandbox(StopPodSandboxRequest {
        pod_sandbox_id: id.into(),
    })
    .await
    .map_err(|e| anyhow!("StopPodSandbox {id}: {}", e.message()))?;
    rt.remove_pod_sandbox(RemovePodSandboxRequest {
        pod_sandbox_id: id.into(),
    })
    .await
    .map_err(|e| anyhow!("RemovePodSandbox {id}: {}", e.message()))?;
    Ok(())
}

/// Best effort, success or not: every pod the private daemon knows,
/// including those of a failed run, stopped and removed.
pub(super) async fn remove_all_pods(rt: &mut Rt) {
    let pods = match rt
        .list_pod_sandbox(ListPodSandboxRequest { filter: None })
        .await
    {
        Ok(r) => r.into_inner().items,
        Err(e) => {
            eprintln!("cleanup: ListPodSandbox: {}", e.message());
            return;
        }
    };
    for pod in pods {
        if let Err(e) = remove_pod(rt, &pod.id).await {
            eprintln!("cleanup: {e:#}");
        }
    }
}

pub(super) fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_in_from_busybox_dd() {
        let dd = "1024+0 records in\n1024+0 records out\n";
        assert_eq!(parse_records_in(dd), Some((1024, 0)));
        assert_eq!(parse_records_in("11+4176 records in\n"), Some((11, 4176)));
        assert_eq!(parse_records_in("nc: can't connect\n"), None);
        assert!(check_reply(dd, 1024).is_ok());
        assert!(check_reply(dd, 1025).is_err());
        assert!(check_reply("1024+1 records in\n", 1024).is_err());
        assert!(check_reply("", 0).is_err());
    }

    #[test]
    fn throughput_less_overhead() {
        let mib64 = 64 * 1024 * 1024;
        let v = mb_per_s(mib64, Duration::from_secs(2), Duration::ZERO);
        assert!((v - 33.554432).abs() < 1e-9);
        let v = mb_per_s(
            mib64,
            Duration::from_millis(2500),
            Duration::from_millis(500),
        );
        assert!((v - 33.554432).abs() < 1e-9);
        assert!(mb_per_s(mib64, Duration::from_secs(1), Duration::from_secs(1)).is_nan());
        assert!(mb_per_s(mib64, Duration::from_secs(1), Duration::from_secs(2)).is_nan());
    }

    #[test]
    fn table_ratios_against_reference() {
        let mut lo = Samples::default();
        let mut pod = Samples::default();
        for v in [1000.0, 2000.0, 3000.0] {
            lo.push(v);
            pod.push(v / 4.0);
        }
        pod.push(f64::NAN);
        let t = throughput_table(&[("loopback", &lo), ("host → pod", &pod)], &lo, "loopback");
        let lines: Vec<&str> = t.lines().collect();
        assert_eq!(lines.len(), 3);
        assert!(lines[0].starts_with("path      "), "{t}");
        assert!(lines[1].starts_with("loopback  "), "{t}");
        assert!(
            lines[1].ends_with("2000.0      1000.0      3000.0    3       1.000"),
            "{t}"
        );
        assert!(lines[2].starts_with("host → pod"), "{t}");
        assert!(
            lines[2].ends_with("500.0       250.0       750.0    3       0.250"),
            "{t}"
        );
    }

    #[test]
    fn table_ratio_column_fits_a_longer_label() {
        let mut tcp = Samples::default();
        let mut pf = Samples::default();
        for v in [400.0, 500.0] {
            tcp.push(v);
            pf.push(v / 2.0);
        }
        let t = throughput_table(&[("direct", &tcp), ("pf", &pf)], &tcp, "direct TCP");
        let lines: Vec<&str> = t.lines().collect();
        assert!(lines[0].ends_with("  × direct TCP"), "{t}");
        assert!(lines[1].ends_with("  2         1.000"), "{t}");
        assert!(lines[2].ends_with("  2         0.500"), "{t}");
        let widths: Vec<usize> = lines.iter().map(|l| l.chars().count()).collect();
        assert!(widths.iter().all(|w| *w == widths[0]), "{t}");
    }
}
