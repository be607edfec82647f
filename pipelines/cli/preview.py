#!/usr/bin/env python
"""Look at a Ground-V version: a self-contained HTML page (and/or a PNG contact sheet) of samples.

    python pipelines/cli/preview.py [--output URI] [--version N] [--task T] [--n 24] [--seed 0]
                                [--rejects] [--png FILE] [--out preview.html]

Each card shows the image with every target drawn separately (own colour, fill + outline; a part's
parent as a light tint with a dashed outline), the instruction, the answer, task and subtype;
hallucination samples say "no target". `--rejects` shows rejected pairs with their reason code.
Per-target masks come from the source annotations named in the manifest's config (the sample's
`target_ids` are source annotation ids; a reject's `target_local_ids` are mapped through the
image's object table). When the sources can't be read, a sample is drawn from its union mask.

`--output` defaults to the config's output.uri (configs/default.yaml + --config). Sampling is
deterministic (`--seed`) and round-robin over tasks, so every task shows up.
"""

from __future__ import annotations

import argparse
import base64
import html
import io
import os
import random
import sys
from typing import Any, Sequence

import pyarrow.parquet as pq  # noqa: E402
from PIL import Image  # noqa: E402

from pipelines.cli.common import NotFound, common_parent, load, run, split_overrides  # noqa: E402
from pipelines.consumers.cards import (  # noqa: E402, F401 - re-exported for callers of the preview
    NO_TARGET,
    Item,
    SourceIndex,
    TargetInfo,
    build_targets,
    decode_rle,
    load_image,
    reject_item,
    row_key,
    sample_item,
)
from pipelines.consumers.render import RGB, TASK_COLOURS, Card, SheetLayout, contact_sheet, fit_within  # noqa: E402
from pipelines.storage import fs as storage  # noqa: E402
from pipelines.storage import guard  # noqa: E402
from pipelines.storage.fs import StorageSpec  # noqa: E402
from pipelines.storage.output import list_versions, load_manifest  # noqa: E402
from schemas.columns import KIND_REJECTS, KIND_SAMPLES, TASKS  # noqa: E402
from schemas.manifest import Manifest  # noqa: E402

# Columns the preview needs; a shard is read with these only (masks of rejects don't exist).
SAMPLE_COLUMNS = ["sample_id", "source", "image_id", "image_uri", "width", "height", "task", "subtype",
                  "instruction", "answer", "target_ids", "mask"]
REJECT_COLUMNS = ["gen_key", "source", "image_id", "task", "pair_index", "reason", "detail", "subtype",
                  "instruction", "answer", "target_local_ids", "raw_response"]
CANDIDATES_PER_SLOT = 8  # rows read per wanted card and task before sampling (bounds I/O on big outputs)


# ------------------------------------------------------------------------------------ selection
def shard_rows(output: str, m: Manifest, kind: str, task: str, want: int, rng: random.Random,
               store: StorageSpec) -> list[dict[str, Any]]:
    """`want` candidate rows of one (kind, task): shards in seeded order, a seeded sample of rows in
    each. Only the sampled rows become Python dicts: a compacted shard holds up to ~100K rows, and
    turning whole shards into dicts made preview's memory grow with the dataset (678 MB at 30K
    images for 24 cards)."""
    columns = SAMPLE_COLUMNS if kind == KIND_SAMPLES else REJECT_COLUMNS
    shards = sorted(m.shards_of(kind, task), key=lambda s: s.path)
    rng.shuffle(shards)
    rows: list[dict[str, Any]] = []
    for s in shards:
        if len(rows) >= want:
            break
        fs, path = storage.fs_and_path(guard.shard_uri(output, s.path), store)
        table = pq.read_table(path, filesystem=fs, columns=columns)
        take = sorted(rng.sample(range(table.num_rows), min(want - len(rows), table.num_rows)))
        rows.extend(table.take(take).to_pylist())
        del table
    return rows


def select_rows(output: str, m: Manifest, kind: str, tasks: Sequence[str], n: int, seed: int,
                store: StorageSpec) -> list[dict[str, Any]]:
    """`n` rows, deterministic for a seed: shuffled per task, then interleaved task by task."""
    rng = random.Random(seed)
    per_task: list[list[dict[str, Any]]] = []
    for task in tasks:
        rows = shard_rows(output, m, kind, task, max(n, 1) * CANDIDATES_PER_SLOT, rng, store)
        rows.sort(key=row_key)
        rng.shuffle(rows)
        per_task.append(rows)
    out: list[dict[str, Any]] = []
    depth = 0
    while len(out) < n and any(depth < len(r) for r in per_task):
        out.extend(r[depth] for r in per_task if depth < len(r))
        depth += 1
    return out[:n]


