"""Exports (gRefCOCO, LISA, PSALM) re-read by small reference readers written here from the formats'
public descriptions (grefer / G_REFER, LISA's ReasonSeg reader, PSALM's referring JSON), with real
pycocotools and OpenCV, and compared pixel for pixel with the Parquet masks of the build."""

from __future__ import annotations

import glob
import json
import os
import shutil

import numpy as np
import pytest
from omegaconf import OmegaConf
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO

from pipelines.build_groundv import main as build_main
from pipelines.cli.export import export
from pipelines.cli.export import main as export_main
from pipelines.consumers.exporters.common import (
    ExportError,
    mask_rectangles,
    rectangles_to_coco_polygons,
    rectangles_to_cv2_points,
)
from pipelines.sources.resolve import resolve_sources
from tests.dataset_checks import decode_sample_mask, latest_manifest, read_kind


@pytest.fixture(scope="module")
def build(ray_session, sample_dir, tmp_path_factory):
    """One real build of the sample dataset: (output, manifest, samples by id)."""
    out = str(tmp_path_factory.mktemp("export_build") / "out")
    assert build_main([f"data.sample.dir={sample_dir}", f"output.uri={out}"]) == 0
    m = latest_manifest(out)
    samples = {r["sample_id"]: r for r in read_kind(out, m, "samples").to_pylist()}
    return out, m, samples


@pytest.fixture(scope="module")
def exported(build, tmp_path_factory):
    """Every format exported once through the CLI: format -> folder."""
    out, _, _ = build
    base = tmp_path_factory.mktemp("exports")
    dirs = {}
    for fmt in ("grefcoco", "lisa", "psalm"):
        dirs[fmt] = str(base / fmt)
        assert export_main([fmt, "--out", dirs[fmt], "--output", out, "--version", "1"]) == 0
    return dirs


def empty(h: int, w: int) -> np.ndarray:
    return np.zeros((h, w), dtype=bool)


# --- reference readers -----------------------------------------------------------------------------


def grefer_masks(data_root: str, split_by: str = "unc") -> dict[str, tuple[dict, np.ndarray, COCO]]:
    """G_REFER(data_root, "grefcoco", split_by) + getMaskByRef(merge=True): refs from grefs(unc).json,
    masks from instances.json through pycocotools' COCO; ann_id [-1] is an empty mask."""
    folder = os.path.join(data_root, "grefcoco")
    with open(os.path.join(folder, f"grefs({split_by}).json")) as fh:
        refs = json.load(fh)
    coco = COCO(os.path.join(folder, "instances.json"))
    out = {}
    for ref in refs:
        img = coco.imgs[ref["image_id"]]
        m = empty(img["height"], img["width"])
        if ref["ann_id"] != [-1]:
            for ann in coco.loadAnns(ref["ann_id"]):
                if not ann["iscrowd"]:
                    m |= coco.annToMask(ann).astype(bool)
        out[ref["sample_id"]] = (ref, m, coco)
    return out


def lisa_grefcoco_mask(ref: dict, coco: COCO) -> np.ndarray:
    """LISA's ReferSegDataset path for a gRefCOCO ref: polygons only (`segmentation[0]` a list),
    frPyObjects -> decode -> sum over polygons, OR over the ref's anns."""
    img = coco.imgs[ref["image_id"]]
    m = np.zeros((img["height"], img["width"]), dtype=np.uint8)
    if -1 in ref["ann_id"]:
        return m.astype(bool)
    for a in ref["ann_id"]:
        seg = coco.anns[a]["segmentation"]
        assert isinstance(seg, list) and isinstance(seg[0], list)
        rle = mask_utils.frPyObjects(seg, img["height"], img["width"])
        m = m | np.sum(mask_utils.decode(rle), axis=2).astype(np.uint8)
    return m.astype(bool)


