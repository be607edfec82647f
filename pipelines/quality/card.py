"""A dataset card for one committed version: README.md in the Hugging Face dataset-card format (YAML
header with a license placeholder, task categories, size category and one config per task pointing
at the version's sample shards), PNG plots, and an HTML page with both.

The card's `data_files` are relative to the output root (where `manifests/` and `data/` are): upload
or copy README.md to that root. The card is written to <output>/cards/v<N>/ unless --out says otherwise.
"""

from __future__ import annotations

import os
from collections import Counter
from typing import Any

import pyarrow.parquet as pq
import yaml

from pipelines.consumers.cards import SourceIndex
from pipelines.quality import plots
from pipelines.quality.report import compute
from pipelines.quality.sample import resolve_version
from pipelines.quality.store import list_audits, read_json, read_verdicts, sample_uri
from pipelines.storage import fs as storage
from pipelines.storage import guard
from pipelines.storage.fs import StorageSpec
from schemas.columns import KIND_SAMPLES, SAMPLE_SCHEMA, TASKS
from schemas.manifest import Manifest

SIZE_CATEGORIES = [(1_000, "n<1K"), (10_000, "1K<n<10K"), (100_000, "10K<n<100K"), (1_000_000, "100K<n<1M"),
                   (10_000_000, "1M<n<10M"), (100_000_000, "10M<n<100M")]
CARD_COLUMNS = ["task", "source", "image_id", "instruction", "target_ids"]


def size_category(n: int) -> str:
    return next((label for limit, label in SIZE_CATEGORIES if n < limit), "n>1T" if n >= 10**12 else "100M<n<1B")


def yaml_header(m: Manifest, total: int) -> str:
    configs = [{"config_name": "default", "data_files": [{"split": "train", "path": [
        s.path for s in m.shards_of(KIND_SAMPLES)]}]}]
    for t in TASKS:
        paths = [s.path for s in m.shards_of(KIND_SAMPLES, t)]
        if paths:
            configs.append({"config_name": t, "data_files": [{"split": "train", "path": paths}]})
    head = {"license": "other", "license_name": "TODO-set-the-license",
            "license_link": "LICENSE", "pretty_name": f"Ground-V on Ray, version {m.version}",
            "language": ["en"], "task_categories": ["image-segmentation", "image-text-to-text"],
            "tags": ["grounding", "referring-segmentation", "reasoning-segmentation", "ground-v"],
            "size_categories": [size_category(total)], "configs": configs}
    note = ("# license: a placeholder. The pairs derive from the sources' annotations and images; set the\n"
            "# license they allow (e.g. COCO annotations CC BY 4.0, images under Flickr terms).\n")
    return "---\n" + note + yaml.safe_dump(head, sort_keys=False, width=1000) + "---\n"


def read_rows(output: str, m: Manifest, store: StorageSpec) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    for s in m.shards_of(KIND_SAMPLES):
        fs, path = storage.fs_and_path(guard.shard_uri(output, s.path), store)
        rows.extend(storage.with_retries(lambda p=path, f=fs: pq.read_table(p, filesystem=f, columns=CARD_COLUMNS),
                                         store, f"read {s.path}").to_pylist())
    return rows


def coverage_shares(m: Manifest, rows: list[dict[str, Any]], store: StorageSpec) -> tuple[dict, dict, str | None]:
    """Share of each category among the sources' objects, and among the samples' targets."""
    index = SourceIndex(m, store)
    src: Counter = Counter()
    by_ann: dict[tuple[str, int], str] = {}
    for source in sorted({r["source"] for r in rows} | set(index.sources)):
        for rec in index.records(source).values():
            for o in rec["objects"]:
                name = o["category_name"].replace("_", " ")
                src[name] += 1
                by_ann[(source, int(o["ann_id"]))] = name
    tgt = Counter(by_ann[(r["source"], int(a))] for r in rows for a in r["target_ids"] or []
                  if (r["source"], int(a)) in by_ann)
    total_s, total_t = sum(src.values()) or 1, sum(tgt.values()) or 1
    return ({c: n / total_s for c, n in src.items()}, {c: n / total_t for c, n in tgt.items()}, index.error)


def latest_audit(output: str, version: int, store: StorageSpec) -> dict[str, Any] | None:
    """The report of the newest audit of `version` that has verdicts (computed now, from its records)."""
    found = []
    for name in list_audits(output, store):
        try:
            sample = read_json(sample_uri(output, name), store)
        except (FileNotFoundError, ValueError):
            continue
        if int(sample.get("version", -1)) == version:
            found.append((sample.get("created_at", ""), name, sample))
    for _, name, sample in sorted(found, reverse=True):
        r = compute(sample, read_verdicts(output, name, store))
        if r["overall"]["pooled"]["n"]:
            return r
    return None


