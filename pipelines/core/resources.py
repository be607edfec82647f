"""What each stage asks of the cluster and how it takes its input (NeMo Curator's style).

A stage class declares its `resources` next to its code; `StageSpec.apply` turns that declaration
plus the configured batch size and pool bounds into one `map_batches` call, so the stream is
assembled from declarations instead of literals at call sites.

Pool bounds never come from what happens to be up at submit time: on an autoscaling cluster the
head advertises `CPU: 0` and workers start from 0, so `ray.cluster_resources()` would size every pool
to one actor for the whole job. Bounds come from the config and, when it is silent, from the
autoscaler's view of the largest the cluster can become (`pool_ceiling`).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

# A ceiling for CPU actor pools when neither the config nor the autoscaler says how large the
# cluster can grow (autoscaler v1 does not publish its node types to the GCS). Ray Data's pool only
# grows while it has queued work, so a high ceiling costs nothing on a small cluster.
DEFAULT_POOL_CEILING = 64


@dataclass(frozen=True)
class Resources:
    """Per-actor request of a stage and its default pool bounds."""

    num_cpus: float = 1.0
    num_gpus: float = 0.0
    min_actors: int = 1
    max_actors: int | None = None  # None: as many as the cluster can hold (see pool_ceiling)


@dataclass(frozen=True)
class StageSpec:
    """One Ray Data operator: the callable class, its batch shape and its pool."""

    fn: type
    batch_size: int | None
    resources: Resources
    min_actors: int
    max_actors: int

    def remote_args(self) -> dict[str, Any]:
        """The per-actor request as Ray remote args (what `apply` passes to map_batches)."""
        kwargs: dict[str, Any] = {"num_cpus": self.resources.num_cpus}
        if self.resources.num_gpus:
            kwargs["num_gpus"] = self.resources.num_gpus
        return kwargs

    def apply(self, ds: Any, *constructor_args: Any) -> Any:
        import ray.data

        return ds.map_batches(
            self.fn, fn_constructor_args=constructor_args, batch_size=self.batch_size, batch_format="pyarrow",
            compute=ray.data.ActorPoolStrategy(min_size=self.min_actors, max_size=self.max_actors),
            **self.remote_args(),
        )


def stage(fn: type, batch_size: int | None, min_actors: int | None = None, max_actors: int | None = None,
          ceiling: int | None = None) -> StageSpec:
    """A StageSpec from the class's declared `resources`, overridden by configured bounds."""
    res: Resources = getattr(fn, "resources", Resources())
    hi = max_actors or res.max_actors or max(1, int((ceiling or DEFAULT_POOL_CEILING) // max(res.num_cpus, 0.01)))
    lo = min(min_actors or res.min_actors, hi)
    return StageSpec(fn, batch_size, res, max(1, lo), max(1, hi))


def pool_ceiling(local: bool) -> int:
    """How many CPUs the cluster can grow to, as far as anyone can tell before the job runs.

    A local Ray we started cannot grow: its CPUs are the ceiling. On a cluster: the autoscaler's
    configured maximum (published to the GCS by autoscaler v2), else DEFAULT_POOL_CEILING.
    """
    import ray

    if local:
        return max(1, int(ray.cluster_resources().get("CPU", os.cpu_count() or 1)))
    try:
        from ray._private.state import state

        view = state.get_max_resources_from_cluster_config() or {}
    except Exception:  # noqa: BLE001 - an older / different autoscaler: fall back to the ceiling
        view = {}
    cpus = int(view.get("CPU") or 0)
    return cpus if cpus > 0 else DEFAULT_POOL_CEILING
