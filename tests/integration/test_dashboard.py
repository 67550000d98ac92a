"""The Grafana dashboard (deploy/grafana/dotproxy.json) against the real
/metrics: every metric a panel or a template variable queries exists, and
every label it groups or filters by is on that metric.

The daemon runs with a forwarding zone beside the default route, so the
zone series (`zone` on the upstream series, dotproxy_zone_queries_total)
exist. The check is a plain function (dashboard_problems), shown to fail on
mutated copies of the dashboard: a misspelt metric, a histogram queried by
its family name instead of _bucket, a label a metric does not carry, a label
value no series has.

Labels Prometheus attaches at scrape time (instance, job) are not in
/metrics and are not looked for there.
"""

import copy
import json
import re

import pytest

import dphelpers as H
from test_ops import msum, scrape

DASHBOARD = H.REPO / "deploy" / "grafana" / "dotproxy.json"
SCRAPE_LABELS = {"instance", "job"}
FORWARD_ZONE = "perf.test."  # served by the session's unbound on its plain port too

# ---------------------------------------------------------------- PromQL references

# Strings, range selectors, names, durations (offset 5m), numbers, operators.
_TOKEN = re.compile(r'''"(?:[^"\\]|\\.)*"|'(?:[^'\\]|\\.)*'|\[[^\]]*\]|[a-zA-Z_:][a-zA-Z0-9_:]*|'''
                    r'''(?:\d+(?:ms|[smhdwy]))+|\d+(?:\.\d+)?(?:[eE][+-]?\d+)?|=~|!~|!=|==|>=|<=|\S''')
_GROUPING = {"by", "without", "on", "ignoring", "group_left", "group_right"}
_KEYWORDS = _GROUPING | {"and", "or", "unless", "bool", "offset", "inf", "nan"}


class Ref:
    """One metric named in an expression: the labels it is filtered or
    grouped by, and the values its equality matchers want."""

    def __init__(self, metric, pos):
        self.metric, self.pos = metric, pos
        self.labels, self.equals = set(), {}

    def __repr__(self):
        return "Ref(%s, %s, %s)" % (self.metric, sorted(self.labels), self.equals)


def _close(tokens, i):
    """Index of the ')' that closes the '(' at tokens[i]."""
    depth = 0
    for j in range(i, len(tokens)):
        depth += {"(": 1, ")": -1}.get(tokens[j], 0)
        if depth == 0:
            return j
    raise ValueError("unbalanced parentheses")


def _open(tokens, j):
    """Index of the '(' that opens the ')' at tokens[j]."""
    depth = 0
    for i in range(j, -1, -1):
        depth += {")": 1, "(": -1}.get(tokens[i], 0)
        if depth == 0:
            return i
    raise ValueError("unbalanced parentheses")


def _matchers(tokens, i, ref):
    """Reads `{name op "value", ...}` from tokens[i] == '{' into ref; returns
    the index after '}'."""
    i += 1
    while tokens[i] != "}":
        if tokens[i] == ",":
            i += 1
            continue
        name, op, value = tokens[i], tokens[i + 1], tokens[i + 2]
        if op not in ("=", "!=", "=~", "!~") or value[0] not in "\"'":
            raise ValueError("bad matcher near %r" % " ".join(tokens[i:i + 3]))
        ref.labels.add(name)
        if op == "=" and "$" not in value:
            ref.equals[name] = value[1:-1]
        i += 3
    return i + 1


def promql_refs(expr):
    """[Ref] for every metric named in a PromQL expression, with the labels
    of its matchers and of every by/without clause of an aggregation around
    it (prefix `sum by (l) (x)` or suffix `sum (x) by (l)`). on/ignoring
    lists are read past, not checked."""
    tokens = _TOKEN.findall(expr)
    if tokens.count("(") != tokens.count(")") or tokens.count("{") != tokens.count("}"):
        raise ValueError("unbalanced: %s" % expr)
    refs, groups = [], []  # groups: (labels, first, last token of the aggregated expression)
    i = 0
    while i < len(tokens):
        t = tokens[i]
        nxt = tokens[i + 1] if i + 1 < len(tokens) else ""
        if t in _GROUPING and nxt == "(":
            end = _close(tokens, i + 1)
            labels = {x for x in tokens[i + 2:end] if x != ","}
            if t in ("by", "without"):
                if end + 1 < len(tokens) and tokens[end + 1] == "(":  # prefix form
                    groups.append((labels, end + 1, _close(tokens, end + 1)))
                elif i > 0 and tokens[i - 1] == ")":  # suffix form
                    groups.append((labels, _open(tokens, i - 1), i - 1))
                else:
                    raise ValueError("%s clause without an expression: %s" % (t, expr))
            i = end + 1
        elif t == "{":
            raise ValueError("selector without a metric name: %s" % expr)
        elif re.match(r"[a-zA-Z_:]", t) and t not in _KEYWORDS and nxt not in ("(", "by", "without"):
            # (a name before "(" is a function, before by/without an aggregation)
            ref = Ref(t, i)
            refs.append(ref)
            i = _matchers(tokens, i + 1, ref) if nxt == "{" else i + 1
        else:
            i += 1
    for labels, first, last in groups:
        for ref in refs:
            if first <= ref.pos <= last:
                ref.labels |= labels
    return refs


