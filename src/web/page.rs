//! The data owner's page: wires the static markup of `www/index.html` to the training worker.
//! The page holds no model; it shows what the worker reports and sends it the user's choices.
//! If the worker dies (a lost GPU device, out of memory), the page offers to restart it and
//! continue from the last checkpoint.

use std::cell::RefCell;
use std::rc::Rc;

use js_sys::{Array, Uint8Array};
use wasm_bindgen::prelude::*;
use web_sys::{
    Document, DragEvent, Element, ErrorEvent, File, HtmlButtonElement, HtmlInputElement,
    HtmlProgressElement, MessageEvent, Worker, WorkerOptions, WorkerType,
};

use super::protocol::{
    DataInfo, EmulatorInfo, FromWorker, ToWorker, attach, field, from_js, to_js,
};
use crate::session::{Progress, Settings};

/// Where the emulator came from, to load it again after a worker restart.
#[derive(Clone)]
enum EmulatorSource {
    Served,
    Local(Array),
}

struct Page {
    doc: Document,
    worker: Worker,
    emulator: EmulatorSource,
    data: Option<File>,
    losses: Vec<f32>,
    /// Seconds from pressing train to the first step (kernel compilation included).
    first_step: Option<f64>,
    /// A run is in progress (settings changes then wait).
    training: bool,
    /// Restarting after the worker died: reload and continue from the checkpoint.
    restarting: bool,
}

type Shared = Rc<RefCell<Page>>;

fn el(doc: &Document, id: &str) -> Element {
    doc.get_element_by_id(id)
        .unwrap_or_else(|| panic!("www/index.html lacks #{id}"))
}

fn button(doc: &Document, id: &str) -> HtmlButtonElement {
    el(doc, id).unchecked_into()
}

fn input(doc: &Document, id: &str) -> HtmlInputElement {
    el(doc, id).unchecked_into()
}

fn set_text(doc: &Document, id: &str, text: &str) {
    el(doc, id).set_text_content(Some(text));
}

fn show(doc: &Document, id: &str, visible: bool) {
    let e = el(doc, id);
    if visible {
        let _ = e.remove_attribute("hidden");
    } else {
        let _ = e.set_attribute("hidden", "");
    }
}

fn enable(doc: &Document, ids: &[&str], on: bool) {
    for id in ids {
        button(doc, id).set_disabled(!on);
    }
}

fn progress(doc: &Document, id: &str, value: f64) {
    el(doc, id)
        .unchecked_into::<HtmlProgressElement>()
        .set_value(value);
}

fn mib(bytes: f64) -> String {
    format!("{:.1} MiB", bytes / 1048576.0)
}

fn duration(secs: f64) -> String {
    let s = secs.max(0.0).round() as u64;
    match s {
        0..60 => format!("{s} s"),
        60..3600 => format!("{} min {} s", s / 60, s % 60),
        _ => format!("{} h {} min", s / 3600, s / 60 % 60),
    }
}

fn on<E: wasm_bindgen::convert::FromWasmAbi + 'static>(
    target: &web_sys::EventTarget,
    event: &str,
    f: impl FnMut(E) + 'static,
) {
    let closure = Closure::<dyn FnMut(E)>::new(f);
    let _ = target.add_event_listener_with_callback(event, closure.as_ref().unchecked_ref());
    closure.forget();
}

/// The training worker, given the page's query (`?workers=N` caps the CPU fallback's workers,
/// `?device=webgpu|cpu` picks the device).
fn spawn_worker() -> Result<Worker, JsValue> {
    let opts = WorkerOptions::new();
    opts.set_type(WorkerType::Module);
    let query = web_sys::window()
        .and_then(|w| w.location().search().ok())
        .unwrap_or_default();
    Worker::new_with_options(&format!("./worker.js{query}"), &opts)
}

pub fn start(doc: Document) -> Result<(), JsValue> {
    let worker = spawn_worker()?;
    let page = Rc::new(RefCell::new(Page {
        doc: doc.clone(),
        worker: worker.clone(),
        emulator: EmulatorSource::Served,
        data: None,
        losses: Vec::new(),
        first_step: None,
        training: false,
        restarting: false,
    }));
    attach_worker(&page, &worker);
    wire_controls(&page, &doc);
    Ok(())
}

