"""export_prompts.py: one line per planned unit, with messages, schema and the id map."""

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
    keys = [x["gen_key"] for x in lines]
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
