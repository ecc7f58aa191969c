"""The public loaders: steering examples, multiple-choice views, TruthfulQA generation items, label counts."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path

from matsteer.data.helpsteer import load_helpsteer
from matsteer.data.paper_data import load_local_examples, load_local_mc
from matsteer.data.parsers import Parsed, parse
from matsteer.data.readers import data_error, read_delimited, resolve_data_dir
from matsteer.data.records import Example, GenQuestion, MCQuestion
from matsteer.data.registry import (
    ATTRIBUTE_OF,
    HELPSTEER_DATASETS,
    LOCAL_DATASETS,
    QA_TEMPLATE,
    TOXIGEN_GROUP_NAMES,
    TOXIGEN_PREF,
    TOXIGEN_PREF_PROMPT,
    TRUTHFULQA_CSV,
    check_dataset,
    check_limit,
    check_split,
)
from matsteer.data.selection import select
from matsteer.data.sources import resolve_source
from matsteer.data.splits import rank_key, split_for
from matsteer.errors import ConfigError

_MC_DATASETS = ("truthfulqa", "bbq", "toxigen", TOXIGEN_PREF, "hh_rlhf")


def _parsed_split(
    dataset: str, split: str, data_dir: str | Path | None, seed: int, source: str | Path | None
) -> tuple[Parsed, set[str] | None]:
    """The parsed data set and ``split``'s group ids (None for ``all``), shared by the example and MC views."""
    src = resolve_source(dataset, source, data_dir)
    parsed = parse(dataset, src, data_dir)
    keep = None if split == "all" else set(split_for(dataset, parsed.examples, src, data_dir, seed)[split])
    return parsed, keep


def load_examples(
    dataset: str,
    split: str = "all",
    *,
    data_dir: str | Path | None = None,
    limit: int | None = None,
    seed: int = 0,
    source: str | Path | None = None,
    attribute: str | None = None,
) -> list[Example]:
    """Steering examples of one data set, in file order.

    Args:
        dataset: one of :data:`DATASETS`, or of :data:`LOCAL_DATASETS` (``openbookqa``, ``faitheval``: read from
            ``source`` only, one example per choice; :mod:`matsteer.data.paper_data`).
        split: ``train``/``dev``/``test`` (by group; see :data:`SPLIT_FRACTIONS`) or ``all``.
        data_dir: folder with the shipped files (default :func:`default_data_dir`).
        limit: keep at most this many whole *groups* (questions / pairs / rows), picked by seeded hash.
        seed: split and ``limit`` seed; seed 0 uses the saved split in ``data/splits``.
        source: instead of the shipped files, a local file (HF or original format) or a hub id
            (``truthfulqa``, ``toxigen``, ``helpsteer``, ``helpsteer2``); required for the local data sets.
        attribute: HelpSteer only: one of :data:`HELPSTEER_ATTRIBUTES` (default all five).
    """
    if dataset not in LOCAL_DATASETS:
        dataset = check_dataset(dataset)
    split = check_split(split)
    check_limit(limit)
    if dataset in LOCAL_DATASETS:
        return load_local_examples(dataset, source, split, limit=limit, seed=seed, attribute=attribute)
    if dataset in HELPSTEER_DATASETS:
        return load_helpsteer(source, attribute, split, dataset=dataset, seed=seed, limit=limit)
    if attribute is not None and attribute != ATTRIBUTE_OF[dataset]:
        raise ConfigError(
            f"{dataset} carries only the attribute {ATTRIBUTE_OF[dataset]!r}, not {attribute!r}"
        )
    parsed, keep = _parsed_split(dataset, split, data_dir, seed, source)
    return select(parsed.examples, keep, limit, seed, dataset)


def _group_name(group: str) -> str:
    return TOXIGEN_GROUP_NAMES.get(group, group.replace("_", " "))


def toxigen_preference_pairs(examples: Sequence[Example], seed: int = 0) -> list[MCQuestion]:
    """Benign-vs-toxic pairs of ToxiGen statements about one target group (the ``toxigen_pref`` task).

    examples: ToxiGen :class:`Example` records of one split (label 1 = benign under the 5.5 rule). Within each
    target group the benign and the toxic statements are each put in a seeded hash order and zipped, so every
    statement is used at most once and the larger side's leftovers are dropped. Each pair is an MCQuestion whose
    prompt is :data:`TOXIGEN_PREF_PROMPT` for the group and whose choices are the two statements (label 1 on
    the benign one), in a seeded order: choice order carries no information. Pairs come in file order of
    their benign statement. ``meta`` records the group and both source rows.
    """
    by_group: dict[str, tuple[list[Example], list[Example]]] = {}
    for ex in examples:
        if ex.dataset != "toxigen":
            raise ConfigError(f"toxigen_preference_pairs takes ToxiGen examples, got one from {ex.dataset!r}.")
        by_group.setdefault(ex.meta["target_group"], ([], []))[ex.label].append(ex)
    pairs: list[tuple[int, MCQuestion]] = []
    for target in sorted(by_group):
        toxic, benign = (sorted(side, key=lambda e: rank_key(TOXIGEN_PREF, seed, e.group))
                         for side in by_group[target])
        for good, bad in zip(benign, toxic):
            group = f"{TOXIGEN_PREF}:{good.meta['row']}+{bad.meta['row']}"
            flip = int(rank_key(f"{TOXIGEN_PREF}:order", seed, group), 16) % 2 == 1
            choices, labels = ([bad.answer, good.answer], [0, 1]) if flip else ([good.answer, bad.answer], [1, 0])
            meta = {"target_group": target, "benign_row": good.meta["row"], "toxic_row": bad.meta["row"]}
            prompt = TOXIGEN_PREF_PROMPT.replace("{group}", _group_name(target))
            pairs.append((int(good.meta["row"]), MCQuestion(TOXIGEN_PREF, prompt, choices, labels, group,
                                                            QA_TEMPLATE, meta)))
    return [q for _, q in sorted(pairs, key=lambda p: p[0])]


