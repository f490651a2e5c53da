//! Tests of the classical editors on small real photos (see `tests/data/README.md`).

use cielr_core::{BBox, CoreError, EditAction, EditOp, EditRequest, Editor, Mask};
use cielr_diffusion::{
    inpaint, inpaint_patchmatch, inpaint_telea, parse_colour, recolor, ClassicalEditor,
    DiffusionError, InpaintMethod, Lab, PatchMatchOptions, RecolorOptions, TeleaOptions,
};
use image::{Rgb, RgbImage};

fn fixture(name: &str) -> RgbImage {
    let path = format!("{}/tests/data/{name}", env!("CARGO_MANIFEST_DIR"));
    image::open(&path)
        .unwrap_or_else(|e| panic!("{path}: {e}"))
        .to_rgb8()
}

fn chelsea() -> RgbImage {
    fixture("chelsea-150x100.png")
}

fn coffee() -> RgbImage {
    fixture("coffee-150x100.png")
}

/// A disc of radius `r` around `(cx, cy)`.
fn disc(w: u32, h: u32, cx: f64, cy: f64, r: f64) -> Mask {
    Mask::from_fn(w, h, |x, y| {
        let (dx, dy) = (x as f64 + 0.5 - cx, y as f64 + 0.5 - cy);
        dx * dx + dy * dy <= r * r
    })
    .unwrap()
}

fn boxed(w: u32, h: u32, x0: f64, y0: f64, x1: f64, y1: f64) -> Mask {
    Mask::from_box(w, h, &BBox::new(x0, y0, x1, y1)).unwrap()
}

fn action(op: EditOp, prompt: &str) -> EditAction {
    EditAction {
        op,
        targets: vec![0],
        prompt: prompt.into(),
    }
}

fn run(
    editor: &ClassicalEditor,
    image: &RgbImage,
    mask: &Mask,
    a: &EditAction,
    seed: u64,
) -> cielr_core::Result<RgbImage> {
    pollster::block_on(editor.edit(EditRequest {
        image,
        mask,
        action: a,
        seed,
    }))
}

fn assert_outside_identical(before: &RgbImage, after: &RgbImage, mask: &Mask, what: &str) {
    assert_eq!(before.dimensions(), after.dimensions(), "{what}: size");
    let mut changed_inside = 0;
    for (x, y, p) in before.enumerate_pixels() {
        if mask.get(x, y) {
            changed_inside += (after.get_pixel(x, y) != p) as u32;
        } else {
            assert_eq!(
                after.get_pixel(x, y),
                p,
                "{what}: pixel ({x}, {y}) outside the mask changed"
            );
        }
    }
    assert!(
        changed_inside > 0,
        "{what}: nothing changed inside the mask"
    );
}

fn psnr_inside(a: &RgbImage, b: &RgbImage, m: &Mask) -> f64 {
    let (mut se, mut n) = (0f64, 0f64);
    for (x, y) in m.pixels() {
        for k in 0..3 {
            let d = a.get_pixel(x, y).0[k] as f64 - b.get_pixel(x, y).0[k] as f64;
            se += d * d;
            n += 1.0;
        }
    }
    10.0 * (255.0f64 * 255.0 / (se / n).max(1e-9)).log10()
}

/// The hole filled with one colour: the mean of the known pixels within 2 px of it.
fn mean_fill(img: &RgbImage, m: &Mask) -> RgbImage {
    let ring = m.dilate(2.0).difference(m).unwrap();
    let (mut acc, mut n) = ([0f64; 3], 0f64);
    for (x, y) in ring.pixels() {
        for (a, &v) in acc.iter_mut().zip(&img.get_pixel(x, y).0) {
            *a += v as f64;
        }
        n += 1.0;
    }
    let c = Rgb(acc.map(|v| (v / n).round() as u8));
    let mut out = img.clone();
    for (x, y) in m.pixels() {
        out.put_pixel(x, y, c);
    }
    out
}

