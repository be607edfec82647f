"""The plan's compact representations give the same values as the plain ones (issue 14: driver
memory). Speed/memory itself is measured by bench/scale.py --plan-only."""

from __future__ import annotations

import hashlib
import os

import pyarrow as pa
import pytest

from pipelines.build.unit_keys import KeyMap, KeySet, digest_to_hex, hex_to_digest
from pipelines.core.keys import generation_key, generation_key_digests, image_identity
from pipelines.storage import fs as storage


def _hex(i: int) -> str:
    return hashlib.sha256(str(i).encode()).hexdigest()


@pytest.mark.unit
def test_key_digests_equal_generation_key():
    idents = ["missing", _hex(1), 'q"uo\\te', "é✓", ""]
    anns = [_hex(2), "x\ny", _hex(3), "a", "\u0000"]
    for task, ph, th in [("reasoning", _hex(4), _hex(5)), ("part", "", "t\"h")]:
        d = generation_key_digests(idents, anns, task, ph, th)
        assert [d[32 * k:32 * k + 32].hex() for k in range(len(idents))] == \
            [generation_key(i, a, task, ph, th) for i, a in zip(idents, anns, strict=True)]


@pytest.mark.unit
def test_hex_digest_round_trip():
    keys = [_hex(i) for i in range(7)]
    d = hex_to_digest(pa.chunked_array([keys[:3], [None], keys[3:], ["not-a-key"], [keys[0].upper()]]))
    assert d.type == pa.binary(32) and d.null_count == 1
    assert d[0].as_py() == bytes.fromhex(keys[0]) and d[8].as_py() == b"\xff" * 32
    assert d[9].as_py() == bytes.fromhex(keys[0])
    assert digest_to_hex(hex_to_digest(pa.array(keys)).slice(2)).to_pylist() == keys[2:]
    assert digest_to_hex(pa.array([], pa.binary(32))).to_pylist() == []


@pytest.mark.unit
def test_keymap_is_the_dict_it_replaces():
    keys = [_hex(i) for i in range(50)]
    want = {k: f"b{i % 3}" for i, k in enumerate(keys)}
    m = KeyMap(hex_to_digest(pa.array(list(want))), pa.array(list(want.values())))
    assert m == want and len(m) == 50 and set(m) == set(want)
    assert m.get(keys[4]) == "b1" and m.get(_hex(99)) is None and m.get(_hex(99), "x") == "x"
    assert keys[7] in m and _hex(99) not in m and None not in m
    assert m.batch_of(pa.array([keys[2], None, "zz", keys[3]])).to_pylist() == ["b2", None, None, "b0"]
    assert m.isin(pa.array([keys[1], _hex(77)])).tolist() == [True, False]
    s = KeySet(hex_to_digest(pa.array(keys[:5])))
    assert s - {keys[0], keys[1]} == set(keys[2:5]) and len(KeySet(hex_to_digest(pa.array([], pa.string())))) == 0


@pytest.mark.unit
def test_list_identities_is_list_files(tmp_path):
    from pipelines.sources.resolve import list_identities

    root = tmp_path / "imgs"
    (root / "sub" / "deeper").mkdir(parents=True)
    for i, rel in enumerate(["a.jpg", "sub/b.jpg", "sub/deeper/c.jpg", ".hidden.jpg"]):
        (root / rel).write_bytes(b"x" * (i + 1))
    os.symlink(root / "a.jpg", root / "link.jpg")
    os.symlink(root / "sub", root / "linkdir")
    os.symlink(root / "gone.jpg", root / "broken.jpg")
    spec = storage.StorageSpec()
    want = {u: image_identity(info) for u, info in storage.list_files(str(root), spec).items()}
    uris, values = list_identities(str(root), spec, chunk=2)
    assert dict(zip(uris.to_pylist(), values.to_pylist(), strict=True)) == want and len(want) == 4
    assert list_identities(str(tmp_path / "nothing"), spec)[0].to_pylist() == []


def _plan_inputs(tmp_path, num_images: int, seed: int):
    """The sample dataset's index, every task for every source, fixed prompt hashes, an empty ledger."""
    from pipelines.sources.resolve import SourceSpec, load_images
    from pipelines.sources.sample_data import ensure_sample_dataset
    from pipelines.storage.output import LEDGER_COLUMNS
    from schemas.columns import RAW_SCHEMA, TASKS

    made = ensure_sample_dataset(str(tmp_path / "s"), num_images=num_images, seed=seed)
    specs = [SourceSpec(m["name"], m["format"], m["annotations"], m["images"], []) for m in made]
    imgs = load_images(specs, set(), None, storage.StorageSpec())
    tasks = {s.name: list(TASKS) for s in specs}
    prompts = {t: f"p-{t}" for t in TASKS}
    empty = RAW_SCHEMA.empty_table().select(LEDGER_COLUMNS).append_column("batch", pa.array([], pa.string()))
    return imgs, tasks, prompts, empty


