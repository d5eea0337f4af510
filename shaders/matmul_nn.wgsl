// out = x · w for a weight w stored row-major [k, n] (rows `s` vec4s apart), read as {{ welem }}
// and multiplied in f32. Each invocation computes a block of rows x (4 x cols) columns, four
// elements of k per iteration; no workgroup memory or barriers (shaders/README.md says why).
// A line holding `{r}` is written once per row of the block, `{c}` once per vec4 of columns
// (model::wgsl_matmul unrolls them): each accumulator is its own variable, never an array
// indexed in a loop, which a software GPU would keep in memory.
{{ enable }}
// Every binding is read_write: cubecl suballocates tensors from shared buffers, and WebGPU refuses
// one buffer bound read-only and writable in the same dispatch.
@group(0) @binding(0) var<storage, read_write> x: array<vec4<f32>>;
@group(0) @binding(1) var<storage, read_write> w: array<vec4<{{ welem }}>>;
@group(0) @binding(2) var<storage, read_write> out: array<vec4<f32>>;
// m, k, n, the stride between w's rows in vec4s
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
    var acc_{r}_{c} = vec4<f32>(0.0);
    var at = col4;
    for (var i4 = 0u; i4 < k4; i4++) {
        let w0_{c} = vec4<f32>(w[at + {c}u]);
        let w1_{c} = vec4<f32>(w[at + s + {c}u]);
        let w2_{c} = vec4<f32>(w[at + 2u * s + {c}u]);
        let w3_{c} = vec4<f32>(w[at + 3u * s + {c}u]);
        at += 4u * s;
        let xv_{r} = x[x_{r} + i4];
        acc_{r}_{c} += xv_{r}.x * w0_{c} + xv_{r}.y * w1_{c} + xv_{r}.z * w2_{c} + xv_{r}.w * w3_{c};
    }
    if (row0 + {r}u < m) { out[(row0 + {r}u) * n4 + col4 + {c}u] = acc_{r}_{c}; }
}
