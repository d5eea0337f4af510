//! Kernels for the CPU backend: element-wise passes on plain slices, each one pass over memory
//! split over the cores (rayon, natively; one thread in wasm) with an exponential that the
//! compiler vectorises, and matrix products (with a weight, or a batch of attention's heads)
//! written straight into their own buffers.
//!
//! burn's CPU backend runs an element-wise operation on the calling thread, one operation at a
//! time, and its `exp` calls libm's scalar `expf`: in a training step those passes (SiLU and
//! its gradient, the vocabulary head's softmax, attention's, the norms, the rotary embeddings)
//! left the second core idle for a third of the step (docs/results.md, "Speed").
//! [`super::swiglu`], [`super::cross_entropy`], [`super::attention`], [`super::rms_norm`],
//! [`super::rotary`] and [`super::frozen::weight_matmul`] run these kernels on the CPU backend
//! and burn's operations elsewhere.

/// A tensor of burn's CPU backend (float and bool tensors are the same type there).
pub type CpuTensor = burn::backend::tensor::FloatTensor<burn::backend::Flex>;

/// The values of `t` when it is f32 and contiguous (callers make it so first).
pub fn values(t: &CpuTensor) -> Option<&[f32]> {
    t.as_slice::<f32>()
}

/// The values of `t`, writable in place, when it is f32, contiguous and held nowhere else.
pub fn values_mut(t: &mut CpuTensor) -> Option<&mut [f32]> {
    let (start, end) = t.layout().contiguous_offsets()?;
    if t.dtype() != burn::tensor::DType::F32 {
        return None;
    }
    t.try_storage_mut::<f32>()?.get_mut(start..end)
}

/// `t` contiguous, in its own storage when it already is (`to_contiguous` shares the storage of
/// a contiguous tensor, which [`values_mut`] then refuses while `t` lives).
pub fn into_contiguous(t: CpuTensor) -> CpuTensor {
    if t.layout().contiguous_offsets().is_some() {
        t
    } else {
        t.to_contiguous()
    }
}

/// A contiguous bool tensor's values, one byte each (nonzero: true).
pub fn bools(t: &CpuTensor) -> Option<&[u8]> {
    let (start, end) = t.layout().contiguous_offsets()?;
    if !matches!(t.dtype(), burn::tensor::DType::Bool(_)) {
        return None;
    }
    t.storage::<u8>().get(start..end)
}

/// A new CPU tensor of `shape` holding `values` (taken as they are: no copy).
pub fn tensor(values: Vec<f32>, shape: burn::tensor::Shape) -> CpuTensor {
    CpuTensor::from_data(burn::tensor::TensorData::new(values, shape))
}

/// `x · w` for f32 operands `x [.., m, k]` and `w [.., k, n]` with the same leading (batch)
/// dimensions, in any non-negative strides, as a new row-major `[.., m, n]` tensor; `None` for
/// other operands. gemm's product, as burn's CPU backend computes it, written straight into its
/// own buffer: burn's zeroes a buffer and then copies it into an aligned one before the
/// product, a pass over the output on the calling thread that was 40 % of that thread's time
/// in a training step. A batch (attention's heads) is shared out over the cores a matrix each.
pub fn product(x: &CpuTensor, w: &CpuTensor) -> Option<CpuTensor> {
    let (x, w) = (Operand::of(x)?, Operand::of(w)?);
    let (m, k, n) = (x.rows, x.cols, w.cols);
    if w.rows != k || x.batch != w.batch {
        return None;
    }
    let batch = x.offsets.len();
    let mut shape = x.batch.clone();
    shape.extend([m, n]);
    let size = m.checked_mul(n)?;
    let total = batch.checked_mul(size)?;
    if total == 0 || k == 0 {
        return Some(tensor(vec![0.0; total], shape.into()));
    }
    let parallel = parallel_product(batch.saturating_mul(m).saturating_mul(n), k);
    let mut out: Vec<f32> = Vec::with_capacity(total);
    let dst = Shared::capacity_of(&mut out);
    let one = |i: usize, parallelism: gemm::Parallelism| {
        // SAFETY: `Operand::of` checked that every element either operand's strides reach from
        // each of its batch offsets lies in its storage; the output has capacity for `batch`
        // row-major m·n matrices, and matrix `i` is written by this call alone. gemm writes
        // every element of it (it does not read the destination: `read_dst` false).
        unsafe {
            gemm::gemm(
                m,
                n,
                k,
                dst.at(i * size),
                1,
                n as isize,
                false,
                x.data.as_ptr().add(x.offsets[i]),
                x.col_stride,
                x.row_stride,
                w.data.as_ptr().add(w.offsets[i]),
                w.col_stride,
                w.row_stride,
                0.0,
                1.0,
                false,
                false,
                false,
                parallelism,
            )
        }
    };
    match parallel {
        #[cfg(not(target_family = "wasm"))]
        true if batch > 1 => {
            use rayon::prelude::*;
            (0..batch)
                .into_par_iter()
                .for_each(|i| one(i, gemm::Parallelism::None));
        }
        #[cfg(not(target_family = "wasm"))]
        true => one(0, gemm::Parallelism::Rayon(0)),
        _ => (0..batch).for_each(|i| one(i, gemm::Parallelism::None)),
    }
    // SAFETY: the calls above wrote all `total` elements.
    unsafe { out.set_len(total) };
    Some(tensor(out, shape.into()))
}

