"""The Ray Data stream: images -> units -> teacher -> checks -> shards, one receipt per batch.

Resources are declared per stage so an autoscaler does the right thing: reading and decoding are
CPU tasks, the teacher stage brings its own resources (GPU actors for vLLM), the check stage is a
CPU actor pool; no CPU stage ever asks for a GPU.
"""

from __future__ import annotations

import os
from typing import Any, Iterator

import pyarrow as pa
import ray
import ray.data

from pipelines.build.plan import Plan, split_for_stream
from pipelines.build.stages.check import CheckUnits
from pipelines.build.stages.images import DecodeAndFanOut, ReadImages
from pipelines.build.stages.shards import ShardWriter
from pipelines.build.work_list import WorkListDatasource, write_work_list
from pipelines.config import GroundVConfig, StreamConfig, TeacherConfig, grid_factor
from pipelines.core.resources import Resources, StageSpec, pool_ceiling, stage
from pipelines.storage.fs import StorageSpec
from pipelines.storage.output import work_list_uri
from teachers.base import Teacher

PROJECT_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
_LOCAL_RAY = False  # True when this process started the Ray it runs on (it cannot grow)


def _export_code_path() -> None:
    """Make this checkout importable by the workers of a local Ray this driver starts: workers
    inherit the driver's environment, so PYTHONPATH is enough (a runtime_env would cost a worker
    start-up per job). Inside `ray job submit --working-dir .` the job ships the code itself."""
    parts = [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
    if PROJECT_ROOT not in parts:
        os.environ["PYTHONPATH"] = os.pathsep.join([PROJECT_ROOT, *parts])


def init_ray(cfg: GroundVConfig) -> None:
    """Join the cluster (ray job submit sets RAY_ADDRESS) or start a local Ray."""
    global _LOCAL_RAY
    if ray.is_initialized():
        return
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    address = cfg.ray.address or os.environ.get("RAY_ADDRESS")
    if address:
        # A driver started by hand against a running cluster: its workers do not share our env.
        runtime_env = ({} if os.environ.get("RAY_JOB_CONFIG_JSON_ENV_VAR")
                       else {"env_vars": {"PYTHONPATH": PROJECT_ROOT}})
        ray.init(address=address, log_to_driver=True, runtime_env=runtime_env or None)
        return
    _export_code_path()
    # On a 2-core box the stage actors can take every slot and starve the read tasks: give the
    # local Ray at least 4 logical CPUs (STACK.md).
    num_cpus = cfg.ray.num_cpus or max(4, os.cpu_count() or 1)
    ray.init(num_cpus=num_cpus, include_dashboard=False, log_to_driver=True)
    _LOCAL_RAY = True


def cpu_ceiling() -> int:
    """Largest CPU actor pool worth asking for (see pipelines/core/resources.py). A local Ray keeps half its
    logical CPUs for reads, writes and Ray Data's own tasks."""
    ceiling = pool_ceiling(local=_LOCAL_RAY)
    return max(1, ceiling // 2) if _LOCAL_RAY else ceiling


class FusedCpuStage:
    """Read -> decode/fan-out -> teacher -> check -> write in one actor, for teachers that run in
    process on CPU (template, replay).

    The stages stay separate classes (each testable alone); chaining them in one Ray Data operator
    removes four hand-offs between actor pools, which measured as most of the overhead on small
    CPU machines (bench/README.md). GPU teachers keep separate stages so the engine pool scales alone.
    """

    # One core per actor: the chain is CPU-bound Python (decode, templates, pycocotools checks).
    resources = Resources(num_cpus=1)

    def __init__(self, store: StorageSpec, teacher: Teacher, cfg_stream: StreamConfig, teacher_cfg: TeacherConfig,
                 filters: Any, output: str, build_id: str) -> None:
        self.read = ReadImages(store)
        self.decode = DecodeAndFanOut.for_teacher(teacher.needs_image, teacher_cfg, cfg_stream.max_image_pixels)
        self.teach = teacher.cpu_stage()
        self.check = CheckUnits(filters, teacher.label())
        self.write = ShardWriter(output, store, build_id)

    def __call__(self, batch: Any) -> Any:
        return self.write(self.check(self.teach(self.decode(self.read(batch)))))


def fused_spec(s: StreamConfig) -> StageSpec:
    """The fused pool: configured bounds, else the cluster's ceiling. A local Ray cannot grow, so
    its pool starts at full size (no scale-up lag); a cluster starts small and grows with work."""
    ceiling = cpu_ceiling()
    hi = s.cpu_actors_max or ceiling
    lo = s.cpu_actors_min or (hi if _LOCAL_RAY else 1)
    return stage(FusedCpuStage, None, min_actors=lo, max_actors=hi)  # one block = one batch (build_stream)


def build_stream(plan: Plan, teacher: Teacher, cfg: GroundVConfig, store: StorageSpec,
                 build_id: str) -> ray.data.Dataset:
    s = cfg.stream
    fused = teacher.cpu_stage() is not None and s.fuse_cpu_stages
    ceiling = cpu_ceiling()
    first = fused_spec(s) if fused else stage(ReadImages, None, ceiling=ceiling)
    ds = read_work_list(plan, cfg, store, build_id, first)
    if fused:
        return first.apply(ds, store, teacher, s, cfg.teacher, cfg.filters, cfg.output.uri, build_id)
    # Read bytes once per image (I/O bound), then decode/resize and fan out to units.
    ds = first.apply(ds, store)
    ds = stage(DecodeAndFanOut, None, ceiling=ceiling).apply(
        ds, teacher.needs_image, cfg.teacher.max_pixels, s.max_image_pixels, grid_factor(cfg.teacher),
        cfg.teacher.min_pixels)
    # One branch only (a second branch would re-read every image): units whose image failed pass
    # through the teacher stage untouched, by the Teacher contract (teachers/base.py).
    units = teacher.attach(ds)
    return _check_and_write(units, cfg, store, build_id, teacher.label())


def read_work_list(plan: Plan, cfg: GroundVConfig, store: StorageSpec, build_id: str,
                   first: StageSpec) -> ray.data.Dataset:
    """The plan's work list written to storage block by block, read back by the workers
    (work_list.py): image records never pass through the driver's object store. A block is one
    batch of the image stages (batch_size None), so the records of one image that the plan put
    together stay together, and the teacher sends their identical requests once
    (teachers/requests.py). The read asks for what the first stage asks, so Ray fuses it into
    that stage's actors: a separate read task would need a CPU slot of its own, and on a local Ray
    the actor pools hold every slot (the build would wait forever)."""
    uri = work_list_uri(cfg.output.uri, build_id)
    sizes = write_work_list(plan.iter_blocks(cfg.stream.image_batch_size), uri, store)
    return ray.data.read_datasource(WorkListDatasource(uri, store, sizes), override_num_blocks=len(sizes),
                                    ray_remote_args=first.remote_args())


def _check_and_write(ds: ray.data.Dataset, cfg: GroundVConfig, store: StorageSpec, build_id: str,
                     teacher_label: str) -> ray.data.Dataset:
    s = cfg.stream
    results = stage(CheckUnits, s.check_batch_size, s.check_actors_min, s.check_actors_max).apply(
        ds, cfg.filters, teacher_label)
    return stage(ShardWriter, s.write_batch_size).apply(results, cfg.output.uri, store, build_id)


def build_refilter_stream(units: list[dict[str, Any]], responses: dict[str, dict], cfg: GroundVConfig,
                          store: StorageSpec, build_id: str, teacher_label: str) -> ray.data.Dataset:
    """Re-check stored responses under the current filters: no image read, no teacher call."""

    from schemas.columns import TEACHER_OUT_FIELDS, UNIT_SCHEMA

    schema = pa.schema([*UNIT_SCHEMA, *[pa.field(n, t) for n, t in TEACHER_OUT_FIELDS]])
    rows = []
    for u in units:
        r = responses.get(u["gen_key"], {})
        rows.append({**{k: u[k] for k in UNIT_SCHEMA.names}, **{n: r.get(n) for n, _ in TEACHER_OUT_FIELDS}})
    table = pa.Table.from_pylist(rows, schema=schema)
    ds = ray.data.from_blocks(split_for_stream(table, cfg.stream.check_batch_size))
    return _check_and_write(ds, cfg, store, build_id, teacher_label)


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
