//! DDIM (Song et al. 2020), diffusers' `DDIMScheduler`: the scheduler of
//! stabilityai/stable-diffusion-2-inpainting.

use std::marker::PhantomData;

use burn::tensor::backend::Backend;
use burn::tensor::Tensor;

use super::{
    check_same_shape, check_steps, prediction_type, reject, require_timesteps, spaced_timesteps,
    timestep_spacing, NoiseSchedule, NoiseSource, PredictionType, Scheduler, SchedulerConfig,
    StepOutput, TimestepSpacing,
};
use crate::error::{DiffusionError, Result};

const CLASS: &str = "DDIMScheduler";

/// diffusers' `DDIMScheduler` (deterministic with `eta = 0`, the default).
///
/// Reads `num_train_timesteps`, the beta keys, `prediction_type` (epsilon, v_prediction,
/// sample), `set_alpha_to_one` (true), `steps_offset` (0), `timestep_spacing` (`leading`),
/// `clip_sample` (true) and `clip_sample_range` (1.0), `rescale_betas_zero_snr`.
#[derive(Debug, Clone)]
pub struct DdimScheduler<B: Backend> {
    schedule: NoiseSchedule,
    final_alpha_cumprod: f32,
    prediction: PredictionType,
    spacing: TimestepSpacing,
    steps_offset: usize,
    clip_sample: Option<f32>,
    eta: f32,
    num_inference_steps: usize,
    timesteps: Vec<f64>,
    _backend: PhantomData<B>,
}

impl<B: Backend> DdimScheduler<B> {
    /// The scheduler `DDIMScheduler.from_config(config)` would build.
    pub fn from_config(config: &SchedulerConfig) -> Result<Self> {
        reject(config.thresholding, "thresholding", CLASS)?;
        let schedule = NoiseSchedule::new(config, CLASS, false)?;
        let final_alpha_cumprod =
            schedule.final_alpha_cumprod(config.set_alpha_to_one.unwrap_or(true));
        let clip = config.clip_sample.unwrap_or(true);
        Ok(DdimScheduler {
            final_alpha_cumprod,
            prediction: prediction_type(
                config,
                CLASS,
                &[
                    PredictionType::Epsilon,
                    PredictionType::VPrediction,
                    PredictionType::Sample,
                ],
            )?,
            spacing: timestep_spacing(config, TimestepSpacing::Leading)?,
            steps_offset: config.steps_offset.unwrap_or(0),
            clip_sample: clip.then(|| config.clip_sample_range.unwrap_or(1.0) as f32),
            eta: 0.0,
            num_inference_steps: 0,
            timesteps: Vec::new(),
            schedule,
            _backend: PhantomData,
        })
    }

    /// Sets `eta`, the weight of the noise added at each step (0: DDIM, 1: DDPM-like).
    pub fn with_eta(mut self, eta: f32) -> Self {
        self.eta = eta;
        self
    }

    fn alpha_prev(&self, prev_t: i64) -> f32 {
        if prev_t >= 0 {
            self.schedule.alphas_cumprod[prev_t as usize]
        } else {
            self.final_alpha_cumprod
        }
    }
}

impl<B: Backend> Scheduler<B> for DdimScheduler<B> {
    fn class_name(&self) -> &'static str {
        CLASS
    }

    fn set_timesteps(&mut self, n: usize) -> Result<()> {
        let train = self.schedule.num_train_timesteps();
        check_steps(n, train, CLASS)?;
        self.num_inference_steps = n;
        self.timesteps = spaced_timesteps(self.spacing, n, train, self.steps_offset, false);
        if let Some(bad) = self.timesteps.iter().find(|&&t| t >= train as f64) {
            return Err(DiffusionError::Scheduler(format!(
                "{CLASS}: steps_offset {} puts timestep {bad} past the {train} training timesteps",
                self.steps_offset
            )));
        }
        Ok(())
    }

    fn timesteps(&self) -> &[f64] {
        &self.timesteps
    }

    fn sigmas(&self) -> Option<&[f32]> {
        None
    }

    fn init_noise_sigma(&self) -> f64 {
        1.0
    }

    fn scale_model_input(&mut self, sample: Tensor<B, 4>, _t: f64) -> Result<Tensor<B, 4>> {
        Ok(sample)
    }

    fn step(
        &mut self,
        model_output: Tensor<B, 4>,
        t: f64,
        sample: Tensor<B, 4>,
        noise: &mut dyn NoiseSource<B>,
    ) -> Result<StepOutput<B>> {
        require_timesteps(self.num_inference_steps != 0, CLASS, "step")?;
        check_same_shape(&model_output, &sample, CLASS)?;
        let train = self.schedule.num_train_timesteps();
        let a_t = self.schedule.alpha_at(t, CLASS)?;
        let prev_t = t as i64 - (train / self.num_inference_steps) as i64;
        let a_prev = self.alpha_prev(prev_t);
        let b_t = 1.0 - a_t;
        let (sa, sb) = (a_t.sqrt(), b_t.sqrt());
        let (mut x0, eps) = match self.prediction {
            PredictionType::Epsilon => (
                (sample.clone() - model_output.clone() * sb) / sa,
                model_output.clone(),
            ),
            PredictionType::Sample => (
                model_output.clone(),
                (sample.clone() - model_output.clone() * sa) / sb,
            ),
            PredictionType::VPrediction => (
                sample.clone() * sa - model_output.clone() * sb,
                model_output.clone() * sa + sample.clone() * sb,
            ),
        };
        if let Some(r) = self.clip_sample {
            x0 = x0.clamp(-r, r);
        }
        // variance = (beta_prev / beta_t) * (1 - a_t / a_prev)
        let variance = ((1.0 - a_prev) / b_t) * (1.0 - a_t / a_prev);
        let std_dev = self.eta * variance.sqrt();
        // diffusers' pipelines leave use_clipped_model_output false: eps is not recomputed
        // from the clipped x0.
        let direction = eps * (1.0 - a_prev - std_dev * std_dev).sqrt();
        let mut prev = x0.clone() * a_prev.sqrt() + direction;
        if self.eta > 0.0 {
            let z = noise.noise(model_output.dims(), &model_output.device())?;
            prev = prev + z * std_dev;
        }
        Ok(StepOutput {
            prev_sample: prev,
            pred_original_sample: Some(x0),
        })
    }

    fn add_noise(
        &self,
        original: Tensor<B, 4>,
        noise: Tensor<B, 4>,
        t: f64,
    ) -> Result<Tensor<B, 4>> {
        self.schedule.add_noise(original, noise, t, CLASS)
    }

    fn set_begin_index(&mut self, _begin_index: usize) {}

    fn num_train_timesteps(&self) -> usize {
        self.schedule.num_train_timesteps()
    }
}