/// Whether a product of `rows · cols` outputs each `depth` long runs on every core: at least
/// burn's CPU backend's threshold (192³), natively with more than one thread.
fn parallel_product(outputs: usize, depth: usize) -> bool {
    #[cfg(not(target_family = "wasm"))]
    {
        rayon::current_num_threads() > 1 && outputs.saturating_mul(depth) >= 192 * 192 * 192
    }
    #[cfg(target_family = "wasm")]
    {
        let _ = (outputs, depth);
        false
    }
}

/// An f32 tensor as a batch of matrices: its storage from the first element, where each matrix
/// starts (row-major over the leading dimensions), and their shape and strides (in elements).
struct Operand<'a> {
    data: &'a [f32],
    batch: Vec<usize>,
    offsets: Vec<usize>,
    rows: usize,
    cols: usize,
    row_stride: isize,
    col_stride: isize,
}

impl<'a> Operand<'a> {
    /// `t` as matrices, when it is f32 with at least two dimensions and non-negative strides
    /// that stay inside its storage.
    fn of(t: &'a CpuTensor) -> Option<Self> {
        let layout = t.layout();
        let d = layout.num_dims();
        if t.dtype() != burn::tensor::DType::F32 || d < 2 {
            return None;
        }
        let dims = layout.shape().to_vec();
        let strides = layout
            .strides()
            .iter()
            .map(|&s| usize::try_from(s).ok())
            .collect::<Option<Vec<usize>>>()?;
        let data = t.storage::<f32>().get(layout.start_offset()..)?;
        let (rows, cols) = (dims[d - 2], dims[d - 1]);
        let mut offsets = vec![0usize];
        for (&dim, &stride) in dims[..d - 2].iter().zip(&strides) {
            offsets = offsets
                .iter()
                .flat_map(|&o| (0..dim).map(move |j| o + j * stride))
                .collect();
        }
        let reach = |dim: usize, stride: usize| dim.saturating_sub(1).checked_mul(stride);
        let matrix = reach(rows, strides[d - 2])?.checked_add(reach(cols, strides[d - 1])?)?;
        let last = offsets
            .iter()
            .max()
            .copied()
            .unwrap_or(0)
            .checked_add(matrix)?;
        let empty = offsets.is_empty() || rows == 0 || cols == 0;
        (empty || last < data.len()).then(|| Self {
            data,
            batch: dims[..d - 2].to_vec(),
            offsets,
            rows,
            cols,
            row_stride: strides[d - 2] as isize,
            col_stride: strides[d - 1] as isize,
        })
    }
}

/// Elements per task when a pass is split over the cores: large enough that handing out a task
/// costs little against it, small enough that two cores share even a short pass.
const TASK_ELEMENTS: usize = 16 * 1024;

/// `e^x` for `x ≤ 0` (the only arguments these kernels take: `x − max`, `−|x|`), within 2 ulp
/// of the exact value; 0 below −87.3 (where f32 turns subnormal) and for −∞; NaN stays NaN.
/// Cephes' `expf`: `x = n·ln 2 + r` with `|r| ≤ ln 2 / 2`, a degree-6 polynomial for `e^r`,
/// and `2^n` built in the exponent bits. Only adds, multiplies and bit operations, so a loop
/// of it vectorises (libm's `expf` is a call per element).
#[inline(always)]
pub fn exp_nonpositive(x: f32) -> f32 {
    const LOWEST: f32 = -87.336_54; // ln of the smallest normal f32
    const ROUND: f32 = 12_582_912.0; // 1.5 · 2^23: adding it rounds to an integer
    const LN2_HI: f32 = 0.693_359_4;
    const LN2_LO: f32 = -2.121_944_4e-4;
    let below = x < LOWEST;
    let x = if below { LOWEST } else { x };
    let n = (x * std::f32::consts::LOG2_E + ROUND) - ROUND;
    let r = x - n * LN2_HI - n * LN2_LO;
    let p = 1.987_569_1e-4_f32;
    let p = p * r + 1.398_199_9e-3;
    let p = p * r + 8.333_452e-3;
    let p = p * r + 4.166_579_6e-2;
    let p = p * r + 1.666_666_5e-1;
    let p = p * r + 0.5;
    let e_r = p * r * r + r + 1.0;
    // n + 127 in [1, 127]: the low bits of `n + 127 + ROUND` are the biased exponent of 2^n.
    let two_n = f32::from_bits((n + (127.0 + ROUND)).to_bits() << 23);
    if below { 0.0 } else { e_r * two_n }
}

