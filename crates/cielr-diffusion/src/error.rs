//! The error type of `cielr-diffusion`.

use cielr_core::CoreError;

/// Everything that can go wrong in the editors, the schedulers and the diffusion models.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DiffusionError {
    /// The mask does not have the image's size.
    #[error(
        "the mask is {mask_width}x{mask_height} but the image is {image_width}x{image_height}"
    )]
    MaskSize {
        /// Mask width.
        mask_width: u32,
        /// Mask height.
        mask_height: u32,
        /// Image width.
        image_width: u32,
        /// Image height.
        image_height: u32,
    },
    /// The mask covers every pixel, so there is nothing to inpaint from.
    #[error(
        "the mask covers the whole {width}x{height} image: there are no known pixels to inpaint \
         from (use a generative editor, or leave part of the image unmasked)"
    )]
    NothingToInpaintFrom {
        /// Image width.
        width: u32,
        /// Image height.
        height: u32,
    },
    /// No colour could be read from a recolour prompt.
    #[error(
        "no colour found in the prompt {prompt:?}: write a colour name (red, navy, beige, grey, \
         ...), optionally with \"light\" or \"dark\" (\"dark red\", \"make it light blue\"), \
         or a hex code such as \"#1e90ff\" or \"#19f\""
    )]
    UnknownColour {
        /// The prompt as given.
        prompt: String,
    },
    /// The op needs a generative editor.
    #[error(
        "the classical editor cannot {op} objects: {op} needs a generative editor \
         (--editor sd15 or sd2 with --sd-model); the classical editor supports remove and recolor"
    )]
    Unsupported {
        /// The op's name.
        op: String,
    },
    /// An invalid option value.
    #[error("invalid option: {0}")]
    InvalidOption(String),
    /// An error from `cielr-core` (mask allocation, windows).
    #[error("{0}")]
    Core(String),
    /// A file could not be read.
    #[error("{path}: {message}")]
    Io {
        /// The file.
        path: String,
        /// What went wrong.
        message: String,
    },
    /// A model or scheduler configuration is malformed or unsupported.
    #[error("{context}: {message}")]
    Config {
        /// Where the configuration came from (a file, a model name).
        context: String,
        /// What is wrong with it.
        message: String,
    },
    /// A safetensors file is malformed.
    #[error("{path}: malformed safetensors: {message}")]
    Safetensors {
        /// The file.
        path: String,
        /// What is wrong with it.
        message: String,
    },
    /// A tensor the model needs is not in the checkpoint.
    #[error("tensor `{name}` is missing from {checkpoint}")]
    MissingTensor {
        /// The tensor's full name.
        name: String,
        /// The checkpoint's file(s).
        checkpoint: String,
    },
    /// A checkpoint tensor has the wrong shape for the configuration.
    #[error("tensor `{name}` has shape {actual:?}, expected {expected:?}")]
    TensorShape {
        /// The tensor's full name.
        name: String,
        /// The shape the configuration implies.
        expected: Vec<usize>,
        /// The shape in the checkpoint.
        actual: Vec<usize>,
    },
    /// A checkpoint tensor has an unsupported element type.
    #[error("tensor `{name}` has unsupported dtype {dtype} (f32, f16, bf16 and f64 are read)")]
    TensorDtype {
        /// The tensor's full name.
        name: String,
        /// The dtype found.
        dtype: String,
    },
    /// An input tensor has the wrong shape.
    #[error("{what}: {message}")]
    InputShape {
        /// Which input.
        what: String,
        /// What is wrong with its shape.
        message: String,
    },
    /// A model's output could not be used: NaN or infinite values (an f16 overflow, or bad
    /// weights), or a failed read-back.
    #[error(transparent)]
    ModelOutput(#[from] cielr_core::backend::ReadBackError),
    /// A scheduler was used out of order (no `set_timesteps`, a timestep not in the schedule,
    /// stepping past the end, no noise left to inject).
    #[error("scheduler: {0}")]
    Scheduler(String),
    /// The text encoder or its tokenizer failed (an error from `cielr-scene`).
    #[error("text encoder: {0}")]
    TextEncoder(String),
    /// An editor was asked for an op it does not perform.
    #[error("the {editor} editor does not {op} objects: {hint}")]
    EditorUnsupported {
        /// The editor's name.
        editor: String,
        /// The op's name.
        op: String,
        /// Which editor to use instead.
        hint: String,
    },
}

impl DiffusionError {
    /// A [`DiffusionError::Config`].
    pub fn config(context: impl Into<String>, message: impl Into<String>) -> Self {
        DiffusionError::Config {
            context: context.into(),
            message: message.into(),
        }
    }

    /// A [`DiffusionError::InputShape`].
    pub fn input_shape(what: impl Into<String>, message: impl Into<String>) -> Self {
        DiffusionError::InputShape {
            what: what.into(),
            message: message.into(),
        }
    }
}

/// Result alias for `cielr-diffusion`.
pub type Result<T, E = DiffusionError> = std::result::Result<T, E>;

impl From<DiffusionError> for CoreError {
    fn from(e: DiffusionError) -> Self {
        CoreError::Editor(e.to_string())
    }
}

impl From<cielr_scene::SceneError> for DiffusionError {
    fn from(e: cielr_scene::SceneError) -> Self {
        DiffusionError::TextEncoder(e.to_string())
    }
}

impl From<CoreError> for DiffusionError {
    fn from(e: CoreError) -> Self {
        DiffusionError::Core(e.to_string())
    }
}

impl From<cielr_core::weights::WeightsError> for DiffusionError {
    fn from(e: cielr_core::weights::WeightsError) -> Self {
        use cielr_core::weights::WeightsError as W;
        match e {
            W::Io { path, source } => DiffusionError::Io {
                path: path.display().to_string(),
                message: source.to_string(),
            },
            W::Json { path, source } => {
                DiffusionError::config(path.display().to_string(), source.to_string())
            }
            W::Config { context, message } => DiffusionError::Config { context, message },
            W::Safetensors { path, message } => DiffusionError::Safetensors {
                path: path.display().to_string(),
                message,
            },
            W::MissingTensor { name, checkpoint } => {
                DiffusionError::MissingTensor { name, checkpoint }
            }
            W::TensorShape {
                name,
                expected,
                actual,
            } => DiffusionError::TensorShape {
                name,
                expected,
                actual,
            },
            W::TensorDtype { name, dtype } => DiffusionError::TensorDtype { name, dtype },
        }
    }
}
