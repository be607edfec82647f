"""Vocabulary and shapes of the embedded sample dataset (see pipelines/sources/sample_data.py).

The categories, colours and themes the scenes are drawn from, and the polygons ("pieces") of each
object kind. Split from sample_data.py, which assembles scenes and writes the annotation files.
"""

from __future__ import annotations

import math
import random

# Object colours, named after PACO colour attributes; every background colour is > 60 per channel
# away from all of them, so a pixel's colour says whether it belongs to an object (tests rely on it).
OBJECT_COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (200, 30, 30), "blue": (30, 60, 200), "light_blue": (110, 190, 250), "green": (30, 140, 50),
    "yellow": (235, 205, 30), "orange": (240, 130, 20), "light_orange": (245, 190, 150),
    "brown": (110, 60, 25), "light_brown": (200, 150, 90), "black": (20, 20, 20),
    "white": (250, 250, 250), "pink": (235, 110, 170), "purple": (120, 50, 150),
}
BACKGROUND_COLOURS: dict[str, tuple[int, int, int]] = {
    "wall": (155, 235, 160), "grass": (115, 145, 65), "tiles": (100, 180, 150), "post": (35, 50, 112),
}

# name: (COCO id, COCO supercategory, LVIS name, LVIS synonyms, in PACO, width / height, colours)
CATEGORIES: dict[str, tuple[int, str, str, list[str], bool, float, list[str]]] = {
    "person": (1, "person", "person", ["human", "man", "woman"], False, 0.45,
               ["red", "blue", "green", "yellow", "purple", "orange", "white", "pink"]),
    "bicycle": (2, "vehicle", "bicycle", ["bike_(bicycle)"], True, 1.7, ["red", "blue", "green", "orange"]),
    "car": (3, "vehicle", "car_(automobile)", ["auto_(automobile)", "automobile"], True, 2.2,
            ["red", "blue", "green", "yellow", "white", "black"]),
    "cat": (17, "animal", "cat", [], False, 1.3, ["orange", "black", "white", "light_brown"]),
    "dog": (18, "animal", "dog", [], True, 1.6, ["brown", "black", "white", "light_brown"]),
    "bottle": (44, "kitchen", "bottle", [], True, 0.38, ["green", "brown", "blue", "light_blue"]),
    "cup": (47, "kitchen", "cup", [], True, 1.1, ["red", "blue", "white", "yellow", "green", "pink"]),
    "bowl": (51, "kitchen", "bowl", [], True, 2.0, ["white", "blue", "yellow", "red", "pink"]),
    "banana": (52, "food", "banana", [], False, 2.4, ["yellow", "green"]),
    "apple": (53, "food", "apple", [], False, 1.0, ["red", "green", "yellow"]),
    "chair": (62, "furniture", "chair", [], True, 0.7, ["brown", "light_brown", "red", "black", "blue"]),
}
PARTS: dict[str, tuple[str, ...]] = {
    "cup": ("body", "rim", "handle"), "chair": ("back", "seat", "leg"),
    "car": ("window", "door", "wheel"), "bottle": ("body", "neck", "cap"),
}
MATERIALS = {"cup": "ceramic", "bowl": "ceramic", "bottle": "glass", "chair": "wood", "car": "metal",
             "bicycle": "metal"}
# Categories of each file that never appear in the drawings (negatives / COCO absents).
EXTRA_COCO = [(19, "horse", "animal"), (28, "umbrella", "accessory"), (73, "laptop", "electronic")]
EXTRA_LVIS = {"horse": [], "umbrella": [], "laptop_computer": ["laptop"], "mug": [],
              "glass_(drink_container)": ["drinking_glass"], "pan_(for_cooking)": ["cooking_pan"],
              "mouse_(computer_equipment)": ["computer_mouse"]}
EXTRA_PACO = ["mug", "glass_(drink_container)", "pan_(for_cooking)"]
PACO_ATTRIBUTE_TYPES: dict[str, list[str]] = {  # PACO's 59 attributes in PACO's id order
    "color": ["black", "light_blue", "blue", "dark_blue", "light_brown", "brown", "dark_brown", "light_green",
              "green", "dark_green", "light_grey", "grey", "dark_grey", "light_orange", "orange", "dark_orange",
              "light_pink", "pink", "dark_pink", "light_purple", "purple", "dark_purple", "light_red", "red",
              "dark_red", "white", "light_yellow", "yellow", "dark_yellow", "other(color)"],
    "pattern_marking": ["plain", "striped", "dotted", "checkered", "woven", "studded", "perforated", "floral",
                        "other(pattern_marking)", "logo", "text"],
    "material": ["stone", "wood", "rattan", "fabric", "crochet", "wool", "leather", "velvet", "metal", "paper",
                 "plastic", "glass", "ceramic", "other(material)"],
    "transparency": ["opaque", "translucent", "transparent", "other(transparency)"],
}
THEMES = [  # (background floor, [(category, min count, max count, height range as a fraction of H)])
    ("grass", [("car", 1, 2, (0.16, 0.24)), ("bicycle", 0, 2, (0.18, 0.26)), ("person", 1, 3, (0.3, 0.5)),
               ("dog", 0, 2, (0.14, 0.24))]),
    ("tiles", [("cup", 2, 4, (0.1, 0.17)), ("bottle", 1, 3, (0.18, 0.3)), ("bowl", 1, 2, (0.07, 0.11)),
               ("banana", 0, 2, (0.06, 0.09)), ("apple", 1, 3, (0.07, 0.11))]),
    ("tiles", [("chair", 1, 3, (0.28, 0.4)), ("cat", 1, 2, (0.12, 0.2)), ("dog", 0, 1, (0.14, 0.24)),
               ("person", 0, 1, (0.3, 0.45)), ("cup", 1, 2, (0.1, 0.15))]),
]
SIZES = [(320, 240), (400, 300), (256, 320), (360, 270), (320, 320)]

