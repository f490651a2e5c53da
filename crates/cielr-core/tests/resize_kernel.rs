//! `cielr_core::resize::bilinear` against Burn's `interpolate` (bilinear): up- and
//! down-scaling, non-integer ratios, `align_corners` both ways, batch 2, a one-pixel input
//! and output, and a permuted (strided) input. The kernel evaluates Burn's expression with
//! the same coordinates, so the results must be bit-identical.

use burn::tensor::module::interpolate;
use burn::tensor::ops::{InterpolateMode, InterpolateOptions};
use burn::tensor::{FloatDType, Tensor, TensorData};
use cielr_core::backend::CpuBackend as B;
use cielr_core::resize::{bilinear, cpu_kernel_calls};

#[path = "support/rng.rs"]
mod rng;
use rng::Rng;

fn random(rng: &mut Rng, shape: [usize; 4]) -> Tensor<B, 4> {
    let n = shape.iter().product();
    let data: Vec<f32> = (0..n).map(|_| rng.unit()).collect();
    Tensor::from_data(TensorData::new(data, shape), &Default::default())
}

fn burn_bilinear(x: Tensor<B, 4>, size: [usize; 2], align_corners: bool) -> Tensor<B, 4> {
    interpolate(
        x,
        size,
        InterpolateOptions::new(InterpolateMode::Bilinear).with_align_corners(align_corners),
    )
}

#[test]
fn bit_identical_to_burn() {
    let mut rng = Rng(53);
    let cases = [
        ([1, 3, 37, 37], [74, 74]),
        ([2, 4, 10, 13], [25, 7]),
        ([1, 2, 64, 48], [17, 29]),
        ([1, 1, 1, 1], [5, 6]),
        ([1, 2, 9, 8], [1, 1]),
        ([1, 3, 256, 256], [1024, 1024]),
    ];
    for (shape, size) in cases {
        for align_corners in [false, true] {
            let name = format!("{shape:?} -> {size:?} align_corners={align_corners}");
            let x = random(&mut rng, shape);
            let before = cpu_kernel_calls();
            let ours = bilinear(x.clone(), size, align_corners);
            assert_eq!(cpu_kernel_calls(), before + 1, "{name}: kernel not taken");
            let reference = burn_bilinear(x, size, align_corners);
            assert_eq!(ours.dims(), reference.dims(), "{name}: shape");
            assert_eq!(
                ours.into_data().to_vec::<f32>().unwrap(),
                reference.into_data().to_vec::<f32>().unwrap(),
                "{name}: values differ"
            );
        }
    }
}

#[test]
fn strided_input_and_other_dtypes() {
    let mut rng = Rng(59);
    // A channels-last tensor viewed as [b, c, h, w].
    let x = random(&mut rng, [2, 11, 9, 3]).permute([0, 3, 1, 2]);
    let dense = Tensor::<B, 4>::from_data(x.to_data(), &Default::default());
    let ours = bilinear(x, [20, 15], false);
    let reference = burn_bilinear(dense, [20, 15], false);
    assert_eq!(
        ours.into_data().to_vec::<f32>().unwrap(),
        reference.into_data().to_vec::<f32>().unwrap()
    );
    // f64 goes to Burn.
    let x64 = random(&mut rng, [1, 2, 5, 6]).cast(FloatDType::F64);
    let before = cpu_kernel_calls();
    let ours = bilinear(x64.clone(), [9, 4], true);
    assert_eq!(cpu_kernel_calls(), before, "f64 took the kernel");
    assert_eq!(
        ours.into_data(),
        burn_bilinear(x64, [9, 4], true).into_data()
    );
}
