//! The training worker (a dedicated Web Worker): owns the device, the emulator, the private
//! data and the run, so that the page stays responsive. It only ever fetches the emulator from
//! its own origin; the data arrives as a local `File` from the page and stays in memory and in
//! origin-private storage (checkpoints).

use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::rc::Rc;

use burn::tensor::Device;
use js_sys::{Array, Uint8Array};

use wasm_bindgen::prelude::*;
use wasm_bindgen_futures::{JsFuture, spawn_local};
use web_sys::{DedicatedWorkerGlobalScope, MessageEvent};

use super::helpers::{self, HelperPool};
use super::protocol::{
    DataInfo, EmulatorInfo, FromWorker, ToWorker, attach, field, from_js, to_js,
};
use super::storage::{self, describe};
use crate::emulator::plan::adapter_layers;
use crate::emulator::{Emulator, EmulatorManifest, LayerKind};
use crate::error::Error;
use crate::model::frozen::FrozenStorage;
use crate::session::{
    Checkpoint, Control, Metrics, Progress, RunClock, RunHost, Session, Settings,
};

struct Loaded {
    emulator: Emulator,
    weights: Vec<u8>,
}

struct State {
    scope: DedicatedWorkerGlobalScope,
    device: Device,
    backend: String,
    /// WebGPU's largest buffer (bytes); None on the CPU fallback.
    max_buffer: Option<f64>,
    /// How the emulator's frozen weights are kept (f16 on a GPU with `shader-f16`).
    frozen: FrozenStorage,
    emulator: Option<Loaded>,
    data: Option<(String, Vec<u8>)>,
    session: Option<Session>,
    control: Rc<Cell<Control>>,
    /// Messages waiting for the current task to finish.
    queue: VecDeque<(ToWorker, JsValue)>,
    busy: bool,
    /// Held-out loss before training and after, and the run's speed: the adapter's metrics.
    metrics: Metrics,
    /// On the CPU fallback, the helper workers that share every batch (None: one thread).
    helpers: Option<HelperPool>,
    /// Why the CPU fallback trains on one core although helpers were wanted.
    one_core_why: Option<String>,
}

type Shared = Rc<RefCell<State>>;

fn post(scope: &DedicatedWorkerGlobalScope, msg: &FromWorker) {
    let _ = scope.post_message(&to_js(msg));
}

/// A library error as the page says it: a setting out of range names the page's control
/// (the library names its config field).
fn for_page(e: Error) -> String {
    let Error::Setting {
        field,
        value,
        reason,
    } = &e
    else {
        return e.to_string();
    };
    let control = match *field {
        "steps" => "Steps",
        "batch_size" => "Batch size",
        "lr" => "Learning rate",
        "seq_len" => "Sequence length",
        "lora_rank" => "LoRA rank",
        _ => return e.to_string(),
    };
    format!("{control} {value}: {reason}")
}

fn fail(scope: &DedicatedWorkerGlobalScope, message: impl Into<String>) {
    post(
        scope,
        &FromWorker::Error {
            message: message.into(),
        },
    );
}

