"""The method comparison end to end on a tiny saved model: dev-only selection, report shape, reproducible JSON."""

from __future__ import annotations

import json

import pytest
import torch

from matsteer.core.config import TrainConfig
from matsteer.core.workflow import DemoConfig
from matsteer.errors import ConfigError
from matsteer.eval.comparison import run_evaluation
from matsteer.eval.config import COMBINED, CONSTANT_LABEL, METHODS, SEEDED, EvalConfig
from matsteer.eval.evaluator import Evaluator
from matsteer.eval.experiment import Experiment, TensorDigests, data_fingerprint, steerer_key
from matsteer.eval.report import MARK

LIMITS = {"truthfulqa": 4, "toxigen_pref": 4, "toxigen": 6, "bbq": 6}


def _config(tiny_dir, tmp_path, out="results") -> EvalConfig:
    demo = DemoConfig(model=str(tiny_dir), layer=1, limits=dict(LIMITS), dev_limits=dict(LIMITS),
                      train=TrainConfig(epochs=2, sigma="median"), features_dir=tmp_path / "features")
    return EvalConfig(demo=demo, seeds=(0, 1), dev_limits=dict(LIMITS), test_limits=dict(LIMITS),
                      multipliers=(0.5, 2.0), iti_alphas=(1.0,), icl_shots=(1,), nl_iti_alphas=(1.0,),
                      icv_lambdas=(0.1,),
                      training_candidates=({}, {"lambda_pos": 0.1, "lambda_sparse": 0.1}), out_dir=tmp_path / out,
                      temperatures=(1.0, 3.0), grid_extensions=0, finetune_grid=({"lr": 1e-3, "steps": 2},),
                      finetune={"batch_size": 4},
                      n_boot=100)


