//! Logits of the real SmolLM2-135M and of a tiny Hugging Face checkpoint must match
//! PyTorch/transformers (goldens from tools/reference/make_goldens.py).

use crate::common;

use burn::tensor::Device;
use burn::tensor::activation::log_softmax;
use scaleot::eval::LoglikRequest;
use scaleot::eval::loglik::{ScoringBatch, ScoringRow, scoring_rows};
use scaleot::generate::generate;
use scaleot::model::{LoadedModel, token_tensor};

fn f32s(v: &serde_json::Value) -> Vec<f32> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_f64().unwrap() as f32)
        .collect()
}

#[test]
fn smollm2_logprobs_and_greedy_match_transformers() {
    let device = Device::flex();
    let m = LoadedModel::from_gguf(&common::smollm2_bytes(), &device).unwrap();
    assert_eq!(m.config.num_hidden_layers, 30);
    assert_eq!(m.config.num_key_value_heads, 3);
    assert!(m.config.tie_word_embeddings);
    let g = common::golden("logits.json");
    let mut worst = 0f32;
    for case in g["cases"].as_array().unwrap() {
        let ids = common::ids(&case["ids"]);
        assert_eq!(m.tokenizer.encode(case["prompt"].as_str().unwrap()), ids);
        let n = ids.len();
        let logits = m
            .model
            .forward(token_tensor(std::slice::from_ref(&ids), &device));
        let lp = log_softmax(logits, 2).reshape([n, m.model.vocab_size()]);
        let lp: Vec<f32> = lp.into_data().try_into_vec().unwrap();
        let vocab = m.model.vocab_size();
        // log p(token i+1 | prefix) at every position.
        for (i, want) in f32s(&case["token_logprobs"]).into_iter().enumerate() {
            let got = lp[i * vocab + ids[i + 1] as usize];
            worst = worst.max((got - want).abs());
            assert!((got - want).abs() < 2e-3, "pos {i}: {got} vs {want}");
        }
        // The same values through the batched scoring path used by `eval`.
        let req = LoglikRequest {
            context: ids[..1].to_vec(),
            continuation: ids[1..].to_vec(),
        };
        let rows = scoring_rows(std::slice::from_ref(&req), 8192);
        let batch = ScoringBatch::from_rows(&[&rows[0]], 0);
        let scored: Vec<f32> = batch
            .token_logprobs(&m.model)
            .into_data()
            .try_into_vec()
            .unwrap();
        let want_sum: f32 = f32s(&case["token_logprobs"]).iter().sum();
        assert!((scored.iter().sum::<f32>() - want_sum).abs() < 1e-2);
        // Top-5 next tokens at the last position, in order.
        let last = &lp[(n - 1) * vocab..n * vocab];
        for pair in case["last_top5"].as_array().unwrap() {
            let (id, want) = (
                pair[0].as_u64().unwrap() as usize,
                pair[1].as_f64().unwrap() as f32,
            );
            assert!(
                (last[id] - want).abs() < 2e-3,
                "top id {id}: {} vs {want}",
                last[id]
            );
        }
        let greedy = generate(&m.model, &ids, 12, None, &[], |_| {}).unwrap();
        assert_eq!(
            greedy,
            common::ids(&case["greedy_ids"]),
            "greedy continuation of {:?}",
            case["prompt"]
        );
    }
    eprintln!("worst |Δ log p| = {worst:e}");
    let paris = generate(
        &m.model,
        &m.tokenizer.encode("The capital of France is"),
        3,
        None,
        &[],
        |_| {},
    )
    .unwrap();
    assert!(m.tokenizer.decode(&paris).starts_with(" Paris"));
}

