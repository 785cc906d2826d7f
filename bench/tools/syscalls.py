#!/usr/bin/env python3
"""Where each proxy's CPU per request goes: user space or the kernel, and which system calls.

Reads a peers.sh / compare.sh results.jsonl written with SYSCALLS=1 and prints, per test, worker
count and peer, the medians over the (non-noisy) runs of: proxy CPU µs per request, the part of
it spent in the kernel (stime), the user-space rest, system calls per request and the calls
made at least 0.05 times per request.

    SYSCALLS=1 RUNS=3 WORKERS=1 CERTS=ecdsa TESTS_ecdsa="keepalive closebackend h2" \\
        TESTS_rsa= RES=/tmp/sys ./bench/compare.sh
    python3 bench/tools/syscalls.py /tmp/sys/results.jsonl
"""
import json
import statistics
import sys
from collections import defaultdict


def main(path):
    groups = defaultdict(list)
    for line in open(path, encoding="utf-8"):
        r = json.loads(line)
        if r.get("noisy") or "proxy_cpu_us_per_req" not in r:
            continue
        test = r["test"] + (f" {r['proto']}" if r["test"] == "h2load" else "")
        groups[(test, r.get("workers", ""), r["target"])].append(r)
    if not groups:
        sys.exit(f"{path}: no runs with a CPU figure")
    print("| test | workers | peer | runs | CPU µs/req | kernel | user | syscalls/req | calls/req |")
    print("|---|---:|---|---:|---:|---:|---:|---:|---|")
    for (test, workers, target), runs in groups.items():
        def med(key):
            vals = [r[key] for r in runs if key in r]
            return statistics.median(vals) if vals else None
        cpu, kernel, calls = med("proxy_cpu_us_per_req"), med("proxy_sys_us_per_req"), med("syscalls_per_req")
        names = sorted({k for r in runs for k in r if k.startswith("sys_") and k.endswith("_per_req")
                        and k != "sys_us_per_req"})
        each = sorted(((med(k), k[4:-8]) for k in names), reverse=True)
        fmt = lambda v, f="{:.1f}": "–" if v is None else f.format(v)
        user = None if cpu is None or kernel is None else cpu - kernel
        print(f"| {test} | {workers} | {target} | {len(runs)} | {fmt(cpu)} | {fmt(kernel)} | {fmt(user)} "
              f"| {fmt(calls, '{:.2f}')} | {' '.join(f'{n} {v:.2f}' for v, n in each if v >= 0.05)} |")


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    main(sys.argv[1])
