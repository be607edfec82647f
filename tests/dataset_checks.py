"""Independent readers for tests: only pyarrow, fsspec and pycocotools, never the pipeline's code."""

from __future__ import annotations

import json
from collections import defaultdict
from typing import Any

import fsspec
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO


def open_fs(uri: str, endpoint_url: str | None = None):
    opts = {"endpoint_url": endpoint_url} if uri.startswith("s3://") and endpoint_url else {}
    return fsspec.core.url_to_fs(uri, **opts)


def latest_manifest(output: str, endpoint_url: str | None = None) -> dict[str, Any]:
    fs, path = open_fs(output, endpoint_url)
    names = sorted(p for p in fs.ls(path + "/manifests", detail=False) if p.endswith(".json"))
    with fs.open(names[-1]) as fh:
        return json.load(fh)


def read_kind(output: str, manifest: dict, kind: str, endpoint_url: str | None = None) -> pa.Table:
    fs, path = open_fs(output, endpoint_url)
    tables = [pq.read_table(f"{path}/{s['path']}", filesystem=fs) for s in manifest["shards"] if s["kind"] == kind]
    return pa.concat_tables(tables) if tables else pa.table({})


class SourceMasks:
    """Source masks straight from an annotation JSON through pycocotools' COCO API."""

    def __init__(self, ann_file: str, endpoint_url: str | None = None) -> None:
        fs, path = open_fs(ann_file, endpoint_url)
        with fs.open(path) as fh:
            data = json.load(fh)
        for img in data["images"]:  # LVIS-style files carry coco_url instead of file_name
            img.setdefault("file_name", img.get("coco_url", "").rsplit("/", 1)[-1])
        self.coco = COCO()
        self.coco.dataset = data
        self.coco.createIndex()

    def union(self, ann_ids: list[int], height: int, width: int) -> np.ndarray:
        out = np.zeros((height, width), dtype=bool)
        for a in ann_ids:
            rle = self.coco.annToRLE(self.coco.anns[a])
            out |= mask_utils.decode(rle).astype(bool)
        return out


def decode_sample_mask(mask: dict) -> np.ndarray:
    rle = {"size": list(mask["size"]), "counts": mask["counts"].encode()}
    return mask_utils.decode(rle).astype(bool)


def outcomes_by_unit(raw: pa.Table) -> dict[str, str]:
    keys = raw.column("gen_key").to_pylist()
    assert len(keys) == len(set(keys)), "a unit appears twice in the ledger"
    return dict(zip(keys, raw.column("outcome").to_pylist(), strict=False))


def keys_of(table: pa.Table) -> dict[str, int]:
    out: dict[str, int] = defaultdict(int)
    if table.num_columns:
        for k in table.column("gen_key").to_pylist():
            out[k] += 1
    return dict(out)
