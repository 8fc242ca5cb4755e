//! `vmpod bench pull`: pulling an image into an empty store, unpack
//! included, next to `skopeo copy docker://… oci:DIR` of the same image in
//! the same run, the two interleaved and taking turns to go first. skopeo
//! only downloads (it fsyncs each blob, and does not unpack); vmpod
//! downloads, verifies the blob digest and the diff_id, unpacks, and makes
//! the snapshot durable before publishing it.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use anyhow::{Context, Result, anyhow, bail};
use vmpod_cri_api::ImageServiceClient;
use vmpod_cri_api::v1::{ImageSpec, ImageStatusRequest, PullImageRequest};

use super::{PrivateDaemon, Samples, connect, print_table};

pub struct Options {
    pub image: String,
    pub runs: usize,
    pub config_file: Option<PathBuf>,
    /// Pass `--src-tls-verify=false` to skopeo (for a plain-HTTP registry).
    pub insecure: bool,
}

pub async fn run(opts: Options) -> Result<()> {
    if opts.runs == 0 {
        bail!("--runs must be at least 1");
    }
    let mut ours = Samples::default();
    let mut skopeo = Samples::default();
    let mut size = 0;
    for i in 0..opts.runs {
        // A fresh daemon and store each run: every byte is downloaded.
        let work = tempfile::Builder::new()
            .prefix("vmpod-bench-pull-")
            .tempdir()?;
        // The two alternate who goes first, so load that comes and goes on
        // the machine, and anything the first pull warms up for the second
        // (the registry's page cache), falls on both alike.
        let (ms, sms) = if i % 2 == 0 {
            let ms = pull_vmpod(&opts, work.path(), &mut size).await?;
            (ms, copy_skopeo(&opts, work.path())?)
        } else {
            let sms = copy_skopeo(&opts, work.path())?;
            (pull_vmpod(&opts, work.path(), &mut size).await?, sms)
        };
        ours.push(ms);
        skopeo.push(sms);
        eprintln!(
            "  run {}/{} ({} first): vmpod {ms:.0} ms, skopeo {sms:.0} ms",
            i + 1,
            opts.runs,
            if i % 2 == 0 { "vmpod" } else { "skopeo" },
        );
    }
    println!();
    print_table(&[
        ("vmpod PullImage (download+verify+unpack)", &ours),
        ("skopeo copy docker:// oci: (download)", &skopeo),
    ]);
    let mib = size as f64 / (1024.0 * 1024.0);
    println!();
    println!(
        "{mib:.1} MiB compressed: vmpod {:.1} MiB/s, skopeo {:.1} MiB/s; ratio vmpod/skopeo time {:.3}",
        mib / (ours.median() / 1e3),
        mib / (skopeo.median() / 1e3),
        ours.median() / skopeo.median()
    );
    Ok(())
}

/// One PullImage into a private daemon's empty store under `work`, timed
/// from the request to the answer (daemon start-up excluded). Sets `size`
/// to the image's size as ImageStatus reports it (config plus compressed
/// layers: the bytes downloaded).
async fn pull_vmpod(opts: &Options, work: &Path, size: &mut u64) -> Result<f64> {
    let (daemon, socket) = PrivateDaemon::start(work, opts.config_file.as_deref())?;
    let channel = connect(&socket).await?;
    let mut images = ImageServiceClient::new(channel);
    let t0 = Instant::now();
    let id = images
        .pull_image(PullImageRequest {
            image: Some(ImageSpec {
                image: opts.image.clone(),
                ..Default::default()
            }),
            ..Default::default()
        })
        .await
        .map_err(|e| anyhow!("PullImage: {}", e.message()))?
        .into_inner()
        .image_ref;
    let ms = t0.elapsed().as_secs_f64() * 1e3;
    let status = images
        .image_status(ImageStatusRequest {
            image: Some(ImageSpec {
                image: id,
                ..Default::default()
            }),
            verbose: false,
        })
        .await
        .map_err(|e| anyhow!("ImageStatus: {}", e.message()))?
        .into_inner();
    *size = status.image.map_or(0, |i| i.size);
    drop(daemon);
    Ok(ms)
}

/// One `skopeo copy docker://IMAGE oci:<work>/skopeo:bench`, timed.
fn copy_skopeo(opts: &Options, work: &Path) -> Result<f64> {
    let dest = work.join("skopeo");
    let t0 = Instant::now();
    let mut cmd = Command::new("skopeo");
    cmd.args(["--insecure-policy", "copy", "--quiet"]);
    if opts.insecure {
        cmd.arg("--src-tls-verify=false");
    }
    let status = cmd
        .arg(format!("docker://{}", opts.image))
        .arg(format!("oci:{}:bench", dest.display()))
        .status()
        .context("running skopeo (apt-get install skopeo)")?;
    if !status.success() {
        bail!("skopeo copy failed: {status}");
    }
    Ok(t0.elapsed().as_secs_f64() * 1e3)
}
