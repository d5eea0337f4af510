//! The MLP's gate, `silu(gate) · up`, as one operation.
//!
//! As burn's operations (`gate · sigmoid(gate)`, then `· up`) it is three passes over the
//! `[tokens, intermediate]` activations, and under autodiff it keeps four of them per layer
//! (gate, its sigmoid, silu(gate), up) for the backward pass. [`swiglu`] keeps two (gate and
//! up), from which the backward pass recomputes the sigmoid; on the CPU backend both passes
//! are single fused kernels on every core (`model::cpu_kernels`).

use burn::backend::autodiff::NodeId;
use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::CheckpointStrategy;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
use burn::backend::tensor::FloatTensor;
use burn::backend::{Autodiff, Dispatch, backend_extension};
use burn::tensor::Tensor;

/// `silu(gate) · up`, element by element (same shapes).
pub fn swiglu<const D: usize>(gate: Tensor<D>, up: Tensor<D>) -> Tensor<D> {
    Tensor::from_dispatch(Dispatch::swiglu(gate.into_dispatch(), up.into_dispatch()))
}

/// The operation behind [`swiglu`]: burn's operations by default, one kernel on the CPU
/// backend, and under autodiff one node whose backward pass keeps only `gate` and `up`.
#[backend_extension(
    Autodiff,
    Cube: cfg(any(feature = "wgpu", target_family = "wasm")),
    Flex: cfg(any(feature = "flex", test, target_family = "wasm")),
)]
pub trait SwiGlu: burn::backend::Backend {
    fn swiglu(gate: FloatTensor<Self>, up: FloatTensor<Self>) -> FloatTensor<Self> {
        swiglu_by_ops::<Self>(gate, up)
    }

    /// `(grad_gate, grad_up)` from the output's gradient.
    fn swiglu_backward(
        gate: FloatTensor<Self>,
        up: FloatTensor<Self>,
        grad: FloatTensor<Self>,
    ) -> (FloatTensor<Self>, FloatTensor<Self>) {
        swiglu_backward_by_ops::<Self>(gate, up, grad)
    }
}

/// burn's `silu(gate) · up`: `gate · sigmoid(gate) · up`.
fn swiglu_by_ops<B: burn::backend::Backend>(
    gate: FloatTensor<B>,
    up: FloatTensor<B>,
) -> FloatTensor<B> {
    let silu = B::float_mul(gate.clone(), B::sigmoid(gate));
    B::float_mul(silu, up)
}

/// With `s = sigmoid(gate)`: `grad_gate = grad · up · (s + silu · (1 − s))` (silu = gate · s),
/// `grad_up = grad · silu`.
fn swiglu_backward_by_ops<B: burn::backend::Backend>(
    gate: FloatTensor<B>,
    up: FloatTensor<B>,
    grad: FloatTensor<B>,
) -> (FloatTensor<B>, FloatTensor<B>) {
    let s = B::sigmoid(gate.clone());
    let silu = B::float_mul(gate, s.clone());
    let one_minus_s = B::float_add_scalar(B::float_neg(s.clone()), 1.0.into());
    let slope = B::float_add(s, B::float_mul(silu.clone(), one_minus_s));
    let grad_gate = B::float_mul(B::float_mul(grad.clone(), up), slope);
    (grad_gate, B::float_mul(grad, silu))
}

#[cfg(any(feature = "wgpu", target_family = "wasm"))]
impl SwiGlu for burn::backend::Cube {}

#[cfg(any(feature = "flex", test, target_family = "wasm"))]
impl SwiGlu for burn::backend::Flex {
    fn swiglu(gate: FloatTensor<Self>, up: FloatTensor<Self>) -> FloatTensor<Self> {
        use super::cpu_kernels;
        use burn::backend::TensorMetadata;
        let (gate, up) = (gate.to_contiguous(), up.to_contiguous());
        match (cpu_kernels::values(&gate), cpu_kernels::values(&up)) {
            (Some(g), Some(u)) if g.len() == u.len() => {
                let mut out = vec![0.0f32; g.len()];
                cpu_kernels::swiglu(g, u, &mut out);
                cpu_kernels::tensor(out, gate.shape())
            }
            _ => swiglu_by_ops::<Self>(gate, up),
        }
    }

