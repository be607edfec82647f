"""Verifier backends, same contract shape as the teachers: `none` (default), `replay` (verdicts made
elsewhere, JSONL keyed by verify_key) and `vllm` (ray.data.llm, the teacher's engine machinery).

A backend turns verification items (teachers/verifier.make_item) into raw answers
`{verify_key: {"response": str | None, "p_pass": float | None}}`; teachers/verifier.decide turns
an answer into a verdict. A missing answer (replay file without that key, engine error) leaves the
pair unverified: nothing is stored, so the next build asks again.
"""

from __future__ import annotations

import copy
import functools
import hashlib
import json
from types import SimpleNamespace
from typing import Any, Callable, Iterable, Mapping

from pipelines.core.secrets import is_secret_key
from pipelines.storage.fs import StorageSpec, read_bytes
from pipelines.storage.jsonl import jsonl_objects
from teachers.verifier import (
    VERIFY_REQUEST_VERSION,
    VerifyPrompt,
    build_messages,
    load_verify_prompt,
    p_pass_from_logprobs,
)
from teachers.verifier import output_constraint as _constraint

Answers = dict[str, dict[str, Any]]
Prepare = Callable[[dict[str, Any]], dict[str, Any]]  # item -> item + "image_urls" (build layer)


class VerifyFileError(ValueError):
    """The verdicts JSONL is malformed; the message names the file and the line."""


class Verifier:
    backend = "none"
    needs_images = False

    def __init__(self, cfg: Any) -> None:
        self.cfg = cfg
        self.kind = str(cfg.kind)
        self.prompt: VerifyPrompt = load_verify_prompt(self.kind, cfg.prompt_file)
        self.threshold = float(cfg.threshold)

    @property
    def enabled(self) -> bool:
        return self.backend != "none"

    def identity(self) -> dict[str, Any]:
        """What changes the verifier's answers (not its prompt: that is the separate prompt hash,
        not the threshold: stored scores are re-decided)."""
        return {"backend": self.backend, "kind": self.kind, "request": VERIFY_REQUEST_VERSION}

    def identity_hash(self) -> str:
        blob = json.dumps(self.identity(), sort_keys=True, separators=(",", ":"), default=str)
        return hashlib.sha256(blob.encode()).hexdigest()

    def label(self) -> str:
        ident = self.identity()
        return (
            f"{self.backend}:{self.kind}:{ident.get('model') or ident.get('source') or '-'}@{self.identity_hash()[:10]}"
        )

    def validate(self) -> None:  # noqa: B027 - optional hook
        """Check files / model paths before any work is scheduled."""

    def answer(self, items: list[dict[str, Any]], prepare: Prepare) -> Answers:
        return {}


class ReplayVerifier(Verifier):
    backend = "replay"

    def __init__(self, cfg: Any, store: StorageSpec | None = None) -> None:
        super().__init__(cfg)
        self.uri = cfg.verdicts
        self.store = store or StorageSpec()
        self._answers: Answers | None = None

    def identity(self) -> dict[str, Any]:
        # The external verifier's name, not the file: keys must exist before its answers do (export).
        return {**super().identity(), "source": self.cfg.replay_source}

    def validate(self) -> None:
        self.answers_file()

    def answers_file(self) -> Answers:
        if self._answers is None:
            self._answers = parse_verdicts(read_bytes(self.uri, self.store), self.uri)
        return self._answers

    def answer(self, items: list[dict[str, Any]], prepare: Prepare) -> Answers:
        known = self.answers_file()
        return {it["verify_key"]: known[it["verify_key"]] for it in items if it["verify_key"] in known}


def parse_verdicts(data: bytes, uri: str) -> Answers:
    """JSONL {"verify_key", "response"[, "p_pass"]} -> answers; malformed lines stop the job."""
    out: Answers = {}
    for where, rec in jsonl_objects(data, uri, VerifyFileError):
        if not isinstance(rec.get("verify_key"), str):
            raise VerifyFileError(f"{where}: needs a string 'verify_key'")
        if not isinstance(rec.get("response"), str):
            raise VerifyFileError(f"{where}: 'response' must be a string (the verifier's raw text)")
        p = rec.get("p_pass")
        if p is not None and not (isinstance(p, (int, float)) and 0.0 <= float(p) <= 1.0):
            raise VerifyFileError(f"{where}: 'p_pass' must be a probability")
        out[rec["verify_key"]] = {"response": rec["response"], "p_pass": None if p is None else float(p)}
    return out


# ------------------------------------------------------------------------------------------ vllm
def verify_request(row: Mapping[str, Any], prompt: VerifyPrompt, sampling: Mapping[str, Any], mode: str) -> dict:
    """Preprocess: one prepared item -> messages + sampling params (structured output per row)."""
    messages = build_messages(row, prompt, list(row.get("image_urls") or []) if mode == "vision" else [])
    if mode != "vision":
        last = messages[-1]
        last["content"] = "\n".join(p["text"] for p in last["content"] if p.get("type") == "text")
    params = dict(sampling)
    params["structured_outputs"] = _constraint(row, prompt)
    return {"messages": messages, "sampling_params": params, "__inference_error__": ""}


