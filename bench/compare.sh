#!/usr/bin/env bash
# ringkv's Redis protocol against a Redis Cluster, same machine, same run:
# redis-benchmark --cluster -t set,get -d 100 -c 64, at -P 1 and -P 16,
# against a 3-node ringkv cluster (N = 3, W = R = 2, RESP on 22000-22002)
# and a Redis Cluster of 3 masters + 3 replicas (AOF everysec, ports
# 23000-23005), then the ratios. Keys are random (-r 100000): without -r
# every request of a run hits one key per node, a hot key no store of
# replicated keys is meant for.
# Needs Debian's redis-server and redis-tools.
# Usage: bench/compare.sh [REQUESTS]   (default 100000 per run)
set -euo pipefail
cd "$(dirname "$0")/.."
requests=${1:-100000}
for tool in redis-server redis-cli redis-benchmark; do
  command -v "$tool" >/dev/null || { echo "$tool is needed (apt-get install redis-server redis-tools)" >&2; exit 1; }
done
cargo build --release --quiet
ringkv=$PWD/target/release/ringkv
work=$(mktemp -d)
pids=()
cleanup() {
  for pid in "${pids[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
  for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
  rm -rf "$work"
}
trap cleanup EXIT

# ringkv: 3 nodes, RESP on base port + 1000.
"$ringkv" cluster --nodes 3 --base-port 21000 --data-root "$work/ringkv" >"$work/ringkv.out" 2>"$work/ringkv.log" &
pids+=($!)
for _ in $(seq 1 300); do
  [ "$(grep -c '^node ' "$work/ringkv.out" 2>/dev/null)" = 3 ] && break
  sleep 0.1
done
for port in 22000 22001 22002; do
  for _ in $(seq 1 100); do redis-cli -p $port ping >/dev/null 2>&1 && break; sleep 0.1; done
done

# Redis Cluster: 3 masters, 3 replicas, AOF everysec.
for port in 23000 23001 23002 23003 23004 23005; do
  mkdir -p "$work/redis-$port"
  redis-server --port $port --cluster-enabled yes --cluster-config-file nodes.conf \
    --appendonly yes --appendfsync everysec --save '' --dir "$work/redis-$port" \
    --daemonize no >"$work/redis-$port.log" 2>&1 &
  pids+=($!)
done
for port in 23000 23001 23002 23003 23004 23005; do
  for _ in $(seq 1 100); do redis-cli -p $port ping >/dev/null 2>&1 && break; sleep 0.1; done
done
redis-cli --cluster create 127.0.0.1:23000 127.0.0.1:23001 127.0.0.1:23002 \
  127.0.0.1:23003 127.0.0.1:23004 127.0.0.1:23005 --cluster-replicas 1 --cluster-yes >"$work/create.log" 2>&1
for _ in $(seq 1 200); do
  redis-cli -p 23000 cluster info | grep -q 'cluster_state:ok' && break
  sleep 0.1
done

# Requests per second of one test (SET or GET) of redis-benchmark's CSV.
run() {
  local port=$1 pipeline=$2
  redis-benchmark --cluster -p "$port" -t set,get -d 100 -c 64 -P "$pipeline" \
    -n "$requests" -r 100000 --csv -q 2>/dev/null | grep -E '^"(SET|GET)"'
}

declare -A rate
for pipeline in 1 16; do
  for target in ringkv:22000 redis:23000; do
    name=${target%%:*}; port=${target##*:}
    while IFS=, read -r test rps _rest; do
      test=${test//\"/}; rps=${rps//\"/}
      rate[$name-$test-$pipeline]=$rps
    done < <(run "$port" "$pipeline")
  done
done

echo "redis-benchmark --cluster -t set,get -d 100 -c 64 -r 100000 -n $requests, requests/s"
printf '%-6s %-3s %12s %12s %8s\n' test P ringkv redis ratio
for test in SET GET; do
  for pipeline in 1 16; do
    r=${rate[ringkv-$test-$pipeline]:-0}; d=${rate[redis-$test-$pipeline]:-0}
    ratio=$(awk -v a="$r" -v b="$d" 'BEGIN { if (b > 0) printf "%.2f", a / b; else print "-" }')
    printf '%-6s %-3s %12s %12s %8s\n' "$test" "$pipeline" "$r" "$d" "$ratio"
  done
done
for test in SET GET; do
  gain=$(awk -v a="${rate[ringkv-$test-16]:-0}" -v b="${rate[ringkv-$test-1]:-0}" 'BEGIN { if (b > 0) printf "%.2f", a / b; else print "-" }')
  echo "ringkv $test: P=16 / P=1 = $gain"
done
