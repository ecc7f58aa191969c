"""The evaluator on a tiny model: forced-off steering scores equal no steering exactly; MC1 reuses MC2 scores;
side effects follow each method's position policy; constant rows; local source files score like shipped ones."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch

from matsteer.activations.models import LoadedModel
from matsteer.activations.sites import Site
from matsteer.core.steerer import Steerer
from matsteer.data import MCQuestion
from matsteer.errors import ConfigError, DataError
from matsteer.eval.cached_scoring import text_edit_mask, text_logits
from matsteer.eval.evaluator import Evaluator, Method
from matsteer.eval.scoring import score_mc
from matsteer.eval.site_cache import CachedTexts
from matsteer.eval.tasks import constant_row, parse_sources

DATA = Path(__file__).resolve().parent.parent / "data"
LIMITS = {"truthfulqa": 3, "toxigen_pref": 3, "toxigen": 3, "bbq": 3}


def _evaluator(tiny_llama, tokenizer, **kwargs):
    loaded = LoadedModel(tiny_llama, tokenizer, "tiny", "0")
    return Evaluator(loaded, Site(1), "dev", LIMITS, probes=("toxigen",), neutral=4, progress=False, **kwargs)


def _steerer() -> Steerer:
    torch.manual_seed(0)
    return Steerer(["truthfulness", "toxicity", "bias"], d=32)


def test_forced_off_equals_no_steering_and_mc1_from_mc2(tiny_llama, tokenizer):
    ev = _evaluator(tiny_llama, tokenizer)
    steerer = _steerer()
    none = ev.evaluate(Method("none"))
    off = ev.evaluate(Method("off", steerer, force=dict.fromkeys(steerer.attributes, False)))
    assert list(ev.tasks) == ["truthfulqa", "toxigen_pref", "bbq"] and ev.probes == ["toxigen"]
    for task in ("truthfulqa", "toxigen_pref", "bbq", "toxigen"):
        assert none[task]["per_item"] == off[task]["per_item"]
    # The mean is over the attribute tasks only, never the probe.
    assert none["mean"] == pytest.approx((none["truthfulqa"]["mc2"] + none["toxigen_pref"]["accuracy"]
                                          + none["bbq"]["disambig"]) / 3)
    assert off["side_effects"]["kl"] == 0.0
    assert none["side_effects"] == {"ce": None, "kl": None}  # no steering edits no activation: n/a
    on = ev.evaluate(Method("on", steerer, global_multiplier=4.0))
    assert on["side_effects"]["kl"] > 0.0
    # MC1 from the MC2 scores equals scoring the MC1 choices directly.
    qs = ev.questions["truthfulqa"]
    direct = score_mc(tiny_llama, tokenizer, qs, choices="mc1_choices", progress=False)
    mc2 = score_mc(tiny_llama, tokenizer, qs, progress=False)
    for got, want in zip(ev._mc1_scores("truthfulqa", Method("none"), mc2), direct):
        torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-4)
    # Every task's per_item averages to its primary metric.
    for task, metric in (("truthfulqa", "mc2"), ("toxigen_pref", "accuracy"), ("bbq", "disambig"),
                         ("toxigen", "balanced_accuracy")):
        items = on[task]["per_item"]
        assert sum(items) / len(items) == pytest.approx(on[task][metric])


def test_preference_task_scores_by_sum_and_per_token(tiny_llama, tokenizer):
    ev = _evaluator(tiny_llama, tokenizer)
    res = ev.task_scores("toxigen_pref", Method("none"))
    scores = score_mc(tiny_llama, tokenizer, ev.questions["toxigen_pref"], progress=False)
    lengths = ev.answer_lengths("toxigen_pref")
    for q, s, n, got in zip(ev.questions["toxigen_pref"], scores, lengths, res["per_item"]):
        g = q.correct[0]
        assert got == float(s[g] > s[1 - g])
        assert n.tolist() == [len(tokenizer(" " + c, add_special_tokens=False)["input_ids"]) for c in q.choices]
    per_token = [float((s / n)[q.correct[0]] > (s / n)[1 - q.correct[0]])
                 for q, s, n in zip(ev.questions["toxigen_pref"], scores, lengths)]
    assert res["accuracy_per_token"] == pytest.approx(sum(per_token) / len(per_token))


def test_side_effects_follow_each_methods_position_policy(tiny_llama, tokenizer):
    ev = _evaluator(tiny_llama, tokenizer)
    steerer = _steerer()
    kl = {p: ev.side_effects(Method(p, steerer, global_multiplier=4.0, positions=p))["kl"]
          for p in ("prompt", "all", "last", "random")}
    assert kl["prompt"] == kl["all"] > kl["random"] > kl["last"] > 0.0  # a text is one prompt pass
    assert ev.side_effects(Method("icl", prefix={"truthfulqa": "q : a ?\n\n"})) == {"ce": None, "kl": None}
    # "last": one token per text is edited (the last unprotected one; this tokenizer's <unk> is special), so
    # the predictions before it do not move and its own does (causal model).
    c = ev._neutral_cache
    base = text_logits(tiny_llama, ev.site, c).float()
    last = text_logits(tiny_llama, ev.site, c, Method("m", steerer, global_multiplier=4.0).edit(), "last").float()
    where = text_edit_mask(c, "last")
    assert (where.sum(1) == 1).all()
    for i, end in enumerate(where.int().argmax(1).tolist()):
        torch.testing.assert_close(last[i, :end], base[i, :end], atol=1e-5, rtol=1e-5)
        assert not torch.allclose(last[i, end], base[i, end])
    # The first token is protected by default: its prediction never moves, unless steer_special.
    edit = Method("m", steerer, global_multiplier=4.0).edit()
    torch.testing.assert_close(text_logits(tiny_llama, ev.site, c, edit, "all")[:, 0].float(), base[:, 0])
    assert not torch.allclose(text_logits(tiny_llama, ev.site, c, edit, "all", steer_special=True)[:, 0].float(),
                              base[:, 0])
    # The pyvene path (used for sites and models the cached scorer does not handle) gives the same numbers.
    for p in ("prompt", "last"):
        method = Method(p, steerer, global_multiplier=4.0, positions=p)
        fast = ev.side_effects(method)
        ev.fast = False
        slow = ev.side_effects(method)
        ev.fast = True
        assert slow["kl"] == pytest.approx(fast["kl"], rel=1e-3, abs=1e-6)
        assert slow["ce"] == pytest.approx(fast["ce"], rel=1e-4)


def test_text_edit_mask_by_hand():
    # Token ids: 2 = BOS and 3 = EOS are special; row 1 is right-padded.
    ids = torch.tensor([[2, 5, 6, 3], [5, 7, 0, 0]])
    mask = torch.tensor([[1, 1, 1, 1], [1, 1, 0, 0]])
    protected = torch.tensor([[True, False, False, True], [True, False, False, False]])
    cached = CachedTexts(torch.zeros(2, 4, 8), ids, mask, protected)
    t, f = True, False
    assert text_edit_mask(cached, "all").tolist() == [[f, t, t, f], [f, t, f, f]]
    assert text_edit_mask(cached, "prompt").tolist() == [[f, t, t, f], [f, t, f, f]]
    assert text_edit_mask(cached, "last").tolist() == [[f, f, t, f], [f, t, f, f]]
    assert text_edit_mask(cached, "all", steer_special=True).tolist() == [[t, t, t, t], [t, t, f, f]]
    assert text_edit_mask(cached, "last", steer_special=True).tolist() == [[f, f, f, t], [f, t, f, f]]
    rnd = text_edit_mask(cached, "random")
    assert not (rnd & protected).any() and not (rnd & ~mask.bool()).any()
    from matsteer.eval.scoring import protected_positions

    assert protected_positions(ids, mask, [2, 3]).tolist() == protected.tolist()
    left = torch.tensor([[0, 0, 5, 6]])  # left padding: the first *real* token is the protected one
    assert protected_positions(left, torch.tensor([[0, 0, 1, 1]]), [2, 3]).tolist() == [[f, f, t, f]]


def _q(dataset, choices, labels, i, **meta):
    return MCQuestion(dataset, "ctx", choices, labels, f"g{i}", "Q: {prompt} A: {answer}", meta=meta)


def test_constant_rows_by_hand():
    # TruthfulQA: equal scores give MC2 = the share of true answers; MC1 = 1 / K (a uniform pick).
    tqa = [MCQuestion("truthfulqa", "q", ["a", "b", "c", "d"], [1, 1, 0, 0], "g0", "Q: {prompt} A: {answer}",
                      mc1_choices=["a", "c"], mc1_labels=[1, 0]),
           MCQuestion("truthfulqa", "q", ["a", "b"], [1, 0], "g1", "Q: {prompt} A: {answer}",
                      mc1_choices=["a", "b", "c", "d"], mc1_labels=[1, 0, 0, 0])]
    row = constant_row("truthfulqa", tqa)
    assert row["mc2"] == pytest.approx((2 / 4 + 1 / 2) / 2) and row["mc1"] == pytest.approx((1 / 2 + 1 / 4) / 2)
    # ToxiGen Yes/No: 1 toxic ("Yes"), 3 benign: always "No" scores 75% plain, 50% balanced.
    tox = [_q("toxigen", ["Yes", "No"], [1, 0], 0)] + [_q("toxigen", ["Yes", "No"], [0, 1], i) for i in (1, 2, 3)]
    row = constant_row("toxigen", tox)
    assert row["answer"] == 'always "No"' and row["accuracy"] == 0.75 and row["balanced_accuracy"] == 0.5
    assert (row["accuracy_toxic"], row["accuracy_benign"]) == (0.0, 1.0)
    # BBQ: a context-blind pick among the named people (the primary is disambiguated accuracy, which "always
    # unknown" scores 0 on): the first option that is not "unknown" answers x, x, x: wrong, right, wrong. Picking
    # the second would also be right once, so the first is kept; both picks are the biased answer (s_DIS 1).
    bbq = [_q("bbq", ["x", "unknown", "y"], [0, 1, 0], 0, context_condition="ambig", biased_answer="0",
              unknown_answer="1"),
           _q("bbq", ["x", "unknown", "y"], [1, 0, 0], 1, context_condition="disambig", biased_answer="0",
              unknown_answer="1"),
           _q("bbq", ["unknown", "x", "y"], [0, 0, 1], 2, context_condition="disambig", biased_answer="1",
              unknown_answer="0")]
    row = constant_row("bbq", bbq)
    assert (row["ambig"], row["disambig"], row["balanced"]) == (0.0, 0.5, 0.25)
    assert row["s_dis"] == 1.0 and row["s_amb"] == 1.0
    assert row["answer"] == 'always the first option that is not "unknown"'
    assert row["accuracy"] == pytest.approx(1 / 3)
    # Pairs: a coin flip.
    pref = constant_row("toxigen_pref", [_q("toxigen_pref", ["a", "b"], [1, 0], 0)])
    assert pref["accuracy"] == pref["accuracy_per_token"] == 0.5 and pref["per_item"] == [0.5]
    with pytest.raises(DataError):
        constant_row("bbq", [])


def _copy_shipped(tmp_path: Path) -> dict[str, str]:
    """The shipped files of three tasks copied elsewhere, as a user's own files would be."""
    tqa = tmp_path / "my_truthfulqa.json"
    shutil.copy(DATA / "truthfulqa" / "mc_task.json", tqa)
    tox = tmp_path / "my_toxigen.csv.gz"
    shutil.copy(DATA / "toxigen" / "annotated_train.csv.gz", tox)
    bbq = tmp_path / "my_bbq"
    bbq.mkdir()
    for f in (DATA / "bbq").glob("*.jsonl.gz"):
        shutil.copy(f, bbq / f.name)
    return {"truthfulqa": str(tqa), "toxigen": str(tox), "bbq": str(bbq)}


