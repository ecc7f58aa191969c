"""The search plan counts a comparison's work from its settings; the estimate is the hand arithmetic of its unit
costs (the plan's agreement with a real run is checked in test_selection's layer test)."""

from __future__ import annotations

import json

import pytest

from matsteer.errors import ConfigError
from matsteer.eval.config import EvalConfig
from matsteer.eval.plan import MethodPlan, SearchPlan, UnitCosts, measured_costs, search_plan


def test_counts_by_hand():
    cfg = EvalConfig(methods=("none", "caa", "mat_steer", "random"), multipliers=(1.0, 2.0, 4.0), grid_extensions=2,
                     seeds=(0, 1), training_candidates=({}, {"lambda_pos": 0.1}), protocols=("prompt", "all"),
                     search="halving", halving_keep=2, layers=(10, 14))
    plan = {m.name: m for m in search_plan(cfg).methods}
    # No steering: one setting, once (it steers nothing, so it is scored under the first protocol only).
    assert plan["none"] == MethodPlan("none", 0, 1, 1, 1)
    # CAA: 3 strengths + 2 extensions on the subset per protocol, 2 finalists each; the layer on 3 strengths x 2.
    assert plan["caa"] == MethodPlan("caa", 6, 10, 4, 2)
    # MAT-Steer: the same per training candidate; seeded, so a test row per seed and protocol.
    assert plan["mat_steer"] == MethodPlan("mat_steer", 6, 20, 8, 4)
    assert plan["random"].test_rows == 4


def test_seconds_by_hand():
    plan = SearchPlan((MethodPlan("a", 4, 8, 2, 3), MethodPlan("b", 0, 4, 1, 1)), subset_fraction=0.25)
    costs = UnitCosts(dev_trial_s=10.0, test_row_s=100.0, source="hand")
    assert plan.totals() == {"layer_trials": 4, "subset_trials": 12, "dev_trials": 3, "test_rows": 4}
    assert plan.seconds(costs) == (16 * 0.25 + 3) * 10.0 + 4 * 100.0
    assert "about 0.1 h" in plan.table(costs)  # 470 s


def test_costs_from_a_finished_comparison(tmp_path):
    report = {"selection": {"training_default": {}, "caa": {"dev_trials": [{}, {}, {}]}, "none": {"dev_trials": [{}]},
                            "icv": {"dev_trials": [{}, {}]}},
              "methods": {"caa": {"seeds": [0]}, "none": {"seeds": [0]}, "mat_steer": {"seeds": [0, 1]},
                          "icv": {"seeds": [0]}},
              "additions": [{"methods": ["icv"]}]}
    (tmp_path / "eval.json").write_text(json.dumps(report))
    (tmp_path / "eval-timings.json").write_text(json.dumps({"dev_eval_s": 80.0, "test_eval_s": 400.0}))
    costs = measured_costs(tmp_path)  # the added row and its trials are not the run's own
    assert (costs.dev_trial_s, costs.test_row_s) == (20.0, 100.0)
    (tmp_path / "eval-timings.json").write_text(json.dumps({"test_eval_s": 400.0}))
    with pytest.raises(ConfigError, match="dev_eval_s"):
        measured_costs(tmp_path)


def test_the_protocol_reference_is_planned_with_every_control():
    cfg = EvalConfig.protocol_reference()
    cfg.validate()
    assert cfg.protocols[0] == "prompt" and cfg.layers == (10, 14, 18, 22) and len(cfg.seeds) == 5
    assert min(cfg.iti_alphas) == 0.25 and max(cfg.multipliers) == 16.0  # ITI gets a gentle point
    plan = search_plan(cfg)
    assert plan.totals()["test_rows"] > plan.totals()["dev_trials"] > 0
