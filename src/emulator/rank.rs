//! ScaleOT's Selective Rank Compression: the kept middle layers' chosen attention projections
//! `W [out, in]` stored as truncated-SVD factors `U_r·Σ_r` `[out, r]` and `V_rᵀ` `[r, in]`;
//! the other projections and the MLP stay dense. [`SrcRule`] says how the ranks are chosen:
//! the paper's one share `beta` of every matrix's rank, or that same total rank spent by the
//! spectrum's energy or by layer importance, or only the least important kept layers
//! compressed. The SVDs are native only (nalgebra): the browser only ever reads the factors.

use std::collections::BTreeMap;

use super::plan::LayerKind;
use crate::error::{Error, Result};

/// How Selective Rank Compression chooses each matrix's rank.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum SrcRule {
    /// The paper's: every matrix keeps `ceil(beta · min(out, in))` singular values.
    #[default]
    Share,
    /// The same total rank as [`SrcRule::Share`], spent so that every matrix keeps the same
    /// share of its spectrum's energy (`Σσ²`): matrices with flat spectra keep more rank.
    Energy,
    /// The same total rank as [`SrcRule::Share`], shared between the kept layers in proportion
    /// to their keep probability from Dynamic LayerReplace: important layers keep more.
    Importance,
    /// Only the less important half of the kept layers (by keep probability) compressed, each
    /// at `beta`'s share; the more important half stays dense.
    Least,
}

impl SrcRule {
    pub const ALL: [SrcRule; 4] = [Self::Share, Self::Energy, Self::Importance, Self::Least];

    /// The name flags, manifests and reports use.
    pub fn name(self) -> &'static str {
        match self {
            Self::Share => "share",
            Self::Energy => "energy",
            Self::Importance => "importance",
            Self::Least => "least",
        }
    }

    pub fn from_name(name: &str) -> Result<Self> {
        Self::ALL
            .into_iter()
            .find(|r| r.name() == name)
            .ok_or_else(|| {
                Error::setting(
                    "src_rule",
                    name,
                    "unknown rule; use share, energy, importance or least",
                )
            })
    }

    /// Whether the rule reads the layers' keep probabilities.
    pub fn needs_importance(self) -> bool {
        matches!(self, Self::Importance | Self::Least)
    }
}

/// `"q,k"` → `["q_proj", "k_proj"]`: a comma-separated subset of q, k, v, o.
pub fn parse_projections(list: &str) -> Result<Vec<&'static str>> {
    let mut out = Vec::new();
    for p in list.split(',').map(str::trim) {
        let proj = match p {
            "q" => "q_proj",
            "k" => "k_proj",
            "v" => "v_proj",
            "o" => "o_proj",
            other => {
                return Err(Error::setting(
                    "src_projections",
                    other,
                    "unknown projection; use q, k, v, o",
                ));
            }
        };
        if !out.contains(&proj) {
            out.push(proj);
        }
    }
    Ok(out)
}

/// One Selective Rank Compression run: its settings and the importance it may read.
pub struct Compression<'a> {
    /// Share of each matrix's rank kept (the budget for the rules that move rank around).
    pub beta: f64,
    pub rule: SrcRule,
    /// The attention projections factored (`q_proj`, ...).
    pub projections: &'a [&'static str],
    /// Keep probability per layer index (Dynamic LayerReplace's), for the rules that need it.
    pub importance: Option<&'a BTreeMap<usize, f64>>,
}

/// The rank chosen per compressed layer and projection (what the manifest records).
pub type Ranks = BTreeMap<usize, BTreeMap<String, usize>>;

impl Compression<'_> {
    /// The kept raw layers of `plan` this compression factors.
    pub fn layers(&self, plan: &[LayerKind]) -> Result<Vec<usize>> {
        let raw: Vec<usize> = (0..plan.len())
            .filter(|&i| plan[i] == LayerKind::Raw)
            .collect();
        if self.rule != SrcRule::Least {
            return Ok(raw);
        }
        let mut by_importance = raw
            .iter()
            .map(|&i| Ok((self.keep_probability(i)?, i)))
            .collect::<Result<Vec<_>>>()?;
        by_importance.sort_by(|a, b| a.0.total_cmp(&b.0).then(a.1.cmp(&b.1)));
        let mut least: Vec<usize> = by_importance
            .iter()
            .take((raw.len() / 2).max(1))
            .map(|&(_, i)| i)
            .collect();
        least.sort();
        Ok(least)
    }

    /// The SVDs [`Compression::apply`] computes for `plan` (for progress bars): one per
    /// layer and projection, twice for [`SrcRule::Energy`] (spectra first, then factors).
    pub fn svd_count(&self, plan: &[LayerKind]) -> Result<usize> {
        let passes = if self.rule == SrcRule::Energy { 2 } else { 1 };
        Ok(self.layers(plan)?.len() * self.projections.len() * passes)
    }

    fn keep_probability(&self, layer: usize) -> Result<f64> {
        let importance = self.importance.ok_or_else(|| {
            Error::setting(
                "src_rule",
                self.rule.name(),
                "needs the importance scores of Dynamic LayerReplace (method scaleot or dynamic-drop)",
            )
        })?;
        importance.get(&layer).copied().ok_or_else(|| {
            Error::Invalid(format!(
                "the importance scores have no score for layer {layer}"
            ))
        })
    }
}

