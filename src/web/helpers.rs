//! Helper workers for the CPU fallback: more Web Workers, each with its own copy of the
//! emulator (a [`Replica`]), that compute shares of every micro-batch while the training worker
//! computes its own ([`crate::replicas`]). Only token ids, weights and gradients travel between
//! them, as messages inside the page; nothing needs cross-origin isolation.
//!
//! The training worker starts them ([`HelperPool`]); a helper is this same wasm module in a
//! worker named [`HELPER_NAME`], running [`serve`].

use std::cell::RefCell;
use std::collections::VecDeque;
use std::rc::Rc;

use burn::tensor::Device;
use js_sys::{Array, Float32Array, Uint8Array};
use serde::{Deserialize, Serialize};
use wasm_bindgen::prelude::*;
use wasm_bindgen_futures::{JsFuture, spawn_local};
use web_sys::{DedicatedWorkerGlobalScope, MessageEvent, Worker, WorkerOptions, WorkerType};

use super::protocol::{attach, field, from_js, to_js};
use super::storage::describe;
use crate::data::Example;
use crate::emulator::{Emulator, EmulatorManifest};
use crate::error::{Error, Result};
use crate::replicas::{FlatTensors, Replica, Replicas, ShareGradients};
use crate::session::Settings;

/// The name a helper worker is started with (its start function looks for it).
pub const HELPER_NAME: &str = "scaleot-helper";

/// At most this many workers train together (the training worker and its helpers): each holds
/// the emulator in f32, and beyond a few the messages cost more than the cores give.
const MAX_WORKERS: usize = 4;

