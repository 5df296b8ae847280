#!/usr/bin/env python3
"""MyDHT's membership steps against a release build, timed.

An operator's script: start nodes with `ringkv serve --join`, wait until
every node's `GET /ring` lists the new node in `nodes`, then check that
`/whereis` names it and that it holds what it is named for; SIGKILL a node
and `ringkv remove` it. Prints, per run:

  - join (empty): `serve --join` of a 4th node to every node listing it
    in `nodes`, on a 3-node cluster holding nothing;
  - join (10k): the same with 10,000 x 100 B keys on the cluster;
  - remove: SIGKILL of a node to `ringkv remove` answering REMOVE OK
    (and to every node showing it removed).

Nodes run on 127.0.0.1 ports 21200 and up with data in a temporary
directory; everything is stopped at the end.

Usage: bench/membership_steps.py [RUNS]   (default 3)
"""

import http.client
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time

BASE_PORT = 21200
KEYS = 10_000
VALUE = b"v" * 100
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RINGKV = os.path.join(ROOT, "target", "release", "ringkv")


def start(work, name, port, join=None):
    cmd = [RINGKV, "serve", "--port", str(port), "--data-dir", os.path.join(work, name)]
    if join:
        cmd += ["--join", join]
    log = open(os.path.join(work, name + ".log"), "w")
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=log)
    return proc


def get_json(port, path):
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    try:
        conn.request("GET", path)
        return json.loads(conn.getresponse().read())
    except (OSError, ValueError):
        return None
    finally:
        conn.close()


def wait_until(what, check, limit=120):
    started = time.monotonic()
    while time.monotonic() - started < limit:
        if check():
            return time.monotonic()
        time.sleep(0.02)
    sys.exit(f"timed out waiting for {what}")


def listed_everywhere(ports, node):
    for port in ports:
        ring = get_json(port, "/ring")
        if not ring or node not in ring.get("nodes", []):
            return False
    return True


def state_everywhere(ports, node, state):
    for port in ports:
        ring = get_json(port, "/ring")
        members = {m["node"]: m["state"] for m in (ring or {}).get("members", [])}
        if members.get(node) != state:
            return False
    return True


def write_keys(port, count):
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    for i in range(count):
        conn.request("PUT", f"/keys/k{i}", body=VALUE)
        response = conn.getresponse()
        body = response.read()
        if response.status != 201:
            sys.exit(f"PUT k{i}: {response.status} {body.decode(errors='replace')}")
    conn.close()


def check_holds(ports, node, count, sample=500):
    """The new node holds every sampled key /whereis gives it."""
    port = int(node.rsplit(":", 1)[1])
    named = 0
    for i in range(0, count, max(1, count // sample)):
        replicas = get_json(ports[0], f"/whereis/k{i}")
        if node in replicas:
            named += 1
            held = get_json(port, f"/haskey/k{i}")
            if not held or held["timestamp"] == 0:
                sys.exit(f"k{i}: /whereis names {node}, which does not hold it")
    return named


def busy_seconds():
    """CPU seconds the whole machine has spent busy since boot."""
    with open("/proc/stat") as f:
        fields = [int(x) for x in f.readline().split()[1:]]
    idle = fields[3] + fields[4]  # idle and iowait
    return (sum(fields[:8]) - idle) / os.sysconf("SC_CLK_TCK")


def own_seconds():
    """CPU seconds of this script and of the processes it has reaped."""
    t = os.times()
    return t.user + t.system + t.children_user + t.children_system


def run_once(work, offset, keys):
    ports = [BASE_PORT + offset + i for i in range(4)]
    seed = f"127.0.0.1:{ports[0]}"
    procs = [start(work, f"n{offset}-0", ports[0])]
    wait_until("the founder", lambda: listed_everywhere(ports[:1], seed))
    for i in (1, 2):
        procs.append(start(work, f"n{offset}-{i}", ports[i], seed))
    for i in (1, 2):
        wait_until("3 nodes", lambda i=i: listed_everywhere(ports[:3], f"127.0.0.1:{ports[i]}"))
    if keys:
        write_keys(ports[0], keys)
    joiner = f"127.0.0.1:{ports[3]}"
    started = time.monotonic()
    procs.append(start(work, f"n{offset}-3", ports[3], seed))
    listed = wait_until("the joiner listed", lambda: listed_everywhere(ports, joiner))
    join = listed - started
    if keys:
        check_holds(ports, joiner, keys)
    # SIGKILL a member, then remove it as an operator would.
    victim = f"127.0.0.1:{ports[1]}"
    procs[1].send_signal(signal.SIGKILL)
    procs[1].wait()
    killed = time.monotonic()
    out = subprocess.run(
        [RINGKV, "--node", seed, "remove", victim], capture_output=True, text=True
    )
    answered = time.monotonic()
    if out.returncode != 0 or "REMOVE OK" not in out.stdout:
        sys.exit(f"remove failed: {out.stdout} {out.stderr}")
    live = [p for p in ports if p != ports[1]]
    removed = wait_until("removed everywhere", lambda: state_everywhere(live, victim, "removed"))
    for proc in procs:
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
            proc.wait()
    return join, answered - killed, removed - killed


def run_measured(work, offset, keys):
    """run_once, and the CPU other processes used meanwhile (in cores)."""
    busy, own, started = busy_seconds(), own_seconds(), time.monotonic()
    times = run_once(work, offset, keys)
    other = (busy_seconds() - busy) - (own_seconds() - own)
    return times, max(0.0, other) / (time.monotonic() - started)


def main():
    runs = int(sys.argv[1]) if len(sys.argv) > 1 else 3
    subprocess.run(["cargo", "build", "--release", "--quiet"], cwd=ROOT, check=True)
    commit = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True
    ).stdout.strip()
    print(f"commit {commit}, {time.strftime('%Y-%m-%d')}, {os.cpu_count()} cores")
    work = tempfile.mkdtemp(prefix="ringkv-steps-")
    rows = {
        "join, empty cluster": [],
        "join, 10,000 keys": [],
        "remove answered": [],
        "removed everywhere": [],
    }
    others = []
    try:
        offset = 0
        for _ in range(runs):
            for keys in (0, KEYS):
                (join, answered, removed), other = run_measured(work, offset, keys)
                others.append(other)
                offset += 10
                rows["join, 10,000 keys" if keys else "join, empty cluster"].append(join)
                rows["remove answered"].append(answered)
                rows["removed everywhere"].append(removed)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print("runs in order: for each of RUNS, one on an empty cluster, one on 10,000 keys")
    print("| step | seconds (each run) |")
    print("|---|---|")
    for step, times in rows.items():
        print(f"| {step} | {', '.join(f'{t:.2f}' for t in times)} |")
    print(f"| CPU of other processes (cores) | {', '.join(f'{o:.2f}' for o in others)} |")


if __name__ == "__main__":
    main()
