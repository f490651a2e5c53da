//! The Euler sampler of Karras et al. (2022), diffusers' `EulerDiscreteScheduler`.

use burn::tensor::backend::Backend;
use burn::tensor::Tensor;

use super::{
    check_same_shape, check_steps, index_for_timestep, interp_sigmas, karras_sigmas, log_sigmas,
    prediction_type, reject, sigma_to_t, spaced_timesteps, timestep_spacing, NoiseSchedule,
    NoiseSource, PredictionType, Scheduler, SchedulerConfig, StepOutput, TimestepSpacing,
};
use crate::error::{DiffusionError, Result};

const CLASS: &str = "EulerDiscreteScheduler";

/// The sigma bookkeeping shared by the two Euler schedulers: timesteps, sigmas and the
/// current step index.
#[derive(Debug, Clone)]
pub(crate) struct SigmaSteps {
    pub timesteps: Vec<f64>,
    pub sigmas: Vec<f32>,
    pub step_index: Option<usize>,
    pub begin_index: Option<usize>,
}

impl SigmaSteps {
    pub fn new() -> Self {
        SigmaSteps {
            timesteps: Vec::new(),
            sigmas: Vec::new(),
            step_index: None,
            begin_index: None,
        }
    }

    /// The step index for `t`, initialising it on the first call of a run.
    pub fn index(&mut self, t: f64, class: &str) -> Result<usize> {
        if self.timesteps.is_empty() {
            return Err(DiffusionError::Scheduler(format!(
                "{class}: call set_timesteps before stepping"
            )));
        }
        let i = match (self.step_index, self.begin_index) {
            (Some(i), _) => i,
            (None, Some(b)) => b,
            (None, None) => index_for_timestep(t, &self.timesteps, class)?,
        };
        if i + 1 >= self.sigmas.len() {
            return Err(DiffusionError::Scheduler(format!(
                "{class}: stepped past the last of {} timesteps",
                self.timesteps.len()
            )));
        }
        self.step_index = Some(i);
        Ok(i)
    }

    /// The sigma `add_noise` uses for `t`.
    pub fn noise_sigma(&self, t: f64, class: &str) -> Result<f32> {
        let i = match (self.begin_index, self.step_index) {
            (None, _) => index_for_timestep(t, &self.timesteps, class)?,
            (Some(_), Some(s)) => s,
            (Some(b), None) => b,
        };
        self.sigmas
            .get(i)
            .copied()
            .ok_or_else(|| DiffusionError::Scheduler(format!("{class}: no sigma at index {i}")))
    }

    /// New sigmas and timesteps from `set_timesteps`, forgetting the step and begin indices.
    pub fn reset(&mut self, sigmas: Vec<f32>, timesteps: Vec<f64>) {
        self.sigmas = sigmas;
        self.timesteps = timesteps;
        self.step_index = None;
        self.begin_index = None;
    }

    /// `original + sigma * noise` with the sigma of [`noise_sigma`](Self::noise_sigma).
    pub fn add_noise<B: Backend>(
        &self,
        original: Tensor<B, 4>,
        noise: Tensor<B, 4>,
        t: f64,
        class: &str,
    ) -> Result<Tensor<B, 4>> {
        check_same_shape(&noise, &original, class)?;
        let sigma = self.noise_sigma(t, class)?;
        Ok(original + noise * sigma)
    }

    /// diffusers' `init_noise_sigma`: the largest sigma, or `sqrt(max^2 + 1)` for `leading`.
    pub fn init_noise_sigma(&self, spacing: TimestepSpacing) -> f64 {
        let max = self.sigmas.iter().copied().fold(0f32, f32::max);
        match spacing {
            TimestepSpacing::Leading => (max * max + 1.0).sqrt() as f64,
            _ => max as f64,
        }
    }

    /// `sample / sqrt(sigma^2 + 1)`.
    pub fn scale<B: Backend>(
        &mut self,
        sample: Tensor<B, 4>,
        t: f64,
        class: &str,
    ) -> Result<Tensor<B, 4>> {
        let i = self.index(t, class)?;
        let sigma = self.sigmas[i];
        Ok(sample / (sigma * sigma + 1.0).sqrt())
    }
}

/// An Euler move of `sample` from `sigma` to `to` along the derivative `(sample - x0) / sigma`.
pub(crate) fn euler_move<B: Backend>(
    sample: Tensor<B, 4>,
    x0: &Tensor<B, 4>,
    sigma: f32,
    to: f32,
) -> Tensor<B, 4> {
    let derivative = (sample.clone() - x0.clone()) / sigma;
    let dt = to - sigma;
    sample + derivative * dt
}

/// x0 from the model output for the Euler schedulers.
pub(crate) fn euler_x0<B: Backend>(
    prediction: PredictionType,
    model_output: Tensor<B, 4>,
    sample: Tensor<B, 4>,
    sigma: f32,
) -> Tensor<B, 4> {
    match prediction {
        PredictionType::Epsilon => sample - model_output * sigma,
        PredictionType::VPrediction => {
            model_output * (-sigma / (sigma * sigma + 1.0).sqrt()) + sample / (sigma * sigma + 1.0)
        }
        PredictionType::Sample => model_output,
    }
}

