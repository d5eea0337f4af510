//! The fuzzing targets: every parser a file reaches, given arbitrary bytes. Each target takes
//! the bytes a hostile file could hold and runs the code a real command runs on them; errors
//! are fine, a panic, an abort, a hang or a huge allocation is a bug. libFuzzer drives them
//! (`fuzz_targets/*.rs`, `bash tools/fuzz.sh`); the native tests replay the same functions on
//! their seeds and on random damage to them (`cargo test --test native fuzz`), on stable.
//!
//! Files that carry a hash of their own contents (emulator bundles, adapters, checkpoints)
//! would stop every mutation at the hash check, so their targets take a leading mode byte: odd
//! means "recompute the hash first", which lets the fuzzer reach the parsing behind it.

use std::io::Read;
use std::sync::LazyLock;

use burn::tensor::Device;
use scaleot::adapter::{self, Adapter, AdapterManifest};
use scaleot::chat::{ChatTemplate, Message};
use scaleot::data::{self, DataOptions};
use scaleot::emulator::Emulator;
use scaleot::model::{LlamaConfig, LoadedModel, ModelBytes, write_checkpoint};
use scaleot::session::{Checkpoint, Metrics, Session};
use scaleot::tokenizer::Tokenizer;
use scaleot::weights::gguf::{MetaValue, write_f32};
use scaleot::weights::safetensors::{encode_sealed, header_and_data};

// The tests' tiny model; in the native test binary, which includes this file, its own copy.
#[cfg(not(test))]
#[path = "../../tests/common/mod.rs"]
mod common;

use crate::common::session_run;
use crate::common::tiny::{byte_char, tiny_config, tiny_model_bytes, tiny_shape, tiny_tokenizer};

/// A target: arbitrary bytes in; true when they were accepted all the way through (errors are
/// fine, panics are bugs). Every seed must be accepted: that keeps the seeds reaching deep.
pub type Target = fn(&[u8]) -> bool;

/// Every target by name (the name of its `fuzz_targets/*.rs` and of its corpus folder).
pub const TARGETS: &[(&str, Target)] = &[
    ("gguf", gguf),
    ("safetensors", safetensors),
    ("emulator", emulator),
    ("adapter", adapter),
    ("checkpoint", checkpoint),
    ("tokenizer_json", tokenizer_json),
    ("tokenize", tokenize),
    ("chat_template", chat_template),
    ("data", data),
];

/// A GGUF model file: header, metadata, tokenizer, config, and the whole model built from it.
pub fn gguf(bytes: &[u8]) -> bool {
    LoadedModel::from_gguf(bytes, &flex()).is_ok()
}

/// A Hugging Face safetensors shard under the tiny model's config and tokenizer.
pub fn safetensors(bytes: &[u8]) -> bool {
    LoadedModel::from_hf(&TINY.config_json, &TINY.tokenizer_json, &[bytes], &flex()).is_ok()
}

/// An emulator bundle: `[manifest length: u32 LE][manifest JSON][weights]` after the mode byte.
pub fn emulator(bytes: &[u8]) -> bool {
    let Some((mode, rest)) = bytes.split_first() else {
        return false;
    };
    let Some((manifest, weights)) = split_emulator(rest) else {
        return false;
    };
    let manifest = match (
        mode % 2,
        serde_json::from_str::<serde_json::Value>(&manifest),
    ) {
        (1, Ok(mut m)) => {
            m["weights_sha256"] = scaleot::sha256_hex(&[weights]).into();
            m.to_string()
        }
        _ => manifest,
    };
    Emulator::load(&manifest, weights, &flex()).is_ok()
}

/// A single-file adapter, checked and plugged into the tiny model as `scaleot plugin` does.
pub fn adapter(bytes: &[u8]) -> bool {
    let Some(file) = after_mode_byte(bytes, reseal_adapter) else {
        return false;
    };
    let Ok(adapter) = Adapter::load_single(&file) else {
        return false;
    };
    let cfg = tiny_config();
    if adapter.check_layers(cfg.num_hidden_layers).is_err()
        || adapter.check_emulator(&TINY.emulator.manifest).is_err()
    {
        return false;
    }
    let base = TINY.model.open().expect("the tiny model opens");
    write_checkpoint(&cfg, &adapter.plugged_into(base.source.as_ref())).is_ok()
}

