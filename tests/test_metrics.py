"""Metrics against hand-computed values."""

from __future__ import annotations

import math

import pytest
import torch

from matsteer.data import MCQuestion
from matsteer.errors import ConfigError, DataError
from matsteer.eval.metrics import mc_accuracy, mc_accuracy_from_questions, mc_correct
from matsteer.eval.side_effects import (
    TokenMean,
    cross_entropy,
    cross_entropy_total,
    next_token_kl,
    next_token_kl_total,
)
from matsteer.eval.task_metrics import (
    bbq_accuracy,
    bbq_accuracy_from_questions,
    mc1,
    mc2,
    truthfulqa_mc,
    truthfulqa_mc_from_questions,
)

T = torch.tensor


# ------------------------------------------------------------------ TruthfulQA


def test_mc1_strict_max():
    assert mc1(T([-1.0, -2.0, -3.0]), [1, 0, 0]) == 1.0
    assert mc1(T([-2.0, -1.0, -3.0]), [1, 0, 0]) == 0.0
    assert mc1(T([-3.0, -2.0, -1.0]), [0, 0, 1]) == 1.0  # the true answer need not be first
    assert mc1(T([-1.0, -1.0]), [1, 0]) == 0.0  # a tie is not a win
    with pytest.raises(DataError):
        mc1(T([-1.0, -2.0, -3.0]), [1, 1, 0])  # MC1 has exactly one true choice


def test_mc2_is_normalised_true_mass():
    probs = [0.5, 0.3, 0.2]
    assert mc2(torch.log(T(probs, dtype=torch.float64)), [1, 0, 1]) == pytest.approx(0.7, abs=1e-12)
    # Unnormalised log-probs: the mass is renormalised over the choices.
    assert mc2([math.log(2.0), math.log(6.0)], [1, 0]) == pytest.approx(0.25, abs=1e-12)


def test_mc2_stable_for_very_negative_logprobs():
    # exp(-1000) underflows to 0 in float64; the naive ratio would be 0/0.
    got = mc2(T([-1000.0, -1001.0]), [1, 0])
    assert got == pytest.approx(1.0 / (1.0 + math.exp(-1.0)), abs=1e-12)
    assert mc2(T([-float("inf"), -5.0]), [1, 0]) == 0.0


def test_mc_inputs_validated():
    with pytest.raises(DataError):
        mc2(T([-1.0, -2.0]), [1, 1])  # no false choice
    with pytest.raises(DataError):
        mc2(T([-1.0, -2.0]), [1, 0, 0])
    with pytest.raises(DataError):
        mc2(T([float("nan"), -2.0]), [1, 0])
    with pytest.raises(DataError):
        mc2(T([[-1.0, -2.0]]), [1, 0])


def test_truthfulqa_means_and_questions():
    mc2_lp = [torch.log(T([0.5, 0.3, 0.2])), T([0.0, 0.0])]
    mc2_lab = [[1, 0, 1], [0, 1]]
    mc1_lp = [T([-1.0, -2.0]), T([-1.0, -0.5])]
    mc1_lab = [[1, 0], [1, 0]]
    s = truthfulqa_mc(mc2_lp, mc2_lab, mc1_lp, mc1_lab)
    assert s.mc1 == [1.0, 0.0] and s.mean_mc1 == 0.5
    assert s.mc2 == pytest.approx([0.7, 0.5]) and s.mean_mc2 == pytest.approx(0.6)
    assert s.n == 2
    assert truthfulqa_mc(mc2_lp, mc2_lab).mc1 == []
    with pytest.raises(ConfigError):
        truthfulqa_mc(mc2_lp, mc2_lab, mc1_lp)
    with pytest.raises(DataError):
        truthfulqa_mc(mc2_lp, mc2_lab[:1])

    qs = [
        MCQuestion(
            "truthfulqa",
            f"q{i}",
            ["a", "b", "c"][: len(lab)],
            lab,
            f"g{i}",
            "Q: {prompt} A: {answer}",
            mc1_choices=["x", "y"],
            mc1_labels=l1,
        )
        for i, (lab, l1) in enumerate(zip(mc2_lab, mc1_lab))
    ]
    s2 = truthfulqa_mc_from_questions(qs, mc2_lp, mc1_lp)
    assert s2.mc1 == s.mc1 and s2.mc2 == s.mc2


