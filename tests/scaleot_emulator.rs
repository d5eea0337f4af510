//! The model owner's emulator builders on a tiny random LLaMA: Offsite-Tuning's distillation,
//! ScaleOT's Dynamic LayerReplace (harmonizers + RL importance), and bundles holding
//! harmonizer and low-rank layers.

mod common;

use burn::tensor::Device;
use common::tiny::{all_weights, logits, max_abs_diff, tiny_model_bytes, tiny_model_bytes_with};
use std::collections::HashMap;

use scaleot::emulator::{
    AdapterSplit, BundleSpec, Emulator, EmulatorManifest, FrozenDtype, LayerKind, uniform_drop,
    write_bundle,
};
use scaleot::model::{Harmonizer, Llama, ModelBytes};
use scaleot::weights::{
    HostTensor, HostTensors, Overlay, SafetensorsSource, WeightSource, lowrank_names,
};

#[test]
fn distillation_brings_the_emulator_middle_closer_and_touches_nothing_else() {
    use scaleot::emulator::{DistillConfig, Distiller, LayerKind};
    let device = Device::flex().autodiff();
    let base = tiny_model_bytes();
    let opened = base.open().unwrap();
    let split = AdapterSplit::parse("1+1").unwrap();
    let plan = uniform_drop(6, split, 2).unwrap();
    let teacher = Llama::load(&opened.config, opened.source.as_ref(), &device).unwrap();
    let student = Llama::load_plan(&opened.config, opened.source.as_ref(), &plan, &device).unwrap();
    let before = all_weights(&student);
    let cfg = DistillConfig {
        steps: 30,
        batch_size: 2,
        lr: 3e-3,
        warmup_steps: 2,
    };
    let mut d = Distiller::new(teacher, student, &plan, split, cfg).unwrap();
    let rows: Vec<Vec<u32>> = (0..8u32)
        .map(|r| (0..16).map(|i| (r * 31 + i * 7) % 250 + 3).collect())
        .collect();
    let mut losses = Vec::new();
    for batch in rows.chunks(2).cycle().take(30) {
        let l = first_f32(d.step(batch).unwrap());
        losses.push(l);
    }
    assert!(d.finished());
    let (first, last) = (losses[0], losses[29]);
    assert!(last < first * 0.7, "relative loss {first} → {last}");
    // Only the kept middle layers (original 2 and 3 → here 1..3 in the stack) learned.
    for ((name, x), (_, y)) in before.iter().zip(&all_weights(&d.student)) {
        let middle = plan
            .iter()
            .enumerate()
            .any(|(i, k)| *k == LayerKind::Raw && name.starts_with(&format!("model.layers.{i}.")));
        if middle && name.ends_with("proj.weight") {
            assert_ne!(x, y, "{name} should have learned");
        } else if !middle {
            assert_eq!(x, y, "{name} must stay bit-identical");
        }
    }
}

fn replace_config(steps: usize) -> scaleot::emulator::replace::ReplaceConfig {
    scaleot::emulator::replace::ReplaceConfig {
        adapters: AdapterSplit::parse("1+1").unwrap(),
        rank: 4,
        group: 2,
        candidates: 4,
        steps,
        rl_every: 1,
        loss_stride: 1,
        eta: 2.0,
        reward: scaleot::emulator::replace::Reward::Relative,
        lr: 3e-3,
        seed: 5,
    }
}

fn replace_rows() -> Vec<Vec<u32>> {
    (0..8u32)
        .map(|r| (0..16).map(|i| (r * 31 + i * 7) % 250 + 3).collect())
        .collect()
}

/// The first value of a tensor read back from the device.
fn first_f32(t: burn::tensor::Tensor<1>) -> f32 {
    t.into_data().try_into_vec::<f32>().unwrap()[0]
}

/// Dynamic LayerReplace on `base` (a full model) with `cfg`, on the CPU with autodiff.
fn layer_replace(
    base: &ModelBytes,
    cfg: scaleot::emulator::replace::ReplaceConfig,
) -> scaleot::emulator::replace::LayerReplace {
    let device = Device::flex().autodiff();
    let opened = base.open().unwrap();
    let model = Llama::load(&opened.config, opened.source.as_ref(), &device).unwrap();
    scaleot::emulator::replace::LayerReplace::new(model, cfg, None).unwrap()
}