#[test]
fn every_editor_op_keeps_the_pixels_outside_the_mask() {
    let img = chelsea();
    let (w, h) = img.dimensions();
    let masks = [
        ("disc", disc(w, h, 60.0, 40.0, 12.0)),
        // Touches the left and bottom borders.
        ("corner box", boxed(w, h, 0.0, 80.0, 25.0, 100.0)),
        // Two separate parts.
        (
            "two parts",
            disc(w, h, 20.0, 20.0, 6.0)
                .union(&boxed(w, h, 110.0, 50.0, 130.0, 60.0))
                .unwrap(),
        ),
    ];
    let editors = [
        ClassicalEditor::with_method(InpaintMethod::Telea),
        ClassicalEditor::with_method(InpaintMethod::PatchMatch),
    ];
    for (name, mask) in &masks {
        for editor in &editors {
            let out = run(editor, &img, mask, &action(EditOp::Remove, "remove it"), 3).unwrap();
            assert_outside_identical(
                &img,
                &out,
                mask,
                &format!("remove ({}) {name}", editor.method()),
            );
        }
        let out = run(
            &editors[0],
            &img,
            mask,
            &action(EditOp::Recolor, "make it blue"),
            0,
        )
        .unwrap();
        assert_outside_identical(&img, &out, mask, &format!("recolor {name}"));
    }
}

#[test]
fn inpainting_a_constant_image_gives_that_colour_exactly() {
    let c = Rgb([37, 201, 90]);
    let img = RgbImage::from_pixel(64, 48, c);
    let masks = [
        disc(64, 48, 30.0, 20.0, 10.0),
        boxed(64, 48, 0.0, 0.0, 20.0, 48.0),
        boxed(64, 48, 5.0, 5.0, 60.0, 44.0),
    ];
    for mask in &masks {
        let t = inpaint_telea(&img, mask, &TeleaOptions::default()).unwrap();
        assert!(
            t.pixels().all(|p| *p == c),
            "Telea changed a constant image"
        );
        let p = inpaint_patchmatch(&img, mask, &PatchMatchOptions::default(), 1).unwrap();
        assert!(
            p.pixels().all(|p| *p == c),
            "PatchMatch changed a constant image"
        );
    }
}

#[test]
fn telea_follows_a_linear_ramp() {
    // A horizontal ramp: the fill must roughly continue it, not smear one side over the hole.
    let img = RgbImage::from_fn(60, 40, |x, _| Rgb([(x * 4) as u8, 100, 200]));
    let mask = disc(60, 40, 30.0, 20.0, 9.0);
    let out = inpaint_telea(&img, &mask, &TeleaOptions::default()).unwrap();
    let (mut abs_err, mut max_err, mut n) = (0.0, 0, 0.0);
    let (mut left, mut right) = (Vec::new(), Vec::new());
    for (x, y) in mask.pixels() {
        let got = out.get_pixel(x, y).0;
        assert_eq!(&got[1..], &[100, 200], "constant channels stay exact");
        let err = (got[0] as i32 - (x * 4) as i32).abs();
        abs_err += err as f64;
        max_err = max_err.max(err);
        n += 1.0;
        if x < 27 {
            left.push(got[0] as f64);
        } else if x > 33 {
            right.push(got[0] as f64);
        }
    }
    let mean = |v: &[f64]| v.iter().sum::<f64>() / v.len() as f64;
    eprintln!("mean abs error {:.2}, max {max_err}", abs_err / n);
    assert!(
        abs_err / n < 6.0 && max_err <= 20,
        "mean {:.2}, max {max_err}",
        abs_err / n
    );
    assert!(mean(&right) > mean(&left) + 20.0);
}

#[test]
fn patchmatch_is_deterministic_for_a_seed() {
    let img = coffee();
    let (w, h) = img.dimensions();
    let mask = disc(w, h, 115.0, 25.0, 12.0);
    let opts = PatchMatchOptions::default();
    let a = inpaint_patchmatch(&img, &mask, &opts, 42).unwrap();
    let b = inpaint_patchmatch(&img, &mask, &opts, 42).unwrap();
    assert_eq!(a, b);
    let c = inpaint_patchmatch(&img, &mask, &opts, 43).unwrap();
    assert_ne!(a, c, "the seed should drive the random search");
    // The editor passes the request's seed through.
    let editor = ClassicalEditor::with_method(InpaintMethod::PatchMatch);
    let e = run(&editor, &img, &mask, &action(EditOp::Remove, ""), 42).unwrap();
    assert_eq!(e, a);
}

