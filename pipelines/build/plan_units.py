"""The plan's unit table and its anti-join with the ledger, in compact columns.

A unit is (image row `idx` int32, `task_rank` int8, `gen_key` fixed_size_binary(32)): 37 bytes
instead of a row of hex strings. Everything a unit shows (identity, annotation hash, prompt and
teacher hash, task name) is per image or per task and is taken from there when needed, never
repeated per unit. Keys are hashed in Python (sha256 per unit, no vectorised sha256 in Arrow) in
slices of images, so only one slice's Python strings live at a time.
"""

from __future__ import annotations

from typing import Any, Mapping

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from pipelines.build.unit_keys import DIGEST, digest_array, digest_to_hex, digests_of, hex_to_digest
from pipelines.core.keys import (
    KEY_INPUTS,
    REASON_CODE,
    REASON_NEW,
    REASON_RETRY,
    final_error_mask,
    generation_key_digests,
)
from schemas.columns import OUTCOME_ERROR, TASKS

UID = ["source", "image_id", "task"]
# why a unit is generated, as int8 codes (first that applies); REASONS[code] is the text
REASONS = (REASON_NEW, REASON_RETRY, *[r for _, r in KEY_INPUTS], REASON_CODE)
NEW, RETRY, CODE = 0, 1, len(REASONS) - 1
HASH_SLICE = 65_536  # images per hashing slice: bounds the Python strings alive at once


def as_bool(arr: Any) -> np.ndarray:
    return np.asarray(pc.fill_null(arr, False).to_numpy(zero_copy_only=False), dtype=bool)


def identity_column(images: pa.Table, identities: Mapping[str, str]) -> pa.Array:
    """Each image's content identity ("missing" when not listed), aligned with `images`. An
    `Identities` from resolve.load_images is looked up as Arrow arrays; a plain dict is converted."""
    arrays = getattr(identities, "arrays", None)
    uris, values = arrays() if arrays else (pa.array(list(identities), pa.string()),
                                            pa.array(list(identities.values()), pa.string()))
    pos = pc.index_in(images.column("image_uri"), value_set=uris)
    return pc.fill_null(values.take(pos.combine_chunks() if isinstance(pos, pa.ChunkedArray) else pos), "missing")


def build_units(images: pa.Table, idents: pa.Array, rows_by_task: dict[str, np.ndarray],
                prompt_hashes: Mapping[str, str], teacher_hash: str) -> pa.Table:
    """(idx, task_rank, gen_key) of every planned unit, in image order within each task."""
    parts = []
    anns = images.column("ann_hash")
    for rank, task in enumerate(TASKS):
        idx = rows_by_task[task]
        ph = prompt_hashes.get(task, "")
        chunks = []
        for lo in range(0, len(idx), HASH_SLICE):
            take = pa.array(idx[lo:lo + HASH_SLICE])
            chunks.append(generation_key_digests(idents.take(take).to_pylist(), anns.take(take).to_pylist(),
                                                 task, ph, teacher_hash))
        keys = digest_array(b"".join(chunks), len(idx))
        del chunks
        parts.append(pa.table({"idx": pa.array(idx, pa.int32()),
                               "task_rank": pa.array(np.full(len(idx), rank), pa.int8()), "gen_key": keys}))
    return pa.concat_tables(parts)


def ledger_views(ledger: pa.Table, images: pa.Table, own: set[str], filter_version: str | None
                 ) -> tuple[pa.Table, pa.Table, pa.Table]:
    """(gen_key -> reuse_row), (gen_key -> stale_row): the first usable ledger row of a key with
    the same / another filter version (its batch provides the unit's rows, its image_uri says where
    they locate the image); and (idx, task_rank -> prev_row): each unit's last ledger row (its
    image's row `idx` null when the image left the index). Rows, not values: 8 bytes per unit."""
    n = ledger.num_rows
    row = pa.array(np.arange(n, dtype=np.int64))
    is_err = as_bool(pc.equal(ledger.column("outcome"), OUTCOME_ERROR))
    mine = as_bool(pc.is_in(ledger.column("batch"), value_set=pa.array(sorted(own), pa.string())))
    usable = ~is_err | mine | final_error_mask(ledger.column("error_reason"))
    if filter_version is None:
        same = np.ones(n, dtype=bool)
    else:
        same = as_bool(pc.equal(ledger.column("filter_version"), filter_version)) | is_err
    base = pa.table({"gen_key": hex_to_digest(ledger.column("gen_key")), "row": row})

    def first(mask: np.ndarray, name: str) -> pa.Table:  # ledger rows are in batch order
        return (base.filter(pa.array(mask)).group_by("gen_key", use_threads=False)
                .aggregate([("row", "min")]).rename_columns(["gen_key", name]))

    last = (ledger.select(UID).append_column("row", row)
            .group_by(UID, use_threads=False).aggregate([("row", "max")]).rename_columns([*UID, "prev_row"]))
    where = images.select(["source", "image_id"]).append_column(
        "idx", pa.array(np.arange(images.num_rows, dtype=np.int32)))
    last = last.join(where, ["source", "image_id"], join_type="left outer")
    rank = pc.index_in(last.column("task"), value_set=pa.array(TASKS, pa.string())).cast(pa.int8())
    prev = pa.table({"idx": last.column("idx"), "task_rank": rank, "prev_row": last.column("prev_row")})
    return first(usable & same, "reuse_row"), first(usable & ~same, "stale_row"), prev


