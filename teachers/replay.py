"""The replay teacher: responses made elsewhere (an API batch job, another cluster) read from JSONL.

Each line is ``{"request_key": "...", "response": "<raw text of {\\"pairs\\": [...]}>"}`` -- one
answer per exported request (pipelines/cli/export_prompts.py writes one line per distinct request),
given to every unit that shares it -- or, the per-unit form every earlier export used,
``{"gen_key": "...", "response": ...}``; optionally with ``finish_reason`` (default ``stop``) and
token counts. The responses then go through the same filters and manifest as any other teacher's.
The file is read once on the driver into gen_key / request_key -> response maps and shipped to the
workers with the stage (responses are small text).

A unit takes its own `gen_key` line if there is one, else the line of its request key, which the
teacher computes from the unit row exactly as the export did (`export_request_key`: the object
table the exported prompt shows, the image by location + identity for a vision prompt). Units of
one request in the same batch that found no line of their own also share a `gen_key` answer of
another unit of that request (an answer keyed by the first unit of a request line). A unit that
takes another unit's answer records it in `shares_answer_of` and counts as a request saved.

Identity = backend + `teacher.replay_source` (the name of the external teacher) + the prompt settings
the prompts were exported with (mode, box format, pairs per unit, pixel budget) — not the file: the
keys must be known when the prompts are exported (pipelines/cli/export_prompts.py), before any answer
exists. A new batch of answers from another teacher gets a new replay_source, hence new keys.
"""

from __future__ import annotations

import hashlib
from typing import TYPE_CHECKING, Any, Mapping

import pyarrow as pa

from pipelines.core.geometry import fit_to_budget
from pipelines.core.keys import sha256_json
from pipelines.storage.fs import StorageSpec, fs_and_path, with_retries
from pipelines.storage.jsonl import jsonl_objects
from teachers.base import Teacher, append_teacher_columns
from teachers.requests import request_key
from teachers.vllm_rows import unit_table

if TYPE_CHECKING:  # pragma: no cover
    import ray.data

# The stream files teacher errors under the `code:` prefix of the message (stages/check.py).
NO_RESPONSE = "no_response: no response for this unit"
FINISH_REASONS = ("stop", "length", "error")


class ReplayFileError(ValueError):
    """The JSONL file is malformed; the message names the file and the line."""


Entry = dict[str, Any]  # {"response", "finish_reason", "prompt_tokens", "output_tokens"}


def parse_answers(data: bytes, uri: str) -> tuple[dict[str, Entry], dict[str, Entry]]:
    """JSONL bytes -> ({gen_key: entry}, {request_key: entry}).

    A line names its request (`request_key`), its unit (`gen_key`), or both. Blank lines are
    skipped. A malformed line, a line naming neither, or the same key twice with a different
    response stops the job with the file and the line number.
    """
    by_unit: dict[str, Entry] = {}
    by_request: dict[str, Entry] = {}
    for where, rec in jsonl_objects(data, uri, ReplayFileError):
        keys = {n: rec.get(n) for n in ("gen_key", "request_key")}
        if all(k is None for k in keys.values()):
            raise ReplayFileError(f"{where}: 'gen_key' or 'request_key' must be a non-empty string")
        for name, key in keys.items():
            if key is not None and (not isinstance(key, str) or not key):
                raise ReplayFileError(f"{where}: '{name}' must be a non-empty string")
        entry = _entry(rec, where)
        for (name, key), table in zip(keys.items(), (by_unit, by_request), strict=True):
            if key is None:
                continue
            if key in table and table[key] != entry:
                raise ReplayFileError(f"{where}: {name} {key} appears twice with different responses")
            table[key] = entry
    return by_unit, by_request


def parse_responses(data: bytes, uri: str) -> dict[str, Entry]:
    """The per-unit answers of a file ({gen_key: entry}); see parse_answers."""
    return parse_answers(data, uri)[0]


def _entry(rec: Mapping[str, Any], where: str) -> Entry:
    response = rec.get("response")
    if not isinstance(response, str):
        raise ReplayFileError(f"{where}: 'response' must be a string (the raw teacher text)")
    finish = rec.get("finish_reason", "stop")
    if finish not in FINISH_REASONS:
        raise ReplayFileError(f"{where}: 'finish_reason' must be one of {FINISH_REASONS}")
    return {
        "response": response,
        "finish_reason": finish,
        "prompt_tokens": _count(rec.get("prompt_tokens"), where, "prompt_tokens"),
        "output_tokens": _count(rec.get("output_tokens"), where, "output_tokens"),
    }


def export_request_key(row: Mapping[str, Any], settings: Mapping[str, Any]) -> str:
    """The request key of one unit's exported prompt, from the unit row and the teacher's prompt
    settings (mode, box_format, max_pixels, patch_size, merge_size, min_pixels: the replay
    identity). Over what the exported line shows: the object table on the teacher's image size
    and its ids, the task prompt, the teacher; for a vision prompt the image, which the export names
    by uri without reading it, hence location + content identity. Two records of one file (COCO
    and LVIS of the same image) with the same table are one request."""
    patch = int(settings.get("patch_size") or 0)
    grid = patch * int(settings.get("merge_size") or 1) if patch > 0 else 1  # = config_schema.grid_factor
    tw, th = fit_to_budget(int(row["width"]), int(row["height"]), int(settings["max_pixels"]), grid,
                           int(settings.get("min_pixels") or 0))
    text, ids = unit_table({**row, "teacher_width": tw, "teacher_height": th}, str(settings["box_format"]))
    image = sha256_json({"uri": row["image_uri"], "identity": row["image_identity"]}) \
        if settings.get("mode") == "vision" else None
    return request_key(image, text, ids, row["task"], row["prompt_hash"], row["teacher_hash"])


