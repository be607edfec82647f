"""Generator of a bad-input corpus: good images of the sample dataset plus one image per kind of
bad input a scraped, many-source corpus really contains.

    corpus = make_corpus(tmp_path)
    corpus.good_annotations    # COCO JSON: only the good images
    corpus.mixed_annotations   # the same good images + one image per bad kind (same categories)
    corpus.malformed_annotations, corpus.malformed_position   # a JSON syntax error at (line, column)

Every kind says what must happen to its image: an error row with a reason code (and the stage),
or `expect=None`: the image is odd but valid (CMYK, 16-bit, palette, ...) and must produce rows.
Derived images reuse the pixels and annotations of a sample scene, so annotations stay correct
unless the kind breaks them on purpose. Everything is deterministic.
"""

from __future__ import annotations

import copy
import io
import json
import struct
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
from PIL import Image
from pycocotools import mask as mask_utils

from pipelines.sources.sample_data import ensure_sample_dataset

SOURCE_NAME = "corpus"
TASKS = ["hallucination", "multi_object", "reasoning", "multi_granularity"]
N_SAMPLE_IMAGES = 6  # sample ids 1..6: all good; bad kinds derive from them
BASE_IDS = (2, 3, 4, 6)  # non-square scenes without a crowd annotation
FIRST_BAD_IMAGE_ID = 1001
FIRST_BAD_ANN_ID = 1_000_001
BOMB_SIDE = 100_000  # the header-only decompression bomb claims 100000 x 100000 pixels


@dataclass(frozen=True)
class Kind:
    """One kind of bad input and what the build must do with it."""

    name: str
    image_id: int
    file_name: str
    expect: str | None  # reason code in the errors shards; None: must produce rows, no error
    stage: str | None  # errors-shard stage: annotations | read | decode


@dataclass
class Corpus:
    root: Path
    images: Path
    good_annotations: Path
    mixed_annotations: Path
    malformed_annotations: Path
    malformed_position: tuple[int, int]  # (line, column) of the syntax error, 1-based
    outside_file: Path  # a readable image outside the images prefix (unsafe names point at it)
    good_ids: list[int]
    kinds: list[Kind] = field(default_factory=list)

    def kind(self, name: str) -> Kind:
        return next(k for k in self.kinds if k.name == name)

    def source(self, annotations: Path, name: str = SOURCE_NAME) -> dict[str, Any]:
        """A `data.sources[]` entry for the build config."""
        return {"name": name, "format": "coco", "annotations": str(annotations), "images": str(self.images),
                "tasks": list(TASKS)}


# ------------------------------------------------------------------------------ image bytes
def encode(img: Image.Image, fmt: str, **kw: Any) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt, **kw)
    return buf.getvalue()


def png_chunk(kind: bytes, payload: bytes) -> bytes:
    return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))


def png_bytes(width: int, height: int, bit_depth: int, colour_type: int, raw_rows: bytes | None) -> bytes:
    """A PNG written by hand: any size in the header, pixel rows optional (None: no IDAT at all)."""
    out = b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, bit_depth,
                                                                   colour_type, 0, 0, 0))
    if raw_rows is not None:
        out += png_chunk(b"IDAT", zlib.compress(raw_rows, 9))
    return out + png_chunk(b"IEND", b"")


def png16_rgb(rgb8: np.ndarray) -> bytes:
    """A 16-bit-per-channel RGB PNG (Pillow can't write one) with values v * 257 (exact 8 -> 16 bit)."""
    h, w, _ = rgb8.shape
    rows = (rgb8.astype(">u2") * 257).reshape(h, w * 3)
    raw = b"".join(b"\x00" + row.tobytes() for row in rows)
    return png_bytes(w, h, 16, 2, raw)


def header_only_bomb(side: int = BOMB_SIDE) -> bytes:
    """A ~60-byte PNG whose header claims side x side RGB pixels and that holds no pixel data: a
    decoder would either allocate side*side*3 bytes or fail as truncated; only a check of the
    header refuses it as too_many_pixels."""
    return png_bytes(side, side, 8, 2, None)


