//! Block-quantised weight matrices multiplied as stored, for the decode step on the CPU.
//!
//! Decoding one token reads every weight of the model once, so on a CPU its speed is the
//! memory bandwidth divided by the bytes of weights. Dequantised to `f32`, SmolLM2-135M is
//! 538 MB per token; as stored in its GGUF file (Q4_1 layers, a Q8_0 embedding) it is 85 MB.
//! [`QuantMatrix`] keeps a GGUF matrix in its blocks (Q4_0, Q4_1 or Q8_0; 32 weights per
//! block with an `f32` scale and, for 4-bit blocks, an offset) and multiplies a few input
//! rows by it, dequantising inside the dot product.
//!
//! The activations stay `f32` (llama.cpp quantises them to 8 bits; we do not), so a product
//! equals the `f32` product with the dequantised matrix up to the order of the additions:
//! a block contributes `d * Σ q_i x_i + m * Σ x_i` for weights `w_i = d * q_i + m`.
//! On x86-64 with AVX2 and FMA (checked at run time) the inner loops are compiled for those
//! instructions; elsewhere the same code runs with baseline instructions.

use rayon::prelude::*;

use crate::gguf::GgufDType;

/// Weights per quantisation block (all formats here).
pub const BLOCK: usize = 32;

/// How the quantised values of a [`QuantMatrix`] are packed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QuantFormat {
    /// 4-bit values `q` in `0..16`, weight `d * q + m` (GGUF Q4_0 with `m = -8 d`, and Q4_1).
    Nibbles,
    /// Signed 8-bit values `q`, weight `d * q` (GGUF Q8_0).
    Bytes,
}

/// A `[rows, cols]` weight matrix (PyTorch's `[out, in]` layout) kept in 32-weight blocks
/// along each row.
#[derive(Debug, Clone)]
pub struct QuantMatrix {
    format: QuantFormat,
    rows: usize,
    cols: usize,
    /// One scale per block, row-major.
    scales: Vec<f32>,
    /// One offset per block (4-bit formats only).
    offsets: Vec<f32>,
    /// Packed values: 16 bytes per block for nibbles, 32 for bytes.
    values: Vec<u8>,
}

impl QuantMatrix {
    /// Whether [`QuantMatrix::from_gguf`] takes tensors stored as `dtype`.
    pub fn supports(dtype: GgufDType) -> bool {
        matches!(dtype, GgufDType::Q4_0 | GgufDType::Q4_1 | GgufDType::Q8_0)
    }

    /// Unpacks a GGUF tensor of `rows x cols` stored as `dtype` (`bytes` as in the file).
    /// Errors on another type, a width that is not a whole number of blocks or a byte count
    /// that does not match the shape.
    pub fn from_gguf(
        dtype: GgufDType,
        rows: usize,
        cols: usize,
        bytes: &[u8],
    ) -> Result<Self, String> {
        let (format, block_bytes) = match dtype {
            GgufDType::Q4_0 => (QuantFormat::Nibbles, 18),
            GgufDType::Q4_1 => (QuantFormat::Nibbles, 20),
            GgufDType::Q8_0 => (QuantFormat::Bytes, 34),
            other => return Err(format!("{other:?} is not a supported block format")),
        };
        if cols == 0 || !cols.is_multiple_of(BLOCK) {
            return Err(format!(
                "rows of {cols} weights are not whole blocks of {BLOCK}"
            ));
        }
        let blocks = rows
            .checked_mul(cols / BLOCK)
            .ok_or("the matrix is too large")?;
        if blocks.checked_mul(block_bytes) != Some(bytes.len()) {
            return Err(format!(
                "{} bytes do not hold {rows} x {cols} weights stored as {dtype:?}",
                bytes.len()
            ));
        }
        let f16 = |b: &[u8]| half::f16::from_bits(u16::from_le_bytes([b[0], b[1]])).to_f32();
        let mut scales = Vec::with_capacity(blocks);
        let mut offsets = Vec::new();
        let per_block = match format {
            QuantFormat::Nibbles => BLOCK / 2,
            QuantFormat::Bytes => BLOCK,
        };
        let mut values = Vec::with_capacity(blocks * per_block);
        for block in bytes.chunks_exact(block_bytes) {
            let d = f16(&block[0..2]);
            scales.push(d);
            match dtype {
                GgufDType::Q4_0 => {
                    offsets.push(-8.0 * d);
                    values.extend_from_slice(&block[2..]);
                }
                GgufDType::Q4_1 => {
                    offsets.push(f16(&block[2..4]));
                    values.extend_from_slice(&block[4..]);
                }
                _ => values.extend_from_slice(&block[2..]),
            }
        }
        Ok(QuantMatrix {
            format,
            rows,
            cols,
            scales,
            offsets,
            values,
        })
    }

