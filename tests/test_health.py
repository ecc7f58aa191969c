"""Training health against hand computations, the planted-problem test of the default training, and the controls."""

from __future__ import annotations

import math

import pytest
import torch

from matsteer.core.attributes import AttributeData
from matsteer.core.baselines import ALWAYS_ON_BIAS, probe_gated_mean_difference, random_direction_steerer
from matsteer.core.config import TrainConfig
from matsteer.core.health import SATURATION_LOGIT, assess, health_table, training_health
from matsteer.core.losses import mmd2
from matsteer.core.probes import auc, fit_logistic_gate
from matsteer.core.steerer import Steerer, apply_steering
from matsteer.core.training import train_steerer

# ---- AUC and probes ---------------------------------------------------------------------------------------


def test_auc_matches_pair_counting():
    pos = torch.tensor([0.1, 0.4, 0.4, 0.9])
    neg = torch.tensor([0.4, 0.8, 0.05])
    pairs = [(1.0 if n > p else 0.5 if n == p else 0.0) for n in neg.tolist() for p in pos.tolist()]
    assert auc(pos, neg) == pytest.approx(sum(pairs) / len(pairs), abs=1e-12)
    assert auc(torch.zeros(3), torch.ones(2)) == 1.0 and auc(torch.ones(3), torch.zeros(2)) == 0.0


def test_logistic_gate_acts_on_raw_activations():
    g = torch.Generator().manual_seed(0)
    base = torch.randn(400, 5, generator=g) * torch.tensor([1.0, 50.0, 1.0, 1.0, 1.0]) + 100.0
    shut, opened = base[:200], base[200:] + torch.tensor([3.0, 0, 0, 0, 0])
    w, b = fit_logistic_gate(opened, shut)
    assert auc(shut @ w + b, opened @ w + b) > 0.95
    assert abs(float(w[0])) > 10 * abs(float(w[1]))  # the discriminating axis, not the high-variance one


# ---- health metrics on a hand-made steerer ----------------------------------------------------------------