def real_bomb(side: int = 10_000) -> bytes:
    """A valid PNG of side x side black RGB pixels (300 MB decoded, ~300 KB on disk)."""
    row = b"\x00" + bytes(side * 3)
    comp = zlib.compressobj(9)
    parts = [comp.compress(row) for _ in range(side)]
    parts.append(comp.flush())
    out = b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", struct.pack(">IIBBBBB", side, side, 8, 2, 0, 0, 0))
    return out + png_chunk(b"IDAT", b"".join(parts)) + png_chunk(b"IEND", b"")


def with_exif_orientation(img: Image.Image, orientation: int) -> bytes:
    exif = Image.Exif()
    exif[0x0112] = orientation
    return encode(img.convert("RGB"), "JPEG", quality=92, exif=exif.tobytes())


def cmyk_jpeg(img: Image.Image) -> bytes:
    return encode(img.convert("CMYK"), "JPEG", quality=95)


def gray16_png(img: Image.Image) -> bytes:
    arr = np.asarray(img.convert("L")).astype(np.uint16) * 257
    return encode(Image.fromarray(arr), "PNG")  # mode I;16


def palette_png(img: Image.Image, transparent: bool = False) -> bytes:
    p = img.convert("RGB").quantize(colors=64, method=Image.Quantize.MEDIANCUT)
    if transparent:
        return encode(p, "PNG", transparency=0)
    return encode(p, "PNG")


