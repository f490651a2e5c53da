//! The error type of the evaluation runner, loaders and reports.

use std::path::PathBuf;

use cielr_core::CoreError;

/// Everything that can go wrong while loading a benchmark, running it or writing reports.
#[derive(Debug, thiserror::Error)]
pub enum EvalError {
    /// The dataset as a whole cannot be read (missing index file, malformed JSON).
    #[error("dataset {path}: {message}")]
    Dataset {
        /// The file or folder at fault.
        path: PathBuf,
        /// What is wrong and what to do.
        message: String,
    },
    /// One sample cannot be used (bad path, missing or undecodable file); the run goes on.
    #[error("sample {id}: {message}")]
    Sample {
        /// The sample id.
        id: String,
        /// What is wrong.
        message: String,
    },
    /// The run's settings are inconsistent (a stage without the component it needs, a bad
    /// shard, an output folder from another run).
    #[error("{0}")]
    Config(String),
    /// A report file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// A report file could not be parsed.
    #[error("{path}: {message}")]
    Report {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
    /// An error from the core library (image decoding, metrics, pipeline stages).
    #[error(transparent)]
    Core(#[from] CoreError),
}

impl EvalError {
    /// Wraps an I/O error with the path involved.
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        EvalError::Io {
            path: path.into(),
            source,
        }
    }

    /// A per-sample error.
    pub fn sample(id: impl Into<String>, message: impl Into<String>) -> Self {
        EvalError::Sample {
            id: id.into(),
            message: message.into(),
        }
    }

    /// A dataset-level error.
    pub fn dataset(path: impl Into<PathBuf>, message: impl Into<String>) -> Self {
        EvalError::Dataset {
            path: path.into(),
            message: message.into(),
        }
    }
}

/// Result alias for `cielr-eval`'s runner, loaders and reports.
pub type EvalResult<T> = std::result::Result<T, EvalError>;
