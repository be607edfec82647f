"""The work list (issue 14): the stream's blocks written to storage by the driver and read back by
Ray read tasks, one block per row group, so image records never pass through the driver's object
store. The blocks must be exactly the plan's (the records of one image together: request dedup)."""

from __future__ import annotations

import os

import pyarrow as pa
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
    # the export's image slices (same grouping helper) are `work` cut in order
    assert pa.concat_tables(p.iter_work(n)).equals(p.work)


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
    with pytest.raises(StorageError, match="cannot write .*/cache/work/b.parquet"):
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


def _by_reference_inputs(tmp_path, cache: str | None):
    from pipelines.sources.resolve import SourceSpec, load_images
    from pipelines.sources.sample_data import ensure_sample_dataset

    made = ensure_sample_dataset(str(tmp_path / "s"), num_images=12, seed=5)
    specs = [SourceSpec(m["name"], m["format"], m["annotations"], m["images"], []) for m in made]
    held = load_images(specs, {3}, None, StorageSpec())
    ref = load_images(specs, {3}, None, StorageSpec(), cache, objects_by_reference=True)
    return held, ref


@pytest.mark.unit
@pytest.mark.parametrize("cached", [True, False])
def test_plan_with_objects_by_reference_builds_the_same_blocks(tmp_path, cached):
    """The driver's index refers to its objects in the cached index files (issue 14: driver memory);
    the work list gets exactly the objects it had when the index held them."""
    from pipelines.build.plan import _refilter_rows
    from pipelines.sources.cached_objects import OBJECTS_FILE

    imgs, tasks, prompts, empty = _plan_inputs(tmp_path, 12, 5)
    held, ref = _by_reference_inputs(tmp_path, str(tmp_path / "cache") if cached else None)
    assert held.excluded == ref.excluded > 0 and held.images.num_rows == ref.images.num_rows > 0
    assert "objects" not in ref.images.column_names and OBJECTS_FILE in ref.images.column_names
    # with a cache the objects stay in its files; without one (or an unwritable one) they are held
    assert all(isinstance(e, str) == cached for e in ref.objects.entries) and len(ref.objects.entries) == 3
    a = make_plan(held.images, tasks, held.identities, prompts, "T", empty)
    b = make_plan(ref.images, tasks, ref.identities, prompts, "T", empty, objects=ref.objects)
    for x, y in zip(a.iter_blocks(7), b.iter_blocks(7), strict=True):
        assert x.equals(y)
    stale = a.gen.slice(3, 9).append_column("stale_batch", pa.array(["b0"] * 9))
    rows = [_refilter_rows(p.images, p.identities, stale, prompts, "T", p.objects) for p in (a, b)]
    assert rows[0] == rows[1] and len(rows[0]) == 9 and all(r["objects"] for r in rows[0])


@pytest.mark.unit
def test_cached_objects_take_across_row_groups_and_evictions(tmp_path):
    import numpy as np
    import pyarrow.parquet as pq

    from pipelines.sources.cached_objects import OBJECTS_TYPE, CachedObjects

    def objects(n: int, tag: int) -> pa.Array:
        return pa.array([[{"ann_id": tag * 1000 + i, "name": f"c{i % 3}"}] for i in range(n)], OBJECTS_TYPE)

    files = []
    for tag, n in ((1, 53), (2, 20)):
        path = str(tmp_path / f"idx{tag}.parquet")
        pq.write_table(pa.table({"objects": objects(n, tag)}), path, row_group_size=8)
        files.append((path, n))
    held = objects(11, 3)
    co = CachedObjects(StorageSpec(), keep_row_groups=1)
    codes = [co.add(files[0][0]), co.add(files[1][0]), co.add(held)]
    sizes = [53, 20, 11]
    rng = np.random.default_rng(0)
    pick = rng.integers(0, 3, 300)
    rows = np.array([rng.integers(0, sizes[c]) for c in pick])
    got = co.take(np.array(codes)[pick], rows).to_pylist()
    tags = np.array([1, 2, 3])[pick]
    assert [o[0]["ann_id"] for o in got] == (tags * 1000 + rows).tolist()
    assert co.take(np.array([], np.int32), np.array([], np.int32)).to_pylist() == []


@pytest.mark.ray
@pytest.mark.parametrize(("fused", "first"), [(True, "FusedCpuStage"), (False, "ReadImages")])
def test_the_read_runs_in_the_first_stages_actors(ray_session, sample_dir, tmp_path, capsys, fused, first):
    """A separate read task needs a CPU slot of its own; on a local Ray the actor pools hold every
    slot, and the build waited forever (the separate-stages fault test hung). The read asks for
    what the first stage asks, so Ray fuses it into that stage."""
    from pipelines.build_groundv import main

    out = tmp_path / "out"
    assert main([f"data.sample.dir={sample_dir}", f"output.uri={out}", f"stream.fuse_cpu_stages={str(fused).lower()}",
                 "stream.image_batch_size=4", "data.limit=24"]) == 0
    stages = [ln for ln in capsys.readouterr().out.splitlines() if ln.startswith("stages:")]
    assert stages and f"ReadWorkList->MapBatches({first})" in stages[-1], stages