def rgba_png(img: Image.Image) -> bytes:
    rgba = img.convert("RGBA")
    alpha = np.full((img.height, img.width), 255, dtype=np.uint8)
    alpha[:, : img.width // 3] = 96  # a translucent band on the left
    rgba.putalpha(Image.fromarray(alpha, "L"))
    return encode(rgba, "PNG")


def gray_alpha_png(img: Image.Image) -> bytes:
    la = img.convert("LA")
    return encode(la, "PNG")


# ------------------------------------------------------------------------------ the corpus
def make_corpus(root: Path) -> Corpus:
    root = Path(root)
    sample = ensure_sample_dataset(str(root / "sample"), num_images=N_SAMPLE_IMAGES, seed=0)
    coco = next(s for s in sample if s["format"] == "coco")
    images = Path(coco["images"])
    doc = json.loads(Path(coco["annotations"]).read_text())
    by_id = {img["id"]: img for img in doc["images"]}
    anns_of: dict[int, list[dict[str, Any]]] = {}
    for a in doc["annotations"]:
        anns_of.setdefault(a["image_id"], []).append(a)
    good_ids = sorted(by_id)
    (images / "bad").mkdir(exist_ok=True)

    def pixels(image_id: int) -> Image.Image:
        with Image.open(images / by_id[image_id]["file_name"]) as im:
            return im.convert("RGB")

    outside = images.parent / "outside.png"  # readable, valid, and outside the images prefix
    outside.write_bytes(encode(pixels(BASE_IDS[0]), "PNG"))

    mixed_images = [copy.deepcopy(by_id[i]) for i in good_ids]
    mixed_anns = [copy.deepcopy(a) for i in good_ids for a in anns_of.get(i, [])]
    kinds: list[Kind] = []
    next_ann = [FIRST_BAD_ANN_ID]

    def add(name: str, expect: str | None, stage: str | None, *, file_name: str | None = None,
            data: bytes | None = None, size: tuple[int, int] | None = None,
            edit: Callable[[list[dict[str, Any]], int, int], list[dict[str, Any]]] | None = None) -> None:
        base = BASE_IDS[len(kinds) % len(BASE_IDS)]
        image_id = FIRST_BAD_IMAGE_ID + len(kinds)
        entry = copy.deepcopy(by_id[base])
        w, h = size or (entry["width"], entry["height"])
        entry.update(id=image_id, width=w, height=h, file_name=file_name or f"bad/{name}.png")
        if data is not None:
            (images / entry["file_name"]).write_bytes(data)
        anns = []
        for a in anns_of[base]:
            a = copy.deepcopy(a)
            a.update(id=next_ann[0], image_id=image_id)
            next_ann[0] += 1
            anns.append(a)
        if edit is not None:
            anns = edit(anns, w, h)
        mixed_images.append(entry)
        mixed_anns.extend(anns)
        kinds.append(Kind(name, image_id, entry["file_name"], expect, stage))

    def base_img() -> Image.Image:
        return pixels(BASE_IDS[len(kinds) % len(BASE_IDS)])

    def base_size() -> tuple[int, int]:
        b = by_id[BASE_IDS[len(kinds) % len(BASE_IDS)]]
        return b["width"], b["height"]

    # --- files that cannot be used: an error row each, stage read / decode -------------------------
    add("missing_file", "missing_image", "read", file_name="bad/missing_file.jpg")
    add("zero_byte", "empty_image", "decode", file_name="bad/zero_byte.jpg", data=b"")
    jpg = encode(base_img(), "JPEG", quality=90)
    add("truncated_jpeg", "truncated_image", "decode", file_name="bad/truncated.jpg", data=jpg[: len(jpg) // 2])
    png = encode(base_img(), "PNG")
    add("truncated_png", "truncated_image", "decode", file_name="bad/truncated.png", data=png[: len(png) // 2])
    add("not_an_image", "not_an_image", "decode", file_name="bad/not_an_image.jpg",
        data=b"<!DOCTYPE html><html><body>403 Forbidden</body></html>\n")
    w, h = base_size()
    add("size_mismatch", "size_mismatch", "decode", file_name="bad/size_mismatch.png",
        data=encode(base_img().resize((w + 16, h)), "PNG"))
    add("decompression_bomb", "too_many_pixels", "decode", file_name="bad/bomb.png", data=header_only_bomb())
    add("real_decompression_bomb", "too_many_pixels", "decode", file_name="bad/real_bomb.png", data=real_bomb())
    # EXIF orientation 6 (display = stored rotated 90 deg clockwise) on pixels stored rotated the other
    # way: displayed, the image is exactly the scene, and the annotations are the scene's, i.e. made on
    # the displayed (rotated) image. Stored size is h x w: refused, never misaligned.
    add("exif_rotated_annotated_on_display", "exif_rotated", "decode", file_name="bad/exif_display.jpg",
        data=with_exif_orientation(base_img().transpose(Image.Transpose.ROTATE_90), 6))

    # --- odd but valid files: must produce rows -----------------------------------------------------
    add("exif_rotated_annotated_stored", None, None, file_name="bad/exif_stored.jpg",
        data=with_exif_orientation(base_img(), 6))
    add("cmyk_jpeg", None, None, file_name="bad/cmyk.jpg", data=cmyk_jpeg(base_img()))
    add("png16_gray", None, None, file_name="bad/gray16.png", data=gray16_png(base_img()))
    add("png16_rgb", None, None, file_name="bad/rgb16.png", data=png16_rgb(np.asarray(base_img())))
    add("grayscale_jpeg", None, None, file_name="bad/gray.jpg", data=encode(base_img().convert("L"), "JPEG"))
    add("palette_png", None, None, file_name="bad/palette.png", data=palette_png(base_img()))
    add("palette_transparent_png", None, None, file_name="bad/palette_t.png",
        data=palette_png(base_img(), transparent=True))
    add("rgba_png", None, None, file_name="bad/rgba.png", data=rgba_png(base_img()))
    add("gray_alpha_png", None, None, file_name="bad/la.png", data=gray_alpha_png(base_img()))
    add("bilevel_png", None, None, file_name="bad/bilevel.png", data=encode(base_img().convert("1"), "PNG"))

    # --- bad annotations: an error row each (stage annotations), the image is never read ------------
    add("unsafe_dotdot", "unsafe_path", "annotations", file_name="../outside.png")
    add("unsafe_absolute", "unsafe_path", "annotations", file_name=str(outside))

    def short_polygon(anns: list[dict[str, Any]], w: int, h: int) -> list[dict[str, Any]]:
        anns[0]["segmentation"] = [[10.0, 10.0, 30.0, 10.0]]  # 4 numbers
        return anns

    def rle_wrong_size(anns: list[dict[str, Any]], w: int, h: int) -> list[dict[str, Any]]:
        m = np.zeros((h + 8, w), dtype=np.uint8, order="F")
        m[10:20, 10:20] = 1
        rle = mask_utils.encode(m)
        anns[0]["segmentation"] = {"size": rle["size"], "counts": rle["counts"].decode()}
        anns[0]["bbox"] = [10.0, 10.0, 10.0, 10.0]
        return anns

    def bbox_outside(anns: list[dict[str, Any]], w: int, h: int) -> list[dict[str, Any]]:
        anns[0]["bbox"] = [w + 40.0, 5.0, 20.0, 20.0]
        return anns

    def unknown_category(anns: list[dict[str, Any]], w: int, h: int) -> list[dict[str, Any]]:
        anns[0]["category_id"] = 9999
        return anns

    def duplicate_ids(anns: list[dict[str, Any]], w: int, h: int) -> list[dict[str, Any]]:
        dup = copy.deepcopy(anns[0])  # same id twice within this image (never colliding with good ones)
        return [*anns, dup]

    add("short_polygon", "bad_polygon", "annotations", file_name="bad/short_polygon.png",
        data=encode(base_img(), "PNG"), edit=short_polygon)
    add("rle_size_mismatch", "rle_size_mismatch", "annotations", file_name="bad/rle.png",
        data=encode(base_img(), "PNG"), edit=rle_wrong_size)
    add("bbox_outside", "bbox_outside", "annotations", file_name="bad/bbox.png", data=encode(base_img(), "PNG"),
        edit=bbox_outside)
    add("unknown_category", "unknown_category", "annotations", file_name="bad/category.png",
        data=encode(base_img(), "PNG"), edit=unknown_category)
    add("duplicate_ann_ids", "duplicate_ann_id", "annotations", file_name="bad/dup.png",
        data=encode(base_img(), "PNG"), edit=duplicate_ids)
    add("no_annotations", "no_annotations", "annotations", file_name="bad/no_anns.png",
        data=encode(base_img(), "PNG"), edit=lambda anns, w, h: [])

    good_doc = {**doc, "images": [by_id[i] for i in good_ids], "annotations": [a for i in good_ids
                                                                                for a in anns_of.get(i, [])]}
    mixed_doc = {**doc, "images": mixed_images, "annotations": mixed_anns}
    ann_dir = root / "annotations"
    ann_dir.mkdir(parents=True, exist_ok=True)
    good_path, mixed_path = ann_dir / "good.json", ann_dir / "mixed.json"
    good_path.write_text(json.dumps(good_doc))
    mixed_path.write_text(json.dumps(mixed_doc))
    malformed_path, position = ann_dir / "malformed.json", _write_malformed(ann_dir / "malformed.json", mixed_doc)
    return Corpus(root=root, images=images, good_annotations=good_path, mixed_annotations=mixed_path,
                  malformed_annotations=malformed_path, malformed_position=position, outside_file=outside,
                  good_ids=good_ids, kinds=kinds)


def _write_malformed(path: Path, doc: dict[str, Any]) -> tuple[int, int]:
    """The mixed file, pretty-printed, with a doubled comma after the third image's width (a typical
    hand edit). Returns the (line, column) of the stray comma."""
    lines = json.dumps(doc, indent=1).splitlines()
    hits = [i for i, line in enumerate(lines) if line.strip().startswith('"width":')]
    i = hits[2]
    col = len(lines[i]) + 1  # the stray comma goes right after the existing one
    lines[i] = lines[i] + ","
    path.write_text("\n".join(lines) + "\n")
    return i + 1, col
