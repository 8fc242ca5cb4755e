//! Facts about the guest kernel and initramfs the pods boot.

use std::io::Read;
use std::path::Path;

/// Upper bound on what we scan of a kernel image for its version banner; a
/// vmlinux with debug info can be hundreds of MiB, ours is a few.
const MAX_SCAN: u64 = 256 << 20;

/// Reads the `Linux version ...` banner compiled into an uncompressed vmlinux,
/// so status reports the kernel that will really boot rather than a label
/// that might be stale.
pub fn kernel_version(path: &Path) -> Result<String, String> {
    let file = std::fs::File::open(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let mut data = Vec::new();
    file.take(MAX_SCAN)
        .read_to_end(&mut data)
        .map_err(|e| format!("{}: {e}", path.display()))?;
    find_banner(&data).ok_or_else(|| {
        format!(
            "{}: no \"Linux version\" banner found; is it an uncompressed vmlinux?",
            path.display()
        )
    })
}

fn find_banner(data: &[u8]) -> Option<String> {
    const NEEDLE: &[u8] = b"Linux version ";
    let mut from = 0;
    while let Some(pos) = data[from..]
        .windows(NEEDLE.len())
        .position(|w| w == NEEDLE)
        .map(|p| p + from)
    {
        let rest = &data[pos + NEEDLE.len()..];
        let end = rest
            .iter()
            .position(|&b| b == 0 || b == b'\n')
            .unwrap_or(rest.len())
            .min(256);
        let candidate = String::from_utf8_lossy(&rest[..end]);
        // The banner proper starts with a release like "6.1.0"; format
        // strings such as "Linux version %s" are skipped.
        if candidate.starts_with(|c: char| c.is_ascii_digit()) {
            let release = candidate.split_whitespace().next().unwrap_or_default();
            return Some(release.to_string());
        }
        from = pos + 1;
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_release_and_skips_format_strings() {
        let mut data = b"\x00Linux version %s\x00junk".to_vec();
        data.extend_from_slice(b"Linux version 6.1.158-vmpod (vmpod@build) #1 SMP\n\x00");
        assert_eq!(find_banner(&data).as_deref(), Some("6.1.158-vmpod"));
    }

    #[test]
    fn no_banner() {
        assert_eq!(find_banner(b"\x7fELF nothing here"), None);
    }
}
