#!/usr/bin/env python3
"""callgrind_groups.py - a callgrind profile's instructions per request, grouped by where they ran.

    callgrind_groups.py PROFILE REQUESTS [--top N] [--callers FUNCTION]

Reads the profile itself (callgrind_annotate 3.19 mixes inlined callees' costs into its
`file:function` rows), takes each function's exclusive (self) cost, so that every instruction is
counted in exactly one group, and prints per request: the groups, then the top N functions.
--callers FUNCTION: who calls FUNCTION (e.g. __memcpy_avx_unaligned_erms), by inclusive cost.
"""
import argparse
import collections
import re

GROUPS = [
    ("TLS (rustls, aws-lc)", r"rustls|aws_lc|_aesni|gcm_|ghash|chacha|poly1305|sha256|sha512"),
    ("hyper client (backend side)", r"hyper::proto::h1::role::Client|hyper::client|hyper_util::client|"
                                    r"dispatch::Client"),
    ("hyper server (client side)", r"hyper::proto::h1::role::Server|hyper::server|hyper_util::server|"
                                   r"dispatch::Server"),
    ("hyper shared (h1 I/O, dispatch, encode)", r"hyper::|hyper_util::|want::"),
    ("header parsing (httparse)", r"httparse::"),
    ("access log (tracing, fmt)", r"tracing_subscriber|tracing_core|tracing::|tracing_serde|serde_json|"
                                  r"core::fmt|<.* as core::fmt::|alloc::fmt|::fmt::|nu_ansi|sharded_slab|"
                                  r"std::io::Write::write_fmt|std::io::stdio|access_log"),
    ("scoregate: forward, pool, body", r"scoregate::proxy::"),
    ("scoregate: observe (record, metrics)", r"scoregate::gateway::record|scoregate::metrics|prometheus::"),
    ("scoregate: auth", r"scoregate::auth::"),
    ("scoregate: server, timers", r"scoregate::server::"),
    ("scoregate: other", r"scoregate::"),
    ("http types (HeaderMap, Uri), bytes, uuid", r"http::|bytes::|uuid::|smallvec::|rand|getrandom"),
    ("tokio, mio (tasks, I/O readiness, timers)", r"tokio::|mio::|futures_|parking_lot"),
    ("malloc, free", r"malloc|_int_free|^free$|cfree|realloc|calloc|tcache|__rust_alloc|__rust_dealloc|"
                     r"alloc::raw_vec|alloc::alloc|RawVec"),
    ("memcpy, memmove, memset", r"memcpy|memmove|memset|memchr|memcmp|bcmp|strlen"),
    ("clock, syscalls, libc", r"clock_gettime|Timespec|Instant|SystemTime|syscall|epoll|__libc|__GI_|"
                              r"writev|sendto|recvfrom|^write$|^read$|__vdso|libc|std::sys::"),
]


def parse(path):
    """(self cost by function, {(caller, callee): inclusive cost}, total)."""
    names = {}
    self_cost = collections.Counter()
    calls = collections.Counter()
    fn = cfn = None
    pending = False
    total = None
    with open(path, errors="replace") as f:
        for line in f:
            line = line.rstrip("\n")
            if not line:
                continue
            if pending:
                pending = False
                parts = line.split()
                if len(parts) >= 2:
                    calls[(fn, cfn)] += int(parts[1])
                continue
            m = re.match(r"(c?fn)=\((\d+)\)(?: (.*))?$", line)
            if m:
                if m.group(3) is not None:
                    names[m.group(2)] = m.group(3)
                if m.group(1) == "fn":
                    fn = names[m.group(2)]
                else:
                    cfn = names[m.group(2)]
                continue
            if line.startswith("calls="):
                pending = True
            elif line.startswith("summary:") or line.startswith("totals:"):
                total = int(line.split()[1])
            elif line[0].isdigit() or line[0] in "+-*":
                parts = line.split()
                if len(parts) >= 2 and fn is not None:
                    self_cost[fn] += int(parts[1])
    return self_cost, calls, total


def group_of(name):
    for g, pat in GROUPS:
        if re.search(pat, name):
            return g
    return "other"


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("profile")
    ap.add_argument("requests", type=int)
    ap.add_argument("--top", type=int, default=25)
    ap.add_argument("--callers")
    a = ap.parse_args()
    self_cost, calls, total = parse(a.profile)
    n = a.requests
    total = total or sum(self_cost.values())
    print(f"{total / n:,.0f} instructions per request ({total:,} for {n} requests)\n")
    groups = collections.Counter()
    for f, c in self_cost.items():
        groups[group_of(f)] += c
    print("| where (exclusive cost) | instructions / request | share |")
    print("|---|---|---|")
    for g, c in groups.most_common():
        print(f"| {g} | {c / n:,.0f} | {100 * c / total:.1f} % |")
    print(f"\ntop {a.top} functions (exclusive):")
    for f, c in self_cost.most_common(a.top):
        print(f"  {c / n:>8,.0f}  {f[:130]}")
    if a.callers:
        print(f"\ncallers of {a.callers} (inclusive):")
        by = collections.Counter()
        for (caller, callee), c in calls.items():
            if callee == a.callers:
                by[caller] += c
        for f, c in by.most_common(12):
            print(f"  {c / n:>8,.0f}  {f[:130]}")


if __name__ == "__main__":
    main()
