"""The temperature control: the unsteered model's next-token logits divided by T before the log-softmax that
scores answers. T = 1 is no steering bit for bit; T > 1 equals a hand computation from the full forward's logits;
length normalisation divides each answer's summed log-prob by its token count."""

from __future__ import annotations

import math

import pytest
import torch

from matsteer.activations.models import LoadedModel
from matsteer.activations.sites import Site
from matsteer.data import MCQuestion
from matsteer.errors import ConfigError
from matsteer.eval.config import EvalConfig
from matsteer.eval.evaluator import Evaluator, Method
from matsteer.eval.scoring import score_mc, tempered_log_softmax
from matsteer.eval.side_effects import cross_entropy, next_token_kl

LIMITS = {"truthfulqa": 3, "toxigen_pref": 3, "toxigen": 3, "bbq": 3}
CTX = "q : what is the capital of france ? a :"


def _evaluator(model, tokenizer) -> Evaluator:
    return Evaluator(LoadedModel(model, tokenizer, "tiny", "0"), Site(1), "dev", LIMITS, probes=("toxigen",),
                     neutral=4, progress=False)


def _by_hand(model, tok, ctx: str, conts: list[str], temperature: float) -> torch.Tensor:
    """Summed log_softmax(logits / T) of each continuation's tokens, one full forward per continuation."""
    n = len(tok(ctx)["input_ids"])
    out = []
    for c in conts:
        ids = tok(ctx + c)["input_ids"]
        with torch.no_grad():
            logits = model(input_ids=torch.tensor([ids])).logits[0].double()
        lp = torch.log_softmax(logits / temperature, -1)
        out.append(sum(lp[j - 1, ids[j]] for j in range(n, len(ids))))
    return torch.stack(out).float()


def test_temperature_one_is_the_plain_log_softmax_bit_for_bit():
    z = torch.randn(3, 5, 11, generator=torch.Generator().manual_seed(0)).to(torch.bfloat16)
    assert torch.equal(tempered_log_softmax(z), torch.log_softmax(z, -1, dtype=torch.float32))
    torch.testing.assert_close(tempered_log_softmax(z, 4.0), torch.log_softmax(z.float() / 4.0, -1))
    with pytest.raises(ConfigError, match="positive"):
        tempered_log_softmax(z, 0.0)


def test_flattening_raises_the_shorter_answers_share_as_computed_by_hand():
    """Two answers that differ only in length: the same token once or three times, each position with the same
    next-token logits z. Score = L * log_softmax(z / T)[k]; the short answer's share of exp(score) is
    1 / (1 + exp(2 * l_T)) with l_T = log_softmax(z / T)[k]: for the model's favourite token l_T falls as T grows,
    so flattening alone moves the choice toward the shorter answer."""
    z = torch.tensor([3.0, 1.0, 0.0, -1.0, -2.0])
    k = 0  # the most likely token
    shares = []
    for t in (1.0, 2.0, 4.0, 16.0):
        lp = tempered_log_softmax(z, t)
        scores = torch.stack([1 * lp[k], 3 * lp[k]])
        share = torch.softmax(scores, 0)[0]
        l_t = z[k] / t - math.log(sum(math.exp(v / t) for v in z.tolist()))
        assert float(share) == pytest.approx(1 / (1 + math.exp(2 * l_t)), rel=1e-6)
        shares.append(float(share))
    assert shares == sorted(shares) and shares[-1] > shares[0] + 0.2


@pytest.mark.parametrize("temperature", [1.0, 3.0])
def test_scorers_equal_the_hand_computation(tiny_llama, tokenizer, temperature):
    conts = [" paris", " the old man", " nothing happens to you"]
    q = MCQuestion(dataset="truthfulqa", prompt="what is the capital of france ?", choices=[c[1:] for c in conts],
                   labels=[1, 0, 0], group="0", template="Q: {prompt} A: {answer}")
    want = _by_hand(tiny_llama, tokenizer, "q : what is the capital of france ? a :", conts, temperature)
    got = score_mc(tiny_llama, tokenizer, [q], progress=False, temperature=temperature)[0]
    torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-4)
    # The cached upper pass (what the comparison uses) gives the same.
    ev = _evaluator(tiny_llama, tokenizer)
    ev.questions["truthfulqa"] = [q]
    cached = ev._scores("truthfulqa", Method("temperature", temperature=temperature))[0]
    torch.testing.assert_close(cached, want, atol=1e-4, rtol=1e-4)


def test_temperature_one_reproduces_no_steering_and_length_normalisation_divides(tiny_llama, tokenizer):
    ev = _evaluator(tiny_llama, tokenizer)
    none = ev.evaluate(Method("none"))
    t1 = ev.evaluate(Method("temperature", temperature=1.0))
    for task in ev.all_tasks:
        assert t1[task] == none[task]
    assert t1["side_effects"] == {"ce": None, "kl": None}
    summed = ev._scores("bbq", Method("t", temperature=2.0))
    normed = ev._scores("bbq", Method("t", temperature=2.0, length_normalise=True))
    for s, n, got in zip(summed, ev.answer_lengths("bbq"), normed):
        assert torch.equal(got, s / n.to(s.dtype))
    # The tempered side effects are those of the unsteered neutral-text logits divided by T.
    hot = ev.side_effects(Method("temperature", temperature=4.0))
    c = ev._neutral_cache
    base = ev._base_neutral_logits(c)
    assert hot["kl"] == pytest.approx(next_token_kl(base, base / 4.0, c.mask))
    assert hot["ce"] == pytest.approx(cross_entropy(base / 4.0, c.input_ids, c.mask))
    assert hot["kl"] > 0


