"""Every figure function draws a non-empty image from small random inputs, and the helpers compute what they say."""

from __future__ import annotations

from pathlib import Path

import matplotlib
import numpy as np
import pytest
import torch
from matplotlib.figure import Figure

from matsteer.activations.features import FeatureSet
from matsteer.core.history import History
from matsteer.core.steerer import Steerer
from matsteer.errors import ConfigError
from matsteer.eval import gate_analysis as ga
from matsteer.viz import charts, plots, style, tables

ATTRS = ["truthfulness", "toxicity", "bias"]
D = 16


def _check(fig: Figure, tmp_path: Path, name: str) -> None:
    assert isinstance(fig, Figure)
    assert fig.axes, "figure has no axes"
    paths = style.save_figure(fig, name, tmp_path)
    assert [p.suffix for p in paths] == [".png", ".pdf"]
    for p in paths:
        assert p.is_file() and p.stat().st_size > 0
    png = matplotlib.image.imread(paths[0])
    assert png.shape[0] > 50 and png.shape[1] > 50
    assert png[..., :3].std() > 0.01, "image is blank"


@pytest.fixture()
def steerer() -> Steerer:
    return Steerer(ATTRS, D, generator=torch.Generator().manual_seed(0))


def _feature_set(attr: str, seed: int) -> FeatureSet:
    g = torch.Generator().manual_seed(seed)
    acts = torch.randn(40, D, generator=g)
    labels = torch.tensor([1, 0] * 20)
    idx = torch.arange(40)
    return FeatureSet(acts, labels, idx, idx, {"attribute": attr})


def test_pca(tmp_path, steerer):
    sets = ga.steered_sets(steerer, [_feature_set(a, i) for i, a in enumerate(ATTRS)], max_rows=15)
    assert set(sets) == set(ATTRS)
    assert sets["bias"]["steered"].shape == sets["bias"]["negative"].shape == (15, D)
    _check(plots.plot_pca(sets), tmp_path, "pca")


def test_pca_without_steered_group(tmp_path):
    rng = np.random.default_rng(0)
    _check(plots.plot_pca({"a": {"positive": rng.normal(size=(9, 5)), "negative": rng.normal(size=(7, 5))}}),
           tmp_path, "pca2")


def test_orthogonality(tmp_path, steerer):
    fig = plots.plot_orthogonality(steerer.theta, steerer.attributes)
    _check(fig, tmp_path, "ortho")
    with pytest.raises(ConfigError):
        plots.plot_orthogonality(torch.randn(2, D), ATTRS)


def test_gate_distributions(tmp_path, steerer):
    gates = ga.gate_sets(steerer, [_feature_set(a, i) for i, a in enumerate(ATTRS)], neutral=torch.randn(12, D))
    assert set(gates["toxicity"]) == {"positive", "negative", "neutral"}
    assert ((gates["bias"]["negative"] >= 0) & (gates["bias"]["negative"] <= 1)).all()
    _check(plots.plot_gate_distributions(gates), tmp_path, "gates")


def test_token_gates_figure_and_html(tmp_path, steerer):
    n = 40  # wraps over two rows at per_row=28
    gates = torch.rand(n, len(ATTRS))
    norms = ga.edit_norms(gates, steerer.theta, torch.tensor([1.0, 0.0, 2.0]))
    assert norms.shape == (n,)
    expected = ((gates * torch.tensor([1.0, 0.0, 2.0])) @ steerer.theta.detach()).norm(dim=1)
    np.testing.assert_allclose(norms, expected.numpy(), rtol=1e-5)
    tokens = [f" tok{i}" if i % 5 else "\n" for i in range(n)]
    generated = [i >= 30 for i in range(n)]
    _check(plots.plot_token_gates(tokens, gates, ATTRS, norms, generated=generated), tmp_path, "tokens")
    html = plots.token_gates_html(tokens, gates, ATTRS, norms, generated=generated)
    assert html.count("<tr>") == len(ATTRS) + 1 and "tok7" in html and "‖edit‖" in html
    with pytest.raises(ConfigError):
        plots.plot_token_gates(tokens[:-1], gates, ATTRS)


