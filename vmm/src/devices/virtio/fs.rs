//! virtio-fs (virtio 1.x section 5.11) through a vhost-user backend: the
//! guest's FUSE requests go from its queues straight to `virtiofsd`, which
//! maps guest memory and is kicked by KVM's ioeventfds; the VMM only
//! negotiates, hands over memory and rings ([`super::vhost_user`]), relays
//! the backend's completions to the guest's interrupt, and answers the
//! config space (tag and number of request queues) itself.
//!
//! `vmpod-vmm --fs socket=PATH,tag=TAG` attaches one; the socket is
//! connected and negotiated when the device is created, so a missing or
//! dead daemon fails before any guest runs. Queues: hiprio (0) and one
//! request queue (1). No DAX window (that needs the backend request channel
//! and a shared memory region), no notification queue.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Result, bail};

use super::vhost_user::{Backend, DEFAULT_TIMEOUT, RING_FEATURES};
use super::{Activation, VirtioDevice};

/// virtio device ID of a file system device.
pub const DEVICE_ID: u32 = 26;
/// `tag` in `struct virtio_fs_config`: UTF-8, NUL-padded, not
/// NUL-terminated when full.
pub const TAG_LEN: usize = 36;
/// One request queue (virtiofsd serves exactly one).
pub const REQUEST_QUEUES: u32 = 1;
/// hiprio, then the request queue. virtiofsd accepts up to 32768.
const QUEUES: [u16; 2] = [1024, 1024];
/// `struct virtio_fs_config { u8 tag[36]; le32 num_request_queues; }`.
const CONFIG_LEN: usize = TAG_LEN + 4;

/// A file system to attach: `vmpod-vmm --fs socket=PATH,tag=TAG`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FsConfig {
    /// The vhost-user socket the backend (virtiofsd) listens on.
    pub socket: PathBuf,
    /// What the guest mounts: `mount -t virtiofs TAG /mnt`.
    pub tag: String,
}

impl std::str::FromStr for FsConfig {
    type Err = String;

    /// `socket=PATH,tag=TAG`, in either order; both required, each once.
    /// A path holding a comma cannot be given (use a symlink).
    fn from_str(s: &str) -> Result<Self, String> {
        let (mut socket, mut tag) = (None, None);
        for part in s.split(',') {
            let Some((key, value)) = part.split_once('=') else {
                return Err(format!(
                    "{part:?} is not KEY=VALUE (expected socket=PATH,tag=TAG)"
                ));
            };
            let slot = match key {
                "socket" => &mut socket,
                "tag" => &mut tag,
                _ => return Err(format!("unknown fs option {key:?} (socket, tag)")),
            };
            if slot.replace(value).is_some() {
                return Err(format!("fs option {key:?} given twice"));
            }
        }
        let socket = match socket {
            Some("") => return Err("fs socket= is empty".to_owned()),
            Some(p) => PathBuf::from(p),
            None => return Err(format!("{s:?} has no socket=PATH")),
        };
        let tag = tag.ok_or_else(|| format!("{s:?} has no tag=TAG"))?;
        check_tag(tag)?;
        Ok(FsConfig {
            socket,
            tag: tag.to_owned(),
        })
    }
}

/// A tag is 1..=36 bytes of UTF-8 without NUL (the guest reads it up to the
/// first NUL).
pub fn check_tag(tag: &str) -> Result<(), String> {
    if tag.is_empty() {
        return Err("fs tag= is empty".to_owned());
    }
    if tag.len() > TAG_LEN {
        return Err(format!(
            "fs tag {tag:?} is {} bytes; at most {TAG_LEN} fit",
            tag.len()
        ));
    }
    if tag.contains('\0') {
        return Err(format!("fs tag {tag:?} contains a NUL byte"));
    }
    Ok(())
}

/// The virtio-fs device as the transport sees it.
pub struct FsDevice {
    backend: Backend,
    features: u64,
    config: [u8; CONFIG_LEN],
}

impl FsDevice {
    /// Connects to the backend and negotiates (see [`Backend::connect`]).
    pub fn connect(config: &FsConfig) -> Result<FsDevice> {
        Self::connect_with_timeout(config, DEFAULT_TIMEOUT)
    }

    /// As [`Self::connect`], with `timeout` bounding every exchange with the
    /// backend (tests use a short one).
    pub fn connect_with_timeout(config: &FsConfig, timeout: Duration) -> Result<FsDevice> {
        if let Err(e) = check_tag(&config.tag) {
            bail!("{e}");
        }
        let backend = Backend::connect(&config.socket, QUEUES.len(), timeout)?;
        let mut bytes = [0u8; CONFIG_LEN];
        bytes[..config.tag.len()].copy_from_slice(config.tag.as_bytes());
        bytes[TAG_LEN..].copy_from_slice(&REQUEST_QUEUES.to_le_bytes());
        Ok(FsDevice {
            // No device-specific features: VIRTIO_FS_F_NOTIFICATION needs a
            // queue virtiofsd does not have.
            features: backend.features() & RING_FEATURES,
            backend,
            config: bytes,
        })
    }
}

impl VirtioDevice for FsDevice {
    fn device_type(&self) -> u32 {
        DEVICE_ID
    }

    fn features(&self) -> u64 {
        self.features
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &QUEUES
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        super::read_config_space(&self.config, offset, data);
    }

    /// The config space is read-only.
    fn write_config(&mut self, _offset: u64, _data: &[u8]) {}

    fn activate(&mut self, activation: Activation) -> Result<()> {
        let Activation {
            memory,
            acked_features,
            queues,
            notifiers,
            interrupt,
        } = activation;
        // The backend gets its own copies of the kick fds; ours close when
        // `notifiers` goes out of scope.
        self.backend
            .start(&memory, acked_features, &queues, &notifiers, interrupt)
    }

    fn reset(&mut self) {
        self.backend.stop();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_parses_and_names_what_is_wrong() {
        let c: FsConfig = "socket=/run/vfs.sock,tag=vmpod".parse().expect("parse");
        assert_eq!(c.socket, PathBuf::from("/run/vfs.sock"));
        assert_eq!(c.tag, "vmpod");
        let c: FsConfig = "tag=t,socket=s".parse().expect("either order");
        assert_eq!((c.socket, c.tag), (PathBuf::from("s"), "t".to_owned()));
        for (bad, says) in [
            ("socket=/s", "no tag=TAG"),
            ("tag=x", "no socket=PATH"),
            ("socket=,tag=x", "socket= is empty"),
            ("socket=/s,tag=", "tag= is empty"),
            ("socket=/s,tag=x,cache=never", "unknown fs option \"cache\""),
            ("socket=/s,tag=x,tag=y", "\"tag\" given twice"),
            ("/s", "\"/s\" is not KEY=VALUE"),
            (
                "socket=/s,tag=0123456789012345678901234567890123456",
                "37 bytes; at most 36",
            ),
        ] {
            let e = bad.parse::<FsConfig>().expect_err(bad);
            assert!(e.contains(says), "{bad}: {e}");
        }
    }
}
