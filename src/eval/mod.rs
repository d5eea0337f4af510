//! Zero-shot multiple-choice evaluation, as lm-evaluation-harness defines it:
//! each choice is scored by the summed log-probability of `" " + choice` after the context;
//! `acc` takes the argmax, `acc_norm` the argmax of log-prob per character of the choice.

pub mod loglik;
pub mod perplexity;
pub mod tasks;

use serde::Serialize;

pub use loglik::{LoglikRequest, Scored, continuation_logprobs, encode_pair, score_all};
pub use tasks::{McDoc, TARGET_DELIMITER, Task};

use crate::error::{Error, Result};
use crate::tokenizer::Tokenizer;

/// Flattens documents into scoring requests (one per choice), in document order.
pub fn requests_for(tok: &Tokenizer, docs: &[McDoc]) -> Result<Vec<LoglikRequest>> {
    docs.iter()
        .flat_map(McDoc::pairs)
        .map(|(context, continuation)| encode_pair(tok, &context, &continuation))
        .collect()
}

/// A metric's value and its standard error (sample std / sqrt(n), as lm-eval's `mean_stderr`).
#[derive(Debug, Clone, Copy, Serialize, PartialEq)]
pub struct Metric {
    pub value: f64,
    pub stderr: f64,
}

impl Metric {
    pub fn from_samples(xs: &[f64]) -> Self {
        let n = xs.len() as f64;
        if xs.is_empty() {
            return Self {
                value: f64::NAN,
                stderr: f64::NAN,
            };
        }
        let mean = xs.iter().sum::<f64>() / n;
        let var = if xs.len() > 1 {
            xs.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / (n - 1.0)
        } else {
            0.0
        };
        Self {
            value: mean,
            stderr: (var / n).sqrt(),
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct TaskResult {
    pub task: String,
    pub split: String,
    pub docs: usize,
    pub acc: Metric,
    pub acc_norm: Metric,
}

impl TaskResult {
    /// The task's metrics over its documents' records.
    pub fn from_samples(task: &str, split: &str, samples: &[DocSample]) -> Self {
        let metric = |f: fn(&DocSample) -> f64| {
            Metric::from_samples(&samples.iter().map(f).collect::<Vec<_>>())
        };
        Self {
            task: task.to_owned(),
            split: split.to_owned(),
            docs: samples.len(),
            acc: metric(|s| s.acc),
            acc_norm: metric(|s| s.acc_norm),
        }
    }
}

/// One document's record (a line of `scaleot eval --samples`): what a paired bootstrap or a
/// McNemar test between two models reads, and where a mismatch with lm-eval can be located.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct DocSample {
    pub task: String,
    pub split: String,
    /// The document's index in its split.
    pub doc: usize,
    /// Per choice: the summed log-likelihood of its continuation.
    pub loglik: Vec<f64>,
    /// Per choice: whether every continuation token is the model's greedy choice.
    pub greedy: Vec<bool>,
    pub gold: usize,
    pub acc: f64,
    pub acc_norm: f64,
}

/// First index of the maximum (NumPy's `argmax` tie rule).
fn argmax(xs: impl Iterator<Item = f64>) -> usize {
    let mut best = (0, f64::NEG_INFINITY);
    for (i, x) in xs.enumerate() {
        if x > best.1 {
            best = (i, x);
        }
    }
    best.0
}

/// Turns per-choice scores (in `requests_for` order) into each document's acc and acc_norm
/// (lm-eval: the argmax of the log-likelihood, and of it per character of the choice). A
/// non-finite log-likelihood is refused: a broken model (NaN weights, a config it cannot run)
/// must not get a score (NaN never wins an argmax, so every document would pick choice 0).
pub fn score_docs(
    task: &str,
    split: &str,
    docs: &[McDoc],
    scores: &[Scored],
) -> Result<Vec<DocSample>> {
    let choices: usize = docs.iter().map(|d| d.choices.len()).sum();
    if scores.len() != choices {
        return Err(Error::Invalid(format!(
            "{task}: {} log-likelihoods for {choices} choices",
            scores.len()
        )));
    }
    let mut samples = Vec::with_capacity(docs.len());
    let mut at = 0;
    for (i, d) in docs.iter().enumerate() {
        let scored = &scores[at..at + d.choices.len()];
        at += d.choices.len();
        let ll: Vec<f64> = scored.iter().map(|s| s.loglik).collect();
        if let Some((choice, x)) = ll.iter().enumerate().find(|(_, x)| !x.is_finite()) {
            return Err(Error::Invalid(format!(
                "{task}: document {i}, choice {choice} has log-likelihood {x}: the model gives non-finite scores (broken weights or a config it cannot run), so it cannot be evaluated"
            )));
        }
        let pred = argmax(ll.iter().copied());
        let pred_norm = argmax(
            ll.iter()
                .zip(&d.choices)
                .map(|(l, c)| l / c.chars().count() as f64),
        );
        samples.push(DocSample {
            task: task.to_owned(),
            split: split.to_owned(),
            doc: i,
            greedy: scored.iter().map(|s| s.greedy).collect(),
            loglik: ll,
            gold: d.gold,
            acc: f64::from(u8::from(pred == d.gold)),
            acc_norm: f64::from(u8::from(pred_norm == d.gold)),
        });
    }
    Ok(samples)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn acc_and_acc_norm_follow_lm_eval() {
        let docs = vec![
            McDoc {
                context: "q".into(),
                choices: vec!["a".into(), "longer answer".into()],
                gold: 1,
                ..McDoc::default()
            },
            McDoc {
                context: "q".into(),
                choices: vec!["x".into(), "y".into()],
                gold: 0,
                ..McDoc::default()
            },
        ];
        // doc 0: raw argmax picks "a" (-2 > -6.5), per-char picks "longer answer" (-0.5 > -2).
        let samples =
            score_docs("t", "validation", &docs, &scored(&[-2.0, -6.5, -1.0, -1.0])).unwrap();
        assert_eq!((samples[0].acc, samples[0].acc_norm), (0.0, 1.0));
        let r = TaskResult::from_samples("t", "validation", &samples);
        assert_eq!(r.acc.value, 0.5); // doc 1 ties → first index, which is gold
        assert_eq!(r.acc_norm.value, 1.0);
        assert!((r.acc.stderr - 0.5).abs() < 1e-12); // std 0.7071 / sqrt 2
    }

    fn scored(ll: &[f64]) -> Vec<Scored> {
        ll.iter()
            .map(|&loglik| Scored {
                loglik,
                greedy: false,
            })
            .collect()
    }

    #[test]
    fn a_model_with_non_finite_scores_is_refused_not_scored() {
        let docs = vec![McDoc {
            context: "q".into(),
            choices: vec!["a".into(), "b".into()],
            gold: 0,
            ..McDoc::default()
        }];
        // All-NaN scores used to pick choice 0 for every document: accuracy 1.0 here.
        let err = score_docs("t", "validation", &docs, &scored(&[f64::NAN, f64::NAN])).unwrap_err();
        assert!(err.to_string().contains("non-finite"), "{err}");
        assert!(
            score_docs(
                "t",
                "validation",
                &docs,
                &scored(&[-1.0, f64::NEG_INFINITY])
            )
            .is_err()
        );
        assert!(score_docs("t", "validation", &docs, &scored(&[-1.0])).is_err());
    }
}
