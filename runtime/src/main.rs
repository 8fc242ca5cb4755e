//! `vmpod`: the CRI daemon and its operator commands.

mod admin;
mod authority;
mod bench;
mod cli;
mod clock;
mod config;
mod container;
mod cpu_samples;
mod cri;
mod daemon;
mod error;
mod host;
mod image;
mod locks;
mod logging;
mod network;
mod sandbox;
mod server;
mod state;
mod stream;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};

use config::{AbsPath, Config, LogFormat, LogLevel, Overrides};

/// Exit code for bad configuration or a failed start-up.
const EXIT_STARTUP: u8 = 2;

#[derive(Parser)]
#[command(
    name = "vmpod",
    version,
    about = "A CRI v1 runtime that runs every Kubernetes pod in its own KVM microVM"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Serve the CRI v1 RuntimeService and ImageService on a unix socket.
    Serve(ConfigArgs),
    /// Inspect the host and report whether it can run pods, and how.
    Check {
        #[command(flatten)]
        config: ConfigArgs,
        /// Print the report as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Configuration helpers.
    #[command(subcommand)]
    Config(ConfigCommand),
    /// Pull an image through the running daemon, with per-layer progress.
    Pull {
        image: String,
        /// Registry credentials as USER:PASSWORD.
        #[arg(long, value_name = "USER:PASSWORD")]
        creds: Option<String>,
        #[command(flatten)]
        conn: ConnArgs,
    },
    /// List the images in the daemon's store.
    Images {
        #[command(flatten)]
        conn: ConnArgs,
    },
    /// Remove images by tag, digest or id.
    Rmi {
        #[arg(required = true)]
        images: Vec<String>,
        #[command(flatten)]
        conn: ConnArgs,
    },
    /// Benchmarks that print figures next to a peer measured in the same run.
    #[command(subcommand)]
    Bench(BenchCommand),
}

#[derive(Subcommand)]
enum BenchCommand {
    /// Pull an image into an empty store, unpack included, against
    /// `skopeo copy docker://IMAGE oci:DIR` in the same run.
    Pull {
        image: String,
        #[arg(long, default_value_t = 3)]
        runs: usize,
        /// Config file for the private daemon (registry hosts, plain-http).
        #[arg(long, value_name = "FILE")]
        config: Option<PathBuf>,
        /// Let skopeo use plain HTTP / skip TLS verification.
        #[arg(long)]
        insecure: bool,
    },
    /// Sequential RunPodSandbox latency and boot phases, against a raw QEMU
    /// boot of the same kernel, initramfs and devices.
    PodStart {
        /// Number of pods (and of raw boots).
        #[arg(long, default_value_t = 10)]
        count: usize,
        /// Config file for the private daemon the benchmark starts.
        #[arg(long, value_name = "FILE")]
        config: Option<PathBuf>,
    },
    /// CreateContainer+StartContainer until the first log line, and
    /// ExecSync round trips, next to the boot time of the pods they run in.
    Container {
        /// A busybox-like image (sh, echo, sleep, true) the daemon can pull.
        image: String,
        /// Containers started (and ExecSync calls made).
        #[arg(long, default_value_t = 20)]
        count: usize,
        /// Pods booted for the sandbox figure; containers run in the last.
        #[arg(long, default_value_t = 3)]
        pods: usize,
        /// Config file for the private daemon (registry hosts, plain-http).
        #[arg(long, value_name = "FILE")]
        config: Option<PathBuf>,
        /// Instead: ContainerStatus, ListContainers and StopContainer
        /// against a previous revision's binaries in DIR (`vmpod`,
        /// `vmpod-shim`, `initramfs.cpio.gz`, from scripts/build-baseline.sh),
        /// taking turns with this build in the same run.
        #[arg(long, value_name = "DIR")]
        baseline: Option<PathBuf>,
    },
    /// RunPodSandbox with a pod network against without one, taking turns,
    /// and TCP throughput host → pod and pod → pod next to host loopback.
    Network {
        /// A busybox image (sh, sleep, and busybox with nc -e, dd, cat).
        #[arg(long)]
        image: String,
        /// Pods per arm of the RunPodSandbox comparison.
        #[arg(long, default_value_t = 5)]
        count: usize,
        /// Timed throughput rounds (each path once per round).
        #[arg(long, default_value_t = 3)]
        rounds: usize,
        /// MiB sent per throughput sample.
        #[arg(long, default_value_t = 64)]
        mib: u64,
        /// Config file for the private daemon (registry hosts, plain-http, cni).
        #[arg(long, value_name = "FILE")]
        config: Option<PathBuf>,
    },
    /// Exec and port-forward through the streaming server (HTTP upgrade to
    /// SPDY/3.1), against ExecSync and a direct TCP connection to the pod.
    Stream {
        /// A busybox image (sh, sleep, true, and busybox with nc -e and dd).
        #[arg(long)]
        image: String,
        /// Timed rounds (each path once per round).
        #[arg(long, default_value_t = 10)]
        rounds: usize,
        /// MiB sent per throughput sample.
        #[arg(long, default_value_t = 32)]
        mib: u64,
        /// Config file for the private daemon (registry hosts, plain-http, cni).
        #[arg(long, value_name = "FILE")]
        config: Option<PathBuf>,
    },
    /// The built-in VMM against QEMU microvm (and Firecracker): spawn to
    /// first serial byte, to exit, and peak RSS, booting the same tiny guest.
    Vmm {
        /// Boots per VMM.
        #[arg(long, default_value_t = 30)]
        count: usize,
        /// Also measure this Firecracker binary.
        #[arg(long, value_name = "PATH")]
        firecracker: Option<PathBuf>,
        #[arg(long, value_name = "PATH", default_value = "qemu-system-x86_64")]
        qemu: PathBuf,
        /// The standalone built-in VMM; default: `vmpod-vmm` next to vmpod.
        #[arg(long, value_name = "PATH")]
        vmm: Option<PathBuf>,
        /// The PVH test guest; default: `../guests/pvh.elf` from vmpod's
        /// directory (where tests/guests/build.sh puts it).
        #[arg(long, value_name = "FILE")]
        guest: Option<PathBuf>,
        /// Where bench-vmm.json and bench-vmm.svg go.
        #[arg(long, value_name = "DIR", default_value = "vmpod-bench-vmm")]
        out: PathBuf,
    },
}

