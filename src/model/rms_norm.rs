//! RMSNorm, `x / √(mean(x²) + eps) · weight` over the last dimension, as one operation.
//!
//! As burn's operations it is five passes over the hidden states (square, mean, divide,
//! multiply, and the broadcasts), and under autodiff their backward passes are about ten more,
//! each a tensor of its own, for two norms in every layer. [`rms_norm`] keeps only `x` (and the
//! weight) for the backward pass; on the CPU backend both passes are one kernel each on every
//! core (`model::cpu_kernels`), and the weight's gradient is summed in a fixed order.

use burn::backend::autodiff::NodeId;
use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::CheckpointStrategy;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
use burn::backend::tensor::FloatTensor;
use burn::backend::{Autodiff, Dispatch, TensorMetadata, backend_extension};
use burn::tensor::Tensor;

/// RMSNorm of `x [.., width]` with `weight [width]`.
pub fn rms_norm<const D: usize>(x: Tensor<D>, weight: Tensor<1>, eps: f64) -> Tensor<D> {
    Tensor::from_dispatch(Dispatch::rms_norm(
        x.into_dispatch(),
        weight.into_dispatch(),
        eps,
    ))
}

/// The operation behind [`rms_norm`]: burn's operations by default, one kernel on the CPU
/// backend, and under autodiff one node whose backward pass keeps only `x` and the weight.
#[backend_extension(
    Autodiff,
    Cube: cfg(any(feature = "wgpu", target_family = "wasm")),
    Flex: cfg(any(feature = "flex", test, target_family = "wasm")),
)]
pub trait RmsNormOp: burn::backend::Backend {
    fn rms_norm(x: FloatTensor<Self>, weight: FloatTensor<Self>, eps: f64) -> FloatTensor<Self> {
        rms_norm_by_ops::<Self>(x, weight, eps)
    }

    /// `(grad_x, grad_weight)` from the output's gradient.
    fn rms_norm_backward(
        x: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        eps: f64,
        grad: FloatTensor<Self>,
    ) -> (FloatTensor<Self>, FloatTensor<Self>) {
        rms_norm_backward_by_ops::<Self>(x, weight, eps, grad)
    }
}

/// `weight` shaped to broadcast against `x` (`[1, .., 1, width]`).
fn broadcast_weight<B: burn::backend::Backend>(
    weight: FloatTensor<B>,
    x: &FloatTensor<B>,
) -> FloatTensor<B> {
    let mut dims = vec![1; x.shape().num_dims()];
    if let Some(last) = dims.last_mut() {
        *last = weight.shape().num_elements();
    }
    B::float_reshape(weight, dims.into())
}

/// `x / √(mean(x²) + eps)` (the norm without the weight) and that divisor, per row.
fn normalized_by_ops<B: burn::backend::Backend>(
    x: FloatTensor<B>,
    eps: f64,
) -> (FloatTensor<B>, FloatTensor<B>) {
    let last = x.shape().num_dims() - 1;
    let rms = B::float_sqrt(B::float_add_scalar(
        B::float_mean_dim(B::float_powi_scalar(x.clone(), 2.into()), last),
        eps.into(),
    ));
    (B::float_div(x, rms.clone()), rms)
}

/// burn's RMSNorm, as the model computed it before this operation existed.
fn rms_norm_by_ops<B: burn::backend::Backend>(
    x: FloatTensor<B>,
    weight: FloatTensor<B>,
    eps: f64,
) -> FloatTensor<B> {
    let weight = broadcast_weight::<B>(weight, &x);
    B::float_mul(normalized_by_ops::<B>(x, eps).0, weight)
}

