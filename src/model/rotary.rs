//! Rotary position embeddings (HF's half-split layout), `x·cos + rotate_half(x)·sin`, as one
//! operation.
//!
//! As burn's operations it is six passes over the queries and keys (two halves, a negation, a
//! concatenation, two products and a sum) after the heads are swapped with the positions, and
//! its backward pass as many again. [`rotary`] is one pass that reads the swapped heads where
//! they lie; its backward pass is the transpose of the same linear map, and keeps nothing but
//! the angle tables (the model holds them anyway). On the CPU backend both run on every core
//! (`model::cpu_kernels`).

use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::CheckpointStrategy;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
use burn::backend::tensor::FloatTensor;
use burn::backend::{Autodiff, Dispatch, TensorMetadata, backend_extension};
use burn::tensor::{Shape, Slice, Tensor};

/// `x [batch, heads, len, head_dim]` rotated by the angles `cos`, `sin` `[1 or batch, 1, len,
/// head_dim]`: the first half of each row becomes `x₁·cos − x₂·sin`, the second `x₂·cos +
/// x₁·sin`.
pub fn rotary(x: Tensor<4>, cos: Tensor<4>, sin: Tensor<4>) -> Tensor<4> {
    Tensor::from_dispatch(Dispatch::rotary(
        x.into_dispatch(),
        cos.into_dispatch(),
        sin.into_dispatch(),
    ))
}

/// The operation behind [`rotary`]: burn's operations by default, one kernel on the CPU
/// backend, and under autodiff one node whose backward pass is [`Rotary::rotary_transposed`].
#[backend_extension(
    Autodiff,
    Cube: cfg(any(feature = "wgpu", target_family = "wasm")),
    Flex: cfg(any(feature = "flex", test, target_family = "wasm")),
)]
pub trait Rotary: burn::backend::Backend {
    fn rotary(
        x: FloatTensor<Self>,
        cos: FloatTensor<Self>,
        sin: FloatTensor<Self>,
    ) -> FloatTensor<Self> {
        rotary_by_ops::<Self>(x, cos, sin, false)
    }

    /// The transpose of the rotation (the gradient of `x` from the output's gradient):
    /// `g₁·cos + g₂·sin` and `g₂·cos − g₁·sin`.
    fn rotary_transposed(
        grad: FloatTensor<Self>,
        cos: FloatTensor<Self>,
        sin: FloatTensor<Self>,
    ) -> FloatTensor<Self> {
        rotary_by_ops::<Self>(grad, cos, sin, true)
    }
}

/// HF's `x·cos + rotate_half(x)·sin` with `rotate_half(x) = [−x₂, x₁]`; `transposed`:
/// `x·cos + rotate_halfᵀ(x·sin)` with `rotate_halfᵀ(y) = [y₂, −y₁]`.
fn rotary_by_ops<B: burn::backend::Backend>(
    x: FloatTensor<B>,
    cos: FloatTensor<B>,
    sin: FloatTensor<B>,
    transposed: bool,
) -> FloatTensor<B> {
    let dims = x.shape().dims::<4>();
    let d = dims[3];
    // `t[.., start..start + d/2]`
    let half = |t: &FloatTensor<B>, start: usize| {
        let mut slices = dims.map(|n| Slice::new(0, Some(n as isize), 1));
        slices[3] = Slice::new(start as isize, Some((start + d / 2) as isize), 1);
        B::float_slice(t.clone(), &slices)
    };
    let rotated = if transposed {
        let y = B::float_mul(x.clone(), sin);
        B::float_cat(vec![half(&y, d / 2), B::float_neg(half(&y, 0))], 3)
    } else {
        let rotated = B::float_cat(vec![B::float_neg(half(&x, d / 2)), half(&x, 0)], 3);
        B::float_mul(rotated, sin)
    };
    B::float_add(B::float_mul(x, cos), rotated)
}

#[cfg(any(feature = "wgpu", target_family = "wasm"))]
impl Rotary for burn::backend::Cube {}