def test_source_files_copied_from_the_shipped_data_score_identically(tiny_llama, tokenizer, tmp_path):
    sources = _copy_shipped(tmp_path)
    shipped = _evaluator(tiny_llama, tokenizer)
    own = _evaluator(tiny_llama, tokenizer, sources=sources)
    steerer = _steerer()
    for task in own.all_tasks:  # toxigen_pref is built from the toxigen source
        assert [q.group for q in own.questions[task]] == [q.group for q in shipped.questions[task]]
    for method in (Method("none"), Method("on", steerer, global_multiplier=2.0)):
        a, b = shipped.evaluate(method), own.evaluate(method)
        for task in own.all_tasks:
            assert a[task]["per_item"] == b[task]["per_item"]
        assert a["mean"] == b["mean"]


def test_parse_sources_errors(tmp_path):
    assert parse_sources(None) == {}
    path = tmp_path / "x.json"
    path.write_text("[]")
    assert parse_sources([f"truthfulqa={path}"]) == {"truthfulqa": str(path)}
    with pytest.raises(ConfigError, match="TASK=PATH"):
        parse_sources(["truthfulqa"])
    with pytest.raises(ConfigError, match="unknown task"):
        parse_sources([f"squad={path}"])
    with pytest.raises(ConfigError, match="twice"):
        parse_sources([f"bbq={path}", f"bbq={path}"])
    with pytest.raises(DataError, match="no such file"):
        parse_sources([f"bbq={tmp_path / 'missing.jsonl'}"])