/// `1 / (1 + e^−x)`, by the form that never overflows.
#[inline(always)]
fn sigmoid(x: f32) -> f32 {
    let e = exp_nonpositive(-x.abs());
    if x >= 0.0 {
        1.0 / (1.0 + e)
    } else {
        e / (1.0 + e)
    }
}

/// Runs `task(start, len)` over `0..n` in pieces of about `piece` (rounded to whole `unit`s),
/// on every core.
fn split<F: Fn(usize, usize) + Sync + Send>(n: usize, unit: usize, piece: usize, task: F) {
    let piece = task_elements(unit, piece);
    let tasks = n.div_ceil(piece);
    let run = |i: usize| {
        let start = i * piece;
        task(start, piece.min(n - start));
    };
    #[cfg(not(target_family = "wasm"))]
    if rayon::current_num_threads() > 1 {
        use rayon::prelude::*;
        (0..tasks).into_par_iter().for_each(run);
        return;
    }
    (0..tasks).for_each(run);
}

/// The elements of each of [`split`]'s tasks (the last may have fewer): `piece` rounded to
/// whole `unit`s, at least one.
fn task_elements(unit: usize, piece: usize) -> usize {
    let unit = unit.max(1);
    (piece / unit).max(1) * unit
}

/// A buffer of f32 shared by tasks (of [`split`], or [`product`]'s matrices), each writing its
/// own disjoint part.
struct Shared(*mut f32, usize);

// SAFETY: tasks write disjoint parts (see `range` and `at`).
unsafe impl Sync for Shared {}
unsafe impl Send for Shared {}

impl Shared {
    fn new(s: &mut [f32]) -> Self {
        Self(s.as_mut_ptr(), s.len())
    }

    /// The whole capacity of `v`, initialised or not, to be written through [`Self::at`] only
    /// (never `range`), every element before `set_len`: no zeroing pass first.
    fn capacity_of(v: &mut Vec<f32>) -> Self {
        Self(v.as_mut_ptr(), v.capacity())
    }

    /// The address of element `i`, for a writer of raw memory (gemm).
    ///
    /// # Safety
    /// No two writers may write the same elements.
    unsafe fn at(&self, i: usize) -> *mut f32 {
        assert!(i <= self.1, "inside the buffer");
        // SAFETY: in bounds (checked).
        unsafe { self.0.add(i) }
    }

    /// `start..start + len` of the slice.
    ///
    /// # Safety
    /// No two live ranges may overlap.
    #[allow(clippy::mut_from_ref)]
    unsafe fn range(&self, start: usize, len: usize) -> &mut [f32] {
        assert!(start + len <= self.1, "range inside the slice");
        // SAFETY: in bounds (checked); disjointness is the caller's promise.
        unsafe { std::slice::from_raw_parts_mut(self.0.add(start), len) }
    }
}

/// SwiGLU: `out = silu(gate) · up`, element by element.
pub fn swiglu(gate: &[f32], up: &[f32], out: &mut [f32]) {
    assert!(
        gate.len() == up.len() && up.len() == out.len(),
        "equal lengths"
    );
    let out = Shared::new(out);
    split(gate.len(), 1, TASK_ELEMENTS, |start, len| {
        // SAFETY: `split` hands out disjoint ranges.
        let out = unsafe { out.range(start, len) };
        let (g, u) = (&gate[start..start + len], &up[start..start + len]);
        for ((o, &g), &u) in out.iter_mut().zip(g).zip(u) {
            *o = g * sigmoid(g) * u;
        }
    });
}

