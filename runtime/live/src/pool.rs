//! A recycling global allocator for live runs: once engaged, every allocation comes from blocks carved from one reserved region and reused, so the steady state makes no system allocation.
//!
//! tract allocates a fresh tensor for every node output of every run (about 650 per frame
//! pair for the demo model). Those requests repeat frame after frame with the same sizes, so
//! after the first frames each one is served by a block that an earlier frame freed: a
//! push or pop on a per-size free list (power-of-two classes from 16 bytes to 1 GiB, a short
//! lock each), never `malloc`, `mmap` or `brk`. Blocks are never returned to the system, so
//! memory stays at the warm-up peak and cannot fragment over hours.
//!
//! The allocator is installed by the `cavsync` binary (`#[global_allocator]`) and does nothing
//! until [`engage`] is called: before that (and in every offline command) each request goes
//! straight to the system allocator, at the cost of one address comparison on free. [`stats`]
//! counts what was carved, what was reused and what still had to go to the system while
//! engaged (requests over 1 GiB or aligned past a page, or a full region).

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};

/// Address space reserved for the pool (not memory: pages are committed when first written).
const RESERVE: usize = 16 << 30;
/// Smallest size class, log2 (16 bytes: room for the free-list link).
const MIN_CLASS: u32 = 4;
/// Largest size class, log2 (1 GiB); larger requests go to the system allocator.
const MAX_CLASS: u32 = 30;
/// Classes.
const CLASSES: usize = (MAX_CLASS - MIN_CLASS + 1) as usize;
/// Largest alignment the pool serves; blocks are aligned to their size up to this.
const MAX_ALIGN: usize = 4096;

/// The recycling allocator; install it with `#[global_allocator]`.
pub struct RecyclingAllocator;

/// What the pool did since the process started.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct PoolStats {
    /// Whether [`engage`] succeeded and the pool serves requests.
    pub engaged: bool,
    /// Blocks carved from the region (each one a first request of its kind at its peak count).
    pub carved: u64,
    /// Bytes carved, all classes together.
    pub carved_bytes: u64,
    /// Requests served by a block that an earlier request freed.
    pub reused: u64,
    /// Requests made while engaged that went to the system allocator (too large, over-aligned, or the region full).
    pub system: u64,
}

impl PoolStats {
    /// Requests that reached fresh memory since `before`: carved blocks plus system allocations.
    pub fn fresh_since(&self, before: &PoolStats) -> u64 {
        (self.carved - before.carved) + (self.system - before.system)
    }
}

/// Why the pool could not be engaged.
#[derive(Debug, thiserror::Error)]
pub enum PoolError {
    /// Reserving the address space failed.
    #[error("cannot reserve {size} bytes of address space for the allocation pool: {source}")]
    Reserve {
        /// Bytes asked for.
        size: usize,
        /// What mmap said.
        source: std::io::Error,
    },
    /// The process's global allocator is not [`RecyclingAllocator`].
    #[error("the allocation pool is not this program's global allocator")]
    NotInstalled,
}

static ENGAGED: AtomicBool = AtomicBool::new(false);
static BASE: AtomicUsize = AtomicUsize::new(0);
static NEXT: AtomicUsize = AtomicUsize::new(0);
static CARVED: AtomicU64 = AtomicU64::new(0);
static CARVED_BYTES: AtomicU64 = AtomicU64::new(0);
static REUSED: AtomicU64 = AtomicU64::new(0);
static SYSTEM: AtomicU64 = AtomicU64::new(0);
static RESERVE_LOCK: Mutex<()> = Mutex::new(());

/// Free list heads per class (address of the first free block, 0 when empty); a free block's first word links to the next.
static FREE: [Mutex<usize>; CLASSES] = [const { Mutex::new(0) }; CLASSES];

/// Reserves the region (once) and starts serving every allocation of the process from the pool.
pub fn engage() -> Result<(), PoolError> {
    {
        let _guard = RESERVE_LOCK.lock().unwrap_or_else(|e| e.into_inner());
        if BASE.load(Ordering::Acquire) == 0 {
            // SAFETY: an anonymous private mapping with no address hint; the result is checked.
            let ptr = unsafe {
                libc::mmap(
                    std::ptr::null_mut(),
                    RESERVE,
                    libc::PROT_READ | libc::PROT_WRITE,
                    libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
                    -1,
                    0,
                )
            };
            if ptr == libc::MAP_FAILED {
                return Err(PoolError::Reserve {
                    size: RESERVE,
                    source: std::io::Error::last_os_error(),
                });
            }
            NEXT.store(ptr as usize, Ordering::Release);
            BASE.store(ptr as usize, Ordering::Release);
        }
    }
    ENGAGED.store(true, Ordering::Release);
    let probe = Box::new(0u64);
    let inside = in_region(&*probe as *const u64 as usize);
    drop(probe);
    if !inside {
        ENGAGED.store(false, Ordering::Release);
        return Err(PoolError::NotInstalled);
    }
    Ok(())
}