/// A training checkpoint, resumed into a fresh session of the tiny run.
pub fn checkpoint(bytes: &[u8]) -> bool {
    let Some(file) = after_mode_byte(bytes, reseal_checkpoint) else {
        return false;
    };
    let Ok(ckpt) = Checkpoint::from_bytes(file) else {
        return false;
    };
    let mut session = tiny_session();
    // A resumed run must be able to go on.
    session.resume(&TINY.emulator_weights, &ckpt).is_ok()
        && futures_lite::future::block_on(session.step()).is_ok()
}

/// A Hugging Face tokenizer.json, then a round trip through it.
pub fn tokenizer_json(bytes: &[u8]) -> bool {
    let Ok(text) = std::str::from_utf8(bytes) else {
        return false;
    };
    let Ok(tok) = Tokenizer::from_hf_json(text) else {
        return false;
    };
    let ids = tok.encode("Hello wörld  12345 <|im_start|>x\n\n");
    let _ = tok.decode(&ids);
    let _ = tok.chat_template();
    true
}

/// Arbitrary text through SmolLM2's real tokenizer: decoding gives the text back when the
/// vocabulary has every byte of it (as in Hugging Face's, bytes it lacks, such as 0x13, are
/// dropped).
pub fn tokenize(bytes: &[u8]) -> bool {
    let text = String::from_utf8_lossy(bytes);
    let ids = SMOLLM2.encode(&text);
    let decoded = SMOLLM2.decode(&ids);
    let every_byte_known = text
        .bytes()
        .all(|b| SMOLLM2.token_to_id(&byte_char(b).to_string()).is_some());
    if every_byte_known {
        assert_eq!(decoded, text, "decode(encode(text)) != text");
    }
    true
}

/// A chat template (as an emulator manifest carries it) rendered over a short conversation;
/// the template is the text before the first NUL, the user's message the rest.
pub fn chat_template(bytes: &[u8]) -> bool {
    let text = String::from_utf8_lossy(bytes);
    let (source, user) = text.split_once('\0').unwrap_or((&text, "Hi"));
    let Ok(template) = ChatTemplate::new(source, "<|im_start|>", "<|im_end|>") else {
        return false;
    };
    let messages = [
        Message {
            role: "user".into(),
            content: user.into(),
        },
        Message {
            role: "assistant".into(),
            content: "Hello.".into(),
        },
    ];
    template.render(&messages, true).is_ok() && template.segments(&messages).is_ok()
}

/// A private-data file under one of the names the page and the CLI see (the mode byte picks
/// the name and whether over-long examples are cut).
pub fn data(bytes: &[u8]) -> bool {
    let Some((mode, file)) = bytes.split_first() else {
        return false;
    };
    let name = ["notes.jsonl", "notes.txt", "notes"][(mode >> 1) as usize % 3];
    let opts = DataOptions {
        max_len: 64,
        held_out: 0.2,
        seed: 0,
        truncate: mode % 2 == 1,
    };
    data::load(file, name, &SMOLLM2, &opts).is_ok()
}

/// Seeds for each target, from real files: the tiny model as GGUF and as safetensors, its
/// emulator bundle, an adapter and a checkpoint of a real (tiny) run, SmolLM2's tokenizer test
/// strings and chat template, and the sample data files.
pub fn seeds(target: &str) -> Vec<Vec<u8>> {
    let with_mode = |mode: u8, bytes: &[u8]| [&[mode][..], bytes].concat();
    match target {
        "gguf" => vec![tiny_gguf()],
        "safetensors" => match &TINY.model {
            ModelBytes::Hf { shards, .. } => shards.clone(),
            ModelBytes::Gguf(_) => Vec::new(),
        },
        "emulator" => {
            let (json, weights) = session_run::tiny_emulator();
            let mut bundle = (json.len() as u32).to_le_bytes().to_vec();
            bundle.extend(json.as_bytes());
            bundle.extend(&weights);
            vec![with_mode(0, &bundle), with_mode(1, &bundle)]
        }
        "adapter" | "checkpoint" => {
            let (adapter, checkpoint) = tiny_run_files();
            let file = if target == "adapter" {
                adapter
            } else {
                checkpoint
            };
            vec![with_mode(0, &file), with_mode(1, &file)]
        }
        "tokenizer_json" => vec![tiny_tokenizer().to_hf_json().to_string().into_bytes()],
        "tokenize" => {
            let golden: serde_json::Value = serde_json::from_str(GOLDEN_TOKENIZER).unwrap();
            golden["cases"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|c| c["text"].as_str())
                .map(|t| t.as_bytes().to_vec())
                .collect()
        }
        "chat_template" => {
            let source = SMOLLM2.chat_template.clone().unwrap_or_default();
            vec![format!("{source}\0What is 2+2?").into_bytes()]
        }
        "data" => [CHAT_SAMPLE, session_run::DATA]
            .iter()
            .flat_map(|d| (0..6).map(|mode| with_mode(mode, d.as_bytes())))
            .collect(),
        _ => panic!("no fuzz target `{target}`"),
    }
}