#[derive(Subcommand)]
enum ConfigCommand {
    /// Print the default configuration, with comments.
    Default,
}

/// The config file and the socket: all an operator command needs to find
/// the daemon.
#[derive(Args)]
struct ConnArgs {
    /// Config file [default: /etc/vmpod/config.toml, if present].
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// CRI socket path (config key `socket`).
    #[arg(long, value_name = "PATH")]
    socket: Option<AbsPath>,
}

impl ConnArgs {
    fn socket(&self) -> Result<PathBuf, config::ConfigError> {
        let overrides = Overrides {
            socket: self.socket.clone(),
            ..Default::default()
        };
        Ok(Config::load(self.config.as_deref(), &overrides)?
            .socket
            .as_path()
            .to_path_buf())
    }
}

#[derive(Args)]
struct ConfigArgs {
    #[command(flatten)]
    conn: ConnArgs,
    /// State directory (config key `state-dir`).
    #[arg(long, value_name = "DIR")]
    state_dir: Option<AbsPath>,
    /// Log level (config key `log-level`).
    #[arg(long, value_name = "LEVEL")]
    log_level: Option<LogLevel>,
    /// Log format (config key `log-format`).
    #[arg(long, value_name = "FORMAT")]
    log_format: Option<LogFormat>,
}

impl ConfigArgs {
    fn load(&self) -> Result<Config, config::ConfigError> {
        let overrides = Overrides {
            socket: self.conn.socket.clone(),
            state_dir: self.state_dir.clone(),
            log_level: self.log_level,
            log_format: self.log_format,
        };
        Config::load(self.conn.config.as_deref(), &overrides)
    }
}