def make_plots(m: Manifest, rows: list[dict[str, Any]], audit: dict | None, store: StorageSpec
               ) -> tuple[dict[str, bytes], str | None]:
    """name -> PNG bytes of each plot, plus `overview` with all of them on one sheet."""
    stats = m.stats.get("tasks", {})
    lengths = {t: [len((r["instruction"] or "").split()) for r in rows if r["task"] == t] for t in TASKS}
    src_share, tgt_share, warn = coverage_shares(m, rows, store)
    reasons = {f"reject: {k}": v for k, v in (m.stats.get("rejected_by_reason") or {}).items()}
    reasons.update({f"error: {k}": v for k, v in (m.stats.get("errors_by_reason") or {}).items()})
    draw = {
        "counts": lambda ax: plots.counts_and_yield(ax, stats, TASKS),
        "lengths": lambda ax: plots.length_hist(ax, lengths),
        "coverage": lambda ax: plots.coverage(ax, src_share, tgt_share),
        "reasons": lambda ax: plots.bars(ax, reasons, "top reject and error reasons (this build)"),
    }
    if audit:
        draw["audit"] = lambda ax: plots.precision(ax, audit["precision"], f"audit {audit['audit']}: human precision")
    out = {}
    for name, fn in draw.items():
        fig, ax = plots.figure()
        fn(ax)
        out[name] = plots.png(fig)
    fig = plots.plt.figure(figsize=(13, 4.2 * ((len(draw) + 1) // 2)))
    for i, fn in enumerate(draw.values()):
        fn(fig.add_subplot((len(draw) + 1) // 2, 2, i + 1))
    fig.suptitle(f"Ground-V on Ray - version {m.version}", fontsize=13)
    fig.tight_layout()
    out["overview"] = plots.png(fig)
    return out, warn


def _table(head: list[str], rows: list[list[Any]]) -> str:
    out = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    out += ["| " + " | ".join(str(c) for c in r) + " |" for r in rows]
    return "\n".join(out)


def card_body(m: Manifest, rows: list[dict[str, Any]], audit: dict | None, images: list[str],
              warn: str | None) -> str:
    stats = m.stats.get("tasks", {})
    counts = Counter(r["task"] for r in rows)
    task_rows = [[t, counts.get(t, 0), stats.get(t, {}).get("rejected", "-"), stats.get(t, {}).get("errors", "-"),
                  stats.get(t, {}).get("yield", "-")] for t in TASKS]
    parts = [f"# Ground-V on Ray, version {m.version}",
             f"Grounding instruction -> mask pairs in the style of Ground-V (CVPR 2025, arXiv 2505.13788), built "
             f"by Ground-V on Ray on {m.created_at} (build {m.build_id}). A teacher "
             f"(`{m.teacher.get('backend')}` {m.teacher.get('model') or ''}) wrote instructions whose answer is a set "
             "of annotated objects; the mask is the union of their source masks (COCO RLE). Five tasks: "
             + ", ".join(f"`{t}`" for t in TASKS) + ".",
             "## Contents", _table(["task", "pairs", "rejected (this build)", "errors (this build)", "yield"],
                                   task_rows + [["**total**", len(rows), "", "", ""]]),
             f"Filters version `{m.filters.get('version')}`. Configs: `default` (all tasks) and one per task.",
             "## Load it",
             "```python\nfrom datasets import load_dataset\nds = load_dataset(\"parquet\", data_files="
             "{\"train\": [...]})  # or: load_dataset(<repo>, \"reasoning\")\n"
             "from pipelines.consumers.dataset import to_hf_dataset  # with this project\n```",
             "## Columns", _table(["column", "type"], [[f.name, str(f.type)] for f in SAMPLE_SCHEMA]),
             "## Quality"]
    if audit:
        p = audit["overall"]["pooled"]
        parts.append(f"Human audit `{audit['audit']}` ({audit['sample_size']} pairs, auditors "
                     f"{', '.join(audit['auditors'])}): overall precision {p['p']:.3f} "
                     f"[{p['low']:.3f}, {p['high']:.3f}] (Wilson 95 %, {p['k']}/{p['n']}).")
        parts.append(_table(["task", "precision", "95 % interval", "judged"],
                            [[t, f"{d['p']:.3f}", f"[{d['low']:.3f}, {d['high']:.3f}]", d["n"]]
                             for t, d in audit["precision"].items() if d["n"]]))
    else:
        parts.append("Not audited yet: `python pipelines/cli/audit.py sample --name round1` then `serve` and "
                     "`report` (docs/quality.md).")
    rej = m.stats.get("rejected_by_reason") or {}
    if rej:
        parts.append("Rejected by reason (this build): " + ", ".join(f"`{k}` {v}" for k, v in
                                                                    sorted(rej.items(), key=lambda kv: -kv[1])))
    parts.append("## Plots")
    parts += [f"![{n}](plots/{n}.png)" for n in images]
    if warn:
        parts.append(f"_Category coverage: {warn}_")
    parts += ["## Citation", "Ground-V: Teaching VLMs to Ground Complex Instructions in Pixels (CVPR 2025), "
              "arXiv:2505.13788. Source annotations: COCO, LVIS, PACO as configured in the manifest."]
    return "\n\n".join(parts) + "\n"


def write_card(output: str, store: StorageSpec, version: int | None = None, out: str | None = None) -> list[str]:
    """Write README.md, card.html and plots/*.png for a version; returns the written uris."""
    m = resolve_version(output, version, store)
    rows = read_rows(output, m, store)
    audit = latest_audit(output, m.version, store)
    pngs, warn = make_plots(m, rows, audit, store)
    dest = out or storage.join(output, "cards", f"v{m.version:06d}")
    if not storage.is_s3(dest):
        dest = os.path.abspath(dest)
    body = card_body(m, rows, audit, [n for n in pngs if n != "overview"], warn)
    written = []
    for name, data in pngs.items():
        uri = storage.join(dest, "plots", f"{name}.png")
        storage.write_bytes(uri, data, store)
        written.append(uri)
    readme = yaml_header(m, len(rows)) + "\n" + body
    html = plots.page(f"Ground-V on Ray, version {m.version}", [("README.md", readme)],
                      [(n, d) for n, d in pngs.items() if n != "overview"])
    for name, data in (("README.md", readme), ("card.html", html)):
        storage.write_bytes(storage.join(dest, name), data.encode(), store)
        written.append(storage.join(dest, name))
    return written