/// Sets the worker up: picks WebGPU (or says why not and falls back to the CPU), then listens.
pub async fn run(scope: DedicatedWorkerGlobalScope) {
    let search = scope.location().search();
    let asked = AskedDevice::from_query(&search);
    // `?matmul=burn`: frozen products with burn's kernel instead of ours (to compare the two).
    crate::model::wgsl_matmul::set_enabled(super::query_value(&search, "matmul") != Some("burn"));
    let (device, backend, max_buffer, notice) = match webgpu_limit(&scope, asked).await {
        Ok(limit) => match Device::wgpu_options().init_async().await {
            Ok(d) => (d, "WebGPU".to_string(), Some(limit), None),
            Err(e) => cpu_fallback(NoWebGpu::Missing(format!("WebGPU could not start ({e:?})"))),
        },
        Err(why) => cpu_fallback(why),
    };
    let frozen = match max_buffer {
        Some(_) => FrozenStorage::for_gpu(&device),
        None => FrozenStorage::F32,
    };
    let backend = match frozen {
        FrozenStorage::F16 => format!("{backend} (frozen weights in f16)"),
        FrozenStorage::F32 => backend,
    };
    let state = Rc::new(RefCell::new(State {
        scope: scope.clone(),
        device: device.autodiff(),
        frozen,
        backend: backend.clone(),
        max_buffer,
        emulator: None,
        data: None,
        session: None,
        control: Rc::new(Cell::new(Control::Run)),
        queue: VecDeque::new(),
        busy: false,
        metrics: Metrics::default(),
        helpers: None,
        one_core_why: None,
    }));
    let handler_state = state.clone();
    let on_message = Closure::<dyn FnMut(MessageEvent)>::new(move |ev: MessageEvent| {
        on_message(&handler_state, ev.data());
    });
    scope.set_onmessage(Some(on_message.as_ref().unchecked_ref()));
    on_message.forget();
    post(&scope, &FromWorker::Ready { backend, notice });
}

/// The device the page's address asks for (`?device=webgpu|cpu`; anything else: chosen here).
#[derive(Clone, Copy, PartialEq)]
enum AskedDevice {
    Any,
    /// WebGPU even on a software adapter (tests and benchmarks on machines without a GPU).
    WebGpu,
    Cpu,
}

impl AskedDevice {
    fn from_query(search: &str) -> Self {
        match super::query_value(search, "device") {
            Some("webgpu") => Self::WebGpu,
            Some("cpu") => Self::Cpu,
            _ => Self::Any,
        }
    }
}

/// Why training runs on the CPU.
enum NoWebGpu {
    /// No WebGPU, or none that works (the reason).
    Missing(String),
    /// WebGPU is a software renderer (SwiftShader, WARP: no GPU found). It computes on the CPU
    /// through a shader emulator, far slower than the CPU backend (SmolLM2's emulator: 0.64
    /// against 43.7 tokens/s on one machine, docs/results.md).
    Software,
    /// The page's address asks for the CPU (`?device=cpu`).
    Asked,
}

fn cpu_fallback(why: NoWebGpu) -> (Device, String, Option<f64>, Option<String>) {
    let notice = match why {
        NoWebGpu::Missing(why) => Some(format!(
            "{why}. Training runs on the CPU instead: it works, but slowly. For speed use a browser with WebGPU (Chrome or Edge 113+, Safari 26+, Firefox 141+ on Windows)."
        )),
        NoWebGpu::Software => Some(
            "This browser's WebGPU found no GPU, only a software renderer, which trains far slower than the CPU. Training runs on the CPU.".into(),
        ),
        NoWebGpu::Asked => None,
    };
    (Device::flex(), "CPU".into(), None, notice)
}

/// The adapter's per-buffer limit, or why training runs on the CPU.
async fn webgpu_limit(
    scope: &DedicatedWorkerGlobalScope,
    asked: AskedDevice,
) -> Result<f64, NoWebGpu> {
    if asked == AskedDevice::Cpu {
        return Err(NoWebGpu::Asked);
    }
    let missing = |why: &str| NoWebGpu::Missing(why.into());
    let gpu = field(&scope.navigator(), "gpu");
    if gpu.is_undefined() || gpu.is_null() {
        return Err(missing("This browser has no WebGPU"));
    }
    let request = js_sys::Reflect::get(&gpu, &"requestAdapter".into())
        .ok()
        .and_then(|f| f.dyn_into::<js_sys::Function>().ok())
        .ok_or(missing("This browser's WebGPU has no requestAdapter"))?;
    let promise = request
        .call0(&gpu)
        .map_err(|e| NoWebGpu::Missing(describe(e)))?
        .dyn_into::<js_sys::Promise>()
        .map_err(|_| missing("WebGPU requestAdapter returned no promise"))?;
    let adapter = JsFuture::from(promise)
        .await
        .map_err(|e| NoWebGpu::Missing(describe(e)))?;
    if adapter.is_null() || adapter.is_undefined() {
        return Err(missing("WebGPU found no usable GPU adapter"));
    }
    // `info.isFallbackAdapter` (the adapter's own flag in older browsers).
    let software = [
        field(&field(&adapter, "info"), "isFallbackAdapter"),
        field(&adapter, "isFallbackAdapter"),
    ]
    .iter()
    .any(|flag| flag.as_bool() == Some(true));
    if software && asked != AskedDevice::WebGpu {
        return Err(NoWebGpu::Software);
    }
    let limits = field(&adapter, "limits");
    let num = |k: &str| field(&limits, k).as_f64().unwrap_or(f64::MAX);
    Ok(num("maxStorageBufferBindingSize").min(num("maxBufferSize")))
}

