#!/usr/bin/python3
"""compare.py - the bench regression gate.

    bench/compare.py BASELINE.json CURRENT.json [--gate METRIC[,METRIC...]]
                     [--threshold PCT]

Both files are bench/run.py results. Every gated metric is looked up in the
"metrics" object of both; a metric is worse when it moved in the direction
its "better" field calls bad ("lower" or "higher") by more than PCT percent of
the baseline value. Exit status: 0 every gated metric within the threshold,
1 at least one is worse, 2 a metric is missing or a file is unreadable.

The default gate, dotproxy.udp-miss.cpu_ratio, is dotproxy's CPU time per
answered query divided by the synthetic upstream's CPU time per query in the
same dnsperf runs: both processes handle the same queries at the same moment,
so a slower or busier machine moves both and the ratio much less than either.
"""
import argparse
import json
import sys

DEFAULT_GATE = "dotproxy.udp-miss.cpu_ratio"
DEFAULT_THRESHOLD = 50.0


def check(baseline, current, gates, threshold):
    """Compare the gated metrics of two result dicts.

    Returns (ok, rows): ok is True when no gated metric is worse than the
    baseline by more than threshold percent; rows describe each metric as
    dicts (metric, baseline, current, better, worse_pct, passed, error).
    """
    rows = []
    ok = True
    for name in gates:
        row = {"metric": name, "threshold_pct": threshold}
        base = baseline.get("metrics", {}).get(name)
        cur = current.get("metrics", {}).get(name)
        if base is None or cur is None or not base.get("value") or cur.get("value") is None:
            row.update(passed=False,
                       error="missing in %s" % ("baseline" if not base or not base.get("value") else "current run"))
            ok = False
            rows.append(row)
            continue
        b, c = float(base["value"]), float(cur["value"])
        better = base.get("better", "lower")
        change = (c - b) / b * 100.0
        worse = change if better == "lower" else -change
        passed = worse <= threshold
        ok = ok and passed
        row.update(baseline=b, current=c, better=better, worse_pct=round(worse, 2), passed=passed)
        rows.append(row)
    return ok, rows


def responder_changed(baseline, current):
    """True when the two runs used different dot-responder sources: the
    cpu_ratio gate divides by the responder's cost, so it then compares
    apples with pears and the baseline wants refreshing."""
    def sha(r):
        return (r.get("versions", {}).get("dot-responder") or {}).get("source_sha256")
    return bool(sha(baseline) and sha(current) and sha(baseline) != sha(current))


def print_rows(rows, out=sys.stdout):
    print("regression gate (worse_pct > threshold fails):", file=out)
    for r in rows:
        if r.get("error"):
            print("  %-36s ERROR %s" % (r["metric"], r["error"]), file=out)
            continue
        print("  %-36s baseline %10.4g  now %10.4g  (%s is better)  worse by %+7.1f%%  limit %.0f%%  %s" % (
            r["metric"], r["baseline"], r["current"], r["better"], r["worse_pct"],
            r["threshold_pct"], "PASS" if r["passed"] else "FAIL"), file=out)


def main(argv=None):
    ap = argparse.ArgumentParser(description="bench regression gate: compare two bench/run.py JSON files")
    ap.add_argument("baseline")
    ap.add_argument("current")
    ap.add_argument("--gate", default=DEFAULT_GATE,
                    help="comma-separated metric names from the JSON 'metrics' object (default %(default)s)")
    ap.add_argument("--threshold", type=float, default=DEFAULT_THRESHOLD,
                    help="percent a metric may be worse than the baseline (default %(default)s)")
    a = ap.parse_args(argv)
    try:
        with open(a.baseline) as f:
            base = json.load(f)
        with open(a.current) as f:
            cur = json.load(f)
    except (OSError, ValueError) as e:
        print("compare: %s" % e, file=sys.stderr)
        return 2
    ok, rows = check(base, cur, [g for g in a.gate.split(",") if g], a.threshold)
    print_rows(rows)
    if responder_changed(base, cur):
        print("warning: tools/responder/ differs from the baseline's; ratios to the responder "
              "are not comparable: refresh the baseline")
    if any(r.get("error") for r in rows):
        return 2
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