fn attach_worker(page: &Shared, worker: &Worker) {
    let p = page.clone();
    on(worker, "message", move |ev: MessageEvent| {
        on_worker_message(&p, ev.data())
    });
    let p = page.clone();
    on(worker, "error", move |ev: ErrorEvent| {
        let doc = p.borrow().doc.clone();
        error(
            &doc,
            &format!(
                "The training worker stopped ({}). The GPU device may have been lost, or memory ran out. Nothing is lost: restart to continue from the last checkpoint.",
                ev.message()
            ),
        );
        show(&doc, "restart-btn", true);
        enable(&doc, &["pause-btn", "continue-btn", "stop-btn"], false);
    });
}

fn send(page: &Shared, msg: &ToWorker, files: Option<&Array>) {
    let value = to_js(msg);
    if let Some(f) = files {
        attach(&value, "files", f);
    }
    if let Err(e) = page.borrow().worker.post_message(&value) {
        error(
            &page.borrow().doc,
            &format!("the worker is not answering: {e:?}"),
        );
    }
}

fn error(doc: &Document, text: &str) {
    set_text(doc, "message", text);
    show(doc, "message", true);
}

fn settings(doc: &Document) -> Settings {
    let d = Settings::default();
    let num = |id: &str| input(doc, id).value().trim().parse::<f64>().ok();
    Settings {
        steps: num("steps").map_or(d.steps, |v| v.max(1.0) as usize),
        batch_size: num("batch").map_or(d.batch_size, |v| v.max(1.0) as usize),
        lr: num("lr").filter(|v| *v > 0.0).unwrap_or(d.lr),
        seq_len: num("seq-len").map_or(d.seq_len, |v| v.max(8.0) as usize),
        lora_rank: num("lora-rank").map_or(d.lora_rank, |v| v.max(0.0) as usize),
        held_out: num("held-out").map_or(d.held_out, |v| v.clamp(0.0, 0.5)),
        ..d
    }
}

fn choose_data(page: &Shared, file: File) {
    let doc = page.borrow().doc.clone();
    show(&doc, "message", false);
    // Refused before it is read: a file larger than the tab's memory must not be loaded first.
    if let Err(e) = crate::data::check_data_size(&file.name(), file.size() as u64) {
        error(&doc, &e.to_string());
        return;
    }
    set_text(
        &doc,
        "data-info",
        &format!(
            "Reading {} ({}) on this machine…",
            file.name(),
            mib(file.size())
        ),
    );
    let files = Array::of1(&file);
    let msg = ToWorker::LoadData {
        name: file.name(),
        settings: settings(&doc),
    };
    send(page, &msg, Some(&files));
    page.borrow_mut().data = Some(file);
}

fn start_training(page: &Shared, resume: bool) {
    let doc = page.borrow().doc.clone();
    show(&doc, "message", false);
    page.borrow_mut().losses.clear();
    page.borrow_mut().first_step = None;
    page.borrow_mut().training = true;
    enable(&doc, &["train-btn", "resume-btn", "download-btn"], false);
    enable(&doc, &["pause-btn", "stop-btn"], true);
    set_text(
        &doc,
        "train-stats",
        "Preparing (the first step compiles GPU kernels)…",
    );
    send(
        page,
        &ToWorker::Train {
            settings: settings(&doc),
            resume,
        },
        None,
    );
}

