//! Noise schedulers of Stable Diffusion, ported from diffusers and configured from a diffusers
//! `scheduler_config.json`:
//!
//! | ours | diffusers | notes |
//! |---|---|---|
//! | [`DdimScheduler`] | `DDIMScheduler` | `eta` (default 0) and `clip_sample` supported |
//! | [`PndmScheduler`] | `PNDMScheduler` | PLMS with `skip_prk_steps = true`, as SD uses it |
//! | [`EulerDiscreteScheduler`] | `EulerDiscreteScheduler` | `use_karras_sigmas`, `interpolation_type`, `final_sigmas_type` |
//! | [`EulerAncestralDiscreteScheduler`] | `EulerAncestralDiscreteScheduler` | noise from a [`NoiseSource`] |
//! | [`DpmSolverMultistepScheduler`] | `DPMSolverMultistepScheduler` | `dpmsolver++` (2M, the default), `dpmsolver`, `sde-dpmsolver++`; orders 1-3; `use_karras_sigmas` |
//!
//! Each scheduler reads the keys its diffusers class reads from a [`SchedulerConfig`] and
//! falls back to that class's own defaults for the missing ones, as diffusers' `from_config`
//! does: the same SD-1.5 `scheduler_config.json` gives `leading` timesteps to DDIM and PNDM but
//! `linspace` ones to the Euler and DPM-Solver schedulers, because those are their defaults.
//! Options a scheduler does not implement are rejected with [`DiffusionError::Config`] rather
//! than ignored (for example `thresholding`, `use_beta_sigmas`, PNDM's PRK warm-up).
//!
//! The schedule (betas, cumulative alphas, sigmas) is computed in f32 the way torch does it
//! (f32 `linspace`, a cumulative product accumulated in f64), the timestep arithmetic follows
//! numpy (`round` to even, `arange`, `linspace`, `interp`), and the update rules work on Burn
//! tensors (`Tensor<B, 4>`, any backend) with their scalar coefficients computed in f32 like
//! diffusers' 0-d tensors. Parity with diffusers 0.42 is checked by the `schedulers_parity`
//! test on trajectories written by `tools/parity/diffusers_sched_vae.py`.
//!
//! **Randomness.** Ancestral and SDE schedulers draw noise through a [`NoiseSource`]:
//! [`SeededNoise`] is a seeded, reproducible standard-normal generator (xorshift64* and
//! Box-Muller); it cannot reproduce torch's generator bit for bit, so runs seeded the same way
//! in diffusers and here differ. The parity tests inject torch's noise with [`InjectedNoise`].
//!
//! A denoising loop:
//!
//! ```
//! use cielr_core::backend::CpuBackend;
//! use cielr_diffusion::schedulers::{build_scheduler, SchedulerConfig, SchedulerKind, SeededNoise, NoiseSource};
//!
//! let config = SchedulerConfig::from_json_str(r#"{"beta_start": 0.00085, "beta_end": 0.012,
//!     "beta_schedule": "scaled_linear", "set_alpha_to_one": false, "steps_offset": 1,
//!     "skip_prk_steps": true}"#).unwrap();
//! let mut scheduler = build_scheduler::<CpuBackend>(SchedulerKind::EulerAncestralDiscrete, &config).unwrap();
//! scheduler.set_timesteps(4).unwrap();
//! let device = Default::default();
//! let mut noise = SeededNoise::new(0);
//! let mut latents = noise.noise([1, 4, 8, 8], &device).unwrap() * scheduler.init_noise_sigma();
//! for t in scheduler.timesteps().to_vec() {
//!     let input = scheduler.scale_model_input(latents.clone(), t).unwrap();
//!     let model_output = input * 0.1; // a UNet would run here
//!     latents = scheduler.step(model_output, t, latents, &mut noise).unwrap().prev_sample;
//! }
//! assert_eq!(latents.dims(), [1, 4, 8, 8]);
//! ```

use std::collections::VecDeque;
use std::path::Path;

use burn::tensor::backend::Backend;
use burn::tensor::{Tensor, TensorData};
use serde::Deserialize;

use crate::error::{DiffusionError, Result};
use crate::rng::Rng;

mod ddim;
mod dpm_solver;
mod euler;
mod euler_ancestral;
mod pndm;

pub use ddim::DdimScheduler;
pub use dpm_solver::{DpmAlgorithm, DpmSolverMultistepScheduler, DpmSolverType};
pub use euler::EulerDiscreteScheduler;
pub use euler_ancestral::EulerAncestralDiscreteScheduler;
pub use pndm::PndmScheduler;

// ============================================================================ the trait

/// What one [`Scheduler::step`] returns.
#[derive(Debug, Clone)]
pub struct StepOutput<B: Backend> {
    /// The sample at the next (less noisy) timestep.
    pub prev_sample: Tensor<B, 4>,
    /// The scheduler's estimate of the clean sample, where it computes one (not PNDM).
    pub pred_original_sample: Option<Tensor<B, 4>>,
}

