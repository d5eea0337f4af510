//! Our own WGSL matrix product (`shaders/matmul_nn.wgsl`, `shaders/matmul_nt.wgsl`) for
//! `x · w` with a weight on a wgpu device, behind [`super::frozen::weight_matmul`].
//!
//! burn's default product is tiled for GPUs with fast workgroup memory; where that is slow (a
//! software adapter: docs/results.md, "Our WGSL product") a product without workgroup memory or
//! barriers is several times faster. It reads an f16 weight as it is (no widened copy) and a
//! transposed one in place (the tied head, and every product of the backward pass). Shapes it
//! does not cover go to burn's product.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use burn::tensor::DType;
use burn_cubecl::cubecl::prelude::{CubeCount, CubeDim, KernelId};
use burn_cubecl::cubecl::server::KernelArguments;
use burn_cubecl::ops::numeric::empty_device;
use burn_cubecl::template::{KernelSource, SourceKernel, SourceTemplate};
use burn_cubecl::tensor::CubeTensor;

/// Invocations per workgroup (the shaders' `@workgroup_size`).
const WORKGROUP: u32 = 64;
/// WebGPU's guaranteed number of workgroups along one dimension.
const MAX_WORKGROUPS: u32 = 65_535;

static ENABLED: AtomicBool = AtomicBool::new(true);
static LAUNCHES: AtomicUsize = AtomicUsize::new(0);

/// How many products our kernel has run in this process (tests check it is the one running).
pub fn launches() -> usize {
    LAUNCHES.load(Ordering::Relaxed)
}

/// Turns our product on or off (on by default), for comparing it with burn's on a device:
/// `scaleot bench-train --burn-matmul`, the page's `?matmul=burn`.
pub fn set_enabled(enabled: bool) {
    ENABLED.store(enabled, Ordering::Relaxed);
}

/// Whether weight products on a wgpu device use our kernel.
pub fn enabled() -> bool {
    ENABLED.load(Ordering::Relaxed)
}

/// How the weight lies in memory.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Layout {
    /// Row-major `[k, n]`: four columns read at once.
    Rows,
    /// The transpose of a row-major `[n, k]`: four elements of k read at once.
    Transposed,
}

#[derive(Debug)]
struct Matmul {
    layout: Layout,
    f16: bool,
    /// Rows of `x` per invocation.
    rows: u32,
    /// vec4s of output columns per invocation.
    cols: u32,
}

impl Matmul {
    /// The block an invocation computes: as many rows as there are (up to 16), and two vec4s of
    /// columns where the width allows. Measured on SwiftShader: docs/results.md.
    fn new(layout: Layout, f16: bool, m: usize, n: usize) -> Self {
        let rows = match m {
            16.. => 16,
            8.. => 8,
            4.. => 4,
            _ => 1,
        };
        let cols = if n.is_multiple_of(8) { 2 } else { 1 };
        Self {
            layout,
            f16,
            rows,
            cols,
        }
    }
}

/// The shader with each code line holding `{r}` written once per row of the block and each
/// holding `{c}` once per vec4 of columns (rows outermost), the tokens replaced by the index.
fn unrolled(text: &str, rows: u32, cols: u32) -> String {
    let mut out = String::with_capacity(text.len() * 4);
    for line in text.lines() {
        let code = !line.trim_start().starts_with("//");
        let each = |token: &str, count: u32| {
            if code && line.contains(token) {
                0..count
            } else {
                0..1
            }
        };
        for r in each("{r}", rows) {
            for c in each("{c}", cols) {
                out.push_str(
                    &line
                        .replace("{r}", &r.to_string())
                        .replace("{c}", &c.to_string()),
                );
                out.push('\n');
            }
        }
    }
    out
}

