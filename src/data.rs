//! The data owner's private data in: plain text (packed into blocks), JSONL with `text`,
//! `prompt`/`completion`, chat `messages`, or multiple-choice items. Everything becomes token
//! ids plus a loss mask, deterministically shuffled and split into train and held-out sets.

use rand::SeedableRng;
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use serde_json::Value;

use crate::chat::{ChatTemplate, Message};
use crate::error::{Error, Result};
use crate::tokenizer::Tokenizer;

/// One training sequence. `loss[i]` says whether token `i` is predicted (from tokens `..i`).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Example {
    pub ids: Vec<u32>,
    pub loss: Vec<bool>,
}

impl Example {
    /// Number of tokens that carry loss (the first token never does: nothing predicts it).
    pub fn target_tokens(&self) -> usize {
        self.loss.iter().skip(1).filter(|&&b| b).count()
    }
}

/// What a file turned out to hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum DataFormat {
    PlainText,
    JsonlText,
    PromptCompletion,
    Chat,
    MultipleChoice,
}

#[derive(Debug, Clone)]
pub struct DataOptions {
    /// Longest sequence in tokens (the model's context or less).
    pub max_len: usize,
    /// Share of examples held out for evaluation (0.0..0.5).
    pub held_out: f64,
    pub seed: u64,
    /// Cut over-long examples from the start (keeping the learned end) instead of refusing them.
    pub truncate: bool,
}

#[derive(Debug, Clone)]
pub struct Dataset {
    pub format: DataFormat,
    pub train: Vec<Example>,
    pub held_out: Vec<Example>,
}

impl Dataset {
    pub fn train_tokens(&self) -> usize {
        self.train.iter().map(Example::target_tokens).sum()
    }
}

fn line_err(line: usize, msg: impl std::fmt::Display) -> Error {
    Error::Invalid(format!("line {line}: {msg}"))
}

/// The largest data file read (256 MiB of text, some 60 million tokens: far more than adapter
/// tuning takes). Callers check a file's size before reading it ([`check_data_size`]).
pub const MAX_DATA_BYTES: u64 = 256 << 20;

/// Refuses a data file of `bytes` bytes larger than [`MAX_DATA_BYTES`], naming its size.
pub fn check_data_size(name: &str, bytes: u64) -> Result<()> {
    if bytes > MAX_DATA_BYTES {
        return Err(Error::Invalid(format!(
            "{name} is {:.0} MiB, more than the {} MiB a data file may hold: train on a part of it",
            bytes as f64 / (1 << 20) as f64,
            MAX_DATA_BYTES >> 20
        )));
    }
    Ok(())
}

/// Parses a data file. `name` (the file name) decides between plain text and JSONL.
pub fn load(bytes: &[u8], name: &str, tok: &Tokenizer, opts: &DataOptions) -> Result<Dataset> {
    check_data_size(name, bytes.len() as u64)?;
    let text = std::str::from_utf8(bytes).map_err(|e| {
        Error::Invalid(format!(
            "{name} is not UTF-8 text (invalid byte at offset {}): save it as UTF-8 and try again",
            e.valid_up_to()
        ))
    })?;
    // Editors on Windows start UTF-8 files with a byte-order mark; it is not text.
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    if text.trim().is_empty() {
        return Err(Error::Invalid(format!(
            "{name} is empty: there is nothing to train on"
        )));
    }
    if opts.max_len < 2 {
        return Err(Error::setting(
            "seq_len",
            opts.max_len,
            "must be at least 2 tokens",
        ));
    }
    let eos = tok
        .eos_id
        .ok_or_else(|| Error::Tokenizer("the tokenizer has no end-of-text token".into()))?;
    // The extension decides; only a file without a known one is sniffed (a `.txt` of code
    // notes may well start with `{`).
    let lower = name.to_ascii_lowercase();
    let is_jsonl = if lower.ends_with(".jsonl") || lower.ends_with(".json") {
        true
    } else if [".txt", ".md", ".text", ".markdown"]
        .iter()
        .any(|e| lower.ends_with(e))
    {
        false
    } else {
        text.trim_start().starts_with('{')
    };
    let (format, mut examples) = if is_jsonl {
        parse_jsonl(text, tok, eos, opts)?
    } else {
        let mut ids = tok.encode(text);
        ids.push(eos);
        (DataFormat::PlainText, pack(&ids, opts.max_len))
    };
    if examples.is_empty() {
        return Err(Error::Invalid(format!(
            "{name} yields no training examples"
        )));
    }
    examples.shuffle(&mut StdRng::seed_from_u64(opts.seed));
    // Some held out whenever a share is asked for and there is more than one example;
    // none at 0.
    let n_held = if examples.len() < 2 || opts.held_out <= 0.0 {
        0
    } else {
        ((examples.len() as f64 * opts.held_out.clamp(0.0, 0.5)).round() as usize)
            .clamp(1, examples.len() - 1)
    };
    let train = examples.split_off(n_held);
    Ok(Dataset {
        format,
        train,
        held_out: examples,
    })
}

