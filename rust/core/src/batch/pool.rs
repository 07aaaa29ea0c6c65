//! Output buffers kept across batches.
//!
//! A batch of 8 pictures at 576x448 is a 25 MB float buffer (100 MB at
//! 1024x1024). Allocated fresh for every batch, the allocator maps it anew,
//! every page faults in and is zeroed by the kernel on first touch, and it is
//! unmapped again when the array dies: at web sizes that cost a measurable
//! share of the batch (benches/data_feed.py). A buffer handed back here is
//! reused by the next batch of the same or a smaller size, pages already in.
//!
//! The pool keeps at most [`MAX_IDLE_BUFFERS`] idle buffers and
//! [`MAX_IDLE_BYTES`] of them; beyond that the oldest go back to the
//! allocator. A taken buffer holds stale values from an earlier batch: the
//! caller overwrites every element.

use std::sync::Mutex;

/// Idle buffers kept at most (a loader with prefetch 2 has about 3 alive).
pub const MAX_IDLE_BUFFERS: usize = 4;
/// Idle bytes kept at most, whatever the count.
pub const MAX_IDLE_BYTES: usize = 512 << 20;

/// A pool of `Vec<T>` buffers, reused by size.
pub struct BufferPool<T> {
    idle: Mutex<Vec<Vec<T>>>,
}

impl<T: Copy + Default> BufferPool<T> {
    pub const fn new() -> Self {
        BufferPool {
            idle: Mutex::new(Vec::new()),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<Vec<T>>> {
        self.idle.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A buffer of exactly `len` elements: the smallest idle one with room
    /// (its contents stale), or a fresh zeroed one.
    pub fn take(&self, len: usize) -> Vec<T> {
        let reused = {
            let mut idle = self.lock();
            let best = (0..idle.len())
                .filter(|&i| idle[i].capacity() >= len)
                .min_by_key(|&i| idle[i].capacity());
            best.map(|i| idle.swap_remove(i))
        };
        match reused {
            Some(mut buf) => {
                // Within capacity: no reallocation, the pages stay.
                buf.resize(len, T::default());
                buf
            }
            None => vec![T::default(); len],
        }
    }

    /// Hand `buf` back for a later [`take`](Self::take).
    pub fn give(&self, buf: Vec<T>) {
        if buf.capacity() == 0 {
            return;
        }
        let mut idle = self.lock();
        idle.push(buf);
        let bytes = |v: &Vec<Vec<T>>| v.iter().map(|b| b.capacity() * size_of::<T>()).sum::<usize>();
        while idle.len() > MAX_IDLE_BUFFERS || bytes(&idle) > MAX_IDLE_BYTES {
            idle.remove(0);
        }
    }

    /// Number of idle buffers (for tests and diagnostics).
    pub fn idle(&self) -> usize {
        self.lock().len()
    }
}

impl<T: Copy + Default> Default for BufferPool<T> {
    fn default() -> Self {
        Self::new()
    }
}

/// The pool `load_batch` (float32) output comes from.
pub static F32: BufferPool<f32> = BufferPool::new();
/// The pool `load_batch_u8` output comes from.
pub static U8: BufferPool<u8> = BufferPool::new();

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_given_buffer_is_reused_in_place() {
        let pool = BufferPool::<f32>::new();
        let mut a = pool.take(1000);
        assert_eq!(a.len(), 1000);
        assert!(a.iter().all(|&v| v == 0.0));
        a[0] = 7.0;
        let ptr = a.as_ptr();
        pool.give(a);
        let b = pool.take(1000);
        assert_eq!(b.as_ptr(), ptr, "same allocation");
        assert_eq!(b[0], 7.0, "contents are stale, not cleared");
        let smaller = {
            pool.give(b);
            pool.take(10)
        };
        assert_eq!((smaller.len(), smaller.as_ptr()), (10, ptr));
        pool.give(smaller);
        let bigger = pool.take(2000);
        assert_eq!(bigger.len(), 2000);
        assert_ne!(bigger.as_ptr(), ptr, "too small a buffer is not grown");
        assert_eq!(pool.idle(), 1);
    }

    #[test]
    fn idle_buffers_are_capped_by_count_and_bytes() {
        let pool = BufferPool::<u8>::new();
        for _ in 0..MAX_IDLE_BUFFERS + 3 {
            pool.give(vec![0u8; 16]);
        }
        assert_eq!(pool.idle(), MAX_IDLE_BUFFERS);
        let pool = BufferPool::<u8>::new();
        pool.give(vec![0u8; MAX_IDLE_BYTES / 2 + 1]);
        pool.give(vec![0u8; MAX_IDLE_BYTES / 2 + 1]);
        assert_eq!(pool.idle(), 1);
    }
}
