//! The subcommands that use a model: generate, tokenize, score, perplexity, eval, bench.

use std::io::Write;
use std::path::PathBuf;
use std::time::Instant;

use anyhow::{Context, Result, bail};
use burn::tensor::Device;
use scaleot::eval::perplexity::{Perplexity, rolling_requests};
use scaleot::eval::{
    self, DocSample, Task, TaskResult, continuation_logprobs, encode_pair, score_all,
};
use scaleot::generate::{Sampling, generate as run_generate};
use scaleot::model::{LoadedModel, token_tensor};
use scaleot::tokenizer::Tokenizer;
use serde::Serialize;
use serde_json::json;

use crate::command_line::CommandLine;
use crate::device::DeviceArgs;
use crate::model_files::{self, assets_dir, default_model, load_model};
use crate::{ModelArgs, progress};

fn open(args: &ModelArgs) -> Result<(LoadedModel, Device)> {
    let dev = args.device.open()?;
    let path = args.model.clone().unwrap_or_else(default_model);
    Ok((load_model(&path, &dev)?, dev))
}

#[derive(clap::Args)]
pub struct GenerateArgs {
    #[command(flatten)]
    model: ModelArgs,
    /// The prompt text.
    prompt: String,
    #[arg(long, default_value_t = 32)]
    max_tokens: usize,
    /// Sample with this temperature instead of greedy decoding.
    #[arg(long)]
    temperature: Option<f32>,
    #[arg(long, default_value_t = 0)]
    top_k: usize,
    #[arg(long, default_value_t = 1.0)]
    top_p: f32,
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Wrap the prompt in the model's chat template, as a user turn awaiting the answer.
    #[arg(long)]
    chat: bool,
    /// Print one JSON object (prompt and generated token ids, the text) instead of streaming.
    #[arg(long)]
    json: bool,
}

pub fn generate(a: GenerateArgs) -> Result<()> {
    let (m, _) = open(&a.model)?;
    let prompt = if a.chat {
        let user = scaleot::chat::Message {
            role: "user".into(),
            content: a.prompt.clone(),
        };
        m.tokenizer.chat_template()?.render(&[user], true)?
    } else {
        a.prompt.clone()
    };
    let ids = m.tokenizer.encode(&prompt);
    let sampling = a.temperature.map(|t| Sampling {
        temperature: t,
        top_k: a.top_k,
        top_p: a.top_p,
        seed: a.seed,
    });
    let stop: Vec<u32> = m.tokenizer.eos_id.into_iter().collect();
    let start = Instant::now();
    if a.json {
        let sampling = sampling.as_ref();
        let out = run_generate(&m.model, &ids, a.max_tokens, sampling, &stop, |_| {})?;
        let text = m.tokenizer.decode(&out);
        println!("{}", json!({"prompt_ids": ids, "ids": out, "text": text}));
        return Ok(());
    }
    match a.chat {
        true => println!("{}", a.prompt), // the answer is a turn of its own
        false => print!("{}", a.prompt),
    }
    let mut shown = String::new();
    let mut produced = Vec::new();
    let out = run_generate(
        &m.model,
        &ids,
        a.max_tokens,
        sampling.as_ref(),
        &stop,
        |t| {
            if stop.contains(&t) {
                return; // the end-of-turn token is not text
            }
            // Print the text delta so multi-byte characters spanning tokens come out whole.
            produced.push(t);
            let text = m.tokenizer.decode(&produced);
            if let Some(delta) = text.strip_prefix(shown.as_str())
                && !delta.ends_with('\u{FFFD}')
            {
                print!("{delta}");
                let _ = std::io::stdout().flush();
                shown = text;
            }
        },
    )?;
    let rest = m.tokenizer.decode(&produced);
    println!("{}", rest.strip_prefix(shown.as_str()).unwrap_or(""));
    eprintln!(
        "[{} tokens in {:.2}s]",
        out.len(),
        start.elapsed().as_secs_f64()
    );
    Ok(())
}

#[derive(clap::Args)]
pub struct TokenizeArgs {
    /// A .gguf file or Hugging Face folder (only the tokenizer is read).
    #[arg(long)]
    model: Option<PathBuf>,
    text: String,
    /// Also print each token's text.
    #[arg(long)]
    verbose: bool,
}

