"""Training health: did a steerer learn, and did each attribute's (vector, gate) pair learn *its own* attribute?

A steerer can lower its loss and still be useless: gates saturated shut (no gradient, no edit), θ still at its
random initialisation, or the pairs swapped (the "toxicity" vector and gate doing BBQ's work). These are T×T
checks on held-out activations, each a small pure function of tensors:

- ``gate_mean [rows, T]``: each gate's mean on every attribute's dev positives and negatives (and neutral text);
- ``gate_auc [T, T]``: how well gate t separates attribute u's negatives (to steer) from its positives (AUC; the
  diagonal is each gate on its own attribute, 0.5 is chance);
- ``theta_cos [T, T]``: the cosine of θ_t with attribute u's mean difference μ_pos − μ_neg;
- the fraction of saturated gate logits (|logit| > 10: the sigmoid's gradient is below 5e-5 there), ‖θ‖,
  cos(θ, init), the dev MMD before and after steering, and a plain logistic probe's AUC as the yardstick.

:func:`assess` turns these into verdicts ("learned nothing", "swapped roles") with what to try. :func:`gate_targeting`
(:class:`GateTargeting`, also kept in :attr:`TrainingHealth.targeting`) says where each gate opens: mean gate and
share ≥ :data:`OPEN_THRESHOLD` on own negatives / positives, the other attributes' rows, neutral text, template
tokens and ParaDetox, the false-open rate, and a probe's precision at the same recall.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import torch

from matsteer.core.attributes import AttributeData
from matsteer.core.losses import mmd2
from matsteer.core.probes import auc, fit_logistic_gate
from matsteer.core.steerer import Steerer, apply_steering
from matsteer.errors import DataError

__all__ = ["OPEN_THRESHOLD", "SATURATION_LOGIT", "TARGETING_TARGETS", "TARGETS", "GateTargeting", "TrainingHealth",
           "assess", "gate_targeting", "health_table", "precision_at_recall", "targeting_table", "training_health"]

#: |logit| above which a gate counts as saturated (sigmoid'(10) ≈ 4.5e-5).
SATURATION_LOGIT = 10.0
#: What a healthy steerer reaches on dev (the project's targets; see docs/training.md).
TARGETS = {"own_gate_auc": 0.70, "saturated_max": 0.05, "theta_init_cos_max": 0.5, "theta_own_cos_min": 0.3}
#: A token counts as "opened" by a gate at G ≥ this (the paper gives no threshold; 0.5 is the sigmoid's midpoint).
OPEN_THRESHOLD = 0.5
#: Targeting goals (docs/training.md, "Gates that target"): mean gate per group, each gate on its own attribute;
#: the background groups ("neutral", "template") for every gate, the ParaDetox groups for the toxicity gate.
TARGETING_TARGETS = {"own_negatives_min": 0.6, "own_positives_max": 0.15, "background_max": 0.1,
                     "paradetox_toxic_min": 0.5, "paradetox_non_toxic_max": 0.15}
#: Group names of :class:`GateTargeting` (rows of its tables), in order; the last four are optional.
TARGETING_GROUPS = ("own negatives", "own positives", "other attributes", "neutral", "template",
                    "ParaDetox toxic", "ParaDetox non-toxic")
_BACKGROUND_GROUPS = ("neutral", "template")
_SHUT_GROUPS = ("own positives", "other attributes", "neutral", "template")


@dataclass
class TrainingHealth:
    """Health of one steerer on dev activations; every matrix is indexed by the steerer's attribute order."""

    attributes: list[str]
    gate_mean: dict[str, list[float]]  # "{attr} +" / "{attr} -" / "neutral" -> mean of each of the T gates
    gate_auc: list[list[float]]  # [u][t]: gate t separating attribute u's negatives from its positives
    theta_cos: list[list[float]]  # [t][u]: cos(θ_t, μ_pos,u − μ_neg,u)
    saturated: list[float]  # [t]: fraction of gate t's dev logits with |logit| > SATURATION_LOGIT
    theta_norm: list[float]
    theta_init_cos: list[float | None]  # None where θ started at 0
    mmd_unsteered: list[float]  # [t]: MMD²(dev positives, dev negatives) at σ
    mmd_steered: list[float]  # [t]: MMD²(dev positives, steered dev negatives)
    sigma: float
    probe_auc: list[float | None] = field(default_factory=list)  # [t]: logistic probe fitted on train, dev AUC
    verdicts: list[str] = field(default_factory=list)
    targeting: dict[str, Any] | None = None  # GateTargeting.to_dict() on the same dev rows (and neutral text)

    @property
    def own_gate_auc(self) -> list[float]:
        return [self.gate_auc[t][t] for t in range(len(self.attributes))]

    @property
    def healthy(self) -> bool:
        return not self.verdicts

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "own_gate_auc": self.own_gate_auc, "healthy": self.healthy}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainingHealth:
        known = {k: v for k, v in data.items() if k in cls.__dataclass_fields__}
        return cls(**known)


