#!/usr/bin/env python3
"""What ringkv costs as the work grows (issue 14, item 4), in one run:

1. Keys stored: a 3-node cluster (`ringkv cluster`: N = 3, W = R = 2) is
   loaded with 10 k, then 1 M, then 10 M keys of 100 bytes (each size
   topping up the one before; `--sizes`). After each load, once the nodes
   are idle again, oha drives it with 64 connections spread over the
   nodes: GET of the loaded keys, then PUT over them (overwrites of random
   loaded keys, so that the measurement does not change the count). The
   row gives the load time, the rates, p50/p99, failed requests, the bytes
   the data dirs take on disk per key (du of the three data dirs over the
   keys, so three copies) and each node's VmRSS after the runs.
2. Members: a 10-node cluster against a 3-node one (same N = 3), each
   holding 10,000 keys: PUT of fresh keys and GET of stored keys with 64
   connections spread over all the members; rates, p99, node CPU per
   operation; and, with no load, each node's CPU over 10 s, the UDP
   datagrams the machine sent (gossip is UDP: /proc/net/snmp) and the
   loopback bytes (gossip plus any node-to-node TCP) per node per second;
   and, from the nodes' /metrics, the replica calls that went inside
   Batch calls (one message for the calls queued to a peer while others
   are in flight) per operation and per Batch call.
3. Concurrency: the 3-node cluster with 10,000 keys, GET and PUT at
   c = 1, 4, 16, 64, 256, 1000: throughput (2xx answers per second), p50,
   p99, failed requests (oha's non-2xx answers and errors), node CPU per
   operation and the peak VmRSS of the largest node during the run.

Every row gives the CPU other processes used meanwhile (cores: neither the
nodes, nor oha, nor this script) and the commit measured. Latencies are
those of every answer oha got (its sqlite record of each request);
throughput counts 2xx answers over the run's seconds.

Loading (`--loader`): `resp` sends SET commands, generated here, to each
node's RESP port (four connections a node, 64 commands a pipeline; a
refused write is sent again and counted), keys `load/000000000` on; `bench` uses `ringkv bench`'s prefill (64 clients
over HTTP, keys `bench/0` on; each size writes again the keys of the one
before). The loading time and rate are printed.

Ports: the clusters take 24000 and up (`--base-port`; HTTP and gossip
BASE+i, RESP BASE+1000+i): keys 24000-24002, members 24100-24109 and
24200-24202, concurrency 24300-24302. Data lives in a temporary directory,
removed at the end; every cluster is stopped by its PID.

A size whose loading takes longer than --load-limit minutes (25) is not
measured: the table says how far it got, and the keys part ends there.

Usage: bench/scale.py [--sizes 10k,1m,10m] [--duration 10] [--parts keys,members,concurrency]
                      [--loader resp|bench] [--base-port 24000] [--load-limit 25]
"""

import argparse
import json
import os
import re
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request

from benchlib import (RINGKV, ROOT, Measured, children, commit, disk_bytes, ensure_oha,
                      pid_seconds, start_cluster, status_kib, stop_cluster)

VALUE = "v" * 100
CONNECTIONS = 64
LEVELS = (1, 4, 16, 64, 256, 1000)
IDLE_SECONDS = 10
GET_KEYS = 10_000  # members and concurrency clusters
LOAD_WIDTH = 9  # `load/000000000`: up to 10^9 keys
STREAMS_PER_NODE = 4
PIPELINE = 64  # commands in flight per loading connection
RETRY_SECONDS = 120  # how long a refused key is sent again before the load fails


def fail(message):
    sys.exit(f"bench/scale.py: {message}")


def parse_size(text):
    m = re.fullmatch(r"([1-9])(0*)([km]?)", text.strip().lower())
    if not m:
        fail(f"size {text!r}: want a digit, zeros and k or m (10k, 200k, 1m, 10m)")
    return int(m.group(1) + m.group(2)) * {"": 1, "k": 1000, "m": 1_000_000}[m.group(3)]


def size_name(n):
    for unit, div in (("M", 1_000_000), ("k", 1000)):
        if n >= div and n % div == 0:
            return f"{n // div:,}{unit}"
    return f"{n:,}"


