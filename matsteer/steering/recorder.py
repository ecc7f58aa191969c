"""Gate recording: the gate values of every steered forward call (:class:`GateRecorder`), per token (:class:`TokenGates`)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from matsteer.errors import ConfigError
from matsteer.steering.call_context import Phase


@dataclass
class GateRecord:
    """Gates of one forward call at one site.

    gates: ``[B, seq, T]`` float32, the gate values used (forced gates show their forced value).
    valid: ``[B, seq]`` bool, non-pad positions. steered: ``[B, seq]`` bool, positions actually edited.
    """

    gates: torch.Tensor
    valid: torch.Tensor
    steered: torch.Tensor
    phase: Phase
    layer: int | None = None


@dataclass
class TokenGates:
    """Per-token gates of one sequence: ``gates [n, T]``, ``generated [n]`` bool (False for prompt tokens).

    Entry i is the i-th non-pad token fed to the model (prompt tokens, then generated tokens except the last one,
    which is never fed back). ``token_ids [n]`` is set when the generated sequence was given.
    """

    gates: torch.Tensor
    generated: torch.Tensor
    attributes: list[str]
    token_ids: torch.Tensor | None = None


class GateRecorder:
    """Keeps the gate values of every steered forward call (see :class:`GateRecord`).

    :meth:`SteeringHandle.generate` clears it first, so after a generation it holds exactly that generation.
    """

    def __init__(self, attributes: Sequence[str]) -> None:
        self.attributes = list(attributes)
        self.records: list[GateRecord] = []
        self.enabled = True

    def __len__(self) -> int:
        return len(self.records)

    def clear(self) -> None:
        self.records.clear()

    def add(self, record: GateRecord) -> None:
        self.records.append(record)

    def token_gates(self, row: int, sequence: torch.Tensor | None = None, layer: int | None = None) -> TokenGates:
        """Assemble the per-token gate matrix of batch row ``row`` across the recorded calls, in order.

        sequence: that row of the generated ids ``[total]`` (left pads + prompt + new tokens), to align token ids.
        layer: which site's records to use when several layers were steered with one recorder.
        """
        records = [r for r in self.records if layer is None or r.layer == layer]
        if layer is None and len({r.layer for r in records}) > 1:
            raise ConfigError("The recorder holds gates from several layers; pass layer= to pick one.")
        if not records:
            raise ConfigError("No gates recorded yet: steer with record=True and run a forward or generate call.")
        gates, generated, valid = [], [], []
        for r in records:
            if row >= r.gates.shape[0]:
                raise ConfigError(f"Row {row} is out of range for a recorded batch of {r.gates.shape[0]}.")
            v = r.valid[row].cpu()
            valid.append(v)
            gates.append(r.gates[row].detach().float().cpu()[v])
            generated.append(torch.full((int(v.sum()),), r.phase == "generated", dtype=torch.bool))
        ids = None
        if sequence is not None:
            fed = torch.cat(valid)
            seq = sequence.detach().cpu()
            ids = seq[: fed.numel()][fed[: seq.numel()]]
        return TokenGates(torch.cat(gates), torch.cat(generated), list(self.attributes), ids)
