//! Ethernet frames for the network test guests, and the protocol they speak
//! with `vmm/tests/vmm_net.rs` over the VMM's virtio-net device:
//!
//! - the guest sends [`GUEST_FRAMES`] broadcast frames of type
//!   [`TYPE_GUEST`] with payloads `vmpod-net 0`, `vmpod-net 1`, ... and a
//!   last large one ([`big_payload`]);
//! - the host sends frames of type [`TYPE_HOST`] to the guest's MAC; the
//!   guest answers each with a frame of type [`TYPE_ECHO`] back to the
//!   sender carrying the payload reversed, and stops after the payload
//!   [`BYE`].

use alloc::vec::Vec;
use core::fmt;

/// IEEE 802 local experimental EtherTypes.
pub const TYPE_GUEST: u16 = 0x88b5;
pub const TYPE_HOST: u16 = 0x88b6;
pub const TYPE_ECHO: u16 = 0x88b7;
pub const BROADCAST: [u8; 6] = [0xff; 6];
pub const BYE: &[u8] = b"bye";
/// Small frames, then the large one.
pub const GUEST_FRAMES: usize = 4;
/// The large frame fills a 1500-byte MTU.
pub const BIG: usize = 1500;
pub const HEADER: usize = 14;

pub fn frame(dst: [u8; 6], src: [u8; 6], ethertype: u16, payload: &[u8]) -> Vec<u8> {
    let mut f = Vec::with_capacity(HEADER + payload.len());
    f.extend_from_slice(&dst);
    f.extend_from_slice(&src);
    f.extend_from_slice(&ethertype.to_be_bytes());
    f.extend_from_slice(payload);
    f
}

/// A parsed frame: destination, source, EtherType, payload.
pub type Parsed<'a> = ([u8; 6], [u8; 6], u16, &'a [u8]);

/// The parts of a frame of at least a header.
pub fn parse(f: &[u8]) -> Option<Parsed<'_>> {
    if f.len() < HEADER {
        return None;
    }
    let mut dst = [0u8; 6];
    let mut src = [0u8; 6];
    dst.copy_from_slice(&f[..6]);
    src.copy_from_slice(&f[6..12]);
    Some((dst, src, u16::from_be_bytes([f[12], f[13]]), &f[HEADER..]))
}

/// `prefix` followed by the byte pattern `(i * 7 + 3) % 251` up to
/// [`BIG`] bytes.
pub fn big_payload(prefix: &[u8]) -> Vec<u8> {
    let mut p = Vec::with_capacity(BIG);
    p.extend_from_slice(prefix);
    while p.len() < BIG {
        p.push(((p.len() * 7 + 3) % 251) as u8);
    }
    p
}

/// FNV-1a, to name a payload too large to print.
pub fn fnv1a(bytes: &[u8]) -> u32 {
    bytes.iter().fold(0x811c_9dc5u32, |h, b| {
        (h ^ u32::from(*b)).wrapping_mul(0x0100_0193)
    })
}

pub struct Mac(pub [u8; 6]);

impl fmt::Display for Mac {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let m = self.0;
        write!(
            f,
            "{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
            m[0], m[1], m[2], m[3], m[4], m[5]
        )
    }
}

/// A payload as the guests print it: the text when it is short printable
/// ASCII, else its length and FNV-1a hash.
pub struct Payload<'a>(pub &'a [u8]);

impl fmt::Display for Payload<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match core::str::from_utf8(self.0) {
            Ok(s) if s.len() <= 64 && s.bytes().all(|b| b.is_ascii_graphic() || b == b' ') => {
                write!(f, "{s:?}")
            }
            _ => write!(f, "<{} bytes fnv1a {:08x}>", self.0.len(), fnv1a(self.0)),
        }
    }
}