Piece = tuple[str | None, list[float], str]  # (part name or None, polygon x0,y0,x1,y1..., colour name)


# ---------------------------------------------------------------- shapes -------------------------------
def _rect(x0: float, y0: float, x1: float, y1: float) -> list[float]:
    return [x0, y0, x1, y0, x1, y1, x0, y1]


def _ellipse(cx: float, cy: float, rx: float, ry: float, n: int = 16, t0: float = 0.0,
             t1: float = 2 * math.pi) -> list[float]:
    full = math.isclose(t1 - t0, 2 * math.pi)
    ts = [t0 + (t1 - t0) * k / (n if full else n - 1) for k in range(n)]
    return [v for t in ts for v in (cx + rx * math.cos(t), cy + ry * math.sin(t))]


def _bar(x0: float, y0: float, x1: float, y1: float, width: float) -> list[float]:
    length = math.hypot(x1 - x0, y1 - y0) or 1.0
    nx, ny = -(y1 - y0) / length * width / 2, (x1 - x0) / length * width / 2
    return [x0 + nx, y0 + ny, x1 + nx, y1 + ny, x1 - nx, y1 - ny, x0 - nx, y0 - ny]


def _pieces(cat: str, x: float, y: float, w: float, h: float, rng: random.Random) -> tuple[list[Piece], str]:
    """The polygons of one object in its box, in painting order, and its main colour."""
    c = rng.choice(CATEGORIES[cat][6])
    other = rng.choice([k for k in ("red", "white", "black", "yellow", "blue") if k != c])
    if cat == "person":
        r = min(0.3 * w, 0.11 * h)
        legs = rng.choice(["blue", "black", "brown"])
        return [(None, _ellipse(x + w / 2, y + r, r, r), "light_orange"),
                (None, _rect(x + 0.1 * w, y + 2 * r, x + 0.9 * w, y + 0.6 * h), c),
                (None, _rect(x + 0.15 * w, y + 0.6 * h, x + 0.45 * w, y + h), legs),
                (None, _rect(x + 0.55 * w, y + 0.6 * h, x + 0.85 * w, y + h), legs)], c
    if cat == "dog":
        legs = [(None, _rect(x + f * w, y + 0.6 * h, x + (f + 0.07) * w, y + h), c) for f in (0.18, 0.3, 0.62, 0.72)]
        return [(None, _rect(x + 0.15 * w, y + 0.3 * h, x + 0.8 * w, y + 0.68 * h), c),
                (None, _rect(x + 0.74 * w, y + 0.05 * h, x + w, y + 0.42 * h), c),
                (None, _bar(x + 0.17 * w, y + 0.36 * h, x + 0.05 * w, y + 0.12 * h, max(2.0, 0.07 * h)), c),
                *legs], c
    if cat == "cat":
        r = 0.2 * h
        hx, hy = x + 0.99 * w - r, y + 0.45 * h
        ears = [[hx - 0.9 * r, hy - 0.45 * r, hx - 0.55 * r, y, hx - 0.15 * r, hy - 0.9 * r],
                [hx + 0.15 * r, hy - 0.9 * r, hx + 0.55 * r, y, hx + 0.9 * r, hy - 0.45 * r]]
        return [(None, _ellipse(x + 0.45 * w, y + 0.68 * h, 0.36 * w, 0.3 * h), c),
                (None, _bar(x + 0.12 * w, y + 0.7 * h, x + 0.04 * w, y + 0.3 * h, max(2.0, 0.07 * h)), c),
                (None, _ellipse(hx, hy, r, r), c), *[(None, e, c) for e in ears]], c
    if cat == "car":
        return [(None, _rect(x, y + 0.4 * h, x + w, y + 0.8 * h), c),
                (None, [x + 0.2 * w, y + 0.42 * h, x + 0.3 * w, y, x + 0.7 * w, y, x + 0.82 * w, y + 0.42 * h], c),
                ("window", [x + 0.27 * w, y + 0.36 * h, x + 0.335 * w, y + 0.08 * h, x + 0.48 * w, y + 0.08 * h,
                            x + 0.48 * w, y + 0.36 * h], "light_blue"),
                ("window", [x + 0.52 * w, y + 0.36 * h, x + 0.52 * w, y + 0.08 * h, x + 0.67 * w, y + 0.08 * h,
                            x + 0.75 * w, y + 0.36 * h], "light_blue"),
                ("door", _rect(x + 0.3 * w, y + 0.44 * h, x + 0.5 * w, y + 0.76 * h), other),
                ("wheel", _ellipse(x + 0.22 * w, y + 0.8 * h, 0.2 * h, 0.2 * h), "black"),
                ("wheel", _ellipse(x + 0.78 * w, y + 0.8 * h, 0.2 * h, 0.2 * h), "black")], c
    if cat == "bicycle":
        r, bw = 0.32 * h, max(2.0, 0.06 * h)
        cy = y + h - r
        a, b, cc = (x + r, cy), (x + w - r, cy), (x + 0.47 * w, cy)
        d, e = (x + 0.38 * w, y + 0.3 * h), (x + 0.72 * w, y + 0.22 * h)
        bars = [(None, _bar(*p, *q, bw), c) for p, q in ((a, d), (d, cc), (cc, a), (d, e), (e, cc), (e, b))]
        return [(None, _ellipse(*a, r, r), "black"), (None, _ellipse(*b, r, r), "black"), *bars,
                (None, _rect(x + 0.3 * w, y + 0.2 * h, x + 0.46 * w, y + 0.28 * h), "black"),
                (None, _bar(*e, x + 0.66 * w, y + 0.04 * h, bw), c)], c
    if cat == "cup":
        bw = 0.72 * w
        x0, x1, xi = x + 0.6 * w, x + w, x + 0.88 * w
        y0, y1, y2, y3 = y + 0.28 * h, y + 0.4 * h, y + 0.62 * h, y + 0.74 * h
        return [("body", [x, y + 0.12 * h, x + bw, y + 0.12 * h, x + bw - 0.08 * w, y + h, x + 0.08 * w, y + h], c),
                ("rim", _rect(x, y, x + bw, y + 0.12 * h), "white" if c != "white" else "light_blue"),
                ("handle", [x0, y0, x1, y0, x1, y3, x0, y3, x0, y2, xi, y2, xi, y1, x0, y1], c)], c
    if cat == "bottle":
        neck = [x + 0.3 * w, y + 0.14 * h, x + 0.7 * w, y + 0.14 * h, x + 0.7 * w, y + 0.3 * h, x + w, y + 0.42 * h,
                x, y + 0.42 * h, x + 0.3 * w, y + 0.3 * h]
        return [("body", _rect(x, y + 0.42 * h, x + w, y + h), c), ("neck", neck, c),
                ("cap", _rect(x + 0.26 * w, y, x + 0.74 * w, y + 0.14 * h), other)], c
    if cat == "bowl":
        return [(None, _ellipse(x + w / 2, y, w / 2, h, n=13, t0=0.0, t1=math.pi), c)], c
    if cat == "chair":
        legs = "black" if c != "black" else "brown"
        return [("back", _rect(x, y, x + 0.16 * w, y + 0.56 * h), c),
                ("seat", _rect(x, y + 0.5 * h, x + w, y + 0.62 * h), c),
                ("leg", _rect(x + 0.02 * w, y + 0.62 * h, x + 0.14 * w, y + h), legs),
                ("leg", _rect(x + 0.86 * w, y + 0.62 * h, x + 0.98 * w, y + h), legs)], c
    if cat == "banana":
        outer = _ellipse(x + w / 2, y, 0.5 * w, h, n=12, t0=0.06 * math.pi, t1=0.94 * math.pi)
        inner = _ellipse(x + w / 2, y, 0.4 * w, 0.55 * h, n=12, t0=0.94 * math.pi, t1=0.06 * math.pi)
        return [(None, outer + inner, c)], c
    # apple
    return [(None, _ellipse(x + 0.5 * w, y + 0.58 * h, 0.42 * h, 0.42 * h), c),
            (None, _rect(x + 0.46 * w, y, x + 0.54 * w, y + 0.22 * h), "brown"),
            (None, [x + 0.54 * w, y + 0.14 * h, x + 0.8 * w, y + 0.02 * h, x + 0.74 * w, y + 0.16 * h], "green")], c


def _clip_x(coords: list[float], a: float, keep_left: bool) -> list[float]:
    """Sutherland-Hodgman clip of a polygon to x <= a (or x >= a); [] when nothing is left."""
    pts = list(zip(coords[::2], coords[1::2], strict=True))
    inside = (lambda p: p[0] <= a) if keep_left else (lambda p: p[0] >= a)
    out: list[tuple[float, float]] = []
    for i, cur in enumerate(pts):
        prev = pts[i - 1]
        if inside(cur) != inside(prev):
            t = (a - prev[0]) / (cur[0] - prev[0])
            out.append((a, prev[1] + t * (cur[1] - prev[1])))
        if inside(cur):
            out.append(cur)
    area = 0.5 * abs(sum(p[0] * q[1] - q[0] * p[1] for p, q in zip(out, out[1:] + out[:1], strict=True)))
    return [v for p in out for v in p] if len(out) >= 3 and area >= 1.0 else []
