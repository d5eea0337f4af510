//! The model's own chat template (the Jinja text in GGUF `tokenizer.chat_template` or HF
//! `tokenizer_config.json`), rendered with minijinja as transformers' `apply_chat_template`
//! does, and turned into a training example with loss on the assistant turns only.

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
        env.add_template_owned("chat", source.to_owned())
            .map_err(|e| template_err(&e))?;
        Ok(Self {
            env,
            bos: bos.to_owned(),
            eos: eos.to_owned(),
        })
    }

    pub fn render(&self, messages: &[Message], add_generation_prompt: bool) -> Result<String> {
        let template = self
            .env
            .get_template("chat")
            .map_err(|e| template_err(&e))?;
        template
            .render(context! {
                messages => messages,
                add_generation_prompt => add_generation_prompt,
                bos_token => self.bos,
                eos_token => self.eos,
            })
            .map_err(|e| template_err(&e))
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
}
