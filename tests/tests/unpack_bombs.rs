//! Layer bombs end to end: a real `vmpod serve` pulls, from a real
//! registry on loopback, images whose single layer is small on the wire and
//! hostile once decompressed. Each pull must fail with RESOURCE_EXHAUSTED
//! naming the config key and the layer, leave nothing in the state dir,
//! keep the daemon's memory small, and leave it serving.
//!
//! The layers are generated at test time into a temp file (nothing big is
//! kept in git) as concatenated gzip members: one member compresses a
//! repeated block once and is written as many times as needed, which is a
//! valid gzip stream (RFC 1952 §2.2) and costs the test almost no CPU.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::time::Instant;

use tonic::Code;
use vmpod_cri_api::v1::*;
use vmpod_tests::daemon::{Daemon, test_config};
use vmpod_tests::registry::{GeneratedImage, Registry, push_generated_image};

const GZIP_LAYER: &str = "application/vnd.oci.image.layer.v1.tar+gzip";

/// Peak resident memory the daemon may reach while refusing a bomb. An
/// idle debug daemon is a few tens of MiB; an unpacker that kept something
/// per entry would pass this by far on two million entries.
const MAX_DAEMON_HWM_KIB: u64 = 200 << 10;

/// A layer being written: gzip members to a file, the raw tar to a hash.
struct LayerWriter {
    out: BufWriter<File>,
    diff: ring::digest::Context,
    raw_bytes: u64,
}

impl LayerWriter {
    fn create(path: &Path) -> LayerWriter {
        LayerWriter {
            out: BufWriter::new(File::create(path).expect("create layer file")),
            diff: ring::digest::Context::new(&ring::digest::SHA256),
            raw_bytes: 0,
        }
    }

    /// Appends `raw` `times` times, compressed once.
    fn repeat(&mut self, raw: &[u8], times: usize) {
        let member = gzip(raw);
        for _ in 0..times {
            self.out.write_all(&member).expect("write layer");
            self.diff.update(raw);
        }
        self.raw_bytes += raw.len() as u64 * times as u64;
    }

    /// Ends the archive (two zero blocks) and returns the diff_id.
    fn finish(mut self) -> (String, u64) {
        self.repeat(&[0u8; 1024], 1);
        self.out.flush().expect("flush layer");
        let hex: String = self
            .diff
            .finish()
            .as_ref()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        (format!("sha256:{hex}"), self.raw_bytes)
    }
}

fn gzip(data: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
    e.write_all(data).expect("gzip");
    e.finish().expect("gzip")
}

/// One ustar header block.
fn header(name: &str, kind: tar::EntryType, size: u64, mode: u32) -> Vec<u8> {
    let mut h = tar::Header::new_ustar();
    h.set_path(name).expect("header path");
    h.set_entry_type(kind);
    h.set_size(size);
    h.set_mode(mode);
    h.set_uid(0);
    h.set_gid(0);
    h.set_mtime(1_600_000_000);
    h.set_cksum();
    h.as_bytes().to_vec()
}

/// What a failed bomb pull left to look at.
struct Outcome {
    status: tonic::Status,
    layer: String,
    hwm_kib: u64,
}

/// Pushes a generated layer, pulls it through the daemon, and checks the
/// aftermath that every bomb shares.
async fn pull_bomb(reg: &Registry, d: &Daemon, name: &str, layer: &Path, diff_id: &str) -> Outcome {
    let repo_tag = format!("{name}:latest");
    let digest = push_generated_image(
        reg,
        &GeneratedImage {
            repo_tag: &repo_tag,
            layer,
            media_type: GZIP_LAYER,
            diff_id,
        },
    )
    .expect("push generated image");
    let wire = std::fs::metadata(layer).expect("stat layer").len();
    let image = format!("{}/{repo_tag}", reg.addr());
    let mut c = d.images().await.expect("image client");
    let started = Instant::now();
    let status = vmpod_tests::daemon::pull(&mut c, &image)
        .await
        .expect_err("a bomb must not pull");
    let hwm_kib = proc_status_kib(d.pid(), "VmHWM");
    eprintln!(
        "{name}: {wire} bytes on the wire, refused in {:?}, daemon VmHWM {} MiB: {:?}: {}",
        started.elapsed(),
        hwm_kib >> 10,
        status.code(),
        status.message()
    );

    // Nothing left behind: no snapshot (not even a hidden .tmp- one), no
    // download, no record.
    let images = d.state_dir.join("images");
    let snapshots: Vec<PathBuf> = std::fs::read_dir(images.join("snapshots"))
        .expect("read snapshots")
        .map(|e| e.expect("dirent").path())
        .collect();
    assert!(snapshots.is_empty(), "{name}: left {snapshots:?}");
    let ingest: Vec<PathBuf> = std::fs::read_dir(images.join("ingest"))
        .expect("read ingest")
        .map(|e| e.expect("dirent").path())
        .collect();
    assert!(ingest.is_empty(), "{name}: left {ingest:?}");
    let status_resp = c
        .image_status(ImageStatusRequest {
            image: Some(ImageSpec {
                image,
                ..Default::default()
            }),
            verbose: false,
        })
        .await
        .expect("ImageStatus after the bomb")
        .into_inner();
    assert!(status_resp.image.is_none(), "{name}: recorded anyway");
    // Still serving.
    let listed = c
        .list_images(ListImagesRequest::default())
        .await
        .expect("ListImages after the bomb")
        .into_inner();
    assert!(listed.images.is_empty(), "{name}: {:?}", listed.images);
    assert!(
        hwm_kib < MAX_DAEMON_HWM_KIB,
        "{name}: daemon peaked at {} MiB",
        hwm_kib >> 10
    );
    Outcome {
        status,
        layer: digest,
        hwm_kib,
    }
}

