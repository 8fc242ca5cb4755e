//! `vmpod pull`, `vmpod images`, `vmpod rmi`: the daemon does the work (it
//! owns the store); these show it.

use std::collections::HashMap;
use std::path::Path;
use std::time::Instant;

use anyhow::{Context, Result, anyhow};
use indicatif::{MultiProgress, ProgressBar, ProgressStyle};
use tokio_stream::StreamExt;
use vmpod_cri_api::ImageServiceClient;
use vmpod_cri_api::v1::{ImageSpec, ListImagesRequest, RemoveImageRequest};

use crate::admin::v1::PullRequest;
use crate::admin::v1::images_client::ImagesClient;
use crate::admin::v1::pull_event::Event;

async fn channel(socket: &Path) -> Result<tonic::transport::Channel> {
    crate::sandbox::shim::uds_channel(socket.to_path_buf())
        .await
        .with_context(|| {
            format!(
                "cannot reach vmpod serve at {} (is it running?)",
                socket.display()
            )
        })
}

pub async fn pull(socket: &Path, image: &str, creds: Option<(String, String)>) -> Result<()> {
    let mut client = ImagesClient::new(channel(socket).await?);
    let (username, password) = creds.unwrap_or_default();
    let started = Instant::now();
    let mut stream = client
        .pull(PullRequest {
            image: image.to_string(),
            username,
            password,
        })
        .await
        .map_err(|e| anyhow!("{}", e.message()))?
        .into_inner();
    let bars = MultiProgress::new();
    let style = ProgressStyle::with_template(
        "{prefix:.bold} {bar:30.cyan/blue} {bytes:>10}/{total_bytes:<10} {msg}",
    )
    .unwrap_or_else(|_| ProgressStyle::default_bar());
    let mut layers: HashMap<String, ProgressBar> = HashMap::new();
    while let Some(item) = stream.next().await {
        let ev = item.map_err(|e| anyhow!("{}", e.message()))?;
        match ev.event {
            Some(Event::Resolved(r)) => {
                bars.println(format!(
                    "pulling {} ({} layers)",
                    r.reference,
                    r.layers.len()
                ))?;
                for l in r.layers {
                    let bar = bars.add(ProgressBar::new(l.size));
                    bar.set_style(style.clone());
                    bar.set_prefix(short(&l.digest).to_string());
                    bar.set_message("waiting");
                    layers.insert(l.digest, bar);
                }
            }
            Some(Event::Layer(p)) => {
                if let Some(bar) = layers.get(&p.digest) {
                    if p.total > 0 {
                        bar.set_position(p.done);
                    }
                    match p.phase.as_str() {
                        "exists" => bar.finish_with_message("already present"),
                        "done" => bar.finish_with_message("unpacked"),
                        other => bar.set_message(other.to_string()),
                    }
                }
            }
            Some(Event::Done(d)) => {
                for bar in layers.values() {
                    if !bar.is_finished() {
                        bar.finish();
                    }
                }
                let secs = started.elapsed().as_secs_f64();
                println!(
                    "{image}: {} ({}), {:.1} s, {}/s",
                    d.image_id,
                    human(d.size),
                    secs,
                    human((d.size as f64 / secs.max(1e-3)) as u64)
                );
                return Ok(());
            }
            None => {}
        }
    }
    Err(anyhow!("the daemon ended the pull without a result"))
}

pub async fn list(socket: &Path) -> Result<()> {
    let mut client = ImageServiceClient::new(channel(socket).await?);
    let images = client
        .list_images(ListImagesRequest::default())
        .await
        .map_err(|e| anyhow!("{}", e.message()))?
        .into_inner()
        .images;
    println!("{:<60} {:<14} {:>10}", "IMAGE", "IMAGE ID", "SIZE");
    for i in images {
        let names = if i.repo_tags.is_empty() {
            i.repo_digests.clone()
        } else {
            i.repo_tags.clone()
        };
        for (n, name) in names.iter().enumerate() {
            let id = if n == 0 { short(&i.id) } else { "" };
            println!(
                "{name:<60} {id:<14} {:>10}",
                if n == 0 { human(i.size) } else { String::new() }
            );
        }
    }
    Ok(())
}

pub async fn remove(socket: &Path, images: &[String]) -> Result<()> {
    let mut client = ImageServiceClient::new(channel(socket).await?);
    for image in images {
        client
            .remove_image(RemoveImageRequest {
                image: Some(ImageSpec {
                    image: image.clone(),
                    ..Default::default()
                }),
            })
            .await
            .map_err(|e| anyhow!("{image}: {}", e.message()))?;
        println!("removed {image}");
    }
    Ok(())
}

fn short(digest: &str) -> &str {
    let hex = digest.strip_prefix("sha256:").unwrap_or(digest);
    &hex[..hex.len().min(12)]
}

fn human(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = bytes as f64;
    let mut u = 0;
    while v >= 1024.0 && u + 1 < UNITS.len() {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{bytes} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}