/// A diffusion noise scheduler (diffusers' `SchedulerMixin`), stepping NCHW latents.
///
/// Call [`set_timesteps`](Scheduler::set_timesteps) first, then for each `t` of
/// [`timesteps`](Scheduler::timesteps): run the model on
/// [`scale_model_input`](Scheduler::scale_model_input)`(sample, t)` and pass its output to
/// [`step`](Scheduler::step). A scheduler holds the state of one denoising run;
/// `set_timesteps` resets it.
pub trait Scheduler<B: Backend>: Send {
    /// The diffusers class this scheduler ports (`"DDIMScheduler"`, ...).
    fn class_name(&self) -> &'static str;

    /// Sets the number of inference steps and computes the timesteps (and sigmas); resets
    /// the state of any previous run.
    fn set_timesteps(&mut self, num_inference_steps: usize) -> Result<()>;

    /// The timesteps to run the model at, in order (empty before `set_timesteps`). Integers
    /// for DDIM, PNDM and DPM-Solver; f32 values (possibly fractional) for the Euler schedulers.
    fn timesteps(&self) -> &[f64];

    /// The sigmas of the Euler and DPM-Solver schedulers (one more than the timesteps, the
    /// last being the final sigma); `None` for DDIM and PNDM.
    fn sigmas(&self) -> Option<&[f32]>;

    /// The standard deviation of the initial noise: multiply unit Gaussian latents by it.
    fn init_noise_sigma(&self) -> f64;

    /// Scales the model input at timestep `t` (divides by `sqrt(sigma^2 + 1)` for the Euler
    /// schedulers, the identity otherwise).
    fn scale_model_input(&mut self, sample: Tensor<B, 4>, t: f64) -> Result<Tensor<B, 4>>;

    /// One denoising step from `sample` at timestep `t` given the model's output there.
    /// Schedulers that add noise draw it from `noise`.
    fn step(
        &mut self,
        model_output: Tensor<B, 4>,
        t: f64,
        sample: Tensor<B, 4>,
        noise: &mut dyn NoiseSource<B>,
    ) -> Result<StepOutput<B>>;

    /// Noises clean samples to the level of timestep `t` (the forward process), as
    /// img2img and inpainting with `strength < 1` need.
    fn add_noise(
        &self,
        original: Tensor<B, 4>,
        noise: Tensor<B, 4>,
        t: f64,
    ) -> Result<Tensor<B, 4>>;

    /// Starts the run at index `begin_index` of the timesteps (diffusers' `set_begin_index`,
    /// for `strength < 1`); schedulers that look the step up from `t` use this index instead.
    fn set_begin_index(&mut self, begin_index: usize);

    /// The number of training timesteps.
    fn num_train_timesteps(&self) -> usize;
}

// ============================================================================ noise

/// Where schedulers get Gaussian noise.
pub trait NoiseSource<B: Backend> {
    /// A tensor of independent standard-normal values.
    fn noise(&mut self, shape: [usize; 4], device: &B::Device) -> Result<Tensor<B, 4>>;
}

/// Seeded standard-normal noise: xorshift64* (seeded through SplitMix64) and the Box-Muller
/// transform, computed on the CPU, so the same seed gives the same noise on every backend.
/// It does not reproduce torch's generator.
#[derive(Debug, Clone)]
pub struct SeededNoise {
    rng: Rng,
    spare: Option<f64>,
}

impl SeededNoise {
    /// A generator for `seed`.
    pub fn new(seed: u64) -> Self {
        SeededNoise {
            rng: Rng::new(seed),
            spare: None,
        }
    }

    /// The next standard-normal value.
    pub fn next_gaussian(&mut self) -> f64 {
        if let Some(z) = self.spare.take() {
            return z;
        }
        // u1 in (0, 1] so that ln(u1) is finite; u2 in [0, 1).
        let u1 = ((self.rng.next_u64() >> 11) + 1) as f64 / (1u64 << 53) as f64;
        let u2 = (self.rng.next_u64() >> 11) as f64 / (1u64 << 53) as f64;
        let r = (-2.0 * u1.ln()).sqrt();
        let theta = 2.0 * std::f64::consts::PI * u2;
        self.spare = Some(r * theta.sin());
        r * theta.cos()
    }

    /// `n` standard-normal values as f32.
    pub fn gaussian_vec(&mut self, n: usize) -> Vec<f32> {
        (0..n).map(|_| self.next_gaussian() as f32).collect()
    }
}

impl<B: Backend> NoiseSource<B> for SeededNoise {
    fn noise(&mut self, shape: [usize; 4], device: &B::Device) -> Result<Tensor<B, 4>> {
        let n = shape.iter().product();
        Ok(Tensor::from_data(
            TensorData::new(self.gaussian_vec(n), shape),
            device,
        ))
    }
}