/// diffusers' `EulerDiscreteScheduler` (without churn: `s_churn = 0`, as the pipelines call it).
///
/// Reads the beta keys, `prediction_type` (epsilon, v_prediction, sample), `timestep_spacing`
/// (`linspace`), `steps_offset` (0), `interpolation_type` (`linear` or `log_linear`),
/// `use_karras_sigmas` with `sigma_min` / `sigma_max`, `final_sigmas_type` (`zero` or
/// `sigma_min`), `rescale_betas_zero_snr`. Timesteps are f32 values and may be fractional
/// (`linspace` spacing with most step counts, Karras sigmas).
#[derive(Debug, Clone)]
pub struct EulerDiscreteScheduler {
    schedule: NoiseSchedule,
    prediction: PredictionType,
    spacing: TimestepSpacing,
    steps_offset: usize,
    log_linear: bool,
    karras: bool,
    sigma_min: Option<f64>,
    sigma_max: Option<f64>,
    final_sigma_min: bool,
    steps: SigmaSteps,
}

impl EulerDiscreteScheduler {
    /// The scheduler `EulerDiscreteScheduler.from_config(config)` would build.
    pub fn from_config(config: &SchedulerConfig) -> Result<Self> {
        reject(
            config.use_exponential_sigmas,
            "use_exponential_sigmas",
            CLASS,
        )?;
        reject(config.use_beta_sigmas, "use_beta_sigmas", CLASS)?;
        if let Some(tt) = config.timestep_type.as_deref() {
            if tt != "discrete" {
                return Err(DiffusionError::config(
                    "scheduler_config.json",
                    format!("{CLASS}: timestep_type {tt:?} is not supported (discrete only)"),
                ));
            }
        }
        let log_linear = match config.interpolation_type.as_deref().unwrap_or("linear") {
            "linear" => false,
            "log_linear" => true,
            other => {
                return Err(DiffusionError::config(
                    "scheduler_config.json",
                    format!("{CLASS}: unknown interpolation_type {other:?}"),
                ))
            }
        };
        Ok(EulerDiscreteScheduler {
            schedule: NoiseSchedule::new(config, CLASS, true)?,
            prediction: prediction_type(
                config,
                CLASS,
                &[
                    PredictionType::Epsilon,
                    PredictionType::VPrediction,
                    PredictionType::Sample,
                ],
            )?,
            spacing: timestep_spacing(config, TimestepSpacing::Linspace)?,
            steps_offset: config.steps_offset.unwrap_or(0),
            log_linear,
            karras: config.use_karras_sigmas.unwrap_or(false),
            sigma_min: config.sigma_min,
            sigma_max: config.sigma_max,
            final_sigma_min: final_sigma_min(config, CLASS)?,
            steps: SigmaSteps::new(),
        })
    }
}

/// `final_sigmas_type`: true for `sigma_min`, false for `zero`.
pub(crate) fn final_sigma_min(config: &SchedulerConfig, class: &str) -> Result<bool> {
    match config.final_sigmas_type.as_deref().unwrap_or("zero") {
        "zero" => Ok(false),
        "sigma_min" => Ok(true),
        other => Err(DiffusionError::config(
            "scheduler_config.json",
            format!("{class}: unknown final_sigmas_type {other:?} (zero or sigma_min)"),
        )),
    }
}

impl<B: Backend> Scheduler<B> for EulerDiscreteScheduler {
    fn class_name(&self) -> &'static str {
        CLASS
    }

    fn set_timesteps(&mut self, n: usize) -> Result<()> {
        let train = self.schedule.num_train_timesteps();
        check_steps(n, train, CLASS)?;
        let mut timesteps = spaced_timesteps(self.spacing, n, train, self.steps_offset, true);
        let train_sigmas = self.schedule.train_sigmas();
        let log_sigmas = log_sigmas(&train_sigmas);
        let mut sigmas: Vec<f64> = if self.log_linear {
            // torch.linspace(log(s[-1]), log(s[0]), n + 1).exp(), in f32.
            super::torch_linspace_f32(
                (train_sigmas[train - 1] as f64).ln(),
                (train_sigmas[0] as f64).ln(),
                n + 1,
            )
            .into_iter()
            .map(|l| l.exp() as f64)
            .collect()
        } else {
            interp_sigmas(&timesteps, &train_sigmas)
        };
        if self.karras {
            let lo = self.sigma_min.unwrap_or(sigmas[sigmas.len() - 1]);
            let hi = self.sigma_max.unwrap_or(sigmas[0]);
            sigmas = karras_sigmas(lo, hi, n);
            timesteps = sigmas
                .iter()
                .map(|&s| sigma_to_t(s, &log_sigmas) as f32 as f64)
                .collect();
        }
        sigmas.push(self.schedule.final_sigma(self.final_sigma_min));
        self.steps
            .reset(sigmas.into_iter().map(|s| s as f32).collect(), timesteps);
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
        _noise: &mut dyn NoiseSource<B>,
    ) -> Result<StepOutput<B>> {
        check_same_shape(&model_output, &sample, CLASS)?;
        let i = self.steps.index(t, CLASS)?;
        let sigma = self.steps.sigmas[i];
        let x0 = euler_x0(self.prediction, model_output, sample.clone(), sigma);
        let prev = euler_move(sample, &x0, sigma, self.steps.sigmas[i + 1]);
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
