#!/usr/bin/env python
"""Write the teacher prompts of the planned units as JSONL, for any external batch system.

    python pipelines/cli/export_prompts.py [--config FILE] [--output URI] [key=value ...] --out prompts.jsonl [--all]
                                       [--inline-images]

One line per unit: gen_key, image_id, source, task, the chat `messages` (the image as a reference
to its uri unless --inline-images), the answer JSON schema, and the id map
`objects: [{"id", "ann_id", "category"}]`. By default only the units the next build would generate;
--all writes every planned unit.

--verify writes the verifier's requests instead (verify.kind / verify.prompt_file /
verify.replay_source of the config): one line per stored pair of the latest version without a
verdict of this verifier (--all: every pair), with its `verify_key`, the chat `messages`, the
output constraint (`json` schema with the ids enum, or the verdict `choice`), and for mask_judge
the pair's `mask` (drawn into the images with --inline-images). Answer each line elsewhere and
replay with `verify.backend=replay verify.verdicts=answers.jsonl`, lines
{"verify_key": ..., "response": "<raw text>"[, "p_pass": 0.93]}.

Round trip: export with the config you will replay under (teacher.backend=replay, and
teacher.replay_source naming the external teacher), answer each line elsewhere, then
`build_groundv.py teacher.backend=replay teacher.responses=answers.jsonl` with lines
{"gen_key": ..., "response": "<raw text>"}: the generation keys match because the replay teacher's
identity is its source name and prompt settings, not the answers file.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any, Iterable, Iterator

from pipelines.build.stages.images import decode_image, fit_to_budget  # noqa: E402
from pipelines.build.stages.verify_images import verifier_image_urls  # noqa: E402
from pipelines.build.verify import image_lookup, read_rows, stored_verdicts  # noqa: E402
from pipelines.build_groundv import BuildContext, plan  # noqa: E402
from pipelines.cli.common import common_parent, run, split_overrides  # noqa: E402
from pipelines.config import grid_factor, load_config  # noqa: E402
from pipelines.core.object_table import build_object_table  # noqa: E402
from pipelines.storage import fs as storage  # noqa: E402
from pipelines.storage.output import latest_manifest  # noqa: E402
from schemas.columns import KIND_SAMPLES, KIND_VERIFY_FAILED  # noqa: E402
from teachers.messages import IMAGE_PART, answer_json_schema, build_messages  # noqa: E402
from teachers.verifier import build_messages as verify_messages  # noqa: E402
from teachers.verifier import make_item, output_constraint  # noqa: E402
from teachers.vllm_rows import image_data_url, unit_table  # noqa: E402


def unit_lines(ctx: BuildContext, work_rows: Iterable[dict[str, Any]], inline_images: bool
               ) -> Iterator[dict[str, Any]]:
    t = ctx.cfg.teacher
    with_image = t.mode == "vision"
    for image in work_rows:
        grid = grid_factor(t)
        tw, th = fit_to_budget(image["width"], image["height"], int(t.max_pixels), grid, t.min_pixels)
        url = image["image_uri"]
        if with_image and inline_images and not image["image_error"]:
            data = storage.read_bytes(image["image_uri"], ctx.store)
            jpeg, tw, th, err, _ = decode_image(data, image["width"], image["height"],
                                                ctx.cfg.stream.max_image_pixels, True, int(t.max_pixels), grid,
                                                t.min_pixels)
            url = image_data_url(jpeg) if jpeg else url
        row = {**image, "teacher_width": tw, "teacher_height": th}
        table_rows = build_object_table(image["objects"] or [])
        objects = [{"id": r.local_id, "ann_id": r.ann_id, "category": r.name} for r in table_rows]
        for u in image["units"]:
            spec = ctx.prompts[u["task"]]
            text, local_ids = unit_table(row, str(t.box_format))
            messages = build_messages(spec, text, int(t.pairs_per_unit), with_image)
            last = messages[-1]
            if with_image:
                last["content"] = [{"type": "image_url", "image_url": {"url": url}} if p == IMAGE_PART else p
                                   for p in last["content"]]
            yield {
                "gen_key": u["gen_key"], "source": image["source"], "image_id": image["image_id"],
                "task": u["task"], "image_uri": image["image_uri"], "messages": messages,
                "json_schema": answer_json_schema(u["task"], list(spec.subtypes), local_ids, int(t.pairs_per_unit)),
                "objects": objects, "annotation_error": image["image_error"],
            }


def verify_lines(ctx: BuildContext, all_pairs: bool, inline_images: bool) -> Iterator[dict[str, Any]]:
    """The verifier's requests for the latest version's stored pairs (see module doc)."""
    v, verifier = ctx.cfg.verify, ctx.verifier
    current = latest_manifest(ctx.output, ctx.store)
    if current is None:
        return
    stored, _ = stored_verdicts(ctx.output, current, ctx.store) if not all_pairs else ({}, [])
    images = image_lookup(ctx.sources, ctx.store, storage.join(ctx.output, "cache", "index"))
    vh, ph = verifier.identity_hash(), verifier.prompt.content_hash
    for s in current.shards:
        if s.kind not in (KIND_SAMPLES, KIND_VERIFY_FAILED):
            continue
        for row in read_rows(ctx.output, s, ctx.store):
            image = images(row["source"], int(row["image_id"]))
            if image is None:
                continue
            item = make_item(row, image, vh, ph)
            if item["verify_key"] in stored:
                continue
            urls = [item["image_uri"]] * (2 if verifier.kind == "mask_judge" else 1)
            if inline_images:
                data = storage.read_bytes(item["image_uri"], ctx.store)
                urls = verifier_image_urls(data, item, verifier.kind, v.max_pixels, v.crop_margin)
            if v.mode == "text":
                urls = []
            yield {
                "verify_key": item["verify_key"], "gen_key": item["gen_key"], "sample_id": item["sample_id"],
                "task": item["task"], "kind": verifier.kind, "image_uri": item["image_uri"],
                "messages": verify_messages(item, verifier.prompt, urls),
                "output_constraint": output_constraint(item, verifier.prompt),
                "mask": item["mask"] if verifier.kind == "mask_judge" else None,
                "objects": [{"id": r.local_id, "ann_id": r.ann_id, "category": r.name}
                            for r in build_object_table(image["objects"] or [])],
            }


def main(argv: list[str] | None = None) -> int:
    return run("export_prompts", lambda: _main(sys.argv[1:] if argv is None else argv))


def _main(argv: list[str]) -> int:
    argv, overrides = split_overrides(argv)
    ap = argparse.ArgumentParser(prog="export_prompts.py", description=__doc__.split("\n\n")[0],
                                 parents=[common_parent()])
    ap.add_argument("--out", required=True, help="JSONL file to write")
    ap.add_argument("--all", action="store_true", help="every planned unit, not only those to generate")
    ap.add_argument("--inline-images", action="store_true", help="embed images as data: URLs")
    ap.add_argument("--verify", action="store_true", help="export the verifier's requests for stored pairs")
    args = ap.parse_args(argv)
    if getattr(args, "output", None):
        overrides.append(f"output.uri={args.output}")
    if any(o.startswith("teacher.backend=replay") for o in overrides) and \
            not any(o.startswith("teacher.responses=") for o in overrides):
        overrides.append("teacher.responses=(not needed to export)")  # the answers don't exist yet
    if any(o.startswith("verify.backend=replay") for o in overrides) and \
            not any(o.startswith("verify.verdicts=") for o in overrides):
        overrides.append("verify.verdicts=(not needed to export)")
    ctx = BuildContext(load_config(getattr(args, "config", []) or [], overrides), validate_teacher=False,
                       dry_run=True)
    if args.verify:
        n = 0
        with open(args.out, "w") as fh:
            for line in verify_lines(ctx, args.all, args.inline_images):
                fh.write(json.dumps(line) + "\n")
                n += 1
        print(f"wrote {n} verifier prompts to {args.out} (verifier {ctx.verifier.label()})")
        return 0
    p, *_ = plan(ctx, set(), use_existing=not args.all)
    n = 0
    with open(args.out, "w") as fh:
        # batch by batch: the work list never becomes one list of Python dicts
        rows = (r for t in p.iter_work(1024) for r in t.to_pylist())
        for line in unit_lines(ctx, rows, args.inline_images):
            fh.write(json.dumps(line) + "\n")
            n += 1
    print(f"wrote {n} prompts to {args.out} (teacher {ctx.teacher.label()})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
