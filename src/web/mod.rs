//! wasm-only entry points of the shared core, for the data owner's page.
//! The page itself (training on WebGPU) builds on these; today they expose model inspection
//! and the tokenizer, so the core is exercised through wasm-bindgen from the start.

use wasm_bindgen::prelude::*;

use crate::model::LlamaConfig;
use crate::tokenizer::Tokenizer;
use crate::weights::Gguf;

#[wasm_bindgen(start)]
pub fn start() {
    console_error_panic_hook::set_once();
}

fn js_err(e: crate::Error) -> JsError {
    JsError::new(&e.to_string())
}

/// The model config of a GGUF file, as JSON text (errors say what is wrong with the file).
#[wasm_bindgen(js_name = ggufConfig)]
pub fn gguf_config(bytes: &[u8]) -> Result<String, JsError> {
    let gguf = Gguf::parse(bytes).map_err(js_err)?;
    let cfg = LlamaConfig::from_gguf(&gguf).map_err(js_err)?;
    serde_json::to_string(&cfg).map_err(|e| JsError::new(&e.to_string()))
}

/// A tokenizer usable from JavaScript.
#[wasm_bindgen]
pub struct WebTokenizer(Tokenizer);

#[wasm_bindgen]
impl WebTokenizer {
    /// Builds the tokenizer from a GGUF file's metadata.
    #[wasm_bindgen(js_name = fromGguf)]
    pub fn from_gguf(bytes: &[u8]) -> Result<WebTokenizer, JsError> {
        let gguf = Gguf::parse(bytes).map_err(js_err)?;
        Ok(Self(Tokenizer::from_gguf(&gguf).map_err(js_err)?))
    }

    /// Builds the tokenizer from a Hugging Face tokenizer.json.
    #[wasm_bindgen(js_name = fromJson)]
    pub fn from_json(json: &str) -> Result<WebTokenizer, JsError> {
        Ok(Self(Tokenizer::from_hf_json(json).map_err(js_err)?))
    }

    pub fn encode(&self, text: &str) -> Vec<u32> {
        self.0.encode(text)
    }

    pub fn decode(&self, ids: Vec<u32>) -> String {
        self.0.decode(&ids)
    }
}
