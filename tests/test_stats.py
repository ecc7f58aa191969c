"""Paired bootstrap and mean ± std."""

from __future__ import annotations

import numpy as np
import pytest

from matsteer.errors import ConfigError, DataError
from matsteer.eval.stats import mean_std, paired_bootstrap_ci, seed_question_bootstrap


def test_identical_inputs_give_zero_interval():
    a = [0.1, 0.9, 0.4, 0.7, 0.0]
    ci = paired_bootstrap_ci(a, list(a), n_boot=500)
    assert (ci.mean_diff, ci.low, ci.high) == (0.0, 0.0, 0.0)
    assert not ci.excludes_zero()


def test_constant_shift_interval_at_shift():
    rng = np.random.default_rng(1)
    b = rng.random(40)
    ci = paired_bootstrap_ci(b + 0.25, b, n_boot=500)
    assert ci.mean_diff == pytest.approx(0.25, abs=1e-12)
    assert ci.low == pytest.approx(0.25, abs=1e-12) and ci.high == pytest.approx(0.25, abs=1e-12)
    assert ci.excludes_zero()


def test_seeded_and_stable():
    rng = np.random.default_rng(0)
    a, b = rng.random(200), rng.random(200)
    first = paired_bootstrap_ci(a, b, n_boot=2000, seed=3)
    again = paired_bootstrap_ci(a.tolist(), b.tolist(), n_boot=2000, seed=3)
    assert first == again  # identical numbers, not just close
    other = paired_bootstrap_ci(a, b, n_boot=2000, seed=4)
    assert (other.low, other.high) != (first.low, first.high)
    assert first.low <= first.mean_diff <= first.high
    # The interval is about ±1.96 standard errors of the mean difference.
    se = (a - b).std(ddof=1) / np.sqrt(200)
    assert first.high - first.low == pytest.approx(2 * 1.96 * se, rel=0.15)


def test_paired_beats_unpaired_noise():
    # b = a + small noise: pairing removes the item-level variance, so the interval is narrow.
    rng = np.random.default_rng(2)
    a = rng.random(100)
    b = a - 0.05 + rng.normal(0, 0.01, 100)
    ci = paired_bootstrap_ci(a, b, n_boot=1000)
    assert ci.excludes_zero() and ci.low > 0.04 and ci.high < 0.06


def test_bootstrap_validation():
    with pytest.raises(DataError):
        paired_bootstrap_ci([1.0, 2.0], [1.0])
    with pytest.raises(DataError):
        paired_bootstrap_ci([], [])
    with pytest.raises(DataError):
        paired_bootstrap_ci([1.0, float("nan")], [1.0, 2.0])
    with pytest.raises(ConfigError):
        paired_bootstrap_ci([1.0], [1.0], alpha=1.5)
    with pytest.raises(ConfigError):
        paired_bootstrap_ci([1.0], [1.0], n_boot=0)


def test_mean_std():
    r = mean_std([1.0, 2.0, 3.0])
    assert (r.mean, r.std, r.n) == (2.0, 1.0, 3)
    assert mean_std([5.0]).std == 0.0
    assert "±" in str(r)
    with pytest.raises(DataError):
        mean_std([])


# ------------------------------------------------------------------ bootstrap over questions and seeds


def test_seed_question_bootstrap_exact_small_case():
    from matsteer.eval.stats import seed_question_bootstrap

    # Two seeds scoring 0 and 1 on one question, against a constant 0: a resample draws two seeds with
    # replacement, so the statistic is 0, 1/2, 1 with probabilities 1/4, 1/2, 1/4 (variance 1/8).
    ci = seed_question_bootstrap([[0.0], [1.0]], [[0.0]], n_boot=20000, seed=1)
    assert ci.mean_diff == 0.5 and (ci.low, ci.high) == (0.0, 1.0)
    assert ci.se**2 == pytest.approx(1 / 8, rel=0.03)
    assert (ci.n, ci.seeds_a, ci.seeds_b) == (1, 2, 1)


