"""Stream stages over image rows: read bytes once per image, decode + validate + resize, fan out
into one unit row per (image, task).

Every failure becomes a unit error with a stable reason code (docs/reliability.md); a bad image
never crashes the job and never loses its units.
"""

from __future__ import annotations

import io
import warnings
from typing import Any

import numpy as np
import pyarrow as pa
from PIL import Image, ImageFile, UnidentifiedImageError

from pipelines.core.geometry import fit_to_budget  # noqa: F401  (re-exported: its home is core)
from pipelines.core.keys import unit_row
from pipelines.core.resources import Resources
from pipelines.storage import fs as storage
from pipelines.storage.fs import StorageError, StorageSpec
from schemas.columns import UNIT_SCHEMA

# We enforce our own pixel limit (stream.max_image_pixels) before decoding, with a reason code.
Image.MAX_IMAGE_PIXELS = None
ImageFile.LOAD_TRUNCATED_IMAGES = False
EXIF_ORIENTATION = 0x0112

# Reason codes of this module (unit_error; stage `read` or `decode` in the errors shards).
READ_REASON_CODES: tuple[str, ...] = ("missing_image", "read_failed")
DECODE_REASON_CODES: tuple[str, ...] = (
    "empty_image", "not_an_image", "truncated_image", "too_many_pixels", "size_mismatch", "exif_rotated",
    "unsupported_mode",
)

def read_image_bytes(uri: str, store: StorageSpec) -> tuple[bytes | None, str | None, str | None]:
    """(bytes, error_reason, detail) for one image uri.

    A problem of this one object (missing, permission denied, unreadable) becomes a unit error; a
    store that keeps failing after every retry (`StorageError`) is an outage, not a bad image: it is
    raised and stops the build (nothing is committed; the next build resumes from the receipts)
    instead of turning every image of the run into an error row.
    """
    try:
        return storage.read_bytes(uri, store), None, None
    except FileNotFoundError:
        return None, "missing_image", f"no such file: {uri}"
    except PermissionError as exc:
        return None, "read_failed", f"permission denied: {uri} ({type(exc).__name__})"
    except StorageError:
        raise
    except IsADirectoryError:
        return None, "read_failed", f"is a directory: {uri}"
    except OSError as exc:
        return None, "read_failed", storage.describe(exc)[:500]


class ReadImages:
    """Ray Data stage: adds `image_bytes` (or a read error) to each image row."""

    # I/O bound: half a core each; a pool of two keeps a node's network busy without stealing the
    # cores decode and checks need (more readers measured no faster on the sample bench).
    resources = Resources(num_cpus=0.5, max_actors=2)

    def __init__(self, store: StorageSpec) -> None:
        self.store = store

    def __call__(self, batch: pa.Table) -> pa.Table:
        data, errs, details = [], [], []
        uris, img_errs = batch.column("image_uri").to_pylist(), batch.column("image_error").to_pylist()
        seen: dict[str, tuple[bytes | None, str | None, str | None]] = {}  # the records of one image
        for uri, img_err in zip(uris, img_errs, strict=True):
            if img_err:  # annotation problems: don't even read the image
                data.append(None)
                errs.append(None)
                details.append(None)
                continue
            if uri not in seen:  # COCO, LVIS, PACO records of one file: read it once
                seen[uri] = read_image_bytes(uri, self.store)
            b, e, d = seen[uri]
            data.append(b)
            errs.append(e)
            details.append(d)
        out = batch.append_column("image_bytes", pa.array(data, pa.binary()))
        out = out.append_column("read_error", pa.array(errs, pa.string()))
        return out.append_column("read_error_detail", pa.array(details, pa.string()))


