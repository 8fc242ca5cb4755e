//! Guards wire compatibility with upstream CRI `runtime.v1`.
//!
//! `wire-fingerprint.txt` lists every service method, message field (number,
//! type, label) and enum value of the upstream Kubernetes 1.34 proto. It was
//! produced by this test from the upstream file (`VMPOD_CRI_PROTO=<upstream
//! api.proto> VMPOD_BLESS=1`). The test recomputes it from our proto, so any
//! edit that changes the wire format, rather than just comments, fails here.

use std::fmt::Write;
use std::path::{Path, PathBuf};

use prost_types::FileDescriptorSet;

fn fingerprint(proto: &Path) -> String {
    let dir = proto
        .parent()
        .and_then(Path::parent)
        .and_then(Path::parent)
        .unwrap();
    let rel = proto.strip_prefix(dir).unwrap();
    let fds: FileDescriptorSet = protox::compile([rel], [dir]).expect("proto compiles");
    let mut out = String::new();
    for file in &fds.file {
        writeln!(out, "package {}", file.package()).unwrap();
        for s in &file.service {
            for m in &s.method {
                writeln!(
                    out,
                    "rpc {}.{}({}{}) -> {}{}",
                    s.name(),
                    m.name(),
                    if m.client_streaming() { "stream " } else { "" },
                    m.input_type(),
                    if m.server_streaming() { "stream " } else { "" },
                    m.output_type()
                )
                .unwrap();
            }
        }
        let mut stack: Vec<(String, &prost_types::DescriptorProto)> = file
            .message_type
            .iter()
            .map(|m| (m.name().to_string(), m))
            .collect();
        while let Some((name, m)) = stack.pop() {
            for f in &m.field {
                writeln!(
                    out,
                    "field {name}.{} = {} {:?} {:?} {}",
                    f.name(),
                    f.number(),
                    f.label(),
                    f.r#type(),
                    f.type_name()
                )
                .unwrap();
            }
            for nested in &m.nested_type {
                stack.push((format!("{name}.{}", nested.name()), nested));
            }
            for e in &m.enum_type {
                for v in &e.value {
                    writeln!(
                        out,
                        "enum {name}.{}.{} = {}",
                        e.name(),
                        v.name(),
                        v.number()
                    )
                    .unwrap();
                }
            }
        }
        for e in &file.enum_type {
            for v in &e.value {
                writeln!(out, "enum {}.{} = {}", e.name(), v.name(), v.number()).unwrap();
            }
        }
    }
    let mut lines: Vec<&str> = out.lines().collect();
    lines.sort_unstable();
    lines.join("\n") + "\n"
}

#[test]
fn proto_is_wire_identical_to_upstream() {
    let manifest = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let expected_path = manifest.join("tests/wire-fingerprint.txt");
    let proto = std::env::var_os("VMPOD_CRI_PROTO")
        .map(PathBuf::from)
        .unwrap_or_else(|| manifest.join("proto/runtime/v1/api.proto"));
    let actual = fingerprint(&proto);
    if std::env::var_os("VMPOD_BLESS").is_some() {
        std::fs::write(&expected_path, &actual).unwrap();
        return;
    }
    let expected = std::fs::read_to_string(&expected_path).unwrap();
    let missing: Vec<&str> = expected.lines().filter(|l| !actual.contains(l)).collect();
    let extra: Vec<&str> = actual.lines().filter(|l| !expected.contains(l)).collect();
    assert!(
        missing.is_empty() && extra.is_empty(),
        "CRI proto differs from upstream on the wire:\nmissing: {missing:#?}\nextra: {extra:#?}"
    );
}
