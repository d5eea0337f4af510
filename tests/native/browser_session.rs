//! The browser's training session, run natively on the CPU backend: its losses are the golden
//! that the WebGPU run in headless Chromium (tests/web_session.rs) must match; checkpoints
//! continue the run and refuse another; the single-file adapter is what the owner plugs in.

use crate::common;

use burn::module::Module;
use burn::tensor::Device;
use common::session_run::{
    DATA, golden, max_diff, run, run_on, run_resumed, settings, tiny_emulator,
};
use common::tiny::{bundle_storing, logits, max_abs_diff, tiny_model_bytes};
use futures_lite::future::block_on;
use scaleot::adapter::Adapter;
use scaleot::emulator::{Emulator, FrozenDtype};
use scaleot::model::frozen::FrozenStorage;
use scaleot::session::{Checkpoint, Session, batch_warning, check_fits};

/// The tiny emulator loaded on `device`, with its weights (resume needs them).
fn loaded_tiny_emulator(device: &Device) -> (Emulator, Vec<u8>) {
    let (json, weights) = tiny_emulator();
    (Emulator::load(&json, &weights, device).unwrap(), weights)
}

const GOLDEN: &str = "tests/golden/tiny_session.json";

#[test]
fn session_losses_match_the_golden_and_training_helps() {
    let device = Device::flex().autodiff();
    let (_, got) = block_on(run(&device));
    assert!(
        got.after < got.before - 0.1,
        "held-out loss {} → {}",
        got.before,
        got.after
    );
    assert!(got.losses.last().unwrap() < got.losses.first().unwrap());
    let path = common::root().join(GOLDEN);
    if std::env::var_os("UPDATE_GOLDEN").is_some() {
        let v = serde_json::json!({"held_out_before": got.before, "held_out_after": got.after, "losses": got.losses});
        std::fs::write(&path, serde_json::to_string_pretty(&v).unwrap()).unwrap();
    }
    let want = golden(&std::fs::read_to_string(&path).unwrap());
    let diff = max_diff(&got, &want);
    assert!(diff < 1e-4, "native run differs from {GOLDEN} by {diff}");
    // The scenario the WebGPU test runs too: stopped, resumed, equal to the whole run.
    let resumed = block_on(run_resumed(&device, 3));
    assert!(
        max_diff(&got, &resumed) < 1e-6,
        "{}",
        max_diff(&got, &resumed)
    );
}

/// Frozen weights kept in f16 on the device (as on a GPU with `shader-f16`) train the same run
/// as in f32: the bundle stores them in f16, so only their memory changes.
#[test]
fn frozen_weights_kept_in_f16_train_the_same_run() {
    let device = Device::flex().autodiff();
    let (weights, manifest) = bundle_storing(&tiny_model_bytes(), 2, FrozenDtype::F16);
    let json = serde_json::to_string(&manifest).unwrap();
    let load = |frozen| Emulator::load_storing(&json, &weights, frozen, &device).unwrap();
    let narrow = load(FrozenStorage::F16);
    let dtype = |emu: &Emulator| emu.model.embed_tokens.val().dtype();
    assert_eq!(dtype(&narrow), burn::tensor::DType::F16);
    let (_, wide) = block_on(run_on(&load(FrozenStorage::F32)));
    let (_, narrow) = block_on(run_on(&narrow));
    assert!(
        max_diff(&wide, &narrow) < 1e-5,
        "{}",
        max_diff(&wide, &narrow)
    );
    assert!(narrow.after < narrow.before - 0.1);
}

