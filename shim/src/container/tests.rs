//! `Containers` against a fake agent on a unix socket: the host half (root,
//! volumes, log, relay, undo, teardown) without a VM.

use std::collections::HashMap;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hyper_util::rt::TokioIo;
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::mpsc;
use tokio_stream::wrappers::{UnboundedReceiverStream, UnixListenerStream};
use tonic::transport::{Channel, Endpoint, Uri};
use tonic::{Code, Request, Response, Status};
use vmpod_agent_proto::v1::*;
use vmpod_agent_proto::{Agent, AgentClient, AgentServer};
use vmpod_shim_api::v1::{CreateContainerRequest as HostCreate, HostMount, StopContainerRequest};

use super::*;
use crate::relay::AgentSource;
use crate::share::PodShare;

type Chunks = mpsc::UnboundedSender<Result<OutputChunk, Status>>;
type EventSender = mpsc::Sender<Result<ContainerEvent, Status>>;

struct FakeContainer {
    status: ContainerStatus,
    spec: ContainerSpec,
    output: Option<Chunks>,
    reader: Option<UnboundedReceiverStream<Result<OutputChunk, Status>>>,
}

/// Just enough of an agent: state per id, output sent at start, exits on
/// any signal except SIGTERM for a command called "ignore-term".
#[derive(Default, Clone)]
struct FakeAgent {
    containers: Arc<Mutex<HashMap<String, FakeContainer>>>,
    /// Every event sent, and the open Events streams.
    events: Arc<Mutex<(Vec<ContainerEvent>, Vec<EventSender>)>>,
    /// What the streaming calls saw: inputs, and how their input ended.
    journal: Arc<Mutex<Vec<String>>>,
}

impl FakeAgent {
    fn with<T>(&self, id: &str, f: impl FnOnce(&mut FakeContainer) -> T) -> Result<T, Status> {
        let mut all = self.containers.lock().unwrap();
        let c = all
            .get_mut(id)
            .ok_or_else(|| Status::not_found(format!("no container {id}")))?;
        Ok(f(c))
    }

    fn emit(&self, kind: ContainerEventType, status: &ContainerStatus) {
        let mut log = self.events.lock().unwrap();
        let event = ContainerEvent {
            seq: log.0.len() as u64 + 1,
            r#type: kind as i32,
            status: Some(status.clone()),
            resync: false,
        };
        log.0.push(event.clone());
        log.1.retain(|tx| tx.try_send(Ok(event.clone())).is_ok());
    }

    fn note(&self, what: String) {
        self.journal.lock().unwrap().push(what);
    }

    /// The container writes `data` to `stream`.
    fn write(&self, id: &str, stream: OutputStream, data: &str) {
        self.with(id, |c| {
            if let Some(out) = &c.output {
                let _ = out.send(chunk(stream, data));
            }
        })
        .unwrap();
    }

    /// The container's process exits with `code`, as if on its own.
    fn exit(&self, id: &str, code: i32) -> Result<ContainerStatus, Status> {
        let status = self.with(id, |c| {
            c.status.state = ContainerState::ContainerExited as i32;
            c.status.exit_code = code;
            c.status.pid = 0;
            // Output ends with the process.
            c.output = None;
            c.status.clone()
        })?;
        self.emit(ContainerEventType::ContainerEventStopped, &status);
        Ok(status)
    }
}

fn chunk(stream: OutputStream, data: &str) -> Result<OutputChunk, Status> {
    Ok(OutputChunk {
        stream: stream as i32,
        data: data.as_bytes().to_vec(),
    })
}

#[tonic::async_trait]
impl Agent for FakeAgent {
    async fn container_status(
        &self,
        req: Request<ContainerRef>,
    ) -> Result<Response<ContainerStatus>, Status> {
        let id = req.into_inner().id;
        Ok(Response::new(self.with(&id, |c| c.status.clone())?))
    }

    async fn stop_container(
        &self,
        req: Request<vmpod_agent_proto::v1::StopContainerRequest>,
    ) -> Result<Response<ContainerStatus>, Status> {
        let req = req.into_inner();
        let (running, ignores_term) = self.with(&req.id, |c| {
            let args = c.spec.process.clone().unwrap_or_default().args;
            (
                c.status.state == ContainerState::ContainerRunning as i32,
                args.first().map(String::as_str) == Some("ignore-term"),
            )
        })?;
        if !running {
            return Ok(Response::new(self.with(&req.id, |c| c.status.clone())?));
        }
        let signal = match req.signal {
            0 => libc::SIGTERM,
            s => s,
        };
        if req.timeout_ms > 0 && signal == libc::SIGTERM && ignores_term {
            tokio::time::sleep(Duration::from_millis(req.timeout_ms)).await;
            return Ok(Response::new(self.exit(&req.id, 128 + libc::SIGKILL)?));
        }
        let signal = if req.timeout_ms == 0 {
            libc::SIGKILL
        } else {
            signal
        };
        Ok(Response::new(self.exit(&req.id, 128 + signal)?))
    }

    type EventsStream = tokio_stream::wrappers::ReceiverStream<Result<ContainerEvent, Status>>;

    async fn events(
        &self,
        req: Request<EventsRequest>,
    ) -> Result<Response<Self::EventsStream>, Status> {
        let after = req.into_inner().after_seq;
        let (tx, rx) = mpsc::channel(1024);
        let mut log = self.events.lock().unwrap();
        for e in log.0.iter().filter(|e| e.seq > after) {
            let _ = tx.try_send(Ok(e.clone()));
        }
        log.1.push(tx);
        Ok(Response::new(tokio_stream::wrappers::ReceiverStream::new(
            rx,
        )))
    }

