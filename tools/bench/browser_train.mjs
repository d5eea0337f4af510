// Browser training throughput: drives the served page in headless Chromium, trains the adapters
// on a plain-text file and prints one JSON line: tokens/s (batch x length per step, timed from the
// end of step 1 to the end of the last, as `scaleot bench-train` times its steps), the first
// step's time, and the peak memory of Chromium's processes.
// DEVICE webgpu: WebGPU (SwiftShader without a GPU, the machine's GPU with one); cpu: Chromium
// without WebGPU, so the page falls back to its wasm CPU backend. CHROMIUM_FLAGS: more switches.
// WORKERS=N: the CPU fallback trains in N workers sharing each batch (the page's `?workers=N`;
// default one per core).
// usage: node browser_train.mjs URL TEXT_FILE STEPS BATCH LEN LORA_RANK DEVICE
import { readFileSync, readdirSync } from 'node:fs';
import { chromium } from '../web/node_modules/playwright-core/index.mjs';

const [url, file, steps, batch, len, loraRank, device] = process.argv.slice(2);
if (!['webgpu', 'cpu'].includes(device)) throw new Error(`DEVICE must be webgpu or cpu, not ${device}`);
const args = ['--no-sandbox', '--disable-dev-shm-usage', '--no-first-run'];
if (device === 'webgpu') args.push('--enable-unsafe-webgpu');
// Extra Chromium switches for experiments, e.g. --enable-dawn-features=disable_robustness.
args.push(...(process.env.CHROMIUM_FLAGS ?? '').split(' ').filter(Boolean));
const server = await chromium.launchServer({ executablePath: '/usr/bin/chromium', headless: true, args });
const browser = await chromium.connect(server.wsEndpoint());

// Peak resident memory (VmHWM) of every process under Chromium's, in MiB, by process type.
// Processes peak at different moments, so the total is an upper bound of the joint peak.
const peakMiB = (root) => {
  const byType = {};
  const visit = (pid) => {
    let status, cmdline;
    try {
      status = readFileSync(`/proc/${pid}/status`, 'utf8');
      cmdline = readFileSync(`/proc/${pid}/cmdline`, 'utf8');
    } catch { return; }
    const kib = Number((/VmHWM:\s+(\d+)/.exec(status) ?? [])[1] ?? 0);
    const type = (/--type=([\w-]+)/.exec(cmdline) ?? [])[1] ?? 'browser';
    byType[type] = (byType[type] ?? 0) + kib / 1024;
    for (const tid of readdirSync(`/proc/${pid}/task`)) {
      let children = '';
      try { children = readFileSync(`/proc/${pid}/task/${tid}/children`, 'utf8'); } catch { /* gone */ }
      for (const c of children.split(' ').filter(Boolean)) visit(c);
    }
  };
  visit(root);
  return byType;
};

// An error the page shows (#message), e.g. an emulator refused as too large for this device.
class PageRefused extends Error {}
// Waits until `sel` shows `re`; an error the page shows instead ends the run with its message.
const wait = async (page, sel, re, timeout) => {
  const seen = await page.waitForFunction(([s, src]) => {
    const m = document.querySelector('#message');
    if (m && !m.hidden && m.textContent.trim()) return { error: m.textContent.trim() };
    return new RegExp(src).test(document.querySelector(s)?.textContent ?? '') && {};
  }, [sel, re.source], { timeout, polling: 50 });
  const { error } = await seen.jsonValue();
  if (error) throw new PageRefused(error);
};
// What the page says, every minute, on stderr (a long run shows where it is).
const say = async (page) => console.error(`[page] ${(await Promise.all(['#emu-info', '#data-info', '#train-stats']
  .map((s) => page.textContent(s).catch(() => '')))).map((t) => (t ?? '').trim().slice(0, 100)).join(' | ')}`);
try {
  const page = await browser.newPage();
  page.on('console', (m) => { if (m.type() === 'error') console.error(`[page] ${m.text()}`); });
  page.on('pageerror', (e) => console.error(`[page] ${e}`));
  const ticker = setInterval(() => say(page).catch(() => {}), 60_000);
  ticker.unref();
  const t0 = Date.now();
  // WebGPU even on a software adapter (the page would take the CPU there).
  const query = new URLSearchParams({ device });
  if (process.env.WORKERS) query.set('workers', process.env.WORKERS);
  await page.goto(`${url}?${query}`);
  await wait(page, '#emu-info', /Emulator ready/, 1_800_000);
  const loadSeconds = (Date.now() - t0) / 1000;
  const backend = (await page.textContent('#backend')).trim();
  if ((device === 'webgpu') !== /device: WebGPU/.test(backend)) throw new Error(`asked for ${device}, the page says: ${backend}`);
  // Which GPU WebGPU runs on (SwiftShader is Chromium's software one).
  const adapter = await page.evaluate(async () => {
    const a = await navigator.gpu?.requestAdapter();
    return a ? [a.info.vendor, a.info.architecture, a.info.description].filter(Boolean).join(' ') : null;
  });
  await page.setInputFiles('#data-file', file);
  await wait(page, '#data-info', /training examples/, 300_000);
  for (const [id, v] of Object.entries({ steps, batch, 'seq-len': len, 'lora-rank': loraRank, 'held-out': process.env.HELD_OUT ?? 0.05, lr: 1e-4 })) {
    await page.fill(`#${id}`, String(v));
  }
  // Each step's end, as the page shows it: an observer records the first time each "step k/"
  // appears (a fast step can replace the text before any poll would see it).
  await page.evaluate(() => {
    window.stepTimes = {};
    const stats = document.querySelector('#train-stats');
    new MutationObserver(() => {
      const k = (/step (\d+)\//.exec(stats.textContent) ?? [])[1];
      if (k && !(k in window.stepTimes)) window.stepTimes[k] = performance.now();
    }).observe(stats, { childList: true, characterData: true, subtree: true });
    window.trainClicked = performance.now();
  });
  await page.click('#train-btn');
  await wait(page, '#train-stats', /Finished|Stopped/, 7_200_000);
  const [clicked, times] = await page.evaluate(() => [window.trainClicked, window.stepTimes]);
  // On the CPU fallback the page names its workers once training starts.
  const trainedOn = (await page.textContent('#backend')).trim();
  const [first, last] = [times['1'], times[String(steps)]];
  if (first === undefined || last === undefined) throw new Error(`steps seen: ${JSON.stringify(times)}`);
  const firstStep = (first - clicked) / 1000;
  const steady = (Number(steps) - 1) * Number(batch) * Number(len) / Math.max((last - first) / 1000, 1e-9);
  const memory = peakMiB(server.process().pid);
  const total = Object.values(memory).reduce((a, b) => a + b, 0);
  console.log(JSON.stringify({ impl: `browser (${trainedOn})`, device, adapter, load_seconds: loadSeconds,
    first_step_seconds: firstStep, tokens_per_second: steady, peak_rss_mib: total,
    peak_rss_mib_by_process: memory }));
} catch (e) {
  // What the page refused (its own message) is a result: one JSON line saying so.
  if (!(e instanceof PageRefused)) throw e;
  console.log(JSON.stringify({ impl: 'browser', device, refused: e.message }));
} finally {
  await browser.close();
  await server.close();
}
