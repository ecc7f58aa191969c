"""Every ablation runs on a tiny saved model and returns the shape its figure needs; shared rows agree exactly."""

from __future__ import annotations

import copy
import json
from dataclasses import replace

import pytest
import torch

import matsteer.eval.ablations as A
from matsteer.core.config import TrainConfig
from matsteer.core.workflow import DemoConfig
from matsteer.errors import ConfigError
from matsteer.eval.config import EvalConfig

LIMITS = {"truthfulqa": 4, "toxigen": 6, "bbq": 6}
OPTIONS = {"data_efficiency": {"fractions": [0.5, 1.0]}, "num_attributes": {"limit": 6, "test_limit": 3},
           "paradetox_gates": {"n": 4}, "layers": {"candidates": [1, 2]}, "multiplier_sweep": {"values": [0.0, 2.0]},
           "targeting": {"multipliers": [0.5, 2.0], "n_prompts": 4, "paradetox_n": 4}}


@pytest.fixture(scope="module")
def results(tiny_dir, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("ablations")
    demo = DemoConfig(model=str(tiny_dir), layer=1, limits=dict(LIMITS), dev_limits=dict(LIMITS),
                      train=TrainConfig(epochs=2, sigma="median", batch_per_side=2), features_dir=tmp / "features")
    cfg = EvalConfig(demo=demo, dev_limits=dict(LIMITS), test_limits=dict(LIMITS))
    return A.run_ablations(A.ABLATIONS, cfg, seeds=(0, 1), eval_json=None, out_dir=tmp / "results" / "ablations",
                           options=OPTIONS, progress=False), tmp / "results" / "ablations"


def test_every_ablation_writes_a_figure_ready_result(results):
    out, folder = results
    assert set(out) == set(A.ABLATIONS)
    for name in A.ABLATIONS:
        saved = json.loads((folder / f"{name}.json").read_text())
        assert saved["result"] == json.loads(json.dumps(out[name]["result"]))
        assert saved["setting"]["source"].startswith("defaults")
    comp = out["components"]["result"]["rows"]
    assert list(comp) == list(A.COMPONENTS)
    # The unsteered rows of different ablations come from the same evaluator: exactly equal.
    assert comp["Base"] == out["interference"]["result"]["rows"]["none"] == out["tokens"]["result"]["rows"]["Base"]
    assert comp["Base"]["kl"] is None  # no steering edits no activation: its KL is n/a, not 0
    assert comp["Full"]["kl"]["mean"] >= 0.0
    toks = out["tokens"]["result"]["rows"]
    assert list(toks) == A.ROW_ORDER["tokens"]
    # The two random-direction controls differ from each other and from MAT-Steer's own vectors.
    assert toks["Random directions, all tokens"] != toks["Random directions, MAT-Steer's gates"]
    assert toks["Random directions, MAT-Steer's gates"] != toks["MAT-Steer gating"]
    assert set(out["data_efficiency"]["result"]["curves"]["MAT-Steer"]) == {"0.5", "1.0"}
    assert list(out["num_attributes"]["result"]["curves"]["MAT-Steer"]) == ["1", "2", "3", "4"]
    assert out["num_attributes"]["result"]["attributes"][-1] == "harmlessness"
    table = out["paradetox_gates"]["result"]["table"]
    assert set(table["Mean toxicity gate"]) == {"Toxic", "Non-toxic"}
    assert set(out["layers"]["result"]["curves"]["CAA"]) == {"1", "2"}
    sweep = out["multiplier_sweep"]["result"]["sweep"]
    assert set(sweep) == {"truthfulness", "toxicity", "bias"}
    assert all(len(v["kl"]) == 2 for v in sweep.values())
    rows = out["training_tokens"]["result"]["rows"]
    assert list(rows) == A.ROW_ORDER["training_tokens"] and rows["Base"] == comp["Base"]
    # The answer-token rows use the comparison's own features and setting: the same steerer as "Full".
    assert rows["Answer tokens, gated"] == comp["Full"]
    assert any((folder.parent.parent / "features").rglob("*-train-L1-residual-all"))  # extracted for the paper rows
    tgt = out["targeting"]["result"]
    assert set(tgt["frontier"]) == set(tgt["chosen"]) == set(A.TARGETING_VARIANTS)
    for name, curve in tgt["frontier"].items():
        assert [p["multiplier"] for p in curve] == [0.5, 2.0] and all(p["dev_kl"] >= 0 for p in curve)
        pick = next(p for p in curve if p["multiplier"] == tgt["chosen"][name])
        # Within the budget (today's default at the comparison's multiplier, 1 here), else the least KL.
        assert pick["dev_kl"] <= tgt["kl_budget"] or pick["dev_kl"] == min(p["dev_kl"] for p in curve)
    # The targeted presets trained with the experiment's background (train_steerer refuses them without), and
    # their gates differ from the default's.
    assert tgt["frontier"]["targeted"] != tgt["frontier"]["default"]
    assert tgt["targeting"]["targeted"]["mean"] != tgt["targeting"]["default"]["mean"]
    assert set(tgt["generation"]) == {"none", *A.TARGETING_VARIANTS}
    assert all(g["n"] == 4 and 0.0 <= g["distinct_2"] <= 1.0 for g in tgt["generation"].values())
    assert tgt["rows"]["none"] == comp["Base"]
    # The CLI prints every result: the no-steering rows' KL as n/a.
    lines = A.describe(out["components"]).splitlines()
    assert lines[0].split()[0] == "Base" and "KL n/a" in lines[0] and "KL n/a" not in lines[-1]
    assert all(A.describe(out[name]) for name in A.ABLATIONS)


def test_figures_from_saved_results(results, tmp_path):
    from matsteer.app.cli import main

    _, folder = results
    assert main(["figures", "--results", str(folder.parent), "--out", str(tmp_path)]) == 0
    for name in A.ABLATIONS:
        assert (tmp_path / f"ablation_{name}.png").stat().st_size > 0


def test_subsample_keeps_whole_texts_and_is_seeded(tiny_dir, tmp_path):
    from matsteer.activations.features import extract_to_folder
    from matsteer.activations.models import load_model
    from matsteer.activations.sites import Site
    from matsteer.data import load_examples

    fs = extract_to_folder(load_model(str(tiny_dir), progress=False), load_examples("toxigen", "train", limit=10),
                           Site(1), tmp_path / "f", tokens="answer", dataset="toxigen", split="train", progress=False)
    a, b = A.subsample(fs, 0.5, seed=3), A.subsample(fs, 0.5, seed=3)
    assert torch.equal(a.positives, b.positives) and torch.equal(a.negatives, b.negatives)
    assert 0 < len(a.positives) + len(a.negatives) < len(fs.activations)


def test_unknown_ablation_and_bad_eval_json(tmp_path):
    with pytest.raises(ConfigError, match="Unknown ablations"):
        A.run_ablations(["table9"], eval_json=None)
    bad = tmp_path / "eval.json"
    bad.write_text("{}")
    with pytest.raises(ConfigError, match="no MAT-Steer selection"):
        A.chosen_setting(bad)


def test_fitting_pairs_keeps_whole_pairs_that_fit(tokenizer):
    from types import SimpleNamespace

    from matsteer.data import load_examples

    ex = SimpleNamespace(loaded=SimpleNamespace(tokenizer=tokenizer))
    length = {e.group: max(len(tokenizer(x.text)["input_ids"]) for x in load_examples("hh_rlhf", "train")
                           if x.group == e.group) for e in load_examples("hh_rlhf", "train")}
    cut = sorted(length.values())[len(length) // 2]  # about half of the pairs fit
    kept = A.fitting_pairs(ex, limit=10, max_length=cut)
    groups = list(dict.fromkeys(e.group for e in kept))
    assert len(groups) == 10 and len(kept) == 20  # whole pairs: chosen and rejected
    assert all(length[g] <= cut for g in groups) and all(e.answer.strip() for e in kept)
    empty = {e.group for e in load_examples("hh_rlhf", "train") if not e.answer.strip()}
    fitting_in_order = [g for g in dict.fromkeys(length) if length[g] <= cut and g not in empty]
    assert groups == fitting_in_order[:10]


def _sweep_experiment(tiny_dir, tmp_path):
    from matsteer.eval.experiment import Experiment

    demo = DemoConfig(model=str(tiny_dir), layer=1, limits=dict(LIMITS), dev_limits=dict(LIMITS),
                      train=TrainConfig(epochs=2, sigma="median", batch_per_side=2), features_dir=tmp_path / "features")
    return Experiment(EvalConfig(demo=demo, dev_limits=dict(LIMITS), test_limits=dict(LIMITS)), progress=False)


def _close(a, b, tol: float = 1e-6) -> bool:
    """Nested results equal, floats to ``tol`` (absolute or relative). With several CPU threads the upper layers'
    float32 products split their sums differently when a batch holds K copies of itself, so K settings in one pass
    agree with K passes to rounding (a few ulps), not bit for bit; with one thread they agree exactly."""
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(_close(a[k], b[k], tol) for k in a)
    if isinstance(a, (list, tuple)):
        return isinstance(b, (list, tuple)) and len(a) == len(b) and all(_close(x, y, tol) for x, y in zip(a, b))
    if isinstance(a, float) and isinstance(b, float):
        return a == pytest.approx(b, abs=tol, rel=tol, nan_ok=True)
    return a == b


def test_multiplier_sweep_in_one_pass_equals_one_value_at_a_time(tiny_dir, tmp_path, monkeypatch):
    """The sweep scores its K values as K settings of one steerer in one pass per batch, with the numbers of the
    per-value path (each value its own Evaluator.evaluate), to float32 rounding (:func:`_close`)."""
    import matsteer.eval.evaluator as E

    ex = _sweep_experiment(tiny_dir, tmp_path)
    setting, seeds, values = A.Setting(multiplier=1.5), [0, 1], [0.0, 0.5, 2.0]
    ex.dev.evaluate(A._mat(ex, setting, 0))  # fills the question caches and the unsteered neutral logits
    batched, single = [], []
    real_batched, real_single = A.score_cached_settings, E.score_cached
    monkeypatch.setattr(A, "score_cached_settings", lambda *a, **k: batched.append(1) or real_batched(*a, **k))
    monkeypatch.setattr(E, "score_cached", lambda *a, **k: single.append(1) or real_single(*a, **k))
    got = A.multiplier_sweep(ex, setting, seeds, values)["sweep"]
    # One batched scoring per (attribute, seed) and scored choice set; no setting scored on its own.
    assert not single and len(batched) == len(got) * len(seeds) * len(ex.dev._cache)
    monkeypatch.undo()

    for attr, row in got.items():
        def build(seed: int, v: float, attr: str = attr) -> E.Method:
            m = A._mat(ex, setting, seed)
            m.multipliers = {attr: v}
            return m

        runs = [A._score(ex.dev, lambda s, v=v: build(s, v), seeds) for v in values]
        assert _close(row, {"multipliers": values, "accuracy": {t: [r[t]["mean"] for r in runs] for t in ex.dev.tasks},
                            "kl": [r["kl"]["mean"] for r in runs]}), attr
    # The KL grows away from multiplier 0 (so the rows are not all the unsteered one).
    assert all(row["kl"][0] < row["kl"][-1] for row in got.values())


def test_evaluate_settings_equals_evaluate_and_refuses_mixed_methods(tiny_dir, tmp_path):
    ex = _sweep_experiment(tiny_dir, tmp_path)
    m = A._mat(ex, A.Setting(), 0)
    methods = [m, replace(m, multipliers={"toxicity": 3.0}, force={"bias": False}), replace(m, global_multiplier=0.0)]
    got = A.evaluate_settings(ex.dev, methods)
    assert _close(got, [ex.dev.evaluate(x) for x in methods])  # every metric, per item, and the side effects
    assert abs(got[2]["side_effects"]["kl"]) < 1e-6  # multiplier 0: the unsteered model, to rounding
    with pytest.raises(ConfigError, match="share their steerer"):
        A.evaluate_settings(ex.dev, [m, replace(m, positions="all")])
    with pytest.raises(ConfigError, match="share their steerer"):
        A.evaluate_settings(ex.dev, [m, A._mat(ex, A.Setting(), 1)])
    # Without cached scoring (a site the upper pass cannot start from) each method is scored through pyvene.
    slow = copy.copy(ex.dev)
    slow.fast, slow._neutral_cache, slow._cache = False, None, {}
    assert A.evaluate_settings(slow, methods[:2]) == [slow.evaluate(x) for x in methods[:2]]