# ------------------------------------------------------------------ accuracy


def test_mc_accuracy_and_ties():
    assert mc_correct(T([-3.0, -1.0, -2.0]), 1)
    assert not mc_correct(T([-1.0, -1.0, -2.0]), 0)  # tie at the top: not correct
    acc = mc_accuracy([T([-1.0, -2.0]), T([-1.0, -2.0]), T([-3.0, -2.0])], [0, 1, 1])
    assert acc.per_item == [1.0, 0.0, 1.0] and acc.mean == pytest.approx(2 / 3) and acc.n == 3
    assert math.isnan(mc_accuracy([], []).mean)
    with pytest.raises(DataError):
        mc_correct(T([-1.0, -2.0]), 2)


def test_bbq_split_by_condition():
    lps = [T([-1.0, -2.0, -3.0]), T([-1.0, -2.0, -3.0]), T([-3.0, -2.0, -1.0]), T([-3.0, -1.0, -2.0])]
    gold = [0, 1, 2, 0]
    cond = ["ambig", "ambig", "disambig", "disambig"]
    r = bbq_accuracy(lps, gold, cond)
    assert r.overall.mean == 0.5
    assert r.ambig.per_item == [1.0, 0.0] and r.disambig.per_item == [1.0, 0.0]
    with pytest.raises(DataError):
        bbq_accuracy(lps, gold, ["ambig", "ambig", "disambig", "other"])

    qs = [
        MCQuestion(
            "bbq",
            "ctx q",
            ["a", "b", "c"],
            [int(k == g) for k in range(3)],
            f"g{i}",
            "Q: {prompt} A: {answer}",
            meta={"context_condition": c},
        )
        for i, (g, c) in enumerate(zip(gold, cond))
    ]
    r2 = bbq_accuracy_from_questions(qs, lps)
    assert r2.ambig.per_item == r.ambig.per_item and r2.disambig.per_item == r.disambig.per_item
    assert mc_accuracy_from_questions(qs, lps).per_item == r.overall.per_item


# ------------------------------------------------------------------ side effects


def test_cross_entropy_uniform_is_log_v():
    logits = torch.zeros(2, 5, 7)
    labels = torch.randint(0, 7, (2, 5))
    assert cross_entropy(logits, labels) == pytest.approx(math.log(7), abs=1e-6)
    tot = cross_entropy_total(logits, labels)
    assert tot.count == 2 * 4  # shift: no prediction for the first token


def test_cross_entropy_matches_hand_loop_with_left_padding():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 4, 5, generator=g)
    labels = torch.tensor([[0, 0, 3, 1], [2, 4, 1, 3]])
    mask = torch.tensor([[0, 0, 1, 1], [1, 1, 1, 1]])  # row 0 left-padded
    expected, n = 0.0, 0
    for b in range(2):
        for i in range(3):
            if mask[b, i] and mask[b, i + 1]:
                expected -= torch.log_softmax(logits[b, i], -1)[labels[b, i + 1]].item()
                n += 1
    assert n == 4
    got = cross_entropy_total(logits, labels, mask)
    assert got.count == n and got.total == pytest.approx(expected, abs=1e-5)
    # Unshifted: logits[:, i] scores labels[:, i] where mask[:, i].
    unshifted = cross_entropy_total(logits, labels, mask, shift=False)
    assert unshifted.count == 6
    # Batches combine exactly, token-weighted.
    parts = cross_entropy_total(logits[:1], labels[:1], mask[:1]) + cross_entropy_total(
        logits[1:], labels[1:], mask[1:]
    )
    assert parts.count == got.count and parts.total == pytest.approx(got.total, abs=1e-9)


