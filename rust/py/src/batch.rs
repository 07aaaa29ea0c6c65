//! Bindings for tsuika_core::batch: `load_batch` (float32 NCHW) and
//! `load_batch_u8` (uint8 NHWC). The buffer comes from the core's buffer
//! pool, is filled with the GIL released and handed to numpy without a copy;
//! it goes back to the pool when the last array viewing it dies.
//! `with_info=True` adds an int64 [B, 4] array of (original_h, original_w,
//! crop_top, crop_left) per picture, SDXL's size conditioning.

use std::path::PathBuf;

use numpy::ndarray::{ArrayView, Dimension, IntoDimension};
use numpy::{Element, PyArray, PyArrayMethods};
use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use pyo3::IntoPyObjectExt;
use tsuika_core::batch::pool::{self, BufferPool};
use tsuika_core::batch::{self, BatchOptions, Flip, Placement};
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

/// What a pooled buffer holds, so one Python class can own either kind.
enum Held {
    F32(Vec<f32>),
    U8(Vec<u8>),
}

/// Owns a pooled buffer while numpy arrays view it (it is their base
/// object); hands it back to its pool when the last of them is gone.
#[pyclass(frozen, module = "tsuika._native")]
struct PooledBuffer {
    held: Option<Held>,
}

impl Drop for PooledBuffer {
    fn drop(&mut self) {
        match self.held.take() {
            Some(Held::F32(v)) => pool::F32.give(v),
            Some(Held::U8(v)) => pool::U8.give(v),
            None => {}
        }
    }
}

/// An element type with a pool.
trait Pooled: Element + Copy + Default {
    fn pool() -> &'static BufferPool<Self>;
    fn hold(buf: Vec<Self>) -> Held;
}

impl Pooled for f32 {
    fn pool() -> &'static BufferPool<f32> {
        &pool::F32
    }
    fn hold(buf: Vec<f32>) -> Held {
        Held::F32(buf)
    }
}

impl Pooled for u8 {
    fn pool() -> &'static BufferPool<u8> {
        &pool::U8
    }
    fn hold(buf: Vec<u8>) -> Held {
        Held::U8(buf)
    }
}

/// `buf` as a numpy array of `shape`, owned by a [`PooledBuffer`].
fn pooled_array<'py, T: Pooled, D: IntoDimension>(
    py: Python<'py>,
    buf: Vec<T>,
    shape: D,
) -> PyResult<Bound<'py, PyArray<T, D::Dim>>> {
    let shape = shape.into_dimension();
    if shape.size() != buf.len() {
        return Err(PyValueError::new_err("batch buffer does not match its shape"));
    }
    // SAFETY: `ptr` points at `buf.len()` initialised, aligned elements; the
    // Vec is moved (not reallocated) into `owner`, so its heap data stays put,
    // and `owner` becomes the array's base, which numpy keeps alive as long as
    // any array viewing the data.
    let ptr = buf.as_ptr();
    let owner = Bound::new(
        py,
        PooledBuffer {
            held: Some(T::hold(buf)),
        },
    )?;
    let view = unsafe { ArrayView::from_shape_ptr(shape, ptr) };
    Ok(unsafe { PyArray::borrow_from_array(&view, owner.into_any()) })
}

/// int64 [B, 4]: (original_h, original_w, crop_top, crop_left) per picture.
fn info_array<'py>(py: Python<'py>, placements: &[Placement]) -> PyResult<Bound<'py, PyAny>> {
    let flat: Vec<i64> = placements.iter().flat_map(Placement::row).collect();
    let info = numpy::PyArray1::from_vec(py, flat).reshape([placements.len(), 4])?;
    Ok(info.into_any())
}

/// One `#[pyfunction]` per output type: same arguments, the core's `$fill`
/// into a `$elem` buffer of `$shape`, handed to numpy without a copy.
#[rustfmt::skip] // rustfmt re-indents the attribute's continuation lines on every run
macro_rules! batch_function {
    ($name:ident, $elem:ty, $fill:path, |$n:ident, $h:ident, $w:ident| $shape:expr) => {
        #[pyfunction]
        #[pyo3(signature = (paths, width, height, *, flip = None, crop = "center", threads = None,
            seed = 0, epoch = 0, indices = None, rotation = 0.0, color_jitter = 0.0,
            max_pixels = DEFAULT_MAX_PIXELS, background = (255, 255, 255), with_info = false))]
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
            with_info: bool,
        ) -> PyResult<Bound<'py, PyAny>> {
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
            let mut buf = <$elem as Pooled>::pool().take($n * 3 * $w * $h);
            let filled = py.detach(|| $fill(&paths, width, height, &opts, &mut buf));
            let placements = match filled {
                Ok(p) => p,
                Err(e) => {
                    <$elem as Pooled>::pool().give(buf);
                    return Err(to_py(e));
                }
            };
            let pixels = pooled_array(py, buf, $shape)?.into_any();
            if with_info {
                (pixels, info_array(py, &placements)?).into_bound_py_any(py)
            } else {
                Ok(pixels)
            }
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
