//! The CPU attention kernel (`cielr_core::attention`) against Burn's flex attention and an
//! f64 reference computed here, over odd shapes, broadcast masks and biases, fully masked
//! rows, causality, explicit scales, strided inputs and split-K; plus its dispatch and its
//! `exp` polynomial.

use burn::tensor::ops::AttentionModuleOptions;
use burn::tensor::{Bool, DType, Tensor, TensorData};
use cielr_core::attention::{
    attention, cpu_kernel_calls, exp_in_place, split_k_calls, uses_cpu_kernel, BLOCK_Q, TILE_KV,
};
use cielr_core::backend::CpuBackend as B;

#[path = "support/rng.rs"]
mod rng;
use rng::Rng;

/// A host-side 4-D array (row-major) that may broadcast (dims of size 1) to a target.
#[derive(Clone)]
struct Arr<T> {
    data: Vec<T>,
    shape: [usize; 4],
}

impl<T: Copy> Arr<T> {
    fn at(&self, idx: [usize; 4]) -> T {
        let mut off = 0;
        for (d, &i) in idx.iter().enumerate() {
            let i = if self.shape[d] == 1 { 0 } else { i };
            off = off * self.shape[d] + i;
        }
        self.data[off]
    }
}

#[derive(Clone)]
struct Case {
    name: String,
    q: Arr<f32>,
    k: Arr<f32>,
    v: Arr<f32>,
    mask: Option<Arr<bool>>,
    bias: Option<Arr<f32>>,
    options: AttentionModuleOptions,
}

/// softmax(q·kᵀ·scale + bias, masked)·v in f64; a row with no visible key gives zeros.
fn reference(c: &Case) -> Vec<f64> {
    let [b, h, sq, d] = c.q.shape;
    let skv = c.k.shape[2];
    let dv = c.v.shape[3];
    let scale = c.options.scale.unwrap_or(1.0 / (d as f64).sqrt());
    let off = skv as isize - sq as isize;
    let mut out = vec![0.0f64; b * h * sq * dv];
    for bi in 0..b {
        for hi in 0..h {
            for i in 0..sq {
                let mut scores = vec![f64::NEG_INFINITY; skv];
                for (j, s) in scores.iter_mut().enumerate() {
                    let masked = c.mask.as_ref().is_some_and(|m| m.at([bi, hi, i, j]))
                        || (c.options.is_causal && j as isize > i as isize + off);
                    if masked {
                        continue;
                    }
                    let dot: f64 = (0..d)
                        .map(|x| c.q.at([bi, hi, i, x]) as f64 * c.k.at([bi, hi, j, x]) as f64)
                        .sum();
                    *s = dot * scale
                        + c.bias
                            .as_ref()
                            .map_or(0.0, |bb| bb.at([bi, hi, i, j]) as f64);
                }
                let m = scores.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                if m == f64::NEG_INFINITY {
                    continue;
                }
                let w: Vec<f64> = scores.iter().map(|s| (s - m).exp()).collect();
                let z: f64 = w.iter().sum();
                let o = &mut out[((bi * h + hi) * sq + i) * dv..][..dv];
                for (j, wj) in w.iter().enumerate() {
                    for (x, ox) in o.iter_mut().enumerate() {
                        *ox += wj / z * c.v.at([bi, hi, j, x]) as f64;
                    }
                }
            }
        }
    }
    out
}

fn tensor(a: &Arr<f32>) -> Tensor<B, 4> {
    Tensor::from_data(
        TensorData::new(a.data.clone(), a.shape),
        &Default::default(),
    )
}

fn bool_tensor(a: &Arr<bool>) -> Tensor<B, 4, Bool> {
    Tensor::from_data(
        TensorData::new(a.data.clone(), a.shape),
        &Default::default(),
    )
}

type Inputs = (
    Tensor<B, 4>,
    Tensor<B, 4>,
    Tensor<B, 4>,
    Option<Tensor<B, 4, Bool>>,
    Option<Tensor<B, 4>>,
);

fn inputs(c: &Case) -> Inputs {
    (
        tensor(&c.q),
        tensor(&c.k),
        tensor(&c.v),
        c.mask.as_ref().map(bool_tensor),
        c.bias.as_ref().map(tensor),
    )
}

/// A contiguous copy (through host data).
fn dense(t: &Tensor<B, 4>) -> Tensor<B, 4> {
    Tensor::from_data(t.clone().into_data(), &Default::default())
}

