//! `Sam2Config` (transformers' `config.json` for `model_type: "sam2"`): the Hiera backbone,
//! the FPN neck, the prompt encoder and the mask decoder. Only what the single-image path
//! reads is parsed; video/memory fields are ignored. Defaults are transformers' (the
//! sam2.1-hiera-tiny layout).

use std::path::Path;

use serde::Deserialize;

use crate::error::{Result, SceneError};

fn d_hidden_96() -> usize {
    96
}
fn d_one() -> usize {
    1
}
fn d_three() -> usize {
    3
}
fn d_eps6() -> f64 {
    1e-6
}
fn d_mlp_ratio() -> f64 {
    4.0
}
fn d_pair_1024() -> Vec<usize> {
    vec![1024, 1024]
}
fn d_pair_7() -> Vec<usize> {
    vec![7, 7]
}
fn d_pair_4() -> Vec<usize> {
    vec![4, 4]
}
fn d_pair_3() -> Vec<usize> {
    vec![3, 3]
}
fn d_pair_2() -> Vec<usize> {
    vec![2, 2]
}
fn d_blocks() -> Vec<usize> {
    vec![1, 2, 7, 2]
}
fn d_dims() -> Vec<usize> {
    vec![96, 192, 384, 768]
}
fn d_heads() -> Vec<usize> {
    vec![1, 2, 4, 8]
}
fn d_windows() -> Vec<usize> {
    vec![8, 4, 14, 7]
}
fn d_globals() -> Vec<usize> {
    vec![5, 7, 9]
}
fn d_gelu() -> String {
    "gelu".into()
}

/// An `int` or `[int, int]` config value.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(untagged)]
pub enum IntOrPair {
    /// One value for both axes.
    One(usize),
    /// Per axis (height, width).
    Pair(Vec<usize>),
}

impl IntOrPair {
    /// The (height, width) pair; an error when it is not one or two values.
    pub fn pair(&self, name: &str) -> Result<(usize, usize)> {
        match self {
            IntOrPair::One(v) => Ok((*v, *v)),
            IntOrPair::Pair(v) if v.len() == 2 => Ok((v[0], v[1])),
            IntOrPair::Pair(v) => Err(SceneError::config(
                "sam2 config",
                format!("`{name}` must have two values, got {v:?}"),
            )),
        }
    }
}

/// `Sam2HieraDetConfig` (`vision_config.backbone_config`).
#[derive(Debug, Clone, Deserialize)]
pub struct Sam2HieraConfig {
    /// Stage-0 width (`hidden_size`).
    #[serde(default = "d_hidden_96")]
    pub hidden_size: usize,
    /// Input channels.
    #[serde(default = "d_three")]
    pub num_channels: usize,
    /// Input (height, width).
    #[serde(default = "d_pair_1024")]
    pub image_size: Vec<usize>,
    /// Patch-embedding kernel.
    #[serde(default = "d_pair_7")]
    pub patch_kernel_size: Vec<usize>,
    /// Patch-embedding stride.
    #[serde(default = "d_pair_4")]
    pub patch_stride: Vec<usize>,
    /// Patch-embedding padding.
    #[serde(default = "d_pair_3")]
    pub patch_padding: Vec<usize>,
    /// Query-pooling stride between stages.
    #[serde(default = "d_pair_2")]
    pub query_stride: Vec<usize>,
    /// Size of the interpolated background positional embedding.
    #[serde(default = "d_pair_7")]
    pub window_positional_embedding_background_size: Vec<usize>,
    /// How many stage transitions pool the queries.
    #[serde(default = "d_three")]
    pub num_query_pool_stages: usize,
    /// Blocks per stage.
    #[serde(default = "d_blocks")]
    pub blocks_per_stage: Vec<usize>,
    /// Width per stage.
    #[serde(default = "d_dims")]
    pub embed_dim_per_stage: Vec<usize>,
    /// Attention heads per stage.
    #[serde(default = "d_heads")]
    pub num_attention_heads_per_stage: Vec<usize>,
    /// Attention window per stage.
    #[serde(default = "d_windows")]
    pub window_size_per_stage: Vec<usize>,
    /// Global indices of the blocks with global attention.
    #[serde(default = "d_globals")]
    pub global_attention_blocks: Vec<usize>,
    /// MLP width ratio.
    #[serde(default = "d_mlp_ratio")]
    pub mlp_ratio: f64,
    /// Activation (only `gelu` is supported).
    #[serde(default = "d_gelu")]
    pub hidden_act: String,
    /// LayerNorm epsilon.
    #[serde(default = "d_eps6")]
    pub layer_norm_eps: f64,
}

