//! Log-likelihood of a continuation given a context, computed exactly as
//! lm-evaluation-harness's `HFLM.loglikelihood` does (encoding, truncation, summation).

use burn::tensor::{Int, Tensor, TensorData};

use crate::data::Example;
use crate::error::{Error, Result};
use crate::model::{HeadLoss, Llama};
use crate::tokenizer::Tokenizer;

/// One scoring request, already tokenized.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoglikRequest {
    pub context: Vec<u32>,
    pub continuation: Vec<u32>,
}

/// lm-eval's `_encode_pair`: trailing spaces of the context move to the continuation, the
/// continuation's ids are what `encode(context + continuation)` adds after `encode(context)`.
/// An empty context becomes the end-of-text token, as lm-eval's `prefix_token_id`.
pub fn encode_pair(tok: &Tokenizer, context: &str, continuation: &str) -> Result<LoglikRequest> {
    if context.is_empty() {
        let prefix = tok.eos_id.ok_or_else(|| {
            Error::Tokenizer(
                "an empty context needs an end-of-text token, which this tokenizer lacks".into(),
            )
        })?;
        return Ok(LoglikRequest {
            context: vec![prefix],
            continuation: tok.encode(continuation),
        });
    }
    let trimmed = context.trim_end_matches(char::is_whitespace);
    let (context, continuation) = if trimmed.len() < context.len() {
        (
            trimmed,
            format!("{}{continuation}", &context[trimmed.len()..]),
        )
    } else {
        (context, continuation.to_owned())
    };
    let whole = tok.encode(&format!("{context}{continuation}"));
    let ctx = tok.encode(context);
    let cont = whole.get(ctx.len()..).unwrap_or_default().to_vec();
    Ok(LoglikRequest {
        context: ctx,
        continuation: cont,
    })
}

/// A right-padded batch: model inputs and where each request's continuation is scored.
pub struct ScoringBatch {
    pub inputs: Vec<Vec<u32>>,
    /// Flat `(row * len + position)` of every scored token, in request order.
    pub positions: Vec<i64>,
    pub targets: Vec<i64>,
    /// Number of scored tokens per request.
    pub counts: Vec<usize>,
}

impl ScoringBatch {
    /// Builds a batch, truncating from the left to `max_len` inputs like lm-eval.
    pub fn new(reqs: &[&LoglikRequest], max_len: usize, pad: u32) -> Self {
        let rows: Vec<(Vec<u32>, usize)> = reqs
            .iter()
            .map(|r| {
                let mut all: Vec<u32> = r.context.iter().chain(&r.continuation).copied().collect();
                let keep = (max_len + 1).min(all.len());
                all.drain(..all.len() - keep);
                all.pop();
                (all, r.continuation.len().min(keep))
            })
            .collect();
        let len = rows.iter().map(|(r, _)| r.len()).max().unwrap_or(1).max(1);
        let mut batch = Self {
            inputs: Vec::with_capacity(rows.len()),
            positions: Vec::new(),
            targets: Vec::new(),
            counts: Vec::with_capacity(rows.len()),
        };
        for (row, ((input, n_cont), req)) in rows.into_iter().zip(reqs).enumerate() {
            let n_in = input.len();
            let n = n_cont.min(n_in);
            for (k, &target) in req.continuation[req.continuation.len() - n..]
                .iter()
                .enumerate()
            {
                batch.positions.push((row * len + n_in - n + k) as i64);
                batch.targets.push(target as i64);
            }
            batch.counts.push(n);
            let mut padded = input;
            padded.resize(len, pad);
            batch.inputs.push(padded);
        }
        batch
    }

    /// A batch over training examples: every token with loss is a target, predicted from
    /// the tokens before it. `counts` are per example.
    pub fn from_examples(examples: &[&Example], pad: u32) -> Self {
        let len = examples
            .iter()
            .map(|e| e.ids.len().saturating_sub(1))
            .max()
            .unwrap_or(1)
            .max(1);
        let mut batch = Self {
            inputs: Vec::with_capacity(examples.len()),
            positions: Vec::new(),
            targets: Vec::new(),
            counts: Vec::with_capacity(examples.len()),
        };
        for (row, ex) in examples.iter().enumerate() {
            let mut count = 0;
            for (i, (&id, &loss)) in ex.ids.iter().zip(&ex.loss).enumerate().skip(1) {
                if loss {
                    batch.positions.push((row * len + i - 1) as i64);
                    batch.targets.push(id as i64);
                    count += 1;
                }
            }
            batch.counts.push(count);
            let mut input = ex.ids[..ex.ids.len().saturating_sub(1)].to_vec();
            input.resize(len, pad);
            batch.inputs.push(input);
        }
        batch
    }

    /// Number of scored tokens in the batch.
    pub fn n_targets(&self) -> usize {
        self.targets.len()
    }

