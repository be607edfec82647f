"""Compaction: same rows in few shards, a killed compaction leaves the previous version readable,
a rebuild after compaction reuses everything."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

import pytest

from pipelines.build.compact import compact
from pipelines.build_groundv import main
from pipelines.cli.compact import main as compact_main
from pipelines.storage.fs import StorageSpec
from tests.dataset_checks import latest_manifest, read_kind

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
KINDS = ("samples", "rejects", "errors", "raw")


@pytest.fixture(scope="module")
def built(ray_session, sample_dir, tmp_path_factory) -> str:
    out = str(tmp_path_factory.mktemp("compact") / "out")
    # a fragmented version: small batches, no compaction at commit
    assert main([f"data.sample.dir={sample_dir}", f"output.uri={out}", "stream.image_batch_size=4",
                 "output.compact_min_shards=0"]) == 0
    return out


@pytest.fixture
def output(built, tmp_path) -> str:
    dst = str(tmp_path / "out")
    shutil.copytree(built, dst)
    return dst


def rows(output: str, m: dict, kind: str) -> list[tuple]:
    t = read_kind(output, m, kind)
    return sorted(tuple(map(repr, r.values())) for r in t.to_pylist()) if t.num_columns else []


@pytest.mark.ray
def test_compaction_keeps_every_row(output, sample_dir, capsys):
    v1 = latest_manifest(output)
    assert compact_main(["--output", output, "--max-rows", "1000000"]) == 0
    v2 = latest_manifest(output)
    assert v2["version"] == 2 and v2["parent_version"] == 1
    assert len(v2["shards"]) < len(v1["shards"])
    # one shard per (kind, task) at most with a large target
    groups = [(s["kind"], s["task"]) for s in v2["shards"]]
    assert len(groups) == len(set(groups))
    for kind in KINDS:
        assert rows(output, v1, kind) == rows(output, v2, kind), kind
        assert sum(s["rows"] for s in v1["shards"] if s["kind"] == kind) == sum(
            s["rows"] for s in v2["shards"] if s["kind"] == kind)
    # v1 stays readable (its shards are untouched until gc)
    assert all(os.path.exists(os.path.join(output, s["path"])) for s in v1["shards"])
    # the compacted ledger drives reuse: a rebuild changes nothing
    capsys.readouterr()
    assert main([f"data.sample.dir={sample_dir}", f"output.uri={output}"]) == 0
    assert "nothing changed, v2 is current" in capsys.readouterr().out


@pytest.mark.ray
def test_commit_compacts_and_a_prompt_edit_rebuild_stays_exact(ray_session, sample_dir, tmp_path):
    out = str(tmp_path / "out")
    prompts = tmp_path / "prompts"
    shutil.copytree(os.path.join(os.path.dirname(__file__), "..", "teachers", "prompts"), prompts)
    base = [f"data.sample.dir={sample_dir}", f"output.uri={out}", "stream.image_batch_size=4",
            "output.compact_min_shards=1", f"teacher.prompts_dir={prompts}"]
    assert main(base) == 0
    v1 = latest_manifest(out)
    groups = [(s["kind"], s["task"]) for s in v1["shards"]]
    assert len(groups) == len(set(groups)) and len({s["batch"] for s in v1["shards"]}) == 1
    with open(prompts / "reasoning.yaml", "a") as fh:
        fh.write("\n# edited\n")
    assert main(base) == 0
    v3 = latest_manifest(out)
    assert v3["version"] == 2
    per = v3["stats"]["tasks"]
    assert per["reasoning"]["teacher_calls"] == per["reasoning"]["planned"] > 0
    assert all(s["teacher_calls"] == 0 for t, s in per.items() if t != "reasoning")
    raw = read_kind(out, v3, "raw").column("gen_key").to_pylist()
    assert len(raw) == len(set(raw)) == v1["stats"]["units_planned"]
    keep = [k for k in KINDS if k != "raw"]
    others = lambda m: {k: [r for r in rows(out, m, k) if "'reasoning'" not in r] for k in keep}  # noqa: E731
    assert others(v3) == others(v1)


@pytest.mark.ray
def test_compaction_respects_the_row_target(output):
    v1 = latest_manifest(output)
    target = 2 * max(s["rows"] for s in v1["shards"])  # every pair of shards fits: some merge
    m = compact(output, StorageSpec(), max_rows=target)
    assert m is not None and len(m.shards) < len(v1["shards"])
    assert all(s.rows <= target for s in m.shards)
    groups = [(s.kind, s.task) for s in m.shards]
    assert len(groups) > len(set(groups))  # the target split some (kind, task) into several shards
    v2 = latest_manifest(output)
    for kind in KINDS:
        assert rows(output, v1, kind) == rows(output, v2, kind), kind


class Killed(BaseException):
    """Stands for SIGKILL at a point where some new shards are durable and no manifest is."""


@pytest.mark.ray
def test_killed_compaction_leaves_previous_version_readable(output):
    v1 = latest_manifest(output)
    before = {k: rows(output, v1, k) for k in KINDS}
    written = []

    def kill_after_first(entry):
        written.append(entry)
        raise Killed

    with pytest.raises(Killed):
        compact(output, StorageSpec(), max_rows=1_000_000, on_shard=kill_after_first)
    assert written
    assert sorted(os.listdir(os.path.join(output, "manifests"))) == ["v000001.json"]
    assert latest_manifest(output) == v1
    assert {k: rows(output, v1, k) for k in KINDS} == before
    # and a second compaction completes
    assert compact(output, StorageSpec(), max_rows=1_000_000) is not None
    assert {k: rows(output, latest_manifest(output), k) for k in KINDS} == before


def _cli_compact(output: str, max_rows: int) -> None:
    """The compact CLI in a fresh process: no Ray there, the groups are written in process."""
    env = {**os.environ, "PYTHONPATH": ROOT}
    subprocess.run([sys.executable, os.path.join(ROOT, "pipelines", "cli", "compact.py"), "--output", output,
                    "--max-rows", str(max_rows)], check=True, env=env, capture_output=True)


@pytest.mark.ray
def test_compaction_in_ray_tasks_equals_in_process(output, tmp_path, ray_session):
    assert ray_session.is_initialized()  # compact() below runs the groups as Ray tasks
    v1 = latest_manifest(output)
    target = 3 * max(s["rows"] for s in v1["shards"])  # several groups per kind
    twin = str(tmp_path / "twin")
    shutil.copytree(output, twin)
    m = compact(output, StorageSpec(), max_rows=target)
    _cli_compact(twin, target)
    a, b = latest_manifest(output), latest_manifest(twin)
    assert m is not None and a["version"] == b["version"] == 2
    # content-addressed: the same inputs give the same files, whichever process wrote them
    assert a["shards"] == b["shards"]
    assert len(a["shards"]) < len(v1["shards"])
    for kind in KINDS:
        assert rows(output, a, kind) == rows(twin, b, kind) == rows(output, v1, kind), kind


@pytest.mark.ray
@pytest.mark.parametrize("where", ["ray", "in_process"])
def test_a_failing_group_commits_nothing(output, ray_session, where):
    v1 = latest_manifest(output)
    gone = next(s["path"] for s in v1["shards"] if s["kind"] == "samples")
    os.remove(os.path.join(output, gone))
    if where == "ray":
        with pytest.raises(FileNotFoundError) as err:
            compact(output, StorageSpec(), max_rows=1_000_000)
        # the reader's own error naming the missing shard, not a Ray traceback
        assert type(err.value) is FileNotFoundError and os.path.basename(gone) in str(err.value)
        # raised in a worker: the driver's traceback ends where the task's error is re-raised
        assert err.traceback[-1].path.name == "tasks.py"
        assert not any(e.name == "write_group" for e in err.traceback)
    else:
        with pytest.raises(subprocess.CalledProcessError) as err:
            _cli_compact(output, 1_000_000)
        assert os.path.basename(gone) in err.value.stderr.decode()
    assert sorted(os.listdir(os.path.join(output, "manifests"))) == ["v000001.json"]
