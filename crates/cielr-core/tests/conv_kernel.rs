//! The direct conv2d kernel (`cielr_core::conv`) against an f64 convolution and Burn's flex
//! conv2d: 1x1, 3x3 and 7x7 kernels, non-square kernels, padding 0 / 1 / 3, odd and
//! non-square images, batch 1 and 2, with and without bias, channel counts that are not
//! multiples of 16, strides 2, [1, 2] and [3, 2], reflection padding (symmetric, asymmetric,
//! strided), permuted and flipped (non-contiguous) inputs, the `Conv2d` module path with
//! `Explicit` (symmetric and asymmetric), `Valid` and `Same` padding; plus the dispatch to
//! Burn for dilation 2, groups 2, f64 and inconsistent shapes.

use burn::nn::conv::{Conv2d, Conv2dConfig};
use burn::nn::PaddingConfig2d;
use burn::tensor::ops::ConvOptions;
use burn::tensor::{DType, FloatDType, Tensor, TensorData};
use cielr_core::backend::CpuBackend as B;
use cielr_core::conv::{
    conv2d, conv2d_module, conv2d_module_reflect, cpu_kernel_calls, uses_cpu_kernel, Border,
};

#[path = "support/rng.rs"]
mod rng;
use rng::Rng;

/// Random tensors for the tests.
trait RandomTensor {
    fn tensor<const D: usize>(&mut self, shape: [usize; D]) -> Tensor<B, D>;
}

impl RandomTensor for Rng {
    fn tensor<const D: usize>(&mut self, shape: [usize; D]) -> Tensor<B, D> {
        let n = shape.iter().product();
        let data: Vec<f32> = (0..n).map(|_| self.unit()).collect();
        Tensor::from_data(TensorData::new(data, shape), &Default::default())
    }
}

/// Max abs difference and max |reference|; asserts equal shapes.
fn compare(ours: Tensor<B, 4>, reference: Tensor<B, 4>) -> (f32, f32) {
    assert_eq!(ours.dims(), reference.dims(), "output shapes differ");
    let a = ours.into_data().to_vec::<f32>().expect("f32 output");
    let r = reference
        .into_data()
        .to_vec::<f32>()
        .expect("f32 reference");
    let max_ref = r.iter().fold(0.0f32, |m, v| m.max(v.abs()));
    let max_abs = a
        .iter()
        .zip(&r)
        .fold(0.0f32, |m, (x, y)| m.max((x - y).abs()));
    assert!(max_abs.is_finite(), "non-finite output");
    (max_abs, max_ref)
}

fn assert_close(name: &str, ours: Tensor<B, 4>, reference: Tensor<B, 4>) {
    let (max_abs, max_ref) = compare(ours, reference);
    let rel = max_abs / max_ref.max(f32::MIN_POSITIVE);
    println!("{name}: max abs err {max_abs:.3e}, max |ref| {max_ref:.3}, rel {rel:.3e}");
    assert!(max_ref > 0.1, "{name}: degenerate reference");
    assert!(rel <= 1e-5, "{name}: relative error {rel:.3e} > 1e-5");
}

/// Where padded index `i` of an axis with `pad` added before `n` pixels reads, if anywhere.
fn padded_source(i: usize, pad: usize, n: usize, border: Border) -> Option<usize> {
    let i = i as i64 - pad as i64;
    let n = n as i64;
    let j = match border {
        Border::Zeros => i,
        Border::Reflect if i < 0 => -i,
        Border::Reflect if i >= n => 2 * (n - 1) - i,
        Border::Reflect => i,
    };
    (0..n).contains(&j).then_some(j as usize)
}