fn on_message(state: &Shared, data: JsValue) {
    let scope = state.borrow().scope.clone();
    let msg: ToWorker = match from_js(&data) {
        Ok(m) => m,
        Err(e) => return fail(&scope, e),
    };
    // Run control applies at once, even mid-training.
    let control = state.borrow().control.clone();
    match &msg {
        ToWorker::Pause => return control.set(Control::Pause),
        ToWorker::Resume => return control.set(Control::Run),
        ToWorker::Stop => return control.set(Control::Stop),
        _ => {}
    }
    // Everything else runs in order, one task at a time (a settings change right before
    // "train" must not be lost or race it).
    state
        .borrow_mut()
        .queue
        .push_back((msg, field(&data, "files")));
    if state.borrow().busy {
        return;
    }
    state.borrow_mut().busy = true;
    let state = state.clone();
    spawn_local(async move {
        loop {
            let next = state.borrow_mut().queue.pop_front();
            let Some((msg, files)) = next else { break };
            // A settings change that a later one (or training) supersedes is skipped.
            let superseded = matches!(msg, ToWorker::Configure { .. })
                && state.borrow().queue.iter().any(|(m, _)| {
                    matches!(
                        m,
                        ToWorker::Configure { .. }
                            | ToWorker::Train { .. }
                            | ToWorker::LoadData { .. }
                    )
                });
            if superseded {
                continue;
            }
            if let Err(message) = handle(&state, msg, files).await {
                fail(&scope, message);
            }
        }
        state.borrow_mut().busy = false;
    });
}

async fn handle(state: &Shared, msg: ToWorker, files: JsValue) -> Result<(), String> {
    match msg {
        ToWorker::LoadServedEmulator => load_served_emulator(state).await,
        ToWorker::LoadLocalEmulator => {
            let files: Vec<web_sys::File> = Array::from(&files)
                .iter()
                .filter_map(|f| f.dyn_into().ok())
                .collect();
            let pick = |ext: &str| files.iter().find(|f| f.name().ends_with(ext)).cloned();
            let (Some(json), Some(weights)) = (pick(".json"), pick(".safetensors")) else {
                return Err(
                    "choose both emulator files: its .json manifest and its .safetensors weights"
                        .into(),
                );
            };
            let json = String::from_utf8(read_file(&json).await?).map_err(
                |_| "the emulator manifest is not UTF-8 JSON: choose the emulator's .json file",
            )?;
            let weights = read_file(&weights).await?;
            install_emulator(state, &json, weights)
        }
        ToWorker::LoadData { name, settings } => {
            let file: web_sys::File = Array::from(&files)
                .get(0)
                .dyn_into()
                .map_err(|_| "no data file was chosen")?;
            let bytes = read_file(&file).await?;
            state.borrow_mut().data = Some((name, bytes));
            prepare(state, &settings).await
        }
        ToWorker::Configure { settings } => {
            if state.borrow().data.is_none() {
                return Ok(());
            }
            prepare(state, &settings).await
        }
        ToWorker::Train { settings, resume } => train(state, settings, resume).await,
        ToWorker::Download => download(state).await,
        ToWorker::ForgetCheckpoint => {
            let slot = checkpoint_slot(state).ok_or("load an emulator and a data file first")?;
            storage::remove(&slot).await
        }
        ToWorker::Pause | ToWorker::Resume | ToWorker::Stop => Ok(()),
    }
}

