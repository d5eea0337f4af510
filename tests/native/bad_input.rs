//! Broken or foreign files get errors that say what is wrong, never a panic.

use crate::common;

use burn::tensor::Device;
use scaleot::Error;
use scaleot::model::LoadedModel;

#[test]
fn truncated_real_model_is_reported() {
    let bytes = common::smollm2_bytes();
    let device = Device::flex();
    for cut in [3, 100, 4_000_000, bytes.len() - 1000] {
        let err = LoadedModel::from_gguf(&bytes[..cut], &device)
            .err()
            .expect("must fail");
        let msg = err.to_string();
        assert!(
            matches!(err, Error::NotGguf { .. } | Error::Truncated { .. }),
            "cut at {cut}: {msg}"
        );
    }
    let err = LoadedModel::from_gguf(&bytes[..bytes.len() - 1000], &device)
        .err()
        .unwrap();
    assert!(err.to_string().contains("download it again"), "{err}");
}

#[test]
fn foreign_files_are_refused() {
    let device = Device::flex();
    let zip = b"PK\x03\x04\x14\x00\x00\x00some zip archive".to_vec();
    let err = LoadedModel::from_gguf(&zip, &device).err().unwrap();
    assert!(err.to_string().contains("not a GGUF file"), "{err}");
    let err = LoadedModel::from_hf("{}", "{}", &[b"not safetensors"], &device)
        .err()
        .unwrap();
    assert!(matches!(err, Error::Json { .. }), "{err}");
    // The parser's message is in the error once: it is not also its source, which error
    // chains (the CLI's one-line message) would print again.
    assert!(std::error::Error::source(&err).is_none(), "{err}");
}

/// A safetensors file of a type we cannot read is told to save another float type, not to
/// re-quantize as a GGUF would be.
#[test]
fn unsupported_safetensors_types_get_safetensors_advice() {
    let dir = common::root().join("tests/fixtures/tiny-llama");
    let config = std::fs::read_to_string(dir.join("config.json")).unwrap();
    let tok = r#"{"pre_tokenizer":{"type":"ByteLevel"},"model":{"type":"BPE","vocab":{"a":0},"merges":[]}}"#;
    let cfg: serde_json::Value = serde_json::from_str(&config).unwrap();
    let (v, h) = (
        cfg["vocab_size"].as_u64().unwrap(),
        cfg["hidden_size"].as_u64().unwrap(),
    );
    let n = (v * h) as usize;
    let header = format!(
        r#"{{"model.embed_tokens.weight":{{"dtype":"I8","shape":[{v},{h}],"data_offsets":[0,{n}]}}}}"#
    );
    let mut file = (header.len() as u64).to_le_bytes().to_vec();
    file.extend(header.as_bytes());
    file.resize(file.len() + n, 0);
    let err = LoadedModel::from_hf(&config, tok, &[&file], &Device::flex())
        .err()
        .unwrap()
        .to_string();
    assert!(
        err.contains("type I8") && err.contains("save the weights"),
        "{err}"
    );
    assert!(!err.contains("re-quantize"), "{err}");
}

#[test]
fn hf_config_that_disagrees_with_weights_is_named() {
    let dir = common::root().join("tests/fixtures/tiny-llama");
    let config = std::fs::read_to_string(dir.join("config.json")).unwrap();
    let weights = std::fs::read(dir.join("model.safetensors")).unwrap();
    let mut cfg: serde_json::Value = serde_json::from_str(&config).unwrap();
    cfg["intermediate_size"] = 60.into();
    let tok = r#"{"pre_tokenizer":{"type":"ByteLevel"},"model":{"type":"BPE","vocab":{"a":0},"merges":[]}}"#;
    let err = LoadedModel::from_hf(&cfg.to_string(), tok, &[&weights], &Device::flex())
        .err()
        .unwrap();
    assert!(matches!(err, Error::ShapeMismatch { .. }), "{err}");
    assert!(err.to_string().contains("mlp.gate_proj"), "{err}");
    // Truncated safetensors shard.
    let err = LoadedModel::from_hf(
        &config,
        tok,
        &[&weights[..weights.len() / 2]],
        &Device::flex(),
    )
    .err()
    .unwrap();
    assert!(err.to_string().contains("download it again"), "{err}");
}