def psalm_mask(rec: dict) -> np.ndarray:
    """PSALM record -> mask: the union of `anns` (polygons or RLE) at image_info's size."""
    h, w = rec["image_info"]["height"], rec["image_info"]["width"]
    m = empty(h, w)
    for ann in rec["anns"]:
        seg = ann["segmentation"]
        if isinstance(seg, list):
            rle = mask_utils.merge(mask_utils.frPyObjects(seg, h, w))
        elif isinstance(seg["counts"], list):
            rle = mask_utils.frPyObjects(seg, h, w)
        else:
            rle = {"size": seg["size"], "counts": seg["counts"].encode()}
        m |= mask_utils.decode(rle).astype(bool)
    return m


def lisa_reason_seg(json_path: str, img: np.ndarray, cv2) -> tuple[np.ndarray, list[str], bool]:
    """LISA's get_mask_from_json: shapes sorted by area, drawn with polylines + fillPoly; "ignore"
    labels are 255, everything else 1."""
    with open(json_path) as fh:
        anno = json.load(fh)
    h, w = img.shape[:2]
    areas = []
    for s in anno["shapes"]:
        tmp = np.zeros((h, w), dtype=np.uint8)
        cv2.polylines(tmp, np.array([s["points"]], dtype=np.int32), True, 1, 1)
        cv2.fillPoly(tmp, np.array([s["points"]], dtype=np.int32), 1)
        areas.append(tmp.sum())
    mask = np.zeros((h, w), dtype=np.uint8)
    for i in np.argsort(areas)[::-1]:
        s = anno["shapes"][i]
        value = 255 if "ignore" in s["label"].lower() else 1
        cv2.polylines(mask, np.array([s["points"]], dtype=np.int32), True, value, 1)
        cv2.fillPoly(mask, np.array([s["points"]], dtype=np.int32), value)
    return mask, anno["text"], anno["is_sentence"]


# --- tests -----------------------------------------------------------------------------------------


def test_rectangles_are_pixel_exact_for_both_rasterisers():
    cv2 = pytest.importorskip("cv2")
    rng = np.random.default_rng(0)
    for h, w, p in ((17, 23, 0.5), (40, 31, 0.15), (5, 9, 0.95), (12, 12, 0.0)):
        m = rng.random((h, w)) < p
        m[3:6, 2:8] = p > 0  # a solid block plus noise: holes, single pixels, long runs
        rle = mask_utils.encode(np.asfortranarray(m.astype(np.uint8)))
        rects = mask_rectangles(rle)
        assert int(((rects[:, 2] - rects[:, 0]) * (rects[:, 3] - rects[:, 1])).sum()) == int(m.sum())  # disjoint
        polys = rectangles_to_coco_polygons(rects)
        coco = np.zeros((h, w), dtype=bool)
        if polys:
            coco = mask_utils.decode(mask_utils.merge(mask_utils.frPyObjects(polys, h, w))).astype(bool)
        assert np.array_equal(coco, m)
        drawn = np.zeros((h, w), dtype=np.uint8)
        for pts in rectangles_to_cv2_points(rects):
            cv2.polylines(drawn, np.array([pts], dtype=np.int32), True, 1, 1)
            cv2.fillPoly(drawn, np.array([pts], dtype=np.int32), 1)
        assert np.array_equal(drawn.astype(bool), m)


