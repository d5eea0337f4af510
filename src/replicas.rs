//! Data parallelism without shared memory: copies of the training model ("replicas", each in
//! its own process or Web Worker) compute the gradients of shares of every micro-batch, and
//! the trainer adds them up before its optimizer step. This is how the page's CPU fallback
//! uses more than one core: wasm threads would need shared memory (cross-origin isolation and
//! a second, atomics-enabled build of the standard library), message passing needs neither.
//!
//! A share's loss is its tokens' summed cross-entropy divided by the *whole* micro-batch's
//! target count, so the shares' losses and gradients add up to exactly the micro-batch's mean
//! and its gradient. Replicas exchange the trainable parameters (and their gradients) as flat
//! `f32` vectors in the model's visiting order, which is the same in every copy of one model.

use std::sync::atomic::{AtomicU64, Ordering};

use burn::module::{Module, ModuleMapper, ModuleVisitor, Param};
use burn::optim::GradientsParams;
use burn::tensor::{Device, Tensor, TensorData};

use crate::data::Example;
use crate::error::{Error, Result};
use crate::eval::loglik::ScoringBatch;
use crate::model::Llama;
use crate::readback::{read_scalar, read_vec};

/// The trainable parameters' values or gradients, flattened, in visiting order (an empty
/// vector: a parameter without a gradient in this share).
pub type FlatTensors = Vec<Vec<f32>>;

/// What a replica sends back for its share.
#[derive(Debug, Clone)]
pub struct ShareGradients {
    /// The share's part of the micro-batch's mean loss.
    pub loss: f32,
    pub grads: FlatTensors,
}

/// Other replicas that take shares of every micro-batch (the page's helper workers).
#[allow(async_fn_in_trait)] // used with concrete pools only, on one thread
pub trait Replicas {
    /// How many replicas there are besides the trainer's own model.
    fn count(&self) -> usize;
    /// Which version of the trainable weights ([`next_weights_version`]) the replicas hold.
    fn holds(&self) -> Option<u64>;
    /// Hands `shares[i]` to replica i (with the trainable weights of `version` when they are
    /// `Some`) and returns at once, so that the trainer computes its own share meanwhile.
    fn hand_out(
        &mut self,
        version: u64,
        weights: Option<FlatTensors>,
        shares: Vec<Vec<Example>>,
        total_targets: usize,
    ) -> Result<()>;
    /// Each replica's result for the shares handed out, in order.
    async fn collect(&mut self) -> Result<Vec<ShareGradients>>;
}

/// No replicas: the trainer computes every micro-batch alone.
pub struct Alone;

impl Replicas for Alone {
    fn count(&self) -> usize {
        0
    }
    fn holds(&self) -> Option<u64> {
        None
    }
    fn hand_out(
        &mut self,
        _: u64,
        _: Option<FlatTensors>,
        _: Vec<Vec<Example>>,
        _: usize,
    ) -> Result<()> {
        Err(Error::Invalid(
            "there are no replicas to hand shares to".into(),
        ))
    }
    async fn collect(&mut self) -> Result<Vec<ShareGradients>> {
        Ok(Vec::new())
    }
}

/// A process-wide id for one state of a model's trainable weights: a new one whenever the
/// weights change (an optimizer step, a resume, a roll-back), so replicas know when they are
/// stale, even across sessions.
pub fn next_weights_version() -> u64 {
    static NEXT: AtomicU64 = AtomicU64::new(1);
    NEXT.fetch_add(1, Ordering::Relaxed)
}

/// Splits a micro-batch into at most `parts` consecutive shares of about equal target-token
/// counts; none is empty and each holds at least one target token (unless the whole batch
/// has none).
pub fn split_shares<'a>(examples: &[&'a Example], parts: usize) -> Vec<Vec<&'a Example>> {
    let total: usize = examples.iter().map(|e| e.target_tokens()).sum();
    let parts = parts.clamp(1, examples.len().max(1));
    let mut shares: Vec<Vec<&Example>> = vec![Vec::new()];
    let mut done = 0usize;
    for (i, &e) in examples.iter().enumerate() {
        let left = examples.len() - i;
        let share_full = shares.len() < parts
            && !shares.last().is_some_and(|s| s.is_empty())
            && (done * parts >= total * shares.len() || left <= parts - shares.len());
        let has_targets = shares
            .last()
            .is_some_and(|s| s.iter().any(|e| e.target_tokens() > 0));
        if share_full && has_targets {
            shares.push(Vec::new());
        }
        done += e.target_tokens();
        if let Some(last) = shares.last_mut() {
            last.push(e);
        }
    }
    // Trailing examples without targets join the share before them.
    if shares.len() > 1
        && let Some(last) = shares.pop_if(|s| s.iter().all(|e| e.target_tokens() == 0))
        && let Some(before) = shares.last_mut()
    {
        before.extend(last);
    }
    shares
}

