//! Map core errors to named Python exceptions carrying `path` and `kind`.
//!
//! The `ImageError` family derives from both `ValueError` and
//! `tsuika.errors.TsuikaError` (the base of every error tsuika raises for a
//! user), so the CLI turns it into a one-line message like any other. A type
//! with two bases cannot come from `create_exception!`; the classes are made
//! once, at module init, by calling `type(name, bases, namespace)`.

use pyo3::exceptions::{
    PyFileNotFoundError, PyIsADirectoryError, PyOSError, PyPermissionError, PyValueError,
};
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::{PyDict, PyTuple, PyType};
use tsuika_core::Error;

/// The exception classes of the family, created on first use.
struct ImageErrors {
    image: Py<PyType>,
    empty: Py<PyType>,
    unsupported: Py<PyType>,
    corrupt: Py<PyType>,
    bomb: Py<PyType>,
}

static IMAGE_ERRORS: PyOnceLock<ImageErrors> = PyOnceLock::new();

/// `type(name, bases, {"__doc__": doc, "__module__": "tsuika._native"})`.
fn new_type(py: Python<'_>, name: &str, bases: &[&Bound<'_, PyAny>], doc: &str) -> PyResult<Py<PyType>> {
    let namespace = PyDict::new(py);
    namespace.set_item("__doc__", doc)?;
    namespace.set_item("__module__", "tsuika._native")?;
    let bases = PyTuple::new(py, bases)?;
    let made = py.get_type::<PyType>().call1((name, bases, namespace))?;
    Ok(made.cast_into::<PyType>()?.unbind())
}

fn image_errors(py: Python<'_>) -> PyResult<&'static ImageErrors> {
    IMAGE_ERRORS.get_or_try_init(py, || {
        let tsuika_error = py.import("tsuika.errors")?.getattr("TsuikaError")?;
        let value_error = py.get_type::<PyValueError>();
        let image = new_type(
            py,
            "ImageError",
            &[value_error.as_any(), &tsuika_error],
            "An image file that cannot be used; `path` names it, `kind` says why.",
        )?;
        let base = image.bind(py).clone().into_any();
        let sub = |name: &str, doc: &str| new_type(py, name, &[&base], doc);
        Ok(ImageErrors {
            empty: sub("EmptyImageError", "The file holds zero bytes.")?,
            unsupported: sub(
                "UnsupportedImageError",
                "The bytes are not an image in a supported format.",
            )?,
            corrupt: sub("CorruptImageError", "The image data is truncated or corrupt.")?,
            bomb: sub(
                "DecompressionBombError",
                "The image claims more pixels than the limit allows.",
            )?,
            image,
        })
    })
}

pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    let types = image_errors(m.py())?;
    m.add("ImageError", &types.image)?;
    m.add("EmptyImageError", &types.empty)?;
    m.add("UnsupportedImageError", &types.unsupported)?;
    m.add("CorruptImageError", &types.corrupt)?;
    m.add("DecompressionBombError", &types.bomb)?;
    Ok(())
}

/// The Python exception for a core error.
pub fn to_py(err: Error) -> PyErr {
    let msg = err.to_string();
    let path = err.path().map(|p| p.to_string_lossy().into_owned());
    let kind = err.kind();
    Python::attach(|py| {
        let family = |pick: fn(&ImageErrors) -> &Py<PyType>| match image_errors(py) {
            Ok(types) => PyErr::from_type(pick(types).bind(py).clone(), msg.clone()),
            Err(failed) => failed,
        };
        let py_err = match &err {
            Error::Io { source, .. } => match source.kind() {
                std::io::ErrorKind::NotFound => PyFileNotFoundError::new_err(msg),
                std::io::ErrorKind::PermissionDenied => PyPermissionError::new_err(msg),
                std::io::ErrorKind::IsADirectory => PyIsADirectoryError::new_err(msg),
                _ => PyOSError::new_err(msg),
            },
            Error::Empty { .. } => family(|t| &t.empty),
            Error::Unsupported { .. } => family(|t| &t.unsupported),
            Error::Corrupt { .. } => family(|t| &t.corrupt),
            Error::TooLarge { .. } => family(|t| &t.bomb),
            Error::InvalidArgument(_) => return PyValueError::new_err(msg),
        };
        let value = py_err.value(py);
        // Attribute setting on a fresh exception object cannot fail in practice;
        // if it did, the exception is still raised with its message.
        let _ = value.setattr("path", path);
        let _ = value.setattr("kind", kind);
        py_err
    })
}