#[test]
fn inpainting_real_photos_beats_a_mean_colour_fill() {
    // Discs of radius 8 on a regular grid over both photos (no hand-picked holes).
    let mut cases = Vec::new();
    for (name, img) in [("chelsea", chelsea()), ("coffee", coffee())] {
        for cy in [25.0, 50.0, 75.0] {
            for cx in [25.0, 60.0, 95.0, 130.0] {
                cases.push((name, img.clone(), disc(150, 100, cx, cy, 8.0), (cx, cy)));
            }
        }
    }
    for method in InpaintMethod::ALL {
        let (mut sum_method, mut sum_mean, mut wins) = (0.0, 0.0, 0);
        for (name, img, mask, at) in &cases {
            let filled = inpaint(img, mask, method, 0).unwrap();
            let p = psnr_inside(&filled, img, mask);
            let base = psnr_inside(&mean_fill(img, mask), img, mask);
            eprintln!("{method} on {name} at {at:?}: {p:.2} dB, mean fill {base:.2} dB");
            sum_method += p;
            sum_mean += base;
            wins += (p > base) as usize;
        }
        let n = cases.len() as f64;
        eprintln!(
            "{method}: mean {:.2} dB vs {:.2} dB, wins {wins}",
            sum_method / n,
            sum_mean / n
        );
        assert!(
            sum_method / n > sum_mean / n + 1.5,
            "{method}: {sum_method:.2} vs {sum_mean:.2}"
        );
        assert!(
            wins >= 20,
            "{method} beat the mean fill on {wins} of {n} holes"
        );
    }
}

fn lab_stats(img: &RgbImage, m: &Mask) -> (f64, f64, f64, f64) {
    let labs: Vec<Lab> = m
        .pixels()
        .map(|(x, y)| Lab::from_rgb(img.get_pixel(x, y).0))
        .collect();
    let n = labs.len() as f64;
    let mean_l = labs.iter().map(|c| c.l as f64).sum::<f64>() / n;
    let std_l = (labs
        .iter()
        .map(|c| (c.l as f64 - mean_l).powi(2))
        .sum::<f64>()
        / n)
        .sqrt();
    let mean_a = labs.iter().map(|c| c.a as f64).sum::<f64>() / n;
    let mean_b = labs.iter().map(|c| c.b as f64).sum::<f64>() / n;
    (mean_l, std_l, mean_a, mean_b)
}

/// Hue in degrees (HSV) of the mean RGB colour of the region.
fn mean_hsv_hue(img: &RgbImage, m: &Mask) -> f64 {
    let mut acc = [0f64; 3];
    let n = m.area() as f64;
    for (x, y) in m.pixels() {
        for (a, &v) in acc.iter_mut().zip(&img.get_pixel(x, y).0) {
            *a += v as f64 / n;
        }
    }
    let [r, g, b] = acc;
    let (max, min) = (r.max(g).max(b), r.min(g).min(b));
    let d = max - min;
    assert!(d > 10.0, "the region is grey: {acc:?}");
    let h = if max == r {
        60.0 * ((g - b) / d)
    } else if max == g {
        60.0 * ((b - r) / d + 2.0)
    } else {
        60.0 * ((r - g) / d + 4.0)
    };
    h.rem_euclid(360.0)
}

