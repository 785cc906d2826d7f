#!/usr/bin/env python3
"""soak_report.py - summarize a bench/soak.sh run and draw its plot.

    soak_report.py OUT_DIR [--minutes M --fraction F --workers W --reload-s S --regen-s S]

Reads OUT_DIR's saturate-*.json, result-*.json, timeline-*.jsonl, rss.jsonl and events.jsonl
(written by soak.sh); prints a Markdown summary on stdout and writes OUT_DIR/soak.svg: the p99
latency of each client kind per second (top) and the gateway's RSS (bottom) over the run. The SVG
is written by hand, like plot.py: the Python standard library only.
"""
import argparse
import glob
import json
import os
import statistics
from xml.sax.saxutils import escape

KINDS = ["keepalive", "h2", "handshake", "parked"]
LABEL = {"keepalive": "HTTP/1.1 keep-alive", "h2": "HTTP/2", "handshake": "new connection per request",
         "parked": "parked keep-alive"}
COLOR = {"keepalive": "#d9822b", "h2": "#3a6fb0", "handshake": "#2e8b57", "parked": "#8e44ad"}
# Kinds a run may leave out (soak.sh PARKED_CONNS=0, or a run from before it had them).
OPTIONAL = {"parked"}


def jsonl(path):
    if not os.path.exists(path):
        return []
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def jload(path):
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def polyline(points, x0, y0, w, h, xmax, ymax, color, width=1.0):
    if not points:
        return ""
    pts = " ".join(
        f"{x0 + w * x / xmax:.1f},{y0 + h - h * min(y, ymax) / ymax:.1f}" for x, y in points
    )
    return f'<polyline fill="none" stroke="{color}" stroke-width="{width}" points="{pts}"/>\n'


def axes(x0, y0, w, h, xmax, ymax, ylabel, yfmt):
    s = f'<rect x="{x0}" y="{y0}" width="{w}" height="{h}" fill="none" stroke="#999"/>\n'
    for i in range(5):
        v = ymax * i / 4
        y = y0 + h - h * i / 4
        s += f'<line x1="{x0}" y1="{y:.1f}" x2="{x0 + w}" y2="{y:.1f}" stroke="#eee"/>\n'
        s += f'<text x="{x0 - 6}" y="{y + 4:.1f}" font-size="11" text-anchor="end">{yfmt(v)}</text>\n'
    step = 10 if xmax > 20 else 1
    m = 0
    while m <= xmax + 1e-9:
        x = x0 + w * m / xmax
        s += f'<text x="{x:.1f}" y="{y0 + h + 15}" font-size="11" text-anchor="middle">{m:g}</text>\n'
        m += step
    s += (f'<text x="{x0 - 48}" y="{y0 + h / 2}" font-size="12" text-anchor="middle" '
          f'transform="rotate(-90 {x0 - 48} {y0 + h / 2})">{escape(ylabel)}</text>\n')
    return s


