#!/usr/bin/env python
"""Build a Ground-V grounding dataset: plan -> stream -> commit.

    python pipelines/build_groundv.py [--config FILE] [--dry-run] [key=value ...]
    ray job submit --working-dir . -- python pipelines/build_groundv.py --config FILE

With no arguments: the embedded sample dataset, a local Ray, the CPU template teacher, output
under output/groundv. See README.md and docs/architecture.md.
"""

from __future__ import annotations

import functools
import json
import os
import sys
import time
import uuid

# Run as a script (`python pipelines/build_groundv.py`, also inside `ray job submit --working-dir`),
# Python puts pipelines/ on sys.path, not the project root; Ray ships the driver's sys.path to its
# workers, so adding the root here makes `schemas`, `teachers`, `pipelines` importable everywhere.
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

from pipelines.build.commit import (  # noqa: E402
    CommitConflict,
    CommitRefused,
    check_shrink,
    clean_receipts,
    select_existing,
    write_manifest,
)
from pipelines.build.compact import compact_entries  # noqa: E402
from pipelines.build.plan import Plan, make_plan  # noqa: E402
from pipelines.build.report import Progress, print_plan, print_summary  # noqa: E402
from pipelines.build.stages.verify_images import prepare_item  # noqa: E402
from pipelines.build.stats import merge_stats, totals  # noqa: E402
from pipelines.build.verify import VerifyResult, image_lookup, verify_plan, verify_version  # noqa: E402
from pipelines.config import ConfigError, config_hash, load_config, parse_args, resolved  # noqa: E402
from pipelines.core.knowledge import load_knowledge  # noqa: E402
from pipelines.core.secrets import scrub  # noqa: E402
from pipelines.exits import install_sigterm, interrupted, run  # noqa: E402
from pipelines.filters.settings import filter_version  # noqa: E402
from pipelines.sources.readers import AnnotationFileError  # noqa: E402
from pipelines.sources.resolve import (  # noqa: E402
    INDEX_COUNTERS,
    PLAN_COLUMNS,
    load_exclusions,
    load_images,
    resolve_sources,
    uncached_files,
)
from pipelines.storage.fs import StorageError, StorageSpec, normalize_uri  # noqa: E402
from pipelines.storage.fs import join as storage_join  # noqa: E402
from pipelines.storage.output import (  # noqa: E402
    Ledger,
    latest_manifest,
    manifest_uri,
    pending_receipts,
    read_ledger,
    read_responses,
)
from pipelines.storage.preflight import check_all_reachable, check_model_source, failure_message  # noqa: E402
from schemas.columns import KIND_SAMPLES, TASKS  # noqa: E402
from schemas.manifest import Manifest  # noqa: E402
from teachers.backends import build_teacher  # noqa: E402
from teachers.prompts import default_prompts_dir, load_prompts  # noqa: E402
from teachers.verify_backends import build_verifier  # noqa: E402

MAX_ROUNDS = 4  # plan/stream/commit rounds before giving up on a commit race


class BuildContext:
    """Everything the three steps share, resolved once from the config."""

    def __init__(self, cfg, validate_teacher: bool = True, dry_run: bool = False) -> None:
        self.dry_run = dry_run  # a dry run writes nothing, not even the source-index cache
        self.cfg = cfg
        self.store = StorageSpec(cfg.storage.endpoint_url, cfg.storage.retries)
        self.output = normalize_uri(cfg.output.uri)
        cfg.output.uri = self.output
        self.sources = resolve_sources(cfg)
        self.prompts = load_prompts(cfg.teacher.prompts_dir or default_prompts_dir(), list(cfg.tasks))
        self.teacher = build_teacher(cfg.teacher, self.prompts, self.store, cfg.stream.teacher_batch_size)
        self.verifier = build_verifier(cfg.verify, self.store)
        if validate_teacher:
            self.teacher.validate()
            self.verifier.validate()
        self.exclude = load_exclusions(cfg.data.exclude_image_ids, self.store)
        self.build_id = time.strftime("%Y%m%dT%H%M%S") + "-" + uuid.uuid4().hex[:8]


