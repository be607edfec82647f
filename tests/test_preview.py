"""The preview on a real build: the HTML parses, every inlined image decodes, target pixels carry
their legend colour, the rest is faded, hallucinations say "no target", rejects show their reason,
and the PNG contact sheet has the size of its grid.

Masks and images are checked against the source annotations through pycocotools
(tests/dataset_checks.py), not through the preview's own readers.
"""

from __future__ import annotations

import base64
import io
import json
import re
import shutil
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from pipelines.build_groundv import main as build_main
from pipelines.cli.preview import main as preview_main
from pipelines.sources.sample_data import ensure_sample_dataset
from schemas.columns import TASKS
from tests.dataset_checks import SourceMasks, decode_sample_mask, latest_manifest, read_kind

VOID = {"meta", "img", "br", "hr", "link", "input", "source"}


class Cards(HTMLParser):
    """Collects `<figure class="card">` elements and checks that every tag is closed in order."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.stack: list[str] = []
        self.cards: list[dict[str, Any]] = []
        self.card: dict[str, Any] | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = {k: v or "" for k, v in attrs}
        if tag not in VOID:
            self.stack.append(tag)
        if tag == "figure" and "card" in a.get("class", "").split():
            self.card = {"attrs": a, "imgs": [], "swatches": [], "text": []}
        elif self.card is not None and tag == "img":
            self.card["imgs"].append(a["src"])
        elif self.card is not None and tag == "span" and a.get("class") == "swatch":
            m = re.search(r"rgb\((\d+),(\d+),(\d+)\)", a.get("style", ""))
            assert m, a
            self.card["swatches"].append(tuple(int(v) for v in m.groups()))

    def handle_endtag(self, tag: str) -> None:
        if tag in VOID:
            return
        assert self.stack and self.stack[-1] == tag, f"</{tag}> closes <{self.stack[-1] if self.stack else None}>"
        self.stack.pop()
        if tag == "figure" and self.card is not None:
            self.card["text"] = " ".join(" ".join(self.card["text"]).split())
            self.cards.append(self.card)
            self.card = None

    def handle_data(self, data: str) -> None:
        if self.card is not None:
            self.card["text"].append(data)


def parse_cards(path: Path) -> list[dict[str, Any]]:
    text = path.read_text(encoding="utf-8")
    assert text.startswith("<!doctype html>")
    p = Cards()
    p.feed(text)
    p.close()
    assert p.stack == [], f"unclosed tags: {p.stack}"
    return p.cards


def decode_data_uri(src: str) -> Image.Image:
    m = re.fullmatch(r"data:image/(png|jpeg);base64,([A-Za-z0-9+/=]+)", src)
    assert m, src[:60]
    img = Image.open(io.BytesIO(base64.b64decode(m.group(2))))
    img.load()
    assert img.format == m.group(1).upper()
    return img


@pytest.fixture(scope="module")
def build(ray_session, sample_dir, tmp_path_factory) -> dict[str, Any]:
    """v1: the default build of the sample; v2: the same units re-checked with strict filters (many rejects)."""
    out = tmp_path_factory.mktemp("preview") / "out"
    args = [f"data.sample.dir={sample_dir}", f"output.uri={out}"]
    assert build_main(args) == 0
    assert build_main([*args, "filters.min_mask_area=1500", "filters.max_answer_chars=40"]) == 0
    sources = ensure_sample_dataset(str(sample_dir))
    return {"out": str(out), "sources": sources, "masks": {s["name"]: SourceMasks(s["annotations"]) for s in sources}}


def _v(output: str, version: int) -> dict:
    """Manifest `version` of the build (v2 is the latest)."""
    assert latest_manifest(output)["version"] == 2
    return json.loads((Path(output) / "manifests" / f"v{version:06d}.json").read_text())


def test_preview_samples_html(build, tmp_path):
    out = tmp_path / "preview.html"
    rc = preview_main(["--output", build["out"], "--version", "1", "--n", "12", "--image-format", "png",
                       "--out", str(out)])
    assert rc == 0
    cards = parse_cards(out)
    assert len(cards) == 12
    samples = {r["sample_id"]: r for r in read_kind(build["out"], _v(build["out"], 1), "samples").to_pylist()}
    # round-robin over tasks: 12 cards cover all five
    assert {c["attrs"]["data-task"] for c in cards} == set(TASKS)
    checked_targets = 0
    for card in cards:
        row = samples[card["attrs"]["data-key"]]
        assert card["attrs"]["data-task"] == row["task"] and card["attrs"]["data-subtype"] == row["subtype"]
        assert row["instruction"] in card["text"] and row["answer"] in card["text"]
        assert len(card["imgs"]) == 1
        got = decode_data_uri(card["imgs"][0])
        assert got.size == (row["width"], row["height"]) and got.format == "PNG"
        shown = np.asarray(got.convert("RGB")).astype(int)
        orig = np.asarray(Image.open(row["image_uri"]).convert("RGB")).astype(int)
        if row["task"] == "hallucination":
            assert "no target" in card["text"] and card["swatches"] == []
            assert (shown == orig).all(), "a no-target image is shown unchanged"
            continue
        assert "no target" not in card["text"]
        sm = build["masks"][row["source"]]
        ids = row["target_ids"]
        assert len(card["swatches"]) == len(ids) and len(set(card["swatches"])) == len(ids)
        union = decode_sample_mask(row["mask"])
        context = union.copy()
        for ann_id, colour in zip(ids, card["swatches"], strict=True):
            m = sm.union([ann_id], row["height"], row["width"])
            assert m.any()
            c = np.asarray(colour)
            closer = np.abs(shown[m] - c).sum(axis=1) < np.abs(orig[m] - c).sum(axis=1)
            already = np.abs(orig[m] - c).sum(axis=1) == 0
            assert (closer | already).mean() >= 0.95, f"target {ann_id} not tinted with {colour}"
            parent = sm.coco.anns[ann_id].get("obj_ann_id")
            if parent is not None and parent != ann_id:  # a part: its parent is drawn too
                pm = sm.union([parent], row["height"], row["width"])
                assert (m & ~pm).sum() <= 0.1 * m.sum(), "part outside its parent"
                assert (shown[pm & ~m] != orig[pm & ~m]).any(axis=1).mean() > 0.9, "parent not drawn"
                context |= pm
            checked_targets += 1
        outside = shown[~context]
        assert outside.shape[0] > 0
        assert (outside[:, 0] == outside[:, 1]).all() and (outside[:, 1] == outside[:, 2]).all(), \
            "pixels outside the targets are faded to grey"
        inside = shown[union]
        grey_inside = (inside[:, 0] == inside[:, 1]) & (inside[:, 1] == inside[:, 2])
        assert grey_inside.mean() < 0.05, "mask pixels are coloured"
    assert checked_targets >= 8


def test_preview_is_deterministic_and_filters_by_task(build, tmp_path):
    a, b, c = tmp_path / "a.html", tmp_path / "b.html", tmp_path / "c.html"
    base = ["--output", build["out"], "--version", "1", "--n", "6"]
    assert preview_main([*base, "--out", str(a)]) == 0
    assert preview_main([*base, "--out", str(b)]) == 0
    assert a.read_bytes() == b.read_bytes()
    assert preview_main([*base, "--task", "part", "--seed", "3", "--out", str(c)]) == 0
    cards = parse_cards(c)
    assert len(cards) == 6 and {x["attrs"]["data-task"] for x in cards} == {"part"}
    for card in cards:  # every part shows its parent: the legend says so
        assert "(parent: dashed outline)" in card["text"] and " of " in card["text"]


def test_preview_rejects(build, tmp_path):
    out = tmp_path / "rejects.html"
    assert preview_main(["--output", build["out"], "--rejects", "--n", "10", "--out", str(out)]) == 0
    cards = parse_cards(out)
    rejects = read_kind(build["out"], _v(build["out"], 2), "rejects").to_pylist()
    assert len(rejects) > 100
    by_key = {f"{r['gen_key']}:{r['pair_index']}": r for r in rejects}
    assert len(cards) == 10
    reasons = set()
    for card in cards:
        row = by_key[card["attrs"]["data-key"]]
        assert card["attrs"]["data-reason"] == row["reason"] and row["reason"] in card["text"]
        assert not row["detail"] or row["detail"] in card["text"]
        reasons.add(row["reason"])
        assert len(card["imgs"]) == 1
        img = decode_data_uri(card["imgs"][0])
        assert img.width > 0
        n_targets = len(set(row["target_local_ids"] or []))
        assert len(card["swatches"]) == n_targets
        if n_targets == 0:
            assert "no target" in card["text"]
    assert reasons == {"mask_too_small", "length"}


def test_preview_png_contact_sheet(build, tmp_path):
    png = tmp_path / "sheet.png"
    assert preview_main(["--output", build["out"], "--version", "1", "--n", "7", "--cols", "3",
                         "--png", str(png)]) == 0
    img = Image.open(png)
    img.load()
    # SheetLayout defaults: cell 316 x (225 + 6 * 17 + 3 * 8 = 351); 7 cards on 3 columns -> 3 rows
    assert img.format == "PNG" and img.size == (3 * 316, 3 * 351)
    arr = np.asarray(img.convert("RGB"))
    assert (arr[-351:, 316:] == 255).all(), "the two missing cells of the last row stay blank"
    assert (arr[8:233, 8:308] != 255).any(), "the first thumbnail is drawn"


def test_preview_no_version(tmp_path, capsys):
    assert preview_main(["--output", str(tmp_path / "empty"), "--out", str(tmp_path / "x.html")]) == 1
    assert "no versions" in capsys.readouterr().err


def test_preview_without_sources_draws_the_union(build, tmp_path):
    """Sources gone: each sample is still drawn, from its own union mask, and nothing is generated."""
    out = tmp_path / "copy"
    shutil.copytree(build["out"], out)
    gone = tmp_path / "gone"
    mpath = out / "manifests" / "v000001.json"
    m = json.loads(mpath.read_text())
    m["config"]["data"]["sample"]["dir"] = str(gone)
    mpath.write_text(json.dumps(m))
    page = tmp_path / "p.html"
    assert preview_main(["--output", str(out), "--version", "1", "--n", "8", "--image-format", "png",
                         "--out", str(page)]) == 0
    assert not gone.exists()
    samples = {r["sample_id"]: r for r in read_kind(str(out), m, "samples").to_pylist()}
    drawn = 0
    for card in parse_cards(page):
        row = samples[card["attrs"]["data-key"]]
        if row["task"] == "hallucination":
            assert "no target" in card["text"]
            continue
        assert len(card["swatches"]) == 1 and "union of" in card["text"] and "sources unavailable" in card["text"]
        shown = np.asarray(decode_data_uri(card["imgs"][0]).convert("RGB")).astype(int)
        orig = np.asarray(Image.open(row["image_uri"]).convert("RGB")).astype(int)
        union = decode_sample_mask(row["mask"])
        c = np.asarray(card["swatches"][0])
        closer = np.abs(shown[union] - c).sum(axis=1) < np.abs(orig[union] - c).sum(axis=1)
        assert closer.mean() >= 0.95
        outside = shown[~union]
        assert (outside[:, 0] == outside[:, 1]).all() and (outside[:, 1] == outside[:, 2]).all()
        drawn += 1
    assert drawn >= 5
