"""The audit report: precision per task and overall with Wilson intervals, why pairs were wrong, the
filters' false-reject estimate, agreement between auditors (Cohen's kappa) and between the verifier
and people. `compute` is pure (sample + verdict records in, a dict out); `render_text` prints it.

Label of a pair: the majority of its y/n verdicts (skips don't count); a tie counts as wrong, so a
disputed pair never raises precision.
"""

from __future__ import annotations

import itertools
from collections import Counter
from typing import Any

from pipelines.quality.sample import KIND_REJECT, KIND_SAMPLE
from pipelines.quality.stats import cohen_kappa, stratified, threshold_for_precision, wilson
from pipelines.quality.store import current_verdicts
from schemas.columns import TASKS

REPORT_FORMAT = 1


def human_labels(items: list[dict[str, Any]], current: dict[str, dict[str, dict[str, Any]]]) -> dict[str, bool]:
    """key -> True (correct) / False (wrong) by majority of y/n verdicts (tie -> False)."""
    votes: dict[str, list[bool]] = {}
    for by_key in current.values():
        for key, rec in by_key.items():
            if rec["verdict"] in ("y", "n"):
                votes.setdefault(key, []).append(rec["verdict"] == "y")
    keys = {it["key"] for it in items}
    return {k: sum(v) * 2 > len(v) for k, v in votes.items() if k in keys}


def _precision(items: list[dict[str, Any]], labels: dict[str, bool], kind: str) -> dict[str, tuple[int, int]]:
    out: dict[str, tuple[int, int]] = {}
    for t in TASKS:
        judged = [labels[it["key"]] for it in items if it["kind"] == kind and it["task"] == t and it["key"] in labels]
        out[t] = (sum(judged), len(judged))
    return out


def _reasons(items: list[dict[str, Any]], current: dict[str, dict[str, dict[str, Any]]]) -> dict[str, dict[str, int]]:
    task_of = {it["key"]: it["task"] for it in items if it["kind"] == KIND_SAMPLE}
    out: dict[str, Counter] = {"all": Counter()}
    for by_key in current.values():
        for key, rec in by_key.items():
            if rec["verdict"] == "n" and key in task_of:
                out.setdefault(task_of[key], Counter())[rec["reason"]] += 1
                out["all"][rec["reason"]] += 1
    return {t: dict(c.most_common()) for t, c in out.items()}


def _agreement(current: dict[str, dict[str, dict[str, Any]]]) -> list[dict[str, Any]]:
    out = []
    for a, b in itertools.combinations(sorted(current), 2):
        common = sorted(k for k in current[a].keys() & current[b].keys()
                        if current[a][k]["verdict"] in ("y", "n") and current[b][k]["verdict"] in ("y", "n"))
        la = [current[a][k]["verdict"] for k in common]
        lb = [current[b][k]["verdict"] for k in common]
        agree = sum(x == y for x, y in zip(la, lb, strict=True))
        out.append({"auditors": [a, b], "overlap": len(common), "agreement": agree / len(common) if common else None,
                    "kappa": cohen_kappa(la, lb)})
    return out


def _verifier(items: list[dict[str, Any]], labels: dict[str, bool], target: float) -> dict[str, Any] | None:
    rows = [(it, labels[it["key"]]) for it in items
            if it["key"] in labels and it.get("verify_verdict") in ("pass", "fail")]
    if not rows:
        return None
    ver = [it["verify_verdict"] == "pass" for it, _ in rows]
    hum = [h for _, h in rows]
    accepted = [h for v, h in zip(ver, hum, strict=True) if v]
    scored = [(float(it["verify_score"]), h) for it, h in rows if it.get("verify_score") is not None]
    thr = threshold_for_precision([s for s, _ in scored], [h for _, h in scored], target) if scored else None
    return {"n": len(rows), "accuracy": sum(v == h for v, h in zip(ver, hum, strict=True)) / len(rows),
            "kappa": cohen_kappa(ver, hum), "precision_on_accept": wilson(sum(accepted), len(accepted)).as_dict(),
            "human_precision_all": wilson(sum(hum), len(hum)).as_dict(),
            "target_precision": target, "threshold": thr, "scored": len(scored)}