fn load_tokenizer(path: Option<PathBuf>) -> Result<Tokenizer> {
    let path = path.unwrap_or_else(default_model);
    let hint = "run `bash scripts/fetch-assets.sh` or pass --model";
    if path.is_dir() {
        let bytes = model_files::read(&path.join("tokenizer.json"), "tokenizer", hint)?;
        let config = match path.join("tokenizer_config.json") {
            p if p.is_file() => Some(model_files::read(&p, "tokenizer_config.json", hint)?),
            _ => None,
        };
        let config = config.as_deref().map(std::str::from_utf8).transpose()?;
        Ok(Tokenizer::from_hf_files(
            std::str::from_utf8(&bytes)?,
            config,
        )?)
    } else {
        let bytes = model_files::read(&path, "model", hint)?;
        Ok(Tokenizer::from_gguf(&scaleot::weights::Gguf::parse(
            &bytes,
        )?)?)
    }
}

pub fn tokenize(a: TokenizeArgs) -> Result<()> {
    let tok = load_tokenizer(a.model)?;
    let ids = tok.encode(&a.text);
    if a.verbose {
        for id in &ids {
            println!("{id}\t{:?}", tok.decode(&[*id]));
        }
    } else {
        println!("{ids:?}");
    }
    Ok(())
}

#[derive(clap::Args)]
pub struct ScoreArgs {
    #[command(flatten)]
    model: ModelArgs,
    context: String,
    continuation: String,
    #[arg(long)]
    json: bool,
}

pub fn score(a: ScoreArgs) -> Result<()> {
    let (m, _) = open(&a.model)?;
    let req = encode_pair(&m.tokenizer, &a.context, &a.continuation)?;
    if req.continuation.is_empty() {
        bail!("the continuation is empty: nothing to score");
    }
    let pad = m.tokenizer.eos_id.unwrap_or(0);
    let logprobs = continuation_logprobs(&m.model, &req, m.config.max_position_embeddings, pad)?;
    let ll: f64 = logprobs.iter().map(|&x| x as f64).sum();
    if a.json {
        println!(
            "{}",
            json!({"loglikelihood": ll, "continuation_tokens": req.continuation.len(),
                "context_ids": req.context, "continuation_ids": req.continuation,
                "token_logprobs": logprobs})
        );
    } else {
        println!(
            "log p(continuation | context) = {ll:.6} over {} tokens",
            req.continuation.len()
        );
    }
    Ok(())
}

#[derive(clap::Args)]
pub struct PerplexityArgs {
    #[command(flatten)]
    target: ScoredModelArgs,
    file: PathBuf,
    /// Tokens per window.
    #[arg(long, default_value_t = 512)]
    window: usize,
    /// Window step; each token gets `window - stride` tokens of context at least.
    #[arg(long, default_value_t = 256)]
    stride: usize,
    /// Only the first N tokens of the file.
    #[arg(long)]
    max_tokens: Option<usize>,
    #[arg(long)]
    json: bool,
}

pub fn perplexity(a: PerplexityArgs) -> Result<()> {
    let bytes = model_files::read(&a.file, "text file", "pass a UTF-8 text file")?;
    let text = String::from_utf8(bytes).map_err(|e| {
        anyhow::anyhow!(
            "{} is not UTF-8 text (invalid byte at offset {}); convert it to UTF-8 first",
            a.file.display(),
            e.utf8_error().valid_up_to()
        )
    })?;
    let (model, tokenizer, _) = scored_model(&a.target)?;
    let mut ids = tokenizer.encode(&text);
    if let Some(n) = a.max_tokens {
        ids.truncate(n);
    }
    let used_bytes = tokenizer.decode(&ids).len();
    let prefix = tokenizer.prefix_id().context(
        "this tokenizer has no begin- or end-of-text token to start the first window from",
    )?;
    let reqs = rolling_requests(&ids, prefix, a.window, a.stride)?;
    let mut counter = progress::Counter::new(reqs.len() as u64, "perplexity", "windows");
    let scores = score_all(&model, &reqs, a.window, 4 * a.window, prefix, |n| {
        counter.inc(n as u64)
    })?;
    counter.finish();
    let p = Perplexity::new(scores.iter().map(|s| s.loglik).sum(), ids.len(), used_bytes);
    if a.json {
        println!("{}", serde_json::to_string_pretty(&p)?);
    } else {
        println!(
            "perplexity {:.4}  ({} tokens, {:.4} nats/token, {:.4} bits/byte)",
            p.perplexity, p.tokens, p.nll_per_token, p.bits_per_byte
        );
    }
    Ok(())
}