/// `Sam2VisionConfig` (`vision_config`).
#[derive(Debug, Clone, Deserialize)]
pub struct Sam2VisionConfig {
    /// The Hiera backbone.
    pub backbone_config: Sam2HieraConfig,
    /// Backbone widths, lowest resolution first (the neck's lateral inputs).
    #[serde(default = "d_channel_list")]
    pub backbone_channel_list: Vec<usize>,
    /// (height, width) of the three image-embedding levels, high to low resolution.
    #[serde(default = "d_feature_sizes")]
    pub backbone_feature_sizes: Vec<Vec<usize>>,
    /// FPN width.
    #[serde(default = "d_fpn")]
    pub fpn_hidden_size: usize,
    /// Lateral conv kernel.
    #[serde(default = "d_one")]
    pub fpn_kernel_size: usize,
    /// Lateral conv stride.
    #[serde(default = "d_one")]
    pub fpn_stride: usize,
    /// Lateral conv padding.
    #[serde(default)]
    pub fpn_padding: usize,
    /// Levels that receive the top-down (upsampled) features.
    #[serde(default = "d_top_down")]
    pub fpn_top_down_levels: Vec<usize>,
    /// How many FPN levels are used.
    #[serde(default = "d_three")]
    pub num_feature_levels: usize,
}

fn d_channel_list() -> Vec<usize> {
    vec![768, 384, 192, 96]
}
fn d_feature_sizes() -> Vec<Vec<usize>> {
    vec![vec![256, 256], vec![128, 128], vec![64, 64]]
}
fn d_fpn() -> usize {
    256
}
fn d_top_down() -> Vec<usize> {
    vec![2, 3]
}
fn d_256() -> usize {
    256
}
fn d_16() -> usize {
    16
}
fn d_4() -> usize {
    4
}
fn d_2048() -> usize {
    2048
}
fn d_2() -> usize {
    2
}
fn d_8() -> usize {
    8
}
fn d_true() -> bool {
    true
}
fn d_delta() -> f64 {
    0.05
}
fn d_thresh() -> f64 {
    0.98
}
fn d_img_1024() -> IntOrPair {
    IntOrPair::One(1024)
}
fn d_patch_16() -> IntOrPair {
    IntOrPair::One(16)
}

/// `Sam2PromptEncoderConfig`.
#[derive(Debug, Clone, Deserialize)]
pub struct Sam2PromptEncoderConfig {
    /// Width.
    #[serde(default = "d_256")]
    pub hidden_size: usize,
    /// Model input size.
    #[serde(default = "d_img_1024")]
    pub image_size: IntOrPair,
    /// Input pixels per image-embedding cell.
    #[serde(default = "d_patch_16")]
    pub patch_size: IntOrPair,
    /// Channels of the mask-embedding convs.
    #[serde(default = "d_16")]
    pub mask_input_channels: usize,
    /// Point-embedding table rows.
    #[serde(default = "d_4")]
    pub num_point_embeddings: usize,
    /// LayerNorm epsilon of the mask embedding.
    #[serde(default = "d_eps6")]
    pub layer_norm_eps: f64,
}

/// `Sam2MaskDecoderConfig`.
#[derive(Debug, Clone, Deserialize)]
pub struct Sam2MaskDecoderConfig {
    /// Width.
    #[serde(default = "d_256")]
    pub hidden_size: usize,
    /// Two-way transformer MLP width.
    #[serde(default = "d_2048")]
    pub mlp_dim: usize,
    /// Two-way transformer layers (also the depth of its MLPs, as transformers builds them).
    #[serde(default = "d_2")]
    pub num_hidden_layers: usize,
    /// Attention heads.
    #[serde(default = "d_8")]
    pub num_attention_heads: usize,
    /// Inner-width divisor of the cross attentions.
    #[serde(default = "d_2")]
    pub attention_downsample_rate: usize,
    /// Multimask outputs (mask tokens = this + 1).
    #[serde(default = "d_three")]
    pub num_multimask_outputs: usize,
    /// IoU head depth.
    #[serde(default = "d_three")]
    pub iou_head_depth: usize,
    /// IoU head width.
    #[serde(default = "d_256")]
    pub iou_head_hidden_dim: usize,
    /// Single-mask output falls back to the best multimask output when unstable.
    #[serde(default = "d_true")]
    pub dynamic_multimask_via_stability: bool,
    /// Stability delta.
    #[serde(default = "d_delta")]
    pub dynamic_multimask_stability_delta: f64,
    /// Stability threshold.
    #[serde(default = "d_thresh")]
    pub dynamic_multimask_stability_thresh: f64,
}

/// `Sam2Config`.
#[derive(Debug, Clone, Deserialize)]
pub struct Sam2Config {
    /// Image encoder.
    pub vision_config: Sam2VisionConfig,
    /// Prompt encoder.
    pub prompt_encoder_config: Sam2PromptEncoderConfig,
    /// Mask decoder.
    pub mask_decoder_config: Sam2MaskDecoderConfig,
}

