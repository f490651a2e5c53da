//! `SamConfig` as transformers writes it in a checkpoint's `config.json`: `vision_config`,
//! `prompt_encoder_config`, `mask_decoder_config`, with transformers' defaults for absent keys
//! (those of facebook/sam-vit-huge).

use std::path::Path;

use serde::Deserialize;

use crate::error::{Result, SceneError};

mod defaults {
    pub fn vision_hidden() -> usize {
        768
    }
    pub fn output_channels() -> usize {
        256
    }
    pub fn vision_layers() -> usize {
        12
    }
    pub fn vision_heads() -> usize {
        12
    }
    pub fn channels() -> usize {
        3
    }
    pub fn image_size() -> usize {
        1024
    }
    pub fn patch_size() -> usize {
        16
    }
    pub fn gelu() -> String {
        "gelu".into()
    }
    pub fn relu() -> String {
        "relu".into()
    }
    pub fn eps() -> f64 {
        1e-6
    }
    pub fn yes() -> bool {
        true
    }
    pub fn mlp_ratio() -> f64 {
        4.0
    }
    pub fn window() -> usize {
        14
    }
    pub fn global_attn() -> Vec<usize> {
        vec![2, 5, 8, 11]
    }
    pub fn pos_feats() -> usize {
        128
    }
    pub fn prompt_hidden() -> usize {
        256
    }
    pub fn mask_in() -> usize {
        16
    }
    pub fn point_embeddings() -> usize {
        4
    }
    pub fn dec_mlp() -> usize {
        2048
    }
    pub fn dec_layers() -> usize {
        2
    }
    pub fn dec_heads() -> usize {
        8
    }
    pub fn downsample() -> usize {
        2
    }
    pub fn multimask() -> usize {
        3
    }
    pub fn iou_depth() -> usize {
        3
    }
}

/// `SamVisionConfig`: the ViT image encoder.
#[derive(Debug, Clone, Deserialize)]
pub struct SamVisionConfig {
    /// Transformer width.
    #[serde(default = "defaults::vision_hidden")]
    pub hidden_size: usize,
    /// Channels of the neck's output (the image embedding).
    #[serde(default = "defaults::output_channels")]
    pub output_channels: usize,
    /// Number of transformer blocks.
    #[serde(default = "defaults::vision_layers")]
    pub num_hidden_layers: usize,
    /// Attention heads per block.
    #[serde(default = "defaults::vision_heads")]
    pub num_attention_heads: usize,
    /// Input channels.
    #[serde(default = "defaults::channels")]
    pub num_channels: usize,
    /// Side of the (square, padded) input image.
    #[serde(default = "defaults::image_size")]
    pub image_size: usize,
    /// Side of a patch.
    #[serde(default = "defaults::patch_size")]
    pub patch_size: usize,
    /// MLP activation (only `gelu` is supported).
    #[serde(default = "defaults::gelu")]
    pub hidden_act: String,
    /// LayerNorm epsilon.
    #[serde(default = "defaults::eps")]
    pub layer_norm_eps: f64,
    /// Whether the qkv projection has a bias.
    #[serde(default = "defaults::yes")]
    pub qkv_bias: bool,
    /// MLP width as a multiple of `hidden_size` (when `mlp_dim` is absent).
    #[serde(default = "defaults::mlp_ratio")]
    pub mlp_ratio: f64,
    /// MLP width.
    #[serde(default)]
    pub mlp_dim: Option<usize>,
    /// Whether an absolute position embedding is added after the patch embedding.
    #[serde(default = "defaults::yes")]
    pub use_abs_pos: bool,
    /// Whether attention adds decomposed relative position terms.
    #[serde(default = "defaults::yes")]
    pub use_rel_pos: bool,
    /// Side of the attention windows (0: global attention everywhere).
    #[serde(default = "defaults::window")]
    pub window_size: usize,
    /// Blocks with global attention.
    #[serde(default = "defaults::global_attn")]
    pub global_attn_indexes: Vec<usize>,
    /// Random Fourier features of the shared positional embedding (half of its width).
    #[serde(default = "defaults::pos_feats")]
    pub num_pos_feats: usize,
}

impl SamVisionConfig {
    /// The MLP width (`mlp_dim`, or `hidden_size * mlp_ratio`).
    pub fn mlp_dim(&self) -> usize {
        self.mlp_dim
            .unwrap_or((self.hidden_size as f64 * self.mlp_ratio) as usize)
    }

    /// Side of the patch grid.
    pub fn grid(&self) -> usize {
        self.image_size / self.patch_size
    }
}

/// `SamPromptEncoderConfig`.
#[derive(Debug, Clone, Deserialize)]
pub struct SamPromptEncoderConfig {
    /// Width of the prompt embeddings (equals the vision `output_channels`).
    #[serde(default = "defaults::prompt_hidden")]
    pub hidden_size: usize,
    /// Side of the model's input image.
    #[serde(default = "defaults::image_size")]
    pub image_size: usize,
    /// Patch side (the embedding grid is `image_size / patch_size`).
    #[serde(default = "defaults::patch_size")]
    pub patch_size: usize,
    /// Channels of the mask-prompt embedding network.
    #[serde(default = "defaults::mask_in")]
    pub mask_input_channels: usize,
    /// Number of point-type embeddings (4: negative, positive, box corners).
    #[serde(default = "defaults::point_embeddings")]
    pub num_point_embeddings: usize,
    /// LayerNorm epsilon of the mask-prompt network.
    #[serde(default = "defaults::eps")]
    pub layer_norm_eps: f64,
    /// Activation of the mask-prompt network (only `gelu` is supported).
    #[serde(default = "defaults::gelu")]
    pub hidden_act: String,
}