#[derive(clap::Args, Debug, PartialEq, Serialize)]
pub struct EvalArgs {
    #[command(flatten)]
    #[serde(flatten)]
    pub(crate) target: ScoredModelArgs,
    /// Comma-separated: arc_easy,arc_challenge,piqa,sciq,openbookqa,hellaswag,winogrande,copa
    #[arg(long, default_value = "arc_easy,piqa")]
    pub(crate) tasks: String,
    /// The split to evaluate: validation (default), test or train, where the data has it;
    /// SciQ also `tune` / `held-out`, the even / odd half of its validation set (it has no
    /// train split: `scaleot report` tunes on one half and evaluates on the other).
    #[arg(long)]
    pub(crate) split: Option<String>,
    /// Also write one JSON line per document (task, split, index, per-choice log-likelihoods
    /// and greedy flags, gold, acc, acc_norm) to this file.
    #[arg(long)]
    pub(crate) samples: Option<PathBuf>,
    /// Only the first N documents of each task.
    #[arg(long)]
    pub(crate) limit: Option<usize>,
    /// Padded tokens per forward batch.
    #[arg(long, default_value_t = 2048)]
    pub(crate) batch_tokens: usize,
    /// Print results as JSON.
    #[arg(long)]
    pub(crate) json: bool,
}

/// The model a measurement scores text with: full, emulator, emulator + adapter, or full +
/// adapter.
#[derive(clap::Args, Debug, PartialEq, Serialize)]
pub struct ScoredModelArgs {
    #[command(flatten)]
    #[serde(flatten)]
    pub(crate) model: ModelArgs,
    /// Score with this emulator (its manifest) instead of the full model.
    #[arg(long)]
    pub(crate) emulator: Option<PathBuf>,
    /// Tuned adapters: on the emulator with --emulator, else plugged into the full model.
    #[arg(long)]
    pub(crate) adapter: Option<PathBuf>,
}

impl EvalArgs {
    /// `scaleot eval --tasks TASKS` with every other flag at its default.
    pub fn new(tasks: &str) -> Self {
        Self {
            target: ScoredModelArgs {
                model: ModelArgs {
                    model: None,
                    device: DeviceArgs::default(),
                },
                emulator: None,
                adapter: None,
            },
            tasks: tasks.into(),
            split: None,
            samples: None,
            limit: None,
            batch_tokens: 2048,
            json: false,
        }
    }

    /// The command line of this request.
    pub fn command_line(&self) -> CommandLine {
        CommandLine::of("eval", self)
    }
}

/// Loads what `a` names; returns it with its tokenizer and context length.
fn scored_model(a: &ScoredModelArgs) -> Result<(scaleot::model::Llama, Tokenizer, usize)> {
    use scaleot::model::Llama;
    let dev = a.model.device.open()?;
    let adapter_files = a
        .adapter
        .as_ref()
        .map(|p| model_files::AdapterFiles::read(p))
        .transpose()?;
    let adapter = adapter_files
        .as_ref()
        .map(model_files::AdapterFiles::adapter)
        .transpose()?;
    if let Some(path) = &a.emulator {
        let (json, weights) = model_files::read_pair(path, "emulator")?;
        let emu = scaleot::adapter::load_emulator(&json, &weights, adapter.as_ref(), &dev)?;
        let ctx = emu.manifest.config.max_position_embeddings;
        return Ok((emu.model, emu.tokenizer, ctx));
    }
    let path = a.model.model.clone().unwrap_or_else(default_model);
    let bytes = model_files::read_model(&path)?;
    let opened = bytes.open()?;
    let ctx = opened.config.max_position_embeddings;
    let model = match &adapter {
        Some(adapter) => {
            adapter.check_base(&opened.sha256)?;
            let plugged = adapter.plugged_into(opened.source.as_ref());
            Llama::load(&opened.config, &plugged, &dev)?
        }
        None => Llama::load(&opened.config, opened.source.as_ref(), &dev)?,
    };
    Ok((model, opened.tokenizer, ctx))
}

