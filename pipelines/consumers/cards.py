"""Cards of a version's pairs: the image with each target drawn (own colour; a part's parent tinted
and outlined dashed), the instruction, the answer, task and subtype.

Shared by the preview (pipelines/cli/preview.py) and the audit review page (pipelines/quality/server.py).
Per-target masks come from the source annotations named in the manifest's config (a sample's
`target_ids` are source annotation ids; a reject's `target_local_ids` are mapped through the image's
object table). When the sources can't be read, a sample is drawn from its union mask.
"""

from __future__ import annotations

import io
import os
from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

import numpy as np
from omegaconf import OmegaConf
from PIL import Image
from pycocotools import mask as mask_utils

from pipelines.build.stages.images import to_rgb
from pipelines.consumers.render import RGB, Target, draw_targets, pick_colours
from pipelines.core.object_table import build_object_table, local_to_ann
from pipelines.sources.resolve import read_cached_images, read_source_cached, resolve_sources
from pipelines.sources.sample_data import MARKER_NAME
from pipelines.storage import fs as storage
from pipelines.storage.fs import StorageSpec
from schemas.columns import KIND_REJECTS, KIND_SAMPLES
from schemas.manifest import Manifest

NO_TARGET = "no target"

def row_key(row: Mapping[str, Any]) -> str:
    return str(row["sample_id"]) if "sample_id" in row else f"{row['gen_key']}:{row['pair_index']}"



# ------------------------------------------------------------------------------- source records
class SourceIndex:
    """Image records of the sources named in a manifest's config, read lazily, one source at a time."""

    def __init__(self, m: Manifest, store: StorageSpec) -> None:
        self.store = store
        self.error: str | None = None
        self._specs: dict[str, Any] = {}
        self._records: dict[str, dict[int, dict[str, Any]]] = {}
        cfg = OmegaConf.create(m.config)
        # the build's cached source index: no re-parse of the annotation file (never written here)
        self._cache = storage.join(cfg.output.uri, "cache", "index") if cfg.output.uri else None
        try:
            if not cfg.data.sources:  # the embedded sample: use it where it is, never generate it here
                marker = os.path.join(os.path.abspath(cfg.data.sample.dir), MARKER_NAME)
                if not os.path.exists(marker):
                    raise FileNotFoundError(f"no sample dataset at {os.path.dirname(marker)}")
            self._specs = {s.name: s for s in resolve_sources(cfg)}
        except Exception as exc:  # noqa: BLE001 - a preview must still show the union masks
            self.error = f"sources unavailable: {type(exc).__name__}: {exc}"

    def record(self, source: str, image_id: int) -> dict[str, Any] | None:
        spec = self._specs.get(source)
        if source not in self._records and spec is not None:
            # the cached index, only this image's row group: no parse, no whole index in memory
            one = read_cached_images(spec, self.store, self._cache, [int(image_id)])
            if one is not None:
                rows = one.to_pylist()
                return rows[0] if rows else None
        return self.records(source).get(int(image_id))

    def records(self, source: str) -> dict[int, dict[str, Any]]:
        """image id -> image record of one source (empty when the source can't be read; see `error`)."""
        if source not in self._records:
            self._records[source] = {}
            spec = self._specs.get(source)
            if spec is not None:
                try:
                    table = read_source_cached(spec, self.store, self._cache, write_cache=False)
                    self._records[source] = {int(r["image_id"]): r for r in table.to_pylist()}
                except Exception as exc:  # noqa: BLE001
                    self.error = f"source {source}: {type(exc).__name__}: {exc}"
        return self._records[source]

    @property
    def sources(self) -> list[str]:
        return sorted(self._specs)


# ----------------------------------------------------------------------------------------- cards
@dataclass
class TargetInfo:
    label: str  # "car #2", "handle of mug #7"
    colour: RGB
    is_part: bool = False


@dataclass
class Item:
    """One card: what the HTML page and the contact sheet show."""

    kind: str  # samples | rejects
    key: str
    task: str
    subtype: str
    instruction: str
    answer: str
    source: str
    image_id: int
    image: Image.Image | None
    image_format: str  # PNG | JPEG
    targets: list[TargetInfo] = field(default_factory=list)
    reason: str | None = None
    detail: str | None = None
    note: str | None = None  # e.g. unknown local ids, union-mask fallback


def decode_rle(counts: str, height: int, width: int) -> np.ndarray:
    return mask_utils.decode({"size": [int(height), int(width)], "counts": counts.encode()}).astype(bool)