#[test]
fn recolouring_to_blue_keeps_the_texture() {
    // The cat's fur (brown, textured) and the coffee cup's saucer (red, shaded).
    for (img, mask) in [
        (chelsea(), disc(150, 100, 75.0, 35.0, 25.0)),
        (coffee(), boxed(150, 100, 20.0, 60.0, 60.0, 90.0)),
    ] {
        let (_, std_before, _, _) = lab_stats(&img, &mask);
        let out = recolor(&img, &mask, [0, 0, 255], &RecolorOptions::default()).unwrap();
        let hue = mean_hsv_hue(&out, &mask);
        assert!(
            (200.0..=260.0).contains(&hue),
            "mean hue {hue:.1} is not blue"
        );
        let (_, std_after, a, b) = lab_stats(&out, &mask);
        assert!(b < -20.0 && a.abs() < 80.0, "Lab mean a={a:.1} b={b:.1}");
        assert!(
            (std_after - std_before).abs() <= 0.15 * std_before + 0.5,
            "L std {std_before:.2} -> {std_after:.2}"
        );
        assert!(std_before > 3.0, "the test region should be textured");
    }
}

#[test]
fn recolouring_to_white_and_black_moves_lightness() {
    let img = chelsea();
    let mask = disc(150, 100, 75.0, 35.0, 20.0);
    let (l0, _, _, _) = lab_stats(&img, &mask);
    let editor = ClassicalEditor::new();
    let white = run(&editor, &img, &mask, &action(EditOp::Recolor, "white"), 0).unwrap();
    let black = run(
        &editor,
        &img,
        &mask,
        &action(EditOp::Recolor, "make it black"),
        0,
    )
    .unwrap();
    let (lw, _, aw, bw) = lab_stats(&white, &mask);
    let (lb, _, _, _) = lab_stats(&black, &mask);
    assert!(lw > l0 + 15.0 && lw > 80.0, "white: L {l0:.1} -> {lw:.1}");
    assert!(
        aw.abs() < 2.0 && bw.abs() < 2.0,
        "white is neutral: a={aw:.1} b={bw:.1}"
    );
    assert!(lb < l0 - 25.0 && lb < 30.0, "black: L {l0:.1} -> {lb:.1}");
}

#[test]
fn colour_prompts_are_parsed() {
    let rgb = |p: &str| parse_colour(p).unwrap().rgb;
    let name = |p: &str| parse_colour(p).unwrap().name;
    assert_eq!(rgb("blue"), [0, 0, 255]);
    assert_eq!(rgb("make it blue"), [0, 0, 255]);
    assert_eq!(rgb("Turn the car RED."), [255, 0, 0]);
    assert_eq!(rgb("a dark red"), [139, 0, 0]);
    assert_eq!(name("a dark red"), "dark red");
    assert_eq!(rgb("grey"), rgb("gray"));
    assert_eq!(rgb("navy blue"), [0, 0, 128]);
    assert_eq!(rgb("sky-blue"), [135, 206, 235]);
    assert_eq!(rgb("#1e90ff"), [30, 144, 255]);
    assert_eq!(rgb("colour it #1E90FF please"), [30, 144, 255]);
    assert_eq!(rgb("#f80"), [255, 136, 0]);
    assert_eq!(
        rgb("make the red car blue"),
        [0, 0, 255],
        "the last colour wins"
    );
    for basic in [
        "red",
        "green",
        "blue",
        "yellow",
        "orange",
        "purple",
        "pink",
        "brown",
        "black",
        "white",
        "grey",
        "gray",
        "cyan",
        "magenta",
        "gold",
        "silver",
        "navy",
        "teal",
        "beige",
        "maroon",
        "olive",
        "violet",
        "turquoise",
        "burgundy",
        "cream",
    ] {
        assert!(parse_colour(basic).is_ok(), "{basic}");
    }
    // Modifiers: "dark grey" is darker than grey (unlike CSS's darkgray), "light" is lighter.
    let l = |p: &str| Lab::from_rgb(rgb(p)).l;
    assert!(l("dark grey") < l("grey") - 15.0);
    assert!(l("light green") > l("green") + 15.0);
    assert!(l("dark orange") < l("orange"));
    assert!(l("light purple") > l("purple") + 15.0);
    assert_eq!(name("light purple"), "light purple");
    let hue = |p: &str| Lab::from_rgb(rgb(p)).hue_degrees();
    assert!((hue("light purple") - hue("purple")).abs() < 15.0);
}