# ------------------------------------------------------------------------------------------- plan
def plan(ctx: BuildContext, own_batches: set[str], use_existing: bool = True, counts_only: bool = False
         ) -> tuple[Plan, Ledger, Manifest | None, list]:
    """Source index -> units -> generation keys -> anti-join with the current version + receipts.
    `counts_only` (--dry-run): reads only the index columns the counts need; `work` is unavailable."""
    cache = storage_join(ctx.output, "cache", "index")  # a dry run reads it but never writes it
    _start_ray_for_indexing(ctx, cache)
    before = dict(INDEX_COUNTERS)
    imgs = load_images(ctx.sources, ctx.exclude, ctx.cfg.data.limit, ctx.store, cache, write_cache=not ctx.dry_run,
                       columns=PLAN_COLUMNS if counts_only else None, objects_by_reference=not counts_only)
    parsed, cached = (INDEX_COUNTERS[k] - before[k] for k in ("files_parsed", "files_cached"))
    if parsed + cached > len(ctx.sources):  # a source of several annotation files
        print(f"[groundv] index: {parsed} annotation files parsed, {cached} read from the cache", flush=True)
    current = latest_manifest(ctx.output, ctx.store) if use_existing else None
    committed = {s.path for s in current.shards} if current else set()
    receipts = pending_receipts(ctx.output, ctx.store, committed) if use_existing else []
    ledger = read_ledger(ctx.output, [current.shards if current else [], *[r.shards for r in receipts]],
                         ctx.store)
    p = make_plan(
        imgs.images, {s.name: s.tasks for s in ctx.sources}, imgs.identities,
        {t: spec.content_hash for t, spec in ctx.prompts.items()}, ctx.teacher.identity_hash(),
        ledger.rows, images_excluded=imgs.excluded, reuse_errors_from=own_batches,
        filter_version=filter_version(ctx.cfg.filters, load_knowledge()), objects=imgs.objects,
    )
    return p, ledger, current, receipts


def _start_ray_for_indexing(ctx: BuildContext, cache: str) -> None:
    """Annotation files to parse: start (or join) Ray now, so they are parsed as (parallel) Ray
    tasks and the driver — the head node on a cluster — never holds a parsed JSON (COCO train2017:
    the driver peaked at 3.3 GB in a 118K-image full build, mostly this). The stream reuses that
    Ray. Every file cached: no Ray (a rebuild that changes nothing never starts Ray); a dry run of
    one uncached file parses it here rather than start Ray for a count."""
    todo = sum(uncached_files(s, ctx.store, cache) for s in ctx.sources)
    if todo > 1 or (todo == 1 and not ctx.dry_run):
        from pipelines.build.stream import init_ray

        init_ray(ctx.cfg)
        install_sigterm()  # after ray.init, as in stream()


# ----------------------------------------------------------------------------------------- stream
def stream(ctx: BuildContext, p: Plan, ledger: Ledger, progress: Progress) -> set[str]:
    """Run the Ray Data stream over the units to generate (and the stored responses to re-check
    under new filter settings); returns the batches written."""
    from pipelines.build.stream import build_refilter_stream, build_stream, init_ray, iter_receipts, stage_stats
    from pipelines.build.work_list import remove_work_list
    from pipelines.storage.output import work_list_uri

    init_ray(ctx.cfg)
    install_sigterm()  # after ray.init: Ray's own SIGTERM handler dumps a C++ stack and exits -6
    batches: set[str] = set()
    if p.units_to_generate:
        try:
            ds = build_stream(p, ctx.teacher, ctx.cfg, ctx.store, ctx.build_id)
            for rec in iter_receipts(ds):
                batches.add(rec["batch"])
                progress.add(json.loads(rec["stats"]))
        finally:
            remove_work_list(work_list_uri(ctx.output, ctx.build_id), ctx.store)
        progress.stages.extend(stage_stats(ds))
        print(progress.line(), flush=True)
    if p.refilter:
        wanted: dict[str, set[str]] = {}
        for u in p.refilter:
            wanted.setdefault(u["batch"], set()).add(u["gen_key"])
        responses = read_responses(ctx.output, ledger, wanted, ctx.store)
        ds = build_refilter_stream(p.refilter, responses, ctx.cfg, ctx.store, ctx.build_id, ctx.teacher.label())
        for rec in iter_receipts(ds):
            batches.add(rec["batch"])
            progress.add(json.loads(rec["stats"]), refilter=True)
        progress.stages.extend(stage_stats(ds))
    return batches


