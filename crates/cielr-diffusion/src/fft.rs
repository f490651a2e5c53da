//! Two-dimensional real FFTs for Burn, which has none: `rfft2` and `irfft2` over the last two
//! axes with torch's `norm="ortho"`, computed as discrete Fourier transforms by matrix
//! multiplication.
//!
//! The semantics are those of `torch.fft.rfftn(x, dim=(-2, -1), norm="ortho")` and
//! `torch.fft.irfftn(X, s=(h, w), dim=(-2, -1), norm="ortho")` for any (even or odd) `h`, `w`:
//! the forward transform keeps the `w / 2 + 1` non-negative frequencies of the last axis; the
//! inverse first runs a full complex inverse DFT over the second-to-last axis and then a
//! complex-to-real transform over the last, where the imaginary parts of the zero frequency
//! (and of the Nyquist frequency when `w` is even) are ignored, exactly as pocketFFT does for
//! spectra that are not Hermitian (LaMa's spectra, after a convolution, are not).
//!
//! Each transform is two batched matrix products and nothing else (no transposes, stacks or
//! slices): the last axis is transformed by a product on the right, giving each row's real and
//! imaginary parts side by side (`[h, 2 * half]`, which is `[2h, half]` with rows ordered
//! (row, part)); the rows by a `[2h, 2h]` real matrix on the left whose columns follow that
//! order and whose output rows are ordered (part, row): exactly the layout of
//! [`rfft2_interleaved`], which LaMa's Fourier unit convolves. The inverse runs the same steps
//! backwards. The matrices depend only on the sizes; they are computed in f64 once per length
//! and cached (the last few lengths used). At LaMa's sizes (the bottleneck of a 512x512 input
//! is 64x64) the products cost a small fraction of the convolutions around them.

use std::sync::{Arc, Mutex, OnceLock};

use burn::tensor::backend::Backend;
use burn::tensor::{Tensor, TensorData};

use crate::error::{DiffusionError, Result};

/// The real and imaginary parts of a complex tensor, each `[batch, channels, h, w / 2 + 1]`
/// for the spectrum of a `[batch, channels, h, w]` real tensor.
#[derive(Debug, Clone)]
pub struct Spectrum<B: Backend> {
    /// Real parts.
    pub re: Tensor<B, 4>,
    /// Imaginary parts.
    pub im: Tensor<B, 4>,
}

/// The DFT matrices of one length `n` (with `half = n / 2 + 1`), row-major f32, each carrying
/// its `1 / sqrt(n)` share of the ortho normalisation.
#[derive(Debug)]
struct Mats {
    /// Forward real-to-half-complex along a last axis of length `n`: `[n, 2 half]`, `cos`
    /// then `-sin` columns, so `x [.., n] @ last` is a row's real then imaginary parts.
    last: Vec<f32>,
    /// Forward complex DFT along rows (length `n`): `[2n, 2n]`, input rows ordered (row `j`,
    /// part `q`), output rows ordered (part `r`, frequency `k`).
    rows: Vec<f32>,
    /// Inverse complex DFT along rows: `[2n, 2n]`, input rows ordered (part, frequency),
    /// output rows ordered (row, part).
    rows_inv: Vec<f32>,
    /// Inverse half-complex-to-real along the last axis: `[2 half, n]`, the real parts' rows
    /// then the imaginary parts', weighted by how many times each frequency occurs in the full
    /// spectrum (1 for the zero and Nyquist frequencies, 2 for the others).
    last_inv: Vec<f32>,
}

