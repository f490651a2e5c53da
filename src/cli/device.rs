//! `--device cpu|cuda[:N]`: where a command's Burn models run; `--precision f32|bf16|f16`:
//! the float type they run in.
//!
//! The option is parsed into a [`DeviceSpec`] (syntax only, so every build can test it), which
//! the clap value parser also refuses when it names CUDA in a build without the `cuda`
//! feature (a usage error, exit code 2). At run time [`DeviceSpec::open`] checks that the
//! device is usable and gives a [`ModelDevice`]; the `on_device!` macro then runs one generic
//! model builder on the matching Burn backend, so no builder is written once per backend.
//! [`DeviceArgs::open`] also sets the device's default float dtype ([`Precision`]) before any
//! model exists on it, so every checkpoint loads, and every op runs, in that dtype.

use std::fmt;
use std::str::FromStr;

use burn::tensor::FloatDType;
use clap::{Args, ValueEnum};

/// What `--device cuda` says in a build without the `cuda` feature.
pub const NO_CUDA_BUILD: &str = "this cielr was built without CUDA support; rebuild it with \
`cargo build --release --features cuda` (needs the CUDA toolkit), or use --device cpu";

/// A device named on the command line: `cpu`, `cuda` (device 0) or `cuda:N`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum DeviceSpec {
    /// The `flex` CPU backend.
    #[default]
    Cpu,
    /// The CUDA backend on the device with this index.
    Cuda(u16),
}

impl fmt::Display for DeviceSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DeviceSpec::Cpu => f.write_str("cpu"),
            DeviceSpec::Cuda(i) => write!(f, "cuda:{i}"),
        }
    }
}

impl FromStr for DeviceSpec {
    type Err = String;

    /// Parses `cpu`, `cuda` or `cuda:N` (ASCII case-insensitive, N decimal digits only).
    fn from_str(s: &str) -> Result<Self, String> {
        let lower = s.to_ascii_lowercase();
        match lower.as_str() {
            "cpu" => return Ok(DeviceSpec::Cpu),
            "cuda" => return Ok(DeviceSpec::Cuda(0)),
            _ => {}
        }
        let Some(index) = lower.strip_prefix("cuda:") else {
            return Err(format!(
                "expected `cpu`, `cuda` or `cuda:N` (N a CUDA device index such as 0 or 1), got {s:?}"
            ));
        };
        if index.is_empty() || !index.bytes().all(|b| b.is_ascii_digit()) {
            return Err(format!(
                "the CUDA device index in {s:?} must be a number, as in `cuda:0` or `cuda:1`"
            ));
        }
        index
            .parse::<u16>()
            .map(DeviceSpec::Cuda)
            .map_err(|_| format!("the CUDA device index in {s:?} is too large"))
    }
}

/// The clap value parser of `--device`: the syntax, then whether this build can use it.
fn parse_device(s: &str) -> Result<DeviceSpec, String> {
    let spec: DeviceSpec = s.parse()?;
    if matches!(spec, DeviceSpec::Cuda(_)) && !cfg!(feature = "cuda") {
        return Err(NO_CUDA_BUILD.to_string());
    }
    Ok(spec)
}

/// `--device`, shared by the commands that load Burn models (`plan`, `edit`, `scene`, `eval`).
#[derive(Args, Debug, Clone, Copy)]
pub struct DeviceArgs {
    /// Where the Burn models run: `cpu` (the default) or `cuda[:N]` (CUDA device N, 0 when
    /// left out; needs a build with `cargo build --release --features cuda`). It applies to
    /// the local language model (--llm smollm2, a GGUF file or HuggingFace folder), the scene
    /// builders (the default COCO detector; --owlv2/--sam/--depth) and the sd15, sd2 and lama
    /// editors. A served --llm http(s)://..., scripted answers and the classical editor ignore
    /// it; `cielr eval`'s LPIPS and CLIPScore metrics always run on the CPU.
    #[arg(
        long,
        value_name = "DEVICE",
        default_value = "cpu",
        value_parser = parse_device,
        env = "CIELR_DEVICE"
    )]
    pub device: DeviceSpec,
    /// The float type the Burn models load their weights in and compute with: `f32` (the
    /// default; what the parity tests check), `bf16` (f32's range in half the memory; needs
    /// an Ampere or newer GPU) or `f16` (finer than bf16, but values beyond ±65504 overflow:
    /// a model whose output overflows stops with an error that says so). Half precision is
    /// for GPUs; on the CPU it works but runs slower than f32. It applies to the models
    /// --device applies to.
    #[arg(
        long,
        value_enum,
        value_name = "TYPE",
        default_value_t = Precision::F32,
        env = "CIELR_PRECISION"
    )]
    pub precision: Precision,
}

