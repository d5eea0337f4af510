//! Frozen weights stored in f16 on the device, computed with in f32: half the memory of the
//! weights nobody trains (an emulator's kept and harmonizer layers, its embedding and head), and
//! the one weight product ([`weight_matmul`]) that reads them as stored.
//!
//! A plain `x.matmul(w.cast(F32))` would not save memory while training: autodiff keeps the
//! f32 copy of every frozen weight until the backward pass needs it for the gradient of `x`.
//! [`weight_matmul`] is one operation instead, whose backward reads the f16 weight again, so an
//! f32 copy lives at most for the duration of one product. Emulator bundles already store frozen
//! weights in f16, so keeping them narrow on the device changes no result. On a wgpu device the
//! same operation carries trainable weights too (our WGSL product, `model::wgsl_matmul`).

use burn::backend::autodiff::NodeId;
use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::CheckpointStrategy;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind, binary};
use burn::backend::tensor::FloatTensor;
use burn::backend::{Autodiff, Dispatch, backend_extension};
use burn::tensor::{DType, Device, FloatDType, Tensor};

/// The storage type of frozen weights on a device.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FrozenStorage {
    F32,
    F16,
}

impl FrozenStorage {
    /// For a GPU device: f16 where it computes with it (WebGPU's `shader-f16`), else f32. The
    /// CPU backend keeps f32: widening on every product there costs more time than the memory
    /// is worth (docs/results.md).
    pub fn for_gpu(device: &Device) -> Self {
        if device.supports_dtype(FloatDType::F16) {
            Self::F16
        } else {
            Self::F32
        }
    }

    pub fn dtype(self) -> DType {
        match self {
            Self::F32 => DType::F32,
            Self::F16 => DType::F16,
        }
    }
}

/// Whether `t` is a narrowed frozen weight (anything but f32).
pub fn is_narrow<const D: usize>(t: &Tensor<D>) -> bool {
    t.dtype() != DType::F32
}

/// A frozen weight in f32 (for reading it back or using it outside a product).
pub fn widened<const D: usize>(t: Tensor<D>) -> Tensor<D> {
    if is_narrow(&t) {
        t.cast(FloatDType::F32)
    } else {
        t
    }
}

/// Elements of a frozen weight widened at once: a wide copy stays within 64 MiB (the
/// vocabulary head of a 1B model is 250 MiB in f32, more than some GPUs allow in one buffer).
pub const WIDE_CHUNK_ELEMENTS: usize = 16 << 20;

/// `x [rows, in]` (f32) times the weight `w [in, out]` (f16, or any float type), in f32, with
/// the gradients of both where they are tracked. On a wgpu device our WGSL product reads `w` as
/// stored; elsewhere a narrow `w` is widened a block of columns at a time (at most
/// [`WIDE_CHUNK_ELEMENTS`]).
pub fn weight_matmul(x: Tensor<2>, w: Tensor<2>) -> Tensor<2> {
    let [inp, out] = w.dims();
    let cols = (WIDE_CHUNK_ELEMENTS / inp.max(1)).max(1);
    let one = |x: Tensor<2>, w: Tensor<2>| {
        Tensor::from_dispatch(Dispatch::weight_matmul(
            x.into_dispatch(),
            w.into_dispatch(),
        ))
    };
    if cols >= out || !is_narrow(&w) || on_wgpu(&w.device()) {
        return one(x, w);
    }
    let blocks = (0..out).step_by(cols).map(|start| {
        let width = cols.min(out - start);
        one(x.clone(), w.clone().narrow(1, start, width))
    });
    Tensor::cat(blocks.collect(), 1)
}

/// `x · w`, through [`weight_matmul`] where [`through_weight_matmul`] says so.
pub fn product(x: Tensor<2>, w: Tensor<2>) -> Tensor<2> {
    if through_weight_matmul(&w) {
        weight_matmul(x, w)
    } else {
        x.matmul(w)
    }
}

/// Whether products with `w` go through [`weight_matmul`]: a narrow weight (to be widened), or
/// any weight on a wgpu device (our WGSL product, `model::wgsl_matmul`) or on the CPU (gemm
/// into a buffer of our own, `model::cpu_kernels::product`).
pub fn through_weight_matmul<const D: usize>(w: &Tensor<D>) -> bool {
    let device = w.device();
    is_narrow(w) || on_wgpu(&device) || on_cpu(&device)
}

