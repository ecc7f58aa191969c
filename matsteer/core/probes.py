"""Linear probes on activations: a logistic gate fitted with scikit-learn, and the ROC AUC of any score.

A probe answers the question every gate must answer: does this token belong to the side that needs steering?
The probe-gated CAA control (:func:`matsteer.core.baselines.probe_gated_mean_difference`) uses it as its gate, and the
training-health report (:mod:`matsteer.core.health`) uses it as the yardstick a learned gate should come near.
"""

from __future__ import annotations

import torch

from matsteer.errors import DataError

__all__ = ["auc", "fit_logistic_gate"]


def auc(scores_pos: torch.Tensor, scores_neg: torch.Tensor) -> float:
    """ROC AUC that a row of ``scores_neg [m]`` scores higher than a row of ``scores_pos [n]`` (ties count half).

    Gates should open on negatives (the side to steer), so 1.0 means every negative gets a larger gate than every
    positive, 0.5 chance, 0.0 the reverse. Computed exactly from ranks (Mann-Whitney U), in float64.
    """
    p, n = scores_pos.detach().double().reshape(-1).cpu(), scores_neg.detach().double().reshape(-1).cpu()
    if p.numel() == 0 or n.numel() == 0:
        raise DataError("AUC needs at least one positive and one negative score.")
    both = torch.cat([n, p])
    order = both.argsort(stable=True)
    ranks = torch.empty_like(both)
    ranks[order] = torch.arange(1, both.numel() + 1, dtype=torch.float64)
    # Average ranks over ties so that equal scores count half.
    values, inverse, counts = torch.unique(both, return_inverse=True, return_counts=True)
    if values.numel() < both.numel():
        sums = torch.zeros(values.numel(), dtype=torch.float64).index_add_(0, inverse, ranks)
        ranks = (sums / counts.double())[inverse]
    u = float(ranks[: n.numel()].sum()) - n.numel() * (n.numel() + 1) / 2.0
    return u / (n.numel() * p.numel())


def probe_rows(open_rows: torch.Tensor, shut_rows: torch.Tensor, max_rows: int, seed: int
               ) -> tuple[torch.Tensor, torch.Tensor]:
    """The rows a probe is fitted on, checked: each side ``[n, d]`` (float64, CPU), at most ``max_rows`` of them, a
    subset drawn with ``seed`` where a side has more."""
    if open_rows.ndim != 2 or shut_rows.ndim != 2 or open_rows.shape[1] != shut_rows.shape[1]:
        raise DataError(f"Probe rows must be [n, d] with one d, got {tuple(open_rows.shape)} and "
                        f"{tuple(shut_rows.shape)}.")
    if open_rows.shape[0] == 0 or shut_rows.shape[0] == 0:
        raise DataError("A probe needs rows on both sides; one side is empty.")
    gen = torch.Generator().manual_seed(seed)

    def subset(x: torch.Tensor) -> torch.Tensor:
        if x.shape[0] > max_rows:
            x = x[torch.randperm(x.shape[0], generator=gen)[:max_rows].to(x.device)]
        return x.detach().double().cpu()

    return subset(open_rows), subset(shut_rows)


def fit_logistic_gate(
    open_rows: torch.Tensor,
    shut_rows: torch.Tensor,
    *,
    max_rows: int = 20000,
    c: float = 1.0,
    seed: int = 0,
) -> tuple[torch.Tensor, float]:
    """A logistic probe ``sigmoid(w·a + b)`` that is high on ``open_rows [n1, d]`` and low on ``shut_rows [n0, d]``.

    Fitted by scikit-learn (lbfgs, L2 with inverse strength ``c``) on standardised coordinates, then folded back so
    that ``w [d]`` and ``b`` act on raw activations (the run-time gate never standardises). At most ``max_rows``
    rows per side are used, a seeded subset, and the classes are weighted to balance. Returns ``(w float32 [d], b)``.
    """
    from sklearn.linear_model import LogisticRegression

    a1, a0 = probe_rows(open_rows, shut_rows, max_rows, seed)
    x = torch.cat([a1, a0])
    mean, std = x.mean(0), x.std(0).clamp_min(1e-6)
    y = torch.cat([torch.ones(a1.shape[0]), torch.zeros(a0.shape[0])]).numpy()
    clf = LogisticRegression(C=c, class_weight="balanced", max_iter=2000)
    clf.fit(((x - mean) / std).numpy(), y)
    coef = torch.from_numpy(clf.coef_[0]).double() / std
    bias = float(clf.intercept_[0]) - float(coef @ mean)
    return coef.float(), bias
