//! Loader tests on synthetic folders built here, reproducing each quirk of the real data.

use std::path::{Path, PathBuf};

use cielr_core::EditOp;
use cielr_eval::datasets::{load_ciebench, load_manifest, load_reason_edit};
use image::{GrayImage, ImageFormat, Luma, Rgb, RgbImage};

fn tempdir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("cielr-eval-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn photo(w: u32, h: u32) -> RgbImage {
    RgbImage::from_fn(w, h, |x, y| {
        Rgb([(x * 7) as u8, (y * 5) as u8, ((x + y) * 3) as u8])
    })
}

/// A block mask at `[x0, x1) x [y0, y1)`.
fn block(w: u32, h: u32, (x0, y0, x1, y1): (u32, u32, u32, u32)) -> GrayImage {
    GrayImage::from_fn(w, h, |x, y| {
        Luma([if (x0..x1).contains(&x) && (y0..y1).contains(&y) {
            255
        } else {
            0
        }])
    })
}

fn save(img: &image::DynamicImage, path: &Path, format: ImageFormat) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    img.save_with_format(path, format).unwrap();
}

#[test]
fn ciebench_quirks() {
    let dir = tempdir("ciebench");
    // 0: JPEG bytes in .png files, greyscale JPEG mask (compression noise: the block's edges
    // are off the 8x8 JPEG grid), "notes".
    save(
        &photo(64, 48).into(),
        &dir.join("0/0.png"),
        ImageFormat::Jpeg,
    );
    save(
        &block(64, 48, (17, 9, 47, 39)).into(),
        &dir.join("0/0_mask.png"),
        ImageFormat::Jpeg,
    );
    // 1: a mask twice the image's size (PNG), with noise values around the threshold, "note".
    save(
        &photo(32, 24).into(),
        &dir.join("1/1.png"),
        ImageFormat::Png,
    );
    let mut big = block(64, 48, (0, 0, 32, 48));
    big.put_pixel(60, 40, Luma([127])); // below the threshold: stays unset
    big.put_pixel(62, 2, Luma([128])); // at the threshold: set
    save(&big.into(), &dir.join("1/1_mask.png"), ImageFormat::Png);
    // 2: an undecodable image; 3: a missing mask file; 4: absolute path; 5: `..` escape;
    // 6: a missing field; 10: numeric order after 2..6.
    std::fs::create_dir_all(dir.join("2")).unwrap();
    std::fs::write(dir.join("2/2.png"), b"this is not an image").unwrap();
    save(
        &block(8, 8, (0, 0, 4, 4)).into(),
        &dir.join("2/2_mask.png"),
        ImageFormat::Png,
    );
    save(
        &photo(16, 16).into(),
        &dir.join("3/3.png"),
        ImageFormat::Png,
    );
    save(
        &photo(16, 16).into(),
        &dir.join("10/10.png"),
        ImageFormat::Png,
    );
    save(
        &block(16, 16, (2, 2, 9, 9)).into(),
        &dir.join("10/10_mask.png"),
        ImageFormat::Png,
    );
    let index = serde_json::json!({
        "10": {"image path": "10/10.png", "instruction": "Which is red? Recolour it blue.", "mask path": ["10/10_mask.png"], "CLIP": ["blue box"]},
        "0": {"image path": "0/0.png", "instruction": "Which item holds flowers? Replace it with a blue bottle.", "mask path": ["0/0_mask.png"], "CLIP": ["blue bottle"], "notes": "the vase is partly hidden"},
        "1": {"image path": "1/1.png", "instruction": "What is used for light? Remove it.", "mask path": ["1/1_mask.png"], "CLIP": ["white wall"], "note": "mask size differs"},
        "2": {"image path": "2/2.png", "instruction": "x? Remove it.", "mask path": ["2/2_mask.png"], "CLIP": ["background"]},
        "3": {"image path": "3/3.png", "instruction": "x? Remove it.", "mask path": ["3/3_mask.png"], "CLIP": ["background"]},
        "4": {"image path": "/etc/passwd", "instruction": "x? Remove it.", "mask path": ["4/4_mask.png"], "CLIP": ["background"]},
        "5": {"image path": "5/../../outside.png", "instruction": "x? Remove it.", "mask path": ["5/5_mask.png"], "CLIP": ["background"]},
        "6": {"image path": "6/6.png", "mask path": ["6/6_mask.png"], "CLIP": ["background"]},
    });
    std::fs::write(dir.join("benchmark.json"), index.to_string()).unwrap();

    let ds = load_ciebench(&dir).unwrap();
    assert_eq!(ds.name, "ciebench");
    assert_eq!(ds.protocol.size, Some(512));
    let ids: Vec<&str> = (0..ds.entries.len()).map(|i| ds.id(i)).collect();
    assert_eq!(ids, ["0", "1", "2", "3", "4", "5", "6", "10"]);

    let s0 = ds.entries[0].as_ref().unwrap();
    assert_eq!(s0.notes.as_deref(), Some("the vase is partly hidden"));
    assert_eq!(s0.target_text(), Some("blue bottle"));
    let l0 = s0.load().unwrap();
    assert_eq!(l0.image.dimensions(), (64, 48));
    assert!(l0.warnings.is_empty());
    let gray = l0.mask_gray.as_ref().unwrap();
    // The JPEG mask is noisy: some pixels are neither 0 nor 255 ...
    assert!(gray.pixels().any(|p| p.0[0] != 0 && p.0[0] != 255));
    // ... and binarising at 128 recovers the block, up to a pixel at its edges.
    let m = l0.mask.as_ref().unwrap();
    assert!(m.get(18, 10) && m.get(45, 37) && m.get(32, 24));
    assert!(!m.get(14, 6) && !m.get(50, 42) && !m.get(0, 0));
    let area = m.area() as i64;
    assert!((area - 30 * 30).abs() < 2 * (30 + 30), "area {area}");

    let s1 = ds.entries[1].as_ref().unwrap();
    assert_eq!(s1.notes.as_deref(), Some("mask size differs"));
    let l1 = s1.load().unwrap();
    assert_eq!(l1.warnings.len(), 1);
    assert!(l1.warnings[0].contains("64x48") && l1.warnings[0].contains("resized"));
    let m1 = l1.mask.as_ref().unwrap();
    assert_eq!((m1.width(), m1.height()), (32, 24));
    assert!(m1.get(15, 23) && !m1.get(16, 0));
    assert!(!m1.get(30, 20), "127 must stay below the threshold");
    assert!(m1.get(31, 1), "128 is at the threshold");

    let e2 = ds.entries[2]
        .as_ref()
        .unwrap()
        .load()
        .unwrap_err()
        .to_string();
    assert!(
        e2.contains("sample 2") && e2.contains("cannot read the image"),
        "{e2}"
    );
    let e3 = ds.entries[3]
        .as_ref()
        .unwrap()
        .load()
        .unwrap_err()
        .to_string();
    assert!(
        e3.contains("cannot read the mask") && e3.contains("3_mask.png"),
        "{e3}"
    );
    let b4 = ds.entries[4].as_ref().unwrap_err();
    assert!(b4.error.contains("absolute"), "{}", b4.error);
    let b5 = ds.entries[5].as_ref().unwrap_err();
    assert!(b5.error.contains("..") && b5.error.contains("inside the dataset folder"));
    let b6 = ds.entries[6].as_ref().unwrap_err();
    assert!(b6.error.contains("\"instruction\""), "{}", b6.error);
    assert!(ds.entries[7].as_ref().unwrap().load().is_ok());

    // A folder without the index says what it expects.
    let empty = tempdir("ciebench-empty");
    let e = load_ciebench(&empty).unwrap_err().to_string();
    assert!(e.contains("benchmark.json"), "{e}");
    std::fs::remove_dir_all(&dir).unwrap();
    std::fs::remove_dir_all(&empty).unwrap();
}