# ----------------------------------------------------------------------------------------- HTML
CSS = """
body{font:14px/1.4 system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:0;background:#f4f4f4;color:#222}
header{padding:16px 24px;background:#fff;border-bottom:1px solid #ddd}
h1{font-size:20px;margin:0 0 4px}
.meta{color:#666;font-size:12px}
main{display:grid;grid-template-columns:repeat(auto-fill,minmax(340px,1fr));gap:16px;padding:16px 24px}
figure{margin:0;background:#fff;border:1px solid #ddd;border-radius:6px;overflow:hidden}
figure img{display:block;width:100%;height:auto;background:#eee}
.noimg{padding:40px;text-align:center;color:#999;background:#eee}
figcaption{padding:8px 10px}
.tag{display:inline-block;padding:1px 6px;border-radius:3px;font-size:12px;margin-right:4px;color:#fff}
.subtype{background:#888}
.reason{background:#c0392b}
.instruction{font-weight:600;margin:6px 0 2px}
.answer{margin:0 0 6px;color:#444}
.targets{list-style:none;padding:0;margin:4px 0;font-size:12px}
.swatch{display:inline-block;width:10px;height:10px;margin-right:5px;border-radius:2px;vertical-align:middle}
.part .swatch{outline:1px dashed #555;outline-offset:1px}
.no-target{font-size:12px;color:#777;font-style:italic;margin:4px 0}
.detail,.note{font-size:12px;color:#a33;margin:2px 0}
"""


def _rgb(c: RGB) -> str:
    return f"rgb({c[0]},{c[1]},{c[2]})"


def encode_image(img: Image.Image, fmt: str, quality: int = 88) -> tuple[str, str]:
    """(mime type, base64 text) of an image as PNG or JPEG."""
    buf = io.BytesIO()
    if fmt == "PNG":
        img.save(buf, format="PNG", optimize=True)
        return "image/png", base64.b64encode(buf.getvalue()).decode("ascii")
    img.save(buf, format="JPEG", quality=quality)
    return "image/jpeg", base64.b64encode(buf.getvalue()).decode("ascii")


def card_html(item: Item, image_format: str, max_side: int) -> str:
    esc = html.escape
    attrs = {"class": "card", "data-kind": item.kind, "data-key": item.key, "data-task": item.task,
             "data-subtype": item.subtype, "data-source": item.source, "data-image-id": str(item.image_id)}
    if item.reason:
        attrs["data-reason"] = item.reason
    out = ["<figure " + " ".join(f'{k}="{esc(v)}"' for k, v in attrs.items()) + ">"]
    if item.image is not None:
        img = fit_within(item.image, max_side, max_side)
        fmt = item.image_format if image_format == "auto" else image_format.upper()
        mime, data = encode_image(img, "PNG" if fmt == "PNG" else "JPEG")
        out.append(f'<img width="{img.width}" height="{img.height}" alt="{esc(item.instruction)}" '
                   f'src="data:{mime};base64,{data}">')
    else:
        out.append('<div class="noimg">image unavailable</div>')
    tc = TASK_COLOURS.get(item.task, (90, 90, 90))
    out.append("<figcaption>")
    out.append(f'<div><span class="tag task" style="background:{_rgb(tc)}">{esc(item.task)}</span>'
               f'<span class="tag subtype">{esc(item.subtype or "-")}</span>'
               + (f'<span class="tag reason">{esc(item.reason)}</span>' if item.reason else "") + "</div>")
    out.append(f'<p class="instruction">{esc(item.instruction)}</p>')
    out.append(f'<p class="answer">{esc(item.answer)}</p>')
    if item.targets:
        out.append('<ul class="targets">')
        for t in item.targets:
            cls = ' class="part"' if t.is_part else ""
            suffix = " (parent: dashed outline)" if t.is_part else ""
            out.append(f'<li{cls}><span class="swatch" style="background:{_rgb(t.colour)}"></span>'
                       f"{esc(t.label)}{suffix}</li>")
        out.append("</ul>")
    else:
        out.append(f'<p class="no-target">{NO_TARGET}</p>')
    if item.detail:
        out.append(f'<p class="detail">{esc(item.detail)}</p>')
    if item.note:
        out.append(f'<p class="note">{esc(item.note)}</p>')
    out.append(f'<p class="meta">{esc(item.source)} &middot; image {item.image_id} &middot; {esc(item.key[:16])}</p>')
    out.append("</figcaption></figure>")
    return "\n".join(out)


