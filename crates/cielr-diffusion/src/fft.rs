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
//! The cos/sin matrices depend only on the sizes; they are computed in f64 once per size and
//! cached (the last few lengths used). At LaMa's sizes (the bottleneck of a 512x512 input is
//! 64x64) the products cost a small fraction of the convolutions around them.

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

/// The DFT matrices of one length `n`, row-major f32.
#[derive(Debug)]
struct Mats {
    /// `cos(2 pi k j / n)`, `[n, n]` (symmetric).
    cos: Vec<f32>,
    /// `sin(2 pi k j / n)`, `[n, n]` (symmetric).
    sin: Vec<f32>,
    /// Forward real-to-half-complex along a length `n` axis: `x [.., n] @ r_cos [n, n/2+1]` is
    /// the real part, `x @ r_nsin` (`-sin`) the imaginary part.
    r_cos: Vec<f32>,
    r_nsin: Vec<f32>,
    /// Inverse half-complex-to-real: `re [.., n/2+1] @ c_cos [n/2+1, n] + im @ c_nsin` where the
    /// rows are weighted by how many times each frequency occurs in the full spectrum (1 for
    /// the zero and Nyquist frequencies, 2 for the others).
    c_cos: Vec<f32>,
    c_nsin: Vec<f32>,
}

impl Mats {
    fn new(n: usize) -> Mats {
        let half = n / 2 + 1;
        // The angle of k * j, reduced modulo n in integers so that large products lose nothing.
        let angle =
            |k: usize, j: usize| 2.0 * std::f64::consts::PI * ((k * j) % n) as f64 / n as f64;
        let mut cos = vec![0f32; n * n];
        let mut sin = vec![0f32; n * n];
        for k in 0..n {
            for j in 0..n {
                let a = angle(k, j);
                cos[k * n + j] = a.cos() as f32;
                sin[k * n + j] = a.sin() as f32;
            }
        }
        let mut r_cos = vec![0f32; n * half];
        let mut r_nsin = vec![0f32; n * half];
        let mut c_cos = vec![0f32; half * n];
        let mut c_nsin = vec![0f32; half * n];
        for j in 0..n {
            for k in 0..half {
                let a = angle(k, j);
                r_cos[j * half + k] = a.cos() as f32;
                r_nsin[j * half + k] = -a.sin() as f32;
                let weight = if k == 0 || (n.is_multiple_of(2) && k == n / 2) {
                    1.0
                } else {
                    2.0
                };
                c_cos[k * n + j] = (weight * a.cos()) as f32;
                c_nsin[k * n + j] = (-weight * a.sin()) as f32;
            }
        }
        Mats {
            cos,
            sin,
            r_cos,
            r_nsin,
            c_cos,
            c_nsin,
        }
    }
}

/// How many lengths the DFT matrix cache keeps (LaMa needs one or two per input size; each
/// entry holds about `4 n^2` floats, so an unbounded cache would grow with every new size).
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

fn matrix<B: Backend>(data: &[f32], rows: usize, cols: usize, device: &B::Device) -> Tensor<B, 2> {
    Tensor::from_data(TensorData::new(data.to_vec(), [rows, cols]), device)
}

/// `x [.., n]` times `m [n, k]` over the last axis of a 4-d tensor.
fn last_axis<B: Backend>(x: Tensor<B, 4>, m: Tensor<B, 2>) -> Tensor<B, 4> {
    let [b, c, h, w] = x.dims();
    let k = m.dims()[1];
    x.reshape([b * c * h, w]).matmul(m).reshape([b, c, h, k])
}

/// `m [n, n]` (symmetric) applied along the second-to-last axis of a 4-d tensor.
fn row_axis<B: Backend>(x: Tensor<B, 4>, m: Tensor<B, 2>) -> Tensor<B, 4> {
    last_axis(x.swap_dims(2, 3), m).swap_dims(2, 3)
}

/// `torch.fft.rfftn(x, dim=(-2, -1), norm="ortho")` of a real `[batch, channels, h, w]`
/// tensor: a [`Spectrum`] of `[batch, channels, h, w / 2 + 1]`.
pub fn rfft2<B: Backend>(x: Tensor<B, 4>) -> Spectrum<B> {
    let [_, _, h, w] = x.dims();
    let device = x.device();
    let (mh, mw) = (mats(h), mats(w));
    let half = w / 2 + 1;
    // Along the last axis: real to half-complex.
    let re1 = last_axis(x.clone(), matrix::<B>(&mw.r_cos, w, half, &device));
    let im1 = last_axis(x, matrix::<B>(&mw.r_nsin, w, half, &device));
    // Along the rows: a full complex DFT, (C - iS)(re1 + i im1).
    let c = matrix::<B>(&mh.cos, h, h, &device);
    let s = matrix::<B>(&mh.sin, h, h, &device);
    let scale = 1.0 / ((h * w) as f64).sqrt();
    let re = row_axis(re1.clone(), c.clone()) + row_axis(im1.clone(), s.clone());
    let im = row_axis(im1, c) - row_axis(re1, s);
    Spectrum {
        re: re * scale,
        im: im * scale,
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
    let device = re.device();
    let (mh, mw) = (mats(h), mats(w));
    // Along the rows: a full complex inverse DFT, (C + iS)(re + i im).
    let c = matrix::<B>(&mh.cos, h, h, &device);
    let s = matrix::<B>(&mh.sin, h, h, &device);
    let re1 = row_axis(re.clone(), c.clone()) - row_axis(im.clone(), s.clone());
    let im1 = row_axis(im, c) + row_axis(re, s);
    // Along the last axis: half-complex to real.
    let out = last_axis(re1, matrix::<B>(&mw.c_cos, half, w, &device))
        + last_axis(im1, matrix::<B>(&mw.c_nsin, half, w, &device));
    Ok(out * (1.0 / ((h * w) as f64).sqrt()))
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
        assert_eq!(first.cos, again.cos);
        assert_eq!(first.c_nsin, again.c_nsin);
        assert!(Arc::ptr_eq(&again, &mats(5)), "a cached length is reused");
    }
}
