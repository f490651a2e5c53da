//! Parity of the schedulers with diffusers 0.42 on the trajectories written by
//! `tools/parity/diffusers_sched_vae.py` (`tests/fixtures/schedulers`): every scheduler class
//! built from the published SD-1.5-inpainting (PNDM) and SD-2-inpainting (DDIM) configs and
//! from variants, fed fixed model outputs step by step, with injected noise where a step draws
//! noise. Timesteps must match exactly (Karras timesteps of the Euler scheduler, which are
//! fractional f32 values, within 1e-3), sigmas, scaled inputs, every step's sample and
//! `add_noise` within 1e-4 of the tensor's scale.

use std::collections::HashMap;
use std::path::PathBuf;

use burn::tensor::{Tensor, TensorData};
use cielr_core::backend::CpuBackend;
use cielr_diffusion::schedulers::{
    build_scheduler, DdimScheduler, InjectedNoise, Scheduler, SchedulerConfig, SchedulerKind,
};
use safetensors::{Dtype, SafeTensors};
use serde::Deserialize;

type B = CpuBackend;

fn dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/schedulers")
}

#[derive(Deserialize)]
struct Manifest {
    diffusers: String,
    trajectories: Vec<Entry>,
}

#[derive(Deserialize)]
struct Entry {
    name: String,
    config: String,
    class: String,
    steps: usize,
    eta: f32,
    add_noise_index: usize,
    model_calls: usize,
}

struct Fixture {
    tensors: HashMap<String, (Vec<f64>, Vec<usize>)>,
}

impl Fixture {
    fn load() -> Self {
        let bytes = std::fs::read(dir().join("trajectories.safetensors")).unwrap();
        let st = SafeTensors::deserialize(&bytes).unwrap();
        let mut tensors = HashMap::new();
        for (name, view) in st.tensors() {
            let data = view.data();
            let values: Vec<f64> = match view.dtype() {
                Dtype::F32 => data
                    .chunks_exact(4)
                    .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]) as f64)
                    .collect(),
                Dtype::F64 => data
                    .chunks_exact(8)
                    .map(|b| f64::from_le_bytes(b.try_into().unwrap()))
                    .collect(),
                other => panic!("{name}: unexpected dtype {other:?}"),
            };
            tensors.insert(name, (values, view.shape().to_vec()));
        }
        Fixture { tensors }
    }

    fn get(&self, name: &str) -> &(Vec<f64>, Vec<usize>) {
        self.tensors
            .get(name)
            .unwrap_or_else(|| panic!("{name} missing from the fixture"))
    }

    fn has(&self, name: &str) -> bool {
        self.tensors.contains_key(name)
    }

    /// Item `i` along the first axis of `name`, as a [1,4,4,4] tensor.
    fn item(&self, name: &str, i: usize) -> Tensor<B, 4> {
        let (v, shape) = self.get(name);
        let per: usize = shape[1..].iter().product();
        let s: Vec<f32> = v[i * per..(i + 1) * per]
            .iter()
            .map(|&x| x as f32)
            .collect();
        let dims: [usize; 4] = shape[1..].try_into().unwrap();
        Tensor::from_data(TensorData::new(s, dims), &Default::default())
    }

    fn tensor(&self, name: &str) -> Tensor<B, 4> {
        let (v, shape) = self.get(name);
        let s: Vec<f32> = v.iter().map(|&x| x as f32).collect();
        let dims: [usize; 4] = shape[..].try_into().unwrap();
        Tensor::from_data(TensorData::new(s, dims), &Default::default())
    }
}

fn values(t: Tensor<B, 4>) -> Vec<f32> {
    t.into_data().to_vec::<f32>().unwrap()
}

/// Running max abs error, max scale of the reference, and max relative error (elements with
/// |ref| >= 1e-3).
#[derive(Default, Clone, Copy)]
struct Err {
    abs: f64,
    scale: f64,
    rel: f64,
}

