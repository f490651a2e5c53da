//! PNDM's linear multistep part, PLMS (Liu et al. 2022), diffusers' `PNDMScheduler` with
//! `skip_prk_steps = true`: the scheduler of runwayml/stable-diffusion-inpainting (and SD 1.x).

use burn::tensor::backend::Backend;
use burn::tensor::Tensor;

use super::{
    check_same_shape, check_steps, np_arange, np_linspace, np_round, prediction_type,
    require_timesteps, timestep_spacing, NoiseSchedule, NoiseSource, PredictionType, Scheduler,
    SchedulerConfig, StepOutput, TimestepSpacing,
};
use crate::error::{DiffusionError, Result};

const CLASS: &str = "PNDMScheduler";

/// diffusers' `PNDMScheduler` in PLMS mode (`skip_prk_steps = true`; the Runge-Kutta
/// warm-up is not ported and a config without `skip_prk_steps: true` is rejected).
///
/// Reads the beta keys, `prediction_type` (epsilon or v_prediction), `set_alpha_to_one`
/// (false), `steps_offset` (0) and `timestep_spacing` (`leading`). The second timestep
/// repeats the first's neighbour, as in diffusers: `n` steps run the model `n + 1` times.
#[derive(Debug, Clone)]
pub struct PndmScheduler<B: Backend> {
    schedule: NoiseSchedule,
    final_alpha_cumprod: f32,
    prediction: PredictionType,
    spacing: TimestepSpacing,
    steps_offset: usize,
    num_inference_steps: usize,
    timesteps: Vec<f64>,
    counter: usize,
    ets: Vec<Tensor<B, 4>>,
    cur_sample: Option<Tensor<B, 4>>,
}

impl<B: Backend> PndmScheduler<B> {
    /// The scheduler `PNDMScheduler.from_config(config)` would build.
    pub fn from_config(config: &SchedulerConfig) -> Result<Self> {
        if !config.skip_prk_steps.unwrap_or(false) {
            return Err(DiffusionError::config(
                "scheduler_config.json",
                "PNDMScheduler: only PLMS (`skip_prk_steps: true`, as Stable Diffusion sets it) \
                 is ported; the PRK warm-up steps are not",
            ));
        }
        let schedule = NoiseSchedule::new(config, CLASS, false)?;
        let final_alpha_cumprod =
            schedule.final_alpha_cumprod(config.set_alpha_to_one.unwrap_or(false));
        Ok(PndmScheduler {
            final_alpha_cumprod,
            prediction: prediction_type(
                config,
                CLASS,
                &[PredictionType::Epsilon, PredictionType::VPrediction],
            )?,
            spacing: timestep_spacing(config, TimestepSpacing::Leading)?,
            steps_offset: config.steps_offset.unwrap_or(0),
            num_inference_steps: 0,
            timesteps: Vec::new(),
            counter: 0,
            ets: Vec::new(),
            cur_sample: None,
            schedule,
        })
    }

    fn prev_sample(
        &self,
        sample: Tensor<B, 4>,
        t: i64,
        prev_t: i64,
        model_output: Tensor<B, 4>,
    ) -> Result<Tensor<B, 4>> {
        let train = self.schedule.num_train_timesteps() as i64;
        if t < 0 || t >= train {
            return Err(DiffusionError::Scheduler(format!(
                "{CLASS}: timestep {t} is outside 0..{train}"
            )));
        }
        let a_t = self.schedule.alphas_cumprod[t as usize];
        let a_prev = if prev_t >= 0 {
            self.schedule.alphas_cumprod[prev_t as usize]
        } else {
            self.final_alpha_cumprod
        };
        let b_t = 1.0 - a_t;
        let b_prev = 1.0 - a_prev;
        let model_output = match self.prediction {
            PredictionType::VPrediction => model_output * a_t.sqrt() + sample.clone() * b_t.sqrt(),
            _ => model_output,
        };
        let sample_coeff = (a_prev / a_t).sqrt();
        let denom = a_t * b_prev.sqrt() + (a_t * b_t * a_prev).sqrt();
        Ok(sample * sample_coeff - model_output * (a_prev - a_t) / denom)
    }
}