fn wire_controls(page: &Shared, doc: &Document) {
    let p = page.clone();
    on(
        &input(doc, "emu-files"),
        "change",
        move |_: web_sys::Event| {
            let doc = p.borrow().doc.clone();
            let Some(list) = input(&doc, "emu-files").files() else {
                return;
            };
            let files = Array::from(&list);
            p.borrow_mut().emulator = EmulatorSource::Local(files.clone());
            set_text(&doc, "emu-info", "Reading the emulator files…");
            send(&p, &ToWorker::LoadLocalEmulator, Some(&files));
        },
    );
    let p = page.clone();
    on(
        &input(doc, "data-file"),
        "change",
        move |_: web_sys::Event| {
            let doc = p.borrow().doc.clone();
            if let Some(f) = input(&doc, "data-file").files().and_then(|l| l.get(0)) {
                choose_data(&p, f);
            }
        },
    );
    let drop_zone = el(doc, "drop");
    let zone = drop_zone.clone();
    on(&drop_zone, "dragover", move |ev: DragEvent| {
        ev.prevent_default();
        let _ = zone.class_list().add_1("over");
    });
    let zone = drop_zone.clone();
    on(&drop_zone, "dragleave", move |_: DragEvent| {
        let _ = zone.class_list().remove_1("over");
    });
    let p = page.clone();
    let zone = drop_zone.clone();
    on(&drop_zone, "drop", move |ev: DragEvent| {
        ev.prevent_default();
        let _ = zone.class_list().remove_1("over");
        if let Some(f) = ev
            .data_transfer()
            .and_then(|d| d.files())
            .and_then(|l| l.get(0))
        {
            choose_data(&p, f);
        }
    });
    let click = |id: &str, f: Box<dyn Fn(&Shared)>| {
        let p = page.clone();
        on(&button(doc, id), "click", move |_: web_sys::Event| f(&p));
    };
    for id in ["steps", "batch", "lr", "seq-len", "lora-rank", "held-out"] {
        let p = page.clone();
        on(&input(doc, id), "change", move |_: web_sys::Event| {
            let (ready, doc) = {
                let pg = p.borrow();
                (pg.data.is_some() && !pg.training, pg.doc.clone())
            };
            if ready {
                send(
                    &p,
                    &ToWorker::Configure {
                        settings: settings(&doc),
                    },
                    None,
                );
            }
        });
    }
    click("train-btn", Box::new(|p| start_training(p, false)));
    click("resume-btn", Box::new(|p| start_training(p, true)));
    click(
        "pause-btn",
        Box::new(|p| {
            let doc = p.borrow().doc.clone();
            send(p, &ToWorker::Pause, None);
            enable(&doc, &["pause-btn"], false);
        }),
    );
    click(
        "continue-btn",
        Box::new(|p| {
            let doc = p.borrow().doc.clone();
            send(p, &ToWorker::Resume, None);
            enable(&doc, &["continue-btn"], false);
            enable(&doc, &["pause-btn"], true);
        }),
    );
    click(
        "stop-btn",
        Box::new(|p| {
            let doc = p.borrow().doc.clone();
            send(p, &ToWorker::Stop, None);
            enable(&doc, &["pause-btn", "continue-btn", "stop-btn"], false);
        }),
    );
    click(
        "forget-btn",
        Box::new(|p| {
            let doc = p.borrow().doc.clone();
            send(p, &ToWorker::ForgetCheckpoint, None);
            show(&doc, "ckpt", false);
        }),
    );
    click(
        "download-btn",
        Box::new(|p| send(p, &ToWorker::Download, None)),
    );
    click("restart-btn", Box::new(restart_worker));
}

/// A fresh worker after the old one died; it reloads everything and continues from the
/// checkpoint (see the `restarting` handling of worker messages).
fn restart_worker(page: &Shared) {
    let doc = page.borrow().doc.clone();
    page.borrow().worker.terminate();
    match spawn_worker() {
        Ok(w) => {
            attach_worker(page, &w);
            let mut p = page.borrow_mut();
            p.worker = w;
            p.restarting = true;
            show(&doc, "restart-btn", false);
            show(&doc, "message", false);
            set_text(
                &doc,
                "train-stats",
                "Restarting: reloading the emulator and your data…",
            );
        }
        Err(e) => error(&doc, &format!("could not restart the worker: {e:?}")),
    }
}