async fn read_file(file: &web_sys::File) -> Result<Vec<u8>, String> {
    let buf = JsFuture::from(file.array_buffer())
        .await
        .map_err(|e| format!("reading {} failed: {}", file.name(), describe(e)))?;
    Ok(Uint8Array::new(&buf).to_vec())
}

async fn fetch(scope: &DedicatedWorkerGlobalScope, url: &str) -> Result<web_sys::Response, String> {
    let resp = JsFuture::from(scope.fetch_with_str(url))
        .await
        .map_err(|e| format!("fetching {url}: {}", describe(e)))?;
    resp.dyn_into()
        .map_err(|_| "fetch returned no response".into())
}

async fn load_served_emulator(state: &Shared) -> Result<(), String> {
    let scope = state.borrow().scope.clone();
    let manifest = fetch(&scope, "emulator.json").await?;
    if !manifest.ok() {
        post(
            &scope,
            &FromWorker::NoServedEmulator {
                reason: format!("this site serves no emulator (HTTP {})", manifest.status()),
            },
        );
        return Ok(());
    }
    let text = JsFuture::from(manifest.text().map_err(describe)?)
        .await
        .map_err(describe)?
        .as_string()
        .unwrap_or_default();
    let expected = Emulator::read_manifest(&text).map_err(for_page)?;
    check_fits(state, &expected)?;
    let weights = fetch(&scope, "emulator.safetensors").await?;
    if !weights.ok() {
        return Err(format!(
            "the emulator's weights are missing on this site (HTTP {}): ask the model owner",
            weights.status()
        ));
    }
    let total = expected.weights_bytes as f64;
    let body = weights.body().ok_or("the emulator download has no body")?;
    let reader: web_sys::ReadableStreamDefaultReader = body.get_reader().unchecked_into();
    let mut bytes = Vec::with_capacity(expected.weights_bytes as usize);
    let mut last_report = 0.0;
    loop {
        let chunk = JsFuture::from(reader.read()).await.map_err(|e| {
            format!(
                "the emulator download broke off: {}; reload to try again",
                describe(e)
            )
        })?;
        if field(&chunk, "done").as_bool().unwrap_or(true) {
            break;
        }
        let value: Uint8Array = field(&chunk, "value").unchecked_into();
        let at = bytes.len();
        bytes.resize(at + value.length() as usize, 0);
        value.copy_to(&mut bytes[at..]);
        let done = bytes.len() as f64;
        if done - last_report > total / 100.0 {
            last_report = done;
            post(
                &scope,
                &FromWorker::Loading {
                    what: "emulator".into(),
                    done,
                    total,
                },
            );
        }
    }
    install_emulator(state, &text, bytes)
}

fn check_fits(state: &Shared, m: &EmulatorManifest) -> Result<(), String> {
    crate::session::check_fits(m, state.borrow().max_buffer).map_err(for_page)
}

