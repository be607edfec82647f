"""Faults: a worker killed mid-run, a flaky / dead object store, a full / read-only / immutable
local output. Real components only: the session's Ray, the moto S3 server behind a real HTTP
proxy (tests/flaky_proxy.py), a real tmpfs and real file attributes.

Every surviving build must produce exactly the rows of an undisturbed build; every failing build
must exit non-zero with a clear message, commit nothing and leave the previous version untouched.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import threading
import time
from pathlib import Path
from typing import Any, Callable, Iterator

import boto3
import pytest
import yaml

from pipelines.build_groundv import main
from pipelines.sources.sample_data import ensure_sample_dataset
from tests.dataset_checks import latest_manifest, read_kind
from tests.flaky_proxy import FlakyProxy

KINDS = ("samples", "rejects", "errors", "raw")


# ------------------------------------------------------------------ helpers ------------------------
def dataset_rows(output: str, endpoint: str | None = None) -> dict[str, list[str]]:
    """Every row of the latest version, per kind, as sorted canonical JSON (order-free comparison)."""
    m = latest_manifest(output, endpoint)
    out: dict[str, list[str]] = {}
    for kind in KINDS:
        table = read_kind(output, m, kind, endpoint)
        rows = table.to_pylist() if table.num_columns else []
        out[kind] = sorted(json.dumps(r, sort_keys=True, default=str) for r in rows)
    return out


def gen_keys(rows: dict[str, list[str]]) -> list[str]:
    return sorted(json.loads(r)["gen_key"] for r in rows["raw"])


def run_build(tmp_path: Path, name: str, cfg: dict[str, Any], *overrides: str) -> int:
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return main(["--config", str(path), *overrides])


def local_manifests(output: Path) -> dict[str, bytes]:
    folder = output / "manifests"
    return {p.name: p.read_bytes() for p in sorted(folder.glob("v*.json"))} if folder.exists() else {}


# ------------------------------------------------------------------ (a) a worker is killed ---------
def _raylet_pid() -> int:
    import ray

    node = ray._private.worker._global_node
    assert node is not None, "the test session must own its local Ray (conftest ray_session)"
    return node.all_processes["raylet"][0].process.pid


def _actor_pids(raylet: int, stage: str) -> list[int]:
    """Live worker processes of *our* Ray (children of our raylet) running a Ray Data actor of
    `stage`: Ray sets their title to `ray::MapWorker(MapBatches(<stage>))...`."""
    pids = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as fh:
                ppid = int(fh.read().rsplit(")", 1)[1].split()[1])
            with open(f"/proc/{entry}/cmdline", "rb") as fh:
                title = fh.read().replace(b"\0", b" ").decode(errors="replace")
        except (OSError, ValueError, IndexError):
            continue
        if ppid == raylet and f"MapBatches({stage})" in title:
            pids.append(int(entry))
    return sorted(pids)


def _json_files(folder: Path) -> int:
    return sum(1 for _ in folder.rglob("*.json")) if folder.exists() else 0


# compaction off: the test counts the committed write batches (compaction relabels them as one)
KILL_BASE = ["stream.image_batch_size=2", "stream.teacher_batch_size=4", "stream.check_batch_size=4",
             "stream.write_batch_size=8", "stream.check_actors_max=1", "output.compact_min_shards=0"]


@pytest.fixture(scope="module")
def undisturbed(ray_session: Any, sample_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, list[str]]:
    out = tmp_path_factory.mktemp("undisturbed") / "out"
    assert main([f"data.sample.dir={sample_dir}", *KILL_BASE, f"output.uri={out}"]) == 0
    return dataset_rows(str(out))


@pytest.mark.parametrize(("fused", "victims"), [
    (True, ("FusedCpuStage",)),  # default for CPU teachers: read..teacher..check..write in one actor
    (False, ("TemplateRespond", "CheckUnits")),  # separate teacher and check actor pools
], ids=["fused", "separate"])
def test_killed_teacher_and_check_workers_lose_nothing(ray_session: Any, sample_dir: Path, tmp_path: Path,
                                                       undisturbed: dict[str, list[str]], fused: bool,
                                                       victims: tuple[str, ...]) -> None:
    hit = tmp_path / "killed"
    args = [f"data.sample.dir={sample_dir}", *KILL_BASE, f"stream.fuse_cpu_stages={str(fused).lower()}",
            f"output.uri={hit}"]
    raylet = _raylet_pid()
    result: list[int] = []
    failure: list[BaseException] = []

    def build() -> None:
        try:
            result.append(main(args))
        except BaseException as exc:  # noqa: BLE001 - reported by the test thread
            failure.append(exc)

    thread = threading.Thread(target=build, name="build-under-fire")
    thread.start()
    killed: dict[str, int] = {}
    receipts_at_kill = 0
    deadline = time.monotonic() + 600
    while thread.is_alive() and len(killed) < len(victims) and time.monotonic() < deadline:
        # Mid-run: the stream has written at least one batch and nothing is committed yet.
        if _json_files(hit / "receipts") >= 1 and not (hit / "manifests").exists():
            for stage in victims:
                pids = _actor_pids(raylet, stage)
                if stage not in killed and pids:
                    os.kill(pids[0], signal.SIGKILL)
                    killed[stage] = pids[0]
                    receipts_at_kill = max(receipts_at_kill, _json_files(hit / "receipts"))
        time.sleep(0.05)
    thread.join(timeout=900)
    assert not thread.is_alive() and failure == [] and result == [0]
    assert set(killed) == set(victims), f"nothing to kill mid-run: {killed}"
    for pid in killed.values():
        assert not os.path.exists(f"/proc/{pid}") or "zombie" in open(f"/proc/{pid}/status").read().lower()

    got = dataset_rows(str(hit))
    assert gen_keys(got) == gen_keys(undisturbed) and len(gen_keys(got)) > 0
    for kind in KINDS:
        assert got[kind] == undisturbed[kind], f"{kind} differ after the kills"
    m = latest_manifest(str(hit))
    assert m["version"] == 1
    # Work went on after the kills: more batches were committed than had receipts at kill time.
    assert len({s["batch"] for s in m["shards"]}) > receipts_at_kill


# ------------------------------------------------------------------ (b) the object store -----------
@pytest.fixture
def s3_sample(s3_bucket: tuple[str, str], sample_dir: Path) -> dict[str, Any]:
    """The sample's COCO source uploaded to a fresh bucket; a config for it (output under out/)."""
    endpoint, bucket = s3_bucket
    s3 = boto3.client("s3", endpoint_url=endpoint)
    coco = next(s for s in ensure_sample_dataset(str(sample_dir)) if s["format"] == "coco")
    s3.upload_file(coco["annotations"], bucket, "in/coco.json")
    for f in sorted(os.listdir(coco["images"])):
        s3.upload_file(os.path.join(coco["images"], f), bucket, f"in/images/{f}")
    return {"endpoint": endpoint, "bucket": bucket, "cfg": {
        "data": {"sources": [{"name": "coco_s3", "format": "coco", "annotations": f"s3://{bucket}/in/coco.json",
                              "images": f"s3://{bucket}/in/images", "tasks": ["multi_object", "hallucination"]}]},
        "stream": {"image_batch_size": 4, "write_batch_size": 16},
    }}