    /// The final hidden states at the scored positions `[n_scored, hidden]` and their targets:
    /// only these go through the (large) vocabulary head.
    fn scored_hidden(&self, model: &Llama) -> (Tensor<2>, Tensor<1, Int>) {
        let device = model.device();
        let tokens = crate::model::token_tensor(&self.inputs, &device);
        let [b, t] = tokens.dims();
        let hidden = model.hidden(tokens, None);
        let d = hidden.dims()[2];
        let n = self.positions.len();
        let pos =
            Tensor::<1, Int>::from_data(TensorData::new(self.positions.clone(), [n]), &device);
        let targets =
            Tensor::<1, Int>::from_data(TensorData::new(self.targets.clone(), [n]), &device);
        (hidden.reshape([b * t, d]).select(0, pos), targets)
    }

    /// Per-token log-probabilities of the targets, on the device: `[n_scored]`.
    pub fn token_logprobs(&self, model: &Llama) -> Tensor<1> {
        let (hidden, targets) = self.scored_hidden(model);
        model.head_logprobs(hidden, targets)
    }

    /// The mean cross-entropy over the targets, for training (see [`Llama::head_loss`]).
    pub fn training_loss(&self, model: &Llama) -> HeadLoss {
        let (hidden, targets) = self.scored_hidden(model);
        model.head_loss(hidden, targets)
    }

    /// Sums per-token log-probs back into one value per request.
    pub fn sum_per_request(&self, token_logprobs: &[f32]) -> Vec<f64> {
        let mut out = Vec::with_capacity(self.counts.len());
        let mut at = 0;
        for &n in &self.counts {
            out.push(token_logprobs[at..at + n].iter().map(|&x| x as f64).sum());
            at += n;
        }
        out
    }
}

/// Groups requests (longest first, like lm-eval) into batches of at most `max_tokens`
/// padded tokens; returns request indices per batch.
pub fn plan_batches(reqs: &[LoglikRequest], max_tokens: usize) -> Vec<Vec<usize>> {
    let mut order: Vec<usize> = (0..reqs.len()).collect();
    let len = |i: usize| reqs[i].context.len() + reqs[i].continuation.len();
    order.sort_by_key(|&i| std::cmp::Reverse(len(i)));
    let mut batches: Vec<Vec<usize>> = Vec::new();
    for i in order {
        match batches.last_mut() {
            // Sorted longest first: the batch's first request sets its padded length.
            Some(b) if (b.len() + 1) * len(b[0]) <= max_tokens.max(len(b[0])) => b.push(i),
            _ => batches.push(vec![i]),
        }
    }
    batches
}

/// Scores all requests natively (synchronous readback); `progress` gets the number done.
pub fn score_all(
    model: &Llama,
    reqs: &[LoglikRequest],
    max_len: usize,
    max_batch_tokens: usize,
    pad: u32,
    mut progress: impl FnMut(usize),
) -> Result<Vec<f64>> {
    let mut out = vec![0f64; reqs.len()];
    for batch_idx in plan_batches(reqs, max_batch_tokens) {
        let refs: Vec<&LoglikRequest> = batch_idx.iter().map(|&i| &reqs[i]).collect();
        let batch = ScoringBatch::new(&refs, max_len, pad);
        let lp = batch
            .token_logprobs(model)
            .into_data()
            .try_into_vec::<f32>()
            .map_err(|e| Error::Invalid(format!("reading scores back from the device: {e:?}")))?;
        for (&i, v) in batch_idx.iter().zip(batch.sum_per_request(&lp)) {
            out[i] = v;
        }
        progress(batch_idx.len());
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batch_positions_point_at_continuation_tokens() {
        let a = LoglikRequest {
            context: vec![10, 11, 12],
            continuation: vec![20, 21],
        };
        let b = LoglikRequest {
            context: vec![30],
            continuation: vec![40],
        };
        let batch = ScoringBatch::new(&[&a, &b], 100, 0);
        assert_eq!(batch.inputs, vec![vec![10, 11, 12, 20], vec![30, 0, 0, 0]]);
        // a: logits at positions 2 and 3 predict 20 and 21; b: position 0 predicts 40.
        assert_eq!(batch.positions, vec![2, 3, 4]);
        assert_eq!(batch.targets, vec![20, 21, 40]);
        assert_eq!(batch.sum_per_request(&[-1.0, -2.0, -0.5]), vec![-3.0, -0.5]);
    }

    #[test]
    fn truncation_keeps_the_end() {
        let a = LoglikRequest {
            context: vec![1, 2, 3, 4, 5],
            continuation: vec![6, 7],
        };
        let batch = ScoringBatch::new(&[&a], 3, 0);
        assert_eq!(batch.inputs, vec![vec![4, 5, 6]]);
        assert_eq!(batch.targets, vec![6, 7]);
        assert_eq!(batch.positions, vec![1, 2]);
    }

    #[test]
    fn batches_respect_the_token_budget() {
        let r = |n: usize| LoglikRequest {
            context: vec![1; n],
            continuation: vec![2],
        };
        let reqs = vec![r(9), r(3), r(4), r(2)];
        let plan = plan_batches(&reqs, 12);
        assert_eq!(plan, vec![vec![0], vec![2, 1], vec![3]]);
    }
}
