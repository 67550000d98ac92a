"""Checks of the deployment files in deploy/.

    /usr/bin/python3 -m pytest -q -p no:cacheprovider tests/deploy

Static checks (always run; need python3-yaml):
- deploy/dotproxy.conf.example and the ConfigMap's config parse with a small
  parser that mirrors the daemon's config-file format (core/config.c);
- deploy/Dockerfile: two stages, build on debian:12, runtime on
  debian:12-slim with runtime libraries only, a non-root USER, the file
  capability, EXPOSE, HEALTHCHECK on /healthz, COPY sources that exist;
- deploy/systemd/dotproxy.service: the hardening keys, one coherent
  privilege model (DynamicUser + ambient CAP_NET_BIND_SERVICE, no --user;
  the daemon holds no capability once bound);
- deploy/k8s/*.yaml: kinds, apiVersions, images, probes on /healthz at the
  metrics port the config serves, prometheus annotations, resources,
  securityContext, the config volume and the link-local address agreeing,
  the metrics allow list admitting the node's address (the kubelet's
  probes) from the downward API; cluster.local, in-addr.arpa and ip6.arpa
  forwarded over tcp:// to one kube-dns address that deploy/README.md
  names, "." over DoT only (and mutated copies caught by the same check);
- deploy/seccomp/dotproxy.json: a valid profile that allows io_uring.

Checks that run tools (each skips loudly when its tool is missing):
- `systemd-analyze verify` and `systemd-analyze security --offline` on a
  copy of the unit whose ExecStart points at the built binary;
- `apt-cache show` for the Dockerfile's packages; every shared library of
  the built binary belongs to a runtime package or to debian:12-slim;
- the Dockerfile's build-stage commands, run on a copy of exactly what the
  stage COPYs (cmake, -DDP_TESTS=OFF, install);
- the configs through the real binary (`dotproxy --config FILE --version`;
  a config with forward lines skips on a build without --forward), and the
  parser's accepted and refused lines through it too, so the mirror agrees;
- the init container's script, twice, in a fresh network namespace;
- the daemon itself, as root only: started the way the systemd unit starts
  it (non-root, ambient CAP_NET_BIND_SERVICE, no_new_privs, the unit's
  system-call filter) and the way the image does (non-root, file
  capability, deploy/seccomp/dotproxy.json), from the example config bound
  to port 53 of a loopback address, against tools' dot-responder on
  127.0.0.1: UDP and TCP answers, /metrics, /healthz, the Dockerfile's
  HEALTHCHECK command, SIGHUP, SIGTERM with exit status 0.

Nothing leaves the loopback interface. The binaries are taken from
$DOTPROXY_BUILD_DIR (default: build/ at the repository root).
"""

import base64
import errno
import ipaddress
import json
import os
import random
import re
import shlex
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

yaml = pytest.importorskip("yaml", reason="python3-yaml missing (apt-get install python3-yaml)")

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy"
DOCKERFILE = DEPLOY / "Dockerfile"
UNIT = DEPLOY / "systemd" / "dotproxy.service"
CONF_EXAMPLE = DEPLOY / "dotproxy.conf.example"
K8S = DEPLOY / "k8s"
SECCOMP_JSON = DEPLOY / "seccomp" / "dotproxy.json"
SECCOMP_GEN = DEPLOY / "seccomp" / "generate.py"
BUILD = Path(os.environ.get("DOTPROXY_BUILD_DIR", REPO / "build"))
DOTPROXY = BUILD / "dotproxy"
RESPONDER = BUILD / "tools" / "dot-responder"

IO_URING = {"io_uring_setup", "io_uring_enter", "io_uring_register"}


def skip_loudly(why):
    """A skip that shows up in -q output and in ctest's log."""
    sys.stderr.write("\nSKIP (deploy): %s\n" % why)
    pytest.skip(why)


def need_tool(name, package):
    path = shutil.which(name)
    if not path:
        skip_loudly("%s not found (Debian package %s)" % (name, package))
    return path


def need_binary(path=DOTPROXY):
    if not path.is_file():
        skip_loudly("%s not built (set DOTPROXY_BUILD_DIR or build the project)" % path)
    return path


def need_root():
    if os.geteuid() != 0:
        skip_loudly("needs root (switches users, grants capabilities, binds port 53)")


# ============================================================ config format
#
# Mirrors dp_config_parse_file() in core/config.c: "name value" per line;
# a '#' that begins a word starts a comment ("1.1.1.1#name" keeps its '#');
# a flag without a value stands alone or takes yes/true/no/false; names are
# the long flags without "--", except help, version and config; lines are
# shorter than 1023 characters.

DURATION = re.compile(r"^(\d+(\.\d+)?)(ms|s)?$")


def _addr_port(v):
    m = re.match(r"^\[([0-9A-Fa-f:.]+)\]:(\d+)$", v) or re.match(r"^([0-9.]+):(\d+)$", v)
    if not m:
        raise ValueError("expected IP:PORT or [IPv6]:PORT")
    ipaddress.ip_address(m.group(1))
    if not 0 <= int(m.group(2)) <= 65535:
        raise ValueError("port out of range")


def _upstream(v):
    head, _, opts = v.partition(",")
    hostport, sharp, name = head.partition("#")
    m = re.match(r"^\[([0-9A-Fa-f:.]+)\](:(\d+))?$", hostport) or \
        re.match(r"^([0-9.]+)(:(\d+))?$", hostport) or re.match(r"^([0-9A-Fa-f:]+)()()$", hostport)
    if not m:
        raise ValueError("expected IP[:PORT]#NAME")
    ipaddress.ip_address(m.group(1))
    if m.group(3) and not 1 <= int(m.group(3)) <= 65535:
        raise ValueError("port out of range")
    if sharp and not re.match(r"^[A-Za-z0-9.-]+$", name):
        raise ValueError("bad server name %r" % name)
    for o in filter(None, opts.split(",")):
        if not (o == "no-ca" or o.startswith("pin-sha256=")):
            raise ValueError("unknown upstream option %r" % o)
        if o.startswith("pin-sha256=") and not _is_sha256_b64(o[len("pin-sha256="):]):
            raise ValueError("pin-sha256 wants the base64 of 32 bytes")


def _is_sha256_b64(v):
    try:
        return len(base64.b64decode(v, validate=True)) == 32
    except ValueError:
        return False


# A zone: "." (the root, the default route) or a domain name, trailing dot
# optional; labels of letters, digits, '-' and '_' (e.g. _msdcs).
ZONE = re.compile(r"^(\.|([A-Za-z0-9_-]{1,63}\.)*[A-Za-z0-9_-]{1,63}\.?)$")


def _plain_upstream(v):
    """udp://IP[:PORT] or tcp://IP[:PORT] (port 53 by default); IPv6 as
    [::1]:5353 or bare without a port, as dp_config_parse_addr takes it."""
    scheme, _, rest = v.partition("://")
    if scheme not in ("udp", "tcp"):
        raise ValueError("expected udp:// or tcp://")
    m = re.match(r"^\[([0-9A-Fa-f:.]+)\](:(\d+))?$", rest) or re.match(r"^([0-9.]+)(:(\d+))?$", rest) or \
        re.match(r"^([0-9A-Fa-f]*:[0-9A-Fa-f:]*)()()$", rest)
    if not m:
        raise ValueError("expected %s://IP[:PORT]" % scheme)
    ipaddress.ip_address(m.group(1))
    if m.group(3) and not 1 <= int(m.group(3)) <= 65535:
        raise ValueError("port out of range")


def _any_upstream(v):
    if "://" in v:
        _plain_upstream(v)
    else:
        _upstream(v)


def forward_words(v):
    """(zone, upstream) of a forward line's value: "ZONE UPSTREAM", or
    "ZONE=UPSTREAM" as on the command line (the daemon takes both)."""
    words = re.split(r"[ \t]+", v)
    if len(words) == 1 and "=" in v:
        words = v.split("=", 1)
    if len(words) != 2:
        raise ValueError("expected ZONE UPSTREAM")
    return words


def _forward(v):
    """One upstream per line, as one per --forward ZONE=UPSTREAM."""
    zone, up = forward_words(v)
    if not ZONE.match(zone) or len(zone.rstrip(".")) > 253:
        raise ValueError("bad zone %r" % zone)
    _any_upstream(up)


def _duration(v):
    m = DURATION.match(v)
    if not m:
        raise ValueError("expected a duration such as 2s or 500ms")
    ms = float(m.group(1)) * (1 if m.group(3) == "ms" else 1000)
    if not 1 <= ms <= 3600e3:
        raise ValueError("duration out of range")


