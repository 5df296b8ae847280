"""redis-py against a ringkv cluster's Redis protocol ports (tests/resp.rs).

Usage: resp_client.py PORT [PORT...]

Runs the commands through redis.Redis (RESP2 and RESP3), then through
redis.cluster.RedisCluster; prints "KILL" and waits for a line on stdin
(the test kills a node meanwhile), then goes on with the cluster client
and prints "DONE" with figures. Any failed check raises (exit code 1).
"""

import sys
import time

import redis
from redis.backoff import ExponentialBackoff
from redis.cluster import ClusterNode, RedisCluster
from redis.retry import Retry


def check(got, expected, what):
    if got != expected:
        raise AssertionError(f"{what}: got {got!r}, expected {expected!r}")


def plain(port, protocol):
    r = redis.Redis(port=port, protocol=protocol, decode_responses=True)
    check(r.ping(), True, "ping")
    check(r.set("py:a", "1"), True, "set")
    check(r.get("py:a"), "1", "get")
    check(r.set("py:a", "2", nx=True), None, "set nx on an existing key")
    check(r.set("py:a", "3", xx=True, get=True), "1", "set xx get")
    check(r.set("py:e", "x", ex=100), True, "set ex")
    ttl = r.ttl("py:e")
    if not 98 <= ttl <= 100:
        raise AssertionError(f"ttl {ttl}")
    check(r.persist("py:e"), True, "persist")
    check(r.ttl("py:e"), -1, "ttl after persist")
    check(r.mset({"py:m1": "a", "py:m2": "b"}), True, "mset")
    check(r.mget(["py:m1", "py:m2", "py:none"]), ["a", "b", None], "mget")
    check(r.exists("py:m1", "py:m1", "py:none"), 2, "exists counts repeats")
    check(r.delete("py:m1", "py:m2", "py:none"), 2, "del")
    check(r.type("py:a"), "string", "type")
    check(r.getdel("py:a"), "3", "getdel")
    check(r.get("py:a"), None, "get after getdel")
    check(r.expire("py:e", 50, nx=True), True, "expire nx")
    check(r.expire("py:e", 10, gt=True), False, "expire gt")
    pttl = r.pttl("py:e")
    if not 40_000 <= pttl <= 50_000:
        raise AssertionError(f"pttl {pttl}")
    for name, call in [
        ("incr", lambda: r.incr("py:n")),
        ("append", lambda: r.append("py:n", "x")),
        ("rename", lambda: r.rename("py:e", "py:f")),
    ]:
        try:
            call()
        except redis.ResponseError as err:
            if "ringkv" not in str(err):
                raise AssertionError(f"{name}: {err}")
        else:
            raise AssertionError(f"{name} was not refused")
    info = r.info("ringkv")
    check(info.get("replicas"), 3, "INFO ringkv replicas")
    if protocol == 3:
        check(r.execute_command("HELLO", "3")["proto"], 3, "hello 3")
    r.close()


def with_retries(what, op):
    """Runs op, trying again while the cluster client reports a fault."""
    for attempt in range(60):
        try:
            return op()
        except (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError,
                redis.exceptions.ClusterDownError, redis.exceptions.TryAgainError):
            time.sleep(0.1)
    raise AssertionError(f"{what} kept failing")


def cluster_round(rc, prefix, count):
    for i in range(count):
        key = f"{prefix}:{i}"
        check(with_retries("set", lambda: rc.set(key, str(i))), True, f"cluster set {key}")
    for i in range(count):
        key = f"{prefix}:{i}"
        check(with_retries("get", lambda: rc.get(key)), str(i), f"cluster get {key}")


def main():
    ports = [int(p) for p in sys.argv[1:]]
    for protocol in (2, 3):
        plain(ports[0], protocol)
    nodes = [ClusterNode("127.0.0.1", p) for p in ports]
    rc = RedisCluster(
        startup_nodes=nodes,
        decode_responses=True,
        retry=Retry(ExponentialBackoff(cap=1.0, base=0.05), 10),
        socket_timeout=2,
        socket_connect_timeout=2,
    )
    served = {n.port for n in rc.get_nodes()}
    check(served, set(ports), "nodes in the cluster map")
    cluster_round(rc, "before", 200)
    print("KILL", flush=True)
    sys.stdin.readline()
    started = time.time()
    cluster_round(rc, "after", 200)
    cluster_round(rc, "before", 200)
    rc.nodes_manager.initialize()
    left = {n.port for n in rc.get_nodes()}
    print(f"DONE nodes={sorted(left)} seconds={time.time() - started:.1f}", flush=True)


if __name__ == "__main__":
    main()
