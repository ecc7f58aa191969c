"""Trainer: determinism, learning on a toy problem, history, validation, divergence, kernel scale."""

from __future__ import annotations

import math

import pytest
import torch

from matsteer.core.attributes import AttributeData
from matsteer.core.config import TrainConfig
from matsteer.core.history import HISTORY_TERMS, History
from matsteer.core.kernel import activation_moments, kernel_inv_scale, kernel_scale_report, median_sigma
from matsteer.core.losses import loss_terms, mmd2, weight_vector
from matsteer.core.sampling import BatchSampler, sample_subsets
from matsteer.core.steerer import Steerer
from matsteer.core.training import train_steerer
from matsteer.errors import ArtifactError, ConfigError, DataError, TrainingError


def toy(seed: int = 0, T: int = 2, n: int = 96, d: int = 8, scale: float = 6.0) -> list[AttributeData]:
    """Negatives are a shifted copy of the positives (moved from axis t to axis t+2), same norms."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for t in range(T):
        mu = torch.zeros(d)
        mu[t] = scale
        shift = torch.zeros(d)
        shift[(t + 2) % d] = scale
        pos = mu + torch.randn(n, d, generator=g)
        neg = pos[torch.randperm(n, generator=g)] - mu + shift
        out.append(AttributeData(f"attr{t}", pos, neg, positive_side=f"good{t}"))
    return out


FAST = TrainConfig(epochs=3, sigma="median", lr=0.01)


def params(result) -> list[torch.Tensor]:
    s = result.steerer
    return [s.theta.detach().clone(), s.gate_weight.detach().clone(), s.gate_bias.detach().clone()]


# ---- determinism ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("variant", ["paper", "reference"])
def test_same_seed_bitwise_identical_different_seed_differs(variant):
    data = toy()
    cfg = TrainConfig(epochs=3, sigma="median", lr=0.01, loss_variant=variant, seed=5)
    a, b = train_steerer(data, cfg, progress=False), train_steerer(data, cfg, progress=False)
    for x, y in zip(params(a), params(b)):
        assert torch.equal(x, y)
    assert a.history.to_dict() == b.history.to_dict()
    c = train_steerer(data, TrainConfig(**{**cfg.to_dict(), "seed": 6}), progress=False)
    assert not torch.equal(params(a)[0], params(c)[0])


def test_inputs_untouched_and_no_grad():
    data = toy()
    before = [(a.positives.clone(), a.negatives.clone()) for a in data]
    train_steerer(data, FAST, progress=False)
    for a, (p, n) in zip(data, before):
        assert torch.equal(a.positives, p) and torch.equal(a.negatives, n)
        assert a.positives.grad is None and a.negatives.grad is None


@pytest.mark.parametrize("preset", ["paper", "reference", "default"])
def test_fast_path_matches_autograd_adam(preset):
    """The trainer's closed-form gradients + flat Adam follow autograd + torch.optim.Adam on loss_terms, including
    the default's gates on z-scores (W = W_z / s, b = b_z - W·μ), zero θ init and supervised gate term."""
    data = toy(n=40)
    cfg = TrainConfig.preset(preset, epochs=2, sigma=3.0, lr=0.01, seed=3)
    variant = cfg.loss_variant
    got = train_steerer(data, cfg, progress=False)
    # Slow re-implementation with the same init and the same batch indices.
    d, k = 8, cfg.batch_per_side
    init = Steerer(["attr0", "attr1"], d, generator=torch.Generator().manual_seed(cfg.seed))
    mu, sd = activation_moments(data)
    c = float(sd.pow(2).mean().sqrt()) if cfg.theta_lr == "std" else 1.0  # θ = c·θ': θ's lr is c·lr
    theta_p = torch.nn.Parameter(init.theta.detach().clone() * (0.0 if cfg.theta_init == "zero" else 1.0 / c))
    w_z, b_z = torch.nn.Parameter(init.gate_weight.detach().clone()), torch.nn.Parameter(init.gate_bias.detach().clone())
    inv_s, mu = (1 / sd).float(), mu.float()
    if cfg.gate_input == "raw":
        inv_s, mu = torch.ones(d), torch.zeros(d)
    opt = torch.optim.Adam([theta_p, w_z, b_z], lr=cfg.lr, foreach=False)
    sampler = BatchSampler([40, 40], [40, 40], k, cfg.seed, variant == "reference")
    pool_pos = torch.cat([a.positives for a in data])
    pool_neg = torch.cat([a.negatives for a in data])
    lam = weight_vector(cfg.lambdas())
    for _ in range(cfg.epochs):
        pi, ni, ri = sampler.epoch(torch.device("cpu"))
        for b in range(sampler.batches):
            w = w_z * inv_s
            terms = loss_terms(theta_p * c, w, b_z - w @ mu, pool_pos[pi[b]], pool_neg[ni[b]], sigma=3.0, lambdas=lam,
                               variant=variant, pos_mmd=pool_pos[ri[b]] if ri is not None else None)
            opt.zero_grad()
            terms.total.backward()
            opt.step()
    with torch.no_grad():
        w = w_z * inv_s
        expected = [theta_p * c, w, b_z - w @ mu]
    for x, y in zip(params(got), expected):
        torch.testing.assert_close(x, y.detach(), rtol=1e-4, atol=1e-5)


