//! Bindings for tsuika_core::hash.

use std::path::PathBuf;

use pyo3::prelude::*;
use tsuika_core::decode::DEFAULT_MAX_PIXELS;
use tsuika_core::prep;

use crate::args::decode_options;
use crate::errors::to_py;

fn hashes(py: Python<'_>, path: PathBuf, max_pixels: u64) -> PyResult<(u64, u64)> {
    let opts = decode_options(max_pixels, (255, 255, 255));
    let r = py
        .detach(|| prep::scan_file(&path, &opts, false, true))
        .map_err(to_py)?;
    Ok((r.dhash.unwrap_or(0), r.phash.unwrap_or(0)))
}

#[pyfunction]
#[pyo3(signature = (path, *, max_pixels = DEFAULT_MAX_PIXELS))]
fn dhash(py: Python<'_>, path: PathBuf, max_pixels: u64) -> PyResult<u64> {
    Ok(hashes(py, path, max_pixels)?.0)
}

#[pyfunction]
#[pyo3(signature = (path, *, max_pixels = DEFAULT_MAX_PIXELS))]
fn phash(py: Python<'_>, path: PathBuf, max_pixels: u64) -> PyResult<u64> {
    Ok(hashes(py, path, max_pixels)?.1)
}

#[pyfunction]
fn hamming(a: u64, b: u64) -> u32 {
    tsuika_core::hash::hamming(a, b)
}

pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_function(wrap_pyfunction!(dhash, m)?)?;
    m.add_function(wrap_pyfunction!(phash, m)?)?;
    m.add_function(wrap_pyfunction!(hamming, m)?)?;
    Ok(())
}
