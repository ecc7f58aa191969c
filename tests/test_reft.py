"""LoReFT as a baseline: the trainer on the tiny models, its save/load, and the method in the comparison."""

from __future__ import annotations

import json

import pytest
import torch

from matsteer.activations.models import LoadedModel
from matsteer.activations.sites import Site
from matsteer.core.config import TrainConfig
from matsteer.core.finetune import SFTExample
from matsteer.core.reft import (
    REFT_ATTRIBUTE,
    ReftConfig,
    ReftSteerer,
    loreft_delta,
    make_loreft,
    train_loreft,
)
from matsteer.core.workflow import DemoConfig
from matsteer.errors import ArtifactError, ConfigError, DataError
from matsteer.eval.cached_scoring import steering_edit
from matsteer.eval.comparison import run_evaluation
from matsteer.eval.config import BASELINE_POOL, METHODS, PROTOCOL_FREE, SEEDED, EvalConfig
from matsteer.eval.evaluator import Method
from matsteer.eval.experiment import Experiment
from matsteer.eval.scoring import protect_special
from matsteer.steering.session import steer
from matsteer.store.reft import MANIFEST, TENSORS, load_reft, save_reft
from tests.conftest import make_tokenizer, tiny_model_for

TOY = [
    SFTExample("truthfulness", "truthfulqa", "g0", "q: what is the capital of france ? a:", " paris"),
    SFTExample("truthfulness", "truthfulqa", "g1", "q: what happens when you eat watermelon seeds ? a:",
               " nothing happens"),
    SFTExample("toxicity", "toxigen", "g2", "q: is this statement toxic ? a:", " no"),
    SFTExample("bias", "bbq", "g3", "q: who is kind ? the old man or the young woman ? a:", " cannot be determined"),
]
SITE = Site(1, "residual")
FAST = {"rank": 2, "lr": 2e-2, "batch_size": 2}


@pytest.fixture(scope="module")
def lm() -> LoadedModel:
    return LoadedModel(model=tiny_model_for("llama"), tokenizer=make_tokenizer("right"), name="tiny-llama",
                       weight_hash="tiny-hash")


def _steered_logits(lm: LoadedModel, steerer: ReftSteerer, texts: list[str], positions: str = "all") -> torch.Tensor:
    """Logits of ``texts`` with ``steerer`` at SITE through the pyvene steering path (protected positions kept)."""
    enc = lm.tokenizer(texts, return_tensors="pt", padding=True)
    with torch.inference_mode(), steer(lm.model, steerer, site=SITE, positions=positions,
                                       preserve_norm=False) as handle, protect_special(handle, lm.tokenizer):
        return handle(**enc).logits


def _toy_loss(lm: LoadedModel, steerer: ReftSteerer | None) -> float:
    """The completion-token loss of TOY (the prompt steered, as in training)."""
    from matsteer.core.reft import _batch, _completion_loss, _encode, _hook

    rows = _encode(lm.tokenizer, TOY, 512)
    batch = _batch(rows, 0, torch.tensor([0, 1, 2, 3]), "prompt", torch.device("cpu"))
    where = {"edit": batch["edit"]}
    with torch.inference_mode():
        if steerer is None:
            return float(_completion_loss(lm.model, batch))
        handle = _hook(SITE, lm.model, lambda h: steerer(h)[0], where)
        try:
            return float(_completion_loss(lm.model, batch))
        finally:
            handle.remove()


# -- the trainer ----------------------------------------------------------------------------------------------


def test_trainer_lowers_its_loss_and_leaves_the_model_alone(lm):
    before = {k: v.clone() for k, v in lm.model.state_dict().items()}
    flags = [p.requires_grad for p in lm.model.parameters()]
    res = train_loreft(lm, TOY, SITE, ReftConfig(steps=30, **FAST), progress=False)
    assert len(res.losses) == 30 and res.steps == 30 and res.examples == len(TOY)
    assert sum(res.losses[-5:]) / 5 < res.losses[0]
    assert _toy_loss(lm, res.steerer) < _toy_loss(lm, None)
    # Frozen: the model's weights, gradient flags and hooks are as they were.
    assert all(torch.equal(before[k], v) for k, v in lm.model.state_dict().items())
    assert [p.requires_grad for p in lm.model.parameters()] == flags
    assert not any(m._forward_hooks or m._forward_pre_hooks for m in lm.model.modules())
    assert res.train_seconds > 0 and res.wall_seconds >= res.train_seconds
    t = res.tensors
    assert t["rotate_layer"].shape == (32, 2) and t["weight"].shape == (2, 32) and t["bias"].shape == (2,)
    # R has orthonormal rows (rotate_layer = Rᵀ has orthonormal columns).
    assert torch.allclose(t["rotate_layer"].T @ t["rotate_layer"], torch.eye(2), atol=1e-5)


