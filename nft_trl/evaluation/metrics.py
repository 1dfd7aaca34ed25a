"""Per-problem estimators (avg@k, unbiased pass@k, maj@k), seeded bootstrap intervals over problems, t-intervals.

Every estimator here works on ONE problem (its `n` verifier scores, or its `n` extracted answers); a benchmark score is
the mean of the per-problem values, and its uncertainty comes from resampling problems, not samples: with 30 AIME
problems one problem moves the score by 3.3 points whatever `n` is.

>>> pass_at_k(n=4, c=1, k=2)
0.5
>>> majority_answer(["1/2", "3", "3", "1/2"])
'1/2'
"""

from __future__ import annotations

import math
import re
import statistics
from collections import Counter
from collections.abc import Sequence

import numpy as np


DEFAULT_BOOTSTRAP_RESAMPLES = 1000
DEFAULT_CONFIDENCE = 0.95

# Two-sided 95% quantiles of Student's t, t(0.975, df), for df = 1..30 (beyond 30 the normal quantile is close).
T_975 = (
    12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228,
    2.201, 2.179, 2.160, 2.145, 2.131, 2.120, 2.110, 2.101, 2.093, 2.086,
    2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048, 2.045, 2.042,
)  # fmt: skip
Z_975 = 1.960

_SPACES = re.compile(r"\s+")
_SIZING = re.compile(r"\\(left|right|!|,|;|:)")


def mean_at_k(scores: Sequence[float]) -> float:
    """avg@k: the mean verifier score over the `k = len(scores)` samples of one problem (the paper's headline)."""
    if not scores:
        raise ValueError("mean_at_k needs at least one score.")
    return float(sum(scores)) / len(scores)


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k of Chen et al. (2021): the chance that `k` of `n` samples, `c` of them correct, hold a hit.

    `1 - C(n - c, k) / C(n, k)`, computed as a running product so that large `n` neither overflows nor loses
    precision.
    """
    if not 0 <= c <= n:
        raise ValueError(f"pass_at_k needs 0 <= c <= n, got c={c}, n={n}.")
    if not 1 <= k <= n:
        raise ValueError(f"pass_at_k needs 1 <= k <= n, got k={k}, n={n}.")
    if n - c < k:
        return 1.0
    # C(n-c, k) / C(n, k) = prod_{i = n-c+1}^{n} (1 - k / i)
    return 1.0 - math.prod(1.0 - k / i for i in range(n - c + 1, n + 1))


def voting_key(answer: str | None) -> str | None:
    """The form in which final answers vote for maj@k: no spaces, `$`, `\\left`/`\\right`, thin spaces or final period.

    Only groups answers spelt alike; correctness is always decided by the verifier (`math_verifier`'s own
    `normalize_answer` is its strict-mode match, which also drops `x =`, units and `\\text{}`).
    """
    if answer is None:
        return None
    text = _SIZING.sub("", answer)
    text = _SPACES.sub("", text).replace("$", "").replace("\\dfrac", "\\frac").replace("\\tfrac", "\\frac")
    text = text.rstrip(".")
    return text or None


def majority_answer(answers: Sequence[str | None]) -> str | None:
    """The most frequent non-empty answer; ties go to the answer whose first occurrence comes first.

    Answers are compared as strings (after `voting_key`, which callers apply). `None` (no final answer) does not
    vote. Returns `None` when no sample has an answer. The tie rule depends only on the sample order, which is fixed
    by the seed, so maj@k is deterministic.
    """
    votes = Counter(a for a in answers if a)
    if not votes:
        return None
    first_seen = {}
    for index, answer in enumerate(answers):
        if answer and answer not in first_seen:
            first_seen[answer] = index
    return min(votes, key=lambda a: (-votes[a], first_seen[a]))


def maj_at_k(answers: Sequence[str | None], scores: Sequence[float]) -> float:
    """maj@k for one problem: the verifier score of the majority answer (0.0 when no sample has an answer).

    The score of the first sample that gave the majority answer is used, so maj@k is judged by the same verifier as
    every other metric rather than by a second string comparison against the gold answer.
    """
    if len(answers) != len(scores):
        raise ValueError(f"maj_at_k got {len(answers)} answers but {len(scores)} scores.")
    winner = majority_answer(answers)
    if winner is None:
        return 0.0
    return float(scores[list(answers).index(winner)])


def default_pass_ks(n: int) -> list[int]:
    """The k values reported for pass@k: powers of two below `n`, and `n` itself."""
    ks = []
    k = 1
    while k < n:
        ks.append(k)
        k *= 2
    ks.append(n)
    return ks


def bootstrap_interval(
    values: Sequence[float] | Sequence[Sequence[float]],
    *,
    num_resamples: int = DEFAULT_BOOTSTRAP_RESAMPLES,
    confidence: float = DEFAULT_CONFIDENCE,
    seed: int = 0,
) -> tuple[float, float]:
    """Percentile bootstrap interval of a mean over problems.

    Args:
        values: either one benchmark's per-problem values, shape `(P,)`, or several benchmarks' lists; in the second
            case each benchmark is resampled separately (stratified) and the statistic is the unweighted mean of the
            benchmark means, as in the paper's six-benchmark average.
        num_resamples: bootstrap replicates.
        confidence: coverage of the interval (0.95 gives the 2.5 and 97.5 percentiles).
        seed: seeds `numpy.random.default_rng`; the same inputs and seed give the same interval.

    Returns:
        `(low, high)`; `(nan, nan)` when there is nothing to resample.
    """
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must lie in (0, 1), got {confidence}.")
    groups = [list(values)] if not values or not isinstance(values[0], Sequence) else [list(v) for v in values]
    groups = [np.asarray(g, dtype=float) for g in groups if len(g)]
    if not groups:
        return (math.nan, math.nan)
    rng = np.random.default_rng(seed)
    stats = np.zeros(num_resamples)
    for group in groups:
        idx = rng.integers(0, len(group), size=(num_resamples, len(group)))
        stats += group[idx].mean(axis=1)
    stats /= len(groups)
    tail = (1.0 - confidence) / 2.0
    low, high = np.quantile(stats, [tail, 1.0 - tail])
    return (float(low), float(high))


def t_interval(values: Sequence[float]) -> tuple[float, float]:
    """`(mean, half-width)` of the t-based 95% interval of the mean; the half-width is NaN for fewer than 2 values."""
    mean = statistics.fmean(values)
    if len(values) < 2:
        return mean, math.nan
    df = len(values) - 1
    t = T_975[df - 1] if df <= len(T_975) else Z_975
    return mean, t * statistics.stdev(values) / math.sqrt(len(values))
