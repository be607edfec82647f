"""The teacher contract: every backend turns units into raw JSON responses the same way.

Input rows have the UNIT_SCHEMA columns. Output rows are the same plus TEACHER_OUT_FIELDS:
  response (raw text of {"pairs": [...]}, null on failure), finish_reason, teacher_error,
  prompt_tokens, output_tokens.
A teacher never drops a row: a failure is a row with `teacher_error` set.
Rows with `unit_error` set (the image or its annotations failed upstream) must pass through with
null teacher columns and must not be sent to a model. The stream keeps one branch on purpose: a
filter/union split would make Ray Data read every image twice.
"""

from __future__ import annotations

import hashlib
import json
from abc import ABC, abstractmethod
from typing import TYPE_CHECKING, Any

import pyarrow as pa

from schemas.columns import TEACHER_OUT_FIELDS

if TYPE_CHECKING:  # pragma: no cover
    import ray.data

# Bump when the way prompts / object tables are built changes: it is part of every generation key.
from pipelines.core.keys import PROMPT_CODE_VERSION  # noqa: F401  (re-exported: the salts live with the key)


class Teacher(ABC):
    backend: str = ""
    needs_image: bool = False  # True: the stream decodes + resizes images into `teacher_image`

    @abstractmethod
    def identity(self) -> dict[str, Any]:
        """Everything about the teacher that changes its answers (backend, model, revision,
        sampling params, output schema version, ...). Part of every generation key."""

    @abstractmethod
    def attach(self, ds: ray.data.Dataset) -> ray.data.Dataset:
        """Add the TEACHER_OUT_FIELDS columns to every unit row of `ds`."""

    def cpu_stage(self) -> Any:
        """A callable over pyarrow tables doing `attach`'s work in process, for backends that run
        on CPU without a model server (template, replay); None otherwise. The stream may fuse it
        with the other CPU stages."""
        return None

    def validate(self) -> None:  # noqa: B027 - optional hook, most backends need no check
        """Check what the backend needs (files, model paths) before any work is scheduled."""

    def identity_hash(self) -> str:
        blob = json.dumps(self.identity(), sort_keys=True, separators=(",", ":"), default=str)
        return hashlib.sha256(blob.encode()).hexdigest()

    def label(self) -> str:
        """Short human label stored in every row (`teacher` column)."""
        ident = self.identity()
        model = ident.get("model") or ident.get("backend")
        return f"{self.backend}:{model}@{self.identity_hash()[:10]}"


def append_teacher_columns(table: pa.Table, columns: dict[str, list]) -> pa.Table:
    """Return `table` plus the TEACHER_OUT_FIELDS columns given as python lists."""
    for name, typ in TEACHER_OUT_FIELDS:
        arr = pa.array(columns[name], type=typ)
        if name in table.column_names:
            table = table.set_column(table.schema.get_field_index(name), name, arr)
        else:
            table = table.append_column(pa.field(name, typ), arr)
    return table
