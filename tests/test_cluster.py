"""The cluster configs and the resources the stream asks for.

* cluster.yaml passes the validator `ray up` runs (prepare_config + validate_config against Ray's own
  ray-schema.json) and has the intended shape: head CPU 0, CPU spot group from 0, GPU group 0..N with
  GPU + accelerator_type resources, images and install pinned to the project's versions.
* k8s/rayjob.yaml is a well-formed KubeRay RayJob with the same entrypoint as the README.
* The stream's stages ask for the right resources (teacher: GPUs + accelerator_type, an engine pool
  min..max; every other stage: no GPU), read from the real Ray Data plan.
* On Ray's fake multi-node autoscaler with cluster.yaml's node types, the teacher stage's request makes
  the GPU node type scale up from 0, and CPU stages never land on it.
"""

from __future__ import annotations

import copy
import json
import os
import re
import subprocess
import sys
import tempfile
import time
import tomllib
from typing import Iterator

import jsonschema
import pyarrow as pa
import pytest
import ray
import yaml
from ray.autoscaler._private.util import prepare_config, validate_config

from tests.test_job_submit import ROOT, LocalRayCluster, cluster_env

CLUSTER_YAML = os.path.join(ROOT, "cluster.yaml")
RAYJOB_YAML = os.path.join(ROOT, "k8s", "rayjob.yaml")
# GPU memory of the instance types a 7B VLM fits on (bf16 weights ~16.6 GB + KV cache).
GPU_MEMORY_GB = {"g6e.xlarge": 48, "g6e.2xlarge": 48, "g6e.4xlarge": 48, "g5.xlarge": 24, "g5.2xlarge": 24,
                 "g6.xlarge": 24, "g6.2xlarge": 24, "p4d.24xlarge": 40, "p5.48xlarge": 80}


def load_yaml(path: str):
    with open(path) as fh:
        return yaml.safe_load(fh)


@pytest.fixture(scope="module")
def cluster_cfg() -> dict:
    return load_yaml(CLUSTER_YAML)


def node_types(cfg: dict) -> tuple[dict, dict, dict]:
    """(head, cpu group, gpu group) of cluster.yaml, told apart by their resources."""
    types = cfg["available_node_types"]
    head = types[cfg["head_node_type"]]
    workers = [t for name, t in types.items() if name != cfg["head_node_type"]]
    gpu = [t for t in workers if t["resources"].get("GPU", 0) > 0]
    cpu = [t for t in workers if t["resources"].get("GPU", 0) == 0]
    assert len(gpu) == 1 and len(cpu) == 1, f"expected one CPU and one GPU worker type, got {list(types)}"
    return head, cpu[0], gpu[0]


def accelerator_of(node_type: dict) -> str:
    accs = [k.split(":", 1)[1] for k in node_type["resources"] if k.startswith("accelerator_type:")]
    assert len(accs) == 1, node_type["resources"]
    return accs[0]


# ------------------------------------------------------------------------------ cluster.yaml
def test_cluster_yaml_passes_ray_up_validation(cluster_cfg):
    # What `ray up` does before touching the cloud (commands._bootstrap_config): merge the provider's
    # defaults, then validate against ray-schema.json and the multi-node-type rules.
    prepared = prepare_config(copy.deepcopy(cluster_cfg))
    validate_config(prepared)
    assert prepared["provider"]["type"] == "aws"
    assert prepared["head_node_type"] == "head"
    assert set(prepared["available_node_types"]) == {"head", "cpu_spot", "gpu_l40s"}
    # The project install runs on every node, before Ray starts.
    install = "cd ~/groundv && bash scripts/setup.sh gpu"
    assert prepared["head_setup_commands"][0] == install and prepared["worker_setup_commands"][0] == install

    # The validator is not vacuous: the same file with a typo'd key or a fractional resource fails.
    bad = copy.deepcopy(cluster_cfg)
    bad["available_node_types"]["gpu_l40s"]["min_worker"] = 0
    with pytest.raises(jsonschema.ValidationError, match="min_worker"):
        validate_config(prepare_config(bad))
    bad = copy.deepcopy(cluster_cfg)
    bad["available_node_types"]["gpu_l40s"]["resources"]["GPU"] = 0.5
    with pytest.raises(jsonschema.ValidationError, match="0.5"):
        validate_config(prepare_config(bad))