def test_seed_question_bootstrap_variance_is_question_plus_seed_variance():
    from matsteer.eval.stats import seed_question_bootstrap

    # a[s, i] = u_i + v_s: the resampled mean has variance var(u) / n + var(v) / S (population variances).
    rng = np.random.default_rng(0)
    u, v = rng.random(40), np.array([0.0, 0.3, 0.9])
    a = u[None, :] + v[:, None]
    ci = seed_question_bootstrap(a, n_boot=40000, seed=2)
    assert ci.mean_diff == pytest.approx(u.mean() + v.mean())
    assert ci.se**2 == pytest.approx(u.var() / 40 + v.var() / 3, rel=0.05)
    # Averaging the seeds away first keeps only the question part: a narrower, overconfident interval.
    only_questions = seed_question_bootstrap(a.mean(0), n_boot=40000, seed=2)
    assert only_questions.se**2 == pytest.approx(u.var() / 40, rel=0.05)
    assert only_questions.high - only_questions.low < ci.high - ci.low


def test_seed_question_bootstrap_is_paired_over_questions():
    from matsteer.eval.stats import seed_question_bootstrap, seed_question_bootstrap_tasks

    rng = np.random.default_rng(3)
    b = rng.random((1, 60))
    a = b + 0.1  # the same shift on every question and seed: no spread at all
    ci = seed_question_bootstrap(np.repeat(a, 3, 0), b, n_boot=500)
    assert ci.low == pytest.approx(0.1) and ci.high == pytest.approx(0.1) and ci.excludes_zero()
    # Per task and for the unweighted mean over tasks.
    out = seed_question_bootstrap_tasks({"x": a, "y": b}, {"x": b, "y": b}, n_boot=500)
    assert set(out) == {"x", "y", "mean"}
    assert out["mean"].mean_diff == pytest.approx(0.05) and out["mean"].n == 120
    again = seed_question_bootstrap_tasks({"x": a, "y": b}, {"x": b, "y": b}, n_boot=500)
    assert again == out  # seeded: identical numbers


def test_seed_question_bootstrap_validation():
    from matsteer.eval.stats import seed_question_bootstrap, seed_question_bootstrap_tasks

    with pytest.raises(DataError, match="same questions"):
        seed_question_bootstrap([[1.0, 0.0]], [[1.0]])
    with pytest.raises(DataError, match="same seeds"):
        seed_question_bootstrap_tasks({"x": [[1.0], [0.0]], "y": [[1.0]]})
    with pytest.raises(DataError, match="NaN"):
        seed_question_bootstrap([[float("nan")]])
    with pytest.raises(ConfigError):
        seed_question_bootstrap([[1.0]], n_boot=0)


def test_minimum_detectable_effect_by_hand():
    from matsteer.eval.stats import minimum_detectable_effect

    # 100 questions scoring 0/1 half and half: s^2 = 0.25 * 100 / 99 (ddof 1);
    # MDE = (1.959964 + 0.841621) * sqrt(2 s^2 / 100).
    x = [0.0, 1.0] * 50
    want = (1.959964 + 0.841621) * (2 * 0.25 * 100 / 99 / 100) ** 0.5
    assert minimum_detectable_effect(x) == pytest.approx(want, rel=1e-5)
    # The mean of two such tasks: sqrt(2 (s^2/100 + s^2/100)) / 2 = the single-task value / sqrt(2).
    assert minimum_detectable_effect({"a": x, "b": x}) == pytest.approx(want / 2**0.5, rel=1e-5)
    with pytest.raises(DataError):
        minimum_detectable_effect([1.0])


# ------------------------------------------------------------------ cluster bootstrap, paired seeds, Holm


