"""The teacher's image size: one rule shared by the stream (resize), the prompt export and the
replay teacher (object-table boxes on that size), so all three agree on what the teacher sees."""

from __future__ import annotations

import math


def fit_to_budget(width: int, height: int, max_pixels: int, factor: int = 1, min_pixels: int = 0) -> tuple[int, int]:
    """The (w, h) the teacher gets: the same aspect ratio within [min_pixels, max_pixels].

    factor 1: the largest size with w*h <= max_pixels (never upscales).
    factor > 1 (a vision model's patch grid, patch_size x merge_size: 28 px for Qwen2.5-VL, 32 for
    Qwen3-VL): both sides multiples of `factor`, by exactly the rule of the HF Qwen-VL processors
    (`smart_resize`), so the engine-side processor finds the image already on its grid and does not
    resize it a second time. Rounding to the grid may grow a side by < factor/2 px (640x480 ->
    644x476): the processor would do the same, once more, after us.
    """
    if factor <= 1:
        if width * height <= max_pixels:
            return width, height
        scale = math.sqrt(max_pixels / float(width * height))
        return max(1, int(width * scale)), max(1, int(height * scale))
    h_bar = max(factor, round(height / factor) * factor)
    w_bar = max(factor, round(width / factor) * factor)
    if h_bar * w_bar > max_pixels:
        beta = math.sqrt((height * width) / max_pixels)
        h_bar = max(factor, math.floor(height / beta / factor) * factor)
        w_bar = max(factor, math.floor(width / beta / factor) * factor)
    elif h_bar * w_bar < min_pixels:
        beta = math.sqrt(min_pixels / (height * width))
        h_bar = math.ceil(height * beta / factor) * factor
        w_bar = math.ceil(width * beta / factor) * factor
    return w_bar, h_bar
