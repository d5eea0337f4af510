//! In headless Chromium on WebGPU (SwiftShader where there is no GPU): the browser's training
//! session gives the native CPU backend's losses within 1e-3 (tests/golden/tiny_session.json,
//! checked natively by tests/native/browser_session.rs), its steps lower the loss, and a run
//! resumed from a checkpoint equals the uninterrupted one; and our WGSL product (shaders/) equals
//! burn's.
//! Run: `CHROMEDRIVER=/usr/bin/chromedriver cargo test --target wasm32-unknown-unknown --test web_session`.
#![cfg(target_arch = "wasm32")]

mod common;

use burn::tensor::{DType, Device, Distribution, FloatDType, Tensor, Tolerance};
use common::session_run::{golden, max_diff, run, run_resumed};
use scaleot::model::{frozen, wgsl_matmul};
use wasm_bindgen_test::*;

wasm_bindgen_test_configure!(run_in_dedicated_worker);

/// One test, so one WebGPU device: wasm-bindgen-test runs async tests concurrently, and a worker
/// gets one device (a second concurrent start finds no adapter).
#[wasm_bindgen_test]
async fn on_webgpu() {
    let device = Device::wgpu_options()
        .init_async()
        .await
        .expect("WebGPU adapter (Chromium needs --enable-unsafe-webgpu without a GPU)")
        .autodiff();
    wgsl_matmul_matches_burns_product(&device).await;
    webgpu_session_matches_native_cpu(&device).await;
}

async fn webgpu_session_matches_native_cpu(device: &Device) {
    let (_, got) = run(device).await;
    let want = golden(include_str!("golden/tiny_session.json"));
    let diff = max_diff(&got, &want);
    console_log!(
        "WebGPU vs native CPU: max |difference| {diff:.2e} over held-out loss {:.4} → {:.4} and {} step losses",
        got.before,
        got.after,
        got.losses.len()
    );
    assert!(
        diff < 1e-3,
        "WebGPU differs from the native CPU run by {diff}"
    );
    assert!(
        got.after < got.before - 0.1,
        "{} → {}",
        got.before,
        got.after
    );
    assert!(got.losses.last() < got.losses.first());

    // Stopped after step 3 with a checkpoint (Adam's moments read back asynchronously) and
    // resumed in a fresh session, the run continues exactly as if it had not stopped.
    let resumed = run_resumed(device, 3).await;
    let diff = max_diff(&got, &resumed);
    console_log!("resumed vs uninterrupted on WebGPU: max |difference| {diff:.2e}");
    assert!(diff < 1e-5, "a resumed run differs by {diff}");
}

/// Our WGSL product (`shaders/matmul_*.wgsl`) against burn's on the same WebGPU device, within
/// 1e-4: row-major and transposed weights, f32 and (where the adapter computes with it) f16,
/// row counts that fill an invocation's rows and ones that do not, widths that fill its columns
/// and ones that do not, and the gradients of the input and of a trainable (f32) weight.
async fn wgsl_matmul_matches_burns_product(device: &Device) {
    let f16 = device.supports_dtype(DType::F16);
    let tol = Tolerance::<f32>::absolute(1e-4);
    let before = wgsl_matmul::launches();
    for (m, k, n) in [(1, 8, 4), (13, 36, 20), (20, 36, 24), (64, 576, 192)] {
        let x = Tensor::<2>::random([m, k], Distribution::Default, device);
        let probe = Tensor::<2>::random([m, n], Distribution::Default, device);
        let rows = Tensor::<2>::random([k, n], Distribution::Normal(0.0, 0.05), device);
        let transposed = Tensor::<2>::random([n, k], Distribution::Normal(0.0, 0.05), device);
        let mut weights = vec![rows, transposed.transpose()];
        if f16 {
            // Values f16 holds exactly, so both products see the same weight.
            let narrow = |w: &Tensor<2>| w.clone().cast(FloatDType::F16);
            weights.extend([narrow(&weights[0]), narrow(&weights[1])]);
        }
        for w in weights {
            let trainable = !frozen::is_narrow(&w);
            // The output, then the gradients of x and (when trainable) of w.
            let run = |product: &dyn Fn(Tensor<2>, Tensor<2>) -> Tensor<2>| {
                let x = x.clone().require_grad();
                let w = if trainable {
                    w.clone().require_grad()
                } else {
                    w.clone()
                };
                let y = product(x.clone(), w.clone());
                let mut grads = (y.clone() * probe.clone()).sum().backward();
                let mut out = vec![y, x.grad_remove(&mut grads).expect("x's gradient")];
                out.extend(trainable.then(|| w.grad_remove(&mut grads).expect("w's gradient")));
                out
            };
            let want = run(&|x, w| x.matmul(frozen::widened(w)));
            let got = run(&frozen::weight_matmul);
            for (got, want) in got.into_iter().zip(want) {
                let got = got.into_data_async().await.expect("read back");
                got.assert_approx_eq::<f32>(&want.into_data_async().await.expect("read back"), tol);
            }
        }
    }
    // Forward and backward, for every weight: our kernel ran, not burn's fallback.
    let ran = wgsl_matmul::launches() - before;
    console_log!("our WGSL product ran {ran} times (f16 weights: {f16})");
    assert!(ran >= 2 * 4 * 2, "only {ran} launches");
}
