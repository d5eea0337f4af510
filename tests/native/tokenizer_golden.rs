//! Token ids must equal Hugging Face's (goldens from tools/reference/make_goldens.py),
//! both for the tokenizer built from GGUF metadata and from a tokenizer.json.

use crate::common;

use std::io::Read;

use scaleot::tokenizer::Tokenizer;
use scaleot::weights::Gguf;

fn check(tok: &Tokenizer, label: &str) {
    let g = common::golden("tokenizer.json");
    let cases = g["cases"].as_array().expect("cases");
    assert!(cases.len() >= 15);
    for case in cases {
        let text = case["text"].as_str().expect("text");
        let want = common::ids(&case["ids"]);
        assert_eq!(tok.encode(text), want, "{label}: encoding {text:?}");
        // Byte-level BPE is lossless on ordinary text.
        assert_eq!(tok.decode(&want), text, "{label}: decoding {text:?}");
    }
}

#[test]
fn gguf_tokenizer_matches_hugging_face() {
    let bytes = common::smollm2_bytes();
    let tok = Tokenizer::from_gguf(&Gguf::parse(&bytes).unwrap()).unwrap();
    assert_eq!(tok.vocab_size(), 49152);
    assert_eq!(tok.eos_id, Some(2));
    check(&tok, "gguf");
    // An empty context (and perplexity's first window) starts from lm-eval's prefix token.
    let lm_eval = common::golden("lm_eval_reference.json")["prefix_token_id"].as_u64();
    assert_eq!(tok.prefix_id().map(u64::from), lm_eval);
}

/// Inputs that used to hang or take quadratic time (a million-character word made the
/// backtracking regex give up and loop on its error; merging was quadratic in a word's length;
/// each special token rescanned the rest of the text for every other one) encode in one pass
/// and decode back.
#[test]
fn long_runs_encode_in_linear_time() {
    let bytes = common::smollm2_bytes();
    let tok = Tokenizer::from_gguf(&Gguf::parse(&bytes).unwrap()).unwrap();
    let texts = [
        "x".repeat(1_000_000),
        " ".repeat(1_000_000) + "x",
        "7".repeat(200_000),
        "<|im_start|>a".repeat(100_000),
    ];
    for text in &texts {
        let ids = tok.encode(text);
        assert!(!ids.is_empty() && ids.len() <= text.len());
        assert_eq!(&tok.decode(&ids), text);
    }
    // The same word's ids repeat with its length: 4 x's per token for a long run of x.
    assert_eq!(tok.encode(&texts[0]).len(), 250_000);
}

#[test]
fn tokenizer_json_matches_hugging_face() {
    let path = common::root().join("tests/fixtures/smollm2-tokenizer.json.gz");
    let mut json = String::new();
    flate2::read::GzDecoder::new(std::fs::File::open(path).unwrap())
        .read_to_string(&mut json)
        .unwrap();
    let tok = Tokenizer::from_hf_json(&json).unwrap();
    check(&tok, "tokenizer.json");
}

#[test]
fn tokenizer_survives_a_round_trip_through_tokenizer_json() {
    let bytes = common::smollm2_bytes();
    let tok = Tokenizer::from_gguf(&Gguf::parse(&bytes).unwrap()).unwrap();
    let again = Tokenizer::from_hf_json(&tok.to_hf_json().to_string()).unwrap();
    assert_eq!((again.bos_id, again.eos_id), (tok.bos_id, tok.eos_id));
    check(&again, "round trip");
}

#[test]
fn chat_template_matches_transformers_apply_chat_template() {
    use scaleot::chat::Message;
    use scaleot::data::{self, DataFormat, DataOptions};
    let bytes = common::smollm2_bytes();
    let tok = Tokenizer::from_gguf(&Gguf::parse(&bytes).unwrap()).unwrap();
    let template = tok.chat_template().unwrap();
    let g = common::golden("chat.json");
    let cases = g["cases"].as_array().expect("cases");
    for case in cases {
        let messages: Vec<Message> = case["messages"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| Message {
                role: m["role"].as_str().unwrap().into(),
                content: m["content"].as_str().unwrap().into(),
            })
            .collect();
        let generation_prompt = case["add_generation_prompt"].as_bool().unwrap();
        let text = template.render(&messages, generation_prompt).unwrap();
        assert_eq!(text, case["text"].as_str().unwrap());
        if generation_prompt {
            continue;
        }
        // Training data: the same ids, learned exactly on the assistant turns.
        let line = serde_json::json!({ "messages": case["messages"] }).to_string();
        let opts = DataOptions {
            max_len: 512,
            held_out: 0.0,
            seed: 0,
            truncate: false,
        };
        let d = data::load(line.as_bytes(), "chat.jsonl", &tok, &opts).unwrap();
        assert_eq!(d.format, DataFormat::Chat);
        let ex = &d.train[0];
        assert_eq!(ex.ids, common::ids(&case["ids"]));
        let learned: Vec<u32> = ex
            .ids
            .iter()
            .zip(&ex.loss)
            .filter(|(_, l)| **l)
            .map(|(i, _)| *i)
            .collect();
        let want: String = messages
            .iter()
            .filter(|m| m.role == "assistant")
            .map(|m| format!("{}<|im_end|>\n", m.content))
            .collect();
        assert_eq!(tok.decode(&learned), want);
    }
}
