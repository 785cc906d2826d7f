#!/usr/bin/env python3
"""Module dependency check: no import cycles between modules, and the layering of ARCHITECTURE.md.

Reads every `src/**/*.rs` (test modules excluded: `#[cfg(test)]` items and `tests.rs` files),
collects `crate::a::b` paths (in `use` lines and in code) and `super::x` paths, and builds two
graphs: top-level modules (`proxy`, `state`, ...) and modules at every depth (`proxy::pool`,
`proxy::upstream`, ...). A cycle in either fails the check, as does an edge that breaks a layer
rule below. Prints the top-level graph with `--graph`.
"""
import os
import re
import sys

SRC = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "src")

# Modules that may not depend on any of the listed ones (ARCHITECTURE.md, "Layers").
FORBIDDEN = {
    "route": {"*"},
    "files": {"*"},
    "proxy_protocol": {"*"},
    "error": {"*", "!route"},
    "crypto": {"*"},
    "config": {"*", "!route", "!crypto", "!files"},
    "proxy": {"state", "gateway", "server", "admin", "reload", "auth", "store", "client", "limit", "cli", "bench", "demo"},
    "store": {"state", "gateway", "server", "admin", "reload", "auth", "proxy", "cli", "bench", "demo"},
    "auth": {"state", "gateway", "server", "admin", "reload", "proxy", "limit", "cli", "bench", "demo"},
    "limit": {"state", "gateway", "server", "admin", "reload", "store", "tls", "client", "cli", "bench", "demo"},
    "tls": {"state", "gateway", "server", "admin", "reload", "auth", "proxy", "store", "cli", "bench", "demo"},
    "mirror": {"state", "gateway", "server", "admin", "reload", "auth", "store", "client", "limit", "cli", "bench", "demo"},
    "state": {"gateway", "server", "admin", "reload", "cli", "bench", "demo", "admin_client"},
    "gateway": {"server", "admin", "reload", "cli", "bench", "demo", "admin_client"},
    "server": {"cli", "bench", "demo", "admin_client"},
}


def module_of(path):
    rel = os.path.relpath(path, SRC)[:-3].split(os.sep)
    if rel[-1] in ("mod", "lib", "main"):
        rel = rel[:-1]
    return rel


def strip_tests(text):
    # Drop `#[cfg(test)] mod ... { ... }` blocks and single `#[cfg(test)]` items by brace matching.
    out, i = [], 0
    while True:
        j = text.find("#[cfg(test)]", i)
        if j < 0:
            out.append(text[i:])
            break
        out.append(text[i:j])
        k = j + len("#[cfg(test)]")
        semi, brace = text.find(";", k), text.find("{", k)
        if semi >= 0 and (brace < 0 or semi < brace):
            i = semi + 1
            continue
        depth, k = 0, brace
        while k < len(text):
            if text[k] == "{":
                depth += 1
            elif text[k] == "}":
                depth -= 1
                if depth == 0:
                    break
            k += 1
        i = k + 1
    return "".join(out)


def deps(path, mod):
    text = strip_tests(open(path, encoding="utf-8").read())
    text = re.sub(r"//[^\n]*", "", text)
    found = set()
    for m in re.finditer(r"\bcrate((?:::[a-z_][a-z0-9_]*)+)", text):
        found.add(tuple(m.group(1).split("::")[1:]))
    # `use crate::{a, b::c}` groups
    for m in re.finditer(r"\bcrate::\{([^}]*)\}", text):
        for part in m.group(1).split(","):
            part = part.strip()
            if part:
                found.add(tuple(p for p in part.split("::") if re.match(r"^[a-z_][a-z0-9_]*$", p)))
    parent = mod[:-1] if os.path.basename(path) not in ("mod.rs",) else mod
    for m in re.finditer(r"\bsuper((?:::[a-z_][a-z0-9_]*)+)", text):
        found.add(tuple(parent[:-1] + m.group(1).split("::")[1:]) if os.path.basename(path) == "mod.rs"
                  else tuple(mod[:-1] + m.group(1).split("::")[1:]))
    return {f for f in found if f}


def existing_modules():
    mods = set()
    for root, _, files in os.walk(SRC):
        for f in files:
            if f.endswith(".rs") and f != "tests.rs":
                mods.add(tuple(module_of(os.path.join(root, f))))
    return mods


def resolve(path_parts, mods):
    # The longest prefix that is a module.
    for n in range(len(path_parts), 0, -1):
        if tuple(path_parts[:n]) in mods:
            return tuple(path_parts[:n])
    return None


def cycles(graph):
    index, low, stack, on, out, counter = {}, {}, [], set(), [], [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    sys.setrecursionlimit(10000)
    for v in list(graph):
        if v not in index:
            visit(v)
    return out


def main():
    mods = existing_modules()
    fine, top = {}, {}
    for root, _, files in os.walk(SRC):
        for f in files:
            if not f.endswith(".rs") or f == "tests.rs":
                continue
            path = os.path.join(root, f)
            mod = tuple(module_of(path))
            if not mod:
                continue
            for d in deps(path, list(mod)):
                target = resolve(list(d), mods)
                if target is None or target == mod:
                    continue
                # A module using its own descendants, or a parent re-exporting them, is not a dependency.
                if target[: len(mod)] == mod or mod[: len(target)] == target:
                    continue
                fine.setdefault("::".join(mod), set()).add("::".join(target))
                if target[0] != mod[0]:
                    top.setdefault(mod[0], set()).add(target[0])
    bad = []
    for kind, g in (("top-level", top), ("module", fine)):
        for c in cycles(g):
            bad.append(f"{kind} import cycle: {' <-> '.join(c)}")
    for m, forbidden in FORBIDDEN.items():
        allowed = {x[1:] for x in forbidden if x.startswith("!")}
        for d in sorted(top.get(m, ())):
            if ("*" in forbidden and d not in allowed) or d in forbidden:
                bad.append(f"layering: {m} must not depend on {d}")
    if "--graph" in sys.argv:
        for m in sorted(top):
            print(f"{m:16} -> {', '.join(sorted(top[m]))}")
    if bad:
        print("\n".join(bad))
        sys.exit(1)
    print(f"module dependencies: {len(mods)} modules, no cycles, layers respected")


if __name__ == "__main__":
    main()
