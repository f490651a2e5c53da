//! DPM-Solver and DPM-Solver++ (Lu et al. 2022), multistep, diffusers'
//! `DPMSolverMultistepScheduler`. With its defaults (`dpmsolver++`, order 2, midpoint) it is
//! the "DPM++ 2M" sampler; with `use_karras_sigmas` "DPM++ 2M Karras".

use burn::tensor::backend::Backend;
use burn::tensor::Tensor;

use super::euler::final_sigma_min;
use super::{
    check_same_shape, check_steps, interp_sigmas, karras_sigmas, log_sigmas, np_arange,
    np_linspace, np_round, prediction_type, reject, require_timesteps, sigma_to_t,
    timestep_spacing, NoiseSchedule, NoiseSource, PredictionType, Scheduler, SchedulerConfig,
    StepOutput, TimestepSpacing,
};
use crate::error::{DiffusionError, Result};

const CLASS: &str = "DPMSolverMultistepScheduler";

/// `algorithm_type`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DpmAlgorithm {
    /// `dpmsolver++`: data prediction (the default, and SD's usual choice).
    DpmSolverPlusPlus,
    /// `dpmsolver`: noise prediction.
    DpmSolver,
    /// `sde-dpmsolver++`: the stochastic variant; draws noise every step.
    SdeDpmSolverPlusPlus,
}

/// `solver_type` for the second-order update.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DpmSolverType {
    /// `midpoint` (the default).
    Midpoint,
    /// `heun`.
    Heun,
}

/// diffusers' `DPMSolverMultistepScheduler`.
///
/// Reads the beta keys, `solver_order` (2; 1 to 3), `prediction_type` (epsilon, v_prediction,
/// sample), `algorithm_type` (`dpmsolver++`), `solver_type` (`midpoint`),
/// `lower_order_final` (true), `euler_at_final` (false), `use_karras_sigmas` (false),
/// `final_sigmas_type` (`zero`), `lambda_min_clipped` (-inf), `variance_type`,
/// `timestep_spacing` (`linspace`), `steps_offset` (0), `rescale_betas_zero_snr`.
#[derive(Debug, Clone)]
pub struct DpmSolverMultistepScheduler<B: Backend> {
    schedule: NoiseSchedule,
    order: usize,
    prediction: PredictionType,
    algorithm: DpmAlgorithm,
    solver: DpmSolverType,
    lower_order_final: bool,
    euler_at_final: bool,
    karras: bool,
    cosine: bool,
    final_sigma_min: bool,
    lambda_min_clipped: f64,
    learned_variance: bool,
    spacing: TimestepSpacing,
    steps_offset: usize,
    timesteps: Vec<f64>,
    sigmas: Vec<f32>,
    model_outputs: Vec<Option<Tensor<B, 4>>>,
    lower_order_nums: usize,
    step_index: Option<usize>,
    begin_index: Option<usize>,
}

/// `(alpha_t, sigma_t)` of a sigma, in f32 as diffusers' 0-d tensors.
fn alpha_sigma(sigma: f32) -> (f32, f32) {
    let alpha = 1.0 / (sigma * sigma + 1.0).sqrt();
    (alpha, sigma * alpha)
}

