// Browser training throughput: drives the served page in headless Chromium (WebGPU; SwiftShader
// without a GPU), trains whole adapter layers on a plain-text file, prints tokens/s and the time
// to the first step as JSON. usage: node browser_train.mjs URL TEXT_FILE STEPS BATCH LEN
import { chromium } from '../web/node_modules/playwright-core/index.mjs';

const [url, file, steps, batch, len] = process.argv.slice(2);
const browser = await chromium.launch({ executablePath: '/usr/bin/chromium', headless: true,
  args: ['--no-sandbox', '--disable-dev-shm-usage', '--enable-unsafe-webgpu', '--no-first-run'] });
const wait = (page, sel, re, timeout) => page.waitForFunction(([s, src]) =>
  new RegExp(src).test(document.querySelector(s)?.textContent ?? ''), [sel, re.source], { timeout });
try {
  const page = await browser.newPage();
  page.on('console', (m) => { if (m.type() === 'error') console.error(`[page] ${m.text()}`); });
  const t0 = Date.now();
  await page.goto(url);
  await wait(page, '#emu-info', /Emulator ready/, 900_000);
  const loadSeconds = (Date.now() - t0) / 1000;
  await page.setInputFiles('#data-file', file);
  await wait(page, '#data-info', /training examples/, 300_000);
  for (const [id, v] of Object.entries({ steps, batch, 'seq-len': len, 'lora-rank': 0, 'held-out': 0.05, lr: 1e-4 })) {
    await page.fill(`#${id}`, String(v));
  }
  const t1 = Date.now();
  await page.click('#train-btn');
  await wait(page, '#train-stats', /step 1\//, 1_800_000);
  const firstStep = (Date.now() - t1) / 1000;
  await wait(page, '#train-stats', /Finished/, 3_600_000);
  const total = (Date.now() - t1) / 1000;
  const stats = await page.textContent('#train-stats');
  const backend = await page.textContent('#backend');
  const tps = Number((/([\d.]+) tokens\/s/.exec(stats) ?? [])[1]);
  // Steady state: the steps after the first (which compiles the GPU kernels).
  const steady = (Number(steps) - 1) * Number(batch) * Number(len) / Math.max(total - firstStep, 1e-9);
  console.log(JSON.stringify({ impl: 'browser (wasm + WebGPU)', backend, load_seconds: loadSeconds,
    first_step_seconds: firstStep, tokens_per_second_incl_first: tps, tokens_per_second: steady }));
} finally {
  await browser.close();
}
