"""What the benchmark scripts share: CPU accounting from /proc (the whole
machine's, a process tree's, this script's and its waited children's, and
`Measured`, which splits a run's CPU between the servers and the other
processes), memory and disk figures (VmRSS, VmHWM, bytes on disk), a
deadline wait, oha (installed when missing), and starting and stopping a
local `ringkv cluster`."""

import os
import shutil
import signal
import ssl
import subprocess
import sys
import time
import urllib.error
import urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# RINGKV_BIN: another build to measure (an A/B against an earlier commit).
RINGKV = os.environ.get("RINGKV_BIN") or os.path.join(ROOT, "target", "release", "ringkv")


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


class Measured:
    """CPU of `servers` (PIDs), of this script with its waited children,
    and of the whole machine, from the start of a run to `stop()`."""

    def __init__(self, servers):
        self.servers = servers
        self.busy, self.own, self.server = busy_seconds(), own_seconds(), pid_seconds(servers)
        self.started = time.monotonic()

    def stop(self):
        """(seconds elapsed, server CPU seconds, cores other processes used:
        neither the servers, nor this script and its waited children)."""
        elapsed = time.monotonic() - self.started
        server = pid_seconds(self.servers) - self.server
        other = (busy_seconds() - self.busy) - (own_seconds() - self.own) - server
        return elapsed, server, max(0.0, other) / elapsed


def status_kib(pid, field):
    """A `/proc/PID/status` figure in KiB (`VmRSS`, `VmHWM`), 0 once the
    process is gone."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def disk_bytes(path, only=None):
    """Bytes the files under `path` (those whose names end with `only`,
    when given) take on disk (allocated blocks, as `du` counts them)."""
    total = 0
    for root, _dirs, files in os.walk(path):
        for name in files:
            if only is not None and not name.endswith(only):
                continue
            try:
                total += os.lstat(os.path.join(root, name)).st_blocks * 512
            except OSError:
                pass
    return total


def ensure_oha():
    """oha on PATH (~/.cargo/bin added), installed with
    `cargo install --locked oha` when missing."""
    cargo_bin = os.path.join(os.path.expanduser("~"), ".cargo", "bin")
    if cargo_bin not in os.environ["PATH"].split(os.pathsep):
        os.environ["PATH"] += os.pathsep + cargo_bin
    if shutil.which("oha") is None:
        print("installing oha (cargo install --locked oha, a few minutes)", file=sys.stderr)
        if subprocess.run(["cargo", "install", "--locked", "--quiet", "oha"]).returncode != 0 \
                or shutil.which("oha") is None:
            sys.exit("oha is missing and `cargo install --locked oha` failed")


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

    try:
        wait_until(f"{nodes} nodes", started)
    except BaseException:
        stop_cluster(proc)
        raise

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

    try:
        for port in range(base_port, base_port + nodes):
            wait_until(f"the node on {port} ready", lambda: ready(port))
    except BaseException:
        stop_cluster(proc)
        raise
    return proc


def stop_cluster(proc, timeout=60):
    """Stops a `ringkv cluster` by its PID (SIGTERM: it stops its nodes),
    then SIGKILLs, by PID, any of its nodes still running after `timeout`
    seconds."""
    nodes = children(proc.pid)
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
    deadline = time.monotonic() + 10
    for pid in nodes:
        while is_node(pid) and time.monotonic() < deadline:
            time.sleep(0.1)
        if is_node(pid):
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass


def is_node(pid):
    """Whether `pid` is (still) a `ringkv serve` process."""
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            args = f.read().split(b"\0")
    except OSError:
        return False
    return len(args) > 1 and args[0].endswith(b"ringkv") and args[1] == b"serve"


def commit():
    """The short hash of the commit measured."""
    return subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True
    ).stdout.strip()
