//! burn's own matrix product on the wgpu device, at the shapes `tools/bench/webgpu_matmul.mjs`
//! times a hand-written WGSL kernel on in Chromium: the two sides of the candidate for
//! `shaders/`. For the same device without a GPU, point the Vulkan loader at Chromium's
//! SwiftShader: `VK_ICD_FILENAMES=/usr/lib/chromium/vk_swiftshader_icd.json cargo run --release
//! -p scaleot-owner --features wgpu --example wgpu_matmul`.
use std::time::Instant;

use burn::tensor::{Device, DeviceKind, Distribution, Tensor};

fn main() {
    let device = Device::wgpu(DeviceKind::DefaultDevice);
    // (layout, m, k, n): `nn` multiplies by b [k, n]; `nt` by the transpose of b [n, k].
    for (layout, m, k, n) in [
        ("nn", 16, 576, 1536),
        ("nt", 16, 576, 1536),
        ("nn", 16, 576, 49152),
        ("nt", 16, 576, 49152),
        ("nn", 128, 576, 1536),
    ] {
        let a = Tensor::<2>::random([m, k], Distribution::Default, &device);
        let b_shape = if layout == "nn" { [k, n] } else { [n, k] };
        let b = Tensor::<2>::random(b_shape, Distribution::Default, &device);
        let product = || match layout {
            "nn" => a.clone().matmul(b.clone()),
            _ => a.clone().matmul(b.clone().transpose()),
        };
        // The first run compiles the kernel. Only reading the values waits for the device
        // (`into_data` alone returns before the product is done).
        let read = || -> f32 {
            let values: Vec<f32> = product().into_data().try_to_vec().expect("f32 values");
            values[0]
        };
        read();
        let start = Instant::now();
        let checksum: f32 = (0..3).map(|_| read()).sum();
        let ms = start.elapsed().as_secs_f64() * 1e3 / 3.0;
        let gflops = 2.0 * (m * k * n) as f64 / ms / 1e6;
        println!("{layout} [{m},{k}]x[{k},{n}] burn: {ms:.1} ms, {gflops:.2} GFLOP/s ({checksum})");
    }
}
