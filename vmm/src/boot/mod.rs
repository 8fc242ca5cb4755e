//! Putting a kernel into guest memory and describing the machine to it.
//!
//! Three entry paths, chosen from the file itself:
//! - ELF vmlinux with a PVH note (`XEN_ELFNOTE_PHYS32_ENTRY`): PVH, 32-bit
//!   protected mode, paging off, `%ebx` → `hvm_start_info` ([`pvh`]). Preferred
//!   when present (`BootProtocol::Auto`): no page tables to build.
//! - ELF vmlinux without one: the 64-bit Linux boot protocol, long mode with
//!   identity-mapped page tables built here, `%rsi` → zero page ([`zero_page`]).
//! - bzImage: the setup header read by linux-loader, 64-bit entry at the load
//!   address + 0x200 ([`bzimage`]).
//!
//! Every path also gets the command line, the initramfs ([`initramfs`]), the
//! e820 map ([`e820`]) and an MP table ([`mptable`]) so SMP guests find their
//! CPUs without ACPI.
//!
//! This module only picks the path and calls the loaders in order; what they
//! share lives below them, so they never reach back up here: the fixed
//! addresses in [`layout`], the e820 map, where the initramfs went
//! ([`initramfs::Initrd`]) and the checked guest writes in [`guest_write`].

pub mod bzimage;
pub mod e820;
pub mod elf;
pub mod guest_write;
pub mod initramfs;
pub mod layout;
pub mod mptable;
pub mod paging;
pub mod pvh;
pub mod zero_page;

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::Path;

use anyhow::{Context, Result, bail};
use linux_loader::cmdline::Cmdline;
use vm_memory::GuestAddress;

use self::initramfs::DEFAULT_INITRD_ADDR_MAX;
use self::layout::{CMDLINE_MAX_SIZE, CMDLINE_START};
use super::memory::GuestMemoryMmap;

/// Which boot protocol to use for an ELF kernel.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum BootProtocol {
    /// PVH when the kernel has the note, the 64-bit Linux entry otherwise.
    #[default]
    Auto,
    Linux64,
    Pvh,
}

/// How the boot vCPU starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EntryPoint {
    /// Long mode, paging on (identity map), `%rsi` = zero page.
    Linux64 { entry: GuestAddress },
    /// 32-bit protected mode, paging off, `%ebx` = `hvm_start_info`.
    Pvh { entry: GuestAddress },
}

/// What the loader needs besides guest memory.
pub struct BootSpec<'a> {
    pub kernel: &'a Path,
    pub initramfs: Option<&'a Path>,
    pub cmdline: &'a Cmdline,
    pub vcpus: u8,
    pub ram_size: u64,
    pub protocol: BootProtocol,
}

/// The kernel formats we recognize, by their magic numbers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KernelFormat {
    Elf,
    BzImage,
}

/// Reads the magic numbers, so a wrong file fails with one clear line
/// instead of a loader error about program headers.
pub fn detect_format(path: &Path, file: &mut File) -> Result<KernelFormat> {
    let mut head = [0u8; 0x206];
    let mut filled = 0;
    while filled < head.len() {
        match file.read(&mut head[filled..]) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e).with_context(|| format!("reading kernel {}", path.display())),
        }
    }
    file.seek(SeekFrom::Start(0))
        .with_context(|| format!("seeking kernel {}", path.display()))?;
    if filled >= 4 && head[..4] == *b"\x7fELF" {
        return Ok(KernelFormat::Elf);
    }
    if filled >= 0x206 && head[0x202..0x206] == *b"HdrS" {
        return Ok(KernelFormat::BzImage);
    }
    bail!(
        "kernel {} is neither an ELF vmlinux nor a bzImage: no ELF magic at offset 0 and no \
         \"HdrS\" boot header at offset 0x202 ({filled} bytes read)",
        path.display()
    )
}

/// Loads kernel, command line and initramfs and writes the boot structures
/// for the chosen entry path.
pub fn load(mem: &GuestMemoryMmap, spec: &BootSpec<'_>) -> Result<EntryPoint> {
    let shown = spec.kernel.display();
    let mut file = File::open(spec.kernel).with_context(|| format!("opening kernel {shown}"))?;
    let format = detect_format(spec.kernel, &mut file)?;

    let cmdline = spec
        .cmdline
        .as_cstring()
        .context("kernel command line is not a valid C string")?;
    let cmdline_len = cmdline.as_bytes().len();
    if cmdline_len >= CMDLINE_MAX_SIZE {
        bail!(
            "kernel command line is {cmdline_len} bytes; the limit is {}",
            CMDLINE_MAX_SIZE - 1
        );
    }
    linux_loader::loader::load_cmdline(mem, GuestAddress(CMDLINE_START), spec.cmdline)
        .context("writing the kernel command line")?;

    mptable::write(mem, spec.vcpus)?;
    paging::write_gdt(mem)?;

    match format {
        KernelFormat::Elf => {
            let kernel = elf::load(mem, spec.kernel, &mut file)?;
            let use_pvh = match (spec.protocol, kernel.pvh_entry) {
                (BootProtocol::Linux64, _) | (BootProtocol::Auto, None) => false,
                (BootProtocol::Pvh | BootProtocol::Auto, Some(_)) => true,
                (BootProtocol::Pvh, None) => {
                    bail!("kernel {shown} has no PVH entry note (XEN_ELFNOTE_PHYS32_ENTRY)")
                }
            };
            let initrd = initramfs::load(
                mem,
                spec.initramfs,
                spec.ram_size,
                kernel.end,
                DEFAULT_INITRD_ADDR_MAX,
            )?;
            if let (true, Some(entry)) = (use_pvh, kernel.pvh_entry) {
                pvh::write_start_info(mem, spec.ram_size, initrd)?;
                Ok(EntryPoint::Pvh { entry })
            } else {
                paging::write_identity_map(mem)?;
                let params = zero_page::ZeroPage::new(None, cmdline_len, initrd, spec.ram_size);
                params.write(mem)?;
                Ok(EntryPoint::Linux64 {
                    entry: kernel.entry,
                })
            }
        }
        KernelFormat::BzImage => {
            if spec.protocol == BootProtocol::Pvh {
                bail!("kernel {shown} is a bzImage; PVH needs an ELF vmlinux");
            }
            let kernel = bzimage::load(mem, spec.kernel, &mut file)?;
            let max = u64::from(kernel.header.initrd_addr_max);
            let initrd = initramfs::load(mem, spec.initramfs, spec.ram_size, kernel.end, max)?;
            paging::write_identity_map(mem)?;
            let params =
                zero_page::ZeroPage::new(Some(kernel.header), cmdline_len, initrd, spec.ram_size);
            params.write(mem)?;
            Ok(EntryPoint::Linux64 {
                entry: kernel.entry,
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn garbage_is_named() {
        let dir = tempfile::tempdir().expect("tempdir");
        let p = dir.path().join("not-a-kernel");
        std::fs::write(&p, vec![b'x'; 4096]).expect("write");
        let mut f = File::open(&p).expect("open");
        let e = detect_format(&p, &mut f).unwrap_err().to_string();
        assert!(
            e.contains("not-a-kernel") && e.contains("neither an ELF"),
            "{e}"
        );
    }
}