    async fn health(&self, _: Request<HealthRequest>) -> Result<Response<HealthResponse>, Status> {
        Err(Status::unimplemented("fake"))
    }
    async fn guest_info(
        &self,
        _: Request<GuestInfoRequest>,
    ) -> Result<Response<GuestInfoResponse>, Status> {
        Err(Status::unimplemented("fake"))
    }
    async fn setup_sandbox(
        &self,
        _: Request<SetupSandboxRequest>,
    ) -> Result<Response<SetupSandboxResponse>, Status> {
        Err(Status::unimplemented("fake"))
    }

    async fn create_container(
        &self,
        req: Request<vmpod_agent_proto::v1::CreateContainerRequest>,
    ) -> Result<Response<ContainerStatus>, Status> {
        let spec = req.into_inner().spec.unwrap_or_default();
        let args = spec.process.clone().unwrap_or_default().args;
        if args.first().map(String::as_str) == Some("fail-create") {
            return Err(Status::invalid_argument("fake: refused"));
        }
        let status = ContainerStatus {
            id: spec.id.clone(),
            state: ContainerState::ContainerCreated as i32,
            ..Default::default()
        };
        let (tx, rx) = mpsc::unbounded_channel();
        self.containers.lock().unwrap().insert(
            spec.id.clone(),
            FakeContainer {
                status: status.clone(),
                spec,
                output: Some(tx),
                reader: Some(UnboundedReceiverStream::new(rx)),
            },
        );
        self.emit(ContainerEventType::ContainerEventCreated, &status);
        Ok(Response::new(status))
    }

    async fn start_container(
        &self,
        req: Request<ContainerRef>,
    ) -> Result<Response<ContainerStatus>, Status> {
        let id = req.into_inner().id;
        let status = self.with(&id, |c| {
            let args = c.spec.process.clone().unwrap_or_default().args;
            if args.first().map(String::as_str) == Some("missing") {
                c.status.state = ContainerState::ContainerExited as i32;
                c.output = None;
                return Err(Status::failed_precondition(
                    r#"exec: "missing": executable file not found in $PATH"#,
                ));
            }
            c.status.state = ContainerState::ContainerRunning as i32;
            c.status.pid = 42;
            if let Some(out) = &c.output {
                for chunk in [
                    chunk(OutputStream::Stdout, "hello "),
                    chunk(OutputStream::Stderr, "oo"),
                    chunk(OutputStream::Stdout, "world\npart"),
                    chunk(OutputStream::Stderr, "ps\n"),
                    chunk(OutputStream::Stdout, "ial"),
                ] {
                    let _ = out.send(chunk);
                }
            }
            Ok(c.status.clone())
        })??;
        self.emit(ContainerEventType::ContainerEventStarted, &status);
        Ok(Response::new(status))
    }

    async fn remove_container(
        &self,
        req: Request<ContainerRef>,
    ) -> Result<Response<RemoveContainerResponse>, Status> {
        let id = req.into_inner().id;
        let mut all = self.containers.lock().unwrap();
        match all.get(&id) {
            None => Err(Status::not_found(format!("no container {id}"))),
            Some(c) if c.status.state == ContainerState::ContainerRunning as i32 => Err(
                Status::failed_precondition(format!("container {id} is running")),
            ),
            Some(_) => {
                let last = all.remove(&id).map(|c| c.status).unwrap_or_default();
                drop(all);
                self.emit(ContainerEventType::ContainerEventDeleted, &last);
                Ok(Response::new(RemoveContainerResponse {}))
            }
        }
    }

    async fn list_containers(
        &self,
        _: Request<ListContainersRequest>,
    ) -> Result<Response<ListContainersResponse>, Status> {
        let containers = self
            .containers
            .lock()
            .unwrap()
            .values()
            .map(|c| c.status.clone())
            .collect();
        Ok(Response::new(ListContainersResponse { containers }))
    }

    type ReadOutputStream = UnboundedReceiverStream<Result<OutputChunk, Status>>;

    async fn read_output(
        &self,
        req: Request<ContainerRef>,
    ) -> Result<Response<Self::ReadOutputStream>, Status> {
        let id = req.into_inner().id;
        self.with(&id, |c| c.reader.take())?
            .map(Response::new)
            .ok_or_else(|| Status::failed_precondition("fake: one reader only"))
    }

    async fn exec_sync(
        &self,
        req: Request<ExecSyncRequest>,
    ) -> Result<Response<ExecSyncResponse>, Status> {
        let req = req.into_inner();
        tokio::time::sleep(Duration::from_millis(req.timeout_ms / 2)).await;
        Ok(Response::new(ExecSyncResponse {
            stdout: req.args.join(" ").into_bytes(),
            ..Default::default()
        }))
    }

    async fn update_container(
        &self,
        _: Request<UpdateContainerRequest>,
    ) -> Result<Response<UpdateContainerResponse>, Status> {
        Err(Status::unimplemented("fake"))
    }

    async fn stats(&self, _: Request<StatsRequest>) -> Result<Response<StatsResponse>, Status> {
        Err(Status::unimplemented("fake"))
    }

    type ExecStream = tokio_stream::wrappers::ReceiverStream<Result<StdioOutput, Status>>;