def relocations(images: pa.Table, ledger: pa.Table, reused: pa.Table, tasks: dict[str, Any]
                ) -> tuple[dict[str, str | None], int, int]:
    """Reused units whose carried rows name another image location than the source's current one
    (the identity has no path, so a moved folder keeps every key): gen_key -> current uri, the
    number of distinct images moved, and the units whose ledger predates the image_uri column.
    Compared in Arrow slice by slice; only moved units become Python values."""
    n = reused.num_rows
    if not n or "image_uri" not in ledger.column_names:
        return {}, 0, 0
    idx = reused.column("idx").to_numpy()
    rows = reused.column("reuse_row").to_numpy()
    differs = np.zeros(n, dtype=bool)
    recorded = np.zeros(n, dtype=bool)
    for lo in range(0, n, 1 << 20):
        cur = images.column("image_uri").take(pa.array(idx[lo:lo + (1 << 20)]))
        old = ledger.column("image_uri").take(pa.array(rows[lo:lo + (1 << 20)]))
        both_null = as_bool(pc.and_(pc.is_null(cur), pc.is_null(old)))
        differs[lo:lo + len(cur)] = ~as_bool(pc.equal(cur, old)) & ~both_null  # null == null: no move
        recorded[lo:lo + len(cur)] = as_bool(pc.is_valid(old))
    if not differs.any():
        return {}, 0, 0
    sel = reused.filter(pa.array(differs))
    for r, k in enumerate(np.bincount(sel.column("task_rank").to_numpy(), minlength=len(TASKS)).tolist()):
        if k:
            tasks[TASKS[r]].relocated = k
    keys = digest_to_hex(sel.column("gen_key")).to_pylist()
    uris = images.column("image_uri").take(pa.array(idx[differs])).to_pylist()
    moved = len(np.unique(idx[differs & recorded]))
    return dict(zip(keys, uris, strict=True)), moved, int((differs & ~recorded).sum())


def reason_codes(units: pa.Table, ledger: pa.Table, images: pa.Table, idents: pa.Array,
                 prompt_hashes: Mapping[str, str], teacher_hash: str) -> np.ndarray:
    """Per unit, the code (REASONS) of the first key input that differs from its previous ledger
    row; NEW without one, RETRY when the key is the same. Compared slice by slice, in Arrow."""
    out = np.full(units.num_rows, NEW, dtype=np.int8)
    prev_row = units.column("prev_row")
    sel = np.flatnonzero(as_bool(pc.is_valid(prev_row)))
    if not len(sel):
        return out
    rows_all = np.asarray(pc.fill_null(prev_row, 0).to_numpy(zero_copy_only=False), dtype=np.int64)
    idx_all = units.column("idx").to_numpy()
    rank_all = units.column("task_rank").to_numpy()
    ph = pa.array([prompt_hashes.get(t, "") for t in TASKS], pa.string())
    for lo in range(0, len(sel), 1 << 20):
        s = sel[lo:lo + (1 << 20)]
        rows, idx = pa.array(rows_all[s]), pa.array(idx_all[s])
        now = {"image_identity": idents.take(idx), "ann_hash": images.column("ann_hash").take(idx),
               "prompt_hash": ph.take(pa.array(rank_all[s])), "teacher_hash": pa.scalar(teacher_hash)}
        same_key = (digests_of(hex_to_digest(ledger.column("gen_key").take(rows)))
                    == digests_of(units.column("gen_key").take(pa.array(s)))).all(axis=1)
        code = np.where(same_key, RETRY, CODE).astype(np.int8)
        for k, (col, _reason) in reversed(list(enumerate(KEY_INPUTS))):  # the first difference wins
            diff = ~as_bool(pc.equal(ledger.column(col).take(rows), now[col]))
            code = np.where(~same_key & diff, 2 + k, code).astype(np.int8)
        out[s] = code
    return out


def empty_views() -> tuple[pa.Table, pa.Table, pa.Table]:
    """ledger_views of an empty ledger (a first build, or --dry-run on a new output)."""
    return (pa.table({"gen_key": pa.array([], DIGEST), "reuse_batch": pa.array([], pa.string())}),
            pa.table({"gen_key": pa.array([], DIGEST), "stale_batch": pa.array([], pa.string())}),
            pa.table({"idx": pa.array([], pa.int32()), "task_rank": pa.array([], pa.int8()),
                      "prev_row": pa.array([], pa.int64())}))
