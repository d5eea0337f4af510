//! Byte-level BPE (GPT-2 family), encoding exactly as Hugging Face `tokenizers` does:
//! split on special tokens, pre-tokenize (optional single-digit split, then the GPT-2 regex),
//! map bytes to GPT-2's printable alphabet, then apply merges lowest rank first.
//! Built from GGUF metadata or from a Hugging Face `tokenizer.json`.
//!
//! Linear-time in the input (a browser tab must not freeze on a long line): special tokens are
//! found with one Aho-Corasick pass, the pre-tokenizer scans GPT-2's pattern by hand in one pass
//! (see [`pre_tokens`]), and BPE merges through a priority queue, O(n log n) in a
//! word's length.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};

use aho_corasick::{AhoCorasick, MatchKind};
use serde_json::Value;
use unicode_properties::{GeneralCategoryGroup, UnicodeGeneralCategory};

use crate::error::{Error, Result};
use crate::weights::gguf::{Gguf, MetaValue};

/// The English contractions GPT-2's pattern splits off first (after an apostrophe).
const CONTRACTIONS: [&str; 7] = ["s", "t", "re", "ve", "m", "ll", "d"];

/// The four kinds of character GPT-2's pattern tells apart: `\p{L}`, `\p{N}`, `\s`, the rest.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum CharClass {
    Letter,
    Number,
    Space,
    Other,
}

impl CharClass {
    fn of(c: char) -> Self {
        if c.is_ascii_alphabetic() {
            Self::Letter
        } else if c.is_ascii_digit() {
            Self::Number
        } else if c.is_whitespace() {
            Self::Space
        } else if c.is_ascii() {
            Self::Other
        } else {
            match c.general_category_group() {
                GeneralCategoryGroup::Letter => Self::Letter,
                GeneralCategoryGroup::Number => Self::Number,
                _ => Self::Other,
            }
        }
    }
}

/// The end of GPT-2's pattern's match at `at`, less its `\s+(?!\S)` alternative (whose
/// lookahead [`pre_tokens`] applies): `'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+|
/// ?[^\s\p{L}\p{N}]+|\s+`, first alternative first as the regex crate matches it. Every
/// character starts some alternative, so a match starts at `at` unless the text ends there.
/// Scanned by hand to keep the `regex` crate and its Unicode tables out of the page's download
/// (docs/results.md).
fn gpt2_match_end(text: &str, at: usize) -> Option<usize> {
    let rest = text.get(at..)?;
    let mut chars = rest.chars();
    let first = chars.next()?;
    if first == '\''
        && let Some(c) = CONTRACTIONS.iter().find(|c| rest[1..].starts_with(*c))
    {
        return Some(at + 1 + c.len());
    }
    // ` ?` before a letter, number or other run; a space before a space (or the end) is `\s+`.
    let (run_start, class) = match (first, chars.next().map(CharClass::of)) {
        (' ', Some(next)) if next != CharClass::Space => (1, next),
        _ => (0, CharClass::of(first)),
    };
    let run_len = rest[run_start..]
        .char_indices()
        .find(|&(_, c)| CharClass::of(c) != class)
        .map_or(rest.len() - run_start, |(i, _)| i);
    Some(at + run_start + run_len)
}

/// Splits text into GPT-2 pre-tokens. The pattern's `\s+(?!\S)` (whitespace not followed
/// by text) matches a run of two or more whitespace characters that text follows less its
/// last character, which then starts the next pre-token (` word`, or a lone `\n`); the
/// plain `\s+` after it matches the rest. Linear in the text: no backtracking.
fn pre_tokens(text: &str) -> impl Iterator<Item = &str> {
    let mut at = 0;
    std::iter::from_fn(move || {
        let start = at;
        let mut end = gpt2_match_end(text, start)?;
        let word = &text[start..end];
        if end < text.len() && word.chars().all(char::is_whitespace) {
            // The last character's offset; 0 when the run is one character long.
            let last = word.char_indices().next_back().map_or(0, |(i, _)| i);
            if last > 0 {
                end = start + last;
            }
        }
        at = end;
        Some(&text[start..end])
    })
}

