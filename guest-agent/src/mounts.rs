//! Reading `/proc/self/mountinfo`.

use std::fs;

use anyhow::{Context, Result};

/// One line of mountinfo, the fields the agent needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MountEntry {
    pub mount_point: String,
    pub fstype: String,
    pub source: String,
}

/// The current mount table; empty if /proc is not mounted yet.
pub fn current() -> Result<Vec<MountEntry>> {
    let path = "/proc/self/mountinfo";
    match fs::read_to_string(path) {
        Ok(text) => Ok(parse_mountinfo(&text)),
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => Ok(Vec::new()),
        Err(err) => Err(err).with_context(|| format!("cannot read {path}")),
    }
}

/// Parses mountinfo (proc(5)): `id parent major:minor root mount_point
/// options [optional fields...] - fstype source super_options`. Malformed
/// lines are skipped.
pub fn parse_mountinfo(text: &str) -> Vec<MountEntry> {
    text.lines()
        .filter_map(|line| {
            let (head, tail) = line.split_once(" - ")?;
            let mount_point = head.split(' ').nth(4)?;
            let mut tail = tail.split(' ');
            let fstype = tail.next()?;
            let source = tail.next()?;
            Some(MountEntry {
                mount_point: unescape(mount_point),
                fstype: unescape(fstype),
                source: unescape(source),
            })
        })
        .collect()
}

/// Undoes the kernel's octal escapes (`\040` for a space, etc.).
fn unescape(field: &str) -> String {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'\\'
            && i + 3 < bytes.len()
            && let Some(byte) = octal(&bytes[i + 1..i + 4])
        {
            out.push(byte);
            i += 4;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn octal(digits: &[u8]) -> Option<u8> {
    let mut value: u32 = 0;
    for &d in digits {
        if !(b'0'..=b'7').contains(&d) {
            return None;
        }
        value = value * 8 + u32::from(d - b'0');
    }
    u8::try_from(value).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    const MOUNTINFO: &str = "\
22 1 0:21 / /proc rw,nosuid,nodev,noexec - proc proc rw
23 1 0:5 / /dev rw,nosuid shared:2 - devtmpfs devtmpfs rw,size=4k,mode=755
30 25 0:40 / /run/vmpod/share rw,nosuid,nodev - virtiofs vmpod rw
31 25 0:41 / /mnt/a\\040b rw - tmpfs tmp\\134fs rw
garbage
";

    #[test]
    fn parses_entries() {
        let m = parse_mountinfo(MOUNTINFO);
        assert_eq!(m.len(), 4);
        assert_eq!(m[0].mount_point, "/proc");
        assert_eq!(m[1].fstype, "devtmpfs");
        assert_eq!(
            m[2],
            MountEntry {
                mount_point: "/run/vmpod/share".into(),
                fstype: "virtiofs".into(),
                source: "vmpod".into(),
            }
        );
        assert_eq!(m[3].mount_point, "/mnt/a b");
        assert_eq!(m[3].source, "tmp\\fs");
    }

    #[test]
    fn unescape_edge_cases() {
        assert_eq!(unescape("a\\"), "a\\");
        assert_eq!(unescape("a\\04"), "a\\04");
        assert_eq!(unescape("a\\999"), "a\\999");
        assert_eq!(unescape("\\011x"), "\tx");
    }

    #[test]
    fn this_host_has_a_root() {
        assert!(current().unwrap().iter().any(|m| m.mount_point == "/"));
    }
}
