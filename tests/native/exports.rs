//! What `scaleot plugin` writes for other tools (a Hugging Face folder, a PEFT adapter, a
//! GGUF file), read back by our own loaders on the tiny model. The real clients
//! (transformers, PEFT, gguf) load the real model's exports in
//! `tools/reference/check_exports.py`.

use crate::common;

use common::tiny::{
    bundle, load_emulator, logits, max_abs_diff, read_adapter_tensors, tiny_model_bytes,
    tiny_tokenizer,
};

use burn::tensor::Device;
use scaleot::adapter::{self, Adapter, AdapterManifest};
use scaleot::emulator::EmulatorManifest;
use scaleot::export::{self, GgufPrecision};
use scaleot::model::{LoadedModel, LoraConfig, ModelBytes, OpenedModel};
use scaleot::tokenizer::Tokenizer;
use scaleot::weights::WeightSource;

const CHATML: &str =
    "{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n{% endfor %}";

/// A LoRA adapter for the tiny model's emulator with every factor non-zero, so that plugging
/// it in changes the model.
fn lora_adapter() -> (Vec<u8>, AdapterManifest, EmulatorManifest) {
    let device = Device::flex();
    let (weights, manifest) = bundle(&tiny_model_bytes(), 2);
    let emu = load_emulator(&weights, &manifest, &device);
    let lora = LoraConfig::new(4, 8.0, "q_proj,v_proj,down_proj").unwrap();
    let positions = emu.adapter_positions();
    let model = emu.model.with_lora(&positions, &lora, 7, None).unwrap();
    let mut tensors = read_adapter_tensors(&model, &manifest.plan);
    for (name, t) in &mut tensors {
        if name.ends_with("lora_B.weight") {
            t.data
                .iter_mut()
                .enumerate()
                .for_each(|(i, x)| *x = 0.05 * ((i % 7) as f32 - 3.0));
        }
    }
    let json = serde_json::json!({});
    let (aw, am) =
        adapter::write_adapter(tensors, &manifest, Some(&lora), json.clone(), json).unwrap();
    (aw, am, manifest)
}

fn file<'a>(files: &'a [export::File], name: &str) -> &'a [u8] {
    &files.iter().find(|(n, _)| *n == name).unwrap().1
}

fn text(files: &[export::File], name: &str) -> String {
    String::from_utf8(file(files, name).to_vec()).unwrap()
}

/// Runs `check` on the tiny model (with a chat template) and its LoRA adapter plugged in.
fn with_plugged_model(check: impl FnOnce(&OpenedModel, &dyn WeightSource)) {
    let base = tiny_model_bytes();
    let (aw, am, _) = lora_adapter();
    let adapter = Adapter::load(&serde_json::to_string(&am).unwrap(), &aw).unwrap();
    let mut opened = base.open().unwrap();
    opened.tokenizer.chat_template = Some(CHATML.into());
    check(&opened, &adapter.plugged_into(opened.source.as_ref()));
}