def test_comparison_selects_on_dev_only_and_reproduces(tiny_dir, tmp_path, monkeypatch):
    cfg = _config(tiny_dir, tmp_path)
    test_calls = []
    original = Experiment.test_result

    def spy(self, method):
        test_calls.append((method.name, dict(method.params)))
        return original(self, method)

    monkeypatch.setattr(Experiment, "test_result", spy)
    steps: list[str] = []
    report = run_evaluation(cfg, progress=False, on_step=steps.append)
    # Every method but Table 9's combinations, which are added on request.
    assert list(report["methods"]) == [m for m in METHODS if m not in COMBINED] == list(cfg.methods)
    # Each part of the comparison is reported as it starts: set-up, each dev tuning, each test run with its count.
    assert steps[0].startswith("comparison: set-up")
    assert "comparison: dev: tuning mat_steer with training setting {'lambda_pos': 0.1, 'lambda_sparse': 0.1}" \
        in steps and "comparison: dev: tuning iti" in steps
    assert "comparison: test: mat_steer (2/2)" in steps and "comparison: test: caa (1/1)" in steps
    # Test is scored once per seed for seeded methods, once otherwise, and only at the dev-chosen setting.
    for name, entry in report["methods"].items():
        calls = [p for n, p in test_calls if n == name]
        assert len(calls) == (2 if name in SEEDED else 1)
        assert all(p == entry["params"] for p in calls)
        trials = report["selection"][name]["dev_trials"]
        best = max(trials, key=lambda t: t["dev_mean"])
        assert entry["params"] == best["params"]
    sel = report["selection"]["training_default"]
    assert len(sel["trials"]) == 2 and sel["chosen"]["dev_mean"] == max(t["dev_mean"] for t in sel["trials"])
    assert report["methods"]["none"]["test"]["mean"]["std"] == 0.0
    # The best baseline comes from the baselines only: never MAT-Steer's own variants or the controls.
    best = report["best_baseline"]
    assert best["pool"] == ["icl", "lora_sft", "lora_dpo", "loreft", "iti", "nl_iti", "caa", "pca", "icv", "probe_caa"]
    assert best["name"] in best["pool"]
    assert best["name"] == max(best["dev_means"], key=best["dev_means"].get)
    # Per-seed per-question scores are kept: [seeds][questions] for every task.
    for name, entry in report["methods"].items():
        seeds = 2 if name in SEEDED else 1
        assert entry["seeds"] == [0, 1][:seeds]
        for task in ("truthfulqa", "toxigen_pref", "bbq", "toxigen"):
            items = entry["test"][task]["per_item"]
            assert len(items) == seeds and all(len(row) == entry["test"][task]["n"] for row in items)
    assert report["methods"]["random"]["role"] == "control" and report["methods"]["probe_caa"]["role"] == "baseline"
    # MAT-Steer carries its training health per seed, measured on the dev activations, and the table shows it.
    healths = report["methods"]["mat_steer"]["health"]
    assert len(healths) == 2 and all(len(h["gate_auc"]) == len(h["attributes"]) == 3 for h in healths)
    assert "Training health of MAT-Steer" in (tmp_path / "results" / "eval.md").read_text()
    # No steering and ICL edit no activation: their side effects are n/a.
    for name in ("none", "icl"):
        assert report["methods"][name]["test"]["side_effects"] == {"ce": None, "kl": None}
    assert report["methods"]["caa"]["test"]["side_effects"]["kl"]["mean"] >= 0.0
    # The constant answers: 50% where a constant cannot do better by construction.
    const = report["reference"]["constant"]["test"]
    assert const["toxigen_pref"]["accuracy"]["mean"] == 0.5 and const["bbq"]["disambig"]["mean"] >= 0.5
    assert const["bbq"]["ambig"]["mean"] == 0.0 and const["toxigen"]["balanced_accuracy"]["mean"] == 0.5
    # Intervals for every method against no steering and against the best baseline, per task and for the mean.
    intervals = report["intervals"]
    assert set(intervals["vs_none"]) == set(METHODS) - set(COMBINED) - {"none"}
    assert set(intervals["vs_best_baseline"]) == set(METHODS) - set(COMBINED) - {best["name"]}
    for row in (*intervals["vs_none"].values(), *intervals["vs_best_baseline"].values()):
        assert set(row) == {"truthfulqa", "toxigen_pref", "bbq", "mean", "toxigen"}
        assert all(ci["low"] <= ci["mean_diff"] <= ci["high"] for ci in row.values())
    assert report["bootstrap_vs_best_baseline"] == intervals["vs_best_baseline"]["mat_steer"]
    assert report["primary"] == {"truthfulqa": "mc2", "toxigen_pref": "accuracy", "bbq": "disambig",
                                 "toxigen": "balanced_accuracy"}
    det = report["detectable"]
    assert set(det["mde"]) == {"truthfulqa", "toxigen_pref", "bbq", "mean", "toxigen"}
    assert all(v > 0 for v in det["mde"].values())
    md = (cfg.out_dir / "eval.md").read_text()
    assert "MAT-Steer" in md and "(paper)" in md
    assert CONSTANT_LABEL in md and "Smallest difference the test sizes can detect" in md
    assert "Random directions (MAT-Steer norms)" in md and "CAA with probe gates" in md
    # A method at or below the constant on a primary metric is marked.
    none_row = next(line for line in md.splitlines() if line.startswith("| No steering |"))
    none_pref = report["methods"]["none"]["test"]["toxigen_pref"]["accuracy"]["mean"]
    assert (MARK in none_row.split("|")[4]) == (none_pref <= 0.5)
    assert "total_s" in json.loads((cfg.out_dir / "eval-timings.json").read_text())
    from matsteer.viz.figures import figures_from_report

    figs = figures_from_report(json.loads((cfg.out_dir / "eval.json").read_text()))  # sorted keys, as saved
    assert set(figs) == {"method_table", "method_comparison"} and all(f.axes for f in figs.values())
    # Same seeds and inputs: byte-identical result JSON (timings live in their own file).
    again = _config(tiny_dir, tmp_path, "again")
    run_evaluation(again, progress=False)
    first = json.loads((cfg.out_dir / "eval.json").read_text())
    second = json.loads((again.out_dir / "eval.json").read_text())
    first["config"].pop("out_dir"), second["config"].pop("out_dir")
    assert first == second


@pytest.mark.parametrize("change, message", [
    ({"methods": ("none", "dpo", "mat_steer")}, "Unknown methods"),
    ({"methods": ("none", "caa")}, "needs 'mat_steer'"),
    ({"seeds": ()}, "at least one"),
    ({"training_candidates": ({"lambda_pos": -1.0},)}, "lambda_pos"),
    ({"position_grid": ("prompt", "middle")}, "Unknown position policies"),
])
def test_bad_comparison_config(tiny_dir, tmp_path, change, message):
    cfg = _config(tiny_dir, tmp_path)
    for k, v in change.items():
        setattr(cfg, k, v)
    with pytest.raises(ConfigError, match=message):
        cfg.validate()