pub struct Tokenizer {
    vocab: HashMap<String, u32>,
    id_to_token: Vec<String>,
    /// (left id, right id) → (rank, merged id)
    merges: HashMap<(u32, u32), (u32, u32)>,
    /// The merges as given ("left right", rank order), kept to write the tokenizer back out.
    merge_list: Vec<String>,
    /// Special tokens matched verbatim before pre-tokenization (their strings and ids).
    specials: Vec<(String, u32)>,
    /// Finds the earliest special token in a text, the longest where several start there.
    special_finder: AhoCorasick,
    split_digits: bool,
    byte_to_char: [char; 256],
    char_to_byte: HashMap<char, u8>,
    pub bos_id: Option<u32>,
    pub eos_id: Option<u32>,
    /// The model's Jinja chat template (GGUF `tokenizer.chat_template`, HF
    /// `tokenizer_config.json`), when it has one.
    pub chat_template: Option<String>,
}

impl std::fmt::Debug for Tokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tokenizer")
            .field("vocab", &self.id_to_token.len())
            .field("merges", &self.merges.len())
            .finish()
    }
}

/// A special token as Hugging Face describes one (an AddedToken), in tokenizer.json's
/// `added_tokens` (with its id) and tokenizer_config.json's `added_tokens_decoder`.
fn special_token_entry(content: &str) -> Value {
    serde_json::json!({"content": content, "single_word": false, "lstrip": false,
        "rstrip": false, "normalized": false, "special": true})
}

/// GPT-2's `bytes_to_unicode`: printable bytes map to themselves, the rest to U+0100 onwards.
pub(crate) fn byte_alphabet() -> [char; 256] {
    let mut table = ['\0'; 256];
    let mut next = 256u32;
    for b in 0..=255u8 {
        let printable = (b'!'..=b'~').contains(&b) || (0xA1..=0xAC).contains(&b) || b >= 0xAE;
        table[b as usize] = if printable {
            b as char
        } else {
            let c = char::from_u32(next).unwrap_or('?');
            next += 1;
            c
        };
    }
    table
}

fn tok_err(msg: impl Into<String>) -> Error {
    Error::Tokenizer(msg.into())
}

impl Tokenizer {
    /// Assembles a tokenizer from its parts; `merges` are "left right" strings in rank order.
    pub fn new(
        tokens: Vec<String>,
        merges: &[String],
        specials: Vec<(String, u32)>,
        split_digits: bool,
        bos_id: Option<u32>,
        eos_id: Option<u32>,
    ) -> Result<Self> {
        if tokens.is_empty() {
            return Err(tok_err("the vocabulary is empty"));
        }
        let n = tokens.len();
        for (what, id) in [("start", bos_id), ("end-of-text", eos_id)] {
            if let Some(id) = id.filter(|&id| id as usize >= n) {
                return Err(tok_err(format!(
                    "the {what} token id {id} is outside the vocabulary of {n} tokens"
                )));
            }
        }
        if specials.iter().any(|(s, _)| s.is_empty()) {
            return Err(tok_err("a special token is the empty string"));
        }
        if let Some((s, id)) = specials.iter().find(|(_, id)| *id as usize >= n) {
            return Err(tok_err(format!(
                "special token `{s}` has id {id}, outside the vocabulary of {n} tokens"
            )));
        }
        let vocab: HashMap<String, u32> = tokens
            .iter()
            .enumerate()
            .map(|(i, t)| (t.clone(), i as u32))
            .collect();
        let mut merge_map = HashMap::with_capacity(merges.len());
        for (rank, m) in merges.iter().enumerate() {
            let (a, b) = m
                .split_once(' ')
                .ok_or_else(|| tok_err(format!("merge #{rank} `{m}` is not two tokens")))?;
            let id = |s: &str| {
                vocab.get(s).copied().ok_or_else(|| {
                    tok_err(format!(
                        "merge #{rank} `{m}` uses `{s}`, which is not in the vocabulary"
                    ))
                })
            };
            let merged = id(&format!("{a}{b}"))?;
            merge_map
                .entry((id(a)?, id(b)?))
                .or_insert((rank as u32, merged));
        }
        let byte_to_char = byte_alphabet();
        let char_to_byte = byte_to_char
            .iter()
            .enumerate()
            .map(|(b, &c)| (c, b as u8))
            .collect();
        let special_finder = AhoCorasick::builder()
            .match_kind(MatchKind::LeftmostLongest)
            .build(specials.iter().map(|(s, _)| s))
            .map_err(|e| tok_err(format!("special tokens: {e}")))?;
        Ok(Self {
            vocab,
            id_to_token: tokens,
            merges: merge_map,
            merge_list: merges.to_vec(),
            specials,
            special_finder,
            split_digits,
            byte_to_char,
            char_to_byte,
            bos_id,
            eos_id,
            chat_template: None,
        })
    }

