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
* :func:`in_context_vector` (ICV, Liu et al. 2024): the PCA-of-paired-differences direction from *demonstration*
  pairs (each text's final-token state, a desirable and an undesirable text of one question or target group:
  :func:`paired_demonstrations`), length ``λ · mean‖h‖``, applied **with** norm preservation. It is the ``pca``
  estimator on other data, not an independent one; its docstring lists how it departs from ICV.
* :func:`nl_iti` (NL-ITI, Hoscilowicz et al. 2024), single-site form: ITI's ``α σ u`` from last-k-token means
  (:func:`last_token_means`) behind a gate per attribute that is an MLP probe's probability (:func:`fit_mlp_probe`,
  :class:`MLPGates`), a :class:`~matsteer.core.steerer.ModuleGatedSteerer`: run time only (the saved-steerer format
  holds linear gates). It is probe-gated CAA with an MLP gate; its docstring lists how it departs from NL-ITI.

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
import warnings
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
from torch import nn

from matsteer.activations.features import FeatureSet
from matsteer.core.contrast import (
    ITI_ALPHA,
    ContrastLike,
    ContrastSet,
    as_contrast_sets,
    mass_mean_direction,
    mean_diff,
    mean_difference_vector,
    pca_difference_vector,
)
from matsteer.core.probes import fit_logistic_gate, probe_rows
from matsteer.core.steerer import ModuleGatedSteerer, Steerer
from matsteer.data.records import Example
from matsteer.errors import ConfigError, DataError