def load_mc_questions(
    dataset: str,
    split: str = "all",
    *,
    data_dir: str | Path | None = None,
    limit: int | None = None,
    seed: int = 0,
    source: str | Path | None = None,
) -> list[MCQuestion]:
    """Multiple-choice views (see :class:`MCQuestion`) of ``truthfulqa``, ``bbq``, ``toxigen``, ``hh_rlhf``, and
    ``toxigen_pref`` (benign-vs-toxic ToxiGen pairs, :func:`toxigen_preference_pairs`, read from ToxiGen's files
    or ``source``), and of the local data sets ``openbookqa`` and ``faitheval`` (a user's copy given as ``source``;
    :mod:`matsteer.data.paper_data`).

    Splits and ``limit`` work as in :func:`load_examples` (same groups, so the two line up); BBQ subsets are
    stratified by context condition and category. For ``toxigen_pref`` both statements of a pair come from the
    split and ``limit`` counts pairs.
    """
    split = check_split(split)
    check_limit(limit)
    if dataset == TOXIGEN_PREF:
        parsed, keep = _parsed_split("toxigen", split, data_dir, seed, source)
        rows = [e for e in parsed.examples if keep is None or e.group in keep]
        return select(toxigen_preference_pairs(rows, seed), None, limit, seed, TOXIGEN_PREF)
    if dataset in LOCAL_DATASETS:
        return load_local_mc(dataset, source, split, limit=limit, seed=seed)
    dataset = check_dataset(dataset)
    if dataset not in _MC_DATASETS:
        valid = ", ".join((*_MC_DATASETS, *LOCAL_DATASETS))
        raise ConfigError(f"no multiple-choice view for {dataset}; valid choices: {valid}")
    parsed, keep = _parsed_split(dataset, split, data_dir, seed, source)
    return select(parsed.questions, keep, limit, seed, dataset)


def _answer_list(cell: str) -> list[str]:
    return [a.strip() for a in cell.split(";") if a.strip()]


def load_truthfulqa_generation(
    split: str = "all", *, data_dir: str | Path | None = None, limit: int | None = None, seed: int = 0
) -> list[GenQuestion]:
    """TruthfulQA's generation items (``TruthfulQA.csv`` v0), with the MC question ids as groups.

    Answer lists are the CSV's ``;``-separated cells, stripped; nothing is added (ITI-style evaluation
    appends "I have no comment." to the correct answers itself).
    """
    split = check_split(split)
    check_limit(limit)
    root = resolve_data_dir(data_dir)
    src = resolve_source("truthfulqa", None, root)
    parsed = parse("truthfulqa", src, root)
    group_of = {q.prompt.strip(): q.group for q in parsed.questions}
    path = root / TRUTHFULQA_CSV
    rows = read_delimited(
        path, ",", ("Type", "Category", "Question", "Best Answer", "Correct Answers", "Incorrect Answers")
    )
    items: list[GenQuestion] = []
    for where, rec in rows:
        question = rec["Question"].strip()
        if question not in group_of:
            raise data_error(path, where, f"question {question[:60]!r} is not in the MC task file")
        items.append(
            GenQuestion(
                question,
                rec["Best Answer"].strip(),
                _answer_list(rec["Correct Answers"]),
                _answer_list(rec["Incorrect Answers"]),
                group_of[question],
                {"category": rec["Category"], "type": rec["Type"], "source": rec.get("Source", "")},
            )
        )
    keep = None if split == "all" else set(split_for("truthfulqa", parsed.examples, src, root, seed)[split])
    return select(items, keep, limit, seed, "truthfulqa")


def label_counts(examples: Iterable[Example]) -> dict[str, int]:
    """``{"positive": n1, "negative": n0, "groups": g}`` for a list of examples (for summaries)."""
    labels: list[int] = []
    groups: set[str] = set()
    for ex in examples:
        labels.append(ex.label)
        groups.add(ex.group)
    return {"positive": sum(labels), "negative": len(labels) - sum(labels), "groups": len(groups)}