def test_cluster_yaml_node_types(cluster_cfg):
    head, cpu, gpu = node_types(cluster_cfg)
    # Head: driver only.
    assert head["resources"] == {"CPU": 0}
    assert head.get("max_workers", 0) == 0
    # CPU group: spot, from 0, no GPUs.
    assert cpu["min_workers"] == 0 and cpu["max_workers"] >= 1
    assert cpu["node_config"]["InstanceMarketOptions"]["MarketType"] == "spot"
    assert cpu["resources"]["CPU"] >= 4 and "GPU" not in cpu["resources"]
    # GPU group: 0..N, GPUs with an accelerator type, one logical CPU per GPU (the engine actor's
    # reservation) so no CPU stage is packed next to the engines.
    assert gpu["min_workers"] == 0 and gpu["max_workers"] >= 1
    assert gpu["resources"]["GPU"] >= 1 and gpu["resources"]["CPU"] == gpu["resources"]["GPU"]
    assert gpu["resources"][f"accelerator_type:{accelerator_of(gpu)}"] == 1
    assert GPU_MEMORY_GB[gpu["node_config"]["InstanceType"]] >= 24
    # Scaling knobs.
    assert cluster_cfg["max_workers"] == cpu["max_workers"] + gpu["max_workers"]
    assert 0 < cluster_cfg["idle_timeout_minutes"] <= 15
    assert cluster_cfg["upscaling_speed"] > 0


def test_cluster_yaml_pins_the_project_versions(cluster_cfg):
    with open(os.path.join(ROOT, "pyproject.toml"), "rb") as fh:
        project = tomllib.load(fh)["project"]
    assert "ray[data]==" + ray.__version__ in project["dependencies"]
    py = re.search(r">=3\.(\d+)", project["requires-python"]).group(1)
    image = f"rayproject/ray:{ray.__version__}-py3{py}"
    assert cluster_cfg["docker"]["image"] == image
    _, _, gpu = node_types(cluster_cfg)
    assert gpu["docker"]["worker_image"] == image + "-gpu"
    # Ray runs from the project's venv (the job's `python` and every worker see its packages).
    for cmd in cluster_cfg["head_start_ray_commands"][1:] + cluster_cfg["worker_start_ray_commands"][1:]:
        assert "export PATH=$HOME/groundv/.venv/bin:$PATH" in cmd and "ray start" in cmd
    assert f'"ray[default]=={ray.__version__}"' in cluster_cfg["setup_commands"][1]
    # The file mount ships the repo without the local venv / outputs.
    assert cluster_cfg["file_mounts"] == {"~/groundv": "."}
    assert {".venv", ".git", "output", ".groundv"} <= set(cluster_cfg["rsync_exclude"])


def test_teacher_configs_fit_the_gpu_node_type(cluster_cfg):
    """Every shipped vLLM teacher config can be served by cluster.yaml: its engine pool fits the GPU
    group at full scale, and a pinned accelerator type is the one the group offers."""
    _, _, gpu = node_types(cluster_cfg)
    gpus = gpu["max_workers"] * gpu["resources"]["GPU"]
    teachers_dir = os.path.join(ROOT, "configs", "teachers")
    checked = []
    for name in sorted(os.listdir(teachers_dir)):
        teacher = load_yaml(os.path.join(teachers_dir, name))["teacher"]
        if teacher.get("backend") != "vllm":
            continue
        v = teacher["vllm"]
        assert v.get("max_engines", 1) * v.get("gpus_per_engine", 1) <= gpus, name
        assert v.get("gpus_per_engine", 1) <= gpu["resources"]["GPU"], name
        assert v.get("accelerator_type") in (None, accelerator_of(gpu)), name
        checked.append(name)
    assert "qwen2_5_vl_7b.yaml" in checked


# ------------------------------------------------------------------------------ k8s/rayjob.yaml
def readme_entrypoint() -> str:
    with open(os.path.join(ROOT, "README.md")) as fh:
        text = fh.read()
    section = text.split("## On a Ray cluster", 1)[1]
    line = next(ln for ln in section.splitlines() if ln.startswith("ray job submit"))
    assert "--working-dir . --runtime-env configs/runtime_env.yaml" in line
    return line.split(" -- ", 1)[1].strip()