impl Mats {
    fn new(n: usize) -> Mats {
        let half = n / 2 + 1;
        let norm = 1.0 / (n as f64).sqrt();
        // The angle of k * j, reduced modulo n in integers so that large products lose nothing.
        let angle =
            |k: usize, j: usize| 2.0 * std::f64::consts::PI * ((k * j) % n) as f64 / n as f64;
        let mut last = vec![0f32; n * 2 * half];
        let mut last_inv = vec![0f32; 2 * half * n];
        for j in 0..n {
            for k in 0..half {
                let (sin, cos) = angle(k, j).sin_cos();
                last[j * 2 * half + k] = (cos * norm) as f32;
                last[j * 2 * half + half + k] = (-sin * norm) as f32;
                let weight = if k == 0 || (n.is_multiple_of(2) && k == n / 2) {
                    1.0
                } else {
                    2.0
                };
                last_inv[k * n + j] = (weight * cos * norm) as f32;
                last_inv[(half + k) * n + j] = (-weight * sin * norm) as f32;
            }
        }
        // Forward: re[k] = sum_j cos re[j] + sin im[j]; im[k] = sum_j cos im[j] - sin re[j].
        // Inverse: re[j] = sum_k cos re[k] - sin im[k]; im[j] = sum_k sin re[k] + cos im[k].
        let mut rows = vec![0f32; 4 * n * n];
        let mut rows_inv = vec![0f32; 4 * n * n];
        let at = |out_row: usize, in_row: usize| out_row * 2 * n + in_row;
        for k in 0..n {
            for j in 0..n {
                let (sin, cos) = angle(k, j).sin_cos();
                let (c, s) = ((cos * norm) as f32, (sin * norm) as f32);
                // Forward: output (part, k), input (j, part).
                rows[at(k, 2 * j)] = c;
                rows[at(k, 2 * j + 1)] = s;
                rows[at(n + k, 2 * j)] = -s;
                rows[at(n + k, 2 * j + 1)] = c;
                // Inverse: output (j, part), input (part, k).
                rows_inv[at(2 * j, k)] = c;
                rows_inv[at(2 * j, n + k)] = -s;
                rows_inv[at(2 * j + 1, k)] = s;
                rows_inv[at(2 * j + 1, n + k)] = c;
            }
        }
        Mats {
            last,
            rows,
            rows_inv,
            last_inv,
        }
    }
}

/// How many lengths the DFT matrix cache keeps (LaMa needs one or two per input size; each
/// entry holds about `10 n^2` floats, so an unbounded cache would grow with every new size).
const CACHED_LENGTHS: usize = 8;

/// Cached DFT matrices by length, most recently used last.
type MatsCache = Mutex<Vec<(usize, Arc<Mats>)>>;

/// The process-wide cache of DFT matrices.
fn cache() -> &'static MatsCache {
    static CACHE: OnceLock<MatsCache> = OnceLock::new();
    CACHE.get_or_init(|| Mutex::new(Vec::new()))
}

/// The DFT matrices of length `n`, from the cache (least recently used length evicted).
fn mats(n: usize) -> Arc<Mats> {
    // A poisoned lock only means another thread panicked while inserting: the list is intact.
    let mut entries = cache().lock().unwrap_or_else(|e| e.into_inner());
    let found = entries.iter().position(|(len, _)| *len == n);
    let entry = match found {
        Some(i) => entries.remove(i),
        None => (n, Arc::new(Mats::new(n))),
    };
    let result = entry.1.clone();
    entries.push(entry);
    if entries.len() > CACHED_LENGTHS {
        entries.remove(0);
    }
    result
}

/// A row-major matrix as a `[1, rows, cols]` tensor (broadcast over a batched product).
fn matrix<B: Backend>(data: &[f32], rows: usize, cols: usize, device: &B::Device) -> Tensor<B, 3> {
    Tensor::from_data(TensorData::new(data.to_vec(), [1, rows, cols]), device)
}

/// `torch.fft.rfftn(x, dim=(-2, -1), norm="ortho")` of a real `[batch, channels, h, w]`
/// tensor with the real and imaginary parts interleaved per channel: `[batch, 2 channels, h,
/// w / 2 + 1]`, channel `2c` the real and `2c + 1` the imaginary part of channel `c` (torch's
/// `stack((re, im), dim=2).view(batch, -1, h, w / 2 + 1)`, LaMa's Fourier unit layout).
pub fn rfft2_interleaved<B: Backend>(x: Tensor<B, 4>) -> Tensor<B, 4> {
    let [b, c, h, w] = x.dims();
    let device = x.device();
    let (mh, mw) = (mats(h), mats(w));
    let half = w / 2 + 1;
    // Each row's real and imaginary parts side by side: [b c, h, 2 half] = [b c, 2h, half].
    let by_row = x
        .reshape([b * c, h, w])
        .matmul(matrix::<B>(&mw.last, w, 2 * half, &device))
        .reshape([b * c, 2 * h, half]);
    matrix::<B>(&mh.rows, 2 * h, 2 * h, &device)
        .matmul(by_row)
        .reshape([b, 2 * c, h, half])
}

