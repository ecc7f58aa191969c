"""Dev selection: the best dev mean within the KL budget, and grids that grow past an edge where the best sits."""

from __future__ import annotations

import math

import pytest

from matsteer.errors import ConfigError
from matsteer.eval.config import EvalConfig
from matsteer.eval.experiment import Experiment
from matsteer.eval.selection import (
    at_edge,
    borrowed_choices,
    edge_extension,
    finalists,
    scale_key,
    select_trial,
)


def _t(m: float, mean: float, kl: float | None = 0.1, **extra) -> dict:
    return {"params": {"multiplier": m, **extra}, "dev_mean": mean, "dev_kl": kl}


def test_budget_excludes_a_setting_above_it():
    trials = [_t(1, 0.50, 0.05), _t(2, 0.55, 0.2), _t(4, 0.60, 0.9)]
    assert select_trial(trials) == 2
    assert select_trial(trials, kl_budget=0.5) == 1
    assert select_trial(trials, kl_budget=0.01) == 0  # none within: the smallest KL
    # Ties go to the first; an undefined KL (no steering) is always within the budget.
    assert select_trial([_t(1, 0.5, None), _t(2, 0.5, 0.0)], kl_budget=0.1) == 0


def test_edge_extension_by_hand():
    grid = [_t(1, 0.50), _t(2, 0.55), _t(4, 0.60)]
    assert edge_extension(grid, 2) == {"multiplier": 8.0}
    assert edge_extension(grid, 0) == {"multiplier": 0.5}
    assert edge_extension(grid, 1) is None
    # The other parameters stay; the edge is judged among the trials that share them.
    crossed = [_t(1, 0.5, positions="prompt"), _t(2, 0.6, positions="prompt"), _t(4, 0.4, positions="all")]
    assert edge_extension(crossed, 1) == {"multiplier": 4.0, "positions": "prompt"}
    assert edge_extension([_t(1, 0.5)], 0) is None  # a one-value grid is a fixed setting
    assert edge_extension([{"params": {"shots": 1}, "dev_mean": 0.5}], 0) is None
    assert scale_key({"alpha": 2, "positions": "all"}) == "alpha" and scale_key({}) is None


def _experiment(peak: float, kl_per_unit: float, cfg: EvalConfig) -> Experiment:
    """An experiment whose dev trials are a hand-made curve: mean -(log2 m - log2 peak)^2, KL = m * kl_per_unit."""
    ex = Experiment.__new__(Experiment)
    ex.cfg, ex.on_step = cfg, lambda message: None

    def trial(name, params, seed, overrides, subset=False):
        m = params["multiplier"]
        return {"params": params, "dev_mean": -(math.log2(m) - math.log2(peak)) ** 2, "dev_kl": m * kl_per_unit}

    ex._trial = trial  # type: ignore[method-assign]
    return ex


@pytest.mark.parametrize("peak", [0.125, 1.0, 8.0])
def test_no_chosen_value_lies_at_a_grid_edge(peak):
    cfg = EvalConfig(multipliers=(0.5, 1.0, 2.0), grid_extensions=4)
    chosen, trials = _experiment(peak, 0.0, cfg).tune("caa", 0)
    assert chosen["multiplier"] == peak
    assert not at_edge(trials, trials.index(next(t for t in trials if t["params"] == chosen)))


def test_the_budget_bounds_the_grid_instead_of_its_edge():
    cfg = EvalConfig(multipliers=(1.0, 2.0, 4.0), kl_budget=0.5, grid_extensions=4)
    chosen, trials = _experiment(16.0, 0.1, cfg).tune("caa", 0)
    # KL = 0.1 m: 4 is the largest within the budget, 8 was tried and is over it.
    assert chosen == {"multiplier": 4.0}
    assert [t["params"]["multiplier"] for t in trials] == [1.0, 2.0, 4.0, 8.0]


def test_finalists_by_hand():
    trials = [_t(1, 0.40, kl=0.1), _t(2, 0.50, kl=0.2), _t(4, 0.45, kl=0.9), _t(8, 0.48, kl=0.3)]
    assert finalists(trials, 2) == [1, 3]  # the two best dev means, in grid order
    assert finalists(trials, 2, kl_budget=0.25) == [0, 1]  # m = 4 and 8 are over the budget
    assert finalists(trials, 1, kl_budget=0.05) == [0]  # none within it: the least KL
    assert finalists(trials, 10) == [0, 1, 2, 3]
    with pytest.raises(ValueError, match="keep"):
        finalists(trials, 0)


