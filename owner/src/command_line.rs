//! Command lines of typed requests: what `report` records for every cell it runs. A request
//! is a command's own argument struct (`EvalArgs`, `FinetuneArgs`, `EmulatorArgs`), built
//! directly; its command line is read off the struct's fields with the flag names clap gives
//! them, so the recorded line is exactly the request that ran (nothing is parsed back).

use std::fmt::Display;

use serde::Serialize;
use serde_json::Value;

/// `scaleot CMD --flag value ...`
#[derive(Debug, Clone)]
pub struct CommandLine(Vec<String>);

impl CommandLine {
    /// The command line of `args`: every flag of `T` with its value (defaults included, unset
    /// options and false switches left out). Fields are matched to flags by their names; a
    /// flattened group of flags must be `#[serde(flatten)]` too.
    pub fn of<T: clap::Args + Serialize>(command: &str, args: &T) -> Self {
        let fields = serde_json::to_value(args).unwrap_or(Value::Null);
        let mut words = vec!["scaleot".to_string(), command.to_string()];
        let flags = T::augment_args(clap::Command::new("scaleot"));
        for arg in flags.get_arguments() {
            let (Some(long), Some(value)) = (arg.get_long(), fields.get(arg.get_id().as_str()))
            else {
                continue;
            };
            let flag = format!("--{long}");
            match value {
                Value::Null | Value::Bool(false) => {}
                Value::Bool(true) => words.push(flag),
                Value::Array(items) => {
                    for item in items {
                        words.extend([flag.clone(), plain(item)]);
                    }
                }
                other => words.extend([flag, plain(other)]),
            }
        }
        Self(words)
    }

    /// The words after `scaleot CMD`, as a shell would split the printed line.
    #[cfg(test)]
    pub fn args(&self) -> &[String] {
        &self.0[2..]
    }
}

/// A JSON scalar as a command-line word (strings without their quotes).
fn plain(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

impl Display for CommandLine {
    /// Words with spaces or quotes are single-quoted, as a shell reads them.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let words: Vec<String> = self
            .0
            .iter()
            .map(|w| {
                if w.is_empty() || w.contains(|c: char| c.is_whitespace() || "'\"$`\\".contains(c))
                {
                    format!("'{}'", w.replace('\'', r"'\''"))
                } else {
                    w.clone()
                }
            })
            .collect();
        f.write_str(&words.join(" "))
    }
}
