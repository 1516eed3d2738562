"""Summarises an A/B run of `scripts/bench --compare`: per scenario, the median of each side's
rounds, their spread, the ratio and a verdict. Reads the tagged results (one JSON object a line,
with "side": "base" or "head" and "round") and the base revision's short name."""

import json
import statistics
import sys


def key(r):
    return (r["scenario"], r.get("peer"), r.get("subscribers"), r.get("target_deliveries_per_sec", 0), r.get("qos"),
            r.get("connections"), r.get("messages"), r.get("rate"), r.get("batch_max"), r.get("receiver_down"))


def name(r):
    kind = r["scenario"]
    if kind in ("idle", "mqtt-idle"):
        return f"{kind} {r['connections']} connections"
    if kind == "storm":
        return f"connect storm {r['connections']}"
    if kind == "recovery":
        return f"recovery {r['subscribers']} subs x {r['messages'] // r['channels']:,} missed"
    if kind == "webhooks":
        down = " receiver down" if r.get("receiver_down") else ""
        return f"webhooks batch {r['batch_max']} @{r['rate']}/s{down}"
    rate = r.get("target_deliveries_per_sec")
    qos = f" qos{r['qos']}" if kind == "mqtt-fanout" else ""
    if r.get("peer") == "tributary-redis":
        kind = "redis-engine fanout"
    return f"{kind}{qos} {r['subscribers']} subs " + (f"@{rate}/s" if rate else "saturated")


def metric(r):
    """(what, value, True when higher is better)."""
    kind = r["scenario"]
    if kind == "recovery":
        return "recovered/s", r["recovered_per_sec"], True
    if kind in ("idle", "mqtt-idle"):
        return "B/conn", r["bytes_per_connection"], False
    if kind == "storm":
        return "conn/s", r["connections_per_sec"], True
    if kind == "webhooks":
        return "events/s", r["events_per_sec"], True
    if r.get("target_deliveries_per_sec"):
        return "p99 us", r["latency_us"]["p99"], False
    return "deliveries/s", r["deliveries_per_sec"], True


def spread(values):
    """How much the rounds move, relative to their median: the interquartile range from four
    rounds on (one odd run does not decide), the whole range below that."""
    middle = statistics.median(values)
    if not middle:
        return 0.0
    if len(values) >= 4:
        low, _, high = statistics.quantiles(values, n=4)
        return (high - low) / middle
    return (max(values) - min(values)) / middle


def cpu(r):
    """The server's CPU time per delivery, a steadier second view of a fan-out's cost."""
    return "cpu ns/deliv", r["server_cpu_ns_per_delivery"], False


def main(path, base_name):
    rows = [json.loads(line) for line in open(path) if line.strip()]
    groups = {}
    for r in rows:
        groups.setdefault(key(r), []).append(r)
    print_groups(groups, base_name)


def print_groups(groups, base_name):
    """The table: a line per scenario, and one for the server's CPU per delivery when known."""
    print(f"A/B: base {base_name} vs head (this tree); median of each side's rounds, [min - max]")
    print(f"{'scenario':<38} {'metric':<13} {'base':>26} {'head':>26} {'head/base':>10}  verdict")
    for runs in groups.values():
        ok = [r for r in runs if not r.get("failed")]
        failed = len(runs) - len(ok)
        label = name(ok[0]) if ok else runs[0]["scenario"]
        views = [metric]
        if ok and all(r.get("server_cpu_ns_per_delivery") for r in ok):
            views.append(cpu)
        for view in views:
            print_view(label if view is metric else "", ok, failed, view)


def print_view(label, ok, failed, view):
    """One line: each side's median and range of `view`, the ratio and the verdict."""
    sides = {side: [view(r)[1] for r in ok if r["side"] == side] for side in ("base", "head")}
    if not sides["base"] or not sides["head"]:
        print(f"{label:<38} {'':<13} {'':>26} {'':>26} {'':>10}  no result ({failed} runs failed)")
        return
    what, _, higher_better = view(ok[0])
    base, head = statistics.median(sides["base"]), statistics.median(sides["head"])
    ratio = head / base if base else float("inf")
    # Better when the ratio moves the right way by more than either side's own spread.
    noise = max(spread(sides["base"]), spread(sides["head"]))
    gain = ratio - 1 if higher_better else 1 - ratio
    if abs(gain) <= noise:
        verdict = "within noise"
    elif what == "B/conn":
        verdict = "less memory" if gain > 0 else "more memory"
    else:
        verdict = "faster" if gain > 0 else "slower"
    verdict += f" (spread {noise:.0%}" + (f", {failed} runs failed)" if failed else ")")

    def show(values):
        return f"{statistics.median(values):,.0f} [{min(values):,.0f} - {max(values):,.0f}]"

    print(f"{label:<38} {what:<13} {show(sides['base']):>26} {show(sides['head']):>26} {ratio:>10.3f}  {verdict}")


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