#[test]
fn checkpoint_continues_the_run_and_refuses_another() {
    let device = Device::flex().autodiff();
    let (emu, weights) = loaded_tiny_emulator(&device);
    let mut first = Session::new(&emu, DATA.as_bytes(), "notes.jsonl", &settings()).unwrap();
    for _ in 0..3 {
        block_on(first.step()).unwrap();
    }
    let saved = block_on(first.checkpoint()).unwrap();
    let restored = Checkpoint::from_bytes(saved.bytes.clone()).unwrap();
    assert_eq!(restored.state.step, 3);
    assert_eq!(restored.settings, settings());

    // A state the run cannot have reached (edited or crafted) is refused, not trained on.
    for (edit, says) in [
        (
            Box::new(|c: &mut Checkpoint| c.state.step = 99) as Box<dyn Fn(&mut Checkpoint)>,
            "beyond the run's 6 steps",
        ),
        (Box::new(|c| c.state.cursor = 10_000), "past the"),
        (Box::new(|c| c.state.micro = 5), "micro-batches"),
    ] {
        let mut bad = restored.clone();
        edit(&mut bad);
        let mut s = Session::new(&emu, DATA.as_bytes(), "notes.jsonl", &settings()).unwrap();
        let err = s.resume(&weights, &bad).unwrap_err().to_string();
        assert!(err.contains(says), "{err}");
    }

    let mut second = Session::new(&emu, DATA.as_bytes(), "notes.jsonl", &settings()).unwrap();
    second.resume(&weights, &restored).unwrap();
    assert_eq!(second.trainer.state.step, 3);
    // The adapters came back exactly.
    let (a, b) = (
        logits(&first.trainer.model.valid(), &device),
        logits(&second.trainer.model.valid(), &device),
    );
    assert!(max_abs_diff(&a, &b) < 1e-6);
    while !second.finished() {
        block_on(second.step()).unwrap();
    }
    assert_eq!(second.trainer.state.step, settings().steps);

    // Another data file is another run.
    let other = DATA.replace("Level 3", "Level 4");
    let mut third = Session::new(&emu, other.as_bytes(), "notes.jsonl", &settings()).unwrap();
    let err = third.resume(&weights, &restored).unwrap_err().to_string();
    assert!(
        err.contains("belongs to another run") && err.contains("data file"),
        "{err}"
    );
    // A file that is not a checkpoint says so.
    let err = Checkpoint::from_bytes(weights.clone())
        .unwrap_err()
        .to_string();
    assert!(err.contains("not a training checkpoint"), "{err}");
}

#[test]
fn single_file_adapter_plugs_into_the_emulator() {
    let device = Device::flex().autodiff();
    let (session, _) = block_on(run(&device));
    let file = block_on(session.adapter_file(&scaleot::session::Metrics::default())).unwrap();
    let adapter = Adapter::load_single(&file).unwrap();
    assert_eq!(adapter.manifest.layers, session.adapter_layers());
    assert!(adapter.manifest.lora.is_some());
    let (json, weights) = tiny_emulator();
    let plain = Device::flex();
    let plugged = scaleot::adapter::load_emulator(&json, &weights, Some(&adapter), &plain).unwrap();
    let trained = logits(&session.trainer.model.valid(), &plain);
    let merged = logits(&plugged.model, &plain);
    assert!(max_abs_diff(&trained, &merged) < 1e-4);
    // A corrupted byte in the weights is caught; a plain safetensors file is no adapter.
    let mut bad = file.clone();
    let last = bad.len() - 1;
    bad[last] ^= 1;
    let err = Adapter::load_single(&bad).err().unwrap().to_string();
    assert!(err.contains("corrupted"), "{err}");
    let err = Adapter::load_single(&weights).err().unwrap().to_string();
    assert!(err.contains("no adapter manifest"), "{err}");
}

#[test]
fn settings_and_estimates_are_sane() {
    let device = Device::flex().autodiff();
    let (emu, _) = loaded_tiny_emulator(&device);
    let s = Session::new(&emu, DATA.as_bytes(), "notes.jsonl", &settings()).unwrap();
    let e = s.estimate();
    assert_eq!(e.train_examples + e.held_out_examples, DATA.lines().count());
    assert!(e.weight_bytes > 0 && e.activation_bytes > 0 && e.total_flops > 0.0);
    // Against a GPU's per-buffer limit: the embedding must fit, the batch's logits should.
    assert!(check_fits(&s.manifest, Some(1e9)).is_ok());
    assert!(check_fits(&s.manifest, None).is_ok());
    let err = check_fits(&s.manifest, Some(16.0 * 1024.0))
        .unwrap_err()
        .to_string();
    assert!(err.contains("too large for this GPU"), "{err}");
    // A 7B-sized emulator does not fit a browser tab at all.
    let mut huge = s.manifest.clone();
    huge.emulator_params = 3_500_000_000;
    huge.weights_bytes = 7_000_000_000;
    let err = check_fits(&huge, None).unwrap_err().to_string();
    assert!(err.contains("too large for a browser tab"), "{err}");
    assert!(check_fits(&huge, Some(1e9)).is_err());
    // A ~1B emulator (10 of 16 layers x 2048 kept, f16 frozen weights, f32 adapters): on WebGPU
    // its weights live on the GPU and the tab holds the file; on the CPU it would not fit.
    let mut one_b = s.manifest.clone();
    one_b.config.vocab_size = 32_000;
    one_b.config.hidden_size = 2048;
    one_b.config.intermediate_size = 8192;
    one_b.emulator_params = 673_000_000;
    one_b.weights_bytes = 1_830_000_000;
    assert!(check_fits(&one_b, Some(1024.0 * 1024.0 * 1024.0)).is_ok());
    let err = check_fits(&one_b, None).unwrap_err().to_string();
    assert!(
        err.contains("on the CPU") && err.contains("use a browser with WebGPU"),
        "{err}"
    );
    assert!(batch_warning(&e, 1e9).is_none());
    let warn = batch_warning(&e, 64.0 * 1024.0).unwrap();
    assert!(warn.contains("lower the batch size"), "{warn}");
    // Empty data is refused with a clear message.
    let err = Session::new(&emu, b"", "notes.jsonl", &settings())
        .err()
        .unwrap()
        .to_string();
    assert!(err.contains("empty"), "{err}");
}

