"""What the benchmark scripts share: CPU accounting from /proc (the whole
machine's, a process tree's, this script's and its waited children's), a
deadline wait, and starting a local `ringkv cluster`."""

import os
import ssl
import subprocess
import sys
import time
import urllib.error
import urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RINGKV = os.path.join(ROOT, "target", "release", "ringkv")


def busy_seconds():
    """CPU seconds the whole machine has spent busy since boot."""
    with open("/proc/stat") as f:
        fields = [int(x) for x in f.readline().split()[1:]]
    idle = fields[3] + fields[4]
    return (sum(fields[:8]) - idle) / os.sysconf("SC_CLK_TCK")


def pid_seconds(pids):
    """CPU seconds (user + system) of the live processes `pids`."""
    total = 0.0
    tick = os.sysconf("SC_CLK_TCK")
    for p in pids:
        try:
            with open(f"/proc/{p}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            total += (int(fields[11]) + int(fields[12])) / tick
        except OSError:
            pass
    return total


def children(pid):
    """The live child processes of `pid`."""
    out = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True)
    return [int(p) for p in out.stdout.split()]


def tree_seconds(pid):
    """CPU seconds of process `pid` and its live children (the nodes)."""
    return pid_seconds([pid] + children(pid))


def own_seconds():
    """CPU seconds of this script and of the children it has waited for
    (the load generators)."""
    t = os.times()
    return t.user + t.system + t.children_user + t.children_system


def wait_until(what, check, timeout=60):
    """Polls `check` until it holds, or exits after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if check():
                return
        except OSError:
            pass
        time.sleep(0.1)
    sys.exit(f"timed out waiting for {what}")


def start_cluster(work, base_port, flags, nodes=3):
    """`ringkv cluster` of `nodes` nodes on `base_port` and up, data and
    output in `work`, returned once every node answers `/health` ready."""
    out_path = os.path.join(work, "cluster.out")
    proc = subprocess.Popen(
        [RINGKV, "cluster", "--nodes", str(nodes), "--base-port", str(base_port),
         "--data-root", work] + flags,
        stdout=open(out_path, "w"), stderr=open(os.path.join(work, "cluster.log"), "w"),
    )

    def started():
        if proc.poll() is not None:
            sys.exit(f"ringkv cluster exited: see {work}/cluster.log")
        with open(out_path) as f:
            return sum(1 for line in f if line.startswith("node ")) == nodes

    wait_until(f"{nodes} nodes", started)

    scheme, context = "http", None
    if "--tls" in flags:
        scheme = "https"
        context = ssl.create_default_context(cafile=os.path.join(work, "tls", "ca.pem"))

    def ready(port):
        try:
            url = f"{scheme}://127.0.0.1:{port}/health"
            with urllib.request.urlopen(url, timeout=2, context=context) as r:
                return r.status == 200
        except urllib.error.URLError:
            return False

    for port in range(base_port, base_port + nodes):
        wait_until(f"the node on {port} ready", lambda: ready(port))
    return proc


def commit():
    """The short hash of the commit measured."""
    return subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True
    ).stdout.strip()