/// Noise given in advance, handed out in order (for parity tests against torch's noise, or
/// to replay a run). Asking for more than was given, or for another shape, is an error.
#[derive(Debug, Clone)]
pub struct InjectedNoise<B: Backend> {
    queue: VecDeque<Tensor<B, 4>>,
}

impl<B: Backend> InjectedNoise<B> {
    /// Noise tensors to hand out in order.
    pub fn new(tensors: impl IntoIterator<Item = Tensor<B, 4>>) -> Self {
        InjectedNoise {
            queue: tensors.into_iter().collect(),
        }
    }

    /// How many tensors are left.
    pub fn remaining(&self) -> usize {
        self.queue.len()
    }
}

impl<B: Backend> NoiseSource<B> for InjectedNoise<B> {
    fn noise(&mut self, shape: [usize; 4], _device: &B::Device) -> Result<Tensor<B, 4>> {
        let t = self
            .queue
            .pop_front()
            .ok_or_else(|| DiffusionError::Scheduler("no injected noise left".into()))?;
        if t.dims() != shape {
            return Err(DiffusionError::Scheduler(format!(
                "injected noise has shape {:?}, the step needs {shape:?}",
                t.dims()
            )));
        }
        Ok(t)
    }
}

/// A noise source that must not be used: for deterministic schedulers (DDIM with `eta = 0`,
/// PNDM, Euler, DPM-Solver++), where asking for noise is an error.
#[derive(Debug, Clone, Copy, Default)]
pub struct NoNoise;

impl<B: Backend> NoiseSource<B> for NoNoise {
    fn noise(&mut self, shape: [usize; 4], _device: &B::Device) -> Result<Tensor<B, 4>> {
        Err(DiffusionError::Scheduler(format!(
            "this step needs noise of shape {shape:?} but was given NoNoise"
        )))
    }
}

// ============================================================================ config

/// The contents of a diffusers `scheduler_config.json`: every key any of our schedulers
/// reads, all optional (a missing key takes the default of the scheduler built from it).
/// Unknown keys are ignored, as diffusers' `from_config` does.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct SchedulerConfig {
    /// `_class_name`: the scheduler the checkpoint was saved with.
    #[serde(rename = "_class_name")]
    pub class_name: Option<String>,
    /// `num_train_timesteps` (1000).
    pub num_train_timesteps: Option<usize>,
    /// `beta_start` (0.0001).
    pub beta_start: Option<f64>,
    /// `beta_end` (0.02).
    pub beta_end: Option<f64>,
    /// `beta_schedule`: `linear` (default), `scaled_linear` (SD) or `squaredcos_cap_v2`.
    pub beta_schedule: Option<String>,
    /// `trained_betas`: explicit betas, overriding the schedule.
    pub trained_betas: Option<Vec<f64>>,
    /// `prediction_type`: `epsilon` (default), `v_prediction` or `sample`.
    pub prediction_type: Option<String>,
    /// `steps_offset` (0; SD uses 1), added to `leading` timesteps.
    pub steps_offset: Option<usize>,
    /// `set_alpha_to_one`: DDIM / PNDM's final cumulative alpha is 1 (else `alphas_cumprod[0]`).
    pub set_alpha_to_one: Option<bool>,
    /// `timestep_spacing`: `leading`, `trailing` or `linspace` (default per scheduler).
    pub timestep_spacing: Option<String>,
    /// `clip_sample`: DDIM clips the predicted clean sample (default true).
    pub clip_sample: Option<bool>,
    /// `clip_sample_range` (1.0).
    pub clip_sample_range: Option<f64>,
    /// `thresholding` (dynamic thresholding; not supported, must be false).
    pub thresholding: Option<bool>,
    /// `skip_prk_steps`: PNDM runs PLMS only (must be true here; SD sets it).
    pub skip_prk_steps: Option<bool>,
    /// `use_karras_sigmas`: Karras et al.'s sigma spacing (Euler, DPM-Solver).
    pub use_karras_sigmas: Option<bool>,
    /// `use_exponential_sigmas` (not supported, must be false).
    pub use_exponential_sigmas: Option<bool>,
    /// `use_beta_sigmas` (not supported, must be false).
    pub use_beta_sigmas: Option<bool>,
    /// `use_lu_lambdas` (not supported, must be false).
    pub use_lu_lambdas: Option<bool>,
    /// `use_flow_sigmas` (not supported, must be false).
    pub use_flow_sigmas: Option<bool>,
    /// `sigma_min`: Euler's lower Karras sigma (default: the schedule's).
    pub sigma_min: Option<f64>,
    /// `sigma_max`: Euler's upper Karras sigma (default: the schedule's).
    pub sigma_max: Option<f64>,
    /// `interpolation_type`: Euler's sigma interpolation, `linear` (default) or `log_linear`.
    pub interpolation_type: Option<String>,
    /// `timestep_type`: Euler's `discrete` (default; `continuous` is not supported).
    pub timestep_type: Option<String>,
    /// `final_sigmas_type`: `zero` (default) or `sigma_min`.
    pub final_sigmas_type: Option<String>,
    /// `rescale_betas_zero_snr` (false).
    pub rescale_betas_zero_snr: Option<bool>,
    /// `solver_order`: DPM-Solver's order, 1 to 3 (2).
    pub solver_order: Option<usize>,
    /// `algorithm_type`: DPM-Solver's `dpmsolver++` (default), `dpmsolver` or `sde-dpmsolver++`.
    pub algorithm_type: Option<String>,
    /// `solver_type`: DPM-Solver's `midpoint` (default) or `heun`.
    pub solver_type: Option<String>,
    /// `lower_order_final`: DPM-Solver's lower-order last steps below 15 steps (true).
    pub lower_order_final: Option<bool>,
    /// `euler_at_final`: DPM-Solver's first-order last step (false).
    pub euler_at_final: Option<bool>,
    /// `lambda_min_clipped`: DPM-Solver's clipping of the smallest log-SNR (-inf).
    pub lambda_min_clipped: Option<f64>,
    /// `variance_type`: DPM-Solver's `learned` / `learned_range` (model outputs with variance).
    pub variance_type: Option<String>,
}