impl SamPromptEncoderConfig {
    /// Side of the image-embedding grid.
    pub fn image_embedding_size(&self) -> usize {
        self.image_size / self.patch_size
    }
}

/// `SamMaskDecoderConfig`.
#[derive(Debug, Clone, Deserialize)]
pub struct SamMaskDecoderConfig {
    /// Transformer width.
    #[serde(default = "defaults::prompt_hidden")]
    pub hidden_size: usize,
    /// MLP activation of the two-way blocks (only `relu` is supported).
    #[serde(default = "defaults::relu")]
    pub hidden_act: String,
    /// MLP width of the two-way blocks.
    #[serde(default = "defaults::dec_mlp")]
    pub mlp_dim: usize,
    /// Number of two-way blocks.
    #[serde(default = "defaults::dec_layers")]
    pub num_hidden_layers: usize,
    /// Attention heads.
    #[serde(default = "defaults::dec_heads")]
    pub num_attention_heads: usize,
    /// Width reduction of the cross attentions.
    #[serde(default = "defaults::downsample")]
    pub attention_downsample_rate: usize,
    /// Masks predicted per prompt in multimask mode.
    #[serde(default = "defaults::multimask")]
    pub num_multimask_outputs: usize,
    /// Layers of the IoU head.
    #[serde(default = "defaults::iou_depth")]
    pub iou_head_depth: usize,
    /// Width of the IoU head.
    #[serde(default = "defaults::prompt_hidden")]
    pub iou_head_hidden_dim: usize,
    /// LayerNorm epsilon of the two-way blocks.
    #[serde(default = "defaults::eps")]
    pub layer_norm_eps: f64,
}

/// `SamConfig`: the three sub-configs.
#[derive(Debug, Clone, Deserialize)]
pub struct SamConfig {
    /// Image encoder.
    pub vision_config: SamVisionConfig,
    /// Prompt encoder.
    pub prompt_encoder_config: SamPromptEncoderConfig,
    /// Mask decoder.
    pub mask_decoder_config: SamMaskDecoderConfig,
}

impl SamConfig {
    /// Reads a checkpoint's `config.json`.
    pub fn from_file(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let text = std::fs::read_to_string(path).map_err(|e| SceneError::io(path, e))?;
        let config: SamConfig = serde_json::from_str(&text)
            .map_err(|e| SceneError::json(path.display().to_string(), e))?;
        config.validate()?;
        Ok(config)
    }

    /// Checks the values the port relies on.
    pub fn validate(&self) -> Result<()> {
        let v = &self.vision_config;
        let p = &self.prompt_encoder_config;
        let m = &self.mask_decoder_config;
        let err = |ctx: &str, msg: String| Err(SceneError::config(ctx, msg));
        if v.patch_size == 0 || v.image_size == 0 || !v.image_size.is_multiple_of(v.patch_size) {
            return err(
                "vision_config",
                format!(
                    "image_size {} is not a multiple of patch_size {}",
                    v.image_size, v.patch_size
                ),
            );
        }
        if v.num_attention_heads == 0 || !v.hidden_size.is_multiple_of(v.num_attention_heads) {
            return err(
                "vision_config",
                format!(
                    "{} heads do not divide hidden_size {}",
                    v.num_attention_heads, v.hidden_size
                ),
            );
        }
        if v.hidden_act != "gelu" {
            return err(
                "vision_config",
                format!("hidden_act `{}` is not supported (gelu)", v.hidden_act),
            );
        }
        if m.hidden_act != "relu" {
            return err(
                "mask_decoder_config",
                format!("hidden_act `{}` is not supported (relu)", m.hidden_act),
            );
        }
        if p.hidden_size != v.output_channels || m.hidden_size != v.output_channels {
            return err(
                "prompt_encoder_config",
                format!(
                    "prompt/decoder hidden_size {}/{} differ from vision output_channels {}",
                    p.hidden_size, m.hidden_size, v.output_channels
                ),
            );
        }
        if 2 * v.num_pos_feats != p.hidden_size {
            return err(
                "vision_config",
                format!(
                    "2 * num_pos_feats {} != prompt hidden_size {}",
                    v.num_pos_feats, p.hidden_size
                ),
            );
        }
        if p.image_embedding_size() != v.grid() || p.image_size != v.image_size {
            return err(
                "prompt_encoder_config",
                format!(
                    "image_size/patch_size {}/{} do not match the vision config's {}/{}",
                    p.image_size, p.patch_size, v.image_size, v.patch_size
                ),
            );
        }
        if p.num_point_embeddings < 4 {
            return err(
                "prompt_encoder_config",
                format!("num_point_embeddings {} < 4", p.num_point_embeddings),
            );
        }
        if m.attention_downsample_rate == 0
            || m.num_attention_heads == 0
            || !(m.hidden_size / m.attention_downsample_rate).is_multiple_of(m.num_attention_heads)
            || !m.hidden_size.is_multiple_of(8)
        {
            return err(
                "mask_decoder_config",
                format!(
                    "hidden_size {} / downsample {} not divisible into {} heads (or not a multiple of 8)",
                    m.hidden_size, m.attention_downsample_rate, m.num_attention_heads
                ),
            );
        }
        if m.iou_head_depth < 2 {
            return err(
                "mask_decoder_config",
                format!("iou_head_depth {} < 2", m.iou_head_depth),
            );
        }
        Ok(())
    }
}