/// A `kB` field of /proc/<pid>/status.
fn proc_status_kib(pid: u32, field: &str) -> u64 {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("read daemon status");
    text.lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or_else(|| panic!("no {field} in /proc/{pid}/status"))
}

fn assert_names(o: &Outcome, key: &str) {
    assert_eq!(o.status.code(), Code::ResourceExhausted, "{:?}", o.status);
    let msg = o.status.message();
    assert!(msg.contains(key), "message does not name {key}: {msg}");
    assert!(
        msg.contains(&o.layer),
        "message does not name the layer: {msg}"
    );
}

fn daemon_config(reg: &Registry, registry_keys: &str) -> String {
    test_config(&format!(
        "[registry]\n{registry_keys}\n[registry.hosts.\"{}\"]\nplain-http = true\n",
        reg.addr()
    ))
}

/// Two million directory entries, all for the same directory: 1 GiB of
/// headers in about 1 MiB of gzip, and no disk cost per entry, so only the
/// entry limit (default, one million) stops it. Every directory entry is
/// something the unpack must remember until the end (its mode and mtime),
/// which is what the memory bound checks.
#[tokio::test]
async fn millions_of_empty_entries() {
    let work = tempfile::tempdir().expect("tempdir");
    let layer = work.path().join("entries.tar.gz");
    let mut w = LayerWriter::create(&layer);
    let block = header("d/", tar::EntryType::Directory, 0, 0o755).repeat(2048);
    w.repeat(&block, 1024);
    let (diff_id, raw) = w.finish();
    assert_eq!(raw, (2 << 20) * 512 + 1024);

    let reg = Registry::start();
    let d = Daemon::start_with_config(&daemon_config(&reg, ""))
        .await
        .expect("daemon");
    let o = pull_bomb(&reg, &d, "entries", &layer, &diff_id).await;
    assert_names(&o, "registry.max-layer-entries");
    assert!(
        o.status.message().contains("1000000"),
        "{}",
        o.status.message()
    );
    eprintln!("entries: VmHWM {} KiB", o.hwm_kib);
}

/// A gzip bomb: 64 files of 16 MiB of zeros, 1 GiB in about 1 MiB of
/// gzip, against a 64 MiB `registry.max-layer-bytes`.
#[tokio::test]
async fn gzip_bomb() {
    let work = tempfile::tempdir().expect("tempdir");
    let layer = work.path().join("zeros.tar.gz");
    let mut w = LayerWriter::create(&layer);
    let zeros = vec![0u8; 1 << 20];
    for i in 0..64 {
        w.repeat(
            &header(&format!("z{i}"), tar::EntryType::Regular, 16 << 20, 0o644),
            1,
        );
        w.repeat(&zeros, 16);
    }
    let (diff_id, raw) = w.finish();
    assert!(raw > 1 << 30);
    assert!(std::fs::metadata(&layer).expect("stat").len() < 4 << 20);

    let reg = Registry::start();
    let d = Daemon::start_with_config(&daemon_config(&reg, "max-layer-bytes = 67108864"))
        .await
        .expect("daemon");
    let o = pull_bomb(&reg, &d, "zeros", &layer, &diff_id).await;
    assert_names(&o, "registry.max-layer-bytes");
    assert!(
        o.status.message().contains("67108864"),
        "{}",
        o.status.message()
    );
}

/// A chain of 300 nested directories, each listed, against the default
/// `registry.max-path-depth` of 256.
#[tokio::test]
async fn deep_path_chain() {
    let work = tempfile::tempdir().expect("tempdir");
    let tar_path = work.path().join("deep.tar");
    {
        let mut b = tar::Builder::new(File::create(&tar_path).expect("create tar"));
        let mut path = String::new();
        for _ in 0..300 {
            path.push_str("a/");
            let mut h = tar::Header::new_gnu();
            h.set_entry_type(tar::EntryType::Directory);
            h.set_size(0);
            h.set_mode(0o755);
            h.set_uid(0);
            h.set_gid(0);
            h.set_mtime(1_600_000_000);
            // GNU long names carry what a header's 100 bytes cannot.
            b.append_data(&mut h, &path, std::io::empty())
                .expect("append");
        }
        b.finish().expect("finish tar");
    }
    let raw = std::fs::read(&tar_path).expect("read tar");
    let layer = work.path().join("deep.tar.gz");
    std::fs::write(&layer, gzip(&raw)).expect("write layer");
    let hex: String = ring::digest::digest(&ring::digest::SHA256, &raw)
        .as_ref()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();

    let reg = Registry::start();
    let d = Daemon::start_with_config(&daemon_config(&reg, ""))
        .await
        .expect("daemon");
    let o = pull_bomb(&reg, &d, "deep", &layer, &format!("sha256:{hex}")).await;
    assert_names(&o, "registry.max-path-depth");
    assert!(o.status.message().contains("256"), "{}", o.status.message());
}
