//! Map core errors to named Python exceptions carrying `path` and `kind`.

use pyo3::create_exception;
use pyo3::exceptions::{
    PyFileNotFoundError, PyIsADirectoryError, PyOSError, PyPermissionError, PyValueError,
};
use pyo3::prelude::*;
use tsuika_core::Error;

create_exception!(
    _native,
    ImageError,
    PyValueError,
    "An image file that cannot be used; `path` names it, `kind` says why."
);
create_exception!(_native, EmptyImageError, ImageError, "The file holds zero bytes.");
create_exception!(
    _native,
    UnsupportedImageError,
    ImageError,
    "The bytes are not an image in a supported format."
);
create_exception!(
    _native,
    CorruptImageError,
    ImageError,
    "The image data is truncated or corrupt."
);
create_exception!(
    _native,
    DecompressionBombError,
    ImageError,
    "The image claims more pixels than the limit allows."
);

pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    let py = m.py();
    m.add("ImageError", py.get_type::<ImageError>())?;
    m.add("EmptyImageError", py.get_type::<EmptyImageError>())?;
    m.add("UnsupportedImageError", py.get_type::<UnsupportedImageError>())?;
    m.add("CorruptImageError", py.get_type::<CorruptImageError>())?;
    m.add("DecompressionBombError", py.get_type::<DecompressionBombError>())?;
    Ok(())
}

/// The Python exception for a core error.
pub fn to_py(err: Error) -> PyErr {
    let msg = err.to_string();
    let path = err.path().map(|p| p.to_string_lossy().into_owned());
    let kind = err.kind();
    let py_err = match &err {
        Error::Io { source, .. } => match source.kind() {
            std::io::ErrorKind::NotFound => PyFileNotFoundError::new_err(msg),
            std::io::ErrorKind::PermissionDenied => PyPermissionError::new_err(msg),
            std::io::ErrorKind::IsADirectory => PyIsADirectoryError::new_err(msg),
            _ => PyOSError::new_err(msg),
        },
        Error::Empty { .. } => EmptyImageError::new_err(msg),
        Error::Unsupported { .. } => UnsupportedImageError::new_err(msg),
        Error::Corrupt { .. } => CorruptImageError::new_err(msg),
        Error::TooLarge { .. } => DecompressionBombError::new_err(msg),
        Error::InvalidArgument(_) => return PyValueError::new_err(msg),
    };
    Python::attach(|py| {
        let value = py_err.value(py);
        // Attribute setting on a fresh exception object cannot fail in practice;
        // if it did, the exception is still raised with its message.
        let _ = value.setattr("path", path);
        let _ = value.setattr("kind", kind);
    });
    py_err
}
