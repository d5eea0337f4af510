// A hand-written WGSL matrix product in headless Chromium's WebGPU, at the shapes of a training
// step on SmolLM2's emulator (16 rows: batch x length): the candidate kernel for shaders/, timed
// on whatever adapter Chromium picks (SwiftShader without a GPU) and checked against a CPU sum.
// Compare with burn's own kernel on the same device natively (docs/results.md, "WebGPU on a
// software adapter"). Each invocation computes ROWS rows x 4 columns (vec4), no workgroup
// memory or barriers; `nn`: c = a x b with b [k, n]; `nt`: b given as [n, k] (x W^T, the head).
// usage: node tools/bench/webgpu_matmul.mjs
import http from 'node:http';
import { chromium } from '../web/node_modules/playwright-core/index.mjs';

const kernel = (layout, rows) => `
@group(0) @binding(0) var<storage, read> a: array<f32>;
@group(0) @binding(1) var<storage, read> b: array<vec4<f32>>;
@group(0) @binding(2) var<storage, read_write> c: array<vec4<f32>>;
@group(0) @binding(3) var<uniform> dims: vec4<u32>; // m, k, n
@compute @workgroup_size(64)
fn main(@builtin(global_invocation_id) gid: vec3<u32>) {
  let m = dims.x; let k = dims.y; let n = dims.z;
  let col4 = gid.x; let row0 = gid.y * ${rows}u;
  if (col4 * 4u >= n) { return; }
  var acc: array<vec4<f32>, ${rows}>;
  ${layout === 'nn' ? `
  for (var i = 0u; i < k; i++) {
    let bv = b[i * (n / 4u) + col4];
    for (var r = 0u; r < ${rows}u; r++) { acc[r] += a[min(row0 + r, m - 1u) * k + i] * bv; }
  }` : `
  for (var i4 = 0u; i4 < k / 4u; i4++) {
    let b0 = b[(col4 * 4u) * (k / 4u) + i4];
    let b1 = b[(col4 * 4u + 1u) * (k / 4u) + i4];
    let b2 = b[(col4 * 4u + 2u) * (k / 4u) + i4];
    let b3 = b[(col4 * 4u + 3u) * (k / 4u) + i4];
    for (var r = 0u; r < ${rows}u; r++) {
      let j = min(row0 + r, m - 1u) * k + i4 * 4u;
      let av = vec4<f32>(a[j], a[j + 1u], a[j + 2u], a[j + 3u]);
      acc[r] += vec4<f32>(dot(av, b0), dot(av, b1), dot(av, b2), dot(av, b3));
    }
  }`}
  for (var r = 0u; r < ${rows}u; r++) {
    if (row0 + r < m) { c[(row0 + r) * (n / 4u) + col4] = acc[r]; }
  }
}`;

// Runs in the page: [layout, m, k, n, rows] cases, each timed over 3 runs after a warm-up.
async function inPage([cases, kernels]) {
  const adapter = await navigator.gpu.requestAdapter();
  const limits = { maxStorageBufferBindingSize: adapter.limits.maxStorageBufferBindingSize,
    maxBufferSize: adapter.limits.maxBufferSize };
  const device = await adapter.requestDevice({ requiredLimits: limits });
  const lines = [`adapter: ${adapter.info.vendor} ${adapter.info.architecture} (software: ${adapter.info.isFallbackAdapter})`];
  for (const [i, [layout, m, k, n, rows]] of cases.entries()) {
    const module = device.createShaderModule({ code: kernels[i] });
    const pipeline = device.createComputePipeline({ layout: 'auto', compute: { module, entryPoint: 'main' } });
    const buffer = (floats, usage) => device.createBuffer({ size: floats * 4, usage });
    const storage = GPUBufferUsage.STORAGE | GPUBufferUsage.COPY_DST | GPUBufferUsage.COPY_SRC;
    const [A, B, C] = [buffer(m * k, storage), buffer(k * n, storage), buffer(m * n, storage)];
    const dims = device.createBuffer({ size: 16, usage: GPUBufferUsage.UNIFORM | GPUBufferUsage.COPY_DST });
    const fa = new Float32Array(m * k).map((_, j) => ((j * 7) % 13) / 13 - 0.5);
    const fb = new Float32Array(k * n).map((_, j) => ((j * 5) % 11) / 11 - 0.5);
    device.queue.writeBuffer(A, 0, fa);
    device.queue.writeBuffer(B, 0, fb);
    device.queue.writeBuffer(dims, 0, new Uint32Array([m, k, n, 0]));
    const bindings = device.createBindGroup({ layout: pipeline.getBindGroupLayout(0),
      entries: [A, B, C, dims].map((b, binding) => ({ binding, resource: { buffer: b } })) });
    const run = async () => {
      const encoder = device.createCommandEncoder();
      const pass = encoder.beginComputePass();
      pass.setPipeline(pipeline);
      pass.setBindGroup(0, bindings);
      pass.dispatchWorkgroups(Math.ceil(n / 4 / 64), Math.ceil(m / rows));
      pass.end();
      device.queue.submit([encoder.finish()]);
      await device.queue.onSubmittedWorkDone();
    };
    await run();
    const start = performance.now();
    for (let r = 0; r < 3; r++) await run();
    const ms = (performance.now() - start) / 3;
    const read = device.createBuffer({ size: m * n * 4, usage: GPUBufferUsage.MAP_READ | GPUBufferUsage.COPY_DST });
    const encoder = device.createCommandEncoder();
    encoder.copyBufferToBuffer(C, 0, read, 0, m * n * 4);
    device.queue.submit([encoder.finish()]);
    await read.mapAsync(GPUMapMode.READ);
    const c = new Float32Array(read.getMappedRange());
    let worst = 0;
    for (const [row, col] of [[0, 0], [m - 1, n - 3], [m >> 1, n >> 1]]) {
      let sum = 0;
      for (let j = 0; j < k; j++) sum += fa[row * k + j] * (layout === 'nn' ? fb[j * n + col] : fb[col * k + j]);
      worst = Math.max(worst, Math.abs(c[row * n + col] - sum));
    }
    lines.push(`${layout} [${m},${k}]x[${k},${n}] rows ${rows}: ${ms.toFixed(1)} ms, `
      + `${(2 * m * k * n / ms / 1e6).toFixed(2)} GFLOP/s, max error ${worst.toExponential(1)}`);
  }
  return lines.join('\n');
}

const cases = [['nn', 16, 576, 1536, 8], ['nt', 16, 576, 1536, 4], ['nn', 16, 576, 49152, 8],
  ['nt', 16, 576, 49152, 4], ['nn', 128, 576, 1536, 8]];
const server = http.createServer((_, res) => {
  res.writeHead(200, { 'content-type': 'text/html' });
  res.end('<!doctype html><title>matmul</title>');
}).listen(0, '127.0.0.1');
const browser = await chromium.launch({ executablePath: '/usr/bin/chromium', headless: true,
  args: ['--no-sandbox', '--disable-dev-shm-usage', '--enable-unsafe-webgpu',
    ...(process.env.CHROMIUM_FLAGS ?? '').split(' ').filter(Boolean)] });
try {
  const page = await browser.newPage();
  await page.goto(`http://127.0.0.1:${server.address().port}/`);
  console.log(await page.evaluate(inPage, [cases, cases.map(([layout, , , , rows]) => kernel(layout, rows))]));
} finally {
  await browser.close();
  server.close();
}
