//! tsuika-core: the data engine behind `tsuika._native`.
//!
//! Plain Rust with no Python in it: decode and probe images, build and assign
//! kohya-style aspect-ratio buckets, resize and crop into a bucket, augment
//! deterministically, assemble float batches in parallel, and hash pictures
//! for near-duplicate detection. The binding crate (`rust/py`) only converts
//! arguments, releases the GIL and maps [`Error`] to Python exceptions.

pub mod augment;
pub mod batch;
pub mod bucket;
pub mod decode;
pub mod error;
pub mod format;
pub mod hash;
pub mod prep;
pub mod probe;
pub mod resize;

pub use error::{Error, Result};