fn values(t: Tensor<B, 4>) -> Vec<f32> {
    t.into_data().into_vec::<f32>().expect("f32 output")
}

/// Max abs error and max abs error relative to max |reference|.
fn errors(got: &[f32], want: &[f64]) -> (f64, f64) {
    assert_eq!(got.len(), want.len());
    let abs = got
        .iter()
        .zip(want)
        .map(|(&g, &w)| {
            assert!(g.is_finite(), "non-finite output {g}");
            (g as f64 - w).abs()
        })
        .fold(0.0, f64::max);
    let scale = want.iter().map(|w| w.abs()).fold(0.0, f64::max).max(1e-30);
    (abs, abs / scale)
}

/// Runs `c` through our kernel (asserting it was taken) and Burn's; both are checked
/// against the f64 reference and ours against Burn's.
fn check(c: &Case) {
    let want = reference(c);
    let (q, k, v, m, b) = inputs(c);
    let before = cpu_kernel_calls();
    let ours = values(attention(q, k, v, m, b, c.options));
    assert_eq!(
        cpu_kernel_calls(),
        before + 1,
        "{}: kernel not taken",
        c.name
    );
    let (q, k, v, m, b) = inputs(c);
    let burn = values(burn::tensor::module::attention(q, k, v, m, b, c.options));
    let (abs, rel) = errors(&ours, &want);
    let (babs, brel) = errors(&burn, &want);
    let (_, vs_burn) = errors(&ours, &burn.iter().map(|&x| x as f64).collect::<Vec<_>>());
    println!(
        "{:<44} ours: max abs {abs:.2e} rel {rel:.2e} | burn: max abs {babs:.2e} rel {brel:.2e} | ours vs burn rel {vs_burn:.2e}",
        c.name
    );
    assert!(rel <= 1e-5, "{}: ours vs f64 rel error {rel:e}", c.name);
    assert!(brel <= 1e-5, "{}: burn vs f64 rel error {brel:e}", c.name);
    assert!(
        vs_burn <= 2e-5,
        "{}: ours vs burn rel error {vs_burn:e}",
        c.name
    );
}

#[allow(clippy::too_many_arguments)]
fn case(
    rng: &mut Rng,
    name: &str,
    [b, h, sq, skv, d, dv]: [usize; 6],
    mask_shape: Option<[usize; 4]>,
    mask_density: f32,
    bias_shape: Option<[usize; 4]>,
    options: AttentionModuleOptions,
) -> Case {
    let arr = |rng: &mut Rng, shape: [usize; 4], amp: f32| Arr {
        data: rng.vec(shape.iter().product(), amp),
        shape,
    };
    // Scores of a few units so the softmax is neither flat nor one-hot.
    let q = arr(rng, [b, h, sq, d], 1.5);
    let k = arr(rng, [b, h, skv, d], 1.5);
    let v = arr(rng, [b, h, skv, dv], 1.0);
    let mask = mask_shape.map(|shape| Arr {
        data: (0..shape.iter().product::<usize>())
            .map(|_| (rng.unit() + 1.0) * 0.5 < mask_density)
            .collect(),
        shape,
    });
    let bias = bias_shape.map(|shape| arr(rng, shape, 2.0));
    Case {
        name: name.to_string(),
        q,
        k,
        v,
        mask,
        bias,
        options,
    }
}

fn causal() -> AttentionModuleOptions {
    AttentionModuleOptions {
        is_causal: true,
        ..Default::default()
    }
}