def test_token_gates_without_norm_row(tmp_path):
    _check(plots.plot_token_gates(["a", "b", "c"], np.random.rand(3, 2), ["x", "y"]), tmp_path, "tokens2")


def test_training_curves(tmp_path):
    h = History(ATTRS, {"mmd": 1.0, "pos": 0.9, "sparse": 0.9, "ortho": 0.1, "gate": 1.0})
    rng = np.random.default_rng(0)
    for _ in range(5):
        h.append("train", rng.random((5, 3)).tolist())
        h.append("dev", rng.random((5, 3)).tolist())
    _check(plots.plot_training_curves(h), tmp_path, "curves")
    _check(plots.plot_training_curves(h.to_dict(), terms=("mmd", "total"), logy=True), tmp_path, "curves2")


def test_multiplier_sweep(tmp_path):
    xs = [0.0, 0.5, 1.0, 2.0]
    sweep = {
        "toxicity": {"multipliers": xs, "accuracy": [0.5, 0.55, 0.6, 0.58], "kl": [0.0, 0.01, 0.03, 0.1]},
        "bias": {"multipliers": xs, "accuracy": {"bbq": [0.4, 0.42, 0.45, 0.44], "truthfulqa": [0.3] * 4},
                 "kl": [0.0, 0.02, 0.04, 0.2]},
    }
    _check(charts.plot_multiplier_sweep(sweep), tmp_path, "sweep")
    _check(charts.plot_multiplier_sweep({"bias": {"multipliers": xs, "accuracy": [1, 2, 3, 4]}}), tmp_path, "sweep2")


def test_ablation_bars(tmp_path):
    table3 = {"Base": {"TQA": 49.91}, "+ Alignment": {"TQA": 53.82}, "Full": {"TQA": (61.94, 0.8)}}
    _check(charts.plot_ablation(table3, baseline="Base", ylabel="MC2"), tmp_path, "table3")
    table4 = {s: {t: {"mean": 50 + i + j, "std": 1.0} for j, t in enumerate(["TQA", "Tox", "BBQ"])}
              for i, s in enumerate(["Base", "Random", "Last", "All", "Gating"])}
    _check(charts.plot_ablation(table4, title="Which tokens"), tmp_path, "table4")


def test_data_efficiency_and_num_attributes(tmp_path):
    curves = {"MAT-Steer": {0.1: 60.05, 0.2: 61.0, 1.0: (61.94, 0.5)}, "SFT": {0.1: 50.0, 1.0: 54.12}}
    _check(charts.plot_data_efficiency(curves, reference={"DPO (100%)": 55.98}), tmp_path, "efficiency")
    wins = {"SFT": {1: 55.0, 2: 57.0, 3: 59.0, 4: 60.65}, "ITI": {1: 60.0, 4: 68.98}}
    _check(charts.plot_num_attributes(wins), tmp_path, "n_attributes")


def test_gate_table(tmp_path):
    rng = np.random.default_rng(0)
    groups = {"Toxic": [rng.random((6, 3)), rng.random((4, 3))], "Non-toxic": [rng.random((5, 3)) * 0.2]}
    table = ga.gate_table_stats(groups, ATTRS, target="toxicity", threshold=0.5,
                                 extra={"Toxicity reduction": {"Toxic": "-86%", "Non-toxic": "–"}})
    assert table["Mean # intervened tokens"]["Non-toxic"] == 0.0
    assert 0 <= table["Mean toxicity gate"]["Toxic"] <= 1
    _check(tables.plot_gate_table(table), tmp_path, "gate_table")
    with pytest.raises(ConfigError):
        ga.gate_table_stats(groups, ATTRS, target="helpfulness")


def test_method_table(tmp_path):
    report = {"methods": {
        "base": {"test": {"truthfulqa": {"mean": 0.40, "std": 0.01}, "bbq": {"mean": 0.5, "std": 0.02}}},
        "mat_steer": {"test": {"truthfulqa": {"mean": 0.45, "std": 0.01}, "bbq": {"mean": 0.52, "std": 0.0}}},
        "iti": {"dev": {"truthfulqa": {"mean": 0.4}}},
    }}
    table = tables.method_table_from_report(report)
    assert set(table) == {"base", "mat_steer"} and table["mat_steer"]["truthfulqa"] == (0.45, 0.01)
    _check(tables.plot_method_table(table), tmp_path, "methods")
    _check(tables.plot_method_table(report, digits=3), tmp_path, "methods2")


