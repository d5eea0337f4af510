// Page test: a full data-owner session in headless Chromium (Debian's, driven by
// playwright-core): load the served tiny emulator, choose a private data file, train on WebGPU,
// pause, lose the worker (as on a lost GPU device) and continue from the checkpoint, download
// the adapter; reload and find the checkpoint; a file that is not data gets a clear message;
// without WebGPU the page says so and trains on the CPU (at real size in helper workers that
// share each batch, equal to one worker's run); a diverging run is explained. Every request of the session
// is recorded and the test fails if any leaves the origin, is not a GET, or carries data.
//
// With PAGE_ONLY_URL (a server without an emulator) and EMU_JSON, it also loads the emulator from
// local files; with REAL_URL (a server with SmolLM2's emulator), it trains that on the CPU fallback
// and on WebGPU.
// usage: node tests/page/page-test.mjs BASE_URL DATA_FILE OUT_DIR [PAGE_ONLY_URL EMU_JSON [REAL_URL]]
import { chromium } from '../../tools/web/node_modules/playwright-core/index.mjs';
import { readFileSync, writeFileSync, mkdirSync } from 'node:fs';
import { join } from 'node:path';

const [base, dataFile, out, pageOnly, emuJson, realUrl] = process.argv.slice(2);
if (!base || !dataFile || !out) {
  console.error('usage: node tests/page/page-test.mjs BASE_URL DATA_FILE OUT_DIR');
  process.exit(2);
}
mkdirSync(out, { recursive: true });
const origin = new URL(base).origin;
const data = readFileSync(dataFile, 'utf8');
// Distinctive snippets of the private data: none may appear in any request.
const secrets = ['blue pillar', 'Earl grey', '4-1-7-9', 'Mill Street'];
const flags = ['--no-sandbox', '--disable-dev-shm-usage', '--disable-background-networking',
  '--disable-component-update', '--disable-sync', '--no-first-run'];
const failures = [];
const check = (ok, what) => { if (!ok) failures.push(what); console.log(`${ok ? 'ok  ' : 'FAIL'} ${what}`); };

function record(page, log, site = base) {
  const own = new URL(site).origin;
  page.on('request', (r) => log.push({ own, url: r.url(), method: r.method(), body: r.postData() ?? '' }));
  page.on('worker', (w) => log.push({ own, url: w.url(), method: 'WORKER', body: '' }));
  page.on('console', (m) => {
    const t = m.text();
    if (/Content Security Policy|Refused to/i.test(t)) log.push({ url: 'csp-violation', method: 'BLOCKED', body: t });
    if (m.type() === 'error') console.log(`  [page error] ${t}`);
  });
  page.on('pageerror', (e) => console.log(`  [page exception] ${e.message}`));
}

async function text(page, sel) { return (await page.textContent(sel)) ?? ''; }

async function waitText(page, sel, re, timeout) {
  await page.waitForFunction(([s, src]) => new RegExp(src).test(document.querySelector(s)?.textContent ?? ''),
    [sel, re.source], { timeout });
}

async function setSettings(page, s) {
  for (const [id, v] of Object.entries(s)) await page.fill(`#${id}`, String(v));
}

const log = [];
const metrics = {};
const browser = await chromium.launch({ executablePath: '/usr/bin/chromium', headless: true,
  args: [...flags, '--enable-unsafe-webgpu'] });