/// Loads `tests/fixtures/{name}` (written by transformers) and compares its logits with the
/// ones transformers computed, to 1e-4.
fn tiny_checkpoint_matches_transformers(name: &str) -> LoadedModel {
    let dir = common::root().join("tests/fixtures").join(name);
    let config = std::fs::read_to_string(dir.join("config.json")).unwrap();
    let weights = std::fs::read(dir.join("model.safetensors")).unwrap();
    let golden: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("golden.json")).unwrap()).unwrap();
    let device = Device::flex();
    // The tiny model has its own 96-token vocabulary; any byte-level tokenizer.json serves here.
    let tok = tiny_tokenizer_json();
    let m = LoadedModel::from_hf(&config, &tok, &[&weights], &device).unwrap();
    let rows: Vec<Vec<u32>> = golden["ids"]
        .as_array()
        .unwrap()
        .iter()
        .map(common::ids)
        .collect();
    let got: Vec<f32> = m
        .model
        .forward(token_tensor(&rows, &device))
        .into_data()
        .try_into_vec()
        .unwrap();
    let want = f32s(&golden["logits"]);
    assert_eq!(got.len(), want.len());
    for (i, (a, b)) in got.iter().zip(&want).enumerate() {
        // Written so that NaN fails too.
        assert!((a - b).abs() < 1e-4, "{name} logit {i}: {a} vs {b}");
    }
    m
}

#[test]
fn tiny_hf_checkpoint_matches_transformers() {
    let m = tiny_checkpoint_matches_transformers("tiny-llama");
    assert!(m.model.lm_head.is_some(), "untied head must load");
}

#[test]
fn llama3_style_checkpoint_matches_transformers() {
    // head_dim 16 with hidden 32 and 4 heads (q_proj 64 x 32), rope_theta 500000 and llama3
    // RoPE scaling over 40 positions.
    let m = tiny_checkpoint_matches_transformers("tiny-llama3");
    assert!(m.config.rope_scaling.is_some());
    assert_eq!(m.config.head_dim(), 16);
    // The scaling is exercised: the same weights without it give other logits.
    let device = Device::flex();
    let rows = vec![(0..40).map(|i| (7 * i + 3) % 96).collect::<Vec<u32>>()];
    let logits = |model: &scaleot::model::Llama| -> Vec<f32> {
        model
            .forward(token_tensor(&rows, &device))
            .into_data()
            .try_into_vec()
            .unwrap()
    };
    let mut plain = m.model.clone();
    plain.rope_inv_freq = scaleot::model::LlamaConfig {
        rope_scaling: None,
        ..m.config.clone()
    }
    .rope_inv_freq();
    let (a, b) = (logits(&m.model), logits(&plain));
    let diff = a
        .iter()
        .zip(&b)
        .map(|(x, y)| (x - y).abs())
        .fold(0f32, f32::max);
    assert!(
        diff > 1e-3,
        "llama3 scaling changed the logits by only {diff}"
    );
}

#[test]
fn configs_this_decoder_cannot_run_are_refused() {
    let dir = common::root().join("tests/fixtures/tiny-llama3");
    let config: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("config.json")).unwrap()).unwrap();
    let refused = |change: &dyn Fn(&mut serde_json::Value), says: &str| {
        let mut c = config.clone();
        change(&mut c);
        let err = scaleot::model::LlamaConfig::from_hf_json(&c.to_string())
            .unwrap_err()
            .to_string();
        assert!(err.contains(says), "{says}: {err}");
    };
    let set = |key: &'static str, v: serde_json::Value| {
        move |c: &mut serde_json::Value| {
            c[key] = v.clone();
            if let Some(p) = c.get_mut("rope_parameters") {
                p[key] = v.clone();
            }
        }
    };
    refused(&set("rope_type", "yarn".into()), "`yarn` is not supported");
    refused(&set("attention_bias", true.into()), "bias");
    refused(&set("hidden_act", "gelu".into()), "hidden_act `gelu`");
    refused(
        &set("partial_rotary_factor", 0.5.into()),
        "partial_rotary_factor",
    );
}

/// A minimal byte-level BPE tokenizer.json (the tiny model only needs ids, not text).
fn tiny_tokenizer_json() -> String {
    let vocab: serde_json::Map<String, serde_json::Value> = (0..96u32)
        .map(|i| (format!("{}", char::from_u32(0x21 + i).unwrap()), i.into()))
        .collect();
    serde_json::json!({
        "added_tokens": [],
        "pre_tokenizer": {"type": "ByteLevel"},
        "model": {"type": "BPE", "vocab": vocab, "merges": []}
    })
    .to_string()
}

fn tiny_model(device: &Device) -> LoadedModel {
    let dir = common::root().join("tests/fixtures/tiny-llama");
    let config = std::fs::read_to_string(dir.join("config.json")).unwrap();
    let weights = std::fs::read(dir.join("model.safetensors")).unwrap();
    LoadedModel::from_hf(&config, &tiny_tokenizer_json(), &[&weights], device).unwrap()
}

