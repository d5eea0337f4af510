//! Paired bootstrap intervals for a difference of accuracy between two settings scored on the
//! same documents: what the report attaches to every difference it states.

use anyhow::{Result, bail};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};

/// Resamples per interval: the 2.5 % and 97.5 % percentiles then move by well under 0.1 point
/// between seeds on these task sizes.
const REPLICATES: usize = 2000;

/// A difference of mean accuracy in points (`a − b`) with its 95 % paired-bootstrap interval.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Difference {
    pub value: f64,
    pub low: f64,
    pub high: f64,
}

impl Difference {
    /// The interval contains 0: the data cannot tell the two settings apart.
    pub fn within_noise(&self) -> bool {
        self.low <= 0.0 && 0.0 <= self.high
    }
}

impl std::fmt::Display for Difference {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{:+.1} [{:+.1}, {:+.1}]",
            self.value, self.low, self.high
        )
    }
}

/// The difference of the mean over tasks of each task's accuracy, `a − b`, in points. `tasks`
/// holds per task each document's correctness under `a` and under `b` (0 or 1, same documents
/// in the same order). Each replicate draws every task's documents with replacement,
/// independently per task (the tasks are separate samples), and keeps the pairing within a
/// document; the interval is the 2.5 and 97.5 percentiles. The seed is fixed: a report
/// regenerated from the same cells states the same intervals.
pub fn paired(tasks: &[(&[f64], &[f64])]) -> Result<Difference> {
    if tasks.is_empty() {
        bail!("a paired bootstrap needs at least one task");
    }
    let diffs: Vec<Vec<f64>> = tasks
        .iter()
        .map(|(a, b)| {
            if a.len() != b.len() || a.is_empty() {
                bail!(
                    "a paired bootstrap needs the same documents on both sides ({} and {})",
                    a.len(),
                    b.len()
                );
            }
            Ok(a.iter().zip(*b).map(|(x, y)| x - y).collect())
        })
        .collect::<Result<_>>()?;
    let statistic = |task_means: &mut dyn Iterator<Item = f64>| {
        100.0 * task_means.sum::<f64>() / diffs.len() as f64
    };
    let mean = |d: &[f64]| d.iter().sum::<f64>() / d.len() as f64;
    let value = statistic(&mut diffs.iter().map(|d| mean(d)));
    let mut rng = StdRng::seed_from_u64(0x05ca_1e07);
    let mut replicates: Vec<f64> = (0..REPLICATES)
        .map(|_| {
            statistic(&mut diffs.iter().map(|d| {
                let n = d.len();
                (0..n).map(|_| d[rng.random_range(0..n)]).sum::<f64>() / n as f64
            }))
        })
        .collect();
    replicates.sort_by(f64::total_cmp);
    Ok(Difference {
        value,
        low: percentile(&replicates, 0.025),
        high: percentile(&replicates, 0.975),
    })
}

/// Linear interpolation between the closest ranks of sorted `xs` (NumPy's default).
fn percentile(xs: &[f64], q: f64) -> f64 {
    let at = q * (xs.len() - 1) as f64;
    let (lo, hi) = (at.floor() as usize, at.ceil() as usize);
    xs[lo] + (xs[hi] - xs[lo]) * (at - lo as f64)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Correctness flags from a simple deterministic pattern: document i is right when
    /// `(i * step) % 100 < pct`, so about `pct` % are right.
    fn flags(n: usize, pct: usize, step: usize) -> Vec<f64> {
        (0..n)
            .map(|i| f64::from(u8::from((i * step) % 100 < pct)))
            .collect()
    }

    #[test]
    fn identical_settings_differ_by_exactly_nothing() {
        let a = flags(500, 60, 37);
        let d = paired(&[(&a, &a)]).unwrap();
        assert_eq!((d.value, d.low, d.high), (0.0, 0.0, 0.0));
        assert!(d.within_noise());
    }

    #[test]
    fn a_difference_on_every_document_has_no_spread() {
        let (right, wrong) = (vec![1.0; 300], vec![0.0; 300]);
        let d = paired(&[(&right, &wrong)]).unwrap();
        assert_eq!((d.value, d.low, d.high), (100.0, 100.0, 100.0));
    }

    /// On one task the interval's half-width is close to 1.96 standard errors of the mean of
    /// the paired differences (the normal approximation), and it contains the estimate.
    #[test]
    fn one_task_interval_matches_the_normal_approximation() {
        let n = 1000;
        let a = flags(n, 55, 37);
        let b = flags(n, 50, 53);
        let d = paired(&[(&a, &b)]).unwrap();
        let diffs: Vec<f64> = a.iter().zip(&b).map(|(x, y)| x - y).collect();
        let mean = diffs.iter().sum::<f64>() / n as f64;
        let var = diffs.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / (n - 1) as f64;
        let half = 100.0 * 1.96 * (var / n as f64).sqrt();
        assert!((d.value - 100.0 * mean).abs() < 1e-9);
        assert!(d.low < d.value && d.value < d.high);
        let measured = (d.high - d.low) / 2.0;
        assert!(
            (measured / half - 1.0).abs() < 0.1,
            "bootstrap half-width {measured:.2} against the normal approximation's {half:.2}"
        );
    }

    /// Over several tasks the statistic is the mean of the tasks' differences, and a clear
    /// difference on every task is told apart from noise.
    #[test]
    fn tasks_are_averaged_and_a_clear_difference_excludes_zero() {
        let (a1, b1) = (flags(570, 70, 37), flags(570, 50, 53));
        let (a2, b2) = (flags(1838, 66, 41), flags(1838, 60, 59));
        let d = paired(&[(&a1, &b1), (&a2, &b2)]).unwrap();
        let mean = |x: &[f64]| 100.0 * x.iter().sum::<f64>() / x.len() as f64;
        let want = ((mean(&a1) - mean(&b1)) + (mean(&a2) - mean(&b2))) / 2.0;
        assert!((d.value - want).abs() < 1e-9);
        assert!(d.low > 0.0, "{d}");
        assert_eq!(d, paired(&[(&a1, &b1), (&a2, &b2)]).unwrap(), "fixed seed");
    }

    #[test]
    fn documents_that_do_not_pair_up_are_refused() {
        let (a, b) = (vec![1.0; 10], vec![1.0; 9]);
        assert!(paired(&[(&a, &b)]).is_err());
        assert!(paired(&[]).is_err());
    }
}