def test_positions_in_the_dev_grid(tiny_dir, tmp_path, monkeypatch):
    """With a position grid, every steering method's dev grid crosses its multiplier (α) with where it steers,
    and test scores each method where dev chose (its side effects under that policy too)."""
    cfg = _config(tiny_dir, tmp_path)
    cfg.methods, cfg.seeds, cfg.position_grid = ("none", "iti", "caa", "mat_steer"), (0,), ("prompt", "all")
    scored = []
    original = Evaluator.evaluate

    def spy(self, method, side_effects=True):
        scored.append((self.split, method.name, method.positions, dict(method.params)))
        return original(self, method, side_effects)

    monkeypatch.setattr(Evaluator, "evaluate", spy)
    report = run_evaluation(cfg, progress=False)
    caa = report["selection"]["caa"]["dev_trials"]
    assert [t["params"] for t in caa] == [{"multiplier": m, "positions": p} for p in ("prompt", "all")
                                          for m in (0.5, 2.0)]
    assert [t["params"] for t in report["selection"]["iti"]["dev_trials"]] == \
        [{"alpha": 1.0, "positions": "prompt"}, {"alpha": 1.0, "positions": "all"}]
    assert report["selection"]["none"]["dev_trials"][0]["params"] == {}
    for _split, _name, positions, params in scored:
        assert positions == params.get("positions")  # the Method steers where its params say
    for name in ("iti", "caa", "mat_steer"):
        test = [(p, params) for split, n, p, params in scored if split == "test" and n == name]
        assert test == [(report["methods"][name]["params"]["positions"], report["methods"][name]["params"])]
    assert report["sizes"]["test"] == {"truthfulqa": 4, "toxigen_pref": 4, "bbq": 6, "toxigen": 6}
    md = (cfg.out_dir / "eval.md").read_text()
    assert "Chosen on dev (seed 0): " in md and f"positions {report['methods']['caa']['params']['positions']}" in md
    assert "Questions: dev TruthfulQA 4, ToxiGen pairs 4, BBQ 6; test TruthfulQA 4" in md


def test_reference_config_is_whole_test_splits():
    cfg = EvalConfig.reference()
    cfg.validate()
    assert all(v is None for v in cfg.test_limits.values()) and cfg.position_grid == ("prompt", "all")
    assert cfg.dev_limits["truthfulqa"] is None and cfg.out_dir.as_posix() == "results/reference"


def _layer_data(tiny_dir, tmp_path, layer):
    from matsteer.activations.features import extract_to_folder
    from matsteer.activations.models import load_model
    from matsteer.activations.sites import Site
    from matsteer.core.workflow import attribute_data
    from matsteer.data import load_examples

    loaded = load_model(str(tiny_dir), progress=False)
    return [attribute_data(extract_to_folder(loaded, load_examples(ds, "train", limit=4), Site(layer),
                                             tmp_path / f"{ds}-{layer}", tokens="answer", dataset=ds, split="train"))
            for ds in ("truthfulqa", "bbq")]


def test_each_layer_trains_its_own_steerer(tiny_dir, tmp_path):
    """Answer-token features have the same row counts at every layer: the cache key must see the data itself."""
    from matsteer.activations.sites import Site

    layer1, layer2 = _layer_data(tiny_dir, tmp_path, 1), _layer_data(tiny_dir, tmp_path, 2)
    assert [(a.positives.shape, a.negatives.shape) for a in layer1] == \
        [(a.positives.shape, a.negatives.shape) for a in layer2]
    ex = object.__new__(Experiment)  # the memo alone: no model, no evaluators
    ex.cfg = _config(tiny_dir, tmp_path)
    ex.cfg.demo.train = TrainConfig(epochs=2, sigma="median", batch_per_side=4)
    ex.site, ex.train_data, ex.timings = Site(1), layer1, {}
    ex._trained, ex._digests = {}, TensorDigests()
    first = ex.steerer(0, {}, layer1)
    second = ex.steerer(0, {}, layer2)  # the layer sweep passes another layer's features like this
    assert second is not first and not torch.equal(first.theta, second.theta)
    assert ex.steerer(0, {}, layer1) is first and ex.steerer(0) is first  # memoised; layer1 is the default data
    assert ex.steerer(0, {}, layer2, site=Site(2)) is not second  # the site is part of the key too
    assert len(ex._trained) == 3
    fp = data_fingerprint(layer1)
    assert fp == data_fingerprint(layer1, ex._digests) != data_fingerprint(layer2)
    assert steerer_key(0, {}, Site(1), fp) != steerer_key(0, {}, Site(2), fp)
    assert steerer_key(0, {}, Site(1), fp) != steerer_key(1, {}, Site(1), fp)
    layer1[0].positives.add_(1.0)  # changed in place: hashed afresh, trained afresh
    assert ex.steerer(0, {}, layer1) is not first