/// With `y = x / rms`: `grad_x = (grad · weight − y · mean(grad · weight · y)) / rms` and
/// `grad_weight = Σ over rows of grad · y`.
fn rms_norm_backward_by_ops<B: burn::backend::Backend>(
    x: FloatTensor<B>,
    weight: FloatTensor<B>,
    eps: f64,
    grad: FloatTensor<B>,
) -> (FloatTensor<B>, FloatTensor<B>) {
    let shape = weight.shape();
    let dims = x.shape().num_dims();
    let (y, rms) = normalized_by_ops::<B>(x, eps);
    let grad_y = B::float_mul(grad.clone(), broadcast_weight::<B>(weight, &y));
    let along = B::float_mean_dim(B::float_mul(grad_y.clone(), y.clone()), dims - 1);
    let grad_x = B::float_div(B::float_sub(grad_y, B::float_mul(y.clone(), along)), rms);
    let mut grad_weight = B::float_mul(grad, y);
    for dim in 0..dims - 1 {
        grad_weight = B::float_sum_dim(grad_weight, dim);
    }
    (grad_x, B::float_reshape(grad_weight, shape))
}

#[cfg(any(feature = "wgpu", target_family = "wasm"))]
impl RmsNormOp for burn::backend::Cube {}

#[cfg(any(feature = "flex", test, target_family = "wasm"))]
impl RmsNormOp for burn::backend::Flex {
    fn rms_norm(x: FloatTensor<Self>, weight: FloatTensor<Self>, eps: f64) -> FloatTensor<Self> {
        use super::cpu_kernels;
        let (x, weight) = (x.to_contiguous(), weight.to_contiguous());
        match (cpu_kernels::values(&x), cpu_kernels::values(&weight)) {
            (Some(values), Some(w)) if !w.is_empty() && values.len() % w.len() == 0 => {
                let mut out = vec![0.0f32; values.len()];
                cpu_kernels::rms_norm(values, w, eps as f32, &mut out);
                cpu_kernels::tensor(out, x.shape())
            }
            _ => rms_norm_by_ops::<Self>(x, weight, eps),
        }
    }

    fn rms_norm_backward(
        x: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        eps: f64,
        grad: FloatTensor<Self>,
    ) -> (FloatTensor<Self>, FloatTensor<Self>) {
        use super::cpu_kernels;
        let (x, weight, grad) = (
            x.to_contiguous(),
            weight.to_contiguous(),
            grad.to_contiguous(),
        );
        match (
            cpu_kernels::values(&x),
            cpu_kernels::values(&weight),
            cpu_kernels::values(&grad),
        ) {
            (Some(values), Some(w), Some(g))
                if !w.is_empty() && values.len() % w.len() == 0 && g.len() == values.len() =>
            {
                let (mut grad_x, mut grad_weight) =
                    (vec![0.0f32; values.len()], vec![0.0; w.len()]);
                cpu_kernels::rms_norm_backward(
                    values,
                    w,
                    eps as f32,
                    g,
                    &mut grad_x,
                    &mut grad_weight,
                );
                (
                    cpu_kernels::tensor(grad_x, x.shape()),
                    cpu_kernels::tensor(grad_weight, weight.shape()),
                )
            }
            _ => rms_norm_backward_by_ops::<Self>(x, weight, eps, grad),
        }
    }
}

