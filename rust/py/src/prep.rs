//! Bindings for tsuika_core::prep: `scan` (validate many files, never stop at
//! the first problem) and `export_images` (bucket-sized copies, atomic).

use std::path::PathBuf;

use pyo3::prelude::*;
use pyo3::types::PyDict;
use rayon::prelude::*;
use tsuika_core::batch::in_pool;
use tsuika_core::decode::DEFAULT_MAX_PIXELS;
use tsuika_core::prep;
use tsuika_core::resize::Crop;

use crate::args::{decode_options, random_crop};
use crate::errors::to_py;
use crate::probe::info_into_dict;

#[pyfunction]
#[pyo3(signature = (paths, *, max_pixels = DEFAULT_MAX_PIXELS, full_decode = true, hashes = false, threads = None))]
fn scan<'py>(
    py: Python<'py>,
    paths: Vec<PathBuf>,
    max_pixels: u64,
    full_decode: bool,
    hashes: bool,
    threads: Option<usize>,
) -> PyResult<Vec<Bound<'py, PyDict>>> {
    let opts = decode_options(max_pixels, (255, 255, 255));
    let results = py
        .detach(|| {
            in_pool(threads, || {
                paths
                    .par_iter()
                    .map(|p| prep::scan_file(p, &opts, full_decode, hashes))
                    .collect::<Vec<_>>()
            })
        })
        .map_err(to_py)?;
    paths
        .iter()
        .zip(results)
        .map(|(path, result)| {
            let d = PyDict::new(py);
            d.set_item("path", path)?;
            match result {
                Ok(report) => {
                    d.set_item("ok", true)?;
                    info_into_dict(py, &report.info, &d)?;
                    d.set_item("dhash", report.dhash)?;
                    d.set_item("phash", report.phash)?;
                    d.set_item("error", py.None())?;
                    d.set_item("kind", py.None())?;
                }
                Err(e) => {
                    d.set_item("ok", false)?;
                    d.set_item("kind", e.kind())?;
                    d.set_item("error", e.to_string())?;
                }
            }
            Ok(d)
        })
        .collect()
}

type ExportItem = (PathBuf, PathBuf, u32, u32);

#[pyfunction]
#[pyo3(signature = (items, *, quality = 95, crop = "center", max_pixels = DEFAULT_MAX_PIXELS,
    background = (255, 255, 255), threads = None))]
fn export_images(
    py: Python<'_>,
    items: Vec<ExportItem>,
    quality: u8,
    crop: &str,
    max_pixels: u64,
    background: (u8, u8, u8),
    threads: Option<usize>,
) -> PyResult<Vec<Option<String>>> {
    if !(1..=100).contains(&quality) {
        return Err(pyo3::exceptions::PyValueError::new_err(format!(
            "quality must be in 1..=100, got {quality}"
        )));
    }
    let random = random_crop(crop)?;
    let opts = decode_options(max_pixels, background);
    py.detach(|| {
        in_pool(threads, || {
            items
                .par_iter()
                .enumerate()
                .map(|(i, (src, dst, w, h))| {
                    // A random crop for export is drawn once per item, reproducibly.
                    let at = if random {
                        let d = tsuika_core::augment::draw(
                            &tsuika_core::augment::AugmentConfig {
                                random_crop: true,
                                ..Default::default()
                            },
                            0,
                            0,
                            i as u64,
                        );
                        Crop::At(d.crop.0, d.crop.1)
                    } else {
                        Crop::Center
                    };
                    prep::export_file(src, dst, (*w, *h), at, quality, &opts)
                        .err()
                        .map(|e| e.to_string())
                })
                .collect()
        })
    })
    .map_err(to_py)
}

pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_function(wrap_pyfunction!(scan, m)?)?;
    m.add_function(wrap_pyfunction!(export_images, m)?)?;
    Ok(())
}