/// Direct f64 convolution (dilation 1, one group) of host tensors; `pads` = `[top, left,
/// bottom, right]` filled as `border` says.
fn conv_f64(
    x: &Tensor<B, 4>,
    w: &Tensor<B, 4>,
    b: Option<&Tensor<B, 1>>,
    stride: [usize; 2],
    pads: [usize; 4],
    border: Border,
) -> Vec<f64> {
    let [n, ci, h, wd] = x.dims();
    let [co, _, kh, kw] = w.dims();
    let xs = x.to_data().to_vec::<f32>().expect("f32 input");
    let ws = w.to_data().to_vec::<f32>().expect("f32 weight");
    let bs = b.map(|b| b.to_data().to_vec::<f32>().expect("f32 bias"));
    let [top, left, bottom, right] = pads;
    let [sh, sw] = stride;
    let ho = (h + top + bottom - kh) / sh + 1;
    let wo = (wd + left + right - kw) / sw + 1;
    let mut out = vec![0.0f64; n * co * ho * wo];
    for bi in 0..n {
        for o in 0..co {
            for y in 0..ho {
                for xo in 0..wo {
                    let mut acc = bs.as_ref().map_or(0.0, |bs| bs[o] as f64);
                    for c in 0..ci {
                        for ky in 0..kh {
                            let Some(iy) = padded_source(y * sh + ky, top, h, border) else {
                                continue;
                            };
                            for kx in 0..kw {
                                let Some(ix) = padded_source(xo * sw + kx, left, wd, border) else {
                                    continue;
                                };
                                acc += xs[((bi * ci + c) * h + iy) * wd + ix] as f64
                                    * ws[((o * ci + c) * kh + ky) * kw + kx] as f64;
                            }
                        }
                    }
                    out[((bi * co + o) * ho + y) * wo + xo] = acc;
                }
            }
        }
    }
    out
}

/// Max abs error of `t` against the f64 `reference`, relative to max |reference|.
fn rel_err_f64(t: Tensor<B, 4>, reference: &[f64]) -> f64 {
    let v = t.into_data().to_vec::<f32>().expect("f32 output");
    assert_eq!(v.len(), reference.len(), "output sizes differ");
    let max_ref = reference.iter().fold(0.0f64, |m, r| m.max(r.abs()));
    let max_abs = v
        .iter()
        .zip(reference)
        .fold(0.0f64, |m, (a, r)| m.max((*a as f64 - r).abs()));
    max_abs / max_ref
}

#[test]
fn matches_burn_on_stride_one_shapes() {
    let cases = [
        // 1x1, no padding and with padding (the padded border gives bias-only pixels).
        (1, 5, 7, [9, 11], [1, 1], [0, 0], true),
        (2, 17, 3, [6, 5], [1, 1], [1, 2], false),
        (2, 20, 18, [7, 9], [1, 1], [0, 0], true),
        // 3x3, padding 1 and 0, odd non-square images.
        (2, 13, 19, [10, 7], [3, 3], [1, 1], true),
        (1, 17, 6, [9, 12], [3, 3], [0, 0], false),
        (1, 3, 33, [23, 5], [3, 3], [1, 1], true),
        // 7x7 with padding 3 (LaMa).
        (1, 6, 10, [15, 13], [7, 7], [3, 3], true),
        (2, 9, 4, [8, 11], [7, 7], [3, 3], false),
        // Non-square kernels and paddings.
        (1, 7, 5, [9, 10], [1, 3], [0, 1], true),
        (1, 4, 6, [11, 6], [5, 3], [2, 0], false),
        // Several row blocks per image, batch 2.
        (2, 40, 33, [37, 29], [3, 3], [1, 1], true),
        // A kernel as large as the padded input: one output pixel.
        (1, 5, 4, [3, 4], [5, 6], [1, 1], true),
    ];
    let mut rng = Rng(7);
    for (batch, ci, co, [h, wd], [kh, kw], [ph, pw], bias) in cases {
        let name = format!("b{batch} ci{ci} co{co} {h}x{wd} k{kh}x{kw} pad[{ph},{pw}] bias={bias}");
        let x = rng.tensor([batch, ci, h, wd]);
        let w = rng.tensor([co, ci, kh, kw]);
        let b = bias.then(|| rng.tensor([co]));
        let options = ConvOptions::new([1, 1], [ph, pw], [1, 1], 1);
        let before = cpu_kernel_calls();
        let ours = conv2d(x.clone(), w.clone(), b.clone(), options.clone());
        assert_eq!(cpu_kernel_calls(), before + 1, "{name}: kernel not taken");
        let exact = conv_f64(&x, &w, b.as_ref(), [1, 1], [ph, pw, ph, pw], Border::Zeros);
        let reference = burn::tensor::module::conv2d(x, w, b, options);
        let (ours_f64, burn_f64) = (
            rel_err_f64(ours.clone(), &exact),
            rel_err_f64(reference.clone(), &exact),
        );
        println!("{name}: vs f64: ours {ours_f64:.3e}, Burn {burn_f64:.3e}");
        assert!(ours_f64 <= 1e-5, "{name}: error vs f64 {ours_f64:.3e}");
        assert_close(&name, ours, reference);
    }
}

