//! Backend choice: the `flex` CPU backend always; CUDA behind the `cuda` feature, used only
//! after checking at run time that the driver is present (Burn's CUDA backend panics in a
//! worker thread when it is not).

/// The CPU backend every model runs on by default.
pub type CpuBackend = burn::backend::Flex;

/// The CUDA backend (feature `cuda`).
#[cfg(feature = "cuda")]
pub type CudaBackend = burn::backend::Cuda;

/// Whether `B` is [`CpuBackend`] (code with a faster CPU path than Burn's generic ops checks
/// this before taking it).
pub fn is_cpu_backend<B: burn::tensor::backend::Backend>() -> bool {
    std::any::TypeId::of::<B>() == std::any::TypeId::of::<CpuBackend>()
}

/// The values of a float tensor on the host as f32, whatever its dtype (models loaded in f16 or
/// bf16 read their outputs back through this; `TensorData::to_vec::<f32>` alone fails on them).
pub fn read_f32<B: burn::tensor::backend::Backend, const D: usize>(
    t: burn::tensor::Tensor<B, D>,
) -> Result<Vec<f32>, burn::tensor::DataError> {
    t.into_data().convert::<f32>().into_vec::<f32>()
}

/// Why a model output could not be read back as usable `f32` values
/// ([`read_finite_f32`]).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReadBackError {
    /// The tensor's data could not be converted to `f32`.
    #[error("reading {what} back from the device failed: {reason}")]
    Data {
        /// What was read ("the depth map", "the LLM's logits", ...).
        what: String,
        /// Burn's description of the failure.
        reason: String,
    },
    /// Some values are NaN or infinite: the model overflowed (most often in f16) or its
    /// weights or inputs hold such values. Using them would give silently wrong masks,
    /// pixels or tokens.
    #[error(
        "{what} holds {count} NaN or infinite value(s) out of {total} (computed in {dtype:?}); {hint}"
    )]
    NonFinite {
        /// What was read.
        what: String,
        /// How many values are NaN or infinite.
        count: usize,
        /// How many values the tensor holds.
        total: usize,
        /// The dtype the model computed in.
        dtype: burn::tensor::DType,
        /// What to do about it.
        hint: &'static str,
    },
}

/// [`read_f32`], then a check that every value is finite: the read-back every model output
/// goes through before it becomes masks, pixels, depths or tokens. `what` names the output in
/// the error.
pub fn read_finite_f32<B: burn::tensor::backend::Backend, const D: usize>(
    t: burn::tensor::Tensor<B, D>,
    what: &str,
) -> Result<Vec<f32>, ReadBackError> {
    let dtype = t.dtype();
    let values = read_f32(t).map_err(|e| ReadBackError::Data {
        what: what.to_string(),
        reason: format!("{e:?}"),
    })?;
    let count = values.iter().filter(|v| !v.is_finite()).count();
    if count == 0 {
        return Ok(values);
    }
    let hint = if dtype == burn::tensor::DType::F16 {
        "f16 overflows beyond ±65504: run in bf16 (same range as f32) or f32, e.g. `--precision bf16`"
    } else {
        "check the weights and inputs for NaN or infinite values"
    };
    Err(ReadBackError::NonFinite {
        what: what.to_string(),
        count,
        total: values.len(),
        dtype,
        hint,
    })
}

/// What compute is usable in this process.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Accelerator {
    /// CPU only, with the reason CUDA is not used.
    Cpu {
        /// Why CUDA is not used ("built without the cuda feature", "libcuda.so.1 not found", ...).
        reason: String,
    },
    /// CUDA with this many devices.
    Cuda {
        /// Number of CUDA devices the driver reports.
        devices: usize,
    },
}

/// Detects whether CUDA is usable: the build has the `cuda` feature, the driver library
/// loads, initialises and reports at least one device.
pub fn detect() -> Accelerator {
    match cuda_device_count() {
        Ok(n) if n > 0 => Accelerator::Cuda { devices: n },
        Ok(_) => Accelerator::Cpu {
            reason: "the CUDA driver reports no device".into(),
        },
        Err(reason) => Accelerator::Cpu { reason },
    }
}

