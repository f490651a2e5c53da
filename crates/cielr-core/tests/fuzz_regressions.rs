//! Hostile inputs for the readers in `cielr-core` (issue 9): inputs the fuzz targets in
//! `fuzz/` found (kept under `tests/fixtures/fuzz-regressions/<target>/`, replayed here) and
//! hand-written ones for the limits (decompression bombs, huge declared sizes). A counting
//! allocator checks that rejected inputs are rejected before anything large is allocated.

use std::path::PathBuf;

use cielr_core::io::{load_gray, load_rgb};
use cielr_core::mask::decode_rle_string;
use cielr_core::scene::MAX_SSR_MASK_PIXELS;
use cielr_core::weights::TensorStore;
use cielr_core::{CoreError, Mask, Plan, Scene};

#[path = "support/fuzz_support.rs"]
mod fuzz_support;
#[path = "support/json_close.rs"]
mod json_close;

use fuzz_support::{fixtures, peak_during, scratch, MIB};

// ---------------------------------------------------------------- images

fn crc32(bytes: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &b in bytes {
        crc ^= b as u32;
        for _ in 0..8 {
            crc = if crc & 1 != 0 {
                (crc >> 1) ^ 0xEDB8_8320
            } else {
                crc >> 1
            };
        }
    }
    !crc
}

fn chunk(out: &mut Vec<u8>, kind: &[u8; 4], data: &[u8]) {
    out.extend_from_slice(&(data.len() as u32).to_be_bytes());
    let start = out.len();
    out.extend_from_slice(kind);
    out.extend_from_slice(data);
    let crc = crc32(&out[start..]);
    out.extend_from_slice(&crc.to_be_bytes());
}

/// A PNG whose header claims `width x height` (colour type `color`, bit depth `depth`) with
/// a few bytes of (invalid) image data.
fn png_header(width: u32, height: u32, depth: u8, color: u8) -> Vec<u8> {
    let mut png = b"\x89PNG\r\n\x1a\n".to_vec();
    let mut ihdr = Vec::new();
    ihdr.extend_from_slice(&width.to_be_bytes());
    ihdr.extend_from_slice(&height.to_be_bytes());
    ihdr.extend_from_slice(&[depth, color, 0, 0, 0]);
    chunk(&mut png, b"IHDR", &ihdr);
    chunk(
        &mut png,
        b"IDAT",
        &[0x78, 0x9c, 0x03, 0x00, 0x00, 0x00, 0x00, 0x01],
    );
    chunk(&mut png, b"IEND", &[]);
    png
}

#[test]
fn png_claiming_100000_squared_pixels_is_refused_before_allocating() {
    let png = png_header(100_000, 100_000, 8, 2);
    assert!(png.len() < 100);
    let path = scratch("bomb.png", &png);
    let (result, peak) = peak_during(|| load_rgb(&path));
    let err = result.expect_err("a 100000x100000 image must be refused");
    let msg = err.to_string();
    assert!(matches!(err, CoreError::Image { .. }), "{msg}");
    assert!(msg.contains("bomb.png"), "the error names the file: {msg}");
    assert!(
        msg.to_lowercase().contains("limit"),
        "the error says why: {msg}"
    );
    assert!(peak < MIB, "{peak} bytes allocated for a refused image");
    assert!(load_gray(&path).is_err());
}

#[test]
fn png_within_the_side_limit_but_over_the_memory_limit_is_refused() {
    // 16384 x 16384 RGBA at 16 bits: 2 GiB decoded, over the 1 GiB allocation limit.
    let png = png_header(16_384, 16_384, 16, 6);
    let path = scratch("rgba16.png", &png);
    let (result, peak) = peak_during(|| load_rgb(&path));
    let msg = result
        .expect_err("2 GiB of pixels must be refused")
        .to_string();
    assert!(msg.to_lowercase().contains("limit"), "{msg}");
    assert!(peak < MIB, "{peak} bytes allocated for a refused image");
}

/// Found by the `image_decode` fuzz target: a 263-byte progressive JPEG whose header claims
/// 15112 x 13824 pixels (within the side limit) was decoded, padding the missing data, with
/// 1.4 GB resident. It is refused from its header now (decoded size over 4096 x file size).
#[test]
fn image_decode_fuzz_findings() {
    for (path, bytes) in fixtures("image_decode") {
        assert!(bytes.len() < 4096);
        let (result, peak) = peak_during(|| load_rgb(&path));
        let msg = result.expect_err("a decompression bomb").to_string();
        assert!(msg.contains("decompression bomb"), "{msg}");
        assert!(
            peak < 16 * MIB,
            "{}: {peak} bytes allocated",
            path.display()
        );
    }
}

#[test]
fn images_under_the_ratio_check_size_still_decode() {
    // A flat 64 x 64 PNG is highly compressed but tiny when decoded: not a bomb.
    let img = image::RgbImage::from_pixel(64, 64, image::Rgb([9, 9, 9]));
    let path = std::env::temp_dir().join(format!("cielr-flat-{}.png", std::process::id()));
    img.save(&path).unwrap();
    assert_eq!(load_rgb(&path).unwrap(), img);
}

