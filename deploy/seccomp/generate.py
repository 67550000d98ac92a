#!/usr/bin/env python3
"""generate.py - write deploy/seccomp/dotproxy.json, a seccomp profile for
Docker (--security-opt seccomp=FILE) and Kubernetes (seccompProfile
Localhost) that allows io_uring.

    deploy/seccomp/generate.py [--check] [OUTPUT]

Why: the default seccomp profiles of Docker 25+ and containerd 2.0+ block
io_uring_setup/enter/register, without which dotproxy cannot start. Rather
than run unconfined, allow what a system service needs plus io_uring.

What: the allow-list is systemd's @system-service set (expanded with
`systemd-analyze syscall-filter`, so it comes from the installed systemd)
plus the three io_uring calls, everything else fails with EPERM. Unlike the
systemd unit it keeps the set-uid calls and capset: runc installs the filter
before it switches to the image's user when no_new_privs is off (and it must
be off for the binary's file capability to count), so those calls happen
under the filter.

--check: exit 1 if OUTPUT differs from what would be written (same systemd
version assumed). Standard library only; needs systemd-analyze.
"""
import json
import os
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
DEFAULT_OUT = os.path.join(HERE, "dotproxy.json")
BASE = ["@system-service", "io_uring_setup", "io_uring_enter", "io_uring_register"]
ARCHES = ["SCMP_ARCH_X86_64", "SCMP_ARCH_X86", "SCMP_ARCH_X32",
          "SCMP_ARCH_AARCH64", "SCMP_ARCH_ARM"]


def syscall_groups(text=None):
    """Parse `systemd-analyze syscall-filter` output: {"@group": [members]},
    members being names or nested @groups."""
    if text is None:
        text = subprocess.run(["systemd-analyze", "syscall-filter"], check=True,
                              capture_output=True, text=True).stdout
    groups, cur = {}, None
    for raw in text.splitlines():
        line = raw.strip()
        if not line:
            cur = None
            continue
        if raw.startswith("@"):
            cur = groups.setdefault(line.split()[0], [])
            continue
        if cur is None or line.startswith("#"):
            continue
        cur.append(line.split()[0])
    return groups


def expand(names, groups):
    """Expand a systemd SystemCallFilter= list (names and @groups)."""
    out, todo, seen = set(), list(names), set()
    while todo:
        n = todo.pop()
        if n.startswith("@"):
            if n in seen:
                continue
            seen.add(n)
            if n not in groups:
                raise KeyError("unknown syscall group %s" % n)
            todo.extend(groups[n])
        else:
            out.add(n)
    return out


def profile(groups):
    names = sorted(expand(BASE, groups))
    return {
        "defaultAction": "SCMP_ACT_ERRNO",
        "defaultErrnoRet": 1,
        "architectures": ARCHES,
        "syscalls": [{"names": names, "action": "SCMP_ACT_ALLOW"}],
    }


def main(argv):
    check = "--check" in argv
    args = [a for a in argv if a != "--check"]
    out = args[0] if args else DEFAULT_OUT
    text = json.dumps(profile(syscall_groups()), indent=2) + "\n"
    if check:
        with open(out) as f:
            same = f.read() == text
        print("%s: %s" % (out, "up to date" if same else "differs from the generated profile"))
        return 0 if same else 1
    with open(out, "w") as f:
        f.write(text)
    print("wrote %s" % out)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
