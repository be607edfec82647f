"""Choose a teacher backend from the `teacher` config section (template | vllm | replay)."""

from __future__ import annotations

import hashlib
from typing import TYPE_CHECKING, Any, Callable

import pyarrow as pa

from pipelines.core.knowledge import DEFAULT_KNOWLEDGE_PATH, load_knowledge
from pipelines.core.resources import Resources, stage
from teachers.base import Teacher, append_teacher_columns
from teachers.prompts import PromptSpec
from teachers.template import template_respond_batch

if TYPE_CHECKING:  # pragma: no cover
    import ray.data

    from pipelines.storage.fs import StorageSpec

from pipelines.core.keys import TEMPLATE_VERSION

KNOWLEDGE_PATH = DEFAULT_KNOWLEDGE_PATH  # its content hash is part of the template identity


def file_sha256(path: str) -> str:
    with open(path, "rb") as fh:
        return hashlib.sha256(fh.read()).hexdigest()


class TemplateRespond:
    """Ray Data stage wrapping the pure template teacher (the knowledge table loads once per worker)."""

    # Cheap string templating: two one-core actors keep up with decode and checks.
    resources = Resources(num_cpus=1, max_actors=2)

    def __init__(self, specs: dict[str, PromptSpec], n_pairs: int) -> None:
        self.specs = specs
        self.n_pairs = n_pairs
        self.knowledge = load_knowledge()

    def __call__(self, batch: pa.Table) -> pa.Table:
        cols = [c for c in batch.column_names if c != "teacher_image"]
        out = template_respond_batch(batch.select(cols).to_pydict(), self.specs, self.knowledge, self.n_pairs)
        # Units whose image failed upstream are not answered (Teacher contract).
        for i, err in enumerate(batch.column("unit_error").to_pylist()):
            if err is not None:
                for name in ("response", "finish_reason", "teacher_error", "prompt_tokens", "output_tokens"):
                    out[name][i] = None
        return append_teacher_columns(batch, out)


class TemplateTeacher(Teacher):
    """Deterministic CPU teacher: writes all five tasks from annotations + pipelines/core/knowledge.yaml."""

    backend = "template"
    needs_image = False

    def __init__(self, specs: dict[str, PromptSpec], n_pairs: int, batch_size: int = 64) -> None:
        self.specs = specs
        self.n_pairs = n_pairs
        self.batch_size = batch_size

    def identity(self) -> dict[str, Any]:
        return {"backend": self.backend, "model": TEMPLATE_VERSION, "knowledge": file_sha256(KNOWLEDGE_PATH),
                "pairs_per_unit": self.n_pairs}

    def respond_table(self, table: pa.Table) -> pa.Table:
        """The stage's work on one batch, callable without Ray (tests, the single-process bench)."""
        return TemplateRespond(self.specs, self.n_pairs)(table)

    def cpu_stage(self) -> TemplateRespond:
        return TemplateRespond(self.specs, self.n_pairs)

    def attach(self, ds: ray.data.Dataset) -> ray.data.Dataset:
        return stage(TemplateRespond, self.batch_size).apply(ds, self.specs, self.n_pairs)


def _template(cfg: Any, specs: dict[str, PromptSpec], store: StorageSpec, batch_size: int) -> Teacher:
    return TemplateTeacher(specs, cfg.pairs_per_unit, batch_size)


def prompt_settings(cfg: Any) -> dict[str, Any]:
    """What shapes an exported prompt (the `teacher` section): the replay identity, and what the
    export and the replay teacher rebuild request keys from (teachers/replay.export_request_key)."""
    return {"mode": cfg.mode, "box_format": cfg.box_format, "pairs_per_unit": cfg.pairs_per_unit,
            "max_pixels": cfg.max_pixels, "patch_size": cfg.patch_size, "merge_size": cfg.merge_size,
            "min_pixels": cfg.min_pixels}


def _replay(cfg: Any, specs: dict[str, PromptSpec], store: StorageSpec, batch_size: int) -> Teacher:
    from teachers.replay import ReplayTeacher

    return ReplayTeacher(cfg.responses, store, source=cfg.replay_source, prompt_settings=prompt_settings(cfg))


def _vllm(cfg: Any, specs: dict[str, PromptSpec], store: StorageSpec, batch_size: int) -> Teacher:
    from teachers.vllm_backend import VllmTeacher  # imports vLLM lazily: only this backend needs it

    return VllmTeacher(cfg, specs)


# The backend registry, in the style of ray.data.llm's processor builders: `teacher.backend` names
# one; each builder reads its typed section of the config (`teacher.vllm` for vllm).
BACKENDS: dict[str, Callable[[Any, dict[str, PromptSpec], StorageSpec, int], Teacher]] = {
    "template": _template, "replay": _replay, "vllm": _vllm,
}


def build_teacher(teacher_cfg: Any, specs: dict[str, PromptSpec], store: StorageSpec,
                  batch_size: int = 64) -> Teacher:
    builder = BACKENDS.get(teacher_cfg.backend)  # StrEnum hashes as its str
    if builder is None:
        raise ValueError(f"teacher.backend: unknown backend {teacher_cfg.backend!r} ({' | '.join(BACKENDS)})")
    return builder(teacher_cfg, specs, store, batch_size)