impl DeviceArgs {
    /// The device, checked to be usable in this process (see [`DeviceSpec::open`]), with its
    /// default float dtype set to `--precision` (before any tensor exists on it).
    pub fn open(&self) -> anyhow::Result<ModelDevice> {
        let device = self.device.open()?;
        self.precision.apply(&device)?;
        if self.precision != Precision::F32 {
            eprintln!(
                "[device] the models on {device} load and run in {}",
                self.precision
            );
        }
        Ok(device)
    }
}

/// The float type of the Burn models (`--precision`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Precision {
    /// 32-bit floats.
    F32,
    /// bfloat16: 8 exponent bits like f32, 8 mantissa bits.
    Bf16,
    /// IEEE half: 5 exponent bits (largest value 65504), 11 mantissa bits.
    F16,
}

impl Precision {
    /// The Burn dtype, `None` for f32 (Burn's default).
    pub fn dtype(self) -> Option<FloatDType> {
        match self {
            Precision::F32 => None,
            Precision::Bf16 => Some(FloatDType::BF16),
            Precision::F16 => Some(FloatDType::F16),
        }
    }

    /// Makes this the default float dtype of `device`. Must run before any tensor exists on
    /// it (Burn locks a device's defaults at its first tensor).
    fn apply(self, device: &ModelDevice) -> anyhow::Result<()> {
        let Some(dtype) = self.dtype() else {
            return Ok(());
        };
        let set = on_device!(device, |B, dev| {
            burn::tensor::backend::set_default_float_dtype::<B>(dev, dtype)
        });
        set.map_err(|e| match e {
            burn::tensor::backend::DeviceError::UnsupportedDType { .. } => anyhow::anyhow!(
                "--precision {self}: {device} does not compute in {self} (bf16 needs an \
                 NVIDIA GPU of compute capability 8.0 or newer); use --precision f16 or f32"
            ),
            other => anyhow::anyhow!(
                "--precision {self}: the float type of {device} could not be set ({other}); \
                 this is a bug in cielr, please report it"
            ),
        })
    }
}

impl fmt::Display for Precision {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Precision::F32 => "f32",
            Precision::Bf16 => "bf16",
            Precision::F16 => "f16",
        })
    }
}

/// A device this process can run Burn models on.
#[derive(Debug, Clone)]
pub enum ModelDevice {
    /// The `flex` CPU backend (`cielr::core::backend::CpuBackend`).
    Cpu,
    /// The CUDA backend (`cielr::core::backend::CudaBackend`) on this device.
    #[cfg(feature = "cuda")]
    Cuda(burn::backend::cuda::CudaDevice),
}

impl ModelDevice {
    /// `" on cuda:N"` for a CUDA device, empty for the CPU (progress messages append it).
    pub fn suffix(&self) -> String {
        match self {
            ModelDevice::Cpu => String::new(),
            #[cfg(feature = "cuda")]
            ModelDevice::Cuda(d) => format!(" on cuda:{}", d.index),
        }
    }
}

impl fmt::Display for ModelDevice {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ModelDevice::Cpu => f.write_str("cpu"),
            #[cfg(feature = "cuda")]
            ModelDevice::Cuda(d) => write!(f, "cuda:{}", d.index),
        }
    }
}

impl DeviceSpec {
    /// Checks that this process can use the device: always for the CPU; for CUDA, that the
    /// build has the `cuda` feature, the driver loads and reports a device with this index
    /// (Burn's CUDA backend panics in a worker thread when it is absent, so this is checked
    /// before any model is built).
    pub fn open(self) -> anyhow::Result<ModelDevice> {
        match self {
            DeviceSpec::Cpu => Ok(ModelDevice::Cpu),
            #[cfg(feature = "cuda")]
            DeviceSpec::Cuda(index) => {
                use cielr::core::backend::{detect, Accelerator};
                match detect() {
                    Accelerator::Cuda { devices } if usize::from(index) < devices => Ok(
                        ModelDevice::Cuda(burn::backend::cuda::CudaDevice::new(index.into())),
                    ),
                    Accelerator::Cuda { devices } => anyhow::bail!(
                        "--device cuda:{index}: the CUDA driver reports {devices} device(s), \
                         numbered from 0"
                    ),
                    Accelerator::Cpu { reason } => anyhow::bail!(
                        "--device cuda:{index}: CUDA is not usable here ({reason}); use --device cpu"
                    ),
                }
            }
            #[cfg(not(feature = "cuda"))]
            DeviceSpec::Cuda(_) => anyhow::bail!("{NO_CUDA_BUILD}"),
        }
    }
}

