"""One parser per shipped data set (rows -> Examples and multiple-choice views), with a parse cache."""

from __future__ import annotations

import ast
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from matsteer.data.readers import Row, data_error, read_delimited, resolve_data_dir, score_field, text_field
from matsteer.data.records import Example, MCQuestion
from matsteer.data.registry import (
    ANSWER_TEMPLATE,
    DIALOGUE_TEMPLATE,
    QA_TEMPLATE,
    TOXIGEN_MC_QUESTION,
    TOXIGEN_THRESHOLD,
    TRUTHFULQA_CSV,
)
from matsteer.data.sources import Source, rows_of
from matsteer.errors import ConfigError


@dataclass(frozen=True)
class Parsed:
    """Everything one source yields; cached so repeated loads do not re-parse."""

    examples: tuple[Example, ...]
    questions: tuple[MCQuestion, ...] = ()


# --------------------------------------------------------------------------------------------------
# TruthfulQA
# --------------------------------------------------------------------------------------------------


def _tqa_targets(obj: Any, path: Path | str, where: str, key: str) -> list[tuple[str, int]]:
    """TruthfulQA targets in either format: ``{answer: 0/1}`` (original) or HF ``{"choices", "labels"}``."""
    if isinstance(obj, Mapping) and set(obj) == {"choices", "labels"} and isinstance(obj["choices"], list):
        choices, labels = list(obj["choices"]), list(obj["labels"])
        if len(choices) != len(labels):
            raise data_error(path, where, f"{key}: {len(choices)} choices but {len(labels)} labels")
        pairs = list(zip(choices, labels))
    elif isinstance(obj, Mapping):
        pairs = list(obj.items())
    else:
        raise data_error(path, where, f"{key} must be an object, got {type(obj).__name__}")
    out: list[tuple[str, int]] = []
    for choice, lab in pairs:
        if not isinstance(choice, str) or not choice.strip():
            raise data_error(path, where, f"{key} has an empty or non-string choice")
        if isinstance(lab, bool) or lab not in (0, 1):
            raise data_error(path, where, f"{key} label for {choice[:40]!r} must be 0 or 1, got {lab!r}")
        out.append((choice, int(lab)))
    if not out or not any(lab for _, lab in out):
        raise data_error(path, where, f"{key} has no true answer")
    return out


def _tqa_csv_meta(data_dir: Path) -> dict[str, dict[str, str]]:
    """Question text -> {category, type} from the shipped TruthfulQA.csv (questions matched stripped)."""
    path = data_dir / TRUTHFULQA_CSV
    rows = read_delimited(path, ",", ("Type", "Category", "Question"))
    return {rec["Question"].strip(): {"category": rec["Category"], "type": rec["Type"]} for _, rec in rows}


def _parse_truthfulqa(
    rows: list[Row], path: Path | str, csv_meta: Mapping[str, Mapping[str, str]]
) -> Parsed:
    examples: list[Example] = []
    questions: list[MCQuestion] = []
    for i, (where, rec) in enumerate(rows):
        question = text_field(rec, "question", path, where)
        for key in ("mc1_targets", "mc2_targets"):
            if key not in rec:
                raise data_error(path, where, f"record lacks {key!r}")
        mc2 = _tqa_targets(rec["mc2_targets"], path, where, "mc2_targets")
        mc1 = _tqa_targets(rec["mc1_targets"], path, where, "mc1_targets")
        if sum(lab for _, lab in mc1) != 1:
            raise data_error(path, where, "mc1_targets must have exactly one true answer")
        group = f"truthfulqa:{i}"
        meta = {"question_index": str(i), **csv_meta.get(question.strip(), {})}
        examples.extend(
            Example("truthfulqa", "truthfulness", question, choice, lab, group, QA_TEMPLATE, meta)
            for choice, lab in mc2
        )
        questions.append(
            MCQuestion(
                "truthfulqa",
                question,
                [c for c, _ in mc2],
                [lab for _, lab in mc2],
                group,
                QA_TEMPLATE,
                meta,
                mc1_choices=[c for c, _ in mc1],
                mc1_labels=[lab for _, lab in mc1],
            )
        )
    return Parsed(tuple(examples), tuple(questions))


# --------------------------------------------------------------------------------------------------
# ToxiGen
# --------------------------------------------------------------------------------------------------