#[test]
fn strided_convolutions_match_f64_and_burn() {
    let cases = [
        // (batch, ci, co, [h, w], [kh, kw], [ph, pw], stride, bias)
        (1, 5, 7, [9, 11], [3, 3], [1, 1], [2, 2], true),
        (2, 6, 9, [10, 8], [3, 3], [1, 1], [2, 2], false),
        (1, 17, 6, [13, 12], [3, 3], [0, 0], [2, 2], true),
        (1, 4, 5, [15, 14], [7, 7], [3, 3], [2, 2], true),
        (1, 8, 3, [9, 10], [1, 1], [0, 0], [2, 2], true),
        (1, 3, 4, [8, 12], [3, 3], [1, 1], [1, 2], false),
        (2, 5, 6, [11, 9], [4, 3], [2, 1], [3, 2], true),
        // Several row blocks per image.
        (2, 20, 33, [40, 29], [3, 3], [1, 1], [2, 2], true),
    ];
    let mut rng = Rng(17);
    for (batch, ci, co, [h, wd], [kh, kw], [ph, pw], stride, bias) in cases {
        let name =
            format!("b{batch} ci{ci} co{co} {h}x{wd} k{kh}x{kw} pad[{ph},{pw}] stride{stride:?}");
        let x = rng.tensor([batch, ci, h, wd]);
        let w = rng.tensor([co, ci, kh, kw]);
        let b = bias.then(|| rng.tensor([co]));
        let options = ConvOptions::new(stride, [ph, pw], [1, 1], 1);
        let before = cpu_kernel_calls();
        let ours = conv2d(x.clone(), w.clone(), b.clone(), options.clone());
        assert_eq!(cpu_kernel_calls(), before + 1, "{name}: kernel not taken");
        let exact = conv_f64(&x, &w, b.as_ref(), stride, [ph, pw, ph, pw], Border::Zeros);
        let err = rel_err_f64(ours.clone(), &exact);
        println!("{name}: vs f64 {err:.3e}");
        assert!(err <= 1e-5, "{name}: error vs f64 {err:.3e}");
        assert_close(&name, ours, burn::tensor::module::conv2d(x, w, b, options));
    }
}

#[test]
fn reflection_padding_matches_f64_and_burns_pad() {
    let device = Default::default();
    let mut rng = Rng(29);
    // (ci, co, [h, w], [kh, kw], padding [top, left, bottom, right], stride)
    let cases = [
        (6, 5, [9, 11], [3, 3], [1, 1, 1, 1], [1, 1]),
        (4, 7, [12, 10], [7, 7], [3, 3, 3, 3], [1, 1]),
        (5, 6, [8, 9], [3, 3], [2, 0, 1, 3], [1, 1]),
        (7, 4, [13, 12], [3, 3], [1, 1, 1, 1], [2, 2]),
        (3, 8, [10, 14], [7, 7], [3, 3, 3, 3], [2, 2]),
        // Padding one less than the side: reflection reaches the far edge.
        (3, 4, [4, 5], [3, 3], [3, 4, 3, 4], [1, 1]),
    ];
    for (ci, co, [h, wd], [kh, kw], pads, stride) in cases {
        let name = format!("ci{ci} co{co} {h}x{wd} k{kh}x{kw} reflect{pads:?} stride{stride:?}");
        let [top, left, bottom, right] = pads;
        let conv: Conv2d<B> = Conv2dConfig::new([ci, co], [kh, kw])
            .with_stride(stride)
            .with_padding(PaddingConfig2d::Explicit(top, left, bottom, right))
            .init(&device);
        let x = rng.tensor([2, ci, h, wd]);
        let before = cpu_kernel_calls();
        let ours = conv2d_module_reflect(&conv, x.clone());
        assert_eq!(cpu_kernel_calls(), before + 1, "{name}: kernel not taken");
        let bias = conv.bias.as_ref().map(|b| b.val());
        let exact = conv_f64(
            &x,
            &conv.weight.val(),
            bias.as_ref(),
            stride,
            pads,
            Border::Reflect,
        );
        let err = rel_err_f64(ours.clone(), &exact);
        println!("{name}: vs f64 {err:.3e}");
        assert!(err <= 1e-5, "{name}: error vs f64 {err:.3e}");
        let padded = x.pad(
            (left, right, top, bottom),
            burn::tensor::ops::PadMode::Reflect,
        );
        let options = ConvOptions::new(stride, [0, 0], [1, 1], 1);
        let reference = burn::tensor::module::conv2d(padded, conv.weight.val(), bias, options);
        assert_close(&name, ours, reference);
    }
    // What the kernel does not take (dilation 2) is padded by Burn and convolved by Burn.
    let conv: Conv2d<B> = Conv2dConfig::new([3, 4], [3, 3])
        .with_dilation([2, 2])
        .with_padding(PaddingConfig2d::Explicit(2, 2, 2, 2))
        .init(&device);
    let x = rng.tensor([1, 3, 9, 8]);
    let before = cpu_kernel_calls();
    let ours = conv2d_module_reflect(&conv, x.clone());
    assert_eq!(cpu_kernel_calls(), before, "dilated: kernel taken");
    let padded = x.pad((2, 2, 2, 2), burn::tensor::ops::PadMode::Reflect);
    let options = ConvOptions::new([1, 1], [0, 0], [2, 2], 1);
    let bias = conv.bias.as_ref().map(|b| b.val());
    let reference = burn::tensor::module::conv2d(padded, conv.weight.val(), bias, options);
    let (max_abs, _) = compare(ours, reference);
    assert_eq!(max_abs, 0.0, "dilated reflect: not Burn's result");
}

