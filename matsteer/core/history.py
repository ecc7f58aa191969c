"""Loss history of a training run: every term per attribute per epoch, train and dev (:class:`History`)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from matsteer.core.losses import TERMS
from matsteer.errors import ArtifactError, ConfigError

HISTORY_TERMS: tuple[str, ...] = (*TERMS, "total")


@dataclass
class History:
    """Loss history: ``train[term][epoch][t]`` (epoch means over batches) and ``dev[term][epoch][t]``.

    Terms are :data:`HISTORY_TERMS` (mmd, pos, sparse, ortho unweighted, and total = the λ-weighted sum);
    per-attribute values sum to the term's total (see :mod:`matsteer.core.losses`). ``dev`` is empty without a dev set.
    """

    attributes: list[str]
    lambdas: dict[str, float]
    train: dict[str, list[list[float]]] = field(default_factory=lambda: {k: [] for k in HISTORY_TERMS})
    dev: dict[str, list[list[float]]] = field(default_factory=dict)

    @property
    def epochs(self) -> int:
        return len(self.train.get("total", []))

    def append(self, split: str, per_attribute: list[list[float]]) -> None:
        """Add one epoch: ``per_attribute`` is ``[5][T]`` in :data:`TERMS` order; total is derived."""
        target = self.train if split == "train" else self.dev
        if not target:
            target.update({k: [] for k in HISTORY_TERMS})
        lam = [self.lambdas.get(k, 0.0) for k in TERMS]
        for k, row in zip(TERMS, per_attribute):
            target[k].append([float(v) for v in row])
        total = [sum(lam[i] * per_attribute[i][t] for i in range(len(TERMS))) for t in range(len(self.attributes))]
        target["total"].append(total)

    def series(self, term: str = "total", attribute: str | None = None, split: str = "train") -> list[float]:
        """One curve over epochs: a term for one attribute, or summed over attributes (``attribute=None``)."""
        table = self.train if split == "train" else self.dev
        if term not in HISTORY_TERMS:
            raise ConfigError(f"Unknown loss term {term!r}; choose one of {', '.join(HISTORY_TERMS)}.")
        if not table:
            return []
        if attribute is None:
            return [sum(row) for row in table[term]]
        if attribute not in self.attributes:
            raise ConfigError(f"Unknown attribute {attribute!r}; this history has {self.attributes}.")
        t = self.attributes.index(attribute)
        return [row[t] for row in table[term]]

    def final(self, split: str = "train") -> dict[str, dict[str, float]] | None:
        """Last epoch: ``{term: {attribute: value, ..., "all": sum}}``; None if there is no such split."""
        table = self.train if split == "train" else self.dev
        if not table or not table["total"]:
            return None
        out: dict[str, dict[str, float]] = {}
        for term in HISTORY_TERMS:
            row = table[term][-1]
            out[term] = {**dict(zip(self.attributes, row)), "all": float(sum(row))}
        return out

    def to_dict(self) -> dict[str, Any]:
        return {
            "attributes": list(self.attributes),
            "lambdas": dict(self.lambdas),
            "terms": list(HISTORY_TERMS),
            "train": {k: [list(r) for r in v] for k, v in self.train.items()},
            "dev": {k: [list(r) for r in v] for k, v in self.dev.items()},
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> History:
        try:
            attributes = [str(a) for a in data["attributes"]]
            # Histories saved before the gate term existed have four terms: the missing one reads as 0.
            lambdas = {k: float(data["lambdas"].get(k, 0.0)) for k in TERMS}

            def table(src: dict[str, Any]) -> dict[str, list[list[float]]]:
                zeros = [[0.0] * len(attributes) for _ in src["total"]]
                return {k: [[float(x) for x in r] for r in src.get(k, zeros)] for k in HISTORY_TERMS}

            train = table(data["train"])
            dev_in = data.get("dev") or {}
            dev = table(dev_in) if dev_in else {}
        except (KeyError, TypeError, ValueError) as exc:
            raise ArtifactError(f"Malformed training history ({exc!r}); re-train or re-save it.") from exc
        return cls(attributes=attributes, lambdas=lambdas, train=train, dev=dev)
