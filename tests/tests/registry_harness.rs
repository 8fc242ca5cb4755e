//! Tests of the test harness itself: the loopback registry, the fixtures and
//! the fault-injecting proxy. Nothing of vmpod runs here.

use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};
use vmpod_tests::proxy::{FaultyProxy, dead_addr};
use vmpod_tests::registry::{
    MANIFEST_ACCEPT, Registry, basic_auth, fixture_digest, fixture_digests, fixture_json,
    fixtures_dir, http_request,
};

const T: Duration = Duration::from_secs(10);

fn sha256(data: &[u8]) -> String {
    let hex: String = Sha256::digest(data)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    format!("sha256:{hex}")
}

/// The digest of the (only) layer of the busybox fixture.
fn busybox_layer() -> String {
    let manifest = fixture_json("busybox", &fixture_digest("busybox"));
    manifest["layers"][0]["digest"]
        .as_str()
        .expect("layer digest")
        .to_string()
}

#[test]
fn registry_serves_pushed_fixtures() {
    let reg = Registry::start();
    let fx = fixtures_dir();
    reg.push_fixture(fx, "busybox", "busybox:latest");
    reg.push_fixture(fx, "multiarch", "test/multiarch:v1");

    let catalog = reg
        .request("GET", "/v2/_catalog", &[])
        .expect("GET /v2/_catalog");
    assert_eq!(catalog.status, 200);
    let repos = catalog.json().expect("catalog JSON")["repositories"].clone();
    assert_eq!(repos, serde_json::json!(["busybox", "test/multiarch"]));

    // --preserve-digests: the registry serves the fixtures' own digests.
    let busybox = reg.manifest_digest("busybox", "latest");
    assert_eq!(busybox, fixture_digest("busybox"));
    let multiarch = reg.manifest_digest("test/multiarch", "v1");
    assert_eq!(multiarch, fixture_digest("multiarch"));
    assert_eq!(reg.manifest_digest("busybox", &busybox), busybox);

    let index = reg
        .request(
            "GET",
            &format!("/v2/test/multiarch/manifests/{multiarch}"),
            &[("Accept", MANIFEST_ACCEPT)],
        )
        .expect("GET index");
    assert_eq!(index.status, 200);
    assert_eq!(
        index.header("content-type"),
        Some("application/vnd.oci.image.index.v1+json")
    );
    assert_eq!(sha256(&index.body), multiarch);
    let archs: Vec<_> = index.json().expect("index JSON")["manifests"]
        .as_array()
        .expect("manifests")
        .iter()
        .map(|m| {
            m["platform"]["architecture"]
                .as_str()
                .unwrap_or("")
                .to_string()
        })
        .collect();
    assert_eq!(archs, ["amd64", "arm64"]);

    // The push only HEADs blobs; a GET is counted once it happens.
    let layer = busybox_layer();
    assert_eq!(reg.blob_get_count(&layer), 0);
    let blob = reg
        .request("GET", &format!("/v2/busybox/blobs/{layer}"), &[])
        .expect("GET blob");
    assert_eq!(blob.status, 200);
    assert_eq!(sha256(&blob.body), layer);
    reg.request("HEAD", &format!("/v2/busybox/blobs/{layer}"), &[])
        .expect("HEAD blob");
    assert_eq!(reg.blob_get_count(&layer), 1);
}

#[test]
fn every_fixture_pushes_with_its_digest() {
    let reg = Registry::start();
    for (name, digest) in fixture_digests() {
        reg.push_fixture(fixtures_dir(), &name, &format!("{name}:latest"));
        assert_eq!(reg.manifest_digest(&name, "latest"), digest, "{name}");
    }
}