#[cfg(any(feature = "flex", test, target_family = "wasm"))]
impl Rotary for burn::backend::Flex {
    fn rotary(
        x: FloatTensor<Self>,
        cos: FloatTensor<Self>,
        sin: FloatTensor<Self>,
    ) -> FloatTensor<Self> {
        rotary_on_cpu(x, cos, sin, false)
    }

    fn rotary_transposed(
        grad: FloatTensor<Self>,
        cos: FloatTensor<Self>,
        sin: FloatTensor<Self>,
    ) -> FloatTensor<Self> {
        rotary_on_cpu(grad, cos, sin, true)
    }
}

/// The rotation (or its transpose) by the CPU kernel, reading `x` in its strides (the heads
/// swapped with the positions, as attention hands them over); burn's operations for operands
/// the kernel does not take.
#[cfg(any(feature = "flex", test, target_family = "wasm"))]
fn rotary_on_cpu(
    x: super::cpu_kernels::CpuTensor,
    cos: super::cpu_kernels::CpuTensor,
    sin: super::cpu_kernels::CpuTensor,
    transposed: bool,
) -> super::cpu_kernels::CpuTensor {
    use super::cpu_kernels;
    let (cos, sin) = (cos.to_contiguous(), sin.to_contiguous());
    let [b, h, t, d] = x.shape().dims::<4>();
    let table_rows = cos.shape().dims::<4>()[0];
    let tables_fit = cos.shape() == sin.shape()
        && cos.shape().dims::<4>()[1..] == [1, t, d]
        && (table_rows == 1 || table_rows == b)
        && d > 0
        && d % 2 == 0;
    let x = match strided_rows(&x) {
        Some(_) => x,
        None => x.to_contiguous(),
    };
    match (
        strided_rows(&x),
        cpu_kernels::values(&cos),
        cpu_kernels::values(&sin),
    ) {
        (Some((values, [sb, sh, st])), Some(c), Some(s)) if tables_fit => {
            let mut out = vec![0.0f32; b * h * t * d];
            let input_row = |row: usize| {
                let (bi, hi, ti) = (row / (h * t), row / t % h, row % t);
                bi * sb + hi * sh + ti * st
            };
            let angle_row = |row: usize| {
                let bi = if table_rows == 1 { 0 } else { row / (h * t) };
                bi * t + row % t
            };
            cpu_kernels::rotary(values, input_row, c, s, angle_row, transposed, d, &mut out);
            cpu_kernels::tensor(out, Shape::new([b, h, t, d]))
        }
        _ => rotary_by_ops::<burn::backend::Flex>(x, cos, sin, transposed),
    }
}

/// A 4-D f32 tensor whose rows (last dimension) are contiguous, as its storage from the first
/// element and the strides of the other three dimensions, when every row lies in that storage.
#[cfg(any(feature = "flex", test, target_family = "wasm"))]
fn strided_rows(x: &super::cpu_kernels::CpuTensor) -> Option<(&[f32], [usize; 3])> {
    let layout = x.layout();
    if x.dtype() != burn::tensor::DType::F32 || layout.num_dims() != 4 {
        return None;
    }
    let dims = layout.shape().dims::<4>();
    let s = layout.strides();
    if s[3] != 1 && dims[3] > 1 {
        return None;
    }
    let strides = [
        usize::try_from(s[0]).ok()?,
        usize::try_from(s[1]).ok()?,
        usize::try_from(s[2]).ok()?,
    ];
    let data = x.storage::<f32>().get(layout.start_offset()..)?;
    if dims.contains(&0) {
        return Some((data, strides));
    }
    let last_row = (0..3)
        .map(|i| (dims[i] - 1).checked_mul(strides[i]))
        .try_fold(0usize, |sum, reach| sum.checked_add(reach?))?;
    (last_row.checked_add(dims[3])? <= data.len()).then_some((data, strides))
}