#[test]
fn the_hugging_face_folder_reloads_as_the_plugged_model() {
    with_plugged_model(|opened, plugged| {
        let device = Device::flex();
        let tokenizer = &opened.tokenizer;
        let files = export::hf_folder(&opened.config, tokenizer, plugged).unwrap();
        let names: Vec<&str> = files.iter().map(|(n, _)| *n).collect();
        assert_eq!(
            names,
            [
                "model.safetensors",
                "config.json",
                "generation_config.json",
                "tokenizer.json",
                "tokenizer_config.json"
            ]
        );
        // tokenizer.json holds only what Hugging Face's `tokenizers` knows.
        let tok_json: serde_json::Value =
            serde_json::from_str(&text(&files, "tokenizer.json")).unwrap();
        let known = [
            "version",
            "truncation",
            "padding",
            "added_tokens",
            "normalizer",
            "pre_tokenizer",
            "post_processor",
            "decoder",
            "model",
        ];
        for key in tok_json.as_object().unwrap().keys() {
            assert!(known.contains(&key.as_str()), "tokenizer.json has `{key}`");
        }
        let config: serde_json::Value = serde_json::from_str(&text(&files, "config.json")).unwrap();
        assert_eq!(config["bos_token_id"], 259);
        assert_eq!(config["eos_token_id"], 260);
        let generation: serde_json::Value =
            serde_json::from_str(&text(&files, "generation_config.json")).unwrap();
        assert_eq!(generation["eos_token_id"], 260);

        let reloaded = ModelBytes::Hf {
            config: text(&files, "config.json"),
            tokenizer: text(&files, "tokenizer.json"),
            tokenizer_config: Some(text(&files, "tokenizer_config.json")),
            shards: vec![file(&files, "model.safetensors").to_vec()],
        };
        let again = LoadedModel::from_opened(reloaded.open().unwrap(), &device).unwrap();
        let direct = scaleot::model::Llama::load(&opened.config, plugged, &device).unwrap();
        assert_eq!(logits(&again.model, &device), logits(&direct, &device));
        let original =
            scaleot::model::Llama::load(&opened.config, opened.source.as_ref(), &device).unwrap();
        assert!(max_abs_diff(&logits(&direct, &device), &logits(&original, &device)) > 1e-3);
        assert_eq!(
            (again.tokenizer.bos_id, again.tokenizer.eos_id),
            (Some(259), Some(260))
        );
        assert_eq!(again.tokenizer.chat_template.as_deref(), Some(CHATML));
        let text = "the <|im_start|>theme 123";
        assert_eq!(again.tokenizer.encode(text), tokenizer.encode(text));
    });
}