# ----------------------------------------------------------------------------------------- commit
def commit(ctx: BuildContext, p: Plan, ledger: Ledger, current: Manifest | None, receipts: list,
           first_plan: Plan, progress: Progress, wall_start: float) -> Manifest:
    shards, covered = select_existing(ledger, p.reuse_from, ctx.output, ctx.store, p.relocate)
    missing = len(p.reused_keys) - len(covered)  # covered is a subset of the reused keys
    if missing:  # never commit a version that silently lost units
        raise RuntimeError(f"{missing} planned units have no rows in any shard; re-run the build")
    check_shrink(current, shards, ctx.cfg.commit.allow_shrink, ctx.cfg.commit.max_shrink)  # before paying to verify
    verified = verify_step(ctx, shards, current)
    shards = verified.shards
    out = ctx.cfg.output
    if out.compact_min_shards and len(shards) > out.compact_min_shards:
        # few large files: the next plan reads the ledger from these, consumers the rest
        shards = compact_entries(ctx.output, ctx.store, shards, out.compact_max_rows, out.compact_max_mb) or shards
    stats = build_stats(first_plan, progress, shards, time.monotonic() - wall_start, ctx.cfg)
    add_verify_stats(stats, verified.stats)
    m = write_manifest(
        ctx.output, ctx.store, (current.version if current else 0) + 1, current.version if current else None,
        shards, config=resolved(ctx.cfg), config_hash=config_hash(ctx.cfg),
        teacher=ctx.teacher.identity(), prompts={t: s.content_hash for t, s in ctx.prompts.items()},
        filters={"version": filter_version(ctx.cfg.filters, load_knowledge()),
                 "settings": resolved(ctx.cfg)["filters"]},
        stats=stats, build_id=ctx.build_id,
    )
    try:
        clean_receipts(ctx.output, ctx.store, [r.uri for r in receipts])
    except OSError as exc:  # the version is committed; stale receipts are only re-read, never wrong
        print(f"groundv: committed v{m.version:06d}, but could not delete old receipts ({exc})", file=sys.stderr)
    return m


def verify_step(ctx: BuildContext, shards: list, current: Manifest | None) -> VerifyResult:
    """Second-model verification of the version's accepted pairs (pipelines/build/verify.py)."""
    v = ctx.cfg.verify
    cache = storage_join(ctx.output, "cache", "index")
    prepare = functools.partial(prepare_item, store=ctx.store, kind=str(v.kind), max_pixels=v.max_pixels,
                                margin=v.crop_margin)
    if ctx.verifier.backend == "vllm":
        from pipelines.build.stream import init_ray

        init_ray(ctx.cfg)
    res = verify_version(ctx.output, ctx.store, ctx.verifier, shards, current,
                         image_lookup(ctx.sources, ctx.store, cache), prepare)
    if res.stats.get("enabled"):
        s = res.stats
        print(f"[groundv] verify {s['verifier']}: {s['verifier_calls']} verifier calls, "
              f"{s['verdicts_reused']} stored verdicts reused, passed {s['passed']}, failed {s['failed']}",
              flush=True)
    return res


def verify_unchanged(ctx: BuildContext, current: Manifest) -> bool:
    """Whether the verify step would leave `current` as it is: same verifier, prompt and threshold
    as recorded in its stats and no pair left unverified (those are asked again), or verification
    off and never on."""
    v = ctx.verifier
    was = (current.stats or {}).get("verify") or {}
    if not v.enabled:
        return not was.get("enabled")
    unverified = sum((t or {}).get("unverified", 0) for t in (was.get("tasks") or {}).values())
    return bool(was.get("enabled")) and unverified == 0 and was.get("identity") == v.identity() and \
        was.get("prompt_hash") == v.prompt.content_hash and was.get("threshold") == v.threshold


def add_verify_stats(stats: dict, verify: dict) -> None:
    """Manifest stats: the verify summary, and per task the precision-adjusted yield (accepted pairs
    per teacher call x the verifier's pass rate)."""
    stats["verify"] = verify
    for t, ts in stats["tasks"].items():
        vt = (verify.get("tasks") or {}).get(t) or {}
        ts["verify"] = vt or None
        rate = vt.get("pass_rate")
        ts["yield_verified"] = round(ts["yield"] * rate, 3) if ts.get("yield") is not None and rate is not None \
            else None


