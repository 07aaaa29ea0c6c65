//! Bindings for tsuika_core::bucket.

use pyo3::prelude::*;
use tsuika_core::bucket::{self, BucketSpec};

use crate::args::resolution;
use crate::errors::to_py;

type Pair = (u32, u32);

fn spec(res: &Bound<'_, PyAny>, min_size: u32, max_size: u32, step: u32) -> PyResult<BucketSpec> {
    Ok(BucketSpec {
        resolution: resolution(res)?,
        min_size,
        max_size,
        step,
    })
}

#[pyfunction]
#[pyo3(signature = (resolution, min_size = 256, max_size = 1024, step = 64))]
fn bucket_table(
    resolution: &Bound<'_, PyAny>,
    min_size: u32,
    max_size: u32,
    step: u32,
) -> PyResult<Vec<Pair>> {
    bucket::bucket_table(&spec(resolution, min_size, max_size, step)?).map_err(to_py)
}

#[pyfunction]
#[pyo3(signature = (sizes, resolution, min_size = 256, max_size = 1024, step = 64, *, no_upscale = false))]
fn assign_buckets(
    py: Python<'_>,
    sizes: Vec<Pair>,
    resolution: &Bound<'_, PyAny>,
    min_size: u32,
    max_size: u32,
    step: u32,
    no_upscale: bool,
) -> PyResult<Vec<(Pair, Pair)>> {
    let spec = spec(resolution, min_size, max_size, step)?;
    let table = bucket::bucket_table(&spec).map_err(to_py)?;
    Ok(py.detach(|| {
        sizes
            .iter()
            .map(|&(w, h)| {
                let c = if no_upscale {
                    bucket::assign_no_upscale(&spec, w, h)
                } else {
                    bucket::assign(&table, w, h)
                };
                (c.bucket, c.resized)
            })
            .collect()
    }))
}

pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_function(wrap_pyfunction!(bucket_table, m)?)?;
    m.add_function(wrap_pyfunction!(assign_buckets, m)?)?;
    Ok(())
}