# ---- learning ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("variant", ["paper", "reference"])
def test_loss_decreases_on_toy(variant):
    result = train_steerer(toy(), TrainConfig(epochs=25, lr=0.05, sigma="median", loss_variant=variant), progress=False)
    total = result.history.series("total")
    assert total[-1] < total[0]


def test_theta_moves_negatives_toward_positives():
    data = toy()
    result = train_steerer(data, TrainConfig(epochs=30, lr=0.05, sigma="median"), progress=False)
    hist = result.history
    assert hist.series("mmd")[-1] < 0.5 * hist.series("mmd")[0]
    for a in data:
        with torch.no_grad():
            steered, _ = result.steerer(a.negatives)
        target = a.positives.mean(0)
        assert (steered.mean(0) - target).norm() < 0.5 * (a.negatives.mean(0) - target).norm()
        before = mmd2(a.positives[None], a.negatives[None], result.sigma_used)
        after = mmd2(a.positives[None], steered[None], result.sigma_used)
        assert float(after) < 0.5 * float(before)


# ---- history ----------------------------------------------------------------------------------------------


def test_history_has_every_term_per_attribute_per_epoch_with_dev():
    data, dev = toy(seed=0), toy(seed=1, n=30)
    result = train_steerer(data, TrainConfig(epochs=4, sigma="median", lr=0.01), dev=list(reversed(dev)), progress=False)
    h = result.history
    assert h.epochs == 4 and h.attributes == ["attr0", "attr1"]
    for split in (h.train, h.dev):
        assert set(split) == set(HISTORY_TERMS)
        for term in HISTORY_TERMS:
            assert len(split[term]) == 4
            assert all(len(row) == 2 and all(math.isfinite(v) for v in row) for row in split[term])
    # total per attribute is the λ-weighted sum of the terms
    lam = result.config.lambdas()
    row = [sum(lam[k] * h.train[k][-1][t] for k in ("mmd", "pos", "sparse", "ortho", "gate")) for t in range(2)]
    assert h.train["total"][-1] == pytest.approx(row)
    assert h.series("mmd", "attr1") == [r[1] for r in h.train["mmd"]]
    assert h.series("total", split="dev") == pytest.approx([sum(r) for r in h.dev["total"]])
    final = h.final()
    assert final is not None and set(final["mmd"]) == {"attr0", "attr1", "all"}
    back = History.from_dict(h.to_dict())
    assert back == h
    with pytest.raises(ArtifactError):
        History.from_dict({"attributes": ["a"]})
    with pytest.raises(ConfigError):
        h.series("nope")


def test_result_metadata():
    data = toy(n=50)
    result = train_steerer(data, TrainConfig(epochs=2, sigma=2.5), progress=True)
    assert result.steps_per_epoch == math.ceil(50 / 16)
    assert result.steps == 2 * result.steps_per_epoch
    assert result.sigma_used == 2.5 and result.kernel_inv_scale is None
    assert result.steerer.positive_sides == ["good0", "good1"]
    assert result.steps_per_s > 0
    assert result.final_losses()["dev"] is None


