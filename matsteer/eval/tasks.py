"""The evaluation tasks: their names and primary metrics, local sources, demonstrations, neutral text, the rows
of metrics a task reports, the constant answer of each task (the reference every method must beat), and the
clusters its test questions come in (for the cluster bootstrap)."""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch

from matsteer.data import TOXIGEN_PREF, MCQuestion, fill_template, load_examples, load_mc_questions
from matsteer.errors import ConfigError, DataError
from matsteer.eval.metrics import class_accuracy_from_questions
from matsteer.eval.task_metrics import (
    BBQItems,
    bbq_answers,
    bbq_counts,
    bbq_scores_from_questions,
    truthfulqa_mc_from_questions,
)

#: The attribute tasks: truthfulness, toxicity, bias. Their primary metrics are averaged into ``mean``.
TASKS: tuple[str, ...] = ("truthfulqa", TOXIGEN_PREF, "bbq")
#: Secondary probes: scored beside the attribute tasks, never averaged into ``mean``.
PROBES: tuple[str, ...] = ("toxigen",)
#: Tasks an evaluator accepts: the attribute tasks, the ToxiGen Yes/No probe, and HH-RLHF harmless (chosen vs
#: rejected response, accuracy) for the number-of-attributes ablation.
MC_TASKS: tuple[str, ...] = (*TASKS, *PROBES, "hh_rlhf")
#: The metric each task is ranked by (per-question values in ``per_item`` average to it). BBQ's is the
#: disambiguated accuracy: a context-blind bonus on "unknown" cannot raise it, since "unknown" is never the gold
#: answer of a disambiguated question (:class:`matsteer.eval.task_metrics.BBQScores`); BBQ's abstention guard
#: (:func:`matsteer.eval.comparison.bbq_guard`) flags the opposite shift, a penalty on "unknown".
PRIMARY: dict[str, str] = {"truthfulqa": "mc2", TOXIGEN_PREF: "accuracy", "bbq": "disambig",
                           "toxigen": "balanced_accuracy", "hh_rlhf": "accuracy"}
#: When BBQ's primary became ``disambig`` (it was ``balanced``, ½(ambiguous + disambiguated accuracy)).
BBQ_PRIMARY_CHANGED = "2026-12-04"
#: The primary metrics of every ``eval.json`` written before :data:`BBQ_PRIMARY_CHANGED`: a report without a
#: ``primary`` record, or whose record says so, has BBQ ``per_item`` and ``mean`` of the balanced one.
LEGACY_PRIMARY: dict[str, str] = {**PRIMARY, "bbq": "balanced"}
#: A task built from another data set's file uses that data set's limit and source when given none of its own.
DATA_OF: dict[str, str] = {TOXIGEN_PREF: "toxigen"}
NEUTRAL_DATASET = "paradetox"
#: What ``sources`` may name: a task's questions, or the neutral text of the side effects.
SOURCE_KEYS: tuple[str, ...] = (*MC_TASKS, NEUTRAL_DATASET)


def primary_of(report: Mapping[str, Any], task: str) -> str:
    """The primary metric of ``task`` that ``report`` (an ``eval.json``, or one protocol's part of it) was written
    with: its ``primary`` record, else :data:`LEGACY_PRIMARY` (files from before the record)."""
    recorded = report.get("primary")
    if isinstance(recorded, Mapping) and isinstance(recorded.get(task), str):
        return str(recorded[task])
    return LEGACY_PRIMARY.get(task, PRIMARY.get(task, ""))


def cluster_ids(task: str, questions: Sequence[MCQuestion]) -> list[str]:
    """The cluster of every question, ``[n]``: what questions share beyond chance, so that a bootstrap resamples
    clusters rather than questions. BBQ: its template, ``category|question_index`` (the unit BBQ is split by: one
    template gives ambiguous and disambiguated versions with different names filled in); TruthfulQA: its
    category (the question itself where the file has none); ToxiGen preference pairs and the Yes/No probe: the
    target group; anything else (HH-RLHF): the question itself."""
    if task == "bbq":
        return [f"{q.meta.get('category', '')}|{q.meta.get('question_index', q.group)}" for q in questions]
    if task == "truthfulqa":
        return [q.meta.get("category") or q.group for q in questions]
    if task in (TOXIGEN_PREF, "toxigen"):
        return [q.meta.get("target_group") or q.group for q in questions]
    return [q.group for q in questions]