#[test]
fn non_contiguous_inputs() {
    let mut rng = Rng(11);
    let options = ConvOptions::new([1, 1], [1, 1], [1, 1], 1);
    // A channels-last tensor permuted to [b, c, h, w]: strided view, no copy.
    let nhwc = rng.tensor([2, 9, 7, 21]);
    let x = nhwc.permute([0, 3, 1, 2]);
    let w = rng.tensor([10, 21, 3, 3]);
    let b = Some(rng.tensor([10]));
    let x_contig = Tensor::<B, 4>::from_data(x.to_data(), &Default::default());
    let before = cpu_kernel_calls();
    let ours = conv2d(x.clone(), w.clone(), b.clone(), options.clone());
    assert_eq!(cpu_kernel_calls(), before + 1);
    let reference =
        burn::tensor::module::conv2d(x_contig.clone(), w.clone(), b.clone(), options.clone());
    assert_close("permuted input", ours, reference.clone());
    // A flipped view (negative strides, where the layout keeps them) and a transposed weight.
    let flipped = x_contig.clone().flip([3]);
    let ours = conv2d(flipped.clone(), w.clone(), b.clone(), options.clone());
    let flipped_contig = Tensor::<B, 4>::from_data(flipped.to_data(), &Default::default());
    let reference =
        burn::tensor::module::conv2d(flipped_contig, w.clone(), b.clone(), options.clone());
    assert_close("flipped input", ours, reference);
    let w_t = Tensor::<B, 4>::from_data(w.clone().swap_dims(2, 3).to_data(), &Default::default())
        .swap_dims(2, 3);
    let ours = conv2d(x_contig.clone(), w_t, b.clone(), options.clone());
    let reference = burn::tensor::module::conv2d(x_contig, w, b.clone(), options);
    assert_close("transposed weight view", ours, reference);
    // 1x1 kernels: on the permuted view (the single-gemm path reads it in place) and on a
    // width-sliced view (pixels not evenly strided: through the padded copy).
    let w1 = rng.tensor([6, 21, 1, 1]);
    let b6 = Some(rng.tensor([6]));
    let none = ConvOptions::new([1, 1], [0, 0], [1, 1], 1);
    let ours = conv2d(x.clone(), w1.clone(), b6.clone(), none.clone());
    let reference = burn::tensor::module::conv2d(
        Tensor::<B, 4>::from_data(x.to_data(), &Default::default()),
        w1.clone(),
        b6.clone(),
        none.clone(),
    );
    assert_close("1x1 permuted input", ours, reference);
    let sliced = rng.tensor([1, 21, 8, 12]).slice([0..1, 0..21, 0..8, 2..9]);
    let before = cpu_kernel_calls();
    let ours = conv2d(sliced.clone(), w1.clone(), None, none.clone());
    assert_eq!(cpu_kernel_calls(), before + 1);
    let reference = burn::tensor::module::conv2d(
        Tensor::<B, 4>::from_data(sliced.to_data(), &Default::default()),
        w1,
        None,
        none,
    );
    assert_close("1x1 width-sliced input", ours, reference);
}