    /// Number of rows (output features).
    pub fn rows(&self) -> usize {
        self.rows
    }

    /// Number of columns (input features).
    pub fn cols(&self) -> usize {
        self.cols
    }

    /// How the values are packed.
    pub fn format(&self) -> QuantFormat {
        self.format
    }

    /// Bytes of weight data one product reads (values, scales and offsets).
    pub fn weight_bytes(&self) -> usize {
        self.values.len() + 4 * (self.scales.len() + self.offsets.len())
    }

    /// The matrix with its rows reordered: row `i` of the result is row `order[i]` of this
    /// one. Errors unless `order` is a permutation of the rows.
    pub fn reorder_rows(&self, order: &[usize]) -> Result<Self, String> {
        let mut seen = vec![false; self.rows];
        if order.len() != self.rows
            || !order
                .iter()
                .all(|&r| r < self.rows && !std::mem::replace(&mut seen[r], true))
        {
            return Err(format!(
                "the order is not a permutation of {} rows",
                self.rows
            ));
        }
        let nb = self.cols / BLOCK;
        let vb = self.values.len() / self.rows.max(1);
        let mut out = QuantMatrix {
            scales: Vec::with_capacity(self.scales.len()),
            offsets: Vec::with_capacity(self.offsets.len()),
            values: Vec::with_capacity(self.values.len()),
            ..*self
        };
        for &r in order {
            out.scales
                .extend_from_slice(&self.scales[r * nb..(r + 1) * nb]);
            if !self.offsets.is_empty() {
                out.offsets
                    .extend_from_slice(&self.offsets[r * nb..(r + 1) * nb]);
            }
            out.values
                .extend_from_slice(&self.values[r * vb..(r + 1) * vb]);
        }
        Ok(out)
    }

    /// The weights dequantised to `f32`, `[rows, cols]` row-major (for tests and checks).
    pub fn dequantize(&self) -> Vec<f32> {
        let mut out = Vec::with_capacity(self.rows * self.cols);
        for (b, &d) in self.scales.iter().enumerate() {
            match self.format {
                QuantFormat::Nibbles => {
                    let q = &self.values[b * 16..(b + 1) * 16];
                    let m = self.offsets[b];
                    out.extend(q.iter().map(|&v| d * (v & 15) as f32 + m));
                    out.extend(q.iter().map(|&v| d * (v >> 4) as f32 + m));
                }
                QuantFormat::Bytes => {
                    let q = &self.values[b * 32..(b + 1) * 32];
                    out.extend(q.iter().map(|&v| d * (v as i8) as f32));
                }
            }
        }
        out
    }

