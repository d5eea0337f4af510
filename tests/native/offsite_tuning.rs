//! The data owner's loop on a tiny random LLaMA: emulator bundle, training, adapter file,
//! plug-in, checkpoint/resume, and the refusals that protect each step.

use crate::common;

use common::tiny::{
    all_weights, bundle, load_emulator, logits, max_abs_diff, read_adapter_tensors,
    tiny_model_bytes, tiny_model_edited,
};

use burn::module::Module;
use burn::tensor::Device;
use scaleot::Error;
use scaleot::adapter::{self, Adapter};
use scaleot::data::{self, DataOptions, Example};
use scaleot::emulator::{Emulator, EmulatorManifest};
use scaleot::eval::loglik::ScoringBatch;
use scaleot::model::{Llama, LoraConfig, token_tensor};
use scaleot::tokenizer::Tokenizer;
use scaleot::train::{TrainConfig, Trainer};
use scaleot::weights::safetensors::write_tensors;
use scaleot::weights::{HostTensor, SafetensorsSource, WeightSource};

/// The adapter file an untrained emulator would hand back.
fn untouched_adapter_file(
    emu: &Emulator,
    manifest: &EmulatorManifest,
) -> (Vec<u8>, adapter::AdapterManifest) {
    adapter_file(
        read_adapter_tensors(&emu.model, &manifest.plan),
        manifest,
        None,
    )
}

/// An adapter file of these tensors (no training config or metrics).
fn adapter_file(
    tensors: Vec<(String, HostTensor)>,
    manifest: &EmulatorManifest,
    lora: Option<&LoraConfig>,
) -> (Vec<u8>, adapter::AdapterManifest) {
    adapter::write_adapter(
        tensors,
        manifest,
        lora,
        serde_json::json!({}),
        serde_json::json!({}),
    )
    .unwrap()
}

fn training_data(tok: &Tokenizer) -> data::Dataset {
    let text = "the cat sat on the mat. the dog sat on the log. ".repeat(30);
    let opts = DataOptions {
        max_len: 24,
        held_out: 0.2,
        seed: 3,
        truncate: false,
    };
    data::load(text.as_bytes(), "notes.txt", tok, &opts).unwrap()
}

fn held_out_loss(model: &Llama, examples: &[Example]) -> f64 {
    let refs: Vec<&Example> = examples.iter().collect();
    let lp: Vec<f32> = ScoringBatch::from_examples(&refs, 0)
        .token_logprobs(model)
        .into_data()
        .try_into_vec()
        .unwrap();
    -lp.iter().map(|&x| x as f64).sum::<f64>() / lp.len() as f64
}

fn params(model: &Llama) -> Vec<(String, Vec<f32>)> {
    let plan = vec![scaleot::emulator::LayerKind::Adapter; 64];
    let mut out: Vec<(String, Vec<f32>)> = adapter::adapter_tensors(model, &plan)
        .into_iter()
        .map(|(n, _, t)| (n, t.into_data().try_into_vec().unwrap()))
        .collect();
    out.push((
        "embed".into(),
        model.embed_tokens.val().into_data().try_into_vec().unwrap(),
    ));
    out
}

fn train(emu: Emulator, data: &data::Dataset, cfg: TrainConfig) -> (Trainer, Vec<usize>) {
    train_with(emu, data, cfg, None)
}

/// A trainer on the emulator's adapters: whole layers, or LoRA factors on them.
fn train_with(
    emu: Emulator,
    data: &data::Dataset,
    cfg: TrainConfig,
    lora: Option<&LoraConfig>,
) -> (Trainer, Vec<usize>) {
    let adapters = emu.adapter_positions();
    let model = match lora {
        Some(l) => emu.model.with_lora(&adapters, l, 1, None).unwrap(),
        None => emu.model,
    };
    let trainer = Trainer::new(model, &adapters, cfg, data.train.len()).unwrap();
    (trainer, adapters)
}

fn run(trainer: &mut Trainer, data: &data::Dataset, until: usize) {
    while trainer.state.step < until {
        let loss = trainer.micro_step(&data.train, 0).unwrap();
        let v = loss.into_data().try_into_vec::<f32>().unwrap()[0];
        trainer.complete_micro_step(v).unwrap();
    }
}

