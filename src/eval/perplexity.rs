//! Perplexity of held-out text with overlapping windows: every token is predicted once,
//! with up to `window - stride` tokens of earlier context; the first from end-of-text.

use serde::Serialize;

use super::LoglikRequest;
use crate::error::{Error, Result};

/// Splits a token stream into scoring requests. `stride <= window`.
pub fn rolling_requests(
    tokens: &[u32],
    prefix: u32,
    window: usize,
    stride: usize,
) -> Result<Vec<LoglikRequest>> {
    if tokens.is_empty() {
        return Err(Error::Invalid(
            "the text is empty: nothing to measure".into(),
        ));
    }
    if window < 2 || stride == 0 || stride > window {
        return Err(Error::Invalid(format!(
            "window {window} and stride {stride}: need window >= 2 and 0 < stride <= window"
        )));
    }
    let mut reqs = vec![LoglikRequest {
        context: vec![prefix],
        continuation: tokens[..window.min(tokens.len())].to_vec(),
    }];
    let mut scored_to = window.min(tokens.len());
    let mut start = stride;
    while scored_to < tokens.len() {
        let end = (start + window).min(tokens.len());
        reqs.push(LoglikRequest {
            context: tokens[start..scored_to].to_vec(),
            continuation: tokens[scored_to..end].to_vec(),
        });
        scored_to = end;
        start += stride;
    }
    Ok(reqs)
}

#[derive(Debug, Clone, Serialize)]
pub struct Perplexity {
    pub tokens: usize,
    pub bytes: usize,
    pub nll_per_token: f64,
    pub perplexity: f64,
    pub bits_per_byte: f64,
}

impl Perplexity {
    pub fn new(total_logprob: f64, tokens: usize, bytes: usize) -> Self {
        let nll = -total_logprob / tokens.max(1) as f64;
        Self {
            tokens,
            bytes,
            nll_per_token: nll,
            perplexity: nll.exp(),
            bits_per_byte: -total_logprob / std::f64::consts::LN_2 / bytes.max(1) as f64,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_token_scored_once() {
        let toks: Vec<u32> = (0..10).collect();
        let reqs = rolling_requests(&toks, 99, 4, 2).unwrap();
        let scored: Vec<u32> = reqs.iter().flat_map(|r| r.continuation.clone()).collect();
        assert_eq!(scored, toks);
        assert_eq!(reqs[0].context, vec![99]);
        assert_eq!(reqs[1].context, vec![2, 3]);
        assert!(
            reqs.iter()
                .all(|r| r.context.len() + r.continuation.len() <= 4 + 1)
        );
        assert!(rolling_requests(&[], 0, 4, 2).is_err());
        assert!(rolling_requests(&toks, 0, 4, 5).is_err());
    }
}
