#!/usr/bin/env bash
# Runs the whole gateway locally: installs what is missing, builds the plugins, starts Redis
# (AOF on) and SecantusDB (a MongoDB-wire server) under ./data/dev, then the gateway in release
# mode on :3000 (override with PORT). Ctrl-C stops everything; data persists between runs.
#   HMAC_SECRET defaults to `dev-signing-secret-0123456789`, ADMIN_TOKEN to `dev-admin-token-0123456789`
#   (fine on your machine only: set real secrets anywhere else).
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"
bash scripts/setup.sh
bash scripts/build-plugins.sh
data="$root/data/dev"
mkdir -p "$data/redis" "$data/mongo"
REDIS_PORT="${DEV_REDIS_PORT:-6390}"
MONGO_PORT="${DEV_MONGO_PORT:-27090}"
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; }
trap cleanup EXIT INT TERM
redis-server --port "$REDIS_PORT" --bind 127.0.0.1 --appendonly yes --appendfsync always --dir "$data/redis" \
  >"$data/redis.log" 2>&1 &
pids+=($!)
"${SWITCHYARD_TOOLS_DIR:-$HOME/.cache/switchyard}/secantus-venv/bin/secantusd-py" --host 127.0.0.1 \
  --port "$MONGO_PORT" --storage-path "$data/mongo" --log-level WARNING >"$data/mongo.log" 2>&1 &
pids+=($!)
for _ in $(seq 1 300); do
  python3 -c "import socket; socket.create_connection(('127.0.0.1',$MONGO_PORT),0.2); socket.create_connection(('127.0.0.1',$REDIS_PORT),0.2)" 2>/dev/null && break
  sleep 0.2
done
export REDIS_URL="redis://127.0.0.1:$REDIS_PORT" MONGO_URL="mongodb://127.0.0.1:$MONGO_PORT"
export HMAC_SECRET="${HMAC_SECRET:-dev-signing-secret-0123456789}" ADMIN_TOKEN="${ADMIN_TOKEN:-dev-admin-token-0123456789}"
export PLUGINS_DIR="${PLUGINS_DIR:-$root/plugins/dist}" HOST="${HOST:-127.0.0.1}"
echo "redis $REDIS_URL, mongo $MONGO_URL, plugins $PLUGINS_DIR" >&2
cargo run --release --locked -p switchyard -- serve