def _with(cfg: dict[str, Any], output: str, endpoint: str, **storage: Any) -> dict[str, Any]:
    return {**cfg, "output": {"uri": output}, "storage": {"endpoint_url": endpoint, **storage}}


def _s3_manifests(endpoint: str, bucket: str, prefix: str) -> dict[str, bytes]:
    s3 = boto3.client("s3", endpoint_url=endpoint)
    listed = s3.list_objects_v2(Bucket=bucket, Prefix=f"{prefix}/manifests/").get("Contents", [])
    return {o["Key"].rsplit("/", 1)[-1]: s3.get_object(Bucket=bucket, Key=o["Key"])["Body"].read() for o in listed}


def test_flaky_store_same_output(ray_session: Any, s3_sample: dict[str, Any], tmp_path: Path) -> None:
    endpoint, bucket, cfg = s3_sample["endpoint"], s3_sample["bucket"], s3_sample["cfg"]
    assert run_build(tmp_path, "ref", _with(cfg, f"s3://{bucket}/ref", endpoint)) == 0
    # 10% 503 SlowDown, 5% reset before forwarding, 5% reset after the store applied the request.
    with FlakyProxy(endpoint, seed=20251122, p_503=0.10, p_reset=0.05, p_reset_after=0.05) as proxy:
        assert run_build(tmp_path, "flaky", _with(cfg, f"s3://{bucket}/flaky", proxy.url)) == 0
        counts = proxy.counts()
    print(f"flaky proxy outcomes: {dict(counts)}")
    assert counts["503"] > 0 and counts["reset"] > 0 and counts["reset_after"] > 0, counts
    want = dataset_rows(f"s3://{bucket}/ref", endpoint)
    got = dataset_rows(f"s3://{bucket}/flaky", endpoint)
    assert gen_keys(got) == gen_keys(want) and len(gen_keys(want)) > 0
    for kind in KINDS:
        assert got[kind] == want[kind], f"{kind} differ through the flaky store"
    # Exactly one version (a lost answer to the manifest's conditional create is not a lost race),
    # and no receipt left behind.
    assert list(_s3_manifests(endpoint, bucket, "flaky")) == ["v000001.json"]
    s3 = boto3.client("s3", endpoint_url=endpoint)
    assert s3.list_objects_v2(Bucket=bucket, Prefix="flaky/receipts/").get("KeyCount", 0) == 0