impl<B: RmsNormOp, C: CheckpointStrategy> RmsNormOp for Autodiff<B, C> {
    fn rms_norm(x: FloatTensor<Self>, weight: FloatTensor<Self>, eps: f64) -> FloatTensor<Self> {
        /// State: x, the weight, and eps.
        #[derive(Debug)]
        struct Norm;

        impl<B: RmsNormOp> Backward<B, 2> for Norm {
            type State = (NodeId, NodeId, f64);

            fn backward(
                self,
                ops: Ops<Self::State, 2>,
                grads: &mut Gradients,
                checkpointer: &mut Checkpointer,
            ) {
                let (x, weight, eps) = ops.state;
                let x: FloatTensor<B> = checkpointer.retrieve_node_output(x);
                let weight: FloatTensor<B> = checkpointer.retrieve_node_output(weight);
                let grad = grads.consume::<B>(&ops.node);
                let (grad_x, grad_weight) = B::rms_norm_backward(x, weight, eps, grad);
                let [x_node, weight_node] = ops.parents;
                if let Some(node) = x_node {
                    grads.register::<B>(node.id, grad_x);
                }
                if let Some(node) = weight_node {
                    grads.register::<B>(node.id, grad_weight);
                }
            }
        }

        match Norm
            .prepare::<C>([x.node(), weight.node()])
            .compute_bound()
            .stateful()
        {
            OpsKind::Tracked(mut prep) => {
                let state = (prep.checkpoint(&x), prep.checkpoint(&weight), eps);
                let out = B::rms_norm(x.into_primitive(), weight.into_primitive(), eps);
                prep.finish(state, out)
            }
            OpsKind::UnTracked(prep) => prep.finish(B::rms_norm(
                x.into_primitive(),
                weight.into_primitive(),
                eps,
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::tensor::{Device, Distribution, Tolerance};

    /// The model's RMSNorm before this operation, in burn's tensor operations.
    fn burns(x: Tensor<3>, weight: Tensor<1>, eps: f64) -> Tensor<3> {
        let rms = x.clone().powi_scalar(2).mean_dim(2).add_scalar(eps).sqrt();
        x.div(rms).mul(weight.unsqueeze())
    }

    /// Values and both gradients equal burn's, on the CPU kernels (autodiff over Flex) and by
    /// the operations every other backend runs; rows span several of the kernels' tasks.
    #[test]
    fn rms_norm_and_its_gradients_equal_burns() {
        let device = Device::flex().autodiff();
        let (eps, width) = (1e-5, 576);
        let x = Tensor::<3>::random([3, 50, width], Distribution::Normal(0.0, 2.0), &device)
            .require_grad();
        let weight =
            Tensor::<1>::random([width], Distribution::Normal(1.0, 0.3), &device).require_grad();
        let probe = Tensor::<3>::random([3, 50, width], Distribution::Default, &device);
        let expected = burns(x.clone(), weight.clone(), eps);
        let ours = rms_norm(x.clone(), weight.clone(), eps);
        let by_ops = Tensor::<3>::from_dispatch(rms_norm_by_ops::<Dispatch>(
            x.clone().into_dispatch(),
            weight.clone().into_dispatch(),
            eps,
        ));
        let tolerance = Tolerance::rel_abs(1e-5, 1e-5);
        for t in [&ours, &by_ops] {
            t.clone()
                .into_data()
                .assert_approx_eq::<f32>(&expected.clone().into_data(), tolerance);
        }
        let expected = (expected * probe.clone()).sum().backward();
        let got = (ours * probe.clone()).sum().backward();
        let (dx, dw) = rms_norm_backward_by_ops::<Dispatch>(
            x.clone().detach().into_dispatch(),
            weight.clone().detach().into_dispatch(),
            eps,
            probe.into_dispatch(),
        );
        let check = |got: burn::tensor::TensorData, expected: &burn::tensor::TensorData| {
            got.assert_approx_eq::<f32>(expected, Tolerance::rel_abs(1e-4, 1e-4));
        };
        let (x_expected, w_expected) = (
            x.grad(&expected).expect("x's gradient").into_data(),
            weight
                .grad(&expected)
                .expect("the weight's gradient")
                .into_data(),
        );
        check(x.grad(&got).expect("x's gradient").into_data(), &x_expected);
        check(Tensor::<3>::from_dispatch(dx).into_data(), &x_expected);
        check(
            weight
                .grad(&got)
                .expect("the weight's gradient")
                .into_data(),
            &w_expected,
        );
        check(Tensor::<1>::from_dispatch(dw).into_data(), &w_expected);
    }

    /// A frozen weight (LoRA training) gets no gradient, and x still gets burn's.
    #[test]
    fn a_frozen_weight_gets_no_gradient() {
        let device = Device::flex().autodiff();
        let x = Tensor::<3>::random([2, 3, 8], Distribution::Default, &device).require_grad();
        let weight = Tensor::<1>::random([8], Distribution::Default, &device);
        let grads = rms_norm(x.clone(), weight.clone(), 1e-6).sum().backward();
        assert!(weight.grad(&grads).is_none());
        let expected = burns(x.clone(), weight, 1e-6).sum().backward();
        x.grad(&grads)
            .expect("x's gradient")
            .into_data()
            .assert_approx_eq::<f32>(
                &x.grad(&expected).expect("x's gradient").into_data(),
                Tolerance::rel_abs(1e-4, 1e-5),
            );
    }
}