/// The SVDs themselves: the model owner's side only (nalgebra), never in the browser.
#[cfg(not(target_family = "wasm"))]
mod factor {
    use std::collections::HashMap;

    use nalgebra::DMatrix;

    use super::*;
    use crate::names;
    use crate::weights::{HostTensor, WeightSource};

    impl Compression<'_> {
        /// Factors the chosen projections of [`Compression::layers`]: factors go into `extra`
        /// (read from `extra` if a dense version is there, e.g. distilled, else from `base`),
        /// their dense weights leave it, and those layers become [`LayerKind::LowRank`].
        /// `beta` in (0, 1] (`recipe::check_beta`). `on_matrix` is called after each SVD.
        pub fn apply(
            &self,
            plan: &mut [LayerKind],
            extra: &mut HashMap<String, HostTensor>,
            base: &dyn WeightSource,
            on_matrix: &mut dyn FnMut(),
        ) -> Result<Ranks> {
            let layers = self.layers(plan)?;
            let mut matrices = Vec::new();
            for &i in &layers {
                for &proj in self.projections {
                    let name = names::projection_weight(i, proj);
                    let w = match extra.get(&name) {
                        Some(t) => t.clone(),
                        None => base.required(&name)?,
                    };
                    let [out, inp] = w.shape[..] else {
                        return Err(Error::ShapeMismatch {
                            tensor: name,
                            expected: vec![0, 0],
                            found: w.shape,
                        });
                    };
                    matrices.push((i, proj, w, out, inp));
                }
            }
            let dims: Vec<usize> = matrices.iter().map(|m| m.3.min(m.4)).collect();
            let share: Vec<usize> = dims.iter().map(|&d| share_rank(self.beta, d)).collect();
            let budget: usize = share.iter().sum();
            let ranks: Vec<usize> = match self.rule {
                SrcRule::Share | SrcRule::Least => share,
                SrcRule::Energy => {
                    let mut spectra = Vec::with_capacity(matrices.len());
                    for (_, _, w, out, inp) in &matrices {
                        spectra.push(singular_values(&w.data, *out, *inp));
                        on_matrix();
                    }
                    energy_ranks(&spectra, budget)
                }
                SrcRule::Importance => {
                    let weights = (matrices.iter())
                        .map(|m| self.keep_probability(m.0))
                        .collect::<Result<Vec<_>>>()?;
                    importance_ranks(&dims, &weights, budget)
                }
            };
            let mut recorded = Ranks::new();
            for ((i, proj, w, out, inp), r) in matrices.into_iter().zip(ranks) {
                let (u, v) = truncated_svd(&w.data, out, inp, r)?;
                let module = names::projection(i, proj);
                let [u_name, v_name] = names::lowrank_factors(&module);
                extra.remove(&names::weight(&module));
                let u = HostTensor {
                    shape: vec![out, r],
                    data: u,
                };
                let v = HostTensor {
                    shape: vec![r, inp],
                    data: v,
                };
                extra.insert(u_name, u);
                extra.insert(v_name, v);
                recorded.entry(i).or_default().insert(proj.to_string(), r);
                plan[i] = LayerKind::LowRank;
                on_matrix();
            }
            Ok(recorded)
        }
    }

    /// `ceil(beta · dim)`, at least 1 and at most `dim`: the paper's rank.
    pub(super) fn share_rank(beta: f64, dim: usize) -> usize {
        ((beta * dim as f64).ceil() as usize).clamp(1, dim.max(1))
    }

    /// Per matrix (singular values, largest first) the rank that keeps one energy share `e` of
    /// `Σσ²` for all: the largest `e` whose ranks add up to at most `budget` (at least 1 each).
    pub(super) fn energy_ranks(spectra: &[Vec<f64>], budget: usize) -> Vec<usize> {
        let cumulative: Vec<Vec<f64>> = spectra
            .iter()
            .map(|s| {
                let total: f64 = s.iter().map(|x| x * x).sum::<f64>().max(f64::MIN_POSITIVE);
                s.iter()
                    .scan(0.0, |acc, x| {
                        *acc += x * x / total;
                        Some(*acc)
                    })
                    .collect()
            })
            .collect();
        let ranks_at = |e: f64| -> Vec<usize> {
            (cumulative.iter())
                .map(|c| (c.partition_point(|&x| x < e) + 1).clamp(1, c.len().max(1)))
                .collect()
        };
        largest_within_budget(ranks_at, 1.0, budget)
    }

    /// Ranks `min(1, c · weight) · dim` per matrix: the largest `c` whose ranks add up to at most
    /// `budget` (at least 1 each).
    pub(super) fn importance_ranks(dims: &[usize], weights: &[f64], budget: usize) -> Vec<usize> {
        let ranks_at = |c: f64| -> Vec<usize> {
            (dims.iter().zip(weights))
                .map(|(&d, &w)| share_rank((c * w.max(1e-6)).min(1.0), d))
                .collect()
        };
        largest_within_budget(ranks_at, 1e6, budget)
    }

    /// `ranks_at(x)` for the largest `x` in `[0, hi]` (by bisection) whose ranks add up to at most
    /// `budget`; `ranks_at` grows with `x`, and `ranks_at(0)` must fit.
    fn largest_within_budget(
        ranks_at: impl Fn(f64) -> Vec<usize>,
        hi: f64,
        budget: usize,
    ) -> Vec<usize> {
        let (mut lo, mut hi) = (0.0, hi);
        for _ in 0..100 {
            let mid = 0.5 * (lo + hi);
            if ranks_at(mid).iter().sum::<usize>() <= budget {
                lo = mid;
            } else {
                hi = mid;
            }
        }
        ranks_at(lo)
    }

    fn matrix(w: &[f32], rows: usize, cols: usize) -> DMatrix<f64> {
        DMatrix::<f64>::from_row_iterator(rows, cols, w.iter().map(|&x| x as f64))
    }

    /// `W`'s singular values, largest first.
    fn singular_values(w: &[f32], rows: usize, cols: usize) -> Vec<f64> {
        let mut s: Vec<f64> = matrix(w, rows, cols)
            .singular_values()
            .iter()
            .copied()
            .collect();
        s.sort_by(|a, b| b.total_cmp(a));
        s
    }

    /// `W [rows, cols]` (row-major) ≈ `U [rows, r] · V [r, cols]` with `U = U_r Σ_r`, `V = V_rᵀ`.
    pub fn truncated_svd(
        w: &[f32],
        rows: usize,
        cols: usize,
        r: usize,
    ) -> Result<(Vec<f32>, Vec<f32>)> {
        let svd = matrix(w, rows, cols).svd(true, true);
        let (Some(u), Some(v_t)) = (svd.u, svd.v_t) else {
            return Err(Error::Invalid("the SVD did not converge".into()));
        };
        // nalgebra does not promise an order: take the r largest singular values.
        let mut order: Vec<usize> = (0..svd.singular_values.len()).collect();
        order.sort_by(|&a, &b| svd.singular_values[b].total_cmp(&svd.singular_values[a]));
        let order = &order[..r.min(order.len())];
        let r = order.len();
        let mut us = vec![0f32; rows * r];
        for row in 0..rows {
            for (k, &j) in order.iter().enumerate() {
                us[row * r + k] = (u[(row, j)] * svd.singular_values[j]) as f32;
            }
        }
        let mut vt = vec![0f32; r * cols];
        for (k, &j) in order.iter().enumerate() {
            for col in 0..cols {
                vt[k * cols + col] = v_t[(j, col)] as f32;
            }
        }
        Ok((us, vt))
    }
}