#[test]
fn unknown_colours_are_a_clear_error() {
    for prompt in ["", "make it nicer", "#12345", "#ggg", "light"] {
        let err = parse_colour(prompt).unwrap_err();
        assert!(
            matches!(err, DiffusionError::UnknownColour { .. }),
            "{prompt:?}: {err:?}"
        );
        let msg = err.to_string();
        assert!(msg.contains(&format!("{prompt:?}")), "{msg}");
        assert!(msg.contains("#1e90ff") && msg.contains("dark red"), "{msg}");
    }
    let img = chelsea();
    let mask = disc(150, 100, 75.0, 35.0, 10.0);
    let err = run(
        &ClassicalEditor::new(),
        &img,
        &mask,
        &action(EditOp::Recolor, "sparkly"),
        0,
    )
    .unwrap_err();
    assert!(
        matches!(&err, CoreError::Editor(m) if m.contains("\"sparkly\"")),
        "{err}"
    );
}

#[test]
fn replace_and_add_are_refused_with_a_pointer_to_generative_editors() {
    let editor = ClassicalEditor::new();
    assert!(editor.supports(EditOp::Remove));
    assert!(editor.supports(EditOp::Recolor));
    assert!(!editor.supports(EditOp::Replace));
    assert!(!editor.supports(EditOp::Add));
    let img = RgbImage::new(16, 16);
    let mask = boxed(16, 16, 4.0, 4.0, 8.0, 8.0);
    for op in [EditOp::Replace, EditOp::Add] {
        let err = run(&editor, &img, &mask, &action(op, "a floor lamp"), 0).unwrap_err();
        match err {
            CoreError::Editor(m) => {
                assert!(m.contains("generative editor") && m.contains("sd15"), "{m}");
                assert!(m.contains(op.as_str()), "{m}");
            }
            other => panic!("{other:?}"),
        }
    }
}

#[test]
fn masks_of_the_wrong_size_are_rejected() {
    let img = RgbImage::new(20, 10);
    let mask = boxed(10, 20, 2.0, 2.0, 5.0, 5.0);
    let editor = ClassicalEditor::new();
    for op in [EditOp::Remove, EditOp::Recolor] {
        let err = run(&editor, &img, &mask, &action(op, "blue"), 0).unwrap_err();
        assert!(
            matches!(&err, CoreError::Editor(m) if m.contains("10x20") && m.contains("20x10")),
            "{err}"
        );
    }
    for method in InpaintMethod::ALL {
        assert!(matches!(
            inpaint(&img, &mask, method, 0),
            Err(DiffusionError::MaskSize { .. })
        ));
    }
    assert!(matches!(
        recolor(&img, &mask, [1, 2, 3], &RecolorOptions::default()),
        Err(DiffusionError::MaskSize { .. })
    ));
}

