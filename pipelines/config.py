"""Configuration: omegaconf structured config + configs/default.yaml + --config FILE + key=value.

The dataclasses of pipelines/config_schema.py are the schema: an unknown key or a value of the wrong
type stops the job before any work is scheduled, with a message naming the key (omegaconf does the
type checks; ranges and rules are checked in `validate`).
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import os
from typing import Any

import yaml
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import ConfigKeyError, OmegaConfBaseException

from pipelines.config_schema import (  # noqa: F401 - the schema, re-exported: `from pipelines.config import X`
    CommitConfig,
    ConfigError,
    CostConfig,
    DataConfig,
    GroundVConfig,
    OutputConfig,
    RayConfig,
    SampleConfig,
    SourceConfig,
    SourceFormat,
    StorageConfig,
    StreamConfig,
    TeacherBackend,
    TeacherConfig,
    VerifyBackend,
    VerifyConfig,
    VerifyKind,
    VllmConfig,
    grid_factor,
)
from pipelines.core.secrets import redact
from schemas.columns import TASKS

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFAULT_CONFIG = os.path.join(REPO_ROOT, "configs", "default.yaml")


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
    from pipelines.sources.readers.records import is_record_file  # the one rule of what a record file is

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
        if not src.categories and is_record_file(str(src.annotations)):
            raise ConfigError(f"data.sources[{i}] ({src.name!r}): annotations {src.annotations} are per-image "
                              f"records; set data.sources[{i}].categories to a JSON file with the COCO "
                              "'categories' (and PACO 'attributes')")
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
