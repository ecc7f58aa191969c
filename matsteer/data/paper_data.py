"""Data the paper uses that no machine here has, read from a user's local copy: OpenBookQA and FaithEval.

Both become multiple-choice questions (:class:`MCQuestion`, one correct choice) and, for steering, one
:class:`Example` per choice (label 1 on the correct one). Neither is shipped, so ``source`` (a local
``.jsonl``/``.json``/``.csv``/``.parquet`` file, ``.gz`` allowed, or a folder of them) is required; hub ids are not
read (save the split to a file first, as the messages say). HelpSteer, the third such set, is
:func:`matsteer.data.load_helpsteer`.

- **OpenBookQA** (Mihaylov et al. 2018; the paper's Table 6, OBQA as a fourth QA attribute). The schema of
  ``allenai/openbookqa`` config ``main``: ``id``, ``question_stem``, ``choices {text: [...], label: [...]}``,
  ``answerKey``; AI2's original JSONL (``question {stem, choices: [{text, label}]}``) is read too. Text:
  ``"Q: {question_stem} A: {choice}"`` (:data:`QA_TEMPLATE`, as TruthfulQA).
- **FaithEval counterfactual** (Ming et al. 2024; the paper's Fig. 6, transfer only). The schema of
  ``Salesforce/FaithEval-counterfactual-v1.0`` as several independent third-party loaders read it (its dataset
  card could not be read here): ``id``, ``context``, ``question``, ``choices {label: [...], text: [...]}``,
  ``answerKey`` (the choice the counterfactual context supports: the faithful answer) and ``answer``; only
  ``context``, ``question``, ``choices`` and ``answerKey`` are required, other fields are ignored. Text: the
  retrieval-QA prompt of FaithEval's README (:data:`FAITHEVAL_TEMPLATE`; the paper: "FaithEval uses the prompt from
  its original paper"), or ``prompt_style="qa"``: ``"Q: {context} {question} A: {choice}"`` (as BBQ). The choices are
  scored as answers, not listed in the prompt.

``split="all"`` (default) is the file as it is: pass the split you want (OBQA ships train/validation/test files;
FaithEval has only ``test``). ``train``/``dev``/``test`` cut the file's questions 40/10/50 by seeded hash
(:data:`LOCAL_SPLIT_FRACTIONS`), and ``limit`` keeps that many whole questions, as for the shipped sets.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

from matsteer.data.readers import Row, data_error, text_field
from matsteer.data.records import Example, MCQuestion
from matsteer.data.registry import (
    FAITHEVAL_TEMPLATE,
    LOCAL_ATTRIBUTE_OF,
    LOCAL_DATASETS,
    LOCAL_SPLIT_FRACTIONS,
    LOCAL_UPSTREAM,
    QA_TEMPLATE,
    check_limit,
    check_split,
)
from matsteer.data.selection import select
from matsteer.data.sources import Source, folder_source, rows_of
from matsteer.data.splits import assign_units
from matsteer.errors import ConfigError, DataError

__all__ = [
    "load_faitheval",
    "load_local_examples",
    "load_local_mc",
    "load_openbookqa",
    "mc_examples",
]

_OBQA_GET = (
    "datasets.load_dataset('allenai/openbookqa', 'main', split='test').to_json('openbookqa_test.jsonl') where the hub "
    "is reachable"
)
_FAITHEVAL_GET = (
    "datasets.load_dataset('Salesforce/FaithEval-counterfactual-v1.0', split='test')"
    ".to_json('faitheval_counterfactual.jsonl') where the hub is reachable"
)
_NAMES = {"openbookqa": "OpenBookQA", "faitheval": "FaithEval counterfactual"}
_GET = {"openbookqa": _OBQA_GET, "faitheval": _FAITHEVAL_GET}
PromptStyle = Literal["faitheval", "qa"]


def _fix(dataset: str) -> str:
    return f"pass a local copy of {LOCAL_UPSTREAM[dataset]} in its upstream schema (e.g. {_GET[dataset]})"


def _check_dataset(dataset: str) -> None:
    if dataset not in LOCAL_DATASETS:
        raise ConfigError(f"unknown local data set {dataset!r}; valid choices: {', '.join(LOCAL_DATASETS)}")


def local_source(dataset: str, source: str | Path | None) -> Source:
    """The local file(s) ``source`` names, refusing None, a missing path or a hub id with a fix that says where the
    data comes from."""
    _check_dataset(dataset)
    name = _NAMES[dataset]
    if source is None:
        raise DataError(f"{name} is not shipped with matsteer (no copy is available here). Fix: {_fix(dataset)}, "
                        "and give its path as source=...")
    path = Path(source)
    if path.is_dir():
        return folder_source(path)
    if path.is_file():
        return Source("path", paths=(path,))
    raise data_error(path, None, f"file not found ({name} is read from a local file only, not from the hub)",
                     f"check the path, or {_fix(dataset)}")


def _schema_error(dataset: str, path: Path | str, where: str, rec: Mapping[str, Any], needs: str) -> DataError:
    return data_error(path, where, f"the record is not in {_NAMES[dataset]}'s upstream schema: it has the fields "
                      f"{sorted(rec)} but needs {needs}", _fix(dataset))


def _choices(obj: Any, path: Path | str, where: str, dataset: str, rec: Mapping[str, Any], needs: str
             ) -> tuple[list[str], list[str]]:
    """``(texts, labels)`` of a ``{"text": [...], "label": [...]}`` mapping (the hub's layout of choices)."""
    if not isinstance(obj, Mapping) or not {"text", "label"} <= set(obj):
        raise _schema_error(dataset, path, where, rec, needs)
    texts, labels = obj["text"], obj["label"]
    if not isinstance(texts, Sequence) or not isinstance(labels, Sequence) or isinstance(texts, str) \
            or isinstance(labels, str):
        raise data_error(path, where, "choices.text and choices.label must be lists", _fix(dataset))
    return _checked_choices(list(texts), list(labels), path, where)


def _checked_choices(texts: list[Any], labels: list[Any], path: Path | str, where: str) -> tuple[list[str], list[str]]:
    if len(texts) != len(labels):
        raise data_error(path, where, f"{len(texts)} choice texts but {len(labels)} labels", "fix or drop the row")
    if len(texts) < 2:
        raise data_error(path, where, f"needs at least two choices, found {len(texts)}", "fix or drop the row")
    for value in (*texts, *labels):
        if not isinstance(value, str) or not value.strip():
            raise data_error(path, where, f"every choice text and label must be a non-empty string, got {value!r}",
                             "fix or drop the row")
    if len(set(labels)) != len(labels):
        raise data_error(path, where, f"repeated choice labels {labels}", "fix or drop the row")
    return [t.strip() for t in texts], [str(lab).strip() for lab in labels]


def _gold(rec: Mapping[str, Any], labels: Sequence[str], path: Path | str, where: str) -> int:
    key = rec.get("answerKey")
    if not isinstance(key, str) or key.strip() not in labels:
        raise data_error(path, where, f"answerKey {key!r} is not one of the choice labels {list(labels)}",
                         "fix or drop the row")
    return list(labels).index(key.strip())


def _record_id(rec: Mapping[str, Any], index: int, seen: set[str], path: Path | str, where: str) -> str:
    raw = rec.get("id")
    rid = str(raw).strip() if raw is not None and str(raw).strip() else f"row{index}"
    if rid in seen:
        raise data_error(path, where, f"duplicate question id {rid!r}",
                         "pass each question once (one copy of each file, not a split twice)")
    seen.add(rid)
    return rid


# --------------------------------------------------------------------------------------------------
# OpenBookQA
# --------------------------------------------------------------------------------------------------

_OBQA_NEEDS = ("id, question_stem, choices {text, label} and answerKey (allenai/openbookqa, config 'main'), or "
               "question {stem, choices [{text, label}]} and answerKey (AI2's original OpenBookQA files)")


def _obqa_question(rec: Mapping[str, Any], path: Path | str, where: str) -> tuple[str, list[str], list[str], str]:
    """``(stem, choice texts, labels, format)`` of one OpenBookQA record in either schema."""
    if "question_stem" in rec:
        stem = text_field(rec, "question_stem", path, where)
        texts, labels = _choices(rec.get("choices"), path, where, "openbookqa", rec, _OBQA_NEEDS)
        return stem.strip(), texts, labels, "hf"
    question = rec.get("question")
    if isinstance(question, Mapping) and "stem" in question:
        stem = text_field(question, "stem", path, where)
        items = question.get("choices")
        if not isinstance(items, list) or not all(isinstance(c, Mapping) for c in items):
            raise _schema_error("openbookqa", path, where, rec, _OBQA_NEEDS)
        texts, labels = _checked_choices([c.get("text") for c in items], [c.get("label") for c in items], path, where)
        return stem.strip(), texts, labels, "original"
    raise _schema_error("openbookqa", path, where, rec, _OBQA_NEEDS)


def _parse_openbookqa(files: Sequence[tuple[Path | str, list[Row]]]) -> list[MCQuestion]:
    out: list[MCQuestion] = []
    seen: set[str] = set()
    for path, rows in files:
        for i, (where, rec) in enumerate(rows):
            stem, texts, labels, fmt = _obqa_question(rec, path, where)
            gold = _gold(rec, labels, path, where)
            rid = _record_id(rec, len(out), seen, path, where)
            meta = {"id": rid, "answer_key": labels[gold], "choice_labels": "|".join(labels), "format": fmt,
                    "file": Path(path).name, "row": str(i)}
            if isinstance(rec.get("fact1"), str):  # the 'additional' config's supporting science fact
                meta["fact1"] = rec["fact1"]
            out.append(MCQuestion("openbookqa", stem, texts, [int(k == gold) for k in range(len(texts))],
                                  f"openbookqa:{rid}", QA_TEMPLATE, meta))
    return out


# --------------------------------------------------------------------------------------------------
# FaithEval counterfactual
# --------------------------------------------------------------------------------------------------

_FAITHEVAL_NEEDS = ("context, question, choices {label, text} and answerKey "
                    "(Salesforce/FaithEval-counterfactual-v1.0, the multiple-choice set; FaithEval's unanswerable and "
                    "inconsistent sets are scored on free-form answers and are not read here)")


def _parse_faitheval(files: Sequence[tuple[Path | str, list[Row]]], prompt_style: str) -> list[MCQuestion]:
    out: list[MCQuestion] = []
    seen: set[str] = set()
    for path, rows in files:
        for i, (where, rec) in enumerate(rows):
            if not {"context", "question", "choices", "answerKey"} <= set(rec):
                raise _schema_error("faitheval", path, where, rec, _FAITHEVAL_NEEDS)
            context = text_field(rec, "context", path, where).strip()
            question = text_field(rec, "question", path, where).strip()
            texts, labels = _choices(rec["choices"], path, where, "faitheval", rec, _FAITHEVAL_NEEDS)
            gold = _gold(rec, labels, path, where)
            rid = _record_id(rec, len(out), seen, path, where)
            meta = {"id": rid, "answer_key": labels[gold], "choice_labels": "|".join(labels),
                    "answer": str(rec.get("answer") or ""), "file": Path(path).name, "row": str(i),
                    "prompt_style": prompt_style}
            if prompt_style == "faitheval":
                prompt, template = f"{context}\nQuestion: {question}", FAITHEVAL_TEMPLATE
            else:
                prompt, template = f"{context} {question}", QA_TEMPLATE
            out.append(MCQuestion("faitheval", prompt, texts, [int(k == gold) for k in range(len(texts))],
                                  f"faitheval:{rid}", template, meta))
    return out


# --------------------------------------------------------------------------------------------------
# Loading
# --------------------------------------------------------------------------------------------------


def _split_and_limit(dataset: str, questions: list[MCQuestion], split: str, limit: int | None, seed: int
                     ) -> list[MCQuestion]:
    """``split`` of the questions (``all``: every one; else a seeded 40/10/50 cut by question), at most ``limit``."""
    keep = None
    if split != "all":
        part_of = assign_units([q.group for q in questions], None, LOCAL_SPLIT_FRACTIONS, seed, salt=dataset)
        keep = {g for g, part in part_of.items() if part == split}
    return select(questions, keep, limit, seed, dataset)


def _load(dataset: str, source: str | Path | None, split: str, limit: int | None, seed: int,
          parse: Callable[[Sequence[tuple[Path | str, list[Row]]]], list[MCQuestion]]) -> list[MCQuestion]:
    split = check_split(split)
    check_limit(limit)
    src = local_source(dataset, source)
    return _split_and_limit(dataset, parse(rows_of(dataset, src)), split, limit, seed)


def load_openbookqa(
    source: str | Path | None, split: str = "all", *, limit: int | None = None, seed: int = 0
) -> list[MCQuestion]:
    """OpenBookQA questions from a local copy (module docstring): one MCQuestion per question, in file order.

    source: a file of ``allenai/openbookqa`` (config ``main`` or ``additional``) or of AI2's original JSONL, or a
    folder of such files (read in name order; question ids must not repeat).
    """
    return _load("openbookqa", source, split, limit, seed, _parse_openbookqa)


def load_faitheval(
    source: str | Path | None,
    split: str = "all",
    *,
    limit: int | None = None,
    seed: int = 0,
    prompt_style: PromptStyle = "faitheval",
) -> list[MCQuestion]:
    """FaithEval counterfactual questions from a local copy (module docstring); the correct choice is
    ``answerKey``, the answer the (counterfactual) context supports.

    prompt_style: ``faitheval`` (the README's retrieval-QA prompt, :data:`FAITHEVAL_TEMPLATE`) or ``qa``.
    """
    if prompt_style not in ("faitheval", "qa"):
        raise ConfigError(f"unknown prompt_style {prompt_style!r}; valid choices: faitheval, qa")
    return _load("faitheval", source, split, limit, seed, lambda files: _parse_faitheval(files, prompt_style))


def load_local_mc(
    dataset: str, source: str | Path | None, split: str = "all", *, limit: int | None = None, seed: int = 0
) -> list[MCQuestion]:
    """:func:`load_openbookqa` or :func:`load_faitheval` by name (what ``load_mc_questions`` calls for them)."""
    _check_dataset(dataset)
    if dataset == "openbookqa":
        return load_openbookqa(source, split, limit=limit, seed=seed)
    return load_faitheval(source, split, limit=limit, seed=seed)


def mc_examples(questions: Sequence[MCQuestion], attribute: str) -> list[Example]:
    """Steering examples of multiple-choice questions: each choice as an Example of ``attribute`` (label 1 on the
    correct one), with the question's prompt, template and group, in question order."""
    out: list[Example] = []
    for q in questions:
        for k, (choice, label) in enumerate(zip(q.choices, q.labels)):
            out.append(Example(q.dataset, attribute, q.prompt, choice, label, q.group, q.template,
                               {**q.meta, "choice": str(k)}))
    return out


def load_local_examples(
    dataset: str,
    source: str | Path | None,
    split: str = "all",
    *,
    limit: int | None = None,
    seed: int = 0,
    attribute: str | None = None,
) -> list[Example]:
    """Steering examples of a local data set (:func:`mc_examples` of :func:`load_local_mc`); its attribute is
    :data:`LOCAL_ATTRIBUTE_OF` (``obqa``, ``faithfulness``)."""
    _check_dataset(dataset)
    own = LOCAL_ATTRIBUTE_OF[dataset]
    if attribute is not None and attribute != own:
        raise ConfigError(f"{dataset} carries only the attribute {own!r}, not {attribute!r}")
    return mc_examples(load_local_mc(dataset, source, split, limit=limit, seed=seed), own)
