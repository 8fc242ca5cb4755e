//! Guest RAM: one memfd, mapped shared (vhost-user daemons such as virtiofsd
//! map the same file), split around the 32-bit MMIO gap, each region inside a
//! PROT_NONE reservation so that an off-by-one in the VMM faults on a guard
//! page instead of scribbling over the heap.
//!
//! The size is checked against what the host can actually provide before
//! anything is mapped: memfd pages are only allocated when touched, so an
//! impossible size would otherwise surface as SIGBUS in the middle of a
//! guest's life.

use std::fs::File;
use std::os::fd::{AsRawFd, FromRawFd};
use std::sync::Arc;

use anyhow::{Context, Result, bail};
use vm_memory::mmap::MmapRegionBuilder;
use vm_memory::{FileOffset, GuestAddress, GuestMemoryBackend, GuestMemoryRegion, GuestRegionMmap};

use super::boot::layout::{MMIO_GAP_END, MMIO_GAP_START};

pub type GuestMemoryMmap = vm_memory::GuestMemoryMmap<()>;

const PAGE: usize = 4096;

/// Guest RAM and the mappings that hold it.
pub struct GuestRam {
    /// Dropped first (field order): the regions do not own their mappings.
    memory: Arc<GuestMemoryMmap>,
    file: Arc<File>,
    reservations: Vec<Reservation>,
}

/// A PROT_NONE reservation with the region mapped in its middle.
struct Reservation {
    addr: *mut libc::c_void,
    len: usize,
}

// SAFETY: the reservation is only an address range; it is unmapped once, on
// drop, and never dereferenced through this struct.
unsafe impl Send for Reservation {}
// SAFETY: as above, no access goes through the struct.
unsafe impl Sync for Reservation {}

impl Drop for Reservation {
    fn drop(&mut self) {
        // SAFETY: addr/len describe a mapping this struct created and nobody
        // else unmaps; the regions using it were dropped before (field order).
        unsafe { libc::munmap(self.addr, self.len) };
    }
}

/// The guest-physical ranges RAM of `size` bytes occupies: below the MMIO gap
/// first, the rest from 4 GiB up.
pub fn ram_ranges(size: u64) -> Vec<(GuestAddress, u64)> {
    let low = size.min(MMIO_GAP_START);
    let mut ranges = vec![(GuestAddress(0), low)];
    if size > low {
        ranges.push((GuestAddress(MMIO_GAP_END), size - low));
    }
    ranges
}

impl GuestRam {
    /// Creates `size_mib` MiB of shared, memfd-backed guest RAM.
    pub fn new(size_mib: u64) -> Result<GuestRam> {
        let size = size_mib
            .checked_mul(1 << 20)
            .filter(|s| *s > 0)
            .with_context(|| format!("guest memory of {size_mib} MiB is not a valid size"))?;
        check_host_allows(size)?;
        // SAFETY: a plain syscall with a static NUL-terminated name; the fd is
        // owned by the File right away. CLOEXEC: no child may inherit guest RAM.
        let fd = unsafe { libc::memfd_create(c"vmpod-guest-ram".as_ptr(), libc::MFD_CLOEXEC) };
        if fd < 0 {
            return Err(std::io::Error::last_os_error()).context("memfd_create for guest memory");
        }
        // SAFETY: fd was just returned by memfd_create and is owned by nobody else.
        let file = Arc::new(unsafe { File::from_raw_fd(fd) });
        file.set_len(size)
            .with_context(|| format!("sizing the guest memory memfd to {size} bytes"))?;

        let mut regions = Vec::new();
        let mut reservations = Vec::new();
        let mut file_offset = 0u64;
        for (base, len) in ram_ranges(size) {
            let len =
                usize::try_from(len).context("guest memory region exceeds the address space")?;
            let (region, reservation) = map_region(&file, file_offset, base, len)?;
            regions.push(region);
            reservations.push(reservation);
            file_offset += len as u64;
        }
        let memory = GuestMemoryMmap::from_regions(regions)
            .context("assembling the guest memory regions")?;
        Ok(GuestRam {
            memory: Arc::new(memory),
            file,
            reservations,
        })
    }