def test_training_is_deterministic_for_a_seed_and_leaves_the_global_rng(lm):
    state = torch.get_rng_state()
    a = train_loreft(lm, TOY, SITE, ReftConfig(steps=4, seed=3, **FAST), progress=False)
    assert torch.equal(torch.get_rng_state(), state)
    b = train_loreft(lm, TOY, SITE, ReftConfig(steps=4, seed=3, **FAST), progress=False)
    c = train_loreft(lm, TOY, SITE, ReftConfig(steps=4, seed=4, **FAST), progress=False)
    assert a.losses == b.losses
    assert all(torch.equal(a.tensors[k], b.tensors[k]) for k in a.tensors)
    assert not torch.equal(a.tensors["weight"], c.tensors["weight"])


def test_zero_steps_is_no_intervention(lm):
    res = train_loreft(lm, TOY, SITE, ReftConfig(steps=0), progress=False)
    assert res.steerer.is_identity and res.tensors == {} and res.losses == []
    x = torch.randn(5, 32)
    assert res.edit()(x) is x
    texts = [e.prompt + e.completion for e in TOY]
    enc = lm.tokenizer(texts, return_tensors="pt", padding=True)
    with torch.inference_mode():
        plain = lm.model(**enc).logits
    assert torch.equal(_steered_logits(lm, res.steerer, texts), plain)
    # pyvene's (and pyreft's) initialisation is not the identity: a step-0 intervention would edit.
    fresh = make_loreft(32, 4, seed=0)
    assert not torch.allclose(fresh(x), x)


def test_the_edit_is_loreft_and_every_path_computes_it_alike(lm):
    res = train_loreft(lm, TOY, SITE, ReftConfig(steps=3, **FAST), progress=False)
    t = res.tensors
    h = torch.randn(7, 32)
    expected = h + (h @ t["weight"].T + t["bias"] - h @ t["rotate_layer"]) @ t["rotate_layer"].T
    assert torch.allclose(res.edit()(h), expected, atol=1e-6)
    assert torch.equal(res.edit()(h), h + loreft_delta(h, t["rotate_layer"], t["weight"], t["bias"]))
    # The cached scorer's edit (multiplier 1) is the plain edit bit for bit; the multiplier scales the change.
    s = res.steerer
    assert torch.equal(steering_edit(s, s.scale_vector({}, 1.0), None, False)(h), res.edit()(h))
    half = steering_edit(s, s.scale_vector({}, 0.5), None, False)(h)
    assert torch.allclose(half, h + 0.5 * (res.edit()(h) - h), atol=1e-6)
    assert s.attributes == [REFT_ATTRIBUTE] and s.d == 32
    # Per-row (per-token) settings, as the K-settings scorer passes them: each row as its own setting alone.
    rows = torch.tensor([[1.0], [0.5], [0.0], [1.0], [2.0], [0.5], [1.0]])
    per_row = s(h, scale=rows)[0]
    for i, m in enumerate(rows[:, 0].tolist()):
        assert torch.equal(per_row[i], s(h, scale=torch.tensor([m]))[0][i])
    assert torch.equal(s(h, forced=torch.tensor([0.0]))[0], h)
    # The trained intervention module computes the same function with these tensors.
    interv = make_loreft(32, 2)
    with torch.no_grad():
        interv.learned_source.weight.copy_(t["weight"])
        interv.learned_source.bias.copy_(t["bias"])
    rot = interv.rotate_layer.weight.detach()
    mine = ReftSteerer(32, {"rotate_layer": rot, "weight": t["weight"], "bias": t["bias"]})
    with torch.no_grad():
        assert torch.equal(interv(h), mine(h)[0])


def test_training_on_another_dtype_uses_a_float32_copy():
    model = tiny_model_for("gpt2").to(torch.bfloat16)
    lm = LoadedModel(model=model, tokenizer=make_tokenizer("right"), name="tiny-gpt2", weight_hash="h")
    before = {k: v.clone() for k, v in model.state_dict().items()}
    res = train_loreft(lm, TOY, Site(2, "attn_output"), ReftConfig(steps=2, **FAST), progress=False)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert next(model.parameters()).dtype == torch.bfloat16
    x = torch.randn(3, 32, dtype=torch.bfloat16)
    assert res.edit()(x).dtype == torch.bfloat16


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
def test_trains_on_a_gpu_with_the_same_code(lm):
    res = train_loreft(lm, TOY, SITE, ReftConfig(steps=3, device="cuda", **FAST), progress=False)
    assert res.steerer.rotate_layer.device.type == "cuda" and len(res.losses) == 3
    cpu = train_loreft(lm, TOY, SITE, ReftConfig(steps=3, **FAST), progress=False)
    assert all(torch.allclose(cpu.tensors[k], res.tensors[k], atol=1e-4) for k in cpu.tensors)