impl KernelSource for Matmul {
    fn source(&self) -> SourceTemplate {
        let text = match self.layout {
            Layout::Rows => include_str!("../../shaders/matmul_nn.wgsl"),
            Layout::Transposed => include_str!("../../shaders/matmul_nt.wgsl"),
        };
        SourceTemplate::new(unrolled(text, self.rows, self.cols))
            .register("enable", if self.f16 { "enable f16;" } else { "" })
            .register("welem", if self.f16 { "f16" } else { "f32" })
            .register("rows", self.rows.to_string())
            .register("cols", self.cols.to_string())
    }

    fn id(&self) -> KernelId {
        KernelId::new::<Self>()
            .info((self.layout, self.f16, self.rows, self.cols))
            .cube_dim(CubeDim::new_1d(WORKGROUP).0)
    }

    fn lang(&self) -> &'static str {
        "wgsl"
    }
}

/// `x [m, k]` (f32) times the weight `w [k, n]` (f32 or f16) with our kernel, or both
/// back when it does not cover them (another runtime, layout, type or shape): the caller then
/// uses burn's product.
#[allow(clippy::result_large_err)]
pub fn matmul(x: CubeTensor, w: CubeTensor) -> Result<CubeTensor, (CubeTensor, CubeTensor)> {
    let Some((layout, w_stride)) = covered(&x, &w) else {
        return Err((x, w));
    };
    let x = if x.is_contiguous() {
        x
    } else {
        burn_cubecl::kernel::into_contiguous(x)
    };
    let [m, k] = [x.meta.shape()[0], x.meta.shape()[1]];
    let n = w.meta.shape()[1];
    let kernel = Matmul::new(layout, w.dtype == DType::F16, m, n);
    let groups = [
        (n as u32 / 4 / kernel.cols).div_ceil(WORKGROUP),
        (m as u32).div_ceil(kernel.rows),
    ];
    if groups.iter().any(|&g| g > MAX_WORKGROUPS) {
        return Err((x, w));
    }
    let client = x.client.clone();
    let out = empty_device::<f32>(client.clone(), x.device.clone(), [m, n].into());
    let dims: Vec<u8> = [m, k, n, w_stride]
        .iter()
        .flat_map(|&d| (d as u32).to_le_bytes())
        .collect();
    let dims = client.create_from_slice(&dims);
    client.launch(
        Box::new(SourceKernel::new(kernel, CubeDim::new_1d(WORKGROUP))),
        CubeCount::new_2d(groups[0], groups[1]),
        KernelArguments::new()
            .with_buffer(x.handle.clone().binding())
            .with_buffer(w.handle.clone().binding())
            .with_buffer(out.handle.clone().binding())
            .with_buffer(dims.binding()),
    );
    LAUNCHES.fetch_add(1, Ordering::Relaxed);
    Ok(out)
}

/// The weight's layout and the stride between its rows (or columns) in vec4s, when our kernel
/// covers this product.
fn covered(x: &CubeTensor, w: &CubeTensor) -> Option<(Layout, usize)> {
    if !enabled()
        || !matches!(x.device, burn_cubecl::CubeDevice::Wgpu(_))
        || x.dtype != DType::F32
        || !matches!(w.dtype, DType::F32 | DType::F16)
        || x.meta.num_dims() != 2
        || w.meta.num_dims() != 2
    {
        return None;
    }
    let (m, k) = (x.meta.shape()[0], x.meta.shape()[1]);
    let (wk, n) = (w.meta.shape()[0], w.meta.shape()[1]);
    let [row_stride, col_stride] = [w.meta.strides()[0], w.meta.strides()[1]];
    // Every index the shaders compute fits in a u32.
    let largest = [m as u64 * k as u64, m as u64 * n as u64, w.handle.size()];
    if wk != k
        || m == 0
        || k == 0
        || k % 4 != 0
        || n % 4 != 0
        || largest.iter().any(|&l| l > u32::MAX as u64)
    {
        return None;
    }
    if col_stride == 1 && row_stride % 4 == 0 {
        Some((Layout::Rows, row_stride / 4))
    } else if row_stride == 1 && col_stride % 4 == 0 {
        Some((Layout::Transposed, col_stride / 4))
    } else {
        None
    }
}