    /// From the `tokenizer.ggml.*` metadata of a GGUF file (`model = gpt2`).
    pub fn from_gguf(g: &Gguf) -> Result<Self> {
        let hint = "this GGUF carries no usable tokenizer; load the model together with its tokenizer.json";
        let get = |key: &str| {
            g.get(key).ok_or_else(|| Error::MissingMetadata {
                key: key.into(),
                hint,
            })
        };
        let model = get("tokenizer.ggml.model")?.as_str().unwrap_or("");
        if model != "gpt2" {
            return Err(tok_err(format!(
                "tokenizer model `{model}` is not supported (only byte-level BPE, `gpt2`)"
            )));
        }
        let strings = |key: &str| -> Result<Vec<String>> {
            get(key)?
                .as_array()
                .ok_or_else(|| tok_err(format!("`{key}` is not an array")))?
                .iter()
                .map(|v| {
                    v.as_str()
                        .map(str::to_owned)
                        .ok_or_else(|| tok_err(format!("`{key}` holds a non-string")))
                })
                .collect()
        };
        let tokens = strings("tokenizer.ggml.tokens")?;
        let merges = strings("tokenizer.ggml.merges")?;
        // token_type 3 = control (special), 4 = user-defined: both are matched verbatim.
        let specials = match g
            .get("tokenizer.ggml.token_type")
            .and_then(MetaValue::as_array)
        {
            Some(types) => types
                .iter()
                .enumerate()
                .filter(|(_, t)| matches!(t.as_u64(), Some(3 | 4)))
                .filter_map(|(i, _)| tokens.get(i).map(|s| (s.clone(), i as u32)))
                .collect(),
            None => Vec::new(),
        };
        let pre = g
            .get("tokenizer.ggml.pre")
            .and_then(MetaValue::as_str)
            .unwrap_or("default");
        // llama.cpp's pre-tokenizers that split digits one by one before the GPT-2 regex.
        let split_digits = matches!(pre, "smollm" | "starcoder" | "refact" | "codeshell");
        let id = |key: &str| g.get(key).and_then(MetaValue::as_u64).map(|v| v as u32);
        let mut tok = Self::new(
            tokens,
            &merges,
            specials,
            split_digits,
            id("tokenizer.ggml.bos_token_id"),
            id("tokenizer.ggml.eos_token_id"),
        )?;
        tok.chat_template = g
            .get("tokenizer.chat_template")
            .and_then(MetaValue::as_str)
            .map(str::to_owned);
        Ok(tok)
    }

    /// The `tokenizer.ggml.*` GGUF metadata of this tokenizer, the inverse of
    /// [`Self::from_gguf`]: special tokens as control tokens (type 3), the others normal (1).
    pub fn to_gguf_metadata(&self) -> Vec<(String, MetaValue)> {
        let strings = |items: &[String]| {
            MetaValue::Array(items.iter().map(|t| MetaValue::Str(t.clone())).collect())
        };
        let types = (0..self.id_to_token.len() as u32)
            .map(|id| match self.specials.iter().any(|(_, s)| *s == id) {
                true => MetaValue::Int(3),
                false => MetaValue::Int(1),
            })
            .collect();
        let pre = if self.split_digits { "smollm" } else { "gpt2" };
        let mut meta = vec![
            ("tokenizer.ggml.model", MetaValue::Str("gpt2".into())),
            ("tokenizer.ggml.pre", MetaValue::Str(pre.into())),
            ("tokenizer.ggml.tokens", strings(&self.id_to_token)),
            ("tokenizer.ggml.token_type", MetaValue::Array(types)),
            ("tokenizer.ggml.merges", strings(&self.merge_list)),
            ("tokenizer.ggml.add_bos_token", MetaValue::Bool(false)),
            ("tokenizer.ggml.add_space_prefix", MetaValue::Bool(false)),
        ];
        let ids = [
            ("tokenizer.ggml.bos_token_id", self.bos_id),
            ("tokenizer.ggml.eos_token_id", self.eos_id),
            ("tokenizer.ggml.padding_token_id", self.eos_id),
        ];
        for (key, id) in ids {
            if let Some(id) = id {
                meta.push((key, MetaValue::UInt(id as u64)));
            }
        }
        if let Some(template) = &self.chat_template {
            meta.push(("tokenizer.chat_template", MetaValue::Str(template.clone())));
        }
        meta.into_iter().map(|(k, v)| (k.to_owned(), v)).collect()
    }