# ---------------------------------------------------------------- the dashboard

def load_dashboard():
    return json.loads(DASHBOARD.read_text())


def _panels(panels):
    for p in panels:
        yield p
        yield from _panels(p.get("panels", []))  # a collapsed row keeps its panels inside


def dashboard_exprs(dash):
    """[(where, expr)]: every target's expr, and the metric selector of every
    label_values() template variable (its label as a `by` clause)."""
    out = []
    for p in _panels(dash.get("panels", [])):
        for t in p.get("targets", []):
            out.append(('panel "%s" target %s' % (p.get("title"), t.get("refId")), t.get("expr", "")))
    for v in dash.get("templating", {}).get("list", []):
        if v.get("type") != "query":
            continue
        q = v["query"]["query"] if isinstance(v["query"], dict) else v["query"]
        m = re.fullmatch(r"\s*label_values\((.*),\s*([a-zA-Z_][a-zA-Z0-9_]*)\s*\)\s*", q)
        assert m, "variable %s: not a label_values(metric, label) query: %s" % (v["name"], q)
        out.append(("variable $%s" % v["name"], "group by (%s) (%s)" % (m.group(2), m.group(1))))
    return out


def dashboard_problems(dash, samples):
    """What the dashboard queries that /metrics (parse_prom's samples) lacks:
    [] when every metric exists under the exact name queried (a histogram
    as name_bucket/_sum/_count), every label of its matchers and by/without
    clauses is on some series of it (scrape-time labels aside), and every
    literal `label="value"` matches some series."""
    problems = []
    exprs = dashboard_exprs(dash)
    if not exprs:
        problems.append("the dashboard queries nothing")
    for where, expr in exprs:
        refs = promql_refs(expr)
        if not refs:
            problems.append("%s: no metric in %r" % (where, expr))
        for ref in refs:
            series = samples.get(ref.metric)
            if series is None:
                hint = ""
                if ref.metric + "_bucket" in samples:
                    hint = " (a histogram: query %s_bucket, _sum or _count)" % ref.metric
                problems.append("%s: %s is not in /metrics%s" % (where, ref.metric, hint))
                continue
            have = {}
            for key in series:
                for k, v in key:
                    have.setdefault(k, set()).add(v)
            for label in sorted(ref.labels - SCRAPE_LABELS):
                if label not in have:
                    problems.append("%s: %s has no label %s (it has %s)" % (where, ref.metric, label,
                                                                            sorted(have) or "none"))
            for label, value in sorted(ref.equals.items()):
                if label in have and value not in have[label]:
                    problems.append('%s: no %s{%s="%s"} series' % (where, ref.metric, label, value))
    return problems


# ---------------------------------------------------------------- tests

def test_promql_refs():
    """The expression reader on the forms the dashboard uses and the ones
    it might grow into; an unknown form raises instead of passing."""
    def refs(e):
        return [(r.metric, sorted(r.labels), r.equals) for r in promql_refs(e)]

    assert refs('sum by (zone) (rate(a_total{instance=~"$i",zone=~"$zone"}[$__rate_interval]))') == [
        ("a_total", ["instance", "zone"], {})]
    assert refs('histogram_quantile(0.9, sum by (upstream, le) (rate(h_bucket[5m])))') == [
        ("h_bucket", ["le", "upstream"], {})]
    assert refs('sum(rate(a{event="x"}[1m])) by (zone) / sum(b)') == [
        ("a", ["event", "zone"], {"event": "x"}), ("b", [], {})]
    assert refs("count(h{q='1'} == 0) or vector(0)") == [("h", ["q"], {"q": "1"})]
    assert refs("a / on (zone) group_left (upstream) b offset 5m") == [("a", [], {}), ("b", [], {})]
    assert refs('group by (zone) (z{instance=~"$instance"})') == [("z", ["instance", "zone"], {})]
    for bad in ('{__name__="x"}', "sum by (zone)", "sum(a", 'a{b=c}'):
        with pytest.raises((ValueError, IndexError)):
            promql_refs(bad)


