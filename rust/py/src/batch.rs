//! Bindings for tsuika_core::batch: `load_batch` (float32 NCHW) and
//! `load_batch_u8` (uint8 NHWC). The buffer is filled with the GIL released
//! and handed to numpy without a copy.

use std::path::PathBuf;

use numpy::{IntoPyArray, PyArray4, PyArrayMethods};
use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use tsuika_core::batch::{self, BatchOptions, Flip};
use tsuika_core::decode::DEFAULT_MAX_PIXELS;

use crate::args::{decode_options, random_crop};
use crate::errors::to_py;

/// `False`/`True`, `"random"`, or one bool per picture.
fn flip_mode(obj: &Bound<'_, PyAny>, n: usize) -> PyResult<Flip> {
    if let Ok(s) = obj.extract::<String>() {
        return match s.as_str() {
            "random" => Ok(Flip::Random),
            other => Err(PyValueError::new_err(format!(
                "flip must be a bool, \"random\" or a sequence of bools, got {other:?}"
            ))),
        };
    }
    if let Ok(b) = obj.extract::<bool>() {
        return Ok(if b { Flip::All } else { Flip::Off });
    }
    let flags: Vec<bool> = obj
        .extract()
        .map_err(|_| PyValueError::new_err("flip must be a bool, \"random\" or a sequence of bools"))?;
    if flags.len() != n {
        return Err(PyValueError::new_err(format!(
            "flip has {} flags for {n} paths",
            flags.len()
        )));
    }
    Ok(Flip::PerImage(flags))
}

#[allow(clippy::too_many_arguments)]
fn options(
    n: usize,
    flip: &Bound<'_, PyAny>,
    crop: &str,
    threads: Option<usize>,
    seed: u64,
    epoch: u64,
    indices: Option<Vec<u64>>,
    rotation: f32,
    color_jitter: f32,
    max_pixels: u64,
    background: (u8, u8, u8),
) -> PyResult<BatchOptions> {
    if let Some(ix) = &indices {
        if ix.len() != n {
            return Err(PyValueError::new_err(format!(
                "indices has {} entries for {n} paths",
                ix.len()
            )));
        }
    }
    if !(0.0..=180.0).contains(&rotation) {
        return Err(PyValueError::new_err(format!(
            "rotation must be in [0, 180] degrees, got {rotation}"
        )));
    }
    if !(0.0..=1.0).contains(&color_jitter) {
        return Err(PyValueError::new_err(format!(
            "color_jitter must be in [0, 1], got {color_jitter}"
        )));
    }
    Ok(BatchOptions {
        decode: decode_options(max_pixels, background),
        flip: flip_mode(flip, n)?,
        random_crop: random_crop(crop)?,
        rotation,
        color_jitter,
        seed,
        epoch,
        indices,
        threads,
    })
}

/// One `#[pyfunction]` per output type: same arguments, the core's `$fill`
/// into a `$elem` buffer of `$shape`, handed to numpy without a copy.
#[rustfmt::skip] // rustfmt re-indents the attribute's continuation lines on every run
macro_rules! batch_function {
    ($name:ident, $elem:ty, $fill:path, |$n:ident, $h:ident, $w:ident| $shape:expr) => {
        #[pyfunction]
        #[pyo3(signature = (paths, width, height, *, flip = None, crop = "center", threads = None,
            seed = 0, epoch = 0, indices = None, rotation = 0.0, color_jitter = 0.0,
            max_pixels = DEFAULT_MAX_PIXELS, background = (255, 255, 255)))]
        #[allow(clippy::too_many_arguments)]
        fn $name<'py>(
            py: Python<'py>,
            paths: Vec<PathBuf>,
            width: u32,
            height: u32,
            flip: Option<&Bound<'py, PyAny>>,
            crop: &str,
            threads: Option<usize>,
            seed: u64,
            epoch: u64,
            indices: Option<Vec<u64>>,
            rotation: f32,
            color_jitter: f32,
            max_pixels: u64,
            background: (u8, u8, u8),
        ) -> PyResult<Bound<'py, PyArray4<$elem>>> {
            let no = pyo3::types::PyBool::new(py, false).to_owned().into_any();
            let $n = paths.len();
            let opts = options(
                $n,
                flip.unwrap_or(&no),
                crop,
                threads,
                seed,
                epoch,
                indices,
                rotation,
                color_jitter,
                max_pixels,
                background,
            )?;
            let ($w, $h) = (width as usize, height as usize);
            let mut buf = vec![<$elem>::default(); $n * 3 * $w * $h];
            py.detach(|| $fill(&paths, width, height, &opts, &mut buf))
                .map_err(to_py)?;
            buf.into_pyarray(py).reshape($shape)
        }
    };
}

batch_function!(load_batch, f32, batch::load_batch_f32, |n, h, w| [n, 3, h, w]);
batch_function!(load_batch_u8, u8, batch::load_batch_u8, |n, h, w| [n, h, w, 3]);

pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_function(wrap_pyfunction!(load_batch, m)?)?;
    m.add_function(wrap_pyfunction!(load_batch_u8, m)?)?;
    Ok(())
}