    /// `cat`: stdin comes back as stdout, `big` first writes 200 KiB in one
    /// chunk; closing stdin exits 0. `missing` does not exist.
    async fn exec(
        &self,
        req: Request<tonic::Streaming<StdioInput>>,
    ) -> Result<Response<Self::ExecStream>, Status> {
        let mut input = req.into_inner();
        let start = match input.message().await? {
            Some(StdioInput {
                input: Some(stdio_input::Input::Start(start)),
            }) => start,
            _ => return Err(Status::invalid_argument("fake: start first")),
        };
        match start.args.first().map(String::as_str) {
            Some("missing") => {
                return Err(Status::failed_precondition(
                    r#"exec: "missing": executable file not found in $PATH"#,
                ));
            }
            Some("cat" | "big") => {}
            _ => return Err(Status::invalid_argument("fake: cat or big")),
        }
        let (tx, rx) = mpsc::channel(4);
        if start.args[0] == "big" {
            let _ = tx.try_send(Ok(stdout(vec![b'b'; 200 * 1024])));
        }
        let agent = self.clone();
        tokio::spawn(async move {
            loop {
                let msg = match input.message().await {
                    Ok(Some(StdioInput { input: Some(msg) })) => msg,
                    Ok(Some(_)) => continue,
                    Ok(None) => {
                        // Like a command that goes on after its input
                        // ended, until the call is reset.
                        agent.note("exec: input ended".into());
                        tx.closed().await;
                        return agent.note("exec: call dropped".into());
                    }
                    Err(_) => return agent.note("exec: input broke".into()),
                };
                let reply = match msg {
                    stdio_input::Input::Stdin(data) => stdout(data),
                    stdio_input::Input::CloseStdin(_) => StdioOutput {
                        output: Some(stdio_output::Output::ExitCode(0)),
                    },
                    _ => continue,
                };
                let last = reply.output == Some(stdio_output::Output::ExitCode(0));
                if tx.send(Ok(reply)).await.is_err() || last {
                    return;
                }
            }
        });
        Ok(Response::new(tokio_stream::wrappers::ReceiverStream::new(
            rx,
        )))
    }

    /// Journals the input; refuses a tty.
    async fn attach(
        &self,
        req: Request<tonic::Streaming<StdioInput>>,
    ) -> Result<Response<AttachResponse>, Status> {
        /// Journals a call that tonic dropped (the client reset it).
        struct Dropped(Option<FakeAgent>);
        impl Drop for Dropped {
            fn drop(&mut self) {
                if let Some(agent) = self.0.take() {
                    agent.note("attach: input broke".into());
                }
            }
        }
        let mut dropped = Dropped(Some(self.clone()));
        let mut input = req.into_inner();
        loop {
            let msg = input.message().await;
            if matches!(msg, Ok(None) | Err(_)) {
                dropped.0 = None;
            }
            match msg {
                Ok(Some(StdioInput {
                    input: Some(stdio_input::Input::Start(start)),
                })) if start.tty => {
                    dropped.0 = None;
                    return Err(Status::failed_precondition(
                        "fake: the container has no tty",
                    ));
                }
                Ok(Some(StdioInput {
                    input: Some(stdio_input::Input::Stdin(data)),
                })) => self.note(format!("attach: {}", String::from_utf8_lossy(&data))),
                Ok(Some(_)) => {}
                Ok(None) => {
                    self.note("attach: input ended".into());
                    return Ok(Response::new(AttachResponse {}));
                }
                Err(_) => {
                    self.note("attach: input broke".into());
                    return Err(Status::cancelled("fake: broken"));
                }
            }
        }
    }

    type PortForwardStream =
        tokio_stream::wrappers::ReceiverStream<Result<PortForwardOutput, Status>>;

    /// An echo server on every port but 1, where nothing listens.
    async fn port_forward(
        &self,
        req: Request<tonic::Streaming<PortForwardInput>>,
    ) -> Result<Response<Self::PortForwardStream>, Status> {
        let mut input = req.into_inner();
        let port = match input.message().await? {
            Some(PortForwardInput {
                input: Some(port_forward_input::Input::Port(port)),
            }) => port,
            _ => return Err(Status::invalid_argument("fake: port first")),
        };
        if port == 1 {
            return Err(Status::unavailable(
                "connect 127.0.0.1:1: connection refused",
            ));
        }
        let (tx, rx) = mpsc::channel(4);
        let _ = tx.try_send(Ok(PortForwardOutput {
            output: Some(port_forward_output::Output::Connected(true)),
        }));
        tokio::spawn(async move {
            while let Ok(Some(msg)) = input.message().await {
                match msg.input {
                    Some(port_forward_input::Input::Data(data)) => {
                        let echo = PortForwardOutput {
                            output: Some(port_forward_output::Output::Data(data)),
                        };
                        if tx.send(Ok(echo)).await.is_err() {
                            return;
                        }
                    }
                    // The peer closes too: the output ends.
                    Some(port_forward_input::Input::CloseWrite(_)) => return,
                    _ => {}
                }
            }
        });
        Ok(Response::new(tokio_stream::wrappers::ReceiverStream::new(
            rx,
        )))
    }
}

fn stdout(data: Vec<u8>) -> StdioOutput {
    StdioOutput {
        output: Some(stdio_output::Output::Chunk(OutputChunk {
            stream: OutputStream::Stdout as i32,
            data,
        })),
    }
}

/// The fake agent's address, and a switch for "the VM is not READY".
#[derive(Clone)]
struct FakeSource {
    channel: Channel,
    up: Arc<AtomicBool>,
}

impl AgentSource for FakeSource {
    fn client(&self) -> Result<AgentClient<Channel>, Status> {
        if self.up.load(Ordering::SeqCst) {
            Ok(AgentClient::new(self.channel.clone()))
        } else {
            Err(Status::unavailable(
                "guest agent not reachable: VM is PHASE_STOPPED",
            ))
        }
    }
    fn why_unavailable(&self) -> String {
        "VM is PHASE_READY".into()
    }
}

fn lazy_channel(sock: std::path::PathBuf) -> Channel {
    Endpoint::from_static("http://agent.fake").connect_with_connector_lazy(tower::service_fn(
        move |_: Uri| {
            let sock = sock.clone();
            async move { Ok::<_, std::io::Error>(TokioIo::new(UnixStream::connect(sock).await?)) }
        },
    ))
}

struct Fixture {
    tmp: tempfile::TempDir,
    agent: FakeAgent,
    source: FakeSource,
    containers: Arc<Containers>,
    pod: PodShare,
}