/// Cuts a token stream into blocks of `max_len` with loss everywhere.
fn pack(ids: &[u32], max_len: usize) -> Vec<Example> {
    ids.chunks(max_len)
        .filter(|c| c.len() >= 2)
        .map(|c| Example {
            ids: c.to_vec(),
            loss: vec![true; c.len()],
        })
        .collect()
}

fn parse_jsonl(
    text: &str,
    tok: &Tokenizer,
    eos: u32,
    opts: &DataOptions,
) -> Result<(DataFormat, Vec<Example>)> {
    let mut format: Option<DataFormat> = None;
    let mut examples = Vec::new();
    let mut text_stream: Vec<u32> = Vec::new();
    let mut template: Option<ChatTemplate> = None;
    for (i, line) in text.lines().enumerate() {
        let n = i + 1;
        if line.trim().is_empty() {
            continue;
        }
        let v: Value =
            serde_json::from_str(line).map_err(|e| line_err(n, format!("not valid JSON ({e})")))?;
        let this = detect(&v).ok_or_else(|| {
            line_err(
                n,
                "expected an object with `text`, `prompt`+`completion`, `messages`, or `question`+`choices`+`answer`",
            )
        })?;
        match format {
            None => format = Some(this),
            Some(f) if f != this => {
                return Err(line_err(
                    n,
                    format!("is {this:?} but earlier lines are {f:?}: use one format per file"),
                ));
            }
            _ => {}
        }
        match this {
            DataFormat::JsonlText => {
                text_stream.extend(tok.encode(str_field(&v, "text", n)?));
                text_stream.push(eos);
            }
            DataFormat::PromptCompletion => {
                let prompt = str_field(&v, "prompt", n)?;
                let completion = str_field(&v, "completion", n)?;
                examples.push(pair(
                    tok,
                    &[(prompt, false), (completion, true)],
                    eos,
                    n,
                    opts,
                )?);
            }
            DataFormat::Chat => {
                // Compiled on the first conversation, once per file.
                if template.is_none() {
                    template = Some(tok.chat_template()?);
                }
                if let Some(t) = &template {
                    examples.push(chat(tok, t, &v, n, opts)?);
                }
            }
            DataFormat::MultipleChoice => {
                let (prompt, answer) = multiple_choice(&v, n)?;
                examples.push(pair(
                    tok,
                    &[(&prompt, false), (&format!(" {answer}"), true)],
                    eos,
                    n,
                    opts,
                )?);
            }
            DataFormat::PlainText => unreachable!("detect never returns PlainText"),
        }
    }
    let format = format.ok_or_else(|| Error::Invalid("the file has no JSON lines".into()))?;
    if format == DataFormat::JsonlText {
        examples = pack(&text_stream, opts.max_len);
    }
    Ok((format, examples))
}

