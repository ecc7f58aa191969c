"""The LoRA baselines as methods of the comparison: trained on the training splits, answering through their own
merged copy of the model; zero steps score exactly as no steering, and the training is memoised per setting."""

from __future__ import annotations

import pytest

from matsteer.core.config import TrainConfig
from matsteer.core.workflow import DemoConfig
from matsteer.eval.config import EvalConfig
from matsteer.eval.experiment import Experiment

pytest.importorskip("peft")
pytest.importorskip("trl")

LIMITS = {"truthfulqa": 3, "toxigen_pref": 3, "toxigen": 4, "bbq": 4}


def test_lora_methods_score_through_their_adapted_copy(tiny_dir, tmp_path):
    demo = DemoConfig(model=str(tiny_dir), layer=1, limits={"truthfulqa": 4, "toxigen": 4, "bbq": 4},
                      dev_limits=dict(LIMITS), train=TrainConfig(epochs=1), features_dir=tmp_path / "features")
    cfg = EvalConfig(demo=demo, seeds=(0,), dev_limits=dict(LIMITS), test_limits=dict(LIMITS),
                     finetune={"batch_size": 2}, out_dir=tmp_path)
    ex = Experiment(cfg, progress=False)
    none = ex.dev.evaluate(ex.method("none", {}, 0))
    for name in ("lora_sft", "lora_dpo"):
        zero = ex.dev.evaluate(ex.method(name, {"lr": 1e-3, "steps": 0}, 0))
        for task in ex.dev.tasks:
            assert zero[task]["per_item"] == none[task]["per_item"]
        assert zero["side_effects"]["kl"] == 0.0
        trained = ex.method(name, {"lr": 5e-2, "steps": 3}, 0)
        assert ex.method(name, {"lr": 5e-2, "steps": 3}, 0).model is trained.model  # memoised
        res = ex.finetuned(name, {"lr": 5e-2, "steps": 3}, 0)
        assert res.steps == 3 and res.examples > 0 and res.config.batch_size == 2
        assert ex.dev.evaluate(trained)["side_effects"]["kl"] > 0.0
    assert ex.grid("lora_sft") == [dict(p) for p in cfg.finetune_grid]