def build_stats(first: Plan, progress: Progress, shards, wall_s: float, cfg) -> dict:
    per: dict[str, dict] = {}
    merge_stats(per, progress.stats)
    rows_in = {t: sum(s.rows for s in shards if s.kind == KIND_SAMPLES and s.task == t) for t in TASKS}
    tasks = {}
    for t in TASKS:
        tp = first.tasks[t]
        s = per.get(t, {})
        tasks[t] = {
            "planned": tp.planned, "reused": tp.reused, "generated": tp.generate, "dropped": tp.dropped,
            "not_applicable": tp.not_applicable, "refiltered": tp.refilter, "relocated": tp.relocated,
            "teacher_calls": s.get("teacher_calls", 0), "requests_saved": s.get("requests_saved", 0),
            "accepted": s.get("accepted", 0), "rejected": s.get("rejected", 0), "errors": s.get("errors", 0),
            "units_accepted": s.get("units_accepted", 0), "units_rejected": s.get("units_rejected", 0),
            "prompt_tokens": s.get("prompt_tokens", 0), "output_tokens": s.get("output_tokens", 0),
            "rejected_by_reason": s.get("rejected_by_reason", {}), "errors_by_reason": s.get("errors_by_reason", {}),
            "generate_reasons": dict(tp.generate_reasons), "drop_reasons": dict(tp.drop_reasons),
            "rows_in_dataset": rows_in[t],
        }
    tot = totals(per)
    keys = ("planned", "reused", "generated", "refiltered", "relocated", "dropped", "not_applicable",
            "rows_in_dataset")
    total_row = {**{k: sum(v[k] for v in tasks.values()) for k in keys},
                 **{k: tot[k] for k in ("teacher_calls", "requests_saved", "accepted", "rejected", "errors",
                                        "prompt_tokens", "output_tokens")}}
    for t in tasks.values():  # accepted pairs per teacher call: what a GPU-hour buys
        t["yield"] = round(t["accepted"] / t["teacher_calls"], 3) if t["teacher_calls"] else None
    gpus = cost_gpus(cfg)
    price = cfg.cost.gpu_hourly_usd
    cost = round(price * gpus * wall_s / 3600.0, 4) if price is not None and gpus else None
    return {
        "stages": progress.stages,
        "gpus": gpus, "cost_usd": cost,
        "cost_per_1000_accepted_usd": round(1000 * cost / tot["accepted"], 4) if cost and tot["accepted"] else None,
        "images": first.images_total, "images_excluded": first.images_excluded,
        "images_no_annotations": first.no_annotations,
        # moved images folder: reused units whose rows now name the current location (no unit ran)
        "images_moved": first.images_moved, "units_relocated": len(first.relocate),
        "locations_unrecorded": first.locations_unrecorded,
        "units_planned": first.units_total, "units_reused": sum(t.reused for t in first.tasks.values()),
        "teacher_calls": tot["teacher_calls"], "requests_saved": tot["requests_saved"],
        "prompt_tokens": tot["prompt_tokens"],
        "output_tokens": tot["output_tokens"], "rejected_by_reason": tot["rejected_by_reason"],
        "errors_by_reason": tot["errors_by_reason"], "wall_s": round(wall_s, 3),
        "tasks": tasks, "totals": total_row,
    }


def cost_gpus(cfg) -> float:
    """GPUs the build paid for: cost.gpus if given, else the vLLM engine pool's maximum."""
    if cfg.cost.gpus is not None:
        return cfg.cost.gpus
    if cfg.teacher.backend == "vllm":
        v = cfg.teacher.vllm
        return float(v.max_engines * v.gpus_per_engine)
    return 0.0


def print_verify_plan(ctx: BuildContext, p: Plan, current: Manifest | None) -> None:
    """Dry run: which stored pairs the verifier would (re-)check and why."""
    if not ctx.verifier.enabled:
        if current is not None and (current.stats or {}).get("verify", {}).get("enabled"):
            print("verify: off (verify.backend=none): every pair returns to samples unverified")
        return
    why = verify_plan(ctx.output, ctx.store, ctx.verifier, current, p.reused_keys)
    print(f"verify {ctx.verifier.label()} (prompt {ctx.verifier.prompt.content_hash[:10]}):")
    for task, c in sorted(why.items()):
        todo = sum(n for k, n in c.items() if k != "stored verdict")
        reasons = ", ".join(f"{k}: {n}" for k, n in sorted(c.items()) if k != "stored verdict") or "-"
        print(f"  {task:18} {todo:6d} stored pairs to verify ({reasons}); {c['stored verdict']} reuse a stored verdict")
    print(f"  + every pair accepted from the {p.units_to_run} units the stream will run (new verification keys)")