def page_html(items: Sequence[Item], title: str, subtitle: str, image_format: str, max_side: int) -> str:
    cards = "\n".join(card_html(i, image_format, max_side) for i in items)
    return (f'<!doctype html>\n<html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>'
            f"<style>{CSS}</style></head>\n<body><header><h1>{html.escape(title)}</h1>"
            f'<div class="meta">{html.escape(subtitle)}</div></header>\n<main>\n{cards}\n</main></body></html>\n')


def sheet_card(item: Item) -> Card:
    title = f"{item.task} / {item.subtype}" if item.subtype else item.task
    lines = [item.instruction, f"-> {item.answer}" if item.answer else ""]
    if item.reason:
        lines.insert(0, f"rejected: {item.reason}")
    if not item.targets:
        lines.append(NO_TARGET)
    image = item.image if item.image is not None else Image.new("RGB", (4, 3), (220, 220, 220))
    return Card(image, title, TASK_COLOURS.get(item.task, (90, 90, 90)), [x for x in lines if x])


# ------------------------------------------------------------------------------------------ CLI
def collect(output: str, m: Manifest, kind: str, tasks: Sequence[str], n: int, seed: int,
            store: StorageSpec) -> tuple[list[Item], str | None]:
    rows = select_rows(output, m, kind, tasks, n, seed, store)
    index = SourceIndex(m, store)
    make = sample_item if kind == KIND_SAMPLES else reject_item
    return [make(r, index, store) for r in rows], index.error


def main(argv: list[str] | None = None) -> int:
    return run("preview", lambda: _main(sys.argv[1:] if argv is None else argv))


def _main(argv: list[str]) -> int:
    argv, overrides = split_overrides(argv)
    ap = argparse.ArgumentParser(prog="preview.py", description=__doc__.split("\n\n")[0], parents=[common_parent()])
    ap.add_argument("--version", type=int, help="manifest version (default: the latest)")
    ap.add_argument("--task", choices=TASKS, help="only this task")
    ap.add_argument("--n", type=int, default=24, help="number of cards")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--rejects", action="store_true", help="show rejected pairs with their reason code")
    ap.add_argument("--out", help="HTML file to write")
    ap.add_argument("--png", help="PNG contact sheet to write")
    ap.add_argument("--cols", type=int, default=4, help="contact sheet columns")
    ap.add_argument("--image-format", choices=("auto", "png", "jpeg"), default="auto",
                    help="inlined image format (auto: PNG for PNG sources, else JPEG)")
    ap.add_argument("--max-side", type=int, default=640, help="longest side of an inlined image")
    args = ap.parse_args(argv)
    if not args.out and not args.png:
        ap.error("give --out FILE.html and/or --png FILE.png")
    for target in (args.out, args.png):  # before any work: a missing folder is a usage error
        if target and not os.path.isdir(os.path.dirname(os.path.abspath(target))):
            raise FileNotFoundError(2, "the folder to write into does not exist", target)
    _, store, output = load(args, overrides)
    versions = list_versions(output, store)
    if not versions:
        raise NotFound(f"no versions under {output} (nothing committed there yet)")
    version = args.version or versions[-1]
    if version not in versions:
        raise NotFound(f"no version {version} under {output} (have {versions})")
    m = load_manifest(output, version, store)
    kind = KIND_REJECTS if args.rejects else KIND_SAMPLES
    tasks = [args.task] if args.task else list(TASKS)
    items, err = collect(output, m, kind, tasks, max(0, args.n), args.seed, store)
    total = sum(s.rows for s in m.shards if s.kind == kind and s.task in tasks)
    what = "rejected pairs" if args.rejects else "samples"
    title = f"Ground-V preview: v{version:06d} {what}"
    subtitle = (f"{output} | {len(items)} of {total} {what}" + (f" | task {args.task}" if args.task else "")
                + f" | seed {args.seed} | teacher {m.teacher.get('backend', '?')} | filters {m.filters.get('version')}")
    if err:
        print(f"preview: warning: {err}", file=sys.stderr)
    if args.out:
        with open(args.out, "w", encoding="utf-8") as fh:
            fh.write(page_html(items, title, subtitle, args.image_format, args.max_side))
        print(f"preview: wrote {len(items)} {what} to {args.out}")
    if args.png:
        sheet = contact_sheet([sheet_card(i) for i in items], SheetLayout(cols=max(1, args.cols)))
        sheet.save(args.png, format="PNG", optimize=True)
        print(f"preview: wrote a {sheet.width}x{sheet.height} contact sheet of {len(items)} {what} to {args.png}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
