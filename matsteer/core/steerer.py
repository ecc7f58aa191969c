"""The MAT-Steer steering function: T vectors and T sigmoid gates, applied in one batched expression.

``f(a) = a + Σ_t m_t · G_t(a) · θ_t`` with ``G_t(a) = sigmoid(w_t · a + b_t)``, every gate computed from the
original ``a``, then (by default) rescaled to the original norm ``‖a‖``. No Python loop over attributes.
The run-time settings (multipliers ``scale``, forced gates ``forced``) are ``[T]`` (one setting for the whole
batch) or ``[B, T]`` (one row of settings per batch row, broadcast over the sequence axis): a multiplier sweep or a
comparison of settings then runs in one batched pass.
:class:`ModuleGatedSteerer` makes the same edit with gates from a fixed module (e.g. MLP probes), at run time only.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import nn

from matsteer.errors import ConfigError

_EPS = 1e-12


def gate_values(a: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """Gates ``sigmoid(a Wᵀ + b)``: a ``[..., d]``, weight ``[T, d]``, bias ``[T]`` -> ``[..., T]``."""
    return torch.sigmoid(a @ weight.T + bias)


def _per_row(values: torch.Tensor, gates: torch.Tensor) -> torch.Tensor:
    """Settings ``[T]`` unchanged, or ``[B, T]`` viewed as ``[B, 1, ..., 1, T]`` to broadcast against ``gates``
    ``[B, ..., T]`` (one row of settings per batch row, the same at every position of that row)."""
    if values.dim() == 1:
        return values
    if values.dim() != 2 or gates.dim() < 2 or values.shape[0] != gates.shape[0] or values.shape[1] != gates.shape[-1]:
        raise ConfigError(f"Per-row settings must be [B, T] = [{gates.shape[0] if gates.dim() else '?'}, "
                          f"{gates.shape[-1]}] for activations with gates {tuple(gates.shape)}, got "
                          f"{tuple(values.shape)}; pass one row of settings per batch row (or one [T] row for all).")
    return values.reshape(values.shape[0], *([1] * (gates.dim() - 2)), values.shape[1])


def force_gates(gates: torch.Tensor, forced: torch.Tensor | None) -> torch.Tensor:
    """``gates [..., T]`` with the forced values put in: forced ``[T]`` or ``[B, T]``, NaN = keep the learned gate."""
    if forced is None:
        return gates
    forced = _per_row(forced, gates)
    return torch.where(torch.isnan(forced), gates, forced.to(gates.dtype))


def token_rows(where: torch.Tensor) -> torch.Tensor:
    """The batch row ``[n]`` (long) of each True entry of ``where [B, ...]``, in the order ``x[where]`` lists them.

    With it, per-row settings follow tokens gathered out of their batch: ``scale[token_rows(where)]`` is ``[n, T]``
    for ``a[where]`` ``[n, d]``, so ``apply_steering(a[where], ..., scale=scale[token_rows(where)])`` edits each token
    with its own row's settings (as :func:`row_settings_for` does).
    """
    rows = torch.arange(where.shape[0], device=where.device)
    return rows.reshape(-1, *([1] * (where.dim() - 1))).expand(where.shape)[where]


def row_settings_for(values: torch.Tensor | None, rows: torch.Tensor | None) -> torch.Tensor | None:
    """Settings for gathered tokens: ``[T]`` (or None) unchanged, ``[B, T]`` -> ``[n, T]`` by each token's row
    ``rows [n]`` (long, values in ``[0, B)``, e.g. from :func:`token_rows`)."""
    if values is None or values.dim() == 1:
        return values
    if rows is None:
        # Without the rows, [B, T] would silently pair with the first B tokens whenever n happens to equal B.
        raise ConfigError(f"Per-row settings {tuple(values.shape)} need the batch row of each token; pass rows.")
    return values[rows.to(values.device)]


def apply_steering(
    a: torch.Tensor,
    theta: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor,
    scale: torch.Tensor | None = None,
    forced: torch.Tensor | None = None,
    preserve_norm: bool = True,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Steer activations.

    a: ``[..., d]``; theta, weight: ``[T, d]``; bias: ``[T]``.
    scale: ``[T]`` per-attribute multipliers (already times the global one), default ones; or ``[B, T]``, one row
    per batch row of ``a`` (``[B, d]`` or ``[B, S, d]``: the same multipliers at every position of a row).
    forced: ``[T]`` (or ``[B, T]``, as scale) NaN where the learned gate is used, else the forced gate value
    (0 = off, 1 = on). A ``[B, T]`` setting whose rows are all equal gives exactly the ``[T]`` result.
    Returns ``(steered [..., d], gates [..., T])``; gates are the values actually used (after forcing).
    """
    return steer_with_gates(a, theta, gate_values(a, weight, bias), scale, forced, preserve_norm)


