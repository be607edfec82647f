"""What a user reads: the plan (--dry-run), a periodic status line, and the end-of-build summary."""

from __future__ import annotations

import sys
import time
from typing import Any, Mapping, TextIO

from pipelines.build.plan import Plan
from pipelines.build.stats import merge_stats, totals
from schemas.columns import TASKS


def _table(header: list[str], rows: list[list[Any]], out: TextIO) -> None:
    widths = [max(len(str(x)) for x in col) for col in zip(header, *rows, strict=False)]
    cells = enumerate(zip(header, widths, strict=True))
    line = "  ".join(f"{h:<{w}}" if i == 0 else f"{h:>{w}}" for i, (h, w) in cells)
    print(line, file=out)
    print("-" * len(line), file=out)
    for r in rows:
        print("  ".join(f"{str(x):<{w}}" if i == 0 else f"{str(x):>{w}}"
                        for i, (x, w) in enumerate(zip(r, widths, strict=False))), file=out)


def print_plan(plan: Plan, out: TextIO | None = None) -> None:
    out = out or sys.stdout
    print(f"plan: {plan.images_total} images ({plan.images_excluded} excluded, {plan.no_annotations} "
          f"no_annotations), {plan.units_total} units; {plan.units_to_generate} to generate", file=out)
    rows = []
    for t in TASKS:
        tp = plan.tasks[t]
        why = ", ".join(f"{k}: {v}" for k, v in sorted(tp.generate_reasons.items())) or "-"
        dropped = ", ".join(f"{k}: {v}" for k, v in sorted(tp.drop_reasons.items())) or "-"
        rows.append([t, tp.planned, tp.reused, tp.generate, tp.refilter, tp.dropped, tp.not_applicable, why,
                     dropped])
    _table(["task", "planned", "reused", "generate", "refilter", "dropped", "n/a", "why generate", "why dropped"],
           rows, out)
    if plan.relocate:
        print(moved_line(plan.images_moved, len(plan.relocate), plan.locations_unrecorded), file=out)


def moved_line(images: int, units: int, unrecorded: int) -> str:
    """Why a build that runs no unit still makes a new version: the images are somewhere else."""
    why = f"{images} images moved" if images else "image locations recorded"
    extra = f" ({unrecorded} from ledgers without a stored location)" if images and unrecorded else ""
    return (f"{why}: image_uri of {units} reused units rewritten to the current location{extra}; "
            "no unit re-run")


class Progress:
    """Aggregates receipts as they arrive and prints one status line every `interval` seconds
    (readable in `ray job logs`)."""

    def __init__(self, total_units: int, interval: float, out: TextIO | None = None) -> None:
        self.total = total_units
        self.interval = interval
        self.out = out or sys.stdout
        self.stats: dict[str, dict[str, Any]] = {}
        self.stages: list[dict[str, Any]] = []
        self.start = time.monotonic()
        self.last = self.start

    def add(self, batch_stats: Mapping[str, Mapping[str, Any]], refilter: bool = False) -> None:
        if refilter:  # stored responses re-checked: they did not call the teacher
            batch_stats = {t: {**s, "refiltered": s.get("teacher_calls", 0), "teacher_calls": 0}
                           for t, s in batch_stats.items()}
        merge_stats(self.stats, batch_stats)
        now = time.monotonic()
        if now - self.last >= self.interval:
            self.last = now
            print(self.line(), file=self.out, flush=True)

    def line(self) -> str:
        t = totals(self.stats)
        el = max(time.monotonic() - self.start, 1e-6)
        acc = " ".join(f"{k}={v['accepted']}" for k, v in sorted(self.stats.items()))
        return (f"[groundv] units {t['units']}/{self.total}  accepted {acc or '-'}  errors {t['errors']}  "
                f"teacher {t['output_tokens'] / el:.0f} out-tok/s  {el:.0f}s")


def print_summary(manifest: Any, manifest_path: str, plan: Plan, out: TextIO | None = None) -> None:
    out = out or sys.stdout
    st = manifest.stats
    per = st["tasks"]
    rows = []
    for t in TASKS:
        s = per.get(t)
        if not s:
            continue
        rows.append([t, s["planned"], s["reused"], s["teacher_calls"], s["refiltered"], s["accepted"], s["rejected"],
                     s["errors"], s["dropped"], s["rows_in_dataset"], "-" if s["yield"] is None else s["yield"]])
    tot = st["totals"]
    rows.append(["TOTAL", tot["planned"], tot["reused"], tot["teacher_calls"], tot["refiltered"], tot["accepted"],
                 tot["rejected"], tot["errors"], tot["dropped"], tot["rows_in_dataset"], ""])
    print("", file=out)
    print(f"Ground-V build {manifest.build_id}: {st['images']} images, {st['units_planned']} units planned, "
          f"{st['units_reused']} reused, {st['teacher_calls']} sent to the teacher, {st['wall_s']:.1f}s",
          file=out)
    _table(["task", "planned", "reused", "teacher", "rechecked", "accepted", "rejected", "errors", "dropped",
            "samples in dataset", "yield"], rows, out)
    for key, title in (("rejected_by_reason", "rejected by reason"), ("errors_by_reason", "errors by reason")):
        items = sorted(st[key].items(), key=lambda kv: -kv[1])
        print(f"{title}: " + (", ".join(f"{k}={v}" for k, v in items) if items else "none"), file=out)
    if st.get("units_relocated"):
        print(moved_line(st.get("images_moved", 0), st["units_relocated"], st.get("locations_unrecorded", 0)),
              file=out)
    tok = f"{st['prompt_tokens']} prompt / {st['output_tokens']} output tokens"
    print(f"teacher tokens: {tok}", file=out)
    if st.get("stages"):
        print("stages: " + "; ".join(f"{x['stage']} {x['wall_s']}s {x['rows_out']} rows" for x in st["stages"]),
              file=out)
    if st.get("cost_usd") is not None:
        per = st.get("cost_per_1000_accepted_usd")
        print(f"cost: ${st['cost_usd']} ({st['gpus']} GPUs x {st['wall_s']:.0f}s)"
              + (f", ${per} per 1,000 accepted pairs" if per is not None else ""), file=out)
    print(f"manifest v{manifest.version:06d}: {manifest_path}", file=out)
