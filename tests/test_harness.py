"""lm-evaluation-harness: the ``matsteer`` model's log-likelihoods and generations equal matsteer's own scorer and
greedy generation, steered (every positions policy) and not; unsteered vs steered runs write their tables."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch

from matsteer.app import cli

pytest.importorskip("lm_eval")

import lm_eval.api.registry  # noqa: E402
import lm_eval.evaluator  # noqa: E402
import lm_eval.tasks  # noqa: E402
from lm_eval.api.instance import Instance  # noqa: E402

from matsteer.activations.models import load_model  # noqa: E402
from matsteer.activations.sites import Site  # noqa: E402
from matsteer.core.steerer import Steerer  # noqa: E402
from matsteer.data import MCQuestion  # noqa: E402
from matsteer.errors import ConfigError  # noqa: E402
from matsteer.eval import harness  # noqa: E402
from matsteer.eval.harness import (  # noqa: E402
    HARNESS_MODEL,
    cmd_harness,
    edit_mask,
    harness_model_class,
    main,
)
from matsteer.eval.scoring import continuation_logprobs, protect_special, score_mc  # noqa: E402
from matsteer.steering.generation import decode_continuations, encode_prompts, generate_greedy, generate_texts  # noqa: E402
from matsteer.steering.session import steer  # noqa: E402
from matsteer.store.artifacts import load_steerer, save_steerer  # noqa: E402

FIXTURES = Path(__file__).parent / "fixtures" / "lm_eval"
SITE = Site(1)
MULTIPLIER = 8.0  # large: the random θ visibly changes the tiny model's outputs
MAX_NEW = 6  # matsteer_gen.yaml's max_gen_toks


@pytest.fixture(scope="module")
def loaded(tiny_dir):
    return load_model(str(tiny_dir))


@pytest.fixture(scope="module")
def steerer_dir(tiny_dir, loaded, tmp_path_factory):
    """A steerer with random θ and gates at layer 1, saved for the tiny model."""
    torch.manual_seed(0)
    steerer = Steerer(["truthfulness", "toxicity"], d=32)
    path = tmp_path_factory.mktemp("harness-steerer") / "steerer"
    save_steerer(path, steerer, site=SITE, model_name=loaded.name, model_hash=loaded.weight_hash)
    return path


@pytest.fixture(scope="module")
def manager():
    return lm_eval.tasks.TaskManager(include_path=str(FIXTURES))


def _evaluate(lm, manager, task):
    out = lm_eval.evaluator.simple_evaluate(model=lm, tasks=[task], task_manager=manager, log_samples=True,
                                            bootstrap_iters=0)
    return sorted(out["samples"][task], key=lambda s: s["doc_id"])


def _questions(samples):
    """The fixture's questions as matsteer MCQuestions, and the (context, continuation) pairs lm-eval scored."""
    qs = [MCQuestion(dataset="local", prompt=s["doc"]["question"], choices=list(s["doc"]["choices"]),
                     labels=[int(k == s["doc"]["label"]) for k in range(len(s["doc"]["choices"]))],
                     group=str(s["doc_id"]), template="q : {prompt} a : {answer}") for s in samples]
    return qs, [[tuple(a) for a in s["arguments"]] for s in samples]


def _lm_scores(samples):
    return [torch.tensor([r[0][0] for r in s["resps"]], dtype=torch.float64) for s in samples]


def _max_diff(a, b):
    return max(float((x.double() - y.double()).abs().max()) for x, y in zip(a, b, strict=True))


def test_registered_in_lm_eval_on_import():
    # The import above registered a placeholder; lm-eval builds the class from it on first lookup.
    assert lm_eval.api.registry.get_model(HARNESS_MODEL) is harness_model_class()
    assert issubclass(harness_model_class(), lm_eval.api.registry.get_model("hf"))


