//! Log-likelihood of a continuation given a context, computed exactly as
//! lm-evaluation-harness's `HFLM.loglikelihood` does (encoding, truncation, summation).

use burn::tensor::{Int, Tensor, TensorData};

use crate::data::Example;
use crate::error::{Error, Result};
use crate::model::{HeadLoss, Llama, Positions};
use crate::tokenizer::Tokenizer;

/// One scoring request, already tokenized.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoglikRequest {
    pub context: Vec<u32>,
    pub continuation: Vec<u32>,
}

/// lm-eval's `_encode_pair`: trailing spaces of the context move to the continuation, the
/// continuation's ids are what `encode(context + continuation)` adds after `encode(context)`.
/// An empty context becomes lm-eval's `prefix_token_id` ([`Tokenizer::prefix_id`]).
pub fn encode_pair(tok: &Tokenizer, context: &str, continuation: &str) -> Result<LoglikRequest> {
    if context.is_empty() {
        let prefix = tok.prefix_id().ok_or_else(|| {
            Error::Tokenizer(
                "an empty context needs a begin- or end-of-text token, which this tokenizer lacks"
                    .into(),
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

/// One input row of a scoring batch. Requests with the same context share a row: the
/// context once, then each continuation (less its last token) as a branch that attends to the
/// context and to itself, never to another branch, at the positions it would have had alone.
/// Every score equals scoring the request on its own row (lm-eval's way), and a multiple-choice
/// document costs its context once instead of once per choice. A request that lm-eval would
/// truncate, or that has no context, gets a row of its own, cut the same way.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScoringRow {
    pub tokens: Vec<u32>,
    /// Each token's position in its own sequence (what the rotary embedding sees).
    pub positions: Vec<usize>,
    /// 0 for the shared context, k for the k-th continuation's branch.
    pub branch: Vec<u32>,
    /// Per request in the row: its index and its `(row index, target token)` pairs.
    pub scored: Vec<(usize, Vec<(usize, u32)>)>,
}

impl ScoringRow {
    /// A request alone, truncated from the left to `max_len` inputs like lm-eval.
    fn single(index: usize, req: &LoglikRequest, max_len: usize) -> Self {
        let mut tokens: Vec<u32> = req
            .context
            .iter()
            .chain(&req.continuation)
            .copied()
            .collect();
        let keep = (max_len + 1).min(tokens.len());
        tokens.drain(..tokens.len() - keep);
        tokens.pop();
        let n_in = tokens.len();
        let n = req.continuation.len().min(keep).min(n_in);
        let targets = &req.continuation[req.continuation.len() - n..];
        let scored = (targets.iter().enumerate())
            .map(|(k, &target)| (n_in - n + k, target))
            .collect();
        Self {
            positions: (0..n_in).collect(),
            branch: vec![0; n_in],
            tokens,
            scored: vec![(index, scored)],
        }
    }

    /// Requests `members` (same non-empty context, non-empty continuations, none truncated)
    /// in one row.
    fn shared(reqs: &[LoglikRequest], members: &[usize]) -> Self {
        let context = &reqs[members[0]].context;
        let n_ctx = context.len();
        let mut row = Self {
            tokens: context.clone(),
            positions: (0..n_ctx).collect(),
            branch: vec![0; n_ctx],
            scored: Vec::with_capacity(members.len()),
        };
        for (k, &i) in members.iter().enumerate() {
            let cont = &reqs[i].continuation;
            let start = row.tokens.len();
            // The first token is predicted at the context's end, token j at branch token j - 1.
            let scored = (cont.iter().enumerate())
                .map(|(j, &target)| (if j == 0 { n_ctx - 1 } else { start + j - 1 }, target))
                .collect();
            row.tokens.extend(&cont[..cont.len() - 1]);
            row.positions.extend(n_ctx..n_ctx + cont.len() - 1);
            row.branch.resize(row.tokens.len(), k as u32 + 1);
            row.scored.push((i, scored));
        }
        row
    }

    fn len(&self) -> usize {
        self.tokens.len().max(1)
    }
}

/// The rows that score `reqs`: requests sharing a context share a row (see [`ScoringRow`]).
pub fn scoring_rows(reqs: &[LoglikRequest], max_len: usize) -> Vec<ScoringRow> {
    let mut families: Vec<Vec<usize>> = Vec::new();
    let mut family_of: std::collections::HashMap<&[u32], usize> = Default::default();
    let mut rows = Vec::new();
    for (i, r) in reqs.iter().enumerate() {
        let alone = r.context.is_empty()
            || r.continuation.is_empty()
            || r.context.len() + r.continuation.len() > max_len + 1;
        if alone {
            rows.push(ScoringRow::single(i, r, max_len));
            continue;
        }
        match family_of.get(r.context.as_slice()) {
            Some(&f) => families[f].push(i),
            None => {
                family_of.insert(&r.context, families.len());
                families.push(vec![i]);
            }
        }
    }
    rows.extend(families.iter().map(|members| match members.as_slice() {
        [one] => ScoringRow::single(*one, &reqs[*one], max_len),
        _ => ScoringRow::shared(reqs, members),
    }));
    rows
}

/// A right-padded batch: model inputs and where each request's continuation is scored.
pub struct ScoringBatch {
    pub inputs: Vec<Vec<u32>>,
    /// Flat `(row * len + position)` of every scored token, request by request.
    pub positions: Vec<i64>,
    pub targets: Vec<i64>,
    /// Number of scored tokens per request.
    pub counts: Vec<usize>,
    /// The requests scored, in the order of `counts` (empty for training batches).
    pub requests: Vec<usize>,
    /// Set when some row packs a shared context.
    pub packing: Option<Packing>,
}

/// Where each token of a padded batch sits, per row (see [`ScoringRow`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Packing {
    pub positions: Vec<Vec<usize>>,
    pub branch: Vec<Vec<u32>>,
}

impl ScoringBatch {
    /// A batch of rows, right-padded to the longest.
    pub fn from_rows(rows: &[&ScoringRow], pad: u32) -> Self {
        let len = rows.iter().map(|r| r.len()).max().unwrap_or(1);
        let mut batch = Self {
            inputs: Vec::with_capacity(rows.len()),
            positions: Vec::new(),
            targets: Vec::new(),
            counts: Vec::new(),
            requests: Vec::new(),
            packing: None,
        };
        for (r, row) in rows.iter().enumerate() {
            for (request, scored) in &row.scored {
                batch.requests.push(*request);
                batch.counts.push(scored.len());
                for &(at, target) in scored {
                    batch.positions.push((r * len + at) as i64);
                    batch.targets.push(target as i64);
                }
            }
            let mut input = row.tokens.clone();
            input.resize(len, pad);
            batch.inputs.push(input);
        }
        if rows.iter().any(|r| r.scored.len() > 1) {
            // Padding is a branch of its own: it sees the context, and nothing real sees it.
            let pad_row = |r: &ScoringRow| {
                let mut positions = r.positions.clone();
                let next = positions.last().map_or(0, |p| p + 1);
                positions.extend((next..).take(len - r.positions.len()));
                let mut branch = r.branch.clone();
                branch.resize(len, u32::MAX);
                (positions, branch)
            };
            let (positions, branch) = rows.iter().map(|r| pad_row(r)).unzip();
            batch.packing = Some(Packing { positions, branch });
        }
        batch
    }

    /// A batch over training examples: every token with loss is a target, predicted from
    /// the tokens before it. `counts` are per example. Short examples share rows (first fit,
    /// longest first, rows as long as the longest example), each attending only to itself at
    /// its own positions (a [`Packing`] with one branch per example): the same loss and
    /// gradients as one row each, without computing the padding of a batch of mixed lengths.
    pub fn from_examples(examples: &[&Example], pad: u32) -> Self {
        let inputs: Vec<&[u32]> = examples
            .iter()
            .map(|e| &e.ids[..e.ids.len().saturating_sub(1)])
            .collect();
        let len = inputs.iter().map(|i| i.len()).max().unwrap_or(1).max(1);
        let mut order: Vec<usize> = (0..inputs.len()).collect();
        order.sort_by_key(|&i| std::cmp::Reverse(inputs[i].len()));
        // Examples per row, in order of placement, and each example's (row, offset).
        let mut rows: Vec<Vec<usize>> = Vec::new();
        let mut fill: Vec<usize> = Vec::new();
        let mut place = vec![(0, 0); inputs.len()];
        for i in order {
            let n = inputs[i].len();
            let r = match fill.iter().position(|&f| f + n <= len) {
                Some(r) => r,
                None => {
                    rows.push(Vec::new());
                    fill.push(0);
                    rows.len() - 1
                }
            };
            place[i] = (r, fill[r]);
            rows[r].push(i);
            fill[r] += n;
        }
        if rows.len() == inputs.len() {
            // Nothing shares a row: one row per example, in order, plain causal attention.
            rows = (0..inputs.len()).map(|i| vec![i]).collect();
            place = (0..inputs.len()).map(|i| (i, 0)).collect();
        }
        let mut batch = Self {
            inputs: Vec::with_capacity(rows.len()),
            positions: Vec::new(),
            targets: Vec::new(),
            counts: Vec::with_capacity(examples.len()),
            requests: Vec::new(),
            packing: None,
        };
        for (ex, &(row, offset)) in examples.iter().zip(&place) {
            let mut count = 0;
            for (i, (&id, &loss)) in ex.ids.iter().zip(&ex.loss).enumerate().skip(1) {
                if loss {
                    batch.positions.push((row * len + offset + i - 1) as i64);
                    batch.targets.push(id as i64);
                    count += 1;
                }
            }
            batch.counts.push(count);
        }
        let mut positions = Vec::with_capacity(rows.len());
        let mut branch = Vec::with_capacity(rows.len());
        for members in &rows {
            let mut input = Vec::with_capacity(len);
            let (mut at, mut owner) = (Vec::with_capacity(len), Vec::with_capacity(len));
            for (k, &i) in members.iter().enumerate() {
                input.extend_from_slice(inputs[i]);
                at.extend(0..inputs[i].len());
                owner.resize(input.len(), k as u32 + 1);
            }
            // Padding is a branch of its own: nothing real sees it.
            let next = input.len();
            input.resize(len, pad);
            at.extend(next..len);
            owner.resize(len, u32::MAX);
            batch.inputs.push(input);
            positions.push(at);
            branch.push(owner);
        }
        if rows.iter().any(|members| members.len() > 1) {
            batch.packing = Some(Packing { positions, branch });
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
        let hidden = match &self.packing {
            None => model.hidden(tokens, None),
            Some(p) => {
                let at = Positions::packed(&model.rope_inv_freq, &p.positions, &p.branch, &device);
                model.hidden_at(tokens, &at, None)
            }
        };
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

    /// Per-token log-probabilities and greedy margins (see [`Llama::head_scores`]).
    pub fn token_scores(&self, model: &Llama) -> (Tensor<1>, Tensor<1>) {
        let (hidden, targets) = self.scored_hidden(model);
        model.head_scores(hidden, targets)
    }

    /// The mean cross-entropy over the targets, for training (see [`Llama::head_loss`]).
    pub fn training_loss(&self, model: &Llama) -> HeadLoss {
        let (hidden, targets) = self.scored_hidden(model);
        model.head_loss(hidden, targets)
    }

    /// Sums per-token log-probs back into one value per entry of `counts`.
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

/// Groups rows (longest first, like lm-eval) into batches of at most `max_tokens` padded
/// tokens; returns row indices per batch.
pub fn plan_batches(rows: &[ScoringRow], max_tokens: usize) -> Vec<Vec<usize>> {
    let mut order: Vec<usize> = (0..rows.len()).collect();
    let len = |i: usize| rows[i].len();
    order.sort_by_key(|&i| std::cmp::Reverse(len(i)));
    let mut batches: Vec<Vec<usize>> = Vec::new();
    for i in order {
        match batches.last_mut() {
            // Sorted longest first: the batch's first row sets its padded length.
            Some(b) if (b.len() + 1) * len(b[0]) <= max_tokens.max(len(b[0])) => b.push(i),
            _ => batches.push(vec![i]),
        }
    }
    batches
}

fn read(t: Tensor<1>) -> Result<Vec<f32>> {
    t.into_data()
        .try_into_vec::<f32>()
        .map_err(|e| Error::Invalid(format!("reading scores back from the device: {e:?}")))
}

/// The log-probability of each continuation token of one request, in order (their sum is
/// its log-likelihood; `scaleot score --json` prints both).
pub fn continuation_logprobs(
    model: &Llama,
    req: &LoglikRequest,
    max_len: usize,
    pad: u32,
) -> Result<Vec<f32>> {
    let rows = scoring_rows(std::slice::from_ref(req), max_len);
    let refs: Vec<&ScoringRow> = rows.iter().collect();
    read(ScoringBatch::from_rows(&refs, pad).token_logprobs(model))
}

/// A scored request: the continuation's summed log-likelihood, and whether every token of it
/// is the model's greedy choice (lm-eval's `is_greedy`).
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct Scored {
    pub loglik: f64,
    pub greedy: bool,
}

/// Scores all requests natively (synchronous readback); `progress` gets the number done.
/// Batches run on several threads at once: one batch's element-wise steps run on one core,
/// so a second batch keeps the other cores busy between the (already parallel) matrix
/// products.
pub fn score_all(
    model: &Llama,
    reqs: &[LoglikRequest],
    max_len: usize,
    max_batch_tokens: usize,
    pad: u32,
    mut progress: impl FnMut(usize),
) -> Result<Vec<Scored>> {
    let rows = scoring_rows(reqs, max_len);
    let batches = plan_batches(&rows, max_batch_tokens);
    let score = |batch_rows: &[usize]| -> Result<(Vec<usize>, Vec<Scored>)> {
        let refs: Vec<&ScoringRow> = batch_rows.iter().map(|&i| &rows[i]).collect();
        let batch = ScoringBatch::from_rows(&refs, pad);
        let (logprobs, margins) = batch.token_scores(model);
        let (lp, margins) = (read(logprobs)?, read(margins)?);
        let greedy: Vec<f32> = margins
            .iter()
            .map(|&m| f32::from(u8::from(m >= 0.0)))
            .collect();
        let scored = batch
            .sum_per_request(&lp)
            .into_iter()
            .zip(batch.sum_per_request(&greedy))
            .zip(&batch.counts)
            .map(|((loglik, greedy_tokens), &n)| Scored {
                loglik,
                greedy: greedy_tokens as usize == n,
            })
            .collect();
        Ok((batch.requests, scored))
    };
    let mut out = vec![Scored::default(); reqs.len()];
    let mut record = |(requests, scored): (Vec<usize>, Vec<Scored>)| {
        for (&i, v) in requests.iter().zip(scored) {
            out[i] = v;
        }
        progress(requests.len());
    };
    let workers = scoring_threads().min(batches.len());
    if workers <= 1 {
        for batch_rows in &batches {
            record(score(batch_rows)?);
        }
    } else {
        let next = std::sync::atomic::AtomicUsize::new(0);
        std::thread::scope(|scope| {
            let (done, results) = std::sync::mpsc::channel();
            for _ in 0..workers {
                let done = done.clone();
                let (next, batches, score) = (&next, &batches, &score);
                scope.spawn(move || {
                    while let Some(batch_rows) =
                        batches.get(next.fetch_add(1, std::sync::atomic::Ordering::Relaxed))
                    {
                        if done.send(score(batch_rows)).is_err() {
                            break;
                        }
                    }
                });
            }
            drop(done);
            results
                .into_iter()
                .try_for_each(|result| result.map(&mut record))
        })?;
    }
    Ok(out)
}

/// Batches scored at once: one per core natively, up to 4 (each holds its activations).
fn scoring_threads() -> usize {
    if cfg!(target_family = "wasm") {
        return 1;
    }
    std::thread::available_parallelism().map_or(1, |n| n.get().min(4))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(context: &[u32], continuation: &[u32]) -> LoglikRequest {
        LoglikRequest {
            context: context.to_vec(),
            continuation: continuation.to_vec(),
        }
    }

    #[test]
    fn batch_positions_point_at_continuation_tokens() {
        let reqs = [req(&[10, 11, 12], &[20, 21]), req(&[30], &[40])];
        let rows = scoring_rows(&reqs, 100);
        let batch = ScoringBatch::from_rows(&rows.iter().collect::<Vec<_>>(), 0);
        assert_eq!(batch.inputs, vec![vec![10, 11, 12, 20], vec![30, 0, 0, 0]]);
        // a: logits at positions 2 and 3 predict 20 and 21; b: position 0 predicts 40.
        assert_eq!(batch.positions, vec![2, 3, 4]);
        assert_eq!(batch.targets, vec![20, 21, 40]);
        assert_eq!(batch.requests, vec![0, 1]);
        assert!(
            batch.packing.is_none(),
            "no shared context: plain causal rows"
        );
        assert_eq!(batch.sum_per_request(&[-1.0, -2.0, -0.5]), vec![-3.0, -0.5]);
    }

    #[test]
    fn short_training_examples_share_rows_and_keep_their_positions() {
        let ex = |ids: &[u32]| Example {
            ids: ids.to_vec(),
            loss: vec![true; ids.len()],
        };
        // Inputs (ids less the last) of lengths 5, 2, 3, 1: rows of 5 hold [a], [c, b], [d].
        let (a, b, c, d) = (
            ex(&[1, 2, 3, 4, 5, 6]),
            ex(&[7, 8, 9]),
            ex(&[10, 11, 12, 13]),
            ex(&[14, 15]),
        );
        let batch = ScoringBatch::from_examples(&[&a, &b, &c, &d], 0);
        assert_eq!(
            batch.inputs,
            [
                vec![1, 2, 3, 4, 5],
                vec![10, 11, 12, 7, 8],
                vec![14, 0, 0, 0, 0]
            ]
        );
        // Targets example by example, each predicted at its own tokens.
        assert_eq!(batch.counts, [5, 2, 3, 1]);
        assert_eq!(batch.targets, [2, 3, 4, 5, 6, 8, 9, 11, 12, 13, 15]);
        assert_eq!(batch.positions, [0, 1, 2, 3, 4, 8, 9, 5, 6, 7, 10]);
        let packing = batch.packing.expect("rows are shared");
        assert_eq!(packing.positions[1], [0, 1, 2, 0, 1]);
        assert_eq!(packing.branch[1], [1, 1, 1, 2, 2]);
        assert_eq!(
            packing.branch[2],
            [1, u32::MAX, u32::MAX, u32::MAX, u32::MAX]
        );
        // Equal lengths share nothing: one plain causal row each, in order.
        let batch = ScoringBatch::from_examples(&[&b, &b], 0);
        assert_eq!(batch.inputs, [vec![7, 8], vec![7, 8]]);
        assert!(batch.packing.is_none());
    }

    #[test]
    fn truncation_keeps_the_end() {
        let rows = scoring_rows(&[req(&[1, 2, 3, 4, 5], &[6, 7])], 3);
        let batch = ScoringBatch::from_rows(&[&rows[0]], 0);
        assert_eq!(batch.inputs, vec![vec![4, 5, 6]]);
        assert_eq!(batch.targets, vec![6, 7]);
        assert_eq!(batch.positions, vec![1, 2]);
    }

    #[test]
    fn choices_of_one_context_share_a_row_and_keep_their_positions() {
        let reqs = [
            req(&[1, 2, 3], &[7, 8, 9]),
            req(&[5], &[6]),
            req(&[1, 2, 3], &[4]),
            // Would be truncated at max_len 6: scored alone, like lm-eval.
            req(&[1, 2, 3], &[10, 11, 12, 13, 14]),
        ];
        let rows = scoring_rows(&reqs, 6);
        assert_eq!(rows.len(), 3);
        let shared = rows.iter().find(|r| r.scored.len() == 2).unwrap();
        assert_eq!(shared.tokens, vec![1, 2, 3, 7, 8]);
        assert_eq!(shared.positions, vec![0, 1, 2, 3, 4]);
        assert_eq!(shared.branch, vec![0, 0, 0, 1, 1]);
        // Request 0: 7 from the context's end, 8 and 9 from its branch; request 2: 4 from the
        // context's end (its branch is empty).
        assert_eq!(
            shared.scored,
            vec![(0, vec![(2, 7), (3, 8), (4, 9)]), (2, vec![(2, 4)])]
        );
        let refs: Vec<&ScoringRow> = rows.iter().collect();
        let batch = ScoringBatch::from_rows(&refs, 0);
        let Packing { positions, branch } = batch.packing.expect("a shared row needs its layout");
        assert_eq!(positions.len(), 3);
        assert!(positions.iter().all(|p| p.len() == 6) && branch.iter().all(|b| b.len() == 6));
        let mut requests = batch.requests.clone();
        requests.sort();
        assert_eq!(requests, vec![0, 1, 2, 3]);
    }

    #[test]
    fn batches_respect_the_token_budget() {
        let rows = scoring_rows(
            &[
                req(&[1; 9], &[2]),
                req(&[3; 3], &[2]),
                req(&[4; 4], &[2]),
                req(&[5; 2], &[2]),
            ],
            100,
        );
        // Row lengths 9, 3, 4, 2 (inputs: context + continuation - 1).
        let plan = plan_batches(&rows, 11);
        assert_eq!(plan, vec![vec![0], vec![2, 1], vec![3]]);
    }
}
