"""Run every benchmark of the project and print one table: bench, metric, value, goal, ok?

Each bench is a script in bench/ run as a subprocess with this Python; it writes
bench/results/<name>.json, which this script reads back (a bench that is missing is skipped, one that
fails or leaves no fresh JSON is reported as such). Also writes bench/results/run_all.json.

    python bench/run_all.py [--quick] [--only pipeline,filters] [--timeout 3600]

A bench's JSON may carry `"summary": [{"metric", "value", "goal", "ok"}, ...]`; that list is shown
as is. Older JSON shapes are read by the extractors below (filters.json) or by a generic rule:
every numeric key `X` with a `X_goal` / `goal_X` sibling becomes a row.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from typing import Any, Callable

BENCH_DIR = os.path.dirname(os.path.abspath(__file__))
RESULTS_DIR = os.path.join(BENCH_DIR, "results")


@dataclass(frozen=True)
class Bench:
    name: str  # bench/<name>.py writes bench/results/<name>.json
    args: tuple[str, ...] = ()
    quick_args: tuple[str, ...] = ()


BENCHES: tuple[Bench, ...] = (
    Bench("filters"),
    Bench("pipeline", (), ("--quick",)),
    Bench("rebuild"),
    Bench("teacher_throughput", ("--cpu-tiny",), ("--cpu-tiny",)),
)


@dataclass
class Row:
    bench: str
    metric: str
    value: str
    goal: str
    ok: str  # "yes" | "no" | "" (no goal) | "FAILED" | "skipped"


def fmt(v: Any) -> str:
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, float):
        return f"{v:,.3g}" if abs(v) < 100 else f"{v:,.0f}"
    if isinstance(v, int):
        return f"{v:,}"
    return "" if v is None else str(v)


def ok_str(ok: Any) -> str:
    return "" if ok is None else ("yes" if ok else "no")


def rows_filters(r: dict[str, Any]) -> list[Row]:
    goal = r.get("goal_pairs_per_s_per_core")
    return [
        Row("filters", "check pairs/s/core (RLE space)", fmt(r.get("ours_pairs_per_s_per_core")),
            f">= {fmt(goal)}" if goal is not None else "", ok_str(r.get("meets_goal"))),
        Row("filters", "speedup vs decode-everything", f"x{fmt(r.get('speedup'))}", "", ""),
        Row("filters", "decisions agree", fmt(r.get("decisions_agree")), "", ""),
    ]


def rows_generic(name: str, r: dict[str, Any]) -> list[Row]:
    if isinstance(r.get("summary"), list):
        return [Row(name, str(s.get("metric", "?")), fmt(s.get("value")), fmt(s.get("goal")), ok_str(s.get("ok")))
                for s in r["summary"] if isinstance(s, dict)]
    out = []
    for k, v in r.items():
        if isinstance(v, (int, float)) and not isinstance(v, bool):
            goal = r.get(f"{k}_goal", r.get(f"goal_{k}"))
            if goal is not None:
                ok = r.get(f"{k}_ok", r.get("meets_goal", r.get("ok")))
                out.append(Row(name, k, fmt(v), fmt(goal), ok_str(ok)))
    if not out:  # nothing marked with a goal: show the top-level numbers
        out = [Row(name, k, fmt(v), "", "") for k, v in r.items()
               if isinstance(v, (int, float)) and not isinstance(v, bool)][:8]
    return out


EXTRACTORS: dict[str, Callable[[dict[str, Any]], list[Row]]] = {"filters": rows_filters}


def rows_for(name: str, r: dict[str, Any]) -> list[Row]:
    if "summary" not in r and name in EXTRACTORS:
        return EXTRACTORS[name](r)
    return rows_generic(name, r)


def run_bench(b: Bench, quick: bool, timeout: float) -> tuple[list[Row], dict[str, Any]]:
    script = os.path.join(BENCH_DIR, f"{b.name}.py")
    result = os.path.join(RESULTS_DIR, f"{b.name}.json")
    if not os.path.exists(script):
        return [Row(b.name, "-", "", "", "skipped")], {"status": "missing"}
    before = os.path.getmtime(result) if os.path.exists(result) else None
    cmd = [sys.executable, script, *(b.quick_args if quick else b.args)]
    print(f"== {b.name}: {' '.join(os.path.relpath(c) if c == script else c for c in cmd[1:])}", flush=True)
    t0 = time.perf_counter()
    try:
        proc = subprocess.run(cmd, cwd=os.path.dirname(BENCH_DIR), timeout=timeout, check=False)
        rc: int | str = proc.returncode
    except subprocess.TimeoutExpired:
        rc = "timeout"
    wall = round(time.perf_counter() - t0, 1)
    fresh = os.path.exists(result) and os.path.getmtime(result) != before
    if rc != 0 or not fresh:
        why = f"exit {rc}" if rc != 0 else "no fresh results JSON"
        return [Row(b.name, why, "", "", "FAILED")], {"status": "failed", "rc": rc, "wall_s": wall}
    with open(result, encoding="utf-8") as fh:
        data = json.load(fh)
    return rows_for(b.name, data), {"status": "ok", "wall_s": wall, "results": os.path.relpath(result, BENCH_DIR)}


def table(rows: list[Row]) -> str:
    header = Row("bench", "metric", "value", "goal", "ok?")
    cols = list(asdict(header))
    widths = {c: max(len(getattr(r, c)) for r in [header, *rows]) for c in cols}
    lines = []
    for i, r in enumerate([header, *rows]):
        lines.append("  ".join(getattr(r, c).rjust(widths[c]) if c == "value" else getattr(r, c).ljust(widths[c])
                               for c in cols).rstrip())
        if i == 0:
            lines.append("-" * len(lines[0]))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="short variants where a bench has one")
    ap.add_argument("--only", help="comma-separated bench names")
    ap.add_argument("--timeout", type=float, default=3600.0, help="seconds per bench")
    args = ap.parse_args(argv)
    wanted = set(args.only.split(",")) if args.only else None
    rows: list[Row] = []
    runs: dict[str, Any] = {}
    for b in BENCHES:
        if wanted is not None and b.name not in wanted:
            continue
        r, info = run_bench(b, args.quick, args.timeout)
        rows += r
        runs[b.name] = info
    print()
    print(table(rows))
    os.makedirs(RESULTS_DIR, exist_ok=True)
    with open(os.path.join(RESULTS_DIR, "run_all.json"), "w", encoding="utf-8") as fh:
        json.dump({"time": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "quick": args.quick, "runs": runs,
                   "rows": [asdict(r) for r in rows]}, fh, indent=2)
    return 1 if any(r.ok == "FAILED" for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