def test_rayjob_manifest():
    job = load_yaml(RAYJOB_YAML)
    assert job["apiVersion"] == "ray.io/v1" and job["kind"] == "RayJob"
    spec = job["spec"]
    assert "pipelines/build_groundv.py" in spec["entrypoint"]
    assert spec["entrypoint"] == readme_entrypoint()
    env = yaml.safe_load(spec["runtimeEnvYAML"])
    assert env["working_dir"].startswith("s3://")
    assert "torch==2.13.0" in env["pip"]["packages"] and "vllm==0.29.0" in env["pip"]["packages"]
    cluster = spec["rayClusterSpec"]
    assert cluster["rayVersion"] == ray.__version__
    assert cluster["enableInTreeAutoscaling"] is True
    assert cluster["headGroupSpec"]["rayStartParams"]["num-cpus"] == "0"
    groups = {g["groupName"]: g for g in cluster["workerGroupSpecs"]}
    assert set(groups) == {"cpu-spot", "gpu-l40s"}

    def limits(group):
        return group["template"]["spec"]["containers"][0]["resources"]["limits"]

    cpu, gpu = groups["cpu-spot"], groups["gpu-l40s"]
    assert cpu["minReplicas"] == 0 and cpu["maxReplicas"] >= 1 and "nvidia.com/gpu" not in limits(cpu)
    assert gpu["minReplicas"] == 0 and gpu["maxReplicas"] >= 1 and limits(gpu)["nvidia.com/gpu"] == 1
    assert gpu["rayStartParams"]["num-cpus"] == "1"
    assert json.loads(yaml.safe_load(gpu["rayStartParams"]["resources"])) == {"accelerator_type:L40S": 1}
    images = {g["template"]["spec"]["containers"][0]["image"] for g in groups.values()}
    assert images == {f"rayproject/ray:{ray.__version__}-py311", f"rayproject/ray:{ray.__version__}-py311-gpu"}


# ------------------------------------------------------------------------------ stage resources
def stream_stage_resources(overrides: list[str]) -> list[tuple[str, dict, tuple | None]]:
    """Build the real stream (vLLM teacher, nothing executed) and read each stage's Ray request from
    the Ray Data logical plan: [(stage name, ray_remote_args, (pool min, pool max) or None)]."""
    from pipelines.build.stream import build_stream
    from pipelines.config import load_config
    from pipelines.storage.fs import StorageSpec
    from schemas.columns import IMAGE_WORK_SCHEMA
    from teachers.backends import build_teacher
    from teachers.prompts import default_prompts_dir, load_prompts

    # the stream writes its (empty) work list under the output: a local folder, not the job's bucket
    out = tempfile.mkdtemp(prefix="groundv-resources-")
    cfg = load_config([os.path.join(ROOT, "configs", "cluster_job.yaml")], [*overrides, f"output.uri={out}"])
    store = StorageSpec(None, 1)
    teacher = build_teacher(cfg.teacher, load_prompts(default_prompts_dir(), list(cfg.tasks)), store, 32)

    class EmptyPlan:
        @staticmethod
        def iter_blocks(rows_per_block: int) -> Iterator[pa.Table]:
            yield IMAGE_WORK_SCHEMA.empty_table()

    op = build_stream(EmptyPlan, teacher, cfg, store, "resources")._logical_plan.dag
    out = []
    while op is not None:
        compute = getattr(op, "compute", None)
        pool = (compute.min_size, compute.max_size) if hasattr(compute, "min_size") else None
        out.append((op.name, dict(getattr(op, "ray_remote_args", None) or {}), pool))
        op = op.input_dependencies[0] if op.input_dependencies else None
    return out[::-1]


VLLM_OVERRIDES = ["teacher.backend=vllm", "teacher.vllm.model_source=Qwen/Qwen2.5-VL-7B-Instruct",
                  "teacher.vllm.accelerator_type=L40S", "teacher.vllm.min_engines=1", "teacher.vllm.max_engines=4"]


