#!/usr/bin/env python
"""Export one version of a Ground-V output to a training format.

    python pipelines/cli/export.py FORMAT --out DIR [--version N] [--output URI] [--config FILE]
                               [--task T ...] [--split NAME] [--segmentation MODE] [--images HOW]
                               [key=value ...]

FORMAT: grefcoco (refs + COCO instances per source, for GRES/ReLA and LISA's gRefCOCO loader),
lisa (LISA's ReasonSeg layout), psalm (PSALM's referring JSON). See docs/exports.md.

`--output` defaults to the config's output.uri (configs/default.yaml + --config files), `--version`
to the latest. Masks are rebuilt from the source annotation files the version's config names and
checked against the Parquet masks before anything is written.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from typing import Any

from omegaconf import OmegaConf  # noqa: E402

from pipelines.cli.common import common_parent, load, run, split_overrides  # noqa: E402
from pipelines.consumers.dataset import load_manifest, normalize_output  # noqa: E402
from pipelines.consumers.exporters import WRITERS  # noqa: E402
from pipelines.consumers.exporters.common import (  # noqa: E402
    SEGMENTATION_MODES,
    ExportContext,
    ExportError,
    check_masks,
    count_by,
    load_samples,
    manifest_ref,
    source_indexes,
    write_json,
)
from pipelines.sources.resolve import SourceSpec, resolve_sources  # noqa: E402
from pipelines.storage.fs import StorageSpec  # noqa: E402
from schemas.columns import TASKS  # noqa: E402

IMAGE_MODES: tuple[str, ...] = ("link", "copy", "none")
RECEIPT_NAME = "export.json"


def export(fmt: str, output: str, out_dir: str, *, version: int | None = None, tasks: list[str] | None = None,
           split: str = "train", segmentation: str = "polygon", images: str = "link", split_by: str = "unc",
           store: StorageSpec | None = None, sources: list[SourceSpec] | None = None,
           force: bool = False) -> dict[str, Any]:
    """Write `fmt` for one version into `out_dir`; returns the receipt also written as export.json.

    `sources` overrides the sources resolved from the manifest's config (programmatic use, tests).
    """
    _check_args(fmt, tasks, split, segmentation, images)
    store = store or StorageSpec()
    output = normalize_output(output)
    out_dir = os.path.abspath(out_dir)
    _check_out_dir(out_dir, force)
    t0 = time.time()
    manifest = load_manifest(output, version, store.endpoint_url)
    samples = load_samples(output, manifest.version, tasks, store.endpoint_url)
    if sources is None:
        # The sources the build read: the config recorded in the manifest (sample dir included).
        sources = resolve_sources(OmegaConf.create(manifest.config))
    indexes = source_indexes(samples, sources, store)
    check_masks(samples, indexes)
    ctx = ExportContext(out_dir=out_dir, split=split, segmentation=segmentation, images=images,
                        split_by=split_by, store=store)
    summary = WRITERS[fmt](samples, indexes, ctx)
    receipt = {
        "format": fmt,
        "output": output,
        "manifest": manifest_ref(manifest),
        "split": split,
        "segmentation": segmentation if fmt != "lisa" else "cv2-rectangles",
        "tasks": list(tasks) if tasks else list(TASKS),
        "samples": len(samples),
        "by_task": count_by(samples, "task"),
        "sources": {n: {"format": i.spec.format, "annotations": i.spec.annotations, "images": i.spec.images,
                        **({"categories": i.spec.categories} if i.spec.categories else {})}
                    for n, i in indexes.items()},
        "result": summary,
        "wall_s": round(time.time() - t0, 3),
    }
    write_json(os.path.join(out_dir, RECEIPT_NAME), receipt)  # last: its presence means "complete"
    return receipt


def _check_args(fmt: str, tasks: list[str] | None, split: str, segmentation: str, images: str) -> None:
    if fmt not in WRITERS:
        raise ExportError(f"unknown format {fmt!r}; expected one of {sorted(WRITERS)}")
    bad = [t for t in tasks or [] if t not in TASKS]
    if bad:
        raise ExportError(f"unknown task {bad[0]!r}; expected some of {list(TASKS)}")
    if not split or "/" in split or "\\" in split or split.startswith("."):
        raise ExportError(f"bad split name {split!r}")
    if segmentation not in SEGMENTATION_MODES:
        raise ExportError(f"--segmentation must be one of {list(SEGMENTATION_MODES)}")
    if images not in IMAGE_MODES:
        raise ExportError(f"--images must be one of {list(IMAGE_MODES)}")


def _check_out_dir(out_dir: str, force: bool) -> None:
    # Refuse to mix two exports in one folder: stale files of an earlier export would look current.
    if os.path.isdir(out_dir) and os.listdir(out_dir) and not force:
        raise ExportError(f"{out_dir} is not empty (pass --force to write into it anyway)")


def main(argv: list[str] | None = None) -> int:
    return run("export", lambda: _main(sys.argv[1:] if argv is None else argv))


def _main(argv: list[str]) -> int:
    argv, overrides = split_overrides(argv)
    ap = argparse.ArgumentParser(prog="export.py", description=__doc__.split("\n\n")[0], parents=[common_parent()])
    ap.add_argument("format", choices=sorted(WRITERS))
    ap.add_argument("--out", required=True, help="local folder to write into (empty or new)")
    ap.add_argument("--version", type=int, help="manifest version (default: the latest)")
    ap.add_argument("--task", action="append", dest="tasks", help="only this task (repeatable)")
    ap.add_argument("--split", default="train", help="split name written into the refs / file names")
    ap.add_argument("--split-by", default="unc", help="grefcoco: refs file grefs(<split-by>).json")
    ap.add_argument("--segmentation", default="polygon", choices=SEGMENTATION_MODES,
                    help="grefcoco/psalm annotation segmentations (see docs/exports.md)")
    ap.add_argument("--images", default="link", choices=IMAGE_MODES, help="lisa: how images go beside the json")
    ap.add_argument("--force", action="store_true", help="write into a non-empty --out")
    args = ap.parse_args(argv)
    _, store, output = load(args, overrides)
    receipt = export(args.format, output, args.out, version=args.version,
                     tasks=args.tasks, split=args.split, segmentation=args.segmentation, images=args.images,
                     split_by=args.split_by, store=store, force=args.force)
    print(f"exported v{receipt['manifest']['version']} of {receipt['output']} as {args.format}: "
          f"{receipt['samples']} samples {receipt['by_task']} -> {os.path.abspath(args.out)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