    /// `y = x · Wᵀ` for `x` of `m` rows of `cols` values (row-major); returns `m` rows of
    /// `rows` values. Rows of the matrix are spread over rayon's threads.
    ///
    /// # Errors
    /// When `x.len()` is not a multiple of `cols`.
    pub fn matmul(&self, x: &[f32]) -> Result<Vec<f32>, String> {
        if !x.len().is_multiple_of(self.cols) {
            return Err(format!(
                "an input of {} values is not whole rows of {}",
                x.len(),
                self.cols
            ));
        }
        let m = x.len() / self.cols;
        let nb = self.cols / BLOCK;
        // Sum of each input block, for the offsets' term.
        let sums: Vec<f32> = x.chunks_exact(BLOCK).map(|c| c.iter().sum()).collect();
        // Output transposed ([rows, m]) so that each task writes one contiguous chunk.
        let mut yt = vec![0f32; self.rows * m];
        let rows_per_task = (self.rows / (4 * rayon::current_num_threads().max(1))).clamp(8, 256);
        yt.par_chunks_mut(rows_per_task * m)
            .enumerate()
            .for_each(|(task, out)| {
                let first = task * rows_per_task;
                for (i, y) in out.chunks_exact_mut(m).enumerate() {
                    let r = first + i;
                    for (j, yj) in y.iter_mut().enumerate() {
                        let xj = &x[j * self.cols..(j + 1) * self.cols];
                        let sj = &sums[j * nb..(j + 1) * nb];
                        *yj = self.row_dot(r, xj, sj);
                    }
                }
            });
        if m == 1 {
            return Ok(yt);
        }
        let mut y = vec![0f32; m * self.rows];
        for r in 0..self.rows {
            for j in 0..m {
                y[j * self.rows + r] = yt[r * m + j];
            }
        }
        Ok(y)
    }

    /// Dot product of row `r` with `x` (`cols` values; `sums` its per-block sums).
    fn row_dot(&self, r: usize, x: &[f32], sums: &[f32]) -> f32 {
        let nb = self.cols / BLOCK;
        let blocks = r * nb..(r + 1) * nb;
        let scales = &self.scales[blocks.clone()];
        match self.format {
            QuantFormat::Nibbles => {
                let values = &self.values[blocks.start * 16..blocks.end * 16];
                let offsets = &self.offsets[blocks];
                dispatch::nibble_dot(values, scales, offsets, x, sums)
            }
            QuantFormat::Bytes => {
                let values = &self.values[blocks.start * 32..blocks.end * 32];
                dispatch::byte_dot(values, scales, x)
            }
        }
    }
}

/// `a * b + c`, fused where the instructions exist (`FMA`), else two roundings.
#[inline(always)]
fn madd<const FMA: bool>(a: f32, b: f32, c: f32) -> f32 {
    if FMA {
        a.mul_add(b, c)
    } else {
        a * b + c
    }
}

/// One row of 4-bit blocks times `x`: `Σ_b d_b Σ_i q_i x_i + m_b Σ_i x_i`.
#[inline(always)]
fn nibble_dot_body<const FMA: bool>(
    values: &[u8],
    scales: &[f32],
    offsets: &[f32],
    x: &[f32],
    sums: &[f32],
) -> f32 {
    // Fixed-size views let the compiler drop bounds checks and vectorise the block loops.
    let (values, _) = values.as_chunks::<16>();
    let (x, _) = x.as_chunks::<BLOCK>();
    let mut acc = [0f32; 16];
    let mut offset_acc = 0f32;
    for (((q, &d), &m), (xb, &s)) in values
        .iter()
        .zip(scales)
        .zip(offsets)
        .zip(x.iter().zip(sums))
    {
        // Low nibbles are weights 0..16 of the block, high nibbles 16..32 (GGML's layout).
        for i in 0..16 {
            let lo = (q[i] & 15) as f32;
            let hi = (q[i] >> 4) as f32;
            let block = madd::<FMA>(hi, xb[i + 16], lo * xb[i]);
            acc[i] = madd::<FMA>(d, block, acc[i]);
        }
        offset_acc = madd::<FMA>(m, s, offset_acc);
    }
    acc.iter().sum::<f32>() + offset_acc
}

/// One row of 8-bit blocks times `x`: `Σ_b d_b Σ_i q_i x_i`.
#[inline(always)]
fn byte_dot_body<const FMA: bool>(values: &[u8], scales: &[f32], x: &[f32]) -> f32 {
    let (values, _) = values.as_chunks::<BLOCK>();
    let (x, _) = x.as_chunks::<BLOCK>();
    let mut acc = [0f32; BLOCK];
    for ((q, &d), xb) in values.iter().zip(scales).zip(x) {
        for i in 0..BLOCK {
            acc[i] = madd::<FMA>(d, (q[i] as i8) as f32 * xb[i], acc[i]);
        }
    }
    acc.iter().sum()
}