fn on_worker_message(page: &Shared, data: JsValue) {
    let doc = page.borrow().doc.clone();
    let msg: FromWorker = match from_js(&data) {
        Ok(m) => m,
        Err(e) => return error(&doc, &e),
    };
    match msg {
        FromWorker::Ready { backend, notice } => {
            set_text(
                &doc,
                "backend",
                &format!("Training device: {backend}. No data leaves this page."),
            );
            if let Some(n) = notice {
                set_text(&doc, "notice", &n);
                show(&doc, "notice", true);
            }
            let source = page.borrow().emulator.clone();
            match source {
                EmulatorSource::Served => send(page, &ToWorker::LoadServedEmulator, None),
                EmulatorSource::Local(files) => {
                    send(page, &ToWorker::LoadLocalEmulator, Some(&files))
                }
            }
        }
        FromWorker::Workers { count, note } => {
            let text = match (count, note) {
                (1, Some(why)) => {
                    format!("Training device: CPU, {why}. No data leaves this page.")
                }
                (1, None) => "Training device: CPU, one core. No data leaves this page.".into(),
                (n, _) => format!(
                    "Training device: CPU, {n} workers sharing each batch. No data leaves this page."
                ),
            };
            set_text(&doc, "backend", &text);
        }
        FromWorker::Loading { what, done, total } => {
            progress(&doc, "emu-progress", done / total.max(1.0));
            let text = if total > 1.0 {
                format!("Loading the {what}: {} of {}", mib(done), mib(total))
            } else {
                format!("{what}…")
            };
            set_text(&doc, "emu-info", &text);
        }
        FromWorker::NoServedEmulator { reason } => {
            set_text(
                &doc,
                "emu-info",
                &format!("{reason}: choose the emulator files the model owner gave you."),
            );
            show(&doc, "emu-local", true);
        }
        FromWorker::EmulatorLoaded(info) => emulator_loaded(page, &info),
        FromWorker::DataLoaded(info) => data_loaded(page, &info),
        FromWorker::Evaluated { phase, loss } => {
            let text = match loss {
                Some(l) => format!("Held-out loss {phase}: {l:.4} (perplexity {:.2})", l.exp()),
                None => "No held-out examples to evaluate (raise the held-out share).".into(),
            };
            let prev = el(&doc, "eval").text_content().unwrap_or_default();
            let joined = if phase == "after" {
                format!("{prev} · {text}")
            } else {
                text
            };
            set_text(&doc, "eval", &joined);
        }
        FromWorker::Step(Progress {
            step,
            steps,
            loss,
            lr,
            tokens_per_second,
            eta_seconds,
            first_step_seconds,
        }) => {
            progress(&doc, "train-progress", step as f64 / steps.max(1) as f64);
            let mut text = format!(
                "step {step}/{steps} · loss {loss:.4} · lr {lr:.1e} · {tokens_per_second:.0} tokens/s · ETA {}",
                duration(eta_seconds)
            );
            if first_step_seconds.is_some() {
                page.borrow_mut().first_step = first_step_seconds;
            }
            if let Some(s) = page.borrow().first_step {
                text.push_str(&format!(" · first step after {s:.1} s"));
            }
            set_text(&doc, "train-stats", &text);
            page.borrow_mut().losses.push(loss);
            draw_losses(&doc, &page.borrow().losses);
        }
        FromWorker::Resumed { step, losses } => {
            set_text(
                &doc,
                "train-stats",
                &format!("Continuing from the checkpoint at step {step}…"),
            );
            page.borrow_mut().losses = losses;
            draw_losses(&doc, &page.borrow().losses);
        }
        FromWorker::Checkpointed { step } => {
            set_text(
                &doc,
                "ckpt-info",
                &format!("Checkpoint saved in this browser at step {step}."),
            );
        }
        FromWorker::Paused { step } => {
            set_text(
                &doc,
                "train-stats",
                &format!("Paused at step {step} (checkpoint saved)."),
            );
            enable(&doc, &["continue-btn", "stop-btn"], true);
        }
        FromWorker::Finished {
            steps_done,
            stopped_early,
        } => {
            let how = if stopped_early { "Stopped" } else { "Finished" };
            let prev = el(&doc, "train-stats").text_content().unwrap_or_default();
            set_text(
                &doc,
                "train-stats",
                &format!("{how} after {steps_done} steps. {prev}"),
            );
            enable(&doc, &["pause-btn", "continue-btn", "stop-btn"], false);
            enable(&doc, &["train-btn", "download-btn"], true);
            page.borrow_mut().training = false;
        }
        FromWorker::Adapter { file_name, size } => {
            save_download(&doc, &field(&data, "bytes"), &file_name, size)
        }
        FromWorker::Error { message } => {
            error(&doc, &message);
            page.borrow_mut().training = false;
            enable(&doc, &["pause-btn", "continue-btn", "stop-btn"], false);
            let has_data = page.borrow().data.is_some();
            enable(&doc, &["train-btn"], has_data);
        }
    }
}

fn emulator_loaded(page: &Shared, info: &EmulatorInfo) {
    let doc = page.borrow().doc.clone();
    progress(&doc, "emu-progress", 1.0);
    show(&doc, "emu-local", false);
    set_text(
        &doc,
        "emu-info",
        &format!(
            "Emulator ready ({}): {:.1}M parameters of the full model's {:.1}M, {} of {} layers kept, {}; adapters on layers {:?}. Integrity checked (sha256 {}…).",
            info.method,
            info.emulator_params as f64 / 1e6,
            info.full_params as f64 / 1e6,
            info.kept_layers,
            info.total_layers,
            mib(info.bytes as f64),
            info.adapter_layers,
            crate::short_hash(&info.sha256, 12)
        ),
    );
    let restarting = page.borrow().restarting;
    let data = page.borrow().data.clone();
    if let (true, Some(file)) = (restarting, data) {
        choose_data(page, file);
    }
}

