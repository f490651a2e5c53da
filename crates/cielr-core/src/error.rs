//! The error type of `cielr-core`.

use std::path::PathBuf;

/// Everything that can go wrong in `cielr-core`.
#[derive(Debug, thiserror::Error)]
pub enum CoreError {
    /// A mask, image or scene has inconsistent dimensions.
    #[error("size mismatch: {0}")]
    SizeMismatch(String),
    /// A COCO RLE string or count list could not be decoded.
    #[error("invalid COCO RLE: {0}")]
    InvalidRle(String),
    /// An SSR file is malformed; the message names the offending object.
    #[error("invalid scene: {0}")]
    InvalidScene(String),
    /// A plan or action is malformed.
    #[error("invalid plan: {0}")]
    InvalidPlan(String),
    /// JSON could not be parsed.
    #[error("JSON error in {context}: {source}")]
    Json {
        /// What was being parsed.
        context: String,
        /// The parser's error.
        #[source]
        source: serde_json::Error,
    },
    /// A file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// An image could not be decoded or encoded.
    #[error("image error ({context}): {source}")]
    Image {
        /// What was being done.
        context: String,
        /// The codec's error.
        #[source]
        source: image::ImageError,
    },
    /// The language model failed or gave an answer that could not be used.
    #[error("language model: {0}")]
    LanguageModel(String),
    /// No language model was configured for a step that needs one.
    #[error("no language model is configured: {0}")]
    NoLanguageModel(String),
    /// The scene builder failed.
    #[error("scene builder: {0}")]
    SceneBuilder(String),
    /// An editor failed or cannot perform the requested action.
    #[error("editor: {0}")]
    Editor(String),
    /// A metric could not be computed.
    #[error("metric: {0}")]
    Metric(String),
    /// The reasoning loop could not produce a plan.
    #[error("planning failed: {0}")]
    Planning(String),
    /// A model or device error.
    #[error("model: {0}")]
    Model(String),
}

/// Result alias for `cielr-core`.
pub type Result<T, E = CoreError> = std::result::Result<T, E>;

impl CoreError {
    /// Wraps a JSON error with what was being parsed.
    pub fn json(context: impl Into<String>, source: serde_json::Error) -> Self {
        CoreError::Json {
            context: context.into(),
            source,
        }
    }

    /// Wraps an I/O error with the path involved.
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        CoreError::Io {
            path: path.into(),
            source,
        }
    }
}
