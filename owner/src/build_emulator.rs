//! `scaleot emulator`: turns the full model into an emulator bundle. Methods: Offsite-Tuning's
//! uniform LayerDrop (optionally distilled), importance-ranked Dynamic LayerDrop, and ScaleOT
//! (harmonizers in place of the least important layers); Selective Rank Compression (`--beta`)
//! stores the kept middle layers' attention projections as truncated-SVD factors.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, Result, bail};
use clap::ValueEnum;
use nalgebra::DMatrix;
use scaleot::data::{self, DataOptions};
use scaleot::emulator::replace::least_important;
use scaleot::emulator::{
    AdapterSplit, BundleSpec, DistillConfig, Distiller, FrozenDtype, LayerKind, uniform_drop,
    write_bundle,
};
use scaleot::model::harmonizer::harmonizer_tensor_names;
use scaleot::model::{LayerSlot, Llama, OpenedModel};
use scaleot::tokenizer::Tokenizer;
use scaleot::weights::{HostTensor, HostTensors, Overlay, WeightSource, lowrank_names};
use serde_json::json;

use crate::device::DeviceArgs;
use crate::importance::ImportanceFile;
use crate::model_files::{assets_dir, default_model, mib, read, read_model, write_file};
use crate::progress;

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Method {
    /// Offsite-Tuning's uniform LayerDrop: keep middle layers evenly spaced.
    UniformDrop,
    /// Drop the least important middle layers (needs --importance), no harmonizers.
    DynamicDrop,
    /// ScaleOT: harmonizers replace the least important middle layers (needs --importance).
    Scaleot,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum Precision {
    F16,
    F32,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Select {
    /// The alpha share of all middle layers with the lowest scores.
    Global,
    /// The alpha share within each importance group.
    Group,
}

#[derive(clap::Args)]
pub struct EmulatorArgs {
    /// Base model (.gguf or HF folder); default: the fetched SmolLM2-135M.
    #[arg(long)]
    model: Option<PathBuf>,
    #[arg(long, value_enum, default_value = "uniform-drop")]
    method: Method,
    /// Adapter layers at the bottom and top, e.g. 2+2.
    #[arg(long, default_value = "2+2")]
    adapters: String,
    /// uniform-drop: middle layers to keep (default: the 1 - alpha share).
    #[arg(long)]
    keep: Option<usize>,
    /// Share of middle layers dropped (uniform-drop, dynamic-drop) or replaced by harmonizers
    /// (scaleot).
    #[arg(long, default_value_t = 0.5)]
    alpha: f64,
    /// Selective Rank Compression: share of singular values kept in the kept middle layers'
    /// q/k/v/o projections (1 = no compression).
    #[arg(long, default_value_t = 1.0)]
    beta: f64,
    /// The attention projections SRC compresses (comma-separated from q,k,v,o).
    #[arg(long, default_value = "q,k,v,o")]
    src_projections: String,
    /// The output of `scaleot importance` (scores + harmonizers).
    #[arg(long)]
    importance: Option<PathBuf>,
    /// How the alpha share is chosen from the scores.
    #[arg(long, value_enum, default_value = "global")]
    select: Select,
    /// Storage precision of the frozen layers (adapters are always f32).
    #[arg(long, value_enum, default_value = "f16")]
    frozen_dtype: Precision,
    /// Output manifest path; the weights go beside it as .safetensors.
    #[arg(long, default_value = "emulator.json")]
    out: PathBuf,
    #[command(flatten)]
    distill: DistillArgs,
}

/// Offsite-Tuning's emulator distillation on the owner's public corpus.
#[derive(clap::Args)]
struct DistillArgs {
    /// Distill the kept middle layers towards the full model's middle block.
    #[arg(long)]
    distill: bool,
    /// Where the distillation computes.
    #[command(flatten)]
    device: DeviceArgs,
    /// Public text files (.txt) to distill on; default: the fetched WordNet glosses.
    #[arg(long, num_args = 1..)]
    corpus: Vec<PathBuf>,
    #[arg(long, default_value_t = 200)]
    distill_steps: usize,
    #[arg(long, default_value_t = 4)]
    distill_batch: usize,
    #[arg(long, default_value_t = 128)]
    distill_seq_len: usize,
    #[arg(long, default_value_t = 1e-4)]
    distill_lr: f64,
    /// Weight of the emulator's next-token loss (Offsite-Tuning's recipe: 1; 0 skips it).
    #[arg(long, default_value_t = 1.0, allow_negative_numbers = true)]
    distill_lm_weight: f64,
    /// Weight of the middle block's hidden-state loss (Offsite-Tuning's recipe: 30).
    #[arg(long, default_value_t = 30.0, allow_negative_numbers = true)]
    distill_kd_weight: f64,
    #[arg(long, default_value_t = 0)]
    seed: u64,
}

pub fn emulator(a: EmulatorArgs) -> Result<()> {
    let base_path = a.model.clone().unwrap_or_else(default_model);
    let bytes = read_model(&base_path)?;
    let opened = bytes.open()?;
    let split = AdapterSplit::parse(&a.adapters)?;
    let n = opened.config.num_hidden_layers;
    let middle = split.middle(n)?;
    if !(a.beta > 0.0 && a.beta <= 1.0) {
        bail!("--beta {} must be in (0, 1]", a.beta);
    }
    let projections = src_projections(&a.src_projections)?;
    let mut extra: HashMap<String, HostTensor> = HashMap::new();
    let mut params = json!({"adapters": split.to_string(), "beta": a.beta});
    let mut plan = match a.method {
        Method::UniformDrop => {
            if !(0.0..1.0).contains(&a.alpha) {
                bail!("--alpha {} must be in [0, 1)", a.alpha);
            }
            let dropped = (a.alpha * middle.len() as f64).round() as usize;
            let keep = a.keep.unwrap_or(middle.len() - dropped);
            params["keep"] = json!(keep);
            uniform_drop(n, split, keep)?
        }
        Method::DynamicDrop | Method::Scaleot => {
            let path = a.importance.as_ref().with_context(|| {
                format!(
                    "--method {:?} needs --importance FILE.json from `scaleot importance`",
                    a.method
                )
            })?;
            let imp = ImportanceFile::read(path)?;
            imp.check(&opened.sha256, split, middle.clone())?;
            let group = (a.select == Select::Group).then_some(imp.manifest.config.group);
            let replaced = least_important(&imp.manifest.scores, middle.start, a.alpha, group)?;
            let kind = if a.method == Method::Scaleot {
                LayerKind::Harmonizer
            } else {
                LayerKind::Dropped
            };
            let mut plan = uniform_drop(n, split, middle.len())?;
            for &i in &replaced {
                plan[i] = kind;
                if kind == LayerKind::Harmonizer {
                    for name in harmonizer_tensor_names(i) {
                        let t = imp.tensor(&name)?;
                        extra.insert(name, t);
                    }
                }
            }
            params["alpha"] = json!(a.alpha);
            params["select"] = json!(format!("{:?}", a.select).to_lowercase());
            params["replaced"] = json!(replaced);
            params["importance_sha256"] = json!(imp.sha256);
            plan
        }
    };
    if a.distill.distill {
        if a.method != Method::UniformDrop {
            bail!("--distill is Offsite-Tuning's baseline: use it with --method uniform-drop");
        }
        let (tensors, report) = distill(&opened, &plan, split, &a.distill)?;
        params["distill"] = report;
        extra.extend(tensors);
    }
    if a.beta < 1.0 {
        let ranks = compress_attention(
            &mut plan,
            &mut extra,
            opened.source.as_ref(),
            a.beta,
            &projections,
        )?;
        params["src_ranks"] = json!(ranks);
    }
    let extra = HostTensors(extra);
    let weights_src = Overlay {
        top: &extra,
        base: opened.source.as_ref(),
    };
    let method = match a.method {
        Method::UniformDrop => "uniform-drop",
        Method::DynamicDrop => "dynamic-drop",
        Method::Scaleot => "scaleot",
    };
    let spec = BundleSpec {
        config: &opened.config,
        tokenizer: &opened.tokenizer,
        plan,
        method: method.into(),
        params,
        base_model_sha256: opened.sha256.clone(),
        frozen_dtype: match a.frozen_dtype {
            Precision::F16 => FrozenDtype::F16,
            Precision::F32 => FrozenDtype::F32,
        },
    };
    let (weights, manifest) = write_bundle(spec, &weights_src)?;
    write_file(&crate::model_files::weights_beside(&a.out), &weights)?;
    write_file(&a.out, serde_json::to_string_pretty(&manifest)?.as_bytes())?;
    let count = |k: LayerKind| manifest.plan.iter().filter(|p| **p == k).count();
    println!(
        "emulator {} ({method}): {} adapter + {} raw + {} low-rank + {} harmonizer layers, {} dropped",
        a.out.display(),
        count(LayerKind::Adapter),
        count(LayerKind::Raw),
        count(LayerKind::LowRank),
        count(LayerKind::Harmonizer),
        count(LayerKind::Dropped)
    );
    let full_bytes = manifest.full_params * 4;
    println!(
        "parameters {:.1}M of {:.1}M ({:.0}%), weights {:.1} MiB (full model in f32: {:.1} MiB), sha256 {}",
        manifest.emulator_params as f64 / 1e6,
        manifest.full_params as f64 / 1e6,
        100.0 * manifest.emulator_params as f64 / manifest.full_params as f64,
        mib(manifest.weights_bytes),
        mib(full_bytes),
        manifest.weights_sha256
    );
    Ok(())
}

/// `--src-projections`: a comma-separated subset of q,k,v,o → `["q_proj", ...]`.
fn src_projections(list: &str) -> Result<Vec<&'static str>> {
    let mut out = Vec::new();
    for p in list.split(',').map(str::trim) {
        let proj = match p {
            "q" => "q_proj",
            "k" => "k_proj",
            "v" => "v_proj",
            "o" => "o_proj",
            other => bail!("--src-projections: unknown projection `{other}`; use q, k, v, o"),
        };
        if !out.contains(&proj) {
            out.push(proj);
        }
    }
    Ok(out)
}

/// Selective Rank Compression: every kept raw middle layer becomes low-rank; its chosen
/// attention projections `W [out, in]` are stored as `U_r·Σ_r` `[out, r]` and `V_rᵀ` `[r, in]`
/// with `r = ceil(beta · min(out, in))` (truncated SVD, nalgebra); the other projections and
/// the MLP stay untouched. Returns the ranks used per projection.
fn compress_attention(
    plan: &mut [LayerKind],
    extra: &mut HashMap<String, HostTensor>,
    base: &dyn WeightSource,
    beta: f64,
    projections: &[&str],
) -> Result<HashMap<String, usize>> {
    let mut ranks = HashMap::new();
    let targets: Vec<usize> = (0..plan.len())
        .filter(|&i| plan[i] == LayerKind::Raw)
        .collect();
    let pb = progress::bar(
        (targets.len() * projections.len()) as u64,
        "SVD",
        "matrices",
    );
    for i in targets {
        for &proj in projections {
            let module = format!("model.layers.{i}.self_attn.{proj}");
            let name = format!("{module}.weight");
            let w = match extra.get(&name) {
                Some(t) => t.clone(),
                None => base
                    .tensor(&name)?
                    .with_context(|| format!("the model lacks {name}"))?,
            };
            let (out, inp) = (w.shape[0], w.shape[1]);
            let r = ((beta * out.min(inp) as f64).ceil() as usize).clamp(1, out.min(inp));
            let (u, v) = truncated_svd(&w.data, out, inp, r)?;
            let [u_name, v_name] = lowrank_names(&module);
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
            pb.inc(1);
        }
        plan[i] = LayerKind::LowRank;
    }
    pb.finish_and_clear();
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
        bail!("the SVD did not converge");
    };
    // nalgebra does not promise an order: take the r largest singular values.
    let mut order: Vec<usize> = (0..svd.singular_values.len()).collect();
    order.sort_by(|&a, &b| svd.singular_values[b].total_cmp(&svd.singular_values[a]));
    let order = &order[..r];
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

/// Token rows of `seq_len` from public text files, and a description of the files.
pub fn corpus_rows(
    paths: &[PathBuf],
    tok: &Tokenizer,
    seq_len: usize,
    seed: u64,
) -> Result<(Vec<Vec<u32>>, serde_json::Value)> {
    let default = [assets_dir().join("corpus/wordnet-glosses.txt")];
    let paths: &[PathBuf] = if paths.is_empty() { &default } else { paths };
    let mut rows = Vec::new();
    let mut files = Vec::new();
    for path in paths {
        let bytes = read(
            path,
            "corpus",
            "run `bash scripts/fetch-assets.sh` for the default corpus, or pass --corpus FILE.txt",
        )?;
        files.push(json!({
            "file": path.file_name().map(|n| n.to_string_lossy().into_owned()),
            "bytes": bytes.len(), "sha256": scaleot::sha256_hex(&[&bytes]),
        }));
        let opts = DataOptions {
            max_len: seq_len,
            held_out: 0.0,
            seed,
            truncate: false,
        };
        let name = format!("{}.txt", display_name(path));
        let set = data::load(&bytes, &name, tok, &opts)
            .with_context(|| format!("reading corpus {}", path.display()))?;
        rows.extend(
            set.train
                .into_iter()
                .filter(|e| e.ids.len() == seq_len)
                .map(|e| e.ids),
        );
    }
    Ok((rows, json!(files)))
}

fn display_name(path: &Path) -> String {
    path.file_stem()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "corpus".into())
}

