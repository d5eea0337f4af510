//! The data owner's browser app (wasm32 only). One wasm module serves two contexts: on the
//! page it runs the UI ([`page`]); in the dedicated worker it runs the trainer ([`worker`]),
//! which owns the WebGPU device and the private data. [`storage`] keeps checkpoints in the
//! origin-private file system; [`protocol`] is what the two sides say to each other.

pub mod helpers;
pub mod page;
pub mod protocol;
pub mod storage;
pub mod worker;

use wasm_bindgen::prelude::*;

use crate::model::LlamaConfig;
use crate::tokenizer::Tokenizer;
use crate::weights::Gguf;

#[wasm_bindgen(start)]
pub fn start() -> Result<(), JsValue> {
    console_error_panic_hook::set_once();
    let global = js_sys::global();
    if let Some(scope) = global.dyn_ref::<web_sys::DedicatedWorkerGlobalScope>() {
        if scope.name().starts_with(helpers::HELPER_NAME) {
            helpers::serve(scope.clone());
            return Ok(());
        }
        wasm_bindgen_futures::spawn_local(worker::run(scope.clone()));
        return Ok(());
    }
    // The page, unless another page embeds the module without the app's markup (tests).
    let doc = global
        .dyn_ref::<web_sys::Window>()
        .and_then(|w| w.document())
        .filter(|d| d.get_element_by_id("step-train").is_some());
    match doc {
        Some(doc) => page::start(doc),
        None => Ok(()),
    }
}

/// The value of `key` in a page's or worker's query string (`?workers=2&device=webgpu`).
fn query_value<'a>(search: &'a str, key: &str) -> Option<&'a str> {
    search
        .trim_start_matches('?')
        .split('&')
        .find_map(|kv| kv.strip_prefix(key)?.strip_prefix('='))
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