fn install_emulator(state: &Shared, json: &str, weights: Vec<u8>) -> Result<(), String> {
    let scope = state.borrow().scope.clone();
    let manifest = Emulator::read_manifest(json).map_err(for_page)?;
    check_fits(state, &manifest)?;
    post(
        &scope,
        &FromWorker::Loading {
            what: "checking and building the emulator".into(),
            done: 0.0,
            total: 1.0,
        },
    );
    let device = state.borrow().device.clone();
    let frozen = state.borrow().frozen;
    let emulator = Emulator::load_storing(json, &weights, frozen, &device).map_err(for_page)?;
    let m = &emulator.manifest;
    let info = EmulatorInfo {
        method: m.method.clone(),
        emulator_params: m.emulator_params,
        full_params: m.full_params,
        bytes: m.weights_bytes,
        sha256: m.weights_sha256.clone(),
        adapter_layers: adapter_layers(&m.plan),
        kept_layers: m.plan.iter().filter(|k| **k != LayerKind::Dropped).count(),
        total_layers: m.plan.len(),
    };
    let helpers = start_helpers(state, &emulator.manifest, json, &weights);
    let mut s = state.borrow_mut();
    (s.helpers, s.one_core_why) = match helpers {
        Ok(pool) => (pool, None),
        Err(why) => (None, Some(why)),
    };
    s.emulator = Some(Loaded { emulator, weights });
    s.session = None;
    drop(s);
    post(&scope, &FromWorker::EmulatorLoaded(info));
    Ok(())
}

/// On the CPU fallback, helper workers with their own copy of the emulator, one per further
/// core as memory allows ([`helpers::helper_count`]); None on WebGPU or on one core, and why
/// not when they cannot start (then training runs on this worker alone).
fn start_helpers(
    state: &Shared,
    manifest: &EmulatorManifest,
    json: &str,
    weights: &[u8],
) -> Result<Option<HelperPool>, String> {
    let (scope, on_gpu) = {
        let mut s = state.borrow_mut();
        s.helpers = None; // the old emulator's helpers stop first
        (s.scope.clone(), s.max_buffer.is_some())
    };
    let n = helpers::helper_count(&scope, manifest);
    if on_gpu || n == 0 {
        return Ok(None);
    }
    let script = scope.location().href();
    HelperPool::start(n, &script, json, weights)
        .map(Some)
        .map_err(|e| one_core(&format!("helper workers could not start ({e})")))
}

/// What the page says when the CPU fallback trains on one core although helpers were wanted.
fn one_core(why: &str) -> String {
    format!("training runs on one core: {why}")
}

fn checkpoint_slot(state: &Shared) -> Option<String> {
    let s = state.borrow();
    let emu = s.emulator.as_ref()?;
    let (_, data) = s.data.as_ref()?;
    Some(storage::slot(
        &emu.emulator.manifest.weights_sha256,
        &crate::sha256_hex(&[data]),
    ))
}

/// Builds the session for these settings: tokenizes the data, estimates the run, finds a
/// stored checkpoint, and reports all of it.
async fn prepare(state: &Shared, settings: &Settings) -> Result<(), String> {
    let (scope, max_buffer) = {
        let s = state.borrow();
        (s.scope.clone(), s.max_buffer)
    };
    let session = {
        let s = state.borrow();
        let emu = s.emulator.as_ref().ok_or("load the emulator first")?;
        let (name, bytes) = s.data.as_ref().ok_or("choose a data file first")?;
        Session::new(&emu.emulator, bytes, name, settings).map_err(for_page)?
    };
    let estimate = session.estimate();
    let warning = max_buffer.and_then(|l| crate::session::batch_warning(&estimate, l));
    let slot = checkpoint_slot(state).ok_or("load an emulator and a data file first")?;
    let checkpoint = match storage::load(&slot).await? {
        Some(bytes) => Checkpoint::from_bytes(bytes)
            .ok()
            .map(|c| (c.state.step, c.settings)),
        None => None,
    };
    let info = DataInfo {
        format: serde_json::to_value(session.data.format)
            .ok()
            .and_then(|v| v.as_str().map(str::to_owned))
            .unwrap_or_default(),
        train_examples: estimate.train_examples,
        train_target_tokens: estimate.train_target_tokens,
        held_out_examples: estimate.held_out_examples,
        estimate,
        warning,
        checkpoint,
    };
    if let Some(pool) = state.borrow_mut().helpers.as_mut() {
        pool.configure(settings).map_err(for_page)?;
    }
    state.borrow_mut().session = Some(session);
    post(&scope, &FromWorker::DataLoaded(info));
    Ok(())
}