def _rows(x: torch.Tensor, max_rows: int, gen: torch.Generator) -> torch.Tensor:
    x = x.detach().float().cpu()
    return x if x.shape[0] <= max_rows else x[torch.randperm(x.shape[0], generator=gen)[:max_rows]]


def _cos(u: torch.Tensor, v: torch.Tensor) -> float:
    nu, nv = float(u.norm()), float(v.norm())
    return float(u @ v) / (nu * nv) if nu > 0 and nv > 0 else 0.0


def _dev_sides(names: Sequence[str], dev: Sequence[AttributeData], max_rows: int, gen: torch.Generator, what: str
               ) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Per attribute in ``names``, its dev (positives, negatives), at most ``max_rows`` rows each drawn with ``gen``;
    one clear error when an attribute has no dev activations (``what`` names the report)."""
    by_name = {a.name: a for a in dev}
    missing = [n for n in names if n not in by_name]
    if missing:
        raise DataError(f"{what} needs dev activations for every attribute; missing {missing}.")
    return [(_rows(by_name[n].positives, max_rows, gen), _rows(by_name[n].negatives, max_rows, gen)) for n in names]


def training_health(
    steerer: Steerer,
    dev: Sequence[AttributeData],
    *,
    sigma: float,
    theta_init: torch.Tensor | None = None,
    neutral: torch.Tensor | None = None,
    train: Sequence[AttributeData] | None = None,
    max_rows: int = 4096,
    seed: int = 0,
) -> TrainingHealth:
    """Measure a steerer on dev activations (:class:`AttributeData`: ``.name``, ``.positives [Np, d]``, ``.negatives``).

    dev/train: one entry per steerer attribute (matched by name). theta_init ``[T, d]``: θ before training (cos with
    it says whether θ moved; rows of zeros give None). neutral ``[N, d]``: activations of neutral text (a row of
    gate means). train: if given, a logistic probe per attribute is fitted on it and scored on dev (the AUC a
    gate could reach). At most ``max_rows`` seeded rows per side are used (``sigma`` is the kernel's σ for MMD).
    """
    names = list(steerer.attributes)
    gen = torch.Generator().manual_seed(seed)
    sides = _dev_sides(names, dev, max_rows, gen, "Health")
    theta = steerer.theta.detach().float().cpu()
    weight, bias = steerer.gate_weight.detach().float().cpu(), steerer.gate_bias.detach().float().cpu()
    gate_mean, gate_auc, stacked = _gate_stats(names, sides, weight, bias, neutral)
    mean_diffs = [pos.mean(0) - neg.mean(0) for pos, neg in sides]
    theta_cos = [[_cos(theta[t], md) for md in mean_diffs] for t in range(len(names))]
    mmd_before, mmd_after = _dev_mmd(sides, theta, weight, bias, sigma)
    saturated = (stacked.abs() > SATURATION_LOGIT).float().mean(0).tolist()
    init_cos: list[float | None] = [None] * len(names)
    if theta_init is not None:
        init = theta_init.detach().float().cpu()
        init_cos = [None if float(init[t].norm()) == 0 else _cos(theta[t], init[t]) for t in range(len(names))]
    probes = _fit_probes(names, train, seed)
    probe = [None if pr is None else auc(sides[t][0] @ pr[0] + pr[1], sides[t][1] @ pr[0] + pr[1])
             for t, pr in enumerate(probes)]
    health = TrainingHealth(
        attributes=names, gate_mean=gate_mean, gate_auc=gate_auc, theta_cos=theta_cos, saturated=saturated,
        theta_norm=theta.norm(dim=1).tolist(), theta_init_cos=init_cos, mmd_unsteered=mmd_before,
        mmd_steered=mmd_after, sigma=float(sigma), probe_auc=probe,
    )
    targeting = gate_targeting(steerer, dev, neutral=neutral, probes=probes, max_rows=max_rows, seed=seed)
    health.targeting = targeting.to_dict()
    health.verdicts = assess(health)
    return health


# --------------------------------------------------------------------------------------------------------------
# Targeting: does each gate open on what it should steer, and stay shut elsewhere?
# --------------------------------------------------------------------------------------------------------------


@dataclass
class GateTargeting:
    """Where each gate opens, on held-out tokens; every list is indexed by the steerer's attribute order (gate t).

    Groups (:data:`TARGETING_GROUPS`), per gate t: attribute t's negatives (to steer) and positives, the other
    attributes' rows (both sides), and where given neutral text, chat-template / system-prompt tokens and ParaDetox
    toxic / non-toxic sentences (the same rows for every gate). ``mean[group][t]``: mean gate; ``open_share``: the
    share of tokens with gate ≥ ``threshold``. ``false_open[t]``: the mean of ``open_share`` over the groups gate t
    must stay shut on (own positives, other attributes, neutral, template: each group counts once, whatever its
    size). ``precision[t]`` / ``recall[t]``: on own data, of the tokens gate t opens, the share that are negatives
    / of the negatives, the share opened; ``probe_precision[t]``: a logistic probe's precision at the same recall
    (its threshold set on these rows: the ceiling of a linear gate), None without training data.
    """

    attributes: list[str]
    threshold: float
    mean: dict[str, list[float]]
    open_share: dict[str, list[float]]
    false_open: list[float]
    recall: list[float]
    precision: list[float | None]
    probe_precision: list[float | None] = field(default_factory=list)
    rows: dict[str, list[int]] = field(default_factory=dict)  # group -> token rows per gate
    target: str | None = None  # the attribute the ParaDetox groups are about (toxicity)

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "met": self.met()}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> GateTargeting:
        return cls(**{k: v for k, v in data.items() if k in cls.__dataclass_fields__})

    def met(self) -> dict[str, list[bool | None]]:
        """Per :data:`TARGETING_TARGETS` goal, per gate: met, missed, or None (group not measured / not this gate)."""
        T, goals = len(self.attributes), TARGETING_TARGETS
        out: dict[str, list[bool | None]] = {}

        def check(key: str, group: str, low: bool, gates: Sequence[int]) -> None:
            values = self.mean.get(group)
            out[key] = [None if values is None or t not in gates else
                        (values[t] <= goals[key] if low else values[t] >= goals[key]) for t in range(T)]

        every = range(T)
        check("own_negatives_min", "own negatives", False, every)
        check("own_positives_max", "own positives", True, every)
        background = [self.mean[g] for g in _BACKGROUND_GROUPS if g in self.mean]
        out["background_max"] = ([all(v[t] <= goals["background_max"] for v in background) for t in every]
                                 if background else [None] * T)
        tox = [self.attributes.index(self.target)] if self.target in self.attributes else []
        check("paradetox_toxic_min", "ParaDetox toxic", False, tox)
        check("paradetox_non_toxic_max", "ParaDetox non-toxic", True, tox)
        return out


def precision_at_recall(scores_neg: torch.Tensor, scores_pos: torch.Tensor, recall: float) -> float | None:
    """Precision of the score's highest-ranked rows, at the threshold that opens a share ``recall`` of the negatives.

    scores_neg ``[m]`` (rows to open), scores_pos ``[n]`` (rows to keep shut). The threshold is the negatives'
    ``⌈recall·m⌉``-th largest score; every row at or above it opens. None when recall is 0 (nothing opens).
    """
    neg, pos = scores_neg.detach().double().reshape(-1).cpu(), scores_pos.detach().double().reshape(-1).cpu()
    k = math.ceil(recall * neg.numel() - 1e-9)
    if k <= 0 or neg.numel() == 0:
        return None
    cut = neg.sort(descending=True).values[min(k, neg.numel()) - 1]
    tp, fp = float((neg >= cut).sum()), float((pos >= cut).sum())
    return tp / (tp + fp)


def gate_targeting(
    steerer: Steerer,
    dev: Sequence[AttributeData],
    *,
    neutral: torch.Tensor | None = None,
    template: torch.Tensor | None = None,
    paradetox: tuple[torch.Tensor, torch.Tensor] | None = None,
    train: Sequence[AttributeData] | None = None,
    probes: Sequence[tuple[torch.Tensor, float] | None] | None = None,
    target: str = "toxicity",
    threshold: float = OPEN_THRESHOLD,
    max_rows: int = 4096,
    seed: int = 0,
) -> GateTargeting:
    """Measure where each gate opens (:class:`GateTargeting`) on held-out activations.

    dev: one :class:`AttributeData` per steerer attribute (matched by name). neutral ``[N, d]``, template
    ``[M, d]``: tokens of neutral text and of the chat template / system prompt; paradetox: ``(toxic [P, d],
    non-toxic [Q, d])`` token activations (:mod:`matsteer.eval.gate_analysis` extracts all of these). train: if
    given, a logistic probe per attribute (own negatives vs positives) gives the precision ceiling (or pass the
    fitted ``probes``, ``(w [d], b)`` per attribute). At most ``max_rows`` seeded rows per side are used.
    """
    names = list(steerer.attributes)
    gen = torch.Generator().manual_seed(seed)
    sides = _dev_sides(names, dev, max_rows, gen, "Targeting")
    weight, bias = steerer.gate_weight.detach().float().cpu(), steerer.gate_bias.detach().float().cpu()

    def gates(a: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(a.detach().float().cpu() @ weight.T + bias)  # [N, T]

    T = len(names)
    per_side = [(gates(pos), gates(neg)) for pos, neg in sides]
    by_group: dict[str, list[torch.Tensor]] = {
        "own negatives": [per_side[t][1][:, t] for t in range(T)],
        "own positives": [per_side[t][0][:, t] for t in range(T)],
    }
    if T > 1:
        by_group["other attributes"] = [torch.cat([g[:, t] for u in range(T) if u != t for g in per_side[u]])
                                        for t in range(T)]
    shared: dict[str, torch.Tensor | None] = {"neutral": neutral, "template": template}
    if paradetox is not None:
        shared["ParaDetox toxic"], shared["ParaDetox non-toxic"] = paradetox
    for group, acts in shared.items():
        if acts is not None and acts.shape[0] > 0:
            g = gates(_rows(acts, max_rows, gen))
            by_group[group] = [g[:, t] for t in range(T)]
    mean = {k: [float(v.mean()) for v in vals] for k, vals in by_group.items()}
    open_share = {k: [float((v >= threshold).float().mean()) for v in vals] for k, vals in by_group.items()}
    false_open = [sum(open_share[k][t] for k in _SHUT_GROUPS if k in open_share)
                  / sum(k in open_share for k in _SHUT_GROUPS) for t in range(T)]
    recall = open_share["own negatives"]
    precision: list[float | None] = []
    for t in range(T):
        tp = recall[t] * len(by_group["own negatives"][t])
        fp = open_share["own positives"][t] * len(by_group["own positives"][t])
        precision.append(tp / (tp + fp) if tp + fp > 0 else None)
    fitted = list(probes) if probes is not None else _fit_probes(names, train, seed)
    probe: list[float | None] = [None] * T
    for t, pr in enumerate(fitted):
        if pr is not None:
            pos, neg = sides[t]
            probe[t] = precision_at_recall(neg @ pr[0] + pr[1], pos @ pr[0] + pr[1], recall[t])
    counts = {k: [int(v.numel()) for v in vals] for k, vals in by_group.items()}
    return GateTargeting(names, float(threshold), mean, open_share, false_open, recall, precision, probe, counts,
                         target if target in names else None)


def targeting_table(tg: GateTargeting | dict[str, Any]) -> str:
    """Markdown: per group, each gate's mean and open share (``mean / share ≥ threshold``), then the false-open rate,
    precision and recall at the threshold (and the probe's precision at that recall), then the targets met."""
    t = GateTargeting.from_dict(tg) if isinstance(tg, dict) else tg
    names = t.attributes
    lines = [f"| tokens (mean gate / share ≥ {t.threshold:g}) | " + " | ".join(f"{n} gate" for n in names) + " |",
             "|" + "---|" * (len(names) + 1)]
    for group in TARGETING_GROUPS:
        if group in t.mean:
            lines.append(f"| {group} | " + " | ".join(f"{m:.3f} / {s:.0%}" for m, s in
                                                       zip(t.mean[group], t.open_share[group])) + " |")
    lines.append("| false-open rate (shut groups, mean) | " + " | ".join(f"{v:.1%}" for v in t.false_open) + " |")
    lines.append("| recall on own negatives | " + " | ".join(f"{v:.1%}" for v in t.recall) + " |")

    def fmt(v: float | None) -> str:
        return "—" if v is None else f"{v:.3f}"

    lines.append("| precision on own data | " + " | ".join(fmt(v) for v in t.precision) + " |")
    if any(p is not None for p in t.probe_precision):
        lines.append("| logistic probe's precision at that recall | " + " | ".join(fmt(v) for v in t.probe_precision)
                     + " |")
    met = t.met()
    missed = [f"{names[i]}: {key}" for key, vals in met.items() for i, v in enumerate(vals) if v is False]
    lines += ["", f"- targets ({', '.join(f'{k} {v:g}' for k, v in TARGETING_TARGETS.items())}): "
              + ("all measured targets met." if not missed else "missed " + "; ".join(missed) + ".")]
    return "\n".join(lines)


_Sides = list[tuple[torch.Tensor, torch.Tensor]]  # per attribute: dev (positives [n, d], negatives [m, d])


def _gate_stats(
    names: list[str], sides: _Sides, weight: torch.Tensor, bias: torch.Tensor, neutral: torch.Tensor | None
) -> tuple[dict[str, list[float]], list[list[float]], torch.Tensor]:
    """Each gate's mean on every side (and neutral text), each gate's AUC on every attribute, all logits ``[N, T]``."""

    def logits(a: torch.Tensor) -> torch.Tensor:
        return a @ weight.T + bias  # [N, T]

    gate_mean: dict[str, list[float]] = {}
    gate_auc, all_logits = [], []
    for n, (pos, neg) in zip(names, sides):
        lp, ln = logits(pos), logits(neg)
        all_logits += [lp, ln]
        gate_mean[f"{n} +"] = torch.sigmoid(lp).mean(0).tolist()
        gate_mean[f"{n} -"] = torch.sigmoid(ln).mean(0).tolist()
        gate_auc.append([auc(lp[:, t], ln[:, t]) for t in range(len(names))])
    if neutral is not None:
        gate_mean["neutral"] = torch.sigmoid(logits(neutral.detach().float().cpu())).mean(0).tolist()
    return gate_mean, gate_auc, torch.cat(all_logits)


def _dev_mmd(sides: _Sides, theta: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor,
             sigma: float) -> tuple[list[float], list[float]]:
    """Per attribute: MMD²(dev positives, dev negatives) before and after steering the negatives."""
    mmd_before, mmd_after = [], []
    with torch.no_grad():
        for pos, neg in sides:
            steered, _ = apply_steering(neg, theta, weight, bias)
            mmd_before.append(float(mmd2(pos, neg, sigma)))
            mmd_after.append(float(mmd2(pos, steered, sigma)))
    return mmd_before, mmd_after


def _fit_probes(names: list[str], train: Sequence[AttributeData] | None,
                seed: int) -> list[tuple[torch.Tensor, float] | None]:
    """A logistic probe ``(w [d], b)`` per attribute fitted on its training activations (None without them)."""
    probes: list[tuple[torch.Tensor, float] | None] = [None] * len(names)
    if train is not None:
        train_by_name = {a.name: a for a in train}
        for t, n in enumerate(names):
            if n in train_by_name:
                probes[t] = fit_logistic_gate(train_by_name[n].negatives, train_by_name[n].positives, seed=seed)
    return probes


def assess(h: TrainingHealth) -> list[str]:
    """Verdicts, one line each, with what to try; empty when every target of :data:`TARGETS` is met."""
    out = []
    T = len(h.attributes)
    for t, name in enumerate(h.attributes):
        own_auc = h.gate_auc[t][t]
        own_neg = h.gate_mean[f"{name} -"][t]
        if h.saturated[t] > TARGETS["saturated_max"]:
            out.append(f"{name}: {h.saturated[t]:.0%} of its gate logits are saturated (|logit| > "
                       f"{SATURATION_LOGIT:g}): the gate passes no gradient. Try gate_input='standardized' or a "
                       "lower lr.")
        if own_auc < TARGETS["own_gate_auc"]:
            probe = h.probe_auc[t] if h.probe_auc else None
            yard = f" (a plain probe reaches {probe:.2f})" if probe is not None else ""
            out.append(f"{name}: its gate separates its own negatives from positives at AUC {own_auc:.2f}{yard}; "
                       f"target ≥ {TARGETS['own_gate_auc']:.2f}. Try gate_loss='supervised'.")
        others = [(h.gate_mean[f"{u} {s}"][t], f"{u} {s}") for u in h.attributes if u != name for s in "+-"]
        if others:
            top, where = max(others)
            if top > own_neg:
                out.append(f"{name}: swapped roles — its gate opens more on {where} ({top:.3f}) than on its own "
                           f"negatives ({own_neg:.3f}). Try gate_scope='cross' with gate_loss='supervised'.")
        cos_own = h.theta_cos[t][t]
        best_other = max((h.theta_cos[t][u], h.attributes[u]) for u in range(T) if u != t) if T > 1 else None
        if cos_own < TARGETS["theta_own_cos_min"]:
            out.append(f"{name}: θ points along its own mean difference at cos {cos_own:+.2f} (target > "
                       f"{TARGETS['theta_own_cos_min']:.1f}).")
        if best_other is not None and best_other[0] > cos_own:
            out.append(f"{name}: swapped roles — θ is closer to {best_other[1]}'s mean difference "
                       f"({best_other[0]:+.2f}) than to its own ({cos_own:+.2f}).")
        init_cos = h.theta_init_cos[t]
        if init_cos is not None and init_cos > TARGETS["theta_init_cos_max"]:
            out.append(f"{name}: θ is still near its initialisation (cos {init_cos:.2f}); its gate may be shut. "
                       "Try theta_init='zero' and gate_loss='supervised'.")
    return out


def health_table(h: TrainingHealth) -> str:
    """Markdown: the gate-mean matrix with AUCs, θ cosines, saturation and MMD per attribute, then the verdicts."""
    names = h.attributes
    head = "| dev data | " + " | ".join(f"{n} gate" for n in names) + " |"
    lines = [head, "|" + "---|" * (len(names) + 1)]
    for row, values in h.gate_mean.items():
        lines.append(f"| {row} | " + " | ".join(f"{v:.3f}" for v in values) + " |")
    lines.append("| AUC on own data (− vs +) | " + " | ".join(f"{h.gate_auc[t][t]:.2f}" for t in range(len(names)))
                 + " |")
    if h.probe_auc and any(p is not None for p in h.probe_auc):
        lines.append("| logistic probe AUC | " + " | ".join("—" if p is None else f"{p:.2f}" for p in h.probe_auc)
                     + " |")
    lines.append("| saturated logits | " + " | ".join(f"{s:.1%}" for s in h.saturated) + " |")
    lines += ["", "| θ of | " + " | ".join(f"cos with {n} μ+−μ−" for n in names) + " | ‖θ‖ | cos(θ, init) | "
              "dev MMD² unsteered → steered |", "|" + "---|" * (len(names) + 4)]
    for t, n in enumerate(names):
        init = "—" if h.theta_init_cos[t] is None else f"{h.theta_init_cos[t]:.2f}"
        lines.append(f"| {n} | " + " | ".join(f"{c:+.3f}" for c in h.theta_cos[t])
                     + f" | {h.theta_norm[t]:.1f} | {init} | {h.mmd_unsteered[t]:.4f} → {h.mmd_steered[t]:.4f} |")
    lines.append("")
    lines += [f"- ⚠ {v}" for v in h.verdicts] or ["- healthy: every target met (docs/training.md)."]
    if h.targeting is not None:
        lines += ["", "Targeting (where each gate opens):", "", targeting_table(h.targeting)]
    return "\n".join(lines)