def test_standardize_trains():
    data = toy()
    result = train_steerer(data, TrainConfig(epochs=2, standardize=True, lr=0.01), progress=False)
    assert result.kernel_inv_scale is not None and result.kernel_inv_scale.shape == (8,)
    plain = train_steerer(data, TrainConfig(epochs=2, lr=0.01), progress=False)
    assert not torch.equal(params(result)[0], params(plain)[0])


# ---- validation -------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "overrides,match",
    [
        ({"sigma": 0.0}, "sigma"),
        ({"sigma": -1.0}, "sigma"),
        ({"sigma": "mean"}, "sigma"),
        ({"sigma": float("nan")}, "sigma"),
        ({"lambda_pos": -0.1}, "lambda_pos"),
        ({"lambda_ortho": float("inf")}, "lambda_ortho"),
        ({"epochs": 0}, "epochs"),
        ({"lr": 0.0}, "lr"),
        ({"batch_per_side": 0}, "batch_per_side"),
        ({"batch_per_side": 200}, "batch_per_side"),
        ({"loss_variant": "papers"}, "loss_variant"),
        ({"device": "cuda:0"} if not torch.cuda.is_available() else {"device": "nonsense"}, "device|Unknown"),
    ],
)
def test_bad_config_raises(overrides, match):
    with pytest.raises(ConfigError, match=match):
        train_steerer(toy(), TrainConfig(**{**TrainConfig().to_dict(), **overrides}), progress=False)


def test_batch_larger_than_smallest_set_names_attribute():
    data = toy()
    data[1].negatives = data[1].negatives[:10]
    with pytest.raises(ConfigError, match="attr1.*10 negatives"):
        train_steerer(data, TrainConfig(epochs=1), progress=False)


def test_bad_data_raises():
    data = toy()
    data[0].positives = torch.empty(0, 8)
    with pytest.raises(DataError, match="attr0.*positives.*empty"):
        train_steerer(data, FAST, progress=False)
    data = toy()
    data[1].negatives = torch.randn(50, 7)
    with pytest.raises(DataError, match="d=7"):
        train_steerer(data, FAST, progress=False)
    data = toy()
    data[1].positives[3, 2] = float("nan")
    with pytest.raises(DataError, match="NaN/Inf.*row"):
        train_steerer(data, FAST, progress=False)
    data = toy()
    data[0].negatives[0, 0] = float("inf")
    with pytest.raises(DataError, match="attr0.*negatives"):
        train_steerer(data, FAST, progress=False)
    with pytest.raises(DataError, match="No training"):
        train_steerer([], FAST, progress=False)
    with pytest.raises(DataError, match="unique"):
        train_steerer([toy()[0], toy()[0]], FAST, progress=False)
    with pytest.raises(DataError, match="Dev attributes"):
        train_steerer(toy(), FAST, dev=toy(T=3), progress=False)
    with pytest.raises(DataError, match="2-D"):
        train_steerer([AttributeData("x", torch.randn(20), torch.randn(20, 3))], FAST, progress=False)


def test_nan_loss_stops_with_epoch_and_term():
    data = toy()
    data[0].positives = data[0].positives * 1e22  # finite inputs whose squared norms overflow float32
    with pytest.raises(TrainingError, match=r"epoch 1.*mmd"):
        train_steerer(data, TrainConfig(epochs=3, sigma=2.0), progress=False)


def test_cpu_threads_restored():
    before = torch.get_num_threads()
    train_steerer(toy(n=20), TrainConfig(epochs=1, sigma=2.0, cpu_threads=1), progress=False)
    assert torch.get_num_threads() == before
    with pytest.raises(ConfigError, match="cpu_threads"):
        train_steerer(toy(n=20), TrainConfig(epochs=1, cpu_threads=0), progress=False)


def test_config_dict_round_trip():
    cfg = TrainConfig(epochs=7, sigma="median", loss_variant="reference")
    assert TrainConfig.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(ConfigError, match="Unknown training settings"):
        TrainConfig.from_dict({"epochz": 1})


# ---- kernel scale and sampling ----------------------------------------------------------------------------


