"""Loss terms against hand computations (explicit loops) on tiny tensors, for both variants."""

from __future__ import annotations

import itertools
import math

import pytest
import torch

from matsteer.core import fused
from matsteer.core.fused import FusedObjective
from matsteer.core.losses import (
    TERMS,
    alignment_loss,
    gaussian_kernel,
    loss_terms,
    mmd2,
    negative_sparsity,
    orthogonality,
    own_gates,
    positive_preservation,
    squared_distances,
)
from matsteer.errors import ConfigError

LAM = {"mmd": 1.0, "pos": 0.9, "sparse": 0.8, "ortho": 0.3, "gate": 0.7}


def lam_vec(dtype=torch.float64) -> torch.Tensor:
    return torch.tensor([LAM[k] for k in TERMS], dtype=dtype)


# ---- hand computations with Python loops ------------------------------------------------------------------


def k_hand(x, y, sigma):
    return math.exp(-sum((float(a) - float(b)) ** 2 for a, b in zip(x, y)) / (2 * sigma**2))


def mmd_hand(xs, ys, sigma):
    n, m = len(xs), len(ys)
    kxx = sum(k_hand(a, b, sigma) for a in xs for b in xs) / n**2
    kyy = sum(k_hand(a, b, sigma) for a in ys for b in ys) / m**2
    kxy = sum(k_hand(a, b, sigma) for a in xs for b in ys) / (n * m)
    return kxx + kyy - 2 * kxy


def sigmoid(v):
    return 1.0 / (1.0 + math.exp(-v))


def gate_hand(a, w, b):
    return sigmoid(sum(float(x) * float(y) for x, y in zip(a, w)) + float(b))


def steer_hand(a, theta, W, bias, preserve):
    T = len(theta)
    out = [float(v) for v in a]
    for t in range(T):
        g = gate_hand(a, W[t], bias[t])
        out = [o + g * float(th) for o, th in zip(out, theta[t])]
    if preserve:
        na = math.sqrt(sum(float(v) ** 2 for v in a))
        no = math.sqrt(sum(v**2 for v in out))
        out = [v * na / no for v in out]
    return out


def cos2(u, v):
    dot = sum(float(a) * float(b) for a, b in zip(u, v))
    nu = math.sqrt(sum(float(a) ** 2 for a in u))
    nv = math.sqrt(sum(float(b) ** 2 for b in v))
    return (dot / (nu * nv)) ** 2


@pytest.fixture
def toy():
    """2 attributes, 3 points per side, d = 2 (float64)."""
    g = torch.Generator().manual_seed(3)
    T, n, d = 2, 3, 2
    return {
        "pos": torch.randn(T, n, d, generator=g, dtype=torch.float64),
        "neg": torch.randn(T, n, d, generator=g, dtype=torch.float64) + 1.0,
        "pos_mmd": torch.randn(T, n, d, generator=g, dtype=torch.float64),
        "theta": torch.randn(T, d, generator=g, dtype=torch.float64),
        "W": torch.randn(T, d, generator=g, dtype=torch.float64),
        "b": torch.randn(T, generator=g, dtype=torch.float64),
        "sigma": 1.5,
    }


# ---- kernel / MMD -----------------------------------------------------------------------------------------


def test_gaussian_kernel_and_distances_match_hand(toy):
    x, y, s = toy["pos"][0], toy["neg"][0], toy["sigma"]
    k = gaussian_kernel(x, y, s)
    sq = squared_distances(x, y)
    for i, j in itertools.product(range(3), range(3)):
        assert sq[i, j].item() == pytest.approx(sum((x[i] - y[j]).pow(2)).item(), abs=1e-12)
        assert k[i, j].item() == pytest.approx(k_hand(x[i], y[j], s), abs=1e-12)


def test_mmd_matches_hand_batched(toy):
    got = mmd2(toy["pos"], toy["neg"], toy["sigma"])
    assert got.shape == (2,)
    for t in range(2):
        assert got[t].item() == pytest.approx(mmd_hand(toy["pos"][t], toy["neg"][t], toy["sigma"]), abs=1e-12)


def test_mmd_unequal_sizes_and_inv_scale():
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(1, 4, 3, generator=g, dtype=torch.float64), torch.randn(1, 2, 3, generator=g, dtype=torch.float64)
    scale = torch.tensor([0.5, 2.0, 1.0], dtype=torch.float64)
    assert mmd2(x, y, 1.3).item() == pytest.approx(mmd_hand(x[0], y[0], 1.3), abs=1e-12)
    assert mmd2(x, y, 1.3, scale).item() == pytest.approx(mmd_hand(x[0] * scale, y[0] * scale, 1.3), abs=1e-12)


def test_mmd_of_identical_sets_is_zero():
    x = torch.randn(3, 16, 8) * 5
    assert torch.allclose(mmd2(x, x.clone(), 2.0), torch.zeros(3), atol=1e-6)
    assert float(mmd2(x, x + 3.0, 2.0).min()) > 0.01


# ---- terms, paper variant ---------------------------------------------------------------------------------


