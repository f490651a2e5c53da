//! Block-quantised weight matrices multiplied as stored, for the decode step on the CPU.
//!
//! Decoding one token reads every weight of the model once, so on a CPU its speed is the
//! memory bandwidth divided by the bytes of weights. Dequantised to `f32`, SmolLM2-135M is
//! 538 MB per token; as stored in its GGUF file (Q4_1 layers, a Q8_0 embedding) it is 85 MB.
//! [`QuantMatrix`] keeps a GGUF matrix in 32-weight blocks and multiplies a few input rows
//! by it, dequantising inside the dot product. Two layouts cover the GGUF types:
//!
//! - 4-bit values with an `f32` scale and offset per block, `w = d * q + m` (Q4_0, Q4_1, and
//!   Q4_K, whose 256-weight super-blocks are repacked at load time: sub-block `j` gets the
//!   scale `d * sc_j` and the offset `-(dmin * m_j)`);
//! - 8-bit values with an `f32` scale per 32 weights (Q8_0, Q5_0, and with an offset per
//!   block Q5_1 and Q5_K) or per 16 weights (Q6_K, `w = (d * sc) * (q - 32)`).
//!
//! Scales and offsets are computed at load time exactly as candle's dequantiser computes
//! them, so [`QuantMatrix::dequantize`] gives the same values as it (bit for bit but for the
//! sign of zero weights in Q4_0).
//!
//! The activations stay `f32` (llama.cpp quantises them to 8 bits; we do not), so a product
//! equals the `f32` product with the dequantised matrix up to rounding order: a block
//! contributes `d * Σ q_i x_i + m * Σ x_i` for weights `w_i = d * q_i + m`.
//! On x86-64 with AVX2 and FMA (checked at run time) the inner loops are compiled for those
//! instructions; elsewhere the same code runs with baseline instructions.

use rayon::prelude::*;

use crate::gguf::GgufDType;

/// Weights per block of a [`QuantMatrix`] (one or two scales per block, and an offset for
/// formats that have one).
pub const BLOCK: usize = 32;

/// Weights per K-quant super-block (Q4_K, Q5_K, Q6_K).
const SUPER_BLOCK: usize = 256;

/// How the quantised values of a [`QuantMatrix`] are packed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QuantFormat {
    /// 4-bit values `q` in `0..16`, weight `d * q + m`, one scale and offset per block
    /// (GGUF Q4_0 with `m = -8 d`, Q4_1, and Q4_K's 32-weight sub-blocks).
    Nibbles,
    /// Signed 8-bit values `q`, weight `d * q` (GGUF Q8_0, Q5_0 and Q6_K), or `d * q + m`
    /// with an offset per block (Q5_1, Q5_K); one scale per 32 weights, or per 16 (Q6_K).
    Bytes,
}

/// A `[rows, cols]` weight matrix (PyTorch's `[out, in]` layout) kept in 32-weight blocks
/// along each row.
#[derive(Debug, Clone)]
pub struct QuantMatrix {
    format: QuantFormat,
    rows: usize,
    cols: usize,
    /// Weights per scale: [`BLOCK`], or 16 (Q6_K's sub-blocks; bytes only).
    group: usize,
    /// One scale per `group` weights, row-major.
    scales: Vec<f32>,
    /// One offset per block, or none (Q8_0, Q5_0, Q6_K).
    offsets: Vec<f32>,
    /// Packed values: 16 bytes per block for nibbles, 32 for bytes.
    values: Vec<u8>,
}

/// Reads a little-endian `f16` from the first two bytes of `b`, as `f32`.
fn f16(b: &[u8]) -> f32 {
    half::f16::from_bits(u16::from_le_bytes([b[0], b[1]])).to_f32()
}

/// The 6-bit scale and minimum of sub-block `j` (`0..8`) from a Q4_K / Q5_K super-block's
/// 12 packed bytes: sub-blocks 0..4 use the low 6 bits of bytes `j` and `j + 4`; 4..8 take
/// their low 4 bits from byte `j + 4` and their high 2 bits from the top of bytes `j - 4`
/// and `j`.
fn k_scale_min(j: usize, s: &[u8]) -> (u8, u8) {
    if j < 4 {
        (s[j] & 63, s[j + 4] & 63)
    } else {
        (
            (s[j + 4] & 15) | ((s[j - 4] >> 6) << 4),
            (s[j + 4] >> 4) | ((s[j] >> 6) << 4),
        )
    }
}

