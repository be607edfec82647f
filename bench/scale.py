#!/usr/bin/env python
"""Scale bench: a COCO-train2017-shaped synthetic source, full build -> no-op -> one prompt edited ->
--dry-run -> preview, side by side in one run.

    python bench/scale.py [--images 5000] [--seed 0] [--task reasoning] [--keep DIR]

The source is seeded and shaped like train2017: ~7.3 annotations per image (Poisson-ish, 0..40),
80 categories, polygons of 8..40 vertices, 0.86 % images without any annotation (real COCO: ~1,000 of
118,287). Images are hardlinks to 12 small JPEGs (one per size), so 100K images cost ~12 files of
disk. Template teacher, local disk, a local Ray; each step is its own process (like a user's re-run).
Prints per step: wall, driver peak RSS (VmHWM) and peak process-tree RSS, files referenced by the
current version, manifest bytes, teacher calls, and whether a version was committed.
Writes bench/results/scale.json.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
import threading
import time

import psutil

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

BUILD = os.path.join(ROOT, "pipelines", "build_groundv.py")
PREVIEW = os.path.join(ROOT, "pipelines", "cli", "preview.py")
SIZES = [(640, 480), (480, 640), (640, 427), (427, 640), (640, 360), (500, 375), (375, 500), (640, 512),
         (612, 612), (640, 426), (426, 640), (640, 640)]
EMPTY_FRACTION = 1012 / 118287


def make_source(root: str, n: int, seed: int) -> dict[str, str]:
    """COCO-shaped annotation JSON + hardlinked images under `root` (reused if already there)."""
    from PIL import Image

    ann_path = os.path.join(root, f"instances_{n}_{seed}.json")
    img_dir = os.path.join(root, "images")
    if os.path.exists(ann_path):
        return {"annotations": ann_path, "images": img_dir}
    rng = random.Random(seed)
    os.makedirs(os.path.join(root, "base"), exist_ok=True)
    os.makedirs(img_dir, exist_ok=True)
    bases = []
    for i, (w, h) in enumerate(SIZES):
        p = os.path.join(root, "base", f"{w}x{h}.jpg")
        Image.new("RGB", (w, h), (40 + 17 * i, 90, 160 - 9 * i)).save(p, quality=80)
        bases.append((p, w, h))
    cats = [{"id": i + 1, "name": f"thing{i + 1}", "supercategory": f"group{i // 10}"} for i in range(80)]
    images, anns, ann_id = [], [], 1
    for k in range(n):
        base, w, h = bases[rng.randrange(len(bases))]
        name = f"{k:012d}.jpg"
        os.link(base, os.path.join(img_dir, name))
        images.append({"id": k + 1, "file_name": name, "width": w, "height": h})
        if rng.random() < EMPTY_FRACTION:
            continue
        for _ in range(max(1, min(40, int(rng.expovariate(1 / 7.3))))):
            anns.append(_annotation(rng, ann_id, k + 1, rng.randrange(80) + 1, w, h))
            ann_id += 1
    with open(ann_path + ".tmp", "w") as fh:
        json.dump({"images": images, "annotations": anns, "categories": cats}, fh, separators=(",", ":"))
    os.replace(ann_path + ".tmp", ann_path)
    return {"annotations": ann_path, "images": img_dir}


def _annotation(rng: random.Random, ann_id: int, image_id: int, cat: int, w: int, h: int) -> dict:
    """A star-shaped polygon of 8..40 vertices inside the image."""
    import math

    cx, cy = rng.uniform(0.2 * w, 0.8 * w), rng.uniform(0.2 * h, 0.8 * h)
    r = rng.uniform(8, 0.2 * min(w, h))
    pts = []
    m = rng.randint(8, 40)
    for j in range(m):
        a = 2 * math.pi * j / m
        rr = r * rng.uniform(0.6, 1.0)
        pts += [round(min(w - 1, max(0, cx + rr * math.cos(a))), 2),
                round(min(h - 1, max(0, cy + rr * math.sin(a))), 2)]
    xs, ys = pts[0::2], pts[1::2]
    bbox = [min(xs), min(ys), max(xs) - min(xs), max(ys) - min(ys)]
    return {"id": ann_id, "image_id": image_id, "category_id": cat, "segmentation": [pts], "bbox": bbox,
            "area": bbox[2] * bbox[3] * 0.7, "iscrowd": 0}


def run(cmd: list[str]) -> tuple[float, int, int, str]:
    """(wall s, driver peak RSS bytes, peak process-tree RSS bytes, stdout) of one step."""
    t0 = time.monotonic()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    peaks = {"driver": 0, "tree": 0}
    done = threading.Event()

    def sample() -> None:
        p = psutil.Process(proc.pid)
        while not done.is_set():
            try:
                with open(f"/proc/{proc.pid}/status") as fh:
                    hwm = next((int(x.split()[1]) * 1024 for x in fh if x.startswith("VmHWM:")), 0)
                peaks["driver"] = max(peaks["driver"], hwm)
                tree = sum(c.memory_info().rss for c in [p, *p.children(recursive=True)])
                peaks["tree"] = max(peaks["tree"], tree)
            except (OSError, psutil.Error):
                pass
            done.wait(0.2)

    th = threading.Thread(target=sample, daemon=True)
    th.start()
    out, err = proc.communicate()
    done.set()
    th.join()
    wall = time.monotonic() - t0
    if proc.returncode != 0:
        raise SystemExit(f"step failed ({' '.join(cmd[-3:])}):\n{err[-3000:]}")
    return wall, peaks["driver"], peaks["tree"], out


def latest(out: str) -> tuple[int, dict, int]:
    mdir = os.path.join(out, "manifests")
    names = sorted(n for n in os.listdir(mdir) if n.endswith(".json"))
    path = os.path.join(mdir, names[-1])
    with open(path) as fh:
        return len(names), json.load(fh), os.path.getsize(path)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--images", type=int, default=5000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--task", default="reasoning", help="the task whose prompt is edited")
    ap.add_argument("--keep", help="work folder to keep (default: a temp folder, removed)")
    ap.add_argument("--plan-only", type=int, nargs="*", metavar="N",
                    help="only `--dry-run` (index + plan, no Ray) at these sizes: driver RSS growth per unit")
    ap.add_argument("--synthetic-index", action="store_true",
                    help="with --plan-only: write the cached index directly (no JSON to generate or parse), "
                         "for 1M+ images; the plan reads the same columns")
    args = ap.parse_args()
    if args.plan_only:
        return plan_only(args.plan_only, args.seed, args.keep, args.synthetic_index)

    work = args.keep or tempfile.mkdtemp(prefix="gv-scale-")
    t0 = time.monotonic()
    src = make_source(os.path.join(work, "source"), args.images, args.seed)
    gen_s = time.monotonic() - t0
    prompts = os.path.join(work, "prompts")
    shutil.rmtree(prompts, ignore_errors=True)
    shutil.copytree(os.path.join(ROOT, "teachers", "prompts"), prompts)
    out = os.path.join(work, "out")
    shutil.rmtree(out, ignore_errors=True)
    cfg = os.path.join(work, "scale.yaml")
    with open(cfg, "w") as fh:
        json.dump({"data": {"sources": [{"name": "coco_scale", "format": "coco", **src}]},
                   "output": {"uri": out}, "teacher": {"prompts_dir": prompts},
                   "stream": {"status_interval_s": 3600}}, fh)
    build = [sys.executable, BUILD, "--config", cfg]

    rows = []

    def step(name: str, cmd: list[str]) -> None:
        before = latest(out)[0] if os.path.isdir(os.path.join(out, "manifests")) else 0
        wall, drv, tree, stdout = run(cmd)
        n, m, mbytes = latest(out)
        new = n > before
        rows.append({"step": name, "wall_s": round(wall, 2), "driver_peak_rss_mb": round(drv / 2**20),
                     "tree_peak_rss_mb": round(tree / 2**20), "new_version": new,
                     "files_in_version": len(m["shards"]), "manifest_bytes": mbytes,
                     "teacher_calls": m["stats"]["teacher_calls"] if new and "build" in name else 0,
                     "units_planned": m["stats"]["units_planned"],
                     "said": next((x for x in stdout.splitlines() if x.startswith(("nothing changed", "plan:"))), "")})

    step("full build", build)
    step("no-op rebuild", build)
    with open(os.path.join(prompts, f"{args.task}.yaml"), "a") as fh:
        fh.write("\n# bench: an edited rule\n")
    step(f"one prompt edited ({args.task}) build", build)
    step("--dry-run", [*build, "--dry-run"])
    step("preview (24 cards)", [sys.executable, PREVIEW, "--output", out, "--n", "24",
                                "--out", os.path.join(work, "preview.html")])
    if not args.keep:
        shutil.rmtree(work, ignore_errors=True)

    full = rows[0]
    print(f"scale bench: {args.images} images (source generated in {gen_s:.1f} s), "
          f"{full['units_planned']} units, {os.cpu_count()} cores, {time.strftime('%Y-%m-%d')}")
    head = f"{'step':<34} {'wall s':>8} {'÷ full':>7} {'driver MB':>9} {'tree MB':>8} {'new v':>5} " \
           f"{'files':>6} {'manifest B':>10} {'calls':>7}"
    print(head)
    print("-" * len(head))
    for r in rows:
        print(f"{r['step']:<34} {r['wall_s']:>8.1f} {r['wall_s'] / full['wall_s']:>7.3f} "
              f"{r['driver_peak_rss_mb']:>9} {r['tree_peak_rss_mb']:>8} {'yes' if r['new_version'] else 'no':>5} "
              f"{r['files_in_version']:>6} {r['manifest_bytes']:>10} {r['teacher_calls']:>7}")
    for r in rows:
        if r["said"]:
            print(f"  {r['step']}: {r['said']}")
    os.makedirs(os.path.join(ROOT, "bench", "results"), exist_ok=True)
    with open(os.path.join(ROOT, "bench", "results", "scale.json"), "w") as fh:
        json.dump({"images": args.images, "seed": args.seed, "date": time.strftime("%Y-%m-%d"), "steps": rows}, fh,
                  indent=2)
    return 0


INDEX = """
import sys
from pipelines.sources.resolve import SourceSpec, read_source_cached
from pipelines.storage.fs import StorageSpec, join
ann, images, out = sys.argv[1:4]
read_source_cached(SourceSpec("coco_scale", "coco", ann, images, []), StorageSpec(), join(out, "cache", "index"))
"""


SYNTHETIC_INDEX = """
import sys
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from pipelines.sources.resolve import INDEX_SCHEMA, SourceSpec, index_cache_uri
from pipelines.storage.fs import StorageSpec, join
ann, images, out, n, seed = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]), int(sys.argv[5])
rng = np.random.default_rng(seed)
uri = index_cache_uri(SourceSpec("coco_scale", "coco", ann, images, []), StorageSpec(), join(out, "cache", "index"))
w = pq.ParquetWriter(uri, INDEX_SCHEMA, compression="zstd")
step = 200_000
for lo in range(0, n, step):
    k = np.arange(lo, min(n, lo + step))
    m = len(k)
    empty = rng.random(m) < EMPTY
    whole = np.where(empty, 0, np.clip(rng.exponential(7.3, m).astype(np.int64), 1, 40))
    distinct = np.minimum(whole, 80 - rng.integers(0, 4, m))
    ann_hash = rng.integers(0, 256, (m, 32), dtype=np.uint8)
    cols = {
        "source": pa.array(["coco_scale"] * m), "dataset_format": pa.array(["coco"] * m),
        "image_id": pa.array(k + 1), "file_name": pa.array([f"{i:012d}.jpg" for i in k]),
        "image_uri": pa.array([f"{images}/{i:012d}.jpg" for i in k]),
        "width": pa.array(np.full(m, 640), pa.int32()), "height": pa.array(np.full(m, 480), pa.int32()),
        "objects": pa.array([[]] * m, INDEX_SCHEMA.field("objects").type),
        "absent_categories": pa.array([[] for _ in range(m)], pa.list_(pa.string())),
        "not_exhaustive_categories": pa.array([[] for _ in range(m)], pa.list_(pa.string())),
        "image_error": pa.array(np.where(empty, "no_annotations", None).tolist(), pa.string()),
        "image_error_detail": pa.nulls(m, pa.string()),
        "ann_hash": pa.array([bytes(r).hex() for r in ann_hash], pa.string()),
        "n_whole": pa.array(whole, pa.int32()), "n_part": pa.array(np.zeros(m), pa.int32()),
        "n_absent": pa.array(np.where(empty, 0, 80 - distinct), pa.int32()),
    }
    w.write_table(pa.table(cols, schema=INDEX_SCHEMA), row_group_size=2048)