/// SwiGLU's gradients from the output's gradient `grad`: with `s = sigmoid(gate)`,
/// `grad_up = grad · gate · s` and `grad_gate = grad · up · s · (1 + gate · (1 − s))`.
pub fn swiglu_backward(
    gate: &[f32],
    up: &[f32],
    grad: &[f32],
    grad_gate: &mut [f32],
    grad_up: &mut [f32],
) {
    let n = gate.len();
    assert!(
        [up.len(), grad.len(), grad_gate.len(), grad_up.len()]
            .iter()
            .all(|&l| l == n),
        "equal lengths"
    );
    let (grad_gate, grad_up) = (Shared::new(grad_gate), Shared::new(grad_up));
    split(n, 1, TASK_ELEMENTS, |start, len| {
        // SAFETY: `split` hands out disjoint ranges.
        let (dg, du) = unsafe { (grad_gate.range(start, len), grad_up.range(start, len)) };
        let range = start..start + len;
        let (g, u, d) = (&gate[range.clone()], &up[range.clone()], &grad[range]);
        for i in 0..len {
            let s = sigmoid(g[i]);
            let silu = g[i] * s;
            du[i] = d[i] * silu;
            dg[i] = d[i] * u[i] * (s + silu * (1.0 - s));
        }
    });
}

/// RMSNorm over rows of `weight.len()`: `out = x · r · weight` with `r = 1/√(mean(x²) + eps)`
/// per row (HF's order of operations).
pub fn rms_norm(x: &[f32], weight: &[f32], eps: f32, out: &mut [f32]) {
    let width = weight.len();
    assert!(
        x.len() == out.len() && x.len().is_multiple_of(width.max(1)),
        "shapes agree"
    );
    let out = Shared::new(out);
    split(x.len(), width, TASK_ELEMENTS, |start, len| {
        // SAFETY: `split` hands out disjoint ranges of whole rows.
        let block = unsafe { out.range(start, len) };
        let rows = x[start..start + len].chunks_exact(width);
        for (out, x) in block.chunks_exact_mut(width).zip(rows) {
            let r = inverse_rms(x, eps);
            for ((o, &x), &w) in out.iter_mut().zip(x).zip(weight) {
                *o = x * r * w;
            }
        }
    });
}

/// RMSNorm's gradients from the output's gradient `grad`, with `r` per row as in [`rms_norm`]:
/// `grad_x = r · grad · weight − x · r³ · mean(grad · weight · x)` and `grad_weight = Σ over
/// rows of grad · x · r`. The weight's sum is added up in the same order whatever the threads
/// (each task's rows into a slot of its own, the slots in task order), so a run repeats
/// exactly.
pub fn rms_norm_backward(
    x: &[f32],
    weight: &[f32],
    eps: f32,
    grad: &[f32],
    grad_x: &mut [f32],
    grad_weight: &mut [f32],
) {
    let width = weight.len();
    assert!(
        x.len() == grad.len()
            && x.len() == grad_x.len()
            && grad_weight.len() == width
            && x.len().is_multiple_of(width.max(1)),
        "shapes agree"
    );
    let piece = task_elements(width, TASK_ELEMENTS);
    let mut partial = vec![0.0f32; x.len().div_ceil(piece) * width];
    let (grad_x, sums) = (Shared::new(grad_x), Shared::new(&mut partial));
    split(x.len(), width, TASK_ELEMENTS, |start, len| {
        // SAFETY: `split` hands out disjoint ranges of whole rows, each task its own slot.
        let (block, sum) = unsafe {
            (
                grad_x.range(start, len),
                sums.range(start / piece * width, width),
            )
        };
        let rows = x[start..start + len]
            .chunks_exact(width)
            .zip(grad[start..start + len].chunks_exact(width));
        for (grad_x, (x, grad)) in block.chunks_exact_mut(width).zip(rows) {
            let r = inverse_rms(x, eps);
            let mut weighted = [0.0f32; LANES];
            for ((g, w), x) in grad
                .chunks(LANES)
                .zip(weight.chunks(LANES))
                .zip(x.chunks(LANES))
            {
                for (((s, &g), &w), &x) in weighted.iter_mut().zip(g).zip(w).zip(x) {
                    *s += g * w * x;
                }
            }
            let c = r * r * r * weighted.iter().sum::<f32>() / width as f32;
            for i in 0..width {
                grad_x[i] = r * grad[i] * weight[i] - x[i] * c;
                sum[i] += grad[i] * x[i] * r;
            }
        }
    });
    grad_weight.fill(0.0);
    for slot in partial.chunks_exact(width) {
        for (total, &s) in grad_weight.iter_mut().zip(slot) {
            *total += s;
        }
    }
}

