// out = x · w for a frozen weight w given transposed: w's column j is row j of a row-major
// [n, k] matrix (rows `w_stride` vec4s apart), read as {{ welem }} and multiplied in f32: the
// tied vocabulary head and the backward pass's products. Each invocation computes ROWS rows x
// 4 columns, reading x and w four elements of k at a time; no workgroup memory or barriers.
{{ enable }}
// Every binding is read_write: cubecl suballocates tensors from shared buffers, and WebGPU refuses
// one buffer bound read-only and writable in the same dispatch.
@group(0) @binding(0) var<storage, read_write> x: array<vec4<f32>>;
@group(0) @binding(1) var<storage, read_write> w: array<vec4<{{ welem }}>>;
@group(0) @binding(2) var<storage, read_write> out: array<vec4<f32>>;
// m, k, n, the stride between w's columns in vec4s
@group(0) @binding(3) var<storage, read_write> dims: array<u32>;

const ROWS: u32 = {{ rows }}u;

@compute @workgroup_size(64)
fn main(@builtin(global_invocation_id) gid: vec3<u32>) {
    let m = dims[0];
    let k4 = dims[1] / 4u;
    let n4 = dims[2] / 4u;
    let w_stride = dims[3];
    let col4 = gid.x;
    let row0 = gid.y * ROWS;
    if (col4 >= n4 || row0 >= m) {
        return;
    }
    let j = col4 * 4u * w_stride;
    var acc: array<vec4<f32>, ROWS>;
    for (var i4 = 0u; i4 < k4; i4++) {
        let w0 = vec4<f32>(w[j + i4]);
        let w1 = vec4<f32>(w[j + w_stride + i4]);
        let w2 = vec4<f32>(w[j + 2u * w_stride + i4]);
        let w3 = vec4<f32>(w[j + 3u * w_stride + i4]);
        for (var r = 0u; r < ROWS; r++) {
            let xv = x[min(row0 + r, m - 1u) * k4 + i4];
            acc[r] += vec4<f32>(dot(xv, w0), dot(xv, w1), dot(xv, w2), dot(xv, w3));
        }
    }
    for (var r = 0u; r < ROWS; r++) {
        if (row0 + r < m) {
            out[(row0 + r) * n4 + col4] = acc[r];
        }
    }
}