/// Whether `device` (or the one an autodiff device wraps) is burn's CPU backend, where the
/// kernels of `model::cpu_kernels` run.
pub fn on_cpu(device: &Device) -> bool {
    #[cfg(any(feature = "flex", test, target_family = "wasm"))]
    {
        matches!(
            device.as_dispatch().clone().inner(),
            burn::backend::DispatchDevice::Flex(_)
        )
    }
    #[cfg(not(any(feature = "flex", test, target_family = "wasm")))]
    {
        let _ = device;
        false
    }
}

/// Whether `device` (or the one an autodiff device wraps) is a wgpu device that runs our WGSL.
fn on_wgpu(device: &Device) -> bool {
    #[cfg(any(feature = "wgpu", target_family = "wasm"))]
    {
        super::wgsl_matmul::enabled()
            && matches!(
                device.as_dispatch().clone().inner(),
                burn::backend::DispatchDevice::Cube(burn_cubecl::CubeDevice::Wgpu(_))
            )
    }
    #[cfg(not(any(feature = "wgpu", target_family = "wasm")))]
    {
        let _ = device;
        false
    }
}

/// The operation behind [`weight_matmul`] on each backend: widen, then multiply. The autodiff
/// backend adds a backward pass made of the same operation, which keeps `w` as stored rather
/// than a wide copy.
#[backend_extension(
    Autodiff,
    Cube: cfg(any(feature = "wgpu", target_family = "wasm")),
    Flex: cfg(any(feature = "flex", test, target_family = "wasm")),
)]
pub trait WeightMatmul: burn::backend::Backend {
    fn weight_matmul(x: FloatTensor<Self>, w: FloatTensor<Self>) -> FloatTensor<Self> {
        widen_then_multiply::<Self>(x, w)
    }
}

/// burn's product of `x` and `w` widened to f32.
fn widen_then_multiply<B: burn::backend::Backend>(
    x: FloatTensor<B>,
    w: FloatTensor<B>,
) -> FloatTensor<B> {
    B::float_matmul(x, B::float_cast(w, FloatDType::F32))
}

/// Our WGSL product where it covers the operands, burn's otherwise.
#[cfg(any(feature = "wgpu", target_family = "wasm"))]
impl WeightMatmul for burn::backend::Cube {
    fn weight_matmul(x: FloatTensor<Self>, w: FloatTensor<Self>) -> FloatTensor<Self> {
        super::wgsl_matmul::matmul(x, w).unwrap_or_else(|(x, w)| widen_then_multiply::<Self>(x, w))
    }
}

/// Widened where narrow, then gemm into a buffer of our own (burn's product where that does
/// not take the operands).
#[cfg(any(feature = "flex", test, target_family = "wasm"))]
impl WeightMatmul for burn::backend::Flex {
    fn weight_matmul(x: FloatTensor<Self>, w: FloatTensor<Self>) -> FloatTensor<Self> {
        use burn::backend::ops::FloatTensorOps;
        let w = if w.dtype() == DType::F32 {
            w
        } else {
            Self::float_cast(w, FloatDType::F32)
        };
        match super::cpu_kernels::product(&x, &w) {
            Some(out) => out,
            None => Self::float_matmul(x, w),
        }
    }
}