def steer_with_gates(
    a: torch.Tensor,
    theta: torch.Tensor,
    gates: torch.Tensor,
    scale: torch.Tensor | None = None,
    forced: torch.Tensor | None = None,
    preserve_norm: bool = True,
) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`apply_steering` from gate values already computed: a ``[..., d]``, theta ``[T, d]``, gates ``[..., T]``;
    scale and forced ``[T]`` or ``[B, T]``."""
    gates = force_gates(gates, forced)
    # The same elementwise product whether scale is [T] or [B, 1, T]: equal rows give bit-identical results.
    coeff = gates if scale is None else gates * _per_row(scale, gates)
    out = a + coeff @ theta
    if preserve_norm:
        out = out * (a.norm(dim=-1, keepdim=True) / out.norm(dim=-1, keepdim=True).clamp_min(_EPS))
    return out, gates


#: The keys of one whole steering setting (:meth:`Steerer.setting_rows`): the run-time settings that may differ
#: between the rows of one batch (``preserve_norm`` and the position policy are shared by the whole pass).
SETTING_KEYS = ("multipliers", "global_multiplier", "force")


def _check_row_mappings(rows: Sequence[Any], what: str) -> None:
    if isinstance(rows, (str, Mapping)) or not rows or not all(r is None or isinstance(r, Mapping) for r in rows):
        raise ConfigError(f"Per-row {what} must be a non-empty list with one mapping (attribute name -> value) per "
                          f"batch row, got {rows!r}.")


class Steerer(nn.Module):
    """T attribute vectors θ ``[T, d]`` and gates (W ``[T, d]``, b ``[T]``) at one site.

    ``attributes`` names each row; ``positive_sides`` says what label 1 means for each (e.g. "truthful").
    Parameters are float32; :meth:`forward` computes in float32 and returns the input dtype.
    """

    #: The steerer folder's manifest, on steerers loaded by :func:`matsteer.store.hub.from_pretrained` only.
    manifest: dict[str, Any]

    def __init__(
        self,
        attributes: Sequence[str],
        d: int,
        positive_sides: Sequence[str] | None = None,
        generator: torch.Generator | None = None,
    ) -> None:
        super().__init__()
        if not attributes:
            raise ConfigError("A steerer needs at least one attribute; pass attribute names.")
        if len(set(attributes)) != len(attributes):
            raise ConfigError(f"Attribute names must be unique, got {list(attributes)}.")
        if d <= 0:
            raise ConfigError(f"Hidden size d must be positive, got {d}.")
        self.attributes = list(attributes)
        self.positive_sides = list(positive_sides) if positive_sides is not None else ["label 1"] * len(attributes)
        if len(self.positive_sides) != len(self.attributes):
            raise ConfigError("positive_sides must have one entry per attribute.")
        T = len(attributes)
        # Initialisation as the reference code: θ ~ randn(d); gates as nn.Linear(d, 1) (uniform ±1/sqrt(d)).
        bound = 1.0 / math.sqrt(d)
        self.theta = nn.Parameter(torch.randn(T, d, generator=generator))
        self.gate_weight = nn.Parameter(torch.empty(T, d).uniform_(-bound, bound, generator=generator))
        self.gate_bias = nn.Parameter(torch.empty(T).uniform_(-bound, bound, generator=generator))

    @property
    def num_attributes(self) -> int:
        return len(self.attributes)

    @property
    def d(self) -> int:
        return int(self.theta.shape[1])

    def gates(self, a: torch.Tensor) -> torch.Tensor:
        """Learned gate values ``[..., T]`` for activations ``[..., d]``."""
        return gate_values(a.float(), self.gate_weight, self.gate_bias)

    def forward(
        self,
        a: torch.Tensor,
        scale: torch.Tensor | None = None,
        forced: torch.Tensor | None = None,
        preserve_norm: bool = True,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Steer ``a [..., d]`` (scale, forced ``[T]`` or ``[B, T]``, see :func:`apply_steering`) with the gates of
        :meth:`gates` (a subclass's own gate applies too); returns ``(steered [..., d] in a's dtype, gates [..., T]
        float32)``."""
        x = a.float()
        out, gates = steer_with_gates(x, self.theta, self.gates(x), scale=scale, forced=forced,
                                      preserve_norm=preserve_norm)
        return out.to(a.dtype), gates

    def scale_vector(self, multipliers: Mapping[str, float] | None = None, global_multiplier: float = 1.0) -> torch.Tensor:
        """``[T]`` float32: per-attribute multipliers (default 1) times the global one; unknown names are refused."""
        multipliers = dict(multipliers or {})
        unknown = sorted(set(multipliers) - set(self.attributes))
        if unknown:
            raise ConfigError(f"Multipliers given for unknown attributes {unknown}; this steerer has {self.attributes}. "
                              "Use those names (or drop the others).")
        values = [float(multipliers.get(name, 1.0)) * float(global_multiplier) for name in self.attributes]
        if not all(math.isfinite(v) for v in values):
            raise ConfigError(f"Multipliers must be finite numbers, got {values}; pass finite values (0 turns an "
                              "attribute off).")
        return torch.tensor(values, dtype=torch.float32, device=self.theta.device)

    def forced_vector(self, force: Mapping[str, bool | float | None] | None = None) -> torch.Tensor | None:
        """``[T]`` with NaN for learned gates and the forced value elsewhere (True -> 1, False -> 0); None if none forced."""
        forced: dict[str, bool | float] = {k: v for k, v in (force or {}).items() if v is not None}
        if not forced:
            return None
        unknown = sorted(set(forced) - set(self.attributes))
        if unknown:
            raise ConfigError(f"Gates forced for unknown attributes {unknown}; this steerer has {self.attributes}. "
                              "Use those names (or drop the others).")
        values = [float(forced[name]) if name in forced else math.nan for name in self.attributes]
        if any(not (math.isnan(v) or 0.0 <= v <= 1.0) for v in values):
            raise ConfigError(f"A forced gate must be on (True/1), off (False/0) or a value in [0, 1], got {forced}.")
        return torch.tensor(values, dtype=torch.float32, device=self.theta.device)


    def scale_rows(self, rows: Sequence[Mapping[str, float] | None], shared: Mapping[str, float] | None = None,
                   global_multiplier: float = 1.0) -> torch.Tensor:
        """``[B, T]`` float32: row i is :meth:`scale_vector` of ``shared`` updated by ``rows[i]`` (a row's value wins;
        None or ``{}`` = the shared multipliers), times the global multiplier."""
        _check_row_mappings(rows, "multipliers")
        merged = [{**dict(shared or {}), **dict(row or {})} for row in rows]
        return torch.stack([self.scale_vector(m, global_multiplier) for m in merged])

    def forced_rows(self, rows: Sequence[Mapping[str, bool | float | None] | None],
                    shared: Mapping[str, bool | float | None] | None = None) -> torch.Tensor | None:
        """``[B, T]`` float32 (NaN = learned gate): row i is :meth:`forced_vector` of ``shared`` updated by
        ``rows[i]`` (a row's None un-forces a shared one); None when no row forces any gate."""
        _check_row_mappings(rows, "forced gates")
        vectors = [self.forced_vector({**dict(shared or {}), **dict(row or {})}) for row in rows]
        if all(v is None for v in vectors):
            return None
        nan = torch.full((self.num_attributes,), math.nan, dtype=torch.float32, device=self.theta.device)
        return torch.stack([nan if v is None else v for v in vectors])

    def setting_rows(self, settings: Sequence[Mapping[str, Any]]) -> tuple[torch.Tensor, torch.Tensor | None]:
        """``(scale [K, T], forced [K, T] or None)`` float32 of K whole settings, one row each.

        Setting k is a mapping of :data:`SETTING_KEYS`: ``multipliers`` (name -> m, missing names 1),
        ``global_multiplier`` (default 1) and ``force`` (name -> gate value or None, default none forced), each on
        its own (nothing is shared between settings, unlike :meth:`scale_rows`). Row k is exactly
        :meth:`scale_vector` / :meth:`forced_vector` of setting k (a NaN row where it forces nothing; None when no
        setting forces any gate), so ``[K, T]`` steering reproduces each setting alone.
        """
        _check_row_mappings(settings, "settings")
        whole = [dict(s or {}) for s in settings]
        for s in whole:
            unknown = sorted(set(s) - set(SETTING_KEYS))
            if unknown:
                raise ConfigError(f"A setting has unknown keys {unknown}; each setting takes {list(SETTING_KEYS)} "
                                  "(preserve_norm and positions are shared by the whole pass).")
        scale = torch.stack([self.scale_vector(s.get("multipliers"), float(s.get("global_multiplier", 1.0)))
                             for s in whole])
        return scale, self.forced_rows([s.get("force") for s in whole])


