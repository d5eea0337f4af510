//! ggml block dequantization must equal gguf-py's (llama.cpp's Python reference) on random blocks.

use crate::common;

use scaleot::weights::quant::{GgmlType, dequantize};

#[test]
fn every_block_type_matches_gguf_py() {
    let g = common::golden("quant_blocks.json");
    let cases = g["cases"].as_array().unwrap();
    assert_eq!(cases.len(), 7);
    for case in cases {
        let ty = match case["type"].as_str().unwrap() {
            "Q4_0" => GgmlType::Q4_0,
            "Q4_1" => GgmlType::Q4_1,
            "Q5_0" => GgmlType::Q5_0,
            "Q5_1" => GgmlType::Q5_1,
            "Q8_0" => GgmlType::Q8_0,
            "Q4_K" => GgmlType::Q4K,
            "Q6_K" => GgmlType::Q6K,
            other => panic!("unexpected type {other}"),
        };
        let raw: Vec<u8> = case["bytes"]
            .as_array()
            .unwrap()
            .iter()
            .map(|b| b.as_u64().unwrap() as u8)
            .collect();
        let want: Vec<f32> = case["values"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_f64().unwrap() as f32)
            .collect();
        assert_eq!(ty.byte_len(want.len()), Some(raw.len()));
        let mut got = vec![0f32; want.len()];
        dequantize(ty, &raw, &mut got);
        for (i, (a, b)) in got.iter().zip(&want).enumerate() {
            assert!(
                (a - b).abs() <= 1e-6 * b.abs().max(1.0),
                "{ty:?}[{i}]: {a} vs {b}"
            );
        }
    }
}