#[test]
fn settings_out_of_range_name_their_field_without_cli_flags() {
    use scaleot::model::LoraConfig;
    use scaleot::train::TrainConfig;
    let field_of = |e: Error| match e {
        Error::Setting { field, reason, .. } => {
            assert!(
                !reason.contains("--"),
                "a library message names a flag: {reason}"
            );
            field
        }
        other => panic!("expected a setting error, got {other}"),
    };
    let train = TrainConfig::default();
    for (bad, field) in [
        (
            TrainConfig {
                steps: 0,
                ..train.clone()
            },
            "steps",
        ),
        (
            TrainConfig {
                batch_size: 0,
                ..train.clone()
            },
            "batch_size",
        ),
        (
            TrainConfig {
                lr: -1.0,
                ..train.clone()
            },
            "lr",
        ),
    ] {
        assert_eq!(field_of(bad.validate().unwrap_err()), field);
    }
    assert_eq!(
        field_of(LoraConfig::new(0, 16.0, "all").unwrap_err()),
        "lora_rank"
    );
    assert_eq!(
        field_of(LoraConfig::new(8, 0.0, "all").unwrap_err()),
        "lora_alpha"
    );
    assert_eq!(
        field_of(LoraConfig::new(8, 16.0, "qq_proj").unwrap_err()),
        "lora_targets"
    );
}

/// Config values that cannot be right are refused at load, naming the value, before anything
/// is allocated for them (2^40 layers used to abort on allocation; context length 0 panicked
/// in a reshape during eval).
#[test]
fn impossible_config_values_are_refused_at_load() {
    let dir = common::root().join("tests/fixtures/tiny-llama");
    let config = std::fs::read_to_string(dir.join("config.json")).unwrap();
    let weights = std::fs::read(dir.join("model.safetensors")).unwrap();
    let tok = r#"{"pre_tokenizer":{"type":"ByteLevel"},"model":{"type":"BPE","vocab":{"a":0},"merges":[]}}"#;
    for (key, value, says) in [
        (
            "num_hidden_layers",
            serde_json::json!(1u64 << 40),
            "beyond any model",
        ),
        (
            "vocab_size",
            serde_json::json!(1u64 << 33),
            "beyond any model",
        ),
        (
            "max_position_embeddings",
            serde_json::json!(0),
            "context length",
        ),
        (
            "rms_norm_eps",
            serde_json::json!(0.0),
            "epsilon must be positive",
        ),
        (
            "rms_norm_eps",
            serde_json::json!(-1e-5),
            "epsilon must be positive",
        ),
        ("rope_theta", serde_json::json!(-10000.0), "rope_theta"),
    ] {
        let mut cfg: serde_json::Value = serde_json::from_str(&config).unwrap();
        cfg[key] = value.clone();
        if let Some(rope) = cfg
            .get_mut("rope_parameters")
            .filter(|_| key == "rope_theta")
        {
            rope[key] = value.clone(); // transformers ≥ 5 keeps it there
        }
        let err = LoadedModel::from_hf(&cfg.to_string(), tok, &[&weights], &Device::flex())
            .err()
            .unwrap_or_else(|| panic!("{key} = {value} was accepted"));
        assert!(err.to_string().contains(says), "{key} = {value}: {err}");
    }
}

/// Token ids from a file are checked against the vocabulary before use: an added token at id
/// 10^9 used to grow the vocabulary to 10^9 entries, an end-of-text id past it panicked in eval
/// and finetune, and a tokenizer larger than the model's embedding indexed past it.
#[test]
fn token_ids_outside_the_vocabulary_are_refused() {
    use scaleot::tokenizer::Tokenizer;
    let tok = common::tiny::tiny_tokenizer();
    let mut json = tok.to_hf_json();
    json["added_tokens"][0]["id"] = serde_json::json!(1_000_000_000u64);
    let err = Tokenizer::from_hf_json(&json.to_string()).unwrap_err();
    assert!(err.to_string().contains("beyond the"), "{err}");
    let mut json = tok.to_hf_json();
    json["scaleot"]["eos_id"] = serde_json::json!(5000);
    let err = Tokenizer::from_hf_json(&json.to_string()).unwrap_err();
    assert!(
        err.to_string()
            .contains("end-of-text token id 5000 is outside the vocabulary of 261 tokens"),
        "{err}"
    );
    assert!(tok.check_fits(261).is_ok());
    let err = tok.check_fits(200).unwrap_err();
    assert!(err.to_string().contains("do not belong together"), "{err}");
}