impl SchedulerConfig {
    /// Parses the JSON text of a `scheduler_config.json`.
    pub fn from_json_str(text: &str) -> Result<Self> {
        serde_json::from_str(text)
            .map_err(|e| DiffusionError::config("scheduler_config.json", e.to_string()))
    }

    /// Reads a `scheduler_config.json`.
    pub fn from_file(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let text = std::fs::read_to_string(path).map_err(|e| DiffusionError::Io {
            path: path.display().to_string(),
            message: e.to_string(),
        })?;
        serde_json::from_str(&text)
            .map_err(|e| DiffusionError::config(path.display().to_string(), e.to_string()))
    }
}

/// The scheduler classes ported here.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SchedulerKind {
    /// `DDIMScheduler`.
    Ddim,
    /// `PNDMScheduler` (PLMS).
    Pndm,
    /// `EulerDiscreteScheduler`.
    EulerDiscrete,
    /// `EulerAncestralDiscreteScheduler`.
    EulerAncestralDiscrete,
    /// `DPMSolverMultistepScheduler`.
    DpmSolverMultistep,
}

impl SchedulerKind {
    /// Every kind.
    pub const ALL: [SchedulerKind; 5] = [
        SchedulerKind::Ddim,
        SchedulerKind::Pndm,
        SchedulerKind::EulerDiscrete,
        SchedulerKind::EulerAncestralDiscrete,
        SchedulerKind::DpmSolverMultistep,
    ];

    /// The diffusers class name.
    pub fn class_name(self) -> &'static str {
        match self {
            SchedulerKind::Ddim => "DDIMScheduler",
            SchedulerKind::Pndm => "PNDMScheduler",
            SchedulerKind::EulerDiscrete => "EulerDiscreteScheduler",
            SchedulerKind::EulerAncestralDiscrete => "EulerAncestralDiscreteScheduler",
            SchedulerKind::DpmSolverMultistep => "DPMSolverMultistepScheduler",
        }
    }

    /// The kind for a diffusers class name (`_class_name`).
    pub fn from_class_name(name: &str) -> Result<Self> {
        Self::ALL
            .into_iter()
            .find(|k| k.class_name() == name)
            .ok_or_else(|| {
                DiffusionError::config(
                    "scheduler_config.json",
                    format!(
                        "scheduler class {name:?} is not supported (supported: {})",
                        Self::ALL.map(|k| k.class_name()).join(", ")
                    ),
                )
            })
    }
}

/// Builds a scheduler of `kind` from `config`, as diffusers' `Class.from_config(config)`.
pub fn build_scheduler<B: Backend>(
    kind: SchedulerKind,
    config: &SchedulerConfig,
) -> Result<Box<dyn Scheduler<B>>> {
    Ok(match kind {
        SchedulerKind::Ddim => Box::new(DdimScheduler::<B>::from_config(config)?),
        SchedulerKind::Pndm => Box::new(PndmScheduler::<B>::from_config(config)?),
        SchedulerKind::EulerDiscrete => Box::new(EulerDiscreteScheduler::from_config(config)?),
        SchedulerKind::EulerAncestralDiscrete => {
            Box::new(EulerAncestralDiscreteScheduler::from_config(config)?)
        }
        SchedulerKind::DpmSolverMultistep => {
            Box::new(DpmSolverMultistepScheduler::<B>::from_config(config)?)
        }
    })
}

/// Builds the scheduler a `scheduler_config.json` names in `_class_name`.
pub fn load_scheduler<B: Backend>(path: impl AsRef<Path>) -> Result<Box<dyn Scheduler<B>>> {
    let path = path.as_ref();
    let config = SchedulerConfig::from_file(path)?;
    let name = config
        .class_name
        .as_deref()
        .ok_or_else(|| DiffusionError::config(path.display().to_string(), "no _class_name"))?;
    build_scheduler(SchedulerKind::from_class_name(name)?, &config)
}

