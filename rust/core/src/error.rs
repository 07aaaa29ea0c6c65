//! The one error type of the data engine. Every variant names the file it is
//! about (where there is one), so that a message shown to a user says which
//! picture is broken and why.

use std::path::PathBuf;

/// Result alias used across the core crate.
pub type Result<T> = std::result::Result<T, Error>;

/// Everything that can go wrong while reading, decoding or preparing an image.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The file could not be opened or read (missing, permission denied, ...).
    #[error("{path}: cannot read file: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The file exists but holds zero bytes.
    #[error("{path}: empty file (zero bytes)")]
    Empty { path: PathBuf },
    /// The bytes are not an image in a format we decode (text, PDF, TIFF, ...).
    #[error("{path}: not a supported image ({detail})")]
    Unsupported { path: PathBuf, detail: String },
    /// The format is recognised but the data is broken (truncated, corrupt).
    #[error("{path}: corrupt or truncated image ({detail})")]
    Corrupt { path: PathBuf, detail: String },
    /// The header claims more pixels than the configured limit (decompression bomb guard).
    #[error("{path}: image is {width}x{height} = {pixels} pixels, over the limit of {limit} (possible decompression bomb)")]
    TooLarge {
        path: PathBuf,
        width: u32,
        height: u32,
        pixels: u64,
        limit: u64,
    },
    /// An argument passed by the caller is invalid (zero size, bad crop name, ...).
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
}

impl Error {
    /// The file this error is about, if any.
    pub fn path(&self) -> Option<&std::path::Path> {
        match self {
            Error::Io { path, .. }
            | Error::Empty { path }
            | Error::Unsupported { path, .. }
            | Error::Corrupt { path, .. }
            | Error::TooLarge { path, .. } => Some(path),
            Error::InvalidArgument(_) => None,
        }
    }

    /// A short, stable name for the kind of problem (used in reports and JSON).
    pub fn kind(&self) -> &'static str {
        match self {
            Error::Io { .. } => "unreadable",
            Error::Empty { .. } => "empty",
            Error::Unsupported { .. } => "unsupported",
            Error::Corrupt { .. } => "corrupt",
            Error::TooLarge { .. } => "too_large",
            Error::InvalidArgument(_) => "invalid_argument",
        }
    }
}
