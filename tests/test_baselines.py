"""Closed-form baselines against hand-computed 2-D examples; always-on gates; composition; ICL prompts."""

from __future__ import annotations

import math

import pytest
import torch

from matsteer.activations.features import FeatureSet
from matsteer.core.baselines import (
    ALWAYS_ON_BIAS,
    few_shot_prompt,
    make_uniform_steerer,
    mass_mean_shift,
    mean_difference,
    pca_of_differences,
    sum_of_single,
    uniform_gates,
    with_demonstrations,
)
from matsteer.core.contrast import ContrastSet, mass_mean_direction, pca_difference_vector, random_pairs
from matsteer.core.steerer import Steerer
from matsteer.data import QA_TEMPLATE, Example, MCQuestion
from matsteer.errors import ConfigError, DataError

T = torch.tensor
# Toy 2-D data: mean_pos = (3, 1), mean_neg = (1, -1), so mean_pos − mean_neg = (2, 2).
POS = T([[2.0, 0.0], [4.0, 2.0]])
NEG = T([[0.0, 0.0], [2.0, -2.0]])


def test_always_on_bias_is_exactly_one_in_float32():
    assert torch.sigmoid(torch.tensor(ALWAYS_ON_BIAS, dtype=torch.float32)).item() == 1.0


def test_mean_difference_is_caa():
    s = mean_difference({"truth": (POS, NEG)}, multiplier=1.5)
    assert torch.equal(s.theta.detach(), T([[3.0, 3.0]]))
    assert s.attributes == ["truth"]


def test_mass_mean_shift_hand_computed():
    # u = (1, 1)/√2; projections of all four points: √2, 3√2, 0, 0 -> mean √2, population variance
    # (0 + 8 + 2 + 2)/4 = 3, so σ = √3 and θ = α √3 (1, 1)/√2.
    alpha = 2.0
    expected = alpha * math.sqrt(3.0) / math.sqrt(2.0)
    got = mass_mean_direction(POS, NEG, alpha)
    assert torch.allclose(got, T([expected, expected]), atol=1e-6)
    s = mass_mean_shift({"truth": (POS, NEG)}, alpha=alpha)
    assert torch.allclose(s.theta.detach()[0], got)


def test_pca_of_differences_hand_computed():
    # Pairs give differences (2, 1) and (2, −1): uncentred PC is (1, 0), mean projection 2 -> θ = (2, 0).
    # (A centred PCA would have returned (0, 1), orthogonal to the mean difference.)
    pos = T([[3.0, 1.0], [3.0, -1.0]])
    neg = T([[1.0, 0.0], [1.0, 0.0]])
    pairs = T([[0, 0], [1, 1]])
    assert torch.allclose(pca_difference_vector(pos, neg, pairs), T([2.0, 0.0]), atol=1e-6)
    # Sign follows mean_pos − mean_neg: swapping the sides flips θ.
    assert torch.allclose(pca_difference_vector(neg, pos, pairs[:, [1, 0]]), T([-2.0, 0.0]), atol=1e-6)
    s = pca_of_differences({"a": ContrastSet(pos, neg, pairs)}, multiplier=0.5)
    assert torch.allclose(s.theta.detach()[0], T([1.0, 0.0]), atol=1e-6)


def test_pca_random_pairing_seeded():
    g = torch.Generator().manual_seed(0)
    pos = torch.randn(7, 5, generator=g) + 1.0
    neg = torch.randn(4, 5, generator=g)
    p = random_pairs(7, 4, seed=3)
    assert p.shape == (4, 2) and len(set(p[:, 0].tolist())) == 4 and len(set(p[:, 1].tolist())) == 4
    assert torch.equal(p, random_pairs(7, 4, seed=3))
    v1 = pca_difference_vector(pos, neg, seed=3)
    assert torch.equal(v1, pca_difference_vector(pos, neg, seed=3))
    assert torch.allclose(v1, pca_difference_vector(pos, neg, pairs=p), atol=1e-6)
    assert float(v1 @ (pos.mean(0) - neg.mean(0))) > 0


def test_gates_are_exactly_one_and_edit_is_plain_addition():
    s = mean_difference({"truth": (POS, NEG), "tox": (NEG * 3, POS)})
    assert torch.equal(s.gate_weight.detach(), torch.zeros(2, 2))
    a = torch.randn(3, 6, 2) * 1e4
    assert torch.equal(s.gates(a), torch.ones(3, 6, 2))
    out, gates = s(a, preserve_norm=False)
    assert torch.equal(gates, torch.ones(3, 6, 2))
    assert torch.allclose(out, a + s.theta.detach().sum(0), rtol=0, atol=1e-2)  # |a| ~ 1e4 in float32


def test_uniform_gates_copy():
    g = torch.Generator().manual_seed(1)
    trained = Steerer(["x", "y"], 4, ["good x", "good y"], generator=g)
    flat = uniform_gates(trained)
    a = torch.randn(5, 4)
    assert torch.equal(flat.gates(a), torch.ones(5, 2))
    assert torch.equal(flat.theta, trained.theta) and flat.positive_sides == ["good x", "good y"]
    assert not torch.equal(trained.gate_weight, torch.zeros(2, 4))  # the original is untouched