pub fn eval(a: EvalArgs) -> Result<()> {
    let results: Vec<TaskResult> = evaluate(&a)?.into_iter().map(|e| e.result).collect();
    if a.json {
        println!("{}", serde_json::to_string_pretty(&results)?);
    } else {
        println!("| task | split | docs | acc | ± | acc_norm | ± |");
        println!("|---|---|---:|---:|---:|---:|---:|");
        for r in &results {
            // lm-eval reports only acc for some tasks; the JSON still carries acc_norm.
            let norm = match Task::from_name(&r.task).map(Task::reports_acc_norm) {
                Ok(true) => format!("{:.4} | {:.4}", r.acc_norm.value, r.acc_norm.stderr),
                _ => "– | –".to_string(),
            };
            println!(
                "| {} | {} | {} | {:.4} | {:.4} | {norm} |",
                r.task, r.split, r.docs, r.acc.value, r.acc.stderr
            );
        }
    }
    Ok(())
}

/// One task's evaluation: its metrics and each document's record (what a paired comparison
/// of two models reads).
pub struct Evaluated {
    pub result: TaskResult,
    pub samples: Vec<DocSample>,
}

/// Runs an evaluation and returns each task's metrics and records.
pub fn evaluate(a: &EvalArgs) -> Result<Vec<Evaluated>> {
    let tasks = Task::parse_list(&a.tasks)?;
    if tasks.is_empty() {
        bail!("no tasks given: pass --tasks arc_easy,piqa,...");
    }
    let assets = assets_dir();
    let split = a.split.as_deref().unwrap_or("validation");
    // Read all data first so a missing file fails before minutes of model work.
    let docs: Vec<_> = tasks
        .iter()
        .map(|&t| crate::datasets::load_docs(&assets, t, split, a.limit))
        .collect::<Result<_>>()?;
    let mut samples_out = match &a.samples {
        Some(path) => Some(std::io::BufWriter::new(
            std::fs::File::create(path)
                .with_context(|| format!("cannot write {}", path.display()))?,
        )),
        None => None,
    };
    let (model, tokenizer, max_len) = scored_model(&a.target)?;
    let pad = tokenizer.eos_id.unwrap_or(0);
    let mut results = Vec::new();
    for (task, docs) in tasks.iter().zip(&docs) {
        let reqs = eval::requests_for(&tokenizer, docs)?;
        let mut counter = progress::Counter::new(reqs.len() as u64, task.name(), "requests");
        let start = Instant::now();
        let scores = score_all(&model, &reqs, max_len, a.batch_tokens, pad, |n| {
            counter.inc(n as u64)
        })
        .with_context(|| format!("scoring {}", task.name()))?;
        counter.finish();
        let samples = eval::score_docs(task.name(), split, docs, &scores)?;
        if let Some(out) = &mut samples_out {
            for s in &samples {
                serde_json::to_writer(&mut *out, s)?;
                out.write_all(b"\n")?;
            }
            out.flush()?;
        }
        let r = TaskResult::from_samples(task.name(), split, &samples);
        eprintln!(
            "{}: {} docs, {} requests in {:.1}s",
            task.name(),
            r.docs,
            reqs.len(),
            start.elapsed().as_secs_f64()
        );
        results.push(Evaluated { result: r, samples });
    }
    Ok(results)
}

#[derive(clap::Args)]
pub struct BenchArgs {
    #[command(flatten)]
    model: ModelArgs,
    #[arg(long, default_value_t = 4)]
    batch: usize,
    #[arg(long, default_value_t = 128)]
    len: usize,
    /// Timed iterations (after one warm-up).
    #[arg(long, default_value_t = 5)]
    iters: usize,
}

/// Peak resident memory of this process (Linux `VmHWM`), in MiB.
pub fn peak_rss_mib() -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb / 1024.0)
}

/// Threads the CPU backend's matrix products use: rayon's pool, sized by `RAYON_NUM_THREADS`
/// (what the benchmark scripts set for both sides) or else one per core.
pub fn bench_threads() -> usize {
    std::env::var("RAYON_NUM_THREADS")
        .ok()
        .and_then(|v| v.parse().ok())
        .filter(|&n| n > 0)
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()))
}