def test_cluster_bootstrap_exact_small_case():
    from matsteer.eval.stats import cluster_bootstrap

    # Two clusters of two questions scoring 0 and 1: a resample draws two whole clusters, so the mean is 0, 1/2,
    # 1 with probabilities 1/4, 1/2, 1/4 (variance 1/8); the plain question bootstrap gives 1/4 / 4 = 1/16.
    x = [0.0, 0.0, 1.0, 1.0]
    clustered = cluster_bootstrap(x, None, ["a", "a", "b", "b"], n_boot=40000, seed=1)
    plain = cluster_bootstrap(x, None, None, n_boot=40000, seed=1)
    assert clustered.mean_diff == 0.5 and (clustered.low, clustered.high) == (0.0, 1.0)
    assert clustered.se**2 == pytest.approx(1 / 8, rel=0.03)
    assert plain.se**2 == pytest.approx(1 / 16, rel=0.03)
    assert (clustered.n, clustered.n_clusters, plain.n_clusters) == (4, 2, 4)


def test_cluster_bootstrap_keeps_whole_clusters_of_unequal_size():
    from matsteer.eval.stats import cluster_bootstrap

    # Cluster a: one question scoring 0; cluster b: three scoring 1. Draws aa, ab, ba, bb give the means 0, 3/4,
    # 3/4, 1 (questions pooled, not cluster means averaged): mean 0.625, variance 0.140625.
    ci = cluster_bootstrap([0.0, 1.0, 1.0, 1.0], None, ["a", "b", "b", "b"], n_boot=40000, seed=2)
    assert ci.mean_diff == 0.75
    assert ci.se == pytest.approx(0.375, rel=0.03)


def test_cluster_bootstrap_ratio_of_sums():
    from matsteer.eval.stats import cluster_bootstrap

    num, den = [1.0, 0.0, 1.0, 1.0], [1.0, 0.0, 1.0, 2.0]
    ci = cluster_bootstrap(num, None, ["a", "a", "b", "c"], n_boot=2000, den_a=den)
    assert ci.mean_diff == pytest.approx(3 / 4)
    assert 0.5 <= ci.low <= ci.high <= 1.0
    with pytest.raises(DataError, match="zero denominator"):
        cluster_bootstrap([1.0, 1.0], None, ["a", "b"], n_boot=100, den_a=[0.0, 0.0])
    with pytest.raises(DataError, match="shape"):
        cluster_bootstrap([1.0, 1.0], None, None, n_boot=100, den_a=[1.0])


def test_cluster_bootstrap_pairs_seeds_across_methods():
    from matsteer.eval.stats import cluster_bootstrap

    # Seed s of both methods shares a large seed effect v_s (one trained steerer); a is b plus 0.1 everywhere.
    # Drawing the same seeds for both cancels v_s exactly; drawing them independently (the older bootstrap) does not.
    rng = np.random.default_rng(4)
    b = rng.random(50)[None, :] + np.array([0.0, 0.5, 1.0])[:, None]
    a = b + 0.1
    paired = cluster_bootstrap(a, b, [str(i % 5) for i in range(50)], n_boot=2000)
    assert paired.paired_seeds and paired.low == pytest.approx(0.1) and paired.high == pytest.approx(0.1)
    unpaired = seed_question_bootstrap(a, b, n_boot=2000)
    assert unpaired.high - unpaired.low > 0.3
    # A method that does not depend on the seed (one row) against a seeded one: nothing to pair.
    assert not cluster_bootstrap(a, b[:1], None, n_boot=200).paired_seeds


def test_cluster_bootstrap_covers_a_planted_cluster_effect():
    from matsteer.eval.stats import cluster_bootstrap

    # 30 clusters of 20 questions; the difference a - b is delta plus a per-cluster effect u_g (sd 0.1) plus
    # question noise. Over 200 seeded test sets the cluster interval covers delta about 95% of the time; the plain
    # question bootstrap, blind to u_g, far less.
    rng = np.random.default_rng(0)
    g, m, delta, sims = 30, 20, 0.1, 200
    clusters = [str(c) for c in np.repeat(np.arange(g), m)]
    covered = {"cluster": 0, "plain": 0}
    for s in range(sims):
        b = rng.normal(0, 0.3, g * m)
        a = b + delta + np.repeat(rng.normal(0, 0.1, g), m) + rng.normal(0, 0.1, g * m)
        for kind, cl in (("cluster", clusters), ("plain", None)):
            ci = cluster_bootstrap(a, b, cl, n_boot=1000, seed=s)
            covered[kind] += ci.low <= delta <= ci.high
    assert 0.88 <= covered["cluster"] / sims <= 0.99
    assert covered["plain"] / sims < 0.75