def verify_postprocess(row: dict[str, Any], prompt: VerifyPrompt) -> dict[str, Any]:
    lps = row.get("logprobs")
    first = lps[0] if isinstance(lps, list) and lps else None
    p = p_pass_from_logprobs(first, prompt) if prompt.kind == "mask_judge" else None
    return {"verify_key": row["verify_key"], "response": row.get("generated_text"), "p_pass": p}


class VllmVerifier(Verifier):
    backend = "vllm"

    def __init__(self, cfg: Any) -> None:
        super().__init__(cfg)
        from teachers.vllm_backend import VllmTeacher

        self.mode = str(cfg.mode)
        self.needs_images = self.mode == "vision"
        v = copy.deepcopy(cfg.vllm)
        sampling = dict(v.sampling or {})
        if self.kind == "mask_judge":
            sampling.setdefault("logprobs", 5)  # P(correct) from the first token's top-5
        v.sampling = sampling
        n_images = 2 if self.kind == "mask_judge" else 1
        v.engine_kwargs = (
            {**dict(v.engine_kwargs or {}), "limit_mm_per_prompt": {"image": n_images, "video": 0}}
            if self.needs_images
            else dict(v.engine_kwargs or {})
        )
        # Reuse the teacher's engine wiring (placement, structured outputs, CPU mode, identity rules).
        # patch_size 0: no patch grid -- the verify step resizes its images itself (fit to max_pixels).
        shim = SimpleNamespace(
            vllm=v,
            mode=self.mode,
            box_format="xyxy",
            pairs_per_unit=1,
            max_pixels=cfg.max_pixels,
            patch_size=0,
            merge_size=1,
            min_pixels=0,
        )
        self.engine = VllmTeacher(shim, {})

    def identity(self) -> dict[str, Any]:
        e = self.engine
        return {**super().identity(), "model": e.model_source, "revision": e.revision, "mode": self.mode,
                "sampling": dict(sorted(e.sampling.items())), "max_pixels": self.cfg.max_pixels,
                "crop_margin": self.cfg.crop_margin if self.kind == "mask_judge" else None,
                "engine": {k: v for k, v in sorted(e.engine_kwargs.items())
                           if k not in _perf_only() and not is_secret_key(k)}}  # fmt: skip

    def validate(self) -> None:
        self.engine.validate()

    def answer(self, items: list[dict[str, Any]], prepare: Prepare) -> Answers:
        import ray.data
        from ray.data.llm import build_processor

        if not items:
            return {}
        ds = ray.data.from_items(items)
        if self.needs_images:
            ds = ds.map(prepare)
        processor = build_processor(
            self.engine.processor_config(image_urls=True),  # its rows carry data: URLs (verify_images)
            preprocess=functools.partial(
                verify_request, prompt=self.prompt, sampling=self.engine.sampling, mode=self.mode
            ),
            postprocess=functools.partial(verify_postprocess, prompt=self.prompt),
        )
        out: Answers = {}
        self.errors: dict[str, str] = {}
        # Failed rows bypass the postprocess (raw __data shape): normalise both shapes in one stage.
        for row in processor(ds).map_batches(_normalise, batch_format="pyarrow", batch_size=None).take_all():
            if row.get("response") is not None:
                out[row["verify_key"]] = {"response": row["response"], "p_pass": row.get("p_pass")}
            elif row.get("error"):
                self.errors[row["verify_key"]] = row["error"]
        return out


def _normalise(table: Any) -> Any:
    import pyarrow as pa

    rows = table.to_pylist()
    out = []
    for r in rows:
        err = r.get("__inference_error__") or None
        out.append(
            {
                "verify_key": r.get("verify_key"),
                "response": None if err else r.get("response"),
                "p_pass": None if err else r.get("p_pass"),
                "error": str(err)[:2000] if err else None,
            }
        )
    schema = pa.schema(
        [("verify_key", pa.string()), ("response", pa.string()), ("p_pass", pa.float64()), ("error", pa.string())]
    )
    return pa.Table.from_pylist(out, schema=schema)


def _perf_only() -> frozenset[str]:
    from teachers.vllm_backend import PERF_ONLY_ENGINE_KWARGS

    return PERF_ONLY_ENGINE_KWARGS


def build_verifier(cfg: Any, store: StorageSpec | None = None) -> Verifier:
    backend = str(cfg.backend)
    if backend == "none":
        return Verifier(cfg)
    if backend == "replay":
        return ReplayVerifier(cfg, store)
    if backend == "vllm":
        return VllmVerifier(cfg)
    raise ValueError(f"verify.backend: unknown backend {backend!r} (none | replay | vllm)")


def iter_chunks(items: list[dict[str, Any]], n: int) -> Iterable[list[dict[str, Any]]]:
    for i in range(0, len(items), n):
        yield items[i : i + n]
