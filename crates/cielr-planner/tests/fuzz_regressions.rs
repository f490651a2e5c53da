//! Hostile GGUF files (issue 9): every size the header declares (metadata strings and arrays,
//! tensor counts, tensor extents) is checked against the file's length before anything is
//! allocated from it, and malformed files fail with an error naming the file. A counting
//! allocator checks the "before anything is allocated" part.

use cielr_planner::gguf::{GgufDType, GgufFile};
use cielr_planner::quant::QuantMatrix;

#[path = "../../cielr-core/tests/support/fuzz_support.rs"]
mod fuzz_support;

use fuzz_support::{fixtures, peak_during, scratch, MIB};

/// A GGUF file under construction (version 3, little endian).
struct Gguf {
    kv: Vec<u8>,
    n_kv: u64,
    tensors: Vec<u8>,
    n_tensors: u64,
    data: Vec<u8>,
}

impl Gguf {
    fn new() -> Self {
        Gguf {
            kv: Vec::new(),
            n_kv: 0,
            tensors: Vec::new(),
            n_tensors: 0,
            data: Vec::new(),
        }
    }

    fn string(out: &mut Vec<u8>, s: &str) {
        out.extend_from_slice(&(s.len() as u64).to_le_bytes());
        out.extend_from_slice(s.as_bytes());
    }

    /// A metadata entry with raw value bytes after the type.
    fn kv_raw(mut self, key: &str, ty: u32, value: &[u8]) -> Self {
        Self::string(&mut self.kv, key);
        self.kv.extend_from_slice(&ty.to_le_bytes());
        self.kv.extend_from_slice(value);
        self.n_kv += 1;
        self
    }

    fn tensor(mut self, name: &str, ne: &[u64], ty: u32, offset: u64) -> Self {
        Self::string(&mut self.tensors, name);
        self.tensors
            .extend_from_slice(&(ne.len() as u32).to_le_bytes());
        for d in ne {
            self.tensors.extend_from_slice(&d.to_le_bytes());
        }
        self.tensors.extend_from_slice(&ty.to_le_bytes());
        self.tensors.extend_from_slice(&offset.to_le_bytes());
        self.n_tensors += 1;
        self
    }

    fn data(mut self, bytes: &[u8]) -> Self {
        self.data.extend_from_slice(bytes);
        self
    }

    fn bytes_with_counts(&self, n_tensors: u64, n_kv: u64) -> Vec<u8> {
        let mut b = b"GGUF".to_vec();
        b.extend_from_slice(&3u32.to_le_bytes());
        b.extend_from_slice(&n_tensors.to_le_bytes());
        b.extend_from_slice(&n_kv.to_le_bytes());
        b.extend_from_slice(&self.kv);
        b.extend_from_slice(&self.tensors);
        while !b.len().is_multiple_of(32) {
            b.push(0);
        }
        b.extend_from_slice(&self.data);
        b
    }

    fn bytes(&self) -> Vec<u8> {
        self.bytes_with_counts(self.n_tensors, self.n_kv)
    }
}

/// Opens `bytes` as `name`, expecting an error that names the file and contains `expected`,
/// with no allocation of a mebibyte or more on the way.
fn refused(name: &str, bytes: &[u8], expected: &str) {
    let path = scratch(name, bytes);
    let (result, peak) = peak_during(|| GgufFile::open(&path));
    let msg = result.expect_err(name).to_string();
    assert!(
        msg.contains(name),
        "{name}: the error does not name the file: {msg}"
    );
    assert!(msg.contains(expected), "{name}: {msg}");
    assert!(
        peak < MIB,
        "{name}: {peak} bytes allocated for a refused file"
    );
}

#[test]
fn a_well_formed_file_reads_back() {
    // Guards the builder below: the hostile files differ from this one in one field each.
    let values: Vec<u8> = [1.5f32, -2.0]
        .iter()
        .flat_map(|v| v.to_le_bytes())
        .collect();
    let bytes = Gguf::new()
        .kv_raw("general.name", 8, &{
            let mut v = Vec::new();
            Gguf::string(&mut v, "tiny");
            v
        })
        .tensor("w", &[2], 0, 0)
        .data(&values)
        .bytes();
    let f = GgufFile::open(&scratch("ok.gguf", &bytes)).unwrap();
    assert_eq!(f.get_str("general.name"), Some("tiny"));
    assert_eq!(f.tensor_f32("w").unwrap(), (vec![2], vec![1.5, -2.0]));
}

