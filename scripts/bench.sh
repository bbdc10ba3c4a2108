#!/usr/bin/env bash
# The benchmark suite behind BENCHMARKS.md. Release build; Redis (AOF, fsync always) and
# SecantusDB started on free loopback ports; every load bounded; everything stopped at the end.
#   scripts/bench.sh            all scenarios
#   SCENARIOS="ingest drain" scripts/bench.sh
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"
SCENARIOS="${SCENARIOS:-plugin hmac ingest drain embedded-ingest embedded-drain embedded-rss delivery delivery-redis cluster tracing}"
bash scripts/setup.sh >/dev/null
bash scripts/build-plugins.sh 2>/dev/null
cargo build --release --locked -p switchyard
bin="${CARGO_TARGET_DIR:-$root/target}/release/switchyard"
work="$(mktemp -d)"
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$work"; }
trap cleanup EXIT
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
wait_http() { for _ in $(seq 1 300); do curl -sf "$1" >/dev/null && return 0; sleep 0.1; done; echo "not up: $1" >&2; exit 1; }
rss_mb() { awk '/VmRSS/ {printf "%.1f", $2/1024}' "/proc/$1/status"; }
echo "# $(date -u +%F) on $(nproc) cores, $(free -g | awk '/Mem/ {print $2}') GiB; $(rustc --version)"

redis_port="$(free_port)"; mongo_port="$(free_port)"
redis-server --port "$redis_port" --bind 127.0.0.1 --save '' --appendonly yes --appendfsync always --dir "$work" \
  >"$work/redis.log" 2>&1 & pids+=($!)
"${SWITCHYARD_TOOLS_DIR:-$HOME/.cache/switchyard}/secantus-venv/bin/secantusd-py" --host 127.0.0.1 --port "$mongo_port" \
  --storage-path "$work/mongo" --log-level WARNING >"$work/mongo.log" 2>&1 & pids+=($!)
for _ in $(seq 1 300); do
  python3 -c "import socket; socket.create_connection(('127.0.0.1',$mongo_port),0.2); socket.create_connection(('127.0.0.1',$redis_port),0.2)" 2>/dev/null && break
  sleep 0.2
done
export HMAC_SECRET=bench-signing-secret-0123456789 ADMIN_TOKEN=bench-admin-token-0123456789
common=(REDIS_URL="redis://127.0.0.1:$redis_port" MONGO_URL="mongodb://127.0.0.1:$mongo_port" HOST=127.0.0.1
  PLUGINS_DIR="$root/plugins/dist" RATE_LIMIT_MAX_REQUESTS=0 QUEUE_MAX_DEPTH=0 LOG_FORMAT=json RUST_LOG=info)

start_gateway() { # name, extra env...
  local name="$1"; shift
  local port; port="$(free_port)"
  env "${common[@]}" PORT="$port" MONGO_DATABASE="bench_$name" QUEUE_PREFIX="bench_$name" "$@" \
    "$bin" serve >"$work/$name.log" 2>&1 &
  gw_pid=$!; pids+=("$gw_pid")
  gw_url="http://127.0.0.1:$port"
  wait_http "$gw_url/health"
}

# A plugins directory for the delivery runs: the default plugin with no delay and no failures
# (a 0 ms plugin: ORDER_CREATED goes to "orders"), "orders" a destination on 127.0.0.1:$1.
delivery_plugins() { # receiver port
  local dir="$work/plugins-delivery"
  mkdir -p "$dir"
  cp "$root/plugins/dist/default-router.wasm" "$dir/"
  cat >"$dir/switchyard.toml" <<EOF
default = "default-router"
[config.default-router]
delay_ms = 0
failure_rate = 0
[destinations.orders]
url = "http://127.0.0.1:$1/orders"
secret = "$RECEIVE_SECRET"
allow_private = true
max_in_flight = 256
EOF
  echo "$dir"
}
export RECEIVE_SECRET="whsec_$(head -c 32 /dev/urandom | base64)"

