#!/usr/bin/env bash
# Idempotent setup of the browser toolchain on a fresh Debian 12 machine (registries only):
# Debian chromium + chromedriver (headless tests, SwiftShader WebGPU), npm binaryen 132
# (wasm-opt; Debian's 108 silently breaks wasm-bindgen 0.2.130 output), npm playwright-core
# (page tests; never downloads a browser), wasm-bindgen-cli matching Cargo.lock, and trunk.
# Each step is skipped when its tool is already there at the pinned version.
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$HOME/.cargo/bin:/usr/local/bin:$PATH"
export DEBIAN_FRONTEND=noninteractive
WASM_BINDGEN_VERSION=0.2.130
TRUNK_VERSION=0.22.1
BINARYEN_VERSION=132.0.0
PLAYWRIGHT_VERSION=1.58.2  # keep equal to tools/web/package.json
JOBS="${CARGO_BUILD_JOBS:-2}"
# The tools are built without optimisation (`cargo install --debug`, no debug info): they only
# orchestrate (trunk) or rewrite one wasm file (wasm-bindgen), and an unoptimised build takes
# about half the time of a release one on a fresh 2-core machine.
export CARGO_PROFILE_DEV_DEBUG=0
log() { printf '==> %s\n' "$*" >&2; }

need=()
for p in chromium chromium-driver; do dpkg -s "$p" >/dev/null 2>&1 || need+=("$p"); done
if ((${#need[@]})); then
  log "apt-get install ${need[*]}"
  apt-get -o DPkg::Lock::Timeout=600 install -y -qq --no-install-recommends "${need[@]}" || {
    apt-get update -qq && apt-get install -y -qq --no-install-recommends "${need[@]}"; }
fi

# npm tools live in tools/web/node_modules (git-ignored), pinned in tools/web/package.json.
if ! tools/web/node_modules/.bin/wasm-opt --version 2>/dev/null | grep -q "version ${BINARYEN_VERSION%%.*}\b" \
   || [[ ! -d tools/web/node_modules/playwright-core ]]; then
  log "npm install binaryen@$BINARYEN_VERSION playwright-core@$PLAYWRIGHT_VERSION"
  (cd tools/web && npm install --no-audit --no-fund --loglevel=error)
fi

if ! wasm-bindgen --version 2>/dev/null | grep -qx "wasm-bindgen $WASM_BINDGEN_VERSION"; then
  log "cargo install wasm-bindgen-cli $WASM_BINDGEN_VERSION (~8 min on 2 cores)"
  # No --locked: its lock pins a webpki-roots version the registry lacks.
  cargo +stable install wasm-bindgen-cli --version "$WASM_BINDGEN_VERSION" --force --debug -j "$JOBS"
fi

if ! trunk --version 2>/dev/null | grep -q "trunk $TRUNK_VERSION\b"; then
  # trunk 0.22 needs rustc >= 1.96.1: build it with nightly (~18 min on 2 cores).
  rustup toolchain list | grep -q '^nightly' || rustup toolchain install nightly --profile minimal
  log "cargo +nightly install trunk $TRUNK_VERSION"
  cargo +nightly install trunk --version "$TRUNK_VERSION" --locked --force --debug -j "$JOBS"
fi
log "web toolchain: $(wasm-bindgen --version), $(trunk --version), wasm-opt $(tools/web/node_modules/.bin/wasm-opt --version), $(chromium --version 2>/dev/null)"
