//! Bindings for tsuika_core::probe and ::decode.

use std::path::PathBuf;

use numpy::{IntoPyArray, PyArray3, PyArrayMethods};
use pyo3::prelude::*;
use pyo3::types::PyDict;
use tsuika_core::decode::{decode_file, DEFAULT_MAX_PIXELS};
use tsuika_core::probe::{probe_file, ImageInfo};

use crate::args::decode_options;
use crate::errors::to_py;

pub fn info_into_dict(py: Python<'_>, info: &ImageInfo, d: &Bound<'_, PyDict>) -> PyResult<()> {
    let _ = py;
    d.set_item("format", info.format.name())?;
    d.set_item("width", info.width)?;
    d.set_item("height", info.height)?;
    d.set_item("orientation", info.orientation)?;
    d.set_item("has_alpha", info.has_alpha)?;
    Ok(())
}

#[pyfunction]
#[pyo3(signature = (path, *, max_pixels = DEFAULT_MAX_PIXELS))]
fn probe<'py>(py: Python<'py>, path: PathBuf, max_pixels: u64) -> PyResult<Bound<'py, PyDict>> {
    let opts = decode_options(max_pixels, (255, 255, 255));
    let info = py.detach(|| probe_file(&path, &opts)).map_err(to_py)?;
    let d = PyDict::new(py);
    info_into_dict(py, &info, &d)?;
    Ok(d)
}

#[pyfunction]
#[pyo3(signature = (path, *, max_pixels = DEFAULT_MAX_PIXELS, background = (255, 255, 255)))]
fn decode<'py>(
    py: Python<'py>,
    path: PathBuf,
    max_pixels: u64,
    background: (u8, u8, u8),
) -> PyResult<Bound<'py, PyArray3<u8>>> {
    let opts = decode_options(max_pixels, background);
    let decoded = py.detach(|| decode_file(&path, &opts)).map_err(to_py)?;
    let (w, h) = (decoded.image.width() as usize, decoded.image.height() as usize);
    decoded.image.into_raw().into_pyarray(py).reshape([h, w, 3])
}

pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_function(wrap_pyfunction!(probe, m)?)?;
    m.add_function(wrap_pyfunction!(decode, m)?)?;
    Ok(())
}