#[test]
fn a_diverging_run_stops_with_a_clear_error() {
    let device = Device::flex().autodiff();
    let (emu, _) = loaded_tiny_emulator(&device);
    let blowup = scaleot::session::Settings {
        lr: 1e30,
        steps: 3,
        ..settings()
    };
    let mut s = Session::new(&emu, DATA.as_bytes(), "notes.jsonl", &blowup).unwrap();
    let mut outcome = Ok(None);
    for _ in 0..3 {
        outcome = block_on(s.step());
        if outcome.is_err() {
            break;
        }
    }
    let err = outcome
        .expect_err("a 1e30 learning rate must diverge")
        .to_string();
    assert!(err.contains("diverged"), "{err}");
}

#[test]
fn the_run_policy_and_native_checkpoints_continue_exactly() {
    use scaleot::session::{RunClock, Settings};
    let device = Device::flex().autodiff();
    let (emu, weights) = loaded_tiny_emulator(&device);
    let settings = Settings {
        checkpoint_every: 2,
        ..settings()
    };
    let session = || Session::new(&emu, DATA.as_bytes(), "notes.jsonl", &settings).unwrap();

    // The uninterrupted run, on a clock where the first step takes 10 s (kernel compilation)
    // and every later one 1 s.
    let mut whole = session();
    let mut clock = RunClock::start(&whole, 0.0);
    let (mut now, mut due, mut progress) = (0.0, Vec::new(), Vec::new());
    while !whole.finished() {
        if let Some(r) = block_on(whole.step()).unwrap() {
            now += if r.step == 1 { 10.0 } else { 1.0 };
            progress.push(clock.progress(&r, now));
            if whole.checkpoint_due(r.step) {
                due.push(r.step);
            }
        }
    }
    assert_eq!(due, [2, 4], "every 2 steps, not after the last");
    assert_eq!(progress[0].first_step_seconds, Some(10.0));
    assert!(progress[1..].iter().all(|p| p.first_step_seconds.is_none()));
    // Rate and ETA come from the steps after the first: 1 s a step, 3 steps left after step 3.
    assert!(
        (progress[2].eta_seconds - 3.0).abs() < 1e-9,
        "{:?}",
        progress[2]
    );
    assert!(progress[5].eta_seconds == 0.0 && progress[5].tokens_per_second > 0.0);
    let metrics = clock.metrics(&whole, now, Some(2.0), Some(1.0));
    assert_eq!(metrics.steps_done, 6);
    assert_eq!(metrics.train_losses.len(), 6);
    assert_eq!(metrics.seconds, 15.0);

    // Stopped after step 2 with a checkpoint (the optimizer's state inside), the run
    // continues exactly as if it had not stopped.
    let mut first = session();
    while first.trainer.state.step < 2 {
        block_on(first.step()).unwrap();
    }
    let saved = block_on(first.checkpoint()).unwrap();
    let restored = Checkpoint::from_bytes(saved.bytes).unwrap();
    assert!(restored.optimizer.is_some());
    let mut second = session();
    second.resume(&weights, &restored).unwrap();
    while !second.finished() {
        block_on(second.step()).unwrap();
    }
    let (a, b) = (
        logits(&whole.trainer.model.valid(), &device),
        logits(&second.trainer.model.valid(), &device),
    );
    assert!(max_abs_diff(&a, &b) < 1e-6, "{}", max_abs_diff(&a, &b));
    assert_eq!(second.trainer.state.losses, whole.trainer.state.losses);
}

