//! Progress bars with rate and ETA for long native work.

use indicatif::{ProgressBar, ProgressStyle};

/// A bar counting `unit`s; hidden when stderr is not a terminal unless `SCALEOT_PROGRESS=1`.
pub fn bar(len: u64, label: &str, unit: &str) -> ProgressBar {
    let pb = ProgressBar::new(len);
    let template = format!(
        "{{prefix:>12}} [{{elapsed_precise}}] {{wide_bar}} {{pos}}/{{len}} {unit} {{per_sec}} ETA {{eta}}"
    );
    pb.set_style(
        ProgressStyle::with_template(&template)
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> "),
    );
    pb.set_prefix(label.to_owned());
    pb
}