def test_sum_of_single_is_sum_of_edits():
    g = torch.Generator().manual_seed(2)
    s1 = Steerer(["truth"], 4, ["truthful"], generator=g)
    s2 = Steerer(["tox", "bias"], 4, ["non-toxic", "unbiased"], generator=g)
    with torch.no_grad():
        s2.gate_weight.mul_(5)  # gates well away from 0.5 and 1
    both = sum_of_single([s1, s2])
    assert both.attributes == ["truth", "tox", "bias"]
    assert both.positive_sides == ["truthful", "non-toxic", "unbiased"]
    a = torch.randn(3, 7, 4)
    e1 = s1(a, preserve_norm=False)[0] - a
    e2 = s2(a, preserve_norm=False)[0] - a
    out, gates = both(a, preserve_norm=False)
    assert torch.allclose(out, a + e1 + e2, atol=1e-5)
    assert torch.allclose(gates, torch.cat([s1.gates(a), s2.gates(a)], -1))
    with pytest.raises(ConfigError):
        sum_of_single([s1, s1])
    with pytest.raises(DataError):
        sum_of_single([s1, Steerer(["z"], 3)])


def test_inputs_and_validation():
    fs = FeatureSet(
        activations=torch.cat([POS, NEG]),
        labels=T([1, 1, 0, 0]),
        text_index=T([0, 1, 2, 3]),
        token_index=T([0, 0, 0, 0]),
        manifest={"attribute": "truthfulness", "positive_side": "truthful"},
    )
    s = mean_difference(
        {"truthfulness": fs, "bias": ContrastSet(NEG, POS, positive_side="unbiased")},
        multiplier={"bias": 2.0},
    )
    assert s.positive_sides == ["truthful", "unbiased"]
    assert torch.equal(s.theta.detach(), T([[2.0, 2.0], [-4.0, -4.0]]))
    with pytest.raises(ConfigError):
        mean_difference({"a": (POS, NEG)}, multiplier={"nope": 1.0})
    with pytest.raises(DataError):
        mass_mean_shift({"a": (POS, POS)})  # identical means: no direction
    with pytest.raises(DataError):
        mean_difference({"a": (POS, NEG), "b": (torch.ones(2, 3), torch.zeros(2, 3))})
    with pytest.raises(DataError):
        ContrastSet(POS, NEG, pairs=T([[0, 5]]))


def test_building_does_not_touch_global_rng():
    state = torch.get_rng_state()
    make_uniform_steerer({"a": torch.ones(3)})
    sum_of_single([Steerer(["a"], 3, generator=torch.Generator().manual_seed(0))])
    assert torch.equal(state, torch.get_rng_state())


def _examples() -> list[Example]:
    out = []
    for i in range(6):
        for label in (1, 0):
            answer = f"true {i}" if label else f"false {i}"
            out.append(
                Example("truthfulqa", "truthfulness", f"question {i}?", answer, label, f"g{i}", QA_TEMPLATE)
            )
    return out


def test_few_shot_prompt():
    ex = _examples()
    block = few_shot_prompt(ex, 3, seed=0)
    demos = block.split("\n\n")
    assert demos[-1] == "" and len(demos) == 4  # three demos, each followed by the separator
    for d in demos[:-1]:
        assert d.startswith("Q: question ") and " A: true " in d
    assert len({d.split("?")[0] for d in demos[:-1]}) == 3  # distinct questions
    assert block == few_shot_prompt(ex, 3, seed=0)
    assert {few_shot_prompt(ex, 3, seed=s) for s in range(5)} != {block}
    assert few_shot_prompt(ex, 0) == ""
    with pytest.raises(DataError):
        few_shot_prompt(ex, 7)


def test_with_demonstrations():
    prefix = few_shot_prompt(_examples(), 2, seed=1)
    q = MCQuestion("truthfulqa", "Is the sky blue?", ["yes", "no"], [1, 0], "g9", QA_TEMPLATE)
    q2 = with_demonstrations(q, prefix)
    assert q2.text(0) == prefix + q.text(0)
    start, end = q2.answer_span(1)
    assert q2.text(1)[start:end] == "no" and start == len(prefix) + q.answer_span(1)[0]
    assert with_demonstrations("Write a poem.", prefix) == prefix + "Write a poem."
    assert with_demonstrations(q, "") is q


def test_pca_many_pairs_matches_pca_of_signed_differences():
    # With more pairs than dimensions the eigen path is used; the uncentred first PC of δ_i equals
    # the (centred) PCA of the symmetrised set {δ_i, −δ_i}, which has mean zero.
    from sklearn.decomposition import PCA

    g = torch.Generator().manual_seed(5)
    pos = torch.randn(9, 3, generator=g) + T([1.0, 0.5, 0.0])
    neg = torch.randn(9, 3, generator=g)
    pairs = torch.stack([torch.arange(9), torch.arange(9)], 1)
    got = pca_difference_vector(pos, neg, pairs)
    deltas = (pos - neg).double()
    u = torch.from_numpy(PCA(n_components=1).fit(torch.cat([deltas, -deltas]).numpy()).components_[0])
    u = u if float(u @ deltas.mean(0)) >= 0 else -u
    assert torch.allclose(got.double(), (deltas @ u).mean() * u, atol=1e-5)
    # The SVD path (first 3 pairs, P <= d) agrees with its own hand computation too.
    few = pca_difference_vector(pos, neg, pairs[:3])
    _, _, vh = torch.linalg.svd(deltas[:3])
    v = vh[0] if float(vh[0] @ (pos.mean(0) - neg.mean(0)).double()) >= 0 else -vh[0]
    assert torch.allclose(few.double(), (deltas[:3] @ v).mean() * v, atol=1e-5)


def test_pca_zero_differences_refused():
    x = T([[1.0, 2.0], [3.0, 4.0]])
    with pytest.raises(DataError):
        pca_difference_vector(x, x.clone(), pairs=T([[0, 0], [1, 1]]))