/// A host that pauses once after step 3 and stops after step 5, on a clock that ticks one
/// second per reading.
struct Scripted {
    clock: std::cell::Cell<f64>,
    steps: Vec<usize>,
    saved: Vec<usize>,
    pauses: Vec<usize>,
}

impl scaleot::session::RunHost for Scripted {
    fn now(&self) -> f64 {
        self.clock.set(self.clock.get() + 1.0);
        self.clock.get()
    }

    fn control(&self) -> scaleot::session::Control {
        use scaleot::session::Control;
        match self.steps.last() {
            Some(5) => Control::Stop,
            Some(3) if self.pauses.is_empty() => Control::Pause,
            _ => Control::Run,
        }
    }

    async fn save(&mut self, checkpoint: Checkpoint) -> scaleot::Result<()> {
        self.saved.push(checkpoint.state.step);
        Ok(())
    }

    fn progress(&mut self, p: &scaleot::session::Progress) {
        self.steps.push(p.step);
    }

    async fn paused(&mut self, step: usize) {
        self.pauses.push(step);
    }
}

#[test]
fn the_run_loop_checkpoints_when_due_pauses_and_stops() {
    use scaleot::session::{RunClock, Settings};
    let device = Device::flex().autodiff();
    let (emu, _) = loaded_tiny_emulator(&device);
    let settings = Settings {
        checkpoint_every: 2,
        ..settings()
    };
    let mut session = Session::new(&emu, DATA.as_bytes(), "notes.jsonl", &settings).unwrap();
    let mut host = Scripted {
        clock: std::cell::Cell::new(0.0),
        steps: Vec::new(),
        saved: Vec::new(),
        pauses: Vec::new(),
    };
    let mut clock = RunClock::start(&session, 0.0);
    let stopped = block_on(session.run(&mut host, &mut clock)).unwrap();
    assert!(stopped, "stopped after step 5 of 6");
    assert_eq!(host.steps, [1, 2, 3, 4, 5]);
    assert_eq!(host.pauses, [3]);
    // Due at 2 and 4; the pause after step 3 saves one too.
    assert_eq!(host.saved, [2, 3, 4]);
    assert_eq!(session.trainer.state.step, 5);
}

/// A checkpoint carries the hash of its tensors: a flipped byte in the adapter's weights, or
/// the optimizer's state swapped for another, is refused before anything trains on it; the
/// optimizer's state on its own refuses what it cannot read.
#[test]
fn a_damaged_checkpoint_is_refused_clearly() {
    use scaleot::optim::OPTIMIZER_TENSOR;
    let device = Device::flex().autodiff();
    let (emu, _) = loaded_tiny_emulator(&device);
    let mut first = Session::new(&emu, DATA.as_bytes(), "notes.jsonl", &settings()).unwrap();
    block_on(first.step()).unwrap();
    let saved = block_on(first.checkpoint()).unwrap().bytes;
    assert!(Checkpoint::from_bytes(saved.clone()).is_ok());
    let damaged_message = |bytes: Vec<u8>| Checkpoint::from_bytes(bytes).unwrap_err().to_string();
    // One flipped bit in the last tensor byte.
    let mut flipped = saved.clone();
    *flipped.last_mut().unwrap() ^= 1;
    assert!(damaged_message(flipped).contains("checkpoint is damaged"));
    // The same header with garbage where the optimizer's record was.
    let (meta, _) = scaleot::weights::safetensors::header_and_data(&saved).unwrap();
    let file = safetensors::SafeTensors::deserialize(&saved).unwrap();
    let items: Vec<_> = file
        .tensors()
        .into_iter()
        .map(|(name, view)| {
            let (shape, data) = match name == OPTIMIZER_TENSOR {
                true => (vec![23], b"not an optimizer record".to_vec()),
                false => (view.shape().to_vec(), view.data().to_vec()),
            };
            (name, view.dtype(), shape, data)
        })
        .collect();
    let meta: Vec<(&str, &str)> = meta.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let swapped = scaleot::weights::safetensors::encode_with(&items, &meta).unwrap();
    assert!(damaged_message(swapped).contains("checkpoint is damaged"));
    let mut optim = scaleot::optim::AdamW::new(0.0, None);
    let err = optim
        .load_state(b"not an optimizer record", &first.trainer.model, &device)
        .unwrap_err()
        .to_string();
    assert!(err.contains("optimizer state is unreadable"), "{err}");
}