pub fn bench(a: BenchArgs) -> Result<()> {
    let (m, dev) = open(&a.model)?;
    let vocab = m.model.vocab_size() as u32;
    // Deterministic pseudo-text: a fixed stride through the vocabulary.
    let rows: Vec<Vec<u32>> = (0..a.batch)
        .map(|b| {
            (0..a.len)
                .map(|i| ((b * 7919 + i * 104_729) as u32 % (vocab - 17)) + 17)
                .collect()
        })
        .collect();
    let run = || -> Result<f64> {
        let logits = m.model.forward(token_tensor(&rows, &dev));
        // Reading the sum back waits for the whole forward pass.
        Ok(crate::read_scalar(logits.sum())? as f64)
    };
    run()?;
    let start = Instant::now();
    let mut checksum = 0.0;
    for _ in 0..a.iters {
        checksum += run()?;
    }
    let secs = start.elapsed().as_secs_f64() / a.iters as f64;
    let tokens = (a.batch * a.len) as f64;
    println!(
        "{}",
        json!({
            "impl": format!("scaleot (burn {}, f32)", a.model.device.backend()),
            "batch": a.batch, "len": a.len, "iters": a.iters,
            "seconds_per_forward": secs,
            "tokens_per_second": tokens / secs,
            "peak_rss_mib": peak_rss_mib(),
            "threads": bench_threads(),
            "checksum": checksum,
        })
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `eval --samples` on the first documents of the tasks and splits whose lm-eval reference
    /// records per-document log-likelihoods (tests/golden/lm_eval_reference.json, other splits
    /// than validation keyed TASK@SPLIT): each choice's log-likelihood equal to lm-eval's
    /// (float32 sums over ~10-40 tokens: within 5e-3), and the records' metrics equal to the
    /// result's.
    #[test]
    fn samples_match_lm_eval_per_document() {
        let golden: serde_json::Value =
            serde_json::from_str(include_str!("../../tests/golden/lm_eval_reference.json"))
                .unwrap();
        let samples =
            std::env::temp_dir().join(format!("scaleot-samples-{}.jsonl", std::process::id()));
        for (tasks, split) in [
            ("copa,winogrande", "validation"),
            ("arc_challenge,openbookqa", "test"),
        ] {
            let mut args = EvalArgs::new(tasks);
            args.limit = Some(5);
            args.split = Some(split.into());
            args.samples = Some(samples.clone());
            let results: Vec<TaskResult> = evaluate(&args)
                .unwrap()
                .into_iter()
                .map(|e| e.result)
                .collect();
            let text = std::fs::read_to_string(&samples).unwrap();
            let records: Vec<serde_json::Value> = text
                .lines()
                .map(|l| serde_json::from_str(l).unwrap())
                .collect();
            assert_eq!(records.len(), 10);
            for r in &results {
                let key = match split {
                    "validation" => r.task.clone(),
                    _ => format!("{}@{split}", r.task),
                };
                let want = golden["tasks"][&key]["first_logliks"].as_array().unwrap();
                let mine: Vec<_> = records
                    .iter()
                    .filter(|s| s["task"] == r.task.as_str())
                    .collect();
                assert_eq!(mine.len(), want.len());
                for (i, (s, w)) in mine.iter().zip(want).enumerate() {
                    assert_eq!(
                        (s["doc"].as_u64(), s["split"].as_str()),
                        (Some(i as u64), Some(split))
                    );
                    let (ours, theirs) = (s["loglik"].as_array().unwrap(), w.as_array().unwrap());
                    assert_eq!(ours.len(), theirs.len());
                    for (a, b) in ours.iter().zip(theirs) {
                        let (a, b) = (a.as_f64().unwrap(), b.as_f64().unwrap());
                        assert!((a - b).abs() < 5e-3, "{key} doc {i}: {a} vs lm-eval {b}");
                    }
                    assert_eq!(s["greedy"].as_array().map(Vec::len), Some(ours.len()));
                }
                let acc = mine.iter().map(|s| s["acc"].as_f64().unwrap()).sum::<f64>() / 5.0;
                assert_eq!(acc, r.acc.value);
            }
        }
        std::fs::remove_file(&samples).unwrap();
    }
}
