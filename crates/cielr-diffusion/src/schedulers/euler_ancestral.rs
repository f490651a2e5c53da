//! Ancestral sampling with Euler steps (k-diffusion's `sample_euler_ancestral`), diffusers'
//! `EulerAncestralDiscreteScheduler`.

use burn::tensor::backend::Backend;
use burn::tensor::Tensor;

use super::euler::{euler_move, euler_x0, SigmaSteps};
use super::{
    check_same_shape, check_steps, interp_sigmas, prediction_type, spaced_timesteps,
    timestep_spacing, NoiseSchedule, NoiseSource, PredictionType, Scheduler, SchedulerConfig,
    StepOutput, TimestepSpacing,
};
use crate::error::Result;

const CLASS: &str = "EulerAncestralDiscreteScheduler";

/// diffusers' `EulerAncestralDiscreteScheduler`: each step moves to `sigma_down` and adds
/// fresh noise of scale `sigma_up`, drawn from the step's [`NoiseSource`].
///
/// Reads the beta keys, `prediction_type` (epsilon or v_prediction), `timestep_spacing`
/// (`linspace`), `steps_offset` (0) and `rescale_betas_zero_snr`.
#[derive(Debug, Clone)]
pub struct EulerAncestralDiscreteScheduler {
    schedule: NoiseSchedule,
    prediction: PredictionType,
    spacing: TimestepSpacing,
    steps_offset: usize,
    steps: SigmaSteps,
}

impl EulerAncestralDiscreteScheduler {
    /// The scheduler `EulerAncestralDiscreteScheduler.from_config(config)` would build.
    pub fn from_config(config: &SchedulerConfig) -> Result<Self> {
        Ok(EulerAncestralDiscreteScheduler {
            schedule: NoiseSchedule::new(config, CLASS, true)?,
            prediction: prediction_type(
                config,
                CLASS,
                &[PredictionType::Epsilon, PredictionType::VPrediction],
            )?,
            spacing: timestep_spacing(config, TimestepSpacing::Linspace)?,
            steps_offset: config.steps_offset.unwrap_or(0),
            steps: SigmaSteps::new(),
        })
    }
}

impl<B: Backend> Scheduler<B> for EulerAncestralDiscreteScheduler {
    fn class_name(&self) -> &'static str {
        CLASS
    }

    fn set_timesteps(&mut self, n: usize) -> Result<()> {
        let train = self.schedule.num_train_timesteps();
        check_steps(n, train, CLASS)?;
        let timesteps = spaced_timesteps(self.spacing, n, train, self.steps_offset, true);
        let train_sigmas = self.schedule.train_sigmas();
        let mut sigmas: Vec<f32> = interp_sigmas(&timesteps, &train_sigmas)
            .into_iter()
            .map(|s| s as f32)
            .collect();
        sigmas.push(0.0);
        self.steps.reset(sigmas, timesteps);
        Ok(())
    }

    fn timesteps(&self) -> &[f64] {
        &self.steps.timesteps
    }

    fn sigmas(&self) -> Option<&[f32]> {
        Some(&self.steps.sigmas)
    }

    fn init_noise_sigma(&self) -> f64 {
        self.steps.init_noise_sigma(self.spacing)
    }

    fn scale_model_input(&mut self, sample: Tensor<B, 4>, t: f64) -> Result<Tensor<B, 4>> {
        self.steps.scale(sample, t, CLASS)
    }

    fn step(
        &mut self,
        model_output: Tensor<B, 4>,
        t: f64,
        sample: Tensor<B, 4>,
        noise: &mut dyn NoiseSource<B>,
    ) -> Result<StepOutput<B>> {
        check_same_shape(&model_output, &sample, CLASS)?;
        let i = self.steps.index(t, CLASS)?;
        let (dims, device) = (model_output.dims(), model_output.device());
        let sigma = self.steps.sigmas[i];
        let x0 = euler_x0(self.prediction, model_output, sample.clone(), sigma);
        let (from, to) = (sigma, self.steps.sigmas[i + 1]);
        let sigma_up = (to * to * (from * from - to * to) / (from * from)).sqrt();
        let sigma_down = (to * to - sigma_up * sigma_up).sqrt();
        let prev = euler_move(sample, &x0, sigma, sigma_down);
        let z = noise.noise(dims, &device)?;
        let prev = prev + z * sigma_up;
        self.steps.step_index = Some(i + 1);
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
        self.steps.add_noise(original, noise, t, CLASS)
    }

    fn set_begin_index(&mut self, begin_index: usize) {
        self.steps.begin_index = Some(begin_index);
    }

    fn num_train_timesteps(&self) -> usize {
        self.schedule.num_train_timesteps()
    }
}
