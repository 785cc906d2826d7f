#!/usr/bin/env python3
"""Where each proxy's CPU per request goes: user space or the kernel, and which system calls.

Reads a peers.sh / compare.sh results.jsonl written with SYSCALLS=1 and prints, per test, certificate,
worker count and peer, the medians over the (non-noisy) runs of: proxy CPU µs per request, the part of
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


def med(values):
    """The median of the values that are there, or None."""
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


def fmt(v, f="{:.1f}"):
    return "–" if v is None else f.format(v)


def main(path):
    groups = defaultdict(list)
    for line in open(path, encoding="utf-8"):
        r = json.loads(line)
        if r.get("noisy") or "proxy_cpu_us_per_req" not in r:
            continue
        test = r["test"] + (f" {r['proto']}" if r["test"] == "h2load" else "")
        groups[(test, r.get("cert", ""), r.get("workers", ""), r["target"])].append(r)
    if not groups:
        sys.exit(f"{path}: no runs with a CPU figure")
    print("| test | cert | workers | peer | runs | CPU µs/req | kernel | user | syscalls/req | calls/req |")
    print("|---|---|---:|---|---:|---:|---:|---:|---:|---|")
    for (test, cert, workers, target), runs in groups.items():
        cpu = med(r["proxy_cpu_us_per_req"] for r in runs)
        kernel = med(r.get("proxy_sys_us_per_req") for r in runs)
        # the median of each run's user-space time, not the difference of the two medians
        user = med(r["proxy_cpu_us_per_req"] - r["proxy_sys_us_per_req"]
                   for r in runs if "proxy_sys_us_per_req" in r)
        counted = [r for r in runs if "syscalls_per_req" in r]
        calls = med(r["syscalls_per_req"] for r in counted)
        names = sorted(k for k in {k for r in counted for k in r}
                       if k.startswith("sys_") and k.endswith("_per_req"))
        # a call below peers.sh's 0.01 per request in one run counts as 0 there
        each = sorted(((med(r.get(k, 0.0) for r in counted), k[4:-8]) for k in names), reverse=True)
        print(f"| {test} | {cert} | {workers} | {target} | {len(runs)} | {fmt(cpu)} | {fmt(kernel)} | {fmt(user)} "
              f"| {fmt(calls, '{:.2f}')} | {' '.join(f'{n} {v:.2f}' for v, n in each if v >= 0.05)} |")


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    main(sys.argv[1])
