//! The component's allocator: free lists of small blocks in front of
//! wasi-libc's malloc (dlmalloc).
//!
//! Every accepted point owns a string of a few hundred bytes, freed when
//! its batch is acknowledged. dlmalloc keeps chunks of that size in sorted
//! trees and coalesces on every free, which showed as 5–7% of the sink's
//! CPU. Here a freed block of up to `MAX_POOLED` bytes goes onto the list of
//! its size class and the next allocation of that class takes it back: a
//! push and a pop. At most `MAX_CACHED` bytes wait in the lists; beyond
//! that blocks go back to dlmalloc, so a change of sizes cannot hoard
//! memory.

use std::alloc::{GlobalAlloc, Layout};
use std::cell::UnsafeCell;
use std::ptr;

/// Size classes are multiples of this.
const GRAIN: usize = 64;
/// Largest block the lists keep; larger ones go straight to the inner
/// allocator.
const MAX_POOLED: usize = 2048;
const CLASSES: usize = MAX_POOLED / GRAIN;
/// Alignment of every pooled block (what dlmalloc gives anyway).
const ALIGN: usize = 16;
/// Bytes the lists may hold at most.
const MAX_CACHED: usize = 2 << 20;

pub struct Pooled<A> {
    inner: A,
    lists: UnsafeCell<Lists>,
}

struct Lists {
    /// Per class, the first free block; each free block's first word
    /// points to the next.
    heads: [*mut u8; CLASSES],
    cached: usize,
}

// SAFETY: the component is single-threaded (wasm32-wasip2 has no threads),
// so the lists are never touched by two threads at once. Natively the type
// is only used in single-threaded tests and never shared.
#[cfg(target_arch = "wasm32")]
unsafe impl<A: Sync> Sync for Pooled<A> {}

impl<A> Pooled<A> {
    pub const fn new(inner: A) -> Self {
        Pooled {
            inner,
            lists: UnsafeCell::new(Lists {
                heads: [ptr::null_mut(); CLASSES],
                cached: 0,
            }),
        }
    }
}

/// The size class of `layout`, if its blocks are pooled.
#[inline(always)]
fn class(layout: Layout) -> Option<usize> {
    (layout.size() <= MAX_POOLED && layout.align() <= ALIGN)
        .then(|| layout.size().saturating_sub(1) / GRAIN)
}

/// The layout of a block of class `c`.
#[inline(always)]
fn block(c: usize) -> Layout {
    // SAFETY: (c + 1) * GRAIN is at most MAX_POOLED and ALIGN a power of
    // two, so the layout is valid.
    unsafe { Layout::from_size_align_unchecked((c + 1) * GRAIN, ALIGN) }
}

// SAFETY: every pointer handed out is a live block of the inner allocator
// at least as large and as aligned as asked for (pooled ones: of their
// class's layout, which covers every size and alignment that maps to the
// class); a block is in at most one list and never handed out twice.
unsafe impl<A: GlobalAlloc> GlobalAlloc for Pooled<A> {
    #[inline]
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let Some(c) = class(layout) else {
            return self.inner.alloc(layout);
        };
        let lists = &mut *self.lists.get();
        let head = lists.heads[c];
        if head.is_null() {
            return self.inner.alloc(block(c));
        }
        lists.heads[c] = head.cast::<*mut u8>().read();
        lists.cached -= block(c).size();
        head
    }

    #[inline]
    unsafe fn dealloc(&self, p: *mut u8, layout: Layout) {
        let Some(c) = class(layout) else {
            return self.inner.dealloc(p, layout);
        };
        let lists = &mut *self.lists.get();
        let size = block(c).size();
        if lists.cached + size > MAX_CACHED {
            return self.inner.dealloc(p, block(c));
        }
        p.cast::<*mut u8>().write(lists.heads[c]);
        lists.heads[c] = p;
        lists.cached += size;
    }

    unsafe fn realloc(&self, p: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let new = Layout::from_size_align_unchecked(new_size, layout.align());
        match (class(layout), class(new)) {
            (None, None) => self.inner.realloc(p, layout, new_size),
            (Some(a), Some(b)) if a == b => p,
            _ => {
                let q = self.alloc(new);
                if !q.is_null() {
                    ptr::copy_nonoverlapping(p, q, layout.size().min(new_size));
                    self.dealloc(p, layout);
                }
                q
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::alloc::System;

    fn layout(size: usize, align: usize) -> Layout {
        Layout::from_size_align(size, align).unwrap()
    }

    #[test]
    fn freed_blocks_come_back_for_their_class_only() {
        let pool = Pooled::new(System);
        unsafe {
            let a = pool.alloc(layout(545, 1));
            a.write_bytes(7, 545);
            pool.dealloc(a, layout(545, 1));
            // Same class (513..=576): the same block.
            let b = pool.alloc(layout(520, 8));
            assert_eq!(a, b);
            // Another class: another block.
            let c = pool.alloc(layout(600, 1));
            assert_ne!(c, b);
            assert_eq!(c as usize % ALIGN, 0);
            pool.dealloc(b, layout(520, 8));
            pool.dealloc(c, layout(600, 1));
            assert_eq!((*pool.lists.get()).cached, 576 + 640);
        }
    }

    #[test]
    fn realloc_keeps_the_bytes_across_classes() {
        let pool = Pooled::new(System);
        unsafe {
            let mut p = pool.alloc(layout(10, 1));
            let mut size = 10;
            for k in 0..10 {
                *p.add(k) = k as u8;
            }
            // Within a class, across classes, into and out of the large
            // ones.
            for new in [60, 64, 65, 2048, 2049, 10_000, 3000, 100, 12] {
                p = pool.realloc(p, layout(size, 1), new);
                assert!(!p.is_null());
                for k in 0..10 {
                    assert_eq!(*p.add(k), k as u8, "byte {k} after {size} -> {new}");
                }
                size = new;
            }
            pool.dealloc(p, layout(size, 1));
        }
    }

    #[test]
    fn the_cache_is_bounded() {
        let pool = Pooled::new(System);
        let l = layout(1000, 1);
        unsafe {
            let blocks: Vec<*mut u8> = (0..5000).map(|_| pool.alloc(l)).collect();
            for &b in &blocks {
                pool.dealloc(b, l);
            }
            let cached = (*pool.lists.get()).cached;
            assert!(
                cached <= MAX_CACHED && cached > MAX_CACHED - 1024,
                "{cached}"
            );
            // Large and over-aligned layouts are never pooled.
            let big = pool.alloc(layout(4096, 1));
            pool.dealloc(big, layout(4096, 1));
            let aligned = pool.alloc(layout(64, 64));
            assert_eq!(aligned as usize % 64, 0);
            pool.dealloc(aligned, layout(64, 64));
            assert_eq!((*pool.lists.get()).cached, cached);
            // Drain what is cached, so the test does not leak it.
            for _ in 0..cached / 1024 {
                System.dealloc(pool.alloc(l), block(class(l).unwrap()));
            }
            assert_eq!((*pool.lists.get()).cached, 0);
        }
    }
}
