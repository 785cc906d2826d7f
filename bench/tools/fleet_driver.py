#!/usr/bin/env python3
"""fleet_driver.py - the timed part of bench/fleet.sh: key regenerations, propagation probes and
the Redis outage. Prints one JSON object on stdout; a line per event on stderr.

    fleet_driver.py --admin http://127.0.0.1:A --replica 127.0.0.1:P1 --replica ... \
        --ca ca.pem --admin-token-file F --service iris --secondary-key OLD \
        --redis-pidfile F --redis-restart 'redis-server ...' \
        [--duration 30] [--kill-at 10] [--restart-at 15]

Every second for --duration seconds (t = 0, 1, 2, ...) it regenerates the secondary key through
the admin API at --admin (clients under load use the primary, which never changes). For each
change that the admin API answers with 200, it measures the propagation time: from that answer
until every --replica (probed directly, not through the load balancer, on one kept-alive TLS
connection each, every 5 ms) answers 200 to a scoring request with the new key. It then checks
that the replaced key gets 401 on every replica. The next change waits for the previous one to
be in force everywhere (a change is never overtaken before it is measured).

A write answered 503 (store unreachable) is retried every 100 ms until one lands; each answer is
recorded, so the report says when writes answered 503 and when they worked again.

At --kill-at seconds it sends SIGKILL to the Redis in --redis-pidfile (with --kill-after-write:
right after the first write answered from then on, before the other replicas have read it, the
case of a Redis that dies just after a write); at --restart-at it runs
--redis-restart (an empty Redis on the same port; it must daemonize and write the pidfile) and
waits for PING.
"""
import argparse
import http.client
import json
import math
import os
import shlex
import signal
import socket
import ssl
import statistics
import subprocess
import sys
import threading
import time

PROBE_INTERVAL = 0.005
RETRY_INTERVAL = 0.1
# A change not in force everywhere after this long is recorded as not propagated (the default
# resync is 30 s, which bounds propagation while Redis answers).
PROPAGATION_CAP = 40.0


def log(t0, msg):
    print(f"[{time.monotonic() - t0:7.3f}s] {msg}", file=sys.stderr, flush=True)


class Replica:
    """One kept-alive TLS connection to one replica's scoring listener."""

    def __init__(self, addr, ctx, service):
        host, port = addr.rsplit(":", 1)
        self.addr, self.host, self.port, self.ctx = addr, host, int(port), ctx
        self.path = f"/api/v1/service/{service}/score"
        self.body = b'{"data": [[5.1, 3.5, 1.4, 0.2]]}'
        self.conn = None
        self.other = []  # (status or error, t) of answers that were neither 200 nor 401
        self.counts = {}  # status -> answers, for the fleet's own request counters

    def score(self, key):
        """Status of one scoring request with `key`; None on a connection error (reconnects)."""
        for _ in range(2):
            try:
                if self.conn is None:
                    self.conn = http.client.HTTPSConnection(self.host, self.port, context=self.ctx, timeout=5)
                self.conn.request("POST", self.path, self.body,
                                  {"Authorization": f"Bearer {key}", "Content-Type": "application/json"})
                r = self.conn.getresponse()
                r.read()
                self.counts[r.status] = self.counts.get(r.status, 0) + 1
                if r.getheader("connection", "").lower() == "close":
                    self.conn.close()
                    self.conn = None
                return r.status
            except (OSError, http.client.HTTPException) as e:
                self.other.append((repr(e), time.time()))
                if self.conn is not None:
                    self.conn.close()
                self.conn = None
        return None


def admin_post(base, token, path, body):
    host, port = base.removeprefix("http://").rsplit(":", 1)
    c = http.client.HTTPConnection(host, int(port), timeout=5)
    try:
        c.request("POST", path, json.dumps(body),
                  {"Authorization": f"Bearer {token}", "Content-Type": "application/json"})
        r = c.getresponse()
        return r.status, r.read(), r.getheader("x-scoregate-store")
    except (OSError, http.client.HTTPException) as e:
        return None, repr(e).encode(), None
    finally:
        c.close()


def redis_ping(port):
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5) as s:
            s.sendall(b"PING\r\n")
            return s.recv(64).startswith(b"+PONG")
    except OSError:
        return False


def kill_redis(args, t0, events):
    pid = int(open(args.redis_pidfile).read().strip())
    os.kill(pid, signal.SIGKILL)
    events["redis_killed"] = time.monotonic() - t0
    events["killed"].set()
    log(t0, f"redis (pid {pid}) killed")