fn detect(v: &Value) -> Option<DataFormat> {
    let o = v.as_object()?;
    if o.contains_key("messages") {
        Some(DataFormat::Chat)
    } else if o.contains_key("prompt") && o.contains_key("completion") {
        Some(DataFormat::PromptCompletion)
    } else if o.contains_key("choices") && (o.contains_key("question") || o.contains_key("query")) {
        Some(DataFormat::MultipleChoice)
    } else if o.contains_key("text") {
        Some(DataFormat::JsonlText)
    } else {
        None
    }
}

fn str_field<'a>(v: &'a Value, key: &str, line: usize) -> Result<&'a str> {
    v.get(key)
        .and_then(Value::as_str)
        .ok_or_else(|| line_err(line, format!("`{key}` must be a string")))
}

/// `{"question", "choices": [..], "answer": index or the answer text}`, or lm-eval's
/// `{"query", "choices", "gold"}` whose query is already the prompt: returns the prompt and
/// the correct choice's text.
fn multiple_choice(v: &Value, line: usize) -> Result<(String, String)> {
    let prompt = match (
        v.get("query").and_then(Value::as_str),
        v.get("question").and_then(Value::as_str),
    ) {
        (Some(query), _) => query.to_owned(),
        (None, Some(q)) => format!("Question: {q}\nAnswer:"),
        (None, None) => return Err(line_err(line, "`question` must be a string")),
    };
    let choices: Vec<&str> = v["choices"]
        .as_array()
        .and_then(|a| a.iter().map(Value::as_str).collect())
        .ok_or_else(|| line_err(line, "`choices` must be a list of strings"))?;
    let answer = v.get("answer").or_else(|| v.get("gold"));
    if let Some(i) = answer
        .and_then(Value::as_u64)
        .filter(|&i| i as usize >= choices.len())
    {
        return Err(line_err(
            line,
            format!(
                "answer {i} is out of range for {} choices (answers count from 0)",
                choices.len()
            ),
        ));
    }
    let text = match answer {
        Some(Value::Number(n)) => n
            .as_u64()
            .and_then(|i| choices.get(i as usize))
            .map(|s| s.to_string()),
        Some(Value::String(s)) => Some(s.clone()),
        _ => None,
    }
    .ok_or_else(|| line_err(line, "`answer` must be a choice index or the answer text"))?;
    Ok((prompt, text))
}

/// Concatenates segments (text, has loss) and appends end-of-text (with loss if the last
/// segment has loss, so the model learns to stop).
fn pair(
    tok: &Tokenizer,
    segments: &[(&str, bool)],
    eos: u32,
    line: usize,
    opts: &DataOptions,
) -> Result<Example> {
    let mut ex = Example {
        ids: Vec::new(),
        loss: Vec::new(),
    };
    for (text, loss) in segments {
        let ids = tok.encode(text);
        ex.loss.extend(std::iter::repeat_n(*loss, ids.len()));
        ex.ids.extend(ids);
    }
    ex.ids.push(eos);
    ex.loss.push(segments.last().is_some_and(|s| s.1));
    fit(ex, line, opts)
}

fn fit(mut ex: Example, line: usize, opts: &DataOptions) -> Result<Example> {
    if ex.ids.len() > opts.max_len {
        if !opts.truncate {
            return Err(line_err(
                line,
                format!(
                    "{} tokens, longer than the {}-token context: shorten it, raise the sequence length, or allow truncation",
                    ex.ids.len(),
                    opts.max_len
                ),
            ));
        }
        // Keep the end, where the learned part (completion, answer, last turn) sits.
        let cut = ex.ids.len() - opts.max_len;
        ex.ids.drain(..cut);
        ex.loss.drain(..cut);
    }
    if ex.target_tokens() == 0 {
        return Err(line_err(
            line,
            "nothing to learn: the part that carries loss is empty",
        ));
    }
    Ok(ex)
}