/// What the training worker tells a helper.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case")]
enum ToHelper {
    /// The emulator: its manifest here, its weights file as the payload.
    Emulator { manifest: String },
    /// Build the model a run of these settings trains.
    Configure { settings: Settings },
    /// The gradients of a share of examples ([`share_payload`]: its token ids, loss masks and
    /// the trainable weights when they changed).
    Share { version: u64, total_targets: usize },
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case")]
enum FromHelper {
    /// The helper listens (what is sent before this is held back).
    Started,
    /// The emulator is loaded.
    Loaded,
    /// A share's loss; its gradients as the payload.
    Gradients {
        loss: f32,
    },
    Error {
        message: String,
    },
}

/// Below this many emulator parameters no helpers start unless asked (`?workers=N`): a step
/// then takes a fraction of a second on one core, and the hand-out and collection of shares
/// (0.1-0.2 s a step, measured in docs/results.md) would cost more than a second core gives.
const MIN_PARAMS_FOR_HELPERS: u64 = 20_000_000;

/// How many helpers to start beside the training worker: one per further core (or as the
/// page's `?workers=N` says), as many as the device's memory holds copies of the emulator (each
/// about twice its f32 weights while training), at most [`MAX_WORKERS`] workers in all; none
/// for a small emulator unless asked.
pub fn helper_count(scope: &DedicatedWorkerGlobalScope, manifest: &EmulatorManifest) -> usize {
    let navigator = scope.navigator();
    let asked = super::query_value(&scope.location().search(), "workers")
        .and_then(|n| n.parse::<usize>().ok());
    if asked.is_none() && manifest.emulator_params < MIN_PARAMS_FOR_HELPERS {
        return 0;
    }
    let cores = asked.unwrap_or(navigator.hardware_concurrency() as usize);
    // `deviceMemory` (GiB, Chromium only, rounded down and capped at 8): half of it for us.
    let memory = field(&navigator, "deviceMemory").as_f64().unwrap_or(4.0);
    let per_worker = 2.0 * manifest.emulator_params as f64 * 4.0;
    let by_memory = (memory * 0.5 * (1u64 << 30) as f64 / per_worker.max(1.0)) as usize;
    cores.min(by_memory).clamp(1, MAX_WORKERS) - 1
}

/// A message between the training worker and a helper: its kind and fields (serde) under
/// `msg`, and a typed-array payload (the emulator's bytes, weights, gradients) beside it, so
/// that serde never walks the payload.
fn envelope<T: Serialize>(msg: &T, payload: Option<&JsValue>) -> JsValue {
    let obj: JsValue = js_sys::Object::new().into();
    attach(&obj, "msg", &to_js(msg));
    if let Some(p) = payload {
        attach(&obj, "payload", p);
    }
    obj
}

/// An [`envelope`]'s message and payload (`undefined` when none).
fn open<T: for<'de> Deserialize<'de>>(data: &JsValue) -> std::result::Result<(T, JsValue), String> {
    Ok((from_js(&field(data, "msg"))?, field(data, "payload")))
}

/// Messages that arrived from one helper, and the promise waiting for the next; and until
/// the helper says it started, what is to be sent to it (a worker drops the messages that
/// arrive while its wasm module is still starting).
#[derive(Default)]
struct Inbox {
    queue: VecDeque<JsValue>,
    waiting: Option<js_sys::Function>,
    started: bool,
    unsent: Vec<(JsValue, Array)>,
}

impl Inbox {
    fn deliver(&mut self, data: JsValue) {
        match self.waiting.take() {
            Some(resolve) => drop(resolve.call1(&JsValue::NULL, &data)),
            None => self.queue.push_back(data),
        }
    }
}

struct Helper {
    worker: Worker,
    inbox: Rc<RefCell<Inbox>>,
}

impl Helper {
    fn spawn(script: &str, i: usize) -> std::result::Result<Self, String> {
        let opts = WorkerOptions::new();
        opts.set_type(WorkerType::Module);
        opts.set_name(&format!("{HELPER_NAME}-{i}"));
        let worker = Worker::new_with_options(script, &opts).map_err(describe)?;
        let inbox = Rc::new(RefCell::new(Inbox::default()));
        let (to_inbox, to_worker) = (inbox.clone(), worker.clone());
        let on_message = Closure::<dyn FnMut(MessageEvent)>::new(move |ev: MessageEvent| {
            let data = ev.data();
            if matches!(open(&data), Ok((FromHelper::Started, _))) {
                let unsent = {
                    let mut inbox = to_inbox.borrow_mut();
                    inbox.started = true;
                    std::mem::take(&mut inbox.unsent)
                };
                for (msg, transfer) in unsent {
                    if let Err(e) = to_worker.post_message_with_transfer(&msg, &transfer) {
                        let message = format!("it is unreachable: {}", describe(e));
                        let error = envelope(&FromHelper::Error { message }, None);
                        to_inbox.borrow_mut().deliver(error);
                    }
                }
                return;
            }
            to_inbox.borrow_mut().deliver(data);
        });
        worker.set_onmessage(Some(on_message.as_ref().unchecked_ref()));
        on_message.forget();
        // A helper that fails to start (its script, its memory) answers with an error.
        let to_inbox = inbox.clone();
        let on_error = Closure::<dyn FnMut(web_sys::Event)>::new(move |ev: web_sys::Event| {
            let message = field(&ev, "message")
                .as_string()
                .unwrap_or_else(|| "a helper worker failed".into());
            let error = envelope(&FromHelper::Error { message }, None);
            to_inbox.borrow_mut().deliver(error);
        });
        worker.set_onerror(Some(on_error.as_ref().unchecked_ref()));
        on_error.forget();
        Ok(Self { worker, inbox })
    }

    /// Sends `msg` with an optional payload and the buffers to transfer with it.
    fn send(&self, msg: &ToHelper, payload: Option<(&JsValue, Array)>) -> Result<()> {
        let (value, transfer) = match payload {
            None => (envelope(msg, None), Array::new()),
            Some((payload, transfer)) => (envelope(msg, Some(payload)), transfer),
        };
        let mut inbox = self.inbox.borrow_mut();
        if !inbox.started {
            inbox.unsent.push((value, transfer));
            return Ok(());
        }
        self.worker
            .post_message_with_transfer(&value, &transfer)
            .map_err(|e| Error::Helper(format!("it is unreachable: {}", describe(e))))
    }