// ============================================================================ shared parts

/// What the model predicts (`prediction_type`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PredictionType {
    /// The noise (`epsilon`), as SD 1.x and the SD 2 inpainting model.
    Epsilon,
    /// The velocity (`v_prediction`), as SD 2.x at 768.
    VPrediction,
    /// The clean sample (`sample`).
    Sample,
}

/// How inference timesteps are spaced (`timestep_spacing`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TimestepSpacing {
    /// `leading`: multiples of `num_train_timesteps / n`, plus `steps_offset`.
    Leading,
    /// `trailing`: counted down from the last training timestep.
    Trailing,
    /// `linspace`: evenly from 0 to the last training timestep.
    Linspace,
}

const CONTEXT: &str = "scheduler_config.json";

pub(crate) fn prediction_type(
    config: &SchedulerConfig,
    class: &str,
    allowed: &[PredictionType],
) -> Result<PredictionType> {
    let p = match config.prediction_type.as_deref().unwrap_or("epsilon") {
        "epsilon" => PredictionType::Epsilon,
        "v_prediction" => PredictionType::VPrediction,
        "sample" | "original_sample" => PredictionType::Sample,
        other => {
            return Err(DiffusionError::config(
                CONTEXT,
                format!("{class}: unknown prediction_type {other:?}"),
            ))
        }
    };
    if !allowed.contains(&p) {
        return Err(DiffusionError::config(
            CONTEXT,
            format!("{class}: prediction_type {p:?} is not supported (supported: {allowed:?})"),
        ));
    }
    Ok(p)
}

pub(crate) fn timestep_spacing(
    config: &SchedulerConfig,
    default: TimestepSpacing,
) -> Result<TimestepSpacing> {
    match config.timestep_spacing.as_deref() {
        None => Ok(default),
        Some("leading") => Ok(TimestepSpacing::Leading),
        Some("trailing") => Ok(TimestepSpacing::Trailing),
        Some("linspace") => Ok(TimestepSpacing::Linspace),
        Some(other) => Err(DiffusionError::config(
            CONTEXT,
            format!("unknown timestep_spacing {other:?} (leading, trailing or linspace)"),
        )),
    }
}

/// Fails when `flag` is set: an option this port does not implement.
pub(crate) fn reject(flag: Option<bool>, key: &str, class: &str) -> Result<()> {
    if flag == Some(true) {
        return Err(DiffusionError::config(
            CONTEXT,
            format!("{class}: `{key}` is not supported by this port"),
        ));
    }
    Ok(())
}

/// The training noise schedule: betas and cumulative alphas in f32, as diffusers holds them.
#[derive(Debug, Clone)]
pub(crate) struct NoiseSchedule {
    /// `alphas_cumprod`.
    pub alphas_cumprod: Vec<f32>,
}

impl NoiseSchedule {
    /// The schedule of `config` (`beta_start`, `beta_end`, `beta_schedule`, `trained_betas`,
    /// `num_train_timesteps`, `rescale_betas_zero_snr`); `zero_snr_fix` sets the last
    /// cumulative alpha to 2^-24 after rescaling (the sigma-based schedulers do).
    pub fn new(config: &SchedulerConfig, class: &str, zero_snr_fix: bool) -> Result<Self> {
        let n = config.num_train_timesteps.unwrap_or(1000);
        if n < 2 {
            return Err(DiffusionError::config(
                CONTEXT,
                format!("{class}: num_train_timesteps must be at least 2, got {n}"),
            ));
        }
        let start = config.beta_start.unwrap_or(0.0001);
        let end = config.beta_end.unwrap_or(0.02);
        let mut betas: Vec<f32> = if let Some(tb) = &config.trained_betas {
            if tb.len() != n {
                return Err(DiffusionError::config(
                    CONTEXT,
                    format!(
                        "{class}: {} trained_betas for {n} training timesteps",
                        tb.len()
                    ),
                ));
            }
            tb.iter().map(|&b| b as f32).collect()
        } else {
            match config.beta_schedule.as_deref().unwrap_or("linear") {
                "linear" => torch_linspace_f32(start, end, n),
                "scaled_linear" => torch_linspace_f32(start.sqrt(), end.sqrt(), n)
                    .into_iter()
                    .map(|b| b * b)
                    .collect(),
                "squaredcos_cap_v2" => betas_for_alpha_bar_cosine(n),
                other => {
                    return Err(DiffusionError::config(
                        CONTEXT,
                        format!(
                            "{class}: unknown beta_schedule {other:?} (linear, scaled_linear or \
                             squaredcos_cap_v2)"
                        ),
                    ))
                }
            }
        };
        let rescale = config.rescale_betas_zero_snr.unwrap_or(false);
        if rescale {
            betas = rescale_zero_terminal_snr(&betas);
        }
        let alphas: Vec<f32> = betas.iter().map(|b| 1.0 - b).collect();
        let mut alphas_cumprod = cumprod(&alphas);
        if rescale && zero_snr_fix {
            if let Some(last) = alphas_cumprod.last_mut() {
                *last = 2f32.powi(-24);
            }
        }
        if alphas_cumprod
            .iter()
            .any(|a| !a.is_finite() || *a <= 0.0 && !rescale)
        {
            return Err(DiffusionError::config(
                CONTEXT,
                format!("{class}: the beta schedule gives non-positive cumulative alphas"),
            ));
        }
        Ok(NoiseSchedule { alphas_cumprod })
    }

