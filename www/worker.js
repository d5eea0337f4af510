// The training worker: the same wasm module; its start function sees a worker scope and
// runs the trainer instead of the page.
import init from './scaleot.js';
await init({ module_or_path: new URL('./scaleot_bg.wasm', import.meta.url) });
