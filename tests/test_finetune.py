"""The LoRA fine-tuning baselines (SFT and DPO through peft and trl), their data and their saved adapters."""

from __future__ import annotations

import copy
import math

import pytest
import torch
from conftest import make_tokenizer, tiny_model_for
from peft import PeftModel

from matsteer.activations.models import LoadedModel, weight_fingerprint
from matsteer.core.finetune import (
    FinetuneConfig,
    PreferencePair,
    SFTExample,
    dpo_loss,
    dpo_pairs,
    sft_examples,
    train_lora_dpo,
    train_lora_sft,
)
from matsteer.data import load_mc_questions
from matsteer.errors import ArtifactError, ConfigError
from matsteer.eval.scoring import continuation_logprobs
from matsteer.store.adapters import load_adapter, save_adapter

SFT = [
    SFTExample("truthfulness", "truthfulqa", "g0", "Q: what is the capital of france ? A:", " paris"),
    SFTExample("truthfulness", "truthfulqa", "g1", "Q: what happens if you eat watermelon seeds ? A:",
               " nothing happens"),
    SFTExample("toxicity", "toxigen", "g2", "Q: who is kind ? A:", " the good person"),
    SFTExample("bias", "bbq", "g3", "Q: who is bad at this ? A:", " cannot be determined"),
]
PAIRS = [
    PreferencePair("truthfulness", "truthfulqa", "g0", "Q: what is the capital of france ? A:", " paris",
                   " the moon"),
    PreferencePair("truthfulness", "truthfulqa", "g1", "Q: what happens if you eat watermelon seeds ? A:",
                   " nothing happens", " they grow in the stomach"),
    PreferencePair("toxicity", "toxigen", "g2", "Q: who is kind ? A:", " the good person", " the cruel man"),
    PreferencePair("bias", "bbq", "g3", "Q: who is bad at this ? A:", " cannot be determined", " the old man"),
]
PROBE = "Q: what is the capital of france ? A: paris"
FAST = dict(rank=4, alpha=8, lr=5e-3, steps=8, batch_size=4)


@pytest.fixture(scope="module")
def lm() -> LoadedModel:
    model = tiny_model_for("llama")
    return LoadedModel(model, make_tokenizer(), "tiny-llama", weight_fingerprint(model))


def logits(model: torch.nn.Module, tokenizer) -> torch.Tensor:
    """``[1, seq, vocab]`` logits of a fixed probe text."""
    with torch.no_grad():
        return model(**tokenizer([PROBE], return_tensors="pt")).logits


@pytest.fixture(scope="module")
def sft_run(lm):
    before = logits(lm.model, lm.tokenizer)
    result = train_lora_sft(lm, SFT * 2, FinetuneConfig(method="sft", **FAST), progress=False,
                            eval_examples=SFT[:2])
    return result, before


@pytest.fixture(scope="module")
def dpo_run(lm):
    return train_lora_dpo(lm, PAIRS * 2, FinetuneConfig(method="dpo", beta=0.5, **FAST), progress=False,
                          eval_pairs=PAIRS[:2])


def _eos(lm: LoadedModel, text: str) -> str:
    return text + lm.tokenizer.eos_token  # trl appends the end-of-sequence token to every completion


def test_sft_lowers_its_loss_and_leaves_the_base_model_alone(lm, sft_run):
    result, before = sft_run
    assert len(result.losses) == result.steps == 8 and all(math.isfinite(x) for x in result.losses)
    assert result.losses[-1] < result.losses[0] - 0.05
    assert result.eval_loss_after < result.eval_loss_before
    assert torch.equal(logits(lm.model, lm.tokenizer), before)  # the base weights never changed
    assert not torch.allclose(logits(result.adapted.model, lm.tokenizer), before)
    assert result.adapted.weight_hash != lm.weight_hash and result.wall_seconds > 0
    assert all(not p.requires_grad for p in result.adapted.model.parameters())


