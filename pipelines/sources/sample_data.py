"""The embedded sample dataset: drawn scenes with COCO-, PACO-LVIS- and LVIS-style annotations.

Why drawn scenes: the default run and the tests need real images whose annotations match the pixels,
made offline in seconds. Each object is a few coloured polygons ("pieces") over a plain background,
and it is painted through the very mask pycocotools rasterises from those polygons, so a decoded
annotation equals the painted pixels exactly (PNG) or up to JPEG noise at the edges. Objects never
overlap each other; parts are pieces of their object, so a part mask always lies inside its parent.
Everything comes from seeded `random.Random` streams: the same seed gives the same bytes.
"""

from __future__ import annotations

import io
import json
import os
import random
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw
from pycocotools import mask as mask_utils

from pipelines.sources.sample_shapes import (  # noqa: F401 - the vocabulary stays importable from here
    BACKGROUND_COLOURS,
    CATEGORIES,
    EXTRA_COCO,
    EXTRA_LVIS,
    EXTRA_PACO,
    MATERIALS,
    OBJECT_COLOURS,
    PACO_ATTRIBUTE_TYPES,
    PARTS,
    SIZES,
    THEMES,
    _clip_x,
    _pieces,
)

SAMPLE_VERSION = 2  # 2: coco_url names the images folder (the LVIS file-name rule keeps it)
MARKER_NAME = ".groundv_sample.json"

def ensure_sample_dataset(root: str, num_images: int = 24, seed: int = 0) -> list[dict[str, str]]:
    """Generate the sample dataset under `root` unless its marker says it exists; return its sources.

    Sources are `{"name", "format", "annotations", "images"}`: coco_sample, paco_sample, lvis_sample,
    all over the same image folder. The marker records the parameters, so other ones regenerate.
    """
    base = Path(root)
    ann_dir, img_dir = base / "annotations", base / "images"
    sources = [
        {"name": f"{fmt}_sample", "format": fmt, "annotations": str(ann_dir / f"{fmt}_sample.json"),
         "images": str(img_dir)}
        for fmt in ("coco", "paco", "lvis")
    ]
    marker = base / MARKER_NAME
    wanted = {"version": SAMPLE_VERSION, "num_images": num_images, "seed": seed}
    if marker.exists() and json.loads(marker.read_text()) == wanted:
        return sources
    img_dir.mkdir(parents=True, exist_ok=True)
    ann_dir.mkdir(parents=True, exist_ok=True)
    scenes = [_scene(i, seed) for i in range(num_images)]
    for scene in scenes:
        _atomic_write(img_dir / scene["file_name"], scene.pop("image_bytes"))
    for src, doc in zip(sources, (_coco_json(scenes), _paco_json(scenes, seed), _lvis_json(scenes, seed)), strict=True):
        _atomic_write(Path(src["annotations"]), json.dumps(doc, separators=(",", ":")).encode())
    _atomic_write(marker, json.dumps(wanted).encode())  # last: its presence means "complete"
    return sources


def _atomic_write(path: Path, data: bytes) -> None:
    # Readers (or a concurrent generation) never see a half-written file.
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


