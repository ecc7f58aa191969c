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


# --------------------------------------------------------------------------------------------------
# ICV and NL-ITI
# --------------------------------------------------------------------------------------------------


def _features(acts: torch.Tensor, labels: list[int], texts: list[int], tokens: list[int]) -> FeatureSet:
    return FeatureSet(activations=acts, labels=T(labels), text_index=T(texts), token_index=T(tokens),
                      manifest={"attribute": "truthfulness", "positive_side": "truthful"})


def test_text_states_and_last_token_means_hand_computed():
    from matsteer.core.baselines import last_token_means, text_states

    # Rows out of order: text 0 has tokens 3, 5, 4 (rows 0, 2, 4); text 2 has tokens 7, 6 (rows 1, 3).
    acts = T([[1.0, 0.0], [10.0, 0.0], [3.0, 3.0], [20.0, 2.0], [5.0, 1.0]])
    states, texts = text_states(acts, T([0, 2, 0, 2, 0]), T([3, 7, 5, 6, 4]), k=2)
    assert texts.tolist() == [0, 2]
    # Last two of text 0 are tokens 5 and 4 (rows 2, 4); text 2 has only two rows.
    assert torch.allclose(states, T([[4.0, 2.0], [15.0, 1.0]]))
    last, _ = text_states(acts, T([0, 2, 0, 2, 0]), T([3, 7, 5, 6, 4]), k=1)
    assert torch.equal(last, T([[3.0, 3.0], [10.0, 0.0]]))
    cs = last_token_means(_features(acts, [1, 0, 1, 0, 1], [0, 2, 0, 2, 0], [3, 7, 5, 6, 4]), 2)
    assert torch.allclose(cs.positives, T([[4.0, 2.0]])) and torch.allclose(cs.negatives, T([[15.0, 1.0]]))
    assert cs.positive_side == "truthful"
    with pytest.raises(DataError):  # one text, two labels
        last_token_means(_features(acts[:2], [1, 0], [0, 0], [0, 1]), 1)
    with pytest.raises(ConfigError):
        text_states(acts, T([0, 2, 0, 2, 0]), T([3, 7, 5, 6, 4]), k=0)


def test_paired_demonstrations_pair_within_keys_once_each():
    from matsteer.core.baselines import paired_demonstrations, pairing_keys

    g = torch.Generator().manual_seed(0)
    # Six texts of two rows each; texts 0-2 belong to question "a", 3-5 to "b". Labels per text: a: 1 1 0, b: 1 0 0.
    text_labels = [1, 1, 0, 1, 0, 0]
    texts = [t for t in range(6) for _ in range(2)]
    fs = _features(torch.randn(12, 3, generator=g), [text_labels[t] for t in texts], texts, [0, 1] * 6)
    keys = ["a", "a", "a", "b", "b", "b"]
    cs = paired_demonstrations(fs, keys, seed=1)
    # States are each text's last row; positives are texts 0, 1, 3 and negatives 2, 4, 5, in that order.
    assert torch.equal(cs.positives, fs.activations[[1, 3, 7]]) and torch.equal(cs.negatives, fs.activations[[5, 9, 11]])
    assert cs.pairs is not None and cs.pairs.shape == (2, 2)  # one pair per question: min(positives, negatives)
    pos_text, neg_text = [[0, 1, 3][i] for i in cs.pairs[:, 0]], [[2, 4, 5][j] for j in cs.pairs[:, 1]]
    assert all(keys[p] == keys[n] for p, n in zip(pos_text, neg_text))
    assert torch.equal(cs.pairs, paired_demonstrations(fs, keys, seed=1).pairs)
    assert {tuple(paired_demonstrations(fs, keys, seed=s).pairs.flatten().tolist()) for s in range(8)} != {
        tuple(cs.pairs.flatten().tolist())}
    with pytest.raises(DataError):  # no key with both sides
        paired_demonstrations(fs, ["a", "a", "b", "a", "c", "c"])
    with pytest.raises(DataError):  # fewer keys than texts
        paired_demonstrations(fs, keys[:4])
    fs.manifest["texts"] = 7  # the extraction had another example list than the keys given
    with pytest.raises(DataError):
        paired_demonstrations(fs, keys)
    tox = [Example("toxigen", "toxicity", "", f"s{i}", i % 2, f"toxigen:{i}", "{answer}", {"target_group": "x"})
           for i in range(2)]
    assert pairing_keys(tox) == ["x", "x"]
    assert pairing_keys(_examples()[:2]) == ["g0", "g0"]