impl<B: Backend> Scheduler<B> for PndmScheduler<B> {
    fn class_name(&self) -> &'static str {
        CLASS
    }

    fn set_timesteps(&mut self, n: usize) -> Result<()> {
        let train = self.schedule.num_train_timesteps();
        check_steps(n, train, CLASS)?;
        // Ascending, as diffusers' `_timesteps`.
        let base: Vec<f64> = match self.spacing {
            TimestepSpacing::Linspace => np_linspace(0.0, (train - 1) as f64, n)
                .into_iter()
                .map(np_round)
                .collect(),
            TimestepSpacing::Leading => {
                let ratio = train / n;
                (0..n)
                    .map(|i| (i * ratio + self.steps_offset) as f64)
                    .collect()
            }
            TimestepSpacing::Trailing => {
                let ratio = train as f64 / n as f64;
                let mut v: Vec<f64> = np_arange(train as f64, 0.0, -ratio)
                    .into_iter()
                    .map(|x| np_round(x) - 1.0)
                    .collect();
                v.reverse();
                v
            }
        };
        if let Some(bad) = base.iter().find(|&&t| t >= train as f64) {
            return Err(DiffusionError::Scheduler(format!(
                "{CLASS}: steps_offset {} puts timestep {bad} past the {train} training timesteps",
                self.steps_offset
            )));
        }
        // plms = concat(ts[:-1], ts[-2:-1], ts[-1:]) reversed.
        let mut plms: Vec<f64> = base[..base.len() - 1].to_vec();
        if base.len() >= 2 {
            plms.push(base[base.len() - 2]);
        }
        plms.push(base[base.len() - 1]);
        plms.reverse();
        self.num_inference_steps = n;
        self.timesteps = plms;
        self.counter = 0;
        self.ets.clear();
        self.cur_sample = None;
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
        _noise: &mut dyn NoiseSource<B>,
    ) -> Result<StepOutput<B>> {
        require_timesteps(self.num_inference_steps != 0, CLASS, "step")?;
        check_same_shape(&model_output, &sample, CLASS)?;
        if t.fract() != 0.0 {
            return Err(DiffusionError::Scheduler(format!(
                "{CLASS}: timestep {t} is not an integer"
            )));
        }
        let ratio = (self.schedule.num_train_timesteps() / self.num_inference_steps) as i64;
        let mut t = t as i64;
        let mut prev_t = t - ratio;
        if self.counter != 1 {
            if self.ets.len() > 3 {
                self.ets.drain(..self.ets.len() - 3);
            }
            self.ets.push(model_output.clone());
        } else {
            prev_t = t;
            t += ratio;
        }
        let mut sample = sample;
        let n = self.ets.len();
        let e = |k: usize| self.ets[n - k].clone();
        let model_output = if n == 1 && self.counter == 0 {
            self.cur_sample = Some(sample.clone());
            model_output
        } else if n == 1 && self.counter == 1 {
            sample = self.cur_sample.take().ok_or_else(|| {
                DiffusionError::Scheduler(format!("{CLASS}: internal state lost"))
            })?;
            (model_output + e(1)) / 2.0
        } else if n == 2 {
            (e(1) * 3.0 - e(2)) / 2.0
        } else if n == 3 {
            (e(1) * 23.0 - e(2) * 16.0 + e(3) * 5.0) / 12.0
        } else {
            (e(1) * 55.0 - e(2) * 59.0 + e(3) * 37.0 - e(4) * 9.0) * (1.0 / 24.0)
        };
        let prev = self.prev_sample(sample, t, prev_t, model_output)?;
        self.counter += 1;
        Ok(StepOutput {
            prev_sample: prev,
            pred_original_sample: None,
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