@pytest.mark.unit
def test_plan_with_arrow_identities_equals_plan_with_a_dict(tmp_path):
    from pipelines.build.plan import make_plan

    imgs, tasks, prompts, empty = _plan_inputs(tmp_path, 8, 3)
    a = make_plan(imgs.images, tasks, imgs.identities, prompts, "T", empty)
    b = make_plan(imgs.images, tasks, dict(imgs.identities), prompts, "T", empty)
    assert a.work.equals(b.work) and a.units_total == b.units_total > 0
    assert "missing" not in {u["image_identity"] for w in a.work.to_pylist() for u in w["units"]}
    for w in a.work.to_pylist():  # the key values are the ones the old per-unit code wrote
        for u in w["units"]:
            assert u["gen_key"] == generation_key(u["image_identity"], u["ann_hash"], u["task"],
                                                  prompts[u["task"]], "T")


@pytest.mark.unit
def test_cached_index_keeps_category_names_compact_with_the_same_values(tmp_path):
    import pyarrow.parquet as pq

    from pipelines.sources.resolve import SourceSpec, index_cache_uri, read_source_cached
    from pipelines.sources.sample_data import ensure_sample_dataset
    from schemas.columns import IMAGE_SCHEMA

    m = next(m for m in ensure_sample_dataset(str(tmp_path / "s"), num_images=8, seed=3) if m["format"] == "coco")
    spec, store = SourceSpec(m["name"], m["format"], m["annotations"], m["images"], []), storage.StorageSpec()
    cache = str(tmp_path / "cache")
    fresh = read_source_cached(spec, store, cache)  # parsed, then cached
    cached = read_source_cached(spec, store, cache)
    plain = pq.read_table(index_cache_uri(spec, store, cache))  # the file keeps plain strings
    assert plain.schema.field("absent_categories").type == pa.list_(pa.string())
    for t in (fresh, cached):
        assert pa.types.is_dictionary(t.schema.field("absent_categories").type.value_type)
        assert t.column("absent_categories").to_pylist() == plain.column("absent_categories").to_pylist()
        as_images = lambda x: x.select(IMAGE_SCHEMA.names).cast(IMAGE_SCHEMA)  # noqa: E731
        assert as_images(t).equals(as_images(plain))
    assert sum(len(x) for x in plain.column("absent_categories").to_pylist()) > 0


@pytest.mark.unit
def test_plan_against_a_ledger_counts_reuse_drops_and_reasons(tmp_path):
    from collections import Counter

    import pyarrow.compute as pc

    from pipelines.build.plan import make_plan

    imgs, tasks, prompts, empty = _plan_inputs(tmp_path, 10, 5)
    p1 = make_plan(imgs.images, tasks, imgs.identities, prompts, "T", empty, filter_version="F")
    rows = [{**u, "source": w["source"], "image_id": w["image_id"], "image_uri": w["image_uri"],
             "outcome": "accepted", "error_reason": None, "filter_version": "F", "batch": "b1"}
            for w in p1.work.to_pylist() for u in w["units"]]
    gone = (rows[0]["source"], rows[0]["image_id"])  # this image leaves the index
    retry = next(r for r in rows if (r["source"], r["image_id"]) != gone and r["task"] == "hallucination")
    retry.update(outcome="error", error_reason="teacher:teacher_failed")
    ledger = pa.Table.from_pylist(rows, schema=empty.schema)
    keep = pc.invert(pc.and_(pc.equal(imgs.images.column("source"), gone[0]),
                             pc.equal(imgs.images.column("image_id"), gone[1])))
    p2 = make_plan(imgs.images.filter(keep), tasks, imgs.identities, {**prompts, "reasoning": "edited"}, "T",
                   ledger, filter_version="F")
    per_gone = Counter(r["task"] for r in rows if (r["source"], r["image_id"]) == gone)
    per_task = Counter(r["task"] for r in rows)
    reasoning = per_task["reasoning"] - per_gone["reasoning"]
    assert reasoning > 0 and per_gone["hallucination"] == 1
    assert p2.tasks["reasoning"].generate == reasoning and p2.tasks["reasoning"].reused == 0
    assert p2.tasks["reasoning"].generate_reasons == Counter({"prompt changed": reasoning})
    assert p2.tasks["reasoning"].drop_reasons == Counter({"prompt changed": reasoning,
                                                          "unit no longer planned": per_gone["reasoning"]})
    h = p2.tasks["hallucination"]
    assert h.generate == 1 and h.generate_reasons == Counter({"retry of an error": 1})
    assert h.reused == per_task["hallucination"] - 2
    assert h.drop_reasons == Counter({"retry of an error": 1, "unit no longer planned": 1})
    assert len(p2.reuse_from) == sum(t.reused for t in p2.tasks.values())
    assert set(p2.reuse_from.items()) <= {(r["gen_key"], "b1") for r in rows}
    assert not p2.unchanged and not p2.relocate
