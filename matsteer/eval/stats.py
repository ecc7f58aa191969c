"""Uncertainty for comparisons: bootstraps over questions (and seeds), mean ± std over seeds, and the smallest
difference a test set of a given size can detect.

The paper reports single numbers without variance; these helpers let the workbench say how much of a
difference between two methods on the same test items could be resampling noise.

* :func:`paired_bootstrap_ci`: one score per item and method, items resampled (paired).
* :func:`seed_question_bootstrap` / :func:`seed_question_bootstrap_tasks`: per-seed per-question scores
  ``[seeds, n]``; each resample draws the questions (shared by both methods: paired) *and* each method's
  seeds, so the interval covers both the finite test set and the training-seed spread. Averaging seeds away
  before resampling (the old way) ignores the second.
* :func:`cluster_bootstrap` / :func:`cluster_bootstrap_tasks`: the comparison's bootstrap. Test questions are
  clustered (BBQ templates, TruthfulQA categories, ToxiGen target groups) and two seeded methods share a trained
  steerer per seed, so each resample draws whole clusters (paired across methods) and seeds (the same draw for
  both methods); statistics may be ratios of sums (bias scores, rates among some answers).
* :func:`holm`: Holm's step-down adjustment across a family of comparisons.
* :func:`minimum_detectable_effect`: the difference a two-sided test at level ``alpha`` would detect with
  probability ``power`` given the test size and the per-question variance; :func:`detectable_from_se` the same
  from the standard error of an estimated difference (the cluster bootstrap's).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from statistics import NormalDist
from typing import Any

import numpy as np

from matsteer.errors import ConfigError, DataError

__all__ = [
    "BootstrapCI",
    "ClusterCI",
    "MeanStd",
    "SeedQuestionCI",
    "cluster_bootstrap",
    "cluster_bootstrap_tasks",
    "cluster_codes",
    "detectable_from_se",
    "holm",
    "mean_std",
    "minimum_detectable_effect",
    "paired_bootstrap_ci",
    "seed_question_bootstrap",
    "seed_question_bootstrap_tasks",
]

# Bootstrap draws are generated in blocks of at most this many indices (memory bound). The block
# size depends only on n, so results depend only on (a, b, n_boot, seed).
_BLOCK_INDICES = 2_000_000


@dataclass(frozen=True)
class _Interval:
    """A mean difference and its interval ``[low, high]``; the fields both bootstraps share."""

    mean_diff: float
    low: float
    high: float

    def excludes_zero(self) -> bool:
        """True when the whole interval lies strictly on one side of 0."""
        return self.low > 0 or self.high < 0


@dataclass(frozen=True)
class BootstrapCI(_Interval):
    """Mean of ``a − b`` over items and its percentile bootstrap interval ``[low, high]`` (level ``1 − alpha``)."""

    n: int
    n_boot: int
    alpha: float
    seed: int


@dataclass(frozen=True)
class MeanStd:
    """Mean and sample standard deviation (ddof = 1; 0 for a single value) of ``n`` values."""

    mean: float
    std: float
    n: int

    def __str__(self) -> str:
        return f"{self.mean:.4g} ± {self.std:.2g} (n={self.n})"


def _vector(x: Sequence[float] | np.ndarray, name: str) -> np.ndarray:
    try:
        if hasattr(x, "detach"):  # a torch tensor
            x = x.detach().cpu().numpy()
        arr = np.asarray(x, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise DataError(f"{name} must be a sequence of numbers: {exc}") from None
    if arr.ndim != 1:
        raise DataError(f"{name} must be 1-D (one score per item), got shape {arr.shape}.")
    if not np.isfinite(arr).all():
        raise DataError(f"{name} contains NaN or inf.")
    return arr


def paired_bootstrap_ci(
    a: Sequence[float] | np.ndarray,
    b: Sequence[float] | np.ndarray,
    n_boot: int = 10000,
    alpha: float = 0.05,
    seed: int = 0,
) -> BootstrapCI:
    """Paired percentile bootstrap of ``mean(a − b)``.

    a, b: ``[n]`` per-item scores of two methods on the *same* items (e.g. MC2 per question, 0/1
    correctness). Items are resampled with replacement ``n_boot`` times, the same indices for both
    methods (that is what makes it paired), and the interval is the ``alpha/2`` and ``1 − alpha/2``
    quantiles (numpy's default linear interpolation) of the resampled mean differences.
    Deterministic: numpy ``Generator(PCG64(seed))``, so the same inputs and seed give identical numbers.
    """
    x, y = _vector(a, "a"), _vector(b, "b")
    if x.shape != y.shape:
        raise DataError(f"paired scores need the same items: a has {x.size}, b has {y.size}.")
    if x.size == 0:
        raise DataError("paired_bootstrap_ci needs at least one item.")
    if isinstance(n_boot, bool) or int(n_boot) != n_boot or n_boot < 1:
        raise ConfigError(f"n_boot must be a positive integer, got {n_boot!r}.")
    if not 0.0 < alpha < 1.0:
        raise ConfigError(f"alpha must be in (0, 1), got {alpha!r}.")
    n_boot = int(n_boot)
    diff = x - y
    n = diff.size
    rng = np.random.Generator(np.random.PCG64(seed))
    rows = max(1, _BLOCK_INDICES // n)
    means = np.empty(n_boot, dtype=np.float64)
    for start in range(0, n_boot, rows):
        stop = min(n_boot, start + rows)
        idx = rng.integers(0, n, size=(stop - start, n))
        means[start:stop] = diff[idx].mean(axis=1)
    low, high = np.quantile(means, [alpha / 2, 1 - alpha / 2])
    return BootstrapCI(float(diff.mean()), float(low), float(high), n, n_boot, float(alpha), int(seed))


def mean_std(values: Sequence[float] | np.ndarray) -> MeanStd:
    """Mean and sample std (ddof = 1) of per-seed results; std is 0.0 for a single value."""
    arr = _vector(values, "values")
    if arr.size == 0:
        raise DataError("mean_std needs at least one value.")
    std = float(arr.std(ddof=1)) if arr.size > 1 else 0.0
    return MeanStd(float(arr.mean()), std if math.isfinite(std) else 0.0, int(arr.size))


# ---------------------------------------------------------------------------------------------------------------
# Bootstrap over questions and seeds


@dataclass(frozen=True)
class SeedQuestionCI(_Interval):
    """``mean(a) − mean(b)`` (or ``mean(a)`` alone), its bootstrap standard error and percentile interval.

    ``n``: questions (summed over tasks for a mean of tasks); ``seeds_a`` / ``seeds_b``: seeds per method.
    """

    se: float
    n: int
    seeds_a: int
    seeds_b: int
    n_boot: int
    alpha: float
    seed: int


def _matrix(x: Sequence[Sequence[float]] | np.ndarray, name: str) -> np.ndarray:
    try:
        if hasattr(x, "detach"):  # a torch tensor
            x = x.detach().cpu().numpy()
        arr = np.asarray(x, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise DataError(f"{name} must be per-seed lists of per-question numbers [seeds, n]: {exc}") from None
    if arr.ndim == 1:
        arr = arr[None, :]  # one seed
    if arr.ndim != 2 or arr.shape[0] == 0 or arr.shape[1] == 0:
        raise DataError(f"{name} must have shape [seeds, n] with at least one of each, got {arr.shape}.")
    if not np.isfinite(arr).all():
        raise DataError(f"{name} contains NaN or inf.")
    return arr


def _seed_weights(rng: np.random.Generator, rows: int, seeds: int) -> np.ndarray:
    """``[rows, seeds]``: how often each seed was drawn in ``seeds`` draws with replacement, over ``seeds``."""
    if seeds == 1:
        return np.ones((rows, 1))
    draws = rng.integers(0, seeds, size=(rows, seeds))
    return (draws[:, :, None] == np.arange(seeds)).sum(1) / seeds


def _paired_matrices(
    a: Mapping[str, Sequence[Sequence[float]] | np.ndarray],
    b: Mapping[str, Sequence[Sequence[float]] | np.ndarray] | None,
    tasks: Sequence[str],
) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """``{task: [S, n_task]}`` float matrices of both methods (``b=None``: zeros ``[1, n_task]``), checked: the
    same questions per task for both, the same seeds on every task for each."""
    xa = {t: _matrix(a[t], f"a[{t!r}]") for t in tasks}
    xb = {t: _matrix(b[t], f"b[{t!r}]") if b is not None else np.zeros((1, xa[t].shape[1])) for t in tasks}
    for t in tasks:
        if xa[t].shape[1] != xb[t].shape[1]:
            raise DataError(f"Task {t!r}: paired scores need the same questions: a has {xa[t].shape[1]}, "
                            f"b has {xb[t].shape[1]}.")
        for x, name in ((xa, "a"), (xb, "b")):
            if x[t].shape[0] != x[tasks[0]].shape[0]:
                raise DataError(f"{name} has {x[t].shape[0]} seeds on {t!r} but {x[tasks[0]].shape[0]} on "
                                f"{tasks[0]!r}; every task needs the same seeds.")
    return xa, xb


def _check_bootstrap_args(name: str, a: Mapping[str, Any], b: Mapping[str, Any] | None, n_boot: int,
                          alpha: float) -> None:
    """One clear error for a bootstrap's bad arguments: no task, different tasks, a bad n_boot or alpha."""
    if not a:
        raise DataError(f"{name} needs at least one task.")
    if b is not None and set(a) != set(b):
        raise DataError(f"Both methods need the same tasks: {sorted(a)} vs {sorted(b)}.")
    if isinstance(n_boot, bool) or int(n_boot) != n_boot or n_boot < 1:
        raise ConfigError(f"n_boot must be a positive integer, got {n_boot!r}.")
    if not 0.0 < alpha < 1.0:
        raise ConfigError(f"alpha must be in (0, 1), got {alpha!r}.")


def seed_question_bootstrap_tasks(
    a: Mapping[str, Sequence[Sequence[float]] | np.ndarray],
    b: Mapping[str, Sequence[Sequence[float]] | np.ndarray] | None = None,
    n_boot: int = 10000,
    alpha: float = 0.05,
    seed: int = 0,
) -> dict[str, SeedQuestionCI]:
    """Bootstrap over questions and seeds, per task and for the mean over tasks (key ``"mean"``).

    a, b: ``{task: [S, n_task]}`` per-seed per-question scores of two methods on the same questions (the seeds
    may differ in number: a method that does not depend on the seed has ``S = 1``); ``b=None`` gives intervals
    of ``a``'s own scores. One resample draws, per task, ``n_task`` questions with replacement (the same for both
    methods: paired), and, for each method, ``S`` seeds with replacement (the same seeds for every task: a seed
    is one trained model, scored on all tasks); the statistic is the mean over drawn seeds and questions of
    ``a`` minus that of ``b``, per task, and their unweighted mean over tasks. For ``a[s, i] = u_i + v_s`` its
    variance is ``var(u) / n + var(v) / S`` (population variances), what a fresh test set and fresh seeds
    would give. The interval is the ``alpha/2`` and ``1 − alpha/2`` quantiles; ``se`` is the standard
    deviation of the resampled statistic. Deterministic: numpy ``Generator(PCG64(seed))``.
    """
    _check_bootstrap_args("seed_question_bootstrap", a, b, n_boot, alpha)
    n_boot = int(n_boot)
    tasks = list(a)
    xa, xb = _paired_matrices(a, b, tasks)
    sa, sb = xa[tasks[0]].shape[0], xb[tasks[0]].shape[0]
    rng = np.random.Generator(np.random.PCG64(seed))
    stats = {t: np.empty(n_boot) for t in tasks}
    rows = max(1, _BLOCK_INDICES // max(x.shape[1] for x in xa.values()))
    for start in range(0, n_boot, rows):
        stop = min(n_boot, start + rows)
        wa, wb = _seed_weights(rng, stop - start, sa), _seed_weights(rng, stop - start, sb)
        for t in tasks:
            n = xa[t].shape[1]
            # Row r: each question's score averaged over the seeds drawn in replicate r, a minus b. [rows, n]
            per_question = wa @ xa[t] - wb @ xb[t]
            idx = rng.integers(0, n, size=(stop - start, n))
            stats[t][start:stop] = np.take_along_axis(per_question, idx, 1).mean(1)
    stats["mean"] = np.mean([stats[t] for t in tasks], axis=0)
    point = {t: float(xa[t].mean() - xb[t].mean()) for t in tasks}
    point["mean"] = float(np.mean([point[t] for t in tasks]))
    sizes = {t: int(xa[t].shape[1]) for t in tasks}
    sizes["mean"] = sum(sizes.values())
    out = {}
    for key, draws in stats.items():
        low, high = np.quantile(draws, [alpha / 2, 1 - alpha / 2])
        out[key] = SeedQuestionCI(point[key], float(low), float(high), float(draws.std()), sizes[key], sa,
                                  sb if b is not None else 0, n_boot, float(alpha), int(seed))
    return out


def seed_question_bootstrap(
    a: Sequence[Sequence[float]] | np.ndarray,
    b: Sequence[Sequence[float]] | np.ndarray | None = None,
    n_boot: int = 10000,
    alpha: float = 0.05,
    seed: int = 0,
) -> SeedQuestionCI:
    """:func:`seed_question_bootstrap_tasks` for one task: a, b ``[S, n]`` (a 1-D ``[n]`` is one seed)."""
    return seed_question_bootstrap_tasks({"task": a}, None if b is None else {"task": b}, n_boot, alpha,
                                         seed)["task"]


def minimum_detectable_effect(
    per_item: Sequence[float] | np.ndarray | Mapping[str, Sequence[float] | np.ndarray],
    alpha: float = 0.05,
    power: float = 0.8,
) -> float:
    """The smallest true difference between two methods that a two-sided test at level ``alpha`` detects with
    probability ``power``: ``(z_{1−alpha/2} + z_{power}) · sqrt(2 s² / n)``.

    per_item: ``[n]`` per-question scores of a reference method (no steering), whose sample variance ``s²``
    (ddof = 1) stands in for both methods'; or ``{task: [n_task]}`` for the unweighted mean over tasks, with
    ``sqrt(2 Σ_t s_t² / n_t) / T`` in place of the square root. The ``2`` treats the two methods' scores as
    independent: an upper bound, since pairing on the same questions only lowers the variance of a
    difference when the methods agree on most questions.
    """
    if not 0.0 < alpha < 1.0 or not 0.0 < power < 1.0:
        raise ConfigError(f"alpha and power must be in (0, 1), got {alpha!r} and {power!r}.")
    parts = per_item if isinstance(per_item, Mapping) else {"task": per_item}
    if not parts:
        raise DataError("minimum_detectable_effect needs at least one task.")
    var = 0.0
    for name, values in parts.items():
        x = _vector(values, f"per_item[{name!r}]")
        if x.size < 2:
            raise DataError(f"per_item[{name!r}] needs at least two questions for a variance, got {x.size}.")
        var += 2.0 * float(x.var(ddof=1)) / x.size
    z = NormalDist().inv_cdf(1 - alpha / 2) + NormalDist().inv_cdf(power)
    return z * math.sqrt(var) / len(parts)


# ---------------------------------------------------------------------------------------------------------------
# Cluster bootstrap (questions clustered by template / category / target group), paired seeds, Holm


@dataclass(frozen=True)
class ClusterCI(_Interval):
    """A (ratio-of-sums) statistic of ``a`` minus that of ``b`` (or of ``a`` alone), from the cluster bootstrap.

    ``se``: bootstrap standard error; ``p``: two-sided bootstrap p-value of "no difference" (of "0" for ``a``
    alone); ``n``: questions (summed over tasks for a mean of tasks); ``n_clusters``: clusters (summed likewise);
    ``seeds_a`` / ``seeds_b``: seeds per method (``seeds_b`` 0 without ``b``); ``paired_seeds``: whether both
    methods were given the same seed draws.
    """

    se: float
    p: float
    n: int
    n_clusters: int
    seeds_a: int
    seeds_b: int
    paired_seeds: bool
    n_boot: int
    alpha: float
    seed: int


def cluster_codes(clusters: Sequence[str] | None, n: int, name: str = "clusters") -> tuple[np.ndarray, int]:
    """``([n]`` integer codes in ``[0, G)``, ``G)`` for per-question cluster ids; ``None``: every question is its
    own cluster (the plain question bootstrap)."""
    if clusters is None:
        return np.arange(n), n
    ids = list(clusters)
    if len(ids) != n:
        raise DataError(f"{name} has {len(ids)} cluster ids for {n} questions.")
    _, codes = np.unique(np.asarray([str(c) for c in ids]), return_inverse=True)
    return codes.astype(np.int64), int(codes.max()) + 1 if n else 0


def _cluster_counts(rng: np.random.Generator, rows: int, g: int) -> np.ndarray:
    """``[rows, g]``: how often each of ``g`` clusters is drawn in ``g`` draws with replacement (one row per
    resample)."""
    idx = rng.integers(0, g, size=(rows, g)) + (np.arange(rows) * g)[:, None]
    return np.bincount(idx.ravel(), minlength=rows * g).reshape(rows, g).astype(np.float64)


def _sums_by_cluster(x: np.ndarray, codes: np.ndarray, g: int) -> np.ndarray:
    """``[S, n]`` per-question values summed within each cluster: ``[S, g]``."""
    return np.stack([np.bincount(codes, weights=row, minlength=g) for row in x])


def _p_two_sided(draws: np.ndarray) -> float:
    """Two-sided bootstrap p-value of 0: twice the smaller tail share at 0, with the ``+1`` of a permutation-style
    estimate so that it is never exactly 0."""
    below, above = int((draws <= 0).sum()), int((draws >= 0).sum())
    return float(min(1.0, 2.0 * (min(below, above) + 1) / (draws.size + 1)))


def cluster_bootstrap_tasks(
    a: Mapping[str, Sequence[Sequence[float]] | np.ndarray],
    b: Mapping[str, Sequence[Sequence[float]] | np.ndarray] | None = None,
    clusters: Mapping[str, Sequence[str] | None] | None = None,
    n_boot: int = 10000,
    alpha: float = 0.05,
    seed: int = 0,
    *,
    den_a: Mapping[str, Sequence[Sequence[float]] | np.ndarray] | None = None,
    den_b: Mapping[str, Sequence[Sequence[float]] | np.ndarray] | None = None,
) -> dict[str, ClusterCI]:
    """Cluster bootstrap with resampled seeds, per task and for the unweighted mean over tasks (key ``"mean"``).

    a, b: ``{task: [S, n_task]}`` per-seed per-question values of two methods on the same questions (``S = 1`` for
    a method that does not depend on the seed; ``b=None``: intervals of ``a`` alone). clusters: ``{task: [n_task]}``
    cluster ids (BBQ template, TruthfulQA category, ToxiGen target group; a task absent or ``None``: every question
    its own cluster, the plain question bootstrap). den_a, den_b: optional ``{task: [S, n_task]}`` denominators
    (default 1): the statistic of a method is then the ratio of sums ``Σ num / Σ den`` over the drawn seeds and
    questions (a bias score, a rate among some answers); with the default it is the mean over drawn seeds and
    questions.

    One resample draws, per task, ``G`` of its ``G`` clusters with replacement and keeps **whole clusters** (every
    question of a drawn cluster, as many times as it was drawn), the same clusters for both methods (paired); and
    ``S`` seeds with replacement, shared by every task (a seed is one trained model) and, when both methods have
    the same number ``S > 1`` of seeds, **the same seed draw for both** (seed ``s`` of two methods shares a trained
    steerer); with different numbers of seeds each draws its own. Whole clusters, not clusters then questions
    within: the cluster totals already carry the within-cluster spread, and a second stage would count it twice.
    The interval is the ``alpha/2`` and ``1 − alpha/2`` quantiles of the resampled difference (replicates whose
    denominator is 0 are left out), ``se`` its standard deviation and ``p`` the two-sided bootstrap p-value of 0.
    Deterministic: numpy ``Generator(PCG64(seed))``.
    """
    _check_bootstrap_args("cluster_bootstrap", a, b, n_boot, alpha)
    n_boot, tasks = int(n_boot), list(a)
    xa, xb = _paired_matrices(a, b, tasks)
    da = _paired_matrices(den_a, None, tasks)[0] if den_a is not None else {t: np.ones_like(xa[t]) for t in tasks}
    db = (_paired_matrices(den_b, None, tasks)[0] if den_b is not None
          else {t: np.ones_like(xb[t]) for t in tasks})
    for t in tasks:
        if da[t].shape != xa[t].shape or db[t].shape != xb[t].shape:
            raise DataError(f"Task {t!r}: a denominator needs the shape of its numerator.")
    sa, sb = xa[tasks[0]].shape[0], xb[tasks[0]].shape[0]
    paired = b is not None and sa == sb and sa > 1
    codes = {t: cluster_codes((clusters or {}).get(t), xa[t].shape[1], f"clusters[{t!r}]") for t in tasks}
    sums = {t: [_sums_by_cluster(m[t], *codes[t]) for m in (xa, da, xb, db)] for t in tasks}
    rng = np.random.Generator(np.random.PCG64(seed))
    stats = {t: np.empty(n_boot) for t in tasks}
    rows = max(1, _BLOCK_INDICES // max(g for _, g in codes.values()))
    with np.errstate(invalid="ignore", divide="ignore"):
        for start in range(0, n_boot, rows):
            stop = min(n_boot, start + rows)
            wa = _seed_weights(rng, stop - start, sa)
            wb = wa if paired else _seed_weights(rng, stop - start, sb)
            for t in tasks:
                num_a, den_a_, num_b, den_b_ = sums[t]
                w = _cluster_counts(rng, stop - start, codes[t][1])  # [rows, G]
                stat = ((wa @ num_a) * w).sum(1) / ((wa @ den_a_) * w).sum(1)
                if b is not None:
                    stat = stat - ((wb @ num_b) * w).sum(1) / ((wb @ den_b_) * w).sum(1)
                stats[t][start:stop] = stat
        stats["mean"] = np.mean([stats[t] for t in tasks], axis=0)
        point = {t: float(xa[t].sum() / da[t].sum()) - (float(xb[t].sum() / db[t].sum()) if b is not None else 0.0)
                 for t in tasks}
    point["mean"] = float(np.mean([point[t] for t in tasks]))
    sizes = {t: (int(xa[t].shape[1]), codes[t][1]) for t in tasks}
    sizes["mean"] = (sum(n for n, _ in sizes.values()), sum(g for _, g in sizes.values()))
    out = {}
    for key, draws in stats.items():
        ok = draws[np.isfinite(draws)]
        if ok.size == 0:
            raise DataError(f"Task {key!r}: every resample has a zero denominator; the statistic is undefined.")
        low, high = np.quantile(ok, [alpha / 2, 1 - alpha / 2])
        out[key] = ClusterCI(point[key], float(low), float(high), float(ok.std()), _p_two_sided(ok), sizes[key][0],
                             sizes[key][1], sa, sb if b is not None else 0, paired, n_boot, float(alpha), int(seed))
    return out


def cluster_bootstrap(
    a: Sequence[Sequence[float]] | np.ndarray,
    b: Sequence[Sequence[float]] | np.ndarray | None = None,
    clusters: Sequence[str] | None = None,
    n_boot: int = 10000,
    alpha: float = 0.05,
    seed: int = 0,
    *,
    den_a: Sequence[Sequence[float]] | np.ndarray | None = None,
    den_b: Sequence[Sequence[float]] | np.ndarray | None = None,
) -> ClusterCI:
    """:func:`cluster_bootstrap_tasks` for one task: a, b (and den_a, den_b) ``[S, n]`` (a 1-D ``[n]`` is one
    seed), clusters ``[n]``."""
    return cluster_bootstrap_tasks(
        {"task": a}, None if b is None else {"task": b}, {"task": clusters}, n_boot, alpha, seed,
        den_a=None if den_a is None else {"task": den_a}, den_b=None if den_b is None else {"task": den_b})["task"]


def holm(pvalues: Sequence[float]) -> list[float]:
    """Holm's step-down adjusted p-values, in the input order: with ``p_(1) ≤ … ≤ p_(m)``, the ``k``-th smallest
    becomes ``max_{j ≤ k} min(1, (m − j + 1) · p_(j))``. Rejecting where the adjusted value is ``≤ alpha`` controls
    the family-wise error rate at ``alpha`` under any dependence between the tests."""
    p = _vector(list(pvalues), "pvalues")
    if ((p < 0) | (p > 1)).any():
        raise DataError(f"p-values must lie in [0, 1], got {p.tolist()}.")
    m = p.size
    order = np.argsort(p, kind="stable")
    adjusted = np.minimum(1.0, np.maximum.accumulate((m - np.arange(m)) * p[order]))
    out = np.empty(m)
    out[order] = adjusted
    return [float(x) for x in out]


def detectable_from_se(se: float, alpha: float = 0.05, power: float = 0.8) -> float:
    """The smallest true difference a two-sided test at level ``alpha`` detects with probability ``power`` when
    the estimated difference has standard error ``se``: ``(z_{1−alpha/2} + z_{power}) · se``."""
    if not 0.0 < alpha < 1.0 or not 0.0 < power < 1.0:
        raise ConfigError(f"alpha and power must be in (0, 1), got {alpha!r} and {power!r}.")
    return (NormalDist().inv_cdf(1 - alpha / 2) + NormalDist().inv_cdf(power)) * float(se)