start_embedded() { # name, extra env...
  local name="$1"; shift
  local port; port="$(free_port)"
  env HOST=127.0.0.1 PORT="$port" DATA_DIR="$work/$name" PLUGINS_DIR="$root/plugins/dist" RATE_LIMIT_MAX_REQUESTS=0 \
    QUEUE_MAX_DEPTH=0 LOG_FORMAT=json RUST_LOG=info "$@" "$bin" serve >"$work/$name.log" 2>&1 &
  gw_pid=$!; pids+=("$gw_pid")
  gw_url="http://127.0.0.1:$port"
  wait_http "$gw_url/health"
}

for s in $SCENARIOS; do case "$s" in
plugin)
  echo; echo "## plugin host: call overhead and reload  ($bin bench plugin)"
  "$bin" bench plugin 2>/dev/null ;;
hmac)
  echo; echo "## signature verification  ($bin bench hmac)"
  "$bin" bench hmac ;;
ingest)
  start_gateway ingest WORKERS=false
  for c in 50 200; do
    echo; echo "## ingest, Redis backend (AOF fsync always), ingest-only gateway, concurrency $c"
    echo "\$ switchyard load --requests 60000 --concurrency $c"
    "$bin" load --url "$gw_url" --requests 60000 --concurrency "$c"
  done
  echo "gateway RSS after 120k requests: $(rss_mb "$gw_pid") MB"
  kill "$gw_pid"; wait "$gw_pid" 2>/dev/null || true ;;
drain)
  start_gateway drain
  echo; echo "## end to end: default plugin as shipped (2 s, 10 % transient), Redis + SecantusDB"
  echo "idle RSS: $(rss_mb "$gw_pid") MB"
  echo "\$ switchyard load --requests 1000 --concurrency 50 --wait"
  "$bin" load --url "$gw_url" --requests 1000 --concurrency 50 --wait
  kill "$gw_pid"; wait "$gw_pid" 2>/dev/null || true ;;
embedded-ingest)
  start_embedded e-ingest WORKERS=false
  for c in 50 200; do
    echo; echo "## ingest, embedded store (group commit, fsync per batch), ingest-only gateway, concurrency $c"
    echo "\$ switchyard load --requests 60000 --concurrency $c"
    "$bin" load --url "$gw_url" --requests 60000 --concurrency "$c"
  done
  kill "$gw_pid"; wait "$gw_pid" 2>/dev/null || true ;;
embedded-drain)
  start_embedded e-drain QUEUE_CONCURRENCY=2048
  echo; echo "## end to end, embedded: 10,000 events through the default plugin (2 s, 10 % transient), QUEUE_CONCURRENCY=2048"
  echo "idle RSS: $(rss_mb "$gw_pid") MB"
  echo "\$ switchyard load --requests 10000 --concurrency 50 --wait"
  "$bin" load --url "$gw_url" --requests 10000 --concurrency 50 --wait
  kill "$gw_pid"; wait "$gw_pid" 2>/dev/null || true ;;
embedded-rss|rss)
  if [ "$s" = rss ]; then start_gateway rss QUEUE_CONCURRENCY=5000; else start_embedded e-rss QUEUE_CONCURRENCY=5000; fi
  echo; echo "## memory ($s): 5,000 events accepted at once and drained (QUEUE_CONCURRENCY=5000)"
  echo "idle RSS: $(rss_mb "$gw_pid") MB"
  ( max=0; while kill -0 "$gw_pid" 2>/dev/null; do r=$(awk '/VmRSS/ {print $2}' "/proc/$gw_pid/status" 2>/dev/null || echo 0)
      [ "${r:-0}" -gt "$max" ] && max=$r && echo "$max" > "$work/rss.max"; sleep 0.2; done ) &
  sampler=$!
  inflight_max=0
  ( while kill -0 "$gw_pid" 2>/dev/null; do
      n=$(curl -s -H "authorization: Bearer $ADMIN_TOKEN" "$gw_url/events/stats" | python3 -c 'import json,sys; print(json.load(sys.stdin)["workers"]["inProgress"])' 2>/dev/null || echo 0)
      [ "$n" -gt "$(cat "$work/inflight.max" 2>/dev/null || echo 0)" ] && echo "$n" > "$work/inflight.max"; sleep 0.5; done ) &
  poller=$!
  "$bin" load --url "$gw_url" --requests 5000 --concurrency 100 --wait --wait-timeout 600
  kill "$sampler" "$poller" 2>/dev/null || true
  echo "max RSS while draining: $(awk '{printf "%.1f", $1/1024}' "$work/rss.max") MB; most routes in flight at once: $(cat "$work/inflight.max" 2>/dev/null || echo 0)"
  rm -f "$work/rss.max" "$work/inflight.max"
  kill "$gw_pid"; wait "$gw_pid" 2>/dev/null || true ;;
