// out = x · w for a frozen weight w stored row-major [k, n] (rows `w_stride` vec4s apart), read as
// {{ welem }} and multiplied in f32. Each invocation computes ROWS rows x 4 columns; no workgroup
// memory or barriers (see shaders/README.md for where this beats burn's product).
{{ enable }}
// Every binding is read_write: cubecl suballocates tensors from shared buffers, and WebGPU refuses
// one buffer bound read-only and writable in the same dispatch.
@group(0) @binding(0) var<storage, read_write> x: array<f32>;
@group(0) @binding(1) var<storage, read_write> w: array<vec4<{{ welem }}>>;
@group(0) @binding(2) var<storage, read_write> out: array<vec4<f32>>;
// m, k, n, the stride between w's rows in vec4s
@group(0) @binding(3) var<storage, read_write> dims: array<u32>;

const ROWS: u32 = {{ rows }}u;

@compute @workgroup_size(64)
fn main(@builtin(global_invocation_id) gid: vec3<u32>) {
    let m = dims[0];
    let k = dims[1];
    let n4 = dims[2] / 4u;
    let w_stride = dims[3];
    let col4 = gid.x;
    let row0 = gid.y * ROWS;
    if (col4 >= n4 || row0 >= m) {
        return;
    }
    var acc: array<vec4<f32>, ROWS>;
    for (var i = 0u; i < k; i++) {
        let wv = vec4<f32>(w[i * w_stride + col4]);
        for (var r = 0u; r < ROWS; r++) {
            acc[r] += x[min(row0 + r, m - 1u) * k + i] * wv;
        }
    }
    for (var r = 0u; r < ROWS; r++) {
        if (row0 + r < m) {
            out[(row0 + r) * n4 + col4] = acc[r];
        }
    }
}