def _uint(lo, hi):
    def check(v):
        if not re.match(r"^\d+$", v) or not lo <= int(v) <= hi:
            raise ValueError("expected %d..%d" % (lo, hi))
    return check


def _one_of(*words):
    def check(v):
        if v not in words:
            raise ValueError("expected one of %s" % ", ".join(words))
    return check


def _cidr(v):
    ipaddress.ip_network(v, strict=True)  # no host bits, like dp_acl_add


def _cidr_list(v):
    for one in v.split(","):
        ipaddress.ip_network(one, strict=True)


def _hedge(v):
    if v not in ("auto", "off"):
        _duration(v)


def _text(v):
    if not v:
        raise ValueError("empty")


CONFIG_VALUED = {
    "listen": _addr_port, "upstream": _upstream, "threads": _uint(1, 256),
    "timeout": _duration, "handshake-timeout": _duration, "ca-file": _text,
    "log-level": _one_of("debug", "info", "warn", "error"),
    "max-tcp-clients": _uint(1, 1000000), "tcp-idle-timeout": _duration,
    "max-inflight": _uint(1, 1000000), "max-inflight-per-conn": _uint(1, 65535),
    "upstream-conns": _uint(1, 64),
    "max-udp-size": _uint(512, 4096), "allow": _cidr, "rate-limit": _uint(0, 10000000),
    "cache-size": _uint(0, 1048576), "cache-min-ttl": _uint(0, 604800),
    "cache-max-ttl": _uint(0, 604800), "stale-ttl": _uint(0, 604800),
    "tls-min-version": _one_of("1.2", "1.3"), "upstream-policy": _one_of("fastest", "round-robin"),
    "hedge-after": _hedge, "upstream-idle-timeout": _duration,
    "metrics": _addr_port, "metrics-allow": _cidr_list, "user": _text, "drain-timeout": _duration,
    "forward": _forward, "servfail-ttl": _uint(1, 300), "udp-io": _one_of("uring", "mmsg"),
    "steering": _one_of("auto", "off"), "batch-us": _uint(0, 1000),
}
CONFIG_FLAGS = {"no-cache", "allow-root", "allow-plain-default", "forward-ecs", "no-pin"}
CONFIG_REPEATABLE = {"listen", "upstream", "allow", "metrics-allow", "forward"}


class ConfigError(Exception):
    pass


def parse_config(text, where="config"):
    """[(lineno, name, value-or-None)]; raises ConfigError like the daemon."""
    out = []
    for lineno, line in enumerate(text.splitlines(), 1):
        if len(line) + 1 >= 1023:
            raise ConfigError("%s:%d: line too long" % (where, lineno))
        m = re.search(r"(^|[ \t])#", line)
        if m:
            line = line[:m.start()]
        line = line.strip(" \t\r")
        if not line:
            continue
        parts = re.split(r"[ \t]+", line, maxsplit=1)
        name, value = parts[0], (parts[1] if len(parts) > 1 else None)
        if name in CONFIG_FLAGS:
            if value not in (None, "yes", "true", "no", "false"):
                raise ConfigError("%s:%d: %s takes no value (or yes/no)" % (where, lineno, name))
        elif name in CONFIG_VALUED:
            if value is None:
                raise ConfigError("%s:%d: %s needs a value" % (where, lineno, name))
            try:
                CONFIG_VALUED[name](value)
            except ValueError as e:
                raise ConfigError("%s:%d: %s %s: %s" % (where, lineno, name, value, e))
        else:
            raise ConfigError("%s:%d: unknown setting '%s'" % (where, lineno, name))
        out.append((lineno, name, value))
    return out


def zone_key(zone):
    """A zone as the daemon's metrics write it: lower case, trailing dot."""
    return "." if zone == "." else zone.lower().rstrip(".") + "."


def routes(s):
    """{zone: [upstreams]} of a settings() dict: `upstream X` is
    `forward . X`."""
    r = {}
    for u in s.get("upstream", []):
        r.setdefault(".", []).append(u)
    for v in s.get("forward", []):
        zone, up = forward_words(v)
        r.setdefault(zone_key(zone), []).append(up)
    return r


def settings(entries):
    """{name: [values]} from parse_config's list."""
    d = {}
    for _, name, value in entries:
        d.setdefault(name, []).append(value)
    return d


REFUSED_CONFIGS = [
    ("listne 127.0.0.1:53\n", "unknown setting"),
    ("listen\n", "needs a value"),
    ("listen 127.0.0.1\n", "IP:PORT"),
    ("config /etc/x.conf\n", "unknown setting"),
    ("no-cache maybe\n", "takes no value"),
    ("allow 10.0.0.1/8\n", "host bits"),
    ("upstream 1.1.1.1#bad name!\n", "server name"),
    ("timeout 2 seconds\n", "duration"),
    ("threads 0\n", "expected 1..256"),
    ("x" * 1100 + "\n", "line too long"),
    ("forward cluster.local\n", "ZONE UPSTREAM"),
    ("forward cluster.local=tcp://10.96.0.10 x\n", "bad zone"),
    ("forward corp.example 10.0.0.2#ns.corp,pin-sha256=AAAA\n", "base64 of 32 bytes"),
    ("forward a..b tcp://10.96.0.10\n", "bad zone"),
    ("forward corp.example http://10.0.0.2\n", "udp:// or tcp://"),
    ("forward corp.example udp://10.0.0.2:70000\n", "port out of range"),
    ("forward corp.example tcp://10.0.0.2#ns.corp\n", "tcp://IP"),
    ("forward corp.example tcp://ns.corp.example\n", "tcp://IP"),
    ("forward corp.example 10.0.0.2#bad name!\n", "ZONE UPSTREAM"),
    ("forward corp.example 10.0.0.2#ns.corp,pinned\n", "upstream option"),
]


@pytest.mark.parametrize("text,why", REFUSED_CONFIGS)
def test_config_parser_refuses(text, why):
    with pytest.raises(ConfigError) as e:
        parse_config(text)
    assert re.search(why, str(e.value)), str(e.value)


def test_config_parser_accepts_the_format():
    got = parse_config("# comment\n\n  listen 127.0.0.1:53   # trailing comment\n"
                       "upstream 1.1.1.1#cloudflare-dns.com\nupstream [2606:4700::1111]:853#one.one\n"
                       "no-cache\nallow-root no\nallow fc00::/7\n\ttimeout 500ms\r\n")
    assert [(n, v) for _, n, v in got] == [
        ("listen", "127.0.0.1:53"), ("upstream", "1.1.1.1#cloudflare-dns.com"),
        ("upstream", "[2606:4700::1111]:853#one.one"), ("no-cache", None), ("allow-root", "no"),
        ("allow", "fc00::/7"), ("timeout", "500ms")]


PIN = "47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU="  # base64 of a SHA-256
FORWARD_LINES = ("forward cluster.local tcp://10.96.0.10:53\n"
                 "forward in-addr.arpa. tcp://10.96.0.10\n"
                 "forward Corp.Example udp://[fd00::53]:5353\n"
                 "forward corp.example udp://fd00::53\n"
                 "forward _msdcs.corp.example 10.0.0.2:853#dc.corp.example,pin-sha256=%s\n"
                 "forward . 9.9.9.9#dns.quad9.net   # the default route\n"
                 "forward ip6.arpa=tcp://10.96.0.10\n"
                 "allow-plain-default\n") % PIN


def test_config_parser_accepts_forward_lines():
    text = FORWARD_LINES
    got = [(n, v) for _, n, v in parse_config(text)]
    assert [n for n, _ in got] == ["forward"] * 7 + ["allow-plain-default"]
    assert routes(settings(parse_config(text))) == {
        "cluster.local.": ["tcp://10.96.0.10:53"], "in-addr.arpa.": ["tcp://10.96.0.10"],
        "corp.example.": ["udp://[fd00::53]:5353", "udp://fd00::53"],
        "_msdcs.corp.example.": ["10.0.0.2:853#dc.corp.example,pin-sha256=%s" % PIN],
        ".": ["9.9.9.9#dns.quad9.net"], "ip6.arpa.": ["tcp://10.96.0.10"]}


