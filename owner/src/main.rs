//! `scaleot`: the model owner's command-line tool.

mod build_emulator;
mod command_line;
mod commands;
mod datasets;
mod device;
mod importance;
mod model_files;
mod progress;
mod report;
mod serve;
mod tuning;

use std::path::PathBuf;

use anyhow::Result;
use clap::{Parser, Subcommand};
use device::DeviceArgs;

#[derive(Parser)]
#[command(
    name = "scaleot",
    version,
    about = "ScaleOT offsite-tuning: the model owner's tool"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

/// Options every model-using command shares.
#[derive(clap::Args, Clone, Debug, PartialEq, serde::Serialize)]
pub struct ModelArgs {
    /// A .gguf file or a Hugging Face folder (config.json, tokenizer.json, *.safetensors).
    /// Default: the SmolLM2-135M-Instruct GGUF fetched by scripts/fetch-assets.sh.
    #[arg(long)]
    pub model: Option<PathBuf>,
    #[command(flatten)]
    #[serde(flatten)]
    pub device: DeviceArgs,
}

#[derive(Subcommand)]
enum Command {
    /// Continue a prompt (greedy by default, or sampled with --temperature).
    Generate(commands::GenerateArgs),
    /// Print the token ids of a text.
    Tokenize(commands::TokenizeArgs),
    /// Log-likelihood of a continuation given a context.
    Score(commands::ScoreArgs),
    /// Perplexity of a text file.
    Perplexity(commands::PerplexityArgs),
    /// Zero-shot multiple-choice evaluation (acc, acc_norm as lm-evaluation-harness).
    Eval(commands::EvalArgs),
    /// Forward-pass throughput and memory at batch x length.
    Bench(commands::BenchArgs),
    /// Build an emulator bundle from the full model (uniform LayerDrop, ...).
    Emulator(build_emulator::EmulatorArgs),
    /// Dynamic LayerReplace: harmonizers and RL importance scores of the middle layers.
    Importance(importance::ImportanceArgs),
    /// The privacy-utility protocol: Full ZS/FT, Emulator ZS/FT, Plug-in per method and task.
    Report(report::ReportArgs),
    /// Fine-tune an emulator's adapters on private data; writes the adapter file.
    Finetune(tuning::FinetuneArgs),
    /// Merge returned adapters into the full model; writes a Hugging Face checkpoint.
    Plugin(tuning::PluginArgs),
    /// Write a task's training split as fine-tuning JSONL (prompt + correct answer).
    TaskData(TaskDataArgs),
    /// Adapter training-step throughput and memory on an emulator.
    BenchTrain(tuning::BenchTrainArgs),
    /// Serve the data owner's page and an emulator (static files, strict CSP, no uploads).
    Serve(serve::ServeArgs),
}

#[derive(clap::Args)]
struct TaskDataArgs {
    /// arc_easy, arc_challenge, piqa, openbookqa, or sciq (its tune half).
    #[arg(long)]
    task: String,
    #[arg(long)]
    out: PathBuf,
}

fn task_data(a: TaskDataArgs) -> Result<()> {
    let task = scaleot::eval::Task::from_name(&a.task)?;
    let docs = datasets::load_train_docs(&model_files::assets_dir(), task)?;
    datasets::write_mc_jsonl(&docs, &a.out)?;
    println!(
        "{}: {} training documents written to {}",
        task.name(),
        docs.len(),
        a.out.display()
    );
    Ok(())
}

/// A training step allocates and frees the same large buffers (activations, gradients) every
/// step. glibc maps each buffer above its threshold afresh and unmaps it on free, so every step
/// pays the kernel's page faults and zeroing for memory it just returned. Buffers up to 32 MiB
/// (glibc's largest threshold) now come from the heap, which keeps freed memory for reuse; peak
/// memory is unchanged. Measured in docs/results.md, "Speed".
fn keep_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only changes allocator parameters; called before any thread starts.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 32 << 20);
        libc::mallopt(libc::M_TRIM_THRESHOLD, i32::MAX);
    }
}

fn main() {
    keep_freed_memory();
    let cli = Cli::parse();
    let result: Result<()> = match cli.command {
        Command::Generate(a) => commands::generate(a),
        Command::Tokenize(a) => commands::tokenize(a),
        Command::Score(a) => commands::score(a),
        Command::Perplexity(a) => commands::perplexity(a),
        Command::Eval(a) => commands::eval(a),
        Command::Bench(a) => commands::bench(a),
        Command::Emulator(a) => build_emulator::emulator(&a),
        Command::Importance(a) => importance::importance(a),
        Command::Report(a) => report::report(a),
        Command::Finetune(a) => tuning::finetune(&a),
        Command::Plugin(a) => tuning::plugin(a),
        Command::TaskData(a) => task_data(a),
        Command::BenchTrain(a) => tuning::bench_train(a),
        Command::Serve(a) => serve::serve(a),
    };
    if let Err(e) = result {
        eprintln!("error: {}", cli_message(&e));
        std::process::exit(1);
    }
}

/// The error chain as one line, with the library's setting names as this binary's flags
/// (`beta` → `--beta`).
fn cli_message(e: &anyhow::Error) -> String {
    e.chain()
        .map(|cause| match cause.downcast_ref::<scaleot::Error>() {
            Some(scaleot::Error::Setting {
                field,
                value,
                reason,
            }) => format!("--{} {value}: {reason}", field.replace('_', "-")),
            _ => cause.to_string(),
        })
        .collect::<Vec<_>>()
        .join(": ")
}

pub use scaleot::model::{read_scalar, read_vec};