def preflight(cfg) -> None:
    """Everything that would fail later and can be checked in seconds, before Ray starts: every
    store is reachable with these credentials, input files exist, the teacher's weights exist."""
    store = StorageSpec(cfg.storage.endpoint_url, cfg.storage.retries)
    uris: dict[str, str] = {"output.uri": cfg.output.uri}
    must: set[str] = set()
    for i, src in enumerate(cfg.data.sources):
        for key in ("annotations", "images", "categories"):
            if getattr(src, key, None):  # categories: only a source of per-image records has one
                uris[f"data.sources[{i}].{key}"] = getattr(src, key)
                must.add(f"data.sources[{i}].{key}")
    if isinstance(cfg.data.exclude_image_ids, str):
        uris["data.exclude_image_ids"] = cfg.data.exclude_image_ids
        must.add("data.exclude_image_ids")
    if cfg.teacher.backend == "replay" and cfg.teacher.responses:
        uris["teacher.responses"] = cfg.teacher.responses
        must.add("teacher.responses")
    check_all_reachable(normalized(uris), store, frozenset(must))
    if cfg.teacher.backend == "vllm":
        check_model_source(cfg.teacher.vllm.model_source, store)


def normalized(uris: dict[str, str]) -> dict[str, str]:
    """Each configured location in its one spelling (s3a:// -> s3://); an unsupported scheme is a
    configuration error naming the key."""
    out = {}
    for key, uri in uris.items():
        try:
            out[key] = normalize_uri(uri)
        except ValueError as exc:
            raise ValueError(f"{key}: {exc}") from None
    return out


def main(argv: list[str] | None = None) -> int:
    """The build CLI: any failure (Ctrl-C, SIGTERM included) becomes a message and an exit code."""
    return run("groundv", lambda: _main(argv))


def _main(argv: list[str] | None) -> int:
    args = parse_args(argv)
    try:
        cfg = load_config(args.config, args.overrides)
        cfg.output.uri = normalized({"output.uri": cfg.output.uri})["output.uri"]
        preflight(cfg)  # seconds, before Ray starts: stores reachable, inputs and model exist
        ctx = BuildContext(cfg, dry_run=args.dry_run)
    except (ConfigError, StorageError, FileNotFoundError, ValueError) as exc:
        print(f"groundv: configuration error: {scrub(str(exc))}", file=sys.stderr)
        return 2
    own: set[str] = set()
    wall_start = time.monotonic()
    try:
        first, ledger, current, receipts = plan(ctx, own, counts_only=args.dry_run)
    except (AnnotationFileError, FileNotFoundError, IsADirectoryError, NotADirectoryError) as exc:  # bad input
        print(f"groundv: input error: {scrub(str(exc))}", file=sys.stderr)
        return 2
    except StorageError as exc:  # the store failed while planning: nothing was written
        print(failure_message(exc, ctx.output), file=sys.stderr)
        return 4
    print_plan(first)
    if current is not None and not receipts and first.unchanged and verify_unchanged(ctx, current):
        # Checked before anything is written, so it also holds on a read-only output.
        print(f"nothing changed, v{current.version} is current")
        return 0
    if args.dry_run:
        print_verify_plan(ctx, first, current)
        print("dry run: nothing written")
        return 0
    start_version = current.version if current else None
    try:
        progress = Progress(first.units_to_run, cfg.stream.status_interval_s)
        p = first
        for _ in range(MAX_ROUNDS):
            if p.units_to_run:
                own |= stream(ctx, p, ledger, progress)
                # Re-plan against what is durable now (our receipts included): the same path resumes a
                # crashed build and resolves a commit race.
                p, ledger, current, receipts = plan(ctx, own)
                if p.units_to_run:
                    continue
            try:
                m = commit(ctx, p, ledger, current, receipts, first, progress, wall_start)
                break
            except CommitConflict as exc:
                print(f"groundv: {exc}; re-planning against it", file=sys.stderr)
                p, ledger, current, receipts = plan(ctx, own)
        else:
            print("groundv: could not commit after several rounds (concurrent builds?)", file=sys.stderr)
            return 3
    except CommitRefused as exc:
        print(f"groundv: not committed: {scrub(str(exc))}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        raise
    except Exception as exc:  # noqa: BLE001 - the one place that turns any failure into a clear exit
        if interrupted():  # Ctrl-C / SIGTERM surfaced as Ray's own error: say "interrupted"
            raise
        print(failure_message(exc, ctx.output, start_version), file=sys.stderr)
        return 4
    print_summary(m, manifest_uri(ctx.output, m.version), first)
    return 0


if __name__ == "__main__":
    sys.exit(main())
