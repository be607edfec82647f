#!/usr/bin/env python
"""Compaction bench: the driver's memory while compacting, in process vs as Ray tasks, side by side.

    python bench/compact.py [--images 2000] [--quick] [--output DIR] [--num-cpus 4]

Builds a fragmented version (sample data, small write batches, no compaction at commit) unless
--output names an output whose latest version is fragmented; then compacts a copy of it twice, each
in a fresh process: once without Ray (what the compact CLI does) and once with a local Ray (what the
build's commit does: groups as Ray tasks). Reports the driver's private memory (RssAnon, sampled
every 20 ms) above its level when compaction starts, the wall time, and checks that both wrote the
same files (content-addressed). Writes bench/results/compact.json.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)


def rss_anon_mb() -> float:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("RssAnon:"):
                return int(line.split()[1]) / 1024
    return 0.0


def child(mode: str, output: str, num_cpus: int) -> None:
    """Compact `output` in this process (with a local Ray when mode == 'ray'); print one JSON line."""
    from pipelines.build.compact import compact
    from pipelines.storage.fs import StorageSpec

    if mode == "ray":
        import ray

        ray.init(num_cpus=num_cpus, include_dashboard=False, log_to_driver=False)
    base = rss_anon_mb()
    peak = [base]
    stop = threading.Event()

    def sample() -> None:
        while not stop.is_set():
            peak[0] = max(peak[0], rss_anon_mb())
            time.sleep(0.02)

    t = threading.Thread(target=sample, daemon=True)
    t.start()
    t0 = time.monotonic()
    m = compact(output, StorageSpec())
    wall = time.monotonic() - t0
    stop.set()
    t.join()
    assert m is not None, "nothing to compact: the latest version is not fragmented"
    c = m.stats["compaction"]
    print(json.dumps({"mode": mode, "wall_s": round(wall, 2), "base_mb": round(base), "peak_mb": round(peak[0]),
                      "extra_mb": round(peak[0] - base), "shards_before": c["shards_before"],
                      "shards_after": c["shards_after"], "files": sorted(s.path for s in m.shards)}))


def fragmented_output(n: int, work: str) -> str:
    from pipelines.sources.sample_data import ensure_sample_dataset

    sample = os.path.join(tempfile.gettempdir(), f"groundv-bench-sample-{n}")
    ensure_sample_dataset(sample, num_images=n, seed=0)
    out = os.path.join(work, "fragmented")
    subprocess.run([sys.executable, os.path.join(ROOT, "pipelines", "build_groundv.py"), f"data.sample.dir={sample}",
                    f"data.sample.num_images={n}", f"output.uri={out}", "stream.image_batch_size=8",
                    "output.compact_min_shards=0", "stream.status_interval_s=3600"], check=True, capture_output=True)
    return out


def main() -> int:
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        child(sys.argv[2], sys.argv[3], int(sys.argv[4]))
        return 0
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--images", type=int, default=2000)
    ap.add_argument("--quick", action="store_true", help="200 images")
    ap.add_argument("--output", help="an output whose latest version is fragmented (it is copied, never changed)")
    ap.add_argument("--num-cpus", type=int, default=max(4, os.cpu_count() or 1))
    args = ap.parse_args()
    work = tempfile.mkdtemp(prefix="gv-compact-bench-")
    try:
        src = args.output or fragmented_output(200 if args.quick else args.images, work)
        runs = {}
        for mode in ("in_process", "ray"):
            dst = os.path.join(work, mode)
            shutil.copytree(src, dst)
            done = subprocess.run([sys.executable, __file__, "--child", mode, dst, str(args.num_cpus)],
                                  check=True, capture_output=True, text=True,
                                  env={**os.environ, "PYTHONPATH": ROOT, "RAY_USAGE_STATS_ENABLED": "0"})
            runs[mode] = json.loads(done.stdout.strip().splitlines()[-1])
    finally:
        shutil.rmtree(work, ignore_errors=True)
    a, b = runs["in_process"], runs["ray"]
    same = a["files"] == b["files"]
    print(f"compaction bench: {a['shards_before']} shards -> {a['shards_after']}, {os.cpu_count()} cores")
    print(f"{'mode':<12} {'wall s':>7} {'driver MB at start':>19} {'peak':>6} {'extra':>6}")
    for r in (a, b):
        print(f"{r['mode']:<12} {r['wall_s']:>7.1f} {r['base_mb']:>19} {r['peak_mb']:>6} {r['extra_mb']:>6}")
    print(f"same files from both: {same}")
    ok = same and b["extra_mb"] <= max(a["extra_mb"] / 2, 32)
    result = {
        "in_process": {k: v for k, v in a.items() if k != "files"}, "ray": {k: v for k, v in b.items() if k != "files"},
        "same_files": same,
        "summary": [
            {"metric": "driver extra MB, in process", "value": a["extra_mb"], "goal": "-", "ok": True},
            {"metric": "driver extra MB, Ray tasks", "value": b["extra_mb"],
             "goal": "<= half of in process (or <= 32)", "ok": ok},
            {"metric": "same files both ways", "value": same, "goal": True, "ok": same},
        ],
        "ok": ok,
    }
    os.makedirs(os.path.join(ROOT, "bench", "results"), exist_ok=True)
    with open(os.path.join(ROOT, "bench", "results", "compact.json"), "w") as fh:
        json.dump(result, fh, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
