"""The cluster path for real: `ray start --head` + a second `ray start --address` node on this machine,
then `ray job submit --working-dir <repo> --runtime-env ... -- python pipelines/build_groundv.py ...`
with the data and the output on the S3 test server.

The cluster lives in its own temp dir and is stopped by killing exactly its own processes (`ray stop`
would kill every Ray on the machine, the test session's own included). `LocalRayCluster` is reused by
tests/test_cluster.py for the fake autoscaling cluster.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from typing import Iterable

import boto3
import yaml

from tests.test_build_e2e import _tasks_for, _upload_tree, check_build

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
VENV_BIN = os.path.dirname(sys.executable)
RAY_CLI = os.path.join(VENV_BIN, "ray")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _cmdline(pid: int) -> list[str]:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as fh:
            return [a.decode(errors="replace") for a in fh.read().split(b"\0") if a]
    except OSError:
        return []


def _ancestors() -> set[int]:
    pids, pid = set(), os.getpid()
    while pid > 1:
        pids.add(pid)
        try:
            with open(f"/proc/{pid}/stat") as fh:
                pid = int(fh.read().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            break
    return pids


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rsplit(")", 1)[1].split()[0] not in ("Z", "X")
    except OSError:
        return False


def ray_processes() -> set[int]:
    """Every live Ray control-plane process on the machine (any cluster)."""
    names = ("gcs_server", "raylet")
    return {int(p) for p in os.listdir("/proc") if p.isdigit() and _alive(int(p))
            and any(os.path.basename(a).startswith(names) for a in _cmdline(int(p))[:1])}


class LocalRayCluster:
    """A multi-node Ray cluster on this machine, started with the `ray` CLI in its own temp dir."""

    def __init__(self, env: dict[str, str]) -> None:
        # Short path: Ray's unix sockets live under it (108-byte limit).
        self.temp_dir = tempfile.mkdtemp(prefix="gvray-", dir="/tmp")
        self._node_dirs: list[str] = []
        self.env = env
        self.gcs_port = free_port()
        self.dashboard_port = free_port()
        self.address = f"127.0.0.1:{self.gcs_port}"
        self.dashboard_url = f"http://127.0.0.1:{self.dashboard_port}"
        self.bystanders = ray_processes()  # other clusters' processes: must survive stop()

    def _ray(self, args: list[str], timeout: float = 120) -> str:
        proc = subprocess.run([RAY_CLI, *args], env=self.env, capture_output=True, text=True, timeout=timeout)
        if proc.returncode != 0:
            raise RuntimeError(f"ray {' '.join(args)} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
        return proc.stdout + proc.stderr

    def start_head(self, num_cpus: int, dashboard: bool = True, extra: Iterable[str] = ()) -> str:
        # Every port is picked free (the defaults 8265 / 10001 / 52365 may belong to another Ray on
        # this machine). Ray maps a loopback node address to the machine's own address.
        return self._ray([
            "start", "--head", "--node-ip-address=127.0.0.1", f"--port={self.gcs_port}",
            f"--num-cpus={num_cpus}", "--num-gpus=0", f"--temp-dir={self.temp_dir}",
            f"--include-dashboard={'true' if dashboard else 'false'}", "--dashboard-host=127.0.0.1",
            f"--dashboard-port={self.dashboard_port}", f"--dashboard-agent-listen-port={free_port()}",
            f"--ray-client-server-port={free_port()}", "--object-store-memory=300000000",
            "--disable-usage-stats", *extra,
        ])

    def add_node(self, num_cpus: int) -> str:
        # Its own temp dir, as a separate host has: two raylets on one host sharing one session dir
        # share runtime_resources/, and the added node's runtime-env agent deleted the job's
        # unpacked working_dir (the driver's own code, on the head) once its workers were done
        # with it (CI: "No such file or directory: …/working_dir_files/_ray_pkg_…/pipelines/…").
        node_dir = f"{self.temp_dir}-node{len(self._node_dirs)}"  # names self.temp_dir: _own_pids finds it
        self._node_dirs.append(node_dir)
        return self._ray([
            "start", f"--address={self.address}", f"--num-cpus={num_cpus}", "--num-gpus=0",
            f"--temp-dir={node_dir}",
            f"--dashboard-agent-listen-port={free_port()}", "--object-store-memory=300000000",
            "--disable-usage-stats",
        ])

    def _own_pids(self) -> set[int]:
        """Processes of this cluster: they name its temp dir or its GCS address, or run inside the
        temp dir (a job's driver runs in its unpacked working dir)."""
        skip = _ancestors()
        out = set()
        for p in os.listdir("/proc"):
            if not p.isdigit() or int(p) in skip:
                continue
            args = _cmdline(int(p))
            try:
                cwd = os.readlink(f"/proc/{p}/cwd")
            except OSError:
                cwd = ""
            # Ray records the GCS as <this machine's ip>:<port>; the port is unique while we hold it.
            if (any(self.temp_dir in a or a.split("=")[-1].endswith(f":{self.gcs_port}") for a in args)
                    or cwd.startswith(self.temp_dir)):
                out.add(int(p))
        return out

    def stop(self) -> None:
        signaled: set[int] = set()
        for sig, wait in ((signal.SIGTERM, 3.0), (signal.SIGKILL, 5.0)):
            pids = {p for p in self._own_pids() if _alive(p)}
            signaled |= pids
            for p in pids:
                try:
                    os.kill(p, sig)
                except ProcessLookupError:
                    pass
            deadline = time.monotonic() + wait
            while any(_alive(p) for p in pids) and time.monotonic() < deadline:
                time.sleep(0.2)
        left = {p for p in self._own_pids() if _alive(p)}
        shutil.rmtree(self.temp_dir, ignore_errors=True)
        for node_dir in self._node_dirs:
            shutil.rmtree(node_dir, ignore_errors=True)
        assert not left, f"cluster processes survived stop(): {left}"
        # Only this cluster's processes were signalled, never another cluster's GCS or raylet.
        assert not signaled & self.bystanders, f"stop() signalled other clusters: {signaled & self.bystanders}"


def cluster_env() -> dict[str, str]:
    """Environment for every `ray` CLI call of a test cluster: the venv's `python` first on PATH (the
    job entrypoint resolves `python` there), a private auth token, no inherited cluster address and
    no AWS credentials (the job must get them from its runtime env)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "RAY_ADDRESS"))}
    env.update({
        "PATH": VENV_BIN + os.pathsep + env.get("PATH", ""),
        "RAY_USAGE_STATS_ENABLED": "0",
        "RAY_AUTH_MODE": "token",
        "RAY_AUTH_TOKEN": secrets.token_hex(16),
    })
    return env


def job_status(cluster: LocalRayCluster, submission_id: str) -> str:
    """The job's status from Ray's job API (the SDK, in a subprocess holding the cluster's token)."""
    code = ("import sys; from ray.job_submission import JobSubmissionClient; "
            "print(JobSubmissionClient(sys.argv[1]).get_job_status(sys.argv[2]).value)")
    proc = subprocess.run([sys.executable, "-c", code, cluster.dashboard_url, submission_id], env=cluster.env,
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return proc.stdout.strip().splitlines()[-1]


def _s3_sources(sample_dir, bucket: str) -> list[dict]:
    from pipelines.sources.sample_data import ensure_sample_dataset

    out = []
    for s in ensure_sample_dataset(str(sample_dir)):
        out.append({
            "name": s["name"], "format": s["format"],
            "annotations": f"s3://{bucket}/sample/" + os.path.relpath(s["annotations"], sample_dir),
            "images": f"s3://{bucket}/sample/" + os.path.relpath(s["images"], sample_dir),
            "tasks": _tasks_for(s["format"]),
        })
    return out


def test_ray_job_submit_on_two_node_cluster(sample_dir, s3_bucket, tmp_path):
    from ray._private.utils import get_dashboard_dependency_error

    # The job API lives in the dashboard, which needs Ray's `default` extra.
    missing = get_dashboard_dependency_error()
    assert missing is None, f"`ray job submit` needs ray[default]==2.60.0 (the test extra): {missing}"
    t0 = time.monotonic()
    endpoint, bucket = s3_bucket
    _upload_tree(str(sample_dir), bucket, "sample", endpoint)
    sources = _s3_sources(sample_dir, bucket)
    # The example cluster config is the base layer (proves it loads); the test layer swaps in the
    # S3 test server's data and output. The template teacher keeps it CPU-only.
    job_cfg = tmp_path / "job.yaml"
    job_cfg.write_text(yaml.safe_dump({
        "data": {"sources": sources, "exclude_image_ids": []},
        "output": {"uri": f"s3://{bucket}/out"},
        "storage": {"endpoint_url": endpoint},
        "stream": {"status_interval_s": 1.0},
        "cost": {"gpu_hourly_usd": None},
    }))
    # The project's runtime env (its excludes keep .venv/.git out of the upload) + the test server's
    # credentials, the way a user passes non-default settings to a job.
    with open(os.path.join(ROOT, "configs", "runtime_env.yaml")) as fh:
        runtime_env = yaml.safe_load(fh)
    runtime_env["env_vars"].update({
        "AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1", "AWS_EC2_METADATA_DISABLED": "true",
    })
    rt_file = tmp_path / "runtime_env.yaml"
    rt_file.write_text(yaml.safe_dump(runtime_env))

    cluster = LocalRayCluster(cluster_env())
    try:
        # Head: driver only, like cluster.yaml (CPU 0); all work lands on the second node.
        cluster.start_head(num_cpus=0)
        cluster.add_node(num_cpus=4)
        t_up = time.monotonic()
        sid = "groundv-" + uuid.uuid4().hex[:8]
        submit = subprocess.run(
            [RAY_CLI, "job", "submit", "--address", cluster.dashboard_url, "--submission-id", sid,
             "--working-dir", ROOT, "--runtime-env", str(rt_file), "--",
             "python", "pipelines/build_groundv.py", "--config", "configs/cluster_job.yaml", "--config", str(job_cfg)],
            env=cluster.env, capture_output=True, text=True, timeout=300,
        )
        t_job = time.monotonic()
        print(f"cluster up {t_up - t0:.1f}s, job {t_job - t_up:.1f}s")
        status = job_status(cluster, sid)
        logs = cluster._ray(["job", "logs", "--address", cluster.dashboard_url, sid])
        nodes = cluster._ray(["status", f"--address={cluster.address}"])
    finally:
        cluster.stop()

    assert submit.returncode == 0, submit.stdout[-4000:] + submit.stderr[-4000:]
    assert f"Job '{sid}' succeeded" in submit.stdout + submit.stderr
    assert status == "SUCCEEDED"
    assert "Active:" in nodes and nodes.count("node_") == 2, nodes
    # Ray's job logs show the stages ran and the build committed.
    # CPU teacher: read -> decode -> teacher -> check -> write run fused in one actor stage.
    for stage in ("MapBatches(FusedCpuStage)", "[groundv] units", "Ground-V build"):
        assert stage in logs, f"{stage} missing from the job logs"
    assert "manifest v000001: s3://" + bucket + "/out/manifests/v000001.json" in logs

    # The manifest is on S3, names shards that exist, and the dataset checks out row by row.
    s3 = boto3.client("s3", endpoint_url=endpoint)
    manifest = json.loads(s3.get_object(Bucket=bucket, Key="out/manifests/v000001.json")["Body"].read())
    assert manifest["version"] == 1 and manifest["shards"]
    for shard in manifest["shards"]:
        assert s3.head_object(Bucket=bucket, Key="out/" + shard["path"])["ContentLength"] > 0
    assert {s["kind"] for s in manifest["shards"]} >= {"samples", "raw"}
    check_build(f"s3://{bucket}/out", sources, endpoint)