impl<B: Backend> DpmSolverMultistepScheduler<B> {
    /// The scheduler `DPMSolverMultistepScheduler.from_config(config)` would build.
    pub fn from_config(config: &SchedulerConfig) -> Result<Self> {
        let ctx = "scheduler_config.json";
        reject(config.thresholding, "thresholding", CLASS)?;
        reject(
            config.use_exponential_sigmas,
            "use_exponential_sigmas",
            CLASS,
        )?;
        reject(config.use_beta_sigmas, "use_beta_sigmas", CLASS)?;
        reject(config.use_lu_lambdas, "use_lu_lambdas", CLASS)?;
        reject(config.use_flow_sigmas, "use_flow_sigmas", CLASS)?;
        let algorithm = match config.algorithm_type.as_deref().unwrap_or("dpmsolver++") {
            "dpmsolver++" | "deis" => DpmAlgorithm::DpmSolverPlusPlus,
            "dpmsolver" => DpmAlgorithm::DpmSolver,
            "sde-dpmsolver++" => DpmAlgorithm::SdeDpmSolverPlusPlus,
            other => {
                return Err(DiffusionError::config(
                    ctx,
                    format!(
                        "{CLASS}: algorithm_type {other:?} is not supported (dpmsolver++, \
                         dpmsolver, sde-dpmsolver++)"
                    ),
                ))
            }
        };
        let solver = match config.solver_type.as_deref().unwrap_or("midpoint") {
            "midpoint" | "logrho" | "bh1" | "bh2" => DpmSolverType::Midpoint,
            "heun" => DpmSolverType::Heun,
            other => {
                return Err(DiffusionError::config(
                    ctx,
                    format!("{CLASS}: unknown solver_type {other:?}"),
                ))
            }
        };
        let order = config.solver_order.unwrap_or(2);
        if !(1..=3).contains(&order) {
            return Err(DiffusionError::config(
                ctx,
                format!("{CLASS}: solver_order must be 1, 2 or 3, got {order}"),
            ));
        }
        if algorithm == DpmAlgorithm::SdeDpmSolverPlusPlus && order == 3 {
            return Err(DiffusionError::config(
                ctx,
                format!("{CLASS}: sde-dpmsolver++ supports solver_order 1 or 2"),
            ));
        }
        let final_sigma_min = final_sigma_min(config, CLASS)?;
        if algorithm == DpmAlgorithm::DpmSolver && !final_sigma_min {
            return Err(DiffusionError::config(
                ctx,
                format!(
                    "{CLASS}: final_sigmas_type zero is not supported for algorithm_type \
                     dpmsolver; use sigma_min"
                ),
            ));
        }
        let learned_variance = match config.variance_type.as_deref() {
            None => false,
            Some("learned") | Some("learned_range") => true,
            Some(other) => {
                return Err(DiffusionError::config(
                    ctx,
                    format!("{CLASS}: unknown variance_type {other:?}"),
                ))
            }
        };
        Ok(DpmSolverMultistepScheduler {
            schedule: NoiseSchedule::new(config, CLASS, true)?,
            order,
            prediction: prediction_type(
                config,
                CLASS,
                &[
                    PredictionType::Epsilon,
                    PredictionType::VPrediction,
                    PredictionType::Sample,
                ],
            )?,
            algorithm,
            solver,
            lower_order_final: config.lower_order_final.unwrap_or(true),
            euler_at_final: config.euler_at_final.unwrap_or(false),
            karras: config.use_karras_sigmas.unwrap_or(false),
            cosine: config.beta_schedule.as_deref() == Some("squaredcos_cap_v2"),
            final_sigma_min,
            lambda_min_clipped: config.lambda_min_clipped.unwrap_or(f64::NEG_INFINITY),
            learned_variance,
            spacing: timestep_spacing(config, TimestepSpacing::Linspace)?,
            steps_offset: config.steps_offset.unwrap_or(0),
            timesteps: Vec::new(),
            sigmas: Vec::new(),
            model_outputs: vec![None; order],
            lower_order_nums: 0,
            step_index: None,
            begin_index: None,
        })
    }

    /// The model output converted to what the solver integrates (x0 for `dpmsolver++`,
    /// epsilon for `dpmsolver`).
    fn convert(
        &self,
        model_output: Tensor<B, 4>,
        sample: &Tensor<B, 4>,
        i: usize,
    ) -> Result<Tensor<B, 4>> {
        let model_output = if self.learned_variance {
            let [b, c, h, w] = model_output.dims();
            if c < 3 {
                return Err(DiffusionError::input_shape(
                    format!("{CLASS}.step"),
                    format!("learned variance needs at least 3 output channels, got {c}"),
                ));
            }
            model_output.slice([0..b, 0..3, 0..h, 0..w])
        } else {
            model_output
        };
        let (alpha_t, sigma_t) = alpha_sigma(self.sigmas[i]);
        Ok(match self.algorithm {
            DpmAlgorithm::DpmSolverPlusPlus | DpmAlgorithm::SdeDpmSolverPlusPlus => {
                match self.prediction {
                    PredictionType::Epsilon => (sample.clone() - model_output * sigma_t) / alpha_t,
                    PredictionType::Sample => model_output,
                    PredictionType::VPrediction => {
                        sample.clone() * alpha_t - model_output * sigma_t
                    }
                }
            }
            DpmAlgorithm::DpmSolver => match self.prediction {
                PredictionType::Epsilon => model_output,
                PredictionType::Sample => (sample.clone() - model_output * alpha_t) / sigma_t,
                PredictionType::VPrediction => model_output * alpha_t + sample.clone() * sigma_t,
            },
        })
    }