    pub fn memory(&self) -> &Arc<GuestMemoryMmap> {
        &self.memory
    }

    /// The (guest address, size, host address) of each region, for KVM slots.
    pub fn slots(&self) -> Vec<(u64, u64, u64)> {
        self.memory
            .iter()
            .map(|r| {
                let host = r.as_ptr() as u64;
                (r.start_addr().0, r.len(), host)
            })
            .collect()
    }

    /// Bytes of guest RAM the guest (or the loader) has touched so far: the
    /// memfd's allocated blocks. Lets a benchmark subtract guest memory from
    /// the VMM's RSS.
    pub fn resident_bytes(&self) -> u64 {
        // SAFETY: fstat on an fd we own, into a zeroed stat buffer.
        let mut st: libc::stat = unsafe { std::mem::zeroed() };
        // SAFETY: as above.
        if unsafe { libc::fstat(self.file.as_raw_fd(), &mut st) } != 0 {
            return 0;
        }
        st.st_blocks as u64 * 512
    }

    /// Number of guard-page reservations (one per region).
    pub fn region_count(&self) -> usize {
        self.reservations.len()
    }
}

fn map_region(
    file: &Arc<File>,
    file_offset: u64,
    base: GuestAddress,
    len: usize,
) -> Result<(GuestRegionMmap<()>, Reservation)> {
    let total = len
        .checked_add(2 * PAGE)
        .context("guest memory region too large")?;
    // SAFETY: a fresh anonymous PROT_NONE mapping at a kernel-chosen address.
    let addr = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            total,
            libc::PROT_NONE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
            -1,
            0,
        )
    };
    if addr == libc::MAP_FAILED {
        return Err(std::io::Error::last_os_error())
            .with_context(|| format!("reserving {total} bytes of address space for guest memory"));
    }
    let reservation = Reservation { addr, len: total };
    // SAFETY: the target lies strictly inside the reservation made above,
    // which nothing else uses, so MAP_FIXED replaces only our own PROT_NONE pages.
    let inner = unsafe {
        libc::mmap(
            addr.cast::<u8>().add(PAGE).cast(),
            len,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_SHARED | libc::MAP_NORESERVE | libc::MAP_FIXED,
            file.as_raw_fd(),
            file_offset as libc::off_t,
        )
    };
    if inner == libc::MAP_FAILED {
        return Err(std::io::Error::last_os_error())
            .with_context(|| format!("mapping {len} bytes of guest memory"));
    }
    // SAFETY: `inner` is a live, page-aligned mapping of `len` bytes that
    // outlives the region (the reservation is dropped after the regions).
    let mapping = unsafe {
        MmapRegionBuilder::new(len)
            .with_raw_mmap_pointer(inner.cast())
            .with_file_offset(FileOffset::from_arc(file.clone(), file_offset))
            .with_mmap_prot(libc::PROT_READ | libc::PROT_WRITE)
            .with_mmap_flags(libc::MAP_SHARED | libc::MAP_NORESERVE)
            .build()
    }
    .context("wrapping the guest memory mapping")?;
    let region = GuestRegionMmap::new(mapping, base)
        .context("guest memory region overflows the address space")?;
    Ok((region, reservation))
}

/// Host memory facts from /proc/meminfo, in bytes.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct HostMemory {
    pub mem_available: u64,
    pub swap_free: u64,
    pub commit_limit: u64,
    pub committed_as: u64,
    /// /proc/sys/vm/overcommit_memory: 0 heuristic, 1 always, 2 never.
    pub overcommit_mode: u8,
}

impl HostMemory {
    pub fn read() -> Result<HostMemory> {
        let meminfo = std::fs::read_to_string("/proc/meminfo").context("reading /proc/meminfo")?;
        let mode = std::fs::read_to_string("/proc/sys/vm/overcommit_memory")
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(0);
        Ok(Self::parse(&meminfo, mode))
    }

