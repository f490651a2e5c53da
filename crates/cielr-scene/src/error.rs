//! The error type of `cielr-scene`.

use std::path::PathBuf;

/// Everything that can go wrong when loading or running a perception model.
#[derive(Debug, thiserror::Error)]
pub enum SceneError {
    /// A file could not be read.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// A JSON file (config, preprocessor config, index) could not be parsed.
    #[error("JSON error in {context}: {source}")]
    Json {
        /// What was being parsed.
        context: String,
        /// The parser's error.
        #[source]
        source: serde_json::Error,
    },
    /// A configuration value is missing, out of range or unsupported.
    #[error("invalid config ({context}): {message}")]
    Config {
        /// Which configuration (file or section).
        context: String,
        /// What is wrong with it.
        message: String,
    },
    /// A safetensors file is malformed.
    #[error("safetensors file {path}: {message}")]
    Safetensors {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        message: String,
    },
    /// A tensor the model needs is not in the checkpoint.
    #[error("tensor `{name}` is missing from the checkpoint {checkpoint}")]
    MissingTensor {
        /// The tensor's full name, e.g. `vision_model.post_layernorm.weight`.
        name: String,
        /// The checkpoint's file(s).
        checkpoint: String,
    },
    /// A tensor has another shape than the config implies.
    #[error("tensor `{name}` has shape {actual:?}, but the config implies {expected:?}")]
    TensorShape {
        /// The tensor's full name.
        name: String,
        /// The shape the config implies.
        expected: Vec<usize>,
        /// The shape in the checkpoint.
        actual: Vec<usize>,
    },
    /// A tensor is stored in a dtype that cannot be converted to f32.
    #[error("tensor `{name}` has unsupported dtype {dtype} (supported: F32, F16, BF16, F64)")]
    TensorDtype {
        /// The tensor's full name.
        name: String,
        /// The dtype in the checkpoint.
        dtype: String,
    },
    /// The caller's input does not fit the model (shape, token ids, image size).
    #[error("invalid input: {0}")]
    InvalidInput(String),
    /// A model's output could not be used: NaN or infinite values (an f16 overflow, or bad
    /// weights), or a failed read-back.
    #[error(transparent)]
    ModelOutput(#[from] cielr_core::backend::ReadBackError),
    /// An image could not be decoded.
    #[error("image error ({context}): {source}")]
    Image {
        /// What was being done.
        context: String,
        /// The codec's error.
        #[source]
        source: image::ImageError,
    },
    /// The tokenizer could not be loaded or failed to encode.
    #[error("tokenizer ({context}): {message}")]
    Tokenizer {
        /// What was being done.
        context: String,
        /// The tokenizer library's message.
        message: String,
    },
}

/// Result alias for `cielr-scene`.
pub type Result<T, E = SceneError> = std::result::Result<T, E>;

impl SceneError {
    /// Wraps an I/O error with the path involved.
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        SceneError::Io {
            path: path.into(),
            source,
        }
    }

    /// Wraps a JSON error with what was being parsed.
    pub fn json(context: impl Into<String>, source: serde_json::Error) -> Self {
        SceneError::Json {
            context: context.into(),
            source,
        }
    }

    /// A configuration error.
    pub fn config(context: impl Into<String>, message: impl Into<String>) -> Self {
        SceneError::Config {
            context: context.into(),
            message: message.into(),
        }
    }
}

impl From<SceneError> for cielr_core::CoreError {
    fn from(e: SceneError) -> Self {
        cielr_core::CoreError::Model(e.to_string())
    }
}

impl From<cielr_core::weights::WeightsError> for SceneError {
    fn from(e: cielr_core::weights::WeightsError) -> Self {
        use cielr_core::weights::WeightsError as W;
        match e {
            W::Io { path, source } => SceneError::io(path, source),
            W::Json { path, source } => SceneError::json(path.display().to_string(), source),
            W::Config { context, message } => SceneError::config(context, message),
            W::Safetensors { path, message } => SceneError::Safetensors { path, message },
            W::MissingTensor { name, checkpoint } => SceneError::MissingTensor { name, checkpoint },
            W::TensorShape {
                name,
                expected,
                actual,
            } => SceneError::TensorShape {
                name,
                expected,
                actual,
            },
            W::TensorDtype { name, dtype } => SceneError::TensorDtype { name, dtype },
        }
    }
}
