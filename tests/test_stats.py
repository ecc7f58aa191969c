"""Paired bootstrap and mean ± std."""

from __future__ import annotations

import numpy as np
import pytest

from matsteer.errors import ConfigError, DataError
from matsteer.eval.stats import mean_std, paired_bootstrap_ci


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
