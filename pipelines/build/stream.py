"""The Ray Data stream: images -> units -> teacher -> checks -> shards, one receipt per batch.

Resources are declared per stage so an autoscaler does the right thing: reading and decoding are
CPU tasks, the teacher stage brings its own resources (GPU actors for vLLM), the check stage is a
CPU actor pool; no CPU stage ever asks for a GPU.
"""

from __future__ import annotations

import os
from typing import Any, Iterator

import ray
import ray.data

from pipelines.build.plan import Plan, split_for_stream
from pipelines.build.stages.check import CheckUnits
from pipelines.build.stages.images import DecodeAndFanOut, ReadImages
from pipelines.build.stages.shards import ShardWriter
from pipelines.config import GroundVConfig
from pipelines.storage.fs import StorageSpec
from teachers.base import Teacher

PROJECT_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _code_runtime_env() -> dict[str, Any]:
    """Make this checkout importable by the workers of a driver started by hand.

    Inside `ray job submit --working-dir .` the job's runtime env already ships the code (and the
    job supervisor sets RAY_JOB_CONFIG_JSON_ENV_VAR); we must not override it there.
    """
    if os.environ.get("RAY_JOB_CONFIG_JSON_ENV_VAR"):
        return {}
    path = os.pathsep.join(p for p in (PROJECT_ROOT, os.environ.get("PYTHONPATH", "")) if p)
    return {"env_vars": {"PYTHONPATH": path}}


def init_ray(cfg: GroundVConfig) -> None:
    """Join the cluster (ray job submit sets RAY_ADDRESS) or start a local Ray."""
    if ray.is_initialized():
        return
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    address = cfg.ray.address or os.environ.get("RAY_ADDRESS")
    runtime_env = _code_runtime_env()
    if address:
        ray.init(address=address, log_to_driver=True, runtime_env=runtime_env or None)
        return
    # On a 2-core box the stage actors can take every slot and starve the read tasks: give the
    # local Ray at least 4 logical CPUs (STACK.md).
    num_cpus = cfg.ray.num_cpus or max(4, os.cpu_count() or 1)
    ray.init(num_cpus=num_cpus, include_dashboard=False, log_to_driver=True, runtime_env=runtime_env or None)


class FusedCpuStage:
    """Read -> decode/fan-out -> teacher -> check -> write in one actor, for teachers that run in
    process on CPU (template, replay).

    The stages stay separate classes (each testable alone); chaining them in one Ray Data operator
    removes four hand-offs between actor pools, which measured as most of the overhead on small
    CPU machines (bench/README.md). GPU teachers keep separate stages so the engine pool scales alone.
    """

    def __init__(self, store: StorageSpec, teacher: Teacher, cfg_stream: Any, max_pixels: int, filters: Any,
                 output: str, build_id: str) -> None:
        self.read = ReadImages(store)
        self.decode = DecodeAndFanOut(teacher.needs_image, max_pixels, cfg_stream.max_image_pixels)
        self.teach = teacher.cpu_stage()
        self.check = CheckUnits(filters, teacher.label())
        self.write = ShardWriter(output, store, build_id)

    def __call__(self, batch: Any) -> Any:
        return self.write(self.check(self.teach(self.decode(self.read(batch)))))


