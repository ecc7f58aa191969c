"""Generation win rates end to end on a tiny saved model with a deterministic stub judge."""

from __future__ import annotations

import json

import pytest

from matsteer.core.config import TrainConfig
from matsteer.core.workflow import DemoConfig
from matsteer.errors import ConfigError
from matsteer.eval.config import EvalConfig
from matsteer.eval.judges import StubJudge
from matsteer.eval.pairwise import pairwise_win_rate
from matsteer.eval.winrates import WinRateConfig, harmless_prompts, run_win_rates
from matsteer.steering.generation import generate_texts

LIMITS = {"truthfulqa": 4, "toxigen": 6, "bbq": 6}
SELECTION = {"training_default": {"chosen": {"overrides": {"lambda_pos": 0.1, "lambda_sparse": 0.1}}},
             "none": {"chosen": {}}, "caa": {"chosen": {"multiplier": 2.0}}, "mat_steer": {"chosen": {"multiplier": 1.0}}}


def _setup(tiny_dir, tmp_path):
    demo = DemoConfig(model=str(tiny_dir), layer=1, limits=dict(LIMITS), dev_limits=dict(LIMITS),
                      train=TrainConfig(epochs=2, sigma="median"), features_dir=tmp_path / "features")
    cfg = EvalConfig(demo=demo, seeds=(0, 1), dev_limits=dict(LIMITS), test_limits=dict(LIMITS),
                     out_dir=tmp_path / "results")
    eval_json = tmp_path / "eval.json"
    eval_json.write_text(json.dumps({"selection": SELECTION}))
    return cfg, eval_json


def test_harmless_prompts_are_first_human_turns():
    prompts = harmless_prompts("test", 5)
    assert len(prompts) == 5 and all(p and "Human:" not in p and "Assistant:" not in p for p in prompts)


def test_win_rates_count_the_judge_scores(tiny_dir, tmp_path):
    cfg, eval_json = _setup(tiny_dir, tmp_path)
    judge = StubJudge(lambda prompt, response, attribute: len(response) % 5, scale=(0, 4))
    wcfg = WinRateConfig(n_prompts=4, methods=("none", "caa", "mat_steer"), max_new_tokens=4, batch_size=3)
    report = run_win_rates(cfg, eval_json, wcfg, judge=judge, progress=False)
    runs = report["runs"]
    assert [len(runs[m]) for m in ("none", "caa", "mat_steer")] == [1, 1, 2]  # trained methods: once per seed
    prompts = report["prompts"]
    # "none" is the model with no hooks at all.
    from matsteer.activations.models import load_model

    loaded = load_model(str(tiny_dir), progress=False)
    assert runs["none"][0]["responses"] == generate_texts(loaded, prompts, max_new_tokens=4, batch_size=3)
    for other in ("none", "caa"):
        per_seed = report["mat_steer_vs"][other]["per_seed"]
        assert len(per_seed) == 2
        for m_run, counts in zip(runs["mat_steer"], per_seed):
            expect = pairwise_win_rate(m_run["scores"], runs[other][0]["scores"], wcfg.attributes)
            assert counts == {"win": expect.win, "loss": expect.loss, "tie": expect.tie, "n": 4}
            assert all(s[a] == len(r) % 5 for s, r in zip(m_run["scores"], m_run["responses"]) for a in wcfg.attributes)
    saved = json.loads((cfg.out_dir / "winrates.json").read_text())
    assert saved["judge"] == {"name": "stub", "weak": False, "scale": [0, 4]}
    assert "WEAK" not in (cfg.out_dir / "winrates.md").read_text()


def test_weak_judge_is_labelled_and_ties_are_counted(tiny_dir, tmp_path):
    cfg, eval_json = _setup(tiny_dir, tmp_path)
    judge = StubJudge(lambda prompt, response, attribute: 2.0, name="tiny (weak judge)")
    judge.weak = True
    wcfg = WinRateConfig(n_prompts=3, methods=("none", "mat_steer"), max_new_tokens=3)
    report = run_win_rates(cfg, eval_json, wcfg, judge=judge, progress=False)
    assert report["mat_steer_vs"]["none"]["tie_rate"]["mean"] == 1.0
    assert report["mat_steer_vs"]["none"]["decisive_win_rate"] is None
    assert "WEAK judge" in (cfg.out_dir / "winrates.md").read_text()


@pytest.mark.parametrize("methods, message", [(("none", "caa"), "need 'mat_steer'"),
                                              (("icl", "mat_steer"), "leave 'icl' out")])
def test_bad_win_rate_config(methods, message):
    with pytest.raises(ConfigError, match=message):
        WinRateConfig(methods=methods).validate()


def test_win_rates_need_the_comparison(tiny_dir, tmp_path):
    cfg, _ = _setup(tiny_dir, tmp_path)
    with pytest.raises(ConfigError, match="matsteer compare"):
        run_win_rates(cfg, tmp_path / "missing.json", WinRateConfig(), judge=StubJudge(), progress=False)