def test_kl_hand_value_and_mask():
    p = torch.log(T([0.5, 0.5]))
    q = torch.log(T([0.9, 0.1]))
    base = torch.stack([p, p]).reshape(1, 2, 2)
    steered = torch.stack([q, p]).reshape(1, 2, 2)
    kl_pq = 0.5 * math.log(0.5 / 0.9) + 0.5 * math.log(0.5 / 0.1)
    assert next_token_kl(base, steered) == pytest.approx(kl_pq / 2, abs=1e-6)
    assert next_token_kl(base, steered, torch.tensor([[1, 0]])) == pytest.approx(kl_pq, abs=1e-6)
    assert next_token_kl_total(base, base).total == pytest.approx(0.0, abs=1e-7)
    assert math.isnan(next_token_kl(base, steered, torch.zeros(1, 2)))


def test_kl_zero_mass_tokens_do_not_nan():
    base = T([[[0.0, -float("inf"), 1.0]]])
    steered = T([[[0.0, 2.0, 1.0]]])
    got = next_token_kl(base, steered)
    p = torch.softmax(base[0, 0], -1)
    q = torch.softmax(steered[0, 0], -1)
    expected = sum(float(p[i] * (p[i].log() - q[i].log())) for i in (0, 2))
    assert math.isfinite(got) and got == pytest.approx(expected, abs=1e-6)


def test_token_mean():
    assert (TokenMean(3.0, 2) + TokenMean(1.0, 2)).mean == 1.0
    assert math.isnan(TokenMean(0.0, 0).mean)
    with pytest.raises(DataError):
        cross_entropy(torch.zeros(1, 3, 4), torch.zeros(1, 2, dtype=torch.long))


# ------------------------------------------------------------------ balanced, preference, BBQ bias scores


def test_predicted_choice_and_balanced_weights():
    from matsteer.eval.metrics import balanced_weights, predicted_choice

    assert predicted_choice(T([-3.0, -1.0, -2.0])) == 1
    assert predicted_choice(T([-1.0, -1.0, -2.0])) is None  # a tie at the top answers nothing
    # 1 "a" and 3 "b": w = n / (C * n_c) = 4 / (2 * 1) and 4 / (2 * 3).
    assert balanced_weights(["a", "b", "b", "b"]) == pytest.approx([2.0, 2 / 3, 2 / 3, 2 / 3])


def test_class_accuracy_constant_no_is_half_balanced():
    from matsteer.eval.metrics import class_accuracy

    # Gold Yes, No, No, No (choices ["Yes", "No"]); a model that always says "No".
    always_no = [T([-2.0, -1.0])] * 4
    r = class_accuracy(always_no, [0, 1, 1, 1], ["Yes", "No", "No", "No"])
    assert r.overall.mean == 0.75  # plain accuracy rewards the majority answer...
    assert r.per_class["Yes"].mean == 0.0 and r.per_class["No"].mean == 1.0
    assert r.balanced == 0.5  # ...balanced accuracy does not
    assert r.per_item_balanced == pytest.approx([0.0, 2 / 3, 2 / 3, 2 / 3])
    assert sum(r.per_item_balanced) / 4 == pytest.approx(r.balanced)


def test_preference_accuracy_by_sum_and_per_token():
    from matsteer.eval.metrics import preference_accuracy

    lps = [T([-10.0, -12.0]), T([-12.0, -10.0]), T([-9.0, -9.0]), T([-20.0, -8.0])]
    lengths = [[5, 4], [6, 2], [3, 3], [10, 2]]
    gold = [0, 0, 1, 1]
    r = preference_accuracy(lps, lengths, gold)
    # Sum: -10 > -12 yes; -12 < -10 no; tie no; -8 > -20 yes.
    assert r.by_sum.per_item == [1.0, 0.0, 0.0, 1.0]
    # Per token: -10/5 > -12/4 yes; -12/6 > -10/2 yes; tie no; gold -8/2 = -4 < -20/10 = -2 no.
    assert r.by_token.per_item == [1.0, 1.0, 0.0, 0.0]
    assert (r.by_sum.mean, r.by_token.mean, r.n) == (0.5, 0.5, 4)
    with pytest.raises(DataError, match="token count"):
        preference_accuracy([T([-1.0, -2.0])], [[0, 3]], [0])


