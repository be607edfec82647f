"""Request keys: identical teacher requests computed once, the answer shared by every unit."""

from __future__ import annotations

import pyarrow as pa
import pytest

from pipelines.build.plan import split_for_stream
from pipelines.build.stats import batch_stats
from schemas.columns import IMAGE_WORK_SCHEMA, TEACHER_OUT_FIELDS, UNIT_SCHEMA
from teachers.requests import collapse_requests, duplicate_count, expand_followers
from teachers.vllm_rows import unit_request_key
from tests.test_vllm_teacher import jpeg, unit

pytestmark = pytest.mark.unit
TEACHER_NAMES = [n for n, _ in TEACHER_OUT_FIELDS]


def _key(row):
    return unit_request_key(row, "xyxy_resized", with_image=True)


def test_request_key_covers_what_the_teacher_sees():
    red = jpeg("red")
    a = unit(1, "reasoning", image=red)
    same = dict(a, gen_key="other", source="lvis", image_id=77, ann_hash="other-ann", image_uri="/x.jpg")
    assert _key(a) == _key(same)  # the unit's bookkeeping is not what the teacher sees
    assert _key(a) != _key(dict(a, teacher_image=jpeg("blue")))  # pixels
    assert _key(a) != _key(dict(a, task="part"))
    assert _key(a) != _key(dict(a, prompt_hash="p2"))
    assert _key(a) != _key(dict(a, teacher_hash="t2"))
    assert _key(a) != _key(unit(2, "reasoning", image=red))  # another object table
    # a text teacher never sees the image: the pixels are not in its key
    text = unit_request_key(a, "xyxy", with_image=False)
    assert text == unit_request_key(dict(a, teacher_image=jpeg("blue")), "xyxy", with_image=False)


def test_collapse_then_expand_keeps_every_unit_and_shares_the_answer():
    red = jpeg("red")
    lead = unit(1, "reasoning", image=red)
    dup = dict(lead, gen_key="key-dup", source="lvis", image_id=5, ann_hash="lvis-ann")
    failed = dict(unit(1, "part", image=None), gen_key="key-failed", unit_error="missing_image")
    failed_too = dict(failed, gen_key="key-failed-2")
    other = unit(2, "reasoning", image=red)
    rows = [lead, failed, dup, other, failed_too]
    collapsed = collapse_requests(pa.Table.from_pylist(rows, schema=UNIT_SCHEMA), _key)
    assert collapsed.column("gen_key").to_pylist() == ["key-001", "key-failed", "key-002", "key-failed-2"]
    assert [len(f) for f in collapsed.column("followers").to_pylist()] == [1, 0, 0, 0]
    # the engine answers the leaders; expand gives every unit its row back
    answered = []
    for r in collapsed.to_pylist():
        r.update(response=f"answer of {r['gen_key']}", finish_reason="stop", teacher_error=None,
                 prompt_tokens=10, output_tokens=5)
        answered.append(r)
    out = {r["gen_key"]: r for r in expand_followers(answered, TEACHER_NAMES)}
    assert set(out) == {r["gen_key"] for r in rows}
    assert out["key-dup"]["response"] == "answer of key-001" and out["key-dup"]["shares_answer_of"] == "key-001"
    assert (out["key-dup"]["source"], out["key-dup"]["image_id"], out["key-dup"]["ann_hash"]) == ("lvis", 5, "lvis-ann")
    assert out["key-dup"]["output_tokens"] is None and out["key-001"]["output_tokens"] == 5
    assert out["key-failed"]["request_key"] is None  # never merged: it never reaches the engine
    assert pa.Table.from_pylist(list(out.values()), schema=UNIT_SCHEMA).num_rows == 5


def test_stats_count_requests_saved_not_calls():
    base = {"task": "reasoning", "teacher_error": None, "n_accepted": 1, "outcome": "accepted",
            "prompt_tokens": None, "output_tokens": None, "response": "{}"}
    s = batch_stats([dict(base, shares_answer_of=None), dict(base, shares_answer_of="k1")], [], [])["reasoning"]
    assert (s["teacher_calls"], s["requests_saved"], s["units"]) == (1, 1, 2)


def test_records_of_one_image_share_a_stream_block():
    """Fails on the old split (plain slices): the COCO and LVIS records of image A were 4 rows
    apart and landed in different blocks, so their identical requests were both sent."""
    def work_row(source: str, image_id: int, ident: str) -> dict:
        return {"source": source, "dataset_format": "coco", "image_id": image_id, "file_name": "x",
                "image_uri": f"/{ident}.jpg", "width": 1, "height": 1, "objects": [],
                "absent_categories": [], "not_exhaustive_categories": [], "image_error": None,
                "image_error_detail": None,
                "units": [{"gen_key": f"{source}-{image_id}", "task": "reasoning", "image_identity": ident,
                           "ann_hash": "a", "prompt_hash": "p", "teacher_hash": "t"}]}
    rows = [work_row("coco", i, f"img{i}") for i in range(4)] + [work_row("lvis", i, f"img{i}") for i in range(4)]
    blocks = split_for_stream(pa.Table.from_pylist(rows, schema=IMAGE_WORK_SCHEMA), 2)
    for b in blocks:
        idents = [u[0]["image_identity"] for u in b.column("units").to_pylist()]
        assert len(idents) == 2 and len(set(idents)) == 1  # both records of one image, together
    assert sum(b.num_rows for b in blocks) == 8
    assert duplicate_count(["a", None, "b", "a", "a"]) == (4, 2)


def test_unit_tables_are_still_sliced_plainly():
    """The re-check stream splits unit rows (no `units` column) with the same function."""
    rows = [unit(i, "reasoning") for i in range(5)]
    blocks = split_for_stream(pa.Table.from_pylist(rows, schema=UNIT_SCHEMA), 2)
    assert [b.num_rows for b in blocks] == [2, 2, 1]
