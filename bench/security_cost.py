#!/usr/bin/env python3
"""The cost of the cluster secret and of TLS on the request path, measured
in one run: a 3-node cluster (N = 3, W = R = 2, `ringkv cluster`) plain,
with `--secret` (Noise between the nodes, sealed gossip), and with
`--secret --tls` (HTTPS to the clients as well), each driven by
`ringkv bench` (100-byte values, 64 clients) for PUTs, then GETs. The
configurations take turns, round after round, so that drift of the
machine's speed falls on all of them; the table shows each one's median
and its ratio to the plain cluster, with the CPU other processes used
during its runs (in cores).

Usage: bench/security_cost.py [ROUNDS] [DURATION]   (default 3 rounds, 10s)
"""

import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time

from benchlib import (RINGKV, ROOT, busy_seconds, commit, own_seconds, start_cluster,
                      tree_seconds)

BASE_PORT = 21300
CONFIGS = [("plain", []), ("secret", ["--secret"]), ("secret + TLS", ["--secret", "--tls"])]


def client_flags(work, flags):
    nodes = ",".join(f"127.0.0.1:{BASE_PORT + i}" for i in range(3))
    out = ["--node", nodes]
    if "--tls" in flags:
        out += ["--ca", os.path.join(work, "tls", "ca.pem")]
    return out


def bench(work, flags, get_ratio, duration):
    run = subprocess.run(
        [RINGKV, "bench", "--json", "--duration", duration, "--get-ratio", str(get_ratio),
         "--concurrency", "64", "--value-size", "100"] + client_flags(work, flags),
        capture_output=True, text=True,
    )
    if run.returncode != 0:
        sys.exit(f"ringkv bench failed: {run.stdout} {run.stderr}")
    rows = json.loads(run.stdout)
    op = "get" if get_ratio == 1 else "put"
    row = next(r for r in rows if r["op"] == op)
    if row["errors"]:
        sys.exit(f"{row['errors']} errors in a {op} run")
    return row


def one(flags, duration):
    """One configuration's PUT and GET runs on a fresh cluster: each run's
    ops/s, p99, node CPU per operation (µs) and other processes' CPU."""
    work = tempfile.mkdtemp(prefix="ringkv-sec-")
    proc = start_cluster(work, BASE_PORT, flags)
    try:
        figures = {}
        for op, ratio in (("put", 0), ("get", 1)):
            busy, own, nodes = busy_seconds(), own_seconds(), tree_seconds(proc.pid)
            started = time.monotonic()
            row = bench(work, flags, ratio, duration)
            elapsed = time.monotonic() - started
            node_cpu = tree_seconds(proc.pid) - nodes
            other = (busy_seconds() - busy) - (own_seconds() - own) - node_cpu
            figures[op] = (
                row["ops_per_sec"],
                row["p99_ms"],
                node_cpu / max(row["count"], 1) * 1e6,
                max(0.0, other) / elapsed,
            )
        return figures
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait()
        subprocess.run(["rm", "-rf", work])


def main():
    rounds = int(sys.argv[1]) if len(sys.argv) > 1 else 3
    duration = sys.argv[2] if len(sys.argv) > 2 else "10s"
    subprocess.run(["cargo", "build", "--release", "--quiet"], cwd=ROOT, check=True)
    results = {name: [] for name, _ in CONFIGS}
    for _ in range(rounds):
        for name, flags in CONFIGS:
            results[name].append(one(flags, duration))
    print(f"bench/security_cost.py {rounds} {duration} at {commit()}, "
          f"{time.strftime('%Y-%m-%d')}: medians of {rounds} rounds")
    print("| configuration | PUT/s | ratio | p99 ms | node CPU/PUT µs | GET/s | ratio | "
          "p99 ms | node CPU/GET µs | CPU of other processes (cores) |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    base = {op: statistics.median(r[op][0] for r in results["plain"]) for op in ("put", "get")}
    for name, _ in CONFIGS:
        runs = results[name]
        cells = []
        for op in ("put", "get"):
            rate = statistics.median(r[op][0] for r in runs)
            p99 = statistics.median(r[op][1] for r in runs)
            cpu = statistics.median(r[op][2] for r in runs)
            cells += [f"{rate:,.0f}", f"{rate / base[op]:.2f}", f"{p99:.1f}", f"{cpu:.0f}"]
        others = ", ".join(f"{r[op][3]:.2f}" for r in runs for op in ("put", "get"))
        print(f"| {name} | " + " | ".join(cells) + f" | {others} |")


if __name__ == "__main__":
    main()