    fn lambda(alpha: f32, sigma: f32) -> f32 {
        alpha.ln() - sigma.ln()
    }

    fn first_order(
        &self,
        m0: Tensor<B, 4>,
        sample: Tensor<B, 4>,
        i: usize,
        noise: Option<Tensor<B, 4>>,
    ) -> Tensor<B, 4> {
        let (alpha_t, sigma_t) = alpha_sigma(self.sigmas[i + 1]);
        let (alpha_s, sigma_s) = alpha_sigma(self.sigmas[i]);
        let h = Self::lambda(alpha_t, sigma_t) - Self::lambda(alpha_s, sigma_s);
        match self.algorithm {
            DpmAlgorithm::DpmSolverPlusPlus => {
                sample * (sigma_t / sigma_s) - m0 * (alpha_t * ((-h).exp() - 1.0))
            }
            DpmAlgorithm::DpmSolver => {
                sample * (alpha_t / alpha_s) - m0 * (sigma_t * (h.exp() - 1.0))
            }
            DpmAlgorithm::SdeDpmSolverPlusPlus => {
                let z = noise.unwrap_or_else(|| sample.zeros_like());
                sample * (sigma_t / sigma_s * (-h).exp())
                    + m0 * (alpha_t * (1.0 - (-2.0 * h).exp()))
                    + z * (sigma_t * (1.0 - (-2.0 * h).exp()).sqrt())
            }
        }
    }

    fn second_order(
        &self,
        m0: Tensor<B, 4>,
        m1: Tensor<B, 4>,
        sample: Tensor<B, 4>,
        i: usize,
        noise: Option<Tensor<B, 4>>,
    ) -> Tensor<B, 4> {
        let (alpha_t, sigma_t) = alpha_sigma(self.sigmas[i + 1]);
        let (alpha_s0, sigma_s0) = alpha_sigma(self.sigmas[i]);
        let (alpha_s1, sigma_s1) = alpha_sigma(self.sigmas[i - 1]);
        let lambda_t = Self::lambda(alpha_t, sigma_t);
        let lambda_s0 = Self::lambda(alpha_s0, sigma_s0);
        let lambda_s1 = Self::lambda(alpha_s1, sigma_s1);
        let (h, h0) = (lambda_t - lambda_s0, lambda_s0 - lambda_s1);
        let r0 = h0 / h;
        let d1 = (m0.clone() - m1) * (1.0 / r0);
        let d0 = m0;
        match (self.algorithm, self.solver) {
            (DpmAlgorithm::DpmSolverPlusPlus, DpmSolverType::Midpoint) => {
                sample * (sigma_t / sigma_s0)
                    - d0 * (alpha_t * ((-h).exp() - 1.0))
                    - d1 * (0.5 * (alpha_t * ((-h).exp() - 1.0)))
            }
            (DpmAlgorithm::DpmSolverPlusPlus, DpmSolverType::Heun) => {
                sample * (sigma_t / sigma_s0) - d0 * (alpha_t * ((-h).exp() - 1.0))
                    + d1 * (alpha_t * (((-h).exp() - 1.0) / h + 1.0))
            }
            (DpmAlgorithm::DpmSolver, DpmSolverType::Midpoint) => {
                sample * (alpha_t / alpha_s0)
                    - d0 * (sigma_t * (h.exp() - 1.0))
                    - d1 * (0.5 * (sigma_t * (h.exp() - 1.0)))
            }
            (DpmAlgorithm::DpmSolver, DpmSolverType::Heun) => {
                sample * (alpha_t / alpha_s0)
                    - d0 * (sigma_t * (h.exp() - 1.0))
                    - d1 * (sigma_t * ((h.exp() - 1.0) / h - 1.0))
            }
            (DpmAlgorithm::SdeDpmSolverPlusPlus, solver) => {
                let z = noise.unwrap_or_else(|| sample.zeros_like());
                let e2 = (-2.0 * h).exp();
                let d1_coeff = match solver {
                    DpmSolverType::Midpoint => 0.5 * (alpha_t * (1.0 - e2)),
                    DpmSolverType::Heun => alpha_t * ((1.0 - e2) / (-2.0 * h) + 1.0),
                };
                sample * (sigma_t / sigma_s0 * (-h).exp())
                    + d0 * (alpha_t * (1.0 - e2))
                    + d1 * d1_coeff
                    + z * (sigma_t * (1.0 - e2).sqrt())
            }
        }
    }

