"""Issue 11 bug: the fused CPU stage's pool was sized from `ray.cluster_resources()` at submit time.
On the autoscaling cluster.yaml (head `CPU: 0`, workers from 0) that is ONE actor for a build of any
size. Pool bounds now come from config and the autoscaler's view; on Ray's fake multi-node provider
the real template build's fused pool grows past one node.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time

import pytest

from tests.test_cluster import fake_autoscaling_config, load_yaml
from tests.test_job_submit import ROOT, LocalRayCluster, cluster_env


@pytest.mark.unit
def test_stage_pool_bounds_come_from_declarations_and_config():
    from pipelines.build.stages.images import ReadImages
    from pipelines.build.stream import FusedCpuStage
    from pipelines.core.resources import DEFAULT_POOL_CEILING, stage

    # Nothing configured, autoscaler view unknown: 1..ceiling, whatever is up at submit.
    spec = stage(FusedCpuStage, 8, ceiling=None)
    assert (spec.min_actors, spec.max_actors) == (1, DEFAULT_POOL_CEILING) and spec.resources.num_cpus == 1
    assert (stage(FusedCpuStage, 8, 2, 6).min_actors, stage(FusedCpuStage, 8, 2, 6).max_actors) == (2, 6)
    # A declared maximum (I/O stage) wins over the ceiling; min never exceeds max.
    read = stage(ReadImages, 8, ceiling=100)
    assert (read.min_actors, read.max_actors, read.resources.num_cpus) == (1, 2, 0.5)
    assert stage(FusedCpuStage, 8, min_actors=10, max_actors=3).min_actors == 3


DRIVER = r'''
import json, os, sys
sys.path.insert(0, sys.argv[1])
import ray
from pipelines.build import stream
from pipelines.config import load_config
from pipelines.storage.fs import StorageSpec
from schemas.columns import IMAGE_WORK_SCHEMA
from teachers.backends import build_teacher
from teachers.prompts import default_prompts_dir, load_prompts

cfg = load_config([], sys.argv[2:])
ray.init(address=os.environ["RAY_ADDRESS"])
up = ray.cluster_resources().get("CPU", 0)

class EmptyPlan:
    @staticmethod
    def iter_blocks(rows_per_block):
        yield IMAGE_WORK_SCHEMA.empty_table()

# The fused operator's pool as Ray Data gets it, built while only the head (CPU 0) is up.
teacher = build_teacher(cfg.teacher, load_prompts(default_prompts_dir(), list(cfg.tasks)), StorageSpec(None, 1), 32)
compute = stream.build_stream(EmptyPlan, teacher, cfg, StorageSpec(None, 1), "probe")._logical_plan.dag.compute
print("SUBMIT " + json.dumps({"cpus_up": up, "pool": [compute.min_size, compute.max_size]}), flush=True)
from pipelines import build_groundv
rc = build_groundv.main(sys.argv[2:])
print("RC " + str(rc), flush=True)
from ray.util.state import list_actors
workers = [a for a in list_actors(limit=10000, detail=True, raise_on_missing_output=False)
           if "FusedCpuStage" in (a.class_name or "")]
print("ACTORS " + json.dumps([a.node_id for a in workers]), flush=True)
'''


@pytest.mark.cluster
def test_fused_pool_grows_past_one_node_on_fake_autoscaler(tmp_path):
    cluster_cfg = load_yaml(os.path.join(ROOT, "cluster.yaml"))
    env = cluster_env()
    env.update({"RAY_FAKE_CLUSTER": "1", "AUTOSCALER_UPDATE_INTERVAL_S": "1", "RAY_DATA_DISABLE_PROGRESS_BARS": "1"})
    cluster = LocalRayCluster(env)
    fake = fake_autoscaling_config(cluster_cfg, cluster.address)
    # Small CPU nodes (2 CPUs, up to 3 of them) so that a pool of more than two one-core actors
    # needs more than one node; no GPU node is needed by a template build.
    cpu_type = fake["available_node_types"]["cpu_spot"]
    cpu_type["resources"]["CPU"], cpu_type["max_workers"] = 2, 3
    fake["available_node_types"]["gpu_l40s"]["max_workers"] = 0
    fake["max_workers"] = 3
    config = tmp_path / "fake_autoscaling.json"
    config.write_text(json.dumps(fake))
    overrides = [f"output.uri={tmp_path / 'out'}", f"data.sample.dir={tmp_path / 'sample'}",
                 "data.sample.num_images=48", "stream.image_batch_size=1",
                 # Three one-core actors at least need two 2-CPU nodes; the driver waits for the pool's
                 # minimum (RAY_DATA_DEFAULT_WAIT_FOR_MIN_ACTORS_S), so this does not race the job's end.
                 "stream.cpu_actors_min=3"]
    try:
        cluster.start_head(num_cpus=0, dashboard=True, extra=[f"--autoscaling-config={config}"])
        driver = subprocess.run([sys.executable, "-c", DRIVER, ROOT, *overrides],
                                env={**env, "RAY_ADDRESS": cluster.address,
                                     "RAY_DATA_DEFAULT_WAIT_FOR_MIN_ACTORS_S": "300"},
                                cwd=str(tmp_path),
                                capture_output=True, text=True, timeout=600)
        log_path = os.path.join(cluster.temp_dir, "session_latest", "logs", "monitor.log")
        time.sleep(2)
        with open(log_path) as fh:
            monitor_log = fh.read()
    finally:
        cluster.stop()
    out = driver.stdout + driver.stderr
    assert driver.returncode == 0 and "RC 0" in driver.stdout, out[-4000:]
    # Head CPU 0 at submit: the old rule gave max(1, 0 // 2) = 1 actor, so one node at most.
    submit = json.loads(next(x for x in driver.stdout.splitlines() if x.startswith("SUBMIT "))[7:])
    assert submit["cpus_up"] == 0, submit
    assert submit["pool"][1] > 2, submit  # the old rule: max(1, 0 // 2) = 1 actor for the whole job
    nodes = json.loads(next(x for x in driver.stdout.splitlines() if x.startswith("ACTORS "))[7:])
    assert len(set(nodes)) >= 2, nodes
    launched = sum(int(n) for n in re.findall(r"Adding (\d+) node\(s\) of type cpu_spot", monitor_log))
    assert launched >= 2, monitor_log[-3000:]