def _halving(peak: float, subset_peak: float, cfg: EvalConfig) -> tuple[Experiment, list[tuple[float, bool]]]:
    """An experiment whose whole dev set peaks at ``peak`` and whose dev subset, a noisy sample of it, peaks at
    ``subset_peak``; every scored (multiplier, subset) is logged."""
    ex = _experiment(peak, 0.0, cfg)
    ex.subset_trials = {}
    calls: list[tuple[float, bool]] = []

    def trial(name, params, seed, overrides, subset=False):
        m = params["multiplier"]
        calls.append((m, subset))
        top = subset_peak if subset else peak
        return {"params": params, "dev_mean": -(math.log2(m) - math.log2(top)) ** 2, "dev_kl": 0.0}

    ex._trial = trial  # type: ignore[method-assign]
    return ex, calls


def test_halving_with_every_setting_kept_equals_the_grid_search():
    grid = EvalConfig(multipliers=(0.5, 1.0, 2.0, 4.0), grid_extensions=0)
    halving = EvalConfig(multipliers=(0.5, 1.0, 2.0, 4.0), grid_extensions=0, search="halving", halving_keep=4)
    assert _halving(2.0, 1.0, halving)[0].tune("caa", 0) == _experiment(2.0, 0.0, grid).tune("caa", 0)


def test_halving_rescores_only_the_finalists_and_chooses_on_the_whole_dev_set():
    cfg = EvalConfig(multipliers=(0.5, 1.0, 2.0, 4.0, 8.0), grid_extensions=0, search="halving", halving_keep=2)
    ex, calls = _halving(4.0, 2.5, cfg)  # the subset ranks 2 above 4, the whole dev set 4 above 2
    chosen, trials = ex.tune("caa", 0)
    assert chosen == {"multiplier": 4.0}
    assert [t["params"]["multiplier"] for t in trials] == [2.0, 4.0]  # the subset's two best, re-scored
    assert [m for m, subset in calls if not subset] == [2.0, 4.0]
    assert [t["params"]["multiplier"] for t in ex.first_stage("caa", 0)] == [0.5, 1.0, 2.0, 4.0, 8.0]
    # The subset's grid still grows past its edge before the finalists are picked.
    cfg = EvalConfig(multipliers=(0.5, 1.0), grid_extensions=3, search="halving", halving_keep=1)
    ex, calls = _halving(4.0, 4.0, cfg)
    assert ex.tune("caa", 0)[0] == {"multiplier": 4.0}
    assert [m for m, subset in calls if subset] == [0.5, 1.0, 2.0, 4.0, 8.0]


def test_selection_settings_are_checked():
    with pytest.raises(ConfigError, match="kl_budget"):
        EvalConfig(kl_budget=0.0).validate()
    with pytest.raises(ConfigError, match="grid_factor"):
        EvalConfig(grid_factor=1.0).validate()
    with pytest.raises(ConfigError, match="search"):
        EvalConfig(search="random").validate()
    with pytest.raises(ConfigError, match="halving_fraction"):
        EvalConfig(search="halving", halving_fraction=1.0).validate()


def _record(trials: list[dict]) -> dict:
    return {"chosen": trials[select_trial(trials)]["params"], "dev_trials": trials}


def _grid_report() -> dict:
    """A comparison that chose positions on dev within one table (as the committed reference did)."""
    caa = [_t(1, 0.40, positions="prompt"), _t(2, 0.45, positions="prompt"), _t(1, 0.60, positions="all")]
    mat = [_t(1, 0.42, positions="prompt"), _t(2, 0.41, positions="prompt"), _t(2, 0.55, positions="all")]
    icl = [{"params": {"shots": 1}, "dev_mean": 0.3, "dev_kl": None},
           {"params": {"shots": 3}, "dev_mean": 0.35, "dev_kl": None}]
    return {"config": {"positions": "prompt", "position_grid": ["prompt", "all"], "protocols": []},
            "selection": {"caa": _record(caa), "mat_steer": _record(mat), "icl": _record(icl),
                          "training_default": {"chosen": {"overrides": {"lambda_pos": 0.1}}}}}


