//! `--device`: where a command's tensors are computed. The backend is picked here, at the edge
//! of the program; everything below takes a burn `Device`.

use anyhow::{Result, bail};
use burn::tensor::Device;
use clap::ValueEnum;
use scaleot::model::frozen::FrozenStorage;

/// Where tensors are computed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum DeviceChoice {
    /// Pure-Rust CPU backend (burn flex: gemm + rayon).
    Cpu,
    /// GPU through wgpu: Vulkan, Metal or DX12, the best adapter found (build with `--features wgpu`).
    Gpu,
    /// NVIDIA GPU through CUDA (build with `--features cuda`).
    Cuda,
    /// burn's ndarray CPU backend (build with `--features ndarray`), for comparison.
    Ndarray,
}

/// `--device`, flattened into every command that computes with the model.
#[derive(clap::Args, Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
pub struct DeviceArgs {
    #[arg(long, value_enum, default_value = "cpu")]
    pub device: DeviceChoice,
}

impl Default for DeviceArgs {
    fn default() -> Self {
        Self {
            device: DeviceChoice::Cpu,
        }
    }
}

impl DeviceArgs {
    /// The burn device, or why this binary cannot offer it.
    pub fn open(self) -> Result<Device> {
        match self.device {
            DeviceChoice::Cpu => Ok(Device::flex()),
            #[cfg(feature = "wgpu")]
            DeviceChoice::Gpu => Ok(Device::wgpu(burn::tensor::DeviceKind::DefaultDevice)),
            #[cfg(not(feature = "wgpu"))]
            DeviceChoice::Gpu => bail!(
                "this binary was built without GPU support: rebuild with `cargo build --release -p scaleot-owner --features wgpu`"
            ),
            #[cfg(feature = "cuda")]
            DeviceChoice::Cuda => Ok(Device::cuda(0)),
            #[cfg(not(feature = "cuda"))]
            DeviceChoice::Cuda => bail!(
                "this binary was built without CUDA: rebuild with `cargo build --release -p scaleot-owner --features cuda` (needs the CUDA driver)"
            ),
            #[cfg(feature = "ndarray")]
            DeviceChoice::Ndarray => Ok(Device::ndarray()),
            #[cfg(not(feature = "ndarray"))]
            DeviceChoice::Ndarray => bail!(
                "this binary was built without the ndarray backend: rebuild with `--features ndarray`"
            ),
        }
    }

    /// The same device with automatic differentiation, for training.
    pub fn open_autodiff(self) -> Result<Device> {
        Ok(self.open()?.autodiff())
    }

    /// How an emulator's frozen weights are kept on this device: as the page keeps them (f16 on
    /// a GPU that computes with it, f32 on the CPU).
    pub fn frozen_storage(self, device: &Device) -> FrozenStorage {
        match self.device {
            DeviceChoice::Gpu | DeviceChoice::Cuda => FrozenStorage::for_gpu(device),
            DeviceChoice::Cpu | DeviceChoice::Ndarray => FrozenStorage::F32,
        }
    }

    /// burn's name for the backend, for benchmark output.
    pub fn backend(self) -> &'static str {
        match self.device {
            DeviceChoice::Cpu => "flex",
            DeviceChoice::Gpu => "wgpu",
            DeviceChoice::Cuda => "cuda",
            DeviceChoice::Ndarray => "ndarray",
        }
    }
}