__all__ = [
    "ALWAYS_ON_BIAS",
    "BASELINES",
    "DEMO_SEPARATOR",
    "NL_ITI_HIDDEN",
    "NL_ITI_TOKENS",
    "PAIRING_FIELD",
    "MLPGates",
    "few_shot_prompt",
    "fit_mlp_probe",
    "in_context_direction",
    "in_context_vector",
    "last_token_means",
    "make_uniform_steerer",
    "mass_mean_shift",
    "mean_difference",
    "nl_iti",
    "paired_demonstrations",
    "pairing_keys",
    "pca_of_differences",
    "probe_gated_mean_difference",
    "random_direction_steerer",
    "sum_of_single",
    "text_states",
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


# --------------------------------------------------------------------------------------------------
# Demonstration-level states and pairs (ICV, NL-ITI)
# --------------------------------------------------------------------------------------------------

#: The Example field that pairs a data set's desirable and undesirable texts, where ``group`` cannot: every ToxiGen
#: statement is its own group, so its benign and toxic statements are paired by target group (as ``toxigen_pref``).
PAIRING_FIELD = {"toxigen": "target_group"}


def text_states(
    activations: torch.Tensor, text_index: torch.Tensor, token_index: torch.Tensor, k: int = 1
) -> tuple[torch.Tensor, torch.Tensor]:
    """One state per text: the mean of its ``k`` rows with the largest ``token_index`` (``k = 1``: its last row).

    activations ``[M, d]``, text_index ``[M]``, token_index ``[M]`` (a :class:`FeatureSet`'s rows, any order).
    Returns ``(states [n, d] float32, texts [n] int64)``, texts ascending; a text with fewer than ``k`` rows
    averages the rows it has. Accumulated in float64.
    """
    if isinstance(k, bool) or int(k) != k or k < 1:
        raise ConfigError(f"k must be a positive integer, got {k!r}.")
    m = activations.shape[0]
    if activations.ndim != 2 or m == 0 or text_index.shape != (m,) or token_index.shape != (m,):
        raise DataError(f"need activations [M, d] with text_index and token_index [M], M > 0; got "
                        f"{tuple(activations.shape)}, {tuple(text_index.shape)}, {tuple(token_index.shape)}.")
    text, token = text_index.long().cpu(), token_index.long().cpu()
    order = torch.argsort(text * (int(token.max()) + 1) + token, stable=True)  # by text, then position
    texts, counts = torch.unique_consecutive(text[order], return_counts=True)
    owner = torch.repeat_interleave(torch.arange(texts.numel()), counts)  # [M] sorted row -> text slot
    starts = counts.cumsum(0) - counts
    from_end = counts[owner] - 1 - (torch.arange(m) - starts[owner])  # 0 for a text's last row
    keep = from_end < int(k)
    rows = order[keep]
    sums = torch.zeros(texts.numel(), activations.shape[1], dtype=torch.float64)
    sums.index_add_(0, owner[keep], activations[rows.to(activations.device)].detach().double().cpu())
    return (sums / counts.clamp_max(int(k)).unsqueeze(1).double()).float(), texts


def _text_labels(features: FeatureSet, texts: torch.Tensor) -> torch.Tensor:
    """The label of each text in ``texts [n]`` (every row of a text must carry it)."""
    text, labels = features.text_index.long().cpu(), features.labels.long().cpu()
    first = torch.full((int(text.max()) + 1,), -1, dtype=torch.long).scatter_(0, text, labels)
    if bool((first[text] != labels).any()):
        raise DataError("rows of one text carry different labels; a text is one demonstration with one label.")
    return first[texts]


def last_token_means(features: FeatureSet, k: int) -> ContrastSet:
    """Per text, the mean of its last ``k`` rows (:func:`text_states`), split by label into a :class:`ContrastSet`.

    NL-ITI's multi-token activations ("mean over the last k tokens"); ``k = 1`` gives each demonstration's
    final-token state, ICV's latent state. Positives ``[n1, d]`` and negatives ``[n0, d]`` in text order.
    """
    states, texts = text_states(features.activations, features.text_index, features.token_index, k)
    lab = _text_labels(features, texts)
    return ContrastSet(states[lab == 1], states[lab == 0], positive_side=features.positive_side)


def pairing_keys(examples: Sequence[Example]) -> list[str]:
    """One pairing key per example, in order: ``group`` (a question), or the :data:`PAIRING_FIELD` of its data set."""
    return [ex.meta[PAIRING_FIELD[ex.dataset]] if ex.dataset in PAIRING_FIELD else ex.group for ex in examples]


def paired_demonstrations(features: FeatureSet, keys: Sequence[str], seed: int = 0) -> ContrastSet:
    """Demonstration pairs for ICV: each text's final-token state, positives paired with negatives of one key.

    features: one attribute's :class:`FeatureSet`; keys: a pairing key per text of its extraction, in the order the
    examples were extracted (``text_index`` indexes them; :func:`pairing_keys`). Within each key the positive and the
    negative texts are shuffled with ``random.Random(seed)`` (keys in sorted order) and zipped, so every text is in
    at most one pair. Returns a :class:`ContrastSet` of per-text states (positives ``[n1, d]``, negatives
    ``[n0, d]``, as :func:`last_token_means` with ``k = 1``) whose ``pairs [P, 2]`` index them.
    """
    states, texts = text_states(features.activations, features.text_index, features.token_index, 1)
    n_texts = features.manifest.get("texts")
    if int(texts.max()) >= len(keys) or (n_texts is not None and int(n_texts) != len(keys)):
        raise DataError(f"{len(keys)} pairing keys for {n_texts if n_texts is not None else 'the'} extracted texts "
                        f"(indices up to {int(texts.max())}); pass one key per extracted example, in order.")
    lab = _text_labels(features, texts)
    sides: dict[str, tuple[list[int], list[int]]] = {}
    for side, label in enumerate((1, 0)):
        for row, t in enumerate(texts[lab == label].tolist()):
            sides.setdefault(str(keys[t]), ([], []))[side].append(row)
    rng = random.Random(seed)
    pairs: list[tuple[int, int]] = []
    for key in sorted(sides):
        pos, neg = sides[key]
        rng.shuffle(pos)
        rng.shuffle(neg)
        pairs.extend(zip(pos, neg))
    if not pairs:
        raise DataError("no key has both a positive and a negative text: there are no demonstration pairs.")
    return ContrastSet(states[lab == 1], states[lab == 0], torch.tensor(pairs, dtype=torch.long),
                       features.positive_side)


# --------------------------------------------------------------------------------------------------
# ICV (Liu et al. 2024)
# --------------------------------------------------------------------------------------------------


def in_context_direction(positives: torch.Tensor, negatives: torch.Tensor, pairs: torch.Tensor) -> torch.Tensor:
    """ICV's direction: the unit first principal direction of the paired differences, ``[d]`` float32.

    positives ``[Np, d]``, negatives ``[Nn, d]``, pairs ``[P, 2]``. The estimator is
    :func:`~matsteer.core.contrast.pca_difference_vector`'s (uncentred: ``argmax_{‖u‖=1} Σ_i (u · δ_i)²``),
    normalised, with the sign that points from the negatives' mean to the positives'.
    """
    v = pca_difference_vector(positives, negatives, pairs).double()
    if not bool(v.norm() > 0):
        raise DataError("the paired differences have no mean length along their first principal direction.")
    u = v / v.norm()
    # pca_difference_vector scales by the mean projection of the *paired* differences, which can be negative.
    return (-u if float(u @ mean_diff(positives, negatives)) < 0 else u).float()


def in_context_vector(data: Mapping[str, ContrastSet], lam: float | Mapping[str, float] = 1.0) -> Steerer:
    """ICV per attribute as an always-on Steerer: ``θ_t = λ_t · r̄_t · u_t``, to be applied **with** norm preservation.

    data: ``{attribute: ContrastSet}`` of demonstration states with their ``pairs`` (:func:`paired_demonstrations`;
    a set without pairs is refused rather than paired at random). ``u_t`` is :func:`in_context_direction` and
    ``r̄_t`` the mean norm of the attribute's demonstration states, so λ is relative to the hidden state's norm as in
    ICV, which adds ``λ·u`` to the unit-normalised state and restores the original norm: with
    ``preserve_norm=True`` the edit is ``(a + λ r̄ u) · ‖a‖ / ‖a + λ r̄ u‖``, ICV's own edit for a token of norm
    ``r̄``. Several attributes' vectors are summed (ICV's code averages them: λ absorbs the 1/T).

    **Not an independent estimator**: the direction is the PCA-of-paired-differences baseline's
    (:func:`pca_of_differences`). What differs is the data (one state per demonstration, paired within a question
    or target group, instead of token rows paired at random when no pairs are given), the length (λ r̄ instead of
    the mean projection; a dev grid absorbs it) and norm preservation (which the ``pca`` row also gets from a norm
    grid). Departures from ICV: one site instead of every layer (and the direction from that layer alone, not from
    all layers' states concatenated), ``‖a‖`` approximated by ``r̄`` in the strength, and the official code's extras
    (its centred principal component plus the mean difference as the direction; a push scaled up by
    ``1 + max(0, cos(a, −v))``) left out in favour of the paper's top principal direction.
    """
    sets = as_contrast_sets(data)
    lams = _per_attribute(lam, list(sets), "lam", 1.0)
    missing = [n for n, cs in sets.items() if cs.pairs is None]
    if missing:
        raise ConfigError(f"ICV needs paired demonstrations; {missing} have no pairs (build them with "
                          "paired_demonstrations).")

    def vector(name: str, cs: ContrastSet) -> torch.Tensor:
        assert cs.pairs is not None
        u = in_context_direction(cs.positives, cs.negatives, cs.pairs).double()
        rows = torch.cat([cs.positives, cs.negatives]).double()
        return lams[name] * rows.norm(dim=1).mean() * u

    return _build(sets, vector)


# --------------------------------------------------------------------------------------------------
# NL-ITI (Hoscilowicz et al. 2024)
# --------------------------------------------------------------------------------------------------

#: NL-ITI's probe width: one hidden layer of 16 units (its ``MLP_S``, here without batch norm).
NL_ITI_HIDDEN = 16
#: NL-ITI's TruthfulQA setting: directions from the mean of the last 6 tokens (its probes: the last 4).
NL_ITI_TOKENS = 6


def fit_mlp_probe(
    open_rows: torch.Tensor,
    shut_rows: torch.Tensor,
    *,
    hidden: int = NL_ITI_HIDDEN,
    max_rows: int = 20000,
    max_iter: int = 200,
    seed: int = 0,
) -> Any:
    """A scikit-learn MLP probe that is high on ``open_rows [n1, d]`` and low on ``shut_rows [n0, d]``.

    A ``Pipeline(StandardScaler, MLPClassifier(hidden_layer_sizes=(hidden,), relu, adam, random_state=seed))``
    fitted with class-balanced sample weights on at most ``max_rows`` rows per side (a subset seeded with ``seed``);
    class 1 is ``open``, so ``predict_proba(x)[:, 1]`` is the gate. Deterministic for a seed.
    """
    # scikit-learn takes a second to import and only this baseline needs it (as probes.fit_logistic_gate does).
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.neural_network import MLPClassifier
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    a1, a0 = probe_rows(open_rows, shut_rows, max_rows, seed)
    x = torch.cat([a1, a0]).numpy()
    y = torch.cat([torch.ones(a1.shape[0]), torch.zeros(a0.shape[0])]).numpy()
    weight = torch.cat([torch.full((a1.shape[0],), x.shape[0] / (2.0 * a1.shape[0])),
                        torch.full((a0.shape[0],), x.shape[0] / (2.0 * a0.shape[0]))]).double().numpy()
    probe = make_pipeline(StandardScaler(), MLPClassifier(hidden_layer_sizes=(int(hidden),), max_iter=int(max_iter),
                                                          random_state=int(seed)))
    with warnings.catch_warnings():
        # A probe stopped at max_iter is still a probe; the gate's quality is what the dev scores judge.
        warnings.simplefilter("ignore", ConvergenceWarning)
        probe.fit(x, y, mlpclassifier__sample_weight=weight)
    return probe


class MLPGates(nn.Module):
    """T one-hidden-layer MLP probes as one batched module, ``[..., d] -> [..., T]``:
    ``G_t(a) = sigmoid(w2_t · relu(W1_t a + b1_t) + b2_t)``.

    w1 ``[T, h, d]``, b1 ``[T, h]``, w2 ``[T, h]``, b2 ``[T]`` (float32 buffers: fixed, moved by ``.to``).
    """

    w1: torch.Tensor
    b1: torch.Tensor
    w2: torch.Tensor
    b2: torch.Tensor

    def __init__(self, w1: torch.Tensor, b1: torch.Tensor, w2: torch.Tensor, b2: torch.Tensor) -> None:
        super().__init__()
        t, h, _ = w1.shape
        if b1.shape != (t, h) or w2.shape != (t, h) or b2.shape != (t,):
            raise DataError(f"MLP gate shapes disagree: w1 {tuple(w1.shape)}, b1 {tuple(b1.shape)}, "
                            f"w2 {tuple(w2.shape)}, b2 {tuple(b2.shape)}.")
        for name, value in (("w1", w1), ("b1", b1), ("w2", w2), ("b2", b2)):
            self.register_buffer(name, value.detach().float().cpu().contiguous())

    @classmethod
    def from_probes(cls, probes: Sequence[Any]) -> MLPGates:
        """One gate per :func:`fit_mlp_probe` pipeline, with its scaler folded into the first layer (the run-time
        gate acts on raw activations): ``W1 = Cᵀ / s``, ``b1 = c − W1 μ`` for the scaler's mean μ and scale s."""
        w1, b1, w2, b2 = [], [], [], []
        for probe in probes:
            scaler, mlp = probe[0], probe[-1]
            if len(mlp.coefs_) != 2 or mlp.out_activation_ != "logistic" or mlp.activation != "relu":
                raise ConfigError("MLPGates holds one-hidden-layer relu probes with a logistic output "
                                  "(fit_mlp_probe).")
            w = torch.from_numpy(mlp.coefs_[0]).double().T / torch.from_numpy(scaler.scale_).double()  # [h, d]
            w1.append(w)
            b1.append(torch.from_numpy(mlp.intercepts_[0]).double() - w @ torch.from_numpy(scaler.mean_).double())
            w2.append(torch.from_numpy(mlp.coefs_[1]).double().reshape(-1))
            b2.append(torch.from_numpy(mlp.intercepts_[1]).double().reshape(()))
        return cls(torch.stack(w1), torch.stack(b1), torch.stack(w2), torch.stack(b2))

    def forward(self, a: torch.Tensor) -> torch.Tensor:
        t, h, d = self.w1.shape
        hidden = torch.relu(a @ self.w1.reshape(t * h, d).T + self.b1.reshape(-1))  # [..., T·h]
        return torch.sigmoid((hidden.unflatten(-1, (t, h)) * self.w2).sum(-1) + self.b2)


def nl_iti(
    data: Mapping[str, ContrastLike],
    alpha: float | Mapping[str, float] = ITI_ALPHA,
    *,
    gate_data: Mapping[str, ContrastLike] | None = None,
    hidden: int = NL_ITI_HIDDEN,
    max_rows: int = 20000,
    max_iter: int = 200,
    seed: int = 0,
) -> ModuleGatedSteerer:
    """NL-ITI per attribute, single-site form: ITI's ``θ_t = α_t σ_t u_t`` behind an MLP-probe gate (run time only).

    data: the direction's activations (:func:`mass_mean_direction`; pass :func:`last_token_means` with
    :data:`NL_ITI_TOKENS` for NL-ITI's multi-token direction); gate_data: the rows each probe
    (:func:`fit_mlp_probe`, seeded) is fitted on, open on the attribute's negatives and shut on its positives
    (default ``data``; same attributes). The edit is ``a + Σ_t G_t(a) α_t σ_t u_t`` with ``G_t`` the probe's
    ``predict_proba``; apply without norm preservation, as ITI. α scales θ only, so one steerer built at α = 1 and
    run with a global multiplier α is the same edit.

    Departures from NL-ITI: its probes rank attention heads (the top K are shifted, always on) and are not gates;
    at one whole-layer site there are no heads to choose, so the probe becomes the gate. A gate sees one token at run
    time, so its probe is meant to be fitted on token rows (NL-ITI's probes read the mean of the last 4 tokens). The
    probe has no batch norm and trains until scikit-learn's stopping rule or ``max_iter`` epochs (NL-ITI: 10
    epochs); σ comes from the direction's activations (NL-ITI: question-only prompts). Since ITI's ``u_t`` is CAA's
    ``μ_pos − μ_neg`` normalised, this is :func:`probe_gated_mean_difference` with an MLP gate in place of the
    logistic one and the direction from last-token means.
    """
    sets = as_contrast_sets(data)
    gates = as_contrast_sets(gate_data) if gate_data is not None else sets
    if set(gates) != set(sets):
        raise ConfigError(f"gate_data has attributes {sorted(gates)} but data has {sorted(sets)}.")
    if next(iter(gates.values())).d != next(iter(sets.values())).d:
        raise DataError("gate_data and data come from different hidden sizes; use one site.")
    alphas = _per_attribute(alpha, list(sets), "alpha", ITI_ALPHA)
    theta = torch.stack([mass_mean_direction(cs.positives, cs.negatives, alphas[n]) for n, cs in sets.items()])
    probes = [fit_mlp_probe(gates[n].negatives, gates[n].positives, hidden=hidden, max_rows=max_rows,
                            max_iter=max_iter, seed=seed) for n in sets]
    return ModuleGatedSteerer(list(sets), theta, MLPGates.from_probes(probes),
                              [cs.positive_side for cs in sets.values()])
