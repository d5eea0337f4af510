#!/usr/bin/env bash
# Idempotent toolchain setup for a fresh Debian 12 machine (registries only).
# Installs only what is missing: the wasm32 target (the core must keep compiling there)
# and rustfmt/clippy.
set -euo pipefail
export PATH="$HOME/.cargo/bin:$PATH"
have_target() { rustup target list --installed 2>/dev/null | grep -qx "$1"; }
if ! have_target wasm32-unknown-unknown; then
  echo "==> rustup target add wasm32-unknown-unknown" >&2
  rustup target add wasm32-unknown-unknown
fi
for c in rustfmt clippy; do
  rustup component list --installed 2>/dev/null | grep -q "^$c" || rustup component add "$c"
done
command -v unzip >/dev/null || { apt-get update -qq && apt-get install -y -qq unzip; }
echo "toolchain ready: $(rustc --version)" >&2