    pub fn num_train_timesteps(&self) -> usize {
        self.alphas_cumprod.len()
    }

    /// `((1 - alphas_cumprod) / alphas_cumprod) ** 0.5` in f32, ascending in t.
    pub fn train_sigmas(&self) -> Vec<f32> {
        self.alphas_cumprod
            .iter()
            .map(|&a| ((1.0 - a) / a).sqrt())
            .collect()
    }

    /// The cumulative alpha at integer timestep `t` (a float holding an integer).
    pub fn alpha_at(&self, t: f64, class: &str) -> Result<f32> {
        let i = integer_timestep(t, self.num_train_timesteps(), class)?;
        Ok(self.alphas_cumprod[i])
    }

    /// `set_alpha_to_one`: the cumulative alpha before the first one, 1 or `alphas_cumprod[0]`.
    pub fn final_alpha_cumprod(&self, set_alpha_to_one: bool) -> f32 {
        if set_alpha_to_one {
            1.0
        } else {
            self.alphas_cumprod[0]
        }
    }

    /// `final_sigmas_type`: the sigma after the last step, `sigma_min` (of the training
    /// schedule) or zero.
    pub fn final_sigma(&self, sigma_min: bool) -> f64 {
        if sigma_min {
            let a = self.alphas_cumprod[0];
            ((1.0 - a) / a).sqrt() as f64
        } else {
            0.0
        }
    }

    /// `sqrt(a_t) * original + sqrt(1 - a_t) * noise` (DDPM-style `add_noise`).
    pub fn add_noise<B: Backend>(
        &self,
        original: Tensor<B, 4>,
        noise: Tensor<B, 4>,
        t: f64,
        class: &str,
    ) -> Result<Tensor<B, 4>> {
        check_same_shape(&noise, &original, class)?;
        let a = self.alpha_at(t, class)?;
        Ok(original * a.sqrt() + noise * (1.0 - a).sqrt())
    }
}

/// The error for a scheduler used (`what`: `step`, `add_noise`) before `set_timesteps`,
/// unless `ready`.
pub(crate) fn require_timesteps(ready: bool, class: &str, what: &str) -> Result<()> {
    if ready {
        Ok(())
    } else {
        Err(DiffusionError::Scheduler(format!(
            "{class}: call set_timesteps before {what}"
        )))
    }
}

/// The training sigmas interpolated at `timesteps` (`np.interp`).
pub(crate) fn interp_sigmas(timesteps: &[f64], train_sigmas: &[f32]) -> Vec<f64> {
    timesteps
        .iter()
        .map(|&t| np_interp(t, train_sigmas))
        .collect()
}

/// The natural logarithms of `sigmas`.
pub(crate) fn log_sigmas(sigmas: &[f32]) -> Vec<f32> {
    sigmas.iter().map(|s| s.ln()).collect()
}

/// `t` as an index into the training schedule.
pub(crate) fn integer_timestep(t: f64, n: usize, class: &str) -> Result<usize> {
    if t.fract() != 0.0 || t < 0.0 || t >= n as f64 {
        return Err(DiffusionError::Scheduler(format!(
            "{class}: timestep {t} is not an integer in 0..{n}"
        )));
    }
    Ok(t as usize)
}

/// torch's CPU `linspace` in f32: `start + step * i` for the first half, `end - step * (n - 1 - i)`
/// for the second, with the step in f32.
pub(crate) fn torch_linspace_f32(start: f64, end: f64, n: usize) -> Vec<f32> {
    let (s, e) = (start as f32, end as f32);
    if n == 1 {
        return vec![s];
    }
    let step = (e - s) / (n - 1) as f32;
    let half = n / 2;
    (0..n)
        .map(|i| {
            if i < half {
                s + step * i as f32
            } else {
                e - step * (n - 1 - i) as f32
            }
        })
        .collect()
}

/// torch's `cumprod` on the CPU: accumulated in f64, stored in f32.
fn cumprod(x: &[f32]) -> Vec<f32> {
    let mut acc = 1f64;
    x.iter()
        .map(|&v| {
            acc *= v as f64;
            acc as f32
        })
        .collect()
}