    /// The model's chat template, compiled; an error says what to do when it has none.
    pub fn chat_template(&self) -> Result<crate::chat::ChatTemplate> {
        let source = self.chat_template.as_deref().ok_or_else(|| {
            Error::Invalid(
                "this model has no chat template, so `messages` data cannot be laid out; use prompt/completion JSONL instead".into(),
            )
        })?;
        let token = |id: Option<u32>| id.and_then(|i| self.id_to_token(i)).unwrap_or("");
        crate::chat::ChatTemplate::new(source, token(self.bos_id), token(self.eos_id))
    }

    /// From Hugging Face's tokenizer files: `tokenizer.json` and, when the folder has one,
    /// `tokenizer_config.json`, whose `bos_token` / `eos_token` name the special tokens (they
    /// override what the names in tokenizer.json suggest) and whose `chat_template` is the
    /// model's.
    pub fn from_hf_files(json: &str, config: Option<&str>) -> Result<Self> {
        let mut tok = Self::from_hf_json(json)?;
        let Some(text) = config else {
            return Ok(tok);
        };
        let config: Value = serde_json::from_str(text).map_err(|error| Error::Json {
            what: "tokenizer_config.json".into(),
            error,
        })?;
        // A special token is a string or an AddedToken object; `null` means the model has none.
        let named = |key: &str| -> Result<Option<Option<u32>>> {
            let name = match &config[key] {
                Value::Null if config.get(key).is_none() => return Ok(None),
                Value::Null => return Ok(Some(None)),
                Value::String(s) => s.as_str(),
                v => v["content"].as_str().ok_or_else(|| {
                    tok_err(format!("tokenizer_config.json `{key}` is not a token: {v}"))
                })?,
            };
            match tok.token_to_id(name) {
                Some(id) => Ok(Some(Some(id))),
                None => Err(tok_err(format!(
                    "tokenizer_config.json names `{name}` as {key}, but tokenizer.json has no such token"
                ))),
            }
        };
        let (bos, eos) = (named("bos_token")?, named("eos_token")?);
        tok.bos_id = bos.unwrap_or(tok.bos_id);
        tok.eos_id = eos.unwrap_or(tok.eos_id);
        tok.chat_template = match &config["chat_template"] {
            Value::String(s) => Some(s.clone()),
            // The older form: a list of named templates, of which "default" is the chat one.
            Value::Array(list) => list
                .iter()
                .find(|t| t["name"] == "default")
                .and_then(|t| t["template"].as_str())
                .map(str::to_owned),
            _ => None,
        };
        Ok(tok)
    }