def test_edit_mask_policies():
    ids = torch.tensor([[2, 5, 6, 3, 7, 0]])  # <s> w w </s> w <pad>: 4 context tokens, then the continuation
    real = torch.tensor([[True] * 5 + [False]])
    n = torch.tensor([4])
    special = [0, 1, 2, 3]

    def got(positions, steer_special=False):
        return edit_mask(ids, real, n, positions, special, steer_special).int().tolist()[0]

    assert got("all") == [0, 1, 1, 0, 1, 0]
    assert got("prompt") == [0, 1, 1, 0, 0, 0]
    assert got("generated") == [0, 0, 0, 0, 1, 0]
    assert got("last") == [0, 0, 1, 0, 0, 0]
    assert got("prompt", steer_special=True) == [1, 1, 1, 1, 0, 0]


def test_unsteered_is_plain_hf_and_matsteer_scorer(tiny_dir, loaded, manager):
    cls = harness_model_class()
    samples = _evaluate(cls(pretrained=str(tiny_dir), batch_size=3), manager, "matsteer_mc")
    hf = lm_eval.api.registry.get_model("hf")(pretrained=str(tiny_dir), dtype="float32", device="cpu", batch_size=3)
    plain_hf = _evaluate(hf, manager, "matsteer_mc")
    qs, pairs = _questions(samples)
    ours = score_mc(loaded.model, loaded.tokenizer, qs, progress=False)
    assert [s["arguments"] for s in samples] == [s["arguments"] for s in plain_hf]
    assert _max_diff(_lm_scores(samples), _lm_scores(plain_hf)) == 0  # the same HFLM code on the same weights
    assert _max_diff(_lm_scores(samples), ours) < 1e-5
    for q, p in zip(qs, pairs, strict=True):  # lm-eval's requests are the scorer's (context, continuation) pairs
        assert p == [("q : " + q.prompt + " a :", " " + c) for c in q.choices]


@pytest.mark.parametrize("positions", ["all", "prompt", "generated", "last"])
def test_steered_loglikelihoods_equal_matsteer_scorer(tiny_dir, loaded, steerer_dir, manager, positions):
    cls = harness_model_class()
    lm = cls(pretrained=str(tiny_dir), steerer=str(steerer_dir), multiplier=MULTIPLIER, positions=positions,
             batch_size=3)
    samples = _evaluate(lm, manager, "matsteer_mc")
    qs, _ = _questions(samples)
    steerer, _ = load_steerer(steerer_dir)
    with steer(loaded.model, steerer, site=SITE, global_multiplier=MULTIPLIER, positions=positions) as h:
        ours = score_mc(loaded.model, loaded.tokenizer, qs, h, progress=False)
    plain = score_mc(loaded.model, loaded.tokenizer, qs, progress=False)
    got = _lm_scores(samples)
    assert _max_diff(got, ours) < 1e-5
    assert _max_diff(got, plain) > 1e-2  # the steering did something
    # Outside its calls the model carries no hooks at all.
    assert not any(m._forward_hooks or m._forward_pre_hooks for m in lm.model.modules())


def test_per_attribute_multiplier_and_forced_gate(tiny_dir, loaded, steerer_dir, manager):
    cls = harness_model_class()
    lm = cls(pretrained=str(tiny_dir), steerer=str(steerer_dir), multiplier=2, multiplier_toxicity=3.5,
             force_truthfulness=1, positions="prompt", batch_size=2)
    samples = _evaluate(lm, manager, "matsteer_mc")
    qs, _ = _questions(samples)
    steerer, _ = load_steerer(steerer_dir)
    with steer(loaded.model, steerer, site=SITE, global_multiplier=2.0, multipliers={"toxicity": 3.5},
               force={"truthfulness": 1.0}, positions="prompt") as h:
        ours = score_mc(loaded.model, loaded.tokenizer, qs, h, progress=False)
    assert _max_diff(_lm_scores(samples), ours) < 1e-5


