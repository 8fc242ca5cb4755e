//! `vmpod bench pull`: pulling an image into an empty store, unpack
//! included, next to `skopeo copy docker://… oci:DIR` of the same image in
//! the same run (skopeo only downloads; it does not unpack).

use std::path::PathBuf;
use std::process::Command;
use std::time::Instant;

use anyhow::{Context, Result, anyhow, bail};
use vmpod_cri_api::ImageServiceClient;
use vmpod_cri_api::v1::{ImageSpec, PullImageRequest};

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
        let (daemon, socket) = PrivateDaemon::start(work.path(), opts.config_file.as_deref())?;
        let channel = connect(&socket).await?;
        let mut images = ImageServiceClient::new(channel);
        let t0 = Instant::now();
        images
            .pull_image(PullImageRequest {
                image: Some(ImageSpec {
                    image: opts.image.clone(),
                    ..Default::default()
                }),
                ..Default::default()
            })
            .await
            .map_err(|e| anyhow!("PullImage: {}", e.message()))?;
        let ms = t0.elapsed().as_secs_f64() * 1e3;
        ours.push(ms);
        size = dir_size(&work.path().join("state/images/blobs"));
        drop(daemon);

        let dest = work.path().join("skopeo");
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
        let sms = t0.elapsed().as_secs_f64() * 1e3;
        skopeo.push(sms);
        eprintln!(
            "  run {}/{}: vmpod {ms:.0} ms, skopeo {sms:.0} ms",
            i + 1,
            opts.runs
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

fn dir_size(dir: &std::path::Path) -> u64 {
    std::fs::read_dir(dir)
        .map(|r| {
            r.flatten()
                .map(|e| {
                    let p = e.path();
                    if p.is_dir() {
                        dir_size(&p)
                    } else {
                        e.metadata().map_or(0, |m| m.len())
                    }
                })
                .sum()
        })
        .unwrap_or(0)
}