fn now_seconds() -> f64 {
    js_sys::Date::now() / 1000.0
}

async fn train(state: &Shared, settings: Settings, resume: bool) -> Result<(), String> {
    let slot = checkpoint_slot(state).ok_or("load an emulator and a data file first")?;
    let stored = if resume {
        let bytes = storage::load(&slot)
            .await?
            .ok_or("there is no stored checkpoint to resume")?;
        Some(Checkpoint::from_bytes(bytes).map_err(for_page)?)
    } else {
        None
    };
    let settings = stored
        .as_ref()
        .map(|c| c.settings.clone())
        .unwrap_or(settings);
    let current = state
        .borrow()
        .session
        .as_ref()
        .map(|s| s.settings().clone());
    if current.as_ref() != Some(&settings) {
        prepare(state, &settings).await?;
    }
    let mut session = state
        .borrow_mut()
        .session
        .take()
        .ok_or("choose a data file first")?;
    let result = run_steps(state, &mut session, stored, &slot).await;
    state.borrow_mut().session = Some(session);
    result
}

async fn run_steps(
    state: &Shared,
    session: &mut Session,
    stored: Option<Checkpoint>,
    slot: &str,
) -> Result<(), String> {
    let (scope, control) = {
        let s = state.borrow();
        (s.scope.clone(), s.control.clone())
    };
    control.set(Control::Run);
    if let Some(ckpt) = &stored {
        let s = state.borrow();
        let weights = &s
            .emulator
            .as_ref()
            .ok_or("load the emulator first")?
            .weights;
        session.resume(weights, ckpt).map_err(for_page)?;
        let so_far = &session.trainer.state;
        post(
            &scope,
            &FromWorker::Resumed {
                step: so_far.step,
                losses: so_far.losses.iter().map(|&(_, loss)| loss).collect(),
            },
        );
    }
    let before = session.held_out_loss().await.map_err(for_page)?;
    let phase = if stored.is_some() {
        "at resume"
    } else {
        "before"
    };
    post(
        &scope,
        &FromWorker::Evaluated {
            phase: phase.into(),
            loss: before,
        },
    );
    let before = match stored {
        Some(_) => state.borrow().metrics.held_out_loss_before,
        None => before,
    };
    let mut pool = ready_helpers(state).await;
    let workers = 1 + pool.as_ref().map_or(0, HelperPool::len);
    let mut clock = RunClock::start(session, now_seconds());
    let mut host = Page {
        scope: scope.clone(),
        control,
        slot,
    };
    let outcome = match pool.as_mut() {
        Some(pool) => session.run_with(&mut host, pool, &mut clock).await,
        None => session.run(&mut host, &mut clock).await,
    };
    // Helpers that failed mid-run are let go: the next run (or resume) trains alone.
    match &outcome {
        Err(Error::Helper(why)) => {
            state.borrow_mut().one_core_why =
                Some(one_core(&format!("a helper worker failed ({why})")));
        }
        Err(Error::Device(_)) => {}
        _ => state.borrow_mut().helpers = pool,
    }
    let stopped_early = match outcome {
        Ok(stopped) => stopped,
        Err(Error::Diverged { step, loss }) => {
            return Err(format!(
                "training diverged at step {step} (loss {loss}): the adapters were rolled back to the last good step and saved. Lower the learning rate (e.g. by 10x) and train again, or download what was learned so far"
            ));
        }
        Err(e) => return Err(for_page(e)),
    };
    let ckpt = session.checkpoint().await.map_err(for_page)?;
    save_checkpoint(&ckpt, slot, &scope).await?;
    let after = session.held_out_loss().await.map_err(for_page)?;
    post(
        &scope,
        &FromWorker::Evaluated {
            phase: "after".into(),
            loss: after,
        },
    );
    let mut s = state.borrow_mut();
    let mut metrics = clock.metrics(session, now_seconds(), before, after);
    metrics.backend = Some(match workers {
        1 => s.backend.clone(),
        n => format!("{} x {n} workers", s.backend),
    });
    s.metrics = metrics;
    drop(s);
    post(
        &scope,
        &FromWorker::Finished {
            steps_done: session.trainer.state.step,
            stopped_early,
        },
    );
    Ok(())
}

