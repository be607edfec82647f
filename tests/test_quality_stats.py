"""Audit statistics against hand-computed values: Wilson intervals, Cohen's kappa, the stratified
estimate, the verifier threshold, and the report's labelling rules on a crafted sample."""

from __future__ import annotations

import math

import pytest

from pipelines.quality.report import compute, human_labels
from pipelines.quality.stats import cohen_kappa, stratified, threshold_for_precision, wilson
from pipelines.quality.store import current_verdicts

pytestmark = pytest.mark.unit


def test_wilson_matches_hand_computation():
    # 8/10, z = 1.96: centre = (0.8 + 1.96^2/20) / (1 + 1.96^2/10) = 0.716733,
    # half = 1.96 * sqrt(0.8*0.2/10 + 1.96^2/400) / (1 + 1.96^2/10) = 0.226582
    w = wilson(8, 10, z=1.96)
    assert (round(w.low, 4), round(w.high, 4)) == (0.4902, 0.9433)
    assert w.p == 0.8 and (w.k, w.n) == (8, 10)
    # 0/10 and 10/10: one-sided, [0, z^2/(n+z^2)] and its mirror
    assert wilson(0, 10, 1.96).low == 0.0 and math.isclose(wilson(0, 10, 1.96).high, 1.96**2 / (10 + 1.96**2))
    assert math.isclose(wilson(10, 10, 1.96).low, 10 / (10 + 1.96**2)) and wilson(10, 10, 1.96).high == 1.0
    assert (wilson(0, 0).low, wilson(0, 0).high, wilson(0, 0).p) == (0.0, 1.0, None)
    # the interval always contains p: all-correct gives exactly 1 (rounding gave 0.9999999999999999 for
    # n = 10, 13, 25, ... and matplotlib refused the negative error bar of the report's plot)
    for n in range(1, 500):
        assert wilson(n, n).high == 1.0 and wilson(0, n).low == 0.0
        assert all(w.low <= w.p <= w.high for w in (wilson(k, n) for k in range(0, n + 1, 7)))
    with pytest.raises(ValueError):
        wilson(3, 2)


def test_cohen_kappa_matches_hand_computation():
    # 50 items: both yes 20, a yes / b no 5, a no / b yes 10, both no 15.
    # po = 35/50 = 0.7; pe = 0.5*0.6 + 0.5*0.4 = 0.5; kappa = (0.7 - 0.5) / (1 - 0.5) = 0.4
    a = ["y"] * 20 + ["y"] * 5 + ["n"] * 10 + ["n"] * 15
    b = ["y"] * 20 + ["n"] * 5 + ["y"] * 10 + ["n"] * 15
    assert math.isclose(cohen_kappa(a, b), 0.4)
    assert cohen_kappa(a, a) == 1.0
    assert cohen_kappa([], []) is None
    assert cohen_kappa(["y", "y"], ["y", "y"]) == 1.0  # one label throughout: pe = 1
    assert math.isclose(cohen_kappa(["y", "n"], ["n", "y"]), -1.0)


def test_stratified_estimate():
    # two strata: 90/100 on a task of 1000 pairs, 40/50 on a task of 3000 -> 0.25*0.9 + 0.75*0.8 = 0.825
    s = stratified({"a": (90, 100), "b": (40, 50), "c": (0, 0)}, {"a": 1000, "b": 3000, "c": 4000})
    assert math.isclose(s["p"], 0.825)
    # interval: the weighted Wilson bounds of the strata
    assert math.isclose(s["low"], 0.25 * wilson(90, 100).low + 0.75 * wilson(40, 50).low)
    assert math.isclose(s["high"], 0.25 * wilson(90, 100).high + 0.75 * wilson(40, 50).high)
    assert math.isclose(s["covered"], 0.5)  # task c has no verdicts: half of the version is covered
    # all-correct strata don't collapse to [1, 1] (the normal interval did): 4/4 in two tasks
    s = stratified({"a": (4, 4), "b": (4, 4)}, {"a": 10, "b": 30})
    assert s["p"] == 1.0 and math.isclose(s["low"], wilson(4, 4).low) and s["low"] < 0.6


