"""The replay teacher: JSONL responses looked up by gen_key (found / missing / bad lines)."""

from __future__ import annotations

import hashlib
import json

import pyarrow as pa
import pytest

from pipelines.storage.fs import StorageSpec
from schemas.columns import TEACHER_OUT_FIELDS, UNIT_SCHEMA
from teachers.replay import (
    NO_RESPONSE,
    ReplayFileError,
    ReplayTeacher,
    export_request_key,
    parse_responses,
    respond_batch,
)

ANSWER = json.dumps({"pairs": [{"instruction": "Segment the dog.", "answer": "The dog.", "target_ids": [1],
                                "subtype": "knowledge"}]})


def units(*keys: str, failed: tuple[str, ...] = ()) -> pa.Table:
    rows = []
    for i, k in enumerate(keys):
        rows.append({
            "gen_key": k, "source": "s", "dataset_format": "coco", "image_id": i, "image_uri": f"/i/{i}.jpg",
            "width": 10, "height": 10, "task": "reasoning", "objects": [], "absent_categories": [],
            "not_exhaustive_categories": [], "image_identity": "x", "ann_hash": "a", "prompt_hash": "p",
            "teacher_hash": "t", "teacher_image": None, "teacher_width": None, "teacher_height": None,
            "unit_error": "read_failed" if k in failed else None, "unit_error_detail": None,
        })
    return pa.Table.from_pylist(rows, schema=UNIT_SCHEMA)


def write_jsonl(path, records) -> str:
    path.write_text("\n".join(r if isinstance(r, str) else json.dumps(r) for r in records) + "\n")
    return str(path)


def test_found_missing_and_failed_units(tmp_path):
    uri = write_jsonl(tmp_path / "r.jsonl", [
        {"gen_key": "k1", "response": ANSWER},
        {"gen_key": "k2", "response": "{\"pairs\": [", "finish_reason": "length", "output_tokens": 7},
        "",  # blank lines are fine
    ])
    teacher = ReplayTeacher(uri, StorageSpec())
    out = teacher.respond_table(units("k1", "k2", "k3", "k4", failed=("k4",)))
    rows = {r["gen_key"]: r for r in out.to_pylist()}
    assert rows["k1"]["response"] == ANSWER and rows["k1"]["finish_reason"] == "stop"
    assert rows["k1"]["teacher_error"] is None
    assert rows["k2"]["finish_reason"] == "length" and rows["k2"]["output_tokens"] == 7
    assert rows["k3"]["response"] is None and rows["k3"]["finish_reason"] == "error"
    assert rows["k3"]["teacher_error"] == NO_RESPONSE and NO_RESPONSE.startswith("no_response:")
    assert all(rows["k4"][n] is None for n, _ in TEACHER_OUT_FIELDS)  # failed upstream: untouched
    # every unit column survives, teacher columns have their exact types
    assert out.schema.names[: len(UNIT_SCHEMA)] == UNIT_SCHEMA.names
    for name, typ in TEACHER_OUT_FIELDS:
        assert out.schema.field(name).type == typ


def test_identity_is_the_source_and_prompt_settings_not_the_file(tmp_path):
    # Keys must be known at export time, before the answers exist: the file is not in the identity.
    uri = write_jsonl(tmp_path / "r.jsonl", [{"gen_key": "k1", "response": ANSWER}])
    uri2 = write_jsonl(tmp_path / "r2.jsonl", [{"gen_key": "k1", "response": ANSWER + " "}])
    settings = {"mode": "vision", "box_format": "xyxy", "pairs_per_unit": 3, "max_pixels": 1000}
    a = ReplayTeacher(uri, StorageSpec(), source="api-batch-1", prompt_settings=settings)
    assert a.identity() == {"backend": "replay", "model": "api-batch-1", **settings}
    assert ReplayTeacher(uri2, StorageSpec(), source="api-batch-1", prompt_settings=settings).identity_hash() \
        == a.identity_hash()
    assert ReplayTeacher(uri, StorageSpec(), source="api-batch-2", prompt_settings=settings).identity_hash() \
        != a.identity_hash()
    other = dict(settings, box_format="xyxy_1000")
    assert ReplayTeacher(uri, StorageSpec(), source="api-batch-1", prompt_settings=other).identity_hash() \
        != a.identity_hash()
    a.validate()
    with open(uri, "rb") as fh:
        assert a.sha256 == hashlib.sha256(fh.read()).hexdigest()


@pytest.mark.parametrize("line, message", [
    ("{not json", "line 2: not a JSON object"),
    ("[1, 2]", "line 2: expected a JSON object"),
    ('{"response": "x"}', "line 2: 'gen_key'"),
    ('{"gen_key": "k9", "response": {"pairs": []}}', "line 2: 'response' must be a string"),
    ('{"gen_key": "k9", "response": "x", "finish_reason": "eos"}', "line 2: 'finish_reason'"),
    ('{"gen_key": "k1", "response": "different"}', "line 2: gen_key k1 appears twice"),
])
def test_bad_lines_name_file_and_line(tmp_path, line, message):
    uri = write_jsonl(tmp_path / "bad.jsonl", [{"gen_key": "k1", "response": ANSWER}, line])
    with pytest.raises(ReplayFileError) as err:
        ReplayTeacher(uri, StorageSpec()).validate()
    assert str(err.value).startswith(uri) and message in str(err.value)