impl<B: Rotary, C: CheckpointStrategy> Rotary for Autodiff<B, C> {
    fn rotary(
        x: FloatTensor<Self>,
        cos: FloatTensor<Self>,
        sin: FloatTensor<Self>,
    ) -> FloatTensor<Self> {
        /// State: the angle tables (constants, not tracked).
        #[derive(Debug)]
        struct Rotate;

        impl<B: Rotary> Backward<B, 1> for Rotate {
            type State = (FloatTensor<B>, FloatTensor<B>);

            fn backward(
                self,
                ops: Ops<Self::State, 1>,
                grads: &mut Gradients,
                _checkpointer: &mut Checkpointer,
            ) {
                let (cos, sin) = ops.state;
                let grad = grads.consume::<B>(&ops.node);
                let [x_node] = ops.parents;
                if let Some(node) = x_node {
                    grads.register::<B>(node.id, B::rotary_transposed(grad, cos, sin));
                }
            }
        }

        let (cos, sin) = (cos.into_primitive(), sin.into_primitive());
        match Rotate.prepare::<C>([x.node()]).compute_bound().stateful() {
            OpsKind::Tracked(prep) => {
                let out = B::rotary(x.into_primitive(), cos.clone(), sin.clone());
                prep.finish((cos, sin), out)
            }
            OpsKind::UnTracked(prep) => prep.finish(B::rotary(x.into_primitive(), cos, sin)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::tensor::{Device, Distribution, Tolerance};

    /// The model's rotation before this operation, in burn's tensor operations.
    fn burns(x: Tensor<4>, cos: Tensor<4>, sin: Tensor<4>) -> Tensor<4> {
        let [_, _, _, d] = x.dims();
        let x1 = x.clone().narrow(3, 0, d / 2);
        let x2 = x.clone().narrow(3, d / 2, d / 2);
        let rotated = Tensor::cat(vec![x2.neg(), x1], 3);
        x.mul(cos) + rotated.mul(sin)
    }

    /// Values and the gradient equal burn's for heads swapped with positions (as attention
    /// hands them over), with tables shared by the batch and one per row, and with halves of
    /// the tables that differ (so the transpose is checked, not just a sign).
    #[test]
    fn rotary_and_its_gradient_equal_burns() {
        let device = Device::flex().autodiff();
        let (b, h, t, d) = (3, 4, 37, 64);
        for table_rows in [1, b] {
            let projected =
                Tensor::<4>::random([b, t, h, d], Distribution::Default, &device).require_grad();
            // Each forward pass its own swap: burn's backward pass consumes the graph it walks.
            let x = || projected.clone().swap_dims(1, 2);
            let table =
                || Tensor::<4>::random([table_rows, 1, t, d], Distribution::Default, &device);
            let (cos, sin) = (table(), table());
            let probe = Tensor::<4>::random([b, h, t, d], Distribution::Default, &device);
            let expected = burns(x(), cos.clone(), sin.clone());
            let ours = rotary(x(), cos.clone(), sin.clone());
            let by_ops = Tensor::<4>::from_dispatch(rotary_by_ops::<Dispatch>(
                x().detach().into_dispatch(),
                cos.clone().into_dispatch(),
                sin.clone().into_dispatch(),
                false,
            ));
            let tolerance = Tolerance::rel_abs(1e-6, 1e-6);
            for t in [&ours, &by_ops] {
                t.clone()
                    .into_data()
                    .assert_approx_eq::<f32>(&expected.clone().into_data(), tolerance);
            }
            let expected = (expected * probe.clone()).sum().backward();
            let got = (ours * probe.clone()).sum().backward();
            let expected = projected.grad(&expected).expect("gradient").into_data();
            projected
                .grad(&got)
                .expect("gradient")
                .into_data()
                .assert_approx_eq::<f32>(&expected, tolerance);
            let by_ops = Tensor::<4>::from_dispatch(rotary_by_ops::<Dispatch>(
                probe.into_dispatch(),
                cos.into_dispatch(),
                sin.into_dispatch(),
                true,
            ));
            by_ops
                .swap_dims(1, 2)
                .into_data()
                .assert_approx_eq::<f32>(&expected, tolerance);
        }
    }
}
