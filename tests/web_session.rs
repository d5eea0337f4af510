//! In headless Chromium on WebGPU (SwiftShader where there is no GPU): the browser's training
//! session gives the native CPU backend's losses within 1e-3 (tests/golden/tiny_session.json,
//! checked natively by tests/native/browser_session.rs), its steps lower the loss, and a run
//! resumed from a checkpoint equals the uninterrupted one.
//! Run: `CHROMEDRIVER=/usr/bin/chromedriver cargo test --target wasm32-unknown-unknown --test web_session`.
#![cfg(target_arch = "wasm32")]

mod common;

use burn::tensor::Device;
use common::session_run::{golden, max_diff, run, run_resumed};
use wasm_bindgen_test::*;

wasm_bindgen_test_configure!(run_in_dedicated_worker);

#[wasm_bindgen_test]
async fn webgpu_session_matches_native_cpu() {
    let device = Device::wgpu_options()
        .init_async()
        .await
        .expect("WebGPU adapter (Chromium needs --enable-unsafe-webgpu without a GPU)");
    let device = device.autodiff();
    let (_, got) = run(&device).await;
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
    let resumed = run_resumed(&device, 3).await;
    let diff = max_diff(&got, &resumed);
    console_log!("resumed vs uninterrupted on WebGPU: max |difference| {diff:.2e}");
    assert!(diff < 1e-5, "a resumed run differs by {diff}");
}