#[test]
fn truncated_and_garbage_images_fail_with_an_error() {
    let png = png_header(4, 4, 8, 2);
    for (name, bytes) in [
        ("truncated.png", &png[..20]),
        ("empty.png", &[][..]),
        ("jpeg-start.png", &[0xff, 0xd8, 0xff, 0xe0, 0, 16][..]),
        ("bad-idat.png", &png[..]),
    ] {
        let path = scratch(name, bytes);
        let err = load_rgb(&path).expect_err(name).to_string();
        assert!(err.contains(name), "{err}");
    }
}

// ---------------------------------------------------------------- SSR JSON

fn ssr_with_masks(width: u32, height: u32, objects: usize) -> String {
    let n = width as u64 * height as u64;
    let objs: Vec<String> = (0..objects)
        .map(|i| {
            format!(
                r#"{{"id": {i}, "label": "x", "bbox": [0, 0, 1, 1],
                    "mask": {{"size": [{height}, {width}], "counts": [{n}]}}}}"#
            )
        })
        .collect();
    format!(
        r#"{{"width": {width}, "height": {height}, "objects": [{}]}}"#,
        objs.join(",")
    )
}

#[test]
fn ssr_mask_of_65536_squared_pixels_is_refused_before_allocating() {
    let text = ssr_with_masks(65_536, 65_536, 1);
    assert!(text.len() < 200);
    let (result, peak) = peak_during(|| Scene::from_json(&text));
    let msg = result
        .expect_err("a 2^32-pixel mask must be refused")
        .to_string();
    assert!(msg.contains("object 0 (x)"), "{msg}");
    assert!(msg.contains(&MAX_SSR_MASK_PIXELS.to_string()), "{msg}");
    assert!(peak < MIB, "{peak} bytes allocated for a refused SSR");
}

#[test]
fn ssr_with_many_large_masks_is_refused_at_the_budget() {
    // 8192 x 8192 masks are 2^26 pixels each: the 17th passes the 2^30 budget.
    let text = ssr_with_masks(8192, 8192, 40);
    let msg = Scene::from_json(&text).unwrap_err().to_string();
    assert!(msg.contains("object 16 (x)"), "{msg}");
    // Within the budget, the same masks are fine.
    let ok = Scene::from_json(&ssr_with_masks(8192, 8192, 2)).unwrap();
    assert_eq!(ok.objects.len(), 2);
}

