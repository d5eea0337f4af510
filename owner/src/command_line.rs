//! Command lines built from typed requests: what `report` records for every cell it runs, so
//! that each recorded command is exactly the request that ran (no argv is parsed back).

use std::fmt::Display;
use std::path::Path;

use crate::device::DeviceArgs;

/// `scaleot CMD --flag value ...`, built flag by flag.
#[derive(Debug, Clone)]
pub struct CommandLine(Vec<String>);

impl CommandLine {
    pub fn new(command: &str) -> Self {
        Self(vec!["scaleot".into(), command.into()])
    }

    pub fn arg(mut self, flag: &str, value: impl Display) -> Self {
        self.0.push(format!("--{flag}"));
        self.0.push(value.to_string());
        self
    }

    pub fn opt(self, flag: &str, value: Option<impl Display>) -> Self {
        match value {
            Some(v) => self.arg(flag, v),
            None => self,
        }
    }

    pub fn path(self, flag: &str, path: &Path) -> Self {
        self.arg(flag, path.display())
    }

    pub fn opt_path(self, flag: &str, path: Option<&Path>) -> Self {
        self.opt(flag, path.map(Path::display))
    }

    pub fn switch(mut self, flag: &str, on: bool) -> Self {
        if on {
            self.0.push(format!("--{flag}"));
        }
        self
    }

    /// `--device` unless it is the default CPU.
    pub fn device(mut self, device: DeviceArgs) -> Self {
        self.0.extend(device.cli_args());
        self
    }
}

impl CommandLine {
    /// The words after `scaleot CMD`, as a shell would split the printed line.
    #[cfg(test)]
    pub fn args(&self) -> &[String] {
        &self.0[2..]
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