def test_config_example_parses():
    s = settings(parse_config(CONF_EXAMPLE.read_text(), str(CONF_EXAMPLE)))
    for name in ("listen", "upstream", "metrics", "ca-file", "allow"):
        assert name in s, "the example should show %s" % name
    for name, values in s.items():
        assert len(values) == 1 or name in CONFIG_REPEATABLE, "%s given %d times" % (name, len(values))
    # The systemd unit runs it as a non-root user: a drop would make no sense.
    assert "user" not in s and "allow-root" not in s
    for u in s["upstream"]:
        assert "#" in u, "upstream %s has no TLS server name" % u
    host = s["metrics"][0].rsplit(":", 1)[0].strip("[]")
    assert ipaddress.ip_address(host).is_loopback, "metrics has no auth: keep it on loopback"


# ================================================================ Dockerfile

def dockerfile_instructions(text):
    """[(INSTRUCTION, args)] with continuations joined and comments dropped."""
    out, cur = [], ""
    for line in text.splitlines():
        s = line.strip()
        if not cur and (not s or s.startswith("#")):
            continue
        if cur and s.startswith("#"):
            continue
        if s.endswith("\\"):
            cur += s[:-1] + " "
            continue
        cur += s
        word, _, rest = cur.partition(" ")
        out.append((word.upper(), rest.strip()))
        cur = ""
    return out


def dockerfile_stages():
    """[{'from': image, 'name': alias, 'ins': [(INSTR, args)]}]"""
    stages = []
    for ins, args in dockerfile_instructions(DOCKERFILE.read_text()):
        if ins == "FROM":
            w = args.split()
            w = [x for x in w if not x.startswith("--platform")]
            stages.append({"from": w[0], "name": w[2] if len(w) > 2 and w[1].upper() == "AS" else None,
                           "ins": []})
        elif stages:
            stages[-1]["ins"].append((ins, args))
    return stages


def apt_installs(stage):
    pkgs = set()
    for ins, args in stage["ins"]:
        if ins != "RUN":
            continue
        for cmd in re.split(r"&&|;", args):
            w = cmd.split()
            if len(w) > 2 and w[0] == "apt-get" and "install" in w:
                pkgs |= {x for x in w[w.index("install") + 1:] if not x.startswith("-")}
    return pkgs


BUILD_PACKAGES = {"build-essential", "cmake", "ninja-build", "pkg-config", "liburing-dev",
                  "android-libboringssl-dev", "libnghttp2-dev"}
RUNTIME_PACKAGES = {"liburing2", "android-libboringssl", "libnghttp2-14", "libbpf1", "libelf1",
                    "ca-certificates"}
# In debian:12-slim already (Essential or required by apt; dpkg pre-depends
# on zlib1g).
SLIM_BASE_PACKAGES = {"libc6", "libgcc-s1", "libstdc++6", "zlib1g"}


def test_dockerfile_two_stages():
    st = dockerfile_stages()
    assert len(st) == 2, "want a build and a runtime stage, got %d FROM" % len(st)
    assert st[0]["from"] == "debian:12" and st[0]["name"] == "build"
    assert st[1]["from"] == "debian:12-slim"
    assert apt_installs(st[0]) >= BUILD_PACKAGES
    runs = " ".join(a for i, a in st[0]["ins"] if i == "RUN")
    assert "-DDP_TESTS=OFF" in runs and "cmake --build" in runs


def test_dockerfile_runtime_has_runtime_libs_only():
    rt = dockerfile_stages()[1]
    pkgs = apt_installs(rt)
    assert pkgs >= RUNTIME_PACKAGES
    extra = pkgs - RUNTIME_PACKAGES
    runs = " ".join(a for i, a in rt["ins"] if i == "RUN")
    for p in extra:  # a helper may come in only to leave in the same RUN
        assert re.search(r"apt-get purge[^&]*\b%s\b" % re.escape(p), runs), \
            "runtime stage installs %s and keeps it" % p
    assert not any(p.endswith("-dev") or p in BUILD_PACKAGES for p in pkgs)
    copies = [a for i, a in rt["ins"] if i == "COPY"]
    assert any(a.startswith("--from=build") and "dotproxy" in a for a in copies)


def test_dockerfile_runtime_is_not_root():
    rt = dockerfile_stages()[1]
    users = [a for i, a in rt["ins"] if i == "USER"]
    assert users, "the runtime stage must set USER"
    user = users[-1].split(":")[0]
    assert user not in ("0", "root", ""), "runtime runs as root"
    runs = " ".join(a for i, a in rt["ins"] if i == "RUN")
    # Non-root binds port 53 through the binary's file capability.
    assert re.search(r"setcap cap_net_bind_service[=+]+ep /usr/sbin/dotproxy", runs)
    if user.isdigit():
        assert re.search(r"useradd[^&]*--uid %s\b" % user, runs), "USER %s is not created" % user
    assert "--allow-root" not in DOCKERFILE.read_text()


def test_dockerfile_ports_entrypoint_healthcheck():
    rt = dockerfile_stages()[1]
    expose = " ".join(a for i, a in rt["ins"] if i == "EXPOSE").split()
    assert {"53/udp", "53/tcp"} <= set(expose)
    cmd = json.loads(next(a for i, a in rt["ins"] if i == "CMD"))
    mport = cmd[cmd.index("--metrics") + 1].rsplit(":", 1)[1]
    assert mport in expose or mport + "/tcp" in expose, "metrics port %s not exposed" % mport
    ep = json.loads(next(a for i, a in rt["ins"] if i == "ENTRYPOINT"))
    assert ep == ["/usr/sbin/dotproxy"]
    hc = healthcheck_command()
    assert "/healthz" in " ".join(hc) and mport in " ".join(hc)


def healthcheck_command():
    rt = dockerfile_stages()[1]
    args = next(a for i, a in rt["ins"] if i == "HEALTHCHECK")
    m = re.search(r"\bCMD\s+(\[.*\])\s*$", args)
    assert m, "HEALTHCHECK should use the exec form CMD [...]"
    return json.loads(m.group(1))


def test_dockerfile_copies_exist_and_context_keeps_them():
    di = REPO / ".dockerignore"
    ignore = [l.strip() for l in (di.read_text().splitlines() if di.exists() else [])
              if l.strip() and not l.strip().startswith("#")]
    for ins, args in dockerfile_stages()[0]["ins"]:
        if ins != "COPY" or args.startswith("--from"):
            continue
        srcs = args.split()[:-1]
        for s in srcs:
            assert (REPO / s).exists(), "COPY %s: no such path in the repository" % s
            top = s.strip("/").split("/")[0]
            assert top not in ignore and top + "/" not in ignore, ".dockerignore drops %s" % s


def test_dockerfile_packages_exist_in_debian():
    apt_cache = need_tool("apt-cache", "apt")
    names = sorted(RUNTIME_PACKAGES | BUILD_PACKAGES | {"libcap2-bin"})
    missing = []
    for p in names:
        r = subprocess.run([apt_cache, "show", "--no-all-versions", p], capture_output=True, text=True,
                           timeout=60)
        if r.returncode != 0 or "Package: %s" % p not in r.stdout:
            missing.append(p)
    if len(missing) == len(names):
        skip_loudly("apt-cache knows none of the packages: run apt-get update first")
    assert not missing, "not in this machine's Debian package lists: %s" % missing


def test_binary_needs_only_runtime_packages():
    need_binary()
    need_tool("ldd", "libc-bin")
    dpkg = need_tool("dpkg-query", "dpkg")
    r = subprocess.run(["ldd", str(DOTPROXY)], capture_output=True, text=True, timeout=30)
    assert r.returncode == 0, r.stderr
    libs = re.findall(r"=>\s+(/\S+)", r.stdout)
    assert libs
    owners = set()
    for lib in libs:
        real = os.path.realpath(lib)
        for cand in (lib, real, real.replace("/usr/lib/", "/lib/", 1), real.replace("/lib/", "/usr/lib/", 1)):
            q = subprocess.run([dpkg, "-S", cand], capture_output=True, text=True, timeout=30)
            if q.returncode == 0:
                owners.add(q.stdout.split(":")[0].strip())
                break
        else:
            pytest.fail("no Debian package owns %s" % lib)
    assert owners <= RUNTIME_PACKAGES | SLIM_BASE_PACKAGES, \
        "libraries from packages the runtime stage lacks: %s" % (owners - RUNTIME_PACKAGES - SLIM_BASE_PACKAGES)