impl Fixture {
    fn new() -> Fixture {
        let tmp = tempfile::tempdir().unwrap();
        let sock = tmp.path().join("agent.sock");
        let agent = FakeAgent::default();
        let listener = UnixListener::bind(&sock).unwrap();
        let server = agent.clone();
        tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(AgentServer::new(server))
                .serve_with_incoming(UnixListenerStream::new(listener)),
        );
        let pod = PodShare::of(&tmp.path().join("pod"));
        pod.prepare().expect("share (root)");
        let layer = tmp.path().join("layer");
        std::fs::create_dir_all(layer.join("bin")).unwrap();
        std::fs::create_dir_all(tmp.path().join("vol")).unwrap();
        std::fs::write(tmp.path().join("vol/data"), b"data").unwrap();
        std::fs::create_dir_all(tmp.path().join("logs")).unwrap();
        Fixture {
            source: FakeSource {
                channel: lazy_channel(sock),
                up: Arc::new(AtomicBool::new(true)),
            },
            containers: Containers::new(pod.clone()),
            agent,
            pod,
            tmp,
        }
    }

    fn request(&self, id: &str, cmd: &str) -> HostCreate {
        let root = self.tmp.path();
        HostCreate {
            layers: vec![root.join("layer").to_string_lossy().into_owned()],
            mounts: vec![HostMount {
                host_path: root.join("vol").to_string_lossy().into_owned(),
                container_path: "/data".into(),
                readonly: true,
                ..Default::default()
            }],
            log_path: self.log(id).to_string_lossy().into_owned(),
            writable_layer_bytes: 8 << 20,
            spec: Some(ContainerSpec {
                id: id.into(),
                process: Some(Process {
                    args: vec![cmd.into()],
                    ..Default::default()
                }),
                ..Default::default()
            }),
        }
    }

    fn log(&self, id: &str) -> std::path::PathBuf {
        self.tmp.path().join(format!("logs/{id}.log"))
    }

    fn dir(&self, id: &str) -> std::path::PathBuf {
        self.pod.share.join(CONTAINERS_DIR).join(id)
    }

    fn no_mounts(&self) -> bool {
        vmpod_shim_api::mounts::mounts_under(self.pod.share.parent().unwrap())
            == vec![self.pod.share.to_string_lossy().into_owned()]
    }

    async fn create(&self, id: &str, cmd: &str) -> Result<ContainerStatus, Status> {
        self.containers
            .create(&self.source, self.request(id, cmd))
            .await
    }

    async fn stop(&self, id: &str, timeout_ms: u64) -> Result<ContainerStatus, Status> {
        let req = StopContainerRequest {
            id: id.into(),
            timeout_ms,
            signal: 0,
        };
        self.containers.stop(&self.source, req).await
    }

    async fn remove(&self, id: &str) -> Result<RemoveContainerResponse, Status> {
        let r = ContainerRef { id: id.into() };
        self.containers.remove(&self.source, r).await
    }
}

impl Drop for Fixture {
    fn drop(&mut self) {
        let _ = vmpod_shim_api::mounts::remove_unmounted(self.pod.share.parent().unwrap());
    }
}

/// The records' stream, tag and content, without the timestamps.
fn records(log: &Path) -> Vec<String> {
    std::fs::read_to_string(log)
        .unwrap_or_default()
        .lines()
        .map(|l| l.split_once(' ').map_or("", |(_, rest)| rest).to_owned())
        .collect()
}

