"""Gate targeting: the measure (hand computations), the background gate term and the bias calibration (planted
problem), and that the paper's objective and the default train exactly as before with the new options off."""

from __future__ import annotations

import math

import pytest
import torch

from matsteer.core.attributes import AttributeData
from matsteer.core.config import PRESETS, TrainConfig
from matsteer.core.health import (
    GateTargeting,
    gate_targeting,
    precision_at_recall,
    targeting_table,
    training_health,
)
from matsteer.core.losses import background_gate_grad, background_gate_loss
from matsteer.core.steerer import Steerer
from matsteer.core.training import calibrate_gates, calibrated_bias, calibration_split, train_steerer
from matsteer.errors import ConfigError

# ---- the measure ------------------------------------------------------------------------------------------


def _steerer() -> Steerer:
    s = Steerer(["toxicity", "b"], 2, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        s.theta.copy_(torch.tensor([[1.0, 0.0], [0.0, 1.0]]))
        s.gate_weight.copy_(torch.tensor([[1.0, 0.0], [0.0, 1.0]]))
        s.gate_bias.copy_(torch.tensor([0.0, 0.0]))
    return s


def test_targeting_matches_hand_computation():
    s = _steerer()
    tox = AttributeData("toxicity", torch.tensor([[-2.0, 0.0], [1.0, 0.0]]), torch.tensor([[2.0, 0.0], [3.0, 0.0],
                                                                                           [-1.0, 0.0]]))
    b = AttributeData("b", torch.tensor([[0.0, -3.0]]), torch.tensor([[0.0, 3.0]]))
    neutral = torch.tensor([[-5.0, -5.0], [5.0, -5.0]])
    template = torch.tensor([[0.0, 4.0]])
    para = (torch.tensor([[4.0, 0.0]]), torch.tensor([[-4.0, 0.0], [0.5, 0.0]]))
    tg = gate_targeting(s, [b, tox], neutral=neutral, template=template, paradetox=para)
    sig = lambda v: 1 / (1 + math.exp(-v))  # noqa: E731
    assert tg.mean["own negatives"] == pytest.approx([(sig(2) + sig(3) + sig(-1)) / 3, sig(3)])
    assert tg.mean["own positives"] == pytest.approx([(sig(-2) + sig(1)) / 2, sig(-3)])
    # Gate 0 on b's rows: both have x = 0 -> 0.5 (opens: ≥ threshold); gate 1 on toxicity's 5 rows: all y = 0.
    assert tg.mean["other attributes"] == pytest.approx([0.5, 0.5])
    assert tg.open_share["own negatives"] == pytest.approx([2 / 3, 1.0])
    assert tg.open_share["own positives"] == pytest.approx([0.5, 0.0])
    assert tg.open_share["neutral"] == pytest.approx([0.5, 0.0])
    assert tg.open_share["template"] == pytest.approx([1.0, 1.0])  # x = 0: gate 0 at exactly 0.5
    # False-open: the mean of the four shut groups' open shares.
    assert tg.false_open == pytest.approx([(0.5 + 1.0 + 0.5 + 1.0) / 4, (0.0 + 1.0 + 0.0 + 1.0) / 4])
    assert tg.recall == pytest.approx([2 / 3, 1.0])
    assert tg.precision == pytest.approx([2 / 3, 1.0])  # gate 0 opens 2 negatives and 1 positive
    assert tg.mean["ParaDetox toxic"][0] == pytest.approx(sig(4))
    assert tg.mean["ParaDetox non-toxic"][0] == pytest.approx((sig(-4) + sig(0.5)) / 2)
    met = tg.met()
    assert met["own_negatives_min"] == [True, True] and met["own_positives_max"] == [False, True]
    assert met["background_max"] == [False, False]
    assert met["paradetox_toxic_min"] == [True, None] and met["paradetox_non_toxic_max"] == [False, None]
    again = GateTargeting.from_dict(tg.to_dict())
    assert again.mean == tg.mean and again.false_open == tg.false_open
    table = targeting_table(tg.to_dict())
    assert "| own negatives |" in table and "| template |" in table and "missed" in table


def test_precision_at_recall_counts_rows_above_the_cut():
    neg = torch.tensor([5.0, 4.0, 1.0, 0.0])
    pos = torch.tensor([4.5, 3.0, 2.0, -1.0])
    assert precision_at_recall(neg, pos, 0.5) == pytest.approx(2 / 3)  # cut at 4: {5, 4} vs {4.5}
    assert precision_at_recall(neg, pos, 1.0) == pytest.approx(4 / 7)
    assert precision_at_recall(neg, pos, 0.0) is None


def test_targeting_probe_precision_is_the_ceiling_at_the_same_recall():
    g = torch.Generator().manual_seed(0)
    mk = lambda: AttributeData("a", torch.randn(300, 3, generator=g), torch.randn(300, 3, generator=g) + 1.0)  # noqa: E731
    train, dev = mk(), mk()
    s = Steerer(["a"], 3, generator=g)  # a random gate
    tg = gate_targeting(s, [dev], train=[train])
    p = tg.probe_precision[0]
    assert p is not None and tg.precision[0] is not None and 0.5 < p <= 1.0
    assert p > tg.precision[0] - 0.05  # the probe knows the direction; a random gate does not


def test_health_carries_the_targeting_table():
    s = _steerer()
    data = [AttributeData("toxicity", torch.tensor([[-2.0, 0.0]]), torch.tensor([[2.0, 0.0]])),
            AttributeData("b", torch.tensor([[0.0, -3.0]]), torch.tensor([[0.0, 3.0]]))]
    h = training_health(s, data, sigma=1.0, neutral=torch.tensor([[0.0, -9.0]]))
    assert h.targeting is not None and "neutral" in h.targeting["mean"]
    assert type(h).from_dict(h.to_dict()).targeting == h.targeting


# ---- the background term ----------------------------------------------------------------------------------


def test_background_gate_grad_matches_autograd():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(7, 5, generator=g, dtype=torch.float64)
    w = torch.randn(3, 5, generator=g, dtype=torch.float64, requires_grad=True)
    b = torch.randn(3, generator=g, dtype=torch.float64, requires_grad=True)
    (background_gate_loss(x @ w.T + b).sum() * 0.7).backward()
    value, gw, gb = background_gate_grad(x, w.detach(), b.detach(), 0.7)
    assert torch.allclose(value, background_gate_loss(x @ w.detach().T + b.detach()))
    assert w.grad is not None and b.grad is not None
    assert torch.allclose(gw, w.grad) and torch.allclose(gb, b.grad)


def planted_with_background(seed: int, T: int = 3, d: int = 32, n: int = 600, n_bg: int = 600):
    """The planted problem of tests/test_health.py (per attribute an offset o_t, a noisy shift axis u_t, a quiet
    discriminating axis v_t) and background tokens that lie off both classes: far along an axis no attribute uses
    (o_bg), with every attribute's offset and on the open side of every v_t, where a gate trained on the classes
    alone has no reason to shut."""
    q, _ = torch.linalg.qr(torch.randn(d, d, generator=torch.Generator().manual_seed(1234)))
    mu = q[:, 0] * 150.0
    g = torch.Generator().manual_seed(seed)

    def draw(u: torch.Tensor, v: torch.Tensor, o: torch.Tensor, rows: int) -> torch.Tensor:
        z = torch.randn(rows, d, generator=g) * 2.0 + torch.randn(rows, 1, generator=g) * 20.0 * u
        z = z - (z @ v).unsqueeze(1) * v * 0.75
        return mu + 40.0 * o + z

    data = []
    for t in range(T):
        u, v, o = q[:, 1 + 3 * t], q[:, 2 + 3 * t], q[:, 3 + 3 * t]
        data.append(AttributeData(f"a{t}", draw(u, v, o, n), draw(u, v, o, n) - 30.0 * u + 3.0 * v))
    o_bg = q[:, 1 + 3 * T]
    bg = mu + 40.0 * o_bg + torch.randn(n_bg, d, generator=g) * 2.0
    bg = bg + sum(40.0 * q[:, 3 + 3 * t] + 6.0 * q[:, 2 + 3 * t] for t in range(T))
    return data, bg


def _bg_gate_mean(steerer: Steerer, bg: torch.Tensor) -> list[float]:
    with torch.no_grad():
        return steerer.gates(bg).mean(0).tolist()


def test_background_term_shuts_gates_where_the_default_opens():
    (data, bg), (held, held_bg) = planted_with_background(0), planted_with_background(1)
    today = train_steerer(data, TrainConfig(), progress=False)
    new = train_steerer(data, TrainConfig(lambda_background=1.0), progress=False, background=bg)
    assert min(_bg_gate_mean(today.steerer, held_bg)) > 0.5  # today's gates open on the background
    assert max(_bg_gate_mean(new.steerer, held_bg)) < 0.1  # the new ones stay shut
    # What the gates rank and where θ points are kept (within 0.05 of today's AUC at the same 100 epochs: shutting
    # the background first pulls weight off the discriminating axis; with 300 epochs both reach AUC ≥ 0.99).
    h = training_health(new.steerer, held, sigma=new.sigma_used, neutral=held_bg)
    h0 = training_health(today.steerer, held, sigma=today.sigma_used, neutral=held_bg)
    for t in range(3):
        assert h.own_gate_auc[t] > max(0.9, h0.own_gate_auc[t] - 0.05), (h.own_gate_auc, h0.own_gate_auc)
        assert h.theta_cos[t][t] > 0.9
        assert h.gate_mean[f"a{t} -"][t] > 0.75  # still open on what it should steer
    assert new.background_loss is not None and len(new.background_loss) == 100
    assert new.background_loss[-1][0] < new.background_loss[0][0]


def test_background_term_autograd_path_matches_closed_form():
    data, bg = planted_with_background(0, n=64, n_bg=64)
    cfg = TrainConfig(epochs=2, lambda_background=1.0, seed=2)
    a = train_steerer(data, cfg, progress=False, background=bg)
    b = train_steerer(data, cfg, progress=False, background=bg, gradients="autograd")
    for x, y in ((a.steerer.gate_weight, b.steerer.gate_weight), (a.steerer.gate_bias, b.steerer.gate_bias),
                 (a.steerer.theta, b.steerer.theta)):
        torch.testing.assert_close(x.detach(), y.detach(), rtol=1e-3, atol=1e-4)


# ---- the calibration --------------------------------------------------------------------------------------


def test_calibrated_bias_opens_the_stated_share():
    logits = torch.tensor([3.0, -1.0, 0.5, 2.0, -4.0, 1.0, 0.0, -2.0, 5.0, -3.0]) + 0.7
    for rate, opened in ((0.05, 0), (0.1, 1), (0.25, 2), (0.5, 5), (0.95, 9)):
        b = calibrated_bias(logits, 0.7, rate)
        assert int(((logits - 0.7 + b) >= 0).sum()) == opened
    with pytest.raises(ConfigError):
        calibrated_bias(logits, 0.0, 1.0)


def test_calibration_reaches_its_rate_on_held_out_rows():
    """Calibrated on 2000 rows, the false-open rate on 20000 fresh rows is the target within 3 standard errors."""
    g = torch.Generator().manual_seed(0)
    s = Steerer(["a"], 4, generator=g)
    with torch.no_grad():
        s.gate_bias.fill_(2.0)
    cal, fresh = torch.randn(2000, 4, generator=g), torch.randn(20000, 4, generator=g)
    for rate in (0.02, 0.05, 0.2):
        out, info = calibrate_gates(s, [cal], None, rate)
        got = float((out.gates(fresh)[:, 0] >= 0.5).float().mean())
        se = math.sqrt(rate * (1 - rate) * (1 / 2000 + 1 / 20000))
        assert abs(got - rate) < 3 * se, (rate, got)
        assert info.open_share["own positives"][0] == pytest.approx(math.floor(rate * 2000) / 2000)
        assert torch.equal(out.gate_weight, s.gate_weight) and float(s.gate_bias.detach()[0]) == 2.0  # a copy; W kept


def test_sharpened_calibration_keeps_the_ranking_and_the_rate():
    g = torch.Generator().manual_seed(1)
    s = Steerer(["a"], 4, generator=g)
    cal, fresh = torch.randn(4000, 4, generator=g), torch.randn(4000, 4, generator=g)
    soft, _ = calibrate_gates(s, [cal], None, 0.1)
    sharp, info = calibrate_gates(s, [cal], None, 0.1, sharpness=8.0)
    assert info.sharpness == 8.0 and torch.allclose(sharp.gate_weight, 8.0 * s.gate_weight)
    with torch.no_grad():
        a, b = soft.gates(fresh)[:, 0], sharp.gates(fresh)[:, 0]
    assert torch.equal(a >= 0.5, b >= 0.5)  # the same tokens open
    assert float(b[b < 0.5].mean()) < float(a[a < 0.5].mean())  # and the shut ones are shut harder


def test_trained_calibration_holds_on_fresh_data():
    (data, bg), (held, held_bg) = planted_with_background(0), planted_with_background(1, n=3000, n_bg=3000)
    r = train_steerer(data, TrainConfig(lambda_background=1.0, calibrate_fpr=0.05), progress=False, background=bg)
    assert r.calibration is not None
    n_cal = min(r.calibration.rows["own positives"])  # 120 held-out positives per attribute
    se = math.sqrt(0.05 * 0.95 * (1 / n_cal + 1 / 3000))
    with torch.no_grad():
        for t, a in enumerate(held):
            pos_open = float((r.steerer.gates(a.positives)[:, t] >= 0.5).float().mean())
            bg_open = float((r.steerer.gates(held_bg)[:, t] >= 0.5).float().mean())
            assert pos_open < 0.05 + 3 * se and bg_open < 0.05 + 3 * se
            assert max(pos_open, bg_open) > 0.05 - 3 * se  # the binding group sits at the rate
            assert float((r.steerer.gates(a.negatives)[:, t] >= 0.5).float().mean()) > 0.5  # recall at 5 %: ~0.6


def test_calibration_split_is_seeded_and_disjoint():
    data, bg = planted_with_background(0, n=50, n_bg=20)
    tr, tr_bg, held, held_bg = calibration_split(data, bg, 0.2, seed=3)
    assert [a.positives.shape[0] for a in tr] == [40] * 3 and [h.shape[0] for h in held] == [10] * 3
    assert tr_bg is not None and held_bg is not None and tr_bg.shape[0] == 16 and held_bg.shape[0] == 4
    assert all(torch.equal(a.negatives, b.negatives) for a, b in zip(tr, data))
    both = torch.cat([tr[0].positives, held[0]])
    assert torch.equal(both.sort(0).values, data[0].positives.sort(0).values)
    again = calibration_split(data, bg, 0.2, seed=3)
    assert torch.equal(again[2][0], held[0])


# ---- the old objectives are untouched ---------------------------------------------------------------------


@pytest.mark.parametrize("preset", ["default", "paper"])
def test_new_options_off_train_exactly_as_before(preset):
    """With the background term and the calibration off (the default and the paper), a background passed in is
    ignored: bitwise the same steerer and history as without it."""
    data, bg = planted_with_background(0, n=64, n_bg=64)
    cfg = TrainConfig.preset(preset, epochs=3)
    assert cfg.lambda_background == 0 and cfg.calibrate_fpr is None
    a = train_steerer(data, cfg, progress=False)
    b = train_steerer(data, cfg, progress=False, background=bg)
    for x, y in ((a.steerer.theta, b.steerer.theta), (a.steerer.gate_weight, b.steerer.gate_weight),
                 (a.steerer.gate_bias, b.steerer.gate_bias)):
        assert torch.equal(x, y)
    assert a.history.to_dict() == b.history.to_dict()
    assert a.background_loss is None and a.calibration is None


def test_targeted_preset_and_validation():
    assert PRESETS["targeted"]["lambda_background"] > 0 and PRESETS["targeted-calibrated"]["calibrate_fpr"] == 0.1
    data, _ = planted_with_background(0, n=32, n_bg=8)
    with pytest.raises(ConfigError, match="background"):
        train_steerer(data, TrainConfig.preset("targeted", epochs=1), progress=False)
    for bad in ({"lambda_background": -1.0}, {"calibrate_fpr": 1.5}, {"calibration_share": 0.0},
                {"background_per_batch": 0}, {"calibrate_sharpness": 0.0}):
        with pytest.raises(ConfigError):
            TrainConfig(**bad).validate()