def test_borrowed_choices_under_one_protocol_of_a_position_grid():
    got = borrowed_choices(_grid_report(), "prompt")
    # Each steering method re-selected among its trials under that protocol alone; ICL steers no token.
    assert got["caa"]["chosen"] == {"multiplier": 2, "positions": "prompt"}
    assert got["mat_steer"]["chosen"] == {"multiplier": 1, "positions": "prompt"}
    assert [t["params"]["positions"] for t in got["caa"]["dev_trials"]] == ["prompt", "prompt"]
    assert got["icl"]["chosen"] == {"shots": 3} and len(got["icl"]["dev_trials"]) == 2
    assert got["training_default"] == {"overrides": {"lambda_pos": 0.1}}
    assert borrowed_choices(_grid_report(), "all")["caa"]["chosen"] == {"multiplier": 1, "positions": "all"}
    with pytest.raises(ConfigError, match="never scored the 'generated' protocol"):
        borrowed_choices(_grid_report(), "generated")


def test_borrowed_choices_from_a_table_per_protocol():
    report = _grid_report()
    report["config"] = {"positions": "prompt", "position_grid": [], "protocols": ["prompt", "all"]}
    report["protocol"] = "prompt"
    other = {"caa": _record([_t(4, 0.7, positions="all")]),
             "training_default": {"chosen": {"overrides": {}}}}
    report["protocols"] = {"all": {"selection": other}}
    assert borrowed_choices(report, "all")["caa"]["chosen"] == {"multiplier": 4, "positions": "all"}
    assert borrowed_choices(report, "prompt")["caa"]["chosen"] == {"multiplier": 2, "positions": "prompt"}


def test_the_committed_reference_lends_its_prompt_protocol_choices():
    from pathlib import Path

    from matsteer.files import read_json

    report = read_json(Path(__file__).resolve().parents[1] / "results" / "reference" / "eval.json")
    got = borrowed_choices(report, "prompt")
    for name, record in report["selection"].items():
        if name == "training_default":
            continue
        chosen = got[name]["chosen"]
        assert chosen.get("positions", "prompt") == "prompt"
        # The best dev mean among the reference's own prompt-protocol trials of that method.
        best = max(t["dev_mean"] for t in record["dev_trials"] if t["params"].get("positions", "prompt") == "prompt")
        assert next(t for t in got[name]["dev_trials"] if t["params"] == chosen)["dev_mean"] == best


def test_halving_in_a_comparison_records_both_stages(tiny_dir, tmp_path):
    from matsteer.core.config import TrainConfig
    from matsteer.core.workflow import DemoConfig
    from matsteer.eval.comparison import run_evaluation

    limits = {"truthfulqa": 4, "toxigen_pref": 4, "toxigen": 4, "bbq": 6}

    def run(search: str, out: str) -> dict:
        demo = DemoConfig(model=str(tiny_dir), layer=1, limits=dict(limits), dev_limits=dict(limits),
                          train=TrainConfig(epochs=2, sigma="median"), features_dir=tmp_path / "features")
        cfg = EvalConfig(demo=demo, seeds=(0,), dev_limits=dict(limits), test_limits=dict(limits),
                         multipliers=(0.5, 1.0, 2.0), training_candidates=({},), methods=("none", "caa", "mat_steer"),
                         grid_extensions=0, search=search, halving_fraction=0.5, halving_keep=1,
                         out_dir=tmp_path / out, n_boot=20)
        return run_evaluation(cfg, progress=False)

    grid, halving = run("grid", "grid")["selection"], run("halving", "halving")["selection"]
    for name in ("caa", "mat_steer"):
        first, final = halving[name]["subset_trials"], halving[name]["dev_trials"]
        assert [t["params"] for t in first] == [t["params"] for t in grid[name]["dev_trials"]]
        # One finalist, re-scored on the whole dev set exactly as the grid search scored it.
        assert len(final) == 1 and final[0] in grid[name]["dev_trials"]
        assert halving[name]["chosen"] == final[0]["params"]
    assert "subset_trials" not in grid["caa"]


