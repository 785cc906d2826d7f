#!/usr/bin/env python3
"""plot.py - draw peers.sh's results.jsonl as an SVG and print a peer's paired ratios.

    plot.py results/<stamp>/results.jsonl [OUT.svg] [--target scoregate]

The SVG (default: plot.svg beside the results) has one panel each for the keep-alive test's
requests/s, its p50 and p99 latency, and the proxy's CPU µs per request, per peer (and per
cert/workers setting when there are several); then a panel with the proxy CPU µs per request or
connection of the other tests that ran (backend closing every connection, HTTP/2, handshakes), and
one with the idle KiB/conn. Values are medians over the clean runs, the way tools/summarize.py
takes them. The SVG is written by hand: no dependencies beyond the Python standard library.

On stdout: a Markdown table of --target's paired ratios to every other peer: for each run number,
target's run ÷ the peer's run (they ran back to back), then the median over runs - the comparison
that cancels most of this shared machine's drift. Lower is better for CPU and latency.
"""
import argparse
import json
import os
import statistics
import sys
from collections import OrderedDict
from xml.sax.saxutils import escape

COLORS = {"nginx": "#2e8b57", "haproxy": "#3a6fb0", "scoregate": "#d9822b"}
FALLBACK = ["#8e6bbf", "#b5503c", "#5f9ea0", "#777777"]


def load(path):
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def clean(rows):
    good = [r for r in rows if not r.get("noisy")]
    return good or rows


def median(rows, key):
    vals = [r[key] for r in rows if isinstance(r.get(key), (int, float))]
    return statistics.median(vals) if vals else None


def color_of(target, order):
    if target in COLORS:
        return COLORS[target]
    return FALLBACK[order.index(target) % len(FALLBACK)]


def cells(rows, test, extra=()):
    """{(target, cert, workers, *extra): [rows]} for one test, peers in the order they ran."""
    out = OrderedDict()
    for r in rows:
        if r.get("test") != test or r.get("target") == "backend-direct":
            continue
        out.setdefault((r["target"], r["cert"], r["workers"]) + tuple(r.get(k) for k in extra), []).append(r)
    return out


# ---------------------------------------------------------------- SVG

def nice_step(vmax, ticks=4):
    if vmax <= 0:
        return 1
    raw = vmax / ticks
    mag = 10 ** (len(str(int(raw))) - 1) if raw >= 1 else 10 ** -len(str(int(1 / raw)))
    for m in (1, 2, 2.5, 5, 10):
        if raw <= m * mag:
            return m * mag
    return 10 * mag


def fmt(v):
    if v is None:
        return "-"
    if v == 0:
        return "0"
    if v >= 1000:
        return f"{v:,.0f}"
    if v >= 100:
        return f"{v:.0f}"
    if v >= 10:
        return f"{v:.1f}"
    return f"{v:.2f}"