#[test]
fn matches_burn_and_f64_reference() {
    let mut rng = Rng(7);
    let none = AttentionModuleOptions::default();
    // Sizes that span two query blocks and two key tiles of the kernel.
    let (q2, kv2) = (BLOCK_Q + 2, TILE_KV + 88);
    let mut cases = vec![
        case(
            &mut rng,
            "single query, single key",
            [1, 1, 1, 1, 8, 8],
            None,
            0.0,
            None,
            none,
        ),
        case(
            &mut rng,
            "3 keys, dv != d",
            [2, 3, 3, 3, 40, 24],
            None,
            0.0,
            None,
            none,
        ),
        case(
            &mut rng,
            "17 q x 65 kv, d 64, dv 80",
            [1, 2, 17, 65, 64, 80],
            None,
            0.0,
            None,
            none,
        ),
        // Two query blocks and two key tiles.
        case(
            &mut rng,
            "2 q blocks x 2 kv tiles, d 80",
            [2, 2, q2, kv2, 80, 64],
            None,
            0.0,
            None,
            none,
        ),
        case(
            &mut rng,
            "3 q blocks x 2 kv tiles, d 8",
            [1, 1, 2 * BLOCK_Q + 5, kv2, 8, 16],
            None,
            0.0,
            None,
            none,
        ),
        case(
            &mut rng,
            "full mask 30%",
            [2, 2, 17, 65, 40, 40],
            Some([2, 2, 17, 65]),
            0.3,
            None,
            none,
        ),
        case(
            &mut rng,
            "mask [1,1,q,kv] 50%, 2 tiles",
            [1, 3, q2, kv2, 64, 64],
            Some([1, 1, q2, kv2]),
            0.5,
            None,
            none,
        ),
        case(
            &mut rng,
            "key-padding mask [b,1,1,kv]",
            [2, 2, 17, 65, 64, 64],
            Some([2, 1, 1, 65]),
            0.4,
            None,
            none,
        ),
        case(
            &mut rng,
            "row mask [1,h,q,1] (kv stride 0)",
            [1, 2, 17, 65, 8, 8],
            Some([1, 2, 17, 1]),
            0.3,
            None,
            none,
        ),
        case(
            &mut rng,
            "bias [1,h,q,kv]",
            [2, 2, 17, 65, 40, 40],
            None,
            0.0,
            Some([1, 2, 17, 65]),
            none,
        ),
        case(
            &mut rng,
            "bias [b,1,1,kv] + mask, 2 tiles",
            [2, 2, 65, kv2, 64, 32],
            Some([2, 2, 65, kv2]),
            0.2,
            Some([2, 1, 1, kv2]),
            none,
        ),
        case(
            &mut rng,
            "bias [1,1,q,1] (kv stride 0)",
            [1, 2, 17, 65, 8, 8],
            None,
            0.0,
            Some([1, 1, 17, 1]),
            none,
        ),
        case(
            &mut rng,
            "causal q < kv",
            [1, 2, 17, 65, 64, 64],
            None,
            0.0,
            None,
            causal(),
        ),
        case(
            &mut rng,
            "causal q == kv, 2 blocks/tiles",
            [1, 1, kv2, kv2, 16, 16],
            None,
            0.0,
            None,
            causal(),
        ),
        case(
            &mut rng,
            "causal q > kv (empty rows)",
            [1, 2, 65, 17, 40, 40],
            None,
            0.0,
            None,
            causal(),
        ),
        case(
            &mut rng,
            "causal + mask + bias",
            [1, 2, q2, kv2, 40, 40],
            Some([1, 2, q2, kv2]),
            0.3,
            Some([1, 1, q2, kv2]),
            causal(),
        ),
        case(
            &mut rng,
            "explicit scale 0.3",
            [1, 3, 17, 65, 64, 64],
            None,
            0.0,
            None,
            AttentionModuleOptions {
                scale: Some(0.3),
                ..Default::default()
            },
        ),
    ];
    // Fully masked rows: rows 0, 5 and the last one of every (b, h) see no key.
    let mut all_masked = case(
        &mut rng,
        "all-masked rows, 2 tiles",
        [2, 2, 17, kv2, 64, 64],
        Some([2, 2, 17, kv2]),
        0.3,
        None,
        none,
    );
    if let Some(m) = &mut all_masked.mask {
        for (row, chunk) in m.data.chunks_mut(kv2).enumerate() {
            if [0, 5, 16].contains(&(row % 17)) {
                chunk.fill(true);
            }
        }
    }
    cases.push(all_masked);
    // The same where Burn takes its flash path (seq_q · seq_kv > 256 Ki).
    let mut all_masked_flash = case(
        &mut rng,
        "all-masked rows, Burn flash path",
        [1, 1, 520, 520, 8, 8],
        Some([1, 1, 520, 520]),
        0.3,
        None,
        none,
    );
    if let Some(m) = &mut all_masked_flash.mask {
        for row in [0, 5, 300, 519] {
            m.data[row * 520..(row + 1) * 520].fill(true);
        }
    }
    cases.push(all_masked_flash);
    // A -inf bias over a whole row is also "no visible key".
    let mut inf_bias = case(
        &mut rng,
        "-inf bias rows",
        [1, 2, 17, 65, 8, 8],
        None,
        0.0,
        Some([1, 2, 17, 65]),
        none,
    );
    if let Some(b) = &mut inf_bias.bias {
        b.data[..65].fill(f32::NEG_INFINITY);
        b.data[65 * 3..65 * 3 + 40].fill(f32::NEG_INFINITY);
    }
    cases.push(inf_bias);
    for c in &cases {
        check(c);
    }
    // The all-masked rows really are zeros in ours (and in Burn's).
    let (q, k, v, m, b) = inputs(&cases[cases.len() - 3]);
    let out = values(attention(q, k, v, m, b, none));
    assert!(out[..64].iter().all(|&x| x == 0.0));
    assert!(out[5 * 64..6 * 64].iter().all(|&x| x == 0.0));
    assert!(out[6 * 64..7 * 64].iter().any(|&x| x != 0.0));
}