delivery|delivery-redis)
  rport="$(free_port)"; pdir="$(delivery_plugins "$rport")"
  if [ "$s" = delivery ]; then
    start_embedded e-delivery PLUGINS_DIR="$pdir"; backend="embedded store"
  else
    # 64 routes at once: SecantusDB (single-threaded Python) stops answering under 2,048.
    start_gateway delivery PLUGINS_DIR="$pdir" QUEUE_CONCURRENCY=64; backend="Redis (AOF, fsync always) + SecantusDB, QUEUE_CONCURRENCY=64"
    # Bounded by SecantusDB (three writes per event): about 6 minutes.
  fi
  echo; echo "## delivery, $backend: 10,000 events through a 0 ms plugin to a local receiver, workers on during ingest"
  echo "\$ switchyard load --requests 10000 --concurrency 50 --receive $rport   (RECEIVE_SECRET: the destination's key)"
  "$bin" load --url "$gw_url" --requests 10000 --concurrency 50 --receive "$rport" --wait-timeout 600
  kill "$gw_pid"; wait "$gw_pid" 2>/dev/null || true ;;
cluster)
  # One node vs a three-master cluster (one replica each), both AOF with fsync every second (the
  # cluster script's setting), the same machine; ingest-only, then end to end.
  node_port="$(free_port)"
  redis-server --port "$node_port" --bind 127.0.0.1 --save '' --appendonly yes --dir "$work" \
    --appendfilename node.aof >"$work/node.log" 2>&1 & pids+=($!)
  cluster_url="$(APPENDONLY=yes bash scripts/redis-cluster.sh "$work/cluster" 3)"
  while read -r _ p; do pids+=("$p"); done <"$work/cluster/nodes"
  masters() { redis-cli -p "$1" cluster nodes | awk '$3 ~ /master/ {split($2, a, "[:@]"); print a[2]}'; }
  redis_cpu() { # ports... -> CPU seconds (user + sys) of those redis-servers
    for p in "$@"; do redis-cli -p "$p" info cpu | awk -F: '/used_cpu_(user|sys):/ {s += $2} END {print s}'; done |
      awk '{s += $1} END {printf "%.2f", s}'
  }
  redis_cmds() { for p in "$@"; do redis-cli -p "$p" info stats | awk -F: '/total_commands_processed/ {print $2+0}'; done | awk '{s += $1} END {print s}'; }
  first_cluster_port="$(head -1 "$work/cluster/nodes" | cut -d' ' -f1)"
  for setup in node cluster cluster-replica-ack; do
    acks=0
    if [ "$setup" = node ]; then url="redis://127.0.0.1:$node_port"; parts=1; ports=("$node_port")
    else url="$cluster_url"; parts=6; mapfile -t ports < <(masters "$first_cluster_port"); fi
    [ "$setup" = cluster-replica-ack ] && acks=1
    start_gateway "c-ingest-$setup" WORKERS=false REDIS_URL="$url" QUEUE_PARTITIONS="$parts" REDIS_MIN_REPLICAS_ACK="$acks"
    cpu0="$(redis_cpu "${ports[@]}")"; cmd0="$(redis_cmds "${ports[@]}")"; t0="$(date +%s.%N)"
    echo; echo "## ingest on a Redis $setup (QUEUE_PARTITIONS=$parts, REDIS_MIN_REPLICAS_ACK=$acks, AOF fsync every second), ingest-only gateway, concurrency 50"
    echo "\$ switchyard load --requests 60000 --concurrency 50"
    "$bin" load --url "$gw_url" --requests 60000 --concurrency 50
    t1="$(date +%s.%N)"; cpu1="$(redis_cpu "${ports[@]}")"; cmd1="$(redis_cmds "${ports[@]}")"
    python3 - "$t0" "$t1" "$cpu0" "$cpu1" "$cmd0" "$cmd1" "${#ports[@]}" <<'PY'