/// tokenizer_config.json names the special tokens (as Hugging Face folders do); files written
/// before it existed kept the ids inside tokenizer.json, and still read.
#[test]
fn special_tokens_come_from_tokenizer_config() {
    let tok = tiny_tokenizer();
    let json = tok.to_hf_json().to_string();
    let read = |config: &str| Tokenizer::from_hf_files(&json, Some(config));
    let t = read(r#"{"bos_token": "<|endoftext|>", "eos_token": {"content": "<|im_start|>"}}"#)
        .unwrap();
    assert_eq!((t.bos_id, t.eos_id), (Some(258), Some(259)));
    let t = read(r#"{"bos_token": null}"#).unwrap();
    assert_eq!(
        (t.bos_id, t.eos_id),
        (None, Some(260)),
        "null: none; absent: kept"
    );
    let err = read(r#"{"eos_token": "<nope>"}"#).unwrap_err().to_string();
    assert!(err.contains("no such token"), "{err}");
    assert!(read("{not json").is_err());
    let t = read(r#"{"chat_template": [{"name": "default", "template": "T"}]}"#).unwrap();
    assert_eq!(t.chat_template.as_deref(), Some("T"));

    let mut legacy = tok.to_hf_json();
    legacy["scaleot"] = serde_json::json!({"bos_id": 258, "eos_id": 258});
    let t = Tokenizer::from_hf_json(&legacy.to_string()).unwrap();
    assert_eq!((t.bos_id, t.eos_id), (Some(258), Some(258)));
}

#[test]
fn gguf_exports_read_back_as_the_plugged_model() {
    with_plugged_model(|opened, plugged| {
        let device = Device::flex();
        let tokenizer = &opened.tokenizer;
        let direct = scaleot::model::Llama::load(&opened.config, plugged, &device).unwrap();
        let want = logits(&direct, &device);
        let mut last = None;
        for (precision, tolerance) in [(GgufPrecision::F16, 2e-2), (GgufPrecision::Q8_0, 2e-1)] {
            let bytes =
                export::gguf_file(&opened.config, tokenizer, plugged, precision, None).unwrap();
            let m = LoadedModel::from_gguf(&bytes, &device).unwrap();
            assert_eq!(m.config.num_hidden_layers, opened.config.num_hidden_layers);
            let d = max_abs_diff(&logits(&m.model, &device), &want);
            assert!(d < tolerance, "{precision:?}: logits moved by {d}");
            assert!(d > 0.0, "{precision:?} must round something");
            let text = "the <|im_start|>theme 123";
            assert_eq!(m.tokenizer.encode(text), tokenizer.encode(text));
            assert_eq!(
                (m.tokenizer.bos_id, m.tokenizer.eos_id),
                (Some(259), Some(260))
            );
            assert_eq!(m.tokenizer.chat_template.as_deref(), Some(CHATML));
            // Written from a GGUF, the base's own general.* and tokenizer.* entries stay.
            let g = scaleot::weights::Gguf::parse(&bytes).unwrap();
            assert_eq!(
                g.tensor_info("blk.0.attn_norm.weight").unwrap().kind,
                scaleot::weights::quant::GgmlType::F32
            );
            let mut meta = g.metadata.clone();
            meta.insert(
                "general.name".into(),
                scaleot::weights::gguf::MetaValue::Str("tiny".into()),
            );
            let again =
                export::gguf_file(&opened.config, tokenizer, plugged, precision, Some(&meta))
                    .unwrap();
            let g2 = scaleot::weights::Gguf::parse(&again).unwrap();
            assert_eq!(
                g2.get("general.name").and_then(|v| v.as_str()),
                Some("tiny")
            );
            last = Some(bytes);
        }
        assert!(last.is_some());
        let err = GgufPrecision::parse("q4_k").unwrap_err().to_string();
        assert!(err.contains("f16 or q8_0"), "{err}");
        // Llama-3 RoPE scaling has no GGUF form here: refused, pointing at the folder.
        let llama3 =
            std::fs::read_to_string(common::root().join("tests/fixtures/tiny-llama3/config.json"))
                .unwrap();
        let cfg = scaleot::model::LlamaConfig::from_hf_json(&llama3).unwrap();
        let err = cfg.to_gguf_metadata().unwrap_err().to_string();
        assert!(err.contains("plugin --out"), "{err}");
    });
}

#[test]
fn peft_export_holds_the_factors_and_refuses_whole_layers() {
    let (aw, am, manifest) = lora_adapter();
    let adapter = Adapter::load(&serde_json::to_string(&am).unwrap(), &aw).unwrap();
    let files = export::peft_adapter(&adapter, "base/model").unwrap();
    let config: serde_json::Value =
        serde_json::from_str(&text(&files, "adapter_config.json")).unwrap();
    assert_eq!(config["peft_type"], "LORA");
    assert_eq!(config["r"], 4);
    assert_eq!(config["lora_alpha"], 8);
    assert_eq!(config["layers_to_transform"], serde_json::json!([0, 5]));
    assert_eq!(
        config["target_modules"],
        serde_json::json!(["q_proj", "v_proj", "down_proj"])
    );
    assert_eq!(config["base_model_name_or_path"], "base/model");
    let weights = file(&files, "adapter_model.safetensors");
    let st = safetensors::SafeTensors::deserialize(weights).unwrap();
    let mut names = st.names();
    names.sort();
    assert_eq!(names.len(), 2 * 3 * 2);
    assert!(names.contains(&"base_model.model.model.layers.5.mlp.down_proj.lora_B.weight"));

    // The page's single file (manifest inside) exports the same adapter.
    let single = adapter::embed_manifest(&aw, &am).unwrap();
    let from_page = Adapter::load_single(&single).unwrap();
    assert_eq!(
        export::peft_adapter(&from_page, "base/model").unwrap(),
        files
    );

    // Whole tuned layers have no LoRA form: refused, pointing at the merged checkpoint.
    let device = Device::flex();
    let (weights, _) = bundle(&tiny_model_bytes(), 2);
    let emu = load_emulator(&weights, &manifest, &device);
    let tensors = read_adapter_tensors(&emu.model, &manifest.plan);
    let json = serde_json::json!({});
    let (lw, lm) = adapter::write_adapter(tensors, &manifest, None, json.clone(), json).unwrap();
    let layers = Adapter::load(&serde_json::to_string(&lm).unwrap(), &lw).unwrap();
    let err = export::peft_adapter(&layers, "base")
        .unwrap_err()
        .to_string();
    assert!(err.contains("plugin --out"), "{err}");
}
