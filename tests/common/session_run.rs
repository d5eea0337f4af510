//! One short run of the browser's training session on the tiny emulator: the scenario that
//! the native test and the WebGPU test (tests/web_session.rs) both run, so that their losses
//! can be compared against one golden file (tests/golden/tiny_session.json).
#![allow(dead_code)]

use burn::tensor::Device;
use scaleot::emulator::Emulator;
use scaleot::session::{Checkpoint, Session, Settings};

use super::tiny::{bundle, tiny_model_bytes};

pub const DATA: &str = include_str!("../fixtures/notes-sample.jsonl");

pub fn settings() -> Settings {
    Settings {
        steps: 6,
        batch_size: 2,
        lr: 1e-2,
        warmup: 1,
        seq_len: 128,
        held_out: 0.25,
        lora_rank: 4,
        seed: 0,
        truncate: true,
        eval_examples: 8,
        ..Settings::default()
    }
}

/// The tiny emulator (adapters 1+1, 2 of 4 middle layers kept) as (manifest JSON, weights).
pub fn tiny_emulator() -> (String, Vec<u8>) {
    let (weights, manifest) = bundle(&tiny_model_bytes(), 2);
    (serde_json::to_string(&manifest).unwrap(), weights)
}

pub struct Run {
    pub before: f64,
    pub after: f64,
    pub losses: Vec<f32>,
}

/// Trains the session for its steps on `device` (an autodiff device), reading back
/// asynchronously as the browser must.
pub async fn run(device: &Device) -> (Session, Run) {
    let (json, weights) = tiny_emulator();
    run_on(&Emulator::load(&json, &weights, device).unwrap()).await
}

/// [`run`] on an emulator already loaded (on an autodiff device).
pub async fn run_on(emu: &Emulator) -> (Session, Run) {
    let mut session = Session::new(emu, DATA.as_bytes(), "notes.jsonl", &settings()).unwrap();
    let before = session.held_out_loss().await.unwrap().unwrap();
    let mut losses = Vec::new();
    while !session.finished() {
        if let Some(r) = session.step().await.unwrap() {
            losses.push(r.loss);
        }
    }
    let after = session.held_out_loss().await.unwrap().unwrap();
    (
        session,
        Run {
            before,
            after,
            losses,
        },
    )
}

/// The same run stopped after `stop_at` steps with a checkpoint (everything read back
/// asynchronously), resumed from the checkpoint's bytes in a fresh session and finished: equal
/// to an uninterrupted [`run`] when the checkpoint carries the whole state.
pub async fn run_resumed(device: &Device, stop_at: usize) -> Run {
    let (json, weights) = tiny_emulator();
    let emu = Emulator::load(&json, &weights, device).unwrap();
    let session = || Session::new(&emu, DATA.as_bytes(), "notes.jsonl", &settings()).unwrap();
    let mut first = session();
    let before = first.held_out_loss().await.unwrap().unwrap();
    let mut losses = Vec::new();
    while first.trainer.state.step < stop_at {
        if let Some(r) = first.step().await.unwrap() {
            losses.push(r.loss);
        }
    }
    let saved = first.checkpoint().await.unwrap();
    let restored = Checkpoint::from_bytes(saved.bytes).unwrap();
    assert!(restored.optimizer.is_some());
    let mut second = session();
    second.resume(&weights, &restored).unwrap();
    while !second.finished() {
        if let Some(r) = second.step().await.unwrap() {
            losses.push(r.loss);
        }
    }
    let after = second.held_out_loss().await.unwrap().unwrap();
    Run {
        before,
        after,
        losses,
    }
}

/// The golden run as (before, after, losses).
pub fn golden(text: &str) -> Run {
    let v: serde_json::Value = serde_json::from_str(text).unwrap();
    Run {
        before: v["held_out_before"].as_f64().unwrap(),
        after: v["held_out_after"].as_f64().unwrap(),
        losses: v["losses"]
            .as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_f64().unwrap() as f32)
            .collect(),
    }
}

/// Largest absolute difference between two runs' numbers.
pub fn max_diff(a: &Run, b: &Run) -> f64 {
    assert_eq!(a.losses.len(), b.losses.len());
    a.losses
        .iter()
        .zip(&b.losses)
        .map(|(x, y)| (x - y).abs() as f64)
        .fold(
            (a.before - b.before).abs().max((a.after - b.after).abs()),
            f64::max,
        )
}