#[test]
fn tensor_extents_are_checked_against_the_file_length() {
    // 2^40 f32 values declared in a file of a hundred bytes.
    let b = Gguf::new()
        .tensor("huge", &[1 << 20, 1 << 20], 0, 0)
        .data(&[0; 8])
        .bytes();
    refused("huge-tensor.gguf", &b, "past the end of the file");
    // An offset far past the end.
    let b = Gguf::new()
        .tensor("w", &[2], 0, 1 << 40)
        .data(&[0; 8])
        .bytes();
    refused("far-offset.gguf", &b, "past the end of the file");
    // Offsets that overflow u64.
    let b = Gguf::new()
        .tensor("w", &[2], 0, u64::MAX - 31)
        .data(&[0; 8])
        .bytes();
    refused("overflow-offset.gguf", &b, "overflows");
    // Element counts that overflow.
    let b = Gguf::new().tensor("w", &[u64::MAX, 3], 0, 0).bytes();
    refused("overflow-shape.gguf", &b, "too many elements");
    // A quantised row that is not a whole number of blocks, an unknown type, a bad offset.
    let b = Gguf::new().tensor("w", &[33], 2, 0).data(&[0; 64]).bytes();
    refused("partial-block.gguf", &b, "not a multiple of the block size");
    let b = Gguf::new().tensor("w", &[2], 9999, 0).data(&[0; 8]).bytes();
    refused("unknown-type.gguf", &b, "unknown GGML type id 9999");
    let b = Gguf::new().tensor("w", &[2], 0, 3).data(&[0; 64]).bytes();
    refused("misaligned.gguf", &b, "alignment");
    let b = Gguf::new()
        .tensor("w", &[1, 1, 1, 1, 1], 0, 0)
        .data(&[0; 8])
        .bytes();
    refused("rank-5.gguf", &b, "dimensions");
    let b = Gguf::new()
        .tensor("w", &[2], 0, 0)
        .tensor("w", &[2], 0, 0)
        .data(&[0; 8])
        .bytes();
    refused("twice.gguf", &b, "listed twice");
}

#[test]
fn declared_counts_and_lengths_are_checked_before_allocating() {
    // 2^62 tensors and 2^62 metadata entries in a 24-byte file.
    let b = Gguf::new().bytes_with_counts(1 << 62, 0);
    refused(
        "many-tensors.gguf",
        &b,
        "declares 4611686018427387904 tensors",
    );
    let b = Gguf::new().bytes_with_counts(0, 1 << 62);
    refused("many-kv.gguf", &b, "4611686018427387904 metadata entries");
    let b = Gguf::new().bytes_with_counts(u64::MAX, u64::MAX);
    refused("max-counts.gguf", &b, "metadata entries");
    // A key whose length is 2^60 bytes.
    let mut b = Gguf::new().bytes_with_counts(0, 1)[..24].to_vec();
    b.extend_from_slice(&(1u64 << 60).to_le_bytes());
    b.extend_from_slice(&[0; 16]);
    refused("long-key.gguf", &b, "remain in the file");
    // A string value of 2^60 bytes; an array of 2^40 u32; arrays nested too deep.
    let mut v = (1u64 << 60).to_le_bytes().to_vec();
    v.extend_from_slice(&[0; 8]);
    refused(
        "long-string.gguf",
        &Gguf::new().kv_raw("k", 8, &v).bytes(),
        "remain in the file",
    );
    let mut v = 4u32.to_le_bytes().to_vec();
    v.extend_from_slice(&(1u64 << 40).to_le_bytes());
    refused(
        "long-array.gguf",
        &Gguf::new().kv_raw("k", 9, &v).bytes(),
        "array of 1099511627776",
    );
    let mut v = Vec::new();
    for _ in 0..12 {
        v.extend_from_slice(&9u32.to_le_bytes());
        v.extend_from_slice(&1u64.to_le_bytes());
    }
    v.extend_from_slice(&[0; 64]);
    let b = Gguf::new().kv_raw("k", 9, &v).bytes();
    refused("deep-array.gguf", &b, "nested deeper");
    // Unknown value type, invalid bool, bad alignment, bad magic and version.
    refused(
        "bad-type.gguf",
        &Gguf::new().kv_raw("k", 77, &[0; 8]).bytes(),
        "unknown value type 77",
    );
    refused(
        "bad-bool.gguf",
        &Gguf::new().kv_raw("k", 7, &[2]).bytes(),
        "invalid bool",
    );
    let b = Gguf::new()
        .kv_raw("general.alignment", 4, &3u32.to_le_bytes())
        .bytes();
    refused("bad-alignment.gguf", &b, "general.alignment");
    let mut b = Gguf::new().bytes();
    b[0] = b'X';
    refused("bad-magic.gguf", &b, "not a GGUF file");
    let mut b = Gguf::new().bytes();
    b[4] = 9;
    refused("bad-version.gguf", &b, "version 9");
    refused("empty.gguf", &[], "remain in the file");
}

