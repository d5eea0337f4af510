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

/// Seconds between plain progress lines when stderr is not a terminal.
const PLAIN_LINE_SECONDS: f64 = 10.0;

/// Counts long work: on a terminal a [`bar`]; otherwise (a script, a CI log) a plain line every
/// ten seconds with the count, the rate and the ETA, since indicatif then shows nothing.
pub struct Counter {
    bar: ProgressBar,
    label: String,
    unit: String,
    total: u64,
    done: u64,
    start: std::time::Instant,
    last_line: f64,
}

impl Counter {
    pub fn new(total: u64, label: &str, unit: &str) -> Self {
        Self {
            bar: bar(total, label, unit),
            label: label.to_owned(),
            unit: unit.to_owned(),
            total,
            done: 0,
            start: std::time::Instant::now(),
            last_line: 0.0,
        }
    }

    pub fn inc(&mut self, n: u64) {
        self.done += n;
        self.bar.inc(n);
        let elapsed = self.start.elapsed().as_secs_f64();
        if self.bar.is_hidden() && elapsed - self.last_line >= PLAIN_LINE_SECONDS {
            self.last_line = elapsed;
            eprintln!(
                "{}",
                plain_line(&self.label, &self.unit, self.done, self.total, elapsed)
            );
        }
    }

    pub fn finish(self) {
        self.bar.finish_and_clear();
    }
}

/// `arc_easy: 1200/2280 requests, 35.2 requests/s, ETA 31s`.
fn plain_line(label: &str, unit: &str, done: u64, total: u64, elapsed: f64) -> String {
    let rate = done as f64 / elapsed.max(1e-9);
    let eta = total.saturating_sub(done) as f64 / rate.max(1e-9);
    format!("{label}: {done}/{total} {unit}, {rate:.1} {unit}/s, ETA {eta:.0}s")
}

#[cfg(test)]
mod tests {
    #[test]
    fn plain_lines_give_count_rate_and_eta() {
        assert_eq!(
            super::plain_line("arc_easy", "requests", 1000, 3000, 20.0),
            "arc_easy: 1000/3000 requests, 50.0 requests/s, ETA 40s"
        );
    }
}