/// diffusers' `betas_for_alpha_bar` with the cosine transform (`squaredcos_cap_v2`).
fn betas_for_alpha_bar_cosine(n: usize) -> Vec<f32> {
    let f = |t: f64| {
        ((t + 0.008) / 1.008 * std::f64::consts::PI / 2.0)
            .cos()
            .powi(2)
    };
    (0..n)
        .map(|i| {
            let (t1, t2) = (i as f64 / n as f64, (i + 1) as f64 / n as f64);
            (1.0 - f(t2) / f(t1)).min(0.999) as f32
        })
        .collect()
}

/// diffusers' `rescale_zero_terminal_snr`, in f32.
fn rescale_zero_terminal_snr(betas: &[f32]) -> Vec<f32> {
    let alphas: Vec<f32> = betas.iter().map(|b| 1.0 - b).collect();
    let mut sqrt: Vec<f32> = cumprod(&alphas).iter().map(|a| a.sqrt()).collect();
    let (first, last) = (sqrt[0], sqrt[sqrt.len() - 1]);
    let scale = first / (first - last);
    for s in sqrt.iter_mut() {
        *s = (*s - last) * scale;
    }
    let bar: Vec<f32> = sqrt.iter().map(|s| s * s).collect();
    let mut out = Vec::with_capacity(bar.len());
    out.push(1.0 - bar[0]);
    for i in 1..bar.len() {
        out.push(1.0 - bar[i] / bar[i - 1]);
    }
    out
}

/// numpy's `round` (half to even).
pub(crate) fn np_round(x: f64) -> f64 {
    x.round_ties_even()
}

/// numpy's `linspace(start, stop, num)` (endpoint included): `i * step + start`, the last
/// value exactly `stop`.
pub(crate) fn np_linspace(start: f64, stop: f64, num: usize) -> Vec<f64> {
    if num == 0 {
        return Vec::new();
    }
    if num == 1 {
        return vec![start];
    }
    let step = (stop - start) / (num - 1) as f64;
    let mut v: Vec<f64> = (0..num).map(|i| i as f64 * step + start).collect();
    v[num - 1] = stop;
    v
}

/// numpy's `arange(start, stop, step)` for floats: `ceil((stop - start) / step)` values, the
/// third on computed as `start + i * delta` with `delta = (start + step) - start`.
pub(crate) fn np_arange(start: f64, stop: f64, step: f64) -> Vec<f64> {
    let len = ((stop - start) / step).ceil();
    if len.is_nan() || len <= 0.0 {
        return Vec::new();
    }
    let len = len as usize;
    let mut v = Vec::with_capacity(len);
    v.push(start);
    if len > 1 {
        v.push(start + step);
        let delta = v[1] - v[0];
        for i in 2..len {
            v.push(start + i as f64 * delta);
        }
    }
    v
}

/// numpy's `interp(x, arange(len(fp)), fp)`.
pub(crate) fn np_interp(x: f64, fp: &[f32]) -> f64 {
    let last = fp.len() - 1;
    if x <= 0.0 {
        return fp[0] as f64;
    }
    if x >= last as f64 {
        return fp[last] as f64;
    }
    let j = x.floor() as usize;
    let (a, b) = (fp[j] as f64, fp[j + 1] as f64);
    if x == j as f64 {
        return a;
    }
    let slope = b - a;
    slope * (x - j as f64) + a
}

/// diffusers' `_sigma_to_t`: the fractional training timestep of `sigma`, interpolating in
/// log-sigma between the two neighbouring training sigmas (`log_sigmas` ascending, f32).
pub(crate) fn sigma_to_t(sigma: f64, log_sigmas: &[f32]) -> f64 {
    let log_sigma = sigma.max(1e-10).ln();
    let n = log_sigmas.len();
    // The last index whose log-sigma is <= log_sigma (0 when none), at most n - 2.
    let count = log_sigmas
        .iter()
        .filter(|&&l| log_sigma - l as f64 >= 0.0)
        .count();
    let low_idx = count.saturating_sub(1).min(n - 2);
    let high_idx = low_idx + 1;
    let (low, high) = (log_sigmas[low_idx] as f64, log_sigmas[high_idx] as f64);
    let w = ((low - log_sigma) / (low - high)).clamp(0.0, 1.0);
    (1.0 - w) * low_idx as f64 + w * high_idx as f64
}

/// Karras et al.'s sigmas (rho = 7) from `sigma_max` down to `sigma_min`, `n` values.
pub(crate) fn karras_sigmas(sigma_min: f64, sigma_max: f64, n: usize) -> Vec<f64> {
    let rho = 7.0;
    let (min_inv, max_inv) = (sigma_min.powf(1.0 / rho), sigma_max.powf(1.0 / rho));
    np_linspace(0.0, 1.0, n)
        .into_iter()
        .map(|r| (max_inv + r * (min_inv - max_inv)).powf(rho))
        .collect()
}