def test_icv_direction_is_leading_principal_direction_of_paired_differences():
    import numpy as np

    from matsteer.core.baselines import in_context_direction, in_context_vector

    g = torch.Generator().manual_seed(3)
    pos = torch.randn(8, 4, generator=g) + T([2.0, 0.0, 1.0, 0.0])
    neg = torch.randn(6, 4, generator=g)
    pairs = T([[0, 5], [2, 0], [3, 1], [6, 2], [7, 3]])
    deltas = (pos[pairs[:, 0]] - neg[pairs[:, 1]]).double().numpy()
    u = np.linalg.svd(deltas)[2][0]  # top right singular vector: argmax Σ (u · δ_i)², uncentred
    u = u if u @ (pos.double().mean(0) - neg.double().mean(0)).numpy() >= 0 else -u
    got = in_context_direction(pos, neg, pairs)
    assert np.allclose(got.double().numpy(), u, atol=1e-5)
    # The centred principal direction (scikit-learn's PCA) is another one on these data: the test tells them apart.
    from sklearn.decomposition import PCA

    centred = PCA(n_components=1).fit(deltas).components_[0]
    assert abs(float(centred @ u)) < 0.99
    # θ = λ · mean‖h‖ · u, the mean over every demonstration state.
    from matsteer.core.contrast import ContrastSet

    s = in_context_vector({"truth": ContrastSet(pos, neg, pairs, "truthful")}, lam=0.3)
    rbar = np.linalg.norm(np.concatenate([pos.double().numpy(), neg.double().numpy()]), axis=1).mean()
    assert np.allclose(s.theta.detach()[0].double().numpy(), 0.3 * rbar * u, atol=1e-4)
    assert torch.equal(s.gates(torch.randn(5, 4)), torch.ones(5, 1)) and s.positive_sides == ["truthful"]
    with pytest.raises(ConfigError):  # no pairs: refused, never paired at random
        in_context_vector({"truth": (pos, neg)})


def test_icv_sign_follows_the_means_even_when_pairs_point_back():
    from matsteer.core.baselines import in_context_direction

    # The one pair's difference is (−1, 0), but the unpaired positive (5, 0) puts mean_pos − mean_neg at (2, 0).
    pos, neg = T([[-1.0, 0.0], [5.0, 0.0]]), T([[0.0, 0.0]])
    assert torch.allclose(in_context_direction(pos, neg, T([[0, 0]])), T([1.0, 0.0]), atol=1e-6)


def test_icv_edit_is_icv_renormalisation_for_a_token_of_mean_norm():
    from matsteer.core.baselines import in_context_vector
    from matsteer.core.contrast import ContrastSet

    pos, neg = T([[3.0, 4.0], [0.0, 5.0]]), T([[5.0, 0.0], [4.0, -3.0]])  # every state has norm 5
    lam = 0.4
    s = in_context_vector({"a": ContrastSet(pos, neg, T([[0, 0], [1, 1]]))}, lam=lam)
    u = s.theta.detach()[0] / s.theta.detach()[0].norm()
    a = T([[0.0, -5.0], [-3.0, 4.0]])  # norm 5 = r̄
    out, _ = s(a, preserve_norm=True)
    # ICV: normalise(a/‖a‖ + λ u) · ‖a‖.
    icv = torch.nn.functional.normalize(a / 5.0 + lam * u, dim=-1) * 5.0
    assert torch.allclose(out, icv, atol=1e-5)


