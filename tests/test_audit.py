"""The audit on a real build: sampling, verdict records, the server's refusals over HTTP, the report
(with a crafted verifier version), `manifest show`, a garbage-collected version, and S3 storage."""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import sys
import urllib.error
import urllib.request
from collections import Counter
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from pipelines.cli.audit import main as audit_main
from pipelines.cli.manifest import main as manifest_main
from pipelines.quality.report import compute
from pipelines.quality.sample import draw_sample
from pipelines.quality.store import AuditError, load_sample, read_verdicts
from pipelines.quality.verdicts import VerdictLog
from pipelines.storage.fs import StorageSpec
from schemas.columns import TASKS
from schemas.manifest import Manifest, ShardEntry

pytestmark = pytest.mark.ray
ROOT = Path(__file__).resolve().parents[1]
LOCAL = StorageSpec()


def _manifest(out: str, v: int) -> dict:
    return json.loads((Path(out) / "manifests" / f"v{v:06d}.json").read_text())


def _rows(out: str, v: int, kind: str) -> list[dict]:
    m = _manifest(out, v)
    return [r for s in m["shards"] if s["kind"] == kind for r in pq.read_table(Path(out) / s["path"]).to_pylist()]


def test_sample_is_stratified_seeded_and_complete(audit_build):
    out = audit_build
    a = draw_sample(out, "strat-a", LOCAL, per_task=20, version=2, seed=7, rejects=5)
    b = draw_sample(out, "strat-b", LOCAL, per_task=20, version=2, seed=7, rejects=5)
    c = draw_sample(out, "strat-c", LOCAL, per_task=20, version=2, seed=8, rejects=5)
    assert [i["key"] for i in a["items"]] == [i["key"] for i in b["items"]]
    assert {i["key"] for i in a["items"]} != {i["key"] for i in c["items"]}
    samples, rejects = _rows(out, 2, "samples"), _rows(out, 2, "rejects")
    by_id = {r["sample_id"]: r for r in samples}
    pair_rejects = [r for r in rejects if r["pair_index"] >= 0]
    counts = Counter((i["task"], i["kind"]) for i in a["items"])
    for t in TASKS:
        n_s = sum(r["task"] == t for r in samples)
        n_r = sum(r["task"] == t for r in pair_rejects)
        assert a["population"][t] == {"sample": n_s, "reject": n_r, "verify_failed": 0}
        assert counts[(t, "sample")] == min(20, n_s) and counts[(t, "reject")] == min(5, n_r)
    assert sum(a["population"][t]["reject"] for t in TASKS) > 0
    for it in a["items"]:  # the stored pair is the version's row, field by field
        if it["kind"] == "sample":
            row = by_id[it["key"]]
            cols = ("instruction", "target_ids", "mask")
            assert [it[c] for c in cols] == [row[c] for c in cols]
        else:
            assert it["pair_index"] >= 0 and it["reason"]
    assert len({i["key"] for i in a["items"]}) == len(a["items"])
    with pytest.raises(AuditError, match="already exists"):
        draw_sample(out, "strat-a", LOCAL, per_task=1)


def test_cli_bad_input_is_a_message(audit_build, capsys):
    out = audit_build
    cases = [
        (["sample", "--name", "x1", "--version", "99"], "version 99 not found"),
        (["sample", "--name", "x2", "--per-task", "0"], "nothing to draw"),
        (["sample", "--name", "../evil"], "bad audit name"),
        (["serve", "--name", "missing", "--port", "0"], "no audit 'missing'"),
        (["report", "--name", "missing"], "no audit 'missing'"),
    ]
    for args, msg in cases:
        assert audit_main(["--output", out, *args]) == 1
        err = capsys.readouterr().err
        assert msg in err and "Traceback" not in err, (args, err)
    empty = str(Path(out).parent / "empty")
    assert audit_main(["--output", empty, "sample", "--name", "x"]) == 1
    assert "no committed version" in capsys.readouterr().err


