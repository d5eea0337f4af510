// out = x · w for a weight w given transposed: w's column j is row j of a row-major [n, k]
// matrix (rows `s` vec4s apart), read as {{ welem }} and multiplied in f32: the tied vocabulary
// head and the backward pass's products. Each invocation computes a block of rows x (4 x cols)
// columns, four elements of k per iteration; no workgroup memory or barriers. A line holding
// `{r}` is written once per row of the block, `{c}` once per vec4 of columns (see matmul_nn.wgsl).
{{ enable }}
// Every binding is read_write: cubecl suballocates tensors from shared buffers, and WebGPU refuses
// one buffer bound read-only and writable in the same dispatch.
@group(0) @binding(0) var<storage, read_write> x: array<vec4<f32>>;
@group(0) @binding(1) var<storage, read_write> w: array<vec4<{{ welem }}>>;
@group(0) @binding(2) var<storage, read_write> out: array<vec4<f32>>;
// m, k, n, the stride between w's columns in vec4s
@group(0) @binding(3) var<storage, read_write> dims: array<u32>;

@compute @workgroup_size(64)
fn main(@builtin(global_invocation_id) gid: vec3<u32>) {
    let m = dims[0];
    let k4 = dims[1] / 4u;
    let n4 = dims[2] / 4u;
    let s = dims[3];
    let col4 = gid.x * {{ cols }}u;
    let row0 = gid.y * {{ rows }}u;
    if (col4 >= n4 || row0 >= m) {
        return;
    }
    // Rows past the end repeat the last one (their results are not written).
    let x_{r} = min(row0 + {r}u, m - 1u) * k4;
    // Where w's columns 4 (col4 + c) .. 4 (col4 + c) + 3 start.
    let w_{c} = (col4 + {c}u) * 4u * s;
    var acc_{r}_{c} = vec4<f32>(0.0);
    for (var i4 = 0u; i4 < k4; i4++) {
        let w0_{c} = vec4<f32>(w[w_{c} + i4]);
        let w1_{c} = vec4<f32>(w[w_{c} + s + i4]);
        let w2_{c} = vec4<f32>(w[w_{c} + 2u * s + i4]);
        let w3_{c} = vec4<f32>(w[w_{c} + 3u * s + i4]);
        let xv_{r} = x[x_{r} + i4];
        acc_{r}_{c} += vec4<f32>(dot(xv_{r}, w0_{c}), dot(xv_{r}, w1_{c}), dot(xv_{r}, w2_{c}), dot(xv_{r}, w3_{c}));
    }
    if (row0 + {r}u < m) { out[(row0 + {r}u) * n4 + col4 + {c}u] = acc_{r}_{c}; }
}