def test_cluster_bootstrap_tasks_mean_p_and_validation():
    from matsteer.eval.stats import cluster_bootstrap, cluster_bootstrap_tasks

    rng = np.random.default_rng(5)
    b = rng.random((1, 40))
    out = cluster_bootstrap_tasks({"x": b + 0.2, "y": b}, {"x": b, "y": b},
                                  {"x": [str(i % 4) for i in range(40)]}, n_boot=999)
    assert set(out) == {"x", "y", "mean"} and out["mean"].mean_diff == pytest.approx(0.1)
    assert (out["x"].n_clusters, out["y"].n_clusters, out["mean"].n_clusters) == (4, 40, 44)
    assert out["x"].p == pytest.approx(2 / 1000)  # no resample reaches 0: the smallest p a test of 999 gives
    assert out["y"].p == 1.0  # identical scores
    assert cluster_bootstrap_tasks({"x": b + 0.2}, {"x": b}, None, n_boot=999) == cluster_bootstrap_tasks(
        {"x": b + 0.2}, {"x": b}, None, n_boot=999)  # seeded: identical numbers
    with pytest.raises(DataError, match="cluster ids"):
        cluster_bootstrap([1.0, 0.0], None, ["a"], n_boot=10)
    with pytest.raises(DataError, match="same questions"):
        cluster_bootstrap([[1.0, 0.0]], [[1.0]], None)
    with pytest.raises(ConfigError):
        cluster_bootstrap([1.0], n_boot=0)


def test_holm_by_hand():
    from matsteer.eval.stats import holm

    # Sorted: 0.005 * 4 = 0.02, 0.01 * 3 = 0.03, 0.03 * 2 = 0.06, 0.04 * 1 = 0.04 -> max with the previous: 0.06.
    assert holm([0.01, 0.04, 0.03, 0.005]) == pytest.approx([0.03, 0.06, 0.06, 0.02])
    assert holm([0.5, 0.6]) == [1.0, 1.0]  # capped at 1, monotone
    assert holm([0.2]) == [0.2]
    with pytest.raises(DataError):
        holm([1.5])


def test_detectable_from_se():
    from matsteer.eval.stats import detectable_from_se

    assert detectable_from_se(0.01) == pytest.approx((1.959964 + 0.841621) * 0.01, rel=1e-5)
    with pytest.raises(ConfigError):
        detectable_from_se(0.01, power=1.0)


def test_cluster_bootstrap_without_clusters_is_the_older_bootstrap():
    from matsteer.eval.stats import cluster_bootstrap_tasks, seed_question_bootstrap_tasks

    # Every question its own cluster and nothing to pair (one method scored once): the same resamples, in the
    # same order of random draws, as the question-and-seed bootstrap it replaces.
    rng = np.random.default_rng(6)
    a = {"x": rng.random((3, 30)), "y": rng.random((3, 20))}
    b = {"x": rng.random((1, 30)), "y": rng.random((1, 20))}
    new = cluster_bootstrap_tasks(a, b, None, n_boot=500, seed=7)
    old = seed_question_bootstrap_tasks(a, b, n_boot=500, seed=7)
    for k in ("x", "y", "mean"):
        assert (new[k].low, new[k].high, new[k].se) == pytest.approx((old[k].low, old[k].high, old[k].se), abs=1e-12)
        assert not new[k].paired_seeds
