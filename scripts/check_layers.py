#!/usr/bin/python3
"""check_layers.py - the module rules of core/ (issue 14), checked.

  1. No include cycle between modules. A module is a file stem: X.c and X.h
     are module X; a type header X-t.h is its own node (it holds types only
     and includes other type headers and libraries).
  2. No call cycle between modules: from the object files, module A calls B
     when A's object needs a symbol B's object defines (nm). Calls through a
     function pointer (an ops struct) do not appear, by design.
  3. No function in core/*.c longer than MAX_LINES lines unless the comment
     above it says why, with the word "long:".

Usage: check_layers.py BUILD_DIR   (a build of the dotproxy target)
Exit 0 when every rule holds, 1 with the offenders listed otherwise.
"""
import glob
import os
import re
import subprocess
import sys

MAX_LINES = 80
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CORE = os.path.join(ROOT, "core")


def module_of(path):
    base = os.path.basename(path)
    if base.endswith("-t.h"):
        return base[:-2]
    return os.path.splitext(base)[0].replace(".bpf", "")


def include_graph():
    g = {}
    for path in glob.glob(os.path.join(CORE, "*.[ch]")):
        m = module_of(path)
        g.setdefault(m, set())
        for line in open(path, encoding="utf-8"):
            inc = re.match(r'\s*#\s*include\s+"([^"]+)"', line)
            if inc and os.path.exists(os.path.join(CORE, inc.group(1))):
                dep = module_of(inc.group(1))
                if dep != m:
                    g[m].add(dep)
    return g


def nm_symbols(obj):
    out = subprocess.run(["nm", obj], capture_output=True, text=True, check=True).stdout
    defined, undefined = set(), set()
    for line in out.splitlines():
        parts = line.split()
        if len(parts) == 2 and parts[0] == "U":
            undefined.add(parts[1])
        elif len(parts) == 3 and parts[1] in "TDBR":
            defined.add(parts[2])
    return defined, undefined


def call_graph(build):
    objs = {}
    for obj in glob.glob(os.path.join(build, "**", "core", "*.c.o"), recursive=True):
        if "/tests/" in obj or "fuzz" in obj:
            continue
        objs.setdefault(module_of(obj[:-2]), obj)
    if not objs:
        sys.exit("check_layers: no core/*.c.o under %s: build it first" % build)
    syms = {m: nm_symbols(o) for m, o in objs.items()}
    owner = {}
    for m, (defined, _) in syms.items():
        for s in defined:
            owner[s] = m
    g = {m: set() for m in syms}
    for m, (_, undefined) in syms.items():
        for s in undefined:
            if s in owner and owner[s] != m:
                g[m].add(owner[s])
    return g


def cycles(g):
    """Strongly connected components with more than one module (Tarjan)."""
    index, low, stack, on, out = {}, {}, [], set(), []
    counter = [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in sorted(g.get(v, ())):
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

    for v in sorted(g):
        if v not in index:
            visit(v)
    return out


def long_functions():
    bad = []
    for path in sorted(glob.glob(os.path.join(CORE, "*.c"))):
        lines = open(path, encoding="utf-8").read().split("\n")
        start = None
        for i, line in enumerate(lines):
            if line == "{" and i > 0 and re.match(r"^[A-Za-z_].*\)\s*$|^\s.*\)\s*$", lines[i - 1]):
                start = i
            elif line == "}" and start is not None:
                n = i - start + 1
                if n > MAX_LINES:
                    sig = start - 1
                    while sig > 0 and not re.match(r"^[A-Za-z_]", lines[sig]):
                        sig -= 1
                    above = "\n".join(lines[max(0, sig - 8):sig])
                    if "long:" not in above:
                        name = re.search(r"(\w+)\s*\(", lines[sig])
                        bad.append("%s:%d %s: %d lines" % (os.path.relpath(path, ROOT), sig + 1,
                                                           name.group(1) if name else "?", n))
                start = None
    return bad


def main():
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    failed = False
    for what, g in (("include", include_graph()), ("call", call_graph(sys.argv[1]))):
        for c in cycles(g):
            print("%s cycle: %s" % (what, " <-> ".join(c)))
            for m in c:
                print("    %s -> %s" % (m, ", ".join(sorted(d for d in g[m] if d in c))))
            failed = True
    for f in long_functions():
        print("function over %d lines without a 'long:' reason: %s" % (MAX_LINES, f))
        failed = True
    print("check_layers: %s" % ("FAILED" if failed else "ok: no include or call cycle, no unexplained long function"))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