/// `1/√(mean(x²) + eps)`.
fn inverse_rms(x: &[f32], eps: f32) -> f32 {
    1.0 / (dot(x, x) / x.len().max(1) as f32 + eps).sqrt()
}

/// HF's rotary embedding over rows of `width` (even): each row's halves `x₁`, `x₂` become
/// `x₁·cos₁ − x₂·sin₁` and `x₂·cos₂ + x₁·sin₂`, with that row's angles `cos`, `sin` (`width`
/// each). With `transposed`, the transpose of that linear map instead, which is the backward
/// pass: `x₁·cos₁ + x₂·sin₂` and `x₂·cos₂ − x₁·sin₁`. Row `i` of the contiguous `out` reads its
/// input at `x[input_row(i)..]` and its angles at row `angle_row(i)` of `cos` and `sin`, so a
/// strided input (heads swapped with positions) and tables shared by every head need no copy.
#[allow(clippy::too_many_arguments)]
pub fn rotary(
    x: &[f32],
    input_row: impl Fn(usize) -> usize + Sync,
    cos: &[f32],
    sin: &[f32],
    angle_row: impl Fn(usize) -> usize + Sync,
    transposed: bool,
    width: usize,
    out: &mut [f32],
) {
    assert!(
        width.is_multiple_of(2) && out.len().is_multiple_of(width.max(1)),
        "even rows"
    );
    let half = width / 2;
    let out = Shared::new(out);
    split(out.1, width, TASK_ELEMENTS, |start, len| {
        // SAFETY: `split` hands out disjoint ranges of whole rows.
        let block = unsafe { out.range(start, len) };
        for (r, out) in block.chunks_exact_mut(width).enumerate() {
            let row = start / width + r;
            let x = &x[input_row(row)..][..width];
            let angles = angle_row(row) * width;
            let (cos, sin) = (&cos[angles..angles + width], &sin[angles..angles + width]);
            let (x1, x2) = x.split_at(half);
            let (c1, c2) = cos.split_at(half);
            let (s1, s2) = sin.split_at(half);
            let (o1, o2) = out.split_at_mut(half);
            if transposed {
                for i in 0..half {
                    o1[i] = x1[i] * c1[i] + x2[i] * s2[i];
                    o2[i] = x2[i] * c2[i] - x1[i] * s1[i];
                }
            } else {
                for i in 0..half {
                    o1[i] = x1[i] * c1[i] - x2[i] * s1[i];
                    o2[i] = x2[i] * c2[i] + x1[i] * s2[i];
                }
            }
        }
    });
}

/// Softmax cross-entropy of rows of `logits` (`targets.len()` rows of `vocab`): writes each
/// row's `−log p(target)` to `nll` and replaces the row by the loss's gradient with respect
/// to its logits, `softmax − one-hot(target)`. Every target must be below `vocab`.
pub fn softmax_cross_entropy(logits: &mut [f32], vocab: usize, targets: &[usize], nll: &mut [f32]) {
    let rows = targets.len();
    assert!(
        logits.len() == rows * vocab && nll.len() == rows,
        "shapes agree"
    );
    assert!(
        targets.iter().all(|&t| t < vocab),
        "targets within the vocabulary"
    );
    let (logits, nll) = (Shared::new(logits), Shared::new(nll));
    // A task is whole rows: at least one, about TASK_ELEMENTS logits.
    split(rows * vocab, vocab, TASK_ELEMENTS, |start, len| {
        // SAFETY: `split` hands out disjoint ranges of whole rows.
        let block = unsafe { logits.range(start, len) };
        let first = start / vocab;
        let nll = unsafe { nll.range(first, len / vocab) };
        for (r, row) in block.chunks_exact_mut(vocab).enumerate() {
            let target = targets[first + r];
            let max = row_max(row);
            let logit = row[target];
            let total = softmax_in_place(row, max);
            nll[r] = max + total.ln() - logit;
            row[target] -= 1.0;
        }
    });
}

