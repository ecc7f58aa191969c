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


def test_table9_rows_put_mat_steer_on_top_of_icl_and_the_adapted_model(tiny_dir, tmp_path):
    import torch

    from matsteer.eval.evaluator import Method

    demo = DemoConfig(model=str(tiny_dir), layer=1, limits={"truthfulqa": 4, "toxigen": 4, "bbq": 4},
                      dev_limits=dict(LIMITS), train=TrainConfig(epochs=1, batch_per_side=2), features_dir=tmp_path / "features")
    cfg = EvalConfig(demo=demo, seeds=(0,), dev_limits=dict(LIMITS), test_limits=dict(LIMITS), multipliers=(1.0, 2.0),
                     icl_shots=(1,), finetune={"batch_size": 2}, finetune_grid=({"lr": 5e-2, "steps": 2},),
                     out_dir=tmp_path)
    ex = Experiment(cfg, progress=False)
    assert ex.grid("icl_mat_steer") == [{"shots": 1, "multiplier": 1.0}, {"shots": 1, "multiplier": 2.0}]
    assert ex.grid("sft_mat_steer")[1] == {"lr": 5e-2, "steps": 2, "multiplier": 2.0}
    # ICL + MAT-Steer: the comparison's own MAT-Steer on the demonstration-prefixed prompts.
    icl, mat = ex.method("icl", {"shots": 1}, 0), ex.method("mat_steer", {"multiplier": 2.0}, 0)
    both = ex.method("icl_mat_steer", {"shots": 1, "multiplier": 2.0}, 0)
    assert both.steerer is mat.steerer and both.prefix == icl.prefix and both.global_multiplier == 2.0
    # SFT + MAT-Steer: the LoRA row's adapted copy (the same memoised one), steered by a MAT-Steer trained on its
    # own activations, extracted into folders of its own.
    sft = ex.method("lora_sft", {"lr": 5e-2, "steps": 2}, 0)
    combined = ex.method("sft_mat_steer", {"lr": 5e-2, "steps": 2, "multiplier": 2.0}, 0)
    assert combined.model is sft.model and combined.steerer is not None
    assert not torch.equal(combined.steerer.theta, mat.steerer.theta)
    folders = {p.parent.parent.name for p in (tmp_path / "features").rglob("manifest.json")}
    assert any(name.endswith(sft.model.weight_hash[:12]) for name in folders) and len(folders) == 2
    # Scored by the adapted model with the steerer on: unlike the adapter alone, and its side effects count both.
    alone, steered = ex.dev.evaluate(sft), ex.dev.evaluate(combined)
    assert steered["side_effects"]["kl"] != alone["side_effects"]["kl"]
    on_adapted = ex.dev.for_model(sft.model).evaluate(Method("mat_steer", combined.steerer, global_multiplier=2.0),
                                                      side_effects=False)
    assert all(steered[t]["per_item"] == on_adapted[t]["per_item"] for t in ex.dev.tasks)
