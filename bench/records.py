#!/usr/bin/env python
"""Indexing a source given as per-image record shards vs as one COCO JSON, side by side.

    python bench/records.py [--images 20000] [--shards 4] [--seed 0] [--keep DIR]

Makes bench/scale.py's COCO-shaped source, converts it to `--shards` JSONL shards and as many
Parquet shards (image / annotations as JSON strings) + categories.json, then indexes each (no cache)
in its own process: the JSON file in process, the JSONL and Parquet shards in process and as Ray
tasks (a local Ray, num_cpus=2). Prints wall and the driver's peak RSS (VmHWM) per step and checks
that every way gives the same ann_hash column. Writes bench/results/records.json.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)


def convert(ann: str, out: str, shards: int) -> None:
    """The COCO JSON as `shards` JSONL and `shards` Parquet files of per-image records."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    with open(ann) as fh:
        data = json.load(fh)
    by_image: dict[int, list] = {}
    for a in data["annotations"]:
        by_image.setdefault(a["image_id"], []).append(a)
    for kind in ("jsonl", "parquet"):
        os.makedirs(os.path.join(out, kind), exist_ok=True)
        with open(os.path.join(out, kind, "categories.json"), "w") as fh:
            json.dump({"categories": data["categories"]}, fh)
    imgs = data["images"]
    step = -(-len(imgs) // shards)
    for i in range(shards):
        recs = [(im, by_image.get(im["id"], [])) for im in imgs[i * step:(i + 1) * step]]
        with open(os.path.join(out, "jsonl", f"part-{i:03d}.jsonl"), "w") as fh:
            for im, anns in recs:
                fh.write(json.dumps({"image": im, "annotations": anns}, separators=(",", ":")) + "\n")
        pq.write_table(pa.table({"image": [json.dumps(im) for im, _ in recs],
                                 "annotations": [json.dumps(a, separators=(",", ":")) for _, a in recs]}),
                       os.path.join(out, "parquet", f"part-{i:03d}.parquet"), compression="zstd")


def step(annotations: str, images: str, categories: str | None, use_ray: bool) -> dict:
    """One indexing run in this process (called in a child process by main)."""
    if use_ray:
        import ray

        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    from pipelines.sources.resolve import SourceSpec, read_source_cached
    from pipelines.storage.fs import StorageSpec

    t0 = time.perf_counter()
    t = read_source_cached(SourceSpec("bench", "coco", annotations, images, [], categories), StorageSpec(), None)
    wall = time.perf_counter() - t0
    with open("/proc/self/status") as fh:
        hwm = next(int(line.split()[1]) for line in fh if line.startswith("VmHWM"))
    import hashlib

    digest = hashlib.sha256("".join(t.column("ann_hash").to_pylist()).encode()).hexdigest()[:16]
    return {"wall_s": round(wall, 2), "driver_peak_mb": round(hwm / 1024), "rows": t.num_rows, "ann_hash": digest}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--images", type=int, default=20000)
    ap.add_argument("--shards", type=int, default=4)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--keep", help="work folder to keep (default: a temp folder, removed)")
    ap.add_argument("--step", help=argparse.SUPPRESS)  # internal: one step, JSON out
    args = ap.parse_args()
    if args.step:
        print(json.dumps(step(**json.loads(args.step))))
        return 0
    from bench.scale import make_source

    work = args.keep or tempfile.mkdtemp(prefix="groundv-records-")
    src = make_source(work, args.images, args.seed)
    convert(src["annotations"], os.path.join(work, "records"), args.shards)
    rec = os.path.join(work, "records")
    steps = {
        "json, 1 file, in process": (src["annotations"], None, False),
        f"jsonl, {args.shards} shards, in process": (f"{rec}/jsonl", f"{rec}/jsonl/categories.json", False),
        f"parquet, {args.shards} shards, in process": (f"{rec}/parquet", f"{rec}/parquet/categories.json", False),
        f"jsonl, {args.shards} shards, Ray tasks": (f"{rec}/jsonl", f"{rec}/jsonl/categories.json", True),
        f"parquet, {args.shards} shards, Ray tasks": (f"{rec}/parquet", f"{rec}/parquet/categories.json", True),
    }
    results = {}
    for name, (ann, cats, use_ray) in steps.items():
        arg = json.dumps({"annotations": ann, "images": src["images"], "categories": cats, "use_ray": use_ray})
        out = subprocess.run([sys.executable, __file__, "--step", arg], capture_output=True, text=True,
                             env={**os.environ, "RAY_USAGE_STATS_ENABLED": "0", "PYTHONPATH": ROOT})
        if out.returncode:
            print(out.stderr[-2000:], file=sys.stderr)
            return 1
        results[name] = json.loads(out.stdout.strip().splitlines()[-1])
        print(f"{name:34} {results[name]}", flush=True)
    same = len({r["ann_hash"] for r in results.values()}) == 1
    print(f"same ann_hash column every way: {same}")
    os.makedirs(os.path.join(ROOT, "bench", "results"), exist_ok=True)
    with open(os.path.join(ROOT, "bench", "results", "records.json"), "w") as fh:
        json.dump({"images": args.images, "shards": args.shards, "steps": results, "same": same}, fh, indent=1)
    if not args.keep:
        import shutil

        shutil.rmtree(work, ignore_errors=True)
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())