    /// The helper's next message and its payload.
    async fn next(&self) -> Result<(FromHelper, JsValue)> {
        let queued = self.inbox.borrow_mut().queue.pop_front();
        let data = match queued {
            Some(d) => d,
            None => {
                let inbox = self.inbox.clone();
                let promise = js_sys::Promise::new(&mut |resolve, _| {
                    inbox.borrow_mut().waiting = Some(resolve);
                });
                JsFuture::from(promise)
                    .await
                    .map_err(|e| Error::Helper(describe(e)))?
            }
        };
        let (msg, payload) = open(&data).map_err(Error::Helper)?;
        if let FromHelper::Error { message } = &msg {
            return Err(Error::Helper(message.clone()));
        }
        Ok((msg, payload))
    }
}

/// The training worker's helpers, started for one emulator.
pub struct HelperPool {
    helpers: Vec<Helper>,
    /// Whether every helper has said it loaded the emulator.
    loaded: bool,
    holds: Option<u64>,
    /// How many helpers got a share in the last hand-out.
    handed: usize,
}

impl HelperPool {
    /// Starts `n` helpers from `script` (the training worker's own script) and sends each the
    /// emulator; they load it in the background.
    pub fn start(
        n: usize,
        script: &str,
        manifest: &str,
        weights: &[u8],
    ) -> std::result::Result<Self, String> {
        let mut helpers = Vec::with_capacity(n);
        for i in 0..n {
            let helper = Helper::spawn(script, i)?;
            let bytes = Uint8Array::from(weights);
            helper
                .send(
                    &ToHelper::Emulator {
                        manifest: manifest.to_owned(),
                    },
                    Some((&bytes, Array::of1(&bytes.buffer()))),
                )
                .map_err(|e| e.to_string())?;
            helpers.push(helper);
        }
        Ok(Self {
            helpers,
            loaded: false,
            holds: None,
            handed: 0,
        })
    }

    /// Waits until every helper has loaded the emulator (or says why one could not); at once
    /// when they have.
    pub async fn loaded(&mut self) -> Result<()> {
        if self.loaded {
            return Ok(());
        }
        for h in &self.helpers {
            match h.next().await? {
                (FromHelper::Loaded, _) => {}
                (other, _) => {
                    return Err(Error::Helper(format!(
                        "it answered {other:?} while loading"
                    )));
                }
            }
        }
        self.loaded = true;
        Ok(())
    }

    /// Has every helper build the model of a run with `settings`.
    pub fn configure(&mut self, settings: &Settings) -> Result<()> {
        self.holds = None;
        for h in &self.helpers {
            h.send(
                &ToHelper::Configure {
                    settings: settings.clone(),
                },
                None,
            )?;
        }
        Ok(())
    }

    pub fn len(&self) -> usize {
        self.helpers.len()
    }

    pub fn is_empty(&self) -> bool {
        self.helpers.is_empty()
    }
}

impl Drop for HelperPool {
    fn drop(&mut self) {
        for h in &self.helpers {
            h.worker.terminate();
        }
    }
}

impl Replicas for HelperPool {
    fn count(&self) -> usize {
        self.helpers.len()
    }

    fn holds(&self) -> Option<u64> {
        self.holds
    }

    fn hand_out(
        &mut self,
        version: u64,
        weights: Option<FlatTensors>,
        shares: Vec<Vec<Example>>,
        total_targets: usize,
    ) -> Result<()> {
        if self.handed != 0 {
            // The last shares' results were never collected (that step failed): their
            // answers would be taken for these.
            return Err(Error::Helper(
                "the helpers fell out of step with the trainer".into(),
            ));
        }
        if weights.is_some() {
            // Helpers without a share this time keep their old weights.
            self.holds = (shares.len() == self.helpers.len()).then_some(version);
        }
        self.handed = shares.len();
        for (h, examples) in self.helpers.iter().zip(shares) {
            let msg = ToHelper::Share {
                version,
                total_targets,
            };
            let (payload, transfer) = share_payload(&examples, weights.as_ref());
            h.send(&msg, Some((&payload, transfer)))?;
        }
        Ok(())
    }

