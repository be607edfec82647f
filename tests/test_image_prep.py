"""One image preparation per image: the stream's resize is the only one before the engine.

The real `Qwen2VLImageProcessor` from transformers (what vLLM runs engine-side for Qwen2-VL,
Qwen2.5-VL and, with 16 px patches, Qwen3-VL) must find the stream's image already on its patch grid:
its output with resizing on equals its output with resizing off. Needs the torchvision shim
(scripts/torchvision_shim.py), as every vision test here.
"""

from __future__ import annotations

import io
import os

import numpy as np
import pytest
import yaml
from PIL import Image

from pipelines.build.stages.images import decode_image, fit_to_budget
from teachers.vllm_rows import IMAGES, image_uuid

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SIZES = [(640, 480), (480, 640), (640, 427), (1600, 1200), (333, 500), (4000, 3000), (120, 40), (57, 57)]


def _teacher(name: str) -> dict:
    with open(os.path.join(ROOT, "configs", "teachers", name)) as fh:
        return yaml.safe_load(fh)["teacher"]


def _jpeg(w: int, h: int, seed: int = 0) -> bytes:
    rng = np.random.default_rng(seed)
    img = Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8), "RGB")
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=80)
    return buf.getvalue()


@pytest.mark.unit
def test_grid_fit_on_multiples_of_the_factor_within_budget():
    assert fit_to_budget(640, 480, 1003520, 28, 3136) == (644, 476)
    assert fit_to_budget(640, 480, 1048576, 32, 65536) == (640, 480)
    for w, h in SIZES:
        for factor, lo, hi in ((28, 3136, 1003520), (32, 65536, 1048576), (28, 3136, 224 * 224)):
            tw, th = fit_to_budget(w, h, hi, factor, lo)
            assert tw % factor == 0 and th % factor == 0
            assert lo <= tw * th <= hi
            assert abs(tw / th - w / h) / (w / h) < 0.35  # aspect kept up to the grid step
    assert fit_to_budget(1600, 1200, 1003520) == (1156, 867)  # factor 1: the old rule, unchanged


@pytest.mark.unit
@pytest.mark.parametrize("name,patch", [("qwen2_5_vl_7b.yaml", 14), ("qwen3_vl_8b.yaml", 16)])
def test_engine_processor_does_not_resize_again(name, patch):
    """Fails on the old fit_to_budget (no grid): 640x480 reached the processor as 640x480 and was
    resized again to 644x476."""
    from transformers import Qwen2VLImageProcessor

    t = _teacher(name)
    assert t["patch_size"] == patch
    mm = t["vllm"]["engine_kwargs"]["mm_processor_kwargs"]
    assert mm["max_pixels"] == t["max_pixels"]  # the engine's bounds are the stream's bounds
    assert mm.get("min_pixels", t["min_pixels"]) == t["min_pixels"]
    proc = Qwen2VLImageProcessor(patch_size=patch, merge_size=t["merge_size"], min_pixels=t["min_pixels"],
                                 max_pixels=t["max_pixels"])
    factor = patch * t["merge_size"]
    for i, (w, h) in enumerate(SIZES):
        data, tw, th, err, _ = decode_image(_jpeg(w, h, i), w, h, 10**9, True, t["max_pixels"], factor,
                                            t["min_pixels"])
        assert err is None
        img = Image.open(io.BytesIO(data))
        assert img.size == (tw, th)
        resized = proc(images=[img], return_tensors="np")
        as_is = proc(images=[img], do_resize=False, return_tensors="np")
        # The processor's own resize target is the image's size: nothing left to resize.
        assert resized["image_grid_thw"].tolist() == [[1, th // patch, tw // patch]], (w, h)
        np.testing.assert_array_equal(resized["pixel_values"], as_is["pixel_values"])


@pytest.mark.unit
def test_image_already_on_grid_is_not_reencoded():
    data = _jpeg(644, 476)
    out, tw, th, err, _ = decode_image(data, 644, 476, 10**9, True, 1003520, 28, 3136)
    assert (out, tw, th, err) == (data, 644, 476, None)  # the file's own bytes, no second encode
    out2, tw2, th2, _, _ = decode_image(_jpeg(640, 480), 640, 480, 10**9, True, 1003520, 28, 3136)
    assert (tw2, th2) == (644, 476) and out2[:3] == b"\xff\xd8\xff"  # resized once, encoded once


@pytest.mark.unit
def test_units_of_an_image_share_one_decode():
    a, b = _jpeg(64, 48, 1), _jpeg(64, 48, 2)
    misses = IMAGES.misses
    got = [IMAGES.get(x) for x in (a, a, a, b, a)]
    assert IMAGES.misses - misses == 2  # one decode per distinct image, whatever its units
    assert got[0][1] is got[1][1] is got[4][1]  # the same pixels object, shared by reference
    assert got[0][0] == image_uuid(a) != image_uuid(b) == got[3][0]
    assert image_uuid(a) == image_uuid(bytes(a))  # stable across processes: a content digest
    assert got[3][1].tobytes() == Image.open(io.BytesIO(b)).convert("RGB").tobytes()


@pytest.mark.unit
def test_gpu_bench_model_shape_is_qwen25_vl_7b(tmp_path):
    """bench/gpu.py's offline model: transformers reads it as the published 7B shape, and its
    special token ids are the offline tokenizer's."""
    from transformers import AutoConfig, AutoTokenizer

    from bench.gpu import build_qwen25_vl_7b_shape

    path = build_qwen25_vl_7b_shape(str(tmp_path / "m"))
    cfg = AutoConfig.from_pretrained(path)
    text = cfg.get_text_config()
    assert (text.hidden_size, text.num_hidden_layers, text.vocab_size) == (3584, 28, 152064)
    assert (cfg.vision_config.depth, cfg.vision_config.out_hidden_size) == (32, 3584)
    tok = AutoTokenizer.from_pretrained(path)
    assert cfg.image_token_id == tok.convert_tokens_to_ids("<|image_pad|>")
