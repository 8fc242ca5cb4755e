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
//! Every path also gets the command line, the initramfs, the e820 map and an
//! MP table ([`mptable`]) so SMP guests find their CPUs without ACPI.

pub mod bzimage;
pub mod elf;
pub mod layout;
pub mod mptable;
pub mod paging;
pub mod pvh;
pub mod zero_page;

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use linux_loader::cmdline::Cmdline;
use vm_memory::{Address, Bytes, GuestAddress, GuestMemoryBackend};

use self::layout::*;
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
            let initrd = load_initramfs(mem, spec, kernel.end, DEFAULT_INITRD_ADDR_MAX)?;
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
            let initrd = load_initramfs(mem, spec, kernel.end, max)?;
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

/// Linux's default `initrd_addr_max` for kernels that do not say otherwise.
pub const DEFAULT_INITRD_ADDR_MAX: u64 = 0x37ff_ffff;

/// Where the initramfs went: (guest address, size).
pub type Initrd = Option<(GuestAddress, u64)>;

/// Puts the initramfs as high as it may go in low RAM, page-aligned, where
/// the kernel's own decompression and early allocations will not reach it.
fn load_initramfs(
    mem: &GuestMemoryMmap,
    spec: &BootSpec<'_>,
    kernel_end: u64,
    initrd_addr_max: u64,
) -> Result<Initrd> {
    let Some(path) = spec.initramfs else {
        return Ok(None);
    };
    let mut file =
        File::open(path).with_context(|| format!("opening initramfs {}", path.display()))?;
    let size = file
        .metadata()
        .with_context(|| format!("reading the size of initramfs {}", path.display()))?
        .len();
    let addr = initramfs_address(spec.ram_size, size, kernel_end, initrd_addr_max)
        .with_context(|| initramfs_fit_error(path, size, spec.ram_size))?;
    let len = usize::try_from(size).context("initramfs too large for this host")?;
    mem.read_exact_volatile_from(GuestAddress(addr), &mut file, len)
        .with_context(|| format!("loading initramfs {} at {addr:#x}", path.display()))?;
    Ok(Some((GuestAddress(addr), size)))
}

fn initramfs_fit_error(path: &Path, size: u64, ram: u64) -> String {
    format!(
        "initramfs {} ({} KiB) does not fit in guest memory ({} MiB) above the kernel",
        PathBuf::from(path).display(),
        size >> 10,
        ram >> 20
    )
}

/// The page-aligned address just below min(top of low RAM, initrd_addr_max),
/// or `None` when that would overlap the kernel.
pub fn initramfs_address(
    ram: u64,
    size: u64,
    kernel_end: u64,
    initrd_addr_max: u64,
) -> Option<u64> {
    let top = ram
        .min(MMIO_GAP_START)
        .min(initrd_addr_max.saturating_add(1));
    let start = top.checked_sub(size)? & !0xfff;
    (start >= kernel_end.max(HIMEM_START)).then_some(start)
}

/// The e820 map both boot protocols describe: (address, size, type).
pub fn e820_map(ram: u64) -> Vec<(u64, u64, u32)> {
    const RAM: u32 = 1;
    const RESERVED: u32 = 2;
    let low_end = ram.min(MMIO_GAP_START);
    let mut map = vec![
        (0, EBDA_START, RAM),
        (EBDA_START, 0xa0000 - EBDA_START, RESERVED),
    ];
    if low_end > HIMEM_START {
        map.push((HIMEM_START, low_end - HIMEM_START, RAM));
    }
    if ram > MMIO_GAP_START {
        map.push((MMIO_GAP_END, ram - MMIO_GAP_START, RAM));
    }
    map
}

/// Checks that `[addr, addr+len)` lies in guest RAM.
pub(crate) fn check_fits(mem: &GuestMemoryMmap, addr: u64, len: usize, what: &str) -> Result<()> {
    if mem
        .checked_offset(GuestAddress(addr), len.saturating_sub(1))
        .is_none()
        || !mem.address_in_range(GuestAddress(addr).unchecked_add(len.saturating_sub(1) as u64))
    {
        bail!("{what} at {addr:#x} (+{len:#x}) lies outside guest memory");
    }
    Ok(())
}

/// Writes `bytes` at `addr`, naming `what` on failure.
pub(crate) fn write_bytes(
    mem: &GuestMemoryMmap,
    addr: u64,
    bytes: &[u8],
    what: &str,
) -> Result<()> {
    check_fits(mem, addr, bytes.len(), what)?;
    mem.write_slice(bytes, GuestAddress(addr))
        .with_context(|| format!("writing {what} at {addr:#x}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn e820_leaves_out_the_hole_and_the_gap() {
        assert_eq!(
            e820_map(128 << 20),
            vec![
                (0, 0x9fc00, 1),
                (0x9fc00, 0x400, 2),
                (0x100000, (128 << 20) - 0x100000, 1)
            ]
        );
        let big = e820_map(5 << 30);
        assert_eq!(
            big.last(),
            Some(&(MMIO_GAP_END, (5u64 << 30) - MMIO_GAP_START, 1))
        );
    }

    #[test]
    fn initramfs_goes_high_and_never_over_the_kernel() {
        let ram = 128 << 20;
        assert_eq!(
            initramfs_address(ram, 0x1800, 0x200000, DEFAULT_INITRD_ADDR_MAX),
            Some(ram - 0x2000)
        );
        assert_eq!(
            initramfs_address(ram, ram, 0x200000, DEFAULT_INITRD_ADDR_MAX),
            None
        );
        assert_eq!(
            initramfs_address(8 << 30, 0x1000, 0, 0x0fff_ffff),
            Some(0x0fff_f000)
        );
    }

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
