"""Matplotlib plots of the audit report and the dataset card (Agg backend, PNG bytes), and the tiny
HTML page both are shown in. Each plot draws on a given Axes, so the card can put them on one sheet."""

from __future__ import annotations

import base64
import html
import io
from typing import Any, Mapping, Sequence

import matplotlib

matplotlib.use("Agg")  # no display on servers; must precede pyplot
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.axes import Axes  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

TASK_COLOURS = {"hallucination": "#787878", "multi_object": "#006ebe", "reasoning": "#963caa",
                "multi_granularity": "#148c5a", "part": "#d26414"}


def png(fig: Figure) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    return buf.getvalue()


def figure(w: float = 6.0, h: float = 3.4) -> tuple[Figure, Axes]:
    fig, ax = plt.subplots(figsize=(w, h))
    return fig, ax


def precision(ax: Axes, per_task: Mapping[str, Mapping[str, Any]],
              title: str = "human precision (Wilson 95 %)") -> None:
    """Per-task precision points with their Wilson intervals as error bars (tasks without verdicts: none)."""
    tasks = list(per_task)
    for i, t in enumerate(tasks):
        d = per_task[t]
        if not d.get("n"):
            ax.annotate("no verdicts", (i, 0.05), ha="center", fontsize=8, color="#888")
            continue
        err = [[max(0.0, d["p"] - d["low"])], [max(0.0, d["high"] - d["p"])]]
        ax.errorbar([i], [d["p"]], yerr=err, fmt="o", capsize=5, color=TASK_COLOURS.get(t, "k"))
        ax.annotate(f"{d['p']:.2f}\nn={d['n']}", (i, d["p"]), textcoords="offset points", xytext=(8, -10), fontsize=8)
    ax.set_xticks(range(len(tasks)), tasks, rotation=20, ha="right")
    ax.set_ylim(0, 1.08)
    ax.set_xlim(-0.5, max(len(tasks), 1) - 0.3)
    ax.set_ylabel("share of pairs judged correct", fontsize=8)
    ax.set_title(title, fontsize=10)
    ax.grid(axis="y", alpha=0.3)


def bars(ax: Axes, counts: Mapping[str, float], title: str, top: int = 10, colour: str = "#c0392b") -> None:
    """Horizontal bars of the `top` largest counts (reasons, categories ...)."""
    items = sorted(counts.items(), key=lambda kv: -kv[1])[:top][::-1]
    ax.barh([k for k, _ in items], [v for _, v in items], color=colour)
    ax.set_title(title, fontsize=10)
    ax.tick_params(axis="y", labelsize=8)
    if not items:
        ax.text(0.5, 0.5, "none", transform=ax.transAxes, ha="center")
        ax.set_xticks([])
        ax.set_yticks([])


def counts_and_yield(ax: Axes, stats: Mapping[str, Mapping[str, Any]], tasks: Sequence[str]) -> None:
    """Accepted / rejected / errors per task (bars) and yield = accepted pairs per teacher call (line)."""
    kinds = (("accepted", "#2a7"), ("rejected", "#c0392b"), ("errors", "#999"))
    width = 0.27
    for j, (k, c) in enumerate(kinds):
        ax.bar([i + (j - 1) * width for i in range(len(tasks))], [stats.get(t, {}).get(k, 0) for t in tasks],
               width, label=k, color=c)
    ax.set_xticks(range(len(tasks)), tasks, rotation=20, ha="right")
    ax.set_title("pairs per task (this build's counts) and yield", fontsize=10)
    ax.set_ylim(0, max([1] + [stats.get(t, {}).get(k, 0) for t in tasks for k, _ in kinds]) * 1.3)
    ax2 = ax.twinx()
    yields = [stats.get(t, {}).get("yield") or 0 for t in tasks]
    ax2.plot(range(len(tasks)), yields, "k.-", label="yield")
    ax2.set_ylabel("yield: accepted pairs per teacher call", fontsize=8)
    ax2.set_ylim(0, max([1.0, *yields]) * 1.3)
    h1, l1 = ax.get_legend_handles_labels()
    h2, l2 = ax2.get_legend_handles_labels()
    ax.legend(h1 + h2, l1 + l2, fontsize=8, loc="upper center", ncol=4)


def length_hist(ax: Axes, lengths: Mapping[str, Sequence[int]]) -> None:
    """Instruction length (words) per task, as step histograms on shared bins."""
    top = max((max(v) for v in lengths.values() if v), default=1)
    bins = range(0, top + 2)
    for t, v in lengths.items():
        if v:
            ax.hist(v, bins=bins, histtype="step", linewidth=1.5, label=t, color=TASK_COLOURS.get(t))
    ax.set_xlabel("instruction length (words)", fontsize=8)
    ax.set_title("instruction lengths", fontsize=10)
    ax.legend(fontsize=7)


def coverage(ax: Axes, source_share: Mapping[str, float], sample_share: Mapping[str, float], top: int = 15) -> None:
    """Share of each category among source objects vs among the targets of the samples."""
    cats = sorted(source_share, key=lambda c: -source_share[c])[:top][::-1]
    ys = range(len(cats))
    ax.barh([y + 0.2 for y in ys], [source_share[c] for c in cats], 0.4, label="source objects", color="#bbb")
    ax.barh([y - 0.2 for y in ys], [sample_share.get(c, 0.0) for c in cats], 0.4, label="sample targets",
            color="#006ebe")
    ax.set_yticks(list(ys), cats, fontsize=8)
    ax.set_title("category coverage vs the source", fontsize=10)
    ax.legend(fontsize=7)


def page(title: str, sections: Sequence[tuple[str, str]], images: Sequence[tuple[str, bytes]]) -> str:
    """A self-contained HTML page: <pre> sections and inlined PNGs."""
    esc = html.escape
    body = [f"<h1>{esc(title)}</h1>"]
    for head, text in sections:
        body.append(f"<h2>{esc(head)}</h2><pre>{esc(text)}</pre>")
    for caption, data in images:
        b64 = base64.b64encode(data).decode("ascii")
        body.append(f'<figure><img alt="{esc(caption)}" src="data:image/png;base64,{b64}">'
                    f"<figcaption>{esc(caption)}</figcaption></figure>")
    style = ("body{font:14px system-ui,sans-serif;margin:24px;max-width:1100px}pre{background:#f6f6f6;padding:10px;"
             "overflow:auto}img{max-width:100%}figure{margin:16px 0}")
    return (f'<!doctype html>\n<html lang="en"><head><meta charset="utf-8"><title>{esc(title)}</title>'
            f"<style>{style}</style></head><body>{''.join(body)}</body></html>\n")
