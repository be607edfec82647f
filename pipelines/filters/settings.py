"""Filter thresholds, and the filter version stored in every sample / reject row and the manifest.

`FilterSettings` is embedded as-is in the omegaconf structured config (`filters:`), so it holds
only plain typed fields with defaults. Filter settings are deliberately NOT part of the generation
key: changing one re-checks the stored raw responses without calling the teacher again, and the
new `filter_version` tells the manifest which rows were judged by which rules.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import asdict, dataclass, fields, is_dataclass
from typing import Any, Mapping

# Bump whenever a check's logic changes (not its thresholds): stored rows then show they were
# filtered by older rules even though the settings did not change.
from pipelines.core.keys import FILTER_CODE_VERSION


@dataclass
class FilterSettings:
    # A target smaller than this (pixels, from the RLE) is too small to learn a mask from; COCO's
    # "small" bucket starts at 32*32, PACO parts are often a few hundred pixels, so stay well below.
    min_mask_area: int = 64
    # intersection(part, parent) / area(part) below this means the part annotation is not inside
    # the object it claims to belong to: the source annotation is suspect, so the pair is dropped.
    part_in_parent_min: float = 0.9
    min_instruction_chars: int = 3
    max_instruction_chars: int = 300
    min_answer_chars: int = 1
    max_answer_chars: int = 400
    # difflib ratio of the normalised word sequences of two instructions of one unit at or above
    # which the later one is a near-duplicate (1.0 = only exact duplicates after normalisation).
    duplicate_similarity: float = 0.9
    # Below 1.0 similarity, count a near-duplicate only when both pairs have the same targets (a
    # one-word change that moves the target is a contrastive pair worth keeping).
    duplicate_same_targets_only: bool = True
    # Pairs beyond this index in one response are rejected (`schema`): a teacher that writes far more
    # pairs than asked for is usually looping.
    max_pairs: int = 20
    # Spatial superlatives: candidates whose bbox centre is within this fraction of the image
    # width/height of the extreme one count as tied (annotators and teachers cannot tell them apart).
    spatial_tolerance: float = 0.02
    # Size superlatives: candidates within this relative area of the largest/smallest count as tied.
    area_tolerance: float = 0.05
    # attribute_mismatch: an attribute word ("red", "wooden") modifies the first target noun at most
    # this many tokens after it ("the red ceramic mug": 2); beyond that it describes something else.
    attribute_window: int = 3
    # no_referent: multi_object / multi_granularity instructions must name a known category, synonym
    # or group word (those tasks are defined by categories); off = only "names nothing at all" counts.
    no_referent_needs_category: bool = True
    # Strip markdown code fences / prose around the JSON object before parsing (API teachers add them).
    lenient_json: bool = True


def coerce_settings(settings: Any) -> FilterSettings:
    """A `FilterSettings` from itself, an omegaconf node or a plain mapping.

    The checks read thresholds many times per unit; omegaconf attribute access costs microseconds,
    so the stage converts once per batch instead of passing the DictConfig through.
    """
    if isinstance(settings, FilterSettings):
        return settings
    if settings is None:
        return FilterSettings()
    if is_dataclass(settings):
        return FilterSettings(**asdict(settings))  # type: ignore[arg-type]
    try:  # omegaconf DictConfig without importing omegaconf here
        from omegaconf import OmegaConf

        if OmegaConf.is_config(settings):
            settings = OmegaConf.to_container(settings, resolve=True)
    except ImportError:  # pragma: no cover - omegaconf is a base dependency
        pass
    if not isinstance(settings, Mapping):
        raise TypeError(f"filter settings must be FilterSettings or a mapping, got {type(settings)!r}")
    known = {f.name for f in fields(FilterSettings)}
    unknown = set(settings) - known
    if unknown:
        raise ValueError(f"unknown filter settings: {sorted(unknown)}")
    return FilterSettings(**dict(settings))


def filter_version(settings: Any, knowledge: Any = None) -> str:
    """Short sha256 over FILTER_CODE_VERSION + the settings (+ the knowledge file when given).

    The knowledge table (synonyms, plurals, groups) changes what several checks decide, so callers
    that have it should pass it: editing knowledge.yaml then changes the version too.
    """
    payload: dict[str, Any] = {"code": FILTER_CODE_VERSION, "settings": asdict(coerce_settings(settings))}
    path = getattr(knowledge, "path", None)
    if path and os.path.exists(path):
        with open(path, "rb") as f:
            payload["knowledge"] = hashlib.sha256(f.read()).hexdigest()
    blob = json.dumps(payload, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(blob.encode()).hexdigest()[:16]
