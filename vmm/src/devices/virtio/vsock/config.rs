//! What a vsock device is configured with (`--vsock cid=N,uds=PATH`) and
//! the CIDs it deals in. Both the device and its worker ([`super::muxer`])
//! need these, so they sit below both.

use std::path::PathBuf;

/// The host's CID, as the guest addresses it.
pub const HOST_CID: u64 = 2;
/// CIDs 0-2 are reserved, and the config field is 64 bits but only 32 are
/// used by Linux (`VMADDR_CID_ANY` is u32::MAX).
pub(super) const MIN_GUEST_CID: u64 = 3;
pub(super) const MAX_GUEST_CID: u64 = u32::MAX as u64 - 1;

/// `vmpod-vmm --vsock cid=N,uds=PATH`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VsockConfig {
    pub guest_cid: u64,
    /// Host end: the unix socket the device listens on; guest-initiated
    /// connections to port P go to `<uds>_P`.
    pub uds: PathBuf,
}

impl std::str::FromStr for VsockConfig {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let (mut cid, mut uds) = (None, None);
        for part in s.split(',') {
            match part.split_once('=') {
                Some(("cid", v)) => {
                    let n: u64 = v
                        .parse()
                        .map_err(|_| format!("vsock cid {v:?} is not a number"))?;
                    if !(MIN_GUEST_CID..=MAX_GUEST_CID).contains(&n) {
                        return Err(format!(
                            "vsock cid {n} is reserved or too large (use {MIN_GUEST_CID}..={MAX_GUEST_CID})"
                        ));
                    }
                    cid = Some(n);
                }
                Some(("uds", v)) if !v.is_empty() => uds = Some(PathBuf::from(v)),
                _ => return Err(format!("unknown vsock option {part:?} (cid=N,uds=PATH)")),
            }
        }
        Ok(VsockConfig {
            guest_cid: cid.ok_or("vsock needs cid=N")?,
            uds: uds.ok_or("vsock needs uds=PATH")?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_parsing_names_the_bad_part() {
        let c: VsockConfig = "cid=3,uds=/run/v.sock".parse().unwrap();
        assert_eq!(c.guest_cid, 3);
        assert_eq!(c.uds, PathBuf::from("/run/v.sock"));
        let err = |s: &str| s.parse::<VsockConfig>().unwrap_err();
        assert!(
            err("cid=2,uds=/x").contains("reserved"),
            "{}",
            err("cid=2,uds=/x")
        );
        assert!(err("cid=x,uds=/x").contains("\"x\""));
        assert!(err("uds=/x").contains("cid=N"));
        assert!(err("cid=3").contains("uds=PATH"));
        assert!(err("cid=3,uds=/x,port=1").contains("\"port=1\""));
    }
}
