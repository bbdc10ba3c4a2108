#!/usr/bin/env bash
# A local Redis Cluster on free loopback ports, for the tests and the benchmarks: MASTERS masters
# (default 3) with one replica each, a short cluster-node-timeout (CLUSTER_NODE_TIMEOUT_MS,
# default 1000) so that a killed master's replica takes over within seconds, and
# cluster-require-full-coverage off (a shard that is failing over does not stop the others).
#
#   scripts/redis-cluster.sh DIR [MASTERS]
#
# Each node runs in the foreground of its own background process (the caller stops them) with
# its data under DIR/<port>; DIR/nodes lists "port pid" per node. Prints the seed URLs (every
# node, comma-separated: what REDIS_URL takes) once the cluster answers on every node and every
# replica is in sync. APPENDONLY=yes turns AOF on (fsync every second). Fails loudly otherwise.
set -euo pipefail
dir="$1"
masters="${2:-3}"
timeout_ms="${CLUSTER_NODE_TIMEOUT_MS:-1000}"
mkdir -p "$dir"
: >"$dir/nodes"

# A port p with p and its cluster bus port p+10000 both free.
free_port() {
  python3 - <<'EOF'
import socket
while True:
    a = socket.socket(); a.bind(("127.0.0.1", 0)); p = a.getsockname()[1]
    if p >= 55000: a.close(); continue
    b = socket.socket()
    try:
        b.bind(("127.0.0.1", p + 10000)); print(p); break
    except OSError:
        pass
    finally:
        a.close(); b.close()
EOF
}

ports=()
for _ in $(seq 1 $((masters * 2))); do
  port="$(free_port)"
  mkdir -p "$dir/$port"
  redis-server --port "$port" --bind 127.0.0.1 --dir "$dir/$port" \
    --cluster-enabled yes --cluster-config-file nodes.conf --cluster-node-timeout "$timeout_ms" \
    --cluster-require-full-coverage no --save '' --appendonly "${APPENDONLY:-no}" \
    --logfile "$dir/$port/redis.log" </dev/null >/dev/null 2>&1 &
  echo "$port $!" >>"$dir/nodes"
  ports+=("$port")
done

fail() {
  echo "error: $*" >&2
  for p in "${ports[@]}"; do echo "--- node $p" >&2; tail -5 "$dir/$p/redis.log" >&2 || true; done
  exit 1
}
for p in "${ports[@]}"; do
  for _ in $(seq 1 100); do
    redis-cli -p "$p" ping >/dev/null 2>&1 && break
    sleep 0.1
  done
  redis-cli -p "$p" ping >/dev/null 2>&1 || fail "redis-server on port $p did not start"
done

addrs=()
for p in "${ports[@]}"; do addrs+=("127.0.0.1:$p"); done
redis-cli --cluster create "${addrs[@]}" --cluster-replicas 1 --cluster-yes >"$dir/create.log" 2>&1 ||
  fail "redis-cli --cluster create failed: $(tail -3 "$dir/create.log")"

# Ready when every node sees the whole cluster and every replica has synced with its master.
for _ in $(seq 1 300); do
  ready=1
  for p in "${ports[@]}"; do
    info="$(redis-cli -p "$p" cluster info 2>/dev/null || true)"
    grep -q "cluster_state:ok" <<<"$info" || ready=0
    grep -q "cluster_known_nodes:${#ports[@]}" <<<"$info" || ready=0
    repl="$(redis-cli -p "$p" info replication 2>/dev/null || true)"
    if grep -q "role:slave" <<<"$repl"; then
      grep -q "master_link_status:up" <<<"$repl" || ready=0
    fi
  done
  [ "$ready" = 1 ] && break
  sleep 0.1
done
[ "$ready" = 1 ] || fail "the cluster did not become ready within 30 s"

urls=()
for p in "${ports[@]}"; do urls+=("redis://127.0.0.1:$p"); done
(IFS=,; echo "${urls[*]}")
