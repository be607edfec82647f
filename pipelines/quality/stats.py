"""Pure statistics of an audit: Wilson intervals, Cohen's kappa, stratified precision, verifier
thresholds. No I/O; every function is checked against hand-computed values in tests/test_quality_stats.py.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Mapping, Sequence

Z95 = 1.959963984540054  # two-sided 95 % normal quantile


@dataclass(frozen=True)
class Interval:
    """A proportion k/n with its confidence interval (low, high)."""

    k: int
    n: int
    low: float
    high: float

    @property
    def p(self) -> float | None:
        return self.k / self.n if self.n else None

    def as_dict(self) -> dict[str, float | int | None]:
        return {"k": self.k, "n": self.n, "p": self.p, "low": self.low, "high": self.high}


def wilson(k: int, n: int, z: float = Z95) -> Interval:
    """Wilson score interval of k successes in n trials. Why Wilson and not k/n +- z*se: it stays
    inside [0, 1] and keeps its coverage at p near 1 (precision is usually near 1) and small n.
    n = 0 gives the uninformative [0, 1]."""
    if n < 0 or k < 0 or k > n:
        raise ValueError(f"need 0 <= k <= n, got k={k}, n={n}")
    if n == 0:
        return Interval(0, 0, 0.0, 1.0)
    p = k / n
    z2 = z * z
    centre = (p + z2 / (2 * n)) / (1 + z2 / n)
    half = z * math.sqrt(p * (1 - p) / n + z2 / (4 * n * n)) / (1 + z2 / n)
    # k = 0 and k = n: the bound is exactly 0 / 1; rounding would leave it 1e-16 inside, i.e. p outside
    low = 0.0 if k == 0 else max(0.0, centre - half)
    high = 1.0 if k == n else min(1.0, centre + half)
    return Interval(k, n, low, high)


def cohen_kappa(a: Sequence[object], b: Sequence[object]) -> float | None:
    """Cohen's kappa of two raters' labels on the same items (any label set).

    kappa = (po - pe) / (1 - pe). None when there are no items; 1.0 when both raters used one and the
    same label throughout (pe = 1: perfect but uninformative agreement)."""
    if len(a) != len(b):
        raise ValueError("both raters must label the same items")
    n = len(a)
    if n == 0:
        return None
    po = sum(x == y for x, y in zip(a, b, strict=True)) / n
    labels = set(a) | set(b)
    pe = sum((sum(x == lab for x in a) / n) * (sum(y == lab for y in b) / n) for lab in labels)
    if pe >= 1.0:
        return 1.0 if po >= 1.0 else 0.0
    return (po - pe) / (1 - pe)


def stratified(strata: Mapping[str, tuple[int, int]], sizes: Mapping[str, int], z: float = Z95) -> dict:
    """Precision of the whole version from per-stratum samples: sum_t w_t * p_t with w_t = N_t / N
    (N_t = stratum size in the version). Interval: sum_t w_t * (each stratum's Wilson bounds). Why not
    the textbook normal interval p +- z sqrt(sum_t w_t^2 p_t (1 - p_t) / n_t): a stratum judged 100 %
    correct contributes zero variance, so 4/4 in every task gave [1, 1]. The weighted Wilson bounds
    are conservative (every stratum at its own bound at once) and never collapse. Strata without
    judged items are left out with their weight: `covered` is the share of the version estimated."""
    used = {t: kn for t, kn in strata.items() if kn[1] > 0 and sizes.get(t, 0) > 0}
    total = sum(sizes[t] for t in used)
    if not used or total == 0:
        return {"p": None, "low": 0.0, "high": 1.0, "covered": 0.0}
    bounds = {t: wilson(k, n, z) for t, (k, n) in used.items()}
    p = sum(sizes[t] / total * k / n for t, (k, n) in used.items())
    low = sum(sizes[t] / total * b.low for t, b in bounds.items())
    high = sum(sizes[t] / total * b.high for t, b in bounds.items())
    covered = total / max(1, sum(sizes.values()))
    return {"p": p, "low": low, "high": high, "covered": covered}


def threshold_for_precision(scores: Sequence[float], correct: Sequence[bool], target: float) -> dict | None:
    """The lowest verifier-score threshold t such that the human precision of the items with
    score >= t is at least `target` (lowest = keeps the most pairs). None when no threshold reaches it.

    Returns {"threshold", "precision", "kept", "of"}; "kept" items have score >= threshold."""
    if len(scores) != len(correct):
        raise ValueError("scores and labels differ in length")
    pairs = sorted(zip(scores, correct, strict=True), key=lambda sc: -sc[0])
    best = None
    good = 0
    for i, (s, ok) in enumerate(pairs):
        good += bool(ok)
        # a threshold must keep every item with the same score: only cut after the last of a run
        if i + 1 < len(pairs) and pairs[i + 1][0] == s:
            continue
        if good / (i + 1) >= target:
            best = {"threshold": s, "precision": good / (i + 1), "kept": i + 1, "of": len(pairs)}
    return best