def test_each_protocol_has_its_own_selection_and_table(tiny_dir, tmp_path):
    """protocols=("prompt", "generated"): the primary table steers the query; the answer-only variant chooses on
    dev again for every steering method and reuses the rows that steer nothing."""
    cfg = _config(tiny_dir, tmp_path)
    cfg.methods, cfg.seeds, cfg.protocols = ("none", "temperature", "caa", "mat_steer"), (0,), ("prompt", "generated")
    report = run_evaluation(cfg, progress=False)
    assert report["protocol"] == "prompt" and list(report["protocols"]) == ["generated"]
    variant = report["protocols"]["generated"]
    for part, where in ((report, "prompt"), (variant, "generated")):
        for name in ("caa", "mat_steer"):
            assert all(t["params"]["positions"] == where for t in part["selection"][name]["dev_trials"])
            assert part["methods"][name]["params"]["positions"] == where
        assert set(part["intervals"]["vs_none"]) == {"temperature", "caa", "mat_steer"}
    for name in ("none", "temperature"):
        assert variant["methods"][name] == report["methods"][name]
    md = (cfg.out_dir / "eval.md").read_text()
    assert md.startswith("Protocol: steer the query tokens (the paper's protocol) while scoring (the primary")
    assert "## Protocol variant: generated" in md and "Protocol: steer the answer tokens only while scoring." in md
    with pytest.raises(ConfigError, match="not both"):
        EvalConfig(protocols=("prompt",), position_grid=("all",)).validate()


def test_a_run_borrows_another_comparisons_dev_choices(tiny_dir, tmp_path, monkeypatch):
    """settings_from: the methods the other comparison chose for (under this run's protocol) are scored at its
    choices with no dev search here; MAT-Steer trains with its training setting; a method it lacks is tuned."""
    from matsteer.files import write_json

    trial = {"dev_kl": 0.1}
    donor = {"config": {"positions": "prompt", "position_grid": ["prompt", "all"], "protocols": []},
             "selection": {
                 "caa": {"chosen": {"multiplier": 3.0, "positions": "all"}, "dev_trials": [
                     {**trial, "params": {"multiplier": 3.0, "positions": "prompt"}, "dev_mean": 0.5},
                     {**trial, "params": {"multiplier": 3.0, "positions": "all"}, "dev_mean": 0.6}]},
                 "mat_steer": {"chosen": {"multiplier": 0.25, "positions": "prompt"}, "dev_trials": [
                     {**trial, "params": {"multiplier": 0.25, "positions": "prompt"}, "dev_mean": 0.4}]},
                 "training_default": {"chosen": {"overrides": {"lambda_pos": 0.1, "lambda_sparse": 0.1}}}}}
    write_json(tmp_path / "donor.json", donor)
    cfg = _config(tiny_dir, tmp_path)
    cfg.methods, cfg.seeds, cfg.settings_from = ("none", "iti", "caa", "mat_steer"), (0,), str(tmp_path / "donor.json")
    steps: list[str] = []
    report = run_evaluation(cfg, progress=False, on_step=steps.append)
    assert not any(s.startswith(("comparison: dev: tuning caa", "comparison: dev: tuning mat_steer")) for s in steps)
    assert "comparison: dev: tuning iti" in steps  # not in the donor: tuned here
    assert report["methods"]["caa"]["params"] == {"multiplier": 3.0, "positions": "prompt"}
    assert report["methods"]["mat_steer"]["params"] == {"multiplier": 0.25, "positions": "prompt"}
    assert report["selection"]["caa"]["borrowed_from"] == str(tmp_path / "donor.json")
    assert report["selection"]["training_default"]["chosen"]["overrides"] == {"lambda_pos": 0.1,
                                                                             "lambda_sparse": 0.1}
    with pytest.raises(ConfigError, match="no such file"):
        EvalConfig(settings_from=str(tmp_path / "missing.json")).validate()