    /// From a Hugging Face `tokenizer.json` alone (BPE model with a ByteLevel pre-tokenizer);
    /// the special tokens are guessed from their names (see [`Self::from_hf_files`]).
    pub fn from_hf_json(json: &str) -> Result<Self> {
        let j: Value = serde_json::from_str(json).map_err(|error| Error::Json {
            what: "tokenizer.json".into(),
            error,
        })?;
        let model = &j["model"];
        if model["type"].as_str() != Some("BPE") {
            return Err(tok_err(format!(
                "tokenizer.json model type {} is not supported (only BPE)",
                model["type"]
            )));
        }
        let vocab = model["vocab"]
            .as_object()
            .ok_or_else(|| tok_err("tokenizer.json has no model.vocab object"))?;
        let mut tokens = vec![String::new(); vocab.len()];
        for (tok, id) in vocab {
            let id = id
                .as_u64()
                .filter(|&i| (i as usize) < tokens.len())
                .ok_or_else(|| {
                    tok_err(format!(
                        "vocab id of `{tok}` is not an index below the vocab size"
                    ))
                })?;
            tokens[id as usize] = tok.clone();
        }
        let mut specials = Vec::new();
        let added = j["added_tokens"].as_array().map_or(0, Vec::len);
        // Added tokens extend the vocabulary, by at most their own number of ids: a larger id
        // is a damaged file (and would make the vocabulary that large).
        let most = vocab.len() + added;
        for t in j["added_tokens"].as_array().into_iter().flatten() {
            let (Some(content), Some(id)) = (t["content"].as_str(), t["id"].as_u64()) else {
                return Err(tok_err("an added token lacks `content` or `id`"));
            };
            if id >= most as u64 {
                return Err(tok_err(format!(
                    "added token `{content}` has id {id}, beyond the {} vocabulary entries and {added} added tokens",
                    vocab.len()
                )));
            }
            if id as usize >= tokens.len() {
                tokens.resize(id as usize + 1, String::new());
            }
            tokens[id as usize] = content.to_owned();
            specials.push((content.to_owned(), id as u32));
        }
        let merges: Vec<String> = model["merges"]
            .as_array()
            .ok_or_else(|| tok_err("tokenizer.json has no model.merges"))?
            .iter()
            .map(|m| match m {
                Value::String(s) => Ok(s.clone()),
                Value::Array(p) if p.len() == 2 => Ok(format!(
                    "{} {}",
                    p[0].as_str().unwrap_or_default(),
                    p[1].as_str().unwrap_or_default()
                )),
                other => Err(tok_err(format!("unreadable merge {other}"))),
            })
            .collect::<Result<_>>()?;
        let pre = j["pre_tokenizer"].to_string();
        if !pre.contains("ByteLevel") {
            return Err(tok_err(
                "only byte-level BPE tokenizers (ByteLevel pre-tokenizer) are supported",
            ));
        }
        let split_digits = pre.contains("\"Digits\"");
        let find = |names: &[&str]| {
            names
                .iter()
                .find_map(|n| specials.iter().find(|(s, _)| s == n).map(|(_, id)| *id))
        };
        // Files written before tokenizer_config.json carried them kept the ids here.
        let recorded = |key: &str| j["scaleot"][key].as_u64().map(|v| v as u32);
        let bos =
            recorded("bos_id").or_else(|| find(&["<|im_start|>", "<s>", "<|begin_of_text|>"]));
        let eos = recorded("eos_id")
            .or_else(|| find(&["<|im_end|>", "</s>", "<|endoftext|>", "<|end_of_text|>"]));
        Self::new(tokens, &merges, specials, split_digits, bos, eos)
    }

    /// This tokenizer as a Hugging Face `tokenizer.json` document (BPE, ByteLevel), so that
    /// an emulator bundle carries it and `from_hf_json` rebuilds the same encoder; the special
    /// tokens' roles and the chat template go in [`Self::to_hf_config`].
    pub fn to_hf_json(&self) -> Value {
        let byte_level = serde_json::json!({
            "type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": true
        });
        let pre_tokenizer = if self.split_digits {
            serde_json::json!({"type": "Sequence", "pretokenizers": [
                {"type": "Digits", "individual_digits": true}, byte_level
            ]})
        } else {
            byte_level
        };
        let mut specials = self.specials.clone();
        specials.sort_by_key(|(_, id)| *id);
        let added: Vec<Value> = specials
            .iter()
            .map(|(content, id)| {
                let mut entry = special_token_entry(content);
                entry["id"] = Value::from(*id);
                entry
            })
            .collect();
        let vocab: serde_json::Map<String, Value> = self
            .id_to_token
            .iter()
            .enumerate()
            .map(|(i, t)| (t.clone(), Value::from(i)))
            .collect();
        serde_json::json!({
            "version": "1.0",
            "added_tokens": added,
            "normalizer": null,
            "pre_tokenizer": pre_tokenizer,
            "post_processor": null,
            "decoder": {"type": "ByteLevel", "add_prefix_space": true, "trim_offsets": true, "use_regex": true},
            "model": {"type": "BPE", "dropout": null, "unk_token": null, "fuse_unk": false,
                "byte_fallback": false, "vocab": vocab, "merges": self.merge_list},
        })
    }