    pub fn parse(meminfo: &str, overcommit_mode: u8) -> HostMemory {
        let mut m = HostMemory {
            overcommit_mode,
            ..Default::default()
        };
        for line in meminfo.lines() {
            let mut parts = line.split_whitespace();
            let (Some(key), Some(value)) = (parts.next(), parts.next()) else {
                continue;
            };
            let Ok(kib) = value.parse::<u64>() else {
                continue;
            };
            let bytes = kib.saturating_mul(1024);
            match key {
                "MemAvailable:" => m.mem_available = bytes,
                "SwapFree:" => m.swap_free = bytes,
                "CommitLimit:" => m.commit_limit = bytes,
                "Committed_AS:" => m.committed_as = bytes,
                _ => {}
            }
        }
        m
    }

    /// How much guest memory the host can back, and by which rule. With
    /// overcommit off (mode 2) the kernel's own commit accounting decides;
    /// otherwise what is available now (free + reclaimable + swap), because
    /// memfd pages beyond that end in SIGBUS or the OOM killer mid-run.
    pub fn limit(&self) -> (u64, &'static str) {
        if self.overcommit_mode == 2 {
            (
                self.commit_limit.saturating_sub(self.committed_as),
                "CommitLimit - Committed_AS (vm.overcommit_memory=2)",
            )
        } else {
            (
                self.mem_available.saturating_add(self.swap_free),
                "MemAvailable + SwapFree",
            )
        }
    }
}

/// Fails, naming both numbers, when the host cannot back `size` bytes.
pub fn check_host_allows(size: u64) -> Result<()> {
    let host = HostMemory::read()?;
    check_against(size, &host)
}

pub fn check_against(size: u64, host: &HostMemory) -> Result<()> {
    let (limit, rule) = host.limit();
    if size > limit {
        bail!(
            "guest memory of {} MiB is more than this host can provide: {} MiB ({rule})",
            size >> 20,
            limit >> 20
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use vm_memory::Bytes;

    #[test]
    fn ranges_skip_the_mmio_gap() {
        assert_eq!(ram_ranges(128 << 20), vec![(GuestAddress(0), 128 << 20)]);
        let r = ram_ranges(4 << 30);
        assert_eq!(
            r,
            vec![
                (GuestAddress(0), MMIO_GAP_START),
                (GuestAddress(MMIO_GAP_END), (4 << 30) - MMIO_GAP_START)
            ]
        );
    }

    #[test]
    fn limit_follows_the_overcommit_mode() {
        let info = "MemTotal: 100 kB\nMemAvailable: 1000 kB\nSwapFree: 24 kB\nCommitLimit: 4096 kB\nCommitted_AS: 1024 kB\n";
        let heuristic = HostMemory::parse(info, 0);
        assert_eq!(heuristic.limit().0, 1024 * 1024);
        let strict = HostMemory::parse(info, 2);
        assert_eq!(strict.limit().0, 3072 * 1024);
        let e = check_against(8 << 20, &heuristic).unwrap_err().to_string();
        assert!(e.contains("8 MiB") && e.contains("MemAvailable"), "{e}");
    }

    #[test]
    fn shared_memfd_memory_with_guard_pages() {
        let ram = GuestRam::new(2).expect("guest ram");
        let mem = ram.memory();
        mem.write_obj(0xdead_beefu32, GuestAddress(0x1000))
            .expect("write");
        assert_eq!(
            mem.read_obj::<u32>(GuestAddress(0x1000)).expect("read"),
            0xdead_beef
        );
        assert!(mem.write_obj(1u8, GuestAddress(2 << 20)).is_err());
        let region = mem.find_region(GuestAddress(0)).expect("region");
        assert!(region.file_offset().is_some(), "memfd-backed");
        assert!(ram.resident_bytes() >= 4096);
        assert_eq!(ram.region_count(), 1);
    }
}
