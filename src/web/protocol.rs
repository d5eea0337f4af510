//! Messages between the page (UI thread) and the training worker. Structured parts travel
//! through serde-wasm-bindgen; files and byte buffers ride beside them as JS properties
//! (`files`, `bytes`) so that they are handed over, not copied through serde.

use serde::{Deserialize, Serialize};
use wasm_bindgen::prelude::*;

use crate::session::Progress;
use crate::session::{Estimate, Settings};

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case")]
pub enum ToWorker {
    /// Fetch the emulator from the serving origin (`emulator.json` + `emulator.safetensors`).
    LoadServedEmulator,
    /// Read the emulator from the two local files in `files`.
    LoadLocalEmulator,
    /// Read the private data file in `files[0]`, with the settings chosen so far.
    LoadData {
        name: String,
        settings: Settings,
    },
    /// New settings before training: tokenize again and re-estimate.
    Configure {
        settings: Settings,
    },
    /// Train (from the stored checkpoint when `resume`).
    Train {
        settings: Settings,
        resume: bool,
    },
    Pause,
    Resume,
    Stop,
    /// Build the adapter file and send it back.
    Download,
    ForgetCheckpoint,
}

/// What the page shows about the emulator.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct EmulatorInfo {
    pub method: String,
    pub emulator_params: u64,
    pub full_params: u64,
    pub bytes: u64,
    pub sha256: String,
    pub adapter_layers: Vec<usize>,
    pub kept_layers: usize,
    pub total_layers: usize,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DataInfo {
    pub format: String,
    pub train_examples: usize,
    pub train_target_tokens: usize,
    pub held_out_examples: usize,
    pub estimate: Estimate,
    /// A problem with these settings on this device (e.g. a buffer over the GPU's limit).
    pub warning: Option<String>,
    /// A stored checkpoint of a run on this emulator and data: its step and settings.
    pub checkpoint: Option<(usize, Settings)>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case")]
pub enum FromWorker {
    /// The worker is up; `backend` is what trains (`WebGPU` or the CPU fallback).
    Ready {
        backend: String,
        notice: Option<String>,
    },
    Loading {
        what: String,
        done: f64,
        total: f64,
    },
    EmulatorLoaded(EmulatorInfo),
    /// No emulator is served here; the page asks for local files.
    NoServedEmulator {
        reason: String,
    },
    DataLoaded(DataInfo),
    /// How many workers train on the CPU fallback (this one and its helpers), and why only
    /// one when helpers could not be used.
    Workers {
        count: usize,
        note: Option<String>,
    },
    Evaluated {
        phase: String,
        loss: Option<f64>,
    },
    /// A finished optimizer step (its `first_step_seconds` counts from pressing train:
    /// shader compilation included).
    Step(Progress),
    Checkpointed {
        step: usize,
    },
    /// Training continues from a checkpoint at `step`; `losses` are the steps' losses so far,
    /// so the page's curve continues too.
    Resumed {
        step: usize,
        losses: Vec<f32>,
    },
    Paused {
        step: usize,
    },
    Finished {
        steps_done: usize,
        stopped_early: bool,
    },
    /// The adapter file rides in `bytes`.
    Adapter {
        file_name: String,
        size: usize,
    },
    Error {
        message: String,
    },
}

pub fn to_js<T: Serialize>(msg: &T) -> JsValue {
    // Plain maps become JS objects (not `Map`s) so either side can read fields directly.
    let ser = serde_wasm_bindgen::Serializer::json_compatible();
    msg.serialize(&ser)
        .unwrap_or_else(|e| JsValue::from_str(&e.to_string()))
}

pub fn from_js<T: for<'de> Deserialize<'de>>(value: &JsValue) -> Result<T, String> {
    serde_wasm_bindgen::from_value(value.clone()).map_err(|e| format!("bad message: {e}"))
}

/// Sets a property on a message object (files, bytes).
pub fn attach(msg: &JsValue, key: &str, value: &JsValue) {
    let _ = js_sys::Reflect::set(msg, &JsValue::from_str(key), value);
}

pub fn field(msg: &JsValue, key: &str) -> JsValue {
    js_sys::Reflect::get(msg, &JsValue::from_str(key)).unwrap_or(JsValue::UNDEFINED)
}
