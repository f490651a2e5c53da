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
