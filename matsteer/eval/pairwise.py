"""Pairwise win rates from two methods' judge scores on the same items (wins, losses, ties and their rates)."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from matsteer.errors import ConfigError, DataError

__all__ = ["WinRate", "pairwise_win_rate"]


@dataclass(frozen=True)
class WinRate:
    """Pairwise outcome counts of method A against method B over ``n`` items (``win + loss + tie == n``).

    The paper reports win/loss percentages summing to 100 without saying how ties were handled, so
    three views are offered: ``win_rate`` (ties count as not-won), ``decisive_win_rate`` (ties
    dropped; comparable to the paper's pairs if it dropped ties) and ``win_rate_half_ties`` (a tie is
    half a win). Report ``tie_rate`` alongside whichever is used.
    """

    win: int
    loss: int
    tie: int
    n: int

    def _frac(self, k: float, n: int) -> float:
        return k / n if n else float("nan")

    @property
    def win_rate(self) -> float:
        return self._frac(self.win, self.n)

    @property
    def loss_rate(self) -> float:
        return self._frac(self.loss, self.n)

    @property
    def tie_rate(self) -> float:
        return self._frac(self.tie, self.n)

    @property
    def decisive_win_rate(self) -> float:
        return self._frac(self.win, self.win + self.loss)

    @property
    def win_rate_half_ties(self) -> float:
        return self._frac(self.win + 0.5 * self.tie, self.n)


def pairwise_win_rate(
    scores_a: Sequence[Mapping[str, float]],
    scores_b: Sequence[Mapping[str, float]],
    attributes: Sequence[str] | None = None,
    tolerance: float = 0.0,
) -> WinRate:
    """Count items where A's mean score over the attributes is higher (win), lower (loss) or equal (tie).

    scores_a[i], scores_b[i]: the judge's scores of methods A and B on item i. ``attributes`` defaults to
    the keys of ``scores_a[i]`` (which must all be present in ``scores_b[i]``). Means within
    ``tolerance`` of each other are ties (default 0: exact equality, sensible for integer scores).
    The plain mean follows the paper, even though "higher" is not obviously better for verbosity or
    complexity.
    """
    if len(scores_a) != len(scores_b):
        raise DataError(
            f"win rate needs the same items: {len(scores_a)} scores for A, {len(scores_b)} for B."
        )
    if tolerance < 0:
        raise ConfigError(f"tolerance must be >= 0, got {tolerance}.")
    win = loss = tie = 0
    for i, (sa, sb) in enumerate(zip(scores_a, scores_b)):
        names = list(attributes) if attributes is not None else list(sa)
        missing = [a for a in names if a not in sa or a not in sb]
        if not names or missing:
            raise DataError(
                f"item {i}: scores lack attributes {missing or 'all'}; both methods need every attribute."
            )
        mean_a = math.fsum(float(sa[a]) for a in names) / len(names)
        mean_b = math.fsum(float(sb[a]) for a in names) / len(names)
        if not (math.isfinite(mean_a) and math.isfinite(mean_b)):
            raise DataError(f"item {i}: non-finite scores.")
        if abs(mean_a - mean_b) <= tolerance:
            tie += 1
        elif mean_a > mean_b:
            win += 1
        else:
            loss += 1
    return WinRate(win, loss, tie, len(scores_a))