def _strip_bytes_literal(raw: str, path: Path | str, where: str) -> str:
    """Decode ToxiGen's ``b'...'``/``b"..."`` wrapper; text without the wrapper (HF hub rows) passes through.

    ``ast.literal_eval`` only ever builds literals, and it is called only on a string that starts with
    ``b'``/``b"`` and ends with the same quote, so nothing in the file is executed.
    """
    s = raw.strip()
    if len(s) >= 3 and s[0] == "b" and s[1] in "'\"" and s[-1] == s[1]:
        try:
            value = ast.literal_eval(s)
        except (ValueError, SyntaxError) as exc:
            raise data_error(path, where, f"text is not a valid bytes literal ({exc})") from exc
        if not isinstance(value, bytes):
            raise data_error(path, where, "text is not a bytes literal")
        return value.decode("utf-8", errors="replace")
    if s[:2] in ("b'", 'b"'):
        raise data_error(path, where, "text starts a bytes literal b'...' that is not closed")
    return raw


def _parse_toxigen(rows: list[Row], path: Path | str) -> Parsed:
    examples: list[Example] = []
    questions: list[MCQuestion] = []
    for i, (where, rec) in enumerate(rows):
        # Statements are stripped: the activation is read at the last token, which must not be a stray
        # newline or space (1,136 of the 8,960 statements carry one).
        statement = _strip_bytes_literal(text_field(rec, "text", path, where), path, where).strip()
        if not statement:
            raise data_error(path, where, "statement text is empty")
        target = text_field(rec, "target_group", path, where)
        ai = score_field(rec, "toxicity_ai", path, where, 1, 5)
        human = score_field(rec, "toxicity_human", path, where, 1, 5)
        toxic = ai + human > TOXIGEN_THRESHOLD
        group = f"toxigen:{i}"
        meta = {
            "row": str(i),
            "target_group": target,
            "toxicity_ai": f"{ai:g}",
            "toxicity_human": f"{human:g}",
            "toxic": "1" if toxic else "0",
            "prompt_label": str(rec.get("label", "")),  # label of the generating prompt, not a judgement
        }
        # No question exists for a ToxiGen statement, and the paper uses no instruction prompt, so the
        # text is the statement alone ("Q:  A: ..." with an empty question would be a malformed format).
        examples.append(
            Example("toxigen", "toxicity", "", statement, 0 if toxic else 1, group, ANSWER_TEMPLATE, meta)
        )
        questions.append(
            MCQuestion(
                "toxigen",
                f'"{statement}" {TOXIGEN_MC_QUESTION}',
                ["Yes", "No"],
                [1, 0] if toxic else [0, 1],
                group,
                QA_TEMPLATE,
                meta,
            )
        )
    return Parsed(tuple(examples), tuple(questions))


# --------------------------------------------------------------------------------------------------
# BBQ
# --------------------------------------------------------------------------------------------------

_BBQ_FIELDS = (
    "example_id", "question_index", "context_condition", "category", "context", "question", "label"
)


def _bbq_bias_options(
    roles: Sequence[str], names: Sequence[str], stereotyped: Sequence[Any], polarity: str
) -> tuple[int | None, int | None]:
    """(biased option, unknown option) of one BBQ question, or None where the record does not say.

    The unknown option is the one whose ``answer_info`` role is "unknown". The stereotyped *target* is the
    non-unknown option whose role or name matches one of ``additional_metadata.stereotyped_groups``
    (case-insensitive; Nationality names its groups by the name, e.g. "British", and its roles by region):
    this stands in for upstream's missing ``target_loc``. A biased answer names the target for a negative
    question ("neg") and the other group for a non-negative one ("nonneg"), as in Parrish et al. (2022).
    Anything ambiguous (no match, two matches, another polarity) gives None: left out of the bias score.
    """
    unknown = [k for k, r in enumerate(roles) if r == "unknown"]
    if len(unknown) != 1:
        return None, None
    groups = {str(g).strip().lower() for g in stereotyped}
    others = [k for k in range(len(roles)) if k != unknown[0]]
    targets = [k for k in others if roles[k].strip().lower() in groups or names[k].strip().lower() in groups]
    if len(targets) != 1 or polarity not in ("neg", "nonneg"):
        return None, unknown[0]
    target = targets[0]
    other = next(k for k in others if k != target)
    return (target if polarity == "neg" else other), unknown[0]