/// The helper workers, once every one has loaded the emulator (taken out of the state for the
/// run); None when there are none or one failed to load. On the CPU fallback the page is told
/// how many workers train, and why only one when helpers were wanted.
async fn ready_helpers(state: &Shared) -> Option<HelperPool> {
    let (pool, scope, on_cpu) = {
        let mut s = state.borrow_mut();
        (s.helpers.take(), s.scope.clone(), s.max_buffer.is_none())
    };
    let alone = |why: Option<String>| {
        if on_cpu {
            post(
                &scope,
                &FromWorker::Workers {
                    count: 1,
                    note: why,
                },
            );
        }
    };
    let Some(mut pool) = pool else {
        alone(state.borrow().one_core_why.clone());
        return None;
    };
    if let Err(e) = pool.loaded().await {
        let why = match e {
            Error::Helper(why) => why,
            e => e.to_string(),
        };
        let why = one_core(&format!("a helper worker failed ({why})"));
        state.borrow_mut().one_core_why = Some(why.clone());
        alone(Some(why));
        return None;
    }
    post(
        &scope,
        &FromWorker::Workers {
            count: 1 + pool.len(),
            note: None,
        },
    );
    Some(pool)
}

/// The worker's world for the training loop: messages to the page, the page's pause and
/// stop, checkpoints in the browser's storage.
struct Page<'a> {
    scope: DedicatedWorkerGlobalScope,
    control: Rc<Cell<Control>>,
    slot: &'a str,
}

impl RunHost for Page<'_> {
    fn now(&self) -> f64 {
        now_seconds()
    }

    fn control(&self) -> Control {
        self.control.get()
    }

    async fn save(&mut self, checkpoint: Checkpoint) -> crate::error::Result<()> {
        save_checkpoint(&checkpoint, self.slot, &self.scope)
            .await
            .map_err(Error::Invalid)
    }

    fn progress(&mut self, progress: &Progress) {
        post(&self.scope, &FromWorker::Step(progress.clone()));
    }

    async fn paused(&mut self, step: usize) {
        post(&self.scope, &FromWorker::Paused { step });
        while self.control.get() == Control::Pause {
            gloo_timers::future::TimeoutFuture::new(100).await;
        }
    }

    async fn between_steps(&mut self) {
        // Lets the page's messages (pause, stop) in between steps, also on the CPU backend.
        gloo_timers::future::TimeoutFuture::new(0).await;
    }
}

async fn save_checkpoint(
    ckpt: &Checkpoint,
    slot: &str,
    scope: &DedicatedWorkerGlobalScope,
) -> Result<(), String> {
    storage::save(slot, &ckpt.bytes).await?;
    post(
        scope,
        &FromWorker::Checkpointed {
            step: ckpt.state.step,
        },
    );
    Ok(())
}

async fn download(state: &Shared) -> Result<(), String> {
    let scope = state.borrow().scope.clone();
    let session = state.borrow_mut().session.take().ok_or("train first")?;
    let metrics = state.borrow().metrics.clone();
    let file_name = format!(
        "adapter-{}.safetensors",
        crate::short_hash(&session.manifest.weights_sha256, 8)
    );
    let bytes = session.adapter_file(&metrics).await;
    state.borrow_mut().session = Some(session);
    let bytes = bytes.map_err(for_page)?;
    let msg = to_js(&FromWorker::Adapter {
        file_name,
        size: bytes.len(),
    });
    let array = Uint8Array::from(bytes.as_slice());
    attach(&msg, "bytes", &array);
    scope
        .post_message_with_transfer(&msg, &Array::of1(&array.buffer()))
        .map_err(describe)
}
