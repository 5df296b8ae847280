#!/usr/bin/env bash
# All of ringkv's benchmarks in one command. Builds the release binary and
# the lab (examples/lab: the experiments that start clusters of their own),
# starts local clusters (N = 3, W = R = 2) in temporary directories on ports
# 21000-21002 (sections 5 to 8 run the lab, which starts its own nodes: on
# ports the kernel picks in 5 and 6, on 21000-21002 in 7 and 8), and prints
# the figures:
#   1. 100-byte PUTs, then GETs, then a 50/50 mix (64 keep-alive clients)
#   2. a 1 GiB value streamed in and read back (MB/s, peak RSS per node),
#      on fresh nodes
#   3. 100-byte PUTs again with --fsync (group-committed fsync)
#   4. token placement balance on 10 nodes (computed, no cluster)
#   5. membership convergence: 10 nodes; a node joins, one leaves, another
#      joins; seconds until every node shows one ring digest, all normal
#   6. data movement: a 4th node joins 3 holding 10,000 x 100 B, then 3
#      holding 1 GiB (16 x 64 MiB); seconds until it is normal everywhere,
#      keys and MB moved into it, MB/s
#   7. anti-entropy cost: 2 replicas of 1,000,000 keys differing in 10,
#      1,000 and 100,000 keys; bytes exchanged and seconds of one balance
#   8. client latency while a full repair runs, with and without
#      --repair-rate
# Usage: bench/run.sh [DURATION]   (default 10s per mix run)
set -euo pipefail
cd "$(dirname "$0")/.."
duration=${1:-10s}
cargo build --release --quiet
# Apart: an example builds with the dev-dependencies, whose features must
# not reach the binary measured.
cargo build --release --quiet --example lab
ringkv=$PWD/target/release/ringkv
lab=$PWD/target/release/examples/lab
work=$(mktemp -d)
nodes=127.0.0.1:21000,127.0.0.1:21001,127.0.0.1:21002
cluster_pid=

stop_cluster() {
  if [ -n "$cluster_pid" ]; then
    kill -TERM "$cluster_pid" 2>/dev/null || true
    wait "$cluster_pid" 2>/dev/null || true
    cluster_pid=
  fi
}
trap 'stop_cluster; rm -rf "$work"' EXIT

start_cluster() {
  local dir=$work/$1; shift
  "$ringkv" cluster --nodes 3 --base-port 21000 --data-root "$dir" "$@" >"$work/cluster.out" 2>"$work/cluster.log" &
  cluster_pid=$!
  for _ in $(seq 1 200); do
    if [ "$(grep -c '^node ' "$work/cluster.out" 2>/dev/null)" = 3 ] &&
       "$ringkv" --node 127.0.0.1:21002 ring 2>/dev/null | grep -c normal | grep -q 3; then
      return
    fi
    sleep 0.1
  done
  echo "the cluster did not start; log:" >&2; cat "$work/cluster.log" >&2; exit 1
}

echo "machine: $(nproc) cores, $(free -g | awk '/Mem:/ {print $2}') GiB, $(uname -sr)"
echo
echo "== 1. small values (default: acknowledged once the OS has the write)"
start_cluster plain
"$ringkv" bench --node "$nodes" --get-ratio 0 --duration "$duration"
"$ringkv" bench --node "$nodes" --get-ratio 1 --duration "$duration"
"$ringkv" bench --node "$nodes" --get-ratio 0.5 --duration "$duration"
stop_cluster
echo
echo "== 2. a 1 GiB value, in through one node, out through another (fresh nodes, so"
echo "      peak RSS is the stream's)"
start_cluster stream
"$ringkv" bench --node "$nodes" --stream 1GiB 2>/dev/null
stop_cluster
echo
echo "== 3. small values with --fsync (acknowledged once on disk, group commit)"
start_cluster fsync --fsync
"$ringkv" bench --node "$nodes" --get-ratio 0 --duration "$duration"
stop_cluster
echo
echo "== 4. token placement: 10 nodes join, then an 11th"
"$ringkv" bench --placement 10
echo
echo "== 5. convergence: 10 nodes; join, leave, join; time until all show one digest, all normal"
"$lab" --ringkv "$ringkv" convergence --nodes 10
echo
echo "== 6. data movement: a 4th node joins 3 holding 10,000 x 100 B, then 1 GiB; MB/s into it"
"$lab" --ringkv "$ringkv" join-speed --keys 10000 --value-size 100
"$lab" --ringkv "$ringkv" join-speed --keys 16 --value-size 64MiB
echo
echo "== 7. anti-entropy: 2 replicas of 1,000,000 keys differ in 10 / 1,000 / 100,000 keys; bytes and seconds"
"$lab" --ringkv "$ringkv" repair-cost --base-port 21000
echo
echo "== 8. client p50/p99 while a full repair runs, without and with --repair-rate"
"$lab" --ringkv "$ringkv" repair-load --keys 10000 --repair-keys 10000 --concurrency 8 \
    --repair-rate 64KiB --duration "$duration" --base-port 21000