def test_grefcoco_refs_and_instances_rebuild_every_mask(build, exported):
    _, m, samples = build
    root = exported["grefcoco"]
    sources = sorted(os.listdir(root))
    assert sources == ["coco_sample", "export.json", "lvis_sample", "paco_sample"]
    seen: dict[str, str] = {}
    kinds = {"no_target": 0, "multi": 0, "rle_source": 0}
    source_files = {s.name: s.annotations for s in resolve_sources(OmegaConf.create(m["config"]))}
    for source in ("coco_sample", "lvis_sample", "paco_sample"):
        refs = grefer_masks(os.path.join(root, source))
        assert len({r["ref_id"] for r, _, _ in refs.values()}) == len(refs)
        assert sum(s["source"] == source for s in samples.values()) == len(refs)
        for sample_id, (ref, mask, coco) in refs.items():
            s = samples[sample_id]
            seen[sample_id] = source
            assert np.array_equal(mask, decode_sample_mask(s["mask"])), sample_id
            assert np.array_equal(lisa_grefcoco_mask(ref, coco), mask), sample_id
            assert ref["image_id"] == s["image_id"] and ref["split"] == "train"
            img = coco.imgs[ref["image_id"]]
            assert ref["file_name"] == img["file_name"] and s["image_uri"].endswith("/" + img["file_name"])
            assert ref["no_target"] == (not s["target_ids"]) == (ref["ann_id"] == [-1])
            if ref["no_target"]:
                kinds["no_target"] += 1
                assert ref["category_id"] == [-1] and not mask.any()
            else:
                assert ref["ann_id"] == s["target_ids"]
                assert ref["category_id"] == [coco.anns[a]["category_id"] for a in ref["ann_id"]]
                kinds["multi"] += len(ref["ann_id"]) > 1
            (sent,) = ref["sentences"]
            assert sent["raw"] == s["instruction"] and ref["sent_ids"] == [sent["sent_id"]]
            assert sent["tokens"] == sent["sent"].split() and sent["sent"] == sent["sent"].lower()
        with open(os.path.join(root, source, "grefcoco", "instances.json")) as fh:
            raw = json.load(fh)
        with open(source_files[source]) as fh:
            src = json.load(fh)
        source_rle_ids = {a["id"] for a in src["annotations"] if isinstance(a["segmentation"], dict)}
        for ann in raw["annotations"]:
            assert "iscrowd" in ann
            if not ann["iscrowd"]:  # polygon mode: what LISA's and PSALM's polygon readers need
                assert isinstance(ann["segmentation"], list) and all(len(p) % 2 == 0 and len(p) >= 6
                                                                      for p in ann["segmentation"])
        kinds["rle_source"] += sum(1 for r, _, _ in refs.values() if set(r["ann_id"]) & source_rle_ids)
    assert set(seen) == set(samples)
    assert kinds["no_target"] > 0 and kinds["multi"] > 0 and kinds["rle_source"] > 0


def test_grefcoco_keeps_colliding_ann_ids_apart(exported):
    """COCO and LVIS number annotations independently: the same id names different objects, which is
    why every source has its own refs + instances pair."""
    root = exported["grefcoco"]
    anns = {}
    for source in ("coco_sample", "lvis_sample"):
        with open(os.path.join(root, source, "grefcoco", "instances.json")) as fh:
            anns[source] = {a["id"]: a for a in json.load(fh)["annotations"]}
    shared = set(anns["coco_sample"]) & set(anns["lvis_sample"])
    assert shared
    assert any(anns["coco_sample"][i]["segmentation"] != anns["lvis_sample"][i]["segmentation"] for i in shared)


def test_psalm_records_rebuild_every_mask(build, exported, tmp_path):
    out, _, samples = build
    for mode, folder in (("polygon", exported["psalm"]), ("rle", str(tmp_path / "psalm_rle"))):
        if mode == "rle":
            assert export_main(["psalm", "--out", folder, "--output", out, "--segmentation", "rle"]) == 0
        with open(os.path.join(folder, "train_psalm.json")) as fh:
            records = json.load(fh)
        assert sorted(r["sample_id"] for r in records) == sorted(samples)
        assert [r["new_img_id"] for r in records] == list(range(len(records)))
        for rec in records:
            s = samples[rec["sample_id"]]
            assert rec["image"] == rec["image_info"]["file_name"] and s["image_uri"].endswith("/" + rec["image"])
            assert rec["image_info"]["id"] == s["image_id"]
            assert [a["id"] for a in rec["anns"]] == s["target_ids"]
            assert all(a["image_id"] == s["image_id"] and len(a["bbox"]) == 4 for a in rec["anns"])
            # PSALM's RefCOCO_dataset joins the sentences' "sent" into its instruction.
            assert "".join(f" {x['sent']}." for x in rec["instruction"]).strip(" .") == \
                " ".join(rec["instruction"][0]["tokens"])
            assert rec["instruction"][0]["raw"] == s["instruction"]
            if mode == "rle":
                assert all(isinstance(a["segmentation"], dict) and isinstance(a["segmentation"]["counts"], str)
                           for a in rec["anns"])
            assert np.array_equal(psalm_mask(rec), decode_sample_mask(s["mask"])), rec["sample_id"]
        assert sum(not r["anns"] for r in records) == sum(not s["target_ids"] for s in samples.values()) > 0


