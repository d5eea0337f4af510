//! Attention for training, with a backward pass that keeps one score-sized tensor per layer.
//!
//! burn's attention under autodiff is a chain of small differentiable ops (product, scale,
//! mask, max, subtract, exp, sum, divide, product), and autodiff keeps several of their
//! batch x heads x length x length inputs until the backward pass, for every layer. At a few
//! hundred tokens those score-sized tensors are most of a step's device memory. [`attention`]
//! is one operation instead: its forward pass is the same chain (on the CPU backend, one fused
//! softmax kernel on every core, `model::cpu_kernels`), and it keeps only the probabilities P,
//! from which the backward pass gets every gradient:
//! dV = Pᵀ·dO, dP = dO·Vᵀ, dS = P ⊙ (dP − rowsum(dP ⊙ P)), dQ = s·dS·K, dK = s·dSᵀ·Q.

use burn::backend::autodiff::NodeId;
use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::CheckpointStrategy;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
use burn::backend::tensor::{BoolTensor, FloatTensor};
use burn::backend::{Autodiff, Dispatch, TensorMetadata, backend_extension};
use burn::tensor::ops::AttentionModuleOptions;
use burn::tensor::{Bool, Tensor};

/// softmax(q·kᵀ/√d, where `mask` is false)·v for `q [b, h, t, d]`, `k`, `v [b, h, s, d]` and
/// `mask [b, h, t, s]` (true where attention is forbidden): burn's attention, and under autodiff
/// one operation whose backward pass keeps only the probabilities.
pub fn attention(q: Tensor<4>, k: Tensor<4>, v: Tensor<4>, mask: Tensor<4, Bool>) -> Tensor<4> {
    Tensor::from_dispatch(Dispatch::lean_attention(
        q.into_dispatch(),
        k.into_dispatch(),
        v.into_dispatch(),
        mask.into_dispatch(),
    ))
}

/// The operation behind [`attention`]: burn's attention on every backend, with autodiff's
/// backward pass replaced by one that keeps only the probabilities.
#[backend_extension(
    Autodiff,
    Cube: cfg(any(feature = "wgpu", target_family = "wasm")),
    Flex: cfg(any(feature = "flex", test, target_family = "wasm")),
)]
pub trait LeanAttention: burn::backend::Backend {
    fn lean_attention(
        q: FloatTensor<Self>,
        k: FloatTensor<Self>,
        v: FloatTensor<Self>,
        mask: BoolTensor<Self>,
    ) -> FloatTensor<Self> {
        let options = AttentionModuleOptions {
            scale: None,
            softcap: None,
            is_causal: false,
        };
        Self::attention(q, k, v, Some(mask), None, options)
    }

    /// softmax(q·kᵀ/√d where `mask` is false): what the backward pass keeps.
    fn attention_probabilities(
        q: FloatTensor<Self>,
        k: FloatTensor<Self>,
        mask: BoolTensor<Self>,
    ) -> FloatTensor<Self> {
        probabilities_by_ops::<Self>(q, k, mask)
    }

    /// The scores' gradient from the probabilities `p` and their gradient `grad_p`:
    /// `s · p ⊙ (grad_p − rowsum(grad_p ⊙ p))` for the scale `s` = 1/√d.
    fn attention_scores_grad(
        p: FloatTensor<Self>,
        grad_p: FloatTensor<Self>,
        scale: f64,
    ) -> FloatTensor<Self> {
        scores_grad_by_ops::<Self>(p, grad_p, scale)
    }

    /// The batched product `a · b` over the heads (burn's).
    fn attention_product(a: FloatTensor<Self>, b: FloatTensor<Self>) -> FloatTensor<Self> {
        Self::float_matmul(a, b)
    }
}

#[cfg(any(feature = "wgpu", target_family = "wasm"))]
impl LeanAttention for burn::backend::Cube {}

/// The softmax, its gradient and the products as CPU kernels (`model::cpu_kernels`), on
/// every core.
#[cfg(any(feature = "flex", test, target_family = "wasm"))]
impl LeanAttention for burn::backend::Flex {
    fn attention_probabilities(
        q: FloatTensor<Self>,
        k: FloatTensor<Self>,
        mask: BoolTensor<Self>,
    ) -> FloatTensor<Self> {
        use super::cpu_kernels;
        use burn::backend::{TensorMetadata, ops::FloatTensorOps};
        let scale = scale_of::<Self>(&q);
        let mut scores =
            cpu_kernels::into_contiguous(Self::attention_product(q, Self::float_transpose(k)));
        let mask = mask.to_contiguous();
        let shape = scores.shape();
        let width = shape.dims::<4>()[3];
        match (
            cpu_kernels::values_mut(&mut scores),
            cpu_kernels::bools(&mask),
        ) {
            (Some(values), Some(forbidden)) if values.len() == forbidden.len() => {
                cpu_kernels::masked_softmax(values, width, forbidden, scale as f32);
                scores
            }
            _ => {
                let scores = Self::float_mul_scalar(scores, scale.into());
                softmax_by_ops::<Self>(scores, mask)
            }
        }
    }