fn config(steps: usize) -> TrainConfig {
    TrainConfig {
        steps,
        batch_size: 4,
        grad_accum: 2,
        lr: 3e-3,
        warmup_steps: 2,
        ..TrainConfig::default()
    }
}

#[test]
fn untouched_adapters_plug_in_to_the_exact_base_model() {
    let device = Device::flex();
    let base = tiny_model_bytes();
    let (weights, manifest) = bundle(&base, 2);
    let emu = load_emulator(&weights, &manifest, &device);
    assert_eq!(emu.model.layers.len(), 4);
    let (aw, am) = untouched_adapter_file(&emu, &manifest);
    let adapter = Adapter::load(&serde_json::to_string(&am).unwrap(), &aw).unwrap();
    let opened = base.open().unwrap();
    adapter.check_base(&opened.sha256).unwrap();
    let plugged = Llama::load(
        &opened.config,
        &adapter.plugged_into(opened.source.as_ref()),
        &device,
    )
    .unwrap();
    let original = Llama::load(&opened.config, opened.source.as_ref(), &device).unwrap();
    let ids = vec![vec![5u32, 80, 100, 3, 250, 17]];
    let a: Vec<f32> = plugged
        .forward(token_tensor(&ids, &device))
        .into_data()
        .try_into_vec()
        .unwrap();
    let b: Vec<f32> = original
        .forward(token_tensor(&ids, &device))
        .into_data()
        .try_into_vec()
        .unwrap();
    assert_eq!(a, b, "plug-in of untouched adapters must be bit-exact");
}

#[test]
fn training_lowers_held_out_loss_and_touches_only_adapters() {
    let device = Device::flex().autodiff();
    let base = tiny_model_bytes();
    let (weights, manifest) = bundle(&base, 2);
    let emu = load_emulator(&weights, &manifest, &device);
    let data = training_data(&emu.tokenizer);
    let before_params = params(&emu.model);
    let before = held_out_loss(&emu.model, &data.held_out);
    let (mut trainer, _) = train(emu, &data, config(25));
    run(&mut trainer, &data, 25);
    let after = held_out_loss(&trainer.model, &data.held_out);
    assert!(after < before - 0.5, "held-out loss {before} → {after}");
    let after_params = params(&trainer.model);
    // Stack positions 0 and 3 are the adapters (original layers 0 and 5).
    for ((name, x), (_, y)) in before_params.iter().zip(&after_params) {
        let is_adapter = name.starts_with("model.layers.0.") || name.starts_with("model.layers.5.");
        if is_adapter {
            assert_ne!(x, y, "{name} should have trained");
        } else {
            assert_eq!(x, y, "{name} must stay bit-identical");
        }
    }
}

#[test]
fn checkpoint_resume_continues_exactly() {
    assert_resume_is_exact(None);
}

#[test]
fn lora_checkpoint_resume_continues_exactly() {
    assert_resume_is_exact(Some(&lora_config()));
}

/// A run stopped at step 3 and resumed from its checkpoint ends where a straight run does.
fn assert_resume_is_exact(lora: Option<&LoraConfig>) {
    let device = Device::flex().autodiff();
    let base = tiny_model_bytes();
    let (weights, manifest) = bundle(&base, 2);
    let data = training_data(&load_emulator(&weights, &manifest, &device).tokenizer);
    let fresh = || {
        train_with(
            load_emulator(&weights, &manifest, &device),
            &data,
            config(6),
            lora,
        )
    };
    let (mut straight, _) = fresh();
    run(&mut straight, &data, 6);

    let (mut first, adapters) = fresh();
    run(&mut first, &data, 3);
    let saved = write_tensors(&read_adapter_tensors(&first.model, &manifest.plan), "ckpt").unwrap();
    let optim = scaleot::optim::save(first.optimizer()).unwrap();
    let state = serde_json::to_string(&first.state).unwrap();
    drop(first);

    let (mut second, _) = fresh();
    let model =
        adapter::checkpointed_model(&manifest, &weights, &saved, (&adapters, lora), &device)
            .unwrap();
    second
        .resume(
            model,
            &adapters,
            serde_json::from_str(&state).unwrap(),
            Some(&optim),
        )
        .unwrap();
    run(&mut second, &data, 6);
    let a = all_weights(&straight.model);
    let b = all_weights(&second.model);
    for ((name, x), (_, y)) in a.iter().zip(&b) {
        let worst = x
            .iter()
            .zip(y)
            .map(|(p, q)| (p - q).abs())
            .fold(0f32, f32::max);
        assert!(
            x.iter().zip(y).all(|(p, q)| (p - q).abs() <= 1e-5),
            "{name}: resumed run differs by {worst}"
        );
    }
    // The other mode's checkpoint is refused, not silently misread.
    let other = match lora {
        Some(_) => None,
        None => Some(lora_config()),
    };
    let err = adapter::checkpointed_model(
        &manifest,
        &weights,
        &saved,
        (&adapters, other.as_ref()),
        &device,
    )
    .expect_err("a checkpoint of the other mode must be refused");
    assert!(err.to_string().contains("LoRA"), "{err}");
}