def test_dashboard_is_importable():
    """What Grafana's import needs, and the variables the panels use."""
    d = load_dashboard()
    assert isinstance(d["schemaVersion"], int) and d["schemaVersion"] >= 36
    assert d["uid"] and d["title"]
    assert [i["name"] for i in d["__inputs"]] == ["DS_PROMETHEUS"]
    variables = {v["name"]: v for v in d["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource" and variables["datasource"]["query"] == "prometheus"
    assert variables["instance"]["type"] == "query" and variables["zone"]["type"] == "query"
    ids = [p["id"] for p in _panels(d["panels"])]
    assert len(ids) == len(set(ids)), "panel ids repeat"
    for p in _panels(d["panels"]):
        assert {"h", "w", "x", "y"} <= set(p["gridPos"]), p["title"]
        for t in p.get("targets", []):
            assert t["datasource"]["uid"] == "${datasource}", p["title"]
            assert 'instance=~"$instance"' in t["expr"], "%s: not filtered by $instance" % p["title"]
    titles = " ".join(p["title"] for p in _panels(d["panels"])).lower()
    for want in ("transport", "zone", "rcode", "cache hit", "latency", "health", "in-flight", "hedge"):
        assert want in titles, "no panel about %s" % want


def _ask(dp, name, tcp):
    q = H.make_query(name, "A")
    r = (H.tcp if tcp else H.udp)(q, dp.host, dp.port)
    assert r.rcode() == 0 and r.answer, "%s over %s: %s" % (name, "tcp" if tcp else "udp", r)
    return r


# Mutations of the dashboard that dashboard_problems must catch:
# (what, old text in some expr, new text, what the problem says).
MUTATIONS = [
    ("misspelt metric", "dotproxy_zone_queries_total", "dotproxy_zone_query_total",
     "dotproxy_zone_query_total is not in /metrics"),
    ("histogram family name", "dotproxy_upstream_rtt_seconds_bucket", "dotproxy_upstream_rtt_seconds",
     "a histogram: query dotproxy_upstream_rtt_seconds_bucket"),
    ("counter as a histogram", "dotproxy_query_duration_seconds_bucket", "dotproxy_queries_total_bucket",
     "dotproxy_queries_total_bucket is not in /metrics"),
    ("by a missing label", "by (transport)", "by (transprt)", "has no label transprt"),
    ("zone on a zoneless metric", 'dotproxy_answers_total{instance=~"$instance"',
     'dotproxy_answers_total{instance=~"$instance",zone=~"$zone"', "dotproxy_answers_total has no label zone"),
    ("label value no series has", 'event="hedges_sent"', 'event="hedge_sent"',
     'no dotproxy_events_total{event="hedge_sent"} series'),
]


def _mutate(dash, old, new):
    """A copy of dash with old replaced by new in every target expr."""
    d = copy.deepcopy(dash)
    hit = 0
    for p in _panels(d["panels"]):
        for t in p.get("targets", []):
            if old in t["expr"]:
                t["expr"] = t["expr"].replace(old, new)
                hit += 1
    assert hit, "mutation %r -> %r matched no expr: the dashboard changed, update MUTATIONS" % (old, new)
    return d


@pytest.mark.timeout_s(90)
def test_dashboard_queries_exist(dotproxy, unbound, certs):
    """Run with a default route (DoT) and FORWARD_ZONE over plain TCP;
    queries of both over UDP and TCP, some twice (cache hits); then every
    dashboard query against the scrape, and the mutations against it."""
    mport = H.free_port()
    plain = "tcp://127.0.0.1:%d" % unbound.plain_port
    dp = dotproxy([unbound.upstream_arg()], certs["ca"],
                  extra=["--metrics", "127.0.0.1:%d" % mport, "--forward", "%s=%s" % (FORWARD_ZONE, plain)])
    for tcp in (False, True):
        for _ in range(2):
            _ask(dp, "www.test.", tcp)
            assert H.PERF_ADDR in str(_ask(dp, "x.%s" % FORWARD_ZONE, tcp).answer[0])

    body, samples = scrape(mport)
    # The zone series are there and say the forward zone was used, through
    # the plain upstream.
    assert msum(samples, "dotproxy_zone_queries_total", zone=FORWARD_ZONE) >= 4, body
    assert msum(samples, "dotproxy_zone_queries_total", zone=".") >= 4, body
    via = {dict(k).get("upstream") for k, v in samples.get("dotproxy_upstream_answers_total", {}).items()
           if v >= 1 and dict(k).get("zone") == FORWARD_ZONE}
    assert via and all(str(unbound.plain_port) in u for u in via), (via, body)

    dash = load_dashboard()
    problems = dashboard_problems(dash, samples)
    assert problems == [], "\n".join(problems)
    for what, old, new, says in MUTATIONS:
        got = dashboard_problems(_mutate(dash, old, new), samples)
        assert any(says in p for p in got), "%s not caught: %s" % (what, got)
