// Our WGSL matrix product (shaders/matmul_*.wgsl) alone in headless Chromium's WebGPU, at the
// shapes of a training step on SmolLM2's emulator at batch 1 x 64: timed on whatever adapter
// Chromium picks (SwiftShader without a GPU) and checked against a CPU sum. For trying block
// sizes (ROWS rows x COLS vec4 columns per invocation; shipped: 16 x 2 where the shape allows)
// and variants of the kernels (SHADERS=DIR) without building the page. `nn`: c = a x b with b
// [k, n]; `nt`: b given as [n, k] (x W^T: the tied head, the backward pass).
// usage: [ROWS=16] [COLS=2] [SHADERS=DIR] node tools/bench/webgpu_matmul.mjs
import fs from 'node:fs';
import http from 'node:http';
import { chromium } from '../web/node_modules/playwright-core/index.mjs';

// The shipped shaders (or SHADERS=DIR's, to try a variant), filled in and unrolled as
// model::wgsl_matmul does for an f32 weight: a code line holding {r} once per row of the block,
// {c} once per vec4 of columns.
const dir = process.env.SHADERS ?? new URL('../../shaders/', import.meta.url).pathname;
const unroll = (text, rows, cols) => text.split('\n').flatMap((line) => {
  if (line.trimStart().startsWith('//')) return [line];
  const each = (token, count) => (line.includes(token) ? [...Array(count).keys()] : [0]);
  return each('{r}', rows).flatMap((r) => each('{c}', cols).map((c) =>
    line.replaceAll('{r}', r).replaceAll('{c}', c)));
}).join('\n');
const kernel = (layout, rows, cols) => unroll(fs.readFileSync(`${dir}/matmul_${layout}.wgsl`, 'utf8'), rows, cols)
  .replaceAll('{{ enable }}', '').replaceAll('{{ welem }}', 'f32')
  .replaceAll('{{ rows }}', `${rows}`).replaceAll('{{ cols }}', `${cols}`);

// Runs in the page: [layout, m, k, n, rows] cases, each timed over 3 runs after a warm-up.
async function inPage([cases, kernels]) {
  const adapter = await navigator.gpu.requestAdapter();
  const limits = { maxStorageBufferBindingSize: adapter.limits.maxStorageBufferBindingSize,
    maxBufferSize: adapter.limits.maxBufferSize };
  const device = await adapter.requestDevice({ requiredLimits: limits });
  const lines = [`adapter: ${adapter.info.vendor} ${adapter.info.architecture} (software: ${adapter.info.isFallbackAdapter})`];
  for (const [i, [layout, m, k, n, rows, cols]] of cases.entries()) {
    const module = device.createShaderModule({ code: kernels[i] });
    const pipeline = device.createComputePipeline({ layout: 'auto', compute: { module, entryPoint: 'main' } });
    const buffer = (floats, usage) => device.createBuffer({ size: floats * 4, usage });
    const storage = GPUBufferUsage.STORAGE | GPUBufferUsage.COPY_DST | GPUBufferUsage.COPY_SRC;
    const [A, B, C] = [buffer(m * k, storage), buffer(k * n, storage), buffer(m * n, storage)];
    const dims = buffer(4, storage);
    const fa = new Float32Array(m * k).map((_, j) => ((j * 7) % 13) / 13 - 0.5);
    const fb = new Float32Array(k * n).map((_, j) => ((j * 5) % 11) / 11 - 0.5);
    device.queue.writeBuffer(A, 0, fa);
    device.queue.writeBuffer(B, 0, fb);
    device.queue.writeBuffer(dims, 0, new Uint32Array([m, k, n, layout === 'nn' ? n / 4 : k / 4]));
    const bindings = device.createBindGroup({ layout: pipeline.getBindGroupLayout(0),
      entries: [A, B, C, dims].map((b, binding) => ({ binding, resource: { buffer: b } })) });
    const run = async () => {
      const encoder = device.createCommandEncoder();
      const pass = encoder.beginComputePass();
      pass.setPipeline(pipeline);
      pass.setBindGroup(0, bindings);
      pass.dispatchWorkgroups(Math.ceil(n / 4 / cols / 64), Math.ceil(m / rows));
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

// A training step on SmolLM2's emulator at 64 tokens: an MLP projection and its backward, the
// tied head and its backward, a trainable weight's gradient.
const ROWS = Number(process.env.ROWS ?? 16);
const COLS = Number(process.env.COLS ?? 2);
const cases = [['nn', 64, 576, 1536, ROWS, COLS], ['nt', 64, 1536, 576, ROWS, COLS], ['nt', 64, 576, 49152, ROWS, COLS],
  ['nn', 64, 49152, 576, ROWS, COLS], ['nn', 576, 64, 1536, ROWS, COLS]];
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
  console.log(await page.evaluate(inPage, [cases, cases.map(([layout, , , , rows, cols]) => kernel(layout, rows, cols))]));
} finally {
  await browser.close();
  server.close();
}