impl Sam2Config {
    /// Reads and validates `config.json`.
    pub fn from_file(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let text = std::fs::read_to_string(path).map_err(|e| SceneError::io(path, e))?;
        let c: Self = serde_json::from_str(&text)
            .map_err(|e| SceneError::json(path.display().to_string(), e))?;
        c.validate()?;
        Ok(c)
    }

    /// Checks the invariants the port relies on.
    pub fn validate(&self) -> Result<()> {
        let err = |m: String| Err(SceneError::config("sam2 config.json", m));
        let b = &self.vision_config.backbone_config;
        let v = &self.vision_config;
        let stages = b.blocks_per_stage.len();
        for (name, len) in [
            ("embed_dim_per_stage", b.embed_dim_per_stage.len()),
            (
                "num_attention_heads_per_stage",
                b.num_attention_heads_per_stage.len(),
            ),
            ("window_size_per_stage", b.window_size_per_stage.len()),
        ] {
            if len != stages {
                return err(format!("{name} has {len} entries for {stages} stages"));
            }
        }
        for pair in [
            &b.image_size,
            &b.patch_kernel_size,
            &b.patch_stride,
            &b.patch_padding,
            &b.query_stride,
            &b.window_positional_embedding_background_size,
        ] {
            if pair.len() != 2 {
                return err(format!("expected two values, got {pair:?}"));
            }
        }
        if b.patch_stride.contains(&0) || b.query_stride.contains(&0) {
            return err("strides must be positive".into());
        }
        if b.patch_stride[0] != b.patch_stride[1]
            || b.patch_kernel_size[0] != b.patch_kernel_size[1]
            || b.patch_padding[0] != b.patch_padding[1]
        {
            return err("non-square patch embedding is not supported".into());
        }
        for (s, (&d, &h)) in b
            .embed_dim_per_stage
            .iter()
            .zip(&b.num_attention_heads_per_stage)
            .enumerate()
        {
            if h == 0 || d % h != 0 {
                return err(format!("stage {s}: width {d} not divisible by {h} heads"));
            }
        }
        if b.hidden_size != b.embed_dim_per_stage[0] {
            return err("hidden_size must equal embed_dim_per_stage[0]".into());
        }
        if b.hidden_act != "gelu" {
            return err(format!("hidden_act {:?} is not supported", b.hidden_act));
        }
        let mut rev = b.embed_dim_per_stage.clone();
        rev.reverse();
        if v.backbone_channel_list != rev {
            return err(format!(
                "backbone_channel_list {:?} must be embed_dim_per_stage reversed",
                v.backbone_channel_list
            ));
        }
        if v.num_feature_levels != 3 || stages < 3 || v.backbone_feature_sizes.len() != 3 {
            return err("the image path needs 3 feature levels".into());
        }
        if v.fpn_kernel_size != 1 || v.fpn_stride != 1 || v.fpn_padding != 0 {
            return err("only 1x1 FPN lateral convs are supported".into());
        }
        let pe = &self.prompt_encoder_config;
        let md = &self.mask_decoder_config;
        if pe.hidden_size != v.fpn_hidden_size || md.hidden_size != v.fpn_hidden_size {
            return err("prompt encoder / mask decoder width must equal fpn_hidden_size".into());
        }
        if !md.hidden_size.is_multiple_of(8)
            || md.num_attention_heads == 0
            || !(md.hidden_size / md.attention_downsample_rate.max(1))
                .is_multiple_of(md.num_attention_heads)
        {
            return err("mask decoder width / heads mismatch".into());
        }
        if !pe.mask_input_channels.is_multiple_of(4) {
            return err("mask_input_channels must be divisible by 4".into());
        }
        let (is, _) = pe.image_size.pair("image_size")?;
        let (ps, _) = pe.patch_size.pair("patch_size")?;
        if ps == 0 || is % ps != 0 {
            return err("prompt encoder image_size must be a multiple of patch_size".into());
        }
        let g = is / ps;
        if v.backbone_feature_sizes[2] != [g, g]
            || v.backbone_feature_sizes[1] != [2 * g, 2 * g]
            || v.backbone_feature_sizes[0] != [4 * g, 4 * g]
        {
            return err(format!(
                "backbone_feature_sizes {:?} do not match a {g}x{g} image embedding",
                v.backbone_feature_sizes
            ));
        }
        Ok(())
    }

    /// The image-embedding grid side (`image_size / patch_size`).
    pub fn grid(&self) -> usize {
        let is = self
            .prompt_encoder_config
            .image_size
            .pair("image_size")
            .map(|p| p.0)
            .unwrap_or(1024);
        let ps = self
            .prompt_encoder_config
            .patch_size
            .pair("patch_size")
            .map(|p| p.0)
            .unwrap_or(16);
        is / ps.max(1)
    }
}
