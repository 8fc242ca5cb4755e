//! The Linux zero page (`struct boot_params`): the setup header (from a
//! bzImage, or synthesized for a vmlinux), command line, initramfs and e820.

use anyhow::{Result, bail};
use linux_loader::loader::bootparam::{boot_e820_entry, boot_params, setup_header};
use vm_memory::{Bytes, GuestAddress};

use super::e820::e820_map;
use super::initramfs::Initrd;
use super::layout::{CMDLINE_START, ZERO_PAGE_START};
use crate::memory::GuestMemoryMmap;

const KERNEL_BOOT_FLAG_MAGIC: u16 = 0xaa55;
const KERNEL_HDR_MAGIC: u32 = 0x5372_6448; // "HdrS"
/// "Undefined" boot loader id: Linux accepts it and it claims nothing.
const KERNEL_LOADER_OTHER: u8 = 0xff;
const KERNEL_MIN_ALIGNMENT: u32 = 0x0100_0000;

pub struct ZeroPage(boot_params);

impl ZeroPage {
    /// `header` is the bzImage's own setup header; `None` for a vmlinux.
    pub fn new(header: Option<setup_header>, cmdline_len: usize, initrd: Initrd, ram: u64) -> Self {
        let mut params = boot_params::default();
        match header {
            Some(h) => params.hdr = h,
            None => {
                params.hdr.boot_flag = KERNEL_BOOT_FLAG_MAGIC;
                params.hdr.header = KERNEL_HDR_MAGIC;
                params.hdr.kernel_alignment = KERNEL_MIN_ALIGNMENT;
                params.hdr.cmdline_size = cmdline_len as u32;
            }
        }
        params.hdr.type_of_loader = KERNEL_LOADER_OTHER;
        params.hdr.cmd_line_ptr = CMDLINE_START as u32;
        if let Some((addr, size)) = initrd {
            params.hdr.ramdisk_image = addr.0 as u32;
            params.hdr.ramdisk_size = size as u32;
        }
        let map = e820_map(ram);
        for (slot, (addr, size, type_)) in params.e820_table.iter_mut().zip(&map) {
            *slot = boot_e820_entry {
                addr: *addr,
                size: *size,
                r#type: *type_,
            };
        }
        params.e820_entries = map.len().min(params.e820_table.len()) as u8;
        ZeroPage(params)
    }

    pub fn params(&self) -> &boot_params {
        &self.0
    }

    pub fn write(&self, mem: &GuestMemoryMmap) -> Result<()> {
        if mem
            .write_obj(self.0, GuestAddress(ZERO_PAGE_START))
            .is_err()
        {
            bail!("writing the zero page at {ZERO_PAGE_START:#x}");
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vmlinux_header_is_synthesized() {
        let z = ZeroPage::new(None, 12, Some((GuestAddress(0x7f0_0000), 4096)), 128 << 20);
        let p = z.params();
        let (magic, flag, loader, ptr) = (
            p.hdr.header,
            p.hdr.boot_flag,
            p.hdr.type_of_loader,
            p.hdr.cmd_line_ptr,
        );
        assert_eq!(
            (magic, flag, loader, ptr),
            (KERNEL_HDR_MAGIC, 0xaa55, 0xff, 0x20000)
        );
        let (image, size) = (p.hdr.ramdisk_image, p.hdr.ramdisk_size);
        assert_eq!((image, size), (0x7f0_0000, 4096));
        assert_eq!(p.e820_entries, 3);
    }
}
