//! Reading device tensors back to the host without blocking: the only way on WebGPU, and what
//! the training session and its replicas use everywhere (native code blocks on the futures).
//! The blocking twins for native-only code are [`crate::model::read_vec`] and its kin.

use burn::tensor::Tensor;

use crate::error::{Error, Result};
use crate::weights::HostTensor;

/// Reads named device tensors back to the host, asynchronously (the twin of
/// [`crate::model::read_named`], which blocks).
pub async fn read_named(
    tensors: Vec<(String, Vec<usize>, Tensor<1>)>,
) -> Result<Vec<(String, HostTensor)>> {
    let mut out = Vec::with_capacity(tensors.len());
    for (name, shape, t) in tensors {
        out.push((
            name,
            HostTensor {
                shape,
                data: read_vec(t).await?,
            },
        ));
    }
    Ok(out)
}

/// Reads a device tensor back to the host without blocking (the only way on WebGPU).
pub async fn read_vec<const D: usize>(t: Tensor<D>) -> Result<Vec<f32>> {
    crate::model::frozen::widened(t)
        .into_data_async()
        .await
        .map_err(|e| Error::Device(format!("{e:?}")))?
        .try_into_vec::<f32>()
        .map_err(|e| Error::Device(format!("{e:?}")))
}

/// Reads a one-element tensor (a loss) back without blocking.
pub async fn read_scalar(t: Tensor<1>) -> Result<f32> {
    read_vec(t)
        .await?
        .first()
        .copied()
        .ok_or_else(|| Error::Device("an empty loss tensor".into()))
}
