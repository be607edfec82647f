"""export_prompts.py: one line per distinct request (its units listed), with messages, schema and the
id map."""

from __future__ import annotations

import json

from pipelines.cli.export_prompts import main as export_main
from pipelines.sources.sample_data import ensure_sample_dataset


def _lines(path) -> list[dict]:
    return [json.loads(line) for line in open(path)]


def test_export_prompts_lines_match_the_annotations(sample_dir, tmp_path):
    out = tmp_path / "prompts.jsonl"
    rc = export_main([f"data.sample.dir={sample_dir}", f"output.uri={tmp_path / 'o'}", "--out", str(out)])
    assert rc == 0
    lines = _lines(out)
    keys = [u["gen_key"] for x in lines for u in x["units"]]
    assert len(keys) == len(set(keys)) > 0
    sources = {s["name"]: json.load(open(s["annotations"])) for s in ensure_sample_dataset(str(sample_dir))}
    tasks = set()
    for x in lines:
        tasks.add(x["task"])
        data = sources[x["source"]]
        anns = {a["id"]: a for a in data["annotations"] if a["image_id"] == x["image_id"]}
        # The id map names exactly this image's annotations, local ids 1..K.
        assert sorted(o["ann_id"] for o in x["objects"]) == sorted(anns)
        assert [o["id"] for o in x["objects"]] == list(range(1, len(anns) + 1))
        schema = x["json_schema"]
        item = schema["properties"]["pairs"]["items"]["properties"]
        enum = item["target_ids"]["items"].get("enum", [])
        assert set(enum) <= {o["id"] for o in x["objects"]}
        # Vision mode: the image is referenced by uri (not inlined) after the shared text prefix.
        last = x["messages"][-1]["content"]
        assert last[0]["type"] == "text" and last[-1]["type"] == "image_url"
        assert last[-1]["image_url"]["url"] == x["image_uri"]
        assert x["messages"][0]["role"] == "system"
    assert tasks == {"hallucination", "multi_object", "reasoning", "multi_granularity", "part"}


def test_export_only_what_the_next_build_generates(sample_dir, tmp_path, ray_session):
    from pipelines.build_groundv import main as build_main

    out_dir = tmp_path / "o"
    assert build_main([f"data.sample.dir={sample_dir}", f"output.uri={out_dir}"]) == 0
    todo = tmp_path / "todo.jsonl"
    every = tmp_path / "all.jsonl"
    assert export_main([f"data.sample.dir={sample_dir}", f"output.uri={out_dir}", "--out", str(todo)]) == 0
    assert export_main([f"data.sample.dir={sample_dir}", f"output.uri={out_dir}", "--out", str(every), "--all"]) == 0
    assert _lines(todo) == []
    assert len(_lines(every)) > 0


def test_one_line_per_distinct_request(sample_dir, tmp_path):
    """The COCO and LVIS records of one image with the same object table are one request: one line
    listing both units, so an external batch job pays for it once (fails on the per-unit export)."""
    out = tmp_path / "prompts.jsonl"
    base = [f"data.sample.dir={sample_dir}", f"output.uri={tmp_path / 'o'}", "teacher.backend=replay",
            "teacher.replay_source=ext-1"]
    assert export_main([*base, "--out", str(out)]) == 0
    lines = _lines(out)
    request_keys = [x["request_key"] for x in lines]
    assert len(request_keys) == len(set(request_keys))  # no request twice
    units = [u for x in lines for u in x["units"]]
    assert len({u["gen_key"] for u in units}) == len(units) == 228  # every planned unit, once
    assert len(lines) == 136 < len(units)  # 92 units share an identical request on this sample
    sources = {s["name"]: json.load(open(s["annotations"])) for s in ensure_sample_dataset(str(sample_dir))}

    def seen(u: dict) -> tuple:
        """What the teacher sees of a unit's image, from the annotation file alone: the file and
        its objects' boxes."""
        data = sources[u["source"]]
        img = next(i for i in data["images"] if i["id"] == u["image_id"])
        anns = sorted((a for a in data["annotations"] if a["image_id"] == u["image_id"]), key=lambda a: a["id"])
        name = (img.get("file_name") or img["coco_url"]).rsplit("/", 1)[-1]  # LVIS names it by coco_url
        return name, sorted([round(v) for v in a["bbox"]] for a in anns)

    shared = [x for x in lines if len(x["units"]) > 1]
    assert shared
    for x in shared:
        assert x["gen_key"] == x["units"][0]["gen_key"]
        assert len({u["source"] for u in x["units"]}) == len(x["units"])  # records of one image, one per source
        first = seen(x["units"][0])
        assert all(seen(u) == first for u in x["units"])