/// The default device of backend `B` (the CPU backend has one device).
pub fn default_device<B: burn::tensor::backend::Backend>() -> B::Device {
    Default::default()
}

/// Evaluates `$body` with `$b` naming the Burn backend of `$device` (a `&ModelDevice`) and
/// `$dev` bound to its `&<$b as Backend>::Device`: one generic model builder, instantiated
/// per backend here and nowhere else. `?` in `$body` returns from the enclosing function.
macro_rules! on_device {
    ($device:expr, |$b:ident, $dev:ident| $body:expr) => {
        match $device {
            $crate::cli::device::ModelDevice::Cpu => {
                type $b = cielr::core::backend::CpuBackend;
                let cpu = $crate::cli::device::default_device::<$b>();
                let $dev = &cpu;
                $body
            }
            #[cfg(feature = "cuda")]
            $crate::cli::device::ModelDevice::Cuda(cuda) => {
                type $b = cielr::core::backend::CudaBackend;
                let $dev: &burn::backend::cuda::CudaDevice = cuda;
                $body
            }
        }
    };
}
pub(crate) use on_device;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_cpu_and_cuda_with_and_without_an_index() {
        assert_eq!("cpu".parse::<DeviceSpec>(), Ok(DeviceSpec::Cpu));
        assert_eq!("CPU".parse::<DeviceSpec>(), Ok(DeviceSpec::Cpu));
        assert_eq!("cuda".parse::<DeviceSpec>(), Ok(DeviceSpec::Cuda(0)));
        assert_eq!("cuda:0".parse::<DeviceSpec>(), Ok(DeviceSpec::Cuda(0)));
        assert_eq!("Cuda:3".parse::<DeviceSpec>(), Ok(DeviceSpec::Cuda(3)));
        assert_eq!(
            "cuda:65535".parse::<DeviceSpec>(),
            Ok(DeviceSpec::Cuda(65535))
        );
    }

    #[test]
    fn refuses_other_devices_and_bad_indices() {
        for bad in [
            "", "tpu", "gpu", "cuda:", "cuda:x", "cuda:-1", "cuda:+1", "cuda: 1", "cuda:1.0",
            "cuda0", " cpu", "cpu:0",
        ] {
            let err = bad.parse::<DeviceSpec>().unwrap_err();
            assert!(err.contains("cuda"), "{bad:?}: {err}");
        }
        let err = "cuda:65536".parse::<DeviceSpec>().unwrap_err();
        assert!(err.contains("too large"), "{err}");
        let err = "cuda:x".parse::<DeviceSpec>().unwrap_err();
        assert!(err.contains("must be a number"), "{err}");
        let err = "tpu".parse::<DeviceSpec>().unwrap_err();
        assert!(err.contains("`cpu`, `cuda` or `cuda:N`"), "{err}");
    }

    #[test]
    fn display_round_trips() {
        for spec in [DeviceSpec::Cpu, DeviceSpec::Cuda(0), DeviceSpec::Cuda(7)] {
            assert_eq!(spec.to_string().parse::<DeviceSpec>(), Ok(spec));
        }
    }

    #[test]
    fn the_value_parser_refuses_cuda_only_without_the_feature() {
        assert_eq!(parse_device("cpu"), Ok(DeviceSpec::Cpu));
        let cuda = parse_device("cuda:1");
        if cfg!(feature = "cuda") {
            assert_eq!(cuda, Ok(DeviceSpec::Cuda(1)));
        } else {
            let err = cuda.unwrap_err();
            assert!(err.contains("--features cuda"), "{err}");
        }
        assert!(parse_device("tpu").is_err());
    }

    #[test]
    fn the_cpu_opens_everywhere() {
        let device = DeviceSpec::Cpu.open().unwrap();
        assert_eq!(device.to_string(), "cpu");
        assert_eq!(device.suffix(), "");
    }

    #[cfg(not(feature = "cuda"))]
    #[test]
    fn opening_cuda_without_the_feature_says_how_to_rebuild() {
        let err = DeviceSpec::Cuda(0).open().unwrap_err().to_string();
        assert!(err.contains("--features cuda"), "{err}");
    }

    #[test]
    fn on_device_instantiates_the_cpu_backend() {
        use burn::tensor::Tensor;
        let sum: f32 = on_device!(&ModelDevice::Cpu, |B, dev| {
            Tensor::<B, 1>::from_floats([1.0, 2.0, 3.5], dev)
                .sum()
                .into_scalar()
        });
        assert_eq!(sum, 6.5);
    }
}
