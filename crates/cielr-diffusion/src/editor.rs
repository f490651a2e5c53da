//! [`ClassicalEditor`]: the non-neural [`Editor`] (removal by inpainting, recolouring).

use async_trait::async_trait;
use cielr_core::imageops::paste_inside;
use cielr_core::{EditOp, EditRequest, Editor};
use image::RgbImage;

use crate::colour::parse_colour;
use crate::error::{DiffusionError, Result};
use crate::inpaint::{check_mask, InpaintMethod};
use crate::patchmatch::{inpaint_patchmatch, PatchMatchOptions};
use crate::recolor::{recolor, RecolorOptions};
use crate::telea::{inpaint_telea, TeleaOptions};

/// Edits without a neural network: `remove` by inpainting (PatchMatch by default, or Telea)
/// and `recolor` in CIELAB. `replace` and `add` need a generative editor and are refused.
///
/// Pixels outside the mask are always bit-identical to the input.
///
/// ```
/// use cielr_core::{BBox, EditAction, EditOp, EditRequest, Editor, Mask};
/// use cielr_diffusion::ClassicalEditor;
/// use image::{Rgb, RgbImage};
///
/// let image = RgbImage::from_pixel(32, 24, Rgb([200, 40, 40]));
/// let mask = Mask::from_box(32, 24, &BBox::new(8.0, 8.0, 16.0, 16.0)).unwrap();
/// let action = EditAction { op: EditOp::Recolor, targets: vec![0], prompt: "blue".into() };
/// let editor = ClassicalEditor::default();
/// let out = pollster::block_on(editor.edit(EditRequest {
///     image: &image, mask: &mask, action: &action, seed: 0,
/// })).unwrap();
/// let p = out.get_pixel(10, 10).0;
/// assert!(p[2] > p[0] && p[2] > p[1]);
/// assert_eq!(out.get_pixel(0, 0), image.get_pixel(0, 0));
/// ```
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ClassicalEditor {
    method: InpaintMethod,
    telea: TeleaOptions,
    patchmatch: PatchMatchOptions,
    recolor: RecolorOptions,
}

impl ClassicalEditor {
    /// The editor with the default inpainter ([`InpaintMethod::default`]) and default options.
    pub fn new() -> Self {
        Self::default()
    }

    /// The editor removing objects with `method`.
    pub fn with_method(method: InpaintMethod) -> Self {
        ClassicalEditor {
            method,
            ..Self::default()
        }
    }

    /// The inpainting method used for `remove`.
    pub fn method(&self) -> InpaintMethod {
        self.method
    }

    /// Replaces the Telea options (used when the method is [`InpaintMethod::Telea`]).
    pub fn telea_options(mut self, options: TeleaOptions) -> Self {
        self.telea = options;
        self
    }

    /// Replaces the PatchMatch options (used when the method is [`InpaintMethod::PatchMatch`]).
    pub fn patchmatch_options(mut self, options: PatchMatchOptions) -> Self {
        self.patchmatch = options;
        self
    }

    /// Replaces the recolouring options.
    pub fn recolor_options(mut self, options: RecolorOptions) -> Self {
        self.recolor = options;
        self
    }

    /// Runs one edit synchronously (what [`Editor::edit`] does, without the async wrapper and
    /// with this crate's error type).
    pub fn edit_sync(&self, request: EditRequest<'_>) -> Result<RgbImage> {
        let (image, mask) = (request.image, request.mask);
        if !self.supports(request.action.op) {
            return Err(DiffusionError::Unsupported {
                op: request.action.op.to_string(),
            });
        }
        check_mask(image, mask)?;
        if mask.is_empty() {
            return Ok(image.clone());
        }
        let edited = match request.action.op {
            EditOp::Remove => match self.method {
                InpaintMethod::Telea => inpaint_telea(image, mask, &self.telea)?,
                InpaintMethod::PatchMatch => {
                    inpaint_patchmatch(image, mask, &self.patchmatch, request.seed)?
                }
            },
            EditOp::Recolor => {
                let colour = parse_colour(&request.action.prompt)?;
                recolor(image, mask, colour.rgb, &self.recolor)?
            }
            op @ (EditOp::Replace | EditOp::Add) => {
                return Err(DiffusionError::Unsupported { op: op.to_string() })
            }
        };
        // The inpainters and recolouring only write inside the mask already; this makes the
        // guarantee independent of them.
        Ok(paste_inside(image, &edited, mask)?)
    }
}

#[async_trait]
impl Editor for ClassicalEditor {
    fn name(&self) -> String {
        format!("classical ({} removal, lab recolour)", self.method)
    }

    fn supports(&self, op: EditOp) -> bool {
        matches!(op, EditOp::Remove | EditOp::Recolor)
    }

    async fn edit(&self, request: EditRequest<'_>) -> cielr_core::Result<RgbImage> {
        Ok(self.edit_sync(request)?)
    }
}
