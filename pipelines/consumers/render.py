"""Drawing for the preview: target masks over an image, and a PNG contact sheet of captioned cards.

Pure PIL + numpy, no I/O. Masks are boolean arrays of the image size (decoded COCO RLEs).

* Each target gets its own colour: a translucent fill and a solid outline on the mask's inner
  boundary, so every drawn pixel lies inside the mask it belongs to.
* A part target also shows its parent object: a light tint and a dashed outline in the part's
  colour, so the part is visibly inside its parent.
* Everything outside the targets (and parents) is faded to a light grey, so the answer stands out
  even on flat, saturated scenes. An image without targets (hallucination) is left as it is.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageFont

RGB = tuple[int, int, int]

# Distinct, saturated colours (Sasha Trubetskoy's list, ordered for contrast); target i gets PALETTE[i % n].
PALETTE: tuple[RGB, ...] = (
    (230, 25, 75), (0, 130, 200), (255, 225, 25), (60, 180, 75), (245, 130, 48), (145, 30, 180),
    (70, 240, 240), (240, 50, 230), (210, 245, 60), (0, 128, 128), (170, 110, 40), (128, 0, 0),
)
TARGET_ALPHA = 0.5  # fill opacity of a target
PARENT_ALPHA = 0.18  # fill opacity of a part's parent
FADE_KEEP = 0.55  # outside the targets: grey = FADE_KEEP * luma + (1 - FADE_KEEP) * 255
# Badge colours per task (captions of the HTML page and the contact sheet).
TASK_COLOURS: dict[str, RGB] = {
    "hallucination": (120, 120, 120), "multi_object": (0, 110, 190), "reasoning": (150, 60, 170),
    "multi_granularity": (20, 140, 90), "part": (210, 100, 20),
}


def pick_colours(image: Image.Image, masks: Sequence[np.ndarray],
                 around: Sequence[np.ndarray | None] | None = None, min_distance: float = 120.0) -> list[RGB]:
    """A distinct palette colour per mask, far from the mean colour under the mask (and under
    `around[i]`, e.g. a part's parent, when given).

    Walks the palette in order and takes the first unused colour whose distance (RGB, Euclidean)
    to those means is at least `min_distance` (a red overlay on a red object would be invisible);
    falls back to the first unused colour. Deterministic for the same image and masks.
    """
    arr = np.asarray(image.convert("RGB"), dtype=np.float32)
    used: list[RGB] = []
    for i, m in enumerate(masks):
        regions = [m] + ([around[i]] if around is not None and around[i] is not None else [])
        means = [arr[r].mean(axis=0) for r in regions if r is not None and r.any()]
        free = [c for c in PALETTE if c not in used] or list(PALETTE)
        far = [c for c in free
               if all(float(np.linalg.norm(np.asarray(c, np.float32) - mu)) >= min_distance for mu in means)]
        used.append((far or free)[0])
    return used


@dataclass(frozen=True)
class Target:
    """One drawn target: its mask, colour, and (for a part) its parent's mask."""

    mask: np.ndarray  # bool, (height, width)
    colour: RGB
    parent_mask: np.ndarray | None = None


def inner_boundary(mask: np.ndarray, thickness: int = 1) -> np.ndarray:
    """Pixels of `mask` within `thickness` pixels (4-neighbourhood) of its outside."""
    inner = mask.copy()
    for _ in range(max(1, thickness)):
        shrunk = inner.copy()
        shrunk[1:, :] &= inner[:-1, :]
        shrunk[:-1, :] &= inner[1:, :]
        shrunk[:, 1:] &= inner[:, :-1]
        shrunk[:, :-1] &= inner[:, 1:]
        shrunk[0, :] = shrunk[-1, :] = False
        shrunk[:, 0] = shrunk[:, -1] = False
        inner = shrunk
    return mask & ~inner


def outline_thickness(width: int, height: int) -> int:
    """Outline width that stays visible on thumbnails: ~1 px per 200 px of the longer side."""
    return max(1, round(max(width, height) / 200))


def _dashes(shape: tuple[int, int], period: int = 8) -> np.ndarray:
    ys, xs = np.indices(shape)
    return ((xs + ys) // (period // 2)) % 2 == 0


def draw_targets(image: Image.Image, targets: Sequence[Target], fade: bool = True) -> Image.Image:
    """`image` (any mode) as RGB with the targets drawn over it.

    With `fade` (and at least one target) every pixel outside the targets and parents becomes grey
    (R = G = B); without targets the image is returned unchanged.
    """
    rgb = image.convert("RGB")
    arr = np.asarray(rgb, dtype=np.float32).copy()
    h, w = arr.shape[:2]
    for t in targets:
        for m in (t.mask, t.parent_mask):
            if m is not None and m.shape != (h, w):
                raise ValueError(f"mask shape {m.shape} does not match the image ({h}, {w})")
    thick = outline_thickness(w, h)
    parents = [(t.parent_mask, t.colour) for t in targets if t.parent_mask is not None]
    if fade and targets:
        context = np.zeros((h, w), dtype=bool)
        for t in targets:
            context |= t.mask
        for m, _ in parents:
            context |= m
        luma = np.rint(arr @ np.asarray([0.299, 0.587, 0.114], np.float32))
        grey = np.rint(FADE_KEEP * luma + (1 - FADE_KEEP) * 255.0)
        arr[~context] = grey[~context][:, None]
    for m, c in parents:  # parents first, so their parts are drawn on top
        arr[m] = arr[m] * (1 - PARENT_ALPHA) + np.asarray(c, np.float32) * PARENT_ALPHA
    for t in targets:
        arr[t.mask] = arr[t.mask] * (1 - TARGET_ALPHA) + np.asarray(t.colour, np.float32) * TARGET_ALPHA
    if parents:
        dashes = _dashes((h, w))
        for m, c in parents:
            arr[inner_boundary(m, thick) & dashes] = c
    for t in targets:
        arr[inner_boundary(t.mask, thick)] = t.colour
    return Image.fromarray(np.clip(np.rint(arr), 0, 255).astype(np.uint8), "RGB")


def fit_within(image: Image.Image, max_w: int, max_h: int) -> Image.Image:
    """Downscale (never upscale) to fit in max_w x max_h, keeping the aspect ratio."""
    w, h = image.size
    scale = min(max_w / w, max_h / h, 1.0)
    if scale >= 1.0:
        return image
    return image.resize((max(1, round(w * scale)), max(1, round(h * scale))), Image.Resampling.LANCZOS)


# ------------------------------------------------------------------------------ contact sheet
@dataclass
class Card:
    """One cell of the contact sheet: a drawn image and its caption lines (text, colour)."""

    image: Image.Image
    title: str  # e.g. "multi_object / same_category"
    title_colour: RGB
    lines: list[str] = field(default_factory=list)  # instruction, answer / "no target", reason ...


@dataclass(frozen=True)
class SheetLayout:
    cols: int = 4
    thumb_w: int = 300
    thumb_h: int = 225
    pad: int = 8
    font_size: int = 13
    caption_lines: int = 6  # title + 5 lines of text

    @property
    def line_h(self) -> int:
        return self.font_size + 4

    @property
    def cell_w(self) -> int:
        return self.thumb_w + 2 * self.pad

    @property
    def cell_h(self) -> int:
        return self.thumb_h + self.caption_lines * self.line_h + 3 * self.pad

    def size(self, n: int) -> tuple[int, int]:
        """(width, height) of a sheet of n cards."""
        cols = max(1, min(self.cols, n))
        rows = max(1, math.ceil(n / cols))
        return cols * self.cell_w, rows * self.cell_h


def _font(size: int) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    return ImageFont.load_default(size=size)


def wrap(text: str, draw: ImageDraw.ImageDraw, font: ImageFont.FreeTypeFont | ImageFont.ImageFont,
         width: int, max_lines: int) -> list[str]:
    """Greedy word wrap to `width` pixels; the last kept line ends with '...' when text is cut."""
    words = text.split()
    lines: list[str] = []
    cur = ""
    for word in words:
        cand = f"{cur} {word}".strip()
        if draw.textlength(cand, font=font) <= width or not cur:
            cur = cand
        else:
            lines.append(cur)
            cur = word
    if cur:
        lines.append(cur)
    if len(lines) > max_lines:
        lines = lines[:max_lines]
        last = lines[-1]
        while last and draw.textlength(last + "...", font=font) > width:
            last = last[:-1]
        lines[-1] = last.rstrip() + "..."
    out: list[str] = []
    for line in lines:  # a single word wider than the line: cut it
        cut = line
        while len(cut) > 1 and draw.textlength(cut if cut == line else cut + "...", font=font) > width:
            cut = cut[:-1]
        out.append(cut if cut == line else cut + "...")
    return out


def contact_sheet(cards: Sequence[Card], layout: SheetLayout | None = None) -> Image.Image:
    """A white grid of thumbnails with captions below; size is `layout.size(len(cards))`."""
    lay = layout or SheetLayout()
    sheet = Image.new("RGB", lay.size(len(cards)), (255, 255, 255))
    draw = ImageDraw.Draw(sheet)
    font = _font(lay.font_size)
    cols = max(1, min(lay.cols, len(cards)))
    text_w = lay.cell_w - 2 * lay.pad
    for i, card in enumerate(cards):
        x0, y0 = (i % cols) * lay.cell_w, (i // cols) * lay.cell_h
        thumb = fit_within(card.image.convert("RGB"), lay.thumb_w, lay.thumb_h)
        tx = x0 + lay.pad + (lay.thumb_w - thumb.width) // 2
        ty = y0 + lay.pad + (lay.thumb_h - thumb.height) // 2
        draw.rectangle([x0 + lay.pad - 1, y0 + lay.pad - 1, x0 + lay.pad + lay.thumb_w, y0 + lay.pad + lay.thumb_h],
                       fill=(238, 238, 238))
        sheet.paste(thumb, (tx, ty))
        cy = y0 + 2 * lay.pad + lay.thumb_h
        draw.text((x0 + lay.pad, cy), wrap(card.title, draw, font, text_w, 1)[0] if card.title else "",
                  fill=card.title_colour, font=font)
        budget = lay.caption_lines - 1
        rows: list[str] = []
        for j, text in enumerate(card.lines):
            left = budget - len(rows) - (len(card.lines) - j - 1)  # keep one line for each later entry
            if left <= 0:
                break
            rows.extend(wrap(text, draw, font, text_w, left))
        for k, line in enumerate(rows[:budget]):
            draw.text((x0 + lay.pad, cy + (k + 1) * lay.line_h), line, fill=(30, 30, 30), font=font)
    return sheet
