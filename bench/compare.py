#!/usr/bin/env python3
"""ringkv against Redis Cluster on this machine, in one run.

A 3-node ringkv cluster (`ringkv cluster`: N = 3, W = R = 2) and a Redis
Cluster of 3 masters + 3 replicas (AOF everysec, ports 23000-23005) run
side by side; each workload drives one of them at a time with the same
concurrency (64 connections), value size (100 bytes) and duration:

- HTTP, with oha, its connections spread over the three nodes: PUT of
  fresh keys, GET of 9,000 stored keys, the same GET with R = 1 (the
  coordinator's own copy alone: next to GET, what a replica call to a peer
  costs), a 50/50 mix of PUT and GET, and PUT on a cluster started with
  --fsync;
- RESP, with redis-benchmark --cluster, against ringkv's RESP ports and
  against Redis: SET and GET over 10,000 keys, unpipelined (P = 1) and
  16 commands a pipeline (P = 16).

Redis Cluster's peer of a PUT or GET is its SET or GET with P = 1. For each
run the table gives ops/s, p50, p99 and p99.9 (ms), the CPU the servers
used per operation (all nodes summed, µs) and the CPU other processes used
meanwhile (cores: neither the servers, nor the load generators, nor this
script), so that a noisy run can be seen and rerun.

Installs what it needs when missing: redis-server and redis-tools with
apt-get, oha with `cargo install --locked oha`.

Usage: bench/compare.py [DURATION_SECONDS]   (default 10)
RINGKV_BIN=PATH measures that build instead of building this checkout's.
"""

import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time

from benchlib import RINGKV, ROOT, Measured, children, commit, start_cluster, wait_until

CONCURRENCY = 64
VALUE = b"v" * 100
RINGKV_PORT = 21000  # HTTP 21000-21002, RESP 22000-22002 (`ringkv cluster`)
FSYNC_PORT = 21100
REDIS_PORTS = list(range(23000, 23006))
GET_KEYS = "bench/[1-9][0-9]{3}"  # 1000-9999 of `ringkv bench`'s 10,000


def ensure_tools():
    missing = [p for t, p in (("redis-server", "redis-server"), ("redis-benchmark", "redis-tools"),
                              ("redis-cli", "redis-tools")) if shutil.which(t) is None]
    if missing:
        print(f"installing {' '.join(sorted(set(missing)))}", file=sys.stderr)
        apt = ["apt-get"] if os.geteuid() == 0 else ["sudo", "apt-get"]
        subprocess.run(apt + ["update", "-qq"], check=True)
        subprocess.run(apt + ["install", "-y", "-qq"] + sorted(set(missing)), check=True)
    cargo_bin = os.path.join(os.path.expanduser("~"), ".cargo", "bin")
    os.environ["PATH"] += os.pathsep + cargo_bin
    if shutil.which("oha") is None:
        print("installing oha (cargo install --locked oha, a few minutes)", file=sys.stderr)
        subprocess.run(["cargo", "install", "--locked", "--quiet", "oha"], check=True)


def percentile(sorted_values, q):
    if not sorted_values:
        return float("nan")
    return sorted_values[min(len(sorted_values) - 1, int(q * len(sorted_values)))]


def oha(jobs, duration, servers):
    """Runs the oha `jobs` (method, url pattern, connections) at once for
    `duration` seconds; one row: ops/s, p50/p99/p99.9 ms, server CPU µs per
    operation, other processes' cores. Every request must be answered 2xx."""
    measured = Measured(servers)
    procs = []
    for method, url, connections in jobs:
        args = ["oha", "--no-tui", "--output-format", "csv", "-z", f"{duration}s",
                "-c", str(connections), "--rand-regex-url", "-m", method]
        if method == "PUT":
            args += ["-d", VALUE.decode()]
        procs.append(subprocess.Popen(args + [url], stdout=subprocess.PIPE,
                                      stderr=subprocess.PIPE, text=True))
    latencies, failed = [], {}
    for proc in procs:
        out, err = proc.communicate()
        if proc.returncode != 0:
            sys.exit(f"oha failed: {err}")
        for line in out.splitlines()[1:]:
            fields = line.split(",")
            status = fields[6]
            if not status.startswith("2"):
                failed[status] = failed.get(status, 0) + 1
            latencies.append(float(fields[4]) * 1000)
    elapsed, server, other = measured.stop()
    if failed:
        sys.exit(f"answers other than 2xx to {jobs[0][0]} {jobs[0][1]}...: {failed}")
    latencies.sort()
    ops = len(latencies)
    return (ops / elapsed, percentile(latencies, 0.5), percentile(latencies, 0.99),
            percentile(latencies, 0.999), server / max(ops, 1) * 1e6, other)