def test_bad_model_args_fail_clearly(tiny_dir, steerer_dir):
    cls = harness_model_class()
    with pytest.raises(ConfigError, match="honesty"):
        cls(pretrained=str(tiny_dir), steerer=str(steerer_dir), multiplier_honesty=2)
    with pytest.raises(ConfigError, match="positions"):
        cls(pretrained=str(tiny_dir), steerer=str(steerer_dir), positions="middle")
    with pytest.raises(ConfigError, match="steerer"):
        cls(pretrained=str(tiny_dir), multiplier_toxicity=2)


def _gen_requests(contexts, steer_special=False):
    kwargs = {"until": ["\n"], "max_gen_toks": MAX_NEW, "do_sample": False}
    return [Instance(request_type="generate_until", doc={}, arguments=(c, dict(kwargs)), idx=0) for c in contexts]


def test_generate_until_equals_matsteer_greedy(tiny_dir, loaded, steerer_dir, manager):
    cls = harness_model_class()
    plain_lm = cls(pretrained=str(tiny_dir), batch_size=5)
    plain = [s["resps"][0][0] for s in _evaluate(plain_lm, manager, "matsteer_gen")]
    lm = cls(pretrained=str(tiny_dir), steerer=str(steerer_dir), multiplier=MULTIPLIER, positions="all", batch_size=5)
    samples = _evaluate(lm, manager, "matsteer_gen")
    contexts = [s["arguments"][0][0] for s in samples]
    steered = [s["resps"][0][0] for s in samples]
    tok, model = loaded.tokenizer, loaded.model
    enc = encode_prompts(tok, contexts, torch.device("cpu"), chat=False)
    width = enc["input_ids"].shape[1]
    assert plain == decode_continuations(tok, generate_greedy(model, tok, enc, MAX_NEW), width)
    assert sum(a != b for a, b in zip(plain, steered, strict=True)) >= 3  # steering changed most continuations
    steerer, _ = load_steerer(steerer_dir)
    for positions in ("all", "prompt"):
        lm.steering.positions = positions
        texts = lm.generate_until(_gen_requests(contexts), disable_tqdm=True)
        with (steer(model, steerer, site=SITE, global_multiplier=MULTIPLIER, positions=positions) as h,
              protect_special(h, tok)):
            ids = generate_greedy(model, tok, enc, MAX_NEW, h)
        # lm-eval's own generation call, token for token
        lm_ids = lm._model_generate(context=enc["input_ids"], attention_mask=enc["attention_mask"],
                                    max_length=width + MAX_NEW, stop=["\n"], do_sample=False)
        assert torch.equal(lm_ids, ids), positions
        assert texts == decode_continuations(tok, ids, width), positions
        if positions == "all":
            assert texts == steered
    # steer_special: every token edited, as matsteer's generate_texts (the CLI's `generate`) does
    lm.steering.positions, lm.steering.steer_special = "all", True
    texts = lm.generate_until(_gen_requests(contexts), disable_tqdm=True)
    assert texts == generate_texts(loaded, contexts, steerer=steerer, site=SITE, max_new_tokens=MAX_NEW, chat=False,
                                   global_multiplier=MULTIPLIER, positions="all")


def test_loglikelihood_rolling_equals_scorer(tiny_dir, loaded, steerer_dir):
    cls = harness_model_class()
    lm = cls(pretrained=str(tiny_dir), steerer=str(steerer_dir), multiplier=MULTIPLIER, positions="all", batch_size=2)
    texts = ["the old man is kind .", "paris is the capital city of france ."]
    reqs = [Instance(request_type="loglikelihood_rolling", doc={}, arguments=(t,), idx=0) for t in texts]
    steered = lm.loglikelihood_rolling(reqs, disable_tqdm=True)
    with lm.unsteered():
        plain = lm.loglikelihood_rolling(reqs, disable_tqdm=True)
    tok, model = loaded.tokenizer, loaded.model
    steerer, _ = load_steerer(steerer_dir)
    with torch.inference_mode():  # the first window's context is the prefix token (BOS), as HFLM builds it
        ours_plain = [float(continuation_logprobs(model, tok, tok.bos_token, [t])[0]) for t in texts]
        with (steer(model, steerer, site=SITE, global_multiplier=MULTIPLIER, positions="all") as h,
              protect_special(h, tok)):
            ours = [float(continuation_logprobs(model, tok, tok.bos_token, [t], h)[0]) for t in texts]
    assert max(abs(a - b) for a, b in zip(plain, ours_plain, strict=True)) < 1e-5
    assert max(abs(a - b) for a, b in zip(steered, ours, strict=True)) < 1e-5
    assert max(abs(a - b) for a, b in zip(steered, plain, strict=True)) > 1e-2


