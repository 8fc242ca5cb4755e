//! Image references as users type them, normalized the way Docker and
//! containerd do (`busybox` → `docker.io/library/busybox:latest`), so that
//! the names kubelet sends and the names ListImages reports agree.

use oci_client::Reference;

/// Longest reference accepted; a name is at most 255 and a digest 71 bytes.
pub const MAX_REFERENCE_LEN: usize = 4096;

/// Parses and normalizes a reference. A reference with neither tag nor
/// digest gets `latest`.
pub fn parse(image: &str) -> Result<Reference, String> {
    if image.is_empty() {
        return Err("image reference is empty".into());
    }
    if image.len() > MAX_REFERENCE_LEN {
        return Err(format!(
            "image reference is {} bytes, more than {MAX_REFERENCE_LEN}",
            image.len()
        ));
    }
    let r: Reference = image
        .parse()
        .map_err(|e| format!("invalid image reference {image:?}: {e}"))?;
    // Docker's grammar: repository path components are lowercase.
    if !r
        .repository()
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"._-/".contains(&b))
    {
        return Err(format!(
            "invalid image reference {image:?}: repository {:?} must be lowercase letters, digits, '.', '_', '-' and '/'",
            r.repository()
        ));
    }
    if let Some(d) = r.digest() {
        validate_digest(d).map_err(|e| format!("invalid image reference {image:?}: {e}"))?;
    }
    Ok(r)
}

/// `registry/repository:tag`, or `None` for a digest-only reference.
pub fn tag_name(r: &Reference) -> Option<String> {
    if r.digest().is_some() && r.tag().is_none() {
        return None;
    }
    Some(format!(
        "{}/{}:{}",
        r.registry(),
        r.repository(),
        r.tag().unwrap_or("latest")
    ))
}

/// `registry/repository@digest`.
pub fn digest_name(r: &Reference, digest: &str) -> String {
    format!("{}/{}@{digest}", r.registry(), r.repository())
}

/// Accepts only `sha256:` plus 64 lowercase hex digits: digests from
/// registries and manifests become file names in the store.
pub fn validate_digest(d: &str) -> Result<&str, String> {
    let hex = d
        .strip_prefix("sha256:")
        .ok_or_else(|| format!("digest {d:?} is not sha256"))?;
    if hex.len() != 64
        || !hex
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    {
        return Err(format!("digest {d:?} is not 64 lowercase hex digits"));
    }
    Ok(hex)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn docker_hub_normalization() {
        let r = parse("busybox").unwrap();
        assert_eq!(tag_name(&r).unwrap(), "docker.io/library/busybox:latest");
        let r = parse("user/app:1.0").unwrap();
        assert_eq!(tag_name(&r).unwrap(), "docker.io/user/app:1.0");
        let r = parse("127.0.0.1:5000/busybox:v1").unwrap();
        assert_eq!(tag_name(&r).unwrap(), "127.0.0.1:5000/busybox:v1");
        let d = format!("sha256:{}", "a".repeat(64));
        let r = parse(&format!("quay.io/x/y@{d}")).unwrap();
        assert_eq!(tag_name(&r), None);
        assert_eq!(digest_name(&r, &d), format!("quay.io/x/y@{d}"));
    }

    #[test]
    fn malformed_references() {
        for bad in [
            "",
            "UPPER/case",
            "a b",
            "busybox@sha256:xyz",
            "busybox:",
            ":tag",
            &"a".repeat(5000),
        ] {
            assert!(parse(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn digests_are_strict() {
        assert!(validate_digest(&format!("sha256:{}", "0".repeat(64))).is_ok());
        assert!(validate_digest(&format!("sha256:{}", "A".repeat(64))).is_err());
        assert!(validate_digest("sha256:../../etc/passwd").is_err());
        assert!(validate_digest(&format!("sha512:{}", "0".repeat(128))).is_err());
    }
}
