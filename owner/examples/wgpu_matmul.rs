//! Our WGSL matrix product (`shaders/`) and burn's on the native wgpu device, at the shapes
//! `tools/bench/webgpu_matmul.mjs` times our kernels on in Chromium (a training step on SmolLM2's
//! emulator at batch 1 x 64): the kernel's cost natively and in the browser on one device. For
//! the same device without a GPU, point the Vulkan loader at Chromium's SwiftShader:
//! `VK_ICD_FILENAMES=/usr/lib/chromium/vk_swiftshader_icd.json cargo run --release -p
//! scaleot-owner --features wgpu --example wgpu_matmul`.
use std::time::Instant;

use burn::tensor::{Device, DeviceKind, Distribution, Tensor};
use scaleot::model::{frozen, wgsl_matmul};

fn main() {
    let device = Device::wgpu(DeviceKind::DefaultDevice);
    // (layout, m, k, n): `nn` multiplies by b [k, n]; `nt` by the transpose of b [n, k].
    for (layout, m, k, n) in [
        ("nn", 64, 576, 1536),
        ("nt", 64, 1536, 576),
        ("nt", 64, 576, 49152),
        ("nn", 64, 49152, 576),
        ("nn", 576, 64, 1536),
    ] {
        let a = Tensor::<2>::random([m, k], Distribution::Default, &device);
        let b_shape = if layout == "nn" { [k, n] } else { [n, k] };
        let b = Tensor::<2>::random(b_shape, Distribution::Default, &device);
        let b = if layout == "nn" { b } else { b.transpose() };
        for ours in [true, false] {
            wgsl_matmul::set_enabled(ours);
            // The first run compiles the kernel. Only reading the values waits for the device
            // (`into_data` alone returns before the product is done).
            let read = || -> f32 {
                let c = frozen::weight_matmul(a.clone(), b.clone());
                let values: Vec<f32> = c.into_data().try_to_vec().expect("f32 values");
                values[0]
            };
            read();
            let start = Instant::now();
            let checksum: f32 = (0..3).map(|_| read()).sum();
            let ms = start.elapsed().as_secs_f64() * 1e3 / 3.0;
            let gflops = 2.0 * (m * k * n) as f64 / ms / 1e6;
            let name = if ours { "ours" } else { "burn" };
            println!(
                "{layout} [{m},{k}]x[{k},{n}] {name}: {ms:.1} ms, {gflops:.2} GFLOP/s ({checksum})"
            );
        }
    }
}