def test_cmd_harness_writes_both_runs_and_differences(tiny_dir, steerer_dir, tmp_path):
    parser = cli.build_parser()
    out = tmp_path / "harness"
    args = parser.parse_args(["harness", "--model", str(tiny_dir), "--steerer", str(steerer_dir), "--tasks",
                              "matsteer_mc", "matsteer_gen", "--include-path", str(FIXTURES), "--multiplier", "8",
                              "--positions", "prompt", "--limit", "5", "--batch-size", "2", "--out", str(out)])
    assert args.func(args) == 0
    result = json.loads((out / "harness.json").read_text())
    assert set(result["unsteered"]) == set(result["steered"]) == {"matsteer_mc", "matsteer_gen"}
    for task, diffs in result["differences"].items():
        assert diffs, task
        for key, diff in diffs.items():
            assert diff == pytest.approx(result["steered"][task][key] - result["unsteered"][task][key])
    assert result["samples"] == {"matsteer_gen": 5, "matsteer_mc": 5}
    assert result["settings"]["positions"] == "prompt" and result["settings"]["global_multiplier"] == 8.0
    table = (out / "harness.md").read_text()
    assert "| matsteer_mc | acc,none | 5 |" in table and "| matsteer_gen | exact_match,none | 5 |" in table
    assert not any(p.name.endswith(".tmp") for p in out.iterdir())
    assert (args.func.module, args.func.name) == ("matsteer.eval.harness", cmd_harness.__name__)


def test_module_entry_point_runs_lm_eval_cli(tiny_dir, loaded, steerer_dir, tmp_path, monkeypatch):
    """``python -m matsteer.eval.harness`` is lm-eval's command line with ``--model matsteer`` registered."""
    monkeypatch.setattr(sys, "argv", list(sys.argv))
    model_args = f"pretrained={tiny_dir},steerer={steerer_dir},multiplier=8,multiplier_toxicity=0.5,positions=prompt"
    main(["--model", "matsteer", "--model_args", model_args, "--tasks", "matsteer_mc", "--include_path",
          str(FIXTURES), "--batch_size", "4", "--output_path", str(tmp_path / "out"), "--log_samples"])
    files = sorted((tmp_path / "out").rglob("samples_matsteer_mc_*.jsonl"))
    assert files, list((tmp_path / "out").rglob("*"))
    samples = sorted((json.loads(line) for line in files[0].read_text().splitlines()), key=lambda s: s["doc_id"])
    qs, _ = _questions(samples)
    steerer, _ = load_steerer(steerer_dir)
    with steer(loaded.model, steerer, site=SITE, global_multiplier=8.0, multipliers={"toxicity": 0.5},
               positions="prompt") as h:
        ours = score_mc(loaded.model, loaded.tokenizer, qs, h, progress=False)
    got = [torch.tensor([float(r[0][0]) for r in s["resps"]]) for s in samples]
    assert _max_diff(got, ours) < 1e-5


def test_without_lm_eval_the_module_still_loads_and_says_how_to_install(monkeypatch, steerer_dir):
    for name in [m for m in sys.modules if m == "lm_eval" or m.startswith("lm_eval.")]:
        monkeypatch.setitem(sys.modules, name, None)  # as if lm-eval were not installed
    assert harness.register() is False
    with pytest.raises(ConfigError, match=r"pip install 'matsteer\[lm-eval\]'"):
        harness.run_harness(None, steerer_dir, ["matsteer_mc"])