/// Decode-like shapes with few (batch, head, block) items take the split-K path when the
/// pool has threads to spare, and the plain path on one thread; both must agree with the
/// reference.
#[test]
fn split_k_and_single_thread() {
    let mut rng = Rng(11);
    let cases = [
        case(
            &mut rng,
            "decode [1,3,3,64] x 3000 keys",
            [1, 3, 3, 3000, 64, 64],
            None,
            0.0,
            None,
            Default::default(),
        ),
        case(
            &mut rng,
            "decode causal + mask + bias",
            [1, 2, 3, 3000, 40, 24],
            Some([1, 1, 3, 3000]),
            0.3,
            Some([1, 2, 1, 3000]),
            causal(),
        ),
        case(
            &mut rng,
            "decode, 1 query, 1 visible key",
            [1, 1, 1, 8000, 64, 64],
            Some([1, 1, 1, 8000]),
            0.0,
            None,
            Default::default(),
        ),
    ];
    // Only key 6000 of 8000 is visible (it lies in a late split).
    let mut cases = cases;
    if let Some(m) = &mut cases[2].mask {
        m.data.fill(true);
        m.data[6000] = false;
    }
    for threads in [1, 4] {
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .build()
            .expect("thread pool");
        for c in &cases {
            let mut c = c.clone();
            c.name = format!("{} ({threads} threads)", c.name);
            let split = pool.install(|| {
                let before = split_k_calls();
                check(&c);
                split_k_calls() - before
            });
            // One thread never splits; four threads split these few, long items.
            assert_eq!(split, usize::from(threads > 1), "{}: split-K use", c.name);
        }
    }
}

/// Permuted (`[b, s, h, d]` → `[b, h, s, d]`) and head-broadcast (stride 0) inputs are
/// read in place and give the same result as contiguous ones.
#[test]
fn strided_inputs() {
    let mut rng = Rng(5);
    let (b, h, sq, skv, d) = (2, 3, 17, 65, 40);
    let dev = Default::default();
    let qs: Tensor<B, 4> = Tensor::from_data(
        TensorData::new(rng.vec(b * sq * h * d, 1.5), [b, sq, h, d]),
        &dev,
    );
    let ks: Tensor<B, 4> = Tensor::from_data(
        TensorData::new(rng.vec(b * skv * h * d, 1.5), [b, skv, h, d]),
        &dev,
    );
    let v1: Tensor<B, 4> = Tensor::from_data(
        TensorData::new(rng.vec(b * skv * d, 1.0), [b, 1, skv, d]),
        &dev,
    );
    let q = qs.swap_dims(1, 2);
    let k = ks.swap_dims(1, 2);
    let v = v1.expand([b, h, skv, d]);
    let before = cpu_kernel_calls();
    let ours = values(attention(
        q.clone(),
        k.clone(),
        v.clone(),
        None,
        None,
        causal(),
    ));
    assert_eq!(cpu_kernel_calls(), before + 1);
    let want = values(burn::tensor::module::attention(
        dense(&q),
        dense(&k),
        dense(&v),
        None,
        None,
        causal(),
    ));
    let (abs, rel) = errors(&ours, &want.iter().map(|&x| x as f64).collect::<Vec<_>>());
    println!("strided inputs: max abs {abs:.2e}, rel {rel:.2e}");
    assert!(rel <= 2e-5);
}