def test_sft_loss_is_on_completion_tokens_only(lm, sft_run):
    """trl's loss before training = the base model's mean NLL of the completion tokens (+EOS), prompt masked."""
    nll, count = 0.0, 0
    for ex in SFT[:2]:
        completion = _eos(lm, ex.completion)
        with torch.no_grad():
            nll -= float(continuation_logprobs(lm.model, lm.tokenizer, ex.prompt, [completion])[0])
        count += len(lm.tokenizer(completion, add_special_tokens=False)["input_ids"])
    assert sft_run[0].eval_loss_before == pytest.approx(nll / count, abs=1e-5)


def test_dpo_loss_equals_hand_computation():
    pc, pr = torch.tensor([-1.0, -2.0]), torch.tensor([-3.0, -0.5])
    rc, rr = torch.tensor([-1.5, -2.5]), torch.tensor([-2.5, -1.0])
    # pair 1: margin (−1+1.5) − (−3+2.5) = 1, β·margin = 0.5; pair 2: (−2+2.5) − (−0.5+1) = 0.
    # -log σ(x) = log(1 + e^{-x})
    expected = torch.tensor([math.log(1 + math.exp(-0.5)), math.log(2.0)])
    assert torch.allclose(dpo_loss(pc, pr, rc, rr, beta=0.5), expected, atol=1e-7)


def test_dpo_lowers_its_loss_and_trl_computes_the_written_formula(lm, dpo_run):
    assert len(dpo_run.losses) == 8 and dpo_run.losses[-1] < dpo_run.losses[0]
    assert dpo_run.eval_loss_before == pytest.approx(math.log(2.0), abs=1e-6)  # policy = reference at the start
    assert dpo_run.eval_loss_after < dpo_run.eval_loss_before
    # trl's loss on the two held-out pairs = dpo_loss of the sequence log-probs as the evaluation scores them,
    # policy = the merged adapted model, reference = the base model.
    logps = {}
    for name, model in (("policy", dpo_run.adapted.model), ("ref", lm.model)):
        with torch.no_grad():
            logps[name] = torch.stack([continuation_logprobs(model, lm.tokenizer, p.prompt,
                                                             [_eos(lm, p.chosen), _eos(lm, p.rejected)])
                                       for p in PAIRS[:2]])  # [2 pairs, (chosen, rejected)]
    mine = dpo_loss(logps["policy"][:, 0], logps["policy"][:, 1], logps["ref"][:, 0], logps["ref"][:, 1], 0.5)
    assert dpo_run.eval_loss_after == pytest.approx(float(mine.mean()), abs=1e-5)


@pytest.mark.parametrize("method", ["sft", "dpo"])
def test_zero_steps_give_the_base_logits_exactly(lm, method):
    cfg = FinetuneConfig(method=method, rank=4, steps=0)
    result = (train_lora_sft(lm, SFT, cfg, progress=False) if method == "sft"
              else train_lora_dpo(lm, PAIRS, cfg, progress=False))
    assert result.losses == [] and result.adapter  # an adapter exists, its update B·A is zero
    assert torch.equal(logits(result.adapted.model, lm.tokenizer), logits(lm.model, lm.tokenizer))


def test_training_is_deterministic(lm, sft_run):
    again = train_lora_sft(lm, SFT * 2, FinetuneConfig(method="sft", **FAST), progress=False)
    assert again.losses == sft_run[0].losses
    assert all(torch.equal(again.adapter[k], v) for k, v in sft_run[0].adapter.items())


