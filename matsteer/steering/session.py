"""``steer(model, steerer, site=...)``: a ``with`` block in which calls through the yielded handle are steered.

Main entry point::

    with steer(model, steerer, site=Site(14, "attn_heads"), multipliers={"toxicity": 2.0}) as s:
        out = s.generate(**tokenizer(prompts, return_tensors="pt", padding=True), max_new_tokens=32)
        s.settings.force["toxicity"] = False      # takes effect on the next call, no rebuild
        logits = s(**batch).logits

Several settings in one batched pass (row i of the batch steered with row i's settings, also in every decode step)::

    with steer(model, steerer, site=site, row_multipliers=[{"toxicity": m} for m in (0.5, 1.0, 2.0)]) as s:
        out = s.generate(**tokenizer([prompt] * 3, return_tensors="pt"), max_new_tokens=32)

The reference README flow also works with our names (:mod:`matsteer.steering.compat`).

How it sits on pyvene 0.1.8 (read from ``pyvene/models/intervenable_base.py``):

- pyvene registers its hooks at the start of each ``IntervenableModel.forward``/``generate`` call and removes them at
  the end; with ``unit_locations=None`` (and ``intervene_on_prompt=True`` in ``generate``) the intervention sees the
  whole ``[B, seq, d]`` tensor of every forward call and its result is copied back in place.
- pyvene *also* strips every forward hook and pre-hook from every submodule of the model at the start and end of
  each call (``_cleanup_states`` -> ``remove_forward_hooks``), including hooks that are not its own. The subclass
  used by :func:`steer` removes only the handles pyvene registered, so user hooks (and our call-context pre-hook,
  which tells the intervention the attention mask and whether the KV cache is filled) survive.
- Constructing an ``IntervenableModel`` calls ``model.eval()`` and sets ``requires_grad=False`` on every model
  parameter. :func:`steer` restores both right after construction and again on exit.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from matsteer.activations.sites import ResolvedSite, Site
from matsteer.core.steerer import Steerer
from matsteer.errors import ConfigError, MatSteerError
from matsteer.steering._pyvene import import_pyvene
from matsteer.steering.call_context import context_hook, split_inputs
from matsteer.steering.intervention import MatSteerIntervention, SteerSettings
from matsteer.steering.recorder import GateRecorder

if TYPE_CHECKING:
    import pyvene as pv
else:
    pv = import_pyvene()  # without its "nnsight is not detected" notice


class _HookSafeIntervenableModel(pv.IntervenableModel):
    """``IntervenableModel`` that removes only the hooks pyvene itself registered.

    pyvene 0.1.8's ``_cleanup_states`` runs ``remove_forward_hooks(model)`` at the start and end of every
    ``forward``/``generate``: it pops every forward hook and pre-hook of every submodule, whoever owns it.
    """

    def __init__(self, config: Any, model: nn.Module, **kwargs: Any) -> None:
        super().__init__(config, model, **kwargs)
        self._own_handles: list[Any] = []

    def _intervention_getter(self, *args: Any, **kwargs: Any) -> Any:
        handlers = super()._intervention_getter(*args, **kwargs)
        self._own_handles.extend(handlers.handlers)
        return handlers

    def _intervention_setter(self, *args: Any, **kwargs: Any) -> Any:
        handlers = super()._intervention_setter(*args, **kwargs)
        self._own_handles.extend(handlers.handlers)
        return handlers

    def _remove_forward_hooks(self) -> None:
        for handle in self._own_handles:
            handle.remove()
        self._own_handles.clear()


def _snapshot_model_state(model: nn.Module) -> tuple[list[tuple[nn.Module, bool]], list[tuple[nn.Parameter, bool]]]:
    return [(m, m.training) for m in model.modules()], [(p, p.requires_grad) for p in model.parameters()]


def _restore_model_state(state: tuple[list[tuple[nn.Module, bool]], list[tuple[nn.Parameter, bool]]]) -> None:
    modules, params = state
    for m, training in modules:
        m.training = training
    for p, requires_grad in params:
        p.requires_grad_(requires_grad)


class SteeringHandle:
    """What :func:`steer` yields: steered ``__call__``/``forward`` and ``generate``, plus ``settings`` and ``recorder``.

    The wrapped model itself stays unsteered: only calls made through this handle are steered.
    """

    def __init__(
        self,
        model: nn.Module,
        intervention: MatSteerIntervention,
        intervenable: _HookSafeIntervenableModel,
        site: ResolvedSite,
    ) -> None:
        self.model = model
        self.intervention = intervention
        self.intervenable: _HookSafeIntervenableModel | None = intervenable
        self.site = site
        self.closed = False

    @property
    def settings(self) -> SteerSettings:
        return self.intervention.settings

    @settings.setter
    def settings(self, value: SteerSettings) -> None:
        old, self.intervention.settings = self.intervention.settings, value
        try:
            self.intervention.prepare()  # refuse bad settings now rather than mid-forward
        except Exception:
            self.intervention.settings = old
            raise

    @property
    def recorder(self) -> GateRecorder | None:
        return self.intervention.recorder

    @property
    def steerer(self) -> Steerer:
        return self.intervention.steerer

    def _pv(self) -> _HookSafeIntervenableModel:
        if self.closed or self.intervenable is None:
            raise MatSteerError("This steering handle is closed (its `with steer(...)` block has ended).")
        return self.intervenable

    def _check_batch(self, base: Mapping[str, Any]) -> None:
        """Per-row settings must fit the call's batch: checked before any forward pass runs."""
        first = next(iter(base.values()))
        if isinstance(first, torch.Tensor) and first.dim() >= 2:
            self.intervention.check_batch(int(first.shape[0]))

    def __call__(self, **inputs: Any) -> Any:
        """A steered forward call: ``inputs`` as for ``model(**inputs)``; returns the model's output."""
        pv_model = self._pv()
        base, rest = split_inputs(inputs)
        self._check_batch(base)
        # Everything goes in `base` (pyvene calls model(**base)): pyvene's own forward has `labels`, `use_cache`
        # and `return_dict` parameters that would otherwise swallow the model's arguments of those names.
        base.update(rest)
        with context_hook(self.model, self.intervention.context):
            _, out = pv_model(base, unit_locations=None)
        return out

    forward = __call__

    def generate(self, input_ids: torch.Tensor | None = None, **kwargs: Any) -> Any:
        """Steered ``model.generate``: the prompt pass and every decoding step; returns what ``generate`` returns."""
        pv_model = self._pv()
        if input_ids is not None:
            kwargs["input_ids"] = input_ids
        base, rest = split_inputs(kwargs)
        self._check_batch(base)
        if self.intervention.prepare().rows is not None and _expansion(self.model, rest) > 1:
            raise ConfigError("Per-row settings (row_multipliers / row_force) cannot follow rows through beam search "
                              "or num_return_sequences > 1; repeat the prompts instead, one row per setting.")
        if self.recorder is not None:
            self.recorder.clear()
        with context_hook(self.model, self.intervention.context):
            _, out = pv_model.generate(base, unit_locations=None, intervene_on_prompt=True, **rest)
        return out