def compute(sample: dict[str, Any], records: list[dict[str, Any]], target_precision: float = 0.95) -> dict[str, Any]:
    items = sample["items"]
    current = current_verdicts(records)
    labels = human_labels(items, current)
    prec = _precision(items, labels, KIND_SAMPLE)
    sizes = {t: sample["population"].get(t, {}).get(KIND_SAMPLE, 0) for t in TASKS}
    k_all, n_all = sum(k for k, _ in prec.values()), sum(n for _, n in prec.values())
    rej = _precision(items, labels, KIND_REJECT)
    false_rejects = {}
    for t, (k, n) in rej.items():
        pop = sample["population"].get(t, {}).get(KIND_REJECT, 0)
        w = wilson(k, n)
        false_rejects[t] = {**w.as_dict(), "rejects": pop,
                            "estimate": None if w.p is None else round(w.p * pop, 1),
                            "estimate_low": round(w.low * pop, 1), "estimate_high": round(w.high * pop, 1)}
    counts = Counter(r["verdict"] for by_key in current.values() for r in by_key.values())
    return {
        "format": REPORT_FORMAT, "audit": sample["name"], "version": sample["version"],
        "build_id": sample.get("build_id"), "sample_size": len(items),
        "auditors": {a: len(v) for a, v in sorted(current.items())},
        "verdicts": {"correct": counts["y"], "wrong": counts["n"], "skipped": counts["s"], "records": len(records)},
        "precision": {t: {**wilson(k, n).as_dict(), "population": sizes[t]} for t, (k, n) in prec.items()},
        "overall": {"pooled": wilson(k_all, n_all).as_dict(), "weighted": stratified(prec, sizes)},
        "wrong_reasons": _reasons(items, current),
        "false_rejects": false_rejects if any(n for _, n in rej.values()) else None,
        "agreement": _agreement(current),
        "verifier": _verifier(items, labels, target_precision),
    }


def _ci(d: dict[str, Any]) -> str:
    if not d.get("n"):
        return "-"
    return f"{d['p']:.3f} [{d['low']:.3f}, {d['high']:.3f}] ({d['k']}/{d['n']})"


def render_text(r: dict[str, Any]) -> str:
    lines = [f"audit {r['audit']} of version {r['version']}: {r['sample_size']} pairs, auditors "
             + (", ".join(f"{a} ({n})" for a, n in r["auditors"].items()) or "none yet"),
             f"{'task':<18} {'precision [Wilson 95%] (correct/judged)':<44} {'pairs in version':>16}"]
    for t, d in r["precision"].items():
        lines.append(f"{t:<18} {_ci(d):<44} {d['population']:>16}")
    w = r["overall"]["weighted"]
    lines.append(f"{'overall (pooled)':<18} {_ci(r['overall']['pooled'])}")
    if w["p"] is not None:
        lines.append(f"{'overall (by size)':<18} {w['p']:.3f} [{w['low']:.3f}, {w['high']:.3f}] "
                     f"(tasks weighted by their size, conservative interval; covers {w['covered']:.0%} of the version)")
    if r["wrong_reasons"].get("all"):
        lines.append("wrong: " + ", ".join(f"{k} {v}" for k, v in r["wrong_reasons"]["all"].items()))
    if r["false_rejects"]:
        for t, d in r["false_rejects"].items():
            if d["n"]:
                lines.append(f"false rejects {t}: {_ci(d)} of sampled rejects were fine -> ~{d['estimate']} "
                             f"[{d['estimate_low']}, {d['estimate_high']}] of {d['rejects']} rejects")
    for a in r["agreement"]:
        kap = "-" if a["kappa"] is None else f"{a['kappa']:.3f}"
        lines.append(f"agreement {a['auditors'][0]} vs {a['auditors'][1]}: {a['overlap']} pairs, kappa {kap}")
    v = r["verifier"]
    if v:
        thr = v["threshold"]
        lines.append(f"verifier vs human ({v['n']} pairs): accuracy {v['accuracy']:.3f}, kappa "
                     f"{'-' if v['kappa'] is None else format(v['kappa'], '.3f')}, precision on pass "
                     f"{_ci(v['precision_on_accept'])}")
        lines.append(f"  score threshold for precision >= {v['target_precision']}: "
                     + (f"{thr['threshold']:.3f} (precision {thr['precision']:.3f}, keeps {thr['kept']}/{thr['of']})"
                        if thr else "none reaches it" if v["scored"] else "no scores"))
    if r.get("warning"):
        lines.append("warning: " + r["warning"])
    return "\n".join(lines)