def test_dockerfile_build_stage_commands(tmp_path):
    """The build stage's COPY set and its cmake commands, run outside Docker."""
    for tool, pkg in (("cmake", "cmake"), ("ninja", "ninja-build"), ("cc", "build-essential")):
        need_tool(tool, pkg)
    src = tmp_path / "src"
    src.mkdir()
    build_stage = dockerfile_stages()[0]
    for ins, args in build_stage["ins"]:
        if ins == "COPY" and not args.startswith("--from"):
            *srcs, dest = args.split()
            for s in srcs:
                p = REPO / s
                target = src / dest.rstrip("/") if dest not in ("./", ".") else src / p.name
                if p.is_dir():
                    shutil.copytree(p, target, ignore=shutil.ignore_patterns("__pycache__"))
                else:
                    shutil.copy2(p, target)
    cmds = [a for i, a in build_stage["ins"] if i == "RUN" and "cmake -S" in a]
    assert len(cmds) == 1
    cmd = cmds[0].replace("/build", str(tmp_path / "build")).replace("/out", str(tmp_path / "out"))
    r = subprocess.run(["sh", "-ec", cmd], cwd=src, capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, "build stage failed:\n%s\n%s" % (r.stdout[-4000:], r.stderr[-4000:])
    binary = tmp_path / "out" / "usr" / "sbin" / "dotproxy"
    assert binary.is_file(), "the build stage did not install /usr/sbin/dotproxy"
    assert "dotproxy " in r.stdout  # its --version ran


# ==================================================================== systemd

def unit_entries(text=None):
    """[(section, key, value)] in file order (keys may repeat)."""
    out, section = [], None
    for line in (text if text is not None else UNIT.read_text()).splitlines():
        s = line.strip()
        if not s or s[0] in "#;":
            continue
        if s.startswith("[") and s.endswith("]"):
            section = s[1:-1]
            continue
        k, _, v = s.partition("=")
        out.append((section, k.strip(), v.strip()))
    return out


def unit_values(key, section="Service"):
    return [v for s, k, v in unit_entries() if s == section and k == key]


def unit_value(key, section="Service"):
    v = unit_values(key, section)
    assert v, "%s= missing from [%s]" % (key, section)
    return v[-1]


def test_unit_hardening_keys():
    assert unit_value("NoNewPrivileges") == "yes"
    assert unit_value("ProtectSystem") == "strict"
    assert unit_value("ProtectHome") in ("yes", "read-only", "tmpfs")
    assert unit_value("PrivateTmp") == "yes"
    assert unit_value("AmbientCapabilities").split() == ["CAP_NET_BIND_SERVICE"]
    bounding = set(unit_value("CapabilityBoundingSet").split())
    assert "CAP_NET_BIND_SERVICE" in bounding
    assert bounding <= {"CAP_NET_BIND_SERVICE", "CAP_SETUID", "CAP_SETGID"}
    assert re.match(r"^\d+[KMG]$", unit_value("MemoryMax"))
    assert unit_value("Restart") == "on-failure"
    assert unit_value("ExecReload") == "/bin/kill -HUP $MAINPID"
    assert unit_value("LimitNOFILE") == "65536"
    assert unit_value("RestrictAddressFamilies").split() == ["AF_INET", "AF_INET6", "AF_UNIX"]
    allow = unit_values("SystemCallFilter")[0].split()
    assert "@system-service" in allow and IO_URING <= set(allow)
    for k in ("PrivateDevices", "ProtectKernelTunables", "ProtectKernelModules", "ProtectControlGroups",
              "RestrictNamespaces", "RestrictRealtime", "RestrictSUIDSGID", "LockPersonality",
              "MemoryDenyWriteExecute"):
        assert unit_value(k) == "yes", k
    assert unit_value("SystemCallArchitectures") == "native"
    assert unit_value("WantedBy", "Install") == "multi-user.target"


def test_unit_privilege_model_is_coherent():
    """Started non-root with the capability it needs: then no --user (the
    daemon skips the drop when it is not root) and no --allow-root; and no
    set-uid capabilities in the bounding set, which nothing would use."""
    assert unit_value("DynamicUser") == "yes" or unit_values("User")
    exec_start = shlex.split(unit_value("ExecStart"))
    assert exec_start[0].startswith("/") and exec_start[0].endswith("/dotproxy")
    assert "--user" not in exec_start and "--allow-root" not in exec_start
    assert exec_start[exec_start.index("--config") + 1] == "/etc/dotproxy/dotproxy.conf"
    if unit_value("DynamicUser") == "yes":
        assert not {"CAP_SETUID", "CAP_SETGID"} & set(unit_value("CapabilityBoundingSet").split())


def test_unit_stop_outlasts_drain():
    drain = settings(parse_config(CONF_EXAMPLE.read_text())).get("drain-timeout", ["5s"])[0]
    drain_s = float(DURATION.match(drain).group(1)) / (1000 if drain.endswith("ms") else 1)
    stop = unit_value("TimeoutStopSec")
    assert stop.endswith("s") and float(stop[:-1]) > drain_s + 2
    assert unit_value("KillSignal") == "SIGTERM"


def _unit_copy(tmp_path):
    """The unit with ExecStart on a binary that exists here (verify checks it)."""
    binary = DOTPROXY if DOTPROXY.is_file() else Path(shutil.which("true") or "/bin/true")
    if binary != DOTPROXY:
        sys.stderr.write("\nNOTE (deploy): %s not built; verifying with ExecStart=%s\n" % (DOTPROXY, binary))
    text = re.sub(r"^ExecStart=\S+", "ExecStart=%s" % binary, UNIT.read_text(), flags=re.M)
    out = tmp_path / "dotproxy.service"
    out.write_text(text)
    return out


def test_systemd_analyze_verify(tmp_path):
    tool = need_tool("systemd-analyze", "systemd")
    unit = _unit_copy(tmp_path)
    r = subprocess.run([tool, "verify", "--man=no", str(unit)], capture_output=True, text=True, timeout=120)
    ours = [l for l in (r.stdout + r.stderr).splitlines() if "dotproxy.service" in l]
    assert r.returncode == 0 and not ours, "systemd-analyze verify (rc=%d):\n%s%s" % (
        r.returncode, r.stdout, r.stderr)


def test_systemd_analyze_security(tmp_path):
    tool = need_tool("systemd-analyze", "systemd")
    unit = _unit_copy(tmp_path)
    r = subprocess.run([tool, "security", "--offline=yes", "--no-pager", str(unit)], capture_output=True,
                       text=True, timeout=120)
    m = re.search(r"Overall exposure level for dotproxy\.service: ([0-9.]+)", r.stdout)
    if not m:
        skip_loudly("systemd-analyze security --offline unsupported here (systemd < 250?): %s"
                    % r.stderr.strip()[:200])
    assert float(m.group(1)) <= 2.5, "exposure %s:\n%s" % (m.group(1), r.stdout)


# ================================================================ seccomp set

def systemd_groups():
    sys.dont_write_bytecode = True  # nothing written into deploy/
    sys.path.insert(0, str(SECCOMP_GEN.parent))
    try:
        import generate
    finally:
        sys.path.pop(0)
    need_tool("systemd-analyze", "systemd")
    return generate, generate.syscall_groups()


def unit_syscalls():
    """The unit's effective allow-list: the first SystemCallFilter= allows,
    later ~ lines remove (systemd's semantics for an allow-list)."""
    generate, groups = systemd_groups()
    allowed = None
    for line in unit_values("SystemCallFilter"):
        deny = line.startswith("~")
        names = generate.expand(line.lstrip("~").split(), groups)
        if deny:
            allowed = (allowed or set()) - names if allowed is not None else None
        else:
            allowed = (allowed or set()) | names
    assert allowed, "the unit has no allow-list"
    return allowed


def test_seccomp_profile_shape():
    p = json.loads(SECCOMP_JSON.read_text())
    assert p["defaultAction"] in ("SCMP_ACT_ERRNO", "SCMP_ACT_KILL_PROCESS", "SCMP_ACT_KILL")
    names = set()
    for rule in p["syscalls"]:
        assert rule["action"] == "SCMP_ACT_ALLOW" and not rule.get("args")
        names |= set(rule["names"])
    assert IO_URING <= names
    # What runc does after installing the filter when no_new_privs is off.
    runc = {"capset", "setgroups", "setresuid", "setresgid", "prctl", "execve", "close_range",
            "openat", "fchdir", "getppid", "futex", "rt_sigprocmask", "rt_sigaction", "sigaltstack",
            "mmap", "munmap", "clone", "clone3", "exit_group", "fcntl", "write", "read", "newfstatat",
            "epoll_pwait", "nanosleep", "sched_yield", "tgkill", "gettid", "getpid", "keyctl"}
    assert runc <= names, "missing for runc: %s" % sorted(runc - names)
    assert "SCMP_ARCH_X86_64" in p["architectures"] and "SCMP_ARCH_AARCH64" in p["architectures"]


def test_seccomp_profile_covers_the_unit():
    """Where the unit allows a call, so does the container profile."""
    missing = unit_syscalls() - {n for r in json.loads(SECCOMP_JSON.read_text())["syscalls"] for n in r["names"]}
    assert not missing, "regenerate deploy/seccomp/dotproxy.json (generate.py): %s" % sorted(missing)


# ================================================================= Kubernetes

def k8s_docs():
    docs = []
    for f in sorted(K8S.glob("*.yaml")):
        for d in yaml.safe_load_all(f.read_text()):
            if d is not None:
                docs.append((f.name, d))
    return docs


def k8s(kind):
    found = [d for _, d in k8s_docs() if d.get("kind") == kind]
    assert len(found) == 1, "want one %s, found %d" % (kind, len(found))
    return found[0]


KINDS = {"ConfigMap": "v1", "DaemonSet": "apps/v1", "Service": "v1", "ServiceAccount": "v1",
         "Kustomization": "kustomize.config.k8s.io/v1beta1"}


def test_k8s_manifests_parse_with_known_kinds():
    docs = k8s_docs()
    assert docs
    for fname, d in docs:
        assert d.get("kind") in KINDS, "%s: unexpected kind %s" % (fname, d.get("kind"))
        assert d.get("apiVersion") == KINDS[d["kind"]], "%s: %s wants apiVersion %s" % (
            fname, d["kind"], KINDS[d["kind"]])
        if d["kind"] != "Kustomization":
            assert d["metadata"]["name"] and d["metadata"]["namespace"] == "kube-system"
    for kind in ("ConfigMap", "DaemonSet", "Service"):
        k8s(kind)


def test_k8s_kustomization_lists_every_manifest():
    kz = k8s("Kustomization")
    listed = set(kz["resources"])
    files = {f.name for f in K8S.glob("*.yaml")} - {"kustomization.yaml"}
    assert listed == files


def k8s_config():
    cm = k8s("ConfigMap")
    return settings(parse_config(cm["data"]["dotproxy.conf"], "configmap.yaml"))


def test_k8s_configmap_config_parses():
    s = k8s_config()
    assert s["listen"] == ["169.254.20.10:53"]
    for u in s["upstream"]:
        assert "#" in u
    assert "threads" in s and "metrics" in s and "allow" in s


# The zones NodeLocal DNSCache sends to kube-dns (with force_tcp), and the
# README that must say which address the ConfigMap uses for it.
CLUSTER_ZONES = ("cluster.local.", "in-addr.arpa.", "ip6.arpa.")
README = DEPLOY / "README.md"


def plain_host(upstream):
    """The IP of udp://IP[:PORT] or tcp://IP[:PORT]."""
    rest = upstream.partition("://")[2]
    if rest.startswith("["):
        return rest[1:rest.index("]")]
    return rest if rest.count(":") > 1 else rest.split(":")[0]


def cluster_forwarding_problems(conf_text, readme_text):
    """What is wrong with a node-local config's routes ([] when nothing):
    each of CLUSTER_ZONES forwarded, over tcp:// only, all to one address
    that the README names (with the command that finds yours); the default
    route "." over DoT only."""
    r = routes(settings(parse_config(conf_text, "configmap.yaml")))
    problems = []
    hosts = set()
    for zone in CLUSTER_ZONES:
        ups = r.get(zone, [])
        if not ups:
            problems.append("%s is not forwarded" % zone)
        for u in ups:
            if not u.startswith("tcp://"):
                problems.append("%s goes to %s, not over tcp://" % (zone, u))
            else:
                hosts.add(plain_host(u))
    if len(hosts) > 1:
        problems.append("the cluster zones go to more than one address: %s" % sorted(hosts))
    for h in hosts:
        if not re.search(r"(^|[^0-9.])%s([^0-9]|$)" % re.escape(h), readme_text):
            problems.append("kube-dns address %s is not in deploy/README.md" % h)
    if "get svc kube-dns" not in readme_text:
        problems.append("deploy/README.md does not tell how to find the kube-dns address")
    if not r.get("."):
        problems.append('no upstream for "."')
    for u in r.get(".", []):
        if "://" in u or "#" not in u:
            problems.append('"." goes to %s, not DoT with a server name' % u)
    return problems


def test_k8s_forwards_cluster_names_to_kube_dns():
    conf = k8s("ConfigMap")["data"]["dotproxy.conf"]
    assert cluster_forwarding_problems(conf, README.read_text()) == []
    host = plain_host(routes(settings(parse_config(conf)))["cluster.local."][0])
    assert ipaddress.ip_address(host) in ipaddress.ip_network("10.96.0.0/12"), \
        "the documented default is kubeadm's kube-dns ClusterIP, in its Service range"
    assert "get svc kube-dns" in conf, "the ConfigMap should say how to find the address"


# Each mutation of the ConfigMap's config (or README) must be caught.
CONF_MUTATIONS = [
    ("drop ip6.arpa", lambda c: re.sub(r"(?m)^\s*forward ip6\.arpa .*\n", "", c), r"ip6\.arpa\. is not forwarded"),
    ("in-addr.arpa over udp", lambda c: c.replace("forward in-addr.arpa tcp://", "forward in-addr.arpa udp://"),
     r"in-addr\.arpa\. goes to udp://"),
    ("cluster.local elsewhere", lambda c: re.sub(r"forward cluster\.local tcp://[0-9.]+",
                                                 "forward cluster.local tcp://10.32.0.10", c),
     r"more than one address"),
    ("plain default route", lambda c: c + "\nforward . tcp://10.96.0.10\n", r'"\." goes to tcp://'),
    ("no DoT upstream", lambda c: re.sub(r"(?m)^\s*upstream .*\n", "", c), r'no upstream for "\."'),
]


@pytest.mark.parametrize("what,mutate,why", CONF_MUTATIONS, ids=[m[0] for m in CONF_MUTATIONS])
def test_k8s_forward_check_catches(what, mutate, why):
    conf = k8s("ConfigMap")["data"]["dotproxy.conf"]
    bad = mutate(conf)
    assert bad != conf, "mutation %r changed nothing: the ConfigMap moved, update it" % what
    problems = cluster_forwarding_problems(bad, README.read_text())
    assert any(re.search(why, p) for p in problems), "%s not caught: %s" % (what, problems)


def test_k8s_forward_check_wants_the_address_documented():
    conf = k8s("ConfigMap")["data"]["dotproxy.conf"]
    host = plain_host(routes(settings(parse_config(conf)))["cluster.local."][0])
    readme = README.read_text()
    assert host in readme
    problems = cluster_forwarding_problems(conf, readme.replace(host, "192.0.2.1"))
    assert any("not in deploy/README.md" in p for p in problems), problems


def test_k8s_readme_points_kubelet_at_the_node_local_address():
    """The README tells how to set clusterDNS, and no longer says that
    cluster names break when pods use dotproxy directly."""
    readme = README.read_text()
    listen = k8s_config()["listen"][0].rsplit(":", 1)[0]
    assert re.search(r"clusterDNS:\s*\n\s*- %s" % re.escape(listen), readme)
    assert "--cluster-dns=%s" % listen in readme
    assert not re.search(r"breaks\W+`?\*\.svc\.cluster\.local", readme)


def pod_spec():
    return k8s("DaemonSet")["spec"]["template"]["spec"]


def main_container():
    cs = pod_spec()["containers"]
    assert len(cs) == 1
    return cs[0]


def test_k8s_daemonset_shape():
    ds = k8s("DaemonSet")
    sel = ds["spec"]["selector"]["matchLabels"]
    labels = ds["spec"]["template"]["metadata"]["labels"]
    assert sel.items() <= labels.items(), "selector does not match the pod labels"
    spec = pod_spec()
    assert spec["hostNetwork"] is True
    assert spec.get("serviceAccountName") == k8s("ServiceAccount")["metadata"]["name"]
    assert spec.get("automountServiceAccountToken") is False
    assert any(t.get("operator") == "Exists" for t in spec.get("tolerations", []))
    c = main_container()
    assert c["image"] and ":" in c["image"], "container image with a tag"
    for ic in spec.get("initContainers", []):
        assert ic["image"] and ":" in ic["image"]
    drain = k8s_config().get("drain-timeout", ["5s"])[0]
    assert spec["terminationGracePeriodSeconds"] > float(DURATION.match(drain).group(1)) + 2


def test_k8s_probes_on_healthz_at_the_metrics_port():
    c = main_container()
    mport = int(k8s_config()["metrics"][0].rsplit(":", 1)[1])
    for probe in ("readinessProbe", "livenessProbe"):
        p = c[probe]["httpGet"]
        assert p["path"] == "/healthz", probe
        assert p["port"] == mport or p["port"] == "metrics", probe
    ports = {p["name"]: p for p in c["ports"]}
    assert ports["metrics"]["containerPort"] == mport
    assert {(p["containerPort"], p["protocol"]) for p in c["ports"]} >= {(53, "UDP"), (53, "TCP")}
    # A restart does not bring an upstream back: liveness must be patient.
    live = c["livenessProbe"]
    assert live["periodSeconds"] * live["failureThreshold"] >= 120


NODE_IP_EXAMPLE = "192.0.2.77"


def k8s_metrics_allow():
    """The DaemonSet's --metrics-allow argument with $(VAR) expanded as the
    kubelet does, NODE_IP being NODE_IP_EXAMPLE: (text, [networks])."""
    c = main_container()
    args = c["args"]
    assert "--metrics-allow" in args, "no --metrics-allow: the endpoint would admit only loopback"
    env = {e["name"]: e for e in c.get("env", [])}
    node = env.get("NODE_IP", {}).get("valueFrom", {}).get("fieldRef", {}).get("fieldPath")
    assert node == "status.hostIP", "NODE_IP must come from the downward API's status.hostIP"
    text = args[args.index("--metrics-allow") + 1].replace("$(NODE_IP)", NODE_IP_EXAMPLE)
    assert "$(" not in text, "unexpanded variable in --metrics-allow: %s" % text
    _cidr_list(text)
    return text, [ipaddress.ip_network(a) for a in text.split(",")]


def test_k8s_metrics_allow_admits_the_kubelet():
    """The kubelet probes a hostNetwork pod from the node's own address: the
    metrics allow list must admit it; and it must not admit everyone (the
    endpoint listens on every address of the node)."""
    _, nets = k8s_metrics_allow()
    node = ipaddress.ip_address(NODE_IP_EXAMPLE)
    assert any(node in n for n in nets), "the node's address (the kubelet's probes) is not admitted"
    assert not any(n.prefixlen == 0 for n in nets), "--metrics-allow admits everyone"
    assert "metrics-allow" not in k8s_config(), \
        "metrics-allow in the ConfigMap is replaced by the DaemonSet's argument: keep it in one place"
    host = k8s_config()["metrics"][0].rsplit(":", 1)[0].strip("[]")
    assert ipaddress.ip_address(host).is_unspecified, "metrics must listen where the kubelet probes (the node IP)"


def test_k8s_metrics_allow_accepted_by_the_daemon(tmp_path):
    """The ConfigMap plus the DaemonSet's arguments, as the kubelet expands
    them, are accepted by the daemon (--version stops before binding)."""
    need_ops_flags()
    if "--metrics-allow" not in daemon_help():
        skip_loudly("this dotproxy build lacks --metrics-allow")
    text, _ = k8s_metrics_allow()
    path = tmp_path / "k8s.conf"
    path.write_text(k8s("ConfigMap")["data"]["dotproxy.conf"])
    need_forward_if_used(path.read_text())
    r = subprocess.run([str(DOTPROXY), "--config", str(path), "--metrics-allow", text, "--version"],
                       capture_output=True, text=True, timeout=30)
    assert r.returncode == 0 and r.stdout.startswith("dotproxy "), "rc=%d\n%s%s" % (
        r.returncode, r.stdout, r.stderr)


def test_k8s_prometheus_annotations():
    ann = k8s("DaemonSet")["spec"]["template"]["metadata"]["annotations"]
    mport = k8s_config()["metrics"][0].rsplit(":", 1)[1]
    assert ann["prometheus.io/scrape"] == "true"  # a string, as annotations must be
    assert ann["prometheus.io/port"] == mport
    assert ann.get("prometheus.io/path", "/metrics") == "/metrics"


def _quantity(q):
    units = {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "k": 1e3, "M": 1e6, "G": 1e9, "m": 1e-3}
    m = re.match(r"^([0-9.]+)([A-Za-z]*)$", str(q))
    return float(m.group(1)) * units.get(m.group(2), 1)


def test_k8s_resources_fit_the_config():
    r = main_container()["resources"]
    for part in ("requests", "limits"):
        assert {"cpu", "memory"} <= set(r[part]), part
    s = k8s_config()
    cache = int(s.get("cache-size", ["64"])[0]) * 2**20
    assert _quantity(r["limits"]["memory"]) >= 2 * cache, "memory limit too close to cache-size"
    assert int(s["threads"][0]) <= _quantity(r["limits"]["cpu"])


def test_k8s_security_context():
    sc = main_container()["securityContext"]
    assert sc["runAsNonRoot"] is True and sc["runAsUser"] != 0
    assert sc["capabilities"]["drop"] == ["ALL"]
    assert sc["capabilities"]["add"] == ["NET_BIND_SERVICE"]
    assert sc.get("readOnlyRootFilesystem") is True
    # The image's user and the image's file capability: same uid, and
    # no_new_privs off (it would void the file capability).
    user = next(a for i, a in dockerfile_stages()[1]["ins"] if i == "USER").split(":")[0]
    assert str(sc["runAsUser"]) == user
    assert sc.get("allowPrivilegeEscalation") is True
    for ic in pod_spec().get("initContainers", []):
        caps = ic["securityContext"]["capabilities"]
        assert caps["drop"] == ["ALL"] and set(caps.get("add", [])) <= {"NET_ADMIN"}
        assert ic["securityContext"].get("allowPrivilegeEscalation") is False


def test_k8s_config_volume_and_args_agree():
    spec, c = pod_spec(), main_container()
    cfg_path = c["args"][c["args"].index("--config") + 1]
    mounts = {m["name"]: m for m in c["volumeMounts"]}
    vols = {v["name"]: v for v in spec["volumes"]}
    hit = [(m, vols[n]) for n, m in mounts.items() if cfg_path.startswith(m["mountPath"].rstrip("/") + "/")]
    assert hit, "--config %s is not under a volume mount" % cfg_path
    mount, vol = hit[0]
    assert vol["configMap"]["name"] == k8s("ConfigMap")["metadata"]["name"]
    rel = cfg_path[len(mount["mountPath"].rstrip("/")) + 1:]
    items = {i["path"]: i["key"] for i in vol["configMap"].get("items", [])} or {rel: rel}
    assert items.get(rel) in k8s("ConfigMap")["data"]


def init_container():
    ics = pod_spec().get("initContainers", [])
    assert len(ics) == 1
    return ics[0]


def test_k8s_link_local_address_agrees():
    env = {e["name"]: e["value"] for e in init_container()["env"]}
    ip = ipaddress.ip_address(env["LOCAL_IP"])
    assert ip.is_link_local
    listen_ips = {l.rsplit(":", 1)[0] for l in k8s_config()["listen"]}
    assert listen_ips == {str(ip)}
    allowed = [ipaddress.ip_network(a) for a in k8s_config()["allow"]]
    assert any(ip in n for n in allowed), "the node's own queries come from %s" % ip


def test_k8s_service():
    svc = k8s("Service")
    labels = k8s("DaemonSet")["spec"]["template"]["metadata"]["labels"]
    assert svc["spec"]["selector"].items() <= labels.items()
    mport = int(k8s_config()["metrics"][0].rsplit(":", 1)[1])
    assert [p["port"] for p in svc["spec"]["ports"]] == [mport]
    assert svc["spec"].get("clusterIP") == "None"


def test_k8s_init_script_is_idempotent(tmp_path):
    """Runs the init container's script twice in a new network namespace."""
    need_root()
    unshare = need_tool("unshare", "util-linux")
    # busybox is what the init container runs; iproute2's ip takes the same words.
    ip = shutil.which("busybox") or shutil.which("ip")
    if not ip:
        skip_loudly("neither busybox nor ip (iproute2) found")
    ic = init_container()
    script = ic["command"][-1]
    env = dict(os.environ, **{e["name"]: e["value"] for e in ic["env"]})
    bindir = tmp_path / "bin"
    bindir.mkdir()
    (bindir / "ip").symlink_to(ip)  # busybox dispatches on the name
    env["PATH"] = "%s:%s" % (bindir, env["PATH"])
    probe = subprocess.run([unshare, "-n", "sh", "-c", "ip link add probe0 type dummy"], capture_output=True,
                           text=True, env=env, timeout=30)
    if probe.returncode != 0 and "nshare" in probe.stderr:
        skip_loudly("cannot create a network namespace here: %s" % probe.stderr.strip())
    if probe.returncode != 0:
        # This kernel has no dummy links (CONFIG_DUMMY); the script is the
        # same for any link type: use a bridge and say so.
        sys.stderr.write("\nNOTE (deploy): no dummy interfaces in this kernel; init script run with type bridge\n")
        script = script.replace("type dummy", "type bridge")
    twice = "set -e\n%s\n%s\nip -o addr show dev \"$LINK\"\n" % (script, script)
    r = subprocess.run([unshare, "-n", "sh", "-c", twice], capture_output=True, text=True, env=env, timeout=30)
    assert r.returncode == 0, r.stderr
    assert r.stdout.count("inet %s/32" % env["LOCAL_IP"]) == 1, r.stdout


# ================================================== the configs, real binary

def daemon_help():
    r = subprocess.run([str(DOTPROXY), "--help"], capture_output=True, text=True, timeout=30)
    return r.stdout


def need_ops_flags():
    need_binary()
    h = daemon_help()
    missing = [f for f in ("--config", "--metrics", "--drain-timeout", "--user") if f not in h]
    if missing:
        skip_loudly("this dotproxy build lacks %s" % " ".join(missing))


def need_forward_if_used(text):
    """A config with forward lines needs a build that has forwarding rules
    (issue 15); an older one would refuse the line, not the file."""
    if any(n == "forward" for _, n, _ in parse_config(text)) and \
            not re.search(r"^\s*--forward\b(?!-)", daemon_help(), re.M):
        skip_loudly("this dotproxy build lacks --forward (forwarding rules)")


@pytest.mark.parametrize("text,refused", [(FORWARD_LINES, False)] + [(c[0], True) for c in REFUSED_CONFIGS],
                         ids=["forward-lines"] + [c[0][:40].strip() for c in REFUSED_CONFIGS])
def test_config_parser_agrees_with_the_daemon(tmp_path, text, refused):
    """What the mirror refuses the daemon refuses, and what it takes the
    daemon takes (`--config FILE --version`)."""
    need_ops_flags()
    if "forward" in text:
        need_forward_if_used("forward . 1.1.1.1#one.one.one.one\n")
    path = tmp_path / "t.conf"
    path.write_text(text)
    r = subprocess.run([str(DOTPROXY), "--config", str(path), "--version"], capture_output=True, text=True,
                       timeout=30)
    assert (r.returncode != 0) == refused, "rc=%d for %r\n%s" % (r.returncode, text[:80], r.stderr)


@pytest.mark.parametrize("which", ["example", "configmap"])
def test_daemon_accepts_the_configs(tmp_path, which):
    """`--config FILE --version`: the file is read in full, then --version
    stops before anything binds."""
    need_ops_flags()
    if which == "example":
        path = CONF_EXAMPLE
    else:
        path = tmp_path / "k8s.conf"
        path.write_text(k8s("ConfigMap")["data"]["dotproxy.conf"])
    need_forward_if_used(path.read_text())
    r = subprocess.run([str(DOTPROXY), "--config", str(path), "--version"], capture_output=True, text=True,
                       timeout=30)
    assert r.returncode == 0 and r.stdout.startswith("dotproxy "), "rc=%d\n%s%s" % (
        r.returncode, r.stdout, r.stderr)
    bad = tmp_path / "bad.conf"
    bad.write_text(path.read_text() + "\nlisten-typo 1.2.3.4:53\n")
    r = subprocess.run([str(DOTPROXY), "--config", str(bad), "--version"], capture_output=True, text=True,
                       timeout=30)
    assert r.returncode != 0, "the daemon took an unknown setting"


# ====================================================== the daemon, deployed

def _dns_query(qid, name="example.com", qtype=1):
    q = struct.pack(">HHHHHH", qid, 0x0100, 1, 0, 0, 0)
    for label in name.split("."):
        q += bytes([len(label)]) + label.encode()
    return q + b"\0" + struct.pack(">HH", qtype, 1)


def _check_answer(resp, qid):
    rid, flags, qd, an = struct.unpack(">HHHH", resp[:8])
    assert rid == qid and flags & 0x8000, "not an answer to our query"
    assert flags & 0xF == 0 and an >= 1, "rcode=%d answers=%d" % (flags & 0xF, an)


def udp_ask(host, port, qid):
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.settimeout(3)
        s.sendto(_dns_query(qid), (host, port))
        _check_answer(s.recv(4096), qid)


def tcp_ask(host, port, qid):
    with socket.create_connection((host, port), timeout=3) as s:
        q = _dns_query(qid)
        s.sendall(struct.pack(">H", len(q)) + q)
        buf = b""
        while len(buf) < 2 or len(buf) < 2 + struct.unpack(">H", buf[:2])[0]:
            d = s.recv(4096)
            assert d, "connection closed before the answer"
            buf += d
        _check_answer(buf[2:], qid)


def http_get(port, path):
    with socket.create_connection(("127.0.0.1", port), timeout=3) as s:
        s.sendall(("GET %s HTTP/1.0\r\n\r\n" % path).encode())
        buf = b""
        while True:
            d = s.recv(65536)
            if not d:
                break
            buf += d
    head, _, body = buf.partition(b"\r\n\r\n")
    return int(head.split()[1]), body.decode(errors="replace")


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def dns_address():
    """A loopback address whose port 53 is free (UDP and TCP), else a free
    high port on 127.0.0.1: port 53 is what shows the capability works."""
    for _ in range(20):
        host = "127.83.53.%d" % random.randint(2, 250)
        try:
            for kind in (socket.SOCK_DGRAM, socket.SOCK_STREAM):
                with socket.socket(socket.AF_INET, kind) as s:
                    s.bind((host, 53))
            return host, 53
        except OSError:
            continue
    sys.stderr.write("\nNOTE (deploy): no free port 53 on 127/8; using a high port\n")
    return "127.0.0.1", free_port()


# Installs a seccomp allow-list (EPERM for everything else, as the unit's
# SystemCallErrorNumber=EPERM and the profile's defaultErrnoRet do) and
# execs the rest of its argv. Under no_new_privs any user may do this;
# without it only root (runc's order: filter first, then the user switch).
SECCOMP_EXEC = r"""
import errno, json, os, sys
import seccomp
names = json.load(open(sys.argv[1]))
f = seccomp.SyscallFilter(defaction=seccomp.ERRNO(errno.EPERM))
if os.geteuid() == 0:
    f.set_attr(seccomp.Attr.CTL_NNP, 0)  # as runc does without no_new_privs
for n in names:
    try:
        f.add_rule(seccomp.ALLOW, n)
    except Exception:
        pass  # not a system call on this architecture
f.load()
os.execv(sys.argv[2], sys.argv[2:])
"""


@pytest.fixture(scope="module")
def upstream():
    """tools/dot-responder on 127.0.0.1 with a throwaway CA (world-readable,
    for the non-root daemon)."""
    need_root()
    need_ops_flags()
    need_binary(RESPONDER)
    need_tool("openssl", "openssl")
    d = Path(tempfile.mkdtemp(prefix="dotproxy-deploy-up-"))
    os.chmod(d, 0o755)
    r = subprocess.run(["sh", str(REPO / "tools" / "mkcert.sh"), str(d), "up.test"], capture_output=True,
                       text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    for f in d.iterdir():
        os.chmod(f, 0o644)
    log = open(d / "responder.log", "w+")
    p = subprocess.Popen([str(RESPONDER), "--listen", "127.0.0.1:0", "--cert", str(d / "server.pem"),
                          "--key", str(d / "server.key")], stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                         start_new_session=True)
    port = None
    deadline = time.time() + 10
    while time.time() < deadline and port is None:
        log.seek(0)
        m = re.search(r"listening on 127\.0\.0\.1:(\d+)", log.read())
        port = int(m.group(1)) if m else None
        if p.poll() is not None:
            break
        time.sleep(0.05)
    if port is None:
        p.kill()
        log.seek(0)
        pytest.fail("dot-responder did not start:\n%s" % log.read())
    yield {"port": port, "ca": d / "ca.pem", "name": "up.test"}
    p.send_signal(signal.SIGTERM)
    try:
        p.wait(timeout=5)
    except subprocess.TimeoutExpired:
        p.kill()
        p.wait()
    log.close()
    shutil.rmtree(d, ignore_errors=True)


@pytest.fixture
def world_dir():
    """A directory the non-root daemon can read (pytest's own tmp_path sits
    under a 0700 directory)."""
    d = Path(tempfile.mkdtemp(prefix="dotproxy-deploy-"))
    os.chmod(d, 0o755)
    yield d
    shutil.rmtree(d, ignore_errors=True)


def deployed_config(tmp_path, upstream, host, port, mport):
    """deploy/dotproxy.conf.example with its addresses moved onto loopback:
    listen, metrics and upstream replaced (no query leaves this machine)."""
    lines = []
    for line in CONF_EXAMPLE.read_text().splitlines():
        w = line.split()
        if w and w[0] in ("listen", "upstream", "metrics", "ca-file"):
            continue
        lines.append(line)
    lines += ["listen %s:%d" % (host, port),
              "upstream 127.0.0.1:%d#%s" % (upstream["port"], upstream["name"]),
              "ca-file %s" % upstream["ca"],
              "metrics 127.0.0.1:%d" % mport,
              "threads 2"]
    text = "\n".join(lines) + "\n"
    s = settings(parse_config(text))
    for u in s["upstream"]:
        assert ipaddress.ip_address(u.split("#")[0].rsplit(":", 1)[0]).is_loopback
    path = tmp_path / "dotproxy.conf"
    path.write_text(text)
    os.chmod(tmp_path, 0o755)
    os.chmod(path, 0o644)
    return path


def run_deployed(tmp_path, upstream, argv_prefix, expect_nnp, expect_uid):
    """Start the daemon through argv_prefix, exercise it, stop it."""
    host, port = dns_address()
    mport = free_port()
    conf = deployed_config(tmp_path, upstream, host, port, mport)
    log_path = tmp_path / "dotproxy.log"
    log = open(log_path, "w")
    p = subprocess.Popen(argv_prefix + ["--config", str(conf)], stdin=subprocess.DEVNULL, stdout=log,
                         stderr=log, start_new_session=True)
    try:
        deadline = time.time() + 15
        while "msg=\"started\"" not in log_path.read_text():
            assert p.poll() is None, "dotproxy exited with %s:\n%s" % (p.returncode, log_path.read_text())
            assert time.time() < deadline, "dotproxy did not start:\n%s" % log_path.read_text()
            time.sleep(0.05)
        # Who is it: the deployed identity; the one capability it was given
        # (CAP_NET_BIND_SERVICE) is gone once the sockets are bound, from
        # every thread.
        status = Path("/proc/%d/status" % p.pid).read_text()
        uid = int(re.search(r"^Uid:\s+(\d+)", status, re.M).group(1))
        nnp = int(re.search(r"^NoNewPrivs:\s+(\d)", status, re.M).group(1))
        assert uid == expect_uid and nnp == expect_nnp, status
        for tid in os.listdir("/proc/%d/task" % p.pid):
            tstatus = Path("/proc/%d/task/%s/status" % (p.pid, tid)).read_text()
            for key in ("CapEff", "CapPrm", "CapInh", "CapAmb"):
                v = int(re.search(r"^%s:\s+([0-9a-f]+)" % key, tstatus, re.M).group(1), 16)
                assert v == 0, "thread %s still holds %s=%x:\n%s" % (tid, key, v, tstatus)

        for i in range(3):
            udp_ask(host, port, 0x100 + i)
        tcp_ask(host, port, 0x200)
        code, body = http_get(mport, "/metrics")
        assert code == 200 and "# TYPE" in body
        # Upstream health is published on the shards' tick: allow a moment.
        deadline = time.time() + 5
        code, body = http_get(mport, "/healthz")
        while code != 200 and time.time() < deadline:
            time.sleep(0.1)
            code, body = http_get(mport, "/healthz")
        assert code == 200, "healthz %d: %s" % (code, body)

        # The Dockerfile's HEALTHCHECK, pointed at this metrics port.
        hc = [a.replace("/9153", "/%d" % mport) for a in healthcheck_command()]
        r = subprocess.run(hc, capture_output=True, text=True, timeout=10)
        assert r.returncode == 0, "HEALTHCHECK failed: %s" % r.stderr

        # ExecReload: SIGHUP re-reads the file and it goes on answering.
        p.send_signal(signal.SIGHUP)
        time.sleep(0.5)
        assert p.poll() is None, "dotproxy died on SIGHUP:\n%s" % log_path.read_text()
        reload_lines = [l for l in log_path.read_text().splitlines() if "reload" in l]
        assert reload_lines and not any("rejected" in l for l in reload_lines), \
            "SIGHUP did not reload the config:\n%s" % log_path.read_text()
        udp_ask(host, port, 0x300)

        # SIGTERM: drain, exit 0 within drain-timeout.
        p.send_signal(signal.SIGTERM)
        try:
            rc = p.wait(timeout=10)
        except subprocess.TimeoutExpired:
            pytest.fail("dotproxy did not stop within 10 s of SIGTERM")
        assert rc == 0, "exit status %d:\n%s" % (rc, log_path.read_text())
        text = log_path.read_text()
        bad = [l for l in text.splitlines() if "level=error" in l or "level=warn" in l]
        assert not bad, "warnings or errors:\n%s" % "\n".join(bad)
    finally:
        if p.poll() is None:
            os.killpg(p.pid, signal.SIGKILL)
            p.wait()
        log.close()


def need_seccomp():
    r = subprocess.run(["/usr/bin/python3", "-c", "import seccomp"], capture_output=True, timeout=30)
    if r.returncode != 0:
        skip_loudly("python3-seccomp missing: cannot apply the system-call filter")


def test_syscall_filter_is_live(world_dir):
    """The harness's filter bites: without the io_uring calls in the
    unit's set the daemon cannot start."""
    need_root()
    need_ops_flags()
    need_seccomp()
    names = world_dir / "no-io-uring.json"
    names.write_text(json.dumps(sorted(unit_syscalls() - IO_URING)))
    r = subprocess.run(["/usr/bin/python3", "-c", SECCOMP_EXEC, str(names), str(DOTPROXY), "--allow-root",
                        "--listen", "127.0.0.1:%d" % free_port(), "--upstream", "127.0.0.1:9#filter.test",
                        "--threads", "1"], stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=30)
    assert r.returncode != 0 and "io_uring" in r.stderr, "rc=%d\n%s" % (r.returncode, r.stderr)


def test_daemon_as_the_systemd_unit_runs_it(world_dir, upstream):
    """Non-root (nobody), ambient CAP_NET_BIND_SERVICE as the only
    capability, no_new_privs, the unit's system-call filter."""
    setpriv = need_tool("setpriv", "util-linux")
    need_seccomp()
    names = world_dir / "syscalls.json"
    names.write_text(json.dumps(sorted(unit_syscalls())))
    os.chmod(world_dir, 0o755)
    os.chmod(names, 0o644)
    prefix = [setpriv, "--reuid=65534", "--regid=65534", "--clear-groups",
              "--inh-caps=-all,+net_bind_service", "--ambient-caps=-all,+net_bind_service",
              "--bounding-set=-all,+net_bind_service", "--no-new-privs", "--",
              "/usr/bin/python3", "-c", SECCOMP_EXEC, str(names), str(DOTPROXY)]
    run_deployed(world_dir, upstream, prefix, expect_nnp=1, expect_uid=65534)


def test_daemon_as_the_image_runs_it(world_dir, upstream):
    """The image's way: uid 10053, the binary's file capability, no
    no_new_privs, deploy/seccomp/dotproxy.json installed before the user
    switch (runc's order when no_new_privs is off)."""
    setpriv = need_tool("setpriv", "util-linux")
    setcap = need_tool("setcap", "libcap2-bin")
    need_seccomp()
    bindir = world_dir / "sbin"
    bindir.mkdir()
    binary = bindir / "dotproxy"
    shutil.copy2(DOTPROXY, binary)
    r = subprocess.run([setcap, "cap_net_bind_service=+ep", str(binary)], capture_output=True, text=True,
                       timeout=30)
    if r.returncode != 0:
        skip_loudly("setcap failed on %s (file system without xattrs?): %s" % (world_dir, r.stderr.strip()))
    for d in (world_dir, bindir):
        os.chmod(d, 0o755)
    names = world_dir / "syscalls.json"
    names.write_text(json.dumps(sorted({n for rule in json.loads(SECCOMP_JSON.read_text())["syscalls"]
                                        for n in rule["names"]})))
    os.chmod(names, 0o644)
    user = next(a for i, a in dockerfile_stages()[1]["ins"] if i == "USER")
    uid, _, gid = user.partition(":")
    prefix = ["/usr/bin/python3", "-c", SECCOMP_EXEC, str(names), setpriv,
              "--reuid=%s" % uid, "--regid=%s" % (gid or uid), "--clear-groups",
              "--bounding-set=-all,+net_bind_service", "--", str(binary)]
    run_deployed(world_dir, upstream, prefix, expect_nnp=0, expect_uid=int(uid))
