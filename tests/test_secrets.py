"""Credentials never leak: a recognisable fake secret in the environment of a real build (its own
Ray, so the workers have it too) never shows up in stdout, stderr, the manifest, the Parquet shards,
any object under the output, or the Ray session's logs -- for a successful build, a build that fails
mid-stream and a build that fails its pre-flight.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import boto3
import pytest
import yaml

from pipelines.core.secrets import scrub
from pipelines.sources.sample_data import ensure_sample_dataset
from tests.flaky_proxy import FlakyProxy

ROOT = Path(__file__).resolve().parent.parent
# Recognisable, and alphanumeric so that no encoding (URL, JSON, repr) could hide it from the search.
SECRET = "GVfakeSECRETkey0123456789abcdefGHIJKLMNOPqrst"
TOKEN = "hfFAKEtoken9876543210ZYXWVUTSRQponmlk"
NEEDLES = (SECRET.encode(), SECRET[:16].encode(), SECRET[-16:].encode(), TOKEN.encode(), TOKEN[:16].encode())


def test_scrub_removes_credentials(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", SECRET)
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    text = f"failed http://user:{SECRET}@host:9000/b and s3 key {SECRET} token={TOKEN}"
    out = scrub(text)
    assert SECRET not in out and TOKEN not in out
    assert "http://***@host:9000/b" in out


def _leaks(data: bytes) -> list[str]:
    return [n.decode() for n in NEEDLES if n in data]


DRIVER = textwrap.dedent(
    """
    import json, sys
    sys.path.insert(0, {root!r})
    from pipelines.build_groundv import main
    rcs = [main(["--config", path]) for path in sys.argv[1:]]
    import ray
    node = ray._private.worker._global_node
    print("SESSION_DIR=" + (node.get_session_dir_path() if node is not None else ""))
    print("RCS=" + json.dumps(rcs))
    """
)


def test_secret_never_leaks(s3_bucket: tuple[str, str], sample_dir: Path, tmp_path: Path) -> None:
    endpoint, bucket = s3_bucket
    s3 = boto3.client("s3", endpoint_url=endpoint)
    coco = next(s for s in ensure_sample_dataset(str(sample_dir)) if s["format"] == "coco")
    s3.upload_file(coco["annotations"], bucket, "in/coco.json")
    for f in sorted(os.listdir(coco["images"]))[:8]:
        s3.upload_file(os.path.join(coco["images"], f), bucket, f"in/images/{f}")

    def cfg(name: str, endpoint_url: str, **extra: Any) -> str:
        doc: dict[str, Any] = {
            "data": {"sources": [{"name": "coco_s3", "format": "coco", "annotations": f"s3://{bucket}/in/coco.json",
                                  "images": f"s3://{bucket}/in/images", "tasks": ["multi_object"]}]},
            "output": {"uri": f"s3://{bucket}/out"},
            "storage": {"endpoint_url": endpoint_url, "retries": 1},
            "ray": {"num_cpus": 4},
        }
        doc.update(extra)
        path = tmp_path / f"{name}.yaml"
        path.write_text(yaml.safe_dump(doc))
        return str(path)

    healthy, writes_down = FlakyProxy(endpoint).start(), FlakyProxy(endpoint, mode="writes_down").start()
    try:
        configs = [
            cfg("ok", healthy.url),  # a successful build (the images outside the 8 uploaded are error rows)
            cfg("fails_mid_stream", writes_down.url, teacher={"pairs_per_unit": 2}),  # every write answers 503
            cfg("fails_preflight", "http://127.0.0.1:1"),  # unreachable endpoint
        ]
        env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
        env.update(AWS_SECRET_ACCESS_KEY=SECRET, AWS_ACCESS_KEY_ID="AKIAFAKEGROUNDV00001", HF_TOKEN=TOKEN)
        driver = tmp_path / "driver.py"
        driver.write_text(DRIVER.format(root=str(ROOT)))
        proc = subprocess.run([sys.executable, str(driver), *configs], capture_output=True, timeout=1200, env=env,
                              cwd=tmp_path)
    finally:
        healthy.stop()
        writes_down.stop()
    stdout, stderr = proc.stdout.decode(errors="replace"), proc.stderr.decode(errors="replace")
    assert proc.returncode == 0, stderr[-3000:]
    rcs = json.loads(next(ln for ln in stdout.splitlines() if ln.startswith("RCS="))[4:])
    assert rcs[0] == 0 and rcs[1] not in (0, 2) and rcs[2] == 2, (rcs, stderr[-3000:])
    assert "groundv: build failed" in stderr and "groundv: configuration error" in stderr

    assert _leaks(proc.stdout) == [] and _leaks(proc.stderr) == []
    # Every object the builds wrote: manifests (with the resolved config), shards, receipts.
    keys = [o["Key"] for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix="out/")
            for o in page.get("Contents", [])]
    assert any(k.startswith("out/manifests/") for k in keys) and any(k.endswith(".parquet") for k in keys)
    for key in keys:
        data = s3.get_object(Bucket=bucket, Key=key)["Body"].read()
        assert _leaks(data) == [], key
    manifest = json.loads(s3.get_object(Bucket=bucket, Key="out/manifests/v000001.json")["Body"].read())
    assert manifest["config"]["storage"]["endpoint_url"] == healthy.url  # the config is there, the secret not
    # The Ray session of the subprocess: raylet, GCS, worker and Ray Data logs.
    session = next(ln for ln in stdout.splitlines() if ln.startswith("SESSION_DIR="))[len("SESSION_DIR="):]
    assert session and Path(session).is_dir()
    scanned = 0
    for dirpath, _, files in os.walk(Path(session) / "logs"):
        for f in files:
            path = Path(dirpath) / f
            if not path.is_file():
                continue
            data = path.read_bytes()
            scanned += 1
            assert _leaks(data) == [], str(path)
    assert scanned > 5


def test_config_credentials_are_redacted() -> None:
    """A token put in the config (vLLM runtime_env / engine_kwargs, a URL with user:password) is
    never written: `resolved()` is what the manifest stores and what is printed."""
    from pipelines.config import config_hash, load_config, resolved

    cfg = load_config([], [
        f"teacher.vllm.runtime_env={{env_vars: {{HF_TOKEN: {TOKEN}, PYTHONPATH: /srv/code}}}}",
        f"teacher.vllm.engine_kwargs={{hf_token: {TOKEN}, max_num_seqs: 8}}",
        f"storage.endpoint_url=http://minio:{SECRET}@127.0.0.1:9000",
    ])
    text = json.dumps(resolved(cfg))
    assert _leaks(text.encode()) == [], text
    out = resolved(cfg)
    assert out["teacher"]["vllm"]["runtime_env"]["env_vars"] == {"HF_TOKEN": "***", "PYTHONPATH": "/srv/code"}
    assert out["teacher"]["vllm"]["engine_kwargs"]["max_num_seqs"] == 8
    assert out["teacher"]["vllm"]["sampling"]["max_tokens"] == 1024  # "tokens" settings are not secrets
    assert out["storage"]["endpoint_url"] == "http://***@127.0.0.1:9000"
    assert len(config_hash(cfg)) == 64