def _assert_clean_failure(rc: int, err: str, output: str) -> None:
    assert rc not in (0, None), err
    lines = [ln for ln in err.splitlines() if ln.startswith("groundv:")]
    assert lines, f"no groundv: message in stderr:\n{err[-2000:]}"
    text = "\n".join(lines)
    assert "nothing was committed" in text or "configuration error" in text, text
    assert output.split("://")[-1].split("/")[0] in text or "store" in text, text


@pytest.mark.parametrize("fault", ["down", "writes_down", "stopped"])
def test_store_down_keeps_the_previous_version(ray_session: Any, s3_sample: dict[str, Any], tmp_path: Path,
                                               capsys: pytest.CaptureFixture[str], fault: str) -> None:
    endpoint, bucket, cfg = s3_sample["endpoint"], s3_sample["bucket"], s3_sample["cfg"]
    out = f"s3://{bucket}/out"
    proxy = FlakyProxy(endpoint).start()
    try:
        conf = _with(cfg, out, proxy.url, retries=1)
        assert run_build(tmp_path, "v1", conf) == 0
        v1 = _s3_manifests(endpoint, bucket, "out")
        assert list(v1) == ["v000001.json"]
        capsys.readouterr()
        if fault == "stopped":
            proxy.stop()
        else:
            proxy.mode = "down" if fault == "down" else "writes_down"
        t0 = time.monotonic()
        # A change that needs new work (every unit is regenerated), so the build must write.
        rc = run_build(tmp_path, "v2", conf, "teacher.pairs_per_unit=2")
        elapsed = time.monotonic() - t0
        err = capsys.readouterr().err
    finally:
        proxy.stop()
    _assert_clean_failure(rc, err, out)
    assert elapsed < 300, f"a dead store took {elapsed:.0f} s to give up"
    assert "store" in err  # the message says what is wrong: the object store
    assert _s3_manifests(endpoint, bucket, "out") == v1  # v1 byte for byte, no v2


# ------------------------------------------------------------------ (c) the local output -----------
def _root_can(cmd: list[str]) -> bool:
    return subprocess.run(cmd, capture_output=True).returncode == 0


@pytest.fixture
def tmpfs(tmp_path: Path) -> Iterator[Path]:
    """A real 16 MiB tmpfs (needs CAP_SYS_ADMIN, as root in the test container)."""
    mnt = tmp_path / "tmpfs"
    mnt.mkdir()
    if not _root_can(["mount", "-t", "tmpfs", "-o", "size=16m", "tmpfs", str(mnt)]):
        pytest.skip("cannot mount a tmpfs here (needs root / CAP_SYS_ADMIN)")
    try:
        yield mnt
    finally:
        subprocess.run(["chattr", "-R", "-i", str(mnt)], capture_output=True)
        subprocess.run(["mount", "-o", "remount,rw", str(mnt)], capture_output=True)
        subprocess.run(["umount", "-l", str(mnt)], capture_output=True)