def few_shot_prefix(task: str, k: int, seed: int = 0) -> str:
    """ICL demonstrations: ``k`` training questions of ``task`` filled with a correct answer, seeded."""
    pool = load_mc_questions(task, "train")
    chosen = random.Random(seed).sample(pool, k)
    demos = [fill_template(q.template, q.prompt, q.choices[q.labels.index(1)])[0] for q in chosen]
    return "".join(d + "\n\n" for d in demos)


def neutral_texts(split: str, n: int, source: str | Path | None = None) -> list[str]:
    """Neutral sentences for side effects: ParaDetox's neutral paraphrases (label 1), never used for training."""
    texts = [e.text for e in load_examples(NEUTRAL_DATASET, split, source=source) if e.label == 1]
    return texts[:n]


def for_task(values: Mapping[str, Any], task: str) -> Any:
    """``values[task]``, else the value of the data set the task is built from (:data:`DATA_OF`), else None."""
    if task in values:
        return values[task]
    return values.get(DATA_OF.get(task, ""))


def parse_sources(items: Sequence[str] | Mapping[str, str | Path] | None) -> dict[str, str]:
    """``TASK=PATH`` items (or a mapping) as ``{task: path}``, checked: known task names, existing paths."""
    if not items:
        return {}
    pairs: list[tuple[str, str]] = []
    if isinstance(items, Mapping):
        pairs = [(str(k), str(v)) for k, v in items.items()]
    else:
        for item in items:
            task, sep, path = str(item).partition("=")
            if not sep or not task or not path:
                raise ConfigError(f"Bad --source {item!r}: use TASK=PATH, e.g. truthfulqa=my_questions.json.")
            pairs.append((task.strip(), path.strip()))
    out: dict[str, str] = {}
    for task, path in pairs:
        if task not in SOURCE_KEYS:
            raise ConfigError(f"--source names unknown task {task!r}; choose from {', '.join(SOURCE_KEYS)}.")
        if task in out:
            raise ConfigError(f"--source gives {task!r} twice; give one file (or folder) per task.")
        if not Path(path).exists():
            raise DataError(f"--source {task}={path}: no such file or folder. Fix the path (a file in the schema "
                            "the shipped data uses; see data/README.md).")
        out[task] = path
    return out


def constant_row(task: str, questions: Sequence[MCQuestion]) -> dict[str, Any]:
    """The constant / majority answer of ``task`` on ``questions``, from the gold labels alone, with the same
    metrics as :meth:`matsteer.eval.evaluator.Evaluator.task_scores` (``answer`` says which constant).

    TruthfulQA: a model indifferent between the answers (equal scores): MC2 = the share of true answers, MC1 =
    ``1 / K`` (a uniform pick). ToxiGen preference and HH-RLHF pairs: a coin flip, 50%. BBQ: always the first
    option that is not "unknown", or always the second where the gold labels favour it (:func:`bbq_constant`): the
    best a context-blind rule by position gets on disambiguated questions (the primary), 50% on the shipped test
    split, where BBQ balances the order; 0% ambiguous ("always unknown" would score 100% ambiguous but 0% on the
    primary). ToxiGen Yes/No: always the majority gold answer (its plain accuracy is the majority share; balanced
    accuracy 50%).
    """
    if not questions:
        raise DataError(f"No {task} questions to compute a constant answer on.")
    n = len(questions)
    if task == "truthfulqa":
        res = truthfulqa_mc_from_questions(questions, [torch.zeros(len(q.choices)) for q in questions])
        mc1 = [1.0 / len(q.mc1_choices) if q.mc1_choices else float("nan") for q in questions]
        return {"mc2": res.mean_mc2, "mc1": sum(mc1) / n, "n": n, "per_item": res.mc2,
                "answer": "equal scores for every answer (chance)"}
    if task in (TOXIGEN_PREF, "hh_rlhf"):
        row: dict[str, Any] = {"accuracy": 0.5, "n": n, "per_item": [0.5] * n, "answer": "a coin flip (chance)"}
        if task == TOXIGEN_PREF:
            row["accuracy_per_token"] = 0.5
        return row
    if task == "bbq":
        which, scores = bbq_constant(questions)
        return {**bbq_row(questions, scores), "answer": f'always the {which} option that is not "unknown"'}
    if task == "toxigen":
        gold = Counter(q.choices[q.correct[0]] for q in questions)
        majority = sorted(gold, key=lambda c: (-gold[c], c))[0]
        scores = [torch.tensor([0.0 if c == majority else -1.0 for c in q.choices]) for q in questions]
        return {**toxigen_row(questions, scores), "answer": f'always "{majority}"'}
    raise ConfigError(f"No constant answer for task {task!r}; choose from {', '.join(MC_TASKS)}.")