/// Runs Dynamic LayerReplace on the tiny model; returns (scores, LM losses).
fn run_replace(base: &ModelBytes, steps: usize) -> (Vec<f64>, Vec<f32>) {
    let mut r = layer_replace(base, replace_config(steps));
    let rows = replace_rows();
    let mut losses = Vec::new();
    for batch in rows.chunks(2).cycle().take(steps) {
        let lm = first_f32(r.harmonizer_step(batch).unwrap());
        let val = r.rl_step(&rows[6..]).unwrap();
        r.complete_step(lm, val).unwrap();
        losses.push(lm);
    }
    assert!(r.finished());
    (r.state.scores.clone(), losses)
}

#[test]
fn layer_replace_scores_the_layer_that_matters_highest() {
    // Middle layers 1..=4; only layer 2 does anything, the others are identities that a
    // fresh harmonizer (also an identity) replaces for free.
    let base = tiny_model_bytes_with(|i| i != 2);
    let (scores, _) = run_replace(&base, 12);
    let best = (0..scores.len())
        .max_by(|&a, &b| scores[a].total_cmp(&scores[b]))
        .unwrap();
    assert_eq!(best + 1, 2, "layer 2 must score highest: {scores:?}");
    let least = scaleot::emulator::replace::least_important(&scores, 1, 0.5, None).unwrap();
    assert!(!least.contains(&2), "{least:?}");
    // Same seed, same run.
    assert_eq!(run_replace(&base, 12).0, scores);
}

#[test]
fn shared_candidate_passes_equal_separate_forward_passes() {
    // 16 draws over 4 possible masks (two groups of two, one kept in each): repeats and
    // shared prefixes are certain.
    let cfg = scaleot::emulator::replace::ReplaceConfig {
        candidates: 16,
        rl_every: 2,
        loss_stride: 3,
        ..replace_config(4)
    };
    let mut r = layer_replace(&tiny_model_bytes(), cfg);
    let rows = replace_rows();
    for batch in rows.chunks(2).take(4) {
        let due = r.rl_due();
        let lm = first_f32(r.harmonizer_step(batch).unwrap());
        let (masks, losses) = r.candidate_losses(&rows[6..]).unwrap();
        let distinct: std::collections::BTreeSet<_> = masks.iter().collect();
        assert!(distinct.len() < masks.len(), "{masks:?}");
        for (mask, loss) in masks.iter().zip(&losses) {
            let alone = r.mask_loss(&rows[6..], mask).unwrap();
            assert!((alone - loss).abs() < 1e-6, "{mask:?}: {alone} vs {loss}");
        }
        let before = r.state.scores.clone();
        let val = if due {
            r.rl_step(&rows[6..]).unwrap()
        } else {
            0.0
        };
        assert_eq!(
            due,
            before != r.state.scores,
            "scores move on RL steps only"
        );
        r.complete_step(lm, val).unwrap();
    }
}

#[test]
fn harmonizers_learn_to_stand_in_for_their_layers() {
    let (_, losses) = run_replace(&tiny_model_bytes(), 30);
    let first = losses[..5].iter().sum::<f32>() / 5.0;
    let last = losses[25..].iter().sum::<f32>() / 5.0;
    assert!(last < first - 0.05, "mixed-network loss {first} → {last}");
}

/// A bundle of the tiny model with `plan` and `extra` tensors laid over the base weights.
fn bundle_with(
    base: &ModelBytes,
    plan: Vec<LayerKind>,
    extra: HashMap<String, HostTensor>,
) -> (Vec<u8>, EmulatorManifest) {
    let opened = base.open().unwrap();
    let extra = HostTensors(extra);
    let spec = BundleSpec {
        config: &opened.config,
        tokenizer: &opened.tokenizer,
        plan,
        method: "test".into(),
        params: serde_json::json!({}),
        base_model_sha256: opened.sha256.clone(),
        frozen_dtype: FrozenDtype::F32,
    };
    let src = Overlay {
        top: &extra,
        base: opened.source.as_ref(),
    };
    write_bundle(spec, &src).unwrap()
}

fn emulator_logits(bundle: &(Vec<u8>, EmulatorManifest)) -> Vec<f32> {
    let device = Device::flex();
    let json = serde_json::to_string(&bundle.1).unwrap();
    let emu = Emulator::load(&json, &bundle.0, &device).unwrap();
    logits(&emu.model, &device)
}