def build_stream(plan: Plan, teacher: Teacher, cfg: Any, store: StorageSpec, build_id: str) -> ray.data.Dataset:
    s = cfg.stream
    blocks = split_for_stream(plan.work, s.image_batch_size)
    ds = ray.data.from_arrow(blocks)
    if teacher.cpu_stage() is not None and s.fuse_cpu_stages:
        n = s.cpu_actors_max or max(1, int(ray.cluster_resources().get("CPU", 1)) // 2)
        return ds.map_batches(
            FusedCpuStage,
            fn_constructor_args=(store, teacher, s, cfg.teacher.max_pixels, cfg.filters, cfg.output.uri,
                                 build_id),
            batch_size=s.image_batch_size, batch_format="pyarrow",
            compute=ray.data.ActorPoolStrategy(min_size=1, max_size=max(1, n)),
        )
    # Read bytes once per image (I/O bound tasks), then decode/resize and fan out to units.
    ds = ds.map_batches(ReadImages, fn_constructor_args=(store,), batch_size=s.image_batch_size,
                        batch_format="pyarrow", compute=ray.data.ActorPoolStrategy(min_size=1, max_size=2),
                        num_cpus=0.5)
    ds = ds.map_batches(
        DecodeAndFanOut,
        fn_constructor_args=(teacher.needs_image, cfg.teacher.max_pixels, s.max_image_pixels),
        batch_size=s.image_batch_size, batch_format="pyarrow",
        compute=ray.data.ActorPoolStrategy(min_size=1, max_size=2),
    )
    # One branch only (a second branch would re-read every image): units whose image failed pass
    # through the teacher stage untouched, by the Teacher contract (teachers/base.py).
    units = teacher.attach(ds)
    results = units.map_batches(
        CheckUnits, fn_constructor_args=(cfg.filters, teacher.label()), batch_size=s.check_batch_size,
        batch_format="pyarrow",
        compute=ray.data.ActorPoolStrategy(min_size=s.check_actors_min, max_size=s.check_actors_max),
    )
    return results.map_batches(
        ShardWriter, fn_constructor_args=(cfg.output.uri, store, build_id), batch_size=s.write_batch_size,
        batch_format="pyarrow", compute=ray.data.ActorPoolStrategy(min_size=1, max_size=2), num_cpus=0.5,
    )


def build_refilter_stream(units: list[dict[str, Any]], responses: dict[str, dict], cfg: Any, store: StorageSpec,
                          build_id: str, teacher_label: str) -> ray.data.Dataset:
    """Re-check stored responses under the current filters: no image read, no teacher call."""
    import pyarrow as pa

    from schemas.columns import TEACHER_OUT_FIELDS, UNIT_SCHEMA

    schema = pa.schema([*UNIT_SCHEMA, *[pa.field(n, t) for n, t in TEACHER_OUT_FIELDS]])
    rows = []
    for u in units:
        r = responses.get(u["gen_key"], {})
        rows.append({**{k: u[k] for k in UNIT_SCHEMA.names}, **{n: r.get(n) for n, _ in TEACHER_OUT_FIELDS}})
    table = pa.Table.from_pylist(rows, schema=schema)
    s = cfg.stream
    ds = ray.data.from_arrow(split_for_stream(table, s.check_batch_size))
    results = ds.map_batches(
        CheckUnits, fn_constructor_args=(cfg.filters, teacher_label), batch_size=s.check_batch_size,
        batch_format="pyarrow",
        compute=ray.data.ActorPoolStrategy(min_size=s.check_actors_min, max_size=s.check_actors_max),
    )
    return results.map_batches(
        ShardWriter, fn_constructor_args=(cfg.output.uri, store, build_id), batch_size=s.write_batch_size,
        batch_format="pyarrow", compute=ray.data.ActorPoolStrategy(min_size=1, max_size=2), num_cpus=0.5,
    )


def iter_receipts(ds: ray.data.Dataset) -> Iterator[dict[str, Any]]:
    """Stream the receipts back to the driver as batches finish (drives progress + commit)."""
    for batch in ds.iter_batches(batch_size=None, batch_format="pyarrow"):
        yield from batch.to_pylist()


def stage_stats(ds: ray.data.Dataset) -> list[dict[str, Any]]:
    """Per-stage wall time, output rows and throughput from Ray Data's own stats (after execution)."""
    try:
        summary = ds._get_stats_summary()  # the structured form of ds.stats()
    except Exception:  # noqa: BLE001 - stats are best effort, never fail a build over them
        return []
    out: list[dict[str, Any]] = []
    seen: set[int] = set()

    def walk(s: Any) -> None:
        if id(s) in seen:
            return
        seen.add(id(s))
        for p in getattr(s, "parents", []) or []:
            walk(p)
        for op in getattr(s, "operators_stats", []) or []:
            rows = op.output_num_rows
            n = int((rows.get("sum", 0) if isinstance(rows, dict) else getattr(rows, "sum", 0)) or 0)
            wall = float(op.time_total_s or 0.0)
            out.append({"stage": op.operator_name, "wall_s": round(wall, 3), "rows_out": n,
                        "rows_per_s": round(n / wall, 2) if wall > 0 else None})

    walk(summary)
    return out
