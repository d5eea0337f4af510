//! The model's own chat template (the Jinja text in GGUF `tokenizer.chat_template` or HF
//! `tokenizer_config.json`), rendered with minijinja as transformers' `apply_chat_template`
//! does, and turned into a training example with loss on the assistant turns only.
//!
//! A template comes with the emulator, so it runs under limits: a budget of interpreter steps
//! (minijinja's fuel: loops and time), an output bound, and a bound on the conversation's
//! messages (cutting a conversation into turns renders each prefix, so work grows with the
//! square of their number).

use minijinja::{Environment, Error as JinjaError, ErrorKind, context};
use serde::Serialize;

use crate::error::{Error, Result};

#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Message {
    pub role: String,
    pub content: String,
}

/// A piece of a rendered conversation and whether the model learns to produce it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Segment {
    pub text: String,
    pub learn: bool,
}

/// Interpreter steps one rendering may take (SmolLM2's template takes about 20 per message).
pub const TEMPLATE_STEPS: u64 = 2_000_000;
/// Messages one conversation may hold.
pub const MAX_MESSAGES: usize = 1_000;
/// Output one rendering may add beyond the messages' own text.
const TEMPLATE_OUTPUT_MARGIN: usize = 1 << 20;

pub struct ChatTemplate {
    env: Environment<'static>,
    bos: String,
    eos: String,
}

impl ChatTemplate {
    /// Compiles `source`; `bos`/`eos` are the token strings templates may refer to.
    pub fn new(source: &str, bos: &str, eos: &str) -> Result<Self> {
        let mut env = Environment::new();
        // transformers' helpers and settings for chat templates.
        env.add_function(
            "raise_exception",
            |msg: String| -> std::result::Result<String, JinjaError> {
                Err(JinjaError::new(ErrorKind::InvalidOperation, msg))
            },
        );
        env.set_trim_blocks(true);
        env.set_lstrip_blocks(true);
        env.set_fuel(Some(TEMPLATE_STEPS));
        env.add_template_owned("chat", source.to_owned())
            .map_err(|e| template_err(&e))?;
        Ok(Self {
            env,
            bos: bos.to_owned(),
            eos: eos.to_owned(),
        })
    }

    /// Renders the conversation; a template that runs out of steps or writes more than
    /// the messages' text twice over (plus a margin) is refused.
    pub fn render(&self, messages: &[Message], add_generation_prompt: bool) -> Result<String> {
        if messages.len() > MAX_MESSAGES {
            return Err(Error::Invalid(format!(
                "a conversation of {} messages is more than the {MAX_MESSAGES} a chat may hold",
                messages.len()
            )));
        }
        let template = self
            .env
            .get_template("chat")
            .map_err(|e| template_err(&e))?;
        let text_len: usize = messages
            .iter()
            .map(|m| m.role.len() + m.content.len())
            .sum();
        let mut out = BoundedOutput {
            text: Vec::new(),
            limit: 2 * text_len + TEMPLATE_OUTPUT_MARGIN,
        };
        let rendered = template.render_captured_to(
            context! {
                messages => messages,
                add_generation_prompt => add_generation_prompt,
                bos_token => self.bos,
                eos_token => self.eos,
            },
            &mut out,
        );
        match rendered {
            Ok(_) => String::from_utf8(out.text).map_err(|_| {
                Error::Invalid("the model's chat template wrote invalid UTF-8".into())
            }),
            Err(e) if e.kind() == ErrorKind::WriteFailure => Err(Error::Invalid(format!(
                "the model's chat template wrote more than {} bytes for {} bytes of messages",
                out.limit, text_len
            ))),
            Err(e) if e.kind() == ErrorKind::OutOfFuel => Err(Error::Invalid(format!(
                "the model's chat template ran more than {TEMPLATE_STEPS} steps"
            ))),
            Err(e) => Err(template_err(&e)),
        }
    }