/// Distills the plan's kept middle layers; returns their tuned tensors (HF names) and a
/// report for the manifest.
fn distill(
    opened: &OpenedModel<'_>,
    plan: &[LayerKind],
    split: AdapterSplit,
    a: &DistillArgs,
) -> Result<(HashMap<String, HostTensor>, serde_json::Value)> {
    let device = a.device.open_autodiff()?;
    let (rows, corpus) = corpus_rows(&a.corpus, &opened.tokenizer, a.distill_seq_len, a.seed)?;
    if rows.len() < a.distill_batch {
        bail!(
            "the corpus gives {} sequences of {} tokens; distillation needs at least a batch of {}",
            rows.len(),
            a.distill_seq_len,
            a.distill_batch
        );
    }
    let teacher = Llama::load(&opened.config, opened.source.as_ref(), &device)?;
    let student = Llama::load_plan(&opened.config, opened.source.as_ref(), plan, &device)?;
    let cfg = DistillConfig {
        steps: a.distill_steps,
        batch_size: a.distill_batch,
        lr: a.distill_lr,
        warmup_steps: (a.distill_steps / 10).max(1),
        lm_weight: a.distill_lm_weight,
        kd_weight: a.distill_kd_weight,
    };
    let mut distiller = Distiller::new(teacher, student, plan, split, cfg)?;
    eprintln!(
        "distilling on {} sequences of {} tokens ({} used by {} steps)",
        rows.len(),
        a.distill_seq_len,
        a.distill_steps * a.distill_batch,
        a.distill_steps
    );
    let pb = progress::bar(a.distill_steps as u64, "distill", "steps");
    let start = Instant::now();
    // Per step: (relative hidden-state loss, next-token loss or NaN when not computed).
    let mut losses: Vec<(f32, f32)> = Vec::with_capacity(a.distill_steps);
    for (step, batch) in rows.chunks_exact(a.distill_batch).cycle().enumerate() {
        if distiller.finished() {
            break;
        }
        let step_losses = distiller.step(batch)?;
        let kd = crate::read_scalar(step_losses.kd)?;
        let (lm, lm_ok) = match step_losses.lm {
            Some(lm) => {
                let lm = crate::read_scalar(lm)?;
                (lm, lm.is_finite())
            }
            None => (f32::NAN, true),
        };
        if !kd.is_finite() || !lm_ok {
            bail!(
                "distillation diverged at step {step} (relative loss {kd}, LM loss {lm}): lower --distill-lr"
            );
        }
        losses.push((kd, lm));
        pb.inc(1);
        let line = match lm.is_finite() {
            true => format!("relative loss {kd:.4} LM loss {lm:.3}"),
            false => format!("relative loss {kd:.4}"),
        };
        if pb.is_hidden() && (step + 1) % 20 == 0 {
            eprintln!("distill step {}/{} {line}", step + 1, a.distill_steps);
        }
        pb.set_message(line);
    }
    pb.finish_and_clear();
    let secs = start.elapsed().as_secs_f64();
    let window = (losses.len() / 10).max(1);
    let mean = |s: &[(f32, f32)], pick: fn(&(f32, f32)) -> f32| {
        s.iter().map(pick).sum::<f32>() / s.len().max(1) as f32
    };
    let (head, tail) = (&losses[..window], &losses[losses.len() - window..]);
    let (first, last) = (mean(head, |l| l.0), mean(tail, |l| l.0));
    let (lm_first, lm_last) = (mean(head, |l| l.1), mean(tail, |l| l.1));
    let lm_part = match lm_first.is_finite() {
        true => format!(", LM loss {lm_first:.3} → {lm_last:.3}"),
        false => String::new(),
    };
    eprintln!("distilled in {secs:.0}s: relative loss {first:.4} → {last:.4}{lm_part}");
    let student = distiller.student;
    let mut tensors = HashMap::new();
    for (slot, &orig) in student.layers.iter().zip(&student.layer_index) {
        let LayerSlot::Decoder(layer) = slot else {
            continue;
        };
        if plan[orig] != LayerKind::Raw {
            continue;
        }
        for (name, shape, t) in layer.hf_tensors(orig) {
            tensors.insert(
                name,
                HostTensor {
                    shape,
                    data: crate::read_vec(t)?,
                },
            );
        }
    }
    let report = json!({
        "steps": a.distill_steps, "batch": a.distill_batch, "seq_len": a.distill_seq_len,
        "lr": a.distill_lr, "lm_weight": a.distill_lm_weight, "kd_weight": a.distill_kd_weight,
        "seed": a.seed, "corpus": corpus, "relative_loss_first": first, "relative_loss_last": last,
        "lm_loss_first": finite_or_null(lm_first), "lm_loss_last": finite_or_null(lm_last),
        "seconds": secs, "peak_rss_mib": crate::commands::peak_rss_mib(),
    });
    Ok((tensors, report))
}

/// JSON has no NaN: a loss that was not computed is `null`.
fn finite_or_null(x: f32) -> serde_json::Value {
    if x.is_finite() {
        json!(x)
    } else {
        serde_json::Value::Null
    }
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
}