    /// The `tokenizer_config.json` that goes beside [`Self::to_hf_json`]: the special tokens
    /// by role and the chat template, as transformers' `AutoTokenizer` and
    /// `apply_chat_template` read them.
    pub fn to_hf_config(&self, model_max_length: usize) -> Value {
        let token = |id: Option<u32>| id.and_then(|i| self.id_to_token(i));
        let mut specials = self.specials.clone();
        specials.sort_by_key(|(_, id)| *id);
        let decoder: serde_json::Map<String, Value> = specials
            .iter()
            .map(|(content, id)| {
                let entry = special_token_entry(content);
                (id.to_string(), entry)
            })
            .collect();
        let mut config = serde_json::json!({
            "tokenizer_class": "PreTrainedTokenizerFast",
            "added_tokens_decoder": decoder,
            "bos_token": token(self.bos_id),
            "eos_token": token(self.eos_id),
            // Padding with end-of-text, as lm-eval and our scoring do.
            "pad_token": token(self.eos_id),
            "add_bos_token": false,
            "add_prefix_space": false,
            "clean_up_tokenization_spaces": false,
            "model_max_length": model_max_length,
        });
        if let Some(template) = &self.chat_template {
            config["chat_template"] = Value::from(template.as_str());
        }
        config
    }

    /// The token an empty context starts from when scoring (lm-eval's `prefix_token_id`: the
    /// beginning-of-text token, else the end-of-text one).
    pub fn prefix_id(&self) -> Option<u32> {
        self.bos_id.or(self.eos_id)
    }

    pub fn vocab_size(&self) -> usize {
        self.id_to_token.len()
    }

    /// Refuses a tokenizer with ids the model's embedding (`model_vocab` rows) does not have:
    /// they would index past it.
    pub fn check_fits(&self, model_vocab: usize) -> Result<()> {
        match self.vocab_size() <= model_vocab {
            true => Ok(()),
            false => Err(tok_err(format!(
                "the tokenizer has {} tokens but the model's embedding only {model_vocab} rows: they do not belong together",
                self.vocab_size()
            ))),
        }
    }

    pub fn token_to_id(&self, token: &str) -> Option<u32> {
        self.vocab.get(token).copied()
    }

    pub fn id_to_token(&self, id: u32) -> Option<&str> {
        self.id_to_token.get(id as usize).map(String::as_str)
    }

    /// Encodes text; special tokens in the text become their ids (as HF does by default).
    pub fn encode(&self, text: &str) -> Vec<u32> {
        let mut ids = Vec::new();
        let mut done = 0;
        for m in self.special_finder.find_iter(text) {
            self.encode_ordinary(&text[done..m.start()], &mut ids);
            ids.push(self.specials[m.pattern().as_usize()].1);
            done = m.end();
        }
        self.encode_ordinary(&text[done..], &mut ids);
        ids
    }

    /// Encodes text with no special-token matching.
    fn encode_ordinary(&self, text: &str, ids: &mut Vec<u32>) {
        let mut piece_start = 0;
        let emit = |piece: &str, ids: &mut Vec<u32>| {
            for word in pre_tokens(piece) {
                self.bpe_word(word, ids);
            }
        };
        if self.split_digits {
            for (i, c) in text.char_indices() {
                if c.is_numeric() {
                    emit(&text[piece_start..i], ids);
                    let end = i + c.len_utf8();
                    emit(&text[i..end], ids);
                    piece_start = end;
                }
            }
        }
        emit(&text[piece_start..], ids);
    }