def _fill(mnt: Path) -> None:
    """Fill the file system to the last byte (unbuffered writes until ENOSPC at every block size)."""
    fd = os.open(mnt / "filler.bin", os.O_WRONLY | os.O_CREAT, 0o644)
    try:
        for size in (1 << 20, 1 << 16, 1 << 12, 1 << 8, 1):
            block = b"\0" * size
            while True:
                try:
                    if os.write(fd, block) < size:
                        break
                except OSError:
                    break
    finally:
        os.close(fd)
    with pytest.raises(OSError, match="No space left"):
        (mnt / "probe.bin").write_bytes(b"x" * 4096)


def _disk_full(mnt: Path, out: Path) -> Callable[[], None]:
    _fill(mnt)
    return lambda: (mnt / "filler.bin").unlink()


def _read_only(mnt: Path, out: Path) -> Callable[[], None]:
    assert _root_can(["mount", "-o", "remount,ro", str(mnt)])
    return lambda: None


def _immutable(mnt: Path, out: Path) -> Callable[[], None]:
    if not _root_can(["chattr", "-R", "+i", str(out / "data")]):
        pytest.skip("chattr +i is not supported here")
    return lambda: None


@pytest.mark.parametrize(("fault", "make", "words"), [
    ("disk_full", _disk_full, "No space left on device"),
    ("read_only", _read_only, "Read-only file system"),
    ("immutable", _immutable, "Operation not permitted"),
])
def test_local_output_fault_keeps_the_previous_version(ray_session: Any, sample_dir: Path, tmpfs: Path,
                                                       capsys: pytest.CaptureFixture[str], fault: str,
                                                       make: Callable[[Path, Path], Callable[[], None]],
                                                       words: str) -> None:
    out = tmpfs / "out"
    base = [f"data.sample.dir={sample_dir}", "tasks=[multi_object,hallucination]", f"output.uri={out}"]
    assert main(base) == 0
    v1 = local_manifests(out)
    assert list(v1) == ["v000001.json"]
    capsys.readouterr()
    undo = make(tmpfs, out)
    try:
        rc = main([*base, "teacher.pairs_per_unit=2"])
        err = capsys.readouterr().err
    finally:
        undo()
    _assert_clean_failure(rc, err, str(out))
    assert words in err and "cannot write" in err, err[-1500:]
    assert local_manifests(out) == v1  # v1 byte for byte, no v2
    assert not list(out.rglob(".tmp-*")), "a failed write left a temp file behind"


def test_failure_message_finds_the_cause_under_ray_wrappers() -> None:
    """A stage failure reaches the driver as a Ray wrapper whose original exception survives only
    in the remote traceback text; the message must still name it (and the dataset's state)."""
    from ray.exceptions import RayError

    from pipelines.storage.fs import StorageError
    from pipelines.storage.preflight import failure_message

    remote = RayError(
        "\x1b[36mray::MapWorker(MapBatches(ShardWriter)).submit()\x1b[39m (pid=1)\n"
        '  File "pipelines/storage/fs.py", line 1, in write_bytes\n'
        "OSError: [Errno 28] No space left on device\n\n"
        "The above exception was the direct cause of the following exception:\n\n"
        "pipelines.storage.fs.StorageError: cannot write /out/data/x.parquet: No space left on device (free space)\n\n"
        "The above exception was the direct cause of the following exception:\n\n"
        "ray.exceptions.UserCodeException: UDF failed to process a data block.\n"
    )
    msg = failure_message(remote, "/out", 3)
    assert msg.startswith("groundv: build failed: StorageError: cannot write /out/data/x.parquet: No space left")
    assert "unchanged at manifest v000003" in msg and "re-run the same command" in msg
    local = failure_message(StorageError(5, "read s3://b/k: the store kept failing"), "s3://b/out")
    assert "StorageError: read s3://b/k: the store kept failing" in local and "versions of s3://b/out" in local
