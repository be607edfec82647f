"""The work list (issue 14): the stream's blocks written to storage by the driver and read back by
Ray read tasks, one block per row group, so image records never pass through the driver's object
store. The blocks must be exactly the plan's (the records of one image together: request dedup)."""

from __future__ import annotations

import os

import pytest

from pipelines.build.plan import make_plan, split_for_stream
from pipelines.build.work_list import WorkListDatasource, read_block, write_work_list
from pipelines.storage.fs import StorageError, StorageSpec
from pipelines.storage.output import work_list_uri
from tests.test_plan_memory import _plan_inputs


def _plan(tmp_path):
    imgs, tasks, prompts, empty = _plan_inputs(tmp_path, 12, 5)
    return make_plan(imgs.images, tasks, imgs.identities, prompts, "T", empty)


@pytest.mark.unit
@pytest.mark.parametrize("n", [1, 2, 5, 128])
def test_blocks_built_one_by_one_are_the_plans_blocks(tmp_path, n):
    p = _plan(tmp_path)
    want = split_for_stream(p.work, n)
    got = list(p.iter_blocks(n))
    assert len(got) == len(want) > 0
    for g, w in zip(got, want, strict=True):
        assert g.equals(w)
    # the sample's COCO, LVIS and PACO records share images: some block holds two records of one image
    idents = [[u["image_identity"] for u in r["units"]][0] for b in got for r in b.to_pylist()]
    assert len(idents) == p.work.num_rows and len(set(idents)) < len(idents)


@pytest.mark.unit
def test_work_list_round_trip_keeps_each_block_whole(tmp_path):
    p = _plan(tmp_path)
    blocks = list(p.iter_blocks(3))
    uri = work_list_uri(str(tmp_path / "out"), "b1")
    sizes = write_work_list(iter(blocks), uri, StorageSpec())
    assert [r for r, _ in sizes] == [b.num_rows for b in blocks]
    assert os.listdir(os.path.dirname(uri)) == ["b1.parquet"]  # no temp file left
    for i, b in enumerate(blocks):
        (t,) = read_block(uri, StorageSpec(), i)
        assert t.equals(b)


@pytest.mark.unit
def test_unwritable_output_is_a_storage_error_naming_the_file(tmp_path):
    p = _plan(tmp_path)
    out = tmp_path / "out"
    out.mkdir()
    (out / "cache").write_text("a file where the cache folder should be")
    with pytest.raises(StorageError, match="work list"):
        write_work_list(p.iter_blocks(4), work_list_uri(str(out), "b"), StorageSpec())


@pytest.mark.ray
def test_ray_reads_one_block_per_row_group(tmp_path, ray_session):
    import ray.data

    p = _plan(tmp_path)
    blocks = list(p.iter_blocks(12))  # a few blocks: Ray's default parallelism would split them
    assert len(blocks) >= 2
    uri = work_list_uri(str(tmp_path / "out"), "b2")
    sizes = write_work_list(iter(blocks), uri, StorageSpec())
    # Ray would split a few small read outputs to reach its default parallelism; the datasource
    # asks for exactly one block per row group, and the image stage sees each as one batch.
    ds = ray.data.read_datasource(WorkListDatasource(uri, StorageSpec(), sizes), override_num_blocks=len(sizes))
    got = list(ds.iter_batches(batch_size=None, batch_format="pyarrow"))
    key = lambda t: (t.column("source")[0].as_py(), t.column("image_id")[0].as_py())  # noqa: E731
    assert len(got) == len(blocks)
    for g, b in zip(sorted(got, key=key), sorted(blocks, key=key), strict=True):
        assert g.equals(b)


@pytest.mark.unit
def test_gc_removes_work_lists_of_killed_builds_after_the_grace_period(tmp_path):
    import json
    import time

    from pipelines.storage.gc import collect

    out = tmp_path
    (out / "manifests").mkdir()
    (out / "manifests" / "v000001.json").write_text(json.dumps({
        "version": 1, "parent_version": None, "created_at": "", "config": {}, "config_hash": "", "teacher": {},
        "prompts": {}, "filters": {}, "shards": [], "stats": {}}))
    old, running = (work_list_uri(str(out), b) for b in ("killed", "running"))
    os.makedirs(os.path.dirname(old))
    for path in (old, running):
        open(path, "wb").write(b"x")
    os.utime(old, (time.time() - 10 * 3600, time.time() - 10 * 3600))
    r = collect(str(out), 1, StorageSpec(), grace_s=3600, delete=True)
    assert r.garbage == ["cache/work/killed.parquet"] and r.kept_recent == 1
    assert os.path.exists(running) and not os.path.exists(old)