import sys
t0, t1, c0, c1, k0, k1, n = map(float, sys.argv[1:])
secs, cpu, cmds = t1 - t0, c1 - c0, k1 - k0
per_node = cmds / n / secs
busy = cpu / n / secs
print(f"redis masters: {int(n)}; commands {cmds/60000:.2f} per event; {per_node:,.0f} commands/s per master "
      f"at {busy*100:.0f} % of a core each -> one master saturates near {per_node/busy:,.0f} commands/s "
      f"(~{per_node/busy/(cmds/60000):,.0f} events/s per shard)")
PY
    kill "$gw_pid"; wait "$gw_pid" 2>/dev/null || true
    [ "$setup" = cluster-replica-ack ] && continue
    start_gateway "c-drain-$setup" REDIS_URL="$url" QUEUE_PARTITIONS="$parts"
    echo; echo "## end to end on a Redis $setup (QUEUE_PARTITIONS=$parts) + SecantusDB: default plugin as shipped (2 s, 10 % transient), workers on"
    echo "\$ switchyard load --requests 1000 --concurrency 50 --wait"
    cmd0="$(redis_cmds "${ports[@]}")"; t0="$(date +%s.%N)"
    "$bin" load --url "$gw_url" --requests 1000 --concurrency 50 --wait
    t1="$(date +%s.%N)"; cmd1="$(redis_cmds "${ports[@]}")"
    python3 -c "import sys; k=float(sys.argv[2])-float(sys.argv[1]); s=float(sys.argv[4])-float(sys.argv[3]); print(f'redis commands end to end: {k/1000:.1f} per event ({k:,.0f} over {s:.1f} s, idle polling of the run included)')" "$cmd0" "$cmd1" "$t0" "$t1"
    kill "$gw_pid"; wait "$gw_pid" 2>/dev/null || true
  done ;;
tracing)
  # An OTLP/HTTP sink on loopback (answers 200, counts exports and bytes; GET /count reports).
  sport="$(free_port)"
  python3 - "$sport" >"$work/otlp-sink.log" 2>&1 <<'PY' &
import http.server, json, sys, threading
seen = {"exports": 0, "bytes": 0}
lock = threading.Lock()
class Sink(http.server.BaseHTTPRequestHandler):
    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("content-length", 0)))
        with lock:
            seen["exports"] += 1
            seen["bytes"] += len(body)
        self.send_response(200); self.send_header("content-length", "0"); self.end_headers()
    def do_GET(self):
        with lock:
            out = json.dumps(seen).encode()
        self.send_response(200); self.send_header("content-length", str(len(out))); self.end_headers()
        self.wfile.write(out)
    def log_message(self, *args):
        pass
http.server.ThreadingHTTPServer(("127.0.0.1", int(sys.argv[1])), Sink).serve_forever()
PY
  pids+=($!)
  wait_http "http://127.0.0.1:$sport/count"
  # Off, on (every trace kept) and on (one in ten) alternate, twice, so that drift of the machine
  # shows as spread, not as overhead. Requests carry no traceparent: the sampler decides.
  for workers in false true; do
    for round in 1 2; do
      for mode in off 1 0.1; do
        extra=(WORKERS="$workers")
        what="tracing off"
        if [ "$mode" != off ]; then
          extra+=(OTEL_EXPORTER_OTLP_ENDPOINT="http://127.0.0.1:$sport" OTEL_TRACES_SAMPLER_ARG="$mode")
          what="tracing on, OTEL_TRACES_SAMPLER_ARG=$mode"
        fi
        start_gateway "trace-$workers-${mode//./}-$round" "${extra[@]}"
        before="$(curl -s "http://127.0.0.1:$sport/count")"
        echo; echo "## ingest, $what, WORKERS=$workers, Redis (AOF fsync always), concurrency 50, round $round"
        echo "\$ switchyard load --requests 40000 --concurrency 50"
        "$bin" load --url "$gw_url" --requests 40000 --concurrency 50
        kill "$gw_pid"; wait "$gw_pid" 2>/dev/null || true
        echo "OTLP sink before/after (the gateway flushes its spans as it stops): $before -> $(curl -s "http://127.0.0.1:$sport/count")"
      done
    done
  done ;;
esac; done