def _xor(n: int, seed: int, shift: float = 1.0) -> tuple[torch.Tensor, torch.Tensor]:
    """Rows whose class is the sign of x0·x1 (no linear probe separates them), the positives shifted by ``shift``
    along dim 2 (a mean difference to steer along), plus a noise dimension."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 4, generator=g)
    inside = x[:, 0] * x[:, 1] > 0
    return x[inside] + T([0.0, 0.0, shift, 0.0]), x[~inside]


def test_mlp_gates_equal_the_probes_predict_proba():
    from matsteer.core.baselines import MLPGates, fit_mlp_probe

    pos, neg = _xor(300, 0)
    probes = [fit_mlp_probe(neg, pos, hidden=8, seed=0), fit_mlp_probe(pos, neg, hidden=8, seed=1)]
    rows = torch.randn(50, 4, generator=torch.Generator().manual_seed(9)) * 3.0
    want = torch.stack([torch.from_numpy(p.predict_proba(rows.double().numpy())[:, 1]) for p in probes], -1)
    got = MLPGates.from_probes(probes)(rows)
    assert got.shape == (50, 2) and torch.allclose(got.double(), want, atol=1e-5)
    # The gate is non-linear: on pure XOR it opens on the negatives where the logistic probe is near chance.
    from matsteer.core.probes import auc, fit_logistic_gate

    pos, neg = _xor(300, 0, shift=0.0)
    gates = MLPGates.from_probes([fit_mlp_probe(neg, pos, seed=0)])
    w, b = fit_logistic_gate(neg, pos)
    assert auc(gates(pos)[:, 0], gates(neg)[:, 0]) > 0.95
    assert auc(pos @ w + b, neg @ w + b) < 0.65


def test_nl_iti_gate_and_edit_by_hand():
    import numpy as np

    from matsteer.core.baselines import fit_mlp_probe, nl_iti
    from matsteer.core.steerer import ModuleGatedSteerer

    pos, neg = _xor(400, 1)
    dpos, dneg = pos[:40] + 1.0, neg[:30]  # the direction's activations differ from the gates' rows
    alpha = 2.5
    s = nl_iti({"x": (dpos, dneg)}, alpha, gate_data={"x": (pos, neg)}, hidden=8, seed=4)
    assert isinstance(s, ModuleGatedSteerer) and s.attributes == ["x"]
    # Direction: ITI's α σ u from the direction data, by hand.
    mu = (dpos.double().mean(0) - dneg.double().mean(0)).numpy()
    u = mu / np.linalg.norm(mu)
    sigma = np.std(np.concatenate([dpos.double().numpy(), dneg.double().numpy()]) @ u)
    theta = alpha * sigma * u
    assert np.allclose(s.theta.detach()[0].double().numpy(), theta, atol=1e-4)
    # Gate: the seeded MLP probe (open on negatives) on the same rows.
    a = torch.randn(7, 3, 4, generator=torch.Generator().manual_seed(2))
    probe = fit_mlp_probe(neg, pos, hidden=8, seed=4)
    gate = probe.predict_proba(a.reshape(-1, 4).double().numpy())[:, 1].reshape(7, 3, 1)
    with torch.no_grad():
        out, gates = s(a, preserve_norm=False)
        on, forced = s(a, s.scale_vector(global_multiplier=2.0), s.forced_vector({"x": True}), preserve_norm=False)
    assert np.allclose(gates.double().numpy(), gate, atol=1e-5)
    assert np.allclose(out.double().numpy(), a.double().numpy() + gate * theta, atol=1e-4)
    # Forcing and multipliers work as on any steerer.
    assert torch.equal(forced, torch.ones(7, 3, 1)) and np.allclose(on.double().numpy(), a.double().numpy() + 2 * theta,
                                                                    atol=1e-4)


def test_nl_iti_is_deterministic_for_a_seed():
    from matsteer.core.baselines import nl_iti

    pos, neg = _xor(300, 2)
    data = {"x": (pos, neg), "y": (neg + 0.5, pos)}
    a = torch.randn(20, 4, generator=torch.Generator().manual_seed(5))
    s1, s2 = nl_iti(data, 1.0, hidden=8, seed=0), nl_iti(data, 1.0, hidden=8, seed=0)
    assert torch.equal(s1.theta, s2.theta) and torch.equal(s1.gates(a), s2.gates(a))
    assert not torch.equal(s1.gates(a), nl_iti(data, 1.0, hidden=8, seed=1).gates(a))
    with pytest.raises(ConfigError):
        nl_iti(data, 1.0, gate_data={"x": (pos, neg)})


def test_icv_and_nl_iti_do_not_touch_global_rng():
    from matsteer.core.baselines import in_context_vector, nl_iti
    from matsteer.core.contrast import ContrastSet

    pos, neg = _xor(100, 3)
    state = torch.get_rng_state()
    in_context_vector({"x": ContrastSet(pos, neg, T([[0, 0], [1, 1], [2, 2]]))})
    nl_iti({"x": (pos, neg)}, hidden=4, max_iter=20)
    assert torch.equal(state, torch.get_rng_state())


def test_module_gated_steerer_matches_steerer_and_is_not_saved(tmp_path):
    from matsteer.activations.sites import Site
    from matsteer.core.steerer import ModuleGatedSteerer
    from matsteer.errors import ArtifactError
    from matsteer.store.artifacts import save_steerer

    g = torch.Generator().manual_seed(6)
    linear = Steerer(["x", "y"], 5, ["good x", "good y"], generator=g)
    w, b = linear.gate_weight.detach(), linear.gate_bias.detach()

    class Linear(torch.nn.Module):
        def forward(self, a: torch.Tensor) -> torch.Tensor:
            return torch.sigmoid(a @ w.T + b)

    gated = ModuleGatedSteerer(["x", "y"], linear.theta.detach(), Linear(), ["good x", "good y"])
    a = torch.randn(3, 4, 5, generator=g).to(torch.bfloat16)
    scale, forced = linear.scale_vector({"x": 0.5}), linear.forced_vector({"y": False})
    for norm in (True, False):
        assert torch.equal(gated(a, scale, forced, norm)[0], linear(a, scale, forced, norm)[0])
        assert torch.equal(gated(a, scale, forced, norm)[1], linear(a, scale, forced, norm)[1])
    assert torch.equal(gated.gates(a), linear.gates(a))
    assert bool(torch.isnan(gated.gate_weight).all())  # the linear gate is a placeholder
    with pytest.raises(ArtifactError):
        save_steerer(tmp_path / "s", gated, site=Site(1, "residual"), model_name="m", model_hash="h")
    with pytest.raises(ConfigError):
        ModuleGatedSteerer(["x"], torch.zeros(2, 5), Linear())
