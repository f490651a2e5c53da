//! GGUF reading against the tiny fixture made by `tools/planner/make_gguf_fixture.py`, whose
//! expected values come from gguf-py's own dequantisation; and hostile variants of it.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use cielr_planner::error::PlannerError;
use cielr_planner::gguf::{GgufDType, GgufFile, GgufValue};

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

fn tiny_bytes() -> Vec<u8> {
    std::fs::read(fixture("gguf_tiny.gguf")).expect("the fixture gguf_tiny.gguf")
}

/// A scratch folder for one test, removed when dropped.
struct Scratch(PathBuf);

impl Scratch {
    fn new(test: &str) -> Scratch {
        let dir = std::env::temp_dir().join(format!("cielr-gguf-{test}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        Scratch(dir)
    }

    /// Writes bytes to a file of the folder and returns its path.
    fn file(&self, tag: &str, bytes: &[u8]) -> PathBuf {
        let path = self.0.join(format!("{tag}.gguf"));
        std::fs::write(&path, bytes).unwrap();
        path
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn find(hay: &[u8], needle: &[u8]) -> usize {
    hay.windows(needle.len())
        .position(|w| w == needle)
        .unwrap_or_else(|| panic!("{:?} not in the fixture", String::from_utf8_lossy(needle)))
}

#[test]
fn gguf_metadata_reads_every_type() {
    let g = GgufFile::open(&fixture("gguf_tiny.gguf")).unwrap();
    assert_eq!(g.version(), 3);
    assert_eq!(g.get_str("general.architecture"), Some("llama"));
    assert_eq!(g.get("test.u8"), Some(&GgufValue::U8(200)));
    assert_eq!(g.get("test.i8"), Some(&GgufValue::I8(-5)));
    assert_eq!(g.get("test.u16"), Some(&GgufValue::U16(60000)));
    assert_eq!(g.get("test.i16"), Some(&GgufValue::I16(-30000)));
    assert_eq!(g.get_u64("test.u32"), Some(4_000_000_000));
    assert_eq!(g.get_i64("test.i32"), Some(-2_000_000_000));
    assert_eq!(g.get_u64("test.u64"), Some((1 << 40) + 3));
    assert_eq!(g.get_i64("test.i64"), Some(-(1 << 40)));
    assert_eq!(g.get_f64("test.f32"), Some(0.25));
    assert_eq!(g.get_f64("test.f64"), Some(-1.5e-3));
    assert_eq!(g.get_bool("test.bool"), Some(true));
    assert_eq!(g.get_str("test.string"), Some("héllo ✓ wörld"));
    assert_eq!(
        g.get_str_array("test.str_array"),
        Some(vec!["a", "bc", "", "日本"])
    );
    assert_eq!(g.get_i32_array("test.i32_array"), Some(vec![1, -2, 3]));
    assert_eq!(
        g.get_f32_array("test.f32_array"),
        Some(vec![0.5, -1.25, 3.0])
    );
    assert_eq!(g.get_str("test.u8"), None);
    assert_eq!(g.get_str_array("test.i32_array"), None);
    assert!(g.metadata().len() >= 16);
}

#[test]
fn gguf_tensors_match_gguf_py_dequantisation_bit_exactly() {
    let text = std::fs::read_to_string(fixture("gguf_tiny_expected.json")).unwrap();
    let expected: serde_json::Value = serde_json::from_str(&text).unwrap();
    let expected = expected["tensors"].as_object().unwrap();
    let g = GgufFile::open(&fixture("gguf_tiny.gguf")).unwrap();
    let mut names = g.tensor_names();
    names.sort();
    let mut want: Vec<&String> = expected.keys().collect();
    want.sort();
    assert_eq!(names.iter().collect::<Vec<_>>(), want);

    let mut seen_types = BTreeMap::new();
    for (name, e) in expected {
        let shape: Vec<usize> = e["shape"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_u64().unwrap() as usize)
            .collect();
        let bits: Vec<u32> = e["bits"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_u64().unwrap() as u32)
            .collect();
        assert_eq!(g.tensor_shape(name), Some(shape.clone()), "{name}");
        let (got_shape, data) = g.tensor_f32(name).unwrap();
        assert_eq!(got_shape, shape, "{name}");
        assert_eq!(data.len(), bits.len(), "{name}");
        let mut max_diff = 0f32;
        for (i, (&x, &b)) in data.iter().zip(&bits).enumerate() {
            let want = f32::from_bits(b);
            let diff = (x - want).abs();
            max_diff = max_diff.max(diff);
            assert!(
                diff <= 1e-6 * want.abs().max(1.0),
                "{name}[{i}]: got {x}, gguf-py gives {want}"
            );
        }
        let exact = data.iter().zip(&bits).all(|(x, &b)| x.to_bits() == b);
        seen_types.insert(e["type"].as_str().unwrap().to_string(), (exact, max_diff));
    }
    eprintln!("type: (bit-exact, max abs diff) = {seen_types:?}");
    // All types are bit-exact against gguf-py (checked when this test was written).
    assert!(
        seen_types.values().all(|(exact, _)| *exact),
        "{seen_types:?}"
    );
    for t in [
        "F32", "F16", "BF16", "Q8_0", "Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q2_K", "Q3_K", "Q4_K",
        "Q5_K", "Q6_K",
    ] {
        assert!(seen_types.contains_key(t), "the fixture lacks {t}");
    }
    let info = g.tensor_info("quant.q4_1").unwrap();
    assert_eq!(info.dtype, GgufDType::Q4_1);
    assert_eq!(info.n_bytes, 3 * 20);
}

#[test]
fn gguf_missing_tensor_and_file_are_errors() {
    let g = GgufFile::open(&fixture("gguf_tiny.gguf")).unwrap();
    let e = g.tensor_f32("nope").unwrap_err();
    assert!(e.to_string().contains("nope"), "{e}");
    assert!(g.tensor_shape("nope").is_none());
    let e = GgufFile::open(Path::new("/nonexistent/x.gguf")).unwrap_err();
    assert!(matches!(e, PlannerError::Io { .. }), "{e}");
}

#[test]
fn gguf_every_truncation_is_an_error() {
    let scratch = Scratch::new("gguf_every_truncation_is_an_error");
    let bytes = tiny_bytes();
    let g = GgufFile::open(&fixture("gguf_tiny.gguf")).unwrap();
    let data_end = g
        .tensors()
        .iter()
        .map(|t| t.offset + t.n_bytes)
        .max()
        .unwrap() as usize;
    // One file, cut shorter and shorter (rewriting a file per cut is slow on some disks).
    let path = scratch.file("truncated", &bytes);
    let f = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
    for cut in (0..data_end).rev() {
        f.set_len(cut as u64).unwrap();
        match GgufFile::open(&path) {
            Err(e) => {
                let msg = e.to_string();
                assert!(msg.contains("truncated.gguf"), "cut {cut}: {msg}");
            }
            Ok(_) => panic!("a copy cut at {cut} of {data_end} bytes opened"),
        }
    }
}

#[test]
fn gguf_lying_tensor_offset_is_an_error() {
    let scratch = Scratch::new("gguf_lying_tensor_offset_is_an_error");
    let mut bytes = tiny_bytes();
    // The tensor entry: name, n_dims u32, dims 2 x u64, type u32, offset u64.
    let at = find(&bytes, b"quant.q6_k") + b"quant.q6_k".len() + 4 + 16 + 4;
    for lie in [1u64 << 20, u64::MAX - 7, u64::MAX - 31] {
        bytes[at..at + 8].copy_from_slice(&lie.to_le_bytes());
        let path = scratch.file("lying-offset", &bytes);
        let e = GgufFile::open(&path).unwrap_err().to_string();
        assert!(e.contains("quant.q6_k"), "{e}");
        assert!(e.contains("lying-offset.gguf"), "{e}");
    }
    // A misaligned offset is refused too.
    bytes[at..at + 8].copy_from_slice(&3u64.to_le_bytes());
    let e = GgufFile::open(&scratch.file("misaligned", &bytes)).unwrap_err();
    assert!(e.to_string().contains("alignment"), "{e}");
}

#[test]
fn gguf_huge_lengths_are_errors_without_allocating() {
    let scratch = Scratch::new("gguf_huge_lengths_are_errors_without_allocating");
    let orig = tiny_bytes();
    // Array length: key, type u32 (9), element type u32, length u64.
    let at = find(&orig, b"test.str_array") + b"test.str_array".len() + 8;
    for lie in [u64::MAX, 1 << 40, 1 << 28] {
        let mut bytes = orig.clone();
        bytes[at..at + 8].copy_from_slice(&lie.to_le_bytes());
        let e = GgufFile::open(&scratch.file("huge-array", &bytes)).unwrap_err();
        assert!(e.to_string().contains("test.str_array"), "{e}");
    }
    // String length: key, type u32 (8), length u64.
    let at = find(&orig, b"test.string") + b"test.string".len() + 4;
    let mut bytes = orig.clone();
    bytes[at..at + 8].copy_from_slice(&(1u64 << 62).to_le_bytes());
    let e = GgufFile::open(&scratch.file("huge-string", &bytes)).unwrap_err();
    assert!(e.to_string().contains("test.string"), "{e}");
    // Tensor and metadata counts.
    for field in [8usize, 16] {
        let mut bytes = orig.clone();
        bytes[field..field + 8].copy_from_slice(&(u64::MAX / 3).to_le_bytes());
        assert!(GgufFile::open(&scratch.file("huge-count", &bytes)).is_err());
    }
}

#[test]
fn gguf_bad_shapes_types_and_magic_are_errors() {
    let scratch = Scratch::new("gguf_bad_shapes_types_and_magic_are_errors");
    let orig = tiny_bytes();
    let name_end = find(&orig, b"quant.q4_k") + b"quant.q4_k".len();
    // Too many dimensions.
    let mut bytes = orig.clone();
    bytes[name_end..name_end + 4].copy_from_slice(&9u32.to_le_bytes());
    let e = GgufFile::open(&scratch.file("dims", &bytes)).unwrap_err();
    assert!(e.to_string().contains("dimensions"), "{e}");
    // A huge dimension (element count overflow).
    let mut bytes = orig.clone();
    bytes[name_end + 4..name_end + 12].copy_from_slice(&(u64::MAX - 255).to_le_bytes());
    let e = GgufFile::open(&scratch.file("overflow", &bytes)).unwrap_err();
    assert!(e.to_string().contains("quant.q4_k"), "{e}");
    // A row length that is not a multiple of the block size.
    let mut bytes = orig.clone();
    bytes[name_end + 4..name_end + 12].copy_from_slice(&255u64.to_le_bytes());
    let e = GgufFile::open(&scratch.file("row", &bytes)).unwrap_err();
    assert!(e.to_string().contains("block size"), "{e}");
    // An unknown type id.
    let mut bytes = orig.clone();
    bytes[name_end + 20..name_end + 24].copy_from_slice(&99u32.to_le_bytes());
    let e = GgufFile::open(&scratch.file("type", &bytes)).unwrap_err();
    assert!(e.to_string().contains("type id 99"), "{e}");
    // Magic and version.
    let mut bytes = orig.clone();
    bytes[0] = b'X';
    let e = GgufFile::open(&scratch.file("magic", &bytes)).unwrap_err();
    assert!(e.to_string().contains("not a GGUF"), "{e}");
    let mut bytes = orig.clone();
    bytes[4..8].copy_from_slice(&1u32.to_le_bytes());
    let e = GgufFile::open(&scratch.file("version", &bytes)).unwrap_err();
    assert!(e.to_string().contains("version 1"), "{e}");
}

#[test]
fn gguf_random_corruption_never_panics() {
    let scratch = Scratch::new("gguf_random_corruption_never_panics");
    let orig = tiny_bytes();
    let header_end = GgufFile::open(&fixture("gguf_tiny.gguf"))
        .unwrap()
        .tensors()
        .iter()
        .map(|t| t.offset)
        .min()
        .unwrap() as usize;
    // A small xorshift generator keeps the test deterministic.
    let mut s = 0x9e37_79b9_7f4a_7c15u64;
    let mut next = move || {
        s ^= s << 13;
        s ^= s >> 7;
        s ^= s << 17;
        s
    };
    for _ in 0..300 {
        let mut bytes = orig.clone();
        for _ in 0..1 + next() % 4 {
            let i = (next() as usize) % header_end;
            bytes[i] = next() as u8;
        }
        let path = scratch.file("fuzz", &bytes);
        if let Ok(g) = GgufFile::open(&path) {
            for name in g.tensor_names() {
                let _ = g.tensor_f32(&name);
            }
        }
    }
}

/// The block formats decode steps multiply as stored unpack to the same weights as the
/// reader's dequantisation (gguf-py's values, checked above).
#[test]
fn quantized_matrices_unpack_like_the_dequantiser() {
    use cielr_planner::quant::QuantMatrix;
    let g = GgufFile::open(&fixture("gguf_tiny.gguf")).unwrap();
    for name in [
        "quant.q8_0",
        "quant.q4_0",
        "quant.q4_1",
        "quant.q5_0",
        "quant.q5_1",
        "quant.q4_k",
        "quant.q5_k",
        "quant.q6_k",
    ] {
        let (info, bytes) = g.tensor_bytes(name).unwrap();
        assert!(QuantMatrix::supports(info.dtype), "{name}");
        let (rows, cols) = (info.shape[0], info.shape[1]);
        let q = QuantMatrix::from_gguf(info.dtype, rows, cols, &bytes).unwrap();
        let (_, want) = g.tensor_f32(name).unwrap();
        let got = q.dequantize();
        assert_eq!(got.len(), want.len(), "{name}");
        // The same values as candle's dequantiser: equal weights (bit-identical but for the
        // sign of zero: Q4_0 forms `d * q - 8 d` where candle forms `(q - 8) * d`).
        for (i, (a, b)) in got.iter().zip(&want).enumerate() {
            assert!(a == b, "{name}, weight {i}: {a} vs {b}");
        }
    }
    // K-quant rows must be whole 256-weight super-blocks; other types stay f32.
    let info = g.tensor_info("quant.q4_k").unwrap();
    assert!(QuantMatrix::from_gguf(info.dtype, 1, 128, &[0; 72]).is_err());
    let info = g.tensor_info("quant.q2_k").unwrap();
    assert!(!QuantMatrix::supports(info.dtype));
}
