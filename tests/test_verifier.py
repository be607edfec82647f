"""Pure verifier pieces: prompt files, keys, requests, verdict parsing, log-prob scores, images."""

from __future__ import annotations

import io
import json
import math

import numpy as np
import pytest
from PIL import Image
from pycocotools import mask as mask_utils

from pipelines.build.stages.verify_images import overlay_and_crop, verifier_image_urls
from teachers.verifier import (
    VerifyPromptError,
    build_messages,
    judge_listener,
    judge_mask,
    load_verify_prompt,
    make_item,
    output_constraint,
    p_pass_from_logprobs,
    pair_key,
    redecide,
    verify_key,
)
from teachers.verify_backends import VerifyFileError, parse_verdicts

pytestmark = pytest.mark.unit
LISTENER = load_verify_prompt("listener")
JUDGE = load_verify_prompt("mask_judge")
W, H = 40, 30


def rle(box: tuple[int, int, int, int]) -> dict:
    m = np.zeros((H, W), np.uint8)
    m[box[1] : box[3], box[0] : box[2]] = 1
    return {"size": [H, W], "counts": mask_utils.encode(np.asfortranarray(m))["counts"].decode()}


OBJECTS = [
    {"ann_id": 11, "name": "dog", "is_part": False, "bbox": [0, 0, 10, 10], "iscrowd": False},
    {"ann_id": 12, "name": "dog", "is_part": False, "bbox": [20, 0, 10, 10], "iscrowd": False},
    {"ann_id": 13, "name": "cat", "is_part": False, "bbox": [0, 15, 10, 10], "iscrowd": False},
]
SAMPLE = {"sample_id": "s", "gen_key": "g", "task": "reasoning", "subtype": "knowledge", "instruction": "the cat",
          "answer": "ok", "target_ids": [13], "image_uri": "/x.png", "mask": rle((0, 15, 10, 25))}  # fmt: skip
IMAGE = {"objects": OBJECTS, "width": W, "height": H}


def test_prompt_files_load_with_hash_and_examples():
    assert LISTENER.kind == "listener" and len(LISTENER.examples) >= 3 and len(LISTENER.content_hash) == 64
    assert JUDGE.pass_verdicts == ("correct",) and "ambiguous" in JUDGE.verdicts


def test_bad_prompt_file_names_the_file(tmp_path):
    bad = tmp_path / "p.yaml"
    bad.write_text("kind: mask_judge\nsystem: s\nuser: u\nverdicts: [correct, wrong]\npass_verdicts: [fine]\n"
                   "examples: [{instruction: a, situation: b, response: correct}]\n")  # fmt: skip
    with pytest.raises(VerifyPromptError, match="p.yaml"):
        load_verify_prompt("mask_judge", str(bad))


def test_keys_change_with_verifier_prompt_and_content_only():
    pk = pair_key(SAMPLE)
    assert pk == pair_key(dict(SAMPLE, target_ids=[13], mask=None))  # mask follows from targets
    assert pk != pair_key(dict(SAMPLE, instruction="the kitty"))
    assert verify_key(pk, "v1", "p1") != verify_key(pk, "v1", "p2") != verify_key(pk, "v2", "p1")


def test_item_maps_targets_to_local_ids_and_listener_request():
    item = make_item(SAMPLE, IMAGE, "v", LISTENER.content_hash)
    assert item["expected_ids"] == [3] and item["local_ids"] == [1, 2, 3]
    msgs = build_messages(item, LISTENER, ["data:image/png;base64,AA"])
    assert msgs[0]["role"] == "system" and msgs[-1]["content"][0]["type"] == "image_url"
    text = msgs[-1]["content"][-1]["text"]
    assert '"the cat"' in text and '"category": "cat"' in text and "[13]" not in text  # no answer leaked
    assert len([m for m in msgs if m["role"] == "assistant"]) == len(LISTENER.examples)
    schema = json.loads(output_constraint(item, LISTENER)["json"])
    assert schema["properties"]["target_ids"]["items"]["enum"] == [1, 2, 3]
    assert output_constraint(item, JUDGE) == {"choice": list(JUDGE.verdicts)}


