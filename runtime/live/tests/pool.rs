//! The recycling allocator under load: blocks of every class, alignment and thread, contents intact, memory reused.

use std::alloc::{GlobalAlloc, Layout};

use cavsync_live::pool::{self, RecyclingAllocator};

#[global_allocator]
static GLOBAL: RecyclingAllocator = RecyclingAllocator;

/// A deterministic byte for block `i` at offset `j`.
fn byte(i: usize, j: usize) -> u8 {
    (i.wrapping_mul(31) ^ j.wrapping_mul(7)) as u8
}

#[test]
fn blocks_are_aligned_intact_and_recycled_across_threads() {
    let before = pool::stats();
    assert!(!before.engaged);
    pool::engage().unwrap();
    let engaged = pool::stats();
    assert!(engaged.engaged);

    let round = |seed: usize| {
        let mut held: Vec<Vec<u8>> = Vec::new();
        let mut aligned = Vec::new();
        for i in 0..400 {
            let size = 1 + (i * 977 + seed * 131) % 70_000;
            let mut v = Vec::with_capacity(size);
            v.extend((0..size).map(|j| byte(i, j)));
            held.push(v);
            let align = 1usize << (i % 13);
            let layout = Layout::from_size_align(size, align).unwrap();
            // SAFETY: a non-zero size layout; freed below with the same layout.
            let p = unsafe { GLOBAL.alloc(layout) };
            assert!(!p.is_null());
            assert_eq!(p as usize % align, 0, "alignment {align}");
            // SAFETY: p holds size bytes.
            unsafe { std::ptr::write_bytes(p, 0xA5, size) };
            aligned.push((p, layout));
        }
        // Growth through realloc keeps the contents.
        let mut grown = vec![7u8; 10];
        for n in 0..20 {
            grown.extend(std::iter::repeat_n(n as u8, 1000 * n));
        }
        assert_eq!(&grown[..10], &[7u8; 10]);
        for (i, v) in held.iter().enumerate() {
            assert!(
                v.iter().enumerate().all(|(j, b)| *b == byte(i, j)),
                "block {i}"
            );
        }
        for (p, layout) in aligned {
            // SAFETY: allocated above with this layout.
            unsafe {
                assert!((0..layout.size()).all(|k| *p.add(k) == 0xA5));
                GLOBAL.dealloc(p, layout);
            }
        }
    };
    // Four threads at once: blocks move between threads' frees and allocations.
    for _ in 0..3 {
        std::thread::scope(|s| {
            for t in 0..4 {
                s.spawn(move || round(t));
            }
        });
    }
    let shared = pool::stats();
    assert!(shared.carved > 0 && shared.reused > 0, "{shared:?}");
    // One thread repeating its pattern: once warm, every request is served by a recycled block.
    round(9);
    let warm = pool::stats();
    round(9);
    round(9);
    let end = pool::stats();
    assert_eq!(end.fresh_since(&warm), 0, "{warm:?} -> {end:?}");
    assert!(end.reused - warm.reused >= 2 * 800, "{warm:?} -> {end:?}");
    // Requests the pool does not serve go to the system allocator and come back to it.
    let big = Layout::from_size_align(64, 8192).unwrap();
    // SAFETY: a valid layout, freed just after.
    unsafe {
        let p = GLOBAL.alloc(big);
        assert_eq!(p as usize % 8192, 0);
        GLOBAL.dealloc(p, big);
    }
    assert_eq!(pool::stats().system, end.system + 1);
}
