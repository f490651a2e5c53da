//! Parity of the LaMa port with LaMa's own code (advimman/lama `ffc.py`) on the tiny random
//! generator written by `tools/parity/lama.py` (`tests/fixtures/lama-tiny`: ngf 8, 2
//! downsamplings, 2 residual FFC blocks, big-lama's ratios; converted from a Lightning-like
//! checkpoint by `tools/lama/convert_checkpoint.py`), of the DFT helpers with `torch.fft`, and
//! the errors bad checkpoints, configurations and inputs give.

use std::path::PathBuf;

use burn::tensor::{Tensor, TensorData};
use cielr_core::backend::CpuBackend;
use cielr_core::weights::TensorStore;
use cielr_core::Mask;
use cielr_diffusion::fft::{irfft2, irfft2_interleaved, rfft2, Spectrum};
use cielr_diffusion::lama::{LamaConfig, LamaInpainter};
use cielr_diffusion::DiffusionError;
use image::{Rgb, RgbImage};

type B = CpuBackend;

fn dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/lama-tiny")
}

fn store() -> TensorStore {
    TensorStore::open(dir().join("reference.safetensors")).unwrap()
}

fn reference(store: &TensorStore, name: &str) -> Tensor<B, 4> {
    let (shape, v) = store.read(name).unwrap();
    let dims: [usize; 4] = shape.try_into().unwrap();
    Tensor::from_data(TensorData::new(v, dims), &Default::default())
}

fn values(t: Tensor<B, 4>) -> Vec<f32> {
    t.into_data().convert::<f32>().to_vec::<f32>().unwrap()
}

/// (max abs error, max |reference|), printing the max relative error over |reference| >= 1e-2.
fn compare(name: &str, ours: Tensor<B, 4>, reference: Tensor<B, 4>) -> (f64, f64) {
    assert_eq!(ours.dims(), reference.dims(), "{name}: shape");
    let (a, b) = (values(ours), values(reference));
    let (mut abs, mut scale, mut rel) = (0f64, 0f64, 0f64);
    for (&x, &y) in a.iter().zip(&b) {
        assert!(x.is_finite(), "{name}: non-finite output");
        let d = (x as f64 - y as f64).abs();
        abs = abs.max(d);
        scale = scale.max((y as f64).abs());
        if y.abs() >= 1e-2 {
            rel = rel.max(d / y.abs() as f64);
        }
    }
    println!("{name:<16} max abs {abs:.2e}  max rel {rel:.2e}  (max |ref| {scale:.3})");
    (abs, scale)
}

#[test]
fn dft_matches_torch_fft_for_even_and_odd_sizes() {
    let s = store();
    for (h, w) in [(6, 8), (5, 7), (7, 6), (4, 5), (13, 11)] {
        let key = |k: &str| format!("fft_{h}x{w}_{k}");
        let x = reference(&s, &key("x"));
        let spec = rfft2(x.clone());
        let (a1, s1) = compare(&key("re"), spec.re.clone(), reference(&s, &key("re")));
        let (a2, s2) = compare(&key("im"), spec.im.clone(), reference(&s, &key("im")));
        assert!(a1 < 1e-5 * s1.max(1.0) && a2 < 1e-5 * s2.max(1.0));
        // The round trip returns the signal.
        let (a, _) = compare(&key("roundtrip"), irfft2(spec, h, w).unwrap(), x);
        assert!(a < 1e-5);
        // The inverse of a spectrum that is not Hermitian, as torch computes it.
        let ikey = |k: &str| format!("ifft_{h}x{w}_{k}");
        let spec = Spectrum {
            re: reference(&s, &ikey("re")),
            im: reference(&s, &ikey("im")),
        };
        let (a, sc) = compare(
            &ikey("out"),
            irfft2(spec, h, w).unwrap(),
            reference(&s, &ikey("out")),
        );
        assert!(a < 1e-5 * sc.max(1.0), "irfft2 {h}x{w}: {a:.2e}");
    }
    // A spectrum of the wrong width is an error, not a panic.
    let bad = Spectrum {
        re: Tensor::<B, 4>::zeros([1, 1, 4, 4], &Default::default()),
        im: Tensor::<B, 4>::zeros([1, 1, 4, 4], &Default::default()),
    };
    assert!(matches!(
        irfft2(bad, 4, 8),
        Err(DiffusionError::InputShape { .. })
    ));
    // So is an interleaved spectrum with an odd number of channels.
    let odd = Tensor::<B, 4>::zeros([1, 3, 4, 5], &Default::default());
    assert!(matches!(
        irfft2_interleaved(odd, 4, 8),
        Err(DiffusionError::InputShape { .. })
    ));
}

