//! The importance file: what Dynamic LayerReplace leaves for emulator assembly — the scores
//! and ranking of the middle layers, the run's settings and history (`importance.json`), and
//! every middle layer's harmonizer (`importance.safetensors`, under
//! `names::harmonizer_tensors`).
//! Also the run's checkpoint (one sealed file: harmonizers, optimizer, state) and resuming
//! from it.

use std::ops::Range;

use burn::tensor::Device;
use safetensors::Dtype;
use serde::{Deserialize, Serialize};

use super::plan::AdapterSplit;
use super::replace::{Harmonizers, LayerReplace, ReplaceConfig, ReplaceState};
use crate::error::{Error, Result};
use crate::model::frozen::FrozenStorage;
use crate::model::{Harmonizer, Llama, read_named};
use crate::optim::OPTIMIZER_TENSOR;
use crate::sha256_hex;
use crate::weights::safetensors::{encode_sealed, f32_items, open_sealed, write_tensors};
use crate::weights::{HostTensor, SafetensorsSource, WeightSource};

pub const FORMAT: &str = "scaleot-importance/1";

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ImportanceManifest {
    pub format: String,
    pub base_model_sha256: String,
    pub config: ReplaceConfig,
    /// Original index of the first middle layer; `scores[k]` belongs to layer `middle_start + k`.
    pub middle_start: usize,
    pub scores: Vec<f64>,
    pub keep_probabilities: Vec<f64>,
    /// Middle layers from most to least important.
    pub ranking: Vec<usize>,
    pub history: Vec<(f32, f64)>,
    /// The scores after each iteration.
    #[serde(default)]
    pub score_history: Vec<Vec<f64>>,
    /// The iteration whose RL step settled the ranking (`settle`); no scoring after it.
    #[serde(default)]
    pub settled_at: Option<usize>,
    pub corpus: serde_json::Value,
    pub seconds: f64,
    pub peak_rss_mib: Option<f64>,
    /// Sequences per harmonizer step, per RL scoring, and their length (for cost comparisons).
    #[serde(default)]
    pub batch: Option<usize>,
    #[serde(default)]
    pub val_batch: Option<usize>,
    #[serde(default)]
    pub seq_len: Option<usize>,
    pub weights_sha256: String,
}

impl crate::manifest::Manifest for ImportanceManifest {
    const WHAT: &'static str = "importance";
    const FORMAT: &'static str = FORMAT;
    fn format(&self) -> &str {
        &self.format
    }
}

/// How a finished run was fed and what it cost: the parts of the manifest the run itself
/// does not know.
pub struct RunRecord {
    pub base_model_sha256: String,
    pub corpus: serde_json::Value,
    pub seconds: f64,
    pub peak_rss_mib: Option<f64>,
    pub batch: usize,
    /// Held-out sequences that scored the candidates (0 when scored on training batches).
    pub val_batch: usize,
    pub seq_len: usize,
}

/// A finished run as `(importance.safetensors bytes, manifest)`.
pub fn write_importance(
    run: &LayerReplace,
    record: RunRecord,
) -> Result<(Vec<u8>, ImportanceManifest)> {
    let middle = run.middle();
    let weights = write_tensors(&harmonizer_tensors(&run.harmonizers, middle.start)?, FORMAT)?;
    let scores = run.state.scores.clone();
    let mut ranking: Vec<usize> = (0..scores.len()).collect();
    ranking.sort_by(|&x, &y| scores[y].total_cmp(&scores[x]));
    let manifest = ImportanceManifest {
        format: FORMAT.into(),
        base_model_sha256: record.base_model_sha256,
        config: run.cfg.clone(),
        middle_start: middle.start,
        keep_probabilities: run.keep_probabilities(),
        ranking: ranking.iter().map(|k| k + middle.start).collect(),
        scores,
        history: run.state.history.clone(),
        score_history: run.state.score_history.clone(),
        settled_at: run.state.settled_at,
        corpus: record.corpus,
        seconds: record.seconds,
        peak_rss_mib: record.peak_rss_mib,
        batch: Some(record.batch),
        val_batch: (record.val_batch > 0).then_some(record.val_batch),
        seq_len: Some(record.seq_len),
        weights_sha256: sha256_hex(&[&weights]),
    };
    Ok((weights, manifest))
}

/// A read importance file: manifest + harmonizer weights, integrity-checked.
pub struct ImportanceFile {
    pub manifest: ImportanceManifest,
    /// sha256 of the harmonizer weights: the identity emulators record.
    pub sha256: String,
    weights: Vec<u8>,
}

impl ImportanceFile {
    /// From the manifest's text and the weights file's bytes.
    pub fn parse(manifest_json: &str, weights: Vec<u8>) -> Result<Self> {
        let manifest: ImportanceManifest = crate::manifest::parse(manifest_json)?;
        let sha256 = sha256_hex(&[&weights]);
        if sha256 != manifest.weights_sha256 {
            return Err(Error::Invalid(
                "the harmonizer weights are corrupted (sha256 mismatch): run `scaleot importance` again"
                    .into(),
            ));
        }
        Ok(Self {
            manifest,
            sha256,
            weights,
        })
    }