fn data_loaded(page: &Shared, info: &DataInfo) {
    let doc = page.borrow().doc.clone();
    let e = &info.estimate;
    set_text(
        &doc,
        "data-info",
        &format!(
            "{}: {} training examples ({} tokens to learn), {} held out for evaluation.",
            info.format, info.train_examples, info.train_target_tokens, info.held_out_examples
        ),
    );
    // Time: the run's arithmetic at what integrated and discrete laptop GPUs sustain in
    // practice (about 0.2 and 2 TFLOP/s); the measured ETA replaces it after the first step.
    let mut estimate = format!(
        "Needs about {} of GPU memory ({} weights + {} per batch of {} tokens) and {:.1} TFLOP in all: roughly {} on an integrated GPU, {} on a discrete one.",
        mib(e.total_bytes() as f64),
        mib(e.weight_bytes as f64),
        mib(e.activation_bytes as f64),
        e.tokens_per_step,
        e.total_flops / 1e12,
        duration(e.seconds_at(0.2e12)),
        duration(e.seconds_at(2e12)),
    );
    if let Some(w) = &info.warning {
        estimate.push_str(&format!(" Warning: {w}."));
    }
    set_text(&doc, "estimate", &estimate);
    enable(&doc, &["train-btn"], true);
    match &info.checkpoint {
        Some((step, saved)) => {
            set_text(
                &doc,
                "ckpt-info",
                &format!(
                    "A checkpoint of this emulator and data is stored in this browser (step {step}/{}; it continues with its own settings: batch {}, lr {}, sequence length {}, LoRA rank {}).",
                    saved.steps, saved.batch_size, saved.lr, saved.seq_len, saved.lora_rank
                ),
            );
            show(&doc, "ckpt", true);
            enable(&doc, &["resume-btn"], true);
        }
        None => show(&doc, "ckpt", false),
    }
    let restarting = std::mem::take(&mut page.borrow_mut().restarting);
    if restarting && info.checkpoint.is_some() {
        start_training(page, true);
    }
}

fn draw_losses(doc: &Document, losses: &[f32]) {
    let (lo, hi) = losses
        .iter()
        .fold((f32::MAX, f32::MIN), |(a, b), &x| (a.min(x), b.max(x)));
    let span = (hi - lo).max(1e-6);
    let n = (losses.len().max(2) - 1) as f32;
    let points: Vec<String> = losses
        .iter()
        .enumerate()
        .map(|(i, &l)| {
            format!(
                "{:.1},{:.1}",
                5.0 + 390.0 * i as f32 / n,
                5.0 + 110.0 * (hi - l) / span
            )
        })
        .collect();
    let _ = el(doc, "loss-line").set_attribute("points", &points.join(" "));
    set_text(
        doc,
        "loss-range",
        &format!("training loss per step, from {hi:.3} (top) to {lo:.3} (bottom)"),
    );
}

/// Hands the adapter bytes to the browser's download (a local blob URL; nothing is sent).
fn save_download(doc: &Document, bytes: &JsValue, name: &str, size: usize) {
    let array: Uint8Array = bytes.clone().unchecked_into();
    let parts = Array::of1(&array);
    let opts = web_sys::BlobPropertyBag::new();
    opts.set_type("application/octet-stream");
    let Ok(blob) = web_sys::Blob::new_with_u8_array_sequence_and_options(&parts, &opts) else {
        return error(doc, "the browser could not hold the adapter file");
    };
    let Ok(url) = web_sys::Url::create_object_url_with_blob(&blob) else {
        return error(doc, "the browser could not offer the adapter file");
    };
    let Ok(a) = doc.create_element("a") else {
        return;
    };
    let a: web_sys::HtmlAnchorElement = a.unchecked_into();
    a.set_href(&url);
    a.set_download(name);
    a.click();
    set_text(
        doc,
        "download-info",
        &format!(
            "Saved {name} ({}). Send it to the model owner, who plugs it in with `scaleot plugin --adapter {name}`.",
            mib(size as f64)
        ),
    );
}
