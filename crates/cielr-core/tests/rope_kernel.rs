//! `cielr_core::rope::rotate_half` on the CPU kernel against the same formula in Burn's ops
//! (f64 tensors take Burn's path) and an f64 reference: strided query/key views (`[b, s,
//! heads, d]` swapped to heads first), cosines shared by the batch or per batch row (left
//! padding), odd sequence lengths, head sizes 8 and 64.

use burn::tensor::{DType, FloatDType, Tensor, TensorData};
use cielr_core::backend::CpuBackend as B;
use cielr_core::rope::{cpu_kernel_calls, rotate_half};

#[path = "support/rng.rs"]
mod rng;
use rng::Rng;

fn random<const D: usize>(rng: &mut Rng, shape: [usize; D]) -> Tensor<B, D> {
    let n = shape.iter().product();
    let data: Vec<f32> = (0..n).map(|_| rng.unit()).collect();
    Tensor::from_data(TensorData::new(data, shape), &Default::default())
}

fn values(t: Tensor<B, 4>) -> Vec<f64> {
    t.into_data()
        .convert::<f64>()
        .to_vec::<f64>()
        .expect("float data")
}

#[test]
fn matches_the_formula_on_strided_views() {
    let mut rng = Rng(41);
    // (batch, seq, heads, head_dim, cos rows)
    for (b, s, h, d, cos_rows) in [(1, 7, 3, 8, 1), (2, 13, 4, 64, 2), (2, 5, 2, 16, 1)] {
        let name = format!("b{b} s{s} h{h} d{d} cos rows {cos_rows}");
        // Queries as the model makes them: [b, s, h·d] reshaped and swapped to [b, h, s, d].
        let x = random(&mut rng, [b, s, h * d])
            .reshape([b, s, h, d])
            .swap_dims(1, 2);
        let cos = random(&mut rng, [cos_rows, 1, s, d / 2]);
        let sin = random(&mut rng, [cos_rows, 1, s, d / 2]);
        let before = cpu_kernel_calls();
        let ours = rotate_half(x.clone(), &cos, &sin);
        assert_eq!(cpu_kernel_calls(), before + 1, "{name}: kernel not taken");
        assert_eq!(ours.dims(), [b, h, s, d]);
        // Burn's path on f64 copies (the same formula, computed in f64).
        let f64s = |t: &Tensor<B, 4>| t.clone().cast(FloatDType::F64);
        let reference = rotate_half(f64s(&x), &f64s(&cos), &f64s(&sin));
        assert_eq!(reference.dtype(), DType::F64);
        assert_eq!(
            cpu_kernel_calls(),
            before + 1,
            "{name}: f64 took the kernel"
        );
        // By hand, in f64, from the host values.
        let (xs, cs, ss) = (values(x), values(cos), values(sin));
        let half = d / 2;
        let mut by_hand = vec![0.0f64; b * h * s * d];
        for bi in 0..b {
            for hi in 0..h {
                for i in 0..s {
                    let xr = &xs[((bi * h + hi) * s + i) * d..][..d];
                    let cr = (bi % cos_rows) * s + i;
                    let (c, sn) = (&cs[cr * half..][..half], &ss[cr * half..][..half]);
                    let o = &mut by_hand[((bi * h + hi) * s + i) * d..][..d];
                    for j in 0..half {
                        o[j] = xr[j] * c[j] - xr[j + half] * sn[j];
                        o[j + half] = xr[j + half] * c[j] + xr[j] * sn[j];
                    }
                }
            }
        }
        let ours = values(ours);
        let reference = values(reference);
        let max_ref = by_hand.iter().fold(0.0f64, |m, v| m.max(v.abs()));
        let err = |a: &[f64]| {
            a.iter()
                .zip(&by_hand)
                .fold(0.0f64, |m, (x, y)| m.max((x - y).abs()))
        };
        let (e_ours, e_burn) = (err(&ours), err(&reference));
        println!("{name}: ours {e_ours:.2e}, Burn f64 path {e_burn:.2e} (max |ref| {max_ref:.2})");
        assert!(max_ref > 0.5, "{name}: degenerate reference");
        assert!(e_ours <= 1e-6 * max_ref, "{name}: ours off by {e_ours:.2e}");
        assert!(
            e_burn <= 1e-12 * max_ref,
            "{name}: Burn's path off by {e_burn:.2e}"
        );
    }
}