def test_stage_resources(ray_session):
    stages = stream_stage_resources(VLLM_OVERRIDES)
    names = [n for n, _, _ in stages]
    engine = [s for s in stages if s[0] == "MapBatches(vLLMEngineStageUDF)"]
    assert len(engine) == 1, names
    _, args, pool = engine[0]
    # The teacher asks for one GPU per engine, of the configured type, in a pool min..max.
    assert args["num_gpus"] == 1 and args["accelerator_type"] == "L40S"
    assert pool == (1, 4)
    # Every other stage (ours and the processor's CPU stages) never reserves a GPU.
    cpu_stages = [s for s in stages if s[0] != "MapBatches(vLLMEngineStageUDF)"]
    for name in ("MapBatches(ReadImages)", "MapBatches(DecodeAndFanOut)", "MapBatches(CheckUnits)",
                 "MapBatches(ShardWriter)", "MapBatches(TokenizeUDF)"):
        assert name in names
    assert [(n, a.get("num_gpus", 0)) for n, a, _ in cpu_stages] == [(n, 0) for n, _, _ in cpu_stages]


# ------------------------------------------------------------------------------ fake autoscaler
DRIVER = r'''
import json, os, sys, ray, ray.data
spec = json.loads(sys.argv[1])
ray.init(address=os.environ["RAY_ADDRESS"])
before = [n["Resources"] for n in ray.nodes() if n["Alive"]]

class CpuStage:  # stands in for read / decode / checks: no GPU request
    def __call__(self, b):
        b["cpu_node"] = [ray.get_runtime_context().get_node_id()] * len(b["id"])
        return b

class Engine:  # stands in for the vLLM engine, with the real engine stage's request
    def __call__(self, b):
        b["gpu_node"] = [ray.get_runtime_context().get_node_id()] * len(b["id"])
        b["gpu_ids"] = [json.dumps(ray.get_gpu_ids())] * len(b["id"])
        return b

ds = ray.data.range(8, override_num_blocks=2)
ds = ds.map_batches(CpuStage, batch_size=4, compute=ray.data.ActorPoolStrategy(min_size=1, max_size=1))
pool = ray.data.ActorPoolStrategy(min_size=spec["min"], max_size=spec["max"])
ds = ds.map_batches(Engine, batch_size=4, compute=pool, **spec["remote_args"])
rows = ds.take_all()
nodes = {n["NodeID"]: n["Resources"] for n in ray.nodes()}
print("RESULT " + json.dumps({"before": before, "rows": rows, "nodes": nodes}))
'''


def fake_autoscaling_config(cluster_cfg: dict, gcs_address: str) -> dict:
    """cluster.yaml's node types (resources, min/max; max capped at 1 node per type to stay light)
    on Ray's fake multi-node provider. The provider's own defaults file is missing from the wheel, so
    it is loaded as an `external` provider, which is the same class."""
    head, cpu, gpu = node_types(cluster_cfg)
    small = {"object_store_memory": 150_000_000}
    return {
        "cluster_name": "groundv-fake", "max_workers": 2, "upscaling_speed": cluster_cfg["upscaling_speed"],
        "idle_timeout_minutes": 0.2, "docker": {}, "auth": {},
        "provider": {
            "type": "external",
            "module": "ray.autoscaler._private.fake_multi_node.node_provider.FakeMultiNodeProvider",
            "gcs_address": gcs_address, "use_node_id_as_ip": True,
            "disable_node_updaters": True, "disable_launch_config_check": True,
        },
        "head_node_type": "ray.head.default",
        "available_node_types": {
            "ray.head.default": {"resources": dict(head["resources"]), "node_config": {}, "max_workers": 0},
            "cpu_spot": {"resources": {**cpu["resources"], **small}, "node_config": {},
                         "min_workers": cpu["min_workers"], "max_workers": 1},
            "gpu_l40s": {"resources": {**gpu["resources"], **small}, "node_config": {},
                         "min_workers": gpu["min_workers"], "max_workers": 1},
        },
        "file_mounts": {}, "cluster_synced_files": [], "file_mounts_sync_continuously": False,
        "rsync_exclude": [], "rsync_filter": [], "initialization_commands": [], "setup_commands": [],
        "head_setup_commands": [], "worker_setup_commands": [], "head_start_ray_commands": [],
        "worker_start_ray_commands": [],
    }