def svg(out, timelines, rss, title, minutes):
    W, H = 900, 560
    x0, w = 80, 780
    xmax = max(minutes, 1e-3)
    s = f'<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" font-family="sans-serif">\n'
    s += f'<rect width="{W}" height="{H}" fill="white"/>\n'
    s += f'<text x="{W / 2}" y="22" font-size="15" text-anchor="middle">{escape(title)}</text>\n'
    # p99 per second
    p99s = [r["p99_ms"] for tl in timelines.values() for r in tl if r.get("p99_ms") is not None]
    ymax = max(1.0, statistics.quantiles(p99s, n=1000)[-1] * 1.1) if len(p99s) > 10 else 10.0
    y0, h = 50, 280
    s += axes(x0, y0, w, h, xmax, ymax, "p99 latency per second, ms", lambda v: f"{v:.1f}")
    for k, tl in timelines.items():
        pts = [(r["t"] / 60, r["p99_ms"]) for r in tl if r.get("p99_ms") is not None]
        s += polyline(pts, x0, y0, w, h, xmax, ymax, COLOR.get(k, "#777"), 0.8)
    lx = x0 + 10
    for k in timelines:
        s += f'<rect x="{lx}" y="{y0 + 8}" width="12" height="4" fill="{COLOR.get(k, "#777")}"/>'
        s += f'<text x="{lx + 16}" y="{y0 + 14}" font-size="11">{escape(LABEL.get(k, k))}</text>\n'
        lx += 190
    # RSS
    y0, h = 380, 140
    rmax = max([r["rss_kb"] / 1024 for r in rss] + [1.0]) * 1.15
    s += axes(x0, y0, w, h, xmax, rmax, "gateway RSS, MiB", lambda v: f"{v:.0f}")
    s += polyline([(r["t"] / 60, r["rss_kb"] / 1024) for r in rss], x0, y0, w, h, xmax, rmax, "#444", 1.5)
    s += f'<text x="{x0 + w / 2}" y="{y0 + h + 32}" font-size="12" text-anchor="middle">minutes</text>\n'
    s += "</svg>\n"
    with open(out, "w") as f:
        f.write(s)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("out")
    ap.add_argument("--minutes", type=float, default=60)
    ap.add_argument("--fraction", type=float, default=50)
    ap.add_argument("--workers", type=int, default=1)
    ap.add_argument("--reload-s", type=int, default=30)
    ap.add_argument("--regen-s", type=int, default=60)
    ap.add_argument("--warmup-s", type=float, default=5,
                    help="the drivers' warm-up: their timelines' t counts from its end")
    a = ap.parse_args()
    d = a.out
    timelines = {k: jsonl(os.path.join(d, f"timeline-{k}.jsonl")) for k in KINDS}
    timelines = {k: v for k, v in timelines.items() if v}
    # One clock for everything: seconds since the drivers started (rss.jsonl, events.jsonl).
    for tl in timelines.values():
        for r in tl:
            r["t"] += a.warmup_s
    rss = jsonl(os.path.join(d, "rss.jsonl"))
    events = jsonl(os.path.join(d, "events.jsonl"))

    print(f"# Soak: {a.minutes:g} min at {a.fraction:g} % of the saturating rate, "
          f"{a.workers} gateway worker thread(s)\n")
    print(f"SIGHUP reload every {a.reload_s} s, secondary key regenerated every {a.regen_s} s.\n")
    print("| client kind | saturating /s | offered /s | answered /s | requests | errors | p50 ms | p99 ms | p99.9 ms | max ms | worst second's p99 ms |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    total_err = 0
    for k in KINDS:
        result = os.path.join(d, f"result-{k}.json")
        if k in OPTIONAL and not os.path.exists(result):
            continue
        sat = jload(os.path.join(d, f"saturate-{k}.json")) or {}
        res = jload(result)
        if res is None:
            print(f"| {LABEL[k]} | {sat.get('rps', '–')} | | | | no report | | | | | |")
            total_err += 1
            continue
        lat = res.get("latency_ms") or {}
        err = res["errors"]["total"]
        total_err += err
        worst = max((r["p99_ms"] for r in timelines.get(k, []) if r.get("p99_ms") is not None), default=None)
        print(f"| {LABEL[k]} | {sat.get('rps', '–')} | {res.get('offered_rate')} | {res.get('rps')} | "
              f"{res.get('requests')} | {err}{' (' + json.dumps(res['errors']['first']) + ')' if err else ''} | "
              f"{lat.get('p50')} | {lat.get('p99')} | {lat.get('p999')} | {lat.get('max')} | {worst} |")
    ka = jload(os.path.join(d, "result-keepalive.json")) or {}
    reloads = [e for e in events if e.get("event") == "reload"]
    regens = [e for e in events if e.get("event") == "regenerate"]
    died = [e for e in events if e.get("event") == "gateway died"]
    print()
    if ka.get("gateway_cpu_pct") is not None:
        print(f"- Gateway CPU over the measured window: {ka['gateway_cpu_pct']} % of one core "
              f"({a.workers} worker thread(s)); a request costs more CPU at part load than at "
              "saturation (fewer events per wake-up), so this is more than the fraction.")
    print(f"- Reloads: {sum(1 for e in reloads if e.get('ok'))} of {len(reloads)} confirmed "
          "(`scoregate_reloads_total{result=\"ok\"}` went up).")
    print(f"- Key regenerations: {sum(1 for e in regens if e.get('status') == '200')} of {len(regens)} answered 200.")
    if died:
        print(f"- **The gateway died** at {died[0]['t']} s.")
    if rss:
        def at(t):
            return min(rss, key=lambda r: abs(r["t"] - t))["rss_kb"] / 1024
        first, last = rss[0]["rss_kb"] / 1024, rss[-1]["rss_kb"] / 1024
        warm = at(min(300, rss[-1]["t"] / 2))
        peak = max(r["rss_kb"] for r in rss) / 1024
        print(f"- Gateway RSS: {first:.1f} MiB at {rss[0]['t']} s, {warm:.1f} MiB after warm-up "
              f"(~{min(300, rss[-1]['t'] // 2)} s), {last:.1f} MiB at the end ({rss[-1]['t']} s); "
              f"peak {peak:.1f} MiB; end − warm-up: {last - warm:+.1f} MiB.")
    parked = [r["parked"] for r in rss if r.get("parked") is not None]
    if parked:
        print(f"- Parked connections (the `scoregate_connections_parked` gauge, read every 10 s): "
              f"median {statistics.median(parked):g}, min {min(parked):g}, max {max(parked):g}.")
    # Per-10-minute p99 (the worst second in each stretch), to see drift.
    if timelines:
        print()
        span = 10 if a.minutes >= 20 else max(1, int(a.minutes // 2) or 1)
        print(f"Per-second p99 (ms) in each {span}-minute stretch, median / worst second:\n")
        stretches = int(-(-a.minutes // span))
        print("| client kind | " + " | ".join(f"{i * span}–{(i + 1) * span} min" for i in range(stretches)) + " |")
        print("|---|" + "---:|" * stretches)
        for k, tl in timelines.items():
            per = [[] for _ in range(stretches)]
            for r in tl:
                if r.get("p99_ms") is None:
                    continue
                # The last stretch also takes the few seconds past the nominal end.
                i = min(max(int((r["t"] - 1e-9) // (span * 60)), 0), stretches - 1)
                per[i].append(r["p99_ms"])
            cells = [f"{statistics.median(v):.2f} / {max(v):.2f}" if v else "–" for v in per]
            print(f"| {LABEL[k]} | " + " | ".join(cells) + " |")
    title = (f"scoregate soak: {a.minutes:g} min at {a.fraction:g} % of saturation, "
             f"reload every {a.reload_s} s, key regeneration every {a.regen_s} s")
    svg(os.path.join(d, "soak.svg"), timelines, rss, title, a.minutes)
    print(f"\nPlot: {os.path.join(d, 'soak.svg')}. Errors in all: {total_err}.")


if __name__ == "__main__":
    main()