async fn wait_for_records(log: &Path, n: usize) -> Vec<String> {
    // Up to 10 s: the copy runs on the blocking pool, which a loaded CI
    // machine can leave waiting.
    for _ in 0..1000 {
        let r = records(log);
        if r.len() >= n {
            return r;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    records(log)
}

#[tokio::test(flavor = "current_thread")]
async fn lifecycle_assembles_relays_output_and_cleans_up() {
    let f = Fixture::new();
    let created = f.create("c1", "sh").await.expect("create (root)");
    assert_eq!(created.state(), ContainerState::ContainerCreated);
    let spec = f.agent.with("c1", |c| c.spec.clone()).unwrap();
    assert_eq!(spec.rootfs, "/run/vmpod/share/containers/c1/rootfs");
    assert_eq!(
        spec.writable_dir, "",
        "the host measures the writable layer"
    );
    assert_eq!(spec.mounts.len(), 1);
    assert_eq!(
        spec.mounts[0].source,
        "/run/vmpod/share/containers/c1/mounts/0"
    );
    assert!(spec.mounts[0].readonly);
    assert_eq!(
        std::fs::read(f.dir("c1").join("mounts/0/data")).unwrap(),
        b"data"
    );
    assert!(f.dir("c1").join("rootfs/bin").is_dir());
    let again = f.create("c1", "sh").await.unwrap_err();
    assert_eq!(again.code(), Code::AlreadyExists);

    let started = f
        .containers
        .start(&f.source, ContainerRef { id: "c1".into() })
        .await
        .unwrap();
    assert_eq!(started.state(), ContainerState::ContainerRunning);
    // Lines cut across chunks come out whole, per stream. Each stream has
    // its own copier (output.rs), so the two streams' records may land in
    // either order; each one's are checked as they are.
    let mut got = wait_for_records(&f.log("c1"), 2).await;
    got.sort();
    assert_eq!(got, ["stderr F oops", "stdout F hello world"]);

    // Rotation: the renamed file keeps what it had, the new one is made.
    let rotated = f.tmp.path().join("logs/c1.log.1");
    std::fs::rename(f.log("c1"), &rotated).unwrap();
    f.containers
        .reopen_log(&f.source, ContainerRef { id: "c1".into() })
        .await
        .expect("reopen while running");
    assert!(f.log("c1").exists());

    let busy = f.remove("c1").await.unwrap_err();
    assert_eq!(busy.code(), Code::FailedPrecondition, "{}", busy.message());
    assert!(
        f.dir("c1").join("rootfs/bin").is_dir(),
        "a refused remove keeps the root"
    );

    let stopped = f.stop("c1", 1000).await.unwrap();
    assert_eq!(stopped.state(), ContainerState::ContainerExited);
    assert_eq!(stopped.exit_code, 128 + libc::SIGTERM);
    let again = f.stop("c1", 1000).await.unwrap();
    assert_eq!(again.exit_code, 128 + libc::SIGTERM, "stop is idempotent");
    // The unterminated tail is flushed as a partial record at EOF.
    let tail = wait_for_records(&f.log("c1"), 1).await;
    assert_eq!(tail, ["stdout P partial"]);
    let reopen = f
        .containers
        .reopen_log(&f.source, ContainerRef { id: "c1".into() })
        .await
        .unwrap_err();
    assert_eq!(reopen.code(), Code::FailedPrecondition);

    f.remove("c1").await.expect("remove");
    assert!(!f.dir("c1").exists());
    assert!(f.no_mounts());
    assert_eq!(
        std::fs::read(f.tmp.path().join("vol/data")).unwrap(),
        b"data"
    );
    f.remove("c1").await.expect("remove is idempotent");
    let gone = f
        .containers
        .reopen_log(&f.source, ContainerRef { id: "c1".into() })
        .await
        .unwrap_err();
    assert_eq!(gone.code(), Code::NotFound);
}

#[tokio::test(flavor = "current_thread")]
async fn agent_errors_keep_their_code_and_message() {
    let f = Fixture::new();
    f.create("c2", "missing").await.unwrap();
    let e = f
        .containers
        .start(&f.source, ContainerRef { id: "c2".into() })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::FailedPrecondition);
    assert_eq!(
        e.message(),
        r#"exec: "missing": executable file not found in $PATH"#
    );
    let unknown = f.stop("nope", 10).await.unwrap_err();
    assert_eq!(unknown.code(), Code::NotFound);
    f.remove("c2").await.unwrap();
    assert!(f.no_mounts());
}

#[tokio::test(flavor = "current_thread")]
async fn a_refused_create_leaves_nothing_and_the_id_is_free_again() {
    let f = Fixture::new();
    let e = f.create("c3", "fail-create").await.unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    assert_eq!(e.message(), "fake: refused");
    assert!(!f.dir("c3").exists());
    assert!(f.no_mounts());
    f.create("c3", "sh")
        .await
        .expect("the id can be used again");
    f.remove("c3").await.unwrap();
}

#[tokio::test(flavor = "current_thread")]
async fn stop_kills_after_the_grace() {
    let f = Fixture::new();
    f.create("c4", "ignore-term").await.unwrap();
    f.containers
        .start(&f.source, ContainerRef { id: "c4".into() })
        .await
        .unwrap();
    let t = std::time::Instant::now();
    let st = f.stop("c4", 200).await.unwrap();
    assert_eq!(st.exit_code, 128 + libc::SIGKILL);
    assert!(
        t.elapsed() >= Duration::from_millis(200),
        "{:?}",
        t.elapsed()
    );
    f.remove("c4").await.unwrap();
}

#[tokio::test(flavor = "current_thread")]
async fn exec_sync_is_relayed() {
    let f = Fixture::new();
    let resp = f
        .containers
        .exec_sync(
            &f.source,
            ExecSyncRequest {
                id: "c5".into(),
                args: vec!["echo".into(), "hi".into()],
                timeout_ms: 100,
                output_limit: 0,
            },
        )
        .await
        .unwrap();
    assert_eq!(resp.stdout, b"echo hi");
}

#[test]
fn exec_sync_is_bounded_by_its_own_timeout_only() {
    assert_eq!(exec_limit(0), None, "0: no timeout");
    assert_eq!(exec_limit(120_000), Some(Duration::from_secs(130)));
    assert_eq!(
        exec_limit(u64::MAX).map(|d| d > Duration::from_secs(1 << 40)),
        Some(true)
    );
}

#[tokio::test(flavor = "current_thread")]
async fn no_agent_is_unavailable_and_teardown_unmounts_everything() {
    let f = Fixture::new();
    f.create("c6", "sh").await.unwrap();
    f.create("c7", "sh").await.unwrap();
    f.source.up.store(false, Ordering::SeqCst);
    let e = f.create("c8", "sh").await.unwrap_err();
    assert_eq!(e.code(), Code::Unavailable);
    assert!(e.message().contains("PHASE_STOPPED"), "{}", e.message());
    assert!(!f.dir("c8").exists(), "no host work without an agent");
    let e = f
        .containers
        .list(&f.source, ListContainersRequest {})
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::Unavailable);

    f.containers.teardown_all().await;
    assert!(f.no_mounts());
    assert!(!f.dir("c6").exists() && !f.dir("c7").exists());
    f.containers.teardown_all().await;
    // The VM is gone: removing what it had is fine, and so is an unknown id.
    f.remove("c6").await.unwrap();
    std::fs::create_dir_all(f.pod.skeleton.join("containers/leftover/rootfs")).unwrap();
    f.remove("leftover").await.unwrap();
    assert!(!f.dir("leftover").exists());
    assert_eq!(std::fs::read_dir(&f.pod.writable).unwrap().count(), 0);
}

#[tokio::test(flavor = "current_thread")]
async fn a_broken_connection_is_unavailable() {
    let f = Fixture::new();
    let dead = FakeSource {
        channel: lazy_channel(f.tmp.path().join("no-agent.sock")),
        up: Arc::new(AtomicBool::new(true)),
    };
    let e = f
        .containers
        .list(&dead, ListContainersRequest {})
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::Unavailable);
    assert!(
        e.message().contains("agent ListContainers"),
        "{}",
        e.message()
    );
    let e = f
        .containers
        .create(&dead, f.request("c9", "sh"))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::Unavailable);
    assert!(!f.dir("c9").exists(), "undone");
    assert!(f.no_mounts());
}

