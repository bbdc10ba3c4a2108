#!/usr/bin/env bash
# Installs everything the build and the tests need, when missing. Idempotent; safe on a fresh machine.
#   - the wasm32-wasip2 Rust target (guest plugins)
#   - redis-server (Debian package)
#   - SecantusDB, a MongoDB-wire server, in its own Python venv
#   - docker-compose (only to validate docker-compose.yml)
#   - Schemathesis and openapi-spec-validator (the API checks), pinned by
#     tests/api/requirements.txt, in a venv of their own
set -euo pipefail

TOOLS_DIR="${SWITCHYARD_TOOLS_DIR:-$HOME/.cache/switchyard}"
VENV="$TOOLS_DIR/secantus-venv"
API_VENV="$TOOLS_DIR/api-venv"
API_REQUIREMENTS="$(cd "$(dirname "$0")/.." && pwd)/tests/api/requirements.txt"

log() { printf '[setup] %s\n' "$*" >&2; }

if ! rustup target list --installed | grep -qx wasm32-wasip2; then
  log "installing Rust target wasm32-wasip2"
  rustup target add wasm32-wasip2
fi

if ! command -v redis-server >/dev/null 2>&1; then
  log "installing redis-server"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq redis-server >/dev/null
  # The package starts a system instance; the tests start their own on free ports.
  (service redis-server stop || systemctl stop redis-server || true) >/dev/null 2>&1
fi

if ! command -v docker-compose >/dev/null 2>&1; then
  log "installing docker-compose (validates docker-compose.yml; no engine needed)"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq docker-compose >/dev/null
fi

if [ ! -x "$VENV/bin/secantusd-py" ]; then
  log "installing SecantusDB into $VENV"
  mkdir -p "$TOOLS_DIR"
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install -q --disable-pip-version-check secantusdb
fi

# Reinstalled whenever the pinned requirements change.
if ! cmp -s "$API_REQUIREMENTS" "$API_VENV/requirements.txt"; then
  log "installing Schemathesis and openapi-spec-validator into $API_VENV"
  mkdir -p "$TOOLS_DIR"
  python3 -m venv --clear "$API_VENV"
  "$API_VENV/bin/pip" install -q --disable-pip-version-check -r "$API_REQUIREMENTS"
  cp "$API_REQUIREMENTS" "$API_VENV/requirements.txt"
fi

log "redis-server: $(command -v redis-server)"
log "secantusd-py: $VENV/bin/secantusd-py"
log "schemathesis: $API_VENV/bin/schemathesis"