    fn attention_scores_grad(
        p: FloatTensor<Self>,
        grad_p: FloatTensor<Self>,
        scale: f64,
    ) -> FloatTensor<Self> {
        use super::cpu_kernels;
        use burn::backend::TensorMetadata;
        let (p, mut grad) = (p.to_contiguous(), cpu_kernels::into_contiguous(grad_p));
        let width = p.shape().dims::<4>()[3];
        match (cpu_kernels::values(&p), cpu_kernels::values_mut(&mut grad)) {
            (Some(probs), Some(values)) if probs.len() == values.len() => {
                cpu_kernels::softmax_backward(probs, values, width, scale as f32);
                grad
            }
            _ => scores_grad_by_ops::<Self>(p, grad, scale),
        }
    }

    fn attention_product(a: FloatTensor<Self>, b: FloatTensor<Self>) -> FloatTensor<Self> {
        use burn::backend::ops::FloatTensorOps;
        match super::cpu_kernels::product(&a, &b) {
            Some(out) => out,
            None => Self::float_matmul(a, b),
        }
    }
}

/// 1/√d, the scores' scale for heads of width `d` (burn's default).
fn scale_of<B: burn::backend::Backend>(q: &FloatTensor<B>) -> f64 {
    let d = q.shape().dims::<4>()[3];
    1.0 / (d as f64).sqrt()
}

/// The attention probabilities by burn's attention's own operations (so the same values),
/// NaN-safe where a whole row is masked.
fn probabilities_by_ops<B: burn::backend::Backend>(
    q: FloatTensor<B>,
    k: FloatTensor<B>,
    mask: BoolTensor<B>,
) -> FloatTensor<B> {
    let scale = scale_of::<B>(&q);
    let scores = B::float_mul_scalar(B::float_matmul(q, B::float_transpose(k)), scale.into());
    softmax_by_ops::<B>(scores, mask)
}

/// softmax of the scaled `scores` where `mask` is false; a fully masked row gives zeros.
fn softmax_by_ops<B: burn::backend::Backend>(
    scores: FloatTensor<B>,
    mask: BoolTensor<B>,
) -> FloatTensor<B> {
    let scores = B::float_mask_fill(scores, mask, f32::NEG_INFINITY.into());
    let finfo = scores.dtype().finfo().expect("attention scores are floats");
    let max = B::float_clamp_min(B::float_max_dim(scores.clone(), 3), finfo.min.into());
    let numerator = B::float_exp(B::float_sub(scores, max));
    let sum = B::float_sum_dim(numerator.clone(), 3);
    let sum = B::float_clamp_min(sum, finfo.min_positive.into());
    B::float_div(numerator, sum)
}

/// `s · p ⊙ (grad_p − rowsum(grad_p ⊙ p))`.
fn scores_grad_by_ops<B: burn::backend::Backend>(
    p: FloatTensor<B>,
    grad_p: FloatTensor<B>,
    scale: f64,
) -> FloatTensor<B> {
    let row = B::float_sum_dim(B::float_mul(grad_p.clone(), p.clone()), 3);
    B::float_mul_scalar(B::float_mul(p, B::float_sub(grad_p, row)), scale.into())
}