#[test]
fn a_file_truncated_after_opening_fails_when_read() {
    let values = [0u8; 64];
    let bytes = Gguf::new().tensor("w", &[16], 0, 0).data(&values).bytes();
    let path = scratch("shrinks.gguf", &bytes);
    let f = GgufFile::open(&path).unwrap();
    std::fs::write(&path, &bytes[..bytes.len() - 10]).unwrap();
    let msg = f.tensor_f32("w").unwrap_err().to_string();
    assert!(msg.contains("truncated"), "{msg}");
}

/// Every input the `gguf` fuzz target found (fuzz/, `tools/fuzz/run.sh`) opens and reads
/// every tensor without a panic, as the target does; matrices in a block format unpack as
/// stored (`QuantMatrix`) without a large allocation and multiply one input row.
#[test]
fn gguf_fuzz_findings() {
    for (path, _) in fixtures("gguf") {
        if let Ok(f) = GgufFile::open(&path) {
            let _ = f.get_str_array("tokenizer.ggml.tokens");
            for name in f.tensor_names() {
                if let Ok((shape, values)) = f.tensor_f32(&name) {
                    assert_eq!(shape.iter().product::<usize>(), values.len());
                    check_as_stored(&f, &name, &shape, &values);
                }
                let _ = f.tensor_info(&name).unwrap().elem_count();
            }
        }
    }
}

/// What the `gguf` target does with a matrix stored in a block format.
fn check_as_stored(f: &GgufFile, name: &str, shape: &[usize], values: &[f32]) {
    let (Ok((info, bytes)), &[rows, cols]) = (f.tensor_bytes(name), shape) else {
        return;
    };
    if !QuantMatrix::supports(info.dtype) {
        return;
    }
    let (q, peak) = peak_during(|| QuantMatrix::from_gguf(info.dtype, rows, cols, &bytes));
    assert!(peak < 64 * MIB, "{name}: {peak} bytes allocated");
    let Ok(q) = q else {
        return;
    };
    let same = |a: f32, b: f32| a == b || (a.is_nan() && b.is_nan());
    assert!(q.dequantize().iter().zip(values).all(|(&a, &b)| same(a, b)));
    assert_eq!(q.matmul(&vec![1.0; cols]).unwrap().len(), rows);
}

/// Found by fuzzing: a Q4_0 block with an infinite scale dequantises to `(q - 8) * inf`
/// (±inf, NaN at q = 8) but the folded product `inf * q - 8 inf` to NaN everywhere; such
/// corrupt blocks are refused when kept as stored.
#[test]
fn a_block_with_an_infinite_scale_is_refused() {
    let mut block = vec![0x11u8; 18];
    block[0..2].copy_from_slice(&0x7c00u16.to_le_bytes()); // f16 +inf
    let e = QuantMatrix::from_gguf(GgufDType::Q4_0, 1, 32, &block).unwrap_err();
    assert!(e.contains("not finite"), "{e}");
    block[0..2].copy_from_slice(&0x3c00u16.to_le_bytes()); // f16 1.0
    assert!(QuantMatrix::from_gguf(GgufDType::Q4_0, 1, 32, &block).is_ok());
}

/// Found by fuzzing: a Q4_K matrix of 0 x 2^41 passed every check (no bytes to hold) and the
/// caller then sized an input row by its width. Empty matrices are refused.
#[test]
fn an_empty_block_matrix_is_refused() {
    let e = QuantMatrix::from_gguf(GgufDType::Q4_K, 0, 1 << 41, &[]).unwrap_err();
    assert!(e.contains("empty matrix"), "{e}");
}

#[test]
fn a_zero_dimension_does_not_hide_an_overflowing_shape() {
    // Found by fuzzing: [0, 2^40, 2^40] has no elements, but multiplying the dimensions in
    // PyTorch order overflowed.
    let b = Gguf::new()
        .tensor("w", &[0, 1 << 40, 1 << 40], 0, 0)
        .bytes();
    refused("zero-dim.gguf", &b, "too many elements");
    // A zero dimension with modest others is a valid empty tensor.
    let b = Gguf::new().tensor("w", &[0, 7], 0, 0).bytes();
    let f = GgufFile::open(&scratch("empty-tensor.gguf", &b)).unwrap();
    assert_eq!(f.tensor_info("w").unwrap().elem_count(), 0);
    assert_eq!(f.tensor_f32("w").unwrap(), (vec![7, 0], vec![]));
}
