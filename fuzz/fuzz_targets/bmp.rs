//! Probe and decode arbitrary bytes as Bmp (see `tsuika_fuzz` for the guards).
#![no_main]

use libfuzzer_sys::fuzz_target;
use tsuika_core::probe::Format;
use tsuika_fuzz::{probe_and_decode, LimitAlloc};

#[global_allocator]
static ALLOC: LimitAlloc = LimitAlloc;

fuzz_target!(|data: &[u8]| probe_and_decode(Format::Bmp, data));