def load_image(uri: str, store: StorageSpec) -> tuple[Image.Image, str]:
    """(RGB image, source format) without applying EXIF orientation (masks are in the stored frame)."""
    img = Image.open(io.BytesIO(storage.read_bytes(uri, store)))
    fmt = img.format or "JPEG"
    img.load()
    return to_rgb(img), fmt


def _label(obj: Mapping[str, Any], objects: Mapping[int, Mapping[str, Any]]) -> str:
    name = str(obj["name"])
    if obj["is_part"] and obj.get("parent_ann_id") is not None:
        parent = objects.get(int(obj["parent_ann_id"]))
        if parent is not None:
            return f"{name} of {parent['name']} #{parent['ann_id']}"
    return f"{name} #{obj['ann_id']}"


def build_targets(ann_ids: Sequence[int], record: Mapping[str, Any],
                  image: Image.Image) -> tuple[list[Target], list[TargetInfo]]:
    """Per-target masks (+ a part's parent mask) from the image record's source annotations, each
    with a colour that stands out from the target's own pixels."""
    h, w = int(record["height"]), int(record["width"])
    objects = {int(o["ann_id"]): o for o in record["objects"]}
    masks: list[np.ndarray] = []
    parents: list[np.ndarray | None] = []
    for a in ann_ids:
        obj = objects[int(a)]
        masks.append(decode_rle(obj["rle_counts"], h, w))
        parent = obj.get("parent_ann_id") if obj["is_part"] else None
        parents.append(decode_rle(objects[int(parent)]["rle_counts"], h, w)
                       if parent is not None and int(parent) in objects else None)
    colours = pick_colours(image, masks, parents)
    drawn = [Target(m, c, pm) for m, c, pm in zip(masks, colours, parents, strict=True)]
    infos = [TargetInfo(_label(objects[int(a)], objects), c, bool(objects[int(a)]["is_part"]))
             for a, c in zip(ann_ids, colours, strict=True)]
    return drawn, infos


def sample_item(row: Mapping[str, Any], index: SourceIndex, store: StorageSpec) -> Item:
    item = Item(KIND_SAMPLES, row_key(row), row["task"], row["subtype"] or "", row["instruction"] or "",
                row["answer"] or "", row["source"], int(row["image_id"]), None, "JPEG")
    try:
        base, item.image_format = load_image(row["image_uri"], store)
    except (OSError, ValueError) as exc:
        item.note = f"image unreadable: {type(exc).__name__}: {exc}"
        return item
    ids = [int(a) for a in row["target_ids"] or []]
    record = index.record(row["source"], row["image_id"]) if ids else None
    known = {int(o["ann_id"]) for o in record["objects"]} if record is not None else set()
    if ids and set(ids) <= known:
        drawn, item.targets = build_targets(ids, record, base)
    elif ids:  # sources gone or changed: the union mask is still exact, just one colour
        mk = row["mask"]
        union = decode_rle(mk["counts"], mk["size"][0], mk["size"][1])
        colour = pick_colours(base, [union])[0]
        drawn = [Target(union, colour)]
        item.targets = [TargetInfo(f"union of {len(ids)} target(s) {ids}", colour)]
        item.note = index.error or "annotations not found: drawn from the union mask"
    else:
        drawn = []
    item.image = draw_targets(base, drawn)
    return item


def reject_item(row: Mapping[str, Any], index: SourceIndex, store: StorageSpec) -> Item:
    item = Item(KIND_REJECTS, row_key(row), row["task"], row["subtype"] or "", row["instruction"] or "",
                row["answer"] or "", row["source"], int(row["image_id"]), None, "JPEG",
                reason=row["reason"], detail=row["detail"])
    if int(row["pair_index"]) < 0:
        raw = (row.get("raw_response") or "").strip()
        item.instruction = item.instruction or "(whole response rejected)"
        item.answer = item.answer or (raw[:300] + ("..." if len(raw) > 300 else ""))
    record = index.record(row["source"], row["image_id"])
    if record is None:
        item.note = index.error or "image record not found in the sources"
        return item
    try:
        base, item.image_format = load_image(record["image_uri"], store)
    except (OSError, ValueError) as exc:
        item.note = f"image unreadable: {type(exc).__name__}: {exc}"
        return item
    to_ann = local_to_ann(build_object_table(record["objects"]))
    local = [int(x) for x in row["target_local_ids"] or []]
    known = [to_ann[x] for x in local if x in to_ann]
    unknown = [x for x in local if x not in to_ann]
    drawn, item.targets = build_targets(list(dict.fromkeys(known)), record, base)
    if unknown:
        item.note = f"unknown local ids: {unknown}"
    item.image = draw_targets(base, drawn)
    return item
