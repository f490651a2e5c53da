//! `cielr_core::layout::contiguous` against Burn's own contiguous copy: swapped and permuted
//! views of ranks 2 to 4 (innermost dimension contiguous or transposed), sliced views, sizes
//! that do not divide the tile, a broadcast (expanded) view; values must be bit-identical.
//! Contiguous tensors, other dtypes and views with no unit-stride dimension are returned as
//! they are.

use burn::tensor::{DType, FloatDType, Tensor, TensorData};
use cielr_core::backend::CpuBackend as B;
use cielr_core::layout::{contiguous, cpu_kernel_calls};

fn tensor<const D: usize>(shape: [usize; D]) -> Tensor<B, D> {
    let n: usize = shape.iter().product();
    let data: Vec<f32> = (0..n).map(|i| i as f32 * 0.5 - 7.0).collect();
    Tensor::from_data(TensorData::new(data, shape), &Default::default())
}

/// Asserts that `contiguous(t)` ran the kernel (or not, per `kernel`) and equals `t`.
fn check<const D: usize>(name: &str, t: Tensor<B, D>, kernel: bool) {
    let want = t.to_data().to_vec::<f32>().expect("f32");
    let before = cpu_kernel_calls();
    let out = contiguous(t.clone());
    assert_eq!(
        cpu_kernel_calls(),
        before + usize::from(kernel),
        "{name}: kernel taken = {}",
        !kernel
    );
    assert_eq!(out.dims(), t.dims(), "{name}: shape");
    let got = out.to_data().to_vec::<f32>().expect("f32");
    assert_eq!(got, want, "{name}: values differ");
    // The copy is contiguous: reshaping it again gives the same values.
    let n: usize = t.dims().iter().product();
    let flat = out.reshape([n]).to_data().to_vec::<f32>().expect("f32");
    assert_eq!(flat, want, "{name}: flattened values differ");
}

#[test]
fn copies_permuted_views_exactly() {
    check("2d transpose", tensor([37, 53]).transpose(), true);
    check(
        "3d swap 1,2 (UNet tokens)",
        tensor([2, 40, 33]).swap_dims(1, 2),
        true,
    );
    check("3d swap 0,2", tensor([5, 3, 18]).swap_dims(0, 2), true);
    check(
        "4d heads merge",
        tensor([2, 8, 17, 5]).swap_dims(1, 2),
        true,
    );
    check(
        "4d permute",
        tensor([2, 3, 4, 21]).permute([0, 3, 1, 2]),
        true,
    );
    check(
        "4d permute, innermost kept",
        tensor([3, 4, 5, 6]).permute([2, 0, 1, 3]),
        true,
    );
    check(
        "sliced rows",
        tensor([4, 9, 12])
            .slice([0..4, 2..7, 0..12])
            .swap_dims(0, 1),
        true,
    );
    check(
        "sliced innermost",
        tensor([6, 20]).slice([0..6, 3..17]),
        true,
    );
}

#[test]
fn leaves_other_tensors_alone() {
    check("contiguous", tensor([4, 5, 6]), false);
    check(
        "reshaped contiguous",
        tensor([4, 30]).reshape([2, 2, 30]),
        false,
    );
    // f64 is returned as it is (and still reads the same).
    let t = tensor([6, 7]).cast(FloatDType::F64).transpose();
    assert_eq!(t.dtype(), DType::F64);
    let before = cpu_kernel_calls();
    let out = contiguous(t.clone());
    assert_eq!(cpu_kernel_calls(), before);
    assert_eq!(out.into_data(), t.into_data());
}
