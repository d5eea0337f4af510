//! Finding and reading model files on disk for the native binary (the core works from bytes).

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use burn::tensor::Device;
use scaleot::model::{LoadedModel, ModelBytes};

/// Where `fetch-assets.sh` puts things: `$SCALEOT_ASSETS` or `<repo>/assets`.
pub fn assets_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("SCALEOT_ASSETS") {
        return PathBuf::from(dir);
    }
    // The binary lives in <repo>/target/<profile>/; fall back to the working directory.
    let from_exe = std::env::current_exe().ok().and_then(|exe| {
        exe.ancestors()
            .map(|p| p.join("assets"))
            .find(|p| p.join("model").is_dir())
    });
    from_exe.unwrap_or_else(|| PathBuf::from("assets"))
}

pub fn default_model() -> PathBuf {
    assets_dir().join("model/SmolLM2-135M-Instruct.Q4_1.gguf")
}

/// Reads a file, turning "not found" into advice.
pub fn read(path: &Path, what: &str, hint: &str) -> Result<Vec<u8>> {
    std::fs::read(path).with_context(|| format!("cannot read {what} {}: {hint}", path.display()))
}

/// Reads a `.gguf` file or a Hugging Face folder (config.json, tokenizer.json, *.safetensors).
pub fn read_model(path: &Path) -> Result<ModelBytes> {
    let hint = "run `bash scripts/fetch-assets.sh` for the default model, or pass --model FILE.gguf|HF_DIR";
    if !path.is_dir() {
        return Ok(ModelBytes::Gguf(read(path, "model", hint)?));
    }
    let text = |name: &str| -> Result<String> {
        let bytes = read(
            &path.join(name),
            name,
            "a Hugging Face model folder needs config.json and tokenizer.json",
        )?;
        String::from_utf8(bytes).with_context(|| format!("{name} is not UTF-8 text"))
    };
    let mut shards: Vec<PathBuf> = std::fs::read_dir(path)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "safetensors"))
        .collect();
    shards.sort();
    if shards.is_empty() {
        bail!("no *.safetensors files in {}", path.display());
    }
    Ok(ModelBytes::Hf {
        config: text("config.json")?,
        tokenizer: text("tokenizer.json")?,
        tokenizer_config: match path.join("tokenizer_config.json") {
            p if p.is_file() => Some(text("tokenizer_config.json")?),
            _ => None,
        },
        shards: shards
            .iter()
            .map(|p| read(p, "weights", hint))
            .collect::<Result<_>>()?,
    })
}

/// Loads the full model from a `.gguf` file or a Hugging Face folder.
pub fn load_model(path: &Path, device: &Device) -> Result<LoadedModel> {
    let bytes = read_model(path)?;
    let opened = bytes
        .open()
        .with_context(|| format!("opening {}", path.display()))?;
    Ok(LoadedModel::from_opened(opened, device)?)
}

/// The safetensors file that goes with a manifest: `name.json` ↔ `name.safetensors`.
pub fn weights_beside(manifest: &Path) -> PathBuf {
    manifest.with_extension("safetensors")
}

/// Reads a manifest and its weights (`X.json` + `X.safetensors`).
pub fn read_pair(manifest: &Path, what: &str) -> Result<(String, Vec<u8>)> {
    let hint = format!("pass the {what}'s .json manifest; its .safetensors must sit beside it");
    let json = String::from_utf8(read(manifest, what, &hint)?)
        .with_context(|| format!("{} is not UTF-8 JSON", manifest.display()))?;
    let weights = read(&weights_beside(manifest), &format!("{what} weights"), &hint)?;
    Ok((json, weights))
}

/// An adapter as the data owner returned it: a .json manifest with its .safetensors beside
/// it, or the single .safetensors file the browser saves (the manifest in its header).
pub struct AdapterFiles {
    manifest: Option<String>,
    weights: Vec<u8>,
}

impl AdapterFiles {
    pub fn read(path: &Path) -> Result<Self> {
        if path.extension().is_some_and(|e| e == "safetensors") {
            let hint = "pass the adapter file the data owner sent (.safetensors from the page, or the .json manifest of `scaleot finetune`)";
            let weights = read(path, "adapter", hint)?;
            return Ok(Self {
                manifest: None,
                weights,
            });
        }
        let (json, weights) = read_pair(path, "adapter")?;
        Ok(Self {
            manifest: Some(json),
            weights,
        })
    }

    pub fn adapter(&self) -> Result<scaleot::adapter::Adapter<'_>> {
        Ok(match &self.manifest {
            Some(json) => scaleot::adapter::Adapter::load(json, &self.weights)?,
            None => scaleot::adapter::Adapter::load_single(&self.weights)?,
        })
    }
}

pub fn write_file(path: &Path, bytes: &[u8]) -> Result<()> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    std::fs::write(path, bytes).with_context(|| format!("writing {}", path.display()))
}

/// Writes a file under a temporary name beside it, then renames it into place: a crash never
/// leaves a half-written file where a whole one was (checkpoints).
/// The data reaches the disk before the rename, so that a power cut cannot leave the new name
/// pointing at blocks not yet written.
pub fn replace_file(path: &Path, bytes: &[u8]) -> Result<()> {
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = PathBuf::from(tmp);
    write_file(&tmp, bytes)?;
    std::fs::File::open(&tmp)
        .and_then(|f| f.sync_all())
        .with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| format!("writing {}", path.display()))
}

pub fn mib(bytes: u64) -> f64 {
    bytes as f64 / (1024.0 * 1024.0)
}