def test_paper_terms_match_hand(toy):
    pos, neg, th, W, b, s = toy["pos"], toy["neg"], toy["theta"], toy["W"], toy["b"], toy["sigma"]
    terms = loss_terms(th, W, b, pos, neg, sigma=s, lambdas=lam_vec(), variant="paper", preserve_norm=True)
    T, n = 2, 3
    for t in range(T):
        steered = [steer_hand(neg[t, i], th, W, b, True) for i in range(n)]
        assert terms.mmd[t].item() == pytest.approx(mmd_hand(pos[t], steered, s), abs=1e-10)
        # own gate on own positives, squared, mean over the batch
        assert terms.pos[t].item() == pytest.approx(sum(gate_hand(pos[t, i], W[t], b[t]) ** 2 for i in range(n)) / n)
        assert terms.sparse[t].item() == pytest.approx(sum(abs(gate_hand(neg[t, i], W[t], b[t])) for i in range(n)) / n)
        # ordered pairs: attribute t's share is Σ_{t'≠t} cos²
        assert terms.ortho[t].item() == pytest.approx(sum(cos2(th[t], th[u]) for u in range(T) if u != t))
    expected_total = sum(LAM[k] * getattr(terms, k).sum().item() for k in TERMS)
    assert terms.total.item() == pytest.approx(expected_total)
    # L_ortho total counts each pair twice
    assert terms.ortho.sum().item() == pytest.approx(2 * cos2(th[0], th[1]))


def test_paper_mmd_without_norm_preservation(toy):
    pos, neg, th, W, b, s = toy["pos"], toy["neg"], toy["theta"], toy["W"], toy["b"], toy["sigma"]
    terms = loss_terms(th, W, b, pos, neg, sigma=s, lambdas=lam_vec(), variant="paper", preserve_norm=False)
    for t in range(2):
        steered = [steer_hand(neg[t, i], th, W, b, False) for i in range(3)]
        assert terms.mmd[t].item() == pytest.approx(mmd_hand(pos[t], steered, s), abs=1e-10)


# ---- terms, reference variant -----------------------------------------------------------------------------


def test_reference_terms_match_hand(toy):
    pos, neg, pm, th, W, b, s = (toy[k] for k in ("pos", "neg", "pos_mmd", "theta", "W", "b", "sigma"))
    terms = loss_terms(th, W, b, pos, neg, sigma=s, lambdas=lam_vec(), variant="reference", pos_mmd=pm)
    T, n = 2, 3
    mmd_total = 0.0
    for t in range(T):
        steered = [steer_hand(neg[t, i], th, W, b, True) for i in range(n)]
        # MMD against the resampled positives, averaged over attributes
        assert terms.mmd[t].item() == pytest.approx(mmd_hand(pm[t], steered, s) / T, abs=1e-10)
        mmd_total += mmd_hand(pm[t], steered, s) / T
    # L_pos / L_sparse: means over ALL gates of ALL positives / negatives of every attribute
    all_pos_g2 = [gate_hand(pos[t, i], W[u], b[u]) ** 2 for t in range(T) for i in range(n) for u in range(T)]
    all_neg_g = [abs(gate_hand(neg[t, i], W[u], b[u])) for t in range(T) for i in range(n) for u in range(T)]
    assert terms.mmd.sum().item() == pytest.approx(mmd_total)
    assert terms.pos.sum().item() == pytest.approx(sum(all_pos_g2) / len(all_pos_g2))
    assert terms.sparse.sum().item() == pytest.approx(sum(all_neg_g) / len(all_neg_g))
    # unordered pairs i < j
    assert terms.ortho.sum().item() == pytest.approx(cos2(th[0], th[1]))
    expected_total = sum(LAM[k] * getattr(terms, k).sum().item() for k in TERMS)
    assert terms.total.item() == pytest.approx(expected_total)


def test_reference_ortho_three_vectors():
    th = torch.randn(3, 5, dtype=torch.float64)
    pairs = sum(cos2(th[i], th[j]) for i in range(3) for j in range(i + 1, 3))
    assert orthogonality(th, "reference").sum().item() == pytest.approx(pairs)
    assert orthogonality(th, "paper").sum().item() == pytest.approx(2 * pairs)


def test_individual_term_functions(toy):
    pos, W, b = toy["pos"], toy["W"], toy["b"]
    g = own_gates(pos, W, b)
    assert g.shape == (2, 3)
    assert g[1, 2].item() == pytest.approx(gate_hand(pos[1, 2], W[1], b[1]))
    assert positive_preservation(g, "paper").shape == (2,)
    full = torch.sigmoid(pos @ W.T + b)  # [T, n, T]
    assert negative_sparsity(full, "paper")[1].item() == pytest.approx(full[1, :, 1].mean().item())
    assert alignment_loss(pos, pos, 1.0, "reference").abs().max().item() < 1e-9


def test_unknown_variant_raises(toy):
    with pytest.raises(ConfigError, match="variant"):
        orthogonality(toy["theta"], "papr")