const GOLDEN_TOKENIZER: &str = include_str!("../../tests/golden/tokenizer.json");
const CHAT_SAMPLE: &str = include_str!("../../tests/fixtures/chat-sample.jsonl");

/// SmolLM2's real tokenizer (its tokenizer.json, as the tests keep it).
static SMOLLM2: LazyLock<Tokenizer> = LazyLock::new(|| {
    let gz = include_bytes!("../../tests/fixtures/smollm2-tokenizer.json.gz");
    let mut json = String::new();
    flate2::read::GzDecoder::new(&gz[..])
        .read_to_string(&mut json)
        .expect("the tokenizer fixture unpacks");
    let mut tok = Tokenizer::from_hf_json(&json).expect("the tokenizer fixture loads");
    tok.chat_template = Some(SMOLLM2_CHAT_TEMPLATE.into());
    tok
});

/// SmolLM2-Instruct's chat template, as its GGUF carries it.
const SMOLLM2_CHAT_TEMPLATE: &str = "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}{{ '<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n' }}{% endif %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}";

/// The tiny model and its emulator, built once per process.
struct Tiny {
    model: ModelBytes,
    config_json: String,
    tokenizer_json: String,
    emulator: Emulator,
    emulator_weights: Vec<u8>,
}

static TINY: LazyLock<Tiny> = LazyLock::new(|| {
    let model = tiny_model_bytes();
    let ModelBytes::Hf {
        config, tokenizer, ..
    } = &model
    else {
        unreachable!("the tiny model is a Hugging Face checkpoint")
    };
    let (json, emulator_weights) = session_run::tiny_emulator();
    let emulator = Emulator::load(&json, &emulator_weights, &flex().autodiff())
        .expect("the tiny emulator loads");
    Tiny {
        config_json: config.clone(),
        tokenizer_json: tokenizer.clone(),
        model,
        emulator,
        emulator_weights,
    }
});

fn flex() -> Device {
    Device::flex()
}

/// The tiny model as a GGUF file (llama.cpp's names and metadata keys).
fn tiny_gguf() -> Vec<u8> {
    let cfg: LlamaConfig = tiny_config();
    let tok = tiny_tokenizer();
    let uint = |v: usize| MetaValue::UInt(v as u64);
    let strings = |v: Vec<String>| MetaValue::Array(v.into_iter().map(MetaValue::Str).collect());
    let tokens: Vec<String> = (0..tok.vocab_size() as u32)
        .map(|i| tok.id_to_token(i).unwrap_or_default().to_string())
        .collect();
    let types = tokens
        .iter()
        .map(|t| MetaValue::Int(if t.starts_with("<|") { 3 } else { 1 }))
        .collect();
    let meta = vec![
        ("general.architecture", MetaValue::Str("llama".into())),
        ("llama.block_count", uint(cfg.num_hidden_layers)),
        ("llama.embedding_length", uint(cfg.hidden_size)),
        ("llama.feed_forward_length", uint(cfg.intermediate_size)),
        ("llama.attention.head_count", uint(cfg.num_attention_heads)),
        (
            "llama.attention.head_count_kv",
            uint(cfg.num_key_value_heads),
        ),
        ("llama.context_length", uint(cfg.max_position_embeddings)),
        ("llama.rope.freq_base", MetaValue::Float(cfg.rope_theta)),
        (
            "llama.attention.layer_norm_rms_epsilon",
            MetaValue::Float(cfg.rms_norm_eps),
        ),
        ("llama.vocab_size", uint(cfg.vocab_size)),
        ("tokenizer.ggml.model", MetaValue::Str("gpt2".into())),
        ("tokenizer.ggml.pre", MetaValue::Str("smollm".into())),
        ("tokenizer.ggml.tokens", strings(tokens)),
        ("tokenizer.ggml.token_type", MetaValue::Array(types)),
        (
            "tokenizer.ggml.merges",
            strings(vec!["t h".into(), "th e".into()]),
        ),
        ("tokenizer.ggml.bos_token_id", uint(259)),
        ("tokenizer.ggml.eos_token_id", uint(260)),
        (
            "tokenizer.chat_template",
            MetaValue::Str(SMOLLM2_CHAT_TEMPLATE.into()),
        ),
    ];
    let model = TINY.model.open().expect("the tiny model opens");
    let tensors: Vec<(String, Vec<usize>, Vec<f32>)> =
        scaleot::names::checkpoint(cfg.num_hidden_layers, cfg.tie_word_embeddings)
            .into_iter()
            .filter_map(|hf| {
                let t = model.source.tensor(&hf).ok()??;
                let (shape, _) = tiny_shape(&cfg, &hf);
                Some((scaleot::names::gguf(&hf)?, shape, t.data))
            })
            .collect();
    let tensors: Vec<(&str, Vec<usize>, Vec<f32>)> = tensors
        .iter()
        .map(|(n, s, d)| (n.as_str(), s.clone(), d.clone()))
        .collect();
    write_f32(&meta, &tensors)
}