def digits_regex(count, width=None):
    """A regex of the decimal numbers 0..count-1 (count = a x 10^m), each
    equally likely: zero-padded to `width` when given, else plain numbers
    without leading zeros (then only those of the most digits: 90 % of
    the keys when a = 1, (a - 1) / a else)."""
    s = str(count)
    a, m = int(s[0]), len(s) - 1
    if width is not None:
        lead = "" if a == 1 else f"[0-{a - 1}]"
        return "0" * (width - m - len(lead and "x")) + lead + (f"[0-9]{{{m}}}" if m else "")
    if a == 1:
        return "[1-9]" + (f"[0-9]{{{m - 1}}}" if m > 1 else "")
    return f"[1-{a - 1}]" + (f"[0-9]{{{m}}}" if m else "")


# ---------------------------------------------------------------- oha runs

def spread(method, path, connections, ports):
    """oha jobs sending `connections` in all, spread over `ports`."""
    n = min(len(ports), connections)
    share = [connections // n + (1 if i < connections % n else 0) for i in range(n)]
    return [(method, f"http://127.0.0.1:{ports[i]}{path}", share[i]) for i in range(n)]


class RssPeak(threading.Thread):
    """Polls the VmRSS of `pids` every 0.2 s until stopped; the peak of each."""

    def __init__(self, pids):
        super().__init__(daemon=True)
        self.pids, self.peak, self.done = pids, {p: 0 for p in pids}, threading.Event()
        self.start()

    def run(self):
        while not self.done.is_set():
            for p in self.pids:
                self.peak[p] = max(self.peak[p], status_kib(p, "VmRSS"))
            self.done.wait(0.2)

    def stop(self):
        self.done.set()
        self.join()
        return self.peak


def percentile(sorted_values, q):
    if not sorted_values:
        return float("nan")
    return sorted_values[min(len(sorted_values) - 1, int(q * len(sorted_values)))]


def oha(jobs, duration, nodes, work):
    """Runs the oha `jobs` (method, url regex, connections) at once for
    `duration` s (in-flight requests are waited for at the end); returns
    a dict: ops (2xx a second), p50, p99 (ms, every answer), failed
    (non-2xx answers and errors, with what they were), CPU µs per answer
    (all nodes), other cores, peak VmRSS of each node (KiB)."""
    measured = Measured(nodes)
    rss = RssPeak(nodes)
    procs = []
    for i, (method, url, connections) in enumerate(jobs):
        db = os.path.join(work, f"oha-{i}.db")
        if os.path.exists(db):
            os.remove(db)
        args = ["oha", "--no-tui", "--output-format", "json", "-z", f"{duration}s", "-w",
                "-c", str(connections), "--rand-regex-url", "-m", method, "--db-url", db]
        if method == "PUT":
            args += ["-d", VALUE]
        procs.append((db, subprocess.Popen(args + [url], stdout=subprocess.PIPE,
                                           stderr=subprocess.PIPE, text=True)))
    latencies, ok, failed, seconds = [], 0, {}, 0.0
    for db, proc in procs:
        out, err = proc.communicate()
        if proc.returncode != 0:
            rss.stop()
            fail(f"oha failed ({proc.returncode}): {err.strip()[-500:]}")
        summary = json.loads(out)
        seconds = max(seconds, summary["summary"]["total"])
        for what, count in (summary.get("errorDistribution") or {}).items():
            failed[what] = failed.get(what, 0) + count
        with sqlite3.connect(db) as conn:
            for status, dur in conn.execute("SELECT status, duration FROM oha"):
                latencies.append(dur * 1000)
                if 200 <= status < 300:
                    ok += 1
                else:
                    failed[str(status)] = failed.get(str(status), 0) + 1
        os.remove(db)
    peak = rss.stop()
    _elapsed, server, other = measured.stop()
    latencies.sort()
    answers = len(latencies) + sum(v for k, v in failed.items() if not k.isdigit())
    return {
        "ops": ok / seconds if seconds else 0.0,
        "p50": percentile(latencies, 0.5),
        "p99": percentile(latencies, 0.99),
        "failed": sum(failed.values()),
        "why": failed,
        "cpu_op": server / max(answers, 1) * 1e6,
        "other": other,
        "peak": peak,
        "count": ok,
    }


def failed_cell(r):
    if not r["failed"]:
        return "0"
    why = "; ".join(f"{k}: {v}" for k, v in sorted(r["why"].items(), key=lambda kv: -kv[1]))
    return f"{r['failed']:,} ({why})"


# ---------------------------------------------------------------- clusters

class Clusters:
    """Every cluster started, so that all are stopped (by PID) at the end."""

    def __init__(self, work):
        self.work, self.procs = work, []

    def start(self, name, base_port, nodes):
        root = os.path.join(self.work, name)
        os.makedirs(root)
        for port in list(range(base_port, base_port + nodes)) + \
                list(range(base_port + 1000, base_port + 1000 + nodes)):
            if port_taken(port):
                fail(f"port {port} is taken (another cluster?): use --base-port")
        started = time.monotonic()
        proc = start_cluster(root, base_port, ["--replicas", "3"], nodes=nodes)
        self.procs.append(proc)
        pids = node_pids(proc, nodes, root)
        wait_agreed(list(range(base_port, base_port + nodes)))
        print(f"  {name}: {nodes} nodes on {base_port}-{base_port + nodes - 1} ready in "
              f"{time.monotonic() - started:.1f} s", file=sys.stderr)
        return proc, pids, root

    def stop(self, proc):
        stop_cluster(proc)
        self.procs.remove(proc)

    def stop_all(self):
        for proc in list(self.procs):
            self.stop(proc)


def port_taken(port):
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return True
    return False


def node_pids(proc, nodes, root):
    pids = children(proc.pid)
    if len(pids) != nodes:
        fail(f"`ringkv cluster` runs {len(pids)} nodes, not {nodes}: see {root}/cluster.log")
    return pids


def ringkv_bench_load(ports, keys, concurrency=64):
    """`ringkv bench` prefill of bench/0..keys-1 (the mix then runs 1 s of
    GETs, left out); returns the seconds the prefill took."""
    nodes = ",".join(f"127.0.0.1:{p}" for p in ports)
    started = time.monotonic()
    proc = subprocess.Popen(
        [RINGKV, "bench", "--json", "--node", nodes, "--keys", str(keys), "--get-ratio", "1",
         "--duration", "1s", "--concurrency", str(concurrency), "--value-size", str(len(VALUE))],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    # The prefill ends when it says it runs the clients.
    loaded = None
    for line in proc.stderr:
        if line.startswith("running"):
            loaded = time.monotonic() - started
    out, _ = proc.communicate()
    if proc.returncode != 0 or loaded is None:
        fail(f"ringkv bench (loading {keys:,} keys) failed: {out[-500:]}")
    return loaded


def resp_load(resp_ports, first, last, deadline=None):
    """SET of load/first .. load/last-1 (100-byte values) over RESP:
    STREAMS_PER_NODE connections per node, each writing a contiguous share
    of the keys in pipelines of PIPELINE commands (the next sent once the
    replies of one are read: an unbounded pipeline, as `redis-cli --pipe`
    sends, piles up so much work in a node that its stall watch takes the
    delay for a stop and refuses writes). A key refused (`-TRYAGAIN`, e.g.
    a node not ready) is sent again in the next pipeline, after a pause
    doubling from 50 ms to 1 s, for up to RETRY_SECONDS.
    Stops at `deadline` (monotonic) if given. Returns (seconds, writes
    sent again, the first refusal's message, keys written)."""
    conns = [p for p in resp_ports for _ in range(STREAMS_PER_NODE)]
    total = last - first
    bounds = [first + total * i // len(conns) for i in range(len(conns) + 1)]
    value = VALUE.encode()
    head = f"*3\r\n$3\r\nSET\r\n${5 + LOAD_WIDTH}\r\nload/".encode()
    tail = f"\r\n${len(value)}\r\n".encode() + value + b"\r\n"
    stats = {"retried": 0, "first": None, "error": None, "done": 0}
    lock = threading.Lock()

    def stream(port, lo, hi):
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=60) as sock:
                pending, retry, tries, backoff = lo, [], {}, 0.025
                while (pending < hi or retry) and not stop.is_set():
                    batch = retry + list(range(pending, min(hi, pending + PIPELINE - len(retry))))
                    pending = max(pending, batch[-1] + 1) if batch[len(retry):] else pending
                    sock.sendall(b"".join(head + b"%09d" % k + tail for k in batch))
                    data = b""
                    while data.count(b"\r\n") < len(batch):
                        chunk = sock.recv(1 << 16)
                        if not chunk:
                            raise OSError("connection closed")
                        data += chunk
                    refused = data.count(b"\r\n-") + data.startswith(b"-")
                    with lock:
                        stats["done"] += len(batch) - refused
                    retry = []
                    if refused:
                        now = time.monotonic()
                        for k, reply in zip(batch, data.split(b"\r\n")):
                            if reply.startswith(b"-"):
                                tries.setdefault(k, now)
                                if now - tries[k] > RETRY_SECONDS:
                                    raise OSError(f"load/{k:09d} still refused after "
                                                  f"{RETRY_SECONDS} s: {reply[:200]}")
                                retry.append(k)
                                with lock:
                                    stats["retried"] += 1
                                    if stats["first"] is None:
                                        stats["first"] = reply.decode(errors="replace")[:200]
                        if retry:
                            backoff = min(1.0, backoff * 2)
                            time.sleep(backoff)
                        else:
                            backoff = 0.025
                    else:
                        backoff = 0.025
        except OSError as e:
            with lock:
                stats["error"] = f"RESP port {port}: {e}"

    started = time.monotonic()
    stop = threading.Event()
    threads = [threading.Thread(target=stream, args=(port, bounds[i], bounds[i + 1]), daemon=True)
               for i, port in enumerate(conns)]
    for t in threads:
        t.start()
    report = started + 60
    try:
        while any(t.is_alive() for t in threads):
            time.sleep(0.2)
            now = time.monotonic()
            if deadline is not None and now > deadline:
                stop.set()
            if now > report:
                report = now + 60
                print(f"    {first + stats['done']:,} keys after {now - started:.0f} s "
                      f"({stats['done'] / (now - started):,.0f} keys/s), "
                      f"{stats['retried']:,} writes sent again", file=sys.stderr)
    finally:
        stop.set()
        for t in threads:
            t.join()
    if stats["error"]:
        fail(f"loading keys {first:,}..{last:,} failed: {stats['error']}")
    return time.monotonic() - started, stats["retried"], stats["first"], stats["done"]


def settle(pids, timeout=180):
    """Waits until the nodes use under 0.05 of a core each over 2 s
    (memtable flushes and compactions after a load); the seconds waited."""
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        before = pid_seconds(pids)
        time.sleep(2)
        if (pid_seconds(pids) - before) / 2 < 0.05 * len(pids):
            break
    return time.monotonic() - started


def mib(kib):
    return kib / 1024


# ---------------------------------------------------------------- parts

def part_keys(clusters, args, sizes, rev):
    header_keys(args)
    base = args.base_port
    ports = list(range(base, base + 3))
    proc, pids, root = clusters.start("keys", base, 3)
    rows = []
    loaded = 0
    for size in sizes:
        if size <= loaded:
            fail(f"sizes must grow: {size:,} after {loaded:,}")
        print(f"  keys: loading to {size:,} keys", file=sys.stderr)
        m = Measured(pids)
        if args.loader == "resp":
            load_s, retried, refusal, done = resp_load(
                [p + 1000 for p in ports], loaded, size,
                time.monotonic() + args.load_limit * 60)
            key = "load/" + digits_regex(size, LOAD_WIDTH)
        else:
            load_s, retried, refusal = ringkv_bench_load(ports, size), 0, None
            done = size - loaded
            key = "bench/" + digits_regex(size)
        _e, _s, load_other = m.stop()
        if done < size - loaded:
            out(f"| {size_name(size)} | not measured: loading stopped at --load-limit "
                f"{args.load_limit} min, {load_s:.0f} s, with {loaded + done:,} keys written "
                f"({done / load_s:,.0f} keys/s), {retried:,} writes refused and sent again, "
                f"other cores {load_other:.2f} | | | | | | | | | | | {rev} |")
            break
        written = size - loaded if args.loader == "resp" else size
        loaded = size
        settled = settle(pids)
        disk = sum(disk_bytes(os.path.join(root, f"node-{p}")) for p in ports)
        journal = sum(disk_bytes(os.path.join(root, f"node-{p}", "engine"), only=".jnl")
                      for p in ports)
        print(f"  keys: {size:,} loaded in {load_s:.1f} s ({written / load_s:,.0f} keys/s, "
              f"{retried:,} writes sent again{': ' + refusal if refusal else ''}), "
              f"idle after {settled:.0f} s more; measuring", file=sys.stderr)
        get = oha(spread("GET", f"/keys/{key}", CONNECTIONS, ports), args.duration, pids, root)
        put = oha(spread("PUT", f"/keys/{key}", CONNECTIONS, ports), args.duration, pids, root)
        rss = [status_kib(p, "VmRSS") for p in pids]
        hwm = [status_kib(p, "VmHWM") for p in pids]
        rows.append(dict(size=size, written=written, load_s=load_s, load_other=load_other,
                         retried=retried, settled=settled, disk=disk, journal=journal, get=get, put=put, rss=rss, hwm=hwm))
        row_keys(rows[-1], rev)
    clusters.stop(proc)
    return rows


def idle(pids, seconds):
    """Node CPU, UDP datagrams out (whole machine) and loopback bytes out
    over `seconds` with no load."""
    def udp_out():
        with open("/proc/net/snmp") as f:
            lines = [l.split() for l in f if l.startswith("Udp:")]
        return int(lines[1][lines[0].index("OutDatagrams")])

    def lo_bytes():
        with open("/sys/class/net/lo/statistics/tx_bytes") as f:
            return int(f.read())

    m = Measured(pids)
    cpu0, udp0, lo0 = pid_seconds(pids), udp_out(), lo_bytes()
    time.sleep(seconds)
    cpu1, udp1, lo1 = pid_seconds(pids), udp_out(), lo_bytes()
    elapsed, _s, other = m.stop()
    n = len(pids)
    return dict(cpu=(cpu1 - cpu0) / elapsed / n, udp=(udp1 - udp0) / elapsed / n,
                lo=(lo1 - lo0) / elapsed / n, other=other)


def prefill(ports, pids):
    ringkv_bench_load(ports, GET_KEYS)
    settle(pids, timeout=30)


def wait_agreed(ports, timeout=60):
    """Waits until every node's /ring lists all the members normal, with
    one agreed digest."""
    def agreed(port):
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/ring", timeout=2) as r:
            ring = json.load(r)
        members = ring.get("members") or []
        return (ring.get("agreed") is True and len(ring.get("nodes") or []) == len(ports)
                and len(members) == len(ports)
                and all(m.get("state") == "normal" and m.get("live") for m in members))

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if all(agreed(p) for p in ports):
                return
        except (OSError, ValueError):
            pass
        time.sleep(0.2)
    fail(f"the nodes on {ports[0]}-{ports[-1]} did not agree on one ring in {timeout} s")


def batching(ports):
    """The nodes' replica calls sent inside Batch calls, and the Batch
    calls, summed from /metrics."""
    calls = batches = 0.0
    for p in ports:
        with urllib.request.urlopen(f"http://127.0.0.1:{p}/metrics", timeout=5) as r:
            text = r.read().decode()
        calls += sum(float(v) for v in re.findall(
            r"^ringkv_replica_batched_calls_total(?:{[^}]*})? (\S+)$", text, re.M))
        batches += sum(float(v) for v in re.findall(
            r"^ringkv_replica_batches_total(?:{[^}]*})? (\S+)$", text, re.M))
    return calls, batches


def batched_oha(jobs, duration, pids, root, ports):
    """`oha` and the replica calls batched per 2xx answer and per Batch call."""
    c0, b0 = batching(ports)
    r = oha(jobs, duration, pids, root)
    c1, b1 = batching(ports)
    r["batched_op"] = (c1 - c0) / max(r["count"], 1)
    r["per_batch"] = (c1 - c0) / max(b1 - b0, 1)
    return r


def part_members(clusters, args, rev):
    header_members(args)
    rows = []
    for nodes, base in ((3, args.base_port + 200), (10, args.base_port + 100)):
        proc, pids, root = clusters.start(f"members-{nodes}", base, nodes)
        ports = list(range(base, base + nodes))
        prefill(ports, pids)
        quiet = idle(pids, IDLE_SECONDS)
        get = batched_oha(spread("GET", f"/keys/bench/{digits_regex(GET_KEYS)}", CONNECTIONS,
                                 ports), args.duration, pids, root, ports)
        put = batched_oha(spread("PUT", "/keys/put/[0-9a-f]{20}", CONNECTIONS, ports),
                          args.duration, pids, root, ports)
        rss = [status_kib(p, "VmRSS") for p in pids]
        rows.append(dict(nodes=nodes, idle=quiet, get=get, put=put, rss=rss))
        row_members(rows[-1], rev)
        clusters.stop(proc)
    return rows


def part_concurrency(clusters, args, rev):
    header_concurrency(args)
    base = args.base_port + 300
    ports = list(range(base, base + 3))
    proc, pids, root = clusters.start("concurrency", base, 3)
    prefill(ports, pids)
    rows = []
    for c in LEVELS:
        for method, path in (("GET", f"/keys/bench/{digits_regex(GET_KEYS)}"),
                             ("PUT", "/keys/put/[0-9a-f]{20}")):
            print(f"  concurrency: {method} c={c}", file=sys.stderr)
            r = oha(spread(method, path, c, ports), args.duration, pids, root)
            rows.append(dict(c=c, op=method, r=r))
            row_concurrency(rows[-1], rev)
            settle(pids, timeout=20)
    clusters.stop(proc)
    return rows


# ---------------------------------------------------------------- report

def out(line=""):
    print(line, flush=True)


def header_keys(args):
    out(f"\n### Keys stored (3 nodes, N = 3, W = R = 2; c = {CONNECTIONS}, 100-byte values, "
        f"{args.duration} s a run; loader: {args.loader})\n")
    out("| keys stored | load: s (keys/s), writes refused and sent again, other cores | GET ops/s | GET p50 / p99 ms "
        "| PUT ops/s | PUT p50 / p99 ms | failed GET / PUT | CPU/op µs GET / PUT "
        "| disk B/key (3 copies) | disk MB: journal / rest | node VmRSS MiB (peak) | other cores GET / PUT | commit |")
    out("|---|---|---|---|---|---|---|---|---|---|---|---|---|")


def row_keys(r, rev):
    g, p = r["get"], r["put"]
    rss = ", ".join(f"{mib(a):.0f} ({mib(b):.0f})" for a, b in zip(r["rss"], r["hwm"]))
    out(f"| {size_name(r['size'])} | {r['load_s']:.1f} ({r['written'] / r['load_s']:,.0f}), "
        f"{r['retried']:,}, {r['load_other']:.2f} | {g['ops']:,.0f} | {g['p50']:.2f} / {g['p99']:.2f} "
        f"| {p['ops']:,.0f} | {p['p50']:.2f} / {p['p99']:.2f} "
        f"| {failed_cell(g)} / {failed_cell(p)} | {g['cpu_op']:.0f} / {p['cpu_op']:.0f} "
        f"| {r['disk'] / r['size']:.0f} | {r['journal'] / 1e6:,.0f} / "
        f"{(r['disk'] - r['journal']) / 1e6:,.0f} | {rss} | {g['other']:.2f} / {p['other']:.2f} "
        f"| {rev} |")


def header_members(args):
    out(f"\n### Members (N = 3, W = R = 2; c = {CONNECTIONS} spread over all members, "
        f"10,000 keys, 100-byte values, {args.duration} s a run; idle: {IDLE_SECONDS} s, "
        f"no load)\n")
    out("| members | GET ops/s | GET p99 ms | GET CPU/op µs | PUT ops/s | PUT p99 ms "
        "| PUT CPU/op µs | failed GET / PUT "
        "| replica calls batched per op, per Batch call: GET; PUT | idle CPU per node (cores) "
        "| idle UDP datagrams/s per node | idle loopback KB/s per node | node VmRSS MiB "
        "| other cores idle / GET / PUT | commit |")
    out("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")


def row_members(r, rev):
    g, p, q = r["get"], r["put"], r["idle"]
    rss = ", ".join(f"{mib(a):.0f}" for a in r["rss"])
    out(f"| {r['nodes']} | {g['ops']:,.0f} | {g['p99']:.2f} | {g['cpu_op']:.0f} "
        f"| {p['ops']:,.0f} | {p['p99']:.2f} | {p['cpu_op']:.0f} "
        f"| {failed_cell(g)} / {failed_cell(p)} | {g['batched_op']:.2f}, {g['per_batch']:.1f}; "
        f"{p['batched_op']:.2f}, {p['per_batch']:.1f} | {q['cpu']:.4f} | {q['udp']:.1f} "
        f"| {q['lo'] / 1000:.1f} | {rss} | {q['other']:.2f} / {g['other']:.2f} / "
        f"{p['other']:.2f} | {rev} |")


def header_concurrency(args):
    out(f"\n### Concurrency (3 nodes, N = 3, W = R = 2; 10,000 keys, GET of stored keys, "
        f"PUT of fresh keys, 100-byte values, {args.duration} s a run)\n")
    out("| c | op | ops/s (2xx) | p50 ms | p99 ms | failed | CPU/op µs "
        "| peak VmRSS MiB (largest node) | other cores | commit |")
    out("|---|---|---|---|---|---|---|---|---|---|")


def row_concurrency(row, rev):
    r = row["r"]
    out(f"| {row['c']} | {row['op']} | {r['ops']:,.0f} | {r['p50']:.2f} | {r['p99']:.2f} "
        f"| {failed_cell(r)} | {r['cpu_op']:.0f} | {mib(max(r['peak'].values())):.0f} "
        f"| {r['other']:.2f} | {rev} |")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", default="10k,1m,10m")
    ap.add_argument("--duration", type=int, default=10, help="seconds a measured run")
    ap.add_argument("--parts", default="keys,members,concurrency")
    ap.add_argument("--loader", choices=("resp", "bench"), default="resp")
    ap.add_argument("--base-port", type=int, default=24000)
    ap.add_argument("--load-limit", type=float, default=25,
                    help="minutes a size's loading may take; past it the keys part stops there")
    args = ap.parse_args()
    sizes = [parse_size(s) for s in args.sizes.split(",") if s.strip()]
    parts = [p.strip() for p in args.parts.split(",") if p.strip()]
    for p in parts:
        if p not in ("keys", "members", "concurrency"):
            fail(f"unknown part {p!r} (keys, members, concurrency)")

    ensure_oha()
    if not os.path.exists(RINGKV):
        print("building the release binary", file=sys.stderr)
        env = dict(os.environ, CARGO_BUILD_JOBS=os.environ.get("CARGO_BUILD_JOBS", "1"))
        if subprocess.run(["cargo", "build", "--release", "--quiet"], cwd=ROOT,
                          env=env).returncode != 0 or not os.path.exists(RINGKV):
            fail(f"cargo build --release failed: no {RINGKV}")
    def stopped(signum, _frame):
        raise SystemExit(f"bench/scale.py: stopped by signal {signum}")

    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, stopped)  # so that the clusters are stopped and removed
    rev = commit()
    work = tempfile.mkdtemp(prefix="ringkv-scale-")
    clusters = Clusters(work)
    timings = {}
    out(f"bench/scale.py --sizes {args.sizes} --duration {args.duration} --parts {args.parts} "
        f"--loader {args.loader} at {rev}, {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}")
    try:
        for part in parts:
            print(f"{part}…", file=sys.stderr)
            started = time.monotonic()
            if part == "keys":
                part_keys(clusters, args, sizes, rev)
            elif part == "members":
                part_members(clusters, args, rev)
            else:
                part_concurrency(clusters, args, rev)
            timings[part] = time.monotonic() - started
            print(f"{part}: {timings[part]:.0f} s", file=sys.stderr)
    finally:
        clusters.stop_all()
        shutil.rmtree(work, ignore_errors=True)
    out("\ntime taken: " + ", ".join(f"{p} {s / 60:.1f} min" for p, s in timings.items()))


if __name__ == "__main__":
    main()