/// A conversation laid out by the model's own chat template; loss on assistant turns.
fn chat(
    tok: &Tokenizer,
    template: &ChatTemplate,
    v: &Value,
    line: usize,
    opts: &DataOptions,
) -> Result<Example> {
    let messages = v["messages"]
        .as_array()
        .filter(|m| !m.is_empty())
        .ok_or_else(|| line_err(line, "`messages` must be a non-empty list"))?;
    let mut turns = Vec::with_capacity(messages.len());
    for m in messages {
        let field = |key: &str| {
            m[key]
                .as_str()
                .map(str::to_owned)
                .ok_or_else(|| line_err(line, format!("a message lacks `{key}`")))
        };
        turns.push(Message {
            role: field("role")?,
            content: field("content")?,
        });
    }
    if !turns.iter().any(|t| t.role == "assistant") {
        return Err(line_err(
            line,
            "the conversation has no assistant turn: nothing to learn",
        ));
    }
    let segments = template.segments(&turns).map_err(|e| line_err(line, e))?;
    let mut ex = Example {
        ids: Vec::new(),
        loss: Vec::new(),
    };
    for seg in segments {
        let ids = tok.encode(&seg.text);
        ex.loss.extend(std::iter::repeat_n(seg.learn, ids.len()));
        ex.ids.extend(ids);
    }
    fit(ex, line, opts)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tok() -> Tokenizer {
        let mut tokens: Vec<String> = crate::tokenizer::byte_alphabet()
            .iter()
            .map(char::to_string)
            .collect();
        for s in ["<|endoftext|>", "<|im_start|>", "<|im_end|>"] {
            tokens.push(s.into());
        }
        let specials = vec![
            ("<|endoftext|>".to_string(), 256),
            ("<|im_start|>".to_string(), 257),
            ("<|im_end|>".to_string(), 258),
        ];
        let mut tok = Tokenizer::new(tokens, &[], specials, true, Some(257), Some(258)).unwrap();
        tok.chat_template = Some(
            "{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}".into(),
        );
        tok
    }

    fn opts() -> DataOptions {
        DataOptions {
            max_len: 64,
            held_out: 0.25,
            seed: 1,
            truncate: false,
        }
    }

    #[test]
    fn prompt_completion_puts_loss_on_the_completion_only() {
        let data =
            b"{\"prompt\":\"ab\",\"completion\":\"cd\"}\n{\"prompt\":\"x\",\"completion\":\"y\"}\n";
        let d = load(data, "d.jsonl", &tok(), &opts()).unwrap();
        assert_eq!(d.format, DataFormat::PromptCompletion);
        assert_eq!(d.train.len() + d.held_out.len(), 2);
        let all: Vec<_> = d.train.iter().chain(&d.held_out).collect();
        let ex = all.iter().find(|e| e.ids.len() == 5).unwrap();
        assert_eq!(ex.loss, vec![false, false, true, true, true]);
    }

    #[test]
    fn plain_text_is_packed_and_split_deterministically() {
        let text = "hello world ".repeat(40);
        let a = load(text.as_bytes(), "notes.txt", &tok(), &opts()).unwrap();
        let b = load(text.as_bytes(), "notes.txt", &tok(), &opts()).unwrap();
        assert_eq!(a.format, DataFormat::PlainText);
        assert!(a.train.iter().all(|e| e.ids.len() <= 64));
        assert_eq!(a.train, b.train);
        assert!(!a.held_out.is_empty());
    }

    #[test]
    fn chat_and_multiple_choice() {
        let chat =
            br#"{"messages":[{"role":"system","content":"s"},{"role":"user","content":"hi"},{"role":"assistant","content":"ok"}]}"#;
        let d = load(chat, "c.jsonl", &tok(), &opts()).unwrap();
        assert_eq!(d.format, DataFormat::Chat);
        let ex = &d.train[0];
        let learned: Vec<u32> = ex
            .ids
            .iter()
            .zip(&ex.loss)
            .filter(|(_, l)| **l)
            .map(|(i, _)| *i)
            .collect();
        assert_eq!(tok().decode(&learned), "ok<|im_end|>\n");
        let mut plain = tok();
        plain.chat_template = None;
        let err = load(chat, "c.jsonl", &plain, &opts()).unwrap_err();
        assert!(err.to_string().contains("no chat template"), "{err}");
        let mc = br#"{"question":"2+2?","choices":["3","4"],"answer":1}"#;
        let d = load(mc, "m.jsonl", &tok(), &opts()).unwrap();
        assert_eq!(d.format, DataFormat::MultipleChoice);
    }

    #[test]
    fn bad_input_is_named_with_line_numbers() {
        let t = tok();
        let err =
            |bytes: &[u8], name: &str| load(bytes, name, &t, &opts()).unwrap_err().to_string();
        assert!(err(b"", "e.txt").contains("empty"));
        assert!(err(b"\xff\xfe bad", "x.txt").contains("not UTF-8"));
        let e = err(b"{\"text\":\"a\"}\n{broken\n", "d.jsonl");
        assert!(e.contains("line 2") && e.contains("not valid JSON"), "{e}");
        let e = err(b"{\"foo\":1}\n", "d.jsonl");
        assert!(e.contains("line 1"), "{e}");
        let long = format!(
            "{{\"prompt\":\"{}\",\"completion\":\"x\"}}",
            "a".repeat(100)
        );
        let e = err(long.as_bytes(), "d.jsonl");
        assert!(e.contains("longer than the 64-token context"), "{e}");
        let mixed = b"{\"text\":\"a\"}\n{\"prompt\":\"p\",\"completion\":\"c\"}\n";
        assert!(err(mixed, "d.jsonl").contains("one format per file"));
        let e = err(
            br#"{"question":"q","choices":["a","b","c"],"answer":7}"#,
            "m.jsonl",
        );
        assert!(
            e.contains("line 1: answer 7 is out of range for 3 choices"),
            "{e}"
        );
    }

    #[test]
    fn data_files_over_the_bound_are_refused_with_their_size() {
        assert!(check_data_size("d.txt", MAX_DATA_BYTES).is_ok());
        let err = check_data_size("d.txt", 3 << 30).unwrap_err().to_string();
        assert!(
            err.contains("d.txt is 3072 MiB, more than the 256 MiB"),
            "{err}"
        );
    }

    #[test]
    fn held_out_zero_holds_out_nothing() {
        let text = "the cat sat on the mat. ".repeat(40);
        let none = DataOptions {
            held_out: 0.0,
            ..opts()
        };
        let d = load(text.as_bytes(), "notes.txt", &tok(), &none).unwrap();
        assert!(d.held_out.is_empty() && d.train.len() > 1);
        let d = load(text.as_bytes(), "notes.txt", &tok(), &opts()).unwrap();
        assert!(!d.held_out.is_empty());
    }

    /// A byte-order mark is not text; a `.txt` that starts with `{` is still text; a file
    /// with no known extension is JSONL when it starts with `{`.
    #[test]
    fn the_format_follows_the_extension_and_ignores_a_byte_order_mark() {
        let t = tok();
        let bom = "\u{feff}{\"prompt\":\"p\",\"completion\":\"c\"}\n";
        let d = load(bom.as_bytes(), "d.jsonl", &t, &opts()).unwrap();
        assert_eq!(d.format, DataFormat::PromptCompletion);
        let notes = "{ a note about braces }\nand more text after it";
        let d = load(notes.as_bytes(), "notes.TXT", &t, &opts()).unwrap();
        assert_eq!(d.format, DataFormat::PlainText);
        let with_bom = format!("\u{feff}{notes}");
        let d = load(with_bom.as_bytes(), "notes.txt", &t, &opts()).unwrap();
        let ids = &d.train[0].ids;
        assert_eq!(ids[..ids.len() - 1], t.encode(notes)[..]);
        let d = load(b"{\"text\":\"hello there\"}", "upload", &t, &opts()).unwrap();
        assert_eq!(d.format, DataFormat::JsonlText);
    }
}