w.close()
"""


def synthetic_source(root: str, n: int) -> dict[str, str]:
    """A one-image annotation file (the index cache is keyed by its identity) and `n` hardlinked
    images: the index itself is written by SYNTHETIC_INDEX."""
    ann_path = os.path.join(root, f"instances_synthetic_{n}.json")
    img_dir = os.path.join(root, "images")
    if os.path.exists(ann_path):
        return {"annotations": ann_path, "images": img_dir}
    small = make_source(os.path.join(root, "one"), 1, 0)
    base = os.path.join(root, "one", "base", "640x480.jpg")
    os.makedirs(img_dir, exist_ok=True)
    for k in range(n):
        if k % 60_000 == 0:  # a file has at most ~65,000 hard links (ext4)
            src_file = os.path.join(root, "one", f"base-{k}.jpg")
            shutil.copyfile(base, src_file)
        os.link(src_file, os.path.join(img_dir, f"{k:012d}.jpg"))
    shutil.copyfile(small["annotations"], ann_path)
    return {"annotations": ann_path, "images": img_dir}


def plan_only(sizes: list[int], seed: int, keep: str | None, synthetic: bool = False) -> int:
    """Per size: index the source once (parse the JSON, cache the index, like a first build; or, with
    `synthetic`, write a synthetic cached index), then `--dry-run` (cached index + plan, no Ray,
    nothing written)."""
    work = keep or tempfile.mkdtemp(prefix="gv-scale-plan-")
    rows = []
    for n in sizes:
        if synthetic:
            src = synthetic_source(os.path.join(work, f"synthetic-{n}"), n)
            cfg = os.path.join(work, f"plan-{n}.yaml")
            out = os.path.join(work, f"out-{n}")
            with open(cfg, "w") as fh:
                json.dump({"data": {"sources": [{"name": "coco_scale", "format": "coco", **src}]},
                           "output": {"uri": out}}, fh)
            os.makedirs(os.path.join(out, "cache", "index"), exist_ok=True)
            iw, idrv, _, _ = run([sys.executable, "-c", f"EMPTY = {EMPTY_FRACTION}\n" + SYNTHETIC_INDEX,
                                  src["annotations"], src["images"], out, str(n), str(seed)])
            wall, drv, _, stdout = run([sys.executable, BUILD, "--config", cfg, "--dry-run"])
            units = int(next(x for x in stdout.splitlines() if x.startswith("plan:")).split("), ")[1].split()[0])
            rows.append((n, units, wall, drv))
            print(f"{n} images, {units} units: synthetic index {iw:.1f} s; "
                  f"plan (--dry-run, cached index) {wall:.1f} s / driver peak {drv / 2**20:.0f} MB", flush=True)
            continue
        src = make_source(os.path.join(work, f"source-{n}"), n, seed)
        cfg = os.path.join(work, f"plan-{n}.yaml")
        with open(cfg, "w") as fh:
            json.dump({"data": {"sources": [{"name": "coco_scale", "format": "coco", **src}]},
                       "output": {"uri": os.path.join(work, f"out-{n}")}}, fh)
        iw, idrv, _, _ = run([sys.executable, "-c", INDEX, src["annotations"], src["images"],
                              os.path.join(work, f"out-{n}")])
        wall, drv, _, out = run([sys.executable, BUILD, "--config", cfg, "--dry-run"])
        units = int(next(x for x in out.splitlines() if x.startswith("plan:")).split("), ")[1].split()[0])
        rows.append((n, units, wall, drv))
        print(f"{n} images, {units} units: index (parse JSON, once) {iw:.1f} s / {idrv / 2**20:.0f} MB; "
              f"plan (--dry-run, cached index) {wall:.1f} s / driver peak {drv / 2**20:.0f} MB", flush=True)
    if len(rows) > 1:
        (n0, u0, _, d0), (n1, u1, _, d1) = rows[0], rows[-1]
        per_m = (d1 - d0) / 2**30 / max(1, u1 - u0) * 1e6
        print(f"driver RSS growth: {per_m:.2f} GB per extra 1M units ({n0} -> {n1} images)")
    if not keep:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