/// The dot products compiled twice: for AVX2 + FMA (chosen at run time when the CPU has
/// them) and for the baseline instruction set.
mod dispatch {
    use super::{byte_dot_body, nibble_dot_body};

    #[cfg(target_arch = "x86_64")]
    fn has_avx2_fma() -> bool {
        use std::sync::OnceLock;
        static HAS: OnceLock<bool> = OnceLock::new();
        *HAS.get_or_init(|| {
            std::arch::is_x86_feature_detected!("avx2")
                && std::arch::is_x86_feature_detected!("fma")
        })
    }

    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2,fma")]
    fn nibble_dot_avx2(v: &[u8], d: &[f32], m: &[f32], x: &[f32], s: &[f32]) -> f32 {
        nibble_dot_body::<true>(v, d, m, x, s)
    }

    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2,fma")]
    fn byte_dot_avx2(v: &[u8], d: &[f32], x: &[f32]) -> f32 {
        byte_dot_body::<true>(v, d, x)
    }

    pub(super) fn nibble_dot(v: &[u8], d: &[f32], m: &[f32], x: &[f32], s: &[f32]) -> f32 {
        #[cfg(target_arch = "x86_64")]
        if has_avx2_fma() {
            // SAFETY: the CPU was checked for AVX2 and FMA just above.
            return unsafe { nibble_dot_avx2(v, d, m, x, s) };
        }
        nibble_dot_body::<false>(v, d, m, x, s)
    }