def _resolve_site(steerer: Steerer, site: Site | Mapping[str, Any] | None) -> Site:
    if site is None:
        site = getattr(steerer, "site", None)
    if site is None:
        raise ConfigError(
            "This steerer does not say where it was trained: pass site=Site(layer, component) "
            "(the 'site' entry of its manifest)."
        )
    if isinstance(site, Mapping):
        site = Site.from_dict(dict(site))
    if not isinstance(site, Site):
        raise ConfigError(f"site must be a matsteer Site or a {{'layer', 'component'}} dict, got {site!r}.")
    return site


def _site_width(model: nn.Module, resolved: ResolvedSite) -> int | None:
    """The hidden size d of the activations at a resolved site, when the module says it (else None)."""
    module = resolved.module
    if resolved.site.component == "residual":
        return getattr(getattr(model, "config", None), "hidden_size", None)
    if isinstance(module, nn.Linear):
        return module.in_features if resolved.io == "input" else module.out_features
    weight, nf = getattr(module, "weight", None), getattr(module, "nf", None)  # GPT-2's Conv1D: weight [in, out]
    if isinstance(weight, torch.Tensor) and weight.dim() == 2 and isinstance(nf, int):
        return int(weight.shape[0]) if resolved.io == "input" else nf
    return None


def _expansion(model: nn.Module, options: Mapping[str, Any]) -> int:
    """How many rows ``generate`` makes of each prompt: ``num_beams x num_return_sequences`` (call or model default)."""
    config = getattr(model, "generation_config", None)
    total = 1
    for name in ("num_beams", "num_return_sequences"):
        value = options.get(name)
        if value is None:
            value = getattr(config, name, None)
        total *= int(value or 1)
    return total


