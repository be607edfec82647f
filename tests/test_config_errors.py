"""Every configuration error is reported before any work is scheduled (exit code 2, nothing written,
Ray not started), naming the key and how to fix it.

Most cases call `main()` in-process (fast); the unreachable endpoint runs the real command in a
subprocess to prove it fails in seconds without starting Ray.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import yaml

from pipelines.build_groundv import main
from pipelines.storage import fs as storage
from pipelines.storage.fs import StorageError, StorageSpec
from pipelines.storage.preflight import check_model_source, check_reachable

ROOT = Path(__file__).resolve().parent.parent


def _main(tmp_path: Path, capsys: pytest.CaptureFixture[str], *args: str, cfg: dict[str, Any] | None = None
          ) -> tuple[int, str, Path]:
    out = tmp_path / "never"
    argv = [*args, f"output.uri={out}"] if not any(a.startswith("output.uri=") for a in args) else list(args)
    if cfg is not None:
        path = tmp_path / "cfg.yaml"
        path.write_text(yaml.safe_dump(cfg))
        argv = ["--config", str(path), *argv]
    rc = main(argv)
    return rc, capsys.readouterr().err, out


def _source(tmp_path: Path, **over: Any) -> dict[str, Any]:
    ann = tmp_path / "ann.json"
    ann.write_text('{"images": [], "annotations": [], "categories": []}')
    (tmp_path / "imgs").mkdir(exist_ok=True)
    src = {"name": "s", "format": "coco", "annotations": str(ann), "images": str(tmp_path / "imgs")}
    src.update(over)
    return {k: v for k, v in src.items() if v is not None}


@pytest.mark.parametrize(
    ("args", "words"),
    [
        (["data.limt=3"], ["data.limt", "Did you mean", "limit"]),  # typo: the close key
        (["stream.nope=1"], ["stream.nope", "valid keys here", "max_image_pixels"]),  # no close key: the list
        (["teacher.pairs_per_unit=abc"], ["teacher.pairs_per_unit", "abc", "Integer"]),
        (["teacher.backend=gpt"], ["teacher.backend", "template", "vllm", "replay"]),
        (["data.limit=-1"], ["data.limit", ">= 0"]),
        (["tasks=[hallucination,flying]"], ["flying", "expected some of"]),
        (["teacher.backend=replay"], ["teacher.responses"]),
        (["teacher.backend=vllm", "teacher.vllm.model_source="], ["teacher.vllm.model_source"]),
    ],
)
def test_bad_override_names_key_and_fix(tmp_path: Path, capsys: pytest.CaptureFixture[str], args: list[str],
                                        words: list[str]) -> None:
    rc, err, out = _main(tmp_path, capsys, *args)
    assert rc == 2
    assert err.startswith("groundv: configuration error:"), err
    for w in words:
        assert w in err, (w, err)
    assert not out.exists()


def test_bad_yaml_names_the_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rc, err, out = _main(tmp_path, capsys, cfg={"stream": {"image_batch_size": "lots"}})
    assert rc == 2 and "stream.image_batch_size" in err and "cfg.yaml" in err and "Integer" in err
    rc, err, out = _main(tmp_path, capsys, cfg={"data": {"sources": [_source(tmp_path, imgs="x")]}})
    # omegaconf reports keys inside list items without their path: the key, its section and the file.
    assert rc == 2 and "'imgs'" in err and "SourceConfig" in err and "'images'" in err and "cfg.yaml" in err
    assert not out.exists()


@pytest.mark.parametrize(
    ("drop", "words"),
    [
        ("images", ["data.sources[0].images is missing", "prefix"]),
        ("annotations", ["data.sources[0].annotations is missing", "annotation JSON"]),
        ("name", ["data.sources[0].name is missing"]),
        ("format", ["data.sources[0].format is missing", "coco | lvis | paco"]),
    ],
)
def test_missing_source_field(tmp_path: Path, capsys: pytest.CaptureFixture[str], drop: str,
                              words: list[str]) -> None:
    rc, err, out = _main(tmp_path, capsys, cfg={"data": {"sources": [_source(tmp_path, **{drop: None})]}})
    assert rc == 2
    for w in words:
        assert w in err, (w, err)
    assert not out.exists()


def test_missing_source_files(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cfg = {"data": {"sources": [_source(tmp_path, annotations=str(tmp_path / "nope.json"))]}}
    rc, err, out = _main(tmp_path, capsys, cfg=cfg)
    assert rc == 2 and "data.sources[0].annotations" in err and "nope.json" in err and "does not exist" in err
    cfg = {"data": {"sources": [_source(tmp_path, images=str(tmp_path / "no_images"))]}}
    rc, err, out = _main(tmp_path, capsys, cfg=cfg)
    assert rc == 2 and "data.sources[0].images" in err and "does not exist" in err
    assert not out.exists()


def test_output_under_a_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "afile").write_text("x")
    rc, err, _ = _main(tmp_path, capsys, f"output.uri={tmp_path / 'afile' / 'out'}")
    assert rc == 2 and "output.uri" in err and "is a file" in err


@pytest.mark.parametrize(
    ("source", "words"),
    [
        ("/nonexistent/models/qwen", ["teacher.vllm.model_source", "does not exist"]),
        ("./relative/missing-model", ["teacher.vllm.model_source", "does not exist"]),
        ("no-such-org/no-such-model-xyz", ["teacher.vllm.model_source", "not in the local Hugging Face cache"]),
        ("not a model id", ["teacher.vllm.model_source", "neither an existing folder nor a hub id"]),
    ],
)
def test_unknown_teacher_model(tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch,
                               source: str, words: list[str]) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.chdir(tmp_path)
    rc, err, out = _main(tmp_path, capsys, "teacher.backend=vllm", f"teacher.vllm.model_source={source}")
    assert rc == 2
    for w in words:
        assert w in err, (w, err)
    assert not out.exists()


def test_model_folder_without_config_json(tmp_path: Path) -> None:
    (tmp_path / "weights").mkdir()
    with pytest.raises(StorageError, match="no config.json"):
        check_model_source(str(tmp_path / "weights"), StorageSpec())
    (tmp_path / "weights" / "config.json").write_text("{}")
    check_model_source(str(tmp_path / "weights"), StorageSpec())  # a real folder passes


def test_unreachable_endpoint_fails_fast_without_ray(tmp_path: Path) -> None:
    env = {**os.environ, "RAY_ADDRESS": ""}
    env.pop("RAY_ADDRESS")
    t0 = time.monotonic()
    proc = subprocess.run(
        [sys.executable, str(ROOT / "pipelines" / "build_groundv.py"), "storage.endpoint_url=http://127.0.0.1:1",
         "output.uri=s3://some-bucket/out", f"data.sample.dir={tmp_path / 'sample'}"],
        capture_output=True, text=True, timeout=300, env=env, cwd=tmp_path,
    )
    elapsed = time.monotonic() - t0
    assert proc.returncode == 2, proc.stderr[-2000:]
    err = proc.stderr
    assert "output.uri" in err and "storage.endpoint_url" in err and "cannot reach" in err, err[-2000:]
    assert "http://127.0.0.1:1" in err
    assert "Traceback" not in err and "Started a local Ray" not in err + proc.stdout
    assert elapsed < 60, f"took {elapsed:.0f} s to report an unreachable endpoint"


def test_check_reachable_on_a_real_s3(s3_bucket: tuple[str, str]) -> None:
    endpoint, bucket = s3_bucket
    store = StorageSpec(endpoint)
    check_reachable(f"s3://{bucket}/out", store, "output.uri")  # exists, empty prefix is fine
    with pytest.raises(StorageError, match=r"output\.uri: bucket 'no-such-bucket-zz' does not exist"):
        check_reachable("s3://no-such-bucket-zz/out", store, "output.uri")
    with pytest.raises(StorageError, match=r"data\.sources\[0\]\.annotations: nothing at"):
        check_reachable(f"s3://{bucket}/missing.json", store, "data.sources[0].annotations", must_exist=True)
    storage.write_bytes(f"s3://{bucket}/ann.json", b"{}", store)
    check_reachable(f"s3://{bucket}/ann.json", store, "data.sources[0].annotations", must_exist=True)
    with pytest.raises(StorageError, match=r"cannot reach the object store at http://127\.0\.0\.1:1"):
        check_reachable(f"s3://{bucket}/out", StorageSpec("http://127.0.0.1:1"), "output.uri")


def test_malformed_yaml_is_a_config_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("data:\n  limit: [1\n")
    rc, err, out = _main(tmp_path, capsys, "--config", str(bad))
    assert rc == 2 and "bad.yaml" in err and "not valid YAML" in err and "line 2" in err, err
    rc, err, out = _main(tmp_path, capsys, "teacher.vllm.runtime_env={env_vars:{A:b}}")
    assert rc == 2 and "teacher.vllm.runtime_env" in err and "not valid YAML" in err, err
    assert "Traceback" not in err and not out.exists()