def _bbq_case():
    """Parrish et al. (2022) on a toy: options 0 = biased, 1 = unknown, 2 = the other group, in every question."""
    pick = {0: T([0.0, -1.0, -2.0]), 1: T([-1.0, 0.0, -2.0]), 2: T([-2.0, -1.0, 0.0])}
    # Disambiguated: predictions biased, biased, other, unknown; gold biased, other, other, other.
    # Ambiguous (gold always unknown): predictions unknown, biased, biased, other.
    preds = [0, 0, 2, 1, 1, 0, 0, 2]
    gold = [0, 2, 2, 2, 1, 1, 1, 1]
    cond = ["disambig"] * 4 + ["ambig"] * 4
    return [pick[p] for p in preds], gold, cond, [0] * 8, [1] * 8


def test_bbq_bias_scores_by_hand():
    from matsteer.eval.task_metrics import bbq_scores

    lps, gold, cond, biased, unknown = _bbq_case()
    r = bbq_scores(lps, gold, cond, biased, unknown)
    # Disambiguated: 3 non-unknown answers, 2 biased: s_DIS = 2 * 2/3 - 1 = 1/3; accuracy 2/4.
    assert (r.dis.n_biased, r.dis.n_non_unknown, r.dis.n) == (2, 3, 4)
    assert r.s_dis == pytest.approx(1 / 3)
    # Ambiguous: accuracy 1/4; 3 non-unknown answers, 2 biased: s = 1/3, s_AMB = (1 - 1/4) * 1/3 = 1/4.
    assert r.accuracy.ambig.mean == 0.25 and r.accuracy.disambig.mean == 0.5
    assert r.s_amb == pytest.approx(0.25)
    assert r.balanced == pytest.approx((0.25 + 0.5) / 2) and r.accuracy.overall.mean == 3 / 8
    assert r.per_item_balanced == r.accuracy.overall.per_item  # equal condition sizes: weights 1


def test_bbq_constant_unknown_scores_half_and_has_no_bias_score():
    from matsteer.eval.task_metrics import bbq_bias_score, bbq_scores

    _, gold, cond, biased, unknown = _bbq_case()
    r = bbq_scores([T([-1.0, 0.0, -1.0])] * 8, gold, cond, biased, unknown)
    assert (r.accuracy.ambig.mean, r.accuracy.disambig.mean, r.balanced) == (1.0, 0.0, 0.5)
    assert r.s_dis is None and r.s_amb is None  # nothing but "unknown": the ratio is undefined, not 0
    # Unequal conditions: 1 ambiguous (right), 3 disambiguated (1 right): balanced (1 + 1/3) / 2.
    lps = [T([-1.0, 0.0, -1.0]), T([0.0, -1.0, -2.0]), T([0.0, -1.0, -2.0]), T([0.0, -1.0, -2.0])]
    u = bbq_scores(lps, [1, 0, 2, 2], ["ambig", "disambig", "disambig", "disambig"], [0] * 4, [1] * 4)
    assert u.balanced == pytest.approx(2 / 3)
    assert sum(u.per_item_balanced) / 4 == pytest.approx(2 / 3)
    # Ties and unknown options are left out of the counts; all-anti-stereotyped answers give -1.
    s = bbq_bias_score([2, 2, None, 0], [0, 0, 0, None], [1, 1, 1, 1])
    assert (s.score, s.n_biased, s.n_non_unknown, s.n) == (-1.0, 0, 2, 2)