    /// BPE on one pre-token: start from single byte-symbols, merge the lowest-ranked pair
    /// (leftmost on ties) until no pair is in the merge table. The symbols form a linked list
    /// and candidate pairs wait in a min-heap by (rank, position); an entry whose symbols
    /// have changed since it was pushed is skipped (a merged symbol is a longer token, so
    /// comparing ids tells).
    fn bpe_word(&self, word: &str, ids: &mut Vec<u32>) {
        let mut syms: Vec<u32> = Vec::with_capacity(word.len());
        let mut buf = [0u8; 4];
        for &b in word.as_bytes() {
            let c = self.byte_to_char[b as usize];
            // Every byte symbol is in a byte-level vocab; a vocab without it cannot encode it.
            if let Some(&id) = self.vocab.get(c.encode_utf8(&mut buf) as &str) {
                syms.push(id);
            }
        }
        let n = syms.len();
        const NONE: usize = usize::MAX;
        let mut next: Vec<usize> = (1..=n).map(|i| if i < n { i } else { NONE }).collect();
        let mut prev: Vec<usize> = (0..n).map(|i| i.checked_sub(1).unwrap_or(NONE)).collect();
        // (rank, left position, left id, right id, merged id)
        let mut heap = BinaryHeap::new();
        let push = |heap: &mut BinaryHeap<_>, syms: &[u32], left: usize, right: usize| {
            if let Some(&(rank, merged)) = self.merges.get(&(syms[left], syms[right])) {
                heap.push(Reverse((rank, left, syms[left], syms[right], merged)));
            }
        };
        for i in 1..n {
            push(&mut heap, &syms, i - 1, i);
        }
        let mut alive = vec![true; n];
        while let Some(Reverse((_, left, left_id, right_id, merged))) = heap.pop() {
            let right = next[left];
            if !alive[left] || right == NONE || syms[left] != left_id || syms[right] != right_id {
                continue;
            }
            syms[left] = merged;
            alive[right] = false;
            next[left] = next[right];
            if next[left] != NONE {
                prev[next[left]] = left;
                push(&mut heap, &syms, left, next[left]);
            }
            if prev[left] != NONE {
                push(&mut heap, &syms, prev[left], left);
            }
        }
        ids.extend((0..n).filter(|&i| alive[i]).map(|i| syms[i]));
    }

