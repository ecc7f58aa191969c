"""Closed-form steering baselines, each expressed as a :class:`~matsteer.core.steerer.Steerer`.

A baseline vector θ_t per attribute becomes one row of a Steerer whose gates are always on
(``gate_weight = 0``, ``gate_bias = +30``: ``sigmoid(30)`` rounds to exactly 1.0 in float32, and
``0 · a = 0`` for every finite activation), so the edit is ``a + Σ_t θ_t`` on every steered token and
the same runtime machinery (sites, multipliers, forcing, gate recording) applies to baselines and to
MAT-Steer alike. These steerers are meant to be applied **without norm preservation**
(``preserve_norm=False``), as in the original methods; that flag is the caller's, not stored here.

Inputs are, per attribute, activations of the positive (desirable, label 1) side ``[Np, d]`` and of
the negative side ``[Nn, d]`` at the site being steered: a :class:`ContrastSet`, a ``(pos, neg)``
tuple, or a :class:`~matsteer.activations.features.FeatureSet` (``ContrastSet.from_features``).

Methods (all vectors are computed in float64 and stored as float32):

* :func:`mass_mean_shift` (ITI, Li et al. 2023): ``u = normalize(μ_pos − μ_neg)``,
  ``θ = α · σ · u`` with σ the (population, ddof = 0, as ``np.std`` in honest_llama) standard deviation of
  the projections ``a · u`` of all activations, positive and negative. ITI's ``α = 15`` (the default
  here) was tuned for shifting 48 individual attention heads; for a whole-layer site it is usually far
  too strong, so tune α on dev.
* :func:`mean_difference` (CAA, Rimsky et al. 2024): ``θ = multiplier · (μ_pos − μ_neg)``.
* :func:`pca_of_differences` (repeng / RepE style): ``u`` = first principal direction of the paired
  differences ``δ_i = pos_i − neg_i``, taken **uncentred** (top right singular vector of ``[δ_i]``, or the
  top eigenvector of ``Σ δ_i δ_iᵀ`` when there are more pairs than dimensions: the same thing)
  because centring would subtract the mean difference, i.e. the very signal we want; RepE gets the
  same effect by randomising the order within pairs. The sign is chosen so that ``u · (μ_pos − μ_neg) ≥ 0``
  and ``θ = multiplier · mean_i(δ_i · u) · u``, so an unscaled θ has the length of the average
  difference along ``u`` (repeng returns a unit vector and leaves the scale to its ``coeff``).
* :func:`sum_of_single`: naive composition of separately trained steerers (their rows stacked; the
  edit is the sum of their edits, each with its own learned gates).
* :func:`uniform_gates`: a trained MAT-Steer steerer with every gate forced to 1 (paper Table 4,
  "all tokens").
* :func:`few_shot_prompt` / :func:`with_demonstrations`: the in-context-learning (ICL) baseline.

Two controls, the simplest things that do what MAT-Steer claims:

* :func:`random_direction_steerer`: random unit directions scaled to given norms (MAT-Steer's ‖θ_t‖), always-on
  gates. Any gain it shows comes from pushing the activations, not from the direction.
* :func:`probe_gated_mean_difference`: CAA vectors behind a logistic-probe gate per attribute (open on the
  attribute's negatives, shut on its positives): "steer only where needed" without any joint training.
"""

from __future__ import annotations

import copy
import dataclasses
import random
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch

from matsteer.core.contrast import (
    ITI_ALPHA,
    ContrastLike,
    ContrastSet,
    as_contrast_sets,
    mass_mean_direction,
    mean_difference_vector,
    pca_difference_vector,
)
from matsteer.core.probes import fit_logistic_gate
from matsteer.core.steerer import Steerer
from matsteer.data.records import Example
from matsteer.errors import ConfigError, DataError

__all__ = [
    "ALWAYS_ON_BIAS",
    "BASELINES",
    "DEMO_SEPARATOR",
    "few_shot_prompt",
    "make_uniform_steerer",
    "mass_mean_shift",
    "mean_difference",
    "pca_of_differences",
    "probe_gated_mean_difference",
    "random_direction_steerer",
    "sum_of_single",
    "uniform_gates",
    "with_demonstrations",
]

#: Gate bias for always-on gates: sigmoid(30) == 1.0 exactly in float32 (the smallest such integer is 17).
ALWAYS_ON_BIAS = 30.0
#: What separates demonstrations from each other and from the evaluated prompt.
DEMO_SEPARATOR = "\n\n"


# --------------------------------------------------------------------------------------------------
# Steerers
# --------------------------------------------------------------------------------------------------