#[test]
fn htpasswd_registry_demands_basic_auth() {
    let reg = Registry::start_with_htpasswd("tester", "s3cret");
    let anon = http_request(reg.addr(), "GET", "/v2/", &[], T).expect("GET /v2/");
    assert_eq!(anon.status, 401);
    let challenge = anon.header("www-authenticate").expect("challenge");
    assert!(
        challenge.starts_with("Basic realm=\"vmpod-test\""),
        "{challenge}"
    );

    let wrong = basic_auth("tester", "wrong");
    let denied = http_request(reg.addr(), "GET", "/v2/", &[("Authorization", &wrong)], T)
        .expect("GET /v2/ with wrong password");
    assert_eq!(denied.status, 401);

    let right = basic_auth("tester", "s3cret");
    let ok = http_request(reg.addr(), "GET", "/v2/", &[("Authorization", &right)], T)
        .expect("GET /v2/ with password");
    assert_eq!(ok.status, 200);

    // push_fixture and manifest_digest use the credentials.
    reg.push_fixture(fixtures_dir(), "busybox", "busybox:latest");
    assert_eq!(
        reg.manifest_digest("busybox", "latest"),
        fixture_digest("busybox")
    );
    let anon_manifest = http_request(
        reg.addr(),
        "GET",
        "/v2/busybox/manifests/latest",
        &[("Accept", MANIFEST_ACCEPT)],
        T,
    )
    .expect("anonymous manifest GET");
    assert_eq!(anon_manifest.status, 401);
}

#[test]
fn proxy_forwards_corrupts_heals_fails_and_hangs() {
    let reg = Registry::start();
    reg.push_fixture(fixtures_dir(), "busybox", "busybox:latest");
    let proxy = FaultyProxy::start(reg.addr());
    let get = |path: &str, timeout| {
        http_request(
            proxy.addr(),
            "GET",
            path,
            &[("Accept", MANIFEST_ACCEPT)],
            timeout,
        )
    };

    let manifest = get("/v2/busybox/manifests/latest", T).expect("manifest via proxy");
    assert_eq!(manifest.status, 200);
    assert_eq!(sha256(&manifest.body), fixture_digest("busybox"));
    assert_eq!(
        manifest.header("docker-content-digest"),
        Some(fixture_digest("busybox").as_str())
    );

    let layer = busybox_layer();
    let blob_path = format!("/v2/busybox/blobs/{layer}");
    let good = get(&blob_path, T).expect("blob via proxy");
    assert_eq!(sha256(&good.body), layer);

    proxy.corrupt_blob(&layer);
    let bad = get(&blob_path, T).expect("corrupted blob via proxy");
    assert_eq!(bad.status, 200);
    assert_eq!(bad.body.len(), good.body.len());
    assert_eq!(
        bad.header("content-length"),
        Some(good.body.len().to_string().as_str())
    );
    assert_ne!(sha256(&bad.body), layer);
    assert_eq!(proxy.corrupted(), 1);
    // Only the named blob is corrupted.
    let manifest = get("/v2/busybox/manifests/latest", T).expect("manifest");
    assert_eq!(sha256(&manifest.body), fixture_digest("busybox"));

    proxy.heal();
    let healed = get(&blob_path, T).expect("healed blob");
    assert_eq!(sha256(&healed.body), layer);
    assert_eq!(reg.blob_get_count(&layer), 3);

    proxy.fail_all(503);
    let failed = get("/v2/", T).expect("GET /v2/ while failing");
    assert_eq!(failed.status, 503);
    proxy.heal();

    proxy.hang(true);
    let start = Instant::now();
    let err = get("/v2/", Duration::from_secs(1)).expect_err("hung request must time out");
    let waited = start.elapsed();
    assert!(err.to_string().contains("timed out"), "{err:#}");
    assert!(waited >= Duration::from_secs(1) && waited < Duration::from_secs(3));
    proxy.hang(false);
    assert_eq!(get("/v2/", T).expect("after hang").status, 200);

    // manifest, blob, corrupt blob, manifest, healed blob, 503, hung, after.
    assert_eq!(proxy.requests(), 8);
}

#[test]
fn dead_addr_refuses_connections() {
    let err = http_request(&dead_addr(), "GET", "/v2/", &[], T).expect_err("nothing listens");
    assert!(format!("{err:#}").contains("connect"), "{err:#}");
}