/// The dispatch: our kernel for `CpuBackend` + f32 without softcap, Burn's otherwise, and
/// Burn's also for layouts the kernel does not read (negative strides).
#[test]
fn dispatch() {
    let none = AttentionModuleOptions::default();
    let softcap = AttentionModuleOptions {
        softcap: Some(20.0),
        ..Default::default()
    };
    assert!(uses_cpu_kernel::<B>(DType::F32, &none));
    assert!(!uses_cpu_kernel::<B>(DType::F16, &none));
    assert!(!uses_cpu_kernel::<B>(DType::BF16, &none));
    assert!(!uses_cpu_kernel::<B>(DType::F32, &softcap));

    let mut rng = Rng(3);
    let c = case(
        &mut rng,
        "dispatch",
        [1, 2, 5, 9, 8, 8],
        None,
        0.0,
        None,
        none,
    );
    let (q, k, v, _, _) = inputs(&c);

    // softcap → Burn's, bit-identical.
    let before = cpu_kernel_calls();
    let ours = values(attention(
        q.clone(),
        k.clone(),
        v.clone(),
        None,
        None,
        softcap,
    ));
    let burn = values(burn::tensor::module::attention(
        q.clone(),
        k.clone(),
        v.clone(),
        None,
        None,
        softcap,
    ));
    assert_eq!(cpu_kernel_calls(), before);
    assert_eq!(ours, burn);

    // f16 → Burn's.
    let half = |t: &Tensor<B, 4>| t.clone().cast(DType::F16);
    let out = attention(half(&q), half(&k), half(&v), None, None, none);
    assert_eq!(cpu_kernel_calls(), before);
    assert_eq!(out.dtype(), DType::F16);

    // A flipped (negative-stride) key tensor → Burn's, same result as contiguous.
    let kf = k.clone().flip([2]);
    let ours = values(attention(
        q.clone(),
        kf.clone(),
        v.clone(),
        None,
        None,
        none,
    ));
    assert_eq!(cpu_kernel_calls(), before);
    let want = values(burn::tensor::module::attention(
        q,
        dense(&kf),
        v,
        None,
        None,
        none,
    ));
    assert_eq!(ours, want);

    // f32 → ours.
    let (q, k, v, _, _) = inputs(&c);
    let _ = attention(q, k, v, None, None, none);
    assert_eq!(cpu_kernel_calls(), before + 1);
}

fn ulp_distance(a: f32, b: f32) -> u32 {
    // Both non-negative here: the bit patterns are ordered like the values.
    a.to_bits().abs_diff(b.to_bits())
}

#[test]
fn exp_polynomial_within_2_ulp() {
    // Every 997th float in [-87, 88] (~2.2 M points), plus the ends.
    let mut xs = Vec::new();
    for (lo, hi) in [(0.0f32, 87.0f32), (0.0, 88.0)] {
        let (mut bits, end) = (lo.to_bits(), hi.to_bits());
        while bits <= end {
            let x = f32::from_bits(bits);
            xs.push(if hi == 87.0 { -x } else { x });
            bits += 997;
        }
        xs.push(if hi == 87.0 { -hi } else { hi });
    }
    // And a dense uniform sweep of the range softmax uses most, [-20, 0].
    xs.extend((0..200_000).map(|i| -20.0 * i as f32 / 200_000.0));
    let mut ys = xs.clone();
    exp_in_place(&mut ys);
    let mut worst = (0u32, 0.0f32);
    for (&x, &y) in xs.iter().zip(&ys) {
        let u = ulp_distance(y, x.exp());
        if u > worst.0 {
            worst = (u, x);
        }
    }
    println!(
        "exp: {} points, max {} ulp (at x = {})",
        xs.len(),
        worst.0,
        worst.1
    );
    assert!(worst.0 <= 2, "exp off by {} ulp at {}", worst.0, worst.1);

    let mut special = [
        f32::NEG_INFINITY,
        -104.0,
        -1e30,
        0.0,
        89.0,
        f32::INFINITY,
        f32::NAN,
    ];
    exp_in_place(&mut special);
    assert_eq!(special[0], 0.0);
    assert_eq!(special[1], 0.0);
    assert_eq!(special[2], 0.0);
    assert_eq!(special[3], 1.0);
    assert_eq!(special[4], f32::INFINITY);
    assert_eq!(special[5], f32::INFINITY);
    assert!(special[6].is_nan());
}
