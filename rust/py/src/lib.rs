//! `tsuika._native`: the Python face of tsuika-core. This file only registers;
//! each binding module mirrors one core module.

use pyo3::prelude::*;

mod args;
mod batch;
mod bucket;
mod errors;
mod hash;
mod prep;
mod probe;

#[pymodule]
fn _native(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add("DEFAULT_MAX_PIXELS", tsuika_core::decode::DEFAULT_MAX_PIXELS)?;
    errors::register(m)?;
    probe::register(m)?;
    bucket::register(m)?;
    batch::register(m)?;
    prep::register(m)?;
    hash::register(m)?;
    Ok(())
}