impl Err {
    fn add(&mut self, ours: &[f32], reference: &[f64]) {
        assert_eq!(ours.len(), reference.len());
        for (&a, &b) in ours.iter().zip(reference) {
            let d = (a as f64 - b).abs();
            self.abs = self.abs.max(d);
            self.scale = self.scale.max(b.abs());
            if b.abs() >= 1e-3 {
                self.rel = self.rel.max(d / b.abs());
            }
        }
    }

    fn ok(&self) -> bool {
        self.abs <= 1e-4 * self.scale.max(1.0)
    }
}

fn kind(class: &str) -> SchedulerKind {
    SchedulerKind::from_class_name(class).unwrap()
}

fn scheduler(entry: &Entry, config: &SchedulerConfig) -> Box<dyn Scheduler<B>> {
    if entry.eta > 0.0 {
        Box::new(
            DdimScheduler::<B>::from_config(config)
                .unwrap()
                .with_eta(entry.eta),
        )
    } else {
        build_scheduler::<B>(kind(&entry.class), config).unwrap()
    }
}

#[test]
fn schedulers_match_diffusers() {
    let manifest: Manifest =
        serde_json::from_str(&std::fs::read_to_string(dir().join("manifest.json")).unwrap())
            .unwrap();
    let fx = Fixture::load();
    let mut failures = Vec::new();
    let mut worst = Err::default();
    println!(
        "reference: diffusers {}; {} trajectories",
        manifest.diffusers,
        manifest.trajectories.len()
    );
    println!(
        "{:<58} {:>5} {:>10} {:>10} {:>10} {:>10} {:>8}",
        "trajectory", "calls", "max abs", "max rel", "scale", "sigma err", "t err"
    );
    for entry in &manifest.trajectories {
        let config = SchedulerConfig::from_file(dir().join(&entry.config)).unwrap();
        let mut s = scheduler(entry, &config);
        s.set_timesteps(entry.steps).unwrap();
        let name = &entry.name;

        // Timesteps.
        let (ref_ts, _) = fx.get(&format!("{name}/timesteps"));
        let ts = s.timesteps().to_vec();
        let fractional = ref_ts.iter().any(|t| t.fract() != 0.0);
        let ts_ok = ts.len() == ref_ts.len()
            && ts.iter().zip(ref_ts).all(|(a, b)| {
                if fractional && entry.class == "EulerDiscreteScheduler" {
                    (a - b).abs() <= 1e-3
                } else {
                    a == b
                }
            });
        let t_err = ts
            .iter()
            .zip(ref_ts)
            .map(|(a, b)| (a - b).abs())
            .fold(0f64, f64::max);
        if !ts_ok {
            failures.push(format!("{name}: timesteps {ts:?} != {ref_ts:?}"));
            continue;
        }
        assert_eq!(ts.len(), entry.model_calls);

        // Sigmas.
        let mut sigma_err = 0f64;
        let sigma_key = format!("{name}/sigmas");
        if fx.has(&sigma_key) {
            let (ref_sigmas, _) = fx.get(&sigma_key);
            let sigmas = s.sigmas().expect("sigma schedulers expose sigmas");
            assert_eq!(sigmas.len(), ref_sigmas.len(), "{name}: number of sigmas");
            for (a, b) in sigmas.iter().zip(ref_sigmas) {
                sigma_err = sigma_err.max((*a as f64 - b).abs() / b.abs().max(1e-3));
            }
            if sigma_err > 1e-5 {
                failures.push(format!("{name}: sigma rel err {sigma_err:.2e}"));
            }
        } else {
            assert!(s.sigmas().is_none());
        }
        let (init, _) = fx.get(&format!("{name}/init_noise_sigma"));
        if (s.init_noise_sigma() - init[0]).abs() > 1e-5 * init[0] {
            failures.push(format!(
                "{name}: init_noise_sigma {} != {}",
                s.init_noise_sigma(),
                init[0]
            ));
        }

        // The trajectory.
        let mut noise = InjectedNoise::new((0..21).map(|i| fx.item("noises", i)));
        let mut sample = fx.tensor("x_init") * s.init_noise_sigma() as f32;
        let mut err = Err::default();
        let scaled_key = format!("{name}/scaled");
        let (ref_samples, _) = fx.get(&format!("{name}/samples"));
        for (i, &t) in ts.iter().enumerate() {
            let scaled = s.scale_model_input(sample.clone(), t).unwrap();
            if fx.has(&scaled_key) {
                err.add(
                    &values(scaled),
                    &fx.get(&scaled_key).0[i * 64..(i + 1) * 64],
                );
            }
            let out = s
                .step(fx.item("model_outputs", i), t, sample, &mut noise)
                .unwrap();
            sample = out.prev_sample;
            err.add(&values(sample.clone()), &ref_samples[i * 64..(i + 1) * 64]);
        }

        // add_noise on a fresh scheduler.
        let mut fresh = scheduler(entry, &config);
        fresh.set_timesteps(entry.steps).unwrap();
        let t = fresh.timesteps()[entry.add_noise_index];
        let noised = fresh
            .add_noise(fx.tensor("x0"), fx.tensor("noise"), t)
            .unwrap();
        err.add(&values(noised), &fx.get(&format!("{name}/add_noise")).0);

        println!(
            "{:<58} {:>5} {:>10.2e} {:>10.2e} {:>10.3} {:>10.2e} {:>8.1e}",
            name,
            ts.len(),
            err.abs,
            err.rel,
            err.scale,
            sigma_err,
            t_err
        );
        if !err.ok() {
            failures.push(format!(
                "{name}: max abs err {:.3e} at scale {:.3}",
                err.abs, err.scale
            ));
        }
        worst.abs = worst.abs.max(err.abs / err.scale.max(1.0));
        worst.rel = worst.rel.max(err.rel);
    }
    println!(
        "worst: max abs / max(1, scale) {:.2e}, max rel {:.2e}",
        worst.abs, worst.rel
    );
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn scheduler_misuse_is_an_error() {
    let config = SchedulerConfig::from_file(dir().join("configs/sd15_inpainting.json")).unwrap();
    for kind in SchedulerKind::ALL {
        let mut s = build_scheduler::<B>(kind, &config).unwrap();
        let x = Tensor::<B, 4>::zeros([1, 4, 2, 2], &Default::default());
        let mut noise = InjectedNoise::new([]);
        // Stepping before set_timesteps.
        assert!(
            s.step(x.clone(), 999.0, x.clone(), &mut noise).is_err(),
            "{kind:?}"
        );
        assert!(s.set_timesteps(0).is_err(), "{kind:?}");
        assert!(s.set_timesteps(5000).is_err(), "{kind:?}");
        s.set_timesteps(4).unwrap();
        // Mismatched shapes.
        let y = Tensor::<B, 4>::zeros([1, 4, 2, 3], &Default::default());
        let t = s.timesteps()[0];
        assert!(s.step(x.clone(), t, y, &mut noise).is_err(), "{kind:?}");
    }
    // A config error names the problem.
    let bad = SchedulerConfig::from_json_str(r#"{"prediction_type": "flow"}"#).unwrap();
    let e = build_scheduler::<B>(SchedulerKind::Ddim, &bad)
        .err()
        .unwrap();
    assert!(e.to_string().contains("flow"), "{e}");
    // PNDM without skip_prk_steps is refused, not silently run differently.
    let prk = SchedulerConfig::from_json_str("{}").unwrap();
    assert!(build_scheduler::<B>(SchedulerKind::Pndm, &prk).is_err());
    // Euler ancestral without noise left fails instead of inventing noise.
    let mut ea = build_scheduler::<B>(SchedulerKind::EulerAncestralDiscrete, &config).unwrap();
    ea.set_timesteps(2).unwrap();
    let x = Tensor::<B, 4>::zeros([1, 4, 2, 2], &Default::default());
    let t = ea.timesteps()[0];
    assert!(ea
        .step(x.clone(), t, x, &mut InjectedNoise::new([]))
        .is_err());
}
