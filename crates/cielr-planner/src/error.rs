//! The error type of `cielr-planner`.

use std::path::PathBuf;

use cielr_core::CoreError;

/// Everything that can go wrong while loading or running a local language model.
#[derive(Debug, thiserror::Error)]
pub enum PlannerError {
    /// A file could not be opened or read.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// A GGUF file is malformed, truncated or uses something this reader does not support.
    #[error("GGUF file {path}: {message}")]
    Gguf {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
    /// One tensor of a GGUF file cannot be read.
    #[error("GGUF file {path}, tensor {tensor:?}: {message}")]
    GgufTensor {
        /// The file.
        path: PathBuf,
        /// The tensor's name.
        tensor: String,
        /// What is wrong.
        message: String,
    },
    /// A tokenizer could not be built, loaded or run.
    #[error("tokenizer: {0}")]
    Tokenizer(String),
    /// A chat template could not be parsed or rendered.
    #[error("chat template: {0}")]
    ChatTemplate(String),
    /// Constrained decoding failed (for example, no token can continue a valid answer).
    #[error("constrained decoding: {0}")]
    Constraint(String),
    /// A model's weights, configuration or forward pass failed.
    #[error("model: {0}")]
    Model(String),
    /// A served model (an OpenAI-compatible HTTP endpoint) could not be reached, failed or
    /// sent an unusable response; the message gives the HTTP status and the server's words.
    #[error("served model at {url}: {message}")]
    Server {
        /// The endpoint.
        url: String,
        /// What went wrong.
        message: String,
    },
    /// JSON could not be parsed.
    #[error("JSON error in {context}: {source}")]
    Json {
        /// What was being parsed.
        context: String,
        /// The parser's error.
        #[source]
        source: serde_json::Error,
    },
}

impl PlannerError {
    /// Wraps an I/O error with the path involved.
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        PlannerError::Io {
            path: path.into(),
            source,
        }
    }

    /// A GGUF format error for `path`.
    pub fn gguf(path: impl Into<PathBuf>, message: impl Into<String>) -> Self {
        PlannerError::Gguf {
            path: path.into(),
            message: message.into(),
        }
    }
}

impl From<PlannerError> for CoreError {
    fn from(e: PlannerError) -> Self {
        match e {
            PlannerError::Io { path, source } => CoreError::Io { path, source },
            PlannerError::Json { context, source } => CoreError::Json { context, source },
            PlannerError::Tokenizer(_)
            | PlannerError::ChatTemplate(_)
            | PlannerError::Constraint(_)
            | PlannerError::Server { .. } => CoreError::LanguageModel(e.to_string()),
            PlannerError::Gguf { .. }
            | PlannerError::GgufTensor { .. }
            | PlannerError::Model(_) => CoreError::Model(e.to_string()),
        }
    }
}

impl From<cielr_core::weights::WeightsError> for PlannerError {
    fn from(e: cielr_core::weights::WeightsError) -> Self {
        use cielr_core::weights::WeightsError as W;
        match e {
            W::Io { path, source } => PlannerError::io(path, source),
            W::Json { path, source } => PlannerError::Json {
                context: path.display().to_string(),
                source,
            },
            other => PlannerError::Model(other.to_string()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_map_to_core_errors() {
        let e: CoreError = PlannerError::Constraint("no token fits".into()).into();
        assert!(matches!(e, CoreError::LanguageModel(ref m) if m.contains("no token fits")));
        let e: CoreError = PlannerError::GgufTensor {
            path: "m.gguf".into(),
            tensor: "w".into(),
            message: "bad".into(),
        }
        .into();
        assert!(
            matches!(e, CoreError::Model(ref m) if m.contains("m.gguf") && m.contains("\"w\""))
        );
        let e: CoreError = PlannerError::io("x", std::io::Error::other("gone")).into();
        assert!(matches!(e, CoreError::Io { .. }));
    }
}