#[tokio::test(flavor = "current_thread")]
async fn events_follow_the_agent_stream_and_the_calls_once_each() {
    let f = Fixture::new();
    let (_vm, vm_state) = tokio::sync::watch::channel(vmpod_shim_api::v1::VmState {
        phase: vmpod_shim_api::v1::Phase::Ready as i32,
        ..Default::default()
    });
    tokio::spawn(crate::events::pump(
        f.source.clone(),
        f.containers.events().clone(),
        f.containers.known(),
        vm_state,
    ));
    let mut events = f.containers.events().subscribe(0).unwrap();
    let mut next = async || {
        tokio::time::timeout(Duration::from_secs(5), events.recv())
            .await
            .expect("an event within 5 s")
            .expect("stream open")
            .expect("event")
    };
    f.create("e1", "sh").await.unwrap();
    f.containers
        .start(&f.source, ContainerRef { id: "e1".into() })
        .await
        .unwrap();
    // It exits on its own: only the agent's stream can tell.
    f.agent.exit("e1", 3).unwrap();
    let mut seen = Vec::new();
    for _ in 0..3 {
        let e = next().await;
        seen.push((e.seq, e.r#type(), e.status.unwrap_or_default().exit_code));
    }
    assert_eq!(
        seen,
        [
            (1, ContainerEventType::ContainerEventCreated, 0),
            (2, ContainerEventType::ContainerEventStarted, 0),
            (3, ContainerEventType::ContainerEventStopped, 3),
        ]
    );
    // Status answers from the log, without asking the agent.
    f.source.up.store(false, Ordering::SeqCst);
    let st = f.containers.status(&f.source, "e1").await.unwrap();
    assert_eq!(
        (st.state(), st.exit_code),
        (ContainerState::ContainerExited, 3)
    );
    f.source.up.store(true, Ordering::SeqCst);
    f.remove("e1").await.unwrap();
    let e = next().await;
    assert_eq!(
        (e.seq, e.r#type()),
        (4, ContainerEventType::ContainerEventDeleted)
    );
    // The agent's own copies of these changes were not logged again.
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(events.try_recv().is_err(), "no duplicate events");
    let e = f.containers.status(&f.source, "e1").await.unwrap_err();
    assert_eq!(e.code(), Code::NotFound);
}

/// The guest plays the attacker: events about ids the shim never created,
/// and a reason of a MiB, must neither grow the shim's copy nor reach the
/// daemon's stream as they are.
#[tokio::test(flavor = "current_thread")]
async fn a_lying_agent_cannot_grow_the_event_log() {
    let f = Fixture::new();
    let (_vm, vm_state) = tokio::sync::watch::channel(vmpod_shim_api::v1::VmState {
        phase: vmpod_shim_api::v1::Phase::Ready as i32,
        ..Default::default()
    });
    tokio::spawn(crate::events::pump(
        f.source.clone(),
        f.containers.events().clone(),
        f.containers.known(),
        vm_state,
    ));
    let mut events = f.containers.events().subscribe(0).unwrap();
    f.create("real", "sh").await.unwrap();
    let huge = "x".repeat(1 << 20);
    for i in 0..100 {
        f.agent.emit(
            ContainerEventType::ContainerEventStopped,
            &ContainerStatus {
                id: format!("ghost{i}"),
                state: ContainerState::ContainerExited as i32,
                message: huge.clone(),
                ..Default::default()
            },
        );
    }
    f.agent.emit(
        ContainerEventType::ContainerEventStopped,
        &ContainerStatus {
            id: "real".into(),
            state: ContainerState::ContainerExited as i32,
            exit_code: 1,
            message: huge.clone(),
            ..Default::default()
        },
    );
    let mut seen = Vec::new();
    while seen.len() < 2 {
        let e = tokio::time::timeout(Duration::from_secs(5), events.recv())
            .await
            .expect("an event within 5 s")
            .expect("stream open")
            .expect("event");
        seen.push(e);
    }
    let ids: Vec<String> = seen
        .iter()
        .map(|e| e.status.clone().unwrap_or_default().id)
        .collect();
    assert_eq!(ids, ["real", "real"], "only the shim's own container");
    let stopped = seen[1].status.clone().unwrap_or_default();
    assert_eq!(stopped.exit_code, 1);
    assert_eq!(stopped.message.len(), vmpod_shim_api::MAX_GUEST_MESSAGE);
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(events.try_recv().is_err(), "no ghost events");
    assert!(f.containers.events().status("ghost0").is_none());
    f.remove("real").await.unwrap();
}

// ------------------------------------------------------------ streaming ---

/// The daemon's side of a streaming call: what it sends, what it gets.
struct Daemon<I, O> {
    input: mpsc::Sender<Result<I, Status>>,
    output: crate::stream::Output<O>,
}

type DaemonInput<I> = tokio_stream::wrappers::ReceiverStream<Result<I, Status>>;

/// A daemon stream that starts with `first`.
fn daemon_input<I: Send + 'static>(first: I) -> (mpsc::Sender<Result<I, Status>>, DaemonInput<I>) {
    let (tx, rx) = mpsc::channel(16);
    tx.try_send(Ok(first)).unwrap();
    (tx, tokio_stream::wrappers::ReceiverStream::new(rx))
}

impl<I, O> Daemon<I, O> {
    async fn send(&self, message: I) {
        self.input.send(Ok(message)).await.unwrap();
    }

    /// The next message, or the end (`None`); within 5 s.
    async fn next(&mut self) -> Option<Result<O, Status>> {
        use tokio_stream::StreamExt;
        tokio::time::timeout(Duration::from_secs(5), self.output.next())
            .await
            .expect("an answer within 5 s")
    }
}

fn start(id: &str, args: &[&str]) -> StdioStart {
    StdioStart {
        id: id.into(),
        args: args.iter().map(|a| (*a).to_owned()).collect(),
        stdin: true,
        stdout: true,
        ..Default::default()
    }
}

fn stdio(input: stdio_input::Input) -> StdioInput {
    StdioInput { input: Some(input) }
}

impl Fixture {
    async fn exec(&self, start: StdioStart) -> Result<Daemon<StdioInput, StdioOutput>, Status> {
        let (input, rx) = daemon_input(stdio(stdio_input::Input::Start(start)));
        let output = self.containers.exec(&self.source, rx).await?;
        Ok(Daemon { input, output })
    }

    async fn attach(&self, start: StdioStart) -> Result<Daemon<StdioInput, StdioOutput>, Status> {
        let (input, rx) = daemon_input(stdio(stdio_input::Input::Start(start)));
        let output = self.containers.attach(&self.source, rx).await?;
        Ok(Daemon { input, output })
    }

    async fn port_forward(
        &self,
        port: u32,
    ) -> Result<Daemon<PortForwardInput, PortForwardOutput>, Status> {
        let first = PortForwardInput {
            input: Some(port_forward_input::Input::Port(port)),
        };
        let (input, rx) = daemon_input(first);
        let output = crate::port_forward::port_forward(&self.source, rx).await?;
        Ok(Daemon { input, output })
    }

    /// Follows the agent's events, as the shim does while the VM is READY.
    fn pump_events(&self) -> tokio::sync::watch::Sender<vmpod_shim_api::v1::VmState> {
        let (vm, vm_state) = tokio::sync::watch::channel(vmpod_shim_api::v1::VmState {
            phase: vmpod_shim_api::v1::Phase::Ready as i32,
            ..Default::default()
        });
        tokio::spawn(crate::events::pump(
            self.source.clone(),
            self.containers.events().clone(),
            self.containers.known(),
            vm_state,
        ));
        vm
    }

    async fn wait_for_journal(&self, line: &str) {
        for _ in 0..500 {
            if self.agent.journal.lock().unwrap().iter().any(|l| l == line) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!(
            "{line:?} not in the agent's journal: {:?}",
            self.agent.journal.lock().unwrap()
        );
    }
}

fn output_of(message: Option<Result<StdioOutput, Status>>) -> stdio_output::Output {
    message
        .expect("more output")
        .expect("no error")
        .output
        .expect("a message")
}

#[tokio::test(flavor = "current_thread")]
async fn exec_is_relayed_both_ways_in_bounded_pieces() {
    let f = Fixture::new();
    f.create("x1", "sh").await.expect("create (root)");
    let mut exec = f.exec(start("x1", &["big"])).await.unwrap();
    // 200 KiB in one agent message reaches the daemon in 64 KiB pieces.
    let mut big = 0;
    while big < 200 * 1024 {
        match output_of(exec.next().await) {
            stdio_output::Output::Chunk(c) => {
                assert!(c.data.len() <= crate::stream::PIECE);
                big += c.data.len();
            }
            other => panic!("{other:?}"),
        }
    }
    exec.send(stdio(stdio_input::Input::Stdin(b"hi".to_vec())))
        .await;
    match output_of(exec.next().await) {
        stdio_output::Output::Chunk(c) => assert_eq!(c.data, b"hi"),
        other => panic!("{other:?}"),
    }
    exec.send(stdio(stdio_input::Input::CloseStdin(true))).await;
    assert_eq!(
        output_of(exec.next().await),
        stdio_output::Output::ExitCode(0)
    );
    assert!(exec.next().await.is_none(), "the exit is the last message");
}

#[tokio::test(flavor = "current_thread")]
async fn exec_is_checked_and_agent_errors_keep_their_code() {
    let f = Fixture::new();
    f.create("x2", "sh").await.expect("create (root)");
    let e = f.exec(start("nope", &["cat"])).await.err().unwrap();
    assert_eq!(e.code(), Code::NotFound);
    let e = f.exec(start("../x2", &["cat"])).await.err().unwrap();
    assert_eq!(e.code(), Code::InvalidArgument);
    let (_input, rx) = daemon_input(stdio(stdio_input::Input::Stdin(b"x".to_vec())));
    let e = f.containers.exec(&f.source, rx).await.err().unwrap();
    assert_eq!(e.code(), Code::InvalidArgument);
    assert!(e.message().contains("start"), "{}", e.message());
    let e = f.exec(start("x2", &["missing"])).await.err().unwrap();
    assert_eq!(e.code(), Code::FailedPrecondition);
    assert!(e.message().contains("executable file not found"));
    f.source.up.store(false, Ordering::SeqCst);
    let e = f.exec(start("x2", &["cat"])).await.err().unwrap();
    assert_eq!(e.code(), Code::Unavailable);
}

#[tokio::test(flavor = "current_thread")]
async fn exec_is_dropped_in_the_guest_when_the_daemon_goes_away() {
    let f = Fixture::new();
    f.create("x3", "sh").await.expect("create (root)");
    let exec = f.exec(start("x3", &["cat"])).await.unwrap();
    // The daemon's call is dropped whole, its input still open: the
    // command's input ends and the call is reset.
    let Daemon { input, output } = exec;
    drop(output);
    f.wait_for_journal("exec: input ended").await;
    f.wait_for_journal("exec: call dropped").await;
    drop(input);
    f.agent.journal.lock().unwrap().clear();

    // A clean end of the daemon's input only ends the command's input.
    let exec = f.exec(start("x3", &["cat"])).await.unwrap();
    exec.send(stdio(stdio_input::Input::Stdin(b"a".to_vec())))
        .await;
    let Daemon { input, mut output } = exec;
    drop(input);
    f.wait_for_journal("exec: input ended").await;
    use tokio_stream::StreamExt;
    match output.next().await.unwrap().unwrap().output {
        Some(stdio_output::Output::Chunk(c)) => assert_eq!(c.data, b"a"),
        other => panic!("{other:?}"),
    }
    assert!(
        !f.agent
            .journal
            .lock()
            .unwrap()
            .iter()
            .any(|l| l == "exec: call dropped"),
        "the output goes on"
    );
    drop(output);
    f.wait_for_journal("exec: call dropped").await;
}

#[tokio::test(flavor = "current_thread")]
async fn attach_tees_the_output_relays_stdin_and_ends_with_the_exit_code() {
    let f = Fixture::new();
    let _vm = f.pump_events();
    f.create("a1", "sh").await.expect("create (root)");
    let e = f.attach(start("a1", &[])).await.err().unwrap();
    assert_eq!(e.code(), Code::FailedPrecondition, "not started yet");
    assert!(e.message().contains("not running"), "{}", e.message());
    f.containers
        .start(&f.source, ContainerRef { id: "a1".into() })
        .await
        .unwrap();
    // What was logged before attaching is not replayed.
    wait_for_records(&f.log("a1"), 2).await;
    let mut attached = f.attach(start("a1", &[])).await.unwrap();
    f.agent.write("a1", OutputStream::Stdout, "one\n");
    f.agent.write("a1", OutputStream::Stderr, "err\n");
    f.agent.write("a1", OutputStream::Stdout, "two\n");
    attached
        .send(stdio(stdio_input::Input::Stdin(b"typed".to_vec())))
        .await;
    f.wait_for_journal("attach: typed").await;
    let mut out = Vec::new();
    while !out.ends_with(b"two\n") {
        match output_of(attached.next().await) {
            stdio_output::Output::Chunk(c) => {
                assert_eq!(
                    c.stream,
                    OutputStream::Stdout as i32,
                    "stderr not asked for"
                );
                out.extend(c.data);
            }
            other => panic!("{other:?}"),
        }
    }
    assert!(!String::from_utf8_lossy(&out).contains("hello"));
    f.agent.exit("a1", 3).unwrap();
    assert_eq!(
        output_of(attached.next().await),
        stdio_output::Output::ExitCode(3)
    );
    assert!(attached.next().await.is_none());
    // The log got everything, the attached client notwithstanding.
    let logged = wait_for_records(&f.log("a1"), 4).await;
    assert!(logged.contains(&"stderr F err".to_owned()), "{logged:?}");
    assert!(logged.iter().any(|l| l.ends_with("two")), "{logged:?}");
    let e = f.attach(start("a1", &[])).await.err().unwrap();
    assert_eq!(e.code(), Code::FailedPrecondition, "exited");
}

#[tokio::test(flavor = "current_thread")]
async fn attach_leaves_the_container_running_when_the_client_goes_away() {
    let f = Fixture::new();
    let _vm = f.pump_events();
    f.create("a2", "sh").await.expect("create (root)");
    let e = f.attach(start("nope", &[])).await.err().unwrap();
    assert_eq!(e.code(), Code::NotFound);
    let e = f.attach(start("a2", &["sh"])).await.err().unwrap();
    assert_eq!(e.code(), Code::InvalidArgument, "attach takes no command");
    f.containers
        .start(&f.source, ContainerRef { id: "a2".into() })
        .await
        .unwrap();
    // The agent refuses the input: the stream ends with its status.
    let mut tty = f
        .attach(StdioStart {
            tty: true,
            ..start("a2", &[])
        })
        .await
        .unwrap();
    loop {
        match tty.next().await.expect("an end") {
            Ok(_) => continue,
            Err(e) => {
                assert_eq!(e.code(), Code::FailedPrecondition);
                assert!(e.message().contains("no tty"), "{}", e.message());
                break;
            }
        }
    }
    let attached = f.attach(start("a2", &[])).await.unwrap();
    attached
        .send(stdio(stdio_input::Input::Stdin(b"x".to_vec())))
        .await;
    f.wait_for_journal("attach: x").await;
    drop(attached);
    f.wait_for_journal("attach: input ended").await;
    let st = f.containers.status(&f.source, "a2").await.unwrap();
    assert_eq!(st.state(), ContainerState::ContainerRunning);
    // Without stdin or a tty, no agent call: output only.
    let mut watching = f
        .attach(StdioStart {
            stdin: false,
            stderr: true,
            ..start("a2", &[])
        })
        .await
        .unwrap();
    f.agent.write("a2", OutputStream::Stderr, "e\n");
    match output_of(watching.next().await) {
        stdio_output::Output::Chunk(c) => assert_eq!(c.stream, OutputStream::Stderr as i32),
        other => panic!("{other:?}"),
    }
}

#[tokio::test(flavor = "current_thread")]
async fn port_forward_is_relayed_and_a_refusal_keeps_its_reason() {
    let f = Fixture::new();
    let mut conn = f.port_forward(8080).await.unwrap();
    let next = |m: Option<Result<PortForwardOutput, Status>>| {
        m.expect("more")
            .expect("no error")
            .output
            .expect("a message")
    };
    assert_eq!(
        next(conn.next().await),
        port_forward_output::Output::Connected(true)
    );
    conn.send(PortForwardInput {
        input: Some(port_forward_input::Input::Data(b"ping".to_vec())),
    })
    .await;
    assert_eq!(
        next(conn.next().await),
        port_forward_output::Output::Data(b"ping".to_vec())
    );
    // Many at once: one call per connection.
    let mut other = f.port_forward(9090).await.unwrap();
    assert_eq!(
        next(other.next().await),
        port_forward_output::Output::Connected(true)
    );
    conn.send(PortForwardInput {
        input: Some(port_forward_input::Input::CloseWrite(true)),
    })
    .await;
    assert!(conn.next().await.is_none(), "the guest side closed");

    let e = f.port_forward(1).await.err().unwrap();
    assert_eq!(e.code(), Code::Unavailable);
    assert!(
        e.message().contains("connection refused"),
        "{}",
        e.message()
    );
    let e = f.port_forward(0).await.err().unwrap();
    assert_eq!(e.code(), Code::InvalidArgument);
}
