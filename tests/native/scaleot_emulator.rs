//! The model owner's emulator builders on a tiny random LLaMA: Offsite-Tuning's distillation,
//! ScaleOT's Dynamic LayerReplace (harmonizers + RL importance), and bundles holding
//! harmonizer and low-rank layers.

use crate::common;

use burn::tensor::Device;
use common::tiny::{all_weights, logits, max_abs_diff, tiny_model_bytes, tiny_model_bytes_with};
use std::collections::HashMap;

use scaleot::emulator::{
    AdapterSplit, BundleSpec, Emulator, EmulatorManifest, FrozenDtype, LayerKind, uniform_drop,
    write_bundle,
};
use scaleot::model::{Harmonizer, Llama, ModelBytes};
use scaleot::weights::{HostTensor, HostTensors, Overlay, SafetensorsSource, WeightSource};

#[test]
fn distillation_brings_the_emulator_middle_closer_and_touches_nothing_else() {
    use scaleot::emulator::{DistillConfig, Distiller, LayerKind};
    let device = Device::flex().autodiff();
    let base = tiny_model_bytes();
    let opened = base.open().unwrap();
    let split = AdapterSplit::parse("1+1").unwrap();
    let plan = uniform_drop(6, split, 2).unwrap();
    let teacher = Llama::load(&opened.config, opened.source.as_ref(), &device).unwrap();
    let student =
        scaleot::emulator::load_plan(&opened.config, opened.source.as_ref(), &plan, &device)
            .unwrap();
    let before = all_weights(&student);
    let cfg = DistillConfig {
        steps: 30,
        batch_size: 2,
        lr: 3e-3,
        warmup_steps: 2,
        lm_weight: 1.0,
        kd_weight: 30.0,
    };
    for (lm_weight, kd_weight) in [(-1.0, 30.0), (0.0, 0.0), (f64::NAN, 1.0)] {
        let bad = DistillConfig {
            lm_weight,
            kd_weight,
            ..cfg.clone()
        };
        let t = Llama::load(&opened.config, opened.source.as_ref(), &device).unwrap();
        let s =
            scaleot::emulator::load_plan(&opened.config, opened.source.as_ref(), &plan, &device)
                .unwrap();
        assert!(Distiller::new(t, s, &plan, split, bad).is_err());
    }
    let mut d = Distiller::new(teacher, student, &plan, split, cfg).unwrap();
    let rows: Vec<Vec<u32>> = (0..8u32)
        .map(|r| (0..16).map(|i| (r * 31 + i * 7) % 250 + 3).collect())
        .collect();
    let mut losses = Vec::new();
    for batch in rows.chunks(2).cycle().take(30) {
        let step = d.step(batch).unwrap();
        let lm = first_f32(step.lm.expect("lm_weight 1 computes the LM loss"));
        losses.push((first_f32(step.kd), lm));
    }
    assert!(d.finished());
    let (first, last) = (losses[0], losses[29]);
    assert!(last.0 < first.0 * 0.7, "relative loss {first:?} → {last:?}");
    // Steps 0 and 24 see the same batch: the emulator's LM loss on it went down too.
    assert!(
        losses[24].1 < first.1,
        "LM loss {first:?} → {:?}",
        losses[24]
    );
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
        score_on: scaleot::emulator::replace::ScoreOn::Validation,
        antithetic: false,
        settle: 0,
        rl_steps: None,
        eta: 2.0,
        reward: scaleot::emulator::replace::Reward::Relative,
        lr: 3e-3,
        harmonizer_loss: scaleot::emulator::replace::HarmonizerLoss::Lm,
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
fn run_replace(
    base: &ModelBytes,
    cfg: scaleot::emulator::replace::ReplaceConfig,
) -> (Vec<f64>, Vec<f32>) {
    let steps = cfg.steps;
    let mut r = layer_replace(base, cfg);
    let rows = replace_rows();
    let losses = rows
        .chunks(2)
        .cycle()
        .take(steps)
        .map(|batch| r.iterate(batch, &rows[6..]).unwrap().0)
        .collect();
    assert!(r.finished());
    (r.state.scores.clone(), losses)
}

#[test]
fn layer_replace_scores_the_layer_that_matters_highest() {
    // Middle layers 1..=4; only layer 2 does anything, the others are identities that a
    // fresh harmonizer (also an identity) replaces for free.
    use scaleot::emulator::replace::{HarmonizerLoss, ScoreOn};
    let base = tiny_model_bytes_with(|i| i != 2);
    for (score_on, antithetic, harmonizer_loss) in [
        (ScoreOn::Validation, false, HarmonizerLoss::Lm),
        (ScoreOn::Training, false, HarmonizerLoss::Lm),
        (ScoreOn::Training, true, HarmonizerLoss::Lm),
        (ScoreOn::Validation, false, HarmonizerLoss::Layer),
    ] {
        let cfg = scaleot::emulator::replace::ReplaceConfig {
            score_on,
            antithetic,
            harmonizer_loss,
            ..replace_config(12)
        };
        let (scores, _) = run_replace(&base, cfg.clone());
        let best = (0..scores.len())
            .max_by(|&a, &b| scores[a].total_cmp(&scores[b]))
            .unwrap();
        assert_eq!(
            best + 1,
            2,
            "{score_on:?}: layer 2 must score highest: {scores:?}"
        );
        let least = scaleot::emulator::replace::least_important(&scores, 1, 0.5, None).unwrap();
        assert!(!least.contains(&2), "{score_on:?}: {least:?}");
        // Same seed, same run.
        assert_eq!(run_replace(&base, cfg).0, scores);
    }
}

#[test]
fn scoring_stops_once_settled_or_after_rl_steps_and_keeps_what_it_had() {
    use scaleot::emulator::replace::{ReplaceConfig, ReplaceState, SETTLE_SHARES, least_important};
    let base = tiny_model_bytes_with(|i| i != 2);
    let steps = 40;
    let rows = replace_rows();
    let run = |cfg: ReplaceConfig| -> ReplaceState {
        let mut r = layer_replace(&base, cfg);
        for batch in rows.chunks(2).cycle().take(steps) {
            r.iterate(batch, &rows[6..]).unwrap();
        }
        r.state
    };
    let full = run(replace_config(steps));
    assert_eq!(full.settled_at, None);
    let settled = run(ReplaceConfig {
        settle: 3,
        ..replace_config(steps)
    });
    let at = settled
        .settled_at
        .expect("the ranking should settle in 40 steps");
    assert!(at + 1 < steps, "settled only at the end: {at}");
    let budget = run(ReplaceConfig {
        rl_steps: Some(7),
        ..replace_config(steps)
    });
    assert_eq!(budget.settled_at, None);
    for (state, last) in [(&settled, at), (&budget, 6)] {
        // Up to the last RL step it is the same run as the full one...
        assert_eq!(state.score_history[..=last], full.score_history[..=last]);
        // ...after it no score moves (the candidate passes are skipped), while the harmonizer
        // steps go on under masks from the frozen scores (another path than the full run's).
        for scores in &state.score_history[last..] {
            assert_eq!(scores, &state.score_history[last]);
        }
        assert_ne!(state.history[last + 1..], full.history[last + 1..]);
        // The layer that matters is kept at half the middle layers.
        let replaced = least_important(&state.scores, 1, 0.5, None).unwrap();
        assert!(!replaced.contains(&2), "{replaced:?}");
    }
    // Settled: the replaced layers at every share held still through the last 3 RL steps.
    let replaced = |scores: &[f64]| -> Vec<Vec<usize>> {
        SETTLE_SHARES
            .iter()
            .map(|&a| least_important(scores, 1, a, None).unwrap())
            .collect()
    };
    if let Some(earlier) = at.checked_sub(3) {
        assert_eq!(
            replaced(&full.score_history[earlier]),
            replaced(&settled.score_history[at])
        );
    }
    let no_scoring = ReplaceConfig {
        rl_steps: Some(0),
        ..replace_config(steps)
    };
    assert!(no_scoring.validate().is_err());
}

#[test]
fn training_scored_candidates_equal_separate_passes_before_the_update() {
    // Two runs in the same state: one takes the combined step, the other first scores the
    // step's masks by plain forward passes with the harmonizers not yet updated.
    let cfg = scaleot::emulator::replace::ReplaceConfig {
        candidates: 16,
        loss_stride: 3,
        score_on: scaleot::emulator::replace::ScoreOn::Training,
        antithetic: true,
        ..replace_config(4)
    };
    let base = tiny_model_bytes();
    let (mut a, mut b) = (layer_replace(&base, cfg.clone()), layer_replace(&base, cfg));
    for batch in replace_rows().chunks(2).take(4) {
        let scored = a.harmonizer_and_rl_step(batch).unwrap();
        let distinct: std::collections::BTreeSet<_> = scored.masks.iter().collect();
        assert!(distinct.len() < scored.masks.len(), "{:?}", scored.masks);
        assert_eq!(scored.lm as f64, scored.losses[0]);
        // Antithetic pairs (groups of two): the twin keeps exactly what its draw replaces.
        for pair in scored.masks.chunks(2) {
            let flipped: Vec<bool> = pair[0].iter().map(|k| !k).collect();
            assert_eq!(pair[1], flipped);
        }
        for (mask, loss) in scored.masks.iter().zip(&scored.losses) {
            let alone = b.mask_loss(batch, mask).unwrap();
            assert!((alone - loss).abs() < 1e-5, "{mask:?}: {alone} vs {loss}");
        }
        let again = b.harmonizer_and_rl_step(batch).unwrap();
        assert_eq!(again.losses, scored.losses);
        assert_eq!(a.state.scores, b.state.scores);
        a.complete_step(scored.lm, scored.mean).unwrap();
        b.complete_step(again.lm, again.mean).unwrap();
    }
    assert_ne!(a.state.scores, vec![0.0; a.state.scores.len()]);
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
    let (_, losses) = run_replace(&tiny_model_bytes(), replace_config(30));
    let first = losses[..5].iter().sum::<f32>() / 5.0;
    let last = losses[25..].iter().sum::<f32>() / 5.0;
    assert!(last < first - 0.05, "mixed-network loss {first} → {last}");
}

#[test]
fn layer_wise_harmonizers_learn_their_layers_and_the_mixed_network_gains() {
    use scaleot::emulator::replace::{HarmonizerLoss, ReplaceConfig, ScoreOn};
    let cfg = ReplaceConfig {
        harmonizer_loss: HarmonizerLoss::Layer,
        lr: 3e-2,
        ..replace_config(30)
    };
    let base = tiny_model_bytes();
    let rows = replace_rows();
    // Layers 1 and 3 replaced, 2 and 4 kept: one fixed mixed network, before and after.
    let mask = [false, true, false, true];
    let mut r = layer_replace(&base, cfg.clone());
    let fresh = r.mask_loss(&rows[6..], &mask).unwrap();
    let mut errors = Vec::new();
    for batch in rows.chunks(2).cycle().take(30) {
        errors.push(r.iterate(batch, &rows[6..]).unwrap().0);
    }
    // A fresh harmonizer is the identity: its error is all that its layer adds, exactly 1.
    assert!((errors[0] - 1.0).abs() < 1e-4, "{errors:?}");
    let last = errors[25..].iter().sum::<f32>() / 5.0;
    assert!(last < 0.9, "relative layer error 1 → {last}: {errors:?}");
    let trained = r.mask_loss(&rows[6..], &mask).unwrap();
    assert!(
        trained < fresh - 0.01,
        "mixed-network loss {fresh} → {trained}"
    );
    // No LM pass to reuse: scoring on training batches is refused.
    let refused = ReplaceConfig {
        score_on: ScoreOn::Training,
        ..cfg
    };
    assert!(refused.validate().is_err());
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
    let err = scaleot::emulator::load_plan(
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
        let [u, v] = scaleot::names::lowrank_factors(&module);
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
    let low = bundle_with(&base, plan([Dropped, LowRank, Dropped, Raw]), extra.clone());
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
    // SRC on some projections only (--src-projections q,k): v and o stay dense.
    extra.retain(|name, _| name.contains(".q_proj.") || name.contains(".k_proj."));
    let some = bundle_with(&base, plan([Dropped, LowRank, Dropped, Raw]), extra);
    assert!(max_abs_diff(&raw, &emulator_logits(&some)) < 1e-5);
    let stored = SafetensorsSource::new(&[&some.0]).unwrap();
    for (name, present) in [
        ("model.layers.2.self_attn.k_proj.lowrank_v.weight", true),
        ("model.layers.2.self_attn.k_proj.weight", false),
        ("model.layers.2.self_attn.v_proj.weight", true),
        ("model.layers.2.self_attn.v_proj.lowrank_u.weight", false),
    ] {
        assert_eq!(stored.tensor(name).unwrap().is_some(), present, "{name}");
    }
}

/// An importance run resumed from its checkpoint file continues exactly as if it had not
/// stopped; a damaged checkpoint, or one of another run, is refused.
#[test]
fn importance_checkpoints_resume_exactly_and_refuse_damage() {
    use scaleot::emulator::importance::{checkpoint_file, resume};
    let base = tiny_model_bytes();
    let corpus = serde_json::json!({"files": ["rows"]});
    let rows = replace_rows();
    let batches: Vec<&[Vec<u32>]> = rows.chunks(2).cycle().take(6).collect();
    let mut whole = layer_replace(&base, replace_config(6));
    for b in &batches {
        whole.iterate(b, &rows[6..]).unwrap();
    }
    let mut first = layer_replace(&base, replace_config(6));
    for b in &batches[..3] {
        first.iterate(b, &rows[6..]).unwrap();
    }
    let file = checkpoint_file(&first, &corpus).unwrap();
    let fresh = || {
        let opened = base.open().unwrap();
        Llama::load(
            &opened.config,
            opened.source.as_ref(),
            &Device::flex().autodiff(),
        )
        .unwrap()
    };
    let mut resumed = resume(fresh(), replace_config(6), &corpus, &file).unwrap();
    assert_eq!(resumed.state.step, 3);
    for b in &batches[3..] {
        resumed.iterate(b, &rows[6..]).unwrap();
    }
    assert_eq!(resumed.state.scores, whole.state.scores);
    assert_eq!(resumed.state.history, whole.state.history);
    let refusal = |bytes: &[u8], cfg| {
        resume(fresh(), cfg, &corpus, bytes)
            .err()
            .unwrap()
            .to_string()
    };
    let mut flipped = file.clone();
    let last = flipped.len() - 1;
    flipped[last] ^= 1;
    let err = refusal(&flipped, replace_config(6));
    assert!(err.contains("importance checkpoint is damaged"), "{err}");
    let other = scaleot::emulator::replace::ReplaceConfig {
        lr: 1e-2,
        ..replace_config(6)
    };
    assert!(refusal(&file, other).contains("belongs to another run"));
}