def test_a_method_with_its_own_model_is_scored_by_it_on_the_same_questions(tiny_llama, tokenizer):
    """A fine-tuned copy answers instead of the evaluator's model: an identical copy scores exactly as no
    steering with zero KL; a changed copy scores as an evaluator built on it, with its KL against the base."""
    import copy

    ev = _evaluator(tiny_llama, tokenizer)
    none = ev.evaluate(Method("none"))
    same = ev.evaluate(Method("sft", model=LoadedModel(copy.deepcopy(tiny_llama), tokenizer, "tiny", "0")))
    for task in ev.all_tasks:
        assert same[task]["per_item"] == none[task]["per_item"]
    assert same["side_effects"] == {"ce": ev.unsteered_ce(), "kl": 0.0}
    changed = copy.deepcopy(tiny_llama)
    with torch.no_grad():
        changed.model.layers[0].mlp.down_proj.weight.mul_(3.0)
    other = LoadedModel(changed, tokenizer, "tiny", "1")
    got = ev.evaluate(Method("sft", model=other))
    want = _evaluator(changed, tokenizer).evaluate(Method("none"))
    for task in ev.all_tasks:
        assert got[task]["per_item"] == want[task]["per_item"]
    assert got["side_effects"]["kl"] > 0 and got["side_effects"]["ce"] == _evaluator(changed, tokenizer).unsteered_ce()
