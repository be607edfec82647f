"""Images the verifier sees: the photo (listener), or the photo with the union mask painted over
it plus a zoomed crop around the mask (mask_judge, as SAM 3's mask verifiers see it).

Pure functions of image bytes + an RLE; the verify step maps them over its requests before the
vLLM verifier (pipelines/build/verify.py), export_prompts.py calls them with --inline-images.
"""

from __future__ import annotations

import io
from typing import Any, Mapping

import numpy as np
from PIL import Image
from pycocotools import mask as mask_utils

from pipelines.build.stages.images import fit_to_budget, to_rgb
from teachers.vllm_rows import image_data_url

MASK_RGB = (255, 0, 0)
MASK_ALPHA = 0.45


def _jpeg(img: Image.Image, max_pixels: int) -> bytes:
    w, h = fit_to_budget(img.width, img.height, max_pixels)
    if (w, h) != img.size:
        img = img.resize((w, h), Image.BICUBIC)
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=90)
    return buf.getvalue()


def open_rgb(data: bytes, width: int, height: int) -> Image.Image:
    """The source image in the annotation frame (the RLE's size)."""
    img = to_rgb(Image.open(io.BytesIO(data)))
    return img if img.size == (width, height) else img.resize((width, height), Image.BICUBIC)


def overlay_and_crop(
    img: Image.Image, mask: Mapping[str, Any] | None, margin: float
) -> tuple[Image.Image, Image.Image]:
    """(photo with the mask painted in translucent red, crop around the mask's box + margin).
    An empty mask gives the photo twice: the judge then decides whether "nothing" is right."""
    if not mask or not mask.get("counts"):
        return img, img
    rle = {"size": list(mask["size"]), "counts": mask["counts"]}
    m = mask_utils.decode(rle).astype(bool)
    if not m.any():
        return img, img
    arr = np.asarray(img).astype(np.float32)
    arr[m] = arr[m] * (1 - MASK_ALPHA) + np.array(MASK_RGB, np.float32) * MASK_ALPHA
    painted = Image.fromarray(arr.clip(0, 255).astype(np.uint8))
    x, y, w, h = (float(v) for v in mask_utils.toBbox(rle))
    mx, my = w * margin + 8, h * margin + 8
    box = (int(max(0, x - mx)), int(max(0, y - my)), int(min(img.width, x + w + mx)), int(min(img.height, y + h + my)))
    return painted, painted.crop(box)


def verifier_image_urls(data: bytes, item: Mapping[str, Any], kind: str, max_pixels: int, margin: float) -> list[str]:
    """data: URLs of the images one verification request carries (see module doc)."""
    img = open_rgb(data, int(item["width"]), int(item["height"]))
    if kind == "listener":
        return [image_data_url(_jpeg(img, max_pixels))]
    painted, crop = overlay_and_crop(img, item.get("mask"), margin)
    return [image_data_url(_jpeg(painted, max_pixels)), image_data_url(_jpeg(crop, max_pixels))]


def prepare_item(item: dict[str, Any], store: Any, kind: str, max_pixels: int, margin: float) -> dict[str, Any]:
    """Ray map over verification items: read the image, add its data: URLs (`image_urls`)."""
    from pipelines.storage.fs import read_bytes

    out = dict(item)
    out["image_urls"] = verifier_image_urls(read_bytes(item["image_uri"], store), item, kind, max_pixels, margin)
    return out