/// The forward and backward pass of one share: its loss (on the device) and its gradients,
/// both scaled by the share's part of the micro-batch's `total_targets`.
pub fn share_gradients(
    model: &Llama,
    share: &[&Example],
    pad: u32,
    total_targets: usize,
) -> Result<(Tensor<1>, GradientsParams)> {
    let batch = ScoringBatch::from_examples(share, pad);
    if batch.n_targets() == 0 {
        return Err(Error::Invalid("a batch without any target tokens".into()));
    }
    let loss = batch.training_loss(model);
    if batch.n_targets() == total_targets {
        let grads = GradientsParams::from_grads(loss.surrogate.backward(), model);
        return Ok((loss.mean, grads));
    }
    let weight = batch.n_targets() as f64 / total_targets.max(1) as f64;
    let grads = GradientsParams::from_grads(loss.surrogate.mul_scalar(weight).backward(), model);
    Ok((loss.mean.mul_scalar(weight), grads))
}

/// The trainable parameters' current values (on the device, flattened, visiting order).
pub fn trainable_values(model: &Llama) -> Vec<Tensor<1>> {
    struct Values(Vec<Tensor<1>>);
    impl ModuleVisitor for Values {
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
            let t = param.val();
            if t.is_require_grad() {
                let n: usize = t.dims().iter().product();
                self.0.push(t.inner().reshape([n]));
            }
        }
    }
    let mut v = Values(Vec::new());
    model.visit(&mut v);
    v.0
}

/// `grads` of the trainable parameters (flattened, visiting order; `None` where a parameter
/// has none).
pub fn trainable_gradients(model: &Llama, grads: &GradientsParams) -> Vec<Option<Tensor<1>>> {
    struct Grads<'a>(&'a GradientsParams, Vec<Option<Tensor<1>>>);
    impl ModuleVisitor for Grads<'_> {
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
            if param.val().is_require_grad() {
                let g = self.0.get::<D>(param.id).map(|g| {
                    let n: usize = g.dims().iter().product();
                    g.reshape([n])
                });
                self.1.push(g);
            }
        }
    }
    let mut v = Grads(grads, Vec::new());
    model.visit(&mut v);
    v.1
}

/// Checks that `flat` has one vector per trainable parameter of `model`, each of its size (or
/// empty where `allow_empty`): what replicas send each other is never trusted blindly.
fn check_flat(model: &Llama, flat: &FlatTensors, what: &str, allow_empty: bool) -> Result<()> {
    struct Sizes(Vec<usize>);
    impl ModuleVisitor for Sizes {
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
            let t = param.val();
            if t.is_require_grad() {
                self.0.push(t.dims().iter().product());
            }
        }
    }
    let mut sizes = Sizes(Vec::new());
    model.visit(&mut sizes);
    let fits = sizes.0.len() == flat.len()
        && sizes
            .0
            .iter()
            .zip(flat)
            .all(|(&n, v)| v.len() == n || (allow_empty && v.is_empty()));
    if !fits {
        return Err(Error::Invalid(format!(
            "{what} from another replica do not fit this model ({} tensors for {} trainable parameters): replicas must train the same emulator with the same settings",
            flat.len(),
            sizes.0.len()
        )));
    }
    Ok(())
}

/// `model` with its trainable parameters set to `values` (ids and everything else kept).
pub fn with_trainable_values(model: Llama, values: &FlatTensors) -> Result<Llama> {
    check_flat(&model, values, "trainable weights", false)?;
    struct Set<'a> {
        values: std::slice::Iter<'a, Vec<f32>>,
        device: Device,
    }
    impl ModuleMapper for Set<'_> {
        fn map_float<const D: usize>(&mut self, param: Param<Tensor<D>>) -> Param<Tensor<D>> {
            let (id, tensor, mapper) = param.consume();
            if !tensor.is_require_grad() {
                return Param::from_mapped_value(id, tensor, mapper);
            }
            let Some(v) = self.values.next() else {
                return Param::from_mapped_value(id, tensor, mapper);
            };
            let dims: [usize; D] = tensor.dims();
            let t = Tensor::<D>::from_data(TensorData::new(v.clone(), dims), &self.device);
            Param::from_mapped_value(id, t.require_grad(), mapper)
        }
    }
    let device = model.device();
    Ok(model.map(&mut Set {
        values: values.iter(),
        device,
    }))
}