def test_bbq_primary_is_disambiguated_accuracy_and_per_item_averages_to_it():
    from matsteer.eval.task_metrics import bbq_item_weights, bbq_scores
    from matsteer.eval.tasks import LEGACY_PRIMARY, PRIMARY, bbq_row, primary_of

    assert PRIMARY["bbq"] == "disambig" and LEGACY_PRIMARY["bbq"] == "balanced"
    assert primary_of({"primary": {"bbq": "disambig"}}, "bbq") == "disambig" and primary_of({}, "bbq") == "balanced"
    # Unequal conditions: 1 ambiguous (right), 3 disambiguated (1 right): disambiguated accuracy 1/3.
    cond = ["ambig", "disambig", "disambig", "disambig"]
    lps = [T([-1.0, 0.0, -1.0]), T([0.0, -1.0, -2.0]), T([0.0, -1.0, -2.0]), T([0.0, -1.0, -2.0])]
    u = bbq_scores(lps, [1, 0, 2, 2], cond, [0] * 4, [1] * 4)
    assert bbq_item_weights(cond, "disambig") == pytest.approx([0.0, 4 / 3, 4 / 3, 4 / 3])
    assert bbq_item_weights(cond, "balanced") == pytest.approx([2.0, 2 / 3, 2 / 3, 2 / 3])
    assert u.per_item_disambig == pytest.approx([0.0, 4 / 3, 0.0, 0.0])
    assert sum(u.per_item_disambig) / 4 == pytest.approx(u.accuracy.disambig.mean) == pytest.approx(1 / 3)
    # No disambiguated question: the primary is undefined, and so is every per-question term.
    assert all(math.isnan(w) for w in bbq_item_weights(["ambig"] * 3, "disambig"))
    with pytest.raises(ConfigError):
        bbq_item_weights(cond, "accuracy")
    qs, lps8 = _bbq_questions()
    row = bbq_row(qs, lps8)
    assert sum(row["per_item"]) / len(row["per_item"]) == pytest.approx(row[PRIMARY["bbq"]]) == row["disambig"]


def test_bbq_constant_is_context_blind_and_the_best_such_rule_on_the_primary():
    from matsteer.eval.tasks import bbq_constant, constant_row

    def q(i, choices, gold, cond, unknown):
        return MCQuestion("bbq", "ctx q", choices, [int(k == gold) for k in range(3)], f"g{i}",
                          "Q: {prompt} A: {answer}",
                          meta={"context_condition": cond, "biased_answer": "0", "unknown_answer": str(unknown)})

    # Gold of the disambiguated questions: the second non-unknown option twice, the first once.
    qs = [q(0, ["x", "unknown", "y"], 1, "ambig", 1), q(1, ["x", "unknown", "y"], 2, "disambig", 1),
          q(2, ["unknown", "x", "y"], 2, "disambig", 0), q(3, ["x", "y", "unknown"], 0, "disambig", 2)]
    which, scores = bbq_constant(qs)
    assert which == "second" and [int(s.argmax()) for s in scores] == [2, 2, 2, 1]
    row = constant_row("bbq", qs)
    assert row["answer"] == 'always the second option that is not "unknown"'
    assert (row["ambig"], row["disambig"], row["balanced"]) == (0.0, pytest.approx(2 / 3), pytest.approx(1 / 3))
    # Ties go to the first; "always unknown" would score 0 on the primary.
    qs.append(q(4, ["x", "y", "unknown"], 0, "disambig", 2))  # two and two
    assert bbq_constant(qs)[0] == "first" and constant_row("bbq", qs)["disambig"] == 0.5
    from matsteer.data import load_mc_questions

    shipped = constant_row("bbq", load_mc_questions("bbq", "test"))
    assert shipped["disambig"] == 0.5 and shipped["ambig"] == 0.0  # BBQ balances the order of the two names


def test_bbq_scores_from_questions_reads_the_options():
    from matsteer.eval.task_metrics import bbq_scores, bbq_scores_from_questions

    lps, gold, cond, biased, unknown = _bbq_case()
    qs = [MCQuestion("bbq", "ctx q", ["a", "b", "c"], [int(k == g) for k in range(3)], f"g{i}",
                     "Q: {prompt} A: {answer}",
                     meta={"context_condition": c, "biased_answer": str(b), "unknown_answer": str(u)})
          for i, (g, c, b, u) in enumerate(zip(gold, cond, biased, unknown))]
    want = bbq_scores(lps, gold, cond, biased, unknown)
    got = bbq_scores_from_questions(qs, lps)
    assert (got.s_dis, got.s_amb, got.balanced) == (want.s_dis, want.s_amb, want.balanced)
    qs[0] = MCQuestion("bbq", "ctx q", ["a", "b", "c"], [1, 0, 0], "g0", "Q: {prompt} A: {answer}",
                       meta={"context_condition": "disambig", "biased_answer": "", "unknown_answer": "1"})
    assert bbq_scores_from_questions(qs, lps).dis.n == 3  # an unknown biased option leaves the question out