# ---- gradients --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("variant", ["paper", "reference"])
def test_gradients_reach_only_parameters(variant, toy):
    th, W, b = (toy[k].clone().requires_grad_() for k in ("theta", "W", "b"))
    pos, neg, pm = toy["pos"].clone(), toy["neg"].clone(), toy["pos_mmd"].clone()  # fixed activations
    terms = loss_terms(th, W, b, pos, neg, sigma=1.5, lambdas=lam_vec(), variant=variant,
                       pos_mmd=pm if variant == "reference" else None)
    terms.total.backward()
    for p in (th, W, b):
        assert p.grad is not None and bool(torch.isfinite(p.grad).all()) and float(p.grad.abs().sum()) > 0
    for x in (pos, neg, pm):
        assert x.grad is None and not x.requires_grad
    # The autograd graph's only leaves are θ, W and b.
    leaves = set()
    stack = [terms.total.grad_fn]
    while stack:
        fn = stack.pop()
        if fn is None:
            continue
        if hasattr(fn, "variable"):
            leaves.add(id(fn.variable))
        stack.extend(nxt for nxt, _ in fn.next_functions)
    assert leaves == {id(th), id(W), id(b)}


@pytest.mark.parametrize(
    "variant,preserve,standardize,separate,scope,lam_gate",
    [(*c, "cross", 0.7) for c in itertools.product(["paper", "reference"], [True, False], [False, True], [False, True])]
    + [("paper", True, False, False, "own", 0.7), ("paper", True, False, False, "cross", 0.0)],
)
def test_fused_objective_matches_autograd(variant, preserve, standardize, separate, scope, lam_gate):
    """The trainer's closed-form gradients equal autograd on loss_terms (float64)."""
    g = torch.Generator().manual_seed(7)
    T, n, m, d = 3, 5, 4, 6
    f64 = torch.float64
    th = torch.randn(T, d, generator=g, dtype=f64, requires_grad=True)
    W = (0.3 * torch.randn(T, d, generator=g, dtype=f64)).requires_grad_()
    b = torch.randn(T, generator=g, dtype=f64, requires_grad=True)
    pos = 2 * torch.randn(T, n, d, generator=g, dtype=f64) + 1
    neg = 2 * torch.randn(T, m, d, generator=g, dtype=f64)
    pm = torch.randn(T, n, d, generator=g, dtype=f64) if separate else None
    inv = torch.rand(d, generator=g, dtype=f64) + 0.5 if standardize else None
    lam = {**LAM, "gate": lam_gate}
    terms = loss_terms(th, W, b, pos, neg, sigma=3.0, lambdas=torch.tensor([lam[k] for k in TERMS], dtype=f64),
                       variant=variant, preserve_norm=preserve, pos_mmd=pm, inv_scale=inv, gate_scope=scope)
    terms.total.backward()
    fused = FusedObjective(T, n, m, sigma=3.0, lambdas=lam, variant=variant, preserve_norm=preserve, inv_scale=inv,
                           gate_scope=scope, dtype=f64)
    with torch.no_grad():
        per_attr, g_th, g_w, g_b = fused(th, W, b, pos, neg, pm)
    torch.testing.assert_close(per_attr, terms.per_attribute.detach(), rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(g_th, th.grad, rtol=1e-9, atol=1e-12)
    torch.testing.assert_close(g_w, W.grad, rtol=1e-9, atol=1e-12)
    torch.testing.assert_close(g_b, b.grad, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("scope", ["own", "cross"])
def test_supervised_gate_loss_matches_hand(toy, scope):
    """L_gate_t = ½ mean BCE(own negatives, 1) + ¼ mean BCE(own positives, 0) + ¼ mean BCE(other rows, 0)
    (cross), or ½ + ½ without the other rows (own)."""
    pos, neg, W, b = toy["pos"], toy["neg"], toy["W"], toy["b"]
    T, n, _ = pos.shape
    m = neg.shape[1]

    def bce(p, y):
        return -(y * math.log(p) + (1 - y) * math.log(1 - p))

    terms = loss_terms(toy["theta"], W, b, pos, neg, sigma=toy["sigma"], lambdas=lam_vec(), gate_scope=scope)
    for t in range(T):
        own_neg = sum(bce(gate_hand(a, W[t], b[t]), 1) for a in neg[t]) / m
        own_pos = sum(bce(gate_hand(a, W[t], b[t]), 0) for a in pos[t]) / n
        others = [a for u in range(T) if u != t for a in (*pos[u], *neg[u])]
        other = sum(bce(gate_hand(a, W[t], b[t]), 0) for a in others) / len(others)
        expected = 0.5 * own_neg + (0.25 * own_pos + 0.25 * other if scope == "cross" else 0.5 * own_pos)
        assert terms.gate[t].item() == pytest.approx(expected, rel=1e-10)


def test_fused_objective_refuses_a_term_without_its_gradient(monkeypatch):
    """A term added to the objective but not to the closed form fails loudly instead of training without it."""
    monkeypatch.setattr(fused, "TERMS", (*TERMS, "new_term"))
    with pytest.raises(NotImplementedError, match="new_term"):
        FusedObjective(2, 3, 3, sigma=1.0, lambdas=LAM)