#[test]
fn degenerate_inputs_do_not_panic() {
    let editor_t = ClassicalEditor::with_method(InpaintMethod::Telea);
    let editor_p = ClassicalEditor::with_method(InpaintMethod::PatchMatch);
    let remove = action(EditOp::Remove, "");
    let recolour = action(EditOp::Recolor, "red");
    // Empty masks return the image unchanged.
    let img = chelsea();
    let empty = Mask::new(150, 100).unwrap();
    for e in [&editor_t, &editor_p] {
        assert_eq!(run(e, &img, &empty, &remove, 0).unwrap(), img);
        assert_eq!(run(e, &img, &empty, &recolour, 0).unwrap(), img);
    }
    // A mask covering everything: nothing to inpaint from, but recolouring works.
    let small = RgbImage::from_pixel(5, 4, Rgb([10, 20, 30]));
    let full = Mask::full(5, 4).unwrap();
    for e in [&editor_t, &editor_p] {
        let err = run(e, &small, &full, &remove, 0).unwrap_err();
        assert!(
            err.to_string().contains("nothing to inpaint from")
                || err.to_string().contains("no known pixels"),
            "{err}"
        );
    }
    assert_ne!(run(&editor_t, &small, &full, &recolour, 0).unwrap(), small);
    // 1x1 images.
    let one = RgbImage::from_pixel(1, 1, Rgb([200, 100, 0]));
    let one_full = Mask::full(1, 1).unwrap();
    let one_empty = Mask::new(1, 1).unwrap();
    for e in [&editor_t, &editor_p] {
        assert!(run(e, &one, &one_full, &remove, 0).is_err());
        assert_eq!(run(e, &one, &one_empty, &remove, 0).unwrap(), one);
    }
    // Tiny images and masks that leave a single known pixel or a thin strip.
    let tiny = RgbImage::from_fn(3, 2, |x, y| Rgb([(x * 50) as u8, (y * 90) as u8, 7]));
    let all_but_one = Mask::from_fn(3, 2, |x, y| (x, y) != (2, 1)).unwrap();
    for e in [&editor_t, &editor_p] {
        let out = run(e, &tiny, &all_but_one, &remove, 0).unwrap();
        assert!(out.pixels().all(|p| *p == *tiny.get_pixel(2, 1)), "{out:?}");
    }
    let strip = Mask::from_fn(150, 100, |_, y| y >= 2).unwrap();
    for e in [&editor_t, &editor_p] {
        let out = run(e, &img, &strip, &remove, 5).unwrap();
        assert_outside_identical(&img, &out, &strip, "thin strip");
    }
    // A mask touching every border but not covering the image.
    let frame = Mask::from_fn(40, 30, |x, y| x < 3 || y < 3 || x >= 37 || y >= 27).unwrap();
    let framed = RgbImage::from_fn(40, 30, |x, y| Rgb([(x * 6) as u8, (y * 8) as u8, 128]));
    for e in [&editor_t, &editor_p] {
        let out = run(e, &framed, &frame, &remove, 0).unwrap();
        assert_outside_identical(&framed, &out, &frame, "frame");
    }
}

#[test]
fn bad_options_are_rejected() {
    let img = RgbImage::new(8, 8);
    let mask = boxed(8, 8, 2.0, 2.0, 4.0, 4.0);
    let bad_telea = TeleaOptions {
        radius: 0.0,
        ..TeleaOptions::default()
    };
    assert!(matches!(
        inpaint_telea(&img, &mask, &bad_telea),
        Err(DiffusionError::InvalidOption(_))
    ));
    let bad_pm = PatchMatchOptions {
        patch_radius: 0,
        ..PatchMatchOptions::default()
    };
    assert!(matches!(
        inpaint_patchmatch(&img, &mask, &bad_pm, 0),
        Err(DiffusionError::InvalidOption(_))
    ));
    let bad_pm = PatchMatchOptions {
        min_em_iterations: 9,
        em_iterations: 3,
        ..PatchMatchOptions::default()
    };
    assert!(matches!(
        inpaint_patchmatch(&img, &mask, &bad_pm, 0),
        Err(DiffusionError::InvalidOption(_))
    ));
    let bad_r = RecolorOptions {
        lightness_shift: 1.5,
    };
    assert!(matches!(
        recolor(&img, &mask, [0, 0, 0], &bad_r),
        Err(DiffusionError::InvalidOption(_))
    ));
    assert_eq!(
        "Telea".parse::<InpaintMethod>().unwrap(),
        InpaintMethod::Telea
    );
    assert_eq!(
        "patch-match".parse::<InpaintMethod>().unwrap(),
        InpaintMethod::PatchMatch
    );
    assert!("diffusion".parse::<InpaintMethod>().is_err());
}

#[test]
fn the_editor_reports_its_method() {
    assert_eq!(ClassicalEditor::new().method(), InpaintMethod::default());
    assert!(ClassicalEditor::with_method(InpaintMethod::Telea)
        .name()
        .contains("telea"));
    assert!(ClassicalEditor::with_method(InpaintMethod::PatchMatch)
        .name()
        .contains("patchmatch"));
}
