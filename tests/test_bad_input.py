"""Bad input: every kind becomes an error row with its reason code, odd-but-valid images work, and
not one good row is lost (compared with a build of the good images alone).

Unit tests of the image conversions first (no Ray), then one real build over the corpus of
tests/bad_corpus.py, then the same corpus on S3 behind a logging proxy (no read outside the prefix).
"""

from __future__ import annotations

import io
import json
import os
import re
import time
from pathlib import Path
from typing import Any

import boto3
import numpy as np
import pyarrow as pa
import pytest
import yaml
from PIL import Image

from pipelines.build.stages.images import DECODE_REASON_CODES, READ_REASON_CODES, decode_image, to_rgb
from pipelines.build_groundv import main
from pipelines.sources.readers import REASON_CODES
from tests import bad_corpus
from tests.bad_corpus import Corpus, make_corpus
from tests.dataset_checks import latest_manifest, outcomes_by_unit, read_kind
from tests.flaky_proxy import FlakyProxy

ROOT = Path(__file__).resolve().parent.parent
LIMIT = 50_000_000  # stream.max_image_pixels default
BUDGET = 1_003_520  # teacher.max_pixels default


def _rgb_of(teacher_jpeg: bytes) -> np.ndarray:
    with Image.open(io.BytesIO(teacher_jpeg)) as im:
        assert im.mode == "RGB"
        return np.asarray(im).astype(np.int32)