def test_temperature_grid_is_checked():
    cfg = EvalConfig()
    cfg.temperatures = (1.0, -2.0)
    with pytest.raises(ConfigError, match="positive"):
        cfg.validate()


def test_controls_added_to_a_finished_comparison_on_its_footing(tiny_dir, tmp_path):
    from matsteer.core.config import TrainConfig
    from matsteer.core.workflow import DemoConfig
    from matsteer.eval.comparison import run_evaluation
    from matsteer.eval.extend import add_methods
    from matsteer.files import read_json

    limits = {"truthfulqa": 4, "toxigen_pref": 4, "toxigen": 6, "bbq": 6}
    demo = DemoConfig(model=str(tiny_dir), layer=1, limits=dict(limits), dev_limits=dict(limits),
                      train=TrainConfig(epochs=2, sigma="median"), features_dir=tmp_path / "features")
    cfg = EvalConfig(demo=demo, seeds=(0,), dev_limits=dict(limits), test_limits=dict(limits), multipliers=(1.0,),
                     training_candidates=({},), methods=("none", "caa", "mat_steer"), temperatures=(1.0, 4.0),
                     grid_extensions=0, out_dir=tmp_path / "results", n_boot=50)
    before = run_evaluation(cfg, progress=False)
    after = add_methods(cfg.out_dir, ["temperature", "temperature_len"], cfg, progress=False)
    assert read_json(cfg.out_dir / "eval.json") == after
    for name in ("temperature", "temperature_len"):
        trials = after["selection"][name]["dev_trials"]
        assert [t["params"] for t in trials] == [{"temperature": 1.0}, {"temperature": 4.0}]
        assert after["methods"][name]["params"] == max(trials, key=lambda t: t["dev_mean"])["params"]
        assert after["methods"][name]["role"] == "control"
        assert set(after["intervals"]["vs_none"][name]) == {"truthfulqa", "toxigen_pref", "bbq", "mean", "toxigen"}
    # The committed rows are untouched, and no steering re-scored on the same machine agrees question by question.
    for name in before["methods"]:
        assert after["methods"][name] == before["methods"][name]
    check = after["additions"][0]["none_rescored"]
    assert all(c["identical_share"] == 1.0 and c["mean_diff"] == 0.0 for c in check.values())
    assert "Temperature (no steering)" in (cfg.out_dir / "eval.md").read_text()
    with pytest.raises(ConfigError, match="in .* already"):
        add_methods(cfg.out_dir, ["temperature"], cfg, progress=False)
    cfg.test_limits = {**limits, "bbq": 3}
    with pytest.raises(ConfigError, match="test_limits"):
        add_methods(cfg.out_dir, ["random"], cfg, progress=False)
    cfg.test_limits, cfg.seeds = dict(limits), (0, 5)
    with pytest.raises(ConfigError, match="seeds"):
        add_methods(cfg.out_dir, ["random"], cfg, progress=False)


def test_a_one_seed_row_extended_with_seeds_equals_the_row_scored_on_all_of_them(tiny_dir, tmp_path):
    from matsteer.core.config import TrainConfig
    from matsteer.core.workflow import DemoConfig
    from matsteer.eval.comparison import run_evaluation
    from matsteer.eval.extend import add_methods

    limits = {"truthfulqa": 4, "toxigen_pref": 4, "toxigen": 6, "bbq": 6}

    def config(out: str, methods: tuple[str, ...]) -> EvalConfig:
        demo = DemoConfig(model=str(tiny_dir), layer=1, limits=dict(limits), dev_limits=dict(limits),
                          train=TrainConfig(epochs=2, sigma="median"), features_dir=tmp_path / "features")
        return EvalConfig(demo=demo, seeds=(0, 1), dev_limits=dict(limits), test_limits=dict(limits),
                          multipliers=(1.0,), training_candidates=({},), methods=methods, grid_extensions=0,
                          out_dir=tmp_path / out, n_boot=50)

    whole = run_evaluation(config("whole", ("none", "random", "mat_steer")), progress=False)
    cfg = config("grown", ("none", "mat_steer"))
    run_evaluation(cfg, progress=False)
    cfg.seeds = (0,)
    add_methods(cfg.out_dir, ["random"], cfg, progress=False)
    cfg.seeds = (1,)
    grown = add_methods(cfg.out_dir, ["random"], cfg, progress=False)
    assert grown["methods"]["random"] == whole["methods"]["random"]
    assert grown["selection"]["random"] == whole["selection"]["random"]
    assert grown["additions"][-1]["extended"] == ["random"]
    # A seed it has, a row of several seeds and a method that does not depend on the seed are refused.
    with pytest.raises(ConfigError, match="seeds \\[0, 1\\]"):
        add_methods(cfg.out_dir, ["random"], cfg, progress=False)
    with pytest.raises(ConfigError, match="does not depend on the seed"):
        add_methods(cfg.out_dir, ["none"], cfg, progress=False)