    /// Refuses scores made for another model or another adapter split.
    pub fn check(
        &self,
        base_sha256: &str,
        split: AdapterSplit,
        middle: Range<usize>,
    ) -> Result<()> {
        if self.manifest.base_model_sha256 != base_sha256 {
            return Err(Error::Invalid(
                "the importance scores belong to another base model: run `scaleot importance` on this one"
                    .into(),
            ));
        }
        if self.manifest.config.adapters != split
            || self.manifest.middle_start != middle.start
            || self.manifest.scores.len() != middle.len()
        {
            return Err(Error::Invalid(format!(
                "the importance scores were made with adapters {}; use the same split",
                self.manifest.config.adapters
            )));
        }
        Ok(())
    }

    /// One stored harmonizer tensor by name.
    pub fn tensor(&self, name: &str) -> Result<HostTensor> {
        SafetensorsSource::new(&[&self.weights])?
            .tensor(name)?
            .ok_or_else(|| Error::Invalid(format!("the importance file lacks {name}")))
    }
}

/// The harmonizers' tensors read back to the host, named for their layers.
fn harmonizer_tensors(h: &Harmonizers, middle_start: usize) -> Result<Vec<(String, HostTensor)>> {
    let mut out = Vec::new();
    for (k, harmonizer) in h.list.iter().enumerate() {
        out.extend(read_named(harmonizer.hf_tensors(middle_start + k))?);
    }
    Ok(out)
}

/// The format tag of a Dynamic LayerReplace checkpoint (a sealed file, see
/// [`crate::weights::safetensors::encode_sealed`]).
const CHECKPOINT_FORMAT: &str = "scaleot-importance-checkpoint";

/// A run's checkpoint as one sealed file (written whole, read back only undamaged): the
/// harmonizers and the optimizer's state as tensors, the run's identity (settings and corpus)
/// and its state in the header.
pub fn checkpoint_file(run: &LayerReplace, corpus: &serde_json::Value) -> Result<Vec<u8>> {
    let tensors = harmonizer_tensors(&run.harmonizers, run.middle().start)?;
    let mut items = f32_items(&tensors);
    let optimizer = run.optimizer_record()?;
    items.push((
        OPTIMIZER_TENSOR.into(),
        Dtype::U8,
        vec![optimizer.len()],
        optimizer,
    ));
    let identity = serde_json::json!({"config": run.cfg, "corpus": corpus}).to_string();
    let state = to_json(&run.state, "checkpoint state")?;
    encode_sealed(
        &items,
        CHECKPOINT_FORMAT,
        &[("run", &identity), ("state", &state)],
    )
}

/// Continues a run from its checkpoint file ([`checkpoint_file`]): `model` is the full model
/// on an autodiff device, `cfg` and `corpus` the settings and corpus of this invocation, which
/// must be the checkpoint's (the step count may grow).
pub fn resume(
    model: Llama,
    cfg: ReplaceConfig,
    corpus: &serde_json::Value,
    checkpoint: &[u8],
) -> Result<LayerReplace> {
    let what = "importance checkpoint";
    let (meta, file) = open_sealed(checkpoint, CHECKPOINT_FORMAT, what)?;
    let field = |key: &str| {
        meta.get(key).map(String::as_bytes).ok_or_else(|| {
            Error::Invalid(format!(
                "the {what} has no `{key}` in its header: start afresh"
            ))
        })
    };
    let middle = cfg.adapters.middle(model.layers.len())?;
    let harmonizers = load_harmonizers(&SafetensorsSource::new(&[checkpoint])?, middle, &model)?;
    let identity: serde_json::Value = from_json(field("run")?, "the checkpoint's run")?;
    let saved_cfg: ReplaceConfig =
        serde_json::from_value(identity["config"].clone()).map_err(|error| Error::Json {
            what: "the checkpoint's run".into(),
            error,
        })?;
    let any_steps = |c: &ReplaceConfig| ReplaceConfig {
        steps: 0,
        ..c.clone()
    };
    if any_steps(&saved_cfg) != any_steps(&cfg) || identity["corpus"] != *corpus {
        return Err(Error::Invalid(
            "this checkpoint belongs to another run (other settings or corpus): resume with the same ones, or start afresh"
                .into(),
        ));
    }
    let optimizer = file
        .tensor(OPTIMIZER_TENSOR)
        .map_err(|_| Error::Invalid(format!("the {what} has no optimizer state: start afresh")))?;
    let mut run = LayerReplace::new(model, cfg, Some(harmonizers))?;
    let state: ReplaceState = from_json(field("state")?, "the checkpoint's state")?;
    run.resume(state, optimizer.data())?;
    Ok(run)
}

/// The harmonizers of layers `middle` from a weight source, for `model`'s width and device.
fn load_harmonizers(
    src: &dyn WeightSource,
    middle: Range<usize>,
    model: &Llama,
) -> Result<Harmonizers> {
    let (hidden, eps, device): (usize, f64, Device) =
        (model.embed_tokens.dims()[1], model.norm.eps, model.device());
    let list = middle
        .map(|i| Harmonizer::load(src, i, hidden, eps, &device, FrozenStorage::F32))
        .collect::<Result<Vec<_>>>()?;
    Ok(Harmonizers { list })
}

fn to_json<T: Serialize>(value: &T, what: &str) -> Result<String> {
    serde_json::to_string(value).map_err(|error| Error::Json {
        what: what.into(),
        error,
    })
}

fn from_json<T: serde::de::DeserializeOwned>(bytes: &[u8], what: &str) -> Result<T> {
    serde_json::from_slice(bytes).map_err(|error| Error::Json {
        what: what.into(),
        error,
    })
}