    fn swiglu_backward(
        gate: FloatTensor<Self>,
        up: FloatTensor<Self>,
        grad: FloatTensor<Self>,
    ) -> (FloatTensor<Self>, FloatTensor<Self>) {
        use super::cpu_kernels;
        use burn::backend::TensorMetadata;
        let (gate, up, grad) = (
            gate.to_contiguous(),
            up.to_contiguous(),
            grad.to_contiguous(),
        );
        match (
            cpu_kernels::values(&gate),
            cpu_kernels::values(&up),
            cpu_kernels::values(&grad),
        ) {
            (Some(g), Some(u), Some(d)) if g.len() == u.len() && u.len() == d.len() => {
                let (mut grad_gate, mut grad_up) = (vec![0.0f32; g.len()], vec![0.0f32; g.len()]);
                cpu_kernels::swiglu_backward(g, u, d, &mut grad_gate, &mut grad_up);
                let shape = gate.shape();
                (
                    cpu_kernels::tensor(grad_gate, shape.clone()),
                    cpu_kernels::tensor(grad_up, shape),
                )
            }
            _ => swiglu_backward_by_ops::<Self>(gate, up, grad),
        }
    }
}

impl<B: SwiGlu, C: CheckpointStrategy> SwiGlu for Autodiff<B, C> {
    fn swiglu(gate: FloatTensor<Self>, up: FloatTensor<Self>) -> FloatTensor<Self> {
        /// State: gate and up.
        #[derive(Debug)]
        struct Gate;

        impl<B: SwiGlu> Backward<B, 2> for Gate {
            type State = (NodeId, NodeId);

            fn backward(
                self,
                ops: Ops<Self::State, 2>,
                grads: &mut Gradients,
                checkpointer: &mut Checkpointer,
            ) {
                let (gate, up) = ops.state;
                let gate: FloatTensor<B> = checkpointer.retrieve_node_output(gate);
                let up: FloatTensor<B> = checkpointer.retrieve_node_output(up);
                let grad = grads.consume::<B>(&ops.node);
                let (grad_gate, grad_up) = B::swiglu_backward(gate, up, grad);
                let [gate_node, up_node] = ops.parents;
                if let Some(node) = gate_node {
                    grads.register::<B>(node.id, grad_gate);
                }
                if let Some(node) = up_node {
                    grads.register::<B>(node.id, grad_up);
                }
            }
        }

        match Gate
            .prepare::<C>([gate.node(), up.node()])
            .compute_bound()
            .stateful()
        {
            OpsKind::Tracked(mut prep) => {
                let state = (prep.checkpoint(&gate), prep.checkpoint(&up));
                let out = B::swiglu(gate.into_primitive(), up.into_primitive());
                prep.finish(state, out)
            }
            OpsKind::UnTracked(prep) => {
                prep.finish(B::swiglu(gate.into_primitive(), up.into_primitive()))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::tensor::activation::silu;
    use burn::tensor::{Device, Distribution, Tolerance};

    /// Values and both gradients equal burn's `silu(gate) · up`, on the CPU kernels (autodiff
    /// over Flex) and by the operations every other backend runs.
    #[test]
    fn swiglu_and_its_gradients_equal_burns() {
        let device = Device::flex().autodiff();
        let shape = [2, 5, 3 * 1024 + 1];
        let random = || Tensor::<3>::random(shape, Distribution::Normal(0.0, 3.0), &device);
        let (gate, up, weights) = (random().require_grad(), random().require_grad(), random());
        let burns = silu(gate.clone()) * up.clone();
        let ours = swiglu(gate.clone(), up.clone());
        let by_ops = Tensor::<3>::from_dispatch(swiglu_by_ops::<Dispatch>(
            gate.clone().into_dispatch(),
            up.clone().into_dispatch(),
        ));
        let tolerance = Tolerance::rel_abs(1e-5, 1e-5);
        for t in [&ours, &by_ops] {
            t.clone()
                .into_data()
                .assert_approx_eq::<f32>(&burns.clone().into_data(), tolerance);
        }
        let expected = (burns * weights.clone()).sum().backward();
        let got = (ours * weights.clone()).sum().backward();
        let (dg, du) = swiglu_backward_by_ops::<Dispatch>(
            gate.clone().detach().into_dispatch(),
            up.clone().detach().into_dispatch(),
            weights.into_dispatch(),
        );
        for (t, by_ops) in [(&gate, dg), (&up, du)] {
            let expected = t.grad(&expected).expect("gradient").into_data();
            let by_ops = Tensor::<3>::from_dispatch(by_ops);
            by_ops
                .into_data()
                .assert_approx_eq::<f32>(&expected, tolerance);
            let got = t.grad(&got).expect("gradient").into_data();
            got.assert_approx_eq::<f32>(&expected, tolerance);
        }
    }
}