#[test]
fn generator_matches_the_official_code() {
    let lama = LamaInpainter::<B>::load(dir()).unwrap();
    assert_eq!(lama.config().ngf, 8);
    assert_eq!(lama.config().n_blocks, 2);
    let s = store();
    let input = reference(&s, "gen_input");
    assert_eq!(input.dims(), [1, 4, 44, 52]);
    let logits = lama.generator().forward_logits(input.clone()).unwrap();
    let (abs, scale) = compare("logits 52x44", logits, reference(&s, "gen_logits"));
    assert!(scale > 1.0, "the reference logits are not degenerate");
    assert!(abs < 1e-4 * scale.max(1.0), "logits: {abs:.2e}");
    let (abs, _) = compare(
        "output 52x44",
        lama.forward(input).unwrap(),
        reference(&s, "gen_output"),
    );
    assert!(abs < 1e-5, "output: {abs:.2e}");
}

fn to_rgb(t: Tensor<B, 4>) -> RgbImage {
    let [_, _, h, w] = t.dims();
    let v = values(t);
    RgbImage::from_fn(w as u32, h as u32, |x, y| {
        let i = y as usize * w + x as usize;
        let q = |c: usize| (v[c * h * w + i] * 255.0).round() as u8;
        Rgb([q(0), q(1), q(2)])
    })
}

#[test]
fn prediction_matches_lamas_predict() {
    let lama = LamaInpainter::<B>::load(dir().join("model.safetensors")).unwrap();
    let s = store();
    let (image, mask) = (reference(&s, "image"), reference(&s, "mask"));
    assert_eq!(image.dims(), [1, 3, 47, 61]);
    let (abs, _) = compare(
        "inpainted 61x47",
        lama.predict(image.clone(), mask.clone()).unwrap(),
        reference(&s, "inpainted"),
    );
    assert!(abs < 1e-5, "inpainted: {abs:.2e}");
    // The byte path: LaMa truncates x * 255; an f32 difference of 1e-6 can move a value
    // across an integer, so at most a few bytes may differ by one.
    let rgb = to_rgb(image);
    let m = values(mask);
    let hole = Mask::from_fn(61, 47, |x, y| m[y as usize * 61 + x as usize] > 0.5).unwrap();
    let ours = lama.inpaint(&rgb, &hole).unwrap();
    let want = values(reference(&s, "inpainted_u8"));
    let (mut off_by_one, mut inside_changed) = (0, 0);
    for (x, y, p) in ours.enumerate_pixels() {
        for c in 0..3 {
            let r = want[c * 47 * 61 + y as usize * 61 + x as usize];
            let d = (p.0[c] as f32 - r).abs();
            assert!(d <= 1.0, "({x}, {y}) channel {c}: {} vs {r}", p.0[c]);
            off_by_one += (d > 0.0) as usize;
            if hole.get(x, y) && p.0[c] != rgb.get_pixel(x, y).0[c] {
                inside_changed += 1;
            }
        }
        if !hole.get(x, y) {
            assert_eq!(p, rgb.get_pixel(x, y), "outside the mask at ({x}, {y})");
        }
    }
    println!("bytes off by one: {off_by_one} of {}", 61 * 47 * 3);
    assert!(off_by_one <= 10);
    assert!(inside_changed > hole.area() as usize, "the hole was filled");
}

