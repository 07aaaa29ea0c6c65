//! Test-only global allocator that counts, per thread, the bytes asked for, so a
//! test can say how much memory a call took without timing it.
//!
//! The counters are thread-local (tests run in parallel threads of one process),
//! const-initialised so reading them never allocates. Work a call hands to other
//! threads is not counted; the guards measured with it run on the caller's thread.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;

struct Counting;

thread_local! {
    static TOTAL: Cell<usize> = const { Cell::new(0) };
    static LARGEST: Cell<usize> = const { Cell::new(0) };
}

fn note(size: usize) {
    // try_with: the thread's counters may already be gone while it shuts down.
    let _ = TOTAL.try_with(|t| t.set(t.get().saturating_add(size)));
    let _ = LARGEST.try_with(|l| l.set(l.get().max(size)));
}

// SAFETY: every call is forwarded unchanged to the system allocator.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        note(layout.size());
        System.alloc(layout)
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        note(layout.size());
        System.alloc_zeroed(layout)
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        note(new_size);
        System.realloc(ptr, layout, new_size)
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        System.dealloc(ptr, layout)
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

/// What this thread allocated while `f` ran.
#[derive(Debug, Clone, Copy)]
pub struct Allocated {
    /// Bytes asked for in all (reallocations count their new size).
    pub total: usize,
    /// The largest single request.
    pub largest: usize,
}

/// Run `f` and report what it allocated on this thread.
pub fn measure<T>(f: impl FnOnce() -> T) -> (T, Allocated) {
    let total = TOTAL.with(Cell::get);
    let largest = LARGEST.with(|l| l.replace(0));
    let out = f();
    let used = Allocated {
        total: TOTAL.with(Cell::get) - total,
        largest: LARGEST.with(|l| l.replace(largest.max(l.get()))),
    };
    (out, used)
}
