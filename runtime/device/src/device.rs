//! Where a bundle's plans run: the CPU, or an NVIDIA GPU through tract-cuda (the `cuda` feature).

use std::fmt;
use std::str::FromStr;

use tract_onnx::prelude::{Runtime, runtime_for_name};

/// Why a device cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DeviceError {
    /// This binary was built without the `cuda` feature.
    #[error("this build has no CUDA support (build with `--features cuda`)")]
    NotBuilt,
    /// tract-cuda found no usable driver or libraries.
    #[error("no usable CUDA driver: {0}")]
    Unavailable(String),
}

/// The device a bundle's plans run on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Device {
    /// tract's CPU kernels.
    #[default]
    Cpu,
    /// tract-cuda: what it supports on the GPU, the rest on the CPU.
    Cuda,
}

impl fmt::Display for Device {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Cpu => "cpu",
            Self::Cuda => "cuda",
        })
    }
}

/// A device as a user asks for it: one by name, or `auto` (CUDA where usable, else the CPU).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeviceChoice {
    /// CUDA when this build and machine can, else the CPU.
    Auto,
    /// The CPU.
    Cpu,
    /// CUDA, or an error.
    Cuda,
}

impl FromStr for DeviceChoice {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "auto" => Ok(Self::Auto),
            "cpu" => Ok(Self::Cpu),
            "cuda" => Ok(Self::Cuda),
            _ => Err(format!("`{s}`: expected auto, cpu or cuda")),
        }
    }
}

impl fmt::Display for DeviceChoice {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Auto => "auto",
            Self::Cpu => "cpu",
            Self::Cuda => "cuda",
        })
    }
}

/// The device a choice resolved to, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Resolved {
    /// Where the plans will run.
    pub device: Device,
    /// Why this device (for a fallback, why CUDA could not be used).
    pub reason: String,
    /// Whether `auto` fell back to the CPU.
    pub fell_back: bool,
}

/// Resolve a user's choice on this build and machine: `auto` falls back to the CPU with the reason, `cuda` fails with it.
pub fn resolve(choice: DeviceChoice) -> Result<Resolved, DeviceError> {
    let chosen = |device, reason: &str| Resolved {
        device,
        reason: reason.to_string(),
        fell_back: false,
    };
    match choice {
        DeviceChoice::Cpu => Ok(chosen(Device::Cpu, "asked for")),
        DeviceChoice::Cuda => cuda_check().map(|()| chosen(Device::Cuda, "asked for")),
        DeviceChoice::Auto => Ok(match cuda_check() {
            Ok(()) => chosen(Device::Cuda, "CUDA driver and libraries found"),
            Err(e) => Resolved {
                device: Device::Cpu,
                reason: e.to_string(),
                fell_back: true,
            },
        }),
    }
}

/// Whether plans can run on CUDA here: this build's `cuda` feature, then tract-cuda's driver and library check.
pub fn cuda_check() -> Result<(), DeviceError> {
    #[cfg(feature = "cuda")]
    {
        // Also links tract-cuda, whose runtime registers itself as "cuda".
        tract_cuda::utils::ensure_cuda_runtime_dependencies("tract-cuda")
            .map_err(|e| DeviceError::Unavailable(format!("{e:#}").replace('\n', " ")))
    }
    #[cfg(not(feature = "cuda"))]
    {
        Err(DeviceError::NotBuilt)
    }
}

/// tract-cuda's runtime, after the check that keeps it from being prepared without a driver.
pub(crate) fn cuda_runtime() -> Result<&'static dyn Runtime, DeviceError> {
    cuda_check()?;
    runtime_for_name("cuda")
        .map_err(|e| DeviceError::Unavailable(format!("{e:#}").replace('\n', " ")))?
        .ok_or_else(|| {
            DeviceError::Unavailable("tract-cuda's runtime is not registered in this binary".into())
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn choices_parse_and_print_by_name() {
        for name in ["auto", "cpu", "cuda"] {
            assert_eq!(name.parse::<DeviceChoice>().unwrap().to_string(), name);
        }
        assert!("gpu".parse::<DeviceChoice>().is_err());
    }

    #[test]
    fn cpu_is_always_available_and_auto_agrees_with_the_check() {
        assert_eq!(resolve(DeviceChoice::Cpu).unwrap().device, Device::Cpu);
        let auto = resolve(DeviceChoice::Auto).unwrap();
        match cuda_check() {
            Ok(()) => assert_eq!((auto.device, auto.fell_back), (Device::Cuda, false)),
            Err(e) => {
                assert_eq!((auto.device, auto.fell_back), (Device::Cpu, true));
                assert_eq!(auto.reason, e.to_string());
                assert_eq!(resolve(DeviceChoice::Cuda), Err(e));
            }
        }
    }

    #[cfg(not(feature = "cuda"))]
    #[test]
    fn without_the_feature_cuda_is_refused() {
        assert_eq!(resolve(DeviceChoice::Cuda), Err(DeviceError::NotBuilt));
    }

    #[cfg(feature = "cuda")]
    #[test]
    fn the_feature_registers_the_cuda_runtime() {
        // Registered: found, then usable (Some) or refused by its check (Err); never absent.
        let _ = cuda_check();
        assert!(!matches!(runtime_for_name("cuda"), Ok(None)));
    }
}