def test_kernel_scale_report_flags_tiny_sigma_on_large_norms():
    g = torch.Generator().manual_seed(0)
    big = [AttributeData("a", 50 + 3 * torch.randn(200, 64, generator=g), 50 + 3 * torch.randn(200, 64, generator=g))]
    bad = kernel_scale_report(big, 2.0)
    assert bad["mean_offdiag_kernel"] < 1e-6 and "median" in bad["advice"]
    good = kernel_scale_report(big, "median")
    assert good["sigma"] == pytest.approx(good["median_pairwise_distance"])
    assert 0.2 < good["mean_offdiag_kernel"] < 0.9
    std = kernel_scale_report(big, 2.0, standardize=True)
    assert std["median_pairwise_distance"] == pytest.approx(math.sqrt(2), rel=0.1)  # z-score units
    assert std["mean_offdiag_kernel"] > 0.5
    assert median_sigma(big, seed=0) == pytest.approx(good["sigma"])
    inv = kernel_inv_scale(big)
    assert inv.shape == (64,) and bool((inv > 0).all())
    with pytest.raises(ConfigError):
        kernel_scale_report(big, -1.0)


def test_sample_subsets_distinct_and_in_range():
    g = torch.Generator().manual_seed(0)
    sizes = torch.tensor([16, 40, 1000])
    idx = sample_subsets(sizes, 16, 200, g)
    assert idx.shape == (200, 3, 16)
    for t, n in enumerate(sizes.tolist()):
        assert int(idx[:, t].min()) >= 0 and int(idx[:, t].max()) < n
        sorted_idx = idx[:, t].sort(-1).values
        assert bool((sorted_idx[:, 1:] != sorted_idx[:, :-1]).all())  # distinct within a batch
    # full pool when size == k; roughly uniform otherwise
    assert bool((idx[:, 0].sort(-1).values == torch.arange(16)).all())
    counts = torch.bincount(idx[:, 1].reshape(-1), minlength=40).float()
    assert float(counts.min()) > 0.5 * float(counts.mean())


def test_degenerate_fixed_sigma_warns():
    g = torch.Generator().manual_seed(0)
    big = [AttributeData("a", 100 * torch.randn(40, 8, generator=g), 100 * torch.randn(40, 8, generator=g) + 50)]
    with pytest.warns(UserWarning, match="MMD gradient vanishes"):
        train_steerer(big, TrainConfig(epochs=1, sigma=2.0), progress=False)


# ---- the gradient paths -------------------------------------------------------------------------------------


def _same_run(a, b) -> None:
    """Two runs of one config agree up to float rounding: parameters and every history entry."""
    for x, y in zip(params(a), params(b)):
        torch.testing.assert_close(x, y, rtol=1e-4, atol=1e-5)
    for split in ("train", "dev"):
        for term, rows in getattr(a.history, split).items():
            torch.testing.assert_close(torch.tensor(rows), torch.tensor(getattr(b.history, split)[term]),
                                       rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("preset", ["paper", "reference", "default"])
def test_autograd_gradients_match_closed_form(preset):
    """gradients="autograd" differentiates loss_terms itself: the same run as the closed form, up to rounding."""
    data, dev = toy(n=40), toy(seed=1, n=30)
    cfg = TrainConfig.preset(preset, epochs=2, sigma=3.0, lr=0.01, seed=3)
    closed = train_steerer(data, cfg, dev=dev, progress=False)
    auto = train_steerer(data, cfg, dev=dev, progress=False, gradients="autograd")
    _same_run(closed, auto)
    assert auto.steps == closed.steps and auto.sigma_used == closed.sigma_used


@pytest.mark.slow
def test_compiled_gradients_match_closed_form():
    """gradients="compiled": torch.compile of the loss and its gradient (tens of seconds to compile)."""
    data = toy(n=40)
    cfg = TrainConfig(epochs=2, sigma=3.0, lr=0.01, seed=3)
    _same_run(train_steerer(data, cfg, progress=False),
              train_steerer(data, cfg, progress=False, gradients="compiled"))


def test_unknown_gradients_refused():
    with pytest.raises(ConfigError, match="gradients must be one of"):
        train_steerer(toy(), FAST, progress=False, gradients="numeric")
