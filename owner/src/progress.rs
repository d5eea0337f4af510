//! Progress bars with rate and ETA for long native work.

use indicatif::{ProgressBar, ProgressStyle};

/// A bar counting `unit`s with rate, ETA and a message; indicatif hides it when stderr is not a terminal.
pub fn bar(len: u64, label: &str, unit: &str) -> ProgressBar {
    let pb = ProgressBar::new(len);
    let template = format!(
        "{{prefix:>12}} [{{elapsed_precise}}] {{wide_bar}} {{pos}}/{{len}} {unit} {{per_sec}} ETA {{eta}} {{msg}}"
    );
    pb.set_style(
        ProgressStyle::with_template(&template)
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> "),
    );
    pb.set_prefix(label.to_owned());
    pb.enable_steady_tick(std::time::Duration::from_millis(500));
    pb
}