/// 1+1 adapters; middle layers 1..=4 as given.
fn plan(middle: [LayerKind; 4]) -> Vec<LayerKind> {
    let mut p = vec![LayerKind::Adapter; 6];
    p[1..5].copy_from_slice(&middle);
    p
}

fn harmonizer_tensors(layer: usize, up_scale: f32) -> HashMap<String, HostTensor> {
    let h = Harmonizer::fresh(layer, 32, 4, 1e-5, 9, &Device::flex());
    let mut out = HashMap::new();
    for (name, shape, t) in h.hf_tensors(layer) {
        let mut data: Vec<f32> = t.into_data().try_into_vec().unwrap();
        if name.ends_with("up_proj.weight") {
            data = (0..data.len())
                .map(|i| up_scale * ((i % 7) as f32 - 3.0))
                .collect();
        }
        out.insert(name, HostTensor { shape, data });
    }
    out
}

#[test]
fn fresh_harmonizers_equal_dropping_and_trained_ones_act() {
    use LayerKind::{Dropped, Harmonizer as H, Raw};
    let base = tiny_model_bytes();
    let dropped = emulator_logits(&bundle_with(
        &base,
        plan([Dropped, Raw, Dropped, Raw]),
        HashMap::new(),
    ));
    let fresh = emulator_logits(&bundle_with(
        &base,
        plan([H, Raw, Dropped, Raw]),
        harmonizer_tensors(1, 0.0),
    ));
    assert!(
        max_abs_diff(&dropped, &fresh) < 1e-6,
        "a zero-initialised harmonizer is the identity"
    );
    let trained = bundle_with(
        &base,
        plan([H, Raw, Dropped, Raw]),
        harmonizer_tensors(1, 0.05),
    );
    let acting = emulator_logits(&trained);
    assert!(
        max_abs_diff(&dropped, &acting) > 1e-3,
        "a harmonizer with weights changes the output"
    );
    // Its parameters are counted: norm + down + up.
    let (_, plain) = bundle_with(&base, plan([Dropped, Raw, Dropped, Raw]), HashMap::new());
    assert_eq!(
        trained.1.emulator_params - plain.emulator_params,
        32 + 2 * 32 * 4
    );
    // A harmonizer layer without its tensors is a clear error.
    let opened = base.open().unwrap();
    let err = Llama::load_plan(
        &opened.config,
        opened.source.as_ref(),
        &plan([H, Raw, Dropped, Raw]),
        &Device::flex(),
    )
    .unwrap_err();
    assert!(err.to_string().contains("harmonizer"), "{err}");
}

#[test]
fn low_rank_layers_are_stored_as_factors_and_load_as_their_product() {
    use LayerKind::{Dropped, LowRank, Raw};
    let base = tiny_model_bytes();
    let opened = base.open().unwrap();
    // Exact factors W = W·I, so the low-rank layer must reproduce the raw one.
    let mut extra = HashMap::new();
    for proj in ["q_proj", "k_proj", "v_proj", "o_proj"] {
        let module = format!("model.layers.2.self_attn.{proj}");
        let w = opened
            .source
            .tensor(&format!("{module}.weight"))
            .unwrap()
            .unwrap();
        let inp = w.shape[1];
        let eye: Vec<f32> = (0..inp * inp)
            .map(|k| if k / inp == k % inp { 1.0 } else { 0.0 })
            .collect();
        let [u, v] = lowrank_names(&module);
        extra.insert(u, w);
        extra.insert(
            v,
            HostTensor {
                shape: vec![inp, inp],
                data: eye,
            },
        );
    }
    let raw = emulator_logits(&bundle_with(
        &base,
        plan([Dropped, Raw, Dropped, Raw]),
        HashMap::new(),
    ));
    let low = bundle_with(&base, plan([Dropped, LowRank, Dropped, Raw]), extra);
    assert!(max_abs_diff(&raw, &emulator_logits(&low)) < 1e-5);
    let stored = SafetensorsSource::new(&[&low.0]).unwrap();
    assert!(
        stored
            .tensor("model.layers.2.self_attn.q_proj.weight")
            .unwrap()
            .is_none()
    );
    assert!(
        stored
            .tensor("model.layers.2.self_attn.q_proj.lowrank_u.weight")
            .unwrap()
            .is_some()
    );
    assert!(
        stored
            .tensor("model.layers.2.mlp.up_proj.weight")
            .unwrap()
            .is_some()
    );
}
