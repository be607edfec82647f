#!/usr/bin/env python
"""Rebuild bench: full build vs no-op rebuild vs one-prompt rebuild, side by side in one run.

    python bench/rebuild.py [--images 2000] [--quick]

Template teacher, local disk, a local Ray. Each build runs in its own process (like a user's
re-run). Prints wall time and teacher calls of the three builds; goals: no-op = 0 teacher calls and
<= 10 % of the full build's wall time; one prompt = exactly that task's units.
Writes bench/results/rebuild.json.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

BUILD = os.path.join(ROOT, "pipelines", "build_groundv.py")


def run_build(sample: str, n: int, out: str, prompts: str) -> tuple[float, dict]:
    mdir = os.path.join(out, "manifests")
    before = len(os.listdir(mdir)) if os.path.isdir(mdir) else 0
    t0 = time.monotonic()
    done = subprocess.run([sys.executable, BUILD, f"data.sample.dir={sample}", f"data.sample.num_images={n}",
                           f"output.uri={out}",
                           f"teacher.prompts_dir={prompts}", "stream.status_interval_s=3600"],
                          capture_output=True, text=True)
    wall = time.monotonic() - t0
    if done.returncode != 0:
        raise SystemExit(f"build failed:\n{done.stderr[-3000:]}")
    names = sorted(os.listdir(mdir))
    with open(os.path.join(mdir, names[-1])) as fh:
        m = json.load(fh)
    if len(names) == before:  # nothing changed: no version committed, no teacher call
        m = {**m, "stats": {**m["stats"], "teacher_calls": 0}}
    return wall, m


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--images", type=int, default=2000)
    ap.add_argument("--quick", action="store_true", help="200 images")
    ap.add_argument("--task", default="reasoning", help="the task whose prompt is edited")
    args = ap.parse_args()
    n = 200 if args.quick else args.images

    from pipelines.sources.sample_data import ensure_sample_dataset

    work = tempfile.mkdtemp(prefix="gv-rebuild-")
    sample = os.path.join(tempfile.gettempdir(), f"groundv-bench-sample-{n}")
    ensure_sample_dataset(sample, num_images=n, seed=0)
    prompts = os.path.join(work, "prompts")
    shutil.copytree(os.path.join(ROOT, "teachers", "prompts"), prompts)
    out = os.path.join(work, "out")

    full_wall, full = run_build(sample, n, out, prompts)
    noop_wall, noop = run_build(sample, n, out, prompts)
    with open(os.path.join(prompts, f"{args.task}.yaml"), "a") as fh:
        fh.write("\n# bench: an edited rule\n")
    one_wall, one = run_build(sample, n, out, prompts)
    shutil.rmtree(work, ignore_errors=True)

    planned_task = one["stats"]["tasks"][args.task]["planned"]
    rows = [
        ("full build", full_wall, full["stats"]["teacher_calls"]),
        ("no-op rebuild", noop_wall, noop["stats"]["teacher_calls"]),
        (f"one prompt ({args.task})", one_wall, one["stats"]["teacher_calls"]),
    ]
    print(f"rebuild bench: {n} images, {full['stats']['units_planned']} units, {os.cpu_count()} cores")
    print(f"{'build':<26} {'wall s':>8} {'teacher calls':>14} {'vs full':>8}")
    for name, wall, calls in rows:
        print(f"{name:<26} {wall:>8.1f} {calls:>14} {wall / full_wall:>8.2f}")
    result = {
        "images": n, "units": full["stats"]["units_planned"], "cores": os.cpu_count(),
        "full_wall_s": round(full_wall, 2), "noop_wall_s": round(noop_wall, 2), "one_prompt_wall_s": round(one_wall, 2),
        "full_teacher_calls": full["stats"]["teacher_calls"], "noop_teacher_calls": noop["stats"]["teacher_calls"],
        "one_prompt_teacher_calls": one["stats"]["teacher_calls"], "one_prompt_task_units": planned_task,
        "noop_wall_ratio": round(noop_wall / full_wall, 3),
        "goals": {"noop_teacher_calls": 0, "noop_wall_ratio_max": 0.10, "one_prompt_calls": planned_task},
        "ok": noop["stats"]["teacher_calls"] == 0 and noop_wall / full_wall <= 0.10
        and one["stats"]["teacher_calls"] == planned_task,
    }
    os.makedirs(os.path.join(ROOT, "bench", "results"), exist_ok=True)
    with open(os.path.join(ROOT, "bench", "results", "rebuild.json"), "w") as fh:
        json.dump(result, fh, indent=2)
    print(f"goals met: {result['ok']} (no-op ratio {result['noop_wall_ratio']}, one-prompt calls "
          f"{result['one_prompt_teacher_calls']} == {planned_task})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
