// Starts the page's wasm module (a same-origin script: the CSP forbids inline ones).
import init from './scaleot.js';
await init({ module_or_path: new URL('./scaleot_bg.wasm', import.meta.url) });