    fn third_order(
        &self,
        m0: Tensor<B, 4>,
        m1: Tensor<B, 4>,
        m2: Tensor<B, 4>,
        sample: Tensor<B, 4>,
        i: usize,
    ) -> Tensor<B, 4> {
        let (alpha_t, sigma_t) = alpha_sigma(self.sigmas[i + 1]);
        let (alpha_s0, sigma_s0) = alpha_sigma(self.sigmas[i]);
        let (alpha_s1, sigma_s1) = alpha_sigma(self.sigmas[i - 1]);
        let (alpha_s2, sigma_s2) = alpha_sigma(self.sigmas[i - 2]);
        let lambda_t = Self::lambda(alpha_t, sigma_t);
        let lambda_s0 = Self::lambda(alpha_s0, sigma_s0);
        let lambda_s1 = Self::lambda(alpha_s1, sigma_s1);
        let lambda_s2 = Self::lambda(alpha_s2, sigma_s2);
        let (h, h0, h1) = (
            lambda_t - lambda_s0,
            lambda_s0 - lambda_s1,
            lambda_s1 - lambda_s2,
        );
        let (r0, r1) = (h0 / h, h1 / h);
        let d1_0 = (m0.clone() - m1.clone()) * (1.0 / r0);
        let d1_1 = (m1 - m2) * (1.0 / r1);
        let d1 = d1_0.clone() + (d1_0.clone() - d1_1.clone()) * (r0 / (r0 + r1));
        let d2 = (d1_0 - d1_1) * (1.0 / (r0 + r1));
        let d0 = m0;
        match self.algorithm {
            DpmAlgorithm::DpmSolver => {
                sample * (alpha_t / alpha_s0)
                    - d0 * (sigma_t * (h.exp() - 1.0))
                    - d1 * (sigma_t * ((h.exp() - 1.0) / h - 1.0))
                    - d2 * (sigma_t * ((h.exp() - 1.0 - h) / (h * h) - 0.5))
            }
            _ => {
                sample * (sigma_t / sigma_s0) - d0 * (alpha_t * ((-h).exp() - 1.0))
                    + d1 * (alpha_t * (((-h).exp() - 1.0) / h + 1.0))
                    - d2 * (alpha_t * (((-h).exp() - 1.0 + h) / (h * h) - 0.5))
            }
        }
    }

    fn index_for_timestep(&self, t: f64) -> usize {
        let hits: Vec<usize> = self
            .timesteps
            .iter()
            .enumerate()
            .filter(|(_, &x)| x == t)
            .map(|(i, _)| i)
            .collect();
        match hits.len() {
            0 => self.timesteps.len() - 1,
            1 => hits[0],
            _ => hits[1],
        }
    }
}