def _count(v: Any, where: str, name: str) -> int | None:
    if v is None:
        return None
    if not isinstance(v, int) or isinstance(v, bool) or v < 0:
        raise ReplayFileError(f"{where}: '{name}' must be a non-negative integer")
    return v


def respond_batch(table: pa.Table, responses: Mapping[str, Entry], by_request: Mapping[str, Entry] | None = None,
                  settings: Mapping[str, Any] | None = None) -> pa.Table:
    """Pure stage body: each unit's answer (module doc); a unit with none gets a `no_response`
    teacher error (never a crash, never a dropped row). Units that failed upstream get nulls.
    Without prompt `settings` (nothing to rebuild the request from) only gen_key lines apply."""
    keyed = bool(settings) and "box_format" in settings and "max_pixels" in settings
    names = [n for n in table.column_names if n != "teacher_image"] if keyed else \
        [n for n in ("gen_key", "unit_error") if n in table.column_names]
    rows = table.select(names).to_pylist()
    rks = [export_request_key(r, settings) if keyed and r.get("unit_error") is None else None for r in rows]
    shared = _shared_answers(rows, rks, responses, by_request or {})
    cols: dict[str, list[Any]] = {
        n: [] for n in ("response", "finish_reason", "teacher_error", "prompt_tokens", "output_tokens")
    }
    leads: list[str | None] = []
    for r, rk in zip(rows, rks, strict=True):
        hit, lead = responses.get(r["gen_key"]), None
        if hit is None and rk in shared:
            lead, hit = shared[rk]
            lead = None if lead == r["gen_key"] else lead
        if r.get("unit_error") is not None:
            values: tuple[Any, ...] = (None, None, None, None, None)
            lead = None
        elif hit is None:
            values = (None, "error", NO_RESPONSE, None, None)
        elif lead is not None:  # an identical request's answer: paid once, by the unit that leads
            values = (hit["response"], hit["finish_reason"], None, None, None)
        else:
            values = (hit["response"], hit["finish_reason"], None, hit["prompt_tokens"], hit["output_tokens"])
        for name, value in zip(cols, values, strict=True):
            cols[name].append(value)
        leads.append(lead)
    out = append_teacher_columns(table, cols)
    for name, values in (("request_key", rks), ("shares_answer_of", leads)):
        if name in out.column_names:
            out = out.set_column(out.schema.get_field_index(name), name, pa.array(values, pa.string()))
    return out


def _shared_answers(rows: list[dict[str, Any]], rks: list[str | None], responses: Mapping[str, Entry],
                    by_request: Mapping[str, Entry]) -> dict[str, tuple[str, Entry]]:
    """request key -> (leading unit, answer) for the units of this batch without a line of their
    own: the request's line (led by its first such unit), else the first unit's gen_key answer."""
    out: dict[str, tuple[str, Entry]] = {}
    for r, rk in zip(rows, rks, strict=True):
        if rk is None or rk in out:
            continue
        own = responses.get(r["gen_key"])
        if rk in by_request:
            if own is None:
                out[rk] = (r["gen_key"], by_request[rk])
        elif own is not None:
            out[rk] = (r["gen_key"], own)
    return out


class ReplayRespond:
    """Picklable batch callable for map_batches (carries the response maps to the workers)."""

    def __init__(self, responses: Mapping[str, Entry], by_request: Mapping[str, Entry] | None = None,
                 settings: Mapping[str, Any] | None = None) -> None:
        self.responses = responses
        self.by_request = by_request or {}
        self.settings = settings

    def __call__(self, table: pa.Table) -> pa.Table:
        return respond_batch(table, self.responses, self.by_request, self.settings)


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
        self._responses: dict[str, Entry] | None = None
        self._by_request: dict[str, Entry] = {}
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
        self._responses, self._by_request = parse_answers(data, self.uri)

    @property
    def responses(self) -> dict[str, Entry]:
        """Answers per unit (gen_key lines)."""
        self.validate()
        assert self._responses is not None
        return self._responses

    @property
    def by_request(self) -> dict[str, Entry]:
        """Answers per request (request_key lines, one per exported line)."""
        self.validate()
        return self._by_request

    def identity(self) -> dict[str, Any]:
        return {"backend": self.backend, "model": self.source, **self.prompt_settings}

    def respond_table(self, table: pa.Table) -> pa.Table:
        """The stage's work on one batch, callable without Ray."""
        return self.cpu_stage()(table)

    def cpu_stage(self) -> ReplayRespond:
        return ReplayRespond(self.responses, self.by_request, self.prompt_settings)

    def attach(self, ds: ray.data.Dataset) -> ray.data.Dataset:
        # A plain function over a picklable object: the map ships with each task (no actor needed).
        return ds.map_batches(self.cpu_stage(), batch_size=self.batch_size, batch_format="pyarrow")