    /// The conversation as segments: each assistant turn's text (what the template adds for
    /// it after the generation prompt) is learned, everything else is context.
    pub fn segments(&self, messages: &[Message]) -> Result<Vec<Segment>> {
        let mut out = Vec::new();
        let mut push = |text: &str, learn: bool| {
            if !text.is_empty() {
                out.push(Segment {
                    text: text.to_owned(),
                    learn,
                });
            }
        };
        let unstable = || {
            Error::Invalid(
                "the model's chat template rewrites earlier turns, so assistant turns cannot be told apart; use prompt/completion JSONL instead".into(),
            )
        };
        // What has been emitted so far; every later rendering must extend it.
        let mut done = String::new();
        for (k, m) in messages.iter().enumerate() {
            if m.role != "assistant" {
                continue;
            }
            let prompt = self.render(&messages[..k], true)?;
            let with_turn = self.render(&messages[..=k], false)?;
            let context = prompt.strip_prefix(done.as_str()).ok_or_else(unstable)?;
            let turn = with_turn
                .strip_prefix(prompt.as_str())
                .ok_or_else(unstable)?;
            push(context, false);
            push(turn, true);
            done = with_turn;
        }
        let whole = self.render(messages, false)?;
        push(
            whole.strip_prefix(done.as_str()).ok_or_else(unstable)?,
            false,
        );
        Ok(out)
    }
}

/// A render target that refuses to grow past `limit` bytes.
struct BoundedOutput {
    text: Vec<u8>,
    limit: usize,
}

impl std::io::Write for BoundedOutput {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if self.text.len() + buf.len() > self.limit {
            return Err(std::io::Error::other("output bound reached"));
        }
        self.text.extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

fn template_err(e: &JinjaError) -> Error {
    Error::Invalid(format!("the model's chat template failed: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// SmolLM2-Instruct's template, as its GGUF carries it.
    const SMOLLM2: &str = "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}{{ '<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n' }}{% endif %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}";

    fn msg(role: &str, content: &str) -> Message {
        Message {
            role: role.into(),
            content: content.into(),
        }
    }

    #[test]
    fn learns_only_the_assistant_turns() {
        let t = ChatTemplate::new(SMOLLM2, "<|im_start|>", "<|im_end|>").unwrap();
        let conv = [
            msg("user", "hi"),
            msg("assistant", "hello"),
            msg("user", "bye"),
        ];
        let segs = t.segments(&conv).unwrap();
        let joined: String = segs.iter().map(|s| s.text.as_str()).collect();
        assert_eq!(joined, t.render(&conv, false).unwrap());
        let learned: Vec<&str> = segs
            .iter()
            .filter(|s| s.learn)
            .map(|s| s.text.as_str())
            .collect();
        assert_eq!(learned, vec!["hello<|im_end|>\n"]);
        assert!(
            segs[0]
                .text
                .starts_with("<|im_start|>system\nYou are a helpful")
        );
        assert!(segs[0].text.ends_with("<|im_start|>assistant\n"));
    }

    #[test]
    fn template_errors_are_reported() {
        let t = ChatTemplate::new(
            "{{ raise_exception('roles must alternate') }}",
            "<s>",
            "</s>",
        )
        .unwrap();
        let err = t.render(&[msg("user", "x")], false).unwrap_err();
        assert!(err.to_string().contains("roles must alternate"), "{err}");
        assert!(ChatTemplate::new("{% for %}", "", "").is_err());
    }

    /// Templates that loop without end or write without end stop with a message instead of
    /// hanging or filling memory; so does a conversation too long to cut into turns.
    #[test]
    fn templates_run_within_limits() {
        let conv = [msg("user", "hi"), msg("assistant", "ok")];
        let looping =
            "{% for a in range(100000) %}{% for b in range(100000) %}{% endfor %}{% endfor %}";
        let t = ChatTemplate::new(looping, "", "").unwrap();
        let err = t.render(&conv, false).unwrap_err().to_string();
        assert!(err.contains("steps"), "{err}");
        let writing = "{% for a in range(10000) %}{{ 'x' * 10000 }}{% endfor %}";
        let t = ChatTemplate::new(writing, "", "").unwrap();
        let err = t.render(&conv, false).unwrap_err().to_string();
        assert!(err.contains("wrote more than"), "{err}");
        let t = ChatTemplate::new(SMOLLM2, "", "").unwrap();
        let long: Vec<Message> = (0..=MAX_MESSAGES).map(|_| msg("user", "x")).collect();
        let err = t.segments(&long).unwrap_err().to_string();
        assert!(err.contains("1001 messages"), "{err}");
        // The longest conversation allowed renders within the step budget.
        assert!(t.render(&long[..MAX_MESSAGES], true).is_ok());
    }
}
