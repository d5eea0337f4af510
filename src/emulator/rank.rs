//! ScaleOT's Selective Rank Compression: the kept middle layers' chosen attention projections
//! `W [out, in]` stored as truncated-SVD factors `U_r·Σ_r` `[out, r]` and `V_rᵀ` `[r, in]`
//! with `r = ceil(beta · min(out, in))`; the other projections and the MLP stay dense.
//! Native only (nalgebra's SVD): the browser only ever reads the factors.

use std::collections::HashMap;

use nalgebra::DMatrix;

use super::plan::LayerKind;
use crate::error::{Error, Result};
use crate::names;
use crate::weights::{HostTensor, WeightSource};

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

/// The matrices [`compress_attention`] will factor for `plan`: one per kept raw layer and
/// projection (for progress bars).
pub fn matrix_count(plan: &[LayerKind], projections: &[&str]) -> usize {
    plan.iter().filter(|k| **k == LayerKind::Raw).count() * projections.len()
}

/// Every kept raw layer of `plan` becomes low-rank: its `projections` go into `extra` as
/// factors (read from `extra` if a dense version is there, e.g. distilled, else from `base`),
/// and their dense weights leave `extra`. `beta` in (0, 1] (`recipe::check_beta`). Returns the
/// rank used per projection; `on_matrix` is called after each SVD.
pub fn compress_attention(
    plan: &mut [LayerKind],
    extra: &mut HashMap<String, HostTensor>,
    base: &dyn WeightSource,
    beta: f64,
    projections: &[&str],
    on_matrix: &mut dyn FnMut(),
) -> Result<HashMap<String, usize>> {
    let mut ranks = HashMap::new();
    let targets: Vec<usize> = (0..plan.len())
        .filter(|&i| plan[i] == LayerKind::Raw)
        .collect();
    for i in targets {
        for &proj in projections {
            let module = names::projection(i, proj);
            let name = names::weight(&module);
            let w = match extra.get(&name) {
                Some(t) => t.clone(),
                None => base.required(&name)?,
            };
            let (out, inp) = match w.shape[..] {
                [o, i] => (o, i),
                _ => {
                    return Err(Error::ShapeMismatch {
                        tensor: name,
                        expected: vec![0, 0],
                        found: w.shape,
                    });
                }
            };
            let r = ((beta * out.min(inp) as f64).ceil() as usize).clamp(1, out.min(inp));
            let (u, v) = truncated_svd(&w.data, out, inp, r)?;
            let [u_name, v_name] = names::lowrank_factors(&module);
            extra.remove(&name);
            extra.insert(
                u_name,
                HostTensor {
                    shape: vec![out, r],
                    data: u,
                },
            );
            extra.insert(
                v_name,
                HostTensor {
                    shape: vec![r, inp],
                    data: v,
                },
            );
            ranks.insert(proj.to_string(), r);
            on_matrix();
        }
        plan[i] = LayerKind::LowRank;
    }
    Ok(ranks)
}

/// `W [rows, cols]` (row-major) ≈ `U [rows, r] · V [r, cols]` with `U = U_r Σ_r`, `V = V_rᵀ`.
pub fn truncated_svd(
    w: &[f32],
    rows: usize,
    cols: usize,
    r: usize,
) -> Result<(Vec<f32>, Vec<f32>)> {
    let m = DMatrix::<f64>::from_row_iterator(rows, cols, w.iter().map(|&x| x as f64));
    let svd = m.svd(true, true);
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

#[cfg(test)]
mod tests {
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