#[cfg(not(target_family = "wasm"))]
pub use factor::truncated_svd;

#[cfg(test)]
mod tests {
    use super::factor::*;
    use super::*;

    #[test]
    fn truncated_svd_reconstructs_low_rank_matrices_and_keeps_the_largest_directions() {
        // A rank-2 matrix 5x4: u1 v1ᵀ·3 + u2 v2ᵀ·1.
        let (rows, cols) = (5, 4);
        let u1 = [1.0, 0.0, 2.0, -1.0, 0.5];
        let v1 = [0.5, -1.0, 1.0, 0.0];
        let u2 = [0.0, 1.0, -0.5, 0.0, 2.0];
        let v2 = [1.0, 1.0, 0.0, -2.0];
        let w: Vec<f32> = (0..rows * cols)
            .map(|k| {
                let (i, j) = (k / cols, k % cols);
                (3.0 * u1[i] * v1[j] + u2[i] * v2[j]) as f32
            })
            .collect();
        let (u, v) = truncated_svd(&w, rows, cols, 2).unwrap();
        for i in 0..rows {
            for j in 0..cols {
                let x: f32 = (0..2).map(|k| u[i * 2 + k] * v[k * cols + j]).sum();
                assert!(
                    (x - w[i * cols + j]).abs() < 1e-4,
                    "({i},{j}) {x} vs {}",
                    w[i * cols + j]
                );
            }
        }
        // Rank 1 keeps the dominant direction: the error is the smaller component.
        let (u, v) = truncated_svd(&w, rows, cols, 1).unwrap();
        let err: f32 = (0..rows * cols)
            .map(|k| (u[k / cols] * v[k % cols] - w[k]).powi(2))
            .sum();
        let total: f32 = w.iter().map(|x| x * x).sum();
        assert!(err < 0.3 * total, "rank-1 error {err} of {total}");
    }

