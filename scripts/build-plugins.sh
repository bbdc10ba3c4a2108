#!/usr/bin/env bash
# Builds every guest crate in plugins/ into a wasm32-wasip2 component and copies them to
# plugins/dist/<name>.wasm (the default PLUGINS_DIR holds default-router and content-router;
# the fixtures are for tests and benchmarks only and go to plugins/dist/fixtures/).
#   --update-prebuilt   also refresh plugins/prebuilt/ (the copies bundled into the binary;
#                       scripts/test.sh checks that they equal a fresh build: builds are
#                       reproducible with the pinned toolchain and Cargo.lock)
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root/plugins"
cargo build --quiet --target wasm32-wasip2 --release
out="$root/plugins/target/wasm32-wasip2/release"
mkdir -p "$root/plugins/dist/fixtures"
for p in default-router content-router; do
  cp "$out/${p//-/_}.wasm" "$root/plugins/dist/$p.wasm"
done
for p in chaos noop wrong-world bad-import rollout-v1 rollout-v2 keyed fanout; do
  cp "$out/${p//-/_}.wasm" "$root/plugins/dist/fixtures/$p.wasm"
done
cp "$root/plugins/switchyard.toml" "$root/plugins/dist/switchyard.toml"
if [ "${1:-}" = "--update-prebuilt" ]; then
  cp "$root/plugins/dist/default-router.wasm" "$root/plugins/dist/content-router.wasm" "$root/plugins/prebuilt/"
fi
ls -l "$root/plugins/dist" "$root/plugins/dist/fixtures" | grep wasm >&2