/// Checks `num_inference_steps` against the training timesteps.
pub(crate) fn check_steps(n: usize, train: usize, class: &str) -> Result<()> {
    if n == 0 || n > train {
        return Err(DiffusionError::Scheduler(format!(
            "{class}: num_inference_steps must be in 1..={train}, got {n}"
        )));
    }
    Ok(())
}

/// Checks that the model output and the sample have the same shape.
pub(crate) fn check_same_shape<B: Backend>(
    model_output: &Tensor<B, 4>,
    sample: &Tensor<B, 4>,
    class: &str,
) -> Result<()> {
    if model_output.dims() != sample.dims() {
        return Err(DiffusionError::input_shape(
            format!("{class}.step"),
            format!(
                "model output {:?} and sample {:?} differ",
                model_output.dims(),
                sample.dims()
            ),
        ));
    }
    Ok(())
}

/// diffusers' `index_for_timestep` for the sigma schedulers: the position of `t` in
/// `timesteps`, the second one if it occurs twice (so img2img starting mid-schedule does not
/// skip a sigma).
pub(crate) fn index_for_timestep(t: f64, timesteps: &[f64], class: &str) -> Result<usize> {
    let hits: Vec<usize> = timesteps
        .iter()
        .enumerate()
        .filter(|(_, &x)| x == t)
        .map(|(i, _)| i)
        .collect();
    match hits.len() {
        0 => Err(DiffusionError::Scheduler(format!(
            "{class}: timestep {t} is not in the schedule (call set_timesteps and pass its \
             timesteps)"
        ))),
        1 => Ok(hits[0]),
        _ => Ok(hits[1]),
    }
}

/// The standard inference timesteps of DDIM / Euler for `spacing` (descending), as f64.
/// `linspace_f32` casts linspace values to f32 without rounding (the Euler schedulers);
/// otherwise they are rounded to integers (DDIM).
pub(crate) fn spaced_timesteps(
    spacing: TimestepSpacing,
    n: usize,
    train: usize,
    steps_offset: usize,
    linspace_unrounded: bool,
) -> Vec<f64> {
    match spacing {
        TimestepSpacing::Linspace => {
            let v = np_linspace(0.0, (train - 1) as f64, n);
            v.into_iter()
                .rev()
                .map(|x| {
                    if linspace_unrounded {
                        x as f32 as f64
                    } else {
                        np_round(x)
                    }
                })
                .collect()
        }
        TimestepSpacing::Leading => {
            let ratio = train / n;
            (0..n)
                .rev()
                .map(|i| (i * ratio + steps_offset) as f64)
                .collect()
        }
        TimestepSpacing::Trailing => {
            let ratio = train as f64 / n as f64;
            np_arange(train as f64, 0.0, -ratio)
                .into_iter()
                .map(|x| np_round(x) - 1.0)
                .collect()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numpy_helpers() {
        assert_eq!(np_round(2.5), 2.0);
        assert_eq!(np_round(3.5), 4.0);
        assert_eq!(np_linspace(0.0, 999.0, 4), vec![0.0, 333.0, 666.0, 999.0]);
        assert_eq!(
            np_arange(1000.0, 0.0, -250.0),
            vec![1000.0, 750.0, 500.0, 250.0]
        );
        assert_eq!(np_interp(1.5, &[0.0, 1.0, 3.0]), 2.0);
        let log_sigmas: Vec<f32> = [0.1f32, 0.2, 0.4, 0.8].iter().map(|s| s.ln()).collect();
        assert!((sigma_to_t(0.4, &log_sigmas) - 2.0).abs() < 1e-6);
        assert_eq!(sigma_to_t(0.01, &log_sigmas), 0.0);
        assert_eq!(sigma_to_t(10.0, &log_sigmas), 3.0);
        let k = karras_sigmas(0.1, 10.0, 3);
        assert!((k[0] - 10.0).abs() < 1e-9 && (k[2] - 0.1).abs() < 1e-9);
    }

    #[test]
    fn seeded_noise_is_reproducible_and_standard() {
        let mut a = SeededNoise::new(3);
        let mut b = SeededNoise::new(3);
        let xs = a.gaussian_vec(20_000);
        assert_eq!(xs, b.gaussian_vec(20_000));
        let mean = xs.iter().map(|&x| x as f64).sum::<f64>() / xs.len() as f64;
        let var = xs.iter().map(|&x| (x as f64 - mean).powi(2)).sum::<f64>() / xs.len() as f64;
        assert!(
            mean.abs() < 0.03 && (var - 1.0).abs() < 0.05,
            "{mean} {var}"
        );
    }

    #[test]
    fn bad_configs_are_errors() {
        let bad = SchedulerConfig::from_json_str(r#"{"beta_schedule": "cubic"}"#).unwrap();
        assert!(NoiseSchedule::new(&bad, "X", false).is_err());
        assert!(SchedulerConfig::from_json_str(r#"{"num_train_timesteps": "many"}"#).is_err());
        assert!(SchedulerKind::from_class_name("LMSDiscreteScheduler").is_err());
    }
}