fn lora_config() -> LoraConfig {
    LoraConfig::new(4, 8.0, "all").unwrap()
}

#[test]
fn lora_trains_only_its_factors_and_merges_like_the_unmerged_model() {
    let device = Device::flex().autodiff();
    let base = tiny_model_bytes();
    let (weights, manifest) = bundle(&base, 2);
    let emu = load_emulator(&weights, &manifest, &device);
    let data = training_data(&emu.tokenizer);
    let lora = lora_config();
    let (mut trainer, adapters) = train_with(emu, &data, config(25), Some(&lora));
    let before = all_weights(&trainer.model);
    let loss_before = held_out_loss(&trainer.model, &data.held_out);
    run(&mut trainer, &data, 25);
    let loss_after = held_out_loss(&trainer.model, &data.held_out);
    assert!(
        loss_after < loss_before - 0.3,
        "held-out loss {loss_before} → {loss_after}"
    );
    for ((name, x), (_, y)) in before.iter().zip(&all_weights(&trainer.model)) {
        if name.ends_with("lora_B") {
            assert_ne!(x, y, "{name} should have trained");
        } else if !name.ends_with("lora_A") {
            assert_eq!(x, y, "{name} must stay bit-identical");
        }
    }

    // The file: PEFT names and shapes, A and B for 7 projections of the 2 adapter layers.
    let tensors = read_adapter_tensors(&trainer.model, &manifest.plan);
    assert_eq!(tensors.len(), 2 * 7 * 2);
    let (name, t) = &tensors[0];
    assert_eq!(
        name,
        "base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight"
    );
    assert_eq!(t.shape, vec![4, 32]);
    let down_b = tensors
        .iter()
        .find(|(n, _)| n == "base_model.model.model.layers.5.mlp.down_proj.lora_B.weight")
        .expect("down_proj B of layer 5");
    assert_eq!(down_b.1.shape, vec![32, 4]);
    let (aw, am) = adapter_file(tensors, &manifest, Some(&lora));
    assert_eq!(am.peft["peft_type"], "LORA");
    let adapter = Adapter::load(&serde_json::to_string(&am).unwrap(), &aw).unwrap();

    // Emulator with the factors merged (W + B·A·alpha/r) = emulator running them unmerged.
    let plain = Device::flex();
    let merged = scaleot::adapter::load_emulator(
        &serde_json::to_string(&manifest).unwrap(),
        &weights,
        Some(&adapter),
        &plain,
    )
    .unwrap();
    let unmerged = trainer.model.valid();
    let d = max_abs_diff(&logits(&merged.model, &plain), &logits(&unmerged, &plain));
    assert!(d < 1e-4, "merged vs unmerged emulator logits differ by {d}");

    // Same on the full model: plug-in (merged) = full model with the factors attached.
    let opened = base.open().unwrap();
    let plugged = Llama::load(
        &opened.config,
        &adapter.plugged_into(opened.source.as_ref()),
        &plain,
    )
    .unwrap();
    let factors = SafetensorsSource::new(&[&aw]).unwrap();
    let full_positions = [0, 5];
    let attached = Llama::load(&opened.config, opened.source.as_ref(), &plain)
        .unwrap()
        .with_lora(&full_positions, &lora, 0, Some(&factors))
        .unwrap();
    let original = Llama::load(&opened.config, opened.source.as_ref(), &plain).unwrap();
    let d = max_abs_diff(&logits(&plugged, &plain), &logits(&attached, &plain));
    assert!(d < 1e-4, "plug-in vs attached LoRA logits differ by {d}");
    let moved = max_abs_diff(&logits(&plugged, &plain), &logits(&original, &plain));
    assert!(
        moved > 1e-3,
        "the tuned LoRA must change the full model ({moved})"
    );
    assert_eq!(adapters, vec![0, 3]);
}