#[test]
fn hostile_ssr_json_fails_with_clear_errors() {
    let cases: &[(&str, &str)] = &[
        ("", "SSR"),
        ("[]", "SSR"),
        (r#"{"width": 0, "height": 5}"#, "empty"),
        (r#"{"width": -1, "height": 5}"#, "SSR"),
        (r#"{"width": 4294967296, "height": 5}"#, "SSR"),
        (
            r#"{"width": 4, "height": 4, "objects": [{"id": 1, "label": "a", "bbox": [0, 0, 1e400, 1]}]}"#,
            "SSR",
        ),
        (
            r#"{"width": 4, "height": 4, "objects": [{"id": 1, "label": "a", "bbox": [3, 0, 1, 1]}]}"#,
            "bad box",
        ),
        (
            r#"{"width": 4, "height": 4, "objects": [{"id": 1, "label": "a", "bbox": [9, 9, 10, 10]}]}"#,
            "outside",
        ),
        (
            r#"{"width": 4, "height": 4, "objects": [{"id": 1, "label": "a", "bbox": [0, 0, 1, 1]}, {"id": 1, "label": "b", "bbox": [0, 0, 1, 1]}]}"#,
            "duplicate id",
        ),
        (
            r#"{"width": 4, "height": 4, "objects": [{"id": 1, "label": "a", "bbox": [0, 0, 1, 1], "mask": {"size": [4, 4], "counts": [3, 99]}}]}"#,
            "run lengths add up to",
        ),
        (
            r#"{"width": 4, "height": 4, "objects": [{"id": 1, "label": "a", "bbox": [0, 0, 1, 1], "mask": {"size": [4, 4], "counts": "~~~~"}}]}"#,
            "outside the RLE alphabet",
        ),
        (
            r#"{"width": 4, "height": 4, "objects": [{"id": 1, "label": "a", "bbox": [0, 0, 1, 1], "mask": {"size": [5, 4], "counts": [20]}}]}"#,
            "differs from the scene",
        ),
    ];
    for (text, expected) in cases {
        let msg = Scene::from_json(text).expect_err(text).to_string();
        assert!(msg.contains(expected), "{text}: {msg}");
    }
    // Deep nesting is refused by the JSON parser's recursion limit, not the stack.
    let deep = format!(
        r#"{{"width": 4, "height": 4, "queries": {}{}}}"#,
        "[".repeat(100_000),
        "]".repeat(100_000)
    );
    assert!(Scene::from_json(&deep).is_err());
}

#[test]
fn hostile_plan_json_fails_with_clear_errors() {
    for text in [
        "",
        r#"{"steps": [{"op": "delete_file", "targets": [1], "prompt": "x"}], "trace": []}"#,
        r#"{"steps": [{"op": "remove", "targets": [-1], "prompt": "x"}], "trace": []}"#,
        r#"{"steps": [{"op": "remove", "targets": [4294967296], "prompt": "x"}], "trace": []}"#,
        r#"{"steps": [], "trace": [{"kind": "shell", "command": "rm -rf /"}]}"#,
    ] {
        let msg = Plan::from_json(text).expect_err(text).to_string();
        assert!(msg.contains("plan"), "{text}: {msg}");
    }
}

// ---------------------------------------------------------------- COCO RLE

#[test]
fn hostile_rle_strings_fail_with_clear_errors() {
    for (s, expected) in [
        ("0000000000000000000000000", ""),
        ("ooooooooooooo", "longer than 12 characters"),
        ("\u{7f}", "outside the RLE alphabet"),
        ("o", "ends inside a count"),
        ("@", "negative"),
    ] {
        match decode_rle_string(s) {
            Ok(counts) => {
                assert!(expected.is_empty(), "{s:?} decoded to {counts:?}");
            }
            Err(e) => assert!(e.to_string().contains(expected), "{s:?}: {e}"),
        }
    }
    // A huge claimed mask is refused by its size, before the runs are read.
    let (r, peak) = peak_during(|| Mask::from_coco_counts(u32::MAX, u32::MAX, &[1]));
    assert!(r.unwrap_err().to_string().contains("exceeds the limit"));
    assert!(peak < MIB);
}

// ---------------------------------------------------------------- safetensors

fn safetensors(header: &str, data: &[u8]) -> Vec<u8> {
    let mut b = (header.len() as u64).to_le_bytes().to_vec();
    b.extend_from_slice(header.as_bytes());
    b.extend_from_slice(data);
    b
}

fn store(bytes: Vec<u8>) -> cielr_core::weights::Result<TensorStore> {
    TensorStore::from_buffers(vec![(PathBuf::from("hostile.safetensors"), bytes)])
}

#[test]
fn safetensors_sizes_are_checked_against_the_file_before_allocating() {
    // A header length of 2^63.
    let mut b = (1u64 << 63).to_le_bytes().to_vec();
    b.extend_from_slice(b"{}");
    let (r, peak) = peak_during(|| store(b));
    let msg = r.unwrap_err().to_string();
    assert!(
        msg.contains("hostile.safetensors") && msg.contains("claims"),
        "{msg}"
    );
    assert!(peak < MIB);

    // A tensor whose data lies past the end of the file.
    let h = r#"{"w":{"dtype":"F32","shape":[1073741824],"data_offsets":[0,4294967296]}}"#;
    let (r, peak) = peak_during(|| store(safetensors(h, &[0; 16])));
    let msg = r.unwrap_err().to_string();
    assert!(msg.contains("hostile.safetensors"), "{msg}");
    assert!(peak < MIB);

    // Shapes whose element count overflows.
    let h = r#"{"w":{"dtype":"F32","shape":[4294967296,4294967296,16],"data_offsets":[0,16]}}"#;
    assert!(store(safetensors(h, &[0; 16])).is_err());

    // Too few bytes for the shape.
    let h = r#"{"w":{"dtype":"F32","shape":[5],"data_offsets":[0,16]}}"#;
    assert!(store(safetensors(h, &[0; 16])).is_err());

    // A dtype that is not read as f32 names the tensor.
    let h = r#"{"w":{"dtype":"I64","shape":[2],"data_offsets":[0,16]}}"#;
    let s = store(safetensors(h, &[0; 16])).unwrap();
    let msg = s.read("w").unwrap_err().to_string();
    assert!(msg.contains("`w`") && msg.contains("I64"), "{msg}");

    // Too short for a header at all; not JSON.
    assert!(store(vec![1, 2, 3]).is_err());
    assert!(store(safetensors("not json", &[])).is_err());
}

// ---------------------------------------------------------------- replayed fuzz findings

/// Every input the `ssr_json` fuzz target kept is rejected with an error or parsed into a
/// valid scene that survives a write and re-read. `float-1ulp-roundtrip.ssr.json` (a bbox
/// coordinate `369.099999999E90`) showed that serde_json's default float parser can land
/// 1 ulp away from the nearest double, so the re-read scene matches to 1e-12, not bit for
/// bit (not a reader bug; enabling serde_json's `float_roundtrip` feature would make it exact).
#[test]
fn ssr_json_fuzz_findings() {
    for (path, bytes) in fixtures("ssr_json") {
        let text = String::from_utf8_lossy(&bytes);
        if let Ok(scene) = Scene::from_json(&text) {
            scene.validate().unwrap();
            let again = Scene::from_json(&scene.to_json()).unwrap();
            assert!(
                json_close::json_close(&scene.to_value(), &again.to_value()),
                "{}",
                path.display()
            );
        }
    }
}