def _bbq_questions():
    lps, gold, cond, biased, unknown = _bbq_case()
    qs = [MCQuestion("bbq", "ctx q", ["a", "b", "c"], [int(k == g) for k in range(3)], f"g{i}",
                     "Q: {prompt} A: {answer}",
                     meta={"context_condition": c, "biased_answer": str(b), "unknown_answer": str(u),
                           "category": "Age" if i % 2 else "Religion", "question_index": str(i // 4)})
          for i, (g, c, b, u) in enumerate(zip(gold, cond, biased, unknown))]
    return qs, lps


def test_bbq_guard_counts_match_the_bias_scores():
    import numpy as np

    from matsteer.eval.task_metrics import BBQItems, bbq_answers, bbq_counts, bbq_ratio_items, bbq_scores
    from matsteer.eval.tasks import bbq_row

    qs, lps = _bbq_questions()
    res = bbq_scores(*_bbq_case())
    items = BBQItems.from_questions(qs)
    answers = bbq_answers(lps)
    assert len(answers) == 8 and set(answers) <= set("012-")
    assert BBQItems.from_dict(items.to_dict()) == items
    cond = np.array(items.condition)
    for c, score in (("disambig", res.dis), ("ambig", res.amb)):
        counts = bbq_counts(answers, items, cond == c)
        assert (counts.n_biased, counts.n_non_unknown) == (score.n_biased, score.n_non_unknown)
        assert counts.n == 4 and counts.bias == pytest.approx(score.score)
    ambig = bbq_counts(answers, items, cond == "ambig")
    # On ambiguous questions the gold answer is "unknown": accuracy is the "unknown" rate.
    assert ambig.accuracy == ambig.unknown_rate == res.accuracy.ambig.mean
    # Ratio terms: sums give the statistics; s_amb as a per-question mean equals (1 - ambig) * s here.
    for stat, mask, want in (("accuracy", cond == "disambig", res.accuracy.disambig.mean),
                             ("s_dis", cond == "disambig", res.s_dis), ("s_amb", cond == "ambig", res.s_amb),
                             ("unknown_rate", cond == "ambig", ambig.unknown_rate)):
        num, den = bbq_ratio_items([answers], items, stat, mask)
        assert num.shape == den.shape == (1, 4) and num.sum() / den.sum() == pytest.approx(want)
    with pytest.raises(ConfigError):
        bbq_ratio_items([answers], items, "balanced", cond == "ambig")
    with pytest.raises(DataError):
        bbq_ratio_items([answers[:3]], items, "accuracy", cond == "ambig")
    row = bbq_row(qs, lps)
    assert row["answers"] == answers and row["unknown_ambig"] == ambig.unknown_rate
    assert row["condition_counts"]["disambig"]["n_non_unknown"] == res.dis.n_non_unknown


def test_cluster_ids_per_task():
    from matsteer.data import load_mc_questions
    from matsteer.eval.tasks import cluster_ids

    qs, _ = _bbq_questions()
    assert cluster_ids("bbq", qs)[:5] == ["Religion|0", "Age|0", "Religion|0", "Age|0", "Religion|1"]
    tqa = load_mc_questions("truthfulqa", "test", limit=40)
    assert cluster_ids("truthfulqa", tqa) == [q.meta["category"] for q in tqa]
    pref = load_mc_questions("toxigen_pref", "test", limit=40)
    assert cluster_ids("toxigen_pref", pref) == [q.meta["target_group"] for q in pref]
    bbq = load_mc_questions("bbq", "test")
    ids = cluster_ids("bbq", bbq)
    # A template (category, question_index) is BBQ's split unit: none appears in the training split.
    train = set(cluster_ids("bbq", load_mc_questions("bbq", "train")))
    assert len(set(ids)) == 30 and not set(ids) & train
