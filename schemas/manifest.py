"""The manifest model: one JSON file per committed dataset version.

A shard is part of the dataset only when a manifest names it. Manifests are written once
(create-if-absent) and never modified; see pipelines/build/commit.py.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import Any

MANIFEST_FORMAT = 1


def manifest_name(version: int) -> str:
    """File name of a manifest version, relative to <output>/manifests/."""
    return f"v{version:06d}.json"


def parse_manifest_name(name: str) -> int | None:
    """Version number of a manifest file name, or None when it is not one."""
    base = name.rsplit("/", 1)[-1]
    if len(base) == len("v000000.json") and base.startswith("v") and base.endswith(".json"):
        digits = base[1:7]
        if digits.isdigit():
            return int(digits)
    return None


@dataclass
class ShardEntry:
    path: str  # relative to the output uri
    kind: str  # samples | rejects | errors | raw
    task: str
    rows: int
    bytes: int
    sha256: str
    batch: str = ""  # the write batch (receipt) the shard came from; a unit's rows share one batch


@dataclass
class Manifest:
    version: int
    parent_version: int | None
    created_at: str
    config: dict[str, Any]
    config_hash: str
    teacher: dict[str, Any]
    prompts: dict[str, str]  # task -> prompt content hash
    filters: dict[str, Any]  # {"version": ..., "settings": {...}}
    shards: list[ShardEntry]
    stats: dict[str, Any]
    build_id: str = ""
    format: int = MANIFEST_FORMAT
    extra: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> Manifest:
        raw = json.loads(text)
        raw["shards"] = [ShardEntry(**s) for s in raw.get("shards", [])]
        known = {f for f in cls.__dataclass_fields__}
        return cls(**{k: v for k, v in raw.items() if k in known})

    def shards_of(self, kind: str, task: str | None = None) -> list[ShardEntry]:
        return [s for s in self.shards if s.kind == kind and (task is None or s.task == task)]
