"""Issue 15, operations that must not lose work: gc vs receipts and running builds, a shrinking
version, s3a:// outputs, numeric config ranges. Real processes, the session's Ray, moto S3."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import boto3
import pytest

from pipelines.build.commit import CommitRefused, check_shards_exist
from pipelines.build_groundv import main as build_main
from pipelines.cli.manifest import main as manifest_main
from pipelines.config import ConfigError, load_config
from pipelines.storage.fs import StorageSpec, normalize_uri
from schemas.manifest import ShardEntry
from tests.dataset_checks import latest_manifest, read_kind

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BUILD = os.path.join(ROOT, "pipelines", "build_groundv.py")
MANIFEST = os.path.join(ROOT, "pipelines", "cli", "manifest.py")


def build_cmd(sample: str, out: str, *extra: str) -> list[str]:
    return [sys.executable, BUILD, f"data.sample.dir={sample}", f"output.uri={out}", "stream.write_batch_size=8",
            "stream.check_batch_size=8", "stream.image_batch_size=4", *extra]


def env_for(ray_session) -> dict[str, str]:
    env = dict(os.environ)
    env["RAY_ADDRESS"] = ray_session.get_runtime_context().gcs_address
    env["PYTHONPATH"] = ROOT
    return env


def receipt_files(out: str) -> list[Path]:
    return sorted(Path(out, "receipts").rglob("*.json"))


def receipt_shards(out: str) -> list[str]:
    return [s["path"] for r in receipt_files(out) for s in json.loads(r.read_text())["shards"]]


@pytest.mark.ray
def test_gc_after_killed_build_keeps_receipts_and_the_rerun_resumes(ray_session, sample_dir, tmp_path):
    """Finding 1: v1 of 8 images; a build of all 24 killed after >= 2 durable batches; gc --delete
    (no grace period) must keep every shard a receipt names; the re-run exits 0 and reuses them. A
    receipt whose shard is gone anyway (deleted by hand) is dropped by the plan, not fatal."""
    out = str(tmp_path / "out")
    env = env_for(ray_session)
    done = subprocess.run(build_cmd(str(sample_dir), out, "data.limit=8"), env=env, capture_output=True,
                          text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    v1_units = latest_manifest(out)["stats"]["units_planned"]
    proc = subprocess.Popen(build_cmd(str(sample_dir), out), env=env, start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and proc.poll() is None and len(receipt_files(out)) < 3:
        time.sleep(0.05)
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=60)
    assert not Path(out, "manifests", "v000002.json").exists(), "the kill came too late"
    pending = receipt_shards(out)
    assert len(receipt_files(out)) >= 3 and pending
    gc = subprocess.run([sys.executable, MANIFEST, "gc", "--keep", "1", "--delete", "--grace-s", "0",
                         "--output", out], env=env, capture_output=True, text=True, timeout=120)
    assert gc.returncode == 0, gc.stderr
    assert [p for p in pending if not Path(out, p).exists()] == [], "gc deleted shards of pending receipts"
    # A receipt whose shards are gone anyway (an older gc, a hand edit): the plan skips it.
    lost = json.loads(receipt_files(out)[0].read_text())["shards"][0]["path"]
    os.remove(Path(out, lost))
    dry = subprocess.run(build_cmd(str(sample_dir), out, "--dry-run"), env=env, capture_output=True, text=True,
                         timeout=300)
    assert dry.returncode == 0, dry.stderr[-2000:]
    assert "ignoring receipt" in dry.stderr
    rerun = subprocess.run(build_cmd(str(sample_dir), out), env=env, capture_output=True, text=True, timeout=600)
    assert rerun.returncode == 0, rerun.stderr[-2000:]
    m = latest_manifest(out)
    st = m["stats"]
    assert st["units_reused"] + st["teacher_calls"] == st["units_planned"]
    assert st["units_reused"] >= v1_units + 1  # v1's units and the surviving receipts' units
    keys = read_kind(out, m, "raw").column("gen_key").to_pylist()
    assert len(keys) == len(set(keys)) == st["units_planned"], "rows lost or duplicated"
    assert all(Path(out, s["path"]).exists() for s in m["shards"])


@pytest.mark.unit
def test_commit_refuses_a_version_naming_missing_shards(tmp_path):
    """Finding 1: gc just before the commit must fail the commit, not commit dangling names."""
    out = str(tmp_path)
    Path(out, "data", "raw").mkdir(parents=True)
    Path(out, "data", "raw", "a.parquet").write_bytes(b"x")
    entry = ShardEntry(path="data/raw/a.parquet", kind="raw", task="part", rows=1, bytes=1, sha256="")
    gone = ShardEntry(path="data/raw/gone.parquet", kind="raw", task="part", rows=1, bytes=1, sha256="")
    check_shards_exist(out, [entry], StorageSpec())
    with pytest.raises(CommitRefused, match="gone.parquet"):
        check_shards_exist(out, [entry, gone], StorageSpec())


@pytest.mark.unit
def test_recent_unreceipted_shards_survive_gc(tmp_path):
    """Finding 1: a running build writes a batch's shards just before its receipt: a fresh shard
    nobody names yet is inside the grace period; an old one is garbage."""
    from pipelines.storage.gc import collect

    out = tmp_path
    (out / "manifests").mkdir()
    (out / "manifests" / "v000001.json").write_text(json.dumps({
        "version": 1, "parent_version": None, "created_at": "", "config": {}, "config_hash": "", "teacher": {},
        "prompts": {}, "filters": {}, "shards": [], "stats": {}}))
    (out / "data" / "raw").mkdir(parents=True)
    (out / "data" / "raw" / "fresh.parquet").write_bytes(b"x")
    old = out / "data" / "raw" / "old.parquet"
    old.write_bytes(b"y")
    os.utime(old, (time.time() - 10 * 3600, time.time() - 10 * 3600))
    r = collect(str(out), 1, StorageSpec(), grace_s=3600, delete=True)
    assert r.garbage == ["data/raw/old.parquet"] and r.kept_recent == 1
    assert (out / "data" / "raw" / "fresh.parquet").exists() and not old.exists()


@pytest.mark.unit
def test_gc_keep_zero_is_refused(tmp_path, capsys):
    """Finding 11: `gc --keep 0` used to print 0 and keep 1."""
    assert manifest_main(["gc", "--keep", "0", "--output", str(tmp_path)]) == 2
    assert "--keep must be >= 1" in capsys.readouterr().err


@pytest.mark.ray
def test_a_version_dropping_most_samples_needs_allow_shrink(ray_session, sample_dir, tmp_path):
    """Finding 5: data.limit=0 (or tasks=[], or forgotten sources) must not become the latest version."""
    out = str(tmp_path / "out")
    cfg = tmp_path / "c.yaml"
    cfg.write_text(f"data: {{sample: {{dir: {sample_dir}}}, limit: 6}}\noutput: {{uri: {out}}}\n")
    assert build_main(["--config", str(cfg)]) == 0
    for slip in (["data.limit=0"], ["tasks=[part]"]):
        assert build_main(["--config", str(cfg), *slip]) == 2, slip
        assert sorted(os.listdir(Path(out, "manifests"))) == ["v000001.json"], slip
    assert build_main(["--config", str(cfg), "data.limit=0", "commit.allow_shrink=true"]) == 0
    m = latest_manifest(out)
    assert m["version"] == 2 and sum(s["rows"] for s in m["shards"] if s["kind"] == "samples") == 0


@pytest.mark.s3
@pytest.mark.ray
def test_s3a_output_is_written_to_s3_not_a_local_folder(ray_session, sample_dir, s3_bucket, tmp_path,
                                                        monkeypatch, capsys):
    """Finding 2: s3a://bucket/x passed the pre-flight as S3 and then went to a local `s3a:` folder."""
    endpoint, bucket = s3_bucket
    monkeypatch.chdir(tmp_path)
    rc = build_main([f"data.sample.dir={sample_dir}", "data.limit=2", f"output.uri=s3a://{bucket}/x",
                     f"storage.endpoint_url={endpoint}"])
    assert rc == 0
    assert not Path(tmp_path, "s3a:").exists()
    keys = [o["Key"] for o in boto3.client("s3", endpoint_url=endpoint).list_objects_v2(Bucket=bucket)["Contents"]]
    assert "x/manifests/v000001.json" in keys
    assert build_main([f"data.sample.dir={sample_dir}", "output.uri=gs://b/x"]) == 2
    assert "gs:// is not supported" in capsys.readouterr().err
    assert not Path(tmp_path, "gs:").exists()


@pytest.mark.unit
def test_uri_normalisation():
    assert normalize_uri("s3a://b/x") == "s3://b/x" == normalize_uri("S3N://b/x".replace("S3N", "s3n"))
    assert normalize_uri("file:///tmp/a") == "/tmp/a"
    with pytest.raises(ValueError, match="hdfs://"):
        normalize_uri("hdfs://nn/x")


BAD_RANGES = ["stream.image_batch_size=0", "stream.write_batch_size=-4", "teacher.max_pixels=0",
              "data.sample.num_images=-3", "stream.status_interval_s=0", "ray.num_cpus=0",
              "commit.max_shrink=2"]


@pytest.mark.unit
@pytest.mark.parametrize("override", BAD_RANGES)
def test_numeric_ranges_are_checked_before_any_work(override):
    """Finding 11: these were accepted and failed later (after Ray started) or made no sense."""
    with pytest.raises(ConfigError, match=override.split("=")[0].replace(".", r"\.")):
        load_config([], [override])