/// Unpacked GGUF blocks on their way into a [`QuantMatrix`]: one byte per weight (`q` as
/// `i8`, or `0..16` for nibble formats), with the scales and offsets.
struct Unpacked {
    scales: Vec<f32>,
    offsets: Vec<f32>,
    q: Vec<u8>,
}

impl Unpacked {
    /// Q4_0 (`m = -8 d`) and Q4_1: f16 scale [and minimum], 16 bytes of nibbles.
    fn q4(&mut self, b: &[u8], with_min: bool) {
        let d = f16(&b[0..2]);
        let (m, qs) = if with_min {
            (f16(&b[2..4]), &b[4..20])
        } else {
            (-8.0 * d, &b[2..18])
        };
        self.scales.push(d);
        self.offsets.push(m);
        self.q.extend(qs.iter().map(|v| v & 15));
        self.q.extend(qs.iter().map(|v| v >> 4));
    }

    /// Q5_0 (`q - 16`, no offset) and Q5_1 (`q`, f16 minimum): f16 scale, 32 high bits,
    /// 16 bytes of low nibbles.
    fn q5(&mut self, b: &[u8], with_min: bool) {
        let d = f16(&b[0..2]);
        let (qh, qs) = if with_min {
            self.offsets.push(f16(&b[2..4]));
            (&b[4..8], &b[8..24])
        } else {
            (&b[2..6], &b[6..22])
        };
        let qh = u32::from_le_bytes([qh[0], qh[1], qh[2], qh[3]]);
        let shift = if with_min { 0 } else { 16 };
        self.scales.push(d);
        let high = |i: usize| (((qh >> i) & 1) << 4) as u8;
        let lo = qs.iter().enumerate().map(|(i, v)| (v & 15) | high(i));
        let hi = qs.iter().enumerate().map(|(i, v)| (v >> 4) | high(i + 16));
        for v in lo.chain(hi) {
            self.q.push((v as i8 - shift) as u8);
        }
    }

    /// Q4_K (`high` empty) and Q5_K: f16 `d` and `dmin`, 12 bytes of 6-bit scales and
    /// minimums, for Q5_K 32 bytes of high bits, then 128 bytes of nibbles (each 32 bytes
    /// hold two sub-blocks: low nibbles, then high nibbles).
    fn k4_k5(&mut self, b: &[u8], five: bool) {
        let d = f16(&b[0..2]);
        let dmin = f16(&b[2..4]);
        let packed = &b[4..16];
        let (qh, qs) = if five {
            (&b[16..48], &b[48..176])
        } else {
            (&b[0..0], &b[16..144])
        };
        for (chunk, qs) in qs.chunks_exact(32).enumerate() {
            for half in 0..2 {
                let j = 2 * chunk + half;
                let (sc, m) = k_scale_min(j, packed);
                // The products exactly as candle's dequantiser forms them.
                self.scales.push(d * sc as f32);
                self.offsets.push(-(dmin * m as f32));
                let bit = 1u8 << j;
                for (l, &v) in qs.iter().enumerate() {
                    let nibble = if half == 0 { v & 15 } else { v >> 4 };
                    let high = if five && qh[l] & bit != 0 { 16 } else { 0 };
                    self.q.push(nibble | high);
                }
            }
        }
    }

    /// Q6_K: 128 bytes of low nibbles, 64 of high 2-bit pairs, 16 `i8` scales (one per 16
    /// weights), f16 `d`; weight `(d * sc) * (q - 32)`.
    fn k6(&mut self, b: &[u8]) {
        let (ql, qh, sc) = (&b[0..128], &b[128..192], &b[192..208]);
        let d = f16(&b[208..210]);
        self.scales.extend(sc.iter().map(|&s| d * (s as i8) as f32));
        let mut q = [0u8; SUPER_BLOCK];
        for half in 0..2 {
            let (ql, qh) = (&ql[64 * half..], &qh[32 * half..]);
            let q = &mut q[128 * half..];
            for l in 0..32 {
                let six =
                    |low: u8, k: usize| ((low | (((qh[l] >> (2 * k)) & 3) << 4)) as i8 - 32) as u8;
                q[l] = six(ql[l] & 15, 0);
                q[l + 32] = six(ql[l + 32] & 15, 1);
                q[l + 64] = six(ql[l] >> 4, 2);
                q[l + 96] = six(ql[l + 32] >> 4, 3);
            }
        }
        self.q.extend_from_slice(&q);
    }
}