def outage(args, t0, events):
    def at(t):
        time.sleep(max(0.0, t0 + t - time.monotonic()))

    if args.kill_after_write:
        events["killed"].wait()
    else:
        at(args.kill_at)
        kill_redis(args, t0, events)
    at(args.restart_at)
    argv = shlex.split(args.redis_restart)
    subprocess.run(argv, check=True, stdout=subprocess.DEVNULL)
    port = int(argv[argv.index("--port") + 1])
    while not redis_ping(port):
        time.sleep(0.01)
    events["redis_restarted"] = time.monotonic() - t0
    log(t0, "redis restarted (empty, same port)")


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--admin", required=True)
    p.add_argument("--replica", action="append", required=True)
    p.add_argument("--ca", required=True)
    p.add_argument("--admin-token-file", required=True)
    p.add_argument("--service", default="iris")
    p.add_argument("--secondary-key", required=True, help="the secondary key in force at the start")
    p.add_argument("--redis-pidfile", required=True)
    p.add_argument("--redis-restart", required=True)
    p.add_argument("--duration", type=float, default=30)
    p.add_argument("--kill-at", type=float, default=10)
    p.add_argument("--restart-at", type=float, default=15)
    p.add_argument("--kill-after-write", action="store_true",
                   help="kill Redis right after the first write answered at or after --kill-at: the"
                        " write is in Redis, the other replicas have not read it yet")
    args = p.parse_args()

    token = open(args.admin_token_file).read().strip()
    ctx = ssl.create_default_context(cafile=args.ca)
    replicas = [Replica(a, ctx, args.service) for a in args.replica]
    old_key = args.secondary_key
    for r in replicas:  # open the probe connections before the clock starts
        assert r.score(old_key) == 200, f"{r.addr} refuses the starting secondary key"

    events = {"killed": threading.Event()}
    writes = []  # {"t", "status", "store"} of every admin write
    changes = []  # one per change in force: {"t", "propagation_s", "per_replica_s", "old_key_refused"}
    t0 = time.monotonic()
    threading.Thread(target=outage, args=(args, t0, events), daemon=True).start()
    tick = 0
    while tick < args.duration:
        time.sleep(max(0.0, t0 + tick - time.monotonic()))
        # One change: retried while the store is unreachable.
        while True:
            status, body, store = admin_post(args.admin, token, f"/v1/services/{args.service}/regenerateKeys",
                                             {"keyType": "Secondary"})
            t_ans = time.monotonic()
            writes.append({"t": round(t_ans - t0, 3), "status": status, "store": store})
            if status == 200:
                break
            if len(writes) == 1 or writes[-2]["status"] != status:
                log(t0, f"regenerateKeys answered {status}: {body[:200]!r}")
            time.sleep(RETRY_INTERVAL)
        if len(writes) > 1 and writes[-2]["status"] != 200:
            log(t0, "regenerateKeys answered 200 again")
        if args.kill_after_write and not events["killed"].is_set() and t_ans - t0 >= args.kill_at:
            kill_redis(args, t0, events)
        new_key = json.loads(body)["secondaryKey"]
        pending = {i for i in range(len(replicas))}
        per = [None] * len(replicas)
        while pending and time.monotonic() - t_ans < PROPAGATION_CAP:
            for i in sorted(pending):
                s = replicas[i].score(new_key)
                if s == 200:
                    per[i] = round(time.monotonic() - t_ans, 4)
                    pending.discard(i)
                elif s not in (401, None):
                    replicas[i].other.append((s, time.time()))
            if pending:
                time.sleep(PROBE_INTERVAL)
        refused = [replicas[i].score(old_key) == 401 for i in range(len(replicas))]
        prop = max(per) if not pending else None
        changes.append({"t": round(t_ans - t0, 3), "propagation_s": prop, "per_replica_s": per,
                        "old_key_refused": refused})
        log(t0, f"change {len(changes)}: in force everywhere after "
                f"{'%.0f ms' % (prop * 1000) if prop is not None else 'NOT within %.0f s' % PROPAGATION_CAP}"
                f" (per replica {per}); old key refused: {refused}")
        old_key = new_key
        # The next tick: one second later, or the next whole second if this change took longer.
        tick = max(tick + 1, math.ceil(time.monotonic() - t0))

    props = sorted(c["propagation_s"] for c in changes if c["propagation_s"] is not None)
    unavailable = [w["t"] for w in writes if w["status"] == 503]
    killed = events.get("redis_killed")
    after_kill_ok = [w["t"] for w in writes if w["status"] == 200 and killed is not None and w["t"] > killed]
    out = {
        "changes": len(changes),
        "not_propagated": sum(1 for c in changes if c["propagation_s"] is None),
        "old_key_still_accepted": sum(1 for c in changes for ok in c["old_key_refused"] if not ok),
        "propagation_ms": {
            "median": round(statistics.median(props) * 1000, 1) if props else None,
            "max": round(props[-1] * 1000, 1) if props else None,
            "min": round(props[0] * 1000, 1) if props else None,
        },
        "writes": len(writes),
        "writes_by_status": {str(s): sum(1 for w in writes if w["status"] == s)
                             for s in sorted({w["status"] for w in writes}, key=str)},
        "redis_killed_at_s": killed and round(killed, 3),
        "redis_restarted_at_s": events.get("redis_restarted") and round(events["redis_restarted"], 3),
        "first_503_at_s": unavailable[0] if unavailable else None,
        "last_503_at_s": unavailable[-1] if unavailable else None,
        "first_write_ok_after_kill_at_s": after_kill_ok[0] if after_kill_ok else None,
        "probe_other_answers": {r.addr: r.other for r in replicas if r.other},
        "probe_answers": {r.addr: {str(k): v for k, v in sorted(r.counts.items())} for r in replicas},
        "changes_detail": changes,
        "write_log": writes,
    }
    print(json.dumps(out))


if __name__ == "__main__":
    main()