/// The pool's counters now.
pub fn stats() -> PoolStats {
    PoolStats {
        engaged: ENGAGED.load(Ordering::Acquire),
        carved: CARVED.load(Ordering::Relaxed),
        carved_bytes: CARVED_BYTES.load(Ordering::Relaxed),
        reused: REUSED.load(Ordering::Relaxed),
        system: SYSTEM.load(Ordering::Relaxed),
    }
}

/// Whether `addr` lies in the reserved region.
fn in_region(addr: usize) -> bool {
    let base = BASE.load(Ordering::Acquire);
    base != 0 && addr >= base && addr < base + RESERVE
}

/// The size class (log2 of the block size) for `layout`, if the pool serves it.
fn class_of(layout: Layout) -> Option<u32> {
    if layout.align() > MAX_ALIGN {
        return None;
    }
    let size = layout.size().max(layout.align()).max(1 << MIN_CLASS);
    let class = size.checked_next_power_of_two()?.trailing_zeros();
    (class <= MAX_CLASS).then_some(class)
}

/// A block of `class` from its free list, or carved from the region; null when the region is full.
fn take(class: u32) -> *mut u8 {
    let slot = (class - MIN_CLASS) as usize;
    {
        let mut head = FREE[slot].lock().unwrap_or_else(|e| e.into_inner());
        if *head != 0 {
            let block = *head as *mut u8;
            // SAFETY: a free block of at least 16 bytes, aligned to 16, holds the next link in its first word.
            *head = unsafe { (block as *const usize).read() };
            REUSED.fetch_add(1, Ordering::Relaxed);
            return block;
        }
    }
    let size = 1usize << class;
    let align = size.min(MAX_ALIGN);
    let end = BASE.load(Ordering::Acquire) + RESERVE;
    let mut next = NEXT.load(Ordering::Relaxed);
    loop {
        let start = (next + align - 1) & !(align - 1);
        if start + size > end {
            return std::ptr::null_mut();
        }
        match NEXT.compare_exchange_weak(next, start + size, Ordering::AcqRel, Ordering::Relaxed) {
            Ok(_) => {
                CARVED.fetch_add(1, Ordering::Relaxed);
                CARVED_BYTES.fetch_add(size as u64, Ordering::Relaxed);
                return start as *mut u8;
            }
            Err(now) => next = now,
        }
    }
}

/// Returns a pool block to its class's free list.
fn give(block: *mut u8, class: u32) {
    let slot = (class - MIN_CLASS) as usize;
    let mut head = FREE[slot].lock().unwrap_or_else(|e| e.into_inner());
    // SAFETY: the block is ours, free, at least 16 bytes and 16-aligned.
    unsafe { (block as *mut usize).write(*head) };
    *head = block as usize;
}

/// The class a pool block was carved for: recomputed from the layout the caller gives back (the same layout it was allocated with).
fn class_of_block(layout: Layout) -> u32 {
    class_of(layout).expect("a pool block's layout has a class")
}

// SAFETY: every block handed out is at least `layout.size()` bytes, aligned to `layout.align()`
// (classes are powers of two no smaller than either, carved at their size's alignment up to
// 4096), and owned by one caller until it is freed; blocks outside the region are the system
// allocator's and go back to it.
unsafe impl GlobalAlloc for RecyclingAllocator {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if ENGAGED.load(Ordering::Relaxed) {
            if let Some(class) = class_of(layout) {
                let block = take(class);
                if !block.is_null() {
                    return block;
                }
            }
            SYSTEM.fetch_add(1, Ordering::Relaxed);
        }
        // SAFETY: same contract as the caller's.
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        if in_region(ptr as usize) {
            give(ptr, class_of_block(layout));
        } else {
            // SAFETY: a block the system allocator gave out, with its layout.
            unsafe { System.dealloc(ptr, layout) }
        }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: the caller guarantees new_size, rounded to align, does not overflow.
        let new_layout = unsafe { Layout::from_size_align_unchecked(new_size, layout.align()) };
        let ours = in_region(ptr as usize);
        if ours && class_of(new_layout) == Some(class_of_block(layout)) {
            return ptr;
        }
        if !ours && !ENGAGED.load(Ordering::Relaxed) {
            // SAFETY: a system block, resized by the system allocator.
            return unsafe { System.realloc(ptr, layout, new_size) };
        }
        // SAFETY: same contract as alloc's.
        let fresh = unsafe { self.alloc(new_layout) };
        if !fresh.is_null() {
            // SAFETY: both blocks hold at least the smaller size and do not overlap.
            unsafe {
                std::ptr::copy_nonoverlapping(ptr, fresh, layout.size().min(new_size));
                self.dealloc(ptr, layout);
            }
        }
        fresh
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classes_cover_size_and_alignment() {
        let l = |s, a| Layout::from_size_align(s, a).unwrap();
        assert_eq!(class_of(l(1, 1)), Some(4));
        assert_eq!(class_of(l(16, 8)), Some(4));
        assert_eq!(class_of(l(17, 8)), Some(5));
        assert_eq!(class_of(l(8, 128)), Some(7));
        assert_eq!(class_of(l(3000, 4096)), Some(12));
        assert_eq!(class_of(l(64, 8192)), None);
        assert_eq!(class_of(l(1 << 30, 64)), Some(30));
        assert_eq!(class_of(l((1 << 30) + 1, 64)), None);
    }
}