fn main() -> ExitCode {
    // Registries are reached over rustls with the ring provider (no C
    // crypto build); it must be chosen before the first TLS client exists.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let cli = Cli::parse();
    match cli.command {
        Command::Serve(args) => serve(&args),
        Command::Check { config, json } => check(&config, json),
        Command::Pull { image, creds, conn } => client(&conn, |socket| async move {
            let creds = match creds {
                Some(c) => Some(
                    c.split_once(':')
                        .map(|(u, p)| (u.to_string(), p.to_string()))
                        .ok_or_else(|| anyhow::anyhow!("--creds must be USER:PASSWORD"))?,
                ),
                None => None,
            };
            cli::images::pull(&socket, &image, creds).await
        }),
        Command::Images { conn } => {
            client(
                &conn,
                |socket| async move { cli::images::list(&socket).await },
            )
        }
        Command::Rmi { images, conn } => client(&conn, |socket| async move {
            cli::images::remove(&socket, &images).await
        }),
        Command::Bench(BenchCommand::Pull {
            image,
            runs,
            config,
            insecure,
        }) => {
            let opts = bench::pull::Options {
                image,
                runs,
                config_file: config,
                insecure,
            };
            block_on(bench::pull::run(opts))
        }
        Command::Bench(BenchCommand::PodStart { count, config }) => bench_pod_start(count, config),
        Command::Bench(BenchCommand::Container {
            image,
            count,
            pods,
            config,
            baseline,
        }) => block_on(bench::container::run(bench::container::Options {
            image,
            count,
            pods,
            config_file: config,
            baseline,
        })),
        Command::Bench(BenchCommand::Network {
            image,
            count,
            rounds,
            mib,
            config,
        }) => block_on(bench::network::run(bench::network::Options {
            image,
            count,
            rounds,
            mib,
            config_file: config,
        })),
        Command::Bench(BenchCommand::Stream {
            image,
            rounds,
            mib,
            config,
        }) => block_on(bench::stream::run(bench::stream::Options {
            image,
            rounds,
            mib,
            config_file: config,
        })),
        Command::Bench(BenchCommand::Vmm {
            count,
            firecracker,
            qemu,
            vmm,
            guest,
            out,
        }) => match bench::vmm::run(bench::vmm::Options {
            count,
            firecracker,
            qemu,
            vmm,
            guest,
            out,
        }) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("vmpod: {e:#}");
                ExitCode::FAILURE
            }
        },
        Command::Config(ConfigCommand::Default) => {
            print!("{}", config::DEFAULT_CONFIG_TOML);
            ExitCode::SUCCESS
        }
    }
}

/// A config that cannot be loaded is one line on stderr and exit code 2.
fn loaded(config: Result<Config, config::ConfigError>) -> Result<Config, ExitCode> {
    config.map_err(|e| {
        eprintln!("vmpod: {e}");
        ExitCode::from(EXIT_STARTUP)
    })
}

fn serve(args: &ConfigArgs) -> ExitCode {
    let config = match loaded(args.load()) {
        Ok(c) => c,
        Err(code) => return code,
    };
    logging::init(config.log_level, config.log_format);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("vmpod: cannot start async runtime: {e}");
            return ExitCode::from(EXIT_STARTUP);
        }
    };
    match runtime.block_on(server::serve(config)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(server::StartupError(e)) => {
            eprintln!("vmpod: {e:#}");
            ExitCode::from(EXIT_STARTUP)
        }
    }
}

fn check(args: &ConfigArgs, json: bool) -> ExitCode {
    let config = match loaded(args.load()) {
        Ok(c) => c,
        Err(code) => return code,
    };
    let report = host::check::run(&config, host::check::Depth::Full);
    if json {
        match serde_json::to_string_pretty(&report) {
            Ok(s) => println!("{s}"),
            Err(e) => {
                eprintln!("vmpod: cannot encode report: {e}");
                return ExitCode::FAILURE;
            }
        }
    } else {
        print!("{}", host::check::render(&report));
    }
    if report.pods_can_run() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

fn bench_pod_start(count: usize, config_file: Option<PathBuf>) -> ExitCode {
    let config = match loaded(Config::load(config_file.as_deref(), &Overrides::default())) {
        Ok(c) => c,
        Err(code) => return code,
    };
    let opts = bench::pod_start::Options { count, config_file };
    block_on(bench::pod_start::run(opts, config))
}

/// Runs an operator command against the daemon's socket.
fn client<F, Fut>(conn: &ConnArgs, f: F) -> ExitCode
where
    F: FnOnce(PathBuf) -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<()>>,
{
    let socket = match conn.socket() {
        Ok(s) => s,
        Err(e) => {
            eprintln!("vmpod: {e}");
            return ExitCode::from(EXIT_STARTUP);
        }
    };
    block_on(f(socket))
}

/// Runs a command's future; an error is one line on stderr and exit 1.
fn block_on(fut: impl std::future::Future<Output = anyhow::Result<()>>) -> ExitCode {
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("vmpod: cannot start async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(fut) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("vmpod: {e:#}");
            ExitCode::FAILURE
        }
    }
}
