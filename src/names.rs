//! Every tensor name the project reads or writes, built in one place: Hugging Face LLaMA names
//! (`model.layers.3.self_attn.q_proj.weight`), the names ScaleOT adds beside them (harmonizers,
//! low-rank factors), PEFT's LoRA factor names, and llama.cpp's GGUF names.
//!
//! This module imports nothing from the crate: weight readers, the model, emulators and
//! adapters all name tensors through it.

/// The token embedding `[vocab, hidden]`.
pub const EMBED: &str = "model.embed_tokens.weight";
/// The final RMSNorm `[hidden]`.
pub const FINAL_NORM: &str = "model.norm.weight";
/// The vocabulary head `[vocab, hidden]` (absent when tied to the embedding).
pub const LM_HEAD: &str = "lm_head.weight";

/// A decoder layer's seven projections (also LoRA's targets), in the order they are stored.
pub const PROJECTIONS: [&str; 7] = [
    "q_proj",
    "k_proj",
    "v_proj",
    "o_proj",
    "gate_proj",
    "up_proj",
    "down_proj",
];

/// The attention projections of [`PROJECTIONS`] (the ones Selective Rank Compression factors).
pub const ATTENTION_PROJECTIONS: [&str; 4] = ["q_proj", "k_proj", "v_proj", "o_proj"];

/// `model.layers.{i}`: decoder layer `i` of the full model as a module (PEFT's
/// `modules_to_save` entries).
pub fn layer(i: usize) -> String {
    format!("model.layers.{i}")
}

/// `model.layers.{i}.input_layernorm.weight`
pub fn input_norm(i: usize) -> String {
    format!("{}.input_layernorm.weight", layer(i))
}

/// `model.layers.{i}.post_attention_layernorm.weight`
pub fn post_attention_norm(i: usize) -> String {
    format!("{}.post_attention_layernorm.weight", layer(i))
}

/// The module of projection `proj` (one of [`PROJECTIONS`]) in layer `i`:
/// `model.layers.3.self_attn.q_proj`, `model.layers.3.mlp.up_proj`.
pub fn projection(i: usize, proj: &str) -> String {
    let block = if ATTENTION_PROJECTIONS.contains(&proj) {
        "self_attn"
    } else {
        "mlp"
    };
    format!("{}.{block}.{proj}", layer(i))
}

/// The weight `[out, in]` of a module: `{module}.weight`.
pub fn weight(module: &str) -> String {
    format!("{module}.weight")
}

/// The module a `{module}.weight` name belongs to.
pub fn module_of_weight(name: &str) -> Option<&str> {
    name.strip_suffix(".weight")
}

/// `model.layers.{i}.self_attn.q_proj.weight` and the like.
pub fn projection_weight(i: usize, proj: &str) -> String {
    weight(&projection(i, proj))
}

/// The nine tensors of decoder layer `i`, in storage order: input norm, q/k/v/o,
/// post-attention norm, gate/up/down.
pub fn layer_tensors(i: usize) -> Vec<String> {
    let mut names = vec![input_norm(i)];
    names.extend(PROJECTIONS[..4].iter().map(|p| projection_weight(i, p)));
    names.push(post_attention_norm(i));
    names.extend(PROJECTIONS[4..].iter().map(|p| projection_weight(i, p)));
    names
}

/// Every tensor of an `n_layers` LLaMA checkpoint, in storage order.
pub fn checkpoint(n_layers: usize, tied_head: bool) -> Vec<String> {
    let mut names = vec![EMBED.to_owned()];
    names.extend((0..n_layers).flat_map(layer_tensors));
    names.push(FINAL_NORM.to_owned());
    if !tied_head {
        names.push(LM_HEAD.to_owned());
    }
    names
}

/// ScaleOT's harmonizer standing in for layer `i`: norm `[hidden]`, down `[r, hidden]`,
/// up `[hidden, r]` (HF layout).
pub fn harmonizer_tensors(i: usize) -> [String; 3] {
    ["norm", "down_proj", "up_proj"].map(|p| format!("{}.harmonizer.{p}.weight", layer(i)))
}

