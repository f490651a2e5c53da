//! `preprocess::resize` against Pillow byte for byte, including the shapes where Pillow runs
//! the vertical pass first (fixture from `tools/parity/pillow_resize.py`).

use cielr_scene::preprocess::{resize, Resample};
use image::RgbImage;
use serde_json::Value;

fn decode_base64(text: &str) -> Vec<u8> {
    let value = |c: u8| -> u32 {
        match c {
            b'A'..=b'Z' => (c - b'A') as u32,
            b'a'..=b'z' => (c - b'a') as u32 + 26,
            b'0'..=b'9' => (c - b'0') as u32 + 52,
            b'+' => 62,
            b'/' => 63,
            _ => panic!("not base64: {c}"),
        }
    };
    let mut out = Vec::new();
    for chunk in text.as_bytes().chunks(4) {
        let digits: Vec<u32> = chunk
            .iter()
            .filter(|&&c| c != b'=')
            .map(|&c| value(c))
            .collect();
        let mut n = 0u32;
        for (i, d) in digits.iter().enumerate() {
            n |= d << (18 - 6 * i);
        }
        let bytes = [(n >> 16) as u8, (n >> 8) as u8, n as u8];
        out.extend_from_slice(&bytes[..digits.len().saturating_sub(1)]);
    }
    out
}

#[test]
fn resize_matches_pillow_in_both_pass_orders() {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/pillow-resize/cases.json"
    );
    let doc: Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    let input = &doc["input"];
    let (w, h) = (
        input["width"].as_u64().unwrap() as u32,
        input["height"].as_u64().unwrap() as u32,
    );
    let image = RgbImage::from_raw(w, h, decode_base64(input["rgb"].as_str().unwrap())).unwrap();
    let cases = doc["cases"].as_array().unwrap();
    let vertical_first = cases.iter().filter(|c| c["vertical_first"] == true).count();
    assert!(vertical_first >= 5 && cases.len() - vertical_first >= 5);
    for case in cases {
        let filter = match case["filter"].as_str().unwrap() {
            "bicubic" => Resample::Bicubic,
            "bilinear" => Resample::Bilinear,
            "lanczos" => Resample::Lanczos,
            other => panic!("unknown filter {other}"),
        };
        let (ow, oh) = (
            case["width"].as_u64().unwrap(),
            case["height"].as_u64().unwrap(),
        );
        let ours = resize(&image, ow as usize, oh as usize, filter).unwrap();
        let expected = decode_base64(case["rgb"].as_str().unwrap());
        let differing = ours
            .as_raw()
            .iter()
            .zip(&expected)
            .filter(|(a, b)| a != b)
            .count();
        assert_eq!(
            differing, 0,
            "{} {w}x{h} -> {ow}x{oh} (vertical first: {}): {differing} bytes differ from Pillow",
            case["filter"], case["vertical_first"]
        );
    }
}