#[test]
fn reason_edit_pairs_lines_with_images_in_natural_order() {
    let dir = tempdir("reason-edit");
    // Stems 1, 2, 10 (natural order, not string order), masks as JPEG; 10 has no mask.
    for stem in ["1", "2", "10"] {
        save(
            &photo(20, 20).into(),
            &dir.join(format!("{stem}.png")),
            ImageFormat::Png,
        );
    }
    for stem in ["1", "2"] {
        save(
            &block(20, 20, (5, 5, 15, 15)).into(),
            &dir.join(format!("{stem}_mask.jpg")),
            ImageFormat::Jpeg,
        );
    }
    std::fs::write(
        dir.join("Reason_test.txt"),
        "What can hold water? Replace it with a cup. CLIP: a cup\n\
         \n\
         Remove the thing used to cut. CLIP: table\n\
         No target text here\n\
         An extra line CLIP: x\n",
    )
    .unwrap();
    let ds = load_reason_edit(&dir).unwrap();
    assert_eq!(ds.protocol.size, Some(256));
    assert_eq!(ds.protocol.best_by, "clip");
    assert_eq!(ds.entries.len(), 4);
    let s1 = ds.entries[0].as_ref().unwrap();
    assert_eq!(s1.id, "1");
    assert_eq!(
        s1.instruction,
        "What can hold water? Replace it with a cup."
    );
    assert_eq!(s1.target_text(), Some("a cup"));
    assert!(s1.masks[0].ends_with("1_mask.jpg"));
    let s2 = ds.entries[1].as_ref().unwrap();
    assert_eq!((s2.id.as_str(), s2.target_text()), ("2", Some("table")));
    let m = s2.load().unwrap().mask.unwrap();
    assert!(m.get(10, 10) && !m.get(1, 1));
    // Line 4 pairs with 10.png: no CLIP part (and 10 has no mask either).
    let b = ds.entries[2].as_ref().unwrap_err();
    assert_eq!(b.id, "10");
    assert!(
        b.error.contains("line 4") && b.error.contains("CLIP:"),
        "{}",
        b.error
    );
    // Line 5 has no image.
    let b = ds.entries[3].as_ref().unwrap_err();
    assert!(b.error.contains("line 5 has no image"), "{}", b.error);
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn manifest_schema() {
    let dir = tempdir("manifest");
    save(
        &photo(16, 12).into(),
        &dir.join("img/a.jpg"),
        ImageFormat::Jpeg,
    );
    save(
        &block(16, 12, (0, 0, 8, 12)).into(),
        &dir.join("m/a.png"),
        ImageFormat::Png,
    );
    let text = r#"# my set
{"manifest": {"name": "kitchen", "size": null, "best_by": "psnr"}}
{"id": "a", "image": "img/a.jpg", "instruction": "What holds coffee? Remove it.", "mask": "m/a.png", "target": "table", "op": "remove", "notes": "hand-made"}
{"image": "img/a.jpg", "instruction": "Make it blue.", "clip": ["blue"], "op": "recolour"}
{"id": "a", "image": "img/a.jpg", "instruction": "duplicate id"}
{"id": "bad-op", "image": "img/a.jpg", "instruction": "x", "op": "explode"}
{"id": "escape", "image": "../a.jpg", "instruction": "x"}
not json
"#;
    let file = dir.join("set.jsonl");
    std::fs::write(&file, text).unwrap();
    let ds = load_manifest(&file).unwrap();
    assert_eq!(ds.name, "kitchen");
    assert_eq!(ds.protocol.size, None);
    assert_eq!(ds.protocol.best_by, "psnr");
    assert_eq!(ds.entries.len(), 6);
    let a = ds.entries[0].as_ref().unwrap();
    assert_eq!(
        (a.op, a.notes.as_deref()),
        (Some(EditOp::Remove), Some("hand-made"))
    );
    let la = a.load().unwrap();
    assert_eq!(la.mask.unwrap().area(), 8 * 12);
    let second = ds.entries[1].as_ref().unwrap();
    assert_eq!(second.id, "2");
    assert_eq!(second.op, Some(EditOp::Recolor));
    assert!(second.masks.is_empty());
    assert!(second.load().unwrap().mask.is_none());
    assert!(ds.entries[2].as_ref().unwrap_err().error.contains("unique"));
    assert!(ds.entries[3].as_ref().unwrap_err().error.contains("\"op\""));
    assert!(ds.entries[4].as_ref().unwrap_err().error.contains(".."));
    assert!(ds.entries[5].as_ref().unwrap_err().error.contains("line 8"));
    std::fs::remove_dir_all(&dir).unwrap();
}
