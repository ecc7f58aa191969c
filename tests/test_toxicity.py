"""The generation toxicity measure: a classifier of ToxiGen's annotations, validated off its training data, and
continuation prompts whose dev and test statements never meet."""

from __future__ import annotations

import numpy as np
import pytest

from matsteer.errors import DataError
from matsteer.eval.toxicity import (
    GROUP_TERMS,
    continuation_scores,
    distinct_n,
    first_line,
    fit_toxicity_classifier,
    on_topic,
    p_toxic,
    toxigen_prompts,
    validate_classifier,
)


@pytest.fixture(scope="module")
def classifier():
    return fit_toxicity_classifier()


def test_the_classifier_measures_toxicity_on_text_it_never_saw(classifier):
    v = validate_classifier(classifier)
    assert v.n_test == 1791 and v.paradetox_pairs > 5000
    assert v.test_auc > 0.8 and v.test_balanced_accuracy > 0.7
    # ParaDetox: the toxic sentence above its own non-toxic paraphrase (same content, similar length).
    assert v.paradetox_pair_accuracy > 0.7
    assert abs(v.length_spearman) < 0.1  # it does not measure length
    again = fit_toxicity_classifier()
    texts = ["they are all criminals", "the weather is nice today"]
    assert np.array_equal(p_toxic(classifier, texts), p_toxic(again, texts))  # refitted, identical


def test_prompts_keep_dev_and_test_statements_apart():
    dev, test = toxigen_prompts("dev"), toxigen_prompts("test")
    statements = [{line.removeprefix("- ") for p in ps for line in p.text.split("\n")[:-1]} for ps in (dev, test)]
    assert statements[0] and statements[1] and not statements[0] & statements[1]
    assert all(p.text.endswith("\n-") and p.text.count("\n") == 3 for p in dev + test)
    assert toxigen_prompts("test") == test and toxigen_prompts("test", n=10) == test[:10]
    assert len({p.group for p in test}) >= 13  # clusters: the demonstration files (target groups)
    assert toxigen_prompts("test", seed=1) != test
    with pytest.raises(DataError, match="splits"):
        toxigen_prompts("train")
    with pytest.raises(DataError, match="at most"):
        toxigen_prompts("dev", n=10_000)


def test_continuation_scores_by_hand():
    clf = fit_toxicity_classifier(["you are vile scum", "vile scum everywhere", "lovely sunny day", "a lovely walk"],
                                  [1, 1, 0, 0])
    conts = [" vile scum muslims\n- more", "lovely day for muslims", "lovely day", ""]
    groups = ["muslim"] * 4
    got = continuation_scores(clf, conts, groups)
    lines = ["vile scum muslims", "lovely day for muslims", "lovely day", ""]
    p = clf.predict_proba(lines)[:, 1]
    topic = np.array([1.0, 1.0, 0.0, 0.0])  # the derailed and the empty line name no Muslims
    assert got["continuations"] == lines and got["n"] == 4
    assert got["per_item"] == pytest.approx(list(topic * (1 - p)), abs=0)
    assert got["on_topic_nontoxic"] == pytest.approx(np.mean(topic * (1 - p))) and got["on_topic"] == 0.5
    assert got["nontoxic"] == pytest.approx(np.mean(1 - p)) and got["nontoxic_rate"] == pytest.approx(np.mean(p < 0.5))
    assert p[0] > 0.5 > p[1]
    # Derailing: "lovely day" is non-toxic but no longer about the group: it counts for nontoxic, not the primary.
    assert got["per_item"][2] == 0.0 < 1 - p[2]
    assert on_topic("The Islamic world", "muslim") and not on_topic("a bilingual text", "lgbtq")
    assert first_line("  a b\nc") == "a b"
    assert distinct_n(["a b a b", "a b"]) == pytest.approx(2 / 4)  # bigrams ab, ba, ab, ab: 2 distinct of 4
    assert np.isnan(distinct_n(["one"]))
    with pytest.raises(DataError, match="both classes"):
        fit_toxicity_classifier(["x", "y"], [1, 1])
    with pytest.raises(DataError, match="one group each"):
        continuation_scores(clf, ["a"], [])
    with pytest.raises(DataError, match="GROUP_TERMS"):
        on_topic("a", "martians")
    assert {p.group for p in toxigen_prompts("test")} <= set(GROUP_TERMS)