#[cfg(not(feature = "cuda"))]
fn cuda_device_count() -> Result<usize, String> {
    Err("built without the `cuda` feature".into())
}

#[cfg(feature = "cuda")]
fn cuda_device_count() -> Result<usize, String> {
    type CuInit = unsafe extern "C" fn(u32) -> i32;
    type CuDeviceGetCount = unsafe extern "C" fn(*mut i32) -> i32;
    // SAFETY: loading the system's CUDA driver library runs its initialisers, which is what
    // every CUDA program does; the symbols are called with the signatures the driver API defines.
    unsafe {
        let lib = libloading::Library::new("libcuda.so.1")
            .or_else(|_| libloading::Library::new("libcuda.so"))
            .map_err(|e| format!("the CUDA driver library could not be loaded ({e})"))?;
        let init: libloading::Symbol<CuInit> = lib.get(b"cuInit\0").map_err(|e| e.to_string())?;
        let count: libloading::Symbol<CuDeviceGetCount> =
            lib.get(b"cuDeviceGetCount\0").map_err(|e| e.to_string())?;
        let rc = init(0);
        if rc != 0 {
            return Err(format!("cuInit failed with CUDA error {rc}"));
        }
        let mut n = 0i32;
        let rc = count(&mut n);
        if rc != 0 {
            return Err(format!("cuDeviceGetCount failed with CUDA error {rc}"));
        }
        Ok(n.max(0) as usize)
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn detection_never_panics_and_explains_cpu() {
        match super::detect() {
            super::Accelerator::Cpu { reason } => assert!(!reason.is_empty()),
            super::Accelerator::Cuda { devices } => assert!(devices > 0),
        }
    }

    #[test]
    fn cpu_backend_computes() {
        use burn::tensor::Tensor;
        let device = Default::default();
        let t = Tensor::<super::CpuBackend, 1>::from_floats([1.0, 2.0, 3.0], &device);
        let s: f32 = t.sum().into_scalar();
        assert_eq!(s, 6.0);
    }

    #[test]
    fn read_finite_f32_refuses_nan_and_infinity_and_names_the_output() {
        use burn::tensor::{FloatDType, Tensor};
        let device = Default::default();
        let ok = Tensor::<super::CpuBackend, 1>::from_floats([0.5, -1.0], &device);
        assert_eq!(super::read_finite_f32(ok, "x").unwrap(), vec![0.5, -1.0]);
        for bad in [f32::NAN, f32::INFINITY, f32::NEG_INFINITY] {
            let t = Tensor::<super::CpuBackend, 1>::from_floats([1.0, bad, 2.0], &device);
            let err = super::read_finite_f32(t, "the depth map").unwrap_err();
            let msg = err.to_string();
            assert!(
                matches!(
                    err,
                    super::ReadBackError::NonFinite {
                        count: 1,
                        total: 3,
                        ..
                    }
                ),
                "{msg}"
            );
            assert!(msg.starts_with("the depth map holds 1 NaN"), "{msg}");
            assert!(msg.contains("weights and inputs"), "{msg}");
        }
        // An f16 overflow: 70000 is beyond f16's range, so the cast gives infinity, and the
        // hint says to use bf16 or f32.
        let t = Tensor::<super::CpuBackend, 1>::from_floats([70000.0, 1.0], &device)
            .cast(FloatDType::F16);
        let msg = super::read_finite_f32(t, "the image")
            .unwrap_err()
            .to_string();
        assert!(
            msg.contains("F16") && msg.contains("--precision bf16"),
            "{msg}"
        );
    }

    #[test]
    fn read_f32_converts_half_tensors() {
        use burn::tensor::{FloatDType, Tensor};
        let device = Default::default();
        let t = Tensor::<super::CpuBackend, 2>::from_floats([[1.5, -2.0], [0.25, 3.0]], &device);
        for dtype in [FloatDType::F16, FloatDType::BF16] {
            let half = t.clone().cast(dtype);
            assert!(half.clone().into_data().to_vec::<f32>().is_err());
            assert_eq!(super::read_f32(half).unwrap(), vec![1.5, -2.0, 0.25, 3.0]);
        }
        assert_eq!(super::read_f32(t).unwrap(), vec![1.5, -2.0, 0.25, 3.0]);
    }
}