/// Selective Rank Compression's factors of a projection module: `{module}.lowrank_u.weight`
/// `[out, r]` (U·Σ) and `{module}.lowrank_v.weight` `[r, in]` (Vᵀ).
pub fn lowrank_factors(module: &str) -> [String; 2] {
    [
        format!("{module}.lowrank_u.weight"),
        format!("{module}.lowrank_v.weight"),
    ]
}

/// PEFT's names of a module's LoRA factors: `lora_A` `[r, in]`, `lora_B` `[out, r]`.
pub fn lora_factors(module: &str) -> [String; 2] {
    [
        format!("base_model.model.{module}.lora_A.weight"),
        format!("base_model.model.{module}.lora_B.weight"),
    ]
}

/// A Hugging Face LLaMA tensor name's llama.cpp GGUF name (`None` for names GGUF lacks).
pub fn gguf(hf: &str) -> Option<String> {
    Some(match hf {
        EMBED => "token_embd.weight".into(),
        FINAL_NORM => "output_norm.weight".into(),
        LM_HEAD => "output.weight".into(),
        _ => {
            let rest = hf.strip_prefix("model.layers.")?;
            let (layer, part) = rest.split_once('.')?;
            let short = match part {
                "input_layernorm.weight" => "attn_norm.weight",
                "post_attention_layernorm.weight" => "ffn_norm.weight",
                "self_attn.q_proj.weight" => "attn_q.weight",
                "self_attn.k_proj.weight" => "attn_k.weight",
                "self_attn.v_proj.weight" => "attn_v.weight",
                "self_attn.o_proj.weight" => "attn_output.weight",
                "mlp.gate_proj.weight" => "ffn_gate.weight",
                "mlp.up_proj.weight" => "ffn_up.weight",
                "mlp.down_proj.weight" => "ffn_down.weight",
                _ => return None,
            };
            format!("blk.{layer}.{short}")
        }
    })
}

/// Heads whose rows llama.cpp permuted in a GGUF projection: `Some(true)` for the query
/// (`n_heads`), `Some(false)` for the key (`n_kv_heads`), `None` for everything else.
pub fn is_query_or_key(hf: &str) -> Option<bool> {
    if hf.ends_with(".self_attn.q_proj.weight") {
        Some(true)
    } else if hf.ends_with(".self_attn.k_proj.weight") {
        Some(false)
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layer_names_follow_hugging_face() {
        assert_eq!(
            layer_tensors(3),
            [
                "model.layers.3.input_layernorm.weight",
                "model.layers.3.self_attn.q_proj.weight",
                "model.layers.3.self_attn.k_proj.weight",
                "model.layers.3.self_attn.v_proj.weight",
                "model.layers.3.self_attn.o_proj.weight",
                "model.layers.3.post_attention_layernorm.weight",
                "model.layers.3.mlp.gate_proj.weight",
                "model.layers.3.mlp.up_proj.weight",
                "model.layers.3.mlp.down_proj.weight",
            ]
        );
        assert_eq!(checkpoint(2, true).len(), 2 + 2 * 9);
        assert_eq!(
            checkpoint(2, false).last().map(String::as_str),
            Some(LM_HEAD)
        );
        assert_eq!(
            lora_factors(&projection(0, "down_proj"))[1],
            "base_model.model.model.layers.0.mlp.down_proj.lora_B.weight"
        );
        assert_eq!(
            harmonizer_tensors(7)[2],
            "model.layers.7.harmonizer.up_proj.weight"
        );
    }

    #[test]
    fn names_map_to_llama_cpp() {
        assert_eq!(
            gguf("model.layers.12.mlp.down_proj.weight").as_deref(),
            Some("blk.12.ffn_down.weight")
        );
        assert_eq!(gguf("model.bogus"), None);
        for name in checkpoint(2, false) {
            assert!(gguf(&name).is_some(), "{name} has no GGUF name");
        }
    }
}