impl QuantMatrix {
    /// Whether [`QuantMatrix::from_gguf`] takes tensors stored as `dtype`.
    pub fn supports(dtype: GgufDType) -> bool {
        matches!(
            dtype,
            GgufDType::Q4_0
                | GgufDType::Q4_1
                | GgufDType::Q5_0
                | GgufDType::Q5_1
                | GgufDType::Q8_0
                | GgufDType::Q4_K
                | GgufDType::Q5_K
                | GgufDType::Q6_K
        )
    }

    /// Unpacks a GGUF tensor of `rows x cols` stored as `dtype` (`bytes` as in the file).
    /// Errors on another type, a width that is not a whole number of blocks (32 weights, or
    /// 256 for K-quants) or a byte count that does not match the shape.
    pub fn from_gguf(
        dtype: GgufDType,
        rows: usize,
        cols: usize,
        bytes: &[u8],
    ) -> Result<Self, String> {
        use GgufDType as T;
        let (format, block_weights, block_bytes) = match dtype {
            T::Q4_0 => (QuantFormat::Nibbles, BLOCK, 18),
            T::Q4_1 => (QuantFormat::Nibbles, BLOCK, 20),
            T::Q5_0 => (QuantFormat::Bytes, BLOCK, 22),
            T::Q5_1 => (QuantFormat::Bytes, BLOCK, 24),
            T::Q8_0 => (QuantFormat::Bytes, BLOCK, 34),
            T::Q4_K => (QuantFormat::Nibbles, SUPER_BLOCK, 144),
            T::Q5_K => (QuantFormat::Bytes, SUPER_BLOCK, 176),
            T::Q6_K => (QuantFormat::Bytes, SUPER_BLOCK, 210),
            other => return Err(format!("{other:?} is not a supported block format")),
        };
        if rows == 0 {
            // An empty matrix has nothing to multiply, and its width is unchecked by the
            // file's length (found by fuzzing: 0 x 2^41).
            return Err(format!("an empty matrix ({rows} x {cols})"));
        }
        if cols == 0 || !cols.is_multiple_of(block_weights) {
            return Err(format!(
                "rows of {cols} weights are not whole {dtype:?} blocks of {block_weights}"
            ));
        }
        let blocks = rows
            .checked_mul(cols / block_weights)
            .ok_or("the matrix is too large")?;
        if blocks.checked_mul(block_bytes) != Some(bytes.len()) {
            return Err(format!(
                "{} bytes do not hold {rows} x {cols} weights stored as {dtype:?}",
                bytes.len()
            ));
        }
        let weights = blocks * block_weights;
        let group = if dtype == T::Q6_K { 16 } else { BLOCK };
        let with_offsets = !matches!(dtype, T::Q8_0 | T::Q5_0 | T::Q6_K);
        let mut u = Unpacked {
            scales: Vec::with_capacity(weights / group),
            offsets: Vec::with_capacity(if with_offsets { weights / BLOCK } else { 0 }),
            q: Vec::with_capacity(weights),
        };
        for b in bytes.chunks_exact(block_bytes) {
            match dtype {
                T::Q4_0 | T::Q4_1 => u.q4(b, dtype == T::Q4_1),
                T::Q5_0 | T::Q5_1 => u.q5(b, dtype == T::Q5_1),
                T::Q4_K | T::Q5_K => u.k4_k5(b, dtype == T::Q5_K),
                T::Q6_K => u.k6(b),
                _ => {
                    u.scales.push(f16(&b[0..2]));
                    u.q.extend_from_slice(&b[2..]);
                }
            }
        }
        // Real checkpoints have finite scales; an infinite or NaN one only comes from a
        // corrupt file, where the folded offsets (Q4_0: `d * q - 8 d`) would also give other
        // values than the dequantiser's `(q - 8) * d` (found by fuzzing).
        if let Some(i) = u
            .scales
            .iter()
            .chain(&u.offsets)
            .position(|v| !v.is_finite())
        {
            return Err(format!(
                "scale or offset {i} is not finite ({dtype:?} blocks): a corrupt tensor"
            ));
        }
        let values = match format {
            // Our nibble layout: byte i of a block holds weight i (low) and i + 16 (high).
            QuantFormat::Nibbles => {
                u.q.chunks_exact(BLOCK)
                    .flat_map(|q| (0..BLOCK / 2).map(move |i| q[i] | (q[i + BLOCK / 2] << 4)))
                    .collect()
            }
            QuantFormat::Bytes => u.q,
        };
        Ok(QuantMatrix {
            format,
            rows,
            cols,
            group,
            scales: u.scales,
            offsets: u.offsets,
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

    /// Weights per scale: [`BLOCK`], or 16 for Q6_K.
    pub fn scale_group(&self) -> usize {
        self.group
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
        let per_row = |len: usize| len / self.rows.max(1);
        let (sb, ob, vb) = (
            per_row(self.scales.len()),
            per_row(self.offsets.len()),
            per_row(self.values.len()),
        );
        let mut out = QuantMatrix {
            scales: Vec::with_capacity(self.scales.len()),
            offsets: Vec::with_capacity(self.offsets.len()),
            values: Vec::with_capacity(self.values.len()),
            ..*self
        };
        for &r in order {
            out.scales
                .extend_from_slice(&self.scales[r * sb..(r + 1) * sb]);
            out.offsets
                .extend_from_slice(&self.offsets[r * ob..(r + 1) * ob]);
            out.values
                .extend_from_slice(&self.values[r * vb..(r + 1) * vb]);
        }
        Ok(out)
    }

    /// The weights dequantised to `f32`, `[rows, cols]` row-major (for tests and checks).
    /// The same values as candle's dequantiser for every supported GGUF type (bit for bit
    /// but for the sign of zero weights in Q4_0).
    pub fn dequantize(&self) -> Vec<f32> {
        let mut out = Vec::with_capacity(self.rows * self.cols);
        match self.format {
            QuantFormat::Nibbles => {
                for ((q, &d), &m) in self
                    .values
                    .chunks_exact(BLOCK / 2)
                    .zip(&self.scales)
                    .zip(&self.offsets)
                {
                    out.extend(q.iter().map(|&v| d * (v & 15) as f32 + m));
                    out.extend(q.iter().map(|&v| d * (v >> 4) as f32 + m));
                }
            }
            QuantFormat::Bytes => {
                for (b, q) in self.values.chunks_exact(self.group).enumerate() {
                    let d = self.scales[b];
                    let w = q.iter().map(|&v| d * (v as i8) as f32);
                    match self.offsets.get(b * self.group / BLOCK) {
                        Some(&m) => out.extend(w.map(|w| w + m)),
                        None => out.extend(w),
                    }
                }
            }
        }
        out
    }

    /// Dequantises block `b` (the `b`-th run of [`BLOCK`] weights, row-major) into `out`
    /// (32 values), with the same arithmetic as [`QuantMatrix::dequantize`].
    fn block_into(&self, b: usize, out: &mut [f32]) {
        match self.format {
            QuantFormat::Nibbles => {
                let q = &self.values[b * BLOCK / 2..(b + 1) * BLOCK / 2];
                let (d, m) = (self.scales[b], self.offsets[b]);
                let (lo, hi) = out.split_at_mut(BLOCK / 2);
                for ((l, h), &v) in lo.iter_mut().zip(hi.iter_mut()).zip(q) {
                    *l = d * (v & 15) as f32 + m;
                    *h = d * (v >> 4) as f32 + m;
                }
            }
            QuantFormat::Bytes => {
                let q = &self.values[b * BLOCK..(b + 1) * BLOCK];
                let m = self.offsets.get(b).copied();
                for (i, (o, &v)) in out.iter_mut().zip(q).enumerate() {
                    let d = self.scales[(b * BLOCK + i) / self.group];
                    let w = d * (v as i8) as f32;
                    *o = match m {
                        Some(m) => w + m,
                        None => w,
                    };
                }
            }
        }
    }

    /// The listed rows dequantised to `f32`, `[rows.len(), cols]` row-major (an embedding
    /// lookup without an `f32` copy of the table). Values equal [`QuantMatrix::dequantize`]'s.
    ///
    /// # Errors
    /// When a row index is out of range.
    pub fn dequantize_rows(&self, rows: &[usize]) -> Result<Vec<f32>, String> {
        if let Some(&r) = rows.iter().find(|&&r| r >= self.rows) {
            return Err(format!("row {r} is outside a matrix of {} rows", self.rows));
        }
        let per_row = self.cols / BLOCK;
        let mut out = vec![0.0f32; rows.len() * self.cols];
        for (&r, o) in rows.iter().zip(out.chunks_exact_mut(self.cols)) {
            for (j, ob) in o.chunks_exact_mut(BLOCK).enumerate() {
                self.block_into(r * per_row + j, ob);
            }
        }
        Ok(out)
    }

    /// The transpose of the dequantised weights, `[cols, rows]` row-major (Burn's `Linear`
    /// layout `[in, out]`), materialised so a matmul reads it contiguously. Values equal
    /// [`QuantMatrix::dequantize`]'s. Column blocks are spread over rayon's threads.
    pub fn dequantize_transposed(&self) -> Vec<f32> {
        let (rows, per_row) = (self.rows, self.cols / BLOCK);
        let mut out = vec![0.0f32; rows * self.cols];
        if rows == 0 {
            return out;
        }
        // Output rows j*32..j*32+32 are the 32 columns of block column j: one contiguous chunk.
        out.par_chunks_mut(BLOCK * rows)
            .enumerate()
            .for_each(|(j, chunk)| {
                let mut buf = [0.0f32; BLOCK];
                for r in 0..rows {
                    self.block_into(r * per_row + j, &mut buf);
                    for (i, &v) in buf.iter().enumerate() {
                        chunk[i * rows + r] = v;
                    }
                }
            });
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
        if m == 0 || self.rows == 0 {
            return Ok(vec![0f32; m * self.rows]);
        }
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
        let per_row = self.cols / self.group;
        let scales = &self.scales[r * per_row..(r + 1) * per_row];
        let offsets = self.offsets.get(blocks.clone()).unwrap_or(&[]);
        match self.format {
            QuantFormat::Nibbles => {
                let values = &self.values[blocks.start * 16..blocks.end * 16];
                dispatch::nibble_dot(values, scales, offsets, x, sums)
            }
            QuantFormat::Bytes => {
                let values = &self.values[blocks.start * 32..blocks.end * 32];
                let dot = if self.group == BLOCK {
                    dispatch::byte_dot(values, scales, x)
                } else {
                    dispatch::byte_dot16(values, scales, x)
                };
                // The offsets' term, for formats that have one (Q5_1, Q5_K).
                if offsets.is_empty() {
                    dot
                } else {
                    dot + offset_dot(offsets, sums)
                }
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

/// One row of 8-bit blocks times `x`, with `S` scales per block (1, or 2 for Q6_K's
/// 16-weight sub-blocks): `Σ_b Σ_s d_bs Σ_i q_i x_i`. Whole 32-weight blocks keep four
/// independent vector accumulators either way.
#[inline(always)]
fn byte_dot_body<const FMA: bool, const S: usize>(values: &[u8], scales: &[f32], x: &[f32]) -> f32 {
    let (values, _) = values.as_chunks::<BLOCK>();
    let (x, _) = x.as_chunks::<BLOCK>();
    let (scales, _) = scales.as_chunks::<S>();
    let mut acc = [0f32; BLOCK];
    for ((q, d), xb) in values.iter().zip(scales).zip(x) {
        for i in 0..BLOCK {
            let d = d[i * S / BLOCK];
            acc[i] = madd::<FMA>(d, (q[i] as i8) as f32 * xb[i], acc[i]);
        }
    }
    acc.iter().sum()
}

/// `Σ_b m_b s_b` over the blocks of a row: eight independent sums, so that the additions
/// do not wait on each other.
fn offset_dot(offsets: &[f32], sums: &[f32]) -> f32 {
    let (m, m_rest) = offsets.as_chunks::<8>();
    let (s, s_rest) = sums.as_chunks::<8>();
    let mut acc = [0f32; 8];
    for (m, s) in m.iter().zip(s) {
        for i in 0..8 {
            acc[i] += m[i] * s[i];
        }
    }
    let rest: f32 = m_rest.iter().zip(s_rest).map(|(m, s)| m * s).sum();
    acc.iter().sum::<f32>() + rest
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
    fn byte_dot_avx2<const S: usize>(v: &[u8], d: &[f32], x: &[f32]) -> f32 {
        byte_dot_body::<true, S>(v, d, x)
    }

    pub(super) fn nibble_dot(v: &[u8], d: &[f32], m: &[f32], x: &[f32], s: &[f32]) -> f32 {
        #[cfg(target_arch = "x86_64")]
        if has_avx2_fma() {
            // SAFETY: the CPU was checked for AVX2 and FMA just above.
            return unsafe { nibble_dot_avx2(v, d, m, x, s) };
        }
        nibble_dot_body::<false>(v, d, m, x, s)
    }

    /// 8-bit values with a scale per 32 (Q8_0, Q5_0, Q5_1, Q5_K).
    pub(super) fn byte_dot(v: &[u8], d: &[f32], x: &[f32]) -> f32 {
        #[cfg(target_arch = "x86_64")]
        if has_avx2_fma() {
            // SAFETY: the CPU was checked for AVX2 and FMA just above.
            return unsafe { byte_dot_avx2::<1>(v, d, x) };
        }
        byte_dot_body::<false, 1>(v, d, x)
    }

    /// 8-bit values with a scale per 16 (Q6_K).
    pub(super) fn byte_dot16(v: &[u8], d: &[f32], x: &[f32]) -> f32 {
        #[cfg(target_arch = "x86_64")]
        if has_avx2_fma() {
            // SAFETY: the CPU was checked for AVX2 and FMA just above.
            return unsafe { byte_dot_avx2::<2>(v, d, x) };
        }
        byte_dot_body::<false, 2>(v, d, x)
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

    /// GGUF block geometry: (weights, bytes) per block.
    fn geometry(dtype: GgufDType) -> (usize, usize) {
        match dtype {
            GgufDType::Q4_0 => (32, 18),
            GgufDType::Q4_1 => (32, 20),
            GgufDType::Q5_0 => (32, 22),
            GgufDType::Q5_1 => (32, 24),
            GgufDType::Q8_0 => (32, 34),
            GgufDType::Q4_K => (256, 144),
            GgufDType::Q5_K => (256, 176),
            _ => (256, 210),
        }
    }

    /// `weights` weights of random GGUF blocks with sane f16 scales (`0.01..0.02`) and
    /// offsets (`-0.1..0`; K-quants: `d`, `dmin` around `0.001`), other bytes random.
    fn gguf_blocks(dtype: GgufDType, weights: usize, seed: u64) -> Vec<u8> {
        let (per, size) = geometry(dtype);
        let mut raw = bytes(weights / per * size, seed);
        let put = |b: &mut [u8], at: usize, v: f32| {
            b[at..at + 2].copy_from_slice(&half::f16::from_f32(v).to_bits().to_le_bytes())
        };
        for (i, block) in raw.chunks_exact_mut(size).enumerate() {
            let d = 0.01 + (i % 7) as f32 * 0.0015;
            let m = -0.1 + (i % 5) as f32 * 0.02;
            match dtype {
                GgufDType::Q4_1 | GgufDType::Q5_1 => {
                    put(block, 0, d);
                    put(block, 2, m);
                }
                GgufDType::Q4_K | GgufDType::Q5_K => {
                    put(block, 0, d / 10.0);
                    put(block, 2, -m / 50.0);
                }
                GgufDType::Q6_K => put(block, 208, d / 10.0),
                _ => put(block, 0, d),
            }
        }
        raw
    }

    /// candle's dequantisation of GGUF blocks (the reference the project's loader uses).
    fn candle_dequantize(dtype: GgufDType, raw: &[u8], weights: usize) -> Vec<f32> {
        use candle_core::quantized::{ggml_file::qtensor_from_ggml, GgmlDType as C};
        let cdt = match dtype {
            GgufDType::Q4_0 => C::Q4_0,
            GgufDType::Q4_1 => C::Q4_1,
            GgufDType::Q5_0 => C::Q5_0,
            GgufDType::Q5_1 => C::Q5_1,
            GgufDType::Q8_0 => C::Q8_0,
            GgufDType::Q4_K => C::Q4K,
            GgufDType::Q5_K => C::Q5K,
            _ => C::Q6K,
        };
        let cpu = candle_core::Device::Cpu;
        // candle reads the blocks in place: give it 8-byte-aligned storage.
        let mut words = vec![0u64; raw.len().div_ceil(8)];
        bytemuck::cast_slice_mut::<u64, u8>(&mut words)[..raw.len()].copy_from_slice(raw);
        let aligned = &bytemuck::cast_slice::<u64, u8>(&words)[..raw.len()];
        qtensor_from_ggml(cdt, aligned, vec![weights], &cpu)
            .and_then(|q| q.dequantize(&cpu))
            .and_then(|t| t.to_vec1::<f32>())
            .unwrap()
    }

    const ALL: [GgufDType; 8] = [
        GgufDType::Q4_0,
        GgufDType::Q4_1,
        GgufDType::Q5_0,
        GgufDType::Q5_1,
        GgufDType::Q8_0,
        GgufDType::Q4_K,
        GgufDType::Q5_K,
        GgufDType::Q6_K,
    ];

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
        let (rows, cols) = (37, 512);
        for dtype in ALL {
            let raw = gguf_blocks(dtype, rows * cols, 7);
            let q = QuantMatrix::from_gguf(dtype, rows, cols, &raw).unwrap();
            let w = q.dequantize();
            for m in [1, 3, 8] {
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
                assert!(scale > 0.1, "{dtype:?}: degenerate test data");
                assert!(
                    err <= 1e-5 * scale.max(1.0),
                    "{dtype:?}, m = {m}: max abs error {err} (scale {scale})"
                );
            }
        }
    }

    #[test]
    fn baseline_kernels_match_the_dequantised_rows() {
        // The products above take the AVX2 kernels on CPUs that have them; check the
        // baseline instantiations directly, row by row.
        let (rows, cols) = (3, 512);
        let x: Vec<f32> = bytes(cols, 2)
            .iter()
            .map(|&b| b as f32 / 64.0 - 2.0)
            .collect();
        let sums: Vec<f32> = x.chunks_exact(BLOCK).map(|c| c.iter().sum()).collect();
        for dtype in ALL {
            let raw = gguf_blocks(dtype, rows * cols, 9);
            let q = QuantMatrix::from_gguf(dtype, rows, cols, &raw).unwrap();
            let want = reference(&q.dequantize(), &x, rows, cols);
            let nb = cols / BLOCK;
            for (r, want) in want.iter().enumerate() {
                let per_row = cols / q.group;
                let d = &q.scales[r * per_row..(r + 1) * per_row];
                let m = q.offsets.get(r * nb..(r + 1) * nb).unwrap_or(&[]);
                let got = match (q.format, q.group) {
                    (QuantFormat::Nibbles, _) => {
                        let v = &q.values[r * nb * 16..(r + 1) * nb * 16];
                        nibble_dot_body::<false>(v, d, m, &x, &sums)
                    }
                    (QuantFormat::Bytes, g) => {
                        let v = &q.values[r * cols..(r + 1) * cols];
                        let dot = if g == BLOCK {
                            byte_dot_body::<false, 1>(v, d, &x)
                        } else {
                            byte_dot_body::<false, 2>(v, d, &x)
                        };
                        dot + if m.is_empty() {
                            0.0
                        } else {
                            offset_dot(m, &sums)
                        }
                    }
                };
                assert!(
                    (got - want).abs() <= 1e-5 * want.abs().max(1.0),
                    "{dtype:?} row {r}: {got} vs {want}"
                );
            }
        }
    }

    #[test]
    fn dequantisation_equals_candles() {
        for dtype in ALL {
            for seed in 0..4 {
                let weights = 2 * 256;
                let raw = gguf_blocks(dtype, weights, seed);
                let want = candle_dequantize(dtype, &raw, weights);
                let got = QuantMatrix::from_gguf(dtype, 2, 256, &raw)
                    .unwrap()
                    .dequantize();
                assert_eq!(got.len(), want.len(), "{dtype:?}");
                // Equal but for the sign of zero (Q4_0: `d * q - 8 d` vs `(q - 8) * d`).
                for (i, (a, b)) in got.iter().zip(&want).enumerate() {
                    assert!(a == b, "{dtype:?} seed {seed} weight {i}: {a} vs {b}");
                }
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
    fn k_quant_dequantisation_matches_the_gguf_definition() {
        // Q4_K: d = 1, dmin = 1; sub-block 0 has scale 2 and minimum 3, sub-block 4 takes
        // the high bits of its scale from byte 0 (scale 5 | 16 = 21) and its minimum 7.
        let mut block = vec![0u8; 144];
        block[0..2].copy_from_slice(&half::f16::from_f32(1.0).to_bits().to_le_bytes());
        block[2..4].copy_from_slice(&half::f16::from_f32(1.0).to_bits().to_le_bytes());
        block[4] = 2 | (1 << 6);
        block[8] = 3;
        block[12] = 0x75;
        block[16..].fill(0x21);
        let w = QuantMatrix::from_gguf(GgufDType::Q4_K, 1, 256, &block)
            .unwrap()
            .dequantize();
        // Sub-block 0: low nibbles of bytes 0..32 (1); sub-block 1: their high nibbles (2),
        // scale and minimum 0; sub-block 4: low nibbles of bytes 64..96.
        assert_eq!(
            (w[0], w[31], w[32], w[128], w[159]),
            (-1.0, -1.0, 0.0, 14.0, 14.0)
        );
        // Q6_K: d = 0.5, scale 2 for weights 0..16, -4 for 240..256; q = low | high << 4.
        let mut block = vec![0u8; 210];
        block[..128].fill(0x21);
        block[128..192].fill(0xE4);
        block[192] = 2;
        block[207] = (-4i8) as u8;
        block[208..].copy_from_slice(&half::f16::from_f32(0.5).to_bits().to_le_bytes());
        let w = QuantMatrix::from_gguf(GgufDType::Q6_K, 1, 256, &block)
            .unwrap()
            .dequantize();
        // Weight 0: q = 1 - 32; weight 255: q = (2 | 3 << 4) - 32 = 18.
        assert_eq!((w[0], w[15], w[16], w[255]), (-31.0, -31.0, 0.0, -36.0));
    }

    #[test]
    fn bad_shapes_and_types_are_errors() {
        let raw = gguf_blocks(GgufDType::Q8_0, 128, 1);
        assert!(QuantMatrix::from_gguf(GgufDType::Q8_0, 2, 64, &raw).is_ok());
        assert!(QuantMatrix::from_gguf(GgufDType::Q8_0, 3, 64, &raw).is_err());
        assert!(QuantMatrix::from_gguf(GgufDType::Q8_0, 4, 48, &raw).is_err());
        assert!(QuantMatrix::from_gguf(GgufDType::Q8_0, usize::MAX, 64, &raw).is_err());
        assert!(QuantMatrix::from_gguf(GgufDType::Q6_K, 2, 64, &raw).is_err());
        assert!(QuantMatrix::from_gguf(GgufDType::Q2_K, 1, 256, &[0; 84]).is_err());
        let k = gguf_blocks(GgufDType::Q4_K, 512, 1);
        assert!(QuantMatrix::from_gguf(GgufDType::Q4_K, 2, 256, &k).is_ok());
        assert!(QuantMatrix::from_gguf(GgufDType::Q4_K, 4, 128, &k).is_err());
        assert!(QuantMatrix::from_gguf(GgufDType::Q6_K, 2, 256, &k).is_err());
        let q = QuantMatrix::from_gguf(GgufDType::Q8_0, 2, 64, &raw).unwrap();
        assert!(q.matmul(&[0.0; 65]).is_err());
        assert_eq!(q.matmul(&[]).unwrap(), Vec::<f32>::new());
        assert!(q.reorder_rows(&[0, 0]).is_err());
        assert!(q.reorder_rows(&[1]).is_err());
    }

    #[test]
    fn reordering_rows_moves_whole_rows() {
        let (rows, cols) = (4, 512);
        for dtype in ALL {
            let raw = gguf_blocks(dtype, rows * cols, 3);
            let q = QuantMatrix::from_gguf(dtype, rows, cols, &raw).unwrap();
            let order = [2, 0, 3, 1];
            let w = q.dequantize();
            let p = q.reorder_rows(&order).unwrap();
            let x: Vec<f32> = bytes(cols, 5)
                .iter()
                .map(|&b| b as f32 / 128.0 - 1.0)
                .collect();
            let (y, yp) = (q.matmul(&x).unwrap(), p.matmul(&x).unwrap());
            let p = p.dequantize();
            for (i, &r) in order.iter().enumerate() {
                assert_eq!(p[i * cols..(i + 1) * cols], w[r * cols..(r + 1) * cols]);
                assert_eq!(yp[i], y[r], "{dtype:?}");
            }
        }
    }
}
