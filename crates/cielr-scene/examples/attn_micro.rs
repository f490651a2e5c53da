//! Micro benchmark of SAM's image-encoder attention with the decomposed relative-position
//! term, three ways, on the real shapes (ViT-B, 1024 px): `bias` (the rel-pos term
//! materialised as a full `[B, heads, N, N]` additive bias into the fused attention),
//! `folded` (the term folded into augmented queries/keys, fused attention without bias) and
//! `perhead` (per head: two matmuls, broadcast rel-pos add, softmax) and `batched` (the
//! same over all heads at once, scores materialised).
//!
//! Usage: `attn_micro [global|window] [RUNS]`. Prints the median time of each variant and
//! the max abs difference of `folded` and `perhead` against `bias`.

use std::time::Instant;

use burn::tensor::activation::softmax;
use burn::tensor::module::attention;
use burn::tensor::ops::AttentionModuleOptions;
use burn::tensor::{Distribution, Tensor, TensorData};
use cielr_core::backend::CpuBackend as B;

fn opts(scale: f64) -> AttentionModuleOptions {
    AttentionModuleOptions {
        scale: Some(scale),
        softcap: None,
        is_causal: false,
    }
}

/// `(rel_h [bh, h*w, h], rel_w [bh, h*w, w])` as in the encoder.
fn rel_terms(
    q: Tensor<B, 3>,
    rh: &Tensor<B, 3>,
    rw: &Tensor<B, 3>,
    h: usize,
    w: usize,
) -> (Tensor<B, 3>, Tensor<B, 3>) {
    let [bh, _, hd] = q.dims();
    let q4 = q.reshape([bh, h, w, hd]);
    let qh = q4.clone().permute([1, 0, 2, 3]).reshape([h, bh * w, hd]);
    let rel_h = qh
        .matmul(rh.clone().swap_dims(1, 2))
        .reshape([h, bh, w, h])
        .permute([1, 0, 2, 3])
        .reshape([bh, h * w, h]);
    let qw = q4.permute([2, 0, 1, 3]).reshape([w, bh * h, hd]);
    let rel_w = qw
        .matmul(rw.clone().swap_dims(1, 2))
        .reshape([w, bh, h, w])
        .permute([1, 2, 0, 3])
        .reshape([bh, h * w, w]);
    (rel_h, rel_w)
}

fn onehot(h: usize, w: usize) -> Tensor<B, 3> {
    let n = h * w;
    let mut v = vec![0f32; n * (h + w)];
    for t in 0..n {
        v[t * (h + w) + t / w] = 1.0;
        v[t * (h + w) + h + t % w] = 1.0;
    }
    Tensor::from_data(TensorData::new(v, [1, n, h + w]), &Default::default())
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let mode = args.get(1).map(String::as_str).unwrap_or("global");
    let runs: usize = args.get(2).and_then(|s| s.parse().ok()).unwrap_or(3);
    let (nb, s) = match mode {
        "global" => (1, 64),
        "window" => (25, 14),
        _ => panic!("mode global|window"),
    };
    let (heads, hd) = (12, 64);
    let bh = nb * heads;
    let n = s * s;
    let scale = (hd as f64).powf(-0.5);
    let dev = Default::default();
    let rnd =
        |shape: [usize; 3]| Tensor::<B, 3>::random(shape, Distribution::Normal(0.0, 1.0), &dev);
    let q = rnd([bh, n, hd]);
    let k = rnd([bh, n, hd]);
    let v = rnd([bh, n, hd]);
    let rh = rnd([s, s, hd]).mul_scalar(0.1);
    let rw = rnd([s, s, hd]).mul_scalar(0.1);
    let oh = onehot(s, s);
    let split = |t: Tensor<B, 3>| {
        let d = t.dims()[2];
        t.reshape([nb, heads, n, d])
    };

    let bias_fn = || {
        let (a, b) = rel_terms(q.clone(), &rh, &rw, s, s);
        let sum = a.reshape([bh, s, s, s, 1]) + b.reshape([bh, s, s, 1, s]);
        let bias = sum.reshape([nb, heads, n, n]);
        attention(
            split(q.clone()),
            split(k.clone()),
            split(v.clone()),
            None,
            Some(bias),
            opts(scale),
        )
    };
    let folded_fn = || {
        let (a, b) = rel_terms(q.clone(), &rh, &rw, s, s);
        let qf = Tensor::cat(vec![q.clone().mul_scalar(scale), a, b], 2);
        let kf = Tensor::cat(vec![k.clone(), oh.clone().expand([bh, n, 2 * s])], 2);
        attention(
            split(qf),
            split(kf),
            split(v.clone()),
            None,
            None,
            opts(1.0),
        )
    };
    let perhead_fn = || {
        let (a, b) = rel_terms(q.clone(), &rh, &rw, s, s);
        let outs: Vec<Tensor<B, 3>> = (0..bh)
            .map(|i| {
                let qi = q.clone().narrow(0, i, 1).mul_scalar(scale);
                let ki = k.clone().narrow(0, i, 1);
                let sc = qi.matmul(ki.swap_dims(1, 2)).reshape([1, s, s, s, s])
                    + a.clone().narrow(0, i, 1).reshape([1, s, s, s, 1])
                    + b.clone().narrow(0, i, 1).reshape([1, s, s, 1, s]);
                softmax(sc.reshape([1, n, n]), 2).matmul(v.clone().narrow(0, i, 1))
            })
            .collect();
        Tensor::cat(outs, 0).reshape([nb, heads, n, hd])
    };
    let batched_fn = || {
        let (a, b) = rel_terms(q.clone(), &rh, &rw, s, s);
        let sc = q
            .clone()
            .mul_scalar(scale)
            .matmul(k.clone().swap_dims(1, 2))
            .reshape([bh, s, s, s, s])
            + a.reshape([bh, s, s, s, 1])
            + b.reshape([bh, s, s, 1, s]);
        softmax(sc.reshape([bh, n, n]), 2)
            .matmul(v.clone())
            .reshape([nb, heads, n, hd])
    };
    let reference = bias_fn();
    for (name, f) in [
        ("bias", &bias_fn as &dyn Fn() -> Tensor<B, 4>),
        ("folded", &folded_fn),
        ("perhead", &perhead_fn),
        ("batched", &batched_fn),
    ] {
        let out = f();
        let err: f32 = (out - reference.clone()).abs().max().into_scalar();
        let times: Vec<f64> = (0..runs)
            .map(|_| {
                let t = Instant::now();
                std::hint::black_box(f().sum().into_scalar());
                t.elapsed().as_secs_f64()
            })
            .collect();
        println!(
            "{mode} {name:8} median {:.4}s  max|d| vs bias {err:.2e}  times {times:.3?}",
            median(times.clone())
        );
    }
}