#[test]
fn untouched_lora_plugs_in_to_the_exact_base_model() {
    let device = Device::flex();
    let base = tiny_model_bytes();
    let (weights, manifest) = bundle(&base, 2);
    let emu = load_emulator(&weights, &manifest, &device);
    let lora = lora_config();
    let positions = emu.adapter_positions();
    let model = emu.model.with_lora(&positions, &lora, 7, None).unwrap();
    let tensors = read_adapter_tensors(&model, &manifest.plan);
    let (aw, am) = adapter_file(tensors, &manifest, Some(&lora));
    let adapter = Adapter::load(&serde_json::to_string(&am).unwrap(), &aw).unwrap();
    let opened = base.open().unwrap();
    let plugged = Llama::load(
        &opened.config,
        &adapter.plugged_into(opened.source.as_ref()),
        &device,
    )
    .unwrap();
    let original = Llama::load(&opened.config, opened.source.as_ref(), &device).unwrap();
    assert_eq!(logits(&plugged, &device), logits(&original, &device));
    // A file missing a factor its manifest promises is refused by name.
    let mut partial = read_adapter_tensors(&model, &manifest.plan);
    partial.pop();
    let (pw, mut pm) = adapter_file(partial, &manifest, Some(&lora));
    pm.weights_sha256 = scaleot::adapter::weights_digest(&pw).unwrap();
    let err = Adapter::load(&serde_json::to_string(&pm).unwrap(), &pw)
        .err()
        .unwrap();
    assert!(err.to_string().contains("lacks"), "{err}");
}

/// The plug-in writes only what the manifest declares, with the model's shapes and finite
/// values: every other adapter file is refused, naming the tensor.
#[test]
fn plugin_accepts_only_declared_layers_of_the_right_shape() {
    let device = Device::flex();
    let base = tiny_model_bytes();
    let (weights, manifest) = bundle(&base, 2);
    let emu = load_emulator(&weights, &manifest, &device);
    let opened = base.open().unwrap();
    let plug = |(aw, am): (Vec<u8>, adapter::AdapterManifest)| -> Result<Llama, Error> {
        let adapter = Adapter::load(&serde_json::to_string(&am).unwrap(), &aw)?;
        adapter.check_layers(opened.config.num_hidden_layers)?;
        adapter.check_emulator(&manifest)?;
        Llama::load(
            &opened.config,
            &adapter.plugged_into(opened.source.as_ref()),
            &device,
        )
    };
    let refusal = |file| plug(file).expect_err("must be refused").to_string();
    let tensors = read_adapter_tensors(&emu.model, &manifest.plan);
    plug(adapter_file(tensors.clone(), &manifest, None)).unwrap();

    // A tensor outside the declared layers (here the embedding) is not written in.
    let embed = opened
        .source
        .tensor("model.embed_tokens.weight")
        .unwrap()
        .unwrap();
    let mut extra = tensors.clone();
    extra.push(("model.embed_tokens.weight".into(), embed));
    let err = refusal(adapter_file(extra, &manifest, None));
    assert!(err.contains("carries `model.embed_tokens.weight`"), "{err}");
    // A layer's projection of another shape.
    let mut reshaped = tensors.clone();
    let (name, q) = reshaped
        .iter_mut()
        .find(|(n, _)| n.ends_with("q_proj.weight"))
        .unwrap();
    let name = name.clone();
    q.shape = vec![q.shape[1], q.shape[0] / 2];
    q.data.truncate(q.shape[0] * q.shape[1]);
    let err = refusal(adapter_file(reshaped, &manifest, None));
    assert!(err.contains(&format!("`{name}` has shape")), "{err}");
    // NaN values.
    let mut poisoned = tensors.clone();
    poisoned[3].1.data[0] = f32::NAN;
    let name = poisoned[3].0.clone();
    let err = refusal(adapter_file(poisoned, &manifest, None));
    assert!(err.contains(&format!("`{name}` holds NaN")), "{err}");
    // Declared layers that the model lacks, name twice, or that are not the emulator's.
    // (Layer 5's tensors move to the declared layer, so that the file keeps its promise.)
    for (second, says) in [
        (99, "declares layer 99, but the model has 6"),
        (0, "declares layer 0 twice"),
        (4, "the emulator's adapter layers are [0, 5]"),
    ] {
        let moved: Vec<(String, HostTensor)> = tensors
            .iter()
            .filter(|(n, _)| second != 0 || !n.contains("layers.5."))
            .map(|(n, t)| {
                (
                    n.replace("layers.5.", &format!("layers.{second}.")),
                    t.clone(),
                )
            })
            .collect();
        let (aw, mut am) = adapter_file(moved, &manifest, None);
        am.layers = vec![0, second];
        let err = refusal((aw, am));
        assert!(err.contains(says), "{err}");
    }
    // LoRA factors of another rank than the manifest's.
    let lora = lora_config();
    let positions = emu.adapter_positions();
    let model = emu.model.with_lora(&positions, &lora, 7, None).unwrap();
    let factors = read_adapter_tensors(&model, &manifest.plan);
    let claimed = LoraConfig::new(8, 8.0, "all").unwrap();
    let err = refusal(adapter_file(factors, &manifest, Some(&claimed)));
    assert!(err.contains("not rank 8"), "{err}");
}