/// Adds a replica's flat gradients into `grads` (the trainer's own share's).
pub fn add_gradients(model: &Llama, grads: &mut GradientsParams, flat: &FlatTensors) -> Result<()> {
    check_flat(model, flat, "gradients", true)?;
    struct Add<'a> {
        grads: &'a mut GradientsParams,
        flat: std::slice::Iter<'a, Vec<f32>>,
        device: Device,
    }
    impl ModuleVisitor for Add<'_> {
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
            let t = param.val();
            if !t.is_require_grad() {
                return;
            }
            let Some(v) = self.flat.next().filter(|v| !v.is_empty()) else {
                return;
            };
            let dims: [usize; D] = t.dims();
            let theirs =
                Tensor::<D>::from_data(TensorData::new(v.clone(), dims), &self.device).inner();
            let sum = match self.grads.remove::<D>(param.id) {
                Some(mine) => mine.add(theirs),
                None => theirs,
            };
            self.grads.register(param.id, sum);
        }
    }
    let device = model.device();
    model.visit(&mut Add {
        grads,
        flat: flat.iter(),
        device,
    });
    Ok(())
}

/// Reads device tensors back to the host (asynchronously, as WebGPU requires).
pub async fn read_flat(tensors: Vec<Option<Tensor<1>>>) -> Result<FlatTensors> {
    let mut out = Vec::with_capacity(tensors.len());
    for t in tensors {
        out.push(match t {
            Some(t) => read_vec(t).await?,
            None => Vec::new(),
        });
    }
    Ok(out)
}

/// A copy of a session's training model that computes shares' gradients: what a helper
/// worker holds.
pub struct Replica {
    model: Llama,
    pad: u32,
    version: Option<u64>,
}

impl Replica {
    /// A replica of `model`, the trainer's model as built for the run (LoRA attached, the rest
    /// frozen: [`crate::session::replica`] builds it); `pad` fills packed rows.
    pub fn new(model: Llama, pad: u32) -> Self {
        Self {
            model,
            pad,
            version: None,
        }
    }

    /// Which weights version it holds.
    pub fn holds(&self) -> Option<u64> {
        self.version
    }

    /// Takes the trainer's weights of `version` (when given), then computes `share`'s loss
    /// and gradients.
    pub async fn gradients(
        &mut self,
        version: u64,
        weights: Option<&FlatTensors>,
        share: &[Example],
        total_targets: usize,
    ) -> Result<ShareGradients> {
        if let Some(w) = weights {
            self.model = with_trainable_values(self.model.clone(), w)?;
            self.version = Some(version);
        }
        if self.version != Some(version) {
            return Err(Error::Invalid(
                "a replica was handed a share without the weights it needs".into(),
            ));
        }
        let refs: Vec<&Example> = share.iter().collect();
        let (loss, grads) = share_gradients(&self.model, &refs, self.pad, total_targets)?;
        let loss = read_scalar(loss).await?;
        let grads = read_flat(trainable_gradients(&self.model, &grads)).await?;
        Ok(ShareGradients { loss, grads })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ex(targets: usize) -> Example {
        Example {
            ids: vec![1; targets + 1],
            loss: vec![true; targets + 1],
        }
    }

    #[test]
    fn shares_are_balanced_consecutive_and_never_empty() {
        let data: Vec<Example> = [10, 10, 10, 10, 1, 1, 30, 2].map(ex).to_vec();
        let refs: Vec<&Example> = data.iter().collect();
        for parts in 1..=10 {
            let shares = split_shares(&refs, parts);
            assert_eq!(shares.len(), parts.min(data.len()), "{parts} parts");
            let flat: Vec<*const Example> =
                shares.iter().flatten().map(|e| *e as *const _).collect();
            let want: Vec<*const Example> = refs.iter().map(|e| *e as *const _).collect();
            assert_eq!(flat, want, "{parts} parts keep every example, in order");
            assert!(shares.iter().all(|s| !s.is_empty()));
        }
        let two = split_shares(&refs, 2);
        let counts: Vec<usize> = two
            .iter()
            .map(|s| s.iter().map(|e| e.target_tokens()).sum())
            .collect();
        assert_eq!(counts, vec![40, 34]);
    }

    #[test]
    fn a_share_without_targets_joins_its_neighbour() {
        let data: Vec<Example> = [0, 0, 5, 0].map(ex).to_vec();
        let refs: Vec<&Example> = data.iter().collect();
        let shares = split_shares(&refs, 4);
        assert!(
            shares
                .iter()
                .all(|s| s.iter().any(|e| e.target_tokens() > 0))
        );
    }
}