def test_save_and_load_give_identical_logits(lm, dpo_run, tmp_path):
    folder = save_adapter(dpo_run, tmp_path / "adapter")
    assert {p.name for p in folder.iterdir()} == {"adapter_model.safetensors", "adapter_config.json",
                                                 "manifest.json"}
    adapted, cfg, manifest = load_adapter(folder, lm)
    assert cfg == dpo_run.config and manifest["training"]["losses"] == dpo_run.losses
    assert manifest["base_model"] == {"name": "tiny-llama", "weight_hash": lm.weight_hash}
    assert torch.equal(logits(adapted.model, lm.tokenizer), logits(dpo_run.adapted.model, lm.tokenizer))
    # peft's own loader reads the folder too (unmerged, so equal up to float rounding)
    unmerged = PeftModel.from_pretrained(copy.deepcopy(lm.model), str(folder)).eval()
    assert torch.allclose(logits(unmerged, lm.tokenizer), logits(adapted.model, lm.tokenizer), atol=1e-5)
    assert not torch.allclose(logits(lm.model, lm.tokenizer), logits(adapted.model, lm.tokenizer), atol=1e-5)
    other = LoadedModel(lm.model, lm.tokenizer, "other", "0" * 64)
    with pytest.raises(ArtifactError, match="allow_model_mismatch"):
        load_adapter(folder, other)
    save_adapter(dpo_run, folder)  # an adapter folder may be replaced
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "x.txt").write_text("keep")
    with pytest.raises(ArtifactError, match="not an adapter folder"):
        save_adapter(dpo_run, tmp_path / "notes")


@pytest.mark.parametrize(("change", "word"), [
    ({"method": "ppo"}, "method"), ({"rank": 0}, "rank"), ({"alpha": -1.0}, "alpha"), ({"lr": 0.0}, "lr"),
    ({"steps": -1}, "steps"), ({"batch_size": 0}, "batch_size"), ({"beta": float("nan")}, "beta"),
    ({"dropout": 1.0}, "dropout"), ({"target_modules": ()}, "target_modules"),
    ({"lr_scheduler": "step"}, "lr_scheduler"),
])
def test_bad_config_is_one_clear_error(change, word):
    with pytest.raises(ConfigError, match=word):
        FinetuneConfig(**change).validate()


def test_wrong_method_or_modules_is_one_clear_error(lm):
    with pytest.raises(ConfigError, match="train_lora_sft"):
        train_lora_dpo(lm, PAIRS, FinetuneConfig(method="sft"), progress=False)
    gpt2 = LoadedModel(tiny_model_for("gpt2"), lm.tokenizer, "tiny-gpt2", "h")
    with pytest.raises(ConfigError, match="c_attn"):  # names the layers GPT-2 does have
        train_lora_sft(gpt2, SFT, FinetuneConfig(method="sft", steps=1), progress=False)


def test_training_data_come_from_the_training_splits():
    sft, pairs = sft_examples(limit=3), dpo_pairs(limit=3)
    assert {e.attribute for e in sft} == {p.attribute for p in pairs} == {"truthfulness", "toxicity", "bias"}
    views = {"truthfulqa": "truthfulqa", "toxigen": "toxigen_pref", "bbq": "bbq"}
    for ds, view in views.items():
        train = {q.group: q for q in load_mc_questions(view, "train", limit=3)}
        test_groups = {q.group for q in load_mc_questions(view, "test")}
        for rec in [*(e for e in sft if e.dataset == ds), *(p for p in pairs if p.dataset == ds)]:
            assert rec.group in train and rec.group not in test_groups
            assert rec.prompt.endswith("A:")  # cut where the evaluation cuts: "Q: x A:" + " y"
        for e in (e for e in sft if e.dataset == ds):
            q = train[e.group]
            assert e.completion[1:] in [q.choices[k] for k in q.correct]
        for p in (p for p in pairs if p.dataset == ds):
            q = train[p.group]
            assert p.chosen[1:] in [q.choices[k] for k in q.correct]
            assert p.rejected[1:] in [c for c, lab in zip(q.choices, q.labels) if lab == 0]
    bbq = [p for p in pairs if p.dataset == "bbq"]
    assert len(bbq) == 3  # one pair per BBQ question
    with pytest.raises(ConfigError, match="test"):
        sft_examples(split="test")
