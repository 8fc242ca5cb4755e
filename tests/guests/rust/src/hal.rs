//! virtio-drivers' HAL for this guest: memory is identity-mapped (guest
//! physical == virtual), there is no IOMMU and nothing to bounce, so sharing
//! a buffer is giving the device its address. DMA pages come from their own
//! page-aligned bump arena and are never freed.

use core::cell::UnsafeCell;
use core::ptr::NonNull;
use core::sync::atomic::{AtomicUsize, Ordering};

use virtio_drivers::{BufferDirection, Hal, PhysAddr};

use crate::heap::Arena;

pub const PAGE_SIZE: usize = 4096;
/// Queues and their rings: a few pages per queue.
pub const DMA_SIZE: usize = 1 << 20;

static DMA: Arena<DMA_SIZE> = Arena(UnsafeCell::new([0; DMA_SIZE]));
static DMA_NEXT: AtomicUsize = AtomicUsize::new(0);

pub struct GuestHal;

// SAFETY: dma_alloc returns zeroed, page-aligned, unaliased pages whose
// physical address is their virtual one; share returns the address the
// device must use for a buffer, which under the identity map is its own.
unsafe impl Hal for GuestHal {
    fn dma_alloc(pages: usize, _direction: BufferDirection) -> (PhysAddr, NonNull<u8>) {
        let Some(len) = pages.checked_mul(PAGE_SIZE) else {
            return (0, NonNull::dangling());
        };
        let start = DMA_NEXT.fetch_add(len, Ordering::Relaxed);
        if start.checked_add(len).is_none_or(|end| end > DMA_SIZE) {
            return (0, NonNull::dangling());
        }
        let addr = DMA.0.get() as usize + start;
        // SAFETY: [addr, addr + len) is ours alone: the bump never hands it
        // out twice.
        unsafe { core::ptr::write_bytes(addr as *mut u8, 0, len) };
        match NonNull::new(addr as *mut u8) {
            Some(p) => (addr as PhysAddr, p),
            None => (0, NonNull::dangling()),
        }
    }

    unsafe fn dma_dealloc(_paddr: PhysAddr, _vaddr: NonNull<u8>, _pages: usize) -> i32 {
        0
    }

    unsafe fn mmio_phys_to_virt(paddr: PhysAddr, _size: usize) -> NonNull<u8> {
        NonNull::new(paddr as usize as *mut u8).unwrap_or(NonNull::dangling())
    }

    unsafe fn share(buffer: NonNull<[u8]>, _direction: BufferDirection) -> PhysAddr {
        buffer.as_ptr() as *mut u8 as usize as PhysAddr
    }

    unsafe fn unshare(_paddr: PhysAddr, _buffer: NonNull<[u8]>, _direction: BufferDirection) {}
}