/// Replicas in this process, each its own copy of the model, computing the shares they are
/// handed one after another: the page's helper workers without the workers.
struct InProcess {
    replicas: Vec<scaleot::replicas::Replica>,
    handed: Vec<(
        u64,
        Option<scaleot::replicas::FlatTensors>,
        Vec<scaleot::data::Example>,
        usize,
    )>,
}

impl scaleot::replicas::Replicas for InProcess {
    fn count(&self) -> usize {
        self.replicas.len()
    }
    fn holds(&self) -> Option<u64> {
        self.replicas.first().and_then(|r| r.holds())
    }
    fn hand_out(
        &mut self,
        version: u64,
        weights: Option<scaleot::replicas::FlatTensors>,
        shares: Vec<Vec<scaleot::data::Example>>,
        total: usize,
    ) -> scaleot::Result<()> {
        for share in shares {
            self.handed.push((version, weights.clone(), share, total));
        }
        Ok(())
    }
    async fn collect(&mut self) -> scaleot::Result<Vec<scaleot::replicas::ShareGradients>> {
        let mut out = Vec::new();
        for (replica, (version, weights, share, total)) in
            self.replicas.iter_mut().zip(self.handed.drain(..))
        {
            out.push(
                replica
                    .gradients(version, weights.as_ref(), &share, total)
                    .await?,
            );
        }
        Ok(out)
    }
}

#[test]
fn replicas_sharing_each_batch_train_the_same_run() {
    let device = Device::flex().autodiff();
    let (emu, _) = loaded_tiny_emulator(&device);
    for (lora_rank, batch_size) in [(4, 4), (0, 3)] {
        let settings = scaleot::session::Settings {
            lora_rank,
            batch_size,
            ..settings()
        };
        let mut alone = Session::new(&emu, DATA.as_bytes(), "notes.jsonl", &settings).unwrap();
        let mut shared = Session::new(&emu, DATA.as_bytes(), "notes.jsonl", &settings).unwrap();
        let mut pool = InProcess {
            replicas: (0..3)
                .map(|_| scaleot::session::replica(&emu, &settings).unwrap())
                .collect(),
            handed: Vec::new(),
        };
        while !alone.finished() {
            let a = block_on(alone.step()).unwrap().unwrap();
            let b = block_on(shared.step_with(&mut pool)).unwrap().unwrap();
            assert!(
                (a.loss - b.loss).abs() < 1e-5,
                "step {}: loss {} alone, {} shared (LoRA rank {lora_rank})",
                a.step,
                a.loss,
                b.loss
            );
            assert_eq!(a.tokens_seen, b.tokens_seen);
        }
        let (x, y) = (
            logits(&alone.trainer.model.valid(), &device),
            logits(&shared.trainer.model.valid(), &device),
        );
        assert!(
            max_abs_diff(&x, &y) < 1e-4,
            "LoRA rank {lora_rank}: {}",
            max_abs_diff(&x, &y)
        );
    }
}

#[test]
fn a_replica_refuses_weights_of_another_model() {
    let device = Device::flex().autodiff();
    let (emu, _) = loaded_tiny_emulator(&device);
    let lora = Session::new(&emu, DATA.as_bytes(), "notes.jsonl", &settings()).unwrap();
    let whole = scaleot::session::Settings {
        lora_rank: 0,
        ..settings()
    };
    let mut replica = scaleot::session::replica(&emu, &whole).unwrap();
    let theirs = block_on(scaleot::replicas::read_flat(
        scaleot::replicas::trainable_values(&lora.trainer.model)
            .into_iter()
            .map(Some)
            .collect(),
    ))
    .unwrap();
    let share = vec![lora.data.train[0].clone()];
    let err = block_on(replica.gradients(7, Some(&theirs), &share, 10))
        .unwrap_err()
        .to_string();
    assert!(err.contains("do not fit this model"), "{err}");
    // A share without the weights it needs is refused too.
    let err = block_on(replica.gradients(8, None, &share, 10))
        .unwrap_err()
        .to_string();
    assert!(err.contains("without the weights"), "{err}");
}
