//! Softmax cross-entropy of one chunk of the vocabulary head's logits, with its gradient:
//! what [`super::Llama::head_loss`] computes for each chunk of rows.
//!
//! As burn's operations it is six passes over the chunk (max, subtract, exp, sum, divide,
//! scatter), each allocating a logits-sized tensor, and on the CPU backend each on one thread.
//! There it is one kernel instead (`model::cpu_kernels`), in place in the logits' values read
//! out once.

use burn::tensor::{DType, IndexingUpdateOp, Int, Tensor, TensorData};

/// Per row of `logits [rows, vocab]`: `−log p(target)` (`[rows]`) and the gradient of that
/// loss with respect to the row, `softmax − one-hot(target)` (`[rows, vocab]`). Not tracked
/// by autodiff (the head is frozen; the caller feeds the gradient back by hand).
pub fn softmax_cross_entropy(logits: Tensor<2>, targets: Tensor<1, Int>) -> (Tensor<1>, Tensor<2>) {
    let (logits, targets) = (logits.inner(), targets.inner());
    match kernel_targets(&logits, &targets) {
        Some(ids) => by_kernel(logits, &ids),
        None => by_ops(logits, targets),
    }
}

/// burn's operations.
fn by_ops(logits: Tensor<2>, targets: Tensor<1, Int>) -> (Tensor<1>, Tensor<2>) {
    let [rows, _] = logits.dims();
    let device = logits.device();
    let target = targets.reshape([rows, 1]);
    let max = logits.clone().max_dim(1);
    let exp = (logits.clone() - max.clone()).exp();
    let total = exp.clone().sum_dim(1);
    let log_z = max + total.clone().log();
    let nll = (log_z - logits.gather(1, target.clone())).reshape([rows]);
    let grad = (exp / total).scatter(
        1,
        target,
        Tensor::full([rows, 1], -1.0, &device),
        IndexingUpdateOp::Add,
    );
    (nll, grad)
}

/// The targets as indices where the CPU kernel takes the chunk: f32 logits on the CPU backend
/// and every target inside the vocabulary (otherwise burn's operations say what is wrong).
fn kernel_targets(logits: &Tensor<2>, targets: &Tensor<1, Int>) -> Option<Vec<usize>> {
    let vocab = logits.dims()[1] as i64;
    if !super::frozen::on_cpu(&logits.device()) || logits.dtype() != DType::F32 {
        return None;
    }
    let ids = targets
        .to_data()
        .convert::<i64>()
        .try_into_vec::<i64>()
        .ok()?;
    ids.into_iter()
        .map(|t| (0..vocab).contains(&t).then_some(t as usize))
        .collect()
}

/// The CPU kernel, in place in the logits' values (read out of the tensor: burn copies them).
fn by_kernel(logits: Tensor<2>, targets: &[usize]) -> (Tensor<1>, Tensor<2>) {
    let [rows, vocab] = logits.dims();
    let device = logits.device();
    let mut values = logits
        .into_data()
        .try_into_vec::<f32>()
        .expect("f32 logits read back as f32");
    let mut nll = vec![0.0f32; rows];
    super::cpu_kernels::softmax_cross_entropy(&mut values, vocab, targets, &mut nll);
    (
        Tensor::from_data(TensorData::new(nll, [rows]), &device),
        Tensor::from_data(TensorData::new(values, [rows, vocab]), &device),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::tensor::{Device, Distribution, Tolerance};

    #[test]
    fn the_cpu_kernel_equals_burns_operations() {
        let device = Device::flex();
        let (rows, vocab) = (7, 5003);
        let logits = Tensor::<2>::random([rows, vocab], Distribution::Normal(0.0, 4.0), &device);
        let targets = Tensor::<1, Int>::from_data(
            TensorData::new(
                (0..rows as i64).map(|r| r * 997 % vocab as i64).collect(),
                [rows],
            ),
            &device,
        );
        let (nll, grad) = softmax_cross_entropy(logits.clone(), targets.clone());
        let (nll_ops, grad_ops) = by_ops(logits, targets.clone());
        nll.into_data()
            .assert_approx_eq::<f32>(&nll_ops.into_data(), Tolerance::absolute(1e-5));
        grad.into_data()
            .assert_approx_eq::<f32>(&grad_ops.into_data(), Tolerance::rel_abs(1e-5, 1e-6));
    }

    #[test]
    fn a_target_outside_the_vocabulary_is_left_to_burns_operations() {
        let device = Device::flex();
        let logits = Tensor::<2>::zeros([2, 4], &device);
        let targets = Tensor::<1, Int>::from_data(TensorData::new(vec![1i64, 9], [2]), &device);
        assert_eq!(kernel_targets(&logits, &targets), None);
    }
}