def launched(monitor_log: str, node_type: str) -> bool:
    """The autoscaler's launch record for one node of `node_type`. The node launcher logs
    "Launching 1 nodes, type T." synchronously; the "Adding 1 node(s) of type T." line comes from the
    event summarizer, which is flushed on its own schedule and was missing from a CI run's monitor
    log although the node had launched (and the rows ran on it)."""
    return (f"Launching 1 nodes, type {node_type}." in monitor_log
            or f"Adding 1 node(s) of type {node_type}." in monitor_log)


def test_teacher_gpu_request_scales_gpu_node_type_from_zero(cluster_cfg, ray_session, tmp_path):
    # The real engine stage's request (pool pinned to 1 engine: one fake GPU node is enough here).
    stages = stream_stage_resources([*VLLM_OVERRIDES[:-1], "teacher.vllm.max_engines=1"])
    _, engine_args, pool = next(s for s in stages if s[0] == "MapBatches(vLLMEngineStageUDF)")
    spec = {"min": pool[0], "max": pool[1],
            "remote_args": {k: engine_args[k] for k in ("num_gpus", "accelerator_type", "max_concurrency")}}

    env = cluster_env()
    env.update({"RAY_FAKE_CLUSTER": "1", "AUTOSCALER_UPDATE_INTERVAL_S": "1", "RAY_DATA_DISABLE_PROGRESS_BARS": "1"})
    cluster = LocalRayCluster(env)
    config = tmp_path / "fake_autoscaling.json"
    config.write_text(json.dumps(fake_autoscaling_config(cluster_cfg, cluster.address)))
    head = cluster_cfg["available_node_types"][cluster_cfg["head_node_type"]]
    try:
        cluster.start_head(num_cpus=head["resources"]["CPU"], dashboard=False,
                           extra=[f"--autoscaling-config={config}"])
        driver = subprocess.run([sys.executable, "-c", DRIVER, json.dumps(spec)],
                                env={**env, "RAY_ADDRESS": cluster.address},
                                capture_output=True, text=True, timeout=240)
        # The monitor writes its log asynchronously: wait (bounded) for the launch line to land.
        # (monitor.log and monitor.out both carry it, flushed independently; a loaded CI box
        # took longer than 30 s once.)
        logs = os.path.join(cluster.temp_dir, "session_latest", "logs")
        deadline = time.monotonic() + 120
        while True:
            monitor_log = ""
            for name in ("monitor.log", "monitor.out"):
                if os.path.exists(os.path.join(logs, name)):
                    with open(os.path.join(logs, name)) as fh:
                        monitor_log += fh.read()
            if all(launched(monitor_log, t) for t in ("gpu_l40s", "cpu_spot")) or time.monotonic() > deadline:
                break
            time.sleep(0.5)
    finally:
        cluster.stop()

    assert driver.returncode == 0, driver.stdout[-3000:] + driver.stderr[-3000:]
    # Ray may stream worker/autoscaler log lines to the driver's stdout after ours: take our line only.
    line = next(x for x in driver.stdout.splitlines() if x.startswith("RESULT "))
    result = json.loads(line[len("RESULT "):])
    # Before the job: the head alone (no CPU, no GPU offered).
    assert len(result["before"]) == 1 and result["before"][0].get("CPU", 0) == 0
    assert "GPU" not in result["before"][0]
    # The engine stage's request launched the GPU node type (from 0) and ran there, on its GPU.
    assert launched(monitor_log, "gpu_l40s"), monitor_log[-3000:]
    rows, nodes = result["rows"], result["nodes"]
    assert len(rows) == 8
    for row in rows:
        gpu_node, cpu_node = nodes[row["gpu_node"]], nodes[row["cpu_node"]]
        assert gpu_node["GPU"] == 1 and gpu_node["accelerator_type:L40S"] == 1
        assert json.loads(row["gpu_ids"]) == [0]
        # The CPU stage's request was served by the CPU type, never by the GPU node.
        assert "GPU" not in cpu_node and cpu_node["CPU"] == cluster_cfg["available_node_types"]["cpu_spot"][
            "resources"]["CPU"]
    assert launched(monitor_log, "cpu_spot"), monitor_log[-3000:]
