"""The record types every data set becomes: steering examples, multiple-choice and generation questions."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from matsteer.data.registry import fill_template, template_parts
from matsteer.errors import ConfigError


@dataclass(frozen=True)
class Example:
    """One (prompt, candidate answer) text with a binary label; 1 is always the desirable side.

    ``group`` ties together the candidates of one question (or one pair / row); splits never separate a
    group. ``meta`` holds extra string fields (treat it as read-only); it is excluded from ``==``/``hash``.
    """

    dataset: str
    attribute: str
    prompt: str
    answer: str
    label: int
    group: str
    template: str
    meta: Mapping[str, str] = field(default_factory=dict, compare=False, hash=False, repr=False)

    def __post_init__(self) -> None:
        if self.label not in (0, 1) or isinstance(self.label, bool):
            raise ConfigError(f"Example label must be the int 0 or 1, got {self.label!r}")
        template_parts(self.template)

    @property
    def text(self) -> str:
        """The template filled with prompt and answer: what the model reads."""
        return fill_template(self.template, self.prompt, self.answer)[0]

    @property
    def answer_span(self) -> tuple[int, int]:
        """[start, end) character offsets of ``answer`` inside :attr:`text`."""
        _, start, end = fill_template(self.template, self.prompt, self.answer)
        return start, end


@dataclass(frozen=True)
class MCQuestion:
    """A multiple-choice view of one question; ``labels[k] == 1`` marks a correct choice.

    TruthfulQA: ``choices``/``labels`` are the MC2 targets (one or more true) and ``mc1_choices``/
    ``mc1_labels`` the MC1 targets (exactly one true), both in file order (true answers first, so score
    order-invariantly). BBQ: the three answers, one gold; ``meta["biased_answer"]`` and
    ``meta["unknown_answer"]`` hold the indices of the stereotype-consistent and the "unknown" option ("" where
    not known). ToxiGen: the statement with :data:`TOXIGEN_MC_QUESTION` and choices ("Yes", "No"), gold from
    the 5.5 rule (here a label 1 is the *correct judgement*, not the non-toxic side). ToxiGen preference
    (``toxigen_pref``): a benign and a toxic statement after a neutral request, the benign one correct.
    HH-RLHF: (chosen, rejected) responses, chosen correct.
    """

    dataset: str
    prompt: str
    choices: list[str] = field(hash=False)
    labels: list[int] = field(hash=False)
    group: str
    template: str
    meta: Mapping[str, str] = field(default_factory=dict, compare=False, hash=False, repr=False)
    mc1_choices: list[str] = field(default_factory=list, hash=False, repr=False)
    mc1_labels: list[int] = field(default_factory=list, hash=False, repr=False)

    def __post_init__(self) -> None:
        for name, choices, labels in (
            ("choices", self.choices, self.labels),
            ("mc1_choices", self.mc1_choices, self.mc1_labels),
        ):
            if len(choices) != len(labels):
                raise ConfigError(f"MCQuestion {self.group}: {name} and its labels differ in length")
            if any(lab not in (0, 1) for lab in labels):
                raise ConfigError(f"MCQuestion {self.group}: labels must be 0 or 1")
            if labels and 1 not in labels:
                raise ConfigError(f"MCQuestion {self.group}: no correct choice in {name}")
        if len(self.choices) < 2:
            raise ConfigError(f"MCQuestion {self.group}: needs at least two choices")
        template_parts(self.template)

    @property
    def correct(self) -> list[int]:
        """Indices of the correct choices."""
        return [k for k, lab in enumerate(self.labels) if lab == 1]

    def text(self, k: int) -> str:
        """The full text for choice ``k``."""
        return fill_template(self.template, self.prompt, self.choices[k])[0]

    def answer_span(self, k: int) -> tuple[int, int]:
        """[start, end) offsets of choice ``k`` inside :meth:`text`."""
        _, start, end = fill_template(self.template, self.prompt, self.choices[k])
        return start, end


@dataclass(frozen=True)
class GenQuestion:
    """One TruthfulQA generation item (``TruthfulQA.csv``) with reference answers for BLEU/judge scoring.

    ``group`` is the id of the same question in the MC task, so splits line up with :func:`load_examples`.
    """

    prompt: str
    best_answer: str
    correct_answers: list[str] = field(hash=False)
    incorrect_answers: list[str] = field(hash=False)
    group: str
    meta: Mapping[str, str] = field(default_factory=dict, compare=False, hash=False, repr=False)