def test_each_steering_method_chooses_its_layer_on_dev_and_is_tested_there(tiny_dir, tmp_path):
    from matsteer.core.config import TrainConfig
    from matsteer.core.workflow import DemoConfig
    from matsteer.eval.comparison import run_evaluation

    limits = {"truthfulqa": 4, "toxigen_pref": 4, "toxigen": 4, "bbq": 6}

    def run(out: str, layer: int, layers: tuple[int, ...] = ()) -> dict:
        demo = DemoConfig(model=str(tiny_dir), layer=layer, limits=dict(limits), dev_limits=dict(limits),
                          train=TrainConfig(epochs=2, sigma="median"), features_dir=tmp_path / "features")
        cfg = EvalConfig(demo=demo, seeds=(0,), dev_limits=dict(limits), test_limits=dict(limits),
                         multipliers=(0.5, 2.0), training_candidates=({},), methods=("none", "icl", "caa", "mat_steer"),
                         grid_extensions=0, layers=layers, out_dir=tmp_path / out, n_boot=20)
        return run_evaluation(cfg, progress=False)

    chosen = run("layers", 3, (1, 2))  # the own layer (3) is not a candidate: every method runs at another
    at = {layer: run(f"at{layer}", layer) for layer in (1, 2)}
    for name in ("caa", "mat_steer"):
        sel = chosen["selection"][name]
        layer = sel["layer"]
        assert set(sel["best_by_layer"]) == {"1", "2"}
        best = {int(n): t["dev_mean"] for n, t in sel["best_by_layer"].items()}
        assert best[layer] == max(best.values())
        # Tuned and tested at its layer exactly as a comparison run at that layer alone.
        assert chosen["methods"][name]["layer"] == layer
        assert sel["dev_trials"] == at[layer]["selection"][name]["dev_trials"]
        assert chosen["methods"][name]["test"] == at[layer]["methods"][name]["test"]
    # Methods that edit no site activations have no layer.
    assert "layer" not in chosen["methods"]["icl"] and "layer" not in chosen["selection"]["none"]
    # The plan counted this run's work before it ran (no edge extensions here, so exactly).
    from matsteer.eval.plan import search_plan

    cfg = EvalConfig(**{**vars(EvalConfig()), "methods": ("none", "icl", "caa", "mat_steer"), "multipliers": (0.5, 2.0),
                        "training_candidates": ({},), "grid_extensions": 0, "layers": (1, 2), "seeds": (0,)})
    plan = {m.name: m for m in search_plan(cfg).methods}
    for name in ("none", "icl", "caa", "mat_steer"):
        assert plan[name].dev_trials == len(chosen["selection"][name]["dev_trials"])
        assert plan[name].test_rows == len(chosen["methods"][name]["seeds"])
        assert plan[name].layer_trials == (2 * 2 if name in ("caa", "mat_steer") else 0)
    with pytest.raises(ConfigError, match="layers"):
        EvalConfig(layers=(10, 10)).validate()


def test_which_tokens_mat_steer_trains_on_is_a_training_candidate(tiny_dir, tmp_path):
    import dataclasses

    import torch

    from matsteer.core.config import TrainConfig
    from matsteer.core.training import train_steerer
    from matsteer.core.workflow import DemoConfig, attribute_data, extract_splits

    limits = {"truthfulqa": 4, "toxigen_pref": 4, "toxigen": 4, "bbq": 6}
    demo = DemoConfig(model=str(tiny_dir), layer=1, limits=dict(limits), dev_limits=dict(limits),
                      train=TrainConfig(epochs=2, sigma="median", batch_per_side=2), features_dir=tmp_path / "f")
    cfg = EvalConfig(demo=demo, seeds=(0,), dev_limits=dict(limits), test_limits=dict(limits),
                     training_candidates=({}, {"tokens": "all"}))
    cfg.validate()
    ex = Experiment(cfg, progress=False)
    every = ex.trained(0, {"tokens": "all"})
    # Trained on every token of x‖y of the same texts, otherwise as the answer-token MAT-Steer.
    sets = extract_splits(ex.loaded, dataclasses.replace(demo, tokens="all"), "train", demo.limits, False)
    by_hand = train_steerer([attribute_data(fs) for fs in sets], ex.train_config(0, {}), progress=False)
    assert torch.equal(every.steerer.theta, by_hand.steerer.theta)
    assert not torch.equal(every.steerer.theta, ex.steerer(0, {}).theta)
    with pytest.raises(ConfigError, match="tokens"):
        dataclasses.replace(cfg, training_candidates=({"tokens": "prompt"},)).validate()