    async fn collect(&mut self) -> Result<Vec<ShareGradients>> {
        let mut out = Vec::with_capacity(self.handed);
        for h in &self.helpers[..self.handed] {
            match h.next().await? {
                (FromHelper::Gradients { loss }, grads) => out.push(ShareGradients {
                    loss,
                    grads: from_f32_arrays(&grads),
                }),
                (other, _) => {
                    return Err(Error::Helper(format!(
                        "it answered {other:?} instead of gradients"
                    )));
                }
            }
        }
        self.handed = 0;
        Ok(out)
    }
}

/// A share's examples (concatenated ids and loss masks, and each one's length) and the trainable
/// weights as typed arrays (serde would take ~0.15 s per share through JS values), and the
/// buffers to transfer.
fn share_payload(examples: &[Example], weights: Option<&FlatTensors>) -> (JsValue, Array) {
    let ids: Vec<u32> = examples
        .iter()
        .flat_map(|e| e.ids.iter().copied())
        .collect();
    let mask: Vec<u8> = examples
        .iter()
        .flat_map(|e| e.loss.iter().map(|&b| b as u8))
        .collect();
    let lens: Vec<u32> = examples.iter().map(|e| e.ids.len() as u32).collect();
    let (ids, mask, lens) = (
        js_sys::Uint32Array::from(ids.as_slice()),
        Uint8Array::from(mask.as_slice()),
        js_sys::Uint32Array::from(lens.as_slice()),
    );
    let transfer = Array::of3(&ids.buffer(), &mask.buffer(), &lens.buffer());
    let payload: JsValue = js_sys::Object::new().into();
    attach(&payload, "ids", &ids);
    attach(&payload, "mask", &mask);
    attach(&payload, "lens", &lens);
    if let Some(w) = weights {
        let (arrays, buffers) = to_f32_arrays(w);
        attach(&payload, "weights", &arrays);
        for b in buffers.iter() {
            transfer.push(&b);
        }
    }
    (payload, transfer)
}

/// The examples and weights of a [`share_payload`] (checked: a helper trusts no message).
fn open_share(payload: &JsValue) -> Result<(Vec<Example>, Option<FlatTensors>)> {
    let typed = |key: &str| field(payload, key);
    let ids = js_sys::Uint32Array::new(&typed("ids")).to_vec();
    let mask = Uint8Array::new(&typed("mask")).to_vec();
    let lens = js_sys::Uint32Array::new(&typed("lens")).to_vec();
    let total: usize = lens.iter().map(|&n| n as usize).sum();
    if ids.len() != total || mask.len() != total {
        return Err(Error::Invalid(format!(
            "a share of {total} tokens came with {} ids and {} loss flags",
            ids.len(),
            mask.len()
        )));
    }
    let mut examples = Vec::with_capacity(lens.len());
    let mut at = 0;
    for n in lens {
        let end = at + n as usize;
        examples.push(Example {
            ids: ids[at..end].to_vec(),
            loss: mask[at..end].iter().map(|&b| b != 0).collect(),
        });
        at = end;
    }
    let weights = typed("weights");
    let weights = (!weights.is_undefined()).then(|| from_f32_arrays(&weights));
    Ok((examples, weights))
}

/// Flat tensors as an array of `Float32Array`s, and the buffers to transfer.
fn to_f32_arrays(flat: &FlatTensors) -> (JsValue, Array) {
    let arrays = Array::new();
    let transfer = Array::new();
    for v in flat {
        let a = Float32Array::from(v.as_slice());
        transfer.push(&a.buffer());
        arrays.push(&a);
    }
    (arrays.into(), transfer)
}

fn from_f32_arrays(value: &JsValue) -> FlatTensors {
    Array::from(value)
        .iter()
        .map(|a| Float32Array::from(a).to_vec())
        .collect()
}

/// A helper worker's life: load the emulator, build the model for each run's settings, and
/// answer every share with its loss and gradients.
pub fn serve(scope: DedicatedWorkerGlobalScope) {
    struct Held {
        emulator: Option<Emulator>,
        replica: Option<Replica>,
    }
    let state = Rc::new(RefCell::new(Held {
        emulator: None,
        replica: None,
    }));
    let reply_to = scope.clone();
    let reply = move |msg: &FromHelper, payload: Option<(JsValue, Array)>| {
        let _ = match payload {
            None => reply_to.post_message(&envelope(msg, None)),
            Some((payload, transfer)) => {
                reply_to.post_message_with_transfer(&envelope(msg, Some(&payload)), &transfer)
            }
        };
    };
    // Messages are handled one at a time, in order (a share waits for the weights before it).
    let queue: Rc<RefCell<VecDeque<JsValue>>> = Rc::default();
    let busy = Rc::new(std::cell::Cell::new(false));
    let on_message = Closure::<dyn FnMut(MessageEvent)>::new(move |ev: MessageEvent| {
        queue.borrow_mut().push_back(ev.data());
        if busy.replace(true) {
            return;
        }
        let (queue, busy, state, reply) =
            (queue.clone(), busy.clone(), state.clone(), reply.clone());
        spawn_local(async move {
            loop {
                let next = queue.borrow_mut().pop_front();
                let Some(data) = next else { break };
                let outcome = handle(&state, &data).await;
                match outcome {
                    Ok(Some((msg, payload))) => reply(&msg, payload),
                    Ok(None) => {}
                    Err(e) => reply(
                        &FromHelper::Error {
                            message: e.to_string(),
                        },
                        None,
                    ),
                }
            }
            busy.set(false);
        });
    });
    scope.set_onmessage(Some(on_message.as_ref().unchecked_ref()));
    on_message.forget();
    let _ = scope.post_message(&envelope(&FromHelper::Started, None));

    type Reply = Option<(FromHelper, Option<(JsValue, Array)>)>;
    async fn handle(state: &Rc<RefCell<Held>>, data: &JsValue) -> Result<Reply> {
        let (msg, payload): (ToHelper, _) = open(data).map_err(Error::Invalid)?;
        match msg {
            ToHelper::Emulator { manifest } => {
                let bytes = Uint8Array::new(&payload).to_vec();
                let emulator = Emulator::load(&manifest, &bytes, &Device::flex().autodiff())?;
                state.borrow_mut().emulator = Some(emulator);
                Ok(Some((FromHelper::Loaded, None)))
            }
            ToHelper::Configure { settings } => {
                let mut s = state.borrow_mut();
                let emulator = s
                    .emulator
                    .as_ref()
                    .ok_or_else(|| Error::Invalid("no emulator loaded".into()))?;
                let replica = crate::session::replica(emulator, &settings)?;
                s.replica = Some(replica);
                Ok(None)
            }
            ToHelper::Share {
                version,
                total_targets,
            } => {
                let (examples, weights) = open_share(&payload)?;
                let mut replica = state
                    .borrow_mut()
                    .replica
                    .take()
                    .ok_or_else(|| Error::Invalid("no run configured".into()))?;
                let result = replica
                    .gradients(version, weights.as_ref(), &examples, total_targets)
                    .await;
                state.borrow_mut().replica = Some(replica);
                let share = result?;
                let (grads, transfer) = to_f32_arrays(&share.grads);
                Ok(Some((
                    FromHelper::Gradients { loss: share.loss },
                    Some((grads, transfer)),
                )))
            }
        }
    }
}
