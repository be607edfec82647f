"""Category tables of COCO / LVIS / PACO files and the clean display names the teachers see."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from schemas.columns import is_int64

# LVIS disambiguates homonyms with a parenthesised suffix: "car_(automobile)", "bat_(animal)".
_LVIS_SUFFIX = re.compile(r"_\([^)]*\)")
# PACO's placeholder supercategories say only "object" / "part": no hierarchy information.
_PLACEHOLDER_SUPERCATEGORIES = {"OBJECT", "PART"}


class AnnotationFileError(ValueError):
    """The annotation file as a whole is unusable (malformed JSON, missing sections, broken ids)."""


def clean_name(raw: str) -> str:
    """Display name of an LVIS/COCO category: "car_(automobile)" -> "car", "trash_can" -> "trash can"."""
    return " ".join(_LVIS_SUFFIX.sub("", raw).replace("_", " ").split())


@dataclass(frozen=True)
class Category:
    id: int
    raw_name: str  # as in the file: "cup", "car_(automobile)", "cup:handle"
    name: str  # what objects show: "cup", "car", and for a part only the part: "handle"
    absent_name: str  # how the category reads in negative lists: a part keeps its object, "cup handle"
    supercategory: str | None
    is_part: bool


def parse_categories(data: dict[str, Any], uri: str, fmt: str = "paco") -> dict[int, Category]:
    """The file's categories by id; malformed entries make the whole file unusable.

    Only PACO names parts "object:part"; in a COCO or LVIS file a `:` is part of the name."""
    cats: dict[int, Category] = {}
    for i, c in enumerate(data["categories"]):
        if not (isinstance(c, dict) and _is_int(c.get("id")) and isinstance(c.get("name"), str)):
            raise AnnotationFileError(f"{uri}: categories[{i}] needs an integer 'id' and a string 'name'")
        if c["id"] in cats:
            raise AnnotationFileError(f"{uri}: category id {c['id']} is defined twice")
        raw = c["name"]
        sup = c.get("supercategory")
        sup = sup if isinstance(sup, str) and sup and sup not in _PLACEHOLDER_SUPERCATEGORIES else None
        if fmt == "paco" and ":" in raw:  # PACO object-part category "object:part"
            obj, part = raw.split(":", 1)
            name = clean_name(part)
            cats[c["id"]] = Category(c["id"], raw, name, f"{clean_name(obj)} {name}", sup, True)
        else:
            name = clean_name(raw)
            cats[c["id"]] = Category(c["id"], raw, name, name, sup, False)
    return cats


def parse_attribute_names(data: dict[str, Any], uri: str) -> dict[int, str | None]:
    """PACO attribute id -> display name; None for the "other(...)" background attributes.

    "other(color)" etc. mean "none of the named values": useless to a teacher, so they are dropped.
    """
    out: dict[int, str | None] = {}
    for i, a in enumerate(data.get("attributes") or []):
        if not (isinstance(a, dict) and _is_int(a.get("id")) and isinstance(a.get("name"), str)):
            raise AnnotationFileError(f"{uri}: attributes[{i}] needs an integer 'id' and a string 'name'")
        name = a["name"]
        out[a["id"]] = None if name.startswith("other(") else name.replace("_", " ")
    return out


def _is_int(v: Any) -> bool:
    return is_int64(v)  # an id beyond int64 is as unusable as a missing one
