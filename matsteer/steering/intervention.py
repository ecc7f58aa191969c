"""The MAT-Steer pyvene intervention: a padding-aware, batched, per-token gated edit of ``[B, seq, d]`` activations.

``f(a) = a + Σ_t m_t · G_t(a) · θ_t`` (then, by default, rescaled to ``‖a‖``) is applied at one site to every
non-pad position of every row that the positions policy selects, in a plain forward and in ``generate`` (the prompt
pass and every decoding step). The run-time knobs are :class:`SteerSettings`; :func:`matsteer.steering.session.steer`
puts the intervention on a model. ``row_multipliers`` / ``row_force`` give each batch row its own settings (a sweep
over K settings as one batch of K rows), kept through every decoding step of ``generate``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

import torch

from matsteer.activations.sites import Site
from matsteer.core.steerer import Steerer, force_gates
from matsteer.errors import ConfigError
from matsteer.steering._pyvene import import_pyvene, install_generate_shim
from matsteer.steering.call_context import CallContext, Phase
from matsteer.steering.recorder import GateRecord, GateRecorder

if TYPE_CHECKING:
    import pyvene as pv
else:
    pv = import_pyvene()  # without its "nnsight is not detected" notice

Positions = Literal["all", "prompt", "generated", "last"]
POSITIONS: tuple[str, ...] = ("all", "prompt", "generated", "last")


@dataclass
class SteerSettings:
    """The run-time knobs; mutate them between calls (no rebuild needed).

    multipliers: per-attribute ``m_t`` (missing names mean 1.0); global_multiplier multiplies all of them.
    force: attribute name -> True (gate forced to 1), False (forced to 0), a value in [0, 1], or None (learned gate).
    preserve_norm: rescale each edited activation to its original L2 norm.
    positions: ``all`` non-pad positions; ``prompt`` only in forward calls with an empty KV cache (the prompt pass);
    ``generated`` only in calls with a filled cache (decode steps); ``last`` only the last non-pad position of each
    row in each forward call.
    row_multipliers / row_force: None (every row uses the settings above), or one mapping per batch row: row i's
    multipliers are ``multipliers`` updated by ``row_multipliers[i]`` (its force likewise; a row's None un-forces a
    shared gate), then times ``global_multiplier``. Their length must equal the batch size of every call (in
    ``generate``: the number of prompts; beams and ``num_return_sequences`` > 1 are refused).
    """

    multipliers: dict[str, float] = field(default_factory=dict)
    global_multiplier: float = 1.0
    force: dict[str, bool | float | None] = field(default_factory=dict)
    preserve_norm: bool = True
    positions: str = "all"
    row_multipliers: list[dict[str, float]] | None = None
    row_force: list[dict[str, bool | float | None]] | None = None

    @property
    def rows(self) -> int | None:
        """The batch size per-row settings require, or None when there are none."""
        lengths = {len(r) for r in (self.row_multipliers, self.row_force) if r is not None}
        if not lengths:
            return None
        if len(lengths) > 1:
            raise ConfigError(f"row_multipliers has {len(self.row_multipliers or [])} rows but row_force has "
                              f"{len(self.row_force or [])}; give both one entry per batch row.")
        return lengths.pop()

    def fingerprint(self) -> tuple:
        """A hashable summary; the intervention rebuilds its cached tensors only when it changes."""
        return (
            tuple(sorted(self.multipliers.items())),
            self.global_multiplier,
            tuple(sorted(self.force.items())),
            bool(self.preserve_norm),
            self.positions,
            _rows_key(self.row_multipliers),
            _rows_key(self.row_force),
        )


def _check_rows(rows: int | None, batch: int) -> None:
    if rows is not None and rows != batch:
        raise ConfigError(f"The per-row settings (row_multipliers / row_force) have {rows} rows but this call has a "
                          f"batch of {batch}; give one entry per batch row (per prompt; beam search and "
                          "num_return_sequences > 1 multiply the rows and are not supported with them).")


def _rows_key(rows: Sequence[Mapping[str, Any] | None] | None) -> tuple | None:
    return None if rows is None else tuple(tuple(sorted((row or {}).items())) for row in rows)


@dataclass(frozen=True)
class _Prepared:
    """Tensors derived from the settings, cached per (settings, device)."""

    key: tuple
    scale: torch.Tensor  # [T] float32, or [B, T] with per-row settings
    forced: torch.Tensor | None  # [T] (or [B, T]) float32, NaN = learned gate
    inactive: bool  # every effective scale is 0: the intervention is the identity
    preserve_norm: bool
    positions: str
    rows: int | None = None  # the batch size per-row settings require (None: no per-row settings)
    row_active: torch.Tensor | None = None  # [B] bool, False for rows whose every effective scale is 0


class MatSteerIntervention(pv.SourcelessIntervention):
    """pyvene intervention that applies a :class:`~matsteer.core.steerer.Steerer` to ``[B, seq, d]`` activations.

    Every non-pad position of every row gets its own gates (the reference intervener edited only ``b[0, -1]``).
    Computes in float32 and returns the input dtype, so fp16/bf16 models work. When every effective scale is 0
    (multipliers 0 or gates forced off) it returns its input untouched, so logits are bit-identical to the base model.

    ``SourcelessIntervention`` (not ``TrainableIntervention``): pyvene 0.1.8 only calls setters without a source
    for interventions with ``is_source_constant``; train the :class:`Steerer` with :mod:`matsteer.core.training` instead.
    """

    def __init__(
        self,
        steerer: Steerer,
        settings: SteerSettings | None = None,
        *,
        recorder: GateRecorder | None = None,
        context: CallContext | None = None,
        site: Site | None = None,
        **kwargs: Any,
    ) -> None:
        kwargs.setdefault("keep_last_dim", True)  # see [B, seq, d], not [B, seq*d]
        super().__init__(**kwargs)
        self.steerer = steerer
        self.settings = settings if settings is not None else SteerSettings()
        self.recorder = recorder
        self.context = context if context is not None else CallContext()
        self.site = site
        self._prepared: _Prepared | None = None
        self._prepared_device: torch.device | None = None
        self.prepare()  # validate the initial settings eagerly
        install_generate_shim(MatSteerIntervention)

    def __str__(self) -> str:
        return f"MatSteerIntervention(attributes={self.steerer.attributes}, site={self.site})"

    @property
    def layer(self) -> int | None:
        return None if self.site is None else self.site.layer

    def prepare(self, device: torch.device | None = None) -> _Prepared:
        """Build (or reuse) the ``[T]`` (or per-row ``[B, T]``) scale/forced tensors for the current settings; raises
        ConfigError on bad ones."""
        s = self.settings
        key = s.fingerprint()
        device = device if device is not None else self.steerer.theta.device
        p = self._prepared
        if p is not None and p.key == key and self._prepared_device == device:
            return p
        if s.positions not in POSITIONS:
            raise ConfigError(f"Unknown positions policy {s.positions!r}; choose one of {', '.join(POSITIONS)}.")
        if self.steerer.theta.device != device:
            self.steerer.to(device)  # once per device change (e.g. a CPU steerer on a GPU model), not per call
        rows = s.rows
        if rows is None:
            scale = self.steerer.scale_vector(s.multipliers, s.global_multiplier)
            forced = self.steerer.forced_vector(s.force)
        else:
            scale = self.steerer.scale_rows(s.row_multipliers or [{}] * rows, s.multipliers, s.global_multiplier)
            forced = self.steerer.forced_rows(s.row_force or [{}] * rows, s.force)
        # Decided on the host from the settings, so the hot path never syncs with the device.
        scale_rows = scale.reshape(-1, scale.shape[-1]).tolist()
        forced_rows = (forced.reshape(-1, scale.shape[-1]).tolist() if forced is not None
                       else [[float("nan")] * scale.shape[-1]] * len(scale_rows))
        active = [not all(m == 0.0 or f == 0.0 for m, f in zip(ms, fs)) for ms, fs in zip(scale_rows, forced_rows)]
        p = _Prepared(
            key=key,
            scale=scale.to(device),
            forced=None if forced is None else forced.to(device),
            inactive=not any(active),
            preserve_norm=bool(s.preserve_norm),
            positions=s.positions,
            rows=rows,
            # Rows that are off stay bit-identical to the base model, as a whole batch that is off does.
            row_active=None if rows is None or all(active) else torch.tensor(active, device=device),
        )
        self._prepared, self._prepared_device = p, device
        return p

    def check_batch(self, batch: int) -> None:
        """Refuse (ConfigError) a call of ``batch`` rows that the per-row settings do not fit; validates them too."""
        _check_rows(self.prepare().rows, batch)

    def forward(self, base: torch.Tensor, source: Any = None, subspaces: Any = None, **kwargs: Any) -> torch.Tensor:
        """base ``[B, seq, d]`` -> steered ``[B, seq, d]`` (same dtype); pad and unselected positions unchanged."""
        if base.dim() == 2:  # an un-batched site: treat as one row
            return self.forward(base.unsqueeze(0), source, subspaces, **kwargs).squeeze(0)
        batch, seq, d = base.shape
        if d != self.steerer.d:
            raise ConfigError(
                f"The steerer has d={self.steerer.d} but the activations at {self.site or 'this site'} have d={d}. "
                "Steer at the site the steerer was trained for."
            )
        p = self.prepare(base.device)
        _check_rows(p.rows, batch)
        valid, phase = self.context.lookup(batch, seq)
        select, none_selected = self._select(valid, phase, seq, p.positions, base.device)
        if p.row_active is not None and not none_selected:
            rows_on = p.row_active.unsqueeze(-1)  # [B, 1]
            select = rows_on if select is None else select & rows_on
        recording = self.recorder is not None and self.recorder.enabled
        if not recording and (p.inactive or none_selected):
            return base
        if p.inactive or none_selected:
            gates = force_gates(self.steerer.gates(base), p.forced)
            out = base
        else:
            steered, gates = self.steerer(base, p.scale, p.forced, p.preserve_norm)
            out = steered if select is None else torch.where(select.unsqueeze(-1), steered, base)
        if recording:
            self._record(gates, valid, select, none_selected or p.inactive, phase, base.shape[:2])
        return out

    @staticmethod
    def _select(
        valid: torch.Tensor | None, phase: Phase, seq: int, positions: str, device: torch.device
    ) -> tuple[torch.Tensor | None, bool]:
        """Positions to edit: ``([B, seq] bool, or None = all positions), nothing_selected``."""
        if (positions == "prompt" and phase != "prompt") or (positions == "generated" and phase != "generated"):
            return valid, True
        if positions != "last":
            return valid, False
        idx = torch.arange(1, seq + 1, device=device)
        if valid is None:
            return (idx == seq).unsqueeze(0), False
        last = (valid.long() * idx).argmax(dim=-1, keepdim=True)  # [B, 1], index of the last non-pad position
        return (idx.unsqueeze(0) - 1 == last) & valid, False

    def _record(
        self,
        gates: torch.Tensor,
        valid: torch.Tensor | None,
        select: torch.Tensor | None,
        nothing: bool,
        phase: Phase,
        shape: torch.Size,
    ) -> None:
        ones = torch.ones(shape, dtype=torch.bool, device=gates.device)
        v = ones if valid is None else valid
        if nothing:
            steered = torch.zeros_like(ones)
        else:
            steered = v if select is None else select.expand(shape) & v
        assert self.recorder is not None
        self.recorder.add(GateRecord(gates.detach(), v.detach(), steered, phase, self.layer))

    def sibling(self, site: Site) -> MatSteerIntervention:
        """Another intervention at ``site`` sharing this one's steerer, settings, recorder and call context."""
        other = MatSteerIntervention(
            self.steerer, self.settings, recorder=self.recorder, context=self.context, site=site,
            keep_last_dim=self.keep_last_dim,
        )
        return other