class Svg:
    W = 960
    PANEL_H = 250

    def __init__(self, title, subtitle):
        self.parts = []
        self.y = 0
        self.text(self.W / 2, 28, title, size=18, anchor="middle", weight="bold")
        self.text(self.W / 2, 48, subtitle, size=12, anchor="middle", fill="#555")
        self.y = 60

    def text(self, x, y, s, size=12, anchor="start", fill="#222", weight="normal"):
        self.parts.append(
            f'<text x="{x:.1f}" y="{y:.1f}" font-size="{size}" text-anchor="{anchor}" '
            f'fill="{fill}" font-weight="{weight}">{escape(str(s))}</text>')

    def rect(self, x, y, w, h, fill):
        """fill: a colour, or (colour, opacity)."""
        fill, opacity = fill if isinstance(fill, tuple) else (fill, 1)
        self.parts.append(f'<rect x="{x:.1f}" y="{y:.1f}" width="{w:.1f}" height="{max(h, 0):.1f}" '
                          f'fill="{fill}" fill-opacity="{opacity}"/>')

    def line(self, x1, y1, x2, y2, stroke="#ccc"):
        self.parts.append(f'<line x1="{x1:.1f}" y1="{y1:.1f}" x2="{x2:.1f}" y2="{y2:.1f}" stroke="{stroke}"/>')

    def panel(self, title, groups, note=""):
        """groups: [(group label, [(bar label, value, color)])]; one bar chart with a y axis."""
        top = self.y + 30
        left, right = 80, self.W - 20
        plot_h = self.PANEL_H - 90
        base = top + plot_h
        self.text(left, self.y + 18, title, size=14, weight="bold")
        if note:
            self.text(right, self.y + 18, note, size=11, anchor="end", fill="#666")
        vals = [v for _, bars in groups for _, v, _ in bars if v is not None]
        vmax = max(vals) if vals else 1
        step = nice_step(vmax)
        top_val = step * (int(vmax / step) + 1)
        t = 0
        while t <= top_val + 1e-9:
            y = base - plot_h * t / top_val
            self.line(left, y, right, y, "#e3e3e3" if t else "#888")
            self.text(left - 6, y + 4, fmt(t), size=11, anchor="end", fill="#555")
            t += step
        n = max(len(groups), 1)
        gw = (right - left) / n
        for gi, (glabel, bars) in enumerate(groups):
            gx = left + gi * gw
            bw = min(60, gw * 0.7 / max(len(bars), 1))
            x0 = gx + (gw - bw * len(bars)) / 2
            for bi, (blabel, v, color) in enumerate(bars):
                x = x0 + bi * bw
                h = 0 if v is None else plot_h * v / top_val
                self.rect(x + 2, base - h, bw - 4, h, color)
                self.text(x + bw / 2, base - h - 4, fmt(v), size=11, anchor="middle")
                if blabel:
                    self.text(x + bw / 2, base + 14, blabel, size=10, anchor="middle", fill="#555")
            for li, part in enumerate(str(glabel).split("\n")):
                self.text(gx + gw / 2, base + (30 if any(b[0] for b in bars) else 16) + 14 * li, part,
                          size=12, anchor="middle", weight="bold" if li == 0 else "normal")
        self.y += self.PANEL_H

    def legend(self, items):
        x = 80
        for name, color in items:
            self.rect(x, self.y + 4, 12, 12, color)
            self.text(x + 18, self.y + 14, name, size=12)
            x += 30 + 8 * len(name)
        self.y += 24

    def write(self, path):
        body = "\n".join(self.parts)
        with open(path, "w") as f:
            f.write(f'<svg xmlns="http://www.w3.org/2000/svg" width="{self.W}" height="{self.y + 10}" '
                    f'viewBox="0 0 {self.W} {self.y + 10}" font-family="DejaVu Sans, Arial, sans-serif">\n'
                    f'<rect width="100%" height="100%" fill="white"/>\n{body}\n</svg>\n')


def plot(rows, out, env_line):
    ka = cells(rows, "keepalive")
    order = list(OrderedDict.fromkeys(r["target"] for r in rows if r.get("target") not in (None, "backend-direct")))
    settings = {(c, w) for (_, c, w) in ka}

    def label(key):
        t, c, w = key[:3]
        return t if len(settings) <= 1 else f"{t}\n{c} w{w}"

    svg = Svg("HTTPS scoring gateways side by side (peers.sh)", env_line)
    svg.legend([(t, color_of(t, order)) for t in order])
    if ka:
        direct = median(clean([r for r in rows if r.get("test") == "keepalive"
                               and r.get("target") == "backend-direct"]), "rps")
        note = f"backend direct, plain HTTP: {fmt(direct)} req/s" if direct else ""
        med = {k: clean(v) for k, v in ka.items()}
        svg.panel("Keep-alive requests/s (wrk, median; higher is better)",
                  [(label(k), [("", median(rs, "rps"), color_of(k[0], order))]) for k, rs in med.items()], note)
        lat = []
        for k, rs in med.items():
            p50, p99 = median(rs, "p50_us"), median(rs, "p99_us")
            c = color_of(k[0], order)
            lat.append((label(k), [("p50", p50 and p50 / 1000, (c, 0.55)), ("p99", p99 and p99 / 1000, c)]))
        svg.panel("Keep-alive latency, ms: p50 and p99 (lower is better)", lat)
        svg.panel("Proxy CPU µs per keep-alive request (lower is better)",
                  [(label(k), [("", median(rs, "proxy_cpu_us_per_req"), color_of(k[0], order))])
                   for k, rs in med.items()], "the proxy's own cost: compare this")
    else:
        svg.text(80, svg.y + 20, "no keep-alive results in this file", size=13)
        svg.y += 40

    # the other tests: one group per test (and cert/workers), one bar per peer
    other = []
    for test, extra, name, key in (("closebackend", (), "backend closes", "proxy_cpu_us_per_req"),
                                   ("h2load", ("proto",), "HTTP/2", "proxy_cpu_us_per_req"),
                                   ("handshake", (), "new conn, resumed", "proxy_cpu_us_per_req"),
                                   ("fullhs", (), "full handshake", "proxy_cpu_us_per_req")):
        groups = OrderedDict()
        for k, rs in cells(rows, test, extra).items():
            if test == "h2load" and k[3] not in ("h2",):
                continue
            groups.setdefault((name, k[1], k[2]), []).append((k[0], median(clean(rs), key)))
        for (n, c, w), bars in groups.items():
            glabel = n if len(settings) <= 1 and len({(x[1], x[2]) for x in groups}) <= 1 else f"{n}\n{c} w{w}"
            other.append((glabel, [("", v, color_of(t, order)) for t, v in bars]))
    if other:
        svg.panel("Proxy CPU µs per request / connection, other tests (lower is better)", other)
    idle = [r for r in rows if r.get("test") == "idle" and isinstance(r.get("bytes_per_conn"), (int, float))]
    if idle:
        groups = OrderedDict()
        for r in idle:
            where = "" if len(settings) <= 1 else f'\n{r["cert"]} w{r["workers"]}'
            groups.setdefault(f'idle {r.get("mode")}{where}', []).append(
                ("", r["bytes_per_conn"] / 1024, color_of(r["target"], order)))
        svg.panel("Proxy memory per idle TLS connection, KiB (lower is better)", list(groups.items()))
    svg.write(out)