    pub(super) fn byte_dot(v: &[u8], d: &[f32], x: &[f32]) -> f32 {
        #[cfg(target_arch = "x86_64")]
        if has_avx2_fma() {
            // SAFETY: the CPU was checked for AVX2 and FMA just above.
            return unsafe { byte_dot_avx2(v, d, x) };
        }
        byte_dot_body::<false>(v, d, x)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A deterministic pseudo-random byte stream.
    fn bytes(n: usize, seed: u64) -> Vec<u8> {
        let mut s = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (0..n)
            .map(|_| {
                s = s.wrapping_mul(6364136223846793005).wrapping_add(1);
                (s >> 33) as u8
            })
            .collect()
    }

    /// GGUF blocks with sane f16 scales (`0.01..0.02`) and offsets (`-0.1..0`).
    fn gguf_blocks(dtype: GgufDType, blocks: usize, seed: u64) -> Vec<u8> {
        let (size, halves) = match dtype {
            GgufDType::Q4_0 => (18, 1),
            GgufDType::Q4_1 => (20, 2),
            _ => (34, 1),
        };
        let mut raw = bytes(blocks * size, seed);
        for (i, block) in raw.chunks_exact_mut(size).enumerate() {
            let d = half::f16::from_f32(0.01 + (i % 7) as f32 * 0.0015);
            block[0..2].copy_from_slice(&d.to_bits().to_le_bytes());
            if halves == 2 {
                let m = half::f16::from_f32(-0.1 + (i % 5) as f32 * 0.02);
                block[2..4].copy_from_slice(&m.to_bits().to_le_bytes());
            }
        }
        raw
    }

    fn reference(w: &[f32], x: &[f32], rows: usize, cols: usize) -> Vec<f32> {
        let m = x.len() / cols;
        let mut y = vec![0f64; m * rows];
        for j in 0..m {
            for r in 0..rows {
                y[j * rows + r] = (0..cols)
                    .map(|c| w[r * cols + c] as f64 * x[j * cols + c] as f64)
                    .sum();
            }
        }
        y.into_iter().map(|v| v as f32).collect()
    }

    #[test]
    fn products_match_the_dequantised_matrix() {
        let (rows, cols) = (37, 96);
        for dtype in [GgufDType::Q4_0, GgufDType::Q4_1, GgufDType::Q8_0] {
            let raw = gguf_blocks(dtype, rows * cols / BLOCK, 7);
            let q = QuantMatrix::from_gguf(dtype, rows, cols, &raw).unwrap();
            let w = q.dequantize();
            for m in [1, 3] {
                let x: Vec<f32> = bytes(m * cols, 11 + m as u64)
                    .iter()
                    .map(|&b| b as f32 / 64.0 - 2.0)
                    .collect();
                let y = q.matmul(&x).unwrap();
                let want = reference(&w, &x, rows, cols);
                let scale = want.iter().fold(0f32, |a, v| a.max(v.abs()));
                let err = y
                    .iter()
                    .zip(&want)
                    .fold(0f32, |a, (p, r)| a.max((p - r).abs()));
                assert!(
                    err <= 1e-5 * scale.max(1.0),
                    "{dtype:?}, m = {m}: max abs error {err} (scale {scale})"
                );
            }
        }
    }

    #[test]
    fn dequantisation_matches_the_gguf_definition() {
        // Q4_1 block: d = 0.5, m = -1, value bytes 0x21 -> low 1, high 2.
        let mut block = vec![0u8; 20];
        block[0..2].copy_from_slice(&half::f16::from_f32(0.5).to_bits().to_le_bytes());
        block[2..4].copy_from_slice(&half::f16::from_f32(-1.0).to_bits().to_le_bytes());
        block[4..].fill(0x21);
        let q = QuantMatrix::from_gguf(GgufDType::Q4_1, 1, 32, &block).unwrap();
        let w = q.dequantize();
        assert_eq!(&w[..16], &[-0.5; 16]);
        assert_eq!(&w[16..], &[0.0; 16]);
        // Q4_0: weight d * (q - 8).
        let mut block = vec![0x9Fu8; 18];
        block[0..2].copy_from_slice(&half::f16::from_f32(2.0).to_bits().to_le_bytes());
        let w = QuantMatrix::from_gguf(GgufDType::Q4_0, 1, 32, &block)
            .unwrap()
            .dequantize();
        assert_eq!((w[0], w[16]), (14.0, 2.0));
        // Q8_0: weight d * q with q signed.
        let mut block = vec![0xFFu8; 34];
        block[0..2].copy_from_slice(&half::f16::from_f32(0.25).to_bits().to_le_bytes());
        let w = QuantMatrix::from_gguf(GgufDType::Q8_0, 1, 32, &block)
            .unwrap()
            .dequantize();
        assert_eq!(w, vec![-0.25; 32]);
    }

    #[test]
    fn bad_shapes_and_types_are_errors() {
        let raw = gguf_blocks(GgufDType::Q8_0, 4, 1);
        assert!(QuantMatrix::from_gguf(GgufDType::Q8_0, 2, 64, &raw).is_ok());
        assert!(QuantMatrix::from_gguf(GgufDType::Q8_0, 3, 64, &raw).is_err());
        assert!(QuantMatrix::from_gguf(GgufDType::Q8_0, 4, 48, &raw).is_err());
        assert!(QuantMatrix::from_gguf(GgufDType::Q8_0, usize::MAX, 64, &raw).is_err());
        assert!(QuantMatrix::from_gguf(GgufDType::Q6_K, 2, 64, &raw).is_err());
        let q = QuantMatrix::from_gguf(GgufDType::Q8_0, 2, 64, &raw).unwrap();
        assert!(q.matmul(&[0.0; 65]).is_err());
        assert!(q.reorder_rows(&[0, 0]).is_err());
        assert!(q.reorder_rows(&[1]).is_err());
    }

    #[test]
    fn reordering_rows_moves_whole_rows() {
        let (rows, cols) = (4, 64);
        for dtype in [GgufDType::Q4_1, GgufDType::Q8_0] {
            let raw = gguf_blocks(dtype, rows * cols / BLOCK, 3);
            let q = QuantMatrix::from_gguf(dtype, rows, cols, &raw).unwrap();
            let order = [2, 0, 3, 1];
            let w = q.dequantize();
            let p = q.reorder_rows(&order).unwrap().dequantize();
            for (i, &r) in order.iter().enumerate() {
                assert_eq!(p[i * cols..(i + 1) * cols], w[r * cols..(r + 1) * cols]);
            }
        }
    }
}