def _bbq_examples(
    prompt: str,
    answers: Sequence[str],
    gold: int,
    group: str,
    info: Mapping[str, Any],
    meta: Mapping[str, str],
) -> list[Example]:
    """The three candidate answers of one BBQ question as Examples (label 1 on the gold one)."""
    examples: list[Example] = []
    for k, answer in enumerate(answers):
        role = info.get(f"ans{k}")
        ex_meta = {**meta, "answer_index": str(k), "answer_role": str(role[1]) if role else ""}
        examples.append(Example("bbq", "bias", prompt, answer, int(k == gold), group, QA_TEMPLATE, ex_meta))
    return examples


def _bbq_mc_question(
    prompt: str,
    answers: list[str],
    gold: int,
    group: str,
    info: Mapping[str, Any],
    stereo: Sequence[Any],
    meta: Mapping[str, str],
) -> MCQuestion:
    """The multiple-choice view of one BBQ question, with its biased and unknown options in ``meta``."""
    roles = [str((info.get(f"ans{k}") or ["", ""])[1]) for k in range(3)]
    names = [str((info.get(f"ans{k}") or ["", ""])[0]) for k in range(3)]
    biased, unknown = _bbq_bias_options(roles, names, stereo, meta["question_polarity"])
    return MCQuestion(
        "bbq",
        prompt,
        answers,
        [int(k == gold) for k in range(3)],
        group,
        QA_TEMPLATE,
        {**meta, "answer_roles": "|".join(roles), "gold": str(gold),
         "biased_answer": "" if biased is None else str(biased),
         "unknown_answer": "" if unknown is None else str(unknown)},
    )


def _parse_bbq_record(
    rec: Mapping[str, Any], path: Path, where: str, seen: set[str]
) -> tuple[list[Example], MCQuestion]:
    """The Examples and the MCQuestion of one BBQ record; ``seen`` (group ids so far) refuses duplicates."""
    missing = [k for k in (*_BBQ_FIELDS, "ans0", "ans1", "ans2") if k not in rec]
    if missing:
        raise data_error(path, where, f"record lacks field(s) {missing}")
    category = text_field(rec, "category", path, where)
    context = text_field(rec, "context", path, where)
    question = text_field(rec, "question", path, where)
    answers = [text_field(rec, f"ans{k}", path, where) for k in range(3)]
    gold = rec["label"]
    if isinstance(gold, bool) or gold not in (0, 1, 2):
        raise data_error(path, where, f"label must be 0, 1 or 2, got {gold!r}")
    group = f"{category}:{rec['example_id']}"
    if group in seen:
        raise data_error(path, where, f"duplicate example {group}")
    seen.add(group)
    info = rec.get("answer_info") or {}
    stereo = (rec.get("additional_metadata") or {}).get("stereotyped_groups") or []
    meta = {
        "category": category,
        "example_id": str(rec["example_id"]),
        "question_index": str(rec["question_index"]),
        "context_condition": str(rec["context_condition"]),
        "question_polarity": str(rec.get("question_polarity", "")),
        "stereotyped_groups": "|".join(map(str, stereo)),
    }
    prompt = f"{context} {question}"
    examples = _bbq_examples(prompt, answers, gold, group, info, meta)
    return examples, _bbq_mc_question(prompt, answers, gold, group, info, stereo, meta)


def _parse_bbq(files: Sequence[tuple[Path, list[Row]]]) -> Parsed:
    examples: list[Example] = []
    questions: list[MCQuestion] = []
    seen: set[str] = set()
    for path, rows in files:
        for where, rec in rows:
            record_examples, question = _parse_bbq_record(rec, path, where, seen)
            examples.extend(record_examples)
            questions.append(question)
    return Parsed(tuple(examples), tuple(questions))


# --------------------------------------------------------------------------------------------------
# HH-RLHF
# --------------------------------------------------------------------------------------------------

_ASSISTANT = "\n\nAssistant:"


def _split_dialogue(chosen: str, rejected: str, path: Path | str, where: str) -> tuple[str, str, str, bool]:
    """(shared prompt, chosen response, rejected response, regular?) of one HH-RLHF pair.

    Regular pairs share everything up to the last ``Assistant:`` turn. Five test pairs diverge earlier
    (extra turns glued into one response); for those the prompt is the shared text up to the last
    ``Assistant:`` both have in common, and each response is everything after it.
    """
    ic, ir = chosen.rfind(_ASSISTANT), rejected.rfind(_ASSISTANT)
    if ic >= 0 and ic == ir and chosen[:ic] == rejected[:ir]:
        cut, regular = ic + len(_ASSISTANT), True
    else:
        common = os.path.commonprefix([chosen, rejected])
        k = common.rfind(_ASSISTANT)
        if k < 0:
            raise data_error(path, where, "chosen and rejected share no dialogue up to an 'Assistant:' turn")
        cut, regular = k + len(_ASSISTANT), False
    return chosen[:cut].lstrip(), chosen[cut:].strip(), rejected[cut:].strip(), regular