# ---------------------------------------------------------------- ratios

def last_attempts(rs):
    out = {}
    for r in rs:
        run = r.get("run", 1)
        if run not in out or r.get("attempt", 0) > out[run].get("attempt", 0):
            out[run] = r
    return out


def paired(a_rows, b_rows, key):
    a, b = last_attempts(a_rows), last_attempts(b_rows)
    ratios = [a[k][key] / b[k][key] for k in a if k in b
              and isinstance(a[k].get(key), (int, float)) and isinstance(b[k].get(key), (int, float)) and b[k][key]]
    return statistics.median(ratios) if ratios else None


def ratios(rows, target):
    lines = []
    for test, extra, keys in (("keepalive", (), ("rps", "proxy_cpu_us_per_req", "p99_us")),
                              ("closebackend", (), ("rps", "proxy_cpu_us_per_req", "p99_us")),
                              ("handshake", (), ("rps", "proxy_cpu_us_per_req", "p99_us")),
                              ("fullhs", (), ("rps", "proxy_cpu_us_per_req")),
                              ("h2load", ("proto",), ("rps", "proxy_cpu_us_per_req"))):
        c = cells(rows, test, extra)
        for k, rs in c.items():
            if k[0] != target:
                continue
            for k2, rs2 in c.items():
                if k2[0] == target or k2[1:] != k[1:]:
                    continue
                name = test + (f" {k[3]}" if extra else "")
                vals = {key: paired(rs, rs2, key) for key in keys}
                lines.append([name, k[1], k[2], k2[0], len(last_attempts(rs)),
                              vals.get("rps"), vals.get("proxy_cpu_us_per_req"), vals.get("p99_us")])
    idle = [r for r in rows if r.get("test") == "idle"]
    for r in idle:
        if r["target"] != target:
            continue
        for o in idle:
            if o["target"] != target and (o["cert"], o["workers"], o.get("mode")) == (r["cert"], r["workers"], r.get("mode")):
                a, b = r.get("bytes_per_conn"), o.get("bytes_per_conn")
                lines.append([f'idle {r.get("mode")} (memory/conn)', r["cert"], r["workers"], o["target"], 1,
                              None, a / b if a and b else None, None])
    print(f"### {target}: paired ratios to each peer (median over runs of run i ÷ the peer's run i)\n")
    if not lines:
        print(f"(no {target} results to compare)\n")
        return
    print("| test | cert | workers | ÷ peer | runs | req/s ratio (higher better) | "
          "CPU/req ratio (lower better) | p99 ratio (lower better) |")
    print("|---|---|---|---|---|---|---|---|")
    for ln in lines:
        print("| " + " | ".join("-" if v is None else (f"{v:.2f}" if isinstance(v, float) else str(v))
                                for v in ln) + " |")
    if idle:
        print("\nFor idle rows the CPU/req column is the ratio of memory per idle connection.")
    print()


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("jsonl")
    ap.add_argument("out", nargs="?", help="SVG to write (default: plot.svg beside the results)")
    ap.add_argument("--target", default="scoregate", help="peer whose ratios are printed")
    args = ap.parse_args()
    rows = load(args.jsonl)
    out = args.out or os.path.join(os.path.dirname(os.path.abspath(args.jsonl)), "plot.svg")
    env_line = ""
    env = os.path.join(os.path.dirname(os.path.abspath(args.jsonl)), "env.txt")
    if os.path.exists(env):
        with open(env) as f:
            kv = dict(line.split(": ", 1) for line in f.read().splitlines() if ": " in line)
        env_line = f'{kv.get("date_utc", "")} UTC · {kv.get("host", "")}'
    plot(rows, out, env_line or "results.jsonl")
    ratios(rows, args.target)
    print(f"plot: {out}", file=sys.stderr)


if __name__ == "__main__":
    main()