/// Attention's softmax over rows of `width` scores, in place: `scale · score` where
/// `forbidden` is 0, e^−∞ = 0 where it is not; a row with nothing allowed becomes zeros.
pub fn masked_softmax(scores: &mut [f32], width: usize, forbidden: &[u8], scale: f32) {
    assert!(
        scores.len() == forbidden.len() && scores.len().is_multiple_of(width.max(1)),
        "shapes agree"
    );
    let scores = Shared::new(scores);
    split(forbidden.len(), width, TASK_ELEMENTS, |start, len| {
        // SAFETY: `split` hands out disjoint ranges of whole rows.
        let block = unsafe { scores.range(start, len) };
        let mask = &forbidden[start..start + len];
        for (row, mask) in block.chunks_exact_mut(width).zip(mask.chunks_exact(width)) {
            for (x, &m) in row.iter_mut().zip(mask) {
                *x = if m == 0 {
                    *x * scale
                } else {
                    f32::NEG_INFINITY
                };
            }
            let max = row_max(row);
            if max == f32::NEG_INFINITY {
                row.fill(0.0);
                continue;
            }
            softmax_in_place(row, max);
        }
    });
}

/// The gradient of the scaled scores from softmax's output `p` and its gradient, in place of
/// the latter: `scale · p ⊙ (grad − Σ grad ⊙ p)` per row of `width`.
pub fn softmax_backward(p: &[f32], grad: &mut [f32], width: usize, scale: f32) {
    assert!(
        p.len() == grad.len() && p.len().is_multiple_of(width.max(1)),
        "shapes agree"
    );
    let grad = Shared::new(grad);
    split(p.len(), width, TASK_ELEMENTS, |start, len| {
        // SAFETY: `split` hands out disjoint ranges of whole rows.
        let block = unsafe { grad.range(start, len) };
        let probs = &p[start..start + len];
        for (g, p) in block.chunks_exact_mut(width).zip(probs.chunks_exact(width)) {
            let dot = dot(g, p);
            for (g, &p) in g.iter_mut().zip(p) {
                *g = scale * p * (*g - dot);
            }
        }
    });
}

/// `Σ a·b`.
fn dot(a: &[f32], b: &[f32]) -> f32 {
    let mut sum = [0.0f32; LANES];
    let (mut a_chunks, mut b_chunks) = (a.chunks_exact(LANES), b.chunks_exact(LANES));
    for (a, b) in (&mut a_chunks).zip(&mut b_chunks) {
        for ((s, &a), &b) in sum.iter_mut().zip(a).zip(b) {
            *s += a * b;
        }
    }
    let tail: f32 = a_chunks
        .remainder()
        .iter()
        .zip(b_chunks.remainder())
        .map(|(a, b)| a * b)
        .sum();
    sum.iter().sum::<f32>() + tail
}

/// Independent running values per reduction, so a reduction vectorises (and its sum errs less
/// than one running total).
const LANES: usize = 16;

/// The largest value of `row` (NaNs skipped).
fn row_max(row: &[f32]) -> f32 {
    let mut max = [f32::NEG_INFINITY; LANES];
    let mut chunks = row.chunks_exact(LANES);
    for chunk in &mut chunks {
        for (m, &x) in max.iter_mut().zip(chunk) {
            *m = if x > *m { x } else { *m };
        }
    }
    let tail = chunks.remainder().iter();
    max.into_iter()
        .chain(tail.copied())
        .fold(f32::NEG_INFINITY, f32::max)
}

/// Replaces each `x` of `row` by `e^(x − max)` (`max` at least every `x`) and returns their sum.
fn exp_in_place_and_sum(row: &mut [f32], max: f32) -> f32 {
    let mut sum = [0.0f32; LANES];
    let mut chunks = row.chunks_exact_mut(LANES);
    for chunk in &mut chunks {
        for (s, x) in sum.iter_mut().zip(chunk) {
            *x = exp_nonpositive(*x - max);
            *s += *x;
        }
    }
    for x in chunks.into_remainder() {
        *x = exp_nonpositive(*x - max);
        sum[0] += *x;
    }
    sum.iter().sum()
}

