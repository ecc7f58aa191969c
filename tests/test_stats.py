"""Paired bootstrap and mean ± std."""

from __future__ import annotations

import numpy as np
import pytest

from matsteer.errors import ConfigError, DataError
from matsteer.stats import mean_std, paired_bootstrap_ci


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
