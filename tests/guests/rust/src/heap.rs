//! The global allocator: a bump pointer over a static arena in .bss. Freeing
//! the most recent allocation gives its space back (a frame buffer used and
//! dropped in a loop costs nothing); anything else is never reused, which is
//! fine for a test guest's lifetime.

use core::alloc::{GlobalAlloc, Layout};
use core::cell::UnsafeCell;
use core::sync::atomic::{AtomicUsize, Ordering};

pub const HEAP_SIZE: usize = 4 << 20;

#[repr(C, align(4096))]
pub(crate) struct Arena<const N: usize>(pub(crate) UnsafeCell<[u8; N]>);

// SAFETY: the arena is only handed out in disjoint pieces by the allocators
// below, which serialise through an atomic.
unsafe impl<const N: usize> Sync for Arena<N> {}

static ARENA: Arena<HEAP_SIZE> = Arena(UnsafeCell::new([0; HEAP_SIZE]));

struct Bump {
    /// Offset of the first free byte in the arena.
    next: AtomicUsize,
}

#[global_allocator]
static HEAP: Bump = Bump {
    next: AtomicUsize::new(0),
};

impl Bump {
    fn base() -> usize {
        ARENA.0.get() as usize
    }
}

// SAFETY: every block handed out lies in the arena, is aligned as asked and
// is disjoint from every other live block.
unsafe impl GlobalAlloc for Bump {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let base = Self::base();
        let mut current = self.next.load(Ordering::Relaxed);
        loop {
            let Some(start) = (base + current)
                .checked_next_multiple_of(layout.align())
                .map(|a| a - base)
            else {
                return core::ptr::null_mut();
            };
            let Some(end) = start.checked_add(layout.size()).filter(|e| *e <= HEAP_SIZE) else {
                return core::ptr::null_mut();
            };
            match self
                .next
                .compare_exchange(current, end, Ordering::Relaxed, Ordering::Relaxed)
            {
                Ok(_) => return (base + start) as *mut u8,
                Err(seen) => current = seen,
            }
        }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        let start = ptr as usize - Self::base();
        // Only the last block can be given back; if another allocation came
        // after it the exchange fails and the space stays used.
        let _ = self.next.compare_exchange(
            start + layout.size(),
            start,
            Ordering::Relaxed,
            Ordering::Relaxed,
        );
    }
}

/// Bytes of the arena in use (for a guest that wants to report it).
pub fn used() -> usize {
    HEAP.next.load(Ordering::Relaxed)
}