    #[test]
    fn energy_rule_keeps_one_energy_share_within_the_share_rules_budget() {
        // A flat spectrum needs most of its rank for any energy share; a steep one very little.
        let flat = vec![1.0; 8];
        let steep: Vec<f64> = (0..8).map(|k| 0.1f64.powi(k)).collect();
        let budget = 2 * share_rank(0.5, 8);
        let ranks = energy_ranks(&[flat.clone(), steep.clone()], budget);
        assert!(ranks.iter().sum::<usize>() <= budget, "{ranks:?}");
        assert_eq!(
            ranks[1], 1,
            "the steep spectrum's first value is 99% of its energy"
        );
        assert_eq!(ranks[0], budget - 1, "the flat one takes the rest");
        // Equal spectra get equal ranks: the share rule's.
        assert_eq!(energy_ranks(&[flat.clone(), flat], budget), [4, 4]);
    }

    #[test]
    fn importance_rule_moves_rank_to_important_layers_within_the_budget() {
        let dims = [100, 100, 100];
        let budget = 3 * share_rank(0.5, 100);
        let ranks = importance_ranks(&dims, &[0.9, 0.5, 0.1], budget);
        assert!(ranks.iter().sum::<usize>() <= budget, "{ranks:?}");
        assert!(ranks[0] > ranks[1] && ranks[1] > ranks[2], "{ranks:?}");
        assert!(
            ranks.iter().sum::<usize>() >= budget - 3,
            "{ranks:?} spends the budget"
        );
        // No layer keeps more than its full rank.
        let ranks = importance_ranks(&dims, &[1.0, 0.01, 0.01], budget);
        assert_eq!(ranks[0], 100, "{ranks:?}");
        // Equal importance: the share rule's ranks.
        assert_eq!(importance_ranks(&dims, &[0.3; 3], budget), [50, 50, 50]);
    }

    #[test]
    fn least_rule_compresses_the_less_important_half_of_the_kept_layers() {
        use LayerKind::{Adapter, Dropped, Raw};
        let plan = [Adapter, Raw, Raw, Dropped, Raw, Raw, Raw, Adapter];
        let importance: BTreeMap<usize, f64> =
            [(1, 0.9), (2, 0.2), (3, 0.1), (4, 0.8), (5, 0.3), (6, 0.7)].into();
        let mut c = Compression {
            beta: 0.5,
            rule: SrcRule::Least,
            projections: &["q_proj", "k_proj"],
            importance: Some(&importance),
        };
        assert_eq!(c.layers(&plan).unwrap(), [2, 5]);
        assert_eq!(c.svd_count(&plan).unwrap(), 4);
        c.rule = SrcRule::Energy;
        assert_eq!(c.layers(&plan).unwrap(), [1, 2, 4, 5, 6]);
        assert_eq!(
            c.svd_count(&plan).unwrap(),
            20,
            "spectra first, then factors"
        );
        // Without importance the rules that need it refuse with their name.
        c.rule = SrcRule::Least;
        c.importance = None;
        assert!(matches!(
            c.layers(&plan),
            Err(Error::Setting {
                field: "src_rule",
                ..
            })
        ));
    }

    #[test]
    fn rules_read_back_from_their_names() {
        for rule in SrcRule::ALL {
            assert_eq!(SrcRule::from_name(rule.name()).unwrap(), rule);
        }
        assert!(SrcRule::from_name("spectrum").is_err());
    }

    #[test]
    fn projections_are_checked() {
        assert_eq!(parse_projections("q, k,q").unwrap(), ["q_proj", "k_proj"]);
        let err = parse_projections("q,x").unwrap_err();
        assert!(matches!(
            err,
            Error::Setting {
                field: "src_projections",
                ..
            }
        ));
    }
}