impl<B: WeightMatmul, C: CheckpointStrategy> WeightMatmul for Autodiff<B, C> {
    fn weight_matmul(x: FloatTensor<Self>, w: FloatTensor<Self>) -> FloatTensor<Self> {
        /// State: `x` when `w` needs a gradient, `w` when `x` does (a weight is resident
        /// anyway, so keeping it costs nothing).
        #[derive(Debug)]
        struct Product;

        impl<B: WeightMatmul> Backward<B, 2> for Product {
            type State = (Option<NodeId>, Option<NodeId>);

            fn backward(
                self,
                ops: Ops<Self::State, 2>,
                grads: &mut Gradients,
                checkpointer: &mut Checkpointer,
            ) {
                let (x, w) = ops.state;
                let x = x.map(|x| checkpointer.retrieve_node_output::<FloatTensor<B>>(x));
                let w = w.map(|w| checkpointer.retrieve_node_output::<FloatTensor<B>>(w));
                binary::<B, _, _>(
                    ops.parents,
                    ops.node,
                    grads,
                    |grad| B::weight_matmul(grad, B::float_transpose(w.expect("w kept"))),
                    |grad| B::weight_matmul(B::float_transpose(x.expect("x kept")), grad),
                );
            }
        }

        let (x_tracked, w_tracked) = (x.is_tracked(), w.is_tracked());
        match Product
            .prepare::<C>([x.node(), w.node()])
            .compute_bound()
            .stateful()
        {
            OpsKind::Tracked(mut prep) => {
                let x_state = w_tracked.then(|| prep.checkpoint(&x));
                let w_state = x_tracked.then(|| prep.checkpoint(&w));
                prep.finish(
                    (x_state, w_state),
                    B::weight_matmul(x.into_primitive(), w.into_primitive()),
                )
            }
            OpsKind::UnTracked(prep) => {
                prep.finish(B::weight_matmul(x.into_primitive(), w.into_primitive()))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::tensor::{Distribution, Tolerance};

    /// A weight whose values f16 holds exactly, as in an emulator bundle.
    fn f16_exact(shape: [usize; 2], device: &Device) -> Tensor<2> {
        Tensor::<2>::random(shape, Distribution::Normal(0.0, 0.05), device)
            .cast(FloatDType::F16)
            .cast(FloatDType::F32)
    }

    /// `weight_matmul` over an f16 copy of a `[inp, out]` weight against the f32 product: the
    /// output and the gradient of `x` (through a random projection of the output) agree.
    fn check_against_f32(rows: usize, inp: usize, out: usize, tol: f32) {
        let device = Device::flex().autodiff();
        let w = f16_exact([inp, out], &device);
        let x = Tensor::<2>::random([rows, inp], Distribution::Default, &device).require_grad();
        let probe = Tensor::<2>::random([rows, out], Distribution::Default, &device);
        let run = |product: &dyn Fn(Tensor<2>) -> Tensor<2>| {
            let x = x.clone().detach().require_grad();
            let y = product(x.clone());
            let mut grads = (y.clone() * probe.clone()).sum().backward();
            (y, x.grad_remove(&mut grads).expect("x's gradient"))
        };
        let (wide, wide_grad) = run(&|x| x.matmul(w.clone()));
        let (narrow, narrow_grad) = run(&|x| weight_matmul(x, w.clone().cast(FloatDType::F16)));
        let tol = Tolerance::<f32>::absolute(tol);
        narrow
            .into_data()
            .assert_approx_eq::<f32>(&wide.into_data(), tol);
        narrow_grad
            .into_data()
            .assert_approx_eq::<f32>(&wide_grad.into_data(), tol);
    }

    #[test]
    fn weight_matmul_equals_the_f32_product_and_its_input_gradient() {
        check_against_f32(6, 24, 40, 1e-5);
    }

    #[test]
    fn a_weight_wider_than_a_chunk_is_widened_in_column_blocks() {
        // Three blocks: two whole, one partial.
        let inp = 64;
        check_against_f32(2, inp, 2 * (WIDE_CHUNK_ELEMENTS / inp) + 5, 1e-3);
    }

    #[test]
    fn a_trainable_weight_gets_the_gradient_of_the_plain_product() {
        let device = Device::flex().autodiff();
        let w = Tensor::<2>::random([24, 40], Distribution::Default, &device);
        let x = Tensor::<2>::random([6, 24], Distribution::Default, &device);
        let probe = Tensor::<2>::random([6, 40], Distribution::Default, &device);
        let run = |product: &dyn Fn(Tensor<2>, Tensor<2>) -> Tensor<2>| {
            let (x, w) = (x.clone().require_grad(), w.clone().require_grad());
            let y = product(x.clone(), w.clone());
            let mut grads = (y * probe.clone()).sum().backward();
            let x_grad = x.grad_remove(&mut grads).expect("x's gradient");
            (x_grad, w.grad_remove(&mut grads).expect("w's gradient"))
        };
        let (x_plain, w_plain) = run(&|x, w| x.matmul(w));
        let (x_ours, w_ours) = run(&weight_matmul);
        let tol = Tolerance::<f32>::absolute(1e-5);
        x_ours
            .into_data()
            .assert_approx_eq::<f32>(&x_plain.into_data(), tol);
        w_ours
            .into_data()
            .assert_approx_eq::<f32>(&w_plain.into_data(), tol);
    }

    #[test]
    fn a_narrow_weight_reads_back_as_its_f32_values() {
        let device = Device::flex();
        let w = f16_exact([3, 5], &device);
        let back = widened(w.clone().cast(FloatDType::F16));
        assert_eq!(back.dtype(), DType::F32);
        back.into_data().assert_eq(&w.into_data(), true);
    }
}
