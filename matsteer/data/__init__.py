"""Stage 1, data: one record type for every attribute data set, and seeded splits by group.

Every data set becomes a list of :class:`Example` records, each one (prompt, candidate answer) text with a
binary ``label`` where **1 always means the desirable side** (truthful, non-toxic, unbiased/correct,
harmless, high HelpSteer score). Polarity is fixed here, once, because the reference code gets it wrong
for ToxiGen JSON with ``toxicity_score`` (toxic = 1 = positive there); see ``data/README.md``.

Choices of one question share a ``group`` id, and splits are made over groups, so that no question is
both trained on and evaluated. The shipped splits live in ``data/splits/{dataset}.json`` together with
the sha256 of the files they were made from; a split whose source files changed is recomputed (with a
warning), never used stale. :func:`make_splits` regenerates the saved files.

Entry points: :func:`load_examples` (steering data), :func:`load_mc_questions` (multiple-choice views
for evaluation), :func:`load_truthfulqa_generation` (open-ended TruthfulQA), :func:`load_helpsteer`.

Modules: ``registry`` (names, attributes, polarity, templates, source files), ``records`` (the record
types), ``readers`` and ``sources`` (files, hub rows, where a data set is read from), ``parsers`` (one per
data set), ``splits``, ``selection`` (split groups and ``limit``), ``helpsteer``, ``loaders``, and
``prompts`` (chat templates).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from matsteer._lazy import lazy_attributes

# Where each public name is defined; it is imported from there on first use (matsteer/_lazy.py).
_EXPORTS = {
    "matsteer.data.helpsteer": ("load_helpsteer",),
    "matsteer.data.loaders": (
        "label_counts", "load_examples", "load_mc_questions", "load_truthfulqa_generation",
        "toxigen_preference_pairs",
    ),
    "matsteer.data.readers": ("default_data_dir",),
    "matsteer.data.records": ("Example", "GenQuestion", "MCQuestion"),
    "matsteer.data.registry": (
        "ANSWER_TEMPLATE", "ATTRIBUTE_OF", "ATTRIBUTES_OF", "BBQ_CATEGORIES", "BBQ_MISSING_CATEGORIES",
        "DATASETS", "DIALOGUE_TEMPLATE", "HELPSTEER_ATTRIBUTES", "HUB_IDS", "POSITIVE_SIDE", "QA_TEMPLATE",
        "SHIPPED_DATASETS", "SOURCE_FILES", "SPLIT_FORMAT", "SPLIT_FRACTIONS", "SPLITS", "TOXIGEN_GROUP_NAMES",
        "TOXIGEN_MC_QUESTION", "TOXIGEN_PREF", "TOXIGEN_PREF_PROMPT", "TOXIGEN_THRESHOLD", "TRUTHFULQA_CSV",
        "DataWarning", "fill_template",
    ),
    "matsteer.data.splits": ("get_split", "make_splits"),
}

if TYPE_CHECKING:
    from matsteer.data.helpsteer import load_helpsteer
    from matsteer.data.loaders import (
        label_counts,
        load_examples,
        load_mc_questions,
        load_truthfulqa_generation,
        toxigen_preference_pairs,
    )
    from matsteer.data.readers import default_data_dir
    from matsteer.data.records import Example, GenQuestion, MCQuestion
    from matsteer.data.registry import (
        ANSWER_TEMPLATE,
        ATTRIBUTE_OF,
        ATTRIBUTES_OF,
        BBQ_CATEGORIES,
        BBQ_MISSING_CATEGORIES,
        DATASETS,
        DIALOGUE_TEMPLATE,
        HELPSTEER_ATTRIBUTES,
        HUB_IDS,
        POSITIVE_SIDE,
        QA_TEMPLATE,
        SHIPPED_DATASETS,
        SOURCE_FILES,
        SPLIT_FORMAT,
        SPLIT_FRACTIONS,
        SPLITS,
        TOXIGEN_GROUP_NAMES,
        TOXIGEN_MC_QUESTION,
        TOXIGEN_PREF,
        TOXIGEN_PREF_PROMPT,
        TOXIGEN_THRESHOLD,
        TRUTHFULQA_CSV,
        DataWarning,
        fill_template,
    )
    from matsteer.data.splits import get_split, make_splits
else:
    __getattr__, __dir__ = lazy_attributes(__name__, _EXPORTS)

__all__ = [
    "ANSWER_TEMPLATE",
    "ATTRIBUTES_OF",
    "ATTRIBUTE_OF",
    "BBQ_CATEGORIES",
    "BBQ_MISSING_CATEGORIES",
    "DATASETS",
    "DIALOGUE_TEMPLATE",
    "HELPSTEER_ATTRIBUTES",
    "HUB_IDS",
    "POSITIVE_SIDE",
    "QA_TEMPLATE",
    "SHIPPED_DATASETS",
    "SOURCE_FILES",
    "SPLITS",
    "SPLIT_FORMAT",
    "SPLIT_FRACTIONS",
    "TOXIGEN_GROUP_NAMES",
    "TOXIGEN_MC_QUESTION",
    "TOXIGEN_PREF",
    "TOXIGEN_PREF_PROMPT",
    "TOXIGEN_THRESHOLD",
    "TRUTHFULQA_CSV",
    "DataWarning",
    "Example",
    "GenQuestion",
    "MCQuestion",
    "default_data_dir",
    "fill_template",
    "get_split",
    "label_counts",
    "load_examples",
    "load_helpsteer",
    "load_mc_questions",
    "load_truthfulqa_generation",
    "make_splits",
    "toxigen_preference_pairs",
]