def test_method_table_from_nested_report(tmp_path):
    """The evaluation report's shape: test[task] holds several metrics; label names the row; side effects skipped."""
    ms = {"mean": 0.5, "std": 0.1}
    report = {"methods": {"mat_steer": {"label": "MAT-Steer", "test": {
        "truthfulqa": {"mc2": {"mean": 0.6, "std": 0.02}, "mc1": ms, "n": 10, "per_item": [1.0, 0.0]},
        "bbq": {"accuracy": ms, "ambig": 0.4, "disambig": 0.6, "n": 10, "per_item": [1.0]},
        "mean": {"mean": 0.55, "std": 0.01}, "side_effects": {"ce": ms, "kl": ms}}}}}
    table = tables.method_table_from_report(report, scale=100)
    assert set(table) == {"MAT-Steer"} and set(table["MAT-Steer"]) == {"truthfulqa", "bbq", "mean"}
    for task, want in {"truthfulqa": (60.0, 2.0), "bbq": (50.0, 10.0), "mean": (55.0, 1.0)}.items():
        assert table["MAT-Steer"][task] == pytest.approx(want)
    assert tables.method_table_from_report(report, primary={"truthfulqa": "mc1"})["MAT-Steer"]["truthfulqa"] == (0.5, 0.1)
    _check(tables.plot_method_table(table), tmp_path, "methods3")


def test_generate_with_gates_and_neutral_activations(tiny_llama, tokenizer, tmp_path):
    from matsteer.activations.models import LoadedModel
    from matsteer.activations.sites import Site

    loaded = LoadedModel(tiny_llama, tokenizer, "tiny", "h")
    steerer = Steerer(ATTRS, 32, generator=torch.Generator().manual_seed(0))
    run = ga.generate_with_gates(loaded, steerer, Site(1), "what is the sun ?", max_new_tokens=4,
                                  multipliers={"bias": 0.0})
    n = len(tokenizer("what is the sun ?")["input_ids"]) + 3
    assert run.gates.shape == (n, 3) and len(run.tokens) == n and run.edit_norm.shape == (n,)
    assert [t.strip() for t in run.tokens[:2]] == ["what", "is"] and int(run.generated.sum()) == 3
    _check(plots.plot_token_gates(run.tokens, run.gates, run.attributes, run.edit_norm, generated=run.generated),
           tmp_path, "tiny_tokens")
    acts = ga.neutral_activations(loaded, Site(1), ["the sun is good", "water"])
    assert acts.shape[1] == 32 and acts.shape[0] >= 3
    per_text = ga.text_gates(loaded, steerer, Site(1), ["the sun is good", "you are cruel and bad"])
    assert [g.shape[1] for g in per_text] == [3, 3] and per_text[0].shape[0] == 3  # first position skipped
    table = ga.gate_table_stats({"Toxic": per_text[1:], "Non-toxic": per_text[:1]}, ATTRS, target="toxicity")
    assert set(table["Mean toxicity gate"]) == {"Toxic", "Non-toxic"}


def test_save_figure_refuses_paths(tmp_path):
    fig = charts.plot_num_attributes({"x": {1: 1.0}})
    with pytest.raises(ConfigError):
        style.save_figure(fig, "../evil", tmp_path)


def test_no_pyplot_figures_accumulate():
    import matplotlib.pyplot as plt

    before = len(plt.get_fignums())
    charts.plot_ablation({"a": {"t": 1.0}})
    assert len(plt.get_fignums()) == before


def test_token_strings_decode_each_token(tokenizer):
    ids = tokenizer("the sun is good", add_special_tokens=False)["input_ids"]
    assert [s.strip() for s in ga.token_strings(tokenizer, torch.tensor(ids))] == ["the", "sun", "is", "good"]