/// (adapter file, checkpoint file) of two steps of the tiny run.
fn tiny_run_files() -> (Vec<u8>, Vec<u8>) {
    let mut session = tiny_session();
    futures_lite::future::block_on(async {
        for _ in 0..2 {
            session.step().await.expect("a tiny step");
        }
        let adapter = session
            .adapter_file(&Metrics::default())
            .await
            .expect("an adapter");
        let checkpoint = session.checkpoint().await.expect("a checkpoint");
        (adapter, checkpoint.bytes)
    })
}

/// A fresh session of the tiny run (the tests' browser-session scenario).
fn tiny_session() -> Session {
    Session::new(
        &TINY.emulator,
        session_run::DATA.as_bytes(),
        "notes.jsonl",
        &session_run::settings(),
    )
    .expect("the tiny session starts")
}

/// The file after the leading mode byte, re-sealed by `reseal` when that byte is odd (and
/// the file is readable enough to re-seal); None for empty input.
fn after_mode_byte(bytes: &[u8], reseal: fn(&[u8]) -> Option<Vec<u8>>) -> Option<Vec<u8>> {
    let (mode, file) = bytes.split_first()?;
    Some(match mode % 2 {
        1 => reseal(file).unwrap_or_else(|| file.to_vec()),
        _ => file.to_vec(),
    })
}

fn split_emulator(bytes: &[u8]) -> Option<(String, &[u8])> {
    let (len, rest) = bytes.split_first_chunk::<4>()?;
    let len = u32::from_le_bytes(*len) as usize;
    let manifest = rest.get(..len)?;
    Some((String::from_utf8_lossy(manifest).into_owned(), &rest[len..]))
}

/// The adapter with its manifest's weights hash made to match its tensors.
fn reseal_adapter(file: &[u8]) -> Option<Vec<u8>> {
    let (meta, _) = header_and_data(file).ok()?;
    let json = meta.get(adapter::EMBEDDED_MANIFEST_KEY)?;
    let mut manifest: AdapterManifest = serde_json::from_str(json).ok()?;
    manifest.weights_sha256 = adapter::weights_digest(file).ok()?;
    adapter::embed_manifest(file, &manifest).ok()
}

/// The checkpoint sealed again over its (possibly damaged) tensors and header fields.
fn reseal_checkpoint(file: &[u8]) -> Option<Vec<u8>> {
    let (meta, _) = header_and_data(file).ok()?;
    let tensors = safetensors::SafeTensors::deserialize(file).ok()?;
    let items: Vec<_> = tensors
        .tensors()
        .into_iter()
        .map(|(name, view)| {
            (
                name,
                view.dtype(),
                view.shape().to_vec(),
                view.data().to_vec(),
            )
        })
        .collect();
    let fields: Vec<(&str, &str)> = meta
        .iter()
        .filter(|(k, _)| !matches!(k.as_str(), "format" | "tensors_sha256"))
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    let format = meta.get("format").map_or("", String::as_str);
    encode_sealed(&items, format, &fields).ok()
}