def to_rgb(img: Image.Image) -> Image.Image:
    """Convert any PIL mode to 8-bit RGB without changing geometry.

    * 16-bit grayscale (``I;16*``) is scaled to 8 bits (v * 255 // 65535), not clipped; 32-bit
      ``I`` is scaled the same way when it holds values above 255, and ``F`` is clipped to 0..255.
      16-bit RGB PNGs are already reduced to 8 bits by Pillow when they are opened.
    * Transparency (``RGBA``, ``LA``, ``PA``, palette with a transparent index) is composited on
      white, so a transparent background does not turn black.
    * ``CMYK`` (also Adobe's inverted CMYK JPEGs, which Pillow un-inverts on load) uses Pillow's
      conversion without colour management (ICC profiles are ignored).
    * ``1``, ``L``, ``P``, ``YCbCr``, ``LAB``, ``HSV``: Pillow's conversion.
    """
    if img.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):
        arr = np.clip(np.asarray(img).astype(np.int64), 0, None)
        top = 65535 if img.mode.startswith("I;16") or arr.max(initial=0) > 255 else 255
        arr8 = (arr * 255 // top).astype(np.uint8)
        return Image.fromarray(arr8, "L").convert("RGB")
    if img.mode == "F":
        arr8 = np.clip(np.nan_to_num(np.asarray(img, dtype=np.float64)), 0, 255).astype(np.uint8)
        return Image.fromarray(arr8, "L").convert("RGB")
    if img.mode == "P" and "transparency" in img.info:
        img = img.convert("RGBA")
    if img.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = img.convert("RGBA")
        bg = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(bg, rgba).convert("RGB")
    if img.mode != "RGB":
        return img.convert("RGB")
    return img


def exif_orientation(img: Image.Image) -> int:
    """The EXIF orientation tag (1..8; 1 when absent or unreadable). Never applied, see decode_image."""
    try:
        value = img.getexif().get(EXIF_ORIENTATION, 1)
    except Exception:  # noqa: BLE001 - a broken EXIF block is not a broken image
        return 1
    return value if isinstance(value, int) and 1 <= value <= 8 else 1


# Formats the engine decodes as they are (vLLM opens them with PIL); anything else is re-encoded.
PASS_THROUGH_FORMATS = frozenset({"JPEG", "PNG", "WEBP"})

_MAGIC: tuple[tuple[bytes, str], ...] = (
    (b"\x89PNG\r\n\x1a\n", "PNG"), (b"\xff\xd8\xff", "JPEG"), (b"GIF87a", "GIF"), (b"GIF89a", "GIF"),
    (b"BM", "BMP"), (b"II*\x00", "TIFF"), (b"MM\x00*", "TIFF"),
)


def _magic_format(data: bytes) -> str | None:
    """The image format whose signature `data` starts with (WebP: RIFF....WEBP), else None."""
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "WEBP"
    return next((name for magic, name in _MAGIC if data.startswith(magic)), None)


def decode_image(
    data: bytes, width: int, height: int, max_image_pixels: int, needs_image: bool, max_pixels: int,
    factor: int = 1, min_pixels: int = 0,
) -> tuple[bytes | None, int, int, str | None, str | None]:
    """Validate + decode one image. Returns (teacher_jpeg, tw, th, error_reason, detail).

    Order: empty -> format (header) -> pixel limit (header only, nothing decoded yet) -> full decode
    -> size against the annotations -> RGB + ONE resize to the teacher's grid (fit_to_budget) ->
    ONE encode. An RGB JPEG/PNG/WebP already at that size, without an EXIF rotation, is passed on
    as its own bytes: no re-encode at all.

    EXIF orientation is NOT applied: COCO/LVIS/PACO masks are in the stored pixel frame, so
    rotating the pixels would misalign every mask. The teacher gets the stored pixels (re-encoded
    without EXIF), the same frame as the masks. An image whose EXIF orientation swaps width and
    height and whose annotations have the swapped (displayed) size was annotated on the rotated
    image: it is refused as `exif_rotated`, never silently misaligned (docs/reliability.md).
    """
    if not data:
        return None, 0, 0, "empty_image", "zero-byte file"
    try:
        img = Image.open(io.BytesIO(data))
        w, h = img.size
    except UnidentifiedImageError:
        fmt = _magic_format(data)
        if fmt:  # the signature of an image format, but the header is cut or corrupt
            return None, 0, 0, "truncated_image", f"{fmt} signature, but the header is cut or corrupt ({len(data)} B)"
        return None, 0, 0, "not_an_image", f"{len(data)} bytes in no known image format (starts {data[:8]!r})"
    except Exception as exc:  # noqa: BLE001 - a header Pillow can't even parse is a broken image
        return None, 0, 0, "truncated_image", f"header unreadable: {type(exc).__name__}: {exc}"[:300]
    if w * h > max_image_pixels:  # header only: refused before any pixel is decoded
        return None, 0, 0, "too_many_pixels", (
            f"{img.format} header says {w}x{h} = {w * h} pixels > stream.max_image_pixels={max_image_pixels}; "
            "not decoded")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            img.load()
    except Exception as exc:  # noqa: BLE001 - truncated, corrupt data, bad CRC, ...: never a crash
        return None, 0, 0, "truncated_image", f"{img.format} decode failed: {type(exc).__name__}: {exc}"[:300]
    if (w, h) != (width, height):
        orientation = exif_orientation(img)
        if orientation in (5, 6, 7, 8) and (h, w) == (width, height):
            return None, 0, 0, "exif_rotated", (
                f"stored pixels are {w}x{h}, annotations say {width}x{height}: EXIF orientation {orientation} "
                f"rotates the image to {h}x{w} for display, so it was annotated rotated; masks must be in "
                "stored pixel order (re-encode the image with the rotation applied, or the annotations)")
        return None, 0, 0, "size_mismatch", f"image is {w}x{h}, annotations say {width}x{height}"
    if not needs_image:
        return None, w, h, None, None
    try:
        rgb = to_rgb(img)
    except Exception as exc:  # noqa: BLE001
        return None, 0, 0, "unsupported_mode", f"cannot convert mode {img.mode} to RGB: {exc}"[:300]
    tw, th = fit_to_budget(w, h, max_pixels, factor, min_pixels)
    if (tw, th) == (w, h) and img.mode == "RGB" and img.format in PASS_THROUGH_FORMATS \
            and exif_orientation(img) == 1:
        return data, tw, th, None, None  # already what the teacher needs: no second encode
    if (tw, th) != (w, h):
        rgb = rgb.resize((tw, th), Image.Resampling.BICUBIC)
    buf = io.BytesIO()
    rgb.save(buf, format="JPEG", quality=90)
    return buf.getvalue(), tw, th, None, None


class DecodeAndFanOut:
    """Ray Data stage: image rows (+ bytes) -> UNIT_SCHEMA rows, one per planned unit."""

    # CPU bound (JPEG decode + resize): one core each, pool grows to the cluster's ceiling.
    resources = Resources(num_cpus=1)

    def __init__(self, needs_image: bool, max_pixels: int, max_image_pixels: int, factor: int = 1,
                 min_pixels: int = 0) -> None:
        self.needs_image = needs_image
        self.max_pixels = max_pixels
        self.max_image_pixels = max_image_pixels
        self.factor = factor  # the teacher's patch grid (TeacherConfig.grid_factor)
        self.min_pixels = min_pixels

    @classmethod
    def for_teacher(cls, needs_image: bool, teacher_cfg: Any, max_image_pixels: int) -> DecodeAndFanOut:
        """The stage for the `teacher` config section: its pixel budget and patch grid."""
        from pipelines.config import grid_factor

        return cls(needs_image, teacher_cfg.max_pixels, max_image_pixels, grid_factor(teacher_cfg),
                   teacher_cfg.min_pixels)

    def __call__(self, batch: pa.Table) -> pa.Table:
        rows: list[dict[str, Any]] = []
        # The records of one image (COCO, LVIS, PACO: adjacent in a block, see plan.split_for_stream)
        # share one decode + resize + encode; the annotated size is part of the key (size checks).
        decoded: dict[tuple[str, int, int], tuple[Any, ...]] = {}
        for image in batch.to_pylist():
            err, detail = image["image_error"], image["image_error_detail"]
            timg, tw, th = None, None, None
            if err:
                err = f"annotation:{err}"
            elif image["read_error"]:
                err, detail = image["read_error"], image["read_error_detail"]
            else:
                key = (image["image_uri"], image["width"], image["height"])
                if key not in decoded:
                    decoded[key] = decode_image(
                        image["image_bytes"], image["width"], image["height"], self.max_image_pixels,
                        self.needs_image, self.max_pixels, self.factor, self.min_pixels,
                    )
                timg, tw, th, err, detail = decoded[key]
            rows.extend(fan_out(image, timg, tw, th, err, detail))
        return pa.Table.from_pylist(rows, schema=UNIT_SCHEMA)


def fan_out(
    image: dict[str, Any], teacher_image: bytes | None, tw: int | None, th: int | None,
    error: str | None, detail: str | None,
) -> list[dict[str, Any]]:
    """One unit row per planned unit of the image, sharing the decoded image."""
    return [unit_row(image, u, teacher_image, tw, th, error, detail) for u in image["units"]]
