//! Token ids must equal Hugging Face's (goldens from tools/reference/make_goldens.py),
//! both for the tokenizer built from GGUF metadata and from a tokenizer.json.

mod common;

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
