"""Run every benchmark of the project and print one table: bench, metric, value, goal, ok?

Each bench is a script in bench/ run as a subprocess with this Python; it writes
bench/results/<name>.json, which this script reads back (a bench that is missing is skipped, one that
fails or leaves no fresh JSON is reported as such). Also writes bench/results/run_all.json.

    python bench/run_all.py [--quick] [--only pipeline,filters] [--timeout 3600]

A bench's JSON may carry `"summary": [{"metric", "value", "goal", "ok"}, ...]`; that list is shown
as is. Other JSON shapes are read by the extractors below (filters, rebuild, teacher_throughput) or by
a generic rule:
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


def rows_rebuild(r: dict[str, Any]) -> list[Row]:
    g = r.get("goals") or {}
    ratio, ratio_max = r.get("noop_wall_ratio"), g.get("noop_wall_ratio_max")
    calls, want_calls = r.get("one_prompt_teacher_calls"), r.get("one_prompt_task_units", g.get("one_prompt_calls"))
    noop = r.get("noop_teacher_calls")
    return [
        Row("rebuild", f"full build wall s ({fmt(r.get('images'))} images)", fmt(r.get("full_wall_s")), "", ""),
        Row("rebuild", "no-op rebuild teacher calls", fmt(noop), fmt(g.get("noop_teacher_calls", 0)),
            ok_str(None if noop is None else noop == g.get("noop_teacher_calls", 0))),
        Row("rebuild", "no-op wall / full wall", fmt(ratio), f"<= {fmt(ratio_max)}" if ratio_max is not None else "",
            ok_str(None if ratio is None or ratio_max is None else ratio <= ratio_max)),
        Row("rebuild", "one-prompt rebuild teacher calls", fmt(calls), f"= {fmt(want_calls)} (that task's units)",
            ok_str(None if calls is None or want_calls is None else calls == want_calls)),
    ]


def rows_teacher(r: dict[str, Any]) -> list[Row]:
    tag = " (CPU, tiny model)" if r.get("cpu_tiny") else ""
    bare, ray = r.get("bare") or {}, r.get("ray") or {}
    rows = [
        Row("teacher_throughput", f"bare vLLM output tok/s{tag}", fmt(bare.get("output_tok_per_s")), "", ""),
        Row("teacher_throughput", f"Ray teacher stage output tok/s{tag}", fmt(ray.get("output_tok_per_s")), "", ""),
        Row("teacher_throughput", "Ray / bare, steady state", fmt(r.get("ray_over_bare_output_tok_per_s")), "", ""),
        Row("teacher_throughput", "Ray / bare, wall incl. start-up", fmt(r.get("ray_over_bare_output_tok_per_s_wall")),
            "", ""),
    ]
    for row in rows:  # a null is a number the bench could not measure (e.g. no steady state on CPU)
        row.value = row.value or "n/a"
    return rows


EXTRACTORS: dict[str, Callable[[dict[str, Any]], list[Row]]] = {
    "filters": rows_filters, "rebuild": rows_rebuild, "teacher_throughput": rows_teacher,
}


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


def tabulate(b: Bench) -> tuple[list[Row], dict[str, Any]]:
    result = os.path.join(RESULTS_DIR, f"{b.name}.json")
    if not os.path.exists(result):
        return [Row(b.name, "-", "", "", "skipped")], {"status": "no results"}
    with open(result, encoding="utf-8") as fh:
        return rows_for(b.name, json.load(fh)), {"status": "not run", "results": os.path.relpath(result, BENCH_DIR)}


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
    ap.add_argument("--no-run", action="store_true", help="only tabulate the JSON already in bench/results")
    args = ap.parse_args(argv)
    wanted = set(args.only.split(",")) if args.only else None
    rows: list[Row] = []
    runs: dict[str, Any] = {}
    for b in BENCHES:
        if wanted is not None and b.name not in wanted:
            continue
        r, info = tabulate(b) if args.no_run else run_bench(b, args.quick, args.timeout)
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
