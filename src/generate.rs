//! Text generation with a KV cache: greedy, or sampled with temperature / top-k / top-p.

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use crate::error::{Error, Result};
use crate::model::{Llama, token_tensor};

/// Sampling settings; `None` in [`generate`] means greedy decoding.
#[derive(Debug, Clone)]
pub struct Sampling {
    pub temperature: f32,
    /// Keep the k most likely tokens (0 = all).
    pub top_k: usize,
    /// Keep the smallest set whose probability reaches p (1.0 = all).
    pub top_p: f32,
    pub seed: u64,
}

/// Generates up to `max_new` tokens after `prompt`, stopping early at any `stop` id.
/// `on_token` sees each new token as it is produced (for streaming output).
pub fn generate(
    model: &Llama,
    prompt: &[u32],
    max_new: usize,
    sampling: Option<&Sampling>,
    stop: &[u32],
    mut on_token: impl FnMut(u32),
) -> Result<Vec<u32>> {
    if prompt.is_empty() {
        return Err(Error::Invalid(
            "the prompt is empty: give at least one token of text".into(),
        ));
    }
    if let Some(&bad) = prompt.iter().find(|&&t| t as usize >= model.vocab_size()) {
        return Err(Error::Invalid(format!(
            "token id {bad} is outside the model's vocabulary of {}",
            model.vocab_size()
        )));
    }
    let device = model.device();
    let mut cache = model.new_cache();
    let mut rng = StdRng::seed_from_u64(sampling.map_or(0, |s| s.seed));
    let mut out = Vec::with_capacity(max_new);
    let mut input = prompt.to_vec();
    for _ in 0..max_new {
        let hidden = model.hidden(token_tensor(&[input.clone()], &device), Some(&mut cache));
        let [_, t, d] = hidden.dims();
        let last = model.head(hidden.narrow(1, t - 1, 1).reshape([1, 1, d]));
        let logits = last
            .into_data()
            .try_into_vec::<f32>()
            .map_err(|e| Error::Invalid(format!("reading logits back from the device: {e:?}")))?;
        let next = match sampling {
            None => argmax(&logits),
            Some(s) => sample(&logits, s, &mut rng),
        };
        out.push(next);
        on_token(next);
        if stop.contains(&next) {
            break;
        }
        input = vec![next];
    }
    Ok(out)
}

fn argmax(xs: &[f32]) -> u32 {
    let mut best = 0;
    for (i, &x) in xs.iter().enumerate() {
        if x > xs[best] {
            best = i;
        }
    }
    best as u32
}

/// Draws from softmax(logits / T) restricted by top-k and top-p.
fn sample(logits: &[f32], s: &Sampling, rng: &mut StdRng) -> u32 {
    if s.temperature <= 0.0 {
        return argmax(logits);
    }
    let mut idx: Vec<usize> = (0..logits.len()).collect();
    idx.sort_unstable_by(|&a, &b| logits[b].total_cmp(&logits[a]));
    if s.top_k > 0 {
        idx.truncate(s.top_k);
    }
    let max = logits[idx[0]];
    let mut probs: Vec<f64> = idx
        .iter()
        .map(|&i| (((logits[i] - max) / s.temperature) as f64).exp())
        .collect();
    let total: f64 = probs.iter().sum();
    probs.iter_mut().for_each(|p| *p /= total);
    let mut keep = probs.len();
    let mut acc = 0.0;
    for (i, p) in probs.iter().enumerate() {
        acc += p;
        if acc >= s.top_p as f64 {
            keep = i + 1;
            break;
        }
    }
    let mass: f64 = probs[..keep].iter().sum();
    let mut r = rng.random::<f64>() * mass;
    for (i, p) in probs[..keep].iter().enumerate() {
        r -= p;
        if r <= 0.0 {
            return idx[i] as u32;
        }
    }
    idx[keep - 1] as u32
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn top_k_one_is_greedy_and_seed_repeats() {
        let logits = [0.1, 2.0, 1.9, -3.0];
        let s = Sampling {
            temperature: 1.0,
            top_k: 1,
            top_p: 1.0,
            seed: 7,
        };
        let mut rng = StdRng::seed_from_u64(7);
        assert_eq!(sample(&logits, &s, &mut rng), 1);
        let s = Sampling { top_k: 0, ..s };
        let draw = |seed| {
            let mut rng = StdRng::seed_from_u64(seed);
            (0..20)
                .map(|_| sample(&logits, &s, &mut rng))
                .collect::<Vec<_>>()
        };
        assert_eq!(draw(3), draw(3));
        assert!(draw(3).iter().all(|&t| t < 4));
    }
}