# ------------------------------------------------------------------------------------------ I/O
def report_html(r: dict[str, Any]) -> str:
    from pipelines.quality import plots  # matplotlib only when a page is written

    fig, ax = plots.figure()
    plots.precision(ax, r["precision"])
    images = [("precision per task with Wilson 95 % intervals", plots.png(fig))]
    fig, ax = plots.figure(5.0, 2.8)
    plots.bars(ax, r["wrong_reasons"].get("all", {}), "why pairs were judged wrong")
    images.append(("wrong-reason breakdown", plots.png(fig)))
    return plots.page(f"Ground-V audit {r['audit']} (version {r['version']})", [("summary", render_text(r))], images)


def write_report(output: str, name: str, store: Any,
                 target_precision: float = 0.95) -> tuple[dict[str, Any], list[str]]:
    """Compute the report of audit `name` and write report.json + report.html next to its sample."""
    import json

    from pipelines.quality.sample import collected_shards
    from pipelines.quality.store import audit_uri, load_sample, read_verdicts
    from pipelines.storage import fs as storage
    from pipelines.storage.output import list_versions

    sample = load_sample(output, name, store)
    r = compute(sample, read_verdicts(output, name, store), target_precision)
    if int(sample["version"]) not in list_versions(output, store):
        r["warning"] = f"version {sample['version']} is no longer under {output}"
    elif gone := collected_shards(output, sample, store):
        r["warning"] = (f"version {sample['version']} was garbage-collected since this sample was drawn "
                        f"({len(gone)} shards gone): the verdicts describe pairs no longer in the output")
    base = audit_uri(output, name)
    paths = [storage.join(base, "report.json"), storage.join(base, "report.html")]
    storage.write_bytes(paths[0], json.dumps(r, indent=2, sort_keys=True).encode(), store)
    storage.write_bytes(paths[1], report_html(r).encode(), store)
    return r, paths


def audits_of_version(output: str, version: int, store: Any) -> list[str]:
    """One line per audit of `version` (for `manifest.py show`): size, and its latest report's precision."""
    import json

    from pipelines.quality.store import audit_uri, list_audits, read_json, sample_uri
    from pipelines.storage import fs as storage

    lines = []
    for name in list_audits(output, store):
        try:
            sample = read_json(sample_uri(output, name), store)
        except (FileNotFoundError, ValueError):
            continue
        if int(sample.get("version", -1)) != version:
            continue
        line = f"audit {name}: {len(sample['items'])} pairs drawn {sample.get('created_at')}"
        try:
            r = json.loads(storage.read_bytes(storage.join(audit_uri(output, name), "report.json"), store))
            pooled = r["overall"]["pooled"]
            line += (f"; precision {pooled['p']:.3f} [{pooled['low']:.3f}, {pooled['high']:.3f}] "
                     f"({pooled['k']}/{pooled['n']})" if pooled.get("n") else "; no verdicts in its report")
        except (FileNotFoundError, ValueError, KeyError):
            line += "; no report yet"
        lines.append(line)
    return lines
