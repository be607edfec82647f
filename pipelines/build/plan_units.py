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

from pipelines.build.unit_keys import digest_array, digest_to_hex, digests_of, hex_to_digest
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
SLICE = 1 << 18  # units per comparison slice (reasons, relocations): bounds the strings taken at once


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
                 ) -> tuple[pa.Table, pa.Table, pa.Table, np.ndarray]:
    """(gen_key -> reuse_row), (gen_key -> stale_row): the first usable ledger row of a key with
    the same / another filter version (its batch provides the unit's rows, its image_uri says where
    they locate the image); (idx, task_rank -> prev_row): each planned uid's last ledger row; and
    the last row of every uid in the ledger (`last_rows`). Rows, not values: 8 bytes per unit."""
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

    prev, last = last_rows(ledger, images)
    return first(usable & same, "reuse_row"), first(usable & ~same, "stale_row"), prev, last


def last_rows(ledger: pa.Table, images: pa.Table) -> tuple[pa.Table, np.ndarray]:
    """Each uid's last ledger row: (idx, task_rank -> prev_row) for uids whose image is in the
    index, and every uid's last row (those of images that left the index too). numpy over an int64
    (image row, task) code; only the uids of images that left are grouped by their strings."""
    n = ledger.num_rows
    rows = np.arange(n, dtype=np.int64)
    idx = _image_rows(ledger, images)
    rank = np.asarray(pc.fill_null(pc.index_in(ledger.column("task"), value_set=pa.array(TASKS, pa.string())), -1)
                      .to_numpy(zero_copy_only=False), dtype=np.int64)
    mapped = (idx >= 0) & (rank >= 0)
    code = idx[mapped] * 8 + rank[mapped]
    order = np.lexsort((rows[mapped], code))
    ends = np.append(code[order][1:] != code[order][:-1], True) if len(code) else np.zeros(0, dtype=bool)
    last_code, last_mapped = code[order][ends], rows[mapped][order][ends]
    prev = pa.table({"idx": pa.array(last_code // 8, pa.int32()), "task_rank": pa.array(last_code % 8, pa.int8()),
                     "prev_row": pa.array(last_mapped, pa.int64())})
    gone = np.flatnonzero(~mapped)
    last_gone = np.zeros(0, dtype=np.int64)
    if len(gone):
        last_gone = (ledger.select(UID).take(pa.array(gone)).append_column("row", pa.array(gone))
                     .group_by(UID, use_threads=False).aggregate([("row", "max")]).column("row_max").to_numpy())
    return prev, np.concatenate([last_mapped, last_gone])


def _image_rows(ledger: pa.Table, images: pa.Table) -> np.ndarray:
    """The index row of each ledger row's image (source, image_id), -1 when it is not indexed."""
    out = np.full(ledger.num_rows, -1, dtype=np.int64)
    ledger_ids = np.asarray(pc.fill_null(ledger.column("image_id"), -1).to_numpy(zero_copy_only=False))
    image_ids = np.asarray(images.column("image_id").to_numpy(zero_copy_only=False))
    for src in pc.unique(images.column("source")).to_pylist():
        mine = np.flatnonzero(as_bool(pc.equal(images.column("source"), src)))
        order = np.argsort(image_ids[mine], kind="stable")
        ids = image_ids[mine][order]
        want = np.flatnonzero(as_bool(pc.equal(ledger.column("source"), src)))
        if not len(ids) or not len(want):
            continue
        pos = np.searchsorted(ids, ledger_ids[want]).clip(0, len(ids) - 1)
        hit = ids[pos] == ledger_ids[want]
        out[want[hit]] = mine[order[pos[hit]]]
    return out


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
    for lo in range(0, n, SLICE):
        cur = images.column("image_uri").take(pa.array(idx[lo:lo + SLICE]))
        old = ledger.column("image_uri").take(pa.array(rows[lo:lo + SLICE]))
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
    for lo in range(0, len(sel), SLICE):
        s = sel[lo:lo + SLICE]
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