def _toy_steerer() -> Steerer:
    s = Steerer(["a", "b"], 2, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        s.theta.copy_(torch.tensor([[1.0, 0.0], [0.0, 2.0]]))
        s.gate_weight.copy_(torch.tensor([[1.0, 0.0], [0.0, 0.0]]))
        s.gate_bias.copy_(torch.tensor([0.0, -20.0]))
    return s


def test_health_matrices_match_hand_computation():
    s = _toy_steerer()
    a = AttributeData("a", torch.tensor([[-1.0, 0.0], [-2.0, 1.0]]), torch.tensor([[1.0, 0.0], [3.0, 1.0]]))
    b = AttributeData("b", torch.tensor([[0.0, 1.0]]), torch.tensor([[0.0, -1.0]]))
    init = torch.tensor([[1.0, 1.0], [0.0, 0.0]])
    h = training_health(s, [b, a], sigma=2.0, theta_init=init, neutral=torch.tensor([[0.0, 0.0]]))
    sig = lambda v: 1 / (1 + math.exp(-v))  # noqa: E731
    assert h.gate_mean["a +"] == pytest.approx([(sig(-1) + sig(-2)) / 2, sig(-20)])
    assert h.gate_mean["a -"] == pytest.approx([(sig(1) + sig(3)) / 2, sig(-20)])
    assert h.gate_mean["neutral"] == pytest.approx([0.5, sig(-20)])
    assert h.gate_auc[0][0] == 1.0 and h.gate_auc[1][1] == 0.5  # gate b is constant: ties count half
    # θ_a = (1, 0) against a's mean difference (-1.5, 0.5) - (2, 0.5) = (-3.5, 0): cos -1; against b's (0, 2): 0.
    assert h.theta_cos[0] == pytest.approx([-1.0, 0.0])
    assert h.theta_cos[1] == pytest.approx([0.0, 1.0])
    assert h.saturated == pytest.approx([0.0, 1.0])  # |b logit| = 20 > SATURATION_LOGIT on every row
    assert SATURATION_LOGIT < 20
    assert h.theta_norm == pytest.approx([1.0, 2.0])
    assert h.theta_init_cos == [pytest.approx(1 / math.sqrt(2)), None]
    with torch.no_grad():
        steered, _ = apply_steering(a.negatives, s.theta, s.gate_weight, s.gate_bias)
    assert h.mmd_steered[0] == pytest.approx(float(mmd2(a.positives, steered, 2.0)))
    assert h.mmd_unsteered[0] == pytest.approx(float(mmd2(a.positives, a.negatives, 2.0)))
    text = "\n".join(h.verdicts)
    assert "b: 100% of its gate logits are saturated" in text
    assert "a: θ points along its own mean difference at cos -1.00" in text
    assert "a: θ is still near its initialisation" in text
    assert "a +" in health_table(h) and "⚠" in health_table(h)


def test_assess_flags_swapped_roles():
    s = _toy_steerer()
    # Gate a opens on b's negatives (x = 5) more than on a's own negatives.
    a = AttributeData("a", torch.tensor([[-3.0, 0.0]]), torch.tensor([[0.5, 0.0]]))
    b = AttributeData("b", torch.tensor([[0.0, 1.0]]), torch.tensor([[5.0, -1.0]]))
    h = training_health(s, [a, b], sigma=1.0)
    assert any(v.startswith("a: swapped roles — its gate opens more on b -") for v in assess(h))


# ---- the planted problem ----------------------------------------------------------------------------------


def planted(seed: int, T: int = 3, d: int = 32, n: int = 600, norm: float = 150.0):
    """Per attribute t: positives around a point of norm ~150; negatives shifted by -30·u_t (a shift axis with
    large noise, std 20) and +3·v_t (a quiet discriminating axis, std 0.5). The shift to recover is the mean
    difference (≈ 30 u_t); the gate must find v_t. Directions are fixed; ``seed`` draws the points."""
    q, _ = torch.linalg.qr(torch.randn(d, d, generator=torch.Generator().manual_seed(1234)))
    mu = q[:, 0] * norm
    g = torch.Generator().manual_seed(seed)
    out = []

    def draw(u: torch.Tensor, v: torch.Tensor, o: torch.Tensor) -> torch.Tensor:
        z = torch.randn(n, d, generator=g) * 2.0 + torch.randn(n, 1, generator=g) * 20.0 * u
        z = z - (z @ v).unsqueeze(1) * v * 0.75
        return mu + 40.0 * o + z

    for t in range(T):
        u, v, o = q[:, 1 + 3 * t], q[:, 2 + 3 * t], q[:, 3 + 3 * t]
        out.append(AttributeData(f"a{t}", draw(u, v, o), draw(u, v, o) - 30.0 * u + 3.0 * v))
    return out


def test_default_training_recovers_planted_shift_and_gate():
    data, held_out = planted(0), planted(1)
    result = train_steerer(data, TrainConfig(), progress=False)
    h = training_health(result.steerer, held_out, sigma=result.sigma_used, theta_init=result.theta_init)
    for t in range(3):
        assert h.theta_cos[t][t] > 0.9, h.theta_cos
        assert h.gate_auc[t][t] > 0.95, h.gate_auc
        assert h.theta_cos[t][t] == max(h.theta_cos[t])
        assert h.mmd_steered[t] < 0.8 * h.mmd_unsteered[t]
    assert max(h.saturated) < 0.05
    assert h.healthy, h.verdicts


def test_paper_dynamics_fail_the_planted_problem():
    """The paper's objective as written (own gate on own rows, raw gate input, θ ~ randn), even with a working
    kernel width: gates saturate and swap, θ does not find the shift. This is what the default fixes."""
    data, held_out = planted(0), planted(1)
    result = train_steerer(data, TrainConfig.preset("paper", sigma="median"), progress=False)
    h = training_health(result.steerer, held_out, sigma=result.sigma_used, theta_init=result.theta_init)
    assert not h.healthy
    assert min(h.own_gate_auc) < 0.95 and min(h.theta_cos[t][t] for t in range(3)) < 0.9


# ---- controls ---------------------------------------------------------------------------------------------


def test_random_direction_steerer_matches_definition():
    s = random_direction_steerer(["x", "y"], 16, torch.tensor([3.0, 5.0]), seed=4)
    assert s.theta.norm(dim=1).tolist() == pytest.approx([3.0, 5.0])
    g = torch.Generator().manual_seed(4)
    raw = torch.randn(2, 16, generator=g, dtype=torch.float64)
    expected = (raw / raw.norm(dim=1, keepdim=True) * torch.tensor([[3.0], [5.0]], dtype=torch.float64)).float()
    assert torch.equal(s.theta.detach(), expected)
    assert torch.equal(s.gate_weight.detach(), torch.zeros(2, 16))
    assert s.gate_bias.tolist() == [ALWAYS_ON_BIAS] * 2
    other = random_direction_steerer(["x", "y"], 16, [3.0, 5.0], seed=5)
    assert not torch.equal(s.theta, other.theta)


def test_probe_gated_mean_difference_is_caa_behind_a_probe():
    g = torch.Generator().manual_seed(1)
    pos = torch.randn(300, 4, generator=g) + 10.0
    neg = torch.randn(300, 4, generator=g) + torch.tensor([12.0, 10.0, 10.0, 10.0])
    s = probe_gated_mean_difference({"attr": (pos, neg)}, multiplier=2.0)
    assert torch.allclose(s.theta[0], 2.0 * (pos.mean(0) - neg.mean(0)).float(), atol=1e-5)
    gates = s.gates(torch.cat([pos, neg]))[:, 0]
    assert auc(gates[:300], gates[300:]) > 0.9
    w, b = fit_logistic_gate(neg, pos)
    assert torch.equal(s.gate_weight[0].detach(), w) and float(s.gate_bias[0]) == pytest.approx(b)