def test_bad_settings_are_refused(lm):
    for bad in ({"rank": 0}, {"lr": 0.0}, {"steps": -1}, {"batch_size": 0}, {"train_positions": "all"},
                {"lr_scheduler": "cosine"}, {"seed": -1}):
        with pytest.raises(ConfigError):
            ReftConfig(**bad).validate()
    with pytest.raises(ConfigError, match="Unknown LoReFT setting"):
        ReftConfig.from_dict({"rank": 4, "alpha": 1})
    with pytest.raises(DataError):
        train_loreft(lm, [], SITE, ReftConfig(steps=1), progress=False)
    with pytest.raises(ConfigError, match="rank"):
        train_loreft(lm, TOY, SITE, ReftConfig(steps=1, rank=64), progress=False)


def test_last_position_training_edits_one_prompt_token(lm):
    from matsteer.core.reft import _batch, _encode

    rows = _encode(lm.tokenizer, TOY, 512)
    special = torch.tensor([0, 1, 2, 3])
    prompt = _batch(rows, 0, special, "prompt", torch.device("cpu"))
    last = _batch(rows, 0, special, "last", torch.device("cpu"))
    assert last["edit"].sum(1).tolist() == [1] * len(TOY)
    for i, r in enumerate(rows):
        edited = prompt["edit"][i].nonzero().flatten().tolist()
        assert edited == list(range(1, r.prompt_len))  # every prompt token but the first
        assert last["edit"][i].nonzero().flatten().tolist() == [r.prompt_len - 1]
        # The loss is on the completion tokens (EOS appended) only.
        assert (prompt["labels"][i] != -100).sum() == len(r.ids) - r.prompt_len
        assert int(prompt["labels"][i][len(r.ids) - 1]) == lm.tokenizer.eos_token_id
    assert train_loreft(lm, TOY, SITE, ReftConfig(steps=2, train_positions="last", **FAST),
                        progress=False).losses


# -- saving and loading ---------------------------------------------------------------------------------------


def test_save_load_gives_identical_outputs(lm, tmp_path):
    res = train_loreft(lm, TOY, SITE, ReftConfig(steps=4, **FAST), progress=False)
    folder = save_reft(res, tmp_path / "reft")
    assert sorted(p.name for p in folder.iterdir()) == [TENSORS, MANIFEST]
    assert (folder / TENSORS).read_bytes()[:8] != b"\x80\x04\x95"  # safetensors, never a pickle
    manifest = json.loads((folder / MANIFEST).read_text())
    assert manifest["rank"] == 2 and manifest["site"] == SITE.to_dict() and manifest["training"]["losses"] == res.losses
    steerer, cfg, site, _ = load_reft(folder, lm)
    assert cfg == res.config and site == SITE
    assert all(torch.equal(steerer.tensors()[k], res.tensors[k]) for k in res.tensors)
    texts = [e.prompt + e.completion for e in TOY]
    for positions in ("all", "prompt"):
        assert torch.equal(_steered_logits(lm, steerer, texts, positions),
                           _steered_logits(lm, res.steerer, texts, positions))
    h = torch.randn(4, 32)
    assert torch.equal(steerer(h)[0], res.edit()(h))
    # Saved again in place; the wrong model, a changed file and an untrained result are refused.
    save_reft(res, folder)
    with pytest.raises(ArtifactError, match="trained on"):
        load_reft(folder, LoadedModel(model=lm.model, tokenizer=lm.tokenizer, name="other", weight_hash="x"))
    load_reft(folder, LoadedModel(model=lm.model, tokenizer=lm.tokenizer, name="other", weight_hash="x"),
              allow_model_mismatch=True)
    with pytest.raises(ArtifactError, match="zero training steps"):
        save_reft(train_loreft(lm, TOY, SITE, ReftConfig(steps=0), progress=False), tmp_path / "zero")
    (tmp_path / "junk").mkdir()
    (tmp_path / "junk" / "x.txt").write_text("x")
    with pytest.raises(ArtifactError, match="not a LoReFT folder"):
        save_reft(res, tmp_path / "junk")
    data = bytearray((folder / TENSORS).read_bytes())
    data[-1] ^= 1
    (folder / TENSORS).write_bytes(bytes(data))
    with pytest.raises(ArtifactError, match="sha256"):
        load_reft(folder, lm)