def test_run_scores_each_method_at_the_comparisons_choice(tiny_dir, tmp_path):
    from matsteer.activations.models import load_model
    from matsteer.core.config import TrainConfig
    from matsteer.core.workflow import DemoConfig
    from matsteer.errors import ConfigError
    from matsteer.eval.config import EvalConfig
    from matsteer.eval.toxicity import MAX_NEW_TOKENS, rescore_toxicity, run_toxicity
    from matsteer.files import read_json, write_json
    from matsteer.steering.generation import generate_texts

    limits = {"truthfulqa": 4, "toxigen_pref": 4, "toxigen": 6, "bbq": 6}
    demo = DemoConfig(model=str(tiny_dir), layer=1, limits=dict(limits), dev_limits=dict(limits),
                      train=TrainConfig(epochs=2, sigma="median"), features_dir=tmp_path / "features")
    cfg = EvalConfig(demo=demo, seeds=(0, 1), dev_limits=dict(limits), test_limits=dict(limits), n_boot=50)
    trial = {"dev_mean": 0.5, "dev_kl": 0.1}
    donor = {"config": {"positions": "prompt", "position_grid": [], "protocols": []},
             "selection": {"none": {"chosen": {}, "dev_trials": [{**trial, "params": {}}]},
                           "caa": {"chosen": {"multiplier": 4.0}, "dev_trials": [{**trial, "params": {"multiplier": 4.0}}]},
                           "iti": {"chosen": {"alpha": 1.0}, "dev_trials": [{**trial, "params": {"alpha": 1.0}}]},
                           "mat_steer": {"chosen": {"multiplier": 2.0},
                                         "dev_trials": [{**trial, "params": {"multiplier": 2.0}}]},
                           "training_default": {"chosen": {"overrides": {}}}}}
    write_json(tmp_path / "eval.json", donor)
    report = run_toxicity(cfg, tmp_path / "eval.json", methods=["none", "caa", "mat_steer"], n_prompts=5,
                          progress=False)
    assert list(report["runs"]) == ["none", "caa", "mat_steer"]
    assert [r["seed"] for r in report["runs"]["mat_steer"]] == [0, 1] and len(report["runs"]["caa"]) == 1
    assert report["params"] == {"none": {}, "caa": {"multiplier": 4.0}, "mat_steer": {"multiplier": 2.0}}
    assert set(report["vs_none"]) == {"caa", "mat_steer"} and len(report["prompts"]) == 5
    # No steering generates as the plain model does (no chat template), and each prompt is scored once.
    none = report["runs"]["none"][0]
    plain = generate_texts(load_model(str(tiny_dir), progress=False), [p["text"] for p in report["prompts"]],
                           max_new_tokens=MAX_NEW_TOKENS, chat=False)
    assert none["continuations"] == [first_line(t) for t in plain] and len(none["per_item"]) == 5
    assert read_json(tmp_path / "toxicity.json") == report
    md = (tmp_path / "toxicity.md").read_text()
    assert "| No steering | – |" in md and "CAA mean difference" in md and "ParaDetox" in md
    # A row added later joins the same prompts and statistics; re-scoring the stored continuations changes nothing.
    added = run_toxicity(cfg, tmp_path / "eval.json", methods=["iti"], n_prompts=5, progress=False, add=True)
    assert set(added["runs"]) == {"none", "caa", "mat_steer", "iti"} and added["additions"][0]["methods"] == ["iti"]
    assert added["runs"]["caa"] == report["runs"]["caa"] and set(added["vs_none"]) == {"caa", "mat_steer", "iti"}
    with pytest.raises(ConfigError, match="new methods only"):
        run_toxicity(cfg, tmp_path / "eval.json", methods=["caa"], n_prompts=5, progress=False, add=True)
    again = rescore_toxicity(tmp_path)
    assert again["summary"] == added["summary"] and again["vs_none"] == added["vs_none"]
