#!/usr/bin/env python
"""Write the teacher prompts of the planned units as JSONL, for any external batch system.

    python pipelines/cli/export_prompts.py [--config FILE] [--output URI] [key=value ...] --out prompts.jsonl [--all]
                                       [--inline-images]

One line per distinct request: its `request_key`, the `units` that share it (`gen_key`, `source`,
`image_id`: e.g. the COCO and the LVIS record of one image with the same object table; `gen_key`,
`source`, `image_id` at the top are the first unit's), task, the chat `messages` (the image as a
reference to its uri unless --inline-images), the answer JSON schema, and the id map
`objects: [{"id", "ann_id", "category"}]`. An external batch job thus pays once per request. By
default only the units the next build would generate; --all writes every planned unit. Units whose
annotations are invalid are never sent to a teacher and are not exported (the build records them).

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
{"request_key": ..., "response": "<raw text>"}: the replay teacher gives the answer to every unit of
the request (it rebuilds the request key from the unit as this export does). Answers keyed per unit,
{"gen_key": ..., "response": ...}, still work. The keys match because the replay teacher's identity
is its source name and prompt settings, not the answers file.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any, Iterable, Iterator, Mapping

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
from teachers.backends import prompt_settings  # noqa: E402
from teachers.messages import IMAGE_PART, answer_json_schema, build_messages  # noqa: E402
from teachers.replay import export_request_key  # noqa: E402
from teachers.verifier import build_messages as verify_messages  # noqa: E402
from teachers.verifier import make_item, output_constraint  # noqa: E402
from teachers.vllm_rows import image_data_url, unit_table  # noqa: E402


def request_units(ctx: BuildContext, work_rows: Iterable[dict[str, Any]]) -> tuple[dict[str, str], dict[str, list]]:
    """First pass: each exportable unit's request key (gen_key -> request key) and, per request key
    in first-seen order, the units that share it. Units of images with invalid annotations are
    no request (the build never sends them)."""
    settings = prompt_settings(ctx.cfg.teacher)
    key_of: dict[str, str] = {}
    units: dict[str, list[dict[str, Any]]] = {}
    for image in work_rows:
        if image["image_error"]:
            continue
        for u in image["units"]:
            rk = export_request_key({**image, **u}, settings)
            key_of[u["gen_key"]] = rk
            units.setdefault(rk, []).append({"gen_key": u["gen_key"], "source": image["source"],
                                             "image_id": image["image_id"]})
    return key_of, units


def unit_lines(ctx: BuildContext, work_rows: Iterable[dict[str, Any]], inline_images: bool,
               key_of: Mapping[str, str], units: Mapping[str, list]) -> Iterator[dict[str, Any]]:
    """Second pass: one line per request, written where its first unit is (see module doc)."""
    t = ctx.cfg.teacher
    with_image = t.mode == "vision"
    for image in work_rows:
        leads = [u for u in image["units"] if u["gen_key"] in key_of
                 and units[key_of[u["gen_key"]]][0]["gen_key"] == u["gen_key"]]
        if not leads:
            continue
        grid = grid_factor(t)
        tw, th = fit_to_budget(image["width"], image["height"], int(t.max_pixels), grid, t.min_pixels)
        url = image["image_uri"]
        if with_image and inline_images:
            data = storage.read_bytes(image["image_uri"], ctx.store)
            jpeg, tw, th, err, _ = decode_image(data, image["width"], image["height"],
                                                ctx.cfg.stream.max_image_pixels, True, int(t.max_pixels), grid,
                                                t.min_pixels)
            url = image_data_url(jpeg) if jpeg else url
        row = {**image, "teacher_width": tw, "teacher_height": th}
        table_rows = build_object_table(image["objects"] or [])
        objects = [{"id": r.local_id, "ann_id": r.ann_id, "category": r.name} for r in table_rows]
        for u in leads:
            spec = ctx.prompts[u["task"]]
            text, local_ids = unit_table(row, str(t.box_format))
            messages = build_messages(spec, text, int(t.pairs_per_unit), with_image)
            last = messages[-1]
            if with_image:
                last["content"] = [{"type": "image_url", "image_url": {"url": url}} if p == IMAGE_PART else p
                                   for p in last["content"]]
            rk = key_of[u["gen_key"]]
            yield {
                "request_key": rk, "units": units[rk],
                "gen_key": u["gen_key"], "source": image["source"], "image_id": image["image_id"],
                "task": u["task"], "image_uri": image["image_uri"], "messages": messages,
                "json_schema": answer_json_schema(u["task"], list(spec.subtypes), local_ids, int(t.pairs_per_unit)),
                "objects": objects,
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
    # batch by batch, twice (request keys, then lines): the work list never becomes one list of dicts
    key_of, units = request_units(ctx, (r for t in p.iter_work(1024) for r in t.to_pylist()))
    n = 0
    with open(args.out, "w") as fh:
        rows = (r for t in p.iter_work(1024) for r in t.to_pylist())
        for line in unit_lines(ctx, rows, args.inline_images, key_of, units):
            fh.write(json.dumps(line) + "\n")
            n += 1
    skipped = p.units_to_generate - len(key_of)
    print(f"wrote {n} prompts to {args.out} for {len(key_of)} units ({len(key_of) - n} share an identical "
          f"request; {max(0, skipped)} with invalid annotations not exported) (teacher {ctx.teacher.label()})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
