"""Shared real components: one local Ray per session, a real S3 server (moto) on 127.0.0.1."""

from __future__ import annotations

import os
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

# Set before Ray starts so every worker inherits them.
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
os.environ.setdefault("AWS_ACCESS_KEY_ID", "testing")
os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "testing")
os.environ.setdefault("AWS_DEFAULT_REGION", "us-east-1")
os.environ.setdefault("AWS_EC2_METADATA_DISABLED", "true")
os.environ.setdefault("RAY_DATA_DISABLE_PROGRESS_BARS", "1")


@pytest.fixture(scope="session")
def ray_session():
    """One local Ray for the whole test session (~4 s, ~1.4 GiB each start)."""
    import ray

    if not ray.is_initialized():
        ray.init(num_cpus=4, include_dashboard=False, log_to_driver=False)
    yield ray


@pytest.fixture(scope="session")
def s3_server():
    """A real S3 endpoint: moto's server mode on loopback. Yields the endpoint url."""
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0)
    server.start()
    host, port = server.get_host_and_port()
    url = f"http://{host}:{port}"
    yield url
    server.stop()


@pytest.fixture
def s3_bucket(s3_server):
    """A fresh bucket on the S3 server; returns (endpoint_url, bucket name)."""
    import uuid

    import boto3

    name = "groundv-" + uuid.uuid4().hex[:10]
    boto3.client("s3", endpoint_url=s3_server).create_bucket(Bucket=name)
    return s3_server, name


@pytest.fixture(scope="session")
def sample_dir(tmp_path_factory):
    """The embedded sample dataset, generated once per session."""
    from pipelines.sources.sample_data import ensure_sample_dataset

    root = tmp_path_factory.mktemp("sample")
    ensure_sample_dataset(str(root), num_images=24, seed=0)
    return root


# ----------------------------------------------------------------------------------------- markers
# `pytest -m unit` is the seconds-long loop; the full suite (no -m) is what CI runs. Markers come
# from what a test uses, so a new test is classified without remembering to mark it; pure modules are
# `unit` as a whole and a pure test elsewhere says `@pytest.mark.unit` itself.
PURE_MODULES = {"test_filters", "test_masks", "test_prompts", "test_readers", "test_sample_data",
                "test_template_teacher"}
VLLM_MODULES = {"test_vllm_teacher"}  # their Ray tests run the real vLLM engine on CPU
CLUSTER_MODULES = {"test_cluster", "test_job_submit", "test_pool_autoscale"}
HEAVY = ("ray", "s3", "cluster", "vllm", "browser")


def pytest_collection_modifyitems(config, items):  # noqa: ARG001 - pytest hook signature
    for item in items:
        names = set(getattr(item, "fixturenames", ()))
        module = item.module.__name__.rsplit(".", 1)[-1] if item.module else ""
        if "ray_session" in names:
            item.add_marker(pytest.mark.ray)
            if module in VLLM_MODULES:
                item.add_marker(pytest.mark.vllm)
        if names & {"s3_server", "s3_bucket"}:
            item.add_marker(pytest.mark.s3)
        if module in CLUSTER_MODULES:
            item.add_marker(pytest.mark.cluster)
        heavy = any(item.get_closest_marker(m) for m in HEAVY)
        if module in PURE_MODULES and not heavy:
            item.add_marker(pytest.mark.unit)

@pytest.fixture(scope="session")
def audit_build(ray_session, sample_dir, tmp_path_factory):
    """The sample build for the audit tests: v1 default filters, v2 the same units re-checked with
    strict filters (many pair-level rejects). Returns the output path."""
    from pipelines.build_groundv import main as build_main

    out = tmp_path_factory.mktemp("audit") / "out"
    args = [f"data.sample.dir={sample_dir}", f"output.uri={out}"]
    assert build_main(args) == 0
    assert build_main([*args, "filters.min_mask_area=1500", "filters.max_answer_chars=40"]) == 0
    return str(out)