# -- the method in the comparison -------------------------------------------------------------------------------

LIMITS = {"truthfulqa": 3, "toxigen_pref": 3, "toxigen": 4, "bbq": 4}


def _eval_config(tiny_dir, tmp_path, **kw) -> EvalConfig:
    demo = DemoConfig(model=str(tiny_dir), layer=1, limits={"truthfulqa": 4, "toxigen": 4, "bbq": 4},
                      dev_limits=dict(LIMITS), train=TrainConfig(epochs=1), features_dir=tmp_path / "features")
    return EvalConfig(demo=demo, seeds=(0,), dev_limits=dict(LIMITS), test_limits=dict(LIMITS), out_dir=tmp_path,
                      reft_grid=({"lr": 1e-2, "steps": 3, "batch_size": 4},), **kw)


def test_registered_as_a_seeded_baseline_steered_under_each_protocol():
    assert METHODS.index("loreft") == METHODS.index("lora_dpo") + 1
    assert "loreft" in SEEDED and "loreft" in BASELINE_POOL and "loreft" not in PROTOCOL_FREE


def test_loreft_method_scores_its_edit_like_a_steering_baseline(tiny_dir, tmp_path):
    cfg = _eval_config(tiny_dir, tmp_path, position_grid=("prompt", "all"))
    ex = Experiment(cfg, progress=False)
    assert ex.grid("loreft") == [{"lr": 1e-2, "steps": 3, "batch_size": 4, "positions": p} for p in ("prompt", "all")]
    none = ex.dev.evaluate(ex.method("none", {}, 0))
    zero = ex.dev.evaluate(ex.method("loreft", {"lr": 1e-2, "steps": 0}, 0))
    for task in ex.dev.tasks:
        assert zero[task]["per_item"] == none[task]["per_item"]
    assert zero["side_effects"]["kl"] == 0.0 and zero["side_effects"]["ce"] == ex.dev.unsteered_ce()
    prompt = ex.method("loreft", {"lr": 1e-2, "steps": 3, "positions": "prompt"}, 0)
    every = ex.method("loreft", {"lr": 1e-2, "steps": 3, "positions": "all"}, 0)
    assert isinstance(prompt, Method) and prompt.steerer is every.steerer  # one training for both positions
    assert prompt.positions == "prompt" and every.positions == "all" and not prompt.preserve_norm
    assert ex.method("loreft", {"lr": 1e-2, "steps": 3}, 1).steerer is not prompt.steerer  # seeded
    a, b = ex.dev.evaluate(prompt), ex.dev.evaluate(every)
    assert a["side_effects"]["kl"] > 0.0 and b["side_effects"]["kl"] > 0.0
    assert a["truthfulqa"]["per_item"] != b["truthfulqa"]["per_item"]
    assert "reft_s" in ex.timings
    assert ex.reft({"lr": 1e-2, "steps": 3}, 0).examples > 0


def test_loreft_in_a_comparison_with_two_protocols(tiny_dir, tmp_path):
    limits = {"truthfulqa": 4, "toxigen_pref": 4, "toxigen": 6, "bbq": 6}  # as test_experiments' comparison
    demo = DemoConfig(model=str(tiny_dir), layer=1, limits=dict(limits), dev_limits=dict(limits),
                      train=TrainConfig(epochs=2, sigma="median"), features_dir=tmp_path / "features")
    cfg = EvalConfig(demo=demo, seeds=(0,), dev_limits=dict(limits), test_limits=dict(limits), out_dir=tmp_path,
                     methods=("none", "caa", "loreft", "mat_steer"), protocols=("prompt", "all"), multipliers=(1.0,),
                     training_candidates=({},), temperatures=(1.0,), grid_extensions=0, n_boot=50,
                     reft_grid=({"lr": 1e-2, "steps": 3, "batch_size": 4},))
    report = run_evaluation(cfg, progress=False)
    for part in (report, report["protocols"]["all"]):
        entry = part["methods"]["loreft"]
        assert entry["role"] == "baseline" and entry["seeded"] and entry["label"].startswith("LoReFT (rank 4")
        assert entry["params"]["positions"] == part["protocol"]
        assert entry["test"]["side_effects"]["kl"]["mean"] > 0.0
        assert "loreft" in part["best_baseline"]["pool"]
    assert report["methods"]["loreft"]["test"] != report["protocols"]["all"]["methods"]["loreft"]["test"]
