//! Argument conversions shared by the binding modules.

use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use tsuika_core::decode::DecodeOptions;

/// `int` or `(width, height)` for a resolution.
pub fn resolution(obj: &Bound<'_, PyAny>) -> PyResult<(u32, u32)> {
    if let Ok(side) = obj.extract::<u32>() {
        return Ok((side, side));
    }
    obj.extract::<(u32, u32)>().map_err(|_| {
        PyValueError::new_err("resolution must be an int or a (width, height) pair of positive ints")
    })
}

pub fn decode_options(max_pixels: u64, background: (u8, u8, u8)) -> DecodeOptions {
    DecodeOptions {
        max_pixels,
        background: [background.0, background.1, background.2],
    }
}

/// `"center"` or `"random"`.
pub fn random_crop(crop: &str) -> PyResult<bool> {
    match crop {
        "center" => Ok(false),
        "random" => Ok(true),
        other => Err(PyValueError::new_err(format!(
            "crop must be \"center\" or \"random\", got {other:?}"
        ))),
    }
}