# ---------------------------------------------------------------- scenes -------------------------------
def _scene(index: int, seed: int) -> dict[str, Any]:
    """One image: drawn pixels plus its objects with polygons and painted masks."""
    rng = random.Random(f"groundv-sample:{seed}:{index}")  # per image: image i never depends on N
    width, height = SIZES[index % len(SIZES)]
    floor, plan = THEMES[index % len(THEMES)]
    horizon = int(height * 0.38)
    boxes: list[tuple[float, float, float, float]] = []
    objects: list[dict[str, Any]] = []

    def place(w: float, h: float) -> tuple[float, float] | None:
        for _ in range(80):
            x, bottom = rng.uniform(2, width - w - 2), rng.uniform(horizon + 4, height - 2)
            y = bottom - h
            if x >= 2 and y >= 2 and all(x > bx + bw + 4 or bx > x + w + 4 or y > by + bh + 4 or by > y + h + 4
                                         for bx, by, bw, bh in boxes):
                boxes.append((x, y, w, h))
                return x, y
        return None

    if index == 0:  # the one crowd region of the file: a row of small people by the horizon
        fh = 0.14 * height
        n = rng.randint(7, 9)
        spot = place(0.35 * fh * (n - 1) + 0.45 * fh, fh)
        if spot is not None:
            pieces = [p for k in range(n) for p in _pieces("person", spot[0] + 0.35 * fh * k, spot[1],
                                                           0.45 * fh, fh, rng)[0]]
            objects.append({"cat": "person", "pieces": pieces, "colour": None, "crowd": True})
    for cat, lo, hi, (hmin, hmax) in plan:
        for _ in range(rng.randint(lo, hi)):
            h = rng.uniform(hmin, hmax) * height
            w = h * CATEGORIES[cat][5]
            spot = place(w, h)
            if spot is not None:
                pieces, colour = _pieces(cat, spot[0], spot[1], w, h, rng)
                objects.append({"cat": cat, "pieces": pieces, "colour": colour, "crowd": False})

    image = Image.new("RGB", (width, height), BACKGROUND_COLOURS["wall"])
    draw = ImageDraw.Draw(image)
    draw.rectangle([0, horizon, width, height], fill=BACKGROUND_COLOURS[floor])
    if index % 6 == 1 and objects:
        # A post in front of the widest object splits it in two: a multi-polygon annotation.
        k = max(range(len(objects)), key=lambda j: boxes[j][2])  # boxes[j] is objects[j]'s box
        bx, _, bw, _ = boxes[k]
        cx, half = bx + bw / 2, 3.0
        draw.rectangle([cx - half, 0, cx + half, height], fill=BACKGROUND_COLOURS["post"])
        objects[k]["pieces"] = [(part, clipped, col) for part, poly, col in objects[k]["pieces"]
                                for clipped in (_clip_x(poly, cx - half, True), _clip_x(poly, cx + half, False))
                                if clipped]
    for obj in objects:
        obj["pieces"] = [(part, [round(v, 1) for v in poly], col) for part, poly, col in obj["pieces"]]
    canvas = np.array(image)
    owner = np.full((height, width), -1, dtype=np.int32)  # index into `owners` of the painted piece
    owners: list[tuple[int, str | None]] = []
    for k, obj in enumerate(objects):
        for part, poly, colour in obj["pieces"]:
            m = mask_utils.decode(mask_utils.frPyObjects([poly], height, width)[0]).astype(bool)
            canvas[m] = OBJECT_COLOURS[colour]
            owner[m] = len(owners)
            owners.append((k, part))
    obj_of = np.array([k for k, _ in owners] + [-1], dtype=np.int32)[owner]  # -1 indexes the sentinel
    for k, obj in enumerate(objects):
        obj["mask"] = obj_of == k
        merged = mask_utils.merge(mask_utils.frPyObjects([p for _, p, _ in obj["pieces"]], height, width))
        if not np.array_equal(mask_utils.decode(merged).astype(bool), obj["mask"]):
            raise RuntimeError(f"sample image {index}: object {k} overlaps another one")  # a layout bug
        obj["parts"] = {name: np.isin(owner, [j for j, (o, p) in enumerate(owners) if o == k and p == name])
                        for name in PARTS.get(obj["cat"], ())}
    ext = "png" if index % 2 == 0 else "jpg"
    buf = io.BytesIO()
    Image.fromarray(canvas).save(buf, format="PNG" if ext == "png" else "JPEG", quality=90)
    return {"id": index + 1, "file_name": f"{index + 1:012d}.{ext}", "width": width, "height": height,
            "objects": objects, "image_bytes": buf.getvalue()}


# ---------------------------------------------------------------- annotation files ---------------------
def _rle_fields(mask: np.ndarray) -> dict[str, Any]:
    """PACO-style segmentation (compressed RLE, counts as str), bbox and area of a painted mask."""
    rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    return {"segmentation": {"size": rle["size"], "counts": rle["counts"].decode()},
            "bbox": mask_utils.toBbox(rle).tolist(), "area": float(mask_utils.area(rle))}


def _uncompressed(mask: np.ndarray) -> list[int]:
    # COCO crowd format: run lengths over the column-major pixels, starting with a run of zeros.
    flat = mask.flatten(order="F").astype(np.int8)
    bounds = np.concatenate(([0], np.flatnonzero(np.diff(flat)) + 1, [flat.size]))
    runs = np.diff(bounds).tolist()
    return ([0] + runs) if flat[0] else runs


def _poly_bbox(polys: list[list[float]]) -> list[float]:
    xs = [v for p in polys for v in p[::2]]
    ys = [v for p in polys for v in p[1::2]]
    return [round(min(xs), 2), round(min(ys), 2), round(max(xs) - min(xs), 2), round(max(ys) - min(ys), 2)]