def redis_benchmark(port, test, pipeline, requests, servers):
    """One redis-benchmark --cluster run of `test` (set or get); one row as
    `oha` gives."""
    measured = Measured(servers)
    run = subprocess.run(
        ["redis-benchmark", "--cluster", "-p", str(port), "-t", test, "-d", str(len(VALUE)),
         "-c", str(CONCURRENCY), "-P", str(pipeline), "-n", str(requests), "-r", "10000"],
        capture_output=True, text=True)
    elapsed, server, other = measured.stop()
    text = run.stdout
    rate = re.search(r"throughput summary: ([\d.]+) requests per second", text)
    if run.returncode != 0 or rate is None:
        sys.exit(f"redis-benchmark on {port} failed: {text[-500:]} {run.stderr[-500:]}")
    done = re.search(r"(\d+) requests completed", text)
    ops = int(done.group(1)) if done else requests
    # "99.902% <= 2.807 milliseconds": the first line at or past q.
    points = [(float(p), float(ms)) for p, ms in
              re.findall(r"^([\d.]+)% <= ([\d.]+) milliseconds", text, re.M)]

    def at(q):
        return next((ms for p, ms in points if p >= q * 100), float("nan"))

    return (float(rate.group(1)), at(0.5), at(0.99), at(0.999),
            server / max(ops, 1) * 1e6, other)


def redis_timed(port, test, pipeline, duration, servers):
    """A redis-benchmark run sized to last about `duration` seconds (it
    counts requests, not time): a short run gives the rate first."""
    rate = redis_benchmark(port, test, pipeline, 20000, servers)[0]
    return redis_benchmark(port, test, pipeline, max(20000, int(rate * duration)), servers)


def start_redis(work):
    procs = []
    for port in REDIS_PORTS:
        d = os.path.join(work, f"redis-{port}")
        os.makedirs(d)
        procs.append(subprocess.Popen(
            ["redis-server", "--port", str(port), "--cluster-enabled", "yes",
             "--cluster-config-file", "nodes.conf", "--appendonly", "yes",
             "--appendfsync", "everysec", "--save", "", "--dir", d],
            stdout=open(os.path.join(d, "log"), "w"), stderr=subprocess.STDOUT))
    for port in REDIS_PORTS:
        wait_until(f"redis on {port}", lambda: subprocess.run(
            ["redis-cli", "-p", str(port), "ping"], capture_output=True).returncode == 0)
    subprocess.run(["redis-cli", "--cluster", "create"]
                   + [f"127.0.0.1:{p}" for p in REDIS_PORTS]
                   + ["--cluster-replicas", "1", "--cluster-yes"],
                   capture_output=True, check=True)
    wait_until("the Redis Cluster", lambda: "cluster_state:ok" in subprocess.run(
        ["redis-cli", "-p", str(REDIS_PORTS[0]), "cluster", "info"],
        capture_output=True, text=True).stdout)
    return procs


