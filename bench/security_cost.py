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
import urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RINGKV = os.path.join(ROOT, "target", "release", "ringkv")
BASE_PORT = 21300
CONFIGS = [("plain", []), ("secret", ["--secret"]), ("secret + TLS", ["--secret", "--tls"])]


def busy_seconds():
    """CPU seconds the whole machine has spent busy since boot."""
    with open("/proc/stat") as f:
        fields = [int(x) for x in f.readline().split()[1:]]
    idle = fields[3] + fields[4]
    return (sum(fields[:8]) - idle) / os.sysconf("SC_CLK_TCK")


def tree_seconds(pid):
    """CPU seconds of process `pid` and its live children (the nodes)."""
    total = 0.0
    tick = os.sysconf("SC_CLK_TCK")
    pids = [pid]
    try:
        out = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True)
        pids += [int(p) for p in out.stdout.split()]
    except OSError:
        pass
    for p in pids:
        try:
            with open(f"/proc/{p}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            total += (int(fields[11]) + int(fields[12])) / tick
        except OSError:
            pass
    return total


def own_seconds():
    t = os.times()
    return t.user + t.system + t.children_user + t.children_system


def wait_until(what, check, timeout=60):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if check():
                return
        except OSError:
            pass
        time.sleep(0.1)
    sys.exit(f"timed out waiting for {what}")


def start(work, flags):
    out = open(os.path.join(work, "cluster.out"), "w")
    log = open(os.path.join(work, "cluster.log"), "w")
    proc = subprocess.Popen(
        [RINGKV, "cluster", "--nodes", "3", "--base-port", str(BASE_PORT),
         "--data-root", work] + flags,
        stdout=out, stderr=log,
    )

    def started():
        with open(os.path.join(work, "cluster.out")) as f:
            return sum(1 for line in f if line.startswith("node ")) == 3

    wait_until("3 nodes", started)
    return proc


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
    proc = start(work, flags)
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
    commit = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True
    ).stdout.strip()
    print(f"bench/security_cost.py {rounds} {duration} at {commit}, "
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