def test_missing_file_is_a_clear_error(tmp_path):
    with pytest.raises(ReplayFileError, match="not found"):
        ReplayTeacher(str(tmp_path / "nope.jsonl"), StorageSpec()).validate()


def test_respond_batch_is_pure():
    table = units("a", "b")
    out = respond_batch(table, {"a": {"response": ANSWER, "finish_reason": "stop", "prompt_tokens": None,
                                      "output_tokens": None}})
    assert out.column("response").to_pylist() == [ANSWER, None]
    assert parse_responses(b'{"gen_key": "a", "response": "x"}\n', "mem") == {
        "a": {"response": "x", "finish_reason": "stop", "prompt_tokens": None, "output_tokens": None}}


def test_reads_from_s3(s3_bucket):
    import boto3

    endpoint, bucket = s3_bucket
    body = json.dumps({"gen_key": "k1", "response": ANSWER}).encode() + b"\n"
    boto3.client("s3", endpoint_url=endpoint).put_object(Bucket=bucket, Key="replay/r.jsonl", Body=body)
    teacher = ReplayTeacher(f"s3://{bucket}/replay/r.jsonl", StorageSpec(endpoint_url=endpoint))
    teacher.validate()
    assert teacher.sha256 == hashlib.sha256(body).hexdigest()
    assert teacher.respond_table(units("k1")).column("response").to_pylist() == [ANSWER]


def test_attach_through_ray(ray_session, tmp_path):
    import ray.data

    uri = write_jsonl(tmp_path / "r.jsonl", [{"gen_key": "k1", "response": ANSWER}])
    out = ReplayTeacher(uri, StorageSpec()).attach(ray.data.from_arrow(units("k1", "k2"))).take_all()
    got = {r["gen_key"]: (r["response"], r["teacher_error"]) for r in out}
    assert got == {"k1": (ANSWER, None), "k2": (None, NO_RESPONSE)}


SETTINGS = {"mode": "vision", "box_format": "xyxy", "pairs_per_unit": 3, "max_pixels": 1000, "patch_size": 0,
            "merge_size": 1, "min_pixels": 0}


def _same_image(table: pa.Table) -> pa.Table:
    """Every unit a record of one file (e.g. COCO + LVIS of the same image): one request."""
    return table.set_column(table.schema.get_field_index("image_uri"), "image_uri",
                            pa.array(["/i/same.jpg"] * table.num_rows, pa.string()))


@pytest.mark.unit
def test_one_request_answer_reaches_every_unit_of_the_request(tmp_path):
    table = _same_image(units("a", "b", "c"))
    rk = export_request_key(table.to_pylist()[0], SETTINGS)
    assert {export_request_key(r, SETTINGS) for r in table.to_pylist()} == {rk}
    other = export_request_key(units("a").to_pylist()[0], SETTINGS)  # another file: another request
    assert other != rk
    uri = write_jsonl(tmp_path / "r.jsonl", [{"request_key": rk, "response": ANSWER, "output_tokens": 5}])
    out = ReplayTeacher(uri, StorageSpec(), prompt_settings=SETTINGS).respond_table(table).to_pylist()
    assert [r["response"] for r in out] == [ANSWER] * 3
    assert [r["shares_answer_of"] for r in out] == [None, "a", "a"]  # paid once
    assert [r["output_tokens"] for r in out] == [5, None, None]
    assert {r["request_key"] for r in out} == {rk}
    # A text teacher never sees the image: same object table and task = same request, any file.
    text = dict(SETTINGS, mode="text")
    assert export_request_key(units("a").to_pylist()[0], text) == export_request_key(table.to_pylist()[0], text)


@pytest.mark.unit
def test_unit_lines_come_first_and_are_shared_with_their_request(tmp_path):
    table = _same_image(units("a", "b", "c", "d", failed=("d",)))
    own = ANSWER.replace("dog", "cat")
    uri = write_jsonl(tmp_path / "r.jsonl", [{"gen_key": "b", "response": own}])
    out = ReplayTeacher(uri, StorageSpec(), prompt_settings=SETTINGS).respond_table(table).to_pylist()
    # b's line (e.g. an answer keyed by the first unit of an exported request) serves a and c too;
    # d failed upstream: never answered.
    assert [r["response"] for r in out] == [own, own, own, None]
    assert [r["shares_answer_of"] for r in out] == ["b", None, "b", None]
    # Without prompt settings there is no request to rebuild: unit lines only.
    plain = ReplayTeacher(uri, StorageSpec()).respond_table(table).to_pylist()
    assert [r["response"] for r in plain] == [None, own, None, None]


@pytest.mark.unit
def test_request_lines_are_checked_like_unit_lines(tmp_path):
    uri = write_jsonl(tmp_path / "r.jsonl", [{"request_key": "r1", "response": "x"},
                                             {"request_key": "r1", "response": "y"}])
    with pytest.raises(ReplayFileError, match="line 2: request_key r1 appears twice"):
        ReplayTeacher(uri, StorageSpec()).validate()