def test_lisa_reason_seg_files_rebuild_every_mask(build, exported):
    cv2 = pytest.importorskip("cv2")
    _, _, samples = build
    root = exported["lisa"]
    images = sorted(glob.glob(os.path.join(root, "train", "*.jpg")))  # what ReasonSegDataset globs
    assert len(images) == len(samples)
    for path in images:
        s = samples[os.path.basename(path)[: -len(".jpg")]]
        assert os.path.realpath(path) == os.path.realpath(s["image_uri"])  # --images link (default)
        img = cv2.imread(path)
        assert img.shape[:2] == (s["height"], s["width"])
        mask, texts, is_sentence = lisa_reason_seg(path.replace(".jpg", ".json"), img, cv2)
        assert texts == [s["instruction"]] and is_sentence is True
        assert set(np.unique(mask)) <= {0, 1}
        assert np.array_equal(mask == 1, decode_sample_mask(s["mask"])), s["sample_id"]
    with open(os.path.join(root, "explanatory", "train.json")) as fh:
        explanations = {e["image"]: e for e in json.load(fh)}
    assert len(explanations) == len(samples)
    for name, e in explanations.items():
        s = samples[name[: -len(".jpg")]]
        assert (e["query"], e["outputs"]) == (s["instruction"], s["answer"])


def test_task_filter_copy_images_and_receipt(build, tmp_path):
    out, m, samples = build
    folder = str(tmp_path / "lisa_parts")
    assert export_main(["lisa", "--out", folder, "--output", out, "--task", "part", "--task", "reasoning",
                        "--images", "copy", "--split", "val"]) == 0
    want = {k for k, s in samples.items() if s["task"] in ("part", "reasoning")}
    got = {os.path.basename(p)[:-5] for p in glob.glob(os.path.join(folder, "val", "*.json"))}
    assert got == want
    one = os.path.join(folder, "val", sorted(want)[0] + ".jpg")
    assert not os.path.islink(one)
    with open(one, "rb") as a, open(samples[sorted(want)[0]]["image_uri"], "rb") as b:
        assert a.read() == b.read()
    with open(os.path.join(folder, "export.json")) as fh:
        receipt = json.load(fh)
    assert receipt["manifest"]["version"] == m["version"] and receipt["samples"] == len(want)
    assert receipt["by_task"] == {t: sum(s["task"] == t for s in samples.values()) for t in ("part", "reasoning")}


def test_changed_annotation_file_stops_the_export(build, tmp_path):
    out, m, samples = build
    sources = resolve_sources(OmegaConf.create(m["config"]))
    coco = next(s for s in sources if s.name == "coco_sample")
    with open(coco.annotations) as fh:
        data = json.load(fh)
    for a in data["annotations"]:  # every object moves to the top-left corner
        if not a.get("iscrowd"):
            a["segmentation"] = [[0.0, 0.0, 4.0, 0.0, 4.0, 4.0, 0.0, 4.0]]
    edited = tmp_path / "coco_edited.json"
    edited.write_text(json.dumps(data))
    coco.annotations = str(edited)
    folder = tmp_path / "refused"
    with pytest.raises(ExportError, match=r"samples do not match their source annotations"):
        export("grefcoco", out, str(folder), sources=sources)
    assert not folder.exists()  # nothing written


def test_cli_errors(build, tmp_path, capsys):
    out, _, _ = build
    assert export_main(["psalm", "--out", str(tmp_path / "a"), "--output", out, "--version", "9"]) == 1
    assert "version 9 not found" in capsys.readouterr().err
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "old.json").write_text("{}")
    # a refusal (nothing written) is exit code 2 in every CLI (docs/reliability.md, "Exit codes"); was 1 here
    assert export_main(["psalm", "--out", str(busy), "--output", out]) == 2
    assert "not empty" in capsys.readouterr().err
    assert export_main(["psalm", "--out", str(busy), "--output", out, "--force"]) == 0
    shutil.rmtree(busy)