#[test]
fn divergence_stops_and_keeps_the_last_good_weights() {
    let device = Device::flex().autodiff();
    let base = tiny_model_bytes();
    let (weights, manifest) = bundle(&base, 2);
    let emu = load_emulator(&weights, &manifest, &device);
    let data = training_data(&emu.tokenizer);
    let cfg = TrainConfig {
        lr: 1e30,
        warmup_steps: 0,
        clip_norm: None,
        grad_accum: 1,
        ..config(20)
    };
    let (mut trainer, _) = train(emu, &data, cfg);
    let mut outcome = None;
    for _ in 0..20 {
        let loss = trainer.micro_step(&data.train, 0).unwrap();
        let v = loss.into_data().try_into_vec::<f32>().unwrap()[0];
        if let Err(e) = trainer.complete_micro_step(v) {
            outcome = Some(e);
            break;
        }
    }
    let err = outcome.expect("a 1e30 learning rate must diverge");
    assert!(matches!(err, Error::Diverged { .. }), "{err}");
    assert!(err.to_string().contains("lower the learning rate"), "{err}");
    let p = params(&trainer.model);
    assert!(
        p.iter().all(|(_, v)| v.iter().all(|x| x.is_finite())),
        "rolled-back weights are finite"
    );
}

/// A loss that is not finite before any step is the model's fault, and the message says so
/// instead of blaming the learning rate.
#[test]
fn broken_weights_are_not_called_divergence() {
    let device = Device::flex().autodiff();
    let base = tiny_model_edited(|name, data| {
        if name == "model.norm.weight" {
            data[0] = f32::NAN;
        }
    });
    let (weights, manifest) = bundle(&base, 2);
    let emu = load_emulator(&weights, &manifest, &device);
    let data = training_data(&emu.tokenizer);
    let (mut trainer, _) = train(emu, &data, config(5));
    let loss = trainer.micro_step(&data.train, 0).unwrap();
    let v = loss.into_data().try_into_vec::<f32>().unwrap()[0];
    let err = trainer.complete_micro_step(v).unwrap_err();
    assert!(matches!(err, Error::BrokenModel { .. }), "{err}");
    assert!(
        err.to_string().contains("weights or config are broken"),
        "{err}"
    );
}