def _row_list(rows: Any) -> list[Any]:
    if not isinstance(rows, Sequence) or isinstance(rows, str) or not all(r is None or isinstance(r, Mapping) for r in rows):
        raise ConfigError(f"Per-row settings must be a list with one mapping (attribute name -> value) per batch row, "
                          f"got {rows!r}.")
    return list(rows)


@contextmanager
def steer(
    model: nn.Module,
    steerer: Steerer,
    *,
    site: Site | Mapping[str, Any] | None = None,
    multipliers: Mapping[str, float] | None = None,
    global_multiplier: float = 1.0,
    force: Mapping[str, bool | float | None] | None = None,
    preserve_norm: bool = True,
    positions: str = "all",
    record: bool = False,
    row_multipliers: Sequence[Mapping[str, float] | None] | None = None,
    row_force: Sequence[Mapping[str, bool | float | None] | None] | None = None,
) -> Iterator[SteeringHandle]:
    """Steer ``model`` with ``steerer`` at ``site`` (default: ``steerer.site``) inside a ``with`` block.

    row_multipliers / row_force: one mapping per batch row, each updating ``multipliers`` / ``force`` for its row
    (see :class:`~matsteer.steering.intervention.SteerSettings`); every call must then have that many rows.

    Builds a pyvene ``IntervenableModel`` with one :class:`MatSteerIntervention` and yields a
    :class:`SteeringHandle`. The steerer is moved to the site's device. On exit (also on an exception) every hook
    this created is gone, and the model's train/eval flags and ``requires_grad`` are as before.
    """
    resolved = _resolve_site(steerer, site).resolve(model)
    width = _site_width(model, resolved)
    if width is not None and width != steerer.d:  # the same check runs per call in forward; this one fails early
        raise ConfigError(
            f"The steerer has d={steerer.d} but the activations at {resolved.site} ({resolved.path}) have d={width}. "
            "Steer a model with the hidden size the steerer was trained on, at the site it was trained for."
        )
    param = next(resolved.module.parameters(), None)
    if param is not None and steerer.theta.device != param.device:
        steerer.to(param.device)
    settings = SteerSettings(
        multipliers=dict(multipliers or {}),
        global_multiplier=float(global_multiplier),
        force=dict(force or {}),
        preserve_norm=preserve_norm,
        positions=positions,
        row_multipliers=None if row_multipliers is None else [dict(r or {}) for r in _row_list(row_multipliers)],
        row_force=None if row_force is None else [dict(r or {}) for r in _row_list(row_force)],
    )
    recorder = GateRecorder(steerer.attributes) if record else None
    intervention = MatSteerIntervention(steerer, settings, recorder=recorder, site=resolved.site)
    # Check multipliers, forced gates and the positions policy now: a bad name fails before any forward pass
    # (otherwise it would surface from inside a hook, after e.g. an unsteered generation already ran).
    intervention.prepare()
    state = _snapshot_model_state(model)
    handle: SteeringHandle | None = None
    try:
        config = pv.IntervenableConfig([{"component": resolved.pyvene_component, "intervention": intervention}])
        intervenable = _HookSafeIntervenableModel(config, model)
        _restore_model_state(state)  # pyvene's constructor froze the model and put it in eval mode
        handle = SteeringHandle(model, intervention, intervenable, resolved)
        yield handle
    finally:
        if handle is not None:
            pv_model = handle.intervenable
            if pv_model is not None:
                pv_model._remove_forward_hooks()
            handle.intervenable = None
            handle.closed = True
        intervention.context.clear()
        _restore_model_state(state)