/// Replaces `row` by its softmax (`max` at least every value) and returns the sum of the
/// exponentials it divided by.
fn softmax_in_place(row: &mut [f32], max: f32) -> f32 {
    let total = exp_in_place_and_sum(row, max);
    let inv = 1.0 / total;
    for x in row.iter_mut() {
        *x *= inv;
    }
    total
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exp_is_within_two_ulp_of_std() {
        let mut worst = 0.0f64;
        for i in 0..=200_000 {
            let x = -87.0 * i as f32 / 200_000.0;
            let (ours, exact) = (exp_nonpositive(x) as f64, (x as f64).exp());
            let ulp = (exact as f32).next_up() as f64 - exact as f32 as f64;
            worst = worst.max((ours - exact).abs() / ulp);
        }
        assert!(worst <= 2.0, "worst error {worst} ulp");
        assert_eq!(exp_nonpositive(0.0), 1.0);
        assert_eq!(exp_nonpositive(-100.0), 0.0);
        assert_eq!(exp_nonpositive(f32::NEG_INFINITY), 0.0);
        assert!(exp_nonpositive(f32::NAN).is_nan());
    }

    /// Row-major and transposed operands (as the backward pass hands them over), small and
    /// large enough to run on every core, against a plain f64 product.
    #[test]
    fn product_of_strided_operands_matches_f64() {
        for (m, k, n) in [(3, 5, 7), (300, 200, 260)] {
            let xs: Vec<f32> = (0..m * k)
                .map(|i| ((i * 37 % 101) as f32 - 50.0) / 25.0)
                .collect();
            let ws: Vec<f32> = (0..k * n)
                .map(|i| ((i * 53 % 97) as f32 - 48.0) / 30.0)
                .collect();
            let x = tensor(xs.clone(), [m, k].into());
            // w given as the transpose of a row-major [n, k]
            let wt: Vec<f32> = (0..n * k).map(|i| ws[(i % k) * n + i / k]).collect();
            let w = tensor(wt, [n, k].into()).transpose(0, 1);
            let out = product(&x, &w).expect("f32 matrices");
            let got = values(&out).expect("f32");
            for i in 0..m {
                for j in 0..n {
                    let exact: f64 = (0..k)
                        .map(|l| xs[i * k + l] as f64 * ws[l * n + j] as f64)
                        .sum();
                    assert!((got[i * n + j] as f64 - exact).abs() < 1e-3, "[{i}, {j}]");
                }
            }
        }
        let x = tensor(vec![1.0; 6], [2, 3].into());
        assert!(product(&x, &x).is_none(), "inner sizes differ");
    }

    /// A batch of products (attention's heads), one operand transposed in its last two
    /// dimensions and the other with heads swapped with rows, small and large enough to share
    /// the batch out over the cores, against f64; batches that differ are refused.
    #[test]
    fn batched_products_of_strided_operands_match_f64() {
        for (m, k, n) in [(5, 3, 4), (128, 80, 128)] {
            let (b, h) = (2, 3);
            let value = |i: usize| ((i * 37 % 101) as f32 - 50.0) / 25.0;
            // x [b, h, m, k] as the swap of a row-major [b, m, h, k]
            let xs: Vec<f32> = (0..b * m * h * k).map(value).collect();
            let x = tensor(xs.clone(), [b, m, h, k].into()).transpose(1, 2);
            let x_at =
                |bi: usize, hi: usize, i: usize, l: usize| xs[((bi * m + i) * h + hi) * k + l];
            // w [b, h, k, n] as the transpose of a row-major [b, h, n, k]
            let ws: Vec<f32> = (0..b * h * n * k).map(|i| value(i * 7 + 3)).collect();
            let w = tensor(ws.clone(), [b, h, n, k].into()).transpose(2, 3);
            let w_at =
                |bi: usize, hi: usize, l: usize, j: usize| ws[((bi * h + hi) * n + j) * k + l];
            let out = product(&x, &w).expect("f32 batches");
            assert_eq!(out.layout().shape().to_vec(), vec![b, h, m, n]);
            let got = values(&out).expect("f32");
            for bi in 0..b {
                for hi in 0..h {
                    for i in 0..m {
                        for j in 0..n {
                            let exact: f64 = (0..k)
                                .map(|l| x_at(bi, hi, i, l) as f64 * w_at(bi, hi, l, j) as f64)
                                .sum();
                            let ours = got[((bi * h + hi) * m + i) * n + j] as f64;
                            assert!((ours - exact).abs() < 1e-3, "[{bi}, {hi}, {i}, {j}]");
                        }
                    }
                }
            }
        }
        let x = tensor(vec![1.0; 12], [2, 2, 3].into());
        let w = tensor(vec![1.0; 9], [1, 3, 3].into());
        assert!(product(&x, &w).is_none(), "batches differ");
    }

    #[test]
    fn swiglu_and_its_gradients_match_the_formulas_in_f64() {
        let n = 3 * TASK_ELEMENTS + 7;
        let gate: Vec<f32> = (0..n)
            .map(|i| ((i * 37 % 1001) as f32 - 500.0) / 40.0)
            .collect();
        let up: Vec<f32> = (0..n)
            .map(|i| ((i * 53 % 997) as f32 - 498.0) / 100.0)
            .collect();
        let grad: Vec<f32> = (0..n)
            .map(|i| ((i * 11 % 89) as f32 - 44.0) / 30.0)
            .collect();
        let mut out = vec![0.0; n];
        swiglu(&gate, &up, &mut out);
        let (mut dg, mut du) = (vec![0.0; n], vec![0.0; n]);
        swiglu_backward(&gate, &up, &grad, &mut dg, &mut du);
        for i in 0..n {
            let (g, u, d) = (gate[i] as f64, up[i] as f64, grad[i] as f64);
            let s = 1.0 / (1.0 + (-g).exp());
            let close =
                |ours: f32, exact: f64| (ours as f64 - exact).abs() <= 1e-5 * (1.0 + exact.abs());
            assert!(close(out[i], g * s * u), "out[{i}]");
            assert!(close(du[i], d * g * s), "grad_up[{i}]");
            assert!(
                close(dg[i], d * u * s * (1.0 + g * (1.0 - s))),
                "grad_gate[{i}]"
            );
        }
    }

    #[test]
    fn masked_softmax_and_its_gradient_match_the_formulas_in_f64() {
        let (rows, width, scale) = (300, 67, 0.125f32);
        let n = rows * width;
        let scores: Vec<f32> = (0..n)
            .map(|i| ((i * 7919 % 1009) as f32 - 504.0) / 20.0)
            .collect();
        // Causal-like, with row 5 fully forbidden.
        let forbidden: Vec<u8> = (0..n)
            .map(|i| u8::from(i % width > (i / width) % width || i / width == 5))
            .collect();
        let mut p = scores.clone();
        masked_softmax(&mut p, width, &forbidden, scale);
        let grad_p: Vec<f32> = (0..n)
            .map(|i| ((i * 31 % 97) as f32 - 48.0) / 10.0)
            .collect();
        let mut grad = grad_p.clone();
        softmax_backward(&p, &mut grad, width, scale);
        for r in 0..rows {
            let at = |c: usize| r * width + c;
            let allowed: Vec<usize> = (0..width).filter(|&c| forbidden[at(c)] == 0).collect();
            let max = allowed
                .iter()
                .map(|&c| scores[at(c)] as f64 * scale as f64)
                .fold(f64::NEG_INFINITY, f64::max);
            let total: f64 = allowed
                .iter()
                .map(|&c| (scores[at(c)] as f64 * scale as f64 - max).exp())
                .sum();
            let exact: Vec<f64> = (0..width)
                .map(|c| {
                    if forbidden[at(c)] == 0 {
                        (scores[at(c)] as f64 * scale as f64 - max).exp() / total
                    } else {
                        0.0
                    }
                })
                .collect();
            let dot: f64 = (0..width).map(|c| grad_p[at(c)] as f64 * exact[c]).sum();
            for c in 0..width {
                assert!((p[at(c)] as f64 - exact[c]).abs() < 1e-6, "p[{r}, {c}]");
                let g = scale as f64 * exact[c] * (grad_p[at(c)] as f64 - dot);
                assert!((grad[at(c)] as f64 - g).abs() < 1e-5, "grad[{r}, {c}]");
            }
        }
        assert!(
            p[5 * width..6 * width].iter().all(|&x| x == 0.0),
            "a fully masked row is zeros"
        );
    }

    #[test]
    fn cross_entropy_rows_match_log_softmax_in_f64() {
        let (rows, vocab) = (5, 10_007);
        let logits: Vec<f32> = (0..rows * vocab)
            .map(|i| ((i * 7919 % 10_009) as f32 - 5000.0) / 300.0)
            .collect();
        let targets: Vec<usize> = (0..rows).map(|r| r * 2003 % vocab).collect();
        let mut grad = logits.clone();
        let mut nll = vec![0.0; rows];
        softmax_cross_entropy(&mut grad, vocab, &targets, &mut nll);
        for r in 0..rows {
            let row = &logits[r * vocab..(r + 1) * vocab];
            let max = row.iter().fold(f64::NEG_INFINITY, |m, &l| m.max(l as f64));
            let total: f64 = row.iter().map(|&l| (l as f64 - max).exp()).sum();
            let exact_nll = max + total.ln() - row[targets[r]] as f64;
            assert!(
                (nll[r] as f64 - exact_nll).abs() < 1e-4,
                "row {r}: {} vs {exact_nll}",
                nll[r]
            );
            for (c, &l) in row.iter().enumerate() {
                let p = (l as f64 - max).exp() / total;
                let exact = p - if c == targets[r] { 1.0 } else { 0.0 };
                assert!(
                    (grad[r * vocab + c] as f64 - exact).abs() < 1e-6,
                    "row {r}, column {c}"
                );
            }
        }
    }
}
