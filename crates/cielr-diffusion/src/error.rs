//! The error type of `cielr-diffusion`.

use cielr_core::CoreError;

/// Everything that can go wrong in the classical editors.
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
         (sd15/sd2, not yet available); the classical editor supports remove and recolor"
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
}

/// Result alias for `cielr-diffusion`.
pub type Result<T, E = DiffusionError> = std::result::Result<T, E>;

impl From<DiffusionError> for CoreError {
    fn from(e: DiffusionError) -> Self {
        CoreError::Editor(e.to_string())
    }
}

impl From<CoreError> for DiffusionError {
    fn from(e: CoreError) -> Self {
        DiffusionError::Core(e.to_string())
    }
}