def spread(method, url_path, connections, base_port):
    """oha jobs sending `connections` in all, spread over the 3 nodes."""
    share = [connections // 3 + (1 if i < connections % 3 else 0) for i in range(3)]
    return [(method, f"http://127.0.0.1:{base_port + i}{url_path}", share[i]) for i in range(3)]


def stop(procs):
    for proc in procs:
        proc.send_signal(signal.SIGTERM)
    for proc in procs:
        proc.wait()


def main():
    duration = int(sys.argv[1]) if len(sys.argv) > 1 else 10
    ensure_tools()
    if "RINGKV_BIN" not in os.environ:
        subprocess.run(["cargo", "build", "--release", "--quiet"], cwd=ROOT, check=True)
    work = tempfile.mkdtemp(prefix="ringkv-compare-")
    rows = {}
    procs = []
    try:
        redis = start_redis(work)
        procs += redis
        redis_pids = [p.pid for p in redis]
        os.makedirs(os.path.join(work, "ringkv"))
        cluster = start_cluster(os.path.join(work, "ringkv"), RINGKV_PORT, [])
        procs.append(cluster)
        nodes = children(cluster.pid)

        fresh = "/keys/put/[0-9a-f]{20}"
        rows["PUT"] = oha(spread("PUT", fresh, CONCURRENCY, RINGKV_PORT), duration, nodes)
        subprocess.run([RINGKV, "bench", "--node", f"127.0.0.1:{RINGKV_PORT}", "--keys", "10000",
                        "--get-ratio", "1", "--duration", "1s", "--value-size", str(len(VALUE))],
                       capture_output=True, check=True)
        rows["GET"] = oha(spread("GET", f"/keys/{GET_KEYS}", CONCURRENCY, RINGKV_PORT),
                          duration, nodes)
        # R = 1 reads this node's own copy alone: next to GET, what the
        # replica call to a peer costs.
        rows["GET r=1"] = oha(spread("GET", f"/keys/{GET_KEYS}\\?r=1", CONCURRENCY, RINGKV_PORT),
                              duration, nodes)
        half = CONCURRENCY // 2
        rows["50/50 PUT+GET"] = oha(spread("PUT", fresh, half, RINGKV_PORT)
                                    + spread("GET", f"/keys/{GET_KEYS}", half, RINGKV_PORT),
                                    duration, nodes)
        for test in ("set", "get"):
            for pipeline in (1, 16):
                name = f"RESP {test.upper()} P={pipeline}"
                rows[name] = redis_timed(RINGKV_PORT + 1000, test, pipeline, duration, nodes)
                rows["redis " + name] = redis_timed(REDIS_PORTS[0], test, pipeline, duration,
                                                    redis_pids)
        stop([cluster])
        procs.remove(cluster)

        os.makedirs(os.path.join(work, "fsync"))
        fsynced = start_cluster(os.path.join(work, "fsync"), FSYNC_PORT, ["--fsync"])
        procs.append(fsynced)
        rows["PUT --fsync"] = oha(spread("PUT", fresh, CONCURRENCY, FSYNC_PORT), duration,
                                  children(fsynced.pid))
    finally:
        stop(procs)
        shutil.rmtree(work, ignore_errors=True)
    report(rows, duration)


def report(rows, duration):
    built = os.environ.get("RINGKV_BIN") or commit()
    print(f"bench/compare.py {duration} at {built}, {time.strftime('%Y-%m-%d')}: "
          f"{CONCURRENCY} connections, {len(VALUE)}-byte values, {duration} s a run")
    print("| workload | ringkv ops/s | p50 / p99 / p99.9 ms | CPU/op µs | other cores "
          "| Redis Cluster ops/s | p50 / p99 / p99.9 ms | CPU/op µs | other cores | ratio |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    peers = {"PUT": "redis RESP SET P=1", "GET": "redis RESP GET P=1",
             "PUT --fsync": "redis RESP SET P=1"}
    for name in ("PUT", "GET", "GET r=1", "50/50 PUT+GET", "PUT --fsync", "RESP SET P=1",
                 "RESP GET P=1", "RESP SET P=16", "RESP GET P=16"):
        ours = rows[name]
        peer = rows.get(peers.get(name, "redis " + name))
        cells = [name, f"{ours[0]:,.0f}", f"{ours[1]:.2f} / {ours[2]:.2f} / {ours[3]:.2f}",
                 f"{ours[4]:.0f}", f"{ours[5]:.2f}"]
        if peer is None:
            cells += ["", "", "", "", ""]
        else:
            cells += [f"{peer[0]:,.0f}", f"{peer[1]:.2f} / {peer[2]:.2f} / {peer[3]:.2f}",
                      f"{peer[4]:.0f}", f"{peer[5]:.2f}", f"{ours[0] / peer[0]:.2f}"]
        print("| " + " | ".join(cells) + " |")
    put, get, mix = rows["PUT"][0], rows["GET"][0], rows["50/50 PUT+GET"][0]
    print(f"\nmix / slower of PUT and GET: {mix / min(put, get):.2f}; "
          f"PUT --fsync / PUT: {rows['PUT --fsync'][0] / put:.2f}; "
          f"RESP P=16 / P=1: SET {rows['RESP SET P=16'][0] / rows['RESP SET P=1'][0]:.2f}, "
          f"GET {rows['RESP GET P=16'][0] / rows['RESP GET P=1'][0]:.2f}")


if __name__ == "__main__":
    main()