impl<B: LeanAttention, C: CheckpointStrategy> LeanAttention for Autodiff<B, C> {
    fn lean_attention(
        q: FloatTensor<Self>,
        k: FloatTensor<Self>,
        v: FloatTensor<Self>,
        mask: BoolTensor<Self>,
    ) -> FloatTensor<Self> {
        /// State: q, k and v (kept by the graph anyway) and the probabilities.
        #[derive(Debug)]
        struct Attend;

        impl<B: LeanAttention> Backward<B, 3> for Attend {
            type State = (NodeId, NodeId, NodeId, FloatTensor<B>);

            fn backward(
                self,
                ops: Ops<Self::State, 3>,
                grads: &mut Gradients,
                checkpointer: &mut Checkpointer,
            ) {
                let (q, k, v, p) = ops.state;
                let q: FloatTensor<B> = checkpointer.retrieve_node_output(q);
                let k: FloatTensor<B> = checkpointer.retrieve_node_output(k);
                let v: FloatTensor<B> = checkpointer.retrieve_node_output(v);
                let grad_out = grads.consume::<B>(&ops.node);
                let [q_node, k_node, v_node] = ops.parents;
                if let Some(node) = v_node {
                    let grad =
                        B::attention_product(B::float_transpose(p.clone()), grad_out.clone());
                    grads.register::<B>(node.id, grad);
                }
                if q_node.is_none() && k_node.is_none() {
                    return;
                }
                let scale = scale_of::<B>(&q);
                let grad_p = B::attention_product(grad_out, B::float_transpose(v));
                let grad_scores = B::attention_scores_grad(p, grad_p, scale);
                if let Some(node) = q_node {
                    grads.register::<B>(node.id, B::attention_product(grad_scores.clone(), k));
                }
                if let Some(node) = k_node {
                    let grad = B::attention_product(B::float_transpose(grad_scores), q);
                    grads.register::<B>(node.id, grad);
                }
            }
        }

        match Attend
            .prepare::<C>([q.node(), k.node(), v.node()])
            .compute_bound()
            .stateful()
        {
            OpsKind::Tracked(mut prep) => {
                let (q_state, k_state, v_state) = (
                    prep.checkpoint(&q),
                    prep.checkpoint(&k),
                    prep.checkpoint(&v),
                );
                let p = B::attention_probabilities(q.into_primitive(), k.into_primitive(), mask);
                let out = B::attention_product(p.clone(), v.into_primitive());
                prep.finish((q_state, k_state, v_state, p), out)
            }
            OpsKind::UnTracked(prep) => {
                let p = B::attention_probabilities(q.into_primitive(), k.into_primitive(), mask);
                prep.finish(B::attention_product(p, v.into_primitive()))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::tensor::{Device, Distribution, Tolerance};

    fn random(shape: [usize; 4], device: &Device) -> Tensor<4> {
        Tensor::random(shape, Distribution::Normal(0.0, 1.0), device)
    }

    /// Causal, with one query row fully masked (a padded row) in the second batch row.
    fn mask(b: usize, h: usize, t: usize, device: &Device) -> Tensor<4, Bool> {
        let causal = Tensor::<2, Bool>::tril_mask([t, t], 0, device);
        let mut rows = vec![causal.clone(); b];
        rows[1] = causal.slice_fill([0..1, 0..t], true);
        Tensor::stack::<3>(rows, 0)
            .unsqueeze_dim::<4>(1)
            .expand([b, h, t, t])
    }

    /// The CPU backend's score gradient is computed in place, in the buffer of `grad_p`
    /// (the kernel ran: burn's operations would allocate).
    #[test]
    fn the_cpu_score_gradient_runs_in_place() {
        use super::super::cpu_kernels::{self, CpuTensor};
        use burn::backend::Flex;
        let shape = [2, 3, 5, 5];
        let random = || {
            let t = Tensor::<4>::random(shape, Distribution::Default, &Device::flex());
            CpuTensor::from_data(t.into_data())
        };
        let (p, grad_p) = (random(), random());
        let before = cpu_kernels::values(&grad_p).expect("f32").as_ptr();
        let grad = <Flex as LeanAttention>::attention_scores_grad(p, grad_p, 0.5);
        assert_eq!(cpu_kernels::values(&grad).expect("f32").as_ptr(), before);
    }

    #[test]
    fn attention_and_its_gradients_equal_burns() {
        let device = Device::flex().autodiff();
        let (b, h, t, d) = (2, 3, 7, 8);
        let (q, k, v) = (
            random([b, h, t, d], &device).require_grad(),
            random([b, h, t, d], &device).require_grad(),
            random([b, h, t, d], &device).require_grad(),
        );
        let m = mask(b, h, t, &device);
        let weights = random([b, h, t, d], &device);
        let options = AttentionModuleOptions {
            scale: None,
            softcap: None,
            is_causal: false,
        };
        let burns = burn::tensor::module::attention(
            q.clone(),
            k.clone(),
            v.clone(),
            Some(m.clone()),
            None,
            options,
        );
        let ours = attention(q.clone(), k.clone(), v.clone(), m);
        ours.clone()
            .into_data()
            .assert_approx_eq::<f32>(&burns.clone().into_data(), Tolerance::absolute(1e-6));
        let grads_burn = (burns * weights.clone()).sum().backward();
        let grads_ours = (ours * weights).sum().backward();
        for (name, x) in [("q", &q), ("k", &k), ("v", &v)] {
            let (a, b) = (
                x.grad(&grads_ours).expect(name),
                x.grad(&grads_burn).expect(name),
            );
            a.into_data()
                .assert_approx_eq::<f32>(&b.into_data(), Tolerance::absolute(1e-5));
        }
    }
}