#[test]
fn module_path_matches_forward() {
    let device = Default::default();
    let mut rng = Rng(23);
    let configs = [
        (
            "explicit (1,1,1,1) 3x3",
            Conv2dConfig::new([11, 14], [3, 3]).with_padding(PaddingConfig2d::Explicit(1, 1, 1, 1)),
        ),
        (
            "explicit asymmetric (2,0,1,3) 3x3",
            Conv2dConfig::new([5, 6], [3, 3]).with_padding(PaddingConfig2d::Explicit(2, 0, 1, 3)),
        ),
        (
            "valid 3x3 no bias",
            Conv2dConfig::new([7, 9], [3, 3])
                .with_padding(PaddingConfig2d::Valid)
                .with_bias(false),
        ),
        (
            "same 4x4 (asymmetric)",
            Conv2dConfig::new([6, 5], [4, 4]).with_padding(PaddingConfig2d::Same),
        ),
        (
            "same 7x7",
            Conv2dConfig::new([4, 8], [7, 7]).with_padding(PaddingConfig2d::Same),
        ),
    ];
    for (name, config) in configs {
        let conv: Conv2d<B> = config.init(&device);
        let ci = conv.weight.dims()[1];
        let x = rng.tensor([2, ci, 13, 10]);
        let before = cpu_kernel_calls();
        let ours = conv2d_module(&conv, x.clone());
        assert_eq!(cpu_kernel_calls(), before + 1, "{name}: kernel not taken");
        assert_close(name, ours, conv.forward(x));
    }
    // A module the kernel does not take (stride 2, `Same`) runs `forward`.
    let conv: Conv2d<B> = Conv2dConfig::new([4, 4], [3, 3])
        .with_stride([2, 2])
        .with_padding(PaddingConfig2d::Same)
        .init(&device);
    let x = rng.tensor([1, 4, 9, 8]);
    let before = cpu_kernel_calls();
    let ours = conv2d_module(&conv, x.clone());
    assert_eq!(cpu_kernel_calls(), before);
    let (max_abs, _) = compare(ours, conv.forward(x));
    assert_eq!(max_abs, 0.0);
}

#[test]
fn dispatch_sends_other_convolutions_to_burn() {
    let mut rng = Rng(5);
    let x = rng.tensor([1, 8, 9, 10]);
    let w = rng.tensor([6, 8, 3, 3]);
    let w_grouped = rng.tensor([6, 4, 3, 3]);
    let b = Some(rng.tensor([6]));
    let others = [
        (
            "dilation 2",
            w.clone(),
            ConvOptions::new([1, 1], [2, 2], [2, 2], 1),
        ),
        (
            "groups 2",
            w_grouped,
            ConvOptions::new([1, 1], [1, 1], [1, 1], 2),
        ),
    ];
    for (name, w, options) in others {
        let before = cpu_kernel_calls();
        let ours = conv2d(x.clone(), w.clone(), b.clone(), options.clone());
        assert_eq!(cpu_kernel_calls(), before, "{name}: kernel taken");
        let (max_abs, _) = compare(
            ours,
            burn::tensor::module::conv2d(x.clone(), w, b.clone(), options),
        );
        assert_eq!(max_abs, 0.0, "{name}: not Burn's result");
    }
    assert!(uses_cpu_kernel::<B>(DType::F32, [2, 2], [1, 1], 1));
    assert!(!uses_cpu_kernel::<B>(DType::F32, [1, 1], [2, 2], 1));
    assert!(!uses_cpu_kernel::<B>(DType::F32, [1, 1], [1, 1], 2));
    assert!(!uses_cpu_kernel::<B>(DType::F64, [1, 1], [1, 1], 1));
    assert!(uses_cpu_kernel::<B>(DType::F32, [1, 1], [1, 1], 1));

    // f64 goes to Burn.
    let x64 = x.clone().cast(FloatDType::F64);
    let w64 = w.clone().cast(FloatDType::F64);
    assert_eq!(x64.dtype(), DType::F64);
    let options = ConvOptions::new([1, 1], [1, 1], [1, 1], 1);
    let before = cpu_kernel_calls();
    let ours = conv2d(x64.clone(), w64.clone(), None, options.clone());
    assert_eq!(cpu_kernel_calls(), before, "f64: kernel taken");
    assert_eq!(ours.dtype(), DType::F64);
    let reference = burn::tensor::module::conv2d(x64, w64, None, options);
    assert_eq!(ours.into_data(), reference.into_data());

    // Inconsistent channel counts: the kernel declines and Burn reports the error.
    let bad_w = rng.tensor([6, 5, 3, 3]);
    let before = cpu_kernel_calls();
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        conv2d(
            x.clone(),
            bad_w,
            None,
            ConvOptions::new([1, 1], [1, 1], [1, 1], 1),
        )
    }));
    assert!(result.is_err(), "mismatched channels must be reported");
    assert_eq!(cpu_kernel_calls(), before);
}