#[test]
fn bundles_and_adapters_refuse_the_wrong_partner() {
    let device = Device::flex();
    let base = tiny_model_bytes();
    let (weights, manifest) = bundle(&base, 2);
    let (_, other) = bundle(&base, 3);
    // A flipped byte in the weights: the hash check names it.
    let mut corrupt = weights.clone();
    let last = corrupt.len() - 1;
    corrupt[last] ^= 1;
    let err = Emulator::load(
        &serde_json::to_string(&manifest).unwrap(),
        &corrupt,
        &device,
    )
    .err()
    .unwrap();
    assert!(matches!(err, Error::BundleCorrupt { .. }), "{err}");
    assert!(err.to_string().contains("download the bundle again"));
    let emu = load_emulator(&weights, &manifest, &device);
    let (aw, am) = untouched_adapter_file(&emu, &manifest);
    let adapter = Adapter::load(&serde_json::to_string(&am).unwrap(), &aw).unwrap();
    adapter.check_emulator(&manifest).unwrap();
    let err = adapter.check_emulator(&other).unwrap_err();
    assert!(err.to_string().contains("trained on emulator"), "{err}");
    let err = adapter.check_base("0000").unwrap_err();
    assert!(err.to_string().contains("belong to base model"), "{err}");
    // Hashes in a manifest are user input: crafted ones (non-ASCII, short) are refused with
    // the message, never cut apart by byte (which panicked).
    let mut crafted = am.clone();
    crafted.emulator_sha256 = format!("a{}", "é".repeat(7));
    crafted.base_model_sha256 = format!("x{}", "ü".repeat(7));
    let crafted = Adapter::load(&serde_json::to_string(&crafted).unwrap(), &aw).unwrap();
    let err = crafted.check_emulator(&manifest).unwrap_err();
    assert!(err.to_string().contains("aééééééé…"), "{err}");
    let err = crafted.check_base("ß").unwrap_err();
    assert!(
        err.to_string().contains("xüüüüüüü…, not to this one (ß…)"),
        "{err}"
    );
    let err = Adapter::load(&serde_json::to_string(&am).unwrap(), &aw[..aw.len() - 3])
        .err()
        .unwrap();
    assert!(err.to_string().contains("corrupted"), "{err}");
    // The emulator really lacks the dropped layers that the base model has.
    let dropped = "model.layers.2.mlp.up_proj.weight";
    assert!(
        base.open()
            .unwrap()
            .source
            .tensor(dropped)
            .unwrap()
            .is_some()
    );
    assert!(
        SafetensorsSource::new(&[&weights])
            .unwrap()
            .tensor(dropped)
            .unwrap()
            .is_none()
    );
}

/// The head's chunked losses equal the plain ones over the full logits: log-probabilities
/// chunk by chunk, and the training loss's value and every trainable tensor's gradient (from
/// its surrogate) as autodiff gives them through `log_softmax` of all logits at once.
#[test]
fn chunked_head_loss_matches_autodiff_through_the_full_logits() {
    use burn::tensor::activation::log_softmax;
    use burn::tensor::{Int, Tensor, TensorData};
    let device = Device::flex().autodiff();
    let (weights, manifest) = bundle(&tiny_model_bytes(), 2);
    let model = load_emulator(&weights, &manifest, &device)
        .model
        .with_trainable_layers(&[0, 1, 2, 3]);
    let rows = vec![
        vec![5u32, 80, 100, 3, 250, 17, 42, 9, 33],
        vec![7u32, 7, 120, 64, 2, 199, 18, 77, 260],
    ];
    let hidden = |model: &Llama| {
        let h = model.hidden(token_tensor(&rows, &device), None);
        let [b, t, d] = h.dims();
        h.slice([0..b, 0..t - 1]).reshape([b * (t - 1), d])
    };
    let next: Vec<i64> = rows
        .iter()
        .flat_map(|r| r[1..].iter().map(|&x| x as i64))
        .collect();
    let n = next.len();
    let targets = Tensor::<1, Int>::from_data(TensorData::new(next, [n]), &device);

    let full = log_softmax(
        hidden(&model).matmul(model.embed_tokens.val().transpose()),
        1,
    )
    .gather(1, targets.clone().reshape([n, 1]))
    .reshape([n]);
    let chunked = model.head_logprobs_in_chunks(hidden(&model), targets.clone(), 5);
    let host = |t: Tensor<1>| -> Vec<f32> { t.into_data().try_into_vec().unwrap() };
    assert!(max_abs_diff(&host(full.clone().detach()), &host(chunked)) < 1e-5);

    let want = full.mean().neg();
    let want_grads = want.backward();
    let got = model.head_loss_in_chunks(hidden(&model), targets, 5);
    let got_grads = got.surrogate.backward();
    let (want, got) = (host(want.detach())[0], host(got.mean)[0]);
    assert!((want - got).abs() < 1e-5, "loss {want} vs {got}");
    let mut compared = 0;
    for (slot, &orig) in model.layers.iter().zip(&model.layer_index) {
        let scaleot::model::LayerSlot::Decoder(layer) = slot else {
            continue;
        };
        for (name, proj) in layer.projections(orig) {
            let grad = |g| -> Vec<f32> {
                let t: Tensor<2> = proj.weight.val().grad(g).expect("a trainable weight");
                t.into_data().try_into_vec().unwrap()
            };
            let (w, g) = (grad(&want_grads), grad(&got_grads));
            let scale = w.iter().fold(0f32, |m, x| m.max(x.abs()));
            assert!(scale > 0.0, "{name}: no gradient");
            assert!(max_abs_diff(&w, &g) < 1e-4 * scale, "{name}");
            compared += 1;
        }
    }
    assert!(compared >= 14, "{compared} projections compared");
}