def _non_unknown(q: MCQuestion) -> list[int]:
    """The options of a BBQ question that are not its "unknown" one, in order (all of them where it is not known)."""
    unknown = q.meta.get("unknown_answer")
    return [k for k in range(len(q.choices)) if str(k) != unknown]


def bbq_constant(questions: Sequence[MCQuestion]) -> tuple[str, list[torch.Tensor]]:
    """BBQ's constant answer: ``("first" | "second", scores)``, always the first option that is not "unknown", or
    the second where more disambiguated questions have it as their gold answer (from the gold labels, like the
    majority answer of the ToxiGen probe); ``scores`` put 0 on it and -1 on the others. Context-blind: the chosen
    position among the options is the same for every question, whatever its context says."""
    dis = [q for q in questions if q.meta.get("context_condition") == "disambig"]
    hits = [sum(len(ks) > pos and q.labels[ks[pos]] == 1 for q in dis for ks in [_non_unknown(q)]) for pos in (0, 1)]
    pos = 1 if hits[1] > hits[0] else 0
    scores = []
    for q in questions:
        ks = _non_unknown(q)
        pick = ks[min(pos, len(ks) - 1)]
        scores.append(torch.tensor([0.0 if k == pick else -1.0 for k in range(len(q.choices))]))
    return ("first", "second")[pos], scores


def bbq_row(questions: Sequence[MCQuestion], scores: Sequence[torch.Tensor]) -> dict[str, Any]:
    """BBQ's metrics from per-choice log-probs ``[3]`` per question; ``per_item`` averages to the primary,
    ``disambig`` (correctness times :func:`matsteer.eval.task_metrics.bbq_item_weights`: ``n / n_disambig`` on
    disambiguated questions, 0 on ambiguous ones), over all questions in order.

    For the abstention guard also ``answers`` (the chosen option per question, one character each:
    :func:`matsteer.eval.task_metrics.bbq_answers`), the ambiguous and disambiguated "unknown" rates, and
    ``condition_counts``: per condition the questions, correct and "unknown" answers, ``n_biased`` and
    ``n_non_unknown`` (:class:`matsteer.eval.task_metrics.BBQCounts`)."""
    res = bbq_scores_from_questions(questions, scores)
    acc = res.accuracy
    answers, items = bbq_answers(scores), BBQItems.from_questions(questions)
    counts = {c: bbq_counts(answers, items, [x == c for x in items.condition]) for c in ("ambig", "disambig")}
    return {"balanced": res.balanced, "accuracy": acc.overall.mean, "ambig": acc.ambig.mean,
            "disambig": acc.disambig.mean, "s_dis": res.s_dis, "s_amb": res.s_amb, "n": acc.overall.n,
            "unknown_ambig": counts["ambig"].unknown_rate, "unknown_disambig": counts["disambig"].unknown_rate,
            "counts": {"ambig": acc.ambig.n, "disambig": acc.disambig.n},
            "condition_counts": {c: asdict(v) for c, v in counts.items()}, "answers": answers,
            "per_item": res.per_item_disambig}


def toxigen_row(questions: Sequence[MCQuestion], scores: Sequence[torch.Tensor]) -> dict[str, Any]:
    """The ToxiGen Yes/No probe's metrics (balanced, plain and per-class accuracy); ``per_item`` averages to
    ``balanced_accuracy``."""
    res = class_accuracy_from_questions(questions, scores)
    per = {c: r.mean for c, r in res.per_class.items()}
    return {"balanced_accuracy": res.balanced, "accuracy": res.overall.mean,
            "accuracy_toxic": per.get("Yes", float("nan")), "accuracy_benign": per.get("No", float("nan")),
            "n": res.overall.n, "counts": {"toxic": res.per_class["Yes"].n if "Yes" in res.per_class else 0,
                                           "benign": res.per_class["No"].n if "No" in res.per_class else 0},
            "per_item": res.per_item_balanced}