try {
  const context = await browser.newContext({ acceptDownloads: true, viewport: { width: 1000, height: 1400 } });
  const page = await context.newPage();
  record(page, log);
  const t0 = Date.now();
  // WebGPU even on Chromium's software adapter (without `?device=webgpu` the page takes the CPU
  // there: checked below).
  await page.goto(`${base}?device=webgpu`);
  await waitText(page, '#emu-info', /Emulator ready/, 120_000);
  metrics.emulator_ready_seconds = (Date.now() - t0) / 1000;
  check((await text(page, '#backend')).includes('WebGPU'), 'trains on WebGPU');

  // Not a data file: a clear message, and the page keeps working.
  await page.setInputFiles('#data-file', { name: 'holiday.txt', mimeType: 'text/plain',
    buffer: Buffer.from([0xff, 0xfe, 0x00, 0x89, 0x50, 0x4e, 0x47]) });
  await page.waitForSelector('#message:not([hidden])', { timeout: 60_000 });
  check(/UTF-8|text/i.test(await text(page, '#message')), `binary data file refused: "${await text(page, '#message')}"`);

  await page.setInputFiles('#data-file', dataFile);
  await waitText(page, '#data-info', /training examples/, 60_000);
  await setSettings(page, { steps: 6, batch: 2, lr: 0.01, 'seq-len': 128, 'lora-rank': 4, 'held-out': 0.25 });
  const tTrain = Date.now();
  await page.click('#train-btn');
  await waitText(page, '#train-stats', /step 1\//, 300_000);
  metrics.first_step_seconds = (Date.now() - tTrain) / 1000;
  // Pause (saves a checkpoint), then the worker dies as on a lost GPU device; the page offers a
  // restart, which reloads everything and continues from the checkpoint.
  await waitText(page, '#train-stats', /step 2\//, 300_000);
  await page.click('#pause-btn');
  await waitText(page, '#train-stats', /Paused at step/, 300_000);
  const firstPause = Number(/Paused at step (\d+)/.exec(await text(page, '#train-stats'))[1]);
  await page.click('#continue-btn');
  await waitText(page, '#train-stats', new RegExp(`step ${firstPause + 1}/`), 300_000);
  check(true, `paused at step ${firstPause} and continued`);
  await page.click('#pause-btn');
  await waitText(page, '#train-stats', /Paused at step/, 300_000);
  const pausedAt = Number(/Paused at step (\d+)/.exec(await text(page, '#train-stats'))[1]);
  const [worker] = page.workers();
  await worker.evaluate(() => { setTimeout(() => { throw new Error('GPU device lost (simulated by the page test)'); }); });
  await page.waitForSelector('#restart-btn:not([hidden])', { timeout: 60_000 });
  check(/restart to continue/.test(await text(page, '#message')), `a dead worker is reported: "${await text(page, '#message')}"`);
  await page.click('#restart-btn');
  await waitText(page, '#eval', /at resume/, 300_000);
  await waitText(page, '#train-stats', /Finished/, 600_000);
  metrics.train_seconds = (Date.now() - tTrain) / 1000;
  const stats = await text(page, '#train-stats');
  metrics.stats = stats;
  check(/Finished after 6 steps/.test(stats), `resumed from step ${pausedAt} and finished: ${stats}`);
  const curve = (await page.getAttribute('#loss-line', 'points')).trim().split(/\s+/).length;
  check(curve === 6, `the loss curve continues across the resume: ${curve} of 6 steps drawn`);
  const tps = /([\d.]+) tokens\/s/.exec(stats);
  metrics.tokens_per_second = tps ? Number(tps[1]) : null;
  await waitText(page, '#eval', /after/, 60_000);
  metrics.eval = await text(page, '#eval');
  const losses = [...metrics.eval.matchAll(/loss (?:at resume|after): ([\d.]+)/g)].map((m) => Number(m[1]));
  check(losses.length === 2 && losses[1] < losses[0], `held-out loss falls: ${metrics.eval}`);
  await page.screenshot({ path: join(out, 'page-after-training.png'), fullPage: true });

  const [download] = await Promise.all([page.waitForEvent('download', { timeout: 60_000 }), page.click('#download-btn')]);
  await download.saveAs(join(out, 'adapter.safetensors'));
  check(/\.safetensors$/.test(download.suggestedFilename()), `adapter downloaded as ${download.suggestedFilename()}`);

  // The checkpoint survives a reload.
  await page.reload();
  await waitText(page, '#emu-info', /Emulator ready/, 120_000);
  await page.setInputFiles('#data-file', dataFile);
  await page.waitForSelector('#ckpt:not([hidden])', { timeout: 60_000 });
  check(/step 6\/6/.test(await text(page, '#ckpt-info')), `checkpoint found after reload: ${await text(page, '#ckpt-info')}`);
  await context.close();
} finally {
  await browser.close();
}

// Without WebGPU: a clear notice, and training still works on the CPU backend in wasm.
const noGpu = await chromium.launch({ executablePath: '/usr/bin/chromium', headless: true,
  args: [...flags, '--disable-webgpu'] });
try {
  const page = await noGpu.newPage();
  record(page, log);
  await page.goto(base);
  await page.waitForSelector('#notice:not([hidden])', { timeout: 120_000 });
  check(/no WebGPU|WebGPU/i.test(await text(page, '#notice')), `no-WebGPU notice: "${await text(page, '#notice')}"`);
  check((await text(page, '#backend')).includes('CPU'), 'falls back to the CPU backend');
  await waitText(page, '#emu-info', /Emulator ready/, 120_000);
  await page.setInputFiles('#data-file', dataFile);
  await waitText(page, '#data-info', /training examples/, 60_000);
  const cpuRun = { steps: 2, batch: 2, lr: 0.01, 'seq-len': 128, 'lora-rank': 4 };
  await setSettings(page, cpuRun);
  // A fresh run (the checkpoint of the WebGPU run lives in another browser profile anyway).
  await page.click('#train-btn');
  await waitText(page, '#train-stats', /Finished/, 600_000);
  await waitText(page, '#eval', /after/, 300_000);
  check(true, 'trained 2 steps on the CPU fallback');
  // The tiny emulator trains on one worker (helpers pay only for larger models); asked for
  // two (the page's ?workers=2), a helper worker shares each batch, and the run is the same:
  // held-out loss after training equal to the 4 decimals shown.
  check(/one core/.test(await text(page, '#backend')), `tiny emulator: ${await text(page, '#backend')}`);
  const after = async (p) => Number((/loss after: ([\d.]+)/.exec(await text(p, '#eval')) ?? [])[1]);
  const two = await noGpu.newPage();
  record(two, log);
  await two.goto(`${base}?workers=2`);
  await waitText(two, '#emu-info', /Emulator ready/, 120_000);
  await two.setInputFiles('#data-file', dataFile);
  await waitText(two, '#data-info', /training examples/, 60_000);
  await setSettings(two, cpuRun);
  await two.click('#train-btn');
  await waitText(two, '#eval', /after/, 600_000);
  const [single, shared] = [await after(page), await after(two)];
  check(Math.abs(shared - single) <= 2e-4 && /2 workers sharing each batch/.test(await text(two, '#backend')),
    `helper workers train the same run: held-out loss after ${shared} (2 workers) vs ${single} (one)`);
  await two.close();
  // Stop ends a run early and keeps what was learned.
  await setSettings(page, { steps: 50 });
  await page.click('#train-btn');
  // Any step shown (a fast step 1 can be gone before the next poll).
  await waitText(page, '#train-stats', /step \d+\/50/, 300_000);
  await page.click('#stop-btn');
  await waitText(page, '#train-stats', /Stopped after \d+ steps/, 300_000);
  check(await page.isEnabled('#download-btn'), `stopped early, adapter ready: ${await text(page, '#train-stats')}`);
  // A learning rate that blows up: a clear message, the last good adapters kept.
  await setSettings(page, { steps: 3, lr: 1e30 });
  await page.click('#train-btn');
  await page.waitForSelector('#message:not([hidden])', { timeout: 300_000 });
  check(/diverged/.test(await text(page, '#message')), `divergence explained: "${await text(page, '#message')}"`);
} finally {
  await noGpu.close();
}

// At real size (REAL_URL: a server with SmolLM2's emulator), on the CPU fallback and on WebGPU:
// the page loads the real emulator, trains two optimizer steps and shows the held-out loss before
// and after (WebGPU at batch 1 x 16: our WGSL product keeps that to minutes on a software GPU).
async function realSize(device) {
  const webgpu = device === 'webgpu';
  const real = await chromium.launch({ executablePath: '/usr/bin/chromium', headless: true,
    args: [...flags, webgpu ? '--enable-unsafe-webgpu' : '--disable-webgpu'] });
  try {
    const page = await real.newPage();
    record(page, log, realUrl);
    const t0 = Date.now();
    await page.goto(webgpu ? `${realUrl}?device=webgpu` : realUrl);
    await waitText(page, '#emu-info', /Emulator ready/, 600_000);
    metrics[`real_${device}_emulator_ready_seconds`] = (Date.now() - t0) / 1000;
    const info = await text(page, '#emu-info');
    check(/\d+\.\dM parameters of the full model's 134\.5M/.test(info), `SmolLM2's emulator loaded: ${info}`);
    const name = webgpu ? 'WebGPU' : 'CPU';
    check((await text(page, '#backend')).includes(name), `real size: on ${name}`);
    const cores = await page.evaluate(() => navigator.hardwareConcurrency);
    await page.setInputFiles('#data-file', dataFile);
    await waitText(page, '#data-info', /training examples/, 60_000);
    await setSettings(page, webgpu
      ? { steps: 2, batch: 1, lr: 0.001, 'seq-len': 16, 'lora-rank': 8, 'held-out': 0.25 }
      : { steps: 2, batch: 2, lr: 0.001, 'seq-len': 32, 'lora-rank': 8, 'held-out': 0.25 });
    const tTrain = Date.now();
    await page.click('#train-btn');
    await waitText(page, '#train-stats', /Finished after 2 steps/, 900_000);
    await waitText(page, '#eval', /after/, 300_000);
    metrics[`real_${device}_train_seconds`] = (Date.now() - tTrain) / 1000;
    metrics[`real_${device}_stats`] = await text(page, '#train-stats');
    const evalText = metrics[`real_${device}_eval`] = await text(page, '#eval');
    const losses = [...evalText.matchAll(/loss (?:before|after): ([\d.]+)/g)].map((m) => Number(m[1]));
    check(losses.length === 2 && losses.every((l) => l > 0 && l < 20),
      `real size, 2 steps on ${name}, held-out loss before and after: ${evalText}`);
    // With more than one core, helper workers share each batch of the real emulator.
    const backend = metrics[`real_${device}_backend`] = await text(page, '#backend');
    if (!webgpu) check(cores < 2 || /\d workers sharing each batch/.test(backend), `real size, ${cores} cores: ${backend}`);
  } finally {
    await real.close();
  }
}
if (realUrl) {
  await realSize('cpu');
  await realSize('webgpu');
}

// A site without an emulator: the page asks for the files, and loads them from disk.
if (pageOnly) {
  const local = await chromium.launch({ executablePath: '/usr/bin/chromium', headless: true, args: [...flags, '--enable-unsafe-webgpu'] });
  try {
    const page = await local.newPage();
    record(page, log, pageOnly);
    await page.goto(pageOnly);
    await page.waitForSelector('#emu-local:not([hidden])', { timeout: 120_000 });
    await page.setInputFiles('#emu-files', [emuJson, emuJson.replace(/\.json$/, '.safetensors')]);
    await waitText(page, '#emu-info', /Emulator ready/, 120_000);
    check(true, 'emulator loaded from local files');
    // Without a GPU, Chromium's WebGPU adapter is SwiftShader: the page trains on the CPU and
    // says why; on a GPU it takes WebGPU.
    const software = await page.evaluate(async () => (await navigator.gpu?.requestAdapter())?.info?.isFallbackAdapter === true);
    const [backend, notice] = [await text(page, '#backend'), await text(page, '#notice')];
    check(software ? /CPU/.test(backend) && /software renderer/.test(notice) : /WebGPU/.test(backend),
      `${software ? 'a software' : 'a GPU'} WebGPU adapter picks the ${software ? 'CPU' : 'GPU'}: "${backend}" / "${notice}"`);
  } finally {
    await local.close();
  }
}

// Privacy: every request went to the page's own origin, read-only, without the data.
const offOrigin = log.filter((r) => r.method !== 'BLOCKED' && !r.url.startsWith(r.own ?? origin) && !r.url.startsWith('blob:') && !r.url.startsWith('data:'));
const blocked = log.filter((r) => r.method === 'BLOCKED');
const writes = log.filter((r) => !['GET', 'WORKER'].includes(r.method) && r.method !== 'BLOCKED');
const leaks = log.filter((r) => secrets.some((s) => r.url.includes(s) || r.body.includes(s) || r.url.includes(encodeURIComponent(s))));
check(log.length > 0, `${log.length} requests recorded`);
check(offOrigin.length === 0, `no request leaves its page's origin ${JSON.stringify(offOrigin)}`);
check(blocked.length === 0, `no CSP violation ${JSON.stringify(blocked)}`);
check(writes.length === 0, `only GET requests ${JSON.stringify(writes)}`);
check(leaks.length === 0, `no request carries the data ${JSON.stringify(leaks)}`);
check(data.length > 0, 'data file read');
writeFileSync(join(out, 'requests.json'), JSON.stringify(log, null, 1));
writeFileSync(join(out, 'page-metrics.json'), JSON.stringify(metrics, null, 1));
console.log(JSON.stringify(metrics));
if (failures.length) {
  console.error(`page test: ${failures.length} check(s) failed`);
  process.exit(1);
}
console.log('page test passed');