def test_threshold_for_precision():
    scores = [0.9, 0.8, 0.8, 0.7, 0.6, 0.5]
    correct = [True, True, False, True, False, False]
    # >= 0.9: 1/1; >= 0.8: 2/3; >= 0.7: 3/4 = 0.75; >= 0.6: 3/5; >= 0.5: 3/6
    assert threshold_for_precision(scores, correct, 0.75) == {"threshold": 0.7, "precision": 0.75, "kept": 4, "of": 6}
    assert threshold_for_precision(scores, correct, 1.0)["threshold"] == 0.9
    assert threshold_for_precision([0.5], [False], 0.9) is None


def _rec(auditor, seq, key, verdict, reason=None):
    return {"auditor": auditor, "seq": seq, "key": key, "verdict": verdict, "reason": reason}


def test_report_labels_undo_skip_tie_and_verifier():
    items = [{"key": f"k{i}", "kind": "sample", "task": "reasoning", "verify_verdict": v, "verify_score": s}
             for i, (v, s) in enumerate([("pass", 0.9), ("pass", 0.8), ("fail", 0.2), (None, None)])]
    items.append({"key": "r0", "kind": "reject", "task": "reasoning", "verify_verdict": None, "verify_score": None})
    sample = {"name": "t", "version": 3, "items": items,
              "population": {"reasoning": {"sample": 40, "reject": 10}}}
    records = [
        _rec("alice", 1, "k0", "y"), _rec("alice", 2, "k1", "n", "wrong_target"), _rec("alice", 3, "k1", "undo"),
        _rec("alice", 4, "k1", "y"), _rec("alice", 5, "k2", "n", "ambiguous"), _rec("alice", 6, "k3", "s"),
        _rec("alice", 7, "r0", "y"),
        _rec("bob", 1, "k0", "y"), _rec("bob", 2, "k1", "n", "incomplete_mask"), _rec("bob", 3, "k2", "n", "other"),
    ]
    labels = human_labels(items, current_verdicts(records))
    # k1: alice y (after undo), bob n -> tie -> wrong; k3 only skipped -> unlabelled
    assert labels == {"k0": True, "k1": False, "k2": False, "r0": True}
    r = compute(sample, records)
    p = r["precision"]["reasoning"]
    assert (p["k"], p["n"]) == (1, 3)
    assert r["verdicts"] == {"correct": 4, "wrong": 3, "skipped": 1, "records": 10}
    assert r["wrong_reasons"]["all"] == {"ambiguous": 1, "incomplete_mask": 1, "other": 1}
    fr = r["false_rejects"]["reasoning"]
    assert (fr["k"], fr["n"], fr["rejects"], fr["estimate"]) == (1, 1, 10, 10.0)
    [ag] = r["agreement"]
    # overlap k0 (y,y), k1 (y,n), k2 (n,n): po = 2/3; pe = (2/3)(1/3) + (1/3)(2/3) = 4/9; kappa = (2/9)/(5/9)
    assert ag["overlap"] == 3 and math.isclose(ag["kappa"], 0.4)
    v = r["verifier"]
    # k0 pass/correct, k1 pass/wrong, k2 fail/wrong: accuracy 2/3; precision on pass 1/2
    assert v["n"] == 3 and math.isclose(v["accuracy"], 2 / 3)
    assert (v["precision_on_accept"]["k"], v["precision_on_accept"]["n"]) == (1, 2)
    assert v["threshold"] == {"threshold": 0.9, "precision": 1.0, "kept": 1, "of": 3}
    # kappa of verifier vs human: labels (T,T,F) vs (T,F,F): po 2/3, pe = (2/3)(1/3)+(1/3)(2/3) = 4/9 -> 0.4
    assert math.isclose(v["kappa"], 0.4)