def _parse_hh(rows: list[Row], path: Path | str) -> Parsed:
    examples: list[Example] = []
    questions: list[MCQuestion] = []
    for i, (where, rec) in enumerate(rows):
        chosen = text_field(rec, "chosen", path, where)
        rejected = text_field(rec, "rejected", path, where)
        prompt, good, bad, regular = _split_dialogue(chosen, rejected, path, where)
        group = f"hh_rlhf:{i}"
        meta = {"pair": str(i), "regular": "1" if regular else "0"}
        # The prompt ends in "Assistant:", so "{prompt} {answer}" rebuilds the original dialogue text
        # (less the leading blank lines) with no extra Q:/A: markers.
        examples.append(
            Example("hh_rlhf", "harmlessness", prompt, good, 1, group, DIALOGUE_TEMPLATE,
                    {**meta, "role": "chosen"})
        )
        examples.append(
            Example("hh_rlhf", "harmlessness", prompt, bad, 0, group, DIALOGUE_TEMPLATE,
                    {**meta, "role": "rejected"})
        )
        questions.append(MCQuestion("hh_rlhf", prompt, [good, bad], [1, 0], group, DIALOGUE_TEMPLATE, meta))
    return Parsed(tuple(examples), tuple(questions))


# --------------------------------------------------------------------------------------------------
# ParaDetox
# --------------------------------------------------------------------------------------------------

_PARADETOX_COLUMNS = ("toxic", "neutral1", "neutral2", "neutral3")


def _parse_paradetox(rows: list[Row], path: Path | str) -> Parsed:
    examples: list[Example] = []
    for i, (where, rec) in enumerate(rows):
        toxic = text_field(rec, "toxic", path, where)
        group = f"paradetox:{i}"
        examples.append(
            Example("paradetox", "toxicity", "", toxic, 0, group, ANSWER_TEMPLATE,
                    {"row": str(i), "role": "toxic"})
        )
        for col in _PARADETOX_COLUMNS[1:]:
            neutral = rec.get(col) or ""
            if isinstance(neutral, str) and neutral.strip():
                examples.append(
                    Example("paradetox", "toxicity", "", neutral, 1, group, ANSWER_TEMPLATE,
                            {"row": str(i), "role": col})
                )
    return Parsed(tuple(examples))


# --------------------------------------------------------------------------------------------------
# Parsing with a cache
# --------------------------------------------------------------------------------------------------

_CACHE: dict[tuple[Any, ...], Parsed] = {}
_CACHE_MAX = 24


def parse(dataset: str, src: Source, data_dir: str | Path | None) -> Parsed:
    """The parsed data set read from ``src``, cached by the files' path, mtime and size (or the hub id)."""
    key = (dataset, src.kind, src.fingerprint())
    hit = _CACHE.get(key)
    if hit is not None:
        return hit
    parsed = _parse_uncached(dataset, src, data_dir)
    if len(_CACHE) >= _CACHE_MAX:
        _CACHE.clear()
    _CACHE[key] = parsed
    return parsed


def _parse_uncached(dataset: str, src: Source, data_dir: str | Path | None) -> Parsed:
    if dataset == "truthfulqa":
        ((path, rows),) = rows_of(dataset, src, ("question",))
        csv_meta = _tqa_csv_meta(resolve_data_dir(data_dir)) if src.kind == "shipped" else {}
        return _parse_truthfulqa(rows, path, csv_meta)
    if dataset == "toxigen":
        ((path, rows),) = rows_of(dataset, src, ("text", "target_group", "toxicity_ai", "toxicity_human"))
        return _parse_toxigen(rows, path)
    if dataset == "bbq":
        files = [(Path(p), rows) for p, rows in rows_of(dataset, src)]
        return _parse_bbq(files)
    if dataset == "hh_rlhf":
        ((path, rows),) = rows_of(dataset, src, ("chosen", "rejected"))
        return _parse_hh(rows, path)
    if dataset == "paradetox":
        ((path, rows),) = rows_of(dataset, src, ("toxic",))
        return _parse_paradetox(rows, path)
    raise ConfigError(f"no parser for {dataset}")  # pragma: no cover - guarded by check_dataset