class ModuleGatedSteerer(Steerer):
    """A :class:`Steerer` whose gates come from a fixed module ``gate_net: [..., d] -> [..., T]`` (values in [0, 1])
    instead of ``sigmoid(W a + b)``; θ, multipliers, forced gates and norm preservation work as in Steerer.

    theta: ``[T, d]`` (copied, float32). For non-linear probe gates (:func:`matsteer.core.baselines.nl_iti`).
    **Run time only**: the saved-steerer format holds a linear gate, so the unused ``gate_weight`` and ``gate_bias``
    are NaN; :func:`matsteer.store.artifacts.save_steerer` then refuses the steerer, and any code that reads the linear
    gate fails visibly instead of silently using another gate.
    """

    def __init__(
        self,
        attributes: Sequence[str],
        theta: torch.Tensor,
        gate_net: nn.Module,
        positive_sides: Sequence[str] | None = None,
    ) -> None:
        rows = torch.as_tensor(theta).detach().float().cpu()
        if rows.ndim != 2 or rows.shape[0] != len(attributes):
            raise ConfigError(f"theta must be [T, d] with one row per attribute ({len(attributes)}), got "
                              f"{tuple(rows.shape)}.")
        # A private generator: the placeholder initialisation must not consume the global RNG.
        super().__init__(attributes, int(rows.shape[1]), positive_sides, generator=torch.Generator().manual_seed(0))
        with torch.no_grad():
            self.theta.copy_(rows)
            self.gate_weight.fill_(math.nan)
            self.gate_bias.fill_(math.nan)
        self.gate_net = gate_net.requires_grad_(False)

    def gates(self, a: torch.Tensor) -> torch.Tensor:
        """The module's gate values ``[..., T]`` (float32) for activations ``[..., d]``."""
        g = self.gate_net(a.float())
        if g.shape != (*a.shape[:-1], self.num_attributes):
            raise ConfigError(f"gate_net returned {tuple(g.shape)} for activations {tuple(a.shape)}; it must return "
                              f"[..., {self.num_attributes}].")
        return g.float()
