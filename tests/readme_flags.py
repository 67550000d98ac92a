#!/usr/bin/python3
"""README.md's flag table and `dotproxy --help` list the same flags, each
with a value or without one alike, and the same defaults.

--help is printed from config.c's option table: an option is a line
"  --name [ARG]  help...", continued by indented lines, ending in
"(default X)" when it has one. A README row is "| `--name ARG` [/ `--other`]
| default | meaning |"; its default belongs to its first flag, or, written
"A / B" beside as many flags, one to each. Backticks are markup.

Usage: readme_flags.py DOTPROXY README.md (ctest runs it; exit 0 = agree).
"""

import re
import subprocess
import sys


def help_options(binary):
    out = subprocess.run([binary, "--help"], capture_output=True, text=True, timeout=10,
                         check=True).stdout
    opts, cur = {}, None
    for line in out.splitlines():
        m = re.match(r"  (--[a-z0-9-]+)( \S+)?\s", line + " ")
        if m:
            cur = m.group(1)
            opts[cur] = {"arg": bool(m.group(2)), "text": (line + " ")[m.end():]}
        elif cur and line.startswith(" " * 10):
            opts[cur]["text"] += " " + line.strip()
        else:
            cur = None
    for o in opts.values():
        o["text"] = " ".join(o["text"].split())
        d = re.search(r"\(default ([^()]*)\)", o["text"])
        o["default"] = d.group(1) if d else None
    return opts


def readme_options(path):
    text = open(path, encoding="utf-8").read()
    section = text.split("\n## Flags\n", 1)[1].split("\n## ", 1)[0]
    opts = {}
    for line in section.splitlines():
        if not line.startswith("| `--"):
            continue
        cells = [c.strip() for c in re.split(r"(?<!\\)\|", line)[1:-1]]
        spans = re.findall(r"`(--[a-z0-9-]+)([^`]*)`", cells[0])
        default = cells[1].replace("`", "").strip()
        parts = default.split(" / ")
        if len(parts) != len(spans):
            parts = [default] + [""] * (len(spans) - 1)
        for (name, arg), d in zip(spans, parts):
            opts[name] = {"arg": bool(arg.strip()), "default": d or None}
    return opts


def main():
    binary, readme = sys.argv[1], sys.argv[2]
    got, doc = help_options(binary), readme_options(readme)
    problems = []
    for name in sorted(set(got) - set(doc)):
        problems.append("%s is in --help, not in README.md's flag table" % name)
    for name in sorted(set(doc) - set(got)):
        problems.append("%s is in README.md's flag table, not in --help" % name)
    for name in sorted(set(got) & set(doc)):
        g, d = got[name], doc[name]
        if g["arg"] != d["arg"]:
            problems.append("%s: --help says it %s a value, README.md does not"
                            % (name, "takes" if g["arg"] else "takes no"))
        if g["default"] != d["default"]:
            problems.append("%s: default %r in --help, %r in README.md" % (name, g["default"], d["default"]))
    if not got:
        problems.append("no option found in --help")
    for p in problems:
        print(p)
    print("%d flags compared, %d disagreements" % (len(got), len(problems)))
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