/// The fixture's tensors, rewritten through `edit` (which may drop or replace them).
fn rewritten(
    edit: impl Fn(&str, Vec<usize>, Vec<f32>) -> Option<(Vec<usize>, Vec<f32>)>,
) -> TensorStore {
    use safetensors::tensor::TensorView;
    use safetensors::Dtype;
    let src = TensorStore::open(dir().join("model.safetensors")).unwrap();
    let mut kept = Vec::new();
    for name in src.names() {
        let (shape, v) = src.read(name).unwrap();
        if let Some((shape, v)) = edit(name, shape, v) {
            let bytes: Vec<u8> = v.iter().flat_map(|x| x.to_le_bytes()).collect();
            kept.push((format!("generator.{name}"), shape, bytes));
        }
    }
    let views: Vec<(String, TensorView)> = kept
        .iter()
        .map(|(n, s, b)| {
            (
                n.clone(),
                TensorView::new(Dtype::F32, s.clone(), b).unwrap(),
            )
        })
        .collect();
    let bytes = safetensors::serialize(views, None).unwrap();
    TensorStore::from_buffers(vec![(PathBuf::from("edited.safetensors"), bytes)]).unwrap()
}

fn config() -> LamaConfig {
    LamaConfig::from_file(dir().join("config.json")).unwrap()
}

#[test]
fn bad_checkpoints_configs_and_inputs_are_clear_errors() {
    let device = Default::default();
    // The `generator.` prefix of the Lightning checkpoint is accepted as is.
    let prefixed = rewritten(|_, s, v| Some((s, v)));
    let lama = LamaInpainter::<B>::from_store(&prefixed, config(), &device).unwrap();
    // A missing tensor is named.
    let missing = "model.4.conv2.ffc.convg2g.fu.conv_layer.weight";
    let store = rewritten(|n, s, v| (n != missing).then_some((s, v)));
    match LamaInpainter::<B>::from_store(&store, config(), &device) {
        Err(DiffusionError::MissingTensor { name, .. }) => {
            assert_eq!(name, format!("generator.{missing}"))
        }
        other => panic!("expected a missing tensor, got {other:?}"),
    }
    // A tensor of the wrong shape is named with both shapes.
    let store = rewritten(|n, s, v| {
        if n == "model.1.ffc.convl2l.weight" {
            Some((vec![8, 4, 7, 6], v[..8 * 4 * 7 * 6].to_vec()))
        } else {
            Some((s, v))
        }
    });
    match LamaInpainter::<B>::from_store(&store, config(), &device) {
        Err(DiffusionError::TensorShape {
            name,
            expected,
            actual,
        }) => {
            assert_eq!(name, "generator.model.1.ffc.convl2l.weight");
            assert_eq!((expected, actual), (vec![8, 4, 7, 7], vec![8, 4, 7, 6]));
        }
        other => panic!("expected a shape error, got {other:?}"),
    }
    // Unsupported configurations are refused, not silently run differently.
    let mut lfu = config();
    lfu.resnet_conv_kwargs.enable_lfu = true;
    let err = LamaInpainter::<B>::from_store(&prefixed, lfu, &device).unwrap_err();
    assert!(err.to_string().contains("enable_lfu"), "{err}");
    let mut blocks = config();
    blocks.n_blocks = 3;
    assert!(matches!(
        LamaInpainter::<B>::from_store(&prefixed, blocks, &device),
        Err(DiffusionError::MissingTensor { .. })
    ));
    let tmp = std::env::temp_dir().join(format!("lama-cfg-{}", std::process::id()));
    std::fs::create_dir_all(&tmp).unwrap();
    let path = tmp.join("config.json");
    std::fs::write(
        &path,
        r#"{"ngf": 8, "resnet_conv_kwargs": {"ratio_gin": 0.75, "use_se": true}}"#,
    )
    .unwrap();
    let err = LamaConfig::from_file(&path).unwrap_err();
    assert!(err.to_string().contains("use_se"), "{err}");
    let _ = std::fs::remove_dir_all(&tmp);
    // Inputs of the wrong shape or too small are errors.
    let x = Tensor::<B, 4>::zeros([1, 3, 16, 16], &device);
    assert!(matches!(
        lama.generator().forward_logits(x),
        Err(DiffusionError::InputShape { .. })
    ));
    let small = RgbImage::new(6, 5);
    let hole = Mask::from_fn(6, 5, |x, _| x < 2).unwrap();
    assert!(matches!(
        lama.inpaint(&small, &hole),
        Err(DiffusionError::InputShape { .. })
    ));
    let wrong = Mask::new(5, 5).unwrap();
    assert!(matches!(
        lama.inpaint(&small, &wrong),
        Err(DiffusionError::MaskSize { .. })
    ));
}