def _free_server(out: str, name: str, auditor: str) -> tuple[subprocess.Popen, str]:
    proc = subprocess.Popen([sys.executable, str(ROOT / "pipelines/cli/audit.py"), "--output", out, "serve",
                             "--name", name, "--auditor", auditor, "--port", "0"], cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    line = proc.stdout.readline()
    assert "http://" in line, (line, proc.stderr.read() if proc.poll() is not None else "")
    return proc, line.split("at ", 1)[1].split()[0].rstrip("/")


def _post(url: str, body: dict) -> tuple[int, dict]:
    req = urllib.request.Request(url, json.dumps(body).encode(), {"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def test_server_refuses_foreign_pairs_second_server_and_double_counting(audit_build):
    out = audit_build
    s = draw_sample(out, "srv", LOCAL, per_task=2)
    keys = [i["key"] for i in s["items"]]
    proc, url = _free_server(out, "srv", "alice")
    try:
        code, body = _post(url + "/api/verdict", {"key": "not-a-pair", "verdict": "y", "vid": "a"})
        assert code == 400 and "not in the sample" in body["error"]
        code, body = _post(url + "/api/verdict", {"key": keys[0], "verdict": "n", "vid": "b"})
        assert code == 400 and "needs a reason" in body["error"]
        for _ in range(3):  # the same verdict resent (lost answers): one record
            code, body = _post(url + "/api/verdict", {"key": keys[0], "verdict": "y", "vid": "c"})
            assert code == 200 and body["record"]["seq"] == 1
        second = subprocess.run([sys.executable, str(ROOT / "pipelines/cli/audit.py"), "--output", out, "serve",
                                 "--name", "srv", "--auditor", "alice", "--port", "0"], cwd=ROOT,
                                capture_output=True, text=True, timeout=60)
        assert second.returncode == 1 and "already being reviewed" in second.stderr
        assert "Traceback" not in second.stderr
        other, url_b = _free_server(out, "srv", "bob")  # another auditor: fine, side by side
        try:
            assert _post(url_b + "/api/verdict", {"key": keys[0], "verdict": "y", "vid": "d"})[0] == 200
        finally:
            other.terminate()
            other.wait(20)
    finally:
        proc.terminate()
        proc.wait(20)
    recs = read_verdicts(out, "srv", LOCAL)
    assert [(r["auditor"], r["seq"], r["key"]) for r in recs] == [("alice", 1, keys[0]), ("bob", 1, keys[0])]
    assert not (Path(out) / "audits/srv/locks/alice.json").exists()  # released on SIGTERM


def test_two_writers_cannot_both_take_a_record_number(audit_build):
    out = audit_build
    s = draw_sample(out, "race", LOCAL, per_task=1)
    k = [i["key"] for i in s["items"]]
    a = VerdictLog(out, "race", "carol", k, LOCAL)
    b = VerdictLog(out, "race", "carol", k, LOCAL)  # e.g. a server started around the lock
    a.give(k[0], "y", vid="1")
    with pytest.raises(AuditError, match="another server"):
        b.give(k[1], "y", vid="2")
    assert [r["key"] for r in read_verdicts(out, "race", LOCAL)] == [k[0]]


def _verifier_version(out: str) -> int:
    """Commit a crafted v3 = v2 whose sample shards carry verify_verdict / verify_score columns."""
    m = Manifest.from_json((Path(out) / "manifests/v000002.json").read_text())
    shards = []
    for s in m.shards:
        if s.kind != "samples":
            shards.append(s)
            continue
        t = pq.read_table(Path(out) / s.path)
        t = t.drop_columns([c for c in ("verify_verdict", "verify_score") if c in t.column_names])
        score = [int(hashlib.sha256(i.encode()).hexdigest()[:4], 16) / 65535 for i in t.column("sample_id").to_pylist()]
        t = t.append_column("verify_score", pa.array(score, pa.float64()))
        t = t.append_column("verify_verdict", pa.array(["pass" if x >= 0.3 else "fail" for x in score]))
        path = s.path.replace(".parquet", "-verified.parquet")
        pq.write_table(t, Path(out) / path)
        shards.append(ShardEntry(path, s.kind, s.task, t.num_rows, (Path(out) / path).stat().st_size, "x", s.batch))
    m.version, m.parent_version, m.shards = 3, 2, shards
    (Path(out) / "manifests/v000003.json").write_text(m.to_json())
    return 3


def test_report_with_two_auditors_and_verifier(audit_build, capsys):
    out = str(Path(audit_build).parent / "verified")
    shutil.copytree(audit_build, out)
    v = _verifier_version(out)
    assert audit_main(["--output", out, "sample", "--name", "ver", "--per-task", "6", "--version", str(v)]) == 0
    s = load_sample(out, "ver", LOCAL)
    assert all(i["verify_verdict"] in ("pass", "fail") for i in s["items"])
    keys = [i["key"] for i in s["items"]]
    alice = VerdictLog(out, "ver", "alice", keys, LOCAL)
    bob = VerdictLog(out, "ver", "bob", keys, LOCAL)
    truth = {i["key"]: i["verify_score"] >= 0.5 for i in s["items"]}  # people agree with high scores
    for j, k in enumerate(keys):
        alice.give(k, "y" if truth[k] else "n", None if truth[k] else "wrong_target", vid=f"a{j}")
        if j % 2 == 0:
            bob.give(k, "y" if truth[k] or j % 4 == 0 else "n", "ambiguous", vid=f"b{j}")
    assert audit_main(["--output", out, "report", "--name", "ver", "--target-precision", "0.99"]) == 0
    text = capsys.readouterr().out
    r = json.loads((Path(out) / "audits/ver/report.json").read_text())
    assert r == {**compute(s, read_verdicts(out, "ver", LOCAL), 0.99)}
    assert r["version"] == 3 and r["auditors"] == {"alice": len(keys), "bob": (len(keys) + 1) // 2}
    assert r["verifier"]["n"] == len(keys) and r["verifier"]["threshold"]["threshold"] >= 0.5
    assert r["agreement"][0]["overlap"] == (len(keys) + 1) // 2
    for t in TASKS:
        assert f"{t:<18}" in text
    assert "verifier vs human" in text and "kappa" in text
    assert (Path(out) / "audits/ver/report.html").read_text().count("data:image/png;base64,") == 2
    assert manifest_main(["--output", out, "show", "3"]) == 0
    shown = capsys.readouterr().out
    assert "audit ver:" in shown and "precision" in shown
    assert manifest_main(["--output", out, "show", "2"]) == 0
    assert "audit ver" not in capsys.readouterr().out


def test_garbage_collected_version(audit_build, capsys):
    out = str(Path(audit_build).parent / "collected")
    shutil.copytree(audit_build, out)
    draw_sample(out, "old", LOCAL, per_task=3, version=1)
    VerdictLog(out, "old", "alice", [i["key"] for i in load_sample(out, "old", LOCAL)["items"]], LOCAL)
    assert manifest_main(["--output", out, "gc", "--keep", "1", "--delete", "--grace-s", "0"]) == 0
    capsys.readouterr()
    assert audit_main(["--output", out, "serve", "--name", "old", "--port", "0"]) == 1
    err = capsys.readouterr().err
    assert "garbage-collected" in err and "Traceback" not in err
    assert audit_main(["--output", out, "report", "--name", "old"]) == 0  # verdicts stay readable
    assert "garbage-collected" in capsys.readouterr().out


@pytest.mark.s3
def test_audit_on_s3(audit_build, s3_bucket, capsys, tmp_path):
    endpoint, bucket = s3_bucket
    import boto3

    client = boto3.client("s3", endpoint_url=endpoint)
    for p in Path(audit_build).rglob("*"):
        if p.is_file() and "audits" not in p.parts:
            client.upload_file(str(p), bucket, f"gv/{p.relative_to(audit_build)}")
    out = f"s3://{bucket}/gv"
    store = StorageSpec(endpoint)
    over = [f"storage.endpoint_url={endpoint}"]
    assert audit_main(["--output", out, "sample", "--name", "s3a", "--per-task", "2", "--rejects", "1", *over]) == 0
    s = load_sample(out, "s3a", store)
    keys = [i["key"] for i in s["items"]]
    log = VerdictLog(out, "s3a", "alice", keys, store)
    log.give(keys[0], "y", vid="1")
    log.give(keys[1], "n", "other", vid="2")
    log.undo(vid="3")
    assert VerdictLog(out, "s3a", "alice", keys, store).current.keys() == {keys[0]}  # resumed from S3
    assert audit_main(["--output", out, "report", "--name", "s3a", *over]) == 0
    listed = {o["Key"] for o in client.list_objects_v2(Bucket=bucket, Prefix="gv/audits/s3a/")["Contents"]}
    assert {f"gv/audits/s3a/verdicts/alice/0000000{i}.json" for i in (1, 2, 3)} <= listed
    assert {"gv/audits/s3a/sample.json", "gv/audits/s3a/report.json", "gv/audits/s3a/report.html"} <= listed
    r = json.loads(client.get_object(Bucket=bucket, Key="gv/audits/s3a/report.json")["Body"].read())
    assert r["verdicts"] == {"correct": 1, "wrong": 0, "skipped": 0, "records": 3}
    assert audit_main(["--output", out, "sample", "--name", "s3a", "--per-task", "2", *over]) == 1
    assert "already exists" in capsys.readouterr().err
    from pipelines.cli.card import main as card_main

    conf = tmp_path / "s3.yaml"
    conf.write_text(f"storage:\n  endpoint_url: {endpoint}\n")
    assert manifest_main(["--output", out, "--config", str(conf), "show"]) == 0
    assert "audit s3a: " in capsys.readouterr().out
    assert card_main(["--output", out, *over]) == 0
    card = client.get_object(Bucket=bucket, Key="gv/cards/v000002/README.md")["Body"].read().decode()
    assert card.startswith("---\n") and "configs:" in card


def test_card_of_an_audited_version(audit_build, tmp_path, capsys):
    import yaml
    from PIL import Image

    from pipelines.cli.card import main as card_main

    out = str(tmp_path / "carded")
    shutil.copytree(audit_build, out)
    s = draw_sample(out, "cardaudit", LOCAL, per_task=4, version=2)
    keys = [i["key"] for i in s["items"]]
    log = VerdictLog(out, "cardaudit", "alice", keys, LOCAL)
    for j, k in enumerate(keys):
        log.give(k, "n" if j % 5 == 0 else "y", "other", vid=str(j))
    assert card_main(["--output", out, "--version", "9"]) == 1
    assert "version 9 not found" in capsys.readouterr().err
    assert card_main(["--output", out, "--version", "2"]) == 0
    capsys.readouterr()
    card = Path(out) / "cards/v000002"
    text = (card / "README.md").read_text()
    head = yaml.safe_load(text.split("---\n")[1])
    m = _manifest(out, 2)
    samples = [sh for sh in m["shards"] if sh["kind"] == "samples"]
    assert head["configs"][0]["data_files"][0]["path"] == [sh["path"] for sh in samples]
    n = sum(sh["rows"] for sh in samples)
    assert head["size_categories"] == ["n<1K"] and n < 1000
    assert {"license", "task_categories"} <= head.keys()
    precision = compute(s, read_verdicts(out, "cardaudit", LOCAL))["overall"]["pooled"]
    assert f"overall precision {precision['p']:.3f}" in text
    for name in ("counts", "lengths", "coverage", "reasons", "audit", "overview"):
        img = Image.open(card / "plots" / f"{name}.png")
        assert img.format == "PNG" and img.width > 300
    assert (card / "card.html").read_text().count("data:image/png;base64,") == 5
    # the YAML configs are what Hugging Face `datasets` reads: the card at the output root loads
    import datasets

    shutil.copy(card / "README.md", Path(out) / "README.md")
    for cfg in head["configs"][1:]:
        ds = datasets.load_dataset(out, cfg["config_name"], split="train", cache_dir=str(tmp_path / "hf"))
        assert len(ds) == sum(sh["rows"] for sh in samples if sh["task"] == cfg["config_name"])


def _verify_failed_version(out: str) -> int:
    """A crafted v4 shaped like a real verifier run: pairs that failed live in `verify_failed` shards,
    out of `samples` (see pipelines/build/verify.py)."""
    v = _verifier_version(out)
    m = Manifest.from_json((Path(out) / f"manifests/v{v:06d}.json").read_text())
    shards = []
    for s in m.shards:
        if s.kind != "samples":
            shards.append(s)
            continue
        t = pq.read_table(Path(out) / s.path)
        passed = pc.equal(t.column("verify_verdict"), "pass")
        for kind, part in (("samples", t.filter(passed)), ("verify_failed", t.filter(pc.invert(passed)))):
            path = s.path.replace(".parquet", f"-{kind}.parquet")
            pq.write_table(part, Path(out) / path)
            shards.append(ShardEntry(path, kind, s.task, part.num_rows, (Path(out) / path).stat().st_size, "x",
                                     s.batch))
    m.version, m.parent_version, m.shards = v + 1, v, shards
    (Path(out) / f"manifests/v{v + 1:06d}.json").write_text(m.to_json())
    return v + 1


def test_verify_failed_pairs_measure_the_verifier_not_the_dataset(audit_build):
    out = str(Path(audit_build).parent / "verify-failed")
    shutil.copytree(audit_build, out)
    v = _verify_failed_version(out)
    assert audit_main(["--output", out, "sample", "--name", "vf", "--per-task", "4", "--verify-failed", "3",
                       "--version", str(v)]) == 0
    s = load_sample(out, "vf", LOCAL)
    kinds = Counter(i["kind"] for i in s["items"])
    assert kinds["verify_failed"] > 0 and kinds["sample"] > 0
    assert all(i["verify_verdict"] == ("fail" if i["kind"] == "verify_failed" else "pass") for i in s["items"])
    keys = [i["key"] for i in s["items"]]
    log = VerdictLog(out, "vf", "alice", keys, LOCAL)
    for j, k in enumerate(keys):
        log.give(k, "y", None, vid=f"v{j}")  # people say every pair is right: the verifier's fails are wrong
    r = compute(s, read_verdicts(out, "vf", LOCAL))
    # The dataset's precision counts only its own pairs; the verifier is measured on both verdicts.
    assert r["overall"]["pooled"]["n"] == kinds["sample"] and r["overall"]["pooled"]["k"] == kinds["sample"]
    assert r["verifier"]["n"] == len(keys)
    assert r["verifier"]["accuracy"] == kinds["sample"] / len(keys)