#[test]
fn attention_is_causal_and_kv_cache_agrees() {
    let device = Device::flex();
    let m = tiny_model(&device);
    let logits = |rows: &[Vec<u32>]| -> Vec<f32> {
        m.model
            .forward(token_tensor(rows, &device))
            .into_data()
            .try_into_vec()
            .unwrap()
    };
    let a = logits(&[vec![5, 6, 7, 8, 9]]);
    let b = logits(&[vec![5, 6, 7, 40, 41]]);
    // The first three positions cannot see the changed tokens.
    assert_eq!(a[..3 * 96], b[..3 * 96]);
    assert_ne!(a[3 * 96..], b[3 * 96..]);
    // Prefill 3 tokens, then feed 2 one at a time through the cache.
    let mut cache = m.model.new_cache();
    let mut step = |ids: Vec<u32>| -> Vec<f32> {
        let h = m
            .model
            .hidden(token_tensor(&[ids], &device), Some(&mut cache));
        m.model.head(h).into_data().try_into_vec().unwrap()
    };
    let mut incremental = step(vec![5, 6, 7]);
    incremental.extend(step(vec![8]));
    incremental.extend(step(vec![9]));
    for (i, (x, y)) in incremental.iter().zip(&a).enumerate() {
        assert!((x - y).abs() < 1e-5, "logit {i}: cached {x} vs full {y}");
    }
}

/// Multiple-choice requests packed into shared-context rows (`eval`'s batches) score the
/// same as each request alone on its own row (lm-eval's way).
#[test]
fn shared_context_rows_score_like_separate_requests() {
    let device = Device::flex();
    let m = tiny_model(&device);
    let req = |context: &[u32], continuation: &[u32]| LoglikRequest {
        context: context.to_vec(),
        continuation: continuation.to_vec(),
    };
    let reqs = vec![
        req(&[5, 6, 7, 8], &[9, 10, 11]),
        req(&[5, 6, 7, 8], &[40]),
        req(&[5, 6, 7, 8], &[41, 42, 43, 44, 45, 46]),
        req(&[20, 21], &[22, 23]),
        req(&[20, 21], &[24, 25]),
        req(&[30, 31, 32, 33, 34, 35, 36, 37, 38], &[39]),
    ];
    let scores = |rows: &[&ScoringRow]| -> Vec<(usize, f64)> {
        let batch = ScoringBatch::from_rows(rows, 0);
        let lp: Vec<f32> = batch
            .token_logprobs(&m.model)
            .into_data()
            .try_into_vec()
            .unwrap();
        batch
            .requests
            .iter()
            .copied()
            .zip(batch.sum_per_request(&lp))
            .collect()
    };
    let rows = scoring_rows(&reqs, 64);
    assert_eq!(rows.len(), 3, "two shared rows and one single");
    let mut packed = scores(&rows.iter().collect::<Vec<_>>());
    packed.sort_by_key(|&(i, _)| i);
    assert_eq!(packed.len(), reqs.len());
    for (i, got) in packed {
        let alone = scoring_rows(std::slice::from_ref(&reqs[i]), 64);
        let want = scores(&[&alone[0]])[0].1;
        assert!(
            (got - want).abs() < 1e-5,
            "request {i}: packed {got} vs alone {want}"
        );
    }
}

#[test]
fn only_chosen_layers_get_gradients() {
    let device = Device::flex().autodiff();
    let m = tiny_model(&device).model.with_trainable_layers(&[1]);
    let logits = m.forward(token_tensor(&[vec![5, 6, 7, 8]], &device));
    let grads = logits.powi_scalar(2).mean().backward();
    let layer_grad = |i: usize| {
        let scaleot::model::LayerSlot::Decoder(l) = &m.layers[i] else {
            panic!("the full model holds decoder layers only");
        };
        l.mlp.up_proj.weight.val().grad(&grads)
    };
    assert!(
        layer_grad(1).is_some(),
        "the trainable layer must get a gradient"
    );
    assert!(layer_grad(0).is_none(), "a frozen layer must not");
    assert!(m.embed_tokens.val().grad(&grads).is_none());
    assert!(m.norm.weight.val().grad(&grads).is_none());
}