impl<B: Backend> Scheduler<B> for DpmSolverMultistepScheduler<B> {
    fn class_name(&self) -> &'static str {
        CLASS
    }

    fn set_timesteps(&mut self, n: usize) -> Result<()> {
        let train = self.schedule.num_train_timesteps();
        check_steps(n, train, CLASS)?;
        // last_timestep = train - searchsorted(flip(lambda_t), lambda_min_clipped)
        let lambdas: Vec<f32> = self
            .schedule
            .alphas_cumprod
            .iter()
            .map(|&a| a.sqrt().ln() - (1.0 - a).sqrt().ln())
            .collect();
        let clipped = lambdas
            .iter()
            .rev()
            .filter(|&&l| (l as f64) < self.lambda_min_clipped)
            .count();
        let last = train - clipped;
        let mut timesteps: Vec<f64> = match self.spacing {
            TimestepSpacing::Linspace => {
                let v = np_linspace(0.0, last as f64 - 1.0, n + 1);
                v.into_iter().rev().take(n).map(np_round).collect()
            }
            TimestepSpacing::Leading => {
                let ratio = last / (n + 1);
                (0..=n)
                    .rev()
                    .take(n)
                    .map(|i| (i * ratio + self.steps_offset) as f64)
                    .collect()
            }
            TimestepSpacing::Trailing => {
                let ratio = train as f64 / n as f64;
                np_arange(last as f64, 0.0, -ratio)
                    .into_iter()
                    .map(|x| np_round(x) - 1.0)
                    .collect()
            }
        };
        let train_sigmas = self.schedule.train_sigmas();
        let sigmas: Vec<f64> = if self.karras {
            let log_sigmas = log_sigmas(&train_sigmas);
            let s = karras_sigmas(train_sigmas[0] as f64, train_sigmas[train - 1] as f64, n);
            timesteps = s
                .iter()
                .map(|&x| {
                    let t = sigma_to_t(x, &log_sigmas);
                    if self.cosine {
                        t
                    } else {
                        np_round(t)
                    }
                })
                .collect();
            s
        } else {
            interp_sigmas(&timesteps, &train_sigmas)
        };
        if let Some(bad) = timesteps.iter().find(|&&t| t >= train as f64 || t < 0.0) {
            return Err(DiffusionError::Scheduler(format!(
                "{CLASS}: timestep {bad} is outside the {train} training timesteps"
            )));
        }
        let last_sigma = self.schedule.final_sigma(self.final_sigma_min);
        self.sigmas = sigmas
            .into_iter()
            .chain(std::iter::once(last_sigma))
            .map(|s| s as f32)
            .collect();
        // diffusers casts the timesteps to int64 (truncating fractional ones).
        self.timesteps = timesteps.into_iter().map(f64::trunc).collect();
        self.model_outputs = vec![None; self.order];
        self.lower_order_nums = 0;
        self.step_index = None;
        self.begin_index = None;
        Ok(())
    }

    fn timesteps(&self) -> &[f64] {
        &self.timesteps
    }

    fn sigmas(&self) -> Option<&[f32]> {
        Some(&self.sigmas)
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
        require_timesteps(!self.timesteps.is_empty(), CLASS, "step")?;
        if !self.learned_variance {
            check_same_shape(&model_output, &sample, CLASS)?;
        }
        let i = match (self.step_index, self.begin_index) {
            (Some(i), _) => i,
            (None, Some(b)) => b,
            (None, None) => self.index_for_timestep(t),
        };
        let n = self.timesteps.len();
        if i >= n {
            return Err(DiffusionError::Scheduler(format!(
                "{CLASS}: stepped past the last of {n} timesteps"
            )));
        }
        self.step_index = Some(i);
        let lower_order_final = i == n - 1
            && (self.euler_at_final || (self.lower_order_final && n < 15) || !self.final_sigma_min);
        let lower_order_second = i + 2 == n && self.lower_order_final && n < 15;
        let converted = self.convert(model_output, &sample, i)?;
        self.model_outputs.rotate_left(1);
        let last = self.model_outputs.len() - 1;
        self.model_outputs[last] = Some(converted.clone());
        let z = if self.algorithm == DpmAlgorithm::SdeDpmSolverPlusPlus {
            Some(noise.noise(converted.dims(), &converted.device())?)
        } else {
            None
        };
        let m = |k: usize| -> Result<Tensor<B, 4>> {
            self.model_outputs[last - k].clone().ok_or_else(|| {
                DiffusionError::Scheduler(format!("{CLASS}: missing earlier model output"))
            })
        };
        let prev = if self.order == 1 || self.lower_order_nums < 1 || lower_order_final {
            self.first_order(converted, sample, i, z)
        } else if self.order == 2 || self.lower_order_nums < 2 || lower_order_second {
            self.second_order(converted, m(1)?, sample, i, z)
        } else {
            self.third_order(converted, m(1)?, m(2)?, sample, i)
        };
        if self.lower_order_nums < self.order {
            self.lower_order_nums += 1;
        }
        self.step_index = Some(i + 1);
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
        check_same_shape(&noise, &original, CLASS)?;
        require_timesteps(!self.timesteps.is_empty(), CLASS, "add_noise")?;
        let i = match (self.begin_index, self.step_index) {
            (None, _) => self.index_for_timestep(t),
            (Some(_), Some(s)) => s,
            (Some(b), None) => b,
        };
        let sigma = *self
            .sigmas
            .get(i)
            .ok_or_else(|| DiffusionError::Scheduler(format!("{CLASS}: no sigma at index {i}")))?;
        let (alpha_t, sigma_t) = alpha_sigma(sigma);
        Ok(original * alpha_t + noise * sigma_t)
    }

    fn set_begin_index(&mut self, begin_index: usize) {
        self.begin_index = Some(begin_index);
    }

    fn num_train_timesteps(&self) -> usize {
        self.schedule.num_train_timesteps()
    }
}