/// The inverse of [`rfft2_interleaved`]: `torch.fft.irfftn(X, s=(h, w), dim=(-2, -1),
/// norm="ortho")` of a spectrum `[batch, 2 channels, h, w / 2 + 1]` with real and imaginary
/// parts interleaved per channel, as a real `[batch, channels, h, w]` tensor. The spectrum
/// need not be Hermitian (see the module documentation). Any other shape is an error.
pub fn irfft2_interleaved<B: Backend>(
    spectrum: Tensor<B, 4>,
    h: usize,
    w: usize,
) -> Result<Tensor<B, 4>> {
    let [b, c2, sh, sw] = spectrum.dims();
    let half = w / 2 + 1;
    if sh != h || sw != half || !c2.is_multiple_of(2) || h == 0 || w == 0 {
        return Err(DiffusionError::input_shape(
            "irfft2",
            format!(
                "spectrum {:?} does not match s = ({h}, {w}): expected [.., 2 * channels, {h}, \
                 {half}]",
                spectrum.dims()
            ),
        ));
    }
    let c = c2 / 2;
    let device = spectrum.device();
    let (mh, mw) = (mats(h), mats(w));
    // Rows first, giving each row's real and imaginary parts side by side: [b c, h, 2 half].
    let by_row = matrix::<B>(&mh.rows_inv, 2 * h, 2 * h, &device)
        .matmul(spectrum.reshape([b * c, 2 * h, half]))
        .reshape([b * c, h, 2 * half]);
    Ok(by_row
        .matmul(matrix::<B>(&mw.last_inv, 2 * half, w, &device))
        .reshape([b, c, h, w]))
}

/// `torch.fft.rfftn(x, dim=(-2, -1), norm="ortho")` of a real `[batch, channels, h, w]`
/// tensor: a [`Spectrum`] of `[batch, channels, h, w / 2 + 1]`.
pub fn rfft2<B: Backend>(x: Tensor<B, 4>) -> Spectrum<B> {
    let [b, c, h, w] = x.dims();
    let half = w / 2 + 1;
    let parts = rfft2_interleaved(x).reshape([b, c, 2, h, half]);
    let part = |i: usize| parts.clone().narrow(2, i, 1).reshape([b, c, h, half]);
    Spectrum {
        re: part(0),
        im: part(1),
    }
}

/// `torch.fft.irfftn(X, s=(h, w), dim=(-2, -1), norm="ortho")`: the real
/// `[batch, channels, h, w]` tensor of a [`Spectrum`] of `[batch, channels, h, w / 2 + 1]`.
/// The spectrum need not be Hermitian (see the module documentation). A spectrum whose
/// shape is not `[.., h, w / 2 + 1]` (or whose parts differ in shape) is an error.
pub fn irfft2<B: Backend>(spectrum: Spectrum<B>, h: usize, w: usize) -> Result<Tensor<B, 4>> {
    let Spectrum { re, im } = spectrum;
    let half = w / 2 + 1;
    let dims = re.dims();
    if dims[2] != h || dims[3] != half || im.dims() != dims || h == 0 || w == 0 {
        return Err(DiffusionError::input_shape(
            "irfft2",
            format!(
                "spectrum parts {:?} / {:?} do not match s = ({h}, {w}): expected [.., {h}, {half}]",
                dims,
                im.dims()
            ),
        ));
    }
    let [b, c, _, _] = dims;
    let interleaved: Tensor<B, 5> = Tensor::stack(vec![re, im], 2);
    irfft2_interleaved(interleaved.reshape([b, 2 * c, h, half]), h, w)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_matrix_cache_is_bounded_and_recomputes_evicted_lengths() {
        let first = mats(5);
        for n in 6..6 + 3 * CACHED_LENGTHS {
            mats(n);
            let len = cache().lock().unwrap_or_else(|e| e.into_inner()).len();
            assert!(len <= CACHED_LENGTHS, "{len} lengths cached");
        }
        let again = mats(5);
        assert!(
            !Arc::ptr_eq(&first, &again),
            "length 5 should have been evicted"
        );
        assert_eq!(first.rows, again.rows);
        assert_eq!(first.last_inv, again.last_inv);
        assert!(Arc::ptr_eq(&again, &mats(5)), "a cached length is reused");
    }
}
