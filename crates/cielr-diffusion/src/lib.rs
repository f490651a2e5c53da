//! `cielr-diffusion`: the editors of cielr (complex image editing via LLM reasoning).
//!
//! Two families of editing live here.
//!
//! The generative models of Stable Diffusion inpainting, ported to Burn and checked against
//! diffusers on random checkpoints (`tools/parity/diffusers_*`): the schedulers
//! ([`schedulers`]: DDIM, PNDM, Euler, Euler ancestral, DPM-Solver++), the VAE
//! ([`vae::AutoencoderKl`]) and the UNet ([`unet::UNet2DConditionModel`], 9 input channels
//! for inpainting), joined with CLIP's text encoder (from `cielr-scene`) in the inpainting
//! pipeline [`SdInpaintPipeline`] (diffusers' `StableDiffusionInpaintPipeline`) and the
//! generative editor [`StableDiffusionInpaintEditor`] (replace, add); and LaMa ([`lama`]:
//! big-lama's Fourier-convolution generator, its FFTs in [`fft`], the removal editor
//! [`LamaEditor`]).
//!
//! The classical, non-neural editing, behind [`ClassicalEditor`]:
//!
//! * **removal** by inpainting, with Telea's fast marching method ([`inpaint_telea`]) or a
//!   multi-scale PatchMatch exemplar inpainter ([`inpaint_patchmatch`], the default: it
//!   copies texture into large holes where Telea blurs; see `docs/classical-editing.md`);
//! * **recolouring** in CIELAB that keeps each pixel's lightness, so shading and texture
//!   survive ([`recolor()`]), with the target read from the prompt ([`parse_colour`]).
//!
//! Both inpainters work on a window around the mask only, and every operation returns the
//! pixels outside the mask bit-identical.
//!
//! ```
//! use cielr_core::{BBox, Mask};
//! use cielr_diffusion::{inpaint, InpaintMethod};
//! use image::{Rgb, RgbImage};
//!
//! let image = RgbImage::from_fn(48, 32, |x, _| Rgb([(x * 5) as u8, 90, 160]));
//! let hole = Mask::from_box(48, 32, &BBox::new(20.0, 10.0, 28.0, 20.0)).unwrap();
//! let filled = inpaint(&image, &hole, InpaintMethod::Telea, 0).unwrap();
//! let p = filled.get_pixel(24, 15).0;
//! assert!((p[0] as i32 - 120).abs() <= 12 && p[1] == 90 && p[2] == 160);
//! ```

#![warn(missing_docs)]

pub mod blocks;
mod canvas;
pub mod colour;
pub mod editor;
pub mod error;
pub mod fft;
pub mod inpaint;
pub mod lama;
pub mod patchmatch;
pub mod recolor;
mod rng;
pub mod schedulers;
pub mod sd_editor;
pub mod sd_inpaint;
pub mod sd_tokenizer;
pub mod telea;
pub mod unet;
pub mod vae;
pub mod weights;

pub use colour::{lookup_colour, parse_colour, parse_hex_colour, Lab, NamedColour, COLOUR_NAMES};
pub use editor::ClassicalEditor;
pub use error::{DiffusionError, Result};
pub use inpaint::{inpaint, InpaintMethod};
pub use lama::{LamaConfig, LamaEditor, LamaEditorOptions, LamaInpainter};
pub use patchmatch::{inpaint_patchmatch, PatchMatchOptions};
pub use recolor::{recolor, recolor_prompt, RecolorOptions};
pub use sd_editor::{DenoiseProgress, SdEditorOptions, StableDiffusionInpaintEditor, StepHook};
pub use sd_inpaint::{InpaintOutput, InpaintParams, SdInpaintPipeline, StepProgress};
pub use telea::{inpaint_telea, TeleaOptions};