def _blocks(w: int = 96, h: int = 64) -> Image.Image:
    """Flat colour blocks (JPEG-friendly): red, green, blue, grey, white, black."""
    arr = np.zeros((h, w, 3), dtype=np.uint8)
    colours = [(200, 30, 30), (30, 140, 50), (30, 60, 200), (128, 128, 128), (250, 250, 250), (20, 20, 20)]
    for i, c in enumerate(colours):
        arr[:, i * w // 6:(i + 1) * w // 6] = c
    return Image.fromarray(arr, "RGB")


# ------------------------------------------------------------------ to_rgb: exact values per mode --
def _img(mode: str, value: Any, size: tuple[int, int] = (3, 2)) -> Image.Image:
    if mode in ("I;16", "I", "F"):
        dtype = {"I;16": np.uint16, "I": np.int32, "F": np.float32}[mode]
        img = Image.fromarray(np.full((size[1], size[0]), value, dtype=dtype))
        assert img.mode == mode
        return img
    return Image.new(mode, size, value)


@pytest.mark.parametrize(
    ("mode", "value", "want"),
    [
        ("L", 77, (77, 77, 77)),
        ("1", 1, (255, 255, 255)),
        ("1", 0, (0, 0, 0)),
        ("I;16", 65535, (255, 255, 255)),  # 16-bit is scaled, not clipped
        ("I;16", 128 * 257, (128, 128, 128)),
        ("I;16", 255, (0, 0, 0)),  # 255 / 65535 of full scale is black, not "255"
        ("I", 65535, (255, 255, 255)),  # 32-bit with 16-bit content: scaled
        ("I", 200, (200, 200, 200)),  # 32-bit holding 8-bit values: kept
        ("I", -5, (0, 0, 0)),
        ("F", 300.0, (255, 255, 255)),
        ("F", 99.6, (99, 99, 99)),
        ("RGBA", (10, 20, 30, 255), (10, 20, 30)),
        ("RGBA", (10, 20, 30, 0), (255, 255, 255)),  # transparent -> white, not black
        ("RGBA", (0, 0, 0, 128), (127, 127, 127)),
        ("LA", (40, 255), (40, 40, 40)),
        ("LA", (40, 0), (255, 255, 255)),
        ("CMYK", (0, 0, 0, 0), (255, 255, 255)),
        ("CMYK", (255, 0, 0, 0), (0, 255, 255)),
        ("CMYK", (0, 0, 0, 255), (0, 0, 0)),
        ("RGB", (1, 2, 3), (1, 2, 3)),
    ],
)
def test_to_rgb_values(mode: str, value: Any, want: tuple[int, int, int]) -> None:
    out = to_rgb(_img(mode, value))
    assert out.mode == "RGB" and out.size == (3, 2)
    assert np.asarray(out).reshape(-1, 3).tolist() == [list(want)] * 6


def test_to_rgb_palette() -> None:
    p = Image.new("P", (4, 1))
    p.putpalette([0, 0, 0, 200, 30, 30, 30, 60, 200] + [0] * (256 * 3 - 9))
    p.putpixel((0, 0), 1)
    p.putpixel((1, 0), 2)
    assert np.asarray(to_rgb(p)).reshape(-1, 3).tolist()[:2] == [[200, 30, 30], [30, 60, 200]]
    p.info["transparency"] = 2  # index 2 transparent -> white
    assert np.asarray(to_rgb(p)).reshape(-1, 3).tolist()[:2] == [[200, 30, 30], [255, 255, 255]]


# ------------------------------------------------------------------ decode_image: real files ------
def _expected_rgb(kind: str, src: Image.Image) -> np.ndarray:
    arr = np.asarray(src).astype(np.int32)
    if kind in ("png16_gray", "grayscale_jpeg"):
        g = np.asarray(src.convert("L")).astype(np.int16)
        return np.repeat(g[:, :, None], 3, axis=2).astype(np.int32)
    if kind == "rgba_png":
        out = arr.copy()
        band = src.width // 3
        out[:, :band] = (arr[:, :band] * 96 + 255 * (255 - 96) + 127) // 255
        return out
    return arr


@pytest.mark.parametrize(
    ("kind", "make", "tolerance"),
    [
        ("cmyk_jpeg", bad_corpus.cmyk_jpeg, 4.0),
        ("png16_gray", bad_corpus.gray16_png, 0.0),
        ("png16_rgb", lambda im: bad_corpus.png16_rgb(np.asarray(im)), 0.0),
        ("grayscale_jpeg", lambda im: bad_corpus.encode(im.convert("L"), "JPEG", quality=95), 4.0),
        ("palette_png", bad_corpus.palette_png, 0.0),  # 6 colours: the palette is exact
        ("rgba_png", bad_corpus.rgba_png, 0.0),
        ("exif_stored", lambda im: bad_corpus.with_exif_orientation(im, 6), 4.0),
    ],
)
def test_decode_converts_correctly(kind: str, make: Any, tolerance: float) -> None:
    src = _blocks()
    data = make(src)
    jpeg, tw, th, err, detail = decode_image(data, src.width, src.height, LIMIT, True, BUDGET)
    assert err is None and detail is None and (tw, th) == src.size
    got = _rgb_of(jpeg)
    want = _expected_rgb(kind, src)
    # The teacher image is re-encoded as JPEG q90: allow its noise on top of the format's own.
    mean_err = float(np.abs(got - want).mean())
    assert mean_err <= tolerance + 2.5, f"{kind}: mean abs error {mean_err:.2f}"
    # Block centres are flat: their colour must be right to within a few levels.
    for i in range(6):
        x = int((i + 0.5) * src.width / 6)
        assert np.abs(got[src.height // 2, x] - want[src.height // 2, x]).max() <= tolerance + 6, (kind, i)


def test_exif_orientation_is_never_applied() -> None:
    src = _blocks(96, 64)
    # Annotated in stored order (COCO's convention): accepted, and the teacher sees the stored pixels,
    # re-encoded without the EXIF tag, i.e. the frame the masks are in.
    stored = bad_corpus.with_exif_orientation(src, 6)
    with Image.open(io.BytesIO(stored)) as im:
        assert im.getexif().get(0x0112) == 6 and im.size == (96, 64)
    jpeg, tw, th, err, _ = decode_image(stored, 96, 64, LIMIT, True, BUDGET)
    assert err is None and (tw, th) == (96, 64)
    with Image.open(io.BytesIO(jpeg)) as im:
        assert im.getexif().get(0x0112) is None
    got = _rgb_of(jpeg)
    assert np.abs(got[32, 8] - np.array([200, 30, 30])).max() <= 8  # red block still on the left
    # Annotated on the displayed (rotated) image: width/height swapped -> refused, never misaligned.
    rotated = bad_corpus.with_exif_orientation(src.transpose(Image.Transpose.ROTATE_90), 6)
    _, _, _, err, detail = decode_image(rotated, 96, 64, LIMIT, True, BUDGET)
    assert err == "exif_rotated" and "EXIF orientation 6" in detail
    # Same file, annotations of yet another size: plain size mismatch.
    _, _, _, err, _ = decode_image(rotated, 100, 64, LIMIT, True, BUDGET)
    assert err == "size_mismatch"
    # Orientation 3 (180 deg) keeps width/height: accepted in stored order (documented limitation).
    _, _, _, err, _ = decode_image(bad_corpus.with_exif_orientation(src, 3), 96, 64, LIMIT, True, BUDGET)
    assert err is None


def test_decompression_bomb_is_refused_from_the_header() -> None:
    # ~60 bytes claiming 100000 x 100000 pixels, no pixel data at all.
    bomb = bad_corpus.header_only_bomb()
    assert len(bomb) < 100
    t0 = time.perf_counter()
    _, _, _, err, detail = decode_image(bomb, 640, 480, LIMIT, True, BUDGET)
    assert err == "too_many_pixels" and "100000x100000" in detail and "not decoded" in detail
    assert time.perf_counter() - t0 < 0.5
    # The same kind of header-only file under the limit *is* decoded and found broken: so the refusal
    # above happened before decoding, from the header alone.
    small = bad_corpus.header_only_bomb(side=2000)
    assert decode_image(small, 2000, 2000, 5_000_000, False, BUDGET)[3] == "truncated_image"
    assert decode_image(small, 2000, 2000, 3_000_000, False, BUDGET)[3] == "too_many_pixels"
    # A real, valid bomb (300 MB of pixels in ~300 KB) is refused just as fast.
    real = bad_corpus.real_bomb(10_000)
    t0 = time.perf_counter()
    assert decode_image(real, 10_000, 10_000, LIMIT, True, BUDGET)[3] == "too_many_pixels"
    assert time.perf_counter() - t0 < 0.5


@pytest.mark.parametrize(
    ("data", "code"),
    [
        (b"", "empty_image"),
        (b"GIF89a\x01\x00", "truncated_image"),
        (b"\x89PNG\r\n\x1a\n" + b"\x00" * 10, "truncated_image"),
        (b"hello, world", "not_an_image"),
        (b"\xff\xd8\xff\xe0" + b"\x00" * 4, "truncated_image"),
    ],
)
def test_broken_bytes_never_raise(data: bytes, code: str) -> None:
    assert decode_image(data, 10, 10, LIMIT, True, BUDGET)[3] == code


# ------------------------------------------------------------------ one build over the corpus -----
def _build(corpus: Corpus, annotations: Path, out: Path, extra: list[str] | None = None) -> int:
    cfg = {"data": {"sources": [corpus.source(annotations)]}, "output": {"uri": str(out)}}
    path = out.parent / f"{out.name}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return main(["--config", str(path), *(extra or [])])


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> Corpus:
    return make_corpus(tmp_path_factory.mktemp("corpus"))


@pytest.fixture(scope="module")
def builds(ray_session: Any, corpus: Corpus, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    base = tmp_path_factory.mktemp("builds")
    out: dict[str, Any] = {}
    for name, ann in (("good", corpus.good_annotations), ("mixed", corpus.mixed_annotations)):
        target = base / name
        assert _build(corpus, ann, target) == 0
        m = latest_manifest(str(target))
        out[name] = {"manifest": m, **{k: read_kind(str(target), m, k) for k in ("samples", "rejects", "errors",
                                                                                  "raw")}}
    return out


def _rows(table: pa.Table, ids: set[int] | None = None) -> list[dict[str, Any]]:
    if table.num_columns == 0:
        return []
    rows = [r for r in table.to_pylist() if ids is None or r["image_id"] in ids]
    return sorted(rows, key=lambda r: json.dumps(r, sort_keys=True, default=str))


def test_every_bad_kind_has_its_reason_code(builds: dict[str, Any], corpus: Corpus) -> None:
    mixed = builds["mixed"]
    errors = _rows(mixed["errors"])
    outcome = outcomes_by_unit(mixed["raw"])
    raw_by_image: dict[int, list[dict[str, Any]]] = {}
    for r in mixed["raw"].to_pylist():
        raw_by_image.setdefault(r["image_id"], []).append(r)
    sample_images = {r["image_id"] for r in mixed["samples"].to_pylist()}
    for kind in corpus.kinds:
        mine = [e for e in errors if e["image_id"] == kind.image_id]
        units = raw_by_image.get(kind.image_id, [])
        if kind.expect == "no_annotations":  # no unit of any task: counted by the plan, never an error
            assert units == [] and mine == [], kind.name
            assert mixed["manifest"]["stats"]["images_no_annotations"] >= 1
            continue
        assert len(units) == len(bad_corpus.TASKS), f"{kind.name}: every planned unit is in the ledger"
        if kind.expect is None:  # odd but valid: works like any image
            assert mine == [], f"{kind.name}: {mine[:1]}"
            assert kind.image_id in sample_images, f"{kind.name}: no accepted rows"
            continue
        assert {e["reason"] for e in mine} == {kind.expect}, f"{kind.name}: {[e['reason'] for e in mine]}"
        assert {e["stage"] for e in mine} == {kind.stage}, kind.name
        assert len(mine) == len(bad_corpus.TASKS) and all(e["error"] for e in mine), kind.name
        assert all(outcome[u["gen_key"]] == "error" for u in units), kind.name
        assert kind.image_id not in sample_images, kind.name
    # The manifest counts the same errors.
    by_reason: dict[str, int] = {}
    for e in errors:
        by_reason[e["reason"]] = by_reason.get(e["reason"], 0) + 1
    assert mixed["manifest"]["stats"]["errors_by_reason"] == by_reason
    assert set(by_reason) == {k.expect for k in corpus.kinds if k.expect and k.expect != "no_annotations"}


def test_good_images_lose_no_row(builds: dict[str, Any], corpus: Corpus) -> None:
    good, mixed = builds["good"], builds["mixed"]
    ids = set(corpus.good_ids)
    assert _rows(good["errors"]) == []
    for kind in ("samples", "rejects", "raw"):
        want = _rows(good[kind])
        assert want or kind == "rejects"
        assert _rows(mixed[kind], ids) == want, f"{kind} of the good images differ"
    assert len(_rows(good["samples"])) > 0
    assert {r["image_id"] for r in good["samples"].to_pylist()} == ids


def test_malformed_annotation_json_stops_before_the_stream(corpus: Corpus, tmp_path: Path,
                                                           capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "never"
    rc = _build(corpus, corpus.malformed_annotations, out)
    err = capsys.readouterr().err
    line, col = corpus.malformed_position
    assert rc != 0
    assert str(corpus.malformed_annotations) in err and f"line {line}, column {col}" in err
    assert "Traceback" not in err
    assert not out.exists()  # nothing written: no shard, no receipt, no manifest


def test_every_reason_code_is_documented() -> None:
    doc = (ROOT / "docs" / "reliability.md").read_text()
    codes = set(REASON_CODES) | set(READ_REASON_CODES) | set(DECODE_REASON_CODES) | {
        "teacher_failed", "check_failed", "prompt_too_long", "engine_error", "no_response"}
    missing = sorted(c for c in codes if f"`{c}`" not in doc)
    assert missing == [], f"undocumented reason codes: {missing}"
    assert "filters.md" in doc


# ------------------------------------------------------------------ S3: never outside the prefix --
def test_unsafe_names_are_never_read_on_s3(ray_session: Any, corpus: Corpus, s3_bucket: tuple[str, str],
                                           tmp_path: Path) -> None:
    endpoint, bucket = s3_bucket
    s3 = boto3.client("s3", endpoint_url=endpoint)
    doc = json.loads(corpus.good_annotations.read_text())
    keep = sorted(corpus.good_ids)[:2]
    images = [i for i in doc["images"] if i["id"] in keep]
    anns = [a for a in doc["annotations"] if a["image_id"] in keep]
    for img in images:
        s3.upload_file(str(corpus.images / img["file_name"]), bucket, f"ds/images/{img['file_name']}")
    # A valid image right outside the prefix, and one whose key literally contains "..".
    for key in ("ds/outside.png", "ds/images/../outside.png"):
        s3.upload_file(str(corpus.outside_file), bucket, key)
    base = images[0]
    base_anns = [a for a in anns if a["image_id"] == base["id"]]
    for k, name in enumerate(("../outside.png", "/ds/outside.png", "s3://" + bucket + "/ds/outside.png")):
        images.append({**base, "id": 9000 + k, "file_name": name})
        anns.extend({**a, "id": 900000 + 100 * k + j, "image_id": 9000 + k} for j, a in enumerate(base_anns))
    s3.put_object(Bucket=bucket, Key="ds/ann.json", Body=json.dumps({**doc, "images": images, "annotations": anns}))
    with FlakyProxy(endpoint) as proxy:
        cfg = {"data": {"sources": [{"name": "s3corpus", "format": "coco", "annotations": f"s3://{bucket}/ds/ann.json",
                                     "images": f"s3://{bucket}/ds/images", "tasks": ["multi_object"]}]},
               "output": {"uri": f"s3://{bucket}/out"}, "storage": {"endpoint_url": proxy.url}}
        path = tmp_path / "s3.yaml"
        path.write_text(yaml.safe_dump(cfg))
        assert main(["--config", str(path)]) == 0
        targets = [e.target for e in proxy.log]
    assert any("/ds/images/" in t for t in targets)  # the good images were read through the proxy
    assert [t for t in targets if "outside" in t] == []
    m = latest_manifest(f"s3://{bucket}/out", endpoint)
    errors = read_kind(f"s3://{bucket}/out", m, "errors", endpoint).to_pylist()
    assert sorted((e["image_id"], e["reason"]) for e in errors) == [(9000 + k, "unsafe_path") for k in range(3)]
    assert {r["image_id"] for r in read_kind(f"s3://{bucket}/out", m, "samples", endpoint).to_pylist()} == set(keep)


def test_corpus_generator_is_deterministic(tmp_path: Path) -> None:
    a, b = make_corpus(tmp_path / "a"), make_corpus(tmp_path / "b")
    assert [k.name for k in a.kinds] == [k.name for k in b.kinds]
    for k in a.kinds:
        pa_, pb = a.images / k.file_name, b.images / k.file_name
        if pa_.is_file() and k.file_name.startswith("bad/"):
            assert pa_.read_bytes() == pb.read_bytes(), k.name
    assert a.mixed_annotations.read_text() == b.mixed_annotations.read_text().replace(str(b.root), str(a.root))
    assert os.path.getsize(a.images / "bad" / "bomb.png") < 100
    assert re.search(r"\d+", str(a.malformed_position))
