"""Plain Ray tasks for driver-side steps that would otherwise hold big data in the driver (parsing
annotation JSON, compacting shards): the work runs in a worker, only small results come back, and a
failure surfaces as the function's own exception (type and message), not a RayTaskError traceback.

Ray is never imported here: a caller that runs without Ray (a CLI, a rebuild that changes nothing)
gets `ray_up() is None` for free and runs in process.
"""

from __future__ import annotations

import sys
from typing import Any, Callable, Iterator, Sequence


def ray_up() -> Any | None:
    """The `ray` module when Ray is initialised in this process, else None (Ray not imported:
    certainly not initialised, and no import cost)."""
    ray = sys.modules.get("ray")
    return ray if ray is not None and ray.is_initialized() else None


def own_error(exc: BaseException) -> BaseException:
    """The task's own exception under Ray's RayTaskError wrapper (itself when there is none)."""
    cause = getattr(exc, "cause", None)
    return cause if isinstance(cause, Exception) else exc


def cluster_cpus(ray: Any) -> int:
    """CPUs the cluster has now, at least 1 (a head that advertises CPU: 0 still runs one at a time)."""
    return max(1, int(ray.cluster_resources().get("CPU", 1)))


def imap_tasks(fn: Callable[..., Any], jobs: Sequence[tuple[Any, ...]], *, num_cpus: float = 1.0,
               window: int | None = None, retries: int = 0) -> Iterator[tuple[int, Any]]:
    """`(i, fn(*jobs[i]))` for every job as the Ray tasks finish (not in job order), with at most
    `window` tasks submitted at once (None: all), so thousands of jobs never sit in the driver as
    task specs at once. Needs Ray initialised. The first failure stops it: the tasks still in flight
    are cancelled and the job's own exception is raised. `retries`: re-runs after a lost worker or
    node (Ray never retries the function's own exception here), for idempotent jobs only."""
    import ray

    task = ray.remote(num_cpus=num_cpus, max_retries=retries)(fn)
    limit = max(1, window if window is not None else len(jobs))
    todo = iter(enumerate(jobs))
    running: dict[Any, int] = {}

    def submit() -> None:
        for i, job in todo:
            running[task.remote(*job)] = i
            if len(running) >= limit:
                return

    try:
        submit()
        while running:
            done, _ = ray.wait(list(running), num_returns=1)
            i = running.pop(done[0])
            try:
                result = ray.get(done[0])
            except ray.exceptions.RayTaskError as e:
                raise own_error(e) from None
            submit()
            yield i, result
    finally:  # a failure (ours or the caller's, e.g. interrupted): nothing keeps running for nobody
        for ref in running:
            ray.cancel(ref)
