"""The replay teacher: responses made elsewhere (an API batch job, another cluster) read from JSONL.

Each line is ``{"gen_key": "...", "response": "<raw text of {\\"pairs\\": [...]}>"}``, optionally
with ``finish_reason`` (default ``stop``) and token counts; the responses then go through the same
filters and manifest as any other teacher's. The file is read once on the driver into a
gen_key -> response map and shipped to the workers with the stage (responses are small text).

Identity = backend + `teacher.replay_source` (the name of the external teacher) + the prompt settings
the prompts were exported with (mode, box format, pairs per unit, pixel budget) — not the file: the
keys must be known when the prompts are exported (pipelines/cli/export_prompts.py), before any answer
exists. A new batch of answers from another teacher gets a new replay_source, hence new keys.
"""

from __future__ import annotations

import hashlib
from typing import TYPE_CHECKING, Any, Mapping

import pyarrow as pa

from pipelines.storage.fs import StorageSpec, fs_and_path, with_retries
from pipelines.storage.jsonl import jsonl_objects
from teachers.base import Teacher, append_teacher_columns

if TYPE_CHECKING:  # pragma: no cover
    import ray.data

# The stream files teacher errors under the `code:` prefix of the message (stages/check.py).
NO_RESPONSE = "no_response: no response for this unit"
FINISH_REASONS = ("stop", "length", "error")


class ReplayFileError(ValueError):
    """The JSONL file is malformed; the message names the file and the line."""


def parse_responses(data: bytes, uri: str) -> dict[str, dict[str, Any]]:
    """JSONL bytes -> {gen_key: {"response", "finish_reason", "prompt_tokens", "output_tokens"}}.

    Blank lines are skipped. A malformed line, a missing field, or the same gen_key twice with a
    different response stops the job with the file and the line number.
    """
    out: dict[str, dict[str, Any]] = {}
    for where, rec in jsonl_objects(data, uri, ReplayFileError):
        key, response = rec.get("gen_key"), rec.get("response")
        if not isinstance(key, str) or not key:
            raise ReplayFileError(f"{where}: 'gen_key' must be a non-empty string")
        if not isinstance(response, str):
            raise ReplayFileError(f"{where}: 'response' must be a string (the raw teacher text)")
        finish = rec.get("finish_reason", "stop")
        if finish not in FINISH_REASONS:
            raise ReplayFileError(f"{where}: 'finish_reason' must be one of {FINISH_REASONS}")
        entry = {
            "response": response,
            "finish_reason": finish,
            "prompt_tokens": _count(rec.get("prompt_tokens"), where, "prompt_tokens"),
            "output_tokens": _count(rec.get("output_tokens"), where, "output_tokens"),
        }
        if key in out and out[key] != entry:
            raise ReplayFileError(f"{where}: gen_key {key} appears twice with different responses")
        out[key] = entry
    return out


def _count(v: Any, where: str, name: str) -> int | None:
    if v is None:
        return None
    if not isinstance(v, int) or isinstance(v, bool) or v < 0:
        raise ReplayFileError(f"{where}: '{name}' must be a non-negative integer")
    return v


def respond_batch(table: pa.Table, responses: Mapping[str, Mapping[str, Any]]) -> pa.Table:
    """Pure stage body: look each unit's gen_key up; a unit with no line gets a `no_response`
    teacher error (never a crash, never a dropped row). Units that failed upstream get nulls."""
    cols: dict[str, list[Any]] = {
        n: [] for n in ("response", "finish_reason", "teacher_error", "prompt_tokens", "output_tokens")
    }
    keys = table.column("gen_key").to_pylist()
    has_errors = "unit_error" in table.column_names
    unit_errors = table.column("unit_error").to_pylist() if has_errors else [None] * len(keys)
    for key, unit_error in zip(keys, unit_errors, strict=True):
        hit = responses.get(key) if unit_error is None else None
        if unit_error is not None:
            values = (None, None, None, None, None)
        elif hit is None:
            values = (None, "error", NO_RESPONSE, None, None)
        else:
            values = (hit["response"], hit["finish_reason"], None, hit["prompt_tokens"], hit["output_tokens"])
        for name, value in zip(cols, values, strict=True):
            cols[name].append(value)
    return append_teacher_columns(table, cols)


class ReplayRespond:
    """Picklable batch callable for map_batches (carries the response map to the workers)."""

    def __init__(self, responses: Mapping[str, Mapping[str, Any]]) -> None:
        self.responses = responses

    def __call__(self, table: pa.Table) -> pa.Table:
        return respond_batch(table, self.responses)


class ReplayTeacher(Teacher):
    """Teacher backend `replay`: see the module doc."""

    backend = "replay"
    needs_image = False

    def __init__(self, responses_uri: str, storage: StorageSpec | None = None, batch_size: int = 256,
                 source: str = "external", prompt_settings: Mapping[str, Any] | None = None) -> None:
        self.uri = responses_uri
        self.storage = storage or StorageSpec()
        self.batch_size = batch_size
        self.source = source
        self.prompt_settings = dict(prompt_settings or {})
        self._responses: dict[str, dict[str, Any]] | None = None
        self.sha256 = ""

    def validate(self) -> None:
        """Read and check the answers file (before any work is scheduled)."""
        if self._responses is not None:
            return
        fs, path = fs_and_path(self.uri, self.storage)
        try:
            data = with_retries(lambda: fs.cat_file(path), self.storage, f"read {self.uri}")
        except FileNotFoundError:
            raise ReplayFileError(f"{self.uri}: teacher.responses file not found") from None
        self.sha256 = hashlib.sha256(data).hexdigest()
        self._responses = parse_responses(data, self.uri)

    @property
    def responses(self) -> dict[str, dict[str, Any]]:
        self.validate()
        assert self._responses is not None
        return self._responses

    def identity(self) -> dict[str, Any]:
        return {"backend": self.backend, "model": self.source, **self.prompt_settings}

    def respond_table(self, table: pa.Table) -> pa.Table:
        """The stage's work on one batch, callable without Ray."""
        return respond_batch(table, self.responses)

    def cpu_stage(self) -> ReplayRespond:
        return ReplayRespond(self.responses)

    def attach(self, ds: ray.data.Dataset) -> ray.data.Dataset:
        # A plain function over a picklable object: the map ships with each task (no actor needed).
        return ds.map_batches(ReplayRespond(self.responses), batch_size=self.batch_size, batch_format="pyarrow")
