"""bench/teacher_throughput.py: every command-line override reaches the teacher it measures."""

from __future__ import annotations

import pytest

from bench.teacher_throughput import _cpu_groups, load_teacher_cfg, parse_args
from teachers.prompts import default_prompts_dir, load_prompts
from teachers.vllm_backend import VllmTeacher


@pytest.mark.unit
def test_cpu_tiny_layer_sits_under_the_overrides():
    """Fails on the old bench: --cpu-tiny set batch_size=8 and replaced engine_kwargs after the
    overrides had been applied, so these two were silently dropped."""
    args = parse_args(["--cpu-tiny", "--model-dir", "/tmp/none", "teacher.vllm.batch_size=5",
                       "teacher.vllm.engine_kwargs.max_num_seqs=7", "teacher.vllm.max_concurrent_batches=3"])
    cfg = load_teacher_cfg(args)
    v = cfg.teacher.vllm
    assert v.batch_size == 5 and v.max_concurrent_batches == 3
    assert v.engine_kwargs["max_num_seqs"] == 7 and v.engine_kwargs["max_model_len"] == 4096  # merged
    assert v.cpu_only and cfg.teacher.max_pixels == 224 * 224
    teacher = VllmTeacher(cfg.teacher, load_prompts(default_prompts_dir(), list(cfg.tasks)))
    pc = teacher.processor_config()
    assert (pc.batch_size, pc.max_concurrent_batches) == (5, 3)


@pytest.mark.unit
def test_in_flight_requests_cover_the_engine_scheduler():
    """Default in-flight requests per engine >= 1.5 x max_num_seqs, and the scheduler limits are
    explicit (Ray's ENGINE_CONTEXT would otherwise fall back to 128 seqs / 2048 tokens)."""
    cfg = load_teacher_cfg(parse_args(["--cpu-tiny", "--model-dir", "/tmp/none", "teacher.vllm.batch_size=8"]))
    teacher = VllmTeacher(cfg.teacher, load_prompts(default_prompts_dir(), list(cfg.tasks)))
    kw = teacher.engine_kwargs
    assert (kw["max_num_seqs"], kw["max_num_batched_tokens"]) == (256, 4096)
    assert teacher.concurrent_batches() * 8 >= 1.5 * 256


@pytest.mark.unit
def test_cpu_groups_split_engine_from_the_rest():
    """The bench's CPU report: the Ray engine = its stage actor + vLLM's EngineCore process; the
    bare engine runs in the driver; everything else is Ray's (or our map tasks') overhead."""
    ray_run = _cpu_groups({"VLLM::EngineCore": 12.0, "ray::MapWorker(MapBatches(vLLMEngineStageUDF))": 10.0,
                           "driver": 2.0, "ray::MapBatches(collapse_requests)->Map(_preprocess)": 0.5,
                           "raylet": 0.25})
    assert (ray_run["engine"], ray_run["other"], ray_run["total"]) == (22.0, 2.75, 24.75)
    bare = _cpu_groups({"driver": 7.0})
    assert (bare["engine"], bare["other"]) == (7.0, 0.0)