def make_uniform_steerer(
    vectors: Mapping[str, torch.Tensor], positive_sides: Sequence[str] | None = None
) -> Steerer:
    """A Steerer with ``theta`` rows = ``vectors`` (``[d]`` each, in order) and every gate always 1."""
    names = list(vectors)
    if not names:
        raise ConfigError("no vectors given.")
    rows = [torch.as_tensor(vectors[n]).detach().reshape(-1).float().cpu() for n in names]
    d = rows[0].numel()
    if any(r.numel() != d for r in rows):
        raise DataError(f"vectors must share one size, got {[r.numel() for r in rows]}.")
    # A private generator: building a baseline must not consume the global RNG (seeded runs stay reproducible).
    steerer = Steerer(names, d, positive_sides, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        steerer.theta.copy_(torch.stack(rows))
        steerer.gate_weight.zero_()
        steerer.gate_bias.fill_(ALWAYS_ON_BIAS)
    return steerer


def _build(sets: dict[str, ContrastSet], fn: Callable[[str, ContrastSet], torch.Tensor]) -> Steerer:
    vectors = {name: fn(name, cs) for name, cs in sets.items()}
    return make_uniform_steerer(vectors, [cs.positive_side for cs in sets.values()])


def _per_attribute(
    value: float | Mapping[str, float], names: Sequence[str], what: str, default: float
) -> dict[str, float]:
    """One float per attribute from a scalar or a partial mapping (missing names get ``default``)."""
    if isinstance(value, Mapping):
        unknown = sorted(set(value) - set(names))
        if unknown:
            raise ConfigError(f"{what} given for unknown attributes {unknown}; attributes are {list(names)}.")
        return {n: float(value.get(n, default)) for n in names}
    return {n: float(value) for n in names}


def mass_mean_shift(
    data: Mapping[str, ContrastLike], alpha: float | Mapping[str, float] = ITI_ALPHA
) -> Steerer:
    """ITI-style mass-mean shift per attribute (``θ_t = α_t σ_t u_t``) as an always-on Steerer.

    data: ``{attribute: ContrastSet | (positives [Np, d], negatives [Nn, d]) | FeatureSet}``;
    alpha: one value or one per attribute (default :data:`ITI_ALPHA`; tune it on dev).
    """
    sets = as_contrast_sets(data)
    alphas = _per_attribute(alpha, list(sets), "alpha", ITI_ALPHA)
    return _build(sets, lambda n, cs: mass_mean_direction(cs.positives, cs.negatives, alphas[n]))


def mean_difference(
    data: Mapping[str, ContrastLike], multiplier: float | Mapping[str, float] = 1.0
) -> Steerer:
    """CAA per attribute (``θ_t = m_t (μ_pos − μ_neg)``) as an always-on Steerer."""
    sets = as_contrast_sets(data)
    mult = _per_attribute(multiplier, list(sets), "multiplier", 1.0)
    return _build(sets, lambda n, cs: mean_difference_vector(cs.positives, cs.negatives, mult[n]))


def pca_of_differences(
    data: Mapping[str, ContrastLike], multiplier: float | Mapping[str, float] = 1.0, seed: int = 0
) -> Steerer:
    """repeng-style PCA of paired differences per attribute as an always-on Steerer.

    Each attribute uses its ``ContrastSet.pairs`` when given, else a seeded random pairing (``seed``).
    """
    sets = as_contrast_sets(data)
    mult = _per_attribute(multiplier, list(sets), "multiplier", 1.0)
    return _build(
        sets, lambda n, cs: pca_difference_vector(cs.positives, cs.negatives, cs.pairs, mult[n], seed)
    )


def random_direction_steerer(
    attributes: Sequence[str], d: int, norms: Sequence[float] | torch.Tensor, seed: int = 0
) -> Steerer:
    """Control: one random unit direction per attribute, scaled to ``norms [T]``, behind always-on gates.

    Directions are ``randn(d)`` normalised, from a private generator seeded with ``seed`` (the global RNG is not
    touched). Pass MAT-Steer's ``θ.norm(dim=1)`` as ``norms`` to push as hard as MAT-Steer in a meaningless direction.
    """
    names = list(attributes)
    norm = torch.as_tensor(norms, dtype=torch.float64).reshape(-1)
    if norm.numel() != len(names):
        raise ConfigError(f"random_direction_steerer needs one norm per attribute ({len(names)}), got {norm.numel()}.")
    if not bool(torch.isfinite(norm).all()) or bool((norm < 0).any()):
        raise ConfigError(f"norms must be finite and ≥ 0, got {norm.tolist()}.")
    gen = torch.Generator().manual_seed(seed)
    directions = torch.randn(len(names), d, generator=gen, dtype=torch.float64)
    rows = directions / directions.norm(dim=1, keepdim=True) * norm.unsqueeze(1)
    return make_uniform_steerer(dict(zip(names, rows)))


def probe_gated_mean_difference(
    data: Mapping[str, ContrastLike], multiplier: float | Mapping[str, float] = 1.0, seed: int = 0
) -> Steerer:
    """Control: CAA vectors ``θ_t = m_t (μ_pos − μ_neg)`` behind a logistic-probe gate per attribute.

    Gate t is a logistic regression (:func:`matsteer.core.probes.fit_logistic_gate`) fitted to open on attribute t's
    negatives and stay shut on its positives; nothing is trained jointly. Apply without norm preservation, like CAA.
    """
    sets = as_contrast_sets(data)
    steerer = mean_difference(sets, multiplier)
    with torch.no_grad():
        for t, cs in enumerate(sets.values()):
            w, b = fit_logistic_gate(cs.negatives, cs.positives, seed=seed)
            steerer.gate_weight[t].copy_(w)
            steerer.gate_bias[t] = b
    return steerer


#: The closed-form baselines by short name (each ``(data, multiplier-or-alpha) -> Steerer``).
BASELINES = {"iti": mass_mean_shift, "caa": mean_difference, "pca": pca_of_differences}


def sum_of_single(steerers: Sequence[Steerer]) -> Steerer:
    """Compose single- (or multi-) attribute steerers into one by stacking their rows, gates included.

    With norm preservation off, ``out(a) = a + Σ_s edit_s(a)``: the naive sum of the individual edits.
    Attribute names must be distinct across the inputs and all must share ``d``.
    """
    if not steerers:
        raise ConfigError("sum_of_single needs at least one steerer.")
    names = [n for s in steerers for n in s.attributes]
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise ConfigError(f"attribute names repeat across steerers: {dup}; rename them before composing.")
    ds = {s.d for s in steerers}
    if len(ds) != 1:
        raise DataError(f"steerers have different hidden sizes {sorted(ds)}; they must come from one site.")
    sides = [p for s in steerers for p in s.positive_sides]
    out = Steerer(names, ds.pop(), sides, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        for param in ("theta", "gate_weight", "gate_bias"):
            getattr(out, param).copy_(torch.cat([getattr(s, param).detach().float().cpu() for s in steerers]))
    return out


def uniform_gates(steerer: Steerer) -> Steerer:
    """A copy of ``steerer`` whose gates are 1 on every token (weights 0, bias :data:`ALWAYS_ON_BIAS`); θ unchanged."""
    out = copy.deepcopy(steerer)
    with torch.no_grad():
        out.gate_weight.zero_()
        out.gate_bias.fill_(ALWAYS_ON_BIAS)
    return out


# --------------------------------------------------------------------------------------------------
# ICL
# --------------------------------------------------------------------------------------------------


def few_shot_prompt(examples: Sequence[Example], k: int, seed: int = 0, separator: str = DEMO_SEPARATOR) -> str:
    """The ICL baseline's demonstration block: ``k`` positive training examples, seeded.

    examples: :class:`matsteer.data.Example` records (take them from the **train** split so no test
    question leaks into a prompt). Only label-1 (desirable-side) examples are used, at most one per
    ``group`` (so one question is not shown twice), and none whose text contains ``{prompt}`` or
    ``{answer}`` (they would break templates). ``k`` distinct groups are drawn with
    ``random.Random(seed)`` from the candidates in input order; each demonstration is the example's own
    ``text`` (for TruthfulQA and BBQ ``"Q: {question} A: {answer}"``, for ToxiGen the bare statement),
    and the demonstrations are joined by ``separator`` and followed by it, so the result can be
    prepended to an evaluation prompt as is. ``k = 0`` returns ``""`` (zero-shot).
    """
    if isinstance(k, bool) or int(k) != k or k < 0:
        raise ConfigError(f"k must be a non-negative integer, got {k!r}.")
    if k == 0:
        return ""
    candidates: dict[str, Example] = {}
    for ex in examples:
        text = ex.text
        if ex.label == 1 and ex.group not in candidates and "{prompt}" not in text and "{answer}" not in text:
            candidates[ex.group] = ex
    pool = list(candidates.values())
    if len(pool) < k:
        raise DataError(
            f"asked for {k} demonstrations but only {len(pool)} positive examples (distinct groups) are usable."
        )
    chosen = random.Random(seed).sample(pool, int(k))
    return "".join(ex.text + separator for ex in chosen)


def with_demonstrations(question: Any, prefix: str) -> Any:
    """Prepend a :func:`few_shot_prompt` block to an evaluation item.

    A ``str`` prompt becomes ``prefix + prompt``; a :class:`matsteer.data.MCQuestion` gets
    ``template = prefix + template`` (the prompt and choices are unchanged, so ``answer_span`` still
    locates the scored answer tokens).
    """
    if not prefix:
        return question
    if "{prompt}" in prefix or "{answer}" in prefix:
        raise DataError("a demonstration prefix must not contain '{prompt}' or '{answer}'.")
    if isinstance(question, str):
        return prefix + question
    if hasattr(question, "template"):
        return dataclasses.replace(question, template=prefix + question.template)
    raise ConfigError(
        f"cannot add demonstrations to a {type(question).__name__}; pass a str or an MCQuestion."
    )
