//! bzImage: linux-loader reads the setup header and copies the protected-mode
//! kernel to `code32_start`. We insist on `XLF_KERNEL_64`: the VMM starts the
//! kernel in long mode at load address + 0x200 and has no real-mode BIOS path.

use std::fs::File;
use std::path::Path;

use anyhow::{Result, anyhow, bail};
use linux_loader::loader::bootparam::setup_header;
use linux_loader::loader::{BzImage, KernelLoader};
use vm_memory::{Address, GuestAddress};

use super::layout::HIMEM_START;
use crate::memory::GuestMemoryMmap;

/// `xloadflags` bit: the kernel has a 64-bit entry point at +0x200.
const XLF_KERNEL_64: u16 = 1 << 0;
/// Offset of the 64-bit entry from the protected-mode kernel's start.
const STARTUP_64_OFFSET: u64 = 0x200;
/// Boot protocol 2.06 is the first with `cmdline_size`; 2.12 added xloadflags.
const MIN_PROTOCOL: u16 = 0x020c;

pub struct LoadedBzImage {
    pub entry: GuestAddress,
    pub header: setup_header,
    pub end: u64,
}

pub fn load(mem: &GuestMemoryMmap, path: &Path, file: &mut File) -> Result<LoadedBzImage> {
    let result = BzImage::load(mem, None, file, Some(GuestAddress(HIMEM_START)))
        .map_err(|e| anyhow!("loading bzImage kernel {}: {e}", path.display()))?;
    let Some(header) = result.setup_header else {
        bail!("bzImage kernel {}: no setup header", path.display());
    };
    let version = header.version;
    if version < MIN_PROTOCOL {
        bail!(
            "bzImage kernel {}: boot protocol {version:#06x} is older than {MIN_PROTOCOL:#06x}",
            path.display()
        );
    }
    let xloadflags = header.xloadflags;
    if xloadflags & XLF_KERNEL_64 == 0 {
        bail!(
            "bzImage kernel {}: no 64-bit entry point (XLF_KERNEL_64 not set in xloadflags)",
            path.display()
        );
    }
    Ok(LoadedBzImage {
        entry: result.kernel_load.unchecked_add(STARTUP_64_OFFSET),
        header,
        end: result.kernel_end,
    })
}