def _image_entry(s: dict[str, Any]) -> dict[str, Any]:
    return {"id": s["id"], "file_name": s["file_name"], "width": s["width"], "height": s["height"], "license": 1,
            # The COCO layout: <root>/<folder>/<file>; the sample's folder is `images`, its prefix.
            "coco_url": f"http://images.cocodataset.org/images/{s['file_name']}",
            "date_captured": "2017-01-01 00:00:00"}


def _coco_json(scenes: list[dict[str, Any]]) -> dict[str, Any]:
    cats = sorted([(v[0], k, v[1]) for k, v in CATEGORIES.items()] + EXTRA_COCO)
    anns: list[dict[str, Any]] = []
    for s in scenes:
        for obj in s["objects"]:
            polys = [p for _, p, _ in obj["pieces"]]
            ann = {"id": len(anns) + 1, "image_id": s["id"], "category_id": CATEGORIES[obj["cat"]][0],
                   "segmentation": polys, "area": float(obj["mask"].sum()), "bbox": _poly_bbox(polys),
                   "iscrowd": 0}
            if obj["crowd"]:
                ann.update(segmentation={"counts": _uncompressed(obj["mask"]), "size": [s["height"], s["width"]]},
                           bbox=_rle_fields(obj["mask"])["bbox"], iscrowd=1)
            anns.append(ann)
    return {"info": {"description": "Ground-V sample (drawn scenes), COCO instances format", "version": "1"},
            "licenses": [{"id": 1, "name": "CC0", "url": "https://creativecommons.org/publicdomain/zero/1.0/"}],
            "images": [_image_entry(s) for s in scenes], "annotations": anns,
            "categories": [{"id": i, "name": n, "supercategory": sup} for i, n, sup in cats]}


def _lvis_ids() -> dict[str, int]:
    names = sorted({v[2] for v in CATEGORIES.values()} | set(EXTRA_LVIS))
    return {n: i + 1 for i, n in enumerate(names)}  # LVIS ids follow the alphabetical name order


def _negatives(rng: random.Random, present: set[int], candidates: list[int]) -> tuple[list[int], list[int]]:
    absent = [c for c in candidates if c not in present]
    neg = sorted(rng.sample(absent, min(len(absent), rng.randint(2, 3))))
    not_exhaustive = sorted(rng.sample(sorted(present), 1)) if present and rng.random() < 0.3 else []
    return neg, not_exhaustive


def _lvis_json(scenes: list[dict[str, Any]], seed: int) -> dict[str, Any]:
    ids = _lvis_ids()
    synonyms = {**EXTRA_LVIS, **{v[2]: v[3] for v in CATEGORIES.values()}}
    lvis_of = {k: ids[v[2]] for k, v in CATEGORIES.items()}
    images, anns = [], []
    for s in scenes:
        rng = random.Random(f"groundv-sample-lvis:{seed}:{s['id']}")
        present = {lvis_of[o["cat"]] for o in s["objects"] if not o["crowd"]}
        neg, not_exhaustive = _negatives(rng, present, sorted(ids.values()))
        if any(o["crowd"] for o in s["objects"]):  # LVIS skips crowds: persons there are not exhaustive
            not_exhaustive = sorted(set(not_exhaustive) | {lvis_of["person"]})
        entry = {k: v for k, v in _image_entry(s).items() if k != "file_name"}  # LVIS v1: coco_url only
        images.append({**entry, "neg_category_ids": neg, "not_exhaustive_category_ids": not_exhaustive})
        for obj in s["objects"]:
            if obj["crowd"]:
                continue
            polys = [p for _, p, _ in obj["pieces"]]
            anns.append({"id": len(anns) + 1, "image_id": s["id"], "category_id": lvis_of[obj["cat"]],
                         "segmentation": polys, "area": float(obj["mask"].sum()), "bbox": _poly_bbox(polys)})
    instances = Counter(a["category_id"] for a in anns)
    images_with = Counter(c for c, _ in {(a["category_id"], a["image_id"]) for a in anns})
    cats = [{"id": i, "name": n, "synonyms": [n, *synonyms[n]], "def": f"sample category {n}",
             "synset": f"{n.split('_(')[0]}.n.01", "frequency": "f" if instances[i] >= 10 else "c",
             "instance_count": instances[i], "image_count": images_with[i]} for n, i in ids.items()]
    return {"info": {"description": "Ground-V sample (drawn scenes), LVIS v1 format"}, "images": images,
            "annotations": anns, "categories": cats, "licenses": [{"id": 1, "name": "CC0"}]}