/// Choice-like examples of mixed lengths, loss on the last token only (so a mean over a
/// micro-batch's targets equals the mean over its examples).
fn mixed_length_examples() -> data::Dataset {
    let example = |n: usize, seed: u32| {
        let ids: Vec<u32> = (0..n as u32)
            .map(|k| (seed * 37 + k * 11) % 250 + 3)
            .collect();
        let mut loss = vec![false; n];
        loss[n - 1] = true;
        Example { ids, loss }
    };
    let lengths = [11, 3, 5, 7, 2, 9, 4, 6, 8, 3, 10, 5];
    data::Dataset {
        train: (lengths.iter().enumerate())
            .map(|(i, &n)| example(n, i as u32))
            .collect(),
        held_out: Vec::new(),
        format: data::DataFormat::MultipleChoice,
    }
}

#[test]
fn examples_sharing_rows_score_and_train_as_if_alone() {
    let device = Device::flex().autodiff();
    let (weights, manifest) = bundle(&tiny_model_bytes(), 2);
    let data = mixed_length_examples();
    let refs: Vec<&Example> = data.train.iter().collect();
    let packed = ScoringBatch::from_examples(&refs, 0);
    assert!(packed.packing.is_some() && packed.inputs.len() < refs.len());
    // Scoring: every target's log-probability as in a row of its own.
    let model = load_emulator(&weights, &manifest, &device).model;
    let together: Vec<f32> = packed
        .token_logprobs(&model)
        .into_data()
        .try_into_vec()
        .unwrap();
    let alone: Vec<f32> = refs
        .iter()
        .flat_map(|e| {
            ScoringBatch::from_examples(&[e], 0)
                .token_logprobs(&model)
                .into_data()
                .try_into_vec::<f32>()
                .unwrap()
        })
        .collect();
    assert_eq!(together.len(), alone.len());
    let diff = max_abs_diff(&together, &alone);
    assert!(diff < 1e-5, "packed scores differ by {diff}");
    // Training: micro-batches of 4 (packed) follow micro-batches of 1 accumulated 4 times.
    let losses = |batch_size: usize, grad_accum: usize| {
        let cfg = TrainConfig {
            batch_size,
            grad_accum,
            ..config(3)
        };
        let (mut trainer, _) = train_with(
            load_emulator(&weights, &manifest, &device),
            &data,
            cfg,
            Some(&lora_config()),
        );
        run(&mut trainer, &data, 3);
        trainer.state.losses.clone()
    };
    let (packed, alone) = (losses(4, 1), losses(1, 4));
    for ((step, a), (_, b)) in packed.iter().zip(&alone) {
        assert!(
            (a - b).abs() < 1e-4 * b.abs().max(1.0),
            "step {step}: {a} vs {b}"
        );
    }
}