    /// Decodes ids back to text (byte-level), replacing invalid UTF-8 like HF does.
    pub fn decode(&self, ids: &[u32]) -> String {
        let mut bytes = Vec::new();
        for &id in ids {
            let Some(tok) = self.id_to_token.get(id as usize) else {
                continue;
            };
            if self.specials.iter().any(|(_, s)| *s == id) {
                bytes.extend(tok.as_bytes());
                continue;
            }
            for c in tok.chars() {
                match self.char_to_byte.get(&c) {
                    Some(&b) => bytes.push(b),
                    None => bytes.extend(c.encode_utf8(&mut [0u8; 4]).as_bytes()),
                }
            }
        }
        String::from_utf8_lossy(&bytes).into_owned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn toy() -> Tokenizer {
        let alphabet = byte_alphabet();
        let mut tokens: Vec<String> = alphabet.iter().map(|c| c.to_string()).collect();
        for t in ["ab", "Ġa", "Ġab", "<|x|>"] {
            tokens.push(t.into());
        }
        let merges = vec!["Ġ a".to_string(), "a b".into(), "Ġa b".into()];
        let specials = vec![("<|x|>".to_string(), 259)];
        Tokenizer::new(tokens, &merges, specials, true, None, None).unwrap()
    }

    #[test]
    fn merges_by_rank_and_roundtrips() {
        let t = toy();
        let ids = t.encode("ab ab<|x|>a1");
        assert_eq!(ids[0], 256); // "ab"
        assert_eq!(ids[1], 258); // "Ġab"
        assert_eq!(ids[2], 259); // special
        assert_eq!(t.decode(&ids), "ab ab<|x|>a1");
    }

    /// The heap merge agrees with the plain definition (merge the lowest-ranked pair,
    /// leftmost on ties, until none is left) on random words over a small alphabet whose merges
    /// overlap and chain.
    #[test]
    fn heap_merging_equals_lowest_rank_leftmost_merging() {
        use rand::{Rng, SeedableRng};
        let alphabet = byte_alphabet();
        let mut tokens: Vec<String> = alphabet.iter().map(|c| c.to_string()).collect();
        let merges: Vec<String> = ["a a", "b a", "a b", "aa a", "ab a", "ba b", "c aa", "aa aa"]
            .map(String::from)
            .to_vec();
        for m in &merges {
            tokens.push(m.replace(' ', ""));
        }
        let t = Tokenizer::new(tokens, &merges, vec![], false, None, None).unwrap();
        // Printable bytes are their own symbols, at ids equal to the byte.
        assert_eq!((t.vocab["a"], t.vocab["c"]), (97, 99));
        let plain = |word: &str| -> Vec<u32> {
            let mut syms: Vec<u32> = word.bytes().map(|b| b as u32).collect();
            while let Some((_, i, merged)) = syms
                .windows(2)
                .enumerate()
                .filter_map(|(i, w)| t.merges.get(&(w[0], w[1])).map(|&(r, m)| (r, i, m)))
                .min()
            {
                syms[i] = merged;
                syms.remove(i + 1);
            }
            syms
        };
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        for _ in 0..2000 {
            let len = rng.random_range(0..40);
            let word: String = (0..len)
                .map(|_| ['a', 'b', 'c'][rng.random_range(0..3)])
                .collect();
            let mut ids = Vec::new();
            t.bpe_word(&word, &mut ids);
            assert_eq!(ids, plain(&word), "{word}");
        }
    }

    /// The pre-tokenizer equals GPT-2's full pattern (lookahead included, run by a
    /// backtracking regex) on random mixes of letters, digits, marks and every kind of space.
    #[cfg(not(target_family = "wasm"))]
    #[test]
    fn pre_tokens_equal_gpt2s_lookahead_pattern() {
        use rand::{Rng, SeedableRng};
        let full = fancy_regex::Regex::new(
            r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+",
        )
        .unwrap();
        let pieces = [
            "a", "é", "Z", "7", "٣", "Ⅻ", "!", "'s", "'t", "'ll", "'", "re", "l", " ", "  ", "\t",
            "\n", "\r\n", "\u{a0}", "\u{85}", "\u{2028}", "\u{3000}", "日", "\u{301}", "🙂",
        ];
        let mut rng = rand::rngs::StdRng::seed_from_u64(11);
        for _ in 0..5000 {
            let n = rng.random_range(0..12);
            let text: String = (0..n)
                .map(|_| pieces[rng.random_range(0..pieces.len())])
                .collect();
            let want: Vec<&str> = full.find_iter(&text).map(|m| m.unwrap().as_str()).collect();
            assert_eq!(pre_tokens(&text).collect::<Vec<_>>(), want, "{text:?}");
        }
    }

    /// Every character the `regex` crate's Unicode tables assign falls in the class its
    /// `\p{L}`, `\p{N}` and `\s` give it. Characters assigned since those tables' version
    /// (`\p{Cn}` there) may differ: they were no letter or number to the regex at all.
    #[cfg(not(target_family = "wasm"))]
    #[test]
    fn char_classes_equal_the_regex_crates() {
        let class = fancy_regex::Regex::new(r"^(?:(\p{L})|(\p{N})|(\s)|(\p{Cn})|.)$").unwrap();
        let mut buf = [0u8; 4];
        let mut checked = 0;
        for c in (0..=u32::from(char::MAX)).filter_map(char::from_u32) {
            let caps = class.captures(c.encode_utf8(&mut buf)).unwrap().unwrap();
            let want = match (1..=4).find(|&i| caps.get(i).is_some()) {
                Some(1) => CharClass::Letter,
                Some(2) => CharClass::Number,
                Some(3) => CharClass::Space,
                Some(_) => continue,
                None => CharClass::Other,
            };
            assert_eq!(CharClass::of(c), want, "U+{:04X}", u32::from(c));
            checked += 1;
        }
        assert!(checked > 150_000, "{checked}");
    }

    #[test]
    fn an_empty_special_token_is_refused() {
        let tokens = vec!["a".to_string()];
        let err =
            Tokenizer::new(tokens, &[], vec![(String::new(), 0)], false, None, None).unwrap_err();
        assert!(err.to_string().contains("empty"), "{err}");
    }

    #[test]
    fn bad_merges_are_errors() {
        let tokens = vec!["a".to_string()];
        let err = Tokenizer::new(tokens, &["a zz".into()], vec![], false, None, None).unwrap_err();
        assert!(err.to_string().contains("not in the vocabulary"), "{err}");
        assert!(Tokenizer::from_hf_json("{not json").is_err());
        assert!(Tokenizer::from_hf_json(r#"{"model":{"type":"Unigram"}}"#).is_err());
    }
}