def _paco_json(scenes: list[dict[str, Any]], seed: int) -> dict[str, Any]:
    ids = _lvis_ids()
    paco_cats = {k: v[2] for k, v in CATEGORIES.items() if v[4]}
    obj_ids = sorted(ids[n] for n in [*paco_cats.values(), *EXTRA_PACO])
    part_ids = {f"{paco_cats[c]}:{p}": 2000 + i
                for i, (c, p) in enumerate((c, p) for c in sorted(PARTS) for p in PARTS[c])}
    attrs = [n for names in PACO_ATTRIBUTE_TYPES.values() for n in names]
    attr_id = {n: i for i, n in enumerate(attrs)}
    images, anns = [], []

    def attributes(rng: random.Random, colour: str, material: str | None) -> dict[str, Any]:
        if rng.random() < 0.3:  # PACO labels attributes on a subset of boxes only
            return {"attribute_ids": [], "dom_color_ids": [], "unknown_color": 1, "unknown_pattern_marking": 1,
                    "unknown_material": 1, "unknown_transparency": 1}
        glass = material == "glass"
        extra = [attr_id[material]] if material else []
        return {"attribute_ids": [attr_id[colour], attr_id["plain"], *extra,
                                  attr_id["translucent" if glass else "opaque"]],
                "dom_color_ids": [attr_id[colour]], "unknown_color": 0, "unknown_pattern_marking": 0,
                "unknown_material": int(not material), "unknown_transparency": 0}

    for s in scenes:
        rng = random.Random(f"groundv-sample-paco:{seed}:{s['id']}")
        objs = [o for o in s["objects"] if o["cat"] in paco_cats and not o["crowd"]]
        if not objs or s["id"] % 4 == 0:  # PACO-LVIS covers a subset of the images
            continue
        for obj in objs:
            oid = len(anns) + 1  # PACO marks an object by obj_ann_id == its own id
            anns.append({"id": oid, "image_id": s["id"], "category_id": ids[paco_cats[obj["cat"]]],
                         **_rle_fields(obj["mask"]), "obj_ann_id": oid,
                         **attributes(rng, obj["colour"], MATERIALS.get(obj["cat"]))})
            for part, pmask in obj["parts"].items():
                if not pmask.any():
                    continue
                colour = next(col for p, _, col in obj["pieces"] if p == part)
                material = "glass" if part == "window" else None if part == "wheel" else MATERIALS.get(obj["cat"])
                anns.append({"id": len(anns) + 1, "image_id": s["id"],
                             "category_id": part_ids[f"{paco_cats[obj['cat']]}:{part}"], **_rle_fields(pmask),
                             "obj_ann_id": oid, **attributes(rng, colour, material)})
        present = {ids[paco_cats[o["cat"]]] for o in objs}
        neg, not_exhaustive = _negatives(rng, present, obj_ids)
        absent_parts = [i for n, i in part_ids.items() if ids[n.split(":")[0]] not in present]
        if absent_parts and rng.random() < 0.5:  # PACO negatives include object-part categories too
            neg = sorted(neg + [rng.choice(absent_parts)])
        images.append({**_image_entry(s), "neg_category_ids": neg, "not_exhaustive_category_ids": not_exhaustive,
                       "neg_category_ids_attrs": [], "not_exhaustive_category_ids_attrs": []})
    name_of = {i: n for n, i in ids.items()}
    part_names = sorted({p for ps in PARTS.values() for p in ps})
    return {
        "info": {"description": "Ground-V sample (drawn scenes), PACO-LVIS format"},
        "images": images, "annotations": anns,
        "categories": [{"supercategory": "OBJECT", "id": i, "name": name_of[i], "frequency": "f"} for i in obj_ids]
        + [{"supercategory": "PART", "id": i, "name": n} for n, i in part_ids.items()],
        "part_categories": [{"supercategory": "PART", "id": i, "name": n} for i, n in enumerate(part_names)],
        "attributes": [{"supercategory": "ATTR", "id": i, "name": n} for i, n in enumerate(attrs)],
        "attr_type_to_attr_idxs": {t: [attr_id[n] for n in ns] for t, ns in PACO_ATTRIBUTE_TYPES.items()},
    }
