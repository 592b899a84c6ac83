"""`python -m bench <scenario>|all [--n N] [--runs R]`: run, print the tables, save JSON."""

from __future__ import annotations

import argparse
import os
import time

os.environ.setdefault("TIDINGS_TASK_EVENTS", "false")  # before celeryconfig is read; see harness

from bench import delivery, lanes, producer, scenarios
from bench.harness import DATABASE_URL, REDIS_URL, Report, masked

# name -> (function, default N). Defaults are sized so `make bench` stays well under 15 minutes
# on a 2-core machine; the full sizes are `--n 20000` (end-to-end), `--n 100000` (soak).
SCENARIOS = {
    "ceiling": (scenarios.ceiling, 5000),
    "naive": (scenarios.naive_baseline, 2000),
    "end-to-end": (scenarios.end_to_end, 2000),
    "relay": (scenarios.relay, 5000),
    "commit-overhead": (scenarios.commit_overhead, 1000),
    "latency": (scenarios.latency, 1000),
    "soak": (scenarios.soak, 10000),
    "sync": (scenarios.sync_mode, 2000),
    "lanes": (lanes.lanes, 20),  # fast messages per round (bench/lanes.py)
    "producer": (producer.producer, 2000),
    "claim": (producer.claim, 100_000),  # published rows kept; the figure: --n 1000000
    "delivery": (delivery.delivery, 2000),  # bench/delivery.py: its own targets table
}


def ratios(reports: dict[str, Report]) -> list[str]:
    """The issue's targets, each a ratio of figures measured in this run."""
    lines = []

    def get(scenario: str, figure: str) -> float | None:
        report = reports.get(scenario)
        return report.median(figure) if report and figure in report.figures else None

    ceiling = get("ceiling", "redis: no-op tasks drained/s")
    naive = get("naive", "end-to-end handled/s")
    e2e = get("end-to-end", "1 handler(s): handled/s")
    relay = get("relay", "tidings relay, batch 500")
    on = get("commit-overhead", "outbox on: commit p50")
    off = get("commit-overhead", "outbox off: commit p50")
    own = get("end-to-end", "1 handler(s), relay on its own worker: handled/s")
    thread = get("end-to-end", "1 handler(s), relay thread: handled/s")
    checks = [
        ("end-to-end / ceiling >= 0.6", e2e, ceiling, 0.6),
        ("end-to-end / naive >= 0.9", e2e, naive, 0.9),
        ("end-to-end, relay on its own worker / ceiling >= 0.6", own, ceiling, 0.6),
        ("end-to-end, relay on its own worker / naive >= 0.9", own, naive, 0.9),
        ("end-to-end, relay thread / ceiling >= 0.6", thread, ceiling, 0.6),
        ("end-to-end, relay thread / naive >= 0.9", thread, naive, 0.9),
        ("relay (batch 500) / ceiling >= 5", relay, ceiling, 5.0),
    ]
    for name, a, b, target in checks:
        if a and b:
            lines.append(f"| {name} | {a / b:.2f} | {'met' if a / b >= target else 'not met'} |")
    if on and off:
        overhead = (on - off) / off
        lines.append(
            f"| commit overhead (p50) <= 25 % | {overhead * 100:.0f} % | "
            f"{'met' if overhead <= 0.25 else 'not met'} |"
        )
    for label in ("fast", "fast, relay thread"):
        p50 = get("latency", f"{label} 100/s: latency p50")
        p99 = get("latency", f"{label} 100/s: latency p99")
        if p50 is not None and p99 is not None:
            lines.append(
                f"| {label} @100/s p50 <= 10 ms, p99 <= 25 ms | {p50:.1f} / {p99:.1f} ms"
                f" | {'met' if p50 <= 10 and p99 <= 25 else 'not met'} |"
            )
    lines += producer.ratios(reports)
    growth = get("soak", "RSS growth N/2 -> N")
    if growth is not None:
        lines.append(
            f"| worker RSS growth N/2 -> N < 10 % | {growth:.1f} % | {'met' if growth < 10 else 'not met'} |"
        )
    lines += lanes.ratio_lines(reports.get("lanes"))
    return ["| target | measured | status |", "|---|---:|---|", *lines] if lines else []


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument("scenario", choices=[*SCENARIOS, "all"])
    parser.add_argument("--n", type=int, help="events per run (default: per scenario)")
    parser.add_argument("--runs", type=int, default=3, help="runs per figure (median, min-max)")
    args = parser.parse_args(argv)
    print(f"PostgreSQL {masked(DATABASE_URL)}, Redis {masked(REDIS_URL)}")
    names = list(SCENARIOS) if args.scenario == "all" else [args.scenario]
    reports = {}
    for name in names:
        function, default_n = SCENARIOS[name]
        started = time.monotonic()
        extra = {}
        if name == "latency" and "ceiling" in reports:  # also at a quarter of this run's ceiling
            quarter = reports["ceiling"].median("redis: no-op tasks drained/s") / 4
            extra["rates"] = (100.0, round(quarter / 10) * 10.0)
        report = function(args.n or default_n, args.runs, **extra)
        reports[name] = report
        print(f"\n{report.table()}\n\n({time.monotonic() - started:.0f} s; {report.save()})", flush=True)
        if name == "delivery":
            print(
                "\n### delivery targets (medians of in-round ratios)\n\n"
                + "\n".join(delivery.targets(report))
            )
    table = ratios(reports)
    if table:
        print("\n### targets (ratios in this run)\n\n" + "\n".join(table))


if __name__ == "__main__":
    main()
