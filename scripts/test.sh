#!/usr/bin/env bash
# The project's test command (README, .ci/run). On a fresh machine it installs what is missing,
# builds the plugins, checks formatting and lints, starts a real redis-server, a real Redis
# Cluster (scripts/redis-cluster.sh: three masters, one replica each) and a real MongoDB-wire
# server (SecantusDB) on free loopback ports, runs every test against them, and stops the servers. Any failure (including a server that cannot start) fails the run.
#
#   scripts/test.sh                 everything
#   scripts/test.sh -- hot_swap     arguments after -- go to `cargo test` (e.g. a test name filter)
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"
export CARGO_TERM_COLOR="${CARGO_TERM_COLOR:-never}"
step() { printf '\n==> %s\n' "$*"; }

step "setup (toolchain target, redis-server, SecantusDB)"
bash scripts/setup.sh
TOOLS_DIR="${SWITCHYARD_TOOLS_DIR:-$HOME/.cache/switchyard}"
SECANTUSD="$TOOLS_DIR/secantus-venv/bin/secantusd-py"

step "build plugins (wasm32-wasip2 components)"
bash scripts/build-plugins.sh

step "bundled plugins match their sources"
for p in default-router content-router; do
  if ! cmp -s "plugins/dist/$p.wasm" "plugins/prebuilt/$p.wasm"; then
    echo "plugins/prebuilt/$p.wasm differs from a fresh build: run scripts/build-plugins.sh --update-prebuilt" >&2
    exit 1
  fi
done

step "format"
cargo fmt --all -- --check
(cd plugins && cargo fmt --all -- --check)

step "structure: no module imports one that imports it back; the Dockerfile copies every manifest"
python3 scripts/check-modules.py host/*/src tests/src
python3 scripts/check-dockerfile.py

step "docker-compose.yml"
# Valid with the secrets given; refused (with the reason) without them: no default secret ships.
HMAC_SECRET=compose-check-signing-secret ADMIN_TOKEN=compose-check-admin-token \
  docker-compose -f docker-compose.yml config -q
if refusal="$(env -u HMAC_SECRET -u ADMIN_TOKEN docker-compose -f docker-compose.yml config -q 2>&1)"; then
  echo "docker-compose.yml starts without HMAC_SECRET / ADMIN_TOKEN: it must refuse" >&2
  exit 1
fi
echo "$refusal" | grep -q "set HMAC_SECRET" || { echo "unexpected compose refusal: $refusal" >&2; exit 1; }

step "clippy"
cargo clippy --workspace --all-targets --locked -- -D warnings
(cd plugins && cargo clippy --workspace --target wasm32-wasip2 --locked -- -D warnings)

step "build tests"
cargo test --workspace --locked --no-run

step "start servers"
work="$(mktemp -d)"
pids=()
cleanup() {
  if [ -f "$work/cluster/nodes" ]; then
    while read -r _ p; do pids+=("$p"); done <"$work/cluster/nodes"
  fi
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done
  rm -rf "$work"
}
trap cleanup EXIT
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
wait_port() { # name port seconds
  for _ in $(seq 1 $(( $3 * 10 ))); do
    if python3 -c "import socket,sys; socket.create_connection(('127.0.0.1',$2),0.2)" 2>/dev/null; then return 0; fi
    sleep 0.1
  done
  echo "error: $1 did not start on port $2 within $3 s" >&2
  for f in "$work"/*.log; do echo "--- $f" >&2; tail -20 "$f" >&2; done
  exit 1
}
redis_port="$(free_port)"
redis-server --port "$redis_port" --bind 127.0.0.1 --save '' --appendonly no --dir "$work" \
  >"$work/redis.log" 2>&1 &
pids+=($!)
mongo_port="$(free_port)"
"$SECANTUSD" --host 127.0.0.1 --port "$mongo_port" --storage-path "$work/secantus" --log-level WARNING \
  >"$work/secantus.log" 2>&1 &
pids+=($!)
# A Redis Cluster (three masters, one replica each) for the partitioned-queue rows and tests.
cluster_url="$(bash scripts/redis-cluster.sh "$work/cluster" 3)" || {
  echo "error: the Redis Cluster did not start" >&2
  exit 1
}
wait_port redis-server "$redis_port" 20
wait_port secantusd "$mongo_port" 60
export SWITCHYARD_TEST_REDIS_URL="redis://127.0.0.1:$redis_port"
export SWITCHYARD_TEST_MONGO_URL="mongodb://127.0.0.1:$mongo_port"
export SWITCHYARD_TEST_REDIS_CLUSTER_URL="$cluster_url"
export SWITCHYARD_TEST_SECANTUSD="$SECANTUSD"
export SWITCHYARD_TEST_API_VENV="$TOOLS_DIR/api-venv"
echo "redis $SWITCHYARD_TEST_REDIS_URL, cluster $SWITCHYARD_TEST_REDIS_CLUSTER_URL, mongo $SWITCHYARD_TEST_MONGO_URL"

step "test"
args=()
if [ "${1:-}" = "--" ]; then shift; args=("$@"); fi
cargo test --workspace --locked "${args[@]}"