@pytest.mark.parametrize(
    "answer,expected,passed,verdict",
    [
        ('{"target_ids": [3]}', [3], True, "match"),
        ('```json\n{"target_ids": [2, 1]}\n```', [1, 2], True, "match"),
        ('{"target_ids": [1, 2]}', [1], False, "ambiguous"),
        ('{"target_ids": [1]}', [1, 2], False, "incomplete"),
        ('{"target_ids": []}', [3], False, "no_match"),
        ('{"target_ids": [3]}', [], False, "found_object"),
        ('{"target_ids": []}', [], True, "match"),
        ('{"target_ids": [2]}', [3], False, "other_target"),
        ("the cat", [3], None, "unparseable"),
    ],
)
def test_listener_verdicts(answer, expected, passed, verdict):
    v = judge_listener(answer, expected)
    assert (v.passed, v.verdict) == (passed, verdict)


def test_mask_judge_verdict_word_then_threshold():
    assert judge_mask("correct", JUDGE, None, 0.5).passed is True
    assert judge_mask('"ambiguous"', JUDGE, None, 0.5).passed is False
    assert judge_mask('{"verdict": "correct"}', JUDGE, None, 0.5).passed is True
    assert judge_mask("maybe", JUDGE, None, 0.5).passed is None
    low = judge_mask("correct", JUDGE, 0.3, 0.5)  # the score decides when there is one
    assert low.passed is False and low.score == 0.3
    assert judge_mask("incomplete", JUDGE, 0.7, 0.5).passed is True
    assert redecide({"passed": True, "score": 0.7}, JUDGE, 0.8) is False  # new threshold, no new call
    assert redecide({"passed": True, "score": None}, JUDGE, 0.8) is True


def test_p_pass_from_first_token_logprobs():
    first = {
        10: {"decoded_token": "correct", "logprob": math.log(0.6)},
        11: {"decoded_token": "amb", "logprob": math.log(0.2)},
        12: {"decoded_token": "in", "logprob": math.log(0.1)},
        13: {"decoded_token": "zzz", "logprob": math.log(0.1)},  # no verdict starts with it: ignored
    }
    assert p_pass_from_logprobs(first, JUDGE) == pytest.approx(0.6 / 0.9)
    assert p_pass_from_logprobs({}, JUDGE) is None


def test_replay_verdict_file_errors_name_the_line(tmp_path):
    ok = parse_verdicts(b'{"verify_key": "a", "response": "correct", "p_pass": 0.9}\n\n', "f.jsonl")
    assert ok == {"a": {"response": "correct", "p_pass": 0.9}}
    with pytest.raises(VerifyFileError, match="f.jsonl line 2"):
        parse_verdicts(b'{"verify_key": "a", "response": "x"}\n{"verify_key": 3}\n', "f.jsonl")
    # Not UTF-8 / not an object: the file is named like every other malformed line (was a bare
    # UnicodeDecodeError naming nothing).
    with pytest.raises(VerifyFileError, match="f.jsonl: not UTF-8"):
        parse_verdicts(b'{"verify_key": "a", "response": "\xff"}\n', "f.jsonl")
    with pytest.raises(VerifyFileError, match="f.jsonl line 1: expected a JSON object"):
        parse_verdicts(b'["a"]\n', "f.jsonl")
    with pytest.raises(VerifyFileError, match="probability"):
        parse_verdicts(b'{"verify_key": "a", "response": "x", "p_pass": 2}\n', "f.jsonl")


def test_overlay_paints_mask_and_crop_zooms():
    img = Image.new("RGB", (W, H), (0, 0, 255))
    painted, crop = overlay_and_crop(img, SAMPLE["mask"], 0.25)
    arr = np.asarray(painted)
    assert arr[20, 5, 0] > 100 and arr[5, 30, 0] == 0  # red inside the mask only
    assert crop.size[0] < W or crop.size[1] < H
    same, same2 = overlay_and_crop(img, {"size": [H, W], "counts": rle((0, 0, 0, 0))["counts"]}, 0.25)
    assert same is img and same2 is img  # empty mask (hallucination): the photo twice
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    item = make_item(SAMPLE, IMAGE, "v", "p")
    assert len(verifier_image_urls(buf.getvalue(), item, "mask_judge", 10_000, 0.25)) == 2
    assert len(verifier_image_urls(buf.getvalue(), item, "listener", 10_000, 0.25)) == 1


@pytest.mark.parametrize(
    "overrides,message",
    [
        (["verify.backend=replay"], "verify.verdicts"),
        (["verify.backend=vllm"], "verify.vllm.model_source"),
        (["verify.threshold=1.5"], "threshold"),
        (["verify.kind=mask_judge", "verify.mode=text"], "mode=vision"),
    ],
)
def test_verify_config_errors_name_the_key(overrides, message):
    from pipelines.config import ConfigError, load_config

    with pytest.raises(ConfigError, match=message):
        load_config([], overrides)
    assert str(load_config([], []).verify.backend) == "none"  # off by default
